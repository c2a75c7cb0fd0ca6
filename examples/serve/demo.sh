#!/usr/bin/env bash
# Runs the daemon of examples/serve/alike.toml against the XAPI simulator's
# demo pool: builds both programs, starts alike-xapi-sim --demo on
# 127.0.0.1:8099, makes the store and the administrator's credential under
# examples/serve/state/ (the password from ALIKE_SERVE_PASSWORD, else asked),
# then runs `alike serve` in the foreground (Ctrl-C stops both).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
cd "$root"
cargo build -q -p alike-cli --bin alike -p alike-xen-sim --bin alike-xapi-sim
alike="$root/target/debug/alike"
state="$here/state"
mkdir -p "$state/restores"
export ALIKE_XAPI_PASSWORD=alike   # the simulator's documented test password
if [ -z "${ALIKE_SERVE_TOKEN:-}" ]; then
    ALIKE_SERVE_TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "API token for this run: $ALIKE_SERVE_TOKEN"
fi
export ALIKE_SERVE_TOKEN
if [ ! -s "$state/admin.hash" ]; then
    if [ -z "${ALIKE_SERVE_PASSWORD:-}" ]; then
        read -r -s -p "Choose the Manager's password for user admin: " ALIKE_SERVE_PASSWORD
        echo
    fi
    printf '%s' "$ALIKE_SERVE_PASSWORD" | "$alike" serve --hash-password >"$state/admin.hash"
fi
[ -e "$state/store/config" ] || "$alike" --store "$state/store" --cache-dir "$state/cache" init --no-encryption >/dev/null
"$root/target/debug/alike-xapi-sim" --listen 127.0.0.1:8099 --demo --state "$state/sim" >"$state/sim.log" 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT
"$alike" serve --config "$here/alike.toml"
