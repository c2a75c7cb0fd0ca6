//! The error type of `alike-xen-sim`.
//!
//! Rules: every public function returns [`Error`]. An XAPI failure that a
//! client would see on the wire (`HANDLE_INVALID`, `VDI_IN_USE`, …) is the
//! [`Error::Api`] variant, with XAPI's code and parameters as data, so the
//! library's own test API and the RPC front-ends share one path; every
//! other variant is the simulator failing (I/O on its state directory,
//! TLS setup, a VHD it could not write), keeping the lower error whole.

use std::io;
use std::path::PathBuf;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An XAPI failure, as XAPI would report it: `code` then `params`
    /// (XML-RPC `ErrorDescription`, JSON-RPC `error`).
    #[error("XAPI failure {code} {params:?}")]
    Api {
        /// The XAPI error code, e.g. `HANDLE_INVALID`.
        code: String,
        /// Its parameters.
        params: Vec<String>,
    },
    /// A file in the state directory could not be created, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// A listener could not be bound or a socket failed outside a request.
    #[error("{what}: {source}")]
    Net {
        /// What was being done.
        what: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The TLS certificate or configuration could not be made.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Writing or reading a VHD stream failed.
    #[error(transparent)]
    Vhd(#[from] alike_formats::vhd::VhdError),
    /// The state file is damaged or from an unknown version.
    #[error("state file {}: {reason}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An XAPI failure with `code` and `params`.
    pub fn api<S: ToString>(code: &str, params: impl IntoIterator<Item = S>) -> Error {
        Error::Api { code: code.to_owned(), params: params.into_iter().map(|p| p.to_string()).collect() }
    }

    /// The XAPI code, if this is an XAPI failure.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// This error as an XAPI error description: an [`Error::Api`] as it is,
    /// anything else as `INTERNAL_ERROR [message]`.
    pub fn to_xapi(&self) -> (String, Vec<String>) {
        match self {
            Error::Api { code, params } => (code.clone(), params.clone()),
            other => ("INTERNAL_ERROR".to_owned(), vec![other.to_string()]),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// `SR_BACKEND_FAILURE_<n>` as XAPI reports a storage-manager error:
    /// parameters `["", "<description> [opterr=<detail>]", ""]`.
    pub(crate) fn sm(code: u32, description: &str, opterr: &str) -> Error {
        Error::api(&format!("SR_BACKEND_FAILURE_{code}"), ["", &format!("{description} [opterr={opterr}]"), ""])
    }
}
