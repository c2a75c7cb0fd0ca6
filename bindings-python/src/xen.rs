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

/// A replica VM on a pool (`docs/replica-xen.md`): replicate onto it,
/// its points, test failover, failover, failback. Results are plain dicts.
#[pyclass(frozen, module = "alike._native")]
pub(crate) struct NativeXenReplica {
    inner: Arc<alike::XenReplicaVm>,
}

#[pymethods]
impl NativeXenReplica {
    /// Replicates VM `vm` of `source` onto its replica VM on `target`
    /// (made on `sr` the first time), both ends here; returns the report
    /// with `replica_vm` (the replica VM's uuid) added.
    #[staticmethod]
    #[pyo3(signature = (source, vm, target, sr, state_dir, network=None, keep=None, bwlimit=None, progress=None, cancel=None, seed_store=None, seed_version=None, backup_to=None))]
    #[allow(clippy::too_many_arguments)]
    fn replicate(
        py: Python<'_>,
        source: &Bound<'_, NativeXenPool>,
        vm: String,
        target: &Bound<'_, NativeXenPool>,
        sr: String,
        state_dir: std::path::PathBuf,
        network: Option<String>,
        keep: Option<usize>,
        bwlimit: Option<u64>,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, crate::run::CancelToken>>,
        seed_store: Option<&Bound<'_, crate::store::NativeStore>>,
        seed_version: Option<String>,
        backup_to: Option<&Bound<'_, crate::store::NativeStore>>,
    ) -> PyResult<Py<PyAny>> {
        let seed = seed_store.map(|s| s.get().store()).transpose()?;
        let backup = backup_to.map(|s| s.get().store()).transpose()?;
        let (src, dst) = (Arc::clone(&source.get().inner), Arc::clone(&target.get().inner));
        let mut ro = alike::XenReplicaOptions::new(sr, state_dir);
        if let Some(n) = network {
            ro = ro.network(n);
        }
        let (r, replica) = crate::run::run(py, progress, cancel, |ctx| {
            let mut o = alike::ReplicateOptions::default().progress(ctx.progress()).cancel_token(ctx.cancel.clone());
            if let Some(k) = keep {
                o = o.keep(k);
            }
            if let Some(b) = bwlimit {
                o = o.bwlimit(b);
            }
            let version;
            if let Some(s) = &seed {
                version = s.version(seed_version.as_deref().unwrap_or("latest"), Some(&vm))?;
                o = o.seed(s, &version);
            }
            if let Some(s) = &backup {
                o = o.backup_to(s, alike::BackupOptions::default());
            }
            alike::replicate_xen(&src, &vm, dst, &ro, &o)
        })?;
        let mut j = serde_json::to_value(&r)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("internal: {e}")))?;
        if let Some(b) = &r.backup {
            j["backup"] = crate::store::with_version(b, &b.version)?;
        }
        j["replica_vm"] = serde_json::Value::String(replica.uuid().to_owned());
        crate::convert::to_py(py, &j)
    }

    /// Opens replica VM `vm` of `pool`, its key and record under `state_dir`.
    #[staticmethod]
    fn open(
        py: Python<'_>,
        pool: &Bound<'_, NativeXenPool>,
        vm: String,
        state_dir: std::path::PathBuf,
    ) -> PyResult<NativeXenReplica> {
        let p = Arc::clone(&pool.get().inner);
        let r = py.detach(|| alike::XenReplicaVm::open(p, &vm, &state_dir)).map_err(errors::to_py)?;
        Ok(NativeXenReplica { inner: Arc::new(r) })
    }

    /// The replica VM's uuid.
    #[getter]
    fn uuid(&self) -> String {
        self.inner.uuid().to_owned()
    }

    /// The replica VM's name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_owned()
    }

    /// The committed points, oldest first.
    fn points(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let p = py.detach(|| self.inner.points()).map_err(errors::to_py)?;
        crate::convert::ser(py, &p)
    }

    /// Discards what an unfinished first run kept to resume; returns
    /// whether there was something.
    fn discard_partial(&self, py: Python<'_>) -> PyResult<bool> {
        py.detach(|| self.inner.discard_partial()).map_err(errors::to_py)
    }

    /// Boots a copy of `point` (the newest by default) without NICs.
    #[pyo3(signature = (point=None, network=None, start=true))]
    fn test_failover(
        &self,
        py: Python<'_>,
        point: Option<u64>,
        network: Option<String>,
        start: bool,
    ) -> PyResult<Py<PyAny>> {
        let t = py.detach(|| self.inner.test_failover(point, network.as_deref(), start)).map_err(errors::to_py)?;
        crate::convert::ser(py, &t)
    }

    /// Ends a test failover.
    fn end_test(&self, py: Python<'_>, vm: String) -> PyResult<()> {
        py.detach(|| self.inner.end_test(&vm)).map_err(errors::to_py)
    }

    /// Makes the replica the live VM at `point` (the newest by default).
    #[pyo3(signature = (point=None, networks=None, start=false))]
    fn failover(
        &self,
        py: Python<'_>,
        point: Option<u64>,
        networks: Option<std::collections::BTreeMap<String, String>>,
        start: bool,
    ) -> PyResult<Py<PyAny>> {
        let networks = networks.unwrap_or_default();
        let f = py.detach(|| self.inner.failover(point, &networks, start)).map_err(errors::to_py)?;
        crate::convert::ser(py, &f)
    }

    /// Sends what changed on this failed-over VM back onto VM `vm` of
    /// `original`, then swaps roles.
    #[pyo3(signature = (original, vm, start=false, progress=None, cancel=None))]
    fn failback(
        &self,
        py: Python<'_>,
        original: &Bound<'_, NativeXenPool>,
        vm: String,
        start: bool,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, crate::run::CancelToken>>,
    ) -> PyResult<Py<PyAny>> {
        let orig = Arc::clone(&original.get().inner);
        let replica = Arc::clone(&self.inner);
        let r = crate::run::run(py, progress, cancel, |ctx| {
            let o = alike::ReplicateOptions::default().progress(ctx.progress()).cancel_token(ctx.cancel.clone());
            replica.failback(orig, &vm, start, &o)
        })?;
        crate::convert::ser(py, &r)
    }

    /// Failback onto a new VM made on `original` (its disks on `sr`, its
    /// NICs on `network` or the source's networks, named `name` or as the
    /// source), the disks copied whole, then roles swapped; on failure
    /// nothing made is left.
    #[pyo3(signature = (original, sr, network=None, name=None, start=false, progress=None, cancel=None))]
    #[allow(clippy::too_many_arguments)]
    fn failback_new_vm(
        &self,
        py: Python<'_>,
        original: &Bound<'_, NativeXenPool>,
        sr: String,
        network: Option<String>,
        name: Option<String>,
        start: bool,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, crate::run::CancelToken>>,
    ) -> PyResult<Py<PyAny>> {
        let orig = Arc::clone(&original.get().inner);
        let replica = Arc::clone(&self.inner);
        let mut new = alike::FailbackNewVm::new(sr);
        new.network = network;
        new.name = name;
        let r = crate::run::run(py, progress, cancel, |ctx| {
            let o = alike::ReplicateOptions::default().progress(ctx.progress()).cancel_token(ctx.cancel.clone());
            replica.failback_new_vm(orig, &new, start, &o)
        })?;
        crate::convert::ser(py, &r)
    }
}
