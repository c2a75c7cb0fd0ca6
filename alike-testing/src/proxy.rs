//! A userspace TCP proxy that delays each direction by a set time and caps
//! its rate: the link between two replication ends in tests, where the
//! kernel has no `netem`. Each direction reads at most `rate` bytes per
//! second from its socket (so TCP pushes back on the writer, as a slow
//! link does), holds what it read for `delay`, then writes it on: a
//! round trip through the proxy takes twice `delay` more than without it.
//!
//! The `alike-delay-proxy` binary runs one from the command line (the
//! measurement script uses it for rsync over ssh too); tests start one in
//! process or in a child process they can SIGKILL.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a [`DelayProxy`] treats the bytes it carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkShape {
    /// Added to each direction.
    pub delay: Duration,
    /// Bytes per second of each direction (`None`: as fast as it reads).
    pub rate: Option<u64>,
}

/// Bytes carried, per direction, over every connection so far.
#[derive(Debug, Default)]
pub struct Carried {
    /// From the clients (the dialling side) to the target.
    pub up: AtomicU64,
    /// From the target back to the clients.
    pub down: AtomicU64,
}

/// A running proxy: accepts connections on [`DelayProxy::addr`], dials
/// `target` for each, and carries both directions shaped. Stops (and
/// closes what it carries) when dropped.
pub struct DelayProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    carried: Arc<Carried>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DelayProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayProxy").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl DelayProxy {
    /// Listens on `listen` (port 0: any) and forwards to `target`.
    ///
    /// # Errors
    /// The listener cannot be bound.
    pub fn start(listen: &str, target: SocketAddr, shape: LinkShape) -> std::io::Result<DelayProxy> {
        let l = TcpListener::bind(listen)?;
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let carried = Arc::new(Carried::default());
        let (s, c) = (stop.clone(), carried.clone());
        let accept = std::thread::Builder::new().name("proxy-accept".into()).spawn(move || {
            let mut conns: Vec<(TcpStream, TcpStream)> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(target) else { continue };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        if let (Ok(c1), Ok(s1)) = (client.try_clone(), server.try_clone()) {
                            conns.push((c1, s1));
                        }
                        pipe(&client, &server, shape, c.clone(), true);
                        pipe(&server, &client, shape, c.clone(), false);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for (a, b) in conns {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
        })?;
        Ok(DelayProxy { addr, stop, carried, accept: Some(accept) })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes carried so far.
    pub fn carried(&self) -> (u64, u64) {
        (self.carried.up.load(Ordering::Relaxed), self.carried.down.load(Ordering::Relaxed))
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One direction: a reader paced to the rate, a writer that waits out the delay.
fn pipe(from: &TcpStream, to: &TcpStream, shape: LinkShape, carried: Arc<Carried>, up: bool) {
    let (Ok(mut rd), Ok(mut wr)) = (from.try_clone(), to.try_clone()) else { return };
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let _ = std::thread::Builder::new().name("proxy-read".into()).spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        let started = Instant::now();
        let mut total = 0u64;
        loop {
            let n = match rd.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            total += n as u64;
            if let Some(rate) = shape.rate.filter(|r| *r > 0) {
                // Hold the reads to the rate: what is not read waits in the
                // sender's socket, as on a slow link.
                let due = Duration::from_secs_f64(total as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            if tx.send((Instant::now() + shape.delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    let _ = std::thread::Builder::new().name("proxy-write".into()).spawn(move || {
        for (at, b) in rx {
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if wr.write_all(&b).is_err() {
                break;
            }
            let c = if up { &carried.up } else { &carried.down };
            c.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        // The reader saw the end: pass it on.
        let _ = wr.shutdown(Shutdown::Write);
    });
}
