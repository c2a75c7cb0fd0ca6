#!/usr/bin/env bash
# make-ntfs-pair.sh OUTDIR SIZE_MIB [DATA_MIB]
#
# The NTFS counterpart of make-ext4-pair.sh (same conventions, same outputs),
# for the dedup-under-shifted-layouts measurements (issue 13):
#
#   OUTDIR/v1.img          sparse raw NTFS image of SIZE_MIB (`mkntfs -F -Q -c
#                          4096`: 4 KiB clusters, as Windows formats), holding
#                          ~DATA_MIB (default 45% of SIZE_MIB) of real files
#                          from this machine (/usr/lib, /usr/share, /usr/bin,
#                          /usr/include), files of MIN_FILE_KIB (256) KiB to
#                          MAX_FILE_MIB (32) MiB, copied in through an ntfs-3g
#                          mount in byte-sorted path order.
#   OUTDIR/v2-inplace.img  copy of v1.img updated in place through an ntfs-3g
#                          mount, the way a VM's disk is: ~6% of the files
#                          removed, changed or added (2% each by default).
#                          Changed files get one of three edits: append
#                          1..64 KiB, overwrite 1..4 small regions (both
#                          written into the existing file, so its clusters
#                          stay where they are), or insert 64 B..4 KiB at
#                          some offset (written as a new file renamed over
#                          the old one, as an installer does: it lands
#                          wherever NTFS puts it).
#   OUTDIR/v2-fresh.img    the same file set as v2-inplace laid out afresh on
#                          a new NTFS (a new mkntfs, the v2 tree copied in),
#                          as an independent install would be.
#   OUTDIR/manifest-*.txt  lists of files in v1 and of removed/changed/added.
#
# Deterministic in what matters: the file selection and the change set come
# from a fixed seed over a byte-sorted file list (the same generator as
# make-ext4-pair.sh), files are written in sorted order, and mkntfs runs with
# -T (zero times). NTFS metadata that ntfs-3g stamps (file times, the volume
# serial, the log file) differs between runs.
#
# Needs ntfs-3g (mkntfs, the ntfs-3g FUSE driver) and /dev/fuse, as root. The
# libntfs-3g tools that need no mount (ntfscp) cannot create directories, so
# a tree of real files cannot be laid out without FUSE: the script says so
# and stops.
#
# Knobs (environment): SEED (1), CHANGE_PCT (6), MIN_FILE_KIB (256: the
# issue's pair; 0 takes every file), MAX_FILE_MIB (32), SRC_DIRS,
# KEEP_TREES=1 keeps the staging trees in OUTDIR/.work, CHECK=0 skips the
# final comparison of each image's files with its tree.
set -euo pipefail

die() { echo "make-ntfs-pair: error: $*" >&2; exit 1; }

usage() {
    echo "usage: $0 OUTDIR SIZE_MIB [DATA_MIB]" >&2
    exit 2
}

[ $# -ge 2 ] && [ $# -le 3 ] || usage
OUTDIR=$1
SIZE_MIB=$2
[[ $SIZE_MIB =~ ^[0-9]+$ ]] && [ "$SIZE_MIB" -ge 16 ] || die "SIZE_MIB must be an integer >= 16 (got '$SIZE_MIB')"
SRC_MIB=${3:-$(( SIZE_MIB * 45 / 100 ))}
[[ $SRC_MIB =~ ^[0-9]+$ ]] && [ "$SRC_MIB" -ge 1 ] || die "DATA_MIB must be a positive integer (got '$SRC_MIB')"
[ "$SRC_MIB" -lt $(( SIZE_MIB * 85 / 100 )) ] || die "DATA_MIB ($SRC_MIB) must stay below 85% of SIZE_MIB ($SIZE_MIB) to leave room for metadata and additions"

SEED=${SEED:-1}
CHANGE_PCT=${CHANGE_PCT:-6}
MIN_FILE_KIB=${MIN_FILE_KIB:-256}
MAX_FILE_MIB=${MAX_FILE_MIB:-32}
SRC_DIRS=${SRC_DIRS:-"/usr/lib /usr/share /usr/bin /usr/include"}
CHECK=${CHECK:-1}
for v in SEED CHANGE_PCT MIN_FILE_KIB MAX_FILE_MIB; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
done

export PATH="$PATH:/sbin:/usr/sbin"
for tool in mkntfs ntfs-3g umount find sort awk sed tar comm cut wc cp truncate head tail dd mkdir rm mv du df date diff; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found (apt-get install ntfs-3g coreutils findutils diffutils)"
done
[ "$(id -u)" = 0 ] || die "mounting an image with ntfs-3g needs root"
[ -c /dev/fuse ] || die "/dev/fuse is missing: ntfs-3g cannot mount, and ntfscp alone cannot create directories (modprobe fuse, or run where FUSE is available)"
for d in $SRC_DIRS; do [ -d "$d" ] || die "source directory '$d' does not exist"; done

export LC_ALL=C
T0=$(date +%s.%N)
mkdir -p "$OUTDIR" || die "cannot create OUTDIR '$OUTDIR'"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$OUTDIR/.work
MNT=$WORK/mnt
MOUNTED=
NTFS_PID=

unmount() {
    [ -n "$MOUNTED" ] || return 0
    umount "$MOUNTED" || return 1
    MOUNTED=
    # ntfs-3g runs in the foreground (no_detach) under this script: waiting for
    # it means every write has reached the image file.
    if [ -n "$NTFS_PID" ]; then wait "$NTFS_PID" || true; NTFS_PID=; fi
}
cleanup() {
    unmount || true
    if [ "${KEEP_TREES:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# mount_img IMG [ro]: mounts IMG on $MNT with ntfs-3g, kept in the foreground.
mount_img() {
    local opts=no_detach
    [ "${2:-}" = ro ] && opts=$opts,ro
    mkdir -p "$MNT"
    ntfs-3g -o "$opts" "$1" "$MNT" >>"$WORK/ntfs-3g.log" 2>&1 &
    NTFS_PID=$!
    for _ in $(seq 1 100); do
        if awk -v m="$MNT" '$2 == m {f=1} END {exit !f}' /proc/mounts; then MOUNTED=$MNT; return 0; fi
        kill -0 "$NTFS_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "ntfs-3g could not mount $1 (log: $WORK/ntfs-3g.log)"
}

# mkntfs_img IMG LABEL: a sparse SIZE_MIB file formatted as NTFS with 4 KiB clusters.
mkntfs_img() {
    truncate -s "${SIZE_MIB}M" "$1"
    mkntfs -F -Q -T -c 4096 -L "$2" "$1" >"$WORK/mkntfs-$2.log" 2>&1 || die "mkntfs failed for $1 (log: $WORK/mkntfs-$2.log)"
}

rm -rf "$WORK"
rm -f "$OUTDIR/v1.img" "$OUTDIR/v2-inplace.img" "$OUTDIR/v2-fresh.img"
mkdir -p "$WORK"

# Free space: three sparse images holding ~SRC each, plus two staging trees.
need_kib=$(( SRC_MIB * 1024 * 6 ))
avail_kib=$(df -Pk "$OUTDIR" | awk 'NR==2{print $4}')
[ "$avail_kib" -gt "$need_kib" ] || die "not enough free space in $OUTDIR: need ~$(( need_kib / 1024 )) MiB, have $(( avail_kib / 1024 )) MiB"

# ---------------------------------------------------------------- selection
# As make-ext4-pair.sh: regular, readable files with plain names between the
# size bounds, byte-sorted, permuted by a Park-Miller LCG seeded with SEED;
# v1 takes files until DATA_MIB is reached, the rest is the pool for additions.
min_arg=()
[ "$MIN_FILE_KIB" -gt 0 ] && min_arg=(-size "+$(( MIN_FILE_KIB - 1 ))k")
{ find $SRC_DIRS -xdev -type f -readable "${min_arg[@]}" -size -$(( MAX_FILE_MIB * 1024 + 1 ))k -printf '%s\t%p\n' 2>/dev/null || true; } \
    | awk -F'\t' -v min=$(( MIN_FILE_KIB * 1024 )) '$1 >= min && $2 ~ /^[A-Za-z0-9._+,@%=\/-]+$/' \
    | sort -t$'\t' -k2,2 >"$WORK/candidates.tsv"
[ -s "$WORK/candidates.tsv" ] || die "no candidate files found under $SRC_DIRS"

awk -F'\t' -v seed="$SEED" '
    BEGIN { x = (seed * 7919 + 12345) % 2147483647; if (x == 0) x = 1 }
    { x = (x * 48271) % 2147483647; printf "%010d\t%s\t%s\n", x, $1, $2 }
' "$WORK/candidates.tsv" | sort -t$'\t' -k1,1n -k3,3 | awk -F'\t' -v budget=$(( SRC_MIB * 1048576 )) \
    -v sel="$WORK/v1.unsorted" -v pool="$WORK/pool.tsv" '
    { if (tot < budget) { tot += $2; print $2 "\t" $3 > sel } else print $2 "\t" $3 > pool }
'
sort -t$'\t' -k2,2 "$WORK/v1.unsorted" >"$WORK/v1.tsv"
[ -s "$WORK/pool.tsv" ] || die "not enough source files for DATA_MIB=$SRC_MIB plus additions (have $(awk -F'\t' '{t+=$1} END{printf "%d", t/1048576}' "$WORK/candidates.tsv") MiB of candidates of ${MIN_FILE_KIB} KiB..${MAX_FILE_MIB} MiB; lower MIN_FILE_KIB or DATA_MIB)"

NFILES=$(wc -l <"$WORK/v1.tsv")
NPER=$(( (NFILES * CHANGE_PCT + 150) / 300 ))
awk -F'\t' -v seed="$SEED" '
    BEGIN { x = (seed * 104729 + 54321) % 2147483647; if (x == 0) x = 1 }
    { x = (x * 48271) % 2147483647; printf "%010d\t%s\t%s\n", x, $1, $2 }
' "$WORK/v1.tsv" | sort -t$'\t' -k1,1n -k3,3 | cut -f2,3 >"$WORK/v1.perm"
head -n "$NPER" "$WORK/v1.perm" | sort -t$'\t' -k2,2 >"$WORK/removed.tsv"
sed -n "$(( NPER + 1 )),$(( 2 * NPER ))p" "$WORK/v1.perm" | sort -t$'\t' -k2,2 >"$WORK/changed.tsv"
head -n "$NPER" "$WORK/pool.tsv" | sort -t$'\t' -k2,2 >"$WORK/added.tsv"
NRM=$(wc -l <"$WORK/removed.tsv"); NCH=$(wc -l <"$WORK/changed.tsv"); NADD=$(wc -l <"$WORK/added.tsv")

# ------------------------------------------------------------------ v1 tree
T1=$(awk -F'\t' '{t+=$1} END{printf "%d", t}' "$WORK/v1.tsv")
mkdir -p "$WORK/t1"
cut -f2 "$WORK/v1.tsv" | sed 's|^/||' \
    | tar -C / --no-recursion --hard-dereference --verbatim-files-from -T - -cf - \
    | tar -C "$WORK/t1" -xf - \
    || die "copying source files into the staging tree failed"

# copy_in TREE LIST: copies LIST's files (paths as in the tsv) from TREE into
# the mounted image, in the list's (sorted) order; tar makes the directories.
copy_in() {
    cut -f2 "$2" | sed 's|^/||' \
        | tar -C "$1" --no-recursion --verbatim-files-from -T - -cf - \
        | tar -C "$MNT" --no-same-owner --no-same-permissions -xf - \
        || die "copying files into the NTFS image failed"
}

# ------------------------------------------------------------------ v1.img
mkntfs_img "$OUTDIR/v1.img" alike-v1
mount_img "$OUTDIR/v1.img"
copy_in "$WORK/t1" "$WORK/v1.tsv"
unmount || die "umount of v1.img failed"

# ------------------------------------------------------------------ v2 tree
# t2 = t1 hard-linked; edits replace directory entries, never write through a link.
cp -al "$WORK/t1" "$WORK/t2"
while IFS=$'\t' read -r _ p; do rm -f "$WORK/t2$p"; done <"$WORK/removed.tsv"
# Directories emptied by the removals go too (as a package manager does).
find "$WORK/t2" -mindepth 1 -depth -type d -empty -delete
filler() { # filler N TAG: N deterministic bytes
    awk -v n="$1" -v line="alike-v2 seed=$SEED change $2" \
        'BEGIN { while (length(s) < n) s = s line "\n"; printf "%s", substr(s, 1, n) }'
}
# The same three edits, chosen the same way, as make-ext4-pair.sh.
i=0
: >"$WORK/modes.tsv"
while IFS=$'\t' read -r sz p; do
    i=$(( i + 1 ))
    src=$WORK/t1$p
    dst=$WORK/t2$p
    rm -f "$dst"
    r=$(( (i * 2654435761 + SEED * 97) % 4294967296 ))
    mode=$(( i % 3 ))
    if [ "$sz" -lt 64 ]; then mode=0; fi
    case $mode in
        0)  n=$(( 1024 + r % 64512 ))
            { cat "$src"; filler "$n" "$i"; } >"$dst" ;;
        1)  cp "$src" "$dst"
            k=$(( 1 + r % 4 ))
            for (( j = 1; j <= k; j++ )); do
                off=$(( (r / 7 + j * 2246822519) % sz ))
                len=$(( 16 + (r / 13 + j) % 240 ))
                [ $(( off + len )) -le "$sz" ] || len=$(( sz - off ))
                filler "$len" "$i.$j" | dd of="$dst" bs=1 seek="$off" conv=notrunc status=none
            done ;;
        2)  off=$(( r % sz )); n=$(( 64 + r % 4033 ))
            { head -c "$off" "$src"; filler "$n" "$i"; tail -c +$(( off + 1 )) "$src"; } >"$dst" ;;
    esac
    printf '%s\t%s\n' "$mode" "$p" >>"$WORK/modes.tsv"
done <"$WORK/changed.tsv"
ADDED_BYTES=0
while IFS=$'\t' read -r sz p; do
    mkdir -p "$WORK/t2${p%/*}"
    cp --preserve=mode,timestamps "$p" "$WORK/t2$p"
    ADDED_BYTES=$(( ADDED_BYTES + sz ))
done <"$WORK/added.tsv"
( cd "$WORK/t2" && find . -type f | sed 's/^\.//' | sort ) | awk '{print "0\t" $0}' >"$WORK/v2.tsv"

# ------------------------------------------------------------ v2-inplace.img
cp --sparse=always "$OUTDIR/v1.img" "$OUTDIR/v2-inplace.img"
mount_img "$OUTDIR/v2-inplace.img"
while IFS=$'\t' read -r _ p; do rm -f "$MNT$p"; done <"$WORK/removed.tsv"
find "$MNT" -mindepth 1 -depth -type d -empty -delete
while IFS=$'\t' read -r mode p; do
    case $mode in
        # Appends and overwrites go into the existing file: its clusters stay.
        0|1) dd if="$WORK/t2$p" of="$MNT$p" bs=1M conv=notrunc status=none ;;
        # An insertion is a rewrite: a new file, renamed over the old one.
        2)  cp "$WORK/t2$p" "$MNT$p.alike-new" && mv -f "$MNT$p.alike-new" "$MNT$p" ;;
    esac || die "updating $p in v2-inplace.img failed"
done <"$WORK/modes.tsv"
copy_in "$WORK/t2" "$WORK/added.tsv"
unmount || die "umount of v2-inplace.img failed"

# -------------------------------------------------------------- v2-fresh.img
mkntfs_img "$OUTDIR/v2-fresh.img" alike-v2
mount_img "$OUTDIR/v2-fresh.img"
copy_in "$WORK/t2" "$WORK/v2.tsv"
unmount || die "umount of v2-fresh.img failed"

# ------------------------------------------------------------------- checks
# Each image, mounted read-only, must hold exactly its tree's files and bytes.
if [ "$CHECK" = 1 ]; then
    for img in v1:t1 v2-inplace:t2 v2-fresh:t2; do
        mount_img "$OUTDIR/${img%%:*}.img" ro
        diff -rq "$WORK/${img##*:}" "$MNT" >"$WORK/diff-${img%%:*}.log" 2>&1 \
            || { unmount; KEEP_TREES=1; die "${img%%:*}.img differs from its tree (log: $WORK/diff-${img%%:*}.log)"; }
        unmount || die "umount failed"
    done
fi

for t in v1 removed changed added; do cp "$WORK/$t.tsv" "$OUTDIR/manifest-$t.txt"; done

CH_BYTES=$(awk -F'\t' '{t+=$1} END{printf "%d", t}' "$WORK/changed.tsv")
RM_BYTES=$(awk -F'\t' '{t+=$1} END{printf "%d", t}' "$WORK/removed.tsv")
T2=$(date +%s.%N)
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }
used() { du -k "$1" | awk '{printf "%.0f", $1/1024}'; }
echo "make-ntfs-pair: $OUTDIR size=${SIZE_MIB}MiB clusters=4KiB files ${MIN_FILE_KIB}KiB..${MAX_FILE_MIB}MiB v1: $NFILES files $(mib "$T1") MiB (image uses $(used "$OUTDIR/v1.img") MiB);" \
     "v2: removed $NRM ($(mib "$RM_BYTES") MiB) changed $NCH ($(mib "$CH_BYTES") MiB) added $NADD ($(mib "$ADDED_BYTES") MiB);" \
     "inplace uses $(used "$OUTDIR/v2-inplace.img") MiB, fresh $(used "$OUTDIR/v2-fresh.img") MiB;" \
     "$([ "$CHECK" = 1 ] && echo "contents checked" || echo "not checked");" \
     "$(awk -v a="$T0" -v b="$T2" 'BEGIN{printf "%.1f", b-a}')s"
