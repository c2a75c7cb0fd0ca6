//! The scheduler under an injected clock: calendar rules, both DST
//! transitions in Europe/Berlin, missed runs (catch up once / skip) across a
//! restart, no overlap of one job, and jobs sharing a VM serialised.
#![allow(missing_docs)]

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use alike_sched::chrono::{DateTime, Duration as Span, Utc};
use alike_sched::{
    Clock, Error, JobKind, JobOrigin, JobSpec, ManualClock, MissedRule, RunContext, RunFilter, RunResult, Runner,
    Schedule, Scheduler, SchedulerOptions, Trigger,
};

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// Records every call; jobs named in `hold` block until released.
#[derive(Default)]
struct Gate {
    calls: Mutex<Vec<(String, u64, &'static str)>>,
    hold: Mutex<HashSet<String>>,
    running: Mutex<HashSet<String>>,
    cv: Condvar,
}

impl Gate {
    fn hold(&self, job: &str) {
        self.hold.lock().unwrap().insert(job.into());
    }
    fn release(&self, job: &str) {
        self.hold.lock().unwrap().remove(job);
        self.cv.notify_all();
    }
    fn wait_running(&self, job: &str) {
        let mut r = self.running.lock().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !r.contains(job) {
            assert!(std::time::Instant::now() < deadline, "{job} never started");
            r = self.cv.wait_timeout(r, Duration::from_millis(50)).unwrap().0;
        }
    }
    fn calls(&self) -> Vec<(String, u64, &'static str)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Runner for Gate {
    fn run(&self, job: &JobSpec, ctx: &RunContext) -> Result<(), String> {
        self.calls.lock().unwrap().push((job.name.clone(), ctx.id(), "start"));
        self.running.lock().unwrap().insert(job.name.clone());
        self.cv.notify_all();
        let mut h = self.hold.lock().unwrap();
        while h.contains(&job.name) && !ctx.cancel_token().is_cancelled() {
            h = self.cv.wait_timeout(h, Duration::from_millis(20)).unwrap().0;
        }
        drop(h);
        self.running.lock().unwrap().remove(&job.name);
        self.calls.lock().unwrap().push((job.name.clone(), ctx.id(), "end"));
        Ok(())
    }
}

fn job(name: &str, cron: Option<&str>, vms: &[&str]) -> JobSpec {
    let mut j = JobSpec::new(name, JobKind::Backup);
    j.vms = vms.iter().map(|v| (*v).to_owned()).collect();
    j.pool = Some("xen1".into());
    j.store = Some("main".into());
    j.schedule = cron.map(str::to_owned);
    j.timezone = "Europe/Berlin".into();
    j
}

struct Env {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    gate: Arc<Gate>,
}

impl Env {
    fn new(start: &str) -> Env {
        Env { dir: tempfile::tempdir().unwrap(), clock: Arc::new(ManualClock::new(t(start))), gate: Arc::default() }
    }
    fn open(&self) -> Scheduler {
        Scheduler::open(
            self.dir.path().join("s.redb"),
            self.gate.clone(),
            self.clock.clone(),
            SchedulerOptions::default(),
        )
        .unwrap()
    }
    /// Moves the clock in steps, ticking at each, and waits for the runs.
    fn walk(&self, s: &Scheduler, until: &str, step: Span) {
        let until = t(until);
        while self.clock.now() < until {
            self.clock.advance(step);
            s.tick().unwrap();
            assert!(s.wait_idle(Duration::from_secs(10)));
        }
    }
}

fn runs(s: &Scheduler, job: &str) -> Vec<alike_sched::RunRecord> {
    let mut f = RunFilter::default();
    f.job = Some(job.into());
    let mut r = s.history().runs(&f).unwrap();
    r.reverse();
    r
}

#[test]
fn calendar_rules_in_a_zone() {
    // Weekdays at 02:30 Berlin time, in winter (UTC+1).
    let s = Schedule::parse("j", "30 2 * * 1-5", "Europe/Berlin").unwrap();
    let got = s.due_between(t("2026-01-09T00:00:00Z"), t("2026-01-14T00:00:00Z"), 100);
    // Friday 9th, then Monday 12th and Tuesday 13th: the weekend is skipped.
    assert_eq!(got, [t("2026-01-09T01:30:00Z"), t("2026-01-12T01:30:00Z"), t("2026-01-13T01:30:00Z")]);
    // The first of each month at 03:00, in summer (UTC+2).
    let m = Schedule::parse("j", "0 3 1 * *", "Europe/Berlin").unwrap();
    assert_eq!(m.next_after(t("2026-06-15T00:00:00Z")), Some(t("2026-07-01T01:00:00Z")));
    // The last day of the month (L), and @daily.
    let l = Schedule::parse("j", "0 22 L * *", "UTC").unwrap();
    assert_eq!(l.next_after(t("2026-02-01T00:00:00Z")), Some(t("2026-02-28T22:00:00Z")));
    let d = Schedule::parse("j", "@daily", "UTC").unwrap();
    assert_eq!(d.next_after(t("2026-02-01T10:00:00Z")), Some(t("2026-02-02T00:00:00Z")));
    // Refusals name the job and what is wrong.
    let e = Schedule::parse("nightly", "61 * * * *", "UTC").unwrap_err();
    assert!(matches!(e, Error::Schedule { ref job, .. } if job == "nightly"), "{e}");
    assert!(matches!(Schedule::parse("n", "0 * * * *", "Mars/Olympus"), Err(Error::TimeZone { .. })));
    assert!(matches!(Schedule::parse("n", "0 0 * * * *", "UTC"), Err(Error::Schedule { .. })), "no seconds field");
    // The latest due time of a long gap is found without walking it.
    let every = Schedule::parse("j", "* * * * *", "UTC").unwrap();
    assert_eq!(every.latest_due(t("2020-01-01T00:00:00Z"), t("2026-01-01T00:00:30Z")), Some(t("2026-01-01T00:00:00Z")));
}

#[test]
fn dst_both_transitions_in_berlin() {
    let s = Schedule::parse("j", "30 2 * * *", "Europe/Berlin").unwrap();
    // Spring: 2026-03-29 02:00 CET jumps to 03:00 CEST; 02:30 does not exist
    // that day and the run is at 03:00 CEST (01:00 UTC), once.
    let spring = s.due_between(t("2026-03-27T12:00:00Z"), t("2026-03-31T12:00:00Z"), 100);
    assert_eq!(
        spring,
        [t("2026-03-28T01:30:00Z"), t("2026-03-29T01:00:00Z"), t("2026-03-30T00:30:00Z"), t("2026-03-31T00:30:00Z")]
    );
    // Autumn: 2026-10-25 03:00 CEST falls back to 02:00 CET; 02:30 happens
    // twice and the run is at the first (00:30 UTC), once.
    let autumn = s.due_between(t("2026-10-23T12:00:00Z"), t("2026-10-26T12:00:00Z"), 100);
    assert_eq!(autumn, [t("2026-10-24T00:30:00Z"), t("2026-10-25T00:30:00Z"), t("2026-10-26T01:30:00Z")]);
    // An interval pattern runs in both passes of the repeated hour and
    // skips the missing one.
    let half = Schedule::parse("j", "*/30 * * * *", "Europe/Berlin").unwrap();
    let twice = half.due_between(t("2026-10-24T23:59:00Z"), t("2026-10-25T01:59:00Z"), 100);
    assert_eq!(twice.len(), 4, "02:00 and 02:30 CEST, then 02:00 and 02:30 CET: {twice:?}");
    let gap = half.due_between(t("2026-03-29T00:59:00Z"), t("2026-03-29T01:31:00Z"), 100);
    assert_eq!(gap, [t("2026-03-29T01:00:00Z"), t("2026-03-29T01:30:00Z")], "03:00 and 03:30 CEST, nothing at 02:xx");

    // The scheduler itself, walked through both weekends ten minutes at a time.
    for (start, end, expected) in [
        (
            "2026-03-27T12:00:00Z",
            "2026-03-30T12:00:00Z",
            ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
        ),
        (
            "2026-10-23T12:00:00Z",
            "2026-10-26T12:00:00Z",
            ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
        ),
    ] {
        let env = Env::new(start);
        let s = env.open();
        s.put_job(job("nightly", Some("30 2 * * *"), &["web"])).unwrap();
        s.tick().unwrap();
        env.walk(&s, end, Span::minutes(10));
        let r = runs(&s, "nightly");
        let due: Vec<DateTime<Utc>> = r.iter().map(|r| r.scheduled_for.unwrap()).collect();
        assert_eq!(due, expected.map(t), "{r:#?}");
        assert!(r.iter().all(|r| r.trigger == Trigger::Schedule && r.result == RunResult::Success));
        assert_eq!(env.gate.calls().len(), 6);
    }
}

#[test]
fn missed_runs_are_caught_up_once_or_skipped_after_a_restart() {
    let env = Env::new("2026-05-01T00:00:00Z");
    {
        let s = env.open();
        s.put_job(job("catch", Some("30 2 * * *"), &["a"])).unwrap();
        let mut skip = job("skip", Some("30 2 * * *"), &["b"]);
        skip.missed = MissedRule::Skip;
        s.put_job(skip).unwrap();
        s.tick().unwrap();
        env.walk(&s, "2026-05-02T00:00:00Z", Span::minutes(15));
        assert_eq!(runs(&s, "catch").len(), 1);
        assert_eq!(runs(&s, "skip").len(), 1);
    }
    // Down for three days and a bit: the 3rd, 4th and 5th are missed.
    env.clock.set(t("2026-05-05T09:00:00Z"));
    let s = env.open();
    let queued = s.tick().unwrap();
    assert_eq!(queued.len(), 1, "one catch-up run, not three");
    assert!(s.wait_idle(Duration::from_secs(10)));
    let c = runs(&s, "catch");
    assert_eq!(c.len(), 2);
    assert_eq!(c[1].trigger, Trigger::CatchUp);
    assert_eq!(c[1].scheduled_for, Some(t("2026-05-05T00:30:00Z")), "the newest missed time");
    assert_eq!(c[1].result, RunResult::Success);
    let k = runs(&s, "skip");
    assert_eq!(k.len(), 2);
    assert_eq!(k[1].result, RunResult::Skipped);
    assert!(k[1].warnings[0].contains("missed"), "{:?}", k[1].warnings);
    assert_eq!(env.gate.calls().iter().filter(|c| c.0 == "skip").count(), 2, "started and ended once, on the 2nd only");
    // Nothing more until the next due time, which both run normally.
    assert!(s.tick().unwrap().is_empty());
    env.walk(&s, "2026-05-06T01:00:00Z", Span::minutes(15));
    assert_eq!(runs(&s, "catch").last().unwrap().trigger, Trigger::Schedule);
    assert_eq!(runs(&s, "skip").last().unwrap().result, RunResult::Success);
    // A short delay (within grace) is not a missed run.
    drop(s);
    env.clock.set(t("2026-05-07T00:33:00Z"));
    let s = env.open();
    s.tick().unwrap();
    assert!(s.wait_idle(Duration::from_secs(10)));
    let last = runs(&s, "skip").pop().unwrap();
    assert_eq!((last.trigger, last.result), (Trigger::Schedule, RunResult::Success));
}

#[test]
fn a_job_never_overlaps_itself() {
    let env = Env::new("2026-05-01T00:00:00Z");
    let s = env.open();
    s.put_job(job("hourly", Some("0 * * * *"), &["web"])).unwrap();
    s.tick().unwrap();
    env.gate.hold("hourly");
    env.clock.set(t("2026-05-01T01:00:10Z"));
    let first = s.tick().unwrap();
    assert_eq!(first.len(), 1);
    env.gate.wait_running("hourly");
    // Its next due time comes while it still runs: recorded skipped.
    env.clock.set(t("2026-05-01T02:00:10Z"));
    assert!(s.tick().unwrap().is_empty());
    assert!(matches!(s.run_now("hourly"), Err(Error::AlreadyRunning(_))));
    env.gate.release("hourly");
    assert!(s.wait_idle(Duration::from_secs(10)));
    let r = runs(&s, "hourly");
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].result, RunResult::Success);
    assert_eq!(r[1].result, RunResult::Skipped);
    assert!(r[1].warnings[0].contains("still running"));
    let starts = env.gate.calls().iter().filter(|c| c.2 == "start").count();
    assert_eq!(starts, 1);
}

#[test]
fn jobs_sharing_a_vm_are_serialised() {
    let env = Env::new("2026-05-01T00:00:00Z");
    let s = env.open();
    let events = s.events().channel(256);
    s.put_job(job("a", None, &["web", "db"])).unwrap();
    s.put_job(job("b", None, &["db"])).unwrap();
    s.put_job(job("c", None, &["mail"])).unwrap();
    env.gate.hold("a");
    // c is held too: a run that ends at once would be gone before it is seen running.
    env.gate.hold("c");
    let ra = s.run_now("a").unwrap();
    env.gate.wait_running("a");
    let rb = s.run_now("b").unwrap();
    let rc = s.run_now("c").unwrap();
    // c shares nothing and runs beside a; b waits for db.
    env.gate.wait_running("c");
    assert!(!s.wait_idle(Duration::from_millis(300)));
    assert_eq!(s.run(rb).unwrap().result, RunResult::Queued);
    assert!(env.gate.calls().iter().all(|c| c.0 != "b"), "b must not start while a holds db");
    env.gate.release("c");
    env.gate.release("a");
    assert!(s.wait_idle(Duration::from_secs(10)));
    let calls = env.gate.calls();
    let pos = |job: &str, what: &str| calls.iter().position(|c| c.0 == job && c.2 == what).unwrap();
    assert!(pos("a", "end") < pos("b", "start"), "{calls:?}");
    assert!(pos("c", "start") < pos("a", "end"), "c ran beside a: {calls:?}");
    for id in [ra, rb, rc] {
        assert_eq!(s.run(id).unwrap().result, RunResult::Success);
    }
    let ev: Vec<_> = events.try_iter().collect();
    let queued = ev.iter().find(|e| e.run == rb && e.kind.name() == "job_queued").expect("b announced as queued");
    assert!(serde_json::to_string(&queued.kind).unwrap().contains("xen1/db"), "{queued:?}");
    // A cancelled queued run ends at once, without running.
    env.gate.hold("a");
    s.run_now("a").unwrap();
    env.gate.wait_running("a");
    let rb2 = s.run_now("b").unwrap();
    s.cancel(rb2).unwrap();
    assert_eq!(s.run(rb2).unwrap().result, RunResult::Cancelled);
    env.gate.release("a");
    assert!(s.wait_idle(Duration::from_secs(10)));
    assert_eq!(env.gate.calls().iter().filter(|c| c.0 == "b" && c.2 == "start").count(), 1);
}

#[test]
fn the_backup_path_lock_waits_for_the_vm() {
    let locks = alike_sched::VmLocks::global();
    let cancel = alike_core::CancelToken::new();
    let g = locks.acquire("xen/test-vm", "first", &cancel).unwrap();
    assert_eq!(locks.held().get("xen/test-vm").map(String::as_str), Some("first"));
    let order = Arc::new(Mutex::new(Vec::new()));
    let o2 = order.clone();
    let t = std::thread::spawn(move || {
        let _g = alike_sched::VmLocks::global().acquire("xen/test-vm", "second", &alike_core::CancelToken::new());
        o2.lock().unwrap().push("second");
    });
    std::thread::sleep(Duration::from_millis(300));
    order.lock().unwrap().push("first done");
    drop(g);
    t.join().unwrap();
    assert_eq!(*order.lock().unwrap(), ["first done", "second"]);
    // A cancelled wait gives up.
    let _g = locks.acquire("xen/test-vm", "third", &cancel).unwrap();
    let c2 = alike_core::CancelToken::new();
    c2.cancel();
    assert!(alike_sched::VmLocks::global().acquire("xen/test-vm", "fourth", &c2).is_none());
}

#[test]
fn api_made_jobs_survive_a_restart_and_the_file_wins_on_a_name_clash() {
    let env = Env::new("2026-03-02T10:00:00Z");
    let names = |s: &Scheduler| {
        let mut v: Vec<(String, JobOrigin, Option<String>)> =
            s.jobs().unwrap().into_iter().map(|j| (j.spec.name, j.spec.origin, j.spec.schedule)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let s = env.open();
    s.set_jobs(vec![job("file-a", Some("0 1 * * *"), &["a"]), job("file-b", None, &["b"])]).unwrap();
    // Through the API: a new job, one that will clash with the file, and an edit of a file job.
    for (name, cron) in [("api-x", "0 2 * * *"), ("clash", "0 3 * * *"), ("file-b", "0 4 * * *")] {
        let mut j = job(name, Some(cron), &["x"]);
        j.origin = JobOrigin::Api;
        s.put_job(j).unwrap();
    }
    drop(s);
    // The restart: the file now has file-a and clash, and no longer file-b.
    let s = env.open();
    s.set_jobs(vec![job("file-a", Some("0 1 * * *"), &["a"]), job("clash", Some("0 5 * * *"), &["c"])]).unwrap();
    assert_eq!(
        names(&s),
        [
            ("api-x".to_owned(), JobOrigin::Api, Some("0 2 * * *".to_owned())),
            ("clash".to_owned(), JobOrigin::File, Some("0 5 * * *".to_owned())),
            ("file-a".to_owned(), JobOrigin::File, Some("0 1 * * *".to_owned())),
            // An API edit of a file's job is the API's now: kept though the file dropped it.
            ("file-b".to_owned(), JobOrigin::Api, Some("0 4 * * *".to_owned())),
        ]
    );
    drop(s);
    // A file job removed from the file goes; the API's stay.
    let s = env.open();
    s.set_jobs(vec![]).unwrap();
    let left: Vec<String> = names(&s).into_iter().map(|(n, ..)| n).collect();
    assert_eq!(left, ["api-x", "file-b"]);
    // A definition stored before origins existed reads as the file's.
    let old: JobSpec =
        serde_json::from_str(r#"{"name":"n","kind":"backup","vms":["v"],"pool":"p","store":"s"}"#).unwrap();
    assert_eq!(old.origin, JobOrigin::File);
}
