//! Jobs on processors made for them, end to end: local pools from a
//! configuration file (network namespaces, each with a real OpenSSH server
//! and a host key made for it), the `alike` binary built by this package
//! as the worker, the facade's `Orchestrator` and the CLI's `alike job` as
//! the orchestrator. Needs root, iproute2 and openssh-server; skips
//! (loudly) without them.
#![allow(missing_docs)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alike::processors::{
    AttachDisk, JobEvent, Orchestrator, Processor, ProcessorBackup, ProcessorRequest, Provisioner, Reachable,
    RunJobOptions, SweepReport,
};
use alike::{BackupOptions, Config, Store, VerifyOptions};
use alike_testing::Rng;

const ALIKE: &str = env!("CARGO_BIN_EXE_alike");

fn usable() -> bool {
    if let Some(why) = alike_testing::sshd::unavailable() {
        alike_testing::skip(&why);
        return false;
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let ip = Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success());
    if !(root && ip) {
        alike_testing::skip("local processors need root and iproute2 (`ip netns`)");
        return false;
    }
    true
}

/// A `10.A.B.0/24` no interface here uses (A in 210..250, apart from the
/// nets `alike_testing::netns` picks), chosen from the pid and `salt`.
fn free_net(salt: u32) -> (u8, u8) {
    let used = String::from_utf8_lossy(&Command::new("ip").args(["-o", "-4", "addr", "show"]).output().unwrap().stdout)
        .into_owned();
    let start = (std::process::id() * 7 + salt * 131) as usize;
    (0..40 * 256)
        .map(|i| {
            let n = (start + i) % (40 * 256);
            (210 + (n / 256) as u8, (n % 256) as u8)
        })
        .find(|(a, b)| !used.contains(&format!(" 10.{a}.{b}.")))
        .expect("a free 10.x.y.0/24")
}

/// A test's world: a directory with a store, images, an SSH key, and a
/// configuration file of local pools; on drop, the pools' bridges go.
struct World {
    dir: tempfile::TempDir,
    nets: Vec<(u8, u8)>,
    orchestrator: String,
    password: String,
}

impl Drop for World {
    fn drop(&mut self) {
        // What a run left (a failed assertion) and the pools' bridges.
        if let Ok(c) = Config::from_file(self.config()) {
            if let Ok(o) = Orchestrator::from_config(&c) {
                let _ = o.sweep();
            }
        }
        let shown = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().unwrap().stdout;
        for line in String::from_utf8_lossy(&shown).lines() {
            let mut f = line.split_whitespace();
            let (Some(_), Some(dev), Some(_), Some(addr)) = (f.next(), f.next(), f.next(), f.next()) else { continue };
            if dev.starts_with("alkl") && self.nets.iter().any(|(a, b)| addr.starts_with(&format!("10.{a}.{b}."))) {
                let _ = Command::new("ip").args(["link", "del", dev]).status();
            }
        }
    }
}

impl World {
    /// Pools named `<name>` with `n` addresses each.
    fn new(tag: &str, pools: &[(&str, usize)]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut tagb = [0u8; 8];
        Rng::new(u64::from(std::process::id()) ^ 0x9e37).fill(&mut tagb);
        let password = format!("pw-{}", tagb.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let w = World {
            nets: (0..pools.len()).map(|_| free_net(NETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed))).collect(),
            orchestrator: format!("t{}{tag}", std::process::id()),
            password,
            dir,
        };
        std::fs::write(w.p("store.pass"), format!("{}\n", w.password)).unwrap();
        Store::builder()
            .passphrase(&w.password)
            .insecure_fast_kdf()
            .cache_dir(w.p("cache"))
            .create(w.p("store"))
            .unwrap();
        alike_testing::sshd::keygen(&w.p("id_ed25519"), "");
        let mut text = format!(
            "orchestrator = \"{}\"\nstate_dir = \"state\"\n\n[[store]]\nname = \"main\"\npath = \"store\"\n\
             passphrase = {{ file = \"store.pass\" }}\ncache_dir = \"processor-cache\"\n",
            w.orchestrator
        );
        for (i, (name, n)) in pools.iter().enumerate() {
            let (a, b) = w.nets[i];
            text += &format!(
                "\n[[pool]]\nname = \"{name}{pid}\"\nkind = \"local\"\naddresses = [\"10.{a}.{b}.10-10.{a}.{b}.{last}\"]\n\
                 ssh_key = \"id_ed25519\"\nssh_timeout_seconds = 20\nprocessor_command = \"{ALIKE} processor\"\n",
                pid = std::process::id(),
                last = 10 + n - 1,
            );
        }
        std::fs::write(w.config(), text).unwrap();
        w
    }
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
    fn config(&self) -> PathBuf {
        self.p("alike.toml")
    }
    fn pool(&self, name: &str) -> String {
        format!("{name}{}", std::process::id())
    }
    /// Adds a backup job of `vms` (each with one image of `mib` MiB) in `pool`.
    fn job(&self, name: &str, pool: &str, vms: &[&str], mib: usize) {
        let mut disks = String::new();
        for (i, vm) in vms.iter().enumerate() {
            let img = self.image(&format!("{name}-{vm}.img"), mib, (name.len() * 31 + i) as u64);
            disks += &format!("{vm} = [\"{}\"], ", img.display());
        }
        let list: Vec<String> = vms.iter().map(|v| format!("\"{v}\"")).collect();
        let text = format!(
            "\n[[job]]\nname = \"{name}\"\nkind = \"backup\"\nvms = [{}]\nstore = \"main\"\npool = \"{}\"\ndisks = {{ {} }}\n",
            list.join(", "),
            self.pool(pool),
            disks.trim_end_matches(", ")
        );
        let mut all = std::fs::read_to_string(self.config()).unwrap();
        all += &text;
        std::fs::write(self.config(), all).unwrap();
    }
    fn image(&self, name: &str, mib: usize, seed: u64) -> PathBuf {
        let p = self.p(name);
        let mut data = vec![0u8; mib << 20];
        let mut rng = Rng::new(seed);
        for chunk in data.chunks_mut(1 << 20).step_by(2) {
            rng.fill(chunk);
        }
        std::fs::write(&p, &data).unwrap();
        p
    }
    fn load(&self) -> Config {
        Config::from_file(self.config()).unwrap()
    }
    fn store(&self) -> Store {
        Store::builder().passphrase(&self.password).cache_dir(self.p("cache")).open(self.p("store")).unwrap()
    }
    /// Namespaces of this world's orchestrator that exist now.
    fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap().stdout;
        String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("alk-{}-", self.orchestrator)))
            .map(str::to_string)
            .collect()
    }
}

static NETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

type Log = Arc<Mutex<Vec<(Instant, JobEvent)>>>;

fn recording(log: &Log) -> RunJobOptions {
    let l = log.clone();
    RunJobOptions::default().on_event(move |e| l.lock().unwrap().push((Instant::now(), e.clone())))
}

fn when(log: &Log, job: &str, what: &str) -> Option<Instant> {
    log.lock().unwrap().iter().find_map(|(t, e)| {
        let v = serde_json::to_value(e).unwrap();
        (v["job"] == job && v["type"] == what).then_some(*t)
    })
}

#[test]
fn two_pools_run_jobs_at_once_queue_per_pool_and_never_wait_on_each_other() {
    if !usable() {
        return;
    }
    let w = World::new("pools", &[("a", 2), ("b", 1)]);
    w.job("a1", "a", &["vm-1", "vm-2"], 24);
    w.job("a2", "a", &["vm-3", "vm-4"], 24);
    w.job("a3", "a", &["vm-5"], 4);
    w.job("b1", "b", &["vm-6"], 4);
    let c = w.load();
    let orch = Orchestrator::from_config(&c).unwrap();
    orch.sweep().unwrap();
    let log: Log = Arc::default();
    let t0 = Instant::now();
    let runs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = ["a1", "a2", "a3", "b1"]
            .iter()
            .map(|name| {
                let job = ProcessorBackup::from_config(&c, name, *name).unwrap();
                let (orch, opts) = (&orch, recording(&log));
                s.spawn(move || {
                    // a3 comes last in pool a: after a1 and a2 took both addresses.
                    if *name == "a3" || *name == "b1" {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    orch.run(&job, &opts)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    let total = t0.elapsed();
    // 4 VMs in 2 jobs → 2 processors at once.
    let (r1, r2) = (when(&log, "a1", "processor_ready").unwrap(), when(&log, "a2", "processor_ready").unwrap());
    let (d1, d2) = (when(&log, "a1", "torn_down").unwrap(), when(&log, "a2", "torn_down").unwrap());
    assert!(r1 < d2 && r2 < d1, "a1 and a2 did not run at once");
    assert_ne!(runs[0].address, runs[1].address, "two processors, two addresses");
    // The third job in pool a waited, visibly, until an address was free.
    let queued = log.lock().unwrap().iter().find_map(|(t, e)| match e {
        JobEvent::Queued { job, message, .. } if job == "a3" => Some((*t, message.clone())),
        _ => None,
    });
    let (tq, msg) = queued.expect("a3 was never queued");
    assert_eq!(msg, format!("queued: no free address in pool {}", w.pool("a")));
    let p3 = when(&log, "a3", "provisioning").unwrap();
    assert!(p3 >= d1.min(d2), "a3 got a processor before an address was free");
    assert!(tq < p3);
    // The job in pool b was not held up by pool a's queue.
    assert!(when(&log, "b1", "queued").is_none(), "b1 queued although pool b had a free address");
    assert!(when(&log, "b1", "processor_ready").unwrap() < p3, "b1 waited for pool a");
    // Every VM is a whole, restorable version; nothing is left running.
    let store = w.store();
    let mut vms: Vec<String> = store.versions(None).unwrap().iter().map(|v| v.vm.clone()).collect();
    vms.sort();
    assert_eq!(vms, ["vm-1", "vm-2", "vm-3", "vm-4", "vm-5", "vm-6"]);
    let v = store.verify(&VerifyOptions::default().full(true)).unwrap();
    assert!(v.ok(), "{v:?}");
    assert!(w.namespaces().is_empty(), "left: {:?}", w.namespaces());
    let ready: Vec<f64> = runs.iter().map(|r| (r.ready_after - r.queued).as_secs_f64()).collect();
    eprintln!(
        "measure: job start to processor ready (local pool, queueing excluded): {ready:.3?} s; all 4 jobs {total:.2?}"
    );
}

/// A provisioner that wraps another and spoils what `start` answers.
struct Spoiled<P> {
    inner: P,
    how: Spoil,
    torn_down: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone, Copy)]
enum Spoil {
    /// Pins a key the processor does not have.
    WrongKey,
    /// Says the processor is at an address where nothing answers.
    Silent,
}

struct SpoiledProcessor {
    inner: Box<dyn Processor>,
    how: Spoil,
    torn_down: Arc<Mutex<Vec<String>>>,
}

impl<P: Provisioner> Provisioner for Spoiled<P> {
    fn pool(&self) -> &str {
        self.inner.pool()
    }
    fn make(&self, req: &ProcessorRequest) -> alike_core::Result<Box<dyn Processor>> {
        Ok(Box::new(SpoiledProcessor {
            inner: self.inner.make(req)?,
            how: self.how,
            torn_down: self.torn_down.clone(),
        }))
    }
    fn sweep(&self, o: &str) -> alike_core::Result<SweepReport> {
        self.inner.sweep(o)
    }
}

impl Processor for SpoiledProcessor {
    fn job(&self) -> &str {
        self.inner.job()
    }
    fn address(&self) -> IpAddr {
        self.inner.address()
    }
    fn attach(&mut self, d: &[AttachDisk]) -> alike_core::Result<Vec<String>> {
        self.inner.attach(d)
    }
    fn detach_all(&mut self) -> alike_core::Result<()> {
        self.inner.detach_all()
    }
    fn start(&mut self) -> alike_core::Result<Reachable> {
        let mut r = self.inner.start()?;
        match self.how {
            Spoil::WrongKey => {
                r.host_key_fingerprint = Some("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into());
            }
            Spoil::Silent => {
                // The next address of the net: no namespace has it.
                if let IpAddr::V4(v) = r.address {
                    r.address = IpAddr::V4((u32::from(v) + 100).into());
                }
            }
        }
        Ok(r)
    }
    fn teardown(&mut self) -> alike_core::Result<()> {
        self.torn_down.lock().unwrap().push(self.inner.job().to_string());
        self.inner.teardown()
    }
}

#[test]
fn a_wrong_host_key_is_refused_and_a_silent_processor_times_out_and_both_are_torn_down() {
    if !usable() {
        return;
    }
    let w = World::new("keys", &[("k", 1)]);
    w.job("k1", "k", &["vm-k"], 1);
    let c = w.load();
    let p = c.pool(&w.pool("k")).unwrap();
    let authorized = std::fs::read_to_string(w.p("id_ed25519.pub")).unwrap();
    for (how, code) in [(Spoil::WrongKey, "HOST_KEY_CHANGED"), (Spoil::Silent, "PROCESSOR_SSH_TIMEOUT")] {
        let mut lo = alike::processors::LocalPoolOptions::new(&p.name, p.addresses[0], p.prefix, authorized.clone());
        lo.state_dir = w.p("state/processors");
        let torn_down = Arc::new(Mutex::new(Vec::new()));
        let prov =
            Spoiled { inner: alike::processors::LocalProvisioner::new(lo).unwrap(), how, torn_down: torn_down.clone() };
        let mut login = alike::processors::PoolLogin::new(alike::remote::ClientKey::new(w.p("id_ed25519")));
        login.ssh_timeout = Duration::from_secs(2);
        login.command = format!("{ALIKE} processor");
        let mut orch = Orchestrator::new(&w.orchestrator, w.p("state")).unwrap();
        orch.add_pool(Arc::new(prov), p.addresses.clone(), login);
        let job = ProcessorBackup::from_config(&c, "k1", "k1").unwrap();
        let t0 = Instant::now();
        let e = orch.run(&job, &RunJobOptions::default()).unwrap_err();
        let took = t0.elapsed();
        assert_eq!(e.code(), Some(code), "{e}");
        match how {
            Spoil::WrongKey => assert!(e.to_string().contains("HOST KEY CHANGED"), "{e}"),
            Spoil::Silent => {
                assert!(e.to_string().contains("did not answer SSH within 2s"), "{e}");
                assert!(took < Duration::from_secs(15), "took {took:?}");
            }
        }
        assert_eq!(*torn_down.lock().unwrap(), ["k1"], "not torn down once");
        assert!(w.namespaces().is_empty(), "left: {:?}", w.namespaces());
        assert!(w.store().versions(None).unwrap().is_empty());
    }
}

/// The network namespaces that exist now.
fn sim_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap().stdout;
    String::from_utf8_lossy(&out).lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// Every process whose command line or environment holds `needle`.
fn scan_proc(needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        for what in ["cmdline", "environ"] {
            let Ok(b) = std::fs::read(format!("/proc/{pid}/{what}")) else { continue };
            if b.windows(needle.len()).any(|w| w == needle) {
                hits.push(format!("{pid} {what}: {}", String::from_utf8_lossy(&b).replace('\0', " ")));
            }
        }
    }
    hits
}

fn alike_job(w: &World) -> Command {
    let mut c = Command::new(ALIKE);
    c.arg("job").arg("--config").arg(w.config()).env_remove("ALIKE_PASSWORD");
    c
}

#[test]
fn the_store_secret_is_in_no_command_line_or_environment_while_a_job_runs() {
    if !usable() {
        return;
    }
    // Pool `q`: pool names make bridge names, and the services test's is `s`.
    let w = World::new("secret", &[("q", 1)]);
    w.job("s1", "q", &["vm-s"], 32);
    let mut child =
        alike_job(&w).args(["run", "--json", "s1"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut scans, mut hits, mut worker_seen) = (0, Vec::new(), false);
    for line in std::io::BufRead::lines(out) {
        let line = line.unwrap();
        if line.contains("\"worker\"") {
            scans += 1;
            hits.extend(scan_proc(w.password.as_bytes()));
            worker_seen |= !scan_proc(b"processor\0").is_empty() || !scan_proc(b" processor").is_empty();
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(scans >= 1 && worker_seen, "scanned {scans} times, worker seen {worker_seen}: the scan proves nothing");
    assert!(hits.is_empty(), "the passphrase is visible in /proc: {hits:?}");
    assert_eq!(w.store().versions(Some("vm-s")).unwrap().len(), 1);
}

/// A store with writer keys (format 3): the orchestrator hands the
/// processor the write-only key, never the passphrase — the job line the
/// processor read from its channel (captured by a `tee` in front of the
/// worker) holds the write-only key file and not the passphrase — and the
/// version restores bit-exact with the full key. A store that says
/// `processor_key = "full"` hands the passphrase (the opt-out).
#[test]
fn a_processor_gets_the_write_only_key_of_a_store_with_writer_keys_unless_the_store_opts_out() {
    if !usable() {
        return;
    }
    let w = World::new("wkey", &[("k", 1)]);
    let full = Store::builder()
        .passphrase(&w.password)
        .insecure_fast_kdf()
        .writer_keys()
        .cache_dir(w.p("wcache"))
        .create(w.p("wstore"))
        .unwrap();
    let writer_hex: String = full.writer_key_file_bytes().unwrap().iter().map(|b| format!("{b:02x}")).collect();
    let capture = w.p("job-lines");
    let img = w.image("wk.img", 8, 77);
    let mut text = std::fs::read_to_string(w.config()).unwrap();
    text = text.replace(
        &format!("processor_command = \"{ALIKE} processor\""),
        &format!("processor_command = \"sh -c 'tee -a {} | {ALIKE} processor'\"", capture.display()),
    );
    for (store, opt) in [("w", ""), ("wfull", "processor_key = \"full\"\n")] {
        text += &format!(
            "\n[[store]]\nname = \"{store}\"\npath = \"wstore\"\npassphrase = {{ file = \"store.pass\" }}\n\
             cache_dir = \"processor-{store}\"\n{opt}\n[[job]]\nname = \"{store}-job\"\nkind = \"backup\"\n\
             vms = [\"vm-{store}\"]\nstore = \"{store}\"\npool = \"{}\"\ndisks = {{ vm-{store} = [\"{}\"] }}\n",
            w.pool("k"),
            img.display()
        );
    }
    std::fs::write(w.config(), text).unwrap();
    let c = w.load();
    let orch = Orchestrator::from_config(&c).unwrap();
    for (name, vm, write_only) in [("w-job", "vm-w", true), ("wfull-job", "vm-wfull", false)] {
        let _ = std::fs::remove_file(&capture);
        let job = ProcessorBackup::from_config(&c, name, name).unwrap();
        assert_eq!(job.is_write_only(), write_only, "{name}");
        orch.run(&job, &RunJobOptions::default()).unwrap();
        let lines = std::fs::read_to_string(&capture).unwrap();
        assert!(lines.contains("\"kind\""), "the capture holds no job line: {lines}");
        assert_eq!(lines.contains(&w.password), !write_only, "{name}: the passphrase in the job line");
        assert_eq!(lines.contains(&writer_hex), write_only, "{name}: the write-only key in the job line");
        // The full key restores the version bit-exact.
        let store = Store::builder().passphrase(&w.password).cache_dir(w.p("wcache")).open(w.p("wstore")).unwrap();
        let v = &store.versions(Some(vm)).unwrap()[0];
        let out = w.p(&format!("{vm}.restored"));
        store.restore_to_file(v, 0, &out, &alike::RestoreOptions::default()).unwrap();
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap(), "{vm} does not restore bit-exact");
    }
}

#[test]
fn a_killed_orchestrator_leaves_nothing_the_next_start_does_not_remove_and_no_half_version() {
    if !usable() {
        return;
    }
    let w = World::new("kill", &[("x", 1)]);
    w.job("x1", "x", &["vm-x"], 64);
    // Kill at: the processor being made, the processor ready, the backup under way.
    for moment in ["\"provisioning\"", "\"processor_ready\"", "\"progress\""] {
        let mut child =
            alike_job(&w).args(["run", "--json", "x1"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            assert!(n > 0, "the job ended before {moment}");
            if line.contains(moment) {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if moment != "\"provisioning\"" {
            assert!(!w.namespaces().is_empty(), "{moment}: the kill left nothing: the test proves nothing");
        }
        let sweep = alike_job(&w).args(["sweep", "--json"]).output().unwrap();
        assert!(sweep.status.success(), "{}", String::from_utf8_lossy(&sweep.stderr));
        assert!(w.namespaces().is_empty(), "{moment}: left after the sweep: {:?}", w.namespaces());
        let store = w.store();
        assert!(store.versions(Some("vm-x")).unwrap().is_empty(), "{moment}: a version of a killed job");
        let v = store.verify(&VerifyOptions::default()).unwrap();
        assert!(v.ok(), "{moment}: {v:?}");
    }
    // The next run completes.
    let ok = alike_job(&w).args(["run", "x1"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(w.store().versions(Some("vm-x")).unwrap().len(), 1);
}

#[test]
fn measure_backup_through_a_processor_against_the_same_backup_in_process() {
    if !usable() {
        return;
    }
    let mib = 128;
    let w = World::new("measure", &[("m", 1)]);
    w.job("m1", "m", &["vm-m"], mib);
    let c = w.load();
    let orch = Orchestrator::from_config(&c).unwrap();
    let job = ProcessorBackup::from_config(&c, "m1", "m1").unwrap();
    let run = orch.run(&job, &RunJobOptions::default()).unwrap();
    let via = run.elapsed - run.ready_after;
    // The same image into a fresh store, in this process.
    let local = Store::builder()
        .passphrase(&w.password)
        .insecure_fast_kdf()
        .cache_dir(w.p("local-cache"))
        .create(w.p("local-store"))
        .unwrap();
    let img: PathBuf = c.job("m1").unwrap().disks["vm-m"][0].clone();
    let t0 = Instant::now();
    local.backup_images("vm-m", &[&img], &BackupOptions::default()).unwrap();
    let inproc = t0.elapsed();
    let mbs = |d: Duration| (mib as f64) / d.as_secs_f64();
    eprintln!(
        "measure: {mib} MiB backup: through a processor {:.2} s ({:.0} MiB/s; processor ready after {:.2} s, \
         not counted), in process {:.2} s ({:.0} MiB/s)",
        via.as_secs_f64(),
        mbs(via),
        run.ready_after.as_secs_f64(),
        inproc.as_secs_f64(),
        mbs(inproc)
    );
}

#[test]
fn the_services_run_a_processor_job_through_the_orchestrator_with_per_disk_progress_and_history() {
    if !usable() {
        return;
    }
    use alike::services::{EventKind, RunResult, Services};
    let w = World::new("svc", &[("s", 1)]);
    // One VM with two disks, so progress comes per disk.
    let (d0, d1) = (w.image("svc-0.img", 8, 5), w.image("svc-1.img", 6, 6));
    let mut text = std::fs::read_to_string(w.config()).unwrap();
    text += &format!(
        "\n[[job]]\nname = \"nightly\"\nkind = \"backup\"\nvms = [\"vm-s\"]\nstore = \"main\"\npool = \"{}\"\n\
         disks = {{ vm-s = [\"{}\", \"{}\"] }}\n[job.chain]\nverify = \"quick\"\n",
        w.pool("s"),
        d0.display(),
        d1.display()
    );
    std::fs::write(w.config(), text).unwrap();
    let c = w.load();
    assert!(c.job("nightly").unwrap().options.processor, "processor is the default");
    let services = Services::builder().config(&c).unwrap().database(w.p("services.redb")).open().unwrap();
    let events: Arc<Mutex<Vec<alike::services::Event>>> = Arc::default();
    let e2 = events.clone();
    services.subscribe(move |e| e2.lock().unwrap().push(e.clone()));
    let id = services.run_now("nightly").unwrap();
    assert!(services.wait_idle(Duration::from_secs(120)), "the run did not end");
    let rec = services.run(id).unwrap();
    assert_eq!(rec.result, RunResult::Success, "{rec:?}");
    // The version was made on the processor: the store has it, and the
    // history's figures are the processor's report's.
    let store = w.store();
    let versions = store.versions(Some("vm-s")).unwrap();
    assert_eq!(versions.len(), 1);
    let vm = &rec.vms[0];
    assert_eq!(vm.vm, "vm-s");
    assert_eq!(vm.version.as_deref(), Some(versions[0].id.as_str()));
    assert_eq!(vm.read_bytes, 14 << 20);
    assert!(vm.stored_bytes > 0 && vm.new_bytes > 0, "{vm:?}");
    let sizes: Vec<(u32, u64)> = vm.disks.iter().map(|d| (d.position, d.size)).collect();
    assert_eq!(sizes, [(0, 8 << 20), (1, 6 << 20)]);
    // The chain ran here after the processor's backup.
    assert!(rec.steps.iter().any(|s| s.step == "verify" && s.result == "success"), "{:?}", rec.steps);
    // Progress came per disk, each disk's last event at its size.
    let ev = events.lock().unwrap();
    let mut last = std::collections::BTreeMap::new();
    for e in ev.iter() {
        if let EventKind::Progress { disk, done, total, phase, .. } = &e.kind
            && phase == "backup"
        {
            last.insert(*disk, (*done, *total));
        }
    }
    assert_eq!(last.get(&0), Some(&(8 << 20, 8 << 20)), "{last:?}");
    assert_eq!(last.get(&1), Some(&(6 << 20, 6 << 20)), "{last:?}");
    assert!(ev.iter().any(|e| matches!(&e.kind, EventKind::VmStarted { vm } if vm == "vm-s")));
    drop(ev);
    services.stop(false, Duration::from_secs(10));
    drop(services);
    assert!(w.namespaces().is_empty(), "left: {:?}", w.namespaces());
}

/// A Xen job end to end on the simulated pool, with nothing but the
/// orchestrator's real code: the orchestrator snapshots `web-01` (two
/// disks) through the pool's XAPI, clones a processor VM from the
/// template, attaches the snapshot's disks read-only and starts it; the
/// simulator boots it (`SimConfig::boot_processors`: a namespace with sshd
/// at the address and host key the provisioner wrote to `xenstore_data`,
/// the disks at `/dev/xvdX`, `alike` on its `PATH`), and the processor
/// backs the disks up with the VM's configuration. The version restores
/// bit-exact, and nothing is left: no clone, VBD, VIF, snapshot, guest or
/// namespace.
#[test]
fn a_xen_job_runs_end_to_end_through_a_processor_vm() {
    use alike::processors::{PoolLogin, VmDisks, XenProcessorOptions, XenProvisioner};
    use alike_xen_sim::{BootProcessors, Class, SimConfig, Simulator};
    if !usable() {
        return;
    }
    let w = World::new("xen", &[("x", 1)]);
    let authorized = std::fs::read_to_string(w.p("id_ed25519.pub")).unwrap();
    let sim = Arc::new(
        Simulator::start(SimConfig::new(w.p("sim")).demo(true).boot_processors(BootProcessors::new(ALIKE, authorized)))
            .unwrap(),
    );
    let xen = || Arc::new(alike::xen_pool(&sim.url(), "root", sim.password(), None).unwrap());
    let pool = w.pool("x");
    let (a, b) = w.nets[0];
    let address: IpAddr = format!("10.{a}.{b}.10").parse().unwrap();
    // The default command, `alike processor`: the guest's own `alike`.
    let mut login = PoolLogin::new(alike::remote::ClientKey::new(w.p("id_ed25519")));
    login.ssh_timeout = Duration::from_secs(20);
    let orch_id = w.orchestrator.clone();
    let state = w.p("state");
    let make_orch = |prov: XenProvisioner| {
        let mut o = Orchestrator::new(&orch_id, &state).unwrap();
        o.add_pool_with_snapshots(Arc::new(prov), vec![address], login.clone(), xen());
        o
    };
    let orch = make_orch(XenProvisioner::new(xen(), XenProcessorOptions::new(&pool, "Debian Bookworm 12")));
    assert!(orch.sweep().unwrap().iter().all(|r| r.removed.is_empty()));
    let count = |class: Class| {
        sim.call(&format!("{}.get_all", class.name()), vec![alike_xen_sim::Value::s(sim.login().unwrap())])
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    let before: Vec<usize> = [Class::Vm, Class::Vbd, Class::Vif, Class::Vdi].into_iter().map(count).collect();
    let disks: Vec<String> =
        ["web-01 root", "web-01 data"].iter().map(|n| sim.lookup(Class::Vdi, n).unwrap()).collect();
    let original: Vec<Vec<u8>> = disks
        .iter()
        .map(|d| {
            let size = sim.field(Class::Vdi, d, "virtual_size").unwrap().as_int().unwrap();
            sim.read_vdi(d, 0, size as usize).unwrap()
        })
        .collect();

    let spec = alike::remote::StoreSpec::new(w.p("store").display().to_string());
    let mut spec = spec;
    spec.cache_dir = Some(w.p("processor-cache"));
    let job = ProcessorBackup::new("xj1", &pool, spec.clone())
        .vm(VmDisks::new("web-01", Vec::<String>::new()))
        .passphrase(&w.password);
    // What the booted guest had while the job ran: its disks by device
    // path (with whether each VDI is a snapshot, and of what), and its
    // VM's xenstore_data.
    type Seen = (Vec<alike_xen_sim::BootedProcessor>, Vec<(String, bool, String)>, alike_xen_sim::Value);
    let guests: Arc<Mutex<Option<Seen>>> = Arc::default();
    let log: Log = Arc::default();
    let opts = {
        let (l, g, sim) = (log.clone(), guests.clone(), sim.clone());
        RunJobOptions::default().on_event(move |e| {
            l.lock().unwrap().push((Instant::now(), e.clone()));
            let mut g = g.lock().unwrap();
            if g.is_none() && matches!(e, JobEvent::Worker { .. }) {
                let booted = sim.booted_processors();
                let vdis = booted
                    .iter()
                    .flat_map(|b| b.disks.iter())
                    .map(|(dev, vdi)| {
                        let snap = sim.field(Class::Vdi, vdi, "is_a_snapshot").and_then(|v| v.as_bool());
                        let of = sim.field(Class::Vdi, vdi, "snapshot_of");
                        (
                            dev.clone(),
                            snap == Some(true),
                            of.and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                        )
                    })
                    .collect();
                let xs = booted.first().and_then(|b| sim.field(Class::Vm, &b.vm, "xenstore_data"));
                *g = Some((booted, vdis, xs.unwrap_or(alike_xen_sim::Value::Struct(Default::default()))));
            }
        })
    };
    let t0 = Instant::now();
    let run = orch.run(&job, &opts).unwrap();
    let total = t0.elapsed();
    assert_eq!(run.vms.len(), 1);
    let (booted, vdis, xs) = guests.lock().unwrap().clone().expect("no worker event");
    assert_eq!(booted.len(), 1, "one processor guest ran: {booted:?}");
    assert_eq!(booted[0].address, address);
    // The guest saw the snapshot's two disks, not the VM's own, at /dev/xvdX.
    assert_eq!(vdis.len(), 2, "{booted:?}");
    let mut seen = Vec::new();
    for (dev, snapshot, of) in &vdis {
        assert!(dev.starts_with("/dev/xvd"), "{dev}");
        assert!(snapshot, "{dev}: the VM's own disk was attached, not a snapshot");
        seen.push(of.clone());
    }
    seen.sort();
    let mut want = disks.clone();
    want.sort();
    assert_eq!(seen, want, "the snapshot disks are of web-01's two disks");
    // The guest took its host key out of xenstore, as the appliance does;
    // the address stays.
    let xs = xs.as_struct().unwrap().clone();
    assert!(xs.contains_key("vm-data/alike/address") && !xs.contains_key("vm-data/alike/host-key"), "{xs:?}");
    let store = w.store();
    let versions = store.versions(Some("web-01")).unwrap();
    assert_eq!(versions.len(), 1);
    let v = &versions[0];
    assert_eq!(v.disks.len(), 2);
    for (i, data) in original.iter().enumerate() {
        let out = w.p(&format!("restored-{i}.img"));
        store.restore_to_file(v, i as u32, &out, &alike::RestoreOptions::default()).unwrap();
        assert!(std::fs::read(&out).unwrap() == *data, "disk {i} does not restore bit-exact");
    }
    // The VM's configuration came from the pool, as an in-process backup records it.
    let vm = v.config();
    assert_eq!(vm.vcpus, Some(2), "{vm:?}");
    assert_eq!(
        vm.uuid.as_deref(),
        sim.field(Class::Vm, &sim.lookup(Class::Vm, "web-01").unwrap(), "uuid").unwrap().as_str()
    );
    // Nothing is left but the snapshot, kept as the next incremental's
    // change reference: no clone, VBD or VIF of the processor, no namespace.
    let snapshots = || {
        let all = sim.call("VM.get_all", vec![alike_xen_sim::Value::s(sim.login().unwrap())]).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r.as_str().map(str::to_string))
            .filter(|r| sim.field(Class::Vm, r, "is_a_snapshot").and_then(|v| v.as_bool()) == Some(true))
            .collect::<Vec<_>>()
    };
    let after: Vec<usize> = [Class::Vm, Class::Vbd, Class::Vif, Class::Vdi].into_iter().map(count).collect();
    assert_eq!(snapshots().len(), 1, "the snapshot is kept");
    let kept: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!((kept[0], kept[3]), (1, 2), "VMs, VBDs, VIFs, VDIs added by the job: {kept:?}");
    assert!(sim.booted_processors().is_empty(), "left: {:?}", sim.booted_processors());
    assert!(!sim_namespaces().iter().any(|n| n.starts_with(&format!("axs{}d", std::process::id()))));
    let ready = when(&log, "xj1", "processor_ready").unwrap() - t0;
    eprintln!(
        "measure: Xen job start to processor ready (simulated pool, snapshot excluded): {:.3} s; whole job (snapshot, 96 MiB backup, teardown) {total:.2?}",
        ready.as_secs_f64()
    );

    // An incremental: the guest changes three 64 KiB blocks of its root
    // disk; the orchestrator asks the pool what changed since the kept
    // snapshot and the processor reads about that alone.
    let mut changed = original.clone();
    for off in [0usize, 5 << 20, 40 << 20] {
        let data = vec![0xA5u8; 64 << 10];
        sim.guest_write(&disks[0], off as u64, &data).unwrap();
        changed[0][off..off + data.len()].copy_from_slice(&data);
    }
    let job2 = ProcessorBackup::new("xj1b", &pool, spec.clone())
        .vm(VmDisks::new("web-01", Vec::<String>::new()))
        .passphrase(&w.password);
    let run2 = orch.run(&job2, &RunJobOptions::default()).unwrap();
    let read = run2.vms[0].result["read_bytes"].as_u64().unwrap();
    eprintln!("measure: Xen incremental through a processor read {read} bytes for 3 changed 64 KiB blocks");
    assert!(read > 0 && read <= 6 << 20, "the incremental read {read} bytes of 96 MiB");
    let versions = store.versions(Some("web-01")).unwrap();
    assert_eq!(versions.len(), 2);
    for (v, want) in [(&versions[0], &original), (&versions[1], &changed)] {
        for (i, data) in want.iter().enumerate() {
            let out = w.p(&format!("restored-{}-{i}.img", v.id));
            store.restore_to_file(v, i as u32, &out, &alike::RestoreOptions::default()).unwrap();
            assert!(std::fs::read(&out).unwrap() == *data, "version {} disk {i} does not restore bit-exact", v.id);
        }
    }
    assert_eq!(snapshots().len(), 1, "the first snapshot is released, the second kept");
    let before: Vec<usize> = [Class::Vm, Class::Vbd, Class::Vif, Class::Vdi].into_iter().map(count).collect();

    // A job that fails on the processor (a wrong store passphrase) releases
    // its snapshot and tears the processor down all the same.
    let bad = ProcessorBackup::new("xj-bad", &pool, spec.clone())
        .vm(VmDisks::new("web-01", Vec::<String>::new()))
        .passphrase("not the passphrase");
    let e = orch.run(&bad, &RunJobOptions::default()).unwrap_err();
    assert!(e.to_string().to_lowercase().contains("passphrase"), "{e}");
    let after: Vec<usize> = [Class::Vm, Class::Vbd, Class::Vif, Class::Vdi].into_iter().map(count).collect();
    assert_eq!(after, before, "VMs, VBDs, VIFs, VDIs before and after a failed job");
    assert_eq!(store.versions(Some("web-01")).unwrap().len(), 2, "no version of the failed job");

    // An orchestrator that dies with a snapshot attached to its processor
    // leaves both; the sweep at its next start removes the VM and the
    // snapshot (found by the job tag on the snapshot's disks).
    use alike::Hypervisor;
    let hv = xen();
    let session = Hypervisor::begin_backup(hv.as_ref(), "web-01", &[], &alike::SnapshotOptions::default()).unwrap();
    let snaps: Vec<AttachDisk> =
        session.disk_details().iter().map(|d| AttachDisk::read_only(d.ids["snapshot_vdi"].clone())).collect();
    std::mem::forget(session);
    let prov = XenProvisioner::new(xen(), XenProcessorOptions::new(&pool, "Debian Bookworm 12"));
    let mut p = prov.make(&ProcessorRequest::new(&orch_id, "xj2", address, 24)).unwrap();
    p.attach(&snaps).unwrap();
    p.start().unwrap();
    std::mem::forget(p);
    let left: Vec<usize> = [Class::Vm, Class::Vbd, Class::Vif, Class::Vdi].into_iter().map(count).collect();
    assert_eq!(left[0], before[0] + 2, "a processor VM and a snapshot are left");
    let swept = prov.sweep(&orch_id).unwrap();
    assert!(swept.failed.is_empty(), "{swept:?}");
    assert_eq!(swept.removed.len(), 2, "{swept:?}");
    assert!(swept.removed.iter().any(|r| r.starts_with("snapshot ") && r.contains("job xj2")), "{swept:?}");
    let after: Vec<usize> = [Class::Vm, Class::Vbd, Class::Vif, Class::Vdi].into_iter().map(count).collect();
    assert_eq!(after, before, "VMs, VBDs, VIFs, VDIs before the job and after the sweep");
    assert!(sim.booted_processors().is_empty(), "left: {:?}", sim.booted_processors());
    drop(orch);
}
