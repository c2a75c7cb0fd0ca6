//! `alike replicate --source-xen … --target-xen …` and `alike replica
//! xen-list|test|test-end|failover|failback` against two `alike-xapi-sim`
//! binaries (two pools): a full run, an incremental one, points listed, a
//! test failover, a failover and a failback with the bytes it sent, then a
//! failback onto a new VM.
#![allow(missing_docs)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[path = "common/xapi_sim.rs"]
mod xapi_sim;
use xapi_sim::Sim;

const NET: &str = "Pool-wide network associated with eth0";

fn alike(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_alike"));
    c.env("ALIKE_CACHE_DIR", dir.join("cache"))
        .env("ALIKE_SOURCE_XEN_PASSWORD", "alike")
        .env("ALIKE_TARGET_XEN_PASSWORD", "alike")
        .env("ALIKE_XEN_PASSWORD", "alike")
        .env("ALIKE_ORIGINAL_XEN_PASSWORD", "alike")
        .env_remove("ALIKE_STORE")
        .env_remove("ALIKE_XEN_URL");
    c
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let o = alike(dir).args(args).output().unwrap();
    assert!(o.status.success(), "alike {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn replicate_test_fail_over_and_back_between_two_pools() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = Sim::start(&d.join("a"));
    let b = Sim::start(&d.join("b"));
    let state = d.join("replicas");
    let st = state.to_str().unwrap();
    let rep = |extra: &[&str]| {
        let mut args = vec![
            "replicate",
            "--vm",
            "web-01",
            "--source-xen",
            &a.url,
            "--target-xen",
            &b.url,
            "--sr",
            "Local storage",
            "--network",
            NET,
            "--replica-state",
            st,
            "--json",
        ];
        args.extend_from_slice(extra);
        json(d, &args)
    };
    let r1 = rep(&[]);
    assert_eq!(r1["point"], 1);
    assert_eq!(r1["replica_name"], "web-01 (replica)");
    let vms = json(d, &["xen", "--url", &a.url, "vms", "--json"]);
    let web = vms.as_array().unwrap().iter().find(|v| v["name"] == "web-01").unwrap().clone();
    let root = web["disks"][0]["vdi_uuid"].as_str().unwrap().to_owned();
    a.guest_write(&root, 7 << 20, &[0x5a; 4096]);
    let r2 = rep(&["--keep", "5"]);
    assert_eq!(r2["point"], 2);
    let sent = r2["sent_bytes"].as_u64().unwrap();
    assert!(sent < 256 << 10 && r1["sent_bytes"].as_u64().unwrap() > 10 * sent, "{r2}");

    let on = |cmd: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> =
            ["replica", cmd, "--xen", &b.url, "--replica", "web-01 (replica)", "--replica-state", st]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let json_on = |args: Vec<String>| json(d, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let points = json_on(on("xen-list", &["--json"]));
    let ids: Vec<u64> = points.as_array().unwrap().iter().map(|p| p["point"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2]);
    assert!(points[0]["time"].as_str().unwrap().ends_with('Z'));

    let t = json_on(on("test", &["--point", "1", "--json"]));
    assert_eq!((t["point"].as_u64(), t["started"].as_bool()), (Some(1), Some(true)));
    let o = alike(d).args(on("test-end", &["--vm", t["uuid"].as_str().unwrap()])).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let f = json_on(on("failover", &["--map", &format!("{NET}={NET}"), "--start", "--json"]));
    assert_eq!((f["point"].as_u64(), f["started"].as_bool()), (Some(2), Some(true)));

    // The original is halted; the failed-over VM's changes (none but the source's own
    // moves since point 2: nothing) go back, and roles swap.
    b.post(&format!("/sim/power?vm={}&state=Running", f["uuid"].as_str().unwrap()));
    a.post(&format!("/sim/power?vm={}&state=Halted", web["uuid"].as_str().unwrap()));
    let back = json_on(on("failback", &["--original-xen", &a.url, "--original-vm", "web-01", "--start", "--json"]));
    let sent = back["sent_bytes"].as_u64().unwrap();
    assert!(back["needed_bytes"].as_u64().unwrap() == 0 && sent < 64 << 10, "{back}");
    assert_eq!(back["roles"]["started"], true);
    // Replication resumes from the original onto the replica again.
    let r3 = rep(&[]);
    assert_eq!(r3["report"]["needed_bytes"], 0);

    // Failover again, then failback onto a new VM made on the original pool.
    let f2 = json_on(on("failover", &["--map", &format!("{NET}={NET}"), "--json"]));
    assert_eq!(f2["point"], r3["point"]);
    let refused = |args: Vec<String>| -> String {
        let o = alike(d).args(args).output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = refused(on("failback", &["--original-xen", &a.url, "--new-vm"]));
    assert!(e.contains("--sr"), "{e}");
    let e = refused(on("failback", &["--original-xen", &a.url, "--original-vm", "web-01", "--new-vm", "--sr", "x"]));
    assert!(e.contains("cannot be used with"), "{e}");
    let vms_before = json(d, &["xen", "--url", &a.url, "vms", "--json"]).as_array().unwrap().len();
    let e = refused(on("failback", &["--original-xen", &a.url, "--new-vm", "--sr", "no such SR"]));
    assert!(e.contains("no such SR"), "{e}");
    assert_eq!(json(d, &["xen", "--url", &a.url, "vms", "--json"]).as_array().unwrap().len(), vms_before);
    let args = ["--original-xen", &a.url, "--new-vm", "--sr", "Local storage", "--network", NET];
    let back = json_on(on("failback", &[&args[..], &["--name", "web-01 (rebuilt)", "--json"]].concat()));
    eprintln!("failback onto a new VM: {back}");
    assert_eq!(back["roles"]["original_name"], "web-01 (rebuilt)");
    assert!(back["needed_bytes"].as_u64().unwrap() > 1 << 20, "a whole copy: {back}");
    let vms = json(d, &["xen", "--url", &a.url, "vms", "--json"]);
    assert_eq!(vms.as_array().unwrap().len(), vms_before + 1);
    assert!(vms.as_array().unwrap().iter().any(|v| v["name"] == "web-01 (rebuilt)"));
}

/// `--backup-to` and `--seed-from` with a Xen target, and `replica
/// xen-abandon`: one-pass onto one DR pool (the VM read once, a version and a
/// point), then a second DR pool's replica seeded from that version.
#[test]
fn one_pass_and_seeded_xen_replicas_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = Sim::start(&d.join("a"));
    let b = Sim::start(&d.join("b"));
    let c = Sim::start(&d.join("c"));
    let store = d.join("store");
    let store = store.to_str().unwrap();
    let o = alike(d).env("ALIKE_PASSWORD", "pw").args(["--store", store, "init"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let state = d.join("replicas");
    let st = state.to_str().unwrap();
    let rep = |target: &str, extra: &[&str]| {
        let mut args = vec![
            "replicate",
            "--vm",
            "web-01",
            "--source-xen",
            &a.url,
            "--target-xen",
            target,
            "--sr",
            "Local storage",
            "--network",
            NET,
            "--replica-state",
            st,
            "--json",
        ];
        args.extend_from_slice(extra);
        alike(d).env("ALIKE_PASSWORD", "pw").args(&args).output().unwrap()
    };
    let ok = |o: std::process::Output| -> Value {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let r1 = ok(rep(&b.url, &["--backup-to", store]));
    assert_eq!(r1["point"], 1);
    assert_eq!(r1["read_bytes"], 96u64 << 20, "{r1}");
    let version = r1["report"]["backup"]["id"].as_str().unwrap().to_owned();
    assert!(r1["report"]["store_read_bytes"].as_u64().unwrap() > 0);

    let vms = json(d, &["xen", "--url", &a.url, "vms", "--json"]);
    let web = vms.as_array().unwrap().iter().find(|v| v["name"] == "web-01").unwrap().clone();
    a.guest_write(web["disks"][0]["vdi_uuid"].as_str().unwrap(), 7 << 20, &[0x5a; 4096]);
    let seed = format!("{store}:{version}");
    let both = rep(&c.url, &["--seed-from", &seed, "--backup-to", store]);
    assert!(!both.status.success() && String::from_utf8_lossy(&both.stderr).contains("--seed-from"));
    let r2 = ok(rep(&c.url, &["--seed-from", &seed]));
    assert_eq!(r2["point"], 1);
    let seeded = r2["report"]["replica"]["seeded_bytes"].as_u64().unwrap();
    let sent = r2["sent_bytes"].as_u64().unwrap();
    assert!(seeded > 0 && sent < r1["sent_bytes"].as_u64().unwrap() / 4, "{r2}");
    let o = alike(d)
        .args(["replica", "xen-abandon", "--xen", &c.url, "--replica", "web-01 (replica)", "--replica-state", st])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to discard"));
}
