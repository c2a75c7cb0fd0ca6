//! Jobs on processors: the engine as a worker on another machine, reached
//! over SSH.
//!
//! A *processor* runs `alike processor` ([`serve_processor`]): it says
//! hello, reads one job spec from its standard input — which sshd connects
//! to the orchestrator's SSH channel —, runs it (back up disks attached to
//! it into a store, restore a version onto them, verify a store), streams
//! events back as they happen, and ends with the job's result. The
//! orchestrator ([`run_remote`], feature `remote`) connects with a pinned
//! host key, starts the worker, and hands it a [`ProcessorJob`].
//!
//! - The protocol (`alike-remote`'s `protocol`, `docs/processor-protocol.md`):
//!   versioned JSON lines; a worker of another version is refused before
//!   the job — and its secrets — are sent.
//! - Secrets (the store's passphrase or key file, object-storage
//!   credentials) travel only inside the job line on the channel: never on
//!   a command line, in an environment or in a log.
//! - Closing the channel (or the orchestrator dying) cancels the job: the
//!   worker sees its input end, and stops as a cancelled operation does —
//!   no version is half-written.
//!
//! ```
//! use alike::remote::{ProcessorJob, VerifyJob, StoreSpec};
//! let job = ProcessorJob::verify(VerifyJob::new(StoreSpec::new("/srv/store"))).passphrase("pw");
//! let spec = job.to_spec()?;
//! assert_eq!((spec.v, spec.kind.as_str()), (1, "verify"));
//! # Ok::<(), alike::Error>(())
//! ```

mod job;
#[cfg(feature = "remote")]
mod pair;
#[cfg(feature = "remote")]
mod run;
mod worker;

pub use alike_remote::protocol::{
    DiskProgress, Failure, JobSpec, PROTOCOL_VERSION, ProgressEvent, Queued, Secret, Secrets, Started, Warning,
    WorkerMessage as ProcessorEvent,
};
#[cfg(feature = "remote")]
pub use alike_remote::ssh::{ClientKey, DEFAULT_COMMAND, Host, HostKeyPolicy, RemoteError, SshOptions};
pub use job::{BackupJob, DiskChanges, JobKind, KINDS, ProcessorJob, RestoreJob, StoreSpec, VerifyJob, XenVmConfigJob};
#[cfg(feature = "remote")]
pub use pair::{RemoteEnd, RemoteReplicationReport, replicate_remote, replication_pair};
#[cfg(feature = "remote")]
pub use run::{RemoteOptions, RemoteReport, run_remote};
pub use worker::{WorkerExit, WorkerOptions, serve_processor};
