//! The seam every kind of replica implements: [`ReplicaTarget`] (the
//! replica's points, its record, runs, retention, reading a point) and
//! [`RunLayer`] (where one run writes its new point).
//!
//! **API boundary:** a directory of VHDX files ([`crate::ReplicaDir`])
//! implements both today; a XenServer replica (a VM whose disks take a
//! snapshot per point) and a Hyper-V host registration plug in here.
//! Everything a run does with the record — which offered extents the
//! replica lacks, local copies of data it holds elsewhere, checking each
//! extent's id as it arrives, the record of the new point — lives in
//! [`Run`], once, for every target.

use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use alike_core::{Chunking, DiskSource, DiskTarget, Keys, Phase, ProgressSink, RawFileTarget, RunOptions, is_zero};
use serde::Serialize;

use crate::error::{ReplicaError, Result};
use crate::record::Record;
use crate::run::Run;

/// One disk of a committed point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PointDisk {
    /// Virtual size in bytes.
    pub size: u64,
    /// Where the target keeps it: a file name in the replica's folder (the
    /// top of the point's VHDX chain), or a host's own name for it.
    pub location: String,
}

impl PointDisk {
    /// A disk of `size` bytes kept at `location`.
    pub fn new(size: u64, location: impl Into<String>) -> PointDisk {
        PointDisk { size, location: location.into() }
    }
}

/// A committed point of a replica: what `alike replica list --json` prints
/// for each, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Point {
    /// Its id: 1 for a replica's first point, then one more per commit,
    /// never reused.
    pub point: u64,
    /// When the run that made it was committed, RFC 3339 (UTC, milliseconds).
    pub time: String,
    /// The same instant in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Its disks, in the VM's order.
    pub disks: Vec<PointDisk>,
}

impl Point {
    /// A point; `time` is derived from `time_ms`.
    pub fn new(point: u64, time_ms: u64, disks: Vec<PointDisk>) -> Point {
        Point { point, time: rfc3339(time_ms), time_ms, disks }
    }
}

/// `time_ms` (milliseconds since the Unix epoch) as RFC 3339 in UTC with
/// milliseconds: `2026-12-01T10:00:00.000Z`.
pub fn rfc3339(time_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(time_ms)).to_string()
}

/// Options of [`ReplicaTarget::export`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Replace an existing output file.
    pub force: bool,
    /// Progress (phase `Restore`, bytes of the point's allocated ranges)
    /// and cancellation.
    pub run: RunOptions,
}

impl ExportOptions {
    /// Replaces an existing output file.
    pub fn force(&mut self, yes: bool) -> &mut ExportOptions {
        self.force = yes;
        self
    }
    /// Sets progress and cancellation.
    pub fn run(&mut self, run: RunOptions) -> &mut ExportOptions {
        self.run = run;
        self
    }
}

/// What [`ReplicaTarget::export`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ExportReport {
    /// The point exported.
    pub point: u64,
    /// The disk exported.
    pub disk: usize,
    /// The image's size in bytes.
    pub size: u64,
    /// Bytes of data written (holes are left sparse).
    pub written_bytes: u64,
    /// Wall time.
    pub elapsed_seconds: f64,
}

/// A replica: committed points, each holding every disk of the VM, the
/// receiver's record of the newest, and runs that add a point.
///
/// Implementations must be safe to use from several threads; a target
/// lets one writer (run, retention) at a time work on the replica and
/// answers the others [`ReplicaError::Busy`], while reading points goes on.
pub trait ReplicaTarget: Send + Sync {
    /// A label for messages (a folder, a VM).
    fn label(&self) -> String;

    /// How the record cuts disks (fixed for the replica's life).
    fn chunking(&self) -> Chunking;

    /// The replica's keys: chunk ids are [`Keys::hash`] under them. A
    /// sender offers ids made with these keys.
    ///
    /// # Errors
    /// The key cannot be read (or, for a replica that lost it, made).
    fn keys(&self) -> Result<Keys>;

    /// The committed points, oldest first.
    ///
    /// # Errors
    /// The replica's own state cannot be read or is damaged.
    fn points(&self) -> Result<Vec<Point>>;

    /// Disk `disk` of committed point `point`, to read (export, seeding,
    /// verification). It stays readable while runs and retention go on.
    ///
    /// # Errors
    /// [`ReplicaError::PointNotFound`], [`ReplicaError::DiskNotFound`], or
    /// the point's files are missing or damaged (an error naming the file).
    fn point_disk(&self, point: u64, disk: usize) -> Result<Box<dyn DiskSource>>;

    /// The record of the newest point: loaded, or rebuilt (by reading the
    /// point) when it is missing, damaged or made with another key.
    ///
    /// # Errors
    /// The point cannot be read to rebuild it.
    fn record(&self) -> Result<Record>;

    /// Begins a run: a new point with disks of `disk_sizes` bytes, over the
    /// newest point (or over nothing, for a replica's first point). The run
    /// holds the replica's writer lock until it is committed or aborted;
    /// until committed it is never a point, whatever happens to the process.
    ///
    /// # Errors
    /// [`ReplicaError::Busy`] while another writer works on the replica;
    /// [`ReplicaError::DisksDiffer`] when the sizes are not the replica's;
    /// [`ReplicaError::InvalidArgument`] when the replica holds the most
    /// points it can (keep fewer).
    fn begin(&self, disk_sizes: &[u64]) -> Result<Run<'_>>;

    /// Discards what an unfinished first run kept to resume (its journal
    /// of received data): the next first run starts from nothing. Returns
    /// whether there was something to discard.
    ///
    /// # Errors
    /// [`ReplicaError::Busy`] while a run works on the replica; a file
    /// cannot be removed.
    fn discard_partial(&self) -> Result<bool> {
        Ok(false)
    }

    /// Keeps the newest `n` points (`n` ≥ 1), merging the older ones away;
    /// every point kept still reads as it did. Returns the points removed.
    ///
    /// # Errors
    /// `n` is 0; [`ReplicaError::Busy`]; a file cannot be read or written.
    fn keep_last(&self, n: usize) -> Result<Vec<u64>>;

    /// Writes disk `disk` of point `point` to `output` as a raw image
    /// (sparse where the point holds zeroes): what `alike replica export`
    /// does. The image appears under its name only when complete.
    ///
    /// # Errors
    /// As [`ReplicaTarget::point_disk`]; [`ReplicaError::OutputExists`]
    /// when `output` exists and `opts.force` is not set; a read or write
    /// failure; cancellation.
    fn export(&self, point: u64, disk: usize, output: &Path, opts: &ExportOptions) -> Result<ExportReport> {
        let t0 = Instant::now();
        if !opts.force && std::fs::symlink_metadata(output).is_ok() {
            return Err(ReplicaError::OutputExists { file: output.to_owned() });
        }
        let src = self.point_disk(point, disk)?;
        let size = src.size();
        let ranges = src.allocated_ranges()?;
        let total = ranges.iter().map(|r| r.end - r.start).sum();
        let progress = ProgressSink::new(opts.run.progress.clone(), Phase::Restore, total);
        let target = RawFileTarget::create(output)?;
        let mut buf = vec![0u8; 4 << 20];
        let mut written = 0;
        for r in ranges {
            let mut at = r.start;
            while at < r.end {
                opts.run.cancel.check()?;
                let n = (r.end - at).min(buf.len() as u64);
                let b = &mut buf[..n as usize];
                src.read_at(at, b)?;
                if !is_zero(b) {
                    target.write_at(at, b)?;
                    written += n;
                } else if !target.holes_read_as_zero() {
                    target.write_zeroes(at, n)?;
                }
                progress.add(n);
                at += n;
            }
        }
        target.finish(size)?;
        progress.finish();
        Ok(ExportReport { point, disk, size, written_bytes: written, elapsed_seconds: t0.elapsed().as_secs_f64() })
    }
}

/// Where one run writes its new point: a layer over the newest point
/// (differencing files, a snapshot to revert to…) that is discarded unless
/// committed. A target makes one in [`ReplicaTarget::begin`] and hands it
/// to [`Run::new`]; [`Run`] calls it.
///
/// Call order: `write_at`/`write_zeroes` from any threads; then `seal`
/// once; then `commit` or `abort` once. Dropping an uncommitted layer
/// discards it.
pub trait RunLayer: Send + Sync {
    /// The id the point will have.
    fn point(&self) -> u64;
    /// Writes `data` at `offset` of disk `disk`.
    ///
    /// # Errors
    /// Out of range, or a write failure.
    fn write_at(&self, disk: usize, offset: u64, data: &[u8]) -> Result<()>;
    /// Makes `len` bytes at `offset` of disk `disk` read as zeroes.
    ///
    /// # Errors
    /// Out of range, or a write failure.
    fn write_zeroes(&self, disk: usize, offset: u64, len: u64) -> Result<()>;
    /// Completes the layer's disks durably (not yet a point) and returns
    /// each disk of the new point, to read.
    ///
    /// # Errors
    /// A write or sync failure.
    fn seal(&mut self) -> Result<Vec<Box<dyn DiskSource>>>;
    /// Makes the sealed layer the replica's newest point, with its
    /// record, in one atomic step.
    ///
    /// # Errors
    /// A write or sync failure: the replica is then still at its previous
    /// point (or, if the failure came after the atomic step, at the new one).
    fn commit(self: Box<Self>, time_ms: u64, record: &Record) -> Result<Point>;
    /// Discards the layer.
    ///
    /// # Errors
    /// A file could not be removed (it is removed by the next writer).
    fn abort(self: Box<Self>) -> Result<()>;
}
