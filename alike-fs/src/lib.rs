//! # alike-fs
//!
//! File-level restore without mounting anything: a disk of a version is a
//! [`BlockDevice`] (random access to its bytes, fetched from the store on
//! demand by the facade), partition tables and LVM2 volume groups on it
//! are found, and a filesystem on a partition or a logical volume is read
//! through the [`FileSystem`] trait. Nothing here needs root, a kernel
//! module or a loop device, and nothing here knows the store.
//!
//! Every reader treats the bytes as hostile: sizes, counts, offsets and
//! links read from the image are checked before they are used, loops in
//! directory structures end in an error, and no allocation is sized by an
//! unchecked field.
//!
//! Errors are [`FsError`].

use std::ops::Range;

pub mod fat;
#[doc(hidden)]
pub mod fuzz;
pub mod lvm;
pub mod ntfs;

/// Random access to the bytes of a device: a disk of a version, a
/// partition of it, a logical volume.
///
/// Implementations are shared between threads; a read never changes the
/// device.
pub trait BlockDevice: Send + Sync {
    /// Size of the device in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`. A read that runs past
    /// [`BlockDevice::size`] is an error ([`FsError::OutOfRange`]).
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// Identifies a file within one [`FileSystem`] (an inode number, an MFT
/// record number, or an identifier the reader assigns). Only meaningful to
/// the filesystem that handed it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u64);

/// Which filesystem a [`FileSystem`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FsKind {
    /// ext2, ext3 or ext4.
    Ext,
    /// NTFS.
    Ntfs,
    /// FAT12, FAT16 or FAT32 (EFI system partitions).
    Fat,
}

/// What kind of object a directory entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (on NTFS also a junction).
    Symlink,
    /// Devices, sockets, FIFOs, NTFS reparse points other than links:
    /// listed, never extracted as data.
    Other,
}

/// A time as nanoseconds since the Unix epoch (negative before it).
pub type TimeNs = i64;

/// What a filesystem records of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// The file's identifier in its filesystem.
    pub id: FileId,
    /// What the file is.
    pub kind: FileKind,
    /// Length of the file's data in bytes (of a symlink: of its target).
    pub size: u64,
    /// Permission bits and set-id/sticky bits (`0o7777` mask), where the
    /// filesystem records them (ext); `None` on NTFS and FAT.
    pub mode: Option<u32>,
    /// Owner, where recorded (ext).
    pub uid: Option<u32>,
    /// Group, where recorded (ext).
    pub gid: Option<u32>,
    /// Hard links to this file (1 where the filesystem has no such notion).
    pub nlink: u32,
    /// Last modification of the data.
    pub mtime: Option<TimeNs>,
    /// Last access.
    pub atime: Option<TimeNs>,
    /// Creation time, where recorded.
    pub btime: Option<TimeNs>,
    /// The file's data cannot be read by this reader (EFS-encrypted, an
    /// unsupported compression): says why. Listing shows it; extraction of
    /// this file fails with an error naming it, and the rest go on.
    pub unreadable: Option<String>,
}

impl Metadata {
    /// Metadata with only the id, kind and size known.
    pub fn new(id: FileId, kind: FileKind, size: u64) -> Metadata {
        Metadata {
            id,
            kind,
            size,
            mode: None,
            uid: None,
            gid: None,
            nlink: 1,
            mtime: None,
            atime: None,
            btime: None,
            unreadable: None,
        }
    }
}

/// One entry of a directory (never `.` or `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name as bytes: as stored on ext, UTF-8 on NTFS and FAT (an
    /// unpaired UTF-16 surrogate becomes U+FFFD). Never empty and never
    /// contains `/` or NUL — a reader skips (and counts) entries that do.
    pub name: Vec<u8>,
    /// What the entry names.
    pub meta: Metadata,
}

/// A filesystem, read-only.
///
/// A reader bounds its work by what the image claims only after checking
/// it against the device: a directory that claims a billion entries in a
/// 4 KiB block is corrupt, not a reason to allocate.
pub trait FileSystem: Send + Sync {
    /// Which filesystem this is.
    fn kind(&self) -> FsKind;

    /// The volume label, if any.
    fn label(&self) -> Option<String>;

    /// The root directory.
    fn root(&self) -> FileId;

    /// What the filesystem records of a file.
    fn metadata(&self, id: FileId) -> Result<Metadata>;

    /// The entries of a directory, in the filesystem's order.
    fn read_dir(&self, dir: FileId) -> Result<Vec<DirEntry>>;

    /// Reads the file's data at `offset` into `buf`; returns how many bytes
    /// were read (0 at or past the end).
    fn read_at(&self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<usize>;

    /// The target of a symbolic link (or an NTFS symlink or junction,
    /// translated to a `/`-separated path), as bytes.
    fn read_link(&self, link: FileId) -> Result<Vec<u8>>;

    /// The ranges of the file that hold data (the rest reads as zeros), in
    /// order, for sparse extraction. The default says the whole file.
    fn data_ranges(&self, file: FileId) -> Result<Vec<Range<u64>>> {
        let size = self.metadata(file)?.size;
        #[allow(clippy::single_range_in_vec_init)] // one range: the whole file
        Ok(if size == 0 { Vec::new() } else { vec![0..size] })
    }
}

/// Everything that can go wrong reading partitions, volumes and
/// filesystems. Each kind names what was wrong and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// The device could not deliver bytes (the store failed to fetch or
    /// verify a block): the message says which.
    #[error("reading {len} bytes at offset {offset} of {device}: {message}")]
    Device {
        /// The device (a disk of a version, a partition, a volume).
        device: String,
        /// Where the read started.
        offset: u64,
        /// How many bytes it asked for.
        len: u64,
        /// Why it failed.
        message: String,
    },
    /// A read past the end of a device.
    #[error("read of {len} bytes at offset {offset} runs past the end of {device} ({size} bytes)")]
    OutOfRange {
        /// The device.
        device: String,
        /// Where the read started.
        offset: u64,
        /// How many bytes it asked for.
        len: u64,
        /// The device's size.
        size: u64,
    },
    /// The structure read makes no sense: `what` names it and where.
    #[error("corrupt {fs}: {what}")]
    Corrupt {
        /// The structure's family (`ext4`, `NTFS`, `GPT`, `LVM2`, …).
        fs: &'static str,
        /// What was wrong, and where.
        what: String,
    },
    /// A valid structure this reader does not handle.
    #[error("unsupported {fs}: {what}")]
    Unsupported {
        /// The structure's family.
        fs: &'static str,
        /// What is not handled.
        what: String,
    },
    /// No filesystem, partition table or volume group recognised.
    #[error("not recognised: {0}")]
    NotRecognised(String),
    /// A path names nothing.
    #[error("no such file or directory: {0}")]
    NotFound(String),
    /// A path goes through something that is not a directory.
    #[error("not a directory: {0}")]
    NotADirectory(String),
    /// The file exists but its data cannot be read (EFS encryption, …).
    #[error("{path}: cannot be read: {why}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why its data cannot be read.
        why: String,
    },
    /// A limit that protects against hostile images was reached.
    #[error("limit reached: {0}")]
    Limit(String),
    /// Writing an extracted file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file written.
        path: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Extraction refused a name or a link that would leave the target
    /// directory, or an existing file without `force`.
    #[error("refused {path}: {why}")]
    Refused {
        /// The name as found in the filesystem.
        path: String,
        /// Why it was refused.
        why: String,
    },
    /// The caller cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, FsError>;
