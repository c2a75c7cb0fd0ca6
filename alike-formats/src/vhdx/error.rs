//! The error type of the VHDX reader and writer.
//!
//! Rules: every public function of [`crate::vhdx`] returns [`VhdxError`]; each
//! variant names the file and, where there is one, the byte offset and the
//! structure involved, so a message alone says what was wrong where. The
//! `alike_core` trait impls ([`alike_core::DiskSource`],
//! [`alike_core::DiskTarget`]) wrap it whole in the `source` of
//! `SourceRead`/`TargetWrite` (recoverable with `downcast`), and
//! `From<VhdxError> for alike_core::Error` maps I/O failures to
//! `alike_core::Error::Io` and every format failure to
//! `alike_core::Error::Malformed`, keeping the full message.

use std::path::PathBuf;

use crate::vhdx::Guid;

/// Errors reading or writing VHDX/AVHDX files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VhdxError {
    /// The operating system failed a read, write, open or sync.
    #[error("{file}: {what} at offset {offset}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Byte offset in the file (0 when not applicable).
        offset: u64,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the `vhdxfile` signature.
    #[error("{file}: not a VHDX file (no \"vhdxfile\" signature at offset 0)")]
    NotVhdx {
        /// The file.
        file: PathBuf,
    },
    /// Neither of the two headers (64 KiB and 128 KiB) is valid.
    #[error("{file}: no valid VHDX header: header 1 (offset 65536): {first}; header 2 (offset 131072): {second}")]
    NoValidHeader {
        /// The file.
        file: PathBuf,
        /// Why header 1 is invalid.
        first: String,
        /// Why header 2 is invalid.
        second: String,
    },
    /// A CRC-32C over a structure did not match its stored checksum.
    #[error("{file}: CRC-32C mismatch in {what} at offset {offset} (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The file.
        file: PathBuf,
        /// Which structure (region table 1, region table 2…).
        what: &'static str,
        /// Offset of the structure in the file.
        offset: u64,
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum computed over the bytes.
        computed: u32,
    },
    /// A structure holds a value the specification does not allow.
    #[error("{file}: {what} at offset {offset}: {reason}")]
    Malformed {
        /// The file.
        file: PathBuf,
        /// Which structure.
        what: &'static str,
        /// Offset of the structure (or field) in the file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The block size is not a power of two between 1 MiB and 256 MiB.
    #[error("{file}: block size {block_size} is not allowed (must be a power of two from 1 MiB to 256 MiB)")]
    BlockSizeNotAllowed {
        /// The file.
        file: PathBuf,
        /// The block size found.
        block_size: u64,
    },
    /// A region marked required is not one this reader knows (BAT, metadata).
    #[error("{file}: unknown required region {guid} in the region table: refusing to open")]
    UnknownRequiredRegion {
        /// The file.
        file: PathBuf,
        /// The region's GUID.
        guid: Guid,
    },
    /// A metadata item marked required is not one this reader knows.
    #[error("{file}: unknown required metadata item {guid}: refusing to open")]
    UnknownRequiredMetadata {
        /// The file.
        file: PathBuf,
        /// The item's GUID.
        guid: Guid,
    },
    /// A BAT entry points (partly) past the end of the file.
    #[error(
        "{file}: BAT entry {index} (block at file offset {file_offset}, {needed} bytes) lies past the end of the file ({file_len} bytes)"
    )]
    BatEntryPastEof {
        /// The file.
        file: PathBuf,
        /// Index of the entry in the BAT.
        index: u64,
        /// File offset the entry points at.
        file_offset: u64,
        /// Bytes of the block that must be in the file.
        needed: u64,
        /// Length of the file (after log replay).
        file_len: u64,
    },
    /// The log holds entries that must be replayed but cannot be.
    #[error("{file}: the log (offset {log_offset}) cannot be replayed: {reason}")]
    Log {
        /// The file.
        file: PathBuf,
        /// Offset of the log region.
        log_offset: u64,
        /// Why.
        reason: String,
    },
    /// No candidate path for the parent of a differencing disk exists.
    #[error("{file}: parent disk not found; tried: {}", display_paths(tried))]
    ParentNotFound {
        /// The differencing file.
        file: PathBuf,
        /// Every path tried, in order.
        tried: Vec<PathBuf>,
    },
    /// A parent file was found but its DataWriteGuid is not the one the child records.
    #[error(
        "{file}: parent {parent} has DataWriteGuid {found} but the child's parent_linkage is {expected} (the parent was modified or is a different disk)"
    )]
    ParentLinkageMismatch {
        /// The differencing file.
        file: PathBuf,
        /// The parent file tried.
        parent: PathBuf,
        /// The linkage the child records.
        expected: Guid,
        /// The parent's DataWriteGuid.
        found: Guid,
    },
    /// A parent locator leads back to a file already in the chain.
    #[error("{file}: loop in the parent chain: its parent {parent} is already in the chain")]
    ParentLoop {
        /// The differencing file.
        file: PathBuf,
        /// The parent path that closes the loop.
        parent: PathBuf,
    },
    /// The chain is deeper than the configured limit.
    #[error("{file}: parent chain deeper than {limit} files")]
    ChainTooDeep {
        /// The file at which the limit was hit.
        file: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// A read past the end of the virtual disk.
    #[error("{file}: read of {len} bytes at offset {offset} is past the end of the virtual disk ({size} bytes)")]
    ReadPastEnd {
        /// The disk.
        file: PathBuf,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Virtual size.
        size: u64,
    },
    /// A caller passed something unusable (size, block size, finish twice…).
    #[error("{file}: invalid argument: {reason}")]
    InvalidArgument {
        /// The file.
        file: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

fn display_paths(p: &[PathBuf]) -> String {
    if p.is_empty() {
        return "(no usable path in the parent locator)".into();
    }
    p.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

impl VhdxError {
    /// The file the error is about.
    pub fn file(&self) -> &std::path::Path {
        match self {
            VhdxError::Io { file, .. }
            | VhdxError::NotVhdx { file }
            | VhdxError::NoValidHeader { file, .. }
            | VhdxError::Checksum { file, .. }
            | VhdxError::Malformed { file, .. }
            | VhdxError::BlockSizeNotAllowed { file, .. }
            | VhdxError::UnknownRequiredRegion { file, .. }
            | VhdxError::UnknownRequiredMetadata { file, .. }
            | VhdxError::BatEntryPastEof { file, .. }
            | VhdxError::Log { file, .. }
            | VhdxError::ParentNotFound { file, .. }
            | VhdxError::ParentLinkageMismatch { file, .. }
            | VhdxError::ParentLoop { file, .. }
            | VhdxError::ChainTooDeep { file, .. }
            | VhdxError::ReadPastEnd { file, .. }
            | VhdxError::InvalidArgument { file, .. } => file,
        }
    }

    /// Wraps this error in an `std::io::Error` of a fitting kind (the
    /// original stays reachable through `get_ref`/`downcast`).
    pub fn into_io(self) -> std::io::Error {
        let kind = match &self {
            VhdxError::Io { source, .. } => source.kind(),
            VhdxError::ReadPastEnd { .. } => std::io::ErrorKind::UnexpectedEof,
            VhdxError::InvalidArgument { .. } => std::io::ErrorKind::InvalidInput,
            VhdxError::ParentNotFound { .. } => std::io::ErrorKind::NotFound,
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, self)
    }
}

impl From<VhdxError> for alike_core::Error {
    fn from(e: VhdxError) -> alike_core::Error {
        match e {
            VhdxError::Io { file, source, .. } => alike_core::Error::Io { path: file, source },
            VhdxError::InvalidArgument { .. } => alike_core::Error::InvalidArgument(e.to_string()),
            other => {
                let offset = match &other {
                    VhdxError::Checksum { offset, .. }
                    | VhdxError::Malformed { offset, .. }
                    | VhdxError::Log { log_offset: offset, .. }
                    | VhdxError::ReadPastEnd { offset, .. } => *offset,
                    VhdxError::BatEntryPastEof { file_offset, .. } => *file_offset,
                    _ => 0,
                };
                alike_core::Error::Malformed {
                    what: format!("VHDX file {}", other.file().display()),
                    offset,
                    reason: other.to_string(),
                }
            }
        }
    }
}

/// Result alias of the VHDX module.
pub type Result<T, E = VhdxError> = std::result::Result<T, E>;
