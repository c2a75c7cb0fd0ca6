//! Crash safety: SIGKILL the `alike` process at random moments during
//! backup, prune, gc and rebuild-index; after every kill the store reopens,
//! `verify --full` passes, every version committed before the kill restores
//! bit-exact, and a rerun of the interrupted job succeeds (reusing what was
//! already stored).
//!
//! Kills per operation: `ALIKE_KILLS` (default 3 in the test command; the
//! full suite runs with `ALIKE_KILLS=50`). Every failure prints its seed;
//! `ALIKE_KILL_SEED` replays one.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alike_testing::{Rng, sha256_file, sparse_image};
use serde_json::Value;

struct Harness {
    dir: tempfile::TempDir,
    rng: Rng,
    seed: u64,
    /// Committed version id → sha256 of the image it was made from.
    committed: HashMap<String, String>,
    kills: u32,
}

impl Harness {
    fn new() -> Harness {
        let seed = std::env::var("ALIKE_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("kill harness seed: {seed} (replay with ALIKE_KILL_SEED={seed})");
        Harness { dir: tempfile::tempdir().unwrap(), rng: Rng::new(seed), seed, committed: HashMap::new(), kills: 0 }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_alike"));
        c.env("ALIKE_CACHE_DIR", self.p("cache")).env("ALIKE_PASSWORD", "pw").env_remove("ALIKE_STORE");
        c.arg("--store").arg(self.p("store")).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let o = self.cmd().args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "seed {}: alike {args:?} failed: {err}", self.seed);
        out
    }
    /// Runs `args`, kills it after a random part of `typical`; returns whether it was killed.
    fn kill_during(&mut self, args: &[&str], typical: Duration) -> bool {
        let delay = Duration::from_micros(self.rng.below(typical.as_micros().max(1) as u64));
        let mut child = self.cmd().args(args).spawn().unwrap();
        std::thread::sleep(delay);
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            child.kill().unwrap(); // SIGKILL
            self.kills += 1;
        }
        child.wait().unwrap();
        killed
    }
    fn versions(&self) -> Vec<String> {
        let v: Value = serde_json::from_str(&self.ok(&["versions", "--json"])).unwrap();
        v.as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().to_string()).collect()
    }
    /// The invariant after every kill.
    fn check(&mut self, what: &str) {
        let listed = self.versions();
        let (ok, out, err) = self.run(&["verify", "--full", "--json"]);
        assert!(ok, "seed {}: verify --full failed after a kill during {what}: {err}\n{out}", self.seed);
        for (id, sha) in &self.committed {
            if !listed.contains(id) {
                continue; // removed by a prune (or forget) that ran before the kill
            }
            let out = self.p("check.img");
            self.ok(&["restore", id, "--force", "--output", out.to_str().unwrap()]);
            assert_eq!(&sha256_file(&out), sha, "seed {}: version {id} differs after a kill during {what}", self.seed);
        }
        // A version listed but not committed by us can only come from the killed job itself: it must be whole too (verify passed).
        self.committed.retain(|id, _| listed.contains(id));
    }
    fn backup(&mut self, vm: &str, img: &Path) -> Value {
        let out = self.ok(&["backup", "--vm", vm, "--json", img.to_str().unwrap()]);
        let j: Value = serde_json::from_str(&out).unwrap();
        self.committed.insert(j["id"].as_str().unwrap().to_string(), sha256_file(img));
        j
    }
}

fn kills_per_op() -> u32 {
    std::env::var("ALIKE_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}

/// Kills that must land per operation. A soak (`ALIKE_KILLS` set) demands all
/// of them; the quick run demands one each, since on a loaded machine some
/// operations finish before a random kill time more often.
fn required_kills(n: u32) -> u32 {
    if std::env::var_os("ALIKE_KILLS").is_some() { n } else { 1 }
}

fn timed(h: &Harness, args: &[&str]) -> Duration {
    let t = Instant::now();
    h.ok(args);
    t.elapsed()
}

#[test]
fn sigkill_during_backup_prune_gc_and_rebuild_index() {
    let mut h = Harness::new();
    h.ok(&["init", "--no-encryption"]);
    let n = kills_per_op();
    let mk = |h: &Harness, name: &str, seed: u64| {
        let p = h.p(name);
        sparse_image(&p, 16 << 20, 30, seed);
        p
    };
    let base = mk(&h, "base.img", 1);
    let t = Instant::now();
    h.backup("vm", &base);
    // Kill within the time a backup of this size takes, so most kills land mid-run.
    let backup_time = t.elapsed();
    h.check("setup");

    // Backup: kill mid-way, then the rerun must succeed and reuse what the killed run stored.
    let mut reused_somewhere = false;
    let mut killed = 0;
    for i in 0..n * 6 {
        // Go on until a rerun also reused a killed run's pack: kills that land
        // before the first pack is placed leave nothing to reuse.
        if killed >= n && reused_somewhere {
            break;
        }
        let img = mk(&h, &format!("b{i}.img"), 100 + i as u64);
        if h.kill_during(&["backup", "--vm", "vm", img.to_str().unwrap()], backup_time) {
            killed += 1;
            h.check("backup");
        }
        let j = h.backup("vm", &img);
        // Each image's data is new to the store (its own seed): a rerun that stores
        // less than all of it reused chunks the killed run had packed.
        let new = j["new_bytes"].as_u64().unwrap();
        let data = j["disks"][0]["data_bytes"].as_u64().unwrap();
        if new < data {
            reused_somewhere = true;
        }
        h.check("backup rerun");
        // Keep the number of versions (and so each check's restores) bounded.
        h.ok(&["prune", "--keep-last", "4"]);
    }
    assert!(killed >= required_kills(n), "seed {}: only {killed} backups were killed mid-way", h.seed);
    assert!(reused_somewhere, "seed {}: no rerun reused what a killed backup had stored", h.seed);

    // Prune, gc, rebuild-index: keep trying until n kills landed mid-run (bounded).
    let mut landed: HashMap<&str, u32> =
        HashMap::from([("backup", killed), ("prune", 0), ("gc", 0), ("rebuild-index", 0)]);
    let attempts = if std::env::var_os("ALIKE_KILLS").is_some() { n * 8 } else { n * 3 };
    // Each kill time is drawn below the measured length of the last complete run
    // of the same operation, so the kill lands mid-run unless the run got faster.
    let mut last: HashMap<&str, Duration> = HashMap::from([
        ("prune", timed(&h, &["prune", "--keep-last", "3"])),
        ("gc", timed(&h, &["gc"])),
        ("rebuild-index", timed(&h, &["rebuild-index"])),
    ]);
    for attempt in 0..attempts {
        if landed.values().all(|k| *k >= n) {
            break;
        }
        // Something for prune and gc to remove.
        let img = mk(&h, "g.img", 1000 + attempt as u64);
        h.backup("vm", &img);
        for (op, args) in [
            ("prune", &["prune", "--keep-last", "3"][..]),
            ("gc", &["gc"][..]),
            ("rebuild-index", &["rebuild-index"][..]),
        ] {
            if landed[op] < n && h.kill_during(args, last[op]) {
                *landed.get_mut(op).unwrap() += 1;
                h.check(op);
            }
            last.insert(op, timed(&h, args));
            h.check(&format!("{op} rerun"));
        }
    }
    eprintln!("kills landed per operation: {landed:?}");
    for (op, k) in &landed {
        assert!(*k >= required_kills(n), "seed {}: only {k} kills landed during {op}", h.seed);
    }

    // The newest version's image is still stored: backing it up again adds nothing.
    let j = h.backup("vm", &h.p("g.img"));
    assert_eq!(j["new_bytes"], 0, "seed {}: dedup lost after index rebuilds", h.seed);
    eprintln!("kill harness: {} kills survived (seed {})", h.kills, h.seed);
}

/// Two backups of the same VM at once, beside a gc and a prune, round after
/// round (`ALIKE_SOAK` rounds; 3 in the test command): every process
/// succeeds (gc may find another gc busy), and after each round `verify
/// --full` passes and every version listed restores bit-exact. Prints the
/// rounds, the versions made and the time taken.
#[test]
fn two_backups_of_one_vm_beside_gc_and_prune() {
    let mut h = Harness::new();
    h.ok(&["init", "--no-encryption"]);
    let rounds: u32 = std::env::var("ALIKE_SOAK").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let started = Instant::now();
    let mut made = 0;
    for round in 0..rounds {
        let imgs: Vec<PathBuf> = (0..2)
            .map(|i| {
                let p = h.p(&format!("r{round}-{i}.img"));
                sparse_image(&p, 12 << 20, 24, h.seed ^ u64::from(round * 2 + i));
                p
            })
            .collect();
        let spawn = |args: &[&str]| h.cmd().args(args).spawn().unwrap();
        let b1 = spawn(&["backup", "--vm", "same", "--json", imgs[0].to_str().unwrap()]);
        let b2 = spawn(&["backup", "--vm", "same", "--json", imgs[1].to_str().unwrap()]);
        let gc = spawn(&["gc"]);
        let prune = spawn(&["prune", "--vm", "same", "--keep-last", "3"]);
        for (b, img) in [(b1, &imgs[0]), (b2, &imgs[1])] {
            let o = b.wait_with_output().unwrap();
            assert!(o.status.success(), "seed {} round {round}: {}", h.seed, String::from_utf8_lossy(&o.stderr));
            let j: Value = serde_json::from_slice(&o.stdout).unwrap();
            h.committed.insert(j["id"].as_str().unwrap().to_string(), sha256_file(img));
            made += 1;
        }
        let o = gc.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() || err.contains("Locked") || err.contains("lock"), "seed {}: gc: {err}", h.seed);
        let o = prune.wait_with_output().unwrap();
        assert!(o.status.success(), "seed {}: prune: {}", h.seed, String::from_utf8_lossy(&o.stderr));
        h.check(&format!("round {round}"));
    }
    eprintln!(
        "soak: {rounds} round(s), {made} backups of one VM beside gc and prune, {} versions kept, {:.1} s",
        h.versions().len(),
        started.elapsed().as_secs_f64()
    );
}
