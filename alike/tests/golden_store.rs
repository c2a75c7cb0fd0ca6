//! Whole stores, written once and kept in `testdata/golden-store-v1.json`
//! (fixed 64 KiB blocks, format 1) and `testdata/golden-store-v2.json`
//! (content-defined chunks, format 2): every later build must still open
//! them, list their version and restore the disk bit for bit. The Python
//! and C tests read the same files with their own APIs. Regenerate only for
//! a deliberate format change, with `ALIKE_BLESS=1 cargo test -p alike
//! --test golden_store` (each file is written by its own test).
#![allow(missing_docs)]

use std::path::Path;

use alike::{BackupOptions, Chunking, RestoreOptions, Store, VerifyOptions};
use serde_json::{Value, json};

const V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/golden-store-v1.json");
const V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/golden-store-v2.json");
const PASSPHRASE: &str = "golden store passphrase";

/// 1 MiB + 4 KiB: text, a hole, a repeat of block 0 (dedup), a pseudo-random
/// block, and a short last block.
fn disk() -> Vec<u8> {
    let mut d = vec![0u8; (1 << 20) + 4096];
    let text = b"alike golden store block ";
    for (i, b) in d[..65536].iter_mut().enumerate() {
        *b = text[i % text.len()];
    }
    let (head, tail) = d.split_at_mut(2 * 65536);
    tail[..65536].copy_from_slice(&head[..65536]);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in &mut d[3 * 65536..4 * 65536] {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *b = (x >> 56) as u8;
    }
    let n = d.len();
    d[n - 4096..].fill(0xA5);
    d
}

fn bless(dir: &Path, path: &str, chunking: Chunking) {
    let img = dir.join("golden.img");
    std::fs::write(&img, disk()).unwrap();
    let store = Store::builder()
        .chunking(chunking)
        .passphrase(PASSPHRASE)
        .insecure_fast_kdf()
        .cache_dir(dir.join("cache"))
        .create(dir.join("store"))
        .unwrap();
    let r = store.backup_images("golden-vm", &[&img], &BackupOptions::default().time_ms(1_790_000_000_000)).unwrap();
    drop(store);
    let mut objects = serde_json::Map::new();
    let root = dir.join("store");
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let key = p.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if key != "tmp" && key != "locks" {
                    stack.push(p);
                }
            } else {
                objects.insert(key, Value::String(hex::encode(std::fs::read(&p).unwrap())));
            }
        }
    }
    let v = json!({
        "comment": format!("A complete store written by format v{}; see alike/tests/golden_store.rs.", if path == V1 { 1 } else { 2 }),
        "passphrase": PASSPHRASE,
        "vm": "golden-vm",
        "version_id": r.version.id,
        "time_ms": 1_790_000_000_000i64,
        "disk_size": disk().len(),
        "disk_sha256": alike_testing::sha256(&disk()),
        "objects": objects,
    });
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
}

#[test]
fn golden_store_v1_still_opens_and_restores() {
    check(V1, Chunking::Fixed { block_size: 65536 }, 1);
}

#[test]
fn golden_store_v2_still_opens_and_restores() {
    check(V2, Chunking::default(), 2);
}

fn check(path: &str, chunking: Chunking, format: u32) {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("ALIKE_BLESS").is_some() {
        bless(dir.path(), path, chunking);
    }
    let g: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(g["disk_sha256"], alike_testing::sha256(&disk()), "the generator changed: re-bless deliberately");
    let root = dir.path().join("copy");
    for (key, hexbytes) in g["objects"].as_object().unwrap() {
        let p = root.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, hex::decode(hexbytes.as_str().unwrap()).unwrap()).unwrap();
    }
    let store = Store::builder().passphrase(PASSPHRASE).cache_dir(dir.path().join("cache2")).open(&root).unwrap();
    assert_eq!((store.format_version(), store.chunking()), (format, chunking));
    let versions = store.versions(None).unwrap();
    assert_eq!(versions.len(), 1);
    let v = &versions[0];
    assert_eq!(v.id, g["version_id"].as_str().unwrap());
    assert_eq!(v.vm, "golden-vm");
    assert_eq!(v.time_ms, 1_790_000_000_000);
    assert_eq!(v.disks[0].size, g["disk_size"].as_u64().unwrap());
    let out = dir.path().join("out.img");
    store.restore_to_file(v, 0, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(alike_testing::sha256_file(&out), g["disk_sha256"].as_str().unwrap());
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
}
