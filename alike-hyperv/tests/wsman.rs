//! The WS-Man client against the Hyper-V simulator (over real HTTP, NTLM
//! and message encryption): queries, associations, Get, method calls with
//! reference and embedded arguments, jobs that complete and jobs that fail.

use alike_hyperv::Error;
use alike_hyperv::wsman::{Arg, Client, ConnectOptions, Embedded, Epr, Filter, Instance, wql_quote};
use alike_hyperv_sim::{SimConfig, Simulator};

const USER: &str = "hvadmin";
const PASSWORD: &str = "Pa$$<w0rd>&'\"";

fn start() -> (tempfile::TempDir, Simulator, Client) {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::new(dir.path()).demo(true).credentials(USER, PASSWORD)).unwrap();
    let c = Client::connect(&ConnectOptions::new(&sim.url(), USER, PASSWORD)).unwrap();
    (dir, sim, c)
}

fn vm(c: &Client, name: &str) -> Instance {
    let mut v = c.query(&format!("SELECT * FROM Msvm_ComputerSystem WHERE ElementName = {}", wql_quote(name))).unwrap();
    assert_eq!(v.len(), 1, "{name}");
    v.remove(0)
}

fn service(c: &Client, class: &str) -> Epr {
    let mut v = c.query(&format!("SELECT * FROM {class}")).unwrap();
    assert_eq!(v.len(), 1);
    v.remove(0).epr.unwrap()
}

fn never() -> bool {
    false
}

#[test]
fn queries_associations_and_get() {
    let (_d, _sim, c) = start();
    let id = c.identify().unwrap();
    assert_eq!(id.vendor, "Microsoft Corporation");
    let all = c.query("SELECT * FROM Msvm_ComputerSystem").unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|i| i.epr.as_ref().is_some_and(|e| e.class() == "Msvm_ComputerSystem")));
    let web = vm(&c, "web-01");
    assert_eq!(web.text("Caption"), Some("Virtual Machine"));
    assert_eq!(web.u64("EnabledState"), Some(2));
    // Values with every XML and WQL special character travel escaped: no match, no fault.
    assert!(
        c.query(&format!("SELECT * FROM Msvm_ComputerSystem WHERE ElementName = {}", wql_quote("<a&b>'\"\\")))
            .unwrap()
            .is_empty()
    );

    let epr = web.epr.clone().unwrap();
    let got = c.get(&epr).unwrap();
    assert_eq!(got.text("ElementName"), Some("web-01"));
    let vssd = c.associators(&epr, "Msvm_SettingsDefineState", "Msvm_VirtualSystemSettingData").unwrap();
    assert_eq!(vssd.len(), 1);
    assert_eq!(vssd[0].text("VirtualSystemSubType"), Some("Microsoft:Hyper-V:SubType:2"));
    let same = c
        .enumerate(&Filter::Associated {
            object: epr.clone(),
            association: Some("Msvm_SettingsDefineState".into()),
            result: Some("Msvm_VirtualSystemSettingData".into()),
        })
        .unwrap();
    assert_eq!(same[0].text("InstanceID"), vssd[0].text("InstanceID"));
    let sasd = c
        .associators(
            vssd[0].epr.as_ref().unwrap(),
            "Msvm_VirtualSystemSettingDataComponent",
            "Msvm_StorageAllocationSettingData",
        )
        .unwrap();
    let mut paths: Vec<&str> = sasd.iter().flat_map(|s| s.texts("HostResource")).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "C:\\Hyper-V\\web-01\\Virtual Hard Disks\\web-01-data.vhdx",
            "C:\\Hyper-V\\web-01\\Virtual Hard Disks\\web-01-os.vhdx"
        ]
    );
    // Many requests over small pages: Pull is exercised (the default page is 100; all RASDs are fewer, so ask for all instances).
    let everything = c.query("SELECT * FROM CIM_ResourceAllocationSettingData").unwrap();
    assert!(everything.len() >= 10, "{}", everything.len());

    let missing = Epr::v2("Msvm_ComputerSystem").key("CreationClassName", "Msvm_ComputerSystem").key("Name", "NOPE");
    match c.get(&missing) {
        Err(Error::Fault { wmi_code: Some(0x8004_1002), .. }) => {}
        other => panic!("{other:?}"),
    }
    match c.query("SELECT * FROM Msvm_ComputerSystem WHERE Name LIKE 'x'") {
        Err(Error::Fault { wmi_code: Some(0x8004_1017), .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_password_is_refused() {
    let (_d, sim, _c) = start();
    match Client::connect(&ConnectOptions::new(&sim.url(), USER, "nope")) {
        Err(Error::AuthenticationFailed { user, .. }) => assert_eq!(user, USER),
        other => panic!("{other:?}"),
    }
    match Client::connect(&ConnectOptions::new(&sim.url(), "someone", PASSWORD)) {
        Err(Error::AuthenticationFailed { .. }) => {}
        other => panic!("{other:?}"),
    }
}

fn checkpoint(c: &Client, vm: &Epr) -> Instance {
    let svc = service(c, "Msvm_VirtualSystemSnapshotService");
    let settings = Embedded::new("Msvm_VirtualSystemSnapshotSettingData").prop("ConsistencyLevel", "uint8", "1");
    let (out, job) = c
        .invoke(
            &svc,
            "CreateSnapshot",
            &[
                ("AffectedSystem", Arg::Ref(vm.clone())),
                ("SnapshotSettings", Arg::Embedded(settings)),
                ("SnapshotType", Arg::Text("32768".into())),
            ],
            &never,
        )
        .unwrap();
    assert_eq!(out.return_value, 4096);
    assert_eq!(job.as_ref().and_then(|j| j.u64("JobState")), Some(7));
    let snaps = c
        .associators(out.out.reference("Job").unwrap(), "Msvm_AffectedJobElement", "Msvm_VirtualSystemSettingData")
        .unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].text("VirtualSystemType"), Some("Microsoft:Hyper-V:Snapshot:Recovery"));
    snaps.into_iter().next().unwrap()
}

fn changes(c: &Client, path: &str, limit: &str, size: u64) -> Result<Vec<(u64, u64)>, Error> {
    let svc = service(c, "Msvm_ImageManagementService");
    let mut at = 0;
    let mut out = Vec::new();
    while at < size {
        let (o, _) = c.invoke(
            &svc,
            "GetVirtualDiskChanges",
            &[
                ("Path", Arg::Text(path.into())),
                ("LimitId", Arg::Text(limit.into())),
                ("TargetSnapshotId", Arg::Text(String::new())),
                ("ByteOffset", Arg::Text(at.to_string())),
                ("ByteLength", Arg::Text((size - at).to_string())),
            ],
            &never,
        )?;
        let processed = o.out.u64("ProcessedByteLength").unwrap();
        assert!(processed > 0 && processed <= size - at);
        let offs: Vec<u64> = o.out.texts("ChangedByteOffsets").iter().map(|s| s.parse().unwrap()).collect();
        let lens: Vec<u64> = o.out.texts("ChangedByteLengths").iter().map(|s| s.parse().unwrap()).collect();
        out.extend(offs.into_iter().zip(lens));
        at += processed;
    }
    Ok(out)
}

#[test]
fn checkpoints_jobs_reference_points_and_rct() {
    let (_d, sim, c) = start();
    let web = vm(&c, "web-01").epr.unwrap();
    let vm_id = web.selector("Name").unwrap().to_owned();

    // A job that fails carries its own error text into ours.
    sim.fail_next_job("CreateSnapshot", 32768, "The guest's VSS writer <SqlServerWriter> failed & timed out");
    let svc = service(&c, "Msvm_VirtualSystemSnapshotService");
    let err = c
        .invoke(
            &svc,
            "CreateSnapshot",
            &[("AffectedSystem", Arg::Ref(web.clone())), ("SnapshotType", Arg::Text("32768".into()))],
            &never,
        )
        .unwrap_err();
    match &err {
        Error::Job { method, code, description, state, .. } => {
            assert_eq!((method.as_str(), *code, *state), ("CreateSnapshot", 32768, 10));
            assert_eq!(description, "The guest's VSS writer <SqlServerWriter> failed & timed out");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("SqlServerWriter"));

    let snap = checkpoint(&c, &web);
    let rsvc = svc.clone();
    let (out, _) = c
        .invoke(&rsvc, "ConvertToReferencePoint", &[("AffectedSnapshot", Arg::Ref(snap.epr.clone().unwrap()))], &never)
        .unwrap();
    let rp = c.get(out.out.reference("ResultingReferencePoint").unwrap()).unwrap();
    let rct = rp.texts("ResilientChangeTrackingIdentifiers").iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(rct.len(), 2);

    sim.guest_write(&vm_id, 1, (3 << 20) + 100, &[7u8; 5000]).unwrap();
    sim.guest_write(&vm_id, 1, 20 << 20, &[9u8; 1]).unwrap();
    let snap2 = checkpoint(&c, &web);
    let sasd = c
        .associators(
            snap2.epr.as_ref().unwrap(),
            "Msvm_VirtualSystemSettingDataComponent",
            "Msvm_StorageAllocationSettingData",
        )
        .unwrap();
    let data_path =
        sasd.iter().flat_map(|s| s.texts("HostResource")).find(|p| p.ends_with("web-01-data.vhdx")).unwrap().to_owned();
    let got = changes(&c, &data_path, &rct[1], 32 << 20).unwrap();
    assert_eq!(got, vec![(3 << 20, 64 << 10), (20 << 20, 64 << 10)]);
    // A foreign RCT id: the method's failure code, as an error.
    match changes(&c, &data_path, &rct[0], 32 << 20) {
        Err(Error::Method { code: 32773, method, .. }) => assert_eq!(method, "GetVirtualDiskChanges"),
        other => panic!("{other:?}"),
    }
    // After a reset every earlier id is refused.
    sim.reset_rct(&vm_id, 1).unwrap();
    assert!(matches!(changes(&c, &data_path, &rct[1], 32 << 20), Err(Error::Method { code: 32773, .. })));

    // Destroying the checkpoint merges its AVHDX: the VM's disk is its base again, with the guest's writes.
    c.invoke(&svc, "DestroySnapshot", &[("AffectedSnapshot", Arg::Ref(snap2.epr.clone().unwrap()))], &never).unwrap();
    let disks = sim.disks(&vm_id).unwrap();
    assert!(disks[1].win_path.ends_with("web-01-data.vhdx"));
    assert_eq!(sim.read_disk(&vm_id, 1, 20 << 20, 1).unwrap(), vec![9]);
    // The reference point can be destroyed.
    let rsvc = service(&c, "Msvm_VirtualSystemReferencePointService");
    c.invoke(&rsvc, "DestroyReferencePoint", &[("AffectedReferencePoint", Arg::Ref(rp.epr.clone().unwrap()))], &never)
        .unwrap();
    assert!(c.query("SELECT * FROM Msvm_VirtualSystemReferencePoint").unwrap().is_empty());
}

/// The fuzz body on stable: real replies of the simulator (every kind the
/// client decodes, faults included), mutated and cut deterministically.
#[test]
fn fuzz_smoke() {
    use alike_hyperv::wsman::soap;
    let (_d, sim, _c) = start();
    let to = sim.url();
    let web = Epr::v2("Msvm_ComputerSystem")
        .key("CreationClassName", "Msvm_ComputerSystem")
        .key("Name", &sim.vm_id("web-01").unwrap());
    let svc = Epr::v2("Msvm_VirtualSystemSnapshotService")
        .key("CreationClassName", "Msvm_VirtualSystemSnapshotService")
        .key("Name", "vssnapsvc")
        .key("SystemCreationClassName", "Msvm_ComputerSystem")
        .key("SystemName", "HV-SIM-01");
    let reqs = [
        soap::identify_request(),
        soap::enumerate_request(
            &to,
            &Filter::Wql("SELECT * FROM CIM_ResourceAllocationSettingData".into()),
            3,
            "1",
            60,
        ),
        soap::enumerate_request(&to, &Filter::Wql("SELECT * FROM Msvm_ComputerSystem".into()), 1, "2", 60),
        soap::get_request(&to, &web, "3", 60),
        soap::invoke_request(
            &to,
            &svc,
            "CreateSnapshot",
            &[("AffectedSystem", Arg::Ref(web.clone())), ("SnapshotType", Arg::Text("32768".into()))],
            "4",
            60,
        ),
        soap::get_request(&to, &Epr::v2("Msvm_ComputerSystem").key("Name", "x"), "5", 60),
        soap::enumerate_request(&to, &Filter::Wql("SELECT * FROM".into()), 1, "6", 60),
    ];
    let mut seeds: Vec<Vec<u8>> = reqs.iter().map(|r| sim.handle_soap(r).1.into_bytes()).collect();
    // A Pull reply too.
    let first = sim.handle_soap(&reqs[1]).1;
    let ctx = first.split("<n:EnumerationContext>").nth(1).unwrap().split('<').next().unwrap().to_owned();
    seeds.push(sim.handle_soap(&soap::pull_request(&to, &ctx, 2, "7", 60)).1.into_bytes());
    if let Some(dir) = std::env::var_os("WSMAN_FUZZ_SEEDS") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(std::path::Path::new(&dir).join(format!("reply-{i}")), s).unwrap();
        }
    }
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for s in &seeds {
        alike_hyperv::wsman::fuzz_one(s);
        for _ in 0..150 {
            let mut m = s.clone();
            for _ in 0..1 + rnd() % 4 {
                let i = (rnd() as usize) % m.len();
                m[i] = match rnd() % 4 {
                    0 => b'<',
                    1 => b'>',
                    2 => b'&',
                    _ => rnd() as u8,
                };
            }
            if rnd() % 3 == 0 {
                m.truncate((rnd() as usize) % m.len());
            }
            alike_hyperv::wsman::fuzz_one(&m);
        }
    }
}
