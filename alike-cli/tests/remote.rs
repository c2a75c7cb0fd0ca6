//! Jobs on processors over SSH, end to end: a real OpenSSH server started
//! by the test (`alike_testing::sshd`, on a free loopback port, or in a
//! network namespace of its own), the `alike` binary built by this package
//! as the worker (`alike processor`, found by absolute path), the facade's
//! `run_remote` and the CLI's `--via` as the orchestrator.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alike::remote::{
    BackupJob, ClientKey, Host, HostKeyPolicy, ProcessorEvent, ProcessorJob, RemoteOptions, RestoreJob, StoreSpec,
    VerifyJob, run_remote,
};
use alike::{BackupOptions, ErrorKind, RestoreOptions, Store, VerifyOptions};
use alike_testing::sshd::Sshd;
use alike_testing::{Rng, sha256_file};

const ALIKE: &str = env!("CARGO_BIN_EXE_alike");

fn worker() -> String {
    format!("{ALIKE} processor")
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { dir: tempfile::tempdir().unwrap() }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
    /// An encrypted store (fast KDF: the processor opens it as fast).
    fn store(&self, name: &str, pw: &str) -> Store {
        Store::builder()
            .passphrase(pw)
            .insecure_fast_kdf()
            .cache_dir(self.p(&format!("{name}-cache")))
            .create(self.p(name))
            .unwrap()
    }
    fn spec(&self, name: &str) -> StoreSpec {
        let mut s = StoreSpec::new(self.p(name).to_str().unwrap());
        // The processor's own cache (it is another process, as on another host).
        s.cache_dir = Some(self.p(&format!("{name}-processor-cache")));
        s
    }
    /// An image of `mib` MiB: random data with holes.
    fn image(&self, name: &str, mib: usize, seed: u64) -> PathBuf {
        let p = self.p(name);
        let mut data = vec![0u8; mib << 20];
        let mut rng = Rng::new(seed);
        for chunk in data.chunks_mut(1 << 20).step_by(3) {
            rng.fill(&mut chunk[..768 << 10]);
        }
        std::fs::write(&p, &data).unwrap();
        p
    }
}

fn host(s: &Sshd) -> Host {
    Host::new(&s.user, &s.address, s.port).unwrap()
}

fn policy(s: &Sshd) -> HostKeyPolicy {
    HostKeyPolicy::known_hosts(&s.known_hosts)
}

fn key(s: &Sshd) -> ClientKey {
    ClientKey::new(&s.client_key)
}

/// Every event of a run, with when it came.
type Events = Arc<Mutex<Vec<(Instant, ProcessorEvent)>>>;

fn recording(events: &Events) -> RemoteOptions {
    let ev = events.clone();
    RemoteOptions::default().command(worker()).on_event(move |e| ev.lock().unwrap().push((Instant::now(), e.clone())))
}

fn files_under(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
        }
    }
    out
}

#[test]
fn a_backup_over_ssh_equals_the_same_backup_in_process() {
    let Some(sshd) = Sshd::start() else { return };
    let env = Env::new();
    let img = env.image("disk0.img", 40, 1);
    let img1 = env.image("disk1.img", 6, 2);

    // In process.
    let local = env.store("local", "pw");
    let lr = local.backup_images("web", &[&img, &img1], &BackupOptions::default()).unwrap();

    // Over SSH, into a store of its own.
    let remote = env.store("remote", "pw");
    let events: Events = Default::default();
    let job = ProcessorJob::backup(BackupJob::new(env.spec("remote"), "web", vec![img.clone(), img1.clone()]))
        .passphrase("pw")
        .with_progress_interval_ms(10);
    let t0 = Instant::now();
    let r = run_remote(&host(&sshd), &policy(&sshd), &key(&sshd), &job, &recording(&events))
        .unwrap_or_else(|e| panic!("{e}\nsshd: {}", sshd.log_text()));
    let ended = Instant::now();
    eprintln!("backup of 46 MiB over SSH: {:.2} s", (ended - t0).as_secs_f64());
    assert_eq!(r.kind, "backup");
    assert_eq!(r.host_key, sshd.host_fingerprint);

    // The same version: same reads, same new data, same disks; it restores bit-exact.
    let rv = remote.version("latest", Some("web")).unwrap();
    assert_eq!(r.result["id"].as_str(), Some(rv.id.as_str()));
    assert_eq!(r.result["read_bytes"].as_u64(), Some(lr.read_bytes));
    assert_eq!(r.result["new_bytes"].as_u64(), Some(lr.new_bytes));
    assert_eq!(rv.disks.len(), 2);
    for (a, b) in rv.disks.iter().zip(&lr.version.disks) {
        assert_eq!((a.size, a.data_bytes), (b.size, b.data_bytes));
    }
    for (disk, src) in [(0, &img), (1, &img1)] {
        let out = env.p(&format!("restored{disk}.img"));
        remote.restore_to_file(&rv, disk, &out, &RestoreOptions::default()).unwrap();
        assert_eq!(sha256_file(&out), sha256_file(src));
    }

    // Events: started, then progress with bytes per disk during the run, before the end.
    let ev = events.lock().unwrap();
    assert!(matches!(ev[0].1, ProcessorEvent::Started(ref s) if s.job == job.id), "{:?}", ev[0].1);
    let progress: Vec<_> = ev
        .iter()
        .filter_map(|(t, e)| match e {
            ProcessorEvent::Progress(p) => Some((*t, p.clone())),
            _ => None,
        })
        .collect();
    let mid: Vec<_> = progress.iter().filter(|(_, p)| p.bytes_done > 0 && p.bytes_done < p.bytes_total).collect();
    assert!(!mid.is_empty(), "no progress during the run: {progress:?}");
    assert!(mid[0].0 + Duration::from_millis(20) < ended, "the first progress came at the end");
    let last = &progress.last().unwrap().1;
    assert_eq!((last.phase.as_str(), last.bytes_done), ("backup", last.bytes_total));
    assert_eq!(last.disks.len(), 2);
    assert_eq!(last.disks[1].bytes_total, 6 << 20);
    assert!(last.disks.iter().all(|d| d.bytes_done > 0 && d.bytes_done <= d.bytes_total), "{last:?}");
    drop(ev);

    // Restore and verify run there too.
    let out = env.p("restored-remotely.img");
    let job = ProcessorJob::restore(RestoreJob::new(env.spec("remote"), "latest", 0, &out)).passphrase("pw");
    let r = run_remote(&host(&sshd), &policy(&sshd), &key(&sshd), &job, &recording(&Default::default())).unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&img));
    assert_eq!(r.result["id"].as_str(), Some(rv.id.as_str()));
    let mut v = VerifyJob::new(env.spec("remote"));
    v.full = true;
    let r = run_remote(
        &host(&sshd),
        &policy(&sshd),
        &key(&sshd),
        &ProcessorJob::verify(v).passphrase("pw"),
        &recording(&Default::default()),
    )
    .unwrap();
    assert_eq!(r.result["damaged"], serde_json::json!([]));
    assert_eq!(r.result["versions"], 1);
}

/// The processes whose pid is in `/proc` now.
fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// Every process whose command line or environment holds `needle`, and
/// whether the worker (`pid`) was seen.
fn scan_proc(needle: &[u8], worker: Option<u32>) -> (Vec<String>, bool) {
    let mut hits = Vec::new();
    let mut seen = false;
    for pid in pids() {
        for what in ["cmdline", "environ"] {
            let Ok(b) = std::fs::read(format!("/proc/{pid}/{what}")) else { continue };
            if Some(pid) == worker && what == "cmdline" && b.windows(9).any(|w| w == b"processor") {
                seen = true;
            }
            if b.windows(needle.len()).any(|w| w == needle) {
                hits.push(format!("{pid} {what}: {}", String::from_utf8_lossy(&b).replace('\0', " ")));
            }
        }
    }
    (hits, seen)
}

#[test]
fn secrets_are_in_no_command_line_and_no_environment() {
    let Some(sshd) = Sshd::start() else { return };
    let env = Env::new();
    let mut tag = [0u8; 12];
    Rng::new(std::process::id() as u64 ^ 0x5ec7e7).fill(&mut tag);
    let pw = format!("pw-{}", hex_of(&tag));
    env.store("s", &pw);
    let img = env.image("d.img", 48, 3);
    let worker_pid = Arc::new(Mutex::new(None));
    let scans = Arc::new(Mutex::new((0usize, false, Vec::<String>::new())));
    let (wp, sc, needle) = (worker_pid.clone(), scans.clone(), pw.clone().into_bytes());
    let opts = RemoteOptions::default().command(worker()).on_event(move |e| {
        if let ProcessorEvent::Started(s) = e {
            *wp.lock().unwrap() = Some(s.pid);
        }
        let (hits, seen) = scan_proc(&needle, *wp.lock().unwrap());
        let mut s = sc.lock().unwrap();
        s.0 += 1;
        s.1 |= seen;
        s.2.extend(hits);
    });
    let job = ProcessorJob::backup(BackupJob::new(env.spec("s"), "web", vec![img]))
        .passphrase(&pw)
        .with_progress_interval_ms(10);
    run_remote(&host(&sshd), &policy(&sshd), &key(&sshd), &job, &opts).unwrap();
    let s = scans.lock().unwrap();
    assert!(s.0 >= 2, "scanned {} times", s.0);
    assert!(s.1, "the worker's own command line was never seen: the scan proves nothing");
    assert!(s.2.is_empty(), "the passphrase is visible in /proc: {:?}", s.2);
    assert!(!sshd.log_text().contains(&pw), "sshd logged the passphrase");
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Waits until `pid` is gone; how long it took.
fn wait_gone(pid: u32, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie is gone as far as the job is concerned.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        assert!(t0.elapsed() < limit, "worker {pid} still runs after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// Cancels `token` at the first progress event past 0, and remembers the worker's pid.
fn cancel_midway(token: alike::CancelToken, pid: Arc<Mutex<Option<u32>>>) -> impl Fn(&ProcessorEvent) + Send + Sync {
    move |e| match e {
        ProcessorEvent::Started(s) => *pid.lock().unwrap() = Some(s.pid),
        ProcessorEvent::Progress(p) if p.bytes_done > 0 => token.cancel(),
        _ => {}
    }
}

#[test]
fn closing_the_channel_mid_job_cancels_it_cleanly() {
    let Some(sshd) = Sshd::start() else { return };
    let env = Env::new();
    let store = env.store("s", "pw");
    let img = env.image("big.img", 160, 4);
    for grace in [Duration::ZERO, Duration::from_secs(20)] {
        // ZERO: the channel is closed at once, the worker sees its input end;
        // 20 s: a cancel message, and the worker says it stopped.
        let token = alike::CancelToken::new();
        let pid = Arc::new(Mutex::new(None));
        let opts = RemoteOptions::default()
            .command(worker())
            .cancel_token(token.clone())
            .cancel_grace(grace)
            .on_event(cancel_midway(token, pid.clone()));
        let mut b = BackupJob::new(env.spec("s"), "web", vec![img.clone()]);
        b.threads = 1;
        let job = ProcessorJob::backup(b).passphrase("pw").with_progress_interval_ms(10);
        let t0 = Instant::now();
        let e = run_remote(&host(&sshd), &policy(&sshd), &key(&sshd), &job, &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
        let pid = pid.lock().unwrap().expect("started came");
        let gone = wait_gone(pid, Duration::from_secs(20));
        eprintln!(
            "grace {grace:?}: cancelled after {:.2} s, worker gone {:.2} s later",
            t0.elapsed().as_secs_f64(),
            gone.as_secs_f64()
        );
        // No version, no lock, no spool file; the store verifies.
        assert!(store.versions(None).unwrap().is_empty());
        assert!(store.locks().unwrap().is_empty(), "{:?}", store.locks());
        assert_eq!(files_under(&env.p("s/tmp")), Vec::<PathBuf>::new());
        let v = store.verify(&VerifyOptions::default().full(true)).unwrap();
        assert!(v.ok(), "{v:?}");
    }
    // And the next run succeeds.
    let job = ProcessorJob::backup(BackupJob::new(env.spec("s"), "web", vec![img.clone()])).passphrase("pw");
    run_remote(&host(&sshd), &policy(&sshd), &key(&sshd), &job, &recording(&Default::default())).unwrap();
    let out = env.p("r.img");
    store.restore_to_file(&store.version("latest", None).unwrap(), 0, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&img));
}

#[test]
fn jobs_queue_on_a_processor_that_runs_one_at_a_time() {
    let Some(sshd) = Sshd::start() else { return };
    let env = Env::new();
    let store = env.store("s", "pw");
    let img = env.image("b.img", 4, 6);
    let lock = env.p("processor.lock");
    std::fs::write(&lock, "job job-first (backup, pid 1)").unwrap();
    // Another job holds the processor: a process of ours holds the lock
    // (flock(1) on a descriptor, then the shell becomes `sleep`, keeping
    // it) until the test lets it go.
    let mut holder = Command::new("bash")
        .arg("-c")
        .arg(format!("exec 9>>'{}' && flock 9 && exec sleep 60", lock.display()))
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while Command::new("flock").args(["-n"]).arg(&lock).arg("true").status().unwrap().success() {
        assert!(t0.elapsed() < Duration::from_secs(10), "flock(1) did not take the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    let holder_pid = holder.id();
    let events: Events = Default::default();
    let ev = events.clone();
    let opts = RemoteOptions::default().command(format!("{ALIKE} processor --queue-lock {}", lock.display())).on_event(
        move |e| {
            ev.lock().unwrap().push((Instant::now(), e.clone()));
            if matches!(e, ProcessorEvent::Queued(_)) {
                // The holder is done: the queued job goes on by itself.
                let _ = Command::new("kill").arg(holder_pid.to_string()).status();
            }
        },
    );
    let job = ProcessorJob::backup(BackupJob::new(env.spec("s"), "b", vec![img.clone()])).passphrase("pw");
    run_remote(&host(&sshd), &policy(&sshd), &key(&sshd), &job, &opts).unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    let ev = events.lock().unwrap();
    let kinds: Vec<&str> = ev.iter().map(|(_, e)| e.type_name()).collect();
    assert_eq!(kinds[..2], ["started", "queued"], "{ev:?}");
    let ProcessorEvent::Queued(q) = &ev[1].1 else { unreachable!() };
    assert_eq!(
        q.reason,
        format!(
            "this processor runs one job at a time, and job job-first (backup, pid 1) holds it ({})",
            lock.display()
        )
    );
    assert!(kinds.contains(&"progress"), "{kinds:?}");
    // The job ran once the lock was free, and left its own name in the file.
    assert_eq!(store.versions(Some("b")).unwrap().len(), 1);
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(text.starts_with(&format!("job {} (backup, pid ", job.id)), "{text}");
}

#[test]
fn refusals_come_back_with_their_kind() {
    let Some(sshd) = Sshd::start() else { return };
    let env = Env::new();
    env.store("s", "pw");
    let img = env.image("d.img", 1, 7);
    let run = |job: &ProcessorJob| {
        run_remote(&host(&sshd), &policy(&sshd), &key(&sshd), job, &recording(&Default::default()))
    };
    let job = ProcessorJob::backup(BackupJob::new(env.spec("s"), "web", vec![img.clone()]));
    let e = run(&job.clone().passphrase("wrong")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongPassphrase, "{e}");
    let e = run(&job).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PassphraseRequired, "{e}");
    let missing = ProcessorJob::backup(BackupJob::new(env.spec("s"), "web", vec![env.p("nope.img")])).passphrase("pw");
    let e = run(&missing).unwrap_err();
    assert!(e.to_string().contains("nope.img"), "{e}");
    // A host key that is not the pinned one, through the facade's error.
    let kh = env.p("kh");
    std::fs::write(
        &kh,
        format!(
            "[{}]:{} {}\n",
            sshd.address, sshd.port, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM9rU3vRXdzrP3uXCCGabOI9JqQjH0IcTCMnOTxv3ZD+"
        ),
    )
    .unwrap();
    let e = run_remote(&host(&sshd), &HostKeyPolicy::known_hosts(&kh), &key(&sshd), &job, &RemoteOptions::default())
        .unwrap_err();
    assert_eq!(e.code(), Some("HOST_KEY_CHANGED"), "{e}");
}

/// `alike` with the test's store environment.
fn alike(env: &Env) -> Command {
    let mut c = Command::new(ALIKE);
    c.env("ALIKE_PASSWORD", "pw").env("ALIKE_CACHE_DIR", env.p("cli-cache")).env_remove("ALIKE_STORE");
    c
}

#[test]
fn the_cli_runs_backup_restore_and_verify_via_a_processor() {
    let Some(sshd) = Sshd::start() else { return };
    let env = Env::new();
    env.store("s", "pw");
    let img = env.image("d.img", 8, 8);
    let store = env.p("s");
    let via = |c: &mut Command| {
        c.arg("--store").arg(&store).args(["--via", &sshd.destination(), "--ssh-key"]).arg(&sshd.client_key);
        c.arg("--known-hosts").arg(&sshd.known_hosts).args(["--processor-command", &worker()]);
    };
    let mut c = alike(&env);
    c.arg("backup");
    via(&mut c);
    let o = c.args(["--vm", "web", "--json"]).arg(&img).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = j["id"].as_str().unwrap().to_string();
    assert_eq!(j["disks"][0]["size"], 8 << 20);

    let out = env.p("r.img");
    let mut c = alike(&env);
    c.args(["restore", &id[..12]]);
    via(&mut c);
    let o = c.arg("--output").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha256_file(&out), sha256_file(&img));

    let mut c = alike(&env);
    c.args(["verify", "--full", "--json"]);
    via(&mut c);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["depth"], "full");

    // A wrong host key: one line, exit 1, the host and both fingerprints named.
    let kh = env.p("wrong-kh");
    alike_testing::sshd::keygen(&env.p("other"), "");
    let other = std::fs::read_to_string(env.p("other.pub")).unwrap();
    std::fs::write(&kh, format!("[{}]:{} {other}", sshd.address, sshd.port)).unwrap();
    let o = alike(&env)
        .arg("--store")
        .arg(&store)
        .args(["verify", "--via", &sshd.destination(), "--ssh-key"])
        .arg(&sshd.client_key)
        .arg("--known-hosts")
        .arg(&kh)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("HOST KEY CHANGED") && err.contains(&sshd.host_fingerprint), "{err}");
    // No pinning at all is refused before connecting.
    let o = alike(&env)
        .arg("--store")
        .arg(&store)
        .args(["verify", "--via", &sshd.destination(), "--ssh-key"])
        .arg(&sshd.client_key)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("--known-hosts FILE or --host-key"), "{o:?}");
}

#[test]
fn a_job_runs_on_a_processor_in_its_own_network_namespace() {
    let Some(mut net) = alike_testing::netns::ProcessorNet::new() else { return };
    net.add_processor();
    let p = &net.processors()[0];
    let env = Env::new();
    let store = env.store("s", "pw");
    let img = env.image("d.img", 8, 9);
    let events: Events = Default::default();
    let h = Host::new(&p.sshd.user, &p.address, 22).unwrap();
    // The fingerprint policy, this time.
    let pol = HostKeyPolicy::fingerprints([&p.sshd.host_fingerprint]).unwrap();
    let job = ProcessorJob::backup(BackupJob::new(env.spec("s"), "web", vec![img.clone()])).passphrase("pw");
    let r = run_remote(&h, &pol, &key(&p.sshd), &job, &recording(&events)).unwrap();
    assert_eq!(r.host, format!("{}@{}:22", p.sshd.user, p.address));
    let out = env.p("r.img");
    store.restore_to_file(&store.version("latest", None).unwrap(), 0, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&img));
    // The worker ran inside the namespace: its sshd saw the orchestrator
    // come from the bridge's address.
    assert!(p.sshd.log_text().contains(&format!("from {}", net.host_address())), "{}", p.sshd.log_text());
}

#[test]
fn a_replication_runs_between_two_processors_in_their_own_namespaces() {
    use alike::{JobReplica, JobRole, JobSecret, JobSource, Replica, ReplicaExportOptions, ReplicationJob};
    let Some(mut net) = alike_testing::netns::ProcessorNet::new() else { return };
    net.add_processor();
    net.add_processor();
    let (a, b) = (&net.processors()[0], &net.processors()[1]);
    let env = Env::new();
    let img = env.image("web-disk0.img", 8, 10);
    let replica = env.p("replica");
    let secret = JobSecret::generate().unwrap();
    let secret_hex = serde_json::to_value(&secret).unwrap().as_str().unwrap().to_string();
    // Push: the receiver (processor b) listens on its own address, port 2812;
    // the sender (processor a) dials it across the bridge.
    let mut recv = ReplicationJob::new("dr-web", "web", JobRole::Receiver, secret.clone());
    recv.listen = Some(b.address.clone());
    recv.replica = Some(JobReplica::Dir { path: replica.clone() });
    let mut send = ReplicationJob::new("dr-web", "web", JobRole::Sender, secret);
    send.peer = Some(b.address.clone());
    send.disks.push(JobSource::Image { path: img.clone() });
    let (recv2, send2) = (recv.clone(), send.clone());

    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = {
        let h = Host::new(&b.sshd.user, &b.address, 22).unwrap();
        let (pol, k) = (HostKeyPolicy::fingerprints([&b.sshd.host_fingerprint]).unwrap(), key(&b.sshd));
        let job = ProcessorJob::replication_end(recv);
        let opts = RemoteOptions::default().command(worker()).on_event(move |e| {
            if let ProcessorEvent::Listening(l) = e {
                let _ = tx.send(l.address.clone());
            }
        });
        std::thread::spawn(move || run_remote(&h, &pol, &k, &job, &opts))
    };
    let listening = rx.recv_timeout(Duration::from_secs(30)).expect("the receiver listens");
    assert_eq!(listening, format!("{}:2812", b.address));
    // Both ends run now: the job secret is in no command line or environment.
    let (hits, _) = scan_proc(secret_hex.as_bytes(), None);
    assert!(hits.is_empty(), "{hits:?}");

    let events: Events = Default::default();
    let job = ProcessorJob::replication_end(send);
    assert_eq!(job.kind_name(), "replicate-sender");
    let sent = run_remote(
        &Host::new(&a.sshd.user, &a.address, 22).unwrap(),
        &policy(&a.sshd),
        &key(&a.sshd),
        &job,
        &recording(&events),
    )
    .unwrap();
    let got = receiver.join().unwrap().unwrap();
    assert_eq!(sent.result["role"], "sender");
    assert_eq!(got.result["role"], "receiver");
    assert_eq!(sent.result["point"], got.result["point"]);
    assert!(sent.result["read_bytes"].as_u64().unwrap() > 0 && sent.result["sent_bytes"].as_u64().unwrap() > 0);
    let ev = events.lock().unwrap();
    assert!(
        ev.iter()
            .any(|(_, e)| matches!(e, ProcessorEvent::Progress(p) if p.phase == "replicate" && p.disks.len() == 1)),
        "{ev:?}"
    );
    drop(ev);
    // The replica's point is the source, bit for bit.
    let r = Replica::open(&replica).unwrap();
    let point = r.points().unwrap().last().unwrap().point;
    assert_eq!(serde_json::json!(point), got.result["point"]);
    let out = env.p("exported.img");
    r.export(point, 0, &out, &ReplicaExportOptions::default()).unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&img));

    // A second run, the sender's end started by the CLI from a job file
    // (`alike replicate --job FILE --via …`), after the source changed.
    let mut data = std::fs::read(&img).unwrap();
    data[(1 << 20)..(1 << 20) + 4096].fill(0xa5);
    std::fs::write(&img, &data).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = {
        let h = Host::new(&b.sshd.user, &b.address, 22).unwrap();
        let (pol, k) = (policy(&b.sshd), key(&b.sshd));
        let job = ProcessorJob::replication_end(recv2);
        let opts = RemoteOptions::default().command(worker()).on_event(move |e| {
            if let ProcessorEvent::Listening(_) = e {
                let _ = tx.send(());
            }
        });
        std::thread::spawn(move || run_remote(&h, &pol, &k, &job, &opts))
    };
    rx.recv_timeout(Duration::from_secs(30)).expect("the receiver listens");
    let job_file = env.p("send.json");
    std::fs::write(&job_file, send2.to_json().unwrap()).unwrap();
    let o = Command::new(ALIKE)
        .args(["replicate", "--json", "--job"])
        .arg(&job_file)
        .args(["--via", &a.sshd.destination(), "--ssh-key"])
        .arg(&a.sshd.client_key)
        .args(["--host-key", &a.sshd.host_fingerprint, "--processor-command", &worker()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sent: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got = receiver.join().unwrap().unwrap();
    assert_eq!(sent["point"], got.result["point"]);
    let point2 = sent["point"].as_u64().unwrap();
    assert!(point2 > point);
    r.export(point2, 0, &out, ReplicaExportOptions::default().force(true)).unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&img));
}

/// Every worker pid seen.
type Pids = Arc<Mutex<Vec<u32>>>;

/// The end of a replication running `job` on processor `p` (its host key pinned).
fn end(p: &alike_testing::netns::LocalProcessor, job: alike::ReplicationJob) -> alike::remote::RemoteEnd {
    alike::remote::RemoteEnd::new(
        Host::new(&p.sshd.user, &p.address, 22).unwrap(),
        HostKeyPolicy::fingerprints([&p.sshd.host_fingerprint]).unwrap(),
        key(&p.sshd),
        job,
    )
}

/// Options that note every worker's pid and, at each event, scan /proc for `needle`.
fn watching(pids: &Pids, needle: &[u8], hits: &Arc<Mutex<(usize, Vec<String>)>>) -> RemoteOptions {
    let (pids, hits, needle) = (pids.clone(), hits.clone(), needle.to_vec());
    RemoteOptions::default().command(worker()).on_event(move |e| {
        if let ProcessorEvent::Started(s) = e {
            pids.lock().unwrap().push(s.pid);
        }
        let (h, _) = scan_proc(&needle, None);
        let mut g = hits.lock().unwrap();
        g.0 += 1;
        g.1.extend(h);
    })
}

#[test]
fn one_call_runs_both_ends_on_two_processors_push_and_pull_through_a_slow_link() {
    use alike::remote::{replicate_remote, replication_pair};
    use alike::{Flow, JobReplica, JobSource, Replica, ReplicaExportOptions};
    use alike_testing::proxy::{DelayProxy, LinkShape};
    let Some(mut net) = alike_testing::netns::ProcessorNet::new() else { return };
    net.add_processor();
    net.add_processor();
    let (a, b) = (&net.processors()[0], &net.processors()[1]);
    let env = Env::new();
    let img = env.image("web-disk0.img", 8, 21);
    let replica = env.p("replica");
    let shape = LinkShape { delay: Duration::from_millis(25), rate: None };
    let pids: Pids = Default::default();
    let hits = Arc::new(Mutex::new((0usize, Vec::new())));
    let mut points = Vec::new();
    for (round, flow) in [Flow::Push, Flow::Pull].into_iter().enumerate() {
        if round == 1 {
            let mut data = std::fs::read(&img).unwrap();
            data[(3 << 20)..(3 << 20) + 8192].fill(0x5a);
            std::fs::write(&img, &data).unwrap();
        }
        // The listening end: the receiver (b) in push, the sender (a) in pull;
        // the dialling end reaches it through the delaying proxy.
        let listener = if flow == Flow::Push { b } else { a };
        let (mut send, mut recv) = replication_pair("dr-web", "web", flow, &listener.address, 2812).unwrap();
        let target: std::net::SocketAddr = format!("{}:2812", listener.address).parse().unwrap();
        let proxy = DelayProxy::start(&format!("{}:0", net.host_address()), target, shape).unwrap();
        let via_proxy = Some(proxy.addr().to_string());
        if flow == Flow::Push {
            send.peer = via_proxy
        } else {
            recv.peer = via_proxy
        }
        send.disks.push(JobSource::Image { path: img.clone() });
        recv.replica = Some(JobReplica::Dir { path: replica.clone() });
        let needle = send.secret.to_hex().into_bytes();
        let r = replicate_remote(&end(a, send), &end(b, recv), &watching(&pids, &needle, &hits)).unwrap();
        assert_eq!(r.flow, flow.name());
        assert!(r.read_bytes > 0 && r.sent_bytes > 0, "{r:?}");
        assert_eq!(r.sender.result["role"], "sender");
        assert_eq!(r.receiver.result["role"], "receiver");
        assert!(r.sender.host.contains(&a.address) && r.receiver.host.contains(&b.address));
        let (up, down) = proxy.carried();
        assert!(up > 0 && down > 0, "the ends met through the proxy: {up} / {down} bytes");
        // The replica's point is the source, bit for bit.
        let rep = Replica::open(&replica).unwrap();
        assert_eq!(rep.points().unwrap().last().unwrap().point, r.point);
        let out = env.p("exported.img");
        rep.export(r.point, 0, &out, ReplicaExportOptions::default().force(true)).unwrap();
        assert_eq!(sha256_file(&out), sha256_file(&img));
        points.push(r.point);
    }
    assert!(points[1] > points[0]);
    let h = hits.lock().unwrap();
    assert!(h.0 >= 4, "scanned {} times", h.0);
    assert!(h.1.is_empty(), "the job secret is visible in /proc: {:?}", h.1);
    assert_eq!(pids.lock().unwrap().len(), 4, "two workers a round");
    drop(h);

    // The same from the CLI: `--via A,B` (each host key pinned on its own),
    // then `--via B` alone (both ends on one processor), pull.
    let client_pub = std::fs::read_to_string(a.sshd.dir().join("client_ed25519.pub")).unwrap();
    let mut ak = std::fs::OpenOptions::new().append(true).open(b.sshd.dir().join("authorized_keys")).unwrap();
    std::io::Write::write_all(&mut ak, client_pub.as_bytes()).unwrap();
    let (ua, ub) = (&a.sshd.user, &b.sshd.user);
    let vias = [(format!("{ua}@{},{ub}@{}", a.address, b.address), "push"), (format!("{ub}@{}", b.address), "pull")];
    for (round, (via, flow)) in vias.into_iter().enumerate() {
        let mut data = std::fs::read(&img).unwrap();
        data[(5 << 20) + round * 4096..(5 << 20) + round * 4096 + 4096].fill(0x11 + round as u8);
        std::fs::write(&img, &data).unwrap();
        let mut cmd = Command::new(ALIKE);
        cmd.args(["replicate", "--json", "--vm", "web", "--to-dir"]).arg(&replica).arg(&img);
        cmd.args(["--via", &via, "--flow", flow, "--ssh-key"]).arg(&a.sshd.client_key);
        cmd.args(["--host-key", &a.sshd.host_fingerprint, "--host-key", &b.sshd.host_fingerprint]);
        cmd.args(["--processor-command", &worker()]);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{via} {flow}: {}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["flow"], flow);
        assert!(r["read_bytes"].as_u64().unwrap() > 0 && r["sent_bytes"].as_u64().unwrap() > 0, "{r}");
        let point = r["point"].as_u64().unwrap();
        assert!(point > *points.last().unwrap());
        points.push(point);
        let out = env.p("exported.img");
        Replica::open(&replica).unwrap().export(point, 0, &out, ReplicaExportOptions::default().force(true)).unwrap();
        assert_eq!(sha256_file(&out), sha256_file(&img), "{via} {flow}");
    }
}

#[test]
fn a_failing_end_stops_the_other_and_a_wrong_host_key_is_refused() {
    use alike::remote::{replicate_remote, replication_pair};
    use alike::{Flow, JobReplica, JobSource};
    let Some(mut net) = alike_testing::netns::ProcessorNet::new() else { return };
    net.add_processor();
    net.add_processor();
    let (a, b) = (&net.processors()[0], &net.processors()[1]);
    let env = Env::new();
    let img = env.image("web-disk0.img", 8, 22);
    let not_a_dir = env.p("file");
    std::fs::write(&not_a_dir, b"x").unwrap();

    // Pull: the sender (a) listens first; the receiver (b) then fails on
    // its replica (a file, not a folder): the sender is stopped, and the
    // error names the receiver.
    let (mut send, mut recv) = replication_pair("dr-web", "web", Flow::Pull, &a.address, 2812).unwrap();
    send.disks.push(JobSource::Image { path: img.clone() });
    recv.replica = Some(JobReplica::Dir { path: not_a_dir.join("replica") });
    let pids: Pids = Default::default();
    let hits = Arc::new(Mutex::new((0usize, Vec::new())));
    let t0 = Instant::now();
    let needle = send.secret.to_hex().into_bytes();
    let e =
        replicate_remote(&end(a, send.clone()), &end(b, recv.clone()), &watching(&pids, &needle, &hits)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("receiver") && msg.contains(&b.address), "{msg}");
    assert!(matches!(e, alike::Error::RemoteEnd { end: "receiver", .. }), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(40), "{:?}", t0.elapsed());
    let seen = pids.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "both ends started: {seen:?}");
    for pid in seen {
        wait_gone(pid, Duration::from_secs(10));
    }

    // A receiver whose host key is not the pinned one: refused before its
    // job is sent, the sender stopped, and the error names the receiver.
    let mut wrong = end(b, recv);
    wrong.policy = HostKeyPolicy::fingerprints([&a.sshd.host_fingerprint]).unwrap();
    wrong.job.replica = Some(JobReplica::Dir { path: env.p("replica") });
    let e = replicate_remote(&end(a, send), &wrong, &RemoteOptions::default().command(worker())).unwrap_err();
    assert!(e.to_string().contains("receiver"), "{e}");
    assert!(matches!(e.code(), Some("HOST_KEY_CHANGED" | "HOST_KEY_UNKNOWN")), "{e}");
    assert!(!env.p("replica").exists(), "nothing was replicated");

    // Cancelled from the start: both ends stop, the call says so.
    let (mut send, mut recv) = replication_pair("dr-web", "web", Flow::Push, &b.address, 2812).unwrap();
    send.disks.push(JobSource::Image { path: img.clone() });
    recv.replica = Some(JobReplica::Dir { path: env.p("replica") });
    let token = alike::CancelToken::new();
    let t = token.clone();
    let opts = RemoteOptions::default().command(worker()).cancel_token(token.clone()).on_event(move |e| {
        if let ProcessorEvent::Started(_) = e {
            t.cancel();
        }
    });
    let e = replicate_remote(&end(a, send), &end(b, recv), &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
}

/// A simulated pool (in this process) that the processors' namespaces reach
/// at the host's bridge address, with its own password.
fn pool_sim(env: &Env, name: &str, net: &alike_testing::netns::ProcessorNet, pw: &str) -> alike_xen_sim::Simulator {
    let cfg = alike_xen_sim::SimConfig::new(env.p(name))
        .listen(format!("{}:0", net.host_address()).parse().unwrap())
        .password(pw)
        .demo(true);
    alike_xen_sim::Simulator::start(cfg).unwrap()
}

/// Every byte of a VDI (by ref) of a simulated pool.
fn vdi_bytes(sim: &alike_xen_sim::Simulator, vdi: &str) -> Vec<u8> {
    let size = sim.field(alike_xen_sim::Class::Vdi, vdi, "virtual_size").unwrap().as_int().unwrap();
    sim.read_vdi(vdi, 0, size as usize).unwrap()
}

#[test]
fn a_xen_vm_replicates_between_two_pools_through_two_processors() {
    use alike::remote::{replicate_remote, replication_pair};
    use alike::{Flow, JobReplica, JobSource, JobXenPool, JobXenReplica, ReplicaExportOptions, XenReplicaVm};
    use alike_testing::proxy::{DelayProxy, LinkShape};
    const NET: &str = "Pool-wide network associated with eth0";
    let Some(mut net) = alike_testing::netns::ProcessorNet::new() else { return };
    net.add_processor();
    net.add_processor();
    let (a, b) = (&net.processors()[0], &net.processors()[1]);
    let env = Env::new();
    // Each pool's password is unique: it must show up in no command line or environment.
    let mut tag = [0u8; 12];
    Rng::new(std::process::id() as u64 ^ 0x7a91).fill(&mut tag);
    let needle = hex_of(&tag);
    let (pw_a, pw_b) = (format!("xapi-a-{needle}"), format!("xapi-b-{needle}"));
    let (sa, sb) = (pool_sim(&env, "pool-a", &net, &pw_a), pool_sim(&env, "pool-b", &net, &pw_b));
    let pool = |sim: &alike_xen_sim::Simulator, pw: &str| {
        let mut p = JobXenPool::new(sim.url());
        p.password = Some(alike::JobPassword(pw.to_owned()));
        p.insecure = true; // plain http to the host's bridge address
        p
    };
    let state = env.p("replica-state");
    let insecure = alike::XenConnectOptions::default().insecure(true);
    let root = sa.lookup(alike_xen_sim::Class::Vdi, "web-01 root").unwrap();
    let data = sa.lookup(alike_xen_sim::Class::Vdi, "web-01 data").unwrap();
    let shape = LinkShape { delay: Duration::from_millis(10), rate: None };
    let pids: Pids = Default::default();
    let hits = Arc::new(Mutex::new((0usize, Vec::new())));
    let mut sent = Vec::new();
    for (round, flow) in [Flow::Push, Flow::Pull].into_iter().enumerate() {
        if round == 1 {
            // The guest writes 8 KiB of each disk between the runs.
            sa.guest_write(&root, 7 << 20, &[0x5a; 8192]).unwrap();
            sa.guest_write(&data, 3 << 20, &[0xa5; 8192]).unwrap();
        }
        let listener = if flow == Flow::Push { b } else { a };
        let (mut send, mut recv) = replication_pair("dr-web-01", "web-01", flow, &listener.address, 2812).unwrap();
        let target: std::net::SocketAddr = format!("{}:2812", listener.address).parse().unwrap();
        let proxy = DelayProxy::start(&format!("{}:0", net.host_address()), target, shape).unwrap();
        let via_proxy = Some(proxy.addr().to_string());
        if flow == Flow::Push {
            send.peer = via_proxy
        } else {
            recv.peer = via_proxy
        }
        send.disks.push(JobSource::Xen { pool: pool(&sa, &pw_a) });
        send.state_dir = Some(env.p("sender-state"));
        let mut x = JobXenReplica::new(pool(&sb, &pw_b), "Local storage", &state);
        x.network = Some(NET.into());
        recv.replica = Some(JobReplica::Xen(Box::new(x)));
        let r = replicate_remote(&end(a, send), &end(b, recv), &watching(&pids, needle.as_bytes(), &hits)).unwrap();
        assert_eq!((r.point, r.flow.as_str()), (round as u64 + 1, flow.name()), "{r:?}");
        let (up, down) = proxy.carried();
        assert!(up > 0 && down > 0, "the ends met through the proxy: {up} / {down} bytes");
        sent.push((r.sent_bytes, r.read_bytes));
        // The new point is the source VM's disks (as its snapshot was), bit for bit.
        let dr = Arc::new(alike::xen_pool_with(&sb.url(), "root", &pw_b, &insecure).unwrap());
        let rep = XenReplicaVm::open(dr, "web-01 (replica)", &state).unwrap();
        assert_eq!(rep.points().unwrap().last().unwrap().point, r.point);
        for (disk, vdi) in [&root, &data].into_iter().enumerate() {
            let out = env.p("exported.img");
            rep.export(r.point, disk, &out, ReplicaExportOptions::default().force(true)).unwrap();
            assert!(std::fs::read(&out).unwrap() == vdi_bytes(&sa, vdi), "round {round}: disk {disk} differs");
        }
    }
    // The second run sent only the changed chunks (2 × 8 KiB of writes, in
    // chunks of at most 64 KiB, compressed), and read only what CBT marked.
    let ((full, full_read), (inc, inc_read)) = (sent[0], sent[1]);
    assert!(inc < 256 << 10 && full > 8 * inc, "first run {full} bytes sent, second {inc}");
    assert!(inc_read <= 1 << 20 && full_read >= 96 << 20, "read {full_read} then {inc_read} bytes");
    let h = hits.lock().unwrap();
    assert!(h.0 >= 4, "scanned {} times", h.0);
    assert!(h.1.is_empty(), "a XAPI password is visible in /proc: {:?}", h.1);
    assert_eq!(pids.lock().unwrap().len(), 6, "three workers a round: the VM's configuration, then the two ends");
    drop(h);
    eprintln!("xen over two processors: first run sent {full} (read {full_read}), second sent {inc} (read {inc_read})");

    // One processor that sees both pools plays both roles: one worker, no link.
    sa.guest_write(&data, 5 << 20, &[0x77; 4096]).unwrap();
    let (mut send, mut recv) = replication_pair("dr-web-01", "web-01", Flow::Push, &a.address, 2812).unwrap();
    send.disks.push(JobSource::Xen { pool: pool(&sa, &pw_a) });
    let mut x = JobXenReplica::new(pool(&sb, &pw_b), "Local storage", &state);
    x.network = Some(NET.into());
    recv.replica = Some(JobReplica::Xen(Box::new(x)));
    let r = replicate_remote(&end(a, send), &end(a, recv), &watching(&pids, needle.as_bytes(), &hits)).unwrap();
    assert_eq!(r.point, 3, "{r:?}");
    assert_eq!(pids.lock().unwrap().len(), 7, "one worker for both ends");
    // (Its change tracking is the in-process run's, kept with the replica's
    // state: this first run of it reads every disk, and sends only what changed.)
    assert!(r.sent_bytes > 0 && r.sent_bytes < 128 << 10 && r.read_bytes == 96 << 20, "{r:?}");
    assert!(r.sender.result["needed_bytes"].as_u64().unwrap() <= 64 << 10, "{r:?}");
    assert_eq!(r.sender.result["replica"]["needed_bytes"], r.receiver.result["replica"]["needed_bytes"]);
    let dr = Arc::new(alike::xen_pool_with(&sb.url(), "root", &pw_b, &insecure).unwrap());
    let rep = XenReplicaVm::open(dr, "web-01 (replica)", &state).unwrap();
    let out = env.p("exported.img");
    rep.export(3, 1, &out, ReplicaExportOptions::default().force(true)).unwrap();
    assert!(std::fs::read(&out).unwrap() == vdi_bytes(&sa, &data), "the one-process point differs");
    assert!(hits.lock().unwrap().1.is_empty(), "a XAPI password is visible in /proc");

    // The same from the CLI (`--via A,B`, push), after the guest wrote again;
    // the passwords reach it in its environment only (the test's choice).
    sa.guest_write(&root, 9 << 20, &[0x33; 4096]).unwrap();
    let client_pub = std::fs::read_to_string(a.sshd.dir().join("client_ed25519.pub")).unwrap();
    let mut ak = std::fs::OpenOptions::new().append(true).open(b.sshd.dir().join("authorized_keys")).unwrap();
    std::io::Write::write_all(&mut ak, client_pub.as_bytes()).unwrap();
    let via = format!("{}@{},{}@{}", a.sshd.user, a.address, b.sshd.user, b.address);
    let mut cmd = Command::new(ALIKE);
    cmd.args(["replicate", "--json", "--vm", "web-01", "--source-xen", &sa.url(), "--target-xen", &sb.url()]);
    cmd.args(["--sr", "Local storage", "--network", NET, "--xen-insecure", "--replica-state"]).arg(&state);
    cmd.args(["--via", &via, "--ssh-key"]).arg(&a.sshd.client_key);
    cmd.args(["--host-key", &a.sshd.host_fingerprint, "--host-key", &b.sshd.host_fingerprint]);
    cmd.args(["--processor-command", &worker(), "--state-dir"]).arg(env.p("sender-state"));
    cmd.env("ALIKE_SOURCE_XEN_PASSWORD", &pw_a).env("ALIKE_TARGET_XEN_PASSWORD", &pw_b);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((r["point"].as_u64(), r["flow"].as_str()), (Some(4), Some("push")), "{r}");
    assert!(r["sent_bytes"].as_u64().unwrap() < 128 << 10, "{r}");
    let dr = Arc::new(alike::xen_pool_with(&sb.url(), "root", &pw_b, &insecure).unwrap());
    let rep = XenReplicaVm::open(dr, "web-01 (replica)", &state).unwrap();
    let out = env.p("exported.img");
    rep.export(4, 0, &out, ReplicaExportOptions::default().force(true)).unwrap();
    assert!(std::fs::read(&out).unwrap() == vdi_bytes(&sa, &root), "the CLI's point differs");
}
