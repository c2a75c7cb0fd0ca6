#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test.
#   bash scripts/test.sh          # everything (what CI runs: .ci/run)
#   QUICK=1 bash scripts/test.sh  # skip fmt/clippy
#
# Under CI (the `CI` variable set, as .ci/run sets it) nothing is optional:
# a step whose tool is missing and cannot be installed fails, and so does a
# Rust test that would skip (alike_testing::skip). On a developer's machine
# such a step or test prints that it skipped and why.
# Long soaks, image builds and boots are not here: see the README.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step names the free disk space (a full disk is the likeliest failure
# on a small machine) and the time the previous one took; the end prints
# every step's time (also when a step fails).
steps=()
step_name=""
step_t0=$SECONDS
end_step() {
    [ -n "$step_name" ] || return 0
    local t=$((SECONDS - step_t0))
    steps+=("$(printf '%3dm%02ds  %s%s' $((t / 60)) $((t % 60)) "$step_name" "${1:-}")")
    printf -- '-- %s: %dm%02ds\n' "$step_name" $((t / 60)) $((t % 60))
    step_name=""
}
# step NAME [WHAT]: NAME goes in the summary, WHAT only in the log.
step() {
    end_step
    step_name=$1
    step_t0=$SECONDS
    printf '\n== %s%s  [%s free]\n' "$1" "${2:+ ($2)}" "$(df -h --output=avail . | tail -1 | tr -d ' ')"
}
summary() {
    local rc=$1
    end_step "$([ "$rc" = 0 ] || echo '  <- FAILED')"
    if ((${#steps[@]})); then
        echo
        echo "step times (total $((SECONDS / 60))m$(printf %02d $((SECONDS % 60)))s):"
        printf '  %s\n' "${steps[@]}"
    fi
}
cleanup=()  # commands run at exit, whatever happened
out_err=$(mktemp)
cleanup+=("rm -f '$out_err'")
on_exit() {
    local rc=$? c
    summary "$rc"
    for c in "${cleanup[@]}"; do eval "$c" || true; done
}
trap on_exit EXIT

# Something a step needs and that cannot be had: fatal under CI, a warning
# elsewhere. Returns 1 (the caller then skips what needs it).
unavailable() {
    if [ -n "${CI:-}" ]; then
        echo "CI: $* (under CI nothing may be skipped)" >&2
        exit 1
    fi
    echo "warning: $*" >&2
    return 1
}

# CI builds once from cold: incremental caches would only cost disk (gigabytes) and time.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

# --- what the tests need -------------------------------------------------
step "install tools"
# tool → Debian package; each line says which step needs it.
tools=(
    qemu-img:qemu-utils    # VHD/VHDX tests: qemu-img is the oracle
    qemu-nbd:qemu-utils    # NBD client tests: qemu-nbd is the server
    qemu-io:qemu-utils     # NBD export tests: writes through the overlay
    nbdinfo:libnbd-bin     # NBD export tests: --map shows the holes
    nbdcopy:libnbd-bin     # ... and a multi-connection copy
    nbdfuse:libnbd-bin     # ... and the export as a file through FUSE
    fusermount3:fuse3      # ... unmounted again
    mkfs.ext4:e2fsprogs    # real ext4 fixtures (tests, quickstart)
    debugfs:e2fsprogs
    e2fsck:e2fsprogs       # file restore: the oracle of journal replay, htree directories
    sgdisk:gdisk           # file restore: GPT disks
    parted:parted          # file restore: MBR disks with logical partitions
    partx:util-linux       # file restore: the oracle of partition numbering
    pvcreate:lvm2          # LVM2 fixtures (alike-fs tests/lvm.rs): pvcreate, vgcreate, vgcfgrestore on loop devices
    losetup:mount          # ... the loop devices they need
    sfdisk:fdisk           # ... and a partition table holding a PV
    openssl:openssl        # NBD over TLS from Python: certificates made at test time
    gcc:gcc                # the C example and C API tests
    valgrind:valgrind      # ... run under memcheck
    pkg-config:pkg-config  # the installed C library is found through alike.pc
    mkntfs:ntfs-3g         # alike-fs NTFS tests: the image is made by mkntfs, ntfscp and ntfs-3g (FUSE)
    ntfscp:ntfs-3g
    ntfs-3g:ntfs-3g
    setfattr:attr          # ... compressed directories, reparse points, DOS names through ntfs-3g
    wimlib-imagex:wimtools # ... libwim compresses the CompactOS (WOF) chunks
    mkfs.vfat:dosfstools   # alike-fs FAT tests
    mcopy:mtools
    restic:restic          # the performance harness's smoke run compares against them
    borg:borgbackup
    casync:casync          # ... and casync's stored bytes on the pairs
    smbd:samba             # the Hyper-V simulator serves its host's share with a private smbd
    smbpasswd:samba-common-bin
    smbclient:smbclient    # ... which smbclient reads in the simulator's test
    sshd:openssh-server    # jobs over SSH: a real OpenSSH server, started by the tests
    ssh-keygen:openssh-client  # ... with throwaway host and client keys
    ip:iproute2            # ... and local processors in network namespaces
    chromium:chromium      # alike serve: the Manager page in headless Chromium (Playwright drives it)
)
export PATH="$PATH:/sbin:/usr/sbin"
missing=()
for t in "${tools[@]}"; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
done
# python3-venv: the Python bindings are tested in a private venv.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "installing ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for t in "${tools[@]}"; do
    command -v "${t%%:*}" >/dev/null 2>&1 ||
        unavailable "${t%%:*} (package ${t#*:}) is not installed: what needs it skips" || true
done

# A private venv with maturin, pytest and mypy (bindings-python/requirements-dev.txt).
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv"
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r bindings-python/requirements-dev.txt \
    -r alike-xen-sim/requirements-test.txt -r alike-hyperv-sim/requirements-test.txt \
    -r alike-serve/requirements-test.txt

# cargo-fuzz on the nightly toolchain: the fuzz step. A fresh machine has no
# cargo-fuzz: building it from crates.io takes about half a minute.
fuzz=1
if ! cargo +nightly --version >/dev/null 2>&1; then
    unavailable "no nightly toolchain (rustup toolchain install nightly): the fuzz step skips" || fuzz=""
elif ! cargo fuzz --version >/dev/null 2>&1; then
    step "install cargo-fuzz" "cargo install cargo-fuzz --locked"
    cargo install -q cargo-fuzz --locked
fi

# --- checks ----------------------------------------------------------------
if [ -z "${QUICK:-}" ]; then
    step "cargo fmt --check"
    cargo fmt --all -- --check
    step "cargo clippy"
    cargo clippy --workspace --all-targets --locked -- -D warnings
    step "layering: the dependency rules of ARCHITECTURE.md (scripts/check-layering.sh)"
    bash scripts/check-layering.sh
    step "cargo check: the facade without its default features (xen, hyperv, s3)"
    cargo check -q --locked -p alike --no-default-features
    cargo check -q --locked -p alike --no-default-features --features xen
fi

step "cargo package --list" "the library crates package as published crates: metadata, README, LICENSE"
for crate in alike-core alike-formats alike-fs alike-nbd alike-netns alike-repl alike-replica alike-replicate alike-remote alike-ads alike-xen alike-hyperv alike-sched alike alike-serve alike-cli; do
    # --allow-dirty: a developer's uncommitted edits are what is being tested.
    files=$(cargo package --list --locked --allow-dirty -p "$crate" 2>"$out_err") || { cat "$out_err"; exit 1; }
    if grep -q warning "$out_err"; then cat "$out_err"; exit 1; fi
    for f in Cargo.toml README.md LICENSE src/lib.rs; do
        [ "$f" = src/lib.rs ] && [ "$crate" = alike-cli ] && f=src/main.rs
        grep -qx "$f" <<<"$files" || { echo "$crate: $f is not in the package"; exit 1; }
    done
done
echo "15 crates: metadata complete, README and LICENSE packaged"

# --- tests -------------------------------------------------------------------
step "S3 test server" "SeaweedFS on loopback, for the object-storage conformance suite"
cleanup+=('bash scripts/s3-server.sh stop >/dev/null 2>&1')
s3env=$(bash scripts/s3-server.sh start)
eval "$s3env"

step "cargo test" "Rust: unit, integration, CLI, golden vectors, doc tests, committed C header"
cargo test --workspace --locked

step "Python bindings" "build into .venv, pytest, stub and type checks"
# (the Xen and Hyper-V tests drive the simulator binaries)
cargo build --locked -q -p alike-xen-sim --bin alike-xapi-sim
cargo build --locked -q -p alike-hyperv-sim --bin alike-hyperv-sim
(cd bindings-python && VIRTUAL_ENV="$PWD/../.venv" ../.venv/bin/maturin develop --locked -q)
.venv/bin/python -m pytest -q bindings-python/tests
.venv/bin/python -m mypy.stubtest alike._native
.venv/bin/python -m mypy --strict bindings-python/python/alike

step "XAPI simulator + XenAPI SDK" "the simulator driven by the official XenAPI Python SDK"
.venv/bin/python -m pytest -q alike-xen-sim/tests/python

step "Hyper-V simulator + pywinrm + smbclient" "WS-Man with NTLM and message encryption driven by pywinrm; the host's share read by smbclient"
cargo build --locked -q -p alike-hyperv-sim --bin alike-hyperv-sim
.venv/bin/python -m pytest -q alike-hyperv-sim/tests/python

step "alike serve" "the daemon end to end: the XAPI simulator, /metrics through the OpenMetrics parser, the Manager in headless Chromium (screenshots in target/serve-browser/)"
cargo build --locked -q -p alike-cli --bin alike
.venv/bin/python -m pytest -q alike-serve/tests/python

step "C ABI" "example and API tests against the committed header, also under valgrind; install into a prefix, build against it"
bash scripts/test-c.sh

step "fuzz" "a short run of every target: cargo-fuzz, nightly, libFuzzer with ASan"
# Every parser of untrusted bytes has a cargo-fuzz target under fuzz/; the
# same bodies also run on stable as mutation smoke tests inside cargo test.
# Longer runs: cd fuzz && cargo +nightly fuzz run <target> -- -max_total_time=600
if [ -n "$fuzz" ]; then
    # Filesystem targets start from small real images (random bytes are never NTFS).
    if [ ! -d fuzz/corpus/ntfs ] || [ ! -d fuzz/corpus/fat ]; then
        FS_FUZZ_SEEDS="$PWD/fuzz/corpus" cargo test -q --locked -p alike-fs --test ntfs_fat fuzz_seeds >/dev/null
    fi
    # One build of every target, then each runs from it.
    (cd fuzz && cargo +nightly fuzz build)
    # Seeds for `fs`: an ext4 image (inline data, a symlink) alone and behind
    # a GPT, made by the real tools; libFuzzer mutates from there.
    mkdir -p fuzz/corpus/fs
    if [ ! -e fuzz/corpus/fs/seed-gpt ]; then
        seed=$(mktemp -d)
        mkdir -p "$seed/t/d" && echo hello >"$seed/t/d/f" && ln -s d/f "$seed/t/l"
        mkfs.ext4 -q -F -b 1024 -N 16 -O ^has_journal,inline_data -I 256 -d "$seed/t" fuzz/corpus/fs/seed-ext4 128K >/dev/null
        truncate -s 192K fuzz/corpus/fs/seed-gpt
        sgdisk -n 1:34:+128K fuzz/corpus/fs/seed-gpt >/dev/null
        dd if=fuzz/corpus/fs/seed-ext4 of=fuzz/corpus/fs/seed-gpt bs=512 seek=34 conv=notrunc status=none
        rm -rf "$seed"
    fi
    for t in $(cargo fuzz list --fuzz-dir fuzz); do
        log="$(mktemp)"
        # Filesystem seeds are whole volumes of a few MiB (libFuzzer's guess caps inputs at 1 MiB).
        case "$t" in ntfs | fat) max_len=(-max_len=4194304) ;; *) max_len=() ;; esac
        if ! (cd fuzz && cargo +nightly fuzz run "$t" -- -max_total_time="${FUZZ_SECONDS:-10}" -rss_limit_mb=2048 "${max_len[@]}") >"$log" 2>&1; then
            tail -40 "$log"
            echo "fuzz target $t failed (crash input under fuzz/artifacts/$t/)"
            exit 1
        fi
        echo "$t: $(grep -E '^Done' "$log" | tail -1)"
        rm -f "$log"
    done
    # The sanitizer build is not used again in this run; on CI its disk is worth more.
    if [ -n "${CI:-}" ]; then rm -rf fuzz/target; fi
else
    echo "skipped: no nightly toolchain (the fuzz bodies ran only as stable smoke tests, in cargo test)"
fi

step "performance harness smoke" "alike vs restic and borg on 128 MiB images; the real run: bash scripts/bench.sh"
cargo build --locked -q -p alike-cli -p alike-benches
target/debug/alike-bench --smoke --alike target/debug/alike
rm -rf target/alike-bench

step "quickstart" "the README's first command, small"
cargo run --locked -q -p quickstart -- target/quickstart-test 128
rm -rf target/quickstart-test

echo
echo "all tests passed"
