//! The simulated host: VMs with their settings and disks, checkpoints,
//! reference points, RCT change logs and jobs, served as the Msvm_ classes
//! of `root\virtualization\v2` (instances and associations are made from
//! this model on each request) and changed by the methods below.
//!
//! Disks are real VHDX/AVHDX chains under the host's `C:` folder
//! (`STATE/C`), which the simulator's Samba shares as `C$`. A checkpoint
//! freezes each disk's top file and gives it a new AVHDX child
//! (`<base>_<GUID>.avhdx`); deleting a checkpoint (or converting it to a
//! reference point) merges that child back into its parent.
//!
//! RCT: each disk has an RCT identity (a GUID) and an epoch; a guest write
//! is logged with the current epoch (rounded out to the RCT block); a
//! checkpoint freezes the epoch and starts the next. An RCT id is
//! `rctX:<guid with ':' for '-'>:<epoch as 8 hex digits>`, and
//! `GetVirtualDiskChanges(path, LimitId)` returns the writes logged after
//! `LimitId`'s epoch, up to the epoch of the file named (the frozen file of
//! a checkpoint, or the live top file).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cim::{Epr, Instance, Value, embedded, is_a, iso8601};
use crate::{Error, disks};

/// WMI method return values (Msvm_ methods and CIM generic codes).
pub(crate) mod rc {
    pub(crate) const OK: u32 = 0;
    pub(crate) const JOB_STARTED: u32 = 4096;
    pub(crate) const FAILED: u32 = 32768;
    pub(crate) const NOT_SUPPORTED: u32 = 32770;
    pub(crate) const INVALID_PARAMETER: u32 = 32773;
    pub(crate) const INVALID_STATE: u32 = 32775;
    pub(crate) const FILE_NOT_FOUND: u32 = 32779;
}

/// A failure of a method: its return value and a description (what the
/// job's `ErrorDescription` says when it fails in a job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MethodError {
    pub(crate) code: u32,
    pub(crate) text: String,
}

pub(crate) fn merr(code: u32, text: impl Into<String>) -> MethodError {
    MethodError { code, text: text.into() }
}

/// Where a VM's disk sits: a controller kind and index, and the location on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) scsi: bool,
    pub(crate) controller: u32,
    pub(crate) location: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Rct {
    pub(crate) guid: String,
    pub(crate) epoch: u32,
    /// (epoch, byte range) of each guest write, rounded out to the RCT block.
    pub(crate) log: Vec<(u32, Range<u64>)>,
}

impl Rct {
    pub(crate) fn id(&self, epoch: u32) -> String {
        format!("rctX:{}:{epoch:08x}", self.guid.replace('-', ":"))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Disk {
    pub(crate) size: u64,
    /// Local paths, base first; the last is the file the VM writes.
    pub(crate) chain: Vec<PathBuf>,
    pub(crate) slot: Slot,
    pub(crate) ctrl_guid: String,
    pub(crate) rct: Rct,
}

#[derive(Debug, Clone)]
pub(crate) struct SnapDisk {
    pub(crate) frozen: PathBuf,
    pub(crate) epoch: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) recovery: bool,
    pub(crate) consistency: u8,
    pub(crate) created: u64,
    pub(crate) parent: Option<String>,
    pub(crate) disks: Vec<SnapDisk>,
}

#[derive(Debug, Clone)]
pub(crate) struct RefPoint {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) consistency: u8,
    pub(crate) created: u64,
    pub(crate) rct_ids: Vec<String>,
    pub(crate) disk_ids: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Nic {
    pub(crate) id: String,
    pub(crate) mac: String,
    pub(crate) switch: Option<String>,
}

/// A storage controller: SCSI or IDE, its index among those of its kind, its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ctrl {
    pub(crate) scsi: bool,
    pub(crate) index: u32,
    pub(crate) guid: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Vm {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) generation: u8,
    pub(crate) vcpus: u32,
    pub(crate) memory_mb: u64,
    pub(crate) running: bool,
    pub(crate) secure_boot: bool,
    /// The guest's integration services take VSS snapshots.
    pub(crate) vss: bool,
    pub(crate) created: u64,
    pub(crate) disks: Vec<Disk>,
    pub(crate) nics: Vec<Nic>,
    pub(crate) snapshots: Vec<Snapshot>,
    pub(crate) refpoints: Vec<RefPoint>,
    /// Controllers made by `DefineSystem` or `AddResourceSettings` (those of
    /// `disks` are listed too, whether here or not).
    pub(crate) controllers: Vec<Ctrl>,
    /// Disk drives with no disk image yet: the slot and its controller's id.
    pub(crate) empty_drives: Vec<(Slot, String)>,
    /// A replica VM (`Msvm_ComputerSystem.ReplicationMode` 2, made so by
    /// `SetAuthorizationEntry`): refuses to start until its relationship is
    /// removed.
    pub(crate) replica: Option<ReplicaEntry>,
}

/// The authorization entry a replica VM was given
/// (`Msvm_ReplicationAuthorizationSettingData`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplicaEntry {
    pub(crate) allowed_primary: String,
    pub(crate) trust_group: String,
    pub(crate) storage: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Switch {
    pub(crate) id: String,
    pub(crate) name: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) job_type: u16,
    pub(crate) started: Instant,
    pub(crate) submitted: u64,
    pub(crate) error: Option<MethodError>,
    pub(crate) affected: Vec<Epr>,
}

/// Tunables of the model.
#[derive(Debug, Clone)]
pub(crate) struct HostConfig {
    pub(crate) job_time: Duration,
    pub(crate) rct_block: u64,
    pub(crate) rct_max_processed: u64,
}

#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) name: String,
    /// The local folder that is the host's `C:\`.
    pub(crate) c_drive: PathBuf,
    pub(crate) vms: Vec<Vm>,
    pub(crate) switches: Vec<Switch>,
    pub(crate) jobs: Vec<Job>,
    pub(crate) cfg: HostConfig,
    /// Injected failures: the next call of the method starts a job that fails so.
    pub(crate) job_failures: Vec<(String, MethodError)>,
    /// The host is a Replica server
    /// (`Msvm_ReplicationServiceSettingData.RecoveryServerEnabled`).
    pub(crate) recovery_server: bool,
}

pub(crate) fn new_guid() -> String {
    let mut b = [0u8; 16];
    // The system's random source; a failure leaves zeroes and the counter below keeps ids unique.
    let _ = alike_core::random_bytes(&mut b);
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    b[12..].iter_mut().zip(n.to_le_bytes()).for_each(|(x, y)| *x ^= y);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn svc(class: &str, name: &str, host: &str) -> Instance {
    Instance::new(class)
        .with("CreationClassName", Value::s(class))
        .with("Name", Value::s(name))
        .with("SystemCreationClassName", Value::s("Msvm_ComputerSystem"))
        .with("SystemName", Value::s(host))
        .with("ElementName", Value::s(name))
        .with("EnabledState", Value::n(2))
        .with("HealthState", Value::n(5))
        .with("Started", Value::Bool(true))
}

/// The services, by class, with their `Name` keys.
pub(crate) const SERVICES: &[(&str, &str)] = &[
    ("Msvm_VirtualSystemManagementService", "vmms"),
    ("Msvm_VirtualSystemSnapshotService", "vssnapsvc"),
    ("Msvm_ImageManagementService", "vhdsvc"),
    ("Msvm_VirtualSystemReferencePointService", "vsrefpointsvc"),
    ("Msvm_ReplicationService", "vmrepsvc"),
];

impl Host {
    /// The host's Windows path for a local file under its `C:` folder.
    pub(crate) fn win_path(&self, local: &Path) -> String {
        let rel = local.strip_prefix(&self.c_drive).unwrap_or(local);
        let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        format!("C:\\{}", parts.join("\\"))
    }

    /// The local file for a Windows path on `C:` (case of the drive and
    /// separators as Windows takes them); `None` outside `C:` or with `..`.
    pub(crate) fn local_path(&self, win: &str) -> Option<PathBuf> {
        let rest = win.strip_prefix("C:\\").or_else(|| win.strip_prefix("c:\\"))?;
        let mut p = self.c_drive.clone();
        for part in rest.split(['\\', '/']).filter(|s| !s.is_empty()) {
            if part == ".." || part == "." {
                return None;
            }
            p.push(part);
        }
        Some(p)
    }

    pub(crate) fn vm(&self, id: &str) -> Option<&Vm> {
        self.vms.iter().find(|v| v.id.eq_ignore_ascii_case(id))
    }

    fn vm_mut(&mut self, id: &str) -> Option<&mut Vm> {
        self.vms.iter_mut().find(|v| v.id.eq_ignore_ascii_case(id))
    }

    pub(crate) fn vm_by_name(&self, name: &str) -> Option<&Vm> {
        self.vms.iter().find(|v| v.name == name)
    }

    fn host_system(&self) -> Instance {
        Instance::new("Msvm_ComputerSystem")
            .with("CreationClassName", Value::s("Msvm_ComputerSystem"))
            .with("Name", Value::s(&self.name))
            .with("ElementName", Value::s(&self.name))
            .with("Caption", Value::s("Hosting Computer System"))
            .with("Description", Value::s("Microsoft Hosting Computer System"))
            .with("EnabledState", Value::n(2))
            .with("HealthState", Value::n(5))
    }

    fn vm_system(vm: &Vm) -> Instance {
        Instance::new("Msvm_ComputerSystem")
            .with("CreationClassName", Value::s("Msvm_ComputerSystem"))
            .with("Name", Value::s(&vm.id))
            .with("ElementName", Value::s(&vm.name))
            .with("Caption", Value::s("Virtual Machine"))
            .with("Description", Value::s("Microsoft Virtual Machine"))
            .with("EnabledState", Value::n(if vm.running { 2 } else { 3 }))
            .with("RequestedState", Value::n(if vm.running { 2 } else { 3 }))
            .with("HealthState", Value::n(5))
            .with("OperationalStatus", Value::Array(vec![Value::n(2)]))
            .with("InstallDate", Value::DateTime(iso8601(vm.created)))
            .with("NumberOfNumaNodes", Value::n(1))
            // ReplicationMode 2: a replica; ReplicationState 1: ready for
            // (waiting for) its initial replication, as `Enable-VMReplication
            // -AsReplica` leaves a VM.
            .with("ReplicationState", Value::n(if vm.replica.is_some() { 1 } else { 0 }))
            .with("ReplicationHealth", Value::n(if vm.replica.is_some() { 1 } else { 0 }))
            .with("ReplicationMode", Value::n(if vm.replica.is_some() { 2 } else { 0 }))
            .with("OnTimeInMilliseconds", Value::n(if vm.running { 3_600_000 } else { 0 }))
    }

    pub(crate) fn vm_epr(vm: &Vm) -> Epr {
        Epr {
            class: "Msvm_ComputerSystem".into(),
            keys: vec![("CreationClassName".into(), "Msvm_ComputerSystem".into()), ("Name".into(), vm.id.clone())],
        }
    }

    fn vssd(&self, vm: &Vm, snap: Option<&Snapshot>) -> Instance {
        let (id, name, ty, created) = match snap {
            None => (vm.id.as_str(), vm.name.clone(), "Microsoft:Hyper-V:System:Realized", vm.created),
            Some(s) => (
                s.id.as_str(),
                s.name.clone(),
                if s.recovery { "Microsoft:Hyper-V:Snapshot:Recovery" } else { "Microsoft:Hyper-V:Snapshot:Realized" },
                s.created,
            ),
        };
        let parent =
            snap.and_then(|s| s.parent.as_ref()).map_or(Value::Null, |p| Value::s(vssd_epr(p).wmi_path(&self.name)));
        Instance::new("Msvm_VirtualSystemSettingData")
            .with("InstanceID", Value::s(format!("Microsoft:{id}")))
            .with("ElementName", Value::s(name))
            .with("Caption", Value::s(if snap.is_some() { "Snapshot" } else { "Virtual Machine Settings" }))
            .with("VirtualSystemIdentifier", Value::s(&vm.id))
            .with("VirtualSystemType", Value::s(ty))
            .with("VirtualSystemSubType", Value::s(format!("Microsoft:Hyper-V:SubType:{}", vm.generation)))
            .with("Version", Value::s("9.0"))
            .with("ConfigurationDataRoot", Value::s(format!("C:\\Hyper-V\\{}", vm.name)))
            .with("SecureBootEnabled", Value::Bool(vm.secure_boot))
            .with("CreationTime", Value::DateTime(iso8601(created)))
            .with("Parent", parent)
            .with("IsSaved", Value::Bool(false))
            .with("ConsistencyLevel", snap.map_or(Value::Null, |s| Value::n(s.consistency)))
    }

    /// The resource settings of a VM (or of one of its checkpoints).
    fn rasds(&self, vm: &Vm, snap: Option<&Snapshot>) -> Vec<Instance> {
        let owner = snap.map_or(vm.id.as_str(), |s| s.id.as_str());
        let mut out = Vec::new();
        out.push(
            Instance::new("Msvm_ProcessorSettingData")
                .with("InstanceID", Value::s(format!("Microsoft:{owner}\\b637f346-6a0e-4dec-af52-bd70cb80a21d\\0")))
                .with("ElementName", Value::s("Processor"))
                .with("ResourceType", Value::n(3))
                .with("ResourceSubType", Value::s("Microsoft:Hyper-V:Processor"))
                .with("VirtualQuantity", Value::n(vm.vcpus)),
        );
        out.push(
            Instance::new("Msvm_MemorySettingData")
                .with("InstanceID", Value::s(format!("Microsoft:{owner}\\4764334d-e001-4176-82ee-5594ec9b530e")))
                .with("ElementName", Value::s("Memory"))
                .with("ResourceType", Value::n(4))
                .with("ResourceSubType", Value::s("Microsoft:Hyper-V:Memory"))
                .with("AllocationUnits", Value::s("byte * 2^20"))
                .with("VirtualQuantity", Value::n(vm.memory_mb))
                .with("DynamicMemoryEnabled", Value::Bool(false)),
        );
        let mut ctrls: Vec<(bool, u32, String)> =
            vm.controllers.iter().map(|c| (c.scsi, c.index, c.guid.clone())).collect();
        for d in &vm.disks {
            if !ctrls.iter().any(|c| c.0 == d.slot.scsi && c.1 == d.slot.controller) {
                ctrls.push((d.slot.scsi, d.slot.controller, d.ctrl_guid.clone()));
            }
        }
        for (scsi, idx, guid) in &ctrls {
            out.push(
                Instance::new("Msvm_ResourceAllocationSettingData")
                    .with("InstanceID", Value::s(format!("Microsoft:{owner}\\{guid}")))
                    .with("ElementName", Value::s(if *scsi { "SCSI Controller" } else { "IDE Controller" }))
                    .with("ResourceType", Value::n(if *scsi { 6 } else { 5 }))
                    .with(
                        "ResourceSubType",
                        Value::s(if *scsi {
                            "Microsoft:Hyper-V:Synthetic SCSI Controller"
                        } else {
                            "Microsoft:Hyper-V:Emulated IDE Controller"
                        }),
                    )
                    .with("Address", Value::s(idx.to_string())),
            );
        }
        for (i, d) in vm.disks.iter().enumerate() {
            let ctrl = format!("Microsoft:{owner}\\{}", d.ctrl_guid);
            let drive = format!("{ctrl}\\{}\\{}\\D", d.slot.controller, d.slot.location);
            let file = match snap {
                None => d.chain.last().cloned().unwrap_or_default(),
                Some(s) => s.disks.get(i).map(|x| x.frozen.clone()).unwrap_or_default(),
            };
            let path_of = |id: &str, class: &str| {
                Epr { class: class.into(), keys: vec![("InstanceID".into(), id.to_owned())] }.wmi_path(&self.name)
            };
            out.push(
                Instance::new("Msvm_ResourceAllocationSettingData")
                    .with("InstanceID", Value::s(&drive))
                    .with("ElementName", Value::s("Hard Drive"))
                    .with("ResourceType", Value::n(17))
                    .with("ResourceSubType", Value::s("Microsoft:Hyper-V:Synthetic Disk Drive"))
                    .with("Parent", Value::s(path_of(&ctrl, "Msvm_ResourceAllocationSettingData")))
                    .with("AddressOnParent", Value::s(d.slot.location.to_string())),
            );
            out.push(
                Instance::new("Msvm_StorageAllocationSettingData")
                    .with("InstanceID", Value::s(format!("{ctrl}\\{}\\{}\\L", d.slot.controller, d.slot.location)))
                    .with("ElementName", Value::s("Hard Disk Image"))
                    .with("ResourceType", Value::n(31))
                    .with("ResourceSubType", Value::s("Microsoft:Hyper-V:Virtual Hard Disk"))
                    .with("Parent", Value::s(path_of(&drive, "Msvm_ResourceAllocationSettingData")))
                    .with("HostResource", Value::strs(&[self.win_path(&file)]))
                    .with("Address", Value::Null)
                    .with("AddressOnParent", Value::Null),
            );
        }
        for (slot, guid) in &vm.empty_drives {
            let ctrl = format!("Microsoft:{owner}\\{guid}");
            out.push(
                Instance::new("Msvm_ResourceAllocationSettingData")
                    .with("InstanceID", Value::s(format!("{ctrl}\\{}\\{}\\D", slot.controller, slot.location)))
                    .with("ElementName", Value::s("Hard Drive"))
                    .with("ResourceType", Value::n(17))
                    .with("ResourceSubType", Value::s("Microsoft:Hyper-V:Synthetic Disk Drive"))
                    .with(
                        "Parent",
                        Value::s(
                            Epr {
                                class: "Msvm_ResourceAllocationSettingData".into(),
                                keys: vec![("InstanceID".into(), ctrl.clone())],
                            }
                            .wmi_path(&self.name),
                        ),
                    )
                    .with("AddressOnParent", Value::s(slot.location.to_string())),
            );
        }
        for nic in &vm.nics {
            let port = format!("Microsoft:{owner}\\{}", nic.id);
            out.push(
                Instance::new("Msvm_SyntheticEthernetPortSettingData")
                    .with("InstanceID", Value::s(&port))
                    .with("ElementName", Value::s("Network Adapter"))
                    .with("ResourceType", Value::n(10))
                    .with("ResourceSubType", Value::s("Microsoft:Hyper-V:Synthetic Ethernet Port"))
                    .with("Address", Value::s(&nic.mac))
                    .with("StaticMacAddress", Value::Bool(true)),
            );
            let sw = nic.switch.as_ref().and_then(|s| self.switches.iter().find(|x| &x.id == s));
            out.push(
                Instance::new("Msvm_EthernetPortAllocationSettingData")
                    .with("InstanceID", Value::s(format!("{port}\\C")))
                    .with("ElementName", Value::s("Dynamic Ethernet Switch Port"))
                    .with("ResourceType", Value::n(33))
                    .with("ResourceSubType", Value::s("Microsoft:Hyper-V:Ethernet Connection"))
                    .with(
                        "Parent",
                        Value::s(
                            Epr {
                                class: "Msvm_SyntheticEthernetPortSettingData".into(),
                                keys: vec![("InstanceID".into(), port.clone())],
                            }
                            .wmi_path(&self.name),
                        ),
                    )
                    .with(
                        "HostResource",
                        sw.map_or(Value::Array(vec![]), |s| Value::strs(&[switch_epr(s).wmi_path(&self.name)])),
                    )
                    .with("EnabledState", Value::n(2)),
            );
        }
        out
    }

    fn job_instance(&self, j: &Job) -> Instance {
        let done = j.started.elapsed() >= self.cfg.job_time;
        let (state, pct, code, desc) = match (&j.error, done) {
            (_, false) => (4, 50, 0, String::new()),
            (None, true) => (7, 100, 0, String::new()),
            (Some(e), true) => (10, 100, e.code, e.text.clone()),
        };
        Instance::new("Msvm_ConcreteJob")
            .with("InstanceID", Value::s(&j.id))
            .with("Caption", Value::s(&j.name))
            .with("Description", Value::s(&j.name))
            .with("ElementName", Value::s(&j.name))
            .with("JobType", Value::n(j.job_type))
            .with("JobState", Value::n(state))
            .with("PercentComplete", Value::n(pct))
            .with("ErrorCode", Value::n(code))
            .with("ErrorDescription", if desc.is_empty() { Value::Null } else { Value::s(&desc) })
            .with("ErrorSummaryDescription", if desc.is_empty() { Value::Null } else { Value::s(&desc) })
            .with("TimeSubmitted", Value::DateTime(iso8601(j.submitted)))
            .with("Cancellable", Value::Bool(false))
            .with("DeleteOnCompletion", Value::Bool(false))
    }

    fn refpoint_instance(vm: &Vm, r: &RefPoint) -> Instance {
        Instance::new("Msvm_VirtualSystemReferencePoint")
            .with("InstanceID", Value::s(format!("Microsoft:{}", r.id)))
            .with("ElementName", Value::s(&r.name))
            .with("ReferencePointType", Value::n(1))
            .with("ConsistencyLevel", Value::n(r.consistency))
            .with("VirtualSystemIdentifier", Value::s(&vm.id))
            .with("HasAssociatedData", Value::Bool(false))
            .with("CreationTime", Value::DateTime(iso8601(r.created)))
            .with("ResilientChangeTrackingIdentifiers", Value::strs(&r.rct_ids))
            .with("VirtualDiskIdentifiers", Value::strs(&r.disk_ids))
    }

    /// Every instance the host serves.
    pub(crate) fn instances(&self) -> Vec<Instance> {
        let mut out = vec![self.host_system()];
        for (class, name) in SERVICES {
            out.push(svc(class, name, &self.name));
        }
        out.push(
            Instance::new("Msvm_ReplicationServiceSettingData")
                .with("InstanceID", Value::s("Microsoft:ReplicationServiceSettingData"))
                .with("ElementName", Value::s("Replication Service Settings"))
                .with("RecoveryServerEnabled", Value::Bool(self.recovery_server))
                .with("AllowedAuthenticationType", Value::n(if self.recovery_server { 1 } else { 0 }))
                .with("HttpPort", Value::n(80))
                .with("HttpsPort", Value::n(443)),
        );
        for s in &self.switches {
            out.push(
                Instance::new("Msvm_VirtualEthernetSwitch")
                    .with("CreationClassName", Value::s("Msvm_VirtualEthernetSwitch"))
                    .with("Name", Value::s(&s.id))
                    .with("ElementName", Value::s(&s.name))
                    .with("EnabledState", Value::n(2)),
            );
        }
        for vm in &self.vms {
            out.push(Host::vm_system(vm));
            out.push(self.vssd(vm, None));
            out.extend(self.rasds(vm, None));
            for s in &vm.snapshots {
                out.push(self.vssd(vm, Some(s)));
                out.extend(self.rasds(vm, Some(s)));
            }
            for r in &vm.refpoints {
                out.push(Host::refpoint_instance(vm, r));
            }
        }
        for j in &self.jobs {
            out.push(self.job_instance(j));
        }
        out
    }

    /// Every association: (class, role A, end A, role B, end B).
    pub(crate) fn associations(&self) -> Vec<(&'static str, &'static str, Epr, &'static str, Epr)> {
        let mut out = Vec::new();
        let host = self.host_system().epr();
        for (class, name) in SERVICES {
            out.push((
                "Msvm_HostedService",
                "Antecedent",
                host.clone(),
                "Dependent",
                svc(class, name, &self.name).epr(),
            ));
        }
        for vm in &self.vms {
            let sys = Host::vm_epr(vm);
            let realized = self.vssd(vm, None).epr();
            out.push(("Msvm_SettingsDefineState", "ManagedElement", sys.clone(), "SettingData", realized.clone()));
            for r in self.rasds(vm, None) {
                out.push((
                    "Msvm_VirtualSystemSettingDataComponent",
                    "GroupComponent",
                    realized.clone(),
                    "PartComponent",
                    r.epr(),
                ));
            }
            for s in &vm.snapshots {
                let e = self.vssd(vm, Some(s)).epr();
                out.push(("Msvm_SnapshotOfVirtualSystem", "Antecedent", sys.clone(), "Dependent", e.clone()));
                for r in self.rasds(vm, Some(s)) {
                    out.push((
                        "Msvm_VirtualSystemSettingDataComponent",
                        "GroupComponent",
                        e.clone(),
                        "PartComponent",
                        r.epr(),
                    ));
                }
            }
            if let Some(last) = vm.snapshots.last() {
                out.push((
                    "Msvm_MostCurrentSnapshotInBranch",
                    "Antecedent",
                    sys.clone(),
                    "Dependent",
                    self.vssd(vm, Some(last)).epr(),
                ));
            }
            for r in &vm.refpoints {
                out.push((
                    "Msvm_ReferencePointOfVirtualSystem",
                    "Antecedent",
                    sys.clone(),
                    "Dependent",
                    Host::refpoint_instance(vm, r).epr(),
                ));
            }
            out.push(("Msvm_HostedDependency", "Antecedent", host.clone(), "Dependent", sys));
        }
        for j in &self.jobs {
            let je = Epr { class: "Msvm_ConcreteJob".into(), keys: vec![("InstanceID".into(), j.id.clone())] };
            for a in &j.affected {
                out.push(("Msvm_AffectedJobElement", "AffectingElement", je.clone(), "AffectedElement", a.clone()));
            }
        }
        out
    }

    /// `ASSOCIATORS OF {object}` with the usual qualifiers.
    pub(crate) fn associators(
        &self,
        object: &Epr,
        assoc_class: Option<&str>,
        result_class: Option<&str>,
        role: Option<&str>,
        result_role: Option<&str>,
    ) -> Vec<Instance> {
        let all = self.instances();
        let mut out: Vec<Instance> = Vec::new();
        for (class, ra, a, rb, b) in self.associations() {
            if assoc_class.is_some_and(|c| !is_a(class, c) && !class.eq_ignore_ascii_case(c)) {
                continue;
            }
            for (my_role, me, other_role, other) in [(ra, &a, rb, &b), (rb, &b, ra, &a)] {
                if !me.matches(object) || role.is_some_and(|r| !r.eq_ignore_ascii_case(my_role)) {
                    continue;
                }
                if result_role.is_some_and(|r| !r.eq_ignore_ascii_case(other_role)) {
                    continue;
                }
                if let Some(i) = all.iter().find(|i| i.epr().matches(other)) {
                    if result_class.is_none_or(|c| is_a(&i.class, c)) && !out.contains(i) {
                        out.push(i.clone());
                    }
                }
            }
        }
        out
    }

    pub(crate) fn job(&mut self, name: &str, job_type: u16, error: Option<MethodError>, affected: Vec<Epr>) -> Epr {
        let id = new_guid();
        self.jobs.push(Job {
            id: id.clone(),
            name: name.into(),
            job_type,
            started: Instant::now(),
            submitted: now(),
            error,
            affected,
        });
        // Jobs are kept a while, as WMI keeps finished jobs; bounded.
        if self.jobs.len() > 256 {
            self.jobs.remove(0);
        }
        Epr { class: "Msvm_ConcreteJob".into(), keys: vec![("InstanceID".into(), id)] }
    }

    /// The failure injected for the next call of `method`, if any.
    pub(crate) fn take_job_failure(&mut self, method: &str) -> Option<MethodError> {
        let i = self.job_failures.iter().position(|(m, _)| m.eq_ignore_ascii_case(method))?;
        Some(self.job_failures.remove(i).1)
    }

    /// A job that will end in failure (state 10, `Exception`) with `err`.
    pub(crate) fn failed_job(&mut self, method: &str, err: MethodError) -> Epr {
        self.job(method, 0, Some(err), vec![])
    }

    /// Finds a VM and checkpoint by a reference to its settings.
    fn find_snapshot(&self, r: &Epr) -> Option<(usize, usize)> {
        for (vi, vm) in self.vms.iter().enumerate() {
            for (si, s) in vm.snapshots.iter().enumerate() {
                if self.vssd(vm, Some(s)).epr().matches(r) {
                    return Some((vi, si));
                }
            }
        }
        None
    }

    /// `Msvm_VirtualSystemSnapshotService.CreateSnapshot`: returns the job.
    pub(crate) fn create_snapshot(&mut self, system: &Epr, settings: &str, kind: u16) -> Result<Epr, MethodError> {
        let vi = self
            .vms
            .iter()
            .position(|vm| Host::vm_epr(vm).matches(system))
            .ok_or_else(|| merr(rc::INVALID_PARAMETER, "The virtual machine was not found"))?;
        if kind != 2 && kind != 32768 {
            return Err(merr(rc::NOT_SUPPORTED, format!("snapshot type {kind} is not supported")));
        }
        let mut asked = 2u8;
        if !settings.trim().is_empty() {
            let (class, props) = crate::cim::parse_embedded(settings)
                .ok_or_else(|| merr(rc::INVALID_PARAMETER, "SnapshotSettings is not an embedded instance"))?;
            if class != "Msvm_VirtualSystemSnapshotSettingData" {
                return Err(merr(rc::INVALID_PARAMETER, format!("SnapshotSettings is a {class}")));
            }
            if let Some((_, v)) = props.iter().find(|(n, _)| n == "ConsistencyLevel") {
                asked = v.first().and_then(|x| x.parse().ok()).unwrap_or(2);
            }
        }
        let vm = &self.vms[vi];
        // Application consistency needs a running guest with VSS; a recovery checkpoint falls back to crash consistency.
        let consistency = if asked == 1 && vm.running && vm.vss { 1 } else { 2 };
        let sid = new_guid();
        let mut snap_disks = Vec::new();
        let vm = &mut self.vms[vi];
        for d in &mut vm.disks {
            let frozen = d.chain.last().cloned().unwrap_or_default();
            let stem = d.chain[0].file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let child = frozen.with_file_name(format!("{stem}_{sid}.avhdx"));
            if let Err(e) = disks::create_child(&child, &frozen) {
                return Err(merr(rc::FAILED, e.to_string()));
            }
            d.chain.push(child);
            snap_disks.push(SnapDisk { frozen, epoch: d.rct.epoch });
            d.rct.epoch += 1;
        }
        let created = now();
        let name = format!("{} - ({})", vm.name, iso8601(created).replace('T', " ").trim_end_matches('Z'));
        let parent = vm.snapshots.last().map(|s| s.id.clone());
        vm.snapshots.push(Snapshot {
            id: sid.clone(),
            name,
            recovery: kind == 32768,
            consistency,
            created,
            parent,
            disks: snap_disks,
        });
        let vm_epr = Host::vm_epr(&self.vms[vi]);
        Ok(self.job("Creating checkpoint", 70, None, vec![vm_epr, vssd_epr(&sid)]))
    }

    /// Removes the newest checkpoint `(vi, si)`, merging its AVHDX children.
    fn remove_snapshot(&mut self, vi: usize, si: usize) -> Result<Snapshot, MethodError> {
        let vm = &mut self.vms[vi];
        if si + 1 != vm.snapshots.len() {
            return Err(merr(rc::INVALID_STATE, "only the newest checkpoint can be removed in this simulator"));
        }
        for d in &mut vm.disks {
            disks::merge_top(&mut d.chain).map_err(|e| merr(rc::FAILED, e.to_string()))?;
        }
        Ok(vm.snapshots.remove(si))
    }

    /// `DestroySnapshot`.
    pub(crate) fn destroy_snapshot(&mut self, snap: &Epr) -> Result<Epr, MethodError> {
        let (vi, si) =
            self.find_snapshot(snap).ok_or_else(|| merr(rc::INVALID_PARAMETER, "The checkpoint was not found"))?;
        self.remove_snapshot(vi, si)?;
        let vm = Host::vm_epr(&self.vms[vi]);
        Ok(self.job("Deleting checkpoint", 71, None, vec![vm]))
    }

    /// `ConvertToReferencePoint`: the job and the reference point.
    pub(crate) fn convert_to_reference_point(&mut self, snap: &Epr) -> Result<(Epr, Epr), MethodError> {
        let (vi, si) =
            self.find_snapshot(snap).ok_or_else(|| merr(rc::INVALID_PARAMETER, "The checkpoint was not found"))?;
        if !self.vms[vi].snapshots[si].recovery {
            return Err(merr(rc::INVALID_PARAMETER, "Only recovery checkpoints can be converted to reference points"));
        }
        let s = self.remove_snapshot(vi, si)?;
        let vm = &mut self.vms[vi];
        let rct_ids = vm.disks.iter().zip(&s.disks).map(|(d, sd)| d.rct.id(sd.epoch)).collect();
        let disk_ids = vm.disks.iter().map(|d| d.rct.guid.clone()).collect();
        let r = RefPoint {
            id: new_guid(),
            name: format!("{} - reference point", vm.name),
            consistency: s.consistency,
            created: now(),
            rct_ids,
            disk_ids,
        };
        let rid = r.id.clone();
        vm.refpoints.push(r);
        let re = Epr {
            class: "Msvm_VirtualSystemReferencePoint".into(),
            keys: vec![("InstanceID".into(), format!("Microsoft:{rid}"))],
        };
        let vm_epr = Host::vm_epr(&self.vms[vi]);
        let job = self.job("Converting checkpoint to reference point", 72, None, vec![vm_epr, re.clone()]);
        Ok((job, re))
    }

    /// `Msvm_VirtualSystemReferencePointService.DestroyReferencePoint`.
    pub(crate) fn destroy_reference_point(&mut self, r: &Epr) -> Result<Epr, MethodError> {
        for vi in 0..self.vms.len() {
            let vm = &self.vms[vi];
            if let Some(ri) = vm.refpoints.iter().position(|x| Host::refpoint_instance(vm, x).epr().matches(r)) {
                self.vms[vi].refpoints.remove(ri);
                let vm_epr = Host::vm_epr(&self.vms[vi]);
                return Ok(self.job("Destroying reference point", 73, None, vec![vm_epr]));
            }
        }
        Err(merr(rc::INVALID_PARAMETER, "The reference point was not found"))
    }

    /// `Msvm_ImageManagementService.GetVirtualDiskChanges`: processed length and changed ranges.
    pub(crate) fn virtual_disk_changes(
        &self,
        path: &str,
        limit_id: &str,
        offset: u64,
        length: u64,
    ) -> Result<(u64, Vec<Range<u64>>), MethodError> {
        let local = self
            .local_path(path)
            .ok_or_else(|| merr(rc::FILE_NOT_FOUND, format!("The system cannot find the file {path}")))?;
        let mut found = None;
        for vm in &self.vms {
            for (di, d) in vm.disks.iter().enumerate() {
                if d.chain.last() == Some(&local) {
                    found = Some((d, d.rct.epoch));
                }
                for s in &vm.snapshots {
                    if s.disks.get(di).is_some_and(|x| x.frozen == local) {
                        found = Some((d, s.disks[di].epoch));
                    }
                }
            }
        }
        let (disk, end) =
            found.ok_or_else(|| merr(rc::FILE_NOT_FOUND, format!("The system cannot find the file {path}")))?;
        let prefix = format!("rctX:{}:", disk.rct.guid.replace('-', ":"));
        let since = limit_id
            .strip_prefix(&prefix)
            .and_then(|e| u32::from_str_radix(e, 16).ok())
            .filter(|e| *e <= end)
            .ok_or_else(|| {
                merr(
                    rc::INVALID_PARAMETER,
                    format!("The change tracking identifier '{limit_id}' is not valid for {path}"),
                )
            })?;
        if offset.checked_add(length).is_none_or(|e| e > disk.size) {
            return Err(merr(rc::INVALID_PARAMETER, "The requested range is outside the virtual disk"));
        }
        let processed = length.min(self.cfg.rct_max_processed);
        let window = offset..offset + processed;
        let ranges = disks::union(
            disk.rct
                .log
                .iter()
                .filter(|(e, _)| *e > since && *e <= end)
                .map(|(_, r)| r.start.max(window.start)..r.end.min(window.end))
                .collect(),
        );
        Ok((processed, ranges))
    }

    /// A guest write to a VM's disk (the test API): the data and the RCT log.
    pub(crate) fn guest_write(&mut self, vm: &str, disk: usize, writes: &[(u64, Vec<u8>)]) -> Result<(), Error> {
        let block = self.cfg.rct_block;
        let v = self.vm_mut(vm).ok_or_else(|| Error::NotFound(format!("VM {vm}")))?;
        let d = v.disks.get_mut(disk).ok_or_else(|| Error::NotFound(format!("disk {disk} of VM {vm}")))?;
        for (off, data) in writes {
            if off.checked_add(data.len() as u64).is_none_or(|e| e > d.size) {
                return Err(Error::NotFound(format!("offset {off}+{} past the end of disk {disk}", data.len())));
            }
        }
        disks::guest_write(&d.chain, writes)?;
        for (off, data) in writes {
            let start = off / block * block;
            let end = (off + data.len() as u64).div_ceil(block) * block;
            d.rct.log.push((d.rct.epoch, start..end.min(d.size)));
        }
        Ok(())
    }

    /// Forgets a disk's change tracking (what a resize, or RCT turned off and
    /// on, does on a host): every earlier RCT id becomes invalid.
    pub(crate) fn reset_rct(&mut self, vm: &str, disk: usize) -> Result<(), Error> {
        let v = self.vm_mut(vm).ok_or_else(|| Error::NotFound(format!("VM {vm}")))?;
        let d = v.disks.get_mut(disk).ok_or_else(|| Error::NotFound(format!("disk {disk} of VM {vm}")))?;
        d.rct = Rct { guid: new_guid(), epoch: 1, log: Vec::new() };
        Ok(())
    }

    /// The snapshot-settings instance a client would send, for tests.
    pub(crate) fn snapshot_settings(consistency: u8) -> String {
        embedded(
            &Instance::new("Msvm_VirtualSystemSnapshotSettingData").with("ConsistencyLevel", Value::n(consistency)),
        )
    }
}

pub(crate) fn vssd_epr(id: &str) -> Epr {
    Epr { class: "Msvm_VirtualSystemSettingData".into(), keys: vec![("InstanceID".into(), format!("Microsoft:{id}"))] }
}

pub(crate) fn switch_epr(s: &Switch) -> Epr {
    Epr {
        class: "Msvm_VirtualEthernetSwitch".into(),
        keys: vec![("CreationClassName".into(), "Msvm_VirtualEthernetSwitch".into()), ("Name".into(), s.id.clone())],
    }
}
