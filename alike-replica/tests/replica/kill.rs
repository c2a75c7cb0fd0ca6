//! Never torn: a child process (this test binary, re-run as
//! `kill::child`) replicates generation after generation of a two-disk VM
//! into a replica folder, keeping the last 3 points every third run (so
//! merges run too),
//! and is SIGKILLed at a random moment. Afterwards the replica's newest
//! point is the last generation the child reported committed or the one it
//! was writing, every point still listed reads back bit-exact (also through
//! the independent VHDX decoder), the record is right, and the next child's
//! first run succeeds.
//!
//! Kills: at least 10 in the test command; `ALIKE_SOAK=N` demands N (for
//! instance 100). Every failure prints its seed; `ALIKE_KILL_SEED` replays
//! one.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alike_replica::{ReplicaDir, ReplicaTarget};
use alike_testing::Rng;

use crate::{MIB, Vm, assert_no_leftovers, assert_point, assert_record_fresh};

const CHILD: &str = "ALIKE_REPLICA_KILL_CHILD";
const SIZES: [usize; 2] = [6 * MIB, 3 * MIB + 1536];
/// Generations a child runs before it exits by itself.
const PER_CHILD: u64 = 4;

/// The VM at generation `g` (generation 0 is the initial state).
fn state(seed: u64, g: u64, cache: &mut HashMap<u64, Vm>) -> Vm {
    if let Some(v) = cache.get(&g) {
        return v.clone();
    }
    let v = if g == 0 {
        Vm::new(seed, &SIZES)
    } else {
        let mut v = state(seed, g - 1, cache);
        v.evolve(seed, g);
        v
    };
    cache.insert(g, v.clone());
    v
}

/// The child: replicates generations `from..from + PER_CHILD` (the point's
/// time is its generation), keeping 3 points after every third, and says
/// so after each.
#[test]
fn child() {
    let Ok(dir) = std::env::var(CHILD) else { return };
    let seed: u64 = std::env::var("ALIKE_KILL_SEED_CHILD").unwrap().parse().unwrap();
    let from: u64 = std::env::var("ALIKE_KILL_FROM").unwrap().parse().unwrap();
    let r = ReplicaDir::builder().vm("killed").open_or_create(&dir).unwrap();
    let mut cache = HashMap::new();
    for g in from..from + PER_CHILD {
        let vm = state(seed, g, &mut cache);
        // Merge every third run, so that kills land in runs as often as in merges.
        let rep = vm.replicate(&r, g, (g % 3 == 0).then_some(3));
        // Said only once the run (and its merge) is done; flushed at once, as the kill may come next.
        let mut out = std::io::stdout().lock();
        writeln!(out, "committed {} {g}", rep.point).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_at_random_moments_never_tears_the_replica() {
    let seed = std::env::var("ALIKE_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("replica kill harness seed: {seed} (replay with ALIKE_KILL_SEED={seed})");
    let want_kills: u32 = std::env::var("ALIKE_SOAK").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut rng = Rng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    let mut cache = HashMap::new();
    let exe = std::env::current_exe().unwrap();
    let spawn = |from: u64| {
        Command::new(&exe)
            .args(["kill::child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, &dir)
            .env("ALIKE_KILL_SEED_CHILD", seed.to_string())
            .env("ALIKE_KILL_FROM", from.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let committed_lines = |out: &mut dyn std::io::Read| -> Vec<u64> {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| {
                // libtest may print "test kill::child ... " before the first line.
                let at = l.find("committed ")?;
                l[at..].split(' ').nth(2).map(|g| g.parse().unwrap())
            })
            .collect()
    };

    // A first child that runs to the end, to learn how long a child takes.
    let t0 = Instant::now();
    let out = spawn(1).wait_with_output().unwrap();
    assert!(out.status.success(), "seed {seed}: first child failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut typical = t0.elapsed();
    let mut before = crate::names(&dir);
    let mut last = PER_CHILD; // the newest generation committed
    let (mut kills, mut rounds) = (0u32, 0u32);
    let mut phases: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    while kills < want_kills {
        rounds += 1;
        assert!(rounds <= want_kills * 4 + 20, "seed {seed}: only {kills} kills landed in {rounds} rounds");
        let delay = Duration::from_micros(rng.below(typical.as_micros() as u64));
        let started = Instant::now();
        let mut child = spawn(last + 1);
        std::thread::sleep(delay);
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let status = child.wait().unwrap();
        let reported = committed_lines(child.stdout.as_mut().unwrap());
        if !killed {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(status.success(), "seed {seed}: a child after a kill failed: {err}");
            typical = typical.max(started.elapsed());
        }
        let said = reported.last().copied().unwrap_or(last);
        // The invariant.
        let what = format!("seed {seed}, round {rounds} (killed: {killed}, after {delay:?})");
        let r = ReplicaDir::open(&dir).unwrap();
        let points = r.points().unwrap();
        let newest = points.last().unwrap().time_ms;
        assert!(
            newest == said || (killed && newest == said + 1),
            "{what}: the replica is at generation {newest}, the child said {said}"
        );
        for p in &points {
            assert_point(&r, p.point, &state(seed, p.time_ms, &mut cache), &what);
        }
        assert_record_fresh(&r, &what);
        if killed {
            *phases.entry(phase(&r, &before)).or_insert(0) += 1;
        }
        r.repair().unwrap();
        assert_no_leftovers(&r, &what);
        before = crate::names(r.path());
        last = newest;
    }
    // The last kill is followed by a whole child too.
    let out = spawn(last + 1).wait_with_output().unwrap();
    assert!(out.status.success(), "seed {seed}: the last child failed: {}", String::from_utf8_lossy(&out.stderr));
    let r = ReplicaDir::open(&dir).unwrap();
    let newest = r.points().unwrap().last().unwrap().time_ms;
    assert_eq!(newest, last + PER_CHILD, "seed {seed}");
    assert_point(&r, r.points().unwrap().last().unwrap().point, &state(seed, newest, &mut cache), "the last child");
    eprintln!(
        "replica kill harness: {kills} kills in {rounds} rounds, generation {last} (seed {seed}); where they landed, by what they left: {phases:?}"
    );
}

/// Where a kill landed, judged by what it left in the folder that was not
/// there `before` the child started.
fn phase(r: &ReplicaDir, before: &[String]) -> &'static str {
    let points = r.points().unwrap();
    let newest = points.last().unwrap().point;
    let listed: Vec<String> = points.iter().flat_map(|p| p.disks.iter().map(|d| d.location.clone())).collect();
    let left: Vec<String> = crate::names(r.path())
        .into_iter()
        .filter(|n| n.starts_with('.') || (n.starts_with("disk") && !listed.contains(n)) || n.starts_with("record-"))
        .filter(|n| *n != format!("record-{newest:08}.bin") && !before.contains(n))
        .collect();
    let point_of = |n: &str| n.split("-p").nth(1).and_then(|x| x.get(..8)).and_then(|x| x.parse::<u64>().ok());
    if left.is_empty() {
        "nothing left over (before a run made its files, or between steps)"
    } else if left
        .iter()
        .any(|n| n.contains(".vhdx") || (n.contains(".avhdx") && point_of(n).is_some_and(|p| p <= newest)))
    {
        "merging"
    } else if left.iter().any(|n| n.contains(".alike-partial-")) {
        "writing a point"
    } else {
        "committing (point sealed, manifest not yet replaced)"
    }
}
