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

pub use alike_xen::adapter::{FailbackReport, FailoverReport, TestVm, XenReplicaOptions};

use super::history::{self, ReplicationRecord};
use super::{ReplicaExportOptions, ReplicaExportReport, ReplicaPoint, ReplicateOptions, ReplicateReport};
use crate::{Error, Result};

/// The sender's change-tracking state of a replica VM, beside its key and
/// record in the replica's state folder.
const XEN_STATE: &str = "sender.state";

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
        let snap = self.inner.pool().begin_backup(self.inner.vm_ref(), &XenBackupOptions::default(), &[])?;
        let mut so = SenderOptions::new(self.inner.name());
        so.chunking = target.chunking();
        so.run = opts.run.to_core();
        so.progress = opts.disk_progress.clone();
        let mut ro = ReceiverOptions::default();
        ro.run = opts.run.to_core();
        let mut link = LinkOptions::default();
        link.bwlimit = opts.bwlimit;
        let r = alike_replicate::replicate_local(&snap.disks(), &so, &target, &ro, &[], &link);
        let r = match r {
            Ok(r) => {
                snap.commit();
                r
            }
            Err(e) => {
                let _ = snap.abort();
                return Err(e.into());
            }
        };
        let roles = self.inner.finish_failback(target, start)?;
        Ok(XenFailbackReport {
            read_bytes: r.sender.read_bytes,
            needed_bytes: r.sender.needed_bytes,
            sent_bytes: r.sender.sent_bytes,
            roles,
            elapsed_seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// Replicates VM `vm` of `source` onto its replica VM on `target` (found by
/// the source VM's uuid, or made from the VM's configuration as `replica`
/// says), both ends in this process: the CBT backup cycle's snapshot is
/// read (only what changed since the previous run, by CBT), only the chunks
/// the replica lacks are written, and the snapshot is released after the
/// commit. The run's history record is kept in the replica's state folder.
///
/// # Errors
/// A seed or one-pass store was asked for (not for Xen replicas yet); the
/// VM or the SR does not exist; a XAPI call, a read or the run failing (the
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
    if opts.seed.is_some() || opts.backup_to.is_some() {
        return Err(Error::InvalidArgument(
            "seeding and one-pass backup are not available for Xen replicas yet".into(),
        ));
    }
    let mut bo = XenBackupOptions::default();
    bo = bo.cancel_token(opts.run.cancel.clone());
    let snap = source.begin_backup(vm, &bo, &[])?;
    let rep = XenReplica::open_or_create(target, snap.config(), replica)?;
    let dir = replica.state_dir.join(rep.uuid());
    let name = snap.config().name().to_owned();
    let mut so = SenderOptions::new(&name);
    so.chunking = rep.chunking();
    so.state_file = (!opts.no_state).then(|| dir.join(XEN_STATE));
    so.run = opts.run.to_core();
    so.progress = opts.disk_progress.clone();
    let mut ro = ReceiverOptions::default();
    ro.vm = Some(name.clone());
    ro.keep = opts.keep;
    ro.time_ms = opts.time_ms;
    ro.run = opts.run.to_core();
    let mut link = LinkOptions::default();
    link.bwlimit = opts.bwlimit;
    let rec = ReplicationRecord::new(super::alike_replicate_now_ms());
    let r = alike_replicate::replicate_local(&snap.disks(), &so, &rep, &ro, &[], &link);
    let r = match r {
        Ok(r) => {
            snap.commit();
            r
        }
        Err(e) => {
            let _ = snap.abort();
            let e: Error = e.into();
            history::append(
                &dir,
                &ReplicationRecord { elapsed_seconds: started.elapsed().as_secs_f64(), ..rec }.failed(&e),
            );
            return Err(e);
        }
    };
    let report = ReplicateReport {
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
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    history::append(
        &dir,
        &ReplicationRecord {
            point: Some(report.point),
            read_bytes: report.read_bytes,
            sent_bytes: report.sent_bytes,
            elapsed_seconds: report.elapsed_seconds,
            ..rec
        },
    );
    Ok((report, XenReplicaVm { inner: rep, state_dir: replica.state_dir.clone() }))
}
