//! The restore engine: a version's disk → block maps → blobs → a target,
//! in parallel and out of order, holes left sparse where the target allows.

use rayon::prelude::*;
use tracing::info_span;

use crate::backup::{load_map, pool};
use crate::progress::{Phase, ProgressSink, RunOptions};
use crate::{ChunkStore, DiskTarget, Error, Keys, Manifest, Result, decode_blob};

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
/// Every blob is authenticated and its id re-computed before its bytes are
/// written, so a damaged store fails loudly at the damaged block instead of
/// writing wrong bytes.
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
    if disk.maps.len() as u64 != nblocks.div_ceil(bpm) {
        return Err(Error::Malformed {
            what: format!("manifest of VM {} disk {position}", manifest.vm.name),
            offset: 0,
            reason: format!("{} block maps for {nblocks} blocks", disk.maps.len()),
        });
    }
    let sink = ProgressSink::new(run.progress.clone(), Phase::Restore, disk.size);
    let pool = pool(run.threads)?;
    let mut report = RestoreReport { size: disk.size, ..Default::default() };
    for (m, map_id) in disk.maps.iter().enumerate() {
        cancel.check()?;
        let lo = m as u64 * bpm;
        let n = (nblocks - lo).min(bpm) as usize;
        let map = load_map(store, keys, map_id, n)?;
        let written: u64 = pool.install(|| {
            map.entries
                .par_iter()
                .enumerate()
                .map(|(i, e)| -> Result<u64> {
                    cancel.check()?;
                    let blk = lo + i as u64;
                    let off = blk * bs;
                    let len = (disk.size - off).min(bs);
                    let r = match e {
                        Some(id) => {
                            let blob = store.get(id).map_err(|e| match e {
                                Error::MissingChunk { id, .. } => Error::MissingChunk {
                                    id,
                                    needed_by: format!("VM {} disk {position} at offset {off}", manifest.vm.name),
                                },
                                e => e,
                            })?;
                            let plain = decode_blob(keys, &blob)?;
                            if plain.len() as u64 != len {
                                return Err(Error::CorruptBlob {
                                    id: *id,
                                    kind: "data",
                                    reason: format!("{} bytes where the disk needs {len} at offset {off}", plain.len()),
                                });
                            }
                            target.write_at(off, &plain)?;
                            len
                        }
                        None => {
                            if !target.holes_read_as_zero() {
                                target.write_zeroes(off, len)?;
                            }
                            0
                        }
                    };
                    sink.add(len);
                    Ok(r)
                })
                .try_reduce(|| 0, |a, b| Ok(a + b))
        })?;
        report.data_bytes += written;
    }
    cancel.check()?;
    target.finish(disk.size)?;
    sink.finish();
    report.hole_bytes = disk.size - report.data_bytes;
    Ok(report)
}
