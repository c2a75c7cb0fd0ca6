//! Per-VM locks across processes: two processes backing up one VM (two
//! `alike xen backup`, or the daemon and a command-line run) take turns.
//!
//! Each VM has a lock file, `vm-<32 hex of BLAKE3(KIND/NAME)>.lock`, in the
//! store's VM lock directory ([`crate::Store::vm_lock_dir`]): beside a local
//! store (`STORE.vm-locks/`, a sibling of its directory: the store's own
//! directory holds only its objects), or, for a store on object storage,
//! `$TMPDIR/alike-vm-locks-<16 hex of BLAKE3(LOCATION)>/` (processes of one
//! machine meet there); `StoreBuilder::vm_lock_dir` (the configuration's
//! `[[store]] vm_lock_dir`) names another. A backup holds the file's `flock`
//! from before its snapshot to its end; the holder writes its pid and the
//! VM's key into it. A second backup **waits** (checking its cancel token
//! every 200 ms) and says so once, as a warning event "waiting for VM lock
//! held by pid N". `flock` is released by the kernel when the holder exits,
//! however it ends, so a killed backup never leaves the VM locked; the files
//! themselves stay (removing one could race a process opening it).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use alike_core::CancelToken;
use rustix::fs::{FlockOperation, flock};

use crate::{Error, Result};

/// A held VM lock; released on drop (the file is closed).
#[derive(Debug)]
pub(crate) struct VmFileLock {
    _file: File,
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Engine(alike_core::Error::Io { path: path.to_path_buf(), source })
}

/// The lock file of `key` (`KIND/NAME`) in `dir`.
pub(crate) fn lock_path(dir: &Path, key: &str) -> PathBuf {
    let h = blake3::hash(key.as_bytes()).to_hex();
    dir.join(format!("vm-{}.lock", &h[..32]))
}

/// The default lock directory of a store at `location` (a path,
/// `file://…`, or an object-storage URL).
pub(crate) fn default_dir(location: &str) -> PathBuf {
    let local = location.strip_prefix("file://").or((!location.contains("://")).then_some(location));
    match local {
        Some(p) => {
            // The same store reached by different paths meets in one place.
            let p = std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "store".into());
            p.with_file_name(format!("{name}.vm-locks"))
        }
        None => {
            let h = blake3::hash(location.as_bytes()).to_hex();
            std::env::temp_dir().join(format!("alike-vm-locks-{}", &h[..16]))
        }
    }
}

/// Takes the lock of `key` in `dir`, waiting while another process holds
/// it. `None` when cancelled while waiting.
pub(crate) fn acquire(dir: &Path, key: &str, cancel: &CancelToken) -> Result<Option<VmFileLock>> {
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io(dir, e))?;
    }
    let path = lock_path(dir, key);
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io(&path, e))?
    };
    let mut said = false;
    loop {
        match flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io(&path, e.into())),
        }
        if cancel.is_cancelled() {
            return Ok(None);
        }
        if !said {
            said = true;
            let holder = holder_pid(&mut f);
            let pid = holder.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
            tracing::warn!(vm = %key, pid = %pid, lock = %path.display(), "waiting for VM lock held by pid {pid}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Ours: say who holds it, for the next one to wait.
    let me = format!("{}\n{key}\n", std::process::id());
    f.set_len(0).and_then(|()| f.rewind()).and_then(|()| f.write_all(me.as_bytes())).map_err(|e| io(&path, e))?;
    Ok(Some(VmFileLock { _file: f }))
}

/// The pid the holder wrote on the file's first line.
fn holder_pid(f: &mut File) -> Option<u32> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.take(256).read_to_string(&mut s).ok()?;
    s.lines().next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_store_locks_beside_itself_and_object_stores_under_tmp() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("store");
        std::fs::create_dir(&s).unwrap();
        let want = std::fs::canonicalize(d.path()).unwrap().join("store.vm-locks");
        assert_eq!(default_dir(s.to_str().unwrap()), want);
        assert_eq!(default_dir(&format!("file://{}", s.display())), want);
        let a = default_dir("s3://bucket/a");
        assert!(a.starts_with(std::env::temp_dir()) && a != default_dir("s3://bucket/b"), "{a:?}");
    }

    #[test]
    fn a_second_holder_waits_until_the_first_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let g = acquire(d.path(), "xen/web-01", &CancelToken::new()).unwrap().unwrap();
        let mut text = String::new();
        File::open(lock_path(d.path(), "xen/web-01")).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, format!("{}\nxen/web-01\n", std::process::id()));
        // Another VM is free.
        assert!(acquire(d.path(), "xen/db-01", &CancelToken::new()).unwrap().is_some());
        // flock locks belong to the open file: a second open in this process waits too.
        let cancel = CancelToken::new();
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            c2.cancel();
        });
        assert!(acquire(d.path(), "xen/web-01", &cancel).unwrap().is_none(), "cancelled while waiting");
        t.join().unwrap();
        drop(g);
        assert!(acquire(d.path(), "xen/web-01", &CancelToken::new()).unwrap().is_some());
    }
}
