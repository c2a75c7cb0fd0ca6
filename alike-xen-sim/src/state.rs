//! The simulated pool: objects, sessions and storage behind one lock, and
//! the operations on them with XAPI's checks and error codes.
//!
//! Every method here is synchronous and takes the already-unmarshalled
//! arguments; `api.rs` maps method names and parameters onto them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::records::{Class, Record, coerce, defaults};
use crate::store::{ChainReader, Store, StoreMeta, VHD_BLOCK};
use crate::value::{NULL_REF, Value};

/// Version of the state file format.
const STATE_VERSION: u32 = 1;
const STATE_FILE: &str = "state.json";

/// An object: its class and stored record (derived fields are computed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Obj {
    pub(crate) class: Class,
    pub(crate) rec: Record,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    objects: BTreeMap<String, Obj>,
    store: StoreMeta,
}

/// How the NBD server is reached, for `VDI.get_nbd_info`.
#[derive(Debug, Clone)]
pub(crate) struct NbdEndpoint {
    pub(crate) port: u16,
    pub(crate) cert_pem: String,
    pub(crate) subject: String,
}

/// The whole simulated pool.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) objects: BTreeMap<String, Obj>,
    pub(crate) store: Store,
    dir: PathBuf,
    pub(crate) password: String,
    pub(crate) session_timeout: Duration,
    last_active: HashMap<String, Instant>,
    pub(crate) nbd: Option<NbdEndpoint>,
    /// VMs whose guest reports VSS quiesce support (their guest metrics
    /// would hold `feature-quiesce`).
    pub(crate) quiesce: BTreeSet<String>,
    /// Recent object changes, for `event.from`.
    pub(crate) events: std::collections::VecDeque<Event>,
    /// Id of the last event (tokens name it).
    pub(crate) last_event: u64,
}

/// Most events kept for `event.from`; an older token gets `EVENTS_LOST`.
const MAX_EVENTS: usize = 10_000;

/// One object change.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) id: u64,
    pub(crate) class: Class,
    pub(crate) op: &'static str,
    pub(crate) r: String,
    pub(crate) snapshot: Record,
}

/// Which kind of VM snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SnapKind {
    /// `VM.snapshot`: disks only, VBDs detached.
    Plain,
    /// `VM.snapshot_with_quiesce`: needs a running guest with VSS.
    Quiesce,
    /// `VM.checkpoint`: a running VM's disks and memory; the snapshot is
    /// `Suspended` and its VBDs keep `currently_attached`.
    Checkpoint,
}

/// A fresh random (version 4) UUID.
pub(crate) fn new_uuid() -> String {
    let mut b = [0u8; 16];
    if alike_core::random_bytes(&mut b).is_err() {
        // No entropy source: fall back to the clock and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        b[..8].copy_from_slice(&t.to_le_bytes());
        b[8..].copy_from_slice(&N.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    }
    b[6] = (b[6] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// A fresh opaque reference.
pub(crate) fn new_ref() -> String {
    format!("OpaqueRef:{}", new_uuid())
}

/// Now as XAPI writes datetimes: `YYYYMMDDTHH:MM:SSZ`.
pub(crate) fn now_xapi() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn vm_bad_power(vm: &str, expected: &str, actual: &str) -> Error {
    Error::api("VM_BAD_POWER_STATE", [vm, expected, &actual.to_lowercase()])
}

/// Rounds a VDI size up to whole 2 MiB blocks, as sm does for VHD SRs.
fn round_size(size: u64) -> u64 {
    size.div_ceil(VHD_BLOCK) * VHD_BLOCK
}

impl State {
    /// Opens the state in `dir` (loading `state.json` if present).
    pub(crate) fn open(dir: &Path, password: String, session_timeout: Duration) -> Result<State> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let path = dir.join(STATE_FILE);
        let (objects, meta) = if path.exists() {
            let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
            let f: StateFile = serde_json::from_slice(&bytes)
                .map_err(|e| Error::State { path: path.clone(), reason: e.to_string() })?;
            if f.version != STATE_VERSION {
                return Err(Error::State {
                    path,
                    reason: format!("version {} (this simulator reads {STATE_VERSION})", f.version),
                });
            }
            (f.objects, f.store)
        } else {
            (BTreeMap::new(), StoreMeta::default())
        };
        Ok(State {
            objects,
            store: Store::open(dir, meta)?,
            dir: dir.to_owned(),
            password,
            session_timeout,
            last_active: HashMap::new(),
            nbd: None,
            quiesce: BTreeSet::new(),
            events: std::collections::VecDeque::new(),
            last_event: 0,
        })
    }

    /// Writes `state.json` (sessions and tasks are not kept).
    pub(crate) fn save(&self) -> Result<()> {
        let objects = self
            .objects
            .iter()
            .filter(|(_, o)| !matches!(o.class, Class::Session | Class::Task))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let f = StateFile { version: STATE_VERSION, objects, store: self.store.meta() };
        let bytes = serde_json::to_vec(&f)
            .map_err(|e| Error::State { path: self.dir.join(STATE_FILE), reason: e.to_string() })?;
        let tmp = self.dir.join("state.json.tmp");
        std::fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, self.dir.join(STATE_FILE)).map_err(Error::io(self.dir.join(STATE_FILE)))
    }

    /// Records `add`/`mod`/`del` events for what changed since `before`
    /// (sessions are not evented).
    pub(crate) fn track(&mut self, before: &BTreeMap<String, Obj>) {
        let mut changes: Vec<(Class, &'static str, String)> = Vec::new();
        for (r, o) in &self.objects {
            match before.get(r) {
                None => changes.push((o.class, "add", r.clone())),
                Some(b) if b.rec != o.rec => changes.push((o.class, "mod", r.clone())),
                _ => {}
            }
        }
        for (r, o) in before {
            if !self.objects.contains_key(r) {
                changes.push((o.class, "del", r.clone()));
            }
        }
        for (class, op, r) in changes {
            if class == Class::Session {
                continue;
            }
            let snapshot = match op {
                "del" => before.get(&r).map(|o| o.rec.clone()).unwrap_or_default(),
                _ => self.record(class, &r).unwrap_or_default(),
            };
            self.last_event += 1;
            self.events.push_back(Event { id: self.last_event, class, op, r, snapshot });
            if self.events.len() > MAX_EVENTS {
                self.events.pop_front();
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        !self.objects.values().any(|o| o.class == Class::Pool)
    }

    // ---- objects -------------------------------------------------------

    /// Adds an object with `fields` over the class defaults; returns its ref.
    pub(crate) fn add(&mut self, class: Class, fields: impl IntoIterator<Item = (&'static str, Value)>) -> String {
        let mut rec = defaults(class);
        for d in class.derived() {
            rec.remove(*d);
        }
        rec.insert("uuid".into(), Value::s(new_uuid()));
        for (k, v) in fields {
            rec.insert(k.to_owned(), v);
        }
        let r = new_ref();
        self.objects.insert(r.clone(), Obj { class, rec });
        r
    }

    pub(crate) fn exists(&self, class: Class, r: &str) -> bool {
        self.objects.get(r).is_some_and(|o| o.class == class)
    }

    /// The stored record of `r`, or `HANDLE_INVALID [class, r]`.
    pub(crate) fn get(&self, class: Class, r: &str) -> Result<&Record> {
        match self.objects.get(r) {
            Some(o) if o.class == class => Ok(&o.rec),
            _ => Err(Error::api("HANDLE_INVALID", [class.name(), r])),
        }
    }

    pub(crate) fn get_mut(&mut self, class: Class, r: &str) -> Result<&mut Record> {
        match self.objects.get_mut(r) {
            Some(o) if o.class == class => Ok(&mut o.rec),
            _ => Err(Error::api("HANDLE_INVALID", [class.name(), r])),
        }
    }

    /// A string field of a stored record ("" if absent).
    pub(crate) fn str_of(&self, r: &str, field: &str) -> String {
        self.objects.get(r).and_then(|o| o.rec.get(field)).and_then(Value::as_str).unwrap_or("").to_owned()
    }

    fn bool_of(&self, r: &str, field: &str) -> bool {
        self.objects.get(r).and_then(|o| o.rec.get(field)).and_then(Value::as_bool).unwrap_or(false)
    }

    fn set(&mut self, r: &str, field: &str, v: impl Into<Value>) {
        if let Some(o) = self.objects.get_mut(r) {
            o.rec.insert(field.to_owned(), v.into());
        }
    }

    /// Refs of `class`, in a stable order.
    pub(crate) fn all(&self, class: Class) -> Vec<String> {
        self.objects.iter().filter(|(_, o)| o.class == class).map(|(r, _)| r.clone()).collect()
    }

    /// Refs of `class` whose `field` is the string `value`.
    pub(crate) fn where_eq(&self, class: Class, field: &str, value: &str) -> Vec<String> {
        self.objects
            .iter()
            .filter(|(_, o)| o.class == class && o.rec.get(field).and_then(Value::as_str) == Some(value))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The full record of `r`, derived fields included.
    pub(crate) fn record(&self, class: Class, r: &str) -> Result<Record> {
        let mut rec = self.get(class, r)?.clone();
        let refs = |c: Class, f: &str| Value::strings(self.where_eq(c, f, r));
        match class {
            Class::Vm => {
                rec.insert("VBDs".into(), refs(Class::Vbd, "VM"));
                rec.insert("VIFs".into(), refs(Class::Vif, "VM"));
                rec.insert("snapshots".into(), refs(Class::Vm, "snapshot_of"));
                rec.insert("consoles".into(), Value::Array(vec![]));
                rec.insert("children".into(), Value::Array(vec![]));
                rec.insert("allowed_operations".into(), Value::strings(self.vm_allowed_ops(&rec)));
            }
            Class::Vdi => {
                let uuid = rec.get("uuid").and_then(Value::as_str).unwrap_or("").to_owned();
                rec.insert("VBDs".into(), refs(Class::Vbd, "VDI"));
                rec.insert("snapshots".into(), refs(Class::Vdi, "snapshot_of"));
                rec.insert("cbt_enabled".into(), Value::Bool(self.store.cbt_enabled(&uuid)));
                let used = self.store.reader(&uuid).map_or(0, |c| c.allocated_blocks().len() as u64 * VHD_BLOCK);
                rec.insert("physical_utilisation".into(), Value::Int(used as i64));
                let ops: &[&str] = if rec.get("type").and_then(Value::as_str) == Some("cbt_metadata") {
                    &["destroy", "data_destroy", "list_changed_blocks"]
                } else if rec.get("is_a_snapshot").and_then(Value::as_bool) == Some(true) {
                    &["clone", "copy", "destroy", "data_destroy", "list_changed_blocks", "snapshot"]
                } else {
                    &[
                        "clone",
                        "copy",
                        "destroy",
                        "resize",
                        "snapshot",
                        "enable_cbt",
                        "disable_cbt",
                        "list_changed_blocks",
                    ]
                };
                rec.insert("allowed_operations".into(), Value::strings(ops));
            }
            Class::Sr => {
                let vdis = self.where_eq(Class::Vdi, "SR", r);
                let virt: i64 = vdis.iter().map(|v| self.store.size(&self.str_of(v, "uuid")) as i64).sum();
                let phys: i64 = vdis
                    .iter()
                    .filter_map(|v| self.store.reader(&self.str_of(v, "uuid")))
                    .map(|c| c.allocated_blocks().len() as i64 * VHD_BLOCK as i64)
                    .sum();
                rec.insert("VDIs".into(), Value::strings(vdis));
                rec.insert("PBDs".into(), refs(Class::Pbd, "SR"));
                rec.insert("virtual_allocation".into(), Value::Int(virt));
                rec.insert("physical_utilisation".into(), Value::Int(phys));
            }
            Class::Network => {
                rec.insert("VIFs".into(), refs(Class::Vif, "network"));
                rec.insert("PIFs".into(), refs(Class::Pif, "network"));
            }
            Class::Host => {
                rec.insert("resident_VMs".into(), refs(Class::Vm, "resident_on"));
                rec.insert("PBDs".into(), refs(Class::Pbd, "host"));
                rec.insert("PIFs".into(), refs(Class::Pif, "host"));
            }
            _ => {}
        }
        Ok(rec)
    }

    fn vm_allowed_ops(&self, rec: &Record) -> Vec<&'static str> {
        if rec.get("is_control_domain").and_then(Value::as_bool) == Some(true) {
            return vec!["snapshot"];
        }
        if rec.get("is_a_template").and_then(Value::as_bool) == Some(true)
            || rec.get("is_a_snapshot").and_then(Value::as_bool) == Some(true)
        {
            return vec!["clone", "copy", "destroy", "export"];
        }
        match rec.get("power_state").and_then(Value::as_str) {
            Some("Running") => vec!["snapshot", "checkpoint", "clean_shutdown", "hard_shutdown", "pause"],
            Some("Paused") => vec!["snapshot", "hard_shutdown", "unpause"],
            _ => vec!["snapshot", "clone", "copy", "start", "destroy", "export"],
        }
    }

    /// `get_by_uuid`: the ref, or `UUID_INVALID [class, uuid]`.
    pub(crate) fn by_uuid(&self, class: Class, uuid: &str) -> Result<String> {
        self.where_eq(class, "uuid", uuid)
            .into_iter()
            .next()
            .ok_or_else(|| Error::api("UUID_INVALID", [class.name(), uuid]))
    }

    /// A VDI given by ref or uuid (HTTP handlers accept both).
    pub(crate) fn resolve(&self, class: Class, ref_or_uuid: &str) -> Option<String> {
        if self.exists(class, ref_or_uuid) {
            return Some(ref_or_uuid.to_owned());
        }
        self.by_uuid(class, ref_or_uuid).ok()
    }

    /// `set_<field>` with XAPI's type coercion.
    pub(crate) fn set_field(&mut self, class: Class, r: &str, field: &str, v: &Value) -> Result<()> {
        let like = self.get(class, r)?.get(field).cloned().unwrap_or_else(|| Value::s(""));
        let v = coerce(&like, v).ok_or_else(|| Error::api("FIELD_TYPE_ERROR", [field]))?;
        self.get_mut(class, r)?.insert(field.to_owned(), v);
        Ok(())
    }

    /// `add_to_<map>(key, value)`: `MAP_DUPLICATE_KEY` if present.
    pub(crate) fn add_to_map(&mut self, class: Class, r: &str, field: &str, key: &str, value: &str) -> Result<()> {
        let uuid = self.str_of(r, "uuid");
        let rec = self.get_mut(class, r)?;
        let Some(Value::Struct(m)) = rec.get_mut(field) else {
            return Err(Error::api("MESSAGE_METHOD_UNKNOWN", [format!("{}.add_to_{field}", class.name())]));
        };
        if let Some(old) = m.get(key) {
            let old = old.as_str().unwrap_or("").to_owned();
            return Err(Error::api("MAP_DUPLICATE_KEY", [class.name(), field, &uuid, key, &old]));
        }
        m.insert(key.to_owned(), Value::s(value));
        Ok(())
    }

    /// `remove_from_<map>(key)` (no error when absent).
    pub(crate) fn remove_from_map(&mut self, class: Class, r: &str, field: &str, key: &str) -> Result<()> {
        let rec = self.get_mut(class, r)?;
        if let Some(Value::Struct(m)) = rec.get_mut(field) {
            m.remove(key);
        }
        Ok(())
    }

    /// `add_tags` / `remove_tags` and other string-set edits.
    pub(crate) fn edit_set(&mut self, class: Class, r: &str, field: &str, item: &str, add: bool) -> Result<()> {
        let rec = self.get_mut(class, r)?;
        if let Some(Value::Array(a)) = rec.get_mut(field) {
            a.retain(|v| v.as_str() != Some(item));
            if add {
                a.push(Value::s(item));
            }
        }
        Ok(())
    }

    /// The pool's coordinator.
    pub(crate) fn master(&self) -> String {
        self.all(Class::Pool).first().map(|p| self.str_of(p, "master")).unwrap_or_default()
    }

    // ---- sessions ------------------------------------------------------

    /// `session.login_with_password`.
    pub(crate) fn login(&mut self, user: &str, password: &str, originator: &str) -> Result<String> {
        if user != "root" || password != self.password {
            return Err(Error::api("SESSION_AUTHENTICATION_FAILED", [user, "Authentication failure"]));
        }
        let host = self.master();
        let pool = !originator.is_empty() && originator == "xapi";
        let r = self.add(
            Class::Session,
            [
                ("this_host", Value::s(host)),
                ("last_active", Value::DateTime(now_xapi())),
                ("validation_time", Value::DateTime(now_xapi())),
                ("originator", Value::s(originator)),
                ("auth_user_name", Value::s(user)),
                ("pool", Value::Bool(pool)),
            ],
        );
        self.last_active.insert(r.clone(), Instant::now());
        Ok(r)
    }

    /// `session.logout` (invalidates the session).
    pub(crate) fn logout(&mut self, session: &str) {
        self.objects.remove(session);
        self.last_active.remove(session);
    }

    /// Checks a session: `SESSION_INVALID [ref]` when unknown, logged out or
    /// idle longer than the timeout (then it is removed, as XAPI's reaper does).
    pub(crate) fn check_session(&mut self, session: &str) -> Result<()> {
        let invalid = || Error::api("SESSION_INVALID", [session]);
        let Some(last) = self.last_active.get(session).copied() else { return Err(invalid()) };
        if last.elapsed() > self.session_timeout {
            self.logout(session);
            return Err(invalid());
        }
        self.last_active.insert(session.to_owned(), Instant::now());
        self.set(session, "last_active", Value::DateTime(now_xapi()));
        Ok(())
    }

    /// Makes a session (or all when `None`) expire now.
    pub(crate) fn expire_sessions(&mut self, which: Option<&str>) {
        let refs: Vec<String> = match which {
            Some(s) => vec![s.to_owned()],
            None => self.last_active.keys().cloned().collect(),
        };
        for r in refs {
            self.logout(&r);
        }
    }

    // ---- tasks ---------------------------------------------------------

    /// A pending task.
    pub(crate) fn task_create(&mut self, label: &str, description: &str) -> String {
        let host = self.master();
        self.add(
            Class::Task,
            [
                ("name_label", Value::s(label)),
                ("name_description", Value::s(description)),
                ("created", Value::DateTime(now_xapi())),
                ("resident_on", Value::s(host)),
                ("allowed_operations", Value::strings(["cancel"])),
            ],
        )
    }

    /// Completes a task with the result (serialised as an XML-RPC value, as
    /// XAPI does even for JSON-RPC clients) or the error.
    pub(crate) fn task_finish(&mut self, task: &str, result: std::result::Result<&Value, &Error>) {
        if !self.exists(Class::Task, task) || self.str_of(task, "status") != "pending" {
            return;
        }
        match result {
            Ok(v) => {
                let s = match v {
                    Value::Str(s) if s.is_empty() => String::new(),
                    other => other.to_xml(),
                };
                self.set(task, "status", "success");
                self.set(task, "result", s);
                if let Some(t) = v.as_str().filter(|s| s.starts_with("OpaqueRef:")) {
                    let class = self.objects.get(t).map(|o| o.class.name()).unwrap_or("");
                    self.set(task, "type", class);
                }
            }
            Err(e) => {
                let (code, params) = e.to_xapi();
                let mut info = vec![code];
                info.extend(params);
                self.set(task, "status", "failure");
                self.set(task, "error_info", Value::strings(info));
            }
        }
        self.set(task, "progress", Value::Float(1.0));
        self.set(task, "finished", Value::DateTime(now_xapi()));
        self.set(task, "allowed_operations", Value::Array(vec![]));
    }

    /// `task.cancel`.
    pub(crate) fn task_cancel(&mut self, task: &str) -> Result<()> {
        self.get(Class::Task, task)?;
        if self.str_of(task, "status") != "pending" {
            return Err(Error::api("OPERATION_NOT_ALLOWED", ["The task is not pending"]));
        }
        self.set(task, "status", "cancelled");
        self.set(task, "error_info", Value::strings(["TASK_CANCELLED", task]));
        self.set(task, "finished", Value::DateTime(now_xapi()));
        Ok(())
    }

    // ---- VMs -----------------------------------------------------------

    fn vm_vbds(&self, vm: &str) -> Vec<String> {
        self.where_eq(Class::Vbd, "VM", vm)
    }

    /// `VM.snapshot(vm, new_name, ignore_vdis)` and its quiesced and
    /// checkpoint variants.
    pub(crate) fn vm_snapshot(&mut self, vm: &str, name: &str, ignore: &[String], kind: SnapKind) -> Result<String> {
        let rec = self.get(Class::Vm, vm)?.clone();
        if rec.get("is_a_template").and_then(Value::as_bool) == Some(true) {
            return Err(Error::api("VM_IS_TEMPLATE", [vm, "snapshot"]));
        }
        let power = rec.get("power_state").and_then(Value::as_str).unwrap_or("Halted").to_owned();
        if kind != SnapKind::Plain && power != "Running" {
            return Err(vm_bad_power(vm, "running", &power));
        }
        if kind == SnapKind::Quiesce && !self.quiesce.contains(vm) {
            return Err(Error::api("VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED", [vm]));
        }
        let now = now_xapi();
        let mut snap = rec.clone();
        snap.insert("uuid".into(), Value::s(new_uuid()));
        snap.insert("name_label".into(), Value::s(name));
        snap.insert("is_a_snapshot".into(), Value::Bool(true));
        snap.insert("snapshot_of".into(), Value::s(vm));
        snap.insert("snapshot_time".into(), Value::DateTime(now.clone()));
        snap.insert("power_state".into(), Value::s(if kind == SnapKind::Checkpoint { "Suspended" } else { "Halted" }));
        snap.insert("resident_on".into(), Value::s(NULL_REF));
        snap.insert("domid".into(), Value::Int(-1));
        snap.insert("is_control_domain".into(), Value::Bool(false));
        let snap_ref = new_ref();
        self.objects.insert(snap_ref.clone(), Obj { class: Class::Vm, rec: snap });
        self.set(vm, "parent", snap_ref.as_str());
        for vbd in self.vm_vbds(vm) {
            let mut vrec = self.get(Class::Vbd, &vbd)?.clone();
            let vdi = vrec.get("VDI").and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
            let is_disk = vrec.get("type").and_then(Value::as_str) == Some("Disk");
            if is_disk && self.exists(Class::Vdi, &vdi) {
                if ignore.contains(&vdi) {
                    continue;
                }
                let new_vdi = self.vdi_snapshot(&vdi, &now)?;
                vrec.insert("VDI".into(), Value::s(new_vdi));
            }
            vrec.insert("uuid".into(), Value::s(new_uuid()));
            vrec.insert("VM".into(), Value::s(snap_ref.as_str()));
            if kind != SnapKind::Checkpoint {
                // A checkpoint keeps the VBDs' currently_attached, as XAPI does.
                vrec.insert("currently_attached".into(), Value::Bool(false));
            }
            self.objects.insert(new_ref(), Obj { class: Class::Vbd, rec: vrec });
        }
        for vif in self.where_eq(Class::Vif, "VM", vm) {
            let mut vrec = self.get(Class::Vif, &vif)?.clone();
            vrec.insert("uuid".into(), Value::s(new_uuid()));
            vrec.insert("VM".into(), Value::s(snap_ref.as_str()));
            vrec.insert("currently_attached".into(), Value::Bool(false));
            self.objects.insert(new_ref(), Obj { class: Class::Vif, rec: vrec });
        }
        Ok(snap_ref)
    }

    /// `VM.get_allowed_VBD_devices`: free userdevice numbers.
    pub(crate) fn vm_allowed_vbd_devices(&self, vm: &str) -> Result<Value> {
        self.get(Class::Vm, vm)?;
        let used: BTreeSet<String> = self.vm_vbds(vm).iter().map(|v| self.str_of(v, "userdevice")).collect();
        Ok(Value::strings((0..16).map(|n: u32| n.to_string()).filter(|n| !used.contains(n))))
    }

    /// `VM.clone(vm, new_name)`: a new VM whose disks share the source's
    /// chains copy-on-write.
    pub(crate) fn vm_clone(&mut self, vm: &str, name: &str) -> Result<String> {
        let rec = self.get(Class::Vm, vm)?.clone();
        let state = rec.get("power_state").and_then(Value::as_str).unwrap_or("Halted").to_owned();
        if state != "Halted" {
            return Err(vm_bad_power(vm, "halted", &state));
        }
        let mut new = rec;
        for (k, v) in [
            ("uuid", Value::s(new_uuid())),
            ("name_label", Value::s(name)),
            ("is_a_snapshot", Value::Bool(false)),
            ("snapshot_of", Value::s(NULL_REF)),
            ("snapshot_time", Value::DateTime("19700101T00:00:00Z".into())),
            ("is_a_template", Value::Bool(false)),
            ("parent", Value::s(NULL_REF)),
        ] {
            new.insert(k.into(), v);
        }
        let new_ref_ = new_ref();
        self.objects.insert(new_ref_.clone(), Obj { class: Class::Vm, rec: new });
        for vbd in self.vm_vbds(vm) {
            let mut vrec = self.get(Class::Vbd, &vbd)?.clone();
            let vdi = vrec.get("VDI").and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
            if vrec.get("type").and_then(Value::as_str) == Some("Disk") && self.exists(Class::Vdi, &vdi) {
                let c = self.vdi_clone(&vdi)?;
                vrec.insert("VDI".into(), Value::s(c));
            }
            vrec.insert("uuid".into(), Value::s(new_uuid()));
            vrec.insert("VM".into(), Value::s(new_ref_.as_str()));
            vrec.insert("currently_attached".into(), Value::Bool(false));
            self.objects.insert(new_ref(), Obj { class: Class::Vbd, rec: vrec });
        }
        for vif in self.where_eq(Class::Vif, "VM", vm) {
            let mut vrec = self.get(Class::Vif, &vif)?.clone();
            vrec.insert("uuid".into(), Value::s(new_uuid()));
            vrec.insert("VM".into(), Value::s(new_ref_.as_str()));
            vrec.insert("MAC".into(), Value::s(random_mac()));
            vrec.insert("currently_attached".into(), Value::Bool(false));
            self.objects.insert(new_ref(), Obj { class: Class::Vif, rec: vrec });
        }
        Ok(new_ref_)
    }

    /// `VM.revert(snapshot)`: the VM the snapshot was taken of goes back to
    /// it, as XAPI's `Xapi_vm_snapshot.revert` does for a halted VM: its
    /// disks (VBDs of type `Disk` and their VDIs) are destroyed and replaced
    /// by clones of the snapshot's VDIs at the same `userdevice`, and the
    /// snapshot's `other_config`, `blocked_operations` and memory/vCPU
    /// fields are copied back. VIFs are left as they are (XAPI recreates
    /// them from the snapshot's: a deviation, see the README).
    pub(crate) fn vm_revert(&mut self, snapshot: &str) -> Result<()> {
        let snap = self.get(Class::Vm, snapshot)?.clone();
        if snap.get("is_a_snapshot").and_then(Value::as_bool) != Some(true) {
            return Err(Error::api("VM_NOT_A_SNAPSHOT", [snapshot]));
        }
        let vm = snap.get("snapshot_of").and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
        if !self.exists(Class::Vm, &vm) {
            return Err(Error::api("VM_REVERT_FAILED", [snapshot, vm.as_str()]));
        }
        let state = self.str_of(&vm, "power_state");
        if state != "Halted" {
            return Err(vm_bad_power(&vm, "halted", &state));
        }
        for vbd in self.vm_vbds(&vm) {
            if self.str_of(&vbd, "type") != "Disk" {
                continue;
            }
            let vdi = self.str_of(&vbd, "VDI");
            self.objects.remove(&vbd);
            // A VDI another VM still uses stays (XAPI destroys only the VM's own).
            if self.exists(Class::Vdi, &vdi) && self.where_eq(Class::Vbd, "VDI", &vdi).is_empty() {
                let uuid = self.vdi_uuid(&vdi);
                self.store.destroy(&uuid);
                self.objects.remove(&vdi);
            }
        }
        for vbd in self.vm_vbds(snapshot) {
            let mut vrec = self.get(Class::Vbd, &vbd)?.clone();
            if vrec.get("type").and_then(Value::as_str) != Some("Disk") {
                continue;
            }
            let vdi = vrec.get("VDI").and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
            if !self.exists(Class::Vdi, &vdi) {
                continue;
            }
            let c = self.vdi_clone(&vdi)?;
            // The clone is the VM's disk now, not a copy of a snapshot.
            let name = self.str_of(&vdi, "name_label");
            self.set(&c, "name_label", name);
            vrec.insert("VDI".into(), Value::s(c));
            vrec.insert("uuid".into(), Value::s(new_uuid()));
            vrec.insert("VM".into(), Value::s(vm.as_str()));
            vrec.insert("currently_attached".into(), Value::Bool(false));
            self.objects.insert(new_ref(), Obj { class: Class::Vbd, rec: vrec });
        }
        for f in [
            "other_config",
            "blocked_operations",
            "memory_static_max",
            "memory_dynamic_max",
            "memory_dynamic_min",
            "memory_static_min",
            "VCPUs_max",
            "VCPUs_at_startup",
        ] {
            if let Some(v) = snap.get(f) {
                self.set(&vm, f, v.clone());
            }
        }
        self.set(&vm, "parent", snapshot);
        Ok(())
    }

    /// `VM.create(record)`.
    pub(crate) fn vm_create(&mut self, args: &BTreeMap<String, Value>) -> Result<String> {
        for f in [
            "name_label",
            "memory_static_max",
            "memory_dynamic_max",
            "memory_dynamic_min",
            "memory_static_min",
            "VCPUs_max",
            "VCPUs_at_startup",
        ] {
            if !args.contains_key(f) {
                return Err(Error::api("FIELD_TYPE_ERROR", [f]));
            }
        }
        let rec = self.build_record(
            Class::Vm,
            args,
            &["uuid", "power_state", "is_a_snapshot", "snapshot_of", "is_control_domain", "resident_on", "domid"],
        )?;
        let m = |k: &str| rec.get(k).and_then(Value::as_int).unwrap_or(0);
        if !(m("memory_static_min") <= m("memory_dynamic_min")
            && m("memory_dynamic_min") <= m("memory_dynamic_max")
            && m("memory_dynamic_max") <= m("memory_static_max"))
        {
            return Err(Error::api(
                "MEMORY_CONSTRAINT_VIOLATION",
                ["Memory limits must satisfy: static_min <= dynamic_min <= dynamic_max <= static_max"],
            ));
        }
        if m("VCPUs_at_startup") < 1 || m("VCPUs_at_startup") > m("VCPUs_max") {
            return Err(Error::api(
                "VALUE_NOT_SUPPORTED",
                ["VCPUs_at_startup", &m("VCPUs_at_startup").to_string(), "must be between 1 and VCPUs_max"],
            ));
        }
        let r = new_ref();
        self.objects.insert(r.clone(), Obj { class: Class::Vm, rec });
        Ok(r)
    }

    /// A stored record from create arguments: defaults, then the given fields
    /// coerced to their types (unknown fields ignored, as XAPI does).
    fn build_record(&self, class: Class, args: &BTreeMap<String, Value>, fixed: &[&str]) -> Result<Record> {
        let mut rec = defaults(class);
        for d in class.derived() {
            rec.remove(*d);
        }
        for (k, v) in args {
            if fixed.contains(&k.as_str()) {
                continue;
            }
            if let Some(like) = rec.get(k) {
                let c = coerce(like, v).ok_or_else(|| Error::api("FIELD_TYPE_ERROR", [k.as_str()]))?;
                rec.insert(k.clone(), c);
            }
        }
        rec.insert("uuid".into(), Value::s(new_uuid()));
        Ok(rec)
    }

    /// `VM.destroy`: the VM, its VBDs and VIFs (not its VDIs).
    pub(crate) fn vm_destroy(&mut self, vm: &str) -> Result<()> {
        let rec = self.get(Class::Vm, vm)?;
        if rec.get("is_control_domain").and_then(Value::as_bool) == Some(true) {
            return Err(Error::api("OPERATION_NOT_ALLOWED", ["This operation is not allowed on the control domain"]));
        }
        let state = rec.get("power_state").and_then(Value::as_str).unwrap_or("Halted").to_owned();
        if state != "Halted" {
            return Err(vm_bad_power(vm, "halted", &state));
        }
        for r in self.vm_vbds(vm).into_iter().chain(self.where_eq(Class::Vif, "VM", vm)) {
            self.objects.remove(&r);
        }
        self.objects.remove(vm);
        Ok(())
    }

    /// `VM.start` / `VM.hard_shutdown` / `VM.clean_shutdown` and the test
    /// API's power switch: sets the state and attaches or detaches devices.
    pub(crate) fn vm_power(&mut self, vm: &str, target: &str, op: &str) -> Result<()> {
        let rec = self.get(Class::Vm, vm)?;
        let is_template = rec.get("is_a_template").and_then(Value::as_bool) == Some(true)
            || rec.get("is_a_snapshot").and_then(Value::as_bool) == Some(true);
        let state = rec.get("power_state").and_then(Value::as_str).unwrap_or("Halted").to_owned();
        match op {
            "start" => {
                if is_template {
                    return Err(Error::api("VM_IS_TEMPLATE", [vm, "start"]));
                }
                if state != "Halted" {
                    return Err(vm_bad_power(vm, "halted", &state));
                }
                // XAPI checks `blocked_operations` before anything else runs:
                // OPERATION_BLOCKED [ref, the entry's value].
                if let Some(Value::Struct(b)) = rec.get("blocked_operations")
                    && let Some(code) = b.get("start")
                {
                    return Err(Error::api("OPERATION_BLOCKED", [vm, code.as_str().unwrap_or("")]));
                }
            }
            "hard_shutdown" | "clean_shutdown" if state != "Running" && state != "Paused" => {
                return Err(vm_bad_power(vm, "running", &state));
            }
            _ => {}
        }
        let running = target != "Halted";
        let host = self.master();
        self.set(vm, "power_state", target);
        self.set(vm, "resident_on", if running { host.as_str() } else { NULL_REF });
        let domid = if running { self.next_domid() } else { -1 };
        self.set(vm, "domid", Value::Int(domid));
        for vbd in self.vm_vbds(vm) {
            let ud = self.str_of(&vbd, "userdevice");
            let dev = ud
                .parse::<u8>()
                .ok()
                .filter(|n| *n < 26)
                .map(|n| format!("xvd{}", (b'a' + n) as char))
                .unwrap_or_default();
            self.set(&vbd, "currently_attached", Value::Bool(running));
            if running {
                self.set(&vbd, "device", dev);
            }
        }
        for vif in self.where_eq(Class::Vif, "VM", vm) {
            self.set(&vif, "currently_attached", Value::Bool(running));
        }
        Ok(())
    }

    fn next_domid(&self) -> i64 {
        self.all(Class::Vm)
            .iter()
            .filter_map(|v| self.objects[v].rec.get("domid").and_then(Value::as_int))
            .max()
            .unwrap_or(0)
            + 1
    }

    // ---- VBDs and VIFs -------------------------------------------------

    /// `VBD.create(record)`.
    pub(crate) fn vbd_create(&mut self, args: &BTreeMap<String, Value>) -> Result<String> {
        for f in ["VM", "VDI", "userdevice", "mode", "type"] {
            if !args.contains_key(f) {
                return Err(Error::api("FIELD_TYPE_ERROR", [f]));
            }
        }
        let mut rec = self.build_record(Class::Vbd, args, &["uuid", "currently_attached", "device"])?;
        let vm = rec.get("VM").and_then(Value::as_str).unwrap_or("").to_owned();
        self.get(Class::Vm, &vm)?;
        let vdi = rec.get("VDI").and_then(Value::as_str).unwrap_or(NULL_REF).to_owned();
        let empty = rec.get("empty").and_then(Value::as_bool) == Some(true);
        if !(empty && vdi == NULL_REF) {
            self.get(Class::Vdi, &vdi)?;
            if self.str_of(&vdi, "type") == "cbt_metadata" {
                return Err(Error::api("VDI_INCOMPATIBLE_TYPE", [&vdi, "cbt_metadata"]));
            }
            if self.bool_of(&vdi, "read_only") && rec.get("mode").and_then(Value::as_str) == Some("RW") {
                return Err(Error::api("VDI_READONLY", [&vdi]));
            }
        }
        let used: BTreeSet<String> = self.vm_vbds(&vm).iter().map(|v| self.str_of(v, "userdevice")).collect();
        let mut ud = rec.get("userdevice").and_then(Value::as_str).unwrap_or("").to_owned();
        if ud == "autodetect" {
            ud = (0..16).map(|n: u32| n.to_string()).find(|n| !used.contains(n)).unwrap_or_default();
            rec.insert("userdevice".into(), Value::s(ud.as_str()));
        } else if used.contains(&ud) {
            return Err(Error::api("DEVICE_ALREADY_EXISTS", [&ud]));
        }
        let r = new_ref();
        self.objects.insert(r.clone(), Obj { class: Class::Vbd, rec });
        Ok(r)
    }

    /// `VBD.destroy`.
    pub(crate) fn vbd_destroy(&mut self, vbd: &str) -> Result<()> {
        self.get(Class::Vbd, vbd)?;
        if self.bool_of(vbd, "currently_attached") {
            return Err(Error::api("OPERATION_NOT_ALLOWED", ["VBD is currently attached"]));
        }
        self.objects.remove(vbd);
        Ok(())
    }

    /// `VBD.plug` / `VBD.unplug`.
    pub(crate) fn vbd_plug(&mut self, vbd: &str, plug: bool) -> Result<()> {
        self.get(Class::Vbd, vbd)?;
        let vm = self.str_of(vbd, "VM");
        let state = self.str_of(&vm, "power_state");
        if state != "Running" {
            return Err(vm_bad_power(&vm, "running", &state));
        }
        let attached = self.bool_of(vbd, "currently_attached");
        if attached == plug {
            let code = if plug { "DEVICE_ALREADY_ATTACHED" } else { "DEVICE_ALREADY_DETACHED" };
            return Err(Error::api(code, [vbd]));
        }
        self.set(vbd, "currently_attached", Value::Bool(plug));
        if plug {
            let dev = crate::boot::device_of(&self.str_of(vbd, "userdevice")).unwrap_or_default();
            self.set(vbd, "device", dev.trim_start_matches("/dev/").to_string());
        }
        Ok(())
    }

    /// `VIF.create(record)`.
    pub(crate) fn vif_create(&mut self, args: &BTreeMap<String, Value>) -> Result<String> {
        for f in ["device", "network", "VM"] {
            if !args.contains_key(f) {
                return Err(Error::api("FIELD_TYPE_ERROR", [f]));
            }
        }
        let mut rec = self.build_record(Class::Vif, args, &["uuid", "currently_attached"])?;
        let vm = rec.get("VM").and_then(Value::as_str).unwrap_or("").to_owned();
        self.get(Class::Vm, &vm)?;
        let net = rec.get("network").and_then(Value::as_str).unwrap_or("").to_owned();
        self.get(Class::Network, &net)?;
        let dev = rec.get("device").and_then(Value::as_str).unwrap_or("").to_owned();
        if self.where_eq(Class::Vif, "VM", &vm).iter().any(|v| self.str_of(v, "device") == dev) {
            return Err(Error::api("DEVICE_ALREADY_EXISTS", [&dev]));
        }
        if rec.get("MAC").and_then(Value::as_str).unwrap_or("").is_empty() {
            rec.insert("MAC".into(), Value::s(random_mac()));
            rec.insert("MAC_autogenerated".into(), Value::Bool(true));
        }
        let r = new_ref();
        self.objects.insert(r.clone(), Obj { class: Class::Vif, rec });
        Ok(r)
    }

    /// `VIF.destroy`.
    pub(crate) fn vif_destroy(&mut self, vif: &str) -> Result<()> {
        self.get(Class::Vif, vif)?;
        self.objects.remove(vif);
        Ok(())
    }

    // ---- VDIs ----------------------------------------------------------

    fn vdi_uuid(&self, vdi: &str) -> String {
        self.str_of(vdi, "uuid")
    }

    /// Whether any VBD of the VDI is attached, ignoring (with `skip_snapshots`)
    /// VBDs of snapshot VMs as XAPI does for `list_changed_blocks`.
    fn vdi_attached(&self, vdi: &str, skip_snapshots: bool) -> bool {
        self.where_eq(Class::Vbd, "VDI", vdi).iter().any(|vbd| {
            self.bool_of(vbd, "currently_attached")
                && !(skip_snapshots && self.bool_of(&self.str_of(vbd, "VM"), "is_a_snapshot"))
        })
    }

    /// `VDI.create(record)`.
    pub(crate) fn vdi_create(&mut self, args: &BTreeMap<String, Value>) -> Result<String> {
        for f in ["SR", "virtual_size", "type"] {
            if !args.contains_key(f) {
                return Err(Error::api("FIELD_TYPE_ERROR", [f]));
            }
        }
        let mut rec = self.build_record(
            Class::Vdi,
            args,
            &["uuid", "is_a_snapshot", "snapshot_of", "location", "managed", "missing", "cbt_enabled", "snapshot_time"],
        )?;
        let sr = rec.get("SR").and_then(Value::as_str).unwrap_or("").to_owned();
        self.get(Class::Sr, &sr)?;
        let ty = rec.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
        const TYPES: [&str; 10] = [
            "system",
            "user",
            "ephemeral",
            "suspend",
            "crashdump",
            "ha_statefile",
            "metadata",
            "redo_log",
            "rrd",
            "pvs_cache",
        ];
        if !TYPES.contains(&ty.as_str()) {
            return Err(Error::api("VDI_INCOMPATIBLE_TYPE", [NULL_REF, &ty]));
        }
        let size = rec.get("virtual_size").and_then(Value::as_int).unwrap_or(-1);
        if size < 0 {
            return Err(Error::api("VALUE_NOT_SUPPORTED", ["virtual_size", &size.to_string(), "must not be negative"]));
        }
        let size = round_size(size as u64);
        let uuid = rec.get("uuid").and_then(Value::as_str).unwrap_or("").to_owned();
        rec.insert("virtual_size".into(), Value::Int(size as i64));
        rec.insert("location".into(), Value::s(uuid.as_str()));
        if let Some(Value::Struct(m)) = rec.get_mut("sm_config") {
            m.insert("vdi_type".into(), Value::s("vhd"));
        }
        self.store.create(&uuid, size)?;
        let r = new_ref();
        self.objects.insert(r.clone(), Obj { class: Class::Vdi, rec });
        Ok(r)
    }

    /// A snapshot VDI of `vdi` (used by `VM.snapshot` and `VDI.snapshot`).
    pub(crate) fn vdi_snapshot(&mut self, vdi: &str, now: &str) -> Result<String> {
        let rec = self.get(Class::Vdi, vdi)?.clone();
        if self.str_of(vdi, "type") == "cbt_metadata" {
            return Err(Error::api("VDI_INCOMPATIBLE_TYPE", [vdi, "cbt_metadata"]));
        }
        let uuid = new_uuid();
        let mut snap = rec;
        snap.insert("uuid".into(), Value::s(uuid.as_str()));
        snap.insert("location".into(), Value::s(uuid.as_str()));
        snap.insert("is_a_snapshot".into(), Value::Bool(true));
        snap.insert("snapshot_of".into(), Value::s(vdi));
        snap.insert("snapshot_time".into(), Value::DateTime(now.to_owned()));
        self.store.snapshot(&self.vdi_uuid(vdi), &uuid)?;
        let r = new_ref();
        self.objects.insert(r.clone(), Obj { class: Class::Vdi, rec: snap });
        Ok(r)
    }

    /// `VDI.clone`: a writable VDI sharing the source's data.
    pub(crate) fn vdi_clone(&mut self, vdi: &str) -> Result<String> {
        let rec = self.get(Class::Vdi, vdi)?.clone();
        if self.str_of(vdi, "type") == "cbt_metadata" {
            return Err(Error::api("VDI_INCOMPATIBLE_TYPE", [vdi, "cbt_metadata"]));
        }
        let uuid = new_uuid();
        let mut c = rec;
        c.insert("uuid".into(), Value::s(uuid.as_str()));
        c.insert("location".into(), Value::s(uuid.as_str()));
        c.insert("is_a_snapshot".into(), Value::Bool(false));
        c.insert("snapshot_of".into(), Value::s(NULL_REF));
        c.insert("read_only".into(), Value::Bool(false));
        self.store.clone_vdi(&self.vdi_uuid(vdi), &uuid)?;
        let r = new_ref();
        self.objects.insert(r.clone(), Obj { class: Class::Vdi, rec: c });
        Ok(r)
    }

    /// `VDI.destroy`.
    pub(crate) fn vdi_destroy(&mut self, vdi: &str) -> Result<()> {
        self.get(Class::Vdi, vdi)?;
        if self.vdi_attached(vdi, false) {
            return Err(Error::api("VDI_IN_USE", [vdi, "destroy"]));
        }
        for vbd in self.where_eq(Class::Vbd, "VDI", vdi) {
            self.objects.remove(&vbd);
        }
        let uuid = self.vdi_uuid(vdi);
        self.store.destroy(&uuid);
        self.objects.remove(vdi);
        Ok(())
    }

    /// `VDI.resize` (grow only; the CBT log grows with it).
    pub(crate) fn vdi_resize(&mut self, vdi: &str, size: i64) -> Result<()> {
        self.get(Class::Vdi, vdi)?;
        if self.str_of(vdi, "type") == "cbt_metadata" {
            return Err(Error::api("VDI_INCOMPATIBLE_TYPE", [vdi, "cbt_metadata"]));
        }
        if self.vdi_attached(vdi, false) {
            return Err(Error::api("VDI_IN_USE", [vdi, "resize"]));
        }
        let uuid = self.vdi_uuid(vdi);
        let new = round_size(size.max(0) as u64);
        if size < 0 || new < self.store.size(&uuid) {
            return Err(Error::sm(79, "VDI Invalid size", "shrinking not allowed"));
        }
        self.store.resize(&uuid, new);
        self.set(vdi, "virtual_size", Value::Int(new as i64));
        Ok(())
    }

    /// Checks shared by `enable_cbt` and `disable_cbt`.
    fn cbt_config_check(&self, vdi: &str) -> Result<()> {
        self.get(Class::Vdi, vdi)?;
        let ty = self.str_of(vdi, "type");
        if ty == "cbt_metadata" {
            return Err(Error::api("VDI_INCOMPATIBLE_TYPE", [vdi, "cbt_metadata"]));
        }
        if self.bool_of(vdi, "is_a_snapshot") {
            return Err(Error::api("OPERATION_NOT_ALLOWED", [format!("VDI is a snapshot: {vdi}")]));
        }
        if ty != "user" && ty != "system" {
            return Err(Error::api("VDI_INCOMPATIBLE_TYPE", [vdi, &ty]));
        }
        if self.str_of(vdi, "on_boot") == "reset" {
            return Err(Error::api("VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION", [""; 0]));
        }
        Ok(())
    }

    /// `VDI.enable_cbt` (idempotent).
    pub(crate) fn vdi_enable_cbt(&mut self, vdi: &str) -> Result<()> {
        self.cbt_config_check(vdi)?;
        let uuid = self.vdi_uuid(vdi);
        self.store.enable_cbt(&uuid);
        Ok(())
    }

    /// `VDI.disable_cbt` (idempotent).
    pub(crate) fn vdi_disable_cbt(&mut self, vdi: &str) -> Result<()> {
        self.cbt_config_check(vdi)?;
        let uuid = self.vdi_uuid(vdi);
        self.store.disable_cbt(&uuid);
        Ok(())
    }

    /// `VDI.list_changed_blocks(vdi_from, vdi_to)`: base64 of the bitmap.
    pub(crate) fn vdi_list_changed_blocks(&self, from: &str, to: &str) -> Result<String> {
        self.get(Class::Vdi, from)?;
        self.get(Class::Vdi, to)?;
        if self.vdi_attached(to, true) {
            return Err(Error::api("VDI_IN_USE", [to, "list_changed_blocks"]));
        }
        let bitmap = self.store.list_changed_blocks(&self.vdi_uuid(from), &self.vdi_uuid(to))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bitmap))
    }

    /// `VDI.data_destroy`, one attempt: `Ok(true)` done, `Ok(false)` the VDI
    /// still has VBDs (XAPI waits for them to go, up to 4 s).
    pub(crate) fn vdi_data_destroy_try(&mut self, vdi: &str) -> Result<bool> {
        self.get(Class::Vdi, vdi)?;
        if self.str_of(vdi, "type") == "cbt_metadata" {
            return Ok(true);
        }
        if !self.bool_of(vdi, "is_a_snapshot") {
            return Err(Error::api("OPERATION_NOT_ALLOWED", [format!("VDI is not a snapshot: {vdi}")]));
        }
        let uuid = self.vdi_uuid(vdi);
        if !self.store.cbt_enabled(&uuid) {
            return Err(Error::api("VDI_NO_CBT_METADATA", [vdi]));
        }
        if !self.where_eq(Class::Vbd, "VDI", vdi).is_empty() {
            return Ok(false);
        }
        self.store.data_destroy(&uuid);
        self.set(vdi, "type", "cbt_metadata");
        Ok(true)
    }

    /// `VDI.get_nbd_info`.
    pub(crate) fn vdi_nbd_info(&self, session: &str, vdi: &str) -> Result<Value> {
        self.get(Class::Vdi, vdi)?;
        if self.str_of(vdi, "type") == "cbt_metadata" {
            return Err(Error::api("VDI_INCOMPATIBLE_TYPE", [vdi, "cbt_metadata"]));
        }
        let Some(nbd) = &self.nbd else { return Ok(Value::Array(vec![])) };
        let nets: Vec<String> = self
            .all(Class::Network)
            .into_iter()
            .filter(|n| {
                self.get(Class::Network, n)
                    .ok()
                    .and_then(|r| r.get("purpose"))
                    .and_then(Value::as_array)
                    .is_some_and(|p| p.iter().any(|x| matches!(x.as_str(), Some("nbd" | "insecure_nbd"))))
            })
            .collect();
        let exportname = format!("/{}?session_id={session}", self.vdi_uuid(vdi));
        let mut out = Vec::new();
        for pif in self.all(Class::Pif) {
            if !nets.contains(&self.str_of(&pif, "network")) || !self.bool_of(&pif, "currently_attached") {
                continue;
            }
            let ip = self.str_of(&pif, "IP");
            let mut addrs: Vec<String> = if ip.is_empty() { vec![] } else { vec![ip] };
            if let Some(v6) = self.objects[&pif].rec.get("IPv6").and_then(Value::as_array) {
                addrs.extend(v6.iter().filter_map(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned));
            }
            for a in addrs {
                let mut m = BTreeMap::new();
                m.insert("exportname".to_owned(), Value::s(exportname.as_str()));
                m.insert("address".to_owned(), Value::s(a));
                m.insert("port".to_owned(), Value::Int(i64::from(nbd.port)));
                m.insert("cert".to_owned(), Value::s(nbd.cert_pem.as_str()));
                m.insert("subject".to_owned(), Value::s(nbd.subject.as_str()));
                out.push(Value::Struct(m));
            }
        }
        Ok(Value::Array(out))
    }

    /// The NBD policy from network purposes, as xapi-nbd decides it.
    pub(crate) fn nbd_policy(&self) -> NbdPolicy {
        let mut secure = false;
        let mut insecure = false;
        for n in self.all(Class::Network) {
            if let Some(p) = self.objects[&n].rec.get("purpose").and_then(Value::as_array) {
                secure |= p.iter().any(|x| x.as_str() == Some("nbd"));
                insecure |= p.iter().any(|x| x.as_str() == Some("insecure_nbd"));
            }
        }
        match (secure, insecure) {
            (true, false) => NbdPolicy::ForcedTls,
            (false, true) => NbdPolicy::Plain,
            _ => NbdPolicy::Refuse,
        }
    }

    /// `network.add_purpose` / `remove_purpose`.
    pub(crate) fn network_purpose(&mut self, net: &str, purpose: &str, add: bool) -> Result<()> {
        if !matches!(purpose, "nbd" | "insecure_nbd") {
            return Err(Error::api("INVALID_VALUE", ["purpose", purpose]));
        }
        if add {
            let other = if purpose == "nbd" { "insecure_nbd" } else { "nbd" };
            let clash = self.all(Class::Network).into_iter().find(|n| {
                self.objects[n]
                    .rec
                    .get("purpose")
                    .and_then(Value::as_array)
                    .is_some_and(|p| p.iter().any(|x| x.as_str() == Some(other)))
            });
            if let Some(c) = clash {
                return Err(Error::api("NETWORK_INCOMPATIBLE_PURPOSES", [net, purpose, &c, other]));
            }
        }
        self.edit_set(Class::Network, net, "purpose", purpose, add)
    }

    // ---- data (test API and HTTP handlers) ------------------------------

    /// A reader of a VDI's data, or why there is none.
    pub(crate) fn vdi_reader(&self, vdi: &str) -> Result<ChainReader> {
        self.get(Class::Vdi, vdi)?;
        self.store.reader(&self.vdi_uuid(vdi)).ok_or_else(|| Error::api("VDI_INCOMPATIBLE_TYPE", [vdi, "cbt_metadata"]))
    }

    /// Writes into a VDI as its guest would (CBT marks the 64 KiB blocks).
    pub(crate) fn vdi_write(&mut self, vdi: &str, offset: u64, data: &[u8], skip_zeroes: bool) -> Result<()> {
        self.get(Class::Vdi, vdi)?;
        if self.bool_of(vdi, "is_a_snapshot") || self.bool_of(vdi, "read_only") {
            return Err(Error::api("VDI_READONLY", [vdi]));
        }
        let uuid = self.vdi_uuid(vdi);
        if !self.store.has_data(&uuid) {
            return Err(Error::api("VDI_INCOMPATIBLE_TYPE", [vdi, "cbt_metadata"]));
        }
        self.store.write(&uuid, offset, data, skip_zeroes)
    }
}

/// How the NBD server treats a connection (xapi-nbd's policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NbdPolicy {
    /// A network has purpose `nbd`: TLS required.
    ForcedTls,
    /// Only `insecure_nbd`: plaintext.
    Plain,
    /// Neither (or both): connections are refused.
    Refuse,
}

/// A random locally administered unicast MAC address.
pub(crate) fn random_mac() -> String {
    let mut b = [0u8; 6];
    let _ = alike_core::random_bytes(&mut b);
    b[0] = (b[0] & 0xFC) | 0x02;
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}
