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
