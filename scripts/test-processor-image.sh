#!/usr/bin/env bash
# test-processor-image.sh [ALIKE_BINARY]
#
# Builds the processor appliance (scripts/build-processor-image.sh) with a
# fresh SSH key, boots it under qemu (the disk opened with snapshot=on, so
# the image is not changed), and checks that SSH answers with key login and
# that `alike --version` and `alike processor` run there. Opt-in (README,
# "Processor appliance"); not part of `bash scripts/test.sh`. Needs root;
# installs qemu-system-x86 when missing.
#
# qemu emulates the CPU (TCG; the boot takes ~40 s): on this project's
# machines /dev/kvm exists but a KVM guest hangs before the kernel's first
# message (nested virtualization), so KVM=1 asks for it explicitly.
# PREBUILT=DIR boots an image built before (DIR holding processor.vhd,
# vmlinuz, initrd and the private key `key` whose .pub it was built with).
set -euo pipefail
BIN=${1:-target/release/alike}
[ "$(id -u)" = 0 ] || { echo "test-processor-image: needs root" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null
}
W=$(mktemp -d "${TMPDIR:-/var/tmp}/processor-test.XXXXXX")
QPID=
cleanup() { [ -n "$QPID" ] && kill "$QPID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
if [ -n "${PREBUILT:-}" ]; then
    mkdir -p "$W/out" && cp "$PREBUILT"/{processor.vhd,vmlinuz,initrd} "$W/out/" && install -m 0600 "$PREBUILT/key" "$W/key"
else
    ssh-keygen -q -t ed25519 -N '' -f "$W/key"
    bash "$(dirname "$0")/build-processor-image.sh" "$W/out" "$BIN" "$W/key.pub"
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ACCEL=(-accel tcg -cpu max -smp 1); [ "${KVM:-0}" = 1 ] && ACCEL=(-enable-kvm -cpu host -smp 2)
qemu-system-x86_64 "${ACCEL[@]}" -m 1024 -nographic -no-reboot \
    -kernel "$W/out/vmlinuz" -initrd "$W/out/initrd" -append "root=/dev/sda rw console=ttyS0 panic=-1" \
    -drive "file=$W/out/processor.vhd,format=vpc,if=none,id=d0,snapshot=on" \
    -device virtio-scsi-pci -device scsi-hd,drive=d0 \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:22" -device virtio-net-pci,netdev=n0 \
    > "$W/console.log" 2>&1 &
QPID=$!
SSH=(ssh -i "$W/key" -p "$PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile="$W/known_hosts"
     -o ConnectTimeout=5 -o BatchMode=yes root@127.0.0.1)
t0=$(date +%s)
until "${SSH[@]}" true 2>/dev/null; do
    kill -0 "$QPID" 2>/dev/null || { tail -30 "$W/console.log"; echo "test-processor-image: qemu exited" >&2; exit 1; }
    if [ $(( $(date +%s) - t0 )) -gt 300 ]; then
        tail -30 "$W/console.log"; echo "test-processor-image: no SSH after 300 s" >&2; exit 1
    fi
    sleep 2
done
echo "SSH answered after $(( $(date +%s) - t0 )) s"
v=$("${SSH[@]}" alike --version)
echo "on the appliance: $v"
[[ $v == alike* ]] || { echo "test-processor-image: alike --version said: $v" >&2; exit 1; }
hello=$("${SSH[@]}" alike processor </dev/null 2>&1 | head -1 || true)
[[ $hello == *'"type":"hello"'* ]] || { echo "test-processor-image: alike processor said: $hello" >&2; exit 1; }
echo "alike processor says hello: $hello"
"${SSH[@]}" poweroff >/dev/null 2>&1 || true
echo "processor image: $(du -h --apparent-size "$W/out/processor.vhd" | cut -f1) VHD (the guide's appliance: 128 MB)"
