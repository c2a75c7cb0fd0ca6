//! A replica folder registered on a Hyper-V host as a replica VM
//! (`docs/hyperv.md`, "Replica VMs"): [`Replica::register_hyperv`] defines
//! the VM from a recorded configuration with the disks of the replica's
//! newest point and marks it a replica (the host refuses to start it);
//! [`Replica::fail_over_hyperv`] unblocks it, after which the folder
//! refuses further runs until it is registered again.

use std::time::Instant;

use alike_core::{DiskSink, Hypervisor, Phase, Placement, PlannedDisk, ProgressSink, RestoreSession, VmInfo, is_zero};
use alike_hyperv::HyperVHost;
use serde::Serialize;

use super::Replica;
use crate::{Error, RestoreOptions, Result};

/// What [`Replica::register_hyperv`] made.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HyperVReplicaReport {
    /// The new VM's id on the host.
    pub vm_id: String,
    /// Its name.
    pub name: String,
    /// The replica's point its disks hold.
    pub point: u64,
    /// Bytes written to the host, all disks.
    pub written_bytes: u64,
    /// What is not as recorded (mapping from another hypervisor, NICs).
    pub warnings: Vec<String>,
    /// Wall time.
    pub elapsed_seconds: f64,
}

/// What [`Replica::test_hyperv`] made.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HyperVTestReport {
    /// The test VM's id on the host.
    pub vm_id: String,
    /// Its name.
    pub name: String,
    /// The replica's point it starts from.
    pub point: u64,
    /// The files made on the host: for each disk the copy of the point and
    /// the differencing file over it that the VM writes.
    pub files: Vec<String>,
    /// Bytes written to the host, all disks.
    pub written_bytes: u64,
    /// What is not as recorded (no NICs, mapping from another hypervisor).
    pub warnings: Vec<String>,
    /// Wall time.
    pub elapsed_seconds: f64,
}

impl Replica {
    /// A test failover on `host`: a new, off VM with `config` (the
    /// folder's [`Replica::vm_config`] or a version's) and **no network
    /// adapters** — or, when `placement` names a switch (an isolated one),
    /// its NICs on that switch with new MACs — whose disks are differencing AVHDX files over copies of
    /// the replica's point `point` (default the newest), named
    /// `<VM> - Test` unless `placement` names it. The replica and its
    /// registered VM are not touched, and runs into the folder go on; the
    /// VM starts. [`Replica::end_test_hyperv`] removes it and its files.
    ///
    /// ```no_run
    /// # fn main() -> alike::Result<()> {
    /// # let host: alike::HyperVHost = todo!();
    /// let replica = alike::Replica::open("/srv/replicas/web-01")?;
    /// let config = replica.vm_config()?.expect("a recorded configuration");
    /// let t = replica.test_hyperv(&host, &config, None, &alike::Placement::on(r"C:\Tests"), &Default::default())?;
    /// host.set_running(&t.vm_id, true)?;
    /// // … check the guest …
    /// alike::Replica::end_test_hyperv(&host, &t.vm_id)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] for a point the replica does
    /// not hold or disks not the replica's; the host's refusals; cancellation
    /// (the VM and its files are then removed).
    pub fn test_hyperv(
        &self,
        host: &HyperVHost,
        config: &VmInfo,
        point: Option<u64>,
        placement: &Placement,
        opts: &RestoreOptions,
    ) -> Result<HyperVTestReport> {
        opts.run.check()?;
        let started = Instant::now();
        let points = self.points()?;
        let point = match point {
            Some(p) => points.into_iter().find(|x| x.point == p).ok_or_else(|| {
                Error::InvalidArgument(format!("replica {} holds no point {p}", self.path().display()))
            })?,
            None => points
                .into_iter()
                .next_back()
                .ok_or_else(|| Error::InvalidArgument(format!("replica {} has no point yet", self.path().display())))?,
        };
        let planned: Vec<PlannedDisk> =
            point.disks.iter().enumerate().map(|(i, d)| PlannedDisk { position: i as u32, size: d.size }).collect();
        let (config, mut warnings) = crate::cross::for_host(config, host.kind(), &planned)?;
        let mut placement = placement.clone();
        if placement.name.is_none() {
            placement.name = Some(format!("{} - Test", self.vm()));
        }
        // On a switch of its own, the copy must not answer with the replica's MACs.
        if placement.network.is_some() {
            placement.keep_macs = false;
        }
        let mut session = host.create_test_vm(&config, &planned, &placement)?;
        let files: Vec<String> = session
            .plan()
            .disks
            .iter()
            .flat_map(|d| [d.path.clone(), alike_hyperv::restore::test_disk_path(&d.path)])
            .collect();
        let written = self.fill(&mut session, &planned, point.point, opts)?;
        let vm = Box::new(session).commit()?;
        warnings.extend(vm.warnings);
        Ok(HyperVTestReport {
            vm_id: vm.vm_uuid,
            name: vm.name,
            point: point.point,
            files,
            written_bytes: written,
            warnings,
            elapsed_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Ends the test failover VM `vm` (id or unique name) on `host`: turned
    /// off, removed, and its differencing files and the copies under them
    /// deleted; the files deleted. A VM whose disks are not a test VM's is
    /// left alone (the replica's own VM, for one).
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] for a VM that is no test VM;
    /// the host's refusals.
    pub fn end_test_hyperv(host: &HyperVHost, vm: &str) -> Result<Vec<String>> {
        Ok(host.end_test_vm(vm)?)
    }

    /// Writes point `point`'s disks into `session`'s; bytes written. On an
    /// error the session is aborted (the VM and its files removed).
    fn fill(
        &self,
        session: &mut dyn RestoreSession,
        planned: &[PlannedDisk],
        point: u64,
        opts: &RestoreOptions,
    ) -> Result<u64> {
        let positions = session.vm().disks.clone();
        let total: u64 = positions.iter().filter_map(|&p| planned.get(p as usize)).map(|d| d.size).sum();
        let sink = ProgressSink::new(opts.run.progress.clone(), Phase::Restore, total);
        let mut written = 0u64;
        for p in positions {
            let r = session.disk(p).map_err(Error::from).and_then(|s| {
                let src = self.point_disk(point, p as usize)?;
                copy(&*src, s, &sink, opts)
            });
            written += r?;
        }
        sink.finish();
        Ok(written)
    }

    /// Registers the replica on `host`: a new, off VM with `config` (a
    /// version's recorded configuration, Hyper-V's or Xen's, mapped as a
    /// restore maps it) whose disks hold the replica's newest point, placed
    /// as asked, then marked a replica so that the host refuses to start it
    /// until [`Replica::fail_over_hyperv`]. A replica that was failed over
    /// is a replica again (runs are accepted). On failure the VM and its
    /// files are removed.
    ///
    /// ```no_run
    /// # fn main() -> alike::Result<()> {
    /// # let (store, host): (alike::Store, alike::HyperVHost) = todo!();
    /// let replica = alike::Replica::open("/srv/replicas/web-01")?;
    /// let version = store.versions(Some("web-01"))?.pop().expect("a version");
    /// let placement = alike::Placement::on(r"C:\Replicas").name("web-01 (replica)");
    /// let r = replica.register_hyperv(&host, version.config(), &placement, &alike::RestoreOptions::default())?;
    /// println!("replica VM {} holds point {}", r.vm_id, r.point);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] when the replica has no point
    /// yet or the configuration's disks
    /// are not the replica's; the host's refusals (`create_vm`, marking);
    /// [`crate::ErrorKind::Cancelled`].
    pub fn register_hyperv(
        &self,
        host: &HyperVHost,
        config: &VmInfo,
        placement: &Placement,
        opts: &RestoreOptions,
    ) -> Result<HyperVReplicaReport> {
        opts.run.check()?;
        let started = Instant::now();
        let point = self
            .points()?
            .pop()
            .ok_or_else(|| Error::InvalidArgument(format!("replica {} has no point yet", self.path().display())))?;
        let planned: Vec<PlannedDisk> =
            point.disks.iter().enumerate().map(|(i, d)| PlannedDisk { position: i as u32, size: d.size }).collect();
        let (config, mut warnings) = crate::cross::for_host(config, host.kind(), &planned)?;
        // Refused before anything is made (checked again when it is made a replica).
        host.require_replica_server()?;
        let mut session = host.create_vm(&config, &planned, placement)?;
        // An error drops the session, which removes the VM and its files.
        let written = self.fill(&mut *session, &planned, point.point, opts)?;
        let vm = session.commit()?;
        // Made a replica with its disks attached, as `Enable-VMReplication
        // -AsReplica` takes a restored VM; a VM the host will not make a
        // replica (not a Replica server) is removed with its files, never
        // left as an ordinary VM anyone could start.
        let auth = alike_hyperv::ReplicaAuthorization::new(&placement.storage);
        if let Err(e) = host.make_replica(&vm.vm_uuid, &auth) {
            if let Err(e2) = host.destroy_vm(&vm.vm_uuid, true) {
                tracing::warn!(error = %e2, "removing the VM the host would not make a replica");
            }
            return Err(e.into());
        }
        self.dir.set_failed_over(None)?;
        self.dir.set_failover_base(None)?;
        warnings.extend(vm.warnings);
        Ok(HyperVReplicaReport {
            vm_id: vm.vm_uuid,
            name: vm.name,
            point: point.point,
            written_bytes: written,
            warnings,
            elapsed_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Fails the replica over to its registered VM `vm` (id or unique
    /// name) on `host`: the VM starts from then on, and this folder refuses
    /// further runs (a run would overwrite what the VM now writes) until
    /// it is registered again.
    ///
    /// # Errors
    /// The host refuses (no such VM, no replica, running).
    pub fn fail_over_hyperv(&self, host: &HyperVHost, vm: &str) -> Result<()> {
        host.fail_over(vm)?;
        self.dir.set_failed_over(Some(vm))?;
        // The failback's baseline: a reference point of the VM as it is at
        // the point, before it first runs, so that a failback reads only
        // what the VM changed since (RCT). Without it a failback compares
        // whole disks (and says so).
        match baseline(host, vm) {
            Ok(b) => self.dir.set_failover_base(Some(&b))?,
            Err(e) => {
                tracing::warn!(error = %e, vm, "no change-tracking baseline: a failback will compare whole disks");
                self.dir.set_failover_base(None)?;
            }
        }
        Ok(())
    }

    /// Failback from Hyper-V: sends what changed on the failed-over VM `vm`
    /// (off) since its point back onto the original disks `originals` (raw
    /// images or block devices, in the VM's disk order — the source files the
    /// replica was fed from), then swaps roles: `vm` is made a replica again
    /// (the host refuses to start it), and the folder takes runs again (from
    /// the originals, now holding what the VM held). Only ranges the VM's
    /// change tracking reports since the failover's baseline are read
    /// (`read_bytes`, over SMB), and of those only the bytes that differ
    /// from the original's are written (`sent_bytes`). Without a baseline
    /// (a failover that could not take one, change tracking reset) whole
    /// disks are compared, with a warning.
    ///
    /// ```no_run
    /// # fn main() -> alike::Result<()> {
    /// # let host: alike::HyperVHost = todo!();
    /// let replica = alike::Replica::open("/srv/replicas/web-01")?;
    /// let r = replica.failback_hyperv(&host, "web-01 (replica)", &["/srv/vms/web-01-os.img"], &Default::default())?;
    /// println!("{} bytes changed, {} sent", r.changed_bytes, r.sent_bytes);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] when the folder was not failed
    /// over to `vm`, `vm` runs, the originals are not raw or differ in
    /// number or size; the host's refusals; cancellation (the originals may
    /// then hold part of the changes: run it again).
    pub fn failback_hyperv(
        &self,
        host: &HyperVHost,
        vm: &str,
        originals: &[impl AsRef<std::path::Path>],
        opts: &RestoreOptions,
    ) -> Result<HyperVFailbackReport> {
        let paths: Vec<&std::path::Path> = originals.iter().map(AsRef::as_ref).collect();
        self.failback_onto(host, vm, &paths, false, opts)
    }

    /// Failback from Hyper-V onto new raw images, when the original disks
    /// are gone (the original site lost and rebuilt): creates `images` (one
    /// per disk of the failed-over VM `vm` (off), in its disk order, each of
    /// its disk's size; an existing path is refused before anything is
    /// made, never overwritten), writes the VM's whole disks into them read
    /// over SMB (sparse: all-zero 4 KiB pieces are not written), then swaps
    /// roles as [`Replica::failback_hyperv`] does, with these images as the
    /// new originals the folder takes runs from. On failure or cancel the
    /// images made are removed and the VM is left as it was.
    ///
    /// ```no_run
    /// # fn main() -> alike::Result<()> {
    /// # let host: alike::HyperVHost = todo!();
    /// let replica = alike::Replica::open("/srv/replicas/web-01")?;
    /// let r = replica.failback_hyperv_new(&host, "web-01 (replica)", &["/srv/vms/web-01-os.img"], &Default::default())?;
    /// println!("{} bytes read, {} written", r.read_bytes, r.sent_bytes);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] when the folder was not failed
    /// over to `vm`, `vm` runs, the images are not one per disk or one of
    /// them exists; I/O on an image; the host's refusals; cancellation.
    pub fn failback_hyperv_new(
        &self,
        host: &HyperVHost,
        vm: &str,
        images: &[impl AsRef<std::path::Path>],
        opts: &RestoreOptions,
    ) -> Result<HyperVFailbackReport> {
        let paths: Vec<&std::path::Path> = images.iter().map(AsRef::as_ref).collect();
        self.failback_onto(host, vm, &paths, true, opts)
    }

    /// The failback onto `targets`: the originals, or new images when `new`.
    fn failback_onto(
        &self,
        host: &HyperVHost,
        vm: &str,
        targets: &[&std::path::Path],
        new: bool,
        opts: &RestoreOptions,
    ) -> Result<HyperVFailbackReport> {
        opts.run.check()?;
        let started = Instant::now();
        let cfg = host
            .vms()?
            .into_iter()
            .find(|v| v.id.eq_ignore_ascii_case(vm) || v.name == vm)
            .ok_or_else(|| Error::from(alike_hyperv::Error::NotFound(format!("VM {vm} on the host"))))?;
        match self.failed_over()? {
            Some(f) if f.eq_ignore_ascii_case(&cfg.id) || f == cfg.name => {}
            other => {
                return Err(Error::InvalidArgument(format!(
                    "replica {} was not failed over to {vm} ({})",
                    self.path().display(),
                    other.map_or_else(|| "it was not failed over".to_owned(), |f| format!("but to {f}"))
                )));
            }
        }
        if cfg.running {
            return Err(Error::InvalidArgument(format!("{}: turn the VM off before failing back", cfg.name)));
        }
        if targets.len() != cfg.disks.len() {
            return Err(Error::InvalidArgument(format!(
                "{} {} disk(s) for the {} disk(s) of {}",
                targets.len(),
                if new { "new" } else { "original" },
                cfg.disks.len(),
                cfg.name
            )));
        }
        for o in targets {
            if new {
                match std::fs::symlink_metadata(o) {
                    Ok(_) => {
                        return Err(Error::InvalidArgument(format!(
                            "{}: exists; a failback onto new images never overwrites a file",
                            o.display()
                        )));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ioe(o, e)),
                }
                continue;
            }
            let f = crate::ImageFormat::detect(o)?;
            if f != crate::ImageFormat::Raw {
                return Err(Error::InvalidArgument(format!(
                    "{}: a {f:?} image; failback writes raw images and block devices only",
                    o.display()
                )));
            }
        }
        // New images are written whole: no baseline is needed.
        let base: Option<Baseline> = if new {
            None
        } else {
            self.dir
                .failover_base()?
                .and_then(|b| serde_json::from_slice(&b).ok())
                .filter(|b: &Baseline| b.vm.eq_ignore_ascii_case(&cfg.id) && b.tokens.len() == cfg.disks.len())
        };
        let mut warnings = Vec::new();
        if base.is_none() && !new {
            warnings.push(format!("{}: no change-tracking baseline from the failover: whole disks compared", cfg.name));
        }
        let session = host.begin_backup(&cfg.id, alike_core::Quiesce::No)?;
        let disks = alike_core::BackupSession::disks(&session);
        let mut report = HyperVFailbackReport {
            vm_id: cfg.id.clone(),
            changed_bytes: 0,
            read_bytes: 0,
            sent_bytes: 0,
            whole_disks: base.is_none(),
            warnings: Vec::new(),
            elapsed_seconds: 0.0,
        };
        let mut created: Vec<&std::path::Path> = Vec::new();
        let mut write = || -> Result<()> {
            let mut plan = Vec::with_capacity(disks.len());
            for (i, (d, o)) in disks.iter().zip(targets).enumerate() {
                let target = if new {
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(o)
                        .map_err(|e| ioe(o, e))?;
                    created.push(o);
                    f.set_len(d.size()).map_err(|e| ioe(o, e))?;
                    f
                } else {
                    std::fs::OpenOptions::new().read(true).write(true).open(o).map_err(|e| ioe(o, e))?
                };
                let len = std::io::Seek::seek(&mut &target, std::io::SeekFrom::End(0)).map_err(|e| ioe(o, e))?;
                if len != d.size() {
                    return Err(Error::InvalidArgument(format!(
                        "{}: {len} bytes, but disk {i} of {} has {}",
                        o.display(),
                        cfg.name,
                        d.size()
                    )));
                }
                let ranges = match base.as_ref().map(|b| d.changed_ranges(b.tokens[i].as_bytes())) {
                    Some(Ok(Some(r))) => r,
                    Some(Ok(None)) | None => {
                        report.whole_disks = true;
                        d.allocated_ranges()?
                    }
                    Some(Err(e)) => {
                        warnings.push(format!(
                            "disk {i}: change tracking since the failover is gone ({e}): whole disk compared"
                        ));
                        report.whole_disks = true;
                        d.allocated_ranges()?
                    }
                };
                plan.push((*d, target, *o, ranges));
            }
            let total = plan.iter().flat_map(|p| &p.3).map(|r| r.end - r.start).sum();
            let sink = ProgressSink::new(opts.run.progress.clone(), Phase::Restore, total);
            for (d, target, path, ranges) in &plan {
                send_changes(*d, target, path, ranges, new, &mut report, &sink, opts)?;
                target.sync_all().map_err(|e| ioe(path, e))?;
            }
            sink.finish();
            Ok(())
        };
        let written = write();
        drop(disks);
        if let Err(e) = written {
            // Nothing half-made is left: the images this made go.
            for p in &created {
                if let Err(e2) = std::fs::remove_file(p) {
                    tracing::warn!(path = %p.display(), error = %e2, "removing a new image of a failed failback");
                }
            }
            let _ = alike_core::BackupSession::abort(Box::new(session));
            return Err(e);
        }
        let _ = alike_core::BackupSession::commit(Box::new(session));
        // Roles swapped: the originals (or the new images) are live, the VM a replica again.
        host.make_replica(&cfg.id, &alike_hyperv::ReplicaAuthorization::new(&folder_of(&cfg)))?;
        self.dir.set_failover_base(None)?;
        self.dir.set_failed_over(None)?;
        report.warnings = warnings;
        report.elapsed_seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// The VM's configuration recorded in the folder by a run that knew it
    /// (a store version's, a seeding version's, a Xen or Hyper-V source's:
    /// [`crate::ReplicateOptions::vm_config`]); what
    /// [`Replica::register_hyperv`] takes when no version is named.
    ///
    /// # Errors
    /// The file cannot be read or is malformed.
    pub fn vm_config(&self) -> Result<Option<VmInfo>> {
        Ok(self.dir.vm_config()?)
    }

    /// The VM the replica was failed over to, if it was (runs are then refused).
    ///
    /// # Errors
    /// The marker cannot be read.
    pub fn failed_over(&self) -> Result<Option<String>> {
        Ok(self.dir.failed_over()?)
    }
}

/// What [`Replica::failback_hyperv`] did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HyperVFailbackReport {
    /// The VM failed back from (a replica again).
    pub vm_id: String,
    /// Bytes the VM's change tracking reported changed since the failover
    /// (whole disks' allocated bytes without a baseline).
    pub changed_bytes: u64,
    /// Bytes read from the host (over SMB).
    pub read_bytes: u64,
    /// Bytes written onto the originals: those that differed.
    pub sent_bytes: u64,
    /// Whole disks were compared (no change-tracking baseline).
    pub whole_disks: bool,
    /// Why whole disks were compared, and the like.
    pub warnings: Vec<String>,
    /// Wall time.
    pub elapsed_seconds: f64,
}

/// The failover's baseline (`failover-base.json`): the VM and each disk's
/// change token at the point.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Baseline {
    vm: String,
    tokens: Vec<String>,
}

/// A reference point of `vm` as it is now; its JSON baseline.
fn baseline(host: &HyperVHost, vm: &str) -> Result<Vec<u8>> {
    let cfg = host
        .vms()?
        .into_iter()
        .find(|v| v.id.eq_ignore_ascii_case(vm) || v.name == vm)
        .ok_or_else(|| Error::from(alike_hyperv::Error::NotFound(format!("VM {vm} on the host"))))?;
    let session = host.begin_backup(&cfg.id, alike_core::Quiesce::No)?;
    let tokens = alike_core::BackupSession::disks(&session)
        .iter()
        .map(|d| d.change_token().map(|t| String::from_utf8_lossy(&t).into_owned()))
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| Error::InvalidArgument(format!("{}: a disk without change tracking", cfg.name)))?;
    let rel = alike_core::BackupSession::commit(Box::new(session));
    if !rel.warnings.is_empty() {
        return Err(Error::InvalidArgument(rel.warnings.join("; ")));
    }
    serde_json::to_vec(&Baseline { vm: cfg.id, tokens }).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// The host folder of a VM's first disk (`C:\\X\\VM\\d.vhdx` → `C:\\X\\VM`).
fn folder_of(cfg: &alike_hyperv::HvVmConfig) -> String {
    cfg.disks.first().and_then(|d| d.path.rsplit_once('\\').map(|(f, _)| f.to_owned())).unwrap_or_default()
}

fn ioe(path: &std::path::Path, source: std::io::Error) -> Error {
    Error::Engine(alike_core::Error::Io { path: path.to_owned(), source })
}

/// Reads `ranges` of `src` and writes what differs from `to` there (`to`
/// reads as zeroes when `fresh`: it is not read, and all-zero pieces are
/// not written, so it stays sparse).
#[allow(clippy::too_many_arguments)]
fn send_changes(
    src: &dyn alike_core::DiskSource,
    to: &std::fs::File,
    path: &std::path::Path,
    ranges: &[std::ops::Range<u64>],
    fresh: bool,
    report: &mut HyperVFailbackReport,
    sink: &ProgressSink,
    opts: &RestoreOptions,
) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    let mut a = vec![0u8; 1 << 20];
    let mut b = vec![0u8; 1 << 20];
    for r in ranges {
        report.changed_bytes += r.end - r.start;
        let mut at = r.start;
        while at < r.end {
            opts.run.cancel.check()?;
            let n = (r.end - at).min(a.len() as u64) as usize;
            src.read_at(at, &mut a[..n])?;
            report.read_bytes += n as u64;
            if fresh {
                b[..n].fill(0);
            } else {
                to.read_exact_at(&mut b[..n], at).map_err(|e| ioe(path, e))?;
            }
            // Compared in 4 KiB pieces: only those that differ are written.
            for (i, (x, y)) in a[..n].chunks(4096).zip(b[..n].chunks(4096)).enumerate() {
                if x != y {
                    to.write_all_at(x, at + (i * 4096) as u64).map_err(|e| ioe(path, e))?;
                    report.sent_bytes += x.len() as u64;
                }
            }
            sink.add(n as u64);
            at += n as u64;
        }
    }
    Ok(())
}

/// Writes `src` into what the host handed back; bytes written.
fn copy(src: &dyn alike_core::DiskSource, to: DiskSink<'_>, sink: &ProgressSink, opts: &RestoreOptions) -> Result<u64> {
    let DiskSink::Target { target, .. } = to else {
        return Err(Error::InvalidArgument("the host asked for a stream, not a disk to write".into()));
    };
    if !target.holes_read_as_zero() {
        return Err(Error::InvalidArgument(format!("{}: a target whose holes are not zero", target.label())));
    }
    let size = src.size();
    let mut buf = vec![0u8; 4 << 20];
    let mut written = 0u64;
    let mut done = 0u64;
    for r in src.allocated_ranges()? {
        if r.start > done {
            sink.add(r.start - done);
        }
        let mut at = r.start;
        while at < r.end {
            opts.run.cancel.check()?;
            let n = (r.end - at).min(buf.len() as u64);
            let b = &mut buf[..n as usize];
            src.read_at(at, b)?;
            if !is_zero(b) {
                target.write_at(at, b)?;
                written += n;
            }
            sink.add(n);
            at += n;
        }
        done = r.end;
    }
    if size > done {
        sink.add(size - done);
    }
    target.finish(size)?;
    Ok(written)
}
