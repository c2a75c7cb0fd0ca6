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
//! 4. **Hash and store** the batch's chunks on every core
//!    ([`crate::backup::store_new`]), while the next batch is read (step 2)
//!    into the other of two half-size batch buffers: workers done with this batch's
//!    last frames read ahead instead of waiting at its tail.
//!
//! A chunk open at the end of a batch is copied aside (at most `max`
//! bytes) and finished in the next. Memory: two half-size batches (one
//! batch's worth), one window's extents, and per block of a batch 16
//! bytes of flags.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::backup::{Added, DiskPlan, EngineParams, batch_bytes, finish_frames, store_map, store_new};
use crate::extents::{Extent, ExtentMap, Window, load_window};
use crate::progress::{CancelToken, ProgressSink};
use crate::{
    CDC_BLOCK, CDC_WINDOW_BLOCKS, CdcParams, CdcState, ChunkId, ChunkStore, DiskRecord, DiskSource, Keys, Result,
    cut_hash, is_zero,
};
use std::collections::HashSet;

const BS: u64 = CDC_BLOCK as u64;
/// Blocks read per parallel task.
const PIECE_BLOCKS: u64 = 64;

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
    // Two buffers of half a batch each: the memory of one batch, and a
    // read always under way beside the compression.
    let half = (batch_bytes() / 2).next_multiple_of(BS as usize);
    let mut bufs = [vec![0u8; half], vec![0u8; half]];
    let mut maps = Vec::with_capacity(nwin as usize);
    let mut data_bytes = 0u64;
    let mut full = plan.read.iter().cloned().peekable();
    // Read past a changed range: half the time the cuts meet again within
    // `min` (docs/design/chunking.md); the rest is read on demand, so the
    // bytes read stay close to what the change needs.
    let slack = u64::from(p.min / CDC_BLOCK);
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
        let ctx = Ctx { reader: &reader, keys, params, p, store, added: &added, known: hint.as_ref() };
        let cut = cut_window(&ctx, &mut bufs, hi, &items, reads, parent.as_ref().map(|x| &x.1))?;
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
        let map = ExtentMap { extents: extents.iter().map(|&(a, n, id)| ((a - lo) as u16, n as u16, id)).collect() };
        maps.push(store_map(store, keys, params, &map.encode(), &added)?);
    }
    finish_frames(store, keys, params, &added, cancel)?;
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

/// The blocks of one batch: the main buffer's pieces, and extension reads
/// made while re-cutting past the planned slack.
struct Batch<'b> {
    main: &'b [u8],
    ext: Vec<Vec<u8>>,
    pieces: Vec<Piece>,
    flags: Vec<Vec<(bool, u64)>>,
}

impl Batch<'_> {
    fn arena(&self, a: usize) -> &[u8] {
        if a == 0 { self.main } else { &self.ext[a - 1] }
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
}

/// The open chunk: its bytes from earlier batches, and where its blocks of
/// this batch are.
#[derive(Default)]
struct Open {
    carried: Vec<u8>,
    locs: Vec<Loc>,
}

impl Open {
    fn bytes(&mut self, batch: &Batch<'_>) -> Bytes {
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
    fn carry(&mut self, batch: &Batch<'_>) {
        for l in std::mem::take(&mut self.locs) {
            self.carried.extend_from_slice(&batch.arena(l.arena)[l.off..l.off + l.len]);
        }
    }
}

/// What cutting a window works with.
struct Ctx<'a> {
    reader: &'a Reader<'a>,
    keys: &'a Keys,
    params: &'a EngineParams,
    p: &'a CdcParams,
    store: &'a dyn ChunkStore,
    added: &'a Added,
    /// The parent's chunks of the window, when it was cut the same way.
    known: Option<&'a HashSet<Extent>>,
}

/// Cuts one window `[items[0].start…, hi)`: reads `reads` in batches,
/// cuts, hashes and stores new chunks.
fn cut_window(
    ctx: &Ctx<'_>,
    bufs: &mut [Vec<u8>; 2],
    hi: u64,
    items: &[Item],
    reads: Vec<Range<u64>>,
    parent: Option<&ParentCuts>,
) -> Result<WindowCut> {
    let Ctx { reader, keys, params, p, store, added, known } = *ctx;
    let max_blocks = u64::from(p.max / CDC_BLOCK);
    let cap_blocks = bufs[0].len().min(bufs[1].len()) as u64 / BS;
    let mut queue: std::collections::VecDeque<Range<u64>> = reads.into();
    let mut out = WindowCut { chunks: Vec::new(), spans: Vec::new() };
    let mut st = CdcState::new(p);
    let mut open = Open::default();
    // The span being cut: (first block, block it must pass).
    let mut active: Option<(u64, u64)> = None;
    let mut next_item = 0usize;
    let mut pos = items.first().map_or(hi, |i| i.start);
    // The buffer the batch being cut is in; the other one takes the next
    // batch, read while this one is hashed and stored.
    let mut cur = 0usize;
    let mut ahead: Option<(Vec<Piece>, Vec<Flags>)> = None;
    while next_item < items.len() || active.is_some() {
        let (pieces, flags) = match ahead.take() {
            Some(a) => a,
            None => {
                let pieces = fill_batch(&mut queue, cap_blocks);
                let flags = read_pieces(reader, &pieces, &mut bufs[cur])?;
                (pieces, flags)
            }
        };
        let (first, second) = bufs.split_at_mut(1);
        let (main, other) = if cur == 0 { (&first[0], &mut second[0]) } else { (&second[0], &mut first[0]) };
        let mut batch = Batch { main: &main[..], ext: Vec::new(), pieces, flags };
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
                            batch.ext.push(v);
                            let arena = batch.ext.len();
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
        // This batch's open chunk moves aside; the next batch is read while
        // this one's chunks are hashed and the new ones stored, on every core.
        open.carry(&batch);
        let stuck = batch.pieces.is_empty() && queue.is_empty();
        let more = next_item < items.len() || active.is_some();
        let next = if more { fill_batch(&mut queue, cap_blocks) } else { Vec::new() };
        let (ids, read) = rayon::join(
            || -> Result<Vec<ChunkId>> {
                let datas: Vec<&[u8]> = cuts
                    .iter()
                    .map(|c| match &c.bytes {
                        Bytes::Slice { arena, off, len } => &batch.arena(*arena)[*off..*off + *len],
                        Bytes::Owned(v) => &v[..],
                    })
                    .collect();
                let ids: Vec<ChunkId> = datas.par_iter().map(|d| keys.hash(d)).collect();
                let chunks: Vec<(ChunkId, &[u8])> = ids.iter().copied().zip(datas.iter().copied()).collect();
                let hint: Option<Vec<bool>> = known.map(|k| {
                    cuts.iter()
                        .zip(&chunks)
                        .map(|(c, (id, d))| k.contains(&Extent { offset: c.blk * BS, len: d.len() as u64, id: *id }))
                        .collect()
                });
                store_new(store, keys, params, &chunks, hint.as_deref(), added, reader.cancel)?;
                Ok(ids)
            },
            || read_pieces(reader, &next, other),
        );
        for (c, id) in cuts.iter().zip(ids?) {
            out.chunks.push((c.blk, c.n, id));
        }
        let flags = read?;
        if more {
            ahead = Some((next, flags));
            cur = 1 - cur;
        }
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
fn emit(c: Option<(u64, u32)>, open: &mut Open, batch: &Batch<'_>, cuts: &mut Vec<Cut>) {
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
