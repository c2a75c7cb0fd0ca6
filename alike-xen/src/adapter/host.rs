//! [`XenPool`] as an [`alike_core::Hypervisor`]: the engine's one backup and
//! restore path over this pool.
//!
//! Settings that only a pool understands (how disks are read, how many NBD
//! connections, where exports are spooled, the upload format) are set on the
//! pool ([`XenPool::set_backup_options`], [`XenPool::set_upload_format`]);
//! what every host understands (quiesce, cancel, storage, network, name,
//! MACs) comes through the trait.
//!
//! Host identifiers keep XAPI's names in reports: a backup's disks carry
//! `vdi` and `snapshot_vdi` (uuids), a release `data_destroyed_vdis` and
//! `destroyed_vdis`, an uploaded disk `vdi_uuid`.

use alike_core::{
    BackupSession, CreatedVm as CoreVm, DiskSink, DiskSource, Hypervisor, Placement, PlannedDisk, PreviousDisk,
    ReleaseReport as CoreRelease, RestoreSession, SessionDisk, SnapshotOptions, StreamSink, StreamWritten, VmInfo,
};

use super::backup::{ReleaseReport, XenBackup};
use super::config::XenVmConfig;
use super::error::PoolError;
use super::pool::XenPool;
use super::restore::{CreatedVm, UploadFormat, VmRestoreOptions};
use crate::xapi::ImportFormat;

impl Hypervisor for XenPool {
    fn kind(&self) -> &str {
        "xen"
    }

    fn list_vms(&self) -> alike_core::Result<Vec<VmInfo>> {
        let mut out = Vec::new();
        for s in self.vms()? {
            let (vm_ref, raw) = self.find_vm(&s.uuid)?;
            out.push(self.capture(&vm_ref, &raw)?.config.to_vm_info());
        }
        Ok(out)
    }

    fn vm_name(&self, vm: &str) -> alike_core::Result<String> {
        let (_, raw) = self.find_vm(vm)?;
        Ok(raw.get("name_label").and_then(|v| v.as_str()).unwrap_or_default().to_owned())
    }

    fn begin_backup(
        &self,
        vm: &str,
        previous: &[PreviousDisk],
        opts: &SnapshotOptions,
    ) -> alike_core::Result<Box<dyn BackupSession + '_>> {
        let o = self.backup_options().clone().quiesce(opts.quiesce).cancel_token(opts.cancel.clone());
        let prev: Vec<(u32, Vec<u8>)> = previous.iter().map(|p| (p.position, p.token.clone())).collect();
        Ok(Box::new(XenPool::begin_backup(self, vm, &o, &prev)?))
    }

    fn create_vm(
        &self,
        config: &VmInfo,
        disks: &[PlannedDisk],
        placement: &Placement,
    ) -> alike_core::Result<Box<dyn RestoreSession + '_>> {
        let xen = XenVmConfig::from_vm_info(config)?;
        for d in &xen.disks {
            if !disks.iter().any(|p| p.position == d.position) {
                return Err(PoolError::InvalidArgument(format!(
                    "VM {:?} records disk {} in its configuration but the version holds no such disk",
                    config.name, d.position
                ))
                .into());
            }
        }
        let mut o = VmRestoreOptions::default().keep_macs(placement.keep_macs).format(self.upload_format());
        if let Some(n) = &placement.name {
            o = o.name(n);
        }
        let made = XenPool::create_vm(self, &xen, &placement.storage, placement.network.as_deref(), &o)?;
        let mut core = CoreVm::new(&made.uuid, &made.vm_ref, &made.name);
        core.disks = made.disks.iter().map(|d| d.position).collect();
        core.warnings.clone_from(&made.warnings);
        Ok(Box::new(XenRestore { pool: self, made, core, format: self.upload_format(), finished: false }))
    }

    fn existing_disk(&self, disk: &str) -> alike_core::Result<DiskSink<'_>> {
        let vdi_ref = self.find_vdi(disk)?;
        Ok(DiskSink::Stream(Box::new(Upload { pool: self, vdi_ref, format: self.upload_format(), new_vdi: false })))
    }
}

impl BackupSession for XenBackup<'_> {
    fn vm(&self) -> &VmInfo {
        self.vm_info()
    }
    fn disks(&self) -> Vec<&dyn DiskSource> {
        XenBackup::disks(self)
    }
    fn disk_details(&self) -> Vec<SessionDisk> {
        self.xen_disks()
            .iter()
            .map(|d| {
                SessionDisk::new(d.position(), d.size(), d.transport().name())
                    .id("vdi", d.vdi_uuid())
                    .id("snapshot_vdi", d.snapshot_vdi_uuid())
                    .wire_bytes(d.wire_bytes())
            })
            .collect()
    }
    fn snapshot_id(&self) -> String {
        self.snapshot_uuid().to_owned()
    }
    fn consistency(&self) -> String {
        XenBackup::consistency(self).to_owned()
    }
    fn warnings(&self) -> Vec<String> {
        XenBackup::warnings(self).to_vec()
    }
    fn commit(self: Box<Self>) -> CoreRelease {
        release_report(XenBackup::commit(*self))
    }
    fn abort(self: Box<Self>) -> alike_core::Result<()> {
        Ok(XenBackup::abort(*self)?)
    }
}

/// The pool's release in the trait's terms, under XAPI's names.
fn release_report(r: ReleaseReport) -> CoreRelease {
    let mut c = CoreRelease::default();
    c.kept_snapshot = r.kept_snapshot;
    c.destroyed_snapshots = r.destroyed_snapshots;
    c.warnings = r.warnings;
    c.released.insert("data_destroyed_vdis".into(), r.data_destroyed_vdis);
    c.released.insert("destroyed_vdis".into(), r.destroyed_vdis);
    c
}

/// A VM being restored: removed again unless committed.
struct XenRestore<'p> {
    pool: &'p XenPool,
    made: CreatedVm,
    core: CoreVm,
    format: UploadFormat,
    finished: bool,
}

impl RestoreSession for XenRestore<'_> {
    fn vm(&self) -> &CoreVm {
        &self.core
    }

    fn disk(&mut self, position: u32) -> alike_core::Result<DiskSink<'_>> {
        let d = self.made.disks.iter().find(|d| d.position == position).ok_or_else(|| {
            PoolError::InvalidArgument(format!("the restored VM {:?} has no disk {position}", self.made.name))
        })?;
        Ok(DiskSink::Stream(Box::new(Upload {
            pool: self.pool,
            vdi_ref: d.vdi_ref.clone(),
            format: self.format,
            new_vdi: true,
        })))
    }

    fn commit(mut self: Box<Self>) -> alike_core::Result<CoreVm> {
        self.finished = true;
        Ok(self.core.clone())
    }

    fn abort(mut self: Box<Self>) -> alike_core::Result<()> {
        self.finished = true;
        Ok(self.pool.destroy_vm(&self.made)?)
    }
}

impl Drop for XenRestore<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.pool.destroy_vm(&self.made) {
                tracing::warn!(vm = %self.made.name, error = %e, "removing a restored VM that was not committed");
            }
        }
    }
}

/// One disk's upload to `PUT /import_raw_vdi`.
struct Upload<'p> {
    pool: &'p XenPool,
    vdi_ref: String,
    format: UploadFormat,
    new_vdi: bool,
}

impl StreamSink for Upload<'_> {
    fn write_from(self: Box<Self>, source: &dyn DiskSource) -> alike_core::Result<StreamWritten> {
        let (fmt, sent) = self.pool.upload_disk(&self.vdi_ref, source, self.format, self.new_vdi)?;
        let uuid = self.pool.client().vdi_get_record(&self.vdi_ref).map(|r| r.uuid).unwrap_or_default();
        let format = if fmt == ImportFormat::Vhd { "vhd" } else { "raw" };
        Ok(StreamWritten::new(format, sent).id("vdi_uuid", uuid))
    }
}
