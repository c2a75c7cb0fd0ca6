//! # alike-sched
//!
//! The services of alike as a library: jobs ([`JobSpec`]) on calendar
//! schedules ([`Schedule`]: cron in a tz-database time zone, DST handled),
//! run by a [`Scheduler`] that reads an injected [`Clock`], never runs two
//! runs of one job at once, serialises jobs that share a VM
//! ([`VmLocks`]), catches up or skips due times missed while it was down
//! ([`MissedRule`]), and keeps every run in a redb database ([`History`]:
//! start, end, result, per-VM and per-disk figures, steps, warnings and
//! errors; its own retention; runs of a process that died are marked
//! `interrupted` at the next start; rebuilt from the store's versions and
//! verification records when lost). Every run emits [`Event`]s to the
//! subscribers of an [`EventBus`].
//!
//! What a job *does* is the [`Runner`]'s business: the facade
//! (`alike::services`) runs backups over the hypervisor seam, then the
//! chain retention → vault → verification, validation and housekeeping,
//! and sends notifications. This crate knows no store, hypervisor or
//! network crate.
//!
//! ```
//! use std::sync::Arc;
//! use alike_sched::{JobKind, JobSpec, ManualClock, RunContext, Scheduler, SchedulerOptions, VmRun};
//!
//! struct Pretend;
//! impl alike_sched::Runner for Pretend {
//!     fn run(&self, job: &JobSpec, ctx: &RunContext) -> Result<(), String> {
//!         for vm in &job.vms {
//!             ctx.vm_started(vm);
//!             let mut done = VmRun::default();
//!             done.vm = vm.clone();
//!             done.result = "success".into();
//!             ctx.vm_done(done);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let dir = tempfile::tempdir().unwrap();
//! let clock = Arc::new(ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap()));
//! let s = Scheduler::open(dir.path().join("services.redb"), Arc::new(Pretend), clock, SchedulerOptions::default())?;
//! let events = s.events().channel(64);
//! let mut job = JobSpec::new("nightly", JobKind::Backup);
//! (job.vms, job.pool, job.store) = (vec!["web-01".into()], Some("xen1".into()), Some("main".into()));
//! s.put_job(job)?;
//! let run = s.run_now("nightly")?;
//! assert!(s.wait_idle(std::time::Duration::from_secs(10)));
//! assert_eq!(s.history().run(run)?.vms[0].vm, "web-01");
//! let kinds: Vec<_> = events.try_iter().map(|e| e.kind.name()).collect();
//! assert_eq!(kinds, ["job_started", "vm_started", "vm_done", "finished"]);
//! # Ok::<(), alike_sched::Error>(())
//! ```

mod clock;
mod error;
mod events;
mod history;
mod job;
mod locks;
mod schedule;
mod scheduler;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use events::{Event, EventBus, EventFn, EventKind, SubscriptionId};
pub use history::{
    DiskRun, History, HistoryRetention, JobState, REBUILT_JOB, RebuiltVersion, RunFilter, RunRecord, RunResult,
    StepRun, Trigger, VmRun,
};
pub use job::{Chain, JobKind, JobOrigin, JobSpec, MAX_JOB_NAME, MissedRule, Validation, VerifyAfter};
pub use locks::{VmGuard, VmLocks};
pub use schedule::Schedule;
pub use scheduler::{JobStatus, RunContext, Runner, Scheduler, SchedulerOptions};

/// Re-exported: times in this API are `chrono` UTC times.
pub use chrono;
