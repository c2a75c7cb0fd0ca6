//! Jobs on processors made for them: the orchestrator over the
//! provisioning seam (`alike_core::provision`).
//!
//! An [`Orchestrator`] holds pools — each a [`Provisioner`] with its address
//! list and SSH login — and runs jobs on them. A job ([`ProcessorBackup`])
//! takes one address of its pool (waiting, and saying `queued: no free
//! address in pool P`, while there is none; pools never wait on each
//! other), has the pool make a processor at that address, starts it, waits
//! for SSH with the processor's host key pinned (the key the provisioner
//! made for it), and then processes its VMs one after another: attach all
//! of a VM's disks, run the backup on the processor over the processor
//! protocol ([`crate::remote::run_remote`]: secrets only in the SSH
//! channel), detach. The processor is torn down and the address released
//! on success, failure and cancel alike.
//!
//! Every object a provisioner makes is tagged with the job id and the
//! orchestrator's id. An orchestrator id is held by one process at a time
//! ([`Orchestrator::new`] takes a lock), so at start everything tagged with
//! it is the leftover of a run that died: [`Orchestrator::sweep`] removes it.
//!
//! ```no_run
//! use std::sync::Arc;
//! use alike::processors::{LocalPoolOptions, LocalProvisioner, Orchestrator, PoolLogin, ProcessorBackup, VmDisks};
//! use alike::remote::{ClientKey, StoreSpec};
//!
//! let addresses = vec!["10.77.0.10".parse()?, "10.77.0.11".parse()?];
//! let key = std::fs::read_to_string("/etc/alike/id_ed25519.pub")?;
//! let prov = LocalProvisioner::new(LocalPoolOptions::new("lab", addresses[0], 24, key))?;
//! let mut orch = Orchestrator::new("backup-01", "/run/alike")?;
//! orch.add_pool(Arc::new(prov), addresses, PoolLogin::new(ClientKey::new("/etc/alike/id_ed25519")));
//! orch.sweep()?;
//! let job = ProcessorBackup::new("nightly-1", "lab", StoreSpec::new("/srv/ads"))
//!     .vm(VmDisks::new("web-01", ["/srv/images/web-01.img"]))
//!     .passphrase("correct horse");
//! let run = orch.run(&job, &Default::default())?;
//! println!("processor ready after {:?}", run.ready_after);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod local;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use alike_core::provision::{
    Acquire, AddressPool, AttachDisk, InjectedHostKey, Processor, ProcessorRequest, Provisioner, Reachable,
    SweepReport, TAG_JOB, TAG_ORCHESTRATOR,
};
use alike_remote::ssh::{ClientKey, Host, HostKeyPolicy, RemoteError, Session, SshOptions};
/// Processors in a Xen pool (the XAPI provisioner).
#[cfg(feature = "xen")]
pub use alike_xen::adapter::{XENSTORE_PREFIX, XenProcessor, XenProcessorOptions, XenProvisioner};
pub use local::{LocalError, LocalPoolOptions, LocalProcessor, LocalProvisioner};
use serde::Serialize;

use crate::remote::{BackupJob, ProcessorEvent, ProcessorJob, RemoteOptions, RemoteReport, StoreSpec, run_remote};
use crate::{CancelToken, Error, Recover, Result};
use alike_core::{Hypervisor, SnapshotOptions};

/// How the orchestrator logs in to a pool's processors, and how long it
/// waits for them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolLogin {
    /// The user (default `root`).
    pub user: String,
    /// The private key.
    pub key: ClientKey,
    /// Pin host keys from this known_hosts file instead of the key each
    /// processor was given (`host_keys = "known-hosts"`).
    pub known_hosts: Option<PathBuf>,
    /// How long a started processor may take to answer SSH (default 120 s).
    pub ssh_timeout: Duration,
    /// The command that starts the worker (default `alike processor`).
    pub command: String,
    /// The processors' network prefix length (default 24).
    pub prefix: u8,
    /// Their default gateway.
    pub gateway: Option<IpAddr>,
}

impl PoolLogin {
    /// Log in as root with `key`.
    pub fn new(key: ClientKey) -> PoolLogin {
        PoolLogin {
            user: "root".into(),
            key,
            known_hosts: None,
            ssh_timeout: Duration::from_secs(120),
            command: crate::config::DEFAULT_PROCESSOR_COMMAND.into(),
            prefix: 24,
            gateway: None,
        }
    }
}

/// One VM of a job: its name and its disks (all attached at once).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct VmDisks {
    /// The VM's name, as versions record it.
    pub vm: String,
    /// Its disks, in order.
    pub disks: Vec<AttachDisk>,
}

impl VmDisks {
    /// `vm` with read-only `disks` (a backup's).
    pub fn new<S: Into<String>>(vm: impl Into<String>, disks: impl IntoIterator<Item = S>) -> VmDisks {
        VmDisks { vm: vm.into(), disks: disks.into_iter().map(AttachDisk::read_only).collect() }
    }
}

/// A backup job on a processor: its VMs, one after another, into a store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProcessorBackup {
    /// The job's id (tags everything made for it; unique among running jobs).
    pub id: String,
    /// The pool it runs in.
    pub pool: String,
    /// The store, as the processor reaches it.
    pub store: StoreSpec,
    /// Its VMs.
    pub vms: Vec<VmDisks>,
    /// Backup threads on the processor (0: one per core).
    pub threads: usize,
    secrets: ProcessorJob,
    write_only: bool,
}

impl ProcessorBackup {
    /// A job `id` in pool `pool` backing up into `store`.
    pub fn new(id: impl Into<String>, pool: impl Into<String>, store: StoreSpec) -> ProcessorBackup {
        let secrets = ProcessorJob::verify(crate::remote::VerifyJob::new(store.clone()));
        ProcessorBackup {
            id: id.into(),
            pool: pool.into(),
            store,
            vms: Vec::new(),
            threads: 0,
            secrets,
            write_only: false,
        }
    }
    /// Adds a VM.
    #[must_use]
    pub fn vm(mut self, vm: VmDisks) -> Self {
        self.vms.push(vm);
        self
    }
    /// The store's passphrase (sent in the SSH channel only).
    #[must_use]
    pub fn passphrase(mut self, p: impl Into<String>) -> Self {
        self.secrets = self.secrets.passphrase(p);
        self
    }
    /// The store's key file's contents (sent in the SSH channel only).
    #[must_use]
    pub fn key_file_contents(mut self, data: &[u8]) -> Self {
        self.secrets = self.secrets.key_file_contents(data);
        self
    }
    /// Hands the processor `store`'s write-only key in place of the
    /// passphrase or key file it was given (object-storage credentials are
    /// kept): the processor can add versions but cannot read chunk data it
    /// did not write (`docs/security.md`). [`ProcessorBackup::from_config`]
    /// does this by default for a store with writer keys.
    ///
    /// # Errors
    /// The store has no writer keys, or was itself opened with a
    /// write-only key.
    pub fn write_only_key_of(mut self, store: &crate::Store) -> Result<Self> {
        let bytes = zeroize::Zeroizing::new(store.writer_key_file_bytes()?);
        let fresh = ProcessorJob::verify(crate::remote::VerifyJob::new(self.store.clone()));
        let old = std::mem::replace(&mut self.secrets, fresh);
        let s = old.secrets();
        if let (Some(k), Some(v)) = (s.get("s3_access_key_id"), s.get("s3_secret_access_key")) {
            self.secrets = self.secrets.s3_credentials(k.expose(), v.expose());
        }
        if let Some(t) = s.get("s3_session_token") {
            self.secrets = self.secrets.s3_session_token(t.expose());
        }
        self.secrets = self.secrets.key_file_contents(&bytes);
        self.write_only = true;
        Ok(self)
    }
    /// Whether the processor gets a write-only key
    /// ([`ProcessorBackup::write_only_key_of`]).
    pub fn is_write_only(&self) -> bool {
        self.write_only
    }
    /// Object-storage credentials (sent in the SSH channel only).
    #[must_use]
    pub fn s3_credentials(mut self, access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        self.secrets = self.secrets.s3_credentials(access_key_id, secret_access_key);
        self
    }
}

/// What the orchestrator reports while a job runs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobEvent {
    /// No address is free in the pool: the job waits.
    Queued {
        /// The job.
        job: String,
        /// The pool.
        pool: String,
        /// Jobs waiting ahead of it.
        ahead: usize,
        /// `queued: no free address in pool P`.
        message: String,
    },
    /// The job holds an address; its processor is being made.
    Provisioning {
        /// The job.
        job: String,
        /// The pool.
        pool: String,
        /// The address.
        address: IpAddr,
    },
    /// The processor answers SSH with its pinned host key.
    ProcessorReady {
        /// The job.
        job: String,
        /// The address.
        address: IpAddr,
        /// Milliseconds from the job's start (queueing included).
        after_ms: u64,
    },
    /// A VM's backup starts on the processor.
    VmStarted {
        /// The job.
        job: String,
        /// The VM.
        vm: String,
    },
    /// An event of the worker on the processor.
    Worker {
        /// The job.
        job: String,
        /// The VM.
        vm: String,
        /// The event.
        event: ProcessorEvent,
    },
    /// The processor was torn down; its address is released right after
    /// this event, so no job of the pool is told it provisions on it before.
    TornDown {
        /// The job.
        job: String,
        /// The address.
        address: IpAddr,
    },
}

type EventFn = Arc<dyn Fn(&JobEvent) + Send + Sync>;

/// Options of [`Orchestrator::run`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RunJobOptions {
    on_event: Option<EventFn>,
    cancel: CancelToken,
}

impl RunJobOptions {
    /// Called with every [`JobEvent`], on the job's thread.
    #[must_use]
    pub fn on_event(mut self, f: impl Fn(&JobEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(f));
        self
    }
    /// Cancels the job (waiting, starting or running) when `token` is cancelled.
    #[must_use]
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }
}

/// What [`Orchestrator::run`] did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct JobRun {
    /// The job.
    pub job: String,
    /// The pool.
    pub pool: String,
    /// The processor's address.
    pub address: IpAddr,
    /// From the call to the processor answering SSH (queueing included).
    #[serde(rename = "ready_after_seconds", serialize_with = "crate::store::seconds")]
    pub ready_after: Duration,
    /// How long the job waited for an address.
    #[serde(rename = "queued_seconds", serialize_with = "crate::store::seconds")]
    pub queued: Duration,
    /// Each VM's result, in order.
    pub vms: Vec<RemoteReport>,
    /// Wall time.
    #[serde(rename = "elapsed_seconds", serialize_with = "crate::store::seconds")]
    pub elapsed: Duration,
}

struct Pool {
    provisioner: Arc<dyn Provisioner>,
    addresses: Mutex<AddressPool>,
    freed: Condvar,
    login: PoolLogin,
    /// Snapshots a job's VMs that name no disks (a Xen pool's XAPI).
    snapshots: Option<Arc<dyn Hypervisor + Send + Sync>>,
}

/// Runs jobs on processors of its pools (see the module documentation).
pub struct Orchestrator {
    id: String,
    state_dir: PathBuf,
    pools: BTreeMap<String, Arc<Pool>>,
    _lock: std::fs::File,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator").field("id", &self.id).field("pools", &self.pools.keys()).finish()
    }
}

fn processor_error(pool: &str, job: &str, code: &'static str, message: impl Into<String>) -> Error {
    Error::Processor { pool: pool.into(), job: job.into(), code, message: message.into() }
}

impl Orchestrator {
    /// The orchestrator `id` (`[A-Za-z0-9_-]`, 1 to 32), holding
    /// `state_dir/orchestrator-ID.lock` while it lives.
    ///
    /// # Errors
    /// [`ErrorKind::Busy`](crate::ErrorKind::Busy) when another process runs this id;
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) for a bad id; I/O errors.
    pub fn new(id: impl Into<String>, state_dir: impl AsRef<Path>) -> Result<Orchestrator> {
        let id = id.into();
        if id.is_empty() || id.len() > 32 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(Error::InvalidArgument(format!("orchestrator id {id:?}: 1 to 32 of A-Z a-z 0-9 - _")));
        }
        let dir = state_dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::InvalidArgument(format!("creating state directory {}: {e}", dir.display())))?;
        let path = dir.join(format!("orchestrator-{id}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::InvalidArgument(format!("opening {}: {e}", path.display())))?;
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(processor_error(
                "-",
                "-",
                "ORCHESTRATOR_BUSY",
                format!("orchestrator {id} is running in another process (it holds {})", path.display()),
            ));
        }
        Ok(Orchestrator { id, state_dir: dir.to_path_buf(), pools: BTreeMap::new(), _lock: f })
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds a pool: its provisioner, addresses (one processor each) and login.
    pub fn add_pool(&mut self, provisioner: Arc<dyn Provisioner>, addresses: Vec<IpAddr>, login: PoolLogin) {
        let name = provisioner.pool().to_string();
        let pool = Pool {
            addresses: Mutex::new(AddressPool::new(name.clone(), addresses)),
            provisioner,
            freed: Condvar::new(),
            login,
            snapshots: None,
        };
        self.pools.insert(name, Arc::new(pool));
    }

    /// Adds a pool whose VMs are snapshotted through `hypervisor`: a job's
    /// VM that names no disks is snapshotted (`begin_backup`, as an
    /// in-process backup does), the snapshot's disks are attached read-only
    /// to the processor, which backs them up with the VM's configuration;
    /// the snapshot is released once the version is committed, and on
    /// failure and cancel too (the provisioner tags what it attaches with
    /// the job id, so a sweep finds the snapshots of an orchestrator that
    /// died). The snapshot's disks are named to the provisioner by the
    /// host's `snapshot_vdi` id (Xen).
    pub fn add_pool_with_snapshots(
        &mut self,
        provisioner: Arc<dyn Provisioner>,
        addresses: Vec<IpAddr>,
        login: PoolLogin,
        hypervisor: Arc<dyn Hypervisor + Send + Sync>,
    ) {
        let name = provisioner.pool().to_string();
        self.add_pool(provisioner, addresses, login);
        if let Some(p) = self.pools.get_mut(&name).and_then(Arc::get_mut) {
            p.snapshots = Some(hypervisor);
        }
    }

    /// Removes, in every pool, what a run of this orchestrator that died
    /// left (see the module documentation).
    ///
    /// # Errors
    /// A pool could not be listed.
    pub fn sweep(&self) -> Result<Vec<SweepReport>> {
        self.pools.values().map(|p| Ok(p.provisioner.sweep(&self.id)?)).collect()
    }

    /// Runs `job` on a processor of its pool (see the module documentation).
    ///
    /// # Errors
    /// [`Error::Processor`]: no such pool, the processor could not be made
    /// or did not answer SSH in time (`PROCESSOR_SSH_TIMEOUT`);
    /// [`Error::Remote`]: a refused host key (`HOST_KEY_CHANGED`), failed
    /// login, or the job's own failure on the processor;
    /// [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled).
    pub fn run(&self, job: &ProcessorBackup, opts: &RunJobOptions) -> Result<JobRun> {
        let t0 = Instant::now();
        let emit = |e: JobEvent| {
            if let Some(f) = &opts.on_event {
                f(&e);
            }
        };
        let pool = self.pools.get(&job.pool).ok_or_else(|| {
            processor_error(&job.pool, &job.id, "NO_SUCH_POOL", format!("no pool named {:?}", job.pool))
        })?;
        // Take an address: first come, first served; waits only on this pool.
        let address = {
            let mut a = pool.addresses.locked();
            let mut last_ahead = None;
            loop {
                match a.try_acquire(&job.id) {
                    Acquire::Got(addr) => break addr,
                    Acquire::Queued { ahead } => {
                        if last_ahead != Some(ahead) {
                            last_ahead = Some(ahead);
                            emit(JobEvent::Queued {
                                job: job.id.clone(),
                                pool: job.pool.clone(),
                                ahead,
                                message: format!("queued: no free address in pool {}", job.pool),
                            });
                        }
                    }
                }
                if opts.cancel.is_cancelled() {
                    a.leave(&job.id);
                    pool.freed.notify_all();
                    return Err(alike_core::Error::Cancelled.into());
                }
                a = pool
                    .freed
                    .wait_timeout(a, Duration::from_millis(100))
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
        };
        let queued = t0.elapsed();
        let r = self.run_at(pool, job, address, t0, &emit, opts);
        // Told before the address is handed on, so that no subscriber sees
        // the next job of the pool provisioning on it before this one is gone.
        emit(JobEvent::TornDown { job: job.id.clone(), address });
        {
            let mut a = pool.addresses.locked();
            a.release(address);
        }
        pool.freed.notify_all();
        let (ready_after, vms) = r?;
        Ok(JobRun {
            job: job.id.clone(),
            pool: job.pool.clone(),
            address,
            ready_after,
            queued,
            vms,
            elapsed: t0.elapsed(),
        })
    }

    fn run_at(
        &self,
        pool: &Pool,
        job: &ProcessorBackup,
        address: IpAddr,
        t0: Instant,
        emit: &dyn Fn(JobEvent),
        opts: &RunJobOptions,
    ) -> Result<(Duration, Vec<RemoteReport>)> {
        emit(JobEvent::Provisioning { job: job.id.clone(), pool: job.pool.clone(), address });
        let login = &pool.login;
        let mut req = ProcessorRequest::new(&self.id, &job.id, address, login.prefix);
        req.gateway = login.gateway;
        if login.known_hosts.is_none() {
            req.host_key = Some(make_host_key(&self.state_dir, &self.id, &job.id)?);
        }
        let mut processor = pool.provisioner.make(&req)?;
        let r = (|| {
            let reach = processor.start()?;
            let policy = match (&login.known_hosts, &reach.host_key_fingerprint) {
                (Some(f), _) => HostKeyPolicy::known_hosts(f),
                (None, Some(fp)) => HostKeyPolicy::fingerprints([fp])?,
                (None, None) => {
                    return Err(processor_error(
                        &job.pool,
                        &job.id,
                        "NO_HOST_KEY",
                        "the processor has no host key to pin and the pool names no known_hosts file",
                    ));
                }
            };
            let host = Host::new(&login.user, reach.address.to_string(), reach.port)?;
            wait_for_ssh(&host, &policy, &login.key, login.ssh_timeout, &opts.cancel)
                .map_err(|e| self.ssh_error(job, &host, login.ssh_timeout, e))?;
            let ready = t0.elapsed();
            emit(JobEvent::ProcessorReady { job: job.id.clone(), address, after_ms: ready.as_millis() as u64 });
            let mut reports = Vec::new();
            for vm in &job.vms {
                opts.cancel.check()?;
                emit(JobEvent::VmStarted { job: job.id.clone(), vm: vm.vm.clone() });
                // A VM that names no disks, in a pool that snapshots: its
                // snapshot's disks, released whatever happens below.
                let session = match (&pool.snapshots, vm.disks.is_empty()) {
                    (Some(hv), true) => {
                        let snap = SnapshotOptions::default().cancel_token(opts.cancel.clone());
                        Some(hv.begin_backup(&vm.vm, &[], &snap)?)
                    }
                    _ => None,
                };
                let disks: Vec<AttachDisk> = match &session {
                    Some(s) => s
                        .disk_details()
                        .into_iter()
                        .map(|d| AttachDisk::read_only(d.ids.get("snapshot_vdi").cloned().unwrap_or_default()))
                        .collect(),
                    None => vm.disks.clone(),
                };
                // Asked before the attach: XAPI refuses `list_changed_blocks`
                // on a VDI in use (VDI_IN_USE).
                let changes = match &session {
                    Some(s) => disk_changes(job, &vm.vm, s.as_ref()),
                    None => Vec::new(),
                };
                let r: Result<RemoteReport> = (|| {
                    let paths = processor.attach(&disks)?;
                    let mut b =
                        BackupJob::new(job.store.clone(), &vm.vm, paths.into_iter().map(PathBuf::from).collect());
                    b.threads = job.threads;
                    if let Some(s) = &session {
                        b.config = Some(s.vm().clone());
                        b.meta.insert("snapshot".into(), s.snapshot_id());
                        b.meta.insert("consistency".into(), s.consistency());
                        b.changes = changes.clone();
                    }
                    let mut pj = ProcessorJob::backup(b).with_id(format!("{}-{}", job.id, reports.len()));
                    pj.set_secrets_from(&job.secrets);
                    let (jid, vname) = (job.id.clone(), vm.vm.clone());
                    let on = opts.on_event.clone();
                    let ro = RemoteOptions::default()
                        .command(login.command.clone())
                        .cancel_token(opts.cancel.clone())
                        .connect_timeout(Duration::from_secs(10))
                        .on_event(move |e| {
                            if let Some(f) = &on {
                                f(&JobEvent::Worker { job: jid.clone(), vm: vname.clone(), event: e.clone() });
                            }
                        });
                    let r = run_remote(&host, &policy, &login.key, &pj, &ro);
                    let d = processor.detach_all();
                    let r = r?;
                    d?;
                    Ok(r)
                })();
                // A stored version keeps its snapshot as the next
                // incremental's change reference (releasing the one before),
                // as an in-process backup does; a failure releases it.
                if let Some(s) = session {
                    if r.is_ok() {
                        for w in s.commit().warnings {
                            tracing::warn!(vm = %vm.vm, job = %job.id, "releasing earlier snapshots: {w}");
                        }
                    } else if let Err(e) = s.abort() {
                        tracing::warn!(vm = %vm.vm, job = %job.id, error = %e, "releasing the snapshot of a processor job");
                    }
                }
                reports.push(r?);
            }
            Ok((ready, reports))
        })();
        let t = processor.teardown();
        let out = r?;
        t?;
        Ok(out)
    }

    fn ssh_error(&self, job: &ProcessorBackup, host: &Host, limit: Duration, e: Error) -> Error {
        match &e {
            Error::Remote(r)
                if matches!(
                    **r,
                    RemoteError::Connect { .. } | RemoteError::Timeout { .. } | RemoteError::Ssh { .. }
                ) =>
            {
                processor_error(
                    &job.pool,
                    &job.id,
                    "PROCESSOR_SSH_TIMEOUT",
                    format!(
                        "the processor at {host} did not answer SSH within {limit:?} (last: {e}); it was torn down"
                    ),
                )
            }
            _ => e,
        }
    }
}

/// Each snapshot disk's change token and what changed since the VM's
/// newest version's (the hypervisor's CBT, asked here), for the processor
/// to read only that. Empty when the disks give no tokens; a disk whose
/// changes cannot be told carries its token alone, and the processor's
/// engine reads it in full, saying why (`fallback_reason`, a warning).
fn disk_changes(job: &ProcessorBackup, vm: &str, s: &dyn alike_core::BackupSession) -> Vec<crate::remote::DiskChanges> {
    let disks = s.disks();
    let tokens: Vec<Option<Vec<u8>>> = disks.iter().map(|d| d.change_token()).collect();
    if tokens.iter().any(Option::is_none) {
        return Vec::new();
    }
    let parent = job.secrets.open_store(&job.store).and_then(|st| st.version("latest", Some(vm)));
    let parent = match parent {
        Ok(v) => Some(v),
        Err(e) if e.kind() == crate::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(vm, job = %job.id, error = %e, "reading the parent version's change tokens: a full read");
            None
        }
    };
    disks
        .iter()
        .zip(tokens)
        .enumerate()
        .map(|(i, (d, token))| {
            let token = token.unwrap_or_default();
            let since = parent
                .as_ref()
                .and_then(|p| p.disks.get(i))
                .and_then(|pd| pd.change_token.as_deref())
                .and_then(|h| hex::decode(h).ok());
            let ranges = since.as_deref().and_then(|t| match d.changed_ranges(t) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(vm, disk = i, error = %e, "asking the hypervisor what changed: a full read");
                    None
                }
            });
            crate::remote::DiskChanges::new(&token, since.as_deref(), ranges.as_deref())
        })
        .collect()
}

/// A fresh Ed25519 host key for one processor (`ssh-keygen`; the files are
/// removed once read).
fn make_host_key(state_dir: &Path, orchestrator: &str, job: &str) -> Result<alike_core::provision::InjectedHostKey> {
    let clean: String = job.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let path = state_dir.join(format!("hostkey-{orchestrator}-{clean}"));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let fail = |what: String| processor_error("-", job, "HOST_KEY", what);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", &format!("alike-processor-{job}"), "-f"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(format!("running ssh-keygen (package openssh-client): {e}")))?;
    if !out.status.success() {
        return Err(fail(format!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let fp = std::process::Command::new("ssh-keygen").arg("-lf").arg(path.with_extension("pub")).output();
    let private = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let private = private.map_err(|e| fail(format!("reading the new host key: {e}")))?;
    let fp = fp.map_err(|e| fail(format!("ssh-keygen -l: {e}")))?;
    let fp = String::from_utf8_lossy(&fp.stdout).split_whitespace().nth(1).map(str::to_string);
    let fp = fp.ok_or_else(|| fail("ssh-keygen -l printed no fingerprint".into()))?;
    Ok(alike_core::provision::InjectedHostKey::new(private, fp))
}

/// Connects until the processor answers with the pinned key, or `limit`
/// passes. A refused host key or login fails at once (retrying would not
/// change it); a refused, timed-out or dropped connection is tried again.
fn wait_for_ssh(
    host: &Host,
    policy: &HostKeyPolicy,
    key: &ClientKey,
    limit: Duration,
    cancel: &CancelToken,
) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        let step = left.min(Duration::from_secs(5)).max(Duration::from_millis(100));
        let o = SshOptions::default().connect_timeout(step).handshake_timeout(step).auth_timeout(step);
        match Session::connect(host, policy, key, &o) {
            Ok(s) => {
                s.close();
                return Ok(());
            }
            // A booting processor may accept and drop connections before
            // its sshd answers: all of these are tried again.
            Err(e @ (RemoteError::Connect { .. } | RemoteError::Timeout { .. } | RemoteError::Ssh { .. })) => {
                if t0.elapsed() >= limit {
                    return Err(e.into());
                }
            }
            Err(e) => return Err(e.into()),
        }
        cancel.check()?;
        std::thread::sleep(Duration::from_millis(50).min(limit.saturating_sub(t0.elapsed())));
    }
}

impl Orchestrator {
    /// The orchestrator a configuration file describes: its id and state
    /// directory, and a provisioner for each of its pools (a Xen pool's
    /// VMs snapshotted through the pool, see
    /// [`Orchestrator::add_pool_with_snapshots`]).
    ///
    /// # Errors
    /// As [`Orchestrator::new`] and [`LocalProvisioner::new`]; a pool's
    /// SSH key's public half (`KEY.pub`) cannot be read; a Xen pool cannot
    /// be reached;
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument)
    /// for a Xen pool in a build without the `xen` feature.
    pub fn from_config(config: &crate::Config) -> Result<Orchestrator> {
        use crate::config::{HostKeyPolicy as Keys, PoolKind};
        let mut o = Orchestrator::new(&config.orchestrator, &config.state_dir)?;
        for p in &config.pools {
            let mut key = ClientKey::new(&p.ssh_key);
            if let Some(s) = &p.ssh_key_passphrase {
                key = key.with_passphrase(s.read()?);
            }
            let mut login = PoolLogin::new(key);
            login.user = p.ssh_user.clone();
            login.ssh_timeout = Duration::from_secs(p.ssh_timeout_seconds);
            login.prefix = p.prefix;
            login.gateway = p.gateway;
            login.known_hosts = if p.host_keys == Keys::KnownHosts { p.known_hosts.clone() } else { None };
            let provisioner: Arc<dyn Provisioner> = match p.kind {
                PoolKind::Local => {
                    let pub_file = PathBuf::from(format!("{}.pub", p.ssh_key.display()));
                    let authorized = std::fs::read_to_string(&pub_file).map_err(|e| {
                        Error::InvalidArgument(format!("pool {}: reading {}: {e}", p.name, pub_file.display()))
                    })?;
                    let mut lo = LocalPoolOptions::new(&p.name, p.addresses[0], p.prefix, authorized);
                    lo.gateway = p.gateway;
                    lo.ssh_user = p.ssh_user.clone();
                    lo.state_dir = config.state_dir.join("processors");
                    login.command = match &p.processor_command {
                        Some(c) => c.clone(),
                        None => {
                            let exe = std::env::current_exe().map_err(|e| {
                                Error::InvalidArgument(format!("pool {}: finding this program: {e}", p.name))
                            })?;
                            format!("{} processor", exe.display())
                        }
                    };
                    Arc::new(LocalProvisioner::new(lo)?)
                }
                #[cfg(feature = "xen")]
                PoolKind::Xen => {
                    let password = p.password.as_ref().map(|s| s.read()).transpose()?;
                    let xen = crate::xen_pool(
                        p.url.as_deref().unwrap_or_default(),
                        p.user.as_deref().unwrap_or_default(),
                        password.as_ref().map(|s| s.expose()).unwrap_or_default(),
                        None,
                    )?;
                    let mut xo =
                        alike_xen::adapter::XenProcessorOptions::new(&p.name, p.template.clone().unwrap_or_default());
                    xo.network = p.network.clone();
                    if let Some(c) = &p.processor_command {
                        login.command = c.clone();
                    }
                    let xen = Arc::new(xen);
                    let prov = Arc::new(alike_xen::adapter::XenProvisioner::new(Arc::clone(&xen), xo));
                    o.add_pool_with_snapshots(prov, p.addresses.clone(), login, xen);
                    continue;
                }
                #[allow(unreachable_patterns)]
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "pool {}: this build cannot provision processors of this kind",
                        p.name
                    )));
                }
            };
            o.add_pool(provisioner, p.addresses.clone(), login);
        }
        Ok(o)
    }
}

impl ProcessorBackup {
    /// The job `name` of `config`, with id `id` (unique among running jobs),
    /// its store's secrets read now. For a store with writer keys the
    /// processor gets the write-only key, unless the store says
    /// `processor_key = "full"` (the store is opened here to derive it).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument):
    /// no such job, or a secret that cannot be read; as [`crate::config::StoreConfig::open`] for a store whose processors get its write-only key.
    pub fn from_config(config: &crate::Config, name: &str, id: impl Into<String>) -> Result<ProcessorBackup> {
        let j = config.job(name).ok_or_else(|| Error::InvalidArgument(format!("no job named {name:?}")))?;
        let s = config.store(&j.store).ok_or_else(|| Error::InvalidArgument(format!("no store {:?}", j.store)))?;
        let mut spec = StoreSpec::new(s.location());
        spec.cache_dir = s.cache_dir.clone();
        spec.endpoint = s.endpoint.clone();
        spec.region = s.region.clone();
        spec.allow_http = s.allow_http;
        let mut b = ProcessorBackup::new(id, &j.pool, spec);
        b.threads = j.options.threads.unwrap_or(0);
        for vm in &j.vms {
            let disks = j.disks.get(vm).map(|d| d.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
            b = b.vm(VmDisks::new(vm, disks.unwrap_or_default()));
        }
        if let Some(p) = &s.passphrase {
            b = b.passphrase(p.read()?.expose());
        }
        if let Some(k) = &s.key_file {
            let data = std::fs::read(k)
                .map_err(|e| Error::InvalidArgument(format!("reading key file {}: {e}", k.display())))?;
            b = b.key_file_contents(&data);
        }
        if let (Some(k), Some(sk)) = (&s.access_key_id, &s.secret_access_key) {
            b = b.s3_credentials(k.read()?.expose(), sk.read()?.expose());
        }
        // A processor may be compromised: with writer keys, it gets the
        // write-only key (opened here, with the full one, to derive it).
        if s.processor_key == crate::config::ProcessorKey::WriteOnly {
            let store = s.open()?;
            if store.has_writer_keys() && !store.is_write_only() {
                b = b.write_only_key_of(&store)?;
            }
        }
        Ok(b)
    }
}

/// Why a job of [`Orchestrator::run_all`] failed, as data.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct JobFailure {
    /// The error's message.
    pub message: String,
    /// Its kind ([`crate::ErrorKind::name`]).
    pub kind: &'static str,
    /// Its code, when it has one (`PROCESSOR_SSH_TIMEOUT`, `HOST_KEY_CHANGED`…).
    pub code: Option<String>,
}

/// One job's outcome in [`Orchestrator::run_all`]: its result or its failure.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct JobOutcome {
    /// The job's id.
    pub job: String,
    /// What it did, when it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<JobRun>,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobFailure>,
}

/// What [`run_config_jobs`] did: the leftovers it removed first, and each job.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct JobsReport {
    /// What the sweep at start removed, per pool.
    pub swept: Vec<SweepReport>,
    /// Each job, in the order asked.
    pub jobs: Vec<JobOutcome>,
}

impl JobsReport {
    /// Whether every job succeeded.
    pub fn ok(&self) -> bool {
        self.jobs.iter().all(|j| j.error.is_none())
    }
}

impl Orchestrator {
    /// Runs `jobs` at once, each on its own thread and processor (queued
    /// per pool as [`Orchestrator::run`] says), and returns each outcome in
    /// order.
    pub fn run_all(&self, jobs: &[ProcessorBackup], opts: &RunJobOptions) -> Vec<JobOutcome> {
        let outcome = |id: &str, r: Result<JobRun>| match r {
            Ok(run) => JobOutcome { job: id.to_string(), result: Some(run), error: None },
            Err(e) => JobOutcome {
                job: id.to_string(),
                result: None,
                error: Some(JobFailure {
                    message: e.to_string(),
                    kind: e.kind().name(),
                    code: e.code().map(str::to_string),
                }),
            },
        };
        std::thread::scope(|s| {
            let hs: Vec<_> = jobs
                .iter()
                .map(|job| (job, alike_core::spawn_scoped(s, &format!("alike-job-{}", job.id), || self.run(job, opts))))
                .collect();
            hs.into_iter()
                .map(|(job, h)| {
                    let r = match h {
                        Ok(h) => h.join().unwrap_or_else(|_| {
                            Err(processor_error(&job.pool, &job.id, "JOB_PANICKED", "the job's thread panicked"))
                        }),
                        Err(e) => Err(e.into()),
                    };
                    outcome(&job.id, r)
                })
                .collect()
        })
    }
}

/// Runs the jobs `names` of `config` at once on processors of their pools,
/// after removing what a killed earlier run of its orchestrator left. Each
/// job's id is its name and the start time in milliseconds.
///
/// ```no_run
/// let config = alike::Config::from_file("/etc/alike/alike.toml")?;
/// let report = alike::processors::run_config_jobs(&config, &["nightly"], &Default::default())?;
/// assert!(report.ok(), "{:?}", report.jobs);
/// # Ok::<(), alike::Error>(())
/// ```
///
/// # Errors
/// As [`Orchestrator::from_config`] and [`ProcessorBackup::from_config`]
/// (nothing ran); each job's own failure is in its [`JobOutcome`].
pub fn run_config_jobs<S: AsRef<str>>(config: &crate::Config, names: &[S], opts: &RunJobOptions) -> Result<JobsReport> {
    let stamp = std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_millis();
    let jobs = names
        .iter()
        .map(|n| {
            let n = n.as_ref();
            let j = config.job(n).ok_or_else(|| Error::InvalidArgument(format!("no job named {n:?}")))?;
            if !j.options.processor {
                return Err(Error::InvalidArgument(format!(
                    "job {n}: options.processor = false: it does not run on a processor"
                )));
            }
            // Validation, housekeeping, vault and replication jobs run in the
            // services (`alike serve`), not on a processor made for them.
            if j.kind != crate::config::JobKind::Backup {
                return Err(Error::InvalidArgument(format!(
                    "job {n}: a {:?} job does not run on a processor; `alike serve` runs it",
                    j.kind
                )));
            }
            ProcessorBackup::from_config(config, n, format!("{n}-{stamp}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let orch = Orchestrator::from_config(config)?;
    let swept = orch.sweep()?;
    let jobs = orch.run_all(&jobs, opts);
    Ok(JobsReport { swept, jobs })
}
