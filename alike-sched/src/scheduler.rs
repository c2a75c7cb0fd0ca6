//! The scheduler: jobs, their due times, their runs.
//!
//! Rules, in one place:
//! - **Due times** come from each enabled job's [`crate::Schedule`]. The
//!   newest due time handled is kept per job in the database
//!   ([`crate::JobState`]), so a restart resumes where the last process
//!   stopped. A job seen for the first time starts counting from then.
//! - **Missed runs**: when the newest due time is seen more than
//!   [`JobSpec::grace_seconds`] late (the scheduler was down), the job's
//!   [`MissedRule`] decides: one catch-up run, or one `skipped` record.
//!   However many times were missed, at most one run follows.
//! - **No overlap**: a job has at most one run queued or running. A due
//!   time that comes while it runs is recorded `skipped`, and
//!   [`Scheduler::run_now`] refuses with [`Error::AlreadyRunning`].
//! - **Per-VM serialisation**: a run takes all its VM keys
//!   ([`JobSpec::vm_keys`]) before it starts, or waits queued (event
//!   `job_queued`) while another run holds one; keys are taken all at once
//!   or not at all, in queue order, so nothing deadlocks. The backup path
//!   below also locks each VM it backs up ([`VmLocks::global`]).
//! - **Concurrency**: at most [`SchedulerOptions::max_concurrent`] runs at
//!   once, each on its own thread.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use alike_core::{CancelToken, Recover};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    Clock, Error, EventBus, EventKind, History, HistoryRetention, JobOrigin, JobSpec, JobState, MissedRule, Result,
    RunRecord, RunResult, Schedule, StepRun, Trigger, VmGuard, VmLocks, VmRun,
};

/// What runs a job: the facade's runner does backups, the chain,
/// validation and housekeeping; tests bring their own.
pub trait Runner: Send + Sync {
    /// Runs `job`, reporting VMs, steps, warnings and progress through
    /// `ctx` and checking `ctx.cancel_token()`. `Err` fails the run as a
    /// whole (a VM's failure is reported with [`RunContext::vm_done`] and
    /// the run goes on with the next VM).
    ///
    /// # Errors
    /// What failed the run, as a message.
    fn run(&self, job: &JobSpec, ctx: &RunContext) -> std::result::Result<(), String>;
}

/// Options of a [`Scheduler`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SchedulerOptions {
    /// Runs at once at most (default 4).
    pub max_concurrent: usize,
    /// How often the loop started by [`Scheduler::start`] looks at the clock (default 1 s).
    pub tick: Duration,
    /// The history's retention, applied hourly by the loop.
    pub retention: HistoryRetention,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions { max_concurrent: 4, tick: Duration::from_secs(1), retention: HistoryRetention::default() }
    }
}

/// A job as the scheduler sees it now.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct JobStatus {
    /// The definition.
    pub spec: JobSpec,
    /// Its next due time, if scheduled and enabled.
    pub next_run: Option<DateTime<Utc>>,
    /// What the schedule says in English.
    pub schedule_text: Option<String>,
    /// The run queued or running now.
    pub active_run: Option<u64>,
    /// The newest finished run.
    pub last_run: Option<RunRecord>,
}

struct JobEntry {
    spec: JobSpec,
    schedule: Option<Schedule>,
}

struct Active {
    run: u64,
    cancel: CancelToken,
    record: Arc<Mutex<RunRecord>>,
    started: bool,
    announced_wait: bool,
}

#[derive(Default)]
struct State {
    jobs: BTreeMap<String, JobEntry>,
    /// By job name.
    active: BTreeMap<String, Active>,
    /// Job names in queue order.
    queue: VecDeque<String>,
    threads: Vec<JoinHandle<()>>,
    running: usize,
    stopping: bool,
    loop_thread: Option<JoinHandle<()>>,
}

struct Inner {
    history: History,
    clock: Arc<dyn Clock>,
    runner: Arc<dyn Runner>,
    events: Arc<EventBus>,
    locks: Arc<VmLocks>,
    opts: SchedulerOptions,
    state: Mutex<State>,
    wake: Condvar,
}

/// Jobs on schedules, their runs and history, and their events.
///
/// ```
/// use std::sync::Arc;
/// use alike_sched::{JobKind, JobSpec, ManualClock, RunContext, RunResult, Scheduler, SchedulerOptions};
///
/// struct Hello;
/// impl alike_sched::Runner for Hello {
///     fn run(&self, job: &JobSpec, ctx: &RunContext) -> Result<(), String> {
///         ctx.warning(None, format!("{} has nothing to do", job.name));
///         Ok(())
///     }
/// }
/// let dir = tempfile::tempdir().unwrap();
/// let clock = Arc::new(ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap()));
/// let s = Scheduler::open(dir.path().join("services.redb"), Arc::new(Hello), clock.clone(), SchedulerOptions::default())?;
/// let mut job = JobSpec::new("hello", JobKind::Housekeeping);
/// job.store = Some("main".into());
/// job.schedule = Some("0 * * * *".into());
/// s.put_job(job)?;
/// s.tick()?; // first sight: counts from now
/// clock.advance(chrono::Duration::minutes(61));
/// let started = s.tick()?;
/// assert_eq!(started.len(), 1);
/// s.wait_idle(std::time::Duration::from_secs(10));
/// assert_eq!(s.history().run(started[0])?.result, RunResult::Warning);
/// # Ok::<(), alike_sched::Error>(())
/// ```
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("history", &self.inner.history.path()).finish()
    }
}

/// What a [`Runner`] reports through while it runs a job.
pub struct RunContext {
    inner: Arc<Inner>,
    record: Arc<Mutex<RunRecord>>,
    cancel: CancelToken,
    id: u64,
    job: String,
    last_progress: Mutex<HashMap<(String, u32), Instant>>,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext").field("run", &self.id).field("job", &self.job).finish()
    }
}

impl RunContext {
    /// The run's id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Cancelled when a user cancels the run or the scheduler stops.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }
    /// The scheduler's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }
    /// The events bus (to emit events of a kind the helpers below lack).
    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }
    /// The events bus, shared (for a progress callback that outlives a borrow).
    pub fn event_bus(&self) -> Arc<EventBus> {
        self.inner.events.clone()
    }
    /// The scheduler's clock, shared.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }
    fn emit(&self, kind: EventKind) {
        self.inner.events.emit(self.id, &self.job, kind, self.now());
    }
    fn persist(&self) {
        let r = self.record.locked().clone();
        if let Err(e) = self.inner.history.put_run(&r) {
            tracing::error!(run = self.id, "cannot record the run's progress: {e}");
        }
    }
    /// Work on `vm` starts.
    pub fn vm_started(&self, vm: &str) {
        self.emit(EventKind::VmStarted { vm: vm.to_owned() });
    }
    /// Progress of one disk; emitted at most four times a second per disk
    /// (and always when done reaches total).
    pub fn progress(&self, vm: &str, disk: u32, phase: &str, done: u64, total: u64) {
        {
            let mut last = self.last_progress.locked();
            let now = Instant::now();
            let key = (vm.to_owned(), disk);
            if done < total && last.get(&key).is_some_and(|t| now.duration_since(*t) < Duration::from_millis(250)) {
                return;
            }
            last.insert(key, now);
        }
        self.emit(EventKind::Progress { vm: vm.to_owned(), disk, phase: phase.to_owned(), done, total });
    }
    /// One VM done: recorded in the history at once (a run killed later
    /// keeps it), with `vm_done`, and `warning`/`failed` events for its
    /// warnings and error.
    pub fn vm_done(&self, v: VmRun) {
        for w in &v.warnings {
            self.emit(EventKind::Warning { vm: Some(v.vm.clone()), message: w.clone() });
        }
        if let Some(e) = &v.error {
            self.emit(EventKind::Failed { vm: Some(v.vm.clone()), error: e.clone() });
        }
        self.emit(EventKind::VmDone {
            vm: v.vm.clone(),
            result: v.result.clone(),
            version: v.version.clone(),
            read_bytes: v.read_bytes,
            stored_bytes: v.stored_bytes,
        });
        self.record.locked().vms.push(v);
        self.persist();
    }
    /// A warning not about one VM's backup (or about one, with `vm`).
    pub fn warning(&self, vm: Option<&str>, message: impl Into<String>) {
        let message = message.into();
        self.emit(EventKind::Warning { vm: vm.map(str::to_owned), message: message.clone() });
        self.record.locked().warnings.push(match vm {
            Some(vm) => format!("{vm}: {message}"),
            None => message,
        });
        self.persist();
    }
    /// A chain or job step ended.
    pub fn step_done(&self, s: StepRun) {
        if let Some(e) = &s.error {
            self.emit(EventKind::Failed { vm: None, error: format!("{}: {e}", s.step) });
        }
        self.emit(EventKind::StepDone { step: s.step.clone(), result: s.result.clone() });
        self.record.locked().steps.push(s);
        self.persist();
    }
    /// Applies the history's retention ([`SchedulerOptions::retention`])
    /// now, as the loop does hourly; a housekeeping job calls it. Returns
    /// how many runs were deleted (never a run still going, this one
    /// included).
    ///
    /// # Errors
    /// [`Error::Database`].
    pub fn prune_history(&self) -> Result<usize> {
        self.inner.history.prune(self.inner.opts.retention, self.now())
    }
    /// The history's retention the scheduler applies.
    pub fn history_retention(&self) -> HistoryRetention {
        self.inner.opts.retention
    }
    /// The run's record so far.
    pub fn record(&self) -> RunRecord {
        self.record.locked().clone()
    }
}

impl Scheduler {
    /// Opens the database at `path` (see [`History::open`]: runs a dead
    /// process left are marked interrupted) and loads its jobs.
    ///
    /// # Errors
    /// [`Error::AlreadyOpen`] when another process runs on this database;
    /// database errors; a stored job that no longer parses is skipped with
    /// an error in the log, not refused.
    pub fn open(
        path: impl AsRef<Path>,
        runner: Arc<dyn Runner>,
        clock: Arc<dyn Clock>,
        opts: SchedulerOptions,
    ) -> Result<Scheduler> {
        let (history, interrupted) = History::open(path, clock.now())?;
        if !interrupted.is_empty() {
            tracing::warn!(runs = ?interrupted, "runs interrupted by the previous process's end");
        }
        let mut state = State::default();
        for spec in history.jobs()? {
            match spec.schedule() {
                Ok(schedule) => {
                    state.jobs.insert(spec.name.clone(), JobEntry { spec, schedule });
                }
                Err(e) => tracing::error!("stored job skipped: {e}"),
            }
        }
        let inner = Inner {
            history,
            clock,
            runner,
            events: Arc::new(EventBus::default()),
            locks: Arc::new(VmLocks::default()),
            opts,
            state: Mutex::new(state),
            wake: Condvar::new(),
        };
        Ok(Scheduler { inner: Arc::new(inner) })
    }

    /// The history (runs, jobs, job state).
    pub fn history(&self) -> &History {
        &self.inner.history
    }

    /// The events of every run.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.inner.events
    }

    /// Adds or replaces a job (checked first), stored in the database.
    ///
    /// # Errors
    /// The job's check, database errors.
    pub fn put_job(&self, spec: JobSpec) -> Result<()> {
        spec.check()?;
        let schedule = spec.schedule()?;
        self.inner.history.put_job(&spec)?;
        let mut st = self.inner.state.locked();
        let changed_schedule = st
            .jobs
            .get(&spec.name)
            .is_some_and(|old| old.spec.schedule != spec.schedule || old.spec.timezone != spec.timezone);
        if changed_schedule {
            // A new schedule counts from now: no catch-up of the old one's times.
            self.inner.history.put_job_state(&spec.name, &JobState { last_due: Some(self.inner.clock.now()) })?;
        }
        st.jobs.insert(spec.name.clone(), JobEntry { spec, schedule });
        drop(st);
        self.inner.wake.notify_all();
        Ok(())
    }

    /// Installs the configuration file's jobs at start: the stored jobs
    /// become `specs` and the stored jobs made through the API
    /// ([`JobOrigin::Api`]) whose names `specs` do not use — the file wins
    /// on a name clash; a file's job no longer in `specs` is removed (its
    /// history stays).
    ///
    /// # Errors
    /// As [`Scheduler::put_job`]; nothing changes when one is refused.
    pub fn set_jobs(&self, specs: Vec<JobSpec>) -> Result<()> {
        for s in &specs {
            s.check()?;
        }
        let names: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let old: Vec<(String, JobOrigin)> =
            self.inner.state.locked().jobs.values().map(|e| (e.spec.name.clone(), e.spec.origin)).collect();
        for (name, origin) in old {
            if !names.contains(name.as_str()) && origin != JobOrigin::Api {
                self.remove_job(&name)?;
            }
        }
        for s in specs {
            self.put_job(s)?;
        }
        Ok(())
    }

    /// Removes a job (its history stays). A run of it goes on to its end.
    ///
    /// # Errors
    /// [`Error::NoSuchJob`], database errors.
    pub fn remove_job(&self, name: &str) -> Result<()> {
        let existed = self.inner.state.locked().jobs.remove(name).is_some();
        let stored = self.inner.history.remove_job(name)?;
        if existed || stored { Ok(()) } else { Err(Error::NoSuchJob(name.to_owned())) }
    }

    /// One job's definition.
    ///
    /// # Errors
    /// [`Error::NoSuchJob`].
    pub fn job(&self, name: &str) -> Result<JobSpec> {
        self.inner
            .state
            .locked()
            .jobs
            .get(name)
            .map(|e| e.spec.clone())
            .ok_or_else(|| Error::NoSuchJob(name.to_owned()))
    }

    /// Every job with its next due time and last run.
    ///
    /// # Errors
    /// Database errors.
    pub fn jobs(&self) -> Result<Vec<JobStatus>> {
        let now = self.inner.clock.now();
        let list: Vec<(JobSpec, Option<Schedule>, Option<u64>)> = {
            let st = self.inner.state.locked();
            st.jobs
                .values()
                .map(|e| (e.spec.clone(), e.schedule.clone(), st.active.get(&e.spec.name).map(|a| a.run)))
                .collect()
        };
        let mut out = Vec::new();
        for (spec, schedule, active_run) in list {
            let next_run = match (&schedule, spec.enabled) {
                (Some(s), true) => {
                    let from = self.inner.history.job_state(&spec.name)?.last_due.map_or(now, |t| t.max(now));
                    s.next_after(from)
                }
                _ => None,
            };
            let last_run = self.inner.history.last_finished(&spec.name)?;
            out.push(JobStatus {
                schedule_text: schedule.as_ref().map(Schedule::describe),
                spec,
                next_run,
                active_run,
                last_run,
            });
        }
        Ok(out)
    }

    /// Looks at the clock once: records due times, queues due runs (or
    /// records them skipped), and starts queued runs whose VMs are free.
    /// Returns the ids of the runs queued by this call. The loop of
    /// [`Scheduler::start`] calls it every tick; tests call it after moving
    /// a [`crate::ManualClock`].
    ///
    /// # Errors
    /// Database errors; [`Error::Thread`].
    pub fn tick(&self) -> Result<Vec<u64>> {
        let now = self.inner.clock.now();
        let due: Vec<(JobSpec, Schedule)> = {
            let st = self.inner.state.locked();
            if st.stopping {
                return Err(Error::Stopped);
            }
            st.jobs
                .values()
                .filter(|e| e.spec.enabled)
                .filter_map(|e| e.schedule.clone().map(|s| (e.spec.clone(), s)))
                .collect()
        };
        let mut queued = Vec::new();
        for (spec, schedule) in due {
            let h = &self.inner.history;
            let mut state = h.job_state(&spec.name)?;
            let Some(last) = state.last_due else {
                state.last_due = Some(now);
                h.put_job_state(&spec.name, &state)?;
                continue;
            };
            let Some(latest) = schedule.latest_due(last, now) else { continue };
            state.last_due = Some(latest);
            h.put_job_state(&spec.name, &state)?;
            let late = now - latest > chrono::Duration::seconds(i64::try_from(spec.grace_seconds).unwrap_or(i64::MAX));
            if late && spec.missed == MissedRule::Skip {
                self.record_skipped(
                    &spec,
                    latest,
                    now,
                    "missed while the scheduler was not running (missed = \"skip\")",
                )?;
                continue;
            }
            let trigger = if late { Trigger::CatchUp } else { Trigger::Schedule };
            match self.enqueue(&spec, trigger, Some(latest)) {
                Ok(id) => queued.push(id),
                Err(Error::AlreadyRunning(_)) => {
                    self.record_skipped(&spec, latest, now, "the previous run was still running")?;
                }
                Err(e) => return Err(e),
            }
        }
        self.start_ready()?;
        Ok(queued)
    }

    fn record_skipped(&self, spec: &JobSpec, due: DateTime<Utc>, now: DateTime<Utc>, why: &str) -> Result<()> {
        let trigger = Trigger::Schedule;
        let mut r = self.inner.history.begin_run(spec, trigger, Some(due), now, RunResult::Skipped)?;
        r.ended = Some(now);
        r.warnings.push(format!("due {}: {why}", due.to_rfc3339()));
        self.inner.history.put_run(&r)?;
        self.inner.events.emit(r.id, &spec.name, EventKind::Warning { vm: None, message: r.warnings[0].clone() }, now);
        self.inner.events.finished(&r, now);
        Ok(())
    }

    fn enqueue(&self, spec: &JobSpec, trigger: Trigger, due: Option<DateTime<Utc>>) -> Result<u64> {
        let now = self.inner.clock.now();
        let mut st = self.inner.state.locked();
        if st.stopping {
            return Err(Error::Stopped);
        }
        if st.active.contains_key(&spec.name) {
            return Err(Error::AlreadyRunning(spec.name.clone()));
        }
        let rec = self.inner.history.begin_run(spec, trigger, due, now, RunResult::Queued)?;
        let id = rec.id;
        st.active.insert(
            spec.name.clone(),
            Active {
                run: id,
                cancel: CancelToken::new(),
                record: Arc::new(Mutex::new(rec)),
                started: false,
                announced_wait: false,
            },
        );
        st.queue.push_back(spec.name.clone());
        Ok(id)
    }

    /// Runs a job now (trigger `manual`), queued behind runs holding its VMs.
    /// Returns the run's id.
    ///
    /// # Errors
    /// [`Error::NoSuchJob`], [`Error::AlreadyRunning`], [`Error::Stopped`],
    /// database errors.
    pub fn run_now(&self, name: &str) -> Result<u64> {
        let spec = self.job(name)?;
        let id = self.enqueue(&spec, Trigger::Manual, None)?;
        self.start_ready()?;
        Ok(id)
    }

    /// Cancels a queued or running run: a queued one ends `cancelled` at
    /// once, a running one when its runner next checks its token.
    ///
    /// # Errors
    /// [`Error::NoSuchRun`] when no such run is active.
    pub fn cancel(&self, run: u64) -> Result<()> {
        let mut st = self.inner.state.locked();
        let Some(job) = st.active.iter().find(|(_, a)| a.run == run).map(|(j, _)| j.clone()) else {
            return Err(Error::NoSuchRun(run));
        };
        let Some(a) = st.active.get(&job) else { return Err(Error::NoSuchRun(run)) };
        a.cancel.cancel();
        if !a.started {
            let record = a.record.clone();
            st.active.remove(&job);
            st.queue.retain(|j| *j != job);
            drop(st);
            let now = self.inner.clock.now();
            let mut r = record.locked().clone();
            r.result = RunResult::Cancelled;
            r.ended = Some(now);
            self.inner.history.put_run(&r)?;
            self.inner.events.finished(&r, now);
        }
        Ok(())
    }

    /// The record of a run, live while it runs.
    ///
    /// # Errors
    /// [`Error::NoSuchRun`], database errors.
    pub fn run(&self, id: u64) -> Result<RunRecord> {
        if let Some(a) = self.inner.state.locked().active.values().find(|a| a.run == id) {
            return Ok(a.record.locked().clone());
        }
        self.inner.history.run(id)
    }

    /// The runs queued or running now.
    pub fn active_runs(&self) -> Vec<RunRecord> {
        self.inner.state.locked().active.values().map(|a| a.record.locked().clone()).collect()
    }

    fn start_ready(&self) -> Result<()> {
        start_ready(&self.inner)
    }
}

fn start_ready(inner: &Arc<Inner>) -> Result<()> {
    let this = inner;
    let mut st = this.state.locked();
    st.threads.retain(|t| !t.is_finished());
    let mut i = 0;
    while i < st.queue.len() {
        if st.stopping || st.running >= this.opts.max_concurrent.max(1) {
            break;
        }
        let job = st.queue[i].clone();
        let Some(entry) = st.jobs.get(&job) else {
            // The job was removed while queued: its run ends cancelled.
            st.queue.remove(i);
            if let Some(a) = st.active.remove(&job) {
                let mut r = a.record.locked().clone();
                r.result = RunResult::Cancelled;
                r.ended = Some(this.clock.now());
                r.error = Some("the job was removed".into());
                this.history.put_run(&r)?;
            }
            continue;
        };
        let spec = entry.spec.clone();
        let run_id = st.active.get(&job).map_or(0, |a| a.run);
        match this.locks.try_acquire_all(&format!("run {run_id} ({job})"), &spec.vm_keys()) {
            Ok(guard) => {
                st.queue.remove(i);
                st.running += 1;
                let Some(a) = st.active.get_mut(&job) else { continue };
                a.started = true;
                let (record, cancel) = (a.record.clone(), a.cancel.clone());
                let inner = this.clone();
                let t = alike_core::spawn(&format!("alike-run-{run_id}"), move || {
                    run_thread(&inner, &spec, record, cancel, guard);
                })
                .map_err(|e| Error::Thread(e.to_string()))?;
                st.threads.push(t);
            }
            Err(busy) => {
                if let Some(a) = st.active.get_mut(&job)
                    && !a.announced_wait
                {
                    a.announced_wait = true;
                    let waiting_for = busy.iter().map(|(k, h)| format!("{k} (held by {h})")).collect();
                    this.events.emit(run_id, &job, EventKind::JobQueued { waiting_for }, this.clock.now());
                }
                i += 1;
            }
        }
    }
    Ok(())
}

impl Scheduler {
    /// Starts the loop thread: [`Scheduler::tick`] every
    /// [`SchedulerOptions::tick`] and whenever a run ends, and the
    /// history's retention every hour.
    ///
    /// # Errors
    /// [`Error::Thread`].
    pub fn start(self: &Arc<Self>) -> Result<()> {
        let me = Arc::downgrade(self);
        let tick = self.inner.opts.tick;
        let t = alike_core::spawn("alike-scheduler", move || {
            let mut last_prune: Option<Instant> = None;
            loop {
                let Some(s) = me.upgrade() else { return };
                if s.inner.state.locked().stopping {
                    return;
                }
                if let Err(e) = s.tick() {
                    if matches!(e, Error::Stopped) {
                        return;
                    }
                    tracing::error!("scheduler tick: {e}");
                }
                if last_prune.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                    last_prune = Some(Instant::now());
                    match s.inner.history.prune(s.inner.opts.retention, s.inner.clock.now()) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(runs = n, "history retention: runs deleted"),
                        Err(e) => tracing::error!("history retention: {e}"),
                    }
                }
                let st = s.inner.state.locked();
                let _unused = s.inner.wake.wait_timeout(st, tick);
            }
        })
        .map_err(|e| Error::Thread(e.to_string()))?;
        self.inner.state.locked().loop_thread = Some(t);
        Ok(())
    }

    /// Waits until no run is queued or running, at most `timeout`. Returns
    /// whether that was reached.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.state.locked();
        loop {
            if st.active.is_empty() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .inner
                .wake
                .wait_timeout(st, left.min(Duration::from_millis(100)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Stops: no new run starts, queued runs end cancelled, running runs
    /// are cancelled when `cancel_running` (else they go on), and the
    /// loop and run threads are joined (at most `timeout`; a runner that
    /// does not stop in time is left to finish and will be marked
    /// interrupted by the next start if the process exits first).
    pub fn stop(&self, cancel_running: bool, timeout: Duration) {
        let (queued, loop_thread) = {
            let mut st = self.inner.state.locked();
            st.stopping = true;
            let queued: Vec<u64> = st.active.values().filter(|a| !a.started).map(|a| a.run).collect();
            if cancel_running {
                for a in st.active.values() {
                    a.cancel.cancel();
                }
            }
            (queued, st.loop_thread.take())
        };
        self.inner.wake.notify_all();
        for id in queued {
            // Queued runs are in `active` and not started: `cancel` ends them.
            let mut st = self.inner.state.locked();
            st.stopping = true;
            drop(st);
            let _ = self.cancel(id);
        }
        let _ = self.wait_idle(timeout);
        // The loop thread may be the one dropping the last handle.
        if let Some(t) = loop_thread
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut self.inner.state.locked().threads);
        let deadline = Instant::now() + timeout;
        for t in threads {
            // A run that ended is joined (so the database is closed when the
            // scheduler is dropped); one still going after `timeout` is left.
            if t.thread().id() == std::thread::current().id() {
                continue;
            }
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Scheduler {
    /// Stops as [`Scheduler::stop`] does, cancelling running runs and
    /// waiting up to 30 s for them.
    fn drop(&mut self) {
        if Arc::strong_count(&self.inner) > 0 {
            self.stop(true, Duration::from_secs(30));
        }
    }
}

fn run_thread(inner: &Arc<Inner>, spec: &JobSpec, record: Arc<Mutex<RunRecord>>, cancel: CancelToken, guard: VmGuard) {
    let id = record.locked().id;
    let span = tracing::info_span!("job", job = %spec.name, run = id);
    let _enter = span.enter();
    let now = inner.clock.now();
    {
        let mut r = record.locked();
        r.result = RunResult::Running;
        r.started = now;
    }
    let ctx = RunContext {
        inner: inner.clone(),
        record: record.clone(),
        cancel: cancel.clone(),
        id,
        job: spec.name.clone(),
        last_progress: Mutex::new(HashMap::new()),
    };
    ctx.persist();
    inner.events.emit(id, &spec.name, EventKind::JobStarted, now);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.runner.run(spec, &ctx)))
        .unwrap_or_else(|_| Err("the runner panicked".to_owned()));
    drop(guard);
    let end = inner.clock.now();
    let final_record = {
        let mut r = record.locked();
        r.ended = Some(end);
        r.result = if cancel.is_cancelled() {
            RunResult::Cancelled
        } else if let Err(e) = &outcome {
            r.error = Some(e.clone());
            RunResult::Failed
        } else if r.vms.iter().any(|v| v.result == "failed") || r.steps.iter().any(|s| s.result == "failed") {
            RunResult::Failed
        } else if !r.warnings.is_empty()
            || r.vms.iter().any(|v| v.result == "warning" || !v.warnings.is_empty())
            || r.steps.iter().any(|s| s.result == "warning")
        {
            RunResult::Warning
        } else {
            RunResult::Success
        };
        r.clone()
    };
    if let (Err(e), false) = (&outcome, cancel.is_cancelled()) {
        inner.events.emit(id, &spec.name, EventKind::Failed { vm: None, error: e.clone() }, end);
    }
    if let Err(e) = inner.history.put_run(&final_record) {
        tracing::error!(run = id, "cannot record the run's end: {e}");
    }
    {
        let mut st = inner.state.locked();
        st.active.remove(&spec.name);
        st.running = st.running.saturating_sub(1);
    }
    inner.events.finished(&final_record, end);
    inner.wake.notify_all();
    // Queued runs waiting for these VMs may start now.
    if let Err(e) = start_ready(inner) {
        tracing::error!("starting queued runs: {e}");
    }
}
