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
mod nbd;
mod replica;
mod run;
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
    errors::register(m)?;
    Ok(())
}
