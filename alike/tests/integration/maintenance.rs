//! prune, pins, gc (delete and repack), gc safety against a concurrent
//! writer, and stale lock recovery.

use std::sync::Arc;

use alike::{BackupOptions, RetentionPolicy, VerifyOptions};
use alike_ads::{LocalBackend, LockKind, OpenOptions, Repository};
use alike_core::backup::{BackupJob, EngineParams};
use alike_core::{RawFileSource, RunOptions, VmInfo};
use alike_testing::{sha256_file, sparse_image};

use super::util::{Env, restore_sha};

fn keep_last(n: u32) -> RetentionPolicy {
    let mut p = RetentionPolicy::default();
    p.keep_last = n;
    p
}

fn pack_bytes(env: &Env) -> u64 {
    fn walk(d: &std::path::Path) -> u64 {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.map(|e| e.unwrap().path())
                    .map(|p| if p.is_dir() { walk(&p) } else { std::fs::metadata(&p).unwrap().len() })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&env.path("store/packs"))
}

#[test]
fn prune_with_dry_run_and_pins_then_gc_reclaims_space() {
    let env = Env::new();
    let store = env.create(true);
    let mut imgs = Vec::new();
    let mut ids = Vec::new();
    for i in 0..4u64 {
        let img = env.path(&format!("v{i}.img"));
        sparse_image(&img, 6 << 20, 12, 50 + i); // unrelated content each time
        ids.push(
            store.backup_images("vm", &[&img], &BackupOptions::default().time_ms(1_000 * i as i64)).unwrap().version.id,
        );
        imgs.push(img);
    }
    store.pin(&ids[0][..10]).unwrap();
    let dry = store.prune(Some("vm"), &keep_last(1), true).unwrap();
    assert!(dry.removed.is_empty());
    let would: Vec<_> = dry.decisions[0].1.iter().filter(|d| !d.keep).map(|d| d.id.clone()).collect();
    assert_eq!(would, vec![ids[2].clone(), ids[1].clone()]);
    assert_eq!(store.versions(None).unwrap().len(), 4, "a dry run removes nothing");
    let e = store.prune(Some("vm"), &RetentionPolicy::default(), false).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::InvalidArgument);

    let before = pack_bytes(&env);
    let r = store.prune(Some("vm"), &keep_last(1), false).unwrap();
    assert_eq!(r.removed.len(), 2);
    let left: Vec<String> = store.versions(None).unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(left, vec![ids[0].clone(), ids[3].clone()], "pinned v0 and newest v3 stay");

    let g = store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert!(g.dead_chunks > 0 && g.deleted + g.repacked > 0, "{g:?}");
    assert_eq!(g.deferred, 0);
    let after = pack_bytes(&env);
    assert!(after < before * 3 / 4, "gc freed too little: {before} -> {after} ({g:?})");
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
    assert_eq!(
        restore_sha(&store, &store.version(&ids[0], None).unwrap(), env.dir.path()),
        vec![sha256_file(&imgs[0])]
    );
    assert_eq!(
        restore_sha(&store, &store.version(&ids[3], None).unwrap(), env.dir.path()),
        vec![sha256_file(&imgs[3])]
    );
    // A second gc finds nothing more to do.
    let g2 = store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert_eq!((g2.dead_chunks, g2.deleted, g2.condemned), (0, 0, 0), "{g2:?}");
}

#[test]
fn gc_repacks_mostly_dead_packs() {
    let env = Env::new();
    let store = {
        let mut b = alike::Store::builder();
        b.cache_dir(env.cache()).no_encryption().pack_size(64 << 20); // one pack holds everything
        b.create(env.path("store")).unwrap()
    };
    let (a, b) = (env.path("a.img"), env.path("b.img"));
    sparse_image(&a, 8 << 20, 20, 1);
    sparse_image(&b, 1 << 20, 3, 2);
    // Both versions land in one pack per backup; remove the big one.
    let va = store.backup_images("big", &[&a], &BackupOptions::default()).unwrap().version;
    let vb = store.backup_images("small", &[&b], &BackupOptions::default()).unwrap().version;
    let _ = va;
    let mut p = RetentionPolicy::default();
    p.keep_last = 1;
    // Make "big" have a second, tiny version so keep_last=1 drops the big one.
    let tiny = env.path("t.img");
    sparse_image(&tiny, 64 << 10, 1, 3);
    store.backup_images("big", &[&tiny], &BackupOptions::default()).unwrap();
    store.prune(Some("big"), &p, false).unwrap();
    let g = store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert!(g.condemned >= 1, "{g:?}");
    assert!(g.deleted >= 1, "{g:?}");
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
    assert_eq!(restore_sha(&store, &vb, env.dir.path()), vec![sha256_file(&b)]);
}

#[test]
fn gc_never_deletes_what_a_running_backup_deduplicated_against() {
    let env = Env::new();
    let store = env.create_fixed(false);
    let (a1, a2) = (env.path("a1.img"), env.path("a2.img"));
    sparse_image(&a1, 6 << 20, 15, 11);
    sparse_image(&a2, 6 << 20, 15, 12);
    store.backup_images("a", &[&a1], &BackupOptions::default().time_ms(1)).unwrap();
    store.backup_images("a", &[&a2], &BackupOptions::default().time_ms(2)).unwrap();

    // Another writer (own cache, as on another machine) starts now.
    let mut o = OpenOptions::default();
    o.cache_dir = Some(env.path("cache2"));
    let writer = Repository::open(Arc::new(LocalBackend::new(env.path("store"))), &o).unwrap();
    let lock = writer.begin_write().unwrap();

    // a1 is pruned; GC condemns its packs but must not delete them while the writer runs.
    store.prune(Some("a"), &keep_last(1), false).unwrap();
    let g = store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert!(g.condemned > 0, "{g:?}");
    assert_eq!(g.deleted, 0, "deleted under a running backup: {g:?}");
    assert!(g.deferred > 0);

    // The writer deduplicates against a1's (condemned) chunks and commits.
    let src = RawFileSource::open(&a1).unwrap();
    let job = BackupJob {
        vm: VmInfo::named("c"),
        disks: vec![&src],
        parent: None,
        time_ms: 3,
        host: None,
        origin: None,
        no_parent_reason: None,
    };
    let (cid, _) =
        alike_core::backup::backup(&writer, writer.keys(), &EngineParams::new(65536), job, &RunOptions::default())
            .unwrap();
    drop(lock);

    // Now GC may delete, but the new version rescues what it references.
    let g = store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert!(g.rescued > 0, "{g:?}");
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
    assert_eq!(restore_sha(&store, &store.version(&cid, None).unwrap(), env.dir.path()), vec![sha256_file(&a1)]);

    // A backup that starts after a condemnation stores condemned chunks again instead of using them.
    let e = store.forget("0000").unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::NotFound);
    store.forget(&cid).unwrap();
    let reader = writer.lock(LockKind::Read).unwrap();
    let g = store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert!(g.condemned > 0 && g.deleted == 0 && g.deferred > 0, "a running read defers deletion: {g:?}");
    let y = store.backup_images("y", &[&a1], &BackupOptions::default()).unwrap();
    assert!(y.new_bytes > 1 << 20, "a backup after condemnation must not reuse condemned packs: {}", y.new_bytes);
    drop(reader);
    let g = store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert!(g.deleted > 0 && g.rescued == 0, "{g:?}");
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
    assert_eq!(restore_sha(&store, &y.version, env.dir.path()), vec![sha256_file(&a1)]);
}

#[test]
fn stale_locks_are_recovered_and_gc_is_exclusive() {
    let env = Env::new();
    let store = env.create(false);
    let repo = Repository::open(Arc::new(LocalBackend::new(env.path("store"))), &{
        let mut o = OpenOptions::default();
        o.cache_dir = Some(env.path("cache2"));
        o
    })
    .unwrap();
    // A lock left by a process that died on this host.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let body = format!(r#"{{"kind":"gc","host":"{host}","pid":{dead_pid},"created_ms":1,"refreshed_ms":1}}"#);
    let mut obj = vec![0x89, b'A', b'L', b'K', b'L', b'K', b'\r', b'\n', 1, 0, 0, 0];
    obj.extend_from_slice(body.as_bytes());
    std::fs::create_dir_all(env.path("store/locks")).unwrap();
    std::fs::write(env.path("store/locks/deadbeef"), obj).unwrap();
    // gc proceeds: the dead GC's lock is stale and removed.
    store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert!(!env.path("store/locks/deadbeef").exists());
    // A live GC lock excludes another GC.
    let held = repo.lock(LockKind::Gc).unwrap();
    let e = store.gc(&alike::MaintenanceOptions::default()).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::Busy, "{e}");
    drop(held);
    store.gc(&alike::MaintenanceOptions::default()).unwrap();
    assert!(store.locks().unwrap().is_empty());
}

#[test]
fn gc_and_rebuild_index_report_progress_and_cancel_before_changing_anything() {
    let env = Env::new();
    let store = env.create(false);
    for i in 0..3u64 {
        let img = env.path(&format!("p{i}.img"));
        sparse_image(&img, 4 << 20, 8, 70 + i);
        store.backup_images("vm", &[&img], &BackupOptions::default().time_ms(i as i64)).unwrap();
    }
    store.prune(Some("vm"), &keep_last(1), false).unwrap();
    // Cancelled: nothing condemned, nothing deleted.
    let token = alike::CancelToken::new();
    token.cancel();
    let e = store.gc(&alike::MaintenanceOptions::default().cancel_token(token)).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::Cancelled, "{e}");
    assert!(!env.path("store/gc").exists() || std::fs::read_dir(env.path("store/gc")).unwrap().count() == 0);
    // With progress: counts maps up to the total.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let g = store
        .gc(&alike::MaintenanceOptions::default()
            .progress(move |p| s2.lock().unwrap().push((p.phase, p.bytes_done, p.bytes_total))))
        .unwrap();
    assert!(g.deleted > 0, "{g:?}");
    let seen = seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert!(last.0 == alike::Phase::Gc && last.1 == last.2 && last.2 > 0, "{seen:?}");
    // rebuild-index: packs counted, cancellable before the index is touched.
    let before: Vec<_> = std::fs::read_dir(env.path("store/index")).unwrap().map(|e| e.unwrap().file_name()).collect();
    let token = alike::CancelToken::new();
    token.cancel();
    assert!(store.rebuild_index(&alike::MaintenanceOptions::default().cancel_token(token)).is_err());
    let after: Vec<_> = std::fs::read_dir(env.path("store/index")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before.len(), after.len());
    let packs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p2 = packs.clone();
    let n = store
        .rebuild_index(
            &alike::MaintenanceOptions::default()
                .progress(move |p| p2.store(p.bytes_total, std::sync::atomic::Ordering::SeqCst)),
        )
        .unwrap()
        .packs_indexed;
    assert_eq!(packs.load(std::sync::atomic::Ordering::SeqCst), n);
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
}
