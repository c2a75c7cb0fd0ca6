//! Content-defined chunking on 4 KiB boundaries (store format 2).
//!
//! A disk is seen as a sequence of 4 KiB blocks. After each data block the
//! chunker decides from that block's content alone (its *cut hash*) whether
//! the open chunk ends there, so a file that lands at another 4 KiB offset is
//! cut the same way wherever it lands and its chunks deduplicate.
//! All-zero blocks are holes and end the open chunk; so does the end of a
//! block-map window. `docs/design/chunking.md` has the study that chose the
//! parameters; `docs/format.md` §5.1 pins the cut hash.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The grid content-defined chunks are cut on.
pub const CDC_BLOCK: u32 = 4096;
/// 4 KiB blocks per block-map window (128 MiB of disk): no chunk crosses one.
pub const CDC_WINDOW_BLOCKS: u32 = 1 << 15;
/// Largest chunk allowed (extent lengths are u16 counts of 4 KiB blocks; a
/// chunk also has to fit a frame comfortably).
pub const CDC_MAX_CHUNK: u32 = 1 << 20;

/// Sizes of content-defined chunks, in bytes (multiples of 4096).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcParams {
    /// No cut by content before a chunk holds this many bytes.
    pub min: u32,
    /// The mean chunk length aimed at (before the `max` limit).
    pub avg: u32,
    /// A chunk is cut here whatever its content.
    pub max: u32,
}

impl Default for CdcParams {
    /// 16/32/64 KiB: what `docs/design/chunking.md` measured best.
    fn default() -> Self {
        CdcParams { min: 16 << 10, avg: 32 << 10, max: 64 << 10 }
    }
}

impl CdcParams {
    /// Checks the sizes: multiples of 4 KiB, `4 KiB ≤ min ≤ avg ≤ max ≤ 1 MiB`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the offending size.
    pub fn validate(&self) -> Result<()> {
        let CdcParams { min, avg, max } = *self;
        for (name, v) in [("min", min), ("avg", avg), ("max", max)] {
            if v == 0 || v % CDC_BLOCK != 0 {
                return Err(Error::InvalidArgument(format!(
                    "chunk {name} size {v} is not a positive multiple of 4096"
                )));
            }
        }
        if !(min <= avg && avg <= max && max <= CDC_MAX_CHUNK) {
            return Err(Error::InvalidArgument(format!(
                "chunk sizes {min}/{avg}/{max} must satisfy min ≤ avg ≤ max ≤ {CDC_MAX_CHUNK}"
            )));
        }
        Ok(())
    }

    /// The sizes in 4 KiB blocks.
    fn blocks(&self) -> (u32, u32, u32) {
        (self.min / CDC_BLOCK, self.avg / CDC_BLOCK, self.max / CDC_BLOCK)
    }

    /// The cut threshold: once a chunk holds `min` blocks, a block whose cut
    /// hash is below it ends the chunk, with probability 1/(avg − min + 1)
    /// per block (sizes in blocks), so that the mean length is `avg`.
    pub fn threshold(&self) -> u64 {
        let (min, avg, _) = self.blocks();
        u64::MAX / u64::from(avg - min + 1)
    }
}

/// How a store cuts disks into chunks: its store setting, fixed at `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Chunking {
    /// Disk-aligned blocks of one size (format 1 stores).
    Fixed {
        /// Block size in bytes, a power of two from 64 KiB to 4 MiB.
        block_size: u32,
    },
    /// Content-defined cuts on 4 KiB boundaries (format 2 stores, the default).
    Cdc(CdcParams),
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking::Cdc(CdcParams::default())
    }
}

/// The form [`Chunking::from_str`](std::str::FromStr) reads: `cdc:16/32/64`
/// (KiB) or `fixed:64`.
impl std::fmt::Display for Chunking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Chunking::Fixed { block_size } => write!(f, "fixed:{}", block_size / 1024),
            Chunking::Cdc(p) => write!(f, "cdc:{}/{}/{}", p.min / 1024, p.avg / 1024, p.max / 1024),
        }
    }
}

impl Chunking {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming what is out of range.
    pub fn validate(&self) -> Result<()> {
        match self {
            Chunking::Fixed { block_size } if !crate::valid_block_size(*block_size) => Err(Error::InvalidArgument(
                format!("block size {block_size} is not a power of two from 64 KiB to 4 MiB"),
            )),
            Chunking::Fixed { .. } => Ok(()),
            Chunking::Cdc(p) => p.validate(),
        }
    }
}

impl std::str::FromStr for Chunking {
    type Err = Error;
    /// `cdc` (the default sizes), `cdc:MIN/AVG/MAX` in KiB, `fixed` (64
    /// KiB blocks) or `fixed:KIB`; the result is validated.
    fn from_str(s: &str) -> Result<Chunking> {
        let bad = |why: &str| Error::InvalidArgument(format!("chunking {s:?}: {why}"));
        let kib = |x: &str| {
            x.trim().parse::<u32>().ok().and_then(|k| k.checked_mul(1024)).ok_or_else(|| bad("sizes are whole KiB"))
        };
        let c = match s.split_once(':') {
            None if s == "cdc" => Chunking::default(),
            None if s == "fixed" => Chunking::Fixed { block_size: crate::DEFAULT_BLOCK_SIZE },
            Some(("fixed", bs)) => Chunking::Fixed { block_size: kib(bs)? },
            Some(("cdc", sizes)) => {
                let v = sizes.split('/').map(kib).collect::<Result<Vec<u32>>>()?;
                let [min, avg, max] = v[..] else { return Err(bad("expected three sizes, like cdc:16/32/64")) };
                Chunking::Cdc(CdcParams { min, avg, max })
            }
            _ => return Err(bad("expected cdc, cdc:MIN/AVG/MAX (KiB), fixed or fixed:KIB")),
        };
        c.validate().map_err(|e| bad(&e.to_string()))?;
        Ok(c)
    }
}

/// The cut hash of one 4 KiB block (`docs/format.md` §5.1): a function of
/// the block's bytes alone, over a sample of one 8-byte word per 64-byte
/// line, so that deciding cuts costs next to nothing beside the chunk ids.
/// A short block (the last of a disk whose size is not a multiple of 4 KiB)
/// folds its tail bytes in as well.
pub fn cut_hash(block: &[u8]) -> u64 {
    const M: u64 = 0x9E37_79B9_7F4A_7C15;
    let (mut a, mut b) = (0x243F_6A88_85A3_08D3u64, 0x1319_8A2E_0370_7344u64);
    let mut lines = block.chunks_exact(128);
    for (i, two) in lines.by_ref().enumerate() {
        let o = (2 * i % 8) * 8;
        let x = u64::from_le_bytes(two[o..o + 8].try_into().expect("8 bytes"));
        let y = u64::from_le_bytes(two[64 + o + 8..64 + o + 16].try_into().expect("8 bytes"));
        a = (a ^ x).wrapping_mul(M);
        b = (b ^ y).wrapping_mul(M);
    }
    for (i, &v) in lines.remainder().iter().enumerate() {
        a ^= u64::from(v) << ((i % 8) * 8);
    }
    let mut h = a ^ b.rotate_left(32);
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// The cut decisions, block by block, apart from the bytes: positions are
/// in 4 KiB blocks.
#[derive(Debug, Clone)]
pub struct CdcState {
    min: u32,
    max: u32,
    threshold: u64,
    /// Start of the open chunk and its length in blocks.
    start: Option<u64>,
    blocks: u32,
}

impl CdcState {
    /// A chunker at a chunk boundary.
    pub fn new(p: &CdcParams) -> CdcState {
        let (min, _, max) = p.blocks();
        CdcState { min, max, threshold: p.threshold(), start: None, blocks: 0 }
    }
    /// Whether no chunk is open.
    pub fn at_boundary(&self) -> bool {
        self.start.is_none()
    }
    /// Where the open chunk starts (a block number), if one is open.
    pub fn open_start(&self) -> Option<u64> {
        self.start
    }
    /// Ends the open chunk (a zero block, a hole, a window's end): returns
    /// it as (first block, blocks).
    pub fn end(&mut self) -> Option<(u64, u32)> {
        let s = self.start.take()?;
        let n = std::mem::take(&mut self.blocks);
        Some((s, n))
    }
    /// Data block `blk` (not all zero) with its cut hash: returns the chunk
    /// it closes, if any.
    pub fn push(&mut self, blk: u64, hash: u64) -> Option<(u64, u32)> {
        if self.start.is_none() {
            self.start = Some(blk);
        }
        self.blocks += 1;
        if self.blocks >= self.max || (self.blocks >= self.min && hash < self.threshold) { self.end() } else { None }
    }
}

/// Cuts a whole in-memory disk image: (byte offset, length) of every chunk,
/// in order; zero blocks are holes. The reference the engine's windowed,
/// incremental chunking must agree with (tests, golden vectors).
pub fn cut_image(data: &[u8], p: &CdcParams) -> Vec<(u64, u64)> {
    let bs = CDC_BLOCK as usize;
    let mut out = Vec::new();
    let mut st = CdcState::new(p);
    let size = data.len() as u64;
    let close = |c: Option<(u64, u32)>, out: &mut Vec<(u64, u64)>| {
        if let Some((s, n)) = c {
            let off = s * u64::from(CDC_BLOCK);
            out.push((off, (off + u64::from(n) * u64::from(CDC_BLOCK)).min(size) - off));
        }
    };
    for (i, b) in data.chunks(bs).enumerate() {
        let blk = i as u64;
        if blk > 0 && blk % u64::from(CDC_WINDOW_BLOCKS) == 0 {
            close(st.end(), &mut out);
        }
        if crate::is_zero(b) {
            close(st.end(), &mut out);
        } else {
            close(st.push(blk, cut_hash(b)), &mut out);
        }
    }
    close(st.end(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked() {
        assert!(CdcParams::default().validate().is_ok());
        assert!(CdcParams { min: 4096, avg: 4096, max: 4096 }.validate().is_ok());
        for bad in [(0, 4096, 4096), (5000, 8192, 8192), (8192, 4096, 16384), (4096, 8192, 2 << 20)] {
            let p = CdcParams { min: bad.0, avg: bad.1, max: bad.2 };
            assert!(p.validate().is_err(), "{p:?}");
        }
        assert!(Chunking::Fixed { block_size: 4096 }.validate().is_err());
        assert_eq!("cdc".parse::<Chunking>().unwrap(), Chunking::default());
        assert_eq!(
            "cdc:32/64/128".parse::<Chunking>().unwrap(),
            Chunking::Cdc(CdcParams { min: 32 << 10, avg: 64 << 10, max: 128 << 10 })
        );
        assert_eq!("fixed:1024".parse::<Chunking>().unwrap(), Chunking::Fixed { block_size: 1 << 20 });
        for c in [Chunking::default(), Chunking::Fixed { block_size: 1 << 20 }] {
            assert_eq!(c.to_string().parse::<Chunking>().unwrap(), c);
        }
        for bad in ["cdc:1/2", "cdc:64/32/16", "fixed:4", "rabin", "cdc:a/b/c", ""] {
            assert!(bad.parse::<Chunking>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cuts_follow_content_not_offset() {
        // 600 blocks of pseudo-random data, then the same after 3 zero blocks of shift.
        let mut x = 7u64;
        let data: Vec<u8> = (0..600 * 4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let p = CdcParams::default();
        let a = cut_image(&data, &p);
        let mut shifted = vec![0u8; 3 * 4096];
        shifted.extend_from_slice(&data);
        let b = cut_image(&shifted, &p);
        let a: Vec<(u64, u64)> = a.into_iter().collect();
        let b: Vec<(u64, u64)> = b.into_iter().map(|(o, l)| (o - 3 * 4096, l)).collect();
        assert_eq!(a, b);
        let mean = data.len() as f64 / a.len() as f64;
        assert!((20_000.0..45_000.0).contains(&mean), "mean chunk {mean}");
        assert!(a.iter().all(|c| c.1 >= 4096 && c.1 <= 65536));
    }

    #[test]
    fn zero_blocks_and_windows_end_chunks() {
        let p = CdcParams { min: 65536, avg: 65536, max: 65536 };
        let mut d = vec![1u8; 20 * 4096];
        d[5 * 4096..6 * 4096].fill(0);
        let c = cut_image(&d, &p);
        assert_eq!(c, vec![(0, 5 * 4096), (6 * 4096, 14 * 4096)]);
        // A short last block is a short last chunk.
        let c = cut_image(&d[..4096 + 100], &p);
        assert_eq!(c, vec![(0, 4196)]);
    }
}
