//! The incremental model of 4 KiB CDC with change tracking (CBT).
//!
//! Given the parent's chunks (v1), the new image (v2 updated in place) and
//! the 64 KiB blocks that changed (what CBT reports), re-chunk only around
//! each changed range: start at the start of the parent's chunk that holds
//! the range's first byte or ends right before it (the cut decisions before
//! it are the parent's, since the bytes are; a chunk ending there may have
//! been ended by a zero block that is now data), cut with a fresh state, and stop at the first position at or past
//! the range's end where the new state is at a chunk boundary and the
//! parent's is too (not inside one of its chunks): from there on the bytes
//! are the parent's, and so are the cuts, up to the next changed range. A
//! changed range reached before that is merged in.
//!
//! The resulting chunk list (parent's chunks outside the re-chunked spans,
//! new ones inside) is checked against a full chunking of v2.

use std::ops::Range;

use anyhow::Result;

use crate::chunkers::{BLOCK, Cdc4kParams, Cdc4kState, is_zero};
use crate::image::Image;

/// What the incremental model measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resync {
    /// Changed 64 KiB blocks, as merged ranges: count and bytes.
    pub(crate) changed_ranges: u64,
    /// Bytes of changed 64 KiB blocks (what fixed blocks re-read with CBT).
    pub(crate) changed_bytes: u64,
    /// Re-chunked spans (after merging ranges reached while re-chunking).
    pub(crate) spans: u64,
    /// Bytes re-chunked (read and cut): the spans' total length.
    pub(crate) read_bytes: u64,
    /// Of those, bytes before the changed ranges (back to the parent's cut).
    pub(crate) before_bytes: u64,
    /// Of those, bytes past the changed ranges until resynchronisation.
    pub(crate) after_bytes: u64,
    /// Distance past a span's last changed byte to resynchronisation, sorted.
    pub(crate) distances: Vec<u64>,
    /// Whether the chunk list equals a full chunking of v2.
    pub(crate) identical: bool,
    /// Chunks re-cut.
    pub(crate) chunks: u64,
}

/// The parent's chunk containing `p` strictly inside (start < p < end).
fn inside(chunks: &[Range<u64>], p: u64) -> Option<&Range<u64>> {
    let i = chunks.partition_point(|c| c.start < p);
    i.checked_sub(1).map(|j| &chunks[j]).filter(|c| c.end > p)
}

/// Runs the model. `v1` and `v2_full` are chunk lists `(offset, len)` in
/// offset order; `changed` the changed 64 KiB ranges, sorted and merged.
pub(crate) fn model(
    p: Cdc4kParams,
    v1: &[(u64, u32)],
    v2_full: &[(u64, u32)],
    v2: &Image,
    changed: &[Range<u64>],
) -> Result<Resync> {
    let parent: Vec<Range<u64>> = v1.iter().map(|&(o, l)| o..o + u64::from(l)).collect();
    let mut out = Resync {
        changed_ranges: changed.len() as u64,
        changed_bytes: changed.iter().map(|r| r.end - r.start).sum(),
        ..Resync::default()
    };
    let mut recut: Vec<Range<u64>> = Vec::new();
    let mut spans: Vec<Range<u64>> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut buf_at = u64::MAX;
    let mut i = 0;
    while i < changed.len() {
        let first = changed[i].start;
        let mut end = changed[i].end;
        // Back to the start of the parent's chunk holding `first`, or ending
        // at it: a chunk of the parent that ends at `first` may have been
        // ended by a zero block there, which v2 may no longer have.
        let j = parent.partition_point(|ch| ch.start < first);
        let c = j.checked_sub(1).map(|j| &parent[j]).filter(|ch| ch.end >= first).map_or(first, |ch| ch.start);
        let mut st = Cdc4kState::new(p);
        let mut pos = c;
        loop {
            while i + 1 < changed.len() && changed[i + 1].start <= pos.max(end) {
                i += 1;
                end = end.max(changed[i].end);
            }
            if pos >= end && st.at_boundary() && inside(&parent, pos).is_none() {
                break;
            }
            if pos >= v2.size {
                recut.extend(st.end());
                break;
            }
            if buf_at == u64::MAX || pos < buf_at || pos + BLOCK as u64 > buf_at + buf.len() as u64 {
                let n = (v2.size - pos).min(buf.len() as u64) as usize;
                v2.read_at(pos, &mut buf[..n])?;
                buf_at = pos;
            }
            let at = (pos - buf_at) as usize;
            let b = &buf[at..at + BLOCK];
            if is_zero(b) {
                recut.extend(st.end());
            } else {
                recut.extend(st.push(pos, p.hash(b)));
            }
            pos += BLOCK as u64;
        }
        let stop = pos.min(v2.size).max(end.min(v2.size));
        out.before_bytes += first - c;
        out.after_bytes += stop.saturating_sub(end);
        out.distances.push(stop.saturating_sub(end));
        spans.push(c..stop);
        i += 1;
    }
    out.spans = spans.len() as u64;
    out.read_bytes = spans.iter().map(|s| s.end - s.start).sum();
    out.chunks = recut.len() as u64;
    out.distances.sort_unstable();
    // The parent's chunks outside the spans, and the re-cut ones.
    let mut merged: Vec<(u64, u32)> = parent
        .iter()
        .filter(|c| {
            let j = spans.partition_point(|s| s.end <= c.start);
            j == spans.len() || spans[j].start >= c.end
        })
        .map(|c| (c.start, (c.end - c.start) as u32))
        .chain(recut.iter().map(|c| (c.start, (c.end - c.start) as u32)))
        .collect();
    merged.sort_unstable();
    out.identical = merged == v2_full;
    if !out.identical {
        let k = merged.iter().zip(v2_full).position(|(a, b)| a != b).unwrap_or(merged.len().min(v2_full.len()));
        let around = |l: &[(u64, u32)]| l[k.saturating_sub(2)..(k + 3).min(l.len())].to_vec();
        eprintln!(
            "resync: the incremental chunk list departs from the full one at chunk {k}: {:?} vs {:?}; spans near: {:?}",
            around(&merged),
            around(v2_full),
            spans
                .iter()
                .filter(|s| merged.get(k).is_some_and(|m| s.end + (1 << 20) > m.0 && s.start < m.0 + (1 << 20)))
                .collect::<Vec<_>>()
        );
    }
    Ok(out)
}

/// A percentile of sorted values.
pub(crate) fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkers::{Cdc4k, Chunker};

    fn disk(blocks: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut d: Vec<u8> = (0..blocks * BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        for z in [5usize, 6, 40, 41, 42, 43, 48, 96, 120, 121, 144, 192, 208, 300] {
            d[z * BLOCK..(z + 1) * BLOCK].fill(0);
        }
        d
    }

    fn list(p: Cdc4kParams, d: &[u8]) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut c = Cdc4k::new(p);
        let mut emit = |o: u64, b: &[u8]| out.push((o, b.len() as u32));
        c.feed(0, d, &mut emit);
        c.finish(&mut emit);
        out
    }

    fn image(dir: &std::path::Path, name: &str, d: &[u8]) -> Image {
        let p = dir.join(name);
        std::fs::write(&p, d).expect("write image");
        Image::open(&p).expect("open image")
    }

    /// Edits of every kind — data changed, a zero block filled (right where
    /// the parent's chunk ended), data zeroed — re-chunked incrementally give
    /// exactly the full chunking of the new image.
    #[test]
    fn incremental_chunking_equals_full_chunking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = disk(512, 11);
        let mut b = a.clone();
        // 48, 96, 144, 192, 208: zero blocks of v1 at 64 KiB boundaries, where a
        // chunk of the parent ended; v2 fills them.
        for blk in [2usize, 40, 48, 96, 100, 101, 144, 192, 208, 250, 251, 252, 400] {
            let v = if blk == 250 { 0 } else { 0x5A ^ blk as u8 };
            b[blk * BLOCK..(blk + 1) * BLOCK].fill(v);
            b[blk * BLOCK] = v.wrapping_add(1);
        }
        b[250 * BLOCK] = 0; // block 250 all zero now
        let (ia, ib) = (image(dir.path(), "a.img", &a), image(dir.path(), "b.img", &b));
        let changed = crate::image::changed_ranges(&ia, &ib, 64 << 10).expect("diff");
        assert!(!changed.is_empty());
        for p in [Cdc4kParams::kib(16, 32, 64).sampled(), Cdc4kParams::kib(16, 64, 256), Cdc4kParams::kib(8, 32, 128)] {
            let r = model(p, &list(p, &a), &list(p, &b), &ib, &changed).expect("model");
            assert!(r.identical, "{p:?}");
            assert!(r.read_bytes > 0 && r.spans > 0);
        }
    }
}
