//! Booted processors (`SimConfig::boot_processors`), checked with OpenSSH's
//! own client: a processor VM cloned from the template starts a guest at its
//! xenstore address with the injected host key (then gone from xenstore),
//! its disks at `/dev/xvd<a+userdevice>` — an `RO` one refusing writes, an
//! `RW` one written back into the VDI at shutdown — and `alike` on its
//! `PATH`. Needs root, iproute2 and openssh-server; skips (loudly) without.
#![allow(missing_docs)]

use std::process::Command;

use alike_xen_sim::{BootProcessors, Class, SimConfig, Simulator, Value};

fn call(sim: &Simulator, method: &str, mut params: Vec<Value>) -> Value {
    params.insert(0, Value::s(sim.login().unwrap()));
    sim.call(method, params).unwrap_or_else(|e| panic!("{method}: {e}"))
}

fn rec(pairs: &[(&str, Value)]) -> Value {
    Value::Struct(pairs.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect())
}

fn vbd(sim: &Simulator, vm: &str, vdi: &str, userdevice: &str, mode: &str) -> String {
    let r = rec(&[
        ("VM", Value::s(vm)),
        ("VDI", Value::s(vdi)),
        ("userdevice", Value::s(userdevice)),
        ("mode", Value::s(mode)),
        ("type", Value::s("Disk")),
        ("bootable", Value::Bool(false)),
        ("empty", Value::Bool(false)),
        ("other_config", rec(&[])),
        ("qos_algorithm_type", Value::s("")),
        ("qos_algorithm_params", rec(&[])),
    ]);
    call(sim, "VBD.create", vec![r]).as_str().unwrap().to_string()
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data).as_slice())
}

#[test]
fn a_started_processor_vm_boots_a_guest_with_its_address_key_and_disks() {
    if let Some(why) = alike_netns::unavailable() {
        alike_testing::skip(&why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);
    let authorized = alike_testing::sshd::keygen(&p("id"), "");
    alike_testing::sshd::keygen(&p("hostkey"), "");
    let host_private = std::fs::read_to_string(p("hostkey")).unwrap();
    let host_public = std::fs::read_to_string(p("hostkey.pub")).unwrap();
    // `alike` here is a script that says who it is.
    std::fs::write(p("alike"), "#!/bin/sh\necho alike-stand-in \"$@\"\n").unwrap();
    Command::new("chmod").arg("755").arg(p("alike")).status().unwrap();
    let sim = Simulator::start(
        SimConfig::new(p("sim")).demo(true).boot_processors(BootProcessors::new(p("alike"), authorized)),
    )
    .unwrap();
    // A /24 no interface here uses.
    let used = String::from_utf8_lossy(&Command::new("ip").args(["-o", "-4", "addr", "show"]).output().unwrap().stdout)
        .into_owned();
    let start = std::process::id() as usize;
    let (a, b) = (0..30 * 256)
        .map(|i| {
            let n = (start + i) % (30 * 256);
            (170 + (n / 256) as u8, (n % 256) as u8)
        })
        .find(|(a, b)| !used.contains(&format!(" 10.{a}.{b}.")))
        .unwrap();
    let address = format!("10.{a}.{b}.7");

    let template = sim.lookup(Class::Vm, "Debian Bookworm 12").unwrap();
    let vm = call(&sim, "VM.clone", vec![Value::s(&template), Value::s("processor-1")]).as_str().unwrap().to_string();
    for (k, v) in [("address", address.as_str()), ("prefix", "24"), ("host-key", host_private.as_str())] {
        call(&sim, "VM.add_to_xenstore_data", vec![Value::s(&vm), Value::s(format!("vm-data/alike/{k}")), Value::s(v)]);
    }
    let (root, data) = (sim.lookup(Class::Vdi, "web-01 root").unwrap(), sim.lookup(Class::Vdi, "web-01 data").unwrap());
    vbd(&sim, &vm, &data, "1", "RW");
    call(&sim, "VM.start", vec![Value::s(&vm), Value::Bool(false), Value::Bool(false)]);
    // Hot-plugged after the start, read-only.
    let ro = vbd(&sim, &vm, &root, "2", "RO");
    call(&sim, "VBD.plug", vec![Value::s(&ro)]);
    assert_eq!(sim.field(Class::Vbd, &ro, "device").unwrap().as_str(), Some("xvdc"));

    let xs = sim.field(Class::Vm, &vm, "xenstore_data").unwrap();
    let xs = xs.as_struct().unwrap();
    assert!(!xs.contains_key("vm-data/alike/host-key"), "the host key stays in xenstore: {xs:?}");
    assert_eq!(xs.get("vm-data/alike/address").and_then(Value::as_str), Some(address.as_str()));
    let booted = sim.booted_processors();
    assert_eq!(booted.len(), 1);
    assert_eq!(booted[0].address.to_string(), address);
    let mut disks = booted[0].disks.clone();
    disks.sort();
    assert_eq!(disks, [("/dev/xvdb".to_string(), data.clone()), ("/dev/xvdc".to_string(), root.clone())]);

    // OpenSSH's client, the host key pinned to the one injected.
    std::fs::write(p("known_hosts"), format!("{address} {host_public}")).unwrap();
    let ssh = |cmd: &str| {
        let o = Command::new("ssh")
            .arg("-i")
            .arg(p("id"))
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", p("known_hosts").display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .arg(format!("root@{address}"))
            .arg(cmd)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, out, err) = ssh("alike processor; sha256sum /dev/xvdb /dev/xvdc");
    assert!(ok, "{err}");
    let size = |v: &str| sim.field(Class::Vdi, v, "virtual_size").unwrap().as_int().unwrap() as usize;
    let want_data = sha256(&sim.read_vdi(&data, 0, size(&data)).unwrap());
    let want_root = sha256(&sim.read_vdi(&root, 0, size(&root)).unwrap());
    assert!(out.starts_with("alike-stand-in processor\n"), "{out}");
    assert!(
        out.contains(&format!("{want_data}  /dev/xvdb")) && out.contains(&format!("{want_root}  /dev/xvdc")),
        "{out}"
    );
    // The RO disk refuses writes; the RW one takes them.
    let (ok, _, err) = ssh("printf x | dd of=/dev/xvdc bs=1 seek=0 conv=notrunc status=none");
    assert!(!ok, "a write to the RO disk succeeded");
    assert!(err.to_lowercase().contains("read-only"), "{err}");
    let (ok, _, err) = ssh("printf hello | dd of=/dev/xvdb bs=1 seek=131072 conv=notrunc status=none && sync");
    assert!(ok, "{err}");
    // Not in the VDI until the guest lets go of the disk.
    assert_ne!(sim.read_vdi(&data, 131_072, 5).unwrap(), b"hello");
    call(&sim, "VM.hard_shutdown", vec![Value::s(&vm)]);
    assert_eq!(sim.read_vdi(&data, 131_072, 5).unwrap(), b"hello", "the RW disk's write was not written back");
    let root_after = sha256(&sim.read_vdi(&root, 0, size(&root)).unwrap());
    assert_eq!(root_after, want_root, "the RO disk changed");
    assert!(sim.booted_processors().is_empty());
    let ns = booted[0].netns.clone();
    assert!(!alike_netns::namespaces().unwrap().contains(&ns), "namespace {ns} left");
    let (ok, _, _) = ssh("true");
    assert!(!ok, "the guest still answers after its VM's shutdown");
}
