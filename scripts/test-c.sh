#!/usr/bin/env bash
# Builds libalike, compiles the C example and the C API tests against the
# committed header, runs them, then runs them again under valgrind (memcheck):
# any invalid access or definite/indirect leak fails. Last, installs the
# library into a temporary prefix (scripts/install-c.sh) and builds and runs
# the example against that copy through pkg-config.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p alike-c --locked
cargo build -p alike-xen-sim --bin alike-xapi-sim --locked -q
cargo build -p alike-hyperv-sim --bin alike-hyperv-sim --locked -q
lib="$PWD/target/debug"
out="$(mktemp -d)"
sim_pids=()
# A local pool's bridge (jobs test), which holds NET.1.
drop_bridge() {
    local net dev
    net=$(cat "$1/net" 2>/dev/null) || return 0
    dev=$(ip -o -4 addr show | awk -v a=" $net.1/" '$0 ~ a {print $2}')
    [ -z "$dev" ] || ip link del "$dev" 2>/dev/null || true
}
trap 'drop_bridge "$out/jobs"; rm -rf "$out"; for p in "${sim_pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
# A fresh simulated XenServer pool for each run of the API tests (its first line is its URL).
start_sim() {
    local d="$out/sim-$1"
    mkdir -p "$d"
    mkfifo "$d/out"
    target/debug/alike-xapi-sim --listen 127.0.0.1:0 --state "$d/state" --demo >"$d/out" 2>&1 &
    sim_pids+=($!)
    exec 3<"$d/out"
    read -r first <&3
    xapi_url=$(printf '%s\n' "$first" | grep -o 'https\?://[^ ]*')
    # keep draining the simulator's output so it never blocks on a full pipe
    cat <&3 >/dev/null &
    exec 3<&-
}
# A fresh simulated Hyper-V host (with its smbd) for each run of the API tests: hv_args is its URL
# and SMB port, or nothing without smbd (the Hyper-V part of the tests is then skipped).
start_hv() {
    hv_args=()
    if ! [ -x /usr/sbin/smbd ] && ! [ -x /usr/bin/smbd ]; then
        echo "smbd not installed: the C API's Hyper-V tests are skipped" >&2
        return
    fi
    local d="$out/hv-$1"
    mkdir -p "$d"
    target/debug/alike-hyperv-sim --listen 127.0.0.1:0 --state "$d/state" --demo --user hvadmin --password 'C-pw!1' \
        --smb-port 0 >"$d/out" 2>&1 &
    sim_pids+=($!)
    for _ in $(seq 300); do grep -q "host drive" "$d/out" 2>/dev/null && break; sleep 0.1; done
    hv_args=("$(awk '/WS-Management at/ {print $NF}' "$d/out")" "$(sed -n 's/.* on port \([0-9]*\).*/\1/p' "$d/out")")
}
cflags=(-std=c11 -Wall -Wextra -Werror -g -I bindings-c/include)
gcc "${cflags[@]}" examples/c/backup.c -L "$lib" -lalike -Wl,-rpath,"$lib" -o "$out/backup"
gcc "${cflags[@]}" bindings-c/tests/c/test_api.c -L "$lib" -lalike -Wl,-rpath,"$lib" -o "$out/test_api"
gcc "${cflags[@]}" bindings-c/tests/c/test_files.c -L "$lib" -lalike -Wl,-rpath,"$lib" -o "$out/test_files"
gcc "${cflags[@]}" bindings-c/tests/c/test_xen_replica.c -L "$lib" -lalike -Wl,-rpath,"$lib" -o "$out/test_xen_replica"
gcc "${cflags[@]}" bindings-c/tests/c/test_jobs.c -L "$lib" -lalike -Wl,-rpath,"$lib" -o "$out/test_jobs"
gcc "${cflags[@]}" bindings-c/tests/c/test_services.c -L "$lib" -lalike -lpthread -Wl,-rpath,"$lib" -o "$out/test_services"
# The static library links too (with the system libraries Rust needs).
gcc "${cflags[@]}" examples/c/backup.c "$lib/libalike.a" -lpthread -ldl -lm -o "$out/backup-static"

head -c $((8 << 20)) /dev/urandom > "$out/disk.img"
truncate -s 24M "$out/disk.img"

run() {
    local name=$1
    shift
    mkdir -p "$out/$name"
    "$@"
}
run plain "$out/backup" "$out/plain/store" "$out/disk.img" "$out/plain/restored.img" --insecure-fast-kdf
cmp "$out/disk.img" "$out/plain/restored.img"
run static "$out/backup-static" "$out/static/store" "$out/disk.img" "$out/static/restored.img" --insecure-fast-kdf
cmp "$out/disk.img" "$out/static/restored.img"
start_sim plain
start_hv plain
run api "$out/test_api" "$out/api" "$xapi_url" "${hv_args[@]}"
# Two pools for the Xen replica tests: the source and the replica's.
start_sim xr-a
xr_a=$xapi_url
start_sim xr-b
run xen-replica "$out/test_xen_replica" "$out/xen-replica" "$xr_a" "$xapi_url"
start_sim services
run services "$out/test_services" "$out/services" "$xapi_url"
# An ext4 image of a small tree (mke2fs), for the file-restore tests.
mkdir -p "$out/fs-src/dir"
printf 'hello from C\n' >"$out/fs-src/hello.txt"
chmod 640 "$out/fs-src/hello.txt"
head -c 300000 /dev/urandom >"$out/fs-src/dir/inner.txt"
ln -s ../hello.txt "$out/fs-src/dir/link"
PATH="$PATH:/sbin:/usr/sbin" mkfs.ext4 -q -F -d "$out/fs-src" "$out/fs.img" 16M >/dev/null
run files "$out/test_files" "$out/files" "$out/fs.img" "$out/fs-src"
# A job on a local processor (root, iproute2 and sshd only): the worker is the alike binary.
cargo build -p alike-cli --bin alike --locked -q
jobs_rc=0
bash scripts/local-pool-config.sh "$PWD/target/debug/alike" "$out/jobs" c-job || jobs_rc=$?
case $jobs_rc in
    0) run jobs "$out/test_jobs" "$out/jobs/alike.toml" c-job >/dev/null ;;
    3) echo "local processors need root, iproute2 and sshd: C jobs test skipped" >&2
       [ -z "${CI:-}" ] || exit 1 ;;
    *) exit "$jobs_rc" ;;
esac

if command -v valgrind >/dev/null; then
    vg=(valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
        --show-leak-kinds=definite,indirect)
    run vg-plain "${vg[@]}" "$out/backup" "$out/vg-plain/store" "$out/disk.img" "$out/vg-plain/restored.img" --insecure-fast-kdf
    cmp "$out/disk.img" "$out/vg-plain/restored.img"
    start_sim vg
    start_hv vg
    run vg-api "${vg[@]}" "$out/test_api" "$out/vg-api" "$xapi_url" "${hv_args[@]}"
    start_sim vg-xr-a
    xr_a=$xapi_url
    start_sim vg-xr-b
    run vg-xen-replica "${vg[@]}" "$out/test_xen_replica" "$out/vg-xen-replica" "$xr_a" "$xapi_url"
    start_sim vg-services
    run vg-services "${vg[@]}" "$out/test_services" "$out/vg-services" "$xapi_url"
    run vg-files "${vg[@]}" "$out/test_files" "$out/vg-files" "$out/fs.img" "$out/fs-src"
    if [ "$jobs_rc" = 0 ]; then
        run vg-jobs "${vg[@]}" "$out/test_jobs" "$out/jobs/alike.toml" c-job >/dev/null
    fi
    echo "C example and C API tests: clean under valgrind"
else
    echo "valgrind not installed: C tests ran without memcheck" >&2
    [ -z "${CI:-}" ] || exit 1
fi

# The installed copy, as a user gets it: scripts/install-c.sh into a fresh
# prefix (from the dev build made above, to save a release build here; its
# documented default is release), then the example built through pkg-config
# against the installed header and libraries alone, shared and static.
prefix="$out/prefix"
if ! PROFILE=dev bash scripts/install-c.sh "$prefix" >"$out/install.log" 2>&1; then
    cat "$out/install.log"
    exit 1
fi
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
cflags=(-std=c11 -Wall -Wextra -Werror)
# shellcheck disable=SC2046  # pkg-config's output is meant to be split
gcc "${cflags[@]}" examples/c/backup.c $(pkg-config --cflags --libs alike) -o "$out/backup-installed"
# shellcheck disable=SC2046
gcc "${cflags[@]}" examples/c/backup.c $(pkg-config --cflags alike) "$(pkg-config --variable=libdir alike)/libalike.a" \
    $(pkg-config --variable=native_libs alike) -o "$out/backup-installed-static"
# The program asks for the soname, which the loader finds in the prefix.
needed=$(readelf -d "$out/backup-installed")
grep -q 'NEEDED.*\[libalike\.so\.[0-9]*\]' <<<"$needed" || { echo "backup-installed: no NEEDED libalike.so.N"; exit 1; }
needed=$(readelf -d "$out/backup-installed-static")
if grep -q 'NEEDED.*libalike' <<<"$needed"; then echo "backup-installed-static needs a shared libalike"; exit 1; fi
run installed env LD_LIBRARY_PATH="$prefix/lib" "$out/backup-installed" "$out/installed/store" "$out/disk.img" \
    "$out/installed/restored.img" --insecure-fast-kdf
cmp "$out/disk.img" "$out/installed/restored.img"
run installed-static "$out/backup-installed-static" "$out/installed-static/store" "$out/disk.img" \
    "$out/installed-static/restored.img" --insecure-fast-kdf
cmp "$out/disk.img" "$out/installed-static/restored.img"
echo "C library installed into a prefix (scripts/install-c.sh): example built with pkg-config, shared and static, runs"
