//! The error type of the replication engine.
//!
//! Rules: every public function returns [`ReplicateError`]. A failure of a
//! lower crate is kept whole — the protocol's [`alike_repl::Error`] (what
//! the peer did, or the link), a replica target's [`ReplicaError`], a disk
//! source's or the engine's [`alike_core::Error`]; what the engine itself
//! finds wrong names the disk, file or value. [`ReplicateError`]
//! implements [`SeamError`], so it keeps its kind and retry class across
//! seams ([`alike_core::Error::Seam`]).

use std::path::PathBuf;

use alike_core::{ErrorKind, Retry, SeamError};
use alike_replica::ReplicaError;

/// Errors of a replication run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicateError {
    /// The session failed: the link, the peer, or the protocol.
    #[error(transparent)]
    Protocol(alike_repl::Error),
    /// The replica could not be read or written.
    #[error(transparent)]
    Replica(ReplicaError),
    /// A source could not be read, or the run was cancelled.
    #[error(transparent)]
    Core(alike_core::Error),
    /// The two ends do not describe the same replica (another VM, other
    /// disks, another chunking).
    #[error("{0}")]
    Mismatch(String),
    /// A bad argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The sender's state file is damaged (it is ignored and rewritten:
    /// the next run reads everything once).
    #[error("{file}: {reason}")]
    State {
        /// The file.
        file: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// No connection to the peer could be made, or none came, in time.
    #[error("{0}")]
    Connect(String),
    /// The engine's reader thread failed or could not start.
    #[error("the reader thread: {0}")]
    Thread(String),
}

/// Result alias of this crate.
pub type Result<T, E = ReplicateError> = std::result::Result<T, E>;

impl From<alike_repl::Error> for ReplicateError {
    fn from(e: alike_repl::Error) -> Self {
        ReplicateError::Protocol(e)
    }
}

impl From<ReplicaError> for ReplicateError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::Core(c) => ReplicateError::Core(c),
            e => ReplicateError::Replica(e),
        }
    }
}

impl From<alike_core::Error> for ReplicateError {
    fn from(e: alike_core::Error) -> Self {
        ReplicateError::Core(e)
    }
}

impl ReplicateError {
    /// The code to tell the peer when this end gives up with this error.
    pub(crate) fn wire_code(&self) -> u16 {
        match self {
            ReplicateError::Core(alike_core::Error::Cancelled) => alike_repl::wire::ERR_CANCELLED,
            ReplicateError::Protocol(p) => p.wire_code(),
            ReplicateError::Mismatch(_) => alike_repl::wire::ERR_JOB,
            _ => alike_repl::wire::ERR_ENGINE,
        }
    }

    /// Whether the run was cancelled (here, or by the peer).
    pub fn is_cancelled(&self) -> bool {
        use alike_repl::Error as P;
        matches!(
            self,
            ReplicateError::Core(alike_core::Error::Cancelled)
                | ReplicateError::Protocol(P::Peer { code: alike_repl::wire::ERR_CANCELLED, .. })
                | ReplicateError::Protocol(P::Aborted { code: alike_repl::wire::ERR_CANCELLED, .. })
        )
    }
}

impl SeamError for ReplicateError {
    fn kind(&self) -> ErrorKind {
        use alike_repl::Error as P;
        if self.is_cancelled() {
            return ErrorKind::Cancelled;
        }
        match self {
            ReplicateError::Protocol(p) => match p {
                // A peer without the job's secret: a wrong shared secret.
                P::Authentication { .. } => ErrorKind::WrongPassphrase,
                P::Integrity { .. } | P::DigestMismatch { .. } | P::ExtentId { .. } => ErrorKind::Corruption,
                P::VersionMismatch { .. } => ErrorKind::UnsupportedVersion,
                P::JobMismatch { .. } | P::RoleMismatch { .. } | P::Usage(_) => ErrorKind::InvalidArgument,
                P::ConnectionLost { .. } | P::Io { .. } => ErrorKind::Io,
                _ => ErrorKind::Other,
            },
            ReplicateError::Replica(r) => r.kind(),
            ReplicateError::Core(c) => c.kind(),
            ReplicateError::Mismatch(_) | ReplicateError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ReplicateError::State { .. } => ErrorKind::Corruption,
            ReplicateError::Connect(_) => ErrorKind::Io,
            ReplicateError::Thread(_) => ErrorKind::Other,
        }
    }

    fn retry(&self) -> Retry {
        match self {
            ReplicateError::Protocol(p) if p.is_transient() => Retry::Transient,
            ReplicateError::Protocol(alike_repl::Error::Peer { code: alike_repl::wire::ERR_ENGINE, .. }) => {
                Retry::Unknown
            }
            ReplicateError::Replica(r) => r.retry(),
            ReplicateError::Core(c) => c.retry(),
            ReplicateError::Connect(_) => Retry::Transient,
            ReplicateError::Thread(_) => Retry::Unknown,
            _ => Retry::Permanent,
        }
    }
}

impl From<ReplicateError> for alike_core::Error {
    fn from(e: ReplicateError) -> alike_core::Error {
        match e {
            ReplicateError::Core(c) => c,
            e => alike_core::Error::seam(e),
        }
    }
}
