#!/usr/bin/env bash
# The layering rules of ARCHITECTURE.md ("Architecture invariants"), checked
# on the dependency graph, so that a forbidden dependency fails the test
# command (scripts/test.sh) instead of waiting for a reviewer.
#   bash scripts/check-layering.sh
#
# Each rule lists, for one crate, the packages that must not appear in its
# dependency tree (normal and build edges; dev edges where the rule says so),
# with every feature on and for every target platform: a forbidden crate
# behind a feature or a cfg is still forbidden. A violation prints the rule
# and the path that brings the crate in (`cargo tree -i`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Crates that speak to the network (clients, servers, TLS, sockets).
NETWORK=(reqwest hyper h2 rustls tokio-rustls native-tls openssl russh mio socket2 ureq object_store)
# Our own crates all start with `alike`.
OURS='alike*'

status=0

# forbid RULE CRATE EDGES PATTERN... [--except NAME...]
forbid() {
    local rule=$1 crate=$2 edges=$3
    shift 3
    local patterns=() except=() into=patterns
    for a in "$@"; do
        if [ "$a" = --except ]; then into=except; continue; fi
        if [ $into = patterns ]; then patterns+=("$a"); else except+=("$a"); fi
    done
    local tree=(cargo tree -q -p "$crate" -e "$edges" --all-features --target all)
    local deps
    deps=$("${tree[@]}" --prefix none --format '{p}' | awk -v self="$crate" '$1 != self { print $1 }' | sort -u)
    local d p e hit
    for d in $deps; do
        hit=""
        for p in "${patterns[@]}"; do
            # shellcheck disable=SC2053 # the patterns are globs
            if [[ $d == $p ]]; then hit=1; fi
        done
        for e in "${except[@]}"; do
            if [ "$d" = "$e" ]; then hit=""; fi
        done
        if [ -n "$hit" ]; then
            echo "layering: rule violated: $rule"
            echo "  $crate depends on $d ($edges edges), through:"
            "${tree[@]}" -i "$d" | sed 's/^/    /'
            status=1
        fi
    done
}

forbid "alike-sched (jobs, schedules, history, events) depends on no crate of ours but alike-core, and on no network crate: the facade's runner does the work, its notifiers the sending" \
    alike-sched normal,build "$OURS" "${NETWORK[@]}" --except alike-core

forbid "alike-core knows no store, hypervisor or network crate, and no redb" \
    alike-core normal,build "$OURS" redb "${NETWORK[@]}"

forbid "alike-fs (partitions, volumes and filesystems read from a device) depends on no crate of ours, no redb and no network crate" \
    alike-fs normal,build "$OURS" redb "${NETWORK[@]}"

for c in alike-formats alike-nbd; do
    forbid "$c (formats and protocols, needed whatever the hypervisor) depends on no crate of ours but alike-core, and on no redb or network crate" \
        "$c" normal,build "$OURS" redb "${NETWORK[@]}" --except alike-core
done

forbid "alike-replica (replica targets, driven by the protocol or the facade) depends on no crate of ours but alike-core and alike-formats, and on no redb or network crate" \
    alike-replica normal,build "$OURS" redb "${NETWORK[@]}" --except alike-core alike-formats
forbid "alike-repl (the replication protocol and its TCP shell) depends on no crate of ours, no redb and no network crate: the protocol is sans I/O, the shell uses std::net" \
    alike-repl normal,build "$OURS" redb "${NETWORK[@]}"

forbid "alike-replicate (the replication engine) depends on no crate of ours but alike-core, alike-repl and alike-replica, and on no redb or network crate: sources and replicas come from above, the TCP shell is std::net" \
    alike-replicate normal,build "$OURS" redb "${NETWORK[@]}" --except alike-core alike-repl alike-replica alike-formats

forbid "alike-netns (local processors: namespaces, veth pairs, sshd) depends on no crate of ours, no redb and no network crate: it drives ip, sshd and mount" \
    alike-netns normal,build "$OURS" redb "${NETWORK[@]}"

forbid "alike-remote (the processor protocol and the SSH client) depends on no crate of ours but alike-core, on no redb, and on no network crate but russh and tokio's own" \
    alike-remote normal,build "$OURS" redb "${NETWORK[@]}" --except alike-core russh mio socket2

# Without its \`ssh\` feature alike-remote is the protocol alone: what the
# worker side and the fuzz target build.
bare=$(cargo tree -q -p alike-remote --no-default-features -e normal,build --target all --prefix none --format '{p}' | awk '{ print $1 }' | sort -u)
for d in russh tokio "${NETWORK[@]}"; do
    if grep -qx "$d" <<<"$bare"; then
        echo "layering: rule violated: alike-remote without its ssh feature depends on no network crate"
        echo "  it depends on $d"
        status=1
    fi
done

for a in alike-xen alike-hyperv alike-ads; do
    forbid "SSH is alike-remote's: the adapters and the store do not speak it" "$a" normal,build russh
done

for a in alike-xen alike-hyperv alike-ads; do
    others=()
    for b in alike-xen alike-hyperv alike-ads; do [ "$a" = "$b" ] || others+=("$b"); done
    forbid "the hypervisor adapters and the store (alike-xen, alike-hyperv, alike-ads) never depend on each other" \
        "$a" normal,build "${others[@]}"
done

for a in alike-xen alike-hyperv; do
    forbid "the hypervisor adapters know no redb (local state lives in the crates above core that own it)" \
        "$a" normal,build redb
done

forbid "the XAPI simulator does not link the Xen client it exists to check (dev-dependencies included)" \
    alike-xen-sim normal,build,dev alike-xen
forbid "the Hyper-V simulator does not link the Hyper-V client it exists to check (dev-dependencies included)" \
    alike-hyperv-sim normal,build,dev alike-hyperv

for c in alike alike-ads alike-core alike-sched alike-python alike-c; do
    forbid "the daemon (alike-serve) sits above the facade: only alike-cli runs it" "$c" normal,build alike-serve
done

if [ $status = 0 ]; then
    echo "layering: all rules hold"
fi
exit $status
