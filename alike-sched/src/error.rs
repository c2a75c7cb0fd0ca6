//! The crate's one error type.

/// What went wrong in the services. Every variant names what it is about
/// (the job, the run, the expression, the database file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A schedule that does not parse.
    #[error("job {job:?}: schedule {expr:?}: {reason}")]
    Schedule {
        /// The job.
        job: String,
        /// The expression as written.
        expr: String,
        /// Why it was refused.
        reason: String,
    },
    /// A time zone name that the tz database does not know.
    #[error("job {job:?}: unknown time zone {zone:?}")]
    TimeZone {
        /// The job.
        job: String,
        /// The name as written.
        zone: String,
    },
    /// A job definition that cannot be used (empty name, no VMs for a
    /// backup, a value out of range).
    #[error("job {job:?}: {reason}")]
    BadJob {
        /// The job.
        job: String,
        /// Why.
        reason: String,
    },
    /// No job of that name.
    #[error("no job named {0:?}")]
    NoSuchJob(String),
    /// No run of that id.
    #[error("no run {0}")]
    NoSuchRun(u64),
    /// The job is already running or queued (two runs of one job never overlap).
    #[error("job {0:?} is already running or queued")]
    AlreadyRunning(String),
    /// The history database is open in another process (the daemon runs
    /// once per database).
    #[error("history database {path}: already open in another process")]
    AlreadyOpen {
        /// The database file.
        path: String,
    },
    /// The history database could not be read or written.
    #[error("history database {path}: {reason}")]
    Database {
        /// The database file.
        path: String,
        /// What redb said.
        reason: String,
    },
    /// A record in the database that does not decode.
    #[error("history database: record {key}: {reason}")]
    Record {
        /// The record's key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The scheduler was stopped.
    #[error("the scheduler is stopped")]
    Stopped,
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(String),
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
