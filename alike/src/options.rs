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
}

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
