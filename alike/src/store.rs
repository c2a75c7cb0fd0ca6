//! [`Store`]: an open Alike Data Store and the operations on it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alike_ads::{
    CreateOptions, GcReport, LockInfo, OpenOptions, PruneReport, Repository, Verification, VerifyDepth, VerifyReport,
};
use alike_core::backup::{BackupJob, EngineParams};
use alike_core::retention::RetentionPolicy;
use alike_core::{ChunkStore, Chunking, DiskSource, DiskTarget, KdfParams, Manifest, VmInfo};

use crate::options::{BackupOptions, MaintenanceOptions, Parent, RestoreOptions, VerifyOptions};
use crate::{Error, Result};

/// Builds a [`Store`]: settings first, then [`StoreBuilder::create`] or [`StoreBuilder::open`].
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("store");
/// # let cache = dir.path().join("cache");
/// let store = alike::Store::builder()
///     .passphrase("correct horse battery staple")
///     .cache_dir(&cache)
///     # .insecure_fast_kdf()
///     .create(&path)?;
/// assert!(store.is_encrypted());
/// let again = alike::Store::builder().passphrase("correct horse battery staple").cache_dir(&cache).open(&path)?;
/// assert_eq!(again.id(), store.id());
/// # Ok::<(), alike::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct StoreBuilder {
    create: CreateOptions,
    open: OpenOptions,
    object: alike_ads::ObjectOptions,
    vm_lock_dir: Option<PathBuf>,
}

impl StoreBuilder {
    /// The passphrase (to create an encrypted store, or to open one).
    pub fn passphrase(&mut self, p: impl AsRef<[u8]>) -> &mut Self {
        self.create.passphrase = Some(p.as_ref().to_vec());
        self.open.passphrase = Some(p.as_ref().to_vec());
        self
    }
    /// Opens with this key file, or on create also exports the master key to it.
    pub fn key_file(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        let p = path.into();
        self.create.key_file = Some(p.clone());
        self.open.key_file = Some(p);
        self
    }
    /// Opens with a key file's contents (what [`StoreBuilder::key_file`]
    /// would read), for a caller that has the key but no file — a processor
    /// gets it from its orchestrator. Only for opening; wins over
    /// [`StoreBuilder::key_file`].
    pub fn key_file_contents(&mut self, data: impl Into<Vec<u8>>) -> &mut Self {
        self.open.key_file_data = Some(data.into());
        self
    }
    /// On create: make a store that can hand out write-only keys
    /// ([`Store::add_writer_key`]): format 3, data frames sealed to the
    /// store's public key (`docs/format.md` §4.1). Needs encryption and
    /// content-defined chunking (the defaults).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = alike::Store::builder()
    ///     .passphrase("pw")
    ///     .writer_keys()
    ///     .cache_dir(dir.path().join("c"))
    ///     # .insecure_fast_kdf()
    ///     .create(dir.path().join("s"))?;
    /// assert_eq!(store.format_version(), 3);
    /// # Ok::<(), alike::Error>(())
    /// ```
    pub fn writer_keys(&mut self) -> &mut Self {
        self.create.writer_keys = true;
        self
    }
    /// Creates an unencrypted store (only when asked for explicitly).
    pub fn no_encryption(&mut self) -> &mut Self {
        self.create.encrypted = false;
        self
    }
    /// Makes a new store cut disks into fixed blocks of `bytes` (a power of
    /// two, 64 KiB – 4 MiB): a format 1 store, readable by older builds.
    /// New stores cut content-defined chunks unless told otherwise
    /// ([`StoreBuilder::chunking`]).
    pub fn block_size(&mut self, bytes: u32) -> &mut Self {
        self.create.chunking = Chunking::Fixed { block_size: bytes };
        self
    }
    /// How a new store cuts disks (default: content-defined 16/32/64 KiB
    /// chunks on 4 KiB boundaries, format 2).
    ///
    /// ```
    /// # fn main() -> alike::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use alike::{CdcParams, Chunking, Store};
    /// let sizes = CdcParams { min: 32 << 10, avg: 64 << 10, max: 128 << 10 };
    /// let store = Store::builder().no_encryption().chunking(Chunking::Cdc(sizes)).create(dir.path())?;
    /// assert_eq!(store.chunking(), Chunking::Cdc(sizes));
    /// assert_eq!(store.block_size(), None);
    /// # Ok(()) }
    /// ```
    pub fn chunking(&mut self, chunking: Chunking) -> &mut Self {
        self.create.chunking = chunking;
        self
    }
    /// Default zstd level of a new store (`None` = no compression; default 3).
    pub fn compression_level(&mut self, level: Option<i32>) -> &mut Self {
        self.create.compression_level = level;
        self
    }
    /// Target pack size of a new store (default 32 MiB).
    pub fn pack_size(&mut self, bytes: u64) -> &mut Self {
        self.create.pack_size = bytes;
        self
    }
    /// Argon2id cost for a new passphrase.
    pub fn kdf(&mut self, k: KdfParams) -> &mut Self {
        self.create.kdf = k;
        self
    }
    /// Cheap Argon2id parameters: for tests and examples only.
    pub fn insecure_fast_kdf(&mut self) -> &mut Self {
        self.kdf(KdfParams::insecure_fast())
    }
    /// Where the local index cache lives (for a store on object storage,
    /// packs are also built in `<dir>/spool` before upload).
    pub fn cache_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        let dir = dir.into();
        self.object.spool_dir(dir.join("spool"));
        self.open.cache_dir = Some(dir);
        self
    }
    /// Where backups of a VM lock it against other processes (see
    /// [`Store::vm_lock_dir`]; default: `STORE.vm-locks` beside a local
    /// store, a directory under `$TMPDIR` for one on object storage).
    /// Processes that back up the same VMs must name the same directory.
    pub fn vm_lock_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.vm_lock_dir = Some(dir.into());
        self
    }
    /// On create: use the master key of `other` (an open, encrypted store)
    /// instead of a new one — for a vault that shares its source's key by
    /// explicit choice. The new store still has its own passphrase (or key
    /// file); anyone holding the source's key can also read it.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] when `other` is unencrypted.
    pub fn share_key_of(&mut self, other: &Store) -> Result<&mut Self> {
        let m = other.repo.master_key().ok_or_else(|| {
            Error::InvalidArgument("the store to share a key with is unencrypted: it has no key".into())
        })?;
        self.create.master_key = Some(m.clone());
        Ok(self)
    }
    /// How to reach object storage for `s3://`, `az://` or `gs://`
    /// locations (endpoint, region, credentials…); unset fields come from
    /// the usual environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, `AWS_PROFILE`).
    pub fn object_options(&mut self, o: alike_ads::ObjectOptions) -> &mut Self {
        let spool = self.open.cache_dir.as_ref().map(|d| d.join("spool"));
        self.object = o;
        if let Some(s) = spool {
            self.object.spool_dir(s);
        }
        self
    }

    /// Creates a store in an empty (or new) directory and opens it.
    ///
    /// # Errors
    /// [`crate::ErrorKind::AlreadyExists`], invalid settings, I/O.
    pub fn create(&self, path: impl AsRef<Path>) -> Result<Store> {
        let mut c = self.create.clone();
        c.time_ms = now_ms();
        Repository::create_local(path.as_ref(), &c)?;
        self.open(path)
    }

    /// Opens an existing store.
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotAStore`], [`crate::ErrorKind::PassphraseRequired`],
    /// [`crate::ErrorKind::WrongPassphrase`], corruption of `config` or keys.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Store> {
        let repo = Repository::open_local(path.as_ref(), &self.open)?;
        let location = path.as_ref().display().to_string();
        Ok(Store { repo: std::sync::Arc::new(repo), vm_lock_dir: self.lock_dir(&location), location })
    }

    /// Creates a store at a location — a path, `file:///…`, or object
    /// storage (`s3://bucket/prefix`; `az://`, `gs://` with those features)
    /// — and opens it. Creating is safe against a concurrent create of the
    /// same location: exactly one succeeds.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let url = format!("file://{}", dir.path().join("store").display());
    /// let store = alike::Store::builder().no_encryption().cache_dir(dir.path().join("c")).create_at(&url)?;
    /// assert!(!store.is_encrypted());
    /// # Ok::<(), alike::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`StoreBuilder::create`]; a location that is not understood
    /// ([`crate::ErrorKind::InvalidArgument`]); the object store failing ([`crate::ErrorKind::Io`]).
    pub fn create_at(&self, location: &str) -> Result<Store> {
        let mut c = self.create.clone();
        c.time_ms = now_ms();
        Repository::create_at(location, &self.object, &c)?;
        self.open_at(location)
    }

    /// Opens the store at a location (a path or URL, as [`StoreBuilder::create_at`]).
    ///
    /// # Errors
    /// As [`StoreBuilder::open`] and [`StoreBuilder::create_at`].
    pub fn open_at(&self, location: &str) -> Result<Store> {
        let repo = Repository::open_at(location, &self.object, &self.open)?;
        Ok(Store {
            repo: std::sync::Arc::new(repo),
            vm_lock_dir: self.lock_dir(location),
            location: location.to_string(),
        })
    }

    fn lock_dir(&self, location: &str) -> PathBuf {
        self.vm_lock_dir.clone().unwrap_or_else(|| crate::vm_lock::default_dir(location))
    }
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    /// Shared with readers that outlive a borrow of the store (a version's
    /// disk as a block device for file restore).
    repo: std::sync::Arc<Repository>,
    location: String,
    vm_lock_dir: PathBuf,
}

/// One disk of a [`Version`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DiskInfo {
    /// Position in the VM (0-based).
    pub position: u32,
    /// Source label.
    pub label: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Non-hole bytes.
    pub data_bytes: u64,
    /// Bytes read from the source at backup.
    pub read_bytes: u64,
    /// Plaintext bytes new to the store at backup.
    pub new_bytes: u64,
    /// Stored bytes added at backup.
    pub new_stored_bytes: u64,
    /// Whether only changed ranges were read.
    pub incremental: bool,
    /// Why change tracking was not used, if it was expected.
    pub fallback_reason: Option<String>,
    /// The source's change token at backup (hex), when it gave one: what the
    /// next backup asks for changes since.
    pub change_token: Option<String>,
    /// How the disk was cut: `cdc:MIN/AVG/MAX` (KiB) or `fixed:KIB`.
    pub chunking: String,
}

/// A version (restore point).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Version {
    /// Full id (64 hex digits).
    pub id: String,
    /// The VM's name.
    pub vm: String,
    /// Creation time, ms since the epoch.
    pub time_ms: i64,
    /// Disks.
    pub disks: Vec<DiskInfo>,
    /// The stored manifest (block maps and all): the facade's own business.
    pub(crate) manifest: Manifest,
}

/// The schema of a version in `--json` output and the bindings.
impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            id: &'a str,
            vm: &'a str,
            time: String,
            time_ms: i64,
            parent: Option<&'a str>,
            host: Option<&'a str>,
            config: &'a VmInfo,
            disks: &'a [DiskInfo],
        }
        Json {
            id: &self.id,
            vm: &self.vm,
            time: self.time_rfc3339(),
            time_ms: self.time_ms,
            parent: self.parent(),
            host: self.host(),
            config: self.config(),
            disks: &self.disks,
        }
        .serialize(s)
    }
}

impl Version {
    fn new(id: String, manifest: Manifest) -> Version {
        let disks = manifest
            .disks
            .iter()
            .map(|d| DiskInfo {
                position: d.position,
                label: d.label.clone(),
                size: d.size,
                data_bytes: d.data_bytes,
                read_bytes: d.read_bytes,
                new_bytes: d.new_bytes,
                new_stored_bytes: d.new_stored_bytes,
                incremental: d.incremental,
                fallback_reason: d.fallback_reason.clone(),
                change_token: d.change_token.clone(),
                chunking: match d.chunking {
                    Some(p) => Chunking::Cdc(p),
                    None => Chunking::Fixed { block_size: d.block_size },
                }
                .to_string(),
            })
            .collect();
        Version { id, vm: manifest.vm.name.clone(), time_ms: manifest.time_ms, disks, manifest }
    }

    /// The VM's recorded configuration (name, uuid, hypervisor, vCPUs,
    /// memory, NICs, and the host's own record in `extra`).
    pub fn config(&self) -> &VmInfo {
        &self.manifest.vm
    }

    /// The version this one was built on, if any.
    pub fn parent(&self) -> Option<&str> {
        self.manifest.parent.as_deref()
    }

    /// The machine that made it, when recorded.
    pub fn host(&self) -> Option<&str> {
        self.manifest.host.as_deref()
    }

    /// Where a vaulted copy came from (source store and version).
    pub fn origin(&self) -> Option<&alike_core::Origin> {
        self.manifest.origin.as_ref()
    }

    /// The stored manifest itself (block maps, change tokens): the on-disk
    /// record, for tools and tests that inspect the format. Not part of the
    /// stable API: its shape follows `docs/format.md`.
    #[doc(hidden)]
    pub fn stored_manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The disk at `position`.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] when the version has no such disk.
    pub fn disk(&self, position: u32) -> Result<&DiskInfo> {
        self.disks.iter().find(|d| d.position == position).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "version {} has no disk {position} (it has {})",
                self.short_id(),
                self.disks.len()
            ))
        })
    }

    /// The first 12 hex digits of the id.
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    /// Creation time as RFC 3339 (UTC, seconds).
    pub fn time_rfc3339(&self) -> String {
        let t = UNIX_EPOCH + Duration::from_millis(self.time_ms.max(0) as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    }
}

/// Durations are seconds (f64) in every serialised report.
pub(crate) fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What a backup did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackupReport {
    /// The new version.
    pub version: Version,
    /// Bytes read from the sources.
    pub read_bytes: u64,
    /// Plaintext bytes new to the store.
    pub new_bytes: u64,
    /// Stored bytes added.
    pub new_stored_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// The schema of `alike backup --json`.
impl serde::Serialize for BackupReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            id: &'a str,
            vm: &'a str,
            time: String,
            read_bytes: u64,
            new_bytes: u64,
            new_stored_bytes: u64,
            elapsed_seconds: f64,
            disks: &'a [DiskInfo],
        }
        let v = &self.version;
        Json {
            id: &v.id,
            vm: &v.vm,
            time: v.time_rfc3339(),
            read_bytes: self.read_bytes,
            new_bytes: self.new_bytes,
            new_stored_bytes: self.new_stored_bytes,
            elapsed_seconds: self.elapsed.as_secs_f64(),
            disks: &v.disks,
        }
        .serialize(s)
    }
}

pub use alike_ads::StoreStats;

/// A live lock on the store: who is working on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HeldLock {
    /// The lock object's key.
    pub lock: String,
    /// Who holds it, since when.
    pub info: LockInfo,
}

/// A pack [`Store::rebuild_index`] could not read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DamagedPack {
    /// The pack's key.
    pub pack: String,
    /// Why it could not be read.
    pub error: String,
}

/// What [`Store::rebuild_index`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RebuildReport {
    /// Packs whose trailers were indexed.
    pub packs_indexed: u64,
    /// Packs that could not be read.
    pub damaged_packs: Vec<DamagedPack>,
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct RestoreReport {
    /// Virtual size of the restored disk.
    pub size: u64,
    /// Bytes written from stored chunks.
    pub data_bytes: u64,
    /// Bytes that are holes (zeroes) in the version.
    pub hole_bytes: u64,
    /// Partial restores only: byte ranges `[start, end)` that could not be
    /// read and hold zeroes. Empty means the disk is whole.
    pub failed_ranges: Vec<(u64, u64)>,
    /// Partial restores only: the first error met.
    pub first_error: Option<String>,
    /// Wall time.
    #[serde(rename = "elapsed_seconds", serialize_with = "seconds")]
    pub elapsed: Duration,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Store {
    /// A builder for creating or opening a store.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    /// The store's id (32 hex digits).
    pub fn id(&self) -> &str {
        &self.repo.config().store_id
    }

    /// Where the store is.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Where [`Store::backup_vm`] locks each VM against backups of it in
    /// other processes: a file per VM, held (`flock`) from before the
    /// snapshot to the end; a second backup waits for it, with a warning
    /// event "waiting for VM lock held by pid N" (`docs/services.md`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = alike::Store::builder().no_encryption().cache_dir(dir.path().join("c")).create(dir.path().join("s"))?;
    /// assert!(store.vm_lock_dir().ends_with("s.vm-locks"));
    /// assert!(store.vm_lock_file("xen", "web-01").starts_with(store.vm_lock_dir()));
    /// # Ok::<(), alike::Error>(())
    /// ```
    pub fn vm_lock_dir(&self) -> &Path {
        &self.vm_lock_dir
    }

    /// The lock file of VM `name` of a hypervisor of kind `kind` (`xen`,
    /// `hyperv`, `local`…) in [`Store::vm_lock_dir`].
    pub fn vm_lock_file(&self, kind: &str, name: &str) -> PathBuf {
        crate::vm_lock::lock_path(&self.vm_lock_dir, &format!("{kind}/{name}"))
    }

    /// Whether the store is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.repo.config().encrypted()
    }

    /// The block size of a fixed-block store (format 1); `None` for a
    /// store of content-defined chunks.
    pub fn block_size(&self) -> Option<u32> {
        self.repo.config().block_size
    }

    /// How the store cuts disks into chunks (fixed at creation).
    pub fn chunking(&self) -> Chunking {
        self.repo.config().chunking()
    }

    /// Whether the store hands out write-only keys (format 3,
    /// [`StoreBuilder::writer_keys`]).
    pub fn has_writer_keys(&self) -> bool {
        self.repo.config().public_key.is_some()
    }

    /// The store's format version: 2 for content-defined chunks, 1 for fixed blocks.
    pub fn format_version(&self) -> u32 {
        self.repo.config().format_version()
    }

    /// Backs up a VM's disks as a new version.
    ///
    /// Reads what the sources say is allocated (only what changed, when the
    /// parent version has change tokens the sources understand), stores the
    /// blocks the store lacks, and commits the version atomically.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = alike::Store::builder().no_encryption().cache_dir(dir.path().join("c")).create(dir.path().join("s"))?;
    /// let disk = alike::MemSource { label: "disk0".into(), data: vec![7u8; 300_000] };
    /// let r = store.backup(alike::VmInfo::named("web"), &[&disk], &alike::BackupOptions::default())?;
    /// assert_eq!(r.version.disks[0].size, 300_000);
    /// # Ok::<(), alike::Error>(())
    /// ```
    ///
    /// # Errors
    /// Source read errors, store errors, [`crate::ErrorKind::Cancelled`]. No
    /// version is written unless all disks were stored.
    /// [`crate::ErrorKind::InvalidArgument`] for a disk of 0 bytes unless
    /// [`BackupOptions::allow_empty`], or options out of range.
    pub fn backup(&self, vm: VmInfo, disks: &[&dyn DiskSource], opts: &BackupOptions) -> Result<BackupReport> {
        opts.check()?;
        if vm.name.is_empty() {
            return Err(Error::InvalidArgument("the VM needs a name".into()));
        }
        // An empty disk is far more often a mistake (a wrong path, a
        // truncated copy, /dev/null) than a disk: only when asked for.
        if let Some(d) = disks.iter().find(|d| d.size() == 0).filter(|_| !opts.allow_empty) {
            return Err(Error::InvalidArgument(format!(
                "{} is an empty disk (0 bytes): back it up only when asked for (allow_empty, `--allow-empty`)",
                d.label()
            )));
        }
        let started = std::time::Instant::now();
        let _lock = self.repo.begin_write()?;
        let (mut parent, mut no_parent_reason) = self.parent_version(&vm.name, &opts.parent)?;
        if let Some(p) = &parent
            && self.repo.needs_missing_data(&p.manifest)?
        {
            no_parent_reason = Some(format!(
                "the previous version {} needs data from packs missing from the store: read in full to store it again",
                p.short_id()
            ));
            parent = None;
        }
        let parent = parent.map(|v| (v.id, v.manifest));
        let mut params = EngineParams::with_chunking(self.chunking());
        params.compression_level = opts.compression.level(self.repo.config().compression_level);
        let job = BackupJob {
            vm,
            disks: disks.to_vec(),
            parent,
            time_ms: opts.time_ms.unwrap_or_else(now_ms),
            host: alike_ads::host_name(),
            origin: opts.origin.clone(),
            no_parent_reason,
        };
        let r = alike_core::backup::backup(self.repo.as_ref(), self.repo.keys(), &params, job, &opts.run.to_core());
        let (id, manifest) = match r {
            Ok(x) => x,
            Err(e) => {
                self.repo.abort_session();
                return Err(e.into());
            }
        };
        let version = Version::new(id, manifest);
        Ok(BackupReport {
            read_bytes: version.disks.iter().map(|d| d.read_bytes).sum(),
            new_bytes: version.disks.iter().map(|d| d.new_bytes).sum(),
            new_stored_bytes: version.disks.iter().map(|d| d.new_stored_bytes).sum(),
            version,
            elapsed: started.elapsed(),
        })
    }

    /// The version a backup of VM `vm` builds on: none, the VM's latest, or
    /// the one asked for (which must be the VM's). The one rule every
    /// backup path uses.
    /// When the store holds damaged manifests, any of them may be the VM's
    /// latest: then there is no parent, and the reason says why (the backup
    /// reads in full, deduplicated, and records it).
    pub(crate) fn parent_version(&self, vm: &str, parent: &Parent) -> Result<(Option<Version>, Option<String>)> {
        match parent {
            Parent::None => Ok((None, None)),
            Parent::Latest => {
                let (good, damaged) = self.repo.scan_versions()?;
                if let Some(d) = damaged.first() {
                    let why = format!(
                        "{} version manifest(s) of this store are damaged ({}…) and one may be this VM's latest: \
                         read in full, deduplicated (`alike verify` names them; `alike forget` removes them)",
                        damaged.len(),
                        &d.id[..12.min(d.id.len())]
                    );
                    return Ok((None, Some(why)));
                }
                let latest = good.into_iter().rfind(|(_, m)| m.vm.name == vm);
                Ok((latest.map(|(id, m)| Version::new(id, m)), None))
            }
            Parent::Id(s) => Ok((Some(self.version(s, Some(vm))?), None)),
        }
    }

    /// Objects in `versions/` that cannot be read as versions (bit rot, a
    /// truncated or stray file): listed apart so that one never stops the
    /// others. `forget` removes them.
    ///
    /// # Errors
    /// Failures to reach the store.
    pub fn damaged_versions(&self) -> Result<Vec<alike_ads::DamagedVersion>> {
        Ok(self.repo.scan_versions()?.1)
    }

    /// Backs up disk images (raw files or block devices, VHD, VHDX/AVHDX —
    /// detected, or as [`BackupOptions::image_format`] says) as the disks of VM `vm`.
    /// Only allocated data is read. An image of 0 bytes is refused unless
    /// [`BackupOptions::allow_empty`]; character devices, FIFOs and sockets
    /// always are ([`crate::open_image`]).
    ///
    /// # Errors
    /// As [`Store::backup`], plus opening the images.
    pub fn backup_images(&self, vm: &str, images: &[impl AsRef<Path>], opts: &BackupOptions) -> Result<BackupReport> {
        opts.check()?;
        let sources = images.iter().map(|p| crate::open_image(p, opts.image_format)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&dyn DiskSource> = sources.iter().map(|s| &**s).collect();
        self.backup(VmInfo::named(vm), &refs, opts)
    }

    /// All versions, oldest first; only those of `vm` when given.
    ///
    /// # Errors
    /// Store errors, damaged manifests.
    pub fn versions(&self, vm: Option<&str>) -> Result<Vec<Version>> {
        Ok(self
            .repo
            .versions()?
            .into_iter()
            .filter(|(_, m)| vm.is_none_or(|v| m.vm.name == v))
            .map(|(id, m)| Version::new(id, m))
            .collect())
    }

    /// Finds a version by id, unique id prefix, or `latest` (with `vm`, the newest of that VM).
    ///
    /// # Errors
    /// [`Error::VersionNotFound`], [`Error::AmbiguousVersion`].
    pub fn version(&self, spec: &str, vm: Option<&str>) -> Result<Version> {
        let not_found = || Error::VersionNotFound { spec: spec.into(), vm: vm.map(str::to_string) };
        if spec == "latest" {
            let mut all = self.versions(vm)?;
            if vm.is_none() && all.iter().any(|v| v.vm != all[0].vm) {
                return Err(Error::InvalidArgument("`latest` needs a VM name when the store holds several VMs".into()));
            }
            return all.pop().ok_or_else(not_found);
        }
        let id = match self.resolve_id(spec) {
            Err(Error::VersionNotFound { .. }) => return Err(not_found()),
            r => r?,
        };
        let v = Version::new(id.clone(), self.repo.read_manifest(&id)?);
        if vm.is_some_and(|n| n != v.vm) {
            return Err(not_found());
        }
        Ok(v)
    }

    /// Whether this store was opened with a write-only key
    /// ([`Store::add_writer_key`]): it backs up (with deduplication and
    /// incrementals) and lists versions, but restores nothing.
    pub fn is_write_only(&self) -> bool {
        self.repo.is_write_only()
    }

    /// Fails with [`crate::ErrorKind::WriteOnlyKey`] when the store was
    /// opened with a write-only key: `what` needs chunk data, or removes
    /// something (a write-only key only adds).
    pub(crate) fn check_can_read_data(&self, what: impl FnOnce() -> String) -> Result<()> {
        if self.repo.is_write_only() {
            return Err(alike_core::Error::WriteOnlyKey { what: what() }.into());
        }
        Ok(())
    }

    /// Exports a write-only key file to `path` (mode 0600, written to a
    /// temporary name then moved into place; an existing file is never
    /// replaced): a processor holding it can back up into this store —
    /// deduplicating, building incrementals — but cannot read chunk data,
    /// its own included (`docs/security.md`). The store must have been made
    /// with [`StoreBuilder::writer_keys`], and be open with its full key.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let (s, c) = (dir.path().join("s"), dir.path().join("c"));
    /// let store = alike::Store::builder().passphrase("pw").writer_keys().cache_dir(&c)
    ///     # .insecure_fast_kdf()
    ///     .create(&s)?;
    /// store.add_writer_key(dir.path().join("writer.key"))?;
    /// let writer = alike::Store::builder().key_file(dir.path().join("writer.key")).cache_dir(&c).open(&s)?;
    /// assert!(writer.is_write_only() && !store.is_write_only());
    /// # Ok::<(), alike::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] for a store made without
    /// write-only keys; [`crate::ErrorKind::WriteOnlyKey`] when opened with
    /// one; [`crate::ErrorKind::AlreadyExists`] when `path` exists; I/O.
    pub fn add_writer_key(&self, path: impl AsRef<Path>) -> Result<()> {
        Ok(self.repo.export_writer_key(path.as_ref())?)
    }

    /// The bytes of a write-only key file ([`Store::add_writer_key`]), for
    /// a caller that hands them over a channel instead of a file; open with
    /// [`StoreBuilder::key_file_contents`].
    ///
    /// # Errors
    /// As [`Store::add_writer_key`], less the file's.
    pub fn writer_key_file_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.repo.writer_key_file_bytes()?)
    }

    /// Restores disk `disk` (0-based) of `version` onto `target`.
    ///
    /// # Errors
    /// Missing disk, damaged or missing chunks (the restore stops at the
    /// damaged block; nothing wrong is written), target errors, cancellation;
    /// [`crate::ErrorKind::WriteOnlyKey`] when opened with a write-only key.
    pub fn restore(
        &self,
        version: &Version,
        disk: u32,
        target: &dyn DiskTarget,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        opts.run.check()?;
        self.check_can_read_data(|| {
            format!("restoring disk {disk} of version {} (VM {:?})", version.short_id(), version.vm)
        })?;
        let started = std::time::Instant::now();
        let _lock = self.repo.lock(alike_ads::LockKind::Read)?;
        // The version may be newer than this handle's cache (another writer
        // committed it since): its index segment is on the store already.
        self.repo.sync_cache()?;
        let (keys, m, run) = (self.repo.keys(), &version.manifest, opts.run.to_core());
        if opts.partial {
            let p = alike_core::restore::restore_disk_partial(self.repo.as_ref(), keys, m, disk, target, &run)?;
            let r = p.report;
            let lost: u64 = p.failed.iter().map(|(a, b)| b - a).sum();
            return Ok(RestoreReport {
                size: r.size,
                data_bytes: r.data_bytes,
                hole_bytes: r.hole_bytes - lost,
                failed_ranges: p.failed,
                first_error: p.first_error,
                elapsed: started.elapsed(),
            });
        }
        let r = alike_core::restore::restore_disk(self.repo.as_ref(), keys, m, disk, target, &run)?;
        Ok(RestoreReport {
            size: r.size,
            data_bytes: r.data_bytes,
            hole_bytes: r.hole_bytes,
            failed_ranges: Vec::new(),
            first_error: None,
            elapsed: started.elapsed(),
        })
    }

    /// Restores disk `disk` of `version` into an image file at `path` — raw
    /// by default (sparse where the disk has holes), or a dynamic VHD or VHDX
    /// with [`RestoreOptions::format`] — written under a temporary name and
    /// renamed when complete; or onto a block device (raw).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = alike::Store::builder().no_encryption().cache_dir(dir.path().join("c")).create(dir.path().join("s"))?;
    /// # let disk = alike::MemSource { label: "d".into(), data: vec![1u8; 70_000] };
    /// let v = store.backup(alike::VmInfo::named("vm"), &[&disk], &Default::default())?.version;
    /// store.restore_to_file(&v, 0, dir.path().join("out.img"), &Default::default())?;
    /// assert_eq!(std::fs::read(dir.path().join("out.img")).unwrap(), disk.data);
    /// # Ok::<(), alike::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Store::restore`].
    pub fn restore_to_file(
        &self,
        version: &Version,
        disk: u32,
        path: impl AsRef<Path>,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let d = version.disk(disk)?;
        self.check_can_read_data(|| {
            format!("restoring disk {disk} of version {} (VM {:?})", version.short_id(), version.vm)
        })?;
        crate::image::check_output(path.as_ref(), opts.format, opts.force)?;
        let t = crate::create_image(path.as_ref(), opts.format, d.size)?;
        self.restore(version, disk, &*t, opts)
    }

    /// Figures: versions, logical vs unique vs stored bytes.
    ///
    /// # Errors
    /// Store errors.
    pub fn stats(&self) -> Result<StoreStats> {
        Ok(self.repo.stats()?)
    }

    /// Verifies versions (all, one VM's, or one) and records the result in
    /// the store. Damage is in the report, never an error: check
    /// [`VerifyReport::ok`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = alike::Store::builder().no_encryption().cache_dir(dir.path().join("c")).create(dir.path().join("s"))?;
    /// # let disk = alike::MemSource { label: "d".into(), data: vec![3u8; 200_000] };
    /// # store.backup(alike::VmInfo::named("vm"), &[&disk], &Default::default())?;
    /// let report = store.verify(&alike::VerifyOptions::default().full(true))?;
    /// assert!(report.ok(), "{:?}", report.damaged);
    /// # Ok::<(), alike::Error>(())
    /// ```
    ///
    /// # Errors
    /// A version or VM that does not exist; failures to reach the store.
    pub fn verify(&self, opts: &VerifyOptions) -> Result<VerifyReport> {
        opts.run.check()?;
        let ids: Vec<String> = match (&opts.version, &opts.vm) {
            (Some(spec), vm) => vec![self.version(spec, vm.as_deref())?.id],
            (None, Some(vm)) => {
                let v: Vec<String> = self.versions(Some(vm))?.into_iter().map(|v| v.id).collect();
                if v.is_empty() {
                    return Err(Error::VersionNotFound { spec: "any".into(), vm: Some(vm.clone()) });
                }
                v
            }
            (None, None) => self.repo.version_ids()?,
        };
        let depth = if opts.full { VerifyDepth::Full } else { VerifyDepth::Quick };
        let _lock = self.repo.lock(alike_ads::LockKind::Read)?;
        let progress = opts.run.progress.clone();
        let report = self.repo.verify(Some(&ids), depth, &|done, total| {
            if let Some(p) = &progress {
                p(&alike_core::Progress::verify(done, total));
            }
        })?;
        if report.not_checked.is_some() {
            // Not a verification of the data: nothing to record.
            return Ok(report);
        }
        let now = now_ms();
        for id in &ids {
            let ok = !report.damaged.iter().any(|d| d.affects.iter().any(|a| &a.version == id));
            let depth = if opts.full { "full" } else { "quick" };
            match self.repo.record_verification(id, &Verification { time_ms: now, depth: depth.into(), ok }) {
                Err(e) if e.is_write_refused() => {
                    tracing::warn!(error = %e, "the store is read-only to us: this verification is not recorded");
                    break;
                }
                r => r?,
            }
        }
        Ok(report)
    }

    /// The newest verification of each version that has one, by version id.
    ///
    /// # Errors
    /// Store errors.
    pub fn verifications(&self) -> Result<std::collections::HashMap<String, Verification>> {
        Ok(self.repo.verifications()?)
    }

    /// Applies a retention policy to one VM's versions (every VM's when
    /// `vm` is `None`); removes what no rule keeps unless `dry_run`. Pinned
    /// versions always stay. Space is reclaimed by [`Store::gc`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = alike::Store::builder().no_encryption().cache_dir(dir.path().join("c")).create(dir.path().join("s"))?;
    /// # let disk = alike::MemSource { label: "d".into(), data: vec![3u8; 100_000] };
    /// # for t in 0..3 { store.backup(alike::VmInfo::named("vm"), &[&disk], &alike::BackupOptions::default().time_ms(t))?; }
    /// let policy = alike::RetentionPolicy::default().last(1);
    /// let r = store.prune(Some("vm"), &policy, false)?;
    /// assert_eq!(r.removed.len(), 2);
    /// # Ok::<(), alike::Error>(())
    /// ```
    ///
    /// # Errors
    /// An empty policy; store errors.
    pub fn prune(&self, vm: Option<&str>, policy: &RetentionPolicy, dry_run: bool) -> Result<PruneReport> {
        if !dry_run {
            self.check_can_read_data(|| "pruning versions".into())?;
        }
        Ok(self.repo.prune(vm, policy, dry_run)?)
    }

    /// Removes one version (id or unique prefix); its data goes at the next [`Store::gc`].
    ///
    /// # Errors
    /// Unknown or pinned version; store errors.
    pub fn forget(&self, version: &str) -> Result<()> {
        self.check_can_read_data(|| format!("forgetting version {version}"))?;
        // By name, not by reading it: a damaged manifest can be forgotten too.
        let id = if version == "latest" { self.version(version, None)?.id } else { self.resolve_id(version)? };
        Ok(self.repo.forget(&id)?)
    }

    /// A full version id from a unique prefix, without reading the manifest.
    fn resolve_id(&self, spec: &str) -> Result<String> {
        let all = self.repo.version_ids()?;
        // A stray object in `versions/` is named exactly.
        if all.iter().any(|i| i == spec) {
            return Ok(spec.to_owned());
        }
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!("{spec:?} is not a version id (hex digits) or `latest`")));
        }
        let spec_l = spec.to_ascii_lowercase();
        let ids: Vec<String> = all.into_iter().filter(|i| i.starts_with(&spec_l)).collect();
        match ids.as_slice() {
            [] => Err(Error::VersionNotFound { spec: spec.into(), vm: None }),
            [one] => Ok(one.clone()),
            _ => Err(Error::AmbiguousVersion(spec.into())),
        }
    }

    /// Pins a version (id or unique prefix) so that no policy removes it.
    ///
    /// # Errors
    /// Unknown version; store errors.
    pub fn pin(&self, version: &str) -> Result<()> {
        let v = self.version(version, None)?;
        Ok(self.repo.pin(&v.id)?)
    }

    /// Removes a pin.
    ///
    /// # Errors
    /// Unknown version; store errors.
    pub fn unpin(&self, version: &str) -> Result<()> {
        self.check_can_read_data(|| format!("unpinning version {version}"))?;
        let v = self.version(version, None)?;
        Ok(self.repo.unpin(&v.id)?)
    }

    /// Ids of pinned versions.
    ///
    /// # Errors
    /// Store errors.
    pub fn pinned(&self) -> Result<std::collections::HashSet<String>> {
        Ok(self.repo.pinned()?)
    }

    /// Collects garbage: condemns packs no version needs (repacking mostly
    /// dead ones) and deletes condemned packs when no backup, restore or
    /// verify that might need them is running. Safe while backups run.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Busy`] while another GC runs; unreadable versions; store errors.
    pub fn gc(&self, opts: &MaintenanceOptions) -> Result<GcReport> {
        opts.run.check()?;
        if !opts.dry_run {
            self.check_can_read_data(|| "garbage collection".into())?;
        }
        let run = &opts.run;
        Ok(self.repo.gc_with(opts.dry_run, &|done, total| {
            if let Some(p) = &run.progress {
                p(&alike_core::Progress::of(alike_core::Phase::Gc, done, total));
            }
            run.cancel.check().map_err(alike_ads::Error::from)
        })?)
    }

    /// Store locks: who is working on the store. Stale locks (their process
    /// is gone, or they were not refreshed for 30 minutes) are removed on the
    /// way, and only live ones are returned.
    ///
    /// # Errors
    /// Store errors.
    pub fn locks(&self) -> Result<Vec<HeldLock>> {
        let live = alike_ads::live_locks(&**self.repo.backend())?;
        Ok(live.into_iter().map(|(lock, info)| HeldLock { lock, info }).collect())
    }

    /// Rebuilds the store's index (and the local cache) from pack trailers:
    /// how many packs were indexed, and the packs that could not be read.
    ///
    /// # Errors
    /// Store errors.
    pub fn rebuild_index(&self, opts: &MaintenanceOptions) -> Result<RebuildReport> {
        opts.run.check()?;
        let run = &opts.run;
        let (n, bad) = self.repo.rebuild_index_with(&|done, total| {
            if let Some(p) = &run.progress {
                p(&alike_core::Progress::of(alike_core::Phase::Index, done, total));
            }
            run.cancel.check().map_err(alike_ads::Error::from)
        })?;
        Ok(RebuildReport {
            packs_indexed: n as u64,
            damaged_packs: bad.into_iter().map(|(pack, e)| DamagedPack { pack, error: e.to_string() }).collect(),
        })
    }

    /// The engine's chunk store, for advanced use (custom engines, tests).
    pub fn chunk_store(&self) -> &dyn ChunkStore {
        self.repo.as_ref()
    }

    /// The open repository, for the facade's other modules (`xen`, `nbd`:
    /// read locks, keys, stored versions as sources).
    /// Finds other versions of this store by id (for a version source's
    /// `changed_ranges`).
    pub(crate) fn manifest_lookup(&self) -> impl Fn(&str) -> alike_core::Result<Option<Manifest>> + Send + Sync + '_ {
        move |id: &str| match self.repo.read_manifest(id) {
            Ok(m) => Ok(Some(m)),
            Err(alike_ads::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(alike_core::Error::seam(e)),
        }
    }

    /// Every disk of `version`, read back from the store (block maps and
    /// frames); each source's change token names the version, so a later
    /// version's `changed_ranges` against it compares block maps.
    pub(crate) fn version_sources<'a>(
        &'a self,
        version: &Version,
        lookup: &'a alike_core::ManifestLookup<'a>,
    ) -> Result<Vec<alike_core::VersionSource<'a>>> {
        self.check_can_read_data(|| format!("reading version {} (VM {:?})", version.short_id(), version.vm))?;
        let m = &version.manifest;
        Ok(m.disks
            .iter()
            .map(|d| {
                alike_core::VersionSource::new(
                    &*self.repo,
                    self.repo.keys(),
                    self.id(),
                    &version.id,
                    m,
                    d.position,
                    lookup,
                )
            })
            .collect::<alike_core::Result<Vec<_>>>()?)
    }

    pub(crate) fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The open repository, shared (see [`Store::repo`]).
    pub(crate) fn repo_arc(&self) -> std::sync::Arc<Repository> {
        self.repo.clone()
    }
}

/// A version copied by [`Store::vault`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct VaultCopy {
    /// The source version's id.
    pub source: String,
    /// The copy's id in the vault.
    pub vault: String,
}

/// What [`Store::vault`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct VaultReport {
    /// The vault store's id.
    pub vault: String,
    /// Each version copied now, oldest first.
    pub copied: Vec<VaultCopy>,
    /// Source versions already in the vault (copied by an earlier run).
    pub already: Vec<String>,
    /// Bytes read from the source store (only blocks that differ from the
    /// vault's previous copy of the VM, when it has one).
    pub read_bytes: u64,
    /// Plaintext bytes new to the vault.
    pub new_bytes: u64,
    /// Bytes added to the vault store (what was sent).
    pub sent_bytes: u64,
    /// Vault versions removed by the vault's retention.
    pub pruned: Vec<String>,
    /// Wall time.
    #[serde(rename = "elapsed_seconds", serialize_with = "seconds")]
    pub elapsed: Duration,
}

impl Store {
    /// Copies versions of this store into `vault` (Offsite Vaulting): for
    /// each chosen version not yet there, oldest first, the blocks that
    /// differ from the vault's previous copy of the VM are read, deduplicated
    /// against everything the vault holds, compressed and sealed with the
    /// vault's own key, and stored — data first, the version last, so the
    /// vault is consistent at every instant and an interrupted run resumes
    /// without sending again what arrived. The copy keeps the version's
    /// time, VM configuration and disks, and records where it came from
    /// ([`alike_core::Origin`]); the vault needs nothing of this store to be
    /// listed, verified or restored.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = |s: &str| dir.path().join(s);
    /// # let disk = alike::MemSource { label: "d".into(), data: vec![3u8; 200_000] };
    /// let site = alike::Store::builder().no_encryption().cache_dir(p("c1")).create(p("site"))?;
    /// site.backup(alike::VmInfo::named("web01"), &[&disk], &Default::default())?;
    /// let vault = alike::Store::builder().passphrase("offsite").insecure_fast_kdf().cache_dir(p("c2")).create(p("vault"))?;
    /// let r = site.vault(&vault, &alike::VaultOptions::default())?;
    /// assert_eq!(r.copied.len(), 1);
    /// assert!(site.vault(&vault, &Default::default())?.copied.is_empty()); // nothing new
    /// # Ok::<(), alike::Error>(())
    /// ```
    ///
    /// # Errors
    /// Store errors on either side, [`crate::ErrorKind::Cancelled`]. Versions
    /// copied before an error stay in the vault.
    pub fn vault(&self, vault: &Store, opts: &crate::VaultOptions) -> Result<VaultReport> {
        opts.validate()?;
        self.check_can_read_data(|| format!("vaulting from store {} into {}", self.id(), vault.id()))?;
        let started = std::time::Instant::now();
        if vault.id() == self.id() {
            return Err(Error::InvalidArgument("a store cannot be vaulted into itself".into()));
        }
        let mut chosen: Vec<Version> = Vec::new();
        let all = self.versions(opts.vm.as_deref())?;
        let mut by_vm: std::collections::BTreeMap<&str, Vec<&Version>> = Default::default();
        for v in &all {
            by_vm.entry(&v.vm).or_default().push(v);
        }
        for vs in by_vm.values() {
            let skip = opts.last.map_or(0, |n| vs.len().saturating_sub(n));
            chosen.extend(vs[skip..].iter().map(|v| (*v).clone()));
        }
        chosen.sort_by(|a, b| a.time_ms.cmp(&b.time_ms).then(a.id.cmp(&b.id)));
        let present: std::collections::HashSet<String> = vault
            .versions(None)?
            .into_iter()
            .filter_map(|v| v.manifest.origin.filter(|o| o.store == self.id()).map(|o| o.version))
            .collect();
        let mut report = VaultReport { vault: vault.id().to_owned(), ..VaultReport::default() };
        let lookup = |id: &str| match self.repo.read_manifest(id) {
            Ok(m) => Ok(Some(m)),
            Err(alike_ads::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(alike_core::Error::seam(e)),
        };
        for v in chosen {
            opts.run.cancel.check()?;
            if present.contains(&v.id) {
                report.already.push(v.id);
                continue;
            }
            let sources = v
                .manifest
                .disks
                .iter()
                .map(|d| {
                    alike_core::VersionSource::new(
                        self.repo.as_ref(),
                        self.repo.keys(),
                        self.id(),
                        &v.id,
                        &v.manifest,
                        d.position,
                        &lookup,
                    )
                })
                .collect::<alike_core::Result<Vec<_>>>()?;
            // The bandwidth limit: after each read, wait until the bytes read so far are due.
            let started = std::time::Instant::now();
            let read_so_far = std::sync::atomic::AtomicU64::new(0);
            let rate = opts.bandwidth.unwrap_or(u64::MAX).max(1);
            let pace = |n: u64| {
                let total = read_so_far.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
                if let Some(wait) = Duration::from_secs_f64(total as f64 / rate as f64).checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                Ok(())
            };
            let throttled: Vec<_> = sources.iter().map(|s| alike_core::HookedSource::new(s, &pace)).collect();
            let refs: Vec<&dyn DiskSource> = if opts.bandwidth.is_some() {
                throttled.iter().map(|t| t as &dyn DiskSource).collect()
            } else {
                sources.iter().map(|s| s as &dyn DiskSource).collect()
            };
            // A copy, not a new backup: an empty disk was accepted at its backup.
            let mut bo = BackupOptions::default().time_ms(v.time_ms).allow_empty(true);
            bo.run = opts.run.clone();
            bo.origin = Some(alike_core::Origin { store: self.id().to_string(), version: v.id.clone() });
            let r = vault.backup(v.manifest.vm.clone(), &refs, &bo)?;
            tracing::info!(source = %v.id, vault = %r.version.id, read = r.read_bytes, sent = r.new_stored_bytes, "vaulted");
            report.read_bytes += r.read_bytes;
            report.new_bytes += r.new_bytes;
            report.sent_bytes += r.new_stored_bytes;
            report.copied.push(VaultCopy { source: v.id, vault: r.version.id });
        }
        if let Some(policy) = &opts.retention {
            report.pruned = vault.prune(opts.vm.as_deref(), policy, false)?.removed;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }
}
