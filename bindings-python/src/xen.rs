//! `alike._native.NativeXenPool`: a connection to a XenServer/XCP-ng pool,
//! for `NativeStore.backup_xen` and `restore_xen_vm`.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::errors;

/// A logged-in XAPI session with a pool.
#[pyclass(frozen, module = "alike._native")]
pub(crate) struct NativeXenPool {
    pub(crate) inner: Arc<alike::XenPool>,
}

#[pymethods]
impl NativeXenPool {
    /// Logs in to the pool at `url` (`https://host`); `fingerprint` pins a
    /// self-signed certificate by its SHA-256; `insecure` allows `http://`
    /// to a host that is not a loopback address (the password in clear).
    #[staticmethod]
    #[pyo3(signature = (url, user, password, fingerprint=None, insecure=false))]
    fn connect(
        py: Python<'_>,
        url: String,
        user: String,
        password: String,
        fingerprint: Option<String>,
        insecure: bool,
    ) -> PyResult<NativeXenPool> {
        let mut o = alike::XenConnectOptions::default().insecure(insecure);
        if let Some(fp) = fingerprint {
            o = o.fingerprint(fp);
        }
        let p = py.detach(|| alike::xen_pool_with(&url, &user, &password, &o)).map_err(errors::to_py)?;
        Ok(NativeXenPool { inner: Arc::new(p) })
    }
}
