#!/usr/bin/env bash
# The engine-level figure of docs/hyperv.md: a full backup of a VM's disk read
# over SMB from the simulator's local Samba (`alike hyperv backup`) against
# the same VHDX read from local disk (`alike backup`), both into new stores.
#
#   ALIKE=target/profiling/alike SIM=target/debug/alike-hyperv-sim MIB=1024 bash scripts/hyperv-smb-bench.sh
#
# ALIKE should be an optimised build (`cargo build --profile profiling -p alike-cli`);
# the simulator's speed does not matter (it serves WS-Man; smbd serves the bytes).
# Needs smbd (Debian package samba). Prints one line per run; removes its files.
set -euo pipefail
ALIKE=${ALIKE:-target/profiling/alike}
SIM=${SIM:-target/debug/alike-hyperv-sim}
MIB=${MIB:-1024}
THREADS=${THREADS:-0}
work=$(mktemp -d "${TMPDIR:-/tmp}/hv-bench-XXXXXX")
trap 'kill "$sim_pid" 2>/dev/null; wait "$sim_pid" 2>/dev/null; rm -rf "$work"' EXIT
pw='Bench!pw1'
"$SIM" --listen 127.0.0.1:0 --state "$work/sim" --demo --demo-os-mib "$MIB" --user bench --password "$pw" >"$work/sim.out" &
sim_pid=$!
for _ in $(seq 600); do grep -q "host drive" "$work/sim.out" 2>/dev/null && break; sleep 0.2; done
url=$(awk '/WS-Management at/ {print $NF}' "$work/sim.out")
smb=$(sed -n 's/.* on port \([0-9]*\).*/\1/p' "$work/sim.out")
export ALIKE_PASSWORD=x ALIKE_HYPERV_PASSWORD=$pw ALIKE_CACHE_DIR=$work/cache
mbs() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); b=r['read_bytes']; t=r.get('elapsed_seconds') or r['elapsed_ms']/1000; print(f'{b/1e6:.0f} MB in {t:.2f} s = {b/1e6/t:.0f} MB/s')" "$1"; }
"$ALIKE" -q --store "$work/s1" init --no-encryption --chunking fixed >/dev/null 2>&1
"$ALIKE" -q --store "$work/s1" hyperv --url "$url" --user bench --smb-port "$smb" backup --vm web-01 --threads "$THREADS" --json >"$work/hv.json"
echo "over SMB (alike hyperv backup, both disks):   $(mbs "$work/hv.json")"
disks="$work/sim/C/Hyper-V/web-01/Virtual Hard Disks"
sync
"$ALIKE" -q --store "$work/s2" init --no-encryption --chunking fixed >/dev/null 2>&1
"$ALIKE" -q --store "$work/s2" backup --vm local --threads "$THREADS" --json "$disks/web-01-os.vhdx" "$disks/web-01-data.vhdx" >"$work/local.json"
echo "local files (alike backup, the same VHDX):    $(mbs "$work/local.json")"
