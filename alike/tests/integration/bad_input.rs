//! Bad input gets a clear error naming what was wrong; nothing stored changes.

use alike::{BackupOptions, ErrorKind, MemSource, Store, VmInfo};
use alike_testing::{FailingSource, sha256_file, sparse_image};

use super::util::{Env, restore_sha};

fn store_files(env: &Env) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![env.path("store")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path().display().to_string(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn wrong_or_missing_passphrase() {
    let env = Env::new();
    env.create(true);
    let e = Store::builder().cache_dir(env.cache()).passphrase("nope").open(env.path("store")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongPassphrase, "{e}");
    assert!(e.to_string().contains("wrong passphrase"));
    let e = Store::builder().cache_dir(env.cache()).open(env.path("store")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PassphraseRequired, "{e}");
}

#[test]
fn key_file_opens_without_passphrase() {
    let env = Env::new();
    let kf = env.path("store.key");
    Store::builder()
        .cache_dir(env.cache())
        .passphrase("pw")
        .insecure_fast_kdf()
        .key_file(&kf)
        .create(env.path("store"))
        .unwrap();
    let s = Store::builder().cache_dir(env.cache()).key_file(&kf).open(env.path("store")).unwrap();
    assert!(s.is_encrypted());
    // A key file of another store is refused by name.
    let env2 = Env::new();
    Store::builder().cache_dir(env2.cache()).passphrase("pw").insecure_fast_kdf().create(env2.path("store")).unwrap();
    let e = Store::builder().cache_dir(env2.cache()).key_file(&kf).open(env2.path("store")).unwrap_err();
    assert!(e.to_string().contains("belongs to store"), "{e}");
}

#[test]
fn missing_corrupt_and_future_config() {
    let env = Env::new();
    let e = Store::builder().cache_dir(env.cache()).open(env.path("nothing")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotAStore, "{e}");
    env.create(true);
    let cfg = env.path("store/config");
    let good = std::fs::read(&cfg).unwrap();
    let mut bad = good.clone();
    bad[40] ^= 1;
    std::fs::write(&cfg, &bad).unwrap();
    let e = Store::builder().cache_dir(env.cache()).passphrase("pw").open(env.path("store")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corruption, "{e}");
    assert!(e.to_string().contains("config"), "{e}");
    let mut future = good.clone();
    future[8] = 9;
    std::fs::write(&cfg, &future).unwrap();
    let e = Store::builder().cache_dir(env.cache()).passphrase("pw").open(env.path("store")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedVersion, "{e}");
    assert!(e.to_string().contains("format version 9"), "{e}");
    std::fs::write(&cfg, &good).unwrap();
    env.open();
    // Creating over an existing store is refused.
    let e = Store::builder().no_encryption().cache_dir(env.cache()).create(env.path("store")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
}

#[test]
fn downgrade_to_unencrypted_is_refused() {
    let env = Env::new();
    env.create(true);
    let cfg = env.path("store/config");
    let bytes = std::fs::read(&cfg).unwrap();
    let mut c: alike_ads::StoreConfig = serde_json::from_slice(&bytes[12..bytes.len() - 32]).unwrap();
    c.encryption = "none".into();
    std::fs::write(&cfg, alike_ads::encode_config(&c)).unwrap();
    let e = Store::builder().cache_dir(env.cache()).open(env.path("store")).unwrap_err();
    assert!(e.to_string().contains("refusing to write plaintext"), "{e}");
}

#[test]
fn a_source_failing_mid_read_writes_no_version() {
    let env = Env::new();
    let store = env.create(true);
    let src = FailingSource { inner: MemSource { label: "x".into(), data: vec![5u8; 8 << 20] }, fail_at: 5 << 20 };
    let before = store_files(&env);
    let e = store.backup(VmInfo::named("vm"), &[&src], &BackupOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("bad sector") && e.to_string().contains("offset"), "{e}");
    assert!(store.versions(None).unwrap().is_empty());
    let after = store_files(&env);
    let before_set: std::collections::HashMap<_, _> = before.into_iter().collect();
    for (k, v) in &before_set {
        assert_eq!(after.iter().find(|(a, _)| a == k).map(|(_, b)| b), Some(v), "{k} changed");
    }
}

#[test]
fn damaged_and_truncated_packs_fail_restore_loudly() {
    let env = Env::new();
    let store = env.create(true);
    let img = env.path("d.img");
    sparse_image(&img, 16 << 20, 30, 8);
    let v = store.backup_images("vm", &[&img], &BackupOptions::default()).unwrap().version;
    let img2 = env.path("e.img");
    sparse_image(&img2, 4 << 20, 5, 99);
    let other = store.backup_images("other", &[&img2], &BackupOptions::default()).unwrap().version;
    let packs: Vec<_> = walk(&env.path("store/packs"));
    // The biggest pack holds vm's data.
    let pack = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap().clone();
    let good = std::fs::read(&pack).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0xff;
    std::fs::write(&pack, &bad).unwrap();
    let out = env.path("out.img");
    let e = store.restore_to_file(&v, 0, &out, &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corruption, "{e}");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(!out.exists(), "no half-restored file under the final name");
    // Truncated: the read past the end is named.
    std::fs::write(&pack, &good[..good.len() / 3]).unwrap();
    let e = store.restore_to_file(&v, 0, &out, &Default::default()).unwrap_err();
    assert!(e.to_string().contains("truncated") || e.to_string().contains("authentication"), "{e}");
    // Unaffected versions still restore if their data lives elsewhere.
    std::fs::write(&pack, &good).unwrap();
    assert_eq!(restore_sha(&store, &v, env.dir.path()), vec![sha256_file(&img)]);
    assert_eq!(restore_sha(&store, &other, env.dir.path()), vec![sha256_file(&img2)]);
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn bad_arguments_are_named() {
    let env = Env::new();
    let e =
        Store::builder().no_encryption().block_size(100_000).cache_dir(env.cache()).create(env.path("s")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("100000"), "{e}");
    let store = env.create(false);
    let e = store.version("zz", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = store.version("abcdef", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = store.backup_images("vm", &[env.path("missing.img")], &BackupOptions::default()).unwrap_err();
    assert!(e.to_string().contains("missing.img"), "{e}");
}
