//! `alike._native.NativeHyperVHost`: a connection to a Hyper-V host (WMI
//! over WinRM, disks over SMB), for `NativeStore.backup_hyperv` and
//! `restore_hyperv_vm`.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::errors;

/// A connected Hyper-V host.
#[pyclass(frozen, module = "alike._native")]
pub(crate) struct NativeHyperVHost {
    pub(crate) inner: Arc<alike::HyperVHost>,
}

#[pymethods]
impl NativeHyperVHost {
    /// Connects to `url` (`http://host:5985/wsman`: NTLM with message
    /// encryption; `https://host:5986/wsman`: TLS with `fingerprint` or
    /// `ca_pem`, NTLM or `basic`); the share is reached at the host on
    /// `smb_port` with the same credentials; `staging_dir` is where a
    /// restore stages each VHDX.
    #[staticmethod]
    #[pyo3(signature = (url, user, password, smb_port=445, fingerprint=None, ca_pem=None, basic=false, staging_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn connect(
        py: Python<'_>,
        url: String,
        user: String,
        password: String,
        smb_port: u16,
        fingerprint: Option<String>,
        ca_pem: Option<String>,
        basic: bool,
        staging_dir: Option<std::path::PathBuf>,
    ) -> PyResult<NativeHyperVHost> {
        let mut o = alike::HyperVHostOptions::new(&url, &user, &password);
        o.smb_port(smb_port);
        o.staging_dir = staging_dir;
        o.wsman.basic(basic);
        if let Some(fp) = fingerprint {
            o.wsman.server_cert(alike::HyperVCertCheck::pin(&fp).map_err(|e| errors::to_py(alike::Error::from(e)))?);
        }
        if let Some(pem) = ca_pem {
            o.wsman.server_cert(alike::HyperVCertCheck::CaPem(pem));
        }
        let h = py.detach(|| alike::HyperVHost::connect(&o)).map_err(|e| errors::to_py(alike::Error::from(e)))?;
        Ok(NativeHyperVHost { inner: Arc::new(h) })
    }
}
