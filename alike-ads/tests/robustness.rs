//! Untrusted bytes never panic a decoder; a full disk fails a backup cleanly.
#![allow(missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alike_ads::{
    Backend, CreateOptions, KeyFile, KeyObject, LocalBackend, MemoryBackend, ObjectKind, OpenOptions, Repository,
    decode_config, decode_manifest, decode_segment, header_v, read_trailer,
};
use alike_core::backup::{BackupJob, EngineParams};
use alike_core::{ExtentMap, Keys, MasterKey, MemSource, RunOptions, VmInfo};
use proptest::prelude::*;

fn keys() -> [Keys; 2] {
    [Keys::unencrypted(), Keys::from_master(&MasterKey([5; 32]))]
}

fn with_valid_header(kind: &[u8; 2], mut body: Vec<u8>) -> Vec<u8> {
    let mut v = vec![0x89, b'A', b'L', b'K', kind[0], kind[1], b'\r', b'\n', 1, 0, 0, 0];
    v.append(&mut body);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn decoders_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600), raw: bool) {
        for k in keys() {
            for kind in [b"IX", b"MF", b"CF", b"KY", b"KF"] {
                let b = if raw { body.clone() } else { with_valid_header(kind, body.clone()) };
                let _ = decode_segment(&k, &b, "fuzz");
                let _ = decode_manifest(&k, &b, "fuzz");
                let _ = decode_config(&b);
                let _ = KeyObject::decode(&b, "fuzz");
                let _ = KeyFile::decode(&b, "fuzz");
            }
        }
    }

    #[test]
    fn format2_objects_never_panic(
        edits in proptest::collection::vec((any::<u16>(), 0u8..8, proptest::collection::vec(any::<u8>(), 0..8)), 1..4),
        manifest: bool,
        map in proptest::collection::vec(any::<u8>(), 0..300),
        window: u32,
        max: u32,
    ) {
        // A golden v2 config or schema-2 manifest body, edited, in valid
        // envelopes of both header versions (as fuzz/fuzz_targets/format2.rs).
        let mut json = golden_v2_body(manifest);
        for (at, del, ins) in edits {
            let at = usize::from(at) % (json.len() + 1);
            let end = (at + usize::from(del)).min(json.len());
            json.splice(at..end, ins);
        }
        for v in [1, 2] {
            let mut c = header_v(ObjectKind::Config, v).to_vec();
            c.extend_from_slice(&json);
            let sum = blake3::hash(&c);
            c.extend_from_slice(sum.as_bytes());
            if let Ok(c) = decode_config(&c) {
                prop_assert_eq!(c.format_version(), v);
            }
            let mut m = header_v(ObjectKind::Manifest, v).to_vec();
            m.extend_from_slice(&zstd::bulk::compress(&json, 1).unwrap());
            if let Ok(m) = decode_manifest(&Keys::unencrypted(), &m, "fuzz") {
                prop_assert_eq!(m.schema, v);
            }
        }
        for (w, x) in [(window, max), (window % 40, max % 20)] {
            if let Ok(m) = ExtentMap::decode(&map, w, x, "fuzz") {
                prop_assert_eq!(m.encode(), map.clone());
            }
        }
    }

    #[test]
    fn pack_trailers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400), tlen in 0u32..500, count in 0u32..20) {
        let be = MemoryBackend::new();
        let mut p = with_valid_header(b"PK", vec![0; 16]);
        p.extend_from_slice(&body);
        p.extend_from_slice(&tlen.to_le_bytes());
        p.extend_from_slice(&count.to_le_bytes());
        p.extend_from_slice(&[0x89, b'A', b'L', b'K', b'P', b'K', b'\r', b'\n']);
        be.write("packs/aa/x", &p).unwrap();
        for k in keys() {
            let _ = read_trailer(&be, "packs/aa/x", &k);
        }
    }
}

/// The JSON body of the golden v2 config, or of its schema-2 manifest.
fn golden_v2_body(manifest: bool) -> Vec<u8> {
    static G: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let g = G.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/golden-v2.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    });
    if manifest {
        g["manifest_unencrypted"]["json"].to_string().into_bytes()
    } else {
        let c = hex::decode(g["config"]["bytes"].as_str().unwrap()).unwrap();
        c[12..c.len() - 32].to_vec()
    }
}

type ReadHook = Box<dyn Fn(&str) -> alike_ads::Result<()> + Send + Sync>;
type WriteHook = Box<dyn Fn(&str, u64) -> alike_ads::Result<()> + Send + Sync>;
type ListHook = Box<dyn Fn(&str) + Send + Sync>;
type OnceHook = Box<dyn FnOnce() + Send>;

/// A local backend with faults injected by hooks: before a read, before a
/// write or delete (with the bytes about to be written), after a listing.
/// One decorator for every fault these tests need (a full disk, an outage,
/// a write-once bucket, a backup landing mid-listing).
struct Hooked {
    inner: LocalBackend,
    read: Option<ReadHook>,
    write: Option<WriteHook>,
    list: Option<ListHook>,
}

impl Hooked {
    fn new(root: &Path) -> Hooked {
        Hooked { inner: LocalBackend::new(root), read: None, write: None, list: None }
    }
    fn before_read(&self, key: &str) -> alike_ads::Result<()> {
        self.read.as_ref().map_or(Ok(()), |h| h(key))
    }
    fn before_write(&self, key: &str, n: u64) -> alike_ads::Result<()> {
        self.write.as_ref().map_or(Ok(()), |h| h(key, n))
    }
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked").field("inner", &self.inner).finish_non_exhaustive()
    }
}

#[deny(clippy::missing_trait_methods)]
impl Backend for Hooked {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn read(&self, key: &str) -> alike_ads::Result<Vec<u8>> {
        self.before_read(key)?;
        self.inner.read(key)
    }
    fn read_range(&self, key: &str, offset: u64, len: u64) -> alike_ads::Result<Vec<u8>> {
        self.before_read(key)?;
        self.inner.read_range(key, offset, len)
    }
    fn read_tail(&self, key: &str, len: u64) -> alike_ads::Result<(Vec<u8>, u64)> {
        self.before_read(key)?;
        self.inner.read_tail(key, len)
    }
    fn write(&self, key: &str, data: &[u8]) -> alike_ads::Result<()> {
        self.before_write(key, data.len() as u64)?;
        self.inner.write(key, data)
    }
    fn write_new(&self, key: &str, data: &[u8]) -> alike_ads::Result<bool> {
        self.before_write(key, data.len() as u64)?;
        self.inner.write_new(key, data)
    }
    fn write_file(&self, key: &str, local: &Path) -> alike_ads::Result<()> {
        let n = std::fs::metadata(local).map(|m| m.len()).unwrap_or(0);
        if let Err(e) = self.before_write(key, n) {
            let _ = std::fs::remove_file(local);
            return Err(e);
        }
        self.inner.write_file(key, local)
    }
    fn list(&self, prefix: &str) -> alike_ads::Result<Vec<(String, u64)>> {
        let listed = self.inner.list(prefix)?;
        if let Some(h) = &self.list {
            h(prefix);
        }
        Ok(listed)
    }
    fn exists(&self, key: &str) -> alike_ads::Result<bool> {
        self.inner.exists(key)
    }
    fn delete(&self, key: &str) -> alike_ads::Result<()> {
        self.before_write(key, 0)?;
        self.inner.delete(key)
    }
    fn spool_dir(&self) -> alike_ads::Result<std::path::PathBuf> {
        self.inner.spool_dir()
    }
}

/// An unencrypted local store in a fresh folder (packs of `pack_size` when
/// given): the folder and the store's root.
fn local_store(pack_size: Option<u64>) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut c = CreateOptions::default();
    c.encrypted = false;
    if let Some(n) = pack_size {
        c.pack_size = n;
    }
    Repository::create_local(&root, &c).unwrap();
    (dir, root)
}

/// Open options with the local cache in `dir/name`.
fn cache_in(dir: &Path, name: &str) -> OpenOptions {
    let mut o = OpenOptions::default();
    o.cache_dir = Some(dir.join(name));
    o
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    alike_testing::Rng::new(seed).noise(n)
}

#[test]
fn a_full_disk_fails_the_backup_and_keeps_what_was_stored() {
    let (dir, root) = local_store(Some(1 << 20));
    let o = cache_in(dir.path(), "cache");
    // A disk that fills after `budget` bytes.
    let budget = Arc::new(AtomicU64::new(u64::MAX));
    let b2 = budget.clone();
    let spool = root.join("tmp");
    let mut hooked = Hooked::new(&root);
    hooked.write = Some(Box::new(move |_, n| {
        if n > b2.load(Ordering::SeqCst) {
            return Err(alike_ads::Error::Io { path: spool.clone(), source: std::io::Error::from_raw_os_error(28) });
        }
        b2.fetch_sub(n, Ordering::SeqCst);
        Ok(())
    }));
    let be = Arc::new(hooked);
    let repo = Repository::open(be.clone(), &o).unwrap();
    let params = EngineParams::new(65536);
    let run = RunOptions::default();
    let first = MemSource { label: "a".into(), data: noise(3 << 20, 1) };
    let job = |vm: &str, d: &'static MemSource| BackupJob {
        vm: VmInfo::named(vm),
        disks: vec![d],
        parent: None,
        time_ms: 1,
        host: None,
        origin: None,
        no_parent_reason: None,
    };
    let first: &'static MemSource = Box::leak(Box::new(first));
    let (id, m) = alike_core::backup::backup(&repo, repo.keys(), &params, job("a", first), &run).unwrap();

    budget.store(1_500_000, Ordering::SeqCst);
    let second: &'static MemSource = Box::leak(Box::new(MemSource { label: "b".into(), data: noise(6 << 20, 2) }));
    let e = alike_core::backup::backup(&repo, repo.keys(), &params, job("b", second), &run).unwrap_err();
    repo.abort_session();
    let msg = e.to_string();
    assert!(msg.contains("No space left on device"), "{msg}");
    assert_eq!(repo.version_ids().unwrap(), vec![id.clone()], "no version for the failed backup");
    // What was stored before still restores.
    let out = dir.path().join("out.img");
    let target = alike_core::RawFileTarget::create(&out).unwrap();
    alike_core::restore::restore_disk(&repo, repo.keys(), &m, 0, &target, &run).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), first.data);
    let spool: Vec<_> = std::fs::read_dir(root.join("tmp")).unwrap().collect();
    assert!(spool.is_empty(), "spool files left: {spool:?}");
}

/// Index segments are written by the writer's publisher thread, not by the
/// worker whose put filled the eighth pack: a segment that cannot be
/// written mid-backup still fails that backup (at a later put or at the
/// flush, with the segment's error), commits no version, and leaves the
/// store whole — the next backup, once the disk has room again, stores
/// everything and verifies.
#[test]
fn a_segment_that_cannot_be_written_mid_backup_fails_it_and_loses_nothing() {
    segment_failure_mid_backup(EngineParams::new(65536));
}

/// The same with content-defined chunks, whose frames are put by tasks of
/// their own while the next batches are read: the task's failure (not
/// some other error) fails the backup, and every task is done before the
/// backup returns.
#[test]
fn a_segment_that_cannot_be_written_mid_cdc_backup_fails_it_and_loses_nothing() {
    segment_failure_mid_backup(EngineParams::with_chunking(
        alike_core::Chunking::Cdc(alike_core::CdcParams::default()),
    ));
}

/// Engine parameters of a content-defined store.
fn cdc_params() -> EngineParams {
    EngineParams::with_chunking(alike_core::Chunking::Cdc(alike_core::CdcParams::default()))
}

/// The first backup of VM "vm" with one disk.
fn first_job(disk: &'static MemSource) -> BackupJob<'static> {
    BackupJob {
        vm: VmInfo::named("vm"),
        disks: vec![disk],
        parent: None,
        time_ms: 1,
        host: None,
        origin: None,
        no_parent_reason: None,
    }
}

/// A store whose `put` of the `fail_at`-th data frame fails; everything
/// else goes to the repository.
struct FailingPut<'a> {
    repo: &'a Repository,
    puts: AtomicU64,
    fail_at: u64,
}

impl alike_core::ChunkStore for FailingPut<'_> {
    fn contains(&self, id: &alike_core::ChunkId) -> alike_core::Result<bool> {
        self.repo.contains(id)
    }
    fn put(&self, frame: alike_core::StoredFrame) -> alike_core::Result<()> {
        if frame.kind == alike_core::BlobKind::Data && self.puts.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(alike_core::Error::Io {
                path: "pack put #7 (injected)".into(),
                source: std::io::Error::from_raw_os_error(5),
            });
        }
        self.repo.put(frame)
    }
    fn locate(&self, id: &alike_core::ChunkId) -> alike_core::Result<Option<alike_core::ChunkLocation>> {
        self.repo.locate(id)
    }
    fn contains_many(&self, ids: &[alike_core::ChunkId]) -> alike_core::Result<Vec<bool>> {
        self.repo.contains_many(ids)
    }
    fn read_frame(&self, frame: &alike_core::FrameRef) -> alike_core::Result<Vec<u8>> {
        self.repo.read_frame(frame)
    }
    fn flush(&self) -> alike_core::Result<()> {
        self.repo.flush()
    }
    fn commit_version(&self, manifest: &alike_core::Manifest) -> alike_core::Result<String> {
        self.repo.commit_version(manifest)
    }
}

/// With content-defined chunks, data frames are compressed and put by
/// tasks of their own while the next batches are read and cut. A put that
/// fails in one of them fails the backup with that put's error (not a
/// stand-in), after every other task is done; nothing is committed, and
/// the next backup stores everything and restores bit-exact.
#[test]
fn a_frame_put_that_fails_in_a_cdc_backup_task_fails_the_backup_with_its_error() {
    let (dir, root) = local_store(Some(1 << 20));
    let repo = Repository::open(Arc::new(LocalBackend::new(&root)), &cache_in(dir.path(), "cache")).unwrap();
    let params = cdc_params();
    let disk: &'static MemSource = Box::leak(Box::new(MemSource { label: "a".into(), data: noise(96 << 20, 11) }));
    for threads in [1, 2] {
        let failing = FailingPut { repo: &repo, puts: AtomicU64::new(0), fail_at: 7 };
        let read = Arc::new(AtomicU64::new(0));
        let mut run = RunOptions::default();
        run.threads = threads;
        run.progress = Some(Arc::new({
            let read = read.clone();
            move |p: &alike_core::Progress| {
                read.fetch_max(p.bytes_done, Ordering::SeqCst);
            }
        }));
        let e = alike_core::backup::backup(&failing, repo.keys(), &params, first_job(disk), &run).unwrap_err();
        repo.abort_session();
        assert!(e.to_string().contains("pack put #7 (injected)"), "{threads} thread(s): {e}");
        // It stopped reading soon after: the failure was at ~7 MiB, the
        // ring and the frames queued hold 16 MiB at most.
        let read = read.load(Ordering::SeqCst);
        assert!(read < 48 << 20, "{threads} thread(s): read {read} bytes of 96 MiB after the failure");
        assert!(repo.version_ids().unwrap().is_empty(), "no version for the failed backup");
    }
    let run = RunOptions::default();
    let (_, m) = alike_core::backup::backup(&repo, repo.keys(), &params, first_job(disk), &run).unwrap();
    let v = repo.verify(None, alike_ads::VerifyDepth::Full, &|_, _| {}).unwrap();
    assert!(v.ok(), "{v:?}");
    let out = dir.path().join("out.img");
    let target = alike_core::RawFileTarget::create(&out).unwrap();
    alike_core::restore::restore_disk(&repo, repo.keys(), &m, 0, &target, &run).unwrap();
    assert!(std::fs::read(&out).unwrap() == disk.data, "the next backup restores bit-exact");
}

/// A restore target whose `fail_at`-th write fails.
struct FailingTarget {
    inner: alike_core::RawFileTarget,
    writes: AtomicU64,
    fail_at: u64,
    /// Panic there instead of returning an error.
    panic: bool,
}

impl alike_core::DiskTarget for FailingTarget {
    fn label(&self) -> String {
        self.inner.label()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> alike_core::Result<()> {
        if self.writes.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            assert!(!self.panic, "injected panic in a target's write");
            return Err(alike_core::Error::Io {
                path: format!("restore write #{} at {offset} (injected)", self.fail_at).into(),
                source: std::io::Error::from_raw_os_error(28),
            });
        }
        self.inner.write_at(offset, data)
    }
    fn holes_read_as_zero(&self) -> bool {
        self.inner.holes_read_as_zero()
    }
    fn finish(&self, size: u64) -> alike_core::Result<()> {
        self.inner.finish(size)
    }
}

/// A restore's writes run on writer threads of their own, beside the
/// workers that open frames: a write that fails (or panics) stops the
/// restore with that write's error (also in a partial restore: the target
/// is not damage), the call returns (no writer or worker left waiting),
/// and the same restore onto a good target is bit-exact.
#[test]
fn a_restore_write_that_fails_on_a_writer_thread_fails_the_restore_with_its_error() {
    let (dir, root) = local_store(None);
    let repo = Repository::open(Arc::new(LocalBackend::new(&root)), &cache_in(dir.path(), "cache")).unwrap();
    let params = cdc_params();
    let disk: &'static MemSource = Box::leak(Box::new(MemSource { label: "a".into(), data: noise(12 << 20, 12) }));
    let (_, m) =
        alike_core::backup::backup(&repo, repo.keys(), &params, first_job(disk), &RunOptions::default()).unwrap();
    let out = dir.path().join("out.img");
    let failing = |panic| FailingTarget {
        inner: alike_core::RawFileTarget::create(&out).unwrap(),
        writes: AtomicU64::new(0),
        fail_at: 3,
        panic,
    };
    for threads in [1, 2, 4] {
        let mut run = RunOptions::default();
        run.threads = threads;
        let target = failing(false);
        let e = alike_core::restore::restore_disk(&repo, repo.keys(), &m, 0, &target, &run).unwrap_err();
        assert!(e.to_string().contains("restore write #3 at"), "{threads} thread(s): {e}");
        target.writes.store(0, Ordering::SeqCst);
        let e = alike_core::restore::restore_disk_partial(&repo, repo.keys(), &m, 0, &target, &run).unwrap_err();
        assert!(e.to_string().contains("No space left"), "{threads} thread(s), partial: {e}");
        // A target that panics fails the restore too, rather than leaving
        // the workers waiting for the write.
        let target = failing(true);
        let e = alike_core::restore::restore_disk(&repo, repo.keys(), &m, 0, &target, &run).unwrap_err();
        assert!(e.to_string().contains("the target's write panicked"), "{threads} thread(s): {e}");
        let target = alike_core::RawFileTarget::create(&out).unwrap();
        alike_core::restore::restore_disk(&repo, repo.keys(), &m, 0, &target, &run).unwrap();
        assert!(std::fs::read(&out).unwrap() == disk.data, "{threads} thread(s): bit-exact onto a good target");
    }
}

fn segment_failure_mid_backup(params: EngineParams) {
    let (dir, root) = local_store(Some(1 << 20));
    let o = cache_in(dir.path(), "cache");
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r2, index_dir) = (refuse.clone(), root.join("index"));
    let mut hooked = Hooked::new(&root);
    hooked.write = Some(Box::new(move |key, _| {
        if r2.load(Ordering::SeqCst) && key.starts_with("index/") {
            return Err(alike_ads::Error::Io {
                path: index_dir.clone(),
                source: std::io::Error::from_raw_os_error(28),
            });
        }
        Ok(())
    }));
    let repo = Repository::open(Arc::new(hooked), &o).unwrap();
    let run = RunOptions::default();
    let job = |d: &'static MemSource| BackupJob {
        vm: VmInfo::named("vm"),
        disks: vec![d],
        parent: None,
        time_ms: 1,
        host: None,
        origin: None,
        no_parent_reason: None,
    };
    // Noise does not compress: 24 MiB make 24 packs of 1 MiB, three
    // segments' worth, the first two published while the backup runs.
    let disk: &'static MemSource = Box::leak(Box::new(MemSource { label: "a".into(), data: noise(24 << 20, 7) }));
    refuse.store(true, Ordering::SeqCst);
    let e = alike_core::backup::backup(&repo, repo.keys(), &params, job(disk), &run).unwrap_err();
    repo.abort_session();
    assert!(e.to_string().contains("No space left on device"), "{e}");
    assert!(repo.version_ids().unwrap().is_empty(), "no version for the failed backup");
    refuse.store(false, Ordering::SeqCst);
    let (_, m) = alike_core::backup::backup(&repo, repo.keys(), &params, job(disk), &run).unwrap();
    let v = repo.verify(None, alike_ads::VerifyDepth::Full, &|_, _| {}).unwrap();
    assert!(v.ok(), "{v:?}");
    let out = dir.path().join("out.img");
    let target = alike_core::RawFileTarget::create(&out).unwrap();
    alike_core::restore::restore_disk(&repo, repo.keys(), &m, 0, &target, &run).unwrap();
    assert!(std::fs::read(&out).unwrap() == disk.data, "the second backup restores bit-exact");
}

/// A partial restore zero-fills damage, never data it merely could not reach:
/// a transient failure (a timeout that outlasted the retries) stops it with
/// the error, its kind and retry class intact across the `ChunkStore` seam;
/// once the store answers again, the same partial restore is whole.
#[test]
fn a_partial_restore_tells_a_transient_failure_from_damage() {
    let (dir, root) = local_store(None);
    let o = cache_in(dir.path(), "cache");
    // Pack reads time out while `down` is set, as an S3 endpoint that stays
    // unreachable past the client's retries.
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = down.clone();
    let mut hooked = Hooked::new(&root);
    hooked.read = Some(Box::new(move |key| {
        if d2.load(Ordering::SeqCst) && key.starts_with("packs/") {
            return Err(alike_ads::Error::Remote {
                op: "get",
                url: format!("s3://test/{key}"),
                retry: alike_ads::Retry::Transient,
                source: Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "operation timed out")),
            });
        }
        Ok(())
    }));
    let be = Arc::new(hooked);
    let repo = Repository::open(be.clone(), &o).unwrap();
    let data: &'static MemSource = Box::leak(Box::new(MemSource { label: "a".into(), data: noise(2 << 20, 3) }));
    let job = BackupJob {
        vm: VmInfo::named("a"),
        disks: vec![data],
        parent: None,
        time_ms: 1,
        host: None,
        origin: None,
        no_parent_reason: None,
    };
    let run = RunOptions::default();
    let (_, m) = alike_core::backup::backup(&repo, repo.keys(), &EngineParams::new(65536), job, &run).unwrap();

    down.store(true, Ordering::SeqCst);
    let out = dir.path().join("out.img");
    let target = alike_core::RawFileTarget::create(&out).unwrap();
    let e = alike_core::restore::restore_disk_partial(&repo, repo.keys(), &m, 0, &target, &run).unwrap_err();
    assert_eq!(e.kind(), alike_core::ErrorKind::Io, "{e}");
    assert_eq!(e.retry(), alike_core::Retry::Transient, "{e}");
    assert!(!e.is_damage(), "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");

    down.store(false, Ordering::SeqCst);
    let target = alike_core::RawFileTarget::create(&out).unwrap();
    let p = alike_core::restore::restore_disk_partial(&repo, repo.keys(), &m, 0, &target, &run).unwrap();
    assert!(p.failed.is_empty(), "{:?}", p.failed);
    assert_eq!(std::fs::read(&out).unwrap(), data.data);
}

/// GC reclaims the spool files of writers that are gone (a killed backup's
/// `tmp/pack-*.tmp`) at once, and never a live writer's.
#[test]
fn gc_reclaims_the_spool_of_dead_writers_only() {
    let (dir, root) = local_store(None);
    let o = cache_in(dir.path(), "cache");
    let repo = Repository::open(Arc::new(LocalBackend::new(&root)), &o).unwrap();
    let spool = root.join("tmp");
    std::fs::create_dir_all(&spool).unwrap();
    let dead = spool.join("pack-0123456789abcdef01234567.tmp");
    std::fs::write(&dead, vec![7u8; 7 << 20]).unwrap();
    let r = repo.gc_with(false, &|_, _| Ok(())).unwrap();
    assert_eq!(r.spool_files_removed, 1);
    assert!(!dead.exists(), "a killed writer's spool file stays until a day passes");

    // A live writer (another handle holds a backup lock): its fresh spool file stays.
    let o2 = cache_in(dir.path(), "cache2");
    let writer = Repository::open(Arc::new(LocalBackend::new(&root)), &o2).unwrap();
    let lock = writer.begin_write().unwrap();
    let live = spool.join("pack-fedcba9876543210fedcba98.tmp");
    std::fs::write(&live, b"in progress").unwrap();
    let r = repo.gc_with(false, &|_, _| Ok(())).unwrap();
    assert_eq!(r.spool_files_removed, 0);
    assert!(live.exists(), "a live writer's spool file was removed");
    drop(lock);
}

/// A store that refuses writes (a WORM vault, a read-only share) restores
/// and verifies without its read lock, while writers are refused clearly.
#[test]
fn a_store_that_refuses_writes_still_restores_and_verifies() {
    let (dir, root) = local_store(None);
    let o = cache_in(dir.path(), "cache");
    let data: &'static MemSource = Box::leak(Box::new(MemSource { label: "a".into(), data: noise(1 << 20, 9) }));
    let (_, m) = {
        let repo = Repository::open(Arc::new(LocalBackend::new(&root)), &o).unwrap();
        let _w = repo.begin_write().unwrap();
        let job = BackupJob {
            vm: VmInfo::named("a"),
            disks: vec![data],
            parent: None,
            time_ms: 1,
            host: None,
            origin: None,
            no_parent_reason: None,
        };
        alike_core::backup::backup(&repo, repo.keys(), &EngineParams::new(65536), job, &RunOptions::default()).unwrap()
    };
    let o2 = cache_in(dir.path(), "cold-cache");
    // Every write refused, as a WORM bucket answers 403.
    let mut hooked = Hooked::new(&root);
    hooked.write = Some(Box::new(|key, _| {
        Err(alike_ads::Error::Refused { op: "put", object: key.into(), reason: "403 Forbidden (object lock)".into() })
    }));
    let repo = Repository::open(Arc::new(hooked), &o2).unwrap();
    let read = repo.lock(alike_ads::LockKind::Read).unwrap();
    assert!(!read.is_held(), "no lock object can be written");
    let out = dir.path().join("out.img");
    let target = alike_core::RawFileTarget::create(&out).unwrap();
    alike_core::restore::restore_disk(&repo, repo.keys(), &m, 0, &target, &RunOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data.data);
    assert!(repo.verify(None, alike_ads::VerifyDepth::Full, &|_, _| {}).unwrap().ok());
    drop(read);
    let e = repo.begin_write().unwrap_err();
    assert!(e.is_write_refused() && e.to_string().contains("refused"), "{e}");
}

/// The window behind "gc failed once with chunk … is not in the store": a
/// backup that commits between GC's cache sync and its listing of versions.
/// GC lists versions first now, so it runs clean, deletes nothing the new
/// version needs, and the version restores.
#[test]
fn a_backup_committing_while_gc_syncs_its_cache_is_safe() {
    let (dir, root) = local_store(None);
    let opts = |cache: &str| cache_in(dir.path(), cache);
    let first: &'static MemSource = Box::leak(Box::new(MemSource { label: "a".into(), data: noise(1 << 20, 21) }));
    let second: &'static MemSource = Box::leak(Box::new(MemSource { label: "a".into(), data: noise(1 << 20, 22) }));
    let run = RunOptions::default();
    let job = |d: &'static MemSource, t| BackupJob {
        vm: VmInfo::named("same-vm"),
        disks: vec![d],
        parent: None,
        time_ms: t,
        host: None,
        origin: None,
        no_parent_reason: None,
    };
    let writer = Arc::new(Repository::open(Arc::new(LocalBackend::new(&root)), &opts("c1")).unwrap());
    {
        let _w = writer.begin_write().unwrap();
        alike_core::backup::backup(&*writer, writer.keys(), &EngineParams::new(65536), job(first, 1), &run).unwrap();
    }
    let w2 = writer.clone();
    let committed = Arc::new(std::sync::Mutex::new(None));
    let c2 = committed.clone();
    let hook: Box<dyn FnOnce() + Send> = Box::new(move || {
        let _w = w2.begin_write().unwrap();
        let r = alike_core::backup::backup(&*w2, w2.keys(), &EngineParams::new(65536), job(second, 2), &run).unwrap();
        *c2.lock().unwrap() = Some(r);
    });
    // The backup runs once, right after a listing of `index/` (GC's cache
    // sync), armed after the opening's own sync.
    let armed: Arc<std::sync::Mutex<Option<OnceHook>>> = Arc::new(std::sync::Mutex::new(None));
    let a2 = armed.clone();
    let mut hooked = Hooked::new(&root);
    hooked.list = Some(Box::new(move |prefix| {
        if prefix == "index/" {
            let h = a2.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some(h) = h {
                h();
            }
        }
    }));
    let gc_repo = Repository::open(Arc::new(hooked), &opts("c2")).unwrap();
    *armed.lock().unwrap() = Some(hook);
    let r = gc_repo.gc_with(false, &|_, _| Ok(())).unwrap();
    assert!(committed.lock().unwrap().is_some(), "the backup ran inside GC's sync");
    assert_eq!(r.versions, 1, "GC saw the versions listed before its sync");
    let (_, m) = committed.lock().unwrap().take().unwrap();
    let out = dir.path().join("out.img");
    let target = alike_core::RawFileTarget::create(&out).unwrap();
    alike_core::restore::restore_disk(&*writer, writer.keys(), &m, 0, &target, &RunOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), second.data);
}
