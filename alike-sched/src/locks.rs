//! Per-VM serialisation inside one process: a VM key is held by at most
//! one holder at a time. The scheduler takes a job's keys all at once (or
//! none, so two jobs can never deadlock); the facade's backup path takes
//! the key of the VM it resolved (`backup_vm` waits for it), so two
//! backups of one VM never run together, even when neither came from the
//! scheduler. Across processes, the facade adds a file lock per VM
//! (`flock`, beside the store: `alike::Store::vm_lock_dir`), taken after
//! this one; the store's own locks keep the data consistent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use alike_core::{CancelToken, Recover};

/// A registry of held VM keys, with who holds each.
///
/// ```
/// let locks = std::sync::Arc::new(alike_sched::VmLocks::default());
/// let g = locks.try_acquire_all("run 1", &["xen1/web".into()]).unwrap();
/// assert!(locks.try_acquire_all("run 2", &["xen1/web".into(), "xen1/db".into()]).is_err());
/// drop(g);
/// assert!(locks.try_acquire_all("run 2", &["xen1/web".into()]).is_ok());
/// ```
#[derive(Debug, Default)]
pub struct VmLocks {
    held: Mutex<BTreeMap<String, String>>,
    freed: Condvar,
}

/// Held keys, released on drop.
#[derive(Debug)]
pub struct VmGuard {
    locks: Arc<VmLocks>,
    keys: Vec<String>,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        let mut held = self.locks.held.locked();
        for k in &self.keys {
            held.remove(k);
        }
        self.locks.freed.notify_all();
    }
}

impl VmGuard {
    /// The keys held.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }
}

static GLOBAL: OnceLock<Arc<VmLocks>> = OnceLock::new();

impl VmLocks {
    /// The process's registry: the one the backup path and every scheduler
    /// of the process share.
    pub fn global() -> Arc<VmLocks> {
        GLOBAL.get_or_init(|| Arc::new(VmLocks::default())).clone()
    }

    /// Takes all `keys` for `holder`, or none. On refusal returns the keys
    /// held by others, with their holders.
    ///
    /// # Errors
    /// The conflicting `(key, holder)` pairs.
    pub fn try_acquire_all(self: &Arc<Self>, holder: &str, keys: &[String]) -> Result<VmGuard, Vec<(String, String)>> {
        let keys: Vec<String> = keys.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        let mut held = self.held.locked();
        let busy: Vec<(String, String)> =
            keys.iter().filter_map(|k| held.get(k).map(|h| (k.clone(), h.clone()))).collect();
        if !busy.is_empty() {
            return Err(busy);
        }
        for k in &keys {
            held.insert(k.clone(), holder.to_owned());
        }
        Ok(VmGuard { locks: self.clone(), keys })
    }

    /// Waits until `key` is free and takes it for `holder`, checking
    /// `cancel` every 200 ms. Returns `None` when cancelled.
    pub fn acquire(self: &Arc<Self>, key: &str, holder: &str, cancel: &CancelToken) -> Option<VmGuard> {
        let l = self;
        let mut held = l.held.locked();
        let mut said = false;
        loop {
            if cancel.is_cancelled() {
                return None;
            }
            if !held.contains_key(key) {
                held.insert(key.to_owned(), holder.to_owned());
                drop(held);
                return Some(VmGuard { locks: l.clone(), keys: vec![key.to_owned()] });
            }
            if let (false, Some(h)) = (said, held.get(key)) {
                tracing::info!(key, holder = %h, "waiting for the VM: another backup of it runs");
                said = true;
            }
            held = l
                .freed
                .wait_timeout(held, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Who holds which key now.
    pub fn held(&self) -> BTreeMap<String, String> {
        self.held.locked().clone()
    }
}
