//! Replication through the facade: one-pass backup and replication (the
//! source read once), seeding a first replication from a store version,
//! a version in a store as the source (only changed windows read), the
//! two ends run from job descriptions over loopback TCP (store versions
//! with change tracking, a seed, one-pass in pull), history records, and
//! argument checks.

use std::sync::atomic::{AtomicU64, Ordering};

use alike::{
    BackupOptions, DiskSource, EndOptions, Flow, JobLink, JobReplica, JobRole, JobSecret, JobSeed, JobSource, JobStore,
    MemSource, Replica, ReplicateOptions, ReplicationJob,
};
use alike_testing::Rng;

use super::util::Env;

const MIB: usize = 1 << 20;

fn disk(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut d = vec![0u8; n];
    let mut at = 0;
    while at < n {
        let end = (at + (64 << 10) + rng.below(300 << 10) as usize).min(n);
        if rng.below(3) != 0 {
            rng.fill(&mut d[at..end]);
        }
        at = end;
    }
    d
}

fn scatter(d: &mut [u8], seed: u64, count: usize) {
    let mut rng = Rng::new(seed);
    for _ in 0..count {
        let at = rng.below((d.len() / 4096) as u64) as usize * 4096;
        rng.fill(&mut d[at..at + 4096]);
    }
}

fn read_all(src: &dyn DiskSource) -> Vec<u8> {
    let mut v = vec![0u8; src.size() as usize];
    for (i, c) in v.chunks_mut(4 * MIB).enumerate() {
        src.read_at((i * 4 * MIB) as u64, c).unwrap();
    }
    v
}

/// A source that counts every byte read from it.
struct Counting {
    inner: MemSource,
    read: AtomicU64,
}

impl DiskSource for Counting {
    fn label(&self) -> String {
        self.inner.label()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_at(offset, buf)
    }
}

#[test]
fn one_pass_reads_the_source_once_into_a_version_and_the_replica() {
    let env = Env::new();
    let store = env.create(true);
    let replica = Replica::open_or_create(env.path("replica"), "vm").unwrap();
    let mut data = disk(1, 8 * MIB);
    for round in 0..2 {
        if round == 1 {
            scatter(&mut data, 5, 20);
        }
        let src = Counting { inner: MemSource { label: "d0".into(), data: data.clone() }, read: AtomicU64::new(0) };
        let opts = ReplicateOptions::default().backup_to(&store, BackupOptions::default());
        let r = alike::replicate("vm", &[&src], &replica, &opts).unwrap();
        let read = src.read.load(Ordering::Relaxed);
        assert_eq!(read, data.len() as u64, "round {round}: the source is read once, whole");
        let b = r.backup.as_ref().unwrap();
        assert_eq!(b.read_bytes, read);
        assert_eq!(r.read_bytes, read);
        // The version and the point hold the same bytes.
        let v = store.version(&b.version.id, None).unwrap();
        store.restore_to_file(&v, 0, env.path("restored.img"), &alike::RestoreOptions::default().force(true)).unwrap();
        assert!(std::fs::read(env.path("restored.img")).unwrap() == data);
        assert!(read_all(&*replica.point_disk(r.point, 0).unwrap()) == data);
        if round == 1 {
            // The replica is fed from the version: only windows whose maps changed are read back.
            assert!(r.store_read_bytes < data.len() as u64, "{}", r.store_read_bytes);
            assert!(r.needed_bytes < 2 * MIB as u64);
        }
    }
}

#[test]
fn a_first_replication_seeded_from_a_store_version_sends_only_the_differences() {
    let env = Env::new();
    let store = env.create(true);
    let old = disk(2, 12 * MIB);
    let img = env.path("old.img");
    std::fs::write(&img, &old).unwrap();
    let v = store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap().version;
    let mut new = old.clone();
    scatter(&mut new, 9, 10);
    let src = MemSource { label: "d0".into(), data: new.clone() };
    let replica = Replica::open_or_create(env.path("replica"), "vm").unwrap();
    let r = alike::replicate("vm", &[&src], &replica, &ReplicateOptions::default().seed(&store, &v)).unwrap();
    assert!(r.replica.seeded_bytes > 6 * MIB as u64, "{:?}", r.replica);
    assert!(r.needed_bytes <= 10 * (64 << 10), "only what differs from the seed: {}", r.needed_bytes);
    assert!(read_all(&*replica.point_disk(r.point, 0).unwrap()) == new);

    // The same without a seed sends everything.
    let bare = Replica::open_or_create(env.path("bare"), "vm").unwrap();
    let b = alike::replicate("vm", &[&src], &bare, &ReplicateOptions::default()).unwrap();
    assert!(b.needed_bytes > 6 * MIB as u64);
    assert!(r.sent_bytes * 5 < b.sent_bytes);
}

#[test]
fn a_store_version_as_the_source_reads_only_changed_windows() {
    let env = Env::new();
    let store = env.create(false);
    let mut data = vec![0u8; 300 * MIB];
    let mut rng = Rng::new(3);
    for w in 0..3 {
        rng.fill(&mut data[w * 128 * MIB..w * 128 * MIB + 2 * MIB]);
    }
    let img = env.path("d.img");
    std::fs::write(&img, &data).unwrap();
    let replica = Replica::open_or_create(env.path("replica"), "vm").unwrap();
    let v1 = store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap().version;
    let r1 = store.replicate_version(&v1, &replica, &ReplicateOptions::default()).unwrap();
    assert!(r1.disks[0].read_bytes >= 6 * MIB as u64 && !r1.disks[0].changed_only);
    // A change in the second window only.
    rng.fill(&mut data[128 * MIB + 4096..128 * MIB + 8192]);
    std::fs::write(&img, &data).unwrap();
    let v2 = store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap().version;
    let r2 = store.replicate_version(&v2, &replica, &ReplicateOptions::default()).unwrap();
    assert!(r2.disks[0].changed_only);
    assert!(r2.read_bytes <= 2 * MIB as u64 + (1 << 20), "read {} for one changed window", r2.read_bytes);
    assert!(read_all(&*replica.point_disk(r2.point, 0).unwrap()) == data);
    let h = replica.history().unwrap();
    assert_eq!(h.iter().map(|r| (r.point, r.result.as_str())).collect::<Vec<_>>(), [(Some(1), "ok"), (Some(2), "ok")]);
}

/// Runs both ends of `jobs` (sender, receiver) on two threads, the
/// listening end bound first.
fn ends(
    sender: &ReplicationJob,
    receiver: &ReplicationJob,
) -> (alike::Result<alike::EndReport>, alike::Result<alike::EndReport>) {
    let (listening, dialling) = if sender.dials() { (receiver, sender) } else { (sender, receiver) };
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut dialling = dialling.clone();
    dialling.peer = Some(addr.to_string());
    std::thread::scope(|sc| {
        let a = sc.spawn(move || alike::run_end(listening, JobLink::Listener(l), &EndOptions::default()));
        let b = alike::run_end(&dialling, JobLink::FromJob, &EndOptions::default());
        let a = a.join().unwrap();
        if listening.role == JobRole::Sender { (a, b) } else { (b, a) }
    })
}

#[test]
fn ends_from_job_descriptions_over_tcp_with_change_tracking_a_seed_and_one_pass_in_pull() {
    let env = Env::new();
    let source_store = env.create(false);
    let mut data = disk(4, 10 * MIB);
    let img = env.path("d.img");
    std::fs::write(&img, &data).unwrap();
    let v1 = source_store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap().version;
    let secret = JobSecret::generate().unwrap();
    let mut store_spec = JobStore::new(env.path("store").to_str().unwrap());
    store_spec.cache_dir = Some(env.cache());

    // The sender reads the VM's latest version from the store, keeps change-tracking state.
    let mut sender = ReplicationJob::new("job-7", "vm", JobRole::Sender, secret.clone());
    sender.disks.push(JobSource::StoreVersion { store: store_spec.clone(), version: "latest".into(), disk: None });
    sender.state_dir = Some(env.path("state"));
    sender.peer = Some("placeholder".into());
    // The receiver seeds its first point from the same version (a copy the receiver can read),
    // and backs each new point up into its own store (one-pass, pull: the receiver is closer to it).
    let mut receiver = ReplicationJob::new("job-7", "vm", JobRole::Receiver, secret);
    receiver.replica = Some(JobReplica::Dir { path: env.path("replica") });
    receiver.seed = Some(JobSeed::new(store_spec.clone(), v1.id.clone()));
    receiver.keep = Some(2);
    let (s, r) = ends(&sender, &receiver);
    let (s, r) = (s.unwrap(), r.unwrap());
    assert_eq!((s.point, r.point), (1, 1));
    assert_eq!(r.replica.as_ref().unwrap().needed_bytes, 0, "the seed held everything");
    assert!(s.sent_bytes < 256 << 10, "only offers crossed: {}", s.sent_bytes);

    // Pull, with one-pass at the receiver.
    let backup_store = env.path("backup");
    alike::Store::builder().no_encryption().cache_dir(env.path("bcache")).create(&backup_store).unwrap();
    let mut bspec = JobStore::new(backup_store.to_str().unwrap());
    bspec.cache_dir = Some(env.path("bcache"));
    for round in 0..2 {
        scatter(&mut data, 10 + round, 6);
        std::fs::write(&img, &data).unwrap();
        source_store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap();
        let mut s_job = sender.clone();
        s_job.flow = Flow::Pull;
        s_job.peer = None;
        let mut r_job = receiver.clone();
        r_job.flow = Flow::Pull;
        r_job.peer = Some("placeholder".into());
        r_job.backup_to = Some(bspec.clone());
        let (s, r) = ends(&s_job, &r_job);
        let (s, r) = (s.unwrap(), r.unwrap());
        assert!(s.disks[0].changed_only, "round {round}: the store version's change token was used");
        assert!(s.read_bytes < 2 * MIB as u64, "round {round}: read {}", s.read_bytes);
        assert_eq!(r.read_bytes, s.read_bytes, "the receiver records what the sender read");
        let b = r.backup.as_ref().unwrap();
        let replica = Replica::open(env.path("replica")).unwrap();
        assert!(read_all(&*replica.point_disk(r.point, 0).unwrap()) == data);
        let bs = alike::Store::builder().cache_dir(env.path("bcache")).open(&backup_store).unwrap();
        let v = bs.version(&b.version.id, None).unwrap();
        bs.restore_to_file(&v, 0, env.path("r.img"), &alike::RestoreOptions::default().force(true)).unwrap();
        assert!(std::fs::read(env.path("r.img")).unwrap() == data, "the one-pass version is the point");
    }
    let replica = Replica::open(env.path("replica")).unwrap();
    assert_eq!(replica.points().unwrap().len(), 2, "keep 2");
    assert_eq!(replica.history().unwrap().len(), 3);
}

#[test]
fn options_and_jobs_are_checked_first() {
    let env = Env::new();
    let replica = Replica::open_or_create(env.path("replica"), "vm").unwrap();
    let src = MemSource { label: "d".into(), data: vec![1; 4096] };
    for o in [ReplicateOptions::default().keep(0), ReplicateOptions::default().bwlimit(10)] {
        let e = alike::replicate("vm", &[&src], &replica, &o).unwrap_err();
        assert_eq!(e.kind(), alike::ErrorKind::InvalidArgument, "{e}");
    }
    let e = alike::replicate("other", &[&src], &replica, &ReplicateOptions::default()).unwrap_err();
    assert!(e.to_string().contains("\"other\""), "{e}");
    assert!(replica.points().unwrap().is_empty());
    let job = ReplicationJob::new("j", "vm", JobRole::Sender, JobSecret::from_bytes([0; 32]));
    let e = alike::run_end(&job, JobLink::FromJob, &EndOptions::default()).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::InvalidArgument);
}
