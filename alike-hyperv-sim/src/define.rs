//! Defining VMs: `Msvm_VirtualSystemManagementService`'s `DefineSystem`,
//! `ModifyResourceSettings`, `AddResourceSettings`, `DestroySystem` and
//! `RequestStateChange`, over the model in `host.rs`, with the checks a
//! host makes (and the simulator's own reading of the embedded instances:
//! nothing here is shared with a client).
//!
//! - `DefineSystem(SystemSettings)`: a `Msvm_VirtualSystemSettingData` with
//!   `ElementName`, `VirtualSystemSubType` (`Microsoft:Hyper-V:SubType:1|2`,
//!   generation 1 when absent) and `SecureBootEnabled` (generation 2 only;
//!   on by default there, as Hyper-V does). The VM is off, with 1 vCPU and
//!   1024 MiB; a generation 1 VM gets its two IDE controllers, a generation 2
//!   VM no controller.
//! - `ModifyResourceSettings(ResourceSettings[])`: the VM's processor
//!   (`VirtualQuantity` 1..=240) and memory (`VirtualQuantity` MiB, a
//!   multiple of 2, at least 32), by `InstanceID`; refused while it runs.
//! - `AddResourceSettings(AffectedConfiguration, ResourceSettings[])`: SCSI
//!   controllers (type 6, at most 4), disk drives (type 17: `Parent` a
//!   controller, `AddressOnParent` free and in range — IDE 0..2, SCSI
//!   0..64), disk images (type 31: `Parent` an empty drive, `HostResource` a
//!   VHDX, or a differencing AVHDX whose chain opens, on `C:`, that no VM
//!   uses, whose parents no VM writes), NICs (type 10: a static
//!   `Address` of 12 hex digits, or one the host makes) and their
//!   connections (type 33: `Parent` a NIC, `HostResource` a switch that
//!   exists). All or nothing: a refused setting leaves the VM as it was.
//! - `DestroySystem(AffectedSystem)`: an off VM is removed (its disk files
//!   stay, as on Hyper-V).
//! - `Msvm_ComputerSystem.RequestStateChange(RequestedState)`: 2 starts, 3
//!   stops; a replica VM refuses to start (32775).
//! - Hyper-V Replica on the replica side, as the WMI docs describe it
//!   (`docs/hyperv.md`, "Replica VMs"):
//!   `Msvm_ReplicationService.SetAuthorizationEntry(ComputerSystem,
//!   AuthorizationEntry)` — what `Enable-VMReplication -AsReplica` does — makes
//!   an off VM on a Replica server (`RecoveryServerEnabled`, else 32775) a
//!   replica waiting for its initial replication (`ReplicationMode` 2,
//!   `ReplicationState` 1); the entry is a
//!   `Msvm_ReplicationAuthorizationSettingData` with `AllowedPrimaryHostSystem`
//!   and `TrustGroup` (32773 without). `RemoveReplicationRelationship
//!   (ComputerSystem)` makes a replica an ordinary VM again (32775 for a VM
//!   with no relationship). `InitiateFailover(ComputerSystem,
//!   SnapshotSettingData)` needs recovery points that only a primary's
//!   replication brings: refused (32775) for a replica still waiting for its
//!   initial replication, as a host refuses it. `TestReplicaSystem` likewise;
//!   `CommitFailover`, `RevertFailover` and `ReverseReplicationRelationship`
//!   need a failover in progress (32775).

use alike_core::DiskSource as _;

use crate::cim::{Epr, parse_embedded};
use crate::host::{Ctrl, Disk, Host, MethodError, Nic, Rct, ReplicaEntry, Slot, Vm, merr, new_guid, now, rc};
use crate::wql::parse_path;

/// An embedded instance's class and properties.
struct Emb {
    class: String,
    props: Vec<(String, Vec<String>)>,
}

impl Emb {
    fn parse(text: &str) -> Result<Emb, MethodError> {
        let (class, props) = parse_embedded(text)
            .ok_or_else(|| merr(rc::INVALID_PARAMETER, "a resource setting is not an embedded instance"))?;
        Ok(Emb { class, props })
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.props.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.first()).map(String::as_str)
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.props
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }
    fn num(&self, name: &str) -> Result<Option<u64>, MethodError> {
        self.get(name)
            .map(|v| {
                v.trim().parse().map_err(|_| {
                    merr(rc::INVALID_PARAMETER, format!("{name} of {} is not a number: {v:?}", self.class))
                })
            })
            .transpose()
    }
    fn flag(&self, name: &str) -> Option<bool> {
        self.get(name).map(|v| v.trim().eq_ignore_ascii_case("true"))
    }
}

/// The `InstanceID` a WMI path (a `Parent`) names.
fn instance_id(path: &str) -> Result<String, MethodError> {
    let e = parse_path(path).map_err(|e| merr(rc::INVALID_PARAMETER, format!("Parent {path:?}: {e}")))?;
    e.keys
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("InstanceID"))
        .map(|(_, v)| v.clone())
        .ok_or_else(|| merr(rc::INVALID_PARAMETER, format!("Parent {path:?} names no InstanceID")))
}

fn rasd_epr(id: String) -> Epr {
    Epr { class: "Msvm_ResourceAllocationSettingData".into(), keys: vec![("InstanceID".into(), id)] }
}

impl Host {
    fn vm_index_by_epr(&self, e: &Epr) -> Option<usize> {
        self.vms.iter().position(|vm| Host::vm_epr(vm).matches(e))
    }

    /// `DefineSystem`: the job and the new VM.
    pub(crate) fn define_system(&mut self, settings: &str) -> Result<(Epr, Epr), MethodError> {
        let s = Emb::parse(settings)?;
        if s.class != "Msvm_VirtualSystemSettingData" {
            return Err(merr(rc::INVALID_PARAMETER, format!("SystemSettings is a {}", s.class)));
        }
        let name = s.get("ElementName").map(str::trim).unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(merr(rc::INVALID_PARAMETER, "The virtual machine needs a name (ElementName)"));
        }
        let generation = match s.get("VirtualSystemSubType").map(str::trim) {
            None | Some("Microsoft:Hyper-V:SubType:1") => 1u8,
            Some("Microsoft:Hyper-V:SubType:2") => 2,
            Some(other) => return Err(merr(rc::INVALID_PARAMETER, format!("Unknown VirtualSystemSubType {other:?}"))),
        };
        let secure_boot = match (generation, s.flag("SecureBootEnabled")) {
            (1, Some(true)) => {
                return Err(merr(rc::INVALID_PARAMETER, "Secure boot needs a generation 2 virtual machine"));
            }
            (1, _) => false,
            (_, v) => v.unwrap_or(true),
        };
        let controllers = if generation == 1 {
            (0..2).map(|index| Ctrl { scsi: false, index, guid: new_guid() }).collect()
        } else {
            Vec::new()
        };
        let vm = Vm {
            id: new_guid(),
            name,
            generation,
            vcpus: 1,
            memory_mb: 1024,
            running: false,
            secure_boot,
            vss: false,
            created: now(),
            disks: Vec::new(),
            nics: Vec::new(),
            snapshots: Vec::new(),
            refpoints: Vec::new(),
            controllers,
            empty_drives: Vec::new(),
            replica: None,
        };
        let e = Host::vm_epr(&vm);
        self.vms.push(vm);
        let job = self.job("Defining virtual machine", 94, None, vec![e.clone()]);
        Ok((job, e))
    }

    /// The VM whose realized settings or resource `InstanceID` is `id`
    /// (`Microsoft:<vm id>` or `Microsoft:<vm id>\…`).
    fn vm_of_instance(&self, id: &str) -> Result<usize, MethodError> {
        let rest = id
            .strip_prefix("Microsoft:")
            .ok_or_else(|| merr(rc::INVALID_PARAMETER, format!("{id:?} is not a Hyper-V setting's id")))?;
        let vm_id = rest.split('\\').next().unwrap_or_default();
        self.vms
            .iter()
            .position(|v| v.id.eq_ignore_ascii_case(vm_id))
            .ok_or_else(|| merr(rc::INVALID_PARAMETER, format!("No virtual machine's setting is {id:?}")))
    }

    /// `ModifyResourceSettings`: the job and the settings changed.
    pub(crate) fn modify_resource_settings(&mut self, settings: &[String]) -> Result<(Epr, Vec<Epr>), MethodError> {
        let mut out = Vec::new();
        let mut vms = self.vms.clone();
        let mut touched = Vec::new();
        for text in settings {
            let s = Emb::parse(text)?;
            let id = s.get("InstanceID").unwrap_or_default().to_owned();
            let vi = self.vm_of_instance(&id)?;
            let vm = &mut vms[vi];
            if vm.running {
                return Err(merr(rc::INVALID_STATE, format!("{} is running: turn it off first", vm.name)));
            }
            match s.class.as_str() {
                "Msvm_ProcessorSettingData" if id.contains("\\b637f346-6a0e-4dec-af52-bd70cb80a21d\\") => {
                    let n = s.num("VirtualQuantity")?.unwrap_or(u64::from(vm.vcpus));
                    if !(1..=240).contains(&n) {
                        return Err(merr(rc::INVALID_PARAMETER, format!("{n} virtual processors: 1 to 240")));
                    }
                    vm.vcpus = n as u32;
                }
                "Msvm_MemorySettingData" if id.ends_with("\\4764334d-e001-4176-82ee-5594ec9b530e") => {
                    let mb = s.num("VirtualQuantity")?.unwrap_or(vm.memory_mb);
                    if mb < 32 || mb % 2 != 0 {
                        return Err(merr(
                            rc::INVALID_PARAMETER,
                            format!("{mb} MB of memory: at least 32 and a multiple of 2 MB"),
                        ));
                    }
                    vm.memory_mb = mb;
                }
                other => {
                    return Err(merr(rc::NOT_SUPPORTED, format!("modifying {other} {id:?} is not supported here")));
                }
            }
            touched.push(vi);
            out.push(Epr { class: s.class.clone(), keys: vec![("InstanceID".into(), id)] });
        }
        self.vms = vms;
        let affected = touched.iter().map(|&vi| Host::vm_epr(&self.vms[vi])).collect();
        Ok((self.job("Modifying resource settings", 95, None, affected), out))
    }

    /// `AddResourceSettings` on the realized settings `target`: the job and
    /// the settings made.
    pub(crate) fn add_resource_settings(
        &mut self,
        target: &Epr,
        settings: &[String],
    ) -> Result<(Epr, Vec<Epr>), MethodError> {
        let id = target
            .keys
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("InstanceID"))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| merr(rc::INVALID_PARAMETER, "AffectedConfiguration names no InstanceID"))?;
        let vi = self.vm_of_instance(&id)?;
        if id.contains('\\') || !id.eq_ignore_ascii_case(&format!("Microsoft:{}", self.vms[vi].id)) {
            return Err(merr(rc::INVALID_PARAMETER, "AffectedConfiguration is not a VM's realized settings"));
        }
        if !self.vms[vi].snapshots.is_empty() {
            return Err(merr(rc::INVALID_STATE, "the VM has checkpoints: remove them before changing its hardware"));
        }
        let mut vm = self.vms[vi].clone();
        let owner = format!("Microsoft:{}", vm.id);
        let mut out = Vec::new();
        for text in settings {
            let s = Emb::parse(text)?;
            let ty = s.num("ResourceType")?.unwrap_or(0);
            let sub = s.get("ResourceSubType").unwrap_or_default();
            let e = match (ty, sub) {
                (6, "Microsoft:Hyper-V:Synthetic SCSI Controller") => {
                    let index = vm.controllers.iter().filter(|c| c.scsi).count() as u32;
                    if index >= 4 {
                        return Err(merr(rc::INVALID_PARAMETER, "a VM has at most 4 SCSI controllers"));
                    }
                    let guid = new_guid();
                    vm.controllers.push(Ctrl { scsi: true, index, guid: guid.clone() });
                    rasd_epr(format!("{owner}\\{guid}"))
                }
                (5, _) => {
                    return Err(merr(
                        rc::INVALID_PARAMETER,
                        "IDE controllers cannot be added (a generation 1 VM has its two, generation 2 none)",
                    ));
                }
                (17, "Microsoft:Hyper-V:Synthetic Disk Drive") => {
                    let parent = instance_id(s.get("Parent").unwrap_or_default())?;
                    let ctrl = vm
                        .controllers
                        .iter()
                        .find(|c| format!("{owner}\\{}", c.guid).eq_ignore_ascii_case(&parent))
                        .cloned()
                        .ok_or_else(|| {
                            merr(
                                rc::INVALID_PARAMETER,
                                format!("the drive's Parent {parent:?} is no controller of this VM"),
                            )
                        })?;
                    let location = s
                        .num("AddressOnParent")?
                        .ok_or_else(|| merr(rc::INVALID_PARAMETER, "a drive needs AddressOnParent"))?;
                    let max = if ctrl.scsi { 64 } else { 2 };
                    if location >= max {
                        return Err(merr(
                            rc::INVALID_PARAMETER,
                            format!("location {location} on a controller of {max} locations"),
                        ));
                    }
                    let slot = Slot { scsi: ctrl.scsi, controller: ctrl.index, location: location as u32 };
                    if vm.disks.iter().any(|d| d.slot == slot) || vm.empty_drives.iter().any(|(s, _)| *s == slot) {
                        return Err(merr(
                            rc::INVALID_PARAMETER,
                            format!("location {location} of the controller is in use"),
                        ));
                    }
                    vm.empty_drives.push((slot, ctrl.guid.clone()));
                    rasd_epr(format!("{owner}\\{}\\{}\\{location}\\D", ctrl.guid, ctrl.index))
                }
                (31, "Microsoft:Hyper-V:Virtual Hard Disk") => {
                    let parent = instance_id(s.get("Parent").unwrap_or_default())?;
                    let di = vm
                        .empty_drives
                        .iter()
                        .position(|(slot, g)| {
                            format!("{owner}\\{g}\\{}\\{}\\D", slot.controller, slot.location)
                                .eq_ignore_ascii_case(&parent)
                        })
                        .ok_or_else(|| {
                            merr(
                                rc::INVALID_PARAMETER,
                                format!("the image's Parent {parent:?} is no empty drive of this VM"),
                            )
                        })?;
                    let win = s.all("HostResource").first().map(|p| p.trim().to_owned()).unwrap_or_default();
                    let local = self
                        .local_path(&win)
                        .ok_or_else(|| merr(rc::FILE_NOT_FOUND, format!("The system cannot find the file {win:?}")))?;
                    if !local.is_file() {
                        return Err(merr(rc::FILE_NOT_FOUND, format!("The system cannot find the file {win}")));
                    }
                    // The file a VM writes is its own; a differencing disk's
                    // parents may be shared (read only), as on Hyper-V.
                    let in_use = self.vms.iter().chain(std::iter::once(&vm)).any(|v| {
                        v.disks.iter().any(|d| d.chain.contains(&local))
                            || v.snapshots.iter().any(|sn| sn.disks.iter().any(|d| d.frozen == local))
                    });
                    if in_use {
                        return Err(merr(rc::INVALID_STATE, format!("{win} is in use by a virtual machine")));
                    }
                    let src = alike_formats::vhdx::VhdxSource::open(&local).map_err(|e| {
                        merr(rc::FAILED, format!("{win} is not a virtual hard disk (or a parent is missing): {e}"))
                    })?;
                    let chain: Vec<std::path::PathBuf> = src.layers().iter().rev().map(|l| l.path.clone()).collect();
                    let writable = |p: &std::path::PathBuf| {
                        self.vms
                            .iter()
                            .chain(std::iter::once(&vm))
                            .any(|v| v.disks.iter().any(|d| d.chain.last() == Some(p)))
                    };
                    if let Some(p) = chain[..chain.len() - 1].iter().find(|p| writable(p)) {
                        return Err(merr(
                            rc::INVALID_STATE,
                            format!("{win}: its parent {} is a disk a virtual machine writes", p.display()),
                        ));
                    }
                    let (slot, guid) = vm.empty_drives.remove(di);
                    let e = rasd_epr(format!("{owner}\\{guid}\\{}\\{}\\L", slot.controller, slot.location));
                    vm.disks.push(Disk {
                        size: src.size(),
                        chain,
                        slot,
                        ctrl_guid: guid,
                        rct: Rct { guid: new_guid(), epoch: 1, log: Vec::new() },
                    });
                    // Positions as the host lists them: IDE first, then by controller and location.
                    vm.disks.sort_by_key(|d| (d.slot.scsi, d.slot.controller, d.slot.location));
                    e
                }
                (10, "Microsoft:Hyper-V:Synthetic Ethernet Port") => {
                    let mac = if s.flag("StaticMacAddress") == Some(true) {
                        let m = s.get("Address").unwrap_or_default().trim().to_ascii_uppercase();
                        if m.len() != 12 || !m.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(merr(rc::INVALID_PARAMETER, format!("{m:?} is not a MAC address")));
                        }
                        m
                    } else {
                        format!("00155D{}", &new_guid().replace('-', "")[..6])
                    };
                    let nid = new_guid();
                    vm.nics.push(Nic { id: nid.clone(), mac, switch: None });
                    Epr {
                        class: "Msvm_SyntheticEthernetPortSettingData".into(),
                        keys: vec![("InstanceID".into(), format!("{owner}\\{nid}"))],
                    }
                }
                (33, "Microsoft:Hyper-V:Ethernet Connection") => {
                    let parent = instance_id(s.get("Parent").unwrap_or_default())?;
                    let ni = vm
                        .nics
                        .iter()
                        .position(|n| format!("{owner}\\{}", n.id).eq_ignore_ascii_case(&parent))
                        .ok_or_else(|| {
                            merr(
                                rc::INVALID_PARAMETER,
                                format!("the connection's Parent {parent:?} is no NIC of this VM"),
                            )
                        })?;
                    let sw_path = s.all("HostResource").first().map(|p| p.trim().to_owned()).unwrap_or_default();
                    let sw = parse_path(&sw_path)
                        .ok()
                        .filter(|e| e.class.eq_ignore_ascii_case("Msvm_VirtualEthernetSwitch"))
                        .and_then(|e| {
                            e.keys.iter().find(|(k, _)| k.eq_ignore_ascii_case("Name")).map(|(_, v)| v.clone())
                        })
                        .and_then(|name| self.switches.iter().find(|x| x.id.eq_ignore_ascii_case(&name)).cloned())
                        .ok_or_else(|| merr(rc::INVALID_PARAMETER, format!("the switch {sw_path:?} was not found")))?;
                    if vm.nics[ni].switch.is_some() {
                        return Err(merr(rc::INVALID_PARAMETER, "the NIC is connected already"));
                    }
                    vm.nics[ni].switch = Some(sw.id.clone());
                    Epr {
                        class: "Msvm_EthernetPortAllocationSettingData".into(),
                        keys: vec![("InstanceID".into(), format!("{owner}\\{}\\C", vm.nics[ni].id))],
                    }
                }
                _ => {
                    return Err(merr(
                        rc::NOT_SUPPORTED,
                        format!("adding a {} of type {ty} ({sub:?}) is not supported here", s.class),
                    ));
                }
            };
            out.push(e);
        }
        let e = Host::vm_epr(&vm);
        self.vms[vi] = vm;
        Ok((self.job("Adding resource settings", 96, None, vec![e]), out))
    }

    /// `DestroySystem`: the job.
    pub(crate) fn destroy_system(&mut self, system: &Epr) -> Result<Epr, MethodError> {
        let vi = self
            .vm_index_by_epr(system)
            .ok_or_else(|| merr(rc::INVALID_PARAMETER, "The virtual machine was not found"))?;
        if self.vms[vi].running {
            return Err(merr(rc::INVALID_STATE, format!("{} is running: turn it off first", self.vms[vi].name)));
        }
        let vm = self.vms.remove(vi);
        Ok(self.job("Destroying virtual machine", 97, None, vec![Host::vm_epr(&vm)]))
    }

    fn off_vm_index(&self, system: &Epr) -> Result<usize, MethodError> {
        let vi = self
            .vm_index_by_epr(system)
            .ok_or_else(|| merr(rc::INVALID_PARAMETER, "The virtual machine was not found"))?;
        if self.vms[vi].running {
            return Err(merr(rc::INVALID_STATE, format!("{} is running: turn it off first", self.vms[vi].name)));
        }
        Ok(vi)
    }

    /// `SetAuthorizationEntry`: the off VM becomes a replica waiting for
    /// its initial replication; the job.
    pub(crate) fn set_authorization_entry(&mut self, system: &Epr, entry: &str) -> Result<Epr, MethodError> {
        let vi = self.off_vm_index(system)?;
        if !self.recovery_server {
            return Err(merr(rc::INVALID_STATE, "The Hyper-V host is not enabled as a Replica server"));
        }
        let e = Emb::parse(entry)?;
        if !e.class.eq_ignore_ascii_case("Msvm_ReplicationAuthorizationSettingData") {
            return Err(merr(
                rc::INVALID_PARAMETER,
                format!("AuthorizationEntry is a {}, not a Msvm_ReplicationAuthorizationSettingData", e.class),
            ));
        }
        let field = |n: &str| e.get(n).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        let (Some(allowed_primary), Some(trust_group)) = (field("AllowedPrimaryHostSystem"), field("TrustGroup"))
        else {
            return Err(merr(rc::INVALID_PARAMETER, "AllowedPrimaryHostSystem and TrustGroup are required"));
        };
        let storage = field("ReplicaStorageLocation").unwrap_or_default();
        let vm = &mut self.vms[vi];
        if vm.replica.is_some() {
            return Err(merr(rc::INVALID_STATE, format!("Replication is already enabled for {}", vm.name)));
        }
        vm.replica = Some(ReplicaEntry { allowed_primary, trust_group, storage });
        let e = Host::vm_epr(vm);
        Ok(self.job("Setting replication authorization", 99, None, vec![e]))
    }

    /// `RemoveReplicationRelationship`: the replica becomes an ordinary VM; the job.
    pub(crate) fn remove_replication_relationship(&mut self, system: &Epr) -> Result<Epr, MethodError> {
        let vi = self
            .vm_index_by_epr(system)
            .ok_or_else(|| merr(rc::INVALID_PARAMETER, "The virtual machine was not found"))?;
        let vm = &mut self.vms[vi];
        if vm.replica.take().is_none() {
            return Err(merr(rc::INVALID_STATE, format!("Replication is not enabled for {}", vm.name)));
        }
        let e = Host::vm_epr(vm);
        Ok(self.job("Removing replication", 99, None, vec![e]))
    }

    /// `CommitFailover`, `RevertFailover` or `ReverseReplicationRelationship`
    /// (`what`): they act on a failover `InitiateFailover` started, which a
    /// replica made here never has (the host's refusal, 32775).
    pub(crate) fn needs_failover(&self, system: &Epr, what: &str) -> Result<Epr, MethodError> {
        let vi = self
            .vm_index_by_epr(system)
            .ok_or_else(|| merr(rc::INVALID_PARAMETER, "The virtual machine was not found"))?;
        let vm = &self.vms[vi];
        let why = if vm.replica.is_some() { "no failover is in progress" } else { "replication is not enabled" };
        Err(merr(rc::INVALID_STATE, format!("{what}: {why} for {}", vm.name)))
    }

    /// `InitiateFailover` or `TestReplicaSystem` (`what`): a replica made
    /// here never received a primary's replication, so it has no recovery
    /// point to fail over to (the host's refusal, 32775).
    pub(crate) fn needs_recovery_point(&self, system: &Epr, what: &str) -> Result<Epr, MethodError> {
        let vi = self
            .vm_index_by_epr(system)
            .ok_or_else(|| merr(rc::INVALID_PARAMETER, "The virtual machine was not found"))?;
        let vm = &self.vms[vi];
        if vm.replica.is_none() {
            return Err(merr(rc::INVALID_STATE, format!("{what}: replication is not enabled for {}", vm.name)));
        }
        Err(merr(
            rc::INVALID_STATE,
            format!("{what}: {} has no recovery point (the initial replication has not completed)", vm.name),
        ))
    }

    /// `RequestStateChange` on a VM: the job.
    pub(crate) fn request_state_change(&mut self, system: &Epr, state: u64) -> Result<Epr, MethodError> {
        let vi = self
            .vm_index_by_epr(system)
            .ok_or_else(|| merr(rc::INVALID_PARAMETER, "The virtual machine was not found"))?;
        let vm = &mut self.vms[vi];
        match state {
            2 if vm.replica.is_some() => {
                return Err(merr(
                    rc::INVALID_STATE,
                    format!("'{}' failed to start: a Replica virtual machine cannot be started", vm.name),
                ));
            }
            2 => vm.running = true,
            3 => vm.running = false,
            other => return Err(merr(rc::NOT_SUPPORTED, format!("requested state {other} is not supported here"))),
        }
        let e = Host::vm_epr(vm);
        Ok(self.job("Changing state", 98, None, vec![e]))
    }
}
