//! The error type of `alike-core`.
//!
//! Rules: every public function of this crate returns [`Error`]. Parse and
//! verification failures are data (variants with ids and offsets), never bare
//! strings. Errors coming from a store implementation are kept whole in
//! [`Error::Store`] so the facade can classify them.

use std::path::PathBuf;

use crate::ChunkId;

/// What a caller can expect from retrying an operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retry {
    /// The same call will fail the same way.
    Permanent,
    /// A retry may succeed (network blip, lock held by someone else).
    Transient,
    /// Not known.
    Unknown,
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase or key file does not unlock the store's master key.
    #[error("wrong passphrase or key: it does not unlock the store's key {key}")]
    WrongPassphrase {
        /// Which key object was tried.
        key: String,
    },
    /// A stored blob failed authentication, decryption, decompression or its id check.
    #[error("blob {id} ({kind}) is corrupt: {reason}")]
    CorruptBlob {
        /// The blob's id.
        id: ChunkId,
        /// What kind of blob.
        kind: &'static str,
        /// What check failed.
        reason: String,
    },
    /// A stored frame failed authentication or decompression.
    #[error("stored frame {container}@{offset} ({kind}) is corrupt: {reason}")]
    CorruptFrame {
        /// The object holding it (first 8 bytes of its id, hex).
        container: String,
        /// Offset of the frame in it.
        offset: u32,
        /// What kind of chunks it holds.
        kind: &'static str,
        /// What check failed.
        reason: String,
    },
    /// A structure decoded from stored bytes is malformed.
    #[error("{what} is malformed at byte {offset}: {reason}")]
    Malformed {
        /// Which structure (e.g. "block map 1a2b…").
        what: String,
        /// Offset inside the structure.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A disk source failed to read.
    #[error("reading disk {disk} at offset {offset}: {source}")]
    SourceRead {
        /// Disk label or path.
        disk: String,
        /// Byte offset of the failed read.
        offset: u64,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A disk target failed to write.
    #[error("writing {target} at offset {offset}: {source}")]
    TargetWrite {
        /// Target label or path.
        target: String,
        /// Byte offset of the failed write.
        offset: u64,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be opened or inspected.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The operation was cancelled through its [`crate::CancelToken`].
    #[error("cancelled")]
    Cancelled,
    /// A caller passed something unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A chunk a version needs is not in the store's index.
    #[error("chunk {id} is not in the store (needed by {needed_by})")]
    MissingChunk {
        /// The missing chunk.
        id: ChunkId,
        /// What needs it (version / disk / offset).
        needed_by: String,
    },
    /// The store implementation failed.
    #[error(transparent)]
    Store(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A key derivation or cipher setup failure that is not a wrong passphrase.
    #[error("crypto: {0}")]
    Crypto(String),
}

impl Error {
    /// Whether a retry of the same call may succeed.
    pub fn retry(&self) -> Retry {
        match self {
            Error::SourceRead { .. } | Error::TargetWrite { .. } | Error::Io { .. } => Retry::Unknown,
            Error::Store(_) => Retry::Unknown,
            _ => Retry::Permanent,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
