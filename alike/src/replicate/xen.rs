//! Replicas kept as VMs on a XenServer/XCP-ng pool (`docs/replica-xen.md`):
//! [`replicate_xen`] (a VM of one pool onto its replica VM on another, both
//! ends in this process) and [`XenReplicaVm`] (points, export, retention,
//! test failover, failover, failback).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use alike_replica::ReplicaTarget;
use alike_replicate::{LinkOptions, ReceiverOptions, SenderOptions};
use alike_xen::adapter::{XenBackupOptions, XenPool, XenReplica};
use serde::Serialize;

pub use alike_xen::adapter::{FailbackNewVm, FailbackReport, FailoverReport, TestVm, XenReplicaOptions};

use super::history::{self, ReplicationRecord};
use super::{ReplicaExportOptions, ReplicaExportReport, ReplicaPoint, ReplicateOptions, ReplicateReport};
use crate::{Error, Result};

/// The sender's change-tracking state of a replica VM, beside its key and
/// record in the replica's state folder.
const XEN_STATE: &str = "sender.state";
/// The sender's state of one-pass runs (fed from the store's versions,
/// whose change tokens are not the pool's).
const ONE_PASS_STATE: &str = "sender-one-pass.state";

/// A replica VM on a XenServer/XCP-ng pool (`docs/replica-xen.md`).
///
/// ```no_run
/// # fn main() -> alike::Result<()> {
/// use std::sync::Arc;
/// let dr = Arc::new(alike::xen_pool("https://dr-pool", "root", "secret", None)?);
/// let replica = alike::XenReplicaVm::open(Arc::clone(&dr), "web-01 (replica)", "/var/lib/alike/replicas".as_ref())?;
/// for p in replica.points()? {
///     println!("point {} at {}", p.point, p.time);
/// }
/// let test = replica.test_failover(None, None, true)?; // an isolated copy of the newest point
/// replica.end_test(&test.uuid)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct XenReplicaVm {
    inner: XenReplica,
    state_dir: PathBuf,
}

/// What a failback did: the run that sent the failed-over VM's changes back
/// onto the original, then the swap of roles.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct XenFailbackReport {
    /// Bytes read from the failed-over VM's disks.
    pub read_bytes: u64,
    /// Bytes of the chunks the original lacked.
    pub needed_bytes: u64,
    /// Bytes failback sent, as they would cross a link (the protocol's whole stream).
    pub sent_bytes: u64,
    /// The swap of roles.
    pub roles: FailbackReport,
    /// Wall time.
    pub elapsed_seconds: f64,
}

impl XenReplicaVm {
    /// Opens replica VM `vm` (name, uuid or ref) of `pool`, its key and
    /// record kept under `state_dir`.
    ///
    /// # Errors
    /// No such VM, or it is no replica.
    pub fn open(pool: Arc<XenPool>, vm: &str, state_dir: &Path) -> Result<XenReplicaVm> {
        Ok(XenReplicaVm { inner: XenReplica::open(pool, vm, state_dir)?, state_dir: state_dir.to_owned() })
    }

    /// The replica VM's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }
    /// The replica VM's uuid.
    pub fn uuid(&self) -> &str {
        self.inner.uuid()
    }
    /// The committed points, oldest first.
    ///
    /// # Errors
    /// A XAPI call failing.
    pub fn points(&self) -> Result<Vec<ReplicaPoint>> {
        Ok(self.inner.points()?)
    }
    /// Writes disk `disk` of point `point` to `output` as a raw image.
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
        Ok(self.inner.export(point, disk, output, opts)?)
    }
    /// Keeps the newest `n` points; returns those removed.
    ///
    /// # Errors
    /// `n` is 0; a run holds the replica; a XAPI call failing.
    pub fn keep_last(&self, n: usize) -> Result<Vec<u64>> {
        Ok(self.inner.keep_last(n)?)
    }
    /// Discards what an unfinished first run kept to resume (its journal
    /// in the state folder) and brings the VM's disks back to its base:
    /// the next first run starts from nothing. Returns whether there was a
    /// journal. What `alike replica xen-abandon` does.
    ///
    /// # Errors
    /// A run holds the replica; the journal cannot be removed; a XAPI call
    /// failing.
    pub fn discard_partial(&self) -> Result<bool> {
        Ok(self.inner.discard_partial()?)
    }
    /// The history of runs into this replica, oldest first.
    ///
    /// # Errors
    /// The history file cannot be read.
    pub fn history(&self) -> Result<Vec<ReplicationRecord>> {
        history::read(&self.state_dir.join(self.inner.uuid()))
    }
    /// Boots a copy of `point` (the newest by default) without NICs (or
    /// with its NICs on `network`, an isolated one); runs go on meanwhile.
    ///
    /// # Errors
    /// No such point; a XAPI call failing.
    pub fn test_failover(&self, point: Option<u64>, network: Option<&str>, start: bool) -> Result<TestVm> {
        Ok(self.inner.test_failover(point, network, start)?)
    }
    /// Shuts down and destroys a test failover's VM with its disks.
    ///
    /// # Errors
    /// The VM is no test failover of this replica; a XAPI call failing.
    pub fn end_test(&self, vm: &str) -> Result<()> {
        Ok(self.inner.end_test(vm)?)
    }
    /// Makes the replica the live VM at `point` (the newest by default),
    /// NICs moved by `networks` (source network uuid or name → a network of
    /// this pool), start unblocked, started when `start`. Re-addressing
    /// inside the guest is out of scope.
    ///
    /// # Errors
    /// No such point or network; a run holds the replica; a XAPI call failing.
    pub fn failover(
        &self,
        point: Option<u64>,
        networks: &BTreeMap<String, String>,
        start: bool,
    ) -> Result<FailoverReport> {
        Ok(self.inner.failover(point, networks, start)?)
    }
    /// Sends what changed on this failed-over VM back onto VM `vm` of
    /// `original` (halted; the VM it was failed over from, or another with
    /// disks of the same sizes) — only the chunks whose content differs —
    /// then swaps roles: the original is live again (started when
    /// `start`), this VM a replica of it again. `opts` gives progress,
    /// cancel and the bandwidth limit.
    ///
    /// # Errors
    /// This VM was not failed over; `vm` is running or differs; a XAPI call
    /// or the run failing (the original is then left a replica of this VM:
    /// run failback again).
    pub fn failback(
        &self,
        original: Arc<XenPool>,
        vm: &str,
        start: bool,
        opts: &ReplicateOptions<'_>,
    ) -> Result<XenFailbackReport> {
        let t0 = Instant::now();
        opts.validate()?;
        let target = self.inner.failback_target(original, vm, &self.state_dir)?;
        let r = self.send_back(&target, opts)?;
        let roles = self.inner.finish_failback(target, start)?;
        Ok(failback_report(&r, roles, t0))
    }

    /// Failback onto a new VM, when the VM this one was failed over from is
    /// gone (the original site lost and rebuilt): makes a VM on `original`
    /// from this VM's configuration, the way a replica VM is made (halted,
    /// its disks on [`FailbackNewVm::sr`], its NICs on the networks the
    /// source VM had there or on [`FailbackNewVm::network`], named
    /// [`FailbackNewVm::name`] or as the source VM, tagged `alike-failback`
    /// and marked `alike:failback-of`), copies this VM's disks whole onto
    /// it (every chunk is new there: `needed_bytes` is the VM's data), then
    /// swaps roles as [`XenReplicaVm::failback`] does: the new VM is live
    /// (started when `start`) and the source of this VM, a replica again.
    /// On failure or cancel before the swap touches this VM, the new VM
    /// and its disks are destroyed and this VM is left as it was.
    ///
    /// # Errors
    /// This VM was not failed over; the SR or a network is not on
    /// `original`; a XAPI call or the run failing; cancellation.
    pub fn failback_new_vm(
        &self,
        original: Arc<XenPool>,
        new_vm: &FailbackNewVm,
        start: bool,
        opts: &ReplicateOptions<'_>,
    ) -> Result<XenFailbackReport> {
        let t0 = Instant::now();
        opts.validate()?;
        opts.run.check()?;
        let target = self.inner.failback_new_target(original, new_vm, &self.state_dir)?;
        let r = match self.send_back(&target, opts) {
            Ok(r) => r,
            Err(e) => {
                let name = target.name().to_owned();
                if let Err(e2) = target.discard_failback_vm() {
                    tracing::warn!(vm = %name, error = %e2, "removing the new failback VM");
                }
                return Err(e);
            }
        };
        let roles = self.inner.finish_failback_new(target, start)?;
        Ok(failback_report(&r, roles, t0))
    }

    /// The failback's run: this VM's snapshot replicated onto `target`
    /// (no sender state: only chunks the target lacks travel).
    fn send_back(&self, target: &XenReplica, opts: &ReplicateOptions<'_>) -> Result<alike_replicate::LocalReport> {
        let bo = XenBackupOptions::default().cancel_token(opts.run.cancel.clone());
        let snap = self.inner.pool().begin_backup(self.inner.vm_ref(), &bo, &[])?;
        let mut so = SenderOptions::new(self.inner.name());
        so.chunking = target.chunking();
        so.run = opts.run.to_core();
        so.progress = opts.disk_progress.clone();
        let mut ro = ReceiverOptions::default();
        ro.run = opts.run.to_core();
        let mut link = LinkOptions::default();
        link.bwlimit = opts.bwlimit;
        match alike_replicate::replicate_local(&snap.disks(), &so, target, &ro, &[], &link) {
            Ok(r) => {
                snap.commit();
                Ok(r)
            }
            Err(e) => {
                let _ = snap.abort();
                Err(e.into())
            }
        }
    }
}

/// Replicates VM `vm` of `source` onto its replica VM on `target` (found by
/// the source VM's uuid, or made from the VM's configuration as `replica`
/// says), both ends in this process: the CBT backup cycle's snapshot is
/// read (only what changed since the previous run, by CBT), only the chunks
/// the replica lacks are written, and the snapshot is released after the
/// commit. The run's history record is kept in the replica's state folder.
///
/// - [`ReplicateOptions::seed`]: a replica's first point starts from a
///   version in a store (read here, on the receiver's side, and re-hashed
///   with the replica's key): only chunks that differ from it are sent.
/// - [`ReplicateOptions::backup_to`] (one-pass backup and replication): the
///   VM is backed up into the store as a new version (the source read once,
///   incremental by CBT as [`crate::Store::backup_vm`] is) and the replica is
///   fed from that version, so the version and the new point hold the same
///   snapshot.
/// - A first run cut short (cancel, a lost link, a killed process) is
///   resumed by the next first run without sending again what arrived
///   (`docs/replica-xen.md`, "Resume"); [`XenReplicaVm::discard_partial`]
///   abandons it.
///
/// # Errors
/// The VM or the SR does not exist; the seed's version is of another VM or
/// its disks differ; a XAPI call, a read, the store or the run failing (the
/// replica stays at its last point); cancellation.
pub fn replicate_xen(
    source: &XenPool,
    vm: &str,
    target: Arc<XenPool>,
    replica: &XenReplicaOptions,
    opts: &ReplicateOptions<'_>,
) -> Result<(ReplicateReport, XenReplicaVm)> {
    let started = Instant::now();
    opts.validate()?;
    let rec = ReplicationRecord::new(super::alike_replicate_now_ms());
    let mut history_dir = None;
    let r = match &opts.backup_to {
        None => replicate_snapshot(source, vm, target, replica, opts, &mut history_dir),
        Some((store, bo)) => one_pass(source, vm, target, replica, opts, store, bo, &mut history_dir),
    };
    let Some(dir) = history_dir else { return r };
    let rec = match &r {
        Ok((report, _)) => ReplicationRecord {
            point: Some(report.point),
            read_bytes: report.read_bytes,
            sent_bytes: report.sent_bytes,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            ..rec
        },
        Err(e) => ReplicationRecord { elapsed_seconds: started.elapsed().as_secs_f64(), ..rec }.failed(e),
    };
    history::append(&dir, &rec);
    r.map(|(mut report, v)| {
        report.elapsed_seconds = started.elapsed().as_secs_f64();
        (report, v)
    })
}

/// The engine's options for a run onto `rep`, its sender state kept in
/// `state_file` (unless the run keeps none).
fn engine_options(
    rep: &XenReplica,
    name: &str,
    state_file: PathBuf,
    opts: &ReplicateOptions<'_>,
) -> (SenderOptions, ReceiverOptions, LinkOptions) {
    let mut so = SenderOptions::new(name);
    so.chunking = rep.chunking();
    so.state_file = (!opts.no_state).then_some(state_file);
    so.run = opts.run.to_core();
    so.progress = opts.disk_progress.clone();
    let mut ro = ReceiverOptions::default();
    ro.vm = Some(name.to_owned());
    ro.keep = opts.keep;
    ro.time_ms = opts.time_ms;
    ro.run = opts.run.to_core();
    let mut link = LinkOptions::default();
    link.bwlimit = opts.bwlimit;
    (so, ro, link)
}

/// Runs the engine from `sources` onto `rep`, seeded (a first point only)
/// from the version [`ReplicateOptions::seed`] names.
fn run_engine(
    sources: &[&dyn alike_core::DiskSource],
    rep: &XenReplica,
    so: &SenderOptions,
    ro: &ReceiverOptions,
    link: &LinkOptions,
    opts: &ReplicateOptions<'_>,
) -> Result<alike_replicate::LocalReport> {
    let seed_lookup;
    let seed_disks;
    let mut seeds = Vec::new();
    if let Some((store, version)) = &opts.seed
        && rep.points()?.is_empty()
    {
        let name = ro.vm.as_deref().unwrap_or_default();
        if version.vm != name {
            return Err(Error::InvalidArgument(format!(
                "seed version {} is of VM {:?}, not {name:?}",
                version.short_id(),
                version.vm
            )));
        }
        seed_lookup = store.manifest_lookup();
        seed_disks = store.version_sources(version, &seed_lookup)?;
        for s in &seed_disks {
            seeds.push(alike_replicate::Seed::prepare(rep, s, &opts.run.to_core())?);
        }
    }
    Ok(alike_replicate::replicate_local(sources, so, rep, ro, &seeds, link)?)
}

fn report(name: String, r: alike_replicate::LocalReport) -> ReplicateReport {
    ReplicateReport {
        vm: name,
        point: r.receiver.point,
        time: r.receiver.time,
        time_ms: r.receiver.time_ms,
        read_bytes: r.sender.read_bytes,
        store_read_bytes: 0,
        hashed_bytes: r.sender.hashed_bytes,
        needed_bytes: r.sender.needed_bytes,
        sent_bytes: r.sender.sent_bytes,
        disks: r.sender.disks,
        replica: r.receiver.stats,
        removed_points: r.receiver.removed_points,
        backup: None,
        elapsed_seconds: 0.0,
    }
}

/// A run fed by the source's snapshot (the CBT backup cycle).
fn replicate_snapshot(
    source: &XenPool,
    vm: &str,
    target: Arc<XenPool>,
    replica: &XenReplicaOptions,
    opts: &ReplicateOptions<'_>,
    history_dir: &mut Option<PathBuf>,
) -> Result<(ReplicateReport, XenReplicaVm)> {
    let bo = XenBackupOptions::default().cancel_token(opts.run.cancel.clone());
    let snap = source.begin_backup(vm, &bo, &[])?;
    let rep = match XenReplica::open_or_create(target, snap.config(), replica) {
        Ok(r) => r,
        Err(e) => {
            let _ = snap.abort();
            return Err(e.into());
        }
    };
    let dir = replica.state_dir.join(rep.uuid());
    *history_dir = Some(dir.clone());
    let name = snap.config().name().to_owned();
    let (so, ro, link) = engine_options(&rep, &name, dir.join(XEN_STATE), opts);
    match run_engine(&snap.disks(), &rep, &so, &ro, &link, opts) {
        Ok(r) => {
            snap.commit();
            Ok((report(name, r), XenReplicaVm { inner: rep, state_dir: replica.state_dir.clone() }))
        }
        Err(e) => {
            let _ = snap.abort();
            Err(e)
        }
    }
}

/// One-pass backup and replication: the VM backed up into `store` (its
/// disks read once), the replica fed from the new version.
#[allow(clippy::too_many_arguments)]
fn one_pass(
    source: &XenPool,
    vm: &str,
    target: Arc<XenPool>,
    replica: &XenReplicaOptions,
    opts: &ReplicateOptions<'_>,
    store: &crate::Store,
    bo: &crate::BackupOptions,
    history_dir: &mut Option<PathBuf>,
) -> Result<(ReplicateReport, XenReplicaVm)> {
    let mut bo = bo.clone();
    bo.run = opts.run.clone();
    let backup = store.backup_vm(source, vm, &bo)?;
    let version = &backup.backup.version;
    let config = alike_xen::adapter::XenVmConfig::from_vm_info(&version.manifest.vm)?;
    let rep = XenReplica::open_or_create(target, &config, replica)?;
    let dir = replica.state_dir.join(rep.uuid());
    *history_dir = Some(dir.clone());
    let name = version.vm.clone();
    // The store's versions carry change tokens of their own: a state file
    // of their own too.
    let (mut so, ro, link) = engine_options(&rep, &name, dir.join(ONE_PASS_STATE), opts);
    // The backup already reported reading the disks.
    so.run.progress = None;
    let lookup = store.manifest_lookup();
    let sources = store.version_sources(version, &lookup)?;
    let refs: Vec<&dyn alike_core::DiskSource> = sources.iter().map(|s| s as &dyn alike_core::DiskSource).collect();
    let r = run_engine(&refs, &rep, &so, &ro, &link, opts)?;
    let mut out = report(name, r);
    out.store_read_bytes = out.read_bytes;
    out.read_bytes = backup.read_bytes;
    out.backup = Some(backup.backup);
    Ok((out, XenReplicaVm { inner: rep, state_dir: replica.state_dir.clone() }))
}

/// What a failback reports: its run's figures, the swapped roles, the time.
fn failback_report(r: &alike_replicate::LocalReport, roles: FailbackReport, t0: Instant) -> XenFailbackReport {
    XenFailbackReport {
        read_bytes: r.sender.read_bytes,
        needed_bytes: r.sender.needed_bytes,
        sent_bytes: r.sender.sent_bytes,
        roles,
        elapsed_seconds: t0.elapsed().as_secs_f64(),
    }
}
