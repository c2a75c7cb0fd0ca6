//! The JSON schema of every facade report, pinned: `testdata/report-schema.json`
//! holds each report's keys (nested objects and the first element of arrays
//! too), the Xen replica reports from two in-process simulated pools
//! included. The CLI's `--json` and the Python bindings print these reports
//! as they are, and their tests read the same file. After a deliberate change:
//! `ALIKE_BLESS=1 cargo test -p alike --test integration schema`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::util::Env;

/// A value's shape: objects by their keys, arrays by their first element.
pub fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        _ => Value::Null,
    }
}

fn schema_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/report-schema.json")
}

#[test]
fn every_report_keeps_its_json_schema() {
    let env = Env::new();
    let store = env.create(true);
    let img = env.path("d.img");
    std::fs::write(&img, alike_testing::Rng::new(4).noise(300_000)).unwrap();
    let mut got: BTreeMap<&str, Value> = BTreeMap::new();
    let ser = |v: &dyn erased::Ser| v.value();

    let b = store.backup_images("vm1", &[&img], &alike::BackupOptions::default()).unwrap();
    got.insert("backup", ser(&b));
    got.insert("version", ser(&b.version));
    let r = store.restore_to_file(&b.version, 0, env.path("out.img"), &alike::RestoreOptions::default()).unwrap();
    got.insert("restore", ser(&r));
    // An NBD session cancelled before it starts: its report, at once.
    let stop = alike::CancelToken::new();
    stop.cancel();
    let nbd = alike::NbdOptions::default().listen_tcp("127.0.0.1:0").cancel_token(stop);
    got.insert("nbd", ser(&store.serve_nbd(&b.version, &nbd).unwrap()));
    got.insert("verify", ser(&store.verify(&alike::VerifyOptions::default().full(true)).unwrap()));
    got.insert("stats", ser(&store.stats().unwrap()));
    let keep = alike::RetentionPolicy::default().last(1);
    got.insert("prune", ser(&store.prune(None, &keep, true).unwrap()));
    got.insert("gc", ser(&store.gc(&alike::MaintenanceOptions::default().dry_run(true)).unwrap()));
    got.insert("rebuild_index", ser(&store.rebuild_index(&alike::MaintenanceOptions::default()).unwrap()));
    let vault =
        alike::Store::builder().no_encryption().cache_dir(env.path("vcache")).create(env.path("vault")).unwrap();
    got.insert("vault", ser(&store.vault(&vault, &alike::VaultOptions::default()).unwrap()));
    let host = super::hypervisor::FakeHost::new();
    let vb = store.backup_vm(&host, "vm1", &alike::BackupOptions::default()).unwrap();
    got.insert("vm_backup", ser(&vb));
    let v = store.version(&vb.id, None).unwrap();
    let vr = store.restore_vm(&v, &host, &alike::Placement::on("memory"), &alike::RestoreOptions::default()).unwrap();
    got.insert("vm_restore", ser(&vr));
    // File restore: a small ext4 disk with one file and one symlink.
    if !alike_testing::tree::need(&["mkfs.ext4"]) {
        return;
    }
    let src = env.path("tree");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    std::os::unix::fs::symlink("f", src.join("l")).unwrap();
    let fs_img = env.path("fs.img");
    alike_testing::tree::mkfs("ext4", &src, &fs_img, 8, &[]);
    let fv = store.backup_images("files", &[&fs_img], &alike::BackupOptions::default()).unwrap().version;
    got.insert("ls_volumes", ser(&store.ls(&fv, &alike::LsOptions::default()).unwrap()));
    got.insert("ls", ser(&store.ls(&fv, &alike::LsOptions::default().path("/l")).unwrap()));
    let ex = alike::ExtractOptions::default().path("/f").path("/f").to(env.path("extracted"));
    got.insert("extract", ser(&store.extract(&fv, &ex).unwrap()));

    // Replication: both ends here, then the two ends of a job over loopback.
    let rimg = env.path("r.img");
    std::fs::write(&rimg, alike_testing::Rng::new(5).noise(1 << 20)).unwrap();
    let replica = alike::Replica::open_or_create(env.path("replica"), "vm1").unwrap();
    let rr = alike::replicate_images("vm1", &[&rimg], &replica, &alike::ReplicateOptions::default()).unwrap();
    got.insert("replicate", ser(&rr));
    got.insert("replica_point", ser(&replica.points().unwrap()[0]));
    got.insert("replication_record", ser(&replica.history().unwrap()[0]));
    let secret = alike::JobSecret::from_bytes([5; 32]);
    let mut s = alike::ReplicationJob::new("j", "vm1", alike::JobRole::Sender, secret.clone());
    s.disks.push(alike::JobSource::Image { path: rimg.clone() });
    let mut r = alike::ReplicationJob::new("j", "vm1", alike::JobRole::Receiver, secret);
    r.replica = Some(alike::JobReplica::Dir { path: env.path("replica2") });
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.peer = Some(l.local_addr().unwrap().to_string());
    let (se, re) = std::thread::scope(|sc| {
        let t = sc.spawn(|| alike::run_end(&r, alike::JobLink::Listener(l), &alike::EndOptions::default()));
        let se = alike::run_end(&s, alike::JobLink::FromJob, &alike::EndOptions::default()).unwrap();
        (se, t.join().unwrap().unwrap())
    });
    got.insert("replicate_sender", ser(&se));
    got.insert("replicate_receiver", ser(&re));
    xen_replica_reports(&env, &mut got);

    let now = json!(got.iter().map(|(k, v)| (k.to_string(), shape(v))).collect::<serde_json::Map<_, _>>());
    if std::env::var_os("ALIKE_BLESS").is_some() {
        std::fs::write(schema_path(), serde_json::to_string_pretty(&now).unwrap() + "\n").unwrap();
    }
    let pinned: Value = serde_json::from_str(&std::fs::read_to_string(schema_path()).unwrap()).unwrap();
    assert_eq!(
        now, pinned,
        "a report's JSON schema changed: scripts read these keys. If deliberate, bless it \
         (ALIKE_BLESS=1 cargo test -p alike --test integration schema) and keep the old names as aliases"
    );
}

/// A replica VM on a second simulated pool: the run, a test failover, a
/// failover and a failback (the original halted first).
fn xen_replica_reports(env: &Env, got: &mut BTreeMap<&str, Value>) {
    use alike_xen_sim::{Class, SimConfig, Simulator};
    let sims: Vec<Simulator> =
        ["xa", "xb"].iter().map(|n| Simulator::start(SimConfig::new(env.path(n)).demo(true)).unwrap()).collect();
    let pools: Vec<std::sync::Arc<alike::XenPool>> = sims
        .iter()
        .map(|s| std::sync::Arc::new(alike::xen_pool(&s.url(), "root", s.password(), None).unwrap()))
        .collect();
    let net = "Pool-wide network associated with eth0";
    let ro = alike::XenReplicaOptions::new("Local storage", env.path("xstate")).network(net);
    let (r, rep) =
        alike::replicate_xen(&pools[0], "web-01", pools[1].clone(), &ro, &alike::ReplicateOptions::default()).unwrap();
    got.insert("xen_replicate", erased::Ser::value(&r));
    let t = rep.test_failover(None, None, true).unwrap();
    got.insert("xen_test_vm", erased::Ser::value(&t));
    rep.end_test(&t.uuid).unwrap();
    let map = [(net.to_owned(), net.to_owned())].into_iter().collect();
    let f = rep.failover(None, &map, false).unwrap();
    got.insert("xen_failover", erased::Ser::value(&f));
    let web = sims[0].lookup(Class::Vm, "web-01").unwrap();
    sims[0].set_power_state(&web, "Halted").unwrap();
    let fb = rep.failback(pools[0].clone(), "web-01", false, &alike::ReplicateOptions::default()).unwrap();
    got.insert("xen_failback", erased::Ser::value(&fb));
}

/// Serialises any report (object safety for the table above).
mod erased {
    pub trait Ser {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap()
        }
    }
}
