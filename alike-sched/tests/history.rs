//! The history database: a run of a process killed mid-run reads
//! `interrupted` at the next start (and the schedule resumes), a second
//! process on one database is refused, retention, and the rebuild from the
//! store's versions and verification records.
#![allow(missing_docs)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alike_sched::chrono::{DateTime, Utc};
use alike_sched::{
    DiskRun, Error, History, HistoryRetention, JobKind, JobSpec, ManualClock, REBUILT_JOB, RebuiltVersion, RunContext,
    RunFilter, RunResult, Runner, Scheduler, SchedulerOptions, SystemClock, Trigger, VmRun,
};

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// Reports one VM done, then hangs until cancelled (or killed).
struct Hang;
impl Runner for Hang {
    fn run(&self, job: &JobSpec, ctx: &RunContext) -> Result<(), String> {
        let mut v = VmRun::default();
        v.vm = job.vms[0].clone();
        v.result = "success".into();
        v.read_bytes = 4096;
        ctx.vm_done(v);
        ctx.vm_started(&job.vms[1]);
        while !ctx.cancel_token().is_cancelled() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

fn spec() -> JobSpec {
    let mut j = JobSpec::new("nightly", JobKind::Backup);
    j.vms = vec!["web".into(), "db".into()];
    j.pool = Some("xen1".into());
    j.store = Some("main".into());
    j.schedule = Some("0 3 * * *".into());
    j
}

/// The child: opens the database, runs the job, says so, and hangs.
#[test]
fn child_process() {
    let Ok(db) = std::env::var("ALIKE_SCHED_TEST_CHILD_DB") else { return };
    let s = Scheduler::open(&db, Arc::new(Hang), Arc::new(SystemClock), SchedulerOptions::default()).unwrap();
    s.put_job(spec()).unwrap();
    s.tick().unwrap();
    let id = s.run_now("nightly").unwrap();
    while s.run(id).unwrap().vms.is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(format!("{db}.running"), id.to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_process_leaves_interrupted_runs_and_one_process_per_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("services.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process", "--nocapture", "--test-threads=1"])
        .env("ALIKE_SCHED_TEST_CHILD_DB", &db)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let marker = dir.path().join("services.redb.running");
    let deadline = Instant::now() + Duration::from_secs(30);
    let run_id: u64 = loop {
        assert!(Instant::now() < deadline, "the child never ran");
        assert!(child.try_wait().unwrap().is_none(), "the child ended before running");
        if let Ok(id) = std::fs::read_to_string(&marker) {
            break id.parse().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // While the child runs, a second process on its database is refused.
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let e = Scheduler::open(&db, Arc::new(Hang), clock.clone(), SchedulerOptions::default()).unwrap_err();
    assert!(matches!(e, Error::AlreadyOpen { .. }), "{e}");
    // SIGKILL: nothing of the child runs after this.
    child.kill().unwrap();
    child.wait().unwrap();

    let s = Scheduler::open(&db, Arc::new(Hang), clock.clone(), SchedulerOptions::default()).unwrap();
    let r = s.history().run(run_id).unwrap();
    assert_eq!(r.result, RunResult::Interrupted);
    assert!(r.ended.is_some());
    assert_eq!(r.vms.len(), 1, "the VM finished before the kill is kept");
    assert_eq!((r.vms[0].vm.as_str(), r.vms[0].read_bytes), ("web", 4096));
    assert!(r.error.as_deref().unwrap().contains("stopped"));
    // The job survived, and its schedule resumes: the next 03:00 UTC runs.
    assert_eq!(s.job("nightly").unwrap(), spec());
    let status = s.jobs().unwrap();
    let next = status[0].next_run.unwrap();
    assert_eq!(status[0].last_run.as_ref().unwrap().result, RunResult::Interrupted);
    clock.set(next + alike_sched::chrono::Duration::seconds(5));
    let queued = s.tick().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(s.run(queued[0]).unwrap().trigger, Trigger::Schedule);
    s.cancel(queued[0]).unwrap();
    assert!(s.wait_idle(Duration::from_secs(10)));
    assert_eq!(s.run(queued[0]).unwrap().result, RunResult::Cancelled);
}

#[test]
fn retention_keeps_recent_runs_and_the_newest_of_each_job() {
    let dir = tempfile::tempdir().unwrap();
    let (h, _) = History::open(dir.path().join("h.redb"), t("2026-01-01T00:00:00Z")).unwrap();
    let a = spec();
    let mut b = spec();
    b.name = "weekly".into();
    for day in 1..=20 {
        let when = t(&format!("2026-01-{day:02}T03:00:00Z"));
        for j in [&a, &b] {
            let mut r = h.begin_run(j, Trigger::Schedule, Some(when), when, RunResult::Running).unwrap();
            r.result = RunResult::Success;
            r.ended = Some(when);
            h.put_run(&r).unwrap();
        }
    }
    let mut keep = HistoryRetention::default();
    keep.keep_days = 10;
    keep.keep_runs = 3;
    let removed = h.prune(keep, t("2026-01-21T00:00:00Z")).unwrap();
    // Kept: the 11th to the 20th (ten days) of each job.
    assert_eq!(removed, 20);
    let mut f = RunFilter::default();
    f.job = Some("weekly".into());
    let left = h.runs(&f).unwrap();
    assert_eq!(left.len(), 10);
    assert_eq!(left.last().unwrap().started, t("2026-01-11T03:00:00Z"));
    // Far later, the newest three of each job stay whatever their age.
    assert_eq!(h.prune(keep, t("2027-01-01T00:00:00Z")).unwrap(), 14);
    assert_eq!(h.runs(&f).unwrap().len(), 3);
    // Paging and filters.
    let mut p = RunFilter::default();
    p.limit = Some(2);
    let page = h.runs(&p).unwrap();
    assert_eq!(page.len(), 2);
    p.before_id = Some(page[1].id);
    assert!(h.runs(&p).unwrap().iter().all(|r| r.id < page[1].id));
}

#[test]
fn rebuild_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (h, _) = History::open(dir.path().join("h.redb"), t("2026-01-01T00:00:00Z")).unwrap();
    assert!(h.is_empty().unwrap());
    let mut v1 = RebuiltVersion::new("web", "aaaa", t("2026-01-02T03:00:00Z"));
    let mut d = DiskRun::default();
    (d.position, d.size, d.read_bytes, d.new_bytes, d.stored_bytes) = (0, 1 << 30, 1 << 20, 1 << 19, 1 << 18);
    v1.disks = vec![d];
    v1.verification = Some((t("2026-01-02T04:00:00Z"), "full".into(), true));
    let mut v2 = RebuiltVersion::new("db", "bbbb", t("2026-01-01T03:00:00Z"));
    v2.verification = Some((t("2026-01-02T04:00:00Z"), "quick".into(), false));
    assert_eq!(h.rebuild(&[v1.clone(), v2]).unwrap(), 2);
    // Again: nothing new.
    assert_eq!(h.rebuild(&[v1]).unwrap(), 0);
    let runs = h.runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), 2);
    // Oldest version first, so ids follow time.
    let (db, web) = (&runs[1], &runs[0]);
    assert_eq!((db.vms[0].vm.as_str(), db.result), ("db", RunResult::Failed));
    assert_eq!(db.steps[0].step, "verify");
    assert_eq!(web.job, REBUILT_JOB);
    assert_eq!(web.trigger, Trigger::Rebuilt);
    assert_eq!(web.result, RunResult::Success);
    assert_eq!(web.vms[0].version.as_deref(), Some("aaaa"));
    assert_eq!(web.totals(), (1 << 20, 1 << 19, 1 << 18));
    assert_eq!(web.steps[0].detail["depth"], "full");
}
