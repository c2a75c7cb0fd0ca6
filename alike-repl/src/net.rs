//! A thin blocking TCP shell: moves bytes between a socket and a state
//! machine, nothing else (the protocol is in the machines).
//!
//! Two threads per connection keep reading and writing apart, so neither
//! end can block the other: a reader thread hands received bytes to the
//! driving thread over a small bounded channel (when the engine is slow,
//! TCP pushes back on the peer), a writer thread writes what the driving
//! thread hands it (at most [`Connection::set_high_water`] bytes in flight;
//! beyond that the bytes wait in the machine, which then tells its engine
//! to stop — [`crate::Sender::can_send`]). The driving thread never blocks
//! on the socket, only on "something happened".
//!
//! Uses `std::net` and `std::thread` only.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::link::{Endpoint, Progress};

/// The TCP port of processor-to-processor data by default (the product's).
pub const DEFAULT_PORT: u16 = 2812;

/// Bytes read per system call.
const READ_CHUNK: usize = 64 * 1024;
/// Read chunks waiting for the driving thread before the reader stops reading.
const READ_QUEUE: usize = 8;
/// How long [`Connection::close`] waits for the peer to close its side.
pub const LINGER: Duration = Duration::from_secs(5);

/// What the engine's step function says after it has done what it could.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow<T> {
    /// It can do more at once: call it again without waiting.
    Continue,
    /// It waits for the peer (an answer, an acknowledgement) or for the
    /// socket to take more bytes.
    Wait,
    /// Finished, with this result.
    Done(T),
}

/// Wakes a [`Connection`]'s driving thread (see [`Connection::waker`]).
#[derive(Debug, Clone)]
pub struct Waker(mpsc::Sender<Io>);

impl Waker {
    /// Makes the driving thread call its step function again soon. Harmless
    /// after the connection has gone.
    pub fn wake(&self) {
        let _ = self.0.send(Io::Wake);
    }
}

/// A token bucket over the writer's writes.
struct Pace {
    rate: Arc<AtomicU64>,
    tokens: f64,
    at: Instant,
}

impl Pace {
    fn new(rate: Arc<AtomicU64>) -> Pace {
        Pace { rate, tokens: 0.0, at: Instant::now() }
    }

    fn write_all(&mut self, w: &mut TcpStream, b: &[u8]) -> std::io::Result<()> {
        let mut rest = b;
        while !rest.is_empty() {
            let rate = self.rate.load(Ordering::Relaxed);
            if rate == 0 {
                self.tokens = 0.0;
                self.at = Instant::now();
                return w.write_all(rest);
            }
            let burst = (rate as f64 / 20.0).max(16384.0);
            let now = Instant::now();
            self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate as f64).min(burst);
            self.at = now;
            let piece = rest.len().min(burst as usize).max(1);
            if self.tokens < piece as f64 {
                std::thread::sleep(Duration::from_secs_f64((piece as f64 - self.tokens) / rate as f64));
                continue;
            }
            self.tokens -= piece as f64;
            w.write_all(&rest[..piece])?;
            rest = &rest[piece..];
        }
        Ok(())
    }
}

enum Io {
    /// Something outside the socket has work for the step function.
    Wake,
    Read(Vec<u8>),
    Eof,
    ReadFailed(std::io::Error),
    Wrote(usize),
    WriteFailed(std::io::Error),
}

/// A state machine over a TCP connection.
///
/// ```no_run
/// use alike_repl::net::{Connection, Flow, DEFAULT_PORT};
/// use alike_repl::{Config, Dial, ReplicaInfo, Receiver, ReceiverEvent};
/// # fn main() -> Result<(), alike_repl::Error> {
/// let listener = std::net::TcpListener::bind(("0.0.0.0", DEFAULT_PORT)).unwrap();
/// let cfg = Config::new("job-1", [7; 32], Dial::Accept, [2; 32]); // random in real use
/// let receiver = Receiver::new(cfg, ReplicaInfo { id_key: [9; 32], base: vec![] })?;
/// let mut conn = Connection::accept(&listener, receiver)?;
/// let point = conn.drive(|r| {
///     while let Some(ev) = r.poll_event() {
///         match ev {
///             ReceiverEvent::Commit { .. } => {
///                 r.ack(b"point-1")?;
///                 return Ok(Flow::Done(()));
///             }
///             _ => { /* answer offers, write data, check digests */ }
///         }
///     }
///     Ok(Flow::Wait)
/// })?;
/// conn.close()?;
/// # Ok(()) }
/// ```
pub struct Connection<M: Endpoint> {
    machine: M,
    sock: Sock,
    inbuf: Vec<u8>,
    in_flight: usize,
    high_water: usize,
    eof: bool,
}

/// The socket and its threads; shut down when dropped, so both threads end.
struct Sock {
    stream: TcpStream,
    events: mpsc::Receiver<Io>,
    /// For wakers: the channel the socket threads report on.
    wake: mpsc::Sender<Io>,
    /// One token per chunk the reader may read ahead.
    credits: Option<mpsc::SyncSender<()>>,
    writer: Option<mpsc::Sender<Vec<u8>>>,
    writer_thread: Option<JoinHandle<()>>,
    /// The writer's rate limit in bytes per second (0: none).
    rate: Arc<AtomicU64>,
    reader_thread: Option<JoinHandle<()>>,
}

impl Drop for Sock {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl<M: Endpoint> std::fmt::Debug for Connection<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.sock.stream.peer_addr().ok())
            .field("in_flight", &self.in_flight)
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl<M: Endpoint> Connection<M> {
    /// Dials `addr` and runs `machine` (built with [`crate::Dial::Connect`]) over it.
    ///
    /// # Errors
    /// [`Error::Io`] when the connection or a thread cannot be made.
    pub fn connect(addr: impl ToSocketAddrs, machine: M) -> Result<Connection<M>, Error> {
        let stream = TcpStream::connect(addr).map_err(|e| Error::io("connecting to the peer", &e))?;
        Connection::new(stream, machine)
    }

    /// Accepts one connection on `listener` and runs `machine` (built with
    /// [`crate::Dial::Accept`]) over it.
    ///
    /// # Errors
    /// [`Error::Io`] when accepting or starting a thread fails.
    pub fn accept(listener: &TcpListener, machine: M) -> Result<Connection<M>, Error> {
        let (stream, _) = listener.accept().map_err(|e| Error::io("accepting a connection", &e))?;
        Connection::new(stream, machine)
    }

    /// Runs `machine` over an open stream.
    ///
    /// # Errors
    /// [`Error::Io`] when the stream cannot be cloned or a thread started.
    pub fn new(stream: TcpStream, machine: M) -> Result<Connection<M>, Error> {
        // Answers are small and must not wait for more bytes to join them.
        stream.set_nodelay(true).map_err(|e| Error::io("setting TCP_NODELAY", &e))?;
        let (tx, events) = mpsc::channel();
        let (credits, credit_rx) = mpsc::sync_channel(READ_QUEUE);
        for _ in 0..READ_QUEUE {
            let _ = credits.send(());
        }
        let rate = Arc::new(AtomicU64::new(0));
        let mut sock = Sock {
            stream,
            events,
            wake: tx.clone(),
            credits: Some(credits),
            writer: None,
            writer_thread: None,
            rate: rate.clone(),
            reader_thread: None,
        };
        let mut rd = sock.stream.try_clone().map_err(|e| Error::io("cloning the socket", &e))?;
        let rtx = tx.clone();
        sock.reader_thread = Some(
            std::thread::Builder::new()
                .name("alike-repl-read".into())
                .spawn(move || {
                    // A token per chunk: when the engine falls behind, the
                    // reader stops and TCP pushes back on the peer.
                    while credit_rx.recv().is_ok() {
                        let mut buf = vec![0u8; READ_CHUNK];
                        let ev = loop {
                            match rd.read(&mut buf) {
                                Ok(0) => break Io::Eof,
                                Ok(n) => {
                                    buf.truncate(n);
                                    break Io::Read(buf);
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                Err(e) => break Io::ReadFailed(e),
                            }
                        };
                        let last = !matches!(ev, Io::Read(_));
                        if rtx.send(ev).is_err() || last {
                            return;
                        }
                    }
                })
                .map_err(|e| Error::io("starting the reader thread", &e))?,
        );
        let mut wr = sock.stream.try_clone().map_err(|e| Error::io("cloning the socket", &e))?;
        let (writer, wrx) = mpsc::channel::<Vec<u8>>();
        sock.writer = Some(writer);
        sock.writer_thread = Some(
            std::thread::Builder::new()
                .name("alike-repl-write".into())
                .spawn(move || {
                    let mut pace = Pace::new(rate);
                    for b in wrx {
                        let ev = match pace.write_all(&mut wr, &b) {
                            Ok(()) => Io::Wrote(b.len()),
                            Err(e) => Io::WriteFailed(e),
                        };
                        let failed = matches!(ev, Io::WriteFailed(_));
                        if tx.send(ev).is_err() || failed {
                            return;
                        }
                    }
                })
                .map_err(|e| Error::io("starting the writer thread", &e))?,
        );
        Ok(Connection { machine, sock, inbuf: Vec::new(), in_flight: 0, high_water: 4 << 20, eof: false })
    }

    /// Fails a read or a write that waits longer than `timeout` (`None`:
    /// never) with [`Error::Io`]: a peer that vanished without closing.
    ///
    /// # Errors
    /// [`Error::Io`] when the socket refuses it.
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let s = &self.sock.stream;
        s.set_read_timeout(timeout)
            .and_then(|()| s.set_write_timeout(timeout))
            .map_err(|e| Error::io("setting the idle timeout", &e))
    }

    /// A handle another thread uses to make [`Connection::drive`] call its
    /// step function again without waiting for the socket: for an engine
    /// whose work also arrives from elsewhere (a reader thread).
    pub fn waker(&self) -> Waker {
        Waker(self.sock.wake.clone())
    }

    /// Puts at most `bytes_per_second` on the wire from now on (`None`:
    /// no limit): the writer thread paces its writes (bursts of at most
    /// 1/20 s of the rate, at least 16 KiB), and TCP pushes back on
    /// whatever waits.
    pub fn set_rate_limit(&mut self, bytes_per_second: Option<u64>) {
        self.sock.rate.store(bytes_per_second.unwrap_or(0), Ordering::Relaxed);
    }

    /// How many bytes may be handed to the writer thread and not yet written
    /// (4 MiB by default; at least 64 KiB).
    pub fn set_high_water(&mut self, bytes: usize) {
        self.high_water = bytes.max(64 * 1024);
    }

    /// The machine.
    pub fn machine(&mut self) -> &mut M {
        &mut self.machine
    }

    /// Moves bytes and calls `step` with the machine until it returns
    /// [`Flow::Done`]. `step` takes the machine's events and does the
    /// engine's work (offers, data, answers…), then says whether it could
    /// go on at once or waits.
    ///
    /// # Errors
    /// The machine's error (it has failed; its error message for the peer
    /// is handed to the writer), `step`'s, or [`Error::Io`].
    pub fn drive<T>(&mut self, mut step: impl FnMut(&mut M) -> Result<Flow<T>, Error>) -> Result<T, Error> {
        let r = self.drive_inner(&mut step);
        if r.is_err() {
            // Best effort: an error message the machine queued for the peer.
            let _ = self.flush(usize::MAX);
        }
        r
    }

    fn drive_inner<T>(&mut self, step: &mut impl FnMut(&mut M) -> Result<Flow<T>, Error>) -> Result<T, Error> {
        loop {
            let flow = step(&mut self.machine)?;
            self.flush(self.high_water)?;
            match flow {
                Flow::Done(t) => return Ok(t),
                Flow::Continue => {}
                Flow::Wait => {
                    // After the flush, nothing in flight means nothing left to send.
                    if self.eof && self.in_flight == 0 {
                        return Err(self.machine.error().cloned().unwrap_or(Error::ConnectionLost {
                            phase: "while this end waits for the peer, which has closed the connection",
                        }));
                    }
                    let ev = self
                        .sock
                        .events
                        .recv()
                        .map_err(|_| Error::ConnectionLost { phase: "(both socket threads ended)" })?;
                    self.handle(ev)?;
                }
            }
            while let Ok(ev) = self.sock.events.try_recv() {
                self.handle(ev)?;
            }
        }
    }

    /// Hands the machine's output to the writer while less than `limit` is in flight.
    fn flush(&mut self, limit: usize) -> Result<(), Error> {
        while self.in_flight < limit {
            let Some(b) = self.machine.poll_transmit() else { break };
            self.in_flight += b.len();
            let lost = || Error::ConnectionLost { phase: "(the writer thread ended)" };
            self.sock.writer.as_ref().ok_or_else(lost)?.send(b).map_err(|_| lost())?;
        }
        Ok(())
    }

    fn handle(&mut self, ev: Io) -> Result<(), Error> {
        match ev {
            Io::Wake => Ok(()),
            Io::Read(b) => {
                self.inbuf.extend_from_slice(&b);
                if let Some(c) = &self.sock.credits {
                    let _ = c.try_send(());
                }
                self.feed()
            }
            Io::Eof => {
                self.eof = true;
                self.feed()?;
                self.machine.handle_eof()
            }
            Io::ReadFailed(e) => {
                self.eof = true;
                let err = Error::io("reading from the peer", &e);
                let _ = self.machine.handle_eof();
                Err(err)
            }
            Io::Wrote(n) => {
                self.in_flight -= n.min(self.in_flight);
                Ok(())
            }
            Io::WriteFailed(e) => {
                let _ = self.machine.handle_eof();
                Err(Error::io("writing to the peer", &e))
            }
        }
    }

    fn feed(&mut self) -> Result<(), Error> {
        let mut pos = 0;
        let r = loop {
            match self.machine.handle_input(&self.inbuf[pos..]) {
                Ok(Progress::Consumed(0) | Progress::NeedMore(_)) => break Ok(()),
                Ok(Progress::Consumed(n)) => pos += n,
                Err(e) => break Err(e),
            }
        };
        self.inbuf.drain(..pos);
        r
    }

    /// Writes everything the machine still has to send, then closes the
    /// connection and returns the machine. It closes gracefully: it ends
    /// its own direction, then reads (and drops) what the peer still sends
    /// until the peer closes too, for at most [`LINGER`], so that its last
    /// bytes (an acknowledgement, an error message) are not lost to a reset.
    ///
    /// # Errors
    /// [`Error::Io`] when the last writes fail.
    pub fn close(mut self) -> Result<M, Error> {
        let mut result = self.flush(usize::MAX);
        // The writer ends when its channel closes, after writing what it holds.
        self.sock.writer = None;
        if let Some(t) = self.sock.writer_thread.take() {
            let _ = t.join();
        }
        let _ = self.sock.stream.shutdown(Shutdown::Write);
        let until = std::time::Instant::now() + LINGER;
        // Until the peer closes (or the linger ends).
        let mut open = !self.eof;
        while open {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.sock.events.recv_timeout(left) {
                Ok(Io::Read(_)) => {
                    if let Some(c) = &self.sock.credits {
                        let _ = c.try_send(());
                    }
                }
                Ok(Io::WriteFailed(e)) => result = result.and(Err(Error::io("writing to the peer", &e))),
                Ok(Io::Wrote(_) | Io::Wake) => {}
                Ok(Io::Eof | Io::ReadFailed(_)) | Err(_) => open = false,
            }
        }
        let _ = self.sock.stream.shutdown(Shutdown::Both);
        self.sock.credits = None;
        if let Some(t) = self.sock.reader_thread.take() {
            let _ = t.join();
        }
        result.map(|()| self.machine)
    }
}
