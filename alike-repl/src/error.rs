//! The error type of `alike-repl`.
//!
//! Rules: every public function returns [`Error`]. What the peer did wrong
//! is data (variants with disks, offsets, versions, codes), never a bare
//! string of our own. A state machine that returns an error other than
//! [`Error::Usage`] has failed for good: it has queued an error message for
//! the peer where the channel allows (drain [`crate::Endpoint::poll_transmit`]
//! once more), and every later input gives the same error back. A
//! [`Error::Usage`] error is the caller's mistake and changes nothing.

use crate::wire::{self, Role};

/// What went wrong in a replication session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer's first bytes are not a replication preamble: something
    /// else listens on that port, or this end dialled the wrong one.
    #[error("the peer is not an alike replication end: its first bytes are {got} (hex)")]
    NotAlike {
        /// The 8 bytes where the magic should be, in hex.
        got: String,
    },
    /// The peer speaks another version of the protocol.
    #[error("the peer speaks replication protocol version {theirs}; this end speaks version {ours}")]
    VersionMismatch {
        /// Ours ([`wire::VERSION`]).
        ours: u32,
        /// The peer's.
        theirs: u32,
    },
    /// A handshake message failed authentication: the peer does not hold
    /// this job's secret, or the bytes were altered on the way.
    #[error(
        "authentication failed in the handshake ({phase}): the peer does not hold this job's secret, or the bytes were altered"
    )]
    Authentication {
        /// Which handshake message.
        phase: &'static str,
    },
    /// A record failed authentication after the handshake: corrupted,
    /// replayed, injected, reordered or cut bytes. Nothing of it was used.
    #[error(
        "record {record} from the peer failed authentication (corrupted, replayed, injected or reordered bytes); nothing of it was used"
    )]
    Integrity {
        /// Its number among the peer's transport records, from 0.
        record: u64,
    },
    /// The peer broke the protocol.
    #[error("protocol violation in {what}: {reason}")]
    Violation {
        /// Where (a message name, "record", "handshake"…).
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The ends run different jobs.
    #[error("the peer runs job {theirs:?}; this end runs job {ours:?}")]
    JobMismatch {
        /// Ours.
        ours: String,
        /// The peer's.
        theirs: String,
    },
    /// Both ends play the same role.
    #[error("both ends are {role}s")]
    RoleMismatch {
        /// The role both play.
        role: Role,
    },
    /// A disk's digest differs between the ends: the replica's base is not
    /// the point the sender worked from, or its record is damaged. The point
    /// is not committed.
    #[error("disk {disk}: the sender's digest {} differs from the replica's {}", hex(.theirs), hex(.ours))]
    DigestMismatch {
        /// The disk.
        disk: u32,
        /// The replica's digest (what the receiver computed).
        ours: [u8; 32],
        /// The sender's.
        theirs: [u8; 32],
    },
    /// Data did not hash to the id of its extent.
    #[error("disk {disk}: the {len} bytes at {offset} do not hash to the id the sender offered")]
    ExtentId {
        /// The disk.
        disk: u32,
        /// The extent's offset.
        offset: u64,
        /// Its length.
        len: u32,
    },
    /// The peer failed and said why.
    #[error("the peer failed: {} ({code}): {message}", wire::error_code_name(*.code))]
    Peer {
        /// Its error code (`wire::ERR_*`).
        code: u16,
        /// Its text.
        message: String,
    },
    /// The connection ended before the session did.
    #[error("the connection was lost {phase}")]
    ConnectionLost {
        /// When ("during the handshake", "before the commit was acknowledged"…).
        phase: &'static str,
    },
    /// This end gave up (the engine called `abort`).
    #[error("aborted: {} ({code}): {message}", wire::error_code_name(*.code))]
    Aborted {
        /// The code sent to the peer.
        code: u16,
        /// The text sent to the peer.
        message: String,
    },
    /// The caller broke a rule of the API (a call out of order, an extent
    /// the geometry does not allow…). Nothing changed.
    #[error("invalid call: {0}")]
    Usage(String),
    /// A socket failed (the TCP shell only).
    #[error("{what}: {message}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The I/O error kind.
        kind: std::io::ErrorKind,
        /// The I/O error's text.
        message: String,
    },
}

impl Error {
    /// The code to send the peer for this failure of ours.
    pub fn wire_code(&self) -> u16 {
        match self {
            Error::Integrity { .. } | Error::Authentication { .. } => wire::ERR_INTEGRITY,
            Error::JobMismatch { .. } => wire::ERR_JOB,
            Error::RoleMismatch { .. } => wire::ERR_ROLE,
            Error::DigestMismatch { .. } => wire::ERR_DIGEST,
            Error::ExtentId { .. } => wire::ERR_EXTENT_ID,
            Error::Aborted { code, .. } | Error::Peer { code, .. } => *code,
            Error::Io { .. } | Error::ConnectionLost { .. } => wire::ERR_ENGINE,
            _ => wire::ERR_PROTOCOL,
        }
    }

    /// Whether running the session again may succeed as it is: a lost
    /// connection or a failed socket. Everything else (a wrong secret,
    /// another version, a digest mismatch, a broken peer) fails the same way
    /// until someone changes something.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::ConnectionLost { .. } | Error::Io { .. } | Error::Integrity { .. })
    }

    pub(crate) fn io(what: &'static str, e: &std::io::Error) -> Error {
        Error::Io { what, kind: e.kind(), message: e.to_string() }
    }
}

/// Lower-case hex.
pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}
