//! [`replicate_local`]: both ends of a run in one process, without a wire —
//! the sender cuts each source disk and offers its chunks span by span, the
//! receiver answers what it lacks, and only that is written.
//!
//! The replication protocol (crate `alike-repl`) does the same across a
//! link; this is the path when one process sees both the source and the
//! replica, and the reference the protocol's results are checked against.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use alike_core::{DiskSource, Extent, HookedSource, Phase, ProgressSink, RunOptions};
use serde::Serialize;

use crate::error::Result;
use crate::record::cut_range;
use crate::run::RunStats;
use crate::target::ReplicaTarget;

/// Options of [`replicate_local`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReplicateOptions {
    /// The new point's time in milliseconds since the Unix epoch (default: now).
    pub time_ms: Option<u64>,
    /// After the commit, keep only the newest this many points.
    pub keep: Option<usize>,
    /// Progress (phase `Backup`: bytes of the sources read) and cancellation.
    pub run: RunOptions,
}

impl ReplicateOptions {
    /// Sets the new point's time.
    pub fn time_ms(&mut self, ms: u64) -> &mut Self {
        self.time_ms = Some(ms);
        self
    }
    /// Keeps only the newest `n` points after the commit.
    pub fn keep(&mut self, n: usize) -> &mut Self {
        self.keep = Some(n);
        self
    }
    /// Sets progress and cancellation.
    pub fn run(&mut self, run: RunOptions) -> &mut Self {
        self.run = run;
        self
    }
}

/// What [`replicate_local`] did: what `alike replicate --to-dir --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ReplicateReport {
    /// The new point.
    pub point: u64,
    /// Its time, RFC 3339.
    pub time: String,
    /// Its time in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Bytes read from the sources.
    pub read_bytes: u64,
    /// What the lacking extents would weigh on a link: each one
    /// zstd-compressed (level 3) unless that does not shrink it; no framing.
    pub sent_bytes: u64,
    /// The run's byte counts.
    pub stats: RunStats,
    /// Points merged away by `keep`.
    pub removed_points: Vec<u64>,
    /// Why the receiver's record was rebuilt before the run, if it was.
    pub record_rebuilt: Option<String>,
    /// Wall time.
    pub elapsed_seconds: f64,
}

/// Replicates `disks` (the VM's disks, in order) into `target` as a new
/// point, sending only what the replica lacks; see the module docs.
///
/// # Errors
/// As [`ReplicaTarget::begin`] and [`crate::Run::commit`]; a source read
/// fails; cancellation. The replica is then at its previous point.
pub fn replicate_local(
    target: &dyn ReplicaTarget,
    disks: &[&dyn DiskSource],
    opts: &ReplicateOptions,
) -> Result<ReplicateReport> {
    let t0 = Instant::now();
    let sizes: Vec<u64> = disks.iter().map(|d| d.size()).collect();
    let mut total = 0;
    for d in disks {
        total += d.allocated_ranges()?.iter().map(|r| r.end - r.start).sum::<u64>();
    }
    let progress = ProgressSink::new(opts.run.progress.clone(), Phase::Backup, total);
    let cancel = &opts.run.cancel;
    let run = target.begin(&sizes)?;
    let chunking = run.base_record().chunking();
    let keys = run.keys().clone();
    let mut read = 0;
    let mut sent = 0u64;
    for (d, src) in disks.iter().enumerate() {
        let hooked = HookedSource::new(*src, |n| {
            progress.add(n);
            cancel.check()
        });
        read += cut_range(&hooked, 0..src.size(), &chunking, &keys, cancel, &mut |span, chunks| {
            let extents: Vec<Extent> = chunks.iter().map(|c| c.0).collect();
            for i in run.offer(d, span, &extents)? {
                let data = chunks[i].1;
                sent += alike_core::compress(data, 3).map_or(data.len(), |c| c.len()) as u64;
                run.write_extent(d, extents[i].offset, data)?;
            }
            Ok(())
        })?;
    }
    let record_rebuilt = run.record_note().map(str::to_owned);
    let time_ms = opts.time_ms.unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    });
    let done = run.commit(time_ms)?;
    progress.finish();
    let removed_points = match opts.keep {
        Some(n) => target.keep_last(n)?,
        None => Vec::new(),
    };
    Ok(ReplicateReport {
        point: done.point.point,
        time: done.point.time,
        time_ms,
        read_bytes: read,
        sent_bytes: sent,
        stats: done.stats,
        removed_points,
        record_rebuilt,
        elapsed_seconds: t0.elapsed().as_secs_f64(),
    })
}
