//! `alike._native.NativeReplica`: a replica folder — replicate into it
//! (both ends in this process), list its points, export a point's disk,
//! read its history. `python/alike/__init__.py` types the results.

use std::path::PathBuf;
use std::sync::Arc;

use alike::{ReplicaExportOptions, ReplicateOptions};
use pyo3::prelude::*;

use crate::convert::ser;
use crate::errors;
use crate::run::{CancelToken, run};
use crate::store::{NativeStore, with_version};

/// A replica kept as a folder of VHDX files.
#[pyclass(frozen, module = "alike._native")]
pub(crate) struct NativeReplica {
    inner: Arc<alike::Replica>,
}

#[pymethods]
impl NativeReplica {
    /// Opens the replica in `path`.
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<NativeReplica> {
        let r = py.detach(|| alike::Replica::open(&path)).map_err(errors::to_py)?;
        Ok(NativeReplica { inner: Arc::new(r) })
    }

    /// Opens the replica of `vm` in `path`, or makes one there.
    #[staticmethod]
    fn open_or_create(py: Python<'_>, path: PathBuf, vm: String) -> PyResult<NativeReplica> {
        let r = py.detach(|| alike::Replica::open_or_create(&path, &vm)).map_err(errors::to_py)?;
        Ok(NativeReplica { inner: Arc::new(r) })
    }

    /// The folder.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_owned()
    }

    /// The VM it holds.
    #[getter]
    fn vm(&self) -> String {
        self.inner.vm().to_owned()
    }

    /// Replicates the image files `disks` as a new point (both ends here).
    #[pyo3(signature = (disks, keep=None, bwlimit=None, progress=None, cancel=None, seed_store=None, seed_version=None, backup_to=None))]
    #[allow(clippy::too_many_arguments)]
    fn replicate(
        &self,
        py: Python<'_>,
        disks: Vec<PathBuf>,
        keep: Option<usize>,
        bwlimit: Option<u64>,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
        seed_store: Option<&Bound<'_, NativeStore>>,
        seed_version: Option<String>,
        backup_to: Option<&Bound<'_, NativeStore>>,
    ) -> PyResult<Py<PyAny>> {
        let seed = seed_store.map(|s| s.get().store()).transpose()?;
        let backup = backup_to.map(|s| s.get().store()).transpose()?;
        let replica = self.inner.clone();
        let r = run(py, progress, cancel, |ctx| {
            let mut o = ReplicateOptions::default().progress(ctx.progress()).cancel_token(ctx.cancel.clone());
            if let Some(k) = keep {
                o = o.keep(k);
            }
            if let Some(b) = bwlimit {
                o = o.bwlimit(b);
            }
            let version;
            if let Some(s) = &seed {
                version = s.version(seed_version.as_deref().unwrap_or("latest"), Some(replica.vm()))?;
                o = o.seed(s, &version);
            }
            if let Some(s) = &backup {
                o = o.backup_to(s, alike::BackupOptions::default());
            }
            alike::replicate_images(replica.vm(), &disks, &replica, &o)
        })?;
        // A one-pass run's backup carries its version whole (for the Python dataclass).
        let mut j = serde_json::to_value(&r)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("internal: {e}")))?;
        if let Some(b) = &r.backup {
            j["backup"] = with_version(b, &b.version)?;
        }
        crate::convert::to_py(py, &j)
    }

    /// The committed points, oldest first.
    fn points(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let p = py.detach(|| self.inner.points()).map_err(errors::to_py)?;
        ser(py, &p)
    }

    /// The history of runs, oldest first.
    fn history(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let h = py.detach(|| self.inner.history()).map_err(errors::to_py)?;
        ser(py, &h)
    }

    /// Writes disk `disk` of point `point` to `output` as a raw image.
    #[pyo3(signature = (point, disk, output, force=false, progress=None, cancel=None))]
    #[allow(clippy::too_many_arguments)]
    fn export(
        &self,
        py: Python<'_>,
        point: u64,
        disk: usize,
        output: PathBuf,
        force: bool,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
    ) -> PyResult<Py<PyAny>> {
        let replica = self.inner.clone();
        let r = run(py, progress, cancel, |ctx| {
            let mut run = alike::RunOptions::default();
            run.progress = Some(Arc::new(ctx.progress()));
            run.cancel = ctx.cancel.clone();
            let mut o = ReplicaExportOptions::default();
            o.force(force).run(run);
            replica.export(point, disk, &output, &o)
        })?;
        ser(py, &r)
    }
}
