#!/usr/bin/env bash
# Builds the NTFS image the alike-fs tests read:  make-ntfs.sh IMG SRC
#
# SRC is the tree the test wrote (tests/ntfs_fat/ntfs.rs names what it
# holds). Everything here is done by real NTFS tools: mkntfs, ntfscp (no
# mount), then ntfs-3g mounted through FUSE for what needs it: directories,
# LZNT1 compression (a directory with the compressed attribute, which new
# files inherit), hard links, DOS names, sparse files, reparse points
# (symlink, junction, CompactOS/WOF) and named streams.
set -euo pipefail
img=$1
src=$2
tools=$(cd "$(dirname "$0")" && pwd)
export PATH="$PATH:/sbin:/usr/sbin"

rm -f "$img"
truncate -s 64M "$img"
mkntfs -F -Q -q -L ALIKE "$img" >/dev/null 2>&1
# ntfscp needs no mount: two files straight into the root.
ntfscp -q "$img" "$src/cp-small" cp-small
ntfscp -q "$img" "$src/cp-big" cp-big

mnt=$(mktemp -d)
ntfs-3g -o streams_interface=windows,compression "$img" "$mnt"
trap 'umount "$mnt" 2>/dev/null || fusermount -u "$mnt" 2>/dev/null || true; rmdir "$mnt"' EXIT

# Plain files and directories, modification times kept (-p).
cp -rp "$src/plain" "$src/a" "$src/ünï€😀.txt" "$src/日本語" "$src/efs.bin" "$mnt/"

# LZNT1: new files in a compressed directory are compressed.
mkdir "$mnt/comp"
setfattr -n system.ntfs_attrib_be -v 0x00000810 "$mnt/comp"
cp -p "$src"/comp/* "$mnt/comp/"
for f in "$mnt"/comp/*; do
    attrs=$(getfattr -n system.ntfs_attrib_be -e hex "$f" 2>/dev/null | sed -n 's/.*=//p')
    # Fail loudly if ntfs-3g did not compress (the test would prove nothing).
    [ $(( ${attrs:-0} & 0x800 )) -ne 0 ] || { echo "not compressed: $f ($attrs)" >&2; exit 1; }
done

# Hard link, DOS 8.3 name, sparse file.
ln "$mnt/plain/mib1" "$mnt/hl-mib1"
cp -p "$src/Long Name File.txt" "$mnt/"
setfattr -n system.ntfs_dos_name -v "LONGNA~1.TXT" "$mnt/Long Name File.txt"
truncate -s 20M "$mnt/sparse"
dd if="$src/sparse-chunk" of="$mnt/sparse" bs=4096 seek=2048 conv=notrunc status=none

# Links: a Windows symlink (relative), a junction, and an Interix symlink
# (what ntfs-3g's own `ln -s` makes).
reparse() { python3 - "$@" <<'PY'
import struct, sys
kind, sub, prn = sys.argv[1:4]
s, p = sub.encode("utf-16-le"), prn.encode("utf-16-le")
if kind == "symlink":
    body = struct.pack("<HHHHI", 0, len(s), len(s), len(p), 1) + s + p
    tag = 0xA000000C
else:
    body = struct.pack("<HHHH", 0, len(s), len(s) + 2, len(p)) + s + b"\0\0" + p + b"\0\0"
    tag = 0xA0000003
print("0x" + (struct.pack("<IHH", tag, len(body), 0) + body).hex())
PY
}
touch "$mnt/rlink"
setfattr -n system.ntfs_reparse_data -v "$(reparse symlink '..\plain\one' '..\plain\one')" "$mnt/rlink"
mkdir "$mnt/junc"
setfattr -n system.ntfs_reparse_data -v "$(reparse junction '\??\C:\Windows' 'C:\Windows')" "$mnt/junc"
ln -s plain/one "$mnt/ilink"

# CompactOS: the WofCompressedData stream, a sparse unnamed stream of the
# full size, then the WOF reparse point.
mkdir "$mnt/wof"
for f in "$src"/wof/*; do
    name=$(basename "$f")
    algo=${name%%.*}
    hex=$(python3 "$tools/wof.py" "$algo" "$f" "$mnt/wof.stream.tmp" 2>/dev/null)
    touch "$mnt/wof/$name"
    cat "$mnt/wof.stream.tmp" >"$mnt/wof/$name:WofCompressedData"
    rm "$mnt/wof.stream.tmp"
    truncate -s "$(stat -c %s "$f")" "$mnt/wof/$name"
    setfattr -n system.ntfs_reparse_data -v "$hex" "$mnt/wof/$name"
done

# A directory big enough for an index allocation (B-tree nodes).
mkdir "$mnt/many"
for i in $(seq 1 300); do : >"$mnt/many/entry-$i"; done

umount "$mnt"
trap - EXIT
rmdir "$mnt"
# The test relies on this file's runs spreading over extension records.
info=$(ntfsinfo -F /comp/text16m "$img" 2>/dev/null)
grep -q '\$ATTRIBUTE_LIST' <<<"$info" || { echo "comp/text16m has no attribute list" >&2; exit 1; }
