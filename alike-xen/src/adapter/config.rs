//! [`XenVmConfig`]: a VM's configuration as a version records it, captured
//! from XAPI records and given back to `VM.create`, `VDI.create`,
//! `VBD.create` and `VIF.create` at restore.

use std::collections::BTreeMap;

use alike_core::{NicInfo, VmInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{Context, PoolError, PoolResult};
use super::pool::{Raw, XenPool, device_order, flag, is_ref, num, parse_vbd, parse_vm, string_map, strings, text};

/// The `VM` fields a restore gives back to `VM.create` (those of XAPI's
/// constructor that describe the VM rather than its state), and
/// `bios_strings`, set after creation. Fields a pool's XAPI does not send
/// are skipped.
pub(crate) const VM_FIELDS: &[&str] = &[
    "name_label",
    "name_description",
    "user_version",
    "memory_target",
    "memory_static_max",
    "memory_dynamic_max",
    "memory_dynamic_min",
    "memory_static_min",
    "VCPUs_params",
    "VCPUs_max",
    "VCPUs_at_startup",
    "actions_after_softreboot",
    "actions_after_shutdown",
    "actions_after_reboot",
    "actions_after_crash",
    "PV_bootloader",
    "PV_kernel",
    "PV_ramdisk",
    "PV_args",
    "PV_bootloader_args",
    "PV_legacy_args",
    "HVM_boot_policy",
    "HVM_boot_params",
    "HVM_shadow_multiplier",
    "platform",
    "PCI_bus",
    "other_config",
    "recommendations",
    "xenstore_data",
    "ha_always_run",
    "ha_restart_priority",
    "tags",
    "blocked_operations",
    "start_delay",
    "shutdown_delay",
    "order",
    "hardware_platform_version",
    "has_vendor_device",
    "reference_label",
    "domain_type",
    "NVRAM",
    "bios_strings",
];

/// Fields set after `VM.create` (not constructor arguments).
pub(crate) const VM_SET_AFTER: &[&str] = &["bios_strings"];

/// A VM's configuration, as a version records it (`VmInfo::extra["xen"]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct XenVmConfig {
    /// Layout version of this record (1).
    pub schema: u32,
    /// The VM's uuid.
    pub uuid: String,
    /// The VM record's configuration fields (those of XAPI's `VM.create`
    /// that describe the VM rather than its state, and `bios_strings`), as
    /// XAPI sent them: name, description, memory, vCPUs, boot (HVM policy
    /// and parameters, PV kernel and bootloader), platform, `other_config`,
    /// tags…
    pub vm: serde_json::Map<String, Value>,
    /// The disks, by position.
    pub disks: Vec<XenDiskConfig>,
    /// CD drives (recreated empty).
    pub cdroms: Vec<XenCdConfig>,
    /// Network interfaces, by device.
    pub nics: Vec<XenNicConfig>,
    /// The snapshot the version was read from.
    pub snapshot: Option<XenSnapshotInfo>,
}

impl Default for XenVmConfig {
    fn default() -> XenVmConfig {
        XenVmConfig {
            schema: 1,
            uuid: String::new(),
            vm: serde_json::Map::new(),
            disks: Vec::new(),
            cdroms: Vec::new(),
            nics: Vec::new(),
            snapshot: None,
        }
    }
}

/// A disk of a [`XenVmConfig`]: its VBD and VDI settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct XenDiskConfig {
    /// Position in the VM (0-based, by `userdevice`): the disk number of the version.
    pub position: u32,
    /// The VBD's `userdevice`.
    pub userdevice: String,
    /// Whether the VM boots from it.
    pub bootable: bool,
    /// `RW` or `RO`.
    pub mode: String,
    /// Whether it may be hot-unplugged.
    pub unpluggable: bool,
    /// The VBD's `other_config`.
    pub vbd_other_config: BTreeMap<String, String>,
    /// The VBD's QoS algorithm.
    pub qos_algorithm_type: String,
    /// Its parameters.
    pub qos_algorithm_params: BTreeMap<String, String>,
    /// The VDI's uuid.
    pub vdi_uuid: String,
    /// The VDI's name.
    pub name_label: String,
    /// The VDI's description.
    pub name_description: String,
    /// Virtual size, bytes.
    pub virtual_size: u64,
    /// The VDI's type (`user`, `system`).
    pub vdi_type: String,
    /// Whether several VMs may use it.
    pub sharable: bool,
    /// The VDI's `other_config`.
    pub vdi_other_config: BTreeMap<String, String>,
    /// The VDI's tags.
    pub tags: Vec<String>,
    /// The SR it was on (uuid).
    pub sr_uuid: String,
    /// The SR's name.
    pub sr_name: String,
}

/// A CD drive of a [`XenVmConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct XenCdConfig {
    /// The VBD's `userdevice`.
    pub userdevice: String,
    /// Whether the VM boots from it.
    pub bootable: bool,
    /// The VBD's `other_config`.
    pub vbd_other_config: BTreeMap<String, String>,
}

/// A network interface of a [`XenVmConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct XenNicConfig {
    /// Device number ("0"…).
    pub device: String,
    /// MAC address.
    pub mac: String,
    /// MTU.
    pub mtu: u64,
    /// The network's uuid.
    pub network_uuid: String,
    /// The network's name.
    pub network_name: String,
    /// The VIF's `other_config`.
    pub other_config: BTreeMap<String, String>,
    /// `network_default`, `locked`, `unlocked`, `disabled`.
    pub locking_mode: String,
    /// IPv4 addresses allowed when locked.
    pub ipv4_allowed: Vec<String>,
    /// IPv6 addresses allowed when locked.
    pub ipv6_allowed: Vec<String>,
    /// The VIF's QoS algorithm.
    pub qos_algorithm_type: String,
    /// Its parameters.
    pub qos_algorithm_params: BTreeMap<String, String>,
}

/// The snapshot a version was read from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct XenSnapshotInfo {
    /// The snapshot VM's uuid.
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// XAPI's `snapshot_time`.
    pub time: String,
    /// `crash-consistent` or `quiesced`.
    pub consistency: String,
    /// Per disk position: `nbd` or `export`.
    pub transports: Vec<String>,
}

impl XenVmConfig {
    /// The VM's name.
    pub fn name(&self) -> &str {
        self.vm.get("name_label").and_then(Value::as_str).unwrap_or_default()
    }

    /// The version's [`VmInfo`]: name, uuid, `hypervisor = "xen"`, vCPUs
    /// (at start-up), memory (static maximum), NICs (device, network name,
    /// MAC), and this whole record as `extra["xen"]`.
    pub fn to_vm_info(&self) -> VmInfo {
        let mut info = VmInfo::named(self.name());
        info.uuid = (!self.uuid.is_empty()).then(|| self.uuid.clone());
        info.hypervisor = "xen".into();
        let int = |k: &str| self.vm.get(k).and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())));
        info.vcpus = int("VCPUs_at_startup").and_then(|n| u32::try_from(n).ok());
        info.memory_bytes = int("memory_static_max");
        info.nics = self
            .nics
            .iter()
            .map(|n| {
                let mut nic = NicInfo::default();
                nic.device = n.device.clone();
                nic.network = (!n.network_name.is_empty()).then(|| n.network_name.clone());
                nic.mac = (!n.mac.is_empty()).then(|| n.mac.clone());
                nic
            })
            .collect();
        if let Ok(v) = serde_json::to_value(self) {
            info.extra.insert("xen".into(), v);
        }
        info
    }

    /// The configuration a version recorded (`extra["xen"]`).
    ///
    /// # Errors
    /// [`PoolError::BadConfig`] when the version was not backed up from
    /// XAPI or its record does not decode.
    pub fn from_vm_info(info: &VmInfo) -> PoolResult<XenVmConfig> {
        let Some(v) = info.extra.get("xen") else {
            return Err(PoolError::BadConfig(format!(
                "VM {:?} was backed up from {:?}, not from a XenServer/XCP-ng pool (no Xen configuration recorded)",
                info.name, info.hypervisor
            )));
        };
        let c: XenVmConfig = serde_json::from_value(v.clone()).map_err(|e| {
            PoolError::BadConfig(format!("the Xen configuration of VM {:?} does not decode: {e}", info.name))
        })?;
        if c.schema != 1 {
            return Err(PoolError::BadConfig(format!(
                "the Xen configuration of VM {:?} has layout {} (this build knows 1)",
                info.name, c.schema
            )));
        }
        Ok(c)
    }
}

/// A captured configuration with the refs of its disks' VDIs (by position).
pub(crate) struct Captured {
    pub(crate) config: XenVmConfig,
    /// Per position: (VDI ref, VDI record as sent).
    pub(crate) disk_vdis: Vec<(String, Raw)>,
}

impl XenPool {
    /// The configuration of a VM (ref) as a version records it.
    ///
    /// # Errors
    /// [`PoolError::Xen`] when a record cannot be read.
    pub fn vm_config(&self, vm_ref: &str) -> PoolResult<XenVmConfig> {
        let raw = self.raw("VM", vm_ref).ctx(|| format!("reading VM {vm_ref}"))?;
        Ok(self.capture(vm_ref, &raw)?.config)
    }

    /// Captures a VM's configuration from its record and its VBDs, VDIs, SRs, VIFs and networks.
    pub(crate) fn capture(&self, vm_ref: &str, raw: &Raw) -> PoolResult<Captured> {
        let rec = parse_vm(raw, vm_ref)?;
        let who = format!("VM {} ({})", rec.name_label, rec.uuid);
        let mut config = XenVmConfig { uuid: rec.uuid.clone(), ..XenVmConfig::default() };
        for f in VM_FIELDS {
            if let Some(v) = raw.get(*f) {
                config.vm.insert((*f).to_owned(), v.clone());
            }
        }
        let mut disks: Vec<(String, XenDiskConfig, String, Raw)> = Vec::new();
        let mut srs: BTreeMap<String, Raw> = BTreeMap::new();
        for vbd_ref in &rec.vbds {
            let vbd_raw = self.raw("VBD", vbd_ref).ctx(|| format!("reading VBD {vbd_ref} of {who}"))?;
            let vbd = parse_vbd(&vbd_raw, vbd_ref)?;
            if vbd.kind == "CD" || vbd.kind == "Floppy" {
                if vbd.kind == "CD" {
                    config.cdroms.push(XenCdConfig {
                        userdevice: vbd.userdevice.clone(),
                        bootable: vbd.bootable,
                        vbd_other_config: string_map(&vbd_raw, "other_config"),
                    });
                }
                continue;
            }
            if !vbd.is_disk() {
                continue;
            }
            let vdi = self.raw("VDI", &vbd.vdi).ctx(|| format!("reading VDI {} of {who}", vbd.vdi))?;
            let sr_ref = text(&vdi, "SR");
            if is_ref(&sr_ref) && !srs.contains_key(&sr_ref) {
                let sr = self.raw("SR", &sr_ref).ctx(|| format!("reading SR {sr_ref} of {who}"))?;
                srs.insert(sr_ref.clone(), sr);
            }
            let sr = srs.get(&sr_ref);
            let d = XenDiskConfig {
                position: 0,
                userdevice: vbd.userdevice.clone(),
                bootable: vbd.bootable,
                mode: vbd.mode.clone(),
                unpluggable: flag(&vbd_raw, "unpluggable"),
                vbd_other_config: string_map(&vbd_raw, "other_config"),
                qos_algorithm_type: text(&vbd_raw, "qos_algorithm_type"),
                qos_algorithm_params: string_map(&vbd_raw, "qos_algorithm_params"),
                vdi_uuid: text(&vdi, "uuid"),
                name_label: text(&vdi, "name_label"),
                name_description: text(&vdi, "name_description"),
                virtual_size: num(&vdi, "virtual_size"),
                vdi_type: text(&vdi, "type"),
                sharable: flag(&vdi, "sharable"),
                vdi_other_config: string_map(&vdi, "other_config"),
                tags: strings(&vdi, "tags"),
                sr_uuid: sr.map(|s| text(s, "uuid")).unwrap_or_default(),
                sr_name: sr.map(|s| text(s, "name_label")).unwrap_or_default(),
            };
            disks.push((vbd.userdevice, d, vbd.vdi, vdi));
        }
        disks.sort_by_key(|(ud, ..)| device_order(ud));
        config.cdroms.sort_by_key(|c| device_order(&c.userdevice));
        let mut disk_vdis = Vec::with_capacity(disks.len());
        for (i, (_, mut d, vdi_ref, vdi)) in disks.into_iter().enumerate() {
            d.position = i as u32;
            config.disks.push(d);
            disk_vdis.push((vdi_ref, vdi));
        }
        let mut nets: BTreeMap<String, Raw> = BTreeMap::new();
        for vif_ref in &rec.vifs {
            let vif = self.raw("VIF", vif_ref).ctx(|| format!("reading VIF {vif_ref} of {who}"))?;
            let net_ref = text(&vif, "network");
            if is_ref(&net_ref) && !nets.contains_key(&net_ref) {
                let n = self.raw("network", &net_ref).ctx(|| format!("reading network {net_ref} of {who}"))?;
                nets.insert(net_ref.clone(), n);
            }
            let net = nets.get(&net_ref);
            config.nics.push(XenNicConfig {
                device: text(&vif, "device"),
                mac: text(&vif, "MAC"),
                mtu: num(&vif, "MTU"),
                network_uuid: net.map(|n| text(n, "uuid")).unwrap_or_default(),
                network_name: net.map(|n| text(n, "name_label")).unwrap_or_default(),
                other_config: string_map(&vif, "other_config"),
                locking_mode: text(&vif, "locking_mode"),
                ipv4_allowed: strings(&vif, "ipv4_allowed"),
                ipv6_allowed: strings(&vif, "ipv6_allowed"),
                qos_algorithm_type: text(&vif, "qos_algorithm_type"),
                qos_algorithm_params: string_map(&vif, "qos_algorithm_params"),
            });
        }
        config.nics.sort_by_key(|n| device_order(&n.device));
        Ok(Captured { config, disk_vdis })
    }
}
