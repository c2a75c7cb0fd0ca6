#!/usr/bin/env bash
# Replication against rsync, on the same shaped link (docs/replication-measurements.md):
#
#   - bytes on the wire for a 2% scattered change of a 4 GiB disk: alike
#     (two processes over TCP, the sender keeping its state between runs)
#     against `rsync --inplace -z` of the same images over ssh (sshd as root
#     on a loopback port, throwaway keys), and against the zstd-compressed
#     size of the changed blocks;
#   - the time of that run at 0 ms and 50 ms round trip, same bandwidth cap.
#
# Every byte of a measured run crosses alike-delay-proxy (alike-testing):
# each direction held back RTT/2 and capped at RATE bytes/s; its counters
# are the bytes on the wire (both directions, ssh's or alike-repl's framing
# included).
#
#   bash scripts/repl-bench.sh [WORK_DIR]
#   SIZE_MIB=4096 CHANGE_PCT=2 RATE=26214400 RTTS="0 50" CHUNKINGS="cdc:16/32/64 cdc:8/16/32" \
#       PROFILE=release bash scripts/repl-bench.sh
#   (NO_BUILD=1: use what target/PROFILE holds; a smoke run: SIZE_MIB=256 PROFILE=dev)
#
# Needs about (2 + 2 × chunkings) × the allocated size of the image in free
# space, rsync, openssh-server/client and zstd (installed with apt-get when
# root and missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${1:-$root/target/repl-bench}
size_mib=${SIZE_MIB:-4096}
pct=${CHANGE_PCT:-2}
rate=${RATE:-26214400}
rtts=${RTTS:-0 50}
chunkings=${CHUNKINGS:-cdc:16/32/64 cdc:8/16/32}
profile=${PROFILE:-release}

for t in rsync sshd ssh ssh-keygen zstd python3 column; do
    if ! command -v "$t" >/dev/null && [ ! -x "/usr/sbin/$t" ]; then
        if [ "$(id -u)" = 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q rsync openssh-server openssh-client zstd bsdextrautils >/dev/null
            break
        fi
        echo "repl-bench: $t is missing (apt-get install rsync openssh-server openssh-client zstd)" >&2
        exit 1
    fi
done

if [ -z "${NO_BUILD:-}" ]; then
    echo "building alike and alike-delay-proxy ($profile)"
    cargo build -q --locked --profile "$profile" -p alike-cli -p alike-testing --bin alike --bin alike-delay-proxy
fi
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
alike="$root/target/$dir/alike"
proxy="$root/target/$dir/alike-delay-proxy"

rm -rf "$work"
mkdir -p "$work"
cd "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

echo "making a ${size_mib} MiB image (random, text-like and empty 1 MiB regions)"
python3 - "$size_mib" <<'PY'
import os, random, sys
size = int(sys.argv[1]) << 20
rng = random.Random(1)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(2, 9))) for _ in range(4000)]
# A pool of text (random words of a small vocabulary: zstd takes it to
# about half); each text region is a slice of it at a random place.
pool = " ".join(rng.choice(words) for _ in range(1_200_000)).encode()
with open("src.img", "wb") as f:
    f.truncate(size)
    for mib in range(size >> 20):
        kind = rng.random()
        if kind < 0.40:
            f.seek(mib << 20)
            f.write(os.urandom(1 << 20))
        elif kind < 0.70:
            at = rng.randrange(0, len(pool) - (1 << 20))
            f.seek(mib << 20)
            f.write(pool[at:at + (1 << 20)])
PY
echo "allocated: $(du -h src.img | cut -f1)"

# A shaped link to $1 (RTT $3 ms), its counters in file $2: sets link_port and link_pid.
link() {
    local fifo line
    fifo=$(mktemp -u)
    mkfifo "$fifo"
    "$proxy" --listen 127.0.0.1:0 --to "$1" --delay-ms "$(($3 / 2))" --rate "$rate" --stats "$2" >"$fifo" &
    link_pid=$!
    pids+=("$link_pid")
    read -r line <"$fifo"
    rm -f "$fifo"
    link_port=${line##*:}
}
wire() { awk '{print $1 + $2}' "$1"; }

secret="$work/secret"
echo "a benchmark job secret" >"$secret"

# One alike run between two processes: replica $1, chunking $2, through a
# link of RTT $3 ms (empty: straight to the receiver), the sender's state in
# $4, files tagged $5. Sets run_s.
alike_run() {
    local replica=$1 chunking=$2 rtt=$3 state=$4 tag=$5
    "$alike" -q replicate --vm bench --to-dir "$replica" --chunking "$chunking" --listen 127.0.0.1:0 \
        --secret-file "$secret" --json >"recv-$tag.json" 2>"recv-$tag.err" &
    local recv=$!
    for _ in $(seq 200); do grep -q listening "recv-$tag.err" 2>/dev/null && break; sleep 0.1; done
    local to
    to=$(grep -o '127.0.0.1:[0-9]*' "recv-$tag.err" | head -1)
    if [ -n "$rtt" ]; then
        link "$to" "alike-$tag.stats" "$rtt"
        to="127.0.0.1:$link_port"
    fi
    local t0 t1
    t0=$(date +%s.%N)
    "$alike" -q replicate --vm bench src.img --chunking "$chunking" --connect "$to" --secret-file "$secret" \
        --state-dir "$state" --json >"send-$tag.json"
    wait "$recv"
    t1=$(date +%s.%N)
    run_s=$(python3 -c "print(round($t1 - $t0, 2))")
    if [ -n "$rtt" ]; then
        sleep 0.3
        kill "$link_pid"
    fi
}

echo "rsync's first copy"
cp --sparse=always src.img dest0.img
for c in $chunkings; do
    n=${c//[:\/]/-}
    echo "first replication, $c (two processes, no link shaping)"
    alike_run "replica0-$n" "$c" "" "state0-$n" "first-$n"
    echo "  $run_s s: $(python3 -c "import json; r=json.load(open('send-first-$n.json')); print(r['read_bytes'], 'read,', r['sent_bytes'], 'sent')")"
done

echo "changing ${pct}% of the disk: scattered writes of 4 to 64 KiB"
python3 - "$pct" <<'PY'
import os, random, sys
pct = float(sys.argv[1])
rng = random.Random(2)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(2, 9))) for _ in range(4000)]
pool = " ".join(rng.choice(words) for _ in range(200_000)).encode()
size = os.path.getsize("src.img")
want = int(size * pct / 100)
done = 0
with open("src.img", "r+b") as f, open("changes.bin", "wb") as c:
    while done < want:
        n = 4096 * rng.randrange(1, 17)
        at = rng.randrange(0, (size - n) // 4096) * 4096
        if rng.random() < 0.5:
            data = os.urandom(n)
        else:
            p = rng.randrange(0, len(pool) - n)
            data = pool[p:p + n]
        f.seek(at)
        f.write(data)
        c.write(data)
        done += n
print(f"{done} bytes changed")
PY
changed=$(stat -c %s changes.bin)
changed_z=$(zstd -3 -q -c changes.bin | wc -c)

# sshd on a loopback port, root by key only, throwaway keys.
mkdir -p ssh /run/sshd
ssh-keygen -q -t ed25519 -N '' -f ssh/host
ssh-keygen -q -t ed25519 -N '' -f ssh/user
cp ssh/user.pub ssh/authorized_keys
chmod 600 ssh/authorized_keys
sshport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >ssh/sshd_config <<CFG
Port $sshport
ListenAddress 127.0.0.1
HostKey $work/ssh/host
AuthorizedKeysFile $work/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
PidFile $work/ssh/sshd.pid
CFG
/usr/sbin/sshd -D -e -f ssh/sshd_config 2>ssh/sshd.log &
pids+=($!)
sleep 1

results=()
for rtt in $rtts; do
    echo "--- round trip ${rtt} ms, cap $rate bytes/s each way"
    # rsync --inplace -z over ssh, through the link.
    cp --sparse=always dest0.img dest.img
    link "127.0.0.1:$sshport" "rsync-$rtt.stats" "$rtt"
    t0=$(date +%s.%N)
    rsync --inplace -z -e "ssh -p $link_port -i $work/ssh/user -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR" \
        src.img "root@127.0.0.1:$work/dest.img"
    t1=$(date +%s.%N)
    sleep 0.3
    kill "$link_pid"
    rsync_s=$(python3 -c "print(round($t1 - $t0, 2))")
    rsync_b=$(wire "rsync-$rtt.stats")
    cmp src.img dest.img
    row="$rtt $rsync_b $rsync_s"

    # alike, each chunking: the receiver listens behind the link, the sender dials it.
    for c in $chunkings; do
        n=${c//[:\/]/-}
        rm -rf replica state
        cp -a --sparse=always "replica0-$n" replica
        cp -a "state0-$n" state
        alike_run replica "$c" "$rtt" state "$rtt-$n"
        row="$row $(wire "alike-$rtt-$n.stats") $run_s"
        if [ "$rtt" = "${rtts%% *}" ]; then
            point=$(python3 -c "import json; print(json.load(open('send-$rtt-$n.json'))['point'])")
            "$alike" -q replica export replica --point "$point" --disk 0 --output exported.img
            cmp src.img exported.img
            rm -f exported.img
        fi
    done
    results+=("$row")
done

echo
echo "${pct}% scattered change of a ${size_mib} MiB disk: $changed bytes changed, $changed_z compressed with zstd -3; cap $rate bytes/s"
header="RTT_ms rsync_bytes rsync_s"
for c in $chunkings; do header="$header alike_${c}_bytes alike_s"; done
{
    echo "$header"
    for r in "${results[@]}"; do echo "$r"; done
} | column -t
python3 - "$changed" "$changed_z" "$rate" "$chunkings" "${results[@]}" >results.json <<'PY'
import json, sys
changed, changed_z, rate, chunkings = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
runs = []
for r in sys.argv[5:]:
    v = r.split()
    row = {"rtt_ms": int(v[0]), "rsync_wire_bytes": int(v[1]), "rsync_seconds": float(v[2]), "alike": {}}
    for i, c in enumerate(chunkings):
        n = c.replace(":", "-").replace("/", "-")
        send = json.load(open(f"send-{v[0]}-{n}.json"))
        row["alike"][c] = {"wire_bytes": int(v[3 + 2 * i]), "seconds": float(v[4 + 2 * i]),
                           **{k: send[k] for k in ["read_bytes", "needed_bytes", "sent_bytes", "answer_bytes"]}}
    runs.append(row)
print(json.dumps({"changed_bytes": changed, "changed_zstd3_bytes": changed_z, "rate_bytes_per_second": rate,
                  "runs": runs}, indent=2))
PY
echo "results: $work/results.json"
