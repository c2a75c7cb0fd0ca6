//! The error type of `alike-core`.
//!
//! Rules: every public function of this crate returns [`Error`]. Parse and
//! verification failures are data (variants with ids and offsets), never bare
//! strings. An error made by an implementation of a seam trait (a store, a
//! disk source, a hypervisor) is kept whole in [`Error::Seam`], and the crate
//! that made it says what it is through [`SeamError`]: its [`ErrorKind`], its
//! [`Retry`] class and the host's own code. Nothing above unpacks it again by
//! downcasting: [`Error::kind`], [`Error::retry`] and [`Error::code`] answer
//! for every variant.

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

/// What kind of failure, for callers that branch on it (the bindings map it
/// to Python exception classes and C result codes). Set by the crate where
/// the error is made, and kept across seams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The passphrase or key file does not unlock the store.
    WrongPassphrase,
    /// An encrypted store was opened without a passphrase or key file.
    PassphraseRequired,
    /// No store at that location.
    NotAStore,
    /// A store, or a restore's output file, already exists there.
    AlreadyExists,
    /// A version, VM, disk or object does not exist.
    NotFound,
    /// Stored data is damaged.
    Corruption,
    /// An object has a format version this build does not read.
    UnsupportedVersion,
    /// The operation was cancelled.
    Cancelled,
    /// A bad argument.
    InvalidArgument,
    /// Reading a source, writing a target, the store's files or the network failed.
    Io,
    /// Another process holds a lock that excludes this operation, or the
    /// host says the object is in use.
    Busy,
    /// An input disk image (VHD, VHDX) is malformed or unsupported.
    BadImage,
    /// The store was opened with a write-only key, which cannot read chunk
    /// data (restore, verify --full, vault from it) nor remove anything
    /// (prune, forget, gc): the full key can.
    WriteOnlyKey,
    /// Anything else.
    Other,
}

/// The one table of error kinds the bindings are made from: the kind, its
/// stable C result code (never reused), its snake-case name (Python's
/// `Error.kind`), its C name, and its Python exception class.
macro_rules! kinds {
    ($($kind:ident = $code:literal, $name:literal, $c:literal, $py:literal;)*) => {
        impl ErrorKind {
            /// Every kind, in the order of their C codes.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$kind),*];

            /// The stable C result code (`alike_result`), never reused.
            pub fn code(self) -> u32 {
                match self { $(ErrorKind::$kind => $code),* }
            }
            /// The kind's name in snake case (`not_found`): Python's `Error.kind`.
            pub fn name(self) -> &'static str {
                match self { $(ErrorKind::$kind => $name),* }
            }
            /// The C name of its result code (`ALIKE_ERR_NOT_FOUND`).
            pub fn c_name(self) -> &'static str {
                match self { $(ErrorKind::$kind => $c),* }
            }
            /// The Python exception class (`alike.NotFound`); `Error`, the
            /// base class, for `Other`.
            pub fn python_class(self) -> &'static str {
                match self { $(ErrorKind::$kind => $py),* }
            }
        }
    };
}

kinds! {
    WrongPassphrase = 1, "wrong_passphrase", "ALIKE_ERR_WRONG_PASSPHRASE", "WrongPassphrase";
    PassphraseRequired = 2, "passphrase_required", "ALIKE_ERR_PASSPHRASE_REQUIRED", "PassphraseRequired";
    NotAStore = 3, "not_a_store", "ALIKE_ERR_NOT_A_STORE", "NotAStore";
    AlreadyExists = 4, "already_exists", "ALIKE_ERR_ALREADY_EXISTS", "AlreadyExists";
    NotFound = 5, "not_found", "ALIKE_ERR_NOT_FOUND", "NotFound";
    Corruption = 6, "corruption", "ALIKE_ERR_CORRUPTION", "Corruption";
    UnsupportedVersion = 7, "unsupported_version", "ALIKE_ERR_UNSUPPORTED_VERSION", "UnsupportedVersion";
    Cancelled = 8, "cancelled", "ALIKE_ERR_CANCELLED", "Cancelled";
    InvalidArgument = 9, "invalid_argument", "ALIKE_ERR_INVALID_ARGUMENT", "InvalidArgument";
    Io = 10, "io", "ALIKE_ERR_IO", "IoError";
    Busy = 11, "busy", "ALIKE_ERR_BUSY", "Busy";
    Other = 12, "other", "ALIKE_ERR_OTHER", "Error";
    BadImage = 13, "bad_image", "ALIKE_ERR_BAD_IMAGE", "BadImage";
    WriteOnlyKey = 14, "write_only_key", "ALIKE_ERR_WRITE_ONLY_KEY", "WriteOnlyKey";
}

impl Retry {
    /// `permanent`, `transient` or `unknown` (Python's `Error.retry`).
    pub fn name(self) -> &'static str {
        match self {
            Retry::Permanent => "permanent",
            Retry::Transient => "transient",
            Retry::Unknown => "unknown",
        }
    }
}

/// What the crate that made an error says of it, so that it survives a seam
/// trait (boxed in [`Error::Seam`]) with its kind, retry class and code.
pub trait SeamError: std::error::Error + Send + Sync + 'static {
    /// What kind of failure.
    fn kind(&self) -> ErrorKind;
    /// Whether a retry of the same call may succeed.
    fn retry(&self) -> Retry;
    /// The host's or service's own code for a refusal (XAPI's
    /// `VDI_IN_USE`, an HTTP status), when there is one.
    fn code(&self) -> Option<&str> {
        None
    }
}

/// A seam implementation's error, boxed whole (see [`SeamError`]): it
/// displays as itself, keeps its source chain, and can be downcast back to
/// its own type by whoever knows it.
#[derive(Debug)]
pub struct Foreign(Box<dyn SeamError>);

impl Foreign {
    /// The error as its crate made it, when it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        let e: &(dyn std::error::Error + 'static) = &*self.0;
        e.downcast_ref::<T>()
    }
}

impl std::ops::Deref for Foreign {
    type Target = dyn SeamError;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Display for Foreign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Foreign {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
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
    /// An implementation of a seam trait (the store, a disk source, a
    /// hypervisor) failed; its crate's error is kept whole and classified.
    #[error(transparent)]
    Seam(Foreign),
    /// The system refused to start a thread.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key derivation or cipher setup failure that is not a wrong passphrase.
    #[error("crypto: {0}")]
    Crypto(String),
    /// The store was opened with a write-only key, and this needs to read
    /// chunk data, which is sealed to the store's public key, or removes
    /// something (prune, forget, unpin, gc).
    #[error(
        "{what}: the store was opened with a write-only key, which can add data and versions but cannot read chunk data (data frames are sealed to the store's public key) nor remove anything; use the store's full key (its passphrase or full key file)"
    )]
    WriteOnlyKey {
        /// What could not be read (a frame, a version's disk).
        what: String,
    },
}

impl Error {
    /// Wraps a seam implementation's error.
    pub fn seam(e: impl SeamError) -> Error {
        Error::Seam(Foreign(Box::new(e)))
    }

    /// Whether a retry of the same call may succeed.
    pub fn retry(&self) -> Retry {
        match self {
            Error::SourceRead { source, .. } | Error::TargetWrite { source, .. } | Error::Io { source, .. } => {
                io_retry(source)
            }
            Error::Seam(e) => e.retry(),
            Error::Thread { .. } => Retry::Transient,
            _ => Retry::Permanent,
        }
    }

    /// What kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::WrongPassphrase { .. } => ErrorKind::WrongPassphrase,
            Error::CorruptBlob { .. } | Error::CorruptFrame { .. } | Error::Malformed { .. } => ErrorKind::Corruption,
            Error::MissingChunk { .. } => ErrorKind::Corruption,
            Error::SourceRead { .. } | Error::TargetWrite { .. } | Error::Io { .. } => ErrorKind::Io,
            Error::Thread { .. } => ErrorKind::Io,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Seam(e) => e.kind(),
            Error::Crypto(_) => ErrorKind::Other,
            Error::WriteOnlyKey { .. } => ErrorKind::WriteOnlyKey,
        }
    }

    /// The host's or service's own code, when a seam implementation gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Seam(e) => e.code(),
            _ => None,
        }
    }

    /// Whether this is damage to stored data (a chunk that fails
    /// authentication, a missing chunk or object), as opposed to a failure
    /// to reach the data that a later attempt may not meet.
    pub fn is_damage(&self) -> bool {
        match self.kind() {
            ErrorKind::Corruption => true,
            ErrorKind::NotFound => matches!(self, Error::Seam(_)),
            _ => false,
        }
    }
}

/// A copy of an error's message, kind and retry class, where one failure
/// must be reported for several items (a failed index transaction fails
/// each of its blocks).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Echo {
    message: String,
    kind: ErrorKind,
    retry: Retry,
}

impl Echo {
    pub(crate) fn of(e: &Error) -> Echo {
        Echo { message: e.to_string(), kind: e.kind(), retry: e.retry() }
    }
    pub(crate) fn to_error(&self) -> Error {
        Error::seam(self.clone())
    }
}

impl SeamError for Echo {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
    fn retry(&self) -> Retry {
        self.retry
    }
}

/// Interrupted and timed-out I/O may pass; the rest is not known.
fn io_retry(e: &std::io::Error) -> Retry {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::Interrupted | K::TimedOut | K::WouldBlock | K::ConnectionReset | K::ConnectionAborted => Retry::Transient,
        _ => Retry::Unknown,
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    #[test]
    fn the_kind_table_is_whole_and_codes_are_unique() {
        let mut codes: Vec<u32> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        for k in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name(), "serde and the table agree");
            assert!(k.c_name().starts_with("ALIKE_ERR_"));
        }
        // Every variant is in the table: a new kind must be given a code.
        let every = |k: ErrorKind| match k {
            ErrorKind::WrongPassphrase
            | ErrorKind::PassphraseRequired
            | ErrorKind::NotAStore
            | ErrorKind::AlreadyExists
            | ErrorKind::NotFound
            | ErrorKind::Corruption
            | ErrorKind::UnsupportedVersion
            | ErrorKind::Cancelled
            | ErrorKind::InvalidArgument
            | ErrorKind::Io
            | ErrorKind::Busy
            | ErrorKind::Other
            | ErrorKind::BadImage
            | ErrorKind::WriteOnlyKey => ErrorKind::ALL.contains(&k),
        };
        assert!(ErrorKind::ALL.iter().all(|k| every(*k)));
        assert_eq!(ErrorKind::ALL.len(), 14);
    }
}
