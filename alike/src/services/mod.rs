//! The services: jobs on schedules, their history, events and
//! notifications, over the engine's real operations.
//!
//! [`Services`] joins `alike-sched`'s [`Scheduler`] (schedules, missed-run
//! and overlap rules, per-VM serialisation, the redb history, events) to
//! this crate's operations through one runner ([`EngineRunner`]): a
//! **backup** job backs up its VMs over the hypervisor seam
//! ([`Store::backup_vm`], which also takes the VM's lock, so that two
//! backups of one VM never run together, scheduled or not) and then runs
//! the chain — retention ([`Store::prune`]) → vault ([`Store::vault`]) →
//! verification of each new version ([`Store::verify`], recorded in the
//! store) —, each step optional; a **validation** job verifies a store's
//! versions, those verified longest ago first, within a per-run byte
//! budget (a full validation spread over nights); a **housekeeping** job
//! applies retention and collects garbage; a **vault** job copies a
//! store's versions to a vault. Notifications (a webhook, email) follow
//! each run or a digest of runs ([`notify`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use alike::services::{JobKind, JobSpec, Services};
//!
//! let store = Arc::new(alike::Store::builder().passphrase("s3cret").open("/backups/store")?);
//! let services = Services::builder()
//!     .database("/var/lib/alike/services.redb")
//!     .store("main", store)
//!     .pool("xen1", Arc::new(|| Ok(Box::new(alike::xen_pool("https://xen1", "root", "pw", None)?) as Box<dyn alike::Hypervisor>)))
//!     .open()?;
//! let mut job = JobSpec::new("nightly", JobKind::Backup);
//! (job.vms, job.pool, job.store) = (vec!["web-01".into()], Some("xen1".into()), Some("main".into()));
//! job.schedule = Some("30 2 * * *".into());
//! job.timezone = "Europe/Berlin".into();
//! services.put_job(job)?;
//! services.subscribe(|e| println!("{}", e.to_json()));
//! services.start()?; // the scheduler's loop
//! let run = services.run_now("nightly")?;
//! # Ok::<(), alike::Error>(())
//! ```

pub mod notify;
mod runner;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

pub use alike_sched::{
    Chain, Clock, DiskRun, Event, EventKind, HistoryRetention, JobKind, JobOrigin, JobSpec, JobStatus, ManualClock,
    MissedRule, RebuiltVersion, RunFilter, RunRecord, RunResult, Schedule, Scheduler, SchedulerOptions, StepRun,
    SubscriptionId, SystemClock, Trigger, Validation, VerifyAfter, VmLocks, VmRun,
};
pub use runner::EngineRunner;

use crate::{Error, Hypervisor, Result, Store};

/// Connects to a pool or host for one run (a new session each run: XAPI
/// sessions expire, and a run must not depend on the last one's).
pub type Connect = Arc<dyn Fn() -> Result<Box<dyn Hypervisor>> + Send + Sync>;

/// Connects to a XenServer/XCP-ng pool for one run, as itself (what Xen
/// replication needs beyond the hypervisor seam).
#[cfg(feature = "xen")]
pub type XenConnect = Arc<dyn Fn() -> Result<crate::XenPool> + Send + Sync>;

/// The named stores and pools jobs refer to.
#[derive(Default, Clone)]
pub(crate) struct Resources {
    pub(crate) stores: BTreeMap<String, Arc<Store>>,
    pub(crate) pools: BTreeMap<String, Connect>,
    /// The pools of `pools` that are Xen pools, as such (replication jobs
    /// with a Xen target: both ends).
    #[cfg(feature = "xen")]
    pub(crate) xen_pools: BTreeMap<String, XenConnect>,
    /// The configuration file, when the services were built from one: its
    /// `[[pool]]`s are processor pools, its jobs' disks and secrets.
    pub(crate) config: Option<Arc<crate::Config>>,
    /// The processors' orchestrator, made at the first job that needs it
    /// (it holds the orchestrator id's lock while the services live).
    #[cfg(feature = "remote")]
    pub(crate) orchestrator: Arc<std::sync::Mutex<Option<Arc<crate::processors::Orchestrator>>>>,
}

impl Resources {
    pub(crate) fn store(&self, job: &str, name: Option<&str>) -> Result<Arc<Store>> {
        let name = name.ok_or_else(|| Error::InvalidArgument(format!("job {job:?} names no store")))?;
        self.stores
            .get(name)
            .cloned()
            .ok_or_else(|| Error::InvalidArgument(format!("job {job:?}: no store named {name:?} in the configuration")))
    }
    pub(crate) fn connect(&self, job: &str, name: Option<&str>) -> Result<Box<dyn Hypervisor>> {
        let name = name.ok_or_else(|| Error::InvalidArgument(format!("job {job:?} names no pool")))?;
        let c = self.pools.get(name).ok_or_else(|| {
            Error::InvalidArgument(format!("job {job:?}: no pool named {name:?} in the configuration"))
        })?;
        c()
    }
    /// A Xen pool by name, connected now.
    #[cfg(feature = "xen")]
    pub(crate) fn connect_xen(&self, job: &str, name: &str) -> Result<crate::XenPool> {
        let c = self.xen_pools.get(name).ok_or_else(|| {
            Error::InvalidArgument(format!("job {job:?}: no Xen pool named {name:?} in the configuration"))
        })?;
        c()
    }
    /// Whether `job` runs on a processor: `options.processor` is true and
    /// its pool is a `[[pool]]` of the configuration file (those are the
    /// pools processors come from; a pool given by [`ServicesBuilder::pool`]
    /// is not).
    pub(crate) fn processor_pool(&self, job: &JobSpec) -> bool {
        let asked = job.options.get("processor").and_then(serde_json::Value::as_bool).unwrap_or(false);
        asked
            && cfg!(feature = "remote")
            && job.pool.as_deref().is_some_and(|p| self.config.as_ref().is_some_and(|c| c.pool(p).is_some()))
    }
    /// The orchestrator, made (and what a killed earlier one left swept)
    /// at the first call.
    #[cfg(feature = "remote")]
    pub(crate) fn orchestrator(&self) -> Result<(Arc<crate::Config>, Arc<crate::processors::Orchestrator>)> {
        use alike_core::Recover;
        let config = self
            .config
            .clone()
            .ok_or_else(|| Error::InvalidArgument("no configuration file: no processor pools".into()))?;
        let mut o = self.orchestrator.locked();
        if let Some(o) = &*o {
            return Ok((config, o.clone()));
        }
        let made = Arc::new(crate::processors::Orchestrator::from_config(&config)?);
        for r in made.sweep()? {
            tracing::info!(?r, "processors: removed what an earlier run left");
        }
        *o = Some(made.clone());
        Ok((config, made))
    }
    /// Checks that a job's names exist.
    fn check(&self, job: &JobSpec) -> Result<()> {
        if let Some(s) = &job.store {
            self.store(&job.name, Some(s))?;
        }
        if let Some(v) = &job.chain.vault {
            self.store(&job.name, Some(v))?;
        }
        if let Some(p) = &job.pool
            && !self.pools.contains_key(p)
            && !self.processor_pool(job)
        {
            return Err(Error::InvalidArgument(format!(
                "job {:?}: no pool named {p:?} in the configuration",
                job.name
            )));
        }
        if let Some(t) = job.target.as_deref().and_then(|t| t.strip_prefix("xen:")) {
            #[cfg(feature = "xen")]
            for p in [Some(t), job.pool.as_deref()].into_iter().flatten() {
                if !self.xen_pools.contains_key(p) {
                    return Err(Error::InvalidArgument(format!(
                        "job {:?}: a Xen replica target needs Xen pools at both ends: {p:?} is none",
                        job.name
                    )));
                }
            }
            #[cfg(not(feature = "xen"))]
            return Err(Error::InvalidArgument(format!(
                "job {:?}: Xen replica target {t:?}: this build has no Xen support",
                job.name
            )));
        }
        Ok(())
    }
}

#[cfg(feature = "xen")]
fn pool_connect(p: &crate::config::PoolConfig) -> Option<XenConnect> {
    if p.kind != crate::config::PoolKind::Xen {
        return None;
    }
    let (url, user, password, name) = (p.url.clone()?, p.user.clone()?, p.password.clone()?, p.name.clone());
    Some(Arc::new(move || {
        let pw = password.read()?;
        crate::xen_pool(&url, &user, pw.expose(), None).map_err(|e| {
            tracing::warn!(pool = %name, "connecting: {e}");
            e
        })
    }))
}

#[cfg(not(feature = "xen"))]
fn pool_connect(_: &crate::config::PoolConfig) -> Option<()> {
    None
}

/// Builds [`Services`].
#[must_use]
pub struct ServicesBuilder {
    database: Option<PathBuf>,
    res: Resources,
    clock: Arc<dyn Clock>,
    options: SchedulerOptions,
    retention: Option<HistoryRetention>,
    jobs: Option<Vec<JobSpec>>,
    notifiers: Vec<notify::Notifier>,
}

impl ServicesBuilder {
    /// The history database (redb; created if missing). Required.
    pub fn database(mut self, path: impl Into<PathBuf>) -> Self {
        self.database = Some(path.into());
        self
    }
    /// A store jobs name as `store` or `chain.vault`.
    pub fn store(mut self, name: impl Into<String>, store: Arc<Store>) -> Self {
        self.res.stores.insert(name.into(), store);
        self
    }
    /// A pool or host jobs name as `pool`, connected for each run.
    pub fn pool(mut self, name: impl Into<String>, connect: Connect) -> Self {
        self.res.pools.insert(name.into(), connect);
        self
    }
    /// A XenServer/XCP-ng pool, connected for each run: jobs name it as
    /// `pool` (it serves as [`ServicesBuilder::pool`] too), and replication
    /// jobs as a Xen replica target (`target = "xen:NAME"`).
    ///
    /// ```no_run
    /// # fn main() -> alike::Result<()> {
    /// use std::sync::Arc;
    /// let services = alike::services::Services::builder()
    ///     .database("/var/lib/alike/services.redb")
    ///     .xen_pool("dr", Arc::new(|| alike::xen_pool("https://dr-pool", "root", "secret", None)))
    ///     .open()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "xen")]
    pub fn xen_pool(mut self, name: impl Into<String>, connect: XenConnect) -> Self {
        let name = name.into();
        let c = connect.clone();
        self.res.pools.insert(name.clone(), Arc::new(move || Ok(Box::new(c()?) as Box<dyn Hypervisor>)));
        self.res.xen_pools.insert(name, connect);
        self
    }
    /// The clock (default: the system's). Tests pass a [`ManualClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// The scheduler's options (concurrency, tick, history retention; a
    /// configuration file's `[history]` table, given to
    /// [`ServicesBuilder::config`], wins over `o.retention`).
    pub fn options(mut self, o: SchedulerOptions) -> Self {
        self.options = o;
        self
    }
    /// The jobs of the configuration: at open, the stored jobs become
    /// exactly these (without this call, the stored jobs stay as they are).
    pub fn jobs(mut self, jobs: Vec<JobSpec>) -> Self {
        self.jobs = Some(jobs);
        self
    }
    /// The stores, pools and jobs of a configuration file
    /// (`docs/config.md`): each `[[store]]` opened now (its secret read
    /// from where the file says), each xen `[[pool]]` connected at each run
    /// (its password read then), the `[[job]]`s installed at open, and
    /// the history's retention from `[history]`.
    ///
    /// # Errors
    /// A store that does not open; a secret that cannot be read.
    pub fn config(mut self, c: &crate::Config) -> Result<Self> {
        for s in &c.stores {
            self.res.stores.insert(s.name.clone(), Arc::new(s.open()?));
        }
        for p in &c.pools {
            #[cfg(feature = "xen")]
            if let Some(connect) = pool_connect(p) {
                self = self.xen_pool(p.name.clone(), connect);
            }
            #[cfg(not(feature = "xen"))]
            let _ = pool_connect(p);
        }
        self.jobs = Some(c.jobs.iter().map(crate::config::JobConfig::spec).collect());
        self.retention = c.history;
        self.res.config = Some(Arc::new(c.clone()));
        for n in &c.notify {
            self.notifiers.push(n.notifier()?);
        }
        Ok(self)
    }
    /// A notification target (webhook, email), with its digest option.
    pub fn notifier(mut self, n: notify::Notifier) -> Self {
        self.notifiers.push(n);
        self
    }

    /// Opens the database (refused when another process has it open; runs
    /// a dead process left are marked interrupted), installs the jobs,
    /// starts the notifiers' threads. The schedule loop starts with
    /// [`Services::start`].
    ///
    /// # Errors
    /// [`crate::ErrorKind::Busy`] when the database is open elsewhere;
    /// [`crate::ErrorKind::InvalidArgument`] for a job that does not check
    /// or names an unknown store or pool; database errors.
    pub fn open(self) -> Result<Services> {
        let db = self.database.ok_or_else(|| Error::InvalidArgument("services: no history database given".into()))?;
        let res = Arc::new(self.res);
        let runner = Arc::new(EngineRunner::new(res.clone()));
        let mut options = self.options;
        if let Some(r) = self.retention {
            options.retention = r;
        }
        let sched = Arc::new(Scheduler::open(&db, runner, self.clock, options)?);
        if let Some(jobs) = self.jobs {
            for j in &jobs {
                j.check()?;
                res.check(j)?;
            }
            sched.set_jobs(jobs)?;
        }
        let mut notifiers = Vec::new();
        for n in self.notifiers {
            notifiers.push(n.start(&sched)?);
        }
        Ok(Services { sched, res, database: db, notifiers })
    }
}

/// The services: a scheduler over named stores and pools, with history,
/// events and notifications. See the [module](self) docs.
pub struct Services {
    sched: Arc<Scheduler>,
    res: Arc<Resources>,
    database: PathBuf,
    notifiers: Vec<notify::Running>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("database", &self.database)
            .field("stores", &self.res.stores.keys().collect::<Vec<_>>())
            .field("pools", &self.res.pools.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Services {
    /// A builder.
    pub fn builder() -> ServicesBuilder {
        ServicesBuilder {
            database: None,
            res: Resources::default(),
            clock: Arc::new(SystemClock),
            options: SchedulerOptions::default(),
            retention: None,
            jobs: None,
            notifiers: Vec::new(),
        }
    }

    /// The scheduler underneath (history, ticks, active runs).
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.sched
    }

    /// The history database's path.
    pub fn database(&self) -> &Path {
        &self.database
    }

    /// Starts the schedule loop (a thread looking at the clock every tick).
    ///
    /// # Errors
    /// A thread that cannot start.
    pub fn start(&self) -> Result<()> {
        Ok(self.sched.start()?)
    }

    /// Stops: no new run starts, queued runs end cancelled, running runs
    /// are cancelled when `cancel_running` and waited for (at most
    /// `timeout`); pending digests are sent.
    pub fn stop(&self, cancel_running: bool, timeout: Duration) {
        self.sched.stop(cancel_running, timeout);
        for n in &self.notifiers {
            n.flush();
        }
    }

    /// Every job with its next due time and last run.
    ///
    /// # Errors
    /// Database errors.
    pub fn jobs(&self) -> Result<Vec<JobStatus>> {
        Ok(self.sched.jobs()?)
    }

    /// One job's definition.
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`].
    pub fn job(&self, name: &str) -> Result<JobSpec> {
        Ok(self.sched.job(name)?)
    }

    /// Adds or replaces a job (checked, its store and pool names too),
    /// kept in the database as made through the API ([`JobOrigin::Api`]):
    /// it survives a restart unless the configuration file then has a job
    /// of that name (the file wins).
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`]; database errors.
    pub fn put_job(&self, mut job: JobSpec) -> Result<()> {
        job.origin = JobOrigin::Api;
        job.check()?;
        self.res.check(&job)?;
        Ok(self.sched.put_job(job)?)
    }

    /// Removes a job (its history stays).
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`]; database errors.
    pub fn remove_job(&self, name: &str) -> Result<()> {
        Ok(self.sched.remove_job(name)?)
    }

    /// Runs a job now; returns the run's id (see [`Services::run`]).
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`]; [`crate::ErrorKind::Busy`] when it
    /// is already queued or running.
    pub fn run_now(&self, name: &str) -> Result<u64> {
        Ok(self.sched.run_now(name)?)
    }

    /// Cancels a queued or running run.
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`] when it is not active.
    pub fn cancel(&self, run: u64) -> Result<()> {
        Ok(self.sched.cancel(run)?)
    }

    /// One run (live while it runs).
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`]; database errors.
    pub fn run(&self, id: u64) -> Result<RunRecord> {
        Ok(self.sched.run(id)?)
    }

    /// Runs matching a filter, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        Ok(self.sched.history().runs(filter)?)
    }

    /// The runs queued or running now.
    pub fn active_runs(&self) -> Vec<RunRecord> {
        self.sched.active_runs()
    }

    /// Waits until no run is queued or running (at most `timeout`).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.sched.wait_idle(timeout)
    }

    /// Calls `f` for every event, on the thread that emits it (keep it short).
    pub fn subscribe(&self, f: impl Fn(&Event) + Send + Sync + 'static) -> SubscriptionId {
        self.sched.events().subscribe(Arc::new(f))
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.sched.events().unsubscribe(id)
    }

    /// A bounded stream of events (an SSE endpoint reads one): a reader
    /// `capacity` behind loses events rather than slowing runs down.
    pub fn events(&self, capacity: usize) -> Receiver<Event> {
        self.sched.events().channel(capacity)
    }

    /// A store by its configured name.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] for an unknown name.
    pub fn store(&self, name: &str) -> Result<Arc<Store>> {
        self.res.store("-", Some(name))
    }

    /// The configured stores' names.
    pub fn store_names(&self) -> Vec<String> {
        self.res.stores.keys().cloned().collect()
    }

    /// Connects to a configured pool or host.
    ///
    /// # Errors
    /// An unknown name; the host's errors.
    pub fn connect(&self, pool: &str) -> Result<Box<dyn Hypervisor>> {
        self.res.connect("-", Some(pool))
    }

    /// The configured pools' names.
    pub fn pool_names(&self) -> Vec<String> {
        self.res.pools.keys().cloned().collect()
    }

    /// Rebuilds a lost history from the configured stores: one run per
    /// version not yet in the history, with its newest verification.
    /// Returns how many runs were added.
    ///
    /// # Errors
    /// Store and database errors.
    pub fn rebuild_history(&self) -> Result<usize> {
        let mut all = Vec::new();
        for store in self.res.stores.values() {
            all.extend(runner::rebuilt_versions(store)?);
        }
        Ok(self.sched.history().rebuild(&all)?)
    }
}
