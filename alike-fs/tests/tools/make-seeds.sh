#!/usr/bin/env bash
# Small images for the ntfs and fat fuzz targets:  make-seeds.sh DIR
# (a 2 MiB NTFS volume with a compressed file, a sparse one, a B-tree
# directory and a link; FAT12 and FAT16 volumes with long names).
set -euo pipefail
out=$1
export PATH="$PATH:/sbin:/usr/sbin"
img="$out/ntfs-2m.img"
truncate -s 2M "$img"
mkntfs -F -Q -q -c 512 "$img" >/dev/null 2>&1
mnt=$(mktemp -d)
ntfs-3g -o compression "$img" "$mnt"
trap 'umount "$mnt" 2>/dev/null || fusermount -u "$mnt" 2>/dev/null || true; rmdir "$mnt"' EXIT
mkdir -p "$mnt/d/e" "$mnt/c"
setfattr -n system.ntfs_attrib_be -v 0x00000810 "$mnt/c"
printf 'compressible line %s\n' $(seq 1 4000) >"$mnt/c/z"
seq 1 2000 >"$mnt/d/e/numbers"
echo hi >"$mnt/d/h"
for i in $(seq 1 40); do : >"$mnt/d/f$i"; done
ln -s d "$mnt/l"
truncate -s 100000 "$mnt/sp"
umount "$mnt"
trap - EXIT
rmdir "$mnt"

for bits in 12 16; do
    img="$out/fat$bits.img"
    if [ "$bits" = 12 ]; then truncate -s 1M "$img"; else truncate -s 3M "$img"; fi
    mkfs.vfat -F "$bits" -s 1 -n SEED "$img" >/dev/null
    src=$(mktemp -d)
    mkdir -p "$src/EFI/BOOT"
    seq 1 3000 >"$src/EFI/BOOT/BOOTX64.EFI"
    echo "long" >"$src/A long file name.txt"
    for i in $(seq 1 20); do : >"$src/EFI/entry $i"; done
    MTOOLS_SKIP_CHECK=1 LC_ALL=C.UTF-8 mcopy -s -i "$img" "$src"/* ::/
    rm -rf "$src"
done
