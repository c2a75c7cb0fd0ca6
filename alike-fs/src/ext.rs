//! ext2, ext3 and ext4, read-only, by inode.
//!
//! ## Why not `ext4-view`
//! `ext4-view` 1.0 (a careful, fuzzed reader) was the first choice and was
//! checked against what [`FileSystem`] needs; it falls short on the shape,
//! not the format: its handle is an `Rc` with `RefCell`s inside (neither
//! `Send` nor `Sync`, so it cannot sit behind an `Arc<dyn FileSystem>`
//! shared by threads), it is addressed by path only (no inode numbers, so
//! hard links cannot be told apart and a name holding `/` cannot be reached
//! at all), its metadata has no link count, and it exposes no extent map
//! (no holes for sparse extraction). What it does is small and specified
//! (the kernel's `Documentation/filesystems/ext4/`), so this module reads
//! ext by hand, bounded at every step.
//!
//! ## What is read
//! Superblock (revision 0 and 1), group descriptors (32- and 64-byte, the
//! `meta_bg` layout, `sparse_super` and `sparse_super2` backups), inodes of
//! any size with nanosecond times, extent trees (uninitialised extents read
//! as zeros), ext2/ext3 indirect block maps, linear directory blocks (an
//! htree directory is read linearly: its index blocks look like empty
//! entries), inline data (files, directories and symlinks in the inode and
//! its `system.data` attribute), fast and slow symlinks, `64bit`,
//! `flex_bg`, `huge_file`, `bigalloc`, `metadata_csum` (checksums are not
//! verified: every block was verified by the store before it got here, and
//! an ext checksum would only name damage inside the guest, which the
//! reads below still bound).
//!
//! **The journal is replayed in memory** when the filesystem needs recovery
//! (a crash-consistent snapshot of a running VM usually does): committed
//! transactions from the journal's start are scanned, revoked blocks
//! dropped, and every later read of a block that a transaction wrote reads
//! the journal's copy instead (the device never changes). An external
//! journal or a fast-commit area cannot be replayed; [`FileSystem::warnings`]
//! says so.
//!
//! Refused: compression (`COMPRESSION`), Lustre's `dirdata`, a journal
//! device (`JOURNAL_DEV`: no filesystem). Files encrypted with fscrypt
//! list but do not extract (their metadata says why); fs-verity files read
//! as plain files (their Merkle tree is not checked).
//!
//! ## Bounds against hostile images
//! Every block number is checked against the filesystem's size before it
//! is read; extent trees are at most 5 levels deep with strictly
//! increasing logical blocks (a node visited twice would break that), and a
//! walk visits at most [`MAX_TREE_NODES`] nodes; a file's mapped data may
//! not exceed the filesystem; a directory holds at most
//! [`MAX_DIR_ENTRIES`] entries and [`MAX_DIR_BYTES`] bytes; a symlink's
//! target at most 4096 bytes; the journal is walked at most once around.
//! Metadata blocks are cached (at most [`CACHE_BLOCKS`] of them).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::{BlockDevice, DirEntry, FileId, FileKind, FileSystem, FsError, FsKind, Metadata, Result, TimeNs};

/// Metadata blocks kept in memory.
pub const CACHE_BLOCKS: usize = 512;
/// Extent-tree nodes one walk visits at most.
pub const MAX_TREE_NODES: usize = 1 << 20;
/// Entries read from one directory at most.
pub const MAX_DIR_ENTRIES: usize = 1 << 20;
/// Bytes of one directory read at most.
pub const MAX_DIR_BYTES: u64 = 1 << 30;
/// Data ranges of one file at most.
const MAX_RANGES: usize = 1 << 22;
/// A symlink's target at most (PATH_MAX).
const MAX_LINK: u64 = 4096;

const FS: &str = "ext";
const MAGIC: u16 = 0xEF53;

// Feature bits (kernel names).
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const INCOMPAT_COMPRESSION: u32 = 0x1;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_DIRDATA: u32 = 0x1000;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
const RO_SPARSE_SUPER: u32 = 0x1;
const RO_HUGE_FILE: u32 = 0x8;
const RO_GDT_CSUM: u32 = 0x10;
const RO_DIR_NLINK: u32 = 0x20;
const RO_EXTRA_ISIZE: u32 = 0x40;
const RO_BIGALLOC: u32 = 0x200;
const RO_METADATA_CSUM: u32 = 0x400;

// Inode flags.
const FL_ENCRYPT: u32 = 0x800;
const FL_EXTENTS: u32 = 0x80000;
const FL_INLINE_DATA: u32 = 0x1000_0000;

const S_IFMT: u16 = 0xF000;
const S_IFREG: u16 = 0x8000;
const S_IFDIR: u16 = 0x4000;
const S_IFLNK: u16 = 0xA000;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn corrupt(what: impl Into<String>) -> FsError {
    FsError::Corrupt { fs: FS, what: what.into() }
}

/// What the superblock says, checked.
#[derive(Debug, Clone)]
struct Super {
    block_size: u64,
    blocks_count: u64,
    inodes_count: u32,
    inodes_per_group: u32,
    blocks_per_group: u32,
    first_data_block: u64,
    inode_size: u64,
    desc_size: u64,
    groups: u64,
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    first_meta_bg: u64,
    backup_bgs: [u32; 2],
    log_cluster: u32,
    log_block: u32,
    uuid: [u8; 16],
    label: String,
    journal_inum: u32,
}

impl Super {
    fn parse(b: &[u8], dev_size: u64) -> Result<Option<Super>> {
        if le16(b, 56) != MAGIC {
            return Ok(None);
        }
        let log_block = le32(b, 24);
        if log_block > 6 {
            return Err(corrupt(format!("a block size of 2^{} bytes", 10 + u64::from(log_block))));
        }
        let block_size = 1024u64 << log_block;
        let rev = le32(b, 76);
        let (compat, incompat, ro_compat) = if rev >= 1 { (le32(b, 92), le32(b, 96), le32(b, 100)) } else { (0, 0, 0) };
        let inode_size = if rev >= 1 { u64::from(le16(b, 88)) } else { 128 };
        if inode_size < 128 || inode_size > block_size || !inode_size.is_power_of_two() {
            return Err(corrupt(format!("inodes of {inode_size} bytes")));
        }
        let bit64 = incompat & INCOMPAT_64BIT != 0;
        let blocks_count = u64::from(le32(b, 4)) | if bit64 { u64::from(le32(b, 336)) << 32 } else { 0 };
        let desc_size = if bit64 { u64::from(le16(b, 254)) } else { 32 };
        if desc_size < 32 || desc_size > block_size || !desc_size.is_power_of_two() || (bit64 && desc_size < 64) {
            return Err(corrupt(format!("group descriptors of {desc_size} bytes")));
        }
        let inodes_count = le32(b, 0);
        let blocks_per_group = le32(b, 32);
        let inodes_per_group = le32(b, 40);
        let first_data_block = u64::from(le32(b, 20));
        let log_cluster = le32(b, 28);
        let bigalloc = ro_compat & RO_BIGALLOC != 0;
        let bits = 8 * block_size;
        // With bigalloc, a group's bitmap counts clusters: a group spans more blocks.
        let max_bpg = if bigalloc { bits << (log_cluster.saturating_sub(log_block)).min(16) } else { bits };
        if blocks_per_group == 0 || u64::from(blocks_per_group) > max_bpg {
            return Err(corrupt(format!("{blocks_per_group} blocks per group (blocks of {block_size} bytes)")));
        }
        if inodes_per_group == 0 || u64::from(inodes_per_group) > bits {
            return Err(corrupt(format!("{inodes_per_group} inodes per group")));
        }
        if first_data_block >= blocks_count || blocks_count == 0 {
            return Err(corrupt(format!("{blocks_count} blocks, the first data block at {first_data_block}")));
        }
        let fs_bytes = blocks_count.checked_mul(block_size).ok_or_else(|| corrupt("a size beyond 2^64 bytes"))?;
        if fs_bytes > dev_size {
            return Err(corrupt(format!(
                "the superblock claims {fs_bytes} bytes ({blocks_count} blocks of {block_size}); the device holds {dev_size}"
            )));
        }
        let groups = (blocks_count - first_data_block).div_ceil(u64::from(blocks_per_group));
        if u64::from(inodes_count) > groups * u64::from(inodes_per_group) {
            return Err(corrupt(format!("{inodes_count} inodes in {groups} groups of {inodes_per_group}")));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[104..120]);
        let raw_label = &b[120..136];
        let label = String::from_utf8_lossy(&raw_label[..raw_label.iter().position(|&c| c == 0).unwrap_or(16)]).into();
        Ok(Some(Super {
            block_size,
            blocks_count,
            inodes_count,
            inodes_per_group,
            blocks_per_group,
            first_data_block,
            inode_size,
            desc_size,
            groups,
            compat,
            incompat,
            ro_compat,
            first_meta_bg: u64::from(le32(b, 260)),
            backup_bgs: [le32(b, 0x24C), le32(b, 0x250)],
            log_cluster,
            log_block,
            uuid,
            label,
            journal_inum: if compat & COMPAT_HAS_JOURNAL != 0 { le32(b, 224) } else { 0 },
        }))
    }

    /// Whether group `g` holds a copy of the superblock (and descriptors).
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return g == u64::from(self.backup_bgs[0]) || g == u64::from(self.backup_bgs[1]);
        }
        if self.ro_compat & RO_SPARSE_SUPER == 0 || g == 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&p| {
            let mut x = p;
            while x < g {
                x *= p;
            }
            x == g
        })
    }

    /// The block holding descriptor block `i` (as e2fsprogs'
    /// `ext2fs_descriptor_block_loc2`).
    fn desc_block(&self, i: u64) -> u64 {
        let per_block = self.block_size / self.desc_size;
        let meta_bg = self.incompat & INCOMPAT_META_BG != 0;
        if !meta_bg || i < self.first_meta_bg {
            return self.first_data_block + 1 + i;
        }
        let g = per_block * i;
        let zero_adjust = u64::from(g == 0 && self.block_size == 1024 && self.log_cluster > self.log_block);
        self.first_data_block + g * u64::from(self.blocks_per_group) + u64::from(self.has_super(g)) + zero_adjust
    }

    /// The largest file size the block map allows.
    fn max_file_size(&self, extents: bool) -> u64 {
        let bs = self.block_size;
        let blocks = if extents {
            1u64 << 32
        } else {
            let apb = bs / 4;
            12 + apb + apb * apb + apb * apb * apb
        };
        blocks.saturating_mul(bs)
    }

    fn name(&self) -> &'static str {
        let ext4_incompat = INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG | INCOMPAT_INLINE_DATA;
        let ext4_ro = RO_HUGE_FILE | RO_GDT_CSUM | RO_DIR_NLINK | RO_EXTRA_ISIZE | RO_METADATA_CSUM;
        if self.incompat & ext4_incompat != 0 || self.ro_compat & ext4_ro != 0 {
            "ext4"
        } else if self.compat & COMPAT_HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        }
    }
}

/// A parsed inode.
#[derive(Debug, Clone)]
struct Inode {
    ino: u32,
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    links: u16,
    flags: u32,
    block: [u8; 60],
    atime: TimeNs,
    mtime: TimeNs,
    crtime: Option<TimeNs>,
    /// The inode's bytes past the first 128 (extra fields, in-inode attributes).
    tail: Vec<u8>,
}

/// A time from its 32-bit seconds and the `_extra` word (epoch bits,
/// nanoseconds), when the inode has it.
fn time(secs: u32, extra: Option<u32>) -> TimeNs {
    let mut s = i64::from(secs as i32);
    let mut ns = 0i64;
    if let Some(x) = extra {
        s += i64::from(x & 3) << 32;
        ns = i64::from(x >> 2).min(999_999_999);
    }
    s.saturating_mul(1_000_000_000).saturating_add(ns)
}

impl Inode {
    fn parse(ino: u32, b: &[u8]) -> Inode {
        let extra_isize = if b.len() > 128 { usize::from(le16(b, 128)) } else { 0 };
        // A field past 128 exists if the inode's extra size covers it.
        let has = |off: usize, len: usize| b.len() > 128 && 128 + extra_isize >= off + len && off + len <= b.len();
        let extra = |off: usize| has(off, 4).then(|| le32(b, off));
        let mut block = [0u8; 60];
        block.copy_from_slice(&b[40..100]);
        Inode {
            ino,
            mode: le16(b, 0),
            uid: u32::from(le16(b, 2)) | u32::from(le16(b, 120)) << 16,
            gid: u32::from(le16(b, 24)) | u32::from(le16(b, 122)) << 16,
            size: u64::from(le32(b, 4)) | u64::from(le32(b, 108)) << 32,
            links: le16(b, 26),
            flags: le32(b, 32),
            block,
            atime: time(le32(b, 8), extra(140)),
            mtime: time(le32(b, 16), extra(136)),
            crtime: has(144, 4).then(|| time(le32(b, 144), extra(148))),
            tail: b[128.min(b.len())..].to_vec(),
        }
    }

    fn kind(&self) -> FileKind {
        match self.mode & S_IFMT {
            S_IFREG => FileKind::File,
            S_IFDIR => FileKind::Dir,
            S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }

    fn inline(&self) -> bool {
        self.flags & FL_INLINE_DATA != 0
    }

    fn extents(&self) -> bool {
        self.flags & FL_EXTENTS != 0
    }

    /// A symlink whose target lies in `i_block` itself.
    fn fast_symlink(&self) -> bool {
        self.kind() == FileKind::Symlink && !self.inline() && !self.extents() && self.size < 60
    }

    /// The value of the in-inode attribute `index`/`name` (e.g. 7/`data`:
    /// `system.data`, the rest of inline data), bounded by the inode.
    fn ibody_xattr(&self, index: u8, name: &[u8]) -> Option<&[u8]> {
        if self.tail.len() < 4 {
            return None;
        }
        let extra = usize::from(le16(&self.tail, 0));
        let start = extra;
        if start % 4 != 0 || start + 4 > self.tail.len() || le32(&self.tail, start) != 0xEA02_0000 {
            return None;
        }
        let base = start + 4;
        let mut at = base;
        while at + 16 <= self.tail.len() && le32(&self.tail, at) != 0 {
            let name_len = usize::from(self.tail[at]);
            let idx = self.tail[at + 1];
            let value_offs = usize::from(le16(&self.tail, at + 2));
            let value_inum = le32(&self.tail, at + 4);
            let value_size = le32(&self.tail, at + 8) as usize;
            let name_end = at + 16 + name_len;
            if name_end > self.tail.len() {
                return None;
            }
            if idx == index && &self.tail[at + 16..name_end] == name && value_inum == 0 {
                let v = base.checked_add(value_offs)?;
                return self.tail.get(v..v.checked_add(value_size)?);
            }
            at = (name_end + 3) & !3;
        }
        None
    }
}

/// A run of a file's blocks starting at a logical block: on disk at
/// `phys` (consecutive), or a hole (`None`), for `len` blocks.
#[derive(Debug, Clone, Copy)]
struct Run {
    phys: Option<u64>,
    len: u64,
}

/// Metadata blocks, least recently used out first.
struct Cache {
    tick: u64,
    blocks: HashMap<u64, (u64, Arc<[u8]>)>,
}

/// The journal, replayed in memory: filesystem block → the journal's copy.
#[derive(Debug, Default)]
struct Replay {
    /// Filesystem block → (filesystem block holding the newest copy, whether
    /// its first 4 bytes were escaped).
    blocks: BTreeMap<u64, (u64, bool)>,
}

/// An ext2/3/4 filesystem on a device.
pub struct ExtFs {
    dev: Arc<dyn BlockDevice>,
    sb: Super,
    cache: Mutex<Cache>,
    replay: Replay,
    warnings: Vec<String>,
    skipped: AtomicU64,
}

impl std::fmt::Debug for ExtFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtFs").field("device", &self.dev.describe()).field("type", &self.sb.name()).finish()
    }
}

/// Opens the ext filesystem on `dev`: `Ok(None)` when there is none (no
/// ext superblock magic).
///
/// # Errors
/// A superblock that makes no sense, or features this reader refuses
/// ([`FsError::Corrupt`], [`FsError::Unsupported`]); a read that fails.
pub fn open(dev: Arc<dyn BlockDevice>) -> Result<Option<Arc<dyn FileSystem>>> {
    Ok(ExtFs::open(dev)?.map(|f| Arc::new(f) as Arc<dyn FileSystem>))
}

impl ExtFs {
    /// Opens the ext filesystem on `dev` (see [`open`]).
    ///
    /// # Errors
    /// As [`open`].
    pub fn open(dev: Arc<dyn BlockDevice>) -> Result<Option<ExtFs>> {
        if dev.size() < 2048 {
            return Ok(None);
        }
        let mut b = vec![0u8; 1024];
        dev.read_exact_at(1024, &mut b)?;
        let Some(sb) = Super::parse(&b, dev.size())? else { return Ok(None) };
        let refused = sb.incompat & (INCOMPAT_COMPRESSION | INCOMPAT_DIRDATA | INCOMPAT_JOURNAL_DEV);
        if refused != 0 {
            let what = if refused & INCOMPAT_JOURNAL_DEV != 0 {
                "an external journal device, not a filesystem"
            } else if refused & INCOMPAT_COMPRESSION != 0 {
                "the compression feature"
            } else {
                "the dirdata feature (Lustre)"
            };
            return Err(FsError::Unsupported { fs: FS, what: format!("{}: {what}", dev.describe()) });
        }
        let mut fs = ExtFs {
            dev,
            sb,
            cache: Mutex::new(Cache { tick: 0, blocks: HashMap::new() }),
            replay: Replay::default(),
            warnings: Vec::new(),
            skipped: AtomicU64::new(0),
        };
        // The root must be a directory, or this is no filesystem to read.
        let root = fs.inode(2)?;
        if root.kind() != FileKind::Dir {
            return Err(corrupt(format!("{}: the root inode is not a directory", fs.dev.describe())));
        }
        if fs.sb.incompat & INCOMPAT_RECOVER != 0 {
            match fs.load_journal() {
                Ok((replay, notes)) => {
                    fs.warnings.extend(notes);
                    fs.replay = replay;
                    fs.cache.lock().unwrap_or_else(PoisonError::into_inner).blocks.clear();
                }
                Err(e) => fs.warnings.push(format!(
                    "the filesystem needs recovery, but its journal cannot be replayed ({e}): \
                     files changed just before the backup may read as they were before"
                )),
            }
        }
        Ok(Some(fs))
    }

    fn bs(&self) -> u64 {
        self.sb.block_size
    }

    /// Reads `count` blocks from `phys` into `buf` (the journal's copies
    /// where it has them).
    fn read_blocks(&self, phys: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.bs();
        let count = (buf.len() as u64).div_ceil(bs);
        if phys.checked_add(count).is_none_or(|end| end > self.sb.blocks_count) || (phys == 0 && count > 0) {
            return Err(corrupt(format!(
                "{}: blocks {phys}..{} lie outside the filesystem ({} blocks)",
                self.dev.describe(),
                phys.saturating_add(count),
                self.sb.blocks_count
            )));
        }
        let replaced = self.replay.blocks.range(phys..phys + count).next().is_some();
        if !replaced {
            return self.dev.read_exact_at(phys * bs, buf);
        }
        for (i, part) in buf.chunks_mut(bs as usize).enumerate() {
            let b = phys + i as u64;
            match self.replay.blocks.get(&b) {
                Some(&(from, escaped)) => {
                    self.dev.read_exact_at(from * bs, part)?;
                    if escaped && part.len() >= 4 {
                        part[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
                    }
                }
                None => self.dev.read_exact_at(b * bs, part)?,
            }
        }
        Ok(())
    }

    /// A metadata block, through the cache.
    fn block(&self, phys: u64) -> Result<Arc<[u8]>> {
        {
            let mut c = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            c.tick += 1;
            let t = c.tick;
            if let Some(e) = c.blocks.get_mut(&phys) {
                e.0 = t;
                return Ok(e.1.clone());
            }
        }
        let mut b = vec![0u8; self.bs() as usize];
        self.read_blocks(phys, &mut b)?;
        let b: Arc<[u8]> = b.into();
        let mut c = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if c.blocks.len() >= CACHE_BLOCKS
            && let Some(old) = c.blocks.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| *k)
        {
            c.blocks.remove(&old);
        }
        c.tick += 1;
        let t = c.tick;
        c.blocks.insert(phys, (t, b.clone()));
        Ok(b)
    }

    /// The inode table's first block of group `g`.
    fn inode_table(&self, g: u64) -> Result<u64> {
        if g >= self.sb.groups {
            return Err(corrupt(format!("group {g} does not exist (the filesystem has {})", self.sb.groups)));
        }
        let per_block = self.bs() / self.sb.desc_size;
        let blk = self.sb.desc_block(g / per_block);
        let b = self.block(blk)?;
        let at = ((g % per_block) * self.sb.desc_size) as usize;
        let d = &b[at..at + self.sb.desc_size as usize];
        let lo = u64::from(le32(d, 8));
        let hi = if self.sb.desc_size >= 64 { u64::from(le32(d, 0x28)) } else { 0 };
        Ok(lo | hi << 32)
    }

    fn inode(&self, ino: u32) -> Result<Inode> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(corrupt(format!(
                "{}: inode {ino} does not exist (the filesystem has {})",
                self.dev.describe(),
                self.sb.inodes_count
            )));
        }
        let g = u64::from(ino - 1) / u64::from(self.sb.inodes_per_group);
        let idx = u64::from(ino - 1) % u64::from(self.sb.inodes_per_group);
        let table = self.inode_table(g)?;
        let byte = idx * self.sb.inode_size;
        let blk = table.checked_add(byte / self.bs()).ok_or_else(|| corrupt("an inode table past 2^64"))?;
        let b = self.block(blk).map_err(|e| match e {
            FsError::Corrupt { what, .. } => corrupt(format!("inode {ino}: {what}")),
            e => e,
        })?;
        let at = (byte % self.bs()) as usize;
        Ok(Inode::parse(ino, &b[at..at + self.sb.inode_size as usize]))
    }

    fn id(id: FileId) -> Result<u32> {
        u32::try_from(id.0).map_err(|_| FsError::NotFound(format!("inode {}", id.0)))
    }

    // -----------------------------------------------------------------------
    // Block maps

    /// Where logical block `lblk` of `ino` lies, and how many blocks after
    /// it continue the same way.
    fn map(&self, ino: &Inode, lblk: u64) -> Result<Run> {
        if ino.extents() { self.extent_map(ino, lblk) } else { self.indirect_map(ino, lblk) }
    }

    fn extent_header(&self, ino: u32, node: &[u8]) -> Result<(usize, u16)> {
        if node.len() < 12 || le16(node, 0) != 0xF30A {
            return Err(corrupt(format!("inode {ino}: an extent node without its magic")));
        }
        let (entries, max, depth) = (usize::from(le16(node, 2)), usize::from(le16(node, 4)), le16(node, 6));
        if entries > max || 12 + 12 * max > node.len() || depth > 5 {
            return Err(corrupt(format!("inode {ino}: an extent node of {entries}/{max} entries, depth {depth}")));
        }
        Ok((entries, depth))
    }

    fn extent_map(&self, ino: &Inode, lblk: u64) -> Result<Run> {
        let mut node: Arc<[u8]> = Arc::from(&ino.block[..]);
        let mut bound = u64::from(u32::MAX) + 1;
        let mut want_depth: Option<u16> = None;
        for _ in 0..=6 {
            let (entries, depth) = self.extent_header(ino.ino, &node)?;
            if want_depth.is_some_and(|d| d != depth) {
                return Err(corrupt(format!("inode {}: extent tree levels disagree", ino.ino)));
            }
            let e = |i: usize| &node[12 + 12 * i..24 + 12 * i];
            // The last entry starting at or before lblk.
            let mut found = None;
            for i in 0..entries {
                if u64::from(le32(e(i), 0)) <= lblk {
                    found = Some(i);
                } else {
                    break;
                }
            }
            let next_start = |i: usize| if i + 1 < entries { u64::from(le32(e(i + 1), 0)).min(bound) } else { bound };
            if depth == 0 {
                if let Some(i) = found {
                    let x = e(i);
                    let start = u64::from(le32(x, 0));
                    let raw_len = u64::from(le16(x, 4));
                    let (len, unwritten) = if raw_len > 32768 { (raw_len - 32768, true) } else { (raw_len, false) };
                    let phys = u64::from(le16(x, 6)) << 32 | u64::from(le32(x, 8));
                    if lblk < start + len {
                        let left = start + len - lblk;
                        return Ok(if unwritten {
                            Run { phys: None, len: left }
                        } else {
                            Run { phys: Some(phys + (lblk - start)), len: left }
                        });
                    }
                    return Ok(Run { phys: None, len: next_start(i).saturating_sub(lblk).max(1) });
                }
                let first = if entries > 0 { u64::from(le32(e(0), 0)).min(bound) } else { bound };
                return Ok(Run { phys: None, len: first.saturating_sub(lblk).max(1) });
            }
            let Some(i) = found else {
                let first = if entries > 0 { u64::from(le32(e(0), 0)).min(bound) } else { bound };
                return Ok(Run { phys: None, len: first.saturating_sub(lblk).max(1) });
            };
            bound = next_start(i);
            let x = e(i);
            let child = u64::from(le16(x, 8)) << 32 | u64::from(le32(x, 4));
            node = self.block(child)?;
            want_depth = Some(depth - 1);
        }
        Err(corrupt(format!("inode {}: an extent tree deeper than 5", ino.ino)))
    }

    /// Pointer `i` of the indirect block `blk` (0 = a hole).
    fn pointer(&self, blk: u64, i: u64) -> Result<u64> {
        let b = self.block(blk)?;
        Ok(u64::from(le32(&b, (i * 4) as usize)))
    }

    fn indirect_map(&self, ino: &Inode, lblk: u64) -> Result<Run> {
        let apb = self.bs() / 4;
        let direct = |i: usize| u64::from(le32(&ino.block, i * 4));
        if lblk < 12 {
            let i = lblk as usize;
            let p = direct(i);
            let mut len = 1;
            while i + (len as usize) < 12 {
                let q = direct(i + len as usize);
                if (p == 0 && q != 0) || (p != 0 && q != p + len) {
                    break;
                }
                len += 1;
            }
            return Ok(Run { phys: (p != 0).then_some(p), len });
        }
        // Which tree (single, double, triple) and the index inside it.
        let mut l = lblk - 12;
        let mut span = apb;
        let mut level = 1u32;
        while l >= span {
            l -= span;
            level += 1;
            if level > 3 {
                // Past what a triple-indirect tree can map: nothing there,
                // to the end (one run, not one call per block of a file
                // whose size claims exabytes).
                return Ok(Run { phys: None, len: u64::MAX - lblk });
            }
            span *= apb;
        }
        let mut blk = direct(11 + level as usize);
        let mut span = span / apb; // what one pointer at this level covers
        let mut idx = l;
        loop {
            if blk == 0 {
                // A missing indirect block: a hole to the end of what it covers.
                let covered = span * apb;
                return Ok(Run { phys: None, len: covered - idx % covered });
            }
            let i = idx / span;
            if span == 1 {
                let p = self.pointer(blk, i)?;
                let mut len = 1;
                while i + len < apb {
                    let q = self.pointer(blk, i + len)?;
                    if (p == 0 && q != 0) || (p != 0 && q != p + len) {
                        break;
                    }
                    len += 1;
                }
                return Ok(Run { phys: (p != 0).then_some(p), len });
            }
            blk = self.pointer(blk, i)?;
            idx %= span;
            span /= apb;
        }
    }

    /// The logical block ranges of `ino` that hold data, in order.
    fn block_ranges(&self, ino: &Inode) -> Result<Vec<Range<u64>>> {
        let end = ino.size.div_ceil(self.bs());
        let mut out: Vec<Range<u64>> = Vec::new();
        let push = |r: Range<u64>, out: &mut Vec<Range<u64>>| -> Result<()> {
            let r = r.start..r.end.min(end);
            if r.start >= r.end {
                return Ok(());
            }
            match out.last_mut() {
                Some(l) if l.end == r.start => l.end = r.end,
                _ => {
                    if out.len() >= MAX_RANGES {
                        return Err(FsError::Limit(format!("inode {}: more than {MAX_RANGES} data ranges", ino.ino)));
                    }
                    out.push(r)
                }
            }
            Ok(())
        };
        if ino.extents() {
            let mut visited = 0usize;
            let mut last_end = 0u64;
            self.walk_extents(
                ino.ino,
                Arc::from(&ino.block[..]),
                None,
                0..(1u64 << 32),
                &mut visited,
                &mut last_end,
                &mut |r| push(r, &mut out),
            )?;
        } else {
            let mut at = 0;
            while at < end {
                let run = self.indirect_map(ino, at)?;
                if run.phys.is_some() {
                    push(at..at + run.len, &mut out)?;
                }
                at += run.len.max(1);
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_extents(
        &self,
        ino: u32,
        node: Arc<[u8]>,
        want_depth: Option<u16>,
        span: Range<u64>,
        visited: &mut usize,
        last_end: &mut u64,
        f: &mut dyn FnMut(Range<u64>) -> Result<()>,
    ) -> Result<()> {
        *visited += 1;
        if *visited > MAX_TREE_NODES {
            return Err(FsError::Limit(format!("inode {ino}: more than {MAX_TREE_NODES} extent-tree nodes")));
        }
        let (entries, depth) = self.extent_header(ino, &node)?;
        if want_depth.is_some_and(|d| d != depth) {
            return Err(corrupt(format!("inode {ino}: extent tree levels disagree")));
        }
        for i in 0..entries {
            let x = &node[12 + 12 * i..24 + 12 * i];
            let start = u64::from(le32(x, 0));
            if start < span.start || start < *last_end || start >= span.end {
                return Err(corrupt(format!("inode {ino}: extents out of order at logical block {start}")));
            }
            if depth == 0 {
                let raw_len = u64::from(le16(x, 4));
                let (len, unwritten) = if raw_len > 32768 { (raw_len - 32768, true) } else { (raw_len, false) };
                let phys = u64::from(le16(x, 6)) << 32 | u64::from(le32(x, 8));
                if phys.checked_add(len).is_none_or(|e| e > self.sb.blocks_count) {
                    return Err(corrupt(format!("inode {ino}: an extent at block {phys} outside the filesystem")));
                }
                *last_end = start + len;
                if !unwritten && len > 0 {
                    f(start..start + len)?;
                }
            } else {
                let next = if i + 1 < entries { u64::from(le32(&node[12 + 12 * (i + 1)..], 0)) } else { span.end };
                let child = u64::from(le16(x, 8)) << 32 | u64::from(le32(x, 4));
                let b = self.block(child)?;
                self.walk_extents(ino, b, Some(depth - 1), start..next.max(start), visited, last_end, f)?;
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Data

    /// The inline data of `ino` (i_block, then `system.data`), `size` bytes.
    fn inline_data(&self, ino: &Inode) -> Result<Vec<u8>> {
        let mut d = ino.block.to_vec();
        if ino.size > 60 {
            match ino.ibody_xattr(7, b"data") {
                Some(v) => d.extend_from_slice(v),
                None => {
                    return Err(corrupt(format!(
                        "inode {}: inline data of {} bytes, but no system.data attribute",
                        ino.ino, ino.size
                    )));
                }
            }
        }
        if (d.len() as u64) < ino.size {
            return Err(corrupt(format!(
                "inode {}: {} bytes of inline data for a size of {}",
                ino.ino,
                d.len(),
                ino.size
            )));
        }
        d.truncate(ino.size as usize);
        Ok(d)
    }

    fn read_inode_at(&self, ino: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= ino.size {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(ino.size - offset) as usize;
        let buf = &mut buf[..want];
        if ino.inline() || ino.fast_symlink() {
            let d = if ino.inline() { self.inline_data(ino)? } else { ino.block[..ino.size as usize].to_vec() };
            buf.copy_from_slice(&d[offset as usize..offset as usize + want]);
            return Ok(want);
        }
        let bs = self.bs();
        let mut done = 0usize;
        while done < want {
            let pos = offset + done as u64;
            let lblk = pos / bs;
            let within = pos % bs;
            let run = self.map(ino, lblk)?;
            let run_bytes = run.len.saturating_mul(bs) - within;
            let n = (run_bytes.min((want - done) as u64)) as usize;
            let dst = &mut buf[done..done + n];
            match run.phys {
                None => dst.fill(0),
                Some(p) => {
                    if within == 0 && n as u64 % bs == 0 {
                        self.read_blocks(p, dst)?;
                    } else {
                        // Unaligned edges: read whole blocks, copy the part.
                        let blocks = (within + n as u64).div_ceil(bs);
                        let mut tmp = vec![0u8; (blocks * bs) as usize];
                        self.read_blocks(p, &mut tmp)?;
                        dst.copy_from_slice(&tmp[within as usize..within as usize + n]);
                    }
                }
            }
            done += n;
        }
        Ok(done)
    }

    fn meta(&self, ino: &Inode) -> Metadata {
        let kind = ino.kind();
        let mut m = Metadata::new(FileId(u64::from(ino.ino)), kind, ino.size);
        m.mode = Some(u32::from(ino.mode & 0o7777));
        m.uid = Some(ino.uid);
        m.gid = Some(ino.gid);
        m.nlink = u32::from(ino.links);
        m.mtime = Some(ino.mtime);
        m.atime = Some(ino.atime);
        m.btime = ino.crtime;
        let max = self.sb.max_file_size(ino.extents());
        m.unreadable = if ino.flags & FL_ENCRYPT != 0 {
            Some("encrypted with fscrypt".into())
        } else if ino.size > max && !ino.inline() {
            Some(format!("claims {} bytes, more than its block map can hold ({max})", ino.size))
        } else if kind == FileKind::Symlink && ino.size > MAX_LINK {
            Some(format!("a symlink target of {} bytes (at most {MAX_LINK})", ino.size))
        } else {
            None
        };
        m
    }

    fn dir_entries(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        if dir.kind() != FileKind::Dir {
            return Err(FsError::NotADirectory(format!("inode {}", dir.ino)));
        }
        if dir.flags & FL_ENCRYPT != 0 {
            return Err(FsError::Unreadable {
                path: format!("inode {}", dir.ino),
                why: "encrypted with fscrypt".into(),
            });
        }
        if dir.size > MAX_DIR_BYTES {
            return Err(FsError::Limit(format!(
                "directory inode {}: {} bytes (at most {MAX_DIR_BYTES})",
                dir.ino, dir.size
            )));
        }
        let mut raw: Vec<(Vec<u8>, u32, u8)> = Vec::new();
        let filetype = self.sb.incompat & INCOMPAT_FILETYPE != 0;
        if dir.inline() {
            let d = self.inline_data(dir)?;
            // The parent's inode number first, then entries in the rest of
            // i_block, then entries in system.data.
            let split = d.len().min(60);
            self.parse_dir_block(dir.ino, &d[4.min(split)..split], filetype, &mut raw)?;
            if d.len() > 60 {
                self.parse_dir_block(dir.ino, &d[60..], filetype, &mut raw)?;
            }
        } else {
            let bs = self.bs() as usize;
            let mut buf = vec![0u8; bs * 16];
            let mut off = 0u64;
            while off < dir.size {
                let n = self.read_inode_at(dir, off, &mut buf)?;
                if n == 0 {
                    break;
                }
                for block in buf[..n].chunks(bs) {
                    self.parse_dir_block(dir.ino, block, filetype, &mut raw)?;
                }
                off += n as u64;
            }
        }
        let mut out = Vec::with_capacity(raw.len());
        for (name, ino, _ft) in raw {
            let meta = match self.inode(ino) {
                Ok(i) => self.meta(&i),
                Err(e) => {
                    let mut m = Metadata::new(FileId(u64::from(ino)), FileKind::Other, 0);
                    m.unreadable = Some(e.to_string());
                    m
                }
            };
            out.push(DirEntry { name, meta });
        }
        Ok(out)
    }

    /// Entries of one directory block (or inline area) into `out`.
    fn parse_dir_block(&self, dir: u32, b: &[u8], filetype: bool, out: &mut Vec<(Vec<u8>, u32, u8)>) -> Result<()> {
        let mut at = 0usize;
        while at + 8 <= b.len() {
            let ino = le32(b, at);
            let mut rec_len = usize::from(le16(b, at + 4));
            if (rec_len == 0 || rec_len == 65535) && b.len() == 65536 {
                rec_len = 65536;
            }
            let (name_len, ft) =
                if filetype { (usize::from(b[at + 6]), b[at + 7]) } else { (usize::from(le16(b, at + 6)), 0) };
            if rec_len < 8 || rec_len % 4 != 0 || at + rec_len > b.len() || 8 + name_len > rec_len {
                return Err(corrupt(format!(
                    "directory inode {dir}: an entry at byte {at} of its block with a record length of {rec_len}"
                )));
            }
            if ino != 0 && name_len > 0 {
                let name = &b[at + 8..at + 8 + name_len];
                if name != b"." && name != b".." {
                    if name.contains(&b'/') || name.contains(&0) {
                        self.skipped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        if out.len() >= MAX_DIR_ENTRIES {
                            return Err(FsError::Limit(format!(
                                "directory inode {dir}: more than {MAX_DIR_ENTRIES} entries"
                            )));
                        }
                        out.push((name.to_vec(), ino, ft));
                    }
                }
            }
            at += rec_len;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------
    // The journal (JBD2), replayed in memory

    fn load_journal(&self) -> Result<(Replay, Vec<String>)> {
        let mut notes = Vec::new();
        if self.sb.journal_inum == 0 {
            return Err(FsError::Unsupported { fs: FS, what: "an external journal".into() });
        }
        let j = self.inode(self.sb.journal_inum)?;
        let bs = self.bs();
        let jblocks = j.size / bs;
        // Journal block → filesystem block.
        let jmap = |n: u64| -> Result<u64> {
            if n >= jblocks {
                return Err(corrupt(format!("journal block {n} past the journal's {jblocks}")));
            }
            self.map(&j, n)?.phys.ok_or_else(|| corrupt(format!("journal block {n} is a hole")))
        };
        let jread = |n: u64| -> Result<Vec<u8>> {
            let mut b = vec![0u8; bs as usize];
            let p = jmap(n)?;
            if p >= self.sb.blocks_count || p == 0 {
                return Err(corrupt(format!("journal block {n} maps outside the filesystem")));
            }
            self.dev.read_exact_at(p * bs, &mut b)?;
            Ok(b)
        };
        let sb = jread(0)?;
        if be32(&sb, 0) != JBD2_MAGIC || !matches!(be32(&sb, 4), 3 | 4) {
            return Err(corrupt("the journal superblock has no magic"));
        }
        if u64::from(be32(&sb, 12)) != bs {
            return Err(corrupt("the journal's block size differs from the filesystem's"));
        }
        let maxlen = u64::from(be32(&sb, 16)).min(jblocks);
        let first = u64::from(be32(&sb, 20));
        let mut seq = be32(&sb, 24);
        let start = u64::from(be32(&sb, 28));
        let v2 = be32(&sb, 4) == 4;
        let incompat = if v2 { be32(&sb, 40) } else { 0 };
        if start == 0 {
            return Ok((Replay::default(), notes));
        }
        if first == 0 || first >= maxlen || start < first || start >= maxlen {
            return Err(corrupt(format!("journal: log from {first} to {maxlen}, starting at {start}")));
        }
        if incompat & J_FAST_COMMIT != 0 {
            notes.push("the journal has a fast-commit area, which is not replayed".into());
        }
        let bit64 = incompat & J_64BIT != 0;
        let csum3 = incompat & J_CSUM_V3 != 0;
        let csum2 = incompat & J_CSUM_V2 != 0;
        let tag_bytes = if csum3 {
            16
        } else {
            let mut sz = 12;
            if csum2 {
                sz += 2;
            }
            if bit64 { sz } else { sz - 4 }
        };
        let tail = if csum2 || csum3 { 4 } else { 0 };
        let wrap = |n: u64| if n >= maxlen { first + (n - maxlen) } else { n };

        // One pass: gather committed transactions (writes and revokes).
        struct Tx {
            seq: u32,
            writes: Vec<(u64, u64, bool)>, // fs block, log position, escaped
        }
        let mut txs: Vec<Tx> = Vec::new();
        let mut revoked: HashMap<u64, u32> = HashMap::new();
        let mut pending_revokes: Vec<u64> = Vec::new();
        let mut cur = Tx { seq, writes: Vec::new() };
        let mut pos = start;
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps > maxlen {
                notes.push("the journal's log runs all the way round: stopped after one turn".into());
                break;
            }
            let Ok(b) = jread(pos) else { break };
            if be32(&b, 0) != JBD2_MAGIC || be32(&b, 8) != seq {
                break;
            }
            match be32(&b, 4) {
                1 => {
                    // Descriptor: tags, each naming the next log block.
                    let mut at = 12usize;
                    let limit = b.len() - tail;
                    let mut data = wrap(pos + 1);
                    let mut n = 0u64;
                    while at + tag_bytes <= limit {
                        let lo = u64::from(be32(&b, at));
                        let (flags, hi) = if csum3 {
                            (be32(&b, at + 4), if bit64 { u64::from(be32(&b, at + 8)) } else { 0 })
                        } else {
                            (
                                u32::from(u16::from_be_bytes([b[at + 6], b[at + 7]])),
                                if bit64 { u64::from(be32(&b, at + 8)) } else { 0 },
                            )
                        };
                        let fs_block = lo | hi << 32;
                        cur.writes.push((fs_block, data, flags & 1 != 0));
                        n += 1;
                        if n > maxlen {
                            return Err(corrupt("a journal descriptor with more tags than the journal has blocks"));
                        }
                        data = wrap(data + 1);
                        at += tag_bytes;
                        if flags & 2 == 0 {
                            at += 16; // the UUID
                        }
                        if flags & 8 != 0 {
                            break;
                        }
                    }
                    pos = wrap(pos + 1 + n);
                    steps += n;
                    continue;
                }
                2 => {
                    // Commit: the transaction counts.
                    for blk in pending_revokes.drain(..) {
                        let e = revoked.entry(blk).or_insert(seq);
                        if seq.wrapping_sub(*e) as i32 > 0 {
                            *e = seq;
                        }
                    }
                    txs.push(std::mem::replace(&mut cur, Tx { seq: seq.wrapping_add(1), writes: Vec::new() }));
                    seq = seq.wrapping_add(1);
                }
                5 => {
                    let count = (be32(&b, 12) as usize).min(b.len() - tail);
                    let rec = if bit64 { 8 } else { 4 };
                    let mut at = 16;
                    while at + rec <= count {
                        let blk = if bit64 {
                            u64::from(be32(&b, at)) << 32 | u64::from(be32(&b, at + 4))
                        } else {
                            u64::from(be32(&b, at))
                        };
                        pending_revokes.push(blk);
                        at += rec;
                    }
                }
                _ => break,
            }
            pos = wrap(pos + 1);
        }
        let mut replay = Replay::default();
        let mut count = 0usize;
        for tx in &txs {
            for &(blk, log, escaped) in &tx.writes {
                // Revoked in this or a later transaction: not replayed.
                if revoked.get(&blk).is_some_and(|&r| r.wrapping_sub(tx.seq) as i32 >= 0) {
                    continue;
                }
                if blk >= self.sb.blocks_count {
                    return Err(corrupt(format!("the journal writes block {blk}, outside the filesystem")));
                }
                if blk == 0 {
                    // The superblock's block (4 KiB blocks): read raw, never through the map.
                    continue;
                }
                let from = jmap(log)?;
                replay.blocks.insert(blk, (from, escaped));
                count += 1;
            }
        }
        if !txs.is_empty() {
            notes.push(format!(
                "the filesystem needed recovery: {} journal transaction(s) replayed in memory ({count} block writes)",
                txs.len()
            ));
        }
        Ok((replay, notes))
    }
}

const JBD2_MAGIC: u32 = 0xC03B_3998;
const J_64BIT: u32 = 0x2;
const J_CSUM_V2: u32 = 0x8;
const J_CSUM_V3: u32 = 0x10;
const J_FAST_COMMIT: u32 = 0x20;

impl FileSystem for ExtFs {
    fn kind(&self) -> FsKind {
        FsKind::Ext
    }

    fn label(&self) -> Option<String> {
        (!self.sb.label.is_empty()).then(|| self.sb.label.clone())
    }

    fn root(&self) -> FileId {
        FileId(2)
    }

    fn metadata(&self, id: FileId) -> Result<Metadata> {
        Ok(self.meta(&self.inode(Self::id(id)?)?))
    }

    fn read_dir(&self, dir: FileId) -> Result<Vec<DirEntry>> {
        self.dir_entries(&self.inode(Self::id(dir)?)?)
    }

    fn read_at(&self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let ino = self.inode(Self::id(file)?)?;
        if let Some(why) = self.meta(&ino).unreadable {
            return Err(FsError::Unreadable { path: format!("inode {}", ino.ino), why });
        }
        self.read_inode_at(&ino, offset, buf)
    }

    fn read_link(&self, link: FileId) -> Result<Vec<u8>> {
        let ino = self.inode(Self::id(link)?)?;
        if ino.kind() != FileKind::Symlink {
            return Err(FsError::NotFound(format!("inode {} is not a symlink", ino.ino)));
        }
        if ino.size > MAX_LINK || ino.size == 0 {
            return Err(corrupt(format!("inode {}: a symlink target of {} bytes", ino.ino, ino.size)));
        }
        let mut b = vec![0u8; ino.size as usize];
        let n = self.read_inode_at(&ino, 0, &mut b)?;
        b.truncate(n);
        Ok(b)
    }

    fn data_ranges(&self, file: FileId) -> Result<Vec<Range<u64>>> {
        let ino = self.inode(Self::id(file)?)?;
        if ino.inline() || ino.fast_symlink() || ino.size == 0 {
            #[allow(clippy::single_range_in_vec_init)] // inline data: one range
            return Ok(if ino.size == 0 { Vec::new() } else { vec![0..ino.size] });
        }
        let bs = self.bs();
        let blocks = self.block_ranges(&ino)?;
        let data: u64 = blocks.iter().map(|r| r.end - r.start).sum();
        if data > self.sb.blocks_count {
            return Err(corrupt(format!(
                "inode {}: maps {data} blocks of data, more than the filesystem's {}",
                ino.ino, self.sb.blocks_count
            )));
        }
        Ok(blocks.into_iter().map(|r| r.start * bs..(r.end * bs).min(ino.size)).filter(|r| r.start < r.end).collect())
    }

    fn type_name(&self) -> String {
        self.sb.name().into()
    }

    fn uuid(&self) -> Option<String> {
        Some(crate::part::uuid_string(&self.sb.uuid))
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn skipped_entries(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_epoch_bits_and_nanoseconds() {
        assert_eq!(time(1, None), 1_000_000_000);
        assert_eq!(time(u32::MAX, None), -1_000_000_000);
        // 0x80000000 with epoch bits 1 is 2^31 (2038), not negative.
        assert_eq!(time(0x8000_0000, Some(1)), (1i64 << 31) * 1_000_000_000);
        assert_eq!(time(5, Some(7 << 2)), 5_000_000_007);
    }

    #[test]
    fn sparse_super_backups_are_in_groups_0_1_and_powers_of_3_5_7() {
        let mut b = vec![0u8; 1024];
        b[56..58].copy_from_slice(&MAGIC.to_le_bytes());
        b[24..28].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB
        b[76..80].copy_from_slice(&1u32.to_le_bytes());
        b[88..90].copy_from_slice(&256u16.to_le_bytes());
        b[100..104].copy_from_slice(&RO_SPARSE_SUPER.to_le_bytes());
        b[4..8].copy_from_slice(&(1u32 << 20).to_le_bytes());
        b[32..36].copy_from_slice(&32768u32.to_le_bytes());
        b[40..44].copy_from_slice(&8192u32.to_le_bytes());
        b[0..4].copy_from_slice(&(32u32 * 8192).to_le_bytes());
        let sb = Super::parse(&b, 4 << 30).unwrap().unwrap();
        let with: Vec<u64> = (0..100).filter(|&g| sb.has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
        // A superblock claiming more than the device is refused.
        assert!(Super::parse(&b, 1 << 30).is_err());
    }
}
