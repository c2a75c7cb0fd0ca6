//! The error type of `alike-xen`.
//!
//! Rules: every public function of this crate returns [`Error`]. Every
//! variant names the file (or stream label, server, URL or XAPI method) it
//! concerns and what was wrong — as fields, not prose, so a caller can tell
//! a damaged export (the format's own error, `VhdError`, kept whole) from a
//! full disk, and a XAPI refusal (code and parameters kept) from a lost
//! connection. Lower errors are kept whole as `source`. Session
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
use alike_formats::vhd::VhdError;

/// Errors of the Xen adapter: the NBD client, the XAPI client, and the VHD
/// exports and uploads they move.
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
    /// A caller passed something unusable (a write past the disk's end, a bad option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The disk source a writer copies from failed.
    #[error("reading the source disk: {0}")]
    Source(#[source] alike_core::Error),
    /// A VHD (an export, an upload) is malformed or cannot be written; its
    /// I/O, argument and source failures arrive as [`Error::Read`],
    /// [`Error::Write`], [`Error::Io`], [`Error::InvalidArgument`] and
    /// [`Error::Source`] instead (see `From<VhdError>`).
    #[error(transparent)]
    Vhd(VhdError),
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
    /// The server's TLS certificate is not trusted (self-signed, an unknown
    /// issuer, a wrong name, expired), with no fingerprint pinned.
    #[error(
        "{server}: TLS certificate not trusted ({reason}){}",
        match .fingerprint {
            Some(fp) => format!("; it has SHA-256 fingerprint {fp}: if the pool shows the same (`openssl x509 -noout -fingerprint -sha256 -in /etc/xensource/xapi-ssl.pem`), pin it with --fingerprint"),
            None => "; pin the pool's certificate by its SHA-256 fingerprint (`--fingerprint`)".into(),
        }
    )]
    CertificateUntrusted {
        /// `host:port` or URL.
        server: String,
        /// Why the verifier refused it.
        reason: String,
        /// The fingerprint of the certificate the server showed, when seen.
        fingerprint: Option<String>,
    },
    /// A XAPI reply was larger than the client accepts
    /// ([`crate::xapi::ClientBuilder::max_reply_bytes`]).
    #[error(
        "XAPI {method}: the reply from {url} is larger than {limit} bytes, the most this client reads (ClientBuilder::max_reply_bytes)"
    )]
    ReplyTooLarge {
        /// The URL.
        url: String,
        /// The method called.
        method: String,
        /// The limit.
        limit: u64,
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

impl Error {
    /// Whether a retry of the same call may succeed.
    pub fn retry(&self) -> Retry {
        use crate::nbd::proto::ProtoError;
        match self {
            Error::Io { .. } | Error::Read { .. } | Error::Write { .. } => Retry::Unknown,
            Error::Source(e) => e.retry(),
            Error::Vhd(e) => e.retry(),
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
            | Error::CertificateUntrusted { .. }
            | Error::ReplyTooLarge { .. }
            | Error::Nbd { .. } => ErrorKind::Io,
            Error::BadReply { .. } => ErrorKind::Other,
            Error::Vhd(e) => e.kind(),
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
            Error::Vhd(e) => e.io_kind(),
            Error::Connection { source, .. } => source.kind(),
            Error::Http { timed_out: true, .. } => io::ErrorKind::TimedOut,
            Error::Http { .. } | Error::HttpStatus { .. } | Error::Xapi { .. } | Error::TaskTimeout { .. } => {
                io::ErrorKind::Other
            }
            Error::Nbd { error: crate::nbd::proto::ProtoError::Command { .. }, .. } => io::ErrorKind::Other,
            Error::CertificateMismatch { .. } | Error::CertificateUntrusted { .. } => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::InvalidData,
        }
    }

    /// This error inside an `io::Error` (its kind kept), for the seam traits.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(self.io_kind(), self)
    }
}

/// The VHD errors this crate's own variants already say (I/O, arguments,
/// the source disk) become those, so a caller matches them in one place
/// whatever layer failed; format errors stay whole in [`Error::Vhd`].
impl From<VhdError> for Error {
    fn from(e: VhdError) -> Error {
        match e {
            VhdError::Io { path, source } => Error::Io { path, source },
            VhdError::Read { file, offset, len, source } => Error::Read { file, offset, len, source },
            VhdError::Write { file, offset, source } => Error::Write { file, offset, source },
            VhdError::InvalidArgument(reason) => Error::InvalidArgument(reason),
            VhdError::Source(e) => Error::Source(e),
            e => Error::Vhd(e),
        }
    }
}

impl From<Error> for alike_core::Error {
    fn from(e: Error) -> alike_core::Error {
        match e {
            Error::Io { path, source } => alike_core::Error::Io { path, source },
            Error::Source(e) => e,
            Error::Vhd(e) => e.into(),
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
