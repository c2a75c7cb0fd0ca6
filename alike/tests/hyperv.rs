//! Hyper-V end to end through the facade, against the Hyper-V simulator in
//! process (WS-Man with NTLM and encryption; disks over its Samba share):
//! the inventory, a full then an RCT-incremental backup of a VM with two
//! disks (the incremental reads exactly the 64 KiB blocks the guest
//! changed), bit-exact restores, and a reset RCT taking the loud fallback.
#![allow(missing_docs)]

use alike::{BackupOptions, HyperVHost, HyperVHostOptions, Hypervisor as _, RestoreOptions, Store};
use alike_hyperv_sim::{SimConfig, Simulator};

const KIB64: u64 = 64 << 10;
const USER: &str = "hvadmin";
const PASSWORD: &str = "Pa$$w0rd<&>";

struct Env {
    sim: Simulator,
    store: Store,
    dir: tempfile::TempDir,
    host: HyperVHost,
    vm: String,
}

impl Env {
    fn new() -> Option<Env> {
        if !["/usr/sbin/smbd", "/usr/bin/smbd"].iter().any(|p| std::path::Path::new(p).exists()) {
            alike_testing::skip("smbd is not installed (Debian package samba; bash scripts/test.sh installs it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let sim = Simulator::start(
            SimConfig::new(dir.path().join("sim")).demo(true).credentials(USER, PASSWORD).smb_port(Some(0)),
        )
        .unwrap();
        // Fixed 64 KiB blocks: RCT's 64 KiB ranges are exactly what is read.
        let store = Store::builder()
            .chunking(alike::Chunking::Fixed { block_size: 65536 })
            .passphrase("pw")
            .insecure_fast_kdf()
            .cache_dir(dir.path().join("cache"))
            .create(dir.path().join("store"))
            .unwrap();
        let mut o = HyperVHostOptions::new(&sim.url(), USER, PASSWORD);
        o.smb_port(sim.smb_addr().unwrap().port());
        let host = HyperVHost::connect(&o).unwrap();
        let vm = sim.vm_id("web-01").unwrap();
        Some(Env { sim, store, dir, host, vm })
    }
    fn disk(&self, d: usize, len: u64) -> Vec<u8> {
        self.sim.read_disk(&self.vm, d, 0, len as usize).unwrap()
    }
    fn restored(&self, v: &alike::Version, disk: u32) -> Vec<u8> {
        let p = self.dir.path().join(format!("r-{}-{disk}.img", v.short_id()));
        self.store.restore_to_file(v, disk, &p, &RestoreOptions::default()).unwrap();
        std::fs::read(p).unwrap()
    }
    /// Quiesced when the guest offers it (the demo's web-01 does: VSS).
    fn backup(&self) -> alike::VmBackupReport {
        let o = BackupOptions::default().quiesce(alike::Quiesce::IfSupported);
        self.store.backup_vm(&self.host, "web-01", &o).unwrap()
    }
}

fn blocks(writes: &[(u64, usize)]) -> u64 {
    let mut b: Vec<u64> = writes.iter().flat_map(|&(o, l)| (o / KIB64)..(o + l as u64).div_ceil(KIB64)).collect();
    b.sort_unstable();
    b.dedup();
    b.len() as u64
}

#[test]
fn inventory() {
    let Some(env) = Env::new() else { return };
    let vms = env.host.list_vms().unwrap();
    assert_eq!(vms.len(), 2);
    let web = vms.iter().find(|v| v.name == "web-01").unwrap();
    assert_eq!((web.hypervisor.as_str(), web.vcpus, web.memory_bytes), ("hyperv", Some(2), Some(2048 << 20)));
    assert_eq!(web.uuid.as_deref(), Some(env.vm.as_str()));
    assert_eq!(web.nics.len(), 1);
    assert_eq!(web.nics[0].network.as_deref(), Some("LAN"));
    let hv = &web.extra["hyperv"];
    assert_eq!(hv["generation"], 2);
    assert_eq!(hv["secure_boot"], true);
    let disks = hv["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0]["path"], "C:\\Hyper-V\\web-01\\Virtual Hard Disks\\web-01-os.vhdx");
    assert_eq!((disks[1]["controller"].as_str(), disks[1]["location"].as_u64()), (Some("scsi"), Some(1)));
    let db = vms.iter().find(|v| v.name == "db-01").unwrap();
    assert_eq!(db.extra["hyperv"]["generation"], 1);
    assert_eq!(db.extra["hyperv"]["disks"][0]["controller"], "ide");
    assert_eq!(env.host.vm_name(&env.vm).unwrap(), "web-01");
}

#[test]
fn full_then_rct_incremental_reads_only_changed_blocks_and_restores_bit_exact() {
    let Some(env) = Env::new() else { return };
    let (v1_os, v1_data) = (env.disk(0, 64 << 20), env.disk(1, 32 << 20));
    let r1 = env.backup();
    assert_eq!(r1.disks.len(), 2);
    assert_eq!(r1.consistency, "application-consistent");
    assert!(r1.warnings.is_empty(), "{:?}", r1.warnings);
    for d in &r1.disks {
        assert!(!d.incremental && d.fallback_reason.is_none(), "{d:?}");
        assert_eq!(d.transport, "smb");
    }
    assert!(r1.backup.version.disks.iter().all(|d| d.change_token.is_some()));
    assert_eq!(r1.backup.version.config().hypervisor, "hyperv");

    let os_writes =
        [(0u64, 10usize), (7 * KIB64 + 5, 3), (100 * KIB64 - 2, 4), (513 * KIB64, 65536), (1023 * KIB64, 7)];
    let data_writes = [(300 * KIB64, 100usize), (301 * KIB64, 100)];
    let w: Vec<(u64, Vec<u8>)> =
        os_writes.iter().enumerate().map(|(i, &(o, l))| (o, vec![0x11 * (i as u8 + 1); l])).collect();
    env.sim.guest_writes(&env.vm, 0, &w).unwrap();
    let w: Vec<(u64, Vec<u8>)> = data_writes.iter().map(|&(o, l)| (o, vec![0xEE; l])).collect();
    env.sim.guest_writes(&env.vm, 1, &w).unwrap();
    let (v2_os, v2_data) = (env.disk(0, 64 << 20), env.disk(1, 32 << 20));

    let r2 = env.backup();
    let (d0, d1) = (&r2.disks[0], &r2.disks[1]);
    assert!(
        d0.incremental && d1.incremental && d0.fallback_reason.is_none() && d1.fallback_reason.is_none(),
        "{d0:?} {d1:?}"
    );
    assert_eq!(d0.read_bytes, blocks(&os_writes) * KIB64, "exactly the changed 64 KiB blocks of disk 0");
    assert_eq!(d1.read_bytes, blocks(&data_writes) * KIB64);
    assert_eq!(r2.released.destroyed_snapshots.len(), 1, "the first backup's reference point is released");

    assert!(env.restored(&r1.backup.version, 0) == v1_os);
    assert!(env.restored(&r1.backup.version, 1) == v1_data);
    assert!(env.restored(&r2.backup.version, 0) == v2_os);
    assert!(env.restored(&r2.backup.version, 1) == v2_data);

    // A reset RCT (resize, RCT off and on): disk 0 falls back loudly, disk 1 stays incremental.
    env.sim.reset_rct(&env.vm, 0).unwrap();
    env.sim.guest_write(&env.vm, 0, 9 * KIB64, b"after the reset").unwrap();
    let r3 = env.backup();
    let d0 = &r3.disks[0];
    assert!(!d0.incremental, "{d0:?}");
    let why = d0.fallback_reason.as_deref().unwrap();
    assert!(why.contains("GetVirtualDiskChanges") && why.contains("32773"), "{why}");
    assert!(r3.disks[1].incremental && r3.disks[1].read_bytes == 0, "{:?}", r3.disks[1]);
    assert!(env.restored(&r3.backup.version, 0) == env.disk(0, 64 << 20));

    // The reference point a backup relies on removed: a loud fallback again.
    let c = env.host.client();
    let rp = c.query("SELECT * FROM Msvm_VirtualSystemReferencePoint").unwrap();
    assert_eq!(rp.len(), 1, "one reference point is kept");
    let svc = c.query("SELECT * FROM Msvm_VirtualSystemReferencePointService").unwrap().remove(0).epr.unwrap();
    c.invoke(
        &svc,
        "DestroyReferencePoint",
        &[("AffectedReferencePoint", alike_hyperv::wsman::Arg::Ref(rp[0].epr.clone().unwrap()))],
        &|| false,
    )
    .unwrap();
    let r4 = env.backup();
    assert!(
        r4.disks
            .iter()
            .all(|d| !d.incremental && d.fallback_reason.as_deref().is_some_and(|w| w.contains("no reference point"))),
        "{:?}",
        r4.disks
    );
    assert!(env.restored(&r4.backup.version, 1) == env.disk(1, 32 << 20));

    // A recovery checkpoint left by an unfinished run is reported; the backup still works.
    let snap_svc = c.query("SELECT * FROM Msvm_VirtualSystemSnapshotService").unwrap().remove(0).epr.unwrap();
    let vm_epr =
        c.query("SELECT * FROM Msvm_ComputerSystem WHERE ElementName = 'web-01'").unwrap().remove(0).epr.unwrap();
    c.invoke(
        &snap_svc,
        "CreateSnapshot",
        &[
            ("AffectedSystem", alike_hyperv::wsman::Arg::Ref(vm_epr)),
            ("SnapshotType", alike_hyperv::wsman::Arg::Text("32768".into())),
        ],
        &|| false,
    )
    .unwrap();
    env.sim.guest_write(&env.vm, 1, 3 * KIB64, b"under two checkpoints").unwrap();
    let r4b = env.backup();
    assert!(r4b.warnings.iter().any(|w| w.contains("left by an unfinished backup")), "{:?}", r4b.warnings);
    assert!(env.restored(&r4b.backup.version, 1) == env.disk(1, 32 << 20));

    // Without VSS in the guest a quiesced backup is crash-consistent, and says so.
    env.sim.set_vss(&env.vm, false).unwrap();
    let r5 = env.backup();
    assert_eq!(r5.consistency, "crash-consistent");
    assert!(r5.warnings.iter().any(|w| w.contains("crash-consistent")), "{:?}", r5.warnings);
    assert!(r5.disks.iter().all(|d| d.incremental && d.read_bytes == 0), "{:?}", r5.disks);
}

/// The simulator's own model of a VM (not read through our client).
fn summary(sim: &Simulator, name: &str) -> alike_hyperv_sim::VmSummary {
    sim.vm_summaries().into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no VM {name}"))
}

#[test]
fn a_version_restores_as_a_new_vm_field_by_field() {
    let Some(env) = Env::new() else { return };
    env.sim.guest_write(&env.vm, 1, 5 * KIB64 + 3, b"restored data").unwrap();
    let r = env.backup();
    let v = r.backup.version.clone();
    let before = summary(&env.sim, "web-01");
    let place = alike::Placement::on("C:\\Restored").name("web-01 (restored)");
    let rr = env.store.restore_vm(&v, &env.host, &place, &RestoreOptions::default()).unwrap();
    assert!(rr.warnings.is_empty(), "{:?}", rr.warnings);
    assert_eq!(rr.name, "web-01 (restored)");
    let now = summary(&env.sim, "web-01 (restored)");
    assert_eq!(rr.vm_uuid, now.id);
    assert_eq!(
        (now.generation, now.secure_boot, now.vcpus, now.memory_mb, now.running),
        (before.generation, before.secure_boot, before.vcpus, before.memory_mb, false)
    );
    assert_eq!(now.disks.len(), 2);
    for (i, (a, b)) in now.disks.iter().zip(&before.disks).enumerate() {
        assert_eq!((&a.0, a.1, a.2, a.4), (&b.0, b.1, b.2, b.4), "disk {i}: controller, location, size");
        let file = b.3.rsplit('\\').next().unwrap();
        assert_eq!(a.3, format!("C:\\Restored\\web-01 (restored)\\{file}"));
        assert_eq!(rr.disks[i].ids["path"], a.3);
        assert!(env.sim.read_disk(&now.id, i, 0, a.4 as usize).unwrap() == env.restored(&v, i as u32), "disk {i}");
    }
    assert_eq!(now.nics, before.nics, "MAC and switch");
    // No temporary copy is left on the host.
    let local = env.sim.c_drive().join("Restored").join("web-01 (restored)");
    assert!(!std::fs::read_dir(&local).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("partial")));

    // Again under the same name: the files exist, nothing is overwritten or left behind.
    let n = env.sim.vm_summaries().len();
    let e = env.store.restore_vm(&v, &env.host, &place, &RestoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("exists on the host"), "{e}");
    assert_eq!(env.sim.vm_summaries().len(), n);

    // An unknown switch: refused before anything is made.
    let bad = alike::Placement::on("C:\\Restored").name("x").network("No such switch");
    let e = env.store.restore_vm(&v, &env.host, &bad, &RestoreOptions::default()).unwrap_err();
    assert_eq!(e.kind(), alike::ErrorKind::NotFound, "{e}");
    assert_eq!(env.sim.vm_summaries().len(), n);

    // A step the host refuses: the VM defined so far is destroyed and the folder made is removed.
    env.sim.fail_next_job("AddResourceSettings", 32768, "injected: out of SCSI slots");
    let e = env
        .store
        .restore_vm(&v, &env.host, &alike::Placement::on("C:\\Other").name("y"), &RestoreOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("injected"), "{e}");
    assert_eq!(env.sim.vm_summaries().len(), n);
    assert!(!env.sim.c_drive().join("Other").exists());

    // Generation 1 with its disk on IDE, on another switch, with new MACs.
    env.sim.add_switch("Backup LAN");
    let db_before = summary(&env.sim, "db-01");
    let rdb = env.store.backup_vm(&env.host, "db-01", &BackupOptions::default()).unwrap();
    let place = alike::Placement::on("D:\\x").name("db-01 r").network("Backup LAN").keep_macs(false);
    let e = env.store.restore_vm(&rdb.backup.version, &env.host, &place, &RestoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("D$"), "the simulated host shares C: only: {e}");
    let place = alike::Placement::on("C:\\Restored").name("db-01 r").network("Backup LAN").keep_macs(false);
    env.store.restore_vm(&rdb.backup.version, &env.host, &place, &RestoreOptions::default()).unwrap();
    let db = summary(&env.sim, "db-01 r");
    assert_eq!((db.generation, db.secure_boot, db.vcpus, db.memory_mb), (1, false, 1, 1024));
    assert_eq!((db.disks[0].0.as_str(), db.disks[0].1, db.disks[0].2), ("ide", 0, 0));
    assert_eq!(db.nics.len(), 1);
    assert_eq!(db.nics[0].1.as_deref(), Some("Backup LAN"));
    assert_ne!(db.nics[0].0, db_before.nics[0].0, "a MAC the host made");
    assert!(env.sim.read_disk(&db.id, 0, 0, 48 << 20).unwrap() == env.restored(&rdb.backup.version, 0));
}

/// A version of a Xen VM restores on the Hyper-V host, and a version of a
/// Hyper-V VM on a Xen pool (the XAPI simulator): one call each, the
/// configuration mapped (`alike/src/cross.rs`), the disks bit-exact.
#[test]
fn cross_hypervisor_restores_both_ways() {
    let Some(env) = Env::new() else { return };
    let xdir = tempfile::tempdir().unwrap();
    let xsim =
        alike_xen_sim::Simulator::start(alike_xen_sim::SimConfig::new(xdir.path().join("x")).demo(true)).unwrap();
    let pool = alike::xen_pool(&xsim.url(), "root", xsim.password(), None).unwrap();
    // Both demos have a web-01: the Hyper-V one first (a VM's versions are found by name).
    let h = env.backup().backup.version;

    // Xen (BIOS, two disks, a CD drive) → Hyper-V generation 1.
    let rx = env.store.backup_vm(&pool, "web-01", &BackupOptions::default()).unwrap();
    let xv = rx.backup.version.clone();
    let place = alike::Placement::on("C:\\FromXen").network("LAN");
    let r = env.store.restore_vm(&xv, &env.host, &place, &RestoreOptions::default()).unwrap();
    for w in ["CD drive", "platform flags", "Xen PV drivers", "SCSI"] {
        assert!(r.warnings.iter().any(|x| x.contains(w)), "{w}: {:?}", r.warnings);
    }
    let hv = env.sim.vm_summaries().into_iter().find(|s| s.id == r.vm_uuid).unwrap();
    assert_eq!(
        (hv.name.as_str(), hv.generation, hv.secure_boot, hv.vcpus, hv.memory_mb),
        ("web-01", 1, false, 2, 1024)
    );
    let slots: Vec<(&str, u32, u32)> = hv.disks.iter().map(|d| (d.0.as_str(), d.1, d.2)).collect();
    assert_eq!(slots, [("ide", 0, 0), ("scsi", 0, 0)]);
    assert_eq!(hv.disks[0].3, "C:\\FromXen\\web-01\\web-01 root.vhdx");
    let xmac = xv.config().nics[0].mac.clone().unwrap().replace(':', "").to_ascii_uppercase();
    assert_eq!(hv.nics, [(xmac, Some("LAN".to_owned()))]);
    for (i, d) in hv.disks.iter().enumerate() {
        assert!(env.sim.read_disk(&hv.id, i, 0, d.4 as usize).unwrap() == env.restored(&xv, i as u32), "disk {i}");
    }

    // Hyper-V (generation 2, secure boot) → Xen, UEFI with secure boot, disks as VHD uploads.
    let place =
        alike::Placement::on("Local storage").network("Pool-wide network associated with eth0").name("web-01 from hv");
    let r = env.store.restore_vm(&h, &pool, &place, &RestoreOptions::default()).unwrap();
    assert!(r.warnings.iter().any(|w| w.contains("Xen PV drivers")), "{:?}", r.warnings);
    let (vm_ref, raw) = pool.find_vm(&r.vm_uuid).unwrap();
    assert_eq!(raw["name_label"], "web-01 from hv");
    assert_eq!(raw["HVM_boot_params"]["firmware"], "uefi");
    assert_eq!(raw["platform"]["secureboot"], "true");
    assert_eq!((raw["VCPUs_at_startup"].as_u64(), raw["memory_static_max"].as_u64()), (Some(2), Some(2048 << 20)));
    let cfg = pool.vm_config(&vm_ref).unwrap();
    assert_eq!(cfg.disks.len(), 2);
    assert_eq!(cfg.nics[0].mac.replace(':', "").to_ascii_uppercase(), summary(&env.sim, "web-01").nics[0].0);
    for (u, d) in r.disks.iter().zip(&cfg.disks) {
        assert_eq!(u.format, "vhd", "{u:?}");
        assert_eq!(d.userdevice, u.position.to_string());
        let vdi = xsim.lookup(alike_xen_sim::Class::Vdi, &d.name_label).unwrap();
        assert!(
            xsim.read_vdi(&vdi, 0, u.size as usize).unwrap() == env.restored(&h, u.position),
            "disk {}",
            u.position
        );
    }
}

/// A replica folder registered on the host: the VM has the recorded
/// configuration, the host refuses to start it, failover lets it start,
/// its disks are the replica's newest point, and the folder then refuses
/// runs until it is registered again.
#[test]
fn a_replica_folder_registers_as_a_replica_vm_and_fails_over() {
    let Some(env) = Env::new() else { return };
    let v1 = env.backup().backup.version;
    env.sim.guest_write(&env.vm, 0, 7 * KIB64 + 11, b"point two").unwrap();
    let v2 = env.backup().backup.version;
    let rdir = env.dir.path().join("replica");
    let replica = alike::Replica::open_or_create(&rdir, "web-01").unwrap();
    let ro = alike::ReplicateOptions::default();
    env.store.replicate_version(&v1, &replica, &ro).unwrap();
    env.store.replicate_version(&v2, &replica, &ro).unwrap();
    let newest = replica.points().unwrap().pop().unwrap();
    assert_eq!(replica.points().unwrap().len(), 2);

    let before = summary(&env.sim, "web-01");
    let place = alike::Placement::on("C:\\Replicas").name("web-01 (replica)");
    // The older version's configuration: the disks come from the replica, not the version.
    let r = replica.register_hyperv(&env.host, v1.config(), &place, &RestoreOptions::default()).unwrap();
    assert_eq!(r.point, newest.point);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let now = summary(&env.sim, "web-01 (replica)");
    assert_eq!(r.vm_id, now.id);
    assert!(now.replica && !now.running);
    assert!(env.host.is_replica(&now.id).unwrap());
    // Made a replica by Hyper-V Replica's own SetAuthorizationEntry.
    assert_eq!(now.replica_entry, Some(("*".into(), "alike".into(), "C:\\Replicas".into())));
    assert_eq!(
        (now.generation, now.secure_boot, now.vcpus, now.memory_mb),
        (before.generation, before.secure_boot, before.vcpus, before.memory_mb)
    );
    assert_eq!(now.nics, before.nics, "MAC and switch");
    assert_eq!(now.disks.len(), 2);
    for (i, (a, b)) in now.disks.iter().zip(&before.disks).enumerate() {
        assert_eq!((&a.0, a.1, a.2, a.4), (&b.0, b.1, b.2, b.4), "disk {i}: controller, location, size");
        let got = env.sim.read_disk(&now.id, i, 0, a.4 as usize).unwrap();
        assert!(got == env.restored(&v2, i as u32), "disk {i} is the newest point");
    }

    // Refused a start until failover (32775: invalid state).
    let e = env.host.set_running(&now.id, true).unwrap_err();
    assert!(e.to_string().contains("32775"), "{e}");
    assert!(!summary(&env.sim, "web-01 (replica)").running);
    // A second run still lands while it is a replica.
    env.store.replicate_version(&v2, &replica, &ro).unwrap();
    assert_eq!(replica.failed_over().unwrap(), None);

    replica.fail_over_hyperv(&env.host, &now.id).unwrap();
    assert!(!env.host.is_replica(&now.id).unwrap());
    env.host.set_running(&now.id, true).unwrap();
    assert!(summary(&env.sim, "web-01 (replica)").running);
    assert_eq!(replica.failed_over().unwrap().as_deref(), Some(now.id.as_str()));
    let e = env.store.replicate_version(&v2, &replica, &ro).unwrap_err();
    assert!(e.to_string().contains("failed over"), "{e}");
    // A failover of a VM that is no replica is refused.
    env.host.set_running(&now.id, false).unwrap();
    assert!(replica.fail_over_hyperv(&env.host, &now.id).is_err());

    // Registered again (a new VM, under a new name): runs are accepted again.
    let place2 = alike::Placement::on("C:\\Replicas").name("web-01 (replica 2)");
    replica.register_hyperv(&env.host, v1.config(), &place2, &RestoreOptions::default()).unwrap();
    assert!(summary(&env.sim, "web-01 (replica 2)").replica);
    assert_eq!(replica.failed_over().unwrap(), None);
    env.store.replicate_version(&v2, &replica, &ro).unwrap();

    // A host that is no Replica server: refused, and nothing is left (no
    // ordinary VM anyone could start, no files).
    env.sim.set_recovery_server(false);
    let place3 = alike::Placement::on("C:\\Replicas").name("web-01 (replica 3)");
    let e = replica.register_hyperv(&env.host, v1.config(), &place3, &RestoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a Replica server"), "{e}");
    assert!(env.sim.vm_summaries().iter().all(|v| v.name != "web-01 (replica 3)"));
    let left = env.dir.path().join("sim/C/Replicas/web-01 (replica 3)");
    let files: Vec<_> = std::fs::read_dir(&left).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(files.is_empty(), "{files:?}");
}

/// The folder records the configuration of the version a run replicated;
/// a test failover from an older point is a VM with no NICs over
/// differencing files on copies of the point, runs go on beside it, and
/// ending it removes only the test VM and its files.
#[test]
fn a_test_failover_from_a_chosen_point_beside_the_replica() {
    let Some(env) = Env::new() else { return };
    let v1 = env.backup().backup.version;
    env.sim.guest_write(&env.vm, 0, 7 * KIB64 + 11, b"point two").unwrap();
    let v2 = env.backup().backup.version;
    let rdir = env.dir.path().join("replica");
    let replica = alike::Replica::open_or_create(&rdir, "web-01").unwrap();
    let ro = alike::ReplicateOptions::default();
    assert_eq!(replica.vm_config().unwrap(), None);
    env.store.replicate_version(&v1, &replica, &ro).unwrap();
    env.store.replicate_version(&v2, &replica, &ro).unwrap();
    let cfg = replica.vm_config().unwrap().expect("recorded by the run");
    assert_eq!(&cfg, v2.config());
    let points = replica.points().unwrap();
    let want1: Vec<Vec<u8>> = (0..2).map(|d| env.restored(&v1, d)).collect();
    let (p1, p2) = (points[0].point, points[1].point);

    let reg = replica
        .register_hyperv(
            &env.host,
            &cfg,
            &alike::Placement::on("C:\\Replicas").name("web-01 (replica)"),
            &RestoreOptions::default(),
        )
        .unwrap();
    let orig = summary(&env.sim, "web-01");
    let t = replica
        .test_hyperv(&env.host, &cfg, Some(p1), &alike::Placement::on("C:\\Tests"), &RestoreOptions::default())
        .unwrap();
    assert_eq!((t.name.as_str(), t.point), ("web-01 - Test", p1));
    assert!(t.warnings.iter().any(|w| w.contains("no network adapters")), "{:?}", t.warnings);
    let test = summary(&env.sim, "web-01 - Test");
    assert!(test.nics.is_empty() && !test.replica, "{test:?}");
    assert_eq!(test.disks.len(), 2);
    assert_eq!(t.files.len(), 4);
    for (i, d) in test.disks.iter().enumerate() {
        assert!(d.3.ends_with("-test.avhdx"), "{}", d.3);
        assert!(env.sim.read_disk(&test.id, i, 0, d.4 as usize).unwrap() == want1[i], "disk {i}");
    }
    // It starts and writes into its differencing files only.
    env.host.set_running(&test.id, true).unwrap();
    env.sim.guest_write(&test.id, 0, 0, b"test write").unwrap();
    assert_eq!(env.sim.read_disk(&test.id, 0, 0, 10).unwrap(), b"test write");
    let copy = env.dir.path().join("sim/C/Tests/web-01 - Test").join(test.disks[0].3.rsplit('\\').next().unwrap());
    let copy = copy.to_str().unwrap().replace("-test.avhdx", ".vhdx");
    let src = alike_hyperv::vhdx::VhdxSource::open(&copy).unwrap();
    let mut got = vec![0u8; orig.disks[0].4 as usize];
    src.read_exact_at(0, &mut got).unwrap();
    assert!(got == want1[0], "the copy of the point is unchanged");
    // Replication goes on beside it; the replica VM is untouched.
    env.store.replicate_version(&v2, &replica, &ro).unwrap();
    assert!(replica.points().unwrap().iter().any(|p| p.point == p2));
    assert!(summary(&env.sim, "web-01 (replica)").replica);

    // Ending refuses a VM that is no test VM, then removes the test VM and its four files only.
    let e = alike::Replica::end_test_hyperv(&env.host, &reg.vm_id).unwrap_err();
    assert!(e.to_string().contains("no test VM"), "{e}");
    let gone = alike::Replica::end_test_hyperv(&env.host, &test.id).unwrap();
    assert_eq!(gone.len(), 4);
    assert!(env.sim.vm_summaries().iter().all(|v| v.name != "web-01 - Test"));
    let left: Vec<_> = std::fs::read_dir(env.dir.path().join("sim/C/Tests/web-01 - Test")).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    let replica_vm = summary(&env.sim, "web-01 (replica)");
    for (i, d) in replica_vm.disks.iter().enumerate() {
        assert!(env.sim.read_disk(&replica_vm.id, i, 0, d.4 as usize).unwrap() == env.restored(&v2, i as u32));
    }

    // On an isolated switch instead: the NICs are there, on it, with new MACs.
    let t2 = replica
        .test_hyperv(
            &env.host,
            &cfg,
            None,
            &alike::Placement::on("C:\\Tests").network("LAN"),
            &RestoreOptions::default(),
        )
        .unwrap();
    assert_eq!(t2.point, replica.points().unwrap().last().unwrap().point, "the newest point");
    let test2 = summary(&env.sim, "web-01 - Test");
    assert_eq!(test2.nics.len(), orig.nics.len());
    for (n, o) in test2.nics.iter().zip(&orig.nics) {
        assert_eq!(n.1.as_deref(), Some("LAN"));
        assert_ne!(n.0, o.0, "a new MAC");
    }
    alike::Replica::end_test_hyperv(&env.host, &t2.vm_id).unwrap();
}

/// Failback from Hyper-V onto the original source files: only the ranges
/// the failed-over VM changed are read, only bytes that differ are written,
/// the originals then equal the VM's disks, and the roles swap.
#[test]
fn a_failback_sends_back_only_what_changed() {
    let Some(env) = Env::new() else { return };
    let v1 = env.backup().backup.version;
    let origs: Vec<std::path::PathBuf> = (0..2)
        .map(|d| {
            let p = env.dir.path().join(format!("orig{d}.img"));
            std::fs::write(&p, env.restored(&v1, d)).unwrap();
            p
        })
        .collect();
    let replica = alike::Replica::open_or_create(env.dir.path().join("replica"), "web-01").unwrap();
    let ro = alike::ReplicateOptions::default();
    alike::replicate_images("web-01", &origs, &replica, &ro).unwrap();
    assert_eq!(replica.vm_config().unwrap(), None, "plain images record no configuration");
    let place = alike::Placement::on("C:\\Replicas").name("web-01 (replica)");
    let reg = replica.register_hyperv(&env.host, v1.config(), &place, &RestoreOptions::default()).unwrap();
    let id = reg.vm_id.clone();
    let e = replica.failback_hyperv(&env.host, &id, &origs, &RestoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not failed over"), "{e}");
    replica.fail_over_hyperv(&env.host, &id).unwrap();

    // The failed-over VM runs: one real change on disk 0, and on disk 1 a
    // write of the bytes already there (changed for RCT, equal in content).
    env.host.set_running(&id, true).unwrap();
    env.sim.guest_write(&id, 0, 5 * KIB64 + 3, b"written after the failover").unwrap();
    let same = std::fs::read(&origs[1]).unwrap()[(40 * KIB64) as usize..(40 * KIB64) as usize + 100].to_vec();
    env.sim.guest_write(&id, 1, 40 * KIB64, &same).unwrap();
    let e = replica.failback_hyperv(&env.host, &id, &origs, &RestoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("turn the VM off"), "{e}");
    env.host.set_running(&id, false).unwrap();

    let r = replica.failback_hyperv(&env.host, &id, &origs, &RestoreOptions::default()).unwrap();
    assert!(!r.whole_disks, "{:?}", r.warnings);
    assert_eq!(r.changed_bytes, 2 * KIB64, "one 64 KiB block per disk");
    assert_eq!(r.read_bytes, r.changed_bytes, "only the changed ranges are read");
    assert_eq!(r.sent_bytes, 4096, "only the 4 KiB piece that differs is written");
    let now = summary(&env.sim, "web-01 (replica)");
    for (d, o) in origs.iter().enumerate() {
        let got = std::fs::read(o).unwrap();
        assert!(got == env.sim.read_disk(&id, d, 0, now.disks[d].4 as usize).unwrap(), "disk {d}");
    }
    // Roles swapped: the VM is a replica again (refused a start), the folder takes runs from the originals.
    assert!(env.host.is_replica(&id).unwrap());
    let e = env.host.set_running(&id, true).unwrap_err();
    assert!(e.to_string().contains("32775"), "{e}");
    assert_eq!(replica.failed_over().unwrap(), None);
    let again = alike::replicate_images("web-01", &origs, &replica, &ro).unwrap();
    assert!(again.sent_bytes < 2 * KIB64, "{}", again.sent_bytes);
}

/// Failback from Hyper-V onto new images (the original disks are gone):
/// an existing path is refused and left as it was, with nothing made;
/// then new raw images are made of the VM's disk sizes, hold its disks
/// bit-exact (only non-zero 4 KiB pieces written), and the roles swap
/// with them as the new originals.
#[test]
fn a_failback_onto_new_images_copies_the_vm_whole() {
    let Some(env) = Env::new() else { return };
    let v1 = env.backup().backup.version;
    let origs: Vec<std::path::PathBuf> = (0..2)
        .map(|d| {
            let p = env.dir.path().join(format!("orig{d}.img"));
            std::fs::write(&p, env.restored(&v1, d)).unwrap();
            p
        })
        .collect();
    let replica = alike::Replica::open_or_create(env.dir.path().join("replica"), "web-01").unwrap();
    let ro = alike::ReplicateOptions::default();
    alike::replicate_images("web-01", &origs, &replica, &ro).unwrap();
    let place = alike::Placement::on("C:\\Replicas").name("web-01 (replica)");
    let reg = replica.register_hyperv(&env.host, v1.config(), &place, &RestoreOptions::default()).unwrap();
    let id = reg.vm_id.clone();
    replica.fail_over_hyperv(&env.host, &id).unwrap();
    env.host.set_running(&id, true).unwrap();
    env.sim.guest_write(&id, 0, 5 * KIB64 + 3, b"written after the failover").unwrap();
    env.sim.guest_write(&id, 1, 9 * KIB64, &[0x5a; 8192]).unwrap();
    env.host.set_running(&id, false).unwrap();
    // The original site is lost.
    for o in &origs {
        std::fs::remove_file(o).unwrap();
    }

    // An existing path is refused: it is left unchanged and nothing is made.
    let new: Vec<std::path::PathBuf> = (0..2).map(|d| env.dir.path().join(format!("new{d}.img"))).collect();
    std::fs::write(&new[1], b"keep me").unwrap();
    let e = replica.failback_hyperv_new(&env.host, &id, &new, &RestoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("exists") && e.to_string().contains("new1.img"), "{e}");
    assert_eq!(std::fs::read(&new[1]).unwrap(), b"keep me");
    assert!(!new[0].exists(), "nothing made");
    assert!(replica.failed_over().unwrap().is_some(), "still failed over");
    std::fs::remove_file(&new[1]).unwrap();

    let r = replica.failback_hyperv_new(&env.host, &id, &new, &RestoreOptions::default()).unwrap();
    let now = summary(&env.sim, "web-01 (replica)");
    let mut nonzero = 0u64;
    for (d, n) in new.iter().enumerate() {
        let want = env.sim.read_disk(&id, d, 0, now.disks[d].4 as usize).unwrap();
        let got = std::fs::read(n).unwrap();
        assert!(got == want, "new image {d} is the VM's disk");
        nonzero += want.chunks(4096).filter(|c| c.iter().any(|&b| b != 0)).map(|c| c.len() as u64).sum::<u64>();
    }
    eprintln!("failback onto new images: read {}, wrote {} ({nonzero} non-zero)", r.read_bytes, r.sent_bytes);
    assert!(r.whole_disks);
    assert_eq!(r.sent_bytes, nonzero, "only the non-zero 4 KiB pieces are written");
    // Roles swapped: the VM is a replica again, the folder takes runs from the new images.
    assert!(env.host.is_replica(&id).unwrap());
    assert_eq!(replica.failed_over().unwrap(), None);
    let again = alike::replicate_images("web-01", &new, &replica, &ro).unwrap();
    assert!(again.sent_bytes < 2 * KIB64, "{}", again.sent_bytes);
}
