#!/usr/bin/env bash
# Writes, into DIR, a configuration file (DIR/alike.toml) of one local pool
# of processors (network namespaces with their own sshd) on a free
# 10.252-254.x.0/24, a store (DIR/store, passphrase in DIR/store.pass), an
# SSH key, and a backup job JOB of one 8 MiB image — for the C and Python
# tests of running jobs on processors. Prints nothing; exits 3 when local
# processors cannot run here (not root, no iproute2 or sshd). DIR/net holds
# the net's first three octets: remove the pool's bridge (`alkl…`, which holds
# NET.1) when done.
# Usage: local-pool-config.sh ALIKE_BINARY DIR JOB
set -euo pipefail
alike=$1 dir=$2 job=$3
[ "$(id -u)" = 0 ] && command -v ip >/dev/null && [ -x /usr/sbin/sshd ] && ip netns list >/dev/null 2>&1 || exit 3
mkdir -p "$dir"
used=$(ip -o -4 addr show)
net=
for i in $(seq 0 767); do
    n=$(( ($$ + i) % 768 ))
    cand="10.$((252 + n / 256)).$((n % 256))"
    if ! grep -q " $cand\." <<<"$used"; then net=$cand; break; fi
done
[ -n "$net" ] || { echo "no free 10.252-254.x.0/24" >&2; exit 1; }
echo "$net" >"$dir/net"
head -c $((4 << 20)) /dev/urandom >"$dir/disk.img"
truncate -s 8M "$dir/disk.img"
printf 'pw-%s\n' "$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$dir/store.pass"
ssh-keygen -q -t ed25519 -N '' -C alike-test -f "$dir/id_ed25519"
ALIKE_PASSWORD=$(cat "$dir/store.pass") "$alike" --store "$dir/store" --cache-dir "$dir/cache" init >/dev/null
cat >"$dir/alike.toml" <<TOML
orchestrator = "t$$"
state_dir = "state"

[[store]]
name = "main"
path = "store"
passphrase = { file = "store.pass" }
cache_dir = "processor-cache"

[[pool]]
name = "lab$$"
kind = "local"
addresses = ["$net.10-$net.11"]
ssh_key = "id_ed25519"
ssh_timeout_seconds = 20
processor_command = "$alike processor"

[[job]]
name = "$job"
kind = "backup"
vms = ["vm-c"]
store = "main"
pool = "lab$$"
disks = { vm-c = ["disk.img"] }
TOML
