//! The `alike` command as scripts use it: flags, `--json` shapes, exit status.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alike_testing::{sha256_file, sparse_image};
use serde_json::Value;

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        Cli { dir: tempfile::tempdir().unwrap() }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_alike"));
        c.env("ALIKE_CACHE_DIR", self.p("cache")).env("ALIKE_PASSWORD", "pw").env_remove("ALIKE_STORE");
        c.arg("--store").arg(self.p("store"));
        c
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd().args(args).output().unwrap();
        assert!(o.status.success(), "alike {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

fn init_fast(c: &Cli) {
    // Argon2id at its default cost is fine here: it runs once per command.
    c.ok(&["init"]);
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn backup_versions_restore_stats_as_documented() {
    let c = Cli::new();
    init_fast(&c);
    let img = c.p("d.img");
    sparse_image(&img, 12 << 20, 20, 1);
    let id = c.ok(&["backup", "--vm", "web", path_str(&img)]).trim().to_string();
    assert_eq!(id.len(), 64, "prints the version id: {id}");
    let j = c.json(&["backup", "--vm", "web", "--meta", "owner=ops", path_str(&img), "--json"]);
    assert_eq!(j["id"].as_str().unwrap().len(), 64);
    assert_eq!(j["new_bytes"], 0);
    let vs = c.json(&["versions", "--json"]);
    let vs = vs.as_array().unwrap();
    assert_eq!(vs.len(), 2);
    assert_eq!(vs[1]["config"]["extra"]["owner"], "ops");
    assert_eq!(vs[1]["parent"].as_str(), Some(id.as_str()));
    for v in vs {
        assert_eq!(v["vm"], "web");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["disks"][0]["size"], 12 << 20);
    }
    let out = c.p("r.img");
    c.ok(&["restore", &id[..12], "--disk", "0", "--output", path_str(&out)]);
    assert_eq!(sha256_file(&out), sha256_file(&img));
    let out2 = c.p("r2.img");
    c.ok(&["restore", "latest", "--vm", "web", "--output", path_str(&out2)]);
    assert_eq!(sha256_file(&out2), sha256_file(&img));
    let s = c.json(&["stats", "--json"]);
    assert!(s["logical_bytes"].as_u64().unwrap() >= 2 * s["stored_bytes"].as_u64().unwrap() / 2);
    assert!(s["stored_bytes"].as_u64().unwrap() > 0);
    assert!(s["dedup_ratio"].as_f64().unwrap() > 1.9);
    // Plain output is human-readable.
    assert!(c.ok(&["versions"]).contains("web"));
    assert!(c.ok(&["stats"]).contains("dedup ratio"));
}

#[test]
fn store_from_env_and_password_file() {
    let c = Cli::new();
    let pwf = c.p("pw.txt");
    std::fs::write(&pwf, "file-secret\n").unwrap();
    let run = |args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_alike"))
            .env("ALIKE_CACHE_DIR", c.p("cache"))
            .env("ALIKE_STORE", c.p("store"))
            .env_remove("ALIKE_PASSWORD")
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["--password-file", path_str(&pwf), "init"]).status.success());
    assert!(run(&["--password-file", path_str(&pwf), "versions"]).status.success());
    // No passphrase and no terminal: a clear one-line error, exit 1.
    let o = run(&["versions"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("alike: error:") && err.contains("encrypted"), "{err}");
}

#[test]
fn errors_are_one_line_and_non_zero() {
    let c = Cli::new();
    init_fast(&c);
    let o = c.cmd().env("ALIKE_PASSWORD", "wrong").arg("versions").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    let o = c.cmd().args(["restore", "ffff", "--output", path_str(&c.p("x"))]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no version matches"));
    let o = c.cmd().args(["backup", "--vm", "x", "/nonexistent.img"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.img"));
    let o = Command::new(env!("CARGO_BIN_EXE_alike")).env_remove("ALIKE_STORE").arg("versions").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--store"));
}

#[test]
fn init_chooses_the_chunking_and_says_it() {
    let c = Cli::new();
    let init = |dir: &str, extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_alike"));
        cmd.env("ALIKE_CACHE_DIR", c.p("cache")).env_remove("ALIKE_STORE");
        cmd.arg("--store").arg(c.p(dir)).args(["init", "--no-encryption"]).args(extra);
        cmd.output().unwrap()
    };
    let o = init("cdc", &[]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("chunking cdc:16/32/64, format 2"), "{o:?}");
    let o = init("fixed", &["--chunking", "fixed"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("chunking fixed:64, format 1"), "{o:?}");
    let o = init("sizes", &["--chunking", "cdc:32/64/128"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("chunking cdc:32/64/128, format 2"), "{o:?}");
    for bad in [&["--chunking", "cdc:64/32/16"][..], &["--chunking", "rabin"], &["--block-size", "4096"]] {
        let o = init("bad", bad);
        assert_eq!(o.status.code(), Some(1), "{bad:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.lines().count() == 1 && (err.contains("chunk") || err.contains("block size")), "{bad:?}: {err}");
        assert!(!c.p("bad").join("config").exists());
    }
}

#[test]
fn unencrypted_store_needs_no_passphrase_and_latest_needs_vm() {
    let c = Cli::new();
    let run = |args: &[&str]| c.cmd().env_remove("ALIKE_PASSWORD").args(args).output().unwrap();
    assert!(run(&["init", "--no-encryption", "--block-size", "131072"]).status.success());
    let (a, b) = (c.p("a.img"), c.p("b.img"));
    sparse_image(&a, 1 << 20, 3, 1);
    sparse_image(&b, 1 << 20, 3, 2);
    assert!(run(&["backup", "--vm", "a", path_str(&a)]).status.success());
    assert!(run(&["backup", "--vm", "b", path_str(&b)]).status.success());
    let o = run(&["restore", "latest", "--output", path_str(&c.p("o.img"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--vm"));
    assert!(run(&["restore", "latest", "--vm", "b", "--output", path_str(&c.p("o.img"))]).status.success());
    assert_eq!(sha256_file(c.p("o.img")), sha256_file(&b));
}

#[test]
fn concurrent_processes_write_one_store() {
    let c = Cli::new();
    init_fast(&c);
    let imgs: Vec<PathBuf> = (0..3).map(|i| c.p(&format!("d{i}.img"))).collect();
    for (i, p) in imgs.iter().enumerate() {
        sparse_image(p, 24 << 20, 40, 10 + i as u64);
    }
    // Same cache directory for all: the second process must fall back to a private cache.
    let spawn = |vm: &str, img: &Path| {
        c.cmd()
            .args(["backup", "--vm", vm, "--threads", "1", path_str(img)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = vec![spawn("vm-a", &imgs[0]), spawn("vm-b", &imgs[1]), spawn("vm-a", &imgs[2])];
    for ch in children {
        let o = ch.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8(o.stdout).unwrap().trim().len(), 64);
    }
    let vs = c.json(&["versions", "--json"]);
    let vs = vs.as_array().unwrap();
    assert_eq!(vs.len(), 3);
    for v in vs {
        let out = c.p("r.img");
        c.ok(&["restore", v["id"].as_str().unwrap(), "--force", "--output", path_str(&out)]);
        let sha = sha256_file(&out);
        assert!(imgs.iter().any(|i| sha256_file(i) == sha), "version {} restores to an unknown image", v["id"]);
    }
    // No private caches left behind.
    let leftovers: Vec<_> =
        walk(&c.p("cache")).into_iter().filter(|p| p.to_string_lossy().contains("index-tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
    }
    out
}

#[test]
fn verify_exit_status_and_json() {
    let c = Cli::new();
    init_fast(&c);
    let img = c.p("d.img");
    sparse_image(&img, 6 << 20, 10, 3);
    let id = c.ok(&["backup", "--vm", "web", path_str(&img)]).trim().to_string();
    let j = c.json(&["verify", "--full", "--json"]);
    assert_eq!(j["ok"], true);
    assert_eq!(j["damaged"].as_array().unwrap().len(), 0);
    // Damage every pack: exit 1, and the JSON names the objects and the version.
    for d in std::fs::read_dir(c.p("store/packs")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            b[200] ^= 0xff;
            std::fs::write(&p, b).unwrap();
        }
    }
    let o = c.cmd().args(["verify", "--full", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["ok"], false);
    let damaged = j["damaged"].as_array().unwrap();
    assert!(damaged.iter().all(|d| d["object"].as_str().unwrap().starts_with("packs/")));
    assert!(damaged.iter().any(|d| d["affects"].as_array().unwrap().iter().any(|a| a["version"] == id.as_str())));
    assert!(String::from_utf8_lossy(&o.stderr).contains("damaged"));
}

#[test]
fn vhd_and_vhdx_files_back_up_and_restore_with_format() {
    let c = Cli::new();
    c.ok(&["init", "--no-encryption"]);
    let raw = c.p("d.img");
    sparse_image(&raw, 20 << 20, 6, 4);
    let vhdx = c.p("d.vhdx");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx", path_str(&raw), path_str(&vhdx)])
        .status()
        .unwrap();
    assert!(st.success());
    // Detected by its signature.
    let j = c.json(&["backup", "--vm", "hv", path_str(&vhdx), "--json"]);
    assert_eq!(j["disks"][0]["size"], 20 << 20);
    for (fmt, qfmt) in [("vhd", "vpc"), ("vhdx", "vhdx"), ("raw", "raw")] {
        let out = c.p(&format!("out.{fmt}"));
        c.ok(&["restore", "latest", "--vm", "hv", "--format", fmt, "-o", path_str(&out)]);
        let o = Command::new("qemu-img")
            .args(["compare", "-f", qfmt, "-F", "raw", path_str(&out), path_str(&raw)])
            .output()
            .unwrap();
        assert!(o.status.success(), "{fmt}: {}", String::from_utf8_lossy(&o.stdout));
    }
    // Forcing a format the file is not in is a clear, non-zero failure.
    let o = c.cmd().args(["backup", "--vm", "x", "--format", "vhd", path_str(&raw)]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("d.img") && err.lines().count() == 1, "{err}");
    let o = c.cmd().args(["restore", "latest", "--format", "qcow2", "-o", "x"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("qcow2"));
}

/// Packs under `dir/packs`, and their bytes.
fn packs(dir: &Path) -> (usize, u64) {
    let p = dir.join("packs");
    if !p.exists() {
        return (0, 0);
    }
    walk(&p).iter().fold((0, 0), |(n, b), f| (n + 1, b + std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)))
}

#[test]
fn vault_killed_midway_resumes_without_resending() {
    let c = Cli::new();
    init_fast(&c);
    let img = c.p("big.img");
    let mut data = vec![0u8; 160 << 20];
    alike_testing::Rng::new(11).fill(&mut data);
    std::fs::write(&img, &data).unwrap();
    drop(data);
    c.ok(&["backup", "--vm", "big", path_str(&img)]);
    let vault = c.p("vault");
    let vault_cmd = |extra: &[&str]| {
        let mut cmd = c.cmd();
        cmd.env("ALIKE_VAULT_PASSWORD", "vault-pw").args(["vault", "--to", path_str(&vault), "--vault-cache-dir"]);
        cmd.arg(c.p("vcache")).args(extra);
        cmd
    };
    // Paced so the kill lands mid-way: as soon as two packs have arrived.
    let mut child = vault_cmd(&["--init", "--bwlimit", "40M"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t = std::time::Instant::now();
    while packs(&vault).0 < 2 {
        assert!(t.elapsed().as_secs() < 120, "the vault never wrote two packs");
        assert!(child.try_wait().unwrap().is_none(), "the vault finished before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (_, arrived) = packs(&vault);
    assert!(c.json(&["versions", "--json"]).as_array().unwrap().len() == 1);

    let out = vault_cmd(&["--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["copied"].as_array().unwrap().len(), 1);
    let sent = j["sent_bytes"].as_u64().unwrap();
    // What arrived before the kill was reused, not sent again.
    assert!(sent + arrived / 2 <= (160 << 20) + (8 << 20), "sent {sent} again after {arrived} had arrived");
    assert!(sent < 150 << 20, "sent {sent} of 160 MiB after the kill");
    // The vault alone restores the version bit-exact.
    let restored = c.p("r.img");
    let mut r = Command::new(env!("CARGO_BIN_EXE_alike"));
    r.env("ALIKE_CACHE_DIR", c.p("cache-r")).env("ALIKE_PASSWORD", "vault-pw").env_remove("ALIKE_STORE");
    let o = r.args(["--store", path_str(&vault), "restore", "latest", "-o", path_str(&restored)]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha256_file(&restored), sha256_file(&img));
}

/// A JSON value's keys, recursively (objects by keys, arrays by their first element).
fn keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), keys(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(keys).into_iter().collect()),
        _ => Value::Null,
    }
}

/// Every `--json` prints the library's report as it is: the keys pinned in
/// `testdata/report-schema.json` (the file the facade's and Python's tests read).
#[test]
fn json_output_is_the_reports_schema() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/report-schema.json")).unwrap(),
    )
    .unwrap();
    let c = Cli::new();
    init_fast(&c);
    let img = c.p("d.img");
    sparse_image(&img, 4 << 20, 8, 5);
    let b = c.json(&["backup", "--vm", "web", path_str(&img), "--json"]);
    assert_eq!(keys(&b), schema["backup"]);
    assert_eq!(keys(&c.json(&["versions", "--json"])[0]), schema["version"]);
    let r = c.json(&["restore", "latest", "-o", path_str(&c.p("r.img")), "--json"]);
    let mut want = schema["restore"].clone();
    for k in ["id", "vm", "disk", "output"] {
        want[k] = Value::Null;
    }
    assert_eq!(keys(&r), want);
    assert_eq!(keys(&c.json(&["verify", "--json"])), schema["verify"]);
    assert_eq!(keys(&c.json(&["stats", "--json"])), schema["stats"]);
    assert_eq!(keys(&c.json(&["prune", "--keep-last", "1", "--dry-run", "--json"])), schema["prune"]);
    assert_eq!(keys(&c.json(&["gc", "--dry-run", "--json"])), schema["gc"]);
    assert_eq!(keys(&c.json(&["rebuild-index", "--json"])), schema["rebuild_index"]);
    let v = c
        .cmd()
        .env("ALIKE_VAULT_PASSWORD", "v")
        .args(["vault", "--to", path_str(&c.p("vault")), "--init", "--json"])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert_eq!(keys(&serde_json::from_slice(&v.stdout).unwrap()), schema["vault"]);
    // `latest` without --vm is refused once the store holds two VMs (the library's rule).
    c.ok(&["backup", "--vm", "db", path_str(&img)]);
    let o = c.cmd().args(["restore", "latest", "-o", path_str(&c.p("x.img"))]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("`latest` needs a VM name"), "{o:?}");
}

/// A read-only bind mount of a directory, unmounted on drop.
struct RoMount(PathBuf);

impl RoMount {
    fn new(src: &Path, at: &Path) -> Option<RoMount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = |args: &[&str]| Command::new("mount").args(args).status().is_ok_and(|s| s.success());
        if !ok(&["--bind", path_str(src), path_str(at)]) {
            return None;
        }
        let m = RoMount(at.to_owned());
        ok(&["-o", "remount,bind,ro", path_str(at)]).then_some(m)
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A DR site with a read-only share: restore and verify work, with a warning,
/// and write nothing.
#[test]
fn a_read_only_store_restores_and_verifies() {
    let c = Cli::new();
    init_fast(&c);
    let img = c.p("d.img");
    sparse_image(&img, 4 << 20, 8, 7);
    c.ok(&["backup", "--vm", "web", path_str(&img)]);
    let Some(_m) = RoMount::new(&c.p("store"), &c.p("ro")) else {
        assert!(std::env::var_os("CI").is_none(), "a read-only bind mount is needed here (root, mount)");
        eprintln!("skipped: cannot make a read-only bind mount here");
        return;
    };
    let run = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_alike"));
        cmd.env("ALIKE_CACHE_DIR", c.p("cache-ro")).env("ALIKE_PASSWORD", "pw").env_remove("ALIKE_STORE");
        cmd.arg("--store").arg(c.p("ro")).args(args).output().unwrap()
    };
    let out = c.p("r.img");
    let o = run(&["restore", "latest", "--vm", "web", "-o", path_str(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("read-only"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha256_file(&out), sha256_file(&img));
    let o = run(&["verify", "--full"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not recorded"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["backup", "--vm", "web", path_str(&img)]);
    assert_eq!(o.status.code(), Some(1), "a backup into a read-only store fails");
}

/// `restore` never overwrites what it was not asked to: an existing file
/// (here the very image backed up) needs `--force`; FIFOs and character
/// devices are refused; a mounted block device is refused (EBUSY).
#[test]
fn restore_refuses_to_overwrite_without_force() {
    let c = Cli::new();
    init_fast(&c);
    let img = c.p("d.img");
    sparse_image(&img, 2 << 20, 6, 11);
    let before = sha256_file(&img);
    c.ok(&["backup", "--vm", "web", path_str(&img)]);
    std::fs::write(&img, b"changed since").unwrap();
    let o = c.cmd().args(["restore", "latest", "-o", path_str(&img)]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"), "{o:?}");
    assert_eq!(std::fs::read(&img).unwrap(), b"changed since", "the existing file was changed");
    c.ok(&["restore", "latest", "-o", path_str(&img), "--force"]);
    assert_eq!(sha256_file(&img), before);
    let fifo = c.p("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for (target, what) in [(path_str(&fifo), "a FIFO"), ("/dev/null", "a character device")] {
        let o = c.cmd().args(["restore", "latest", "--force", "-o", target]).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{target}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(what), "{target}: {o:?}");
    }
    // A mounted block device (a loop device with a filesystem on it).
    let dev_img = c.p("dev.img");
    std::fs::File::create(&dev_img).unwrap().set_len(8 << 20).unwrap();
    let attach = Command::new("losetup").args(["-f", "--show", path_str(&dev_img)]).output();
    let Some(dev) = attach.ok().filter(|o| o.status.success()).map(|o| String::from_utf8(o.stdout).unwrap()) else {
        assert!(std::env::var_os("CI").is_none(), "a loop device is needed here (root, losetup)");
        eprintln!("skipped the block-device case: no loop device");
        return;
    };
    let dev = dev.trim().to_string();
    let mnt = c.p("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mkfs = Command::new("mkfs.ext4").args(["-q", &dev]).status().unwrap().success();
    let mounted = mkfs && Command::new("mount").args([&dev, path_str(&mnt)]).status().unwrap().success();
    let o = c.cmd().args(["restore", "latest", "-o", &dev]).output().unwrap();
    if mounted {
        let _ = Command::new("umount").arg(&mnt).status();
    }
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    assert!(mounted, "could not mount a filesystem on {dev}");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("mounted or in use"), "{o:?}");
}

/// `alike serve-nbd`: one line on stdout once it listens; qemu-img reads
/// the version through it; Ctrl-C (SIGINT) stops it cleanly (status 0, a
/// summary, `--json`: the report); the socket and overlay options.
#[test]
fn serve_nbd_prints_where_it_listens_and_stops_on_ctrl_c() {
    use std::io::BufRead;
    if !alike_testing::require_tool("qemu-img") {
        return;
    }
    let c = Cli::new();
    init_fast(&c);
    let img = c.p("d.img");
    sparse_image(&img, 12 << 20, 20, 3);
    c.ok(&["backup", "--vm", "web", path_str(&img)]);
    let serve = |extra: &[&str], json: bool| {
        let mut child = c
            .cmd()
            .args(["serve-nbd", "latest", "--vm", "web"])
            .args(extra)
            .args(if json { &["--json"][..] } else { &[][..] })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        (child, out, line)
    };
    let stop = |mut child: std::process::Child, mut out: std::io::BufReader<std::process::ChildStdout>| {
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "serve-nbd after Ctrl-C: {status:?} {err}");
        (rest, err)
    };
    // TCP, a free port: "listening on nbd://127.0.0.1:PORT/disk0 (…)".
    let (child, out, line) = serve(&["--listen", "127.0.0.1:0"], false);
    assert!(line.starts_with("listening on nbd://127.0.0.1:") && line.contains("read-only"), "{line}");
    let uri = line.split_whitespace().nth(2).unwrap().to_string();
    assert!(uri.ends_with("/disk0"), "{uri}");
    let o = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(&uri)
        .arg(&img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (rest, err) = stop(child, out);
    assert!(rest.is_empty(), "one line only: {rest}");
    assert!(err.contains("served 1 connection(s)"), "{err}");
    // A Unix socket, --json: the listening line and the report are JSON.
    let sock = c.p("nbd.sock");
    let (child, out, line) = serve(&["--socket", path_str(&sock)], true);
    let l: Value = serde_json::from_str(&line).unwrap();
    let uri = l["exports"][0]["uri"].as_str().unwrap().to_string();
    assert!(uri.starts_with("nbd+unix:///disk0?socket="), "{uri}");
    let o = Command::new("qemu-img").args(["info", "--output=json"]).arg(&uri).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (rest, _) = stop(child, out);
    let report: Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(report["connections"], 1);
    assert!(!sock.exists());
    // Writable through an overlay, kept.
    let ov = c.p("overlay");
    let (child, out, line) =
        serve(&["--listen", "127.0.0.1:0", "--writable-overlay", path_str(&ov), "--keep-overlay"], false);
    assert!(line.contains("writable through overlay"), "{line}");
    let (_, err) = stop(child, out);
    assert!(err.contains("overlay kept at"), "{err}");
    assert!(ov.exists());
    // TLS: nbds://, and libnbd reads through it trusting the CA.
    if alike_testing::require_tool("nbdinfo") {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
        let creds = c.p("creds");
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::write(creds.join("ca-cert.pem"), ca.pem()).unwrap();
        let (cert_file, key_file) = (c.p("server-cert.pem"), c.p("server-key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let args = ["--listen", "127.0.0.1:0", "--tls-cert", path_str(&cert_file), "--tls-key", path_str(&key_file)];
        let (child, out, line) = serve(&args, false);
        assert!(line.starts_with("listening on nbds://127.0.0.1:") && line.contains("TLS required"), "{line}");
        let uri = line.split_whitespace().nth(2).unwrap().to_string();
        let o = Command::new("nbdinfo")
            .arg("--size")
            .arg(format!("{uri}?tls-certificates={}", creds.display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), (12u64 << 20).to_string());
        let plain = uri.replacen("nbds://", "nbd://", 1);
        let o = Command::new("nbdinfo").arg("--size").arg(&plain).output().unwrap();
        assert!(!o.status.success(), "a client without TLS got in");
        let (_, err) = stop(child, out);
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }
    // Refusals: two ways to listen; --keep-overlay alone; --all with an
    // overlay; a TLS key without its certificate and the other way round;
    // a client CA without TLS.
    for bad in [
        &["--listen", "127.0.0.1:0", "--socket", "x"][..],
        &["--keep-overlay"][..],
        &["--all", "--writable-overlay", "x"][..],
        &["--tls-key", "k.pem"][..],
        &["--tls-cert", "c.pem"][..],
        &["--tls-ca", "ca.pem"][..],
    ] {
        let o = c.cmd().args(["serve-nbd", "latest"]).args(bad).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let o = c.cmd().args(["serve-nbd", "latest", "--disk", "7"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no disk 7"));
}

/// `alike ls` and `alike extract` as scripts use them: volumes, entries,
/// the extracted tree equal to the source, `--json` as the reports' schema,
/// exit status 1 when entries fail, 2 for conflicting flags.
#[test]
fn ls_and_extract_as_documented() {
    use alike_testing::tree::{assert_same_tree, build_tree, mkfs, need};
    if !need(&["mkfs.ext4"]) {
        return;
    }
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/report-schema.json")).unwrap(),
    )
    .unwrap();
    let c = Cli::new();
    init_fast(&c);
    let src = c.p("src");
    build_tree(&src);
    let img = c.p("fs.img");
    mkfs("ext4", &src, &img, 48, &[]);
    c.ok(&["backup", "--vm", "files", path_str(&img)]);

    let vols = c.ok(&["ls", "latest"]);
    assert!(vols.contains("disk") && vols.contains("ext4"), "{vols}");
    let j = c.json(&["ls", "latest", "--json"]);
    assert_eq!(keys(&j), schema["ls_volumes"]);
    assert_eq!(j["volumes"][0]["filesystem"], "ext4");
    let listing = c.ok(&["ls", "latest", "/"]);
    assert!(listing.contains("link-absolute -> /etc/passwd"), "{listing}");
    assert!(listing.contains("-rwxr-xr-x") && listing.contains("exec.sh"), "{listing}");
    let j = c.json(&["ls", "latest", "--vm", "files", "--disk", "0", "/nested", "--json"]);
    assert_eq!(keys(&j), schema["ls"]);
    assert_eq!(j["entries"][0]["path"], "/nested/a");

    let out = c.p("out");
    c.ok(&["extract", "latest", "/", "--to", path_str(&out)]);
    std::fs::remove_dir(out.join("lost+found")).unwrap();
    assert_same_tree(&src, &out);
    // Again: every top-level name exists; each fails, JSON still printed, exit 1.
    let o =
        c.cmd().args(["extract", "latest", "/size-1", "/nested", "--to", path_str(&out), "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(keys(&r), schema["extract"]);
    assert_eq!(r["failures"].as_array().unwrap().len(), 2);
    assert_eq!(r["failures"][0]["kind"], "already_exists");
    assert!(String::from_utf8_lossy(&o.stderr).contains("2 entries could not be extracted"), "{o:?}");
    c.ok(&["extract", "latest", "/size-1", "/nested", "--to", path_str(&out), "--force"]);
    // Flags that conflict are a usage error; a path that names nothing is an error.
    let o = c.cmd().args(["ls", "latest", "--partition", "1", "--volume", "v/l", "/"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = c.cmd().args(["extract", "latest", "/missing", "--to", path_str(&c.p("o2"))]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found: /missing"), "{o:?}");
    assert!(!c.p("o2").exists() || std::fs::read_dir(c.p("o2")).unwrap().count() == 0);
}

#[test]
fn write_only_key_backs_up_but_restore_and_full_verify_fail_naming_why() {
    let c = Cli::new();
    c.ok(&["init", "--writer-keys"]);
    let key = c.p("writer.key");
    let j = c.json(&["key", "add-writer", "--output", path_str(&key), "--json"]);
    assert_eq!(j["write_only"], true);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // Never over an existing file.
    let o = c.cmd().args(["key", "add-writer", "--output", path_str(&key)]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));

    let other = c.p("other.img");
    sparse_image(&other, 4 << 20, 6, 2);
    c.ok(&["backup", "--vm", "other", path_str(&other)]);
    let img = c.p("d.img");
    sparse_image(&img, 8 << 20, 10, 3);
    let w = |args: &[&str]| {
        let mut cmd = c.cmd();
        cmd.env_remove("ALIKE_PASSWORD").arg("--key-file").arg(&key).args(args);
        cmd.output().unwrap()
    };
    let o = w(&["backup", "--vm", "web", path_str(&img), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"].as_str().unwrap().to_string();
    let o = w(&["backup", "--vm", "web", path_str(&img), "--json"]);
    assert!(o.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap()["new_bytes"], 0);

    for (vm, out) in [("other", "o.img"), ("web", "w.img")] {
        let o = w(&["restore", "latest", "--vm", vm, "--output", path_str(&c.p(out))]);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("write-only key") && err.lines().count() == 1, "{err}");
        assert!(!c.p(out).exists());
    }
    let o = w(&["verify", "--full"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("write-only key"));
    assert!(w(&["verify"]).status.success(), "a quick verify needs no data");

    // The full key restores the writer's version bit-exact and verifies everything.
    let out = c.p("r.img");
    c.ok(&["restore", &id[..12], "--output", path_str(&out)]);
    assert_eq!(sha256_file(&out), sha256_file(&img));
    assert!(c.json(&["verify", "--full", "--json"])["ok"].as_bool().unwrap());

    // A damaged key file: a clear one-line error, none of its bytes.
    let mut bytes = std::fs::read(&key).unwrap();
    bytes[40] ^= 1;
    std::fs::write(c.p("bad.key"), &bytes).unwrap();
    let mut cmd = c.cmd();
    let o = cmd.env_remove("ALIKE_PASSWORD").arg("--key-file").arg(c.p("bad.key")).arg("versions").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("checksum"), "{err}");
}
