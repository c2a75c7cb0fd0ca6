#!/usr/bin/env bash
# make-ext4-pair.sh OUTDIR SIZE_MIB [SRC_BYTES_MIB]
#
# Builds realistic raw ext4 disk images for backup/dedup measurements:
#
#   OUTDIR/v1.img          sparse raw ext4 image of SIZE_MIB, made with
#                          `mkfs.ext4 -d` from ~SRC_BYTES_MIB (default 45% of
#                          SIZE_MIB) of real files copied from this machine
#                          (/usr/lib, /usr/share, /usr/bin, /usr/include).
#   OUTDIR/v2-inplace.img  copy of v1.img updated in place, the way a VM's disk
#                          is: ~6% of the files removed, changed or added
#                          (2% each by default). Done with `debugfs -w`
#                          (no mount, no loop device needed; see
#                          UPDATE_METHOD below).
#   OUTDIR/v2-fresh.img    the same file set as v2-inplace laid out afresh
#                          (`mkfs.ext4 -d` of the updated tree), as an
#                          independent install would be.
#   OUTDIR/manifest-*.txt  lists of files in v1 and of removed/changed/added.
#
# Deterministic: the file selection and the change set come from a fixed seed
# over a byte-sorted file list, so reruns on the same machine give the same
# files, the same edits and the same block layout (UUIDs and hash seeds are
# fixed too); between reruns only inode timestamps (ctime/atime of the staging
# trees, debugfs write times) differ. Idempotent: OUTDIR's outputs are
# replaced on every run.
#
# Knobs (environment): SEED (default 1), CHANGE_PCT (default 6, split equally
# between removed / changed / added), MAX_FILE_MIB (default 32: larger source
# files are skipped so one huge file cannot dominate the change set),
# SRC_DIRS (default "/usr/lib /usr/share /usr/bin /usr/include"),
# KEEP_TREES=1 keeps the staging directory trees in OUTDIR/.work,
# UPDATE_METHOD=mount updates v2-inplace through the kernel (mount -o loop,
# root only) instead of debugfs, to compare allocator/journal behaviour.
set -euo pipefail

die() { echo "make-ext4-pair: error: $*" >&2; exit 1; }

usage() {
    echo "usage: $0 OUTDIR SIZE_MIB [SRC_BYTES_MIB]" >&2
    exit 2
}

[ $# -ge 2 ] && [ $# -le 3 ] || usage
OUTDIR=$1
SIZE_MIB=$2
[[ $SIZE_MIB =~ ^[0-9]+$ ]] && [ "$SIZE_MIB" -ge 16 ] || die "SIZE_MIB must be an integer >= 16 (got '$SIZE_MIB')"
SRC_MIB=${3:-$(( SIZE_MIB * 45 / 100 ))}
[[ $SRC_MIB =~ ^[0-9]+$ ]] && [ "$SRC_MIB" -ge 1 ] || die "SRC_BYTES_MIB must be a positive integer (got '$SRC_MIB')"
[ "$SRC_MIB" -lt $(( SIZE_MIB * 85 / 100 )) ] || die "SRC_BYTES_MIB ($SRC_MIB) must stay below 85% of SIZE_MIB ($SIZE_MIB) to leave room for metadata and additions"

SEED=${SEED:-1}
CHANGE_PCT=${CHANGE_PCT:-6}
MAX_FILE_MIB=${MAX_FILE_MIB:-32}
SRC_DIRS=${SRC_DIRS:-"/usr/lib /usr/share /usr/bin /usr/include"}
[[ $SEED =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer"
[[ $CHANGE_PCT =~ ^[0-9]+$ ]] || die "CHANGE_PCT must be an integer"
[[ $MAX_FILE_MIB =~ ^[0-9]+$ ]] || die "MAX_FILE_MIB must be an integer"
UPDATE_METHOD=${UPDATE_METHOD:-debugfs}
case $UPDATE_METHOD in
    debugfs) ;;
    mount) command -v mount >/dev/null && command -v umount >/dev/null || die "UPDATE_METHOD=mount needs mount/umount"
           [ "$(id -u)" = 0 ] || die "UPDATE_METHOD=mount needs root" ;;
    *) die "UPDATE_METHOD must be debugfs or mount (got '$UPDATE_METHOD')" ;;
esac

export PATH="$PATH:/sbin:/usr/sbin"
for tool in mkfs.ext4 debugfs e2fsck find sort awk sed tar comm cut wc cp truncate head tail dd mkdir rm mv du stat df date chmod; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found (install e2fsprogs / coreutils / findutils / mawk or gawk)"
done
for d in $SRC_DIRS; do [ -d "$d" ] || die "source directory '$d' does not exist"; done

export LC_ALL=C
# Fixed superblock/mkfs times where e2fsprogs honours them.
export E2FSPROGS_FAKE_TIME=1700000000
export SOURCE_DATE_EPOCH=1700000000
UUID_V1=3a1f6c5e-0000-4000-8000-00000000a11e
UUID_FRESH=3a1f6c5e-0000-4000-8000-00000000f2e5
HASH_SEED_V1=6b2c0d4e-0000-4000-8000-00000000a11e
HASH_SEED_FRESH=6b2c0d4e-0000-4000-8000-00000000f2e5
# -b 4096: mke2fs.conf's "small" type would otherwise pick 1 KiB blocks below
# 512 MiB; lazy init keeps untouched inode tables / journal as holes. (mke2fs
# keeps only the last -E, so the hash seed goes in the same option.)
MKFS_OPTS=(-F -q -b 4096)
MKFS_EXT=lazy_itable_init=1,lazy_journal_init=1,nodiscard

T0=$(date +%s.%N)
mkdir -p "$OUTDIR" || die "cannot create OUTDIR '$OUTDIR'"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$OUTDIR/.work
rm -rf "$WORK"
rm -f "$OUTDIR/v1.img" "$OUTDIR/v2-inplace.img" "$OUTDIR/v2-fresh.img"
mkdir -p "$WORK"
MOUNTED=
cleanup() {
    if [ -n "$MOUNTED" ]; then umount "$MOUNTED" || true; fi
    if [ "${KEEP_TREES:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Free space check: three sparse images hold ~SRC data each, plus two trees.
need_kib=$(( SRC_MIB * 1024 * 6 ))
avail_kib=$(df -Pk "$OUTDIR" | awk 'NR==2{print $4}')
[ "$avail_kib" -gt "$need_kib" ] || die "not enough free space in $OUTDIR: need ~$(( need_kib / 1024 )) MiB, have $(( avail_kib / 1024 )) MiB"

# ---------------------------------------------------------------- selection
# Candidate files: regular files only (find -type f skips symlinks, devices,
# sockets), readable, size <= MAX_FILE_MIB, with "plain" names (no spaces or
# shell/debugfs special characters), byte-sorted by path.
# Each candidate gets a pseudo-random key from a Park-Miller LCG seeded with
# SEED, walking the sorted list; sorting by key gives a deterministic uniform
# permutation. v1 takes files from it until SRC_MIB is reached; the files
# after that are the pool for additions.
{ find $SRC_DIRS -xdev -type f -readable -size -$(( MAX_FILE_MIB * 1024 + 1 ))k -printf '%s\t%p\n' 2>/dev/null || true; } \
    | awk -F'\t' '$2 ~ /^[A-Za-z0-9._+,@%=\/-]+$/' \
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
[ -s "$WORK/pool.tsv" ] || die "not enough source files for SRC_BYTES_MIB=$SRC_MIB plus additions (have $(awk -F'\t' '{t+=$1} END{printf "%d", t/1048576}' "$WORK/candidates.tsv") MiB of candidates)"

NFILES=$(wc -l <"$WORK/v1.tsv")
NPER=$(( (NFILES * CHANGE_PCT + 150) / 300 ))   # per kind, rounded
# Change set: a second seeded permutation of v1's files; the first NPER are
# removed, the next NPER changed. Added: the first NPER pool files.
awk -F'\t' -v seed="$SEED" '
    BEGIN { x = (seed * 104729 + 54321) % 2147483647; if (x == 0) x = 1 }
    { x = (x * 48271) % 2147483647; printf "%010d\t%s\t%s\n", x, $1, $2 }
' "$WORK/v1.tsv" | sort -t$'\t' -k1,1n -k3,3 | cut -f2,3 >"$WORK/v1.perm"
head -n "$NPER" "$WORK/v1.perm" | sort -t$'\t' -k2,2 >"$WORK/removed.tsv"
sed -n "$(( NPER + 1 )),$(( 2 * NPER ))p" "$WORK/v1.perm" | sort -t$'\t' -k2,2 >"$WORK/changed.tsv"
head -n "$NPER" "$WORK/pool.tsv" | sort -t$'\t' -k2,2 >"$WORK/added.tsv"
NRM=$(wc -l <"$WORK/removed.tsv"); NCH=$(wc -l <"$WORK/changed.tsv"); NADD=$(wc -l <"$WORK/added.tsv")

# ------------------------------------------------------------------ v1 tree
T1=$(( $(awk -F'\t' '{t+=$1} END{printf "%d", t}' "$WORK/v1.tsv") ))
mkdir -p "$WORK/t1"
# tar recreates /usr/... below t1 with the files' modes and mtimes; the data
# is copied (never hard-linked: the tree is edited later).
cut -f2 "$WORK/v1.tsv" | sed 's|^/||' \
    | tar -C / --no-recursion --hard-dereference --verbatim-files-from -T - -cf - \
    | tar -C "$WORK/t1" -xf - \
    || die "copying source files into the staging tree failed"

# ------------------------------------------------------------------ v1.img
truncate -s "${SIZE_MIB}M" "$OUTDIR/v1.img"
mkfs.ext4 "${MKFS_OPTS[@]}" -U "$UUID_V1" -E "$MKFS_EXT,hash_seed=$HASH_SEED_V1" -L alike-v1 -d "$WORK/t1" "$OUTDIR/v1.img" \
    || die "mkfs.ext4 -d failed for v1.img (is SIZE_MIB=$SIZE_MIB large enough for $SRC_MIB MiB of files?)"

# ------------------------------------------------------------------ v2 tree
# t2 = t1 with hard links (cheap); every edit below replaces a directory entry
# (rm + new file), never writes through a link, so t1 stays intact.
cp -al "$WORK/t1" "$WORK/t2"
CMDS=$WORK/debugfs.cmds
: >"$CMDS"
while IFS=$'\t' read -r _ p; do
    rm -f "$WORK/t2$p"
    echo "rm $p" >>"$CMDS"
done <"$WORK/removed.tsv"

# Changed files get one of three edits (chosen by the file's order in the
# list): 0 = append 1..64 KiB of new text (log/DB growth); 1 = overwrite 1..4
# small regions in place (version strings, patched constants); 2 = insert
# 64 B..4 KiB at some offset (content shifts, as in an edited text/source
# file). Each changed file is written as a new inode (dpkg-style rewrite).
filler() { # filler N TAG: N deterministic bytes
    awk -v n="$1" -v line="alike-v2 seed=$SEED change $2" \
        'BEGIN { while (length(s) < n) s = s line "\n"; printf "%s", substr(s, 1, n) }'
}
i=0
ADDED_BYTES=0
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
    chmod --reference="$src" "$dst"
    d=${p%/*}; b=${p##*/}
    printf 'rm %s\ncd %s\nwrite %s %s\n' "$p" "$d" "$dst" "$b" >>"$CMDS"
done <"$WORK/changed.tsv"

# Added files: copy into t2; in the image create missing directories first
# (parents before children), then write each file from its directory.
while IFS=$'\t' read -r sz p; do
    mkdir -p "$WORK/t2${p%/*}"
    cp --preserve=mode,timestamps "$p" "$WORK/t2$p"
    ADDED_BYTES=$(( ADDED_BYTES + sz ))
done <"$WORK/added.tsv"
( cd "$WORK/t1" && find . -type d | sed 's/^\.//' | sort ) >"$WORK/dirs1"
( cd "$WORK/t2" && find . -type d | sed 's/^\.//' | sort ) >"$WORK/dirs2"
comm -13 "$WORK/dirs1" "$WORK/dirs2" | awk '{print "mkdir " $0}' >>"$CMDS"
while IFS=$'\t' read -r _ p; do
    printf 'cd %s\nwrite %s %s\n' "${p%/*}" "$WORK/t2$p" "${p##*/}" >>"$CMDS"
done <"$WORK/added.tsv"

# ------------------------------------------------------------ v2-inplace.img
cp --sparse=always "$OUTDIR/v1.img" "$OUTDIR/v2-inplace.img"
if [ "$UPDATE_METHOD" = debugfs ]; then
    debugfs -w -f "$CMDS" "$OUTDIR/v2-inplace.img" >"$WORK/debugfs.log" 2>&1 \
        || { KEEP_TREES=1; die "debugfs -w failed (log: $WORK/debugfs.log)"; }
    # debugfs reports per-command errors but still exits 0: any output line
    # other than the banner, the echoed commands and "Allocated inode" is one.
    if grep -Ev '^(debugfs [0-9].*|debugfs: .*|Allocated inode: [0-9]+|)$' "$WORK/debugfs.log" >"$WORK/debugfs.err"; then
        KEEP_TREES=1
        die "debugfs reported errors while updating v2-inplace.img (first: $(head -n1 "$WORK/debugfs.err")); trees kept in $WORK"
    fi
else
    # The kernel's ext4 (delayed allocation, mballoc, journal) does the update.
    # Changed files are written to a temporary name and renamed over the old
    # one, as dpkg does.
    MNT=$WORK/mnt
    mkdir -p "$MNT"
    mount -o loop "$OUTDIR/v2-inplace.img" "$MNT" || die "mount -o loop failed (UPDATE_METHOD=mount needs root and loop devices)"
    MOUNTED=$MNT
    while IFS=$'\t' read -r _ p; do rm -f "$MNT$p"; done <"$WORK/removed.tsv"
    while IFS=$'\t' read -r _ p; do
        cp --preserve=mode,timestamps "$WORK/t2$p" "$MNT$p.alike-new"
        mv -f "$MNT$p.alike-new" "$MNT$p"
    done <"$WORK/changed.tsv"
    while IFS=$'\t' read -r _ p; do
        mkdir -p "$MNT${p%/*}"
        cp --preserve=mode,timestamps "$WORK/t2$p" "$MNT$p"
    done <"$WORK/added.tsv"
    umount "$MNT" || die "umount $MNT failed"
    MOUNTED=
fi

# -------------------------------------------------------------- v2-fresh.img
truncate -s "${SIZE_MIB}M" "$OUTDIR/v2-fresh.img"
mkfs.ext4 "${MKFS_OPTS[@]}" -U "$UUID_FRESH" -E "$MKFS_EXT,hash_seed=$HASH_SEED_FRESH" -L alike-v2 -d "$WORK/t2" "$OUTDIR/v2-fresh.img" \
    || die "mkfs.ext4 -d failed for v2-fresh.img"

# ------------------------------------------------------------------- checks
for img in v1 v2-inplace v2-fresh; do
    e2fsck -fnv "$OUTDIR/$img.img" >"$WORK/fsck-$img.log" 2>&1 \
        || { KEEP_TREES=1; die "e2fsck -fn reports problems in $img.img (log: $WORK/fsck-$img.log)"; }
done
# The images must hold exactly the intended regular files.
for img in v1:$NFILES v2-inplace:$(( NFILES - NRM + NADD )) v2-fresh:$(( NFILES - NRM + NADD )); do
    reg=$(awk '/ regular files?$/{print $1; exit}' "$WORK/fsck-${img%%:*}.log")
    [ "$reg" = "${img##*:}" ] \
        || { KEEP_TREES=1; die "${img%%:*}.img holds '$reg' regular files, expected ${img##*:}"; }
done

for t in v1 removed changed added; do cp "$WORK/$t.tsv" "$OUTDIR/manifest-$t.txt"; done

CH_BYTES=$(awk -F'\t' '{t+=$1} END{printf "%d", t}' "$WORK/changed.tsv")
RM_BYTES=$(awk -F'\t' '{t+=$1} END{printf "%d", t}' "$WORK/removed.tsv")
T2=$(date +%s.%N)
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }
used() { du -k "$1" | awk '{printf "%.0f", $1/1024}'; }
echo "make-ext4-pair: $OUTDIR size=${SIZE_MIB}MiB update=$UPDATE_METHOD v1: $NFILES files $(mib "$T1") MiB (image uses $(used "$OUTDIR/v1.img") MiB);" \
     "v2: removed $NRM ($(mib "$RM_BYTES") MiB) changed $NCH ($(mib "$CH_BYTES") MiB) added $NADD ($(mib "$ADDED_BYTES") MiB);" \
     "inplace uses $(used "$OUTDIR/v2-inplace.img") MiB, fresh $(used "$OUTDIR/v2-fresh.img") MiB; e2fsck clean;" \
     "$(awk -v a="$T0" -v b="$T2" 'BEGIN{printf "%.1f", b-a}')s"
