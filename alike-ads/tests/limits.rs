//! Secrets and untrusted lengths: key files and key objects are read
//! bounded and never echoed, a bad key object does not lock the user out,
//! secret-bearing files are their owner's only, a folder in use is named.
#![allow(missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use alike_ads::{Backend, CreateOptions, Error, KeyObject, LocalBackend, OpenOptions, Repository};
use alike_core::{ErrorKind, KdfParams};

fn create_options(dir: &Path, key_file: bool) -> CreateOptions {
    let mut c = CreateOptions::default();
    c.passphrase = Some(b"pw".to_vec());
    c.kdf = KdfParams::insecure_fast();
    if key_file {
        c.key_file = Some(dir.join("store.key"));
    }
    c
}

fn open_options(dir: &Path, pw: Option<&str>, key_file: Option<&Path>) -> OpenOptions {
    let mut o = OpenOptions::default();
    o.cache_dir = Some(dir.join("cache"));
    o.passphrase = pw.map(|p| p.as_bytes().to_vec());
    o.key_file = key_file.map(Path::to_owned);
    o
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn key_files_keys_config_and_cache_are_private_and_a_key_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    Repository::create_local(&store, &create_options(dir.path(), true)).unwrap();
    let kf = dir.path().join("store.key");
    assert_eq!(mode(&kf), 0o600, "the raw master key is its owner's only");
    assert_eq!(mode(&store.join("config")), 0o600);
    let keys: Vec<_> = std::fs::read_dir(store.join("keys")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(mode(&keys[0]), 0o600);
    let repo = Repository::open_local(&store, &open_options(dir.path(), None, Some(&kf))).unwrap();
    let cache = dir.path().join("cache").join(&repo.config().store_id);
    assert_eq!(mode(&cache), 0o700, "the cache folder names the store's chunks");
    assert_eq!(mode(&cache.join("index-v1.redb")), 0o600);
    drop(repo);

    // A second store asked to export its key over the first one's file.
    let before = std::fs::read(&kf).unwrap();
    let e = Repository::create_local(dir.path().join("store2"), &create_options(dir.path(), true)).unwrap_err();
    assert!(matches!(e, Error::FileExists { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert!(e.to_string().contains("store.key") && e.to_string().contains("refusing to overwrite"), "{e}");
    assert_eq!(std::fs::read(&kf).unwrap(), before, "the existing key file is untouched");
    assert!(!dir.path().join("store2/config").exists());
    Repository::open_local(&store, &open_options(dir.path(), None, Some(&kf))).unwrap();
}

#[test]
fn a_key_file_is_a_small_regular_file_and_its_content_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    Repository::create_local(&store, &create_options(dir.path(), false)).unwrap();
    let open = |kf: &Path| Repository::open_local(&store, &open_options(dir.path(), None, Some(kf))).unwrap_err();

    let started = Instant::now();
    let e = open(Path::new("/dev/zero"));
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let big = dir.path().join("big.key");
    std::fs::File::create(&big).unwrap().set_len(1 << 30).unwrap();
    let e = open(&big).to_string();
    assert!(e.contains("larger than 64 KiB"), "{e}");

    // A passphrase file given by mistake: not one byte of it in the error.
    let pw = dir.path().join("passphrase.txt");
    std::fs::write(&pw, "line1secret\nline2\n").unwrap();
    let e = open(&pw).to_string();
    assert!(e.contains("is not an alike key file"), "{e}");
    assert!(!e.contains("6c696e65") && !e.contains("line1") && !e.contains("secret"), "{e}");
}

#[test]
fn every_key_object_is_tried_and_the_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    Repository::create_local(&store, &create_options(dir.path(), false)).unwrap();
    let be = LocalBackend::new(&store);
    let good = be.list("keys/").unwrap()[0].0.clone();
    // Listed before the good one.
    be.write("keys/0000garbage", b"not a key object at all").unwrap();
    let forged = KeyObject {
        kdf: "argon2id".into(),
        m_cost: u32::MAX,
        t_cost: u32::MAX,
        p_cost: 1,
        salt: "00".repeat(32),
        sealed: "00".repeat(60),
        created_ms: 0,
        host: None,
    };
    be.write("keys/0001forged", &forged.encode()).unwrap();

    let started = Instant::now();
    Repository::open_local(&store, &open_options(dir.path(), Some("pw"), None)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(30), "a forged cost is refused, not paid");

    let e = Repository::open_local(&store, &open_options(dir.path(), Some("wrong"), None)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongPassphrase, "{e}");
    let t = e.to_string();
    assert!(t.contains(&good) && t.contains("keys/0000garbage") && t.contains("keys/0001forged"), "{t}");
    assert!(t.contains("above the limits"), "{t}");

    be.delete(&good).unwrap();
    let e = Repository::open_local(&store, &open_options(dir.path(), Some("pw"), None)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corruption, "{e}");
    let t = e.to_string();
    assert!(t.contains("no usable key object") && t.contains("keys/0000garbage"), "{t}");
}

#[test]
fn create_in_a_folder_in_use_says_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("photos");
    std::fs::create_dir_all(target.join("2024")).unwrap();
    for i in 0..7 {
        std::fs::write(target.join(format!("img{i}.jpg")), b"x").unwrap();
    }
    let e = Repository::create_local(&target, &create_options(dir.path(), false)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let t = e.to_string();
    assert!(!t.contains("already holds a store"), "{t}");
    assert!(t.contains("holds no store") && t.contains("8 entries") && t.contains("and 3 more"), "{t}");
    assert!(t.contains(".jpg") || t.contains("2024/"), "{t}");

    let store = dir.path().join("store");
    Repository::create_local(&store, &create_options(dir.path(), false)).unwrap();
    let e = Repository::create_local(&store, &create_options(dir.path(), false)).unwrap_err();
    assert!(e.to_string().contains("already holds a store"), "{e}");
}
