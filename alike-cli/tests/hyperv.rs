//! `alike hyperv …` against the `alike-hyperv-sim` binary (`--demo`, with
//! its smbd): list VMs, back up (full, then RCT incremental with the exact
//! bytes read), a reset RCT printed as a warning, and the versions
//! restored to files bit-exact with the disks the guest saw.
//!
//! The simulator binary: `ALIKE_HYPERV_SIM`, else built beside `alike`
//! (`cargo build -p alike-hyperv-sim --bin alike-hyperv-sim`).
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const PASSWORD: &str = "S3cret!<&>";

fn sim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ALIKE_HYPERV_SIM") {
        return p.into();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_alike")).with_file_name("alike-hyperv-sim");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let profile = if bin.parent().is_some_and(|d| d.ends_with("release")) { vec!["--release"] } else { vec![] };
    let st = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "alike-hyperv-sim", "--bin", "alike-hyperv-sim", "--manifest-path"])
        .arg(&manifest)
        .args(&profile)
        .status()
        .expect("running cargo to build alike-hyperv-sim");
    assert!(st.success(), "building alike-hyperv-sim failed");
    bin
}

struct Sim {
    child: Child,
    url: String,
    addr: String,
    smb_port: String,
    fingerprint: String,
}

impl Sim {
    fn start(state: &Path) -> Sim {
        Sim::start_with(state, &[])
    }

    fn start_with(state: &Path, extra: &[&str]) -> Sim {
        let mut child = Command::new(sim_binary())
            .args(extra)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--demo",
                "--user",
                "hvadmin",
                "--password",
                PASSWORD,
                "--smb-port",
                "0",
                "--state",
            ])
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut url, mut smb_port, mut fingerprint) = (String::new(), String::new(), String::new());
        for _ in 0..4 {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            if let Some(fp) = line.split("certificate SHA-256 ").nth(1) {
                fingerprint = fp.trim().to_owned();
            }
            if line.contains("WS-Management at") {
                url = line.split_whitespace().last().unwrap().to_owned();
            } else if line.contains(" on port ") {
                smb_port = line.split(" on port ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
            }
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        assert!(url.contains("://127.0.0.1:") && !smb_port.is_empty(), "{url} {smb_port}");
        let addr = url.split("://").nth(1).unwrap().trim_end_matches("/wsman").to_owned();
        Sim { child, url, addr, smb_port, fingerprint }
    }

    fn post(&self, target: &str, body: &[u8]) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // SIGTERM, so that it stops its smbd.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn smbd_here() -> bool {
    let found = ["/usr/sbin/smbd", "/usr/bin/smbd"].iter().any(|p| Path::new(p).exists());
    if !found {
        alike_testing::skip("smbd is not installed (Debian package samba; bash scripts/test.sh installs it)");
    }
    found
}

struct Cli {
    dir: tempfile::TempDir,
    sim: Sim,
}

impl Cli {
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_alike"));
        c.env("ALIKE_CACHE_DIR", self.p("cache"))
            .env("ALIKE_PASSWORD", "pw")
            .env("ALIKE_HYPERV_PASSWORD", PASSWORD)
            .env_remove("ALIKE_STORE")
            .env_remove("ALIKE_HYPERV_URL");
        c.arg("--store").arg(self.p("store"));
        c
    }
    fn ok(&self, args: &[&str]) -> (String, String) {
        let o: Output = self.cmd().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "alike {args:?} failed: {err}");
        (String::from_utf8(o.stdout).unwrap(), err)
    }
    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args).0).unwrap()
    }
    fn hv<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "hyperv",
            "--url",
            self.sim.url.as_str(),
            "--user",
            "hvadmin",
            "--smb-port",
            self.sim.smb_port.as_str(),
        ];
        v.extend_from_slice(rest);
        v
    }
}

#[test]
fn vms_backup_rct_incremental_fallback_and_restore() {
    if !smbd_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&dir.path().join("sim"));
    let c = Cli { dir, sim };
    c.ok(&["init", "--no-encryption", "--chunking", "fixed"]);
    let pwf = c.p("hv-pw");
    std::fs::write(&pwf, format!("{PASSWORD}\n")).unwrap();
    let o = c
        .cmd()
        .env_remove("ALIKE_HYPERV_PASSWORD")
        .args(c.hv(&["--hyperv-password-file", pwf.to_str().unwrap(), "vms", "--json"]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vms: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut names: Vec<&str> = vms.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["db-01", "web-01"]);
    let (text, _) = c.ok(&c.hv(&["vms"]));
    assert!(text.contains("web-01") && text.contains("gen 2"), "{text}");

    let b1 = c.json(&c.hv(&["backup", "--vm", "web-01", "--json"]));
    assert_eq!(b1["disks"][0]["mode"], "full");
    assert_eq!(b1["disks"][0]["transport"], "smb");
    assert_eq!(b1["consistency"], "crash-consistent");
    c.sim.post("/sim/guest-write?vm=web-01&disk=0&offset=655363", b"scattered");
    c.sim.post("/sim/guest-write?vm=web-01&disk=1&offset=0", b"x");
    let b2 = c.json(&c.hv(&["backup", "--vm", "web-01", "--quiesce", "--json"]));
    assert_eq!(b2["consistency"], "application-consistent");
    assert_eq!(b2["disks"][0]["mode"], "incremental");
    assert_eq!(b2["disks"][0]["read_bytes"], 65536);
    assert_eq!(b2["disks"][1]["read_bytes"], 65536);

    c.sim.post("/sim/reset-rct?vm=web-01&disk=1", b"");
    let (out, err) = c.ok(&c.hv(&["backup", "--vm", "web-01"]));
    assert_eq!(out.trim().len(), 64, "prints the version id: {out}");
    assert!(
        err.contains("alike: warning: disk 1 (") && err.contains("was read in full") && err.contains("32773"),
        "{err}"
    );

    // The last version restores to what the guest sees.
    let img = c.p("d0.img");
    c.ok(&["restore", out.trim(), "--disk", "0", "--output", img.to_str().unwrap()]);
    let restored = std::fs::read(&img).unwrap();
    assert_eq!(restored.len(), 64 << 20);
    assert_eq!(&restored[655363..655372], b"scattered");

    // The version restores as a new VM on the host: VHDX files in the folder asked, the VM as recorded.
    let r = c.json(&c.hv(&["restore", out.trim(), "--path", "C:\\Restored", "--name", "web-01 r", "--json"]));
    assert_eq!(r["restored"]["name"], "web-01 r");
    assert_eq!(r["restored"]["disks"][0]["path"], "C:\\Restored\\web-01 r\\web-01-os.vhdx");
    assert_eq!(r["restored"]["disks"][0]["format"], "target");
    let vms = c.json(&c.hv(&["vms", "--json"]));
    let find = |n: &str| vms.as_array().unwrap().iter().find(|v| v["name"] == n).unwrap().clone();
    let (orig, new) = (find("web-01"), find("web-01 r"));
    assert_eq!(new["id"], r["restored"]["vm_uuid"]);
    for k in ["generation", "secure_boot", "vcpus", "memory_mb", "nics"] {
        assert_eq!(new[k], orig[k], "{k}");
    }
    for (a, b) in new["disks"].as_array().unwrap().iter().zip(orig["disks"].as_array().unwrap()) {
        for k in ["position", "controller", "controller_index", "location"] {
            assert_eq!(a[k], b[k], "disk {k}");
        }
    }
    let file = c.dir.path().join("sim").join("C").join("Restored").join("web-01 r").join("web-01-os.vhdx");
    assert!(file.is_file(), "{}", file.display());
    let (_, err) =
        c.ok(&c.hv(&["restore", out.trim(), "--path", "C:\\Restored", "--name", "web-01 r2", "--switch", "LAN"]));
    assert!(err.contains("restored version") && err.contains("web-01 r2"), "{err}");
    let o =
        c.cmd().args(c.hv(&["restore", out.trim(), "--path", "C:\\Restored", "--switch", "nope"])).output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("virtual switch \"nope\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn https_with_a_pinned_certificate() {
    if !smbd_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start_with(&dir.path().join("sim"), &["--tls"]);
    assert!(sim.url.starts_with("https://") && sim.fingerprint.len() == 95, "{} {}", sim.url, sim.fingerprint);
    let fp = sim.fingerprint.clone();
    let c = Cli { dir, sim };
    for auth in [&[][..], &["--basic"][..]] {
        let mut args = c.hv(&["--fingerprint", &fp]);
        args.extend_from_slice(auth);
        args.extend_from_slice(&["vms", "--json"]);
        let vms = c.json(&args);
        assert_eq!(vms.as_array().unwrap().len(), 2, "{auth:?}");
    }
    let pem = c.dir.path().join("sim").join("tls").join("cert.pem");
    let vms = c.json(&c.hv(&["--ca-file", pem.to_str().unwrap(), "vms", "--json"]));
    assert_eq!(vms.as_array().unwrap().len(), 2);
    let wrong = "00:".repeat(31) + "00";
    let o = c.cmd().args(c.hv(&["--fingerprint", &wrong, "vms"])).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("was refused") && err.contains(&fp), "{err}");
}

#[test]
fn replica_register_and_failover() {
    if !smbd_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&dir.path().join("sim"));
    let c = Cli { dir, sim };
    c.ok(&["init", "--no-encryption"]);
    let (v, _) = c.ok(&c.hv(&["backup", "--vm", "web-01"]));
    let v = v.trim();
    // A replica folder filled from the version's disks.
    let mut imgs = Vec::new();
    for d in 0..2 {
        let img = c.p(&format!("d{d}.img"));
        c.ok(&["restore", v, "--disk", &d.to_string(), "--output", img.to_str().unwrap()]);
        imgs.push(img);
    }
    let rdir = c.p("replica");
    let (rd, i0, i1) = (rdir.to_str().unwrap(), imgs[0].to_str().unwrap(), imgs[1].to_str().unwrap());
    c.ok(&["replicate", "--vm", "web-01", "--to-dir", rd, i0, i1]);

    // Runs from plain images record no configuration: a version must name one.
    let o = c.cmd().args(c.hv(&["replica", "register", rd, "--path", "C:\\Replicas"])).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--config-version"), "{err}");
    // A run seeded from the version records the version's configuration in the folder.
    let seeded = c.p("seeded");
    let sd = seeded.to_str().unwrap();
    let store = c.p("store");
    let seed = format!("{}:{v}", store.to_str().unwrap());
    c.ok(&["replicate", "--vm", "web-01", "--to-dir", sd, "--seed-from", &seed, i0, i1]);
    assert!(seeded.join("vm-config.json").is_file());
    let r = c.json(&c.hv(&["replica", "register", sd, "--path", "C:\\Seeded", "--name", "seeded", "--json"]));
    assert_eq!(r["name"], "seeded");
    let vms = c.json(&c.hv(&["vms", "--json"]));
    let got = vms.as_array().unwrap().iter().find(|x| x["id"] == r["vm_id"]).unwrap().clone();
    let orig = vms.as_array().unwrap().iter().find(|x| x["name"] == "web-01").unwrap().clone();
    for k in ["generation", "secure_boot", "vcpus", "memory_mb", "nics"] {
        assert_eq!(got[k], orig[k], "{k}: the folder's own record");
    }
    c.ok(&c.hv(&["replica", "failover", sd, r["vm_id"].as_str().unwrap()]));

    let r =
        c.json(&c.hv(&["replica", "register", rd, "--config-version", "latest", "--path", "C:\\Replicas", "--json"]));
    assert_eq!(r["name"], "web-01 (replica)");
    assert_eq!(r["point"], 1);
    let vms = c.json(&c.hv(&["vms", "--json"]));
    let find = |n: &str| vms.as_array().unwrap().iter().find(|x| x["name"] == n).unwrap().clone();
    let (orig, new) = (find("web-01"), find("web-01 (replica)"));
    assert_eq!(new["id"], r["vm_id"]);
    for k in ["generation", "secure_boot", "vcpus", "memory_mb", "nics"] {
        assert_eq!(new[k], orig[k], "{k}");
    }
    let file = c.dir.path().join("sim").join("C").join("Replicas").join("web-01 (replica)").join("web-01-os.vhdx");
    assert!(file.is_file(), "{}", file.display());

    // A test failover from the point, beside the replica VM, then ended.
    let t = c.json(&c.hv(&[
        "replica",
        "test",
        rd,
        "--config-version",
        "latest",
        "--path",
        "C:\\Tests",
        "--point",
        "1",
        "--json",
    ]));
    assert_eq!(t["name"], "web-01 - Test");
    assert_eq!(t["files"].as_array().unwrap().len(), 4);
    let vms = c.json(&c.hv(&["vms", "--json"]));
    let test = vms.as_array().unwrap().iter().find(|x| x["name"] == "web-01 - Test").unwrap().clone();
    assert_eq!(test["nics"], serde_json::json!([]));
    let o = c.cmd().args(c.hv(&["replica", "test-end", "web-01 (replica)"])).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no test VM"), "{err}");
    let (_, err) = c.ok(&c.hv(&["replica", "test-end", "web-01 - Test"]));
    assert!(err.contains("removed with 4 file(s)"), "{err}");
    let vms = c.json(&c.hv(&["vms", "--json"]));
    assert!(vms.as_array().unwrap().iter().all(|x| x["name"] != "web-01 - Test"));

    let (_, err) = c.ok(&c.hv(&["replica", "failover", rd, "web-01 (replica)"]));
    assert!(err.contains("failed") && err.contains("over"), "{err}");
    let o = c.cmd().args(["replicate", "--vm", "web-01", "--to-dir", rd, i0, i1]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("failed over"), "{err}");
    // Failback onto the original images: nothing changed on the VM, nothing is sent; the folder takes runs again.
    let f = c.json(&c.hv(&["replica", "failback", rd, "web-01 (replica)", "--to-images", i0, i1, "--json"]));
    assert_eq!((f["changed_bytes"].as_u64(), f["sent_bytes"].as_u64()), (Some(0), Some(0)), "{f}");
    assert_eq!(f["whole_disks"], false);
    c.ok(&["replicate", "--vm", "web-01", "--to-dir", rd, i0, i1]);
    // Failover again, then failback onto new images: an existing one is refused, untouched.
    c.ok(&c.hv(&["replica", "failover", rd, "web-01 (replica)"]));
    let before = std::fs::read(i1).unwrap();
    let n0 = c.p("new0.img");
    let n0 = n0.to_str().unwrap();
    let o = c
        .cmd()
        .args(c.hv(&["replica", "failback", rd, "web-01 (replica)", "--to-new-images", n0, i1]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("exists"), "{err}");
    assert!(std::fs::read(i1).unwrap() == before && !Path::new(n0).exists());
    let n1 = c.p("new1.img");
    let n1 = n1.to_str().unwrap();
    let f = c.json(&c.hv(&["replica", "failback", rd, "web-01 (replica)", "--to-new-images", n0, n1, "--json"]));
    assert_eq!(f["whole_disks"], true, "{f}");
    assert!(f["sent_bytes"].as_u64().unwrap() > 0, "{f}");
    for (n, i) in [(n0, i0), (n1, i1)] {
        assert_eq!(std::fs::metadata(n).unwrap().len(), std::fs::metadata(i).unwrap().len());
    }
    c.ok(&["replicate", "--vm", "web-01", "--to-dir", rd, n0, n1]);
}
