//! The simulator's errors (its own API and its binary; a WS-Man client
//! sees SOAP faults and WMI return values instead).

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or folder of the state directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A VHDX/AVHDX file could not be written or read.
    #[error("disk file {file}: {reason}")]
    Disk {
        /// The file.
        file: PathBuf,
        /// What the VHDX code said.
        reason: String,
    },
    /// A VM, disk or range the test API named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A listener could not be bound.
    #[error("{what}: {source}")]
    Net {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Samba server could not be set up or started.
    #[error("smbd: {0}")]
    Smb(String),
    /// The HTTPS certificate or configuration.
    #[error("TLS: {0}")]
    Tls(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// The simulator's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
