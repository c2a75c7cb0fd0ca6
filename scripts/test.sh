#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test.
#   bash scripts/test.sh          # everything (what CI runs)
#   QUICK=1 bash scripts/test.sh  # skip fmt/clippy
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step names the free disk space: a full disk is the likeliest failure on a small machine.
step() { printf '\n== %s  [%s free]\n' "$*" "$(df -h --output=avail . | tail -1 | tr -d ' ')"; }

# CI builds once from cold: incremental caches would only cost disk (gigabytes) and time.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

# --- what the tests need -------------------------------------------------
# e2fsprogs: mkfs.ext4 and debugfs build the real ext4 fixtures (tests/ext4, quickstart).
# qemu-utils: qemu-img and qemu-nbd are the oracles for VHD/VHDX and NBD.
missing=()
command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-utils)
command -v qemu-nbd >/dev/null 2>&1 || missing+=(qemu-utils)
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v debugfs >/dev/null 2>&1 || missing+=(e2fsprogs)
# gcc and valgrind: the C example and C API tests, run under memcheck.
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
# restic and borg: the performance harness's smoke run compares against them.
command -v restic >/dev/null 2>&1 || missing+=(restic)
command -v borg >/dev/null 2>&1 || missing+=(borgbackup)
# python3-venv: the Python bindings are tested in a private venv.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/sbin:/usr/sbin"

# A private venv with maturin, pytest and mypy (bindings-python/requirements-dev.txt).
if [ ! -x .venv/bin/python ]; then
    step "creating .venv"
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r bindings-python/requirements-dev.txt \
    -r alike-xen-sim/requirements-test.txt

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

# --- tests -------------------------------------------------------------------
step "S3 test server (SeaweedFS on loopback, for the object-storage conformance suite)"
s3env=$(bash scripts/s3-server.sh start)
eval "$s3env"
trap 'bash scripts/s3-server.sh stop >/dev/null 2>&1 || true' EXIT

step "cargo test (Rust: unit, integration, CLI, golden vectors, doc tests, committed C header)"
cargo test --workspace --locked

step "Python bindings: build into .venv, pytest, stub and type checks"
# (the Xen tests drive the simulator binary)
cargo build --locked -q -p alike-xen-sim --bin alike-xapi-sim
(cd bindings-python && VIRTUAL_ENV="$PWD/../.venv" ../.venv/bin/maturin develop --locked -q)
.venv/bin/python -m pytest -q bindings-python/tests
.venv/bin/python -m mypy.stubtest alike._native
.venv/bin/python -m mypy --strict bindings-python/python/alike

step "XAPI simulator driven by the official XenAPI Python SDK"
.venv/bin/python -m pytest -q alike-xen-sim/tests/python

step "C ABI: example and API tests against the committed header, also under valgrind"
bash scripts/test-c.sh

step "fuzz: a short run of every target (cargo-fuzz, nightly)"
# Every parser of untrusted bytes has a cargo-fuzz target under fuzz/; the
# same bodies also run on stable as mutation smoke tests inside cargo test.
# Longer runs: cd fuzz && cargo +nightly fuzz run <target> -- -max_total_time=600
if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
    for t in $(cargo fuzz list --fuzz-dir fuzz); do
        log="$(mktemp)"
        if ! (cd fuzz && cargo +nightly fuzz run "$t" -- -max_total_time="${FUZZ_SECONDS:-10}" -rss_limit_mb=2048) >"$log" 2>&1; then
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
    echo "no nightly toolchain or cargo-fuzz here: fuzz bodies ran only as stable smoke tests (cargo test)"
fi

step "performance harness smoke (alike vs restic and borg on 64 MiB images; the real run: bash scripts/bench.sh)"
cargo build --locked -q -p alike-cli -p alike-benches
target/debug/alike-bench --smoke --alike target/debug/alike
rm -rf target/alike-bench

step "quickstart (the README's first command, small)"
cargo run --locked -q -p quickstart -- target/quickstart-test 128
rm -rf target/quickstart-test

echo
echo "all tests passed"
