//! Replication (Enhanced Replication): a VM's disks onto a replica, sending
//! only the chunks the replica lacks. Needs no store — a store only to seed
//! a first replication from a version, or for one-pass backup and
//! replication.
//!
//! - In one process ([`replicate`], [`replicate_images`],
//!   [`Store::replicate_version`]): both ends of the protocol run here over
//!   an in-memory link, so [`ReplicateReport::sent_bytes`] is what would
//!   cross a network.
//! - As one end of two processes ([`run_sender`], [`run_receiver`],
//!   [`run_end`]) given a [`ReplicationJob`]: what a processor started by
//!   an orchestrator runs, and what `alike replicate --listen/--connect` does.
//!
//! A replica is a folder of VHDX files ([`Replica`]; `docs/replica-dir.md`):
//! points, export of a point's disk, the history of runs; or (feature
//! `xen`) a VM on a XenServer/XCP-ng pool ([`XenReplicaVm`],
//! [`replicate_xen`]; `docs/replica-xen.md`), with test failover, failover
//! and failback.

mod both;
mod end;
mod history;
#[cfg(feature = "hyperv")]
mod hyperv;
mod job;
#[cfg(feature = "xen")]
mod xen;
mod xen_end;

#[cfg(feature = "remote")]
pub(crate) use both::one_process_can;
pub(crate) use both::run_both;
pub(crate) use xen_end::vm_config as xen_vm_config;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use alike_core::{DiskSource, Progress, VmInfo};
use alike_replica::{ReplicaDir, ReplicaTarget};
use alike_replicate::{LinkOptions, ReceiverOptions, ReplicationProgressFn, SenderOptions};
use serde::Serialize;

use crate::options::Run;
use crate::{BackupOptions, BackupReport, CancelToken, Error, Result, Store, Version};

pub use end::{EndOptions, EndReport, JobLink, run_end, run_receiver, run_sender};
pub use history::ReplicationRecord;
#[cfg(feature = "hyperv")]
pub use hyperv::{HyperVFailbackReport, HyperVReplicaReport, HyperVTestReport};
pub use job::{
    DEFAULT_PORT, Flow, JOB_VERSION, JobPassword, JobReplica, JobRole, JobSecret, JobSeed, JobSource, JobStore,
    JobXenPool, JobXenReplica, MAX_JOB_BYTES, MAX_KEEP, ReplicationJob,
};
#[cfg(feature = "xen")]
pub use xen::{
    FailbackNewVm, FailbackReport, FailoverReport, TestVm, XenFailbackReport, XenReplicaOptions, XenReplicaVm,
    replicate_xen,
};

/// A committed point of a replica: what `alike replica list --json` prints.
pub type ReplicaPoint = alike_replica::Point;
/// Options of [`Replica::export`].
pub type ReplicaExportOptions = alike_replica::ExportOptions;
/// What [`Replica::export`] did.
pub type ReplicaExportReport = alike_replica::ExportReport;
/// What a run did with the sender's offers on the replica's side.
pub type ReplicaRunStats = alike_replica::RunStats;
pub use alike_replicate::{DiskProgress, ReplicationProgress};

/// The name of the sender's state file in a replica folder, when one
/// process plays both ends (`docs/replica-dir.md` §9).
const LOCAL_STATE: &str = "sender.state";

/// A replica kept as a folder of VHDX files (a base VHDX and one
/// differencing AVHDX per point): as a Hyper-V host or a share holds one.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let image = dir.path().join("disk0.img");
/// # std::fs::write(&image, vec![7u8; 1 << 20]).unwrap();
/// let replica = alike::Replica::open_or_create(dir.path().join("web-01"), "web-01")?;
/// let report = alike::replicate_images("web-01", &[&image], &replica, &alike::ReplicateOptions::default())?;
/// let points = replica.points()?;
/// assert_eq!(points.last().map(|p| p.point), Some(report.point));
/// replica.export(report.point, 0, &dir.path().join("out.img"), &Default::default())?;
/// # assert_eq!(std::fs::read(dir.path().join("out.img")).unwrap(), std::fs::read(&image).unwrap());
/// # Ok::<(), alike::Error>(())
/// ```
#[derive(Debug)]
pub struct Replica {
    dir: ReplicaDir,
}

impl Replica {
    /// Opens the replica in `dir`.
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`] when `dir` holds no replica; a
    /// damaged manifest.
    pub fn open(dir: impl AsRef<Path>) -> Result<Replica> {
        Ok(Replica { dir: ReplicaDir::open(dir)? })
    }

    /// Opens the replica of VM `vm` in `dir`, or makes one there (content
    /// defined chunks, as a new store's).
    ///
    /// # Errors
    /// The replica there holds another VM ([`crate::ErrorKind::InvalidArgument`]);
    /// the folder cannot be made.
    pub fn open_or_create(dir: impl AsRef<Path>, vm: &str) -> Result<Replica> {
        Ok(Replica { dir: ReplicaDir::builder().vm(vm).open_or_create(dir)? })
    }

    /// As [`Replica::open_or_create`], a new replica cutting disks with
    /// `chunking` (finer chunks send less for scattered small changes, and
    /// offer more ids).
    ///
    /// # Errors
    /// As [`Replica::open_or_create`]; `chunking` out of range; an existing
    /// replica there cut otherwise ([`crate::ErrorKind::InvalidArgument`]).
    pub fn open_or_create_with(dir: impl AsRef<Path>, vm: &str, chunking: alike_core::Chunking) -> Result<Replica> {
        chunking.validate()?;
        let r = Replica { dir: ReplicaDir::builder().vm(vm).chunking(chunking).open_or_create(dir)? };
        if r.chunking() != chunking {
            return Err(Error::InvalidArgument(format!(
                "{}: the replica cuts disks as {}, not {chunking}",
                r.path().display(),
                r.chunking()
            )));
        }
        Ok(r)
    }

    /// How the replica cuts disks.
    pub fn chunking(&self) -> alike_core::Chunking {
        self.dir.chunking()
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// The VM it holds.
    pub fn vm(&self) -> &str {
        self.dir.vm()
    }

    /// The committed points, oldest first.
    ///
    /// # Errors
    /// The manifest cannot be read.
    pub fn points(&self) -> Result<Vec<ReplicaPoint>> {
        Ok(self.dir.points()?)
    }

    /// Disk `disk` of point `point`, to read.
    ///
    /// # Errors
    /// No such point or disk; its files are damaged.
    pub fn point_disk(&self, point: u64, disk: usize) -> Result<Box<dyn DiskSource>> {
        Ok(self.dir.point_disk(point, disk)?)
    }

    /// Writes disk `disk` of point `point` to `output` as a raw image
    /// (sparse where the point holds zeroes).
    ///
    /// # Errors
    /// No such point or disk; `output` exists (unless forced); I/O; cancellation.
    pub fn export(
        &self,
        point: u64,
        disk: usize,
        output: &Path,
        opts: &ReplicaExportOptions,
    ) -> Result<ReplicaExportReport> {
        Ok(self.dir.export(point, disk, output, opts)?)
    }

    /// Keeps the newest `n` points, merging the older ones away; returns
    /// those removed.
    ///
    /// # Errors
    /// `n` is 0; a run holds the replica ([`crate::ErrorKind::Busy`]); I/O.
    pub fn keep_last(&self, n: usize) -> Result<Vec<u64>> {
        Ok(self.dir.keep_last(n)?)
    }

    /// Discards what an unfinished first run kept to resume; returns
    /// whether there was something.
    ///
    /// # Errors
    /// A run holds the replica; I/O.
    pub fn discard_partial(&self) -> Result<bool> {
        Ok(self.dir.discard_partial()?)
    }

    /// The history of runs into this replica, oldest first.
    ///
    /// # Errors
    /// The history file cannot be read.
    pub fn history(&self) -> Result<Vec<ReplicationRecord>> {
        history::read(self.dir.path())
    }

    pub(crate) fn target(&self) -> &ReplicaDir {
        &self.dir
    }
}

/// Options of [`replicate`]: retention, bandwidth, progress and cancel,
/// and a store for seeding or one-pass backup.
///
/// ```
/// let opts = alike::ReplicateOptions::default().keep(7).bwlimit(20 << 20).progress(|p| {
///     eprintln!("{} of {} bytes read", p.bytes_done, p.bytes_total);
/// });
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ReplicateOptions<'a> {
    pub(crate) run: Run,
    pub(crate) disk_progress: Option<ReplicationProgressFn>,
    pub(crate) keep: Option<usize>,
    pub(crate) bwlimit: Option<u64>,
    pub(crate) time_ms: Option<u64>,
    pub(crate) no_state: bool,
    pub(crate) seed: Option<(&'a Store, Version)>,
    pub(crate) backup_to: Option<(&'a Store, BackupOptions)>,
    pub(crate) vm_config: Option<VmInfo>,
}

impl std::fmt::Debug for ReplicateOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicateOptions")
            .field("keep", &self.keep)
            .field("bwlimit", &self.bwlimit)
            .field("seed", &self.seed.as_ref().map(|s| &s.1.id))
            .field("backup_to", &self.backup_to.as_ref().map(|b| b.0.location()))
            .finish_non_exhaustive()
    }
}

impl<'a> ReplicateOptions<'a> {
    /// Called with progress (bytes read from the sources of all disks /
    /// what the run will read) from the engine's threads.
    pub fn progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.run.progress = Some(Arc::new(f));
        self
    }
    /// Called about five times a second with each disk's bytes read,
    /// hashed, offered, needed and sent, and the bytes on the wire.
    pub fn disk_progress(mut self, f: impl Fn(&ReplicationProgress) + Send + Sync + 'static) -> Self {
        self.disk_progress = Some(Arc::new(f));
        self
    }
    /// Cancels the run when `token` is cancelled (the replica stays at its
    /// last point).
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.run.cancel = token;
        self
    }
    /// After the commit, keep only the newest `n` points (1 to [`MAX_KEEP`]).
    pub fn keep(mut self, n: usize) -> Self {
        self.keep = Some(n);
        self
    }
    /// Bytes per second on the wire (at least [`crate::MIN_BANDWIDTH`]).
    pub fn bwlimit(mut self, bytes_per_second: u64) -> Self {
        self.bwlimit = Some(bytes_per_second);
        self
    }
    /// The new point's time, milliseconds since the Unix epoch (default: now).
    pub fn time_ms(mut self, ms: u64) -> Self {
        self.time_ms = Some(ms);
        self
    }
    /// Keep no change-tracking state between runs: every run reads every
    /// disk whole (and still sends only what differs).
    pub fn no_state(mut self, yes: bool) -> Self {
        self.no_state = yes;
        self
    }
    /// A replica's first point starts from `version` of `store` (read and
    /// re-hashed with the replica's key): only what differs crosses.
    pub fn seed(mut self, store: &'a Store, version: &Version) -> Self {
        self.seed = Some((store, version.clone()));
        self
    }
    /// One-pass backup and replication: the sources are read once, into a
    /// new version of the VM in `store` (with `opts`), and the replica is
    /// fed from that version.
    pub fn backup_to(mut self, store: &'a Store, opts: BackupOptions) -> Self {
        self.backup_to = Some((store, opts));
        self
    }

    /// The VM's configuration, recorded in the replica folder by a
    /// committed run (`vm-config.json`) so that
    /// [`Replica::register_hyperv`] needs no store. Without it, a run
    /// records a seeding version's configuration; [`Store::replicate_version`]
    /// records the version's. A plain image's (`hypervisor` `raw`) is never recorded.
    pub fn vm_config(mut self, config: &VmInfo) -> Self {
        self.vm_config = Some(config.clone());
        self
    }

    /// Checks the ranges, as [`replicate`] does first.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] naming the value and its range.
    pub fn validate(&self) -> Result<()> {
        self.run.check()?;
        if let Some(k) = self.keep.filter(|k| !(1..=MAX_KEEP).contains(k)) {
            return Err(Error::InvalidArgument(format!("keep {k}: 1 to {MAX_KEEP}")));
        }
        if let Some(b) = self.bwlimit.filter(|&b| b < crate::MIN_BANDWIDTH) {
            return Err(Error::InvalidArgument(format!(
                "bandwidth limit of {b} bytes/s: at least {} (1 KiB/s)",
                crate::MIN_BANDWIDTH
            )));
        }
        if let Some((_, o)) = &self.backup_to {
            o.check()?;
        }
        Ok(())
    }
}

/// What a replication did: what `alike replicate --json` prints.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ReplicateReport {
    /// The VM.
    pub vm: String,
    /// The new point.
    pub point: u64,
    /// Its time, RFC 3339.
    pub time: String,
    /// Its time in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Bytes read from the VM's disks (in a one-pass run, by the backup:
    /// the disks are read once).
    pub read_bytes: u64,
    /// Bytes the replication read back from the new version in the store
    /// (one-pass runs; 0 otherwise).
    pub store_read_bytes: u64,
    /// Bytes of chunks hashed with the replica's key.
    pub hashed_bytes: u64,
    /// Bytes of the chunks the replica lacked.
    pub needed_bytes: u64,
    /// Bytes the sender handed the receiver, as they would cross a link:
    /// the protocol's whole stream (handshake, offers, compressed data,
    /// framing).
    pub sent_bytes: u64,
    /// Per disk.
    pub disks: Vec<DiskProgress>,
    /// What the replica's side did with the offers.
    pub replica: ReplicaRunStats,
    /// Points merged away by `keep`.
    pub removed_points: Vec<u64>,
    /// The version a one-pass run stored.
    pub backup: Option<BackupReport>,
    /// Wall time.
    pub elapsed_seconds: f64,
}

/// Replicates `disks` (VM `vm`'s disks, in order) into `replica` as a new
/// point, both ends in this process; see the module docs. The run's history
/// record is appended beside the replica, whatever the outcome.
///
/// # Errors
/// A source fails; the replica is busy, of another VM, or its disks differ;
/// cancellation. The replica is then at its previous point.
pub fn replicate(
    vm: &str,
    disks: &[&dyn DiskSource],
    replica: &Replica,
    opts: &ReplicateOptions<'_>,
) -> Result<ReplicateReport> {
    let started = Instant::now();
    let started_ms = alike_replicate_now_ms();
    let rec = history::ReplicationRecord::new(started_ms);
    let r = replicate_inner(vm, disks, replica, opts, started);
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

fn alike_replicate_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn replicate_inner(
    vm: &str,
    disks: &[&dyn DiskSource],
    replica: &Replica,
    opts: &ReplicateOptions<'_>,
    started: Instant,
) -> Result<ReplicateReport> {
    opts.validate()?;
    if replica.vm() != vm {
        return Err(Error::InvalidArgument(format!(
            "{}: the replica holds VM {:?}, not {vm:?}",
            replica.path().display(),
            replica.vm()
        )));
    }
    // One-pass: the disks are read once, into the store; the replica is fed from the new version.
    let backup = match &opts.backup_to {
        Some((store, bo)) => {
            let mut bo = bo.clone();
            bo.run = opts.run.clone();
            Some((store, store.backup(VmInfo::named(vm), disks, &bo)?))
        }
        None => None,
    };
    let lookups;
    let versions;
    let from_store: Vec<&dyn DiskSource>;
    let sources: &[&dyn DiskSource] = match &backup {
        Some((store, b)) => {
            lookups = store.manifest_lookup();
            versions = store.version_sources(&b.version, &lookups)?;
            from_store = versions.iter().map(|v| v as &dyn DiskSource).collect();
            &from_store
        }
        None => disks,
    };
    let seed_lookup;
    let seed_disks;
    let mut seeds = Vec::new();
    if let Some((store, version)) = &opts.seed {
        if replica.points()?.is_empty() {
            seed_lookup = store.manifest_lookup();
            seed_disks = store.version_sources(version, &seed_lookup)?;
            for s in &seed_disks {
                seeds.push(alike_replicate::Seed::prepare(replica.target(), s, &opts.run.to_core())?);
            }
        }
    }
    let mut so = SenderOptions::new(vm);
    so.chunking = replica.target().chunking();
    so.state_file = (!opts.no_state).then(|| replica.path().join(LOCAL_STATE));
    so.run = opts.run.to_core();
    // In a one-pass run the backup already reported reading the disks.
    if backup.is_some() {
        so.run.progress = None;
    }
    so.progress = opts.disk_progress.clone();
    let mut ro = ReceiverOptions::default();
    ro.vm = Some(vm.to_owned());
    ro.keep = opts.keep;
    ro.time_ms = opts.time_ms;
    ro.run = opts.run.to_core();
    let mut link = LinkOptions::default();
    link.bwlimit = opts.bwlimit;
    let r = alike_replicate::replicate_local(sources, &so, replica.target(), &ro, &seeds, &link)?;
    let config = opts.vm_config.as_ref().or_else(|| opts.seed.as_ref().map(|(_, v)| v.config()));
    if let Some(c) = config.filter(|c| c.hypervisor != "raw") {
        // The point is committed; a configuration that cannot be written
        // only costs `--config-version` at registration.
        if let Err(e) = replica.dir.set_vm_config(c) {
            tracing::warn!(error = %e, "recording the VM's configuration in the replica folder");
        }
    }
    let (read_bytes, store_read_bytes) = match &backup {
        Some((_, b)) => (b.read_bytes, r.sender.read_bytes),
        None => (r.sender.read_bytes, 0),
    };
    Ok(ReplicateReport {
        vm: vm.to_owned(),
        point: r.receiver.point,
        time: r.receiver.time,
        time_ms: r.receiver.time_ms,
        read_bytes,
        store_read_bytes,
        hashed_bytes: r.sender.hashed_bytes,
        needed_bytes: r.sender.needed_bytes,
        sent_bytes: r.sender.sent_bytes,
        disks: r.sender.disks,
        replica: r.receiver.stats,
        removed_points: r.receiver.removed_points,
        backup: backup.map(|(_, b)| b),
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Replicates image files (raw, VHD, VHDX/AVHDX, told by their signature;
/// block devices) as the disks of VM `vm` into `replica`: what `alike
/// replicate --vm NAME --to-dir DIR DISK…` does.
///
/// # Errors
/// An image cannot be opened; as [`replicate`].
pub fn replicate_images(
    vm: &str,
    images: &[impl AsRef<Path>],
    replica: &Replica,
    opts: &ReplicateOptions<'_>,
) -> Result<ReplicateReport> {
    let sources = images.iter().map(|p| crate::open_image(p, None)).collect::<Result<Vec<_>>>()?;
    let refs: Vec<&dyn DiskSource> = sources.iter().map(|s| &**s).collect();
    replicate(vm, &refs, replica, opts)
}

impl Store {
    /// Replicates `version` (its disks read back from this store, only the
    /// windows that changed since the version the last run replicated)
    /// into `replica`.
    ///
    /// # Errors
    /// As [`replicate`].
    pub fn replicate_version(
        &self,
        version: &Version,
        replica: &Replica,
        opts: &ReplicateOptions<'_>,
    ) -> Result<ReplicateReport> {
        let lookup = self.manifest_lookup();
        let sources = self.version_sources(version, &lookup)?;
        let refs: Vec<&dyn DiskSource> = sources.iter().map(|s| s as &dyn DiskSource).collect();
        if opts.vm_config.is_some() {
            return replicate(&version.vm, &refs, replica, opts);
        }
        let mut o = opts.clone();
        o.vm_config = Some(version.config().clone());
        replicate(&version.vm, &refs, replica, &o)
    }
}

/// The default folder of sender state files for jobs (none: a job without
/// `state_dir` keeps no state).
pub(crate) fn state_file(dir: &Path, job_id: &str) -> PathBuf {
    let h = blake3::hash(job_id.as_bytes());
    let hex: String = h.as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("job-{hex}.state"))
}
