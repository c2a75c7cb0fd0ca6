//! Typed records of the XAPI objects a backup reads. Fields are those
//! the adapter uses (`doc/data/xenapi.json` names); every other field of
//! the record is kept in `other`, so a VM's whole configuration can be
//! captured. Missing fields take their defaults; 64-bit integers are
//! accepted as JSON numbers or decimal strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::Result;
use crate::nbd::{NbdBuilder, ServerCertCheck};

/// XAPI's null reference.
pub const NULL_REF: &str = "OpaqueRef:NULL";

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    use serde::de::Error as _;
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| D::Error::custom(format!("{n} is not a size"))),
        Value::String(s) => s.trim().parse().map_err(|_| D::Error::custom(format!("{s:?} is not a number"))),
        Value::Null => Ok(0),
        other => Err(D::Error::custom(format!("{other} is not a number"))),
    }
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    use serde::de::Error as _;
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::String(s) => match s.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            _ => Err(D::Error::custom(format!("{s:?} is not a boolean"))),
        },
        Value::Null => Ok(false),
        other => Err(D::Error::custom(format!("{other} is not a boolean"))),
    }
}

/// A `VM` record (`VM.get_record`, `VM.get_all_records`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct VmRecord {
    /// The VM's uuid.
    pub uuid: String,
    /// Its name.
    pub name_label: String,
    /// Its description.
    pub name_description: String,
    /// `Halted`, `Paused`, `Running` or `Suspended`.
    pub power_state: String,
    /// A template (skipped when listing VMs).
    #[serde(deserialize_with = "lenient_bool")]
    pub is_a_template: bool,
    /// A snapshot (skipped when listing VMs).
    #[serde(deserialize_with = "lenient_bool")]
    pub is_a_snapshot: bool,
    /// The control domain, dom0 (skipped when listing VMs).
    #[serde(deserialize_with = "lenient_bool")]
    pub is_control_domain: bool,
    /// For a snapshot: the VM it was taken of.
    pub snapshot_of: String,
    /// The VM's snapshots.
    pub snapshots: Vec<String>,
    /// The VM's virtual block devices.
    #[serde(rename = "VBDs")]
    pub vbds: Vec<String>,
    /// The VM's network interfaces.
    #[serde(rename = "VIFs")]
    pub vifs: Vec<String>,
    /// Maximum static memory, bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub memory_static_max: u64,
    /// Maximum vCPUs.
    #[serde(rename = "VCPUs_max", deserialize_with = "lenient_u64")]
    pub vcpus_max: u64,
    /// vCPUs at start-up.
    #[serde(rename = "VCPUs_at_startup", deserialize_with = "lenient_u64")]
    pub vcpus_at_startup: u64,
    /// Platform settings.
    pub platform: BTreeMap<String, String>,
    /// HVM boot policy (`BIOS order`, or empty for PV).
    #[serde(rename = "HVM_boot_policy")]
    pub hvm_boot_policy: String,
    /// HVM boot parameters.
    #[serde(rename = "HVM_boot_params")]
    pub hvm_boot_params: BTreeMap<String, String>,
    /// Free-form settings.
    pub other_config: BTreeMap<String, String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl VmRecord {
    /// A guest VM: not a template, snapshot or the control domain.
    pub fn is_guest(&self) -> bool {
        !self.is_a_template && !self.is_a_snapshot && !self.is_control_domain
    }
}

/// A `VBD` record.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct VbdRecord {
    /// The VBD's uuid.
    pub uuid: String,
    /// The VM.
    #[serde(rename = "VM")]
    pub vm: String,
    /// The VDI (`OpaqueRef:NULL` for an empty CD drive).
    #[serde(rename = "VDI")]
    pub vdi: String,
    /// The device name once plugged (`xvda`).
    pub device: String,
    /// The position (`"0"`, `"1"`…): the disk order.
    pub userdevice: String,
    /// Whether the VM boots from it.
    #[serde(deserialize_with = "lenient_bool")]
    pub bootable: bool,
    /// `RO` or `RW`.
    pub mode: String,
    /// `Disk`, `CD` or `Floppy`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether no VDI is inserted.
    #[serde(deserialize_with = "lenient_bool")]
    pub empty: bool,
    /// Whether it is plugged now.
    #[serde(deserialize_with = "lenient_bool")]
    pub currently_attached: bool,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl VbdRecord {
    /// A disk with a VDI (not a CD drive, not empty).
    pub fn is_disk(&self) -> bool {
        self.kind == "Disk" && !self.empty && !self.vdi.is_empty() && self.vdi != NULL_REF
    }
}

/// A `VDI` record.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct VdiRecord {
    /// The VDI's uuid.
    pub uuid: String,
    /// Its name.
    pub name_label: String,
    /// Its description.
    pub name_description: String,
    /// The storage repository.
    #[serde(rename = "SR")]
    pub sr: String,
    /// The VBDs using it.
    #[serde(rename = "VBDs")]
    pub vbds: Vec<String>,
    /// Virtual size in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub virtual_size: u64,
    /// Bytes used on the SR.
    #[serde(deserialize_with = "lenient_u64")]
    pub physical_utilisation: u64,
    /// `user`, `system`, … `cbt_metadata` (data destroyed, change log kept).
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether several VMs may use it.
    #[serde(deserialize_with = "lenient_bool")]
    pub sharable: bool,
    /// Whether it is read-only (snapshots are).
    #[serde(deserialize_with = "lenient_bool")]
    pub read_only: bool,
    /// Whether it is a snapshot.
    #[serde(deserialize_with = "lenient_bool")]
    pub is_a_snapshot: bool,
    /// For a snapshot: the VDI it was taken of.
    pub snapshot_of: String,
    /// Whether changed-block tracking is on.
    #[serde(deserialize_with = "lenient_bool")]
    pub cbt_enabled: bool,
    /// Storage-manager settings (`vhd-parent`…).
    pub sm_config: BTreeMap<String, String>,
    /// Free-form settings.
    pub other_config: BTreeMap<String, String>,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A `task` record (`task.get_record`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TaskRecord {
    /// The task's uuid.
    pub uuid: String,
    /// Its label.
    pub name_label: String,
    /// `pending`, `success`, `failure`, `cancelling` or `cancelled`.
    pub status: String,
    /// 0.0 to 1.0 (not to be used for completion).
    pub progress: f64,
    /// On success: the XML-RPC encoding of the result.
    pub result: String,
    /// On failure: the error code, then its parameters.
    pub error_info: Vec<String>,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// How to reach a VDI over NBD (`VDI.get_nbd_info`, `vdi_nbd_server_info`).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct NbdInfo {
    /// The export name: `/<vdi-uuid>?session_id=<ref>` — holds the session, a secret.
    pub exportname: String,
    /// The host's address (IPv4, IPv6 or DNS name).
    pub address: String,
    /// The port (10809).
    #[serde(deserialize_with = "lenient_u64")]
    pub port: u64,
    /// The host's TLS certificate (PEM).
    pub cert: String,
    /// A DNS name in the certificate (for SNI).
    pub subject: String,
}

impl std::fmt::Debug for NbdInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdInfo")
            .field("exportname", &crate::nbd::redact_export(&self.exportname))
            .field("address", &self.address)
            .field("port", &self.port)
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("subject", &self.subject)
            .finish()
    }
}

impl NbdInfo {
    /// An [`NbdBuilder`] for this export, as XAPI's NBD server wants it:
    /// TLS with the server certificate **pinned to the `cert` XAPI gave**
    /// (it came over the authenticated XAPI connection, and pinning avoids
    /// depending on the certificate's names and CA flags), SNI `subject`;
    /// `NBD_OPT_EXPORT_NAME` and simple replies straight away (xapi-nbd
    /// answers `NBD_REP_ERR_UNSUP` to `GO` and `STRUCTURED_REPLY`). With an
    /// empty `cert` (an `insecure_nbd` network) the connection is plaintext.
    ///
    /// # Errors
    /// [`crate::Error::TlsSetup`] when `cert` holds no PEM certificate;
    /// [`crate::Error::InvalidArgument`] for a port over 65535.
    pub fn builder(&self) -> Result<NbdBuilder> {
        let port = u16::try_from(self.port)
            .map_err(|_| crate::Error::InvalidArgument(format!("NBD port {} out of range", self.port)))?;
        let mut b = NbdBuilder::new(self.address.clone(), port, self.exportname.clone());
        b.go(false).structured_replies(false);
        if !self.cert.trim().is_empty() {
            b.tls(ServerCertCheck::pin_pem(&self.cert)?);
            if !self.subject.is_empty() {
                b.tls_server_name(self.subject.clone());
            }
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_leniently_and_keep_other_fields() {
        let vm: VmRecord = serde_json::from_value(serde_json::json!({
            "uuid": "u", "name_label": "web", "power_state": "Running", "is_a_template": false,
            "VBDs": ["OpaqueRef:b"], "memory_static_max": "4294967296", "VCPUs_max": 4,
            "platform": {"viridian": "true"}, "domid": 3, "HVM_boot_policy": "BIOS order"
        }))
        .unwrap();
        assert_eq!(vm.memory_static_max, 4 << 30);
        assert_eq!(vm.vcpus_max, 4);
        assert!(vm.is_guest());
        assert_eq!(vm.other.get("domid"), Some(&serde_json::json!(3)));
        let vbd: VbdRecord =
            serde_json::from_value(serde_json::json!({"type": "CD", "VDI": "OpaqueRef:NULL", "empty": true})).unwrap();
        assert!(!vbd.is_disk());
        let vdi: VdiRecord = serde_json::from_value(
            serde_json::json!({"virtual_size": 10737418240u64, "type": "user", "cbt_enabled": true}),
        )
        .unwrap();
        assert_eq!(vdi.virtual_size, 10 << 30);
        assert!(vdi.cbt_enabled);
        let info: NbdInfo = serde_json::from_value(serde_json::json!({"exportname": "/u?session_id=OpaqueRef:secret", "address": "10.0.0.1", "port": 10809, "cert": "", "subject": "h"})).unwrap();
        assert!(!format!("{info:?}").contains("secret"));
        assert_eq!(info.builder().unwrap().disk_label(), "nbd://10.0.0.1:10809/u?session_id=…");
    }
}
