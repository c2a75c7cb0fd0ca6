//! `alike xen …` against the `alike-xapi-sim` binary (`--demo`): list VMs,
//! back up (full, then incremental with the exact bytes read), a broken CBT
//! chain printed as a warning, restore as a new VM, and that VM backed up
//! and restored to files bit-exact with the original version.
//!
//! The simulator binary: `ALIKE_XAPI_SIM`, else built beside `alike`
//! (`cargo build -p alike-xen-sim --bin alike-xapi-sim`).
#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

#[path = "common/xapi_sim.rs"]
mod xapi_sim;
use xapi_sim::Sim;

struct Cli {
    dir: tempfile::TempDir,
    sim: Sim,
}

impl Cli {
    fn new() -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::start(&dir.path().join("sim"));
        std::fs::write(dir.path().join("xen-pw"), "alike\n").unwrap();
        Cli { dir, sim }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_alike"));
        c.env("ALIKE_CACHE_DIR", self.p("cache"))
            .env("ALIKE_PASSWORD", "pw")
            .env("ALIKE_XEN_PASSWORD", "alike")
            .env_remove("ALIKE_STORE")
            .env_remove("ALIKE_XEN_URL");
        c.arg("--store").arg(self.p("store"));
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> (String, String) {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "alike {args:?} failed: {err}");
        (String::from_utf8(o.stdout).unwrap(), err)
    }
    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args).0).unwrap()
    }
    fn xen<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["xen", "--url", self.sim.url.as_str()];
        v.extend_from_slice(rest);
        v
    }
}

#[test]
fn vms_backup_incremental_fallback_and_restore() {
    let c = Cli::new();
    // Unencrypted: no passphrase hashing in each of the many commands below.
    // Fixed blocks: the figures below are CBT's exact 64 KiB blocks.
    c.ok(&["init", "--no-encryption", "--chunking", "fixed"]);
    // vms, with the password from a file.
    let pwf = c.p("xen-pw");
    let o = c
        .cmd()
        .env_remove("ALIKE_XEN_PASSWORD")
        .args(c.xen(&["--xen-password-file", pwf.to_str().unwrap(), "vms", "--json"]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vms: Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = vms.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["db-01", "web-01"]);
    let web = &vms[1];
    let root_vdi = web["disks"][0]["vdi_uuid"].as_str().unwrap().to_owned();
    let data_vdi = web["disks"][1]["vdi_uuid"].as_str().unwrap().to_owned();
    let (text, _) = c.ok(&c.xen(&["vms"]));
    assert!(text.contains("web-01") && text.contains("web-01 root 64.0 MiB"), "{text}");
    let pool = c.json(&c.xen(&["pool", "--json"]));
    assert_eq!(pool["srs"][0]["name"], "Local storage");

    // Full, then incremental.
    let b1 = c.json(&c.xen(&["backup", "--vm", "web-01", "--json"]));
    assert_eq!(b1["disks"][0]["mode"], "full");
    assert_eq!(b1["disks"][0]["transport"], "nbd");
    assert_eq!(b1["read_bytes"], 96 << 20);
    // The keys scripts read since the first release, unchanged by the hypervisor seam.
    assert_eq!(b1["disks"][0]["vdi"], root_vdi.as_str());
    assert!(b1["disks"][0]["snapshot_vdi"].as_str().is_some_and(|s| s.len() == 36), "{b1}");
    for k in ["vm_uuid", "time", "snapshot", "consistency", "wire_bytes", "new_stored_bytes", "elapsed_seconds"] {
        assert!(b1.get(k).is_some(), "no {k} in {b1}");
    }
    for k in ["kept_snapshot", "destroyed_snapshots", "data_destroyed_vdis", "destroyed_vdis", "warnings"] {
        assert!(b1["released"].get(k).is_some(), "no released.{k} in {b1}");
    }
    let v1 = b1["id"].as_str().unwrap().to_owned();
    c.sim.guest_write(&root_vdi, 65536 * 10 + 3, b"scattered");
    c.sim.guest_write(&root_vdi, 65536 * 500, &[1u8; 65537]);
    c.sim.guest_write(&data_vdi, 0, b"x");
    let b2 = c.json(&c.xen(&["backup", "--vm", web["uuid"].as_str().unwrap(), "--json"]));
    assert_eq!(b2["disks"][0]["mode"], "incremental");
    assert_eq!(b2["disks"][0]["read_bytes"], 3 * 65536, "blocks 10, 500 and 501");
    assert_eq!(b2["disks"][1]["read_bytes"], 65536);
    assert_eq!(b2["read_bytes"], 4 * 65536);
    assert_eq!(b2["wire_bytes"], 4 * 65536);
    assert_eq!(b2["released"]["destroyed_snapshots"][0], b1["snapshot"]);

    // A broken chain: a warning on stderr, a full read, still a version.
    c.sim.post("/sim/fail_next?method=VDI.list_changed_blocks&code=SR_BACKEND_FAILURE_460&params=,injected,");
    let (out, err) = c.ok(&c.xen(&["backup", "--vm", "web-01"]));
    assert_eq!(out.trim().len(), 64, "prints the version id: {out}");
    assert!(
        err.contains("alike: warning: disk 0 (VDI ")
            && err.contains("was read in full")
            && err.contains("SR_BACKEND_FAILURE_460"),
        "{err}"
    );
    assert!(
        err.contains("disk 0 (VDI") && err.contains("full over nbd") && err.contains("incremental over nbd"),
        "{err}"
    );

    // Restore version 1 as a new VM, then back that VM up and compare its disks with version 1's.
    let (out, _) = c.ok(&c.xen(&["restore", &v1[..12], "--sr", "Local storage", "--name", "web-01-restored"]));
    let new_uuid = out.trim().to_owned();
    let vms = c.json(&c.xen(&["vms", "--json"]));
    let restored = vms.as_array().unwrap().iter().find(|v| v["uuid"] == new_uuid.as_str()).unwrap();
    assert_eq!(restored["name"], "web-01-restored");
    assert_eq!(restored["power_state"], "Halted");
    assert_eq!(restored["disks"].as_array().unwrap().len(), 2);
    assert_eq!(restored["nics"][0]["mac"], web["nics"][0]["mac"]);
    c.ok(&c.xen(&["backup", "--vm", "web-01-restored"]));
    for disk in ["0", "1"] {
        let a = c.p(&format!("orig{disk}.img"));
        let b = c.p(&format!("back{disk}.img"));
        c.ok(&["restore", &v1, "--disk", disk, "-o", a.to_str().unwrap()]);
        c.ok(&["restore", "latest", "--vm", "web-01-restored", "--disk", disk, "-o", b.to_str().unwrap()]);
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "disk {disk} differs");
    }

    // Errors: a wrong password, an unknown VM.
    let o = c.cmd().env("ALIKE_XEN_PASSWORD", "wrong").args(c.xen(&["vms"])).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("SESSION_AUTHENTICATION_FAILED"));
    let o = c.run(&c.xen(&["backup", "--vm", "nope"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no VM \"nope\""), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `alike job run` on a Xen pool's processor, SIGKILLed while it waits for
/// the processor (the simulator starts no guest): the clone is left,
/// tagged; `alike job sweep` finds and removes it, and only it.
#[test]
fn a_killed_job_run_leaves_a_processor_vm_that_the_sweep_removes() {
    let c = Cli::new();
    c.ok(&["init", "--no-encryption"]);
    let key = c.p("id_ed25519");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
    assert!(st.success());
    std::fs::write(c.p("store.pass"), "unused\n").unwrap();
    let config = format!(
        "orchestrator = \"k{pid}\"\nstate_dir = \"state\"\n\n[[store]]\nname = \"main\"\npath = \"store\"\n\n\
         [[pool]]\nname = \"xp\"\nkind = \"xen\"\nurl = \"{url}\"\nuser = \"root\"\npassword = {{ file = \"xen-pw\" }}\n\
         template = \"Debian Bookworm 12\"\naddresses = [\"203.0.113.50\"]\nssh_key = \"id_ed25519\"\n\
         ssh_timeout_seconds = 60\n\n[[job]]\nname = \"nightly\"\nkind = \"backup\"\nvms = [\"web-01\"]\n\
         store = \"main\"\npool = \"xp\"\n",
        pid = std::process::id(),
        url = c.sim.url,
    );
    std::fs::write(c.p("alike.toml"), config).unwrap();
    let processors = || -> Vec<String> {
        let vms = c.json(&c.xen(&["vms", "--json"]));
        vms.as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["name"].as_str())
            .filter(|n| n.starts_with("alike-processor-"))
            .map(str::to_owned)
            .collect()
    };
    let cfg = c.p("alike.toml");
    let mut child = c
        .cmd()
        .args(["job", "--config", cfg.to_str().unwrap(), "run", "--json", "nightly"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("\"provisioning\"") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the run ended before provisioning");
    }
    // The clone is made within moments; then the run waits for SSH.
    let t0 = std::time::Instant::now();
    while processors().is_empty() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "no processor VM appeared");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(processors().len(), 1, "the killed run's processor VM");
    let swept = c.json(&["job", "--config", cfg.to_str().unwrap(), "sweep", "--json"]);
    let removed = swept[0]["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{swept}");
    assert!(processors().is_empty(), "left after the sweep: {:?}", processors());
    let names: Vec<String> = c
        .json(&c.xen(&["vms", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["db-01", "web-01"], "the sweep touched only the processor");
}

/// Two real `alike xen backup` processes of one VM take turns on the VM's
/// file lock: the second waits, saying for whom; the lock goes with its
/// holder however that ends (here: killed).
#[test]
fn two_processes_backing_up_one_vm_take_turns() {
    let c = Cli::new();
    c.ok(&["init", "--no-encryption"]);
    let store = alike::Store::builder().cache_dir(c.p("cache-t")).open(c.p("store")).unwrap();
    let lock = store.vm_lock_file("xen", "web-01");
    assert!(lock.starts_with(std::fs::canonicalize(c.dir.path()).unwrap().join("store.vm-locks")), "{lock:?}");
    let spawn = || {
        c.cmd()
            .args(c.xen(&["backup", "--vm", "web-01", "--json"]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let signal = |sig: &str, pid: u32| {
        assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    };
    // Holds the lock: its pid is in the file (written once it holds it).
    let holding = |pid: u32| {
        for _ in 0..600 {
            let text = std::fs::read_to_string(&lock).unwrap_or_default();
            if text.lines().next() == Some(pid.to_string().as_str()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("process {pid} never took {}", lock.display());
    };
    // The second's standard error, line by line, until it says it waits.
    let waits_for = |child: &mut std::process::Child, pid: u32| {
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "the second backup ended without waiting");
            if line.contains("waiting for VM lock") {
                assert!(line.contains(&format!("held by pid {pid}")), "{line}");
                break;
            }
        }
        // Keep draining it.
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()))
    };
    for round in ["cont", "kill"] {
        let mut first = spawn();
        holding(first.id());
        // Paused mid-backup, lock held.
        signal("-STOP", first.id());
        let mut second = spawn();
        let drain = waits_for(&mut second, first.id());
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert!(second.try_wait().unwrap().is_none(), "{round}: the second ran while the first held the VM");
        if round == "cont" {
            signal("-CONT", first.id());
            let out = first.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        } else {
            signal("-KILL", first.id());
            assert!(!first.wait().unwrap().success());
        }
        // The second goes on once the first is gone, and takes the lock.
        let out = second.wait_with_output().unwrap();
        drain.join().unwrap().unwrap();
        assert!(out.status.success(), "{round}: the second backup failed");
        let b: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(b["vm"], "web-01", "{b}");
    }
    let versions = c.json(&["versions", "--json"]);
    assert_eq!(
        versions.as_array().unwrap().len(),
        3,
        "two of the first round, the second of the killed round: {versions}"
    );
}
