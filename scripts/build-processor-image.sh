#!/usr/bin/env bash
# build-processor-image.sh OUT_DIR [ALIKE_BINARY] [AUTHORIZED_KEYS_FILE]
#
# The processor appliance (issue 16; opt-in, not part of the test command):
# a minimal Debian (this machine's suite, Debian's own packages through
# mmdebstrap's `essential` variant: no apt in the image) with systemd,
# OpenSSH's server, the `alike` binary in /usr/local/bin, and a BIOS boot
# loader, so a pool (Xen HVM) or qemu boots the disk alone. Written to OUT_DIR:
#   processor.vhd   the disk as a dynamic VHD (`qemu-img convert -O vpc -o
#                   subformat=dynamic`), what `xe vdi-import` and Hyper-V take;
#   processor.xva   the disk as a VM a pool imports (`xe vm-import`; layout in
#                   docs/processors.md, "The appliance"), with XVA=1 (default);
#   processor.raw   the raw disk (sparse), with KEEP_RAW=1;
#   size.txt        what the sizes are and what dominates.
# The disk: an MBR with syslinux's boot code; partition 1 (FAT, 48 MiB,
# active) holds syslinux, the kernel and the initramfs; partition 2 is the
# root file system (ext4). At every boot alike-processor-setup reads the
# processor's address and SSH host key from xenstore (vm-data/alike/…, what
# alike's Xen provisioner writes), a config drive labelled "alike-cfg", or
# the kernel command line (scripts/processor-image/alike-processor-setup;
# docs/processors.md). The image carries no SSH host key.
# ALIKE_BINARY defaults to target/release/alike (stripped into the image);
# AUTHORIZED_KEYS_FILE becomes root's ~/.ssh/authorized_keys (key login
# only: no passwords are set). DISK_MIB (default 1024) is the disk's virtual
# size: the VHD and XVA hold only what is written. Needs root and the
# network (deb.debian.org); installs mmdebstrap, qemu-utils, e2fsprogs,
# dosfstools, mtools, syslinux and syslinux-common with apt-get when
# missing. Checks what it wrote: `qemu-img check` of the VHD, and alike's
# own VHD reader (the VHD backed up into a scratch store and restored as raw
# must equal the raw disk).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [ALIKE_BINARY] [AUTHORIZED_KEYS_FILE]" >&2; exit 2; }
OUT=$1
BIN=${2:-target/release/alike}
KEYS=${3:-}
DISK_MIB=${DISK_MIB:-1024}
BOOT_MIB=48
HERE=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "build-processor-image: needs root" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build-processor-image: no alike binary at $BIN (cargo build --release -p alike-cli)" >&2; exit 1; }
export PATH="$PATH:/sbin:/usr/sbin"
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v mkfs.fat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v syslinux >/dev/null || need+=(syslinux)
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || need+=(syslinux-common)
if [ ${#need[@]} -gt 0 ]; then
    # Not qemu-system here: see the README on keeping qemu-utils from backports.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
. /etc/os-release
SUITE=${SUITE:-$VERSION_CODENAME}
mkdir -p "$OUT"
if [ -n "${WORK:-}" ]; then
    W=$WORK && mkdir -p "$W"
else
    W=$(mktemp -d "${TMPDIR:-/var/tmp}/processor-image.XXXXXX")
    trap 'rm -rf "$W"' EXIT
fi
ROOT=$W/root
cp "$BIN" "$W/alike" && strip "$W/alike"
: > "$W/authorized_keys"
[ -n "$KEYS" ] && cp "$KEYS" "$W/authorized_keys"
[ -s "$W/root-uuid" ] || cat /proc/sys/kernel/random/uuid > "$W/root-uuid"
uuid=$(cat "$W/root-uuid")

# `essential` (Essential:yes packages, no apt) plus what a processor needs;
# no recommends, no documentation, manuals or locales. customize.sh then
# prunes it (kernel modules, perl, build-only tools); usr-is-merged keeps
# init-system-helpers' "usrmerge | usr-is-merged" met once the usrmerge
# mmdebstrap installs (with 46 MB of perl) is purged.
if [ -d "$ROOT/etc" ] && [ -s "$W/root.done" ]; then
    # WORK=DIR kept from an earlier run: the same packages; the appliance's
    # own files installed again.
    bash "$HERE/processor-image/customize.sh" "$ROOT" "$W" files
else
rm -rf "$ROOT"
mmdebstrap --variant=essential --mode=root --aptopt='APT::Install-Recommends "false"' \
    --include=usr-is-merged,systemd-sysv,udev,openssh-server,linux-image-cloud-amd64,initramfs-tools,zstd,ca-certificates,xenstore-utils,kmod \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="bash '$HERE/processor-image/customize.sh' \"\$1\" '$W'" \
    "$SUITE" "$ROOT" http://deb.debian.org/debian
date > "$W/root.done"
fi

if ls "$ROOT"/etc/ssh/ssh_host_* >/dev/null 2>&1; then
    echo "build-processor-image: the image would carry an SSH host key" >&2; exit 1
fi

# Partition 1 (FAT): syslinux, kernel, initramfs.
mkdir -p "$W/kernel"
mv "$ROOT"/boot/vmlinuz-* "$ROOT"/boot/initrd.img-* "$W/kernel/" 2>/dev/null || true
rm -f "$ROOT"/boot/System.map-*
kernel=$(ls "$W"/kernel/vmlinuz-* | head -1)
initrd=$(ls "$W"/kernel/initrd.img-* | head -1)
# What dominates the root file system (the kernel and initramfs live on the
# boot partition).
{
    echo "largest packages (installed size, KiB; the kernel's counts all its modules, most removed):"
    chroot "$ROOT" dpkg-query -W -f='${Installed-Size}\t${Package}\n' | sort -rn | head -12 | sed 's/^/  /'
    echo "largest directories (MiB):"
    (cd "$ROOT" && du -m -x -d 3 . | sort -rn | sed -n '2,16p' | sed 's/^/  /')
    echo "kernel modules: $(du -s -m "$ROOT/usr/lib/modules" | cut -f1) MiB; alike binary: $(du -m "$ROOT/usr/local/bin/alike" | cut -f1) MiB"
} > "$W/size.txt"
boot=$W/boot.img
rm -f "$boot"
mkfs.fat -C -F 16 -n ALIKEBOOT -h 2048 "$boot" $((BOOT_MIB * 1024)) >/dev/null
cat > "$W/syslinux.cfg" <<CFG
DEFAULT alike
PROMPT 0
TIMEOUT 0
SERIAL 0 115200
LABEL alike
  LINUX /vmlinuz
  INITRD /initrd
  APPEND root=UUID=$uuid ro console=tty0 console=hvc0 console=ttyS0,115200n8 no_timer_check panic=30
CFG
ksize=$(stat -c %s "$kernel") isize=$(stat -c %s "$initrd")
mcopy -i "$boot" "$kernel" ::/vmlinuz
mcopy -i "$boot" "$initrd" ::/initrd
mcopy -i "$boot" "$W/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$boot"

# Partition 2 (ext4): the root. ^64bit and no metadata_csum_seed keep it
# readable by the older tools a pool's dom0 may run; the file system is made
# sparse (unused blocks never written), so the disk images hold only files.
used=$(du -s -B1M -x "$ROOT" | cut -f1)
root_mib=$((DISK_MIB - BOOT_MIB - 2))
[ "$root_mib" -gt $((used + 64)) ] || { echo "build-processor-image: DISK_MIB=$DISK_MIB too small for ${used} MiB of files" >&2; exit 1; }
rm -f "$W/root.img"
mkfs.ext4 -q -b 4096 -L alike-root -U "$uuid" -O ^64bit,^metadata_csum_seed -E lazy_itable_init=1,lazy_journal_init=1 \
    -d "$ROOT" "$W/root.img" "${root_mib}M" >/dev/null

# The disk: MBR (syslinux's boot code, partition 1 active), partitions at
# 1 MiB and 1 MiB + BOOT_MIB.
disk=$W/processor.raw
rm -f "$disk"
truncate -s "${DISK_MIB}M" "$disk"
printf 'label: dos\nunit: sectors\n2048,%d,6,*\n%d,%d,83\n' \
    $((BOOT_MIB * 2048)) $(((BOOT_MIB + 1) * 2048)) $((root_mib * 2048)) | sfdisk -q "$disk"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$boot" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$W/root.img" of="$disk" bs=1M seek=$((BOOT_MIB + 1)) conv=notrunc,sparse status=none
rm -f "$boot" "$W/root.img"

# force_size: the VHD's size is the disk's, not rounded to a CHS geometry.
qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$disk" "$OUT/processor.vhd"
# `qemu-img check` has no checks for VHD ("does not support checks"): qemu's
# VHD reader compares the image with the raw disk instead.
qemu-img compare -q -f raw -F vpc "$disk" "$OUT/processor.vhd"
echo "qemu-img compare: the VHD reads back equal to the raw disk"

# alike's own VHD reader: back the VHD up, restore it raw, compare.
S=$W/vhd-check
rm -rf "$S" && mkdir -p "$S"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$S/pw"
A=("$W/alike" --password-file "$S/pw" --cache-dir "$S/cache" -q)
"${A[@]}" init --store "$S/store" >/dev/null
"${A[@]}" backup --store "$S/store" --vm processor-image --format vhd "$OUT/processor.vhd" >/dev/null
"${A[@]}" restore --store "$S/store" --vm processor-image --output "$S/back.raw" latest >/dev/null
cmp "$disk" "$S/back.raw" || { echo "build-processor-image: alike's VHD reader disagrees with the raw disk" >&2; exit 1; }
rm -rf "$S"
echo "alike's VHD reader: the VHD reads back equal to the raw disk"

if [ "${XVA:-1}" = 1 ]; then
    python3 "$HERE/processor-image/make-xva.py" "$disk" "$OUT/processor.xva" --name alike-processor
    python3 "$HERE/processor-image/make-xva.py" --check "$OUT/processor.xva" "$disk"
    xvagz=$(gzip -6 -c "$OUT/processor.xva" | wc -c)
fi
[ "${KEEP_RAW:-0}" = 1 ] && cp --sparse=always "$disk" "$OUT/processor.raw"

{
    echo "processor.vhd: $(stat -c %s "$OUT/processor.vhd") bytes (dynamic VHD of a ${DISK_MIB} MiB disk)"
    [ -f "$OUT/processor.xva" ] && echo "processor.xva: $(stat -c %s "$OUT/processor.xva") bytes ($xvagz gzip'd)"
    echo "root file system: ${used} MiB of files; boot partition: kernel ${ksize} bytes, initramfs ${isize} bytes"
    cat "$W/size.txt"
} > "$OUT/size.txt"
cat "$OUT/size.txt"
