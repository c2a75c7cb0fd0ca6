//! [`XenReplica`]: a replica kept as a VM on a XenServer/XCP-ng pool, behind
//! alike-replica's [`ReplicaTarget`] seam (`docs/replica-xen.md`).
//!
//! # What lives where
//!
//! - **The replica VM**, made from the source's recorded configuration
//!   ([`XenVmConfig`], what a Xen backup records) on a chosen SR and
//!   network, named `NAME (replica)`, halted, with `blocked_operations`
//!   `start` and `start_on` set to `alike-replica` (XAPI then refuses
//!   `VM.start` with `OPERATION_BLOCKED`), and `other_config["alike:replica"]`
//!   describing it (JSON: source VM, chunking, the source's NICs for the
//!   failover's network mapping). Its VDIs carry
//!   `other_config["alike:replica-disk"] = <replica VM uuid>`.
//! - **Points**: snapshots of the replica VM whose `other_config` holds
//!   `alike:replica-point` (`{"point":N,"time_ms":T}`), taken after a run
//!   wrote its last byte. The snapshot made when the replica was created,
//!   marked `alike:replica-base`, holds its empty disks: it is no point.
//! - **A VM a failback made** on the original pool when the original VM was
//!   gone ([`XenReplica::failback_new_target`]), made by
//!   [`XenReplica::create`] like any replica VM, tagged [`FAILBACK_TAG`]
//!   and marked [`FAILBACK_MARK`] (the failed-over VM's uuid); only such a
//!   VM is destroyed by [`XenReplica::discard_failback_vm`].
//! - **The receiver's key and record**, in a local state folder (one
//!   sub-folder per replica VM uuid: `key`, `record.bin`, `lock`): a
//!   replica is its own trust domain and its key never goes to XAPI. A lost
//!   record is rebuilt by reading the newest point; a lost key is made
//!   anew (and the record rebuilt with it).
//!
//! # Writing
//!
//! A run writes the new point's bytes onto the replica VM's own VDIs with
//! `PUT /import_raw_vdi?format=raw&chunked=true` (XAPI's framed raw import:
//! `u64` LE offset, `u32` LE length, data; a zero record ends), which real
//! XAPI and the simulator both take, buffered up to 32 MiB per flush, so
//! only the extents the replica lacks (and the holes the run zeroes) reach
//! the pool. It reads the newest point (local copies, the record's rebuild)
//! through XAPI's NBD export of the point's snapshot VDIs.
//!
//! # Never torn
//!
//! The points are snapshots, which nothing writes: every point reads the
//! same bytes at every instant. The live VM's disks are the run's scratch
//! layer: `begin` marks the VM `alike:replica-dirty` before the first
//! write, and the commit is one `VM.snapshot` (which copies the point's
//! marker from the VM's `other_config`, so a snapshot is a point from the
//! instant it exists) taken after the last write completed. A run that
//! dies anywhere leaves the VM marked dirty; the next writer (a run,
//! retention, a failover) first reverts the VM to the newest point
//! (`VM.revert`, or to the base snapshot when there is no point yet) and
//! only then clears the mark. A run that fails in-process reverts at once.
//! Retention destroys a point's snapshot VM first, then its VDIs; VDIs
//! marked as this replica's that no VBD uses any more (a retention or a
//! revert cut short) are destroyed by the next writer.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use alike_core::{CancelToken, Chunking, DiskSource, Keys, MasterKey};
use alike_replica::{Point, PointDisk, Record, ReplicaError, ReplicaTarget, Run, RunLayer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::config::XenVmConfig;
use super::error::{Context, PoolError, PoolResult};
use super::pool::{XenPool, device_order, is_ref, num, string_map, strings, text};
use super::restore::VmRestoreOptions;
use crate::nbd::NbdDisk;
use crate::xapi::ImportFormat;

/// `other_config` key of a replica VM: what it replicates (JSON).
pub const REPLICA_MARK: &str = "alike:replica";
/// `other_config` key of a point's snapshot: `{"point":N,"time_ms":T}`.
pub const POINT_MARK: &str = "alike:replica-point";
/// `other_config` key of the snapshot holding a new replica's empty disks.
pub const BASE_MARK: &str = "alike:replica-base";
/// `other_config` key of a replica VM while a run writes its disks.
pub const DIRTY_MARK: &str = "alike:replica-dirty";
/// `other_config` key of a replica's VDIs: the replica VM's uuid.
pub const DISK_MARK: &str = "alike:replica-disk";
/// `other_config` key of a test-failover VM: the replica VM's uuid.
pub const TEST_MARK: &str = "alike:replica-test";
/// `other_config` key of a VM a failback made on the original pool
/// ([`XenReplica::failback_new_target`]): the failed-over VM's uuid.
pub const FAILBACK_MARK: &str = "alike:failback-of";
/// The XAPI tag of a VM a failback made on the original pool.
pub const FAILBACK_TAG: &str = "alike-failback";
/// The `blocked_operations` value of a replica's `start` and `start_on`.
pub const BLOCK_CODE: &str = "alike-replica";
/// The resume journal of a replica's first run, in its state folder
/// (`docs/replica-xen.md`, "Resume").
pub const RESUME_JOURNAL: &str = "resume.journal";
/// Bytes a run buffers per disk before writing them to the pool.
const FLUSH_BYTES: u64 = 32 << 20;
/// Largest record of a framed import.
const RECORD_MAX: u64 = 1 << 20;

/// A NIC of the source VM, for a failover's network mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReplicaNic {
    /// The VIF's device number.
    pub device: String,
    /// The source network's uuid.
    pub network_uuid: String,
    /// The source network's name.
    pub network_name: String,
}

/// What `other_config["alike:replica"]` of a replica VM says (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReplicaMeta {
    /// Layout of this record (1).
    pub schema: u32,
    /// The source VM's name.
    pub source_vm: String,
    /// The source VM's uuid.
    pub source_uuid: String,
    /// How the record cuts disks (`Chunking`'s text form).
    pub chunking: String,
    /// The source VM's NICs.
    #[serde(default)]
    pub nics: Vec<ReplicaNic>,
    /// The point the replica was failed over at: it is a live VM now and
    /// takes no more runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_over: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct PointMark {
    point: u64,
    time_ms: u64,
}

/// Settings of a new Xen replica ([`XenReplica::create`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct XenReplicaOptions {
    /// The SR for the replica's disks (name, uuid or ref).
    pub sr: String,
    /// The network for every NIC (default: each NIC's recorded network,
    /// which must exist in this pool).
    pub network: Option<String>,
    /// The replica VM's name (default `NAME (replica)`).
    pub name: Option<String>,
    /// How the record cuts disks.
    pub chunking: Chunking,
    /// Where the receiver keeps replicas' keys and records (a folder per
    /// replica VM uuid in it).
    pub state_dir: PathBuf,
}

impl XenReplicaOptions {
    /// A replica on SR `sr`, its key and record kept under `state_dir`.
    pub fn new(sr: impl Into<String>, state_dir: impl Into<PathBuf>) -> XenReplicaOptions {
        XenReplicaOptions {
            sr: sr.into(),
            network: None,
            name: None,
            chunking: Chunking::default(),
            state_dir: state_dir.into(),
        }
    }
    /// Puts every NIC on `network`.
    #[must_use]
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }
    /// Names the replica VM.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Sets the chunking of a new replica.
    #[must_use]
    pub fn chunking(mut self, c: Chunking) -> Self {
        self.chunking = c;
        self
    }
}

/// Where [`XenReplica::failback_new_target`] makes the new VM on the
/// original pool: `Default`-less (an SR is needed) with chained setters.
///
/// ```
/// let o = alike_xen::adapter::FailbackNewVm::new("Local storage").network("LAN").name("web-01 (rebuilt)");
/// # let _ = o;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FailbackNewVm {
    /// The SR for the new VM's disks (name, uuid or ref).
    pub sr: String,
    /// The network for every NIC (default: each NIC's network on the
    /// original pool as the replica recorded it, which must exist there).
    pub network: Option<String>,
    /// The new VM's name (default: the source VM's recorded name).
    pub name: Option<String>,
}

impl FailbackNewVm {
    /// A new VM with its disks on SR `sr`.
    pub fn new(sr: impl Into<String>) -> FailbackNewVm {
        FailbackNewVm { sr: sr.into(), network: None, name: None }
    }
    /// Puts every NIC on `network`.
    #[must_use]
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }
    /// Names the new VM.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// A replica VM on a pool; see the module docs.
pub struct XenReplica {
    pool: Arc<XenPool>,
    vm_ref: String,
    uuid: String,
    name: String,
    meta: ReplicaMeta,
    chunking: Chunking,
    state: PathBuf,
    keys: OnceLock<Keys>,
}

impl std::fmt::Debug for XenReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenReplica").field("vm", &self.name).field("uuid", &self.uuid).finish_non_exhaustive()
    }
}

/// A point's snapshot.
#[derive(Debug, Clone)]
struct PointSnap {
    snap_ref: String,
    mark: PointMark,
}

/// A VM made by [`XenReplica::test_failover`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TestVm {
    /// Its ref.
    pub vm_ref: String,
    /// Its uuid.
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// The point it is a copy of.
    pub point: u64,
    /// Whether it was started.
    pub started: bool,
}

/// What [`XenReplica::failover`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FailoverReport {
    /// The VM (the replica, now live).
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// The point it was reverted to.
    pub point: u64,
    /// NICs moved: (device, network name) per NIC.
    pub networks: Vec<(String, String)>,
    /// Whether it was started.
    pub started: bool,
}

/// What [`XenReplica::finish_failback`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FailbackReport {
    /// The original VM, live again.
    pub original_uuid: String,
    /// Its name.
    pub original_name: String,
    /// The point the failed-over VM holds now, a replica again.
    pub replica_point: u64,
    /// Whether the original was started.
    pub started: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rerr(e: PoolError) -> ReplicaError {
    ReplicaError::Core(alike_core::Error::seam(e))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The disk VDIs of VM `vm` by `userdevice`: (VDI ref, uuid, size).
fn disks_of(pool: &XenPool, vm: &str) -> PoolResult<Vec<(String, String, u64)>> {
    let raw = pool.raw("VM", vm).ctx(|| format!("reading VM {vm}"))?;
    let mut out = Vec::new();
    for vbd in strings(&raw, "VBDs") {
        let v = pool.raw("VBD", &vbd).ctx(|| format!("reading VBD {vbd}"))?;
        let vdi = text(&v, "VDI");
        if text(&v, "type") != "Disk" || !is_ref(&vdi) {
            continue;
        }
        let d = pool.raw("VDI", &vdi).ctx(|| format!("reading VDI {vdi}"))?;
        out.push((device_order(&text(&v, "userdevice")), (vdi, text(&d, "uuid"), num(&d, "virtual_size"))));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter().map(|(_, d)| d).collect())
}

/// Destroys VM `vm` (stopped first if it runs), its snapshots and the disk
/// VDIs of both: a VM this process made and gives up. Every step is tried;
/// the first failure is returned.
fn purge_vm(pool: &XenPool, vm: &str) -> PoolResult<()> {
    let raw = pool.raw("VM", vm).ctx(|| format!("reading VM {vm}"))?;
    let name = text(&raw, "name_label");
    let mut first: Option<PoolError> = None;
    if text(&raw, "power_state") != "Halted"
        && let Err(e) = pool.void("VM.hard_shutdown", &[json!(vm)]).ctx(|| format!("stopping {name:?}"))
    {
        first.get_or_insert(e);
    }
    for v in strings(&raw, "snapshots").into_iter().chain([vm.to_owned()]) {
        let disks = match disks_of(pool, &v) {
            Ok(d) => d,
            Err(e) => {
                first.get_or_insert(e);
                Vec::new()
            }
        };
        if let Err(e) = pool.void("VM.destroy", &[json!(v)]).ctx(|| format!("destroying {v} of {name:?}")) {
            first.get_or_insert(e);
        }
        for (r, uuid, _) in disks {
            if let Err(e) = pool.void("VDI.destroy", &[json!(r)]).ctx(|| format!("destroying VDI {uuid} of {name:?}")) {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

impl XenReplica {
    /// Makes a replica of the VM `config` describes: the VM (halted,
    /// start blocked, named as [`XenReplicaOptions::name`]) with empty
    /// disks on [`XenReplicaOptions::sr`], and the base snapshot.
    ///
    /// # Errors
    /// As [`XenPool::create_vm`]; a XAPI call failing.
    pub fn create(pool: Arc<XenPool>, config: &XenVmConfig, opts: &XenReplicaOptions) -> PoolResult<XenReplica> {
        opts.chunking.validate().map_err(|e| PoolError::InvalidArgument(e.to_string()))?;
        let name = opts.name.clone().unwrap_or_else(|| format!("{} (replica)", config.name()));
        let meta = ReplicaMeta {
            schema: 1,
            source_vm: config.name().to_owned(),
            source_uuid: config.uuid.clone(),
            chunking: opts.chunking.to_string(),
            nics: config
                .nics
                .iter()
                .map(|n| ReplicaNic {
                    device: n.device.clone(),
                    network_uuid: n.network_uuid.clone(),
                    network_name: n.network_name.clone(),
                })
                .collect(),
            failed_over: None,
        };
        let mut cfg = config.clone();
        let mut oc = match cfg.vm.get("other_config") {
            Some(Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        oc.retain(|k, _| !k.starts_with("alike:"));
        oc.insert(REPLICA_MARK.into(), json!(serde_json::to_string(&meta).unwrap_or_default()));
        cfg.vm.insert("other_config".into(), Value::Object(oc));
        cfg.vm.insert("blocked_operations".into(), json!({"start": BLOCK_CODE, "start_on": BLOCK_CODE}));
        let made = pool.create_vm(&cfg, &opts.sr, opts.network.as_deref(), &VmRestoreOptions::default().name(&name))?;
        let finish = || -> PoolResult<XenReplica> {
            for d in &made.disks {
                pool.void("VDI.add_to_other_config", &[json!(d.vdi_ref), json!(DISK_MARK), json!(made.uuid)])
                    .ctx(|| format!("marking VDI {} of replica {name:?}", d.vdi_uuid))?;
            }
            pool.void("VM.add_to_other_config", &[json!(made.vm_ref), json!(BASE_MARK), json!("1")])
                .ctx(|| format!("marking replica {name:?}"))?;
            pool.client()
                .call_as_string("VM.snapshot", &[json!(made.vm_ref), json!(format!("{name} base"))])
                .ctx(|| format!("taking the base snapshot of replica {name:?}"))?;
            let _ = pool.void("VM.remove_from_other_config", &[json!(made.vm_ref), json!(BASE_MARK)]);
            XenReplica::open(Arc::clone(&pool), &made.uuid, &opts.state_dir)
        };
        match finish() {
            Ok(r) => {
                tracing::info!(vm = %name, uuid = %made.uuid, "replica VM created");
                Ok(r)
            }
            Err(e) => {
                // Nothing half-made is left: the VM, its base and their disks go.
                if let Err(e2) = purge_vm(&pool, &made.vm_ref) {
                    tracing::warn!(vm = %name, error = %e2, "removing the half-made replica VM");
                }
                Err(e)
            }
        }
    }

    /// Opens the replica VM `spec` (name, uuid or ref), its key and record
    /// kept under `state_dir`.
    ///
    /// # Errors
    /// [`PoolError::NotFound`]; [`PoolError::InvalidArgument`] when the VM
    /// is no replica.
    pub fn open(pool: Arc<XenPool>, spec: &str, state_dir: &Path) -> PoolResult<XenReplica> {
        let (vm_ref, raw) = pool.find_vm(spec)?;
        let name = text(&raw, "name_label");
        let oc = string_map(&raw, "other_config");
        let meta: ReplicaMeta = oc
            .get(REPLICA_MARK)
            .and_then(|t| serde_json::from_str(t).ok())
            .ok_or_else(|| PoolError::InvalidArgument(format!("VM {name:?} is not a replica (no {REPLICA_MARK})")))?;
        let chunking: Chunking = meta
            .chunking
            .parse()
            .map_err(|e| PoolError::InvalidArgument(format!("replica {name:?}: chunking {:?}: {e}", meta.chunking)))?;
        let uuid = text(&raw, "uuid");
        Ok(XenReplica { pool, vm_ref, state: state_dir.join(&uuid), uuid, name, meta, chunking, keys: OnceLock::new() })
    }

    /// The replica of the VM `config` describes on this pool (found by the
    /// source's uuid), or a new one.
    ///
    /// # Errors
    /// As [`XenReplica::open`] and [`XenReplica::create`].
    pub fn open_or_create(
        pool: Arc<XenPool>,
        config: &XenVmConfig,
        opts: &XenReplicaOptions,
    ) -> PoolResult<XenReplica> {
        let all = pool.all_raw("VM").ctx(|| "listing VMs to find the replica".to_owned())?;
        let found = all.iter().find(|(_, r)| {
            !super::pool::flag(r, "is_a_snapshot")
                && string_map(r, "other_config")
                    .get(REPLICA_MARK)
                    .and_then(|t| serde_json::from_str::<ReplicaMeta>(t).ok())
                    .is_some_and(|m| m.source_uuid == config.uuid && m.failed_over.is_none())
        });
        match found {
            Some((r, _)) => XenReplica::open(pool, r, &opts.state_dir),
            None => XenReplica::create(pool, config, opts),
        }
    }

    /// The replica VM's uuid.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }
    /// The replica VM's ref.
    pub fn vm_ref(&self) -> &str {
        &self.vm_ref
    }
    /// The replica VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// What the replica VM's marker says.
    pub fn meta(&self) -> &ReplicaMeta {
        &self.meta
    }
    /// The pool.
    pub fn pool(&self) -> &Arc<XenPool> {
        &self.pool
    }

    fn state_file(&self, name: &str) -> PathBuf {
        self.state.join(name)
    }

    fn writer_lock(&self) -> Result<File, ReplicaError> {
        std::fs::create_dir_all(&self.state).map_err(|e| io_err(&self.state, "creating", e))?;
        let path = self.state_file("lock");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err(&path, "opening the lock", e))?;
        for _ in 0..20 {
            match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(f),
                Err(rustix::io::Errno::WOULDBLOCK) => std::thread::sleep(std::time::Duration::from_millis(100)),
                Err(e) => return Err(io_err(&path, "locking", e.into())),
            }
        }
        Err(ReplicaError::Busy { file: path })
    }

    fn load_key(&self) -> Result<Keys, ReplicaError> {
        let path = self.state_file("key");
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                let b = hex32(t.trim()).ok_or_else(|| ReplicaError::Malformed {
                    file: path.clone(),
                    reason: "not a replica key (64 hex digits); delete it to make a new key".into(),
                })?;
                Ok(Keys::from_master(&MasterKey(b)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.state).map_err(|e| io_err(&self.state, "creating", e))?;
                let key = MasterKey::generate()?;
                let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
                match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                    Ok(mut f) => {
                        f.write_all(format!("{hex}\n").as_bytes())
                            .and_then(|()| f.sync_all())
                            .map_err(|e| io_err(&path, "writing", e))?;
                        Ok(Keys::from_master(&key))
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.load_key(),
                    Err(e) => Err(io_err(&path, "creating", e)),
                }
            }
            Err(e) => Err(io_err(&path, "reading", e)),
        }
    }

    /// The VM's record.
    fn vm_raw(&self) -> PoolResult<super::pool::Raw> {
        self.pool.raw("VM", &self.vm_ref).ctx(|| format!("reading replica VM {:?} ({})", self.name, self.uuid))
    }

    /// The disk VDIs of VM `vm` by `userdevice`: (VDI ref, uuid, size).
    fn disks_of(&self, vm: &str) -> PoolResult<Vec<(String, String, u64)>> {
        disks_of(&self.pool, vm)
    }

    /// The points' snapshots, oldest first, and the base snapshot.
    fn snaps(&self) -> PoolResult<(Vec<PointSnap>, Option<String>)> {
        let raw = self.vm_raw()?;
        let mut points = Vec::new();
        let mut base = None;
        for s in strings(&raw, "snapshots") {
            let r = self.pool.raw("VM", &s).ctx(|| format!("reading snapshot {s} of replica {:?}", self.name))?;
            let oc = string_map(&r, "other_config");
            if let Some(mark) = oc.get(POINT_MARK).and_then(|t| serde_json::from_str::<PointMark>(t).ok()) {
                points.push(PointSnap { snap_ref: s, mark });
            } else if oc.contains_key(BASE_MARK) {
                base = Some(s);
            }
        }
        points.sort_by_key(|p| p.mark.point);
        Ok((points, base))
    }

    fn point_snap(&self, point: u64) -> Result<PointSnap, ReplicaError> {
        let (points, _) = self.snaps().map_err(rerr)?;
        let list = points.iter().map(|p| p.mark.point.to_string()).collect::<Vec<_>>().join(", ");
        points.into_iter().find(|p| p.mark.point == point).ok_or_else(|| ReplicaError::PointNotFound {
            target: self.label(),
            point,
            points: if list.is_empty() { "none".into() } else { list },
        })
    }

    fn source(&self, vdi_ref: &str, label: String) -> Result<Box<dyn DiskSource>, ReplicaError> {
        Ok(Box::new(VdiSource::open(Arc::clone(&self.pool), vdi_ref, label).map_err(rerr)?))
    }

    /// Goes back to the newest point (or the base) when a run left the VM
    /// dirty, then clears the mark; destroys this replica's VDIs that no
    /// VBD uses. Call with the writer lock held.
    fn repair(&self) -> PoolResult<()> {
        let raw = self.vm_raw()?;
        let oc = string_map(&raw, "other_config");
        if oc.contains_key(DIRTY_MARK) {
            let (points, base) = self.snaps()?;
            let to = points.last().map(|p| p.snap_ref.clone()).or(base).ok_or_else(|| {
                PoolError::InvalidArgument(format!(
                    "replica {:?} was left mid-run and has neither a point nor its base snapshot to go back to",
                    self.name
                ))
            })?;
            tracing::warn!(vm = %self.name, "a run left the replica's disks mid-write: reverting to the newest point");
            self.pool
                .void("VM.revert", &[json!(to)])
                .ctx(|| format!("reverting replica {:?} to its newest point", self.name))?;
        }
        for k in [DIRTY_MARK, POINT_MARK, BASE_MARK] {
            if oc.contains_key(k) || k == DIRTY_MARK {
                let _ = self.pool.void("VM.remove_from_other_config", &[json!(self.vm_ref), json!(k)]);
            }
        }
        self.tidy()
    }

    /// Destroys VDIs marked as this replica's that no VBD uses.
    fn tidy(&self) -> PoolResult<()> {
        let all = self.pool.all_raw("VDI").ctx(|| "listing VDIs".to_owned())?;
        for (r, rec) in all {
            let mine = string_map(&rec, "other_config").get(DISK_MARK).is_some_and(|u| *u == self.uuid);
            if mine && strings(&rec, "VBDs").is_empty() {
                tracing::info!(vdi = %text(&rec, "uuid"), "removing a leftover VDI of the replica");
                self.pool.void("VDI.destroy", &[json!(r)]).ctx(|| format!("removing leftover VDI {r}"))?;
            }
        }
        Ok(())
    }

    fn failed_over(&self) -> Result<(), ReplicaError> {
        let raw = self.vm_raw().map_err(rerr)?;
        let meta = string_map(&raw, "other_config")
            .get(REPLICA_MARK)
            .and_then(|t| serde_json::from_str::<ReplicaMeta>(t).ok());
        match meta {
            Some(ReplicaMeta { failed_over: Some(p), .. }) => Err(ReplicaError::InvalidArgument(format!(
                "replica {:?} was failed over at point {p}: it is a live VM and takes no more runs",
                self.name
            ))),
            None => Err(ReplicaError::InvalidArgument(format!("VM {:?} is no longer a replica", self.name))),
            _ => Ok(()),
        }
    }

    fn load_record(&self, newest: &PointSnap) -> Result<Record, ReplicaError> {
        let keys = self.keys()?;
        let path = self.state_file("record.bin");
        let sizes: Vec<u64> = self.disks_of(&newest.snap_ref).map_err(rerr)?.iter().map(|d| d.2).collect();
        if let Ok(b) = std::fs::read(&path)
            && let Ok(r) = Record::decode(&b, &keys, &path)
            && r.point() == newest.mark.point
            && r.chunking() == self.chunking
            && r.disks().iter().map(|d| d.size).eq(sizes.iter().copied())
        {
            return Ok(r);
        }
        tracing::info!(vm = %self.name, point = newest.mark.point, "rebuilding the replica's record by reading the point");
        let sources: Vec<Box<dyn DiskSource>> = self
            .disks_of(&newest.snap_ref)
            .map_err(rerr)?
            .iter()
            .enumerate()
            .map(|(d, (r, ..))| self.source(r, format!("point {} disk {d}", newest.mark.point)))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&dyn DiskSource> = sources.iter().map(|s| &**s).collect();
        let r = Record::rebuild(newest.mark.point, self.chunking, &keys, &refs, &CancelToken::new())?;
        let _ = write_atomic(&path, &r.encode(&keys));
        Ok(r)
    }

    fn newest_or_requested(&self, point: Option<u64>) -> Result<PointSnap, ReplicaError> {
        match point {
            Some(p) => self.point_snap(p),
            None => {
                let (points, _) = self.snaps().map_err(rerr)?;
                points
                    .last()
                    .cloned()
                    .ok_or_else(|| ReplicaError::InvalidArgument(format!("replica {:?} has no point yet", self.name)))
            }
        }
    }

    /// Boots a copy of `point` (the newest by default) isolated from the
    /// network: a `VM.clone` of the point's snapshot, its NICs removed (or
    /// moved to `network`, an isolated one), start unblocked, started when
    /// `start`. The replica is untouched: runs go on while it lives. End
    /// it with [`XenReplica::end_test`].
    ///
    /// # Errors
    /// The point does not exist; a XAPI call failing.
    pub fn test_failover(
        &self,
        point: Option<u64>,
        network: Option<&str>,
        start: bool,
    ) -> Result<TestVm, ReplicaError> {
        let p = self.newest_or_requested(point)?;
        let name = format!("{} (test of point {})", self.meta.source_vm, p.mark.point);
        let c = self.pool.client();
        let vm = c.call_as_string("VM.clone", &[json!(p.snap_ref), json!(name)]).map_err(|e| {
            rerr(PoolError::Xen {
                context: format!("cloning point {} of {:?}", p.mark.point, self.name),
                error: Box::new(e),
            })
        })?;
        let made = (|| -> PoolResult<TestVm> {
            let raw = self.pool.raw("VM", &vm).ctx(|| format!("reading the test VM {name:?}"))?;
            let net = network.map(|n| self.pool.find_network(n)).transpose()?;
            for vif in strings(&raw, "VIFs") {
                let v = self.pool.raw("VIF", &vif).ctx(|| format!("reading VIF {vif}"))?;
                self.pool.void("VIF.destroy", &[json!(vif)]).ctx(|| format!("removing NIC {vif} of {name:?}"))?;
                if let Some(net) = &net {
                    let rec = json!({
                        "device": text(&v, "device"), "network": net, "VM": vm, "MAC": "",
                        "MTU": num(&v, "MTU").max(68), "other_config": {}, "qos_algorithm_type": "",
                        "qos_algorithm_params": {},
                    });
                    self.pool.void("VIF.create", &[rec]).ctx(|| format!("adding NIC to {name:?}"))?;
                }
            }
            let mut oc = string_map(&raw, "other_config");
            oc.retain(|k, _| !k.starts_with("alike:replica"));
            oc.insert(TEST_MARK.into(), self.uuid.clone());
            self.pool.void("VM.set_other_config", &[json!(vm), json!(oc)]).ctx(|| format!("marking {name:?}"))?;
            self.pool
                .void("VM.set_blocked_operations", &[json!(vm), json!({})])
                .ctx(|| format!("unblocking {name:?}"))?;
            for (r, ..) in self.disks_of(&vm)? {
                let _ = self.pool.void("VDI.remove_from_other_config", &[json!(r), json!(DISK_MARK)]);
            }
            if start {
                self.pool
                    .void("VM.start", &[json!(vm), json!(false), json!(false)])
                    .ctx(|| format!("starting the test VM {name:?}"))?;
            }
            Ok(TestVm {
                vm_ref: vm.clone(),
                uuid: text(&raw, "uuid"),
                name: name.clone(),
                point: p.mark.point,
                started: start,
            })
        })();
        made.map_err(|e| {
            let _ = self.destroy_vm_and_disks(&vm);
            rerr(e)
        })
    }

    /// Ends a test failover: shuts the test VM down and destroys it with its disks.
    ///
    /// # Errors
    /// The VM is not a test VM of this replica; a XAPI call failing.
    pub fn end_test(&self, vm: &str) -> Result<(), ReplicaError> {
        let (r, raw) = self.pool.find_vm(vm).map_err(rerr)?;
        if string_map(&raw, "other_config").get(TEST_MARK) != Some(&self.uuid) {
            return Err(ReplicaError::InvalidArgument(format!("VM {vm:?} is not a test failover of {:?}", self.name)));
        }
        if text(&raw, "power_state") != "Halted" {
            self.pool.void("VM.hard_shutdown", &[json!(r)]).ctx(|| format!("stopping {vm:?}")).map_err(rerr)?;
        }
        self.destroy_vm_and_disks(&r).map_err(rerr)
    }

    fn destroy_vm_and_disks(&self, vm: &str) -> PoolResult<()> {
        let disks = self.disks_of(vm)?;
        self.pool.void("VM.destroy", &[json!(vm)]).ctx(|| format!("destroying VM {vm}"))?;
        for (r, ..) in disks {
            self.pool.void("VDI.destroy", &[json!(r)]).ctx(|| format!("destroying VDI {r}"))?;
        }
        Ok(())
    }

    /// Makes the replica the live VM at `point` (the newest by default):
    /// reverts it to the point, moves each NIC whose source network
    /// `networks` maps (source network uuid or name → a network of this
    /// pool) to its target, marks the replica failed over (it takes no more
    /// runs), unblocks start and starts it when `start`. Re-addressing
    /// inside the guest is not done.
    ///
    /// # Errors
    /// The point or a mapped network does not exist; a run holds the
    /// replica; a XAPI call failing.
    pub fn failover(
        &self,
        point: Option<u64>,
        networks: &BTreeMap<String, String>,
        start: bool,
    ) -> Result<FailoverReport, ReplicaError> {
        let _lock = self.writer_lock()?;
        self.failed_over()?;
        self.repair().map_err(rerr)?;
        let p = self.newest_or_requested(point)?;
        let go = || -> PoolResult<FailoverReport> {
            self.pool
                .void("VM.revert", &[json!(p.snap_ref)])
                .ctx(|| format!("reverting {:?} to point {}", self.name, p.mark.point))?;
            let raw = self.vm_raw()?;
            let mut moved = Vec::new();
            for vif in strings(&raw, "VIFs") {
                let v = self.pool.raw("VIF", &vif).ctx(|| format!("reading VIF {vif}"))?;
                let dev = text(&v, "device");
                let Some(src) = self.meta.nics.iter().find(|n| n.device == dev) else { continue };
                let Some(target) = networks.get(&src.network_uuid).or_else(|| networks.get(&src.network_name)) else {
                    continue;
                };
                let net = self.pool.find_network(target)?;
                self.pool.void("VIF.destroy", &[json!(vif)]).ctx(|| format!("moving NIC {dev}"))?;
                let rec = json!({
                    "device": dev, "network": net, "VM": self.vm_ref, "MAC": text(&v, "MAC"),
                    "MTU": num(&v, "MTU").max(68), "other_config": v.get("other_config").cloned().unwrap_or(json!({})),
                    "qos_algorithm_type": text(&v, "qos_algorithm_type"),
                    "qos_algorithm_params": v.get("qos_algorithm_params").cloned().unwrap_or(json!({})),
                });
                self.pool.void("VIF.create", &[rec]).ctx(|| format!("moving NIC {dev} to {target}"))?;
                moved.push((dev, target.clone()));
            }
            let mut meta = self.meta.clone();
            meta.failed_over = Some(p.mark.point);
            let _ = self.pool.void("VM.remove_from_other_config", &[json!(self.vm_ref), json!(REPLICA_MARK)]);
            let _ = self.pool.void("VM.remove_from_other_config", &[json!(self.vm_ref), json!(POINT_MARK)]);
            self.pool
                .void(
                    "VM.add_to_other_config",
                    &[json!(self.vm_ref), json!(REPLICA_MARK), json!(serde_json::to_string(&meta).unwrap_or_default())],
                )
                .ctx(|| format!("marking {:?} failed over", self.name))?;
            self.pool
                .void("VM.set_blocked_operations", &[json!(self.vm_ref), json!({})])
                .ctx(|| format!("unblocking {:?}", self.name))?;
            if start {
                self.pool
                    .void("VM.start", &[json!(self.vm_ref), json!(false), json!(false)])
                    .ctx(|| format!("starting {:?}", self.name))?;
            }
            Ok(FailoverReport {
                uuid: self.uuid.clone(),
                name: self.name.clone(),
                point: p.mark.point,
                networks: moved,
                started: start,
            })
        };
        go().map_err(rerr)
    }

    /// The marker as the VM holds it now.
    fn current_meta(&self) -> PoolResult<Option<ReplicaMeta>> {
        let raw = self.vm_raw()?;
        Ok(string_map(&raw, "other_config").get(REPLICA_MARK).and_then(|t| serde_json::from_str(t).ok()))
    }

    /// Refuses a failback from a VM that was not failed over.
    fn was_failed_over(&self) -> Result<(), ReplicaError> {
        let meta = self.current_meta().map_err(rerr)?;
        if meta.as_ref().and_then(|m| m.failed_over).is_none() {
            return Err(ReplicaError::InvalidArgument(format!(
                "{:?} was not failed over: there is nothing to fail back",
                self.name
            )));
        }
        Ok(())
    }

    /// Failback, first step: makes VM `vm` of `original` (the VM this
    /// replica was failed over from, or any halted VM with disks of the
    /// same sizes, to become the live VM again) a replica of this
    /// failed-over VM, whose one point is the VM as it is now (a marked
    /// snapshot). Replicating this VM onto the returned target (the
    /// engine, with no sender state) then sends only the chunks whose
    /// content differs between the two VMs: what changed on either side
    /// since the failover point. [`XenReplica::finish_failback`] swaps the
    /// roles afterwards.
    ///
    /// # Errors
    /// This replica was not failed over; `vm` is running, is itself a
    /// replica, or its disks differ in number or size; a XAPI call failing.
    pub fn failback_target(
        &self,
        original: Arc<XenPool>,
        vm: &str,
        state_dir: &Path,
    ) -> Result<XenReplica, ReplicaError> {
        self.was_failed_over()?;
        let (vm_ref, raw) = original.find_vm(vm).map_err(rerr)?;
        let name = text(&raw, "name_label");
        if text(&raw, "power_state") != "Halted" {
            return Err(ReplicaError::InvalidArgument(format!("VM {name:?} must be halted to be failed back onto")));
        }
        if string_map(&raw, "other_config").contains_key(REPLICA_MARK) {
            return Err(ReplicaError::InvalidArgument(format!("VM {name:?} is a replica already")));
        }
        let uuid = self.mark_failback_target(&original, &vm_ref, &raw).map_err(rerr)?;
        XenReplica::open(original, &uuid, state_dir).map_err(rerr)
    }

    /// Failback onto a new VM, first step, when the VM this replica was
    /// failed over from is gone (the original site lost and rebuilt):
    /// makes a VM on `original` from this VM's configuration the way a
    /// replica VM is made ([`XenReplica::create`]: halted, start blocked,
    /// empty disks of the same sizes on [`FailbackNewVm::sr`], NICs on the
    /// networks the source VM had there or on [`FailbackNewVm::network`]),
    /// named [`FailbackNewVm::name`] (default: the source VM's name),
    /// tagged [`FAILBACK_TAG`] and marked [`FAILBACK_MARK`] (this VM's
    /// uuid); then makes it a failback target as
    /// [`XenReplica::failback_target`] does (its point 1 holds its empty
    /// disks, so the run onto it is a full copy). Finish with
    /// [`XenReplica::finish_failback_new`], or give up with
    /// [`XenReplica::discard_failback_vm`]. When this fails, nothing it
    /// made is left.
    ///
    /// # Errors
    /// This replica was not failed over; the SR or a network is not on
    /// `original`; a XAPI call failing.
    pub fn failback_new_target(
        &self,
        original: Arc<XenPool>,
        new: &FailbackNewVm,
        state_dir: &Path,
    ) -> Result<XenReplica, ReplicaError> {
        self.was_failed_over()?;
        let mut cfg = self.pool.vm_config(&self.vm_ref).map_err(rerr)?;
        // NICs back on the networks the source VM had (the original pool's).
        for n in &mut cfg.nics {
            if let Some(src) = self.meta.nics.iter().find(|s| s.device == n.device) {
                n.network_uuid.clone_from(&src.network_uuid);
                n.network_name.clone_from(&src.network_name);
            }
        }
        for d in &mut cfg.disks {
            d.vdi_other_config.retain(|k, _| !k.starts_with("alike:"));
        }
        let name = new.name.clone().unwrap_or_else(|| self.meta.source_vm.clone());
        let mut opts = XenReplicaOptions::new(new.sr.clone(), state_dir).name(&name).chunking(self.chunking);
        opts.network.clone_from(&new.network);
        let made = XenReplica::create(Arc::clone(&original), &cfg, &opts).map_err(rerr)?;
        let go = || -> PoolResult<()> {
            original
                .void("VM.add_tags", &[json!(made.vm_ref), json!(FAILBACK_TAG)])
                .ctx(|| format!("tagging the new VM {name:?}"))?;
            original
                .void("VM.add_to_other_config", &[json!(made.vm_ref), json!(FAILBACK_MARK), json!(self.uuid)])
                .ctx(|| format!("marking the new VM {name:?}"))?;
            let raw = original.raw("VM", &made.vm_ref).ctx(|| format!("reading the new VM {name:?}"))?;
            self.mark_failback_target(&original, &made.vm_ref, &raw)?;
            Ok(())
        };
        match go() {
            Ok(()) => {
                tracing::info!(vm = %name, uuid = %made.uuid, from = %self.name, "new VM made for the failback");
                XenReplica::open(original, &made.uuid, state_dir).map_err(rerr)
            }
            Err(e) => {
                if let Err(e2) = purge_vm(&original, &made.vm_ref) {
                    tracing::warn!(vm = %name, error = %e2, "removing the half-made failback VM");
                }
                let _ = std::fs::remove_dir_all(&made.state);
                Err(rerr(e))
            }
        }
    }

    /// Destroys a VM [`XenReplica::failback_new_target`] made (halted
    /// first if it runs), with its snapshots, their disks and its state
    /// folder: a failback onto a new VM that is given up.
    ///
    /// # Errors
    /// The VM carries no [`FAILBACK_MARK`] (nothing else is destroyed
    /// here); a XAPI call failing.
    pub fn discard_failback_vm(self) -> Result<(), ReplicaError> {
        let raw = self.vm_raw().map_err(rerr)?;
        if !string_map(&raw, "other_config").contains_key(FAILBACK_MARK) {
            return Err(ReplicaError::InvalidArgument(format!(
                "VM {:?} was not made by a failback: it is not destroyed",
                self.name
            )));
        }
        purge_vm(&self.pool, &self.vm_ref).map_err(rerr)?;
        let _ = std::fs::remove_dir_all(&self.state);
        tracing::info!(vm = %self.name, uuid = %self.uuid, "the new failback VM was removed");
        Ok(())
    }

    /// Makes halted VM `vm_ref` (record `raw`) of `pool` a replica of this
    /// failed-over VM with one point: its content now. Returns its uuid.
    fn mark_failback_target(&self, pool: &Arc<XenPool>, vm_ref: &str, raw: &super::pool::Raw) -> PoolResult<String> {
        let name = text(raw, "name_label");
        let mine: Vec<u64> = self.disks_of(&self.vm_ref)?.iter().map(|d| d.2).collect();
        let back = ReplicaMeta {
            schema: 1,
            source_vm: self.name.clone(),
            source_uuid: self.uuid.clone(),
            chunking: self.meta.chunking.clone(),
            nics: Vec::new(),
            failed_over: None,
        };
        let uuid = text(raw, "uuid");
        let disks = disks_of(pool, vm_ref)?;
        let theirs: Vec<u64> = disks.iter().map(|d| d.2).collect();
        if theirs != mine {
            return Err(PoolError::InvalidArgument(format!(
                "VM {name:?} has disks of {theirs:?} bytes, {:?} of {mine:?}",
                self.name
            )));
        }
        for (r, ..) in &disks {
            let _ = pool.void("VDI.remove_from_other_config", &[json!(r), json!(DISK_MARK)]);
            pool.void("VDI.add_to_other_config", &[json!(r), json!(DISK_MARK), json!(uuid)])
                .ctx(|| format!("marking VDI {r} of {name:?}"))?;
        }
        pool.void("VM.set_blocked_operations", &[json!(vm_ref), json!({"start": BLOCK_CODE, "start_on": BLOCK_CODE})])
            .ctx(|| format!("blocking {name:?} from starting"))?;
        for (k, v) in [
            (REPLICA_MARK, serde_json::to_string(&back).unwrap_or_default()),
            (POINT_MARK, serde_json::to_string(&PointMark { point: 1, time_ms: now_ms() }).unwrap_or_default()),
        ] {
            let _ = pool.void("VM.remove_from_other_config", &[json!(vm_ref), json!(k)]);
            pool.void("VM.add_to_other_config", &[json!(vm_ref), json!(k), json!(v)])
                .ctx(|| format!("marking {name:?}"))?;
        }
        pool.client()
            .call_as_string("VM.snapshot", &[json!(vm_ref), json!(format!("{name} failback base"))])
            .ctx(|| format!("taking the failback base of {name:?}"))?;
        let _ = pool.void("VM.remove_from_other_config", &[json!(vm_ref), json!(POINT_MARK)]);
        Ok(uuid)
    }

    /// Failback, last step, once this failed-over VM was replicated onto
    /// `target` (from [`XenReplica::failback_target`]): the original VM
    /// becomes the live VM again (its failback snapshots destroyed, the
    /// replica marks dropped, start unblocked, started when `start`), and
    /// this VM a replica of it again (shut down, start blocked, its
    /// content taken as a new point, so the next replication from the
    /// original needs nothing it already holds; its marker names the
    /// original as its source VM, NICs and all).
    ///
    /// # Errors
    /// `target` holds no point made by a failback run; a XAPI call failing.
    pub fn finish_failback(&self, target: XenReplica, start: bool) -> Result<FailbackReport, ReplicaError> {
        self.swap_roles(&target, start).map_err(|(e, _)| e)
    }

    /// [`XenReplica::finish_failback`] for a target made by
    /// [`XenReplica::failback_new_target`]: when the swap fails before this
    /// VM was touched, the new VM is destroyed
    /// ([`XenReplica::discard_failback_vm`]) and this VM stays the live one.
    ///
    /// # Errors
    /// As [`XenReplica::finish_failback`].
    pub fn finish_failback_new(&self, target: XenReplica, start: bool) -> Result<FailbackReport, ReplicaError> {
        match self.swap_roles(&target, start) {
            Ok(r) => Ok(r),
            Err((e, false)) => {
                let name = target.name.clone();
                if let Err(e2) = target.discard_failback_vm() {
                    tracing::warn!(vm = %name, error = %e2, "removing the new failback VM");
                }
                Err(e)
            }
            Err((e, true)) => Err(e),
        }
    }

    /// The swap of roles; the error says whether this VM was touched.
    fn swap_roles(&self, target: &XenReplica, start: bool) -> Result<FailbackReport, (ReplicaError, bool)> {
        let untouched = |e| (e, false);
        let (points, base) = target.snaps().map_err(rerr).map_err(untouched)?;
        if points.len() < 2 {
            return Err(untouched(ReplicaError::InvalidArgument(format!(
                "{:?} holds no failback run yet: replicate {:?} onto it first",
                target.name, self.name
            ))));
        }
        let _lock = target.writer_lock().map_err(untouched)?;
        target.repair().map_err(rerr).map_err(untouched)?;
        let nics = nics_of(&target.pool, &target.vm_ref).map_err(rerr).map_err(untouched)?;
        // The original: live again.
        let live_again = || -> PoolResult<()> {
            let tp = &target.pool;
            for s in points.iter().map(|p| &p.snap_ref).chain(&base) {
                let disks = target.disks_of(s)?;
                tp.void("VM.destroy", &[json!(s)])
                    .ctx(|| format!("removing failback snapshot of {:?}", target.name))?;
                for (r, ..) in disks {
                    tp.void("VDI.destroy", &[json!(r)]).ctx(|| format!("removing VDI {r}"))?;
                }
            }
            for (r, ..) in target.disks_of(&target.vm_ref)? {
                let _ = tp.void("VDI.remove_from_other_config", &[json!(r), json!(DISK_MARK)]);
            }
            for k in [REPLICA_MARK, POINT_MARK, DIRTY_MARK, BASE_MARK] {
                let _ = tp.void("VM.remove_from_other_config", &[json!(target.vm_ref), json!(k)]);
            }
            tp.void("VM.set_blocked_operations", &[json!(target.vm_ref), json!({})])
                .ctx(|| format!("unblocking {:?}", target.name))?;
            if start {
                tp.void("VM.start", &[json!(target.vm_ref), json!(false), json!(false)])
                    .ctx(|| format!("starting {:?}", target.name))?;
            }
            Ok(())
        };
        live_again().map_err(rerr).map_err(untouched)?;
        // This VM: a replica again, its content a new point.
        let replica_again = || -> PoolResult<FailbackReport> {
            let raw = self.vm_raw()?;
            if text(&raw, "power_state") != "Halted" {
                self.pool
                    .void("VM.hard_shutdown", &[json!(self.vm_ref)])
                    .ctx(|| format!("stopping {:?}", self.name))?;
            }
            let (mine, _) = self.snaps()?;
            let point = mine.last().map_or(1, |p| p.mark.point + 1);
            let mut meta = self.meta.clone();
            meta.failed_over = None;
            meta.source_vm.clone_from(&target.name);
            meta.source_uuid.clone_from(&target.uuid);
            meta.nics = nics;
            self.pool
                .void(
                    "VM.set_blocked_operations",
                    &[json!(self.vm_ref), json!({"start": BLOCK_CODE, "start_on": BLOCK_CODE})],
                )
                .ctx(|| format!("blocking {:?} from starting", self.name))?;
            for (k, v) in [
                (REPLICA_MARK, serde_json::to_string(&meta).unwrap_or_default()),
                (POINT_MARK, serde_json::to_string(&PointMark { point, time_ms: now_ms() }).unwrap_or_default()),
            ] {
                let _ = self.pool.void("VM.remove_from_other_config", &[json!(self.vm_ref), json!(k)]);
                self.pool
                    .void("VM.add_to_other_config", &[json!(self.vm_ref), json!(k), json!(v)])
                    .ctx(|| format!("marking {:?}", self.name))?;
            }
            self.pool
                .client()
                .call_as_string("VM.snapshot", &[json!(self.vm_ref), json!(format!("{} point {point}", self.name))])
                .ctx(|| format!("taking point {point} of {:?}", self.name))?;
            let _ = self.pool.void("VM.remove_from_other_config", &[json!(self.vm_ref), json!(POINT_MARK)]);
            Ok(FailbackReport {
                original_uuid: target.uuid.clone(),
                original_name: target.name.clone(),
                replica_point: point,
                started: start,
            })
        };
        replica_again().map_err(|e| (rerr(e), true))
    }
}

/// The NICs of VM `vm` as a replica's marker records its source's.
fn nics_of(pool: &XenPool, vm: &str) -> PoolResult<Vec<ReplicaNic>> {
    let raw = pool.raw("VM", vm).ctx(|| format!("reading VM {vm}"))?;
    let mut out = Vec::new();
    for vif in strings(&raw, "VIFs") {
        let v = pool.raw("VIF", &vif).ctx(|| format!("reading VIF {vif}"))?;
        let net = text(&v, "network");
        let n = pool.raw("network", &net).ctx(|| format!("reading network {net}"))?;
        out.push(ReplicaNic {
            device: text(&v, "device"),
            network_uuid: text(&n, "uuid"),
            network_name: text(&n, "name_label"),
        });
    }
    out.sort_by_key(|a| device_order(&a.device));
    Ok(out)
}

impl ReplicaTarget for XenReplica {
    fn label(&self) -> String {
        format!("Xen replica {:?} ({})", self.name, self.uuid)
    }

    fn chunking(&self) -> Chunking {
        self.chunking
    }

    fn keys(&self) -> Result<Keys, ReplicaError> {
        if let Some(k) = self.keys.get() {
            return Ok(k.clone());
        }
        let k = self.load_key()?;
        Ok(self.keys.get_or_init(|| k).clone())
    }

    fn points(&self) -> Result<Vec<Point>, ReplicaError> {
        let (points, _) = self.snaps().map_err(rerr)?;
        points
            .iter()
            .map(|p| {
                let disks = self.disks_of(&p.snap_ref).map_err(rerr)?;
                Ok(Point::new(
                    p.mark.point,
                    p.mark.time_ms,
                    disks.into_iter().map(|(_, u, s)| PointDisk::new(s, u)).collect(),
                ))
            })
            .collect()
    }

    fn point_disk(&self, point: u64, disk: usize) -> Result<Box<dyn DiskSource>, ReplicaError> {
        let p = self.point_snap(point)?;
        let disks = self.disks_of(&p.snap_ref).map_err(rerr)?;
        let Some((r, ..)) = disks.get(disk) else {
            return Err(ReplicaError::DiskNotFound { point, disk, disks: disks.len() });
        };
        self.source(r, format!("{} point {point} disk {disk}", self.name))
    }

    fn record(&self) -> Result<Record, ReplicaError> {
        let (points, _) = self.snaps().map_err(rerr)?;
        match points.last() {
            Some(p) => self.load_record(p),
            None => {
                let sizes: Vec<u64> = self.disks_of(&self.vm_ref).map_err(rerr)?.iter().map(|d| d.2).collect();
                Ok(Record::empty(0, self.chunking, &sizes))
            }
        }
    }

    fn begin(&self, disk_sizes: &[u64]) -> Result<Run<'_>, ReplicaError> {
        let lock = self.writer_lock()?;
        self.failed_over()?;
        self.repair().map_err(rerr)?;
        let live = self.disks_of(&self.vm_ref).map_err(rerr)?;
        let have: Vec<u64> = live.iter().map(|d| d.2).collect();
        if have != disk_sizes {
            return Err(ReplicaError::DisksDiffer {
                target: self.label(),
                reason: format!(
                    "the run's disks are {disk_sizes:?} bytes, the replica VM's {have:?} (a resized or added disk needs a new replica)"
                ),
            });
        }
        let keys = self.keys()?;
        let (points, _) = self.snaps().map_err(rerr)?;
        let (record, parents) = match points.last() {
            Some(p) => {
                let record = self.load_record(p)?;
                let parents = self
                    .disks_of(&p.snap_ref)
                    .map_err(rerr)?
                    .iter()
                    .enumerate()
                    .map(|(d, (r, ..))| self.source(r, format!("point {} disk {d}", p.mark.point)))
                    .collect::<Result<Vec<_>, _>>()?;
                (record, parents)
            }
            None => (Record::empty(0, self.chunking, disk_sizes), Vec::new()),
        };
        let journal = self.state_file(RESUME_JOURNAL);
        if !points.is_empty() {
            // Only a first run keeps a journal: once a point exists it is a
            // leftover of a commit whose process died before deleting it.
            let _ = std::fs::remove_file(&journal);
        }
        let point = points.last().map_or(1, |p| p.mark.point + 1);
        // From here on the live disks may differ from every point.
        self.pool
            .void("VM.add_to_other_config", &[json!(self.vm_ref), json!(DIRTY_MARK), json!(point.to_string())])
            .ctx(|| format!("marking replica {:?} as being written", self.name))
            .map_err(rerr)?;
        let layer = XenLayer {
            rep: self,
            _lock: lock,
            point,
            vdis: live.iter().map(|(r, _, s)| (r.clone(), *s)).collect(),
            buf: Mutex::new(Buffer { disks: vec![Vec::new(); live.len()], bytes: vec![0; live.len()] }),
            done: false,
        };
        let mut run = Run::new(Box::new(layer), disk_sizes, parents, record, keys, None)?;
        if points.is_empty() {
            // A first run can be long (a seed over a WAN). The live disks are
            // reverted to the base whenever it does not commit, so what
            // arrives is kept beside the record instead, and what an earlier
            // attempt kept there is copied from it instead of sent again.
            let held = run.resume_journal(&journal)?;
            if held > 0 {
                tracing::info!(vm = %self.name, bytes = held, "resuming a first run from its journal");
            }
        }
        Ok(run)
    }

    fn discard_partial(&self) -> Result<bool, ReplicaError> {
        let _lock = self.writer_lock()?;
        let path = self.state_file(RESUME_JOURNAL);
        let removed = std::fs::remove_file(&path);
        // The live disks an attempt left mid-write go back too.
        self.repair().map_err(rerr)?;
        match removed {
            Ok(()) => {
                if let Ok(d) = File::open(&self.state) {
                    let _ = d.sync_all();
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path, "removing", e)),
        }
    }

    fn keep_last(&self, n: usize) -> Result<Vec<u64>, ReplicaError> {
        if n == 0 {
            return Err(ReplicaError::InvalidArgument("keep at least 1 point".into()));
        }
        let _lock = self.writer_lock()?;
        self.repair().map_err(rerr)?;
        let (points, _) = self.snaps().map_err(rerr)?;
        let mut removed = Vec::new();
        if points.len() > n {
            for p in &points[..points.len() - n] {
                // The snapshot first: once it is gone the point is gone, and
                // its VDIs are leftovers the next writer removes if we die here.
                let disks = self.disks_of(&p.snap_ref).map_err(rerr)?;
                self.pool
                    .void("VM.destroy", &[json!(p.snap_ref)])
                    .ctx(|| format!("removing point {} of {:?}", p.mark.point, self.name))
                    .map_err(rerr)?;
                for (r, ..) in disks {
                    self.pool.void("VDI.destroy", &[json!(r)]).ctx(|| format!("removing VDI {r}")).map_err(rerr)?;
                }
                removed.push(p.mark.point);
            }
        }
        Ok(removed)
    }
}

/// A write waiting to go to the pool.
#[derive(Debug, Clone)]
enum Piece {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

struct Buffer {
    disks: Vec<Vec<Piece>>,
    bytes: Vec<u64>,
}

/// One run's writes onto the replica VM's disks.
struct XenLayer<'a> {
    rep: &'a XenReplica,
    _lock: File,
    point: u64,
    vdis: Vec<(String, u64)>,
    buf: Mutex<Buffer>,
    done: bool,
}

impl XenLayer<'_> {
    fn check(&self, disk: usize, offset: u64, len: u64) -> Result<(), ReplicaError> {
        let size = self.vdis.get(disk).map(|d| d.1).ok_or_else(|| {
            ReplicaError::InvalidArgument(format!("disk {disk}: the replica has {} disk(s)", self.vdis.len()))
        })?;
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(ReplicaError::InvalidArgument(format!(
                "disk {disk}: {len} bytes at {offset} pass the end ({size})"
            )));
        }
        Ok(())
    }

    fn push(&self, disk: usize, piece: Piece, len: u64) -> Result<(), ReplicaError> {
        let mut b = lock(&self.buf);
        b.disks[disk].push(piece);
        b.bytes[disk] += len;
        if b.bytes[disk] >= FLUSH_BYTES {
            self.flush(&mut b, disk)?;
        }
        Ok(())
    }

    fn flush(&self, b: &mut Buffer, disk: usize) -> Result<(), ReplicaError> {
        let pieces = std::mem::take(&mut b.disks[disk]);
        b.bytes[disk] = 0;
        if pieces.is_empty() {
            return Ok(());
        }
        let body = Framed::new(pieces);
        let len = body.len;
        let (vdi, _) = &self.vdis[disk];
        self.rep.pool.client().import_raw_vdi(vdi, ImportFormat::RawChunked, body, len).map_err(|e| {
            rerr(PoolError::Xen {
                context: format!("writing point {} disk {disk} onto replica {:?}", self.point, self.rep.name),
                error: Box::new(e),
            })
        })
    }

    fn revert(&self) {
        let _ = self.rep.repair();
    }
}

impl RunLayer for XenLayer<'_> {
    fn point(&self) -> u64 {
        self.point
    }

    fn write_at(&self, disk: usize, offset: u64, data: &[u8]) -> Result<(), ReplicaError> {
        self.check(disk, offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.push(disk, Piece::Data(offset, data.to_vec()), data.len() as u64)
    }

    fn write_zeroes(&self, disk: usize, offset: u64, len: u64) -> Result<(), ReplicaError> {
        self.check(disk, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // Zeroes cost their length on the way to the pool, not in memory.
        self.push(disk, Piece::Zero(offset, len), len.min(RECORD_MAX))
    }

    fn seal(&mut self) -> Result<Vec<Box<dyn DiskSource>>, ReplicaError> {
        {
            let mut b = lock(&self.buf);
            for d in 0..self.vdis.len() {
                self.flush(&mut b, d)?;
            }
        }
        self.vdis
            .iter()
            .enumerate()
            .map(|(d, (r, _))| self.rep.source(r, format!("new point {} disk {d}", self.point)))
            .collect()
    }

    fn commit(mut self: Box<Self>, time_ms: u64, record: &Record) -> Result<Point, ReplicaError> {
        let rep = self.rep;
        let keys = rep.keys()?;
        write_atomic(&rep.state_file("record.bin"), &record.encode(&keys))?;
        let mark = serde_json::to_string(&PointMark { point: self.point, time_ms }).unwrap_or_default();
        let pool = &rep.pool;
        let _ = pool.void("VM.remove_from_other_config", &[json!(rep.vm_ref), json!(POINT_MARK)]);
        pool.void("VM.add_to_other_config", &[json!(rep.vm_ref), json!(POINT_MARK), json!(mark)])
            .ctx(|| format!("marking point {} of {:?}", self.point, rep.name))
            .map_err(rerr)?;
        // The commit: a snapshot carrying the point's mark (copied from the VM's other_config).
        let snap = pool
            .client()
            .call_as_string("VM.snapshot", &[json!(rep.vm_ref), json!(format!("{} point {}", rep.name, self.point))])
            .ctx(|| format!("taking point {} of {:?} (VM.snapshot)", self.point, rep.name))
            .map_err(rerr)?;
        self.done = true;
        for k in [POINT_MARK, DIRTY_MARK] {
            // Best effort: a VM still marked dirty is reverted to this very point by the next writer.
            let _ = pool.void("VM.remove_from_other_config", &[json!(rep.vm_ref), json!(k)]);
        }
        let disks = rep.disks_of(&snap).map_err(rerr)?;
        tracing::info!(vm = %rep.name, point = self.point, "replica point committed");
        Ok(Point::new(self.point, time_ms, disks.into_iter().map(|(_, u, s)| PointDisk::new(s, u)).collect()))
    }

    fn abort(mut self: Box<Self>) -> Result<(), ReplicaError> {
        self.done = true;
        self.rep.repair().map_err(rerr)
    }
}

impl Drop for XenLayer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.revert();
        }
    }
}

/// The body of a framed raw import: records made on the fly from pieces
/// (zeroes never held in memory beyond one record).
struct Framed {
    pieces: std::collections::VecDeque<Piece>,
    cur: Vec<u8>,
    pos: usize,
    len: u64,
    ended: bool,
}

impl Framed {
    fn new(pieces: Vec<Piece>) -> Framed {
        let mut len = 12; // the end record
        for p in &pieces {
            let n = match p {
                Piece::Data(_, d) => d.len() as u64,
                Piece::Zero(_, n) => *n,
            };
            len += n + 12 * n.div_ceil(RECORD_MAX);
        }
        Framed { pieces: pieces.into(), cur: Vec::new(), pos: 0, len, ended: false }
    }

    /// The next record into `cur`; false at the end.
    fn next_record(&mut self) -> bool {
        self.cur.clear();
        self.pos = 0;
        let Some(p) = self.pieces.pop_front() else {
            if self.ended {
                return false;
            }
            self.ended = true;
            self.cur.extend_from_slice(&[0u8; 12]);
            return true;
        };
        let (off, len) = match &p {
            Piece::Data(o, d) => (*o, d.len() as u64),
            Piece::Zero(o, n) => (*o, *n),
        };
        let n = len.min(RECORD_MAX);
        self.cur.extend_from_slice(&off.to_le_bytes());
        self.cur.extend_from_slice(&(n as u32).to_le_bytes());
        match p {
            Piece::Data(o, d) => {
                self.cur.extend_from_slice(&d[..n as usize]);
                if n < len {
                    self.pieces.push_front(Piece::Data(o + n, d[n as usize..].to_vec()));
                }
            }
            Piece::Zero(o, _) => {
                self.cur.resize(12 + n as usize, 0);
                if n < len {
                    self.pieces.push_front(Piece::Zero(o + n, len - n));
                }
            }
        }
        true
    }
}

impl Read for Framed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.cur.len() && !self.next_record() {
            return Ok(0);
        }
        let n = (self.cur.len() - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A VDI as a [`DiskSource`], read through XAPI's NBD export (opened on
/// the first read).
pub struct VdiSource {
    pool: Arc<XenPool>,
    vdi_ref: String,
    label: String,
    size: u64,
    disk: Mutex<Option<Arc<NbdDisk>>>,
}

impl std::fmt::Debug for VdiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VdiSource").field("label", &self.label).field("size", &self.size).finish_non_exhaustive()
    }
}

impl VdiSource {
    /// VDI `vdi_ref` of `pool`.
    ///
    /// # Errors
    /// The VDI cannot be read.
    pub fn open(pool: Arc<XenPool>, vdi_ref: &str, label: String) -> PoolResult<VdiSource> {
        let raw = pool.raw("VDI", vdi_ref).ctx(|| format!("reading VDI {vdi_ref} ({label})"))?;
        Ok(VdiSource {
            size: num(&raw, "virtual_size"),
            pool,
            vdi_ref: vdi_ref.to_owned(),
            label,
            disk: Mutex::new(None),
        })
    }

    fn nbd(&self) -> PoolResult<Arc<NbdDisk>> {
        let mut g = lock(&self.disk);
        if let Some(d) = g.as_ref() {
            return Ok(Arc::clone(d));
        }
        let what = || format!("opening the NBD export of VDI {} ({})", self.vdi_ref, self.label);
        let infos = self.pool.client().vdi_get_nbd_info(&self.vdi_ref).ctx(what)?;
        let mut info = infos
            .iter()
            .find(|i| i.address.parse::<std::net::Ipv4Addr>().is_ok())
            .or(infos.first())
            .cloned()
            .ok_or_else(|| {
                PoolError::InvalidArgument(format!(
                    "{}: the pool offers no NBD export (give a network the nbd or insecure_nbd purpose)",
                    self.label
                ))
            })?;
        // xapi-nbd forces TLS when some network has purpose `nbd` and
        // refuses STARTTLS otherwise; `get_nbd_info` gives the certificate either way.
        let tls = self
            .pool
            .all_raw("network")
            .ctx(|| "reading the networks' NBD purposes".to_owned())?
            .values()
            .any(|n| strings(n, "purpose").iter().any(|p| p == "nbd"));
        if !tls {
            info.cert.clear();
        }
        let mut b = info.builder().ctx(what)?;
        b.connections(4).label(format!("NBD export of {}", self.label));
        let d = Arc::new(b.open_disk().ctx(what)?);
        *g = Some(Arc::clone(&d));
        Ok(d)
    }
}

impl DiskSource for VdiSource {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn size(&self) -> u64 {
        self.size
    }
    // xapi-nbd has no BLOCK_STATUS: the whole disk is one range.
    #[allow(clippy::single_range_in_vec_init)]
    fn allocated_ranges(&self) -> alike_core::Result<Vec<Range<u64>>> {
        Ok(vec![0..self.size])
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        let fail = |e: io::Error| alike_core::Error::SourceRead { disk: self.label.clone(), offset, source: e };
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.size) {
            return Err(fail(io::Error::other(format!("read of {} bytes at {offset} past the end", buf.len()))));
        }
        let d = self.nbd().map_err(|e| fail(io::Error::other(e)))?;
        d.read(offset, buf).map_err(|e| fail(e.into_io()))
    }
}

fn io_err(file: &Path, what: &'static str, source: io::Error) -> ReplicaError {
    ReplicaError::Io { file: file.to_owned(), what, source }
}

fn hex32(t: &str) -> Option<[u8; 32]> {
    if t.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Writes `path` through a temporary file, synced, renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReplicaError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "creating", e))?;
    let tmp =
        dir.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("f"), std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, "creating", e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| io_err(&tmp, "writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, "renaming", e))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, "syncing", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_body_is_records_then_an_end() {
        let pieces = vec![Piece::Data(4096, vec![7u8; 10]), Piece::Zero(1 << 20, RECORD_MAX + 5)];
        let mut f = Framed::new(pieces);
        let len = f.len;
        let mut out = Vec::new();
        f.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, len);
        let mut at = 0;
        let mut recs = Vec::new();
        loop {
            let off = u64::from_le_bytes(out[at..at + 8].try_into().unwrap());
            let n = u32::from_le_bytes(out[at + 8..at + 12].try_into().unwrap()) as usize;
            at += 12;
            if off == 0 && n == 0 {
                break;
            }
            recs.push((off, n, out[at..at + n].iter().all(|b| *b == 0)));
            at += n;
        }
        assert_eq!(at, out.len());
        assert_eq!(
            recs,
            vec![(4096, 10, false), (1 << 20, RECORD_MAX as usize, true), ((1 << 20) + RECORD_MAX, 5, true)]
        );
    }

    #[test]
    fn keys_are_hex() {
        assert_eq!(hex32(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(hex32("ab"), None);
        assert_eq!(hex32(&"zz".repeat(32)), None);
    }
}
