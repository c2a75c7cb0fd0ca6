//! The crate's one error type.
//!
//! Rules: every public function of [`crate::ssh`] returns [`RemoteError`].
//! Each variant names the host and port (and the file, command or job) it
//! is about, keeps the underlying error as its source, and classifies
//! itself: [`RemoteError::kind`], [`RemoteError::retry`] and a stable
//! [`RemoteError::code`] (`HOST_KEY_CHANGED`, `AUTH_FAILED`…) that callers
//! and front-ends can branch on. A job the worker reported as failed keeps
//! the worker's kind, retry class and code. No message ever holds a secret.

use std::path::PathBuf;
use std::time::Duration;

use alike_core::{ErrorKind, Retry};

use crate::protocol::{Failure, ProtocolError};

/// Errors of connecting to a host, running a command there, and running a
/// job on a processor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// A bad argument (a malformed host, fingerprint or option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The host's name did not resolve, or no address answered.
    #[error("cannot connect to {host} port {port}: {source}")]
    Connect {
        /// The host as given.
        host: String,
        /// The port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// A step did not finish in time.
    #[error("{host} port {port}: {what} did not finish within {after:?}{hint}")]
    Timeout {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// What was being waited for (`TCP connect`, `SSH handshake`…).
        what: &'static str,
        /// The limit.
        after: Duration,
        /// A hint for a person (may be empty).
        hint: &'static str,
    },
    /// The host presented a key the policy does not know: refused.
    #[error(
        "host key of {host} port {port} is unknown: it presented {presented}, and {source_of_keys} pins no key for it; \
         refusing to connect (add the host's key there after checking it out of band)"
    )]
    HostKeyUnknown {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The presented key's fingerprint (`SHA256:…`) and type.
        presented: String,
        /// Where pinned keys come from (`known_hosts file /x`, `the job's fingerprints`).
        source_of_keys: String,
    },
    /// The host presented a key other than the pinned one(s): refused.
    #[error(
        "HOST KEY CHANGED for {host} port {port}: it presented {presented}, but {source_of_keys} pins {}; \
         refusing to connect (someone may be impersonating the host, or its key was replaced)",
        pinned.join(", ")
    )]
    HostKeyChanged {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The presented key's fingerprint and type.
        presented: String,
        /// The pinned keys' fingerprints (and types, where known).
        pinned: Vec<String>,
        /// Where they come from.
        source_of_keys: String,
    },
    /// The presented key is marked `@revoked` in the known_hosts file.
    #[error("host key of {host} port {port} ({presented}) is marked @revoked in {source_of_keys}: refusing to connect")]
    HostKeyRevoked {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The presented key's fingerprint and type.
        presented: String,
        /// The file.
        source_of_keys: String,
    },
    /// The known_hosts file cannot be read or has a malformed line.
    #[error("known_hosts file {}{}: {reason}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// The line (from 1), when one is at fault.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// The client's private key cannot be read or decrypted.
    #[error("SSH key {}: {reason}", path.display())]
    ClientKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never the passphrase).
        reason: String,
    },
    /// The host refused the key.
    #[error(
        "{host} port {port} refused public-key authentication of user {user:?} with key {key_fingerprint} \
         (methods it would accept: {remaining})"
    )]
    AuthFailed {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The user.
        user: String,
        /// The client key's fingerprint.
        key_fingerprint: String,
        /// The methods the server still offers.
        remaining: String,
    },
    /// The SSH session failed (the handshake, a channel, the connection).
    #[error("{host} port {port}: {what}: {source}")]
    Ssh {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// What was being done.
        what: &'static str,
        /// russh's error.
        source: russh::Error,
    },
    /// The remote command ended without giving a result.
    #[error(
        "{host}: `{command}` ended ({}) before {expected}{}",
        exit_text(*status, signal.as_deref()),
        if stderr.is_empty() { String::new() } else { format!("; its stderr ends: {stderr}") }
    )]
    Exited {
        /// The host.
        host: String,
        /// The command.
        command: String,
        /// Its exit status, when it sent one.
        status: Option<u32>,
        /// The signal that ended it, when one did.
        signal: Option<String>,
        /// What was still expected (`its hello`, `a result`).
        expected: &'static str,
        /// The end of its standard error (bounded).
        stderr: String,
    },
    /// The worker broke the processor protocol (or speaks another version).
    #[error("{host}: {source}")]
    Protocol {
        /// The host.
        host: String,
        /// What is wrong.
        source: ProtocolError,
    },
    /// The job ran and failed on the processor.
    #[error("{job} job {id} on {host} failed: {}", failure.message)]
    Job {
        /// The host.
        host: String,
        /// The job's kind.
        job: String,
        /// The job's id.
        id: String,
        /// The worker's report.
        failure: Box<Failure>,
    },
    /// The job was cancelled.
    #[error("the {job} job on {host} was cancelled")]
    Cancelled {
        /// The host.
        host: String,
        /// The job's kind.
        job: String,
    },
}

fn exit_text(status: Option<u32>, signal: Option<&str>) -> String {
    match (status, signal) {
        (_, Some(s)) => format!("killed by signal {s}"),
        (Some(127), None) => "exit status 127: command not found".into(),
        (Some(s), None) => format!("exit status {s}"),
        (None, None) => "the channel closed".into(),
    }
}

impl RemoteError {
    /// What kind of failure. Connection and host-key failures are `Io` and
    /// `Other` (the code tells them apart); a failed job keeps the kind the
    /// worker gave it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RemoteError::InvalidArgument(_) | RemoteError::ClientKey { .. } | RemoteError::KnownHosts { .. } => {
                ErrorKind::InvalidArgument
            }
            RemoteError::Connect { .. }
            | RemoteError::Timeout { .. }
            | RemoteError::Ssh { .. }
            | RemoteError::Exited { .. } => ErrorKind::Io,
            RemoteError::HostKeyUnknown { .. }
            | RemoteError::HostKeyChanged { .. }
            | RemoteError::HostKeyRevoked { .. }
            | RemoteError::AuthFailed { .. } => ErrorKind::Other,
            RemoteError::Protocol { source, .. } => alike_core::SeamError::kind(source),
            RemoteError::Job { failure, .. } => {
                ErrorKind::ALL.iter().copied().find(|k| k.name() == failure.kind).unwrap_or(ErrorKind::Other)
            }
            RemoteError::Cancelled { .. } => ErrorKind::Cancelled,
        }
    }

    /// Whether a retry of the same call may succeed.
    pub fn retry(&self) -> Retry {
        match self {
            RemoteError::Connect { .. } | RemoteError::Timeout { .. } => Retry::Transient,
            RemoteError::Ssh { .. } | RemoteError::Exited { .. } => Retry::Unknown,
            RemoteError::Job { failure, .. } => match failure.retry.as_str() {
                "transient" => Retry::Transient,
                "permanent" => Retry::Permanent,
                _ => Retry::Unknown,
            },
            _ => Retry::Permanent,
        }
    }

    /// A stable code for the failure, for callers that branch on it:
    /// `CONNECT_FAILED`, `TIMEOUT`, `HOST_KEY_UNKNOWN`, `HOST_KEY_CHANGED`,
    /// `HOST_KEY_REVOKED`, `AUTH_FAILED`, `SSH_FAILED`, `PROCESSOR_EXITED`,
    /// `PROTOCOL_VERSION`, `PROTOCOL_ERROR`; a failed job's own code, if the
    /// worker gave one.
    pub fn code(&self) -> Option<&str> {
        Some(match self {
            RemoteError::Connect { .. } => "CONNECT_FAILED",
            RemoteError::Timeout { .. } => "TIMEOUT",
            RemoteError::HostKeyUnknown { .. } => "HOST_KEY_UNKNOWN",
            RemoteError::HostKeyChanged { .. } => "HOST_KEY_CHANGED",
            RemoteError::HostKeyRevoked { .. } => "HOST_KEY_REVOKED",
            RemoteError::AuthFailed { .. } => "AUTH_FAILED",
            RemoteError::Ssh { .. } => "SSH_FAILED",
            RemoteError::Exited { .. } => "PROCESSOR_EXITED",
            RemoteError::Protocol { source: ProtocolError::Version { .. }, .. } => "PROTOCOL_VERSION",
            RemoteError::Protocol { .. } => "PROTOCOL_ERROR",
            RemoteError::Job { failure, .. } => return failure.code.as_deref(),
            _ => return None,
        })
    }
}

impl alike_core::SeamError for RemoteError {
    fn kind(&self) -> ErrorKind {
        RemoteError::kind(self)
    }
    fn retry(&self) -> Retry {
        RemoteError::retry(self)
    }
    fn code(&self) -> Option<&str> {
        RemoteError::code(self)
    }
}
