//! The blocking server shell: listens on TCP or a Unix socket and serves
//! [`Export`]s, one thread per connection (scoped: exports are borrowed),
//! moving bytes between the socket and [`ServerHandshake`] /
//! [`ServerTransmission`]. All protocol decisions are the state machines';
//! this module only reads exactly what they ask for, calls the export and
//! writes what they encode.
//!
//! **Requests in flight.** Clients such as `qemu-img convert` and `nbdcopy`
//! keep several requests in flight on one connection. The connection's
//! thread reads and decodes requests; reads and block status queries go to
//! up to [`ServeOptions::max_in_flight`] request threads of that connection
//! (started as needed), each of which encodes and sends its reply whole as
//! soon as it is ready, under the connection's send lock — replies carry
//! their handles, so their order is free. Writes, zeroing, trims, flushes
//! and the disconnect are barriers: the connection's thread waits until
//! every earlier request was answered, then carries them out itself, so a
//! read sent after a write sees it and one sent before does not. Replies
//! are encoded by a second [`ServerTransmission`] (encoding depends only on
//! what was negotiated); the decoder keeps the stream's state. The bytes of
//! read buffers in flight are bounded by [`IN_FLIGHT_BYTES`] per connection.
//!
//! What is served is behind the [`Export`] trait (size, reads that report
//! holes, allocation extents for `NBD_CMD_BLOCK_STATUS`, optional writes),
//! so the engine that reads a stored version lives elsewhere (the `alike`
//! facade) and this crate stays free of it.
//!
//! Bounds: at most [`ServeOptions::max_connections`] connections at once
//! (each with at most [`ServeOptions::max_in_flight`] request threads)
//! (more are closed at once), a handshake must finish within
//! [`ServeOptions::handshake_timeout`], a request's payload is at most the
//! export's maximum request size (the machine refuses bigger ones, and
//! their payload is read past in 64 KiB pieces, never buffered). Stopping
//! ([`ServeOptions`]' `stop` returning true) closes the listener and every
//! connection within [`ServeOptions::poll`], each after the requests it is
//! serving have sent their replies (for at most a second).
//!
//! TLS is a hook ([`TlsAcceptor`]); none is built in (this crate links no
//! TLS library: the facade supplies one over rustls). Without one, the
//! handshake runs in NOTLS mode. The acceptor returns the TLS stream as a
//! reading half and a writing half (requests are read while replies are
//! written, by other threads). A TLS connection keeps a second handle on
//! its socket, so that it still times out every [`ServeOptions::poll`]
//! (to see `stop` and the handshake deadline, also during the TLS
//! handshake) and can be shut down when the server stops; at the end the
//! writing half is dropped first (it may send its `close_notify` then),
//! then the reading half, and the socket is shut down after them.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, mpsc};
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

/// The two halves of a connection after TLS: the reading half (requests)
/// and the writing half (replies), used by two threads at once.
pub type TlsHalves = (Box<dyn Read + Send>, Box<dyn Write + Send>);

/// Runs the server side of TLS on a connection after `NBD_OPT_STARTTLS`
/// (the hook a shell with a TLS library implements).
pub trait TlsAcceptor: Send + Sync {
    /// Runs the TLS handshake on `io` and returns the encrypted stream as
    /// two halves: the reading half reads from `io`, the writing half
    /// writes to `writer`, a second handle on the same socket. The shell
    /// reads requests with one while other threads write replies with the
    /// other, so they must work at once; bytes the reading half itself has
    /// to send (alerts, key updates) go out through `writer` too, in order
    /// with the writing half's. Dropping the writing half may say goodbye
    /// (`close_notify`); the shell drops it before the reading half.
    ///
    /// Reads from `io` time out (`WouldBlock` or `TimedOut`) every
    /// [`ServeOptions::poll`]: the acceptor then calls `proceed` and, if it
    /// returns `Ok`, reads again; `proceed` fails when the handshake took
    /// too long or the server is stopping. The reading half sees the
    /// same time-outs on its reads (the shell retries them), so it must
    /// keep its state across a read that failed that way.
    ///
    /// # Errors
    /// The handshake failed, or `proceed` did (the connection is then
    /// dropped).
    fn accept(
        &self,
        io: Box<dyn Io>,
        writer: Box<dyn Write + Send>,
        proceed: &dyn Fn() -> io::Result<()>,
    ) -> io::Result<TlsHalves>;
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
/// The most requests of one connection served at once ([`ServeOptions::max_in_flight`]).
pub const MAX_IN_FLIGHT: usize = 64;
/// Read buffers of one connection's requests in flight hold at most this
/// many bytes together (a request bigger than what is left waits until it
/// is alone).
pub const IN_FLIGHT_BYTES: u64 = 64 << 20;

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

/// The reading side of a connection (and its socket, for time-outs and
/// shutdown); replies go out through a writer of their own.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS over a socket: the reading half, and a second handle on that
    /// socket (time-outs, shutdown). `None` only while the TLS handshake
    /// runs, or once shut down.
    Tls(Option<Box<dyn Read + Send>>, Box<Conn>),
}

impl Conn {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(t),
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tls(_, sock) => sock.set_read_timeout(t),
        }
    }
    /// Shuts the socket down in both directions (blocked reads and writes
    /// on every handle of it fail), leaving a TLS stream's state alone.
    fn shutdown_socket(&self) {
        match self {
            Conn::Tcp(s) => drop(s.shutdown(std::net::Shutdown::Both)),
            Conn::Unix(s) => drop(s.shutdown(std::net::Shutdown::Both)),
            Conn::Tls(_, sock) => sock.shutdown_socket(),
        }
    }
    fn shutdown(&mut self) {
        if let Conn::Tls(io, _) = self {
            drop(io.take());
        }
        self.shutdown_socket();
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
    /// The plain socket as a stream (for the TLS handshake).
    fn into_io(self) -> Box<dyn Io> {
        match self {
            Conn::Tcp(s) => Box::new(s),
            Conn::Unix(s) => Box::new(s),
            Conn::Tls(_, sock) => sock.into_io(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
            Conn::Tls(Some(r), _) => r.read(buf),
            Conn::Tls(None, _) => Err(io::Error::new(io::ErrorKind::NotConnected, "the connection is closed")),
        }
    }
}

/// Writes to the plain socket (the writer of a connection without TLS).
impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
            Conn::Tls(..) => Err(io::Error::other("a TLS connection writes through its writing half")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
            Conn::Tls(..) => Ok(()),
        }
    }
}

/// The writer of a connection that has none (handed to TLS, or closed).
struct Closed;

impl Write for Closed {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::NotConnected, "the connection is closed"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
    /// The most requests of one connection served at once (1 to
    /// [`MAX_IN_FLIGHT`]; default 8): reads and block status queries are
    /// carried out by up to this many threads of the connection, and their
    /// replies go out as each is ready (replies carry their handles).
    /// Their buffers together are bounded by [`IN_FLIGHT_BYTES`] (one
    /// request of any allowed size is always served).
    pub max_in_flight: usize,
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
            max_in_flight: 8,
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
    if !(1..=MAX_IN_FLIGHT).contains(&opts.max_in_flight) {
        return Err(invalid(format!("{} requests in flight: 1 to {MAX_IN_FLIGHT}", opts.max_in_flight)));
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
                let error = match conn.try_clone() {
                    Ok(w) => {
                        let writer: Box<dyn Write + Send> = Box::new(w);
                        let mut c = Connection {
                            conn,
                            writer,
                            peer: peer.clone(),
                            opts,
                            counters,
                            buf: Vec::with_capacity(4096),
                        };
                        let error = c.run(cfg, exports).err().map(|e| e.to_string());
                        c.close();
                        error
                    }
                    Err(e) => {
                        let mut conn = conn;
                        conn.shutdown();
                        Some(format!("no second handle on the socket: {e}"))
                    }
                };
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
    /// Requests come in here.
    conn: Conn,
    /// Replies go out here: a second handle on the socket, or TLS's writing half.
    writer: Box<dyn Write + Send>,
    peer: String,
    opts: &'a ServeOptions<'o>,
    counters: &'a Counters,
    buf: Vec<u8>,
}

/// Data of a reply gathered into one write up to this size; bigger data is written on its own.
const GATHER: usize = 64 << 10;
/// A request thread keeps its read buffer between requests up to this size (a bigger one is freed).
const KEEP_BUFFER: usize = 4 << 20;
/// After the server was told to stop, requests in flight have this long to send their replies.
const STOP_GRACE: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The requests of a connection in flight (being served by its request
/// threads, their replies not yet sent): at most `max` of them, their read
/// buffers at most [`IN_FLIGHT_BYTES`] together.
struct Window {
    max: usize,
    /// (requests, bytes).
    state: Mutex<(usize, u64)>,
    changed: Condvar,
}

impl Window {
    fn new(max: usize) -> Window {
        Window { max, state: Mutex::new((0, 0)), changed: Condvar::new() }
    }

    /// Takes a place for a request of `bytes`, waiting at most `wait`;
    /// the number in flight with it, or `None` when there is no place yet.
    fn acquire(&self, bytes: u64, wait: Duration) -> Option<usize> {
        let fits = |s: &(usize, u64)| s.0 < self.max && (s.0 == 0 || s.1 + bytes <= IN_FLIGHT_BYTES);
        let g = lock(&self.state);
        let (mut g, _) = self.changed.wait_timeout_while(g, wait, |s| !fits(s)).unwrap_or_else(PoisonError::into_inner);
        if !fits(&g) {
            return None;
        }
        g.0 += 1;
        g.1 += bytes;
        Some(g.0)
    }

    /// Gives back the place of a request of `bytes` (its reply was sent, or could not be).
    fn release(&self, bytes: u64) {
        let mut g = lock(&self.state);
        g.0 = g.0.saturating_sub(1);
        g.1 = g.1.saturating_sub(bytes);
        self.changed.notify_all();
    }

    /// Waits at most `wait` for nothing to be in flight; whether nothing is.
    fn idle(&self, wait: Duration) -> bool {
        let g = lock(&self.state);
        let (g, _) = self.changed.wait_timeout_while(g, wait, |s| s.0 > 0).unwrap_or_else(PoisonError::into_inner);
        g.0 == 0
    }
}

/// The sending side of a connection in transmission, shared by the thread
/// that reads requests and the request threads: one reply at a time goes
/// out whole (its parts are never interleaved with another's). Replies are
/// encoded by a [`ServerTransmission`] of their own: encoding a reply
/// depends only on what was negotiated, while decoding requests (the
/// reading thread's instance) keeps the state of the stream.
struct Replies {
    out: Mutex<ReplyOut>,
    /// The first failure to send (the connection is over then).
    error: Mutex<Option<(io::ErrorKind, String)>>,
    failed: AtomicBool,
}

struct ReplyOut {
    enc: ServerTransmission,
    w: Box<dyn Write + Send>,
    gather: Vec<u8>,
}

impl Replies {
    fn new(enc: ServerTransmission, w: Box<dyn Write + Send>) -> Replies {
        Replies {
            out: Mutex::new(ReplyOut { enc, w, gather: Vec::with_capacity(GATHER) }),
            error: Mutex::new(None),
            failed: AtomicBool::new(false),
        }
    }

    fn into_writer(self) -> Box<dyn Write + Send> {
        self.out.into_inner().unwrap_or_else(PoisonError::into_inner).w
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Why sending failed.
    fn error(&self) -> ConnError {
        let (kind, msg) = lock(&self.error).clone().unwrap_or((io::ErrorKind::Other, "a reply was not sent".into()));
        ConnError::Io(io::Error::new(kind, msg))
    }

    /// Notes a failure to send; the error for the caller.
    fn fail(&self, e: io::Error) -> ConnError {
        lock(&self.error).get_or_insert_with(|| (e.kind(), e.to_string()));
        self.failed.store(true, Ordering::SeqCst);
        self.error()
    }

    /// Sends bytes the request decoder queued (refusals).
    fn send(&self, bytes: &[u8]) -> Result<(), ConnError> {
        if self.failed() {
            return Err(self.error());
        }
        let r = lock(&self.out).w.write_all(bytes);
        r.map_err(|e| self.fail(e))
    }

    /// Encodes a reply with `f` and sends it.
    fn encode(&self, f: impl FnOnce(&mut ServerTransmission)) -> Result<(), ConnError> {
        if self.failed() {
            return Err(self.error());
        }
        let mut g = lock(&self.out);
        let o = &mut *g;
        f(&mut o.enc);
        let r = match o.enc.poll_transmit() {
            Some(out) => o.w.write_all(&out),
            None => Ok(()),
        };
        drop(g);
        r.map_err(|e| self.fail(e))
    }

    /// Sends the reply to a read of `data` at `offset`; the data bytes sent.
    fn read_reply(
        &self,
        handle: u64,
        offset: u64,
        data: &[u8],
        holes: &[std::ops::Range<u64>],
        df: bool,
    ) -> Result<u64, ConnError> {
        if self.failed() {
            return Err(self.error());
        }
        let mut g = lock(&self.out);
        let ReplyOut { enc, w, gather } = &mut *g;
        let r = (|| -> io::Result<u64> {
            if let Some(out) = enc.poll_transmit() {
                w.write_all(&out)?;
            }
            let parts = enc.read_reply(handle, offset, data, holes, df);
            let mut sent = 0u64;
            gather.clear();
            for p in &parts {
                gather.extend_from_slice(&p.header);
                sent += p.data.len() as u64;
                if p.data.len() > GATHER {
                    w.write_all(gather)?;
                    gather.clear();
                    w.write_all(p.data)?;
                } else {
                    gather.extend_from_slice(p.data);
                }
            }
            if !gather.is_empty() {
                w.write_all(gather)?;
            }
            Ok(sent)
        })();
        drop(g);
        r.map_err(|e| self.fail(e))
    }
}

/// What a request thread needs.
struct Work<'s> {
    jobs: &'s Mutex<mpsc::Receiver<Command>>,
    export: &'s dyn Export,
    replies: &'s Replies,
    window: &'s Window,
    counters: &'s Counters,
}

/// The bytes of the read buffer a request holds in the window.
fn window_bytes(c: &Command) -> u64 {
    match c {
        Command::Read { len, .. } => u64::from(*len),
        _ => 0,
    }
}

impl Work<'_> {
    /// A request thread: serves reads and block status queries until the
    /// queue closes.
    fn run(&self) {
        let mut data: Vec<u8> = Vec::new();
        loop {
            let job = lock(self.jobs).recv();
            let Ok(command) = job else { return };
            let bytes = window_bytes(&command);
            self.serve(command, &mut data);
            self.window.release(bytes);
            if data.capacity() > KEEP_BUFFER {
                data = Vec::new();
            }
        }
    }

    /// Carries out one request and sends its reply (a failure to send is
    /// the connection's: noted in [`Replies`], the reading thread ends it).
    fn serve(&self, command: Command, data: &mut Vec<u8>) {
        if self.replies.failed() {
            return;
        }
        match command {
            Command::Read { handle, offset, len, df } => {
                // The export fills every byte: grow the buffer, never clear it.
                if data.len() < len as usize {
                    data.resize(len as usize, 0);
                }
                let data = &mut data[..len as usize];
                match self.export.read_at(offset, data) {
                    Ok(holes) => {
                        if let Ok(sent) = self.replies.read_reply(handle, offset, data, &holes, df) {
                            self.counters.bytes_read.fetch_add(sent, Ordering::Relaxed);
                        }
                    }
                    Err(e) => drop(self.replies.encode(|tx| tx.reply_error(handle, e.errno, &e.message))),
                }
            }
            Command::BlockStatus { handle, offset, len, req_one } => {
                let r = self.export.extents(offset, u64::from(len));
                drop(self.replies.encode(|tx| match r {
                    Ok(ext) => tx.block_status_reply(handle, len, req_one, &ext),
                    Err(e) => tx.reply_error(handle, e.errno, &e.message),
                }));
            }
            // Only reads and block status queries are handed to request threads.
            _ => {}
        }
    }
}

impl Connection<'_, '_> {
    /// Closes the connection: TLS's writing half first (it may say goodbye
    /// with `close_notify`), then the reading half and the socket.
    fn close(&mut self) {
        self.writer = Box::new(Closed);
        self.conn.shutdown();
    }

    /// Reads until the buffer holds `need` bytes (never more). `Ok(false)`:
    /// the client closed the connection. A failure to send a reply
    /// (`replies`) ends the wait too.
    fn fill(&mut self, need: usize, deadline: Option<Instant>, replies: Option<&Replies>) -> Result<bool, ConnError> {
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
                    if let Some(r) = replies.filter(|r| r.failed()) {
                        return Err(r.error());
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
    fn payload(&mut self, n: usize, out: &mut Vec<u8>, replies: &Replies) -> Result<bool, ConnError> {
        debug_assert!(self.buf.is_empty());
        std::mem::swap(&mut self.buf, out);
        self.buf.clear();
        let r = self.fill(n, None, Some(replies));
        std::mem::swap(&mut self.buf, out);
        r
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.writer.write_all(bytes)?;
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
                    self.writer.flush()?;
                    let sock = Box::new(self.conn.try_clone()?);
                    let plain = std::mem::replace(&mut self.conn, Conn::Tls(None, sock));
                    let writer = std::mem::replace(&mut self.writer, Box::new(Closed));
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
                    let (reader, writer) = tls
                        .accept(plain.into_io(), writer, &proceed)
                        .map_err(|e| ConnError::Refused(format!("TLS handshake: {e}")))?;
                    if let Conn::Tls(slot, _) = &mut self.conn {
                        *slot = Some(reader);
                    }
                    self.writer = writer;
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
                    if !self.fill(k, Some(deadline), None)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Transmission: this thread reads requests; reads and block status
    /// queries go to up to [`ServeOptions::max_in_flight`] request threads
    /// (started as they are needed), which send their replies as each is
    /// ready. Writes, zeroing, trims, flushes and the disconnect are
    /// barriers: they wait until every request before them was answered
    /// and are carried out here, so nothing after them starts before they
    /// end.
    fn transmission(&mut self, n: Negotiated, export: &dyn Export) -> Result<(), ConnError> {
        let mut tx = ServerTransmission::new(n.clone());
        let writer = std::mem::replace(&mut self.writer, Box::new(Closed));
        let replies = Replies::new(ServerTransmission::new(n), writer);
        let window = Window::new(self.opts.max_in_flight);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Command>();
        let jobs_rx = Mutex::new(jobs_rx);
        let work = Work { jobs: &jobs_rx, export, replies: &replies, window: &window, counters: self.counters };
        let r = std::thread::scope(|s| {
            let (work, window_ref) = (&work, &window);
            let mut threads = 0usize;
            // Every request in flight has a thread: one is started when
            // more are in flight than there are threads. The closure owns
            // the queue's sender: dropping it closes the queue.
            let mut dispatch = move |command: Command, in_flight: usize| -> Result<(), ConnError> {
                if in_flight > threads {
                    match std::thread::Builder::new().name("alike-nbd-req".into()).spawn_scoped(s, move || work.run()) {
                        Ok(_) => threads += 1,
                        Err(e) if threads == 0 => {
                            window_ref.release(window_bytes(&command));
                            return Err(io::Error::other(format!("no thread to serve requests: {e}")).into());
                        }
                        // The threads there are serve it, a little later.
                        Err(_) => {}
                    }
                }
                jobs_tx.send(command).map_err(|_| ConnError::Io(io::Error::other("the request threads are gone")))
            };
            let r = self.requests(&mut tx, export, &replies, &window, &mut dispatch);
            // Replies in flight go out before the connection closes (the
            // client may be waiting for them); on stop, for a moment only.
            let drained = match &r {
                Ok(()) | Err(ConnError::Stopping) => self.drain(&window, &replies),
                Err(_) => false,
            };
            if !drained {
                // Request threads blocked sending to a client that does not read fail now.
                self.conn.shutdown_socket();
            }
            // The queue closes: the request threads end (the scope joins them).
            drop(dispatch);
            r
        });
        self.writer = replies.into_writer();
        r
    }

    /// Waits until nothing is in flight: false when sending failed, or the
    /// server was told to stop and [`STOP_GRACE`] passed.
    fn drain(&self, window: &Window, replies: &Replies) -> bool {
        let mut deadline: Option<Instant> = None;
        loop {
            if window.idle(self.opts.poll) {
                return true;
            }
            if replies.failed() {
                return false;
            }
            if (self.opts.stop)() && Instant::now() > *deadline.get_or_insert_with(|| Instant::now() + STOP_GRACE) {
                return false;
            }
        }
    }

    /// Waits until every request before this one was answered.
    fn barrier(&self, window: &Window, replies: &Replies) -> Result<(), ConnError> {
        loop {
            if window.idle(self.opts.poll) {
                return Ok(());
            }
            if replies.failed() {
                return Err(replies.error());
            }
            if (self.opts.stop)() {
                return Err(ConnError::Stopping);
            }
        }
    }

    /// Takes a place in the window for a request of `bytes`; the number in flight with it.
    fn acquire(&self, window: &Window, replies: &Replies, bytes: u64) -> Result<usize, ConnError> {
        loop {
            if let Some(n) = window.acquire(bytes, self.opts.poll) {
                return Ok(n);
            }
            if replies.failed() {
                return Err(replies.error());
            }
            if (self.opts.stop)() {
                return Err(ConnError::Stopping);
            }
        }
    }

    /// Reads and dispatches requests until the client disconnects or goes away.
    fn requests(
        &mut self,
        tx: &mut ServerTransmission,
        export: &dyn Export,
        replies: &Replies,
        window: &Window,
        dispatch: &mut dyn FnMut(Command, usize) -> Result<(), ConnError>,
    ) -> Result<(), ConnError> {
        let mut data: Vec<u8> = Vec::new();
        loop {
            if replies.failed() {
                return Err(replies.error());
            }
            let step = tx.handle_input(&self.buf)?;
            if !matches!(step, ServerStep::NeedMore(_)) {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
            }
            match step {
                ServerStep::NeedMore(k) => {
                    if !self.fill(k, None, Some(replies))? {
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
                        if !self.payload(piece, &mut data, replies)? {
                            return Ok(());
                        }
                        left -= piece;
                    }
                }
                ServerStep::Command { consumed, command } => {
                    self.buf.drain(..consumed);
                    match command {
                        Command::Read { .. } | Command::BlockStatus { .. } => {
                            let n = self.acquire(window, replies, window_bytes(&command))?;
                            dispatch(command, n)?;
                        }
                        Command::Disconnect => {
                            self.barrier(window, replies)?;
                            if let Some(out) = tx.poll_transmit() {
                                replies.send(&out)?;
                            }
                            return Ok(());
                        }
                        command => {
                            self.barrier(window, replies)?;
                            if !self.command(export, command, &mut data, replies)? {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            if let Some(out) = tx.poll_transmit() {
                replies.send(&out)?;
            }
        }
    }

    /// Carries out a write, zeroing, trim or flush (nothing else is in
    /// flight); `Ok(false)`: the client went away mid-payload.
    fn command(
        &mut self,
        export: &dyn Export,
        command: Command,
        data: &mut Vec<u8>,
        replies: &Replies,
    ) -> Result<bool, ConnError> {
        let reply = |handle: u64, r: Result<(), CommandError>| {
            replies.encode(|tx| match r {
                Ok(()) => tx.reply_ok(handle),
                Err(e) => tx.reply_error(handle, e.errno, &e.message),
            })
        };
        match command {
            Command::Write { handle, offset, len, fua } => {
                if !self.payload(len as usize, data, replies)? {
                    return Ok(false);
                }
                let r = export.write_at(offset, data, fua);
                if r.is_ok() {
                    self.counters.bytes_written.fetch_add(u64::from(len), Ordering::Relaxed);
                }
                reply(handle, r)?;
            }
            Command::WriteZeroes { handle, offset, len, fua, .. } => {
                reply(handle, export.write_zeroes(offset, u64::from(len), fua))?;
            }
            Command::Trim { handle, offset, len, fua } => reply(handle, export.trim(offset, u64::from(len), fua))?,
            Command::Flush { handle } => reply(handle, export.flush())?,
            _ => {}
        }
        Ok(true)
    }
}
