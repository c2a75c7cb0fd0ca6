//! Options of the facade's operations: `Default` plus chained setters.

use std::sync::Arc;

use alike_core::{CancelToken, Progress, ProgressFn, RunOptions};

use crate::{Error, Result};

/// Options common to long operations.
#[derive(Clone, Default)]
pub(crate) struct Run {
    pub(crate) threads: usize,
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) cancel: CancelToken,
}

/// The most worker threads an operation takes (0 = one per core). More
/// buys nothing on any machine, and an absurd count would start threads
/// until the machine stalls.
pub const MAX_THREADS: usize = 1024;

/// The slowest bandwidth limit a vault accepts, bytes per second: slower
/// would make a vault look hung.
pub const MIN_BANDWIDTH: u64 = 1024;

impl Run {
    /// Checks the settings every long operation shares.
    pub(crate) fn check(&self) -> Result<()> {
        if self.threads > MAX_THREADS {
            return Err(Error::InvalidArgument(format!(
                "{} worker threads: at most {MAX_THREADS} (0 = one per core)",
                self.threads
            )));
        }
        Ok(())
    }

    pub(crate) fn to_core(&self) -> RunOptions {
        let mut r = RunOptions::default();
        r.threads = self.threads;
        r.progress = self.progress.clone();
        r.cancel = self.cancel.clone();
        r
    }
}

macro_rules! run_setters {
    () => {
        /// Worker threads (0, the default, = one per core; at most
        /// [`crate::MAX_THREADS`], else the operation fails with
        /// [`crate::ErrorKind::InvalidArgument`]).
        pub fn threads(mut self, n: usize) -> Self {
            self.run.threads = n;
            self
        }
        /// Called with progress (bytes done / total) from worker threads.
        pub fn progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
            self.run.progress = Some(Arc::new(f));
            self
        }
        /// Cancels the operation when `token` is cancelled.
        pub fn cancel_token(mut self, token: CancelToken) -> Self {
            self.run.cancel = token;
            self
        }
    };
}

/// Which earlier version a backup builds on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Parent {
    /// The newest version of the same VM (the default).
    #[default]
    Latest,
    /// None: a full read (still deduplicated against the whole store).
    None,
    /// This version id (or unique prefix).
    Id(String),
}

/// Options of [`crate::Store::backup`].
///
/// ```
/// let opts = alike::BackupOptions::default().threads(2).compression_level(Some(1));
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct BackupOptions {
    pub(crate) run: Run,
    pub(crate) parent: Parent,
    pub(crate) compression: Compression,
    pub(crate) time_ms: Option<i64>,
    pub(crate) image_format: Option<crate::ImageFormat>,
    pub(crate) origin: Option<alike_core::Origin>,
    pub(crate) quiesce: alike_core::Quiesce,
    pub(crate) allow_empty: bool,
    pub(crate) disk_progress: Option<DiskProgressFn>,
}

/// One disk's bytes read so far in a backup of a VM
/// ([`BackupOptions::disk_progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskReadProgress {
    /// The disk's position in the VM (as the version records it).
    pub position: u32,
    /// Bytes read from it so far.
    pub bytes_done: u64,
    /// Its size.
    pub bytes_total: u64,
}

/// A per-disk progress callback ([`BackupOptions::disk_progress`]).
pub type DiskProgressFn = std::sync::Arc<dyn Fn(&DiskReadProgress) + Send + Sync>;

impl BackupOptions {
    run_setters!();
    pub(crate) fn check(&self) -> Result<()> {
        self.run.check()?;
        if let Compression::Zstd(l) = self.compression {
            if !alike_ads::COMPRESSION_LEVELS.contains(&l) {
                return Err(Error::InvalidArgument(format!(
                    "zstd level {l}: from {} to {}",
                    alike_ads::COMPRESSION_LEVELS.start(),
                    alike_ads::COMPRESSION_LEVELS.end()
                )));
            }
        }
        Ok(())
    }
    /// For [`crate::Store::backup_vm`]: quiesce the guest before the
    /// snapshot (default: a crash-consistent snapshot).
    pub fn quiesce(mut self, q: alike_core::Quiesce) -> Self {
        self.quiesce = q;
        self
    }
    /// Which version to build on (for change tracking and carried ranges).
    pub fn parent(mut self, p: Parent) -> Self {
        self.parent = p;
        self
    }
    /// zstd level for this backup (`None` = store uncompressed); default: the store's.
    pub fn compression_level(mut self, level: Option<i32>) -> Self {
        self.compression = match level {
            Some(l) => Compression::Zstd(l),
            None => Compression::Off,
        };
        self
    }
    /// Creation time to record (ms since the epoch); default: now.
    pub fn time_ms(mut self, t: i64) -> Self {
        self.time_ms = Some(t);
        self
    }
    /// Accept a disk of 0 bytes (default: refused, as a mistake — an empty
    /// file, `/dev/null`, a VHDX of virtual size 0). The version then
    /// records a disk of size 0.
    pub fn allow_empty(mut self, yes: bool) -> Self {
        self.allow_empty = yes;
        self
    }
    /// Per-disk progress for [`crate::Store::backup_vm`]: with each
    /// backup-stage progress report, `f` is called once per disk with the
    /// bytes read from it so far (the engine's own report counts all disks
    /// together). Called from worker threads; keep it quick.
    ///
    /// ```
    /// let opts = alike::BackupOptions::default()
    ///     .disk_progress(|d| println!("disk {}: {}/{}", d.position, d.bytes_done, d.bytes_total));
    /// # let _ = opts;
    /// ```
    pub fn disk_progress(mut self, f: impl Fn(&DiskReadProgress) + Send + Sync + 'static) -> Self {
        self.disk_progress = Some(std::sync::Arc::new(f));
        self
    }
    /// The format of the images given to [`crate::Store::backup_images`]
    /// (default: detected from each file's signature).
    pub fn image_format(mut self, f: crate::ImageFormat) -> Self {
        self.image_format = Some(f);
        self
    }
}

/// The zstd level a backup asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Compression {
    /// The store's own level.
    #[default]
    StoreDefault,
    /// Stored uncompressed.
    Off,
    /// This level.
    Zstd(i32),
}

impl Compression {
    /// The level in the engine's terms, given the store's default.
    pub(crate) fn level(self, store: Option<i32>) -> Option<i32> {
        match self {
            Compression::StoreDefault => store,
            Compression::Off => None,
            Compression::Zstd(l) => Some(l),
        }
    }
}

/// Options of [`crate::Store::restore`].
///
/// ```
/// let opts = alike::RestoreOptions::default().threads(2);
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    pub(crate) run: Run,
    pub(crate) partial: bool,
    pub(crate) format: crate::ImageFormat,
    pub(crate) force: bool,
}

impl RestoreOptions {
    run_setters!();
    /// [`crate::Store::restore_to_file`]: replace an existing file (off by
    /// default: an existing file — maybe the very image that was backed up —
    /// is refused). Block devices need no force; a mounted or in-use one is
    /// refused whatever this says.
    pub fn force(mut self, yes: bool) -> Self {
        self.force = yes;
        self
    }
    /// Go on past damage: write every block that can be read and verified,
    /// leave the others as zeroes and list them in
    /// [`crate::RestoreReport::failed_ranges`]. Off by default: a damaged version
    /// then fails at the first damaged block.
    pub fn partial(mut self, yes: bool) -> Self {
        self.partial = yes;
        self
    }
    /// The file format [`crate::Store::restore_to_file`] writes (default: raw).
    pub fn format(mut self, f: crate::ImageFormat) -> Self {
        self.format = f;
        self
    }
}

/// Options of [`crate::Store::verify`].
///
/// ```
/// let opts = alike::VerifyOptions::default().full(true).vm("web01");
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct VerifyOptions {
    pub(crate) run: Run,
    pub(crate) full: bool,
    pub(crate) vm: Option<String>,
    pub(crate) version: Option<String>,
}

impl VerifyOptions {
    run_setters!();
    /// Read and re-hash every byte (default: quick structural check).
    pub fn full(mut self, yes: bool) -> Self {
        self.full = yes;
        self
    }
    /// Only this VM's versions.
    pub fn vm(mut self, name: impl Into<String>) -> Self {
        self.vm = Some(name.into());
        self
    }
    /// Only this version (id, prefix, or `latest` with [`VerifyOptions::vm`]).
    pub fn version(mut self, spec: impl Into<String>) -> Self {
        self.version = Some(spec.into());
        self
    }
}

/// Options of [`crate::Store::gc`] and [`crate::Store::rebuild_index`].
///
/// ```
/// let opts = alike::MaintenanceOptions::default().dry_run(true).progress(|p| eprintln!("{}/{}", p.bytes_done, p.bytes_total));
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct MaintenanceOptions {
    pub(crate) run: Run,
    pub(crate) dry_run: bool,
}

impl MaintenanceOptions {
    run_setters!();
    /// Count only; change nothing (gc).
    pub fn dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }
}

/// Options of [`crate::Store::vault`]: which versions to copy, and the
/// vault's own retention.
///
/// ```
/// let keep = alike::RetentionPolicy::default().monthly(24);
/// let opts = alike::VaultOptions::default().vm("web01").last(3).retention(keep).bandwidth_limit(50 << 20);
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct VaultOptions {
    pub(crate) run: Run,
    pub(crate) vm: Option<String>,
    pub(crate) last: Option<usize>,
    pub(crate) retention: Option<alike_core::retention::RetentionPolicy>,
    pub(crate) bandwidth: Option<u64>,
}

impl VaultOptions {
    run_setters!();
    /// Checks the ranges ([`crate::MAX_THREADS`], [`crate::MIN_BANDWIDTH`]),
    /// as [`crate::Store::vault`] does first: for a front-end that wants to
    /// know before it creates the vault.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] naming the value and its range.
    pub fn validate(&self) -> Result<()> {
        self.run.check()?;
        if let Some(b) = self.bandwidth.filter(|&b| b < MIN_BANDWIDTH) {
            return Err(Error::InvalidArgument(format!(
                "bandwidth limit of {b} bytes/s: at least {MIN_BANDWIDTH} (1 KiB/s)"
            )));
        }
        Ok(())
    }
    /// Only this VM's versions (default: every VM).
    pub fn vm(mut self, name: impl Into<String>) -> Self {
        self.vm = Some(name.into());
        self
    }
    /// Only the newest `n` versions of each VM (default: all).
    pub fn last(mut self, n: usize) -> Self {
        self.last = Some(n);
        self
    }
    /// After copying, apply this policy to the vault (its own retention,
    /// usually longer than the source's).
    pub fn retention(mut self, policy: alike_core::retention::RetentionPolicy) -> Self {
        self.retention = Some(policy);
        self
    }
    /// Read from the source at most this many bytes per second (what is sent
    /// is at most that, after deduplication and compression); at least
    /// [`crate::MIN_BANDWIDTH`].
    pub fn bandwidth_limit(mut self, bytes_per_second: u64) -> Self {
        self.bandwidth = Some(bytes_per_second);
        self
    }
}

/// Worker threads for `n` (0 = one per core).
pub(crate) fn worker_threads(n: usize) -> usize {
    if n == 0 { std::thread::available_parallelism().map_or(1, std::num::NonZero::get) } else { n }
}

/// The most NBD connections an export serves at once.
pub const MAX_NBD_CONNECTIONS: usize = 64;
/// The smallest and largest frame cache of an NBD export.
pub const NBD_CACHE_RANGE: std::ops::RangeInclusive<u64> = (8 << 20)..=(64 << 30);

/// Where an NBD export listens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NbdListen {
    /// TCP `HOST:PORT` (a host alone: NBD's port 10809; port 0: a free port).
    Tcp(String),
    /// A Unix socket at this path.
    Unix(std::path::PathBuf),
}

/// Which disks of a version an NBD export serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NbdDisks {
    /// This one, as the default export and as `diskN`.
    One(u32),
    /// Every disk, as `diskN` (no default export).
    All,
}

/// TLS of an NBD export: PEM files (the key is read once, at start, and
/// never logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NbdTls {
    /// The server's certificate chain (leaf first).
    pub(crate) cert: std::path::PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub(crate) key: std::path::PathBuf,
    /// Clients must present a certificate this CA signed.
    pub(crate) client_ca: Option<std::path::PathBuf>,
}

/// Told where an NBD export listens.
pub(crate) type ListeningFn = Arc<dyn Fn(&crate::NbdListening) + Send + Sync>;

/// Options of [`crate::Store::serve_nbd`].
///
/// ```
/// let opts = alike::NbdOptions::default()
///     .listen_unix("/run/alike/web01.sock")
///     .disk(1)
///     .cache_size(512 << 20)
///     .readahead(64 << 20);
/// # let _ = opts;
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct NbdOptions {
    pub(crate) run: Run,
    pub(crate) listen: NbdListen,
    pub(crate) disks: NbdDisks,
    pub(crate) cache_bytes: u64,
    pub(crate) readahead_bytes: u64,
    pub(crate) max_connections: usize,
    pub(crate) overlay: Option<std::path::PathBuf>,
    pub(crate) keep_overlay: bool,
    pub(crate) tls: Option<NbdTls>,
    pub(crate) client_ca: Option<std::path::PathBuf>,
    pub(crate) on_listening: Option<ListeningFn>,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            run: Run::default(),
            listen: NbdListen::Tcp(format!("127.0.0.1:{}", alike_nbd::serve::DEFAULT_PORT)),
            disks: NbdDisks::One(0),
            cache_bytes: 256 << 20,
            readahead_bytes: 32 << 20,
            max_connections: MAX_NBD_CONNECTIONS,
            overlay: None,
            keep_overlay: false,
            tls: None,
            client_ca: None,
            on_listening: None,
        }
    }
}

impl NbdOptions {
    run_setters!();
    pub(crate) fn check(&self) -> Result<()> {
        self.run.check()?;
        if !NBD_CACHE_RANGE.contains(&self.cache_bytes) {
            return Err(Error::InvalidArgument(format!(
                "an NBD frame cache of {} bytes: {} MiB to {} GiB",
                self.cache_bytes,
                NBD_CACHE_RANGE.start() >> 20,
                NBD_CACHE_RANGE.end() >> 30
            )));
        }
        if self.readahead_bytes > self.cache_bytes / 2 {
            return Err(Error::InvalidArgument(format!(
                "NBD read-ahead of {} bytes: at most half the frame cache ({} bytes)",
                self.readahead_bytes,
                self.cache_bytes / 2
            )));
        }
        if !(1..=MAX_NBD_CONNECTIONS).contains(&self.max_connections) {
            return Err(Error::InvalidArgument(format!(
                "{} NBD connections: 1 to {MAX_NBD_CONNECTIONS}",
                self.max_connections
            )));
        }
        if self.keep_overlay && self.overlay.is_none() {
            return Err(Error::InvalidArgument("keeping the overlay needs a writable overlay file".into()));
        }
        if self.client_ca.is_some() && self.tls.is_none() {
            return Err(Error::InvalidArgument(
                "a client CA needs TLS: give the server's certificate and key too".into(),
            ));
        }
        Ok(())
    }
    /// The TLS settings, with the client CA.
    pub(crate) fn tls_settings(&self) -> Option<NbdTls> {
        self.tls.clone().map(|t| NbdTls { client_ca: self.client_ca.clone(), ..t })
    }
    /// Listen on TCP `addr` (`HOST:PORT`, `[V6]:PORT`, or a host alone for
    /// port 10809; default `127.0.0.1:10809`: NBD has no authentication
    /// without TLS, so serving beyond this machine is an explicit choice).
    pub fn listen_tcp(mut self, addr: impl Into<String>) -> Self {
        self.listen = NbdListen::Tcp(addr.into());
        self
    }
    /// Listen on a Unix socket at `path` (a socket left by a server that is
    /// gone is replaced; anything else there is refused).
    pub fn listen_unix(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.listen = NbdListen::Unix(path.into());
        self
    }
    /// Serve disk `position` (default 0), as the default export and as `diskN`.
    pub fn disk(mut self, position: u32) -> Self {
        self.disks = NbdDisks::One(position);
        self
    }
    /// Serve every disk, disk N as the export `diskN` (no default export).
    pub fn all_disks(mut self) -> Self {
        self.disks = NbdDisks::All;
        self
    }
    /// Bytes of decoded frames kept for every connection and disk together
    /// (default 256 MiB; 8 MiB to 64 GiB).
    pub fn cache_size(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }
    /// Bytes read ahead of a sequential reader (default 32 MiB; 0 = none; at
    /// most half the cache).
    pub fn readahead(mut self, bytes: u64) -> Self {
        self.readahead_bytes = bytes;
        self
    }
    /// The most connections at once (default and maximum
    /// [`MAX_NBD_CONNECTIONS`]); more are closed at once.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }
    /// Make the export writable: writes go to a copy-on-write overlay file
    /// at `path` (one disk only; the version never changes). The file must
    /// not exist, unless [`NbdOptions::keep_overlay`] and it is an overlay of
    /// the same version and disk kept by an earlier session. It is deleted
    /// at the end unless kept.
    pub fn writable_overlay(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.overlay = Some(path.into());
        self
    }
    /// Keep the overlay file at the end (and reopen an existing one).
    pub fn keep_overlay(mut self, keep: bool) -> Self {
        self.keep_overlay = keep;
        self
    }
    /// Require TLS (the NBD specification's FORCEDTLS mode): every client
    /// must send `NBD_OPT_STARTTLS` first and then runs TLS 1.2 or 1.3 with
    /// the certificate chain in the PEM file `cert` (leaf first) and the
    /// private key in the PEM file `key`; other options are refused with
    /// `NBD_REP_ERR_TLS_REQD`. URIs become `nbds://…`. Clients check the
    /// certificate against their CA, and its name or address against
    /// where they connect. The files are read when the export starts; the
    /// key is never logged. (Needs the `tls` feature, on by default; rustls
    /// has no external pre-shared keys, so TLS-PSK clients cannot connect.)
    pub fn tls(mut self, cert: impl Into<std::path::PathBuf>, key: impl Into<std::path::PathBuf>) -> Self {
        self.tls = Some(NbdTls { cert: cert.into(), key: key.into(), client_ca: None });
        self
    }
    /// With [`NbdOptions::tls`]: clients must present a certificate signed
    /// by a CA in the PEM file `ca` (mutual TLS).
    pub fn tls_client_ca(mut self, ca: impl Into<std::path::PathBuf>) -> Self {
        self.client_ca = Some(ca.into());
        self
    }
    /// Called once the server listens (where, and the exports' URIs).
    pub fn on_listening(mut self, f: impl Fn(&crate::NbdListening) + Send + Sync + 'static) -> Self {
        self.on_listening = Some(Arc::new(f));
        self
    }
}

/// Which volume of a disk a file restore reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum VolumeChoice {
    /// The disk's one filesystem.
    #[default]
    Auto,
    /// Partition N (Linux's numbering).
    Partition(u32),
    /// An LVM2 logical volume, `VG/LV` (or `VG@UUIDPREFIX/LV`).
    Volume(String),
}

/// The frame cache of a file restore by default: listings and extractions
/// read little at a time, and rarely read a frame twice.
const FILES_CACHE: u64 = 64 << 20;

/// Checks what [`LsOptions`] and [`ExtractOptions`] share.
fn check_files(run: &Run, cache_bytes: u64, volume: &VolumeChoice, two: bool) -> Result<()> {
    run.check()?;
    if !NBD_CACHE_RANGE.contains(&cache_bytes) {
        return Err(Error::InvalidArgument(format!(
            "a frame cache of {cache_bytes} bytes: {} MiB to {} GiB",
            NBD_CACHE_RANGE.start() >> 20,
            NBD_CACHE_RANGE.end() >> 30
        )));
    }
    if two {
        return Err(Error::InvalidArgument("a partition and a logical volume were both given: choose one".into()));
    }
    if let VolumeChoice::Volume(v) = volume
        && !v.contains('/')
    {
        return Err(Error::InvalidArgument(format!("{v:?}: a logical volume is named VG/LV")));
    }
    Ok(())
}

macro_rules! volume_setters {
    () => {
        /// The disk (position from 0; default 0). A logical volume is found
        /// whatever the disk.
        pub fn disk(mut self, position: u32) -> Self {
            self.disk = Some(position);
            self
        }
        /// Partition `n` of the disk, numbered as Linux numbers them (GPT
        /// slots from 1, MBR primaries 1–4, logical partitions from 5).
        pub fn partition(mut self, n: u32) -> Self {
            self.two |= matches!(self.volume, VolumeChoice::Volume(_));
            self.volume = VolumeChoice::Partition(n);
            self
        }
        /// The LVM2 logical volume `VG/LV`; when two volume groups share the
        /// name, `VG@UUID/LV` with a prefix of the group's UUID (as listings
        /// name them).
        pub fn volume(mut self, name: impl Into<String>) -> Self {
            self.two |= matches!(self.volume, VolumeChoice::Partition(_));
            self.volume = VolumeChoice::Volume(name.into());
            self
        }
        /// Bytes of decoded frames cached (default 64 MiB; 8 MiB to 64 GiB).
        pub fn cache_size(mut self, bytes: u64) -> Self {
            self.cache_bytes = bytes;
            self
        }
    };
}

/// Options of [`crate::Store::ls`]: which volume, and which path (none:
/// list the volumes). Without a partition or a volume, a disk holding one
/// filesystem is read directly.
///
/// ```
/// let opts = alike::LsOptions::default().disk(0).partition(2).path("/etc");
/// # let _ = opts;
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct LsOptions {
    pub(crate) run: Run,
    pub(crate) disk: Option<u32>,
    pub(crate) volume: VolumeChoice,
    pub(crate) two: bool,
    pub(crate) path: Option<String>,
    pub(crate) cache_bytes: u64,
}

impl Default for LsOptions {
    fn default() -> Self {
        LsOptions {
            run: Run::default(),
            disk: None,
            volume: VolumeChoice::Auto,
            two: false,
            path: None,
            cache_bytes: FILES_CACHE,
        }
    }
}

impl LsOptions {
    run_setters!();
    volume_setters!();
    pub(crate) fn check(&self) -> Result<()> {
        check_files(&self.run, self.cache_bytes, &self.volume, self.two)
    }
    /// List this directory's entries (or this one file or link), `/`-separated
    /// from the filesystem's root.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
}

/// Options of [`crate::Store::extract`]: which volume, which paths, and
/// the target directory.
///
/// ```
/// let opts = alike::ExtractOptions::default().volume("vg0/root").path("/etc").path("/home/ann").to("/tmp/out");
/// # let _ = opts;
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ExtractOptions {
    pub(crate) run: Run,
    pub(crate) disk: Option<u32>,
    pub(crate) volume: VolumeChoice,
    pub(crate) two: bool,
    pub(crate) paths: Vec<String>,
    pub(crate) to: Option<std::path::PathBuf>,
    pub(crate) force: bool,
    pub(crate) cache_bytes: u64,
    pub(crate) max_bytes: Option<u64>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            run: Run::default(),
            disk: None,
            volume: VolumeChoice::Auto,
            two: false,
            paths: Vec::new(),
            to: None,
            force: false,
            cache_bytes: FILES_CACHE,
            max_bytes: None,
        }
    }
}

impl ExtractOptions {
    run_setters!();
    volume_setters!();
    pub(crate) fn check(&self) -> Result<()> {
        check_files(&self.run, self.cache_bytes, &self.volume, self.two)?;
        if self.paths.is_empty() {
            return Err(Error::InvalidArgument("no path to extract (`/` extracts everything)".into()));
        }
        if self.to.as_ref().is_none_or(|t| t.as_os_str().is_empty()) {
            return Err(Error::InvalidArgument("no target directory to extract into".into()));
        }
        Ok(())
    }
    /// Add a path to extract (`/`-separated from the filesystem's root; `/`
    /// is the whole filesystem).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.paths.push(path.into());
        self
    }
    /// Add paths to extract.
    pub fn paths<I: IntoIterator<Item = S>, S: Into<String>>(mut self, paths: I) -> Self {
        self.paths.extend(paths.into_iter().map(Into::into));
        self
    }
    /// The directory to extract into (created if missing).
    pub fn to(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.to = Some(dir.into());
        self
    }
    /// Replace existing files and links in the target, merge into existing
    /// directories (default: refuse them, each as a failure). A directory
    /// is never removed.
    pub fn force(mut self, yes: bool) -> Self {
        self.force = yes;
        self
    }
    /// The most bytes of file data written (default: four times the
    /// volume's size, at least 1 GiB): a bound against a damaged or hostile
    /// filesystem that claims more data than it can hold.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }
}
