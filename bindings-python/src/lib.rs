//! # alike-python
//!
//! The private native module `alike._native`: a thin pyo3 layer over the
//! `alike` facade. Results cross as plain dicts and lists; the pure-Python
//! package in `python/alike` turns them into typed objects. Long operations
//! run with the interpreter released; see [`run`] for how progress, Ctrl-C
//! and cancellation reach them.

use pyo3::prelude::*;

mod convert;
mod errors;
mod hyperv;
mod jobs;
mod nbd;
mod replica;
mod run;
mod services;
mod store;
mod xen;

/// The module `alike._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", alike::VERSION)?;
    m.add_class::<store::NativeStore>()?;
    m.add_class::<run::CancelToken>()?;
    m.add_class::<nbd::NativeNbdServer>()?;
    m.add_class::<replica::NativeReplica>()?;
    m.add_class::<xen::NativeXenReplica>()?;
    m.add_class::<xen::NativeXenPool>()?;
    m.add_class::<hyperv::NativeHyperVHost>()?;
    m.add_function(wrap_pyfunction!(jobs::run_jobs, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::load_config, m)?)?;
    m.add_class::<services::NativeServices>()?;
    errors::register(m)?;
    Ok(())
}
