//! `alike replicate` and `alike replica` end to end, through the binary:
//! both ends in one process (image files raw, VHD and VHDX), two processes
//! over loopback TCP (push and pull), a delaying proxy on the link
//! (pipelining: a 50 ms round trip costs little), and SIGKILL of the sender,
//! the receiver or the link at random moments (never a torn replica).
//!
//! Kills: at least 10 in the test command; `ALIKE_SOAK=N` demands N (for
//! instance 100). Every failure prints its seed; `ALIKE_KILL_SEED` replays one.
#![allow(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alike_core::{CancelToken, DiskSource, MemSource};
use alike_replica::{ReplicaDir, ReplicaTarget, cut_disk};
use alike_testing::Rng;
use serde_json::Value;

const MIB: usize = 1 << 20;

fn alike() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_alike"));
    c.env_remove("ALIKE_STORE").env_remove("ALIKE_PASSWORD").stdin(Stdio::null());
    c
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = alike().args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = run(args);
    assert!(ok, "alike {args:?} failed: {err}");
    out
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

/// A JSON value's keys, recursively (objects by keys, arrays by their first element).
fn keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), keys(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(keys).into_iter().collect()),
        _ => Value::Null,
    }
}

/// The pinned keys of report `name` (`testdata/report-schema.json`).
fn schema(name: &str) -> Value {
    let all: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/report-schema.json")).unwrap(),
    )
    .unwrap();
    all[name].clone()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A disk of `n` bytes: random stretches, repeated text, and holes.
fn disk(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut d = vec![0u8; n];
    let mut at = 0;
    while at < n {
        let end = (at + (64 << 10) + rng.below(400 << 10) as usize).min(n);
        match rng.below(3) {
            0 => rng.fill(&mut d[at..end]),
            1 => d[at..end].iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8 ^ (at / 4096) as u8),
            _ => {}
        }
        at = end;
    }
    d
}

/// Random 4 KiB blocks written at random 4 KiB-aligned places.
fn scatter(d: &mut [u8], rng: &mut Rng, count: usize) {
    for _ in 0..count {
        let at = rng.below((d.len() / 4096) as u64) as usize * 4096;
        rng.fill(&mut d[at..at + 4096]);
    }
}

fn read_all(src: &dyn DiskSource) -> Vec<u8> {
    let mut v = vec![0u8; src.size() as usize];
    for (i, c) in v.chunks_mut(4 * MIB).enumerate() {
        src.read_at((i * 4 * MIB) as u64, c).unwrap();
    }
    v
}

/// The chunks of `new` the replica (holding `old`) lacks anywhere: their
/// bytes, and the sum of their zstd-compressed sizes.
fn lacking(dir: &Path, old: &[Vec<u8>], new: &[Vec<u8>]) -> (u64, u64) {
    let r = ReplicaDir::open(dir).unwrap();
    let keys = r.keys().unwrap();
    let cut = |d: &Vec<u8>| {
        cut_disk(&MemSource { label: "x".into(), data: d.clone() }, &r.chunking(), &keys, &CancelToken::new()).unwrap()
    };
    let held: HashSet<[u8; 32]> = old.iter().flat_map(&cut).map(|e| e.id.0).collect();
    let (mut raw, mut z) = (0, 0);
    for n in new {
        for e in cut(n).into_iter().filter(|e| !held.contains(&e.id.0)) {
            let b = &n[e.offset as usize..(e.offset + e.len) as usize];
            raw += e.len;
            z += alike_core::compress(b, 3).map_or(b.len(), |c| c.len()) as u64;
        }
    }
    (raw, z)
}

/// Every disk of `point` exported with `alike replica export` equals `want`.
fn assert_exports(dir: &Path, tmp: &Path, point: u64, want: &[Vec<u8>]) {
    for (d, w) in want.iter().enumerate() {
        let out = tmp.join(format!("export-{point}-{d}.img"));
        let _ = std::fs::remove_file(&out);
        ok(&[
            "replica",
            "export",
            s(dir),
            "--point",
            &point.to_string(),
            "--disk",
            &d.to_string(),
            "--output",
            s(&out),
        ]);
        assert!(std::fs::read(&out).unwrap() == *w, "point {point} disk {d} differs from the source at that time");
    }
}

fn write_images(tmp: &Path, tag: &str, disks: &[Vec<u8>]) -> Vec<PathBuf> {
    disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let p = tmp.join(format!("{tag}-disk{i}.img"));
            std::fs::write(&p, d).unwrap();
            p
        })
        .collect()
}

#[test]
fn replicate_to_dir_sends_only_what_changed_and_every_point_exports_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = t.join("replica");
    let mut rng = Rng::new(42);
    let g1 = vec![disk(1, 10 * MIB), disk(2, 3 * MIB + 512 * 7)];
    let imgs = write_images(t, "src", &g1);
    let first = json(&["replicate", "--vm", "web", "--to-dir", s(&dir), s(&imgs[0]), s(&imgs[1]), "--json"]);
    assert_eq!(first["point"], 1);
    assert_eq!(keys(&first), schema("replicate"), "--json prints the library's report");
    assert_eq!(first["read_bytes"].as_u64().unwrap(), (g1[0].len() + g1[1].len()) as u64);
    let (raw1, z1) = lacking(&dir, &[vec![0; g1[0].len()], vec![0; g1[1].len()]], &g1);
    assert_eq!(first["needed_bytes"].as_u64().unwrap(), raw1);
    let sent1 = first["sent_bytes"].as_u64().unwrap();
    assert!(sent1 <= z1 + (256 << 10) && sent1 * 2 > z1, "first run: sent {sent1}, chunks compress to {z1}");

    // Scattered blocks change; the second run sends only the chunks that hold them.
    let mut g2 = g1.clone();
    scatter(&mut g2[0], &mut rng, 30);
    scatter(&mut g2[1], &mut rng, 8);
    let imgs = write_images(t, "src", &g2);
    let out = ok(&["replicate", "--vm", "web", "--to-dir", s(&dir), s(&imgs[0]), s(&imgs[1])]);
    assert_eq!(out.trim(), "2", "the new point's id, alone on stdout");
    let (raw2, z2) = lacking(&dir, &g1, &g2);
    let h = json(&["replica", "history", s(&dir), "--json"]);
    assert_eq!(keys(&h[1]), schema("replication_record"));
    assert_eq!(h.as_array().unwrap().len(), 2);
    assert_eq!(h[1]["point"], 2);
    assert_eq!(h[1]["result"], "ok");
    let sent2 = h[1]["sent_bytes"].as_u64().unwrap();
    // What crossed: the compressed changed chunks, plus offers (44 bytes per
    // chunk of the disks, read whole: raw images have no change tracking) and framing.
    let offers = 44 * ((g2[0].len() + g2[1].len()) as u64 / (16 << 10));
    assert!(raw2 > 0 && raw2 < 3 * MIB as u64, "{raw2}");
    assert!(sent2 <= z2 + offers + (64 << 10), "second run: sent {sent2} for {z2} compressed bytes of changed chunks");
    assert!(sent2 * 4 < sent1, "sent {sent2} then {sent1}");

    // The same VM from VHDX and VHD files: formats differ, content decides.
    let mut g3 = g2.clone();
    scatter(&mut g3[0], &mut rng, 5);
    let imgs = write_images(t, "src", &g3);
    let mut points = vec![(1u64, g1.clone()), (2, g2.clone())];
    if alike_testing::require_tool("qemu-img") {
        let vhdx = t.join("d0.vhdx");
        let vhd = t.join("d1.vhd");
        let conv = |fmt: &str, from: &Path, to: &Path, extra: &[&str]| {
            let st = Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", fmt])
                .args(extra)
                .arg(from)
                .arg(to)
                .status();
            assert!(st.unwrap().success());
        };
        conv("vhdx", &imgs[0], &vhdx, &[]);
        conv("vpc", &imgs[1], &vhd, &["-o", "subformat=dynamic,force_size=on"]);
        let r = json(&["replicate", "--vm", "web", "--to-dir", s(&dir), s(&vhdx), s(&vhd), "--json"]);
        assert_eq!(r["point"], 3);
        let (raw3, _) = lacking(&dir, &g2, &g3);
        assert_eq!(r["needed_bytes"].as_u64().unwrap(), raw3);
        points.push((3, g3.clone()));
    }

    // keep: the oldest points merge away; the rest read as they were.
    let mut g4 = g3.clone();
    scatter(&mut g4[1], &mut rng, 3);
    let imgs = write_images(t, "src", &g4);
    let r = json(&["replicate", "--vm", "web", "--to-dir", s(&dir), s(&imgs[0]), s(&imgs[1]), "--keep", "2", "--json"]);
    let p4 = r["point"].as_u64().unwrap();
    points.push((p4, g4));
    let list = json(&["replica", "list", s(&dir), "--json"]);
    assert_eq!(keys(&list[0]), schema("replica_point"));
    let listed: Vec<u64> = list.as_array().unwrap().iter().map(|p| p["point"].as_u64().unwrap()).collect();
    let kept: Vec<u64> = points.iter().rev().take(2).rev().map(|p| p.0).collect();
    assert_eq!(listed, kept, "oldest first, the newest two");
    for p in list.as_array().unwrap() {
        let time = p["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        let ms = humantime::parse_rfc3339(time).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(p["time_ms"].as_u64().unwrap() as u128, ms);
    }
    for (p, want) in points.iter().filter(|p| listed.contains(&p.0)) {
        assert_exports(&dir, t, *p, want);
    }
    // A point merged away is refused by name.
    let (okk, _, err) =
        run(&["replica", "export", s(&dir), "--point", "1", "--disk", "0", "--output", s(&t.join("x.img"))]);
    assert!(!okk && err.contains("point 1"), "{err}");
}

/// A child `alike` whose stderr says where it listens.
struct End {
    child: Child,
    addr: Option<SocketAddr>,
    out: std::sync::mpsc::Receiver<String>,
}

impl End {
    fn spawn(args: &[String], listens: bool) -> End {
        let mut child = alike().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(format!("E {l}"));
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("O {l}"));
            }
        });
        let mut e = End { child, addr: None, out: rx };
        if listens {
            let until = Instant::now() + Duration::from_secs(20);
            while e.addr.is_none() && Instant::now() < until {
                if let Ok(l) = e.out.recv_timeout(Duration::from_millis(100)) {
                    if let Some(a) = l.strip_prefix("E alike: listening on ") {
                        e.addr = a.trim().parse().ok();
                    }
                }
                if e.child.try_wait().unwrap().is_some() {
                    break;
                }
            }
        }
        e
    }

    /// Waits up to `limit`, then kills; returns (success, stdout lines, stderr lines).
    fn finish(mut self, limit: Duration) -> (bool, String, String) {
        let until = Instant::now() + limit;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() >= until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        std::thread::sleep(Duration::from_millis(20));
        let (mut out, mut err) = (String::new(), String::new());
        while let Ok(l) = self.out.try_recv() {
            match l.split_at(2) {
                ("O ", r) => out += &format!("{r}\n"),
                (_, r) => err += &format!("{r}\n"),
            }
        }
        (status.is_some_and(|s| s.success()), out, err)
    }
}

fn end_args(vm: &str, secret: &Path, role_args: &[&str], link: (&str, String)) -> Vec<String> {
    let mut a: Vec<String> = ["replicate", "--vm", vm, "--secret-file", s(secret), "--timeout", "20", "--json"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    a.extend(role_args.iter().map(|x| x.to_string()));
    a.push(link.0.to_string());
    a.push(link.1);
    a
}

/// One run over TCP between two `alike` processes: push (the receiver
/// listens) or pull (the sender listens). Returns both ends' outcomes.
fn two_process(
    dir: &Path,
    imgs: &[PathBuf],
    secrets: (&Path, &Path),
    pull: bool,
) -> ((bool, String, String), (bool, String, String)) {
    let recv_role = vec!["--to-dir", s(dir)];
    let send_role: Vec<&str> = imgs.iter().map(|p| s(p)).collect();
    let (listener_role, listener_secret, dialer_role, dialer_secret) = if pull {
        (&send_role, secrets.0, &recv_role, secrets.1)
    } else {
        (&recv_role, secrets.1, &send_role, secrets.0)
    };
    let l = End::spawn(&end_args("web", listener_secret, listener_role, ("--listen", "127.0.0.1:0".into())), true);
    let addr = l.addr.expect("the listening end says where it listens");
    let d = End::spawn(&end_args("web", dialer_secret, dialer_role, ("--connect", addr.to_string())), false);
    let (d, l) = (d.finish(Duration::from_secs(60)), l.finish(Duration::from_secs(60)));
    if pull { (l, d) } else { (d, l) }
}

#[test]
fn two_processes_over_tcp_push_and_pull_and_a_wrong_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = t.join("replica");
    let secret = t.join("secret");
    std::fs::write(&secret, "a shared passphrase of this job\n").unwrap();
    let other = t.join("other");
    std::fs::write(&other, "cd".repeat(32)).unwrap();
    let mut rng = Rng::new(7);
    let g1 = vec![disk(3, 6 * MIB), disk(4, MIB)];
    let imgs = write_images(t, "src", &g1);
    let (sender, receiver) = two_process(&dir, &imgs, (&secret, &secret), false);
    assert!(sender.0 && receiver.0, "push: {}\n{}", sender.2, receiver.2);
    let sj: Value = serde_json::from_str(&sender.1).unwrap();
    let rj: Value = serde_json::from_str(&receiver.1).unwrap();
    assert_eq!((sj["role"].as_str(), rj["role"].as_str()), (Some("sender"), Some("receiver")));
    assert_eq!(keys(&sj), schema("replicate_sender"));
    assert_eq!(keys(&rj), schema("replicate_receiver"));
    assert_eq!((&sj["point"], &rj["point"]), (&Value::from(1), &Value::from(1)));
    assert_eq!(sj["sent_bytes"], rj["sent_bytes"], "what one end sent, the other took");
    assert_exports(&dir, t, 1, &g1);

    let mut g2 = g1.clone();
    scatter(&mut g2[0], &mut rng, 6);
    let imgs = write_images(t, "src", &g2);
    let (sender, receiver) = two_process(&dir, &imgs, (&secret, &secret), true);
    assert!(sender.0 && receiver.0, "pull: {}\n{}", sender.2, receiver.2);
    let sj: Value = serde_json::from_str(&sender.1).unwrap();
    let (raw, _) = lacking(&dir, &g1, &g2);
    assert_eq!(sj["needed_bytes"].as_u64().unwrap(), raw);
    assert_exports(&dir, t, 2, &g2);

    // Without the job's secret: both ends fail, nothing changes, and the secret is in no message.
    let (sender, receiver) = two_process(&dir, &imgs, (&other, &secret), false);
    assert!(!sender.0 && !receiver.0);
    for e in [&sender.2, &receiver.2] {
        assert!(e.contains("secret"), "{e}");
        assert!(!e.contains("shared passphrase") && !e.contains(&"cd".repeat(32)), "{e}");
    }
    assert_eq!(json(&["replica", "list", s(&dir), "--json"]).as_array().unwrap().len(), 2);
    let h = json(&["replica", "history", s(&dir), "--json"]);
    assert_eq!(h.as_array().unwrap().last().unwrap()["result"], "failed");
}

/// The proxy as a child process (this test binary, re-run): SIGKILLable.
#[test]
fn proxy_child() {
    let Ok(target) = std::env::var("ALIKE_PROXY_TARGET") else { return };
    let delay =
        Duration::from_millis(std::env::var("ALIKE_PROXY_DELAY_MS").ok().and_then(|d| d.parse().ok()).unwrap_or(0));
    let p = alike_testing::proxy::DelayProxy::start(
        "127.0.0.1:0",
        target.parse().unwrap(),
        alike_testing::proxy::LinkShape { delay, rate: None },
    )
    .unwrap();
    println!("proxy listening on {}", p.addr());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn spawn_proxy(target: SocketAddr, delay_ms: u64) -> (Child, SocketAddr) {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args(["proxy_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("ALIKE_PROXY_TARGET", target.to_string())
        .env("ALIKE_PROXY_DELAY_MS", delay_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    let addr = loop {
        let l = lines.next().expect("the proxy says where it listens").unwrap();
        // libtest prints "test proxy_child ... " before it, on the same line.
        if let Some(a) = l.split("proxy listening on ").nth(1) {
            break a.trim().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (c, addr)
}

#[test]
fn pipelined_a_50_ms_round_trip_costs_little_at_the_same_bandwidth() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let secret = t.join("secret");
    std::fs::write(&secret, "pipelining").unwrap();
    let mut rng = Rng::new(11);
    // Incompressible: what crosses is what the cap lets through.
    let mut data = vec![0u8; 24 * MIB];
    for c in data.chunks_mut(8) {
        c.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let imgs = write_images(t, "src", &[data]);
    let (mut times, mut sent) = (Vec::new(), Vec::new());
    for (i, delay) in [0u64, 25].into_iter().enumerate() {
        let dir = t.join(format!("replica{i}"));
        let recv =
            End::spawn(&end_args("web", &secret, &["--to-dir", s(&dir)], ("--listen", "127.0.0.1:0".into())), true);
        let proxy = alike_testing::proxy::DelayProxy::start(
            "127.0.0.1:0",
            recv.addr.unwrap(),
            alike_testing::proxy::LinkShape { delay: Duration::from_millis(delay), rate: Some(16 << 20) },
        )
        .unwrap();
        let started = Instant::now();
        let send =
            End::spawn(&end_args("web", &secret, &[s(&imgs[0])], ("--connect", proxy.addr().to_string())), false);
        let (so, ro) = (send.finish(Duration::from_secs(120)), recv.finish(Duration::from_secs(120)));
        assert!(so.0 && ro.0, "{}\n{}", so.2, ro.2);
        times.push(started.elapsed().as_secs_f64());
        let j: Value = serde_json::from_str(&so.1).unwrap();
        sent.push(j["sent_bytes"].as_u64().unwrap());
    }
    eprintln!(
        "{} bytes on the wire at 16 MiB/s: {:.2} s at 0 ms, {:.2} s at 50 ms round trip",
        sent[0], times[0], times[1]
    );
    // Stop-and-wait would add a round trip per batch and per frame; pipelined, a few round trips in all.
    assert!(times[1] < times[0] * 1.5 + 0.5, "{times:?}");
}

/// Never torn: SIGKILL the sender, the receiver or the link (the proxy) at
/// a random moment of a run, push and pull in turn; afterwards every point
/// the replica lists is bit-exact the generation it was made from, and the
/// next run succeeds.
#[test]
fn sigkill_of_the_sender_the_receiver_or_the_link_never_tears_the_replica() {
    let seed = std::env::var("ALIKE_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("replication kill harness seed: {seed} (replay with ALIKE_KILL_SEED={seed})");
    let want: u32 = std::env::var("ALIKE_SOAK").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut rng = Rng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = t.join("replica");
    let secret = t.join("secret");
    std::fs::write(&secret, "kill harness").unwrap();
    let mut vm = vec![disk(seed, 6 * MIB), disk(seed ^ 1, 2 * MIB)];
    // Point → the disks it was made from.
    let mut made: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    let mut typical = Duration::from_millis(800);
    let (mut kills, mut victims, mut committed_anyway) = (0u32, [0u32; 3], 0u32);
    let mut round = 0u64;
    while kills < want {
        round += 1;
        if round > 1 {
            let (n0, n1) = (1 + rng.below(40) as usize, rng.below(10) as usize);
            scatter(&mut vm[0], &mut rng, n0);
            scatter(&mut vm[1], &mut rng, n1);
            if rng.below(4) == 0 {
                let at = rng.below(4 * MIB as u64) as usize / 4096 * 4096;
                vm[0][at..at + 300 * 1024].fill(0);
            }
        }
        let imgs = write_images(t, "src", &vm);
        let pull = round % 2 == 0;
        let keep: Vec<&str> = if round % 3 == 0 { vec!["--keep", "3"] } else { vec![] };
        let before: Vec<u64> =
            ReplicaDir::open(&dir).map(|r| r.points().unwrap().iter().map(|p| p.point).collect()).unwrap_or_default();

        // The killed run: the listening end first, the proxy in front of it, the dialling end through it.
        let mut recv_role = vec!["--to-dir", s(&dir)];
        recv_role.extend(&keep);
        let mut send_role: Vec<&str> = imgs.iter().map(|p| s(p)).collect();
        send_role.extend(["--bwlimit", "4M"]);
        let (l_role, d_role) = if pull { (&send_role, &recv_role) } else { (&recv_role, &send_role) };
        let l = End::spawn(&end_args("web", &secret, l_role, ("--listen", "127.0.0.1:0".into())), true);
        let (mut proxy, paddr) = spawn_proxy(l.addr.unwrap(), rng.below(3));
        let d = End::spawn(&end_args("web", &secret, d_role, ("--connect", paddr.to_string())), false);
        let (mut sender, mut receiver) = if pull { (l, d) } else { (d, l) };
        std::thread::sleep(Duration::from_micros(rng.below(typical.as_micros() as u64)));
        let victim = rng.below(3);
        let hit = match victim {
            0 => sender.child.try_wait().unwrap().is_none() && sender.child.kill().is_ok(),
            1 => receiver.child.try_wait().unwrap().is_none() && receiver.child.kill().is_ok(),
            _ => proxy.kill().is_ok(),
        };
        if hit {
            kills += 1;
            victims[victim as usize] += 1;
        }
        let (so, ro) = (sender.finish(Duration::from_secs(15)), receiver.finish(Duration::from_secs(15)));
        let _ = proxy.kill();
        let _ = proxy.wait();
        if !hit {
            assert!(so.0 && ro.0, "seed {seed} round {round}: an undisturbed run failed: {}\n{}", so.2, ro.2);
        }

        // What the replica holds now: the points before, maybe the new one — each bit-exact.
        let check = |made: &mut HashMap<u64, Vec<Vec<u8>>>, before: &[u64], what: &str| {
            let r = ReplicaDir::open(&dir).unwrap();
            let points: Vec<u64> = r.points().unwrap().iter().map(|p| p.point).collect();
            for p in &points {
                if !made.contains_key(p) {
                    assert!(
                        before.iter().all(|b| b < p),
                        "seed {seed} round {round}: {what}: point {p} appeared out of order"
                    );
                    made.insert(*p, vm.clone());
                }
                for (d, want) in made[p].iter().enumerate() {
                    let got = read_all(&*r.point_disk(*p, d).unwrap());
                    assert!(got == *want, "seed {seed} round {round}: {what}: point {p} disk {d} is torn");
                }
            }
            assert!(points.len() <= before.len() + 1, "seed {seed} round {round}: {what}: {points:?} after {before:?}");
            points
        };
        let what = format!("after a kill of {}", ["the sender", "the receiver", "the link"][victim as usize]);
        let after = check(&mut made, &before, &what);
        if hit && after.last() != before.last() {
            committed_anyway += 1; // killed after the receiver's commit
        }

        // The next run succeeds, from whatever point the replica has.
        let started = Instant::now();
        let (so, ro) = two_process(&dir, &imgs, (&secret, &secret), !pull);
        assert!(so.0 && ro.0, "seed {seed} round {round}: the run after the kill failed: {}\n{}", so.2, ro.2);
        typical = started.elapsed().max(Duration::from_millis(200));
        let points = check(&mut made, &after, "after the next run");
        let newest = *points.last().unwrap();
        assert!(after.last().is_none_or(|a| newest > *a));
        assert!(made[&newest] == vm, "seed {seed} round {round}: the newest point is this generation");
    }
    eprintln!(
        "replication kill harness: {kills} kills in {round} rounds (sender {}, receiver {}, link {}; \
         {committed_anyway} after the point was committed), seed {seed}",
        victims[0], victims[1], victims[2]
    );
}

#[test]
fn one_pass_backup_and_a_seeded_first_run_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let cache = t.join("cache");
    let with_store = |args: &[&str]| {
        let mut a = vec!["--store", s(&store), "--cache-dir", s(&cache)];
        a.extend_from_slice(args);
        json(&a)
    };
    ok(&["--store", s(&store), "--cache-dir", s(&cache), "init", "--no-encryption"]);
    let mut g = vec![disk(21, 8 * MIB)];
    let imgs = write_images(t, "src", &g);
    // One pass: a version in the store and a point in the replica, the image read once.
    let r = with_store(&[
        "replicate",
        "--vm",
        "web",
        "--to-dir",
        s(&t.join("r1")),
        s(&imgs[0]),
        "--backup-to",
        s(&store),
        "--json",
    ]);
    assert_eq!(r["read_bytes"].as_u64().unwrap(), g[0].len() as u64);
    assert_eq!(r["backup"]["read_bytes"], r["read_bytes"]);
    let versions = with_store(&["versions", "--json"]);
    assert_eq!(versions[0]["id"], r["backup"]["id"]);
    assert_exports(&t.join("r1"), t, 1, &g);

    // A new replica elsewhere, seeded from that version: only the changes cross.
    scatter(&mut g[0], &mut Rng::new(3), 4);
    let imgs = write_images(t, "src", &g);
    let seed = format!("{}:latest", s(&store));
    let r = with_store(&[
        "replicate",
        "--vm",
        "web",
        "--to-dir",
        s(&t.join("r2")),
        s(&imgs[0]),
        "--seed-from",
        &seed,
        "--json",
    ]);
    assert!(r["replica"]["seeded_bytes"].as_u64().unwrap() > 4 * MIB as u64, "{r}");
    assert!(r["needed_bytes"].as_u64().unwrap() <= 4 * (64 << 10), "{r}");
    assert_exports(&t.join("r2"), t, 1, &g);
}
