//! The umbrella error of the facade.
//!
//! Rules: every public function of `alike` returns [`Error`]. It keeps the
//! rich error of the layer that failed (`alike_core::Error`,
//! `alike_ads::Error`, an adapter's) whole. Its kind ([`Error::kind`], which
//! the bindings map to Python exceptions and C result codes), its retry class
//! ([`Error::retry`]) and a host's code ([`Error::code`]) are the ones the
//! crate that made it gave it: errors that crossed a seam trait arrive as
//! `alike_core::Error::Seam` and are never unpacked by downcasting here.

pub use alike_core::{ErrorKind, Retry};

/// Errors of the `alike` API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(alike_ads::Error),
    /// The engine failed.
    #[error(transparent)]
    Engine(alike_core::Error),
    /// No version matches.
    #[error("no version matches {spec:?}{}", vm.as_deref().map(|v| format!(" for VM {v:?}")).unwrap_or_default())]
    VersionNotFound {
        /// What was asked for.
        spec: String,
        /// VM filter.
        vm: Option<String>,
    },
    /// A version id prefix matches several versions.
    #[error("version prefix {0:?} is ambiguous: give more digits")]
    AmbiguousVersion(String),
    /// A bad argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A restore's output already exists (refused unless forced).
    #[error("{} already exists: refusing to overwrite it (force it to replace the file)", path.display())]
    OutputExists {
        /// The output path.
        path: std::path::PathBuf,
    },
    /// A VHD image could not be read or written.
    #[error(transparent)]
    Vhd(alike_formats::vhd::VhdError),
    /// A VHDX/AVHDX image could not be read or written.
    #[error(transparent)]
    Vhdx(alike_formats::vhdx::VhdxError),
    /// A replication failed: the link, the peer (another job, no secret,
    /// another version), the replica, or a source.
    #[error(transparent)]
    Replication(alike_replicate::ReplicateError),
    /// File-level restore: a partition table, volume or filesystem could not
    /// be read, a path names nothing, the target refused a file.
    #[error(transparent)]
    Fs(alike_fs::FsError),
    /// A XenServer/XCP-ng pool refused or failed (what was being done, and
    /// the XAPI code and parameters: [`Error::xapi_code`]).
    #[cfg(feature = "xen")]
    #[error(transparent)]
    Xen(alike_xen::adapter::PoolError),
    /// A job on a processor, or the SSH connection to it, failed: the
    /// host, port, job and the remote error's own kind, retry class and
    /// code (`HOST_KEY_CHANGED`, `AUTH_FAILED`, a failed job's code…).
    #[cfg(feature = "remote")]
    #[error(transparent)]
    Remote(Box<alike_remote::ssh::RemoteError>),
    /// One end of a replication across processors failed
    /// (`remote::replicate_remote`): which end, on which host, and why (its
    /// kind, retry class and code are the cause's).
    #[cfg(feature = "remote")]
    #[error("the replication's {end} on {host} failed: {source}")]
    RemoteEnd {
        /// `sender` or `receiver`.
        end: &'static str,
        /// The processor, `user@host:port`.
        host: String,
        /// The end's error.
        source: Box<Error>,
    },
    /// The services (jobs, schedules, history) refused or failed: a bad
    /// job or schedule, no such job or run, a job already running, a
    /// history database open in another process.
    #[error(transparent)]
    Services(alike_sched::Error),
    /// A notification could not be sent (webhook, email): where to, and why.
    #[error("notification to {target}: {reason}")]
    Notify {
        /// The webhook URL or the mail server.
        target: String,
        /// What failed.
        reason: String,
    },
    /// A job's processor could not be had: no such pool, the provisioner
    /// failed, or the processor did not answer SSH in time
    /// (`PROCESSOR_SSH_TIMEOUT`; it was torn down).
    #[error("pool {pool}, job {job}: {message}")]
    Processor {
        /// The pool.
        pool: String,
        /// The job.
        job: String,
        /// A stable code ([`Error::code`]).
        code: &'static str,
        /// What happened.
        message: String,
    },
    /// A configuration file (`docs/config.md`) could not be read, did not
    /// parse, or held a value out of range: the file and the key.
    #[error("{}: {key}: {message}", file.display())]
    Config {
        /// The configuration file.
        file: std::path::PathBuf,
        /// The key at fault, as a path (`pool[1].addresses`, `job "nightly".store`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl From<alike_sched::Error> for Error {
    fn from(e: alike_sched::Error) -> Error {
        Error::Services(e)
    }
}

fn services_kind(e: &alike_sched::Error) -> ErrorKind {
    use alike_sched::Error as S;
    match e {
        S::Schedule { .. } | S::TimeZone { .. } | S::BadJob { .. } => ErrorKind::InvalidArgument,
        S::NoSuchJob(_) | S::NoSuchRun(_) => ErrorKind::NotFound,
        S::AlreadyRunning(_) | S::AlreadyOpen { .. } => ErrorKind::Busy,
        S::Database { .. } | S::Record { .. } => ErrorKind::Io,
        S::Stopped => ErrorKind::Cancelled,
        _ => ErrorKind::Other,
    }
}

#[cfg(feature = "remote")]
impl From<alike_remote::ssh::RemoteError> for Error {
    fn from(e: alike_remote::ssh::RemoteError) -> Error {
        Error::Remote(Box::new(e))
    }
}

#[cfg(feature = "xen")]
impl From<alike_xen::adapter::PoolError> for Error {
    fn from(e: alike_xen::adapter::PoolError) -> Error {
        Error::Xen(e)
    }
}

/// A Hyper-V adapter error (connecting to a host, outside the seam) crosses
/// as the seam's errors do: its kind, retry class and code kept.
#[cfg(feature = "hyperv")]
impl From<alike_hyperv::Error> for Error {
    fn from(e: alike_hyperv::Error) -> Error {
        Error::Engine(alike_core::Error::seam(e))
    }
}

impl From<alike_fs::FsError> for Error {
    fn from(e: alike_fs::FsError) -> Error {
        Error::Fs(e)
    }
}

impl From<alike_formats::vhd::VhdError> for Error {
    fn from(e: alike_formats::vhd::VhdError) -> Error {
        match e {
            alike_formats::vhd::VhdError::Source(c) => Error::from(c),
            e => Error::Vhd(e),
        }
    }
}

impl From<alike_formats::vhdx::VhdxError> for Error {
    fn from(e: alike_formats::vhdx::VhdxError) -> Error {
        Error::Vhdx(e)
    }
}

impl From<alike_replicate::ReplicateError> for Error {
    fn from(e: alike_replicate::ReplicateError) -> Error {
        match e {
            alike_replicate::ReplicateError::Core(c) => Error::from(c),
            e => Error::Replication(e),
        }
    }
}

impl From<alike_replica::ReplicaError> for Error {
    fn from(e: alike_replica::ReplicaError) -> Error {
        Error::from(alike_replicate::ReplicateError::from(e))
    }
}

impl From<alike_ads::Error> for Error {
    fn from(e: alike_ads::Error) -> Error {
        match e {
            alike_ads::Error::Core(c) => Error::from(c),
            e => Error::Store(e),
        }
    }
}

impl From<alike_core::Error> for Error {
    fn from(e: alike_core::Error) -> Error {
        Error::Engine(e)
    }
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Store(a) => a.kind(),
            Error::Engine(c) => c.kind(),
            Error::Vhd(x) => x.kind(),
            Error::Vhdx(x) => {
                use alike_formats::vhdx::VhdxError as X;
                match x {
                    X::Io { .. } => ErrorKind::Io,
                    X::ParentNotFound { .. } => ErrorKind::NotFound,
                    X::InvalidArgument { .. } => ErrorKind::InvalidArgument,
                    _ => ErrorKind::BadImage,
                }
            }
            Error::VersionNotFound { .. } => ErrorKind::NotFound,
            Error::AmbiguousVersion(_) | Error::InvalidArgument(_) | Error::Config { .. } => ErrorKind::InvalidArgument,
            Error::OutputExists { .. } => ErrorKind::AlreadyExists,
            Error::Processor { code: "ORCHESTRATOR_BUSY", .. } => ErrorKind::Busy,
            Error::Processor { code: "NO_SUCH_POOL" | "NO_HOST_KEY", .. } => ErrorKind::InvalidArgument,
            Error::Processor { .. } => ErrorKind::Io,
            Error::Replication(r) => alike_core::SeamError::kind(r),
            Error::Fs(f) => crate::files::fs_kind(f),
            #[cfg(feature = "xen")]
            Error::Xen(x) => x.kind(),
            #[cfg(feature = "remote")]
            Error::Remote(r) => r.kind(),
            Error::Services(e) => services_kind(e),
            Error::Notify { .. } => ErrorKind::Io,
            #[cfg(feature = "remote")]
            Error::RemoteEnd { source, .. } => source.kind(),
        }
    }

    /// Whether a retry of the same call may succeed: `Transient` for a
    /// network blip or a lock held by someone else, `Permanent` for bad
    /// input or damage, `Unknown` when it cannot be told.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Store(a) => a.retry(),
            Error::Engine(c) => c.retry(),
            Error::Vhd(x) => x.retry(),
            Error::Vhdx(alike_formats::vhdx::VhdxError::Io { .. }) => Retry::Unknown,
            Error::Replication(r) => alike_core::SeamError::retry(r),
            Error::Fs(alike_fs::FsError::Device { .. } | alike_fs::FsError::Io { .. }) => Retry::Unknown,
            Error::Processor { code: "PROCESSOR_SSH_TIMEOUT" | "ORCHESTRATOR_BUSY", .. } => Retry::Transient,
            #[cfg(feature = "xen")]
            Error::Xen(x) => x.retry(),
            #[cfg(feature = "remote")]
            Error::Remote(r) => r.retry(),
            Error::Services(alike_sched::Error::AlreadyRunning(_) | alike_sched::Error::AlreadyOpen { .. }) => {
                Retry::Transient
            }
            Error::Services(alike_sched::Error::Database { .. }) | Error::Notify { .. } => Retry::Unknown,
            #[cfg(feature = "remote")]
            Error::RemoteEnd { source, .. } => source.retry(),
            _ => Retry::Permanent,
        }
    }

    /// The host's or service's own code for a refusal (XAPI's
    /// `SESSION_AUTHENTICATION_FAILED`, `VDI_IN_USE`…), when there is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            #[cfg(feature = "xen")]
            Error::Xen(x) => x.xapi_code(),
            Error::Engine(c) => c.code(),
            Error::Processor { code, .. } => Some(code),
            #[cfg(feature = "remote")]
            Error::Remote(r) => r.code(),
            #[cfg(feature = "remote")]
            Error::RemoteEnd { source, .. } => source.code(),
            _ => None,
        }
    }

    /// The XAPI error code when a XenServer/XCP-ng pool refused
    /// (`SESSION_AUTHENTICATION_FAILED`, `VDI_IN_USE`…).
    #[deprecated(note = "use Error::code, which answers for every host")]
    pub fn xapi_code(&self) -> Option<&str> {
        self.code()
    }
}

/// Result alias of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;
