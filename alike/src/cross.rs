//! Cross-hypervisor restore: a version's recorded VM configuration mapped
//! onto another kind of host, so [`crate::Store::restore_vm`] restores a
//! Xen-made version on Hyper-V and a Hyper-V-made version on Xen with the
//! same call (the disks are bytes: each host's restore writes them in its
//! own format — VHDX files on Hyper-V, VHD uploads through XAPI on Xen).
//!
//! The mapping works on the recorded JSON (`VmInfo::extra["xen"]`, an
//! `alike_xen::adapter::XenVmConfig`; `extra["hyperv"]`, an
//! `alike_hyperv::HvVmConfig`) and makes the other host's record, so it
//! needs neither adapter. What maps and what is dropped (each drop is a
//! warning in the restore's report):
//!
//! | | Xen → Hyper-V | Hyper-V → Xen |
//! |---|---|---|
//! | name, vCPUs, memory | `name_label`, `VCPUs_at_startup`, `memory_static_max` (rounded up to 2 MiB) | `VCPUs_max` = `VCPUs_at_startup`, all four memory limits the same (static) |
//! | firmware | `HVM_boot_params.firmware = uefi` → generation 2, otherwise generation 1 (BIOS); `platform.secureboot` → secure boot | generation 2 → `firmware = uefi` (`platform.secureboot` from secure boot), generation 1 → BIOS; HVM boot policy, boot order disk then CD |
//! | disks | gen. 1: the first disk on IDE 0:0 (a BIOS guest boots from IDE), the others SCSI 0:0, 0:1…; gen. 2: all SCSI 0:n; files named after the VDIs | by position: `userdevice` = position, the first bootable; VDIs named after the files |
//! | NICs | MAC, network name → switch name (or the switch asked for; unconnected when none matches) | MAC, switch name → network name (or the network asked for), device = index, MTU 1500 |
//! | dropped | PV boot (kernel, bootloader), platform flags (viridian, nx, …), VBD/VIF QoS, VIF locking, CD drives, `other_config`, tags, HA, BIOS strings | Hyper-V's configuration version, RCT ids, checkpoints; Hyper-V integration services (the guest needs Xen PV drivers for fast I/O) |
//!
//! A version from plain images (`hypervisor = "raw"`) has no configuration
//! to map and is refused.

use serde_json::{Map, Value, json};

use crate::{Error, Result};
use alike_core::{PlannedDisk, VmInfo};

/// `config` as a host of `kind` records it, with the warnings of the
/// mapping (none when the version comes from that kind of host).
///
/// # Errors
/// [`crate::ErrorKind::InvalidArgument`] for a version with no host
/// configuration, or a pair of hosts with no mapping.
pub(crate) fn for_host(config: &VmInfo, kind: &str, disks: &[PlannedDisk]) -> Result<(VmInfo, Vec<String>)> {
    match (config.hypervisor.as_str(), kind) {
        (a, b) if a == b => Ok((config.clone(), Vec::new())),
        ("xen", "hyperv") => xen_to_hyperv(config, disks),
        ("hyperv", "xen") => hyperv_to_xen(config, disks),
        (a, b) => Err(Error::InvalidArgument(format!(
            "VM {:?} was backed up from {a:?}: it cannot be recreated on a {b:?} host (restore its disks to files instead)",
            config.name
        ))),
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn int(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(|x| x.as_u64().or_else(|| x.as_str().and_then(|s| s.trim().parse().ok())))
}

fn nonempty(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Bool(b)) => *b,
        Some(Value::Null) | None => false,
        Some(_) => true,
    }
}

fn xen_to_hyperv(config: &VmInfo, planned: &[PlannedDisk]) -> Result<(VmInfo, Vec<String>)> {
    let xen = config.extra.get("xen").cloned().unwrap_or(Value::Null);
    let vm = xen.get("vm").cloned().unwrap_or(Value::Null);
    let mut warnings = Vec::new();
    let boot = vm.get("HVM_boot_params").cloned().unwrap_or(Value::Null);
    let platform = vm.get("platform").cloned().unwrap_or(Value::Null);
    let uefi = s(&boot, "firmware").eq_ignore_ascii_case("uefi");
    let generation = if uefi { 2 } else { 1 };
    let secure_boot = uefi && s(&platform, "secureboot").eq_ignore_ascii_case("true");
    if s(&vm, "HVM_boot_policy").is_empty() && !s(&vm, "PV_bootloader").is_empty() {
        warnings.push(
            "a Xen PV guest (booted by pygrub or a kernel): on Hyper-V it boots from its disk as a BIOS guest (generation 1) only if it has a boot loader there"
                .into(),
        );
    }
    if uefi && !secure_boot {
        warnings.push("UEFI without secure boot: the generation 2 VM has secure boot off".into());
    }
    if secure_boot {
        warnings.push(
            "secure boot on with Hyper-V's default template (Microsoft Windows): a Linux guest needs the Microsoft UEFI Certificate Authority template, set on the host"
                .into(),
        );
    }
    let vcpus = config.vcpus.unwrap_or(1).max(1);
    let memory_mb = config.memory_bytes.map_or(1024, |b| b.div_ceil(2 << 20) * 2);
    // The version's disks in position order; the recorded VDI names name the files.
    let mut positions: Vec<u32> = planned.iter().map(|d| d.position).collect();
    positions.sort_unstable();
    let xdisks = xen.get("disks").and_then(Value::as_array).cloned().unwrap_or_default();
    let disks: Vec<Value> = positions
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let rec = xdisks.iter().find(|d| int(d, "position") == Some(u64::from(p)));
            let label = rec.map(|d| s(d, "name_label")).unwrap_or_default();
            let file = if label.is_empty() { format!("{}-disk{p}", config.name) } else { label.to_owned() };
            let (controller, location) = match (generation, i) {
                (1, 0) => ("ide", 0),
                (1, k) => ("scsi", k - 1),
                (_, k) => ("scsi", k),
            };
            json!({
                "position": p, "controller": controller, "controller_index": 0, "location": location,
                "path": format!("C:\\{file}.vhdx"),
            })
        })
        .collect();
    let nics: Vec<Value> = config
        .nics
        .iter()
        .map(|n| json!({"mac": n.mac.clone().unwrap_or_default().replace([':', '-'], "").to_ascii_uppercase(), "switch": n.network}))
        .collect();
    let dropped: Vec<&str> = [
        ("platform", "platform flags (viridian, nx, …)"),
        ("other_config", "other_config"),
        ("tags", "tags"),
        ("bios_strings", "BIOS strings"),
        ("PV_args", "PV kernel arguments"),
    ]
    .iter()
    .filter(|(k, _)| nonempty(vm.get(*k)))
    .map(|(_, what)| *what)
    .collect();
    if !dropped.is_empty() {
        warnings.push(format!("not carried to Hyper-V: {}", dropped.join(", ")));
    }
    let cds = xen.get("cdroms").and_then(Value::as_array).map_or(0, Vec::len);
    if cds > 0 {
        warnings.push(format!("{cds} CD drive(s) not recreated"));
    }
    let nic_extras = xen
        .get("nics")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(|n| nonempty(n.get("qos_algorithm_type")) || s(n, "locking_mode") == "locked"));
    if nic_extras {
        warnings.push("NIC QoS and locking (allowed IPs) not carried to Hyper-V".into());
    }
    if generation == 1 && positions.len() > 1 {
        warnings.push(
            "disks after the first are on SCSI: the guest needs Hyper-V's storage driver (hv_storvsc) to see them"
                .into(),
        );
    }
    warnings.push(
        "the guest's Xen PV drivers have no use on Hyper-V (Windows brings Hyper-V's drivers; Linux needs hv_vmbus, hv_storvsc, hv_netvsc)"
            .into(),
    );
    let hv = json!({
        "id": config.uuid.clone().unwrap_or_default(), "name": config.name, "generation": generation,
        "secure_boot": secure_boot, "version": "", "vcpus": vcpus, "memory_mb": memory_mb, "running": false,
        "disks": disks, "nics": nics,
    });
    let mut out = config.clone();
    out.hypervisor = "hyperv".into();
    out.extra.insert("hyperv".into(), hv);
    Ok((out, warnings))
}

fn hyperv_to_xen(config: &VmInfo, planned: &[PlannedDisk]) -> Result<(VmInfo, Vec<String>)> {
    let hv = config.extra.get("hyperv").cloned().unwrap_or(Value::Null);
    let mut warnings = Vec::new();
    let generation = int(&hv, "generation").unwrap_or(1);
    let secure_boot = hv.get("secure_boot").and_then(Value::as_bool).unwrap_or(false);
    let vcpus = config.vcpus.unwrap_or(1).max(1);
    let memory = config.memory_bytes.unwrap_or(1 << 30).max(256 << 20);
    let mut platform = Map::new();
    for (k, v) in [("acpi", "1"), ("apic", "true"), ("pae", "true"), ("nx", "true"), ("viridian", "true")] {
        platform.insert(k.into(), json!(v));
    }
    let mut boot = Map::new();
    boot.insert("order".into(), json!("cd"));
    if generation == 2 {
        boot.insert("firmware".into(), json!("uefi"));
        platform.insert("secureboot".into(), json!(if secure_boot { "true" } else { "false" }));
        platform.insert("device-model".into(), json!("qemu-upstream-uefi"));
    } else {
        boot.insert("firmware".into(), json!("bios"));
        platform.insert("device-model".into(), json!("qemu-upstream-compat"));
    }
    let vm = json!({
        "name_label": config.name, "name_description": format!("restored from Hyper-V VM {}", config.uuid.clone().unwrap_or_default()),
        "user_version": 1, "memory_target": memory, "memory_static_max": memory, "memory_dynamic_max": memory,
        "memory_dynamic_min": memory, "memory_static_min": memory, "VCPUs_params": {}, "VCPUs_max": vcpus,
        "VCPUs_at_startup": vcpus, "actions_after_shutdown": "destroy", "actions_after_reboot": "restart",
        "actions_after_crash": "restart", "PV_bootloader": "", "PV_kernel": "", "PV_ramdisk": "", "PV_args": "",
        "PV_bootloader_args": "", "PV_legacy_args": "", "HVM_boot_policy": "BIOS order", "HVM_boot_params": boot,
        "HVM_shadow_multiplier": 1.0, "platform": platform, "PCI_bus": "", "other_config": {}, "recommendations": "",
        "xenstore_data": {}, "ha_always_run": false, "ha_restart_priority": "", "tags": [], "blocked_operations": {},
        "has_vendor_device": generation == 2, "domain_type": "hvm",
    });
    let hdisks = hv.get("disks").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut positions: Vec<u32> = planned.iter().map(|d| d.position).collect();
    positions.sort_unstable();
    let disks: Vec<Value> = positions
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let path = hdisks
                .iter()
                .find(|d| int(d, "position") == Some(u64::from(p)))
                .map(|d| s(d, "path"))
                .unwrap_or_default();
            let file = path.rsplit(['\\', '/']).next().unwrap_or_default();
            let name = file.rsplit_once('.').map_or(file, |(a, _)| a);
            json!({
                "position": p, "userdevice": p.to_string(), "bootable": i == 0, "mode": "RW", "unpluggable": false,
                "vbd_other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}, "vdi_uuid": "",
                "name_label": if name.is_empty() { format!("{} disk {p}", config.name) } else { name.to_owned() },
                "name_description": format!("restored from {path}"),
                "virtual_size": planned.iter().find(|d| d.position == p).map_or(0, |d| d.size), "vdi_type": "user",
                "sharable": false, "vdi_other_config": {}, "tags": [], "sr_uuid": "", "sr_name": "",
            })
        })
        .collect();
    let nics: Vec<Value> = config
        .nics
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mac = n.mac.clone().unwrap_or_default().replace([':', '-'], "").to_ascii_lowercase();
            let mac = if mac.len() == 12 {
                (0..6).map(|k| &mac[k * 2..k * 2 + 2]).collect::<Vec<_>>().join(":")
            } else {
                String::new()
            };
            json!({
                "device": i.to_string(), "mac": mac, "mtu": 1500, "network_uuid": "",
                "network_name": n.network.clone().unwrap_or_default(), "other_config": {},
                "locking_mode": "network_default", "ipv4_allowed": [], "ipv6_allowed": [],
                "qos_algorithm_type": "", "qos_algorithm_params": {},
            })
        })
        .collect();
    if generation == 2 {
        warnings.push(
            "generation 2 (UEFI) restored as a UEFI guest: the pool needs UEFI support (XCP-ng 8.2+, XenServer 8+)"
                .into(),
        );
    }
    warnings.push(
        "Hyper-V integration services have no use on Xen: the guest needs Xen PV drivers (Windows: XenServer VM Tools; Linux: xen-blkfront, xen-netfront) for fast disk and network"
            .into(),
    );
    warnings.push("not carried to Xen: Hyper-V's configuration version, checkpoints and RCT ids".into());
    let xen = json!({
        "schema": 1, "uuid": "", "vm": vm, "disks": disks, "cdroms": [], "nics": nics, "snapshot": null,
    });
    let mut out = config.clone();
    out.hypervisor = "xen".into();
    out.extra.insert("xen".into(), xen);
    Ok((out, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pd(p: &[u32]) -> Vec<PlannedDisk> {
        p.iter().map(|&position| PlannedDisk { position, size: 1 << 20 }).collect()
    }

    fn xen_vm(firmware: &str, secureboot: &str) -> VmInfo {
        let mut v = VmInfo::named("web");
        v.hypervisor = "xen".into();
        v.vcpus = Some(3);
        v.memory_bytes = Some((3 << 30) + 1);
        let mut nic = alike_core::NicInfo::default();
        nic.device = "0".into();
        nic.mac = Some("aa:bb:cc:00:11:22".into());
        nic.network = Some("Pool-wide network".into());
        v.nics = vec![nic];
        v.extra.insert(
            "xen".into(),
            json!({"schema": 1, "vm": {"HVM_boot_policy": "BIOS order", "HVM_boot_params": {"firmware": firmware},
                "platform": {"secureboot": secureboot, "viridian": "true"}},
                "disks": [{"position": 0, "name_label": "web-os"}, {"position": 1, "name_label": "web-data"}],
                "cdroms": [{"userdevice": "3"}]}),
        );
        v
    }

    #[test]
    fn xen_bios_becomes_generation_1_with_the_boot_disk_on_ide() {
        let (hv, w) = for_host(&xen_vm("bios", "false"), "hyperv", &pd(&[1, 0])).unwrap();
        let c = &hv.extra["hyperv"];
        assert_eq!((c["generation"].as_u64(), c["secure_boot"].as_bool()), (Some(1), Some(false)));
        assert_eq!((c["vcpus"].as_u64(), c["memory_mb"].as_u64()), (Some(3), Some(3074)));
        assert_eq!(c["disks"][0]["controller"], "ide");
        assert_eq!(c["disks"][0]["path"], "C:\\web-os.vhdx");
        assert_eq!((c["disks"][1]["controller"].as_str(), c["disks"][1]["location"].as_u64()), (Some("scsi"), Some(0)));
        assert_eq!(c["nics"][0]["mac"], "AABBCC001122");
        assert_eq!(c["nics"][0]["switch"], "Pool-wide network");
        assert!(w.iter().any(|x| x.contains("CD drive")), "{w:?}");
        assert!(w.iter().any(|x| x.contains("platform flags")), "{w:?}");
    }

    #[test]
    fn xen_uefi_becomes_generation_2_and_back() {
        let (hv, _) = for_host(&xen_vm("uefi", "true"), "hyperv", &pd(&[0, 1])).unwrap();
        let c = &hv.extra["hyperv"];
        assert_eq!((c["generation"].as_u64(), c["secure_boot"].as_bool()), (Some(2), Some(true)));
        assert!(c["disks"].as_array().unwrap().iter().all(|d| d["controller"] == "scsi"));
        let (x, w) = for_host(&hv, "xen", &pd(&[0, 1])).unwrap();
        let vm = &x.extra["xen"]["vm"];
        assert_eq!(vm["HVM_boot_params"]["firmware"], "uefi");
        assert_eq!(vm["platform"]["secureboot"], "true");
        assert_eq!(x.extra["xen"]["nics"][0]["mac"], "aa:bb:cc:00:11:22");
        assert_eq!(x.extra["xen"]["disks"][1]["userdevice"], "1");
        assert_eq!(x.extra["xen"]["disks"][1]["virtual_size"], 1 << 20);
        assert!(!w.is_empty());
    }

    #[test]
    fn same_host_is_unchanged_and_raw_is_refused() {
        let v = xen_vm("bios", "false");
        assert_eq!(for_host(&v, "xen", &pd(&[0])).unwrap(), (v, vec![]));
        assert!(for_host(&VmInfo::named("x"), "hyperv", &pd(&[0])).is_err());
    }
}
