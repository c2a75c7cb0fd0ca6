//! The sender's state machine: next to the source VM, it offers the ids of
//! changed ranges, learns which extents the replica lacks, and sends their
//! bytes.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use crate::error::Error;
use crate::link::{Config, Core, Endpoint, Events, Progress, Stats};
use crate::wire::{self, Codec, Data, DiskEnd, DiskSpec, Extent, Limits, Message, Offer, ReplicaInfo, Role};

/// What the sender tells its engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SenderEvent {
    /// The receiver's hello arrived: disks may begin. Hash with
    /// `replica.id_key` ([`crate::extent_id`]).
    Ready {
        /// The replica's id key and last committed point.
        replica: ReplicaInfo,
        /// The limits both ends agreed.
        limits: Limits,
    },
    /// The receiver answered a batch: send the bytes of these extents
    /// ([`Sender::send_data`]).
    Need(NeedBatch),
    /// The receiver committed the point: the run succeeded.
    Acked {
        /// The new point's id, as the receiver's engine named it.
        point: Vec<u8>,
    },
}

/// The extents of one batch that the replica lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedBatch {
    /// The disk.
    pub disk: u32,
    /// The batch ([`Sender::offer`]'s number).
    pub batch: u64,
    /// How many extents the batch offered.
    pub offered: u32,
    /// Those the replica lacks, in offset order.
    pub extents: Vec<Extent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the receiver's hello.
    Connecting,
    Ready,
    /// Commit sent, waiting for the acknowledgement.
    Committing,
    Done,
}

/// Byte counts of one disk on the sending side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskStats {
    /// Bytes of the extents offered.
    pub offered_bytes: u64,
    /// Bytes of the extents the receiver said it needs.
    pub needed_bytes: u64,
    /// Raw bytes of the extents handed to data frames.
    pub data_raw_bytes: u64,
    /// The data frames' payloads as coded (compressed): what crossed for
    /// this disk, before message and record overhead.
    pub data_payload_bytes: u64,
}

#[derive(Debug)]
struct Disk {
    spec: DiskSpec,
    /// Where the next offer may start.
    next: u64,
    offered: u64,
    sent: u64,
    stats: DiskStats,
    /// Needed extents whose bytes the engine has not handed over: offset → (len, batch).
    unsent: BTreeMap<u64, (u32, u64)>,
    ended: bool,
}

#[derive(Debug)]
struct Batch {
    disk: u32,
    /// The offered extents, until the answer maps its flags onto them.
    extents: Vec<Extent>,
    /// Whether the offer has entered the stream (see [`Sender`]'s window).
    emitted: bool,
    answered: bool,
    /// Needed extents not yet handed to `send_data`.
    unsent: u32,
    /// Needed extents handed over whose frame has not entered the stream.
    unemitted: u32,
}

/// A message waiting to enter the stream, with the batches it concerns.
#[derive(Debug)]
struct Queued {
    message: Message,
    /// For an offer, its batch; for a data frame, the batch of each extent.
    batches: Vec<u64>,
    bytes: usize,
}

/// The data frame being filled.
#[derive(Debug)]
struct Frame {
    disk: u32,
    extents: Vec<(u64, u32)>,
    batches: Vec<u64>,
    raw: Vec<u8>,
}

/// A frame is closed once it holds this much (or less when its batch is complete).
const FRAME_TARGET: usize = 1 << 20;
/// Messages are moved into the stream only when it holds less than this:
/// the order of offers and data is decided as late as possible.
const STREAM_AHEAD: usize = 1 << 20;

/// The sender: offers extents, sends what the receiver needs.
///
/// Call order (quinn style, no I/O): build it with [`Sender::new`]; then
/// loop — send whatever [`Sender::poll_transmit`] returns; feed received
/// bytes to [`Sender::handle_input`] and drop the consumed prefix (on
/// [`Progress::NeedMore`]`(n)` read until the buffer holds `n` bytes); take
/// the [`SenderEvent`]s from [`Sender::poll_event`]; then do the engine's
/// work with the commands:
///
/// 1. after [`SenderEvent::Ready`], [`Sender::begin_disk`] for each disk
///    (several may be open at once);
/// 2. [`Sender::offer`] the extents of the changed ranges of each disk, in
///    order, in batches, while [`Sender::can_offer`] — without waiting for
///    answers: it turns false only when a window's worth of batches is
///    queued ahead of the window, or the send buffer is full;
/// 3. on each [`SenderEvent::Need`], hand over the bytes of each listed
///    extent with [`Sender::send_data`] while [`Sender::can_send`];
/// 4. when a disk's last batch is offered and [`Sender::pending`] is 0
///    for it, [`Sender::end_disk`] with its [`crate::DiskDigest`];
/// 5. when every disk has ended, [`Sender::commit`]; the run has succeeded
///    only at [`SenderEvent::Acked`].
///
/// **The window.** At most `window` batches are outstanding *in the
/// stream*: an offer enters the stream only while fewer batches are
/// there whose answer has not arrived or whose needed bytes have not all
/// entered the stream. The receiver counts the same way (by the time an
/// offer reaches it, so has everything the stream carried before it) and
/// refuses an offer past the window. Offers queued beyond it wait in the
/// machine, and enter the stream *ahead of* queued data as soon as a batch
/// completes, so answers keep coming while data drains.
///
/// A returned error other than [`Error::Usage`] fails the machine for good;
/// drain `poll_transmit` once more (an error message for the peer may wait
/// there), then close the connection.
pub struct Sender {
    core: Core,
    phase: Phase,
    zstd_level: Option<i32>,
    disks: BTreeMap<u32, Disk>,
    next_batch: u64,
    batches: BTreeMap<u64, Batch>,
    /// Batches whose offer is in the stream and that are not complete there
    /// (answered, and every needed extent's frame in the stream).
    in_window: usize,
    frame: Option<Frame>,
    /// Disk begins, metadata and offers, ahead of `bulk`.
    control: VecDeque<Queued>,
    /// Data frames, disk ends, the commit: in order.
    bulk: VecDeque<Queued>,
    queued_bytes: usize,
    events: Events<SenderEvent>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("phase", &self.phase)
            .field("batches", &self.batches.len())
            .field("in_window", &self.in_window)
            .field("failed", &self.core.failed)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender for `cfg`. Its first bytes (the preamble) wait in
    /// [`Sender::poll_transmit`].
    ///
    /// # Errors
    /// [`Error::Usage`] for a job id that is empty or over 255 bytes,
    /// limits out of range or a zstd level zstd does not have.
    pub fn new(cfg: Config) -> Result<Sender, Error> {
        Ok(Sender {
            core: Core::new(&cfg, Role::Sender, None)?,
            phase: Phase::Connecting,
            zstd_level: cfg.zstd_level,
            disks: BTreeMap::new(),
            next_batch: 0,
            batches: BTreeMap::new(),
            in_window: 0,
            frame: None,
            control: VecDeque::new(),
            bulk: VecDeque::new(),
            queued_bytes: 0,
            events: Events::new(),
        })
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Byte counts of disk `disk` so far (`None`: not begun).
    pub fn disk_stats(&self, disk: u32) -> Option<DiskStats> {
        self.disks.get(&disk).map(|d| d.stats)
    }

    /// Bytes waiting in the machine for the wire (queued messages and the
    /// open data frame included).
    pub fn backlog(&self) -> usize {
        self.core.link.backlog() + self.queued_bytes + self.frame.as_ref().map_or(0, |f| f.raw.len())
    }

    /// Whether a batch may be offered now: the receiver is ready, fewer than
    /// a window of batches wait to enter the stream, fewer than two windows
    /// are outstanding in all, and the send buffer has room.
    pub fn can_offer(&self) -> bool {
        let queued = self.batches.len() - self.in_window;
        self.usable()
            && self.phase == Phase::Ready
            && queued < self.window()
            && self.batches.len() < 2 * self.window()
            && self.backlog() < self.core.send_buffer
    }

    /// Whether the send buffer has room for more data.
    pub fn can_send(&self) -> bool {
        self.usable() && self.backlog() < self.core.send_buffer
    }

    /// How many batches of `disk` are outstanding: not yet answered, or
    /// answered with needed extents whose bytes have not been handed over.
    pub fn pending(&self, disk: u32) -> usize {
        self.batches.values().filter(|b| b.disk == disk && (!b.answered || b.unsent > 0)).count()
    }

    /// How many batches are outstanding, all disks together (including
    /// those whose data waits in the machine).
    pub fn outstanding(&self) -> usize {
        self.batches.len()
    }

    /// The limits both ends agreed (after [`SenderEvent::Ready`]).
    pub fn limits(&self) -> Option<Limits> {
        self.core.agreed
    }

    fn window(&self) -> usize {
        self.core.agreed.map_or(0, |l| l.window as usize)
    }

    fn usable(&self) -> bool {
        self.core.failed.is_none() && self.phase != Phase::Done
    }

    fn ready(&self, what: &str) -> Result<Limits, Error> {
        if let Some(e) = &self.core.failed {
            return Err(Error::Usage(format!("{what}: the session has failed ({e})")));
        }
        match (self.phase, self.core.agreed) {
            (Phase::Ready, Some(l)) => Ok(l),
            (Phase::Connecting, _) => Err(Error::Usage(format!("{what} before the receiver is ready"))),
            _ => Err(Error::Usage(format!("{what} after the commit"))),
        }
    }

    fn enqueue(&mut self, control: bool, message: Message, batches: Vec<u64>) {
        let bytes = match &message {
            Message::Data(d) => d.payload.len() + d.extents.len() * wire::DATA_EXTENT_LEN,
            Message::Offer(o) => o.extents.len() * wire::OFFER_EXTENT_LEN + o.ranges.len() * wire::OFFER_RANGE_LEN,
            Message::Meta { bytes, .. } => bytes.len(),
            _ => 0,
        } + 64;
        self.queued_bytes += bytes;
        let q = Queued { message, batches, bytes };
        if control { self.control.push_back(q) } else { self.bulk.push_back(q) }
    }

    /// Sends opaque metadata (for instance the VM's configuration) of a
    /// `kind` the engines agree on; allowed before the commit.
    ///
    /// # Errors
    /// [`Error::Usage`] after the commit, after a failure, or for more than
    /// [`wire::MAX_META`] bytes.
    pub fn send_meta(&mut self, kind: u32, bytes: &[u8]) -> Result<(), Error> {
        if bytes.len() > wire::MAX_META {
            return Err(Error::Usage(format!("metadata of {} bytes; at most {}", bytes.len(), wire::MAX_META)));
        }
        if self.core.failed.is_some() || !matches!(self.phase, Phase::Connecting | Phase::Ready) {
            return Err(Error::Usage("metadata after the commit or a failure".into()));
        }
        self.enqueue(true, Message::Meta { kind, bytes: bytes.to_vec() }, Vec::new());
        Ok(())
    }

    /// Begins a disk.
    ///
    /// # Errors
    /// [`Error::Usage`]: before [`SenderEvent::Ready`], a disk begun before,
    /// more than [`wire::MAX_DISKS`] disks, a geometry out of range or one
    /// whose extents exceed the agreed frame size.
    pub fn begin_disk(&mut self, spec: DiskSpec) -> Result<(), Error> {
        let limits = self.ready("begin_disk")?;
        if self.disks.contains_key(&spec.disk) {
            return Err(Error::Usage(format!("disk {} was begun before", spec.disk)));
        }
        if self.disks.len() >= wire::MAX_DISKS {
            return Err(Error::Usage(format!("more than {} disks", wire::MAX_DISKS)));
        }
        if let Some(p) = spec.geometry.problem() {
            return Err(Error::Usage(format!("disk {}: {p}", spec.disk)));
        }
        if spec.geometry.max_extent() > limits.max_frame {
            return Err(Error::Usage(format!(
                "disk {}: extents of up to {} bytes do not fit the agreed frames of {}",
                spec.disk,
                spec.geometry.max_extent(),
                limits.max_frame
            )));
        }
        self.enqueue(true, Message::DiskBegin(spec), Vec::new());
        self.disks.insert(
            spec.disk,
            Disk {
                spec,
                next: 0,
                offered: 0,
                sent: 0,
                stats: DiskStats::default(),
                unsent: BTreeMap::new(),
                ended: false,
            },
        );
        Ok(())
    }

    /// Offers, as the next batch, the extents of changed `ranges` of a disk
    /// (each range then holds exactly its extents, zeroes between them);
    /// returns the batch's number. Ranges come in order across all offers
    /// of a disk and do not overlap; a range may hold no extent (it became
    /// zero); many small ranges may share a batch.
    ///
    /// # Errors
    /// [`Error::Usage`] when [`Sender::can_offer`] is false because of the
    /// window (a full send buffer is advisory), for more extents than the
    /// agreed batch or more than [`wire::MAX_RANGES`] ranges, or a range or
    /// extent the disk's geometry does not allow. Nothing is sent then.
    pub fn offer(&mut self, disk: u32, ranges: &[Range<u64>], extents: Vec<Extent>) -> Result<u64, Error> {
        let limits = self.ready("offer")?;
        let w = limits.window as usize;
        if self.batches.len() - self.in_window >= w || self.batches.len() >= 2 * w {
            return Err(Error::Usage(format!(
                "offer with {} batches outstanding (the window is {w})",
                self.batches.len()
            )));
        }
        if extents.len() > limits.max_batch as usize || ranges.len() > wire::MAX_RANGES as usize {
            return Err(Error::Usage(format!(
                "an offer of {} extents in {} ranges; the agreed batch is {} extents, at most {} ranges",
                extents.len(),
                ranges.len(),
                limits.max_batch,
                wire::MAX_RANGES
            )));
        }
        let d = open_disk(&mut self.disks, disk)?;
        let next = match offer_problem(&d.spec, d.next, ranges, &extents) {
            Ok(next) => next,
            Err(p) => return Err(Error::Usage(format!("disk {disk}: {p}"))),
        };
        let batch = self.next_batch;
        let count = extents.len() as u64;
        let bytes = extents.iter().map(|e| u64::from(e.len)).sum::<u64>();
        d.next = next;
        d.offered += count;
        d.stats.offered_bytes += bytes;
        self.core.stats.offered_extents += count;
        self.core.stats.offered_bytes += bytes;
        self.next_batch += 1;
        let kept = extents.clone();
        self.batches
            .insert(batch, Batch { disk, extents: kept, emitted: false, answered: false, unsent: 0, unemitted: 0 });
        let offer = Offer { disk, batch, ranges: ranges.to_vec(), extents };
        self.enqueue(true, Message::Offer(offer), vec![batch]);
        Ok(batch)
    }

    /// Ends a disk: every batch of it answered and all the bytes it needed
    /// handed over. `digest` is the whole disk's ([`crate::DiskDigest`]).
    ///
    /// # Errors
    /// [`Error::Usage`] for a disk not open, or one with outstanding batches
    /// ([`Sender::pending`]).
    pub fn end_disk(&mut self, disk: u32, digest: [u8; 32]) -> Result<(), Error> {
        self.ready("end_disk")?;
        let pending = self.pending(disk);
        let d = open_disk(&mut self.disks, disk)?;
        if pending > 0 {
            return Err(Error::Usage(format!(
                "end_disk of disk {disk} with {pending} batches outstanding: wait for their needs and send their data"
            )));
        }
        d.ended = true;
        let end = DiskEnd { disk, offered: d.offered, sent: d.sent, digest };
        if self.frame.as_ref().is_some_and(|f| f.disk == disk) {
            self.flush();
        }
        self.enqueue(false, Message::DiskEnd(end), Vec::new());
        Ok(())
    }

    /// Asks the receiver to commit the point: every disk begun has ended.
    ///
    /// # Errors
    /// [`Error::Usage`] while a disk is open.
    pub fn commit(&mut self) -> Result<(), Error> {
        self.ready("commit")?;
        if let Some(d) = self.disks.values().find(|d| !d.ended) {
            return Err(Error::Usage(format!("commit while disk {} is open", d.spec.disk)));
        }
        self.flush();
        self.enqueue(false, Message::Commit { disks: self.disks.len() as u32 }, Vec::new());
        self.phase = Phase::Committing;
        Ok(())
    }

    /// Gives up: tells the receiver (`code` is one of `wire::ERR_*`,
    /// typically [`wire::ERR_CANCELLED`] or [`wire::ERR_ENGINE`]) and fails
    /// the machine with [`Error::Aborted`]. Drain `poll_transmit`, then close.
    pub fn abort(&mut self, code: u16, message: &str) {
        if self.phase != Phase::Done {
            self.core.fail(Error::Aborted { code, message: message.to_owned() });
        }
    }

    /// Hands over the bytes of a needed extent (one listed by a
    /// [`SenderEvent::Need`]), once. They travel in a zstd data frame with
    /// the next needed extents of the disk; a frame closes when it holds
    /// about 1 MiB or completes a batch.
    ///
    /// # Errors
    /// [`Error::Usage`] for an extent that is not needed (or was sent), or
    /// bytes of the wrong length; nothing changes then.
    pub fn send_data(&mut self, disk: u32, offset: u64, bytes: &[u8]) -> Result<(), Error> {
        let limits = self.ready("send_data")?;
        let d = open_disk(&mut self.disks, disk)?;
        let Some(&(len, batch)) = d.unsent.get(&offset) else {
            return Err(Error::Usage(format!("disk {disk}: no needed extent at {offset} waits for its bytes")));
        };
        if bytes.len() != len as usize {
            return Err(Error::Usage(format!(
                "disk {disk}: {} bytes for the extent at {offset} of {len} bytes",
                bytes.len()
            )));
        }
        d.unsent.remove(&offset);
        d.sent += 1;
        let full = self.frame.as_ref().is_some_and(|f| {
            f.disk != disk
                || f.raw.len() + bytes.len() > limits.max_frame as usize
                || f.extents.len() >= wire::MAX_FRAME_EXTENTS as usize
        });
        if full {
            self.flush();
        }
        let f =
            self.frame.get_or_insert_with(|| Frame { disk, extents: Vec::new(), batches: Vec::new(), raw: Vec::new() });
        f.extents.push((offset, len));
        f.raw.extend_from_slice(bytes);
        f.batches.push(batch);
        let target = f.raw.len() >= FRAME_TARGET;
        let mut complete = false;
        if let Some(b) = self.batches.get_mut(&batch) {
            b.unsent -= 1;
            b.unemitted += 1;
            complete = b.unsent == 0;
        }
        if target || complete {
            self.flush();
        }
        Ok(())
    }

    /// Closes the open frame: codes it and queues it.
    fn flush(&mut self) {
        let Some(f) = self.frame.take() else { return };
        let (codec, payload) = match self.zstd_level.and_then(|l| zstd::bulk::compress(&f.raw, l).ok()) {
            Some(z) if z.len() < f.raw.len() => (Codec::Zstd, z),
            _ => (Codec::None, f.raw),
        };
        let raw_len = f.extents.iter().map(|&(_, l)| u64::from(l)).sum::<u64>();
        self.core.stats.data_frames += 1;
        self.core.stats.data_raw_bytes += raw_len;
        self.core.stats.data_payload_bytes += payload.len() as u64;
        if let Some(d) = self.disks.get_mut(&f.disk) {
            d.stats.data_raw_bytes += raw_len;
            d.stats.data_payload_bytes += payload.len() as u64;
        }
        self.enqueue(false, Message::Data(Data { disk: f.disk, codec, extents: f.extents, payload }), f.batches);
    }

    /// Moves queued messages into the stream, offers first while the window
    /// allows, until about [`STREAM_AHEAD`] bytes wait there.
    fn emit(&mut self) {
        if self.core.failed.is_some() {
            return;
        }
        while self.core.link.backlog() < STREAM_AHEAD {
            let window = self.window();
            let control_ok = match self.control.front() {
                Some(Queued { message: Message::Offer(_), .. }) => self.in_window < window,
                Some(_) => true,
                None => false,
            };
            let q = if control_ok { self.control.pop_front() } else { self.bulk.pop_front() };
            let Some(q) = q else { break };
            self.queued_bytes -= q.bytes;
            self.core.link.queue(&q.message);
            match q.message {
                Message::Offer(_) => {
                    for b in &q.batches {
                        if let Some(b) = self.batches.get_mut(b) {
                            b.emitted = true;
                        }
                    }
                    self.in_window += 1;
                }
                Message::Data(_) => {
                    for batch in q.batches {
                        if let Some(b) = self.batches.get_mut(&batch) {
                            b.unemitted -= 1;
                        }
                        self.settle(batch);
                    }
                }
                _ => {}
            }
        }
    }

    /// Drops a batch that is complete in the stream: answered, every needed
    /// extent handed over and in the stream.
    fn settle(&mut self, batch: u64) {
        if self.batches.get(&batch).is_some_and(|b| b.emitted && b.answered && b.unsent == 0 && b.unemitted == 0) {
            self.batches.remove(&batch);
            self.in_window -= 1;
        }
    }

    fn on_message(&mut self, m: Message) -> Result<(), Error> {
        let bad = |what, reason: String| Error::Violation { what, reason };
        match (self.phase, m) {
            (_, Message::Error { code, message }) => Err(Error::Peer { code, message }),
            (Phase::Connecting, Message::Hello(h)) => {
                let limits = self.core.on_hello(&h)?;
                let Some(replica) = h.replica else {
                    return Err(bad("hello", "the receiver's hello has no replica".into()));
                };
                self.phase = Phase::Ready;
                self.events.push_back(SenderEvent::Ready { replica, limits });
                Ok(())
            }
            (Phase::Connecting, m) => Err(bad(wire::message_name(m.kind()), "before the receiver's hello".into())),
            (Phase::Ready | Phase::Committing, Message::Need(n)) => self.on_need(n),
            (Phase::Committing, Message::Ack { point }) => {
                self.phase = Phase::Done;
                self.events.push_back(SenderEvent::Acked { point });
                Ok(())
            }
            (_, m) => Err(bad(
                wire::message_name(m.kind()),
                format!("a sender does not take this message {}", self.phase_name()),
            )),
        }
    }

    fn on_need(&mut self, n: wire::Need) -> Result<(), Error> {
        let bad = |reason: String| Error::Violation { what: "need", reason };
        let Some(b) = self.batches.get_mut(&n.batch).filter(|b| b.emitted && !b.answered) else {
            return Err(bad(format!("an answer to batch {}, which is not awaiting one", n.batch)));
        };
        if n.needed.len() != b.extents.len() {
            return Err(bad(format!("{} flags for batch {} of {} extents", n.needed.len(), n.batch, b.extents.len())));
        }
        let offered = b.extents.len() as u32;
        let extents: Vec<Extent> = std::mem::take(&mut b.extents)
            .into_iter()
            .zip(&n.needed)
            .filter(|(_, need)| **need)
            .map(|(e, _)| e)
            .collect();
        b.answered = true;
        b.unsent = extents.len() as u32;
        let disk = b.disk;
        self.settle(n.batch);
        if let Some(d) = self.disks.get_mut(&disk) {
            for e in &extents {
                d.stats.needed_bytes += u64::from(e.len);
                d.unsent.insert(e.offset, (e.len, n.batch));
                self.core.stats.needed_extents += 1;
                self.core.stats.needed_bytes += u64::from(e.len);
            }
        }
        self.events.push_back(SenderEvent::Need(NeedBatch { disk, batch: n.batch, offered, extents }));
        Ok(())
    }

    fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Connecting => "before the receiver's hello",
            Phase::Ready => "during the transfer",
            Phase::Committing => "after the commit",
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
    /// [`Error::ConnectionLost`] unless the receiver had acknowledged the commit.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        if let Some(e) = &self.core.failed {
            return Err(e.clone());
        }
        if self.phase == Phase::Done {
            return Ok(());
        }
        let phase = match self.phase {
            _ if !self.core.link.established() => {
                "during the handshake (a receiver that refuses this end's job secret closes the connection there)"
            }
            Phase::Connecting => "before the receiver's hello",
            Phase::Committing => "before the receiver acknowledged the commit (the replica may or may not have it)",
            _ => "during the transfer (nothing was committed)",
        };
        Err(self.core.fail(Error::ConnectionLost { phase }))
    }

    /// Bytes to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.emit();
        self.core.link.transmit()
    }

    /// Whether the receiver acknowledged the commit.
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

fn open_disk(disks: &mut BTreeMap<u32, Disk>, disk: u32) -> Result<&mut Disk, Error> {
    match disks.get_mut(&disk) {
        Some(d) if !d.ended => Ok(d),
        Some(_) => Err(Error::Usage(format!("disk {disk} has ended"))),
        None => Err(Error::Usage(format!("disk {disk} was not begun"))),
    }
}

/// Checks an offer of `ranges` holding `extents` on a disk whose next
/// range may start at `next`: the end of its last range, or what is wrong.
/// Both ends check it.
pub(crate) fn offer_problem(
    spec: &DiskSpec,
    next: u64,
    ranges: &[Range<u64>],
    extents: &[Extent],
) -> Result<u64, String> {
    let grain = u64::from(spec.geometry.grain());
    if ranges.is_empty() {
        return Err("an offer of no range".into());
    }
    let mut at = next;
    for r in ranges {
        if r.start >= r.end || r.end > spec.size {
            return Err(format!("range {}..{} is empty or past the disk's end ({})", r.start, r.end, spec.size));
        }
        if r.start < at {
            return Err(format!("range {}..{} starts before the end of the previous range ({at})", r.start, r.end));
        }
        if r.start % grain != 0 || (r.end % grain != 0 && r.end != spec.size) {
            return Err(format!("range {}..{} is not on the {grain}-byte grid", r.start, r.end));
        }
        at = r.end;
    }
    let mut ri = 0;
    let mut at = 0;
    for e in extents {
        while ri < ranges.len() && ranges[ri].end <= e.offset {
            ri += 1;
        }
        if let Some(p) = spec.geometry.extent_problem(spec.size, e.offset, e.len) {
            return Err(p);
        }
        let inside = ranges.get(ri).is_some_and(|r| r.start <= e.offset && e.end() <= r.end);
        if e.offset < at || !inside {
            return Err(format!(
                "extent at {} of {} bytes is out of order, overlaps the previous one or lies outside the offered ranges",
                e.offset, e.len
            ));
        }
        at = e.end();
    }
    Ok(ranges[ranges.len() - 1].end)
}

impl Endpoint for Sender {
    fn handle_input(&mut self, input: &[u8]) -> Result<Progress, Error> {
        Sender::handle_input(self, input)
    }
    fn handle_eof(&mut self) -> Result<(), Error> {
        Sender::handle_eof(self)
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        Sender::poll_transmit(self)
    }
    fn is_done(&self) -> bool {
        Sender::is_done(self)
    }
    fn error(&self) -> Option<&Error> {
        Sender::error(self)
    }
}
