//! The backup of one disk with content-defined chunks (store format 2).
//!
//! A disk is cut window by window (128 MiB, [`CDC_WINDOW_BLOCKS`] 4 KiB
//! blocks; no chunk crosses a window). Within a window:
//!
//! 1. **Plan** the block ranges to read: every allocated range for a full
//!    read; for a change-tracked incremental, each changed range from its
//!    *restart point* (the start of the parent's chunk that holds or ends
//!    right before the range's first block), plus some slack past its end.
//! 2. **Read** a batch of them (16–128 MiB, 4 MiB per worker) on every core and
//!    compute each 4 KiB block's zero flag and cut hash there too.
//! 3. **Cut**, one sequential scan over the blocks' flags (microseconds):
//!    zero blocks and gaps end chunks, the cut hash ends them after `min`.
//!    An incremental stops re-cutting a changed range at the first chunk
//!    boundary past its end that is also a boundary of the parent, and
//!    keeps the parent's chunks from there: the result equals a full
//!    chunking of the new disk (the integration tests check it). Past the
//!    planned slack (`min` bytes) it reads on, `max` bytes at a time,
//!    until it meets one.
//! 4. **Hash** the batch's chunks on every core and, in order, look up
//!    which ones the store lacks and group those into frames of about
//!    [`crate::backup::FRAME_TARGET`] bytes ([`Framer`]).
//! 5. **Compress, seal and put** each frame as a task of its own
//!    ([`FrameTasks`]), and go on with the next batch at once: no step
//!    waits for a batch's (or a window's) slowest frame, so the steps
//!    that run on one thread (the cut scan, the framing, a window's map)
//!    overlap the compression on the others.
//!
//! Batches are read into a ring of buffers ([`Ring`]); a buffer is read
//! into again once the last frame task holding its bytes is done, and a
//! reader that finds none free runs frame tasks itself. A chunk open at
//! the end of a batch is copied aside (at most `max` bytes) and finished in
//! the next, and the new chunks left over after a batch's last full frame
//! are copied aside too, so no buffer waits on a later batch. Memory: the
//! ring (one batch's worth, as [`batch_bytes`] says); frames of copied
//! bytes and an incremental's extension reads, which hold no ring buffer
//! but are queued behind the batches that do (at most about one frame and
//! the extension reads per batch in flight); one window's extents; per
//! block of a batch 16 bytes of flags; and the ids of frames not yet put.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::backup::{Added, DiskPlan, EngineParams, FRAME_TARGET, LOOKUP_BATCH, batch_bytes, put_frame, store_map};
use crate::extents::{Extent, ExtentMap, Window, load_window};
use crate::progress::{CancelToken, ProgressSink};
use crate::{
    CDC_BLOCK, CDC_WINDOW_BLOCKS, CdcParams, CdcState, ChunkId, ChunkStore, DiskRecord, DiskSource, Keys, Recover,
    Result, cut_hash, is_zero,
};
use std::collections::HashSet;

const BS: u64 = CDC_BLOCK as u64;
/// Blocks read per parallel task.
const PIECE_BLOCKS: u64 = 64;
/// Batch buffers in the ring: while one is read and cut, the frames of
/// up to three earlier batches are compressed.
const RING_SLOTS: usize = 4;

/// A range of blocks to read, and for an incremental the block the
/// re-cutting must pass before it may stop.
#[derive(Debug, Clone)]
struct Item {
    start: u64,
    need: u64,
}

/// Blocks of one read, where their bytes and flags are.
struct Piece {
    start: u64,
    end: u64,
    arena: usize,
    /// Byte offset in the arena of block `start`.
    off: usize,
}

/// The bytes of a chunk cut in this batch.
enum Bytes {
    /// One contiguous run of an arena.
    Slice { arena: usize, off: usize, len: usize },
    /// Gathered from several places (a chunk across batches or reads).
    Owned(Vec<u8>),
}

/// A chunk cut: first block, blocks, bytes.
struct Cut {
    blk: u64,
    n: u32,
    bytes: Bytes,
}

/// Reads blocks of the source into a buffer and flags them, on every core.
struct Reader<'a> {
    src: &'a dyn DiskSource,
    size: u64,
    nblocks: u64,
    sink: &'a ProgressSink,
    cancel: &'a CancelToken,
    read_bytes: AtomicU64,
}

impl Reader<'_> {
    fn block_len(&self, blk: u64) -> usize {
        (self.size - blk * BS).min(BS) as usize
    }

    /// Reads blocks `[start, end)` into `buf` (4 KiB per block) and returns
    /// each block's (zero, cut hash).
    fn read(&self, start: u64, end: u64, buf: &mut [u8]) -> Result<Vec<(bool, u64)>> {
        debug_assert!(end <= self.nblocks && buf.len() as u64 >= (end - start) * BS);
        let parts: Vec<Vec<(bool, u64)>> = buf[..((end - start) * BS) as usize]
            .par_chunks_mut((PIECE_BLOCKS * BS) as usize)
            .enumerate()
            .map(|(i, b)| -> Result<Vec<(bool, u64)>> {
                self.cancel.check()?;
                let first = start + i as u64 * PIECE_BLOCKS;
                let last = (first + PIECE_BLOCKS).min(end);
                let off = first * BS;
                let len = ((last * BS).min(self.size) - off) as usize;
                self.src.read_at(off, &mut b[..len])?;
                self.sink.add(len as u64);
                self.read_bytes.fetch_add(len as u64, Ordering::Relaxed);
                Ok((first..last)
                    .map(|blk| {
                        let o = ((blk - first) * BS) as usize;
                        let d = &b[o..o + self.block_len(blk)];
                        let z = is_zero(d);
                        (z, if z { 0 } else { cut_hash(d) })
                    })
                    .collect())
            })
            .collect::<Result<_>>()?;
        Ok(parts.concat())
    }
}

/// The parent's chunk boundaries in one window, in blocks.
struct ParentCuts {
    /// (first block, end block) of each parent chunk, sorted.
    chunks: Vec<(u64, u64)>,
}

impl ParentCuts {
    fn new(w: &Window) -> ParentCuts {
        ParentCuts { chunks: w.extents.iter().map(|e| (e.offset / BS, e.end().div_ceil(BS))).collect() }
    }
    /// The parent chunk holding block `b`.
    fn holding(&self, b: u64) -> Option<(u64, u64)> {
        let i = self.chunks.partition_point(|c| c.1 <= b);
        self.chunks.get(i).copied().filter(|c| c.0 <= b)
    }
    /// Whether the parent had a chunk boundary before block `b` (no chunk
    /// of it spans from before `b` to after).
    fn boundary(&self, b: u64) -> bool {
        self.holding(b).is_none_or(|c| c.0 == b)
    }
    /// Where re-cutting a change at block `a` must start: the parent chunk
    /// holding `a`, else the one ending right at `a` (it may have been
    /// ended by a zero block the change has filled), else `a`.
    fn restart(&self, a: u64) -> u64 {
        if let Some(c) = self.holding(a) {
            return c.0;
        }
        if a > 0
            && let Some(c) = self.holding(a - 1)
            && c.1 == a
        {
            return c.0;
        }
        a
    }
}

/// Backs up one disk with content-defined chunks.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backup_disk(
    store: &dyn ChunkStore,
    keys: &Keys,
    params: &EngineParams,
    p: &CdcParams,
    plan: DiskPlan,
    src: &dyn DiskSource,
    sink: &ProgressSink,
    cancel: &CancelToken,
) -> Result<DiskRecord> {
    let wb = u64::from(CDC_WINDOW_BLOCKS);
    let nwin = plan.nblocks.div_ceil(wb);
    let added = Added::default();
    let reader = Reader { src, size: plan.size, nblocks: plan.nblocks, sink, cancel, read_bytes: AtomicU64::new(0) };
    let failed = Failed::default();
    let put = Mutex::new(Vec::new());
    let tasks = FrameTasks { store, keys, params, added: &added, cancel, failed: &failed, put: &put };
    let mut ring = Ring::new(batch_bytes(), RING_SLOTS);
    let mut framer = Framer { carry: Vec::new(), carry_len: 0, copied: 0, inflight: HashSet::new(), put: &put };
    let mut maps = Vec::with_capacity(nwin as usize);
    let mut data_bytes = 0u64;
    let mut full = plan.read.iter().cloned().peekable();
    // Read past a changed range: half the time the cuts meet again within
    // `min` (docs/design/chunking.md); the rest is read on demand, so the
    // bytes read stay close to what the change needs.
    let slack = u64::from(p.min / CDC_BLOCK);
    // Every frame task is done when the scope returns, failed or not. The
    // tasks run oldest first, so batch buffers come back in the order they
    // were read (a thread that finds none free runs the oldest one's frames).
    let windows = rayon::scope_fifo(|scope| -> Result<()> {
        let mut pipe = Pipe { ring: &mut ring, framer: &mut framer, tasks: &tasks, scope };
        let result = (|| -> Result<()> {
            for w in 0..nwin {
                cancel.check()?;
                let lo = w * wb;
                let hi = (lo + wb).min(plan.nblocks);
                // The parent's chunks of this window, for look-ups a re-run can skip.
                let same_cut = match &plan.same_cut_parent {
                    Some(prev) => Some(load_window(store, keys, prev, w as usize)?),
                    None => None,
                };
                let (items, reads, parent) = match &plan.carry {
                    None => {
                        let mut items = Vec::new();
                        while let Some(r) = full.peek() {
                            if r.start >= hi {
                                break;
                            }
                            items.push(Item { start: r.start.max(lo), need: r.end.min(hi) });
                            if r.end <= hi {
                                full.next();
                            } else {
                                break;
                            }
                        }
                        let reads = items.iter().map(|i| i.start..i.need).collect();
                        (items, reads, None)
                    }
                    Some((prev, changed)) => {
                        let pw = match &same_cut {
                            Some(pw) => pw.clone(),
                            None => load_window(store, keys, prev, w as usize)?,
                        };
                        let here: Vec<Range<u64>> = changed
                            .iter()
                            .filter(|r| r.start < hi && r.end > lo)
                            .map(|r| r.start.max(lo)..r.end.min(hi))
                            .collect();
                        if here.is_empty() {
                            data_bytes += pw.data_bytes();
                            maps.push(prev.maps[w as usize]);
                            continue;
                        }
                        let cuts = ParentCuts::new(&pw);
                        let items: Vec<Item> =
                            here.iter().map(|r| Item { start: cuts.restart(r.start), need: r.end }).collect();
                        let mut reads: Vec<Range<u64>> = Vec::new();
                        for i in &items {
                            let r = i.start..(i.need + slack).min(hi);
                            match reads.last_mut() {
                                Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
                                _ => reads.push(r),
                            }
                        }
                        (items, reads, Some((pw, cuts)))
                    }
                };
                let hint: Option<HashSet<Extent>> = same_cut.map(|w| w.extents.into_iter().collect());
                let ctx = Ctx { reader: &reader, keys, p, store, known: hint.as_ref() };
                let cut = cut_window(&ctx, &mut pipe, hi, &items, reads, parent.as_ref().map(|x| &x.1))?;
                let mut extents: Vec<(u64, u32, ChunkId)> = cut.chunks;
                if let Some((pw, _)) = &parent {
                    // The parent's chunks outside the re-cut spans stay as they were.
                    let mut spans = cut.spans.iter().peekable();
                    for e in &pw.extents {
                        let (a, b) = (e.offset / BS, e.end().div_ceil(BS));
                        while spans.next_if(|s| s.end <= a).is_some() {}
                        if spans.peek().is_none_or(|s| s.start >= b) {
                            extents.push((a, (b - a) as u32, e.id));
                        }
                    }
                    extents.sort_unstable_by_key(|e| e.0);
                }
                for &(a, n, _) in &extents {
                    data_bytes += ((a + u64::from(n)) * BS).min(plan.size) - a * BS;
                }
                let map =
                    ExtentMap { extents: extents.iter().map(|&(a, n, id)| ((a - lo) as u16, n as u16, id)).collect() };
                maps.push(store_map(store, keys, params, &map.encode(), &added)?);
            }
            // The new chunks left after the last full frame.
            let last = std::mem::take(&mut pipe.framer.carry);
            pipe.framer.carry_len = 0;
            if !last.is_empty() {
                tasks.spawn(scope, last);
            }
            Ok(())
        })();
        if result.is_err() {
            // Frame tasks not yet started need not run.
            failed.stop();
        }
        result
    });
    failed.first_or(windows)?;
    Ok(DiskRecord {
        position: plan.position,
        label: src.label(),
        size: plan.size,
        block_size: CDC_BLOCK,
        blocks_per_map: CDC_WINDOW_BLOCKS,
        data_bytes,
        read_bytes: reader.read_bytes.into_inner(),
        new_bytes: added.new_bytes.into_inner(),
        new_stored_bytes: added.new_stored.into_inner(),
        incremental: plan.carry.is_some(),
        fallback_reason: plan.fallback_reason,
        change_token: plan.change_token.map(hex::encode),
        maps,
        chunking: Some(*p),
    })
}

/// What cutting a window gave: its new chunks (first block, blocks, id)
/// and, for an incremental, the block spans they replace.
struct WindowCut {
    chunks: Vec<(u64, u32, ChunkId)>,
    spans: Vec<Range<u64>>,
}

/// Where a block's bytes and flags are.
#[derive(Clone, Copy)]
struct Loc {
    arena: usize,
    off: usize,
    len: usize,
    zero: bool,
    hash: u64,
}

/// The blocks of one batch: the ring buffer it was read into (arena 0),
/// and extension reads made while re-cutting past the planned slack.
struct Batch {
    arenas: Vec<Arc<Vec<u8>>>,
    pieces: Vec<Piece>,
    flags: Vec<Vec<(bool, u64)>>,
}

impl Batch {
    fn arena(&self, a: usize) -> &[u8] {
        &self.arenas[a]
    }
    fn piece_at(&self, b: u64) -> Option<&Piece> {
        let i = self.pieces.partition_point(|p| p.end <= b);
        self.pieces.get(i).filter(|p| p.start <= b)
    }
    fn loc(&self, b: u64, size: u64) -> Option<Loc> {
        let pi = self.pieces.partition_point(|q| q.end <= b);
        let p = self.pieces.get(pi).filter(|p| p.start <= b)?;
        let k = (b - p.start) as usize;
        let (zero, hash) = self.flags[pi][k];
        Some(Loc { arena: p.arena, off: p.off + k * BS as usize, len: ((size - b * BS).min(BS)) as usize, zero, hash })
    }
    /// First block at or after `b` that this batch holds.
    fn next_held(&self, b: u64) -> Option<u64> {
        let i = self.pieces.partition_point(|p| p.end <= b);
        self.pieces.get(i).map(|p| p.start.max(b))
    }
    fn insert(&mut self, piece: Piece, flags: Vec<(bool, u64)>) {
        let i = self.pieces.partition_point(|p| p.start < piece.start);
        self.pieces.insert(i, piece);
        self.flags.insert(i, flags);
    }
    /// A cut chunk's bytes, shared with the buffer they are in.
    fn data(&self, bytes: Bytes) -> Data {
        match bytes {
            Bytes::Slice { arena, off, len } => Data { buf: self.arenas[arena].clone(), off, len },
            Bytes::Owned(v) => Data::own(v),
        }
    }
}

/// The open chunk: its bytes from earlier batches, and where its blocks of
/// this batch are.
#[derive(Default)]
struct Open {
    carried: Vec<u8>,
    locs: Vec<Loc>,
}

impl Open {
    fn bytes(&mut self, batch: &Batch) -> Bytes {
        let locs = std::mem::take(&mut self.locs);
        let contiguous = self.carried.is_empty()
            && locs.windows(2).all(|w| w[0].arena == w[1].arena && w[0].off + w[0].len == w[1].off);
        if contiguous && let Some(f) = locs.first() {
            return Bytes::Slice { arena: f.arena, off: f.off, len: locs.iter().map(|l| l.len).sum() };
        }
        let mut v = std::mem::take(&mut self.carried);
        for l in &locs {
            v.extend_from_slice(&batch.arena(l.arena)[l.off..l.off + l.len]);
        }
        Bytes::Owned(v)
    }
    /// Moves this batch's blocks of the open chunk aside before the batch's buffers are reused.
    fn carry(&mut self, batch: &Batch) {
        for l in std::mem::take(&mut self.locs) {
            self.carried.extend_from_slice(&batch.arena(l.arena)[l.off..l.off + l.len]);
        }
    }
}

/// A chunk's bytes for a frame task: a run of a batch buffer (which stays
/// out of the ring until the task is done) or bytes of its own.
struct Data {
    buf: Arc<Vec<u8>>,
    off: usize,
    len: usize,
}

impl Data {
    fn own(v: Vec<u8>) -> Data {
        Data { len: v.len(), buf: Arc::new(v), off: 0 }
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
}

/// New chunks for one frame, in disk order.
type Frame = Vec<(ChunkId, Data)>;

/// The batch buffers. A batch is read into a free one; a buffer is free
/// again when the batch's cut is done and the last frame task holding
/// some of its bytes has dropped them.
struct Ring {
    slots: Vec<Arc<Vec<u8>>>,
    next: usize,
}

impl Ring {
    fn new(total: usize, n: usize) -> Ring {
        let each = (total / n).next_multiple_of(BS as usize);
        Ring { slots: (0..n).map(|_| Arc::new(vec![0u8; each])).collect(), next: 0 }
    }
    fn blocks(&self) -> u64 {
        self.slots[0].len() as u64 / BS
    }
    /// A free buffer, taken in turn. While none is, this thread runs the
    /// pool's pending work (frame tasks), or naps when others run it all.
    fn acquire(&mut self, failed: &Failed) -> Result<usize> {
        let n = self.slots.len();
        loop {
            for k in 0..n {
                let i = (self.next + k) % n;
                if Arc::get_mut(&mut self.slots[i]).is_some() {
                    self.next = (i + 1) % n;
                    return Ok(i);
                }
            }
            failed.check()?;
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
    }
}

/// The first failure of a frame task (or that the cutting stopped), seen
/// by the cutting loop at its next batch and by the tasks not yet started.
#[derive(Default)]
struct Failed {
    stop: AtomicBool,
    first: Mutex<Option<crate::Error>>,
}

impl Failed {
    fn record(&self, e: crate::Error) {
        self.first.locked().get_or_insert(e);
        self.stop.store(true, Ordering::Release);
    }
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
    /// `Err` once something failed; the error itself comes from
    /// [`Failed::first_or`] when the scope is done.
    fn check(&self) -> Result<()> {
        if self.stopped() { Err(crate::Error::Cancelled) } else { Ok(()) }
    }
    /// A frame task's failure if there was one, else the cutting's result.
    fn first_or<T>(&self, r: Result<T>) -> Result<T> {
        match self.first.locked().take() {
            Some(e) => Err(e),
            None => r,
        }
    }
}

/// What a frame task needs: compresses, seals and puts one frame.
struct FrameTasks<'a> {
    store: &'a dyn ChunkStore,
    keys: &'a Keys,
    params: &'a EngineParams,
    added: &'a Added,
    cancel: &'a CancelToken,
    failed: &'a Failed,
    /// Ids of the chunks of frames put, for [`Framer`] to forget.
    put: &'a Mutex<Vec<ChunkId>>,
}

impl<'a> FrameTasks<'a> {
    fn spawn(&'a self, scope: &rayon::ScopeFifo<'a>, frame: Frame) {
        scope.spawn_fifo(move |_| {
            if self.failed.stopped() {
                return;
            }
            // A panic stops the reading too; the scope raises it again.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.put(&frame))) {
                // In the store's pending set from here on.
                Ok(Ok(())) => self.put.locked().extend(frame.iter().map(|(id, _)| *id)),
                Ok(Err(e)) => self.failed.record(e),
                Err(panic) => {
                    self.failed.stop();
                    std::panic::resume_unwind(panic);
                }
            }
        });
    }
    fn put(&self, frame: &Frame) -> Result<()> {
        self.cancel.check()?;
        let chunks: Vec<(ChunkId, &[u8])> = frame.iter().map(|(id, d)| (*id, d.bytes())).collect();
        put_frame(self.store, self.keys, self.params, &chunks, self.added)
    }
}

/// Groups the new chunks of each batch, in disk order, into frames of
/// about [`FRAME_TARGET`] bytes, so that scattered new chunks still
/// compress together; what is left after the last full frame waits for
/// the next batch's.
struct Framer<'a> {
    carry: Frame,
    carry_len: usize,
    /// How many of `carry` already hold bytes of their own.
    copied: usize,
    /// Ids of chunks in frames handed to tasks whose put this framer has
    /// not yet seen done: met again, they are not stored twice.
    inflight: HashSet<ChunkId>,
    /// Ids the frame tasks have put since the last batch.
    put: &'a Mutex<Vec<ChunkId>>,
}

impl Framer<'_> {
    /// The full frames of a batch's chunks that the store lacks. `known`:
    /// chunks the parent holds at the same place (no look-up needed).
    fn frames(
        &mut self,
        store: &dyn ChunkStore,
        chunks: Vec<(ChunkId, Data)>,
        known: Option<&[bool]>,
    ) -> Result<Vec<Frame>> {
        // Forgotten only before the look-ups: a chunk put from here on stays
        // in flight for this batch, so a look-up that ran before its put
        // cannot make it new again.
        for id in std::mem::take(&mut *self.put.locked()) {
            self.inflight.remove(&id);
        }
        let ask: Vec<ChunkId> =
            chunks.iter().enumerate().filter(|(i, _)| !known.is_some_and(|k| k[*i])).map(|(_, c)| c.0).collect();
        let answers: Vec<bool> =
            ask.par_chunks(LOOKUP_BATCH).map(|c| store.contains_many(c)).collect::<Result<Vec<_>>>()?.concat();
        let mut answers = answers.into_iter();
        let mut frames = Vec::new();
        for (i, (id, data)) in chunks.into_iter().enumerate() {
            let stored = known.is_some_and(|k| k[i]) || answers.next().unwrap_or(false);
            if stored || !self.inflight.insert(id) {
                continue;
            }
            self.carry_len += data.len;
            self.carry.push((id, data));
            if self.carry_len >= FRAME_TARGET {
                frames.push(std::mem::take(&mut self.carry));
                self.carry_len = 0;
                self.copied = 0;
            }
        }
        // What waits for the next batch gets bytes of its own: a buffer
        // must not stay out of the ring until some later batch fills the frame.
        for (_, d) in &mut self.carry[self.copied..] {
            *d = Data::own(d.bytes().to_vec());
        }
        self.copied = self.carry.len();
        Ok(frames)
    }
}

/// The backup's pipeline state across windows.
struct Pipe<'p, 'a> {
    ring: &'p mut Ring,
    framer: &'p mut Framer<'a>,
    tasks: &'a FrameTasks<'a>,
    scope: &'p rayon::ScopeFifo<'a>,
}

/// What cutting a window works with.
struct Ctx<'a> {
    reader: &'a Reader<'a>,
    keys: &'a Keys,
    p: &'a CdcParams,
    store: &'a dyn ChunkStore,
    /// The parent's chunks of the window, when it was cut the same way.
    known: Option<&'a HashSet<Extent>>,
}

/// Cuts one window `[items[0].start…, hi)`: reads `reads` in batches,
/// cuts and hashes them, and hands new chunks' frames to frame tasks.
fn cut_window(
    ctx: &Ctx<'_>,
    pipe: &mut Pipe<'_, '_>,
    hi: u64,
    items: &[Item],
    reads: Vec<Range<u64>>,
    parent: Option<&ParentCuts>,
) -> Result<WindowCut> {
    let Ctx { reader, keys, p, store, known } = *ctx;
    let max_blocks = u64::from(p.max / CDC_BLOCK);
    let cap_blocks = pipe.ring.blocks();
    let mut queue: std::collections::VecDeque<Range<u64>> = reads.into();
    let mut out = WindowCut { chunks: Vec::new(), spans: Vec::new() };
    let mut st = CdcState::new(p);
    let mut open = Open::default();
    // The span being cut: (first block, block it must pass).
    let mut active: Option<(u64, u64)> = None;
    let mut next_item = 0usize;
    let mut pos = items.first().map_or(hi, |i| i.start);
    while next_item < items.len() || active.is_some() {
        // A frame task's failure stops the reading at once, not when the
        // ring runs out (tasks that no longer run free their buffers).
        pipe.tasks.failed.check()?;
        let slot = pipe.ring.acquire(pipe.tasks.failed)?;
        let pieces = fill_batch(&mut queue, cap_blocks);
        let buf = Arc::get_mut(&mut pipe.ring.slots[slot]).expect("a free buffer has no other holder");
        let flags = read_pieces(reader, &pieces, buf)?;
        let mut batch = Batch { arenas: vec![pipe.ring.slots[slot].clone()], pieces, flags };
        let mut cuts: Vec<Cut> = Vec::new();
        loop {
            reader.cancel.check()?;
            match active {
                None => {
                    let Some(item) = items.get(next_item) else { break };
                    if batch.piece_at(item.start).is_none() {
                        // Its blocks come with the next batch.
                        break;
                    }
                    debug_assert!(st.at_boundary() && item.start >= pos);
                    pos = item.start;
                    active = Some((item.start, item.need));
                    next_item += 1;
                }
                Some((span_start, need)) => {
                    if pos == hi {
                        emit(st.end(), &mut open, &batch, &mut cuts);
                        out.spans.push(span_start..hi);
                        active = None;
                        continue;
                    }
                    let loc = match batch.loc(pos, reader.size) {
                        Some(l) => l,
                        None if queue.front().is_some_and(|r| r.start == pos) => break,
                        None if pos < need || parent.is_none() => return Err(lost(hi, pos)),
                        None => {
                            // Past the slack without meeting the parent's cuts: read on.
                            let mut end = (pos + max_blocks).min(hi);
                            if let Some(n) = batch.next_held(pos) {
                                end = end.min(n);
                            }
                            if let Some(r) = queue.front() {
                                end = end.min(r.start.max(pos + 1));
                            }
                            let mut v = vec![0u8; ((end - pos) * BS) as usize];
                            let f = reader.read(pos, end, &mut v)?;
                            batch.arenas.push(Arc::new(v));
                            let arena = batch.arenas.len() - 1;
                            batch.insert(Piece { start: pos, end, arena, off: 0 }, f);
                            continue;
                        }
                    };
                    let closed = if loc.zero {
                        st.end()
                    } else {
                        open.locs.push(loc);
                        st.push(pos, loc.hash)
                    };
                    emit(closed, &mut open, &batch, &mut cuts);
                    pos += 1;
                    let mut need = need;
                    // A later change the re-cut has reached joins this span.
                    while let Some(i) = items.get(next_item).filter(|i| i.start < pos) {
                        need = need.max(i.need);
                        next_item += 1;
                    }
                    active = Some((span_start, need));
                    let done = match parent {
                        // Full read: the range ends where allocation ends.
                        None => pos >= need,
                        Some(pc) => pos >= need && st.at_boundary() && pc.boundary(pos),
                    };
                    if done {
                        emit(st.end(), &mut open, &batch, &mut cuts);
                        out.spans.push(span_start..pos);
                        active = None;
                    }
                }
            }
        }
        // This batch's open chunk moves aside; its cut chunks are hashed
        // here (on every core) and the new ones handed to frame tasks,
        // which compress them while the next batches are read and cut.
        open.carry(&batch);
        let stuck = batch.pieces.is_empty() && queue.is_empty();
        let (places, datas): (Vec<(u64, u32)>, Vec<Data>) =
            cuts.into_iter().map(|c| ((c.blk, c.n), batch.data(c.bytes))).unzip();
        drop(batch);
        let ids: Vec<ChunkId> = datas.par_iter().map(|d| keys.hash(d.bytes())).collect();
        let hint: Option<Vec<bool>> = known.map(|k| {
            places
                .iter()
                .zip(ids.iter().zip(&datas))
                .map(|(&(blk, _), (id, d))| k.contains(&Extent { offset: blk * BS, len: d.len as u64, id: *id }))
                .collect()
        });
        let frames = pipe.framer.frames(store, ids.iter().copied().zip(datas).collect(), hint.as_deref())?;
        for f in frames {
            pipe.tasks.spawn(pipe.scope, f);
        }
        out.chunks.extend(places.into_iter().zip(ids).map(|((blk, n), id)| (blk, n, id)));
        if stuck {
            // Nothing was read and nothing is left: the loop would not progress.
            return Err(lost(hi, pos));
        }
    }
    Ok(out)
}

/// Takes the next batch's pieces from the read queue: up to `cap_blocks`
/// blocks, laid out one after the other in a batch buffer.
fn fill_batch(queue: &mut std::collections::VecDeque<Range<u64>>, cap_blocks: u64) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut used = 0u64;
    while used < cap_blocks
        && let Some(r) = queue.front_mut()
    {
        let n = (r.end - r.start).min(cap_blocks - used);
        pieces.push(Piece { start: r.start, end: r.start + n, arena: 0, off: (used * BS) as usize });
        used += n;
        r.start += n;
        if r.start == r.end {
            queue.pop_front();
        }
    }
    pieces
}

/// Each block's (zero, cut hash) of one piece.
type Flags = Vec<(bool, u64)>;

/// Reads a batch's pieces into `buf`; returns each piece's block flags.
fn read_pieces(reader: &Reader<'_>, pieces: &[Piece], buf: &mut [u8]) -> Result<Vec<Flags>> {
    pieces
        .iter()
        .map(|pc| reader.read(pc.start, pc.end, &mut buf[pc.off..pc.off + ((pc.end - pc.start) * BS) as usize]))
        .collect()
}

/// Ends the open chunk's cut, if `c` closed one.
fn emit(c: Option<(u64, u32)>, open: &mut Open, batch: &Batch, cuts: &mut Vec<Cut>) {
    if let Some((blk, n)) = c {
        cuts.push(Cut { blk, n, bytes: open.bytes(batch) });
    }
}

/// A plan that does not cover what the cut needs: a bug, reported rather
/// than written as a hole.
fn lost(hi: u64, pos: u64) -> crate::Error {
    crate::Error::InvalidArgument(format!(
        "internal error: the backup plan of the window ending at 4 KiB block {hi} has no read for block {pos}"
    ))
}
