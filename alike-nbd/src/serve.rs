//! The blocking server shell: listens on TCP or a Unix socket and serves
//! [`Export`]s, one thread per connection (scoped: exports are borrowed),
//! moving bytes between the socket and [`ServerHandshake`] /
//! [`ServerTransmission`]. All protocol decisions are the state machines';
//! this module only reads exactly what they ask for, calls the export and
//! writes what they encode.
//!
//! What is served is behind the [`Export`] trait (size, reads that report
//! holes, allocation extents for `NBD_CMD_BLOCK_STATUS`, optional writes),
//! so the engine that reads a stored version lives elsewhere (the `alike`
//! facade) and this crate stays free of it.
//!
//! Bounds: at most [`ServeOptions::max_connections`] connections at once
//! (more are closed at once), a handshake must finish within
//! [`ServeOptions::handshake_timeout`], a request's payload is at most the
//! export's maximum request size (the machine refuses bigger ones, and
//! their payload is read past in 64 KiB pieces, never buffered). Stopping
//! ([`ServeOptions`]' `stop` returning true) closes the listener and every
//! connection within [`ServeOptions::poll`], each after the request it is
//! serving.
//!
//! TLS is a hook ([`TlsAcceptor`]); none is built in (this crate links no
//! TLS library: the facade supplies one over rustls). Without one, the
//! handshake runs in NOTLS mode. A TLS connection keeps a second handle on
//! its socket, so that it still times out every [`ServeOptions::poll`]
//! (to see `stop` and the handshake deadline, also during the TLS
//! handshake) and can be shut down when the server stops; at the end the
//! TLS stream is dropped first (an acceptor's stream may send its
//! `close_notify` then), and the socket is shut down after it.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::proto::{EIO, Progress, ProtoError};
use crate::server::{
    CloseReason, Command, Extent, Negotiated, ServerConfig, ServerEvent, ServerHandshake, ServerStep,
    ServerTransmission, TlsMode,
};

/// A command failed: the NBD error number to send (`proto::EIO`,
/// `proto::ENOSPC`, `proto::EPERM`…) and a message for the client's user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({})", crate::proto::errno_name(*.errno))]
pub struct CommandError {
    /// NBD error number.
    pub errno: u32,
    /// What went wrong.
    pub message: String,
}

impl CommandError {
    /// An error with `errno` and a message.
    pub fn new(errno: u32, message: impl Into<String>) -> CommandError {
        CommandError { errno, message: message.into() }
    }
    /// `EIO` with a message.
    pub fn io(message: impl Into<String>) -> CommandError {
        CommandError::new(EIO, message)
    }
}

/// What is served: one disk-like byte range. Implementations are shared by
/// every connection (hence `Sync`); all methods may be called concurrently.
pub trait Export: Send + Sync {
    /// Size in bytes (what the handshake advertised).
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset` (inside the export) and
    /// returns the ranges of the export inside the read that are holes
    /// (they are zeroes in `buf` too); an empty list sends everything as data.
    ///
    /// # Errors
    /// A [`CommandError`] sent to the client (the connection goes on).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<Vec<std::ops::Range<u64>>, CommandError>;

    /// `base:allocation` extents from `offset`, in order, covering at
    /// least one byte and ideally `len` (more is clipped, less is fine).
    ///
    /// # Errors
    /// A [`CommandError`] sent to the client.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, CommandError>;

    /// Writes `data` at `offset` (only called when the handshake said the
    /// export is writable); durable before returning when `fua`.
    ///
    /// # Errors
    /// A [`CommandError`]; by default `EPERM` (read-only).
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), CommandError> {
        let _ = (offset, data, fua);
        Err(CommandError::new(crate::proto::EPERM, "the export is read-only"))
    }

    /// Makes `len` bytes at `offset` read as zeroes.
    ///
    /// # Errors
    /// As [`Export::write_at`].
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), CommandError> {
        let _ = (offset, len, fua);
        Err(CommandError::new(crate::proto::EPERM, "the export is read-only"))
    }

    /// The client no longer needs `len` bytes at `offset`; by default they
    /// are zeroed ([`Export::write_zeroes`]).
    ///
    /// # Errors
    /// As [`Export::write_at`].
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), CommandError> {
        self.write_zeroes(offset, len, fua)
    }

    /// Makes every acknowledged write durable.
    ///
    /// # Errors
    /// A [`CommandError`].
    fn flush(&self) -> Result<(), CommandError> {
        Ok(())
    }
}

/// A byte stream a connection runs on (a socket, or TLS over one).
pub trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// Runs the server side of TLS on a connection after `NBD_OPT_STARTTLS`
/// (the hook a shell with a TLS library implements).
pub trait TlsAcceptor: Send + Sync {
    /// Runs the TLS handshake on `io` and returns the encrypted stream.
    ///
    /// Reads from `io` time out (`WouldBlock` or `TimedOut`) every
    /// [`ServeOptions::poll`]: the acceptor then calls `proceed` and, if it
    /// returns `Ok`, reads again; `proceed` fails when the handshake took
    /// too long or the server is stopping. The returned stream sees the
    /// same time-outs on its reads (the shell retries them), so it must
    /// keep its state across a read that failed that way.
    ///
    /// # Errors
    /// The handshake failed, or `proceed` did (the connection is then
    /// dropped).
    fn accept(&self, io: Box<dyn Io>, proceed: &dyn Fn() -> io::Result<()>) -> io::Result<Box<dyn Io>>;
}

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket at this path (removed when the listener drops).
    Unix(UnixListener, PathBuf),
}

/// NBD's port.
pub const DEFAULT_PORT: u16 = 10809;

impl Listener {
    /// Binds TCP `addr` (`HOST:PORT`, `[V6]:PORT`, or a host alone for port
    /// [`DEFAULT_PORT`]; port 0 picks a free one).
    ///
    /// # Errors
    /// The address cannot be resolved or bound.
    pub fn tcp(addr: &str) -> io::Result<Listener> {
        let with_port = if addr.parse::<std::net::SocketAddr>().is_ok() || has_port(addr) {
            addr.to_string()
        } else {
            let host = addr.trim_start_matches('[').trim_end_matches(']');
            if host.contains(':') { format!("[{host}]:{DEFAULT_PORT}") } else { format!("{host}:{DEFAULT_PORT}") }
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
        for a in with_port.to_socket_addrs()? {
            match TcpListener::bind(a) {
                Ok(l) => return Ok(Listener::Tcp(l)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Binds a Unix socket at `path`. A socket file left there by a server
    /// that is gone (nobody accepts on it) is replaced; anything else there
    /// is refused.
    ///
    /// # Errors
    /// The path exists (and is not a dead socket), or cannot be bound.
    pub fn unix(path: &Path) -> io::Result<Listener> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(m) = std::fs::symlink_metadata(path) {
            let dead = m.file_type().is_socket()
                && UnixStream::connect(path).is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
            if !dead {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists (and is not a socket left by a server that is gone)", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(Listener::Unix(UnixListener::bind(path)?, path.to_path_buf()))
    }

    /// Where clients connect, as an NBD URI without an export name
    /// (`nbd://127.0.0.1:10809`, `nbd+unix://?socket=/path`).
    pub fn uri(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("nbd://{a}"),
                Err(_) => "nbd://?".into(),
            },
            Listener::Unix(_, p) => format!("nbd+unix://?socket={}", p.display()),
        }
    }

    /// The URI of export `name` on this listener (`nbd://127.0.0.1:10809/disk0`).
    pub fn export_uri(&self, name: &str) -> String {
        match self {
            Listener::Tcp(_) => format!("{}/{name}", self.uri()),
            Listener::Unix(_, p) => format!("nbd+unix:///{name}?socket={}", p.display()),
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(on),
            Listener::Unix(l, _) => l.set_nonblocking(on),
        }
    }

    fn accept(&self) -> io::Result<(Conn, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept()?;
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                Ok((Conn::Tcp(s), a.to_string()))
            }
            Listener::Unix(l, p) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok((Conn::Unix(s), format!("unix:{}", p.display())))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn has_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
        }
        None => false,
    }
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS over a socket, and a second handle on that socket (time-outs,
    /// shutdown). `None` only while the TLS handshake runs, or once shut down.
    Tls(Option<Box<dyn Io>>, Box<Conn>),
}

impl Conn {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(t),
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tls(_, sock) => sock.set_read_timeout(t),
        }
    }
    fn shutdown(&mut self) {
        match self {
            Conn::Tcp(s) => drop(s.shutdown(std::net::Shutdown::Both)),
            Conn::Unix(s) => drop(s.shutdown(std::net::Shutdown::Both)),
            Conn::Tls(io, sock) => {
                // The TLS stream first: it may say goodbye (close_notify).
                drop(io.take());
                sock.shutdown();
            }
        }
    }
    /// A second handle on the socket (the same socket: time-outs set
    /// through it apply to both).
    fn try_clone(&self) -> io::Result<Conn> {
        match self {
            Conn::Tcp(s) => s.try_clone().map(Conn::Tcp),
            Conn::Unix(s) => s.try_clone().map(Conn::Unix),
            Conn::Tls(..) => Err(io::Error::other("TLS is already running")),
        }
    }
    fn into_io(self) -> Box<dyn Io> {
        match self {
            Conn::Tcp(s) => Box::new(s),
            Conn::Unix(s) => Box::new(s),
            Conn::Tls(Some(b), _) => b,
            Conn::Tls(None, sock) => sock.into_io(),
        }
    }
    fn tls(&mut self) -> io::Result<&mut Box<dyn Io>> {
        match self {
            Conn::Tls(Some(io), _) => Ok(io),
            _ => Err(io::Error::new(io::ErrorKind::NotConnected, "the connection is closed")),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
            Conn::Tls(..) => self.tls()?.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
            Conn::Tls(..) => self.tls()?.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
            Conn::Tls(..) => self.tls()?.flush(),
        }
    }
}

/// Something that happened on the server, for the caller's log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServeEvent {
    /// A connection was accepted.
    Connected {
        /// The peer.
        peer: String,
    },
    /// A connection was refused: [`ServeOptions::max_connections`] are open.
    Refused {
        /// The peer.
        peer: String,
    },
    /// A client entered transmission.
    Negotiated {
        /// The peer.
        peer: String,
        /// The export's name.
        export: String,
        /// Whether structured replies were agreed.
        structured: bool,
    },
    /// A connection ended (`error`: why, when it was not a clean disconnect).
    Closed {
        /// The peer.
        peer: String,
        /// What went wrong, if anything.
        error: Option<String>,
    },
}

/// How [`serve`] runs.
#[non_exhaustive]
pub struct ServeOptions<'a> {
    /// The most connections at once (1 to 1024; default 64); more are closed at once.
    pub max_connections: usize,
    /// Time a client has to finish the handshake (default 60 s).
    pub handshake_timeout: Duration,
    /// How often blocked threads look at `stop` (default 100 ms).
    pub poll: Duration,
    /// Returns true when the server must stop.
    pub stop: &'a (dyn Fn() -> bool + Sync),
    /// Runs TLS after `NBD_OPT_STARTTLS` (required when the config's TLS mode is not `Off`).
    pub tls: Option<&'a dyn TlsAcceptor>,
    /// Told about connections (for a log).
    pub on_event: Option<&'a (dyn Fn(&ServeEvent) + Sync)>,
}

impl<'a> ServeOptions<'a> {
    /// Defaults, stopping when `stop` returns true.
    pub fn new(stop: &'a (dyn Fn() -> bool + Sync)) -> ServeOptions<'a> {
        ServeOptions {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(60),
            poll: Duration::from_millis(100),
            stop,
            tls: None,
            on_event: None,
        }
    }
}

/// What [`serve`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeReport {
    /// Connections accepted and served.
    pub connections: u64,
    /// Connections refused (over the limit).
    pub refused: u64,
    /// Requests handled.
    pub requests: u64,
    /// Bytes sent as read data (holes not counted).
    pub bytes_read: u64,
    /// Bytes written by clients.
    pub bytes_written: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    requests: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

/// Serves `exports` (one per [`ServerConfig::exports`] entry, same order)
/// on `listener` until `opts.stop` returns true; then waits for every
/// connection to finish the request it serves and returns.
///
/// # Errors
/// [`ProtoError::InvalidRequest`]-like misconfiguration is an
/// `io::ErrorKind::InvalidInput` (exports and configs differ in number or
/// size, TLS configured without an acceptor); the listener failing.
pub fn serve(
    listener: &Listener,
    cfg: &ServerConfig,
    exports: &[&dyn Export],
    opts: &ServeOptions<'_>,
) -> io::Result<ServeReport> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    if exports.len() != cfg.exports.len() {
        return Err(invalid(format!("{} exports for {} configured", exports.len(), cfg.exports.len())));
    }
    if let Some((c, _)) = cfg.exports.iter().zip(exports).find(|(c, e)| c.size != e.size()) {
        return Err(invalid(format!("export {:?}: the configured size is not the export's", c.name)));
    }
    if cfg.tls != TlsMode::Off && opts.tls.is_none() {
        return Err(invalid("TLS is configured but there is no TLS acceptor".into()));
    }
    if !(1..=1024).contains(&opts.max_connections) {
        return Err(invalid(format!("{} connections: 1 to 1024", opts.max_connections)));
    }
    listener.set_nonblocking(true)?;
    let counters = Counters::default();
    let active = AtomicUsize::new(0);
    let event = |e: ServeEvent| {
        if let Some(f) = opts.on_event {
            f(&e);
        }
    };
    let result = std::thread::scope(|s| -> io::Result<()> {
        loop {
            if (opts.stop)() {
                return Ok(());
            }
            let (conn, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    std::thread::sleep(opts.poll.min(Duration::from_millis(50)));
                    continue;
                }
                // A client that went away before accept: not the listener's failure.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            };
            if active.load(Ordering::SeqCst) >= opts.max_connections {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                let mut conn = conn;
                conn.shutdown();
                event(ServeEvent::Refused { peer });
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            counters.connections.fetch_add(1, Ordering::Relaxed);
            event(ServeEvent::Connected { peer: peer.clone() });
            let (counters, active, event) = (&counters, &active, &event);
            let spawned = std::thread::Builder::new().name("alike-nbd-conn".into()).spawn_scoped(s, move || {
                let mut c = Connection { conn, peer: peer.clone(), opts, counters, buf: Vec::with_capacity(4096) };
                let error = c.run(cfg, exports).err().map(|e| e.to_string());
                c.conn.shutdown();
                active.fetch_sub(1, Ordering::SeqCst);
                event(ServeEvent::Closed { peer, error });
            });
            if let Err(e) = spawned {
                // The closure (and the connection) was dropped: it is closed.
                active.fetch_sub(1, Ordering::SeqCst);
                event(ServeEvent::Closed { peer: "?".into(), error: Some(format!("no thread for it: {e}")) });
            }
        }
    });
    result?;
    Ok(ServeReport {
        connections: counters.connections.into_inner(),
        refused: counters.refused.into_inner(),
        requests: counters.requests.into_inner(),
        bytes_read: counters.bytes_read.into_inner(),
        bytes_written: counters.bytes_written.into_inner(),
    })
}

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Proto(#[from] ProtoError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("the handshake took longer than {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the server is stopping")]
    Stopping,
}

struct Connection<'a, 'o> {
    conn: Conn,
    peer: String,
    opts: &'a ServeOptions<'o>,
    counters: &'a Counters,
    buf: Vec<u8>,
}

/// Data of a reply gathered into one write up to this size; bigger data is written on its own.
const GATHER: usize = 64 << 10;

impl Connection<'_, '_> {
    /// Reads until the buffer holds `need` bytes (never more). `Ok(false)`:
    /// the client closed the connection.
    fn fill(&mut self, need: usize, deadline: Option<Instant>) -> Result<bool, ConnError> {
        while self.buf.len() < need {
            let start = self.buf.len();
            self.buf.resize(need, 0);
            let r = self.conn.read(&mut self.buf[start..]);
            match r {
                Ok(0) => {
                    self.buf.truncate(start);
                    return Ok(false);
                }
                Ok(n) => self.buf.truncate(start + n),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    self.buf.truncate(start);
                    if (self.opts.stop)() {
                        return Err(ConnError::Stopping);
                    }
                    if deadline.is_some_and(|d| Instant::now() > d) {
                        return Err(ConnError::HandshakeTimeout(self.opts.handshake_timeout));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(start),
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e.into());
                }
            }
        }
        Ok(true)
    }

    /// Reads exactly `n` payload bytes into `out` (the header was consumed, so `buf` is empty).
    fn payload(&mut self, n: usize, out: &mut Vec<u8>) -> Result<bool, ConnError> {
        debug_assert!(self.buf.is_empty());
        std::mem::swap(&mut self.buf, out);
        self.buf.clear();
        let r = self.fill(n, None);
        std::mem::swap(&mut self.buf, out);
        r
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.conn.write_all(bytes)?;
        Ok(())
    }

    fn run(&mut self, cfg: &ServerConfig, exports: &[&dyn Export]) -> Result<(), ConnError> {
        self.conn.set_read_timeout(Some(self.opts.poll))?;
        let Some(n) = self.handshake(cfg)? else { return Ok(()) };
        let export = exports[n.export];
        if let Some(f) = self.opts.on_event {
            f(&ServeEvent::Negotiated {
                peer: self.peer.clone(),
                export: cfg.exports[n.export].name.clone(),
                structured: n.structured,
            });
        }
        self.transmission(n, export)
    }

    /// `Ok(None)`: the client aborted or went away during negotiation.
    fn handshake(&mut self, cfg: &ServerConfig) -> Result<Option<Negotiated>, ConnError> {
        let deadline = Instant::now() + self.opts.handshake_timeout;
        let mut hs = ServerHandshake::new(cfg.clone());
        loop {
            if let Some(out) = hs.poll_transmit() {
                self.send(&out)?;
            }
            match hs.poll_event() {
                Some(ServerEvent::StartTls) => {
                    let Some(tls) = self.opts.tls else {
                        return Err(ConnError::Refused("STARTTLS acknowledged without a TLS acceptor".into()));
                    };
                    if !self.buf.is_empty() {
                        // Bytes the client sent in the clear after STARTTLS
                        // and before its TLS hello: nothing may be carried over.
                        return Err(ConnError::Refused("data after NBD_OPT_STARTTLS before the TLS handshake".into()));
                    }
                    self.conn.flush()?;
                    let sock = Box::new(self.conn.try_clone()?);
                    let plain = std::mem::replace(&mut self.conn, Conn::Tls(None, sock));
                    let (stop, timeout) = (self.opts.stop, self.opts.handshake_timeout);
                    let proceed = || {
                        if stop() {
                            Err(io::Error::other("the server is stopping"))
                        } else if Instant::now() > deadline {
                            Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("the handshake took longer than {timeout:?}"),
                            ))
                        } else {
                            Ok(())
                        }
                    };
                    let io = tls
                        .accept(plain.into_io(), &proceed)
                        .map_err(|e| ConnError::Refused(format!("TLS handshake: {e}")))?;
                    if let Conn::Tls(slot, _) = &mut self.conn {
                        *slot = Some(io);
                    }
                    hs.tls_established();
                    continue;
                }
                Some(ServerEvent::Done(n)) => return Ok(Some(n)),
                Some(ServerEvent::Close(CloseReason::Abort)) => return Ok(None),
                Some(ServerEvent::Close(CloseReason::Refused(why))) => return Err(ConnError::Refused(why)),
                None => {}
            }
            match hs.handle_input(&self.buf)? {
                Progress::Consumed(0) => {
                    return Err(ConnError::Refused("the handshake made no progress".into()));
                }
                Progress::Consumed(k) => {
                    self.buf.drain(..k);
                }
                Progress::NeedMore(k) => {
                    if !self.fill(k, Some(deadline))? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn transmission(&mut self, n: Negotiated, export: &dyn Export) -> Result<(), ConnError> {
        let mut tx = ServerTransmission::new(n);
        let mut data: Vec<u8> = Vec::new();
        let mut pending: Vec<u8> = Vec::with_capacity(GATHER);
        loop {
            let step = tx.handle_input(&self.buf)?;
            if !matches!(step, ServerStep::NeedMore(_)) {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
            }
            match step {
                ServerStep::NeedMore(k) => {
                    if !self.fill(k, None)? {
                        return Ok(());
                    }
                    continue;
                }
                ServerStep::Consumed(k) => {
                    self.buf.drain(..k);
                }
                ServerStep::Skip { consumed, len } => {
                    self.buf.drain(..consumed);
                    let mut left = len as usize;
                    while left > 0 {
                        let piece = left.min(GATHER);
                        if !self.payload(piece, &mut data)? {
                            return Ok(());
                        }
                        left -= piece;
                    }
                }
                ServerStep::Command { consumed, command } => {
                    self.buf.drain(..consumed);
                    if command == Command::Disconnect {
                        if let Some(out) = tx.poll_transmit() {
                            self.send(&out)?;
                        }
                        return Ok(());
                    }
                    if !self.command(&mut tx, export, command, &mut data, &mut pending)? {
                        return Ok(());
                    }
                }
            }
            if let Some(out) = tx.poll_transmit() {
                self.send(&out)?;
            }
        }
    }

    /// Carries out one command; `Ok(false)`: the client went away mid-payload.
    fn command(
        &mut self,
        tx: &mut ServerTransmission,
        export: &dyn Export,
        command: Command,
        data: &mut Vec<u8>,
        pending: &mut Vec<u8>,
    ) -> Result<bool, ConnError> {
        let reply = |tx: &mut ServerTransmission, handle: u64, r: Result<(), CommandError>| match r {
            Ok(()) => tx.reply_ok(handle),
            Err(e) => tx.reply_error(handle, e.errno, &e.message),
        };
        match command {
            Command::Read { handle, offset, len, df } => {
                // The export fills every byte: grow the buffer, never clear it.
                if data.len() < len as usize {
                    data.resize(len as usize, 0);
                }
                let data = &mut data[..len as usize];
                match export.read_at(offset, data) {
                    Ok(holes) => {
                        if let Some(out) = tx.poll_transmit() {
                            self.send(&out)?;
                        }
                        let parts = tx.read_reply(handle, offset, data, &holes, df);
                        let mut sent = 0u64;
                        pending.clear();
                        for p in &parts {
                            pending.extend_from_slice(&p.header);
                            sent += p.data.len() as u64;
                            if p.data.len() > GATHER {
                                self.conn.write_all(pending)?;
                                pending.clear();
                                self.conn.write_all(p.data)?;
                            } else {
                                pending.extend_from_slice(p.data);
                            }
                        }
                        if !pending.is_empty() {
                            self.conn.write_all(pending)?;
                        }
                        self.counters.bytes_read.fetch_add(sent, Ordering::Relaxed);
                    }
                    Err(e) => tx.reply_error(handle, e.errno, &e.message),
                }
            }
            Command::Write { handle, offset, len, fua } => {
                if !self.payload(len as usize, data)? {
                    return Ok(false);
                }
                let r = export.write_at(offset, data, fua);
                if r.is_ok() {
                    self.counters.bytes_written.fetch_add(u64::from(len), Ordering::Relaxed);
                }
                reply(tx, handle, r);
            }
            Command::WriteZeroes { handle, offset, len, fua, .. } => {
                reply(tx, handle, export.write_zeroes(offset, u64::from(len), fua));
            }
            Command::Trim { handle, offset, len, fua } => reply(tx, handle, export.trim(offset, u64::from(len), fua)),
            Command::Flush { handle } => reply(tx, handle, export.flush()),
            Command::BlockStatus { handle, offset, len, req_one } => match export.extents(offset, u64::from(len)) {
                Ok(ext) => tx.block_status_reply(handle, len, req_one, &ext),
                Err(e) => tx.reply_error(handle, e.errno, &e.message),
            },
            _ => {}
        }
        Ok(true)
    }
}
