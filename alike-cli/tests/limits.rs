//! The `alike` command against bad input and secrets: bounded secret files
//! never echoed, key files never overwritten and private, numeric options
//! with ranges, what is not a disk refused, a folder in use named, and no
//! password in clear to a pool across the network.
#![allow(missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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
    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_alike"));
        c.env("ALIKE_CACHE_DIR", self.p("cache")).env("ALIKE_PASSWORD", "pw").env_remove("ALIKE_STORE");
        c.arg("--store").arg(self.p("store")).args(args);
        c.output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> Output {
        let o = self.run(args);
        assert!(o.status.success(), "alike {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        o
    }
    /// Fails with exit status 1 and a one-line error holding every needle.
    fn fails(&self, args: &[&str], needles: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "alike {args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "alike {args:?}: {n:?} not in {err}");
        }
        err
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn init_key_file_is_private_and_never_overwritten() {
    let c = Cli::new();
    let kf = c.p("store.key");
    c.ok(&["--key-file", s(&kf), "init"]);
    assert_eq!(std::fs::metadata(&kf).unwrap().permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&kf).unwrap();
    let other = c.p("other");
    let o = Command::new(env!("CARGO_BIN_EXE_alike"))
        .env("ALIKE_CACHE_DIR", c.p("cache"))
        .env("ALIKE_PASSWORD", "pw")
        .args(["--store", s(&other), "--key-file", s(&kf), "init"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("already exists") && err.contains("store.key"), "{err}");
    assert_eq!(std::fs::read(&kf).unwrap(), before, "the first store's key is intact");
    c.ok(&["--key-file", s(&kf), "versions"]);
}

#[test]
fn secret_files_are_bounded_regular_files_never_echoed() {
    let c = Cli::new();
    c.ok(&["init"]);
    for flag in ["--password-file", "--key-file"] {
        let started = Instant::now();
        c.fails(&[flag, "/dev/zero", "versions"], &["not a regular file"]);
        assert!(started.elapsed() < Duration::from_secs(20), "{flag} /dev/zero is not read forever");
    }
    let big = c.p("big");
    std::fs::File::create(&big).unwrap().set_len(1 << 30).unwrap();
    c.fails(&["--key-file", s(&big), "versions"], &["larger than 64 KiB"]);
    c.fails(&["--password-file", s(&big), "versions"], &["larger than 64 KiB"]);
    // A passphrase file passed as a key file: none of it in the error.
    let pw = c.p("passphrase.txt");
    std::fs::write(&pw, "line1secret\nline2\n").unwrap();
    let err = c.fails(&["--key-file", s(&pw), "versions"], &["not an alike key file"]);
    assert!(!err.contains("6c696e65") && !err.contains("line1") && !err.contains("secret"), "{err}");
}

#[test]
fn threads_have_a_maximum() {
    let c = Cli::new();
    c.ok(&["init"]);
    let img = c.p("d.img");
    std::fs::write(&img, vec![7u8; 1 << 20]).unwrap();
    let id = String::from_utf8(c.ok(&["backup", "--vm", "web", s(&img)]).stdout).unwrap();
    let started = Instant::now();
    for n in ["1025", "1000000", "18446744073709551615"] {
        let msg = format!("{n} worker threads: at most 1024");
        c.fails(&["backup", "--vm", "web", s(&img), "--threads", n], &[&msg]);
        c.fails(&["restore", id.trim(), "--output", s(&c.p("r.img")), "--threads", n], &[&msg]);
    }
    assert!(started.elapsed() < Duration::from_secs(60), "refused at once");
    c.fails(&["vault", "--to", s(&c.p("vault")), "--init", "--bwlimit", "0.5"], &["at least 1024"]);
    assert!(!c.p("vault").exists(), "refused before the vault is created");
    let c2 = Cli::new();
    c2.fails(&["init", "--compression-level", "99"], &["zstd level 99"]);
}

#[test]
fn devices_are_not_disks_and_empty_disks_only_when_asked_for() {
    let c = Cli::new();
    c.ok(&["init"]);
    for dev in ["/dev/zero", "/dev/urandom", "/dev/null"] {
        c.fails(&["backup", "--vm", "web", dev], &["is a character device, not a disk"]);
    }
    let empty = c.p("empty.img");
    std::fs::write(&empty, b"").unwrap();
    c.fails(&["backup", "--vm", "web", s(&empty)], &["empty disk (0 bytes)", "--allow-empty"]);
    let o = c.ok(&["backup", "--vm", "web", s(&empty), "--allow-empty"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is empty: backed up as a disk of 0 bytes"), "{err}");
}

#[test]
fn init_in_a_folder_in_use_says_what_it_holds() {
    let c = Cli::new();
    std::fs::create_dir_all(c.p("store/Documents")).unwrap();
    std::fs::write(c.p("store/notes.txt"), b"mine").unwrap();
    c.fails(&["init"], &["holds no store", "2 entries", "Documents/", "notes.txt"]);
    assert_eq!(std::fs::read(c.p("store/notes.txt")).unwrap(), b"mine");
}

#[test]
fn no_xapi_password_in_clear_across_the_network() {
    let xen = |args: &[&str]| {
        let mut v = vec!["xen", "--user", "root"];
        v.extend_from_slice(args);
        v.push("vms");
        let o = Command::new(env!("CARGO_BIN_EXE_alike")).env("ALIKE_XEN_PASSWORD", "pw").args(&v).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let fp = "AB:".repeat(31) + "AB";
    let (code, err) = xen(&["--url", "http://127.0.0.1:9", "--fingerprint", &fp]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("plain HTTP") && err.contains("https://"), "{err}");
    let (code, err) = xen(&["--url", "http://192.0.2.1:8080"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("in clear") && err.contains("--insecure"), "{err}");
    // With --insecure it goes on (and finds nothing listening on this machine).
    let (code, err) = xen(&["--url", "http://0.0.0.0:9", "--insecure"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("in clear"), "{err}");
}
