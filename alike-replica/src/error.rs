//! The error type of replica targets.
//!
//! Rules: every public function of this crate returns [`ReplicaError`]. A
//! variant names the file, point, disk or byte offset involved, so the
//! message alone says what was wrong where. A failure of a lower crate is
//! kept whole: a VHDX file's [`VhdxError`] (which names its file) inside
//! [`ReplicaError::Image`], an engine or disk-source failure inside
//! [`ReplicaError::Core`]; nothing is turned into a string on the way up.
//! [`ReplicaError`] implements [`SeamError`], so it crosses into
//! [`alike_core::Error::Seam`] (`From` below) with its kind and retry class.

use std::path::PathBuf;

use alike_core::{ChunkId, ErrorKind, Retry, SeamError};
use alike_formats::vhdx::VhdxError;

/// Errors of replica targets and runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The folder holds no replica (no `replica.json`).
    #[error("{dir}: not a replica (no replica.json)")]
    NotAReplica {
        /// The folder.
        dir: PathBuf,
    },
    /// `create` found a replica already there.
    #[error("{dir}: a replica already exists there")]
    AlreadyExists {
        /// The folder.
        dir: PathBuf,
    },
    /// An export's output file exists (and replacing it was not asked for).
    #[error("{file}: exists (force to replace it)")]
    OutputExists {
        /// The file.
        file: PathBuf,
    },
    /// The replica holds another VM than the one named.
    #[error("{dir}: the replica is of VM {found:?}, not {wanted:?}")]
    OtherVm {
        /// The folder.
        dir: PathBuf,
        /// The VM the replica holds.
        found: String,
        /// The VM asked for.
        wanted: String,
    },
    /// A manifest, record or key file is malformed (bad JSON, bad magic,
    /// a checksum mismatch, a value out of range).
    #[error("{file}: {reason}")]
    Malformed {
        /// The file.
        file: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A file has a format version this build does not read.
    #[error("{file}: format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version found.
        found: u64,
        /// The version this build reads.
        supported: u64,
    },
    /// A file that a committed point needs is missing.
    #[error("{file}: missing (point {point}, disk {disk} needs it)")]
    MissingFile {
        /// The file.
        file: PathBuf,
        /// The point.
        point: u64,
        /// The disk.
        disk: usize,
    },
    /// A VHDX file of the replica cannot be read or written.
    #[error("point {point}, disk {disk}: {source}")]
    Image {
        /// The point (the new one while a run writes it).
        point: u64,
        /// The disk.
        disk: usize,
        /// The format error, naming the file.
        #[source]
        source: VhdxError,
    },
    /// No committed point has that id.
    #[error("{target}: no point {point} (points: {points})")]
    PointNotFound {
        /// The replica.
        target: String,
        /// The point asked for.
        point: u64,
        /// The points there are, for the message.
        points: String,
    },
    /// The point has no disk of that number.
    #[error("point {point} has {disks} disk(s): no disk {disk}")]
    DiskNotFound {
        /// The point.
        point: u64,
        /// The disk asked for.
        disk: usize,
        /// How many disks the point has.
        disks: usize,
    },
    /// A run's disks are not the replica's (another count or size).
    #[error("{target}: {reason}")]
    DisksDiffer {
        /// The replica.
        target: String,
        /// What differs.
        reason: String,
    },
    /// An offer, write or option is unusable (out of the disk, unsorted,
    /// overlapping, an extent written that was not awaited…).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Data sent for an extent does not hash to the extent's id.
    #[error("disk {disk}, extent at {offset} ({len} bytes): the data hashes to {found}, the offer said {expected}")]
    ExtentMismatch {
        /// The disk.
        disk: usize,
        /// The extent's offset.
        offset: u64,
        /// The extent's length.
        len: u64,
        /// The id offered.
        expected: ChunkId,
        /// The id of the data received.
        found: ChunkId,
    },
    /// A run was committed while offered extents were still awaited.
    #[error("disk {disk}: {count} offered extent(s) never arrived, the first at {offset} ({len} bytes)")]
    Incomplete {
        /// The disk.
        disk: usize,
        /// How many extents are missing on that disk.
        count: usize,
        /// The first missing extent's offset.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// The replica was failed over (its registered VM now runs as the
    /// original): runs are refused until it is registered again.
    #[error(
        "{dir}: the replica was failed over to VM {vm:?}: no more runs until it is registered again or failed back"
    )]
    FailedOver {
        /// The replica's folder.
        dir: PathBuf,
        /// The VM it was failed over to.
        vm: String,
    },
    /// Another process (or handle) is writing the replica.
    #[error("{file}: another run, merge or repair holds the replica's lock")]
    Busy {
        /// The lock file.
        file: PathBuf,
    },
    /// The operating system failed a file operation.
    #[error("{file}: {what}: {source}")]
    Io {
        /// The file or folder.
        file: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The engine or a disk source failed (a read, a cancel).
    #[error(transparent)]
    Core(#[from] alike_core::Error),
}

impl ReplicaError {
    pub(crate) fn io(file: impl Into<PathBuf>, what: &'static str) -> impl FnOnce(std::io::Error) -> ReplicaError {
        let file = file.into();
        move |source| ReplicaError::Io { file, what, source }
    }

    pub(crate) fn malformed(file: impl Into<PathBuf>, reason: impl Into<String>) -> ReplicaError {
        ReplicaError::Malformed { file: file.into(), reason: reason.into() }
    }

    pub(crate) fn image(point: u64, disk: usize) -> impl FnOnce(VhdxError) -> ReplicaError {
        move |source| ReplicaError::Image { point, disk, source }
    }
}

impl SeamError for ReplicaError {
    fn kind(&self) -> ErrorKind {
        match self {
            ReplicaError::NotAReplica { .. }
            | ReplicaError::PointNotFound { .. }
            | ReplicaError::DiskNotFound { .. } => ErrorKind::NotFound,
            ReplicaError::AlreadyExists { .. } | ReplicaError::OutputExists { .. } => ErrorKind::AlreadyExists,
            ReplicaError::OtherVm { .. }
            | ReplicaError::DisksDiffer { .. }
            | ReplicaError::InvalidArgument(_)
            | ReplicaError::Incomplete { .. }
            | ReplicaError::FailedOver { .. } => ErrorKind::InvalidArgument,
            ReplicaError::Malformed { .. } | ReplicaError::MissingFile { .. } | ReplicaError::ExtentMismatch { .. } => {
                ErrorKind::Corruption
            }
            ReplicaError::UnsupportedVersion { .. } => ErrorKind::UnsupportedVersion,
            ReplicaError::Image { source: VhdxError::Io { .. }, .. } | ReplicaError::Io { .. } => ErrorKind::Io,
            ReplicaError::Image { source: VhdxError::InvalidArgument { .. }, .. } => ErrorKind::InvalidArgument,
            ReplicaError::Image { .. } => ErrorKind::Corruption,
            ReplicaError::Busy { .. } => ErrorKind::Busy,
            ReplicaError::Core(e) => e.kind(),
        }
    }

    fn retry(&self) -> Retry {
        match self {
            ReplicaError::Busy { .. } => Retry::Transient,
            ReplicaError::Io { .. } | ReplicaError::Image { source: VhdxError::Io { .. }, .. } => Retry::Unknown,
            ReplicaError::Core(e) => e.retry(),
            _ => Retry::Permanent,
        }
    }
}

impl From<ReplicaError> for alike_core::Error {
    fn from(e: ReplicaError) -> alike_core::Error {
        match e {
            ReplicaError::Core(e) => e,
            e => alike_core::Error::seam(e),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ReplicaError> = std::result::Result<T, E>;
