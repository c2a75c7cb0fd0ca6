//! Restore of a VM to a Hyper-V host: [`HyperVHost`]'s
//! `Hypervisor::create_vm`.
//!
//! ## How the VM is made
//! The VM is defined through `Msvm_VirtualSystemManagementService` method
//! by method (`DefineSystem`, then `ModifyResourceSettings` and
//! `AddResourceSettings`), not imported (`ImportSystemDefinition`): an
//! import needs the VM's configuration file (`.vmcx`), which a version does
//! not hold (it holds the configuration read over WMI), and a version made
//! on Xen has none at all; defining also works for either, and each step's
//! refusal names the one setting the host did not take. The shapes are
//! those of libvirt's Hyper-V driver (partial embedded instances: only the
//! properties set here; the host defaults the rest).
//!
//! 1. [`plan`]: the recorded configuration (`extra["hyperv"]`, an
//!    [`HvVmConfig`]) → generation, secure boot, vCPUs, memory, each disk's
//!    controller and location, each NIC's MAC and switch, and the files
//!    (`<placement.storage>\<VM name>\<recorded file name>.vhdx`). Unknown
//!    switches, a path not on a drive, files already there are refused
//!    before anything is made.
//! 2. `DefineSystem` (`Msvm_VirtualSystemSettingData`: `ElementName`,
//!    `VirtualSystemSubType` `Microsoft:Hyper-V:SubType:<generation>`,
//!    `SecureBootEnabled` for generation 2); `ModifyResourceSettings` of
//!    the new VM's `Msvm_ProcessorSettingData` (`VirtualQuantity`) and
//!    `Msvm_MemorySettingData` (`VirtualQuantity`, `Reservation`, `Limit`
//!    in MiB, dynamic memory off); SCSI controllers as many as the disks
//!    need (`AddResourceSettings`, type 6); NICs (type 10, the recorded MAC
//!    as a static address unless `keep_macs` is off) and their switch
//!    connections (type 33).
//! 3. Each disk is written by the engine into a dynamic VHDX staged in a
//!    local folder ([`crate::HostOptions::staging_dir`]), then copied to the
//!    host's share (`C$`…) under a temporary name and renamed into place,
//!    and the staged file is removed: SMB offers no positional writes to a
//!    file the VHDX writer could use as it uses a local one, and a staged
//!    file lets the engine restore in parallel.
//! 4. `commit`: each disk is attached — a drive (type 17, `Parent` its
//!    controller, `AddressOnParent` its location), then the image (type 31,
//!    `Parent` the drive, `HostResource` the file).
//! 5. `abort` (or drop before commit): `DestroySystem` and the copied files
//!    and folders made are removed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use alike_core::{CreatedVm, DiskSink, DiskTarget, Placement, PlannedDisk, RestoreSession, StreamWritten, VmInfo};

use crate::adapter::{HvVmConfig, HyperVHost, never};
use crate::smb::{SmbShare, share_path};
use crate::vhdx::{CreateOptions, VhdxTarget};
use crate::wsman::{Arg, Embedded, Epr, Instance};
use crate::{Error, Result};

/// Where one disk goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlannedSlot {
    /// The version's disk position.
    pub position: u32,
    /// Its size, bytes.
    pub size: u64,
    /// `ide` or `scsi`.
    pub controller: String,
    /// The controller's index among those of its kind.
    pub controller_index: u32,
    /// Location on the controller.
    pub location: u32,
    /// The file on the host (`C:\…\name.vhdx`).
    pub path: String,
}

/// A NIC to make.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlannedNic {
    /// A static MAC (12 hex digits), or none for one the host makes.
    pub mac: Option<String>,
    /// The switch's name, or none for a NIC left unconnected.
    pub switch: Option<String>,
}

/// The VM a restore will define.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestorePlan {
    /// Its name.
    pub name: String,
    /// 1 or 2.
    pub generation: u8,
    /// Secure boot (generation 2).
    pub secure_boot: bool,
    /// Virtual processors.
    pub vcpus: u32,
    /// Memory, MiB (a multiple of 2).
    pub memory_mb: u64,
    /// The folder of its files (`C:\…`).
    pub folder: String,
    /// Its disks, in position order.
    pub disks: Vec<PlannedSlot>,
    /// Its NICs.
    pub nics: Vec<PlannedNic>,
    /// What will not be as recorded.
    pub warnings: Vec<String>,
}

/// `name` made safe as a Windows file name (no separators, reserved
/// characters or trailing dots).
fn file_safe(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_control() || "<>:\"/\\|?*".contains(c) { '_' } else { c }).collect();
    let s = s.trim().trim_end_matches('.').to_owned();
    if s.is_empty() { "vm".into() } else { s }
}

/// The file name a restored disk gets from the recorded one: its stem,
/// without a checkpoint's `_<GUID>` suffix, as `.vhdx`.
fn disk_file_name(recorded: Option<&str>, vm: &str, position: u32) -> String {
    let stem = recorded
        .and_then(|p| p.rsplit(['\\', '/']).next())
        .map(|f| f.rsplit_once('.').map_or(f, |(s, _)| s))
        .map(|s| match s.rsplit_once('_') {
            Some((base, g)) if g.len() == 36 && g.chars().all(|c| c.is_ascii_hexdigit() || c == '-') => base,
            _ => s,
        })
        .filter(|s| !s.is_empty())
        .map_or_else(|| format!("{vm}-disk{position}"), file_safe);
    format!("{stem}.vhdx")
}

/// What a restore of `config` with `disks` on this host will make, placed
/// as asked: see the module docs. `switches` are the host's switch names.
///
/// # Errors
/// [`Error::InvalidArgument`] for a configuration not recorded from
/// Hyper-V (the facade maps others first), a disk the record lacks, a
/// folder not on a drive; [`Error::NotFound`] for a switch the host lacks
/// when one was asked for.
pub fn plan(config: &VmInfo, disks: &[PlannedDisk], placement: &Placement, switches: &[String]) -> Result<RestorePlan> {
    let Some(raw) = config.extra.get("hyperv") else {
        return Err(Error::InvalidArgument(format!(
            "VM {:?} was backed up from {:?}, not from Hyper-V (no Hyper-V configuration recorded)",
            config.name, config.hypervisor
        )));
    };
    let hv: HvVmConfig = serde_json::from_value(raw.clone()).map_err(|e| {
        Error::InvalidArgument(format!("the Hyper-V configuration of VM {:?} does not decode: {e}", config.name))
    })?;
    let name = placement.name.clone().unwrap_or_else(|| hv.name.clone());
    if name.trim().is_empty() {
        return Err(Error::InvalidArgument("the restored VM needs a name".into()));
    }
    let base = placement.storage.trim().trim_end_matches(['\\', '/']).to_owned();
    if share_path(&format!("{base}\\x")).is_none() {
        return Err(Error::InvalidArgument(format!(
            "restore path {:?}: a folder on a drive of the host (C:\\…) is needed",
            placement.storage
        )));
    }
    let folder = format!("{base}\\{}", file_safe(&name));
    let mut warnings = Vec::new();
    let generation = if hv.generation == 2 { 2 } else { 1 };
    let mut slots = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for d in disks {
        let rec = hv.disks.iter().find(|x| x.position == d.position).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "disk {} of the version has no place in the recorded configuration of {:?}",
                d.position, hv.name
            ))
        })?;
        if rec.controller == "ide" && generation == 2 {
            return Err(Error::InvalidArgument(format!(
                "disk {} is recorded on IDE, which a generation 2 VM has not",
                d.position
            )));
        }
        let mut file = disk_file_name(Some(&rec.path), &name, d.position);
        // Two disks recorded with the same file name (other folders) get distinct ones.
        if names.iter().any(|n| n.eq_ignore_ascii_case(&file)) {
            file = format!("{}-disk{}.vhdx", file.trim_end_matches(".vhdx"), d.position);
        }
        names.push(file.clone());
        slots.push(PlannedSlot {
            position: d.position,
            size: d.size,
            controller: if rec.controller == "ide" { "ide" } else { "scsi" }.into(),
            controller_index: rec.controller_index,
            location: rec.location,
            path: format!("{folder}\\{file}"),
        });
    }
    for (c, max_ctrl, max_loc) in [("ide", 2, 2), ("scsi", 4, 64)] {
        if let Some(s) =
            slots.iter().find(|s| s.controller == c && (s.controller_index >= max_ctrl || s.location >= max_loc))
        {
            return Err(Error::InvalidArgument(format!(
                "disk {} at {c} {}:{} is outside what a Hyper-V VM has",
                s.position, s.controller_index, s.location
            )));
        }
    }
    let has = |n: &str| switches.iter().any(|s| s.eq_ignore_ascii_case(n));
    if let Some(n) = &placement.network
        && !has(n)
    {
        return Err(Error::NotFound(format!("virtual switch {n:?} (the host has: {})", switches.join(", "))));
    }
    let nics = hv
        .nics
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let switch = match (&placement.network, &n.switch) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(s)) if has(s) => Some(s.clone()),
                (None, Some(s)) => {
                    warnings.push(format!(
                        "NIC {i}: the host has no switch {s:?}; it is left unconnected (give a switch to connect it)"
                    ));
                    None
                }
                (None, None) => None,
            };
            let mac = n.mac.trim().replace([':', '-'], "").to_ascii_uppercase();
            let mac =
                (placement.keep_macs && mac.len() == 12 && mac.bytes().all(|b| b.is_ascii_hexdigit())).then_some(mac);
            PlannedNic { mac, switch }
        })
        .collect();
    let memory_mb = hv.memory_mb.max(32).div_ceil(2) * 2;
    if memory_mb != hv.memory_mb {
        warnings
            .push(format!("memory {} MiB rounded to {memory_mb} MiB (Hyper-V takes multiples of 2 MiB)", hv.memory_mb));
    }
    Ok(RestorePlan {
        name,
        generation,
        secure_boot: generation == 2 && hv.secure_boot,
        vcpus: hv.vcpus.clamp(1, 240),
        memory_mb,
        folder,
        disks: slots,
        nics,
        warnings,
    })
}

/// The path WMI gives an instance on `host` (what `Parent` and
/// `HostResource` hold).
fn wmi_path(host: &str, e: &Epr) -> String {
    format!("\\\\{host}\\root\\virtualization\\v2:{}", e.object_path())
}

/// A restore in progress: the VM defined, its disks being written.
pub struct HyperVRestore<'a> {
    host: &'a HyperVHost,
    plan: RestorePlan,
    host_name: String,
    vm_epr: Epr,
    vssd_epr: Epr,
    share: Arc<SmbShare>,
    /// Folders made on the share (outermost first) and files copied there.
    made: Arc<Mutex<(Vec<String>, Vec<String>)>>,
    created: CreatedVm,
    done: bool,
    /// A test VM: no NICs; each disk a differencing AVHDX over the copy written.
    test: bool,
}

/// The differencing file a test VM writes over the copy of a point at
/// `base` (`…\web-01-os.vhdx` → `…\web-01-os-test.avhdx`).
#[must_use]
pub fn test_disk_path(base: &str) -> String {
    let stem = if base.len() >= 5 && base[base.len() - 5..].eq_ignore_ascii_case(".vhdx") {
        &base[..base.len() - 5]
    } else {
        base
    };
    format!("{stem}-test.avhdx")
}

/// The copy of the point under the test VM's differencing file `diff`;
/// `None` when `diff` is not named as [`test_disk_path`] names one.
#[must_use]
pub fn test_disk_base(diff: &str) -> Option<String> {
    let n = diff.len();
    (n > 11 && diff[n - 11..].eq_ignore_ascii_case("-test.avhdx")).then(|| format!("{}.vhdx", &diff[..n - 11]))
}

impl std::fmt::Debug for HyperVRestore<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperVRestore").field("vm", &self.plan.name).finish_non_exhaustive()
    }
}

fn protocol(host: &HyperVHost, action: &str, what: &str) -> Error {
    Error::Protocol { endpoint: host.client().url().to_owned(), action: action.into(), what: what.into() }
}

/// Defines the VM and its NICs: see the module docs.
pub(crate) fn begin<'a>(
    host: &'a HyperVHost,
    config: &VmInfo,
    disks: &[PlannedDisk],
    placement: &Placement,
) -> Result<HyperVRestore<'a>> {
    begin_with(host, config, disks, placement, false)
}

/// [`begin`], or with `test` a test VM: no NICs (unless `placement` names
/// a switch for them), each disk written as a
/// copy of the point with a differencing AVHDX over it ([`test_disk_path`])
/// that the VM writes.
pub(crate) fn begin_with<'a>(
    host: &'a HyperVHost,
    config: &VmInfo,
    disks: &[PlannedDisk],
    placement: &Placement,
    test: bool,
) -> Result<HyperVRestore<'a>> {
    let c = host.client();
    let switches = c.query("SELECT * FROM Msvm_VirtualEthernetSwitch")?;
    let names: Vec<String> = switches.iter().filter_map(|s| s.text("ElementName").map(str::to_owned)).collect();
    let mut plan = plan(config, disks, placement, &names)?;
    // A test VM gets no NICs, or with a switch named NICs on that (isolated) switch.
    if test && placement.network.is_none() && !plan.nics.is_empty() {
        plan.nics.clear();
        plan.warnings.push("a test VM: no network adapters".into());
    }
    let host_name = c
        .query("SELECT * FROM Msvm_ComputerSystem")?
        .into_iter()
        .find(|i| i.text("Caption") == Some("Hosting Computer System"))
        .and_then(|i| i.text("Name").map(str::to_owned))
        .ok_or_else(|| protocol(host, "Enumerate", "no Msvm_ComputerSystem of the host"))?;
    let (share_name, folder) = share_path(&format!("{}\\x", plan.folder))
        .map(|(s, p)| (s, p.trim_end_matches("/x").to_owned()))
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not on a drive's administrative share", plan.folder)))?;
    let share = host.share(&share_name)?;
    for d in &plan.disks {
        let mut files = vec![d.path.clone()];
        if test {
            files.push(test_disk_path(&d.path));
        }
        for f in files {
            if let Some((_, p)) = share_path(&f)
                && share.exists(&p)
            {
                return Err(Error::InvalidArgument(format!("{f} exists on the host: not overwritten")));
            }
        }
    }
    let made = share.create_dirs(&folder)?;
    let made = Arc::new(Mutex::new((made, Vec::new())));
    let remove_dirs = |made: &Mutex<(Vec<String>, Vec<String>)>| {
        let m = made.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for d in m.0.iter().rev() {
            let _ = share.delete_dir(d);
        }
    };

    let svc = match host.service("Msvm_VirtualSystemManagementService") {
        Ok(s) => s,
        Err(e) => {
            remove_dirs(&made);
            return Err(e);
        }
    };
    let mut vssd = Embedded::new("Msvm_VirtualSystemSettingData").prop("ElementName", "string", &plan.name).prop(
        "VirtualSystemSubType",
        "string",
        &format!("Microsoft:Hyper-V:SubType:{}", plan.generation),
    );
    if plan.generation == 2 {
        vssd = vssd.prop("SecureBootEnabled", "boolean", if plan.secure_boot { "true" } else { "false" });
    }
    let defined = c.invoke(&svc, "DefineSystem", &[("SystemSettings", Arg::Embedded(vssd))], &never);
    let (out, job) = match defined {
        Ok(o) => o,
        Err(e) => {
            remove_dirs(&made);
            return Err(e);
        }
    };
    let vm_epr = match out.out.reference("ResultingSystem").cloned() {
        Some(e) => e,
        None => {
            // Found through the job when the output does not name it.
            let found = job.as_ref().and_then(|_| out.out.reference("Job")).and_then(|j| {
                c.associators(j, "Msvm_AffectedJobElement", "Msvm_ComputerSystem").ok()?.into_iter().next()?.epr
            });
            match found {
                Some(e) => e,
                None => {
                    remove_dirs(&made);
                    return Err(protocol(host, "DefineSystem", "the host named no new VM"));
                }
            }
        }
    };
    let vm_id = vm_epr.selector("Name").unwrap_or_default().to_owned();
    let mut r = HyperVRestore {
        host,
        host_name,
        vssd_epr: vm_epr.clone(),
        vm_epr,
        share,
        made,
        created: CreatedVm::new(vm_id.clone(), String::new(), plan.name.clone()),
        plan,
        done: false,
        test,
    };
    r.created.vm_ref = wmi_path(&r.host_name, &r.vm_epr);
    r.created.disks = r.plan.disks.iter().map(|d| d.position).collect();
    r.created.warnings = r.plan.warnings.clone();
    // From here on, a failure destroys the VM (drop).
    r.configure(&svc)?;
    Ok(r)
}

impl HyperVRestore<'_> {
    /// The plan being carried out.
    pub fn plan(&self) -> &RestorePlan {
        &self.plan
    }

    fn add(&self, svc: &Epr, settings: Vec<Embedded>) -> Result<Vec<Epr>> {
        let n = settings.len();
        let (out, _) = self.host.client().invoke(
            svc,
            "AddResourceSettings",
            &[
                ("AffectedConfiguration", Arg::Ref(self.vssd_epr.clone())),
                ("ResourceSettings", Arg::Embeddeds(settings)),
            ],
            &never,
        )?;
        let refs: Vec<Epr> = out.out.references("ResultingResourceSettings").into_iter().cloned().collect();
        if refs.len() != n {
            return Err(protocol(
                self.host,
                "AddResourceSettings",
                &format!("{} resulting settings for {n} added", refs.len()),
            ));
        }
        Ok(refs)
    }

    fn parts(&self) -> Result<Vec<Instance>> {
        self.host.client().associators(
            &self.vssd_epr,
            "Msvm_VirtualSystemSettingDataComponent",
            "CIM_ResourceAllocationSettingData",
        )
    }

    /// The controllers of the VM by kind (5 IDE, 6 SCSI), in index order.
    fn controllers(&self, parts: &[Instance], ty: u64) -> Vec<String> {
        let mut v: Vec<(u64, usize, String)> = parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.class == "Msvm_ResourceAllocationSettingData" && p.u64("ResourceType") == Some(ty))
            .filter_map(|(i, p)| Some((p.u64("Address").unwrap_or(u64::MAX), i, p.text("InstanceID")?.to_owned())))
            .collect();
        v.sort();
        v.into_iter().map(|(_, _, id)| id).collect()
    }

    fn configure(&mut self, svc: &Epr) -> Result<()> {
        let c = self.host.client();
        let vm = c.get(&self.vm_epr)?;
        self.vssd_epr = HyperVHost::epr(&self.host.realized(&vm)?)?;
        let parts = self.parts()?;
        let find = |class: &str| {
            parts
                .iter()
                .find(|p| p.class == class)
                .and_then(|p| p.text("InstanceID").map(str::to_owned))
                .ok_or_else(|| protocol(self.host, "Enumerate", &format!("the new VM has no {class}")))
        };
        let cpu = find("Msvm_ProcessorSettingData")?;
        let mem = find("Msvm_MemorySettingData")?;
        let mb = self.plan.memory_mb.to_string();
        let settings = vec![
            Embedded::new("Msvm_ProcessorSettingData").prop("InstanceID", "string", &cpu).prop(
                "VirtualQuantity",
                "uint64",
                &self.plan.vcpus.to_string(),
            ),
            Embedded::new("Msvm_MemorySettingData")
                .prop("InstanceID", "string", &mem)
                .prop("VirtualQuantity", "uint64", &mb)
                .prop("Reservation", "uint64", &mb)
                .prop("Limit", "uint64", &mb)
                .prop("DynamicMemoryEnabled", "boolean", "false"),
        ];
        c.invoke(svc, "ModifyResourceSettings", &[("ResourceSettings", Arg::Embeddeds(settings))], &never)?;
        let scsi_needed = self
            .plan
            .disks
            .iter()
            .filter(|d| d.controller == "scsi")
            .map(|d| d.controller_index + 1)
            .max()
            .unwrap_or(0);
        let have = self.controllers(&parts, 6).len() as u32;
        if scsi_needed > have {
            let add = (have..scsi_needed)
                .map(|_| {
                    Embedded::new("Msvm_ResourceAllocationSettingData").prop("ResourceType", "uint16", "6").prop(
                        "ResourceSubType",
                        "string",
                        "Microsoft:Hyper-V:Synthetic SCSI Controller",
                    )
                })
                .collect();
            self.add(svc, add)?;
        }
        let switches = c.query("SELECT * FROM Msvm_VirtualEthernetSwitch")?;
        for (i, n) in self.plan.nics.clone().iter().enumerate() {
            let mut port = Embedded::new("Msvm_SyntheticEthernetPortSettingData")
                .prop("ResourceType", "uint16", "10")
                .prop("ResourceSubType", "string", "Microsoft:Hyper-V:Synthetic Ethernet Port")
                .prop("ElementName", "string", "Network Adapter");
            port = match &n.mac {
                Some(m) => port.prop("StaticMacAddress", "boolean", "true").prop("Address", "string", m),
                None => port.prop("StaticMacAddress", "boolean", "false"),
            };
            let port_epr = self.add(svc, vec![port])?.remove(0);
            let Some(sw_name) = &n.switch else { continue };
            let sw = switches
                .iter()
                .find(|s| s.text("ElementName").is_some_and(|x| x.eq_ignore_ascii_case(sw_name)))
                .and_then(|s| s.epr.clone())
                .ok_or_else(|| Error::NotFound(format!("virtual switch {sw_name:?} for NIC {i}")))?;
            let conn = Embedded::new("Msvm_EthernetPortAllocationSettingData")
                .prop("ResourceType", "uint16", "33")
                .prop("ResourceSubType", "string", "Microsoft:Hyper-V:Ethernet Connection")
                .prop("Parent", "string", &wmi_path(&self.host_name, &port_epr))
                .prop_array("HostResource", "string", &[wmi_path(&self.host_name, &sw)]);
            self.add(svc, vec![conn])?;
        }
        Ok(())
    }

    fn attach(&mut self) -> Result<()> {
        let svc = self.host.service("Msvm_VirtualSystemManagementService")?;
        let parts = self.parts()?;
        let (ide, scsi) = (self.controllers(&parts, 5), self.controllers(&parts, 6));
        for d in self.plan.disks.clone() {
            let ctrls = if d.controller == "ide" { &ide } else { &scsi };
            let ctrl = ctrls.get(d.controller_index as usize).ok_or_else(|| {
                protocol(
                    self.host,
                    "AddResourceSettings",
                    &format!("the VM has no {} controller {}", d.controller, d.controller_index),
                )
            })?;
            let ctrl_epr = Epr::v2("Msvm_ResourceAllocationSettingData").key("InstanceID", ctrl);
            let drive = Embedded::new("Msvm_ResourceAllocationSettingData")
                .prop("ResourceType", "uint16", "17")
                .prop("ResourceSubType", "string", "Microsoft:Hyper-V:Synthetic Disk Drive")
                .prop("Parent", "string", &wmi_path(&self.host_name, &ctrl_epr))
                .prop("AddressOnParent", "string", &d.location.to_string());
            let drive_epr = self.add(&svc, vec![drive])?.remove(0);
            let image = Embedded::new("Msvm_StorageAllocationSettingData")
                .prop("ResourceType", "uint16", "31")
                .prop("ResourceSubType", "string", "Microsoft:Hyper-V:Virtual Hard Disk")
                .prop("Parent", "string", &wmi_path(&self.host_name, &drive_epr))
                .prop_array(
                    "HostResource",
                    "string",
                    &[if self.test { test_disk_path(&d.path) } else { d.path.clone() }],
                );
            self.add(&svc, vec![image])?;
        }
        Ok(())
    }

    fn destroy(&mut self) -> Result<()> {
        self.done = true;
        let svc = self.host.service("Msvm_VirtualSystemManagementService")?;
        let r = self.host.client().invoke(
            &svc,
            "DestroySystem",
            &[("AffectedSystem", Arg::Ref(self.vm_epr.clone()))],
            &never,
        );
        let m = self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for f in &m.1 {
            let _ = self.share.delete(f);
        }
        for d in m.0.iter().rev() {
            let _ = self.share.delete_dir(d);
        }
        r.map(|_| ())
    }
}

/// A disk staged locally, copied to the host when finished.
struct Staged {
    target: VhdxTarget,
    local: PathBuf,
    share: Arc<SmbShare>,
    remote: String,
    label: String,
    made: Arc<Mutex<(Vec<String>, Vec<String>)>>,
    /// A test disk's differencing file: its path on the share, and staged.
    diff: Option<(String, PathBuf)>,
}

impl DiskTarget for Staged {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> alike_core::Result<()> {
        self.target.write_at(offset, data)
    }
    fn holes_read_as_zero(&self) -> bool {
        self.target.holes_read_as_zero()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> alike_core::Result<()> {
        self.target.write_zeroes(offset, len)
    }
    fn finish(&self, size: u64) -> alike_core::Result<()> {
        self.target.finish(size)?;
        self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1.push(self.remote.clone());
        let r = self.share.upload(&self.local, &self.remote);
        if let (Ok(_), Some((remote, local))) = (&r, &self.diff) {
            let disk = |e| alike_core::Error::seam(Error::Disk { disk: self.label.clone(), source: e });
            let t = VhdxTarget::create_differencing(local, &self.local).map_err(disk)?;
            t.complete(size).map_err(disk)?;
            self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1.push(remote.clone());
            let r2 = self.share.upload(local, remote);
            let _ = std::fs::remove_file(local);
            r2.map_err(alike_core::Error::seam)?;
        }
        let _ = std::fs::remove_file(&self.local);
        r.map(|_| ()).map_err(alike_core::Error::seam)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Finished or not, the staged copy goes (an unfinished one was never renamed into place).
        let _ = std::fs::remove_file(&self.local);
        if let Some((_, local)) = &self.diff {
            let _ = std::fs::remove_file(local);
            if let Some(dir) = local.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

impl RestoreSession for HyperVRestore<'_> {
    fn vm(&self) -> &CreatedVm {
        &self.created
    }

    fn disk(&mut self, position: u32) -> alike_core::Result<DiskSink<'_>> {
        let d =
            self.plan.disks.iter().find(|d| d.position == position).cloned().ok_or_else(|| {
                alike_core::Error::seam(Error::InvalidArgument(format!("the VM has no disk {position}")))
            })?;
        let (_, remote) = share_path(&d.path)
            .ok_or_else(|| alike_core::Error::seam(Error::InvalidArgument(format!("{} is not on a drive", d.path))))?;
        let dir = self.host.options().staging_dir.clone().unwrap_or_else(std::env::temp_dir);
        let tag = format!(
            "alike-hyperv-{}-{}-{position}",
            std::process::id(),
            self.created.vm_uuid.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        );
        // A test disk's differencing file names its parent by relative
        // path: both are staged under the names they get on the host.
        let (local, diff) = if self.test {
            let sub = dir.join(&tag);
            std::fs::create_dir_all(&sub).map_err(|e| {
                alike_core::Error::seam(Error::Disk {
                    disk: d.path.clone(),
                    source: crate::vhdx::VhdxError::Io { file: sub.clone(), what: "creating", offset: 0, source: e },
                })
            })?;
            let name = |p: &str| p.rsplit(['\\', '/']).next().unwrap_or(p).to_owned();
            let diff_path = test_disk_path(&d.path);
            let (_, diff_remote) = share_path(&diff_path).ok_or_else(|| {
                alike_core::Error::seam(Error::InvalidArgument(format!("{diff_path} is not on a drive")))
            })?;
            (sub.join(name(&d.path)), Some((diff_remote, sub.join(name(&diff_path)))))
        } else {
            (dir.join(format!("{tag}.vhdx")), None)
        };
        // Hyper-V's own block size for dynamic disks; 512-byte logical sectors.
        let target = VhdxTarget::create(&local, d.size, &CreateOptions::default())
            .map_err(|e| alike_core::Error::seam(Error::Disk { disk: d.path.clone(), source: e }))?;
        let written = StreamWritten::new("vhdx", 0).id("path", d.path.clone());
        Ok(DiskSink::Target {
            written,
            target: Box::new(Staged {
                target,
                local,
                share: Arc::clone(&self.share),
                remote,
                label: format!("{} disk {position} ({})", self.plan.name, d.path),
                made: Arc::clone(&self.made),
                diff,
            }),
        })
    }

    fn commit(mut self: Box<Self>) -> alike_core::Result<CreatedVm> {
        self.attach().map_err(alike_core::Error::seam)?;
        self.done = true;
        Ok(self.created.clone())
    }

    fn abort(mut self: Box<Self>) -> alike_core::Result<()> {
        self.destroy().map_err(alike_core::Error::seam)
    }
}

impl Drop for HyperVRestore<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.destroy();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(disk_file_name(Some("C:\\a\\web-01-os.vhdx"), "w", 0), "web-01-os.vhdx");
        assert_eq!(disk_file_name(Some("C:\\a\\db_5E6D1C0A-1D2B-4C3D-8E9F-0A1B2C3D4E5F.avhdx"), "w", 0), "db.vhdx");
        assert_eq!(disk_file_name(None, "w", 3), "w-disk3.vhdx");
        assert_eq!(file_safe("a/b:c."), "a_b_c");
    }
}
