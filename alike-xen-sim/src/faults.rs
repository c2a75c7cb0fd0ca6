//! Fault injection for tests: fail a call once, slow every response, cut
//! the next export (HTTP or NBD) after some bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::Error;

#[derive(Debug, Default)]
struct FaultState {
    fail_next: HashMap<String, VecDeque<(String, Vec<String>)>>,
    delay: Option<Duration>,
    drop_export_after: Option<u64>,
    drop_nbd_after: Option<u64>,
}

/// Faults to inject, shared by every front-end of one simulator.
///
/// ```
/// # let sim = alike_xen_sim::Simulator::start(alike_xen_sim::SimConfig::new(tempfile::tempdir().unwrap().keep())).unwrap();
/// sim.faults().fail_next("VM.snapshot", "SR_FULL", &["OpaqueRef:x", "0", "0"]);
/// sim.faults().drop_next_export_after(1 << 20);
/// ```
#[derive(Debug, Default)]
pub struct Faults {
    inner: Mutex<FaultState>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next call of `method` (e.g. `VDI.list_changed_blocks`; its
    /// `Async.` twin counts too) fails with `code` and `params`, once.
    /// Queued failures are used in order.
    pub fn fail_next(&self, method: &str, code: &str, params: &[&str]) {
        self.lock()
            .fail_next
            .entry(method.to_owned())
            .or_default()
            .push_back((code.to_owned(), params.iter().map(|s| (*s).to_owned()).collect()));
    }

    /// Every API call and HTTP transfer waits `delay` before answering
    /// (`None` to stop).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.lock().delay = delay;
    }

    /// The next `/export_raw_vdi` response is cut (connection dropped) after
    /// `bytes` bytes of body.
    pub fn drop_next_export_after(&self, bytes: u64) {
        self.lock().drop_export_after = Some(bytes);
    }

    /// The next NBD connection is dropped after `bytes` bytes of read replies.
    pub fn drop_next_nbd_after(&self, bytes: u64) {
        self.lock().drop_nbd_after = Some(bytes);
    }

    /// Clears every pending fault.
    pub fn clear(&self) {
        *self.lock() = FaultState::default();
    }

    pub(crate) fn delay(&self) -> Option<Duration> {
        self.lock().delay
    }

    pub(crate) fn take_failure(&self, method: &str) -> Option<Error> {
        let mut st = self.lock();
        let name = method.strip_prefix("Async.").unwrap_or(method);
        let q = st.fail_next.get_mut(name)?;
        let (code, params) = q.pop_front()?;
        Some(Error::Api { code, params })
    }

    pub(crate) fn take_export_drop(&self) -> Option<u64> {
        self.lock().drop_export_after.take()
    }

    pub(crate) fn take_nbd_drop(&self) -> Option<u64> {
        self.lock().drop_nbd_after.take()
    }
}
