#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test.
#   bash scripts/test.sh          # everything (what CI runs)
#   QUICK=1 bash scripts/test.sh  # skip fmt/clippy
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

# --- what the tests need -------------------------------------------------
# e2fsprogs: mkfs.ext4 and debugfs build the real ext4 fixtures (tests/ext4, quickstart).
missing=()
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v debugfs >/dev/null 2>&1 || missing+=(e2fsprogs)
# gcc and valgrind: the C example and C API tests, run under memcheck.
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
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
.venv/bin/pip install -q --disable-pip-version-check -r bindings-python/requirements-dev.txt

# --- checks ----------------------------------------------------------------
if [ -z "${QUICK:-}" ]; then
    step "cargo fmt --check"
    cargo fmt --all -- --check
    step "cargo clippy"
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi

# --- tests -------------------------------------------------------------------
step "cargo test (Rust: unit, integration, CLI, golden vectors, doc tests, committed C header)"
cargo test --workspace --locked

step "Python bindings: build into .venv, pytest, stub and type checks"
(cd bindings-python && VIRTUAL_ENV="$PWD/../.venv" ../.venv/bin/maturin develop --locked -q)
.venv/bin/python -m pytest -q bindings-python/tests
.venv/bin/python -m mypy.stubtest alike._native
.venv/bin/python -m mypy --strict bindings-python/python/alike

step "C ABI: example and API tests against the committed header, also under valgrind"
bash scripts/test-c.sh

step "quickstart (the README's first command, small)"
cargo run --locked -q -p quickstart -- target/quickstart-test 128

echo
echo "all tests passed"
