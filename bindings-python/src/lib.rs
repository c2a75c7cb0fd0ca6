//! # alike-python
//!
//! The Python module `alike` (pyo3 extension built by maturin) is issue 6;
//! this crate holds its place in the workspace and will stay a thin layer
//! over the `alike` facade.

/// The facade version the bindings are built against.
pub const FACADE_VERSION: &str = alike::VERSION;
