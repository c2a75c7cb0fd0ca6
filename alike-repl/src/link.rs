//! The layers under the messages, shared by both roles: the preamble, the
//! Noise handshake and the record layer — and what both roles do with the
//! message stream (hello, errors, counters).
//!
//! Noise is `snow`'s, with one change of plumbing: snow's random source is
//! replaced by the ephemeral key the caller hands in ([`EphemeralResolver`]),
//! so this crate has no randomness of its own and golden vectors can pin
//! every byte. Nothing else of the handshake is ours.

use std::collections::VecDeque;

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, TransportState};

use crate::error::Error;
use crate::wire::{self, Decoded, Hello, Limits, Message, ReplicaInfo, Role};

/// Progress of a state machine over the bytes buffered so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// This many bytes were used; drop them from the front of the buffer.
    Consumed(usize),
    /// Nothing could be used: the buffer must first hold this many bytes in
    /// total (from its front). Read until it does; never more is needed.
    NeedMore(usize),
}

/// Which end opened the connection. It picks the Noise roles (the dialler
/// is the initiator) and nothing else: push or pull, the roles of the
/// replication are [`Role`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dial {
    /// This end dialled (the Noise initiator).
    Connect,
    /// This end accepted (the Noise responder).
    Accept,
}

/// What an end is told before it starts: the job, the secret, which end
/// dialled, and the one fresh random value it needs.
///
/// The job secret is the per-job pre-shared key the orchestrator hands each
/// end; the ephemeral key must be 32 fresh random bytes for every
/// connection (never reused: the session keys derive from it). This crate
/// draws no randomness of its own.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    pub(crate) job: String,
    pub(crate) secret: [u8; 32],
    pub(crate) ephemeral: [u8; 32],
    pub(crate) dial: Dial,
    pub(crate) limits: Limits,
    pub(crate) send_buffer: usize,
    pub(crate) zstd_level: Option<i32>,
    pub(crate) version: u32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("job", &self.job)
            .field("dial", &self.dial)
            .field("limits", &self.limits)
            .field("send_buffer", &self.send_buffer)
            .field("zstd_level", &self.zstd_level)
            .finish_non_exhaustive()
    }
}

/// Default of [`Config::send_buffer`]: 8 MiB.
pub const DEFAULT_SEND_BUFFER: usize = 8 << 20;

impl Config {
    /// A config for job `job` (1 to 255 bytes of UTF-8) with the job's
    /// 32-byte `secret`, for an end that `dial`ed or accepted, with a fresh
    /// random `ephemeral` key; default [`Limits`], an 8 MiB send buffer and
    /// zstd level 3.
    pub fn new(job: impl Into<String>, secret: [u8; 32], dial: Dial, ephemeral: [u8; 32]) -> Config {
        Config {
            job: job.into(),
            secret,
            ephemeral,
            dial,
            limits: Limits::default(),
            send_buffer: DEFAULT_SEND_BUFFER,
            zstd_level: Some(3),
            version: wire::VERSION,
        }
    }

    /// This end's limits (each end uses the smaller of both ends' values).
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Config {
        self.limits = limits;
        self
    }

    /// How many bytes may wait in the machine for the wire before it asks
    /// the engine to stop offering and sending ([`crate::Sender::can_send`]).
    #[must_use]
    pub fn send_buffer(mut self, bytes: usize) -> Config {
        self.send_buffer = bytes.max(wire::MAX_RECORD);
        self
    }

    /// The zstd level of data frames, or `None` to send raw bytes.
    #[must_use]
    pub fn zstd_level(mut self, level: Option<i32>) -> Config {
        self.zstd_level = level;
        self
    }

    /// Speak another protocol version: only to test what a peer of another
    /// version sees.
    #[doc(hidden)]
    #[must_use]
    pub fn version_for_testing(mut self, version: u32) -> Config {
        self.version = version;
        self
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.job.is_empty() || self.job.len() > wire::MAX_JOB_ID {
            return Err(Error::Usage(format!(
                "a job id of {} bytes; 1 to {} allowed",
                self.job.len(),
                wire::MAX_JOB_ID
            )));
        }
        if let Some(l) = self.zstd_level
            && !zstd::compression_level_range().contains(&l)
        {
            return Err(Error::Usage(format!("zstd level {l} is outside {:?}", zstd::compression_level_range())));
        }
        self.limits.check()
    }
}

/// Counters of a session, for progress and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes this end put on the wire (preamble, handshake, records).
    pub wire_sent: u64,
    /// Bytes this end took from the wire.
    pub wire_received: u64,
    /// Transport records sealed.
    pub records_sent: u64,
    /// Transport records opened.
    pub records_received: u64,
    /// Extents offered (sent by the sender, received by the receiver).
    pub offered_extents: u64,
    /// Their bytes.
    pub offered_bytes: u64,
    /// Extents the receiver said it needs.
    pub needed_extents: u64,
    /// Their bytes.
    pub needed_bytes: u64,
    /// Data frames.
    pub data_frames: u64,
    /// The raw bytes of the extents they carried.
    pub data_raw_bytes: u64,
    /// Their payloads as coded (what crossed, before record overhead).
    pub data_payload_bytes: u64,
}

/// Which RNG snow sees: one that yields the caller's ephemeral key, once.
struct EphemeralResolver {
    key: [u8; 32],
}

struct OneKey(Option<[u8; 32]>);

impl Random for OneKey {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        // The one random draw of NNpsk0 is the ephemeral private key; any
        // other draw is refused rather than answered with something weak.
        match self.0.take() {
            Some(k) if dest.len() == k.len() => {
                dest.copy_from_slice(&k);
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

impl CryptoResolver for EphemeralResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(OneKey(Some(self.key))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn crypto(e: &snow::Error) -> Error {
    Error::Violation { what: "noise", reason: format!("the Noise library failed: {e}") }
}

enum Stage {
    Preamble,
    Handshake(Box<HandshakeState>),
    Transport(Box<TransportState>),
}

/// Records sealed per [`Link::transmit`] (about 1 MiB).
const TRANSMIT_RECORDS: usize = 16;

/// The preamble, the handshake and the record layer of one connection.
pub(crate) struct Link {
    initiator: bool,
    secret: [u8; 32],
    ephemeral: [u8; 32],
    version: u32,
    ours: [u8; wire::PREAMBLE_LEN],
    stage: Stage,
    /// Bytes ready for the wire.
    out: Vec<u8>,
    /// Messages not yet sealed (from `plain_out_pos`).
    plain_out: Vec<u8>,
    plain_out_pos: usize,
    /// Opened plaintext not yet decoded (from `plain_in_pos`).
    plain_in: Vec<u8>,
    plain_in_pos: usize,
    /// A failure while sealing (cannot happen with NNpsk0 and records under
    /// 64 KiB; kept rather than panicking).
    fault: Option<Error>,
    pub(crate) records_in: u64,
    pub(crate) records_out: u64,
    pub(crate) wire_in: u64,
    pub(crate) wire_out: u64,
}

impl Link {
    fn new(cfg: &Config) -> Link {
        let ours = wire::encode_preamble(cfg.version);
        Link {
            initiator: cfg.dial == Dial::Connect,
            secret: cfg.secret,
            ephemeral: cfg.ephemeral,
            version: cfg.version,
            ours,
            stage: Stage::Preamble,
            out: ours.to_vec(),
            plain_out: Vec::new(),
            plain_out_pos: 0,
            plain_in: Vec::new(),
            plain_in_pos: 0,
            fault: None,
            records_in: 0,
            records_out: 0,
            wire_in: 0,
            wire_out: 0,
        }
    }

    /// Whether the handshake is over (messages flow).
    pub(crate) fn established(&self) -> bool {
        matches!(self.stage, Stage::Transport(_))
    }

    /// Bytes waiting for the wire, sealed or not.
    pub(crate) fn backlog(&self) -> usize {
        self.out.len() + self.plain_out.len() - self.plain_out_pos
    }

    /// Queues a message (sealed by the next [`Link::transmit`] once the
    /// handshake is over).
    pub(crate) fn queue(&mut self, m: &Message) {
        wire::encode_message(m, &mut self.plain_out);
    }

    /// Queues bytes as they are, as if they were messages: for fuzzing.
    pub(crate) fn queue_raw(&mut self, b: &[u8]) {
        self.plain_out.extend_from_slice(b);
    }

    /// Takes up to ~1 MiB of bytes for the wire, sealing queued messages.
    pub(crate) fn transmit(&mut self) -> Option<Vec<u8>> {
        if let Stage::Transport(ts) = &mut self.stage
            && self.fault.is_none()
        {
            let mut records = 0;
            while self.plain_out_pos < self.plain_out.len() && records < TRANSMIT_RECORDS {
                let take = (self.plain_out.len() - self.plain_out_pos).min(wire::MAX_RECORD_PLAINTEXT);
                let src = &self.plain_out[self.plain_out_pos..self.plain_out_pos + take];
                let at = self.out.len();
                self.out.resize(at + wire::RECORD_HEADER_LEN + take + wire::TAG_LEN, 0);
                match ts.write_message(src, &mut self.out[at + wire::RECORD_HEADER_LEN..]) {
                    Ok(n) => {
                        self.out.truncate(at + wire::RECORD_HEADER_LEN + n);
                        self.out[at..at + 2].copy_from_slice(&(n as u16).to_le_bytes());
                    }
                    Err(e) => {
                        self.out.truncate(at);
                        self.fault = Some(crypto(&e));
                        break;
                    }
                }
                self.plain_out_pos += take;
                self.records_out += 1;
                records += 1;
            }
            if self.plain_out_pos == self.plain_out.len() {
                self.plain_out.clear();
                self.plain_out_pos = 0;
            } else if self.plain_out_pos > 4 << 20 {
                self.plain_out.drain(..self.plain_out_pos);
                self.plain_out_pos = 0;
            }
        }
        if self.out.is_empty() {
            return None;
        }
        self.wire_out += self.out.len() as u64;
        Some(std::mem::take(&mut self.out))
    }

    /// Uses the preamble or one record from the front of `b`.
    pub(crate) fn input(&mut self, b: &[u8]) -> Result<Progress, Error> {
        if let Some(e) = &self.fault {
            return Err(e.clone());
        }
        let used = match &mut self.stage {
            Stage::Preamble => {
                let Some(theirs) = wire::decode_preamble(b)? else {
                    return Ok(Progress::NeedMore(wire::PREAMBLE_LEN));
                };
                if theirs != self.version {
                    return Err(Error::VersionMismatch { ours: self.version, theirs });
                }
                let mut prologue = wire::PROLOGUE_LABEL.to_vec();
                let (first, second) =
                    if self.initiator { (&self.ours[..], &b[..12]) } else { (&b[..12], &self.ours[..]) };
                prologue.extend_from_slice(first);
                prologue.extend_from_slice(second);
                let mut hs = self.handshake(&prologue)?;
                if self.initiator {
                    self.write_handshake(&mut hs)?;
                }
                self.stage = Stage::Handshake(Box::new(hs));
                wire::PREAMBLE_LEN
            }
            Stage::Handshake(hs) => {
                let (msg, used) = match record(b)? {
                    Ok(r) => r,
                    Err(need) => return Ok(Progress::NeedMore(need)),
                };
                if msg.len() != wire::HANDSHAKE_MESSAGE_LEN {
                    return Err(Error::Violation {
                        what: "handshake",
                        reason: format!(
                            "a handshake record of {} bytes; {} expected",
                            msg.len(),
                            wire::HANDSHAKE_MESSAGE_LEN
                        ),
                    });
                }
                let mut payload = [0u8; wire::HANDSHAKE_MESSAGE_LEN];
                let phase = if self.initiator { "the responder's message" } else { "the initiator's message" };
                match hs.read_message(msg, &mut payload) {
                    Ok(0) => {}
                    Ok(_) | Err(_) => return Err(Error::Authentication { phase }),
                }
                let Stage::Handshake(mut hs) = std::mem::replace(&mut self.stage, Stage::Preamble) else {
                    return Err(crypto(&snow::Error::Input));
                };
                if !self.initiator {
                    self.write_handshake(&mut hs)?;
                }
                self.stage = Stage::Transport(Box::new(hs.into_transport_mode().map_err(|e| crypto(&e))?));
                used
            }
            Stage::Transport(ts) => {
                let (msg, used) = match record(b)? {
                    Ok(r) => r,
                    Err(need) => return Ok(Progress::NeedMore(need)),
                };
                if msg.len() < wire::TAG_LEN {
                    return Err(Error::Violation {
                        what: "record",
                        reason: format!("a transport record of {} bytes, shorter than its tag", msg.len()),
                    });
                }
                let at = self.plain_in.len();
                self.plain_in.resize(at + msg.len(), 0);
                match ts.read_message(msg, &mut self.plain_in[at..]) {
                    Ok(n) => self.plain_in.truncate(at + n),
                    Err(_) => {
                        self.plain_in.truncate(at);
                        return Err(Error::Integrity { record: self.records_in });
                    }
                }
                self.records_in += 1;
                used
            }
        };
        self.wire_in += used as u64;
        Ok(Progress::Consumed(used))
    }

    fn handshake(&self, prologue: &[u8]) -> Result<HandshakeState, Error> {
        let params = wire::NOISE_PATTERN.parse().map_err(|e| crypto(&e))?;
        let b = snow::Builder::with_resolver(params, Box::new(EphemeralResolver { key: self.ephemeral }))
            .psk(0, &self.secret)
            .and_then(|b| b.prologue(prologue))
            .map_err(|e| crypto(&e))?;
        if self.initiator { b.build_initiator() } else { b.build_responder() }.map_err(|e| crypto(&e))
    }

    fn write_handshake(&mut self, hs: &mut HandshakeState) -> Result<(), Error> {
        let mut msg = [0u8; wire::HANDSHAKE_MESSAGE_LEN];
        let n = hs.write_message(&[], &mut msg).map_err(|e| crypto(&e))?;
        self.out.extend_from_slice(&(n as u16).to_le_bytes());
        self.out.extend_from_slice(&msg[..n]);
        Ok(())
    }

    /// The next whole message of the opened plaintext, if there is one.
    pub(crate) fn next_message(&mut self) -> Result<Option<Message>, Error> {
        match wire::decode_message(&self.plain_in[self.plain_in_pos..])? {
            Decoded::NeedMore(_) => {
                if self.plain_in_pos > 0 {
                    self.plain_in.drain(..self.plain_in_pos);
                    self.plain_in_pos = 0;
                }
                Ok(None)
            }
            Decoded::Done(m, used) => {
                self.plain_in_pos += used;
                if self.plain_in_pos == self.plain_in.len() {
                    self.plain_in.clear();
                    self.plain_in_pos = 0;
                }
                Ok(Some(m))
            }
        }
    }
}

/// The Noise message of the record at the front of `b` and the bytes the
/// record takes, or (as `Err`) the total length needed first.
fn record(b: &[u8]) -> Result<Result<(&[u8], usize), usize>, Error> {
    if b.len() < wire::RECORD_HEADER_LEN {
        return Ok(Err(wire::RECORD_HEADER_LEN));
    }
    let len = usize::from(u16::from_le_bytes([b[0], b[1]]));
    if len == 0 {
        return Err(Error::Violation { what: "record", reason: "a record of 0 bytes".into() });
    }
    let total = wire::RECORD_HEADER_LEN + len;
    match b.get(wire::RECORD_HEADER_LEN..total) {
        Some(m) => Ok(Ok((m, total))),
        None => Ok(Err(total)),
    }
}

/// What both roles share: the link, the hello exchange, failure and counters.
pub(crate) struct Core {
    pub(crate) link: Link,
    pub(crate) role: Role,
    pub(crate) job: String,
    pub(crate) limits: Limits,
    /// The smaller of both ends' limits, once the peer's hello arrived.
    pub(crate) agreed: Option<Limits>,
    pub(crate) failed: Option<Error>,
    pub(crate) stats: Stats,
    pub(crate) send_buffer: usize,
}

impl Core {
    pub(crate) fn new(cfg: &Config, role: Role, replica: Option<ReplicaInfo>) -> Result<Core, Error> {
        cfg.check()?;
        let mut link = Link::new(cfg);
        link.queue(&Message::Hello(Hello {
            version: cfg.version,
            role,
            job: cfg.job.clone(),
            limits: cfg.limits,
            replica,
        }));
        Ok(Core {
            link,
            role,
            job: cfg.job.clone(),
            limits: cfg.limits,
            agreed: None,
            failed: None,
            stats: Stats::default(),
            send_buffer: cfg.send_buffer,
        })
    }

    /// Checks the peer's hello; the agreed limits.
    pub(crate) fn on_hello(&mut self, h: &Hello) -> Result<Limits, Error> {
        if self.agreed.is_some() {
            return Err(Error::Violation { what: "hello", reason: "a second hello".into() });
        }
        if h.version != self.link.version {
            return Err(Error::Violation {
                what: "hello",
                reason: format!(
                    "version {} in the hello after version {} in the preamble",
                    h.version, self.link.version
                ),
            });
        }
        if h.role == self.role {
            return Err(Error::RoleMismatch { role: self.role });
        }
        if h.job != self.job {
            return Err(Error::JobMismatch { ours: self.job.clone(), theirs: h.job.clone() });
        }
        let agreed = self.limits.min(&h.limits);
        self.agreed = Some(agreed);
        Ok(agreed)
    }

    /// Fails the session with `e`, telling the peer where the channel allows
    /// and where the failure is ours to report.
    pub(crate) fn fail(&mut self, e: Error) -> Error {
        if self.failed.is_none() {
            let tell = !matches!(e, Error::Peer { .. } | Error::ConnectionLost { .. } | Error::Usage(_));
            if tell && self.link.established() {
                let text = match &e {
                    Error::Aborted { message, .. } => message.clone(),
                    e => e.to_string(),
                };
                self.link.queue(&Message::Error {
                    code: e.wire_code(),
                    message: wire::truncate_utf8(&text, wire::MAX_ERROR_TEXT).to_owned(),
                });
            }
            self.failed = Some(e.clone());
        }
        e
    }

    /// Counters with the link's.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            wire_sent: self.link.wire_out,
            wire_received: self.link.wire_in,
            records_sent: self.link.records_out,
            records_received: self.link.records_in,
            ..self.stats
        }
    }
}

/// Queue of events, bounded by what one record can complete.
pub(crate) type Events<T> = VecDeque<T>;

/// What the TCP shell (and any other) needs of a state machine.
pub trait Endpoint {
    /// Uses the preamble or one record from the front of `input`; see [`Progress`].
    ///
    /// # Errors
    /// Any [`Error`]: the machine has failed (an error message for the peer
    /// may wait in [`Endpoint::poll_transmit`]).
    fn handle_input(&mut self, input: &[u8]) -> Result<Progress, Error>;
    /// The peer closed the connection.
    ///
    /// # Errors
    /// [`Error::ConnectionLost`] unless the session was over.
    fn handle_eof(&mut self) -> Result<(), Error>;
    /// Bytes to send, if any (up to about 1 MiB per call).
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    /// Whether the session is over for this end (after the acknowledgement).
    fn is_done(&self) -> bool;
    /// The error the machine failed with, if it has.
    fn error(&self) -> Option<&Error>;
}
