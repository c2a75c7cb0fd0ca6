#!/usr/bin/env bash
# build-processor-image.sh OUT_DIR [ALIKE_BINARY] [AUTHORIZED_KEYS_FILE]
#
# A minimal Debian appliance for a processor (issue 16, opt-in; not part of
# the test command): Debian (this machine's suite, from Debian's own
# packages through mmdebstrap) with systemd, OpenSSH's server, DHCP on the
# first NIC, and the `alike` binary in /usr/local/bin. Written to OUT_DIR:
#   processor.vhd      the root file system (ext4 on the whole disk) as a
#                      dynamic VHD (`qemu-img convert -O vpc`);
#   vmlinuz, initrd    the appliance's kernel and initramfs, for direct
#                      kernel boot (`qemu -kernel … -append root=/dev/sda`;
#                      the disk carries no boot loader yet — see below).
# ALIKE_BINARY defaults to target/release/alike (stripped into the image);
# AUTHORIZED_KEYS_FILE becomes root's ~/.ssh/authorized_keys (key login
# only: no passwords are set). Needs root; installs mmdebstrap, qemu-utils
# and e2fsprogs with apt-get when they are missing.
#
# Not done yet (the gap to a drop-in VM image): a boot loader on the disk
# (so Hyper-V/XenServer boot the VHD alone), and trimming the kernel's
# modules to the virtual hardware's (most of the size).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [ALIKE_BINARY] [AUTHORIZED_KEYS_FILE]" >&2; exit 2; }
OUT=$1
BIN=${2:-target/release/alike}
KEYS=${3:-}
[ "$(id -u)" = 0 ] || { echo "build-processor-image: needs root" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build-processor-image: no alike binary at $BIN (cargo build --release -p alike-cli)" >&2; exit 1; }
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || [ -x /sbin/mkfs.ext4 ] || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/sbin:/usr/sbin"
. /etc/os-release
SUITE=${SUITE:-$VERSION_CODENAME}
mkdir -p "$OUT"
W=$(mktemp -d "${TMPDIR:-/var/tmp}/processor-image.XXXXXX")
trap 'rm -rf "$W"' EXIT
ROOT=$W/root
cp "$BIN" "$W/alike" && strip "$W/alike" 2>/dev/null || true
: > "$W/authorized_keys"
[ -n "$KEYS" ] && cp "$KEYS" "$W/authorized_keys"

# minbase + what a processor needs; no recommends, no documentation.
mmdebstrap --variant=minbase --mode=root \
    --include=systemd-sysv,udev,openssh-server,linux-image-cloud-amd64,initramfs-tools,ca-certificates,iproute2 \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook="install -m 0755 '$W/alike' \"\$1/usr/local/bin/alike\"" \
    --customize-hook="install -d -m 0700 \"\$1/root/.ssh\" && install -m 0600 '$W/authorized_keys' \"\$1/root/.ssh/authorized_keys\"" \
    --customize-hook='echo alike-processor > "$1/etc/hostname"' \
    --customize-hook='printf "/dev/sda / ext4 defaults 0 1\n" > "$1/etc/fstab"' \
    --customize-hook='printf "[Match]\nName=e*\n[Network]\nDHCP=yes\n" > "$1/etc/systemd/network/10-dhcp.network"' \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd >/dev/null 2>&1' \
    --customize-hook='printf "PasswordAuthentication no\nPermitRootLogin prohibit-password\n" > "$1/etc/ssh/sshd_config.d/alike.conf"' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    "$SUITE" "$ROOT" http://deb.debian.org/debian

cp "$ROOT"/boot/vmlinuz-* "$OUT/vmlinuz"
cp "$ROOT"/boot/initrd.img-* "$OUT/initrd"
used=$(du -s -B1M "$ROOT" | cut -f1)
size=$(( used + used / 4 + 64 ))
rm -f "$W/root.img"
mkfs.ext4 -q -b 4096 -L alike-root -d "$ROOT" "$W/root.img" "${size}M"
qemu-img convert -f raw -O vpc -o subformat=dynamic "$W/root.img" "$OUT/processor.vhd"
echo "processor image: $OUT/processor.vhd ($(du -h --apparent-size "$OUT/processor.vhd" | cut -f1) VHD; file system of ${size} MiB, ${used} MiB used), kernel $OUT/vmlinuz"
