#!/usr/bin/env python3
"""A real QEMU precopy migration of dirtytrace's synthetic guest, beside what dirtytrace predicts.

    examples/qemu_migration/migrate.py SPEC.toml [--accel kvm|tcg] [--start 5] [--runs 3]
        [--bandwidth-mib 100] [--downtime-ms 30] [--record-engine qemu|kvm] [--nice N] [--timeout S] [--no-predict] [--json]

1. Writes the spec's guest as a PVH image (`cargo run --example pvh_image`), which starts its
   workload as soon as it boots, paced by this host's TSC.
2. Per run: starts a destination QEMU (`-incoming tcp:127.0.0.1:PORT`) and a source QEMU
   booting the image, sets `max-bandwidth` and `downtime-limit` over QMP, and `migrate`s
   `--start` seconds after the guest's first phase marker on the serial console (the moment
   its first write is due). It polls `query-migrate` until the migration completes and keeps
   QEMU's figures: total time, downtime, bytes transferred, RAM pages, dirty syncs. Both
   QEMUs are killed after each run.
3. Records the same guest with `dirtytrace record` (`--record-engine`, the QEMU engine by
   default), whose trace time 0 is the guest's first instruction, and runs
   `replay --start T --zero-pages skip --max-downtime 30ms`, `simgrid --start T` and SimGrid
   itself (examples/simgrid/migrate) on it.

Timings vary with the host's load: this is a measurement, not a test. Everything it writes
is under a temporary directory, removed at the end. Needs qemu-system-x86_64 (7.2 tested),
cargo, and for SimGrid libsimgrid-dev (examples/simgrid/build.sh).
"""

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MIB = 1024 * 1024
QEMU = os.environ.get("DIRTYTRACE_QEMU", "qemu-system-x86_64")
MARK_PHASE = "DIRTYTRACE:synthetic_phase:"


class Qmp:
    """A QMP client on a unix socket: commands and their answers, events skipped."""

    def __init__(self, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"QEMU's QMP socket {path} did not open within {timeout} s")
                time.sleep(0.05)
        self.file = self.sock.makefile("rw")
        json.loads(self.file.readline())  # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError(f"QEMU closed QMP during {command}")
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error'].get('desc')}")

    def close(self):
        self.sock.close()


def qemu_command(accel, mem, qmp_path):
    return [QEMU, "-accel", accel, "-nodefaults", "-no-user-config", "-display", "none", "-machine", "pc",
            "-m", mem, "-smp", "1", "-qmp", f"unix:{qmp_path},server=on,wait=off"]


def in_child(niceness):
    """What runs in the child (QEMU) before exec: the kernel kills it when this script dies,
    and with `niceness` it runs ahead of the host's other work (negative needs root). Where the
    kernel groups processes by session for the scheduler (`kernel.sched_autogroup_enabled`), a
    process's nice value ranks it only within its session, so QEMU gets a session of its own and
    that session's nice value."""
    def setup():
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if niceness:
            os.setsid()
            try:
                with open("/proc/self/autogroup", "w") as f:
                    f.write(str(niceness))
            except OSError:
                pass  # no autogroups: the process's own nice value is what counts
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
    return setup


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    if proc:
        proc.wait()


def migrate_once(image, accel, mem, start_s, bandwidth, downtime_ms, niceness, timeout_s, tmp):
    """One real migration; QEMU's query-migrate figures."""
    port = free_port()
    src_qmp, dst_qmp = os.path.join(tmp, "src.sock"), os.path.join(tmp, "dst.sock")
    dst = src = None
    try:
        dst = subprocess.Popen(qemu_command(accel, mem, dst_qmp) + ["-incoming", f"tcp:127.0.0.1:{port}"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=in_child(niceness))
        src = subprocess.Popen(qemu_command(accel, mem, src_qmp) + ["-kernel", image, "-serial", "stdio"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               preexec_fn=in_child(niceness))
        began = threading.Event()
        began_at = [None]
        phase_writes = {}

        def console():
            for raw in src.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith(MARK_PHASE):
                    index, writes = (int(x, 16) for x in line[len(MARK_PHASE):].split(":"))
                    if began_at[0] is None:
                        began_at[0] = time.monotonic()
                        began.set()
                    if index > 0:
                        phase_writes[index - 1] = writes

        threading.Thread(target=console, daemon=True).start()
        qmp = Qmp(src_qmp)
        dqmp = Qmp(dst_qmp)
        qmp.execute("migrate-set-parameters", **{"max-bandwidth": int(bandwidth), "downtime-limit": downtime_ms})
        # The destination must accept the same parameters (they are the source's to use).
        if not began.wait(120):
            raise RuntimeError("the guest did not start its workload within 120 s (no phase marker)")
        delay = began_at[0] + start_s - time.monotonic()
        if delay < 0:
            raise RuntimeError(f"this run saw the guest's first marker {-delay:.3f} s too late to migrate on time")
        time.sleep(delay)
        issued = time.monotonic()
        qmp.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
        while True:
            info = qmp.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise RuntimeError(f"the migration {status}: {info.get('error-desc', '')}")
            if time.monotonic() - issued > timeout_s:
                raise RuntimeError(f"the migration did not complete within {timeout_s} s (status {status}, "
                                   f"{info.get('ram', {}).get('transferred', 0)} bytes sent); raise --timeout")
            time.sleep(0.02)
        ram = info["ram"]
        time.sleep(0.05)  # the console thread's last lines
        qmp.close()
        dqmp.close()
        return {
            "start_s": issued - began_at[0],
            "total_time_ms": info["total-time"],
            "downtime_ms": info["downtime"],
            "setup_time_ms": info.get("setup-time"),
            "transferred_bytes": ram["transferred"],
            "ram_total_bytes": ram["total"],
            "duplicate_pages": ram["duplicate"],
            "normal_pages": ram["normal"],
            "normal_bytes": ram["normal-bytes"],
            "dirty_sync_count": ram["dirty-sync-count"],
            "mbps": ram.get("mbps"),
            # What the stream achieved on average: the limit, unless the host's CPUs were busy.
            "achieved_bytes_per_s": ram["transferred"] / (info["total-time"] / 1000.0),
            # Writes the guest made in each phase that ended before the migration did: under
            # its schedule, or fewer when it could not keep pace.
            "phase_writes": dict(phase_writes),
        }
    finally:
        kill(src)
        kill(dst)


def run(cmd, **kw):
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, cwd=ROOT, **kw)
    return out.stdout.decode()


def replay_at(dirtytrace, trace, start_s, bandwidth):
    return first(json.loads(run([dirtytrace, "replay", trace, "--bandwidth", f"{int(bandwidth)}B/s",
                                 "--start", f"{start_s}s", "--zero-pages", "skip", "--max-downtime", "30ms",
                                 "--json"])))


def predict(spec, engine, start_s, bandwidth, tmp, dirtytrace, achieved):
    """Record the guest, then replay, simgrid --start and SimGrid itself; and replay at each
    bandwidth in `achieved` (what the real runs got, which a loaded host keeps below the limit)."""
    trace = os.path.join(tmp, "trace")
    run([dirtytrace, "record", "--workload", spec, "--engine", engine, "--interval", "10ms", "--output", trace],
        stderr=subprocess.DEVNULL)
    speed = f"{int(bandwidth)}B/s"
    replay = replay_at(dirtytrace, trace, start_s, bandwidth)
    params_text = run([dirtytrace, "simgrid", trace, "--start", f"{start_s}s", "--migration-speed", speed,
                       "--json"])
    params = json.loads(params_text)
    with open(os.path.join(trace, "guest_log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    writes = {e["detail"]["phase_index"] - 1: e["detail"]["previous_phase_writes"] for e in log
              if e["kind"] == "phase" and e["detail"].get("previous_phase_writes") is not None}
    out = {"replay": replay, "simgrid_rust": params, "phase_writes": writes,
           "replay_at_achieved": [replay_at(dirtytrace, trace, start_s, b) for b in achieved]}
    migrate = os.path.join(tmp, "migrate")
    try:
        subprocess.run(["sh", os.path.join(ROOT, "examples/simgrid/build.sh"), migrate], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        path = os.path.join(tmp, "params.json")
        with open(path, "w") as f:
            f.write(params_text)
        out["simgrid_cpp"] = json.loads(run([migrate, path, "--json"]))
    except subprocess.CalledProcessError as e:
        out["simgrid_cpp_error"] = (e.stderr or b"").decode()[-2000:]
    return out


def first(v):
    """A replay/simgrid JSON may be one object or a list of one per trace."""
    return v[0] if isinstance(v, list) else v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec")
    ap.add_argument("--accel", choices=["kvm", "tcg"], default="kvm")
    ap.add_argument("--start", type=float, default=5.0, help="seconds after the guest began writing")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--record-engine", choices=["kvm", "qemu"], default="qemu",
                    help="the engine that records the trace (the guest keeps its TSC schedule under both; "
                         "kvm's write-protect faults may slow a fast first pass)")
    ap.add_argument("--bandwidth-mib", type=float, default=100.0)
    ap.add_argument("--downtime-ms", type=int, default=30)
    ap.add_argument("--nice", type=int, default=0,
                    help="run both QEMUs at this niceness (-10: ahead of the host's builds, so that the "
                         "migration gets the CPU it would on a quiet host; negative needs root)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a migration may take")
    ap.add_argument("--no-predict", action="store_true", help="only the real migrations")
    ap.add_argument("--json", action="store_true", help="print everything measured as JSON")
    a = ap.parse_args()
    # SIGTERM and SIGHUP unwind like Ctrl-C, so that the QEMUs are killed and the files removed.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    bandwidth = a.bandwidth_mib * MIB
    with open(a.spec) as f:
        spec_text = f.read()
    mem = next((l.split("=", 1)[1].strip().strip('"') for l in spec_text.splitlines()
                if l.strip().startswith("mem")), "1GiB")
    mem = mem.replace("GiB", "G").replace("MiB", "M")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "pvh_image", "--bin", "dirtytrace"],
                   check=True, cwd=ROOT)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    dirtytrace = os.path.join(target, "release", "dirtytrace")
    tmp = tempfile.mkdtemp(prefix="dirtytrace-migration-")
    try:
        # The spec as it was read: the image and the recording are of the same guest.
        spec = os.path.join(tmp, os.path.basename(a.spec))
        with open(spec, "w") as f:
            f.write(spec_text)
        image = os.path.join(tmp, "guest.elf")
        run([os.path.join(target, "release", "examples", "pvh_image"), spec, image])
        real = [migrate_once(image, a.accel, mem, a.start, bandwidth, a.downtime_ms, a.nice, a.timeout, tmp) for _ in range(a.runs)]
        pred = None if a.no_predict else predict(spec, a.record_engine, a.start, bandwidth, tmp, dirtytrace,
                                                [r["achieved_bytes_per_s"] for r in real])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        print(json.dumps({"real": real, "predicted": pred}, indent=1))
        return
    print(f"{os.path.basename(spec)}: migration {a.start} s after the guest began writing, "
          f"{a.bandwidth_mib} MiB/s, downtime limit {a.downtime_ms} ms, -accel {a.accel}")
    print("QEMU's rounds are its dirty-sync-count minus 2 (one sync at setup, one at completion)")
    print(f"{'':24}{'time ms':>10}{'MiB sent':>10}{'rounds':>8}{'downtime ms':>13}")
    for i, r in enumerate(real):
        print(f"{'real QEMU run ' + str(i + 1):24}{r['total_time_ms']:>10}{r['transferred_bytes'] / MIB:>10.1f}"
              f"{r['dirty_sync_count'] - 2:>8}{r['downtime_ms']:>13}   (migrate issued at {r['start_s']:.3f} s, "
              f"{r['achieved_bytes_per_s'] / MIB:.1f} MiB/s achieved)")
    if len(real) > 1:
        t = [r["total_time_ms"] for r in real]
        b = [r["transferred_bytes"] / MIB for r in real]
        print(f"{'real QEMU median':24}{statistics.median(t):>10.0f}{statistics.median(b):>10.1f}"
              f"{'':>8}{'':>13}   (time {min(t)}-{max(t)} ms)")
    for i, r in enumerate(real):
        print(f"  run {i + 1}: the guest's writes per finished phase {r['phase_writes']}")
    if pred:
        print(f"  recorded ({a.record_engine} engine): the guest's writes per finished phase {pred['phase_writes']}")
        rp = first(pred["replay"])
        print(f"{'replay':24}{rp['total_time_s'] * 1000:>10.0f}{rp['transferred_bytes'] / MIB:>10.1f}"
              f"{rp['rounds']:>8}{rp['downtime_s'] * 1000:>13.1f}")
        m = first(pred["simgrid_rust"])["model"]
        print(f"{'SimGrid model (Rust)':24}{m['total_time_s'] * 1000:>10.0f}{m['transferred_bytes'] / MIB:>10.1f}"
              f"{m['rounds']:>8}{m['downtime_s'] * 1000:>13.1f}")
        for i, rp in enumerate(pred["replay_at_achieved"]):
            label = f"replay at run {i + 1}'s rate"
            print(f"{label:24}{rp['total_time_s'] * 1000:>10.0f}"
                  f"{rp['transferred_bytes'] / MIB:>10.1f}{rp['rounds']:>8}{rp['downtime_s'] * 1000:>13.1f}")
        if "simgrid_cpp" in pred:
            c = pred["simgrid_cpp"]
            print(f"{'SimGrid 3.32 (C++)':24}{c['migration_time_s'] * 1000:>10.0f}"
                  f"{c.get('transferred_bytes', 0) / MIB:>10.1f}{c.get('rounds', '')!s:>8}")
        else:
            print("SimGrid 3.32 (C++): not run:", pred.get("simgrid_cpp_error", ""))


if __name__ == "__main__":
    main()
