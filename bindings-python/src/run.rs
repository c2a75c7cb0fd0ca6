//! Running a long facade operation from Python.
//!
//! The operation runs on a worker thread with the interpreter released. The
//! calling (Python) thread waits in short slices; between them it hands the
//! latest progress to the Python callback — so callbacks always run on the
//! caller's own thread, never on an engine worker — and checks for signals,
//! so Ctrl-C cancels the operation cleanly and then raises
//! `KeyboardInterrupt`. An exception raised by the callback cancels the
//! operation too and is re-raised.

use alike::Recover;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alike::{Phase, Progress};
use pyo3::prelude::*;

use crate::errors;

/// A token that cancels the operations it is passed to, from any thread.
#[pyclass(frozen, module = "alike._native")]
#[derive(Default)]
pub(crate) struct CancelToken {
    pub(crate) inner: alike::CancelToken,
}

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> Self {
        CancelToken::default()
    }
    /// Asks every operation holding this token to stop soon.
    fn cancel(&self) {
        self.inner.cancel();
    }
    /// Whether `cancel()` was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }
}

/// What the facade options need for one run: a progress sink and the token.
pub(crate) struct Ctx {
    slot: Arc<Mutex<Option<(Phase, u64, u64)>>>,
    /// Cancels the run (set on Ctrl-C, a callback error, or the caller's token).
    pub(crate) cancel: alike::CancelToken,
}

impl Ctx {
    /// A progress callback for the facade's options.
    pub(crate) fn progress(&self) -> impl Fn(&Progress) + Send + Sync + 'static {
        let slot = self.slot.clone();
        move |p: &Progress| {
            if let Ok(mut s) = slot.lock() {
                *s = Some((p.phase, p.bytes_done, p.bytes_total));
            }
        }
    }
}

/// How often the waiting thread looks at progress and signals.
const TICK: Duration = Duration::from_millis(50);

/// Runs `f` with the interpreter released; see the module doc.
pub(crate) fn run<T: Send>(
    py: Python<'_>,
    progress: Option<&Bound<'_, PyAny>>,
    cancel: Option<&Bound<'_, CancelToken>>,
    f: impl FnOnce(&Ctx) -> alike::Result<T> + Send,
) -> PyResult<T> {
    let ctx =
        Ctx { slot: Arc::new(Mutex::new(None)), cancel: cancel.map(|c| c.get().inner.clone()).unwrap_or_default() };
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let mut delivered: Option<(Phase, u64, u64)> = None;
    let mut pending: Option<PyErr> = None;
    let deliver = |delivered: &mut Option<(Phase, u64, u64)>, pending: &mut Option<PyErr>| {
        let Some(cb) = progress else { return };
        let latest = *ctx.slot.locked();
        if let Some((phase, done, total)) = latest
            && latest != *delivered
            && pending.is_none()
        {
            *delivered = latest;
            if let Err(e) = cb.call1((phase.name(), done, total)) {
                ctx.cancel.cancel();
                *pending = Some(e);
            }
        }
    };
    let outcome = std::thread::scope(|s| {
        let worker = match alike::spawn_scoped(s, "alike-python-call", || {
            let r = f(&ctx);
            drop(tx);
            r
        }) {
            Ok(w) => w,
            Err(e) => return Ok(Err(alike::Error::from(e))),
        };
        loop {
            // Disconnected = the worker finished (or panicked).
            let finished = py.detach(|| rx.recv_timeout(TICK).is_err_and(|e| e.is_disconnected()));
            deliver(&mut delivered, &mut pending);
            if pending.is_none()
                && let Err(e) = py.check_signals()
            {
                ctx.cancel.cancel();
                pending = Some(e);
            }
            if finished {
                break;
            }
        }
        worker.join()
    });
    deliver(&mut delivered, &mut pending);
    let result = match outcome {
        Ok(r) => r,
        Err(_) => {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "internal error: the alike engine panicked (please report this); nothing stored was changed",
            ));
        }
    };
    // A Ctrl-C or callback error wins over the operation's own outcome (usually `Cancelled`).
    if let Some(e) = pending {
        return Err(e);
    }
    result.map_err(errors::to_py)
}

/// Sets this run's progress sink and cancel token on a facade options value.
macro_rules! with_ctx {
    ($opts:expr, $ctx:expr) => {
        $opts.progress($ctx.progress()).cancel_token($ctx.cancel.clone())
    };
}
pub(crate) use with_ctx;
