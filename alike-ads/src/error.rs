//! The error type of `alike-ads`.
//!
//! Rules: public functions return [`Error`]; every variant names the object
//! (store-relative key) or path it concerns — for object storage, the full
//! URL and the operation that failed. When an error crosses the
//! `ChunkStore` seam it travels boxed inside `alike_core::Error::Seam`, with
//! the kind and retry class this crate gives it ([`alike_core::SeamError`]). The object-storage client's own error is
//! kept as the `source`, never flattened to a string; whether retrying might
//! help is on the error ([`Error::retry`]).

use std::path::PathBuf;

use alike_core::ErrorKind;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The location holds no store (no `config` object).
    #[error("no alike store at {location} (no config object; create one with `init`)")]
    NotAStore {
        /// Where we looked.
        location: String,
    },
    /// `create` found a store already there.
    #[error("{location} already holds a store")]
    AlreadyExists {
        /// Where.
        location: String,
    },
    /// `create` found a folder that holds something other than a store.
    #[error(
        "{location} is not empty and holds no store (no config object): it holds {holds}; create the store in an empty folder"
    )]
    NotEmpty {
        /// Where.
        location: String,
        /// A few of the names found there, and how many in all.
        holds: String,
    },
    /// A file the store would write (an exported key file) already exists:
    /// it is never overwritten.
    #[error("{path} already exists: refusing to overwrite it with a {what}")]
    FileExists {
        /// The file.
        path: PathBuf,
        /// What would have been written.
        what: &'static str,
    },
    /// An object does not start with the magic its kind must have. For
    /// secret-bearing kinds (key objects, key files) `found` is empty: a
    /// passphrase file given by mistake must not end up in a log.
    #[error("{object} is not an alike {kind} object{}", shown_magic(.found))]
    BadMagic {
        /// Object key.
        object: String,
        /// Expected kind.
        kind: &'static str,
        /// Hex of the first bytes found; empty for secret-bearing kinds.
        found: String,
    },
    /// An object was written by a newer format than this build knows.
    #[error("{object} has format version {version}, newer than this build supports ({known}); upgrade alike")]
    UnsupportedVersion {
        /// Object key.
        object: String,
        /// Version found.
        version: u32,
        /// Newest version known.
        known: u32,
    },
    /// An object has an old format version that needs migrating.
    #[error("{object} has format version {version}, which must be upgraded first")]
    UpgradeRequired {
        /// Object key.
        object: String,
        /// Version found.
        version: u32,
    },
    /// An object's bytes are damaged or inconsistent.
    #[error("{object} is corrupt: {reason}")]
    Corrupt {
        /// Object key.
        object: String,
        /// What check failed.
        reason: String,
    },
    /// An object is shorter than its structure says.
    #[error("{object} is truncated: wanted {wanted} bytes at offset {offset}, found {got}")]
    Truncated {
        /// Object key.
        object: String,
        /// Offset of the read.
        offset: u64,
        /// Bytes wanted.
        wanted: u64,
        /// Bytes available.
        got: u64,
    },
    /// An object that should exist does not.
    #[error("{object} not found in the store")]
    NotFound {
        /// Object key.
        object: String,
    },
    /// The store is encrypted and no passphrase or key file was given.
    #[error("the store at {location} is encrypted: give a passphrase or key file")]
    PassphraseRequired {
        /// Store location.
        location: String,
    },
    /// An I/O error on a store object or local file.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The local index cache failed.
    #[error("local index cache {path}: {reason}")]
    Cache {
        /// Cache file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Another process holds a lock that excludes this operation.
    #[error(
        "the store is locked by {holder} ({lock}); if that process is gone the lock is cleared automatically once stale"
    )]
    Locked {
        /// The lock object.
        lock: String,
        /// Who holds it.
        holder: String,
    },
    /// A request to object storage failed. Transient failures (5xx,
    /// timeouts, dropped connections) were already retried with backoff
    /// before this is returned.
    #[error("object storage: {op} {url} failed: {source}")]
    Remote {
        /// What was attempted (`get`, `put`, `list`, `multipart upload`…).
        op: &'static str,
        /// The object (or prefix) URL, without credentials.
        url: String,
        /// Whether a later retry might succeed.
        retry: Retry,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A store location (URL) or its options cannot be used: unknown scheme,
    /// a backend not built in (cargo feature), a bad option.
    #[error("store location {location}: {reason}")]
    BadLocation {
        /// The location as given (credentials removed).
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The store refused a write: no permission, or a write-once (WORM)
    /// bucket (HTTP 401/403).
    #[error("{object}: the store refused to {op}: {reason}")]
    Refused {
        /// What was attempted.
        op: &'static str,
        /// The object or URL.
        object: String,
        /// What the store said.
        reason: String,
    },
    /// A bad argument (block size, version id…).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An engine error (crypto, blob checks).
    #[error(transparent)]
    Core(#[from] alike_core::Error),
}

impl From<Error> for alike_core::Error {
    fn from(e: Error) -> alike_core::Error {
        match e {
            Error::Core(c) => c,
            other => alike_core::Error::seam(other),
        }
    }
}

pub use alike_core::Retry;

impl alike_core::SeamError for Error {
    fn kind(&self) -> ErrorKind {
        self.kind()
    }
    fn retry(&self) -> Retry {
        self.retry()
    }
}

impl Error {
    /// Whether the store refused a write because it is read-only to us: a
    /// read-only filesystem or share, no permission, a write-once bucket.
    /// Read-only operations go on without their lock when this is why.
    pub fn is_write_refused(&self) -> bool {
        match self {
            Error::Refused { .. } => true,
            Error::Io { source, .. } => {
                matches!(source.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem)
                    || matches!(source.raw_os_error(), Some(30 | 13 | 1))
            }
            _ => false,
        }
    }

    /// What kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotAStore { .. } => ErrorKind::NotAStore,
            Error::AlreadyExists { .. } | Error::NotEmpty { .. } | Error::FileExists { .. } => ErrorKind::AlreadyExists,
            Error::BadMagic { .. } | Error::Corrupt { .. } | Error::Truncated { .. } => ErrorKind::Corruption,
            Error::UnsupportedVersion { .. } | Error::UpgradeRequired { .. } => ErrorKind::UnsupportedVersion,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::PassphraseRequired { .. } => ErrorKind::PassphraseRequired,
            Error::Io { .. } | Error::Cache { .. } | Error::Remote { .. } => ErrorKind::Io,
            Error::InvalidArgument(_) | Error::BadLocation { .. } => ErrorKind::InvalidArgument,
            Error::Locked { .. } => ErrorKind::Busy,
            Error::Refused { .. } => ErrorKind::Io,
            Error::Core(c) => c.kind(),
        }
    }

    /// Whether retrying the operation later might succeed.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Remote { retry, .. } => *retry,
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::WouldBlock => Retry::Transient,
                _ => Retry::Unknown,
            },
            Error::Locked { .. } => Retry::Transient,
            Error::Core(c) => c.retry(),
            Error::Cache { .. } => Retry::Unknown,
            _ => Retry::Permanent,
        }
    }
}

fn shown_magic(found: &str) -> String {
    if found.is_empty() { String::new() } else { format!(" (bad magic {found})") }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
