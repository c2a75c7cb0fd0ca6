//! The error type of the VHD reader and writers.
//!
//! Rules: every public function of [`crate::vhd`] returns [`VhdError`].
//! Every variant names the file (or stream label) it concerns and, for
//! parse failures, the byte offset and what was wrong — as fields, not
//! prose, so a caller can tell a damaged image from a missing parent or a
//! full disk. Lower errors are kept whole as `source`.
//!
//! Crossing into the engine: the [`alike_core::DiskSource`] and
//! [`alike_core::DiskTarget`] impls report `SourceRead` / `TargetWrite`
//! (with this error inside the `io::Error`), so the engine never mistakes a
//! failing restore target for damaged stored data; elsewhere
//! `From<VhdError> for alike_core::Error` keeps this error whole in
//! `alike_core::Error::Seam`, with the kind and retry class given here
//! ([`alike_core::SeamError`]).

use std::io;
use std::path::PathBuf;

use alike_core::{ErrorKind, Retry};

/// Errors reading or writing VHD images.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VhdError {
    /// A file could not be opened, created, inspected, synced or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading a file or stream failed, or it ended before the bytes wanted.
    #[error("{file}: reading {len} bytes at offset {offset}: {source}")]
    Read {
        /// File path or stream label.
        file: String,
        /// Byte offset of the read in the file or stream.
        offset: u64,
        /// Bytes wanted.
        len: u64,
        /// Underlying error (`UnexpectedEof` when the input ended).
        #[source]
        source: io::Error,
    },
    /// Writing a file or stream failed.
    #[error("{file}: writing at offset {offset}: {source}")]
    Write {
        /// File path or stream label.
        file: String,
        /// Byte offset of the write.
        offset: u64,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// A structure does not start with the cookie its kind must have (not a
    /// VHD, or the structure is not where the file says it is).
    #[error("{file}: no VHD {what} at offset {offset}: cookie is {found:?}, expected {expected:?}")]
    BadCookie {
        /// File path or stream label.
        file: String,
        /// Which structure ("footer", "dynamic disk header").
        what: &'static str,
        /// Where it was looked for.
        offset: u64,
        /// The bytes found, escaped.
        found: String,
        /// The cookie wanted.
        expected: &'static str,
    },
    /// A structure's stored checksum does not match its bytes.
    #[error("{file}: {what} at offset {offset} is damaged: checksum {stored:#010x} stored, {computed:#010x} computed")]
    Checksum {
        /// File path or stream label.
        file: String,
        /// Which structure.
        what: &'static str,
        /// Where it is.
        offset: u64,
        /// The checksum in the structure.
        stored: u32,
        /// The checksum of its bytes.
        computed: u32,
    },
    /// A structure has a format version this build does not read.
    #[error("{file}: {what} has version {version:#010x}; only 1.x is supported")]
    UnsupportedVersion {
        /// File path or stream label.
        file: String,
        /// Which structure.
        what: &'static str,
        /// The version found.
        version: u32,
    },
    /// The footer names a disk type other than fixed (2), dynamic (3) or differencing (4).
    #[error("{file}: unsupported VHD disk type {disk_type}")]
    UnsupportedDiskType {
        /// File path or stream label.
        file: String,
        /// The type found.
        disk_type: u32,
    },
    /// The dynamic header's block size is not a power of two between 512 bytes and 256 MiB.
    #[error("{file}: block size {block_size} is not allowed (a power of two from 512 bytes to 256 MiB)")]
    BadBlockSize {
        /// File path or stream label.
        file: String,
        /// The block size found (or asked for).
        block_size: u64,
    },
    /// A structure runs past the end of the file.
    #[error(
        "{file}: {what} at offset {offset} ({len} bytes) runs past the end of the file ({file_len} bytes); truncated?"
    )]
    Truncated {
        /// File path.
        file: String,
        /// Which structure.
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A block allocation table entry points past the end of the file.
    #[error("{file}: BAT entry {block} points to offset {offset}, past the end of the file ({file_len} bytes)")]
    BatEntryPastEnd {
        /// File path.
        file: String,
        /// Block number (BAT index).
        block: u64,
        /// Byte offset the entry names (its sector bitmap).
        offset: u64,
        /// The file's length.
        file_len: u64,
    },
    /// In a stream, a block lies before bytes already consumed (behind the
    /// BAT, or overlapping the previous block): it cannot be read without seeking.
    #[error("{file}: BAT entry {block} points to offset {offset}, but the stream is already at {position} ({reason})")]
    BlockOutOfOrder {
        /// Stream label.
        file: String,
        /// Block number.
        block: u64,
        /// Byte offset the entry names.
        offset: u64,
        /// The first byte offset still readable.
        position: u64,
        /// "overlaps the BAT", "overlaps block N"…
        reason: String,
    },
    /// A field is inconsistent with the others or out of range.
    #[error("{file}: malformed VHD at offset {offset}: {reason}")]
    Malformed {
        /// File path or stream label.
        file: String,
        /// Offset of the structure or field.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A size or count exceeds what this reader accepts.
    #[error("{file}: {what} is {value}, more than the limit {limit}")]
    TooLarge {
        /// File path or stream label.
        file: String,
        /// Which quantity.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// No parent locator (nor the parent's name) of a differencing disk names an existing file.
    #[error("{file}: parent {parent_name:?} not found; tried {}", tried_list(tried))]
    ParentNotFound {
        /// The differencing disk.
        file: String,
        /// The parent's name from the header.
        parent_name: String,
        /// Every path tried, in order.
        tried: Vec<PathBuf>,
    },
    /// The parent found has a different unique id than the child's header records.
    #[error("{file}: parent {} has unique id {found}, but the child expects {expected}", parent.display())]
    ParentUuidMismatch {
        /// The differencing disk.
        file: String,
        /// The parent file that was found.
        parent: PathBuf,
        /// The parent unique id in the child's header.
        expected: String,
        /// The unique id in the parent's footer.
        found: String,
    },
    /// Following parents came back to a file already in the chain.
    #[error("{file}: loop in the parent chain: parent {} is already in the chain", parent.display())]
    ParentLoop {
        /// The differencing disk whose parent closes the loop.
        file: String,
        /// The parent (canonical path).
        parent: PathBuf,
    },
    /// The differencing chain is deeper than the limit.
    #[error("{file}: differencing chain deeper than {limit} images")]
    ChainTooDeep {
        /// The top of the chain.
        file: String,
        /// The limit.
        limit: usize,
    },
    /// A differencing disk was opened where its parent cannot be looked up (from memory).
    #[error("{file}: is a differencing disk; open it from a file so its parent can be found")]
    NeedsParent {
        /// Label.
        file: String,
    },
    /// A caller passed something unusable (a write past the disk's end, a bad option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The disk source a writer copies from failed.
    #[error("reading the source disk: {0}")]
    Source(#[source] alike_core::Error),
}

fn tried_list(tried: &[PathBuf]) -> String {
    if tried.is_empty() {
        return "nothing (no usable parent locator)".to_owned();
    }
    tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

impl VhdError {
    /// What kind of failure: a malformed image is `BadImage`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            VhdError::Io { .. } | VhdError::Read { .. } | VhdError::Write { .. } => ErrorKind::Io,
            VhdError::ParentNotFound { .. } => ErrorKind::NotFound,
            VhdError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            VhdError::Source(c) => c.kind(),
            _ => ErrorKind::BadImage,
        }
    }

    /// Whether a retry of the same call may succeed.
    pub fn retry(&self) -> Retry {
        match self {
            VhdError::Io { .. } | VhdError::Read { .. } | VhdError::Write { .. } | VhdError::ParentNotFound { .. } => {
                Retry::Unknown
            }
            VhdError::Source(e) => e.retry(),
            _ => Retry::Permanent,
        }
    }

    /// The `io::ErrorKind` closest to this error, for wrapping it in an `io::Error`.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            VhdError::Io { source, .. } | VhdError::Read { source, .. } | VhdError::Write { source, .. } => {
                source.kind()
            }
            VhdError::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            VhdError::ParentNotFound { .. } => io::ErrorKind::NotFound,
            _ => io::ErrorKind::InvalidData,
        }
    }

    /// This error inside an `io::Error` (its kind kept), for the seam traits.
    pub fn into_io(self) -> io::Error {
        io::Error::new(self.io_kind(), self)
    }
}

impl From<VhdError> for alike_core::Error {
    fn from(e: VhdError) -> alike_core::Error {
        match e {
            VhdError::Io { path, source } => alike_core::Error::Io { path, source },
            VhdError::Source(e) => e,
            e => alike_core::Error::seam(e),
        }
    }
}

impl alike_core::SeamError for VhdError {
    fn kind(&self) -> ErrorKind {
        self.kind()
    }
    fn retry(&self) -> Retry {
        self.retry()
    }
}

/// Result alias of the VHD module.
pub type Result<T, E = VhdError> = std::result::Result<T, E>;
