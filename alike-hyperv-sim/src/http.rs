//! The HTTP side of the WS-Management listener, as HTTP.sys and WinRM
//! answer on port 5985: `POST /wsman`, HTTP/1.1 keep-alive, a thread per
//! connection (bounded), connection-bound `Negotiate` authentication with
//! raw NTLM tokens, then every message sealed with the NTLM session
//! (`multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted"`,
//! MS-WSMV §2.2.9.1). Unencrypted SOAP is refused, as a Windows host with
//! the default `AllowUnencrypted=false` refuses it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::Inner;
use crate::ntlm::{Acceptor, Names, Session};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// Request headers and bodies are bounded.
const MAX_HEADER: usize = 64 << 10;
const MAX_BODY: usize = 4 << 20;
const BOUNDARY: &[u8] = b"--Encrypted Boundary";
const PROTOCOL: &str = "application/HTTP-SPNEGO-session-encrypted";

/// A connection: plain TCP or TLS over it.
pub(crate) trait Wire: Read + Write {
    fn tcp(&self) -> &TcpStream;
    fn is_tls(&self) -> bool;
}

impl Wire for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
    fn is_tls(&self) -> bool {
        false
    }
}

impl Wire for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
    fn is_tls(&self) -> bool {
        true
    }
}

/// Accepts connections until `stop` is set (checked every 100 ms).
pub(crate) fn serve(listener: TcpListener, inner: Arc<Inner>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    drop(s);
                    continue;
                }
                active.fetch_add(1, Ordering::AcqRel);
                let inner = Arc::clone(&inner);
                let active2 = Arc::clone(&active);
                let stop = Arc::clone(&stop);
                let spawned = std::thread::Builder::new().name("wsman-conn".into()).spawn(move || {
                    let _ = s.set_nonblocking(false);
                    match &inner.tls {
                        Some(cfg) => {
                            if let Ok(conn) = rustls::ServerConnection::new(Arc::clone(cfg)) {
                                connection(rustls::StreamOwned::new(conn, s), &inner, &stop);
                            }
                        }
                        None => connection(s, &inner, &stop),
                    }
                    active2.fetch_sub(1, Ordering::AcqRel);
                });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one request; `None` at a clean end of the connection or on garbage.
fn read_request(s: &mut dyn Wire, buf: &mut Vec<u8>, stop: &AtomicBool) -> Option<Request> {
    let mut chunk = [0u8; 16 << 10];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let method = req.method.unwrap_or_default().to_owned();
                let path = req.path.unwrap_or_default().to_owned();
                let hs: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).trim().to_owned()))
                    .collect();
                if hs
                    .iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case("Transfer-Encoding") && !v.eq_ignore_ascii_case("identity"))
                {
                    let _ = respond(s, 411, &[], b"");
                    return None;
                }
                let len = hs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
                    .map_or(Some(0), |(_, v)| v.parse::<usize>().ok())?;
                if len > MAX_BODY {
                    let _ = respond(s, 413, &[], b"");
                    return None;
                }
                buf.drain(..n);
                while buf.len() < len {
                    let k = read_some(s, &mut chunk, stop)?;
                    buf.extend_from_slice(&chunk[..k]);
                }
                let body = buf.drain(..len).collect();
                return Some(Request { method, path, headers: hs, body });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEADER {
                    return None;
                }
                let k = read_some(s, &mut chunk, stop)?;
                buf.extend_from_slice(&chunk[..k]);
            }
            Err(_) => {
                let _ = respond(s, 400, &[], b"");
                return None;
            }
        }
    }
}

/// Reads what arrives, waking every 200 ms to see whether the server stops.
fn read_some(s: &mut dyn Wire, chunk: &mut [u8], stop: &AtomicBool) -> Option<usize> {
    let _ = s.tcp().set_read_timeout(Some(Duration::from_millis(200)));
    let mut idle = Duration::ZERO;
    loop {
        match s.read(chunk) {
            Ok(0) => return None,
            Ok(k) => return Some(k),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                idle += Duration::from_millis(200);
                // An idle keep-alive connection is closed after two minutes, as HTTP.sys does.
                if stop.load(Ordering::Relaxed) || idle > Duration::from_secs(120) {
                    return None;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Request Entity Too Large",
        500 => "Internal Server Error",
        _ => "Error",
    }
}

fn respond(s: &mut dyn Wire, status: u16, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status} {}\r\nServer: Microsoft-HTTPAPI/2.0\r\n", reason(status));
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(h.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

enum Auth {
    None,
    Challenged(Acceptor),
    Done(Box<Session>),
}

fn filetime_now() -> u64 {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (unix.as_secs() + 11_644_473_600) * 10_000_000 + u64::from(unix.subsec_nanos() / 100)
}

fn unauthorized(s: &mut dyn Wire, token: Option<&[u8]>) -> std::io::Result<()> {
    let v = match token {
        Some(t) => format!("Negotiate {}", B64.encode(t)),
        None => "Negotiate".into(),
    };
    if token.is_none() && s.is_tls() {
        // Over HTTPS, Basic is offered too (WinRM's Basic=true on the HTTPS listener).
        return respond(s, 401, &[("WWW-Authenticate", v), ("WWW-Authenticate", "Basic realm=\"WSMAN\"".into())], b"");
    }
    respond(s, 401, &[("WWW-Authenticate", v)], b"")
}

fn connection<W: Wire>(mut s: W, inner: &Inner, stop: &AtomicBool) {
    let mut buf = Vec::new();
    let mut auth = Auth::None;
    while let Some(req) = read_request(&mut s, &mut buf, stop) {
        let close = req.header("Connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        if handle(&mut s, inner, &mut auth, &req).is_err() || close {
            return;
        }
    }
}

/// The test API for out-of-process tests (no Hyper-V host has it):
/// `POST /sim/guest-write?vm=NAME&disk=N&offset=O` with the bytes as the
/// body, and `POST /sim/reset-rct?vm=NAME&disk=N`. Unauthenticated: the
/// simulator listens on loopback for tests.
fn sim_api(s: &mut dyn Wire, inner: &Inner, req: &Request) -> std::io::Result<()> {
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let arg = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('=')));
    let mut host = inner.host.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(vm) = arg("vm").and_then(|n| host.vm_by_name(n)).map(|v| v.id.clone()) else {
        return respond(s, 404, &[], b"no such VM");
    };
    let disk = arg("disk").and_then(|d| d.parse().ok()).unwrap_or(0);
    let r = match path {
        "/sim/guest-write" => {
            let offset = arg("offset").and_then(|d| d.parse().ok()).unwrap_or(0);
            host.guest_write(&vm, disk, &[(offset, req.body.clone())])
        }
        "/sim/reset-rct" => host.reset_rct(&vm, disk),
        _ => return respond(s, 404, &[], b""),
    };
    match r {
        Ok(()) => respond(s, 200, &[], b""),
        Err(e) => respond(s, 400, &[], e.to_string().as_bytes()),
    }
}

fn handle(s: &mut dyn Wire, inner: &Inner, auth: &mut Auth, req: &Request) -> std::io::Result<()> {
    if req.path.starts_with("/sim/") && req.method == "POST" {
        return sim_api(s, inner, req);
    }
    if !req.path.eq_ignore_ascii_case("/wsman") {
        return respond(s, 404, &[], b"");
    }
    if req.method != "POST" {
        return respond(s, 405, &[], b"");
    }
    if let Some(h) = req.header("Authorization") {
        let (scheme, token) = h.split_once(' ').unwrap_or((h, ""));
        if scheme.eq_ignore_ascii_case("Basic") && s.is_tls() {
            // Basic over HTTPS: every request carries the credentials.
            let ok = B64.decode(token.trim()).ok().and_then(|b| String::from_utf8(b).ok()).is_some_and(|up| {
                up.split_once(':').is_some_and(|(u, p)| u.eq_ignore_ascii_case(&inner.user) && p == inner.password)
            });
            *auth = Auth::None;
            if !ok {
                return unauthorized(s, None);
            }
            return plain_soap(s, inner, req);
        }
        if !scheme.eq_ignore_ascii_case("Negotiate") && !scheme.eq_ignore_ascii_case("NTLM") {
            // Basic (and anything else) is refused over HTTP.
            *auth = Auth::None;
            return unauthorized(s, None);
        }
        let Ok(token) = B64.decode(token.trim()) else {
            *auth = Auth::None;
            return unauthorized(s, None);
        };
        let kind = token.get(8..12).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if !token.starts_with(b"NTLMSSP\0") {
            // SPNEGO-wrapped (Kerberos or NTLM in a NegTokenInit) is not spoken here.
            *auth = Auth::None;
            return unauthorized(s, None);
        }
        if kind == Some(1) {
            let mut challenge = [0u8; 8];
            let _ = alike_core::random_bytes(&mut challenge);
            let names = Names { computer: &inner.host_name, domain: "WORKGROUP" };
            return match Acceptor::new(&token, &inner.user, &inner.password, &names, challenge, filetime_now()) {
                Ok((a, msg)) => {
                    *auth = Auth::Challenged(a);
                    unauthorized(s, Some(&msg))
                }
                Err(_) => {
                    *auth = Auth::None;
                    unauthorized(s, None)
                }
            };
        }
        match std::mem::replace(auth, Auth::None) {
            Auth::Challenged(a) if kind == Some(3) => match a.accept(&token) {
                Ok((session, _user)) => *auth = Auth::Done(Box::new(session)),
                Err(_) => return unauthorized(s, None),
            },
            _ => return unauthorized(s, None),
        }
    }
    let Auth::Done(session) = auth else { return unauthorized(s, None) };
    if req.body.is_empty() {
        return respond(s, 200, &[], b"");
    }
    let ct = req.header("Content-Type").unwrap_or_default();
    if s.is_tls() && !ct.to_ascii_lowercase().starts_with("multipart/encrypted") {
        // Inside TLS the SOAP travels in clear after NTLM (as pywinrm and Windows do over HTTPS).
        return plain_soap(s, inner, req);
    }
    if !ct.to_ascii_lowercase().starts_with("multipart/encrypted") || !ct.contains(PROTOCOL) {
        // AllowUnencrypted=false: plain SOAP over HTTP is refused.
        return respond(s, 400, &[], b"");
    }
    let Some(plain) = unseal_body(session, &req.body) else {
        // A body that does not decrypt ends the session, as SSPI would.
        *auth = Auth::None;
        return unauthorized(s, None);
    };
    let doc = String::from_utf8_lossy(&plain);
    let (status, reply) = crate::soap::handle(&inner.host, &inner.enums, &doc);
    let body = seal_body(session, reply.as_bytes());
    respond(
        s,
        status,
        &[("Content-Type", format!("multipart/encrypted;protocol=\"{PROTOCOL}\";boundary=\"Encrypted Boundary\""))],
        &body,
    )
}

/// A SOAP request in clear (inside TLS), answered in clear.
fn plain_soap(s: &mut dyn Wire, inner: &Inner, req: &Request) -> std::io::Result<()> {
    if req.body.is_empty() {
        return respond(s, 200, &[], b"");
    }
    let doc = String::from_utf8_lossy(&req.body);
    let (status, reply) = crate::soap::handle(&inner.host, &inner.enums, &doc);
    respond(s, status, &[("Content-Type", "application/soap+xml;charset=UTF-8".into())], reply.as_bytes())
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Decodes and unseals a `multipart/encrypted` body (one message; pywinrm
/// and Windows send exactly one for Negotiate).
fn unseal_body(session: &mut Session, body: &[u8]) -> Option<Vec<u8>> {
    let first = find(body, BOUNDARY, 0)?;
    let second = find(body, BOUNDARY, first + BOUNDARY.len())?;
    let head = std::str::from_utf8(&body[first + BOUNDARY.len()..second]).ok()?;
    if !head.contains(PROTOCOL) {
        return None;
    }
    let len: usize = head.split("Length=").nth(1)?.trim().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    let marker = b"application/octet-stream\r\n";
    let data = find(body, marker, second)? + marker.len();
    let sig_len = u32::from_le_bytes(body.get(data..data + 4)?.try_into().ok()?) as usize;
    if sig_len != 16 {
        return None;
    }
    let sig = body.get(data + 4..data + 20)?;
    let mut msg = body.get(data + 20..data + 20 + len)?.to_vec();
    session.unseal(&mut msg, sig).ok()?;
    Some(msg)
}

fn seal_body(session: &mut Session, plain: &[u8]) -> Vec<u8> {
    let mut msg = plain.to_vec();
    let sig = session.seal(&mut msg);
    let mut out = Vec::with_capacity(msg.len() + 256);
    out.extend_from_slice(BOUNDARY);
    out.extend_from_slice(
        format!(
            "\r\n\tContent-Type: {PROTOCOL}\r\n\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length={}\r\n",
            plain.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(BOUNDARY);
    out.extend_from_slice(b"\r\n\tContent-Type: application/octet-stream\r\n");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&sig);
    out.extend_from_slice(&msg);
    out.extend_from_slice(BOUNDARY);
    out.extend_from_slice(b"--\r\n");
    out
}
