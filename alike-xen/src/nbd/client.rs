//! The blocking shell: one NBD connection over `std::net::TcpStream`,
//! optionally upgraded to TLS, driving [`Handshake`] and [`Transmission`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};

use super::proto::{
    self, ExportInfo, Handshake, HandshakeConfig, HandshakeEvent, MAX_READ_LEN, Progress, ProtoError, Step,
    Transmission,
};
use super::redact_export;
use super::tls::{ServerCertCheck, TlsSetup, server_name};
use crate::{Error, Result};

/// Default largest single read request (2 MiB: XAPI's VHD block size, what
/// Xen Orchestra reads per request).
pub const DEFAULT_MAX_REQUEST: u32 = 2 << 20;
/// Default number of read requests in flight on one connection.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;
/// Default alignment of requests when the server does not advertise block
/// sizes (XAPI's server refuses reads not aligned to 512-byte sectors).
pub const DEFAULT_ALIGN: u32 = 512;

/// The most connections one NBD disk opens: xapi-nbd serves a handful per
/// host, and more only queue.
pub const MAX_CONNECTIONS: usize = 64;

/// How to reach an export and what to negotiate; opens connections
/// ([`NbdBuilder::connect`]) or a pooled [`super::NbdDisk`] ([`NbdBuilder::open_disk`]).
#[derive(Debug, Clone)]
pub struct NbdBuilder {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) export: String,
    pub(crate) tls: Option<ServerCertCheck>,
    pub(crate) tls_name: Option<String>,
    pub(crate) go: bool,
    pub(crate) structured_replies: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) max_request: u32,
    pub(crate) max_in_flight: usize,
    pub(crate) connections: usize,
    pub(crate) label: Option<String>,
}

impl NbdBuilder {
    /// An export on `host` (name, IPv4 or IPv6 address, brackets optional) and `port`.
    /// Defaults: plaintext, `NBD_OPT_GO` with fallback to `NBD_OPT_EXPORT_NAME`,
    /// structured replies asked for, 10 s to connect, 60 s per read or
    /// write, 2 MiB requests, 8 in flight, 4 connections for a disk.
    pub fn new(host: impl Into<String>, port: u16, export: impl Into<String>) -> NbdBuilder {
        let host: String = host.into();
        NbdBuilder {
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port,
            export: export.into(),
            tls: None,
            tls_name: None,
            go: true,
            structured_replies: true,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
            max_request: DEFAULT_MAX_REQUEST,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            connections: 4,
            label: None,
        }
    }
    /// Requires TLS (`NBD_OPT_STARTTLS` first; a refusal is an error), accepting the server certificates `check` allows.
    pub fn tls(&mut self, check: ServerCertCheck) -> &mut NbdBuilder {
        self.tls = Some(check);
        self
    }
    /// The name sent as SNI and checked against the certificate (XAPI's
    /// `subject`); default: the host. Wildcards are ignored.
    pub fn tls_server_name(&mut self, name: impl Into<String>) -> &mut NbdBuilder {
        self.tls_name = Some(name.into());
        self
    }
    /// Whether to try `NBD_OPT_GO` before `NBD_OPT_EXPORT_NAME`.
    pub fn go(&mut self, on: bool) -> &mut NbdBuilder {
        self.go = on;
        self
    }
    /// Whether to ask for structured replies.
    pub fn structured_replies(&mut self, on: bool) -> &mut NbdBuilder {
        self.structured_replies = on;
        self
    }
    /// Time allowed to connect (per address tried).
    pub fn connect_timeout(&mut self, t: Duration) -> &mut NbdBuilder {
        self.connect_timeout = t;
        self
    }
    /// Time allowed for each socket read or write.
    pub fn io_timeout(&mut self, t: Duration) -> &mut NbdBuilder {
        self.io_timeout = t;
        self
    }
    /// Largest single read request (clamped to 4 KiB … 32 MiB and to what the server advertises).
    pub fn max_request(&mut self, bytes: u32) -> &mut NbdBuilder {
        self.max_request = bytes.clamp(4096, MAX_READ_LEN);
        self
    }
    /// Read requests kept in flight on one connection (clamped to 1 … 64).
    pub fn max_in_flight(&mut self, n: usize) -> &mut NbdBuilder {
        self.max_in_flight = n.clamp(1, 64);
        self
    }
    /// Connections a [`super::NbdDisk`] may open (clamped to 1 … [`MAX_CONNECTIONS`]).
    pub fn connections(&mut self, n: usize) -> &mut NbdBuilder {
        self.connections = n.clamp(1, MAX_CONNECTIONS);
        self
    }
    /// The label of a [`super::NbdDisk`] (default `nbd://host:port/export`, session id hidden).
    pub fn label(&mut self, label: impl Into<String>) -> &mut NbdBuilder {
        self.label = Some(label.into());
        self
    }

    pub(crate) fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub(crate) fn disk_label(&self) -> String {
        self.label.clone().unwrap_or_else(|| {
            let e = redact_export(&self.export);
            format!("nbd://{}/{}", self.server(), e.trim_start_matches('/'))
        })
    }

    /// Connects and negotiates one connection.
    ///
    /// # Errors
    /// [`Error::Connection`] when the server cannot be reached or closes
    /// early; [`Error::CertificateMismatch`] when a pinned certificate does
    /// not match; [`Error::Nbd`] when the server refuses (no such export:
    /// [`ProtoError::ExportNotFound`]; TLS refused:
    /// [`ProtoError::OptionRefused`]) or breaks the protocol;
    /// [`Error::TlsSetup`] for unusable TLS settings.
    pub fn connect(&self) -> Result<NbdClient> {
        let tls = self.tls.as_ref().map(TlsSetup::new).transpose()?;
        self.connect_with(tls.as_ref())
    }

    pub(crate) fn connect_with(&self, tls: Option<&TlsSetup>) -> Result<NbdClient> {
        let server = self.server();
        let conn_err = |during: &str, source: io::Error| Error::Connection {
            server: server.clone(),
            during: during.to_owned(),
            source,
        };
        let addrs = (self.host.as_str(), self.port).to_socket_addrs().map_err(|e| conn_err("resolving", e))?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.connect_timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| conn_err("connecting", last))?;
        let set = |tcp: &TcpStream| -> io::Result<()> {
            tcp.set_nodelay(true)?;
            tcp.set_read_timeout(Some(self.io_timeout))?;
            tcp.set_write_timeout(Some(self.io_timeout))
        };
        set(&tcp).map_err(|e| conn_err("configuring the socket", e))?;

        let cfg = HandshakeConfig::new(self.export.clone())
            .tls(self.tls.is_some())
            .go(self.go)
            .structured_replies(self.structured_replies);
        let nbd_err = |error: ProtoError| Error::Nbd { server: server.clone(), error: redact_proto(error) };
        let mut hs = Handshake::new(cfg).map_err(nbd_err)?;
        let mut conn = Conn::Plain(tcp);
        let mut buf: Vec<u8> = Vec::with_capacity(256);
        let info = loop {
            if let Some(out) = hs.poll_transmit() {
                conn.write_all(&out).and_then(|()| conn.flush()).map_err(|e| conn_err("sending an option", e))?;
            }
            match hs.poll_event() {
                Some(HandshakeEvent::StartTls) => {
                    let Some(tls) = tls else {
                        return Err(nbd_err(ProtoError::InvalidRequest("TLS started without TLS settings".into())));
                    };
                    conn = conn.start_tls(tls, self, &server)?;
                    hs.tls_established();
                    continue;
                }
                Some(HandshakeEvent::Done(info)) => break info,
                None => {}
            }
            match hs.handle_input(&buf).map_err(nbd_err)? {
                Progress::Consumed(n) => {
                    buf.drain(..n.min(buf.len()));
                }
                Progress::NeedMore(n) => {
                    let have = buf.len();
                    buf.resize(n, 0);
                    if let Err(e) = conn.read_exact(&mut buf[have..]) {
                        let closed = matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset);
                        if let Some(err) = hs.eof_error().filter(|_| closed) {
                            return Err(nbd_err(err));
                        }
                        return Err(conn_err(&format!("reading the {}", hs.phase()), closed_msg(e)));
                    }
                }
            }
        };
        let align = info.block_size.map_or(DEFAULT_ALIGN, |b| b.min.max(1));
        let server_max = info.block_size.map_or(MAX_READ_LEN, |b| b.max.min(MAX_READ_LEN));
        let max_request = (self.max_request.min(server_max) / align * align).max(align);
        tracing::debug!(%server, size = info.size, via_go = info.via_go, structured = info.structured_replies, tls = info.tls, "NBD export negotiated");
        Ok(NbdClient {
            server,
            tx: Transmission::new(&info),
            info,
            conn,
            align,
            max_request,
            max_in_flight: self.max_in_flight,
            hdr: Vec::with_capacity(64),
            broken: false,
        })
    }
}

/// A [`ProtoError`] with any session id hidden (servers echo the export name in messages).
fn redact_proto(e: ProtoError) -> ProtoError {
    match e {
        ProtoError::ExportNotFound { export, message } => {
            ProtoError::ExportNotFound { export: redact_export(&export), message: redact_export(&message) }
        }
        ProtoError::OptionRefused { option, reply, message } => {
            ProtoError::OptionRefused { option, reply, message: redact_export(&message) }
        }
        e => e,
    }
}

/// An end of stream said plainly.
fn closed_msg(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")
    } else {
        e
    }
}

pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn start_tls(self, tls: &TlsSetup, b: &NbdBuilder, server: &str) -> Result<Conn> {
        let Conn::Plain(mut tcp) = self else {
            return Err(Error::Nbd {
                server: server.to_owned(),
                error: ProtoError::InvalidRequest("TLS started twice".into()),
            });
        };
        let name = server_name(b.tls_name.as_deref(), &b.host)?;
        let mut c = ClientConnection::new(Arc::clone(&tls.config), name)
            .map_err(|e| Error::TlsSetup(format!("TLS client for {server}: {e}")))?;
        while c.is_handshaking() {
            if let Err(e) = c.complete_io(&mut tcp) {
                if let Some(m) = tls.mismatch_error(server) {
                    return Err(m);
                }
                return Err(Error::Connection { server: server.to_owned(), during: "TLS handshake".into(), source: e });
            }
        }
        Ok(Conn::Tls(Box::new(StreamOwned::new(c, tcp))))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(t) => t,
            Conn::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(t) => t.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(t) => t.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(t) => t.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// One negotiated NBD connection, read-only.
///
/// [`NbdClient::read_at`] splits a read into requests of at most the
/// negotiated request size and keeps up to `max_in_flight` of them on the
/// wire, matching replies (in any order) by handle. Not `Sync`: one caller
/// at a time (`&mut self`); [`super::NbdDisk`] pools several for threads.
///
/// Dropping it sends `NBD_CMD_DISC` (soft disconnect) when the connection
/// is still in a known state.
pub struct NbdClient {
    server: String,
    conn: Conn,
    tx: Transmission,
    info: ExportInfo,
    align: u32,
    max_request: u32,
    max_in_flight: usize,
    hdr: Vec<u8>,
    broken: bool,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("server", &self.server)
            .field("info", &self.info)
            .field("align", &self.align)
            .field("max_request", &self.max_request)
            .field("max_in_flight", &self.max_in_flight)
            .field("broken", &self.broken)
            .finish()
    }
}

impl NbdClient {
    /// The export as negotiated (size, flags, block sizes, structured replies, TLS).
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// `host:port` of the server.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether the connection failed and can no longer be used.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Fills `buf` from `offset`. Any offset and length inside the export
    /// work: requests are widened to the server's alignment (512 bytes when
    /// it does not say) and the extra bytes dropped.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a read past the end; [`Error::Nbd`]
    /// with [`ProtoError::Command`] when the server fails a request (the
    /// connection stays usable), with [`ProtoError::Violation`] when it
    /// breaks the protocol; [`Error::Connection`] when the connection is
    /// lost or times out. After a `Violation` or a `Connection` error the
    /// client is broken ([`NbdClient::is_broken`]).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if self.broken {
            return Err(Error::Connection {
                server: self.server.clone(),
                during: "reading".into(),
                source: io::Error::new(io::ErrorKind::NotConnected, "the connection failed earlier"),
            });
        }
        let len = buf.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let size = self.info.size;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::InvalidArgument(format!(
                "read of {len} bytes at {offset} is past the end of the NBD export ({size} bytes)"
            )));
        }
        let align = u64::from(self.align);
        let start = offset / align * align;
        let end = (offset + len).div_ceil(align).saturating_mul(align).min(size);
        if start == offset && end == offset + len {
            return self.read_span(start, buf);
        }
        let mut tmp = vec![0u8; (end - start) as usize];
        self.read_span(start, &mut tmp)?;
        let from = (offset - start) as usize;
        buf.copy_from_slice(&tmp[from..from + buf.len()]);
        Ok(())
    }

    /// Reads `buf.len()` bytes at `start` (aligned) with pipelined requests.
    fn read_span(&mut self, start: u64, buf: &mut [u8]) -> Result<()> {
        let piece = self.max_request as usize;
        let total = buf.len();
        let mut next = 0usize; // next byte of buf not yet requested
        let mut where_: HashMap<u64, usize> = HashMap::new();
        let mut first_err: Option<Error> = None;
        let mut out = Vec::with_capacity(self.max_in_flight * proto::REQUEST_LEN);
        loop {
            // Top up the pipeline (unless a read already failed: then only drain).
            out.clear();
            while first_err.is_none() && next < total && where_.len() < self.max_in_flight {
                let n = piece.min(total - next);
                let (handle, req) = self.tx.read_request(start + next as u64, n as u32).map_err(|e| self.nbd(e))?;
                out.extend_from_slice(&req);
                where_.insert(handle, next);
                next += n;
            }
            if !out.is_empty() {
                let r = self.conn.write_all(&out).and_then(|()| self.conn.flush());
                if let Err(e) = r {
                    return Err(self.lost(format!("sending {} read requests", out.len() / proto::REQUEST_LEN), e));
                }
            }
            if where_.is_empty() {
                break;
            }
            // One reply step.
            let step = self.tx.handle_input(&self.hdr);
            let step = match step {
                Ok(s) => s,
                Err(e) => {
                    self.broken = true;
                    return Err(self.nbd(e));
                }
            };
            match step {
                Step::NeedMore(n) => {
                    // Every transmission message is at least 16 bytes: read that much at once.
                    let n = n.max(proto::SIMPLE_REPLY_LEN);
                    let have = self.hdr.len();
                    self.hdr.resize(n, 0);
                    if let Err(e) = self.conn.read_exact(&mut self.hdr[have..]) {
                        let during = format!("waiting for the replies to {} reads", where_.len());
                        return Err(self.lost(during, e));
                    }
                }
                Step::Consumed(n) => {
                    self.hdr.drain(..n.min(self.hdr.len()));
                }
                Step::Payload { consumed, handle, at, len } => {
                    self.hdr.drain(..consumed.min(self.hdr.len()));
                    let Some(dst) = where_.get(&handle).map(|b| b + at as usize) else {
                        self.broken = true;
                        return Err(self.nbd(internal("payload for an unknown handle")));
                    };
                    let Some(slice) = buf.get_mut(dst..dst + len as usize) else {
                        self.broken = true;
                        return Err(self.nbd(internal("payload outside the read")));
                    };
                    if let Err(e) = self.conn.read_exact(slice) {
                        let off = start + dst as u64;
                        return Err(self.lost(format!("reading {len} bytes of data at offset {off}"), e));
                    }
                    self.tx.payload_done();
                }
                Step::Zeroes { consumed, handle, at, len } => {
                    self.hdr.drain(..consumed.min(self.hdr.len()));
                    let dst = where_.get(&handle).map(|b| b + at as usize);
                    if let Some(slice) = dst.and_then(|d| buf.get_mut(d..d + len as usize)) {
                        slice.fill(0);
                    }
                }
                Step::Finished { consumed, handle, result } => {
                    self.hdr.drain(..consumed.min(self.hdr.len()));
                    where_.remove(&handle);
                    if let Err(e) = result {
                        if let ProtoError::Violation { .. } = e {
                            self.broken = true;
                            return Err(self.nbd(e));
                        }
                        if first_err.is_none() {
                            first_err = Some(self.nbd(e));
                        }
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn nbd(&self, error: ProtoError) -> Error {
        Error::Nbd { server: self.server.clone(), error }
    }

    fn lost(&mut self, during: String, e: io::Error) -> Error {
        self.broken = true;
        Error::Connection { server: self.server.clone(), during, source: closed_msg(e) }
    }

    /// Ends the session with `NBD_CMD_DISC` and closes the connection.
    ///
    /// # Errors
    /// [`Error::Connection`] when the request cannot be sent.
    pub fn disconnect(mut self) -> Result<()> {
        let r = self.send_disc();
        self.broken = true; // nothing more to send on drop
        r
    }

    fn send_disc(&mut self) -> Result<()> {
        if self.broken || self.tx.in_flight() > 0 {
            return Ok(());
        }
        let req = self.tx.disconnect_request();
        let r = self.conn.write_all(&req).and_then(|()| self.conn.flush());
        if let Conn::Tls(s) = &mut self.conn {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
        }
        let _ = self.conn.tcp().shutdown(std::net::Shutdown::Write);
        r.map_err(|e| self.lost("sending NBD_CMD_DISC".into(), e))
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        let _ = self.send_disc();
    }
}

fn internal(what: &str) -> ProtoError {
    ProtoError::Violation { phase: "reply", reason: format!("client bug: {what}") }
}
