//! Three policies every crate of the workspace follows, in one place.
//!
//! - **Lock poisoning**: a `Mutex` whose holder panicked is used as it is
//!   ([`Recover::locked`]). What our locks guard are caches, counters and
//!   queues that a panic cannot leave half-written in a way that loses data;
//!   the panic itself still reaches the caller (rayon and scoped threads
//!   propagate it, the C ABI turns it into `ALIKE_ERR_PANIC`). Never
//!   `lock().unwrap()` or `expect` in library code.
//! - **Thread-spawn failure**: threads are started through [`spawn`] or
//!   [`spawn_scoped`], named, and a failure to start one is an error
//!   ([`crate::Error::Thread`], kind `Io`, retry `Transient`) naming the thread
//!   — never a panic. Worker pools (rayon) map their build error the same way.
//! - **Random-source failure**: every random byte comes from
//!   [`crate::random_bytes`]; a failing system source is
//!   [`crate::Error::Crypto`] — never a panic, never a weaker source.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Scope, ScopedJoinHandle};

use crate::{Error, Result};

/// A mutex locked whatever happened to its last holder (see the module doc).
pub trait Recover<T> {
    /// Locks, recovering a poisoned lock.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Recover<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts a named thread.
///
/// # Errors
/// [`Error::Thread`] when the system refuses a thread.
pub fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|source| Error::Thread { name: name.to_owned(), source })
}

/// Starts a named thread in a scope.
///
/// # Errors
/// [`Error::Thread`] when the system refuses a thread.
pub fn spawn_scoped<'scope, 'env, T: Send + 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Result<ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn_scoped(scope, f)
        .map_err(|source| Error::Thread { name: name.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::Recover;

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let m = std::sync::Arc::new(std::sync::Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
    }

    #[test]
    fn a_spawned_thread_is_named() {
        let h = super::spawn("alike-test", || std::thread::current().name().map(str::to_owned)).unwrap();
        assert_eq!(h.join().unwrap().as_deref(), Some("alike-test"));
    }
}
