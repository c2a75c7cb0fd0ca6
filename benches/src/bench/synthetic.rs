//! Many chunks that compress a thousandfold: a synthetic disk of `n`
//! unique 64 KiB blocks (each a fixed text with its number in front), so a
//! store gets `n` chunks while staying small. Memory that grows with the
//! number of chunks in the store (index, caches, per-pack state) shows here
//! where real data would need terabytes.
//!
//! Runs in a child process (`alike-bench __synthetic STORE CACHE N`, through
//! the measuring wrapper) so its peak RSS is its own.

use std::ffi::OsString;
use std::path::PathBuf;

use alike::{BackupOptions, DiskSource, Store, VmInfo};
use anyhow::{Context, Result};

/// The first argument of the synthetic-backup mode.
pub(crate) const SYNTHETIC_ARG: &str = "__synthetic";

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

/// Child mode: creates a store at STORE (cache CACHE) and backs up a
/// synthetic disk of N blocks into it.
pub(crate) fn child_main(mut args: impl Iterator<Item = OsString>) -> Result<()> {
    let store = PathBuf::from(args.next().context("STORE")?);
    let cache = PathBuf::from(args.next().context("CACHE")?);
    let n: u64 = args.next().context("N")?.to_string_lossy().parse()?;
    let s = Store::builder().passphrase("alike-bench").cache_dir(&cache).create(&store)?;
    let disk = Synthetic { blocks: n, template: template() };
    let r = s.backup(VmInfo::named("synthetic"), &[&disk], &BackupOptions::default())?;
    println!(
        "{}",
        serde_json::json!({"read_bytes": r.read_bytes, "new_bytes": r.new_bytes, "new_stored_bytes": r.new_stored_bytes})
    );
    Ok(())
}
