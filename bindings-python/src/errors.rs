//! Python exceptions mirroring [`alike::ErrorKind`]: `alike.Error` and one
//! subclass per kind, each with `kind` (a string) and the full message.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(alike, Error, PyException, "Any failure of the alike engine; `kind` names the class of failure.");

/// The exception classes, one per kind, made from the one table
/// ([`alike::ErrorKind::ALL`]), each a subclass of `Error`.
static CLASSES: pyo3::sync::PyOnceLock<Vec<(alike::ErrorKind, Py<pyo3::types::PyType>)>> =
    pyo3::sync::PyOnceLock::new();

fn classes(py: Python<'_>) -> PyResult<&Vec<(alike::ErrorKind, Py<pyo3::types::PyType>)>> {
    CLASSES.get_or_try_init(py, || {
        let base = py.get_type::<Error>();
        alike::ErrorKind::ALL
            .iter()
            .filter(|k| k.python_class() != "Error")
            .map(|k| {
                let name = format!("alike.{}", k.python_class());
                let doc = format!("The failures of kind `{}` (C: {}).", k.name(), k.c_name());
                let t = PyErr::new_type(
                    py,
                    &std::ffi::CString::new(name)?,
                    Some(&std::ffi::CString::new(doc)?),
                    Some(&base),
                    None,
                )?;
                Ok((*k, t))
            })
            .collect()
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    for (k, t) in classes(py)? {
        m.add(k.python_class(), t.bind(py))?;
    }
    Ok(())
}

/// The message of `e` with its causes, as the CLI prints it.
fn message(e: &alike::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        src = c.source();
    }
    s
}

/// The Python exception for a facade error: its class from the kind, with
/// `kind`, `retry` (`permanent`, `transient`, `unknown`) and `code` (a
/// host's own code, or None) as attributes.
pub(crate) fn to_py(e: alike::Error) -> PyErr {
    let msg = message(&e);
    let (kind, retry, code) = (e.kind(), e.retry(), e.code().map(str::to_owned));
    Python::attach(|py| {
        let class = classes(py).ok().and_then(|c| c.iter().find(|(k, _)| *k == kind).map(|(_, t)| t.clone_ref(py)));
        let err = match class {
            Some(t) => PyErr::from_type(t.into_bound(py), msg),
            None => Error::new_err(msg),
        };
        // Setting an attribute on a fresh exception object cannot fail in practice;
        // if it did, the exception would still carry its class and message.
        let v = err.value(py);
        let _ = v.setattr("kind", kind.name());
        let _ = v.setattr("retry", retry.name());
        let _ = v.setattr("code", code);
        err
    })
}
