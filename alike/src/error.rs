//! The umbrella error of the facade.
//!
//! Rules: every public function of `alike` returns [`Error`]. It keeps the
//! rich error of the layer that failed (`alike_core::Error`,
//! `alike_ads::Error`) and classifies it with [`Error::kind`], which the
//! bindings map to Python exceptions and C result codes.

/// What kind of failure, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The passphrase or key file does not unlock the store.
    WrongPassphrase,
    /// An encrypted store was opened without a passphrase or key file.
    PassphraseRequired,
    /// No store at that location.
    NotAStore,
    /// A store already exists there.
    AlreadyExists,
    /// A version, VM, disk or object does not exist.
    NotFound,
    /// Stored data is damaged.
    Corruption,
    /// An object has a format version this build does not read.
    UnsupportedVersion,
    /// The operation was cancelled.
    Cancelled,
    /// A bad argument.
    InvalidArgument,
    /// Reading a source, writing a target, or the store's files failed.
    Io,
    /// Another process holds a lock that excludes this operation.
    Busy,
    /// An input disk image (VHD, VHDX) is malformed or unsupported.
    BadImage,
    /// Anything else.
    Other,
}

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
    /// A VHD image could not be read or written.
    #[error(transparent)]
    Vhd(alike_formats::vhd::VhdError),
    /// A VHDX/AVHDX image could not be read or written.
    #[error(transparent)]
    Vhdx(alike_formats::vhdx::VhdxError),
    /// A XenServer/XCP-ng pool refused or failed (what was being done, and
    /// the XAPI code and parameters: [`Error::xapi_code`]).
    #[cfg(feature = "xen")]
    #[error(transparent)]
    Xen(alike_xen::adapter::PoolError),
}

#[cfg(feature = "xen")]
impl From<alike_xen::adapter::PoolError> for Error {
    fn from(e: alike_xen::adapter::PoolError) -> Error {
        Error::Xen(e)
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
        match e {
            alike_core::Error::Store(b) => {
                let b = match b.downcast::<alike_ads::Error>() {
                    Ok(a) => return Error::from(*a),
                    Err(b) => b,
                };
                let b = match b.downcast::<alike_formats::vhd::VhdError>() {
                    Ok(x) => return Error::from(*x),
                    Err(b) => b,
                };
                match b.downcast::<alike_formats::vhdx::VhdxError>() {
                    Ok(x) => Error::Vhdx(*x),
                    Err(b) => Error::Engine(alike_core::Error::Store(b)),
                }
            }
            e => Error::Engine(e),
        }
    }
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        use alike_ads::Error as A;
        match self {
            Error::Store(a) => match a {
                A::NotAStore { .. } => ErrorKind::NotAStore,
                A::AlreadyExists { .. } => ErrorKind::AlreadyExists,
                A::BadMagic { .. } | A::Corrupt { .. } | A::Truncated { .. } => ErrorKind::Corruption,
                A::UnsupportedVersion { .. } | A::UpgradeRequired { .. } => ErrorKind::UnsupportedVersion,
                A::NotFound { .. } => ErrorKind::NotFound,
                A::PassphraseRequired { .. } => ErrorKind::PassphraseRequired,
                A::Io { .. } | A::Cache { .. } => ErrorKind::Io,
                A::InvalidArgument(_) => ErrorKind::InvalidArgument,
                A::Locked { .. } => ErrorKind::Busy,
                A::Remote { .. } => ErrorKind::Io,
                A::BadLocation { .. } => ErrorKind::InvalidArgument,
                _ => ErrorKind::Other,
            },
            Error::Engine(c) => core_kind(c),
            Error::Vhd(x) => {
                use alike_formats::vhd::VhdError as X;
                match x {
                    X::Io { .. } | X::Read { .. } | X::Write { .. } => ErrorKind::Io,
                    X::ParentNotFound { .. } => ErrorKind::NotFound,
                    X::InvalidArgument(_) => ErrorKind::InvalidArgument,
                    _ => ErrorKind::BadImage,
                }
            }
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
            Error::AmbiguousVersion(_) | Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            #[cfg(feature = "xen")]
            Error::Xen(x) => xen_kind(x),
        }
    }

    /// The XAPI error code when a XenServer/XCP-ng pool refused
    /// (`SESSION_AUTHENTICATION_FAILED`, `VDI_IN_USE`…).
    pub fn xapi_code(&self) -> Option<&str> {
        match self {
            #[cfg(feature = "xen")]
            Error::Xen(x) => x.xapi_code(),
            _ => None,
        }
    }
}

fn core_kind(c: &alike_core::Error) -> ErrorKind {
    use alike_core::Error as C;
    match c {
        C::WrongPassphrase { .. } => ErrorKind::WrongPassphrase,
        C::CorruptBlob { .. } | C::CorruptFrame { .. } | C::Malformed { .. } | C::MissingChunk { .. } => {
            ErrorKind::Corruption
        }
        C::SourceRead { .. } | C::TargetWrite { .. } | C::Io { .. } => ErrorKind::Io,
        C::Cancelled => ErrorKind::Cancelled,
        C::InvalidArgument(_) => ErrorKind::InvalidArgument,
        _ => ErrorKind::Other,
    }
}

/// XAPI refusals keep their code ([`Error::xapi_code`]); the kind says
/// only what a caller can act on: not found, busy, I/O (the pool
/// unreachable, a transfer cut), cancelled; other refusals are `Other`.
#[cfg(feature = "xen")]
fn xen_kind(x: &alike_xen::adapter::PoolError) -> ErrorKind {
    use alike_xen::Error as X;
    use alike_xen::adapter::PoolError as P;
    match x {
        P::NotFound { .. } => return ErrorKind::NotFound,
        P::Ambiguous { .. } | P::BadConfig(_) | P::InvalidArgument(_) => return ErrorKind::InvalidArgument,
        P::Cancelled => return ErrorKind::Cancelled,
        _ => {}
    }
    match x.xen_error() {
        Some(X::Source(c)) => core_kind(c),
        Some(X::Xapi { code, .. }) => match code.as_str() {
            "HANDLE_INVALID" | "UUID_INVALID" | "VDI_MISSING" => ErrorKind::NotFound,
            "VDI_IN_USE" | "OTHER_OPERATION_IN_PROGRESS" => ErrorKind::Busy,
            _ => ErrorKind::Other,
        },
        Some(
            X::Http { .. }
            | X::HttpStatus { .. }
            | X::Connection { .. }
            | X::TaskTimeout { .. }
            | X::CertificateMismatch { .. }
            | X::Nbd { .. }
            | X::Io { .. }
            | X::Read { .. }
            | X::Write { .. },
        ) => ErrorKind::Io,
        Some(X::InvalidArgument(_) | X::TlsSetup(_)) => ErrorKind::InvalidArgument,
        _ => ErrorKind::Other,
    }
}

/// Result alias of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;
