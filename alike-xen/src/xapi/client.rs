//! The XAPI client: JSON-RPC over HTTP(S) with sessions, re-login,
//! pool-master redirects and task polling; the typed calls a backup needs.

use alike_core::Recover;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::types::{NbdInfo, TaskRecord, VbdRecord, VdiRecord, VmRecord};
use super::wire::{self, ChangedBlocks, Failure};
use crate::nbd::tls::TlsSetup;
use crate::nbd::{ServerCertCheck, redact_export};
use crate::{Error, Result};

/// How many `HOST_IS_SLAVE` redirects one call follows.
const MAX_REDIRECTS: usize = 3;

/// The largest JSON-RPC reply the client reads by default: 256 MiB. XAPI
/// sets no limit; the largest replies are `*.get_all_records` of a big
/// pool (thousands of VMs and VDIs: tens of MiB), so this leaves room while
/// a server answering with an endless body cannot exhaust memory.
pub const DEFAULT_MAX_REPLY: u64 = 256 << 20;

/// Settings of a [`Client`]; [`ClientBuilder::login`] connects.
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    user: String,
    password: String,
    cert: ServerCertCheck,
    originator: String,
    connect_timeout: Duration,
    call_timeout: Duration,
    io_timeout: Duration,
    task_timeout: Duration,
    max_reply: u64,
    insecure_http: bool,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &"…")
            .field("cert", &self.cert)
            .field("max_reply", &self.max_reply)
            .field("insecure_http", &self.insecure_http)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A client of the pool at `url`: `https://host[:port]`, `http://host[:port]`,
    /// or a bare host (HTTPS). Defaults: user `root`, no password, the
    /// platform's trust store, 10 s to connect, 120 s per call, 300 s per
    /// transfer read, 1 h per task, replies up to [`DEFAULT_MAX_REPLY`],
    /// plain `http://` only to a loopback address.
    pub fn new(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            user: "root".into(),
            password: String::new(),
            cert: ServerCertCheck::System,
            originator: "alike".into(),
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(120),
            io_timeout: Duration::from_secs(300),
            task_timeout: Duration::from_secs(3600),
            max_reply: DEFAULT_MAX_REPLY,
            insecure_http: false,
        }
    }
    /// The user name and password for `session.login_with_password`.
    pub fn credentials(&mut self, user: impl Into<String>, password: impl Into<String>) -> &mut ClientBuilder {
        self.user = user.into();
        self.password = password.into();
        self
    }
    /// Which HTTPS server certificates to accept (pool certificates are
    /// usually self-signed: pin them with [`ServerCertCheck::Sha256`],
    /// every pool member's if calls may be redirected to the master).
    pub fn server_cert(&mut self, check: ServerCertCheck) -> &mut ClientBuilder {
        self.cert = check;
        self
    }
    /// The `originator` given at login (XAPI counts sessions per originator).
    pub fn originator(&mut self, originator: impl Into<String>) -> &mut ClientBuilder {
        self.originator = originator.into();
        self
    }
    /// Time allowed to connect.
    pub fn connect_timeout(&mut self, t: Duration) -> &mut ClientBuilder {
        self.connect_timeout = t;
        self
    }
    /// Time allowed for a JSON-RPC call, from sending to the whole reply.
    pub fn call_timeout(&mut self, t: Duration) -> &mut ClientBuilder {
        self.call_timeout = t;
        self
    }
    /// Time allowed for each read of an export (and for an upload's bytes
    /// to be acknowledged, through `TCP_USER_TIMEOUT`); transfers as a
    /// whole have no deadline.
    pub fn io_timeout(&mut self, t: Duration) -> &mut ClientBuilder {
        self.io_timeout = t;
        self
    }
    /// Time allowed for an `Async.*` call's task to finish.
    pub fn task_timeout(&mut self, t: Duration) -> &mut ClientBuilder {
        self.task_timeout = t;
        self
    }
    /// The largest JSON-RPC reply read (default [`DEFAULT_MAX_REPLY`]); a
    /// larger one fails the call with [`Error::ReplyTooLarge`] having read
    /// at most this much. At least 64 KiB.
    pub fn max_reply_bytes(&mut self, n: u64) -> &mut ClientBuilder {
        self.max_reply = n.max(64 << 10);
        self
    }
    /// Allow `http://` to a host that is not a loopback address: the
    /// password and the session then travel in clear. Off by default.
    pub fn allow_insecure_http(&mut self, yes: bool) -> &mut ClientBuilder {
        self.insecure_http = yes;
        self
    }

    /// Builds the client without logging in (the first call logs in).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unusable URL, for `http://` with a
    /// certificate check, or for `http://` to a host that is not a loopback
    /// address without [`ClientBuilder::allow_insecure_http`]; [`Error::TlsSetup`].
    pub fn build(&self) -> Result<Client> {
        let base = parse_base(&self.url)?;
        if base.scheme() == "http" && self.cert != ServerCertCheck::System {
            return Err(Error::InvalidArgument(format!(
                "{} is plain HTTP: a certificate fingerprint or CA pins an HTTPS certificate, and over http:// nothing would be checked and the password would travel in clear; use https://",
                base.as_str().trim_end_matches('/')
            )));
        }
        check_plain_http(&base, self.insecure_http)?;
        let tls = TlsSetup::new(&self.cert)?;
        let rpc = http_client(&tls, self.connect_timeout, Some(self.call_timeout), None, true)?;
        Ok(Client {
            rpc,
            tls,
            base: RwLock::new(base),
            user: self.user.clone(),
            password: self.password.clone(),
            originator: self.originator.clone(),
            session: Mutex::new(None),
            login_lock: Mutex::new(()),
            next_id: AtomicU64::new(1),
            connect_timeout: self.connect_timeout,
            io_timeout: self.io_timeout,
            task_timeout: self.task_timeout,
            max_reply: self.max_reply,
            insecure_http: self.insecure_http,
        })
    }

    /// Builds the client and logs in (following `HOST_IS_SLAVE` to the master).
    ///
    /// # Errors
    /// As [`ClientBuilder::build`]; [`Error::Xapi`] with
    /// `SESSION_AUTHENTICATION_FAILED` for wrong credentials; [`Error::Http`]
    /// / [`Error::CertificateMismatch`] when the host cannot be reached or
    /// its certificate is refused.
    pub fn login(&self) -> Result<Client> {
        let c = self.build()?;
        c.login()?;
        Ok(c)
    }
}

fn parse_base(url: &str) -> Result<Url> {
    let with_scheme = if url.contains("://") { url.to_owned() } else { format!("https://{url}") };
    let mut u = Url::parse(&with_scheme).map_err(|e| Error::InvalidArgument(format!("XAPI URL {url:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(Error::InvalidArgument(format!("XAPI URL {url:?}: need http:// or https:// and a host")));
    }
    u.set_path("/");
    u.set_query(None);
    u.set_fragment(None);
    Ok(u)
}

/// Refuses `http://` to a host that is not a loopback address unless
/// allowed: the password and the session would cross the network in clear.
fn check_plain_http(base: &Url, allowed: bool) -> Result<()> {
    if base.scheme() != "http" || allowed {
        return Ok(());
    }
    let host = base.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
    if loopback {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "refusing to send the XAPI password in clear to {}: use https:// (a self-signed pool certificate is pinned by its fingerprint), or allow plain HTTP explicitly (`--insecure`, ClientBuilder::allow_insecure_http)",
        base.as_str().trim_end_matches('/')
    )))
}

pub(crate) fn http_client(
    tls: &TlsSetup,
    connect: Duration,
    timeout: Option<Duration>,
    tcp_user_timeout: Option<Duration>,
    follow_redirects: bool,
) -> Result<reqwest::blocking::Client> {
    let mut b = reqwest::blocking::Client::builder()
        .tls_backend_preconfigured((*tls.config).clone())
        .connect_timeout(connect)
        .timeout(timeout)
        // XAPI clients talk straight to the pool's hosts.
        .no_proxy()
        .redirect(if follow_redirects {
            reqwest::redirect::Policy::limited(5)
        } else {
            reqwest::redirect::Policy::none()
        });
    if let Some(t) = tcp_user_timeout {
        b = b.tcp_user_timeout(t);
    }
    b.build().map_err(|e| Error::TlsSetup(format!("HTTP client: {}", e.without_url())))
}

/// A XAPI client: one session, shared by every thread.
///
/// - Every [`Client::call`] sends the session ref as the first parameter.
///   On `SESSION_INVALID` it logs in again (once for all threads that saw
///   the same session fail) and retries the call once.
/// - `HOST_IS_SLAVE [master]` (at login or on a call) moves the client to
///   the master — same scheme and port, host from the error (IPv6
///   bracketed) — and retries, at most three times.
/// - Errors keep XAPI's code and parameters ([`Error::Xapi`]); URLs in
///   errors have `session_id` hidden; the password is never shown.
/// - Blocking (reqwest's blocking client): do not create, use or drop it
///   inside an async runtime's worker; use `spawn_blocking`.
/// - Call [`Client::logout`] when done; XAPI expires idle sessions after 24 h.
pub struct Client {
    rpc: reqwest::blocking::Client,
    tls: TlsSetup,
    base: RwLock<Url>,
    user: String,
    password: String,
    originator: String,
    session: Mutex<Option<String>>,
    login_lock: Mutex<()>,
    next_id: AtomicU64,
    connect_timeout: Duration,
    io_timeout: Duration,
    task_timeout: Duration,
    max_reply: u64,
    insecure_http: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url())
            .field("user", &self.user)
            .field("logged_in", &self.lock_session().is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for the pool at `url`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// The URL calls go to now (the pool master's, after a redirect).
    pub fn url(&self) -> String {
        self.base_url().to_string()
    }

    pub(crate) fn base_url(&self) -> Url {
        self.base.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock_session(&self) -> MutexGuard<'_, Option<String>> {
        self.session.locked()
    }

    /// The current session ref, if logged in. It is a bearer secret: XAPI
    /// accepts it as `session_id` on HTTP handlers.
    pub fn session_ref(&self) -> Option<String> {
        self.lock_session().clone()
    }

    pub(crate) fn io_timeout(&self) -> Duration {
        self.io_timeout
    }
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    pub(crate) fn tls(&self) -> &TlsSetup {
        &self.tls
    }

    /// The error for a failed HTTP exchange: a pin mismatch when that is
    /// what happened, else [`Error::Http`] (the URL hidden from reqwest's text).
    pub(crate) fn http_error(&self, url: &Url, during: String, e: reqwest::Error) -> Error {
        let shown = redact_export(url.as_str());
        if let Some(m) = self.tls.mismatch_error(&shown) {
            return m;
        }
        let timed_out = e.is_timeout();
        Error::Http { url: shown, during, timed_out, source: Box::new(ErrorChain::new(e.without_url())) }
    }

    /// POSTs one JSON-RPC request to the current host.
    fn post(&self, method: &str, params: &[Value]) -> Result<std::result::Result<Value, Failure>> {
        let url = self.base_url().join("jsonrpc").map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = wire::encode_request(method, params, id);
        let during = || format!("calling {method}");
        let resp = self
            .rpc
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .map_err(|e| self.http_error(&url, during(), e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(status_error(&url, during(), resp));
        }
        let bytes = self.read_reply(resp, &url, method)?;
        wire::decode_reply(method, &bytes)
    }

    /// A reply's body, at most `max_reply` bytes: a larger one is refused
    /// from its `Content-Length`, or as soon as more arrives.
    fn read_reply(&self, resp: reqwest::blocking::Response, url: &Url, method: &str) -> Result<Vec<u8>> {
        use std::io::Read;
        let too_large = || Error::ReplyTooLarge {
            url: redact_export(url.as_str()),
            method: method.to_owned(),
            limit: self.max_reply,
        };
        if resp.content_length().is_some_and(|n| n > self.max_reply) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        resp.take(self.max_reply + 1).read_to_end(&mut bytes).map_err(|e| Error::Connection {
            server: redact_export(url.as_str()),
            during: format!("reading the reply to {method}"),
            source: e,
        })?;
        if bytes.len() as u64 > self.max_reply {
            return Err(too_large());
        }
        Ok(bytes)
    }

    /// Logs in (again), following `HOST_IS_SLAVE` to the master.
    ///
    /// # Errors
    /// [`Error::Xapi`] (`SESSION_AUTHENTICATION_FAILED`…), [`Error::Http`],
    /// [`Error::CertificateMismatch`].
    pub fn login(&self) -> Result<()> {
        let _g = self.login_lock.locked();
        self.login_locked()
    }

    fn login_locked(&self) -> Result<()> {
        let method = "session.login_with_password";
        let params = [json!(self.user), json!(self.password), json!("1.0"), json!(self.originator)];
        for _ in 0..=MAX_REDIRECTS {
            match self.post(method, &params)? {
                Ok(Value::String(s)) if !s.is_empty() => {
                    tracing::debug!(url = %self.url(), "XAPI login");
                    *self.lock_session() = Some(s);
                    return Ok(());
                }
                Ok(other) => {
                    return Err(Error::BadReply { method: method.into(), reason: format!("session is {other}") });
                }
                Err(f) if f.code == "HOST_IS_SLAVE" => self.redirect(&f, method)?,
                Err(f) => return Err(f.into_error(method)),
            }
        }
        Err(Error::Xapi {
            method: method.into(),
            code: "HOST_IS_SLAVE".into(),
            params: vec!["too many redirects".into()],
        })
    }

    /// Logs in again unless another thread already replaced `failed`.
    fn relogin(&self, failed: &str) -> Result<()> {
        let _g = self.login_lock.locked();
        if self.lock_session().as_deref() != Some(failed) {
            return Ok(());
        }
        tracing::info!(url = %self.url(), "XAPI session invalid; logging in again");
        self.login_locked()
    }

    /// Moves to the master named by a `HOST_IS_SLAVE` failure.
    fn redirect(&self, f: &Failure, method: &str) -> Result<()> {
        let Some(master) = f.params.first().map(|m| m.trim()).filter(|m| !m.is_empty()) else {
            return Err(Error::Xapi { method: method.into(), code: f.code.clone(), params: f.params.clone() });
        };
        let host =
            if master.contains(':') && !master.starts_with('[') { format!("[{master}]") } else { master.to_owned() };
        let mut base = self.base.write().unwrap_or_else(|p| p.into_inner());
        let old = base.to_string();
        let mut new = base.clone();
        new.set_host(Some(&host)).map_err(|e| Error::BadReply {
            method: method.into(),
            reason: format!("HOST_IS_SLAVE names {master:?}, not a host: {e}"),
        })?;
        // A loopback pool member may name a master across the network.
        check_plain_http(&new, self.insecure_http)?;
        *base = new;
        tracing::info!(from = %old, to = %base, "XAPI: this host is a pool member; moving to the pool master");
        Ok(())
    }

    fn ensure_session(&self) -> Result<String> {
        if let Some(s) = self.session_ref() {
            return Ok(s);
        }
        let _g = self.login_lock.locked();
        if let Some(s) = self.session_ref() {
            return Ok(s);
        }
        self.login_locked()?;
        self.session_ref().ok_or_else(|| Error::BadReply { method: "login".into(), reason: "no session".into() })
    }

    /// Calls `method` (`Class.method`) with the session ref prepended to
    /// `params`; returns the JSON result.
    ///
    /// # Errors
    /// [`Error::Xapi`] when XAPI refuses (after one re-login on
    /// `SESSION_INVALID` and up to three master redirects);
    /// [`Error::Http`] / [`Error::HttpStatus`] / [`Error::BadReply`] /
    /// [`Error::CertificateMismatch`] for transport trouble.
    pub fn call(&self, method: &str, params: &[Value]) -> Result<Value> {
        let mut relogged = false;
        let mut redirects = 0;
        loop {
            let session = self.ensure_session()?;
            let mut p = Vec::with_capacity(params.len() + 1);
            p.push(Value::String(session.clone()));
            p.extend_from_slice(params);
            match self.post(method, &p)? {
                Ok(v) => return Ok(v),
                Err(f) if f.code == "SESSION_INVALID" && !relogged => {
                    relogged = true;
                    self.relogin(&session)?;
                }
                Err(f) if f.code == "HOST_IS_SLAVE" && redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    self.redirect(&f, method)?;
                    self.relogin(&session)?;
                }
                Err(f) => return Err(f.into_error(method)),
            }
        }
    }

    /// Calls a method that takes no session (the parameters are sent as given).
    ///
    /// # Errors
    /// As [`Client::call`], without re-login.
    pub fn call_unauthenticated(&self, method: &str, params: &[Value]) -> Result<Value> {
        self.post(method, params)?.map_err(|f| f.into_error(method))
    }

    /// Logs out (`session.logout`); a session XAPI no longer knows is fine.
    ///
    /// # Errors
    /// Transport errors.
    pub fn logout(&self) -> Result<()> {
        let Some(session) = self.lock_session().take() else { return Ok(()) };
        match self.post("session.logout", &[json!(session)])? {
            Ok(_) => Ok(()),
            Err(f) if f.code == "SESSION_INVALID" => Ok(()),
            Err(f) => Err(f.into_error("session.logout")),
        }
    }

    /// [`Client::call`] and decode the result.
    fn call_as<T: DeserializeOwned>(&self, method: &str, params: &[Value]) -> Result<T> {
        let v = self.call(method, params)?;
        serde_json::from_value(v).map_err(|e| Error::BadReply { method: method.into(), reason: e.to_string() })
    }

    /// Calls `Async.<method>` and waits for its task; returns the task's
    /// result value (a ref or string; `""` for void).
    ///
    /// # Errors
    /// As [`Client::call`]; [`Error::Xapi`] with method `task of Async.…`
    /// when the task fails; [`Error::TaskTimeout`].
    pub fn call_async(&self, method: &str, params: &[Value]) -> Result<String> {
        let async_method = format!("Async.{method}");
        let task = self.call_as::<String>(&async_method, params)?;
        self.wait_task(&task, &async_method)
    }

    /// Polls `task` until it finishes (100 ms, doubling to 2 s), then
    /// destroys it; returns its result value. `label` names it in errors.
    ///
    /// # Errors
    /// [`Error::Xapi`] (method `task of <label>`) with the task's error
    /// code and parameters on failure, `TASK_CANCELLED` when cancelled;
    /// [`Error::TaskTimeout`] after the task timeout (the task is then
    /// asked to cancel).
    pub fn wait_task(&self, task: &str, label: &str) -> Result<String> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let rec: TaskRecord = self.call_as("task.get_record", &[json!(task)])?;
            let done = match rec.status.as_str() {
                "pending" | "cancelling" => None,
                "success" => Some(Ok(wire::task_result_value(&rec.result))),
                "failure" => {
                    let mut info = rec.error_info.into_iter();
                    let code = info.next().unwrap_or_else(|| "UNKNOWN_ERROR".into());
                    Some(Err(Error::Xapi { method: format!("task of {label}"), code, params: info.collect() }))
                }
                "cancelled" => Some(Err(Error::Xapi {
                    method: format!("task of {label}"),
                    code: "TASK_CANCELLED".into(),
                    params: vec![task.to_owned()],
                })),
                other => Some(Err(Error::BadReply {
                    method: "task.get_record".into(),
                    reason: format!("task status {other:?}"),
                })),
            };
            if let Some(r) = done {
                if let Err(e) = self.call("task.destroy", &[json!(task)]) {
                    tracing::debug!(task, error = %e, "task.destroy failed");
                }
                return r;
            }
            if start.elapsed() >= self.task_timeout {
                let _ = self.call("task.cancel", &[json!(task)]);
                return Err(Error::TaskTimeout { task: task.into(), method: label.into(), after: start.elapsed() });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    // ---- typed calls ----------------------------------------------------

    /// `VM.get_all_records`: every VM by ref, templates, snapshots and dom0
    /// included (filter with [`VmRecord::is_guest`]).
    ///
    /// # Errors
    /// As [`Client::call`]; [`Error::BadReply`] when a record does not decode.
    pub fn vm_get_all_records(&self) -> Result<BTreeMap<String, VmRecord>> {
        self.call_as("VM.get_all_records", &[])
    }

    /// `VM.get_record`.
    ///
    /// # Errors
    /// As [`Client::vm_get_all_records`] (`HANDLE_INVALID` for an unknown ref).
    pub fn vm_get_record(&self, vm: &str) -> Result<VmRecord> {
        self.call_as("VM.get_record", &[json!(vm)])
    }

    /// `VM.get_by_uuid` → VM ref.
    ///
    /// # Errors
    /// As [`Client::call`] (`UUID_INVALID` when there is none).
    pub fn vm_get_by_uuid(&self, uuid: &str) -> Result<String> {
        self.call_as("VM.get_by_uuid", &[json!(uuid)])
    }

    /// `VBD.get_record`.
    ///
    /// # Errors
    /// As [`Client::vm_get_all_records`].
    pub fn vbd_get_record(&self, vbd: &str) -> Result<VbdRecord> {
        self.call_as("VBD.get_record", &[json!(vbd)])
    }

    /// `VDI.get_record`.
    ///
    /// # Errors
    /// As [`Client::vm_get_all_records`].
    pub fn vdi_get_record(&self, vdi: &str) -> Result<VdiRecord> {
        self.call_as("VDI.get_record", &[json!(vdi)])
    }

    /// `VDI.get_virtual_size`, bytes.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn vdi_get_virtual_size(&self, vdi: &str) -> Result<u64> {
        let v = self.call("VDI.get_virtual_size", &[json!(vdi)])?;
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| Error::BadReply { method: "VDI.get_virtual_size".into(), reason: format!("size is {v}") })
    }

    /// Snapshots a VM (`Async.VM.snapshot(vm, name)` and its task) → the snapshot VM's ref.
    ///
    /// # Errors
    /// As [`Client::call_async`] (`VM_BAD_POWER_STATE`, `SR_FULL`, `OPERATION_NOT_ALLOWED`…).
    pub fn vm_snapshot(&self, vm: &str, name: &str) -> Result<String> {
        self.call_async("VM.snapshot", &[json!(vm), json!(name)])
    }

    /// `VM.destroy` (a halted VM or a snapshot; its VDIs are not destroyed).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn vm_destroy(&self, vm: &str) -> Result<()> {
        self.call("VM.destroy", &[json!(vm)]).map(drop)
    }

    /// `VDI.enable_cbt` (idempotent).
    ///
    /// # Errors
    /// As [`Client::call`] (`SR_OPERATION_NOT_SUPPORTED`, `VDI_INCOMPATIBLE_TYPE`…).
    pub fn vdi_enable_cbt(&self, vdi: &str) -> Result<()> {
        self.call("VDI.enable_cbt", &[json!(vdi)]).map(drop)
    }

    /// `VDI.list_changed_blocks(from, to)`: the 64 KiB blocks that differ
    /// between an older snapshot `from` and `to` (which must not be attached).
    ///
    /// # Errors
    /// As [`Client::call`] (`VDI_IN_USE`, `SR_BACKEND_FAILURE_460`…);
    /// [`Error::BadReply`] when the bitmap is not base64.
    pub fn vdi_list_changed_blocks(&self, from: &str, to: &str) -> Result<ChangedBlocks> {
        let text: String = self.call_as("VDI.list_changed_blocks", &[json!(from), json!(to)])?;
        ChangedBlocks::from_base64(&text)
    }

    /// `VDI.get_nbd_info`: where to read the VDI over NBD (empty when no
    /// network has an NBD purpose).
    ///
    /// # Errors
    /// As [`Client::call`] (`VDI_INCOMPATIBLE_TYPE` for a `cbt_metadata` VDI).
    pub fn vdi_get_nbd_info(&self, vdi: &str) -> Result<Vec<NbdInfo>> {
        self.call_as("VDI.get_nbd_info", &[json!(vdi)])
    }

    /// `VDI.data_destroy`: drops a snapshot VDI's data, keeping its CBT log
    /// (its type becomes `cbt_metadata`).
    ///
    /// # Errors
    /// As [`Client::call`] (`VDI_NO_CBT_METADATA`, `VDI_IN_USE`…).
    pub fn vdi_data_destroy(&self, vdi: &str) -> Result<()> {
        self.call("VDI.data_destroy", &[json!(vdi)]).map(drop)
    }

    /// `VDI.destroy`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn vdi_destroy(&self, vdi: &str) -> Result<()> {
        self.call("VDI.destroy", &[json!(vdi)]).map(drop)
    }

    /// `task.create(label, description)` → task ref (to follow an HTTP transfer).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn task_create(&self, label: &str, description: &str) -> Result<String> {
        self.call_as("task.create", &[json!(label), json!(description)])
    }
}

/// A reqwest error shown with its whole cause chain (its own text says
/// only "error sending request"; the cause — refused, reset, a TLS alert,
/// an unknown issuer — is further down). The chain is in the text, so
/// `source()` is not repeated; the error itself is kept for `Debug`.
#[derive(Debug)]
struct ErrorChain {
    text: String,
    #[allow(dead_code)] // kept whole for Debug output
    inner: reqwest::Error,
}

impl ErrorChain {
    fn new(inner: reqwest::Error) -> ErrorChain {
        let mut text = inner.to_string();
        let mut cur = std::error::Error::source(&inner);
        while let Some(c) = cur {
            let t = c.to_string();
            if !text.contains(&t) {
                text.push_str(": ");
                text.push_str(&t);
            }
            cur = c.source();
        }
        ErrorChain { text: redact_export(&text), inner }
    }
}

impl std::fmt::Display for ErrorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for ErrorChain {}

/// An [`Error::HttpStatus`] from a response, with the start of its body.
pub(crate) fn status_error(url: &Url, during: String, resp: reqwest::blocking::Response) -> Error {
    use std::io::Read;
    let status = resp.status().as_u16();
    let location = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(redact_export);
    let mut head = Vec::new();
    let _ = resp.take(2048).read_to_end(&mut head);
    let mut body: String =
        String::from_utf8_lossy(&head).chars().map(|c| if c.is_control() { ' ' } else { c }).take(512).collect();
    body = redact_export(body.trim());
    if let Some(loc) = location {
        body = format!("redirected to {loc}{}{body}", if body.is_empty() { "" } else { ": " });
    }
    Error::HttpStatus { url: redact_export(url.as_str()), during, status, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(parse_base("host").unwrap().as_str(), "https://host/");
        assert_eq!(parse_base("http://10.0.0.1:8080/x?y").unwrap().as_str(), "http://10.0.0.1:8080/");
        assert_eq!(parse_base("https://[fe80::1]").unwrap().as_str(), "https://[fe80::1]/");
        assert!(parse_base("ftp://h").is_err());
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        for ok in ["http://127.0.0.1:8080", "http://localhost", "http://[::1]:80", "https://pool", "pool"] {
            assert!(check_plain_http(&parse_base(ok).unwrap(), false).is_ok(), "{ok}");
        }
        let far = parse_base("http://10.0.0.1").unwrap();
        let e = check_plain_http(&far, false).unwrap_err().to_string();
        assert!(e.contains("in clear") && e.contains("--insecure"), "{e}");
        assert!(check_plain_http(&far, true).is_ok());
    }

    #[test]
    fn a_fingerprint_needs_https() {
        let mut b = Client::builder("http://127.0.0.1:1");
        b.server_cert(ServerCertCheck::pin(&"AB".repeat(32)).unwrap());
        let e = b.build().unwrap_err().to_string();
        assert!(e.contains("plain HTTP") && e.contains("https://"), "{e}");
    }
}
