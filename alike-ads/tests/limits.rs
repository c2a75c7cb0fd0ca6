//! Secrets and untrusted lengths: key files and key objects are read
//! bounded and never echoed, a bad key object does not lock the user out,
//! secret-bearing files are their owner's only, a folder in use is named,
//! and an object-storage body is never read past what was asked for.
#![allow(missing_docs)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use alike_ads::{Backend, CreateOptions, Error, KeyObject, LocalBackend, ObjectOptions, OpenOptions, Repository};
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

/// A one-connection-at-a-time HTTP server that answers every request with
/// `head` and then up to `body` bytes (in 64 KiB pieces, chunked when the
/// head says so), and counts what it sent.
fn fake_s3(head: &'static str, body: u64) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::Ordering;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s = sent.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
                req.push(b[0]);
            }
            let chunked = head.contains("chunked");
            if c.write_all(head.as_bytes()).is_err() {
                continue;
            }
            let piece = vec![b'x'; 64 << 10];
            let mut n = 0;
            while n < body {
                let r = if chunked {
                    c.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .and_then(|_| c.write_all(&piece))
                        .and_then(|_| c.write_all(b"\r\n"))
                } else {
                    c.write_all(&piece)
                };
                if r.is_err() {
                    break;
                }
                n += piece.len() as u64;
                s.fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
        }
    });
    (url, sent)
}

fn s3_backend(endpoint: &str, spool: &Path) -> std::sync::Arc<dyn Backend> {
    let mut o = ObjectOptions::default();
    o.endpoint(endpoint).allow_http(true).path_style(true).region("us-east-1").credentials("k", "s").spool_dir(spool);
    o.max_retries = Some(0);
    alike_ads::backend_for("s3://bucket/store", &o).unwrap()
}

#[test]
fn object_storage_bodies_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // A whole-object read whose response declares 1 TiB: refused before reading.
    let (url, sent) = fake_s3(
        "HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\nETag: \"e\"\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n",
        256 << 20,
    );
    let be = s3_backend(&url, dir.path());
    let e = be.read("config").unwrap_err().to_string();
    assert!(e.contains("declares 1099511627776 bytes"), "{e}");
    assert!(sent.load(std::sync::atomic::Ordering::Relaxed) < 256 << 20);

    // A ranged read answered with an endless chunked body: stopped past the range.
    let (url, _) = fake_s3(
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99/1000\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\nETag: \"e\"\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n",
        1 << 30,
    );
    let be = s3_backend(&url, dir.path());
    match be.read_range("packs/aa/x", 0, 100) {
        Ok(b) => assert_eq!(b.len(), 100, "no more than the range"),
        Err(e) => assert!(e.to_string().contains("longer than"), "{e}"),
    }
}

#[test]
fn upload_sizes_have_ranges() {
    let dir = tempfile::tempdir().unwrap();
    for (threshold, part, what) in [
        (16 << 20, 1 << 20, "below the 5 MiB"),
        (16 << 20, 6 << 30, "above the 5 GiB"),
        (6 << 30, 8 << 20, "multipart threshold"),
    ] {
        let mut o = ObjectOptions::default();
        o.endpoint("http://127.0.0.1:9").allow_http(true).region("us-east-1").spool_dir(dir.path());
        o.multipart(threshold, part);
        let e = alike_ads::backend_for("s3://bucket/store", &o).map(drop).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains(what), "{what:?} not in {e}");
    }
}
