//! Restore onto a pool: recreate a VM from a [`XenVmConfig`]
//! ([`XenPool::create_vm`]) and upload disks into VDIs
//! ([`XenPool::upload_disk`]).

use alike_core::DiskSource;
use serde::Serialize;
use serde_json::{Value, json};

use super::config::{VM_SET_AFTER, XenVmConfig};
use super::error::{Context, PoolError, PoolResult};
use super::pool::{XenPool, num, text};
use super::source::MAX_VHD_EXPORT;
use crate::xapi::{ImportFormat, NULL_REF};

/// How [`XenPool::upload_disk`] sends a disk to `PUT /import_raw_vdi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum UploadFormat {
    /// A VHD of the allocated blocks when the VDI is new (it reads as
    /// zeroes), the disk has holes and is at most 2040 GiB; raw otherwise.
    #[default]
    Auto,
    /// Every byte, in order.
    Raw,
    /// A dynamic VHD of the allocated blocks.
    Vhd,
}

/// Settings of [`XenPool::create_vm`]: `Default` plus chained setters.
///
/// ```
/// let o = alike_xen::adapter::VmRestoreOptions::default().name("web-01 (restored)").keep_macs(false);
/// # let _ = o;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VmRestoreOptions {
    pub(crate) name: Option<String>,
    pub(crate) keep_macs: bool,
    pub(crate) format: UploadFormat,
}

impl Default for VmRestoreOptions {
    fn default() -> VmRestoreOptions {
        VmRestoreOptions { name: None, keep_macs: true, format: UploadFormat::Auto }
    }
}

impl VmRestoreOptions {
    /// The new VM's name (default: the recorded one).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Give the NICs their recorded MAC addresses (default), or let XAPI
    /// generate new ones (when the original VM still runs on that network).
    #[must_use]
    pub fn keep_macs(mut self, yes: bool) -> Self {
        self.keep_macs = yes;
        self
    }
    /// How disks are uploaded (default [`UploadFormat::Auto`]).
    #[must_use]
    pub fn format(mut self, f: UploadFormat) -> Self {
        self.format = f;
        self
    }
    /// The upload format asked for.
    pub fn upload_format(&self) -> UploadFormat {
        self.format
    }
}

/// A VM [`XenPool::create_vm`] made (halted, disks empty until uploaded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CreatedVm {
    /// The VM's ref.
    pub vm_ref: String,
    /// Its uuid.
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// Its disks, by position.
    pub disks: Vec<CreatedDisk>,
    /// What was not restored exactly (e.g. `bios_strings` refused).
    pub warnings: Vec<String>,
}

/// A disk of a [`CreatedVm`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CreatedDisk {
    /// Position (the version's disk number).
    pub position: u32,
    /// The VDI's ref.
    pub vdi_ref: String,
    /// Its uuid.
    pub vdi_uuid: String,
    /// Its virtual size (the SR may round the size asked up).
    pub size: u64,
}

impl XenPool {
    /// Creates a halted VM from `config` with its disks on `sr` and its NICs
    /// on `network` (default: each NIC's recorded network — by uuid, then
    /// by name — which must exist in this pool): `VM.create` with the
    /// recorded fields, `VDI.create` sized as recorded, `VBD.create` at the
    /// same `userdevice` (bootable, mode as recorded), empty CD drives,
    /// `VIF.create` with the recorded MAC (unless
    /// [`VmRestoreOptions::keep_macs`] is off), MTU and settings. The disks
    /// are empty: fill them with [`XenPool::upload_disk`]. On failure,
    /// whatever was created is destroyed.
    ///
    /// # Errors
    /// [`PoolError::NotFound`] / [`PoolError::Ambiguous`] for the SR or a
    /// network; [`PoolError::BadConfig`] when a NIC's network is not in
    /// this pool and none was given; [`PoolError::Xen`] when XAPI refuses a
    /// call (`MEMORY_CONSTRAINT_VIOLATION`, `SR_FULL`…).
    pub fn create_vm(
        &self,
        config: &XenVmConfig,
        sr: &str,
        network: Option<&str>,
        opts: &VmRestoreOptions,
    ) -> PoolResult<CreatedVm> {
        let sr_ref = self.find_sr(sr)?;
        let chosen = network.map(|n| self.find_network(n)).transpose()?;
        let mut nets = Vec::with_capacity(config.nics.len());
        for n in &config.nics {
            let r = match &chosen {
                Some(r) => r.clone(),
                None => self.find_network(&n.network_uuid).or_else(|_| self.find_network(&n.network_name)).map_err(
                    |_| {
                        PoolError::BadConfig(format!(
                            "NIC {} was on network {:?} ({}), which this pool does not have: choose a network",
                            n.device, n.network_name, n.network_uuid
                        ))
                    },
                )?,
            };
            nets.push(r);
        }
        let name = opts.name.clone().unwrap_or_else(|| config.name().to_owned());
        let mut record = config.vm.clone();
        for f in VM_SET_AFTER {
            record.remove(*f);
        }
        record.insert("name_label".into(), json!(name));
        record.insert("is_a_template".into(), json!(false));
        record.insert("affinity".into(), json!(NULL_REF));
        let who = format!("VM {name:?}");
        let vm_ref = self
            .client()
            .call_as_string("VM.create", &[Value::Object(record)])
            .ctx(|| format!("creating {who} (VM.create)"))?;
        let mut made =
            CreatedVm { vm_ref: vm_ref.clone(), uuid: String::new(), name, disks: Vec::new(), warnings: Vec::new() };
        match self.fill_vm(config, &sr_ref, &nets, opts, &mut made) {
            Ok(()) => Ok(made),
            Err(e) => {
                if let Err(e2) = self.destroy_vm(&made) {
                    tracing::warn!(vm = %who, error = %e2, "removing the half-created VM");
                }
                Err(e)
            }
        }
    }

    fn fill_vm(
        &self,
        config: &XenVmConfig,
        sr_ref: &str,
        nets: &[String],
        opts: &VmRestoreOptions,
        made: &mut CreatedVm,
    ) -> PoolResult<()> {
        let vm_ref = made.vm_ref.clone();
        let who = format!("VM {:?}", made.name);
        made.uuid = text(&self.raw("VM", &vm_ref).ctx(|| format!("reading the new {who}"))?, "uuid");
        let who = format!("{who} ({})", made.uuid);
        for d in &config.disks {
            let vdi_type =
                if matches!(d.vdi_type.as_str(), "user" | "system" | "ephemeral") { &d.vdi_type } else { "user" };
            let vdi_rec = json!({
                "name_label": d.name_label, "name_description": d.name_description, "SR": sr_ref,
                "virtual_size": d.virtual_size, "type": vdi_type, "sharable": d.sharable, "read_only": false,
                "other_config": d.vdi_other_config, "sm_config": {}, "xenstore_data": {}, "tags": d.tags,
            });
            let vdi_ref = self
                .client()
                .call_as_string("VDI.create", &[vdi_rec])
                .ctx(|| format!("creating disk {} ({} bytes) of {who} (VDI.create)", d.position, d.virtual_size))?;
            let vdi = self.raw("VDI", &vdi_ref).ctx(|| format!("reading the new VDI {vdi_ref} of {who}"))?;
            made.disks.push(CreatedDisk {
                position: d.position,
                vdi_ref: vdi_ref.clone(),
                vdi_uuid: text(&vdi, "uuid"),
                size: num(&vdi, "virtual_size"),
            });
            let vbd = json!({
                "VM": vm_ref, "VDI": vdi_ref, "userdevice": d.userdevice, "bootable": d.bootable,
                "mode": if d.mode.is_empty() { "RW" } else { d.mode.as_str() }, "type": "Disk",
                "unpluggable": d.unpluggable, "empty": false, "other_config": d.vbd_other_config,
                "qos_algorithm_type": d.qos_algorithm_type, "qos_algorithm_params": d.qos_algorithm_params,
            });
            self.client().call_as_string("VBD.create", &[vbd]).ctx(|| {
                format!("attaching disk {} at userdevice {} to {who} (VBD.create)", d.position, d.userdevice)
            })?;
        }
        for c in &config.cdroms {
            let vbd = json!({
                "VM": vm_ref, "VDI": NULL_REF, "userdevice": c.userdevice, "bootable": c.bootable, "mode": "RO",
                "type": "CD", "unpluggable": true, "empty": true, "other_config": c.vbd_other_config,
                "qos_algorithm_type": "", "qos_algorithm_params": {},
            });
            self.client()
                .call_as_string("VBD.create", &[vbd])
                .ctx(|| format!("adding the CD drive at userdevice {} to {who} (VBD.create)", c.userdevice))?;
        }
        for (n, net) in config.nics.iter().zip(nets) {
            let vif = json!({
                "device": n.device, "network": net, "VM": vm_ref,
                "MAC": if opts.keep_macs { n.mac.as_str() } else { "" },
                "MTU": if n.mtu == 0 { 1500 } else { n.mtu }, "other_config": n.other_config,
                "qos_algorithm_type": n.qos_algorithm_type, "qos_algorithm_params": n.qos_algorithm_params,
                "locking_mode": if n.locking_mode.is_empty() { "network_default" } else { n.locking_mode.as_str() },
                "ipv4_allowed": n.ipv4_allowed, "ipv6_allowed": n.ipv6_allowed,
            });
            self.client()
                .call_as_string("VIF.create", &[vif])
                .ctx(|| format!("adding NIC {} (MAC {}) to {who} (VIF.create)", n.device, n.mac))?;
        }
        for f in VM_SET_AFTER {
            match config.vm.get(*f) {
                Some(Value::Object(m)) if m.is_empty() => {}
                Some(v) => {
                    if let Err(e) = self.void(&format!("VM.set_{f}"), &[json!(vm_ref), v.clone()]) {
                        made.warnings.push(format!("{f} not restored: {e}"));
                    }
                }
                None => {}
            }
        }
        tracing::info!(vm = %who, disks = made.disks.len(), nics = config.nics.len(), "VM recreated");
        Ok(())
    }

    /// Destroys a VM [`XenPool::create_vm`] made, with its VDIs (a restore
    /// that failed half-way).
    ///
    /// # Errors
    /// [`PoolError::Xen`] for the first call that failed (the others are still tried).
    pub fn destroy_vm(&self, vm: &CreatedVm) -> PoolResult<()> {
        let mut first = None;
        if let Err(e) = self.client().vm_destroy(&vm.vm_ref) {
            first.get_or_insert(PoolError::Xen { context: format!("destroying VM {:?}", vm.name), error: Box::new(e) });
        }
        for d in &vm.disks {
            if let Err(e) = self.client().vdi_destroy(&d.vdi_ref) {
                first.get_or_insert(PoolError::Xen {
                    context: format!("destroying VDI {}", d.vdi_uuid),
                    error: Box::new(e),
                });
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Writes `source` over a VDI (ref or uuid) with `PUT /import_raw_vdi`
    /// (a `Content-Length`, no chunked encoding). `new_vdi` says the VDI
    /// reads as zeroes (just created), so [`UploadFormat::Auto`] may send a
    /// VHD of the allocated blocks only; over an existing VDI it sends raw
    /// (every byte), since holes must overwrite old data. Returns the
    /// format used and the bytes sent.
    ///
    /// # Errors
    /// [`PoolError::InvalidArgument`] when the VDI is smaller than the
    /// disk; [`PoolError::Xen`] when the upload fails (the source's own
    /// error inside [`crate::Error::Source`] when reading it failed).
    pub fn upload_disk(
        &self,
        vdi: &str,
        source: &dyn DiskSource,
        format: UploadFormat,
        new_vdi: bool,
    ) -> PoolResult<(ImportFormat, u64)> {
        let vdi_ref = self.find_vdi(vdi)?;
        let rec = self.raw("VDI", &vdi_ref).ctx(|| format!("reading VDI {vdi}"))?;
        let (uuid, vsize) = (text(&rec, "uuid"), num(&rec, "virtual_size"));
        if vsize < source.size() {
            return Err(PoolError::InvalidArgument(format!(
                "VDI {uuid} holds {vsize} bytes, the disk {} needs {}",
                source.label(),
                source.size()
            )));
        }
        let fmt = match format {
            UploadFormat::Raw => ImportFormat::Raw,
            UploadFormat::Vhd => ImportFormat::Vhd,
            UploadFormat::Auto => {
                let sparse = || {
                    source
                        .allocated_ranges()
                        .map(|r| r.iter().map(|r| r.end - r.start).sum::<u64>() < source.size())
                        .unwrap_or(false)
                };
                if new_vdi && source.size() <= MAX_VHD_EXPORT && sparse() {
                    ImportFormat::Vhd
                } else {
                    ImportFormat::Raw
                }
            }
        };
        let sent = self
            .client()
            .import_disk(&vdi_ref, source, fmt)
            .ctx(|| format!("uploading {} into VDI {uuid} ({fmt:?})", source.label()))?;
        tracing::info!(vdi = %uuid, format = ?fmt, bytes = sent, "disk uploaded");
        Ok((fmt, sent))
    }
}

impl crate::xapi::Client {
    /// [`crate::xapi::Client::call`] whose result is a string (a ref).
    pub(crate) fn call_as_string(&self, method: &str, params: &[Value]) -> crate::Result<String> {
        match self.call(method, params)? {
            Value::String(s) => Ok(s),
            other => Err(crate::Error::BadReply { method: method.into(), reason: format!("result is {other}") }),
        }
    }
}
