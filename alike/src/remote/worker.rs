//! The processor: the worker side of the processor protocol (`alike
//! processor`). It says hello, reads one job from its input, runs it,
//! streams events to its output as they happen, and ends with `done` or
//! `failed`.
//!
//! Input is watched on a thread of its own for the whole job: a `cancel`
//! line, or the input ending (the orchestrator closed the channel, or died,
//! and sshd closed the worker's standard input), cancels the job through
//! its [`CancelToken`], so it stops at the next block and cleans up as a
//! cancelled operation does (unfinished packs removed, no version
//! written). A failed write to the output (the channel is gone) cancels
//! it the same way.
//!
//! Secrets arrive in the job line and go only where they are used (the
//! store's builder, the object-storage options); no event, log line or
//! error carries them.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alike_core::{CancelToken, DiskSource, Progress, Recover};
use alike_remote::protocol::{
    DiskProgress, Done, Failure, Hello, LineDecoder, Listening, MAX_LINE, OrchestratorMessage, ProgressEvent, Queued,
    Started, Warning, WorkerMessage, decode_orchestrator, encode,
};

use super::job::{BackupJob, JobKind, KINDS, ProcessorJob, RestoreJob, VerifyJob};
use crate::{BackupOptions, Error, ErrorKind, Parent, RestoreOptions, Result, Retry, VerifyOptions};
use crate::{EndOptions, JobLink, ReplicationJob};

/// How a processor runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// How long to wait for the job after saying hello: 60 s.
    pub job_timeout: Duration,
    /// Jobs on this processor run one at a time: each holds this file
    /// (`flock`) while it runs, and a job that finds it held reports
    /// `queued` and waits. Default: no lock (jobs run side by side).
    pub queue_lock: Option<PathBuf>,
}

impl Default for WorkerOptions {
    fn default() -> WorkerOptions {
        WorkerOptions { job_timeout: Duration::from_secs(60), queue_lock: None }
    }
}

impl WorkerOptions {
    /// Sets [`WorkerOptions::queue_lock`].
    pub fn queue_lock(mut self, path: impl Into<PathBuf>) -> Self {
        self.queue_lock = Some(path.into());
        self
    }
}

/// How a processor's run ended (the process's exit status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerExit {
    /// The job succeeded (`done` was sent): status 0.
    Done,
    /// The job failed (`failed` was sent), or no valid job came: status 1.
    Failed,
    /// The job was cancelled (by `cancel`, or the channel closing): 130.
    Cancelled,
}

impl WorkerExit {
    /// The process exit status.
    pub fn code(self) -> i32 {
        match self {
            WorkerExit::Done => 0,
            WorkerExit::Failed => 1,
            WorkerExit::Cancelled => 130,
        }
    }
}

/// The worker's output: one line per message, flushed; a failed write
/// means the channel is gone, and cancels the job.
struct Out {
    w: Mutex<Box<dyn Write + Send>>,
    broken: AtomicBool,
    cancel: CancelToken,
}

impl Out {
    fn send(&self, msg: &WorkerMessage) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let line = encode(msg);
        let mut w = self.w.locked();
        if w.write_all(&line).and_then(|()| w.flush()).is_err() {
            self.broken.store(true, Ordering::Relaxed);
            self.cancel.cancel();
            tracing::warn!("the orchestrator's channel is gone: cancelling the job");
        }
    }
}

/// Runs a processor on `input` and `output` (in `alike processor`: its
/// standard input and output, which sshd connects to the orchestrator's
/// channel): hello, one job, its events, its end. Never panics on what the
/// orchestrator sends; a malformed job or one of another protocol version
/// is answered with `failed` naming why.
pub fn serve_processor(input: Box<dyn Read + Send>, output: Box<dyn Write + Send>, opts: &WorkerOptions) -> WorkerExit {
    let cancel = CancelToken::new();
    let out = Arc::new(Out { w: Mutex::new(output), broken: AtomicBool::new(false), cancel: cancel.clone() });
    out.send(&WorkerMessage::Hello(Hello::new(format!("alike {}", crate::VERSION), KINDS)));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let closed = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (cancel, closed) = (cancel.clone(), closed.clone());
        move || watch_input(input, tx, cancel, closed)
    };
    if let Err(e) = alike_core::spawn("alike-processor-input", watcher) {
        out.send(&WorkerMessage::failed(failure(&Error::from(e))));
        return WorkerExit::Failed;
    }
    let fail = |e: Error| {
        tracing::error!(error = %e, "processor: no job run");
        out.send(&WorkerMessage::failed(failure(&e)));
        WorkerExit::Failed
    };
    let spec = match rx.recv_timeout(opts.job_timeout) {
        Ok(Ok(spec)) => spec,
        Ok(Err(e)) => return fail(e),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            return fail(Error::InvalidArgument(format!("no job came within {:?}", opts.job_timeout)));
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            tracing::info!("processor: the input ended before a job came");
            return WorkerExit::Cancelled;
        }
    };
    let job = match ProcessorJob::from_spec(spec) {
        Ok(j) => j,
        Err(e) => return fail(e),
    };
    let interval = Duration::from_millis(job.progress_interval_ms.unwrap_or(500).clamp(10, 60_000));
    tracing::info!(job = %job.id, kind = job.kind_name(), "processor: job started");
    out.send(&WorkerMessage::Started(Started::new(&job.id, job.kind_name(), std::process::id())));
    let ctx = Arc::new(Ctx { out: out.clone(), cancel: cancel.clone(), interval, last: Mutex::new(None) });
    let result = run_job(&job, &ctx, opts);
    match result {
        Ok(v) => {
            tracing::info!(job = %job.id, "processor: job done");
            out.send(&WorkerMessage::Done(Done::new(v)));
            WorkerExit::Done
        }
        Err(e) if e.kind() == ErrorKind::Cancelled || cancel.is_cancelled() => {
            let why = if closed.load(Ordering::Relaxed) || out.broken.load(Ordering::Relaxed) {
                "the orchestrator's channel closed"
            } else {
                "the orchestrator cancelled it"
            };
            tracing::info!(job = %job.id, "processor: job cancelled ({why})");
            let f = Failure::new("cancelled", format!("the job was cancelled: {why}"), "permanent");
            out.send(&WorkerMessage::failed(f));
            WorkerExit::Cancelled
        }
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "processor: job failed");
            out.send(&WorkerMessage::failed(failure(&e)));
            WorkerExit::Failed
        }
    }
}

/// Reads the input: the job (handed to `tx`), then `cancel` lines; the end
/// of the input, an error, or a malformed line cancel the job.
fn watch_input(
    mut input: Box<dyn Read + Send>,
    tx: std::sync::mpsc::SyncSender<Result<alike_remote::protocol::JobSpec>>,
    cancel: CancelToken,
    closed: Arc<AtomicBool>,
) {
    let mut dec = LineDecoder::new(MAX_LINE, "orchestrator");
    let mut buf = vec![0u8; 16 << 10];
    let mut job_seen = false;
    let bad = |e: alike_remote::protocol::ProtocolError| Error::from(alike_core::Error::seam(e));
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut lines = Vec::new();
        let pushed = dec.push(&buf[..n], &mut lines);
        for line in lines {
            match (job_seen, decode_orchestrator(&line)) {
                (false, Ok(OrchestratorMessage::Job(spec))) => {
                    job_seen = true;
                    if tx.send(Ok(spec)).is_err() {
                        return;
                    }
                }
                (false, Ok(_)) => {
                    let e = alike_remote::protocol::ProtocolError::Unexpected {
                        what: "cancel".into(),
                        from: "orchestrator",
                        why: "the first message must be the job",
                    };
                    let _ = tx.send(Err(bad(e)));
                    return;
                }
                (false, Err(e)) => {
                    let _ = tx.send(Err(bad(e)));
                    return;
                }
                (true, Ok(OrchestratorMessage::Cancel)) => {
                    tracing::info!("processor: cancel received");
                    cancel.cancel();
                }
                (true, other) => {
                    tracing::warn!(?other, "processor: unexpected message after the job: cancelling");
                    cancel.cancel();
                }
            }
        }
        if let Err(e) = pushed {
            if !job_seen {
                let _ = tx.send(Err(bad(e)));
            }
            break;
        }
    }
    closed.store(true, Ordering::Relaxed);
    if job_seen {
        tracing::info!("processor: input closed: cancelling the job");
    }
    cancel.cancel();
}

/// An error as a `failed` message.
fn failure(e: &Error) -> Failure {
    use std::error::Error as _;
    let mut message = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !message.contains(&t) {
            message = format!("{message}: {t}");
        }
        src = s.source();
    }
    let retry = match e.retry() {
        Retry::Transient => "transient",
        Retry::Permanent => "permanent",
        _ => "unknown",
    };
    Failure::new(e.kind().name(), message, retry).with_code(e.code().map(str::to_string))
}

/// What a running job reports through.
struct Ctx {
    out: Arc<Out>,
    cancel: CancelToken,
    interval: Duration,
    last: Mutex<Option<(Instant, &'static str, u64)>>,
}

impl Ctx {
    /// A progress event, at most one per interval (a phase's first and
    /// last reports always go).
    fn progress(&self, p: &Progress, disks: impl FnOnce() -> Vec<DiskProgress>) {
        self.progress_of(p.phase.name(), p.bytes_done, p.bytes_total, disks);
    }
    fn progress_of(&self, phase: &'static str, done: u64, total: u64, disks: impl FnOnce() -> Vec<DiskProgress>) {
        {
            let mut last = self.last.locked();
            let now = Instant::now();
            let due = match *last {
                // The same figures again say nothing new.
                Some((_, ph, d)) if ph == phase && d == done => false,
                Some((t, ph, _)) => ph != phase || now.duration_since(t) >= self.interval || done >= total,
                None => true,
            };
            if !due {
                return;
            }
            *last = Some((now, phase, done));
        }
        self.out.send(&WorkerMessage::Progress(ProgressEvent::new(phase, done, total, disks())));
    }
    fn warn(&self, message: String, disk: Option<u32>) {
        tracing::warn!(disk, "{message}");
        self.out.send(&WorkerMessage::Warning(Warning::new(message, disk)));
    }
}

fn run_job(job: &ProcessorJob, ctx: &Arc<Ctx>, opts: &WorkerOptions) -> Result<serde_json::Value> {
    let _slot = match &opts.queue_lock {
        Some(p) => Some(take_slot(p, job, ctx)?),
        None => None,
    };
    ctx.cancel.check()?;
    let v = match &job.kind {
        JobKind::Backup(b) => backup(job, b, ctx),
        JobKind::Restore(r) => restore(job, r, ctx),
        JobKind::Verify(v) => verify(job, v, ctx),
        JobKind::ReplicateSender(r) | JobKind::ReplicateReceiver(r) => replicate(r, ctx),
        JobKind::XenVmConfig(x) => crate::replicate::xen_vm_config(&x.pool, &x.vm),
        JobKind::ReplicateBoth(s, r) => replicate_both(s, r, ctx),
    }?;
    Ok(v)
}

fn to_value(v: &impl serde::Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::InvalidArgument(format!("serialising the result: {e}")))
}

/// Waits for the processor's queue lock, saying `queued` while another job
/// holds it.
fn take_slot(path: &std::path::Path, job: &ProcessorJob, ctx: &Ctx) -> Result<std::fs::File> {
    use std::io::Seek;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Engine(alike_core::Error::Io { path: path.to_owned(), source });
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    let mut said = false;
    loop {
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::WOULDBLOCK) => {
                if !said {
                    let mut holder = String::new();
                    let _ = (&f).take(256).read_to_string(&mut holder);
                    let _ = f.rewind();
                    let holder = holder.trim();
                    let who = if holder.is_empty() { "another job".to_string() } else { holder.to_string() };
                    ctx.out.send(&WorkerMessage::Queued(Queued::new(format!(
                        "this processor runs one job at a time, and {who} holds it ({})",
                        path.display()
                    ))));
                    said = true;
                }
                ctx.cancel.check()?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(io(e.into())),
        }
    }
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    write!(f, "job {} ({}, pid {})", job.id, job.kind_name(), std::process::id()).map_err(io)?;
    Ok(f)
}

/// A source that counts the bytes read from it (progress per disk).
struct Counted {
    inner: Box<dyn DiskSource>,
    read: Arc<AtomicU64>,
    /// The orchestrator's change token for this disk, and the ranges
    /// changed since the token it names (the job's `changes`).
    token: Option<Vec<u8>>,
    changed: Option<(Vec<u8>, Vec<std::ops::Range<u64>>)>,
}

impl DiskSource for Counted {
    fn label(&self) -> String {
        self.inner.label()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn allocated_ranges(&self) -> alike_core::Result<Vec<std::ops::Range<u64>>> {
        self.inner.allocated_ranges()
    }
    fn change_token(&self) -> Option<Vec<u8>> {
        self.token.clone().or_else(|| self.inner.change_token())
    }
    fn changed_ranges(&self, since: &[u8]) -> alike_core::Result<Option<Vec<std::ops::Range<u64>>>> {
        match &self.changed {
            Some((s, r)) if s.as_slice() == since => Ok(Some(r.clone())),
            _ if self.token.is_some() => Ok(None),
            _ => self.inner.changed_ranges(since),
        }
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        self.inner.read_at(offset, buf)?;
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn format_of(f: &Option<String>) -> Result<Option<crate::ImageFormat>> {
    f.as_deref().map(str::parse).transpose()
}

fn backup(job: &ProcessorJob, b: &BackupJob, ctx: &Arc<Ctx>) -> Result<serde_json::Value> {
    let store = job.open_store(&b.store)?;
    let format = format_of(&b.format)?;
    let mut counters = Vec::new();
    let mut sources = Vec::new();
    let unhex = |what: &str, h: &str| {
        hex::decode(h).map_err(|_| Error::InvalidArgument(format!("changes: {what} {h:?} is not hex")))
    };
    for (i, d) in b.disks.iter().enumerate() {
        let inner = crate::open_image(d, format)?;
        let read = Arc::new(AtomicU64::new(0));
        counters.push((read.clone(), inner.size()));
        let (mut token, mut changed) = (None, None);
        if let Some(c) = b.changes.get(i) {
            token = Some(unhex("token", &c.token)?);
            if let (Some(since), Some(r)) = (&c.since, &c.ranges) {
                changed = Some((unhex("since", since)?, r.iter().map(|[a, b]| *a..*b).collect()));
            }
        }
        sources.push(Counted { inner, read, token, changed });
    }
    let refs: Vec<&dyn DiskSource> = sources.iter().map(|s| s as &dyn DiskSource).collect();
    let mut info = b.config.clone().unwrap_or_else(|| alike_core::VmInfo::named(&b.vm));
    info.name.clone_from(&b.vm);
    for (k, v) in &b.meta {
        info.extra.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    let c = ctx.clone();
    let mut o = BackupOptions::default()
        .threads(b.threads)
        .allow_empty(b.allow_empty)
        .cancel_token(ctx.cancel.clone())
        .progress(move |p| {
            c.progress(p, || {
                counters
                    .iter()
                    .enumerate()
                    .map(|(i, (r, size))| DiskProgress::new(i as u32, r.load(Ordering::Relaxed), *size))
                    .collect()
            })
        });
    match b.parent.as_deref() {
        None | Some("latest") => {}
        Some("none") => o = o.parent(Parent::None),
        Some(id) => o = o.parent(Parent::Id(id.to_string())),
    }
    let r = store.backup(info, &refs, &o)?;
    for d in &r.version.disks {
        if let Some(why) = &d.fallback_reason {
            ctx.warn(format!("disk {} was read in full: {why}", d.position), Some(d.position));
        }
    }
    to_value(&r)
}

/// What a remote restore reports: as `alike restore --json` prints it.
#[derive(serde::Serialize)]
struct Restored<'a> {
    id: &'a str,
    vm: &'a str,
    disk: u32,
    output: &'a std::path::Path,
    #[serde(flatten)]
    report: &'a crate::RestoreReport,
}

fn restore(job: &ProcessorJob, r: &RestoreJob, ctx: &Arc<Ctx>) -> Result<serde_json::Value> {
    let store = job.open_store(&r.store)?;
    let v = store.version(&r.version, r.vm.as_deref())?;
    let c = ctx.clone();
    let disk = r.disk;
    let size = v.disk(disk)?.size;
    let mut o = RestoreOptions::default()
        .threads(r.threads)
        .partial(r.partial)
        .force(r.force)
        .cancel_token(ctx.cancel.clone())
        .progress(move |p| c.progress(p, || vec![DiskProgress::new(disk, p.bytes_done, size)]));
    if let Some(f) = format_of(&r.format)? {
        o = o.format(f);
    }
    let report = store.restore_to_file(&v, disk, &r.target, &o)?;
    if !report.failed_ranges.is_empty() {
        ctx.warn(
            format!(
                "{} byte range(s) could not be restored (zeroes written): {}",
                report.failed_ranges.len(),
                report.first_error.clone().unwrap_or_default()
            ),
            Some(disk),
        );
    }
    to_value(&Restored { id: &v.id, vm: &v.vm, disk, output: &r.target, report: &report })
}

fn verify(job: &ProcessorJob, v: &VerifyJob, ctx: &Arc<Ctx>) -> Result<serde_json::Value> {
    let store = job.open_store(&v.store)?;
    let c = ctx.clone();
    let mut o = VerifyOptions::default()
        .full(v.full)
        .cancel_token(ctx.cancel.clone())
        .progress(move |p| c.progress(p, Vec::new));
    if let Some(vm) = &v.vm {
        o = o.vm(vm);
    }
    if let Some(ver) = &v.version {
        o = o.version(ver);
    }
    let r = store.verify(&o)?;
    if !r.ok() {
        ctx.warn(format!("{} damaged object(s) or chunk(s) found", r.damaged.len()), None);
    }
    to_value(&r)
}

/// Both ends of a replication in this process: progress as one end's.
fn replicate_both(send: &ReplicationJob, recv: &ReplicationJob, ctx: &Arc<Ctx>) -> Result<serde_json::Value> {
    let o = end_options(ctx);
    let report = crate::replicate::run_both(send, recv, &o)?;
    to_value(&report)
}

/// The options of a replication run on this worker: its cancel, and its
/// progress as `progress` events (phase `replicate`, bytes read per disk).
fn end_options(ctx: &Arc<Ctx>) -> EndOptions {
    let (c, c2) = (ctx.clone(), ctx.clone());
    EndOptions::default().cancel_token(ctx.cancel.clone()).progress(move |p| c.progress(p, Vec::new)).disk_progress(
        move |p| {
            let disks: Vec<DiskProgress> =
                p.disks.iter().map(|d| DiskProgress::new(d.disk as u32, d.read_bytes, d.total_bytes)).collect();
            let done = disks.iter().map(|d| d.bytes_done).sum();
            let total = disks.iter().map(|d| d.bytes_total).sum();
            c2.progress_of("replicate", done, total, || disks)
        },
    )
}

/// One end of a replication: the engine's `run_end`, its progress per disk
/// as `progress` events (phase `replicate`: bytes read of what this run
/// reads), and a `listening` event once a listening end listens.
fn replicate(r: &ReplicationJob, ctx: &Arc<Ctx>) -> Result<serde_json::Value> {
    let c3 = ctx.clone();
    let o =
        end_options(ctx).on_listening(move |a| c3.out.send(&WorkerMessage::Listening(Listening::new(a.to_string()))));
    let report = crate::run_end(r, JobLink::FromJob, &o)?;
    to_value(&report)
}
