//! One view of a disk's block maps for every reader, whatever the store's
//! chunking: a disk is a row of *windows* (one block map each), and a
//! window is a sorted list of *extents* (disk bytes held by one chunk);
//! what no extent covers is a hole.
//!
//! Fixed-block disks (format 1) store a bitmap map per window
//! ([`crate::BlockMap`]); content-defined disks (format 2) store an
//! [`ExtentMap`]. Restore, verify, GC, vaulting and NBD read both through
//! [`load_window`] and never look at the map kind again.

use std::ops::Range;

use crate::backup::{load_map, read_map_chunk};
use crate::{CDC_BLOCK, ChunkId, ChunkStore, DiskRecord, Error, Keys, Result};

/// Disk bytes held by one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Byte offset on the disk.
    pub offset: u64,
    /// Length in bytes (the chunk's length).
    pub len: u64,
    /// The chunk.
    pub id: ChunkId,
}

impl Extent {
    /// End offset (exclusive).
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// One window of a disk: its byte range and its extents, sorted, disjoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    /// The disk bytes the window covers.
    pub range: Range<u64>,
    /// Its extents in disk order; gaps are holes.
    pub extents: Vec<Extent>,
}

impl Window {
    /// The extent holding byte `pos`, by binary search.
    pub fn find(&self, pos: u64) -> Option<&Extent> {
        let i = self.extents.partition_point(|e| e.end() <= pos);
        self.extents.get(i).filter(|e| e.offset <= pos)
    }
    /// The holes of the window, in order.
    pub fn holes(&self) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = self.range.start;
        for e in &self.extents {
            if e.offset > at {
                out.push(at..e.offset);
            }
            at = e.end();
        }
        if at < self.range.end {
            out.push(at..self.range.end);
        }
        out
    }
    /// Bytes held by extents.
    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
}

/// A content-defined disk's block map (chunk kind 1, format 2): the
/// window's extents as (start, length) in 4 KiB blocks from the window's
/// start, and the chunk id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtentMap {
    /// (start block, blocks, chunk id), sorted by start, disjoint.
    pub extents: Vec<(u16, u16, ChunkId)>,
}

/// Bytes per encoded extent.
const EXTENT_LEN: usize = 2 + 2 + 32;

impl ExtentMap {
    /// Encodes: `u32 LE count ‖ count × (start u16 LE ‖ blocks u16 LE ‖ id 32 bytes)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + EXTENT_LEN * self.extents.len());
        out.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        for (s, n, id) in &self.extents {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&id.0);
        }
        out
    }

    /// Decodes what [`ExtentMap::encode`] wrote for a window of
    /// `window_blocks` 4 KiB blocks, checking every length and that extents
    /// are non-empty, sorted, disjoint, inside the window and at most
    /// `max_blocks` long.
    ///
    /// # Errors
    /// [`Error::Malformed`] naming the offset of the first inconsistency.
    pub fn decode(b: &[u8], window_blocks: u32, max_blocks: u32, what: &str) -> Result<ExtentMap> {
        let bad =
            |offset: usize, reason: String| Error::Malformed { what: what.to_string(), offset: offset as u64, reason };
        if b.len() < 4 {
            return Err(bad(0, "shorter than its count".into()));
        }
        let n = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
        if n > window_blocks as usize {
            return Err(bad(0, format!("{n} extents in a window of {window_blocks} blocks")));
        }
        if b.len() != 4 + EXTENT_LEN * n {
            return Err(bad(4, format!("{} bytes for {n} extents", b.len() - 4)));
        }
        let mut extents = Vec::with_capacity(n);
        let mut end = 0u32;
        for (i, e) in b[4..].chunks_exact(EXTENT_LEN).enumerate() {
            let at = 4 + i * EXTENT_LEN;
            let s = u16::from_le_bytes([e[0], e[1]]);
            let len = u16::from_le_bytes([e[2], e[3]]);
            if len == 0 || u32::from(len) > max_blocks {
                return Err(bad(at, format!("extent {i} is {len} blocks long (1 to {max_blocks} allowed)")));
            }
            if u32::from(s) < end {
                return Err(bad(at, format!("extent {i} starts at block {s}, before the end of the previous one")));
            }
            end = u32::from(s) + u32::from(len);
            if end > window_blocks {
                return Err(bad(at, format!("extent {i} ends at block {end}, past the window ({window_blocks})")));
            }
            extents.push((s, len, ChunkId(e[4..].try_into().expect("32 bytes"))));
        }
        Ok(ExtentMap { extents })
    }
}

impl DiskRecord {
    /// Bytes of disk per block map.
    pub fn window_bytes(&self) -> u64 {
        u64::from(self.block_size) * u64::from(self.blocks_per_map)
    }
    /// Number of block maps the disk needs.
    pub fn window_count(&self) -> u64 {
        self.block_count().div_ceil(u64::from(self.blocks_per_map.max(1)))
    }
    /// The disk bytes of window `m`.
    pub fn window_range(&self, m: usize) -> Range<u64> {
        let w = self.window_bytes();
        (m as u64 * w).min(self.size)..((m as u64 + 1) * w).min(self.size)
    }
    /// Checks the record's geometry: block size and map size fit its
    /// chunking, and the map count covers the disk.
    ///
    /// # Errors
    /// [`Error::Malformed`] naming the disk.
    pub fn check_geometry(&self, what: &str) -> Result<()> {
        let bad = |reason: String| Error::Malformed { what: what.to_string(), offset: 0, reason };
        match &self.chunking {
            Some(p) => {
                p.validate().map_err(|e| bad(format!("chunking: {e}")))?;
                if self.block_size != CDC_BLOCK || self.blocks_per_map == 0 || self.blocks_per_map > 1 << 16 {
                    return Err(bad(format!(
                        "content-defined disk with {}-byte blocks and {} blocks per map",
                        self.block_size, self.blocks_per_map
                    )));
                }
            }
            None => {
                if !crate::valid_block_size(self.block_size) || self.blocks_per_map != crate::BLOCKS_PER_MAP {
                    return Err(bad(format!(
                        "{}-byte blocks and {} blocks per map",
                        self.block_size, self.blocks_per_map
                    )));
                }
            }
        }
        if self.maps.len() as u64 != self.window_count() {
            return Err(bad(format!("{} block maps for {} blocks", self.maps.len(), self.block_count())));
        }
        Ok(())
    }
}

/// Reads window `m` of `disk` (either map kind) as extents.
///
/// # Errors
/// Missing or corrupt map chunk; a map of the wrong kind or length.
pub fn load_window(store: &dyn ChunkStore, keys: &Keys, disk: &DiskRecord, m: usize) -> Result<Window> {
    let range = disk.window_range(m);
    let id = disk.maps.get(m).ok_or_else(|| Error::Malformed {
        what: format!("disk {}", disk.position),
        offset: m as u64,
        reason: format!("block map {m} of {}", disk.maps.len()),
    })?;
    let bs = u64::from(disk.block_size);
    let blocks = range.end.div_ceil(bs) - range.start / bs;
    let mut extents = Vec::new();
    match &disk.chunking {
        None => {
            let map = load_map(store, keys, id, blocks as usize)?;
            for (i, e) in map.entries.iter().enumerate() {
                if let Some(id) = e {
                    let offset = range.start + i as u64 * bs;
                    extents.push(Extent { offset, len: (range.end - offset).min(bs), id: *id });
                }
            }
        }
        Some(p) => {
            let plain = read_map_chunk(store, keys, id)?;
            let map =
                ExtentMap::decode(&plain, blocks as u32, p.max / CDC_BLOCK, &format!("block map {}", id.short()))?;
            for (s, n, id) in map.extents {
                let offset = range.start + u64::from(s) * bs;
                extents.push(Extent { offset, len: (offset + u64::from(n) * bs).min(range.end) - offset, id });
            }
        }
    }
    Ok(Window { range, extents })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn extent_map_checks() {
        let id = ChunkId([7; 32]);
        let m = ExtentMap { extents: vec![(0, 4, id), (4, 16, id), (30, 2, id)] };
        let b = m.encode();
        assert_eq!(b.len(), 4 + 3 * 36);
        assert_eq!(ExtentMap::decode(&b, 32, 16, "t").unwrap(), m);
        assert!(ExtentMap::decode(&b, 31, 16, "t").unwrap_err().to_string().contains("past the window"));
        assert!(ExtentMap::decode(&b, 32, 8, "t").unwrap_err().to_string().contains("16 blocks long"));
        let overlap = ExtentMap { extents: vec![(0, 4, id), (3, 1, id)] }.encode();
        assert!(ExtentMap::decode(&overlap, 32, 16, "t").unwrap_err().to_string().contains("before the end"));
        assert!(ExtentMap::decode(&b[..b.len() - 1], 32, 16, "t").is_err());
    }

    #[test]
    fn window_lookup_and_holes() {
        let id = ChunkId([1; 32]);
        let w = Window {
            range: 100..200,
            extents: vec![Extent { offset: 110, len: 10, id }, Extent { offset: 120, len: 30, id }],
        };
        assert_eq!(w.find(110).unwrap().offset, 110);
        assert_eq!(w.find(119).unwrap().offset, 110);
        assert_eq!(w.find(120).unwrap().offset, 120);
        assert!(w.find(150).is_none() && w.find(105).is_none());
        assert_eq!(w.holes(), vec![100..110, 150..200]);
        assert_eq!(w.data_bytes(), 40);
    }

    proptest! {
        #[test]
        fn extent_map_decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = ExtentMap::decode(&b, 1 << 15, 16, "t");
        }
    }
}
