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
if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/sbin:/usr/sbin"

# --- checks ----------------------------------------------------------------
if [ -z "${QUICK:-}" ]; then
    step "cargo fmt --check"
    cargo fmt --all -- --check
    step "cargo clippy"
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi

# --- tests -------------------------------------------------------------------
step "cargo test (Rust: unit, integration, CLI, golden vectors, doc tests)"
cargo test --workspace --locked

step "quickstart (the README's first command, small)"
cargo run --locked -q -p quickstart -- target/quickstart-test 128

echo
echo "all tests passed"
