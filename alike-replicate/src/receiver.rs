//! The receiving end: answers which offered chunks the replica lacks,
//! writes what arrives into a [`Run`] (a layer that is never a point until
//! it commits), checks each disk's digest, commits the point and
//! acknowledges it; retention runs after the acknowledgement, so a merge
//! never holds the sender up.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use alike_core::{ChunkId, DiskSource, Extent, Keys, RunOptions};
use alike_repl::net::Flow;
use alike_repl::{Receiver, ReceiverEvent, ReplicaInfo};
use alike_replica::{CopyKind, ReplicaTarget, Run, RunStats};
use serde::Serialize;

use crate::error::{ReplicateError, Result};
use crate::meta::{META_RUN, META_SUMMARY, PointName, RunMeta, SenderSummary, digest, geometry};

/// How the receiving end runs.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReceiverOptions {
    /// The VM the replica must hold (`None`: whatever the sender says).
    pub vm: Option<String>,
    /// After the commit (and the acknowledgement), keep only the newest
    /// this many points.
    pub keep: Option<usize>,
    /// The new point's time in milliseconds since the Unix epoch (default: now).
    pub time_ms: Option<u64>,
    /// Cancellation (progress is the sender's).
    pub run: RunOptions,
}

/// What the receiving end did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ReceiverReport {
    /// The new point.
    pub point: u64,
    /// Its time, RFC 3339.
    pub time: String,
    /// Its time in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Bytes taken from the wire (what the sender sent).
    pub received_bytes: u64,
    /// Bytes this end put on the wire (its answers).
    pub sent_bytes: u64,
    /// What the run did with the offers (held, copied, seeded, resumed, received…).
    pub stats: RunStats,
    /// What the sender said it read (when it said).
    pub sender: Option<SenderSummary>,
    /// Points merged away by `keep`.
    pub removed_points: Vec<u64>,
    /// A retention failure after the commit (the point is committed).
    pub keep_error: Option<String>,
    /// Why the replica's record was rebuilt before the run, if it was.
    pub record_rebuilt: Option<String>,
    /// Wall time.
    pub elapsed_seconds: f64,
}

/// A seed: a disk whose chunks (cut and hashed with the replica's key)
/// the run copies instead of having them sent.
pub struct Seed<'s> {
    source: &'s dyn DiskSource,
    extents: Vec<Extent>,
}

impl std::fmt::Debug for Seed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seed").field("source", &self.source.label()).field("extents", &self.extents.len()).finish()
    }
}

impl<'s> Seed<'s> {
    /// Cuts and hashes `source` as `target`'s record would (its chunking,
    /// its key): what seeding a first run from a version costs, done before
    /// the connection so the sender never waits for it.
    ///
    /// # Errors
    /// The replica's key cannot be read; a read fails; cancellation.
    pub fn prepare(target: &dyn ReplicaTarget, source: &'s dyn DiskSource, run: &RunOptions) -> Result<Seed<'s>> {
        let keys = target.keys()?;
        let extents = alike_replica::cut_disk(source, &target.chunking(), &keys, &run.cancel)?;
        Ok(Seed { source, extents })
    }

    /// Bytes of chunks the seed holds.
    pub fn bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
}

/// A borrowed source, boxed for a run's copy sources.
struct Borrowed<'s>(&'s dyn DiskSource);

impl DiskSource for Borrowed<'_> {
    fn label(&self) -> String {
        self.0.label()
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        self.0.read_at(offset, buf)
    }
}

/// What the receiver says in its hello for `target`: its id key, and the
/// name of its newest point (empty for none).
///
/// # Errors
/// The key or the record cannot be read.
pub fn replica_info(target: &dyn ReplicaTarget) -> Result<(Keys, ReplicaInfo)> {
    let keys = target.keys()?;
    let id_key =
        keys.id_key().ok_or_else(|| ReplicateError::InvalidArgument("the replica's key makes no keyed ids".into()))?;
    let base = match target.points()?.last() {
        None => Vec::new(),
        Some(p) => {
            let record = target.record()?;
            if record.point() != p.point {
                Vec::new()
            } else {
                let digests = record.disks().iter().map(|d| digest(d.size, &d.extents)).collect::<Result<Vec<_>>>()?;
                PointName::new(p.point, &digests).encode()
            }
        }
    };
    Ok((keys, ReplicaInfo { id_key, base }))
}

/// The receiving end's engine: the step function a protocol shell calls.
pub(crate) struct ReceiverEngine<'t> {
    target: &'t dyn ReplicaTarget,
    opts: &'t ReceiverOptions,
    seeds: &'t [Seed<'t>],
    started: Instant,
    run: Option<Run<'t>>,
    meta: Option<RunMeta>,
    summary: Option<SenderSummary>,
    digests: Vec<Option<[u8; 32]>>,
    /// Committed and acknowledged; retention and the report remain.
    done: Option<ReceiverReport>,
}

impl<'t> ReceiverEngine<'t> {
    pub(crate) fn new(target: &'t dyn ReplicaTarget, opts: &'t ReceiverOptions, seeds: &'t [Seed<'t>]) -> Self {
        ReceiverEngine {
            target,
            opts,
            seeds,
            started: Instant::now(),
            run: None,
            meta: None,
            summary: None,
            digests: Vec::new(),
            done: None,
        }
    }

    /// The protocol step: answers offers, writes data, checks digests, commits.
    pub(crate) fn step(&mut self, r: &mut Receiver) -> Result<Flow<ReceiverReport>> {
        let res = self.opts.run.cancel.check().map_err(ReplicateError::from).and_then(|()| self.step_inner(r));
        if let Err(e) = &res {
            if r.error().is_none() && !r.is_done() {
                r.abort(e.wire_code(), &e.to_string());
            }
            // Discard the layer now (a first run keeps its journal).
            if let Some(run) = self.run.take() {
                let _ = run.abort();
            }
        }
        res
    }

    fn step_inner(&mut self, r: &mut Receiver) -> Result<Flow<ReceiverReport>> {
        if let Some(mut rep) = self.done.take() {
            // The acknowledgement has left: retention now, so the sender is
            // never held up by a merge.
            if let Some(n) = self.opts.keep {
                match self.target.keep_last(n) {
                    Ok(removed) => rep.removed_points = removed,
                    Err(e) => rep.keep_error = Some(e.to_string()),
                }
            }
            rep.received_bytes = r.stats().wire_received;
            rep.sent_bytes = r.stats().wire_sent;
            rep.elapsed_seconds = self.started.elapsed().as_secs_f64();
            return Ok(Flow::Done(rep));
        }
        let mut progressed = false;
        while let Some(ev) = r.poll_event() {
            progressed = true;
            match ev {
                ReceiverEvent::Meta { kind: META_RUN, bytes } => self.on_run(&bytes)?,
                ReceiverEvent::Meta { kind: META_SUMMARY, bytes } => self.summary = serde_json::from_slice(&bytes).ok(),
                ReceiverEvent::DiskBegin(spec) => {
                    let (meta, _) = self.run_ref()?;
                    let d = spec.disk as usize;
                    let want = meta.disks.get(d).copied();
                    let chunking: alike_core::Chunking = meta.chunking.parse().unwrap_or_default();
                    if want != Some(spec.size) || Some(spec.geometry) != geometry(&chunking).ok() {
                        return Err(ReplicateError::Mismatch(format!(
                            "disk {d} begins with {} bytes cut as {:?}; the run said {want:?} bytes cut as {}",
                            spec.size, spec.geometry, meta.chunking
                        )));
                    }
                }
                ReceiverEvent::Offer(o) => {
                    let (_, run) = self.run_ref()?;
                    let disk = o.disk as usize;
                    let mut needed = vec![false; o.extents.len()];
                    let mut i = 0;
                    for range in &o.ranges {
                        let start = i;
                        while i < o.extents.len() && o.extents[i].offset < range.end {
                            i += 1;
                        }
                        let exts: Vec<Extent> = o.extents[start..i]
                            .iter()
                            .map(|e| Extent { offset: e.offset, len: u64::from(e.len), id: ChunkId(e.id) })
                            .collect();
                        for k in run.offer(disk, range.clone(), &exts)? {
                            needed[start + k] = true;
                        }
                    }
                    r.need(o.batch, &needed)?;
                }
                ReceiverEvent::Data(f) => {
                    let (_, run) = self.run_ref()?;
                    for (e, bytes) in f.iter() {
                        run.write_extent(f.disk as usize, e.offset, bytes)?;
                    }
                }
                ReceiverEvent::DiskEnd { disk, .. } => {
                    let (meta, run) = self.run_ref()?;
                    let d = disk as usize;
                    let size = meta.disks[d];
                    let mine = digest(size, &run.disk_extents(d)?)?;
                    self.digests[d] = Some(mine);
                    r.finish_disk(disk, mine)?;
                }
                ReceiverEvent::Commit { disks } => {
                    let (name, rep) = self.commit(disks as usize)?;
                    r.ack(&name)?;
                    // The report follows at the next step, once the
                    // acknowledgement is on its way.
                    self.done = Some(rep);
                    return Ok(Flow::Continue);
                }
                _ => {}
            }
        }
        Ok(if progressed { Flow::Continue } else { Flow::Wait })
    }

    fn run_ref(&self) -> Result<(&RunMeta, &Run<'t>)> {
        match (&self.meta, &self.run) {
            (Some(m), Some(r)) => Ok((m, r)),
            _ => Err(ReplicateError::Mismatch("the sender began without describing the run".into())),
        }
    }

    /// The sender described the run: check it against the replica, begin.
    fn on_run(&mut self, bytes: &[u8]) -> Result<()> {
        if self.meta.is_some() {
            return Err(ReplicateError::Mismatch("the sender described the run twice".into()));
        }
        let meta: RunMeta = serde_json::from_slice(bytes)
            .map_err(|e| ReplicateError::Mismatch(format!("the sender's description of the run: {e}")))?;
        if let Some(vm) = self.opts.vm.as_deref().filter(|vm| *vm != meta.vm) {
            return Err(ReplicateError::Mismatch(format!(
                "the sender replicates VM {:?}; this replica holds {vm:?}",
                meta.vm
            )));
        }
        let theirs: alike_core::Chunking = meta
            .chunking
            .parse()
            .map_err(|_| ReplicateError::Mismatch(format!("the sender cuts disks as {:?}", meta.chunking)))?;
        let ours = self.target.chunking();
        if theirs != ours {
            return Err(ReplicateError::Mismatch(format!(
                "the sender cuts disks as {theirs}; the replica {} is cut as {ours}",
                self.target.label()
            )));
        }
        let mut run = self.target.begin(&meta.disks)?;
        if run.base_record().point() == 0 {
            for s in self.seeds {
                run.add_copy_source(CopyKind::Seed, Box::new(Borrowed(s.source)), &s.extents);
            }
        }
        self.digests = vec![None; meta.disks.len()];
        self.meta = Some(meta);
        self.run = Some(run);
        Ok(())
    }

    /// Commits the point: every disk ended and matched.
    fn commit(&mut self, disks: usize) -> Result<(Vec<u8>, ReceiverReport)> {
        let count = self.meta.as_ref().map_or(0, |m| m.disks.len());
        if disks != count || self.digests.iter().any(Option::is_none) {
            return Err(ReplicateError::Mismatch(format!("a commit of {disks} disk(s) ended; the run has {count}")));
        }
        let run = self.run.take().ok_or_else(|| ReplicateError::Mismatch("a commit before the run began".into()))?;
        let note = run.record_note().map(str::to_owned);
        let time_ms = self.opts.time_ms.unwrap_or_else(now_ms);
        let done = run.commit(time_ms)?;
        let digests: Vec<[u8; 32]> = self.digests.iter().map(|d| d.unwrap_or_default()).collect();
        let name = PointName::new(done.point.point, &digests).encode();
        Ok((
            name,
            ReceiverReport {
                point: done.point.point,
                time: done.point.time,
                time_ms,
                received_bytes: 0,
                sent_bytes: 0,
                stats: done.stats,
                sender: self.summary.take(),
                removed_points: Vec::new(),
                keep_error: None,
                record_rebuilt: note,
                elapsed_seconds: 0.0,
            },
        ))
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
