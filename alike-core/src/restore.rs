//! The restore engine: a version's disk → block maps → frames → a target.
//! Chunks are grouped by the frame that holds them, so each frame is read,
//! authenticated and decompressed once; runs of consecutive blocks that sit
//! consecutively in a frame are written with one call. Work runs in
//! parallel and out of order; holes are left sparse where the target allows.

use std::collections::HashMap;

use rayon::prelude::*;
use tracing::info_span;

use crate::backup::{load_map, pool};
use crate::progress::{Phase, ProgressSink, RunOptions};
use crate::{
    ChunkId, ChunkLocation, ChunkStore, DiskTarget, Error, FrameRef, Keys, Manifest, Result, chunk_in, decode_frame,
};

/// A block to restore: its index, chunk id and where the chunk is.
type Located = (u64, ChunkId, ChunkLocation);

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// Virtual size of the restored disk.
    pub size: u64,
    /// Bytes written from stored chunks.
    pub data_bytes: u64,
    /// Bytes left as holes (zeroes).
    pub hole_bytes: u64,
}

/// Restores disk `position` of `manifest` onto `target`, then finishes it.
///
/// Every frame is authenticated and every chunk's id re-computed before its
/// bytes are written, so a damaged store fails loudly at the damaged block
/// instead of writing wrong bytes.
///
/// # Errors
/// [`Error::InvalidArgument`] for a disk the version does not have; store,
/// corruption and target errors; [`Error::Cancelled`].
pub fn restore_disk(
    store: &dyn ChunkStore,
    keys: &Keys,
    manifest: &Manifest,
    position: u32,
    target: &dyn DiskTarget,
    run: &RunOptions,
) -> Result<RestoreReport> {
    let cancel = &run.cancel;
    let disk = manifest.disks.iter().find(|d| d.position == position).ok_or_else(|| {
        Error::InvalidArgument(format!("the version has no disk {position} (it has {})", manifest.disks.len()))
    })?;
    let span = info_span!("restore", vm = %manifest.vm.name, disk = position);
    let _g = span.enter();
    let bs = u64::from(disk.block_size);
    let bpm = u64::from(disk.blocks_per_map);
    let nblocks = disk.block_count();
    let vm = &manifest.vm.name;
    if disk.maps.len() as u64 != nblocks.div_ceil(bpm) {
        return Err(Error::Malformed {
            what: format!("manifest of VM {vm} disk {position}"),
            offset: 0,
            reason: format!("{} block maps for {nblocks} blocks", disk.maps.len()),
        });
    }
    let sink = ProgressSink::new(run.progress.clone(), Phase::Restore, disk.size);
    let pool = pool(run.threads)?;
    let block_len = |blk: u64| (disk.size - blk * bs).min(bs);
    let mut report = RestoreReport { size: disk.size, ..Default::default() };
    for (m, map_id) in disk.maps.iter().enumerate() {
        cancel.check()?;
        let lo = m as u64 * bpm;
        let n = (nblocks - lo).min(bpm) as usize;
        let map = load_map(store, keys, map_id, n)?;
        let written = pool.install(|| -> Result<u64> {
            // Where each chunk is, grouped by frame in disk order.
            let located: Vec<Located> = map
                .entries
                .par_iter()
                .enumerate()
                .filter_map(|(i, e)| e.map(|id| (lo + i as u64, id)))
                .map(|(blk, id)| {
                    let loc = store.locate(&id)?.ok_or_else(|| Error::MissingChunk {
                        id,
                        needed_by: format!("VM {vm} disk {position} at offset {}", blk * bs),
                    })?;
                    Ok((blk, id, loc))
                })
                .collect::<Result<_>>()?;
            let mut groups: Vec<(FrameRef, Vec<Located>)> = Vec::new();
            let mut index: HashMap<FrameRef, usize> = HashMap::new();
            for (blk, id, loc) in located {
                let g = *index.entry(loc.frame).or_insert_with(|| {
                    groups.push((loc.frame, Vec::new()));
                    groups.len() - 1
                });
                groups[g].1.push((blk, id, loc));
            }
            let holes: Vec<u64> = if target.holes_read_as_zero() {
                Vec::new()
            } else {
                map.entries.iter().enumerate().filter(|(_, e)| e.is_none()).map(|(i, _)| lo + i as u64).collect()
            };
            holes.par_iter().try_for_each(|&blk| -> Result<()> {
                target.write_zeroes(blk * bs, block_len(blk))?;
                sink.add(block_len(blk));
                Ok(())
            })?;
            groups
                .par_iter()
                .map(|(frame, chunks)| -> Result<u64> {
                    cancel.check()?;
                    let stored = store.read_frame(frame)?;
                    let plain = decode_frame(keys, frame, &stored)?;
                    let mut written = 0;
                    let mut i = 0;
                    while i < chunks.len() {
                        // A run: consecutive blocks stored consecutively in this frame.
                        let (first_blk, _, first_loc) = chunks[i];
                        let mut end = first_loc.offset as usize;
                        let mut j = i;
                        while j < chunks.len() {
                            let (blk, id, loc) = &chunks[j];
                            let expected_blk = first_blk + (j - i) as u64;
                            if *blk != expected_blk || loc.offset as usize != end {
                                break;
                            }
                            let data = chunk_in(keys, &plain, loc, id)?;
                            if data.len() as u64 != block_len(*blk) {
                                return Err(Error::CorruptBlob {
                                    id: *id,
                                    kind: "data",
                                    reason: format!(
                                        "{} bytes where the disk needs {} at offset {}",
                                        data.len(),
                                        block_len(*blk),
                                        blk * bs
                                    ),
                                });
                            }
                            end += data.len();
                            j += 1;
                        }
                        let off = first_blk * bs;
                        target.write_at(off, &plain[first_loc.offset as usize..end])?;
                        let n = (end - first_loc.offset as usize) as u64;
                        sink.add(n);
                        written += n;
                        i = j;
                    }
                    Ok(written)
                })
                .try_reduce(|| 0, |a, b| Ok(a + b))
        })?;
        report.data_bytes += written;
        let holes_here: u64 =
            map.entries.iter().enumerate().filter(|(_, e)| e.is_none()).map(|(i, _)| block_len(lo + i as u64)).sum();
        if target.holes_read_as_zero() {
            sink.add(holes_here);
        }
    }
    cancel.check()?;
    target.finish(disk.size)?;
    sink.finish();
    report.hole_bytes = disk.size - report.data_bytes;
    Ok(report)
}
