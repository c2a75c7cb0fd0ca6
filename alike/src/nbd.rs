//! NBD export of a stored version ([`crate::Store::serve_nbd`]): the disks
//! of a version served by `alike-nbd`'s blocking shell, read from the
//! store on demand — nothing is restored first.
//!
//! ## How a read is served
//! (`crate::disk_reader`, shared with file restore.) A disk is its row of windows (one block map each, `load_window`: either
//! chunking); a read walks the extents it covers — gaps are holes, sent as
//! hole chunks and reported as `NBD_STATE_HOLE | NBD_STATE_ZERO` by
//! `NBD_CMD_BLOCK_STATUS` — locates their chunks and copies them out of
//! decoded frames. Frames are kept in one cache per session, bounded in
//! bytes ([`crate::NbdOptions::cache_size`]) and shared by every
//! connection and disk, so two clients reading the same data decode it once;
//! a frame being loaded is waited for, never loaded twice. Every chunk is
//! verified (its id re-hashed) the first time it is served from a cached
//! frame. Windows are cached per disk (32 of them, 8 GiB of disk at 64 KiB
//! blocks).
//!
//! **Read-ahead.** Each disk follows up to 8 sequential streams; a read
//! that continues one (within 16 MiB of where it ended, so the parallel
//! requests of `qemu-img convert` count) has the frames of the next
//! [`crate::NbdOptions::readahead`] bytes loaded by worker threads, in 4
//! MiB jobs. The first read of a stream prefetches nothing: random reads
//! cost nothing extra.
//!
//! **GC.** The session holds its version with a `read` lock on that version
//! only (`Repository::lock_versions`): GC keeps the version's chunks and goes
//! on deleting everything else it condemns; prune keeps the version; forget
//! refuses it. A pack GC deleted under a running export (its live chunks
//! were repacked) is found again after a cache sync: a read that meets a
//! missing pack or chunk syncs the index cache and tries once more.
//!
//! **Writes** go to a copy-on-write overlay file (`docs/format.md`,
//! "NBD write overlay"): the version never changes. Blocks of 4 KiB; a
//! partial write of a block not yet in the overlay reads the version's
//! block first. The bitmap of blocks in the overlay is written (with its
//! checksum) at every flush and at the end; the file is deleted at the end
//! unless kept, and a kept one can be served again.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alike_core::{DiskRecord, ErrorKind, Recover};
use alike_nbd::proto::{EIO, ESHUTDOWN, STATE_HOLE, STATE_ZERO};
use alike_nbd::serve::{CommandError, Export, Listener, ServeEvent, ServeOptions};
use alike_nbd::server::{ExportConfig, Extent as NbdExtent, ServerConfig, TlsMode};

use crate::disk_reader::{DiskReader, StoreReader};
use crate::options::{NbdDisks, NbdListen, NbdOptions};
use crate::store::{Store, Version};
use crate::{Error, Result};

/// Sequential streams followed per disk.
const STREAMS: usize = 8;
/// A read that starts this far before a stream's end (requests served out
/// of order) or this far after it (a small gap) continues the stream;
/// anything else starts a new one. Random reads rarely fall in.
const STREAM_BEHIND: u64 = 8 << 20;
const STREAM_AHEAD: u64 = 1 << 20;
/// Read-ahead is cut into jobs of this many disk bytes.
const PREFETCH_JOB: u64 = 4 << 20;
/// Jobs queued at most (more are dropped: the reader loads what it needs).
const PREFETCH_QUEUE: usize = 64;
/// `BLOCK_STATUS` looks at most this many windows per request (a client
/// asks again from where the reply stopped).
const STATUS_WINDOWS: u64 = 4;

/// Where an export listens, once it does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct NbdListening {
    /// The server's URI without an export name (`nbd://127.0.0.1:10809`,
    /// `nbd+unix://?socket=/run/x.sock`).
    pub uri: String,
    /// The exports served.
    pub exports: Vec<NbdExportInfo>,
}

/// One export of a session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct NbdExportInfo {
    /// Its name (`disk0`…).
    pub name: String,
    /// Its URI (`nbd://127.0.0.1:10809/disk0`).
    pub uri: String,
    /// The version's disk it serves.
    pub disk: u32,
    /// Size in bytes.
    pub size: u64,
    /// Whether writes are accepted (into the overlay).
    pub writable: bool,
    /// Whether the empty export name serves it.
    pub default: bool,
}

/// What an NBD session did ([`crate::Store::serve_nbd`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct NbdReport {
    /// The version served.
    pub id: String,
    /// Connections served.
    pub connections: u64,
    /// Connections refused (over the limit).
    pub refused: u64,
    /// Requests handled.
    pub requests: u64,
    /// Bytes sent as read data (holes not counted).
    pub bytes_read: u64,
    /// Bytes written by clients (into the overlay).
    pub bytes_written: u64,
    /// Stored bytes read from the store (frames; read-ahead included).
    pub store_bytes_read: u64,
    /// The overlay file, when one was kept.
    pub overlay_kept: Option<PathBuf>,
    /// Wall time.
    #[serde(rename = "elapsed_seconds", serialize_with = "crate::store::seconds")]
    pub elapsed: Duration,
}

impl Store {
    /// Serves disks of `version` over NBD until `opts`' cancel token is
    /// cancelled: one disk (as the default export and as `diskN`) or every
    /// disk (`diskN`, no default export), read-only by default with
    /// `NBD_FLAG_CAN_MULTI_CONN`, or writable through a copy-on-write overlay
    /// file. Reads come from the store as clients ask ([`crate::NbdOptions`]
    /// sizes the frame cache and read-ahead); holes are served and reported
    /// as holes. [`crate::NbdOptions::on_listening`] is told where the server
    /// listens once it accepts connections.
    ///
    /// The version is held for the session (a `read` lock on it alone): GC
    /// keeps its data and collects the rest of the store meanwhile, prune
    /// keeps it and forget refuses it.
    ///
    /// ```no_run
    /// # fn main() -> alike::Result<()> {
    /// # let store = alike::Store::builder().open("/srv/store")?;
    /// let v = store.version("latest", Some("web01"))?;
    /// let stop = alike::CancelToken::new();
    /// let opts = alike::NbdOptions::default()
    ///     .listen_tcp("127.0.0.1:10809")
    ///     .on_listening(|l| println!("serving on {}", l.uri))
    ///     .cancel_token(stop.clone());
    /// let report = store.serve_nbd(&v, &opts)?; // until stop.cancel()
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Options out of range ([`crate::ErrorKind::InvalidArgument`]: a
    /// cache, read-ahead or connection count out of range, a disk the
    /// version lacks, an overlay with several disks); the address or socket
    /// unusable ([`crate::ErrorKind::Io`]); TLS files that cannot be read
    /// ([`crate::ErrorKind::Io`]) or do not serve (no certificate or key in
    /// them, a key of another certificate: [`crate::ErrorKind::InvalidArgument`]);
    /// an overlay that exists (and is not
    /// kept), or does not belong to this version's disk; the version gone
    /// ([`crate::ErrorKind::NotFound`]). Failures while serving are sent to
    /// the client as NBD errors and logged, never returned.
    pub fn serve_nbd(&self, version: &Version, opts: &NbdOptions) -> Result<NbdReport> {
        opts.check()?;
        self.check_can_read_data(|| format!("serving version {} (VM {:?}) over NBD", version.short_id(), version.vm))?;
        let tls = opts.tls_settings();
        #[cfg(feature = "tls")]
        let acceptor = tls.as_ref().map(crate::nbd_tls::Acceptor::new).transpose()?;
        #[cfg(not(feature = "tls"))]
        if tls.is_some() {
            return Err(Error::InvalidArgument("this build of alike has no TLS (the `tls` feature)".into()));
        }
        // With TLS the URIs say so (`nbds://`, `nbds+unix://`).
        let scheme = |uri: String| match (&tls, uri.strip_prefix("nbd")) {
            (Some(_), Some(rest)) => format!("nbds{rest}"),
            _ => uri,
        };
        let started = std::time::Instant::now();
        let disks: Vec<DiskRecord> = match opts.disks {
            NbdDisks::One(n) => vec![version.disk_record(n)?.clone()],
            NbdDisks::All => version.manifest.disks.clone(),
        };
        if disks.is_empty() {
            return Err(Error::InvalidArgument(format!("version {} has no disks to serve", version.short_id())));
        }
        if opts.overlay.is_some() && (disks.len() != 1 || opts.disks == NbdDisks::All) {
            return Err(Error::InvalidArgument(
                "a writable overlay serves one disk: choose it (not every disk)".into(),
            ));
        }
        let _hold = self.hold_version(version)?;

        let reader = Arc::new(StoreReader::new(self.repo_arc(), opts.cache_bytes));
        let prefetch = Prefetch::default();
        let exports: Vec<DiskExport<'_>> = disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                DiskExport::new(DiskReader::new(reader.clone(), d.clone(), version), &prefetch, i, opts.readahead_bytes)
            })
            .collect();
        let overlay = match &opts.overlay {
            Some(p) => Some(Overlay::open(p, opts.keep_overlay, &exports[0], self.id(), &version.id)?),
            None => None,
        };
        let listener = match &opts.listen {
            NbdListen::Tcp(a) => Listener::tcp(a),
            NbdListen::Unix(p) => Listener::unix(p),
        }
        .map_err(|source| {
            let path = match &opts.listen {
                NbdListen::Tcp(a) => PathBuf::from(a),
                NbdListen::Unix(p) => p.clone(),
            };
            Error::Engine(alike_core::Error::Io { path, source })
        })?;

        let single = disks.len() == 1;
        let mut configs = Vec::new();
        let mut infos = Vec::new();
        let mut served: Vec<&dyn Export> = Vec::new();
        for (i, d) in disks.iter().enumerate() {
            let name = format!("disk{}", d.position);
            let writable = overlay.is_some();
            let description =
                format!("{} disk {} of version {} ({})", version.vm, d.position, version.short_id(), d.label);
            configs.push(ExportConfig::read_only(name.clone(), d.size).description(description).writable(writable));
            infos.push(NbdExportInfo {
                uri: scheme(listener.export_uri(&name)),
                name,
                disk: d.position,
                size: d.size,
                writable,
                default: single,
            });
            served.push(match &overlay {
                Some(o) => o as &dyn Export,
                None => &exports[i],
            });
        }
        let cfg = ServerConfig::new(configs).default_export(single.then_some(0)).tls(if tls.is_some() {
            TlsMode::Required
        } else {
            TlsMode::Off
        });
        let listening = NbdListening { uri: scheme(listener.uri()), exports: infos };
        tracing::info!(
            uri = %listening.uri,
            version = %version.id,
            disks = disks.len(),
            tls = tls.is_some(),
            client_certificates = tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            "NBD export listening"
        );

        let cancel = opts.run.cancel.clone();
        let stop = move || cancel.is_cancelled();
        let log = |e: &ServeEvent| match e {
            ServeEvent::Connected { peer } => tracing::info!(%peer, "NBD client connected"),
            ServeEvent::Refused { peer } => tracing::warn!(%peer, "NBD client refused: too many connections"),
            ServeEvent::Negotiated { peer, export, structured } => {
                tracing::info!(%peer, %export, structured, "NBD client entered transmission")
            }
            ServeEvent::Closed { peer, error: Some(e) } => tracing::warn!(%peer, error = %e, "NBD connection ended"),
            ServeEvent::Closed { peer, error: None } => tracing::info!(%peer, "NBD client disconnected"),
            _ => {}
        };
        let mut so = ServeOptions::new(&stop);
        so.max_connections = opts.max_connections;
        so.on_event = Some(&log);
        #[cfg(feature = "tls")]
        if let Some(a) = &acceptor {
            so.tls = Some(a as &dyn alike_nbd::serve::TlsAcceptor);
        }
        let workers = crate::options::worker_threads(opts.run.threads).clamp(1, 8);
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(PREFETCH_QUEUE);
        let jobs_rx = Mutex::new(jobs_rx);
        let served_report = std::thread::scope(|s| -> Result<alike_nbd::serve::ServeReport> {
            for _ in 0..workers {
                alike_core::spawn_scoped(s, "alike-nbd-prefetch", || prefetch_worker(&jobs_rx, &exports))?;
            }
            *prefetch.tx.locked() = Some(jobs_tx);
            if let Some(f) = &opts.on_listening {
                f(&listening);
            }
            let r = alike_nbd::serve::serve(&listener, &cfg, &served, &so);
            // Closing the queue ends the workers.
            prefetch.tx.locked().take();
            r.map_err(|source| Error::Engine(alike_core::Error::Io { path: listening.uri.clone().into(), source }))
        })?;
        let overlay_kept = match overlay {
            Some(o) => o.finish()?,
            None => None,
        };
        Ok(NbdReport {
            id: version.id.clone(),
            connections: served_report.connections,
            refused: served_report.refused,
            requests: served_report.requests,
            bytes_read: served_report.bytes_read,
            bytes_written: served_report.bytes_written,
            store_bytes_read: reader.store_bytes(),
            overlay_kept,
            elapsed: started.elapsed(),
        })
    }
}

impl Version {
    /// The stored record of disk `position`.
    pub(crate) fn disk_record(&self, position: u32) -> Result<&DiskRecord> {
        self.manifest.disks.iter().find(|d| d.position == position).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "version {} has no disk {position} (it has {})",
                self.short_id(),
                self.manifest.disks.len()
            ))
        })
    }
}

// ---------------------------------------------------------------------------
// Frames: one bounded cache per session

/// A prefetch job: load the frames of `range` of disk `disk`.
struct Job {
    disk: usize,
    range: Range<u64>,
}

fn prefetch_worker(jobs: &Mutex<Receiver<Job>>, disks: &[DiskExport<'_>]) {
    loop {
        let job = jobs.locked().recv();
        let Ok(job) = job else { return };
        if let Some(d) = disks.get(job.disk) {
            d.disk.prefetch(job.range);
        }
    }
}

// ---------------------------------------------------------------------------
// One disk of the version

/// Where a sequential stream is: the end of its last read, and how far its
/// read-ahead was scheduled.
#[derive(Debug, Clone, Copy)]
struct Stream {
    next: u64,
    scheduled: u64,
    used: u64,
}

/// The read-ahead queue of a session, open while it serves.
#[derive(Default)]
struct Prefetch {
    tx: Mutex<Option<SyncSender<Job>>>,
}

impl Prefetch {
    fn schedule(&self, job: Job) {
        if let Some(tx) = self.tx.locked().as_ref() {
            match tx.try_send(job) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }
}

/// One disk of a stored version, as an NBD export: the shared reader
/// (`crate::disk_reader`) plus the export's sequential streams.
struct DiskExport<'a> {
    disk: DiskReader,
    prefetch: &'a Prefetch,
    index: usize,
    readahead: u64,
    streams: Mutex<(u64, Vec<Stream>)>,
}

/// What went wrong reading the store, for the client (the connection goes on).
fn command_error(what: &str, e: &dyn ErrorKindOf) -> CommandError {
    match e.error_kind() {
        ErrorKind::Cancelled => CommandError::new(ESHUTDOWN, "the server is stopping"),
        _ => CommandError::new(EIO, format!("{what}: {}", e.message())),
    }
}

/// The engine's and the facade's errors alike, for [`command_error`].
trait ErrorKindOf {
    fn error_kind(&self) -> ErrorKind;
    fn message(&self) -> String;
}

impl ErrorKindOf for alike_core::Error {
    fn error_kind(&self) -> ErrorKind {
        self.kind()
    }
    fn message(&self) -> String {
        self.to_string()
    }
}

impl ErrorKindOf for Error {
    fn error_kind(&self) -> ErrorKind {
        self.kind()
    }
    fn message(&self) -> String {
        self.to_string()
    }
}

impl<'a> DiskExport<'a> {
    fn new(disk: DiskReader, prefetch: &'a Prefetch, index: usize, readahead: u64) -> DiskExport<'a> {
        DiskExport { disk, prefetch, index, readahead, streams: Mutex::new((0, Vec::new())) }
    }

    /// Notes a read; schedules read-ahead when it continues a stream.
    fn note_read(&self, offset: u64, end: u64) {
        if self.readahead == 0 {
            return;
        }
        let mut jobs = Vec::new();
        {
            let mut g = self.streams.locked();
            let (tick, streams) = &mut *g;
            *tick += 1;
            let t = *tick;
            let hit = streams.iter_mut().find(|s| {
                offset.saturating_add(STREAM_BEHIND) >= s.next && offset <= s.next.saturating_add(STREAM_AHEAD)
            });
            match hit {
                Some(s) => {
                    s.used = t;
                    s.next = s.next.max(end);
                    let target = s.next.saturating_add(self.readahead).min(self.disk.record.size);
                    let from = s.scheduled.max(s.next);
                    if from < target && target - from >= PREFETCH_JOB.min(self.readahead) / 2 {
                        let mut at = from;
                        while at < target {
                            let to = (at + PREFETCH_JOB).min(target);
                            jobs.push(Job { disk: self.index, range: at..to });
                            at = to;
                        }
                        s.scheduled = target;
                    }
                }
                None => {
                    let fresh = Stream { next: end, scheduled: end, used: t };
                    if streams.len() < STREAMS {
                        streams.push(fresh);
                    } else if let Some(old) = streams.iter_mut().min_by_key(|s| s.used) {
                        *old = fresh;
                    }
                }
            }
        }
        for j in jobs {
            self.prefetch.schedule(j);
        }
    }

    /// `base:allocation` extents from `offset` (at most [`STATUS_WINDOWS`] windows).
    fn status(&self, offset: u64, len: u64) -> alike_core::Result<Vec<NbdExtent>> {
        let wb = self.disk.record.window_bytes().max(1);
        let limit = (offset / wb + STATUS_WINDOWS) * wb;
        let end = offset.saturating_add(len).min(self.disk.record.size).min(limit);
        let (parts, holes) = self.disk.layout(offset, end)?;
        let mut pieces: Vec<(Range<u64>, u32)> = parts.into_iter().map(|p| (p.range, 0)).collect();
        pieces.extend(holes.into_iter().map(|h| (h, STATE_HOLE | STATE_ZERO)));
        pieces.sort_by_key(|(r, _)| r.start);
        let mut out: Vec<NbdExtent> = Vec::new();
        for (r, flags) in pieces {
            match out.last_mut() {
                Some(e) if e.flags == flags => e.len += r.end - r.start,
                _ => out.push(NbdExtent { len: r.end - r.start, flags }),
            }
        }
        Ok(out)
    }
}

impl Export for DiskExport<'_> {
    fn size(&self) -> u64 {
        self.disk.record.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<Vec<Range<u64>>, CommandError> {
        self.note_read(offset, offset + buf.len() as u64);
        // A moved chunk syncs the cache and is read again inside.
        self.disk.read_at(offset, buf).map_err(|e| {
            tracing::warn!(disk = %self.disk.label, offset, len = buf.len(), error = %e, "NBD read failed");
            command_error(&self.disk.label, &e)
        })
    }

    fn extents(&self, offset: u64, len: u64) -> std::result::Result<Vec<NbdExtent>, CommandError> {
        self.status(offset, len).map_err(|e| command_error(&self.disk.label, &e))
    }
}

// ---------------------------------------------------------------------------
// The copy-on-write overlay

/// Overlay blocks.
const OV_BLOCK: u64 = 4096;
/// Bytes of the overlay header region (the bitmap starts after it).
const OV_HEADER: u64 = 4096;
/// Header bytes covered by the header checksum.
const OV_CHECKED: usize = 160;

/// Writes of an export go here; the version never changes (`docs/format.md`,
/// "NBD write overlay").
struct Overlay<'a> {
    base: &'a DiskExport<'a>,
    file: File,
    path: PathBuf,
    keep: bool,
    size: u64,
    data_at: u64,
    header: Vec<u8>,
    bitmap: Mutex<Vec<u8>>,
    dirty: AtomicBool,
    /// Serialises writes (partial blocks read, merge, write).
    writing: Mutex<()>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Engine(alike_core::Error::Io { path: path.to_path_buf(), source })
}

impl<'a> Overlay<'a> {
    /// Creates the overlay at `path` (refused if it exists, unless `keep`
    /// and it is an overlay of this very version and disk, which is reopened).
    fn open(path: &Path, keep: bool, base: &'a DiskExport<'a>, store: &str, version: &str) -> Result<Overlay<'a>> {
        let size = base.disk.record.size;
        let blocks = size.div_ceil(OV_BLOCK);
        let bitmap_len = blocks.div_ceil(8);
        let data_at = OV_HEADER + bitmap_len.div_ceil(OV_BLOCK) * OV_BLOCK;
        let mut header = alike_ads::header(alike_ads::ObjectKind::Overlay).to_vec();
        header.extend_from_slice(&(OV_BLOCK as u32).to_le_bytes());
        header.extend_from_slice(&size.to_le_bytes());
        header.extend_from_slice(&base.disk.record.position.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        let mut ids = [0u8; 96];
        ids[..store.len().min(32)].copy_from_slice(&store.as_bytes()[..store.len().min(32)]);
        ids[32..32 + version.len().min(64)].copy_from_slice(&version.as_bytes()[..version.len().min(64)]);
        header.extend_from_slice(&ids);
        debug_assert_eq!(header.len(), 128);
        let e = io_err(path);
        let exists = std::fs::symlink_metadata(path).is_ok();
        if exists && !keep {
            return Err(Error::OutputExists { path: path.to_path_buf() });
        }
        let (file, bitmap) = if exists {
            let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(&e)?;
            let mut head = vec![0u8; OV_CHECKED + 32];
            file.read_exact_at(&mut head, 0).map_err(&e)?;
            let what = path.display().to_string();
            alike_ads::check_header(&head, alike_ads::ObjectKind::Overlay, &what)?;
            let bad = |reason: String| Error::InvalidArgument(format!("{what}: {reason}"));
            if blake3::hash(&head[..OV_CHECKED]).as_bytes() != &head[OV_CHECKED..] {
                return Err(bad("the overlay header does not match its checksum".into()));
            }
            if head[..128] != header[..] {
                return Err(bad(format!(
                    "an overlay of another disk or version (this is disk {} of version {})",
                    base.disk.record.position,
                    &version[..12.min(version.len())]
                )));
            }
            let mut bitmap = vec![0u8; bitmap_len as usize];
            file.read_exact_at(&mut bitmap, OV_HEADER).map_err(&e)?;
            if blake3::hash(&bitmap).as_bytes() != &head[128..160] {
                return Err(bad(
                    "its block bitmap does not match its checksum: the server serving it stopped without \
                     writing it (writes since its last flush are lost)"
                        .into(),
                ));
            }
            (file, bitmap)
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(&e)?;
            file.set_len(data_at + blocks * OV_BLOCK).map_err(&e)?;
            (file, vec![0u8; bitmap_len as usize])
        };
        let o = Overlay {
            base,
            file,
            path: path.to_path_buf(),
            keep,
            size,
            data_at,
            header,
            bitmap: Mutex::new(bitmap),
            dirty: AtomicBool::new(!exists),
            writing: Mutex::new(()),
        };
        o.write_bitmap().map_err(&e)?;
        Ok(o)
    }

    fn write_bitmap(&self) -> std::io::Result<()> {
        let bitmap = self.bitmap.locked().clone();
        self.file.sync_data()?;
        let mut head = self.header.clone();
        head.extend_from_slice(blake3::hash(&bitmap).as_bytes());
        debug_assert_eq!(head.len(), OV_CHECKED);
        let sum = *blake3::hash(&head).as_bytes();
        head.extend_from_slice(&sum);
        self.file.write_all_at(&bitmap, OV_HEADER)?;
        self.file.write_all_at(&head, 0)?;
        self.file.sync_data()?;
        self.dirty.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// The end of the session: flushed; deleted unless kept (then its path).
    fn finish(self) -> Result<Option<PathBuf>> {
        let e = io_err(&self.path);
        if self.keep {
            self.write_bitmap().map_err(&e)?;
            return Ok(Some(self.path.clone()));
        }
        std::fs::remove_file(&self.path).map_err(&e)?;
        Ok(None)
    }

    fn has(bitmap: &[u8], b: u64) -> bool {
        bitmap.get((b / 8) as usize).is_some_and(|x| x & (1 << (b % 8)) != 0)
    }

    /// Runs of blocks of `[start, end)` in the overlay (true) or not (false), clipped to the range.
    fn runs(&self, start: u64, end: u64) -> Vec<(Range<u64>, bool)> {
        let bitmap = self.bitmap.locked();
        let mut out: Vec<(Range<u64>, bool)> = Vec::new();
        for b in start / OV_BLOCK..end.div_ceil(OV_BLOCK) {
            let r = (b * OV_BLOCK).max(start)..((b + 1) * OV_BLOCK).min(end);
            let inside = Self::has(&bitmap, b);
            match out.last_mut() {
                Some((last, i)) if *i == inside && last.end == r.start => last.end = r.end,
                _ => out.push((r, inside)),
            }
        }
        out
    }

    fn err(&self, e: std::io::Error) -> CommandError {
        CommandError::io(format!("overlay {}: {e}", self.path.display()))
    }

    /// Writes `data` at `offset`, whole blocks at a time (partial blocks read first).
    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), CommandError> {
        let _w = self.writing.locked();
        let end = offset + data.len() as u64;
        let mut block = vec![0u8; OV_BLOCK as usize];
        let mut pos = offset;
        let mut touched = Vec::new();
        while pos < end {
            let b = pos / OV_BLOCK;
            let bstart = b * OV_BLOCK;
            let bend = (bstart + OV_BLOCK).min(self.size);
            let to = end.min(bstart + OV_BLOCK);
            let src = &data[(pos - offset) as usize..(to - offset) as usize];
            if pos == bstart && end >= bend {
                // Whole blocks, as many as the data covers, in one write.
                let mut j = b + 1;
                while j * OV_BLOCK < end && end >= ((j + 1) * OV_BLOCK).min(self.size) {
                    j += 1;
                }
                let wend = (j * OV_BLOCK).min(self.size).min(end);
                let n = (wend - pos) as usize;
                let chunk = &data[(pos - offset) as usize..][..n];
                self.file.write_all_at(chunk, self.data_at + pos).map_err(|e| self.err(e))?;
                touched.extend(b..j);
                pos = wend;
                continue;
            }
            let have = Self::has(&self.bitmap.locked(), b);
            if have {
                self.file.write_all_at(src, self.data_at + pos).map_err(|e| self.err(e))?;
            } else {
                let part = &mut block[..(bend - bstart) as usize];
                self.base.read_at(bstart, part)?;
                part[(pos - bstart) as usize..(to - bstart) as usize].copy_from_slice(src);
                self.file.write_all_at(part, self.data_at + bstart).map_err(|e| self.err(e))?;
                touched.push(b);
            }
            pos = to;
        }
        let mut bitmap = self.bitmap.locked();
        for b in touched {
            if let Some(x) = bitmap.get_mut((b / 8) as usize) {
                *x |= 1 << (b % 8);
            }
        }
        self.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }
}

impl Export for Overlay<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<Vec<Range<u64>>, CommandError> {
        let end = offset + buf.len() as u64;
        let mut holes = Vec::new();
        for (r, inside) in self.runs(offset, end) {
            let dst = &mut buf[(r.start - offset) as usize..(r.end - offset) as usize];
            if inside {
                self.file.read_exact_at(dst, self.data_at + r.start).map_err(|e| self.err(e))?;
            } else {
                holes.extend(self.base.read_at(r.start, dst)?);
            }
        }
        Ok(holes)
    }

    fn extents(&self, offset: u64, len: u64) -> std::result::Result<Vec<NbdExtent>, CommandError> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out: Vec<NbdExtent> = Vec::new();
        let mut push = |n: u64, flags: u32| match out.last_mut() {
            Some(e) if e.flags == flags => e.len += n,
            _ => out.push(NbdExtent { len: n, flags }),
        };
        for (r, inside) in self.runs(offset, end) {
            if inside {
                push(r.end - r.start, 0);
                continue;
            }
            let mut at = r.start;
            while at < r.end {
                let ext = self.base.extents(at, r.end - at)?;
                if ext.is_empty() {
                    break;
                }
                for e in ext {
                    let n = e.len.min(r.end - at);
                    push(n, e.flags);
                    at += n;
                    if at >= r.end {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> std::result::Result<(), CommandError> {
        self.write(offset, data)?;
        if fua { self.flush() } else { Ok(()) }
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> std::result::Result<(), CommandError> {
        let zeroes = vec![0u8; (1u64 << 20).min(len) as usize];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(zeroes.len() as u64);
            self.write(at, &zeroes[..n as usize])?;
            at += n;
        }
        if fua { self.flush() } else { Ok(()) }
    }

    fn flush(&self) -> std::result::Result<(), CommandError> {
        let _w = self.writing.locked();
        if self.dirty.load(Ordering::SeqCst) {
            self.write_bitmap().map_err(|e| self.err(e))
        } else {
            self.file.sync_data().map_err(|e| self.err(e))
        }
    }
}
