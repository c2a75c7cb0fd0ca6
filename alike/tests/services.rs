//! The services end to end against the XAPI simulator: a nightly job
//! (backup of the demo pool's VMs by tag → retention → vault →
//! verification) due on the spring DST night in Europe/Berlin under an
//! injected clock, then an incremental run by hand; the history, the
//! events, a webhook receiver and an SMTP sink (both started here) show
//! what ran. Then a validation spread over runs by its budget, and the
//! history rebuilt from the store into a new database.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alike::Store;
use alike::services::notify::{EmailOptions, Notifier, Security};
use alike::services::{
    Clock, EventKind, JobKind, JobSpec, ManualClock, RunFilter, RunResult, SchedulerOptions, Services, Trigger,
    VerifyAfter,
};
use alike_xen_sim::{SimConfig, Simulator};

/// A webhook receiver: each POST's body, answered 200.
fn webhook() -> (String, Receiver<serde_json::Value>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook/secret-token", l.local_addr().unwrap());
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.starts_with("POST /hook/secret-token "), "{line}");
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
            let _ = tx.send(serde_json::from_slice(&body).unwrap());
        }
    });
    (url, rx)
}

/// An SMTP sink speaking enough of RFC 5321 for a client: each message's
/// envelope recipients and text.
fn smtp_sink() -> (u16, Receiver<(Vec<String>, String)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                c.write_all(b"220 sink ESMTP\r\n").unwrap();
                let mut rcpt = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let upper = line.to_ascii_uppercase();
                    if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        c.write_all(b"250-sink\r\n250 8BITMIME\r\n").unwrap();
                    } else if upper.starts_with("RCPT TO:") {
                        rcpt.push(line[8..].trim().trim_matches(['<', '>']).to_owned());
                        c.write_all(b"250 ok\r\n").unwrap();
                    } else if upper.starts_with("DATA") {
                        c.write_all(b"354 go on\r\n").unwrap();
                        let mut data = String::new();
                        loop {
                            line.clear();
                            r.read_line(&mut line).unwrap();
                            if line == ".\r\n" {
                                break;
                            }
                            data.push_str(&line);
                        }
                        c.write_all(b"250 queued\r\n").unwrap();
                        let _ = tx.send((std::mem::take(&mut rcpt), data));
                    } else if upper.starts_with("QUIT") {
                        c.write_all(b"221 bye\r\n").unwrap();
                        return;
                    } else {
                        c.write_all(b"250 ok\r\n").unwrap();
                    }
                }
            });
        }
    });
    (port, rx)
}

fn store(dir: &std::path::Path, name: &str) -> Arc<Store> {
    Arc::new(
        Store::builder()
            .passphrase("pw")
            .insecure_fast_kdf()
            .cache_dir(dir.join(format!("{name}-cache")))
            .create(dir.join(name))
            .unwrap(),
    )
}

fn t(s: &str) -> alike_sched::chrono::DateTime<alike_sched::chrono::Utc> {
    s.parse().unwrap()
}

#[test]
fn nightly_chain_against_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::new(dir.path().join("sim")).demo(true)).unwrap();
    let (main, vault) = (store(dir.path(), "main"), store(dir.path(), "vault"));
    let (hook_url, hooks) = webhook();
    let (smtp_port, mails) = smtp_sink();
    let clock = Arc::new(ManualClock::new(t("2026-03-28T12:00:00Z")));
    let (url, pw) = (sim.url(), sim.password().to_owned());
    let mut mail = EmailOptions::new("127.0.0.1", "alike@example.org", vec!["ops@example.org".into()]);
    (mail.port, mail.security) = (smtp_port, Security::None);
    let mut opts = SchedulerOptions::default();
    opts.tick = Duration::from_millis(50);
    let services = Services::builder()
        .database(dir.path().join("services.redb"))
        .store("main", main.clone())
        .store("vault", vault.clone())
        .pool(
            "demo",
            Arc::new(move || Ok(Box::new(alike::xen_pool(&url, "root", &pw, None)?) as Box<dyn alike::Hypervisor>)),
        )
        .clock(clock.clone())
        .options(opts)
        .notifier(Notifier::webhook(hook_url))
        .notifier(Notifier::email(mail).digest(Duration::from_secs(3600)))
        .open()
        .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    services.subscribe(move |e| ev.lock().unwrap().push(e.clone()));

    let mut job = JobSpec::new("nightly", JobKind::Backup);
    job.vms = vec!["tag:demo".into()];
    job.pool = Some("demo".into());
    job.store = Some("main".into());
    job.schedule = Some("30 2 * * *".into());
    job.timezone = "Europe/Berlin".into();
    job.chain.retention = Some(alike::RetentionPolicy::default().last(1));
    job.chain.vault = Some("vault".into());
    job.chain.verify = VerifyAfter::Quick;
    // A job naming an unknown store is refused before it is stored.
    let mut bad = job.clone();
    bad.name = "bad".into();
    bad.store = Some("nowhere".into());
    assert_eq!(services.put_job(bad).unwrap_err().kind(), alike::ErrorKind::InvalidArgument);
    services.put_job(job).unwrap();
    services.start().unwrap();
    // 02:30 does not exist in Berlin that night: the run is at 03:00 CEST.
    std::thread::sleep(Duration::from_millis(200));
    let status = services.jobs().unwrap();
    assert_eq!(status[0].next_run, Some(t("2026-03-29T01:00:00Z")));
    clock.set(t("2026-03-29T01:00:20Z"));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let first = loop {
        let r = services.runs(&RunFilter::default()).unwrap();
        if let Some(r) = r.into_iter().find(|r| r.result.is_final()) {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the scheduled run never ended");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(first.trigger, Trigger::Schedule);
    assert_eq!(first.scheduled_for, Some(t("2026-03-29T01:00:00Z")));
    assert!(first.result.is_good(), "{first:#?}");
    let mut vms: Vec<&str> = first.vms.iter().map(|v| v.vm.as_str()).collect();
    vms.sort_unstable();
    assert_eq!(vms, ["db-01", "web-01"]);
    for v in &first.vms {
        assert!(v.version.is_some() && v.read_bytes > 0 && v.stored_bytes > 0, "{v:#?}");
        assert!(v.disks.iter().all(|d| d.mode == "full" && d.size > 0), "{v:#?}");
        assert_eq!(v.disks.iter().map(|d| d.read_bytes).sum::<u64>(), v.read_bytes);
    }
    let steps: Vec<(&str, &str)> = first.steps.iter().map(|s| (s.step.as_str(), s.result.as_str())).collect();
    assert_eq!(
        steps,
        [("retention", "success"), ("vault", "success"), ("verify", "success"), ("verify", "success")],
        "{first:#?}"
    );
    // The vault holds both VMs, and the store recorded the verifications.
    assert_eq!(vault.versions(None).unwrap().len(), 2);
    let records = main.verifications().unwrap();
    for v in &first.vms {
        assert_eq!(records[v.version.as_ref().unwrap()].depth, "quick");
    }

    // An incremental run by hand: retention keeps one version per VM.
    let second = services.run_now("nightly").unwrap();
    assert!(matches!(services.run_now("nightly"), Err(e) if e.kind() == alike::ErrorKind::Busy));
    assert!(services.wait_idle(Duration::from_secs(120)));
    let second = services.run(second).unwrap();
    assert_eq!(second.trigger, Trigger::Manual);
    assert!(second.result.is_good(), "{second:#?}");
    assert!(second.vms.iter().flat_map(|v| &v.disks).all(|d| d.mode == "incremental"), "{second:#?}");
    let (read1, _, _) = first.totals();
    let (read2, _, _) = second.totals();
    assert!(read2 < read1 / 4, "the incremental read {read2} of {read1}");
    let pruned = &second.steps[0].detail;
    assert_eq!(main.versions(None).unwrap().len(), 2, "retention left {pruned}");

    // Events: each run from job_started to finished, VMs and steps between.
    let evs = events.lock().unwrap().clone();
    let names = |run: u64| -> Vec<&'static str> {
        evs.iter().filter(|e| e.run == run && e.kind.name() != "progress").map(|e| e.kind.name()).collect()
    };
    assert_eq!(
        names(first.id),
        [
            "job_started",
            "vm_started",
            "vm_done",
            "vm_started",
            "vm_done",
            "step_done",
            "step_done",
            "step_done",
            "step_done",
            "finished"
        ]
    );
    assert!(evs.iter().any(|e| e.run == first.id && e.kind.name() == "progress"));
    // Backup progress per disk: each disk of each VM of the first run ends
    // at its own size.
    let mut ends = std::collections::BTreeMap::new();
    for e in evs.iter().filter(|e| e.run == first.id) {
        if let EventKind::Progress { vm, disk, phase, done, total } = &e.kind
            && phase == "backup"
        {
            ends.insert((vm.clone(), *disk), (*done, *total));
        }
    }
    // (Events name a VM as the job selected it — here by tag, so its uuid.)
    let mut got: Vec<(u32, u64, u64)> = ends.iter().map(|((_, d), (done, total))| (*d, *done, *total)).collect();
    let mut want: Vec<(u32, u64, u64)> =
        first.vms.iter().flat_map(|v| v.disks.iter().map(|d| (d.position, d.size, d.size))).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert!(want.len() > first.vms.len(), "a VM with several disks: {want:?}");
    assert_eq!(got, want, "{ends:?}");
    assert!(evs.windows(2).all(|w| w[0].seq < w[1].seq));

    // The webhook: one POST per run, the run's record in it.
    let a = hooks.recv_timeout(Duration::from_secs(30)).unwrap();
    let b = hooks.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!((a["kind"].as_str(), a["runs"][0]["id"].as_u64()), (Some("run"), Some(first.id)));
    assert_eq!(b["runs"][0]["id"].as_u64(), Some(second.id));
    assert_eq!(b["runs"][0]["result"], serde_json::json!(second.result.name()));
    assert!(a["summary"].as_str().unwrap().contains("web-01"));

    // Email: a digest, sent when the services stop, of both runs.
    assert!(mails.try_recv().is_err(), "the digest waits");
    services.stop(true, Duration::from_secs(30));
    let (to, text) = mails.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(to, ["ops@example.org"]);
    assert!(text.contains("Subject: alike: 2 runs"), "{text}");
    assert!(text.contains(&format!("run {} of job nightly", first.id)), "{text}");
    assert!(text.contains(&format!("run {} of job nightly", second.id)), "{text}");
    drop(services);

    // A validation job spread over runs: a budget of one VM's disks a run,
    // those verified longest ago first (full depth: no full record yet).
    let services = Services::builder()
        .database(dir.path().join("services.redb"))
        .store("main", main.clone())
        .clock(clock.clone())
        .open()
        .unwrap();
    assert_eq!(services.jobs().unwrap().len(), 1, "the job survived the restart");
    let mut v = JobSpec::new("validate", JobKind::Validation);
    v.store = Some("main".into());
    v.validation.full = true;
    v.validation.budget_bytes = Some(96 << 20);
    services.put_job(v).unwrap();
    let mut verified = Vec::new();
    for _ in 0..2 {
        let id = services.run_now("validate").unwrap();
        assert!(services.wait_idle(Duration::from_secs(60)));
        let r = services.run(id).unwrap();
        assert_eq!(r.result, RunResult::Success, "{r:#?}");
        assert_eq!(r.steps.len(), 1, "one VM's disks fit the budget: {r:#?}");
        assert_eq!(r.steps[0].detail["depth"], "full");
        verified.push(r.steps[0].detail.clone());
    }
    let full: Vec<_> = main.verifications().unwrap().into_values().filter(|r| r.depth == "full").collect();
    assert_eq!(full.len(), 2, "two nights verified both versions: {verified:?}");
    drop(services);

    // The database lost: rebuilt from the store.
    let fresh = Services::builder()
        .database(dir.path().join("new.redb"))
        .store("main", main.clone())
        .clock(clock.clone())
        .open()
        .unwrap();
    assert_eq!(fresh.rebuild_history().unwrap(), 2);
    let rebuilt = fresh.runs(&RunFilter::default()).unwrap();
    assert!(rebuilt.iter().all(|r| r.trigger == Trigger::Rebuilt && r.steps[0].detail["depth"] == "full"));
    let ids: std::collections::BTreeSet<_> = rebuilt.iter().filter_map(|r| r.vms[0].version.clone()).collect();
    let want: std::collections::BTreeSet<_> = main.versions(None).unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(ids, want);
    assert_eq!(clock.now(), t("2026-03-29T01:00:20Z"));
}

#[test]
fn the_configuration_file_extends_jobs_with_schedules_chains_and_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#"
[[store]]
name = "main"
path = "main"
[[store]]
name = "offsite"
path = "offsite"

[[pool]]
name = "xen1"
kind = "xen"
url = "https://xapi.example"
user = "root"
password = { env = "XAPI_PASSWORD" }
template = "alike-processor"
addresses = ["10.1.0.8"]
ssh_key = "id_ed25519"

[[job]]
name = "nightly"
kind = "backup"
vms = ["web-01", "tag:prod"]
store = "main"
pool = "xen1"
schedule = "30 2 * * 1-5"
timezone = "Europe/Berlin"
missed = "skip"
[job.chain]
retention = { keep_last = 7, keep_daily = 14 }
vault = "offsite"
verify = "full"

[[job]]
name = "weekly-check"
kind = "validation"
store = "main"
schedule = "@weekly"
validation = { full = true, budget_bytes = 1000000000 }

[[notify]]
kind = "webhook"
url = "http://127.0.0.1:9000/hook"

[[notify]]
kind = "email"
digest_seconds = 86400
problems_only = true
[notify.email]
server = "mail.example"
from = "alike@example.org"
to = ["ops@example.org"]
username = "alike"
password = { file = "smtp.pass" }
"#;
    let c = alike::Config::parse(base, dir.path().join("alike.toml")).unwrap();
    let nightly = c.job("nightly").unwrap().spec();
    assert_eq!(nightly.schedule.as_deref(), Some("30 2 * * 1-5"));
    assert_eq!(nightly.timezone, "Europe/Berlin");
    assert_eq!(nightly.missed, alike::services::MissedRule::Skip);
    assert_eq!(nightly.chain.vault.as_deref(), Some("offsite"));
    assert_eq!(nightly.chain.verify, VerifyAfter::Full);
    assert_eq!(nightly.chain.retention.unwrap().keep_daily, 14);
    assert_eq!(nightly.pool.as_deref(), Some("xen1"));
    nightly.check().unwrap();
    let check = c.job("weekly-check").unwrap().spec();
    assert_eq!((check.kind, check.pool.as_deref()), (JobKind::Validation, None));
    assert_eq!(check.validation.budget_bytes, Some(1_000_000_000));
    assert_eq!(c.notify.len(), 2);
    // A relative secret path is resolved against the file's directory.
    let email = c.notify[1].email.as_ref().unwrap();
    assert_eq!(
        format!("{:?}", email.password),
        format!("{:?}", Some(alike::config::SecretRef::File(dir.path().join("smtp.pass"))))
    );

    // Errors name the key.
    for (from, to, key) in [
        ("schedule = \"30 2 * * 1-5\"", "schedule = \"30 25 * * *\"", "job[0].schedule"),
        ("timezone = \"Europe/Berlin\"", "timezone = \"Europe/Atlantis\"", "job[0].timezone"),
        ("vault = \"offsite\"", "vault = \"main\"", "job[0].chain.vault"),
        ("verify = \"full\"", "verify = \"sometimes\"", "unknown variant `sometimes`"),
        ("digest_seconds = 86400", "digest_seconds = 5", "notify[1]"),
        ("keep_last = 7, keep_daily = 14", "keep_last = 0", "job[0].chain.retention"),
        ("kind = \"webhook\"\nurl = \"http://127.0.0.1:9000/hook\"", "kind = \"webhook\"", "notify[0]"),
    ] {
        assert!(base.contains(from), "{from}");
        let e = alike::Config::parse(&base.replace(from, to), dir.path().join("alike.toml")).unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
}

#[test]
fn the_documented_example_configuration_parses() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md")).unwrap();
    let example = doc.split("## Example").nth(1).unwrap();
    let toml = example.split("```toml").nth(1).unwrap().split("```").next().unwrap();
    let c = alike::Config::parse(toml, "/etc/alike/alike.toml").unwrap();
    let nightly = c.job("nightly").unwrap().spec();
    assert_eq!(nightly.schedule().unwrap().unwrap().zone(), "Europe/Berlin");
    assert_eq!(c.job("weekend-check").unwrap().spec().kind, JobKind::Validation);
    assert_eq!(c.notify.len(), 1);
    let h = c.history.unwrap();
    assert_eq!((h.keep_days, h.keep_runs), (180, 200));
}

#[test]
fn the_history_keeps_runs_as_the_configuration_file_says_and_housekeeping_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("store.pass"), "pw-history\n").unwrap();
    Store::builder().passphrase("pw-history").insecure_fast_kdf().create(dir.path().join("store")).unwrap();
    let base = "version = 1\n[[store]]\nname = \"main\"\npath = \"store\"\npassphrase = { file = \"store.pass\" }\n\
                [[job]]\nname = \"hk\"\nkind = \"housekeeping\"\nstore = \"main\"\n\
                [[job]]\nname = \"check\"\nkind = \"validation\"\nstore = \"main\"\n\
                [history]\nkeep_days = 1\nkeep_runs = 1\n";
    // Out of range: refused, naming the key.
    for (from, to, key) in [
        ("keep_days = 1", "keep_days = 0", "history.keep_days"),
        ("keep_days = 1", "keep_days = 36501", "history.keep_days"),
        ("keep_runs = 1", "keep_runs = 1000001", "history.keep_runs"),
        ("keep_runs = 1", "keep_run = 1", "unknown field `keep_run`"),
    ] {
        let e = alike::Config::parse(&base.replace(from, to), dir.path().join("alike.toml")).unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
    let c = alike::Config::parse(base, dir.path().join("alike.toml")).unwrap();
    let clock = Arc::new(ManualClock::new(t("2026-05-01T12:00:00Z")));
    // The scheduler's own default (90 days) is overridden by the file's table.
    let services = Services::builder()
        .config(&c)
        .unwrap()
        .options(SchedulerOptions::default())
        .clock(clock.clone())
        .database(dir.path().join("services.redb"))
        .open()
        .unwrap();
    let run = |job: &str| {
        let id = services.run_now(job).unwrap();
        assert!(services.wait_idle(Duration::from_secs(60)));
        services.run(id).unwrap()
    };
    let old: Vec<u64> = (0..3).map(|_| run("hk").id).collect();
    let check = run("check").id;
    // A day later nothing is old enough yet (older than keep_days is strict).
    clock.advance(alike_sched::chrono::Duration::hours(23));
    let r = run("hk");
    let hist = r.steps.iter().find(|s| s.step == "history").unwrap();
    assert_eq!(hist.detail["deleted_runs"], 0, "{r:#?}");
    clock.advance(alike_sched::chrono::Duration::hours(2));
    let r = run("hk");
    assert_eq!(r.result, RunResult::Success, "{r:#?}");
    let hist = r.steps.iter().find(|s| s.step == "history").unwrap();
    // hk's three runs of day 0 go; its run of 23 h later is 2 h old, kept
    // by age. `check` keeps its one run (its job's newest keep_runs = 1)
    // although it is as old as hk's.
    assert_eq!(
        (hist.detail["deleted_runs"].as_u64(), hist.detail["keep_days"].as_u64()),
        (Some(3), Some(1)),
        "{hist:?}"
    );
    let left: Vec<u64> = services.runs(&RunFilter::default()).unwrap().iter().map(|r| r.id).collect();
    for id in &old {
        assert!(!left.contains(id), "run {id} outlived the retention: {left:?}");
    }
    assert!(left.contains(&check) && left.contains(&r.id) && left.len() == 3, "{left:?}");
}

#[test]
fn api_made_jobs_survive_a_restart_and_the_configuration_file_wins_on_a_clash() {
    use alike::services::{JobOrigin, JobSpec, Services};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("store.pass"), "pw-restart\n").unwrap();
    alike::Store::builder().passphrase("pw-restart").insecure_fast_kdf().create(dir.path().join("store")).unwrap();
    let file = |cron: &str| {
        format!(
            "version = 1\n[[store]]\nname = \"main\"\npath = \"store\"\npassphrase = {{ file = \"store.pass\" }}\n\
             [[job]]\nname = \"check\"\nkind = \"validation\"\nstore = \"main\"\nschedule = \"{cron}\"\n"
        )
    };
    let open = |text: &str| {
        let c = alike::Config::parse(text, dir.path().join("alike.toml")).unwrap();
        Services::builder().config(&c).unwrap().database(dir.path().join("services.redb")).open().unwrap()
    };
    let s = open(&file("0 1 * * *"));
    for (name, cron) in [("api-check", "0 2 * * *"), ("check", "0 3 * * *")] {
        let mut j = JobSpec::new(name, JobKind::Validation);
        j.store = Some("main".into());
        j.schedule = Some(cron.into());
        s.put_job(j).unwrap();
    }
    assert_eq!(s.job("api-check").unwrap().origin, JobOrigin::Api, "put_job marks the job the API's");
    drop(s);
    let s = open(&file("0 4 * * *"));
    let api = s.job("api-check").unwrap();
    assert_eq!((api.origin, api.schedule.as_deref()), (JobOrigin::Api, Some("0 2 * * *")));
    let check = s.job("check").unwrap();
    assert_eq!((check.origin, check.schedule.as_deref()), (JobOrigin::File, Some("0 4 * * *")), "the file wins");
    assert_eq!(s.jobs().unwrap().len(), 2);
}

#[test]
fn replication_jobs_make_replica_points_with_figures_in_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::new(dir.path().join("sim")).demo(true)).unwrap();
    let (url, pw) = (sim.url(), sim.password().to_owned());
    let services = Services::builder()
        .database(dir.path().join("services.redb"))
        .pool(
            "demo",
            Arc::new(move || Ok(Box::new(alike::xen_pool(&url, "root", &pw, None)?) as Box<dyn alike::Hypervisor>)),
        )
        .open()
        .unwrap();
    let mut job = JobSpec::new("dr", JobKind::Replication);
    job.vms = vec!["web-01".into()];
    job.pool = Some("demo".into());
    job.target = Some(dir.path().join("replicas").display().to_string());
    job.options.insert("keep".into(), 1.into());
    services.put_job(job).unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let id = services.run_now("dr").unwrap();
        assert!(services.wait_idle(Duration::from_secs(120)));
        let r = services.run(id).unwrap();
        assert_eq!(r.result, RunResult::Success, "{r:#?}");
        runs.push(r.vms[0].clone());
    }
    let (first, second) = (&runs[0], &runs[1]);
    assert_eq!(first.vm, "web-01");
    assert_eq!((first.point, second.point), (Some(1), Some(2)));
    assert!(first.read_bytes > 0 && first.sent_bytes > 0, "{first:?}");
    // Nothing changed between the runs: the second sends (almost) nothing.
    assert!(second.sent_bytes < first.sent_bytes / 10, "{second:?} after {first:?}");
    // The replica holds the newest point only (keep = 1), its own history both runs.
    let replica = alike::Replica::open(dir.path().join("replicas").join("web-01")).unwrap();
    let points: Vec<u64> = replica.points().unwrap().iter().map(|p| p.point).collect();
    assert_eq!(points, [2]);
    assert_eq!(replica.history().unwrap().len(), 2);
    // The Xen VM's configuration is recorded in the folder (a replica VM is registered from it).
    let cfg = replica.vm_config().unwrap().expect("recorded by the run");
    assert_eq!((cfg.name.as_str(), cfg.hypervisor.as_str()), ("web-01", "xen"));
    assert!(cfg.vcpus.is_some() && !cfg.nics.is_empty(), "{cfg:?}");
}

#[test]
fn replication_jobs_keep_replica_vms_on_another_xen_pool() {
    let dir = tempfile::tempdir().unwrap();
    let prod = Simulator::start(SimConfig::new(dir.path().join("prod")).demo(true)).unwrap();
    let dr = Simulator::start(SimConfig::new(dir.path().join("dr")).demo(true)).unwrap();
    let connect = |sim: &Simulator| -> alike::services::XenConnect {
        let (url, pw) = (sim.url(), sim.password().to_owned());
        Arc::new(move || alike::xen_pool(&url, "root", &pw, None))
    };
    // The target as the configuration file gives it: `[job.target]` with a
    // pool, an SR and a state folder.
    let state = dir.path().join("replica-state");
    let text = format!(
        "[[store]]\nname = \"main\"\npath = \"store\"\n\
         [[pool]]\nname = \"prod\"\nkind = \"xen\"\nurl = \"{}\"\nuser = \"root\"\npassword = {{ env = \"NOPE\" }}\n\
         template = \"t\"\naddresses = [\"10.1.0.8\"]\nssh_key = \"k\"\n\
         [[pool]]\nname = \"dr\"\nkind = \"xen\"\nurl = \"{}\"\nuser = \"root\"\npassword = {{ env = \"NOPE\" }}\n\
         template = \"t\"\naddresses = [\"10.1.0.9\"]\nssh_key = \"k\"\n\
         [[job]]\nname = \"dr\"\nkind = \"replication\"\nvms = [\"web-01\"]\nstore = \"main\"\npool = \"prod\"\n\
         options = {{ keep = 1, processor = false }}\n\
         [job.target]\npool = \"dr\"\nsr = \"Local storage\"\nstate_dir = \"replica-state\"\n",
        prod.url(),
        dr.url()
    );
    let c = alike::Config::parse(&text, dir.path().join("alike.toml")).unwrap();
    let job = c.job("dr").unwrap().spec();
    assert_eq!(job.target.as_deref(), Some("xen:dr"));
    assert_eq!(job.options["xen_replica"]["state_dir"], state.display().to_string());
    for (from, to, key) in [
        ("pool = \"dr\"\nsr", "pool = \"nowhere\"\nsr", "job[0].target.pool"),
        ("sr = \"Local storage\"", "sr = \"\"", "job[0].target.sr"),
        ("state_dir = \"replica-state\"", "state_dir = \"s\"\nzone = 1", "did not match any variant"),
    ] {
        assert!(text.contains(from), "{from}");
        let e = alike::Config::parse(&text.replace(from, to), dir.path().join("alike.toml")).unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
    // The services run it: the config's pools connected with the
    // simulators' passwords, the same way `config()` connects them.
    let services = Services::builder()
        .database(dir.path().join("services.redb"))
        .xen_pool("prod", connect(&prod))
        .xen_pool("dr", connect(&dr))
        .open()
        .unwrap();
    // (The file's store is not one these services have: a replication job needs none.)
    let mut job = job;
    job.store = None;
    services.put_job(job).unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let id = services.run_now("dr").unwrap();
        assert!(services.wait_idle(Duration::from_secs(180)));
        let r = services.run(id).unwrap();
        assert_eq!(r.result, RunResult::Success, "{r:#?}");
        runs.push(r.vms[0].clone());
    }
    let (first, second) = (&runs[0], &runs[1]);
    assert_eq!(first.vm, "web-01");
    assert_eq!((first.point, second.point), (Some(1), Some(2)));
    // web-01's two disks are 96 MiB: the first run reads what is in use, sends its chunks.
    assert!(first.read_bytes > 0 && first.sent_bytes > 0, "{first:?}");
    // Nothing changed: the second run reads only what CBT reports and sends (almost) nothing.
    assert!(second.read_bytes < first.read_bytes / 10, "{second:?} after {first:?}");
    assert!(second.sent_bytes < first.sent_bytes / 10, "{second:?} after {first:?}");
    // The replica VM is on the target pool (not on the source), holding the newest point only.
    assert!(dr.lookup(alike_xen_sim::Class::Vm, "web-01 (replica)").is_some());
    assert!(prod.lookup(alike_xen_sim::Class::Vm, "web-01 (replica)").is_none());
    let target = Arc::new(connect(&dr)().unwrap());
    let replica = alike::XenReplicaVm::open(target, "web-01 (replica)", &state).unwrap();
    let points: Vec<u64> = replica.points().unwrap().iter().map(|p| p.point).collect();
    assert_eq!(points, [2]);
    assert_eq!(replica.history().unwrap().len(), 2);
    // A job naming a pool that is no Xen pool is refused when it is put.
    let mut bad = services.job("dr").unwrap();
    bad.target = Some("xen:elsewhere".into());
    let e = services.put_job(bad).unwrap_err();
    assert!(e.to_string().contains("\"elsewhere\" is none"), "{e}");
}
