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
    /// adapters**, whose disks are differencing AVHDX files over copies of
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
        Ok(())
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
