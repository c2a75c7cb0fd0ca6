//! `alike._native.NativeServices`: the services (jobs, schedules, history,
//! events) opened from a configuration file. Records and events cross as
//! dicts (their JSON); `python/alike/__init__.py` wraps them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use alike::Recover;
use alike::services::{RunFilter, RunResult, Services, SubscriptionId};
use pyo3::prelude::*;

use crate::convert::ser;
use crate::errors;

/// Open services: a scheduler over a configuration file's stores, pools and jobs.
#[pyclass(frozen, module = "alike._native")]
pub(crate) struct NativeServices {
    inner: Services,
    subs: Mutex<HashMap<u64, SubscriptionId>>,
    next: Mutex<u64>,
}

fn result_of(name: &str) -> PyResult<RunResult> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| errors::to_py(alike::Error::InvalidArgument(format!("no run result {name:?}"))))
}

#[pymethods]
impl NativeServices {
    /// Opens the services of the configuration file `config` with the
    /// history database `database` (refused while another process has it).
    #[staticmethod]
    fn open(py: Python<'_>, config: std::path::PathBuf, database: std::path::PathBuf) -> PyResult<NativeServices> {
        let s = py
            .detach(|| {
                let c = alike::Config::from_file(&config)?;
                Services::builder().config(&c)?.database(&database).open()
            })
            .map_err(errors::to_py)?;
        Ok(NativeServices { inner: s, subs: Mutex::new(HashMap::new()), next: Mutex::new(1) })
    }

    /// Starts the schedule loop.
    fn start(&self) -> PyResult<()> {
        self.inner.start().map_err(errors::to_py)
    }

    /// Stops: no new run starts; running runs are cancelled when asked and
    /// waited for at most `timeout` seconds; pending digests are sent.
    #[pyo3(signature = (cancel_running=true, timeout=30.0))]
    fn stop(&self, py: Python<'_>, cancel_running: bool, timeout: f64) {
        let t = Duration::from_secs_f64(timeout.clamp(0.0, 86_400.0));
        py.detach(|| self.inner.stop(cancel_running, t));
    }

    /// Every job with its next due time and last run.
    fn jobs(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let j = py.detach(|| self.inner.jobs()).map_err(errors::to_py)?;
        ser(py, &j)
    }

    /// Adds or replaces a job given as JSON (the fields of `[[job]]` as the
    /// services hold them).
    fn put_job_json(&self, py: Python<'_>, job: &str) -> PyResult<()> {
        let spec: alike::services::JobSpec =
            serde_json::from_str(job).map_err(|e| errors::to_py(alike::Error::InvalidArgument(format!("job: {e}"))))?;
        py.detach(|| self.inner.put_job(spec)).map_err(errors::to_py)
    }

    /// Removes a job (its history stays).
    fn remove_job(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        py.detach(|| self.inner.remove_job(name)).map_err(errors::to_py)
    }

    /// Runs a job now; returns the run's id.
    fn run_now(&self, py: Python<'_>, name: &str) -> PyResult<u64> {
        py.detach(|| self.inner.run_now(name)).map_err(errors::to_py)
    }

    /// Cancels a queued or running run.
    fn cancel(&self, run: u64) -> PyResult<()> {
        self.inner.cancel(run).map_err(errors::to_py)
    }

    /// One run's record.
    fn run(&self, py: Python<'_>, id: u64) -> PyResult<Py<PyAny>> {
        let r = py.detach(|| self.inner.run(id)).map_err(errors::to_py)?;
        ser(py, &r)
    }

    /// Runs, newest first.
    #[pyo3(signature = (job=None, result=None, vm=None, limit=100))]
    fn runs(
        &self,
        py: Python<'_>,
        job: Option<String>,
        result: Option<String>,
        vm: Option<String>,
        limit: usize,
    ) -> PyResult<Py<PyAny>> {
        let mut f = RunFilter::default();
        f.job = job;
        f.result = result.as_deref().map(result_of).transpose()?;
        f.vm = vm;
        f.limit = Some(limit);
        let r = py.detach(|| self.inner.runs(&f)).map_err(errors::to_py)?;
        ser(py, &r)
    }

    /// Waits until no run is queued or running, at most `timeout` seconds.
    fn wait_idle(&self, py: Python<'_>, timeout: f64) -> bool {
        let t = Duration::from_secs_f64(timeout.clamp(0.0, 86_400.0));
        py.detach(|| self.inner.wait_idle(t))
    }

    /// Calls `callback(event: dict)` for every event, on the thread that
    /// emits it (with the interpreter held: keep it short). An exception it
    /// raises is printed and ignored. Returns an id for `unsubscribe`.
    fn subscribe(&self, callback: Py<PyAny>) -> u64 {
        let id = self.inner.subscribe(move |e| {
            let Ok(json) = serde_json::to_value(e) else { return };
            Python::attach(|py| {
                let r = crate::convert::to_py(py, &json).and_then(|ev| callback.call1(py, (ev,)));
                if let Err(err) = r {
                    err.print(py);
                }
            });
        });
        let mut next = self.next.locked();
        let n = *next;
        *next += 1;
        self.subs.locked().insert(n, id);
        n
    }

    /// Ends a subscription. Returns whether it existed.
    fn unsubscribe(&self, id: u64) -> bool {
        match self.subs.locked().remove(&id) {
            Some(s) => self.inner.unsubscribe(s),
            None => false,
        }
    }

    /// Rebuilds a lost history from the stores; returns the runs added.
    fn rebuild_history(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| self.inner.rebuild_history()).map_err(errors::to_py)
    }
}
