//! The adapter's error: what it was doing (which VM, disk, VDI, XAPI call)
//! around the XAPI, HTTP or NBD error, which is kept whole (its XAPI code
//! and parameters included).
//!
//! Rules: every public function of the adapter returns [`PoolError`].
//! Lower errors are kept whole in a field ([`PoolError::xen_error`],
//! [`PoolError::xapi_code`]), never flattened to text; the context names the
//! objects by name and uuid. The message already holds the lower error's
//! text (the engine records messages, not chains, as fallback reasons), so
//! it is not also returned by `Error::source` — a printed chain would say
//! everything twice. Failures inside the engine's calls to
//! a [`crate::adapter::XenDisk`] cross the seam as `alike_core::Error`
//! (`SourceRead` for reads, `Store` holding a [`PoolError`] for change
//! tracking).

use alike_core::Retry;

/// Errors of the Xen adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A XAPI call, an HTTP transfer or an NBD exchange failed.
    #[error("{context}: {error}")]
    Xen {
        /// What the adapter was doing ("snapshotting VM web-01 (uuid …)").
        context: String,
        /// The error, with its XAPI code and parameters when XAPI refused.
        error: Box<crate::Error>,
    },
    /// No object of that class has that name, uuid or ref.
    #[error("no {class} {spec:?} in the pool (by name, uuid or ref){hint}")]
    NotFound {
        /// `VM`, `SR`, `network`, `VDI`.
        class: &'static str,
        /// What was asked for.
        spec: String,
        /// Where to look (e.g. ": `alike xen vms` lists the VMs").
        hint: &'static str,
    },
    /// Several objects of that class have that name.
    #[error("{spec:?} names {} {class}s ({}): give a uuid", uuids.len(), uuids.join(", "))]
    Ambiguous {
        /// `VM`, `SR`, `network`.
        class: &'static str,
        /// The name.
        spec: String,
        /// The uuids of the objects it names.
        uuids: Vec<String>,
    },
    /// A version's configuration cannot be used to restore (it was not
    /// backed up from XAPI, or it is incomplete).
    #[error("cannot restore from this configuration: {0}")]
    BadConfig(String),
    /// The changed blocks of a disk since the previous backup cannot be
    /// known (the CBT chain is broken, the previous snapshot is gone, the
    /// disk is another VDI now). The engine then reads the whole disk and
    /// records this text as the disk's `fallback_reason`.
    #[error("{disk}: changes since the previous backup are unknown: {reason}")]
    ChangesUnknown {
        /// The disk (VDI name and uuid).
        disk: String,
        /// Why, with the XAPI error's text when there is one.
        reason: String,
        /// The XAPI (or HTTP) error, when there is one.
        error: Option<Box<crate::Error>>,
    },
    /// A caller passed something unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Result alias of the adapter.
pub type PoolResult<T, E = PoolError> = std::result::Result<T, E>;

impl PoolError {
    /// The XAPI error code, when XAPI refused (`VDI_IN_USE`, `HANDLE_INVALID`…).
    pub fn xapi_code(&self) -> Option<&str> {
        self.xen_error().and_then(crate::Error::xapi_code)
    }

    /// The XAPI error parameters, when XAPI refused.
    pub fn xapi_params(&self) -> Option<&[String]> {
        match self.xen_error() {
            Some(crate::Error::Xapi { params, .. }) => Some(params),
            _ => None,
        }
    }

    /// The lower error, when there is one.
    pub fn xen_error(&self) -> Option<&crate::Error> {
        match self {
            PoolError::Xen { error, .. } | PoolError::ChangesUnknown { error: Some(error), .. } => Some(error),
            _ => None,
        }
    }

    /// What kind of failure (a XAPI refusal's kind is its lower error's).
    pub fn kind(&self) -> alike_core::ErrorKind {
        use alike_core::ErrorKind as K;
        match self {
            PoolError::NotFound { .. } => K::NotFound,
            PoolError::Ambiguous { .. } | PoolError::BadConfig(_) | PoolError::InvalidArgument(_) => K::InvalidArgument,
            PoolError::Cancelled => K::Cancelled,
            _ => self.xen_error().map_or(K::Other, crate::Error::kind),
        }
    }

    /// Whether a retry of the same operation may succeed.
    pub fn retry(&self) -> Retry {
        match self.xen_error() {
            Some(e) => e.retry(),
            None => Retry::Permanent,
        }
    }
}

impl From<PoolError> for alike_core::Error {
    fn from(e: PoolError) -> alike_core::Error {
        match e {
            PoolError::Cancelled => alike_core::Error::Cancelled,
            e => alike_core::Error::seam(e),
        }
    }
}

impl alike_core::SeamError for PoolError {
    fn kind(&self) -> alike_core::ErrorKind {
        self.kind()
    }
    fn retry(&self) -> Retry {
        self.retry()
    }
    fn code(&self) -> Option<&str> {
        self.xapi_code()
    }
}

/// Adds context to a lower result.
pub(crate) trait Context<T> {
    /// `self` with `what()` as the context of its error.
    fn ctx(self, what: impl FnOnce() -> String) -> PoolResult<T>;
}

impl<T> Context<T> for crate::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> PoolResult<T> {
        self.map_err(|source| PoolError::Xen { context: what(), error: Box::new(source) })
    }
}
