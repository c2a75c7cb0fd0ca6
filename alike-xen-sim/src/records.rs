//! XAPI classes and their records: the fields a real XAPI returns from
//! `<class>.get_record`, with defaults, which ones are derived from other
//! objects (reverse references such as `VM.VBDs`), and which ones a
//! `set_<field>` may write.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::value::{NULL_REF, Value};

/// The XAPI classes the simulator models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Class {
    /// `pool`
    Pool,
    /// `host`
    Host,
    /// `VM`
    Vm,
    /// `VBD`
    Vbd,
    /// `VDI`
    Vdi,
    /// `SR`
    Sr,
    /// `PBD`
    Pbd,
    /// `network`
    Network,
    /// `PIF`
    Pif,
    /// `VIF`
    Vif,
    /// `task`
    Task,
    /// `session`
    Session,
}

impl Class {
    /// Every class.
    pub const ALL: [Class; 12] = [
        Class::Pool,
        Class::Host,
        Class::Vm,
        Class::Vbd,
        Class::Vdi,
        Class::Sr,
        Class::Pbd,
        Class::Network,
        Class::Pif,
        Class::Vif,
        Class::Task,
        Class::Session,
    ];

    /// The name on the wire (`VM`, `network`, …), as in `HANDLE_INVALID`.
    pub fn name(self) -> &'static str {
        match self {
            Class::Pool => "pool",
            Class::Host => "host",
            Class::Vm => "VM",
            Class::Vbd => "VBD",
            Class::Vdi => "VDI",
            Class::Sr => "SR",
            Class::Pbd => "PBD",
            Class::Network => "network",
            Class::Pif => "PIF",
            Class::Vif => "VIF",
            Class::Task => "task",
            Class::Session => "session",
        }
    }

    /// The class called `name` (XAPI's method names are case-sensitive).
    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Fields computed from other objects at read time.
    pub(crate) fn derived(self) -> &'static [&'static str] {
        match self {
            Class::Vm => &["VBDs", "VIFs", "snapshots", "consoles", "allowed_operations", "children"],
            Class::Vdi => &["VBDs", "snapshots", "cbt_enabled", "allowed_operations", "physical_utilisation"],
            Class::Sr => &["VDIs", "PBDs", "physical_utilisation", "virtual_allocation"],
            Class::Network => &["VIFs", "PIFs"],
            Class::Host => &["resident_VMs", "PBDs", "PIFs"],
            _ => &[],
        }
    }

    /// Fields a `set_<field>` call may write.
    pub(crate) fn writable(self) -> &'static [&'static str] {
        match self {
            Class::Vm => &[
                "name_label",
                "name_description",
                "user_version",
                "is_a_template",
                "affinity",
                "memory_static_max",
                "memory_static_min",
                "memory_dynamic_max",
                "memory_dynamic_min",
                "VCPUs_max",
                "VCPUs_at_startup",
                "VCPUs_params",
                "actions_after_shutdown",
                "actions_after_reboot",
                "actions_after_crash",
                "actions_after_softreboot",
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
                "tags",
                "blocked_operations",
                "suspend_SR",
                "order",
                "start_delay",
                "shutdown_delay",
                "ha_restart_priority",
                "domain_type",
                "NVRAM",
                "has_vendor_device",
                "bios_strings",
            ],
            Class::Vdi => &[
                "name_label",
                "name_description",
                "other_config",
                "sm_config",
                "xenstore_data",
                "tags",
                "sharable",
                "read_only",
                "on_boot",
                "allow_caching",
            ],
            Class::Vbd => &[
                "other_config",
                "mode",
                "userdevice",
                "bootable",
                "type",
                "unpluggable",
                "qos_algorithm_type",
                "qos_algorithm_params",
            ],
            Class::Vif => &[
                "other_config",
                "locking_mode",
                "ipv4_allowed",
                "ipv6_allowed",
                "qos_algorithm_type",
                "qos_algorithm_params",
            ],
            Class::Sr => &["name_label", "name_description", "other_config", "tags", "sm_config", "shared"],
            Class::Network => {
                &["name_label", "name_description", "other_config", "tags", "MTU", "default_locking_mode"]
            }
            Class::Pool => &[
                "name_label",
                "name_description",
                "other_config",
                "default_SR",
                "suspend_image_SR",
                "crash_dump_SR",
                "tags",
            ],
            Class::Host => &["name_label", "name_description", "other_config", "hostname", "logging", "tags"],
            Class::Task => &["other_config", "progress", "status", "result", "error_info", "name_description"],
            Class::Pbd | Class::Pif => &["other_config"],
            Class::Session => &["other_config"],
        }
    }

    /// Whether `Class.get_by_name_label` exists.
    pub(crate) fn has_name_label(self) -> bool {
        !matches!(self, Class::Vbd | Class::Pbd | Class::Pif | Class::Vif | Class::Session)
    }
}

/// A record: field name to value.
pub(crate) type Record = BTreeMap<String, Value>;

fn s(v: &str) -> Value {
    Value::s(v)
}
fn null() -> Value {
    Value::s(NULL_REF)
}
fn empty_set() -> Value {
    Value::Array(Vec::new())
}
fn never() -> Value {
    Value::DateTime("19700101T00:00:00Z".to_owned())
}

/// The full default record of `class` (derived fields included as empty).
pub(crate) fn defaults(class: Class) -> Record {
    let mut r = Record::new();
    let mut put = |k: &str, v: Value| {
        r.insert(k.to_owned(), v);
    };
    put("uuid", s(""));
    match class {
        Class::Pool => {
            for (k, v) in [
                ("name_label", s("")),
                ("name_description", s("")),
                ("master", null()),
                ("default_SR", null()),
                ("suspend_image_SR", null()),
                ("crash_dump_SR", null()),
                ("other_config", Value::map()),
                ("ha_enabled", Value::Bool(false)),
                ("ha_configuration", Value::map()),
                ("ha_statefiles", empty_set()),
                ("ha_host_failures_to_tolerate", Value::Int(0)),
                ("ha_plan_exists_for", Value::Int(0)),
                ("ha_allow_overcommit", Value::Bool(false)),
                ("ha_overcommitted", Value::Bool(false)),
                ("blobs", Value::map()),
                ("tags", empty_set()),
                ("gui_config", Value::map()),
                ("health_check_config", Value::map()),
                ("wlb_url", s("")),
                ("wlb_username", s("")),
                ("wlb_enabled", Value::Bool(false)),
                ("wlb_verify_cert", Value::Bool(false)),
                ("redo_log_enabled", Value::Bool(false)),
                ("redo_log_vdi", null()),
                ("vswitch_controller", s("")),
                ("restrictions", Value::map()),
                ("metadata_VDIs", empty_set()),
                ("allowed_operations", empty_set()),
                ("current_operations", Value::map()),
                ("cpu_info", Value::map()),
                ("policy_no_vendor_device", Value::Bool(false)),
                ("live_patching_disabled", Value::Bool(false)),
                ("igmp_snooping_enabled", Value::Bool(false)),
                ("is_psr_pending", Value::Bool(false)),
                ("tls_verification_enabled", Value::Bool(false)),
                ("repositories", empty_set()),
                ("client_certificate_auth_enabled", Value::Bool(false)),
                ("client_certificate_auth_name", s("")),
                ("repository_proxy_url", s("")),
                ("repository_proxy_username", s("")),
                ("repository_proxy_password", null()),
                ("migration_compression", Value::Bool(false)),
                ("coordinator_bias", Value::Bool(true)),
            ] {
                put(k, v);
            }
        }
        Class::Host => {
            for (k, v) in [
                ("name_label", s("")),
                ("name_description", s("")),
                ("memory_overhead", Value::Int(0)),
                ("allowed_operations", empty_set()),
                ("current_operations", Value::map()),
                ("API_version_major", Value::Int(2)),
                ("API_version_minor", Value::Int(21)),
                ("API_version_vendor", s("XenSource")),
                ("API_version_vendor_implementation", Value::map()),
                ("enabled", Value::Bool(true)),
                ("software_version", Value::map()),
                ("other_config", Value::map()),
                ("capabilities", empty_set()),
                ("cpu_configuration", Value::map()),
                ("sched_policy", s("credit")),
                ("supported_bootloaders", Value::strings(["pygrub", "eliloader"])),
                ("resident_VMs", empty_set()),
                ("logging", Value::map()),
                ("PIFs", empty_set()),
                ("suspend_image_sr", null()),
                ("crash_dump_sr", null()),
                ("crashdumps", empty_set()),
                ("patches", empty_set()),
                ("updates", empty_set()),
                ("PBDs", empty_set()),
                ("host_CPUs", empty_set()),
                ("cpu_info", Value::map()),
                ("hostname", s("")),
                ("address", s("")),
                ("metrics", null()),
                ("license_params", Value::map()),
                ("ha_statefiles", empty_set()),
                ("ha_network_peers", empty_set()),
                ("blobs", Value::map()),
                ("tags", empty_set()),
                ("external_auth_type", s("")),
                ("external_auth_service_name", s("")),
                ("external_auth_configuration", Value::map()),
                ("edition", s("xcp-ng")),
                ("license_server", Value::map()),
                ("bios_strings", Value::map()),
                ("power_on_mode", s("")),
                ("power_on_config", Value::map()),
                ("local_cache_sr", null()),
                ("chipset_info", Value::map()),
                ("PCIs", empty_set()),
                ("PGPUs", empty_set()),
                ("PUSBs", empty_set()),
                ("ssl_legacy", Value::Bool(false)),
                ("guest_VCPUs_params", Value::map()),
                ("display", s("enabled")),
                ("virtual_hardware_platform_versions", Value::Array(vec![Value::Int(0), Value::Int(1), Value::Int(2)])),
                ("control_domain", null()),
                ("updates_requiring_reboot", empty_set()),
                ("features", empty_set()),
                ("iscsi_iqn", s("")),
                ("multipathing", Value::Bool(false)),
                ("uefi_certificates", s("")),
                ("certificates", empty_set()),
                ("editions", Value::strings(["xcp-ng"])),
                ("pending_guidances", empty_set()),
                ("tls_verification_enabled", Value::Bool(false)),
                ("https_only", Value::Bool(false)),
            ] {
                put(k, v);
            }
        }
        Class::Vm => {
            for (k, v) in [
                ("allowed_operations", empty_set()),
                ("current_operations", Value::map()),
                ("name_label", s("")),
                ("name_description", s("")),
                ("power_state", s("Halted")),
                ("user_version", Value::Int(1)),
                ("is_a_template", Value::Bool(false)),
                ("is_default_template", Value::Bool(false)),
                ("suspend_VDI", null()),
                ("resident_on", null()),
                ("scheduled_to_be_resident_on", null()),
                ("affinity", null()),
                ("memory_overhead", Value::Int(0)),
                ("memory_target", Value::Int(0)),
                ("memory_static_max", Value::Int(0)),
                ("memory_dynamic_max", Value::Int(0)),
                ("memory_dynamic_min", Value::Int(0)),
                ("memory_static_min", Value::Int(0)),
                ("VCPUs_params", Value::map()),
                ("VCPUs_max", Value::Int(1)),
                ("VCPUs_at_startup", Value::Int(1)),
                ("actions_after_softreboot", s("soft_reboot")),
                ("actions_after_shutdown", s("destroy")),
                ("actions_after_reboot", s("restart")),
                ("actions_after_crash", s("restart")),
                ("consoles", empty_set()),
                ("VIFs", empty_set()),
                ("VBDs", empty_set()),
                ("VUSBs", empty_set()),
                ("crash_dumps", empty_set()),
                ("VTPMs", empty_set()),
                ("PV_bootloader", s("")),
                ("PV_kernel", s("")),
                ("PV_ramdisk", s("")),
                ("PV_args", s("")),
                ("PV_bootloader_args", s("")),
                ("PV_legacy_args", s("")),
                ("HVM_boot_policy", s("")),
                ("HVM_boot_params", Value::map()),
                ("HVM_shadow_multiplier", Value::Float(1.0)),
                ("platform", Value::map()),
                ("PCI_bus", s("")),
                ("other_config", Value::map()),
                ("domid", Value::Int(-1)),
                ("domarch", s("")),
                ("last_boot_CPU_flags", Value::map()),
                ("is_control_domain", Value::Bool(false)),
                ("metrics", null()),
                ("guest_metrics", null()),
                ("last_booted_record", s("")),
                ("recommendations", s("")),
                ("xenstore_data", Value::map()),
                ("ha_always_run", Value::Bool(false)),
                ("ha_restart_priority", s("")),
                ("is_a_snapshot", Value::Bool(false)),
                ("snapshot_of", null()),
                ("snapshots", empty_set()),
                ("snapshot_time", never()),
                ("transportable_snapshot_id", s("")),
                ("blobs", Value::map()),
                ("tags", empty_set()),
                ("blocked_operations", Value::map()),
                ("snapshot_info", Value::map()),
                ("snapshot_metadata", s("")),
                ("parent", null()),
                ("children", empty_set()),
                ("bios_strings", Value::map()),
                ("protection_policy", null()),
                ("is_snapshot_from_vmpp", Value::Bool(false)),
                ("snapshot_schedule", null()),
                ("is_vmss_snapshot", Value::Bool(false)),
                ("appliance", null()),
                ("start_delay", Value::Int(0)),
                ("shutdown_delay", Value::Int(0)),
                ("order", Value::Int(0)),
                ("VGPUs", empty_set()),
                ("attached_PCIs", empty_set()),
                ("suspend_SR", null()),
                ("version", Value::Int(0)),
                ("generation_id", s("")),
                ("hardware_platform_version", Value::Int(0)),
                ("has_vendor_device", Value::Bool(false)),
                ("requires_reboot", Value::Bool(false)),
                ("reference_label", s("")),
                ("domain_type", s("hvm")),
                ("NVRAM", Value::map()),
                ("pending_guidances", empty_set()),
            ] {
                put(k, v);
            }
        }
        Class::Vbd => {
            for (k, v) in [
                ("allowed_operations", empty_set()),
                ("current_operations", Value::map()),
                ("VM", null()),
                ("VDI", null()),
                ("device", s("")),
                ("userdevice", s("")),
                ("bootable", Value::Bool(false)),
                ("mode", s("RW")),
                ("type", s("Disk")),
                ("unpluggable", Value::Bool(true)),
                ("storage_lock", Value::Bool(false)),
                ("empty", Value::Bool(false)),
                ("other_config", Value::map()),
                ("currently_attached", Value::Bool(false)),
                ("status_code", Value::Int(0)),
                ("status_detail", s("")),
                ("runtime_properties", Value::map()),
                ("qos_algorithm_type", s("")),
                ("qos_algorithm_params", Value::map()),
                ("qos_supported_algorithms", empty_set()),
                ("metrics", null()),
            ] {
                put(k, v);
            }
        }
        Class::Vdi => {
            for (k, v) in [
                ("name_label", s("")),
                ("name_description", s("")),
                ("allowed_operations", empty_set()),
                ("current_operations", Value::map()),
                ("SR", null()),
                ("VBDs", empty_set()),
                ("crash_dumps", empty_set()),
                ("virtual_size", Value::Int(0)),
                ("physical_utilisation", Value::Int(0)),
                ("type", s("user")),
                ("sharable", Value::Bool(false)),
                ("read_only", Value::Bool(false)),
                ("other_config", Value::map()),
                ("storage_lock", Value::Bool(false)),
                ("location", s("")),
                ("managed", Value::Bool(true)),
                ("missing", Value::Bool(false)),
                ("parent", null()),
                ("xenstore_data", Value::map()),
                ("sm_config", Value::map()),
                ("is_a_snapshot", Value::Bool(false)),
                ("snapshot_of", null()),
                ("snapshots", empty_set()),
                ("snapshot_time", never()),
                ("tags", empty_set()),
                ("allow_caching", Value::Bool(false)),
                ("on_boot", s("persist")),
                ("metadata_of_pool", null()),
                ("metadata_latest", Value::Bool(false)),
                ("is_tools_iso", Value::Bool(false)),
                ("cbt_enabled", Value::Bool(false)),
            ] {
                put(k, v);
            }
        }
        Class::Sr => {
            for (k, v) in [
                ("name_label", s("")),
                ("name_description", s("")),
                ("allowed_operations", empty_set()),
                ("current_operations", Value::map()),
                ("VDIs", empty_set()),
                ("PBDs", empty_set()),
                ("virtual_allocation", Value::Int(0)),
                ("physical_utilisation", Value::Int(0)),
                ("physical_size", Value::Int(0)),
                ("type", s("ext")),
                ("content_type", s("user")),
                ("shared", Value::Bool(false)),
                ("other_config", Value::map()),
                ("tags", empty_set()),
                ("sm_config", Value::map()),
                ("blobs", Value::map()),
                ("local_cache_enabled", Value::Bool(false)),
                ("introduced_by", null()),
                ("clustered", Value::Bool(false)),
                ("is_tools_sr", Value::Bool(false)),
            ] {
                put(k, v);
            }
        }
        Class::Pbd => {
            for (k, v) in [
                ("host", null()),
                ("SR", null()),
                ("device_config", Value::map()),
                ("currently_attached", Value::Bool(true)),
                ("other_config", Value::map()),
            ] {
                put(k, v);
            }
        }
        Class::Network => {
            for (k, v) in [
                ("name_label", s("")),
                ("name_description", s("")),
                ("allowed_operations", empty_set()),
                ("current_operations", Value::map()),
                ("VIFs", empty_set()),
                ("PIFs", empty_set()),
                ("MTU", Value::Int(1500)),
                ("other_config", Value::map()),
                ("bridge", s("")),
                ("managed", Value::Bool(true)),
                ("blobs", Value::map()),
                ("tags", empty_set()),
                ("default_locking_mode", s("unlocked")),
                ("assigned_ips", Value::map()),
                ("purpose", empty_set()),
            ] {
                put(k, v);
            }
        }
        Class::Pif => {
            for (k, v) in [
                ("device", s("eth0")),
                ("network", null()),
                ("host", null()),
                ("MAC", s("")),
                ("MTU", Value::Int(1500)),
                ("VLAN", Value::Int(-1)),
                ("metrics", null()),
                ("physical", Value::Bool(true)),
                ("currently_attached", Value::Bool(true)),
                ("ip_configuration_mode", s("Static")),
                ("IP", s("")),
                ("netmask", s("255.0.0.0")),
                ("gateway", s("")),
                ("DNS", s("")),
                ("management", Value::Bool(true)),
                ("other_config", Value::map()),
                ("primary_address_type", s("IPv4")),
                ("IPv6", empty_set()),
                ("managed", Value::Bool(true)),
            ] {
                put(k, v);
            }
        }
        Class::Vif => {
            for (k, v) in [
                ("allowed_operations", empty_set()),
                ("current_operations", Value::map()),
                ("device", s("")),
                ("network", null()),
                ("VM", null()),
                ("MAC", s("")),
                ("MTU", Value::Int(1500)),
                ("other_config", Value::map()),
                ("currently_attached", Value::Bool(false)),
                ("status_code", Value::Int(0)),
                ("status_detail", s("")),
                ("runtime_properties", Value::map()),
                ("qos_algorithm_type", s("")),
                ("qos_algorithm_params", Value::map()),
                ("qos_supported_algorithms", empty_set()),
                ("metrics", null()),
                ("MAC_autogenerated", Value::Bool(false)),
                ("locking_mode", s("network_default")),
                ("ipv4_allowed", empty_set()),
                ("ipv6_allowed", empty_set()),
                ("ipv4_configuration_mode", s("None")),
                ("ipv4_addresses", empty_set()),
                ("ipv4_gateway", s("")),
                ("ipv6_configuration_mode", s("None")),
                ("ipv6_addresses", empty_set()),
                ("ipv6_gateway", s("")),
                ("PCI", null()),
            ] {
                put(k, v);
            }
        }
        Class::Task => {
            for (k, v) in [
                ("name_label", s("")),
                ("name_description", s("")),
                ("allowed_operations", empty_set()),
                ("current_operations", Value::map()),
                ("created", never()),
                ("finished", never()),
                ("status", s("pending")),
                ("resident_on", null()),
                ("progress", Value::Float(0.0)),
                ("type", s("<none/>")),
                ("result", s("")),
                ("error_info", empty_set()),
                ("other_config", Value::map()),
                ("subtask_of", null()),
                ("subtasks", empty_set()),
                ("backtrace", s("()")),
            ] {
                put(k, v);
            }
        }
        Class::Session => {
            for (k, v) in [
                ("this_host", null()),
                ("this_user", null()),
                ("last_active", never()),
                ("pool", Value::Bool(false)),
                ("other_config", Value::map()),
                ("is_local_superuser", Value::Bool(true)),
                ("subject", null()),
                ("validation_time", never()),
                ("auth_user_sid", s("")),
                ("auth_user_name", s("")),
                ("rbac_permissions", empty_set()),
                ("tasks", empty_set()),
                ("parent", null()),
                ("originator", s("")),
                ("client_certificate", Value::Bool(false)),
            ] {
                put(k, v);
            }
        }
    }
    r
}

/// Converts `v` to the type of `like` (XML-RPC sends ints as strings, refs
/// and enums are strings, maps hold strings).
pub(crate) fn coerce(like: &Value, v: &Value) -> Option<Value> {
    Some(match like {
        Value::Int(_) => Value::Int(v.as_int()?),
        Value::Float(_) => Value::Float(v.as_float()?),
        Value::Bool(_) => Value::Bool(v.as_bool()?),
        Value::Str(_) => Value::s(v.as_str()?),
        Value::DateTime(_) => Value::DateTime(v.as_str()?.to_owned()),
        Value::Array(_) => v.as_array().map(|a| Value::Array(a.to_vec()))?,
        Value::Struct(_) => {
            let m = v.as_struct()?;
            Value::Struct(
                m.iter()
                    .map(|(k, x)| {
                        let x = match x {
                            Value::Int(i) => Value::s(i.to_string()),
                            Value::Bool(b) => Value::s(b.to_string()),
                            other => other.clone(),
                        };
                        (k.clone(), x)
                    })
                    .collect(),
            )
        }
    })
}
