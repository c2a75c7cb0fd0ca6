//! Job definitions: what a job covers, what it does after the backup (the
//! chain), and when it runs. Serialised as they are into the history
//! database and accepted from the configuration file's `[[job]]` table
//! (the facade maps that table onto [`JobSpec`]).

use serde::{Deserialize, Serialize};

use crate::{Error, Result, Schedule};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobKind {
    /// Back up VMs of a pool into a store, then the chain.
    Backup,
    /// Replicate VMs to a replica target.
    Replication,
    /// Copy a store's versions into a vault store.
    Vault,
    /// Verify a store's versions (quick or full, with a per-run budget).
    Validation,
    /// Retention and garbage collection of a store.
    Housekeeping,
}

impl JobKind {
    /// The kind's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Replication => "replication",
            JobKind::Vault => "vault",
            JobKind::Validation => "validation",
            JobKind::Housekeeping => "housekeeping",
        }
    }
}

/// What happens to a due time that passed while the scheduler was not
/// running (the machine was down, the daemon stopped).
///
/// A due time counts as *missed* when the scheduler first sees it more than
/// [`JobSpec::grace_seconds`] late. However many times were missed, at most
/// one run follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum MissedRule {
    /// Run once at start for all the missed times (trigger `catch-up`).
    #[default]
    CatchUp,
    /// Do not run; the history records one `skipped` run naming the newest
    /// missed time.
    Skip,
}

/// Where a job's definition came from: what a restart keeps
/// ([`crate::Scheduler::set_jobs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobOrigin {
    /// The configuration file: replaced by the file's jobs at each start,
    /// removed when the file no longer has it.
    #[default]
    File,
    /// Made or edited through the API: kept across restarts unless the
    /// file has a job of the same name (the file wins).
    Api,
}

/// Which verification follows each backup of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum VerifyAfter {
    /// None.
    None,
    /// A quick verification of each new version (index, pack trailers and
    /// sizes agree): the default.
    #[default]
    Quick,
    /// A full one (every byte read and re-hashed).
    Full,
}

/// How much a validation job reads per run: with a budget, a full
/// validation spreads over several runs (nights), each continuing with the
/// versions verified longest ago.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Validation {
    /// Read and re-hash every byte (`true`) or the quick structural check.
    pub full: bool,
    /// Logical bytes of versions to verify per run at most; `None` = all.
    /// A version larger than the budget is still verified when it is the
    /// first of a run (no version is starved).
    pub budget_bytes: Option<u64>,
}

/// What follows a backup, each step optional, in this order:
/// retention → vault → verification.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Chain {
    /// Retention applied to each VM backed up (prune), if any.
    pub retention: Option<alike_core::retention::RetentionPolicy>,
    /// The name of a store (in the configuration) to copy new versions to.
    pub vault: Option<String>,
    /// The verification of each new version.
    pub verify: VerifyAfter,
}

/// One job.
///
/// ```
/// use alike_sched::{JobKind, JobSpec};
/// let mut j = JobSpec::new("nightly", JobKind::Backup);
/// j.vms = vec!["web-01".into(), "tag:prod".into()];
/// j.pool = Some("xen1".into());
/// j.store = Some("main".into());
/// j.schedule = Some("30 2 * * *".into());
/// j.timezone = "Europe/Berlin".into();
/// j.check().unwrap();
/// assert!(j.schedule().unwrap().is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JobSpec {
    /// Unique name (1–64 of `A-Za-z0-9._-`).
    pub name: String,
    /// What it does.
    pub kind: JobKind,
    /// VMs by name, uuid, or `tag:TAG` (backup, replication).
    #[serde(default)]
    pub vms: Vec<String>,
    /// The pool or host (a name in the configuration).
    #[serde(default)]
    pub pool: Option<String>,
    /// The store (a name in the configuration).
    #[serde(default)]
    pub store: Option<String>,
    /// A replica target (replication).
    #[serde(default)]
    pub target: Option<String>,
    /// When it runs: a cron expression; `None` = only when asked.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The schedule's time zone (tz database name).
    #[serde(default = "utc")]
    pub timezone: String,
    /// What happens to due times missed while the scheduler was down.
    #[serde(default)]
    pub missed: MissedRule,
    /// How late a due time may be seen before it counts as missed, seconds.
    #[serde(default = "default_grace")]
    pub grace_seconds: u64,
    /// A disabled job keeps its definition and history but is not scheduled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Quiesce the VM for its snapshot (backup).
    #[serde(default)]
    pub quiesce: bool,
    /// A bandwidth limit, bytes/s (backup, replication, vault).
    #[serde(default)]
    pub bandwidth: Option<u64>,
    /// The chain after a backup.
    #[serde(default)]
    pub chain: Chain,
    /// A validation job's scope and budget.
    #[serde(default)]
    pub validation: Validation,
    /// Free-form options a runner understands (a processor, the replica's
    /// keep count…), kept as given.
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
    /// Where the definition came from (the configuration file unless
    /// said; the facade's `Services::put_job` marks it `api`).
    #[serde(default)]
    pub origin: JobOrigin,
}

fn utc() -> String {
    "UTC".to_owned()
}
fn default_grace() -> u64 {
    300
}
fn yes() -> bool {
    true
}

/// The longest job name.
pub const MAX_JOB_NAME: usize = 64;

impl JobSpec {
    /// A job with defaults: no schedule (runs only when asked), UTC,
    /// missed runs caught up, quick verification after each backup.
    pub fn new(name: impl Into<String>, kind: JobKind) -> JobSpec {
        JobSpec {
            name: name.into(),
            kind,
            vms: Vec::new(),
            pool: None,
            store: None,
            target: None,
            schedule: None,
            timezone: utc(),
            missed: MissedRule::default(),
            grace_seconds: default_grace(),
            enabled: true,
            quiesce: false,
            bandwidth: None,
            chain: Chain::default(),
            validation: Validation::default(),
            options: serde_json::Map::new(),
            origin: JobOrigin::File,
        }
    }

    /// The parsed schedule, `None` for a job that runs only when asked.
    ///
    /// # Errors
    /// As [`Schedule::parse`].
    pub fn schedule(&self) -> Result<Option<Schedule>> {
        self.schedule.as_deref().map(|e| Schedule::parse(&self.name, e, &self.timezone)).transpose()
    }

    /// Checks the definition: the name, the schedule and zone, and what the
    /// kind needs (a backup needs VMs, a pool and a store).
    ///
    /// # Errors
    /// [`Error::BadJob`], [`Error::Schedule`], [`Error::TimeZone`].
    pub fn check(&self) -> Result<()> {
        let bad = |reason: &str| Err(Error::BadJob { job: self.name.clone(), reason: reason.to_owned() });
        if self.name.is_empty()
            || self.name.len() > MAX_JOB_NAME
            || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad("a job name is 1 to 64 of A-Z a-z 0-9 . _ -");
        }
        self.schedule()?;
        if self.grace_seconds > 7 * 86_400 {
            return bad("grace_seconds is at most 604800 (a week)");
        }
        if self.chain.retention.is_some_and(|p| p.is_empty()) {
            return bad("chain.retention keeps nothing (give keep_last, keep_daily…)");
        }
        if self.bandwidth == Some(0) {
            return bad("bandwidth must be above 0 bytes/s");
        }
        match self.kind {
            JobKind::Backup | JobKind::Replication => {
                if self.vms.is_empty() {
                    return bad("names no VMs (vms = [...])");
                }
                if self.pool.is_none() {
                    return bad("names no pool");
                }
                if self.kind == JobKind::Backup && self.store.is_none() {
                    return bad("names no store");
                }
                if self.kind == JobKind::Replication && self.target.is_none() {
                    return bad("names no replica target");
                }
            }
            JobKind::Vault => {
                if self.store.is_none() || self.chain.vault.is_none() {
                    return bad("a vault job names a store and chain.vault");
                }
            }
            JobKind::Validation | JobKind::Housekeeping => {
                if self.store.is_none() {
                    return bad("names no store");
                }
            }
        }
        if self.vms.iter().any(|v| v.is_empty() || v == "tag:") {
            return bad("an empty VM selector");
        }
        Ok(())
    }

    /// The keys of the per-VM serialisation that this job holds while it
    /// runs: its VM selectors, per pool. Two jobs sharing one never run
    /// together; the backup path itself also locks the resolved VM
    /// ([`crate::VmLocks`]).
    pub fn vm_keys(&self) -> Vec<String> {
        let pool = self.pool.as_deref().unwrap_or("");
        self.vms.iter().map(|v| format!("{pool}/{v}")).collect()
    }
}
