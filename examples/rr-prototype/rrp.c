/* Prototype: deterministic interval cuts under QEMU 7.2 icount/rr. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <dlfcn.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
int qemu_plugin_version = 1;
typedef uint64_t pid_t64;
struct qemu_plugin_tb;
extern void qemu_plugin_register_vcpu_init_cb(uint64_t, void (*)(uint64_t, unsigned));
extern void qemu_plugin_register_vcpu_tb_trans_cb(uint64_t, void (*)(uint64_t, struct qemu_plugin_tb *));
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
extern void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *, void (*)(unsigned, void *), int, void *);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, int, void *, uint64_t);
struct qemu_plugin_insn;
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
extern void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *, void (*)(unsigned, void *), int, void *);
extern void qemu_plugin_register_atexit_cb(uint64_t, void (*)(uint64_t, void *), void *);
extern void qemu_plugin_register_vcpu_idle_cb(uint64_t, void (*)(uint64_t, unsigned));
extern void qemu_plugin_register_vcpu_resume_cb(uint64_t, void (*)(uint64_t, unsigned));

static uint64_t ram_size, every, next_cut, count, cuts, idles, resumes;
static int mode_guest, mode_none, inline_only, pm = -1, track = 1;
static uint64_t ram_start;
static FILE *out, *dump;
static int64_t *bias_p; static int16_t *shift_p;
static void harvest(uint64_t now);
static uint64_t inl;
static int exact;
static __thread char *cpu_p;
static int64_t *icount_p;
static inline uint64_t exact_icount(uint64_t n, uint64_t i) {
    if (!cpu_p) { char **cc = dlsym(RTLD_DEFAULT, "current_cpu"); cpu_p = *cc; }
    int64_t budget = *(int64_t *)(cpu_p + 0xe0), extra = *(int64_t *)(cpu_p + 0xe8);
    uint16_t low = *(uint16_t *)(cpu_p + 0x13a0);
    return *icount_p + budget - low - extra - n + i;
}
static void insn_exec(unsigned vcpu, void *ud) {
    uint64_t v = (uint64_t)ud, n = v >> 32, i = v & 0xffffffff;
    uint64_t ic = exact_icount(n, i);
    uint64_t now = mode_guest ? (uint64_t)(*bias_p) + ic : ic;
    count = ic;
    if (now >= next_cut) {
        if (track) harvest(now);
        while (next_cut <= now) next_cut += every;
    }
}

struct page_region { uint64_t start, end, categories; };
struct pm_scan_arg { uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask, category_anyof_mask, return_mask; };
static struct page_region regs[65536];

static void harvest(uint64_t now) {
    uint64_t h = 1469598103934665603ULL, n = 0, s = ram_start;
    while (s < ram_start + ram_size) {
        struct pm_scan_arg a = { sizeof a, 3, s, ram_start + ram_size, 0, (uint64_t)regs, 65536, 0, 0, 2, 0, 2 };
        long r = ioctl(pm, 0xC0606610, &a);
        if (r < 0) { perror("PAGEMAP_SCAN"); exit(71); }
        for (long i = 0; i < r; i++) {
            for (uint64_t p = regs[i].start; p < regs[i].end; p += 4096) { if (dump) fprintf(dump, "%lu %lu\n", cuts, (p - ram_start) >> 12); h = (h ^ ((p - ram_start) >> 12)) * 1099511628211ULL; n++; }
        }
        s = a.walk_end; if (r < 65536) break;
    }
    fprintf(out, "%lu now=%lu count=%lu bias=%ld pages=%lu hash=%016lx\n", cuts, now, count, bias_p ? *bias_p : -1, n, h);
    cuts++;
}

static void tb_exec(unsigned vcpu, void *ud) {
    uint64_t n = (uint64_t)ud;
    uint64_t now = mode_guest ? (uint64_t)(*bias_p) + count : count;
    if (!mode_none && now >= next_cut) {
        if (track) harvest(now);
        while (next_cut <= now) next_cut += every;
    }
    count += n;
}
static void tb_trans(uint64_t id, struct qemu_plugin_tb *tb) {
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (exact) { for (size_t i = 0; i < n; i++) qemu_plugin_register_vcpu_insn_exec_cb(qemu_plugin_tb_get_insn(tb, i), insn_exec, 0, (void *)((n << 32) | i)); return; }
    if (inline_only) qemu_plugin_register_vcpu_tb_exec_inline(tb, 0, &inl, n);
    else qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, 0, (void *)n);
}
#define UFFDIO_API 0xC018AA3F
#define UFFDIO_REGISTER 0xC020AA00
#define UFFDIO_WRITEPROTECT 0xC018AA06
static void vcpu_init(uint64_t id, unsigned idx) {
    if (idx) return;
    FILE *m = fopen("/proc/self/maps", "r"); char line[512];
    while (fgets(line, sizeof line, m)) {
        uint64_t a, b; if (sscanf(line, "%lx-%lx", &a, &b) != 2) continue;
        if (strstr(line, "memory-backend-memfd") && b - a == ram_size) ram_start = a;
    }
    fclose(m);
    if (!ram_start) { fprintf(stderr, "no ram\n"); exit(70); }
    if (!track) return;
    int fd = syscall(323, O_CLOEXEC | O_NONBLOCK | 1);
    uint64_t api[3] = { 0xAA, (1 << 15) | (1 << 13) | (1 << 12), 0 };
    if (fd < 0 || ioctl(fd, UFFDIO_API, api)) { perror("uffd api"); exit(70); }
    uint64_t reg[4] = { ram_start, ram_size, 2, 0 };
    if (ioctl(fd, UFFDIO_REGISTER, reg)) { perror("register"); exit(70); }
    uint64_t wp[3] = { ram_start, ram_size, 1 };
    if (ioctl(fd, UFFDIO_WRITEPROTECT, wp)) { perror("wp"); exit(70); }
    pm = open("/proc/self/pagemap", O_RDONLY);
}
static void idle_cb(uint64_t id, unsigned i) { idles++; }
static void resume_cb(uint64_t id, unsigned i) { resumes++; }
static void at_exit(uint64_t id, void *p) {
    if (track && !mode_none) harvest(mode_guest ? (uint64_t)*bias_p + count : count);
    fprintf(out, "end qemu_icount=%ld count=%lu inline=%lu bias=%ld idles=%lu resumes=%lu cuts=%lu\n", *icount_p, count, inl, bias_p ? *bias_p : -1, idles, resumes, cuts);
    fclose(out); if (dump) fclose(dump);
}
int qemu_plugin_install(uint64_t id, const void *info, int argc, char **argv) {
    const char *path = "/dev/stderr";
    for (int i = 0; i < argc; i++) {
        if (!strncmp(argv[i], "size=", 5)) ram_size = strtoull(argv[i] + 5, 0, 0);
        else if (!strncmp(argv[i], "every=", 6)) every = strtoull(argv[i] + 6, 0, 0);
        else if (!strcmp(argv[i], "mode=guest")) mode_guest = 1;
        else if (!strcmp(argv[i], "mode=none")) mode_none = 1;
        else if (!strcmp(argv[i], "mode=inline")) inline_only = 1, mode_none = 1;
        else if (!strcmp(argv[i], "track=0")) track = 0;
        else if (!strcmp(argv[i], "exact=1")) exact = 1;
        else if (!strncmp(argv[i], "dump=", 5)) dump = fopen(argv[i] + 5, "w");
        else if (!strncmp(argv[i], "out=", 4)) path = argv[i] + 4;
    }
    next_cut = 0;
    out = fopen(path, "w");
    char *ts = dlsym(RTLD_DEFAULT, "timers_state");
    if (ts) { bias_p = (int64_t *)(ts + 0x28); shift_p = (int16_t *)(ts + 0x1a); icount_p = (int64_t *)(ts + 0x40); }
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_idle_cb(id, idle_cb);
    qemu_plugin_register_vcpu_resume_cb(id, resume_cb);
    qemu_plugin_register_atexit_cb(id, at_exit, 0);
    return 0;
}
