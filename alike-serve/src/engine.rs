//! What the daemon serves, apart from HTTP: the [`Engine`] seam (jobs,
//! schedules, runs, history — the scheduler library implements it), the
//! stores the daemon opened ([`Stores`]: VMs, versions, figures,
//! verification results, restores into allowed destinations), and the event
//! bus ([`Events`]) that the SSE stream and the page's live view read.
//!
//! Engine answers travel as JSON values: the HTTP layer passes them through
//! as the engine serialises its own report types, so the API's shapes are
//! the engine's (`docs/openapi.json` describes them) and nothing is shaped
//! twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// One event on the bus: what the SSE stream sends as `event: KIND`,
/// `data: JSON`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Event {
    /// A growing number, per daemon run (the SSE `id`).
    pub seq: u64,
    /// The kind: the scheduler's event types (`job_queued`, `job_started`,
    /// `vm_started`, `progress`, `vm_done`, `warning`, `step_done`,
    /// `failed`, `finished`) and the daemon's own restores
    /// (`restore_started`, `restore_progress`, `restore_finished`,
    /// `restore_failed`).
    pub kind: String,
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// The event's fields.
    pub data: Value,
}

/// The event bus: a bounded broadcast (a slow subscriber loses the oldest
/// events and is told so, never holds the engine up).
#[derive(Debug, Clone)]
pub struct Events {
    tx: tokio::sync::broadcast::Sender<Event>,
    seq: Arc<AtomicU64>,
}

impl Default for Events {
    fn default() -> Self {
        Events { tx: tokio::sync::broadcast::channel(1024).0, seq: Arc::new(AtomicU64::new(0)) }
    }
}

impl Events {
    /// Publishes an event (dropped if nobody listens).
    pub fn publish(&self, kind: &str, data: Value) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.tx.send(Event { seq, kind: kind.to_string(), time_ms: now_ms(), data });
    }
    /// A new subscriber, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// Which runs `GET /api/runs` lists.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[non_exhaustive]
pub struct RunFilter {
    /// Only this job's.
    pub job: Option<String>,
    /// Only runs that covered this VM.
    pub vm: Option<String>,
    /// Only runs with this result (`ok`, `failed`, `interrupted`, `running`…).
    pub result: Option<String>,
    /// Only runs started at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// The scheduler's side of the daemon: jobs, runs and their history. Every
/// method has a default that says the service is absent (HTTP 501), so an
/// engine implements what it has. Methods block (they may touch the
/// database or start work): the daemon calls them on blocking threads.
pub trait Engine: Send + Sync + 'static {
    /// Every job with its schedule, next run and last result.
    ///
    /// # Errors
    /// The engine's.
    fn jobs(&self) -> Result<Value> {
        Err(Error::Unsupported("this daemon has no scheduler".into()))
    }
    /// Creates or replaces the job `name` from its JSON definition; returns
    /// the job as [`Engine::jobs`] shows it.
    ///
    /// # Errors
    /// A definition the engine refuses ([`Error::BadRequest`]).
    fn put_job(&self, name: &str, definition: Value) -> Result<Value> {
        let _ = (name, definition);
        Err(Error::Unsupported("this daemon has no scheduler".into()))
    }
    /// Deletes a job (its history stays).
    ///
    /// # Errors
    /// [`Error::NotFound`].
    fn delete_job(&self, name: &str) -> Result<()> {
        let _ = name;
        Err(Error::Unsupported("this daemon has no scheduler".into()))
    }
    /// Starts a run of `name` now; returns `{"run": ID}`.
    ///
    /// # Errors
    /// [`Error::NotFound`]; the job already running.
    fn run_job(&self, name: &str) -> Result<Value> {
        let _ = name;
        Err(Error::Unsupported("this daemon has no scheduler".into()))
    }
    /// Cancels a running run.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no such run is running.
    fn cancel_run(&self, run: &str) -> Result<()> {
        let _ = run;
        Err(Error::Unsupported("this daemon has no scheduler".into()))
    }
    /// Runs, newest first: start, end, result, per-VM and per-disk figures.
    ///
    /// # Errors
    /// The engine's.
    fn runs(&self, filter: &RunFilter) -> Result<Value> {
        let _ = filter;
        Err(Error::Unsupported("this daemon has no scheduler".into()))
    }
    /// Restores a whole VM of a version onto a pool as a new VM:
    /// `{"store", "version", "vm"?, "pool", "storage", "name"?, "network"?}`.
    ///
    /// # Errors
    /// Unknown store, version or pool; the host's errors.
    fn restore_vm(&self, request: Value) -> Result<Value> {
        let _ = request;
        Err(Error::Unsupported("this daemon has no pools".into()))
    }
    /// The configured pools' names.
    fn pools(&self) -> Vec<String> {
        Vec::new()
    }
    /// Adds the engine's series (last success per VM and job, durations,
    /// bytes, failures) to `/metrics`.
    fn metrics(&self, m: &mut Metrics) {
        let _ = m;
    }
}

/// An engine with no scheduler: the daemon then serves stores, restores,
/// metrics and the page alone.
#[derive(Debug, Default)]
pub struct NoScheduler;
impl Engine for NoScheduler {}

/// A restore request (`POST /api/restore`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RestoreRequest {
    /// The store's name.
    pub store: String,
    /// A version id (or unique prefix), or `latest` with `vm`.
    pub version: String,
    /// The VM, for `latest`.
    #[serde(default)]
    pub vm: Option<String>,
    /// The disk's position (0-based).
    pub disk: u32,
    /// A destination's name from `restore_destinations`.
    pub destination: String,
    /// A plain file name inside it (no `/`, not `.` or `..`, at most 255
    /// bytes); an existing file is refused.
    pub file: String,
    /// `raw` (default), `vhd` or `vhdx`.
    #[serde(default)]
    pub format: Option<String>,
}

/// The stores the daemon opened, by name.
pub struct Stores {
    stores: BTreeMap<String, Arc<alike::Store>>,
    destinations: BTreeMap<String, PathBuf>,
    events: Events,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").field("stores", &self.stores.keys().collect::<Vec<_>>()).finish()
    }
}

impl Stores {
    /// Opens every `[[store]]` of the configuration (their index caches
    /// under `default_cache/NAME` where a store names none).
    ///
    /// # Errors
    /// [`Error::Engine`] naming the store.
    pub fn open(
        settings: &[alike::config::StoreConfig],
        default_cache: &Path,
        destinations: BTreeMap<String, PathBuf>,
        events: Events,
    ) -> Result<Stores> {
        let mut stores = BTreeMap::new();
        for s in settings {
            let mut s = s.clone();
            if s.cache_dir.is_none() {
                s.cache_dir = Some(default_cache.join(&s.name));
            }
            let store = s.open().map_err(|e| Error::engine(&s.name, e))?;
            stores.insert(s.name.clone(), Arc::new(store));
        }
        Ok(Stores::from_stores(stores, destinations, events))
    }

    /// The daemon's view of stores opened elsewhere (shared with a
    /// scheduler that runs jobs into them).
    pub fn from_stores(
        stores: BTreeMap<String, Arc<alike::Store>>,
        destinations: BTreeMap<String, PathBuf>,
        events: Events,
    ) -> Stores {
        Stores { stores, destinations, events }
    }

    /// A store by name.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn get(&self, name: &str) -> Result<&Arc<alike::Store>> {
        self.stores.get(name).ok_or_else(|| Error::NotFound(format!("no store named {name:?}")))
    }

    /// Names of the stores.
    pub fn names(&self) -> Vec<String> {
        self.stores.keys().cloned().collect()
    }

    /// `GET /api/stores`: each store's figures and the series the page
    /// charts (cumulative logical and stored bytes, version by version).
    pub(crate) fn summary(&self) -> Result<Value> {
        let mut out = Vec::new();
        for (name, s) in &self.stores {
            let st = s.stats().map_err(|e| Error::engine(name, e))?;
            let mut vs = s.versions(None).map_err(|e| Error::engine(name, e))?;
            vs.sort_by_key(|v| v.time_ms);
            let (mut logical, mut stored) = (0u64, 0u64);
            let series: Vec<Value> = vs
                .iter()
                .map(|v| {
                    logical += v.disks.iter().map(|d| d.data_bytes).sum::<u64>();
                    stored += v.disks.iter().map(|d| d.new_stored_bytes).sum::<u64>();
                    json!({"time_ms": v.time_ms, "vm": v.vm, "logical_bytes": logical, "stored_bytes": stored})
                })
                .collect();
            out.push(json!({
                "name": name,
                "location": s.location(),
                "encrypted": s.is_encrypted(),
                "versions": st.versions,
                "logical_bytes": st.logical_bytes,
                "unique_bytes": st.unique_bytes,
                "stored_bytes": st.stored_bytes,
                "packs": st.packs,
                "dedup_ratio": st.dedup_ratio(),
                "compression_ratio": st.compression_ratio(),
                "total_ratio": st.total_ratio(),
                "series": series,
            }));
        }
        Ok(Value::Array(out))
    }

    /// `GET /api/vms`: VMs of every store with their versions (newest
    /// first) and each version's newest verification.
    pub(crate) fn vms(&self, store: Option<&str>) -> Result<Value> {
        let mut by_vm: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
        for (name, s) in &self.stores {
            if store.is_some_and(|w| w != name) {
                continue;
            }
            let checks = s.verifications().map_err(|e| Error::engine(name, e))?;
            let mut vs = s.versions(None).map_err(|e| Error::engine(name, e))?;
            vs.sort_by_key(|v| std::cmp::Reverse(v.time_ms));
            for v in vs {
                let mut j = serde_json::to_value(&v).unwrap_or(Value::Null);
                if let Some(o) = j.as_object_mut() {
                    o.insert("verification".into(), serde_json::to_value(checks.get(&v.id)).unwrap_or(Value::Null));
                }
                by_vm.entry((name.clone(), v.vm.clone())).or_default().push(j);
            }
        }
        Ok(Value::Array(
            by_vm
                .into_iter()
                .map(|((store, vm), versions)| json!({"store": store, "vm": vm, "versions": versions}))
                .collect(),
        ))
    }

    /// `POST /api/restore`: one disk of a version into a new file under an
    /// allowed destination, with `restore.progress` events as it goes.
    pub(crate) fn restore(&self, r: &RestoreRequest) -> Result<Value> {
        let dir = self.destinations.get(&r.destination).ok_or_else(|| {
            Error::BadRequest(format!(
                "restore destination {:?} is not in the configuration's restore_destinations",
                r.destination
            ))
        })?;
        check_file_name(&r.file)?;
        let format = match r.format.as_deref().unwrap_or("raw") {
            "raw" => alike::ImageFormat::Raw,
            "vhd" => alike::ImageFormat::Vhd,
            "vhdx" => alike::ImageFormat::Vhdx,
            f => return Err(Error::BadRequest(format!("format {f:?}: raw, vhd or vhdx"))),
        };
        let store = self.get(&r.store)?;
        let version = store.version(&r.version, r.vm.as_deref()).map_err(|e| Error::engine(&r.store, e))?;
        // The destination must be a real directory, not a link to elsewhere.
        let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io("restore destination", dir, e))?;
        if !meta.is_dir() {
            return Err(Error::BadRequest(format!("restore destination {} is not a directory", dir.display())));
        }
        let path = dir.join(&r.file);
        let (events, vm, disk, file) = (self.events.clone(), version.vm.clone(), r.disk, r.file.clone());
        let last = Arc::new(AtomicU64::new(0));
        let opts = alike::RestoreOptions::default().format(format).progress(move |p| {
            // At most one event per 1% (a progress callback runs per block).
            let pct = p.bytes_done.saturating_mul(100) / p.bytes_total.max(1);
            if last.swap(pct, Ordering::Relaxed) != pct {
                events.publish(
                    "restore_progress",
                    json!({"vm": vm, "disk": disk, "file": file, "done": p.bytes_done, "total": p.bytes_total}),
                );
            }
        });
        self.events.publish(
            "restore_started",
            json!({"store": r.store, "version": version.id, "vm": version.vm, "disk": r.disk, "destination": r.destination, "file": r.file}),
        );
        let rep = match store.restore_to_file(&version, r.disk, &path, &opts) {
            Ok(rep) => rep,
            Err(e) => {
                self.events
                    .publish("restore_failed", json!({"vm": version.vm, "disk": r.disk, "error": e.to_string()}));
                return Err(Error::engine(&r.store, e));
            }
        };
        let out = json!({
            "store": r.store, "version": version.id, "vm": version.vm, "disk": r.disk,
            "destination": r.destination, "file": r.file, "report": rep,
        });
        self.events.publish("restore_finished", out.clone());
        Ok(out)
    }

    /// The stores' series for `/metrics`.
    pub(crate) fn metrics(&self, m: &mut Metrics) {
        for (name, s) in &self.stores {
            let l = [("store", name.as_str())];
            match s.stats() {
                Ok(st) => {
                    m.gauge("alike_store_versions", "Versions in the store.", &l, st.versions as f64);
                    m.gauge(
                        "alike_store_logical_bytes",
                        "Sum of the versions' non-hole disk bytes.",
                        &l,
                        st.logical_bytes as f64,
                    );
                    m.gauge(
                        "alike_store_unique_bytes",
                        "Plaintext bytes of unique chunks.",
                        &l,
                        st.unique_bytes as f64,
                    );
                    m.gauge(
                        "alike_store_stored_bytes",
                        "Bytes of all objects in the store.",
                        &l,
                        st.stored_bytes as f64,
                    );
                    m.gauge("alike_store_dedup_ratio", "Logical bytes per unique byte.", &l, st.dedup_ratio());
                    m.gauge("alike_store_total_ratio", "Logical bytes per stored byte.", &l, st.total_ratio());
                    m.gauge("alike_store_up", "Whether the store answered.", &l, 1.0);
                }
                Err(_) => m.gauge("alike_store_up", "Whether the store answered.", &l, 0.0),
            }
            if let Ok(vs) = s.versions(None) {
                let mut last: BTreeMap<&str, i64> = BTreeMap::new();
                for v in &vs {
                    let e = last.entry(v.vm.as_str()).or_insert(v.time_ms);
                    *e = (*e).max(v.time_ms);
                }
                for (vm, t) in last {
                    m.gauge(
                        "alike_vm_last_version_timestamp_seconds",
                        "Time of the newest version of the VM in the store.",
                        &[("store", name.as_str()), ("vm", vm)],
                        t as f64 / 1000.0,
                    );
                }
            }
        }
    }
}

/// A restore's file name: one plain component.
fn check_file_name(f: &str) -> Result<()> {
    let bad =
        f.is_empty() || f.len() > 255 || f == "." || f == ".." || f.contains(['/', '\\', '\0']) || f.starts_with('.');
    if bad {
        return Err(Error::BadRequest(format!(
            "restore file {f:?}: a plain file name (no '/', not starting with '.', at most 255 bytes)"
        )));
    }
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_stay_inside() {
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", ".hidden", "a\\b", "a\0b"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        check_file_name("web-01-disk0.vhd").unwrap();
        assert!(check_file_name(&"x".repeat(256)).is_err());
    }
}
