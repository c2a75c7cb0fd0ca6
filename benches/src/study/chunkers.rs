//! The candidate chunkers, as streaming state machines over a disk image.
//!
//! A chunker is fed the image's allocated data in pieces, in offset order;
//! bytes between the end of one piece and the start of the next are a hole
//! (zero). It emits chunks `(offset, bytes)` in offset order. Every
//! candidate treats all-zero 4 KiB blocks as the engine treats zero blocks
//! today: never stored. How each one does it:
//!
//! - [`Fixed`]: 64 KiB blocks aligned to the disk; a block is skipped when
//!   all of it is zero (zero 4 KiB blocks inside a data block are stored
//!   with it), as the engine does today.
//! - [`Cdc4k`]: content-defined cut points on 4 KiB boundaries. An all-zero
//!   4 KiB block (or a hole) ends the current chunk and is skipped. A data
//!   block is appended to the current chunk, and the chunk ends after it
//!   when it holds at least `min` blocks and the block's cut hash (a cheap
//!   hash of those 4 KiB alone, [`cut_hash`]) is below a threshold, or when
//!   it holds `max` blocks. The decision depends only on the block's content
//!   and on where the current chunk started, so after a shift by any number
//!   of blocks the same cuts are found again from the first cut on.
//! - [`ByteCdc`]: FastCDC 2020 (the `fastcdc` crate, normalisation level 1)
//!   on bytes, run separately over each stretch of non-zero 4 KiB blocks: a
//!   zero block (or a hole) ends the stretch, and with it a chunk.

use std::ops::Range;

/// The unit of allocation of the file systems measured, and of the holes.
pub(crate) const BLOCK: usize = 4096;

/// Receives the chunks a chunker cuts: `(offset on the disk, bytes)`.
pub(crate) type Emit<'a> = dyn FnMut(u64, &[u8]) + 'a;

/// A streaming chunker.
pub(crate) trait Chunker: Send {
    /// A short name with its parameters, for tables.
    fn name(&self) -> String;
    /// Data at `offset` (a multiple of 4 KiB, after the previous piece's end;
    /// what lies between is zero). `data.len()` is a multiple of 4 KiB except
    /// possibly at the end of the disk.
    fn feed(&mut self, offset: u64, data: &[u8], emit: &mut Emit<'_>);
    /// The end of the disk: emits what is pending.
    fn finish(&mut self, emit: &mut Emit<'_>);
    /// A fresh chunker with the same parameters.
    fn fresh(&self) -> Box<dyn Chunker>;
    /// The parameters of a 4 KiB CDC chunker (`None` for the others).
    fn cdc4k_params(&self) -> Option<Cdc4kParams> {
        None
    }
}

/// Whether every byte is zero.
pub(crate) fn is_zero(b: &[u8]) -> bool {
    alike_core::is_zero(b)
}

/// The cut hash of one 4 KiB block: the sum and the xor of its 64-bit
/// words, over four lanes each (adds and xors that even baseline SSE2
/// vectorises, at about memory speed), mixed by murmur3's fmix64. Every
/// byte counts; the value is content only (not position), which is all a
/// cut decision needs. Blocks that fold alike (a repeated 8-byte pattern
/// and its permutations) all decide alike, which only makes their chunks
/// longer. An xor-multiply hash of the words measured 2–3× slower.
pub(crate) fn cut_hash(block: &[u8]) -> u64 {
    let (mut s, mut x) = ([0u64; 4], [0u64; 4]);
    let mut words = block.chunks_exact(32);
    for w in words.by_ref() {
        for l in 0..4 {
            let v = u64::from_le_bytes(w[l * 8..l * 8 + 8].try_into().expect("8 bytes"));
            s[l] = s[l].wrapping_add(v);
            x[l] ^= v;
        }
    }
    let mut t = 0u64;
    for (i, &b) in words.remainder().iter().enumerate() {
        t ^= u64::from(b) << ((i % 8) * 8);
    }
    let mut h = t;
    for l in 0..4 {
        h = (h ^ s[l]).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31);
        h = (h ^ x[l]).wrapping_mul(0xC2B2_AE3D_27D4_EB4F).rotate_left(27);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// The sampled cut hash: the engine's own (`alike_core::cut_hash`, the
/// format's definition), so that the study models exactly what is stored.
pub(crate) fn cut_hash_sampled(block: &[u8]) -> u64 {
    alike_core::cut_hash(block)
}

// ---------------------------------------------------------------- fixed

/// Fixed, disk-aligned blocks (today's engine: 64 KiB).
pub(crate) struct Fixed {
    size: usize,
    /// The block being filled across pieces: its index and bytes.
    cur: Option<u64>,
    buf: Vec<u8>,
    disk_size: u64,
}

impl Fixed {
    /// Blocks of `size` bytes over a disk of `disk_size` bytes.
    pub(crate) fn new(size: usize, disk_size: u64) -> Fixed {
        Fixed { size, cur: None, buf: vec![0; size], disk_size }
    }
    fn block_len(&self, idx: u64) -> usize {
        (self.disk_size - idx * self.size as u64).min(self.size as u64) as usize
    }
    fn flush(&mut self, emit: &mut Emit<'_>) {
        if let Some(idx) = self.cur.take() {
            let n = self.block_len(idx);
            if !is_zero(&self.buf[..n]) {
                emit(idx * self.size as u64, &self.buf[..n]);
            }
        }
    }
}

impl Chunker for Fixed {
    fn name(&self) -> String {
        format!("fixed {} KiB", self.size >> 10)
    }
    fn feed(&mut self, offset: u64, data: &[u8], emit: &mut Emit<'_>) {
        let bs = self.size as u64;
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / bs;
            let (b_start, b_end) = (idx * bs, idx * bs + self.block_len(idx) as u64);
            let upto = b_end.min(end);
            let slice = &data[(pos - offset) as usize..(upto - offset) as usize];
            if self.cur != Some(idx) {
                self.flush(emit);
                if pos == b_start && upto == b_end {
                    // The whole block is in this piece: no copy.
                    if !is_zero(slice) {
                        emit(b_start, slice);
                    }
                    pos = upto;
                    continue;
                }
                self.buf.fill(0);
                self.cur = Some(idx);
            }
            let at = (pos - b_start) as usize;
            self.buf[at..at + slice.len()].copy_from_slice(slice);
            pos = upto;
        }
    }
    fn finish(&mut self, emit: &mut Emit<'_>) {
        self.flush(emit);
    }
    fn fresh(&self) -> Box<dyn Chunker> {
        Box::new(Fixed::new(self.size, self.disk_size))
    }
}

// ----------------------------------------------------------------- cdc4k

/// Parameters of content-defined cuts on 4 KiB boundaries, in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cdc4kParams {
    /// A chunk holds at least this many blocks before a content cut.
    pub(crate) min: u32,
    /// Expected chunk length (blocks) without the max limit.
    pub(crate) avg: u32,
    /// A chunk is cut after this many blocks whatever their content.
    pub(crate) max: u32,
    /// Cut hash over a sample of the block ([`cut_hash_sampled`]) instead
    /// of all of it ([`cut_hash`]).
    pub(crate) sampled: bool,
}

impl Cdc4kParams {
    /// From sizes in KiB (multiples of 4).
    pub(crate) fn kib(min: u32, avg: u32, max: u32) -> Cdc4kParams {
        Cdc4kParams { min: min / 4, avg: avg / 4, max: max / 4, sampled: false }
    }
    /// The same with the sampled cut hash.
    pub(crate) fn sampled(self) -> Cdc4kParams {
        Cdc4kParams { sampled: true, ..self }
    }
    /// The cut hash of a block under these parameters.
    pub(crate) fn hash(&self, block: &[u8]) -> u64 {
        if self.sampled { cut_hash_sampled(block) } else { cut_hash(block) }
    }
    /// The cut threshold: once a chunk holds `min` blocks, each block ends
    /// it with probability p = 1 / (avg - min + 1), so that the expected
    /// length, min - 1 + 1/p blocks, is `avg` (before the max limit).
    pub(crate) fn threshold(&self) -> u64 {
        let d = u64::from(self.avg.saturating_sub(self.min) + 1);
        u64::MAX / d
    }
}

/// The cut decisions of [`Cdc4k`], block by block, apart from the bytes:
/// what the incremental model (`resync.rs`) drives directly.
#[derive(Debug, Clone)]
pub(crate) struct Cdc4kState {
    p: Cdc4kParams,
    threshold: u64,
    /// Start of the current chunk and its length in blocks.
    start: Option<u64>,
    blocks: u32,
}

impl Cdc4kState {
    /// A chunker at a chunk boundary.
    pub(crate) fn new(p: Cdc4kParams) -> Cdc4kState {
        Cdc4kState { p, threshold: p.threshold(), start: None, blocks: 0 }
    }
    /// Whether the state is at a chunk boundary (no chunk open).
    pub(crate) fn at_boundary(&self) -> bool {
        self.start.is_none()
    }
    /// Ends the open chunk (a zero block, a hole, the end of the disk).
    pub(crate) fn end(&mut self) -> Option<Range<u64>> {
        let s = self.start.take()?;
        let r = s..s + u64::from(self.blocks) * BLOCK as u64;
        self.blocks = 0;
        Some(r)
    }
    /// The data block at `off` (not all zero) with its cut hash: returns
    /// the chunk it closes, if any.
    pub(crate) fn push(&mut self, off: u64, hash: u64) -> Option<Range<u64>> {
        if self.start.is_none() {
            self.start = Some(off);
        }
        self.blocks += 1;
        if self.blocks >= self.p.max || (self.blocks >= self.p.min && hash < self.threshold) {
            self.end()
        } else {
            None
        }
    }
}

/// Content-defined cut points on 4 KiB boundaries.
pub(crate) struct Cdc4k {
    st: Cdc4kState,
    /// Bytes of the open chunk carried over from earlier pieces.
    carry: Vec<u8>,
    /// End of the last piece fed.
    next: u64,
}

impl Cdc4k {
    /// A chunker with these parameters.
    pub(crate) fn new(p: Cdc4kParams) -> Cdc4k {
        Cdc4k { st: Cdc4kState::new(p), carry: Vec::new(), next: 0 }
    }
    fn close(&mut self, r: Range<u64>, piece_off: u64, data: &[u8], emit: &mut Emit<'_>) {
        // The chunk's bytes are the carry (from earlier pieces) then this piece's part.
        let in_piece_start = r.start.max(piece_off);
        let part = &data[(in_piece_start - piece_off) as usize..(r.end - piece_off) as usize];
        if self.carry.is_empty() {
            emit(r.start, part);
        } else {
            self.carry.extend_from_slice(part);
            emit(r.start, &self.carry);
            self.carry.clear();
        }
    }
}

impl Chunker for Cdc4k {
    fn name(&self) -> String {
        let p = self.st.p;
        let s = if p.sampled { ", sampled cut hash" } else { "" };
        format!("4 KiB CDC {}/{}/{} KiB{s}", p.min * 4, p.avg * 4, p.max * 4)
    }
    fn feed(&mut self, offset: u64, data: &[u8], emit: &mut Emit<'_>) {
        if offset != self.next {
            // A hole: ends the open chunk (its bytes are all in the carry).
            if let Some(r) = self.st.end() {
                emit(r.start, &self.carry);
                self.carry.clear();
            }
        }
        for (i, b) in data.chunks(BLOCK).enumerate() {
            let off = offset + (i * BLOCK) as u64;
            let closed = if b.len() < BLOCK || is_zero(b) {
                // Zero block (or a partial block at the end of the disk,
                // which no 4 KiB file system has): a boundary, never stored.
                let r = self.st.end();
                if let Some(r) = r {
                    self.close(r, offset, data, emit);
                }
                continue;
            } else {
                self.st.push(off, self.st.p.hash(b))
            };
            if let Some(r) = closed {
                self.close(r, offset, data, emit);
            }
        }
        // Carry the open chunk's bytes from this piece.
        if let Some(s) = self.st.start {
            let from = s.max(offset);
            self.carry.extend_from_slice(&data[(from - offset) as usize..]);
        }
        self.next = offset + data.len() as u64;
    }
    fn finish(&mut self, emit: &mut Emit<'_>) {
        if let Some(r) = self.st.end() {
            emit(r.start, &self.carry);
            self.carry.clear();
        }
    }
    fn fresh(&self) -> Box<dyn Chunker> {
        Box::new(Cdc4k::new(self.st.p))
    }
    fn cdc4k_params(&self) -> Option<Cdc4kParams> {
        Some(self.st.p)
    }
}

// --------------------------------------------------------------- byte CDC

/// FastCDC 2020 over bytes, within stretches of non-zero 4 KiB blocks.
pub(crate) struct ByteCdc {
    min: usize,
    avg: usize,
    max: usize,
    masks: (u64, u64),
    /// Bytes of the open stretch not yet cut, and where they start.
    pending: Vec<u8>,
    pending_off: u64,
    next: u64,
}

impl ByteCdc {
    /// min/avg/max in bytes.
    pub(crate) fn new(min: usize, avg: usize, max: usize) -> ByteCdc {
        let masks = fastcdc::v2020::select_masks(avg, fastcdc::v2020::Normalization::Level1);
        ByteCdc { min, avg, max, masks, pending: Vec::new(), pending_off: 0, next: 0 }
    }
    /// The length of the next chunk of `src` (the start of a stretch's uncut rest).
    fn cut(&self, src: &[u8]) -> usize {
        let (ms, ml) = self.masks;
        let (_, n) = fastcdc::v2020::cut(src, self.min, self.avg, self.max, ms, ml, ms << 1, ml << 1);
        n.max(1).min(src.len())
    }
    /// Cuts chunks from the front of `src` (at disk offset `off`) while at
    /// least `max` bytes remain, or all of it when `last`; returns how many
    /// bytes were consumed.
    fn cut_run(&self, off: u64, src: &[u8], last: bool, emit: &mut Emit<'_>) -> usize {
        let mut pos = 0;
        while pos < src.len() && (last || src.len() - pos >= self.max) {
            let n = self.cut(&src[pos..]);
            emit(off + pos as u64, &src[pos..pos + n]);
            pos += n;
        }
        pos
    }
    fn end_stretch(&mut self, emit: &mut Emit<'_>) {
        if !self.pending.is_empty() {
            let p = std::mem::take(&mut self.pending);
            self.cut_run(self.pending_off, &p, true, emit);
            self.pending = p;
            self.pending.clear();
        }
    }
    /// A run of non-zero blocks `run` at `off`, continuing the pending
    /// bytes when there are any; `last` when the stretch ends with it.
    /// Only the uncut rest (< max bytes) is ever copied.
    fn run(&mut self, off: u64, run: &[u8], last: bool, emit: &mut Emit<'_>) {
        let mut t = 0usize; // bytes of `run` copied into `pending`
        let mut s = 0usize; // where the uncut bytes start in `run` once `pending` is done
        while !self.pending.is_empty() {
            let take = (self.max - self.pending.len().min(self.max)).min(run.len() - t);
            self.pending.extend_from_slice(&run[t..t + take]);
            t += take;
            if self.pending.len() < self.max && !(last && t == run.len()) {
                return; // all of `run` is pending, the stretch goes on
            }
            let n = self.cut(&self.pending);
            emit(self.pending_off, &self.pending[..n]);
            let e = self.pending_off + n as u64;
            if e >= off {
                // The chunk reached into `run`: go on in `run` itself.
                s = (e - off) as usize;
                self.pending.clear();
            } else {
                self.pending.drain(..n);
                self.pending_off = e;
            }
        }
        if s >= run.len() {
            return;
        }
        let used = self.cut_run(off + s as u64, &run[s..], last, emit);
        let rest = &run[s + used..];
        if !rest.is_empty() {
            self.pending_off = off + (s + used) as u64;
            self.pending.extend_from_slice(rest);
        }
    }
}

impl Chunker for ByteCdc {
    fn name(&self) -> String {
        let k = |b: usize| if b >= 1 << 20 { format!("{} MiB", b >> 20) } else { format!("{} KiB", b >> 10) };
        format!("FastCDC {}/{}/{}", k(self.min), k(self.avg), k(self.max))
    }
    fn feed(&mut self, offset: u64, data: &[u8], emit: &mut Emit<'_>) {
        if offset != self.next {
            self.end_stretch(emit);
        }
        // Split the piece into runs of non-zero blocks.
        let mut run_start: Option<usize> = None;
        for (i, b) in data.chunks(BLOCK).enumerate() {
            let at = i * BLOCK;
            if b.len() == BLOCK && !is_zero(b) {
                run_start.get_or_insert(at);
                continue;
            }
            if let Some(s) = run_start.take() {
                self.run(offset + s as u64, &data[s..at], true, emit);
            } else {
                self.end_stretch(emit);
            }
        }
        if let Some(s) = run_start {
            self.run(offset + s as u64, &data[s..], false, emit);
        }
        self.next = offset + data.len() as u64;
    }
    fn finish(&mut self, emit: &mut Emit<'_>) {
        self.end_stretch(emit);
    }
    fn fresh(&self) -> Box<dyn Chunker> {
        Box::new(ByteCdc::new(self.min, self.avg, self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text-like data with some structure, deterministic.
    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 4096 < 100 { b'a' + (i % 7) as u8 } else { (x >> 24) as u8 }
            })
            .collect()
    }

    /// A disk of `blocks` 4 KiB blocks with some zero blocks.
    fn disk(blocks: usize, seed: u64) -> Vec<u8> {
        let mut d = data(blocks * BLOCK, seed);
        for z in [3usize, 4, 90, 91, 92, 200] {
            if z < blocks {
                d[z * BLOCK..(z + 1) * BLOCK].fill(0);
            }
        }
        d
    }

    /// Runs `c` over `disk` fed in pieces of `piece` bytes (skipping
    /// all-zero pieces as holes), returns the chunks.
    fn chunks(c: &mut dyn Chunker, disk: &[u8], piece: usize) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut emit = |o: u64, b: &[u8]| out.push((o, b.to_vec()));
        for (i, p) in disk.chunks(piece).enumerate() {
            if !is_zero(p) {
                c.feed((i * piece) as u64, p, &mut emit);
            }
        }
        c.finish(&mut emit);
        out
    }

    fn check_cover(disk: &[u8], cs: &[(u64, Vec<u8>)]) {
        let mut rebuilt = vec![0u8; disk.len()];
        let mut last = 0u64;
        for (o, b) in cs {
            assert!(*o >= last, "chunks in order");
            rebuilt[*o as usize..*o as usize + b.len()].copy_from_slice(b);
            last = o + b.len() as u64;
        }
        assert_eq!(rebuilt, disk, "chunks rebuild the disk (holes as zeroes)");
    }

    fn all() -> Vec<Box<dyn Chunker>> {
        vec![
            Box::new(Fixed::new(65536, 300 * BLOCK as u64)),
            Box::new(Cdc4k::new(Cdc4kParams::kib(16, 64, 256))),
            Box::new(Cdc4k::new(Cdc4kParams::kib(8, 16, 32))),
            Box::new(Cdc4k::new(Cdc4kParams::kib(8, 16, 32).sampled())),
            Box::new(ByteCdc::new(2048, 8192, 32768)),
            Box::new(ByteCdc::new(16384, 65536, 262144)),
        ]
    }

    #[test]
    fn chunks_rebuild_the_disk_whatever_the_piece_size() {
        let d = disk(300, 7);
        for c in all() {
            let reference = chunks(c.fresh().as_mut(), &d, d.len());
            check_cover(&d, &reference);
            for piece in [BLOCK, 3 * BLOCK, 64 * 1024, 100 * BLOCK] {
                let got = chunks(c.fresh().as_mut(), &d, piece);
                assert_eq!(
                    got.iter().map(|(o, b)| (*o, b.len())).collect::<Vec<_>>(),
                    reference.iter().map(|(o, b)| (*o, b.len())).collect::<Vec<_>>(),
                    "{} with {piece}-byte pieces",
                    c.name()
                );
                assert_eq!(got, reference);
            }
        }
    }

    #[test]
    fn no_zero_block_is_stored_by_cdc() {
        let d = disk(300, 9);
        for mut c in [
            Box::new(Cdc4k::new(Cdc4kParams::kib(16, 64, 256))) as Box<dyn Chunker>,
            Box::new(ByteCdc::new(2048, 8192, 32768)),
        ] {
            for (_, b) in chunks(c.as_mut(), &d, 64 * 1024) {
                assert!(b.chunks(BLOCK).all(|x| !is_zero(x)), "{}", c.name());
            }
        }
    }

    #[test]
    fn cdc4k_finds_the_same_chunks_after_a_shift_by_whole_blocks() {
        let d = data(400 * BLOCK, 3);
        let mut shifted = vec![0u8; 0];
        shifted.extend_from_slice(&data(7 * BLOCK, 99)); // 7 other blocks in front
        shifted.extend_from_slice(&d);
        let p = Cdc4kParams::kib(16, 64, 256);
        let a: std::collections::HashSet<Vec<u8>> =
            chunks(&mut Cdc4k::new(p), &d, 1 << 20).into_iter().map(|c| c.1).collect();
        let b = chunks(&mut Cdc4k::new(p), &shifted, 1 << 20);
        let new: usize = b.iter().filter(|c| !a.contains(&c.1)).map(|c| c.1.len()).sum();
        // Only the chunks up to the first common cut differ.
        assert!(new <= 7 * BLOCK + 2 * 256 * 1024, "{new} new bytes");
        // Fixed 64 KiB blocks find nothing again after a 28 KiB shift.
        let fa: std::collections::HashSet<Vec<u8>> =
            chunks(&mut Fixed::new(65536, d.len() as u64), &d, 1 << 20).into_iter().map(|c| c.1).collect();
        let fb = chunks(&mut Fixed::new(65536, shifted.len() as u64), &shifted, 1 << 20);
        assert!(fb.iter().all(|c| !fa.contains(&c.1)));
    }

    #[test]
    fn cdc4k_mean_chunk_size_is_near_avg() {
        let d = data(4000 * BLOCK, 5);
        for p in [Cdc4kParams::kib(16, 64, 256), Cdc4kParams::kib(16, 64, 256).sampled()] {
            let cs = chunks(&mut Cdc4k::new(p), &d, 1 << 20);
            let mean = d.len() / cs.len();
            assert!((52 * 1024..76 * 1024).contains(&mean), "mean {mean} with {p:?}");
        }
    }
}
