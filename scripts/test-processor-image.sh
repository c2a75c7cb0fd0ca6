#!/usr/bin/env bash
# test-processor-image.sh [ALIKE_BINARY]
#
# Builds the processor appliance (scripts/build-processor-image.sh) with a
# fresh SSH login key and boots its disk under qemu as a pool would: from
# the disk's own boot loader (SeaBIOS → syslinux → kernel; no -kernel), the
# disk opened with snapshot=on so the image is not changed. Two boots:
#   1. with a config drive (label alike-cfg) giving an address (10.0.2.50,
#      not what qemu's DHCP hands out) and an SSH host key: SSH must answer
#      at that address with exactly that host key (StrictHostKeyChecking
#      against a known_hosts holding it); `alike --version` and `alike
#      processor` must answer; then one tiny backup through the processor
#      (`alike backup --via`, the host key pinned, a 16 MiB disk attached to
#      the VM) whose restore on the appliance must equal the disk;
#   2. with no configuration: DHCP, and a host key made at first boot —
#      not the one of boot 1 (the image carries none).
# Opt-in (README, "Processor appliance"); not part of `bash
# scripts/test.sh`. Needs root; installs qemu-system-x86 when missing.
#
# qemu emulates the CPU (TCG; a boot takes ~30–60 s): on this project's
# machines /dev/kvm exists but a KVM guest hangs before the kernel's first
# message (nested virtualization), so KVM=1 asks for it explicitly.
# PREBUILT=DIR boots an image built before (DIR holding processor.vhd and
# the private key `key` whose .pub it was built with).
set -euo pipefail
BIN=${1:-target/release/alike}
HERE=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "test-processor-image: needs root" >&2; exit 1; }
[ -x "$BIN" ] || { echo "test-processor-image: no alike binary at $BIN" >&2; exit 1; }
export PATH="$PATH:/sbin:/usr/sbin"
if ! command -v qemu-system-x86_64 >/dev/null; then
    # bookworm's qemu-system-x86 would pull qemu-utils back to 7.2 from a
    # backports 10.x; take both from the suite qemu-utils came from.
    from=$(apt-cache policy qemu-utils | awk '/\*\*\*/{getline; print $3}' | cut -d/ -f1)
    apt-get update -qq
    if [[ ${from:-} == *backports* ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t "$from" qemu-system-x86 >/dev/null
    else
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null
    fi
fi
W=$(mktemp -d "${TMPDIR:-/var/tmp}/processor-test.XXXXXX")
QPID=
stop() { if [ -n "$QPID" ]; then kill "$QPID" 2>/dev/null || true; wait "$QPID" 2>/dev/null || true; QPID=; fi; }
cleanup() { stop; rm -rf "$W"; }
trap cleanup EXIT
BIN=$(realpath "$BIN")
if [ -n "${PREBUILT:-}" ]; then
    mkdir -p "$W/out" && cp "$PREBUILT/processor.vhd" "$W/out/" && install -m 0600 "$PREBUILT/key" "$W/key"
else
    ssh-keygen -q -t ed25519 -N '' -f "$W/key"
    XVA=${XVA:-0} bash "$HERE/build-processor-image.sh" "$W/out" "$BIN" "$W/key.pub"
fi

# The config drive of boot 1, and the disk its tiny backup reads.
ssh-keygen -q -t ed25519 -N '' -C injected -f "$W/hostkey"
mkdir "$W/cfg"
printf '10.0.2.50\n' > "$W/cfg/address"
printf '24\n' > "$W/cfg/prefix"
printf '10.0.2.2\n' > "$W/cfg/gateway"
install -m 0600 "$W/hostkey" "$W/cfg/host-key"
mkfs.ext4 -q -L alike-cfg -d "$W/cfg" "$W/cfg.img" 8M >/dev/null
head -c 6M /dev/urandom > "$W/data.img"
truncate -s 16M "$W/data.img"
head -c 1M /dev/urandom | dd of="$W/data.img" bs=1M seek=12 conv=notrunc status=none

ACCEL=(-accel tcg -cpu max -smp 1); [ "${KVM:-0}" = 1 ] && ACCEL=(-enable-kvm -cpu host -smp 2)
# boot NAME GUEST_ADDRESS [qemu args…]: the disk on IDE (as a Xen HVM guest's
# emulated boot disk); SSH forwarded to GUEST_ADDRESS:22.
boot() {
    local name=$1 guest=$2; shift 2
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    qemu-system-x86_64 "${ACCEL[@]}" -m 1024 -nographic -no-reboot \
        -drive "file=$W/out/processor.vhd,format=vpc,if=ide,index=0,media=disk,snapshot=on" \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-$guest:22" -device virtio-net-pci,netdev=n0 \
        "$@" > "$W/console-$name.log" 2>&1 &
    QPID=$!
    T0=$(date +%s)
}
# wait_ssh NAME KNOWN_HOSTS CHECKING: until SSH logs in, qemu exits or 600 s (TCG on a busy machine is slow).
wait_ssh() {
    local name=$1
    SSH=(ssh -i "$W/key" -p "$PORT" -o UserKnownHostsFile="$2" -o StrictHostKeyChecking="$3"
         -o ConnectTimeout=5 -o BatchMode=yes -o LogLevel=ERROR root@127.0.0.1)
    until "${SSH[@]}" true 2>"$W/ssh-$name.err"; do
        if grep -q "REMOTE HOST IDENTIFICATION HAS CHANGED\|Host key verification failed" "$W/ssh-$name.err"; then
            cat "$W/ssh-$name.err"; echo "test-processor-image: boot $name: wrong host key" >&2; exit 1
        fi
        kill -0 "$QPID" 2>/dev/null || { tail -30 "$W/console-$name.log"; echo "test-processor-image: qemu exited" >&2; exit 1; }
        if [ $(($(date +%s) - T0)) -gt 600 ]; then
            tail -40 "$W/console-$name.log"; echo "test-processor-image: boot $name: no SSH after 600 s" >&2; exit 1
        fi
        sleep 2
    done
    echo "boot $name: SSH answered $(($(date +%s) - T0)) s after qemu started"
}

# Boot 1: configured by the config drive.
boot configured 10.0.2.50 \
    -drive "file=$W/cfg.img,format=raw,if=none,id=cfg,readonly=on" -device virtio-blk-pci,drive=cfg,serial=alike-cfg \
    -drive "file=$W/data.img,format=raw,if=none,id=data,readonly=on" -device virtio-blk-pci,drive=data,serial=alike-data
printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cut -d' ' -f1,2 "$W/hostkey.pub")" > "$W/known_hosts"
wait_ssh configured "$W/known_hosts" yes
grep -q "alike-processor-setup: address 10.0.2.50/24 from config drive" "$W/console-configured.log" \
    || { echo "test-processor-image: the console does not say the config drive's address was taken" >&2; exit 1; }
v=$("${SSH[@]}" alike --version)
echo "on the appliance: $v"
[ "$v" = "$("$BIN" --version)" ] || { echo "test-processor-image: alike --version said: $v" >&2; exit 1; }
hello=$("${SSH[@]}" alike processor </dev/null 2>&1 | head -1 || true)
[[ $hello == *'"type":"hello"'* ]] || { echo "test-processor-image: alike processor said: $hello" >&2; exit 1; }
echo "alike processor says hello: $hello"
# The host key is exactly the injected one (the pin above already said so)
# and the config drive's copy is not left anywhere readable in /run.
[ "$("${SSH[@]}" cat /run/alike/host-key.pub | cut -d' ' -f2)" = "$(cut -d' ' -f2 "$W/hostkey.pub")" ]
"${SSH[@]}" '! ls /run/alike/cfg 2>/dev/null'

# One tiny backup through the processor: the passphrase only in the SSH
# channel (a file here, sent by alike), the store on the appliance.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$W/pw"
"${SSH[@]}" 'umask 077; cat > /root/pw' < "$W/pw"
"${SSH[@]}" alike --password-file /root/pw -q init --store /root/store >/dev/null
dev=/dev/disk/by-id/virtio-alike-data
fp=$(ssh-keygen -l -f "$W/hostkey.pub" | cut -d' ' -f2)
t=$(date +%s.%N)
"$BIN" backup -q --via "root@127.0.0.1:$PORT" --ssh-key "$W/key" --host-key "$fp" \
    --store /root/store --password-file "$W/pw" --vm tiny "$dev" > "$W/backup.out"
echo "backup of a 16 MiB disk through the processor: $(python3 -c "import time; print(f'{time.time() - $t:.1f}')") s (TCG)"
"${SSH[@]}" alike --password-file /root/pw -q restore --store /root/store --vm tiny -o /root/back.raw latest
[ "$("${SSH[@]}" sha256sum /root/back.raw | cut -d' ' -f1)" = "$(sha256sum "$W/data.img" | cut -d' ' -f1)" ] \
    || { echo "test-processor-image: the restored disk differs from the one backed up" >&2; exit 1; }
echo "backup through the processor restores bit-exact"
"${SSH[@]}" poweroff >/dev/null 2>&1 || true
for _ in $(seq 30); do kill -0 "$QPID" 2>/dev/null || break; sleep 1; done
stop

# Boot 2: nothing configured — DHCP (qemu hands out 10.0.2.15) and a host
# key made at this boot.
boot unconfigured 10.0.2.15
: > "$W/known_hosts2"
wait_ssh unconfigured "$W/known_hosts2" accept-new
grep -q "no address configured: DHCP" "$W/console-unconfigured.log"
made=$(awk '{print $3}' "$W/known_hosts2")
[ -n "$made" ] && [ "$made" != "$(cut -d' ' -f2 "$W/hostkey.pub")" ] \
    || { echo "test-processor-image: boot 2 did not make its own host key" >&2; exit 1; }
[ "$("${SSH[@]}" cat /run/alike/host-key.pub | cut -d' ' -f2)" = "$made" ]
echo "boot 2: DHCP, a host key of its own: $(ssh-keygen -l -f "$W/known_hosts2" | cut -d' ' -f2)"
"${SSH[@]}" poweroff >/dev/null 2>&1 || true
for _ in $(seq 30); do kill -0 "$QPID" 2>/dev/null || break; sleep 1; done
stop
echo "processor image: $(stat -c %s "$W/out/processor.vhd") bytes VHD (the guide's appliance: 128 MB)"
echo "test-processor-image: all checks passed"
