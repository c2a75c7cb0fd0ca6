#!/usr/bin/env bash
# customize.sh ROOT WORK [files] — the appliance's customization, run by
# build-processor-image.sh as mmdebstrap's customize hook (ROOT is the new
# system with /proc, /sys and /dev mounted; WORK holds alike, authorized_keys
# and root-uuid). Not meant to be run by hand.
set -euo pipefail
R=$1 W=$2 ONLY=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd)
inroot() { chroot "$R" "$@"; }

install -m 0755 "$W/alike" "$R/usr/local/bin/alike"
install -m 0755 "$HERE/alike-processor-setup" "$R/usr/local/sbin/alike-processor-setup"
install -m 0644 "$HERE/alike-processor-setup.service" "$R/etc/systemd/system/alike-processor-setup.service"
install -d -m 0700 "$R/root/.ssh"
install -m 0600 "$W/authorized_keys" "$R/root/.ssh/authorized_keys"
echo alike-processor > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\talike-processor\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
# No fsck at boot: a clone starts from the template's clean file system
# (and e2fsprogs is not in the image).
printf 'UUID=%s / ext4 defaults,noatime,errors=remount-ro 0 0\n' "$(cat "$W/root-uuid")" > "$R/etc/fstab"
# DHCP unless alike-processor-setup wrote a static 10-alike.network in /run.
printf '[Match]\nName=e*\n\n[Network]\nDHCP=yes\n' > "$R/etc/systemd/network/90-dhcp.network"
# Only the Ed25519 host key the setup installs or makes; key logins only.
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n' \
    > "$R/etc/ssh/sshd_config.d/alike.conf"
mkdir -p "$R/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' > "$R/etc/systemd/journald.conf.d/alike.conf"
# The image must carry no host key: every clone makes or is given its own.
rm -f "$R"/etc/ssh/ssh_host_*
: > "$R/etc/machine-id"
[ "$ONLY" = files ] && exit 0
inroot systemctl enable alike-processor-setup.service systemd-networkd.service >/dev/null 2>&1
inroot systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true

# Kernel modules: what a Xen (HVM/PVH, PV drivers) or qemu/KVM guest needs.
kver=$(basename "$(ls -d "$R"/lib/modules/*)")
keep=(autofs4 xen-blkfront xen-netfront xenfs xen-evtchn xen-gntdev xen-privcmd
      virtio_pci virtio_blk virtio_scsi virtio_net virtio_console virtio_balloon virtio_rng
      sd_mod sr_mod ata_piix ahci ata_generic
      e1000 8139cp vfat nls_cp437 nls_ascii nls_utf8 isofs
      crc32c_intel crc32_pclmul ghash-clmulni-intel aesni_intel)
declare -A want=()
for m in "${keep[@]}"; do
    while read -r kind path _; do
        [ "$kind" = insmod ] && want[${path#/}]=1
    done < <(inroot modprobe -S "$kver" --show-depends "$m" 2>/dev/null || true)
done
n=0
while IFS= read -r ko; do
    rel=${ko#"$R"/}
    [ -n "${want[$rel]:-}" ] || { rm -f "$ko"; n=$((n + 1)); }
done < <(find "$R/lib/modules/$kver/kernel" -name '*.ko*')
find "$R/lib/modules/$kver/kernel" -type d -empty -delete
echo "customize: kept ${#want[@]} kernel modules, removed $n"
inroot depmod "$kver"
mkdir -p "$R/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=zstd\nCOMPRESSLEVEL=19\nFSTYPE=ext4\n' > "$R/etc/initramfs-tools/conf.d/alike.conf"
printf '%s\n' xen-blkfront virtio_pci virtio_blk virtio_scsi sd_mod ata_piix ahci > "$R/etc/initramfs-tools/modules"
inroot update-initramfs -u -k "$kver" >/dev/null

# What only building needed: the initramfs tools, usrmerge (mmdebstrap's
# merged-/usr step) with the perl it pulls in (46 MB), and perl-base
# (Essential, but only package scripts run it), purged last.
purge() { inroot dpkg --purge --force-depends --force-remove-essential "$@" >/dev/null 2>&1; }
purge initramfs-tools initramfs-tools-core klibc-utils libklibc cpio zstd
purge usrmerge libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl
purge perl perl-modules-5.36 libperl5.36
purge perl-base

# Nothing an appliance reads: documentation, manuals, locales, the udev
# hardware database, apt's and dpkg's caches, glibc's iconv modules (UTF-8,
# ASCII and Latin-1 are built in).
rm -rf "$R"/usr/share/{doc,man,info,locale,lintian,bash-completion,zsh} "$R"/usr/share/i18n \
    "$R"/usr/lib/udev/hwdb.bin "$R"/etc/udev/hwdb.bin "$R"/usr/lib/udev/hwdb.d \
    "$R"/var/cache/apt/* "$R"/var/lib/apt/lists/* "$R"/var/cache/debconf/*-old "$R"/var/log/* \
    "$R"/usr/share/common-licenses "$R"/usr/lib/x86_64-linux-gnu/gconv
mkdir -p "$R/usr/share/doc"
