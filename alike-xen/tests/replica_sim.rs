//! The Xen replica target against two XAPI simulators (two pools, two
//! sites): a VM with two disks replicated from one pool onto a replica VM
//! on the other through the replication engine (both ends in one process),
//! incremental by CBT, each point bit-exact against its source snapshot;
//! the replica blocked from starting; retention; test failover, failover;
//! and a writer SIGKILLed in the middle of its writes, after which the
//! replica is at its last point and the next run succeeds.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alike_core::DiskSource;
use alike_replica::ReplicaTarget;
use alike_replicate::{LinkOptions, LocalReport, ReceiverOptions, SenderOptions, replicate_local};
use alike_xen::adapter::{
    DIRTY_MARK, RESUME_JOURNAL, VdiSource, XenBackupOptions, XenPool, XenReplica, XenReplicaOptions,
};
use alike_xen::xapi::Client;
use alike_xen_sim::{Class, SimConfig, Simulator, Value};

const NET: &str = "Pool-wide network associated with eth0";

fn sim() -> (Simulator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SimConfig::new(dir.path()).demo(true).data_destroy_wait(Duration::from_millis(200));
    (Simulator::start(cfg).unwrap(), dir)
}

fn pool_at(url: &str, password: &str) -> XenPool {
    XenPool::new(Client::builder(url).credentials("root", password).login().unwrap())
}

fn pool(sim: &Simulator) -> XenPool {
    pool_at(&sim.url(), sim.password())
}

fn read_all(d: &dyn DiskSource) -> Vec<u8> {
    let mut out = vec![0u8; d.size() as usize];
    for (i, c) in out.chunks_mut(4 << 20).enumerate() {
        d.read_at(i as u64 * (4 << 20), c).unwrap();
    }
    out
}

/// One replication of `web-01` from `src` onto the replica, in one process.
fn run(src: &XenPool, dst: &Arc<XenPool>, state: &Path) -> (LocalReport, Vec<Vec<u8>>, XenReplica) {
    let b = src.begin_backup("web-01", &XenBackupOptions::default(), &[]).unwrap();
    let replica = XenReplica::open_or_create(
        Arc::clone(dst),
        b.config(),
        &XenReplicaOptions::new("Local storage", state.join("replicas")).network(NET),
    )
    .unwrap();
    let disks = b.disks();
    let source: Vec<Vec<u8>> = disks.iter().map(|d| read_all(*d)).collect();
    let mut so = SenderOptions::new("web-01");
    so.chunking = replica.chunking();
    so.state_file = Some(state.join("sender.state"));
    let mut ro = ReceiverOptions::default();
    ro.vm = Some("web-01".into());
    let r = replicate_local(&disks, &so, &replica, &ro, &[], &LinkOptions::default()).unwrap();
    b.commit();
    (r, source, replica)
}

fn assert_point(replica: &XenReplica, point: u64, source: &[Vec<u8>]) {
    for (d, want) in source.iter().enumerate() {
        let got = read_all(&*replica.point_disk(point, d).unwrap());
        assert!(got == *want, "point {point} disk {d} differs from the source snapshot");
    }
}

fn api_error(sim: &Simulator, method: &str, args: Vec<Value>) -> Vec<String> {
    let s = sim.login().unwrap();
    let mut params = vec![Value::s(&s)];
    params.extend(args);
    match sim.call(method, params) {
        Ok(v) => panic!("{method} succeeded: {v:?}"),
        Err(e) => format!("{e}").split_whitespace().map(str::to_owned).collect(),
    }
}

/// The disk VDIs of VM `vm` on `sim`, by userdevice.
fn live_vdis(sim: &Simulator, vm: &str) -> Vec<String> {
    let vbds = match sim.field(Class::Vm, vm, "VBDs") {
        Some(Value::Array(v)) => v,
        _ => Vec::new(),
    };
    let mut disks: Vec<(String, String)> = vbds
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|v| {
            sim.field(Class::Vbd, v, "type").and_then(|t| t.as_str().map(str::to_owned)).as_deref() == Some("Disk")
        })
        .map(|v| {
            let f = |k| sim.field(Class::Vbd, v, k).and_then(|t| t.as_str().map(str::to_owned)).unwrap_or_default();
            (f("userdevice"), f("VDI"))
        })
        .collect();
    disks.sort();
    disks.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn two_sites_replicate_incrementally_keep_points_and_fail_over() {
    let (a, _da) = sim();
    let (b, _db) = sim();
    let state = tempfile::tempdir().unwrap();
    let src = pool(&a);
    let dst = Arc::new(pool(&b));
    // The live disks (snapshots will bear the same names).
    let root = a.lookup(Class::Vdi, "web-01 root").unwrap();
    let data = a.lookup(Class::Vdi, "web-01 data").unwrap();

    // First run: everything travels.
    let (r1, s1, replica) = run(&src, &dst, state.path());
    assert_eq!(r1.receiver.point, 1);
    assert_eq!(replica.name(), "web-01 (replica)");
    assert_point(&replica, 1, &s1);
    let total: u64 = s1.iter().map(|d| d.len() as u64).sum();
    assert_eq!(total, 96 << 20);
    assert!(r1.sender.read_bytes >= total, "a first run reads every disk whole");

    // The replica is blocked from starting, with XAPI's error.
    let err = api_error(&b, "VM.start", vec![Value::s(replica.vm_ref()), Value::Bool(false), Value::Bool(false)]);
    assert!(err.iter().any(|w| w.contains("OPERATION_BLOCKED")), "{err:?}");
    assert_eq!(b.field(Class::Vm, replica.vm_ref(), "power_state").unwrap().as_str(), Some("Halted"));

    // The guest writes 8 scattered 4 KiB pieces of random data on both disks.
    let mut written = 0u64;
    for i in 0..8u64 {
        let mut piece = vec![0u8; 4096];
        alike_core::random_bytes(&mut piece).unwrap();
        let (vdi, off) = if i % 2 == 0 { (&root, (i * 7 + 3) << 20) } else { (&data, (i * 3 + 1) << 20) };
        a.guest_write(vdi, off + 512, &piece).unwrap();
        written += 4096;
    }

    // Second run: only the changed chunks travel, CBT reads little.
    let (r2, s2, replica) = run(&src, &dst, state.path());
    assert_eq!(r2.receiver.point, 2);
    assert_point(&replica, 2, &s2);
    assert_point(&replica, 1, &s1);
    let needed = r2.sender.needed_bytes;
    // Each write touches at most two chunks of at most 64 KiB.
    assert!(needed >= written && needed <= 16 * (64 << 10), "needed {needed}");
    // Random data does not compress: the wire holds it, plus little besides.
    assert!(r2.sender.sent_bytes >= written, "sent {}", r2.sender.sent_bytes);
    assert!(r2.sender.sent_bytes <= needed + (64 << 10), "sent {} for {needed} needed", r2.sender.sent_bytes);
    assert!(r2.sender.read_bytes < total / 8, "CBT: read {} of {total}", r2.sender.read_bytes);
    assert!(r1.sender.sent_bytes > 20 * r2.sender.sent_bytes);

    // Points are snapshots of the replica VM, marked.
    let points = replica.points().unwrap();
    assert_eq!(points.iter().map(|p| p.point).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(points[1].disks.len(), 2);

    // Retention: the oldest snapshot and its VDIs go; point 2 still reads the same.
    let vdis_before = b.call("VDI.get_all", vec![Value::s(b.login().unwrap())]).unwrap();
    assert_eq!(replica.keep_last(1).unwrap(), [1]);
    assert_eq!(replica.points().unwrap().iter().map(|p| p.point).collect::<Vec<_>>(), [2]);
    let vdis_after = b.call("VDI.get_all", vec![Value::s(b.login().unwrap())]).unwrap();
    let count = |v: &Value| match v {
        Value::Array(a) => a.len(),
        _ => 0,
    };
    assert_eq!(count(&vdis_before) - count(&vdis_after), 2, "point 1's two VDIs are destroyed");
    assert_point(&replica, 2, &s2);

    // Test failover: a running copy of point 2 without NICs; the replica is untouched.
    let t = replica.test_failover(None, None, true).unwrap();
    assert_eq!(t.point, 2);
    assert_eq!(b.field(Class::Vm, &t.vm_ref, "power_state").unwrap().as_str(), Some("Running"));
    assert!(matches!(b.field(Class::Vm, &t.vm_ref, "VIFs"), Some(Value::Array(v)) if v.is_empty()));
    // Replication goes on meanwhile.
    a.guest_write(&root, 5 << 20, b"while the test VM runs").unwrap();
    let (r3, s3, replica) = run(&src, &dst, state.path());
    assert_eq!(r3.receiver.point, 3);
    assert_point(&replica, 3, &s3);
    replica.end_test(&t.uuid).unwrap();
    assert!(b.field(Class::Vm, &t.vm_ref, "uuid").is_none(), "the test VM is gone");

    // Failover at point 2: the replica becomes the live VM, on the mapped network.
    let map = BTreeMap::from([(NET.to_owned(), NET.to_owned())]);
    let f = replica.failover(Some(2), &map, true).unwrap();
    assert_eq!((f.point, f.started), (2, true));
    assert_eq!(f.networks, [("0".to_owned(), NET.to_owned())]);
    assert_eq!(b.field(Class::Vm, replica.vm_ref(), "power_state").unwrap().as_str(), Some("Running"));
    let live = live_vdis(&b, replica.vm_ref());
    for (d, vdi) in live.iter().enumerate() {
        let got = b.read_vdi(vdi, 0, s2[d].len()).unwrap();
        assert!(got == s2[d], "the failed-over VM's disk {d} is point 2");
    }
    // A failed-over replica takes no more runs.
    let e = replica.begin(&[64 << 20, 32 << 20]).unwrap_err();
    assert!(e.to_string().contains("failed over"), "{e}");

    // The failed-over VM works: its guest writes 3 pieces.
    let mut dr_written = 0u64;
    for (i, off) in [(0usize, 3u64 << 20), (1, 20 << 20), (0, 40 << 20)] {
        let mut piece = vec![0u8; 8192];
        alike_core::random_bytes(&mut piece).unwrap();
        b.guest_write(&live[i], off, &piece).unwrap();
        dr_written += 8192;
    }
    // Failback onto the original, halted: only what differs travels back
    // (the DR guest's writes, and the source's write after point 2).
    let web = a.lookup(Class::Vm, "web-01").unwrap();
    a.set_power_state(&web, "Halted").unwrap();
    let back = replica.failback_target(Arc::new(pool(&a)), "web-01", &state.path().join("failback")).unwrap();
    let dr_src = pool(&b);
    let snap = dr_src.begin_backup(replica.vm_ref(), &XenBackupOptions::default(), &[]).unwrap();
    let dr_now: Vec<Vec<u8>> = snap.disks().iter().map(|d| read_all(*d)).collect();
    let mut so = SenderOptions::new("web-01 (replica)");
    so.chunking = back.chunking();
    let fb =
        replicate_local(&snap.disks(), &so, &back, &ReceiverOptions::default(), &[], &LinkOptions::default()).unwrap();
    snap.commit();
    eprintln!(
        "failback sent {} bytes ({} needed) for {dr_written} bytes written",
        fb.sender.sent_bytes, fb.sender.needed_bytes
    );
    assert!(
        fb.sender.needed_bytes >= dr_written && fb.sender.needed_bytes <= 6 * (64 << 10),
        "{}",
        fb.sender.needed_bytes
    );
    assert!(fb.sender.sent_bytes <= fb.sender.needed_bytes + (64 << 10), "failback sent {}", fb.sender.sent_bytes);
    assert_point(&back, 2, &dr_now);
    let done = replica.finish_failback(back, true).unwrap();
    assert!(done.started);
    assert_eq!(a.field(Class::Vm, &web, "power_state").unwrap().as_str(), Some("Running"));
    for (d, vdi) in live_vdis(&a, &web).iter().enumerate() {
        assert!(a.read_vdi(vdi, 0, dr_now[d].len()).unwrap() == dr_now[d], "the original holds the DR VM's disk {d}");
    }
    assert_eq!(b.field(Class::Vm, replica.vm_ref(), "power_state").unwrap().as_str(), Some("Halted"));
    let err = api_error(&b, "VM.start", vec![Value::s(replica.vm_ref()), Value::Bool(false), Value::Bool(false)]);
    assert!(err.iter().any(|w| w.contains("OPERATION_BLOCKED")), "the DR VM is a replica again: {err:?}");
    // Roles swapped back: the next replication from the original needs nothing.
    let (r4, s4, replica) = run(&src, &dst, state.path());
    assert_eq!(r4.receiver.point, done.replica_point + 1);
    assert_eq!(r4.sender.needed_bytes, 0);
    assert_point(&replica, r4.receiver.point, &s4);
}

/// The child of the kill test: writes random megabytes over disk 0 of the
/// replica in one run that never ends, until killed.
#[test]
fn kill_child() {
    let Ok(url) = std::env::var("ALIKE_XEN_KILL_URL") else { return };
    let state = std::env::var("ALIKE_XEN_KILL_STATE").unwrap();
    let pool = Arc::new(pool_at(&url, "alike"));
    let replica = XenReplica::open(pool, "web-01 (replica)", Path::new(&state)).unwrap();
    let run = replica.begin(&[64 << 20, 32 << 20]).unwrap();
    let mut piece = vec![0u8; 1 << 20];
    for i in 0u64.. {
        alike_core::random_bytes(&mut piece).unwrap();
        run.write_at(0, (i % 64) << 20, &piece).unwrap();
    }
}

#[test]
fn a_writer_killed_mid_write_leaves_the_last_point_and_the_next_run_succeeds() {
    let (a, _da) = sim();
    let (b, _db) = sim();
    let state = tempfile::tempdir().unwrap();
    let src = pool(&a);
    let dst = Arc::new(pool(&b));
    let root = a.lookup(Class::Vdi, "web-01 root").unwrap();
    let (_, s1, replica) = run(&src, &dst, state.path());
    let exe = std::env::current_exe().unwrap();
    let seed = std::env::var("ALIKE_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let mut b = [0u8; 8];
        alike_core::random_bytes(&mut b).unwrap();
        u64::from_le_bytes(b)
    });
    let rounds: u64 = std::env::var("ALIKE_SOAK").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    eprintln!("kill seed {seed} (ALIKE_KILL_SEED to replay), {rounds} rounds");
    let mut rng = seed;
    let mut torn = 0;
    for round in 0..rounds {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "kill_child", "--nocapture", "--test-threads=1"])
            .env("ALIKE_XEN_KILL_URL", b.url())
            .env("ALIKE_XEN_KILL_STATE", state.path().join("replicas"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the run to mark the VM, then some random time into its writes.
        let t0 = Instant::now();
        loop {
            let oc = b.field(Class::Vm, replica.vm_ref(), "other_config");
            if matches!(&oc, Some(Value::Struct(m)) if m.contains_key(DIRTY_MARK)) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "the child never started writing");
            std::thread::sleep(Duration::from_millis(10));
        }
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let wait = 100 + (rng >> 33) % 2000;
        std::thread::sleep(Duration::from_millis(wait));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        eprintln!("round {round}: killed after {wait} ms ({status})");
        // The points read as they were; the live disks are mid-write until the next writer.
        assert_eq!(replica.points().unwrap().iter().map(|p| p.point).collect::<Vec<_>>(), [1]);
        assert_point(&replica, 1, &s1);
        let live = live_vdis(&b, replica.vm_ref());
        if b.read_vdi(&live[0], 0, s1[0].len()).unwrap() != s1[0] {
            torn += 1;
        }
    }
    // The kills did land in the middle of writes: the live disk was left between points.
    eprintln!("{torn} of {rounds} kills left the live disk between points");
    assert!(torn > 0, "no kill landed after a write reached the pool");
    // The next writer goes back to point 1 first: a run that is abandoned shows it.
    let run_ = replica.begin(&[64 << 20, 32 << 20]).unwrap();
    run_.abort().unwrap();
    let live = live_vdis(&b, replica.vm_ref());
    assert_eq!(live.len(), 2);
    for (d, vdi) in live.iter().enumerate() {
        assert!(b.read_vdi(vdi, 0, s1[d].len()).unwrap() == s1[d], "the live disk {d} is back at point 1");
    }
    // And a real run succeeds, bit-exact.
    a.guest_write(&root, 9 << 20, b"after the kills").unwrap();
    let (r, s2, replica) = run(&src, &dst, state.path());
    assert_eq!(r.receiver.point, 2);
    assert_point(&replica, 2, &s2);
    assert_point(&replica, 1, &s1);
}

/// The receiving end of the two-process test, in a child process: opens
/// or makes the replica on the target pool and runs the receiver over TCP,
/// listening (push) or dialling (pull).
#[test]
fn receiver_child() {
    let Ok(url) = std::env::var("ALIKE_XEN_RECV_URL") else { return };
    let var = |k: &str| std::env::var(k).unwrap();
    let config: alike_xen::adapter::XenVmConfig =
        serde_json::from_slice(&std::fs::read(var("ALIKE_XEN_RECV_CONFIG")).unwrap()).unwrap();
    let pool = Arc::new(pool_at(&url, "alike"));
    let replica = XenReplica::open_or_create(
        pool,
        &config,
        &XenReplicaOptions::new("Local storage", var("ALIKE_XEN_RECV_STATE")).network(NET),
    )
    .unwrap();
    let addr: std::net::SocketAddr = var("ALIKE_XEN_RECV_ADDR").parse().unwrap();
    let cancel = alike_core::CancelToken::new();
    let (stream, dial) = if var("ALIKE_XEN_RECV_FLOW") == "push" {
        let l = std::net::TcpListener::bind(addr).unwrap();
        (alike_replicate::accept(&l, Duration::from_secs(60), &cancel).unwrap(), alike_replicate::Dial::Accept)
    } else {
        (alike_replicate::dial(&[addr], Duration::from_secs(60), &cancel).unwrap(), alike_replicate::Dial::Connect)
    };
    let secret: [u8; 32] = [7; 32];
    let end = alike_replicate::TcpEnd { stream, dial, job: "xen-job".into(), secret, link: LinkOptions::default() };
    let mut ro = ReceiverOptions::default();
    ro.vm = Some("web-01".into());
    let r = alike_replicate::run_receiver(end, &replica, &ro, &[]).unwrap();
    println!("received point {}", r.point);
}

#[test]
fn two_processes_over_tcp_push_then_pull() {
    let (a, _da) = sim();
    let (b, _db) = sim();
    let state = tempfile::tempdir().unwrap();
    let src = pool(&a);
    let root = a.lookup(Class::Vdi, "web-01 root").unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut last = None;
    for (round, flow) in ["push", "pull"].into_iter().enumerate() {
        if round > 0 {
            let mut piece = vec![0u8; 4096];
            alike_core::random_bytes(&mut piece).unwrap();
            a.guest_write(&root, 11 << 20, &piece).unwrap();
        }
        let snap = src.begin_backup("web-01", &XenBackupOptions::default(), &[]).unwrap();
        let cfg = state.path().join("config.json");
        std::fs::write(&cfg, serde_json::to_vec(snap.config()).unwrap()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Pull: the sender listens before the receiver dials.
        let listener = (flow == "pull").then(|| std::net::TcpListener::bind(addr).unwrap());
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "receiver_child", "--nocapture", "--test-threads=1"])
            .env("ALIKE_XEN_RECV_URL", b.url())
            .env("ALIKE_XEN_RECV_CONFIG", &cfg)
            .env("ALIKE_XEN_RECV_STATE", state.path().join("replicas"))
            .env("ALIKE_XEN_RECV_ADDR", addr.to_string())
            .env("ALIKE_XEN_RECV_FLOW", flow)
            .spawn()
            .unwrap();
        let cancel = alike_core::CancelToken::new();
        let (stream, dial) = match &listener {
            Some(l) => {
                (alike_replicate::accept(l, Duration::from_secs(60), &cancel).unwrap(), alike_replicate::Dial::Accept)
            }
            None => (
                alike_replicate::dial(&[addr], Duration::from_secs(60), &cancel).unwrap(),
                alike_replicate::Dial::Connect,
            ),
        };
        let end = alike_replicate::TcpEnd {
            stream,
            dial,
            job: "xen-job".into(),
            secret: [7; 32],
            link: LinkOptions::default(),
        };
        let disks = snap.disks();
        let source: Vec<Vec<u8>> = disks.iter().map(|d| read_all(*d)).collect();
        let mut so = SenderOptions::new("web-01");
        so.state_file = Some(state.path().join("sender.state"));
        let r = alike_replicate::run_sender(end, &disks, &so).unwrap();
        snap.commit();
        assert!(child.wait().unwrap().success(), "the receiver failed");
        let replica = XenReplica::open(Arc::new(pool(&b)), "web-01 (replica)", &state.path().join("replicas")).unwrap();
        assert_eq!(r.point, round as u64 + 1);
        assert_point(&replica, r.point, &source);
        eprintln!("{flow}: point {} sent {} read {}", r.point, r.sent_bytes, r.read_bytes);
        if let Some(first) = last {
            assert!(r.needed_bytes >= 4096 && r.needed_bytes <= 2 * (64 << 10), "needed {}", r.needed_bytes);
            assert!(r.sent_bytes <= r.needed_bytes + (64 << 10) && first > 20 * r.sent_bytes, "sent {}", r.sent_bytes);
        }
        last = Some(r.sent_bytes);
    }
}

/// The child of the resume test: a replica's first run (the snapshot's
/// VDIs, named by uuid, replicated onto the replica VM named
/// `ALIKE_XEN_RESUME_NAME`) slowed by a bandwidth limit, until killed.
#[test]
fn resume_child() {
    let Ok(url) = std::env::var("ALIKE_XEN_RESUME_TARGET") else { return };
    let var = |k: &str| std::env::var(k).unwrap();
    let src = Arc::new(pool_at(&var("ALIKE_XEN_RESUME_SOURCE"), "alike"));
    let dst = Arc::new(pool_at(&url, "alike"));
    let replica =
        XenReplica::open(dst, &var("ALIKE_XEN_RESUME_NAME"), Path::new(&var("ALIKE_XEN_RESUME_STATE"))).unwrap();
    let sources: Vec<VdiSource> = var("ALIKE_XEN_RESUME_VDIS")
        .split(',')
        .enumerate()
        .map(|(d, uuid)| {
            let r =
                src.client().call("VDI.get_by_uuid", &[serde_json::json!(uuid)]).unwrap().as_str().unwrap().to_owned();
            VdiSource::open(Arc::clone(&src), &r, format!("disk {d}")).unwrap()
        })
        .collect();
    let disks: Vec<&dyn DiskSource> = sources.iter().map(|s| s as &dyn DiskSource).collect();
    let mut so = SenderOptions::new("web-01");
    so.chunking = replica.chunking();
    let mut ro = ReceiverOptions::default();
    ro.vm = Some("web-01".into());
    let mut link = LinkOptions::default();
    link.bwlimit = Some(var("ALIKE_XEN_RESUME_BWLIMIT").parse().unwrap());
    replicate_local(&disks, &so, &replica, &ro, &[], &link).unwrap();
    println!("the first run completed");
}

fn journal_len(state: &Path, replica: &XenReplica) -> u64 {
    std::fs::metadata(state.join(replica.uuid()).join(RESUME_JOURNAL)).map_or(0, |m| m.len())
}

/// Spawns the resume child onto replica `name` and SIGKILLs it `wait_ms`
/// after it marked the replica VM dirty (and, when `data` is set, once its
/// journal holds data).
#[allow(clippy::too_many_arguments)]
fn kill_first_run(
    a: &Simulator,
    b: &Simulator,
    replica: &XenReplica,
    state: &Path,
    vdis: &str,
    wait_ms: u64,
    data: bool,
) -> std::process::ExitStatus {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "resume_child", "--nocapture", "--test-threads=1"])
        .env("ALIKE_XEN_RESUME_SOURCE", a.url())
        .env("ALIKE_XEN_RESUME_TARGET", b.url())
        .env("ALIKE_XEN_RESUME_NAME", replica.name())
        .env("ALIKE_XEN_RESUME_STATE", state)
        .env("ALIKE_XEN_RESUME_VDIS", vdis)
        // Minutes for the whole first run: no attempt here completes it.
        .env("ALIKE_XEN_RESUME_BWLIMIT", "262144")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let oc = b.field(Class::Vm, replica.vm_ref(), "other_config");
        let dirty = matches!(&oc, Some(Value::Struct(m)) if m.contains_key(DIRTY_MARK));
        if dirty && (!data || journal_len(state, replica) > 12) {
            break;
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("the child ended before it was killed: {s}");
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the child never started writing");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(wait_ms));
    child.kill().unwrap();
    child.wait().unwrap()
}

#[test]
fn a_first_run_cut_short_resumes_without_resending_and_abandon_discards_it() {
    let (a, _da) = sim();
    let (b, _db) = sim();
    let state = tempfile::tempdir().unwrap();
    let replicas = state.path().join("replicas");
    let src = pool(&a);
    let dst = Arc::new(pool(&b));
    // 32 MiB of random data, so that no attempt at 256 KiB/s (even after
    // forty resumed ones, as in a soak) completes the first run. Data
    // travels in frames of up to 1 MiB, 4 s each on this link: the waits
    // below reach past one.
    let root = a.lookup(Class::Vdi, "web-01 root").unwrap();
    let mut piece = vec![0u8; 1 << 20];
    for i in 0..32u64 {
        alike_core::random_bytes(&mut piece).unwrap();
        a.guest_write(&root, (8 + i) << 20, &piece).unwrap();
    }
    // One snapshot of the source for every attempt (the children read its VDIs).
    let snap = src.begin_backup("web-01", &XenBackupOptions::default(), &[]).unwrap();
    let source: Vec<Vec<u8>> = snap.disks().iter().map(|d| read_all(*d)).collect();
    let vdis = snap.xen_disks().iter().map(|d| d.snapshot_vdi_uuid().to_owned()).collect::<Vec<_>>().join(",");
    let opts = XenReplicaOptions::new("Local storage", &replicas).network(NET);
    let replica = XenReplica::open_or_create(Arc::clone(&dst), snap.config(), &opts).unwrap();
    // A second replica VM of the same VM: the reference for a first run from nothing.
    let reference =
        XenReplica::create(Arc::clone(&dst), snap.config(), &opts.clone().name("web-01 (reference)")).unwrap();

    let seed = std::env::var("ALIKE_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let mut b = [0u8; 8];
        alike_core::random_bytes(&mut b).unwrap();
        u64::from_le_bytes(b)
    });
    let rounds: u64 = std::env::var("ALIKE_SOAK").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    eprintln!("kill seed {seed} (ALIKE_KILL_SEED to replay), {rounds} rounds");
    let mut rng = seed;
    let mut last = 0;
    for round in 0..rounds {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let wait = 200 + (rng >> 33) % 4800;
        let status = kill_first_run(&a, &b, &replica, &replicas, &vdis, wait, false);
        let held = journal_len(&replicas, &replica);
        eprintln!("round {round}: killed {wait} ms into the run ({status}); journal {held} bytes");
        // The partial layer is never a point: no point to list, to export or to fail over to.
        assert!(replica.points().unwrap().is_empty(), "round {round}: a cut first run shows as a point");
        assert!(replica.point_disk(1, 0).is_err());
        assert!(replica.test_failover(None, None, false).is_err());
        // What arrived stays: an attempt never loses what the earlier ones kept.
        assert!(held >= last, "round {round}: the journal shrank from {last} to {held}");
        last = held;
    }
    assert!(last > 12, "no attempt kept anything (journal of {last} bytes)");

    // Abandon: a cut first run on the reference replica, then discarded.
    let status = kill_first_run(&a, &b, &reference, &replicas, &vdis, 300, true);
    assert!(journal_len(&replicas, &reference) > 0, "{status}");
    assert!(reference.discard_partial().unwrap());
    assert_eq!(journal_len(&replicas, &reference), 0);
    assert!(!reference.discard_partial().unwrap(), "nothing left to discard");
    let oc = b.field(Class::Vm, reference.vm_ref(), "other_config");
    assert!(!matches!(&oc, Some(Value::Struct(m)) if m.contains_key(DIRTY_MARK)), "abandon reverted the disks");
    // So its first run starts from nothing: the reference figures.
    let mut so = SenderOptions::new("web-01");
    so.chunking = reference.chunking();
    let mut ro = ReceiverOptions::default();
    ro.vm = Some("web-01".into());
    let full = replicate_local(&snap.disks(), &so, &reference, &ro, &[], &LinkOptions::default()).unwrap();
    assert_eq!(full.receiver.stats.resumed_bytes, 0);
    assert_point(&reference, 1, &source);

    // The cut run resumes: what arrived is copied from the journal, not sent again.
    let r = replicate_local(&snap.disks(), &so, &replica, &ro, &[], &LinkOptions::default()).unwrap();
    snap.commit();
    let (resumed, needed) = (r.receiver.stats.resumed_bytes, r.sender.needed_bytes);
    eprintln!(
        "resumed {resumed} bytes from a {last}-byte journal; needed {needed} of {}, sent {} of {}",
        full.sender.needed_bytes, r.sender.sent_bytes, full.sender.sent_bytes
    );
    assert_eq!(r.receiver.point, 1);
    assert_point(&replica, 1, &source);
    assert!(resumed * 10 >= (last - 12) * 9, "resumed {resumed} of the journal's {last} bytes");
    assert!(needed + resumed <= full.sender.needed_bytes + (64 << 10), "needed {needed} + resumed {resumed}");
    assert!(r.sender.sent_bytes < full.sender.sent_bytes, "sent {} of {}", r.sender.sent_bytes, full.sender.sent_bytes);
    assert_eq!(journal_len(&replicas, &replica), 0, "the commit deletes the journal");
    assert_eq!(replica.points().unwrap().iter().map(|p| p.point).collect::<Vec<_>>(), [1]);
}
