//! Progress reporting and cancellation, shared by every long operation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Which stage an operation is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Finding what to read.
    Scanning,
    /// Reading, deduplicating and storing disk data.
    Backup,
    /// Writing a disk out of a version.
    Restore,
    /// Checking stored data.
    Verify,
    /// Rebuilding the index from pack trailers (units: packs).
    Index,
    /// Garbage collection (units: block maps marked, then packs swept).
    Gc,
}

impl Phase {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Scanning => "scanning",
            Phase::Backup => "backup",
            Phase::Restore => "restore",
            Phase::Verify => "verify",
            Phase::Index => "index",
            Phase::Gc => "gc",
        }
    }
}

/// One progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Stage.
    pub phase: Phase,
    /// Bytes done so far in this stage.
    pub bytes_done: u64,
    /// Bytes this stage will handle in all.
    pub bytes_total: u64,
}

impl Progress {
    /// A verify-stage report (for stores that count their own progress).
    pub fn verify(bytes_done: u64, bytes_total: u64) -> Progress {
        Progress { phase: Phase::Verify, bytes_done, bytes_total }
    }
    /// A report for `phase` in its own units (`bytes_*` then count those units).
    pub fn of(phase: Phase, done: u64, total: u64) -> Progress {
        Progress { phase, bytes_done: done, bytes_total: total }
    }
}

/// A progress callback. Called from worker threads; keep it quick.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// A cancellation flag shared between the caller and a running operation.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }
    /// Asks the operation to stop at the next block.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// `Err(Cancelled)` once cancelled.
    ///
    /// # Errors
    /// [`crate::Error::Cancelled`].
    pub fn check(&self) -> crate::Result<()> {
        if self.is_cancelled() { Err(crate::Error::Cancelled) } else { Ok(()) }
    }
}

/// Counts bytes from many threads and calls the callback about every
/// 1/500 of the total (and at the end), never more often.
pub struct ProgressSink {
    cb: Option<ProgressFn>,
    phase: Phase,
    total: u64,
    done: AtomicU64,
    step: u64,
}

impl ProgressSink {
    /// A sink for one stage of `total` bytes.
    pub fn new(cb: Option<ProgressFn>, phase: Phase, total: u64) -> ProgressSink {
        let s = ProgressSink { cb, phase, total, done: AtomicU64::new(0), step: (total / 500).max(1 << 20) };
        s.emit(0);
        s
    }
    /// Adds `n` bytes done.
    pub fn add(&self, n: u64) {
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        let after = before + n;
        if before / self.step != after / self.step {
            self.emit(after);
        }
    }
    /// Reports the end of the stage.
    pub fn finish(&self) {
        self.emit(self.total.max(self.done.load(Ordering::Relaxed)));
    }
    fn emit(&self, done: u64) {
        if let Some(cb) = &self.cb {
            cb(&Progress { phase: self.phase, bytes_done: done.min(self.total), bytes_total: self.total });
        }
    }
}

/// How a long operation runs: worker threads, progress callback, cancellation.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Called with progress from worker threads.
    pub progress: Option<ProgressFn>,
    /// Stops the operation at the next block when cancelled.
    pub cancel: CancelToken,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel)
            .finish()
    }
}
