//! A backup's life on the pool: [`XenPool::begin_backup`] (CBT on,
//! snapshot, sources) → the engine reads → [`XenBackup::commit`] (release
//! the previous snapshot) or [`XenBackup::abort`] (release this one).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use alike_core::{CancelToken, DiskSource, VmInfo};
use serde::Serialize;
use serde_json::json;

use super::BACKUP_MARK;
use super::config::{XenSnapshotInfo, XenVmConfig};
use super::error::{Context, PoolError, PoolResult};
use super::pool::{XenPool, device_order, flag, is_ref, num, parse_vm, string_map, strings, text};
use super::source::{DiskSpec, Token, XenDisk};

pub use alike_core::Quiesce;

/// How to read the snapshot VDIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transport {
    /// NBD when a network has an NBD purpose (`VDI.get_nbd_info` is not
    /// empty), else `/export_raw_vdi` (the default).
    #[default]
    Auto,
    /// NBD only (an error when the pool offers none).
    Nbd,
    /// `/export_raw_vdi` only.
    Export,
}

/// The most NBD connections per disk (`nbd::MAX_CONNECTIONS`).
pub const MAX_NBD_CONNECTIONS: usize = crate::nbd::MAX_CONNECTIONS;

/// Settings of [`XenPool::begin_backup`]: `Default` plus chained setters.
///
/// ```
/// use alike_xen::adapter::{Quiesce, Transport, XenBackupOptions};
/// let o = XenBackupOptions::default().quiesce(Quiesce::IfSupported).transport(Transport::Nbd).nbd_connections(8);
/// # let _ = o;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct XenBackupOptions {
    pub(crate) quiesce: Quiesce,
    pub(crate) transport: Transport,
    pub(crate) nbd_connections: usize,
    pub(crate) spool_dir: Option<PathBuf>,
    pub(crate) enable_cbt: bool,
    pub(crate) cancel: CancelToken,
}

impl Default for XenBackupOptions {
    fn default() -> XenBackupOptions {
        XenBackupOptions {
            quiesce: Quiesce::No,
            transport: Transport::Auto,
            nbd_connections: 4,
            spool_dir: None,
            enable_cbt: true,
            cancel: CancelToken::new(),
        }
    }
}

impl XenBackupOptions {
    /// Quiesced or crash-consistent snapshot (default: crash-consistent).
    #[must_use]
    pub fn quiesce(mut self, q: Quiesce) -> Self {
        self.quiesce = q;
        self
    }
    /// How to read the disks (default: NBD when offered, else export).
    #[must_use]
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }
    /// NBD connections per disk (default 4; 1 to [`MAX_NBD_CONNECTIONS`],
    /// else [`XenPool::begin_backup`] fails).
    #[must_use]
    pub fn nbd_connections(mut self, n: usize) -> Self {
        self.nbd_connections = n.max(1);
        self
    }
    /// Where the export path spools a disk (default: the system's temporary directory).
    #[must_use]
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self
    }
    /// Enable CBT on the VM's VDIs that lack it (default: yes; without it
    /// every backup reads whole disks).
    #[must_use]
    pub fn enable_cbt(mut self, yes: bool) -> Self {
        self.enable_cbt = yes;
        self
    }
    /// Cancels downloads (the engine's reads stop through its own token).
    #[must_use]
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }
}

/// What [`XenBackup::commit`] released.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReleaseReport {
    /// The snapshot VM kept as the base of the next backup (uuid).
    pub kept_snapshot: String,
    /// Earlier backup snapshot VMs destroyed (uuids).
    pub destroyed_snapshots: Vec<String>,
    /// Their VDIs, data destroyed and CBT logs kept (uuids; type `cbt_metadata` now).
    pub data_destroyed_vdis: Vec<String>,
    /// VDIs destroyed: older `cbt_metadata` VDIs, and snapshot VDIs without CBT (uuids).
    pub destroyed_vdis: Vec<String>,
    /// What could not be released (retried by the next commit).
    pub warnings: Vec<String>,
}

/// A backup in progress: the snapshot is taken and its disks are ready to
/// read. Hand [`XenBackup::disks`] and [`XenBackup::vm_info`] to the
/// engine; then [`XenBackup::commit`] once the version is stored, or
/// [`XenBackup::abort`] (dropping it aborts too).
pub struct XenBackup<'p> {
    pool: &'p XenPool,
    vm_ref: String,
    vm_uuid: String,
    config: XenVmConfig,
    info: VmInfo,
    snapshot_ref: String,
    snapshot_vdis: Vec<String>,
    disk_vdis: Vec<String>,
    disks: Vec<XenDisk<'p>>,
    warnings: Vec<String>,
    finished: bool,
}

impl std::fmt::Debug for XenBackup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenBackup")
            .field("vm", &self.config.name())
            .field("vm_uuid", &self.vm_uuid)
            .field("snapshot", &self.snapshot_ref)
            .field("disks", &self.disks)
            .finish_non_exhaustive()
    }
}

impl XenPool {
    /// Starts a backup of a guest VM (name, uuid or ref): enables CBT on
    /// its VDIs (when allowed), snapshots it and prepares a source per
    /// disk. `previous` holds the change tokens of the version this backup
    /// builds on, by disk position (the export path uses them to ask for a
    /// delta; the NBD path gets them from the engine).
    ///
    /// # Errors
    /// [`PoolError::NotFound`] / [`PoolError::Ambiguous`] for the VM;
    /// [`PoolError::Xen`] when XAPI refuses the snapshot (its code kept:
    /// `VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED` with [`Quiesce::Required`],
    /// `SR_FULL`…); [`PoolError::InvalidArgument`] for [`Transport::Nbd`]
    /// on a pool without NBD, or more than [`MAX_NBD_CONNECTIONS`]. A
    /// snapshot taken before an error is destroyed.
    pub fn begin_backup(
        &self,
        vm: &str,
        opts: &XenBackupOptions,
        previous: &[(u32, Vec<u8>)],
    ) -> PoolResult<XenBackup<'_>> {
        if opts.nbd_connections > MAX_NBD_CONNECTIONS {
            return Err(PoolError::InvalidArgument(format!(
                "{} NBD connections per disk: at most {MAX_NBD_CONNECTIONS}",
                opts.nbd_connections
            )));
        }
        let (vm_ref, raw) = self.find_vm(vm)?;
        let rec = parse_vm(&raw, &vm_ref)?;
        let who = format!("VM {} ({})", rec.name_label, rec.uuid);
        let captured = self.capture(&vm_ref, &raw)?;
        let mut config = captured.config;
        let mut warnings = Vec::new();
        if opts.enable_cbt {
            for (vdi_ref, vdi) in &captured.disk_vdis {
                if flag(vdi, "cbt_enabled") {
                    continue;
                }
                if let Err(e) = self.client().vdi_enable_cbt(vdi_ref) {
                    let w = format!(
                        "cannot enable CBT on VDI {} ({}): {e}; every backup of this disk will read it whole",
                        text(vdi, "name_label"),
                        text(vdi, "uuid")
                    );
                    tracing::warn!("{w}");
                    warnings.push(w);
                } else {
                    tracing::info!(vdi = %text(vdi, "uuid"), "CBT enabled");
                }
            }
        }
        if opts.cancel.is_cancelled() {
            return Err(PoolError::Cancelled);
        }
        let snap_name = format!("{} (alike backup)", rec.name_label);
        let (snapshot_ref, consistency) = self.snapshot(&vm_ref, &who, &snap_name, opts.quiesce, &mut warnings)?;
        let mut b = XenBackup {
            pool: self,
            vm_ref: vm_ref.clone(),
            vm_uuid: rec.uuid.clone(),
            info: VmInfo::default(),
            config: XenVmConfig::default(),
            snapshot_ref: snapshot_ref.clone(),
            snapshot_vdis: Vec::new(),
            disk_vdis: captured.disk_vdis.iter().map(|(r, _)| r.clone()).collect(),
            disks: Vec::new(),
            warnings,
            finished: false,
        };
        // From here on, dropping `b` on an error destroys the snapshot (so
        // its VDIs are listed first).
        let snap = self.raw("VM", &snapshot_ref).ctx(|| format!("reading the snapshot of {who}"))?;
        let snap_uuid = text(&snap, "uuid");
        let mut by_device: HashMap<String, String> = HashMap::new();
        let mut by_origin: HashMap<String, String> = HashMap::new();
        for vbd_ref in strings(&snap, "VBDs") {
            let vbd = self.raw("VBD", &vbd_ref).ctx(|| format!("reading VBD {vbd_ref} of snapshot {snap_uuid}"))?;
            let vdi = text(&vbd, "VDI");
            if text(&vbd, "type") != "Disk" || !is_ref(&vdi) {
                continue;
            }
            b.snapshot_vdis.push(vdi.clone());
            by_device.insert(text(&vbd, "userdevice"), vdi.clone());
            if let Ok(v) = self.raw("VDI", &vdi) {
                by_origin.insert(text(&v, "snapshot_of"), vdi);
            }
        }
        self.mark("VM", &snapshot_ref, &rec.uuid).ctx(|| format!("marking snapshot {snap_uuid} of {who}"))?;
        let spool_dir = opts.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
        // xapi-nbd forces TLS when some network has purpose `nbd`, and
        // serves plaintext when only `insecure_nbd` is set (refusing
        // STARTTLS); `get_nbd_info` gives the certificate either way.
        let nbd_tls = match opts.transport {
            Transport::Export => false,
            _ => self
                .all_raw("network")
                .ctx(|| "reading the networks' NBD purposes".to_owned())?
                .values()
                .any(|n| strings(n, "purpose").iter().any(|p| p == "nbd")),
        };
        let previous: HashMap<u32, Token> =
            previous.iter().filter_map(|(p, t)| Token::decode(t).map(|t| (*p, t))).collect();
        let mut transports = Vec::new();
        for (d, (vdi_ref, _)) in config.disks.iter().zip(&captured.disk_vdis) {
            let snap_vdi =
                by_origin.get(vdi_ref).or_else(|| by_device.get(&d.userdevice)).cloned().ok_or_else(|| {
                    PoolError::Xen {
                        context: format!("finding the snapshot of disk {} (VDI {}) of {who}", d.position, d.vdi_uuid),
                        error: Box::new(crate::Error::BadReply {
                            method: "VM.snapshot".into(),
                            reason: format!("snapshot {snap_uuid} has no disk at userdevice {}", d.userdevice),
                        }),
                    }
                })?;
            let svdi = self.raw("VDI", &snap_vdi).ctx(|| format!("reading snapshot VDI {snap_vdi} of {who}"))?;
            let snap_vdi_uuid = text(&svdi, "uuid");
            self.mark("VDI", &snap_vdi, &rec.uuid).ctx(|| format!("marking snapshot VDI {snap_vdi_uuid} of {who}"))?;
            let nbd = match opts.transport {
                Transport::Export => None,
                t => {
                    let infos = self
                        .client()
                        .vdi_get_nbd_info(&snap_vdi)
                        .ctx(|| format!("asking where to read snapshot VDI {snap_vdi_uuid} of {who} over NBD"))?;
                    let best = infos.iter().find(|i| i.address.parse::<std::net::Ipv4Addr>().is_ok()).or(infos.first());
                    match (best, t) {
                        (Some(i), _) => {
                            let mut i = i.clone();
                            if !nbd_tls {
                                i.cert.clear();
                            }
                            Some((i, opts.nbd_connections))
                        }
                        (None, Transport::Nbd) => {
                            return Err(PoolError::InvalidArgument(format!(
                                "the pool offers no NBD export of VDI {snap_vdi_uuid} (no network has purpose nbd or insecure_nbd: `xe network-param-add param-name=purpose param-key=nbd uuid=…`)"
                            )));
                        }
                        (None, _) => None,
                    }
                }
            };
            transports.push(if nbd.is_some() { "nbd" } else { "export" }.to_owned());
            let label = format!("{} [VDI {}]", d.name_label, d.vdi_uuid);
            let token = Token {
                xen_cbt: 1,
                vm: rec.uuid.clone(),
                vdi: d.vdi_uuid.clone(),
                snapshot_vdi: snap_vdi_uuid.clone(),
                snapshot_vm: snap_uuid.clone(),
            };
            b.disks.push(XenDisk::new(
                self.client(),
                DiskSpec {
                    label,
                    position: d.position,
                    size: num(&svdi, "virtual_size"),
                    vdi_uuid: d.vdi_uuid.clone(),
                    snap_ref: snap_vdi,
                    snap_uuid: snap_vdi_uuid,
                    token,
                    nbd,
                    spool_dir: spool_dir.clone(),
                    previous: previous.get(&d.position).cloned(),
                    cancel: opts.cancel.clone(),
                },
            ));
        }
        config.snapshot = Some(XenSnapshotInfo {
            uuid: snap_uuid,
            name: snap_name,
            time: text(&snap, "snapshot_time"),
            consistency: consistency.to_owned(),
            transports,
        });
        b.info = config.to_vm_info();
        b.config = config;
        tracing::info!(vm = %who, snapshot = %b.snapshot_uuid(), disks = b.disks.len(), "backup snapshot taken");
        Ok(b)
    }

    /// Takes the snapshot as `q` asks; returns its ref and its consistency.
    fn snapshot(
        &self,
        vm_ref: &str,
        who: &str,
        name: &str,
        q: Quiesce,
        warnings: &mut Vec<String>,
    ) -> PoolResult<(String, &'static str)> {
        if q != Quiesce::No {
            match self.client().call_async("VM.snapshot_with_quiesce", &[json!(vm_ref), json!(name)]) {
                Ok(r) => return Ok((r, "quiesced")),
                Err(e) if q == Quiesce::IfSupported => {
                    let w = format!("{who}: no quiesced snapshot ({e}); taking a crash-consistent one");
                    tracing::warn!("{w}");
                    warnings.push(w);
                }
                Err(e) => {
                    return Err(PoolError::Xen {
                        context: format!("taking a quiesced snapshot of {who}"),
                        error: Box::new(e),
                    });
                }
            }
        }
        let r = self.client().vm_snapshot(vm_ref, name).ctx(|| format!("snapshotting {who}"))?;
        Ok((r, "crash-consistent"))
    }

    /// Sets `other_config[alike:backup] = vm_uuid` on a snapshot VM or VDI.
    fn mark(&self, class: &str, r: &str, vm_uuid: &str) -> crate::Result<()> {
        // The snapshot copies the original's other_config; a stale mark there must go first.
        let _ = self.void(&format!("{class}.remove_from_other_config"), &[json!(r), json!(BACKUP_MARK)]);
        self.void(&format!("{class}.add_to_other_config"), &[json!(r), json!(BACKUP_MARK), json!(vm_uuid)])
    }

    /// Destroys a snapshot VM and its VDIs (a failed or unwanted backup).
    pub(super) fn destroy_snapshot(&self, snap: &str, vdis: &[String]) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Err(e) = self.client().vm_destroy(snap) {
            warnings.push(format!("destroying snapshot VM {snap}: {e}"));
        }
        for v in vdis {
            if let Err(e) = self.client().vdi_destroy(v) {
                warnings.push(format!("destroying snapshot VDI {v}: {e}"));
            }
        }
        warnings
    }
}

impl<'p> XenBackup<'p> {
    /// The version's VM record: name, uuid, `hypervisor = "xen"`, vCPUs,
    /// memory, NICs, and the whole [`XenVmConfig`] in `extra["xen"]`.
    pub fn vm_info(&self) -> &VmInfo {
        &self.info
    }
    /// The captured configuration.
    pub fn config(&self) -> &XenVmConfig {
        &self.config
    }
    /// The disks as sources for the engine, by position.
    pub fn disks(&self) -> Vec<&dyn DiskSource> {
        self.disks.iter().map(|d| d as &dyn DiskSource).collect()
    }
    /// The disks with their transport, VDIs and byte counts.
    pub fn xen_disks(&self) -> &[XenDisk<'p>] {
        &self.disks
    }
    /// The snapshot VM's uuid.
    pub fn snapshot_uuid(&self) -> &str {
        self.config.snapshot.as_ref().map(|s| s.uuid.as_str()).unwrap_or_default()
    }
    /// Snapshot consistency: `crash-consistent` or `quiesced`.
    pub fn consistency(&self) -> &str {
        self.config.snapshot.as_ref().map(|s| s.consistency.as_str()).unwrap_or_default()
    }
    /// What went less well than asked (CBT could not be enabled, no quiesce).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// After the version is stored: keeps this snapshot (the next backup's
    /// base), destroys earlier backup snapshot VMs, `data_destroy`s their
    /// VDIs (CBT logs kept) and destroys older `cbt_metadata` VDIs — see
    /// the module docs for why. Failures are reported, not raised: the
    /// version is stored, and the next commit retries.
    pub fn commit(mut self) -> ReleaseReport {
        self.finished = true;
        for d in &self.disks {
            d.close();
        }
        let mut r = ReleaseReport { kept_snapshot: self.snapshot_uuid().to_owned(), ..ReleaseReport::default() };
        self.release_previous(&mut r);
        for w in &r.warnings {
            tracing::warn!(vm = %self.config.name(), "releasing earlier backup snapshots: {w}");
        }
        r
    }

    /// Gives up: destroys this backup's snapshot VM and VDIs.
    ///
    /// # Errors
    /// [`PoolError::InvalidArgument`] listing what could not be destroyed.
    pub fn abort(mut self) -> PoolResult<()> {
        let w = self.abort_inner();
        if w.is_empty() { Ok(()) } else { Err(PoolError::InvalidArgument(w.join("; "))) }
    }

    fn abort_inner(&mut self) -> Vec<String> {
        self.finished = true;
        for d in &self.disks {
            d.close();
        }
        let w = self.pool.destroy_snapshot(&self.snapshot_ref, &self.snapshot_vdis);
        for x in &w {
            tracing::warn!(vm = %self.config.name(), "abandoning the backup snapshot: {x}");
        }
        w
    }

    fn release_previous(&self, r: &mut ReleaseReport) {
        let pool = self.pool;
        let vm = match pool.raw("VM", &self.vm_ref) {
            Ok(v) => v,
            Err(e) => {
                r.warnings.push(format!("reading VM {}: {e}", self.vm_uuid));
                return;
            }
        };
        let mut just_destroyed: BTreeSet<String> = BTreeSet::new();
        for s in strings(&vm, "snapshots") {
            if s == self.snapshot_ref {
                continue;
            }
            let Ok(snap) = pool.raw("VM", &s) else { continue };
            if !string_map(&snap, "other_config").contains_key(BACKUP_MARK) {
                continue;
            }
            let mut vdis = Vec::new();
            for vbd in strings(&snap, "VBDs") {
                if let Ok(v) = pool.raw("VBD", &vbd) {
                    let vdi = text(&v, "VDI");
                    if text(&v, "type") == "Disk" && is_ref(&vdi) {
                        vdis.push((device_order(&text(&v, "userdevice")), vdi));
                    }
                }
            }
            vdis.sort();
            let vdis: Vec<String> = vdis.into_iter().map(|(_, v)| v).collect();
            let snap_uuid = text(&snap, "uuid");
            if let Err(e) = pool.client().vm_destroy(&s) {
                r.warnings.push(format!("destroying snapshot VM {snap_uuid}: {e}"));
                continue;
            }
            r.destroyed_snapshots.push(snap_uuid);
            for vdi in vdis {
                let uuid = pool.raw("VDI", &vdi).map(|v| text(&v, "uuid")).unwrap_or_else(|_| vdi.clone());
                match pool.client().vdi_data_destroy(&vdi) {
                    Ok(()) => {
                        r.data_destroyed_vdis.push(uuid);
                        just_destroyed.insert(vdi);
                    }
                    Err(e) if matches!(e.xapi_code(), Some("VDI_NO_CBT_METADATA")) => {
                        match pool.client().vdi_destroy(&vdi) {
                            Ok(()) => r.destroyed_vdis.push(uuid),
                            Err(e) => r.warnings.push(format!("destroying snapshot VDI {uuid} (no CBT): {e}")),
                        }
                    }
                    Err(e) => r.warnings.push(format!("data_destroy of snapshot VDI {uuid}: {e}")),
                }
            }
        }
        // cbt_metadata VDIs left by the backups before the previous one.
        for disk in &self.disk_vdis {
            let Ok(v) = pool.raw("VDI", disk) else { continue };
            for s in strings(&v, "snapshots") {
                if just_destroyed.contains(&s) || self.snapshot_vdis.contains(&s) {
                    continue;
                }
                let Ok(sv) = pool.raw("VDI", &s) else { continue };
                if text(&sv, "type") != "cbt_metadata" || !string_map(&sv, "other_config").contains_key(BACKUP_MARK) {
                    continue;
                }
                let uuid = text(&sv, "uuid");
                match pool.client().vdi_destroy(&s) {
                    Ok(()) => r.destroyed_vdis.push(uuid),
                    Err(e) => r.warnings.push(format!("destroying cbt_metadata VDI {uuid}: {e}")),
                }
            }
        }
    }
}

impl Drop for XenBackup<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.abort_inner();
        }
    }
}
