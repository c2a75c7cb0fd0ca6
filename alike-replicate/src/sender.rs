//! The sending end: reads the source disks, cuts and hashes them with the
//! replica's key, offers the chunks, and sends those the replica lacks.
//!
//! A reader thread does the reading, cutting and hashing (disk after disk,
//! in batches of about 16 MiB) and hands the engine each batch with its
//! bytes; the engine (the protocol's step function, on the caller's
//! thread) offers the batch at once and keeps its bytes until the
//! receiver's answer says which to send — so each byte is read once, and
//! memory holds at most [`SenderOptions::held_budget`] of answered-but-unsent
//! and offered-but-unanswered bytes (plus the reader's queue of a few
//! batches), whatever the disk size.
//!
//! **What is read.** With a state file whose last point is the one the
//! receiver names in its hello, each disk whose source answers
//! `changed_ranges` since the recorded token is read only there: each
//! changed range grown to the chunks of the recorded map that it touches,
//! cut afresh, and offered; the rest of the map is carried. Otherwise the
//! whole disk is read (what its source reports allocated), and still only
//! what the replica lacks is sent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use alike_core::{Chunking, DiskSource, Extent, HookedSource, Keys, Phase, ProgressSink, RunOptions};
use alike_repl::net::Flow;
use alike_repl::{DiskSpec, Limits, ReplicaInfo, Sender, SenderEvent};
use serde::Serialize;

use crate::error::{ReplicateError, Result};
use crate::meta::{META_RUN, META_SUMMARY, PointName, RunMeta, SenderSummary, digest, geometry, wire_extent};
use crate::progress::{Counters, DiskProgress, ReplicationProgress, ReplicationProgressFn};
use crate::state::{SenderState, StateDisk};

/// Default of [`SenderOptions::held_budget`]: 64 MiB.
pub const DEFAULT_HELD_BUDGET: usize = 64 << 20;

/// How the sending end runs.
#[derive(Clone)]
#[non_exhaustive]
pub struct SenderOptions {
    /// The source VM's name (the receiver checks it against its replica).
    pub vm: String,
    /// How to cut the disks: the replica's chunking (default: a store's,
    /// content-defined 16/32/64 KiB).
    pub chunking: Chunking,
    /// Where the sender keeps its state between runs (see the module docs);
    /// `None`: every run reads every disk.
    pub state_file: Option<PathBuf>,
    /// Progress (phase `Backup`: bytes read of all disks) and cancellation.
    pub run: RunOptions,
    /// Per-disk progress.
    pub progress: Option<ReplicationProgressFn>,
    /// Bytes of chunks held for answers and for the wire before the
    /// reader is made to wait.
    pub held_budget: usize,
}

impl std::fmt::Debug for SenderOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderOptions")
            .field("vm", &self.vm)
            .field("chunking", &self.chunking)
            .field("state_file", &self.state_file)
            .field("held_budget", &self.held_budget)
            .finish_non_exhaustive()
    }
}

impl SenderOptions {
    /// Options for VM `vm`, with the defaults.
    pub fn new(vm: impl Into<String>) -> SenderOptions {
        SenderOptions {
            vm: vm.into(),
            chunking: Chunking::default(),
            state_file: None,
            run: RunOptions::default(),
            progress: None,
            held_budget: DEFAULT_HELD_BUDGET,
        }
    }
}

/// What the sending end did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SenderReport {
    /// The point the receiver committed.
    pub point: u64,
    /// Bytes read from the sources.
    pub read_bytes: u64,
    /// Bytes of chunks hashed.
    pub hashed_bytes: u64,
    /// Bytes of chunks offered.
    pub offered_bytes: u64,
    /// Offered bytes the replica lacked.
    pub needed_bytes: u64,
    /// Bytes this end put on the wire, all of it (handshake, framing,
    /// offers, compressed data): what crossed the link towards the receiver.
    pub sent_bytes: u64,
    /// Bytes it took from the wire (the receiver's answers).
    pub received_bytes: u64,
    /// Per disk.
    pub disks: Vec<DiskProgress>,
    /// Whether the state for the next run was saved.
    pub state_saved: bool,
    /// Wall time.
    pub elapsed_seconds: f64,
}

/// What the reader thread hands the engine.
enum Produced {
    /// Ranges of a disk to offer and the chunks in them, with their bytes
    /// (the rest of the span they came from is what the replica holds).
    Batch {
        disk: usize,
        ranges: Vec<Range<u64>>,
        chunks: Vec<(Extent, Vec<u8>)>,
    },
    /// A disk is read: its whole map of chunks.
    DiskDone {
        disk: usize,
        map: Vec<Extent>,
    },
    Failed(ReplicateError),
}

/// What the reader reads of one disk.
#[derive(Debug, Clone)]
struct Plan {
    spans: Vec<Range<u64>>,
    /// The recorded map, when only changes are read.
    old: Option<Vec<Extent>>,
    /// The map the replica holds (the recorded one, when the receiver names
    /// the state's point): chunks found in it unchanged are not offered.
    known: Option<Arc<Vec<Extent>>>,
    token: Option<Vec<u8>>,
    total: u64,
}

/// Wakes whoever drives the engine (a connection's waker).
pub(crate) type Wake = Arc<dyn Fn() + Send + Sync>;

/// What the engine tells the reader once the receiver's key is known.
struct Start {
    keys: Keys,
    plans: Vec<Plan>,
    /// Called after each item handed over, so that a driver waiting on its
    /// socket runs the step again at once (offers go out as soon as read).
    wake: Option<Wake>,
}

/// An offer waiting for the window.
struct QueuedOffer {
    disk: usize,
    ranges: Vec<Range<u64>>,
    extents: Vec<alike_repl::Extent>,
    bytes: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
struct DiskRun {
    size: u64,
    digest: Option<[u8; 32]>,
    map: Vec<Extent>,
    ended: bool,
    changed_only: bool,
    total: u64,
    /// The source's change token, taken before it was read.
    token: Option<Vec<u8>>,
}

/// The sending end's engine: the step function a protocol shell calls.
pub(crate) struct SenderEngine<'a> {
    disks: &'a [&'a dyn DiskSource],
    opts: &'a SenderOptions,
    started: Instant,
    start: Option<mpsc::SyncSender<Start>>,
    rx: mpsc::Receiver<Produced>,
    stash: Option<Produced>,
    producer_done: bool,
    keys: Option<Keys>,
    limits: Option<Limits>,
    queued: VecDeque<QueuedOffer>,
    queued_bytes: usize,
    /// Offered batches awaiting their answer: batch → (disk, offset → bytes).
    held: HashMap<u64, (usize, BTreeMap<u64, Vec<u8>>)>,
    held_bytes: usize,
    to_send: VecDeque<(usize, u64, Vec<u8>)>,
    send_bytes: usize,
    runs: Vec<DiskRun>,
    committed: bool,
    counters: Arc<Counters>,
    last_progress: Instant,
    wake: Option<Wake>,
}

/// Runs `f` with a sending engine over `disks`, its reader thread alive
/// for as long as `f` runs.
pub(crate) fn with_sender<R>(
    disks: &[&dyn DiskSource],
    opts: &SenderOptions,
    f: impl FnOnce(&mut SenderEngine<'_>) -> Result<R>,
) -> Result<R> {
    if disks.is_empty() || disks.len() > alike_repl::wire::MAX_DISKS {
        return Err(ReplicateError::InvalidArgument(format!(
            "{} disks: 1 to {}",
            disks.len(),
            alike_repl::wire::MAX_DISKS
        )));
    }
    let counters = Counters::new(disks.len());
    std::thread::scope(|sc| {
        let (start_tx, start_rx) = mpsc::sync_channel::<Start>(1);
        let (tx, rx) = mpsc::sync_channel::<Produced>(3);
        let c = counters.clone();
        let chunking = opts.chunking;
        let run = opts.run.clone();
        alike_core::spawn_scoped(sc, "alike-repl-read", move || {
            if let Ok(start) = start_rx.recv() {
                produce(disks, &start, &chunking, &run, &c, &tx);
            }
        })
        .map_err(|e| ReplicateError::Thread(e.to_string()))?;
        let mut eng = SenderEngine {
            disks,
            opts,
            started: Instant::now(),
            start: Some(start_tx),
            rx,
            stash: None,
            producer_done: false,
            keys: None,
            limits: None,
            queued: VecDeque::new(),
            queued_bytes: 0,
            held: HashMap::new(),
            held_bytes: 0,
            to_send: VecDeque::new(),
            send_bytes: 0,
            runs: disks.iter().map(|d| DiskRun { size: d.size(), ..DiskRun::default() }).collect(),
            committed: false,
            counters,
            last_progress: Instant::now(),
            wake: None,
        };
        // Dropping the engine closes both channels: the reader stops at its next batch.
        f(&mut eng)
    })
}

/// The reader thread's work: every disk in order, as planned.
fn produce(
    disks: &[&dyn DiskSource],
    start: &Start,
    chunking: &Chunking,
    run: &RunOptions,
    counters: &Counters,
    tx: &mpsc::SyncSender<Produced>,
) {
    let tx = &Out { tx, wake: start.wake.clone() };
    let total = start.plans.iter().map(|p| p.total).sum();
    let sink = ProgressSink::new(run.progress.clone(), Phase::Backup, total);
    let cancel = &run.cancel;
    for (d, src) in disks.iter().enumerate() {
        let plan = &start.plans[d];
        let hooked = HookedSource::new(*src, |n| {
            counters.read[d].fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            sink.add(n);
            cancel.check()
        });
        let mut fresh = Vec::new();
        let mut cut = Vec::new();
        let r = match (&plan.old, chunking) {
            (Some(old), Chunking::Cdc(_)) => {
                let known = plan.known.as_deref().map(Vec::as_slice);
                recut(&hooked, d, &plan.spans, old, known, chunking, start, cancel, counters, tx, &mut fresh, &mut cut)
            }
            _ => {
                cut.clone_from(&plan.spans);
                plan.spans.iter().try_for_each(|span| {
                    alike_replica::cut_range(&hooked, span.clone(), chunking, &start.keys, cancel, &mut |sp, chunks| {
                        hand(d, sp, chunks, plan.known.as_deref().map(Vec::as_slice), counters, tx, &mut fresh)
                    })
                    .map(|_| ())
                })
            }
        };
        if let Err(e) = r {
            let _ = tx.send(Produced::Failed(e.into()));
            return;
        }
        let map = match &plan.old {
            None => fresh,
            Some(old) => carry(old, &cut, fresh),
        };
        if tx.send(Produced::DiskDone { disk: d, map }).is_err() {
            return;
        }
    }
    sink.finish();
}

/// The reader's side of the channel: each item handed over wakes the driver.
struct Out<'a> {
    tx: &'a mpsc::SyncSender<Produced>,
    wake: Option<Wake>,
}

impl Out<'_> {
    fn send(&self, p: Produced) -> Result<(), mpsc::SendError<Produced>> {
        self.tx.send(p)?;
        if let Some(w) = &self.wake {
            w();
        }
        Ok(())
    }
}

/// Hands the engine a span and its chunks (and counts them). With the map
/// the replica holds (`known`), only what differs from it is offered: the
/// chunks it does not hold at the same place, and every chunk of it that
/// the span no longer holds (to be zeroed or overwritten); the rest of the
/// span is left out of the ranges, so the replica keeps it as it is.
fn hand(
    d: usize,
    span: Range<u64>,
    chunks: &[(Extent, &[u8])],
    known: Option<&[Extent]>,
    counters: &Counters,
    tx: &Out<'_>,
    fresh: &mut Vec<Extent>,
) -> alike_replica::Result<()> {
    let bytes: u64 = chunks.iter().map(|c| c.0.len).sum();
    counters.hashed[d].fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    fresh.extend(chunks.iter().map(|c| c.0));
    let (ranges, owned) = match known {
        None => (vec![span], chunks.iter().map(|(e, b)| (*e, b.to_vec())).collect()),
        Some(old) => differing(&span, chunks, old),
    };
    if ranges.is_empty() {
        return Ok(()); // the replica holds the span as it is
    }
    // The engine is gone (it failed or finished): stop reading.
    tx.send(Produced::Batch { disk: d, ranges, chunks: owned })
        .map_err(|_| alike_replica::ReplicaError::Core(alike_core::Error::Cancelled))
}

/// Chunks with their bytes.
type Owned = Vec<(Extent, Vec<u8>)>;

/// What of `span` differs from the map `old` the replica holds: the ranges
/// to offer (sorted, merged, on chunk boundaries of both maps) and the
/// chunks in them.
fn differing(span: &Range<u64>, chunks: &[(Extent, &[u8])], old: &[Extent]) -> (Vec<Range<u64>>, Owned) {
    let held = |e: &Extent| {
        old.binary_search_by_key(&e.offset, |x| x.offset).is_ok_and(|i| old[i].len == e.len && old[i].id == e.id)
    };
    let mut iv: Vec<Range<u64>> = Vec::new();
    let mut owned = Vec::new();
    for (e, b) in chunks {
        if !held(e) {
            iv.push(e.offset..e.end());
            owned.push((*e, b.to_vec()));
        }
    }
    // Chunks of the old map in the span that the new cut does not hold as they are.
    let first = old.partition_point(|x| x.end() <= span.start);
    for o in old[first..].iter().take_while(|x| x.offset < span.end) {
        let same = chunks
            .binary_search_by_key(&o.offset, |c| c.0.offset)
            .is_ok_and(|i| chunks[i].0.len == o.len && chunks[i].0.id == o.id);
        if !same {
            iv.push(o.offset.max(span.start)..o.end().min(span.end));
        }
    }
    iv.sort_by_key(|r| r.start);
    let mut ranges: Vec<Range<u64>> = Vec::with_capacity(iv.len());
    for r in iv {
        match ranges.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => ranges.push(r),
        }
    }
    (ranges, owned)
}

/// Re-cuts the changed `spans` of a disk cut with content-defined chunks:
/// from the start of each (a recorded boundary) on, past its end, until a
/// new cut falls where the recorded map has one — from there on the cuts
/// are the recorded ones again (a cut decision depends only on the blocks
/// since the last cut), so the map stays exactly what cutting the whole
/// disk afresh gives. Spans met on the way are cut in the same pass. The
/// ranges actually re-cut are pushed to `cut`.
#[allow(clippy::too_many_arguments)]
fn recut(
    src: &dyn DiskSource,
    d: usize,
    spans: &[Range<u64>],
    old: &[Extent],
    known: Option<&[Extent]>,
    chunking: &Chunking,
    start: &Start,
    cancel: &alike_core::CancelToken,
    counters: &Counters,
    tx: &Out<'_>,
    fresh: &mut Vec<Extent>,
    cut: &mut Vec<Range<u64>>,
) -> alike_replica::Result<()> {
    // Whether `b` is a boundary of the recorded map (inside no recorded chunk).
    let boundary = |b: u64| {
        let i = old.partition_point(|x| x.end() <= b);
        old.get(i).is_none_or(|x| x.offset >= b)
    };
    let size = src.size();
    let mut i = 0;
    while i < spans.len() {
        let from = spans[i].start;
        let mut until = spans[i].end;
        i += 1;
        let mut stopped = None;
        // Small batches: the cut usually meets the recorded one a chunk or two past the change.
        let batch = 256 << 10;
        let r = alike_replica::cut_range_batched(
            src,
            from..size,
            chunking,
            &start.keys,
            cancel,
            batch,
            &mut |sp, chunks| {
                // The first chunk end (or the span's end) at or past every change
                // met so far that the recorded map shares.
                let mut take = chunks.len();
                let mut end = sp.end;
                let ends = chunks.iter().map(|c| c.0.end()).chain(std::iter::once(sp.end));
                for (k, b) in ends.enumerate() {
                    while i < spans.len() && spans[i].start < b {
                        until = until.max(spans[i].end);
                        i += 1;
                    }
                    if b >= until && boundary(b) {
                        take = k.min(chunks.len());
                        if k < chunks.len() {
                            take += 1;
                        }
                        end = b;
                        stopped = Some(b);
                        break;
                    }
                }
                hand(d, sp.start..end, &chunks[..take], known, counters, tx, fresh)?;
                if stopped.is_some() {
                    // Stop cutting: not a failure.
                    return Err(alike_replica::ReplicaError::Core(alike_core::Error::Cancelled));
                }
                Ok(())
            },
        );
        match (r, stopped) {
            (Ok(_), _) => {
                cut.push(from..size);
                return Ok(());
            }
            (Err(_), Some(end)) => cut.push(from..end),
            (Err(e), None) => return Err(e),
        }
    }
    Ok(())
}

/// The recorded map `old` outside `spans`, with `fresh` (the chunks cut
/// inside them), in order.
fn carry(old: &[Extent], spans: &[Range<u64>], fresh: Vec<Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(old.len() + fresh.len());
    let mut si = 0;
    for e in old {
        while si < spans.len() && spans[si].end <= e.offset {
            si += 1;
        }
        let inside = spans.get(si).is_some_and(|s| s.start < e.end() && e.offset < s.end);
        if !inside {
            out.push(*e);
        }
    }
    out.extend(fresh);
    out.sort_by_key(|e| e.offset);
    out
}

/// The spans to re-cut for `changed` ranges of a disk whose recorded map
/// is `old`: each range out to the grid, then out to the recorded chunks
/// it touches, merged (content-defined cuts then go on past a span's end
/// until they meet the recorded ones: [`recut`]). `changed` need not be
/// sorted: a source may list its changes as they came.
fn grow(changed: &[Range<u64>], old: &[Extent], grid: u64, size: u64) -> Vec<Range<u64>> {
    let mut grown: Vec<Range<u64>> = Vec::with_capacity(changed.len());
    for r in changed {
        if r.start >= r.end || r.start >= size {
            continue;
        }
        let mut s = r.start / grid * grid;
        let mut e = r.end.min(size).div_ceil(grid).saturating_mul(grid).min(size);
        // The recorded chunk holding s, and the one holding e - 1.
        let i = old.partition_point(|x| x.end() <= s);
        if let Some(x) = old.get(i).filter(|x| x.offset <= s) {
            s = x.offset;
        }
        let j = old.partition_point(|x| x.end() < e);
        if let Some(x) = old.get(j).filter(|x| x.offset < e) {
            e = e.max(x.end());
        }
        grown.push(s..e);
    }
    grown.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(grown.len());
    for r in grown {
        match out.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Bytes of `allocated` inside `spans`.
fn overlap(allocated: &[Range<u64>], spans: &[Range<u64>]) -> u64 {
    let mut n = 0;
    for s in spans {
        for a in allocated {
            let (lo, hi) = (a.start.max(s.start), a.end.min(s.end));
            if lo < hi {
                n += hi - lo;
            }
        }
    }
    n
}

fn grid(c: &Chunking) -> u64 {
    match c {
        Chunking::Fixed { block_size } => u64::from(*block_size),
        _ => u64::from(alike_core::CDC_BLOCK),
    }
}

impl SenderEngine<'_> {
    /// The protocol step: takes the machine's events, reads and offers,
    /// sends what was asked for, ends disks, commits.
    pub(crate) fn step(&mut self, s: &mut Sender) -> Result<Flow<SenderReport>> {
        // Once the commit has left this end, the outcome is the receiver's:
        // a cancel then would only leave "the replica may or may not have
        // it". Until then (it may wait in the machine behind the data) a
        // cancel aborts, and nothing is committed.
        let cancellable = !self.committed || s.backlog() > 0;
        let cancelled = if cancellable { self.opts.run.cancel.check() } else { Ok(()) };
        let r = cancelled.map_err(ReplicateError::from).and_then(|()| self.step_inner(s));
        if let Err(e) = &r {
            if s.error().is_none() {
                s.abort(e.wire_code(), &e.to_string());
            }
            self.progress(s, true);
        }
        r
    }

    /// Has the reader wake the driver after each batch it hands over (call
    /// before driving).
    pub(crate) fn set_wake(&mut self, wake: Wake) {
        self.wake = Some(wake);
    }

    /// Waits up to `d` for the reader (when the caller has nothing else to
    /// wait on: one process playing both ends).
    pub(crate) fn wait_reader(&mut self, d: Duration) {
        if self.stash.is_none() && !self.producer_done && self.keys.is_some() {
            match self.rx.recv_timeout(d) {
                Ok(p) => self.stash = Some(p),
                Err(mpsc::RecvTimeoutError::Disconnected) => self.producer_done = true,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn step_inner(&mut self, s: &mut Sender) -> Result<Flow<SenderReport>> {
        let mut progressed = false;
        while let Some(ev) = s.poll_event() {
            progressed = true;
            match ev {
                SenderEvent::Ready { replica, limits } => self.on_ready(s, &replica, limits)?,
                SenderEvent::Need(n) => {
                    let Some((disk, mut bytes)) = self.held.remove(&n.batch) else {
                        return Err(ReplicateError::Mismatch(format!("an answer to batch {}, never offered", n.batch)));
                    };
                    self.held_bytes -= bytes.values().map(Vec::len).sum::<usize>();
                    for e in &n.extents {
                        let b = bytes.remove(&e.offset).ok_or_else(|| {
                            ReplicateError::Mismatch(format!(
                                "disk {disk}: batch {} needs an extent at {}",
                                n.batch, e.offset
                            ))
                        })?;
                        self.send_bytes += b.len();
                        self.to_send.push_back((disk, e.offset, b));
                    }
                }
                SenderEvent::Acked { point } => {
                    let report = self.finish(s, &point);
                    return Ok(Flow::Done(report));
                }
                _ => {}
            }
        }
        let Some(limits) = self.limits else { return Ok(Flow::Wait) };
        while s.can_send() {
            let Some((disk, offset, b)) = self.to_send.pop_front() else { break };
            self.send_bytes -= b.len();
            s.send_data(disk as u32, offset, &b)?;
            progressed = true;
        }
        loop {
            while s.can_offer() {
                let Some(o) = self.queued.pop_front() else { break };
                self.queued_bytes -= o.bytes.iter().map(Vec::len).sum::<usize>();
                let offsets: Vec<u64> = o.extents.iter().map(|e| e.offset).collect();
                let n: usize = o.bytes.iter().map(Vec::len).sum();
                let batch = s.offer(o.disk as u32, &o.ranges, o.extents)?;
                self.held_bytes += n;
                self.held.insert(batch, (o.disk, offsets.into_iter().zip(o.bytes).collect()));
                progressed = true;
            }
            if !self.queued.is_empty() || !s.can_offer() || self.producer_done {
                break;
            }
            if self.held_bytes + self.send_bytes + self.queued_bytes >= self.opts.held_budget {
                break;
            }
            let idle = s.outstanding() == 0 && self.to_send.is_empty() && s.backlog() == 0;
            let item = match self.stash.take() {
                Some(p) => Some(p),
                // Nothing else can happen until the reader delivers: wait for it.
                None if idle => match self.rx.recv() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        self.producer_done = true;
                        None
                    }
                },
                None => match self.rx.try_recv() {
                    Ok(p) => Some(p),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.producer_done = true;
                        None
                    }
                },
            };
            let Some(item) = item else { break };
            progressed = true;
            match item {
                Produced::Batch { disk, ranges, chunks } => self.queue(disk, ranges, chunks, limits)?,
                Produced::DiskDone { disk, map } => {
                    let run = &mut self.runs[disk];
                    run.digest = Some(digest(run.size, &map)?);
                    run.map = map;
                }
                Produced::Failed(e) => return Err(e),
            }
        }
        for d in 0..self.runs.len() {
            let run = &self.runs[d];
            let ready = !run.ended
                && run.digest.is_some()
                && s.pending(d as u32) == 0
                && !self.queued.iter().any(|o| o.disk == d)
                && !self.to_send.iter().any(|x| x.0 == d);
            if ready {
                s.end_disk(d as u32, run.digest.unwrap_or_default())?;
                self.runs[d].ended = true;
                progressed = true;
            }
        }
        if !self.committed && self.runs.iter().all(|r| r.ended) {
            let summary = SenderSummary {
                read_bytes: (0..self.runs.len()).map(|d| self.counters.read(d)).sum(),
                hashed_bytes: (0..self.runs.len()).map(|d| self.counters.hashed(d)).sum(),
                disk_read_bytes: (0..self.runs.len()).map(|d| self.counters.read(d)).collect(),
                changed_only: self.runs.iter().map(|r| r.changed_only).collect(),
            };
            let json = serde_json::to_vec(&summary).map_err(|e| ReplicateError::InvalidArgument(e.to_string()))?;
            s.send_meta(META_SUMMARY, &json)?;
            s.commit()?;
            self.committed = true;
            progressed = true;
        }
        self.progress(s, false);
        Ok(if progressed { Flow::Continue } else { Flow::Wait })
    }

    /// Splits a batch of the reader into offers of at most the agreed batch
    /// size and [`alike_repl::wire::MAX_RANGES`] ranges (a range with more
    /// chunks than a batch holds is split at a chunk's end).
    fn queue(
        &mut self,
        disk: usize,
        ranges: Vec<Range<u64>>,
        chunks: Vec<(Extent, Vec<u8>)>,
        limits: Limits,
    ) -> Result<()> {
        let max = limits.max_batch.max(1) as usize;
        let max_ranges = alike_repl::wire::MAX_RANGES as usize;
        let new = || QueuedOffer { disk, ranges: Vec::new(), extents: Vec::new(), bytes: Vec::new() };
        let mut cur = new();
        let mut chunks = chunks.into_iter().peekable();
        for r in ranges {
            let mut start = r.start;
            loop {
                if cur.extents.len() >= max || cur.ranges.len() >= max_ranges {
                    self.push_offer(std::mem::replace(&mut cur, new()));
                }
                while cur.extents.len() < max {
                    match chunks.next_if(|(e, _)| e.offset < r.end) {
                        Some((e, b)) => {
                            cur.extents.push(wire_extent(&e)?);
                            cur.bytes.push(b);
                        }
                        None => break,
                    }
                }
                let more = chunks.peek().is_some_and(|(e, _)| e.offset < r.end);
                let end = if more { cur.extents.last().map_or(r.end, alike_repl::Extent::end) } else { r.end };
                cur.ranges.push(start..end);
                if !more {
                    break;
                }
                start = end;
                self.push_offer(std::mem::replace(&mut cur, new()));
            }
        }
        if !cur.ranges.is_empty() {
            self.push_offer(cur);
        }
        Ok(())
    }

    fn push_offer(&mut self, o: QueuedOffer) {
        self.queued_bytes += o.bytes.iter().map(Vec::len).sum::<usize>();
        self.queued.push_back(o);
    }

    /// The receiver is ready: plan every disk, describe the run, begin the
    /// disks, start the reader.
    fn on_ready(&mut self, s: &mut Sender, replica: &ReplicaInfo, limits: Limits) -> Result<()> {
        let keys = Keys::for_ids(replica.id_key);
        let chunking = self.opts.chunking;
        let state = self.opts.state_file.as_deref().and_then(|f| SenderState::load(f, &keys));
        let usable = state.filter(|st| {
            !replica.base.is_empty()
                && st.point == replica.base
                && st.chunking == chunking
                && st.disks.len() == self.disks.len()
                && st.disks.iter().zip(self.disks).all(|(a, b)| a.size == b.size())
        });
        let mut plans = Vec::with_capacity(self.disks.len());
        for (d, src) in self.disks.iter().enumerate() {
            let size = src.size();
            let token = src.change_token();
            let allocated = src.allocated_ranges()?;
            // What the replica holds, when the receiver names the state's point.
            let known = usable.as_ref().map(|st| Arc::new(st.disks[d].extents.clone()));
            let since = usable.as_ref().and_then(|st| st.disks[d].token.clone());
            let mut plan = None;
            if let (Some(t), Some(old)) = (since, &known) {
                if let Some(changed) = src.changed_ranges(&t)? {
                    let spans = grow(&changed, old, grid(&chunking), size);
                    let total = overlap(&allocated, &spans);
                    let old = Some(old.as_ref().clone());
                    plan = Some(Plan { spans, old, known: known.clone(), token: token.clone(), total });
                }
            }
            let plan = plan.unwrap_or_else(|| {
                let total = allocated.iter().map(|r| r.end - r.start).sum();
                Plan { spans: std::iter::once(0..size).collect(), old: None, known, token, total }
            });
            self.runs[d].changed_only = plan.old.is_some();
            self.runs[d].total = plan.total;
            self.runs[d].token = plan.token.clone();
            plans.push(plan);
        }
        let meta = RunMeta {
            vm: self.opts.vm.clone(),
            disks: self.disks.iter().map(|d| d.size()).collect(),
            chunking: chunking.to_string(),
        };
        let json = serde_json::to_vec(&meta).map_err(|e| ReplicateError::InvalidArgument(e.to_string()))?;
        s.send_meta(META_RUN, &json)?;
        let geometry = geometry(&chunking)?;
        for (d, src) in self.disks.iter().enumerate() {
            s.begin_disk(DiskSpec { disk: d as u32, size: src.size(), geometry })?;
        }
        if let Some(tx) = self.start.take() {
            tx.send(Start { keys: keys.clone(), plans, wake: self.wake.clone() })
                .map_err(|_| ReplicateError::Thread("the reader thread ended before it started".into()))?;
        }
        self.keys = Some(keys);
        self.limits = Some(limits);
        Ok(())
    }

    /// The receiver acknowledged: save the state for the next run, report.
    fn finish(&mut self, s: &Sender, ack: &[u8]) -> SenderReport {
        let point = PointName::decode(ack).map(|p| p.point);
        let mut state_saved = false;
        if let (Some(file), Some(keys), Some(point)) = (&self.opts.state_file, &self.keys, point) {
            let digests: Vec<[u8; 32]> = self.runs.iter().map(|r| r.digest.unwrap_or_default()).collect();
            let st = SenderState {
                point: PointName::new(point, &digests).encode(),
                chunking: self.opts.chunking,
                disks: self
                    .runs
                    .iter_mut()
                    .map(|r| StateDisk { size: r.size, token: r.token.take(), extents: std::mem::take(&mut r.map) })
                    .collect(),
            };
            match st.save(file, keys) {
                Ok(()) => state_saved = true,
                Err(e) => tracing::warn!(error = %e, "the sender's state was not saved: the next run reads every disk"),
            }
        }
        self.progress(s, true);
        let disks = self.disk_progress(s);
        let st = s.stats();
        SenderReport {
            point: point.unwrap_or(0),
            read_bytes: disks.iter().map(|d| d.read_bytes).sum(),
            hashed_bytes: disks.iter().map(|d| d.hashed_bytes).sum(),
            offered_bytes: st.offered_bytes,
            needed_bytes: st.needed_bytes,
            sent_bytes: st.wire_sent,
            received_bytes: st.wire_received,
            disks,
            state_saved,
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    fn disk_progress(&self, s: &Sender) -> Vec<DiskProgress> {
        self.runs
            .iter()
            .enumerate()
            .map(|(d, r)| {
                let ds = s.disk_stats(d as u32).unwrap_or_default();
                DiskProgress {
                    disk: d,
                    size: r.size,
                    total_bytes: r.total,
                    read_bytes: self.counters.read(d),
                    hashed_bytes: self.counters.hashed(d),
                    offered_bytes: ds.offered_bytes,
                    needed_bytes: ds.needed_bytes,
                    sent_bytes: ds.data_payload_bytes,
                    changed_only: r.changed_only,
                }
            })
            .collect()
    }

    fn progress(&mut self, s: &Sender, last: bool) {
        let Some(cb) = &self.opts.progress else { return };
        if !last && self.last_progress.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_progress = Instant::now();
        let st = s.stats();
        cb(&ReplicationProgress {
            disks: self.disk_progress(s),
            wire_sent_bytes: st.wire_sent,
            wire_received_bytes: st.wire_received,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alike_core::ChunkId;

    fn e(o: u64, l: u64) -> Extent {
        Extent { offset: o, len: l, id: ChunkId([o as u8; 32]) }
    }

    #[test]
    fn changes_grow_to_recorded_chunks_and_the_rest_is_carried() {
        let old = vec![e(0, 16384), e(16384, 32768), e(65536, 8192)];
        // A write inside the second chunk, one in the hole, one past the last.
        let spans = grow(&[20000..20001, 53248..53249, 70000..80000], &old, 4096, 1 << 20);
        assert_eq!(spans, vec![16384..49152, 53248..57344, 65536..81920]);
        let fresh = vec![e(16384, 16384), e(32768, 16384), e(65536, 16384)];
        let map = carry(&old, &spans, fresh);
        assert_eq!(
            map.iter().map(|x| (x.offset, x.len)).collect::<Vec<_>>(),
            vec![(0, 16384), (16384, 16384), (32768, 16384), (65536, 16384)]
        );
        assert_eq!(grow(&[0..1, 1..2], &[], 4096, 100), vec![0..100]);
        assert_eq!(grow(&[70000..70001, 20000..20001], &old, 4096, 1 << 20), vec![16384..49152, 65536..73728]);
    }
}
