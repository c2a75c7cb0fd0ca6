//! Running the two ends: in one process over an in-memory link, or one
//! end over a TCP connection (the other end in another process).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use alike_core::{CancelToken, DiskSource};
use alike_repl::net::{Connection, Flow};
use alike_repl::{Config, Dial, Pipe, Receiver, Sender};
use alike_replica::ReplicaTarget;
use serde::Serialize;

use crate::error::{ReplicateError, Result};
use crate::receiver::{ReceiverEngine, ReceiverOptions, ReceiverReport, Seed, replica_info};
use crate::sender::{SenderOptions, SenderReport, with_sender};

/// How the link between the ends behaves.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LinkOptions {
    /// Bytes per second this end puts on the wire (in one process: the
    /// sender's direction of the in-memory link).
    pub bwlimit: Option<u64>,
    /// A peer silent for this long is gone (TCP only; `None`: never).
    pub idle_timeout: Option<Duration>,
}

/// Both ends' reports of a run in one process.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LocalReport {
    /// The sending end's.
    pub sender: SenderReport,
    /// The receiving end's.
    pub receiver: ReceiverReport,
}

fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    alike_core::random_bytes(&mut b)?;
    Ok(b)
}

/// Replicates `disks` into `target` with both ends in this process: the
/// protocol runs whole (handshake, offers, answers, compressed data,
/// digests, commit) over an in-memory link, so the sender's `sent_bytes`
/// are the bytes that would cross a network. `seeds` (prepared with
/// [`Seed::prepare`]) serve a replica's first point.
///
/// # Errors
/// Either end's failure; the replica is then at its previous point.
pub fn replicate_local(
    disks: &[&dyn DiskSource],
    sender: &SenderOptions,
    target: &dyn ReplicaTarget,
    receiver: &ReceiverOptions,
    seeds: &[Seed<'_>],
    link: &LinkOptions,
) -> Result<LocalReport> {
    let secret = random32()?;
    let job = "local";
    let (_, info) = replica_info(target)?;
    let mut s = Sender::new(Config::new(job, secret, Dial::Connect, random32()?))?;
    let mut r = Receiver::new(Config::new(job, secret, Dial::Accept, random32()?), info)?;
    with_sender(disks, sender, |se| {
        let mut re = ReceiverEngine::new(target, receiver, seeds);
        let (mut to_r, mut to_s) = (Pipe::new(), Pipe::new());
        let started = Instant::now();
        let (mut sent, mut received) = (None, None);
        let mut carried = 0u64;
        loop {
            // Cancellation ends the run here too, not only in the sender's
            // reader: once every chunk is read and queued, the link (held to
            // its rate) is where a run spends its time. Never once the
            // receiver has committed: a committed point is reported.
            if received.is_none() {
                sender.run.cancel.check()?;
            }
            // The sender's direction, held to the rate: bytes leave the
            // sender's machine only as they are due, so the receiver sees
            // them (and the commit) no sooner than over such a link.
            let mut moved = 0;
            let mut held_back = false;
            loop {
                if let Some(rate) = link.bwlimit.filter(|r| *r > 0) {
                    let due = (started.elapsed().as_secs_f64() * rate as f64) as u64 + (64 << 10);
                    if carried >= due {
                        held_back = true;
                        break;
                    }
                }
                let Some(b) = s.poll_transmit() else { break };
                carried += b.len() as u64;
                moved += b.len();
                to_r.push(&b);
            }
            let fed = to_r.feed(&mut r).and_then(|()| to_s.pump(&mut r, &mut s));
            match fed {
                Ok(n) => moved += n,
                Err(e) => {
                    // Carry the failed end's error message to the other, then report.
                    while let Some(b) = s.poll_transmit() {
                        to_r.push(&b);
                    }
                    let _ = to_r.feed(&mut r);
                    let _ = to_s.pump(&mut r, &mut s);
                    return Err(e.into());
                }
            }
            let mut progressed = moved > 0;
            if sent.is_none() {
                match se.step(&mut s) {
                    Ok(Flow::Done(rep)) => sent = Some(rep),
                    Ok(Flow::Continue) => progressed = true,
                    Ok(Flow::Wait) => {}
                    Err(e) => {
                        let _ = to_r.pump(&mut s, &mut r);
                        let _ = re.step(&mut r);
                        return Err(e);
                    }
                }
            }
            if received.is_none() {
                match re.step(&mut r) {
                    Ok(Flow::Done(rep)) => received = Some(rep),
                    Ok(Flow::Continue) => progressed = true,
                    Ok(Flow::Wait) => {}
                    Err(e) => {
                        let _ = to_s.pump(&mut r, &mut s);
                        let _ = se.step(&mut s);
                        return Err(e);
                    }
                }
            }
            if let (Some(sender), Some(receiver)) = (&sent, &received) {
                return Ok(LocalReport { sender: sender.clone(), receiver: receiver.clone() });
            }
            if held_back && !progressed {
                std::thread::sleep(Duration::from_millis(5));
            } else if !progressed {
                se.wait_reader(Duration::from_millis(20));
            }
        }
    })
}

/// Dials the first of `addrs` that answers, retrying until `timeout`.
///
/// # Errors
/// [`ReplicateError::Connect`] when none answered in time (naming the
/// last failure); cancellation.
pub fn dial(addrs: &[SocketAddr], timeout: Duration, cancel: &CancelToken) -> Result<TcpStream> {
    let until = Instant::now() + timeout;
    let mut last = String::from("no address");
    loop {
        for a in addrs {
            cancel.check()?;
            let left = until.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
            match TcpStream::connect_timeout(a, left.min(Duration::from_secs(10))) {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        if Instant::now() >= until {
            return Err(ReplicateError::Connect(format!(
                "no connection to the peer within {} s ({last})",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Accepts one connection on `listener`, waiting up to `timeout`.
///
/// # Errors
/// [`ReplicateError::Connect`] when none came in time; cancellation.
pub fn accept(listener: &TcpListener, timeout: Duration, cancel: &CancelToken) -> Result<TcpStream> {
    let io = |e: std::io::Error| ReplicateError::Connect(format!("accepting a connection: {e}"));
    listener.set_nonblocking(true).map_err(io)?;
    let until = Instant::now() + timeout;
    loop {
        cancel.check()?;
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(io)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= until {
                    let at = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    return Err(ReplicateError::Connect(format!(
                        "no peer connected to {at} within {} s",
                        timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
}

/// Drives `machine` over `conn` with `step`, keeping the engine's own error
/// whole (the shell's step speaks the protocol's error type).
fn drive<M: alike_repl::Endpoint, T>(
    conn: &mut Connection<M>,
    mut step: impl FnMut(&mut M) -> Result<Flow<T>>,
) -> Result<T> {
    let mut ours: Option<ReplicateError> = None;
    let r = conn.drive(|m| match step(m) {
        Ok(f) => Ok(f),
        Err(e) => {
            let p = match &e {
                ReplicateError::Protocol(p) => p.clone(),
                e => alike_repl::Error::Aborted { code: e.wire_code(), message: e.to_string() },
            };
            ours = Some(e);
            Err(p)
        }
    });
    match (r, ours) {
        (Ok(t), _) => Ok(t),
        (Err(_), Some(e)) => Err(e),
        (Err(p), None) => Err(p.into()),
    }
}

fn configure<M: alike_repl::Endpoint>(conn: &mut Connection<M>, link: &LinkOptions) -> Result<()> {
    conn.set_idle_timeout(link.idle_timeout)?;
    conn.set_rate_limit(link.bwlimit);
    Ok(())
}

/// One end's connection to the other: the stream, which end made it, the
/// job's id and secret (never printed), and how the link behaves.
pub struct TcpEnd {
    /// The connection.
    pub stream: TcpStream,
    /// Whether this end dialled (`Dial::Connect`) or accepted.
    pub dial: Dial,
    /// The job's id (the same on both ends).
    pub job: String,
    /// The job's secret.
    pub secret: [u8; 32],
    /// Rate limit and idle timeout.
    pub link: LinkOptions,
}

impl std::fmt::Debug for TcpEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpEnd")
            .field("peer", &self.stream.peer_addr().ok())
            .field("dial", &self.dial)
            .field("job", &self.job)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

/// Runs the sending end over `end`.
///
/// # Errors
/// Either end's failure, or the link's. A connection lost after the commit
/// was sent and before its acknowledgement says the replica may or may not
/// have the point.
pub fn run_sender(end: TcpEnd, disks: &[&dyn DiskSource], opts: &SenderOptions) -> Result<SenderReport> {
    let s = Sender::new(Config::new(end.job.as_str(), end.secret, end.dial, random32()?))?;
    let mut conn = Connection::new(end.stream, s)?;
    configure(&mut conn, &end.link)?;
    let waker = conn.waker();
    let report = with_sender(disks, opts, |se| {
        se.set_wake(std::sync::Arc::new(move || waker.wake()));
        drive(&mut conn, |s| se.step(s))
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            // Let the error message reach the peer before the socket closes.
            let _ = conn.close();
            return Err(e);
        }
    };
    // The acknowledgement arrived: the point is committed whatever the close says.
    if let Err(e) = conn.close() {
        tracing::debug!(error = %e, "closing after the acknowledgement");
    }
    Ok(report)
}

/// Runs the receiving end over `end` into `target`.
///
/// # Errors
/// Either end's failure, or the link's; the replica is then at its
/// previous point (a first run keeps what arrived, to resume).
pub fn run_receiver(
    end: TcpEnd,
    target: &dyn ReplicaTarget,
    opts: &ReceiverOptions,
    seeds: &[Seed<'_>],
) -> Result<ReceiverReport> {
    let (_, info) = replica_info(target)?;
    let r = Receiver::new(Config::new(end.job.as_str(), end.secret, end.dial, random32()?), info)?;
    let mut conn = Connection::new(end.stream, r)?;
    configure(&mut conn, &end.link)?;
    let mut re = ReceiverEngine::new(target, opts, seeds);
    let report = match drive(&mut conn, |r| re.step(r)) {
        Ok(r) => r,
        Err(e) => {
            // Let the error message reach the peer before the socket closes.
            let _ = conn.close();
            return Err(e);
        }
    };
    // Committed and acknowledged; a close that fails changes nothing.
    if let Err(e) = conn.close() {
        tracing::debug!(error = %e, "closing after the commit");
    }
    Ok(report)
}
