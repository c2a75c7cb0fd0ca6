//! The error type of `alike-hyperv`.
//!
//! Rules: every public function returns [`Error`]; each variant names what
//! it concerns (the endpoint, the WS-Man action or WMI method, the job) as
//! fields, so a caller can tell a refused login from a lost connection, a
//! SOAP fault from a method's failure code, and a failed job (its own error
//! text kept) from a job that never ended. Passwords never appear in an
//! error. Crossing a seam, [`alike_core::SeamError`] gives each its kind and
//! retry class.

use std::time::Duration;

use alike_core::{ErrorKind, Retry};

pub use crate::wsman::ntlm::NtlmError;

/// Errors of the Hyper-V adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A caller passed something unusable (a bad URL, an option out of range).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The HTTPS server's certificate was refused: not the pinned one, or
    /// not trusted by the CA file.
    #[error("{endpoint}: the server's certificate (SHA-256 {fingerprint}) was refused: {why}")]
    Certificate {
        /// The WS-Man endpoint.
        endpoint: String,
        /// The refused certificate's fingerprint (check it, then pin it).
        fingerprint: String,
        /// Why.
        why: String,
    },
    /// No such object on the host (a virtual switch, a VM).
    #[error("not found: {0}")]
    NotFound(String),
    /// The host could not be reached, or the connection failed mid-request.
    #[error("{endpoint}: {what}: {source}")]
    Network {
        /// The WS-Man endpoint.
        endpoint: String,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The host refused the credentials (HTTP 401 after NTLM).
    #[error("{endpoint}: the host refused the credentials of {user}")]
    AuthenticationFailed {
        /// The WS-Man endpoint.
        endpoint: String,
        /// The user name (never the password).
        user: String,
    },
    /// NTLM failed (a malformed challenge, a message that does not verify).
    #[error("{endpoint}: NTLM: {source}")]
    Ntlm {
        /// The WS-Man endpoint.
        endpoint: String,
        /// What NTLM said.
        #[source]
        source: NtlmError,
    },
    /// An HTTP answer that is not WS-Man (a status without a SOAP body).
    #[error("{endpoint}: HTTP {status} to {action}")]
    Http {
        /// The WS-Man endpoint.
        endpoint: String,
        /// The request's action.
        action: String,
        /// The HTTP status.
        status: u16,
    },
    /// A reply that is not what WS-Management says it must be.
    #[error("{endpoint}: malformed reply to {action}: {what}")]
    Protocol {
        /// The WS-Man endpoint.
        endpoint: String,
        /// The request's action.
        action: String,
        /// What was wrong.
        what: String,
    },
    /// The host answered with a SOAP fault.
    #[error("{action}: WS-Man fault {subcode}: {reason}{}{}", .wsman_code.map(|c| format!(" [WSManFault {c}]")).unwrap_or_default(), .wmi_code.map(|c| format!(" [WMI 0x{c:08x}]")).unwrap_or_default())]
    Fault {
        /// The request's action.
        action: String,
        /// The fault's subcode (`w:InvalidSelectors`…).
        subcode: String,
        /// The reason text.
        reason: String,
        /// Windows' WSManFault code.
        wsman_code: Option<u32>,
        /// The WMI HRESULT (`0x80041002` not found…).
        wmi_code: Option<u32>,
    },
    /// A WMI method returned a failure code.
    #[error("{class}.{method} returned {code} ({})", crate::wsman::return_value_meaning(*.code))]
    Method {
        /// The class.
        class: String,
        /// The method.
        method: String,
        /// Its `ReturnValue`.
        code: u32,
    },
    /// A job a method started ended in failure.
    #[error("{method}: job {job} ended in state {state}: {description} (error code {code})")]
    Job {
        /// The method that started it.
        method: String,
        /// The job's `InstanceID`.
        job: String,
        /// Its final `JobState`.
        state: u16,
        /// Its `ErrorCode`.
        code: u32,
        /// Its `ErrorDescription` (or `ErrorSummaryDescription`).
        description: String,
    },
    /// A job did not end in time.
    #[error("{method}: job {job} still running after {waited:?}")]
    JobTimeout {
        /// The method that started it.
        method: String,
        /// The job's `InstanceID`.
        job: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A disk's VHDX/AVHDX chain could not be opened or read.
    #[error("disk {disk}: {source}")]
    Disk {
        /// The disk's file as the host names it.
        disk: String,
        /// What the VHDX reader said.
        #[source]
        source: crate::vhdx::VhdxError,
    },
}

/// `alike-hyperv`'s result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl alike_core::SeamError for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Network { .. } => ErrorKind::Io,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Certificate { .. } => ErrorKind::Io,
            Error::Fault { wmi_code: Some(0x8004_1002), .. } => ErrorKind::NotFound,
            _ => ErrorKind::Other,
        }
    }

    fn retry(&self) -> Retry {
        match self {
            Error::Network { .. } | Error::JobTimeout { .. } => Retry::Transient,
            Error::InvalidArgument(_)
            | Error::NotFound(_)
            | Error::Certificate { .. }
            | Error::AuthenticationFailed { .. }
            | Error::Cancelled => Retry::Permanent,
            _ => Retry::Unknown,
        }
    }
}
