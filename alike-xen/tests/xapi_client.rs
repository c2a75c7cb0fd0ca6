//! The XAPI client's transport against a tiny in-test HTTP(S) responder
//! that answers canned XAPI JSON-RPC bodies and serves the export/import
//! handlers: login, calls and typed records, SESSION_INVALID → re-login →
//! success (also from many threads at once), HOST_IS_SLAVE → the master,
//! XAPI errors with their parameters in every wire shape, Async calls with
//! task polling, certificate pinning on HTTPS (right, wrong), timeouts,
//! exports (raw, VHD into the streaming reader) and a connection dropped
//! mid-export, imports with a Content-Length (raw and VHD) and a 302.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alike_core::{DiskSource, MemSource};
use alike_testing::Rng;
use alike_xen::vhd::{StreamReader, VhdOptions, write_stream};
use alike_xen::xapi::{ChangedBlocks, Client, ExportFormat, ImportFormat};
use alike_xen::{Error, ServerCertCheck};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 responder (keep-alive, Content-Length bodies; a
// chunked request body is refused with 400 as XAPI refuses it).

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

enum Reply {
    Json(Value),
    Status(u16, Vec<(String, String)>, String),
    /// 200 with these body bytes, then (if `cut`) the connection is closed
    /// without more; `length` is announced when given.
    Stream {
        body: Vec<u8>,
        length: Option<u64>,
    },
    /// Never answer (until the client gives up).
    Hang,
}

type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

trait Io: Read + Write + Send {
    /// Ends the stream cleanly (TLS: close_notify, as a real server does).
    fn close(&mut self);
}
impl Io for std::net::TcpStream {
    fn close(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}
impl Io for rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream> {
    fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

struct Responder {
    addr: SocketAddr,
}

impl Responder {
    fn start(bind: &str, tls: Option<Arc<rustls::ServerConfig>>, handler: Handler) -> Option<Responder> {
        let listener = TcpListener::bind(bind).ok()?;
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                let (handler, tls) = (handler.clone(), tls.clone());
                std::thread::spawn(move || {
                    let io: Box<dyn Io> = match tls {
                        Some(cfg) => {
                            let c = rustls::ServerConnection::new(cfg).unwrap();
                            Box::new(rustls::StreamOwned::new(c, tcp))
                        }
                        None => Box::new(tcp),
                    };
                    serve(io, &*handler);
                });
            }
        });
        Some(Responder { addr })
    }
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve(io: Box<dyn Io>, handler: &(dyn Fn(&Req) -> Reply + Send + Sync)) {
    let mut r = BufReader::new(io);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        if headers.get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let _ = write!(r.get_mut(), "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let (path, q) = target.split_once('?').unwrap_or((&target, ""));
        let query =
            q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), percent_decode(v))).collect();
        let req = Req { method, path: path.to_owned(), query, headers, body };
        let w = r.get_mut();
        match handler(&req) {
            Reply::Json(v) => {
                let b = serde_json::to_vec(&v).unwrap();
                let _ = write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                );
                let _ = w.write_all(&b);
            }
            Reply::Status(code, hdrs, text) => {
                let _ = write!(w, "HTTP/1.1 {code} X\r\nContent-Length: {}\r\n", text.len());
                for (k, v) in hdrs {
                    let _ = write!(w, "{k}: {v}\r\n");
                }
                let _ = write!(w, "\r\n{text}");
            }
            Reply::Stream { body, length } => {
                let _ = write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n");
                if let Some(l) = length {
                    let _ = write!(w, "Content-Length: {l}\r\n");
                }
                let _ = write!(w, "\r\n");
                let _ = w.write_all(&body);
                let _ = w.flush();
                w.close();
                return;
            }
            Reply::Hang => {
                std::thread::sleep(Duration::from_secs(5));
                return;
            }
        }
        let _ = w.flush();
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

// ---------------------------------------------------------------------------
// A canned XAPI.

fn xapi_error(code: &str, params: &[&str]) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": code, "data": params}})
}
fn ok(v: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "result": v})
}

#[derive(Default)]
struct FakeXapi {
    sessions: Mutex<HashSet<String>>,
    logins: AtomicUsize,
    task_polls: AtomicUsize,
    calls: Mutex<Vec<(String, Vec<Value>)>>,
    disk: Vec<u8>,
    vhd: Vec<u8>,
    uploads: Mutex<Vec<Req>>,
}

const DISK: u64 = 4 << 20;

impl FakeXapi {
    fn new() -> Arc<FakeXapi> {
        let mut disk = vec![0u8; DISK as usize];
        Rng::new(3).fill(&mut disk[..1 << 20]);
        Rng::new(4).fill(&mut disk[3 << 20..(3 << 20) + 4096]);
        let mut vhd = Vec::new();
        let src = MemSource { label: "fake".into(), data: disk.clone() };
        write_stream(&src, &mut vhd, &VhdOptions::default()).unwrap();
        Arc::new(FakeXapi { disk, vhd, ..Default::default() })
    }

    fn expire_sessions(&self) {
        self.sessions.lock().unwrap().clear();
    }

    fn handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        Arc::new(move |req: &Req| me.handle(req))
    }

    fn valid(&self, s: Option<&String>) -> bool {
        s.is_some_and(|s| self.sessions.lock().unwrap().contains(s))
    }

    fn handle(&self, req: &Req) -> Reply {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/jsonrpc") => Reply::Json(self.rpc(req)),
            ("GET", "/export_raw_vdi") => {
                if !self.valid(req.query.get("session_id")) {
                    return Reply::Status(401, vec![], "Unauthorised".into());
                }
                let vdi = req.query.get("vdi").cloned().unwrap_or_default();
                let format = req.query.get("format").cloned().unwrap_or_default();
                match (vdi.as_str(), format.as_str()) {
                    ("OpaqueRef:disk", "raw") => Reply::Stream { body: self.disk.clone(), length: None },
                    ("OpaqueRef:disk", "vhd") => Reply::Stream { body: self.vhd.clone(), length: None },
                    // The connection drops after 1 MiB, with and without a Content-Length.
                    ("OpaqueRef:short", "raw") => Reply::Stream { body: self.disk[..1 << 20].to_vec(), length: None },
                    ("OpaqueRef:short-len", "raw") => {
                        Reply::Stream { body: self.disk[..1 << 20].to_vec(), length: Some(DISK) }
                    }
                    ("OpaqueRef:short", "vhd") => {
                        Reply::Stream { body: self.vhd[..self.vhd.len() / 2].to_vec(), length: None }
                    }
                    _ => Reply::Status(404, vec![], format!("unknown VDI or format {format}")),
                }
            }
            ("PUT", "/import_raw_vdi") => {
                if !self.valid(req.query.get("session_id")) {
                    return Reply::Status(401, vec![], "Unauthorised".into());
                }
                self.uploads.lock().unwrap().push(req.clone());
                if req.query.get("vdi").map(String::as_str) == Some("OpaqueRef:elsewhere") {
                    let loc = format!("https://10.0.0.9/import_raw_vdi?vdi=x&session_id={}", req.query["session_id"]);
                    return Reply::Status(302, vec![("Location".into(), loc)], String::new());
                }
                Reply::Status(200, vec![], String::new())
            }
            _ => Reply::Status(404, vec![], "no such handler".into()),
        }
    }

    fn rpc(&self, req: &Req) -> Value {
        let v: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert!(!v["id"].is_null(), "XAPI needs an id");
        let method = v["method"].as_str().unwrap().to_owned();
        let params = v["params"].as_array().unwrap().clone();
        self.calls.lock().unwrap().push((method.clone(), params.clone()));
        if method == "session.login_with_password" {
            if params.len() != 4 || params[1] != "pw" {
                return xapi_error(
                    "SESSION_AUTHENTICATION_FAILED",
                    &[params[0].as_str().unwrap_or(""), "Authentication failure"],
                );
            }
            let n = self.logins.fetch_add(1, Ordering::SeqCst) + 1;
            let s = format!("OpaqueRef:session-{n}");
            self.sessions.lock().unwrap().insert(s.clone());
            return ok(json!(s));
        }
        let session = params.first().and_then(Value::as_str).unwrap_or("").to_owned();
        if !self.sessions.lock().unwrap().contains(&session) {
            return xapi_error("SESSION_INVALID", &[&session]);
        }
        let p = |i: usize| params.get(i).and_then(Value::as_str).unwrap_or("").to_owned();
        match method.as_str() {
            "session.logout" => {
                self.sessions.lock().unwrap().remove(&session);
                ok(json!(""))
            }
            "VM.get_all_records" => ok(json!({
                "OpaqueRef:vm1": {"uuid": "u1", "name_label": "web", "power_state": "Running", "is_a_template": false,
                    "is_a_snapshot": false, "is_control_domain": false, "VBDs": ["OpaqueRef:vbd1"],
                    "memory_static_max": "2147483648", "VCPUs_max": "2", "platform": {"acpi": "1"}, "domid": "7"},
                "OpaqueRef:tpl": {"uuid": "u2", "name_label": "Debian", "is_a_template": true},
                "OpaqueRef:dom0": {"uuid": "u3", "name_label": "Control domain", "is_control_domain": true}
            })),
            "VM.get_record" => xapi_error("HANDLE_INVALID", &["VM", &p(1)]),
            // The JSON-RPC 1.0 error shape.
            "VM.get_by_uuid" => json!({"result": null, "error": ["UUID_INVALID", "VM", p(1)], "id": 1}),
            // The old Status/Failure shape.
            "VM.destroy" => {
                json!({"Status": "Failure", "ErrorDescription": ["VM_BAD_POWER_STATE", p(1), "halted", "running"]})
            }
            "VBD.get_record" => {
                ok(json!({"uuid": "b1", "VM": "OpaqueRef:vm1", "VDI": "OpaqueRef:disk", "userdevice": "0",
                "type": "Disk", "mode": "RW", "empty": false, "bootable": true}))
            }
            "VDI.get_record" => ok(json!({"uuid": "d1", "virtual_size": DISK, "type": "user", "cbt_enabled": true,
                "SR": "OpaqueRef:sr", "sm_config": {"vhd-parent": "x"}})),
            "VDI.get_virtual_size" => ok(json!(DISK)),
            "VDI.enable_cbt" | "VDI.data_destroy" | "task.destroy" => ok(json!("")),
            // Blocks 0, 1 and 48 (a 4 MiB disk has 64 blocks).
            "VDI.list_changed_blocks" => ok(json!("wAAAAAAAgAA=")),
            "VDI.get_nbd_info" => ok(json!([{"exportname": format!("/d1?session_id={session}"), "address": "10.0.0.1",
                "port": 10809, "cert": "", "subject": "host1"}])),
            "Async.VM.snapshot" => {
                if p(1) == "OpaqueRef:halted" {
                    return ok(json!("OpaqueRef:task-fail"));
                }
                ok(json!("OpaqueRef:task-snap"))
            }
            "task.create" => ok(json!("OpaqueRef:task-import")),
            "task.get_record" => match p(1).as_str() {
                "OpaqueRef:task-snap" => {
                    if self.task_polls.fetch_add(1, Ordering::SeqCst) < 2 {
                        ok(json!({"status": "pending", "progress": 0.5, "result": "", "error_info": []}))
                    } else {
                        ok(
                            json!({"status": "success", "progress": 1.0, "result": "<value>OpaqueRef:snap1</value>", "error_info": []}),
                        )
                    }
                }
                "OpaqueRef:task-fail" => ok(json!({"status": "failure", "result": "",
                    "error_info": ["VM_BAD_POWER_STATE", "OpaqueRef:halted", "running", "halted"]})),
                _ => ok(json!({"status": "success", "result": "", "error_info": []})),
            },
            "pool.hang" => Value::Null,
            _ => xapi_error("MESSAGE_METHOD_UNKNOWN", &[&method]),
        }
    }
}

/// The disk a VHD stream holds.
fn vhd_content(vhd: &[u8]) -> Vec<u8> {
    let mut r = StreamReader::with_label(vhd, "vhd").unwrap();
    let mut disk = vec![0u8; r.size().unwrap() as usize];
    while let Some(ext) = r.next_extent().unwrap() {
        disk[ext.offset as usize..ext.offset as usize + ext.data.len()].copy_from_slice(&ext.data);
    }
    disk
}

fn login(url: &str) -> Client {
    Client::builder(url).credentials("root", "pw").login().unwrap()
}

// ---------------------------------------------------------------------------

#[test]
fn login_call_typed_records_and_logout() {
    let x = FakeXapi::new();
    let srv = Responder::start("127.0.0.1:0", None, x.handler()).unwrap();
    let c = login(&srv.url());
    assert_eq!(c.session_ref().as_deref(), Some("OpaqueRef:session-1"));
    let login_params = x.calls.lock().unwrap()[0].1.clone();
    assert_eq!(login_params[0], "root");
    assert_eq!(login_params[3], "alike", "originator");

    let vms = c.vm_get_all_records().unwrap();
    let guests: Vec<_> = vms.iter().filter(|(_, v)| v.is_guest()).map(|(r, v)| (r.as_str(), v)).collect();
    assert_eq!(guests.len(), 1);
    let (r, vm) = guests[0];
    assert_eq!(r, "OpaqueRef:vm1");
    assert_eq!((vm.memory_static_max, vm.vcpus_max), (2 << 30, 2));
    assert_eq!(vm.other["domid"], "7");
    let vbd = c.vbd_get_record(&vm.vbds[0]).unwrap();
    assert!(vbd.is_disk() && vbd.userdevice == "0");
    let vdi = c.vdi_get_record(&vbd.vdi).unwrap();
    assert_eq!(vdi.virtual_size, DISK);
    assert!(vdi.cbt_enabled);
    c.vdi_enable_cbt(&vbd.vdi).unwrap();

    // CBT bitmap → 64 KiB block ranges.
    let cb = c.vdi_list_changed_blocks("OpaqueRef:old", "OpaqueRef:new").unwrap();
    let b = ChangedBlocks::BLOCK;
    assert_eq!(cb.ranges(DISK), vec![0..2 * b, 48 * b..49 * b]);
    assert_eq!(cb.count(DISK), 3);

    // NBD info → a builder for the NBD client (plaintext: no cert).
    let info = c.vdi_get_nbd_info("OpaqueRef:disk").unwrap();
    assert_eq!(info[0].port, 10809);
    assert!(!format!("{info:?}").contains("session-1"), "Debug hides the session");
    info[0].builder().unwrap();

    // The generic call: the session goes first.
    assert_eq!(c.call("VDI.get_virtual_size", &[json!("OpaqueRef:disk")]).unwrap(), json!(DISK));
    let (m, p) = x.calls.lock().unwrap().last().unwrap().clone();
    assert_eq!((m.as_str(), p[0].as_str()), ("VDI.get_virtual_size", Some("OpaqueRef:session-1")));

    c.logout().unwrap();
    assert!(c.session_ref().is_none());
    assert!(x.sessions.lock().unwrap().is_empty());

    // Wrong password: typed, with XAPI's parameters, and no password in the text.
    let e = Client::builder(srv.url()).credentials("root", "hunter2").login().unwrap_err();
    assert_eq!(e.xapi_code(), Some("SESSION_AUTHENTICATION_FAILED"));
    assert!(!e.to_string().contains("hunter2") && !format!("{e:?}").contains("hunter2"));
    let b = Client::builder(srv.url()).credentials("root", "hunter2").clone();
    assert!(!format!("{b:?}").contains("hunter2"));
}

#[test]
fn session_invalid_logs_in_again_once_and_retries() {
    let x = FakeXapi::new();
    let srv = Responder::start("127.0.0.1:0", None, x.handler()).unwrap();
    let c = Arc::new(login(&srv.url()));
    x.expire_sessions();
    assert_eq!(c.vdi_get_virtual_size("OpaqueRef:disk").unwrap(), DISK);
    assert_eq!(x.logins.load(Ordering::SeqCst), 2);
    assert_eq!(c.session_ref().as_deref(), Some("OpaqueRef:session-2"));

    // Many threads see the same session fail: one re-login serves them all.
    x.expire_sessions();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || c.vdi_get_virtual_size("OpaqueRef:disk").unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), DISK);
    }
    assert_eq!(x.logins.load(Ordering::SeqCst), 3);

    // A session that keeps failing is reported, not retried forever.
    let always = Arc::new(|req: &Req| {
        let v: Value = serde_json::from_slice(&req.body).unwrap();
        if v["method"] == "session.login_with_password" {
            return Reply::Json(ok(json!("OpaqueRef:s")));
        }
        Reply::Json(xapi_error("SESSION_INVALID", &["OpaqueRef:s"]))
    });
    let srv2 = Responder::start("127.0.0.1:0", None, always).unwrap();
    let c2 = login(&srv2.url());
    let e = c2.vm_get_all_records().unwrap_err();
    assert_eq!(e.xapi_code(), Some("SESSION_INVALID"));
}

#[test]
fn host_is_slave_moves_to_the_master() {
    let x = FakeXapi::new();
    // The member on 127.0.0.1:P, the master on 127.0.0.2:P (same port, as in a pool).
    let slave = Responder::start(
        "127.0.0.1:0",
        None,
        Arc::new(|_req: &Req| Reply::Json(xapi_error("HOST_IS_SLAVE", &["127.0.0.2"]))),
    )
    .unwrap();
    let port = slave.addr.port();
    let Some(_master) = Responder::start(&format!("127.0.0.2:{port}"), None, x.handler()) else {
        alike_testing::skip("127.0.0.2 cannot be bound here");
        return;
    };
    let c = login(&slave.url());
    assert_eq!(c.url(), format!("http://127.0.0.2:{port}/"));
    assert_eq!(c.vdi_get_virtual_size("OpaqueRef:disk").unwrap(), DISK);
    assert_eq!(x.logins.load(Ordering::SeqCst), 1);

    // A member that names an IPv6 master: the URL gets brackets.
    let v6 = Responder::start(
        "127.0.0.1:0",
        None,
        Arc::new(|_req: &Req| Reply::Json(xapi_error("HOST_IS_SLAVE", &["::1"]))),
    )
    .unwrap();
    let c =
        Client::builder(v6.url()).credentials("root", "pw").connect_timeout(Duration::from_secs(2)).build().unwrap();
    let _ = c.login(); // [::1]:port has no listener (or no IPv6): an error after the redirects
    assert_eq!(c.url(), format!("http://[::1]:{}/", v6.addr.port()));
}

#[test]
fn xapi_errors_keep_code_params_and_method_in_every_shape() {
    let x = FakeXapi::new();
    let srv = Responder::start("127.0.0.1:0", None, x.handler()).unwrap();
    let c = login(&srv.url());
    // JSON-RPC 2.0 error object.
    match c.vm_get_record("OpaqueRef:gone").unwrap_err() {
        Error::Xapi { method, code, params } => {
            assert_eq!((method.as_str(), code.as_str()), ("VM.get_record", "HANDLE_INVALID"));
            assert_eq!(params, ["VM", "OpaqueRef:gone"]);
        }
        e => panic!("{e:?}"),
    }
    // JSON-RPC 1.0 error list.
    let e = c.vm_get_by_uuid("nope").unwrap_err();
    assert_eq!(e.to_string(), "XAPI VM.get_by_uuid: UUID_INVALID [VM, nope]");
    // Status/Failure struct.
    let e = c.vm_destroy("OpaqueRef:vm1").unwrap_err();
    assert!(
        matches!(&e, Error::Xapi { code, params, .. } if code == "VM_BAD_POWER_STATE" && params.len() == 3),
        "{e:?}"
    );
    // Unknown method.
    let e = c.call("VM.frobnicate", &[]).unwrap_err();
    assert!(
        matches!(&e, Error::Xapi { code, params, .. } if code == "MESSAGE_METHOD_UNKNOWN" && params == &["VM.frobnicate"])
    );

    // Async: the task is polled until done, its XML-RPC result unwrapped, then destroyed.
    assert_eq!(c.vm_snapshot("OpaqueRef:vm1", "alike-1").unwrap(), "OpaqueRef:snap1");
    assert_eq!(x.task_polls.load(Ordering::SeqCst), 3);
    assert!(x.calls.lock().unwrap().iter().any(|(m, p)| m == "task.destroy" && p[1] == "OpaqueRef:task-snap"));
    // A failed task: its error_info, typed.
    match c.vm_snapshot("OpaqueRef:halted", "x").unwrap_err() {
        Error::Xapi { method, code, params } => {
            assert_eq!(method, "task of Async.VM.snapshot");
            assert_eq!(code, "VM_BAD_POWER_STATE");
            assert_eq!(params, ["OpaqueRef:halted", "running", "halted"]);
        }
        e => panic!("{e:?}"),
    }
    // An HTTP 500 (malformed request): status and body excerpt.
    let srv500 = Responder::start(
        "127.0.0.1:0",
        None,
        Arc::new(|_r: &Req| Reply::Status(500, vec![], "<html>Jsonrpc.Malformed_method_request(x)</html>".into())),
    )
    .unwrap();
    let e = Client::builder(srv500.url()).credentials("root", "pw").login().unwrap_err();
    assert!(matches!(&e, Error::HttpStatus { status: 500, body, .. } if body.contains("Malformed")), "{e:?}");
}

#[test]
fn calls_time_out_and_unreachable_hosts_are_named() {
    let srv = Responder::start("127.0.0.1:0", None, Arc::new(|_r: &Req| Reply::Hang)).unwrap();
    let t = std::time::Instant::now();
    let e = Client::builder(srv.url())
        .credentials("root", "pw")
        .call_timeout(Duration::from_millis(500))
        .login()
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(4));
    assert!(matches!(&e, Error::Http { timed_out: true, .. }), "{e:?}");
    eprintln!("{e}");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = Client::builder(format!("http://127.0.0.1:{port}")).login().unwrap_err();
    assert!(matches!(&e, Error::Http { timed_out: false, .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")) && e.to_string().contains("refused"), "{e}");
    eprintln!("{e}");
}

fn https_responder(handler: Handler) -> (Responder, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    (Responder::start("127.0.0.1:0", Some(Arc::new(cfg)), handler).unwrap(), ck.cert.pem())
}

#[test]
fn https_with_a_pinned_certificate_and_a_mismatch_refused() {
    let x = FakeXapi::new();
    let (srv, pem) = https_responder(x.handler());
    let url = format!("https://{}", srv.addr);
    let c = Client::builder(&url)
        .credentials("root", "pw")
        .server_cert(ServerCertCheck::pin_pem(&pem).unwrap())
        .login()
        .unwrap();
    assert_eq!(c.vdi_get_virtual_size("OpaqueRef:disk").unwrap(), DISK);
    // Exports go through the same check.
    let mut got = Vec::new();
    c.export_raw_vdi("OpaqueRef:disk", &ExportFormat::Raw).unwrap().read_to_end(&mut got).unwrap();
    assert!(got == x.disk);

    let wrong = alike_xen::nbd::format_fingerprint(&[0xAB; 32]);
    let e = Client::builder(&url)
        .credentials("root", "pw")
        .server_cert(ServerCertCheck::pin(&wrong).unwrap())
        .login()
        .unwrap_err();
    let der = alike_xen::nbd::pem_certs(&pem).unwrap().remove(0);
    match &e {
        Error::CertificateMismatch { expected, found, server } => {
            assert_eq!(expected, &vec![wrong.clone()]);
            assert_eq!(found, &alike_xen::nbd::format_fingerprint(&alike_xen::nbd::sha256(&der)));
            assert!(server.starts_with("https://127.0.0.1:"));
        }
        e => panic!("expected CertificateMismatch, got {e:?}"),
    }
    eprintln!("{e}");
    assert_eq!(x.logins.load(Ordering::SeqCst), 1, "the refused connection never logged in");
    // The platform's trust store does not know a self-signed pool
    // certificate: the error says so, shows its fingerprint and how to pin it.
    let e = Client::builder(&url).credentials("root", "pw").login().unwrap_err();
    let fp = alike_xen::nbd::format_fingerprint(&alike_xen::nbd::sha256(&der));
    match &e {
        Error::CertificateUntrusted { fingerprint, reason, .. } => {
            assert_eq!(fingerprint.as_deref(), Some(fp.as_str()));
            assert!(!reason.is_empty());
        }
        e => panic!("expected CertificateUntrusted, got {e:?}"),
    }
    let t = e.to_string();
    assert!(t.contains("not trusted") && t.contains(&fp) && t.contains("pin it with --fingerprint"), "{t}");
    eprintln!("{e}");
    // A fingerprint with plain HTTP is refused before anything is sent.
    let e = Client::builder(format!("http://{}", srv.addr))
        .server_cert(ServerCertCheck::pin(&fp).unwrap())
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("plain HTTP"), "{e}");
}

#[test]
fn replies_are_read_up_to_a_limit() {
    // A "login" answered with 10 MiB, announced or not: the client stops at
    // its limit (1 MiB here) with a clear error.
    for announced in [true, false] {
        let big = Arc::new(vec![b' '; 10 << 20]);
        let srv = Responder::start(
            "127.0.0.1:0",
            None,
            Arc::new(move |_req: &Req| Reply::Stream { body: big.to_vec(), length: announced.then_some(10 << 20) }),
        )
        .unwrap();
        let e = Client::builder(srv.url()).credentials("root", "pw").max_reply_bytes(1 << 20).login().unwrap_err();
        match &e {
            Error::ReplyTooLarge { limit, method, .. } => {
                assert_eq!(*limit, 1 << 20);
                assert_eq!(method, "session.login_with_password");
            }
            e => panic!("expected ReplyTooLarge, got {e:?}"),
        }
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
    }
    assert_eq!(alike_xen::xapi::DEFAULT_MAX_REPLY, 256 << 20);
}

#[test]
fn exports_stream_and_a_dropped_connection_is_a_clear_error() {
    let x = FakeXapi::new();
    let srv = Responder::start("127.0.0.1:0", None, x.handler()).unwrap();
    let c = login(&srv.url());

    // Raw: the whole disk, no Content-Length, checked against the virtual size.
    let mut s = c.export_raw_vdi("OpaqueRef:disk", &ExportFormat::Raw).unwrap();
    assert_eq!(s.expected_len(), Some(DISK));
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(got == x.disk);

    // VHD: straight into the streaming reader, never buffered whole.
    let s = c.export_raw_vdi("OpaqueRef:disk", &ExportFormat::Vhd).unwrap();
    let mut r = StreamReader::with_label(s, "export").unwrap();
    let mut rebuilt = vec![0u8; DISK as usize];
    while let Some(ext) = r.next_extent().unwrap() {
        rebuilt[ext.offset as usize..ext.offset as usize + ext.data.len()].copy_from_slice(&ext.data);
    }
    assert!(rebuilt == x.disk);
    assert!(vhd_content(&x.vhd) == x.disk);

    // Dropped after 1 MiB without a length: caught by the expected size.
    let mut s = c.export_raw_vdi("OpaqueRef:short", &ExportFormat::Raw).unwrap();
    let e = s.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    let text = e.to_string();
    assert!(
        text.contains("export of VDI OpaqueRef:short") && text.contains("ended after 1048576 of 4194304 bytes"),
        "{text}"
    );
    eprintln!("{text}");
    // Dropped after 1 MiB of an announced 4 MiB: the HTTP layer sees it.
    let mut s = c.export_raw_vdi("OpaqueRef:short-len", &ExportFormat::Raw).unwrap();
    let e = s.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("reading after") || e.to_string().contains("ended after"), "{e}");
    eprintln!("{e}");
    // A VHD cut in the middle: the streaming reader refuses it.
    let s = c.export_raw_vdi("OpaqueRef:short", &ExportFormat::Vhd).unwrap();
    let mut r = StreamReader::with_label(s, "export").unwrap();
    let e = loop {
        match r.next_extent() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a truncated VHD read to the end"),
            Err(e) => break e,
        }
    };
    eprintln!("{e}");

    // A delta export sends base=; an unknown one surfaces XAPI's 404.
    let e = c.export_raw_vdi("OpaqueRef:disk", &ExportFormat::VhdDelta { base: "OpaqueRef:old".into() }).map(|_| ());
    assert!(e.is_ok());
    let e = c.export_raw_vdi("OpaqueRef:nope", &ExportFormat::Vhd).unwrap_err();
    assert!(matches!(&e, Error::HttpStatus { status: 404, .. }), "{e:?}");
    assert!(!e.to_string().contains("session-1"), "session hidden: {e}");

    // An expired session on an export: one re-login, then it works.
    x.expire_sessions();
    let mut got = Vec::new();
    c.export_raw_vdi("OpaqueRef:disk", &ExportFormat::Vhd).unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(got, x.vhd);
}

#[test]
fn imports_send_a_content_length_and_wait_for_the_task() {
    let x = FakeXapi::new();
    let srv = Responder::start("127.0.0.1:0", None, x.handler()).unwrap();
    let c = login(&srv.url());
    let src = MemSource { label: "restore".into(), data: x.disk.clone() };

    let sent = c.import_disk("OpaqueRef:target", &src, ImportFormat::Vhd).unwrap();
    let sent_raw = c.import_disk("OpaqueRef:target", &src, ImportFormat::Raw).unwrap();
    c.import_raw_vdi("OpaqueRef:target", ImportFormat::Raw, std::io::Cursor::new(vec![5u8; 1000]), 1000).unwrap();
    let ups = x.uploads.lock().unwrap().clone();
    assert_eq!(ups.len(), 3);
    for (u, (fmt, body)) in ups.iter().zip([("vhd", &x.disk), ("raw", &x.disk), ("raw", &vec![5u8; 1000])]) {
        assert_eq!(u.query["format"], fmt);
        assert_eq!(u.query["vdi"], "OpaqueRef:target");
        assert_eq!(u.query["task_id"], "OpaqueRef:task-import");
        assert!(!u.headers.contains_key("transfer-encoding"));
        assert_eq!(u.headers["content-length"], u.body.len().to_string());
        let got = if fmt == "vhd" { vhd_content(&u.body) } else { u.body.clone() };
        assert!(got == *body, "{fmt} body differs");
    }
    assert_eq!((sent, sent_raw), (ups[0].body.len() as u64, DISK));
    assert_eq!(x.calls.lock().unwrap().iter().filter(|(m, _)| m == "task.get_record").count(), 3);

    // XAPI's 302 (the SR is on another host): an error naming the place, session hidden.
    let e = c.import_disk("OpaqueRef:elsewhere", &src, ImportFormat::Raw).unwrap_err();
    let text = e.to_string();
    assert!(matches!(&e, Error::HttpStatus { status: 302, .. }), "{e:?}");
    assert!(text.contains("redirected to https://10.0.0.9/import_raw_vdi") && !text.contains("session-1"), "{text}");
    eprintln!("{text}");

    // A body shorter than announced fails the upload.
    let e = c.import_raw_vdi("OpaqueRef:target", ImportFormat::Raw, std::io::Cursor::new(vec![0u8; 10]), 1000);
    assert!(e.is_err());
    assert_eq!(src.size(), DISK);
}
