//! Bit-exact restores of awkward images, encrypted and not.

use std::os::unix::fs::MetadataExt;

use alike::{BackupOptions, RestoreOptions};
use alike_testing::{sha256_file, sparse_image};

use super::util::{Env, restore_sha};

fn round_trip(size: u64, extents: usize, encrypted: bool) {
    let env = Env::new();
    let store = env.create(encrypted);
    let img = env.path("d.img");
    sparse_image(&img, size, extents, size ^ extents as u64);
    let r = store.backup_images("vm", &[&img], &BackupOptions::default().allow_empty(size == 0)).unwrap();
    assert_eq!(r.version.disks[0].size, size);
    assert_eq!(restore_sha(&store, &r.version, env.dir.path()), vec![sha256_file(&img)], "size {size}");
}

#[test]
fn sparse_scattered_image() {
    round_trip(64 << 20, 40, true);
    round_trip(64 << 20, 40, false);
}

#[test]
fn size_not_a_multiple_of_the_block_size() {
    round_trip((10 << 20) + 12345, 12, true);
    round_trip(65536 * 3 + 1, 3, false);
}

#[test]
fn empty_and_one_block_images() {
    round_trip(0, 0, true);
    round_trip(65536, 1, true);
    round_trip(100, 1, false);
}

#[test]
fn holes_stay_sparse_on_restore() {
    let env = Env::new();
    let store = env.create(true);
    let img = env.path("d.img");
    sparse_image(&img, 256 << 20, 5, 7);
    let v = store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap().version;
    let out = env.path("out.img");
    let rep = store.restore_to_file(&v, 0, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&img));
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(allocated < 8 << 20, "restored image allocates {allocated} bytes of 256 MiB");
    assert!(rep.hole_bytes > 240 << 20);
}

#[test]
fn many_versions_all_restore() {
    let env = Env::new();
    let store = env.create(true);
    let img = env.path("d.img");
    sparse_image(&img, 8 << 20, 10, 1);
    let mut expected = Vec::new();
    for i in 0..8 {
        alike_testing::scribble(&img, 5, 100 + i);
        let v = store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap().version;
        expected.push((v.id.clone(), sha256_file(&img)));
    }
    let store = env.open();
    let versions = store.versions(Some("vm")).unwrap();
    assert_eq!(versions.len(), 8);
    for (id, sha) in expected {
        let v = store.version(&id[..10], None).unwrap();
        assert_eq!(restore_sha(&store, &v, env.dir.path()), vec![sha]);
    }
}

#[test]
fn multi_disk_vm_and_version_lookup() {
    let env = Env::new();
    let store = env.create(false);
    let (a, b) = (env.path("a.img"), env.path("b.img"));
    sparse_image(&a, 3 << 20, 4, 1);
    sparse_image(&b, 5 << 20, 4, 2);
    let v = store.backup_images("db", &[&a, &b], &BackupOptions::default()).unwrap().version;
    assert_eq!(v.disks.iter().map(|d| d.size).collect::<Vec<_>>(), vec![3 << 20, 5 << 20]);
    assert_eq!(restore_sha(&store, &v, env.dir.path()), vec![sha256_file(&a), sha256_file(&b)]);
    assert_eq!(store.version("latest", Some("db")).unwrap().id, v.id);
    assert!(store.version("latest", Some("nope")).is_err());
    let e = store.restore_to_file(&v, 2, env.path("x.img"), &Default::default()).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::InvalidArgument, "{e}");
    assert!(!env.path("x.img").exists());
}

#[test]
fn progress_is_reported_and_cancel_stops_cleanly() {
    let env = Env::new();
    let store = env.create(true);
    let img = env.path("d.img");
    sparse_image(&img, 32 << 20, 60, 3);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let opts = BackupOptions::default().progress(move |p| s2.lock().unwrap().push((p.bytes_done, p.bytes_total)));
    store.backup_images("vm", &[&img], &opts).unwrap();
    let seen = seen.lock().unwrap();
    let (done, total) = *seen.last().unwrap();
    assert!(total > 0 && done == total, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0 || w[1].0 == 0));

    let token = alike::CancelToken::new();
    token.cancel();
    let img2 = env.path("e.img");
    sparse_image(&img2, 32 << 20, 60, 4);
    let e = store.backup_images("other", &[&img2], &BackupOptions::default().cancel_token(token)).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::Cancelled);
    assert!(store.versions(Some("other")).unwrap().is_empty());
    assert_eq!(std::fs::read_dir(env.path("store/tmp")).map(|d| d.count()).unwrap_or(0), 0, "spool files left behind");
}
