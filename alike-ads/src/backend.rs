//! Where a store's objects live. A [`Backend`] stores immutable objects by
//! key (`config`, `keys/…`, `packs/ab/…`, `index/…`, `versions/…`); the same
//! small contract fits a local directory, an SMB/NFS mount and object storage.
//!
//! **API boundary.** Implementations: [`LocalBackend`] (a directory),
//! [`MemoryBackend`] (tests, fuzzing) and `ObjectBackend` (S3 and
//! S3-compatible services, Azure, GCS; module `object`). Pick one from a
//! location string with `backend_for`. Every implementation passes the same
//! conformance suite (`alike-ads/tests/conformance.rs`).
//!
//! What the store relies on, whatever the medium:
//!
//! | call | guarantee |
//! |---|---|
//! | `write`, `write_file` | atomic: after a crash or error the key holds the whole new object or what it held before, never a part; durable once `Ok` |
//! | `write_new` | as `write`, and only if the key is absent; of several concurrent callers exactly one gets `Ok(true)` |
//! | `write_file` | consumes the local spool file on success (moved or uploaded, then removed); on error the caller removes it |
//! | `list` | every key under a prefix (recursively, no page limit) with its size; keys relative to the store root, sorted; objects removed mid-listing may be left out |
//! | `read_range`, `read_tail` | one ranged read; a short object is [`Error::Truncated`], a missing one [`Error::NotFound`] |
//! | `delete` | a missing key is `Ok` |
//!
//! The key layout is the same on every backend (`docs/format.md` §1): an
//! object store holds `<prefix>/<key>` exactly where a directory holds
//! `<root>/<key>`. Only the spool (`tmp/`) differs: object backends build
//! packs in a local directory.

use alike_core::Recover;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::io;
use crate::{Error, Result};

/// The object store under a store.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages.
    fn location(&self) -> String;
    /// Reads a whole object.
    ///
    /// # Errors
    /// [`Error::NotFound`] when it does not exist.
    fn read(&self, key: &str) -> Result<Vec<u8>>;
    /// Reads `len` bytes at `offset`; [`Error::Truncated`] if the object is shorter.
    fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Reads the last `len` bytes (or all, if shorter) and returns them with the object's size.
    fn read_tail(&self, key: &str, len: u64) -> Result<(Vec<u8>, u64)>;
    /// Writes an object atomically and durably: after `Ok` it is whole and
    /// survives a power cut; a crash before leaves nothing under `key`.
    fn write(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Writes an object atomically and durably, but only if `key` does not
    /// exist yet: `Ok(true)` when this call created it, `Ok(false)` when an
    /// object was already there (left untouched). Of several concurrent
    /// callers on any number of machines, exactly one gets `Ok(true)`.
    ///
    /// # Errors
    /// As [`Backend::write`].
    fn write_new(&self, key: &str, data: &[u8]) -> Result<bool>;
    /// Moves a finished local file (from [`Backend::spool_dir`]) into the
    /// store as `key`, atomically and durably. On success the local file is
    /// gone; on error it may remain and the caller removes it.
    fn write_file(&self, key: &str, local: &Path) -> Result<()>;
    /// Keys under `prefix` (recursively) with their sizes.
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;
    /// Whether an object exists.
    fn exists(&self, key: &str) -> Result<bool>;
    /// Removes an object (missing is not an error).
    fn delete(&self, key: &str) -> Result<()>;
    /// A local directory for building objects before they are written.
    fn spool_dir(&self) -> Result<PathBuf>;
}

/// A store in a local directory (or an SMB/NFS mount).
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    /// Open handles of recently read objects: restores read thousands of
    /// blobs from a few packs, and objects never change once written.
    open_files: Mutex<HashMap<String, Arc<File>>>,
}

/// Open handles kept at most.
const OPEN_FILES: usize = 128;

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl LocalBackend {
    /// A backend rooted at `root` (not created).
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into(), open_files: Mutex::new(HashMap::new()) }
    }

    fn open_cached(&self, key: &str) -> Result<Arc<File>> {
        if let Some(f) = self.open_files.locked().get(key) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.path(key)).map_err(|e| self.not_found(key, e))?);
        let mut m = self.open_files.locked();
        if m.len() >= OPEN_FILES {
            m.clear();
        }
        m.insert(key.to_string(), f.clone());
        Ok(f)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn not_found(&self, key: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound { object: key.to_string() }
        } else {
            Error::Io { path: self.path(key), source: e }
        }
    }

    /// Writes `data` to a new spool file and fsyncs it. The file of a key
    /// object or of `config` is its owner's only (0600): they are wrapped,
    /// but there is no reason to share them.
    fn write_tmp(&self, key: &str, data: &[u8]) -> Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let spool = self.spool_dir()?;
        let tmp = spool.join(format!("obj-{}.tmp", random_hex(8)?));
        let mode = if key == "config" || key.starts_with("keys/") { 0o600 } else { 0o666 };
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io(&tmp))?;
        let r = f.write_all(data).and_then(|_| f.sync_all());
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Io { path: tmp, source: e });
        }
        Ok(tmp)
    }

    /// Creates the directory of `dst` if missing (durably); returns it.
    fn make_parent(dst: &Path) -> Result<PathBuf> {
        let parent = dst.parent().expect("keys have a parent").to_owned();
        if !parent.exists() {
            fs::create_dir_all(&parent).map_err(io(&parent))?;
            if let Some(pp) = parent.parent() {
                sync_dir(pp)?;
            }
        }
        Ok(parent)
    }

    fn place(&self, key: &str, tmp: &Path) -> Result<()> {
        let dst = self.path(key);
        let parent = Self::make_parent(&dst)?;
        fs::rename(tmp, &dst).map_err(io(&dst))?;
        // The rename is durable only once the directory entry is.
        sync_dir(&parent)
    }

    /// Gives the finished file `tmp` the name `key` unless that name exists:
    /// `link(2)` never replaces its target, so of several racing callers
    /// exactly one succeeds, and the object appears whole (the file was
    /// complete and fsynced before it got its second name).
    fn place_new(&self, key: &str, tmp: &Path) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let dst = self.path(key);
        let parent = Self::make_parent(&dst)?;
        match fs::hard_link(tmp, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // NFS may replay a link whose reply was lost and report EEXIST
                // for our own link: the same inode under both names means we won.
                let same = match (fs::metadata(tmp), fs::metadata(&dst)) {
                    (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                };
                if !same {
                    return Ok(false);
                }
            }
            Err(e) => return Err(Error::Io { path: dst, source: e }),
        }
        sync_dir(&parent)?;
        Ok(true)
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }
    fn read(&self, key: &str) -> Result<Vec<u8>> {
        fs::read(self.path(key)).map_err(|e| self.not_found(key, e))
    }
    fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let f = self.open_cached(key)?;
        let mut buf = vec![0u8; len as usize];
        let mut got = 0usize;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => return Err(Error::Truncated { object: key.into(), offset, wanted: len, got: got as u64 }),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io { path: self.path(key), source: e }),
            }
        }
        Ok(buf)
    }
    fn read_tail(&self, key: &str, len: u64) -> Result<(Vec<u8>, u64)> {
        let mut f = File::open(self.path(key)).map_err(|e| self.not_found(key, e))?;
        let size = f.seek(SeekFrom::End(0)).map_err(io(self.path(key)))?;
        let n = len.min(size);
        f.seek(SeekFrom::Start(size - n)).map_err(io(self.path(key)))?;
        let mut buf = Vec::with_capacity(n as usize);
        f.read_to_end(&mut buf).map_err(io(self.path(key)))?;
        Ok((buf, size))
    }
    fn write(&self, key: &str, data: &[u8]) -> Result<()> {
        let tmp = self.write_tmp(key, data)?;
        self.place(key, &tmp).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }
    fn write_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        let tmp = self.write_tmp(key, data)?;
        let r = self.place_new(key, &tmp);
        // The object (if placed) is the hard link; the temporary name goes either way.
        let _ = fs::remove_file(&tmp);
        r
    }
    fn write_file(&self, key: &str, local: &Path) -> Result<()> {
        self.place(key, local)
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let base = self.path(prefix);
        if !base.exists() {
            return Ok(out);
        }
        let mut stack = vec![base];
        // Objects (and their folders) may be removed by a concurrent prune or
        // gc between the directory read and the stat: such an object is gone,
        // so it is simply not listed.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(it) => it,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(Error::Io { path: dir, source: e }),
            };
            for e in entries {
                let e = e.map_err(io(&dir))?;
                let ft = match e.file_type() {
                    Ok(ft) => ft,
                    Err(err) if gone(&err) => continue,
                    Err(err) => return Err(Error::Io { path: e.path(), source: err }),
                };
                if ft.is_dir() {
                    stack.push(e.path());
                } else if ft.is_file() {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if name.ends_with(".tmp") {
                        continue;
                    }
                    let rel = e.path().strip_prefix(&self.root).expect("under root").to_string_lossy().into_owned();
                    match e.metadata() {
                        Ok(m) => out.push((rel, m.len())),
                        Err(err) if gone(&err) => {}
                        Err(err) => return Err(Error::Io { path: e.path(), source: err }),
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
    fn exists(&self, key: &str) -> Result<bool> {
        self.path(key).try_exists().map_err(io(self.path(key)))
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.open_files.locked().remove(key);
        match fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io { path: self.path(key), source: e }),
            _ => Ok(()),
        }
    }
    fn spool_dir(&self) -> Result<PathBuf> {
        let d = self.root.join("tmp");
        if !d.exists() {
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(d)
    }
}

/// A store held in memory: for tests, fuzzing and throw-away stores.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    objects: Mutex<std::collections::BTreeMap<String, Arc<Vec<u8>>>>,
    spool: Mutex<Option<PathBuf>>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }
    fn get(&self, key: &str) -> Result<Arc<Vec<u8>>> {
        self.objects.locked().get(key).cloned().ok_or_else(|| Error::NotFound { object: key.into() })
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory:".into()
    }
    fn read(&self, key: &str) -> Result<Vec<u8>> {
        Ok(self.get(key)?.to_vec())
    }
    fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let o = self.get(key)?;
        let end = offset.checked_add(len).filter(|e| *e <= o.len() as u64);
        match end {
            Some(e) => Ok(o[offset as usize..e as usize].to_vec()),
            None => Err(Error::Truncated {
                object: key.into(),
                offset,
                wanted: len,
                got: (o.len() as u64).saturating_sub(offset),
            }),
        }
    }
    fn read_tail(&self, key: &str, len: u64) -> Result<(Vec<u8>, u64)> {
        let o = self.get(key)?;
        let n = (len as usize).min(o.len());
        Ok((o[o.len() - n..].to_vec(), o.len() as u64))
    }
    fn write(&self, key: &str, data: &[u8]) -> Result<()> {
        self.objects.locked().insert(key.into(), Arc::new(data.to_vec()));
        Ok(())
    }
    fn write_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        use std::collections::btree_map::Entry;
        match self.objects.locked().entry(key.into()) {
            Entry::Occupied(_) => Ok(false),
            Entry::Vacant(v) => {
                v.insert(Arc::new(data.to_vec()));
                Ok(true)
            }
        }
    }
    fn write_file(&self, key: &str, local: &Path) -> Result<()> {
        let data = fs::read(local).map_err(io(local))?;
        let _ = fs::remove_file(local);
        self.write(key, &data)
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let m = self.objects.locked();
        Ok(m.range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect())
    }
    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.objects.locked().contains_key(key))
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.objects.locked().remove(key);
        Ok(())
    }
    fn spool_dir(&self) -> Result<PathBuf> {
        // Packs are built in a private temporary directory, then read into memory.
        let mut s = self.spool.locked();
        if s.is_none() {
            let d = std::env::temp_dir().join(format!("alike-mem-spool-{}-{}", std::process::id(), random_hex(6)?));
            fs::create_dir_all(&d).map_err(io(&d))?;
            *s = Some(d);
        }
        Ok(s.clone().expect("set"))
    }
}

impl Drop for MemoryBackend {
    fn drop(&mut self) {
        if let Some(d) = self.spool.lock().ok().and_then(|mut s| s.take()) {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// `n` random bytes as hex.
pub(crate) fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    alike_core::random_bytes(&mut b)?;
    Ok(hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Of eight racing `write_new`s exactly one creates the object, whose
    /// bytes are the winner's; no temporary file is left.
    #[test]
    fn write_new_has_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let backends: [Box<dyn Backend>; 2] = [Box::new(LocalBackend::new(dir.path())), Box::new(MemoryBackend::new())];
        for b in &backends {
            for round in 0..5 {
                let key = format!("sub{round}/config");
                let wins: Vec<bool> = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..8u8)
                        .map(|i| {
                            let (b, key) = (&b, &key);
                            s.spawn(move || b.write_new(key, &[i; 100]).unwrap())
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).collect()
                });
                assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
                let winner = wins.iter().position(|w| *w).unwrap() as u8;
                assert_eq!(b.read(&key).unwrap(), vec![winner; 100]);
                assert!(!b.write_new(&key, b"again").unwrap());
            }
        }
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "temporary files left");
    }

    /// A listing that races deletions (a concurrent prune or gc) leaves out
    /// what vanished instead of failing.
    #[test]
    fn listing_tolerates_concurrent_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        for round in 0..8 {
            let keys: Vec<String> = (0..300).map(|i| format!("versions/{round}-{i}")).collect();
            for k in &keys {
                b.write(k, b"x").unwrap();
            }
            std::thread::scope(|s| {
                s.spawn(|| {
                    for k in &keys {
                        b.delete(k).unwrap();
                    }
                });
                for _ in 0..30 {
                    let listed = b.list("versions/").unwrap();
                    assert!(listed.iter().all(|(_, n)| *n == 1));
                }
            });
            assert!(b.list("versions/").unwrap().is_empty());
        }
    }
}
