//! The restore engine: a version's disk → block maps → frames → a target.
//! Chunks are grouped by the frame that holds them, so each frame is read,
//! authenticated and decompressed once; runs of consecutive blocks that sit
//! consecutively in a frame are written with one call. Work runs in
//! parallel and out of order; holes are left sparse where the target allows.
//! Workers open frames and writer threads (`Writers`) write them, so no
//! worker waits on the target.

use crate::Recover;
use std::collections::HashMap;
use std::sync::Mutex;

use rayon::prelude::*;
use tracing::info_span;

use crate::backup::{LOOKUP_BATCH, pool};
use crate::extents::{Extent, Window, load_window};
use crate::progress::{Phase, ProgressSink, RunOptions};
use crate::{
    ChunkId, ChunkLocation, ChunkStore, DiskTarget, Error, FrameBuf, FrameRef, Keys, Manifest, Result, chunk_in,
    decode_frame_into,
};

/// Disk bytes restored per round of parallel work.
const GROUP_BYTES: u64 = 512 << 20;

/// A frame buffer goes back to the free list after its writes up to this
/// size (a frame of a 4 MiB-block store, and then some); a larger one is freed.
const MAX_KEPT_FRAME_BUF: usize = 9 << 20;

/// The runs of one opened frame (`plain`) that the disk needs, each
/// chunk's id checked first: runs of chunks contiguous on the disk and
/// stored consecutively in the frame become one write (aligned in memory
/// and on the disk when the chunks are 4 KiB multiples, so a direct-I/O
/// target writes them without a staging copy). Returns (disk offset,
/// start, end in `plain`) for each run.
fn frame_runs(keys: &Keys, plain: &[u8], chunks: &[Located]) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < chunks.len() {
        let (first, first_loc) = chunks[i];
        let mut end = first_loc.offset as usize;
        let mut disk_end = first.offset;
        let mut j = i;
        while j < chunks.len() {
            let (ext, loc) = &chunks[j];
            if ext.offset != disk_end || loc.offset as usize != end {
                break;
            }
            let data = chunk_in(keys, plain, loc, &ext.id)?;
            if data.len() as u64 != ext.len {
                return Err(Error::CorruptBlob {
                    id: ext.id,
                    kind: "data",
                    reason: format!("{} bytes where the disk needs {} at offset {}", data.len(), ext.len, ext.offset),
                });
            }
            end += data.len();
            disk_end += ext.len;
            j += 1;
        }
        if j <= i {
            continue;
        }
        runs.push((first.offset, first_loc.offset as usize, end));
        i = j;
    }
    Ok(runs)
}

/// A write: disk offset, start and end in a frame buffer.
type Run = (u64, usize, usize);

/// The writers of a restore: threads that hand opened frames' runs to the
/// target, so that the workers, which open frames, never wait on the
/// target's writes (direct I/O, a network disk) — `threads` workers keep
/// `threads` cores busy. Frame buffers go round between the two through
/// a free list; the queue is bounded, so the buffers are too.
struct Writers {
    state: Mutex<WriteState>,
    /// Signalled when a write is queued or the writers are to stop.
    work: std::sync::Condvar,
    /// Signalled when a write is done (room in the queue, or idle).
    done: std::sync::Condvar,
    cap: usize,
}

#[derive(Default)]
struct WriteState {
    queue: std::collections::VecDeque<(FrameBuf, Vec<Run>)>,
    /// Writes queued or under way.
    busy: usize,
    closed: bool,
    /// The first write that failed; later writes are dropped.
    error: Option<Error>,
    free: Vec<FrameBuf>,
}

impl Writers {
    fn new(threads: usize) -> Writers {
        Writers {
            state: Mutex::new(WriteState::default()),
            work: std::sync::Condvar::new(),
            done: std::sync::Condvar::new(),
            cap: 2 * threads,
        }
    }
    fn wait<'a>(
        cv: &std::sync::Condvar,
        g: std::sync::MutexGuard<'a, WriteState>,
    ) -> std::sync::MutexGuard<'a, WriteState> {
        cv.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// A frame buffer from the free list, or a new one.
    fn buf(&self) -> FrameBuf {
        self.state.locked().free.pop().unwrap_or_default()
    }
    /// Gives a buffer back unused (its frame could not be opened).
    fn give_back(&self, buf: FrameBuf) {
        if buf.capacity() <= MAX_KEPT_FRAME_BUF {
            self.state.locked().free.push(buf);
        }
    }
    /// Queues `runs` of `buf` for writing; waits while the queue is full.
    fn submit(&self, buf: FrameBuf, runs: Vec<Run>) -> Result<()> {
        let mut g = self.state.locked();
        while g.queue.len() >= self.cap && g.error.is_none() {
            g = Self::wait(&self.done, g);
        }
        if let Some(e) = &g.error {
            return Err(crate::error::Echo::of(e).to_error());
        }
        g.queue.push_back((buf, runs));
        g.busy += 1;
        drop(g);
        self.work.notify_one();
        Ok(())
    }
    /// Waits until every queued write is done; the first failure, if any.
    fn flush(&self) -> Result<()> {
        let mut g = self.state.locked();
        while g.busy > 0 {
            g = Self::wait(&self.done, g);
        }
        g.error.as_ref().map_or(Ok(()), |e| Err(crate::error::Echo::of(e).to_error()))
    }
    /// The first failure (the error itself, once).
    fn take_error(&self) -> Option<Error> {
        self.state.locked().error.take()
    }
    fn close(&self) {
        self.state.locked().closed = true;
        self.work.notify_all();
    }
    /// A writer thread's loop.
    fn run(&self, target: &dyn DiskTarget, sink: &ProgressSink) {
        let mut g = self.state.locked();
        loop {
            let Some((buf, runs)) = g.queue.pop_front() else {
                if g.closed {
                    return;
                }
                g = Self::wait(&self.work, g);
                continue;
            };
            let failed = g.error.is_some();
            drop(g);
            // Room in the queue for a worker.
            self.done.notify_all();
            let mut result = Ok(());
            if !failed {
                let plain = buf.as_slice();
                // A target that panics fails the restore instead of leaving
                // the workers waiting for this write forever.
                let at = std::sync::atomic::AtomicU64::new(0);
                result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
                    for &(offset, a, b) in &runs {
                        at.store(offset, std::sync::atomic::Ordering::Relaxed);
                        target.write_at(offset, &plain[a..b])?;
                        sink.add((b - a) as u64);
                    }
                    Ok(())
                }))
                .unwrap_or_else(|_| {
                    Err(Error::TargetWrite {
                        target: target.label(),
                        offset: at.into_inner(),
                        source: std::io::Error::other("the target's write panicked"),
                    })
                });
            }
            g = self.state.locked();
            if let Err(e) = result {
                g.error.get_or_insert(e);
            }
            if buf.capacity() <= MAX_KEPT_FRAME_BUF {
                g.free.push(buf);
            }
            g.busy -= 1;
            self.done.notify_all();
        }
    }
}

/// Stops the writer threads when the restore leaves, by any path.
struct CloseOnDrop<'a>(&'a Writers);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A chunk to restore: the disk bytes it fills and where it is stored.
type Located = (Extent, ChunkLocation);

/// A window ready to write: its chunks grouped by the frame that holds them.
type LocatedWindow = (Window, Vec<(FrameRef, Vec<Located>)>);

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

/// A restore that went on past damage (see [`restore_disk_partial`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialRestore {
    /// What was written.
    pub report: RestoreReport,
    /// Byte ranges `[start, end)` that could not be read; they hold zeroes.
    pub failed: Vec<(u64, u64)>,
    /// The first error met, for the message.
    pub first_error: Option<String>,
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
    restore_inner(store, keys, manifest, position, target, run, None)
}

/// Like [`restore_disk`], but damage does not stop it: every block that can
/// be read and verified is written, the others are left as zeroes and listed.
/// Only errors unrelated to stored data (the target, cancellation) stop it.
///
/// # Errors
/// As [`restore_disk`], except damaged or missing chunks and frames.
pub fn restore_disk_partial(
    store: &dyn ChunkStore,
    keys: &Keys,
    manifest: &Manifest,
    position: u32,
    target: &dyn DiskTarget,
    run: &RunOptions,
) -> Result<PartialRestore> {
    let failed = Mutex::new((Vec::new(), None));
    let report = restore_inner(store, keys, manifest, position, target, run, Some(&failed))?;
    let (ranges, first_error): (Vec<(u64, u64)>, Option<String>) =
        failed.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    let merged = crate::merge_ranges(ranges);
    Ok(PartialRestore { report, failed: merged, first_error })
}

/// Where a partial restore records what it could not read.
type Failures = Mutex<(Vec<(u64, u64)>, Option<String>)>;

/// Whether an error is damage to stored data (skippable in a partial
/// restore). A failure to reach the data (a timeout, a full disk) is not: it
/// stops even a partial restore, which must not zero-fill data that is there.
fn is_damage(e: &Error) -> bool {
    e.is_damage()
}

fn restore_inner(
    store: &dyn ChunkStore,
    keys: &Keys,
    manifest: &Manifest,
    position: u32,
    target: &dyn DiskTarget,
    run: &RunOptions,
    failures: Option<&Failures>,
) -> Result<RestoreReport> {
    // In a partial restore, damage to a range is recorded and skipped.
    let skip = |e: Error, range: (u64, u64)| -> Result<()> {
        match failures {
            Some(f) if is_damage(&e) => {
                // Whatever the target held there must not pass for restored data.
                if !target.holes_read_as_zero() {
                    target.write_zeroes(range.0, range.1 - range.0)?;
                }
                let mut g = f.locked();
                g.0.push(range);
                g.1.get_or_insert_with(|| e.to_string());
                Ok(())
            }
            _ => Err(e),
        }
    };
    let cancel = &run.cancel;
    let disk = manifest.disks.iter().find(|d| d.position == position).ok_or_else(|| {
        Error::InvalidArgument(format!("the version has no disk {position} (it has {})", manifest.disks.len()))
    })?;
    let span = info_span!("restore", vm = %manifest.vm.name, disk = position);
    let _g = span.enter();
    let vm = &manifest.vm.name;
    disk.check_geometry(&format!("manifest of VM {vm} disk {position}"))?;
    let sink = ProgressSink::new(run.progress.clone(), Phase::Restore, disk.size);
    // Workers open frames; as many writer threads wait on the target
    // (direct I/O, a network disk) for them, so one worker per core keeps
    // every core busy.
    let threads = match run.threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    let pool = pool(threads)?;
    let writers = Writers::new(threads);
    let mut report = RestoreReport { size: disk.size, ..Default::default() };
    // Where each chunk of a window is (a few index transactions, not one
    // per chunk), grouped by frame in disk order; the window's runs of data
    // reserved on the target before the writes that fill them.
    let locate_window = |window: Window| -> Result<LocatedWindow> {
        let located: Vec<Option<Located>> = window
            .extents
            .par_chunks(LOOKUP_BATCH)
            .map(|part| -> Result<Vec<Option<Located>>> {
                let ids: Vec<ChunkId> = part.iter().map(|e| e.id).collect();
                let found = match store.locate_many(&ids) {
                    Ok(f) => f.into_iter().map(Ok).collect::<Vec<_>>(),
                    // A failed transaction fails each of its chunks (a partial restore skips them).
                    Err(e) => {
                        let echo = crate::error::Echo::of(&e);
                        let mut first = Some(e);
                        part.iter().map(|_| Err(first.take().unwrap_or_else(|| echo.to_error()))).collect()
                    }
                };
                part.iter()
                    .zip(found)
                    .map(|(&ext, found)| {
                        let found = found.and_then(|l| {
                            l.ok_or_else(|| Error::MissingChunk {
                                id: ext.id,
                                needed_by: format!("VM {vm} disk {position} at offset {}", ext.offset),
                            })
                        });
                        match found {
                            Ok(loc) => Ok(Some((ext, loc))),
                            Err(e) => skip(e, (ext.offset, ext.end())).map(|_| None),
                        }
                    })
                    .collect()
            })
            .collect::<Result<Vec<_>>>()?
            .concat();
        let mut groups: Vec<(FrameRef, Vec<Located>)> = Vec::new();
        let mut index: HashMap<FrameRef, usize> = HashMap::new();
        for (ext, loc) in located.into_iter().flatten() {
            let g = *index.entry(loc.frame).or_insert_with(|| {
                groups.push((loc.frame, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push((ext, loc));
        }
        let mut run: Option<(u64, u64)> = None;
        for e in &window.extents {
            match run {
                Some((s, end)) if end == e.offset => run = Some((s, e.end())),
                _ => {
                    if let Some((s, end)) = run.replace((e.offset, e.end())) {
                        target.reserve(s, end - s)?;
                    }
                }
            }
        }
        if let Some((s, end)) = run {
            target.reserve(s, end - s)?;
        }
        Ok((window, groups))
    };
    // Writes a round's located windows: all their frames in one parallel
    // pass (no wait at each window's end for its slowest frame), each
    // read, opened and written by one worker; holes zeroed where the target
    // needs it.
    let write_round = |round: &[LocatedWindow]| -> Result<u64> {
        let holes: Vec<std::ops::Range<u64>> =
            if target.holes_read_as_zero() { Vec::new() } else { round.iter().flat_map(|(w, _)| w.holes()).collect() };
        holes.par_iter().try_for_each(|h| -> Result<()> {
            target.write_zeroes(h.start, h.end - h.start)?;
            sink.add(h.end - h.start);
            Ok(())
        })?;
        let groups: Vec<&(FrameRef, Vec<Located>)> = round.iter().flat_map(|(_, g)| g).collect();
        let written = groups
            .par_iter()
            .map(|(frame, chunks)| -> Result<u64> {
                cancel.check()?;
                let mut buf = writers.buf();
                let opened = store
                    .read_frame(frame)
                    .and_then(|mut stored| decode_frame_into(keys, frame, &mut stored, &mut buf).map(|_| ()));
                match opened {
                    Ok(()) => {
                        // A chunk that does not match fails the restore, as before any write.
                        let runs = frame_runs(keys, buf.as_slice(), chunks)?;
                        let n: u64 = runs.iter().map(|&(_, a, b)| (b - a) as u64).sum();
                        writers.submit(buf, runs)?;
                        Ok(n)
                    }
                    Err(e) => {
                        writers.give_back(buf);
                        let mut first = Some(e);
                        for (ext, _) in chunks {
                            let e = first.take().unwrap_or(Error::CorruptFrame {
                                container: String::new(),
                                offset: frame.offset,
                                kind: "data",
                                reason: "same frame".into(),
                            });
                            skip(e, (ext.offset, ext.end()))?;
                            sink.add(ext.len);
                        }
                        Ok(0)
                    }
                }
            })
            .try_reduce(|| 0, |a, b| Ok(a + b))?;
        // The round is written when its writes are done.
        writers.flush()?;
        if target.holes_read_as_zero() {
            for (window, _) in round {
                sink.add(window.range.end - window.range.start - window.data_bytes());
            }
        }
        Ok(written)
    };
    // A round: several windows (~512 MiB of disk) loaded, located and
    // written together — fewer points where every worker waits for the
    // slowest frame. Runs of windows that loaded become one window each; one
    // that did not is skipped.
    let per_round = (GROUP_BYTES / disk.window_bytes().max(1)).clamp(1, 16) as usize;
    let prepare_round = |first: usize| -> Result<Vec<LocatedWindow>> {
        cancel.check()?;
        let ms: Vec<usize> = (first..(first + per_round).min(disk.maps.len())).collect();
        let loaded: Vec<Result<Window>> = ms.par_iter().map(|&m| load_window(store, keys, disk, m)).collect();
        let mut windows: Vec<Window> = Vec::new();
        let mut run: Option<Window> = None;
        for (m, w) in ms.iter().zip(loaded) {
            match w {
                Ok(w) => match &mut run {
                    Some(r) => {
                        r.range.end = w.range.end;
                        r.extents.extend(w.extents);
                    }
                    None => run = Some(w),
                },
                Err(e) => {
                    windows.extend(run.take());
                    let range = disk.window_range(*m);
                    skip(e, (range.start, range.end))?;
                    sink.add(range.end - range.start);
                }
            }
        }
        windows.extend(run.take());
        windows.into_iter().map(locate_window).collect()
    };
    // While one round's frames are written, the next round's maps are
    // loaded and its chunks located: the workers never wait for a round's
    // index reads, nor idle at its tail while the next round is planned.
    let starts: Vec<usize> = (0..disk.maps.len()).step_by(per_round).collect();
    let rounds = || -> Result<()> {
        let mut next = match starts.first() {
            Some(&first) => Some(prepare_round(first)?),
            None => None,
        };
        for i in 0..starts.len() {
            let Some(round) = next.take() else { break };
            let write = || write_round(&round);
            let (written, prepared) = match starts.get(i + 1) {
                Some(&first) => rayon::join(write, || prepare_round(first).map(Some)),
                None => (write(), Ok(None)),
            };
            report.data_bytes += written?;
            next = prepared?;
        }
        Ok(())
    };
    std::thread::scope(|ts| -> Result<()> {
        let _close = CloseOnDrop(&writers);
        for i in 0..threads {
            std::thread::Builder::new()
                .name(format!("alike-writer-{i}"))
                .spawn_scoped(ts, || writers.run(target, &sink))
                .map_err(|source| Error::Thread { name: format!("alike-writer-{i}"), source })?;
        }
        let r = pool.install(rounds);
        // A write's own failure rather than its echo in a worker.
        match writers.take_error() {
            Some(e) => Err(e),
            None => r,
        }
    })?;
    cancel.check()?;
    target.finish(disk.size)?;
    sink.finish();
    report.hole_bytes = disk.size - report.data_bytes;
    Ok(report)
}
