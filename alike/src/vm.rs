//! Whole VMs on a hypervisor: the facade's one backup path and one restore
//! path over the [`Hypervisor`] seam, whatever the host.
//!
//! [`Store::backup_vm`] picks the parent version (the VM's latest, as
//! [`Store::backup`] does), hands its change tokens to the host, snapshots
//! the VM, lets the engine read what changed, stores the version, then
//! commits the session (the host releases the previous snapshot). On any
//! failure the session is aborted and no version is written.
//!
//! [`Store::restore_vm`] recreates the VM from the version's recorded
//! configuration and fills each disk: a host that takes a stream (XAPI's
//! `import_raw_vdi`) reads it from the store as it goes, with no temporary
//! copy; a host that takes positional writes gets the engine's parallel
//! restore. Blocks are read, authenticated and re-hashed on the way.
//!
//! ```no_run
//! use alike::{BackupOptions, Placement, RestoreOptions, Store};
//!
//! let store = Store::builder().passphrase("s3cret").open("/backups/store")?;
//! let pool = alike::xen_pool("https://pool.example", "root", "secret", Some("AB:CD:…"))?;
//! let r = store.backup_vm(&pool, "web-01", &BackupOptions::default())?;
//! for d in &r.disks {
//!     println!("disk {}: {} bytes read, {}", d.position, d.read_bytes, d.mode);
//! }
//! let v = store.version("latest", Some("web-01"))?;
//! let vm = store.restore_vm(&v, &pool, &Placement::on("Local storage"), &RestoreOptions::default())?;
//! println!("restored as VM {}", vm.vm_uuid);
//! # Ok::<(), alike::Error>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use alike_core::{
    DiskSink, DiskSource, Hypervisor, Phase, Placement, PlannedDisk, PreviousDisk, ProgressSink, ReleaseReport,
    SnapshotOptions, StreamWritten,
};
use serde::Serialize;

use crate::{BackupOptions, BackupReport, Error, Parent, RestoreOptions, Result, Store, Version};

/// One disk of a [`VmBackupReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct VmDiskReport {
    /// Position in the VM.
    pub position: u32,
    /// The host's identifiers of the disk and of the snapshot read, under
    /// the host's names (XenServer: `vdi`, `snapshot_vdi`).
    #[serde(flatten)]
    pub ids: BTreeMap<String, String>,
    /// Virtual size, bytes.
    pub size: u64,
    /// How it was read (`nbd`, `export`…).
    pub transport: String,
    /// `incremental` or `full`.
    pub mode: String,
    /// Whether only changed blocks were read.
    pub incremental: bool,
    /// Why it was read whole although a previous version existed (the
    /// change-tracking chain broke, the disk was resized or replaced…).
    pub fallback_reason: Option<String>,
    /// Bytes the engine read (planned blocks).
    pub read_bytes: u64,
    /// Bytes received from the host.
    pub wire_bytes: u64,
}

/// What [`Store::backup_vm`] did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct VmBackupReport {
    /// The version's id.
    pub id: String,
    /// The VM's name.
    pub vm: String,
    /// The VM's uuid on the host.
    pub vm_uuid: String,
    /// The version's time, RFC 3339.
    pub time: String,
    /// The snapshot read (kept on the host as the next backup's base).
    pub snapshot: String,
    /// `crash-consistent` or `quiesced`.
    pub consistency: String,
    /// Bytes the engine read.
    pub read_bytes: u64,
    /// Bytes received from the host.
    pub wire_bytes: u64,
    /// Plaintext bytes new to the store.
    pub new_bytes: u64,
    /// Stored bytes added.
    pub new_stored_bytes: u64,
    /// Wall time, seconds.
    pub elapsed_seconds: f64,
    /// Per disk: full or incremental, why a fallback, bytes read.
    pub disks: Vec<VmDiskReport>,
    /// Earlier backup snapshots released after the version was stored.
    pub released: ReleaseReport,
    /// What went less well than asked (no change tracking, no quiesce,
    /// snapshots not released, disks read in full).
    pub warnings: Vec<String>,
    /// The store's side: the version and the engine's figures.
    #[serde(skip)]
    pub backup: BackupReport,
}

/// One disk written by [`Store::restore_vm`] or [`Store::restore_vm_disk`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DiskUploadReport {
    /// The version's disk position.
    pub position: u32,
    /// The host's identifiers of the disk written (XenServer: `vdi_uuid`).
    #[serde(flatten)]
    pub ids: BTreeMap<String, String>,
    /// `raw`, `vhd`, or `target` (positional writes).
    pub format: String,
    /// Virtual size, bytes.
    pub size: u64,
    /// Bytes sent to the host.
    pub sent_bytes: u64,
    /// Bytes read from the store.
    pub read_bytes: u64,
    /// Wall time, seconds.
    pub elapsed_seconds: f64,
    /// Wall time, ms. Deprecated: the same as `elapsed_seconds`, kept for
    /// one release for scripts that read it.
    pub elapsed_ms: u64,
}

/// What [`Store::restore_vm`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct VmRestoreReport {
    /// The new VM's uuid.
    pub vm_uuid: String,
    /// Its handle on the host (XenServer: its ref).
    pub vm_ref: String,
    /// Its name.
    pub name: String,
    /// Its disks.
    pub disks: Vec<DiskUploadReport>,
    /// What was not restored exactly.
    pub warnings: Vec<String>,
    /// Wall time, seconds.
    pub elapsed_seconds: f64,
    /// Wall time, ms. Deprecated: the same as `elapsed_seconds`, kept for
    /// one release.
    pub elapsed_ms: u64,
}

fn elapsed(t: Instant) -> (f64, u64) {
    let d = t.elapsed();
    (d.as_secs_f64(), u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl Store {
    /// Backs up a VM of a hypervisor (by name, uuid or host handle) as a new
    /// version: snapshots it (quiesced if [`BackupOptions::quiesce`] asks),
    /// reads only the blocks changed since the VM's previous version —
    /// everything, deduplicated, the first time or when the change-tracking
    /// chain is broken, which the report says per disk
    /// ([`VmDiskReport::fallback_reason`]) —, stores the version with the
    /// VM's configuration, then lets the host release the previous snapshot.
    /// Progress and cancellation come from `opts`.
    ///
    /// # Errors
    /// The host's refusal (its code kept: [`Error::code`]), the engine's
    /// and store's errors; the snapshot of a failed backup is released and
    /// no version is written.
    pub fn backup_vm(&self, hv: &dyn Hypervisor, vm: &str, opts: &BackupOptions) -> Result<VmBackupReport> {
        opts.check()?;
        let name = hv.vm_name(vm)?;
        // Two backups of one VM never run together in this process, whoever
        // started them (a scheduled job, a run asked by hand, an embedder).
        let key = format!("{}/{name}", hv.kind());
        let _vm_lock = alike_sched::VmLocks::global()
            .acquire(&key, &format!("backup of {name}"), &opts.run.cancel)
            .ok_or(Error::Engine(alike_core::Error::Cancelled))?;
        // Nor in two processes (two command-line runs, the daemon and one):
        // a file lock per VM beside the store, waited for.
        let _vm_file_lock = crate::vm_lock::acquire(self.vm_lock_dir(), &key, &opts.run.cancel)?
            .ok_or(Error::Engine(alike_core::Error::Cancelled))?;
        let (parent, no_parent) = self.parent_version(&name, &opts.parent)?;
        let previous: Vec<PreviousDisk> = parent
            .iter()
            .flat_map(|p| &p.manifest.disks)
            .filter_map(|d| Some(PreviousDisk { position: d.position, token: decode_hex(d.change_token.as_deref()?)? }))
            .collect();
        // A parent's disk without a change token is read whole by the engine
        // without a recorded reason: the report gives one.
        let untracked: Vec<u32> = parent
            .iter()
            .flat_map(|p| &p.manifest.disks)
            .filter(|d| d.change_token.is_none())
            .map(|d| d.position)
            .collect();
        let parent_id = parent.as_ref().map(|p| p.short_id().to_owned()).unwrap_or_default();
        let snap = SnapshotOptions::default().quiesce(opts.quiesce).cancel_token(opts.run.cancel.clone());
        let session = hv.begin_backup(vm, &previous, &snap)?;
        let mut o = opts.clone();
        o.parent = match (parent, no_parent) {
            (Some(p), _) => Parent::Id(p.id),
            // The same reason again for the engine to record.
            (None, Some(_)) => Parent::Latest,
            (None, None) => Parent::None,
        };
        // Per-disk progress: each source counts what is read from it, and
        // each backup-stage report of the engine is followed by theirs.
        let counted: Vec<ReadCounter<'_>> =
            session.disks().into_iter().map(|inner| ReadCounter { inner, read: Arc::new(AtomicU64::new(0)) }).collect();
        if let Some(dp) = opts.disk_progress.clone() {
            let counters: Vec<(Arc<AtomicU64>, u64)> =
                counted.iter().map(|c| (c.read.clone(), c.inner.size())).collect();
            let engine = o.run.progress.clone();
            o.run.progress = Some(Arc::new(move |p: &alike_core::Progress| {
                if let Some(f) = &engine {
                    f(p);
                }
                if p.phase == Phase::Backup {
                    for (i, (read, size)) in counters.iter().enumerate() {
                        // Incremental and sparse disks are read in part: the
                        // stage's end is each disk's end.
                        let done =
                            if p.bytes_done >= p.bytes_total { *size } else { read.load(Ordering::Relaxed).min(*size) };
                        let position = u32::try_from(i).unwrap_or(u32::MAX);
                        dp(&crate::DiskReadProgress { position, bytes_done: done, bytes_total: *size });
                    }
                }
            }));
        }
        let sources: Vec<&dyn DiskSource> = counted.iter().map(|c| c as &dyn DiskSource).collect();
        let result = self.backup(session.vm().clone(), &sources, &o);
        drop(sources);
        drop(counted);
        let backup = match result {
            Ok(r) => r,
            Err(e) => {
                if let Err(a) = session.abort() {
                    tracing::warn!(vm = %name, error = %a, "releasing the snapshot of a failed backup");
                }
                return Err(e);
            }
        };
        let mut warnings = session.warnings();
        let disks: Vec<VmDiskReport> = session
            .disk_details()
            .into_iter()
            .map(|d| {
                let v = backup.version.disks.iter().find(|x| x.position == d.position);
                let untracked = untracked.contains(&d.position).then(|| {
                    format!(
                        "the previous version {parent_id} recorded no change token for this disk (it was not backed up from this host)"
                    )
                });
                let incremental = v.is_some_and(|v| v.incremental);
                VmDiskReport {
                    position: d.position,
                    ids: d.ids,
                    size: d.size,
                    transport: d.transport,
                    mode: if incremental { "incremental" } else { "full" }.into(),
                    incremental,
                    fallback_reason: v.and_then(|v| v.fallback_reason.clone()).or(untracked),
                    read_bytes: v.map_or(0, |v| v.read_bytes),
                    wire_bytes: d.wire_bytes,
                }
            })
            .collect();
        let (vm_uuid, snapshot, consistency) =
            (session.vm().uuid.clone().unwrap_or_default(), session.snapshot_id(), session.consistency());
        let released = session.commit();
        warnings.extend(released.warnings.iter().map(|w| format!("releasing earlier snapshots: {w}")));
        let v = &backup.version;
        Ok(VmBackupReport {
            id: v.id.clone(),
            vm: v.vm.clone(),
            vm_uuid,
            time: v.time_rfc3339(),
            snapshot,
            consistency,
            read_bytes: backup.read_bytes,
            wire_bytes: disks.iter().map(|d| d.wire_bytes).sum(),
            new_bytes: backup.new_bytes,
            new_stored_bytes: backup.new_stored_bytes,
            elapsed_seconds: backup.elapsed.as_secs_f64(),
            disks,
            released,
            warnings,
            backup,
        })
    }

    /// Restores `version` as a new, halted VM of a hypervisor, placed as
    /// asked (storage, network, name, MACs), with the recorded
    /// configuration; each disk is written from the store. On failure the
    /// new VM and its disks are removed. A version backed up from another
    /// kind of host (Xen on Hyper-V, Hyper-V on Xen) has its configuration
    /// mapped first; what does not map is in the report's warnings.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] when the version has no host
    /// configuration to map (backed up from image files); [`crate::ErrorKind::NotFound`] for unknown
    /// storage or network; store errors (damaged data stops the restore);
    /// [`crate::ErrorKind::Cancelled`].
    pub fn restore_vm(
        &self,
        version: &Version,
        hv: &dyn Hypervisor,
        placement: &Placement,
        opts: &RestoreOptions,
    ) -> Result<VmRestoreReport> {
        opts.run.check()?;
        let started = Instant::now();
        let _lock = self.repo().lock(alike_ads::LockKind::Read)?;
        let planned: Vec<PlannedDisk> =
            version.disks.iter().map(|d| PlannedDisk { position: d.position, size: d.size }).collect();
        // A version from another kind of host is mapped first (`cross.rs`); the mapping's drops are warnings.
        let (config, mut warnings) = crate::cross::for_host(&version.manifest.vm, hv.kind(), &planned)?;
        let mut session = hv.create_vm(&config, &planned, placement)?;
        let positions = session.vm().disks.clone();
        let total: u64 =
            positions.iter().filter_map(|p| version.disks.iter().find(|v| v.position == *p)).map(|v| v.size).sum();
        let sink = ProgressSink::new(opts.run.progress.clone(), Phase::Restore, total);
        let mut disks = Vec::new();
        for p in positions {
            let r = session.disk(p).map_err(Error::from).and_then(|s| self.fill(version, p, s, &sink, opts));
            match r {
                Ok(d) => disks.push(d),
                Err(e) => {
                    if let Err(e2) = session.abort() {
                        tracing::warn!(error = %e2, "removing the half-restored VM");
                    }
                    return Err(e);
                }
            }
        }
        let vm = session.commit()?;
        sink.finish();
        let (elapsed_seconds, elapsed_ms) = elapsed(started);
        warnings.extend(vm.warnings);
        Ok(VmRestoreReport {
            vm_uuid: vm.vm_uuid,
            vm_ref: vm.vm_ref,
            name: vm.name,
            disks,
            warnings,
            elapsed_seconds,
            elapsed_ms,
        })
    }

    /// Writes disk `disk` of `version` over an existing disk of a
    /// hypervisor (by the host's id or handle; at least as large as the
    /// disk), every byte.
    ///
    /// # Errors
    /// As [`Store::restore_vm`]; a host refuses a disk in use by a running VM.
    pub fn restore_vm_disk(
        &self,
        version: &Version,
        disk: u32,
        hv: &dyn Hypervisor,
        target: &str,
        opts: &RestoreOptions,
    ) -> Result<DiskUploadReport> {
        opts.run.check()?;
        let d = version.disk(disk)?;
        let _lock = self.repo().lock(alike_ads::LockKind::Read)?;
        let sink = ProgressSink::new(opts.run.progress.clone(), Phase::Restore, d.size);
        let r = self.fill(version, disk, hv.existing_disk(target)?, &sink, opts)?;
        sink.finish();
        Ok(r)
    }

    /// Writes one disk of `version` into what the host handed back.
    fn fill(
        &self,
        version: &Version,
        position: u32,
        sink_to: DiskSink<'_>,
        sink: &ProgressSink,
        opts: &RestoreOptions,
    ) -> Result<DiskUploadReport> {
        let started = Instant::now();
        self.check_can_read_data(|| {
            format!("restoring disk {position} of version {} (VM {:?})", version.short_id(), version.vm)
        })?;
        let size = version.disk(position)?.size;
        let written: StreamWritten = match sink_to {
            DiskSink::Stream(up) => {
                let repo = self.repo();
                let no_other = |_: &str| Ok(None);
                let src = alike_core::VersionSource::new(
                    repo,
                    repo.keys(),
                    self.id(),
                    &version.id,
                    &version.manifest,
                    position,
                    &no_other,
                )?;
                // Counts progress and the bytes read; a cancel stops the upload at the next read.
                let read = AtomicU64::new(0);
                let count = |n: u64| {
                    read.fetch_add(n, Ordering::Relaxed);
                    sink.add(n);
                    opts.run.cancel.check()
                };
                let hooked = alike_core::HookedSource::new(&src, count);
                let w = up.write_from(&hooked)?;
                let (elapsed_seconds, elapsed_ms) = elapsed(started);
                return Ok(DiskUploadReport {
                    position,
                    ids: w.ids,
                    format: w.format,
                    size: src.size(),
                    sent_bytes: w.sent_bytes,
                    read_bytes: read.load(Ordering::Relaxed),
                    elapsed_seconds,
                    elapsed_ms,
                });
            }
            DiskSink::Target { written, target } => {
                // The engine's parallel restore (it finishes the target).
                let r = self.restore(version, position, &*target, opts)?;
                sink.add(r.size);
                let mut w = written;
                w.format = "target".into();
                w.sent_bytes = r.data_bytes;
                w
            }
        };
        let (elapsed_seconds, elapsed_ms) = elapsed(started);
        Ok(DiskUploadReport {
            position,
            ids: written.ids,
            format: written.format,
            size,
            sent_bytes: written.sent_bytes,
            read_bytes: written.sent_bytes,
            elapsed_seconds,
            elapsed_ms,
        })
    }
}

/// A disk source that counts the bytes read from it (per-disk progress).
struct ReadCounter<'a> {
    inner: &'a dyn DiskSource,
    read: Arc<AtomicU64>,
}

impl DiskSource for ReadCounter<'_> {
    fn label(&self) -> String {
        self.inner.label()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn allocated_ranges(&self) -> alike_core::Result<Vec<std::ops::Range<u64>>> {
        self.inner.allocated_ranges()
    }
    fn change_token(&self) -> Option<Vec<u8>> {
        self.inner.change_token()
    }
    fn changed_ranges(&self, since: &[u8]) -> alike_core::Result<Option<Vec<std::ops::Range<u64>>>> {
        self.inner.changed_ranges(since)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        self.inner.read_at(offset, buf)?;
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
