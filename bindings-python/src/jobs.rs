//! `alike._native.run_jobs`: jobs of a configuration file run on
//! processors made for them (`alike::processors::run_config_jobs`).

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::convert::ser;
use crate::errors;
use crate::run::{CancelToken, run};

/// Runs the jobs `jobs` of the configuration file `config` at once, each
/// on a processor of its pool; returns the report (`swept`, and each job's
/// `result` or `error`) as `alike job run --json` prints its jobs.
#[pyfunction]
#[pyo3(signature = (config, jobs, cancel=None))]
pub(crate) fn run_jobs(
    py: Python<'_>,
    config: PathBuf,
    jobs: Vec<String>,
    cancel: Option<&Bound<'_, CancelToken>>,
) -> PyResult<Py<PyAny>> {
    let r = run(py, None, cancel, |ctx| {
        let c = alike::Config::from_file(&config)?;
        let opts = alike::processors::RunJobOptions::default().cancel_token(ctx.cancel.clone());
        alike::processors::run_config_jobs(&c, &jobs, &opts)
    })?;
    ser(py, &r)
}

/// Checks the configuration file `config` and returns it (secrets are
/// references: nothing secret is in it).
#[pyfunction]
pub(crate) fn load_config(py: Python<'_>, config: PathBuf) -> PyResult<Py<PyAny>> {
    let c = py.detach(|| alike::Config::from_file(&config)).map_err(errors::to_py)?;
    ser(py, &c)
}
