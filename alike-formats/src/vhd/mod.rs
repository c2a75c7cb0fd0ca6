//! The legacy VHD disk format (Microsoft "Virtual Hard Disk Image Format
//! Specification" 1.0): what XenServer/XCP-ng storage repositories hold and
//! what XAPI's `/export_raw_vdi?format=vhd` streams.
//!
//! ## What we read
//! - [`VhdSource`]: fixed (2), dynamic (3) and differencing (4) images, the
//!   latter with their parents followed through the parent locators
//!   (`W2ru`, `W2ku` in UTF-16LE, `MacX` file URLs, then the parent's name
//!   beside the child), each parent's unique id checked against the child's
//!   header, at most [`MAX_CHAIN_DEPTH`] deep, loops refused. A
//!   [`alike_core::DiskSource`]: positional, thread-safe reads; sector
//!   bitmaps honoured (MSB-first; in dynamic disks a clear bit reads as zero,
//!   in differencing disks it reads from the parent). Allocated ranges are
//!   the union over the chain at block precision.
//! - [`StreamReader`]: a dynamic, differencing or fixed VHD arriving over a
//!   [`std::io::Read`] without seeking; yields [`Extent`]s in stream order,
//!   only sectors whose bitmap bit is set, and insists on the final footer.
//!
//! The footer at the end of the file is authoritative; the copy at offset 0
//! of a dynamic disk is used only when the tail one is damaged. The virtual
//! size is the footer's `current_size`, never the CHS geometry (which is
//! only an approximation, as Hyper-V, XenServer and qemu 10 agree).
//!
//! ## What we write
//! - [`VhdTarget`]: a dynamic (2 MiB blocks by default) or fixed VHD as a
//!   restore [`alike_core::DiskTarget`], renamed into place at `finish`.
//! - [`write_differencing`]: a differencing VHD over an existing VHD, holding
//!   chosen ranges.
//! - [`StreamWriter`] / [`write_stream`]: a dynamic or fixed VHD written
//!   front to back with a length known up front, for `/import_raw_vdi`.
//!
//! Written images carry creator application `alik`, CHS geometry computed
//! by the specification's algorithm, and `current_size` rounded up to whole
//! sectors. qemu 10 and later, Hyper-V and XenServer size a disk by
//! `current_size`; qemu before 10.0 sized unknown creators by CHS geometry
//! and would see such a disk slightly smaller when its size is not a CHS
//! multiple.
//!
//! ## Example
//! ```
//! use alike_core::{DiskSource, MemSource};
//! use alike_formats::vhd::{StreamReader, VhdOptions, VhdSource, write_stream};
//!
//! let mut data = vec![0u8; 3 << 20];
//! data[5000..6000].fill(7);
//! let disk = MemSource { label: "disk".into(), data };
//! // A dynamic VHD, written front to back (as for an upload)…
//! let mut image = Vec::new();
//! write_stream(&disk, &mut image, &VhdOptions::default())?;
//! // …read back positionally…
//! let vhd = VhdSource::from_bytes("image", image.clone())?;
//! let mut buf = [0u8; 2];
//! vhd.read_at(5999, &mut buf)?;
//! assert_eq!(buf, [7, 0]);
//! // …and as a stream: one extent per allocated 2 MiB block.
//! let extents: Vec<_> = StreamReader::new(&image[..])?.collect::<Result<_, _>>()?;
//! assert_eq!(extents[0].offset, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Limits
//! - Block sizes from 512 bytes to 256 MiB (powers of two); at most 16 Mi
//!   blocks (32 TiB at 2 MiB blocks; the format itself stops near 2 TiB).
//! - Parent time stamps are written but not checked when reading (Windows
//!   and XenServer disagree on what they hold); the unique id is the check.
//! - `MacX` locators are taken as plain paths after `file://` (no
//!   percent-decoding). The XenServer "batmap" extension is ignored.
//! - Pre-2004 Virtual PC images with a 511-byte footer are not read.
//! - Allocated ranges are block-precise: an allocated block whose sectors
//!   are all absent is still reported (and reads as its parent or zeroes).

mod error;
mod format;
mod reader;
mod stream;
mod writer;

pub use error::{Result, VhdError};

pub use format::DiskType;
pub use reader::{MAX_CHAIN_DEPTH, VhdSource};
pub use stream::{Extent, StreamReader};
pub use writer::{DEFAULT_BLOCK_SIZE, StreamWriter, VhdOptions, VhdTarget, write_differencing, write_stream};

use alike_core::DiskSource;

/// Most bytes [`fuzz_one`] reads through the positional reader or takes from the stream reader.
const FUZZ_READ_BUDGET: u64 = 16 << 20;

/// Parses `data` as a VHD image every way we can and reads all it claims to
/// hold, within a budget: the positional reader (a differencing image
/// without its parent, which then reads as zeroes), its parent locators,
/// and the streaming reader. The body of the `vhd` fuzz target, public so a
/// stable-toolchain test can run it: it must return, never panic, on any bytes.
pub fn fuzz_one(data: &[u8]) {
    let parsed = reader::Layer::parse(Box::new(reader::MemStorage(data.to_vec())), "fuzz".into(), None);
    if let Ok(layer) = parsed {
        let _ = layer.parent_candidates(std::path::Path::new("/nonexistent"));
        let src = VhdSource::from_layers("fuzz".into(), vec![layer]);
        let size = src.size();
        let mut budget = FUZZ_READ_BUDGET;
        let mut buf = vec![0u8; 1 << 20];
        if let Ok(ranges) = src.allocated_ranges() {
            'outer: for r in ranges {
                assert!(r.start < r.end && r.end <= size, "range {r:?} outside the disk");
                let mut off = r.start;
                while off < r.end {
                    let n = (r.end - off).min(buf.len() as u64).min(budget);
                    if n == 0 {
                        break 'outer;
                    }
                    let _ = src.read_at(off, &mut buf[..n as usize]);
                    budget -= n;
                    off += n;
                }
            }
        }
        // Odd offsets and lengths, and reads at and past the end.
        for (off, len) in [(0, 1), (size / 2 + 3, 1000), (size.saturating_sub(700), 700), (size, 1), (u64::MAX - 3, 8)]
        {
            let len = len.min(1 << 20) as usize;
            let _ = src.read_at(off, &mut buf[..len]);
        }
    }
    if let Ok(mut stream) = StreamReader::new(data) {
        let mut budget = FUZZ_READ_BUDGET;
        while let Some(Ok(e)) = stream.next() {
            assert!(e.data.len() as u64 <= 4 << 20, "extent larger than a piece");
            budget = budget.saturating_sub(e.data.len() as u64 + 1);
            if budget == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alike_core::MemSource;
    use alike_testing::Rng;

    /// Small seed images (tiny blocks, so each run is cheap): dynamic, fixed, differencing.
    fn seeds() -> Vec<Vec<u8>> {
        let mut rng = Rng::new(11);
        let mut data = vec![0u8; 96 * 1024 + 700];
        for _ in 0..6 {
            let off = rng.below(data.len() as u64 - 5000) as usize;
            let len = 1 + rng.below(4000) as usize;
            rng.fill(&mut data[off..off + len]);
        }
        let src = MemSource { label: "seed".into(), data };
        let mut out = Vec::new();
        let mut dynamic = Vec::new();
        write_stream(&src, &mut dynamic, &VhdOptions::default().block_size(8192)).unwrap();
        out.push(dynamic.clone());
        let mut fixed = Vec::new();
        write_stream(&src, &mut fixed, &VhdOptions::default().fixed(true)).unwrap();
        out.push(fixed);
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("p.vhd");
        std::fs::write(&parent, &dynamic).unwrap();
        let child = dir.path().join("c.vhd");
        write_differencing(&child, &parent, &src, &[1000..3000, 40_000..41_000]).unwrap();
        out.push(std::fs::read(&child).unwrap());
        out
    }

    #[test]
    fn fuzz_smoke_no_panics_on_mutated_images() {
        let seeds = seeds();
        for s in &seeds {
            fuzz_one(s);
        }
        let mut rng = Rng::new(0x5eed);
        for i in 0..6000u64 {
            let mut img = seeds[(i % seeds.len() as u64) as usize].clone();
            // Mutations land mostly in the metadata (first 4 KiB, last sector), sometimes anywhere.
            for _ in 0..1 + rng.below(4) {
                let len = img.len() as u64;
                if len == 0 {
                    break;
                }
                let at = match rng.below(3) {
                    0 => rng.below(4096.min(len)),
                    1 => (len - 1).saturating_sub(rng.below(512)),
                    _ => rng.below(len),
                } as usize;
                match rng.below(4) {
                    0 => img[at] ^= 1 << rng.below(8),
                    1 => img[at] = rng.next_u64() as u8,
                    2 => img[at] = [0x00, 0xFF, 0x7F, 0x80][rng.below(4) as usize],
                    _ => img.truncate(at),
                }
            }
            // Checksums would reject nearly every mutant: also fix them up half the time.
            if i % 2 == 0 {
                fix_checksums(&mut img);
            }
            fuzz_one(&img);
        }
    }

    /// Recomputes the footer and header checksums where their cookies are, so
    /// mutations get past them.
    fn fix_checksums(img: &mut [u8]) {
        let n = img.len();
        for at in [0, n.saturating_sub(512)] {
            if n >= at + 512 && img[at..at + 8] == *b"conectix" {
                let c = format::checksum(&img[at..at + 512], 64);
                img[at + 64..at + 68].copy_from_slice(&c.to_be_bytes());
            }
        }
        if n >= 1536 && img[512..520] == *b"cxsparse" {
            let c = format::checksum(&img[512..1536], 36);
            img[548..552].copy_from_slice(&c.to_be_bytes());
        }
    }
}
