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
//!
//! ## Modules
//! - [`part`]: MBR (with logical partitions) and GPT partition tables, and
//!   [`part::Slice`], a device over a byte range of another.
//! - [`ext`]: ext2, ext3 and ext4.
//! - [`lvm`]: LVM2 volume groups and their linear and striped logical
//!   volumes, without device-mapper.
//! - [`scan`]: the volumes of a set of disks (whole disks, partitions,
//!   LVM2 logical volumes) and the filesystem on each, probed in one place.
//! - [`extract`]: path look-up and safe extraction into a directory (no
//!   path ever leaves it), over any [`FileSystem`].
//!
//! ```
//! use std::sync::Arc;
//! use alike_fs::{BlockDevice, MemDevice};
//!
//! // A blank disk: no partition table, no filesystem.
//! let disk: Arc<dyn BlockDevice> = Arc::new(MemDevice::new("blank", vec![0u8; 1 << 20]));
//! assert!(alike_fs::part::read_table(&disk)?.is_none());
//! let volumes = alike_fs::scan::scan(&[alike_fs::scan::Disk::new(0, "blank", disk)])?;
//! assert!(volumes.volumes[0].fs.is_none());
//! # Ok::<(), alike_fs::FsError>(())
//! ```

use std::ops::Range;
use std::path::Path;

pub mod ext;
pub mod extract;
pub mod fat;
#[doc(hidden)]
pub mod fuzz;
pub mod lvm;
pub mod ntfs;
pub mod part;
pub mod scan;

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

    /// What errors call this device (`disk 0`, `disk 0 partition 2`).
    fn describe(&self) -> String {
        "device".into()
    }
}

/// Checks that `len` bytes at `offset` lie inside a device of `size` bytes.
///
/// # Errors
/// [`FsError::OutOfRange`] naming `device`.
pub fn check_range(device: &dyn BlockDevice, offset: u64, len: usize) -> Result<()> {
    let size = device.size();
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(FsError::OutOfRange { device: device.describe(), offset, len: len as u64, size }),
    }
}

/// A device held in memory (tests, fuzzing, small images).
#[derive(Debug, Clone)]
pub struct MemDevice {
    name: String,
    bytes: Vec<u8>,
}

impl MemDevice {
    /// A device named `name` holding `bytes`.
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> MemDevice {
        MemDevice { name: name.into(), bytes }
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self, offset, buf.len())?;
        let at = offset as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// A device over a file or a block device of this machine (an image file).
#[derive(Debug)]
pub struct FileDevice {
    name: String,
    file: std::fs::File,
    size: u64,
}

impl FileDevice {
    /// Opens `path` read-only; its size is the file's length (or the block
    /// device's size).
    ///
    /// # Errors
    /// [`FsError::Io`] when it cannot be opened or sized.
    pub fn open(path: impl AsRef<Path>) -> Result<FileDevice> {
        use std::io::Seek;
        let path = path.as_ref();
        let io = |source| FsError::Io { path: path.display().to_string(), source };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let size = file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        Ok(FileDevice { name: path.display().to_string(), file, size })
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        check_range(self, offset, buf.len())?;
        self.file.read_exact_at(buf, offset).map_err(|e| FsError::Device {
            device: self.name.clone(),
            offset,
            len: buf.len() as u64,
            message: e.to_string(),
        })
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
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

    /// The name of the filesystem's variant for people (`ext4`, `ext2`,
    /// `NTFS`, `FAT32`). The default names the [`FsKind`].
    fn type_name(&self) -> String {
        match self.kind() {
            FsKind::Ext => "ext",
            FsKind::Ntfs => "NTFS",
            FsKind::Fat => "FAT",
        }
        .into()
    }

    /// The filesystem's UUID or serial number, as its own tools print it,
    /// where it has one. The default says none.
    fn uuid(&self) -> Option<String> {
        None
    }

    /// Warnings met while opening (a journal left unreplayed, a backup
    /// structure used because the primary was damaged). The default: none.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Directory entries skipped so far because their names cannot be a
    /// file name (a `/` or NUL in them), for extraction to report. The
    /// default: none.
    fn skipped_entries(&self) -> u64 {
        0
    }

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
    /// A path names nothing (or a volume, partition or filesystem asked for
    /// is not there: the message says which, and what there is).
    #[error("not found: {0}")]
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
    /// Extraction refused a name that would leave the target directory
    /// (or cannot be created there).
    #[error("refused {path}: {why}")]
    Refused {
        /// The name as found in the filesystem.
        path: String,
        /// Why it was refused.
        why: String,
    },
    /// Extraction met a name that already exists in the target directory
    /// (replaced only with `force`; a directory is never replaced).
    #[error("{path}: {why}")]
    Exists {
        /// The entry, by its path in the filesystem.
        path: String,
        /// What is in the way, and what would replace it.
        why: String,
    },
    /// The caller cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, FsError>;

/// Bytes of file data [`fuzz_one`] reads at most.
const FUZZ_READ_BUDGET: u64 = 16 << 20;

/// Reads `data` as a disk every way this crate can: its partition table,
/// the filesystem of each volume, every directory from the root (at most
/// 8 deep and 10 000 entries), every file's data ranges and bytes (within
/// a budget), every symlink, and a few look-ups. The body of the `fs` fuzz
/// target, public so a stable-toolchain test can run it: it must return,
/// never panic, on any bytes.
pub fn fuzz_one(data: &[u8]) {
    let disk: std::sync::Arc<dyn BlockDevice> = std::sync::Arc::new(MemDevice::new("fuzz", data.to_vec()));
    let _ = part::read_table(&disk);
    let Ok(found) = scan::scan(&[scan::Disk::new(0, "fuzz", disk)]) else { return };
    let mut budget = FUZZ_READ_BUDGET;
    let mut entries = 10_000usize;
    let mut buf = vec![0u8; 64 << 10];
    for v in &found.volumes {
        let Some(fs) = &v.fs else { continue };
        let _ = (fs.label(), fs.uuid(), fs.type_name(), fs.warnings());
        for p in [&b"/"[..], b"/a/b", b"../..", b"lost+found"] {
            let _ = extract::lookup(fs.as_ref(), p);
        }
        let mut todo = vec![(fs.root(), 0usize)];
        let mut seen = std::collections::HashSet::new();
        while let Some((dir, depth)) = todo.pop() {
            if depth > 8 || !seen.insert(dir) {
                continue;
            }
            let Ok(list) = fs.read_dir(dir) else { continue };
            for e in list {
                if entries == 0 {
                    return;
                }
                entries -= 1;
                assert!(!e.name.is_empty() && !e.name.contains(&b'/') && !e.name.contains(&0), "a bad name listed");
                let _ = fs.metadata(e.meta.id);
                match e.meta.kind {
                    FileKind::Dir => todo.push((e.meta.id, depth + 1)),
                    FileKind::Symlink => {
                        let _ = fs.read_link(e.meta.id);
                    }
                    FileKind::File => {
                        if let Ok(ranges) = fs.data_ranges(e.meta.id) {
                            for r in ranges.iter().take(64) {
                                assert!(r.start < r.end, "an empty data range");
                                let n = (r.end - r.start).min(buf.len() as u64).min(budget);
                                if n > 0 {
                                    let _ = fs.read_at(e.meta.id, r.start, &mut buf[..n as usize]);
                                    budget -= n;
                                }
                            }
                        }
                        let _ = fs.read_at(e.meta.id, e.meta.size.saturating_sub(3), &mut buf[..7]);
                        let _ = fs.read_at(e.meta.id, u64::MAX - 2, &mut buf[..4]);
                    }
                    _ => {}
                }
            }
        }
    }
}
