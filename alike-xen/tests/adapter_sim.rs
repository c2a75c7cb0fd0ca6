//! The pool adapter against the XAPI simulator (in-process): inventory,
//! the CBT backup cycle over NBD (full read, exact changed blocks,
//! snapshot release), broken chains that must be reported, the export path
//! (VHD full and delta), quiesce, abort, and a VM recreated field by field.
#![allow(missing_docs)]
// Expected range lists are often a single range.
#![allow(clippy::single_range_in_vec_init)]

use std::ops::Range;
use std::time::Duration;

use alike_core::{DiskSource, MemSource};
use alike_xen::adapter::{
    BACKUP_MARK, DiskTransport, PoolError, Quiesce, Transport, VmRestoreOptions, XenBackupOptions, XenPool,
};
use alike_xen::xapi::Client;
use alike_xen_sim::{Class, SimConfig, Simulator, Value};

const KIB64: u64 = 64 << 10;

fn sim_with(f: impl FnOnce(SimConfig) -> SimConfig) -> (Simulator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = f(SimConfig::new(dir.path()).demo(true).data_destroy_wait(Duration::from_millis(200)));
    (Simulator::start(cfg).unwrap(), dir)
}

fn pool(sim: &Simulator) -> XenPool {
    XenPool::new(Client::builder(sim.url()).credentials("root", sim.password()).login().unwrap())
}

fn vdi_ref(sim: &Simulator, name: &str) -> String {
    sim.lookup(Class::Vdi, name).unwrap()
}

fn field_str(sim: &Simulator, class: Class, r: &str, f: &str) -> String {
    sim.field(class, r, f).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn exists(sim: &Simulator, class: Class, uuid: &str) -> bool {
    let s = sim.login().unwrap();
    sim.call(&format!("{}.get_by_uuid", class.name()), vec![Value::s(&s), Value::s(uuid)]).is_ok()
}

fn read_ranges(d: &dyn DiskSource, ranges: &[Range<u64>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in ranges {
        let mut off = r.start;
        while off < r.end {
            let n = (r.end - off).min(1 << 20) as usize;
            let mut buf = vec![0u8; n];
            d.read_at(off, &mut buf).unwrap();
            out.extend_from_slice(&buf);
            off += n as u64;
        }
    }
    out
}

fn vdi_bytes(sim: &Simulator, vdi: &str, ranges: &[Range<u64>]) -> Vec<u8> {
    ranges.iter().flat_map(|r| sim.read_vdi(vdi, r.start, (r.end - r.start) as usize).unwrap()).collect()
}

fn tokens(b: &alike_xen::adapter::XenBackup<'_>) -> Vec<(u32, Vec<u8>)> {
    b.xen_disks().iter().map(|d| (d.position(), d.change_token().unwrap())).collect()
}

/// The 64 KiB blocks touched by writes at (offset, len).
fn blocks_of(writes: &[(u64, usize)]) -> Vec<Range<u64>> {
    let mut blocks: Vec<u64> =
        writes.iter().flat_map(|&(off, len)| (off / KIB64)..(off + len as u64).div_ceil(KIB64)).collect();
    blocks.sort_unstable();
    blocks.dedup();
    let mut out: Vec<Range<u64>> = Vec::new();
    for b in blocks {
        match out.last_mut() {
            Some(r) if r.end == b * KIB64 => r.end += KIB64,
            _ => out.push(b * KIB64..(b + 1) * KIB64),
        }
    }
    out
}

#[test]
fn inventory_lists_guests_with_ordered_disks() {
    let (sim, _d) = sim_with(|c| c);
    let p = pool(&sim);
    let vms = p.vms().unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["db-01", "web-01"], "templates, snapshots and dom0 are skipped");
    let web = vms.iter().find(|v| v.name == "web-01").unwrap();
    assert_eq!((web.power_state.as_str(), web.vcpus, web.memory_bytes), ("Running", 2, 1 << 30));
    let disks: Vec<(u32, &str, &str, u64)> =
        web.disks.iter().map(|d| (d.position, d.userdevice.as_str(), d.name.as_str(), d.size)).collect();
    assert_eq!(disks, [(0, "0", "web-01 root", 64 << 20), (1, "1", "web-01 data", 32 << 20)]);
    assert_eq!(web.disks[0].sr_name, "Local storage");
    assert_eq!(web.nics.len(), 1);
    assert_eq!(web.nics[0].network_name, "Pool-wide network associated with eth0");
    assert_eq!(p.vm(&web.uuid).unwrap().name, "web-01");
    assert!(matches!(p.vm("nope"), Err(PoolError::NotFound { class: "VM", .. })));
    assert!(matches!(p.vm("Debian Bookworm 12"), Err(PoolError::NotFound { .. })), "a template is not a guest");
    assert_eq!(p.srs().unwrap()[0].name, "Local storage");
    assert!(p.srs().unwrap()[0].cbt);
    assert_eq!(p.networks().unwrap()[0].purpose, ["insecure_nbd"]);

    // The configuration holds what restore needs, and goes into VmInfo.
    let (vm_ref, _) = p.find_vm("web-01").unwrap();
    let c = p.vm_config(&vm_ref).unwrap();
    assert_eq!(c.vm["HVM_boot_policy"], "BIOS order");
    assert_eq!(c.vm["platform"]["viridian"], "false");
    assert_eq!(c.disks.iter().map(|d| d.userdevice.as_str()).collect::<Vec<_>>(), ["0", "1"]);
    assert!(c.disks[0].bootable && !c.disks[1].bootable);
    assert_eq!(c.cdroms.len(), 1);
    assert_eq!(c.cdroms[0].userdevice, "3");
    let info = c.to_vm_info();
    assert_eq!((info.hypervisor.as_str(), info.vcpus, info.memory_bytes), ("xen", Some(2), Some(1 << 30)));
    assert_eq!(info.nics[0].mac.as_deref(), Some(c.nics[0].mac.as_str()));
    assert_eq!(alike_xen::adapter::XenVmConfig::from_vm_info(&info).unwrap(), c);
    assert!(matches!(
        alike_xen::adapter::XenVmConfig::from_vm_info(&alike_core::VmInfo::named("x")),
        Err(PoolError::BadConfig(_))
    ));
}

#[test]
fn cbt_cycle_over_nbd_reads_exactly_the_changed_blocks_and_releases_snapshots() {
    let (sim, _d) = sim_with(|c| c);
    let p = pool(&sim);
    let root = vdi_ref(&sim, "web-01 root");
    let data = vdi_ref(&sim, "web-01 data");
    let opts = XenBackupOptions::default();

    // Backup 1: CBT gets enabled, a snapshot is taken and read whole over NBD.
    let b1 = p.begin_backup("web-01", &opts, &[]).unwrap();
    assert!(sim.field(Class::Vdi, &root, "cbt_enabled").unwrap().as_bool().unwrap());
    assert_eq!(b1.consistency(), "crash-consistent");
    let disks = b1.xen_disks();
    assert_eq!(disks.len(), 2);
    assert!(disks.iter().all(|d| d.transport() == DiskTransport::Nbd));
    assert_eq!(disks[0].allocated_ranges().unwrap(), [0..64 << 20]);
    let all0 = read_ranges(&disks[0], &[0..disks[0].size()]);
    assert_eq!(all0, sim.read_vdi(&root, 0, 64 << 20).unwrap());
    assert_eq!(disks[0].wire_bytes(), 64 << 20);
    let snap1 = b1.snapshot_uuid().to_owned();
    let snap1_vdis: Vec<String> = disks.iter().map(|d| d.snapshot_vdi_uuid().to_owned()).collect();
    let t1 = tokens(&b1);
    let r1 = b1.commit();
    assert_eq!(r1.kept_snapshot, snap1);
    assert!(r1.destroyed_snapshots.is_empty() && r1.warnings.is_empty(), "{r1:?}");

    // The guest writes scattered blocks, one across a 64 KiB boundary.
    let writes = [(5 * KIB64 + 100, 10), (300 * KIB64, 4096), (700 * KIB64 - 10, 20), (1000 * KIB64, 1)];
    for (i, &(off, len)) in writes.iter().enumerate() {
        sim.guest_write(&root, off, &vec![0xA0 + i as u8; len]).unwrap();
    }
    sim.guest_write(&data, 0, b"data disk header").unwrap();

    // Backup 2: only those blocks changed.
    let b2 = p.begin_backup("web-01", &opts, &t1).unwrap();
    let d = b2.xen_disks();
    let expected = blocks_of(&writes);
    assert_eq!(expected.len(), 4, "5, 300, 699-700, 1000 merge into 4 ranges");
    let changed = d[0].changed_ranges(&t1[0].1).unwrap().unwrap();
    assert_eq!(changed, expected);
    assert!(d[0].changes().unwrap().starts_with("CBT: 5 block(s)"), "{:?}", d[0].changes());
    assert_eq!(d[1].changed_ranges(&t1[1].1).unwrap().unwrap(), [0..KIB64]);
    assert_eq!(read_ranges(&d[0], &changed), vdi_bytes(&sim, &root, &changed));
    assert_eq!(d[0].wire_bytes(), 5 * KIB64, "only the changed blocks crossed the wire");
    let snap2 = b2.snapshot_uuid().to_owned();
    let t2 = tokens(&b2);
    let r2 = b2.commit();
    // The previous snapshot VM is destroyed, its VDIs keep only their CBT logs.
    assert_eq!(r2.destroyed_snapshots, std::slice::from_ref(&snap1));
    assert_eq!(r2.data_destroyed_vdis, snap1_vdis);
    assert!(r2.destroyed_vdis.is_empty() && r2.warnings.is_empty(), "{r2:?}");
    assert!(!exists(&sim, Class::Vm, &snap1) && exists(&sim, Class::Vm, &snap2));
    let s = sim.login().unwrap();
    let old = sim.call("VDI.get_by_uuid", vec![Value::s(&s), Value::s(&snap1_vdis[0])]).unwrap();
    assert_eq!(field_str(&sim, Class::Vdi, old.as_str().unwrap(), "type"), "cbt_metadata");
    let oc = sim.field(Class::Vdi, old.as_str().unwrap(), "other_config").unwrap();
    assert!(oc.as_struct().unwrap().contains_key(BACKUP_MARK));

    // Backup 3 builds on backup 2, whose data is kept, and releases it; the
    // metadata of backup 1 goes.
    sim.guest_write(&root, 42 * KIB64, b"again").unwrap();
    let b3 = p.begin_backup("web-01", &opts, &t2).unwrap();
    assert_eq!(b3.xen_disks()[0].changed_ranges(&t2[0].1).unwrap().unwrap(), [42 * KIB64..43 * KIB64]);
    // A data-destroyed snapshot is still a valid base: changes since backup 1.
    let since1 = b3.xen_disks()[0].changed_ranges(&t1[0].1).unwrap().unwrap();
    assert_eq!(since1, blocks_of(&[writes[0], writes[1], writes[2], writes[3], (42 * KIB64, 5)]));
    let r3 = b3.commit();
    assert_eq!(r3.destroyed_snapshots, [snap2]);
    assert_eq!(r3.destroyed_vdis, snap1_vdis, "backup 1's cbt_metadata VDIs are destroyed");
    assert!(!exists(&sim, Class::Vdi, &snap1_vdis[0]));
    let vm = p.vm("web-01").unwrap();
    assert_eq!(vm.backup_snapshots, 1);
}

#[test]
fn broken_cbt_chains_are_reported_with_their_cause() {
    let (sim, _d) = sim_with(|c| c);
    let p = pool(&sim);
    let root = vdi_ref(&sim, "web-01 root");
    let opts = XenBackupOptions::default();
    let b1 = p.begin_backup("web-01", &opts, &[]).unwrap();
    let t1 = tokens(&b1);
    let snap1_vdi = b1.xen_disks()[0].snapshot_vdi_uuid().to_owned();
    b1.commit();

    // A call that fails: the XAPI code is kept.
    sim.faults().fail_next("VDI.list_changed_blocks", "SR_BACKEND_FAILURE_460", &["", "injected", ""]);
    let b2 = p.begin_backup("web-01", &opts, &t1).unwrap();
    let e = b2.xen_disks()[0].changed_ranges(&t1[0].1).unwrap_err();
    let alike_core::Error::Seam(inner) = &e else { panic!("{e:?}") };
    assert_eq!(e.code(), Some("SR_BACKEND_FAILURE_460"), "the XAPI code crosses the seam");
    let pe = inner.downcast_ref::<PoolError>().unwrap();
    assert!(matches!(pe, PoolError::ChangesUnknown { .. }));
    assert_eq!(pe.xapi_code(), Some("SR_BACKEND_FAILURE_460"));
    assert!(e.to_string().contains("CBT chain is broken"), "{e}");
    assert!(b2.xen_disks()[0].changes().unwrap().contains("injected"));
    // A token of another VDI (the disk was replaced or migrated).
    let e = b2.xen_disks()[0].changed_ranges(&t1[1].1).unwrap_err().to_string();
    assert!(e.contains("replaced, or migrated"), "{e}");
    // Not a Xen token at all.
    let e = b2.xen_disks()[0].changed_ranges(b"alike-version:s:v:0").unwrap_err().to_string();
    assert!(e.contains("not one of a XenServer/XCP-ng backup"), "{e}");
    b2.abort().unwrap();

    // CBT disabled (and enabled again by the next backup): the chain is unrelated.
    let s = sim.login().unwrap();
    sim.call("VDI.disable_cbt", vec![Value::s(&s), Value::s(&root)]).unwrap();
    let b3 = p.begin_backup("web-01", &opts, &t1).unwrap();
    let e = b3.xen_disks()[0].changed_ranges(&t1[0].1).unwrap_err().to_string();
    assert!(e.contains("unrelated"), "{e}");
    b3.abort().unwrap();

    // The previous snapshot VDI is gone.
    let old = sim.call("VDI.get_by_uuid", vec![Value::s(&s), Value::s(&snap1_vdi)]).unwrap();
    let snap1_vm = sim.lookup(Class::Vm, "web-01 (alike backup)").unwrap();
    sim.call("VM.destroy", vec![Value::s(&s), Value::s(&snap1_vm)]).unwrap();
    sim.call("VDI.destroy", vec![Value::s(&s), old]).unwrap();
    let b4 = p.begin_backup("web-01", &opts, &t1).unwrap();
    let e = b4.xen_disks()[0].changed_ranges(&t1[0].1).unwrap_err().to_string();
    assert!(e.contains(&format!("the previous snapshot VDI {snap1_vdi} is gone")) && e.contains("UUID_INVALID"), "{e}");
    drop(b4);
    // Aborting (here by drop) destroyed the snapshots of b2, b3, b4.
    assert_eq!(p.vm("web-01").unwrap().snapshots, 0);
}

#[test]
fn export_path_reads_a_vhd_and_a_delta_when_there_is_no_nbd() {
    let (sim, _d) = sim_with(|c| c.nbd_purpose(""));
    let p = pool(&sim);
    let root = vdi_ref(&sim, "web-01 root");
    let opts = XenBackupOptions::default();
    let b1 = p.begin_backup("web-01", &opts, &[]).unwrap();
    let d = &b1.xen_disks()[0];
    assert_eq!(d.transport(), DiskTransport::Export);
    let alloc = d.allocated_ranges().unwrap();
    let alloc_bytes: u64 = alloc.iter().map(|r| r.end - r.start).sum();
    assert!(alloc_bytes < 64 << 20 && alloc_bytes > 0, "only allocated blocks: {alloc:?}");
    assert_eq!(read_ranges(d, &[0..64 << 20]), sim.read_vdi(&root, 0, 64 << 20).unwrap());
    assert!(d.wire_bytes() >= alloc_bytes && d.wire_bytes() < alloc_bytes + (1 << 20), "{}", d.wire_bytes());
    let t1 = tokens(&b1);
    b1.commit();

    sim.guest_write(&root, 3 * KIB64, &[7u8; 100]).unwrap();
    sim.guest_write(&root, 40 << 20, &[8u8; 100]).unwrap();
    let b2 = p.begin_backup("web-01", &opts, &t1).unwrap();
    let d = &b2.xen_disks()[0];
    assert_eq!(d.allocated_ranges().unwrap(), [0..64 << 20], "nothing downloaded before the delta is asked");
    assert_eq!(d.wire_bytes(), 0);
    let changed = d.changed_ranges(&t1[0].1).unwrap().unwrap();
    assert_eq!(changed, [0..2 << 20, 40 << 20..42 << 20], "the 2 MiB VHD blocks that differ");
    assert!(d.wire_bytes() < 5 << 20, "a delta, not the disk: {}", d.wire_bytes());
    assert_eq!(read_ranges(d, &changed), vdi_bytes(&sim, &root, &changed));
    let delta_bytes = d.wire_bytes();
    // A read outside the delta (an engine that fell back) downloads the whole disk.
    assert_eq!(read_ranges(d, &[10 << 20..11 << 20]), sim.read_vdi(&root, 10 << 20, 1 << 20).unwrap());
    assert!(d.wire_bytes() > delta_bytes);
    b2.commit();
}

#[test]
fn quiesce_abort_and_transport_choices() {
    let (sim, _d) = sim_with(|c| c.nbd_purpose(""));
    let p = pool(&sim);
    let web = sim.lookup(Class::Vm, "web-01").unwrap();
    let e = p.begin_backup("web-01", &XenBackupOptions::default().quiesce(Quiesce::Required), &[]).unwrap_err();
    assert_eq!(e.xapi_code(), Some("VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED"), "{e}");
    let b = p.begin_backup("web-01", &XenBackupOptions::default().quiesce(Quiesce::IfSupported), &[]).unwrap();
    assert_eq!(b.consistency(), "crash-consistent");
    assert!(b.warnings()[0].contains("no quiesced snapshot"), "{:?}", b.warnings());
    let snap_vdis: Vec<String> = b.xen_disks().iter().map(|d| d.snapshot_vdi_uuid().to_owned()).collect();
    b.abort().unwrap();
    assert!(snap_vdis.iter().all(|u| !exists(&sim, Class::Vdi, u)), "abort destroys the snapshot's VDIs");
    sim.set_quiesce_support(&web, true);
    let b = p.begin_backup("web-01", &XenBackupOptions::default().quiesce(Quiesce::IfSupported), &[]).unwrap();
    assert_eq!(b.consistency(), "quiesced");
    assert_eq!(b.config().snapshot.as_ref().unwrap().transports, ["export", "export"]);
    drop(b);
    let e = p.begin_backup("web-01", &XenBackupOptions::default().transport(Transport::Nbd), &[]).unwrap_err();
    assert!(matches!(e, PoolError::InvalidArgument(ref m) if m.contains("no NBD export")), "{e}");
    assert_eq!(p.vm("web-01").unwrap().snapshots, 0, "a failed begin leaves no snapshot");
}

#[test]
fn a_vm_is_recreated_field_by_field_and_disks_uploaded() {
    let (sim, _d) = sim_with(|c| c);
    let p = pool(&sim);
    let (vm_ref, _) = p.find_vm("web-01").unwrap();
    let config = p.vm_config(&vm_ref).unwrap();
    let made = p.create_vm(&config, "Local storage", None, &VmRestoreOptions::default()).unwrap();
    assert!(made.warnings.is_empty(), "{:?}", made.warnings);
    let (new_ref, raw) = p.find_vm(&made.uuid).unwrap();
    assert_ne!(new_ref, vm_ref);
    for (k, v) in &config.vm {
        assert_eq!(raw.get(k), Some(v), "VM field {k}");
    }
    let again = p.vm_config(&new_ref).unwrap();
    assert_eq!(again.vm, config.vm);
    assert_eq!(again.cdroms, config.cdroms);
    assert_eq!(again.nics, config.nics, "device, MAC, MTU, network, settings");
    for (a, b) in again.disks.iter().zip(&config.disks) {
        let strip = |d: &alike_xen::adapter::XenDiskConfig| {
            let mut d = d.clone();
            d.vdi_uuid.clear();
            d
        };
        assert_eq!(strip(a), strip(b), "disk {} (all but its new uuid)", a.position);
    }
    assert_eq!(field_str(&sim, Class::Vm, &new_ref, "power_state"), "Halted");
    // Disks: a sparse one goes up as a VHD, a full one raw.
    let mut img = vec![0u8; 64 << 20];
    img[..5].copy_from_slice(b"hello");
    img[(33 << 20) + 7] = 9;
    let src = MemSource { label: "img".into(), data: img.clone() };
    let (fmt, sent) =
        p.upload_disk(&made.disks[0].vdi_uuid, &src, alike_xen::adapter::UploadFormat::Auto, true).unwrap();
    assert_eq!(format!("{fmt:?}"), "Raw", "MemSource reports every byte allocated");
    assert_eq!(sent, 64 << 20);
    assert_eq!(sim.read_vdi(&made.disks[0].vdi_ref, 0, 64 << 20).unwrap(), img);
    let small = MemSource { label: "x".into(), data: vec![1u8; 33 << 20] };
    let e = p.upload_disk(&made.disks[1].vdi_ref, &small, alike_xen::adapter::UploadFormat::Auto, true).unwrap_err();
    assert!(matches!(e, PoolError::InvalidArgument(_)), "{e}");
    // Another name and fresh MACs; a network that is not there.
    let o = VmRestoreOptions::default().name("copy").keep_macs(false);
    let m2 = p.create_vm(&config, "Local storage", Some("Pool-wide network associated with eth0"), &o).unwrap();
    let c2 = p.vm_config(&m2.vm_ref).unwrap();
    assert_eq!(c2.name(), "copy");
    assert_ne!(c2.nics[0].mac, config.nics[0].mac);
    let mut bad = config.clone();
    bad.nics[0].network_uuid = "0000".into();
    bad.nics[0].network_name = "gone".into();
    let e = p.create_vm(&bad, "Local storage", None, &VmRestoreOptions::default()).unwrap_err();
    assert!(matches!(e, PoolError::BadConfig(ref m) if m.contains("choose a network")), "{e}");
    let e = p.create_vm(&config, "no such SR", None, &VmRestoreOptions::default()).unwrap_err();
    assert!(matches!(e, PoolError::NotFound { class: "SR", .. }), "{e}");
    // A failure half-way leaves nothing behind.
    let before = p.vms().unwrap().len();
    sim.faults().fail_next("VIF.create", "INTERNAL_ERROR", &["injected"]);
    let e = p.create_vm(&config, "Local storage", None, &VmRestoreOptions::default()).unwrap_err();
    assert_eq!(e.xapi_code(), Some("INTERNAL_ERROR"));
    assert_eq!(p.vms().unwrap().len(), before);
}
