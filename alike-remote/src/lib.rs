//! # alike-remote
//!
//! Remote work for [alike](https://github.com/alike-backup/alike): jobs run
//! by a *processor* — the `alike` binary as a worker (`alike processor`) on
//! another machine — started over SSH by an orchestrator.
//!
//! - [`protocol`] (always built): the processor protocol, version 1, sans
//!   I/O — the job spec the orchestrator writes to the worker's standard
//!   input, the events the worker writes back (JSON lines), the bounded
//!   line decoder and the orchestrator's state machine. Specified in
//!   `docs/processor-protocol.md`.
//! - [`ssh`] (feature `ssh`, on by default): an SSH client on `russh` (ring
//!   backend) with pinned host keys (an OpenSSH `known_hosts` file or
//!   SHA-256 fingerprints; an unknown or changed key is refused), key-based
//!   authentication, timeouts, a command's output as a bounded stream of
//!   lines, and [`ssh::run_job`], which runs one job on a processor. Async
//!   inside (a small tokio runtime per connection), blocking outside.
//!
//! ```
//! use alike_remote::protocol::{JobSpec, Orchestrator, Step};
//!
//! let mut o = Orchestrator::new(JobSpec::new("job-1", "verify", serde_json::json!({"store": {"location": "/srv/store"}})));
//! // The worker's first line: its version and the kinds it runs.
//! let step = o.handle_line(br#"{"type":"hello","v":1,"processor":"alike 0.1.0","kinds":["verify"]}"#)?;
//! assert!(matches!(step, Step::Send(_))); // the job line, to write to the worker
//! # Ok::<(), alike_remote::protocol::ProtocolError>(())
//! ```

pub mod protocol;
#[cfg(feature = "ssh")]
pub mod ssh;
