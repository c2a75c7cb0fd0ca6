//! The concurrency matrix (alike-ads crate doc): every pair of operations
//! marked "allowed at once" runs at the same time from two handles with
//! separate caches (as two machines would), and the store stays whole.

use std::sync::Barrier;

use alike::{BackupOptions, RestoreOptions, RetentionPolicy, Store, VerifyOptions};
use alike_testing::{sha256_file, sparse_image};

use super::util::Env;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Backup,
    Restore,
    Verify,
    Prune,
    Gc,
}

struct Fixture {
    env: Env,
    keep_id: String,
    keep_sha: String,
}

fn fixture() -> Fixture {
    let env = Env::new();
    let store = env.create(true);
    for (i, vm) in [(1u64, "old"), (2, "old"), (3, "old")] {
        let img = env.path(&format!("old{i}.img"));
        sparse_image(&img, 6 << 20, 15, i);
        store.backup_images(vm, &[&img], &BackupOptions::default().time_ms(i as i64)).unwrap();
    }
    let k = env.path("keep.img");
    sparse_image(&k, 8 << 20, 20, 9);
    let keep_id = store.backup_images("keep", &[&k], &BackupOptions::default()).unwrap().version.id;
    Fixture { keep_sha: sha256_file(&k), keep_id, env }
}

fn handle(f: &Fixture, n: usize) -> Store {
    Store::builder().cache_dir(f.env.path(&format!("cache-{n}"))).passphrase("pw").open(f.env.path("store")).unwrap()
}

/// Runs `op`; returns the id of a version it created, if any.
fn run(f: &Fixture, s: &Store, op: Op, n: usize) -> Option<(String, String)> {
    match op {
        Op::Backup => {
            let img = f.env.path(&format!("new{n}.img"));
            sparse_image(&img, 8 << 20, 20, 100 + n as u64);
            let v = s.backup_images(&format!("new{n}"), &[&img], &BackupOptions::default()).unwrap().version;
            Some((v.id, sha256_file(&img)))
        }
        Op::Restore => {
            let out = f.env.path(&format!("r{n}.img"));
            s.restore_to_file(&s.version(&f.keep_id, None).unwrap(), 0, &out, &RestoreOptions::default()).unwrap();
            assert_eq!(sha256_file(&out), f.keep_sha);
            None
        }
        Op::Verify => {
            let r = s.verify(&VerifyOptions::default().full(true)).unwrap();
            assert!(r.ok(), "{:#?}", r.damaged);
            None
        }
        Op::Prune => {
            let mut p = RetentionPolicy::default();
            p.keep_last = 1;
            s.prune(Some("old"), &p, false).unwrap();
            None
        }
        Op::Gc => {
            match s.gc(&alike::MaintenanceOptions::default()) {
                Ok(_) => {}
                Err(e) => assert_eq!(e.kind(), alike::ErrorKind::Busy, "{e}"),
            }
            None
        }
    }
}

#[test]
fn every_allowed_pair_runs_at_once() {
    use Op::*;
    let ops = [Backup, Restore, Verify, Prune, Gc];
    for (i, a) in ops.iter().enumerate() {
        for b in &ops[i..] {
            let f = fixture();
            let (h1, h2) = (handle(&f, 1), handle(&f, 2));
            let barrier = Barrier::new(2);
            let created: Vec<(String, String)> = std::thread::scope(|sc| {
                let t1 = sc.spawn(|| {
                    barrier.wait();
                    run(&f, &h1, *a, 1)
                });
                let t2 = sc.spawn(|| {
                    barrier.wait();
                    run(&f, &h2, *b, 2)
                });
                [
                    t1.join().unwrap_or_else(|_| panic!("{a:?} failed beside {b:?}")),
                    t2.join().unwrap_or_else(|_| panic!("{b:?} failed beside {a:?}")),
                ]
                .into_iter()
                .flatten()
                .collect()
            });
            // Afterwards, and after one more gc, everything that should be there is whole.
            let s = handle(&f, 3);
            s.gc(&alike::MaintenanceOptions::default()).unwrap();
            let r = s.verify(&VerifyOptions::default().full(true)).unwrap();
            assert!(r.ok(), "{a:?} with {b:?}: {:#?}", r.damaged);
            for (id, sha) in created.iter().chain(std::iter::once(&(f.keep_id.clone(), f.keep_sha.clone()))) {
                let out = f.env.path("check.img");
                s.restore_to_file(&s.version(id, None).unwrap(), 0, &out, &RestoreOptions::default().force(true))
                    .unwrap();
                assert_eq!(&sha256_file(&out), sha, "{a:?} with {b:?}: version {id}");
            }
        }
    }
}

/// A handle opened before another writer's backup restores and verifies
/// that backup: its cache catches up with the store instead of calling the
/// new version's chunks missing.
#[test]
fn an_older_handle_sees_a_newer_version() {
    let env = Env::new();
    let first = env.create(false);
    let img = env.path("d.img");
    std::fs::write(&img, alike_testing::Rng::new(31).noise(1 << 20)).unwrap();
    let other = alike::Store::builder().cache_dir(env.path("cache-2")).open(env.path("store")).unwrap();
    let v = other.backup_images("vm", &[&img], &alike::BackupOptions::default()).unwrap().version;
    assert!(first.verify(&alike::VerifyOptions::default()).unwrap().ok());
    let out = env.path("out.img");
    first.restore_to_file(&v, 0, &out, &alike::RestoreOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
}
