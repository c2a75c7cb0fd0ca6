#!/usr/bin/env bash
# The performance harness in one command (issue 7; benches/README.md).
#
#   bash scripts/bench.sh                 # full run: 4 GiB ext4 pair, alike vs restic vs borg,
#                                         # ceilings, change hints, scaling 1/4/16 GiB,
#                                         # core scaling (--threads 1..cores), the NTFS
#                                         # pair's stored bytes, casync's on both
#                                         # pairs (issue 13);
#                                         # rewrites docs/performance.md (~15-25 min on 2 cores)
#   bash scripts/bench.sh --smoke         # tiny images, every step and peer, < 1 min
#   bash scripts/bench.sh --no-scaling    # any alike-bench option passes through
#   STAGES=1 bash scripts/bench.sh        # also the criterion stage benchmarks
#
# Installs what it needs when missing (as root, or with sudo): restic and
# borgbackup (the peers), casync (stored bytes on the pairs only), e2fsprogs (the ext4 images), ntfs-3g (mkntfs and
# the FUSE driver, for the NTFS images; --smoke does not use them). Builds the
# `alike` CLI and `alike-bench` in the `profiling` profile (release code with
# line tables, so `perf` of a run names files and lines; target/profiling/);
# PROFILE=release measures the stripped binaries users get, PROFILE=dev the
# debug ones (quick smoke runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/sbin:/usr/sbin"

missing=()
command -v restic >/dev/null 2>&1 || missing+=(restic)
command -v borg >/dev/null 2>&1 || missing+=(borgbackup)
command -v casync >/dev/null 2>&1 || missing+=(casync)
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v debugfs >/dev/null 2>&1 || missing+=(e2fsprogs)
command -v mkntfs >/dev/null 2>&1 || missing+=(ntfs-3g)
if ((${#missing[@]})) && [ -z "${NO_INSTALL:-}" ]; then
    echo "bench.sh: installing ${missing[*]}" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    if $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; then
        :
    else
        echo "bench.sh: could not install ${missing[*]}: the run goes on without them" >&2
    fi
fi

PROFILE=${PROFILE:-profiling}
case "$PROFILE" in dev | debug) PROFILE=dev BIN=target/debug ;; *) BIN=target/$PROFILE ;; esac
cargo build --profile "$PROFILE" --locked -p alike-cli -p alike-benches

if [ -n "${STAGES:-}" ]; then
    cargo bench --locked -p alike-benches --bench stages
fi

exec "$BIN/alike-bench" --alike "$BIN/alike" "$@"
