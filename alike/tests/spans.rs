//! The tracing spans of a backup job run by the services against the XAPI
//! simulator, captured by a `tracing-subscriber` layer: one `disk` span per
//! disk, a child of the engine's `backup` span, itself under the runner's
//! `vm` span and the scheduler's `job` span, carrying the VM, the disk and
//! its bytes (the same figures the history records).
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alike::services::{JobKind, JobSpec, RunResult, Services};
use alike_xen_sim::{SimConfig, Simulator};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as the layer saw it: its name, fields, and its parent's id.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: String,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
}

#[derive(Default, Clone)]
struct Capture(Arc<Mutex<BTreeMap<u64, Seen>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().to_owned(), format!("{v:?}"));
    }
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        self.0.insert(f.name().to_owned(), v.to_owned());
    }
    fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
        self.0.insert(f.name().to_owned(), v.to_string());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut seen = Seen { name: attrs.metadata().name().to_owned(), ..Seen::default() };
        attrs.record(&mut Fields(&mut seen.fields));
        seen.parent = ctx.span(id).and_then(|s| s.parent()).map(|p| p.id().into_u64());
        self.0.lock().unwrap().insert(id.into_u64(), seen);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(s) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut s.fields));
        }
    }
}

#[test]
fn a_backup_run_has_a_span_per_disk_under_its_vm_and_job() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::new(dir.path().join("sim")).demo(true)).unwrap();
    let (url, pw) = (sim.url(), sim.password().to_owned());
    let store = alike::Store::builder()
        .passphrase("pw-spans")
        .insecure_fast_kdf()
        .cache_dir(dir.path().join("cache"))
        .create(dir.path().join("store"))
        .unwrap();
    let services = Services::builder()
        .database(dir.path().join("services.redb"))
        .store("main", Arc::new(store))
        .pool(
            "demo",
            Arc::new(move || Ok(Box::new(alike::xen_pool(&url, "root", &pw, None)?) as Box<dyn alike::Hypervisor>)),
        )
        .open()
        .unwrap();
    let mut job = JobSpec::new("nightly", JobKind::Backup);
    job.vms = vec!["web-01".into()];
    job.store = Some("main".into());
    job.pool = Some("demo".into());
    services.put_job(job).unwrap();
    let id = services.run_now("nightly").unwrap();
    assert!(services.wait_idle(Duration::from_secs(120)));
    let run = services.run(id).unwrap();
    assert_eq!(run.result, RunResult::Success, "{run:#?}");
    let vm = &run.vms[0];
    assert_eq!(vm.disks.len(), 2, "{vm:#?}");

    let spans = capture.0.lock().unwrap().clone();
    let chain = |mut id: u64| {
        let mut names = Vec::new();
        while let Some(s) = spans.get(&id) {
            names.push(s.name.clone());
            match s.parent {
                Some(p) => id = p,
                None => break,
            }
        }
        names
    };
    let disks: Vec<(u64, &Seen)> = spans.iter().filter(|(_, s)| s.name == "disk").map(|(i, s)| (*i, s)).collect();
    assert_eq!(disks.len(), vm.disks.len(), "one disk span per disk: {disks:#?}");
    for (id, s) in &disks {
        assert_eq!(chain(*id), ["disk", "backup", "vm", "job"], "{s:?}");
        let f = &s.fields;
        assert_eq!(f["vm"], "web-01", "{s:?}");
        let position: u32 = f["disk"].parse().unwrap();
        let d = vm.disks.iter().find(|d| d.position == position).unwrap_or_else(|| panic!("{s:?}"));
        // The bytes the span recorded are the history's (a full backup reads everything in use).
        assert_eq!(f["size"], d.size.to_string());
        assert_eq!(f["read_bytes"], d.read_bytes.to_string(), "{s:?} vs {d:?}");
        assert_eq!(f["new_bytes"], d.new_bytes.to_string(), "{s:?} vs {d:?}");
        assert_eq!(f["stored_bytes"], d.stored_bytes.to_string(), "{s:?} vs {d:?}");
        assert!(d.read_bytes > 0);
        assert_eq!(f["mode"], "full");
    }
    let job = spans.values().find(|j| j.name == "job").unwrap();
    assert_eq!((job.fields["job"].as_str(), job.fields["run"].clone()), ("nightly", run.id.to_string()));
    let positions: std::collections::BTreeSet<&str> = disks.iter().map(|(_, s)| s.fields["disk"].as_str()).collect();
    assert_eq!(positions.len(), 2, "each disk once: {positions:?}");
}
