//! `alike._native.NativeNbdServer`: an NBD export of a version serving on
//! its own thread until `stop()` (`NativeStore.serve_nbd` starts it).

use crossbeam_channel::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use alike::Recover;
use pyo3::prelude::*;
use serde_json::Value;

use crate::convert;
use crate::errors;

type Serving = JoinHandle<alike::Result<alike::NbdReport>>;

/// A running export. `stop()` ends it and returns its report; dropping it
/// stops it too.
#[pyclass(frozen, module = "alike._native")]
pub(crate) struct NativeNbdServer {
    listening: Value,
    cancel: alike::CancelToken,
    thread: Mutex<Option<Serving>>,
    report: Mutex<Option<Value>>,
}

fn internal(m: impl std::fmt::Display) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(format!("internal error: {m}"))
}

impl NativeNbdServer {
    /// Starts serving version `spec` (of `vm`) on a thread and returns once
    /// it listens (or with the error that stopped it first). Ctrl-C while
    /// waiting stops it and raises `KeyboardInterrupt`.
    pub(crate) fn start(
        py: Python<'_>,
        store: Arc<alike::Store>,
        spec: String,
        vm: Option<String>,
        opts: alike::NbdOptions,
    ) -> PyResult<NativeNbdServer> {
        let cancel = alike::CancelToken::new();
        let (tx, rx) = crossbeam_channel::bounded::<alike::NbdListening>(1);
        let opts = opts.cancel_token(cancel.clone()).on_listening(move |l| {
            let _ = tx.send(l.clone());
        });
        let thread = alike::spawn("alike-python-nbd", move || {
            let v = store.version(&spec, vm.as_deref())?;
            store.serve_nbd(&v, &opts)
        })
        .map_err(|e| errors::to_py(alike::Error::from(e)))?;
        loop {
            match py.detach(|| rx.recv_timeout(Duration::from_millis(50))) {
                Ok(l) => {
                    let listening = serde_json::to_value(&l).map_err(internal)?;
                    return Ok(NativeNbdServer {
                        listening,
                        cancel,
                        thread: Mutex::new(Some(thread)),
                        report: Mutex::new(None),
                    });
                }
                // The options (and the sender) went with the thread: it ended before listening.
                Err(RecvTimeoutError::Disconnected) => {
                    return match py.detach(|| thread.join()) {
                        Ok(Err(e)) => Err(errors::to_py(e)),
                        Ok(Ok(_)) => Err(internal("the NBD server stopped before listening")),
                        Err(_) => Err(internal("the alike engine panicked (please report this)")),
                    };
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = py.check_signals() {
                        cancel.cancel();
                        let _ = py.detach(|| thread.join());
                        return Err(e);
                    }
                }
            }
        }
    }
}

#[pymethods]
impl NativeNbdServer {
    /// Where it listens: `uri` and `exports` (name, uri, disk, size, writable, default).
    fn listening(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        convert::to_py(py, &self.listening)
    }

    /// Whether it is still serving.
    #[getter]
    fn running(&self) -> bool {
        self.thread.locked().as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops serving (each connection after the request it serves) and
    /// returns the session's report; again: the same report.
    fn stop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.cancel.cancel();
        let thread = self.thread.locked().take();
        if let Some(t) = thread {
            let r = py.detach(|| t.join()).map_err(|_| internal("the alike engine panicked (please report this)"))?;
            let report = r.map_err(errors::to_py)?;
            *self.report.locked() = Some(serde_json::to_value(&report).map_err(internal)?);
        }
        match self.report.locked().as_ref() {
            Some(r) => convert::to_py(py, r),
            None => Err(internal("the NBD server ended without a report")),
        }
    }
}

impl Drop for NativeNbdServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.locked().take() {
            let _ = t.join();
        }
    }
}
