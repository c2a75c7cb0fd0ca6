//! One suite, every backend: the same test functions run against
//! [`LocalBackend`], [`MemoryBackend`], [`ObjectBackend`] over a local
//! directory (`object_store`'s `LocalFileSystem`: the object code path with
//! no server) and [`ObjectBackend`] on S3.
//!
//! The S3 cases need a server: `eval "$(bash scripts/s3-server.sh start)"`
//! exports `ALIKE_TEST_S3_ENDPOINT` (and bucket, keys). Without it they are
//! skipped with a message — except when `CI` is set, where they fail: CI must
//! never skip them silently. Each S3 case works under its own random prefix
//! and removes it afterwards, so cases run in parallel on one bucket.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use alike_ads::{
    Backend, CreateOptions, Error, LocalBackend, MemoryBackend, ObjectBackend, ObjectOptions, OpenOptions, Repository,
    VerifyDepth,
};
use alike_core::backup::{BackupJob, EngineParams};
use alike_core::retention::RetentionPolicy;
use alike_core::{KdfParams, Manifest, MemSource, RunOptions, VmInfo};

/// Which backend a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Memory,
    ObjectFs,
    S3,
}

/// Multipart settings of the object backends in this suite: objects over
/// 6 MiB go in 5 MiB parts (the smallest S3 accepts), so a 12 MiB object
/// takes three parts.
const THRESHOLD: u64 = 6 << 20;
const PART: u64 = 5 << 20;

/// A backend for one case, and how to open a second handle on the same store.
struct Fixture {
    kind: Kind,
    backend: Arc<dyn Backend>,
    dir: tempfile::TempDir,
    /// Local and object-fs: the root directory; S3: the URL.
    location: String,
}

fn object_options(spool: &Path) -> ObjectOptions {
    let mut o = ObjectOptions::default();
    o.spool_dir(spool).multipart(THRESHOLD, PART);
    if let Ok(endpoint) = std::env::var("ALIKE_TEST_S3_ENDPOINT") {
        o.endpoint(endpoint).allow_http(true).path_style(true);
        o.region(std::env::var("ALIKE_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into()));
        if let (Ok(k), Ok(s)) = (std::env::var("ALIKE_TEST_S3_ACCESS_KEY"), std::env::var("ALIKE_TEST_S3_SECRET_KEY")) {
            o.credentials(k, s);
        }
        // A test server that stops answering should fail the test soon.
        o.max_retries = Some(3);
        o.retry_timeout = Some(Duration::from_secs(20));
    }
    o
}

fn random_hex() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Fixture {
    /// `None` when the case cannot run here (S3 without a server, outside CI).
    fn new(kind: Kind) -> Option<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let (backend, location): (Arc<dyn Backend>, String) = match kind {
            Kind::Local => {
                std::fs::create_dir_all(&root).unwrap();
                (Arc::new(LocalBackend::new(&root)), root.display().to_string())
            }
            Kind::Memory => (Arc::new(MemoryBackend::new()), "memory:".into()),
            Kind::ObjectFs => (
                Arc::new(ObjectBackend::local_filesystem(&root, &object_options(&dir.path().join("spool"))).unwrap()),
                root.display().to_string(),
            ),
            Kind::S3 => {
                if std::env::var_os("ALIKE_TEST_S3_ENDPOINT").is_none() {
                    alike_testing::skip(
                        "ALIKE_TEST_S3_ENDPOINT is not set (eval \"$(bash scripts/s3-server.sh start)\")",
                    );
                    return None;
                }
                let bucket = std::env::var("ALIKE_TEST_S3_BUCKET").unwrap_or_else(|_| "alike".into());
                let url = format!("s3://{bucket}/conformance-{}", random_hex());
                let b = ObjectBackend::open(&url, &object_options(&dir.path().join("spool"))).unwrap();
                (Arc::new(b), url)
            }
        };
        Some(Fixture { kind, backend, dir, location })
    }

    /// Another handle on the same store, as a second machine would open it
    /// (the memory store can only share its one handle).
    fn second_handle(&self) -> Arc<dyn Backend> {
        let spool = self.dir.path().join(format!("spool-{}", random_hex()));
        match self.kind {
            Kind::Local => Arc::new(LocalBackend::new(&self.location)),
            Kind::Memory => self.backend.clone(),
            Kind::ObjectFs => {
                Arc::new(ObjectBackend::local_filesystem(Path::new(&self.location), &object_options(&spool)).unwrap())
            }
            Kind::S3 => Arc::new(ObjectBackend::open(&self.location, &object_options(&spool)).unwrap()),
        }
    }

    fn is_object(&self) -> bool {
        matches!(self.kind, Kind::ObjectFs | Kind::S3)
    }

    fn object(&self) -> ObjectBackend {
        let spool = self.dir.path().join(format!("spool-{}", random_hex()));
        match self.kind {
            Kind::ObjectFs => ObjectBackend::local_filesystem(Path::new(&self.location), &object_options(&spool)),
            Kind::S3 => ObjectBackend::open(&self.location, &object_options(&spool)),
            _ => panic!("not an object backend"),
        }
        .unwrap()
    }

    fn cache(&self, name: &str) -> OpenOptions {
        let mut o = OpenOptions::default();
        o.cache_dir = Some(self.dir.path().join(name));
        o
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // S3: remove what the case left under its prefix.
        if self.kind != Kind::S3 {
            return;
        }
        if let Ok(keys) = self.backend.list("") {
            for (k, _) in keys {
                let _ = self.backend.delete(&k);
            }
        }
    }
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    alike_testing::Rng::new(seed).noise(n)
}

fn write_spool_file(b: &dyn Backend, data: &[u8]) -> PathBuf {
    let p = b.spool_dir().unwrap().join(format!("pack-{}.tmp", random_hex()));
    std::fs::write(&p, data).unwrap();
    p
}

/// Runs each listed case on each backend: `local::case`, `memory::case`, …
macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod local { $( #[test] fn $case() { super::$case(super::Kind::Local) } )* }
        mod memory { $( #[test] fn $case() { super::$case(super::Kind::Memory) } )* }
        mod object_fs { $( #[test] fn $case() { super::$case(super::Kind::ObjectFs) } )* }
        mod s3 { $( #[test] fn $case() { super::$case(super::Kind::S3) } )* }
    };
}

on_every_backend!(
    contract_read_write,
    contract_list_past_1000_keys,
    contract_write_new_once,
    contract_write_new_race,
    contract_large_write_file,
    contract_failed_upload_leaves_nothing,
    contract_killed_upload_leaves_nothing,
    store_backup_restore_verify,
    store_two_writers,
    store_gc_after_prune,
    store_create_race,
);

// ---------------------------------------------------------------- contract

/// write/read/ranges/tail/exists/delete, and the errors for missing and short objects.
fn contract_read_write(kind: Kind) {
    let Some(f) = Fixture::new(kind) else { return };
    let b = &*f.backend;
    let data = noise(100_000, 1);
    b.write("index/abc", &data).unwrap();
    assert_eq!(b.read("index/abc").unwrap(), data);
    assert_eq!(b.read_range("index/abc", 1000, 500).unwrap(), &data[1000..1500]);
    assert_eq!(b.read_range("index/abc", 99_990, 10).unwrap(), &data[99_990..]);
    assert_eq!(b.read_range("index/abc", 5, 0).unwrap(), Vec::<u8>::new());
    match b.read_range("index/abc", 99_990, 20) {
        Err(Error::Truncated { object, wanted: 20, got: 10, .. }) => assert_eq!(object, "index/abc"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(b.read_range("index/abc", 200_000, 5), Err(Error::Truncated { got: 0, .. })));
    assert_eq!(b.read_tail("index/abc", 16).unwrap(), (data[data.len() - 16..].to_vec(), 100_000));
    assert_eq!(b.read_tail("index/abc", 1 << 20).unwrap(), (data.clone(), 100_000));
    assert!(b.exists("index/abc").unwrap());
    assert!(!b.exists("index/nope").unwrap());
    for r in [
        b.read("index/nope").map(drop),
        b.read_range("index/nope", 0, 4).map(drop),
        b.read_tail("index/nope", 4).map(drop),
    ] {
        match r {
            Err(Error::NotFound { object }) => assert_eq!(object, "index/nope"),
            other => panic!("{other:?}"),
        }
    }
    // Overwrite replaces; an empty object is an object.
    b.write("index/abc", b"short").unwrap();
    assert_eq!(b.read("index/abc").unwrap(), b"short");
    b.write("pins/empty", b"").unwrap();
    assert_eq!(b.read("pins/empty").unwrap(), b"");
    assert_eq!(b.read_tail("pins/empty", 16).unwrap(), (vec![], 0));
    assert!(b.exists("pins/empty").unwrap());
    b.delete("index/abc").unwrap();
    b.delete("index/abc").unwrap(); // missing is fine
    assert!(!b.exists("index/abc").unwrap());
    assert!(matches!(b.read("index/abc"), Err(Error::NotFound { .. })));
}

/// Listing is recursive, complete past one page (1000 keys), relative to
/// the store, sorted, with sizes; a prefix never matches a sibling folder.
fn contract_list_past_1000_keys(kind: Kind) {
    let Some(f) = Fixture::new(kind) else { return };
    let b = &f.backend;
    let n = 1100usize;
    let keys: Vec<String> = (0..n).map(|i| format!("versions/{i:05}")).collect();
    std::thread::scope(|s| {
        for t in 0..8 {
            let keys = &keys;
            s.spawn(move || {
                for (i, k) in keys.iter().enumerate().skip(t).step_by(8) {
                    b.write(k, &vec![7u8; i % 5]).unwrap();
                }
            });
        }
    });
    b.write("versions2/x", b"no").unwrap();
    b.write("verifications/v1/1-quick", b"abc").unwrap();
    b.write("packs/ab/cd", b"abcd").unwrap();
    let listed = b.list("versions/").unwrap();
    assert_eq!(listed.len(), n);
    for (i, (k, size)) in listed.iter().enumerate() {
        assert_eq!(k, &keys[i]);
        assert_eq!(*size, (i % 5) as u64, "{k}");
    }
    assert_eq!(b.list("verifications/v1/").unwrap(), vec![("verifications/v1/1-quick".to_string(), 3)]);
    assert_eq!(b.list("packs/").unwrap(), vec![("packs/ab/cd".to_string(), 4)]);
    assert!(b.list("gc/").unwrap().is_empty());
    let all = b.list("").unwrap();
    assert_eq!(all.len(), n + 3, "{:?}", &all[..5]);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
}

/// `write_new` creates once; the second call leaves the first object.
fn contract_write_new_once(kind: Kind) {
    let Some(f) = Fixture::new(kind) else { return };
    let b = &*f.backend;
    assert!(b.write_new("config", b"first").unwrap());
    assert!(!b.write_new("config", b"second").unwrap());
    assert_eq!(b.read("config").unwrap(), b"first");
    assert!(b.write_new("keys/0001", b"k").unwrap(), "in a folder not yet created");
    assert_eq!(b.list("").unwrap().len(), 2, "no temporary objects left: {:?}", b.list("").unwrap());
}

/// Eight threads (on separate handles where the backend has them) race to
/// create one key: exactly one wins, and the object is the winner's.
fn contract_write_new_race(kind: Kind) {
    let Some(f) = Fixture::new(kind) else { return };
    let handles: Vec<Arc<dyn Backend>> = (0..8).map(|_| f.second_handle()).collect();
    for round in 0..4 {
        let key = format!("config-{round}");
        let barrier = Barrier::new(8);
        let wins: Vec<(usize, bool)> = std::thread::scope(|s| {
            let hs: Vec<_> = handles
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let (key, barrier) = (&key, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        (i, h.write_new(key, format!("writer {i}").as_bytes()).unwrap())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<usize> = wins.iter().filter(|(_, w)| *w).map(|(i, _)| *i).collect();
        assert_eq!(winners.len(), 1, "round {round}: {wins:?}");
        assert_eq!(f.backend.read(&key).unwrap(), format!("writer {}", winners[0]).as_bytes());
    }
}

/// A spool file above the multipart threshold (three parts on the object
/// backends) lands whole, its local file is gone, and ranged reads work
/// across part boundaries.
fn contract_large_write_file(kind: Kind) {
    let Some(f) = Fixture::new(kind) else { return };
    let b = &*f.backend;
    let data = noise(12 << 20, 3);
    let spool = write_spool_file(b, &data);
    b.write_file("packs/ab/big", &spool).unwrap();
    assert!(!spool.exists(), "write_file consumes the spool file");
    assert_eq!(b.list("packs/").unwrap(), vec![("packs/ab/big".to_string(), data.len() as u64)]);
    let edge = PART as usize;
    assert_eq!(b.read_range("packs/ab/big", edge as u64 - 100, 200).unwrap(), &data[edge - 100..edge + 100]);
    assert_eq!(b.read_tail("packs/ab/big", 16).unwrap(), (data[data.len() - 16..].to_vec(), data.len() as u64));
    assert!(b.read("packs/ab/big").unwrap() == data);
    // And `write` of a large buffer too.
    b.write("index/big", &data[..7 << 20]).unwrap();
    assert!(b.read("index/big").unwrap() == data[..7 << 20]);
}

/// A reader that yields `ok` bytes of noise, then fails.
struct FailingReader {
    data: Vec<u8>,
    pos: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.data.len() {
            return Err(std::io::Error::other("source disk went away"));
        }
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// An upload whose source fails midway (after two parts were sent) leaves
/// nothing under its key, and a later write of the key succeeds. Local and
/// memory backends have no streaming upload: for them a spool file that
/// cannot be read fails the same way.
fn contract_failed_upload_leaves_nothing(kind: Kind) {
    let Some(f) = Fixture::new(kind) else { return };
    let b = &*f.backend;
    if f.is_object() {
        let o = f.object();
        let r = FailingReader { data: noise(11 << 20, 4), pos: 0 };
        match o.write_from_reader("packs/cd/failed", r) {
            Err(Error::Io { source, .. }) => assert!(source.to_string().contains("went away"), "{source}"),
            other => panic!("{other:?}"),
        }
        // Below the threshold: one PUT never sent.
        let r = FailingReader { data: noise(1 << 20, 5), pos: 0 };
        assert!(o.write_from_reader("packs/cd/small", r).is_err());
        assert!(!b.exists("packs/cd/small").unwrap());
    } else {
        let missing = b.spool_dir().unwrap().join("pack-vanished.tmp");
        assert!(b.write_file("packs/cd/failed", &missing).is_err());
    }
    assert!(!b.exists("packs/cd/failed").unwrap());
    assert!(matches!(b.read("packs/cd/failed"), Err(Error::NotFound { .. })));
    assert!(b.list("").unwrap().is_empty(), "{:?}", b.list("").unwrap());
    let data = noise(8 << 20, 6);
    b.write_file("packs/cd/failed", &write_spool_file(b, &data)).unwrap();
    assert!(b.read("packs/cd/failed").unwrap() == data);
}

const CHILD_ENV: &str = "ALIKE_CONFORMANCE_CHILD";
const BIG_LOCAL: usize = 96 << 20;

/// A process SIGKILLed in the middle of writing a large object leaves
/// nothing under the key (object backends: parts were sent, the upload never
/// completed; local: the key is absent or whole, never partial), and a later
/// write succeeds. The memory store dies with its process: nothing to check.
fn contract_killed_upload_leaves_nothing(kind: Kind) {
    if kind == Kind::Memory {
        return;
    }
    let Some(f) = Fixture::new(kind) else { return };
    let key = "packs/ef/killed";
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{kind:?}|{}|{}|{key}", f.location, f.dir.path().join("child-spool").display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("MIDWAY") => break,
            Some(Ok(_)) => {}
            other => panic!("child ended before the upload began: {other:?}"),
        }
    }
    // Object backends: give the first parts time to arrive. Local: kill
    // while the temporary file is being written or fsynced.
    std::thread::sleep(Duration::from_millis(if f.is_object() { 700 } else { 30 }));
    child.kill().unwrap();
    child.wait().unwrap();
    let b = &*f.backend;
    if f.is_object() {
        assert!(!b.exists(key).unwrap(), "a killed multipart upload left an object");
        assert!(b.list("").unwrap().is_empty(), "{:?}", b.list("").unwrap());
    } else {
        match b.read(key) {
            Err(Error::NotFound { .. }) => {}
            Ok(d) => assert!(d.len() == BIG_LOCAL && d == noise(BIG_LOCAL, 7), "a partial object is visible"),
            Err(e) => panic!("{e}"),
        }
        assert!(b.list("").unwrap().iter().all(|(k, _)| k == key), "temporary files listed");
    }
    let data = noise(12 << 20, 8);
    b.write_file(key, &write_spool_file(b, &data)).unwrap();
    assert!(b.read(key).unwrap() == data);
}

/// A reader that yields `n` bytes, then says so on stdout and hangs (until killed).
struct HangingReader {
    left: usize,
}

impl Read for HangingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            println!("MIDWAY");
            std::thread::sleep(Duration::from_secs(120));
            return Err(std::io::Error::other("not killed"));
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(0x5a);
        self.left -= n;
        Ok(n)
    }
}

/// The child of `contract_killed_upload_leaves_nothing` (does nothing unless
/// that test started it).
#[test]
#[ignore = "run by contract_killed_upload_leaves_nothing in a child process"]
fn child_writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let parts: Vec<&str> = spec.split('|').collect();
    let [kind, location, spool, key] = parts[..] else { panic!("bad {CHILD_ENV}: {spec}") };
    let spool = Path::new(spool);
    match kind {
        "Local" => {
            let data = noise(BIG_LOCAL, 7);
            println!("MIDWAY");
            LocalBackend::new(location).write(key, &data).unwrap();
            std::thread::sleep(Duration::from_secs(120));
        }
        "ObjectFs" | "S3" => {
            let o = if kind == "S3" {
                ObjectBackend::open(location, &object_options(spool))
            } else {
                ObjectBackend::local_filesystem(Path::new(location), &object_options(spool))
            }
            .unwrap();
            let _ = o.write_from_reader(key, HangingReader { left: 12 << 20 });
        }
        other => panic!("no child for {other}"),
    }
}

// ---------------------------------------------------------------- store

fn create_options() -> CreateOptions {
    let mut c = CreateOptions::default();
    c.pack_size = 1 << 20; // the smallest: several packs from a few MiB
    c.passphrase = Some(b"conformance".to_vec());
    c.kdf = KdfParams::insecure_fast();
    c
}

fn open_options(f: &Fixture, cache: &str) -> OpenOptions {
    let mut o = f.cache(cache);
    o.passphrase = Some(b"conformance".to_vec());
    o
}

/// A disk image: noise with zero holes, `mib` MiB.
fn disk(mib: usize, seed: u64) -> Vec<u8> {
    let mut d = noise(mib << 20, seed);
    for hole in d.chunks_mut(64 << 10).skip(1).step_by(5) {
        hole.fill(0);
    }
    d
}

fn backup(repo: &Repository, vm: &str, data: &[u8], time_ms: i64) -> (String, Manifest) {
    let _lock = repo.begin_write().unwrap();
    let src = MemSource { label: "disk0".into(), data: data.to_vec() };
    let job = BackupJob {
        vm: VmInfo::named(vm),
        disks: vec![&src],
        parent: None,
        time_ms,
        host: None,
        origin: None,
        no_parent_reason: None,
    };
    let r = alike_core::backup::backup(repo, repo.keys(), &EngineParams::new(65536), job, &RunOptions::default());
    if r.is_err() {
        repo.abort_session();
    }
    r.unwrap()
}

fn assert_restores(repo: &Repository, m: &Manifest, expected: &[u8], dir: &Path) {
    let out = dir.join(format!("restore-{}.img", random_hex()));
    let target = alike_core::RawFileTarget::create(&out).unwrap();
    alike_core::restore::restore_disk(repo, repo.keys(), m, 0, &target, &RunOptions::default()).unwrap();
    assert!(std::fs::read(&out).unwrap() == expected, "restore differs");
    std::fs::remove_file(&out).unwrap();
}

fn assert_verifies(repo: &Repository) {
    let r = repo.verify(None, VerifyDepth::Full, &|_, _| {}).unwrap();
    assert!(r.ok(), "{:?}", r.damaged);
    assert!(r.packs_read > 0);
}

fn spool_is_empty(f: &Fixture, b: &dyn Backend) -> bool {
    // Memory and local spools are private; the object spool is the one to check.
    !f.is_object() || std::fs::read_dir(b.spool_dir().unwrap()).unwrap().next().is_none()
}

/// Create, back up, restore bit-exact, verify full; an incremental-size
/// second version dedups against the first.
fn store_backup_restore_verify(kind: Kind) {
    let Some(f) = Fixture::new(kind) else { return };
    Repository::create(f.backend.clone(), &create_options()).unwrap();
    assert!(matches!(Repository::create(f.backend.clone(), &create_options()), Err(Error::AlreadyExists { .. })));
    let repo = Repository::open(f.backend.clone(), &open_options(&f, "cache")).unwrap();
    let d1 = disk(3, 10);
    let (_, m1) = backup(&repo, "vm", &d1, 1);
    let packs_after_first = repo.stats().unwrap().packs;
    assert!(packs_after_first >= 2, "{packs_after_first} packs");
    let mut d2 = d1.clone();
    d2[100_000..200_000].copy_from_slice(&noise(100_000, 11));
    let (_, m2) = backup(&repo, "vm", &d2, 2);
    assert!(repo.stats().unwrap().packs <= packs_after_first + 1, "the second version deduplicates");
    assert!(spool_is_empty(&f, &*f.backend), "uploaded packs leave the spool");
    drop(repo);
    // A fresh cache (another machine) reads everything from the store.
    let repo = Repository::open(f.second_handle(), &open_options(&f, "cache2")).unwrap();
    assert_restores(&repo, &m1, &d1, f.dir.path());
    assert_restores(&repo, &m2, &d2, f.dir.path());
    assert_verifies(&repo);
}

/// Two writers with separate handles and caches back up at the same time;
/// both versions restore and the store verifies.
fn store_two_writers(kind: Kind) {
    let Some(f) = Fixture::new(kind) else { return };
    Repository::create(f.backend.clone(), &create_options()).unwrap();
    let shared = disk(1, 20);
    let mut a = disk(2, 21);
    let mut b = disk(2, 22);
    a.extend_from_slice(&shared);
    b.extend_from_slice(&shared);
    let barrier = Barrier::new(2);
    let results: Vec<(String, Manifest)> = std::thread::scope(|s| {
        let hs: Vec<_> = [("a", &a, "cache-a"), ("b", &b, "cache-b")]
            .into_iter()
            .map(|(vm, data, cache)| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    let repo = Repository::open(f.second_handle(), &open_options(f, cache)).unwrap();
                    barrier.wait();
                    backup(&repo, vm, data, 5)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let repo = Repository::open(f.second_handle(), &open_options(&f, "cache-check")).unwrap();
    assert_eq!(repo.versions().unwrap().len(), 2);
    assert_restores(&repo, &results[0].1, &a, f.dir.path());
    assert_restores(&repo, &results[1].1, &b, f.dir.path());
    assert_verifies(&repo);
}

/// Prune then gc deletes the packs only the pruned version used; the kept
/// version still restores and verifies.
fn store_gc_after_prune(kind: Kind) {
    let Some(f) = Fixture::new(kind) else { return };
    Repository::create(f.backend.clone(), &create_options()).unwrap();
    let repo = Repository::open(f.backend.clone(), &open_options(&f, "cache")).unwrap();
    let old = disk(3, 30);
    let new = disk(3, 31);
    backup(&repo, "vm", &old, 1_000);
    let (_, m_new) = backup(&repo, "vm", &new, 2_000);
    let before = repo.stats().unwrap();
    let mut policy = RetentionPolicy::default();
    policy.keep_last = 1;
    let pruned = repo.prune(None, &policy, false).unwrap();
    assert_eq!(pruned.removed.len(), 1);
    let gc = repo.gc(false).unwrap();
    assert!(gc.deleted > 0 && gc.bytes_freed > 0, "{gc:?}");
    let after = repo.stats().unwrap();
    assert!(after.pack_bytes < before.pack_bytes, "{before:?} → {after:?}");
    assert!(f.backend.list("gc/").unwrap().is_empty(), "the gc record is removed once its packs are");
    assert_restores(&repo, &m_new, &new, f.dir.path());
    assert_verifies(&repo);
}

/// Two processes create the same store at once: exactly one succeeds, the
/// other gets `AlreadyExists` and leaves no key object behind, and the store
/// opens with the winner's settings — also when the loser was encrypted and
/// the winner not.
fn store_create_race(kind: Kind) {
    let Some(f) = Fixture::new(kind) else { return };
    for round in 0..3 {
        // A fresh store per round: memory needs a new backend, the others a new place.
        let (b1, b2): (Arc<dyn Backend>, Arc<dyn Backend>) = match kind {
            Kind::Memory => {
                let m: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
                (m.clone(), m)
            }
            Kind::Local => {
                let root = f.dir.path().join(format!("race-{round}"));
                std::fs::create_dir_all(&root).unwrap();
                (Arc::new(LocalBackend::new(&root)), Arc::new(LocalBackend::new(&root)))
            }
            Kind::ObjectFs => {
                let root = f.dir.path().join(format!("race-{round}"));
                let o = object_options(&f.dir.path().join("spool"));
                (
                    Arc::new(ObjectBackend::local_filesystem(&root, &o).unwrap()),
                    Arc::new(ObjectBackend::local_filesystem(&root, &o).unwrap()),
                )
            }
            Kind::S3 => {
                let url = format!("{}/race-{round}", f.location);
                let o = object_options(&f.dir.path().join("spool"));
                (Arc::new(ObjectBackend::open(&url, &o).unwrap()), Arc::new(ObjectBackend::open(&url, &o).unwrap()))
            }
        };
        let encrypted = create_options();
        let mut plain = create_options();
        plain.encrypted = false;
        plain.passphrase = None;
        let barrier = Barrier::new(2);
        let (r1, r2) = std::thread::scope(|s| {
            let h1 = s.spawn(|| {
                barrier.wait();
                Repository::create(b1.clone(), &encrypted)
            });
            let h2 = s.spawn(|| {
                barrier.wait();
                Repository::create(b2.clone(), &plain)
            });
            (h1.join().unwrap(), h2.join().unwrap())
        });
        let encrypted_won = match (&r1, &r2) {
            (Ok(()), Err(Error::AlreadyExists { .. })) => true,
            (Err(Error::AlreadyExists { .. }), Ok(())) => false,
            other => panic!("round {round}: exactly one creation must succeed: {other:?}"),
        };
        let keys = b1.list("keys/").unwrap();
        assert_eq!(keys.len(), usize::from(encrypted_won), "round {round}: key objects {keys:?}");
        let mut o = f.cache(&format!("race-cache-{round}"));
        if encrypted_won {
            o.passphrase = Some(b"conformance".to_vec());
        }
        let repo = Repository::open(b2.clone(), &o).unwrap();
        assert_eq!(repo.config().encrypted(), encrypted_won);
    }
}
