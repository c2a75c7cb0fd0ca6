//! What the NTFS and FAT tests share.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use alike_fs::{BlockDevice, FileId, FileKind, FileSystem, FsError, Metadata};

/// An image file as a device.
pub(crate) struct FileDev(pub std::fs::File, pub u64);

impl FileDev {
    pub(crate) fn open(p: &Path) -> Arc<dyn BlockDevice> {
        let f = std::fs::File::open(p).unwrap();
        let size = f.metadata().unwrap().len();
        Arc::new(FileDev(f, size))
    }
}

impl BlockDevice for FileDev {
    fn size(&self) -> u64 {
        self.1
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> alike_fs::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.1) {
            return Err(FsError::OutOfRange { device: "image".into(), offset, len: buf.len() as u64, size: self.1 });
        }
        self.0.read_exact_at(buf, offset).map_err(|e| FsError::Device {
            device: "image".into(),
            offset,
            len: buf.len() as u64,
            message: e.to_string(),
        })
    }
}

/// Runs a command; panics with its output when it fails.
pub(crate) fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every entry under the root: path (`/`-joined, no leading slash) → metadata.
pub(crate) fn tree(fs: &dyn FileSystem) -> BTreeMap<String, Metadata> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![(fs.root(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        for e in fs.read_dir(dir).unwrap_or_else(|e| panic!("read_dir {prefix:?}: {e}")) {
            let name = String::from_utf8(e.name.clone()).expect("names are UTF-8");
            let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            if e.meta.kind == FileKind::Dir {
                dirs.push((e.meta.id, path.clone()));
            }
            assert!(out.insert(path.clone(), e.meta).is_none(), "{path} listed twice");
        }
    }
    out
}

/// A file's bytes read through the trait in `step`-byte reads.
pub(crate) fn read_all(fs: &dyn FileSystem, id: FileId, size: u64, step: usize) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    let mut at = 0usize;
    while at < out.len() {
        let end = (at + step).min(out.len());
        let n = fs.read_at(id, at as u64, &mut out[at..end]).unwrap_or_else(|e| panic!("read at {at}: {e}"));
        assert!(n > 0, "short read at {at} of {size}");
        at += n;
    }
    let mut past = [0u8; 8];
    assert_eq!(fs.read_at(id, size, &mut past).unwrap(), 0, "a read at the end returns 0");
    out
}

/// Runs `f` on a thread and fails if it takes longer than `secs` (a hang)
/// or panics.
pub(crate) fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {secs} s (a hang)"),
        Err(_) => {
            let e = h.join().unwrap_err();
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("{what}: panicked: {}", msg.unwrap_or_default())
        }
    }
}

/// Text that compresses (a few thousand distinct words in varying order).
pub(crate) fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = alike_testing::Rng::new(seed);
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        let w = rng.below(5000);
        out.extend(format!("word{w} ").as_bytes());
        if rng.below(12) == 0 {
            out.push(b'\n');
        }
    }
    out.truncate(len);
    out
}
