//! The HTTP front-end: a small HTTP/1.1 server (keep-alive for RPC, one
//! transfer per connection for the disk handlers, as XAPI), routed by
//! longest path prefix like XAPI's `Http_svr`.
//!
//! It is hand-written rather than built on hyper because the fidelity
//! points are HTTP-level quirks: close-delimited export bodies, 200 OK sent
//! before an import body is read, `Transfer-Encoding: chunked` refused on
//! import with 404, an announced `Content-Length` larger than the data
//! (Xen Orchestra's 1 PiB trick) ending at EOF, XAPI's HTML 500 pages, and
//! connections cut mid-body for fault injection.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::Inner;
use crate::api::Ctx;
use crate::error::Error;
use crate::records::Class;
use crate::store::{ChainReader, VHD_BLOCK, block_ranges};
use crate::value::{self, Value, escape};

/// A byte stream, plain or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = BufReader<Box<dyn Io>>;

/// Largest RPC body accepted.
const MAX_RPC_BODY: u64 = 64 << 20;
/// Largest VHD-backed VDI XAPI exports as VHD (2040 GiB).
const MAX_VHD_SIZE: u64 = 2040 << 30;

/// Accepts connections until the runtime stops.
pub(crate) async fn serve(listener: TcpListener, inner: Arc<Inner>, ctx: Ctx, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (inner, ctx, tls) = (Arc::clone(&inner), ctx.clone(), tls.clone());
        tokio::spawn(async move {
            let io: Box<dyn Io> = match tls {
                Some(acc) => match acc.accept(stream).await {
                    Ok(s) => Box::new(s),
                    Err(_) => return,
                },
                None => Box::new(stream),
            };
            let mut conn = BufReader::with_capacity(64 << 10, io);
            while let Ok(Some(req)) = read_head(&mut conn).await {
                match dispatch(&mut conn, &req, &inner, &ctx).await {
                    Ok(true) => {}
                    _ => break,
                }
            }
            let _ = conn.get_mut().shutdown().await;
        });
    }
}

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    http10: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn param(&self, name: &str) -> Option<String> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
    fn has_param(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }
    fn cookie(&self, name: &str) -> Option<String> {
        let c = self.header("cookie")?;
        c.split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }
    fn keep_alive(&self) -> bool {
        let conn = self.header("connection").map(str::to_ascii_lowercase);
        if self.http10 { conn.as_deref() == Some("keep-alive") } else { conn.as_deref() != Some("close") }
    }
    fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.trim().parse().ok())
    }
    fn chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_head(conn: &mut Conn) -> io::Result<Option<Request>> {
    let mut buf = Vec::new();
    loop {
        let n = conn.read_until(b'\n', &mut buf).await?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        if buf == b"\r\n" || buf == b"\n" {
            buf.clear();
            continue;
        }
        if buf.ends_with(b"\r\n\r\n") || buf.ends_with(b"\n\n") {
            break;
        }
        if buf.len() > 64 << 10 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too long"));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "bad request head")),
    }
    let target = req.path.unwrap_or("/");
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let query = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect();
    Ok(Some(Request {
        method: req.method.unwrap_or("GET").to_owned(),
        path: percent_decode(path),
        query,
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
            .collect(),
        http10: req.version == Some(0),
    }))
}

/// Reads a whole (small) body: by length, chunked, or none.
async fn read_body(conn: &mut Conn, req: &Request) -> io::Result<Vec<u8>> {
    if req.chunked() {
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).await?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                loop {
                    line.clear();
                    if conn.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                        return Ok(out);
                    }
                }
            }
            if out.len() as u64 + size > MAX_RPC_BODY {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
            }
            let at = out.len();
            out.resize(at + size as usize, 0);
            conn.read_exact(&mut out[at..]).await?;
            let mut crlf = String::new();
            conn.read_line(&mut crlf).await?;
        }
    }
    let len = req.content_length().unwrap_or(0);
    if len > MAX_RPC_BODY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
    }
    let mut out = vec![0u8; len as usize];
    conn.read_exact(&mut out).await?;
    Ok(out)
}

async fn send(w: &mut Conn, status: &str, headers: &[(&str, &str)], body: &[u8], keep: bool) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: {}\r\n\r\n",
        body.len(),
        if keep { "keep-alive" } else { "close" }
    ));
    let io = conn_io(w);
    io.write_all(head.as_bytes()).await?;
    io.write_all(body).await?;
    io.flush().await
}

fn conn_io(c: &mut Conn) -> &mut Box<dyn Io> {
    c.get_mut()
}

/// XAPI's HTTP 500 page.
async fn send_500(w: &mut Conn, info: &str) -> io::Result<()> {
    let body = format!(
        "<html><body><h1>HTTP 500 internal server error</h1>An unexpected error occurred; please wait a while and try again. If the problem persists, please contact your support representative.<h1> Additional information </h1>{}</body></html>",
        escape(info)
    );
    send(
        w,
        "500 Internal Error",
        &[("content-type", "text/html"), ("cache-control", "no-cache, no-store")],
        body.as_bytes(),
        false,
    )
    .await
}

async fn send_text(w: &mut Conn, status: &str, text: &str) -> io::Result<()> {
    send(w, status, &[("content-type", "text/plain")], text.as_bytes(), false).await
}

/// Routes one request; returns whether the connection stays open.
async fn dispatch(conn: &mut Conn, req: &Request, inner: &Arc<Inner>, ctx: &Ctx) -> io::Result<bool> {
    let path = req.path.as_str();
    let m = req.method.as_str();
    if req.header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
        // curl asks before sending a PUT body; without this it waits, or
        // takes the import's early 200 as the final answer and sends nothing.
        conn_io(conn).write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    if path.starts_with("/export_raw_vdi") && m == "GET" {
        export(conn, req, inner).await?;
        return Ok(false);
    }
    if path.starts_with("/import_raw_vdi") && m == "PUT" {
        import(conn, req, inner).await?;
        return Ok(false);
    }
    if path.starts_with("/sim/") {
        sim_api(conn, req, inner).await?;
        return Ok(false);
    }
    if m == "OPTIONS" {
        let h = [
            ("access-control-allow-origin", "*"),
            ("access-control-allow-headers", "X-Requested-With, Content-Type"),
            ("access-control-allow-methods", "POST, OPTIONS"),
        ];
        send(conn, "200 OK", &h, b"", req.keep_alive()).await?;
        return Ok(req.keep_alive());
    }
    if m != "POST" {
        send_text(conn, "404 Not Found", "Not found").await?;
        return Ok(false);
    }
    let body = match read_body(conn, req).await {
        Ok(b) => b,
        Err(e) => {
            send_500(conn, &e.to_string()).await?;
            return Ok(false);
        }
    };
    if path.starts_with("/jsonrpc") {
        json_rpc(conn, req, inner, ctx, &body).await
    } else {
        xml_rpc(conn, req, inner, ctx, &body).await
    }
}

async fn run_call(inner: &Arc<Inner>, ctx: &Ctx, method: String, params: Vec<Value>) -> Result<Value, Error> {
    let (inner, ctx) = (Arc::clone(inner), ctx.clone());
    tokio::task::spawn_blocking(move || inner.call(&method, params, &ctx))
        .await
        .unwrap_or_else(|e| Err(Error::api("INTERNAL_ERROR", [e.to_string()])))
}

async fn xml_rpc(conn: &mut Conn, req: &Request, inner: &Arc<Inner>, ctx: &Ctx, body: &[u8]) -> io::Result<bool> {
    let (method, params) = match value::parse_method_call(body) {
        Ok(c) => c,
        Err(e) => {
            send_500(conn, &format!("Xmlrpc.Parse_error(\"{e}\")")).await?;
            return Ok(false);
        }
    };
    let reply = match run_call(inner, ctx, method, params).await {
        Ok(v) => value::method_response(Ok(&v)),
        Err(e) => {
            let (code, params) = e.to_xapi();
            value::method_response(Err((&code, &params)))
        }
    };
    let keep = req.keep_alive();
    send(conn, "200 OK", &[("content-type", "text/xml")], reply.as_bytes(), keep).await?;
    Ok(keep)
}

async fn json_rpc(conn: &mut Conn, req: &Request, inner: &Arc<Inner>, ctx: &Ctx, body: &[u8]) -> io::Result<bool> {
    let malformed = || format!("Jsonrpc.Malformed_method_request(\"{}\")", String::from_utf8_lossy(body));
    let Ok(j) = serde_json::from_slice::<serde_json::Value>(body) else {
        send_500(conn, &malformed()).await?;
        return Ok(false);
    };
    let obj = j.as_object();
    let method = obj.and_then(|o| o.get("method")).and_then(|m| m.as_str());
    let params = obj.and_then(|o| o.get("params")).and_then(|p| p.as_array());
    let id = obj.and_then(|o| o.get("id")).filter(|i| i.is_string() || i.is_number());
    let (Some(method), Some(params), Some(id)) = (method, params, id) else {
        send_500(conn, &malformed()).await?;
        return Ok(false);
    };
    let v2 = obj.and_then(|o| o.get("jsonrpc")).and_then(|v| v.as_str()) == Some("2.0");
    let params = params.iter().map(Value::from_json).collect();
    let reply = match (run_call(inner, ctx, method.to_owned(), params).await, v2) {
        (Ok(v), true) => serde_json::json!({"jsonrpc": "2.0", "result": v.to_json(), "id": id}),
        (Ok(v), false) => serde_json::json!({"result": v.to_json(), "error": null, "id": id}),
        (Err(e), true) => {
            let (code, data) = e.to_xapi();
            serde_json::json!({"jsonrpc": "2.0", "error": {"code": 1, "message": code, "data": data}, "id": id})
        }
        (Err(e), false) => {
            let (code, data) = e.to_xapi();
            let mut arr = vec![serde_json::Value::String(code)];
            arr.extend(data.into_iter().map(serde_json::Value::String));
            serde_json::json!({"result": null, "error": arr, "id": id})
        }
    };
    let keep = req.keep_alive();
    send(conn, "200 OK", &[("content-type", "application/json")], reply.to_string().as_bytes(), keep).await?;
    Ok(keep)
}

/// A session for a transfer: `session_id` cookie or query parameter, or HTTP
/// Basic auth (a session is made and dropped after). `None`: unauthorised.
fn authenticate(req: &Request, inner: &Inner) -> Option<(String, bool)> {
    let mut st = inner.state();
    if let Some(s) = req.cookie("session_id").or_else(|| req.param("session_id")) {
        return st.check_session(&s).ok().map(|()| (s, false));
    }
    let auth = req.header("authorization")?;
    let b64 = auth.strip_prefix("Basic ").or_else(|| auth.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (user, pw) = raw.split_once(':')?;
    st.login(user, pw, "basic-auth").ok().map(|s| (s, true))
}

async fn unauthorised(conn: &mut Conn) -> io::Result<()> {
    send(
        conn,
        "401 Unauthorised",
        &[("www-authenticate", "Basic realm=\"xapi\""), ("content-type", "text/plain")],
        b"Unauthorised",
        false,
    )
    .await
}

fn end_session(inner: &Inner, session: &str, temporary: bool) {
    if temporary {
        inner.state().logout(session);
    }
}

/// The task named by `task_id`, if it exists.
fn task_of(req: &Request, inner: &Inner) -> Option<String> {
    let t = req.param("task_id").or_else(|| req.cookie("task_id"))?;
    inner.state().exists(Class::Task, &t).then_some(t)
}

fn finish_task(inner: &Inner, task: Option<&str>, r: std::result::Result<&Value, &Error>) {
    if let Some(t) = task {
        let mut st = inner.state();
        let before = st.objects.clone();
        st.task_finish(t, r);
        st.track(&before);
    }
}

/// An empty disk of a given size (the stand-in parent of a delta VHD).
struct Empty(u64);
impl alike_core::DiskSource for Empty {
    fn label(&self) -> String {
        "base".into()
    }
    fn size(&self) -> u64 {
        self.0
    }
    fn allocated_ranges(&self) -> alike_core::Result<Vec<std::ops::Range<u64>>> {
        Ok(Vec::new())
    }
    fn read_at(&self, _: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        buf.fill(0);
        Ok(())
    }
}

/// A VHD unique id derived from a VDI uuid, so that a full export of a
/// snapshot and a later delta over it name each other.
fn vhd_uid(uuid: &str) -> [u8; 16] {
    let hex: String = uuid.chars().filter(char::is_ascii_hexdigit).collect();
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0);
    }
    out
}

/// Sets the unique id in both footers of a dynamic/differencing VHD file
/// and fixes their checksums.
fn patch_uid(path: &std::path::Path, uid: [u8; 16]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    for at in [0, len.saturating_sub(512)] {
        let mut footer = [0u8; 512];
        f.read_exact_at(&mut footer, at)?;
        footer[68..84].copy_from_slice(&uid);
        footer[64..68].fill(0);
        let sum: u32 = footer.iter().map(|&b| u32::from(b)).sum();
        footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
        f.write_all_at(&footer, at)?;
    }
    f.sync_all()
}

/// A `Write` that hands 1 MiB pieces to the async side.
struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let piece = std::mem::take(&mut self.buf);
            self.tx.blocking_send(piece).map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }
}

/// What an export sends.
enum ExportBody {
    Raw(ChainReader),
    Vhd(ChainReader, [u8; 16]),
    Delta {
        reader: ChainReader,
        blocks: BTreeSet<u64>,
        uid: [u8; 16],
        base_uid: [u8; 16],
        base_uuid: String,
        base_size: u64,
    },
}

fn produce(body: ExportBody, w: &mut ChannelWriter, tmp: &std::path::Path) -> Result<(), Error> {
    use alike_formats::vhd::{VhdOptions, write_differencing, write_stream};
    match body {
        ExportBody::Raw(r) => {
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0;
            while off < r.size() {
                let n = (r.size() - off).min(buf.len() as u64) as usize;
                r.read_at(off, &mut buf[..n])?;
                w.write_all(&buf[..n]).map_err(Error::io("export stream"))?;
                off += n as u64;
            }
        }
        ExportBody::Vhd(r, uid) => {
            write_stream(&r, &mut *w, &VhdOptions::default().unique_id(uid))?;
        }
        ExportBody::Delta { reader, blocks, uid, base_uid, base_uuid, base_size } => {
            let work = tmp.join(crate::state::new_uuid());
            std::fs::create_dir_all(&work).map_err(Error::io(&work))?;
            let result: Result<(), Error> = (|| {
                let parent = work.join(format!("{base_uuid}.vhd"));
                let f = std::fs::File::create(&parent).map_err(Error::io(&parent))?;
                write_stream(
                    &Empty(base_size.max(reader.size())),
                    io::BufWriter::new(f),
                    &VhdOptions::default().unique_id(base_uid),
                )?;
                let child = work.join("delta.vhd");
                write_differencing(&child, &parent, &reader, &block_ranges(&blocks, reader.size()))?;
                patch_uid(&child, uid).map_err(Error::io(&child))?;
                let mut f = std::fs::File::open(&child).map_err(Error::io(&child))?;
                io::copy(&mut f, &mut *w).map_err(Error::io("export stream"))?;
                Ok(())
            })();
            let _ = std::fs::remove_dir_all(&work);
            result?;
        }
    }
    w.flush().map_err(Error::io("export stream"))
}

/// What to send for an export, or the failure (and whether it is a 404).
fn prepare_export(
    inner: &Inner,
    vdi_arg: &str,
    format: &str,
    base: Option<String>,
) -> Result<ExportBody, (Error, bool)> {
    let st = inner.state();
    let vdi = st.resolve(Class::Vdi, vdi_arg).ok_or_else(|| (Error::api("HANDLE_INVALID", ["VDI", vdi_arg]), true))?;
    let reader = st.vdi_reader(&vdi).map_err(|e| (e, false))?;
    let uuid = st.str_of(&vdi, "uuid");
    if format == "vhd" && reader.size() > MAX_VHD_SIZE {
        return Err((Error::api("VDI_TOO_LARGE", [vdi.as_str(), &MAX_VHD_SIZE.to_string()]), false));
    }
    Ok(match (format, base) {
        ("raw", _) => ExportBody::Raw(reader),
        (_, None) => ExportBody::Vhd(reader, vhd_uid(&uuid)),
        (_, Some(b)) => {
            let base = st.resolve(Class::Vdi, &b);
            let base_uuid = base.as_ref().map(|r| st.str_of(r, "uuid")).unwrap_or_default();
            let blocks = base
                .as_ref()
                .and_then(|_| st.store.delta_blocks(&uuid, &base_uuid))
                .ok_or_else(|| (Error::api("VDI_IO_ERROR", ["Cannot compute differences on non-VHD images"]), false))?;
            let base_size = st.store.size(&base_uuid);
            ExportBody::Delta {
                reader,
                blocks,
                uid: vhd_uid(&uuid),
                base_uid: vhd_uid(&base_uuid),
                base_uuid,
                base_size,
            }
        }
    })
}

/// `GET /export_raw_vdi?vdi=&format=raw|vhd[&base=]`.
async fn export(conn: &mut Conn, req: &Request, inner: &Arc<Inner>) -> io::Result<()> {
    let Some((session, temporary)) = authenticate(req, inner) else { return unauthorised(conn).await };
    let task = task_of(req, inner);
    let result = export_inner(conn, req, inner, task.as_deref()).await;
    end_session(inner, &session, temporary);
    result
}

async fn export_inner(conn: &mut Conn, req: &Request, inner: &Arc<Inner>, task: Option<&str>) -> io::Result<()> {
    let fail = |e: Error| {
        finish_task(inner, task, Err(&e));
    };
    let Some(vdi_arg) = req.param("vdi") else {
        fail(Error::api("INTERNAL_ERROR", ["Missing vdi query parameter"]));
        return send_500(conn, "Failure(\"Missing vdi query parameter\")").await;
    };
    let format = req.param("format").unwrap_or_else(|| "raw".into()).to_ascii_lowercase();
    if !matches!(format.as_str(), "raw" | "vhd") {
        fail(Error::api("INTERNAL_ERROR", [format!("Unknown format {format}")]));
        return send_text(conn, "404 Not Found", &format!("Unknown format {format}")).await;
    }
    let prepared = prepare_export(inner, &vdi_arg, &format, req.param("base").filter(|b| !b.is_empty()));
    let body = match prepared {
        Ok(b) => b,
        Err((e, not_found)) => {
            let msg = e.to_string();
            fail(e);
            return if not_found {
                send_text(conn, "404 Not Found", "VDI not found").await
            } else {
                send_500(conn, &msg).await
            };
        }
    };
    if let Some(d) = inner.faults.delay() {
        tokio::time::sleep(d).await;
    }
    let uuid_name = req.param("vdi").unwrap_or_default();
    let ctype = if format == "raw" { "application/octet-stream" } else { "application/vhd" };
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: {ctype}\r\ncontent-disposition: attachment; filename=\"{uuid_name}.{format}\"\r\n"
    );
    if let Some(t) = task {
        head.push_str(&format!("task-id: {t}\r\n"));
    }
    head.push_str("\r\n");
    conn_io(conn).write_all(head.as_bytes()).await?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let tmp = inner.tmp_dir.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter { tx, buf: Vec::new() };
        produce(body, &mut w, &tmp)
    });
    let mut limit = inner.faults.take_export_drop();
    let mut sent = 0u64;
    let mut cut = false;
    while let Some(piece) = rx.recv().await {
        let piece = match limit {
            Some(l) if sent + piece.len() as u64 >= l => {
                cut = true;
                &piece[..(l - sent) as usize]
            }
            _ => &piece[..],
        };
        if conn_io(conn).write_all(piece).await.is_err() {
            cut = true;
        }
        sent += piece.len() as u64;
        if cut {
            limit = None;
            break;
        }
    }
    drop(rx);
    let _ = limit;
    let produced = producer.await.unwrap_or_else(|e| Err(Error::api("INTERNAL_ERROR", [e.to_string()])));
    if cut {
        fail(Error::api("VDI_IO_ERROR", ["Device I/O errors"]));
        // Drop the connection without a clean close.
        return Err(io::ErrorKind::ConnectionAborted.into());
    }
    match produced {
        Ok(()) => finish_task(inner, task, Ok(&Value::s(""))),
        Err(e) => fail(e),
    }
    conn_io(conn).flush().await
}

/// A blocking `Read` fed by the async side.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.blocking_recv() {
                Some(v) => {
                    self.cur = v;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads up to `buf.len()` bytes, stopping early only at EOF.
async fn fill(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// `PUT /import_raw_vdi?vdi=&format=raw|vhd[&chunked]`.
async fn import(conn: &mut Conn, req: &Request, inner: &Arc<Inner>) -> io::Result<()> {
    let Some((session, temporary)) = authenticate(req, inner) else { return unauthorised(conn).await };
    let task = task_of(req, inner);
    let result = import_inner(conn, req, inner, task.as_deref()).await;
    end_session(inner, &session, temporary);
    result
}

async fn import_inner(conn: &mut Conn, req: &Request, inner: &Arc<Inner>, task: Option<&str>) -> io::Result<()> {
    let fail = |e: Error| finish_task(inner, task, Err(&e));
    let format = req.param("format").unwrap_or_else(|| "raw".into()).to_ascii_lowercase();
    if req.chunked() {
        fail(Error::api("INTERNAL_ERROR", ["Cannot handle encoding"]));
        return send_text(conn, "404 Not Found", "Cannot handle encoding").await;
    }
    let framed = req.has_param("chunked");
    if framed && format != "raw" {
        fail(Error::api("INTERNAL_ERROR", ["Cannot handle chunked VHD"]));
        return send_text(conn, "404 Not Found", "Cannot handle chunked VHD").await;
    }
    if !matches!(format.as_str(), "raw" | "vhd") {
        fail(Error::api("INTERNAL_ERROR", [format!("Unknown format {format}")]));
        return send_text(conn, "404 Not Found", &format!("Unknown format {format}")).await;
    }
    let vdi_arg = match req.param("vdi") {
        Some(v) => v,
        None => match new_import_vdi(req, inner, &format) {
            Ok(v) => v,
            Err(msg) => {
                fail(Error::api("INTERNAL_ERROR", [msg]));
                return send_text(conn, "400 Bad Request", msg).await;
            }
        },
    };
    let created = !req.has_param("vdi");
    let target = {
        let st = inner.state();
        match st.resolve(Class::Vdi, &vdi_arg) {
            Some(v)
                if st.str_of(&v, "type") == "cbt_metadata"
                    || st.get(Class::Vdi, &v).is_ok_and(|r| r.get("is_a_snapshot") == Some(&Value::Bool(true))) =>
            {
                Err((Error::api("VDI_READONLY", [v.as_str()]), false))
            }
            Some(v) => Ok(v),
            None => Err((Error::api("HANDLE_INVALID", ["VDI", &vdi_arg]), true)),
        }
    };
    let vdi = match target {
        Ok(v) => v,
        Err((e, not_found)) => {
            let msg = e.to_string();
            fail(e);
            return if not_found {
                send_text(conn, "404 Not Found", "VDI not found").await
            } else {
                send_500(conn, &msg).await
            };
        }
    };
    // XAPI answers before it reads the body.
    let mut head = String::from("HTTP/1.1 200 OK\r\nconnection: close\r\n");
    if let Some(t) = task {
        head.push_str(&format!("task-id: {t}\r\n"));
    }
    head.push_str("\r\n");
    conn_io(conn).write_all(head.as_bytes()).await?;
    conn_io(conn).flush().await?;
    let limit = req.content_length().unwrap_or(u64::MAX);
    let mut body = (&mut *conn).take(limit);
    let result = if format == "vhd" {
        import_vhd(&mut body, inner, &vdi).await
    } else if framed {
        import_framed(&mut body, inner, &vdi).await
    } else {
        import_raw(&mut body, inner, &vdi).await
    };
    let done = if created { Value::s(vdi.as_str()) } else { Value::s("") };
    match result {
        Ok(()) => finish_task(inner, task, Ok(&done)),
        Err(e) => fail(e),
    }
    let _ = inner.state().save();
    Ok(())
}

/// Without `vdi`, XAPI creates one ("Imported VDI", sized by the
/// `Content-Length`) in the SR named by `sr_id` or `sr_uuid` — raw only.
fn new_import_vdi(req: &Request, inner: &Inner, format: &str) -> Result<String, &'static str> {
    if format != "raw" {
        return Err("Importing a VHD directly into an SR not yet supported");
    }
    let len = req.content_length().ok_or("Missing content-length")?;
    let mut st = inner.state();
    let sr = req
        .param("sr_id")
        .and_then(|r| st.resolve(Class::Sr, &r))
        .or_else(|| req.param("sr_uuid").and_then(|u| st.resolve(Class::Sr, &u)))
        .ok_or("Missing or invalid sr_id")?;
    let mut args = std::collections::BTreeMap::new();
    for (k, v) in [
        ("name_label", Value::s("Imported VDI")),
        ("SR", Value::s(sr)),
        ("virtual_size", Value::Int(len as i64)),
        ("type", Value::s("user")),
    ] {
        args.insert(k.to_owned(), v);
    }
    st.vdi_create(&args).map_err(|_| "Cannot create the VDI")
}

async fn write_piece(inner: &Arc<Inner>, vdi: &str, offset: u64, data: Vec<u8>) -> Result<(), Error> {
    let (inner, vdi) = (Arc::clone(inner), vdi.to_owned());
    tokio::task::spawn_blocking(move || inner.state().vdi_write(&vdi, offset, &data, true))
        .await
        .unwrap_or_else(|e| Err(Error::api("INTERNAL_ERROR", [e.to_string()])))
}

async fn import_raw(body: &mut (impl AsyncRead + Unpin), inner: &Arc<Inner>, vdi: &str) -> Result<(), Error> {
    let mut off = 0u64;
    loop {
        let mut buf = vec![0u8; VHD_BLOCK as usize];
        let n = fill(body, &mut buf).await.map_err(|_| Error::api("VDI_IO_ERROR", ["Device I/O errors"]))?;
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        write_piece(inner, vdi, off, buf).await?;
        off += n as u64;
    }
}

async fn import_framed(body: &mut (impl AsyncRead + Unpin), inner: &Arc<Inner>, vdi: &str) -> Result<(), Error> {
    let io_err = |_| Error::api("VDI_IO_ERROR", ["Device I/O errors"]);
    loop {
        let mut h = [0u8; 12];
        body.read_exact(&mut h).await.map_err(io_err)?;
        let offset = u64::from_le_bytes(h[..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(h[8..].try_into().unwrap_or_default());
        if offset == 0 && len == 0 {
            return Ok(());
        }
        let mut data = vec![0u8; len as usize];
        body.read_exact(&mut data).await.map_err(io_err)?;
        write_piece(inner, vdi, offset, data).await?;
    }
}

async fn import_vhd(body: &mut (impl AsyncRead + Unpin), inner: &Arc<Inner>, vdi: &str) -> Result<(), Error> {
    // A VHD only carries its allocated blocks: what it does not hold must
    // read as zero afterwards, so clear what the VDI holds now.
    {
        let mut st = inner.state();
        let reader = st.vdi_reader(vdi)?;
        for r in block_ranges(&reader.allocated_blocks(), reader.size()) {
            st.vdi_write(vdi, r.start, &vec![0u8; (r.end - r.start) as usize], false)?;
        }
    }
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let (inner2, vdi2) = (Arc::clone(inner), vdi.to_owned());
    let consumer = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let mut stream =
            alike_formats::vhd::StreamReader::with_label(ChannelReader { rx, cur: Vec::new(), pos: 0 }, "import")?;
        while let Some(extent) = stream.next_extent()? {
            inner2.state().vdi_write(&vdi2, extent.offset, &extent.data, true)?;
        }
        Ok(())
    });
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let n = match body.read(&mut buf).await {
            Ok(n) => n,
            Err(_) => break,
        };
        if n == 0 {
            break;
        }
        buf.truncate(n);
        if tx.send(buf).await.is_err() {
            break;
        }
    }
    drop(tx);
    consumer.await.unwrap_or_else(|e| Err(Error::api("INTERNAL_ERROR", [e.to_string()])))
}

/// The test API under `/sim/`: JSON replies, `{"error": [code, params…]}`
/// with status 400 on failure.
async fn sim_api(conn: &mut Conn, req: &Request, inner: &Arc<Inner>) -> io::Result<()> {
    let body = read_body(conn, req).await.unwrap_or_default();
    let p = |k: &str| req.param(k).unwrap_or_default();
    let num = |k: &str| req.param(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let what = req.path.trim_start_matches("/sim/").trim_end_matches('/');
    let result: Result<serde_json::Value, Error> = (|| {
        Ok(match what {
            "write" => {
                let mut st = inner.state();
                let vdi = st
                    .resolve(Class::Vdi, &p("vdi"))
                    .ok_or_else(|| Error::api("HANDLE_INVALID", ["VDI".to_owned(), p("vdi")]))?;
                st.vdi_write(&vdi, num("offset"), &body, false)?;
                st.save()?;
                serde_json::json!({"written": body.len()})
            }
            "read" => {
                let st = inner.state();
                let vdi = st
                    .resolve(Class::Vdi, &p("vdi"))
                    .ok_or_else(|| Error::api("HANDLE_INVALID", ["VDI".to_owned(), p("vdi")]))?;
                let r = st.vdi_reader(&vdi)?;
                drop(st);
                let mut buf = vec![0u8; num("length").min(64 << 20) as usize];
                r.read_at(num("offset"), &mut buf)?;
                serde_json::json!({"data": base64::engine::general_purpose::STANDARD.encode(buf)})
            }
            "power" => {
                let mut st = inner.state();
                let vm = st
                    .resolve(Class::Vm, &p("vm"))
                    .ok_or_else(|| Error::api("HANDLE_INVALID", ["VM".to_owned(), p("vm")]))?;
                st.vm_power(&vm, &p("state"), "set")?;
                st.save()?;
                serde_json::json!({})
            }
            "quiesce" => {
                let mut st = inner.state();
                let vm = st
                    .resolve(Class::Vm, &p("vm"))
                    .ok_or_else(|| Error::api("HANDLE_INVALID", ["VM".to_owned(), p("vm")]))?;
                if p("on") == "0" || p("on") == "false" {
                    st.quiesce.remove(&vm);
                } else {
                    st.quiesce.insert(vm);
                }
                serde_json::json!({})
            }
            "expire_sessions" => {
                inner.state().expire_sessions(req.param("session").as_deref());
                serde_json::json!({})
            }
            "fail_next" => {
                let params: Vec<String> = p("params").split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
                let refs: Vec<&str> = params.iter().map(String::as_str).collect();
                inner.faults.fail_next(&p("method"), &p("code"), &refs);
                serde_json::json!({})
            }
            "delay" => {
                let ms = num("ms");
                inner.faults.set_delay((ms > 0).then(|| std::time::Duration::from_millis(ms)));
                serde_json::json!({})
            }
            "drop_export_after" => {
                inner.faults.drop_next_export_after(num("bytes"));
                serde_json::json!({})
            }
            "drop_nbd_after" => {
                inner.faults.drop_next_nbd_after(num("bytes"));
                serde_json::json!({})
            }
            "clear_faults" => {
                inner.faults.clear();
                serde_json::json!({})
            }
            _ => return Err(Error::api("MESSAGE_METHOD_UNKNOWN", [format!("/sim/{what}")])),
        })
    })();
    match result {
        Ok(v) => send(conn, "200 OK", &[("content-type", "application/json")], v.to_string().as_bytes(), false).await,
        Err(e) => {
            let (code, params) = e.to_xapi();
            let mut arr = vec![code];
            arr.extend(params);
            let v = serde_json::json!({"error": arr});
            send(conn, "400 Bad Request", &[("content-type", "application/json")], v.to_string().as_bytes(), false)
                .await
        }
    }
}
