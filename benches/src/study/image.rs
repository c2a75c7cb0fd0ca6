//! Reading a raw image's allocated data in pieces, and comparing two images
//! block by block (the changed ranges a CBT-driven backup would be given).

use std::ops::Range;
use std::path::Path;

use alike_core::{DiskSource, RawFileSource};
use anyhow::{Result, ensure};

use crate::chunkers::BLOCK;

/// A raw image and its allocated ranges (SEEK_DATA/SEEK_HOLE), widened to
/// whole 4 KiB blocks.
pub(crate) struct Image {
    src: RawFileSource,
    /// Virtual size.
    pub(crate) size: u64,
    /// Allocated ranges, 4 KiB-aligned, sorted, disjoint.
    pub(crate) ranges: Vec<Range<u64>>,
}

impl Image {
    /// Opens `path`; its size must be a whole number of 4 KiB blocks.
    pub(crate) fn open(path: &Path) -> Result<Image> {
        let src = RawFileSource::open(path)?;
        let size = src.size();
        ensure!(size % BLOCK as u64 == 0, "{}: size {size} is not a multiple of 4 KiB", path.display());
        let b = BLOCK as u64;
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for r in src.allocated_ranges()? {
            let (s, e) = (r.start / b * b, r.end.div_ceil(b) * b);
            match ranges.last_mut() {
                Some(l) if s <= l.end => l.end = l.end.max(e),
                _ => ranges.push(s..e),
            }
        }
        Ok(Image { src, size, ranges })
    }
    /// Allocated bytes.
    pub(crate) fn allocated(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }
    /// Reads `buf.len()` bytes at `off`.
    pub(crate) fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.src.read_at(off, buf)?)
    }
    /// Calls `f(offset, bytes)` for the allocated data in order, in pieces
    /// of at most `piece` bytes (a multiple of 4 KiB).
    pub(crate) fn for_each_piece(&self, piece: usize, mut f: impl FnMut(u64, &[u8])) -> Result<()> {
        let mut buf = vec![0u8; piece];
        for r in &self.ranges {
            let mut off = r.start;
            while off < r.end {
                let n = (r.end - off).min(piece as u64) as usize;
                self.src.read_at(off, &mut buf[..n])?;
                f(off, &buf[..n]);
                off += n as u64;
            }
        }
        Ok(())
    }
    /// Up to `limit` bytes of allocated data from the start, as pieces kept
    /// in memory (the throughput sample).
    pub(crate) fn sample(&self, limit: u64, piece: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut total = 0u64;
        for r in &self.ranges {
            let mut off = r.start;
            while off < r.end && total < limit {
                let n = (r.end - off).min(piece as u64).min(limit - total) as usize;
                let n = n.div_ceil(BLOCK) * BLOCK;
                let n = n.min((r.end - off) as usize);
                let mut v = vec![0u8; n];
                self.src.read_at(off, &mut v)?;
                out.push((off, v));
                off += n as u64;
                total += n as u64;
            }
        }
        Ok(out)
    }
}

/// The `unit`-byte blocks (as sorted, merged byte ranges) where `a` and
/// `b` differ, holes read as zero. Both images must have the same size.
pub(crate) fn changed_ranges(a: &Image, b: &Image, unit: u64) -> Result<Vec<Range<u64>>> {
    ensure!(a.size == b.size, "the images differ in size ({} vs {})", a.size, b.size);
    // Only blocks allocated in either image can differ.
    let mut spans: Vec<Range<u64>> = a.ranges.iter().chain(&b.ranges).cloned().collect();
    spans.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in spans {
        let (s, e) = (r.start / unit * unit, r.end.div_ceil(unit) * unit);
        match merged.last_mut() {
            Some(l) if s <= l.end => l.end = l.end.max(e),
            _ => merged.push(s..e),
        }
    }
    let step = 16 * unit as usize;
    let (mut ba, mut bb) = (vec![0u8; step], vec![0u8; step]);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in merged {
        let mut off = r.start;
        while off < r.end.min(a.size) {
            let n = (r.end.min(a.size) - off).min(step as u64) as usize;
            a.read_at(off, &mut ba[..n])?;
            b.read_at(off, &mut bb[..n])?;
            for (i, (x, y)) in ba[..n].chunks(unit as usize).zip(bb[..n].chunks(unit as usize)).enumerate() {
                if x != y {
                    let s = off + (i as u64) * unit;
                    let e = s + x.len() as u64;
                    match out.last_mut() {
                        Some(l) if l.end == s => l.end = e,
                        _ => out.push(s..e),
                    }
                }
            }
            off += n as u64;
        }
    }
    Ok(out)
}
