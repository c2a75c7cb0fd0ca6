//! The daemon's one error type.
//!
//! Rules: public functions return [`Error`]; an engine error keeps its
//! [`alike::Error`] whole (its kind decides the HTTP status); every variant
//! names what it was about (a file, a store, a destination).

use std::path::{Path, PathBuf};

/// What went wrong in the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file (or a file it names) is wrong.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The configuration file is wrong (the facade's error names the file and key).
    #[error("{0}")]
    Configuration(Box<alike::Error>),
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another daemon holds the database.
    #[error("database {} is in use by another alike serve (lock {} held{})", database.display(), lock.display(), holder.as_deref().map(|h| format!(" by pid {h}")).unwrap_or_default())]
    AlreadyRunning {
        /// The database.
        database: PathBuf,
        /// Its lock file.
        lock: PathBuf,
        /// The pid the lock file names, if it names one.
        holder: Option<String>,
    },
    /// Listening failed (address in use, TLS files wrong).
    #[error("listen on {addr}: {message}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The services (scheduler, history, the stores and pools they opened)
    /// refused or failed.
    #[error("{0}")]
    Services(Box<alike::Error>),
    /// A request named something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A request was malformed or not allowed (a restore outside the
    /// allowed destinations).
    #[error("{0}")]
    BadRequest(String),
    /// The request is well formed but this daemon has no such service
    /// (an engine without jobs).
    #[error("{0}")]
    Unsupported(String),
    /// The engine failed.
    #[error("store {store}: {source}")]
    Engine {
        /// The store it was about.
        store: String,
        /// The engine's error, whole (boxed: it is large).
        source: Box<alike::Error>,
    },
}

/// The daemon's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(path: &Path, message: impl Into<String>) -> Error {
        Error::Config { path: path.to_path_buf(), message: message.into() }
    }
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io { what, path: path.to_path_buf(), source }
    }
    pub(crate) fn engine(store: &str, source: alike::Error) -> Error {
        Error::Engine { store: store.to_string(), source: Box::new(source) }
    }

    /// The HTTP status an API answer carries for this error.
    pub fn status(&self) -> u16 {
        use alike::ErrorKind as K;
        match self {
            Error::NotFound(_) => 404,
            Error::BadRequest(_) => 400,
            Error::Unsupported(_) => 501,
            Error::Engine { source, .. } | Error::Services(source) => match source.kind() {
                K::NotFound => 404,
                K::InvalidArgument | K::AlreadyExists => 400,
                K::Busy => 409,
                K::Cancelled => 409,
                _ => 500,
            },
            _ => 500,
        }
    }
}
