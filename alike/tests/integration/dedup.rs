//! Dedup across versions and VMs; the cache is only a cache; several writers.

use alike::BackupOptions;
use alike_testing::{sha256_file, sparse_image};

use super::util::{Env, restore_sha};

#[test]
fn unchanged_rerun_adds_almost_nothing() {
    let env = Env::new();
    let store = env.create(true);
    let img = env.path("d.img");
    sparse_image(&img, 32 << 20, 50, 9);
    let first = store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap();
    assert!(first.new_bytes > 1 << 20);
    let before = store.stats().unwrap().stored_bytes;
    let second = store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap();
    assert_eq!(second.new_bytes, 0);
    assert_eq!(second.new_stored_bytes, 0, "unchanged maps must dedup too");
    let added = store.stats().unwrap().stored_bytes - before;
    assert!(added < 4096, "an unchanged re-run added {added} bytes");
}

#[test]
fn a_clone_adds_only_what_differs() {
    let env = Env::new();
    let store = env.create(true);
    let img = env.path("a.img");
    sparse_image(&img, 32 << 20, 60, 11);
    store.backup_images("vm-a", &[&img], &BackupOptions::default()).unwrap();
    let clone = env.path("b.img");
    std::fs::copy(&img, &clone).unwrap();
    // Two 64 KiB-aligned blocks differ.
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&clone).unwrap();
    f.write_all_at(&[0xAB; 100], 5 << 20).unwrap();
    f.write_all_at(&[0xCD; 100], 20 << 20).unwrap();
    let r = store.backup_images("vm-b", &[&clone], &BackupOptions::default()).unwrap();
    assert!(r.new_bytes <= 2 * 65536, "clone added {} plaintext bytes", r.new_bytes);
    assert_eq!(restore_sha(&store, &r.version, env.dir.path()), vec![sha256_file(&clone)]);
    let s = store.stats().unwrap();
    assert!(s.logical_bytes as f64 / s.unique_bytes as f64 > 1.9, "{s:?}");
}

#[test]
fn deleting_the_cache_loses_nothing() {
    let env = Env::new();
    let store = env.create(true);
    let img = env.path("d.img");
    sparse_image(&img, 16 << 20, 30, 5);
    let v = store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap().version;
    drop(store);
    std::fs::remove_dir_all(env.cache()).unwrap();
    let store = env.open();
    assert_eq!(restore_sha(&store, &v, env.dir.path()), vec![sha256_file(&img)]);
    // And dedup still works against the rebuilt cache.
    assert_eq!(store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap().new_bytes, 0);
}

#[test]
fn index_rebuilt_from_pack_trailers_when_segments_are_lost() {
    let env = Env::new();
    let store = env.create(true);
    let img = env.path("d.img");
    sparse_image(&img, 16 << 20, 30, 6);
    let v = store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap().version;
    drop(store);
    std::fs::remove_dir_all(env.path("store/index")).unwrap();
    std::fs::remove_dir_all(env.cache()).unwrap();
    let store = env.open();
    let e = store.restore_to_file(&v, 0, env.path("x.img"), &Default::default()).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::Corruption, "{e}");
    assert!(e.to_string().contains("not in the store"), "{e}");
    let r = store.rebuild_index(&alike::MaintenanceOptions::default()).unwrap();
    assert!(r.packs_indexed >= 1 && r.damaged_packs.is_empty());
    assert_eq!(restore_sha(&store, &v, env.dir.path()), vec![sha256_file(&img)]);
}

#[test]
fn two_writers_in_one_process_share_a_store() {
    let env = Env::new();
    env.create(true);
    let (a, b) = (env.path("a.img"), env.path("b.img"));
    sparse_image(&a, 24 << 20, 40, 21);
    sparse_image(&b, 24 << 20, 40, 22);
    // Separate caches: as two machines would have.
    let open =
        |c: &str| alike::Store::builder().cache_dir(env.path(c)).passphrase("pw").open(env.path("store")).unwrap();
    let (s1, s2) = (open("c1"), open("c2"));
    let (r1, r2) = std::thread::scope(|sc| {
        let t1 = sc.spawn(|| s1.backup_images("vm-a", &[&a], &BackupOptions::default().threads(1)).unwrap());
        let t2 = sc.spawn(|| s2.backup_images("vm-a", &[&b], &BackupOptions::default().threads(1)).unwrap());
        (t1.join().unwrap(), t2.join().unwrap())
    });
    let s3 = open("c3");
    assert_eq!(s3.versions(None).unwrap().len(), 2);
    assert_eq!(restore_sha(&s3, &s3.version(&r1.version.id, None).unwrap(), env.dir.path()), vec![sha256_file(&a)]);
    assert_eq!(restore_sha(&s3, &s3.version(&r2.version.id, None).unwrap(), env.dir.path()), vec![sha256_file(&b)]);
}
