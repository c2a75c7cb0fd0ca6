//! An open store: config and keys, the writer session (packs being filled,
//! packs not yet published in an index segment), the local index cache, and
//! versions. Implements `alike_core::ChunkStore`.

use alike_core::Chunking;
use alike_core::Recover;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;

use alike_core::{
    ChunkId, ChunkLocation, ChunkStore, ErrorKind, FrameRef, KdfParams, Keys, Manifest, MasterKey, StoredFrame,
};
use tracing::{debug, info, warn};

use crate::backend::{Backend, LocalBackend, random_hex};
use crate::config::{
    AES_256_GCM, AnyKeyFile, KeyFile, KeyObject, NO_ENCRYPTION, StoreConfig, decode_config, encode_config, key_aad,
};
use crate::format::{ObjectKind, check_header_version, header_v};
use crate::index::{IndexCache, decode_segment, encode_segment};
use crate::pack::{FinishedPack, PackEntry, PackWriter, pack_key, read_trailer};
use crate::{Error, Result};

/// The zstd levels a store or a backup may ask for: zstd's own range, its
/// negative "fast" levels included.
pub const COMPRESSION_LEVELS: std::ops::RangeInclusive<i32> = -(1 << 17)..=22;
/// Default target pack size: 32 MiB.
pub const DEFAULT_PACK_SIZE: u64 = 32 << 20;
/// Packs written before their index segment is published. A lower bound
/// on what a writer holds (the ids pending, the packs' entry lists, the
/// segment being encoded): 8 packs of 32 MiB are reached by a 1 GiB disk
/// too, so what a backup holds does not grow with the disk.
const PACKS_PER_SEGMENT: usize = 8;
/// Chunk ids pending publication at most (packs of very small chunks).
const PUBLISH_ENTRIES: usize = 1 << 16;
/// Chunks in one pack at most: trailer, pending set and cache
/// transactions stay small even when chunks compress a thousandfold.
pub const MAX_PACK_ENTRIES: usize = 1 << 16;
/// Chunk entries in one index segment at most (about 7 MB).
pub const MAX_SEGMENT_ENTRIES: usize = 1 << 17;
const MANIFEST_AAD: &[u8] = b"alike manifest v1\0";
const KEY_CHECK_CTX: &[u8] = b"alike key check v1";

/// How to create a store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CreateOptions {
    /// How disks are cut: content-defined chunks (format 2, the default) or
    /// fixed blocks of a power of two from 64 KiB to 4 MiB (format 1).
    pub chunking: Chunking,
    /// zstd level for new blobs; `None` = no compression.
    pub compression_level: Option<i32>,
    /// Passphrase; `None` with `encrypted` needs `key_file`.
    pub passphrase: Option<Vec<u8>>,
    /// Whether to encrypt (the default). Unencrypted only when asked for.
    pub encrypted: bool,
    /// Argon2id cost.
    pub kdf: KdfParams,
    /// Also export the master key to this file.
    pub key_file: Option<PathBuf>,
    /// Target pack size.
    pub pack_size: u64,
    /// Creation time to record, ms since the epoch.
    pub time_ms: i64,
    /// Use this master key instead of a new random one (a vault that shares
    /// its source's key, by explicit choice). Still wrapped by this store's
    /// own passphrase.
    pub master_key: Option<MasterKey>,
    /// Make a store that can hand out write-only keys (format 3,
    /// `docs/format.md` §4.1): data frames are sealed to the store's public
    /// key. Needs encryption and content-defined chunking.
    pub writer_keys: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            chunking: Chunking::default(),
            compression_level: Some(3),
            passphrase: None,
            encrypted: true,
            kdf: KdfParams::default(),
            key_file: None,
            pack_size: DEFAULT_PACK_SIZE,
            time_ms: 0,
            master_key: None,
            writer_keys: false,
        }
    }
}

/// How to open a store.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Passphrase of an encrypted store.
    pub passphrase: Option<Vec<u8>>,
    /// Key file of an encrypted store (instead of a passphrase).
    pub key_file: Option<PathBuf>,
    /// The contents of a key file, instead of its path (a processor gets
    /// them from its orchestrator, not from a file). Wins over `key_file`.
    pub key_file_data: Option<Vec<u8>>,
    /// Where the local index cache lives (default: `$ALIKE_CACHE_DIR`,
    /// `$XDG_CACHE_HOME/alike` or `~/.cache/alike`).
    pub cache_dir: Option<PathBuf>,
}

/// The readable versions (id, manifest), sorted by time, and the damaged ones.
pub type VersionScan = (Vec<(String, Manifest)>, Vec<DamagedVersion>);

/// An object in `versions/` that cannot be read as a version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DamagedVersion {
    /// Its name (the version id it claims).
    pub id: String,
    /// Why it cannot be read.
    pub reason: String,
}

/// Figures about a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Versions.
    pub versions: u64,
    /// Sum over versions of their disks' non-hole bytes.
    pub logical_bytes: u64,
    /// Plaintext bytes of the unique data chunks.
    pub unique_bytes: u64,
    /// Unique chunks (data and maps).
    pub blobs: u64,
    /// Bytes of all objects in the store (packs, index, versions, config, keys).
    pub stored_bytes: u64,
    /// Bytes of packs.
    pub pack_bytes: u64,
    /// Number of packs.
    pub packs: u64,
}

impl StoreStats {
    /// Logical bytes per unique byte: what deduplication saves.
    pub fn dedup_ratio(&self) -> f64 {
        self.logical_bytes as f64 / self.unique_bytes.max(1) as f64
    }
    /// Unique bytes per pack byte: what compression saves.
    pub fn compression_ratio(&self) -> f64 {
        self.unique_bytes as f64 / self.pack_bytes.max(1) as f64
    }
    /// Logical bytes per stored byte: both, and the store's overhead.
    pub fn total_ratio(&self) -> f64 {
        self.logical_bytes as f64 / self.stored_bytes.max(1) as f64
    }
}

/// The schema of `alike stats --json`: the figures and their ratios.
impl serde::Serialize for StoreStats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Json {
            versions: u64,
            logical_bytes: u64,
            unique_bytes: u64,
            blobs: u64,
            stored_bytes: u64,
            pack_bytes: u64,
            packs: u64,
            dedup_ratio: f64,
            compression_ratio: f64,
            total_ratio: f64,
        }
        Json {
            versions: self.versions,
            logical_bytes: self.logical_bytes,
            unique_bytes: self.unique_bytes,
            blobs: self.blobs,
            stored_bytes: self.stored_bytes,
            pack_bytes: self.pack_bytes,
            packs: self.packs,
            dedup_ratio: self.dedup_ratio(),
            compression_ratio: self.compression_ratio(),
            total_ratio: self.total_ratio(),
        }
        .serialize(s)
    }
}

#[derive(Default)]
struct Session {
    current: Option<PackWriter>,
    /// Ids in packs not yet published (being written or finished).
    pending: Pending,
    /// Packs handed to the finishers and not yet claimed by a publisher.
    in_flight: usize,
    finisher: Option<Arc<Finisher>>,
}

/// Ids of the chunks in packs not yet published, kept compact: the open
/// pack's in a hash set (one pack's worth at most, its capacity kept from
/// pack to pack), and each pack handed to the finishers as one sorted array
/// of exactly its ids (32 bytes an id, no hash-table doublings however many
/// packs wait for their segment).
#[derive(Default)]
struct Pending {
    open: HashSet<ChunkId>,
    /// Per pack in flight: its spool file (what [`FinishedPack::path`]
    /// names when it comes back) and its ids, sorted.
    sealed: Vec<(PathBuf, Box<[ChunkId]>)>,
    /// Ids in `sealed`.
    sealed_len: usize,
}

/// The open set's capacity kept between packs (a pack holds ~1–4 Ki
/// chunks of real data): a pack of many tiny chunks may grow it further,
/// but not for the packs after it.
const OPEN_IDS_KEPT: usize = 1 << 12;

impl Pending {
    fn contains(&self, id: &ChunkId) -> bool {
        self.open.contains(id) || self.sealed.iter().any(|(_, ids)| ids.binary_search(id).is_ok())
    }

    fn len(&self) -> usize {
        self.open.len() + self.sealed_len
    }

    /// The open pack was handed to the finishers as `path`.
    fn seal(&mut self, path: PathBuf) {
        let mut ids: Vec<ChunkId> = Vec::with_capacity(self.open.len());
        ids.extend(self.open.drain());
        ids.sort_unstable();
        ids.dedup();
        self.open.shrink_to(OPEN_IDS_KEPT);
        self.sealed_len += ids.len();
        self.sealed.push((path, ids.into_boxed_slice()));
    }

    /// The pack written from spool file `path` is published.
    fn published(&mut self, path: &Path) {
        if let Some(i) = self.sealed.iter().position(|(p, _)| p == path) {
            let (_, ids) = self.sealed.swap_remove(i);
            self.sealed_len -= ids.len();
        }
    }

    fn clear(&mut self) {
        self.open = HashSet::new();
        self.sealed = Vec::new();
        self.sealed_len = 0;
    }
}

/// Writes index segments for `packs` (split at [`MAX_SEGMENT_ENTRIES`]),
/// loading them into `cache` when given; returns their object names.
fn write_segments(
    keys: &Keys,
    backend: &dyn Backend,
    cache: Option<&IndexCache>,
    packs: &[([u8; 32], Vec<PackEntry>)],
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut start = 0;
    while start < packs.len() {
        let mut end = start;
        let mut n = 0;
        while end < packs.len() && (end == start || n + packs[end].1.len() <= MAX_SEGMENT_ENTRIES) {
            n += packs[end].1.len();
            end += 1;
        }
        let part = &packs[start..end];
        let bytes = encode_segment(keys, part)?;
        let key = format!("index/{}", blake3::hash(&bytes).to_hex());
        backend.write(&key, &bytes)?;
        if let Some(cache) = cache {
            cache.insert(&key, part)?;
        }
        debug!(segment = %key, packs = part.len(), entries = n, "index segment written");
        names.push(key);
        start = end;
    }
    Ok(names)
}

/// Threads that finish packs (trailer, fsync, placing the pack in the
/// store: a rename, or an upload to object storage) while the workers fill
/// the next ones. Long-lived, for the store's life, not one per pack:
/// short-lived threads each get their own allocator arena, and memory then
/// grows with the number of packs. Several, so that one slow fsync or
/// upload does not hold the backup up.
struct Finisher {
    tx: Option<mpsc::Sender<PackWriter>>,
    done: Mutex<mpsc::Receiver<Result<FinishedPack>>>,
    handles: Vec<JoinHandle<()>>,
}

/// Finisher threads per store.
const FINISHERS: usize = 3;

impl Finisher {
    fn start(keys: Keys, backend: Arc<dyn Backend>) -> Result<Finisher> {
        let (tx, rx) = mpsc::channel::<PackWriter>();
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, done) = mpsc::channel();
        let mut handles = Vec::with_capacity(FINISHERS);
        for i in 0..FINISHERS {
            let (rx, done_tx, keys, backend) = (rx.clone(), done_tx.clone(), keys.clone(), backend.clone());
            handles.push(alike_core::spawn(&format!("alike-pack-finisher-{i}"), move || {
                loop {
                    // The lock is held only to take the next pack, not while finishing it.
                    let next = rx.locked().recv();
                    let Ok(w) = next else { break };
                    let r = w.finish(&keys).and_then(|p| {
                        if let Err(e) = backend.write_file(&pack_key(&p.id), &p.path) {
                            let _ = std::fs::remove_file(&p.path);
                            return Err(e);
                        }
                        Ok(p)
                    });
                    if done_tx.send(r).is_err() {
                        break;
                    }
                }
            })?);
        }
        Ok(Finisher { tx: Some(tx), done: Mutex::new(done), handles })
    }

    /// Waits for `n` finished packs (whichever finish first).
    fn collect(&self, n: usize) -> (Vec<FinishedPack>, Option<Error>) {
        let done = self.done.locked();
        let mut packs = Vec::with_capacity(n);
        let mut first_err = None;
        for _ in 0..n {
            match done.recv() {
                Ok(Ok(p)) => packs.push(p),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(Error::InvalidArgument("the pack finisher threads stopped".into()));
                    break;
                }
            }
        }
        (packs, first_err)
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        self.tx.take();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Publishes finished packs on a thread of its own: waits for the packs a
/// writer claimed (their fsync or upload), writes their index segment,
/// loads it into the cache and forgets their ids as pending. Before, the
/// worker whose put claimed them did this and every other worker waited
/// for it at the batch's end; now no worker waits for a disk's flush
/// except through the bound below. One thread, so segments are written in
/// the order packs were claimed.
struct Publisher {
    tx: Option<mpsc::Sender<(usize, Arc<Finisher>)>>,
    state: Arc<(Mutex<PublishState>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

/// Claims waiting for the publisher at most (each up to
/// [`PACKS_PER_SEGMENT`] packs): what a writer holds stays bounded while
/// the publisher is behind (a slow fsync or upload).
const PUBLISH_QUEUE: usize = 2;

#[derive(Default)]
struct PublishState {
    /// Claims sent and not yet published.
    queued: usize,
    /// The first failure, handed to the next put or flush.
    error: Option<Error>,
}

impl Publisher {
    fn start(
        keys: Keys,
        backend: Arc<dyn Backend>,
        cache: Arc<IndexCache>,
        session: Arc<Mutex<Session>>,
    ) -> Result<Publisher> {
        let (tx, rx) = mpsc::channel::<(usize, Arc<Finisher>)>();
        let state: Arc<(Mutex<PublishState>, Condvar)> = Arc::default();
        let st = state.clone();
        let handle = alike_core::spawn("alike-index-publisher", move || {
            while let Ok((n, finisher)) = rx.recv() {
                let (packs, first_err) = finisher.collect(n);
                drop(finisher);
                let paths: Vec<PathBuf> = packs.iter().map(|p| p.path.clone()).collect();
                let packs: Vec<([u8; 32], Vec<PackEntry>)> = packs.into_iter().map(|p| (p.id, p.entries)).collect();
                let written = if packs.is_empty() {
                    Ok(())
                } else {
                    write_segments(&keys, &*backend, Some(&cache), &packs).map(|_| ())
                };
                if written.is_ok() {
                    let mut s = session.locked();
                    for p in &paths {
                        s.pending.published(p);
                    }
                }
                let (lock, cv) = &*st;
                let mut g = lock.locked();
                g.queued -= 1;
                if let Some(e) = first_err.map_or(written.err(), Some) {
                    g.error.get_or_insert(e);
                }
                cv.notify_all();
            }
        })?;
        Ok(Publisher { tx: Some(tx), state, handle: Some(handle) })
    }

    /// Queues a claim, first waiting while [`PUBLISH_QUEUE`] are queued.
    /// Returns an earlier claim's failure, if one failed — the claim is
    /// queued all the same: its packs' results must be taken from the
    /// finishers, or a later claim would take them for its own.
    fn submit(&self, n: usize, finisher: Arc<Finisher>) -> Result<()> {
        let (lock, cv) = &*self.state;
        let mut g = lock.locked();
        while g.queued >= PUBLISH_QUEUE && g.error.is_none() {
            g = cv.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let earlier = g.error.take();
        g.queued += 1;
        drop(g);
        let sent = self.tx.as_ref().expect("open until drop").send((n, finisher));
        if sent.is_err() {
            lock.locked().queued -= 1;
            return Err(Error::InvalidArgument("the index publisher thread stopped".into()));
        }
        earlier.map_or(Ok(()), Err)
    }

    /// Waits until every queued claim is published; returns the first
    /// failure since the last one returned.
    fn wait(&self) -> Result<()> {
        let (lock, cv) = &*self.state;
        let mut g = lock.locked();
        while g.queued > 0 {
            g = cv.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        g.error.take().map_or(Ok(()), Err)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// An open store.
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: StoreConfig,
    keys: Keys,
    /// Kept only to create a store that shares this key ([`CreateOptions::master_key`]).
    master: Option<MasterKey>,
    cache: Arc<IndexCache>,
    session: Arc<Mutex<Session>>,
    /// The thread that publishes finished packs (started with the first
    /// pack a session sends to the finishers).
    publisher: Mutex<Option<Arc<Publisher>>>,
    /// Packs condemned by GC, read when a writer begins: never deduplicated against.
    condemned: std::sync::RwLock<HashSet<[u8; 32]>>,
    /// Packs the index knows that the store did not hold when this writer began.
    missing: std::sync::RwLock<HashSet<[u8; 32]>>,
    /// Index segments that could not be read, with why.
    bad_segments: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("location", &self.backend.location()).field("config", &self.config).finish()
    }
}

/// This machine's host name, as recorded in versions, keys and locks.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn key_check(keys: &Keys) -> String {
    keys.hash(KEY_CHECK_CTX).to_hex()
}

/// The default directory for local caches.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ALIKE_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("alike");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("alike");
    }
    std::env::temp_dir().join("alike-cache")
}

impl Repository {
    /// Creates a store in a local directory (created if missing, must be empty).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], I/O errors, [`Error::InvalidArgument`].
    pub fn create_local(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<()> {
        let path = path.as_ref();
        if path.exists() {
            if path.join("config").exists() {
                return Err(Error::AlreadyExists { location: path.display().to_string() });
            }
            if let Some(holds) = folder_contents(path)? {
                return Err(Error::NotEmpty { location: path.display().to_string(), holds });
            }
        }
        std::fs::create_dir_all(path).map_err(crate::error::io(path))?;
        Self::create(Arc::new(LocalBackend::new(path)), opts)
    }

    /// Creates a store on a backend.
    ///
    /// # Errors
    /// As [`Repository::create_local`].
    pub fn create(backend: Arc<dyn Backend>, opts: &CreateOptions) -> Result<()> {
        if backend.exists("config")? {
            return Err(Error::AlreadyExists { location: backend.location() });
        }
        opts.chunking.validate().map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if !(1 << 20..=1 << 30).contains(&opts.pack_size) {
            return Err(Error::InvalidArgument("pack size must be 1 MiB – 1 GiB".into()));
        }
        if let Some(l) = opts.compression_level.filter(|l| !COMPRESSION_LEVELS.contains(l)) {
            return Err(Error::InvalidArgument(format!(
                "zstd level {l}: from {} to {}",
                COMPRESSION_LEVELS.start(),
                COMPRESSION_LEVELS.end()
            )));
        }
        if let Some(kf) = opts.key_file.as_ref().filter(|_| opts.encrypted) {
            // A key file may be the only way into another store: never replace one.
            if kf.symlink_metadata().is_ok() {
                return Err(Error::FileExists { path: kf.clone(), what: "key file" });
            }
        }
        crate::config::check_kdf(&opts.kdf).map_err(Error::InvalidArgument)?;
        if opts.writer_keys && !opts.encrypted {
            return Err(Error::InvalidArgument("write-only keys need an encrypted store".into()));
        }
        if opts.writer_keys && !matches!(opts.chunking, Chunking::Cdc(_)) {
            return Err(Error::InvalidArgument(
                "write-only keys need content-defined chunking (format 3 is format 2 with a public key)".into(),
            ));
        }
        let store_id = random_hex(16)?;
        let mut config = StoreConfig {
            store_id: store_id.clone(),
            created_ms: opts.time_ms,
            block_size: match opts.chunking {
                Chunking::Fixed { block_size } => Some(block_size),
                _ => None,
            },
            compression_level: opts.compression_level,
            encryption: if opts.encrypted { AES_256_GCM } else { NO_ENCRYPTION }.into(),
            pack_size: opts.pack_size,
            key_check: None,
            chunking: match opts.chunking {
                Chunking::Cdc(p) => Some(p),
                _ => None,
            },
            public_key: None,
        };
        let mut key_object = None;
        if opts.encrypted {
            if opts.passphrase.is_none() && opts.key_file.is_none() {
                return Err(Error::InvalidArgument("an encrypted store needs a passphrase or a key file".into()));
            }
            let master = match &opts.master_key {
                Some(m) => m.clone(),
                None => MasterKey::generate()?,
            };
            config.key_check = Some(key_check(&Keys::from_master(&master)));
            if opts.writer_keys {
                config.public_key = Some(hex::encode(alike_core::store_public_key(&master)));
            }
            if let Some(pw) = &opts.passphrase {
                let w = alike_core::wrap_master(&master, pw, opts.kdf, &key_aad(&store_id))?;
                let key = format!("keys/{}", random_hex(8)?);
                backend.write(&key, &KeyObject::new(&w, opts.time_ms, host_name()).encode())?;
                key_object = Some(key);
            }
            if let Some(kf) = &opts.key_file {
                crate::config::write_key_file(kf, &KeyFile::new(&store_id, &master).encode())?;
            }
        }
        // config last: a store exists once its config does. Created only if
        // absent, so of two concurrent creations exactly one succeeds.
        if !backend.write_new("config", &encode_config(&config))? {
            // The loser's key belongs to no store: an orphan key object would
            // make an unencrypted winner look tampered with.
            if let Some(k) = key_object {
                backend.delete(&k)?;
            }
            if let Some(kf) = opts.key_file.as_ref().filter(|_| opts.encrypted) {
                let _ = std::fs::remove_file(kf);
            }
            return Err(Error::AlreadyExists { location: backend.location() });
        }
        info!(location = %backend.location(), store = %store_id, "store created");
        Ok(())
    }

    /// Opens a store in a local directory.
    ///
    /// # Errors
    /// As [`Repository::open`].
    pub fn open_local(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Repository> {
        Self::open(Arc::new(LocalBackend::new(path.as_ref())), opts)
    }

    /// Opens a store: reads its config, unlocks its key, brings the local
    /// index cache up to date.
    ///
    /// # Errors
    /// [`Error::NotAStore`], config errors, [`Error::PassphraseRequired`],
    /// `alike_core::Error::WrongPassphrase`, cache errors.
    pub fn open(backend: Arc<dyn Backend>, opts: &OpenOptions) -> Result<Repository> {
        let config = match backend.read("config") {
            Ok(b) => decode_config(&b)?,
            Err(Error::NotFound { .. }) => return Err(Error::NotAStore { location: backend.location() }),
            Err(e) => return Err(e),
        };
        let (keys, master) = unlock(&*backend, &config, opts)?;
        let dir = opts.cache_dir.clone().unwrap_or_else(default_cache_dir).join(&config.store_id);
        let cache = Arc::new(IndexCache::open(&dir, &config.store_id)?);
        let repo = Repository {
            backend,
            config,
            keys,
            master,
            cache,
            session: Arc::default(),
            publisher: Mutex::new(None),
            condemned: std::sync::RwLock::new(HashSet::new()),
            missing: std::sync::RwLock::new(HashSet::new()),
            bad_segments: Mutex::new(Vec::new()),
        };
        repo.clean_spool();
        repo.sync_cache()?;
        Ok(repo)
    }

    /// Takes a store lock (released when the guard drops).
    ///
    /// # Errors
    /// [`Error::Locked`] (GC against GC); backend errors.
    pub fn lock(&self, kind: crate::LockKind) -> Result<crate::LockGuard> {
        crate::LockGuard::acquire(self.backend.clone(), kind)
    }

    /// Takes a `read` lock on these versions only (a long reader such as an
    /// NBD export): GC keeps them and goes on collecting the rest of the
    /// store; prune keeps them, forget refuses them.
    ///
    /// # Errors
    /// Backend errors.
    pub fn lock_versions(&self, versions: &[String]) -> Result<crate::LockGuard> {
        crate::LockGuard::acquire_versions(self.backend.clone(), versions)
    }

    /// Starts a writer: takes a backup lock, *then* reads GC condemnation
    /// records (so a GC that condemns later sees this lock), adopts orphan
    /// packs of interrupted writers, and brings the cache up to date.
    ///
    /// # Errors
    /// Backend and cache errors.
    pub fn begin_write(&self) -> Result<crate::LockGuard> {
        let lock = self.lock(crate::LockKind::Backup)?;
        let mut avoid = self.condemned_packs()?;
        self.sync_cache()?;
        self.adopt_orphan_packs()?;
        // Packs the index knows that the store no longer has (lost to a
        // disk, deleted by hand): never deduplicate against them, so this
        // backup stores their chunks again and heals what it touches.
        let missing = self.missing_packs()?;
        if !missing.is_empty() {
            warn!(
                packs = missing.len(),
                "packs listed by the index are missing from the store: their chunks are stored again (verify names \
                 the versions that needed them; rebuild-index drops them from the index)"
            );
        }
        avoid.extend(missing.iter().copied());
        *self.missing.write().unwrap_or_else(std::sync::PoisonError::into_inner) = missing;
        *self.condemned.write().unwrap_or_else(std::sync::PoisonError::into_inner) = avoid;
        Ok(lock)
    }

    /// Packs the local index knows that the store does not hold.
    ///
    /// # Errors
    /// Backend and cache errors.
    pub fn missing_packs(&self) -> Result<HashSet<[u8; 32]>> {
        let listed: HashSet<String> = self.backend.list("packs/")?.into_iter().map(|(k, _)| k).collect();
        Ok(self.cache.pack_ids()?.into_iter().filter(|p| !listed.contains(&crate::pack::pack_key(p))).collect())
    }

    /// Whether a version needs a chunk that is not in the store as this
    /// writer found it (in a missing pack, or in no pack): a parent like that
    /// must not lend its unchanged blocks to a new version. Reads the
    /// version's block maps; only called when packs are missing.
    ///
    /// # Errors
    /// Failures to reach the store.
    pub fn needs_missing_data(&self, manifest: &Manifest) -> Result<bool> {
        let missing = self.missing.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if missing.is_empty() {
            return Ok(false);
        }
        let gone = |id: &ChunkId| -> Result<bool> {
            Ok(self.cache.lookup(id)?.is_none_or(|l| missing.contains(&l.frame.container)))
        };
        for d in &manifest.disks {
            for (mi, map_id) in d.maps.iter().enumerate() {
                if gone(map_id)? {
                    return Ok(true);
                }
                let Ok(map) = alike_core::load_window(self, &self.keys, d, mi) else { return Ok(true) };
                for id in map.extents.iter().map(|e| &e.id) {
                    if gone(id)? {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The master key of an encrypted store, to create a store that shares
    /// it by explicit choice ([`CreateOptions::master_key`]); `None` when
    /// unencrypted.
    pub fn master_key(&self) -> Option<&MasterKey> {
        self.master.as_ref()
    }

    /// The working keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether the store was opened with a write-only key: it can add data
    /// and versions, read metadata (manifests, block maps, index), but not
    /// chunk data.
    pub fn is_write_only(&self) -> bool {
        !self.keys.can_read_data()
    }

    /// The bytes of a write-only key file for this store (`docs/format.md`
    /// §4.1), for a processor that gets them over its channel rather than
    /// from a file ([`OpenOptions::key_file_data`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a store without write-only keys (format
    /// 1 or 2) or an unencrypted one; [`alike_core::Error::WriteOnlyKey`]
    /// when the store was itself opened with a write-only key.
    pub fn writer_key_file_bytes(&self) -> Result<Vec<u8>> {
        if self.config.public_key.is_none() {
            return Err(Error::InvalidArgument(format!(
                "store {} was made without write-only keys (format {}): make one with `init --writer-keys` (CreateOptions::writer_keys) and vault into it",
                self.backend.location(),
                self.config.format_version()
            )));
        }
        let Some(master) = &self.master else {
            return Err(alike_core::Error::WriteOnlyKey { what: "exporting a write-only key".into() }.into());
        };
        Ok(crate::config::WriterKeyFile::new(&self.config.store_id, &alike_core::WriterKey::from_master(master))
            .encode())
    }

    /// Writes a write-only key file to `path` (mode 0600; written to a
    /// temporary name, then moved into place; an existing file is never
    /// replaced).
    ///
    /// # Errors
    /// As [`Repository::writer_key_file_bytes`]; [`Error::FileExists`]; I/O.
    pub fn export_writer_key(&self, path: &Path) -> Result<()> {
        let bytes = self.writer_key_file_bytes()?;
        crate::config::write_key_file_atomic(path, &bytes)
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The local index cache.
    pub fn cache(&self) -> &IndexCache {
        &self.cache
    }

    fn clean_spool(&self) {
        // Spool files of writers that died; a live writer's files are younger than a day.
        let Ok(dir) = self.backend.spool_dir() else { return };
        let Ok(rd) = std::fs::read_dir(&dir) else { return };
        for e in rd.flatten() {
            let old = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a.as_secs() > 86_400);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Loads index segments the cache has not seen; reloads everything if a
    /// segment it knew has disappeared.
    pub fn sync_cache(&self) -> Result<()> {
        // A GC replaces a segment by writing its successor first and deleting
        // it after: one listed a moment ago may be gone when read. A fresh
        // listing then holds its successor.
        let mut attempt = 0;
        loop {
            match self.sync_cache_once() {
                Err(Error::NotFound { object }) if object.starts_with("index/") && attempt < 8 => {
                    debug!(segment = %object, "index segment replaced while loading: listing again");
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    fn sync_cache_once(&self) -> Result<()> {
        let listed: Vec<String> = self.backend.list("index/")?.into_iter().map(|(k, _)| k).collect();
        let mut known = self.cache.segments()?;
        let listed_set: HashSet<&String> = listed.iter().collect();
        if known.iter().any(|k| !listed_set.contains(k)) {
            info!("index segments were removed: rebuilding the local cache");
            self.cache.clear()?;
            known.clear();
        }
        for key in listed.iter().filter(|k| !known.contains(*k)) {
            let decoded = self.backend.read(key).and_then(|bytes| decode_segment(&self.keys, &bytes, key));
            match decoded {
                Ok(packs) => {
                    self.cache.insert(key, &packs)?;
                    debug!(segment = %key, packs = packs.len(), "index segment loaded");
                }
                // A damaged segment must not lock the user out: its packs' trailers
                // hold the same facts (`rebuild_index`), and verify reports the damage.
                Err(e @ (Error::Corrupt { .. } | Error::Truncated { .. } | Error::BadMagic { .. })) => {
                    warn!(segment = %key, error = %e, "index segment unreadable: skipped (run rebuild-index)");
                    self.bad_segments.locked().push((key.clone(), e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Index segments found unreadable (skipped) since the store was opened.
    pub fn bad_segments(&self) -> Vec<(String, String)> {
        self.bad_segments.locked().clone()
    }

    /// Writes index segments listing `packs`, at most [`MAX_SEGMENT_ENTRIES`]
    /// entries each (a pack's entries are never split), and loads them into
    /// the cache when `load`. Returns their keys.
    ///
    /// # Errors
    /// Backend and cache errors.
    pub fn write_segments(&self, packs: &[([u8; 32], Vec<PackEntry>)], load: bool) -> Result<Vec<String>> {
        write_segments(&self.keys, &*self.backend, load.then_some(&*self.cache), packs)
    }

    /// Hands a full pack to the finisher threads; its ids move from the
    /// open set to a sealed array of their own.
    fn send_to_finisher(&self, s: &mut Session, w: PackWriter) -> Result<()> {
        s.pending.seal(w.path().to_owned());
        if s.finisher.is_none() {
            s.finisher = Some(Arc::new(Finisher::start(self.keys.clone(), self.backend.clone())?));
        }
        let Some(f) = s.finisher.as_ref() else { unreachable!("set above") };
        f.tx.as_ref()
            .expect("open until drop")
            .send(w)
            .map_err(|_| Error::InvalidArgument("the pack finisher threads stopped".into()))?;
        s.in_flight += 1;
        Ok(())
    }

    /// Claims the packs in flight for a publisher (called with the session lock).
    fn claim(s: &mut Session) -> Option<(usize, Arc<Finisher>)> {
        let n = std::mem::take(&mut s.in_flight);
        s.finisher.clone().filter(|_| n > 0).map(|f| (n, f))
    }

    /// The session's publisher, started at first use.
    fn publisher(&self) -> Result<Arc<Publisher>> {
        let mut p = self.publisher.locked();
        if let Some(p) = p.as_ref() {
            return Ok(p.clone());
        }
        let started = Arc::new(Publisher::start(
            self.keys.clone(),
            self.backend.clone(),
            self.cache.clone(),
            self.session.clone(),
        )?);
        *p = Some(started.clone());
        Ok(started)
    }

    /// Hands `n` packs in flight to the publisher (see [`Publisher`]).
    fn publish(&self, claimed: Option<(usize, Arc<Finisher>)>) -> Result<()> {
        let Some((n, finisher)) = claimed else { return Ok(()) };
        self.publisher()?.submit(n, finisher)
    }

    /// Adds a frame to the open pack: its place is reserved under the
    /// session lock, and its bytes are copied into the spool after the lock
    /// is released, so puts on many threads write side by side (the pack's
    /// finisher waits for them).
    fn put_inner(&self, frame: &StoredFrame) -> Result<()> {
        let (slot, claimed) = {
            let mut guard = self.session.locked();
            let s: &mut Session = &mut guard;
            if frame.chunks.iter().all(|c| s.pending.contains(&c.id)) {
                return Ok(());
            }
            if s.current.is_none() {
                s.current = Some(PackWriter::new(&self.backend.spool_dir()?)?);
            }
            let w = s.current.as_mut().expect("just set");
            let slot = w.reserve(frame)?;
            s.pending.open.extend(frame.chunks.iter().map(|c| c.id));
            if w.len() < self.config.pack_size && w.entry_count() < MAX_PACK_ENTRIES {
                (slot, None)
            } else {
                let w = s.current.take().expect("present");
                self.send_to_finisher(s, w)?;
                if s.in_flight < PACKS_PER_SEGMENT && s.pending.len() < PUBLISH_ENTRIES {
                    (slot, None)
                } else {
                    (slot, Self::claim(s))
                }
            }
        };
        let written = slot.write(&frame.bytes);
        let published = self.publish(claimed);
        written.and(published)
    }

    /// Sends the open pack to the finishers and publishes every pack in
    /// flight: returns once the publisher has written every segment queued
    /// (by this call or by earlier puts), or with the first failure.
    fn flush_inner(&self) -> Result<()> {
        let claimed = {
            let mut guard = self.session.locked();
            let s: &mut Session = &mut guard;
            if let Some(w) = s.current.take() {
                if w.is_empty() {
                    w.abandon();
                } else {
                    self.send_to_finisher(s, w)?;
                }
            }
            Self::claim(s)
        };
        let submitted = self.publish(claimed);
        // Cloned out first: the wait must not hold the lock a put needs.
        let publisher = self.publisher.locked().clone();
        let published = publisher.map_or(Ok(()), |p| p.wait());
        submitted.and(published)
    }

    /// Drops what this session wrote but did not publish (after a failed or
    /// cancelled backup). Finished packs already placed stay, unindexed, for
    /// GC or `rebuild_index`.
    pub fn abort_session(&self) {
        let claimed = {
            let mut s = self.session.locked();
            if let Some(w) = s.current.take() {
                w.abandon();
            }
            Self::claim(&mut s)
        };
        // What was queued before is published (its packs are whole); a
        // failure there no longer matters to a session being dropped.
        let publisher = self.publisher.locked().clone();
        if let Some(p) = publisher {
            let _ = p.wait();
        }
        if let Some((n, f)) = claimed {
            let _ = f.collect(n);
        }
        self.session.locked().pending.clear();
    }

    fn read_frame_inner(&self, f: &FrameRef) -> Result<Vec<u8>> {
        self.backend.read_range(&pack_key(&f.container), u64::from(f.offset), u64::from(f.stored_len))
    }

    /// Writes a version manifest; returns its id.
    pub fn write_manifest(&self, m: &Manifest) -> Result<String> {
        let out = encode_manifest(&self.keys, m)?;
        let id = blake3::hash(&out).to_hex().to_string();
        self.backend.write(&format!("versions/{id}"), &out)?;
        Ok(id)
    }

    /// Reads one version manifest by full id.
    ///
    /// # Errors
    /// [`Error::NotFound`], header errors, [`Error::Corrupt`].
    pub fn read_manifest(&self, id: &str) -> Result<Manifest> {
        let key = format!("versions/{id}");
        let bytes = self.backend.read(&key)?;
        if blake3::hash(&bytes).to_hex().as_str() != id {
            return Err(Error::Corrupt { object: key, reason: "content does not match its name".into() });
        }
        decode_manifest(&self.keys, &bytes, &key)
    }

    /// Ids of all versions (unordered).
    pub fn version_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .backend
            .list("versions/")?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix("versions/").map(str::to_string))
            .collect())
    }

    /// All versions, oldest first. A version removed (by a concurrent prune)
    /// between the listing and its read is simply not listed.
    pub fn versions(&self) -> Result<Vec<(String, Manifest)>> {
        Ok(self.scan_versions()?.0)
    }

    /// Every version, sorted by time, and apart the objects in `versions/`
    /// that cannot be read as one (bit rot, truncation, an old manifest
    /// copied over a new one, a stray file): one damaged object never stops
    /// the store — each is named, with why, and a warning is logged.
    ///
    /// # Errors
    /// Failures to reach the store (I/O, network): those are not damage.
    pub fn scan_versions(&self) -> Result<VersionScan> {
        let mut v = Vec::new();
        let mut damaged = Vec::new();
        for id in self.version_ids()? {
            match self.read_manifest(&id) {
                Ok(m) => v.push((id, m)),
                Err(Error::NotFound { .. }) => {}
                Err(e) if matches!(e.kind(), ErrorKind::Corruption | ErrorKind::UnsupportedVersion) => {
                    warn!(version = %id, error = %e, "damaged version manifest: skipped (verify names it; `forget` removes it)");
                    damaged.push(DamagedVersion { id, reason: e.to_string() });
                }
                Err(e) => return Err(e),
            }
        }
        v.sort_by(|a, b| a.1.time_ms.cmp(&b.1.time_ms).then(a.0.cmp(&b.0)));
        damaged.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((v, damaged))
    }

    /// Figures about the store.
    pub fn stats(&self) -> Result<StoreStats> {
        let versions = self.versions()?;
        let logical_bytes = versions.iter().flat_map(|(_, m)| &m.disks).map(|d| d.data_bytes).sum();
        let (blobs, unique_bytes) = self.cache.totals()?;
        let objects = self.backend.list("")?;
        let stored_bytes = objects.iter().filter(|(k, _)| !k.starts_with("tmp/")).map(|(_, n)| n).sum();
        let packs: Vec<_> = objects.iter().filter(|(k, _)| k.starts_with("packs/")).collect();
        Ok(StoreStats {
            versions: versions.len() as u64,
            logical_bytes,
            unique_bytes,
            blobs,
            stored_bytes,
            pack_bytes: packs.iter().map(|(_, n)| n).sum(),
            packs: packs.len() as u64,
        })
    }

    /// Rebuilds the index from pack trailers: writes one segment covering
    /// every readable pack, then removes the old segments and reloads the
    /// cache. Returns (packs indexed, packs unreadable with their errors).
    ///
    /// # Errors
    /// Backend errors; damaged packs are reported, not fatal.
    pub fn rebuild_index(&self) -> Result<(usize, Vec<(String, Error)>)> {
        self.rebuild_index_with(&|_, _| Ok(()))
    }

    /// [`Repository::rebuild_index`] with progress: `progress(packs read, packs in all)`;
    /// an `Err` from it (cancellation) stops before the index is touched.
    ///
    /// # Errors
    /// As [`Repository::rebuild_index`], and whatever `progress` returns.
    pub fn rebuild_index_with(
        &self,
        progress: &dyn Fn(u64, u64) -> Result<()>,
    ) -> Result<(usize, Vec<(String, Error)>)> {
        let packs = self.backend.list("packs/")?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (i, (key, _)) in packs.iter().enumerate() {
            progress(i as u64, packs.len() as u64)?;
            let Some(id) = key.rsplit('/').next().and_then(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?).ok()) else {
                continue;
            };
            match read_trailer(&*self.backend, key, &self.keys) {
                Ok(entries) => good.push((id, entries)),
                Err(e) => {
                    warn!(pack = %key, error = %e, "pack unreadable while rebuilding the index");
                    bad.push((key.clone(), e));
                }
            }
        }
        progress(packs.len() as u64, packs.len() as u64)?;
        let old: Vec<String> = self.backend.list("index/")?.into_iter().map(|(k, _)| k).collect();
        let new: HashSet<String> = self.write_segments(&good, false)?.into_iter().collect();
        for k in old.iter().filter(|k| !new.contains(*k)) {
            self.backend.delete(k)?;
        }
        self.cache.clear()?;
        self.bad_segments.locked().clear();
        self.sync_cache()?;
        Ok((good.len(), bad))
    }
}

fn unlock(backend: &dyn Backend, config: &StoreConfig, opts: &OpenOptions) -> Result<(Keys, Option<MasterKey>)> {
    let key_objects = backend.list("keys/")?;
    if !config.encrypted() {
        if !key_objects.is_empty() {
            return Err(Error::Corrupt { object: "config".into(), reason: "it says unencrypted, but the store holds keys (refusing to write plaintext into an encrypted store)".into() });
        }
        return Ok((Keys::unencrypted(), None));
    }
    let check = config.key_check.as_deref().ok_or_else(|| Error::Corrupt {
        object: "config".into(),
        reason: "encrypted store without key_check".into(),
    })?;
    let key_file = match (&opts.key_file_data, &opts.key_file) {
        (Some(data), _) => {
            let obj = "the key file given".to_string();
            Some((AnyKeyFile::decode(data, &obj)?, obj))
        }
        (None, Some(kf)) => Some((crate::config::read_key_file(kf)?, kf.display().to_string())),
        (None, None) => None,
    };
    if let Some((f, obj)) = key_file {
        if f.store_id() != config.store_id {
            return Err(Error::InvalidArgument(format!(
                "key file {obj} belongs to store {}, not {}",
                f.store_id(),
                config.store_id
            )));
        }
        let f = match f {
            AnyKeyFile::Full(f) => f,
            AnyKeyFile::Writer(w) => return writer_keys(config, &w.key(&obj)?, &obj, check),
        };
        let master = f.master(&obj)?;
        let keys = Keys::from_master(&master);
        if key_check(&keys) != check {
            return Err(alike_core::Error::WrongPassphrase { key: obj }.into());
        }
        return Ok((full_keys(config, &master)?, Some(master)));
    }
    let Some(pw) = &opts.passphrase else {
        return Err(Error::PassphraseRequired { location: backend.location() });
    };
    if key_objects.is_empty() {
        return Err(Error::Corrupt {
            object: "keys/".into(),
            reason: "an encrypted store without key objects (open it with its key file)".into(),
        });
    }
    let aad = key_aad(&config.store_id);
    // Every key object is tried: one damaged or foreign object must not lock
    // the user out while another one opens the store. The bad ones are named.
    let mut bad: Vec<(String, Error)> = Vec::new();
    let mut tried = Vec::new();
    for (key, size) in &key_objects {
        match try_key_object(backend, config, key, *size, pw, &aad, check) {
            Ok(Some(keys)) => {
                for (k, e) in &bad {
                    warn!(key = %k, error = %e, "unusable key object skipped (another one opened the store)");
                }
                return Ok(keys);
            }
            Ok(None) => tried.push(key.as_str()),
            Err(e) if matches!(e.kind(), ErrorKind::Corruption | ErrorKind::UnsupportedVersion) => {
                bad.push((key.clone(), e));
            }
            Err(e) => return Err(e),
        }
    }
    let bad_text = bad.iter().map(|(k, e)| format!("{k}: {e}")).collect::<Vec<_>>().join("; ");
    if tried.is_empty() {
        if bad.len() == 1 {
            return Err(bad.remove(0).1);
        }
        return Err(Error::Corrupt { object: "keys/".into(), reason: format!("no usable key object ({bad_text})") });
    }
    let mut key = tried.join(", ");
    if !bad.is_empty() {
        key.push_str(&format!(" (unusable and skipped: {bad_text})"));
    }
    Err(alike_core::Error::WrongPassphrase { key }.into())
}

/// A key object larger than this is not one (they are about 400 bytes).
const MAX_KEY_OBJECT: u64 = 64 << 10;

/// Unwraps one key object with `pw`: `Some` keys when it opens the store,
/// `None` when the passphrase is not this object's.
fn try_key_object(
    backend: &dyn Backend,
    config: &StoreConfig,
    key: &str,
    size: u64,
    pw: &[u8],
    aad: &[u8],
    check: &str,
) -> Result<Option<(Keys, Option<MasterKey>)>> {
    if size > MAX_KEY_OBJECT {
        return Err(Error::Corrupt {
            object: key.into(),
            reason: format!("{size} bytes, more than a key object's {MAX_KEY_OBJECT} at most"),
        });
    }
    let w = KeyObject::decode(&backend.read(key)?, key)?.wrapped(key)?;
    let m = alike_core::unwrap_master(&w, pw, aad)
        .map_err(|e| Error::Corrupt { object: key.into(), reason: e.to_string() })?;
    let Some(m) = m else { return Ok(None) };
    let keys = Keys::from_master(&m);
    if key_check(&keys) != check {
        return Err(Error::Corrupt {
            object: key.into(),
            reason: "unwraps to a key that does not match the store's key check".into(),
        });
    }
    Ok(Some((full_keys(config, &m)?, Some(m))))
}

/// The working keys of the full (master) key: in a format 3 store data
/// frames are sealed to the store's public key, which must be the one the
/// master key derives (a config whose key was swapped would have every
/// writer seal data to someone else).
fn full_keys(config: &StoreConfig, master: &MasterKey) -> Result<Keys> {
    match config.public_key() {
        None => Ok(Keys::from_master(master)),
        Some(pk) if pk == alike_core::store_public_key(master) => Ok(Keys::from_master_sealing_data(master)),
        Some(_) => Err(Error::Corrupt {
            object: "config".into(),
            reason: "its public_key is not the store key's (refusing to seal data to a foreign key)".into(),
        }),
    }
}

/// The working keys of a write-only key file `obj`: it must be this
/// store's (its key check) and carry the store's public key.
fn writer_keys(
    config: &StoreConfig,
    w: &alike_core::WriterKey,
    obj: &str,
    check: &str,
) -> Result<(Keys, Option<MasterKey>)> {
    let keys = Keys::from_writer(w);
    if key_check(&keys) != check {
        return Err(alike_core::Error::WrongPassphrase { key: obj.into() }.into());
    }
    match config.public_key() {
        None => Err(Error::InvalidArgument(format!(
            "{obj} is a write-only key, but the store was made without write-only keys (format {})",
            config.format_version()
        ))),
        Some(pk) if pk == w.public_key => Ok((keys, None)),
        Some(_) => Err(Error::Corrupt {
            object: "config".into(),
            reason: format!("its public_key differs from the one in {obj} (refusing to seal data to a foreign key)"),
        }),
    }
}

/// `None` for an empty folder; else a few of the names in it and how many
/// there are, for the error of a `create` in a folder in use.
fn folder_contents(path: &Path) -> Result<Option<String>> {
    let mut names = Vec::new();
    let mut count = 0usize;
    for e in std::fs::read_dir(path).map_err(crate::error::io(path))? {
        let e = e.map_err(crate::error::io(path))?;
        count += 1;
        if names.len() < 5 {
            let dir = e.file_type().is_ok_and(|t| t.is_dir());
            names.push(format!("{}{}", e.file_name().to_string_lossy(), if dir { "/" } else { "" }));
        }
    }
    if count == 0 {
        return Ok(None);
    }
    names.sort();
    let mut holds = names.join(", ");
    if count > names.len() {
        holds.push_str(&format!(" and {} more", count - names.len()));
    }
    Ok(Some(format!("{count} entr{} ({holds})", if count == 1 { "y" } else { "ies" })))
}

/// Encodes a manifest object: header ‖ seal(zstd-3(JSON)).
///
/// # Errors
/// Compression or sealing failures.
pub fn encode_manifest(keys: &Keys, m: &Manifest) -> Result<Vec<u8>> {
    let z = zstd::bulk::compress(&m.to_json(), 3)
        .map_err(|e| Error::InvalidArgument(format!("compressing manifest: {e}")))?;
    let mut out = header_v(ObjectKind::Manifest, m.schema).to_vec();
    out.extend_from_slice(&keys.seal(MANIFEST_AAD, &z)?);
    Ok(out)
}

/// Decodes a manifest object.
///
/// # Errors
/// Header errors, [`Error::Corrupt`] naming `object`.
pub fn decode_manifest(keys: &Keys, bytes: &[u8], object: &str) -> Result<Manifest> {
    let (version, sealed) = check_header_version(bytes, ObjectKind::Manifest, object)?;
    let z = keys.open(MANIFEST_AAD, sealed).map_err(|r| Error::Corrupt { object: object.into(), reason: r.into() })?;
    let json = zstd::bulk::decompress(&z, 64 << 20)
        .map_err(|e| Error::Corrupt { object: object.into(), reason: format!("zstd: {e}") })?;
    let m = Manifest::from_json(&json, object)?;
    if m.schema != version {
        return Err(Error::Corrupt {
            object: object.into(),
            reason: format!("schema {} in a format {version} manifest", m.schema),
        });
    }
    Ok(m)
}

impl ChunkStore for Repository {
    fn contains(&self, id: &ChunkId) -> alike_core::Result<bool> {
        if self.session.locked().pending.contains(id) {
            return Ok(true);
        }
        Ok(match self.cache.lookup(id)? {
            // A chunk in a condemned pack may be deleted soon: store it again.
            Some(loc) => !self.condemned.read().expect("lock").contains(&loc.frame.container),
            None => false,
        })
    }
    fn put(&self, frame: StoredFrame) -> alike_core::Result<()> {
        Ok(self.put_inner(&frame)?)
    }
    fn locate(&self, id: &ChunkId) -> alike_core::Result<Option<ChunkLocation>> {
        Ok(self.cache.lookup(id)?)
    }
    fn contains_many(&self, ids: &[ChunkId]) -> alike_core::Result<Vec<bool>> {
        let mut out = vec![false; ids.len()];
        let mut ask = Vec::with_capacity(ids.len());
        {
            let s = self.session.locked();
            for (i, id) in ids.iter().enumerate() {
                if s.pending.contains(id) {
                    out[i] = true;
                } else {
                    ask.push(i);
                }
            }
        }
        let asked: Vec<ChunkId> = ask.iter().map(|&i| ids[i]).collect();
        let found = self.cache.lookup_many(&asked)?;
        let condemned = self.condemned.read().expect("lock");
        for (i, loc) in ask.into_iter().zip(found) {
            // A chunk in a condemned pack may be deleted soon: store it again.
            out[i] = loc.is_some_and(|l| !condemned.contains(&l.frame.container));
        }
        Ok(out)
    }
    fn locate_many(&self, ids: &[ChunkId]) -> alike_core::Result<Vec<Option<ChunkLocation>>> {
        Ok(self.cache.lookup_many(ids)?)
    }
    fn read_frame(&self, frame: &FrameRef) -> alike_core::Result<Vec<u8>> {
        Ok(self.read_frame_inner(frame)?)
    }
    fn flush(&self) -> alike_core::Result<()> {
        Ok(self.flush_inner()?)
    }
    fn commit_version(&self, manifest: &Manifest) -> alike_core::Result<String> {
        Ok(self.write_manifest(manifest)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ChunkId {
        ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    #[test]
    fn pending_ids_are_found_until_their_pack_is_published() {
        let mut p = Pending::default();
        p.open.extend((0..100).map(id));
        p.seal(PathBuf::from("a"));
        // An id in two packs (a frame re-put with some of its chunks new).
        p.open.extend((90..250).map(id));
        assert!(p.contains(&id(120)) && p.contains(&id(5)));
        p.seal(PathBuf::from("b"));
        p.open.extend((1000..1010).map(id));
        assert_eq!(p.len(), 100 + 160 + 10);
        assert!((0..250).chain(1000..1010).all(|n| p.contains(&id(n))));
        assert!(!p.contains(&id(250)) && !p.contains(&id(999)));
        p.published(Path::new("a"));
        assert!(!p.contains(&id(5)) && p.contains(&id(95)) && p.contains(&id(200)));
        assert_eq!(p.len(), 160 + 10);
        // A path that is not pending (published already) changes nothing.
        p.published(Path::new("a"));
        assert_eq!(p.len(), 170);
        p.published(Path::new("b"));
        assert!(!p.contains(&id(95)) && p.contains(&id(1005)));
        assert_eq!(p.len(), 10);
        p.clear();
        assert!(!p.contains(&id(1005)) && p.len() == 0);
    }

    #[test]
    fn a_large_pack_does_not_keep_a_large_open_set() {
        let mut p = Pending::default();
        p.open.extend((0..60_000).map(id));
        p.seal(PathBuf::from("big"));
        assert!(p.open.capacity() < 2 * OPEN_IDS_KEPT, "{}", p.open.capacity());
        assert!(p.contains(&id(59_999)));
    }
}
