#!/bin/bash
# Prototype measurements for issue 20 (reproducible traces under QEMU 7.2 TCG): the cost of
# icount, of exact per-instruction cuts (rrp.c), of record/replay, and the size of the rr log.
# Usage: examples/rr-prototype/measure.sh OUTDIR   (needs the kit, stress-ng's package, gcc, zstd)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: measure.sh OUTDIR}
mkdir -p "$out"
dt=${DIRTYTRACE:-dirtytrace}
kernel=${KERNEL:-$HOME/.cache/dirtytrace/kit/bzImage}
gcc -O2 -shared -fPIC -o "$out/rrp.so" "$here/rrp.c" -Wl,--unresolved-symbols=ignore-all
for w in busy quiet; do
  [ -f "$out/$w.cpio.gz" ] || "$dt" initramfs --workload "$here/$w.sh" --package stress-ng -o "$out/$w.cpio.gz" >/dev/null
done
MEM=$((512 << 20))
# run TAG WORKLOAD ICOUNT(none|plain|record|replay) PLUGIN(none|exact)
run() {
  local tag=$1 w=$2 ic=$3 pl=$4 args=()
  case $ic in
    none) ;;
    plain) args+=(-icount shift=0,sleep=off -rtc clock=vm) ;;
    *) args+=(-icount "shift=0,sleep=off,rr=$ic,rrfile=$out/$w.rr" -rtc clock=vm) ;;
  esac
  [ "$pl" = exact ] && args+=(-plugin "$out/rrp.so,size=$MEM,mode=guest,exact=1,every=100000000,out=$out/$tag.cuts")
  local t0 t1
  t0=$(date +%s.%N)
  qemu-system-x86_64 -accel tcg -cpu qemu64 -nodefaults -no-user-config -display none -no-reboot \
    -machine pc,memory-backend=ram -object memory-backend-memfd,id=ram,size=$MEM -m ${MEM}B -smp 1 \
    -serial "file:$out/$tag.console" -kernel "$kernel" -initrd "$out/$w.cpio.gz" \
    -append "console=ttyS0 reboot=k panic=-1 quiet" "${args[@]}"
  t1=$(date +%s.%N)
  # Guest seconds: the kernel's timestamp on its last line (its clock is the virtual clock).
  local guest
  guest=$(grep -o '^\[ *[0-9.]*\]' "$out/$tag.console" | tail -1 | tr -d '[] ')
  echo "$tag wall_s=$(echo "$t1 - $t0" | bc) guest_s=$guest ops=$(awk '/metrc.*vm /{print $5}' "$out/$tag.console")"
}
for w in busy quiet; do
  run "$w-tcg" $w none none
  run "$w-icount" $w plain none
  run "$w-icount-exact" $w plain exact
  run "$w-record" $w record none
  run "$w-replay" $w replay none
  cmp "$out/$w-record.console" "$out/$w-replay.console" && echo "$w: replay console identical"
  run "$w-record-exact" $w record exact
  ls -l "$out/$w.rr" | awk -v w=$w '{print w ": rr log bytes " $5}'
  zstd -q -f -19 "$out/$w.rr" -o "$out/$w.rr.zst" && ls -l "$out/$w.rr.zst" | awk -v w=$w '{print w ": zstd -19 bytes " $5}'
  zstd -q -f -3 "$out/$w.rr" -o "$out/$w.rr.zst3" && ls -l "$out/$w.rr.zst3" | awk -v w=$w '{print w ": zstd -3 bytes " $5}'
  run "$w-replay-exact" $w replay exact
  cmp "$out/$w-record-exact.cuts" "$out/$w-replay-exact.cuts" && echo "$w: replay cuts and bitmap hashes identical"
done
