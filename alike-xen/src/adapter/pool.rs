//! [`XenPool`]: a logged-in pool, its inventory, and name/uuid lookups.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::error::{Context, PoolError, PoolResult};
use crate::xapi::{Client, ClientBuilder, NULL_REF, VbdRecord, VmRecord};
use crate::{Error, Result};

/// A XAPI record as sent (field name → JSON value).
pub(crate) type Raw = serde_json::Map<String, Value>;

/// A field as text (strings as they are, numbers and booleans written out, else empty).
pub(crate) fn text(r: &Raw, k: &str) -> String {
    match r.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// A 64-bit field (XAPI sends numbers over JSON-RPC; decimal strings are accepted too).
pub(crate) fn num(r: &Raw, k: &str) -> u64 {
    match r.get(k) {
        Some(Value::Number(n)) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)).unwrap_or(0)
        }
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

/// A boolean field (`true`, or the strings `"true"`/`"1"`).
pub(crate) fn flag(r: &Raw, k: &str) -> bool {
    match r.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true" || s == "1",
        _ => false,
    }
}

/// A set of strings (refs, tags).
pub(crate) fn strings(r: &Raw, k: &str) -> Vec<String> {
    match r.get(k) {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// A `(string -> string) map` field.
pub(crate) fn string_map(r: &Raw, k: &str) -> BTreeMap<String, String> {
    match r.get(k) {
        Some(Value::Object(m)) => {
            m.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))).collect()
        }
        _ => BTreeMap::new(),
    }
}

/// Whether `r` is a real reference (not empty, not `OpaqueRef:NULL`).
pub(crate) fn is_ref(r: &str) -> bool {
    !r.is_empty() && r != NULL_REF
}

/// Sort key of a `userdevice` ("0", "1", … "10"): numeric first, then as text.
pub(crate) fn device_order(userdevice: &str) -> (u64, String) {
    (userdevice.parse().unwrap_or(u64::MAX), userdevice.to_owned())
}

/// A guest VM as [`XenPool::vms`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct VmSummary {
    /// The VM's uuid.
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// `Running`, `Halted`, `Paused` or `Suspended`.
    pub power_state: String,
    /// vCPUs at start-up.
    pub vcpus: u64,
    /// Maximum static memory, bytes.
    pub memory_bytes: u64,
    /// Its disks, in `userdevice` order (the positions of a version).
    pub disks: Vec<DiskSummary>,
    /// Its network interfaces, in device order.
    pub nics: Vec<NicSummary>,
    /// How many snapshots it has (of which `backup_snapshots` were made by alike).
    pub snapshots: usize,
    /// Snapshots marked as made by an alike backup.
    pub backup_snapshots: usize,
}

/// A disk of a [`VmSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DiskSummary {
    /// Position in the VM (0-based, by `userdevice`): the disk number of a version.
    pub position: u32,
    /// The VBD's `userdevice` ("0", "1"…).
    pub userdevice: String,
    /// The VDI's uuid.
    pub vdi_uuid: String,
    /// The VDI's name.
    pub name: String,
    /// Virtual size, bytes.
    pub size: u64,
    /// The SR's uuid.
    pub sr_uuid: String,
    /// The SR's name.
    pub sr_name: String,
    /// Whether changed-block tracking is on.
    pub cbt_enabled: bool,
}

/// A NIC of a [`VmSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NicSummary {
    /// Device number ("0"…).
    pub device: String,
    /// MAC address.
    pub mac: String,
    /// The network's uuid.
    pub network_uuid: String,
    /// The network's name.
    pub network_name: String,
}

/// A storage repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SrSummary {
    /// The SR's uuid.
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// Its type (`ext`, `lvm`, `nfs`, `iso`…).
    pub kind: String,
    /// `user`, `iso`…
    pub content_type: String,
    /// Size, bytes.
    pub physical_size: u64,
    /// Used, bytes.
    pub physical_utilisation: u64,
    /// Whether every host sees it.
    pub shared: bool,
    /// Whether it supports changed-block tracking (`vdi_enable_cbt` allowed).
    pub cbt: bool,
}

/// A network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NetworkSummary {
    /// The network's uuid.
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// Its bridge (`xenbr0`).
    pub bridge: String,
    /// Its purposes (`nbd`, `insecure_nbd`): where XAPI's NBD server listens.
    pub purpose: Vec<String>,
}

/// A XenServer / XCP-ng pool, logged in: inventory, backup
/// ([`XenPool::begin_backup`]) and restore ([`XenPool::create_vm`],
/// [`XenPool::upload_disk`]). Share it between threads freely.
///
/// ```no_run
/// use alike_xen::adapter::XenPool;
/// use alike_xen::xapi::Client;
///
/// let pool = XenPool::connect(Client::builder("https://pool.example").credentials("root", "secret"))?;
/// for vm in pool.vms()? {
///     println!("{} {} {} disk(s)", vm.uuid, vm.name, vm.disks.len());
/// }
/// # Ok::<(), alike_xen::adapter::PoolError>(())
/// ```
#[derive(Debug)]
pub struct XenPool {
    client: Client,
    backup: super::XenBackupOptions,
    upload: super::UploadFormat,
}

impl XenPool {
    /// A pool over a client (logged in, or logging in at the first call).
    pub fn new(client: Client) -> XenPool {
        XenPool { client, backup: super::XenBackupOptions::default(), upload: super::UploadFormat::default() }
    }

    /// How backups through the [`alike_core::Hypervisor`] seam read this
    /// pool's disks (transport, NBD connections, spool, CBT); the trait's
    /// own options (quiesce, cancel) override those fields.
    pub fn set_backup_options(&mut self, o: super::XenBackupOptions) -> &mut Self {
        self.backup = o;
        self
    }

    /// The backup settings in force.
    pub fn backup_options(&self) -> &super::XenBackupOptions {
        &self.backup
    }

    /// How restores through the [`alike_core::Hypervisor`] seam upload disks
    /// (default [`super::UploadFormat::Auto`]).
    pub fn set_upload_format(&mut self, f: super::UploadFormat) -> &mut Self {
        self.upload = f;
        self
    }

    /// The upload format in force.
    pub fn upload_format(&self) -> super::UploadFormat {
        self.upload
    }

    /// Logs in with `builder` (following `HOST_IS_SLAVE` to the master).
    ///
    /// # Errors
    /// [`PoolError::Xen`] with `SESSION_AUTHENTICATION_FAILED`, or the
    /// transport error (unreachable, certificate refused).
    pub fn connect(builder: &ClientBuilder) -> PoolResult<XenPool> {
        let client = builder.login().ctx(|| "logging in to XAPI".to_owned())?;
        Ok(XenPool::new(client))
    }

    /// The XAPI client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Logs out.
    ///
    /// # Errors
    /// Transport errors.
    pub fn logout(&self) -> PoolResult<()> {
        self.client.logout().ctx(|| "logging out of XAPI".to_owned())
    }

    /// `<class>.get_record(r)` as sent.
    pub(crate) fn raw(&self, class: &str, r: &str) -> Result<Raw> {
        let method = format!("{class}.get_record");
        match self.client.call(&method, &[json!(r)])? {
            Value::Object(m) => Ok(m),
            other => Err(Error::BadReply { method, reason: format!("record is {other}") }),
        }
    }

    /// `<class>.get_all_records()` as sent.
    pub(crate) fn all_raw(&self, class: &str) -> Result<BTreeMap<String, Raw>> {
        let method = format!("{class}.get_all_records");
        match self.client.call(&method, &[])? {
            Value::Object(m) => Ok(m
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Value::Object(r) => Some((k, r)),
                    _ => None,
                })
                .collect()),
            other => Err(Error::BadReply { method, reason: format!("records are {other}") }),
        }
    }

    /// Calls `method(args…)` and ignores the (void) result.
    pub(crate) fn void(&self, method: &str, args: &[Value]) -> Result<()> {
        self.client.call(method, args).map(drop)
    }

    /// Guest VMs (no templates, snapshots or control domain), by name, with
    /// their disks (by `userdevice`) and NICs.
    ///
    /// # Errors
    /// [`PoolError::Xen`] when a `get_all_records` call fails.
    pub fn vms(&self) -> PoolResult<Vec<VmSummary>> {
        let ctx = |c: &str| format!("listing {c}s");
        let vms = self.all_raw("VM").ctx(|| ctx("VM"))?;
        let vbds = self.all_raw("VBD").ctx(|| ctx("VBD"))?;
        let vdis = self.all_raw("VDI").ctx(|| ctx("VDI"))?;
        let vifs = self.all_raw("VIF").ctx(|| ctx("VIF"))?;
        let srs = self.all_raw("SR").ctx(|| ctx("SR"))?;
        let nets = self.all_raw("network").ctx(|| ctx("network"))?;
        let mut out = Vec::new();
        for (vm_ref, raw) in &vms {
            let rec = parse_vm(raw, vm_ref)?;
            if !rec.is_guest() {
                continue;
            }
            let mut disks: Vec<(String, DiskSummary)> = Vec::new();
            for (vbd_ref, vbd) in vbds.iter().filter(|(_, v)| text(v, "VM") == *vm_ref) {
                let v = parse_vbd(vbd, vbd_ref)?;
                if !v.is_disk() {
                    continue;
                }
                let Some(vdi) = vdis.get(&v.vdi) else { continue };
                let sr = srs.get(&text(vdi, "SR"));
                disks.push((
                    v.userdevice.clone(),
                    DiskSummary {
                        position: 0,
                        userdevice: v.userdevice,
                        vdi_uuid: text(vdi, "uuid"),
                        name: text(vdi, "name_label"),
                        size: num(vdi, "virtual_size"),
                        sr_uuid: sr.map(|s| text(s, "uuid")).unwrap_or_default(),
                        sr_name: sr.map(|s| text(s, "name_label")).unwrap_or_default(),
                        cbt_enabled: flag(vdi, "cbt_enabled"),
                    },
                ));
            }
            disks.sort_by_key(|(ud, _)| device_order(ud));
            let disks = disks
                .into_iter()
                .enumerate()
                .map(|(i, (_, mut d))| {
                    d.position = i as u32;
                    d
                })
                .collect();
            let mut nics: Vec<NicSummary> = vifs
                .values()
                .filter(|v| text(v, "VM") == *vm_ref)
                .map(|v| {
                    let net = nets.get(&text(v, "network"));
                    NicSummary {
                        device: text(v, "device"),
                        mac: text(v, "MAC"),
                        network_uuid: net.map(|n| text(n, "uuid")).unwrap_or_default(),
                        network_name: net.map(|n| text(n, "name_label")).unwrap_or_default(),
                    }
                })
                .collect();
            nics.sort_by_key(|n| device_order(&n.device));
            let backup_snapshots = rec
                .snapshots
                .iter()
                .filter(|s| vms.get(*s).is_some_and(|r| string_map(r, "other_config").contains_key(super::BACKUP_MARK)))
                .count();
            out.push(VmSummary {
                uuid: rec.uuid,
                name: rec.name_label,
                description: rec.name_description,
                power_state: rec.power_state,
                vcpus: rec.vcpus_at_startup,
                memory_bytes: rec.memory_static_max,
                disks,
                nics,
                snapshots: rec.snapshots.len(),
                backup_snapshots,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)));
        Ok(out)
    }

    /// One guest VM's summary, by name, uuid or ref.
    ///
    /// # Errors
    /// [`PoolError::NotFound`], [`PoolError::Ambiguous`], [`PoolError::Xen`].
    pub fn vm(&self, spec: &str) -> PoolResult<VmSummary> {
        let (_, raw) = self.find_vm(spec)?;
        let uuid = text(&raw, "uuid");
        self.vms()?.into_iter().find(|v| v.uuid == uuid).ok_or_else(|| PoolError::NotFound {
            class: "VM",
            spec: spec.to_owned(),
            hint: ": `alike xen vms` lists the VMs",
        })
    }

    /// Storage repositories, by name.
    ///
    /// # Errors
    /// [`PoolError::Xen`].
    pub fn srs(&self) -> PoolResult<Vec<SrSummary>> {
        let srs = self.all_raw("SR").ctx(|| "listing SRs".to_owned())?;
        let mut out: Vec<SrSummary> = srs
            .values()
            .map(|s| SrSummary {
                uuid: text(s, "uuid"),
                name: text(s, "name_label"),
                kind: text(s, "type"),
                content_type: text(s, "content_type"),
                physical_size: num(s, "physical_size"),
                physical_utilisation: num(s, "physical_utilisation"),
                shared: flag(s, "shared"),
                cbt: strings(s, "allowed_operations").iter().any(|o| o == "vdi_enable_cbt"),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)));
        Ok(out)
    }

    /// Networks, by name.
    ///
    /// # Errors
    /// [`PoolError::Xen`].
    pub fn networks(&self) -> PoolResult<Vec<NetworkSummary>> {
        let nets = self.all_raw("network").ctx(|| "listing networks".to_owned())?;
        let mut out: Vec<NetworkSummary> = nets
            .values()
            .map(|n| NetworkSummary {
                uuid: text(n, "uuid"),
                name: text(n, "name_label"),
                bridge: text(n, "bridge"),
                purpose: strings(n, "purpose"),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)));
        Ok(out)
    }

    /// A guest VM by name, uuid or ref → (ref, record as sent).
    ///
    /// # Errors
    /// [`PoolError::NotFound`] (templates, snapshots and dom0 are not
    /// guests), [`PoolError::Ambiguous`] when several VMs have that name.
    pub fn find_vm(&self, spec: &str) -> PoolResult<(String, Raw)> {
        let found = self.find("VM", spec, |r| {
            let rec = parse_vm(r, "").unwrap_or_default();
            rec.is_guest()
        })?;
        Ok(found)
    }

    /// An SR by name, uuid or ref → its ref.
    ///
    /// # Errors
    /// [`PoolError::NotFound`], [`PoolError::Ambiguous`], [`PoolError::Xen`].
    pub fn find_sr(&self, spec: &str) -> PoolResult<String> {
        self.find("SR", spec, |_| true).map(|(r, _)| r)
    }

    /// A network by name, uuid or ref → its ref.
    ///
    /// # Errors
    /// [`PoolError::NotFound`], [`PoolError::Ambiguous`], [`PoolError::Xen`].
    pub fn find_network(&self, spec: &str) -> PoolResult<String> {
        self.find("network", spec, |_| true).map(|(r, _)| r)
    }

    /// A VDI by uuid or ref → its ref.
    ///
    /// # Errors
    /// [`PoolError::NotFound`], [`PoolError::Xen`].
    pub fn find_vdi(&self, spec: &str) -> PoolResult<String> {
        if spec.starts_with("OpaqueRef:") {
            self.raw("VDI", spec).ctx(|| format!("looking up VDI {spec}"))?;
            return Ok(spec.to_owned());
        }
        match self.client.call("VDI.get_by_uuid", &[json!(spec)]) {
            Ok(Value::String(r)) => Ok(r),
            Ok(other) => Err(PoolError::Xen {
                context: format!("looking up VDI {spec}"),
                error: Box::new(Error::BadReply {
                    method: "VDI.get_by_uuid".into(),
                    reason: format!("ref is {other}"),
                }),
            }),
            Err(e) if e.xapi_code() == Some("UUID_INVALID") => {
                Err(PoolError::NotFound { class: "VDI", spec: spec.to_owned(), hint: "" })
            }
            Err(e) => Err(PoolError::Xen { context: format!("looking up VDI {spec}"), error: Box::new(e) }),
        }
    }

    /// Finds one object of `class` by ref, uuid or name among those `keep` accepts.
    fn find(&self, class: &'static str, spec: &str, keep: impl Fn(&Raw) -> bool) -> PoolResult<(String, Raw)> {
        let hint = if class == "VM" { ": `alike xen vms` lists the VMs" } else { "" };
        let not_found = || PoolError::NotFound { class, spec: spec.to_owned(), hint };
        if spec.starts_with("OpaqueRef:") {
            return match self.raw(class, spec) {
                Ok(r) if keep(&r) => Ok((spec.to_owned(), r)),
                Ok(_) => Err(not_found()),
                Err(e) if e.xapi_code() == Some("HANDLE_INVALID") => Err(not_found()),
                Err(e) => Err(PoolError::Xen { context: format!("looking up {class} {spec}"), error: Box::new(e) }),
            };
        }
        let all = self.all_raw(class).ctx(|| format!("listing {class}s to find {spec:?}"))?;
        if let Some((r, rec)) = all.iter().find(|(_, r)| text(r, "uuid").eq_ignore_ascii_case(spec) && keep(r)) {
            return Ok((r.clone(), rec.clone()));
        }
        let named: Vec<(&String, &Raw)> =
            all.iter().filter(|(_, r)| text(r, "name_label") == spec && keep(r)).collect();
        match named.as_slice() {
            [] => Err(not_found()),
            [(r, rec)] => Ok(((*r).clone(), (*rec).clone())),
            many => Err(PoolError::Ambiguous {
                class,
                spec: spec.to_owned(),
                uuids: many.iter().map(|(_, r)| text(r, "uuid")).collect(),
            }),
        }
    }
}

/// A VM record from its raw form.
pub(crate) fn parse_vm(raw: &Raw, r: &str) -> Result<VmRecord> {
    serde_json::from_value(Value::Object(raw.clone()))
        .map_err(|e| Error::BadReply { method: "VM.get_record".into(), reason: format!("VM {r}: {e}") })
}

/// A VBD record from its raw form.
pub(crate) fn parse_vbd(raw: &Raw, r: &str) -> Result<VbdRecord> {
    serde_json::from_value(Value::Object(raw.clone()))
        .map_err(|e| Error::BadReply { method: "VBD.get_record".into(), reason: format!("VBD {r}: {e}") })
}

impl From<Error> for PoolError {
    fn from(source: Error) -> PoolError {
        PoolError::Xen { context: "XAPI".into(), error: Box::new(source) }
    }
}
