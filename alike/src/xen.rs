//! XenServer / XCP-ng from the facade: back up a pool's VM with changed-block
//! tracking, restore a version as a new VM or over an existing disk.
//!
//! [`Store::backup_xen`] ties the Xen adapter's backup cycle
//! ([`alike_xen::adapter`]) to the engine: it picks the parent version (the
//! VM's latest, as [`Store::backup`] does), hands its change tokens to the
//! adapter, snapshots the VM, lets the engine read what changed, stores
//! the version, then releases the previous snapshot. The tokens live in the
//! versions' manifests, the engine's record of what it read from where.
//!
//! [`Store::restore_xen_vm`] recreates the VM from the version's recorded
//! configuration and streams each disk from the store into its new VDI
//! (`PUT /import_raw_vdi`, a VHD of the allocated blocks for a new VDI):
//! no temporary copy is made, so restoring a 2 TB disk needs no 2 TB of
//! local space; blocks are read, authenticated and re-hashed on the way.
//!
//! ```no_run
//! use alike::{BackupOptions, RestoreOptions, Store, XenBackupOptions, VmRestoreOptions};
//!
//! let store = Store::builder().passphrase("s3cret").open("/backups/store")?;
//! let pool = alike::xen_pool("https://pool.example", "root", "secret", Some("AB:CD:…"))?;
//! let r = store.backup_xen(&pool, "web-01", &XenBackupOptions::default(), &BackupOptions::default())?;
//! for d in &r.disks {
//!     println!("disk {}: {} bytes read, {}", d.position, d.read_bytes,
//!              if d.incremental { "incremental" } else { "full" });
//! }
//! let v = store.version("latest", Some("web-01"))?;
//! let vm = store.restore_xen_vm(&v, &pool, "Local storage", None, &VmRestoreOptions::default(), &RestoreOptions::default())?;
//! println!("restored as VM {}", vm.vm_uuid);
//! # Ok::<(), alike::Error>(())
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alike_core::{DiskSource, Phase, ProgressSink};
use alike_xen::adapter::{DiskTransport, ReleaseReport, UploadFormat, VmRestoreOptions, XenBackupOptions, XenPool};
use alike_xen::xapi::{Client, ImportFormat};
use alike_xen::{ServerCertCheck, adapter::XenVmConfig};
use serde::Serialize;

use crate::{BackupOptions, BackupReport, Error, Parent, RestoreOptions, Result, Store, Version};

/// Logs in to a pool: `url` (`https://host`, `http://host:port`, or a bare
/// host), user and password, and optionally the SHA-256 fingerprint of the
/// pool's (usually self-signed) certificate to pin
/// (`AB:CD:…` or hex); without one the platform's trust store decides.
///
/// # Errors
/// [`crate::ErrorKind::InvalidArgument`] for a malformed URL or
/// fingerprint; [`Error::Xen`] with `SESSION_AUTHENTICATION_FAILED` for
/// wrong credentials, or [`crate::ErrorKind::Io`] when the pool cannot be
/// reached or its certificate is refused.
pub fn xen_pool(url: &str, user: &str, password: &str, fingerprint: Option<&str>) -> Result<XenPool> {
    let mut b = Client::builder(url);
    b.credentials(user, password);
    if let Some(fp) = fingerprint {
        let check = ServerCertCheck::pin(fp)
            .map_err(|e| Error::InvalidArgument(format!("certificate fingerprint {fp:?}: {e}")))?;
        b.server_cert(check);
    }
    Ok(XenPool::connect(&b)?)
}

/// One disk of a [`XenBackupReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct XenDiskReport {
    /// Position in the VM (by `userdevice`).
    pub position: u32,
    /// The VM's VDI.
    pub vdi_uuid: String,
    /// The snapshot VDI read.
    pub snapshot_vdi_uuid: String,
    /// Virtual size, bytes.
    pub size: u64,
    /// How it was read.
    pub transport: DiskTransport,
    /// Whether only changed blocks were read.
    pub incremental: bool,
    /// Why it was read whole although a previous version existed (the CBT
    /// chain broke, the disk was resized or replaced…).
    pub fallback_reason: Option<String>,
    /// Bytes the engine read (planned blocks).
    pub read_bytes: u64,
    /// Bytes received from the pool (NBD replies, or export bodies).
    pub wire_bytes: u64,
}

/// What [`Store::backup_xen`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct XenBackupReport {
    /// The version stored, and the engine's figures.
    pub backup: BackupReport,
    /// The VM's uuid.
    pub vm_uuid: String,
    /// The snapshot read (kept on the pool as the next backup's base).
    pub snapshot_uuid: String,
    /// `crash-consistent` or `quiesced`.
    pub consistency: String,
    /// Per disk: full or incremental, why a fallback, bytes read.
    pub disks: Vec<XenDiskReport>,
    /// Earlier backup snapshots released after the version was stored.
    pub released: ReleaseReport,
    /// What went less well than asked (CBT could not be enabled, no quiesce,
    /// snapshots not released).
    pub warnings: Vec<String>,
}

/// One uploaded disk of a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct XenUploadReport {
    /// The version's disk position.
    pub position: u32,
    /// The VDI written.
    pub vdi_uuid: String,
    /// `raw` or `vhd`.
    pub format: String,
    /// Virtual size, bytes.
    pub size: u64,
    /// Bytes sent to `/import_raw_vdi`.
    pub sent_bytes: u64,
    /// Bytes read from the store.
    pub read_bytes: u64,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// What [`Store::restore_xen_vm`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct XenRestoreReport {
    /// The new VM's uuid.
    pub vm_uuid: String,
    /// Its ref.
    pub vm_ref: String,
    /// Its name.
    pub name: String,
    /// Its disks.
    pub disks: Vec<XenUploadReport>,
    /// What was not restored exactly.
    pub warnings: Vec<String>,
    /// Wall time, ms.
    pub elapsed_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Store {
    /// Backs up a VM of a XenServer/XCP-ng pool (by name, uuid or ref) as a
    /// new version: enables CBT on its disks, snapshots it (quiesced if
    /// [`XenBackupOptions::quiesce`] asks), reads over NBD (or
    /// `/export_raw_vdi`) only the 64 KiB blocks changed since the VM's
    /// previous version — everything, deduplicated, the first time or when
    /// the CBT chain is broken, which the report says per disk
    /// ([`XenDiskReport::fallback_reason`]) —, stores the version with the
    /// VM's configuration, then releases the previous snapshot. Progress and
    /// cancellation come from `opts`.
    ///
    /// # Errors
    /// [`Error::Xen`] when the pool refuses (its XAPI code kept), the
    /// engine's and store's errors; the snapshot of a failed backup is
    /// destroyed and no version is written.
    pub fn backup_xen(
        &self,
        pool: &XenPool,
        vm: &str,
        xen: &XenBackupOptions,
        opts: &BackupOptions,
    ) -> Result<XenBackupReport> {
        let (vm_ref, raw) = pool.find_vm(vm)?;
        let name = raw.get("name_label").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let parent = match &opts.parent {
            Parent::None => None,
            Parent::Latest => self.versions(Some(&name))?.pop(),
            Parent::Id(s) => Some(self.version(s, Some(&name))?),
        };
        let previous: Vec<(u32, Vec<u8>)> = parent
            .iter()
            .flat_map(|p| &p.manifest.disks)
            .filter_map(|d| {
                let t = d.change_token.as_deref()?;
                Some((d.position, decode_hex(t)?))
            })
            .collect();
        // Disks of the parent without a change token are read whole by the
        // engine without a recorded reason: the report gives one.
        let untracked: Vec<u32> = parent
            .iter()
            .flat_map(|p| &p.manifest.disks)
            .filter(|d| d.change_token.is_none())
            .map(|d| d.position)
            .collect();
        let parent_id = parent.as_ref().map(|p| p.short_id().to_owned()).unwrap_or_default();
        let xopts = xen.clone().cancel_token(opts.run.cancel.clone());
        let session = pool.begin_backup(&vm_ref, &xopts, &previous)?;
        let mut o = opts.clone();
        o.parent = parent.map_or(Parent::None, |p| Parent::Id(p.id));
        let stored = self.backup(session.vm_info().clone(), &session.disks(), &o);
        let backup = match stored {
            Ok(r) => r,
            Err(e) => {
                if let Err(a) = session.abort() {
                    tracing::warn!(vm = %name, error = %a, "removing the snapshot of a failed backup");
                }
                return Err(e);
            }
        };
        let disks = session
            .xen_disks()
            .iter()
            .map(|d| {
                let v = backup.version.disks.iter().find(|x| x.position == d.position());
                let untracked = untracked.contains(&d.position()).then(|| {
                    format!(
                        "the previous version {parent_id} recorded no change token for this disk (it was not backed up from this pool)"
                    )
                });
                XenDiskReport {
                    position: d.position(),
                    vdi_uuid: d.vdi_uuid().to_owned(),
                    snapshot_vdi_uuid: d.snapshot_vdi_uuid().to_owned(),
                    size: d.size(),
                    transport: d.transport(),
                    incremental: v.is_some_and(|v| v.incremental),
                    fallback_reason: v.and_then(|v| v.fallback_reason.clone()).or(untracked),
                    read_bytes: v.map_or(0, |v| v.read_bytes),
                    wire_bytes: d.wire_bytes(),
                }
            })
            .collect();
        let mut warnings = session.warnings().to_vec();
        let (vm_uuid, snapshot_uuid, consistency) = (
            session.vm_info().uuid.clone().unwrap_or_default(),
            session.snapshot_uuid().to_owned(),
            session.consistency().to_owned(),
        );
        let released = session.commit();
        warnings.extend(released.warnings.iter().map(|w| format!("releasing earlier snapshots: {w}")));
        Ok(XenBackupReport { backup, vm_uuid, snapshot_uuid, consistency, disks, released, warnings })
    }

    /// Restores `version` as a new, halted VM of `pool`: its disks on `sr`,
    /// its NICs on `network` (default: the networks the VM had, found by
    /// uuid or name), with the recorded configuration (`VM.create` with the
    /// recorded fields, disks at the same `userdevice`, NICs with their
    /// MACs unless [`VmRestoreOptions::keep_macs`] is off); each disk is
    /// streamed from the store into its new VDI. On failure the new VM and
    /// its VDIs are removed.
    ///
    /// # Errors
    /// [`Error::Xen`] ([`crate::ErrorKind::InvalidArgument`] when the
    /// version was not backed up from a pool, [`crate::ErrorKind::NotFound`]
    /// for an unknown SR or network); store errors (damaged data stops the
    /// upload); [`crate::ErrorKind::Cancelled`].
    pub fn restore_xen_vm(
        &self,
        version: &Version,
        pool: &XenPool,
        sr: &str,
        network: Option<&str>,
        xen: &VmRestoreOptions,
        opts: &RestoreOptions,
    ) -> Result<XenRestoreReport> {
        let started = Instant::now();
        let config = XenVmConfig::from_vm_info(&version.manifest.vm)?;
        for d in &config.disks {
            if !version.disks.iter().any(|v| v.position == d.position) {
                return Err(Error::InvalidArgument(format!(
                    "version {} records disk {} in its configuration but holds no such disk",
                    version.short_id(),
                    d.position
                )));
            }
        }
        let _lock = self.repo().lock(alike_ads::LockKind::Read)?;
        let made = pool.create_vm(&config, sr, network, xen)?;
        let total: u64 = made
            .disks
            .iter()
            .filter_map(|d| version.disks.iter().find(|v| v.position == d.position).map(|v| v.size))
            .sum();
        let sink = ProgressSink::new(opts.run.progress.clone(), Phase::Restore, total);
        let mut disks = Vec::new();
        for d in &made.disks {
            match self.upload(version, d.position, pool, &d.vdi_ref, xen.upload_format(), true, &sink, opts) {
                Ok(r) => disks.push(r),
                Err(e) => {
                    if let Err(e2) = pool.destroy_vm(&made) {
                        tracing::warn!(vm = %made.name, error = %e2, "removing the half-restored VM");
                    }
                    return Err(e);
                }
            }
        }
        sink.finish();
        Ok(XenRestoreReport {
            vm_uuid: made.uuid.clone(),
            vm_ref: made.vm_ref.clone(),
            name: made.name.clone(),
            disks,
            warnings: made.warnings.clone(),
            elapsed_ms: ms(started.elapsed()),
        })
    }

    /// Writes disk `disk` of `version` over an existing VDI of `pool` (by
    /// uuid or ref; at least as large as the disk). [`UploadFormat::Auto`]
    /// sends raw here (every byte: holes must overwrite what the VDI held).
    ///
    /// # Errors
    /// As [`Store::restore_xen_vm`]; XAPI refuses a VDI in use by a running VM.
    pub fn restore_xen_disk(
        &self,
        version: &Version,
        disk: u32,
        pool: &XenPool,
        vdi: &str,
        format: UploadFormat,
        opts: &RestoreOptions,
    ) -> Result<XenUploadReport> {
        let d = version
            .disks
            .iter()
            .find(|d| d.position == disk)
            .ok_or_else(|| Error::InvalidArgument(format!("version {} has no disk {disk}", version.short_id())))?;
        let _lock = self.repo().lock(alike_ads::LockKind::Read)?;
        let sink = ProgressSink::new(opts.run.progress.clone(), Phase::Restore, d.size);
        let r = self.upload(version, disk, pool, vdi, format, false, &sink, opts)?;
        sink.finish();
        Ok(r)
    }

    #[allow(clippy::too_many_arguments)]
    fn upload(
        &self,
        version: &Version,
        position: u32,
        pool: &XenPool,
        vdi: &str,
        format: UploadFormat,
        new_vdi: bool,
        sink: &ProgressSink,
        opts: &RestoreOptions,
    ) -> Result<XenUploadReport> {
        let started = Instant::now();
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
        let up = alike_core::HookedSource::new(&src, count);
        let (fmt, sent) = pool.upload_disk(vdi, &up, format, new_vdi)?;
        let vdi_uuid = pool.client().vdi_get_record(&pool.find_vdi(vdi)?).map(|r| r.uuid).unwrap_or_default();
        Ok(XenUploadReport {
            position,
            vdi_uuid,
            format: if fmt == ImportFormat::Vhd { "vhd" } else { "raw" }.into(),
            size: src.size(),
            sent_bytes: sent,
            read_bytes: read.load(Ordering::Relaxed),
            elapsed_ms: ms(started.elapsed()),
        })
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}
