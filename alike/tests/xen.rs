//! XenServer/XCP-ng end to end through the facade, against the XAPI
//! simulator in-process: full then incremental backups of a VM with two
//! disks (the incremental reads exactly the 64 KiB blocks the guest
//! changed), bit-exact restores of both versions, a broken CBT chain and a
//! resized disk taking the loud fallback, the export path, HTTPS with a
//! pinned certificate, a whole VM restored field by field, a disk written
//! over an existing VDI; and (ignored) the 4 GiB full-vs-incremental
//! measurement.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use alike::{BackupOptions, ErrorKind, Placement, RestoreOptions, Store, UploadFormat, XenPool, XenVmConfig};
use alike_xen_sim::{Class, SimConfig, Simulator, Value};

const KIB64: u64 = 64 << 10;

struct Env {
    sim: Simulator,
    store: Store,
    dir: tempfile::TempDir,
}

impl Env {
    /// A fixed-block store: these tests pin the exact 64 KiB blocks CBT reports.
    fn new(f: impl FnOnce(SimConfig) -> SimConfig) -> Env {
        Env::with_chunking(f, alike::Chunking::Fixed { block_size: 65536 })
    }
    fn with_chunking(f: impl FnOnce(SimConfig) -> SimConfig, chunking: alike::Chunking) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let cfg = f(SimConfig::new(dir.path().join("sim")).demo(true).data_destroy_wait(Duration::from_millis(200)));
        let sim = Simulator::start(cfg).unwrap();
        let store = Store::builder()
            .chunking(chunking)
            .passphrase("pw")
            .insecure_fast_kdf()
            .cache_dir(dir.path().join("cache"))
            .create(dir.path().join("store"))
            .unwrap();
        Env { sim, store, dir }
    }
    fn pool(&self) -> XenPool {
        alike::xen_pool(&self.sim.url(), "root", self.sim.password(), None).unwrap()
    }
    /// A VDI by name: look it up before backups, whose snapshot VDIs share the name.
    fn vdi(&self, name: &str) -> String {
        self.sim.lookup(Class::Vdi, name).unwrap()
    }
    fn read(&self, vdi: &str, len: u64) -> Vec<u8> {
        self.sim.read_vdi(vdi, 0, len as usize).unwrap()
    }
    fn restored(&self, v: &alike::Version, disk: u32) -> Vec<u8> {
        let p = self.dir.path().join(format!("r-{}-{disk}.img", v.short_id()));
        self.store.restore_to_file(v, disk, &p, &RestoreOptions::default()).unwrap();
        std::fs::read(p).unwrap()
    }
    fn call(&self, method: &str, args: &[&str]) -> Value {
        let s = self.sim.login().unwrap();
        let mut p = vec![Value::s(&s)];
        p.extend(args.iter().map(|a| Value::s(*a)));
        self.sim.call(method, p).unwrap()
    }
}

fn backup(env: &Env, pool: &XenPool, vm: &str) -> alike::VmBackupReport {
    env.store.backup_vm(pool, vm, &BackupOptions::default()).unwrap()
}

/// A disk's host identifier (`vdi`, `snapshot_vdi`, `vdi_uuid`).
fn id<'a>(ids: &'a std::collections::BTreeMap<String, String>, name: &str) -> &'a str {
    ids.get(name).map(String::as_str).unwrap_or_else(|| panic!("no {name} in {ids:?}"))
}

/// Distinct 64 KiB blocks touched by writes at (offset, len).
fn block_count(writes: &[(u64, usize)]) -> u64 {
    let mut b: Vec<u64> = writes.iter().flat_map(|&(o, l)| (o / KIB64)..(o + l as u64).div_ceil(KIB64)).collect();
    b.sort_unstable();
    b.dedup();
    b.len() as u64
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a == b
}

/// The default store (content-defined chunks) behind XAPI's CBT: the 64 KiB
/// blocks CBT reports are re-cut with the chunks around them, and the
/// incremental equals a full backup of the same disks.
#[test]
fn cbt_incremental_into_a_content_defined_store_equals_a_full_backup() {
    let env = Env::with_chunking(|c| c, alike::Chunking::default());
    let pool = env.pool();
    let root = env.vdi("web-01 root");
    let r1 = backup(&env, &pool, "web-01");
    assert!(r1.disks.iter().all(|d| !d.incremental));
    let writes = [(0u64, 10usize), (7 * KIB64 + 5, 3), (513 * KIB64, 65536), (1023 * KIB64, 7), (40 << 20, 300_000)];
    for (i, &(o, l)) in writes.iter().enumerate() {
        env.sim.guest_write(&root, o, &vec![0x21 * (i as u8 + 1); l]).unwrap();
    }
    let r2 = backup(&env, &pool, "web-01");
    let d0 = &r2.disks[0];
    assert!(d0.incremental && d0.fallback_reason.is_none(), "{d0:?}");
    // CBT's blocks (4 + 5 for the long write = 9 × 64 KiB), the chunks they
    // start in and the cuts after them: at most 3 × 64 KiB per changed range.
    assert!(d0.read_bytes >= 9 * KIB64 && d0.read_bytes <= 9 * KIB64 + 5 * 3 * KIB64, "{d0:?}");
    assert_eq!(r2.disks[1].read_bytes, 0);
    assert!(same(&env.restored(&r2.backup.version, 0), &env.read(&root, 64 << 20)));
    let m = r2.backup.version.stored_manifest();
    let full = env
        .store
        .backup_images(
            "check",
            &[&env.dir.path().join(format!("r-{}-0.img", r2.backup.version.short_id()))],
            &Default::default(),
        )
        .unwrap();
    assert_eq!(m.disks[0].maps, full.version.stored_manifest().disks[0].maps, "re-cut = cut in full");
}

#[test]
fn full_then_incremental_reads_only_changed_blocks_and_both_versions_restore_bit_exact() {
    let env = Env::new(|c| c);
    let pool = env.pool();
    let (root, data) = (env.vdi("web-01 root"), env.vdi("web-01 data"));
    let v1_root = env.read(&root, 64 << 20);
    let v1_data = env.read(&data, 32 << 20);

    let r1 = backup(&env, &pool, "web-01");
    assert_eq!(r1.backup.version.vm, "web-01");
    assert_eq!(r1.disks.len(), 2);
    for d in &r1.disks {
        assert!(!d.incremental && d.fallback_reason.is_none(), "{d:?}");
        assert_eq!(d.transport, "nbd");
        assert_eq!((d.read_bytes, d.wire_bytes), (d.size, d.size), "a full read over NBD");
    }
    assert_eq!(r1.backup.read_bytes, 96 << 20);
    let v1 = &r1.backup.version;
    assert_eq!(v1.config().hypervisor, "xen");
    assert!(v1.disks.iter().all(|d| d.change_token.is_some()), "tokens are kept in the manifest");

    // The guest writes scattered blocks on both disks.
    let root_writes =
        [(0u64, 10usize), (7 * KIB64 + 5, 3), (100 * KIB64 - 2, 4), (513 * KIB64, 65536), (1023 * KIB64, 7)];
    let data_writes = [(300 * KIB64, 100usize), (301 * KIB64, 100)];
    for (i, &(o, l)) in root_writes.iter().enumerate() {
        env.sim.guest_write(&root, o, &vec![0x11 * (i as u8 + 1); l]).unwrap();
    }
    for &(o, l) in &data_writes {
        env.sim.guest_write(&data, o, &vec![0xEE; l]).unwrap();
    }
    let v2_root = env.read(&root, 64 << 20);
    let v2_data = env.read(&data, 32 << 20);

    let r2 = backup(&env, &pool, "web-01");
    assert_eq!(r2.backup.version.parent(), Some(r1.backup.version.id.as_str()));
    let (d0, d1) = (&r2.disks[0], &r2.disks[1]);
    assert!(d0.incremental && d1.incremental && d0.fallback_reason.is_none(), "{d0:?} {d1:?}");
    assert_eq!(block_count(&root_writes), 6);
    assert_eq!(d0.read_bytes, 6 * KIB64, "exactly the changed 64 KiB blocks of disk 0");
    assert_eq!(d0.wire_bytes, 6 * KIB64);
    assert_eq!((d1.read_bytes, d1.wire_bytes), (2 * KIB64, 2 * KIB64));
    assert_eq!(r2.backup.read_bytes, 8 * KIB64);
    // The first snapshot is released as designed: VM destroyed, VDIs data-destroyed.
    assert_eq!(r2.released.destroyed_snapshots, std::slice::from_ref(&r1.snapshot));
    assert_eq!(
        r2.released.released["data_destroyed_vdis"],
        r1.disks.iter().map(|d| id(&d.ids, "snapshot_vdi").to_owned()).collect::<Vec<_>>()
    );
    let old = env.call("VDI.get_by_uuid", &[id(&r1.disks[0].ids, "snapshot_vdi")]);
    assert_eq!(env.sim.field(Class::Vdi, old.as_str().unwrap(), "type").unwrap().as_str(), Some("cbt_metadata"));

    assert!(same(&env.restored(&r1.backup.version, 0), &v1_root));
    assert!(same(&env.restored(&r1.backup.version, 1), &v1_data));
    assert!(same(&env.restored(&r2.backup.version, 0), &v2_root));
    assert!(same(&env.restored(&r2.backup.version, 1), &v2_data));

    // Nothing changed: an incremental that reads nothing.
    let r3 = backup(&env, &pool, "web-01");
    assert_eq!(r3.backup.read_bytes, 0);
    assert!(r3.disks.iter().all(|d| d.incremental));
    assert!(same(&env.restored(&r3.backup.version, 0), &v2_root));
}

#[test]
fn broken_chains_fall_back_loudly_and_stay_correct() {
    let env = Env::new(|c| c);
    let pool = env.pool();
    let root = env.vdi("web-01 root");
    backup(&env, &pool, "web-01");
    env.sim.guest_write(&root, 9 * KIB64, b"after the first backup").unwrap();
    env.sim.faults().fail_next("VDI.list_changed_blocks", "SR_BACKEND_FAILURE_460", &["", "injected", ""]);
    let r = backup(&env, &pool, "web-01");
    let d0 = &r.disks[0];
    assert!(!d0.incremental, "{d0:?}");
    let why = d0.fallback_reason.as_deref().unwrap();
    assert!(why.contains("CBT chain is broken") && why.contains("SR_BACKEND_FAILURE_460"), "{why}");
    assert_eq!(d0.read_bytes, 64 << 20, "a full read");
    assert!(r.disks[1].incremental, "the other disk's chain is whole");
    let v = r.backup.version.clone();
    assert_eq!(v.disks[0].fallback_reason.as_deref(), Some(why), "recorded in the version");
    assert!(same(&env.restored(&v, 0), &env.read(&root, 64 << 20)));

    // CBT disabled by someone: the next backup re-enables it, reads whole, says why.
    env.call("VDI.disable_cbt", &[&root]);
    let r = backup(&env, &pool, "web-01");
    assert!(r.disks[0].fallback_reason.as_deref().unwrap().contains("unrelated"), "{:?}", r.disks[0]);
    let r = backup(&env, &pool, "web-01");
    assert!(r.disks[0].incremental, "and the chain is whole again");

    // A previous version without change tokens (a plain image backup of the same name).
    let img = env.dir.path().join("db.img");
    std::fs::write(&img, vec![3u8; 1 << 20]).unwrap();
    env.store.backup_images("db-01", &[&img], &BackupOptions::default()).unwrap();
    let db = env.vdi("db-01 disk");
    let r = backup(&env, &pool, "db-01");
    let why = r.disks[0].fallback_reason.as_deref().unwrap();
    assert!(why.contains("recorded no change token"), "{why}");

    // A resized disk (db-01 is halted, so its VDI can grow).
    let s = env.sim.login().unwrap();
    env.sim.call("VDI.resize", vec![Value::s(&s), Value::s(&db), Value::Int(64 << 20)]).unwrap();
    let r = backup(&env, &pool, "db-01");
    let why = r.disks[0].fallback_reason.as_deref().unwrap();
    assert!(why.contains("size changed"), "{why}");
    assert!(same(&env.restored(&r.backup.version, 0), &env.read(&db, 64 << 20)));
}

#[test]
fn export_path_end_to_end() {
    let env = Env::new(|c| c.nbd_purpose(""));
    let pool = env.pool();
    let (root, data) = (env.vdi("web-01 root"), env.vdi("web-01 data"));
    let r1 = backup(&env, &pool, "web-01");
    assert!(r1.disks.iter().all(|d| d.transport == "export" && !d.incremental));
    assert!(r1.disks[0].read_bytes < 64 << 20, "only the allocated blocks: {:?}", r1.disks[0]);
    env.sim.guest_write(&root, 3 << 20, &[5u8; 10]).unwrap();
    let r2 = backup(&env, &pool, "web-01");
    let d0 = &r2.disks[0];
    assert!(d0.incremental && d0.fallback_reason.is_none(), "{d0:?}");
    assert_eq!(d0.read_bytes, 2 << 20, "the 2 MiB VHD block of the delta");
    assert!(d0.wire_bytes < 3 << 20, "{d0:?}");
    assert_eq!(r2.disks[1].read_bytes, 0);
    assert!(same(&env.restored(&r1.backup.version, 1), &env.read(&data, 32 << 20)));
    assert!(same(&env.restored(&r2.backup.version, 0), &env.read(&root, 64 << 20)));
}

#[test]
fn https_with_a_pinned_certificate_and_tls_nbd() {
    let env = Env::new(|c| c.tls(true));
    let der = alike_xen::nbd::pem_certs(env.sim.cert_pem()).unwrap();
    let fp = alike_xen::nbd::format_fingerprint(&alike_xen::nbd::sha256(&der[0]));
    let pool = alike::xen_pool(&env.sim.url(), "root", env.sim.password(), Some(&fp)).unwrap();
    let r = backup(&env, &pool, "db-01");
    assert_eq!(r.disks[0].transport, "nbd");
    assert!(same(&env.restored(&r.backup.version, 0), &env.read(&env.vdi("db-01 disk"), 48 << 20)));
    let wrong = "00:".repeat(31) + "00";
    let e = alike::xen_pool(&env.sim.url(), "root", env.sim.password(), Some(&wrong)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    let e = alike::xen_pool(&env.sim.url(), "root", "wrong", Some(&fp)).unwrap_err();
    assert_eq!(e.code(), Some("SESSION_AUTHENTICATION_FAILED"), "{e}");
    // Unpinned, the self-signed certificate is refused with its fingerprint and how to pin it.
    let e = alike::xen_pool(&env.sim.url(), "root", env.sim.password(), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("not trusted") && e.to_string().contains(&fp), "{e}");
    // A fingerprint pins an HTTPS certificate: with http:// it is refused, not ignored.
    let plain = env.sim.url().replace("https://", "http://");
    let e = alike::xen_pool(&plain, "root", env.sim.password(), Some(&fp)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    // Credentials in clear only to this machine, unless asked for.
    let far = "http://192.0.2.1:80";
    let e = alike::xen_pool(far, "root", "pw", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("in clear"), "{e}");
    let o = alike::XenConnectOptions::default().insecure(true);
    let e = alike::xen_pool_with("http://0.0.0.0:9", "root", "pw", &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "past the check, nothing listens: {e}");
}

#[test]
fn a_version_restores_as_a_vm_field_by_field_and_over_an_existing_vdi() {
    let env = Env::new(|c| c);
    let pool = env.pool();
    let r = backup(&env, &pool, "web-01");
    let v = r.backup.version.clone();
    let recorded = XenVmConfig::from_vm_info(v.config()).unwrap();
    let rr = env.store.restore_vm(&v, &pool, &Placement::on("Local storage"), &RestoreOptions::default()).unwrap();
    assert_eq!(rr.name, "web-01");
    assert!(rr.warnings.is_empty(), "{:?}", rr.warnings);
    let (new_ref, raw) = pool.find_vm(&rr.vm_uuid).unwrap();
    for (k, want) in &recorded.vm {
        assert_eq!(raw.get(k), Some(want), "VM field {k}");
    }
    let now = pool.vm_config(&new_ref).unwrap();
    assert_eq!(now.vm, recorded.vm);
    assert_eq!(now.nics, recorded.nics);
    assert_eq!(now.cdroms, recorded.cdroms);
    assert_eq!(now.disks.len(), recorded.disks.len());
    for (a, b) in now.disks.iter().zip(&recorded.disks) {
        assert_eq!(
            (&a.userdevice, a.bootable, &a.mode, a.virtual_size, &a.name_label, &a.vdi_type, &a.vbd_other_config),
            (&b.userdevice, b.bootable, &b.mode, b.virtual_size, &b.name_label, &b.vdi_type, &b.vbd_other_config),
            "disk {}",
            a.position
        );
    }
    for (u, d) in rr.disks.iter().zip(&now.disks) {
        assert_eq!(id(&u.ids, "vdi_uuid"), d.vdi_uuid);
        assert_eq!(u.format, "vhd", "a sparse disk into a new VDI goes as a VHD: {u:?}");
        assert!(u.sent_bytes < u.size, "{u:?}");
        let vdi = env.call("VDI.get_by_uuid", &[id(&u.ids, "vdi_uuid")]);
        assert!(same(&env.read(vdi.as_str().unwrap(), u.size), &env.restored(&v, u.position)), "disk {}", u.position);
    }

    // A disk of a version over an existing VDI: the guest's later writes are undone.
    let db = env.vdi("db-01 disk");
    let rdb = backup(&env, &pool, "db-01");
    let before = env.read(&db, 48 << 20);
    env.sim.guest_write(&db, 1 << 20, &[0xFF; 4096]).unwrap();
    let up = env.store.restore_vm_disk(&rdb.backup.version, 0, &pool, &db, &RestoreOptions::default()).unwrap();
    assert_eq!((up.format.as_str(), up.sent_bytes), ("raw", 48 << 20));
    assert!(same(&env.read(&db, 48 << 20), &before));

    // Errors keep their kinds.
    let e = env.store.backup_vm(&pool, "nope", &BackupOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let img = env.dir.path().join("plain.img");
    std::fs::write(&img, vec![1u8; 1 << 20]).unwrap();
    let plain = env.store.backup_images("plain", &[&img], &BackupOptions::default()).unwrap().version;
    let e =
        env.store.restore_vm(&plain, &pool, &Placement::on("Local storage"), &RestoreOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = env.store.restore_vm(&v, &pool, &Placement::on("nowhere"), &RestoreOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

/// Full vs incremental backup of a 4 GiB disk with 2% of its 64 KiB blocks
/// changed, through the simulator's NBD export; then the restore of the
/// incremental version as a new VDI, streamed (VHD) and via a temporary
/// file. `cargo test --release -p alike --test xen -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_4gib_full_vs_incremental() {
    let env = Env::new(|c| c);
    let pool = env.pool();
    let s = env.sim.login().unwrap();
    let sr = env.sim.lookup(Class::Sr, "Local storage").unwrap();
    let db = env.sim.lookup(Class::Vm, "db-01").unwrap();
    let size: u64 = 4 << 30;
    let mut rec = std::collections::BTreeMap::new();
    for (k, v) in [
        ("name_label", Value::s("big")),
        ("SR", Value::s(&sr)),
        ("virtual_size", Value::Int(size as i64)),
        ("type", Value::s("user")),
        ("sharable", Value::Bool(false)),
        ("read_only", Value::Bool(false)),
        ("other_config", Value::map()),
    ] {
        rec.insert(k.to_owned(), v);
    }
    let big = env.sim.call("VDI.create", vec![Value::s(&s), Value::Struct(rec)]).unwrap();
    let big = big.as_str().unwrap().to_owned();
    let mut vbd = std::collections::BTreeMap::new();
    for (k, v) in [
        ("VM", Value::s(&db)),
        ("VDI", Value::s(&big)),
        ("userdevice", Value::s("1")),
        ("mode", Value::s("RW")),
        ("type", Value::s("Disk")),
    ] {
        vbd.insert(k.to_owned(), v);
    }
    env.sim.call("VBD.create", vec![Value::s(&s), Value::Struct(vbd)]).unwrap();
    // Half the disk holds data (incompressible), the rest is unallocated.
    let mut rng = alike_testing::Rng::new(7);
    let mut buf = vec![0u8; 1 << 20];
    for mib in (0..size >> 20).step_by(2) {
        rng.fill(&mut buf);
        env.sim.guest_write(&big, mib << 20, &buf).unwrap();
    }
    let t = Instant::now();
    let full = backup(&env, &pool, "db-01");
    let full_s = t.elapsed().as_secs_f64();
    let fd = &full.disks[1];
    // 2% of the 65536 blocks, scattered.
    let blocks = size / KIB64;
    let n = blocks * 2 / 100;
    let mut picked = std::collections::BTreeSet::new();
    while (picked.len() as u64) < n {
        picked.insert(rng.below(blocks));
    }
    let mut b = vec![0u8; KIB64 as usize];
    for blk in &picked {
        rng.fill(&mut b);
        env.sim.guest_write(&big, blk * KIB64, &b).unwrap();
    }
    let t = Instant::now();
    let inc = backup(&env, &pool, "db-01");
    let inc_s = t.elapsed().as_secs_f64();
    let id = &inc.disks[1];
    assert!(id.incremental && id.fallback_reason.is_none());
    assert_eq!(id.read_bytes, n * KIB64);
    println!(
        "4 GiB disk, half allocated, NBD: full read {} MiB ({} MiB on the wire) in {full_s:.2} s ({:.0} MiB/s); \
         incremental ({n} blocks = 2%) read {} MiB ({} MiB on the wire) in {inc_s:.2} s; stored {} MiB then {} MiB",
        fd.read_bytes >> 20,
        fd.wire_bytes >> 20,
        (fd.read_bytes >> 20) as f64 / full_s,
        id.read_bytes >> 20,
        id.wire_bytes >> 20,
        full.backup.new_stored_bytes >> 20,
        inc.backup.new_stored_bytes >> 20,
    );
    // Restore the incremental version's big disk into a new VDI: streamed as a VHD…
    let v = &inc.backup.version;
    let fresh = |name: &str| {
        let mut rec = std::collections::BTreeMap::new();
        for (k, v) in [
            ("name_label", Value::s(name)),
            ("SR", Value::s(&sr)),
            ("virtual_size", Value::Int(size as i64)),
            ("type", Value::s("user")),
            ("sharable", Value::Bool(false)),
            ("read_only", Value::Bool(false)),
            ("other_config", Value::map()),
        ] {
            rec.insert(k.to_owned(), v);
        }
        env.sim.call("VDI.create", vec![Value::s(&s), Value::Struct(rec)]).unwrap().as_str().unwrap().to_owned()
    };
    // … or streamed from the store as a VHD.
    let target = fresh("restored-stream");
    let t = Instant::now();
    let mut vhd_pool = env.pool();
    vhd_pool.set_upload_format(UploadFormat::Vhd);
    let up = env.store.restore_vm_disk(v, 1, &vhd_pool, &target, &RestoreOptions::default());
    let stream_s = t.elapsed().as_secs_f64();
    let up = up.unwrap_or_else(|e| panic!("after {stream_s:.2} s: {e}"));
    println!("restore streamed from the store as a VHD ({} MiB sent): {stream_s:.2} s", up.sent_bytes >> 20);
    // … via a temporary file, then uploaded from it …
    let target2 = fresh("restored-file");
    let t = Instant::now();
    let tmp = env.dir.path().join("tmp.img");
    env.store.restore_to_file(v, 1, &tmp, &RestoreOptions::default()).unwrap();
    let file_restore_s = t.elapsed().as_secs_f64();
    let src = alike::RawFileSource::open(&tmp).unwrap();
    pool.upload_disk(&target2, &src, UploadFormat::Vhd, true).unwrap();
    let file_s = t.elapsed().as_secs_f64();
    println!("restore via a temporary file: {file_s:.2} s ({file_restore_s:.2} s to the file, then the upload)");
    let check = |vdi: &str| {
        for off in [0u64, 1 << 30, (3 << 30) + (7 << 20)] {
            assert_eq!(env.sim.read_vdi(vdi, off, 1 << 20).unwrap(), env.sim.read_vdi(&big, off, 1 << 20).unwrap());
        }
    };
    check(&target);
    check(&target2);
}

/// The Xen provisioner against the simulator: a processor VM cloned from the
/// template, tagged with the job and the orchestrator, its address and
/// injected host key in `xenstore_data`, a VIF on the pool's network, a
/// job's disk attached read-only; torn down without touching the job's disk;
/// the leftover of a "dead" orchestrator found and removed by a sweep.
#[test]
fn xen_processors_are_made_tagged_torn_down_and_swept() {
    use alike::processors::{AttachDisk, InjectedHostKey, ProcessorRequest, Provisioner};
    use alike_xen::adapter::{XenProcessorOptions, XenProvisioner};

    let env = Env::new(|c| c);
    let mut o = XenProcessorOptions::new("xp", "Debian Bookworm 12");
    o.network = Some("Pool-wide network associated with eth0".into());
    let prov = XenProvisioner::new(std::sync::Arc::new(env.pool()), o);
    let record = |class: &str, r: &str| env.call(&format!("{class}.get_record"), &[r]);
    let field = |rec: &Value, k: &str| rec.as_struct().unwrap()[k].clone();
    let vm_named = |name: &str| env.sim.lookup(Class::Vm, name);
    let disk = env.vdi("web-01 data");
    let vbds_of_disk = || env.call("VDI.get_VBDs", &[disk.as_str()]).as_array().unwrap().len();
    let own_vbds = vbds_of_disk();

    let mut req = ProcessorRequest::new("orch-a", "job-1", "10.9.0.5".parse().unwrap(), 24);
    req.host_key = Some(InjectedHostKey::new("-----BEGIN OPENSSH PRIVATE KEY-----\nx\n", "SHA256:abc"));
    let mut p = prov.make(&req).unwrap();
    let vm = vm_named("alike-processor-job-1").expect("the clone");
    let rec = record("VM", &vm);
    let oc = field(&rec, "other_config");
    assert_eq!(oc.as_struct().unwrap()["alike-job"].as_str(), Some("job-1"));
    assert_eq!(oc.as_struct().unwrap()["alike-orchestrator"].as_str(), Some("orch-a"));
    let xs = field(&rec, "xenstore_data");
    let xs = xs.as_struct().unwrap();
    assert_eq!(xs["vm-data/alike/address"].as_str(), Some("10.9.0.5"));
    assert_eq!(xs["vm-data/alike/prefix"].as_str(), Some("24"));
    assert!(xs["vm-data/alike/host-key"].as_str().unwrap().starts_with("-----BEGIN OPENSSH"));
    assert_eq!(field(&rec, "is_a_template").as_bool(), Some(false));
    let vifs = field(&rec, "VIFs");
    assert_eq!(vifs.as_array().unwrap().len(), 1, "one VIF, on the pool's network");

    let paths = p.attach(&[AttachDisk::read_only(field(&record("VDI", &disk), "uuid").as_str().unwrap())]).unwrap();
    assert!(paths[0].starts_with("/dev/xvd"), "{paths:?}");
    let vbds = env.call("VDI.get_VBDs", &[disk.as_str()]);
    let ours: Vec<Value> = vbds
        .as_array()
        .unwrap()
        .iter()
        .map(|v| record("VBD", v.as_str().unwrap()))
        .filter(|r| field(r, "VM").as_str() == Some(vm.as_str()))
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(field(&ours[0], "mode").as_str(), Some("RO"));
    let reach = p.start().unwrap();
    assert_eq!(reach.host_key_fingerprint.as_deref(), Some("SHA256:abc"));
    assert_eq!(field(&record("VM", &vm), "power_state").as_str(), Some("Running"));
    p.teardown().unwrap();
    assert!(vm_named("alike-processor-job-1").is_none(), "the processor VM is gone");
    assert_eq!(field(&record("VDI", &disk), "uuid").as_str().map(str::len), Some(36), "the job's disk stays");

    // An orchestrator that dies leaves its processor: the next one's sweep removes it.
    let mut req = ProcessorRequest::new("orch-a", "job-2", "10.9.0.6".parse().unwrap(), 24);
    req.gateway = Some("10.9.0.1".parse().unwrap());
    let mut p = prov.make(&req).unwrap();
    p.attach(&[AttachDisk::read_only(disk.clone())]).unwrap();
    p.start().unwrap();
    std::mem::forget(p);
    let other = prov.sweep("orch-b").unwrap();
    assert!(other.removed.is_empty(), "another orchestrator's processors are not touched");
    assert!(vm_named("alike-processor-job-2").is_some());
    let swept = prov.sweep("orch-a").unwrap();
    assert_eq!(swept.removed.len(), 1, "{swept:?}");
    assert!(swept.removed[0].contains("job-2"), "{swept:?}");
    assert!(vm_named("alike-processor-job-2").is_none());
    assert_eq!(vbds_of_disk(), own_vbds, "no processor's VBD of the disk is left");
}

/// A Xen processor that never answers SSH (the simulator starts no guest):
/// the job fails with a clear error after the pool's SSH wait, and the
/// processor VM is torn down.
#[test]
fn a_xen_processor_that_never_answers_ssh_times_out_and_is_torn_down() {
    use alike::processors::{Orchestrator, PoolLogin, ProcessorBackup, RunJobOptions, VmDisks};
    use alike_xen::adapter::{XenProcessorOptions, XenProvisioner};

    let env = Env::new(|c| c);
    let prov =
        XenProvisioner::new(std::sync::Arc::new(env.pool()), XenProcessorOptions::new("xp", "Debian Bookworm 12"));
    let key = env.dir.path().join("id");
    alike_testing::sshd::keygen(&key, "");
    let mut login = PoolLogin::new(alike::remote::ClientKey::new(&key));
    login.ssh_timeout = Duration::from_secs(1);
    let mut orch = Orchestrator::new(format!("x{}", std::process::id()), env.dir.path().join("state")).unwrap();
    // A documentation address (TEST-NET-3): nothing answers there.
    orch.add_pool(std::sync::Arc::new(prov), vec!["203.0.113.7".parse().unwrap()], login);
    let disk = env.vdi("web-01 data");
    let job = ProcessorBackup::new("silent", "xp", alike::remote::StoreSpec::new("/nowhere"))
        .vm(VmDisks::new("web-01", [disk]));
    let t0 = Instant::now();
    let e = orch.run(&job, &RunJobOptions::default()).unwrap_err();
    assert_eq!(e.code(), Some("PROCESSOR_SSH_TIMEOUT"), "{e}");
    assert!(e.to_string().contains("torn down"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(env.sim.lookup(Class::Vm, "alike-processor-silent").is_none(), "the processor VM is left");
}

/// A second pool (the DR site) for the replica tests.
fn dr_site(env: &Env) -> (Simulator, Arc<XenPool>) {
    let cfg = SimConfig::new(env.dir.path().join("dr")).demo(true).data_destroy_wait(Duration::from_millis(200));
    let sim = Simulator::start(cfg).unwrap();
    let pool = Arc::new(alike::xen_pool(&sim.url(), "root", sim.password(), None).unwrap());
    (sim, pool)
}

const NET: &str = "Pool-wide network associated with eth0";
const REPLICA_CHUNKING: &str = "cdc:16/32/64";

fn replica_options(env: &Env) -> alike::XenReplicaOptions {
    alike::XenReplicaOptions::new("Local storage", env.dir.path().join("replicas"))
        .network(NET)
        .chunking(REPLICA_CHUNKING.parse().unwrap())
}

fn exported(env: &Env, rep: &alike::XenReplicaVm, point: u64, disk: usize) -> Vec<u8> {
    let p = env.dir.path().join(format!("p{point}-{disk}.img"));
    let mut o = alike::ReplicaExportOptions::default();
    o.force(true);
    rep.export(point, disk, &p, &o).unwrap();
    std::fs::read(p).unwrap()
}

/// The chunks of `new` (cut as the replica cuts) that `old` does not hold,
/// all-zero chunks aside (they never travel): (their bytes, their size
/// compressed as the protocol compresses data, zstd level 3).
fn differing(new: &[u8], old: &[u8]) -> (u64, u64) {
    let chunking: alike::Chunking = REPLICA_CHUNKING.parse().unwrap();
    let keys = alike_core::Keys::from_master(&alike_core::MasterKey([9; 32]));
    let cut = |data: &[u8]| {
        let src = alike_core::MemSource { label: "image".into(), data: data.to_vec() };
        alike_replica::cut_disk(&src, &chunking, &keys, &alike_core::CancelToken::new()).unwrap()
    };
    let held: std::collections::HashSet<_> = cut(old).into_iter().map(|e| e.id).collect();
    let (mut raw, mut compressed) = (0, 0);
    for e in cut(new) {
        let bytes = &new[e.offset as usize..(e.offset + e.len) as usize];
        if held.contains(&e.id) || bytes.iter().all(|&b| b == 0) {
            continue;
        }
        raw += e.len;
        compressed += zstd::bulk::compress(bytes, 3).unwrap().len() as u64;
    }
    (raw, compressed)
}

/// Seeding a Xen replica's first point from a version in a store: only the
/// chunks that differ from the version cross, and the point is bit-exact.
#[test]
fn a_xen_replica_seeded_from_a_store_version_receives_only_what_differs() {
    let env = Env::new(|c| c);
    let pool = env.pool();
    let (root, data) = (env.vdi("web-01 root"), env.vdi("web-01 data"));
    let seed = backup(&env, &pool, "web-01").backup.version;
    let old = [env.read(&root, 64 << 20), env.read(&data, 32 << 20)];
    // The guest writes 8 scattered 4 KiB pieces of random data after the backup.
    for i in 0..8u64 {
        let mut piece = vec![0u8; 4096];
        alike_core::random_bytes(&mut piece).unwrap();
        let (vdi, off) = if i % 2 == 0 { (&root, (i * 7 + 3) << 20) } else { (&data, (i * 3 + 1) << 20) };
        env.sim.guest_write(vdi, off + 512, &piece).unwrap();
    }
    let now = [env.read(&root, 64 << 20), env.read(&data, 32 << 20)];
    let (dr, dst) = dr_site(&env);
    let opts = alike::ReplicateOptions::default().seed(&env.store, &seed);
    let (r, rep) = alike::replicate_xen(&pool, "web-01", Arc::clone(&dst), &replica_options(&env), &opts).unwrap();
    assert_eq!(r.point, 1);
    for (d, want) in now.iter().enumerate() {
        assert!(same(&exported(&env, &rep, 1, d), want), "point 1 disk {d} is the source");
    }
    let (raw, compressed) = (0..2).map(|d| differing(&now[d], &old[d])).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let offered = r.replica.offered_bytes;
    eprintln!(
        "seeded {} of {offered} offered bytes; needed {} (differing chunks {raw}), sent {} (differing chunks compressed {compressed})",
        r.replica.seeded_bytes, r.needed_bytes, r.sent_bytes
    );
    assert!(r.replica.seeded_bytes > 0);
    assert!(r.needed_bytes >= 8 * 4096 && r.needed_bytes <= raw, "needed {} of {raw}", r.needed_bytes);
    // The wire: the differing chunks compressed, plus the offers of a first
    // run (an id and a place per chunk of the disks: well under 64 KiB per
    // 32 MiB) and the protocol's frames.
    assert!(r.sent_bytes >= compressed * 9 / 10, "sent {} for {compressed}", r.sent_bytes);
    assert!(r.sent_bytes <= compressed + 4 * (64 << 10), "sent {} for {compressed}", r.sent_bytes);
    // A seed given once the replica has points is not read: the next run is incremental.
    env.sim.guest_write(&root, 9 << 20, b"after the seeded run").unwrap();
    let (r2, _) = alike::replicate_xen(&pool, "web-01", dst, &replica_options(&env), &opts).unwrap();
    assert_eq!((r2.point, r2.replica.seeded_bytes), (2, 0));
    assert!(r2.read_bytes < 1 << 20, "CBT: read {}", r2.read_bytes);
    drop(dr);
}

/// One-pass backup and replication onto a Xen replica: the source VM's
/// disks are read once (the simulator counts what its NBD server served),
/// and the new version and the new point hold the same snapshot, both
/// bit-exact.
#[test]
fn one_pass_backup_and_xen_replication_reads_the_vm_once() {
    let env = Env::new(|c| c);
    let pool = env.pool();
    let (root, data) = (env.vdi("web-01 root"), env.vdi("web-01 data"));
    let (dr, dst) = dr_site(&env);
    let opts = alike::ReplicateOptions::default().backup_to(&env.store, BackupOptions::default());
    let served = env.sim.nbd_read_bytes();
    let (r1, rep) = alike::replicate_xen(&pool, "web-01", Arc::clone(&dst), &replica_options(&env), &opts).unwrap();
    let read1 = env.sim.nbd_read_bytes() - served;
    eprintln!("one-pass first run: pool served {read1}, read {}, store read {}", r1.read_bytes, r1.store_read_bytes);
    assert_eq!(read1, 96 << 20, "the pool served each disk once");
    assert_eq!(r1.read_bytes, 96 << 20);
    assert!(r1.store_read_bytes > 0, "the replica is fed from the store");
    let v1 = r1.backup.as_ref().unwrap().version.clone();
    let now = [env.read(&root, 64 << 20), env.read(&data, 32 << 20)];
    for (d, want) in now.iter().enumerate() {
        assert!(same(&env.restored(&v1, d as u32), want), "version disk {d}");
        assert!(same(&exported(&env, &rep, r1.point, d), want), "point disk {d}");
    }
    assert_eq!(rep.history().unwrap().last().and_then(|h| h.point), Some(1));

    // Incremental: CBT reads only the changed blocks, once.
    let writes = [(5 * KIB64 + 100, 3000usize), (700 * KIB64, 65536)];
    for (i, &(o, l)) in writes.iter().enumerate() {
        env.sim.guest_write(&root, o, &vec![0x31 + i as u8; l]).unwrap();
    }
    env.sim.guest_write(&data, 3 * KIB64, &[0x77; 512]).unwrap();
    let served = env.sim.nbd_read_bytes();
    let (r2, rep) = alike::replicate_xen(&pool, "web-01", dst, &replica_options(&env), &opts).unwrap();
    let read2 = env.sim.nbd_read_bytes() - served;
    let b2 = r2.backup.as_ref().unwrap();
    eprintln!("one-pass incremental: pool served {read2}, read {}, sent {}", r2.read_bytes, r2.sent_bytes);
    assert_eq!(b2.version.parent(), Some(v1.id.as_str()));
    assert_eq!(read2, (block_count(&writes) + 1) * KIB64, "the changed 64 KiB blocks, once");
    assert_eq!(r2.read_bytes, read2);
    assert_eq!(r2.point, 2);
    assert!(r2.needed_bytes < 512 << 10, "needed {}", r2.needed_bytes);
    let now = [env.read(&root, 64 << 20), env.read(&data, 32 << 20)];
    for (d, want) in now.iter().enumerate() {
        assert!(same(&env.restored(&b2.version, d as u32), want), "version 2 disk {d}");
        assert!(same(&exported(&env, &rep, 2, d), want), "point 2 disk {d}");
    }
    drop(dr);
}

/// An API call on `sim` as root.
fn call_on(sim: &Simulator, method: &str, args: &[&str]) -> Value {
    let s = sim.login().unwrap();
    let mut p = vec![Value::s(&s)];
    p.extend(args.iter().map(|a| Value::s(*a)));
    sim.call(method, p).unwrap()
}

fn strs(v: Option<Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// The disk VDIs (refs) of VM `vm` (ref) on `sim`, by userdevice.
fn vm_disks(sim: &Simulator, vm: &str) -> Vec<String> {
    let mut disks: Vec<(u64, String)> = strs(sim.field(Class::Vm, vm, "VBDs"))
        .into_iter()
        .filter(|v| {
            sim.field(Class::Vbd, v, "type").and_then(|t| t.as_str().map(str::to_owned)).as_deref() == Some("Disk")
        })
        .map(|v| {
            let f = |k| sim.field(Class::Vbd, &v, k).and_then(|t| t.as_str().map(str::to_owned)).unwrap_or_default();
            (f("userdevice").parse().unwrap(), f("VDI"))
        })
        .collect();
    disks.sort();
    disks.into_iter().map(|(_, v)| v).collect()
}

/// (VMs, VDIs) on `sim`, snapshots included.
fn census(sim: &Simulator) -> (usize, usize) {
    let n = |m| match call_on(sim, m, &[]) {
        Value::Array(a) => a.len(),
        _ => 0,
    };
    (n("VM.get_all"), n("VDI.get_all"))
}

/// Failback onto a new VM (the DR case: the original VM is gone): a VM is
/// made on the original pool from the failed-over VM's configuration, its
/// disks a bit-exact copy of the failed-over VM's, the roles swap, and the
/// next replication from the new VM sends next to nothing. A failback
/// whose VM creation or copy fails leaves no VM or VDI behind.
#[test]
fn a_failback_onto_a_new_vm_copies_the_failed_over_vm_and_swaps_roles() {
    let env = Env::new(|c| c);
    let pool = Arc::new(env.pool());
    let (dr, dst) = dr_site(&env);
    let (r1, rep) =
        alike::replicate_xen(&pool, "web-01", Arc::clone(&dst), &replica_options(&env), &Default::default()).unwrap();
    assert_eq!(r1.point, 1);
    let map = std::collections::BTreeMap::from([(NET.to_owned(), NET.to_owned())]);
    rep.failover(None, &map, true).unwrap();
    let dr_vm = call_on(&dr, "VM.get_by_uuid", &[rep.uuid()]).as_str().unwrap().to_owned();
    let live = vm_disks(&dr, &dr_vm);
    assert_eq!(live.len(), 2);
    // The failed-over VM's guest writes.
    let mut written = 0u64;
    for (d, off) in [(0usize, 3u64 << 20), (1, 20 << 20), (0, 40 << 20)] {
        let mut piece = vec![0u8; 8192];
        alike_core::random_bytes(&mut piece).unwrap();
        dr.guest_write(&live[d], off, &piece).unwrap();
        written += piece.len() as u64;
    }
    let dr_now = [dr.read_vdi(&live[0], 0, 64 << 20).unwrap(), dr.read_vdi(&live[1], 0, 32 << 20).unwrap()];
    // The original site is lost: its VM and disks are deleted.
    let web = env.sim.lookup(Class::Vm, "web-01").unwrap();
    let web_disks = vm_disks(&env.sim, &web);
    env.sim.set_power_state(&web, "Halted").unwrap();
    env.call("VM.destroy", &[&web]);
    for v in &web_disks {
        env.call("VDI.destroy", &[v]);
    }
    let e = rep.failback(Arc::clone(&pool), "web-01", false, &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // Failures leave nothing behind: a wrong SR (no VM made), the VM's
    // base snapshot refused (the VM made, then removed), the copy cancelled.
    let before = census(&env.sim);
    let e = rep
        .failback_new_vm(Arc::clone(&pool), &alike::FailbackNewVm::new("no such SR"), false, &Default::default())
        .unwrap_err();
    assert!(e.to_string().contains("no such SR"), "{e}");
    assert_eq!(census(&env.sim), before, "a wrong SR");
    env.sim.faults().fail_next("VM.snapshot", "SR_FULL", &["OpaqueRef:x", "0", "0"]);
    let e = rep
        .failback_new_vm(Arc::clone(&pool), &alike::FailbackNewVm::new("Local storage"), false, &Default::default())
        .unwrap_err();
    assert!(e.to_string().contains("SR_FULL"), "{e}");
    assert_eq!(census(&env.sim), before, "the VM made, then a failure");
    let cancel = alike::CancelToken::new();
    let c2 = cancel.clone();
    let opts = alike::ReplicateOptions::default().cancel_token(cancel).progress(move |_| c2.cancel());
    let e =
        rep.failback_new_vm(Arc::clone(&pool), &alike::FailbackNewVm::new("Local storage"), false, &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert_eq!(census(&env.sim), before, "the copy cancelled");
    // The failed-over VM is untouched: live, running, its disks as they were.
    assert_eq!(dr.field(Class::Vm, &dr_vm, "power_state").unwrap().as_str(), Some("Running"));
    assert_eq!(vm_disks(&dr, &dr_vm), live);

    // The failback onto a new VM.
    let fb = rep
        .failback_new_vm(
            Arc::clone(&pool),
            &alike::FailbackNewVm::new("Local storage").network(NET),
            true,
            &Default::default(),
        )
        .unwrap();
    eprintln!(
        "failback onto a new VM: read {}, needed {}, sent {} ({written} bytes written after the failover)",
        fb.read_bytes, fb.needed_bytes, fb.sent_bytes
    );
    assert_eq!(census(&env.sim).0, before.0 + 1, "one new VM, no snapshot left");
    assert_eq!(census(&env.sim).1, before.1 + 2, "its two disks, no snapshot VDI left");
    assert_eq!(fb.roles.original_name, "web-01");
    assert!(fb.roles.started);
    // Every chunk was new there: the whole data (the demo disks' non-zero content) travelled.
    let nonzero: u64 =
        dr_now.iter().flat_map(|d| d.chunks(4096)).filter(|c| c.iter().any(|&b| b != 0)).map(|c| c.len() as u64).sum();
    assert!(
        fb.needed_bytes >= written && fb.needed_bytes + (64 << 10) >= nonzero,
        "needed {} of {nonzero}",
        fb.needed_bytes
    );
    let new_vm = call_on(&env.sim, "VM.get_by_uuid", &[&fb.roles.original_uuid]).as_str().unwrap().to_owned();
    assert!(strs(env.sim.field(Class::Vm, &new_vm, "tags")).iter().any(|t| t == "alike-failback"));
    assert_eq!(env.sim.field(Class::Vm, &new_vm, "power_state").unwrap().as_str(), Some("Running"));
    assert!(strs(env.sim.field(Class::Vm, &new_vm, "snapshots")).is_empty());
    let new_disks = vm_disks(&env.sim, &new_vm);
    assert_eq!(new_disks.len(), 2);
    for (d, want) in dr_now.iter().enumerate() {
        assert!(same(&env.read(&new_disks[d], want.len() as u64), want), "new VM disk {d} is the failed-over VM's");
    }
    // The failed-over VM is a replica again: halted, start blocked.
    assert_eq!(dr.field(Class::Vm, &dr_vm, "power_state").unwrap().as_str(), Some("Halted"));
    let s = dr.login().unwrap();
    let err = dr.call("VM.start", vec![Value::s(&s), Value::s(&dr_vm), Value::Bool(false), Value::Bool(false)]);
    assert!(format!("{:?}", err.unwrap_err()).contains("OPERATION_BLOCKED"));

    // Roles swapped: the next replication from the new VM goes onto the
    // same replica VM and sends next to nothing.
    let (r2, rep2) =
        alike::replicate_xen(&pool, &fb.roles.original_uuid, dst, &replica_options(&env), &Default::default()).unwrap();
    eprintln!(
        "next replication from the new VM: read {}, needed {}, sent {}",
        r2.read_bytes, r2.needed_bytes, r2.sent_bytes
    );
    assert_eq!(rep2.uuid(), rep.uuid());
    assert_eq!(r2.point, fb.roles.replica_point + 1);
    assert_eq!(r2.needed_bytes, 0);
    assert!(r2.sent_bytes < 64 << 10, "sent {}", r2.sent_bytes);
    for (d, want) in dr_now.iter().enumerate() {
        assert!(same(&exported(&env, &rep2, r2.point, d), want), "point {} disk {d}", r2.point);
    }
}
