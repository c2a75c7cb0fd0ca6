#!/usr/bin/env bash
# nbd-bench.sh ALIKE IMG [RUNS]
#
# A whole disk copied through NBD against `alike restore` of the same
# version (issue 15): IMG is backed up into a fresh store in a temporary
# directory, then, RUNS times each (default 3), with the page cache dropped
# before every run (root):
#   restore      alike restore VERSION -o OUT
#   nbd          qemu-img convert -f raw -O raw nbd://… OUT  (from a fresh `alike serve-nbd`)
#   nbd-t-none   the same with `-t none` (qemu-img writes OUT with O_DIRECT, as restore does)
# Each copy is compared with IMG once. Prints every run's wall time, the CPU
# seconds it took (restore's; the server's plus qemu-img's) and the 1-minute
# load, then the minimum of each: on a loaded machine CPU seconds are the
# steadier figure. ALIKE is the binary to measure
# (a release or profiling build); a second binary as ALIKE_BEFORE adds
# `nbd-before` rows (the same copy served by it), for before/after figures.
#
# Images as in docs/performance.md: a 4 GiB ext4 image with ~1.8 GiB of
# real files, e.g. `mkfs.ext4 -b 4096 -d TREE IMG 4096M` of a copy of /usr.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 ALIKE IMG [RUNS]" >&2; exit 2; }
A=$(realpath "$1"); IMG=$(realpath "$2"); RUNS=${3:-3}
for t in qemu-img cmp bc; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done
W=$(mktemp -d "${TMPDIR:-/var/tmp}/nbd-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
export ALIKE_PASSWORD=bench ALIKE_STORE=$W/store ALIKE_CACHE_DIR=$W/cache
"$A" init >/dev/null 2>&1
"$A" backup -q --vm bench "$IMG" >/dev/null
V=$("$A" versions --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
kinds="restore nbd nbd-t-none"
[ -n "${ALIKE_BEFORE:-}" ] && kinds="$kinds nbd-before nbd-before-t-none"
declare -A best bcpu
echo "version ${V:0:12} of $IMG; $(nproc) cores"
for i in $(seq "$RUNS"); do
  for k in $kinds; do
    rm -f "$W/out.img"; drop
    load=$(cut -d' ' -f1 /proc/loadavg)
    if [ $k = restore ]; then
      t0=$(date +%s.%N); /usr/bin/time -o "$W/time" -f "%U %S" "$A" restore -q "$V" -o "$W/out.img" >/dev/null; t1=$(date +%s.%N)
      cpu=$(awk '{print $1 + $2}' "$W/time")
    else
      S=$A; case $k in nbd-before*) S=$(realpath "$ALIKE_BEFORE");; esac
      Q=(); case $k in *t-none) Q=(-t none);; esac
      rm -f "$W/line"
      "$S" serve-nbd "$V" --listen 127.0.0.1:0 >"$W/line" 2>>"$W/serve.log" & sp=$!
      for _ in $(seq 300); do [ -s "$W/line" ] && break; sleep 0.1; done
      uri=$(awk '{print $3}' "$W/line")
      t0=$(date +%s.%N); /usr/bin/time -o "$W/time" -f "%U %S" qemu-img convert "${Q[@]}" -f raw -O raw "$uri" "$W/out.img"; t1=$(date +%s.%N)
      tick=$(getconf CLK_TCK)
      cpu=$(awk -v t="$tick" -v q="$(awk '{print $1 + $2}' "$W/time")" '{print ($14 + $15) / t + q}' /proc/$sp/stat)
      kill -INT $sp; wait $sp || true
    fi
    s=$(echo "$t1 - $t0" | bc)
    printf '%-18s run %d: %6.2f s wall, %5.2f s CPU  (load %s)\n' "$k" "$i" "$s" "$cpu" "$load"
    [ "$i" = 1 ] && { cmp -s "$W/out.img" "$IMG" || { echo "$k: the copy differs" >&2; exit 1; }; }
    if [ -z "${best[$k]:-}" ] || (( $(echo "$s < ${best[$k]}" | bc) )); then best[$k]=$s; fi
    if [ -z "${bcpu[$k]:-}" ] || (( $(echo "$cpu < ${bcpu[$k]}" | bc) )); then bcpu[$k]=$cpu; fi
  done
done
for k in $kinds; do printf 'min %-18s %6.2f s wall, %5.2f s CPU\n' "$k" "${best[$k]}" "${bcpu[$k]}"; done
