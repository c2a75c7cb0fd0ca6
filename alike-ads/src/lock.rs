//! Store locks: `locks/<id>` objects that say who is working on the store.
//!
//! Locks are the one kind of object that is rewritten (refreshed) in place.
//! Backups, prunes and GCs hold one while they run; a background thread
//! refreshes it every [`REFRESH`]. A lock is *stale* when its process is
//! proven dead (same host, no such pid) or it was not refreshed for
//! [`STALE_AFTER`]; stale locks are ignored and removed by whoever finds
//! them, so a crashed process never needs manual cleanup.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, random_hex};
use crate::format::{ObjectKind, check_header, header};
use crate::{Error, Result};

/// How often a held lock is refreshed.
pub const REFRESH: Duration = Duration::from_secs(60);
/// A lock not refreshed for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// What a lock holder is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockKind {
    /// Writing a new version (shared with other writers).
    Backup,
    /// Removing versions (shared).
    Prune,
    /// Collecting garbage (one at a time).
    Gc,
    /// Reading versions: restore, verify; an NBD export (with the versions it
    /// reads in [`LockInfo::versions`]).
    Read,
}

/// The content of a lock object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// What the holder does.
    pub kind: LockKind,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// When the lock was taken, ms since the epoch.
    pub created_ms: i64,
    /// Last refresh, ms since the epoch.
    pub refreshed_ms: i64,
    /// A `read` lock that reads only these versions (an NBD export that
    /// holds its version for the session): GC keeps them — they are live
    /// like any listed version, and prune keeps them as if pinned — and
    /// deletes the rest of what it condemned. `None` (every other lock, and
    /// every lock written before this field existed): a reader of anything,
    /// so GC defers all deletion while it lives. Old builds ignore the field
    /// and see an ordinary `read` lock: they defer, which is safe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<String>>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn hostname() -> String {
    crate::repo::host_name().unwrap_or_else(|| "unknown".into())
}

impl LockInfo {
    /// Why this lock is stale, or `None` if its holder may be alive.
    pub fn stale_reason(&self, now_ms: i64) -> Option<String> {
        if self.host == hostname() && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
            return Some(format!("process {} on this host is gone", self.pid));
        }
        let age = now_ms - self.refreshed_ms;
        (age > STALE_AFTER.as_millis() as i64).then(|| format!("not refreshed for {} s", age / 1000))
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = header(ObjectKind::Lock).to_vec();
        out.extend_from_slice(&serde_json::to_vec(self).expect("serializes"));
        out
    }
}

/// Reads every lock; unreadable lock objects are reported as stale.
///
/// # Errors
/// Backend listing errors.
pub fn list_locks(backend: &dyn Backend) -> Result<Vec<(String, Option<LockInfo>)>> {
    let mut out = Vec::new();
    for (key, _) in backend.list("locks/")? {
        let info = backend.read(&key).ok().and_then(|b| {
            let body = check_header(&b, ObjectKind::Lock, &key).ok()?;
            serde_json::from_slice(body).ok()
        });
        out.push((key, info));
    }
    Ok(out)
}

/// Live (non-stale) locks, removing the stale ones found on the way.
///
/// # Errors
/// Backend errors.
pub fn live_locks(backend: &dyn Backend) -> Result<Vec<(String, LockInfo)>> {
    let now = now_ms();
    let mut live = Vec::new();
    for (key, info) in list_locks(backend)? {
        match info {
            Some(i) if i.stale_reason(now).is_none() => live.push((key, i)),
            Some(i) => {
                tracing::info!(lock = %key, reason = %i.stale_reason(now).unwrap_or_default(), "removing stale lock");
                match backend.delete(&key) {
                    Err(e) if e.is_write_refused() => {
                        tracing::warn!(lock = %key, error = %e, "cannot remove a stale lock: the store is read-only to us");
                    }
                    r => r?,
                }
            }
            // A lock object being written right now can be briefly unreadable; leave it unless old.
            None => {}
        }
    }
    Ok(live)
}

/// A held lock; refreshed in the background, removed on drop.
pub struct LockGuard {
    key: String,
    backend: Arc<dyn Backend>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
    info: LockInfo,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard").field("key", &self.key).field("info", &self.info).finish()
    }
}

impl LockGuard {
    /// Takes a lock of `kind`. A GC lock is exclusive among GCs: it fails
    /// with [`Error::Locked`] while another live GC lock exists.
    ///
    /// # Errors
    /// [`Error::Locked`]; backend errors.
    pub fn acquire(backend: Arc<dyn Backend>, kind: LockKind) -> Result<LockGuard> {
        Self::acquire_with(backend, kind, None)
    }

    /// Takes a `read` lock on `versions` only ([`LockInfo::versions`]): GC
    /// keeps them and goes on deleting everything else.
    ///
    /// # Errors
    /// Backend errors.
    pub fn acquire_versions(backend: Arc<dyn Backend>, versions: &[String]) -> Result<LockGuard> {
        Self::acquire_with(backend, LockKind::Read, Some(versions.to_vec()))
    }

    fn acquire_with(backend: Arc<dyn Backend>, kind: LockKind, versions: Option<Vec<String>>) -> Result<LockGuard> {
        let now = now_ms();
        let info =
            LockInfo { kind, host: hostname(), pid: std::process::id(), created_ms: now, refreshed_ms: now, versions };
        let key = format!("locks/{}", random_hex(8)?);
        if let Err(e) = backend.write(&key, &info.encode()) {
            // A read-only store (a DR site's read-only share, a WORM vault, a
            // snapshot) still restores and verifies: without the lock, which
            // exists only so that GC's two-phase delete can see readers.
            if kind == LockKind::Read && e.is_write_refused() {
                tracing::warn!(
                    store = %backend.location(),
                    error = %e,
                    "the store is read-only to us: reading without a lock (a gc on another host cannot see this reader)"
                );
                return Ok(LockGuard { key: String::new(), backend, stop: None, refresher: None, info });
            }
            return Err(e);
        }
        if kind == LockKind::Gc {
            let others: Vec<_> =
                live_locks(&*backend)?.into_iter().filter(|(k, i)| i.kind == LockKind::Gc && *k != key).collect();
            if let Some((k, i)) = others.first() {
                backend.delete(&key)?;
                return Err(Error::Locked {
                    lock: k.clone(),
                    holder: format!("{:?} by pid {} on {}", i.kind, i.pid, i.host),
                });
            }
        }
        // Dropping the sender wakes the refresher at once (a sleeping loop made
        // every command wait up to a tick at exit).
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (b2, k2, mut i2) = (backend.clone(), key.clone(), info.clone());
        let refresher = alike_core::spawn("alike-lock-refresh", move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(REFRESH) {
                i2.refreshed_ms = now_ms();
                if let Err(e) = b2.write(&k2, &i2.encode()) {
                    tracing::warn!(lock = %k2, error = %e, "could not refresh the store lock");
                }
            }
        })?;
        Ok(LockGuard { key, backend, stop: Some(stop), refresher: Some(refresher), info })
    }

    /// Whether a lock object is held (false: a reader of a read-only store).
    pub fn is_held(&self) -> bool {
        !self.key.is_empty()
    }

    /// What this lock says.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        if !self.key.is_empty() {
            let _ = self.backend.delete(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Locks written before `versions` existed still read; a lock without
    /// versions writes none (old readers see the same bytes as before).
    #[test]
    fn version_holds_are_an_optional_field() {
        let old = br#"{"kind":"read","host":"h","pid":1,"created_ms":2,"refreshed_ms":3}"#;
        let l: LockInfo = serde_json::from_slice(old).unwrap();
        assert_eq!(l.versions, None);
        assert_eq!(serde_json::to_vec(&l).unwrap(), old.to_vec());
        let backend: Arc<dyn Backend> = Arc::new(crate::MemoryBackend::new());
        let g = LockGuard::acquire_versions(backend.clone(), &["ab".repeat(32)]).unwrap();
        let (_, info) = live_locks(&*backend).unwrap().pop().unwrap();
        assert_eq!((info.kind, info.versions), (LockKind::Read, Some(vec!["ab".repeat(32)])));
        drop(g);
        assert!(live_locks(&*backend).unwrap().is_empty());
    }
}
