//! The Hyper-V host adapter: inventory, and the backup cycle with recovery
//! checkpoints, disks read over SMB, reference points and RCT — a
//! [`HyperVHost`] implementing [`alike_core::Hypervisor`].
//!
//! ## Inventory
//! VMs are the `Msvm_ComputerSystem`s whose `Caption` is "Virtual Machine".
//! A VM's configuration ([`HvVmConfig`]) is read from its realized
//! `Msvm_VirtualSystemSettingData` and the resource settings associated
//! with it (`Msvm_VirtualSystemSettingDataComponent`): generation
//! (`VirtualSystemSubType`), secure boot, configuration version, vCPUs,
//! memory, disks (each `Msvm_StorageAllocationSettingData`'s
//! `HostResource`, its drive's `AddressOnParent` and its controller's type
//! and address, found through the `Parent` paths) and NICs (MAC, switch).
//! Disks are ordered IDE before SCSI, then by controller and location; that
//! order gives a version's disk positions. The configuration goes into the
//! version's [`VmInfo`] (`hypervisor = "hyperv"`, `extra["hyperv"]`).
//!
//! ## Backup
//! [`HyperVHost::begin_backup`] takes a **recovery checkpoint**
//! (`CreateSnapshot`, type 32768, `ConsistencyLevel` 1 when quiescing is
//! asked for, 2 otherwise) and follows its job; the checkpoint is the
//! job's affected `Msvm_VirtualSystemSettingData`. Its disks'
//! `HostResource`s are the frozen files (the VM now writes to new AVHDX
//! children); each is opened on the host's administrative share over SMB
//! ([`crate::smb::SmbShare`], `VhdxSource::open_in`: the file and its
//! parents) and served as a [`DiskSource`].
//!
//! **Change tokens** are JSON naming the VM, the disk position, the
//! checkpoint and its creation time. [`HyperVBackup::commit`] (after the
//! version is stored) converts the checkpoint into a reference point
//! (`ConvertToReferencePoint`: the AVHDX is merged, an RCT id per disk is
//! kept) and destroys the VM's older reference points. The next backup's
//! `changed_ranges(token)` finds the one reference point created since
//! the token's checkpoint, takes its RCT id for the disk and asks
//! `GetVirtualDiskChanges(frozen file, RCT id)` over the whole disk,
//! looping while the host processes less than asked. When that cannot be
//! answered — no such reference point (removed, or the commit failed), more
//! than one (another product makes them too), an RCT id the host refuses
//! (RCT reset, disk resized or replaced) — it returns an error saying why,
//! and the engine falls back loudly to a full, deduplicated read.
//!
//! [`HyperVBackup::abort`] (also on drop) destroys the checkpoint.
//! Recovery checkpoints found on the VM when a backup starts were left by
//! a backup that did not finish (a killed process, a lost host): they are
//! reported as a warning, not removed — another product may own them.
//! Restore to a Hyper-V host: `crate::restore` (`create_vm`).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use alike_core::{
    BackupSession, DiskSink, DiskSource, Hypervisor, NicInfo, Placement, PlannedDisk, PreviousDisk, Quiesce,
    ReleaseReport, RestoreSession, SessionDisk, SnapshotOptions, VmInfo,
};
use serde::{Deserialize, Serialize};

use crate::smb::{SmbShare, share_path};
use crate::vhdx::{OpenOptions, VhdxSource};
use crate::wsman::{Arg, Client, ConnectOptions, Embedded, Epr, Instance};
use crate::{Error, Result};

/// How to reach a host: WS-Man and its share.
#[derive(Clone)]
#[non_exhaustive]
pub struct HostOptions {
    /// WS-Man options (URL, user, password, timeouts).
    pub wsman: ConnectOptions,
    /// The SMB server of the host's shares: the URL's host unless set.
    pub smb_host: Option<String>,
    /// Its port (445).
    pub smb_port: u16,
    /// Where a restore stages each VHDX before copying it to the host
    /// (default: the system's temporary folder); it needs room for the
    /// disk's data.
    pub staging_dir: Option<std::path::PathBuf>,
    smb_user: String,
    smb_password: String,
}

impl std::fmt::Debug for HostOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostOptions")
            .field("wsman", &self.wsman)
            .field("smb_port", &self.smb_port)
            .finish_non_exhaustive()
    }
}

impl HostOptions {
    /// A host at `url` (`http://HOST:5985/wsman`) with these credentials
    /// (used for WS-Man and SMB alike).
    pub fn new(url: &str, user: &str, password: &str) -> HostOptions {
        HostOptions {
            wsman: ConnectOptions::new(url, user, password),
            smb_host: None,
            smb_port: 445,
            staging_dir: None,
            smb_user: user.to_owned(),
            smb_password: password.to_owned(),
        }
    }

    /// Sets the SMB port.
    pub fn smb_port(&mut self, port: u16) -> &mut HostOptions {
        self.smb_port = port;
        self
    }
}

/// A disk of a VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HvDiskConfig {
    /// Position in the VM (the version's disk position).
    pub position: u32,
    /// `ide` or `scsi`.
    pub controller: String,
    /// The controller's number among those of its type.
    pub controller_index: u32,
    /// Location on the controller.
    pub location: u32,
    /// The file the VM (or the checkpoint) uses, as the host names it.
    pub path: String,
}

/// A NIC of a VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HvNicConfig {
    /// MAC address (12 hex digits, as Hyper-V writes it).
    pub mac: String,
    /// The virtual switch's name, when connected.
    pub switch: Option<String>,
}

/// A VM's configuration, as recorded in a version (`extra["hyperv"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HvVmConfig {
    /// The VM's id (`Msvm_ComputerSystem.Name`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Generation 1 (BIOS) or 2 (UEFI).
    pub generation: u8,
    /// Secure boot (generation 2).
    pub secure_boot: bool,
    /// Configuration version.
    pub version: String,
    /// Virtual processors.
    pub vcpus: u32,
    /// Memory (MiB).
    pub memory_mb: u64,
    /// Whether it was running.
    pub running: bool,
    /// Disks, in position order.
    pub disks: Vec<HvDiskConfig>,
    /// NICs.
    pub nics: Vec<HvNicConfig>,
}

impl HvVmConfig {
    /// The version's [`VmInfo`].
    pub fn to_vm_info(&self) -> VmInfo {
        let mut v = VmInfo::named(&self.name);
        v.uuid = Some(self.id.clone());
        v.hypervisor = "hyperv".into();
        v.vcpus = Some(self.vcpus);
        v.memory_bytes = Some(self.memory_mb << 20);
        v.nics = self
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut nic = NicInfo::default();
                nic.device = i.to_string();
                nic.network.clone_from(&n.switch);
                nic.mac = Some(n.mac.clone());
                nic
            })
            .collect();
        if let Ok(j) = serde_json::to_value(self) {
            v.extra.insert("hyperv".into(), j);
        }
        v
    }
}

/// The `InstanceID` in a WMI object path (`…:Class.InstanceID="…"`).
fn instance_id_of_path(path: &str) -> Option<String> {
    let start = path.find("InstanceID=\"")? + "InstanceID=\"".len();
    let mut out = String::new();
    let mut chars = path[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

/// The `Name` key in a WMI object path.
fn name_of_path(path: &str) -> Option<String> {
    // Not `CreationClassName="`: the key `Name` follows `.` or `,`.
    let start = path.find(",Name=\"").or_else(|| path.find(".Name=\""))? + ",Name=\"".len();
    path[start..].split('"').next().map(str::to_owned)
}

/// A connected Hyper-V host.
pub struct HyperVHost {
    client: Client,
    opts: HostOptions,
    smb_host: String,
    shares: Mutex<HashMap<String, Arc<SmbShare>>>,
}

impl std::fmt::Debug for HyperVHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperVHost").field("url", &self.client.url()).finish_non_exhaustive()
    }
}

pub(crate) fn never() -> bool {
    false
}

impl HyperVHost {
    /// Connects to the host's WS-Man endpoint (the share is connected on
    /// the first disk read).
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub fn connect(opts: &HostOptions) -> Result<HyperVHost> {
        let client = Client::connect(&opts.wsman)?;
        let smb_host = match &opts.smb_host {
            Some(h) => h.clone(),
            None => {
                let rest = opts.wsman.url.split("://").nth(1).unwrap_or_default();
                let hostport = rest.split('/').next().unwrap_or_default();
                match hostport.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or_default().to_owned(),
                    None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h).to_owned(),
                }
            }
        };
        Ok(HyperVHost { client, opts: opts.clone(), smb_host, shares: Mutex::new(HashMap::new()) })
    }

    /// The WS-Man client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn options(&self) -> &HostOptions {
        &self.opts
    }

    pub(crate) fn share(&self, name: &str) -> Result<Arc<SmbShare>> {
        let mut m = self.shares.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = m.get(name) {
            return Ok(Arc::clone(s));
        }
        let s = Arc::new(SmbShare::connect(
            &self.smb_host,
            self.opts.smb_port,
            name,
            &self.opts.smb_user,
            &self.opts.smb_password,
        )?);
        m.insert(name.to_owned(), Arc::clone(&s));
        Ok(s)
    }

    fn vm_instances(&self) -> Result<Vec<Instance>> {
        Ok(self
            .client
            .query("SELECT * FROM Msvm_ComputerSystem")?
            .into_iter()
            .filter(|i| i.text("Caption") == Some("Virtual Machine"))
            .collect())
    }

    /// The VM named or identified by `vm` (its id, or its name when unique).
    pub(crate) fn find_vm(&self, vm: &str) -> Result<Instance> {
        let all = self.vm_instances()?;
        if let Some(i) = all.iter().find(|i| i.text("Name").is_some_and(|n| n.eq_ignore_ascii_case(vm))) {
            return Ok(i.clone());
        }
        let named: Vec<&Instance> = all.iter().filter(|i| i.text("ElementName") == Some(vm)).collect();
        match named.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::InvalidArgument(format!("no VM named or identified {vm:?} on {}", self.client.url()))),
            _ => Err(Error::InvalidArgument(format!("{} VMs are named {vm:?}: give the VM's id", named.len()))),
        }
    }

    pub(crate) fn epr(i: &Instance) -> Result<Epr> {
        i.epr.clone().ok_or_else(|| Error::InvalidArgument(format!("an instance of {} without a reference", i.class)))
    }

    /// The configuration of `vm` as its settings `vssd` (realized, or a
    /// checkpoint's) describe it.
    fn config(&self, vm: &Instance, vssd: &Instance) -> Result<HvVmConfig> {
        let parts = self.client.associators(
            &HyperVHost::epr(vssd)?,
            "Msvm_VirtualSystemSettingDataComponent",
            "CIM_ResourceAllocationSettingData",
        )?;
        let by_id: HashMap<&str, &Instance> = parts.iter().filter_map(|p| Some((p.text("InstanceID")?, p))).collect();
        let parent = |i: &Instance| {
            i.text("Parent").and_then(instance_id_of_path).and_then(|id| by_id.get(id.as_str()).copied())
        };
        let mut vcpus = 0;
        let mut memory_mb = 0;
        let mut disks = Vec::new();
        let mut nics = Vec::new();
        let switches: HashMap<String, String> = self
            .client
            .query("SELECT * FROM Msvm_VirtualEthernetSwitch")?
            .into_iter()
            .filter_map(|s| Some((s.text("Name")?.to_ascii_uppercase(), s.text("ElementName")?.to_owned())))
            .collect();
        // Controllers of each type, in the order the host lists them.
        let mut ctrl_order: Vec<(u64, String)> = Vec::new();
        for p in &parts {
            match p.class.as_str() {
                "Msvm_ProcessorSettingData" => vcpus = p.u64("VirtualQuantity").unwrap_or(0) as u32,
                "Msvm_MemorySettingData" => memory_mb = p.u64("VirtualQuantity").unwrap_or(0),
                "Msvm_ResourceAllocationSettingData" if matches!(p.u64("ResourceType"), Some(5 | 6)) => {
                    ctrl_order.push((
                        p.u64("ResourceType").unwrap_or(0),
                        p.text("InstanceID").unwrap_or_default().to_owned(),
                    ));
                }
                "Msvm_SyntheticEthernetPortSettingData" | "Msvm_EmulatedEthernetPortSettingData" => {
                    let port_id = p.text("InstanceID").unwrap_or_default();
                    let conn = parts.iter().find(|c| {
                        c.class == "Msvm_EthernetPortAllocationSettingData"
                            && c.text("Parent").and_then(instance_id_of_path).as_deref() == Some(port_id)
                    });
                    let switch = conn
                        .and_then(|c| c.texts("HostResource").first().copied().and_then(name_of_path))
                        .map(|n| switches.get(&n.to_ascii_uppercase()).cloned().unwrap_or(n));
                    nics.push(HvNicConfig { mac: p.text("Address").unwrap_or_default().to_owned(), switch });
                }
                _ => {}
            }
        }
        for p in
            parts.iter().filter(|p| p.class == "Msvm_StorageAllocationSettingData" && p.u64("ResourceType") == Some(31))
        {
            let Some(path) = p.texts("HostResource").first().map(|s| (*s).to_owned()) else { continue };
            let drive = parent(p);
            let ctrl = drive.and_then(parent);
            let location = drive.and_then(|d| d.u64("AddressOnParent")).unwrap_or(0) as u32;
            let (kind, index) = match ctrl {
                Some(c) => {
                    let ty = c.u64("ResourceType").unwrap_or(6);
                    let id = c.text("InstanceID").unwrap_or_default();
                    let idx = c.u64("Address").unwrap_or_else(|| {
                        ctrl_order.iter().filter(|(t, _)| *t == ty).position(|(_, i)| i == id).unwrap_or(0) as u64
                    });
                    (if ty == 5 { "ide" } else { "scsi" }, idx as u32)
                }
                None => ("scsi", 0),
            };
            disks.push(HvDiskConfig { position: 0, controller: kind.into(), controller_index: index, location, path });
        }
        disks.sort_by(|a, b| {
            (a.controller != "ide", a.controller_index, a.location).cmp(&(
                b.controller != "ide",
                b.controller_index,
                b.location,
            ))
        });
        for (i, d) in disks.iter_mut().enumerate() {
            d.position = i as u32;
        }
        let generation = vssd
            .text("VirtualSystemSubType")
            .and_then(|s| s.rsplit(':').next())
            .and_then(|g| g.parse().ok())
            .unwrap_or(1);
        Ok(HvVmConfig {
            id: vm.text("Name").unwrap_or_default().to_owned(),
            name: vm.text("ElementName").unwrap_or_default().to_owned(),
            generation,
            secure_boot: vssd.text("SecureBootEnabled").is_some_and(|s| s.eq_ignore_ascii_case("true")),
            version: vssd.text("Version").unwrap_or_default().to_owned(),
            vcpus,
            memory_mb,
            running: vm.u64("EnabledState") == Some(2),
            disks,
            nics,
        })
    }

    pub(crate) fn realized(&self, vm: &Instance) -> Result<Instance> {
        self.client
            .associators(&HyperVHost::epr(vm)?, "Msvm_SettingsDefineState", "Msvm_VirtualSystemSettingData")?
            .into_iter()
            .next()
            .ok_or_else(|| Error::InvalidArgument(format!("VM {:?} has no settings", vm.text("ElementName"))))
    }

    /// Every VM with its configuration.
    ///
    /// # Errors
    /// WS-Man errors.
    pub fn vms(&self) -> Result<Vec<HvVmConfig>> {
        self.vm_instances()?.iter().map(|vm| self.config(vm, &self.realized(vm)?)).collect()
    }

    pub(crate) fn service(&self, class: &str) -> Result<Epr> {
        self.client
            .query(&format!("SELECT * FROM {class}"))?
            .into_iter()
            .next()
            .and_then(|i| i.epr)
            .ok_or_else(|| Error::InvalidArgument(format!("the host has no {class}")))
    }

    fn reference_points(&self, vm: &Epr) -> Result<Vec<Instance>> {
        self.client.associators(vm, "Msvm_ReferencePointOfVirtualSystem", "Msvm_VirtualSystemReferencePoint")
    }

    /// Takes a recovery checkpoint of `vm` and opens its disks: see the module docs.
    ///
    /// # Errors
    /// WS-Man errors, a failed checkpoint job, an SMB or VHDX error opening a
    /// disk (the checkpoint is destroyed again), quiescing required but the
    /// checkpoint crash-consistent.
    pub fn begin_backup(&self, vm: &str, quiesce: Quiesce) -> Result<HyperVBackup<'_>> {
        let vm_i = self.find_vm(vm)?;
        let vm_epr = HyperVHost::epr(&vm_i)?;
        let config = self.config(&vm_i, &self.realized(&vm_i)?)?;
        // Recovery checkpoints already there were left by a backup that did
        // not finish (ours or another product's): reported, not removed.
        let leftovers: Vec<String> = self
            .client
            .associators(&vm_epr, "Msvm_SnapshotOfVirtualSystem", "Msvm_VirtualSystemSettingData")?
            .iter()
            .filter(|s| s.text("VirtualSystemType") == Some("Microsoft:Hyper-V:Snapshot:Recovery"))
            .map(|s| s.text("ElementName").or(s.text("InstanceID")).unwrap_or_default().to_owned())
            .collect();
        let svc = self.service("Msvm_VirtualSystemSnapshotService")?;
        let level = if quiesce == Quiesce::No { "2" } else { "1" };
        let settings = Embedded::new("Msvm_VirtualSystemSnapshotSettingData").prop("ConsistencyLevel", "uint8", level);
        let (out, job) = self.client.invoke(
            &svc,
            "CreateSnapshot",
            &[
                ("AffectedSystem", Arg::Ref(vm_epr.clone())),
                ("SnapshotSettings", Arg::Embedded(settings)),
                ("SnapshotType", Arg::Text("32768".into())),
            ],
            &never,
        )?;
        let snapshot =
            match (out.out.reference("ResultingSnapshot"), out.out.reference("Job").filter(|_| job.is_some())) {
                (Some(s), _) => self.client.get(s)?,
                (None, Some(j)) => self
                    .client
                    .associators(j, "Msvm_AffectedJobElement", "Msvm_VirtualSystemSettingData")?
                    .into_iter()
                    .find(|s| s.text("VirtualSystemType").is_some_and(|t| t.contains("Snapshot")))
                    .ok_or_else(|| Error::Protocol {
                        endpoint: self.client.url().to_owned(),
                        action: "CreateSnapshot".into(),
                        what: "the job names no checkpoint".into(),
                    })?,
                (None, None) => {
                    return Err(Error::Protocol {
                        endpoint: self.client.url().to_owned(),
                        action: "CreateSnapshot".into(),
                        what: "no checkpoint and no job".into(),
                    });
                }
            };
        let mut b = HyperVBackup {
            host: self,
            vm_epr,
            vm: config.to_vm_info(),
            snapshot: HyperVHost::epr(&snapshot)?,
            snapshot_id: snapshot.text("InstanceID").unwrap_or_default().to_owned(),
            consistency: if snapshot.u64("ConsistencyLevel") == Some(1) {
                "application-consistent"
            } else {
                "crash-consistent"
            }
            .into(),
            warnings: Vec::new(),
            disks: Vec::new(),
            done: false,
        };
        if !leftovers.is_empty() {
            b.warnings.push(format!(
                "{} recovery checkpoint(s) of this VM were left by an unfinished backup (remove them on the host): {}",
                leftovers.len(),
                leftovers.join(", ")
            ));
        }
        if quiesce == Quiesce::Required && b.consistency != "application-consistent" {
            return Err(Error::InvalidArgument(format!(
                "VM {:?}: the checkpoint is crash-consistent (VSS in the guest did not take part)",
                config.name
            )));
        }
        if quiesce == Quiesce::IfSupported && b.consistency != "application-consistent" {
            b.warnings.push("the checkpoint is crash-consistent: VSS in the guest did not take part".into());
        }
        let created = snapshot.text("CreationTime").unwrap_or_default().to_owned();
        let snap_config = self.config(&vm_i, &snapshot)?;
        for d in &snap_config.disks {
            let (share_name, path) = share_path(&d.path).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "disk {} is at {}, not on a drive's administrative share",
                    d.position, d.path
                ))
            })?;
            let share = self.share(&share_name)?;
            let src = VhdxSource::open_in(&path, &*share, &OpenOptions::default())
                .map_err(|source| Error::Disk { disk: d.path.clone(), source })?;
            let token = Token {
                vm: config.id.clone(),
                disk: d.position,
                checkpoint: b.snapshot_id.clone(),
                created: created.clone(),
                path: d.path.clone(),
            };
            b.disks.push(HvDisk {
                host: self,
                vm_epr: b.vm_epr.clone(),
                src,
                position: d.position,
                path: d.path.clone(),
                label: format!("{} disk {} ({})", config.name, d.position, d.path),
                token,
            });
        }
        Ok(b)
    }
}

/// A disk's change token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Token {
    vm: String,
    disk: u32,
    checkpoint: String,
    created: String,
    path: String,
}

/// A checkpoint's disk, read over SMB.
pub struct HvDisk<'a> {
    host: &'a HyperVHost,
    vm_epr: Epr,
    src: VhdxSource,
    position: u32,
    path: String,
    label: String,
    token: Token,
}

impl std::fmt::Debug for HvDisk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HvDisk").field("label", &self.label).finish_non_exhaustive()
    }
}

impl HvDisk<'_> {
    /// The ranges changed since the backup that recorded `since`.
    fn changed(&self, since: &[u8]) -> Result<Vec<Range<u64>>> {
        let prev: Token = serde_json::from_slice(since)
            .map_err(|e| Error::InvalidArgument(format!("not a Hyper-V change token: {e}")))?;
        if !prev.vm.eq_ignore_ascii_case(&self.token.vm) || prev.disk != self.position {
            return Err(Error::InvalidArgument(format!(
                "the previous version's disk is disk {} of VM {}, not this one",
                prev.disk, prev.vm
            )));
        }
        let points: Vec<Instance> = self
            .host
            .reference_points(&self.vm_epr)?
            .into_iter()
            .filter(|r| r.text("CreationTime").is_some_and(|t| t >= prev.created.as_str()))
            .collect();
        let rp = match points.as_slice() {
            [one] => one,
            [] => {
                return Err(Error::InvalidArgument(
                    "no reference point since the previous backup (removed, or its commit failed)".into(),
                ));
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{} reference points since the previous backup: which one is ours is unknown",
                    points.len()
                )));
            }
        };
        let ids = rp.texts("ResilientChangeTrackingIdentifiers");
        let rct = ids.get(self.position as usize).ok_or_else(|| {
            Error::InvalidArgument(format!("the reference point has no RCT id for disk {}", self.position))
        })?;
        let svc = self.host.service("Msvm_ImageManagementService")?;
        let size = self.src.size();
        let mut out = Vec::new();
        let mut at = 0u64;
        while at < size {
            let (o, _) = self.host.client.invoke(
                &svc,
                "GetVirtualDiskChanges",
                &[
                    ("Path", Arg::Text(self.path.clone())),
                    ("LimitId", Arg::Text((*rct).to_owned())),
                    ("TargetSnapshotId", Arg::Text(String::new())),
                    ("ByteOffset", Arg::Text(at.to_string())),
                    ("ByteLength", Arg::Text((size - at).to_string())),
                ],
                &never,
            )?;
            let processed = o.out.u64("ProcessedByteLength").unwrap_or(0);
            if processed == 0 || processed > size - at {
                return Err(Error::Protocol {
                    endpoint: self.host.client.url().to_owned(),
                    action: "GetVirtualDiskChanges".into(),
                    what: format!("processed {processed} bytes of {} asked", size - at),
                });
            }
            let offs = o.out.texts("ChangedByteOffsets");
            let lens = o.out.texts("ChangedByteLengths");
            if offs.len() != lens.len() {
                return Err(Error::Protocol {
                    endpoint: self.host.client.url().to_owned(),
                    action: "GetVirtualDiskChanges".into(),
                    what: "as many offsets as lengths expected".into(),
                });
            }
            for (o, l) in offs.iter().zip(&lens) {
                let (o, l): (u64, u64) = (o.trim().parse().unwrap_or(u64::MAX), l.trim().parse().unwrap_or(u64::MAX));
                let end = o.checked_add(l).filter(|e| *e <= size).ok_or_else(|| Error::Protocol {
                    endpoint: self.host.client.url().to_owned(),
                    action: "GetVirtualDiskChanges".into(),
                    what: format!("a changed range {o}+{l} outside the {size}-byte disk"),
                })?;
                out.push(o..end);
            }
            at += processed;
        }
        out.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(out.len());
        for r in out {
            match merged.last_mut() {
                Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
                _ => merged.push(r),
            }
        }
        Ok(merged)
    }
}

impl DiskSource for HvDisk<'_> {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn size(&self) -> u64 {
        self.src.size()
    }
    fn allocated_ranges(&self) -> alike_core::Result<Vec<Range<u64>>> {
        self.src.allocated_ranges()
    }
    fn change_token(&self) -> Option<Vec<u8>> {
        serde_json::to_vec(&self.token).ok()
    }
    fn changed_ranges(&self, since: &[u8]) -> alike_core::Result<Option<Vec<Range<u64>>>> {
        self.changed(since).map(Some).map_err(alike_core::Error::seam)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        self.src.read_at(offset, buf)
    }
}

/// A backup in progress: the checkpoint and its disks.
pub struct HyperVBackup<'a> {
    host: &'a HyperVHost,
    vm_epr: Epr,
    vm: VmInfo,
    snapshot: Epr,
    snapshot_id: String,
    consistency: String,
    warnings: Vec<String>,
    disks: Vec<HvDisk<'a>>,
    done: bool,
}

impl std::fmt::Debug for HyperVBackup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperVBackup")
            .field("vm", &self.vm.name)
            .field("checkpoint", &self.snapshot_id)
            .finish_non_exhaustive()
    }
}

impl HyperVBackup<'_> {
    fn destroy(&mut self) -> Result<()> {
        self.done = true;
        let svc = self.host.service("Msvm_VirtualSystemSnapshotService")?;
        self.host.client.invoke(
            &svc,
            "DestroySnapshot",
            &[("AffectedSnapshot", Arg::Ref(self.snapshot.clone()))],
            &never,
        )?;
        Ok(())
    }

    fn release(&mut self) -> ReleaseReport {
        self.done = true;
        let mut r = ReleaseReport::default();
        let converted = (|| {
            let svc = self.host.service("Msvm_VirtualSystemSnapshotService")?;
            let (out, _) = self.host.client.invoke(
                &svc,
                "ConvertToReferencePoint",
                &[("AffectedSnapshot", Arg::Ref(self.snapshot.clone()))],
                &never,
            )?;
            Ok::<_, Error>(out.out.reference("ResultingReferencePoint").cloned())
        })();
        let kept = match converted {
            Ok(k) => k,
            Err(e) => {
                r.warnings.push(format!("converting checkpoint {} to a reference point: {e}", self.snapshot_id));
                return r;
            }
        };
        let points = match self.host.reference_points(&self.vm_epr) {
            Ok(p) => p,
            Err(e) => {
                r.warnings.push(format!("listing reference points: {e}"));
                return r;
            }
        };
        // The newest reference point is this backup's; older ones are released.
        let newest = kept.clone().or_else(|| {
            points.iter().max_by(|a, b| a.text("CreationTime").cmp(&b.text("CreationTime"))).and_then(|p| p.epr.clone())
        });
        r.kept_snapshot = newest.as_ref().and_then(|e| e.selector("InstanceID")).unwrap_or_default().to_owned();
        let rsvc = self.host.service("Msvm_VirtualSystemReferencePointService");
        for p in points {
            let Some(e) = p.epr.clone() else { continue };
            if newest.as_ref().is_some_and(|n| n.selector("InstanceID") == e.selector("InstanceID")) {
                continue;
            }
            let id = e.selector("InstanceID").unwrap_or_default().to_owned();
            let res = match &rsvc {
                Ok(svc) => self
                    .host
                    .client
                    .invoke(svc, "DestroyReferencePoint", &[("AffectedReferencePoint", Arg::Ref(e))], &never)
                    .map(|_| ()),
                Err(e) => Err(Error::InvalidArgument(e.to_string())),
            };
            match res {
                Ok(()) => r.destroyed_snapshots.push(id),
                Err(e) => r.warnings.push(format!("destroying reference point {id}: {e}")),
            }
        }
        r
    }
}

impl BackupSession for HyperVBackup<'_> {
    fn vm(&self) -> &VmInfo {
        &self.vm
    }
    fn disks(&self) -> Vec<&dyn DiskSource> {
        self.disks.iter().map(|d| d as &dyn DiskSource).collect()
    }
    fn disk_details(&self) -> Vec<SessionDisk> {
        self.disks
            .iter()
            .map(|d| {
                SessionDisk::new(d.position, d.src.size(), "smb")
                    .id("path", d.path.clone())
                    .id("checkpoint", self.snapshot_id.clone())
            })
            .collect()
    }
    fn snapshot_id(&self) -> String {
        self.snapshot_id.clone()
    }
    fn consistency(&self) -> String {
        self.consistency.clone()
    }
    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }
    fn commit(mut self: Box<Self>) -> ReleaseReport {
        self.release()
    }
    fn abort(mut self: Box<Self>) -> alike_core::Result<()> {
        self.destroy().map_err(alike_core::Error::seam)
    }
}

impl Drop for HyperVBackup<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.destroy();
        }
    }
}

impl Hypervisor for HyperVHost {
    fn kind(&self) -> &str {
        "hyperv"
    }

    fn list_vms(&self) -> alike_core::Result<Vec<VmInfo>> {
        Ok(self.vms().map_err(alike_core::Error::seam)?.iter().map(HvVmConfig::to_vm_info).collect())
    }

    fn vm_name(&self, vm: &str) -> alike_core::Result<String> {
        let i = self.find_vm(vm).map_err(alike_core::Error::seam)?;
        Ok(i.text("ElementName").unwrap_or(vm).to_owned())
    }

    fn begin_backup(
        &self,
        vm: &str,
        _previous: &[PreviousDisk],
        opts: &SnapshotOptions,
    ) -> alike_core::Result<Box<dyn BackupSession + '_>> {
        Ok(Box::new(HyperVHost::begin_backup(self, vm, opts.quiesce).map_err(alike_core::Error::seam)?))
    }

    fn create_vm(
        &self,
        config: &VmInfo,
        disks: &[PlannedDisk],
        placement: &Placement,
    ) -> alike_core::Result<Box<dyn RestoreSession + '_>> {
        Ok(Box::new(crate::restore::begin(self, config, disks, placement).map_err(alike_core::Error::seam)?))
    }

    fn existing_disk(&self, disk: &str) -> alike_core::Result<DiskSink<'_>> {
        Err(alike_core::Error::seam(Error::InvalidArgument(format!(
            "restoring into {disk} on a Hyper-V host is not implemented yet"
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wmi_paths() {
        let p = r#"\\HV\root\virtualization\v2:Msvm_ResourceAllocationSettingData.InstanceID="Microsoft:A\\B\\0\\D""#;
        assert_eq!(instance_id_of_path(p).as_deref(), Some(r"Microsoft:A\B\0\D"));
        let s = r#"\\HV\root\virtualization\v2:Msvm_VirtualEthernetSwitch.CreationClassName="Msvm_VirtualEthernetSwitch",Name="AB-1""#;
        assert_eq!(name_of_path(s).as_deref(), Some("AB-1"));
        assert_eq!(instance_id_of_path("x"), None);
    }
}
