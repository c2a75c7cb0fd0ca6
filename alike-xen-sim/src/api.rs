//! Method dispatch: method name and parameters to [`State`] operations, with
//! XAPI's order of checks: unknown method (`MESSAGE_METHOD_UNKNOWN`), then
//! parameter count (`MESSAGE_PARAMETER_COUNT_MISMATCH`, counting the
//! session), then the session (`SESSION_INVALID`), then the call's own
//! checks (`HANDLE_INVALID`, …). `Async.<Class>.<message>` runs the call in
//! the background and returns a task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Inner;
use crate::error::{Error, Result};
use crate::records::{Class, Record, defaults};
use crate::state::{SnapKind, now_xapi};
use crate::value::Value;

/// Where a call came from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ctx {
    /// Set on a pool supporter's listener: the coordinator's address, which
    /// `HOST_IS_SLAVE` names.
    pub(crate) slave_of: Option<String>,
}

/// Parameter count rule of a method (the session counts).
#[derive(Debug, Clone, Copy)]
enum Arity {
    Exactly(usize),
    Between(usize, usize),
}

impl Arity {
    fn ok(self, n: usize) -> bool {
        match self {
            Arity::Exactly(e) => n == e,
            Arity::Between(a, b) => (a..=b).contains(&n),
        }
    }
    fn expected(self) -> usize {
        match self {
            Arity::Exactly(e) | Arity::Between(_, e) => e,
        }
    }
}

/// Messages with their own implementation, and their arity.
fn special(class: Class, msg: &str) -> Option<Arity> {
    use Arity::*;
    Some(match (class, msg) {
        (Class::Vm, "snapshot") => Between(3, 4),
        (Class::Vm, "snapshot_with_quiesce" | "checkpoint") => Exactly(3),
        (Class::Vm, "get_allowed_VBD_devices") => Exactly(2),
        (Class::Vm, "clone") => Exactly(3),
        (Class::Vm, "revert") => Exactly(2),
        (Class::Vm, "create") => Exactly(2),
        (Class::Vm, "destroy") => Exactly(2),
        (Class::Vm, "start") => Exactly(4),
        (Class::Vm, "hard_shutdown" | "clean_shutdown") => Exactly(2),
        (Class::Vbd, "create") => Exactly(2),
        (Class::Vbd, "destroy" | "plug" | "unplug") => Exactly(2),
        (Class::Vif, "create") => Exactly(2),
        (Class::Vif, "destroy") => Exactly(2),
        (Class::Vdi, "create") => Exactly(2),
        (Class::Vdi, "destroy" | "enable_cbt" | "disable_cbt" | "data_destroy" | "get_nbd_info") => Exactly(2),
        (Class::Vdi, "resize") => Exactly(3),
        (Class::Vdi, "list_changed_blocks") => Exactly(3),
        (Class::Vdi, "snapshot" | "clone") => Between(2, 3),
        (Class::Network, "add_purpose" | "remove_purpose") => Exactly(3),
        (Class::Task, "create") => Exactly(3),
        (Class::Task, "destroy" | "cancel") => Exactly(2),
        (Class::Pool, "get_master") => Exactly(2),
        _ => return None,
    })
}

/// Generic messages every class has: getters, setters, map edits.
fn generic(class: Class, msg: &str) -> Option<Arity> {
    use Arity::*;
    let fields = defaults(class);
    let is_map = |f: &str| matches!(fields.get(f), Some(Value::Struct(_)));
    Some(match msg {
        "get_all" | "get_all_records" => Exactly(1),
        "get_record" | "get_by_uuid" => Exactly(2),
        "get_by_name_label" if class.has_name_label() => Exactly(2),
        "add_tags" | "remove_tags" if fields.contains_key("tags") => Exactly(3),
        _ => {
            if let Some(f) = msg.strip_prefix("get_") {
                if fields.contains_key(f) {
                    return Some(Exactly(2));
                }
            }
            if let Some(f) = msg.strip_prefix("set_")
                && class.writable().contains(&f)
            {
                return Some(Exactly(3));
            }
            if let Some(f) = msg.strip_prefix("add_to_")
                && is_map(f)
                && class.writable().contains(&f)
            {
                return Some(Exactly(4));
            }
            if let Some(f) = msg.strip_prefix("remove_from_")
                && is_map(f)
                && class.writable().contains(&f)
            {
                return Some(Exactly(3));
            }
            return None;
        }
    })
}

/// Whether `Async.<method>` exists (XAPI has no async twin for field
/// accessors, session and task messages, or `VDI.get_nbd_info`).
fn has_async(class: Class, msg: &str) -> bool {
    !matches!(class, Class::Session | Class::Task)
        && special(class, msg).is_some()
        && !msg.starts_with("get_")
        && msg != "get_nbd_info"
}

fn arg_str(params: &[Value], i: usize) -> String {
    match params.get(i) {
        Some(Value::Int(n)) => n.to_string(),
        Some(v) => v.as_str().unwrap_or("").to_owned(),
        None => String::new(),
    }
}

fn arg_struct(params: &[Value], i: usize, name: &str) -> Result<BTreeMap<String, Value>> {
    params
        .get(i)
        .and_then(Value::as_struct)
        .cloned()
        .ok_or_else(|| Error::api("XMLRPC_UNMARSHAL_FAILURE", ["struct", name]))
}

fn arg_strings(params: &[Value], i: usize) -> Vec<String> {
    params
        .get(i)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The `Class.message` parts of a method name (`VM.get_record`, also the
/// `VM_get_record` spelling XAPI accepts).
fn split(method: &str) -> Option<(Class, &str)> {
    if let Some((c, m)) = method.split_once('.') {
        return Class::from_name(c).map(|c| (c, m));
    }
    Class::ALL.into_iter().find_map(|c| method.strip_prefix(c.name()).and_then(|r| r.strip_prefix('_')).map(|m| (c, m)))
}

impl Inner {
    /// Runs one API call.
    pub(crate) fn call(self: &Arc<Self>, method: &str, params: Vec<Value>, ctx: &Ctx) -> Result<Value> {
        if let Some(d) = self.faults.delay() {
            std::thread::sleep(d);
        }
        if let Some(inner) = method.strip_prefix("Async.") {
            return self.call_async(method, inner, params, ctx);
        }
        if let Some(msg) = method.strip_prefix("session.") {
            return self.session_call(method, msg, &params, ctx);
        }
        if method == "event.from" {
            if params.len() != 4 {
                return Err(Error::api("MESSAGE_PARAMETER_COUNT_MISMATCH", [method, "4", &params.len().to_string()]));
            }
            self.state().check_session(&arg_str(&params, 0))?;
            let timeout = params[3].as_float().unwrap_or(0.0).clamp(0.0, 3600.0);
            return self.event_from(&arg_strings(&params, 1), &arg_str(&params, 2), Duration::from_secs_f64(timeout));
        }
        let Some((class, msg)) = split(method) else {
            return Err(Error::api("MESSAGE_METHOD_UNKNOWN", [method]));
        };
        let arity = special(class, msg)
            .or_else(|| generic(class, msg))
            .ok_or_else(|| Error::api("MESSAGE_METHOD_UNKNOWN", [method]))?;
        if !arity.ok(params.len()) {
            return Err(Error::api(
                "MESSAGE_PARAMETER_COUNT_MISMATCH",
                [method.to_owned(), arity.expected().to_string(), params.len().to_string()],
            ));
        }
        let session = arg_str(&params, 0);
        self.state().check_session(&session)?;
        if let Some(e) = self.faults.take_failure(method) {
            return Err(e);
        }
        self.execute(class, msg, &params, &session)
    }

    fn session_call(&self, method: &str, msg: &str, params: &[Value], ctx: &Ctx) -> Result<Value> {
        match msg {
            "login_with_password" | "slave_local_login_with_password" => {
                if !(2..=4).contains(&params.len()) {
                    return Err(Error::api(
                        "MESSAGE_PARAMETER_COUNT_MISMATCH",
                        [method, "4", &params.len().to_string()],
                    ));
                }
                if let Some(e) = self.faults.take_failure(method) {
                    return Err(e);
                }
                let (user, pw, originator) = (arg_str(params, 0), arg_str(params, 1), arg_str(params, 3));
                let mut st = self.state();
                if let Some(master) = &ctx.slave_of {
                    // A supporter checks the password, then sends the client on.
                    if user != "root" || pw != st.password {
                        return Err(Error::api(
                            "SESSION_AUTHENTICATION_FAILED",
                            [user.as_str(), "Authentication failure"],
                        ));
                    }
                    return Err(Error::api("HOST_IS_SLAVE", [master.as_str()]));
                }
                st.login(&user, &pw, &originator).map(Value::Str)
            }
            "logout" | "local_logout" => {
                if params.len() != 1 {
                    return Err(Error::api(
                        "MESSAGE_PARAMETER_COUNT_MISMATCH",
                        [method, "1", &params.len().to_string()],
                    ));
                }
                let s = arg_str(params, 0);
                let mut st = self.state();
                st.check_session(&s)?;
                st.logout(&s);
                Ok(Value::s(""))
            }
            _ => {
                let arity =
                    generic(Class::Session, msg).ok_or_else(|| Error::api("MESSAGE_METHOD_UNKNOWN", [method]))?;
                if !arity.ok(params.len()) {
                    return Err(Error::api(
                        "MESSAGE_PARAMETER_COUNT_MISMATCH",
                        [method.to_owned(), arity.expected().to_string(), params.len().to_string()],
                    ));
                }
                let s = arg_str(params, 0);
                self.state().check_session(&s)?;
                self.execute(Class::Session, msg, params, &s)
            }
        }
    }

    fn call_async(self: &Arc<Self>, method: &str, inner: &str, params: Vec<Value>, ctx: &Ctx) -> Result<Value> {
        let Some((class, msg)) = split(inner).filter(|(c, m)| has_async(*c, m)) else {
            return Err(Error::api("MESSAGE_METHOD_UNKNOWN", [method]));
        };
        let arity = special(class, msg).unwrap_or(Arity::Exactly(1));
        if !arity.ok(params.len()) {
            return Err(Error::api(
                "MESSAGE_PARAMETER_COUNT_MISMATCH",
                [method.to_owned(), arity.expected().to_string(), params.len().to_string()],
            ));
        }
        let session = arg_str(&params, 0);
        let task = {
            let mut st = self.state();
            st.check_session(&session)?;
            let before = st.objects.clone();
            let t = st.task_create(method, "");
            st.track(&before);
            t
        };
        let me = Arc::clone(self);
        let (inner, ctx, t) = (inner.to_owned(), ctx.clone(), task.clone());
        std::thread::spawn(move || {
            let r = me.call(&inner, params, &ctx);
            let mut st = me.state();
            let before = st.objects.clone();
            st.task_finish(&t, r.as_ref());
            st.track(&before);
            let _ = st.save();
        });
        Ok(Value::Str(task))
    }

    /// Runs a validated call.
    fn execute(&self, class: Class, msg: &str, params: &[Value], session: &str) -> Result<Value> {
        let a = |i| arg_str(params, i);
        if class == Class::Vdi && msg == "data_destroy" {
            return self.data_destroy(&a(1));
        }
        let mut st = self.state();
        let read_only = msg.starts_with("get_");
        let before = if read_only { None } else { Some(st.objects.clone()) };
        let out = match (class, msg) {
            (Class::Vm, "snapshot") => {
                st.vm_snapshot(&a(1), &a(2), &arg_strings(params, 3), SnapKind::Plain).map(Value::Str)
            }
            (Class::Vm, "snapshot_with_quiesce") => {
                st.vm_snapshot(&a(1), &a(2), &[], SnapKind::Quiesce).map(Value::Str)
            }
            (Class::Vm, "checkpoint") => st.vm_snapshot(&a(1), &a(2), &[], SnapKind::Checkpoint).map(Value::Str),
            (Class::Vm, "get_allowed_VBD_devices") => st.vm_allowed_vbd_devices(&a(1)),
            (Class::Vm, "clone") => st.vm_clone(&a(1), &a(2)).map(Value::Str),
            (Class::Vm, "revert") => st.vm_revert(&a(1)).map(|()| Value::s("")),
            (Class::Vm, "create") => st.vm_create(&arg_struct(params, 1, "VM")?).map(Value::Str),
            (Class::Vm, "destroy") => st.vm_destroy(&a(1)).map(|()| Value::s("")),
            (Class::Vm, "start") => {
                let paused = params.get(2).and_then(Value::as_bool).unwrap_or(false);
                st.vm_power(&a(1), if paused { "Paused" } else { "Running" }, "start").map(|()| Value::s(""))
            }
            (Class::Vm, "hard_shutdown" | "clean_shutdown") => st.vm_power(&a(1), "Halted", msg).map(|()| Value::s("")),
            (Class::Vbd, "create") => st.vbd_create(&arg_struct(params, 1, "VBD")?).map(Value::Str),
            (Class::Vbd, "destroy") => st.vbd_destroy(&a(1)).map(|()| Value::s("")),
            (Class::Vbd, "plug" | "unplug") => st.vbd_plug(&a(1), msg == "plug").map(|()| Value::s("")),
            (Class::Vif, "create") => st.vif_create(&arg_struct(params, 1, "VIF")?).map(Value::Str),
            (Class::Vif, "destroy") => st.vif_destroy(&a(1)).map(|()| Value::s("")),
            (Class::Vdi, "create") => st.vdi_create(&arg_struct(params, 1, "VDI")?).map(Value::Str),
            (Class::Vdi, "destroy") => st.vdi_destroy(&a(1)).map(|()| Value::s("")),
            (Class::Vdi, "resize") => {
                let size =
                    params.get(2).and_then(Value::as_int).ok_or_else(|| Error::api("FIELD_TYPE_ERROR", ["size"]))?;
                st.vdi_resize(&a(1), size).map(|()| Value::s(""))
            }
            (Class::Vdi, "enable_cbt") => st.vdi_enable_cbt(&a(1)).map(|()| Value::s("")),
            (Class::Vdi, "disable_cbt") => st.vdi_disable_cbt(&a(1)).map(|()| Value::s("")),
            (Class::Vdi, "list_changed_blocks") => st.vdi_list_changed_blocks(&a(1), &a(2)).map(Value::Str),
            (Class::Vdi, "get_nbd_info") => st.vdi_nbd_info(session, &a(1)),
            (Class::Vdi, "snapshot") => st.vdi_snapshot(&a(1), &now_xapi()).map(Value::Str),
            (Class::Vdi, "clone") => st.vdi_clone(&a(1)).map(Value::Str),
            (Class::Network, "add_purpose" | "remove_purpose") => {
                st.network_purpose(&a(1), &a(2), msg == "add_purpose").map(|()| Value::s(""))
            }
            (Class::Task, "create") => Ok(Value::Str(st.task_create(&a(1), &a(2)))),
            (Class::Task, "destroy") => st.get(Class::Task, &a(1)).map(|_| ()).map(|()| {
                st.objects.remove(&a(1));
                Value::s("")
            }),
            (Class::Task, "cancel") => st.task_cancel(&a(1)).map(|()| Value::s("")),
            (Class::Pool, "get_master") => st.get(Class::Pool, &a(1)).map(|r| r["master"].clone()),
            (_, "get_all") => Ok(Value::strings(st.all(class))),
            (_, "get_all_records") => {
                let mut m = BTreeMap::new();
                for r in st.all(class) {
                    m.insert(r.clone(), Value::Struct(st.record(class, &r)?));
                }
                Ok(Value::Struct(m))
            }
            (_, "get_record") => st.record(class, &a(1)).map(Value::Struct),
            (_, "get_by_uuid") => st.by_uuid(class, &a(1)).map(Value::Str),
            (_, "get_by_name_label") => Ok(Value::strings(st.where_eq(class, "name_label", &a(1)))),
            (_, "add_tags") => st.edit_set(class, &a(1), "tags", &a(2), true).map(|()| Value::s("")),
            (_, "remove_tags") => st.edit_set(class, &a(1), "tags", &a(2), false).map(|()| Value::s("")),
            (_, m) if m.starts_with("get_") => {
                let rec = st.record(class, &a(1))?;
                Ok(rec.get(&m[4..]).cloned().unwrap_or_else(|| Value::s("")))
            }
            (_, m) if m.starts_with("set_") => st.set_field(class, &a(1), &m[4..], &params[2]).map(|()| Value::s("")),
            (_, m) if m.starts_with("add_to_") => {
                st.add_to_map(class, &a(1), &m[7..], &a(2), &a(3)).map(|()| Value::s(""))
            }
            (_, m) if m.starts_with("remove_from_") => {
                st.remove_from_map(class, &a(1), &m[12..], &a(2)).map(|()| Value::s(""))
            }
            _ => Err(Error::api("MESSAGE_METHOD_UNKNOWN", [format!("{}.{msg}", class.name())])),
        };
        if let Some(before) = before {
            st.track(&before);
        }
        if out.is_ok() && !read_only && class != Class::Task {
            st.save()?;
        }
        let Some(booter) = self.booter.as_ref().filter(|_| out.is_ok()) else { return out };
        // A processor VM's guest (crate::boot), outside the state's lock.
        match (class, msg) {
            (Class::Vm, "start") => {
                let plan = st.boot_plan(&a(1))?;
                st.save()?;
                drop(st);
                if let Some(plan) = plan
                    && let Err(e) = booter.boot(plan)
                {
                    let mut st = self.state();
                    let _ = st.vm_power(&a(1), "Halted", "set");
                    let _ = st.save();
                    return Err(e);
                }
            }
            (Class::Vm, "hard_shutdown" | "clean_shutdown" | "destroy") => {
                drop(st);
                booter.stop(&a(1), Some(&self.state))?;
            }
            (Class::Vbd, "plug") => {
                let vm = st.str_of(&a(1), "VM");
                let info = st.vbd_info(&a(1))?;
                drop(st);
                if let Some(info) = info {
                    booter.plug(&vm, info)?;
                }
            }
            (Class::Vbd, "unplug") => {
                let vm = st.str_of(&a(1), "VM");
                drop(st);
                booter.unplug(&vm, &a(1), &self.state)?;
            }
            _ => {}
        }
        out
    }

    /// `event.from(classes, token, timeout)`: the changes after `token` to
    /// objects of `classes` (`*`, lower-case class names, or `class/ref`),
    /// waiting up to `timeout` for one; the empty token returns every
    /// current object as an `add`.
    fn event_from(&self, classes: &[String], token: &str, timeout: Duration) -> Result<Value> {
        let wanted = |c: Class, r: &str| {
            classes.iter().any(|w| {
                let w = w.to_ascii_lowercase();
                let name = c.name().to_ascii_lowercase();
                w == "*" || w == name || w == format!("{name}/{}", r.to_ascii_lowercase())
            })
        };
        let event = |id: u64, c: Class, op: &str, r: &str, snap: Record| {
            let mut m = BTreeMap::new();
            m.insert("id".to_owned(), Value::s(id.to_string()));
            m.insert("timestamp".to_owned(), Value::s(now_xapi()));
            m.insert("class".to_owned(), Value::s(c.name().to_ascii_lowercase()));
            m.insert("operation".to_owned(), Value::s(op));
            m.insert("ref".to_owned(), Value::s(r));
            m.insert("snapshot".to_owned(), Value::Struct(snap));
            Value::Struct(m)
        };
        let deadline = Instant::now() + timeout;
        loop {
            {
                let st = self.state();
                let mut events = Vec::new();
                if token.is_empty() {
                    for c in Class::ALL.into_iter().filter(|c| *c != Class::Session) {
                        for r in st.all(c).into_iter().filter(|r| wanted(c, r)) {
                            events.push(event(st.last_event, c, "add", &r, st.record(c, &r)?));
                        }
                    }
                } else {
                    let since: u64 = token
                        .trim()
                        .split(',')
                        .next()
                        .unwrap_or("")
                        .parse()
                        .map_err(|_| Error::api("EVENTS_LOST", [""; 0]))?;
                    if st.events.front().is_some_and(|e| e.id > since + 1) {
                        return Err(Error::api("EVENTS_LOST", [""; 0]));
                    }
                    for e in st.events.iter().filter(|e| e.id > since && wanted(e.class, &e.r)) {
                        events.push(event(e.id, e.class, e.op, &e.r, e.snapshot.clone()));
                    }
                }
                if !events.is_empty() || token.is_empty() || Instant::now() >= deadline {
                    let mut counts = BTreeMap::new();
                    for c in Class::ALL.into_iter().filter(|c| *c != Class::Session) {
                        counts.insert(c.name().to_ascii_lowercase(), Value::Int(st.all(c).len() as i64));
                    }
                    let mut m = BTreeMap::new();
                    m.insert("events".to_owned(), Value::Array(events));
                    m.insert("valid_ref_counts".to_owned(), Value::Struct(counts));
                    m.insert("token".to_owned(), Value::s(format!("{:020}", st.last_event)));
                    return Ok(Value::Struct(m));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `VDI.data_destroy`: waits (lock released) for the VDI's VBDs to go,
    /// as XAPI does, then fails with `VDI_IN_USE`.
    fn data_destroy(&self, vdi: &str) -> Result<Value> {
        let deadline = Instant::now() + self.data_destroy_wait;
        loop {
            {
                let mut st = self.state();
                let before = st.objects.clone();
                if st.vdi_data_destroy_try(vdi)? {
                    st.track(&before);
                    st.save()?;
                    return Ok(Value::s(""));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::api("VDI_IN_USE", [vdi, "data_destroy"]));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
