//! The backup engine: disks → chunks → ids → new blobs → block maps → a
//! version. Reading, hashing, compression and sealing run on every core; the
//! store's `put` takes the sealed blobs. Memory is bounded by one map window
//! of results plus one read batch, whatever the disk size.
//!
//! Two chunkings share the plan (what to read, what to carry from the
//! parent) and the storing of new chunks: fixed blocks (format 1 stores,
//! this module) and content-defined cuts on 4 KiB boundaries (format 2,
//! `cdc_backup`).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use tracing::{info, info_span, warn};

use crate::chunker::{blocks_touching, is_zero};
use crate::manifest::{BLOCKS_PER_MAP, BlockMap, DiskRecord, Manifest, VmInfo};
use crate::progress::{CancelToken, Phase, ProgressSink, RunOptions};
use crate::store::read_chunk;
use crate::{BlobKind, ChunkId, ChunkStore, DiskSource, Error, Keys, Result, encode_frame};
use crate::{CDC_BLOCK, CDC_WINDOW_BLOCKS, Chunking, Recover};

/// Engine parameters that come from the store and the caller.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineParams {
    /// How disks are cut into chunks (a store setting).
    pub chunking: Chunking,
    /// zstd level, or `None` to store blobs uncompressed.
    pub compression_level: Option<i32>,
}

impl EngineParams {
    /// Parameters for fixed blocks of `block_size` bytes and zstd level 3.
    pub fn new(block_size: u32) -> EngineParams {
        EngineParams::with_chunking(Chunking::Fixed { block_size })
    }
    /// Parameters for a chunking and zstd level 3.
    pub fn with_chunking(chunking: Chunking) -> EngineParams {
        EngineParams { chunking, compression_level: Some(3) }
    }
    /// The grid disks are read on: the block size, or 4 KiB for content-defined chunks.
    pub(crate) fn grid(&self) -> u32 {
        match self.chunking {
            Chunking::Fixed { block_size } => block_size,
            Chunking::Cdc(_) => CDC_BLOCK,
        }
    }
    /// The block-map geometry of a disk backed up with these parameters:
    /// (block size, blocks per map, chunking recorded in the disk).
    pub(crate) fn geometry(&self) -> (u32, u32, Option<crate::CdcParams>) {
        match self.chunking {
            Chunking::Fixed { block_size } => (block_size, BLOCKS_PER_MAP, None),
            Chunking::Cdc(p) => (CDC_BLOCK, CDC_WINDOW_BLOCKS, Some(p)),
        }
    }
}

/// What to back up.
pub struct BackupJob<'a> {
    /// The VM.
    pub vm: VmInfo,
    /// Its disks, in VM order.
    pub disks: Vec<&'a dyn DiskSource>,
    /// The previous version of this VM: change tokens are asked about, and
    /// unchanged ranges are carried from it.
    pub parent: Option<(String, Manifest)>,
    /// Creation time to record, ms since the epoch.
    pub time_ms: i64,
    /// Host name to record.
    pub host: Option<String>,
    /// For a copy of another store's version: where it came from.
    pub origin: Option<crate::Origin>,
    /// Why there is no parent although one was asked for (its manifest is
    /// damaged, its data is missing): recorded as each disk's fallback reason.
    pub no_parent_reason: Option<String>,
}

/// Runs a backup and commits the version. Returns its id and manifest.
///
/// # Errors
/// Source read errors, store errors, [`Error::Cancelled`]. On error nothing
/// is committed: blobs already put are unreferenced and left to GC.
pub fn backup(
    store: &dyn ChunkStore,
    keys: &Keys,
    params: &EngineParams,
    job: BackupJob<'_>,
    run: &RunOptions,
) -> Result<(String, Manifest)> {
    let cancel = &run.cancel;
    params.chunking.validate()?;
    let span = info_span!("backup", vm = %job.vm.name);
    let _g = span.enter();
    let pool = pool(run.threads)?;
    let plans = job
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut plan = plan_disk(i as u32, *d, params, job.parent.as_ref().map(|p| &p.1))?;
            if job.parent.is_none()
                && let Some(why) = &job.no_parent_reason
            {
                warn!(disk = i, reason = %why, "read in full");
                plan.fallback_reason = Some(why.clone());
            }
            Ok(plan)
        })
        .collect::<Result<Vec<_>>>()?;
    let total: u64 = plans.iter().map(|p| p.read_bytes).sum();
    let sink = ProgressSink::new(run.progress.clone(), Phase::Backup, total);
    let mut disks = Vec::with_capacity(plans.len());
    for (plan, src) in plans.into_iter().zip(&job.disks) {
        // Made here, on the caller's thread, so that it is a child of the
        // backup span (and of the caller's: a job's, a VM's); entered on
        // the worker thread that backs the disk up. Its byte fields are
        // recorded when the disk is done.
        let disk = info_span!(
            "disk",
            vm = %job.vm.name,
            disk = plan.position,
            label = %src.label(),
            size = plan.size,
            mode = if plan.carry.is_some() { "incremental" } else { "full" },
            read_bytes = tracing::field::Empty,
            new_bytes = tracing::field::Empty,
            stored_bytes = tracing::field::Empty,
        );
        let rec = pool.install(|| {
            let _g = disk.enter();
            match &params.chunking {
                Chunking::Cdc(p) => crate::cdc_backup::backup_disk(store, keys, params, p, plan, *src, &sink, cancel),
                _ => backup_disk(store, keys, params, plan, *src, &sink, cancel),
            }
        })?;
        disk.record("read_bytes", rec.read_bytes);
        disk.record("new_bytes", rec.new_bytes);
        disk.record("stored_bytes", rec.new_stored_bytes);
        disks.push(rec);
    }
    sink.finish();
    cancel.check()?;
    let manifest = Manifest {
        schema: Manifest::schema_for(&disks),
        vm: job.vm,
        time_ms: job.time_ms,
        parent: job.parent.map(|p| p.0),
        host: job.host,
        disks,
        origin: job.origin,
    };
    store.flush()?;
    let id = store.commit_version(&manifest)?;
    info!(version = %id, "committed");
    Ok((id, manifest))
}

pub(crate) fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("alike-worker-{i}")).build().map_err(
        |e| Error::Thread { name: format!("alike-worker-* ({threads} threads)"), source: std::io::Error::other(e) },
    )
}

/// What to read of one disk, on the engine's grid (blocks of the block
/// size, or 4 KiB blocks for content-defined chunks).
pub(crate) struct DiskPlan {
    pub(crate) position: u32,
    pub(crate) size: u64,
    pub(crate) nblocks: u64,
    /// Block index ranges to read.
    pub(crate) read: Vec<Range<u64>>,
    pub(crate) read_bytes: u64,
    /// The parent's disk to carry unchanged blocks from, and the changed
    /// block ranges (incremental with change ranges). Changed blocks that
    /// are not read (no longer allocated) become holes.
    pub(crate) carry: Option<(DiskRecord, Vec<Range<u64>>)>,
    pub(crate) fallback_reason: Option<String>,
    pub(crate) change_token: Option<Vec<u8>>,
    /// The parent's disk when it was cut the same way (whether or not
    /// change tracking is used): a chunk cut at the same place with the
    /// same id as the parent's is known to the store without a look-up.
    pub(crate) same_cut_parent: Option<DiskRecord>,
}

fn plan_disk(
    position: u32,
    src: &dyn DiskSource,
    params: &EngineParams,
    parent: Option<&Manifest>,
) -> Result<DiskPlan> {
    let size = src.size();
    let (bs, bpm, chunking) = params.geometry();
    let bs64 = u64::from(bs);
    let nblocks = size.div_ceil(bs64);
    let change_token = src.change_token();
    let allocated = blocks_touching(&src.allocated_ranges()?, bs64, nblocks);
    let prev = parent.and_then(|p| p.disks.iter().find(|d| d.position == position));
    let mut fallback_reason = None;
    let mut carry = None;
    let mut read = allocated.clone();
    if let Some(prev) = prev {
        if let Some(tok) = prev.change_token.as_deref() {
            let tok = hex::decode(tok).unwrap_or_default();
            if prev.size != size {
                fallback_reason = Some(format!("disk size changed from {} to {size} bytes", prev.size));
            } else if prev.chunking != chunking || prev.block_size != bs || prev.blocks_per_map != bpm {
                fallback_reason = Some(format!(
                    "the previous version was cut differently ({}) from this store's setting ({})",
                    disk_chunking(prev),
                    params.chunking
                ));
            } else if prev.maps.len() as u64 != nblocks.div_ceil(u64::from(bpm)) {
                fallback_reason = Some("the previous version's block maps do not cover the disk".into());
            } else {
                match src.changed_ranges(&tok) {
                    Ok(Some(changed)) => {
                        let changed = blocks_touching(&changed, bs64, nblocks);
                        // Content-defined chunks are re-cut over every changed
                        // block (one no longer allocated reads as zeroes, a
                        // hole); fixed blocks read only allocated ones. The
                        // re-cut also reads around the changes: this is the
                        // progress estimate, the record says what was read.
                        read = match chunking {
                            Some(_) => changed.clone(),
                            None => intersect(&changed, &allocated),
                        };
                        carry = Some((prev.clone(), changed));
                    }
                    Ok(None) => {
                        fallback_reason = Some("the source cannot report changes since the previous version".into())
                    }
                    Err(e) => fallback_reason = Some(format!("change tracking failed: {e}")),
                }
            }
        } else if change_token.is_some() {
            // The source tracks changes, but nothing to ask it about was recorded last time.
            fallback_reason = Some("the previous version recorded no change token for this disk".into());
        }
    }
    if let Some(r) = &fallback_reason {
        warn!(disk = %src.label(), reason = %r, "change tracking unusable: reading every allocated block");
    }
    let read_bytes = read.iter().map(|r| (r.end * bs64).min(size) - r.start * bs64).sum();
    let same_cut_parent = prev
        .filter(|p| p.size == size && p.chunking == chunking && p.block_size == bs && p.blocks_per_map == bpm)
        .filter(|p| p.maps.len() as u64 == nblocks.div_ceil(u64::from(bpm)))
        .cloned();
    Ok(DiskPlan { position, size, nblocks, read, read_bytes, carry, fallback_reason, change_token, same_cut_parent })
}

/// How a stored disk was cut.
fn disk_chunking(d: &DiskRecord) -> Chunking {
    match d.chunking {
        Some(p) => Chunking::Cdc(p),
        None => Chunking::Fixed { block_size: d.block_size },
    }
}

pub(crate) fn intersect(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let lo = a[i].start.max(b[j].start);
        let hi = a[i].end.min(b[j].end);
        if lo < hi {
            out.push(lo..hi);
        }
        if a[i].end < b[j].end { i += 1 } else { j += 1 }
    }
    out
}

/// Reads the plaintext of a block map chunk (either map kind), refusing a
/// chunk stored as another kind.
///
/// # Errors
/// Missing or corrupt chunk; a chunk that is not a map.
pub(crate) fn read_map_chunk(store: &dyn ChunkStore, keys: &Keys, id: &ChunkId) -> Result<Vec<u8>> {
    if let Some(loc) = store.locate(id)?
        && loc.frame.kind != BlobKind::Map
    {
        return Err(Error::CorruptBlob {
            id: *id,
            kind: "map",
            reason: format!("stored as a {} chunk", loc.frame.kind.name()),
        });
    }
    read_chunk(store, keys, id, &|| format!("block map {}", id.short()))
}

/// Reads a block map chunk and checks it covers `expect` blocks.
///
/// # Errors
/// Missing or corrupt map chunk; a map of the wrong kind or length.
pub fn load_map(store: &dyn ChunkStore, keys: &Keys, id: &ChunkId, expect: usize) -> Result<BlockMap> {
    let what = || format!("block map {}", id.short());
    let plain = read_map_chunk(store, keys, id)?;
    let map = BlockMap::decode(&plain, &what())?;
    if map.entries.len() != expect {
        return Err(Error::Malformed {
            what: what(),
            offset: 0,
            reason: format!("{} entries, expected {expect}", map.entries.len()),
        });
    }
    Ok(map)
}

/// Ids looked up per index transaction.
pub(crate) const LOOKUP_BATCH: usize = 128;

/// Plaintext bytes gathered into one frame before it is compressed and sealed.
pub const FRAME_TARGET: usize = 1 << 20;
/// Bytes read per batch: bounds memory, and is large enough to keep every
/// core busy between the stages' barriers (read, cut, hash, compress): 4 MiB
/// per worker (four ~1 MiB frames each to compress), from 16 to 128 MiB.
pub(crate) fn batch_bytes() -> usize {
    (rayon::current_num_threads() * (4 << 20)).clamp(16 << 20, 128 << 20)
}

/// What a disk's backup added to the store.
#[derive(Default)]
pub(crate) struct Added {
    pub(crate) new_bytes: AtomicU64,
    pub(crate) new_stored: AtomicU64,
    /// New chunks of a frame not yet full, carried to the next batch so
    /// that scattered new chunks still compress in ~1 MiB frames; stored by
    /// [`finish_frames`] at the end of the disk.
    pub(crate) carry: std::sync::Mutex<Vec<(ChunkId, Vec<u8>)>>,
}

/// Stores the chunks of one batch that the store lacks: looks their ids up
/// in a few index transactions (except those `known_hint` marks as known),
/// gathers each new chunk once, in disk order, after those carried from
/// earlier batches, into frames of about [`FRAME_TARGET`] bytes, and
/// compresses, seals and puts the full frames on every core. The last,
/// short frame is carried to the next batch (copied: at most a frame).
pub(crate) fn store_new(
    store: &dyn ChunkStore,
    keys: &Keys,
    params: &EngineParams,
    chunks: &[(ChunkId, &[u8])],
    known_hint: Option<&[bool]>,
    added: &Added,
    cancel: &CancelToken,
) -> Result<()> {
    // Chunks the parent version holds at the same place need no look-up.
    let ask: Vec<ChunkId> =
        chunks.iter().enumerate().filter(|(i, _)| !known_hint.is_some_and(|k| k[*i])).map(|(_, c)| c.0).collect();
    let answers: Vec<bool> =
        ask.par_chunks(LOOKUP_BATCH).map(|c| store.contains_many(c)).collect::<Result<Vec<_>>>()?.concat();
    let mut answers = answers.into_iter();
    let known: Vec<bool> =
        (0..chunks.len()).map(|i| known_hint.is_some_and(|k| k[i]) || answers.next().unwrap_or(false)).collect();
    let carried = std::mem::take(&mut *added.carry.locked());
    let mut seen: std::collections::HashSet<ChunkId> = carried.iter().map(|c| c.0).collect();
    let mut frames: Vec<Vec<(ChunkId, &[u8])>> = Vec::new();
    let mut cur: Vec<(ChunkId, &[u8])> = carried.iter().map(|(id, d)| (*id, &d[..])).collect();
    let mut cur_len: usize = cur.iter().map(|c| c.1.len()).sum();
    for (&(id, data), known) in chunks.iter().zip(known) {
        if !known && seen.insert(id) {
            cur.push((id, data));
            cur_len += data.len();
            if cur_len >= FRAME_TARGET {
                frames.push(std::mem::take(&mut cur));
                cur_len = 0;
            }
        }
    }
    *added.carry.locked() = cur.into_iter().map(|(id, d)| (id, d.to_vec())).collect();
    put_frames(store, keys, params, &frames, added, cancel)
}

/// Stores the frame carried at the end of a disk.
pub(crate) fn finish_frames(
    store: &dyn ChunkStore,
    keys: &Keys,
    params: &EngineParams,
    added: &Added,
    cancel: &CancelToken,
) -> Result<()> {
    let carried = std::mem::take(&mut *added.carry.locked());
    if carried.is_empty() {
        return Ok(());
    }
    let frame: Vec<(ChunkId, &[u8])> = carried.iter().map(|(id, d)| (*id, &d[..])).collect();
    put_frames(store, keys, params, &[frame], added, cancel)
}

/// Compresses, seals and puts frames on every core.
fn put_frames(
    store: &dyn ChunkStore,
    keys: &Keys,
    params: &EngineParams,
    frames: &[Vec<(ChunkId, &[u8])>],
    added: &Added,
    cancel: &CancelToken,
) -> Result<()> {
    frames.par_iter().try_for_each(|chunks| -> Result<()> {
        cancel.check()?;
        put_frame(store, keys, params, chunks, added)
    })
}

/// Compresses, seals and puts one frame of new chunks, counting its bytes.
pub(crate) fn put_frame(
    store: &dyn ChunkStore,
    keys: &Keys,
    params: &EngineParams,
    chunks: &[(ChunkId, &[u8])],
    added: &Added,
) -> Result<()> {
    let frame = encode_frame(keys, BlobKind::Data, chunks, params.compression_level)?;
    added.new_bytes.fetch_add(u64::from(frame.raw_len), Ordering::Relaxed);
    added.new_stored.fetch_add(frame.bytes.len() as u64, Ordering::Relaxed);
    store.put(frame)
}

/// Stores a block map's plaintext unless the store has it; returns its id.
pub(crate) fn store_map(
    store: &dyn ChunkStore,
    keys: &Keys,
    params: &EngineParams,
    plain: &[u8],
    added: &Added,
) -> Result<ChunkId> {
    let id = keys.hash(plain);
    if !store.contains(&id)? {
        let frame = encode_frame(keys, BlobKind::Map, &[(id, plain)], params.compression_level)?;
        added.new_stored.fetch_add(frame.bytes.len() as u64, Ordering::Relaxed);
        store.put(frame)?;
    }
    Ok(id)
}

fn backup_disk(
    store: &dyn ChunkStore,
    keys: &Keys,
    params: &EngineParams,
    plan: DiskPlan,
    src: &dyn DiskSource,
    sink: &ProgressSink,
    cancel: &CancelToken,
) -> Result<DiskRecord> {
    let bs = u64::from(params.grid());
    let bpm = u64::from(BLOCKS_PER_MAP);
    let nmaps = plan.nblocks.div_ceil(bpm);
    let added = Added::default();
    let mut data_bytes = 0u64;
    let mut maps = Vec::with_capacity(nmaps as usize);
    let mut read_iter = plan.read.iter().peekable();
    let batch_blocks = (batch_bytes() / bs as usize).max(2 * rayon::current_num_threads());
    let mut batch_buf = vec![0u8; batch_blocks * bs as usize];
    for m in 0..nmaps {
        cancel.check()?;
        let lo = m * bpm;
        let hi = (lo + bpm).min(plan.nblocks);
        let n = (hi - lo) as usize;
        let mut entries = match &plan.carry {
            Some((parent, changed)) => {
                let mut e = load_map(store, keys, &parent.maps[m as usize], n)?.entries;
                for r in changed.iter().filter(|r| r.start < hi && r.end > lo) {
                    for blk in r.start.max(lo)..r.end.min(hi) {
                        e[(blk - lo) as usize] = None;
                    }
                }
                e
            }
            None => vec![None; n],
        };
        // Block indices of this window to read.
        let mut todo: Vec<u64> = Vec::new();
        while let Some(r) = read_iter.peek() {
            if r.start >= hi {
                break;
            }
            todo.extend(r.start.max(lo)..r.end.min(hi));
            if r.end <= hi {
                read_iter.next();
            } else {
                break;
            }
        }
        for batch in todo.chunks(batch_blocks) {
            // Read, detect zeroes and hash, on every core, into the reused batch buffer.
            let bufs = &mut batch_buf[..batch.len() * bs as usize];
            let hashed: Vec<(u64, usize, Option<ChunkId>)> = bufs
                .par_chunks_mut(bs as usize)
                .zip(batch.par_iter())
                .map(|(buf, &blk)| -> Result<_> {
                    cancel.check()?;
                    let off = blk * bs;
                    let len = (plan.size - off).min(bs) as usize;
                    let data = &mut buf[..len];
                    src.read_at(off, data)?;
                    sink.add(len as u64);
                    Ok((blk, len, (!is_zero(data)).then(|| keys.hash(data))))
                })
                .collect::<Result<_>>()?;
            let bufs = &batch_buf[..batch.len() * bs as usize];
            let mut chunks: Vec<(ChunkId, &[u8])> = Vec::with_capacity(hashed.len());
            for (i, (blk, len, id)) in hashed.into_iter().enumerate() {
                entries[(blk - lo) as usize] = id;
                if let Some(id) = id {
                    let start = i * bs as usize;
                    chunks.push((id, &bufs[start..start + len]));
                }
            }
            store_new(store, keys, params, &chunks, None, &added, cancel)?;
        }
        for (i, e) in entries.iter().enumerate() {
            if e.is_some() {
                let blk = lo + i as u64;
                data_bytes += (plan.size - blk * bs).min(bs);
            }
        }
        maps.push(store_map(store, keys, params, &BlockMap { entries }.encode(), &added)?);
    }
    finish_frames(store, keys, params, &added, cancel)?;
    Ok(DiskRecord {
        position: plan.position,
        label: src.label(),
        size: plan.size,
        block_size: params.grid(),
        blocks_per_map: BLOCKS_PER_MAP,
        data_bytes,
        read_bytes: plan.read_bytes,
        new_bytes: added.new_bytes.into_inner(),
        new_stored_bytes: added.new_stored.into_inner(),
        incremental: plan.carry.is_some(),
        fallback_reason: plan.fallback_reason,
        change_token: plan.change_token.map(hex::encode),
        maps,
        chunking: None,
    })
}
