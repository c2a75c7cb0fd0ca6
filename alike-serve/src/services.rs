//! The scheduler behind the API: [`alike::services::Services`] (jobs on
//! schedules, runs, the redb history, events) as the daemon's [`Engine`].
//!
//! Shapes: a job is `{name, kind, schedule, timezone, schedule_text,
//! next_run, active_run, last_run, last_result, spec}` (`spec` is the
//! `JobSpec` whole, what `PUT /api/jobs/NAME` takes back); a run is the
//! history's `RunRecord` as it serialises. Events go onto the daemon's bus
//! under their type name (`job_started`, `progress`, `vm_done`,
//! `finished`…) with the event's own JSON as data.

use std::collections::BTreeMap;
use std::sync::Arc;

use alike::services::{JobSpec, RunResult, Services};
use serde_json::{Value, json};

use crate::engine::{Engine, Events, RunFilter, Stores};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The services as the daemon's engine.
#[derive(Debug, Clone)]
pub struct ServicesEngine {
    services: Arc<Services>,
    events: Events,
}

fn err(e: alike::Error) -> Error {
    Error::Services(Box::new(e))
}

impl ServicesEngine {
    /// Wraps running services and forwards their events onto `events`.
    pub fn new(services: Arc<Services>, events: &Events) -> ServicesEngine {
        let bus = events.clone();
        services.subscribe(move |e| {
            bus.publish(e.kind.name(), serde_json::to_value(e).unwrap_or(Value::Null));
        });
        ServicesEngine { services, events: events.clone() }
    }

    /// The services.
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The services' stores, for the daemon's store views and restores.
    pub fn stores(&self, destinations: BTreeMap<String, std::path::PathBuf>, events: Events) -> Result<Stores> {
        let mut map = BTreeMap::new();
        for name in self.services.store_names() {
            let s = self.services.store(&name).map_err(err)?;
            map.insert(name, s);
        }
        Ok(Stores::from_stores(map, destinations, events))
    }

    fn job_json(s: &alike::services::JobStatus) -> Value {
        json!({
            "name": s.spec.name,
            "kind": s.spec.kind,
            "schedule": s.spec.schedule,
            "timezone": s.spec.timezone,
            "enabled": s.spec.enabled,
            "schedule_text": s.schedule_text,
            "next_run": s.next_run,
            "active_run": s.active_run,
            "last_run": s.last_run,
            "last_result": s.last_run.as_ref().map(|r| r.result),
            "spec": s.spec,
        })
    }
}

impl Engine for ServicesEngine {
    fn jobs(&self) -> Result<Value> {
        let jobs = self.services.jobs().map_err(err)?;
        Ok(Value::Array(jobs.iter().map(Self::job_json).collect()))
    }

    fn put_job(&self, name: &str, mut definition: Value) -> Result<Value> {
        let Some(obj) = definition.as_object_mut() else {
            return Err(Error::BadRequest("a job definition is a JSON object".into()));
        };
        match obj.get("name") {
            Some(Value::String(n)) if n != name => {
                return Err(Error::BadRequest(format!("the body names job {n:?}, the path {name:?}")));
            }
            _ => {
                obj.insert("name".into(), Value::String(name.to_string()));
            }
        }
        let spec: JobSpec =
            serde_json::from_value(definition).map_err(|e| Error::BadRequest(format!("job {name:?}: {e}")))?;
        self.services.put_job(spec).map_err(err)?;
        let jobs = self.services.jobs().map_err(err)?;
        jobs.iter()
            .find(|j| j.spec.name == name)
            .map(Self::job_json)
            .ok_or_else(|| Error::NotFound(format!("job {name:?} vanished after it was saved")))
    }

    fn delete_job(&self, name: &str) -> Result<()> {
        self.services.remove_job(name).map_err(err)
    }

    fn run_job(&self, name: &str) -> Result<Value> {
        let run = self.services.run_now(name).map_err(err)?;
        Ok(json!({"run": run}))
    }

    fn cancel_run(&self, run: &str) -> Result<()> {
        let id: u64 = run.parse().map_err(|_| Error::NotFound(format!("no run {run:?}")))?;
        self.services.cancel(id).map_err(err)
    }

    fn runs(&self, f: &RunFilter) -> Result<Value> {
        let mut filter = alike::services::RunFilter::default();
        filter.job = f.job.clone();
        filter.vm = f.vm.clone();
        if let Some(r) = &f.result {
            let r: RunResult = serde_json::from_value(Value::String(r.clone()))
                .map_err(|_| Error::BadRequest(format!("result {r:?} is not a run result")))?;
            filter.result = Some(r);
        }
        if let Some(ms) = f.since_ms {
            filter.since =
                Some(alike_sched_time(ms).ok_or_else(|| Error::BadRequest(format!("since_ms {ms} is out of range")))?);
        }
        filter.limit = Some(f.limit.unwrap_or(100).min(1000));
        let runs = self.services.runs(&filter).map_err(err)?;
        serde_json::to_value(runs).map_err(|e| Error::BadRequest(e.to_string()))
    }

    fn pools(&self) -> Vec<String> {
        self.services.pool_names()
    }

    fn restore_vm(&self, request: Value) -> Result<Value> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            store: String,
            version: String,
            #[serde(default)]
            vm: Option<String>,
            pool: String,
            storage: String,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            network: Option<String>,
        }
        let r: Req =
            serde_json::from_value(request).map_err(|e| Error::BadRequest(format!("restore-vm request: {e}")))?;
        let store = self.services.store(&r.store).map_err(|e| Error::NotFound(e.to_string()))?;
        let version = store.version(&r.version, r.vm.as_deref()).map_err(|e| Error::engine(&r.store, e))?;
        let hv = self.services.connect(&r.pool).map_err(err)?;
        let mut placement = alike::Placement::on(r.storage.clone());
        if let Some(n) = &r.name {
            placement = placement.name(n.clone());
        }
        if let Some(n) = &r.network {
            placement = placement.network(n.clone());
        }
        self.events.publish("restore_started", json!({"vm": version.vm, "pool": r.pool, "version": version.id}));
        match store.restore_vm(&version, &*hv, &placement, &alike::RestoreOptions::default()) {
            Ok(rep) => {
                let out =
                    json!({"store": r.store, "version": version.id, "vm": version.vm, "pool": r.pool, "report": rep});
                self.events.publish("restore_finished", out.clone());
                Ok(out)
            }
            Err(e) => {
                self.events
                    .publish("restore_failed", json!({"vm": version.vm, "pool": r.pool, "error": e.to_string()}));
                Err(Error::engine(&r.store, e))
            }
        }
    }

    fn metrics(&self, m: &mut Metrics) {
        let Ok(jobs) = self.services.jobs() else {
            m.gauge("alike_scheduler_up", "Whether the scheduler's database answered.", &[], 0.0);
            return;
        };
        m.gauge("alike_scheduler_up", "Whether the scheduler's database answered.", &[], 1.0);
        let mut vm_ok: BTreeMap<(String, String), f64> = BTreeMap::new();
        for j in &jobs {
            let l = [("job", j.spec.name.as_str())];
            m.gauge(
                "alike_job_running",
                "1 while a run of the job is queued or running.",
                &l,
                f64::from(u8::from(j.active_run.is_some())),
            );
            if let Some(n) = j.next_run {
                m.gauge("alike_job_next_run_timestamp_seconds", "When the job is next due.", &l, n.timestamp() as f64);
            }
            if let Some(r) = &j.last_run {
                m.gauge(
                    "alike_job_last_run_timestamp_seconds",
                    "When the job's newest finished run started.",
                    &l,
                    r.started.timestamp() as f64,
                );
                if let Some(s) = r.elapsed_seconds() {
                    m.gauge("alike_job_last_duration_seconds", "Wall time of the job's newest finished run.", &l, s);
                }
                let (read, _new, stored) = r.totals();
                m.gauge("alike_job_last_read_bytes", "Bytes read by the job's newest finished run.", &l, read as f64);
                m.gauge(
                    "alike_job_last_stored_bytes",
                    "Stored bytes added by the job's newest finished run.",
                    &l,
                    stored as f64,
                );
                m.gauge(
                    "alike_job_last_result",
                    "1 for the result of the job's newest finished run.",
                    &[("job", j.spec.name.as_str()), ("result", r.result.name())],
                    1.0,
                );
            }
            let mut f = alike::services::RunFilter::default();
            f.job = Some(j.spec.name.clone());
            f.limit = Some(1000);
            let Ok(runs) = self.services.runs(&f) else { continue };
            let mut last_ok: Option<f64> = None;
            let mut failures = 0u64;
            for r in &runs {
                match r.result {
                    RunResult::Success | RunResult::Warning => {
                        let t = r.ended.unwrap_or(r.started).timestamp() as f64;
                        last_ok = Some(last_ok.map_or(t, |x: f64| x.max(t)));
                    }
                    RunResult::Failed | RunResult::Interrupted => failures += 1,
                    _ => {}
                }
                for v in &r.vms {
                    if v.result == "success" || v.result == "warning" {
                        let t = r.ended.unwrap_or(r.started).timestamp() as f64;
                        let e = vm_ok.entry((j.spec.name.clone(), v.vm.clone())).or_insert(t);
                        *e = e.max(t);
                    }
                }
            }
            if let Some(t) = last_ok {
                m.gauge("alike_job_last_success_timestamp_seconds", "When the job's newest good run ended.", &l, t);
            }
            m.counter(
                "alike_job_failures",
                "Failed or interrupted runs of the job in the history.",
                &l,
                failures as f64,
            );
        }
        for ((job, vm), t) in vm_ok {
            m.gauge(
                "alike_vm_last_success_timestamp_seconds",
                "When a run of the job last backed the VM up well (alert on its age).",
                &[("job", job.as_str()), ("vm", vm.as_str())],
                t,
            );
        }
    }
}

fn alike_sched_time(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms)
}

/// Opens the services of a configuration (`ServicesBuilder::config`: its
/// stores, xen pools connected at each run, jobs with their schedules and
/// chains, notifications) on the `[serve]` database; stores that name no
/// index cache get one under `default_cache/NAME`.
///
/// # Errors
/// A store that does not open; the database held elsewhere
/// ([`alike::ErrorKind::Busy`]); a job the services refuse.
pub fn open_services(
    cfg: &alike::Config,
    database: &std::path::Path,
    default_cache: &std::path::Path,
) -> Result<Services> {
    let mut cfg = cfg.clone();
    for s in &mut cfg.stores {
        if s.cache_dir.is_none() {
            s.cache_dir = Some(default_cache.join(&s.name));
        }
    }
    Services::builder().database(database).config(&cfg).map_err(err)?.open().map_err(err)
}
