use std::path::{Path, PathBuf};

use alike::Store;

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env { dir: tempfile::tempdir().unwrap() }
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn cache(&self) -> PathBuf {
        self.path("cache")
    }
    pub fn create(&self, encrypted: bool) -> Store {
        self.create_with(encrypted, alike::Chunking::default())
    }
    /// A fixed-block store (format 1) of 64 KiB blocks.
    pub fn create_fixed(&self, encrypted: bool) -> Store {
        self.create_with(encrypted, alike::Chunking::Fixed { block_size: 65536 })
    }
    pub fn create_with(&self, encrypted: bool, chunking: alike::Chunking) -> Store {
        let mut b = Store::builder();
        b.chunking(chunking);
        b.cache_dir(self.cache()).insecure_fast_kdf();
        if encrypted {
            b.passphrase("pw");
        } else {
            b.no_encryption();
        }
        b.create(self.path("store")).unwrap()
    }
    pub fn open(&self) -> Store {
        Store::builder().cache_dir(self.cache()).passphrase("pw").open(self.path("store")).unwrap()
    }
}

/// Restores every disk of a version to files and returns their sha256.
pub fn restore_sha(store: &Store, v: &alike::Version, dir: &Path) -> Vec<String> {
    (0..v.disks.len() as u32)
        .map(|d| {
            let out = dir.join(format!("restore-{}-{d}.img", v.short_id()));
            store.restore_to_file(v, d, &out, &Default::default()).unwrap();
            let s = alike_testing::sha256_file(&out);
            std::fs::remove_file(&out).unwrap();
            s
        })
        .collect()
}
