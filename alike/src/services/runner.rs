//! The runner the scheduler calls: what each kind of job does with the
//! engine, and how its figures reach the history.

use std::sync::Arc;

use alike_sched::chrono::{DateTime, TimeZone, Utc};
use alike_sched::{DiskRun, JobKind, JobSpec, RebuiltVersion, RunContext, Runner, StepRun, VerifyAfter, VmRun};

use super::Resources;
use crate::{
    BackupOptions, Hypervisor, MaintenanceOptions, Result, Store, VaultOptions, VerifyOptions, VmBackupReport,
};

/// Runs jobs with the engine: backups over the hypervisor seam and their
/// chain, validation, housekeeping, vault copies. Made by
/// [`super::Services`]; public so that an embedder with a scheduler of
/// its own can run jobs the same way.
pub struct EngineRunner {
    res: Arc<Resources>,
}

impl std::fmt::Debug for EngineRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineRunner").finish_non_exhaustive()
    }
}

fn step(name: &str, r: Result<serde_json::Value>, warn: bool) -> StepRun {
    let mut s = StepRun::default();
    s.step = name.to_owned();
    match r {
        Ok(detail) => {
            s.result = if warn { "warning" } else { "success" }.to_owned();
            s.detail = detail;
        }
        Err(e) => {
            s.result = "failed".to_owned();
            s.error = Some(e.to_string());
        }
    }
    s
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn vm_run(r: &VmBackupReport) -> VmRun {
    let mut v = VmRun::default();
    v.vm = r.vm.clone();
    v.version = Some(r.id.clone());
    v.read_bytes = r.read_bytes;
    v.new_bytes = r.new_bytes;
    v.stored_bytes = r.new_stored_bytes;
    v.elapsed_seconds = r.elapsed_seconds;
    v.warnings = r.warnings.clone();
    v.disks = r
        .disks
        .iter()
        .map(|d| {
            let stored = r.backup.version.disks.iter().find(|x| x.position == d.position);
            let mut dr = DiskRun::default();
            dr.position = d.position;
            dr.size = d.size;
            dr.mode = d.mode.clone();
            dr.read_bytes = d.read_bytes;
            dr.new_bytes = stored.map_or(0, |s| s.new_bytes);
            dr.stored_bytes = stored.map_or(0, |s| s.new_stored_bytes);
            dr.fallback_reason = d.fallback_reason.clone();
            dr
        })
        .collect();
    for d in &v.disks {
        if let Some(f) = &d.fallback_reason {
            v.warnings.push(format!("disk {}: read in full: {f}", d.position));
        }
    }
    v.result = if v.warnings.is_empty() { "success" } else { "warning" }.to_owned();
    v
}

/// A VM's figures from the backup report a processor returned (the
/// schema of `alike backup --json`).
#[cfg(feature = "remote")]
fn remote_vm_run(r: &crate::remote::RemoteReport) -> VmRun {
    let j = &r.result;
    let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let mut v = VmRun::default();
    v.vm = j.get("vm").and_then(|x| x.as_str()).unwrap_or_default().to_owned();
    v.version = j.get("id").and_then(|x| x.as_str()).map(str::to_owned);
    v.read_bytes = n(j, "read_bytes");
    v.new_bytes = n(j, "new_bytes");
    v.stored_bytes = n(j, "new_stored_bytes");
    v.elapsed_seconds = r.elapsed.as_secs_f64();
    v.warnings = r.warnings.clone();
    for d in j.get("disks").and_then(|d| d.as_array()).into_iter().flatten() {
        let mut dr = DiskRun::default();
        dr.position = u32::try_from(n(d, "position")).unwrap_or(u32::MAX);
        dr.size = n(d, "size");
        dr.mode = if d.get("incremental").and_then(serde_json::Value::as_bool) == Some(true) {
            "incremental"
        } else {
            "full"
        }
        .into();
        dr.read_bytes = n(d, "read_bytes");
        dr.new_bytes = n(d, "new_bytes");
        dr.stored_bytes = n(d, "new_stored_bytes");
        dr.fallback_reason = d.get("fallback_reason").and_then(|x| x.as_str()).map(str::to_owned);
        if let Some(f) = &dr.fallback_reason {
            v.warnings.push(format!("disk {}: read in full: {f}", dr.position));
        }
        v.disks.push(dr);
    }
    v.result = if v.version.is_none() {
        v.error = Some("the processor returned no version".into());
        "failed"
    } else if v.warnings.is_empty() {
        "success"
    } else {
        "warning"
    }
    .to_owned();
    v
}

/// The VMs a job's selectors name: names and uuids as they are, `tag:T`
/// every VM of the host whose recorded configuration carries tag `T`.
fn resolve(hv: &dyn Hypervisor, selectors: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut listed = None;
    for s in selectors {
        if let Some(tag) = s.strip_prefix("tag:") {
            if listed.is_none() {
                listed = Some(hv.list_vms()?);
            }
            for vm in listed.iter().flatten() {
                // Each host records its configuration under its own key; the
                // tags are at its top or in its VM record (XenServer: `xen.vm.tags`).
                let has = |e: Option<&serde_json::Value>| {
                    e.and_then(|t| t.get("tags"))
                        .and_then(|t| t.as_array())
                        .is_some_and(|t| t.iter().any(|x| x.as_str() == Some(tag)))
                };
                let tagged = vm.extra.values().any(|e| has(Some(e)) || has(e.get("vm")));
                let id = vm.uuid.clone().unwrap_or_else(|| vm.name.clone());
                if tagged && !out.contains(&id) {
                    out.push(id);
                }
            }
        } else if !out.contains(s) {
            out.push(s.clone());
        }
    }
    Ok(out)
}

impl EngineRunner {
    pub(crate) fn new(res: Arc<Resources>) -> EngineRunner {
        EngineRunner { res }
    }

    fn backup(&self, job: &JobSpec, ctx: &RunContext) -> Result<()> {
        #[cfg(feature = "remote")]
        if self.res.processor_pool(job) {
            return self.backup_on_processor(job, ctx);
        }
        let store = self.res.store(&job.name, job.store.as_deref())?;
        let hv = self.res.connect(&job.name, job.pool.as_deref())?;
        let vms = resolve(&*hv, &job.vms)?;
        if vms.is_empty() {
            ctx.warning(None, "the job's selectors match no VM");
        }
        let mut made: Vec<(String, String)> = Vec::new();
        for vm in &vms {
            if ctx.cancel_token().is_cancelled() {
                break;
            }
            let _span = tracing::info_span!("vm", vm = %vm).entered();
            ctx.vm_started(vm);
            let (ctx_vm, name) = (vm.clone(), vm.clone());
            let events = Arc::new(EventSink::new(ctx));
            let disk_events = events.clone();
            // Backup-stage progress goes out per disk (the disk_progress
            // callback); other stages (scanning) as the engine reports them.
            let opts = BackupOptions::default()
                .quiesce(if job.quiesce { crate::Quiesce::IfSupported } else { crate::Quiesce::No })
                .cancel_token(ctx.cancel_token().clone())
                .disk_progress({
                    let vm = vm.clone();
                    move |d| disk_events.progress(&vm, d.position, "backup", d.bytes_done, d.bytes_total)
                })
                .progress(move |p| {
                    if p.phase != alike_core::Phase::Backup {
                        events.progress(&ctx_vm, 0, p.phase.name(), p.bytes_done, p.bytes_total);
                    }
                });
            match store.backup_vm(&*hv, vm, &opts) {
                Ok(r) => {
                    made.push((r.vm.clone(), r.id.clone()));
                    ctx.vm_done(vm_run(&r));
                }
                Err(e) => {
                    let mut v = VmRun::default();
                    v.vm = name;
                    v.result = "failed".to_owned();
                    v.error = Some(e.to_string());
                    ctx.vm_done(v);
                }
            }
        }
        drop(hv);
        if ctx.cancel_token().is_cancelled() || made.is_empty() {
            return Ok(());
        }
        self.chain(job, ctx, &store, &made);
        Ok(())
    }

    /// A backup job of the configuration file on a processor of its pool,
    /// through the orchestrator (queued while the pool has no free
    /// address); then the chain, here, over the versions it made.
    #[cfg(feature = "remote")]
    fn backup_on_processor(&self, job: &JobSpec, ctx: &RunContext) -> Result<()> {
        use crate::processors::{JobEvent, ProcessorBackup, RunJobOptions};
        use crate::remote::ProcessorEvent;
        let store = self.res.store(&job.name, job.store.as_deref())?;
        let (config, orch) = self.res.orchestrator()?;
        if config.job(&job.name).is_none() {
            return Err(crate::Error::InvalidArgument(format!(
                "job {:?}: only jobs of the configuration file run on processors (set options.processor = false)",
                job.name
            )));
        }
        let backup = ProcessorBackup::from_config(&config, &job.name, format!("run{}", ctx.record().id))?;
        // The orchestrator calls back on its own thread with 'static
        // callbacks: its events come here through a channel and reach the
        // run's context on this thread.
        let (tx, rx) = std::sync::mpsc::channel::<JobEvent>();
        let opts = RunJobOptions::default()
            .cancel_token(ctx.cancel_token().clone())
            .on_event(move |e| drop(tx.send(e.clone())));
        let events = EventSink::new(ctx);
        let r = std::thread::scope(|s| {
            let h = alike_core::spawn_scoped(s, "alike-services-processor", move || orch.run(&backup, &opts))?;
            for e in rx {
                match e {
                    JobEvent::VmStarted { vm, .. } => ctx.vm_started(&vm),
                    JobEvent::Queued { message, .. } => tracing::info!(job = %job.name, "{message}"),
                    JobEvent::Worker { vm, event: ProcessorEvent::Progress(p), .. } => {
                        if p.disks.is_empty() {
                            events.progress(&vm, 0, &p.phase, p.bytes_done, p.bytes_total);
                        }
                        for d in &p.disks {
                            events.progress(&vm, d.disk, &p.phase, d.bytes_done, d.bytes_total);
                        }
                    }
                    JobEvent::Worker { vm, event: ProcessorEvent::Warning(w), .. } => ctx.warning(Some(&vm), w.message),
                    _ => {}
                }
            }
            h.join().unwrap_or_else(|_| {
                Err(crate::Error::InvalidArgument(format!("job {:?}: the processor job's thread panicked", job.name)))
            })
        })?;
        let mut made = Vec::new();
        for rep in &r.vms {
            let v = remote_vm_run(rep);
            if let Some(id) = &v.version {
                made.push((v.vm.clone(), id.clone()));
            }
            ctx.vm_done(v);
        }
        if ctx.cancel_token().is_cancelled() || made.is_empty() {
            return Ok(());
        }
        self.chain(job, ctx, &store, &made);
        Ok(())
    }

    /// Retention → vault → verification, each optional, over the versions
    /// this run made (`(vm, version id)`).
    fn chain(&self, job: &JobSpec, ctx: &RunContext, store: &Store, made: &[(String, String)]) {
        let cancel = ctx.cancel_token();
        if let Some(policy) = &job.chain.retention {
            let _span = tracing::info_span!("retention").entered();
            let mut reports = Vec::new();
            let mut err = None;
            for (vm, _) in made {
                match store.prune(Some(vm), policy, false) {
                    Ok(r) => reports.push(json(&r)),
                    Err(e) => err = Some(e),
                }
            }
            ctx.step_done(step("retention", err.map_or_else(|| Ok(serde_json::Value::Array(reports)), Err), false));
        }
        if cancel.is_cancelled() {
            return;
        }
        if let Some(vault) = &job.chain.vault {
            let _span = tracing::info_span!("vault", vault = %vault).entered();
            let r = self.res.store(&job.name, Some(vault)).and_then(|v| {
                let mut out = Vec::new();
                for (vm, _) in made {
                    let mut o = VaultOptions::default().vm(vm.clone()).cancel_token(cancel.clone());
                    if let Some(b) = job.bandwidth {
                        o = o.bandwidth_limit(b);
                    }
                    out.push(json(&store.vault(&v, &o)?));
                }
                Ok(serde_json::Value::Array(out))
            });
            ctx.step_done(step("vault", r, false));
        }
        if cancel.is_cancelled() || job.chain.verify == VerifyAfter::None {
            return;
        }
        let full = job.chain.verify == VerifyAfter::Full;
        let _span = tracing::info_span!("verify", full).entered();
        for (vm, id) in made {
            let o = VerifyOptions::default().full(full).version(id.clone()).vm(vm.clone()).cancel_token(cancel.clone());
            let r = store.verify(&o);
            let damaged = r.as_ref().is_ok_and(|r| !r.ok);
            let mut s = step("verify", r.map(|r| json(&r)), false);
            if damaged {
                s.result = "failed".into();
                s.error = Some(format!("version {id} of {vm} is damaged"));
            }
            ctx.step_done(s);
        }
    }

    /// Verifies the versions verified longest ago (never verified first),
    /// within the byte budget: a full validation spread over several runs.
    fn validation(&self, job: &JobSpec, ctx: &RunContext) -> Result<()> {
        let store = self.res.store(&job.name, job.store.as_deref())?;
        let versions = store.versions(None)?;
        let records = store.verifications()?;
        let depth = if job.validation.full { "full" } else { "quick" };
        // Oldest verification first; a quick record does not count for a full validation.
        let mut order: Vec<(i64, &crate::Version)> = versions
            .iter()
            .map(|v| {
                let last = records
                    .get(&v.id)
                    .filter(|r| !job.validation.full || r.depth == "full")
                    .map_or(i64::MIN, |r| r.time_ms);
                (last, v)
            })
            .collect();
        order.sort_by_key(|(t, v)| (*t, v.time_ms));
        let mut spent = 0u64;
        let mut checked = 0usize;
        for (_, v) in order {
            if ctx.cancel_token().is_cancelled() {
                break;
            }
            let size: u64 = v.disks.iter().map(|d| d.size).sum();
            if let Some(budget) = job.validation.budget_bytes
                && checked > 0
                && spent.saturating_add(size) > budget
            {
                break;
            }
            spent = spent.saturating_add(size);
            checked += 1;
            let o = VerifyOptions::default()
                .full(job.validation.full)
                .version(v.id.clone())
                .vm(v.vm.clone())
                .cancel_token(ctx.cancel_token().clone());
            let r = store.verify(&o);
            let damaged = r.as_ref().is_ok_and(|r| !r.ok);
            let mut s = step("verify", r.map(|r| json(&r)), false);
            if damaged {
                s.result = "failed".into();
                s.error = Some(format!("version {} of {} is damaged ({depth} verification)", v.short_id(), v.vm));
            }
            ctx.step_done(s);
        }
        let left = versions.len() - checked;
        if left > 0 && !ctx.cancel_token().is_cancelled() {
            tracing::info!(checked, left, "validation budget reached: the next run goes on");
        }
        Ok(())
    }

    /// Each VM's disks (a fresh snapshot) to a replica directory under
    /// `target`, one per VM (`TARGET/VM_NAME`), as a new point; keeps
    /// `options.keep` points when given. The replica's own history beside
    /// it records the run too.
    fn replication(&self, job: &JobSpec, ctx: &RunContext) -> Result<()> {
        let target = job.target.as_deref().ok_or_else(|| {
            crate::Error::InvalidArgument(format!("job {:?}: a replication job needs a target directory", job.name))
        })?;
        if let Some(pool) = target.strip_prefix("xen:") {
            #[cfg(feature = "xen")]
            return self.replication_xen(job, ctx, pool);
            #[cfg(not(feature = "xen"))]
            return Err(crate::Error::InvalidArgument(format!(
                "job {:?}: Xen replica target {pool:?}: this build has no Xen support",
                job.name
            )));
        }
        let hv = self.res.connect(&job.name, job.pool.as_deref())?;
        let vms = resolve(&*hv, &job.vms)?;
        if vms.is_empty() {
            ctx.warning(None, "the job's selectors match no VM");
        }
        let keep = job.options.get("keep").and_then(serde_json::Value::as_u64);
        for vm in &vms {
            if ctx.cancel_token().is_cancelled() {
                break;
            }
            let _span = tracing::info_span!("vm", vm = %vm).entered();
            ctx.vm_started(vm);
            let started = std::time::Instant::now();
            let one = || -> Result<VmRun> {
                let name = hv.vm_name(vm)?;
                let dir: String = name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
                    .collect();
                let replica = crate::Replica::open_or_create(std::path::Path::new(target).join(dir), &name)?;
                let snap = alike_core::SnapshotOptions::default()
                    .quiesce(if job.quiesce { crate::Quiesce::IfSupported } else { crate::Quiesce::No })
                    .cancel_token(ctx.cancel_token().clone());
                let session = hv.begin_backup(vm, &[], &snap)?;
                let events = EventSink::new(ctx);
                let ev_vm = vm.clone();
                let mut o = crate::ReplicateOptions::default()
                    .cancel_token(ctx.cancel_token().clone())
                    .vm_config(session.vm())
                    .progress(move |p| events.progress(&ev_vm, 0, p.phase.name(), p.bytes_done, p.bytes_total));
                if let Some(k) = keep {
                    o = o.keep(usize::try_from(k).unwrap_or(usize::MAX));
                }
                if let Some(b) = job.bandwidth {
                    o = o.bwlimit(b);
                }
                let r = {
                    let disks = session.disks();
                    crate::replicate(&name, &disks, &replica, &o)
                };
                let rep = match r {
                    Ok(rep) => {
                        let _ = session.commit();
                        rep
                    }
                    Err(e) => {
                        if let Err(a) = session.abort() {
                            tracing::warn!(vm = %vm, "releasing the snapshot: {a}");
                        }
                        return Err(e);
                    }
                };
                let mut v = VmRun::default();
                v.vm = name;
                v.point = Some(rep.point);
                v.read_bytes = rep.read_bytes;
                v.sent_bytes = rep.sent_bytes;
                v.elapsed_seconds = rep.elapsed_seconds;
                v.result = "success".into();
                Ok(v)
            };
            let v = one().unwrap_or_else(|e| {
                let mut v = VmRun::default();
                v.vm = vm.clone();
                v.result = "failed".to_owned();
                v.error = Some(e.to_string());
                v.elapsed_seconds = started.elapsed().as_secs_f64();
                v
            });
            ctx.vm_done(v);
        }
        Ok(())
    }

    /// Each VM of a Xen pool onto its replica VM on another Xen pool (or
    /// the same), through [`crate::replicate_xen`]: a fresh snapshot read
    /// by CBT, only the chunks the replica lacks written, `options.keep`
    /// points kept. `options.xen_replica` = `{"sr", "state_dir",
    /// "network"?}`.
    #[cfg(feature = "xen")]
    fn replication_xen(&self, job: &JobSpec, ctx: &RunContext, target_pool: &str) -> Result<()> {
        let bad = |m: &str| crate::Error::InvalidArgument(format!("job {:?}: Xen replica target: {m}", job.name));
        let o = job.options.get("xen_replica").ok_or_else(|| bad("options.xen_replica is missing"))?;
        let field = |k: &str| o.get(k).and_then(serde_json::Value::as_str);
        let sr = field("sr").ok_or_else(|| bad("options.xen_replica.sr is missing"))?;
        let state_dir = field("state_dir").ok_or_else(|| bad("options.xen_replica.state_dir is missing"))?;
        let mut ro = crate::XenReplicaOptions::new(sr, state_dir);
        if let Some(n) = field("network") {
            ro = ro.network(n);
        }
        let source_pool = job.pool.as_deref().ok_or_else(|| bad("the job names no pool"))?;
        let source = self.res.connect_xen(&job.name, source_pool)?;
        let target = Arc::new(self.res.connect_xen(&job.name, target_pool)?);
        let vms = resolve(&source, &job.vms)?;
        if vms.is_empty() {
            ctx.warning(None, "the job's selectors match no VM");
        }
        let keep = job.options.get("keep").and_then(serde_json::Value::as_u64);
        for vm in &vms {
            if ctx.cancel_token().is_cancelled() {
                break;
            }
            let _span = tracing::info_span!("vm", vm = %vm, target = %target_pool).entered();
            ctx.vm_started(vm);
            let started = std::time::Instant::now();
            let events = EventSink::new(ctx);
            let ev_vm = vm.clone();
            let mut o = crate::ReplicateOptions::default()
                .cancel_token(ctx.cancel_token().clone())
                .progress(move |p| events.progress(&ev_vm, 0, p.phase.name(), p.bytes_done, p.bytes_total));
            if let Some(k) = keep {
                o = o.keep(usize::try_from(k).unwrap_or(usize::MAX));
            }
            if let Some(b) = job.bandwidth {
                o = o.bwlimit(b);
            }
            let v = match crate::replicate_xen(&source, vm, Arc::clone(&target), &ro, &o) {
                Ok((rep, replica)) => {
                    let mut v = VmRun::default();
                    v.vm = rep.vm.clone();
                    v.point = Some(rep.point);
                    v.read_bytes = rep.read_bytes;
                    v.sent_bytes = rep.sent_bytes;
                    v.elapsed_seconds = rep.elapsed_seconds;
                    v.result = "success".into();
                    tracing::info!(replica = %replica.uuid(), point = rep.point, "replica VM updated");
                    v
                }
                Err(e) => {
                    let mut v = VmRun::default();
                    v.vm = vm.clone();
                    v.result = "failed".to_owned();
                    v.error = Some(e.to_string());
                    v.elapsed_seconds = started.elapsed().as_secs_f64();
                    v
                }
            };
            ctx.vm_done(v);
        }
        Ok(())
    }

    fn housekeeping(&self, job: &JobSpec, ctx: &RunContext) -> Result<()> {
        let store = self.res.store(&job.name, job.store.as_deref())?;
        if let Some(policy) = &job.chain.retention {
            ctx.step_done(step("retention", store.prune(None, policy, false).map(|r| json(&r)), false));
        }
        let o = MaintenanceOptions::default().cancel_token(ctx.cancel_token().clone());
        ctx.step_done(step("gc", store.gc(&o).map(|r| json(&r)), false));
        // The services' own history under its retention (`[history]`), as
        // the scheduler's loop applies it hourly.
        let keep = ctx.history_retention();
        let r = ctx
            .prune_history()
            .map(|n| serde_json::json!({"deleted_runs": n, "keep_days": keep.keep_days, "keep_runs": keep.keep_runs}))
            .map_err(crate::Error::from);
        ctx.step_done(step("history", r, false));
        Ok(())
    }

    fn vault(&self, job: &JobSpec, ctx: &RunContext) -> Result<()> {
        let store = self.res.store(&job.name, job.store.as_deref())?;
        let vault = self.res.store(&job.name, job.chain.vault.as_deref())?;
        let mut o = VaultOptions::default().cancel_token(ctx.cancel_token().clone());
        if let Some(b) = job.bandwidth {
            o = o.bandwidth_limit(b);
        }
        ctx.step_done(step("vault", store.vault(&vault, &o).map(|r| json(&r)), false));
        Ok(())
    }
}

/// Forwards engine progress to a run's events from the engine's worker
/// threads (the progress callback must be `'static`).
struct EventSink {
    events: Arc<alike_sched::EventBus>,
    clock: Arc<dyn alike_sched::Clock>,
    run: u64,
    job: String,
    /// When each disk's last progress event went out (at most 4/s per disk).
    last: std::sync::Mutex<std::collections::BTreeMap<u32, std::time::Instant>>,
}

impl EventSink {
    fn new(ctx: &RunContext) -> EventSink {
        let rec = ctx.record();
        EventSink {
            events: ctx.event_bus(),
            clock: ctx.clock(),
            run: rec.id,
            job: rec.job,
            last: std::sync::Mutex::default(),
        }
    }
    fn progress(&self, vm: &str, disk: u32, phase: &str, done: u64, total: u64) {
        use alike_core::Recover;
        {
            let mut last = self.last.locked();
            let now = std::time::Instant::now();
            if done < total
                && last.get(&disk).is_some_and(|t| now.duration_since(*t) < std::time::Duration::from_millis(250))
            {
                return;
            }
            last.insert(disk, now);
        }
        self.events.emit(
            self.run,
            &self.job,
            alike_sched::EventKind::Progress { vm: vm.to_owned(), disk, phase: phase.to_owned(), done, total },
            self.clock.now(),
        );
    }
}

impl Runner for EngineRunner {
    fn run(&self, job: &JobSpec, ctx: &RunContext) -> std::result::Result<(), String> {
        let r = match job.kind {
            JobKind::Backup => self.backup(job, ctx),
            JobKind::Validation => self.validation(job, ctx),
            JobKind::Housekeeping => self.housekeeping(job, ctx),
            JobKind::Vault => self.vault(job, ctx),
            JobKind::Replication => self.replication(job, ctx),
            _ => Err(crate::Error::InvalidArgument(format!(
                "job {:?}: {} jobs are not run by the services yet",
                job.name,
                job.kind.name()
            ))),
        };
        r.map_err(|e| e.to_string())
    }
}

fn time_of(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// A store's versions and verification records, as the history's rebuild takes them.
pub(crate) fn rebuilt_versions(store: &Store) -> Result<Vec<RebuiltVersion>> {
    let records = store.verifications()?;
    Ok(store
        .versions(None)?
        .into_iter()
        .map(|v| {
            let mut r = RebuiltVersion::new(v.vm.clone(), v.id.clone(), time_of(v.time_ms));
            r.disks = v
                .disks
                .iter()
                .map(|d| {
                    let mut dr = DiskRun::default();
                    dr.position = d.position;
                    dr.size = d.size;
                    dr.mode = if d.incremental { "incremental" } else { "full" }.into();
                    dr.read_bytes = d.read_bytes;
                    dr.new_bytes = d.new_bytes;
                    dr.stored_bytes = d.new_stored_bytes;
                    dr.fallback_reason = d.fallback_reason.clone();
                    dr
                })
                .collect();
            r.verification = records.get(&v.id).map(|x| (time_of(x.time_ms), x.depth.clone(), x.ok));
            r
        })
        .collect())
}
