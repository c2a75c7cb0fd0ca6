//! The receiver's state machine: next to the replica, it answers which
//! offered extents the replica lacks, verifies every byte that arrives
//! against its id and every disk against its digest, and commits.

use std::collections::BTreeMap;

use crate::digest::extent_id;
use crate::error::Error;
use crate::link::{Config, Core, Endpoint, Events, Progress, Stats};
use crate::sender::offer_problem;
use crate::wire::{self, Codec, Data, DiskEnd, DiskSpec, Extent, Limits, Message, Offer, ReplicaInfo, Role};

/// What the receiver tells its engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// The sender's hello arrived and matched (job, version, roles).
    Ready {
        /// The limits both ends agreed.
        limits: Limits,
    },
    /// Opaque metadata from the sender.
    Meta {
        /// Its kind, as the engines agree.
        kind: u32,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// A disk begins.
    DiskBegin(DiskSpec),
    /// Extents of changed ranges: answer with [`Receiver::need`] (each
    /// range of the new point holds exactly the extents inside it, zeroes
    /// between them).
    Offer(Offer),
    /// Verified bytes of needed extents: write them into the replica's
    /// uncommitted layer.
    Data(DataFrame),
    /// A disk ended: compute the replica's digest of it (with every offered
    /// range applied) and call [`Receiver::finish_disk`].
    DiskEnd {
        /// The disk.
        disk: u32,
        /// The sender's digest.
        digest: [u8; 32],
    },
    /// Every disk ended and matched its digest: make the point durable,
    /// then [`Receiver::ack`].
    Commit {
        /// How many disks.
        disks: u32,
    },
}

/// Bytes of needed extents of one disk, each verified against its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    /// The disk.
    pub disk: u32,
    /// The extents, in the order of their bytes.
    pub extents: Vec<Extent>,
    /// Their bytes, concatenated.
    pub bytes: Vec<u8>,
}

impl DataFrame {
    /// Each extent with its bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&Extent, &[u8])> {
        let mut at = 0usize;
        self.extents.iter().map(move |e| {
            let s = self.bytes.get(at..at + e.len as usize).unwrap_or_default();
            at += e.len as usize;
            (e, s)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Ready,
    /// The commit arrived; waiting for digests to be checked.
    CommitPending,
    /// The commit event was given; waiting for `ack`.
    Committed,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskState {
    Open,
    /// Ended with the sender's digest; waiting for `finish_disk`.
    Ended([u8; 32]),
    Finished,
}

#[derive(Debug)]
struct Disk {
    spec: DiskSpec,
    next: u64,
    offered: u64,
    received: u64,
    /// Needed extents whose bytes have not arrived: offset → (len, id, batch).
    missing: BTreeMap<u64, (u32, [u8; 32], u64)>,
    state: DiskState,
}

#[derive(Debug)]
struct Batch {
    disk: u32,
    /// The offered extents, until the engine answers.
    extents: Vec<Extent>,
    answered: bool,
    /// Needed extents whose bytes have not arrived.
    missing: u32,
}

/// The receiver: answers offers, verifies data, commits.
///
/// Call order: build it with [`Receiver::new`] (with the replica's id key
/// and last committed point); then loop — send whatever
/// [`Receiver::poll_transmit`] returns; feed received bytes to
/// [`Receiver::handle_input`] and drop the consumed prefix; take the
/// [`ReceiverEvent`]s from [`Receiver::poll_event`] and act on each, in
/// order:
///
/// - [`ReceiverEvent::Offer`]: look the ids up in the replica's record and
///   answer with [`Receiver::need`] — promptly: the sender keeps a window
///   of batches in flight and waits for the oldest answer when it is full
///   (answers may come in any order);
/// - [`ReceiverEvent::Data`]: write the verified bytes into the
///   uncommitted layer of the replica;
/// - [`ReceiverEvent::DiskEnd`]: [`Receiver::finish_disk`] with the
///   replica's digest of the disk as the new point would have it;
/// - [`ReceiverEvent::Commit`] (given only once every disk's digest
///   matched): make the point durable, then [`Receiver::ack`] with its id
///   and drain `poll_transmit` so the acknowledgement leaves.
///
/// A returned error other than [`Error::Usage`] fails the machine for good:
/// discard the uncommitted layer, drain `poll_transmit` once more (an error
/// message for the peer may wait there), then close the connection.
pub struct Receiver {
    core: Core,
    phase: Phase,
    id_key: [u8; 32],
    disks: BTreeMap<u32, Disk>,
    next_batch: u64,
    batches: BTreeMap<u64, Batch>,
    events: Events<ReceiverEvent>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("phase", &self.phase)
            .field("batches", &self.batches.len())
            .field("failed", &self.core.failed)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A receiver for `cfg`, for a replica whose ids are keyed with
    /// `replica.id_key` and whose last committed point is `replica.base`
    /// (empty: none; at most 255 bytes). Its first bytes wait in
    /// [`Receiver::poll_transmit`].
    ///
    /// # Errors
    /// [`Error::Usage`] as [`crate::Sender::new`], or for a base id over 255 bytes.
    pub fn new(cfg: Config, replica: ReplicaInfo) -> Result<Receiver, Error> {
        if replica.base.len() > wire::MAX_POINT_ID {
            return Err(Error::Usage(format!(
                "a point id of {} bytes; at most {}",
                replica.base.len(),
                wire::MAX_POINT_ID
            )));
        }
        let id_key = replica.id_key;
        Ok(Receiver {
            core: Core::new(&cfg, Role::Receiver, Some(replica))?,
            phase: Phase::Connecting,
            id_key,
            disks: BTreeMap::new(),
            next_batch: 0,
            batches: BTreeMap::new(),
            events: Events::new(),
        })
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// The limits both ends agreed (after [`ReceiverEvent::Ready`]).
    pub fn limits(&self) -> Option<Limits> {
        self.core.agreed
    }

    /// Batches offered and not yet answered with [`Receiver::need`].
    pub fn unanswered(&self) -> usize {
        self.batches.values().filter(|b| !b.answered).count()
    }

    /// Answers batch `batch`: one flag per offered extent, in the offer's
    /// order, true where the replica lacks it.
    ///
    /// # Errors
    /// [`Error::Usage`] for a batch that is not awaiting an answer or the
    /// wrong number of flags; nothing changes then.
    pub fn need(&mut self, batch: u64, needed: &[bool]) -> Result<(), Error> {
        if let Some(e) = &self.core.failed {
            return Err(Error::Usage(format!("need: the session has failed ({e})")));
        }
        let Some(b) = self.batches.get_mut(&batch).filter(|b| !b.answered) else {
            return Err(Error::Usage(format!("need for batch {batch}, which is not awaiting an answer")));
        };
        if needed.len() != b.extents.len() {
            return Err(Error::Usage(format!(
                "{} flags for batch {batch} of {} extents",
                needed.len(),
                b.extents.len()
            )));
        }
        b.answered = true;
        let disk = b.disk;
        let mut missing = 0u32;
        let extents = std::mem::take(&mut b.extents);
        if let Some(d) = self.disks.get_mut(&disk) {
            for (e, _) in extents.iter().zip(needed).filter(|(_, n)| **n) {
                d.missing.insert(e.offset, (e.len, e.id, batch));
                missing += 1;
                self.core.stats.needed_extents += 1;
                self.core.stats.needed_bytes += u64::from(e.len);
            }
        }
        if missing == 0 {
            self.batches.remove(&batch);
        } else if let Some(b) = self.batches.get_mut(&batch) {
            b.missing = missing;
        }
        self.core.link.queue(&Message::Need(wire::Need { batch, needed: needed.to_vec() }));
        Ok(())
    }

    /// Checks a disk that ended against `digest`, the replica's digest of
    /// it as the new point would have it ([`crate::DiskDigest`]).
    ///
    /// # Errors
    /// [`Error::Usage`] for a disk that has not ended (or was finished);
    /// [`Error::DigestMismatch`] when the digests differ — the machine has
    /// failed then, and the sender is told.
    pub fn finish_disk(&mut self, disk: u32, digest: [u8; 32]) -> Result<(), Error> {
        if let Some(e) = &self.core.failed {
            return Err(Error::Usage(format!("finish_disk: the session has failed ({e})")));
        }
        let Some(d) = self.disks.get_mut(&disk) else {
            return Err(Error::Usage(format!("finish_disk of disk {disk}, which was not begun")));
        };
        let DiskState::Ended(theirs) = d.state else {
            return Err(Error::Usage(format!("finish_disk of disk {disk}, which has not ended or was finished")));
        };
        if theirs != digest {
            return Err(self.core.fail(Error::DigestMismatch { disk, ours: digest, theirs }));
        }
        d.state = DiskState::Finished;
        self.maybe_commit();
        Ok(())
    }

    /// Acknowledges the commit: the point is durable, with id `point` (at
    /// most 255 bytes). Drain `poll_transmit` afterwards.
    ///
    /// # Errors
    /// [`Error::Usage`] before [`ReceiverEvent::Commit`] or for a longer id.
    pub fn ack(&mut self, point: &[u8]) -> Result<(), Error> {
        if self.phase != Phase::Committed || self.core.failed.is_some() {
            return Err(Error::Usage("ack before the commit event".into()));
        }
        if point.len() > wire::MAX_POINT_ID {
            return Err(Error::Usage(format!("a point id of {} bytes; at most {}", point.len(), wire::MAX_POINT_ID)));
        }
        self.core.link.queue(&Message::Ack { point: point.to_vec() });
        self.phase = Phase::Done;
        Ok(())
    }

    /// Gives up (the replica could not be written, the run was cancelled):
    /// tells the sender and fails the machine with [`Error::Aborted`].
    pub fn abort(&mut self, code: u16, message: &str) {
        if self.phase != Phase::Done {
            self.core.fail(Error::Aborted { code, message: message.to_owned() });
        }
    }

    fn maybe_commit(&mut self) {
        if self.phase == Phase::CommitPending && self.disks.values().all(|d| d.state == DiskState::Finished) {
            self.phase = Phase::Committed;
            self.events.push_back(ReceiverEvent::Commit { disks: self.disks.len() as u32 });
        }
    }

    fn on_message(&mut self, m: Message) -> Result<(), Error> {
        let bad = |what, reason: String| Error::Violation { what, reason };
        match (self.phase, m) {
            (_, Message::Error { code, message }) => Err(Error::Peer { code, message }),
            (Phase::Connecting, Message::Hello(h)) => {
                let limits = self.core.on_hello(&h)?;
                if h.replica.is_some() {
                    return Err(bad("hello", "the sender's hello carries a replica".into()));
                }
                self.phase = Phase::Ready;
                self.events.push_back(ReceiverEvent::Ready { limits });
                Ok(())
            }
            (Phase::Connecting, m) => Err(bad(wire::message_name(m.kind()), "before the sender's hello".into())),
            (Phase::Ready, Message::Meta { kind, bytes }) => {
                self.events.push_back(ReceiverEvent::Meta { kind, bytes });
                Ok(())
            }
            (Phase::Ready, Message::DiskBegin(spec)) => self.on_disk_begin(spec),
            (Phase::Ready, Message::Offer(o)) => self.on_offer(o),
            (Phase::Ready, Message::Data(d)) => self.on_data(d),
            (Phase::Ready, Message::DiskEnd(e)) => self.on_disk_end(e),
            (Phase::Ready, Message::Commit { disks }) => self.on_commit(disks),
            (_, m) => Err(bad(
                wire::message_name(m.kind()),
                format!("a receiver does not take this message {}", self.phase_name()),
            )),
        }
    }

    fn limits_or_violation(&self) -> Result<Limits, Error> {
        self.core.agreed.ok_or(Error::Violation { what: "hello", reason: "no agreed limits".into() })
    }

    fn on_disk_begin(&mut self, spec: DiskSpec) -> Result<(), Error> {
        let bad = |reason: String| Error::Violation { what: "disk begin", reason };
        let limits = self.limits_or_violation()?;
        if self.disks.contains_key(&spec.disk) {
            return Err(bad(format!("disk {} begins a second time", spec.disk)));
        }
        if self.disks.len() >= wire::MAX_DISKS {
            return Err(bad(format!("more than {} disks", wire::MAX_DISKS)));
        }
        if spec.geometry.max_extent() > limits.max_frame {
            return Err(bad(format!(
                "disk {}: extents of up to {} bytes do not fit the agreed frames of {}",
                spec.disk,
                spec.geometry.max_extent(),
                limits.max_frame
            )));
        }
        self.disks.insert(
            spec.disk,
            Disk { spec, next: 0, offered: 0, received: 0, missing: BTreeMap::new(), state: DiskState::Open },
        );
        self.events.push_back(ReceiverEvent::DiskBegin(spec));
        Ok(())
    }

    fn open_disk(&mut self, what: &'static str, disk: u32) -> Result<&mut Disk, Error> {
        match self.disks.get_mut(&disk) {
            Some(d) if d.state == DiskState::Open => Ok(d),
            Some(_) => Err(Error::Violation { what, reason: format!("disk {disk} has ended") }),
            None => Err(Error::Violation { what, reason: format!("disk {disk} was not begun") }),
        }
    }

    fn on_offer(&mut self, o: Offer) -> Result<(), Error> {
        let bad = |reason: String| Error::Violation { what: "offer", reason };
        let limits = self.limits_or_violation()?;
        if o.batch != self.next_batch {
            return Err(bad(format!("batch {}; batch {} expected", o.batch, self.next_batch)));
        }
        // The sender counts the same way: batches unanswered, or answered
        // with needed bytes that had not all entered the stream before this offer.
        if self.batches.len() >= limits.window as usize {
            return Err(bad(format!("more than the agreed {} batches outstanding", limits.window)));
        }
        if o.extents.len() > limits.max_batch as usize {
            return Err(bad(format!("{} extents; the agreed batch is {}", o.extents.len(), limits.max_batch)));
        }
        let d = self.open_disk("offer", o.disk)?;
        match offer_problem(&d.spec, d.next, &o.ranges, &o.extents) {
            Ok(next) => d.next = next,
            Err(p) => return Err(bad(format!("disk {}: {p}", o.disk))),
        }
        d.offered += o.extents.len() as u64;
        self.core.stats.offered_extents += o.extents.len() as u64;
        self.core.stats.offered_bytes += o.extents.iter().map(|e| u64::from(e.len)).sum::<u64>();
        self.next_batch += 1;
        self.batches.insert(o.batch, Batch { disk: o.disk, extents: o.extents.clone(), answered: false, missing: 0 });
        self.events.push_back(ReceiverEvent::Offer(o));
        Ok(())
    }

    fn on_data(&mut self, m: Data) -> Result<(), Error> {
        let bad = |reason: String| Error::Violation { what: "data", reason };
        let limits = self.limits_or_violation()?;
        let raw_len = m.raw_len();
        if raw_len > u64::from(limits.max_frame) {
            return Err(bad(format!("a frame of {raw_len} raw bytes; the agreed frame is {}", limits.max_frame)));
        }
        let disk = m.disk;
        let id_key = self.id_key;
        let d = self.open_disk("data", disk)?;
        // Every extent must be needed and missing, each once.
        let mut extents = Vec::with_capacity(m.extents.len());
        let mut batches = Vec::with_capacity(m.extents.len());
        for &(offset, len) in &m.extents {
            match d.missing.remove(&offset) {
                Some((l, id, batch)) if l == len => {
                    extents.push(Extent { offset, len, id });
                    batches.push(batch);
                }
                _ => {
                    return Err(bad(format!(
                        "disk {disk}: bytes for the extent at {offset} of {len} bytes, which is not missing (never needed, or already received)"
                    )));
                }
            }
        }
        let raw = raw_len as usize;
        let payload_len = m.payload.len() as u64;
        let bytes = match m.codec {
            Codec::None if m.payload.len() == raw => m.payload,
            Codec::None => return Err(bad(format!("a raw payload of {} bytes for {raw} bytes", m.payload.len()))),
            Codec::Zstd if m.payload.len() < raw => match zstd::bulk::decompress(&m.payload, raw) {
                Ok(b) if b.len() == raw => b,
                Ok(b) => return Err(bad(format!("the zstd payload holds {} bytes; {raw} expected", b.len()))),
                Err(e) => return Err(bad(format!("the zstd payload does not decode to {raw} bytes: {e}"))),
            },
            Codec::Zstd => {
                return Err(bad(format!(
                    "a zstd payload of {} bytes for {raw} raw bytes (no shorter: it must be sent raw)",
                    m.payload.len()
                )));
            }
        };
        let mut at = 0usize;
        for e in &extents {
            let end = at + e.len as usize;
            if extent_id(&id_key, &bytes[at..end]) != e.id {
                return Err(Error::ExtentId { disk, offset: e.offset, len: e.len });
            }
            at = end;
        }
        d.received += extents.len() as u64;
        for batch in batches {
            if let Some(b) = self.batches.get_mut(&batch) {
                b.missing -= 1;
                if b.missing == 0 {
                    self.batches.remove(&batch);
                }
            }
        }
        self.core.stats.data_frames += 1;
        self.core.stats.data_raw_bytes += raw_len;
        self.core.stats.data_payload_bytes += payload_len;
        self.events.push_back(ReceiverEvent::Data(DataFrame { disk, extents, bytes }));
        Ok(())
    }

    fn on_disk_end(&mut self, e: DiskEnd) -> Result<(), Error> {
        let bad = |reason: String| Error::Violation { what: "disk end", reason };
        let pending = self.batches.values().filter(|b| b.disk == e.disk).count();
        let d = self.open_disk("disk end", e.disk)?;
        if pending > 0 {
            return Err(bad(format!("disk {} ends with {pending} batches unanswered or missing data", e.disk)));
        }
        if e.offered != d.offered || e.sent != d.received {
            return Err(bad(format!(
                "disk {}: the sender counts {} extents offered and {} sent; this end {} and {}",
                e.disk, e.offered, e.sent, d.offered, d.received
            )));
        }
        d.state = DiskState::Ended(e.digest);
        self.events.push_back(ReceiverEvent::DiskEnd { disk: e.disk, digest: e.digest });
        Ok(())
    }

    fn on_commit(&mut self, disks: u32) -> Result<(), Error> {
        let bad = |reason: String| Error::Violation { what: "commit", reason };
        if let Some(d) = self.disks.values().find(|d| d.state == DiskState::Open) {
            return Err(bad(format!("a commit while disk {} is open", d.spec.disk)));
        }
        if disks as usize != self.disks.len() {
            return Err(bad(format!("a commit of {disks} disks; {} began", self.disks.len())));
        }
        self.phase = Phase::CommitPending;
        self.maybe_commit();
        Ok(())
    }

    fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Connecting => "before the sender's hello",
            Phase::Ready => "during the transfer",
            Phase::CommitPending | Phase::Committed => "after the commit",
            Phase::Done => "after the acknowledgement",
        }
    }

    fn step(&mut self, input: &[u8]) -> Result<Progress, Error> {
        let p = self.core.link.input(input)?;
        while let Some(m) = self.core.link.next_message()? {
            self.on_message(m)?;
        }
        Ok(p)
    }

    /// Uses the preamble or one record from the front of `input`.
    ///
    /// # Errors
    /// Any [`Error`] but [`Error::Usage`]: the machine has failed.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<Progress, Error> {
        if let Some(e) = &self.core.failed {
            return Err(e.clone());
        }
        self.step(input).map_err(|e| self.core.fail(e))
    }

    /// The peer closed the connection.
    ///
    /// # Errors
    /// [`Error::ConnectionLost`] unless this end had acknowledged the commit.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        if let Some(e) = &self.core.failed {
            return Err(e.clone());
        }
        if self.phase == Phase::Done {
            return Ok(());
        }
        let phase = match self.phase {
            _ if !self.core.link.established() => {
                "during the handshake (a sender that refuses this end's job secret closes the connection there)"
            }
            Phase::Connecting => "before the sender's hello",
            Phase::CommitPending | Phase::Committed => "after the commit request, before this end acknowledged it",
            _ => "during the transfer (nothing may be committed)",
        };
        Err(self.core.fail(Error::ConnectionLost { phase }))
    }

    /// Bytes to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.core.link.transmit()
    }

    /// Whether this end acknowledged the commit.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The error the machine failed with, if it has.
    pub fn error(&self) -> Option<&Error> {
        self.core.failed.as_ref()
    }

    /// Queues raw bytes as if they were messages: for the fuzz target.
    pub(crate) fn inject_plaintext(&mut self, b: &[u8]) {
        self.core.link.queue_raw(b);
    }
}

impl Endpoint for Receiver {
    fn handle_input(&mut self, input: &[u8]) -> Result<Progress, Error> {
        Receiver::handle_input(self, input)
    }
    fn handle_eof(&mut self) -> Result<(), Error> {
        Receiver::handle_eof(self)
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        Receiver::poll_transmit(self)
    }
    fn is_done(&self) -> bool {
        Receiver::is_done(self)
    }
    fn error(&self) -> Option<&Error> {
        Receiver::error(self)
    }
}
