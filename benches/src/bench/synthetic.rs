//! Many chunks that compress a thousandfold: a synthetic disk of `n`
//! unique 64 KiB blocks (each a fixed text with its number in front), so a
//! store gets `n` chunks while staying small. Memory that grows with the
//! number of chunks in the store (index, caches, per-pack state) shows here
//! where real data would need terabytes.
//!
//! Runs in a child process (`alike-bench __synthetic STORE CACHE N [CHUNKING]`, through
//! the measuring wrapper) so its peak RSS is its own.
//!
//! Also the scaling run's disks (`alike-bench __tiled STORE CACHE V1 SIZE [CHUNKING]`):
//! v1's layout tiled over SIZE bytes, generated on the fly from v1.img, so a
//! 16 GiB disk with ~8 GB of data needs no 8 GB image on a shared disk.

use std::ffi::OsString;
use std::path::PathBuf;

use alike::{BackupOptions, DiskSource, RawFileSource, Store, VmInfo};
use anyhow::{Context, Result};

/// The first argument of the synthetic-backup mode.
pub(crate) const SYNTHETIC_ARG: &str = "__synthetic";
/// The first argument of the tiled-backup mode (the scaling run).
pub(crate) const TILED_ARG: &str = "__tiled";

const BLOCK: u64 = 64 << 10;

struct Synthetic {
    blocks: u64,
    template: Vec<u8>,
}

impl DiskSource for Synthetic {
    fn label(&self) -> String {
        format!("synthetic-{}", self.blocks)
    }
    fn size(&self) -> u64 {
        self.blocks * BLOCK
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (blk, within) = (pos / BLOCK, (pos % BLOCK) as usize);
            let n = (BLOCK as usize - within).min(buf.len() - done);
            let mut block = [0u8; 16];
            block[..8].copy_from_slice(&blk.to_le_bytes());
            block[8..].copy_from_slice(&(!blk).to_le_bytes());
            for (i, b) in buf[done..done + n].iter_mut().enumerate() {
                let at = within + i;
                *b = if at < 16 { block[at] } else { self.template[at] };
            }
            done += n;
        }
        Ok(())
    }
}

fn template() -> Vec<u8> {
    let line = b"alike synthetic block: a log line that repeats, as a log does, over and over again\n";
    line.iter().copied().cycle().take(BLOCK as usize).collect()
}

/// A new store at `store` (cache `cache`), with the chunking `spec`
/// (`alike init --chunking`'s syntax) when given, else the default.
fn create(store: &std::path::Path, cache: &std::path::Path, spec: Option<OsString>) -> Result<Store> {
    let mut b = Store::builder();
    b.passphrase("alike-bench").cache_dir(cache);
    if let Some(spec) = spec {
        b.chunking(spec.to_string_lossy().parse::<alike::Chunking>()?);
    }
    Ok(b.create(store)?)
}

/// Child mode: creates a store at STORE (cache CACHE; chunking CHUNKING
/// when given) and backs up a synthetic disk of N blocks into it.
pub(crate) fn child_main(mut args: impl Iterator<Item = OsString>) -> Result<()> {
    let store = PathBuf::from(args.next().context("STORE")?);
    let cache = PathBuf::from(args.next().context("CACHE")?);
    let n: u64 = args.next().context("N")?.to_string_lossy().parse()?;
    let s = create(&store, &cache, args.next())?;
    let disk = Synthetic { blocks: n, template: template() };
    let r = s.backup(VmInfo::named("synthetic"), &[&disk], &BackupOptions::default())?;
    println!(
        "{}",
        serde_json::json!({"read_bytes": r.read_bytes, "new_bytes": r.new_bytes, "new_stored_bytes": r.new_stored_bytes})
    );
    Ok(())
}

/// v1's layout tiled over `size` bytes: tile `t` holds v1's bytes with the
/// first 8 bytes of every non-zero 4 KiB page XORed with a tag of (t, page),
/// so no block repeats another tile's; zero pages stay zero, so the
/// allocated share and the compressibility are v1's.
pub(crate) struct Tiled {
    v1: RawFileSource,
    v1_len: u64,
    size: u64,
    ranges: Vec<std::ops::Range<u64>>,
}

impl Tiled {
    /// Tiles `v1` over `size` bytes.
    pub(crate) fn new(v1: &std::path::Path, size: u64) -> Result<Tiled> {
        let src = RawFileSource::open(v1)?;
        let v1_len = src.size();
        anyhow::ensure!(v1_len % 4096 == 0 && v1_len > 0, "v1 must be a whole number of 4 KiB pages");
        let base = src.allocated_ranges()?;
        let mut ranges = Vec::new();
        for t in 0..size.div_ceil(v1_len) {
            for r in &base {
                let (a, b) = (t * v1_len + r.start, (t * v1_len + r.end).min(size));
                if a < b {
                    ranges.push(a..b);
                }
            }
        }
        Ok(Tiled { v1: src, v1_len, size, ranges })
    }
}

impl DiskSource for Tiled {
    fn label(&self) -> String {
        format!("tiled-{}", self.size)
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn allocated_ranges(&self) -> alike_core::Result<Vec<std::ops::Range<u64>>> {
        Ok(self.ranges.clone())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        let mut done = 0usize;
        let mut page = [0u8; 4096];
        while done < buf.len() {
            let pos = offset + done as u64;
            let (t, in_v1) = (pos / self.v1_len, pos % self.v1_len);
            let page_start = in_v1 - in_v1 % 4096;
            self.v1.read_at(page_start, &mut page)?;
            if page.iter().any(|&b| b != 0) {
                let no = (t * self.v1_len + page_start) / 4096;
                let x = (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ no;
                let head = u64::from_le_bytes(page[..8].try_into().expect("8")) ^ x;
                page[..8].copy_from_slice(&head.to_le_bytes());
            }
            let within = (in_v1 - page_start) as usize;
            let n = (4096 - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&page[within..within + n]);
            done += n;
        }
        Ok(())
    }
}

/// Child mode: creates a store at STORE (cache CACHE; chunking CHUNKING
/// when given) and backs up v1 (V1) tiled over SIZE bytes.
pub(crate) fn tiled_main(mut args: impl Iterator<Item = OsString>) -> Result<()> {
    let store = PathBuf::from(args.next().context("STORE")?);
    let cache = PathBuf::from(args.next().context("CACHE")?);
    let v1 = PathBuf::from(args.next().context("V1")?);
    let size: u64 = args.next().context("SIZE")?.to_string_lossy().parse()?;
    let disk = Tiled::new(&v1, size)?;
    let s = create(&store, &cache, args.next())?;
    let r = s.backup(VmInfo::named("tiled"), &[&disk], &BackupOptions::default())?;
    let data: u64 = disk.ranges.iter().map(|r| r.end - r.start).sum();
    println!(
        "{}",
        serde_json::json!({"read_bytes": r.read_bytes, "new_bytes": r.new_bytes, "new_stored_bytes": r.new_stored_bytes, "allocated": data})
    );
    Ok(())
}
