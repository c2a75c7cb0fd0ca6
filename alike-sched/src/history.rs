//! The run history and the jobs, in one redb database file.
//!
//! Tables (`docs/services.md` has the record format):
//! - `runs-v1`: run id (u64, increasing) → a [`RunRecord`] as JSON;
//! - `jobs-v1`: job name → its [`JobSpec`] as JSON;
//! - `job-state-v1`: job name → [`JobState`] as JSON (the newest due time
//!   handled: what the missed-run rule is computed from);
//! - `meta-v1`: `next-run-id`.
//!
//! The database is opened by one process at a time (redb locks the file):
//! a second daemon on one database is refused with
//! [`Error::AlreadyOpen`]. A record still `running` when the database is
//! opened belongs to a process that died: [`History::open`] marks it
//! `interrupted`, with the time of that discovery as its end.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{Error, JobSpec, Result};

const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs-v1");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs-v1");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("job-state-v1");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta-v1");

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RunResult {
    /// Waiting for a VM another run holds.
    Queued,
    /// Running now.
    Running,
    /// Everything done.
    Success,
    /// Done, with warnings (a change-tracking fallback, a snapshot not released).
    Warning,
    /// At least one VM or step failed.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// The process running it died (found at the next start).
    Interrupted,
    /// Not run: a due time missed under [`crate::MissedRule::Skip`], or one
    /// that came while the previous run was still going.
    Skipped,
}

impl RunResult {
    /// The result's name (`success`, `interrupted`…).
    pub fn name(self) -> &'static str {
        match self {
            RunResult::Queued => "queued",
            RunResult::Running => "running",
            RunResult::Success => "success",
            RunResult::Warning => "warning",
            RunResult::Failed => "failed",
            RunResult::Cancelled => "cancelled",
            RunResult::Interrupted => "interrupted",
            RunResult::Skipped => "skipped",
        }
    }
    /// Whether the run is over.
    pub fn is_final(self) -> bool {
        !matches!(self, RunResult::Queued | RunResult::Running)
    }
    /// Whether it counts as a good run (success or warning).
    pub fn is_good(self) -> bool {
        matches!(self, RunResult::Success | RunResult::Warning)
    }
}

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Trigger {
    /// Its due time.
    Schedule,
    /// Due times missed while the scheduler was down, caught up once.
    CatchUp,
    /// Someone asked (API, CLI, bindings).
    Manual,
    /// Rebuilt from the store after the database was lost.
    Rebuilt,
}

/// One disk of a VM in a run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct DiskRun {
    /// Position in the VM.
    pub position: u32,
    /// Virtual size, bytes.
    pub size: u64,
    /// `incremental` or `full`.
    pub mode: String,
    /// Bytes read.
    pub read_bytes: u64,
    /// Plaintext bytes new to the store.
    pub new_bytes: u64,
    /// Stored bytes added.
    pub stored_bytes: u64,
    /// Why it was read whole although a previous version existed.
    pub fallback_reason: Option<String>,
}

/// One VM in a run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct VmRun {
    /// The VM's name.
    pub vm: String,
    /// The version made, if any.
    pub version: Option<String>,
    /// `success`, `warning` or `failed`.
    pub result: String,
    /// Bytes read from the host.
    pub read_bytes: u64,
    /// Plaintext bytes new to the store.
    pub new_bytes: u64,
    /// Stored bytes added.
    pub stored_bytes: u64,
    /// Wall time, seconds.
    pub elapsed_seconds: f64,
    /// Per disk.
    pub disks: Vec<DiskRun>,
    /// Warnings (fallback reasons among them).
    pub warnings: Vec<String>,
    /// The error that failed it.
    pub error: Option<String>,
    /// A replication: the replica point made.
    pub point: Option<u64>,
    /// A replication: bytes sent to the replica (the changed blocks).
    pub sent_bytes: u64,
}

/// One step of a chain (retention, vault, verify) or of a validation or
/// housekeeping job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct StepRun {
    /// `retention`, `vault`, `verify`, `gc`…
    pub step: String,
    /// `success`, `warning` or `failed`.
    pub result: String,
    /// What it did, as the engine reported it (the prune, vault or verify
    /// report).
    pub detail: serde_json::Value,
    /// The error that failed it.
    pub error: Option<String>,
}

/// One run of a job, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunRecord {
    /// The run's id (increasing).
    pub id: u64,
    /// The job's name.
    pub job: String,
    /// The job's kind.
    pub kind: crate::JobKind,
    /// Why it ran.
    pub trigger: Trigger,
    /// The due time it ran for (scheduled and catch-up runs).
    #[serde(default)]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// When it was queued or started.
    pub started: DateTime<Utc>,
    /// When it ended.
    #[serde(default)]
    pub ended: Option<DateTime<Utc>>,
    /// How it ended.
    pub result: RunResult,
    /// Per VM.
    #[serde(default)]
    pub vms: Vec<VmRun>,
    /// Chain or job steps.
    #[serde(default)]
    pub steps: Vec<StepRun>,
    /// Warnings not about one VM.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The error that failed the run as a whole.
    #[serde(default)]
    pub error: Option<String>,
}

impl RunRecord {
    /// Totals over the VMs: (read, new, stored) bytes.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.vms.iter().fold((0, 0, 0), |(r, n, s), v| (r + v.read_bytes, n + v.new_bytes, s + v.stored_bytes))
    }
    /// Wall time, seconds, once ended.
    pub fn elapsed_seconds(&self) -> Option<f64> {
        self.ended.map(|e| (e - self.started).num_milliseconds() as f64 / 1000.0)
    }
}

/// What the scheduler remembers of a job between starts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct JobState {
    /// The newest due time handled (run, queued, skipped).
    pub last_due: Option<DateTime<Utc>>,
}

/// Which runs [`History::runs`] returns, newest first.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RunFilter {
    /// Only this job's.
    pub job: Option<String>,
    /// Only runs with this result.
    pub result: Option<RunResult>,
    /// Only runs that covered this VM.
    pub vm: Option<String>,
    /// Only runs started at or after.
    pub since: Option<DateTime<Utc>>,
    /// Only runs with an id below (paging: the last id of the previous page).
    pub before_id: Option<u64>,
    /// At most this many (default 100, at most 10 000).
    pub limit: Option<usize>,
}

/// How long the history keeps runs. A run is deleted when it is older
/// than `keep_days` **and** not among its job's newest `keep_runs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HistoryRetention {
    /// Days.
    pub keep_days: u32,
    /// Runs per job kept whatever their age.
    pub keep_runs: u32,
}

impl Default for HistoryRetention {
    fn default() -> Self {
        HistoryRetention { keep_days: 90, keep_runs: 100 }
    }
}

/// The history database.
#[derive(Debug)]
pub struct History {
    db: Database,
    path: PathBuf,
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Database { path: path.display().to_string(), reason: e.to_string() }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Record { key: key.to_owned(), reason: e.to_string() })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own records of strings, numbers and maps with string keys: they always serialise.
    serde_json::to_vec(v).unwrap_or_default()
}

impl History {
    /// Opens (or creates) the database at `path`, and marks runs left
    /// `running` or `queued` by a dead process `interrupted` (ended `now`).
    /// Returns the history and the ids of the runs so marked.
    ///
    /// # Errors
    /// [`Error::AlreadyOpen`] when another process has it open,
    /// [`Error::Database`] otherwise.
    pub fn open(path: impl AsRef<Path>, now: DateTime<Utc>) -> Result<(History, Vec<u64>)> {
        let path = path.as_ref();
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::AlreadyOpen { path: path.display().to_string() },
            e => db_err(path, e),
        })?;
        let h = History { db, path: path.to_owned() };
        h.init()?;
        let interrupted = h.mark_interrupted(now)?;
        Ok((h, interrupted))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init(&self) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| db_err(&self.path, e))?;
        {
            tx.open_table(RUNS).map_err(|e| db_err(&self.path, e))?;
            tx.open_table(JOBS).map_err(|e| db_err(&self.path, e))?;
            tx.open_table(STATE).map_err(|e| db_err(&self.path, e))?;
            tx.open_table(META).map_err(|e| db_err(&self.path, e))?;
        }
        tx.commit().map_err(|e| db_err(&self.path, e))
    }

    fn mark_interrupted(&self, now: DateTime<Utc>) -> Result<Vec<u64>> {
        let open: Vec<RunRecord> = self.all_runs()?.into_iter().filter(|r| !r.result.is_final()).collect();
        let mut ids = Vec::new();
        for mut r in open {
            tracing::warn!(run = r.id, job = %r.job, "run left {} by a process that died: interrupted", r.result.name());
            r.result = RunResult::Interrupted;
            r.ended = Some(now);
            r.error.get_or_insert_with(|| "the process running it stopped before it ended".to_owned());
            for v in &mut r.vms {
                if v.result.is_empty() || v.result == "running" {
                    v.result = "interrupted".to_owned();
                }
            }
            ids.push(r.id);
            self.put_run(&r)?;
        }
        Ok(ids)
    }

    fn all_runs(&self) -> Result<Vec<RunRecord>> {
        let tx = self.db.begin_read().map_err(|e| db_err(&self.path, e))?;
        let t = tx.open_table(RUNS).map_err(|e| db_err(&self.path, e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| db_err(&self.path, e))? {
            let (k, v) = item.map_err(|e| db_err(&self.path, e))?;
            out.push(decode(&format!("runs-v1/{}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// A new run record (its id assigned here), written at once.
    ///
    /// # Errors
    /// [`Error::Database`].
    pub fn begin_run(
        &self,
        job: &JobSpec,
        trigger: Trigger,
        scheduled_for: Option<DateTime<Utc>>,
        started: DateTime<Utc>,
        result: RunResult,
    ) -> Result<RunRecord> {
        let tx = self.db.begin_write().map_err(|e| db_err(&self.path, e))?;
        let id = {
            let mut meta = tx.open_table(META).map_err(|e| db_err(&self.path, e))?;
            let id = meta.get("next-run-id").map_err(|e| db_err(&self.path, e))?.map_or(1, |g| g.value());
            meta.insert("next-run-id", id + 1).map_err(|e| db_err(&self.path, e))?;
            id
        };
        let rec = RunRecord {
            id,
            job: job.name.clone(),
            kind: job.kind,
            trigger,
            scheduled_for,
            started,
            ended: None,
            result,
            vms: Vec::new(),
            steps: Vec::new(),
            warnings: Vec::new(),
            error: None,
        };
        {
            let mut runs = tx.open_table(RUNS).map_err(|e| db_err(&self.path, e))?;
            runs.insert(id, encode(&rec).as_slice()).map_err(|e| db_err(&self.path, e))?;
        }
        tx.commit().map_err(|e| db_err(&self.path, e))?;
        Ok(rec)
    }

    /// Writes a run record (new figures, its end).
    ///
    /// # Errors
    /// [`Error::Database`].
    pub fn put_run(&self, r: &RunRecord) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| db_err(&self.path, e))?;
        {
            let mut runs = tx.open_table(RUNS).map_err(|e| db_err(&self.path, e))?;
            runs.insert(r.id, encode(r).as_slice()).map_err(|e| db_err(&self.path, e))?;
            let mut meta = tx.open_table(META).map_err(|e| db_err(&self.path, e))?;
            let next = meta.get("next-run-id").map_err(|e| db_err(&self.path, e))?.map_or(1, |g| g.value());
            if r.id >= next {
                meta.insert("next-run-id", r.id + 1).map_err(|e| db_err(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| db_err(&self.path, e))
    }

    /// One run.
    ///
    /// # Errors
    /// [`Error::NoSuchRun`], [`Error::Database`].
    pub fn run(&self, id: u64) -> Result<RunRecord> {
        let tx = self.db.begin_read().map_err(|e| db_err(&self.path, e))?;
        let t = tx.open_table(RUNS).map_err(|e| db_err(&self.path, e))?;
        let v = t.get(id).map_err(|e| db_err(&self.path, e))?.ok_or(Error::NoSuchRun(id))?;
        decode(&format!("runs-v1/{id}"), v.value())
    }

    /// Runs matching `f`, newest first.
    ///
    /// # Errors
    /// [`Error::Database`], [`Error::Record`].
    pub fn runs(&self, f: &RunFilter) -> Result<Vec<RunRecord>> {
        let limit = f.limit.unwrap_or(100).min(10_000);
        let tx = self.db.begin_read().map_err(|e| db_err(&self.path, e))?;
        let t = tx.open_table(RUNS).map_err(|e| db_err(&self.path, e))?;
        let upper = f.before_id.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for item in t.range(..upper).map_err(|e| db_err(&self.path, e))?.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| db_err(&self.path, e))?;
            let r: RunRecord = decode(&format!("runs-v1/{}", k.value()), v.value())?;
            if f.job.as_ref().is_some_and(|j| *j != r.job)
                || f.result.is_some_and(|x| x != r.result)
                || f.vm.as_ref().is_some_and(|vm| !r.vms.iter().any(|v| v.vm == *vm))
                || f.since.is_some_and(|s| r.started < s)
            {
                continue;
            }
            out.push(r);
        }
        Ok(out)
    }

    /// The newest run of `job` with a final result, if any.
    ///
    /// # Errors
    /// As [`History::runs`].
    pub fn last_finished(&self, job: &str) -> Result<Option<RunRecord>> {
        let tx = self.db.begin_read().map_err(|e| db_err(&self.path, e))?;
        let t = tx.open_table(RUNS).map_err(|e| db_err(&self.path, e))?;
        for item in t.iter().map_err(|e| db_err(&self.path, e))?.rev() {
            let (k, v) = item.map_err(|e| db_err(&self.path, e))?;
            let r: RunRecord = decode(&format!("runs-v1/{}", k.value()), v.value())?;
            if r.job == job && r.result.is_final() && r.result != RunResult::Skipped {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Deletes runs under `keep` (never a run not yet ended). Returns how
    /// many were deleted.
    ///
    /// # Errors
    /// [`Error::Database`].
    pub fn prune(&self, keep: HistoryRetention, now: DateTime<Utc>) -> Result<usize> {
        let cutoff = now - chrono::Duration::days(i64::from(keep.keep_days));
        let mut per_job: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
        let mut doomed = Vec::new();
        // Newest first, so the first `keep_runs` of each job are the ones kept.
        let mut all = self.all_runs()?;
        all.reverse();
        for r in all {
            let n = per_job.entry(r.job.clone()).or_default();
            *n += 1;
            if r.result.is_final() && *n > keep.keep_runs && r.started < cutoff {
                doomed.push(r.id);
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let tx = self.db.begin_write().map_err(|e| db_err(&self.path, e))?;
        {
            let mut runs = tx.open_table(RUNS).map_err(|e| db_err(&self.path, e))?;
            for id in &doomed {
                runs.remove(*id).map_err(|e| db_err(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| db_err(&self.path, e))?;
        Ok(doomed.len())
    }

    /// Stores a job definition (replacing one of that name).
    ///
    /// # Errors
    /// [`Error::Database`].
    pub fn put_job(&self, job: &JobSpec) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| db_err(&self.path, e))?;
        {
            let mut t = tx.open_table(JOBS).map_err(|e| db_err(&self.path, e))?;
            t.insert(job.name.as_str(), encode(job).as_slice()).map_err(|e| db_err(&self.path, e))?;
        }
        tx.commit().map_err(|e| db_err(&self.path, e))
    }

    /// Deletes a job definition and its state (its runs stay in the
    /// history). Returns whether it existed.
    ///
    /// # Errors
    /// [`Error::Database`].
    pub fn remove_job(&self, name: &str) -> Result<bool> {
        let tx = self.db.begin_write().map_err(|e| db_err(&self.path, e))?;
        let existed = {
            let mut t = tx.open_table(JOBS).map_err(|e| db_err(&self.path, e))?;
            let existed = t.remove(name).map_err(|e| db_err(&self.path, e))?.is_some();
            let mut s = tx.open_table(STATE).map_err(|e| db_err(&self.path, e))?;
            s.remove(name).map_err(|e| db_err(&self.path, e))?;
            existed
        };
        tx.commit().map_err(|e| db_err(&self.path, e))?;
        Ok(existed)
    }

    /// Every stored job definition, by name.
    ///
    /// # Errors
    /// [`Error::Database`], [`Error::Record`].
    pub fn jobs(&self) -> Result<Vec<JobSpec>> {
        let tx = self.db.begin_read().map_err(|e| db_err(&self.path, e))?;
        let t = tx.open_table(JOBS).map_err(|e| db_err(&self.path, e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| db_err(&self.path, e))? {
            let (k, v) = item.map_err(|e| db_err(&self.path, e))?;
            out.push(decode(&format!("jobs-v1/{}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// A job's scheduling state.
    ///
    /// # Errors
    /// [`Error::Database`], [`Error::Record`].
    pub fn job_state(&self, name: &str) -> Result<JobState> {
        let tx = self.db.begin_read().map_err(|e| db_err(&self.path, e))?;
        let t = tx.open_table(STATE).map_err(|e| db_err(&self.path, e))?;
        match t.get(name).map_err(|e| db_err(&self.path, e))? {
            Some(v) => decode(&format!("job-state-v1/{name}"), v.value()),
            None => Ok(JobState::default()),
        }
    }

    /// Writes a job's scheduling state.
    ///
    /// # Errors
    /// [`Error::Database`].
    pub fn put_job_state(&self, name: &str, s: &JobState) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| db_err(&self.path, e))?;
        {
            let mut t = tx.open_table(STATE).map_err(|e| db_err(&self.path, e))?;
            t.insert(name, encode(s).as_slice()).map_err(|e| db_err(&self.path, e))?;
        }
        tx.commit().map_err(|e| db_err(&self.path, e))
    }

    /// Whether the history holds no run at all (a new or lost database: the
    /// moment to rebuild from the store).
    ///
    /// # Errors
    /// [`Error::Database`].
    pub fn is_empty(&self) -> Result<bool> {
        let tx = self.db.begin_read().map_err(|e| db_err(&self.path, e))?;
        let t = tx.open_table(RUNS).map_err(|e| db_err(&self.path, e))?;
        t.is_empty().map_err(|e| db_err(&self.path, e))
    }
}

/// A version found in the store, as [`History::rebuild`] takes it.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct RebuiltVersion {
    /// The VM's name.
    pub vm: String,
    /// The version's id.
    pub version: String,
    /// When it was made.
    pub time: DateTime<Utc>,
    /// Per disk, the figures the version records.
    pub disks: Vec<DiskRun>,
    /// The newest verification recorded in the store: when, depth
    /// (`quick`/`full`), whether it was found whole.
    pub verification: Option<(DateTime<Utc>, String, bool)>,
}

impl RebuiltVersion {
    /// A version of `vm` made at `time`.
    pub fn new(vm: impl Into<String>, version: impl Into<String>, time: DateTime<Utc>) -> RebuiltVersion {
        RebuiltVersion { vm: vm.into(), version: version.into(), time, ..RebuiltVersion::default() }
    }
}

/// The job name of runs rebuilt from the store.
pub const REBUILT_JOB: &str = "rebuilt-from-store";

impl History {
    /// Rebuilds the history of a lost database from what the store knows:
    /// one run per version (job [`REBUILT_JOB`], trigger `rebuilt`, result
    /// `success`, started and ended at the version's time, with the
    /// per-disk figures the version records; what the store does not keep —
    /// the job's name, warnings, chain steps other than verification — is
    /// lost), with
    /// its newest verification as a `verify` step (and result `failed` when
    /// that found damage). Versions already in the history (by id) are
    /// skipped. Returns how many runs were added.
    ///
    /// # Errors
    /// [`Error::Database`].
    pub fn rebuild(&self, versions: &[RebuiltVersion]) -> Result<usize> {
        let known: std::collections::HashSet<String> =
            self.all_runs()?.iter().flat_map(|r| r.vms.iter().filter_map(|v| v.version.clone())).collect();
        let mut sorted: Vec<&RebuiltVersion> = versions.iter().filter(|v| !known.contains(&v.version)).collect();
        sorted.sort_by_key(|v| v.time);
        let spec = JobSpec::new(REBUILT_JOB, crate::JobKind::Backup);
        for v in &sorted {
            let mut r = self.begin_run(&spec, Trigger::Rebuilt, None, v.time, RunResult::Success)?;
            r.ended = Some(v.time);
            r.vms.push(VmRun {
                vm: v.vm.clone(),
                version: Some(v.version.clone()),
                result: "success".into(),
                read_bytes: v.disks.iter().map(|d| d.read_bytes).sum(),
                new_bytes: v.disks.iter().map(|d| d.new_bytes).sum(),
                stored_bytes: v.disks.iter().map(|d| d.stored_bytes).sum(),
                warnings: v
                    .disks
                    .iter()
                    .filter_map(|d| {
                        d.fallback_reason.as_ref().map(|f| format!("disk {}: read in full: {f}", d.position))
                    })
                    .collect(),
                disks: v.disks.clone(),
                ..VmRun::default()
            });
            if let Some((t, depth, ok)) = &v.verification {
                r.steps.push(StepRun {
                    step: "verify".into(),
                    result: if *ok { "success" } else { "failed" }.into(),
                    detail: serde_json::json!({ "time": t, "depth": depth, "ok": ok, "version": v.version }),
                    error: (!ok).then(|| "the store's verification found damage".to_owned()),
                });
                if !ok {
                    r.result = RunResult::Failed;
                }
            }
            self.put_run(&r)?;
        }
        Ok(sorted.len())
    }
}
