//! `alike._native.NativeStore`: one open store. Methods mirror the facade's
//! `Store` and return plain data; `python/alike/__init__.py` types it.

use alike::Recover;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use alike::{
    BackupOptions, ImageFormat, MaintenanceOptions, Parent, RestoreOptions, RetentionPolicy, VaultOptions,
    VerifyOptions,
};
use pyo3::prelude::*;
use serde_json::{Value, json};

use crate::convert::{self, ser};
use crate::errors;
use crate::run::{CancelToken, run, with_ctx};

/// An open store. `close()` releases it (and its cache lock) at once;
/// otherwise it is released when garbage-collected.
#[pyclass(frozen, module = "alike._native")]
pub(crate) struct NativeStore {
    inner: Mutex<Option<Arc<alike::Store>>>,
}

/// A facade report as the facade serialises it, plus its version whole
/// (for the Python dataclass).
pub(crate) fn with_version(report: &impl serde::Serialize, v: &alike::Version) -> PyResult<Value> {
    let internal = |e: serde_json::Error| pyo3::exceptions::PyRuntimeError::new_err(format!("internal: {e}"));
    let mut j = serde_json::to_value(report).map_err(internal)?;
    j["version"] = serde_json::to_value(v).map_err(internal)?;
    Ok(j)
}

impl NativeStore {
    pub(crate) fn store(&self) -> PyResult<Arc<alike::Store>> {
        self.inner
            .locked()
            .clone()
            .ok_or_else(|| errors::to_py(alike::Error::InvalidArgument("the store is closed".into())))
    }
}

#[allow(clippy::too_many_arguments)]
fn builder(passphrase: Option<&str>, key_file: Option<PathBuf>, cache_dir: Option<PathBuf>) -> alike::StoreBuilder {
    let mut b = alike::Store::builder();
    if let Some(p) = passphrase {
        b.passphrase(p);
    }
    if let Some(k) = key_file {
        b.key_file(k);
    }
    if let Some(c) = cache_dir {
        b.cache_dir(c);
    }
    b
}

#[pymethods]
impl NativeStore {
    /// Creates a store at `path` (a directory or a URL such as `s3://bucket/prefix`).
    #[staticmethod]
    #[pyo3(signature = (path, passphrase=None, key_file=None, encrypt=true, cache_dir=None, block_size=None, compression_level=None, insecure_fast_kdf=false, chunking=None, writer_keys=false))]
    #[allow(clippy::too_many_arguments)]
    fn create(
        py: Python<'_>,
        path: String,
        passphrase: Option<&str>,
        key_file: Option<PathBuf>,
        encrypt: bool,
        cache_dir: Option<PathBuf>,
        block_size: Option<u32>,
        compression_level: Option<i32>,
        insecure_fast_kdf: bool,
        chunking: Option<&str>,
        writer_keys: bool,
    ) -> PyResult<NativeStore> {
        let mut b = builder(passphrase, key_file, cache_dir);
        if writer_keys {
            b.writer_keys();
        }
        if !encrypt {
            b.no_encryption();
        }
        if let Some(c) = chunking {
            b.chunking(c.parse::<alike::Chunking>().map_err(|e| errors::to_py(alike::Error::from(e)))?);
        }
        if let Some(bs) = block_size {
            b.block_size(bs);
        }
        if compression_level.is_some() {
            b.compression_level(compression_level);
        }
        if insecure_fast_kdf {
            b.insecure_fast_kdf();
        }
        let s = py.detach(|| b.create_at(&path)).map_err(errors::to_py)?;
        Ok(NativeStore { inner: Mutex::new(Some(Arc::new(s))) })
    }

    /// Opens the store at `path` (a directory or a URL).
    #[staticmethod]
    #[pyo3(signature = (path, passphrase=None, key_file=None, cache_dir=None, key_file_contents=None))]
    fn open(
        py: Python<'_>,
        path: String,
        passphrase: Option<&str>,
        key_file: Option<PathBuf>,
        cache_dir: Option<PathBuf>,
        key_file_contents: Option<Vec<u8>>,
    ) -> PyResult<NativeStore> {
        let mut b = builder(passphrase, key_file, cache_dir);
        if let Some(k) = key_file_contents {
            b.key_file_contents(k);
        }
        let s = py.detach(|| b.open_at(&path)).map_err(errors::to_py)?;
        Ok(NativeStore { inner: Mutex::new(Some(Arc::new(s))) })
    }

    /// Releases the store; later calls raise `InvalidArgument`.
    fn close(&self) {
        self.inner.locked().take();
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.locked().is_none()
    }

    /// id, location, encrypted, block_size (null for content-defined chunks), chunking, format_version.
    fn info(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        convert::to_py(
            py,
            &json!({
                "id": s.id(),
                "location": s.location(),
                "encrypted": s.is_encrypted(),
                "block_size": s.block_size(),
                "chunking": s.chunking().to_string(),
                "format_version": s.format_version(),
                "write_only": s.is_write_only(),
            }),
        )
    }

    /// Writes a write-only key file to `output` (0600, never over a file).
    fn add_writer_key(&self, py: Python<'_>, output: PathBuf) -> PyResult<()> {
        let s = self.store()?;
        py.detach(|| s.add_writer_key(&output)).map_err(errors::to_py)
    }

    /// The bytes of a write-only key file.
    fn writer_key_file_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let s = self.store()?;
        let b = s.writer_key_file_bytes().map_err(errors::to_py)?;
        Ok(pyo3::types::PyBytes::new(py, &b))
    }

    /// Backs up image files as the disks of `vm` on `parent` (default: the
    /// VM's latest version; `full` reads everything); returns the report.
    /// A disk of 0 bytes only with `allow_empty`.
    #[pyo3(signature = (vm, disks, parent=None, full=false, format=None, threads=0, progress=None, cancel=None, allow_empty=false))]
    #[allow(clippy::too_many_arguments)]
    fn backup(
        &self,
        py: Python<'_>,
        vm: String,
        disks: Vec<PathBuf>,
        parent: Option<String>,
        full: bool,
        format: Option<String>,
        threads: usize,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
        allow_empty: bool,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        // No parent given: the VM's latest version, unless a full read is asked for.
        let parent = match (full, parent.as_deref()) {
            (true, _) => Parent::None,
            (false, None | Some("latest")) => Parent::Latest,
            (false, Some(id)) => Parent::Id(id.to_string()),
        };
        let format = format.map(|f| f.parse::<ImageFormat>()).transpose().map_err(errors::to_py)?;
        let r = run(py, progress, cancel, |ctx| {
            let mut o =
                with_ctx!(BackupOptions::default().parent(parent).threads(threads).allow_empty(allow_empty), ctx);
            if let Some(f) = format {
                o = o.image_format(f);
            }
            s.backup_images(&vm, &disks, &o)
        })?;
        convert::to_py(py, &with_version(&r, &r.version)?)
    }

    /// Versions, oldest first (of `vm` when given).
    #[pyo3(signature = (vm=None))]
    fn versions(&self, py: Python<'_>, vm: Option<String>) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let v = py.detach(|| s.versions(vm.as_deref())).map_err(errors::to_py)?;
        ser(py, &v)
    }

    /// One version by id, unique prefix or "latest".
    #[pyo3(signature = (spec, vm=None))]
    fn version(&self, py: Python<'_>, spec: String, vm: Option<String>) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let v = py.detach(|| s.version(&spec, vm.as_deref())).map_err(errors::to_py)?;
        ser(py, &v)
    }

    /// Restores disk `disk` of version `spec` to the file `output`.
    #[pyo3(signature = (spec, output, disk=0, vm=None, format="raw", partial=false, threads=0, progress=None, cancel=None, force=false))]
    #[allow(clippy::too_many_arguments)]
    fn restore(
        &self,
        py: Python<'_>,
        spec: String,
        output: PathBuf,
        disk: u32,
        vm: Option<String>,
        format: &str,
        partial: bool,
        threads: usize,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
        force: bool,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let format: ImageFormat = format.parse().map_err(errors::to_py)?;
        let r = run(py, progress, cancel, |ctx| {
            let v = s.version(&spec, vm.as_deref())?;
            let o =
                with_ctx!(RestoreOptions::default().format(format).partial(partial).force(force).threads(threads), ctx);
            s.restore_to_file(&v, disk, &output, &o)
        })?;
        ser(py, &r)
    }

    /// Lists the volumes of version `spec` (no `path`), or a directory or
    /// file of one volume (`partition`, `volume`, or the disk's one
    /// filesystem).
    #[pyo3(signature = (spec, vm=None, path=None, disk=None, partition=None, volume=None, cache_size=None))]
    #[allow(clippy::too_many_arguments)]
    fn ls(
        &self,
        py: Python<'_>,
        spec: String,
        vm: Option<String>,
        path: Option<String>,
        disk: Option<u32>,
        partition: Option<u32>,
        volume: Option<String>,
        cache_size: Option<u64>,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let r = run(py, None, None, |_ctx| {
            let v = s.version(&spec, vm.as_deref())?;
            let mut o = alike::LsOptions::default();
            if let Some(d) = disk {
                o = o.disk(d);
            }
            if let Some(p) = partition {
                o = o.partition(p);
            }
            if let Some(l) = volume {
                o = o.volume(l);
            }
            if let Some(b) = cache_size {
                o = o.cache_size(b);
            }
            if let Some(p) = path {
                o = o.path(p);
            }
            s.ls(&v, &o)
        })?;
        ser(py, &r)
    }

    /// Extracts `paths` of version `spec` into the directory `to`.
    #[pyo3(signature = (spec, paths, to, vm=None, disk=None, partition=None, volume=None, force=false, max_bytes=None, cache_size=None, progress=None, cancel=None))]
    #[allow(clippy::too_many_arguments)]
    fn extract(
        &self,
        py: Python<'_>,
        spec: String,
        paths: Vec<String>,
        to: PathBuf,
        vm: Option<String>,
        disk: Option<u32>,
        partition: Option<u32>,
        volume: Option<String>,
        force: bool,
        max_bytes: Option<u64>,
        cache_size: Option<u64>,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let r = run(py, progress, cancel, |ctx| {
            let v = s.version(&spec, vm.as_deref())?;
            let mut o = with_ctx!(alike::ExtractOptions::default().paths(paths).to(&to).force(force), ctx);
            if let Some(d) = disk {
                o = o.disk(d);
            }
            if let Some(p) = partition {
                o = o.partition(p);
            }
            if let Some(l) = volume {
                o = o.volume(l);
            }
            if let Some(b) = cache_size {
                o = o.cache_size(b);
            }
            if let Some(b) = max_bytes {
                o = o.max_bytes(b);
            }
            s.extract(&v, &o)
        })?;
        ser(py, &r)
    }

    /// Serves version `spec` over NBD on a thread until the returned
    /// server's `stop()`: one disk (`disk`) or every disk (`all_disks`), on
    /// TCP `listen` or a Unix `socket`, read-only or writable through
    /// `writable_overlay`; TLS required with `tls_cert` and `tls_key` (PEM
    /// files), client certificates with `tls_client_ca`.
    #[pyo3(signature = (spec, vm=None, disk=0, all_disks=false, listen=None, socket=None, writable_overlay=None, keep_overlay=false, cache_size=None, readahead=None, connections=None, threads=0, tls_cert=None, tls_key=None, tls_client_ca=None))]
    #[allow(clippy::too_many_arguments)]
    fn serve_nbd(
        &self,
        py: Python<'_>,
        spec: String,
        vm: Option<String>,
        disk: u32,
        all_disks: bool,
        listen: Option<String>,
        socket: Option<PathBuf>,
        writable_overlay: Option<PathBuf>,
        keep_overlay: bool,
        cache_size: Option<u64>,
        readahead: Option<u64>,
        connections: Option<usize>,
        threads: usize,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        tls_client_ca: Option<PathBuf>,
    ) -> PyResult<crate::nbd::NativeNbdServer> {
        let s = self.store()?;
        let mut o = alike::NbdOptions::default().threads(threads).keep_overlay(keep_overlay);
        o = if all_disks { o.all_disks() } else { o.disk(disk) };
        if let Some(l) = listen {
            o = o.listen_tcp(l);
        }
        if let Some(p) = socket {
            o = o.listen_unix(p);
        }
        if let Some(f) = writable_overlay {
            o = o.writable_overlay(f);
        }
        if let Some(b) = cache_size {
            o = o.cache_size(b);
        }
        if let Some(b) = readahead {
            o = o.readahead(b);
        }
        if let Some(n) = connections {
            o = o.max_connections(n);
        }
        match (tls_cert, tls_key) {
            (Some(c), Some(k)) => o = o.tls(c, k),
            (None, None) => {}
            _ => {
                return Err(errors::to_py(alike::Error::InvalidArgument("TLS needs both tls_cert and tls_key".into())));
            }
        }
        if let Some(ca) = tls_client_ca {
            o = o.tls_client_ca(ca);
        }
        crate::nbd::NativeNbdServer::start(py, s, spec, vm, o)
    }

    /// Checks the store (quick by default, every byte with `full`).
    #[pyo3(signature = (full=false, vm=None, version=None, threads=0, progress=None, cancel=None))]
    #[allow(clippy::too_many_arguments)]
    fn verify(
        &self,
        py: Python<'_>,
        full: bool,
        vm: Option<String>,
        version: Option<String>,
        threads: usize,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let r = run(py, progress, cancel, |ctx| {
            let mut o = with_ctx!(VerifyOptions::default().full(full).threads(threads), ctx);
            if let Some(vm) = vm {
                o = o.vm(vm);
            }
            if let Some(v) = version {
                o = o.version(v);
            }
            s.verify(&o)
        })?;
        ser(py, &r)
    }

    /// Applies a retention policy; returns decisions and removed ids.
    #[pyo3(signature = (vm=None, keep_last=0, keep_hourly=0, keep_daily=0, keep_weekly=0, keep_monthly=0, keep_yearly=0, dry_run=false))]
    #[allow(clippy::too_many_arguments)]
    fn prune(
        &self,
        py: Python<'_>,
        vm: Option<String>,
        keep_last: u32,
        keep_hourly: u32,
        keep_daily: u32,
        keep_weekly: u32,
        keep_monthly: u32,
        keep_yearly: u32,
        dry_run: bool,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let p = RetentionPolicy::default()
            .last(keep_last)
            .hourly(keep_hourly)
            .daily(keep_daily)
            .weekly(keep_weekly)
            .monthly(keep_monthly)
            .yearly(keep_yearly);
        let r = py.detach(|| s.prune(vm.as_deref(), &p, dry_run)).map_err(errors::to_py)?;
        ser(py, &r)
    }

    /// Removes one version (its data goes at the next gc).
    fn forget(&self, py: Python<'_>, version: String) -> PyResult<()> {
        let s = self.store()?;
        py.detach(|| s.forget(&version)).map_err(errors::to_py)
    }

    /// Protects a version from prune and forget.
    fn pin(&self, py: Python<'_>, version: String) -> PyResult<()> {
        let s = self.store()?;
        py.detach(|| s.pin(&version)).map_err(errors::to_py)
    }

    /// Removes a pin.
    fn unpin(&self, py: Python<'_>, version: String) -> PyResult<()> {
        let s = self.store()?;
        py.detach(|| s.unpin(&version)).map_err(errors::to_py)
    }

    /// Ids of pinned versions, sorted.
    fn pinned(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let s = self.store()?;
        let mut v: Vec<String> = py.detach(|| s.pinned()).map_err(errors::to_py)?.into_iter().collect();
        v.sort();
        Ok(v)
    }

    /// Frees the space of data no version references.
    #[pyo3(signature = (dry_run=false, progress=None, cancel=None))]
    fn gc(
        &self,
        py: Python<'_>,
        dry_run: bool,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let r = run(py, progress, cancel, |ctx| {
            let o = with_ctx!(MaintenanceOptions::default().dry_run(dry_run), ctx);
            s.gc(&o)
        })?;
        ser(py, &r)
    }

    /// Copies versions to the store `to` (Offsite Vaulting).
    #[pyo3(signature = (to, vm=None, last=None, keep_last=0, keep_daily=0, keep_weekly=0, keep_monthly=0, keep_yearly=0, bandwidth_limit=None, threads=0, progress=None, cancel=None))]
    #[allow(clippy::too_many_arguments)]
    fn vault(
        &self,
        py: Python<'_>,
        to: &NativeStore,
        vm: Option<String>,
        last: Option<usize>,
        keep_last: u32,
        keep_daily: u32,
        keep_weekly: u32,
        keep_monthly: u32,
        keep_yearly: u32,
        bandwidth_limit: Option<u64>,
        threads: usize,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let v = to.store()?;
        let p = RetentionPolicy::default()
            .last(keep_last)
            .daily(keep_daily)
            .weekly(keep_weekly)
            .monthly(keep_monthly)
            .yearly(keep_yearly);
        let r = run(py, progress, cancel, |ctx| {
            let mut o = with_ctx!(VaultOptions::default().threads(threads), ctx);
            if let Some(vm) = vm {
                o = o.vm(vm);
            }
            if let Some(n) = last {
                o = o.last(n);
            }
            if let Some(b) = bandwidth_limit {
                o = o.bandwidth_limit(b);
            }
            if !p.is_empty() {
                o = o.retention(p);
            }
            s.vault(&v, &o)
        })?;
        ser(py, &r)
    }

    /// Backs up the XenServer VM `vm` (name or uuid) of `pool`: snapshot,
    /// only the blocks CBT reports changed since the last backup (or a full,
    /// deduplicated read, said loudly), then the previous snapshot released.
    #[pyo3(signature = (pool, vm, full=false, quiesce=false, threads=0, progress=None, cancel=None))]
    #[allow(clippy::too_many_arguments)]
    fn backup_xen(
        &self,
        py: Python<'_>,
        pool: &crate::xen::NativeXenPool,
        vm: String,
        full: bool,
        quiesce: bool,
        threads: usize,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let p = pool.inner.clone();
        let r = run(py, progress, cancel, |ctx| {
            let mut o = with_ctx!(BackupOptions::default().threads(threads), ctx);
            if full {
                o = o.parent(Parent::None);
            }
            if quiesce {
                o = o.quiesce(alike::Quiesce::IfSupported);
            }
            s.backup_vm(&*p, &vm, &o)
        })?;
        convert::to_py(py, &with_version(&r, &r.backup.version)?)
    }

    /// Recreates version `spec` as a new VM on `pool`: its configuration, on
    /// storage repository `sr` (name or uuid) and `network`, with its disks uploaded.
    #[pyo3(signature = (spec, pool, sr, network=None, vm=None, progress=None, cancel=None))]
    #[allow(clippy::too_many_arguments)]
    fn restore_xen_vm(
        &self,
        py: Python<'_>,
        spec: String,
        pool: &crate::xen::NativeXenPool,
        sr: String,
        network: Option<String>,
        vm: Option<String>,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let p = pool.inner.clone();
        let r = run(py, progress, cancel, |ctx| {
            let v = s.version(&spec, vm.as_deref())?;
            let o = with_ctx!(RestoreOptions::default(), ctx);
            let mut place = alike::Placement::on(&sr);
            if let Some(n) = &network {
                place = place.network(n);
            }
            s.restore_vm(&v, &*p, &place, &o)
        })?;
        ser(py, &r)
    }

    /// Backs up the Hyper-V VM `vm` (name or id) of `host`: a recovery
    /// checkpoint, its disks read over SMB — only the ranges RCT says
    /// changed since the last backup, or everything (deduplicated, said
    /// loudly) — then the checkpoint becomes the next backup's reference point.
    #[pyo3(signature = (host, vm, full=false, quiesce=false, threads=0, progress=None, cancel=None))]
    #[allow(clippy::too_many_arguments)]
    fn backup_hyperv(
        &self,
        py: Python<'_>,
        host: &crate::hyperv::NativeHyperVHost,
        vm: String,
        full: bool,
        quiesce: bool,
        threads: usize,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let h = host.inner.clone();
        let r = run(py, progress, cancel, |ctx| {
            let mut o = with_ctx!(BackupOptions::default().threads(threads), ctx);
            if full {
                o = o.parent(Parent::None);
            }
            if quiesce {
                o = o.quiesce(alike::Quiesce::IfSupported);
            }
            s.backup_vm(&*h, &vm, &o)
        })?;
        convert::to_py(py, &with_version(&r, &r.backup.version)?)
    }

    /// Recreates version `spec` (of a Hyper-V VM, or of a Xen VM: its
    /// configuration mapped) as a new VM on `host`: VHDX files in the
    /// host's folder `path`, NICs on `switch` (default: the recorded ones).
    #[pyo3(signature = (spec, host, path, switch=None, name=None, vm=None, new_macs=false, progress=None, cancel=None))]
    #[allow(clippy::too_many_arguments)]
    fn restore_hyperv_vm(
        &self,
        py: Python<'_>,
        spec: String,
        host: &crate::hyperv::NativeHyperVHost,
        path: String,
        switch: Option<String>,
        name: Option<String>,
        vm: Option<String>,
        new_macs: bool,
        progress: Option<&Bound<'_, PyAny>>,
        cancel: Option<&Bound<'_, CancelToken>>,
    ) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let h = host.inner.clone();
        let r = run(py, progress, cancel, |ctx| {
            let v = s.version(&spec, vm.as_deref())?;
            let o = with_ctx!(RestoreOptions::default(), ctx);
            let mut place = alike::Placement::on(&path).keep_macs(!new_macs);
            if let Some(n) = &switch {
                place = place.network(n);
            }
            if let Some(n) = &name {
                place = place.name(n);
            }
            s.restore_vm(&v, &*h, &place, &o)
        })?;
        ser(py, &r)
    }

    /// Figures about the store.
    fn stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = self.store()?;
        let r = py.detach(|| s.stats()).map_err(errors::to_py)?;
        ser(py, &r)
    }
}
