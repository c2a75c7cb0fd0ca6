//! The error type of `alike-xen`.
//!
//! Rules: every public function of this crate returns [`Error`]. Every
//! variant names the file (or stream label, server, URL or XAPI method) it
//! concerns and, for parse failures, the byte offset and what was wrong — as
//! fields, not prose, so a caller can tell a damaged image from a missing
//! parent or a full disk, and a XAPI refusal (code and parameters kept)
//! from a lost connection. Lower errors are kept whole as `source`. Session
//! ids and passwords never appear in an error: URLs and NBD export names are
//! shown with `session_id=…` hidden.
//!
//! Crossing into the engine: the [`alike_core::DiskSource`] and
//! [`alike_core::DiskTarget`] impls report `SourceRead` / `TargetWrite`
//! (with this error inside the `io::Error`), so the engine never mistakes a
//! failing restore target for damaged stored data; elsewhere
//! `From<Error> for alike_core::Error` keeps this error whole in
//! `alike_core::Error::Seam`, with the kind, retry class and XAPI code this
//! crate gives it ([`alike_core::SeamError`]).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use alike_core::{ErrorKind, Retry};

/// Errors of the Xen adapter: the VHD reader and writers, the NBD client
/// and the XAPI client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
    /// An NBD server broke the protocol, refused an option this client
    /// needs, has no such export, or failed a read.
    #[error("NBD server {server}: {error}")]
    Nbd {
        /// `host:port` of the server.
        server: String,
        /// What happened, as data.
        #[source]
        error: crate::nbd::proto::ProtoError,
    },
    /// A TCP or TLS connection could not be made, or failed or closed
    /// while in use (refused, reset, timed out, ended early).
    #[error("{server}: {during}: {source}")]
    Connection {
        /// `host:port` (or URL, with any session id hidden).
        server: String,
        /// What we were doing ("connecting", "TLS handshake", "reading the reply to 3 reads"…).
        during: String,
        /// Underlying error (`UnexpectedEof` when the peer closed).
        #[source]
        source: io::Error,
    },
    /// The server's TLS certificate is not one of the pinned fingerprints.
    #[error("{server}: TLS certificate has SHA-256 fingerprint {found}, which is not pinned (pinned: {})", expected.join(", "))]
    CertificateMismatch {
        /// `host:port` or URL.
        server: String,
        /// The pinned fingerprints.
        expected: Vec<String>,
        /// The fingerprint of the certificate the server showed.
        found: String,
    },
    /// The TLS settings cannot be used (no certificate in a PEM text, a
    /// malformed fingerprint, an unusable server name).
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// XAPI answered a call with an error (for `Async.*` calls: the task failed).
    #[error("XAPI {method}: {code}{}", params_list(params))]
    Xapi {
        /// The method called (`VM.snapshot`; `task of Async.VM.snapshot` for a failed task).
        method: String,
        /// The XAPI error code (`SESSION_INVALID`, `HANDLE_INVALID`, `VDI_IN_USE`…).
        code: String,
        /// Its parameters, in order.
        params: Vec<String>,
    },
    /// An HTTP exchange with XAPI failed without an HTTP answer
    /// (connection refused or reset, TLS failure, timeout).
    #[error("{url}: {during}{}: {source}", if *.timed_out { " (timed out)" } else { "" })]
    Http {
        /// The URL, with any session id hidden.
        url: String,
        /// What we were doing ("calling VM.snapshot", "exporting VDI …").
        during: String,
        /// Whether a timeout ended it.
        timed_out: bool,
        /// Underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// XAPI answered with an HTTP status other than success.
    #[error("{url}: HTTP {status} while {during}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    HttpStatus {
        /// The URL, with any session id hidden.
        url: String,
        /// What we were doing.
        during: String,
        /// The status code.
        status: u16,
        /// The start of the response body (text, at most 512 characters).
        body: String,
    },
    /// A XAPI reply is not what XAPI sends (not JSON, not JSON-RPC, a
    /// result of the wrong type).
    #[error("XAPI {method}: unexpected reply: {reason}")]
    BadReply {
        /// The method called.
        method: String,
        /// What was wrong.
        reason: String,
    },
    /// A XAPI task did not finish in the time allowed.
    #[error("XAPI task {task} of {method} still pending after {after:?}")]
    TaskTimeout {
        /// The task ref.
        task: String,
        /// The async method that made it.
        method: String,
        /// How long we waited.
        after: Duration,
    },
}

fn params_list(params: &[String]) -> String {
    if params.is_empty() { String::new() } else { format!(" [{}]", params.join(", ")) }
}

fn tried_list(tried: &[PathBuf]) -> String {
    if tried.is_empty() {
        return "nothing (no usable parent locator)".to_owned();
    }
    tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

impl Error {
    /// Whether a retry of the same call may succeed.
    pub fn retry(&self) -> Retry {
        use crate::nbd::proto::ProtoError;
        match self {
            Error::Io { .. } | Error::Read { .. } | Error::Write { .. } | Error::ParentNotFound { .. } => {
                Retry::Unknown
            }
            Error::Source(e) => e.retry(),
            Error::Connection { .. } | Error::Http { .. } | Error::TaskTimeout { .. } => Retry::Transient,
            Error::HttpStatus { status, .. } if *status >= 500 => Retry::Unknown,
            // EIO, ENOMEM, ESHUTDOWN: the server's trouble, maybe passing.
            Error::Nbd { error: ProtoError::Command { errno: 5 | 12 | 108, .. }, .. } => Retry::Transient,
            Error::Xapi { code, .. } => match code.as_str() {
                "SESSION_INVALID" | "OTHER_OPERATION_IN_PROGRESS" | "VDI_IN_USE" | "HOST_IS_SLAVE" => Retry::Transient,
                c if c.starts_with("SR_BACKEND_FAILURE") => Retry::Unknown,
                _ => Retry::Permanent,
            },
            _ => Retry::Permanent,
        }
    }

    /// What kind of failure: a malformed image is `BadImage`; a XAPI
    /// refusal keeps its code ([`Error::xapi_code`]) and its kind says only
    /// what a caller can act on (not found, busy); a pool that cannot be
    /// reached or a transfer cut is `Io`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::Read { .. } | Error::Write { .. } => ErrorKind::Io,
            Error::ParentNotFound { .. } => ErrorKind::NotFound,
            Error::InvalidArgument(_) | Error::TlsSetup(_) => ErrorKind::InvalidArgument,
            Error::Source(c) => c.kind(),
            Error::Xapi { code, .. } => match code.as_str() {
                "HANDLE_INVALID" | "UUID_INVALID" | "VDI_MISSING" => ErrorKind::NotFound,
                "VDI_IN_USE" | "OTHER_OPERATION_IN_PROGRESS" => ErrorKind::Busy,
                _ => ErrorKind::Other,
            },
            Error::Http { .. }
            | Error::HttpStatus { .. }
            | Error::Connection { .. }
            | Error::TaskTimeout { .. }
            | Error::CertificateMismatch { .. }
            | Error::Nbd { .. } => ErrorKind::Io,
            Error::BadReply { .. } => ErrorKind::Other,
            _ => ErrorKind::BadImage,
        }
    }

    /// The XAPI error code, when this is a XAPI error.
    pub fn xapi_code(&self) -> Option<&str> {
        match self {
            Error::Xapi { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The `io::ErrorKind` closest to this error, for wrapping it in an `io::Error`.
    pub(crate) fn io_kind(&self) -> io::ErrorKind {
        match self {
            Error::Io { source, .. } | Error::Read { source, .. } | Error::Write { source, .. } => source.kind(),
            Error::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            Error::ParentNotFound { .. } => io::ErrorKind::NotFound,
            Error::Connection { source, .. } => source.kind(),
            Error::Http { timed_out: true, .. } => io::ErrorKind::TimedOut,
            Error::Http { .. } | Error::HttpStatus { .. } | Error::Xapi { .. } | Error::TaskTimeout { .. } => {
                io::ErrorKind::Other
            }
            Error::Nbd { error: crate::nbd::proto::ProtoError::Command { .. }, .. } => io::ErrorKind::Other,
            Error::CertificateMismatch { .. } => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::InvalidData,
        }
    }

    /// This error inside an `io::Error` (its kind kept), for the seam traits.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(self.io_kind(), self)
    }
}

impl From<Error> for alike_core::Error {
    fn from(e: Error) -> alike_core::Error {
        match e {
            Error::Io { path, source } => alike_core::Error::Io { path, source },
            Error::Source(e) => e,
            e => alike_core::Error::seam(e),
        }
    }
}

impl alike_core::SeamError for Error {
    fn kind(&self) -> ErrorKind {
        self.kind()
    }
    fn retry(&self) -> Retry {
        self.retry()
    }
    fn code(&self) -> Option<&str> {
        self.xapi_code()
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
