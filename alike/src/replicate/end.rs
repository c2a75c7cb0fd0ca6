//! One end of a replication between two processes, run from its
//! [`ReplicationJob`]: what a processor started by an orchestrator runs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alike_core::{DiskSource, Progress, VmInfo};
use alike_replicate::{Dial, LinkOptions, ReceiverOptions, ReplicationProgressFn, SenderOptions, TcpEnd};
use serde::Serialize;

use super::history::{self, ReplicationRecord};
use super::job::{JobReplica, JobRole, JobSource, JobStore, ReplicationJob};
use super::{DiskProgress, Replica, ReplicaRunStats, ReplicationProgress};
use crate::options::Run;
use crate::{BackupOptions, BackupReport, CancelToken, Error, Result, Store};

/// How an end reaches its peer.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobLink {
    /// As the job says: the dialling end dials `peer` (retrying until
    /// `connect_timeout_seconds`), the listening end listens on `listen`
    /// and accepts one connection.
    FromJob,
    /// Accept one connection on this listener (bound by the caller, who
    /// may have told the orchestrator its port).
    Listener(TcpListener),
    /// A connection the caller made (or accepted).
    Stream(TcpStream),
}

/// Options of an end: progress, cancel, and who to tell where it listens.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct EndOptions {
    pub(crate) run: Run,
    pub(crate) disk_progress: Option<ReplicationProgressFn>,
    pub(crate) on_listening: Option<Arc<dyn Fn(SocketAddr) + Send + Sync>>,
}

impl std::fmt::Debug for EndOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndOptions").finish_non_exhaustive()
    }
}

impl EndOptions {
    /// Called with progress (the sender: bytes read of all disks).
    pub fn progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.run.progress = Some(Arc::new(f));
        self
    }
    /// Called about five times a second with each disk's bytes read,
    /// hashed, offered, needed and sent (the sender).
    pub fn disk_progress(mut self, f: impl Fn(&ReplicationProgress) + Send + Sync + 'static) -> Self {
        self.disk_progress = Some(Arc::new(f));
        self
    }
    /// Cancels the end when `token` is cancelled.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.run.cancel = token;
        self
    }
    /// Called with the address the end listens on, once it does (before
    /// it waits for its peer).
    pub fn on_listening(mut self, f: impl Fn(SocketAddr) + Send + Sync + 'static) -> Self {
        self.on_listening = Some(Arc::new(f));
        self
    }
}

/// What an end did: what `alike replicate --listen/--connect --json` prints.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct EndReport {
    /// `"sender"` or `"receiver"`.
    pub role: String,
    /// The job.
    pub job_id: String,
    /// The VM.
    pub vm: String,
    /// The point committed.
    pub point: u64,
    /// Bytes the sender read from the sources (the receiver: as the sender said).
    pub read_bytes: u64,
    /// Bytes of chunks the sender hashed.
    pub hashed_bytes: u64,
    /// Bytes of chunks the replica lacked.
    pub needed_bytes: u64,
    /// Bytes the sender put on the wire (the receiver: those it took).
    pub sent_bytes: u64,
    /// Bytes the other direction carried (the receiver's answers).
    pub answer_bytes: u64,
    /// Per disk (the sender).
    pub disks: Vec<DiskProgress>,
    /// The replica's side of the run (the receiver).
    pub replica: Option<ReplicaRunStats>,
    /// Points merged away by `keep` (the receiver).
    pub removed_points: Vec<u64>,
    /// The version a one-pass run stored (the end closer to the store).
    pub backup: Option<BackupReport>,
    /// Wall time.
    pub elapsed_seconds: f64,
}

/// Runs the end `job.role` names.
///
/// # Errors
/// As [`run_sender`] and [`run_receiver`].
pub fn run_end(job: &ReplicationJob, link: JobLink, opts: &EndOptions) -> Result<EndReport> {
    match job.role {
        JobRole::Sender => run_sender(job, link, opts),
        JobRole::Receiver => run_receiver(job, link, opts),
    }
}

fn timeouts(job: &ReplicationJob) -> (Duration, Option<Duration>) {
    (
        Duration::from_secs(job.connect_timeout_seconds.unwrap_or(60)),
        Some(Duration::from_secs(job.idle_timeout_seconds.unwrap_or(300))),
    )
}

/// The connection of an end, made as `link` and the job say.
pub(super) fn connect(job: &ReplicationJob, link: JobLink, opts: &EndOptions) -> Result<TcpEnd> {
    let (connect_timeout, idle) = timeouts(job);
    let cancel = &opts.run.cancel;
    let dials = job.dials();
    let stream = match link {
        JobLink::Stream(s) => s,
        JobLink::Listener(l) => {
            if let (Some(f), Ok(a)) = (&opts.on_listening, l.local_addr()) {
                f(a);
            }
            alike_replicate::accept(&l, connect_timeout, cancel)?
        }
        JobLink::FromJob if dials => alike_replicate::dial(&job.peer_addrs()?, connect_timeout, cancel)?,
        JobLink::FromJob => {
            let addrs = job.listen_addrs()?;
            let l = TcpListener::bind(&addrs[..])
                .map_err(|e| Error::InvalidArgument(format!("listening on {addrs:?}: {e}")))?;
            if let (Some(f), Ok(a)) = (&opts.on_listening, l.local_addr()) {
                f(a);
            }
            alike_replicate::accept(&l, connect_timeout, cancel)?
        }
    };
    let mut link = LinkOptions::default();
    link.bwlimit = job.bwlimit;
    link.idle_timeout = idle;
    Ok(TcpEnd {
        stream,
        dial: if dials { Dial::Connect } else { Dial::Accept },
        job: job.job_id.clone(),
        secret: job.secret.bytes(),
        link,
    })
}

/// Opens a store a job names.
pub(crate) fn open_store(s: &JobStore) -> Result<Store> {
    let mut b = Store::builder();
    if let Some(c) = &s.cache_dir {
        b.cache_dir(c);
    }
    if let Some(k) = &s.key_file {
        b.key_file(k);
    }
    if let Some(p) = &s.password {
        b.passphrase(&p.0);
    }
    if let Some(f) = &s.password_file {
        b.passphrase(read_secret_file(f)?);
    }
    b.open_at(&s.location)
}

/// A passphrase file: a regular file of at most 64 KiB, its trailing
/// newline removed; its content never appears in an error.
pub(super) fn read_secret_file(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let bad = |what: String| Error::InvalidArgument(format!("password file {}: {what}", path.display()));
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let m = f.metadata().map_err(|e| bad(e.to_string()))?;
    if !m.is_file() || m.len() > 64 << 10 {
        return Err(bad("not a regular file of at most 64 KiB".into()));
    }
    let mut b = Vec::new();
    f.take(64 << 10).read_to_end(&mut b).map_err(|e| bad(e.to_string()))?;
    let s = String::from_utf8(b).map_err(|_| bad("not UTF-8 text".into()))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_owned())
}

/// Runs the sending end of `job` (its disks, its state, its link).
///
/// # Errors
/// The job is not a sender's or breaks a rule; a source cannot be opened
/// or read; the peer cannot be reached in time; the session fails (a peer
/// without the secret, of another job or version; the replica refused);
/// cancellation. Only an acknowledged commit is a success: a link lost
/// after the commit was asked for says so ("the replica may or may not
/// have the point").
pub fn run_sender(job: &ReplicationJob, link: JobLink, opts: &EndOptions) -> Result<EndReport> {
    job.validate()?;
    if job.role != JobRole::Sender {
        return Err(Error::InvalidArgument(format!("job {:?} is the receiver's", job.job_id)));
    }
    if let Some(JobSource::Xen { pool }) = job.disks.first() {
        return super::xen_end::run_sender(job, pool, link, opts);
    }
    let started = Instant::now();
    opts.run.check()?;
    // Open every store first: version sources borrow them.
    let mut stores: Vec<Option<Store>> = Vec::new();
    for d in &job.disks {
        stores.push(match d {
            JobSource::StoreVersion { store, .. } => Some(open_store(store)?),
            _ => None,
        });
    }
    let lookups: Vec<_> = stores.iter().map(|s| s.as_ref().map(Store::manifest_lookup)).collect();
    let mut images = Vec::new();
    let mut versions = Vec::new();
    for ((d, store), lookup) in job.disks.iter().zip(&stores).zip(&lookups) {
        match (d, store, lookup) {
            (JobSource::Image { path }, _, _) => {
                images.push((images.len() + versions.len(), crate::open_image(path, None)?))
            }
            (JobSource::StoreVersion { version, disk, .. }, Some(store), Some(lookup)) => {
                let v = store.version(version, Some(&job.vm))?;
                let all = store.version_sources(&v, lookup)?;
                let n = all.len();
                for (i, s) in all.into_iter().enumerate() {
                    if disk.is_none_or(|d| d == i) {
                        versions.push((images.len() + versions.len(), s));
                    }
                }
                if let Some(d) = disk.filter(|d| *d >= n) {
                    return Err(Error::InvalidArgument(format!("version {} has {n} disk(s), not disk {d}", v.id)));
                }
            }
            _ => return Err(Error::InvalidArgument("a store version without its store".into())),
        }
    }
    let mut ordered: Vec<(usize, &dyn DiskSource)> =
        images.iter().map(|(i, s)| (*i, &**s as &dyn DiskSource)).collect();
    ordered.extend(versions.iter().map(|(i, s)| (*i, s as &dyn DiskSource)));
    ordered.sort_by_key(|(i, _)| *i);
    let disks: Vec<&dyn DiskSource> = ordered.into_iter().map(|(_, s)| s).collect();

    // One-pass (push): the disks are read once, into the store; the replica is fed from that version.
    let one_pass = match &job.backup_to {
        Some(s) => {
            let store = open_store(s)?;
            let bo = BackupOptions { run: opts.run.clone(), ..BackupOptions::default() };
            let b = store.backup(VmInfo::named(&job.vm), &disks, &bo)?;
            Some((store, b))
        }
        None => None,
    };
    let backup_lookup = one_pass.as_ref().map(|(s, _)| s.manifest_lookup());
    let backed: Vec<alike_core::VersionSource<'_>> = match (&one_pass, &backup_lookup) {
        (Some((s, b)), Some(l)) => s.version_sources(&b.version, l)?,
        _ => Vec::new(),
    };
    let sources: Vec<&dyn DiskSource> =
        if one_pass.is_some() { backed.iter().map(|s| s as &dyn DiskSource).collect() } else { disks };

    let end = connect(job, link, opts)?;
    let mut so = SenderOptions::new(&job.vm);
    so.chunking = job.chunking_or_default()?;
    so.state_file = job.state_dir.as_deref().map(|d| super::state_file(d, &job.job_id));
    so.run = opts.run.to_core();
    if one_pass.is_some() {
        so.run.progress = None;
    }
    so.progress = opts.disk_progress.clone();
    let r = alike_replicate::run_sender(end, &sources, &so)?;
    let backup = one_pass.as_ref().map(|(_, b)| b.clone());
    Ok(EndReport {
        role: "sender".into(),
        job_id: job.job_id.clone(),
        vm: job.vm.clone(),
        point: r.point,
        read_bytes: backup.as_ref().map_or(r.read_bytes, |b| b.read_bytes),
        hashed_bytes: r.hashed_bytes,
        needed_bytes: r.needed_bytes,
        sent_bytes: r.sent_bytes,
        answer_bytes: r.received_bytes,
        disks: r.disks,
        replica: None,
        removed_points: Vec::new(),
        backup,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs the receiving end of `job`: the replica (made on the first run),
/// its seed, retention, the one-pass backup of a pull job. The run's
/// history record is appended beside the replica, whatever the outcome.
///
/// # Errors
/// The job is not a receiver's or breaks a rule; the replica is busy, of
/// another VM, or its disks differ from the sender's; the peer does not
/// come in time; the session fails; cancellation. The replica is then at
/// its previous point (a first run keeps what arrived, to resume).
pub fn run_receiver(job: &ReplicationJob, link: JobLink, opts: &EndOptions) -> Result<EndReport> {
    job.validate()?;
    if job.role != JobRole::Receiver {
        return Err(Error::InvalidArgument(format!("job {:?} is the sender's", job.job_id)));
    }
    if let Some(JobReplica::Xen(x)) = &job.replica {
        return super::xen_end::run_receiver(job, x, link, opts);
    }
    let Some(JobReplica::Dir { path }) = &job.replica else {
        return Err(Error::InvalidArgument(format!("job {:?}: a receiver needs \"replica\"", job.job_id)));
    };
    let replica = match &job.chunking {
        Some(_) => Replica::open_or_create_with(path, &job.vm, job.chunking_or_default()?)?,
        None => Replica::open_or_create(path, &job.vm)?,
    };
    let started = Instant::now();
    let started_ms = super::alike_replicate_now_ms();
    let r = receive(job, &replica, link, opts, started);
    let rec = ReplicationRecord::new(started_ms);
    let rec = match &r {
        Ok(rep) => ReplicationRecord {
            point: Some(rep.point),
            read_bytes: rep.read_bytes,
            sent_bytes: rep.sent_bytes,
            elapsed_seconds: rep.elapsed_seconds,
            ..rec
        },
        Err(e) => ReplicationRecord { elapsed_seconds: started.elapsed().as_secs_f64(), ..rec }.failed(e),
    };
    history::append(replica.path(), &rec);
    r
}

fn receive(
    job: &ReplicationJob,
    replica: &Replica,
    link: JobLink,
    opts: &EndOptions,
    started: Instant,
) -> Result<EndReport> {
    opts.run.check()?;
    // The seed is cut and hashed before the peer is waited for: the sender never waits on it.
    let seed_store = match &job.seed {
        Some(s) if replica.points()?.is_empty() => Some((open_store(&s.store)?, s.version.clone())),
        _ => None,
    };
    let seed_lookup = seed_store.as_ref().map(|(s, _)| s.manifest_lookup());
    let mut seed_disks = Vec::new();
    if let (Some((store, version)), Some(lookup)) = (&seed_store, &seed_lookup) {
        let v = store.version(version, Some(&job.vm))?;
        seed_disks = store.version_sources(&v, lookup)?;
    }
    let seeds = seed_disks
        .iter()
        .map(|s| alike_replicate::Seed::prepare(replica.target(), s, &opts.run.to_core()))
        .collect::<alike_replicate::Result<Vec<_>>>()?;
    let end = connect(job, link, opts)?;
    let mut ro = ReceiverOptions::default();
    ro.vm = Some(job.vm.clone());
    ro.keep = job.keep;
    ro.run = opts.run.to_core();
    let r = alike_replicate::run_receiver(end, replica.target(), &ro, &seeds)?;
    // One-pass (pull): the new point, read from the replica, into the store; the source was read once.
    let backup = match &job.backup_to {
        Some(s) => {
            let store = open_store(s)?;
            let n = replica.points()?.iter().find(|p| p.point == r.point).map_or(0, |p| p.disks.len());
            let disks = (0..n).map(|d| replica.point_disk(r.point, d)).collect::<Result<Vec<_>>>()?;
            let refs: Vec<&dyn DiskSource> = disks.iter().map(|d| &**d).collect();
            let bo = BackupOptions { run: opts.run.clone(), ..BackupOptions::default() };
            Some(store.backup(VmInfo::named(&job.vm), &refs, &bo)?)
        }
        None => None,
    };
    let summary = r.sender.clone().unwrap_or_default();
    Ok(EndReport {
        role: "receiver".into(),
        job_id: job.job_id.clone(),
        vm: job.vm.clone(),
        point: r.point,
        read_bytes: summary.read_bytes,
        hashed_bytes: summary.hashed_bytes,
        needed_bytes: r.stats.needed_bytes,
        sent_bytes: r.received_bytes,
        answer_bytes: r.sent_bytes,
        disks: Vec::new(),
        replica: Some(r.stats),
        removed_points: r.removed_points,
        backup,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}
