//! Content-defined chunking (store format 2): dedup of shifted data, change-
//! tracked incrementals that equal a full chunking, both store kinds side by
//! side, vaulting between them.

use alike::{
    BackupOptions, CdcParams, Chunking, DiskSource, MemSource, Parent, RestoreOptions, VaultOptions, VerifyOptions,
    VmInfo,
};
use alike_testing::{Rng, TrackedDisk, sha256};

use super::util::Env;

fn restore_bytes(env: &Env, store: &alike::Store, v: &alike::Version, disk: u32) -> Vec<u8> {
    let out = env.path("r.img");
    store.restore_to_file(v, disk, &out, &RestoreOptions::default().force(true)).unwrap();
    std::fs::read(&out).unwrap()
}

/// Incompressible data with runs of zeroes, as a file system would hold it.
fn disk_image(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut d = vec![0u8; len];
    let mut at = 0;
    while at < len {
        let run = ((1 + rng.below(64)) * 4096) as usize;
        let end = (at + run).min(len);
        if rng.below(5) != 0 {
            rng.fill(&mut d[at..end]);
        }
        at = end;
    }
    d
}

#[test]
fn a_new_store_cuts_content_defined_chunks_and_says_so() {
    let env = Env::new();
    let store = env.create(true);
    assert_eq!(store.chunking(), Chunking::Cdc(CdcParams::default()));
    assert_eq!((store.block_size(), store.format_version()), (None, 2));
    let config = std::fs::read(env.path("store").join("config")).unwrap();
    assert_eq!(&config[8..12], &2u32.to_le_bytes(), "config is a format 2 object");
    let fixed = Env::new();
    let f = fixed.create_fixed(false);
    assert_eq!((f.block_size(), f.format_version()), (Some(65536), 1));
    let config = std::fs::read(fixed.path("store").join("config")).unwrap();
    assert_eq!(&config[8..12], &1u32.to_le_bytes(), "a fixed-block store stays format 1");

    let data = disk_image(3 << 20, 1);
    let src = MemSource { label: "d".into(), data: data.clone() };
    let r = store.backup(VmInfo::named("vm"), &[&src as &dyn DiskSource], &BackupOptions::default()).unwrap();
    assert_eq!(r.version.disks[0].chunking, "cdc:16/32/64");
    let d = &r.version.stored_manifest().disks[0];
    assert_eq!((d.block_size, d.blocks_per_map, d.chunking), (4096, 1 << 15, Some(CdcParams::default())));
    assert_eq!(d.data_bytes, data.chunks(4096).filter(|b| b.iter().any(|&x| x != 0)).count() as u64 * 4096);
    assert_eq!(sha256(&restore_bytes(&env, &store, &r.version, 0)), sha256(&data));
    let manifest = std::fs::read_dir(env.path("store").join("versions")).unwrap().next().unwrap().unwrap();
    let m = std::fs::read(manifest.path()).unwrap();
    assert_eq!(&m[8..12], &2u32.to_le_bytes(), "its manifest is format 2");
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
}

/// New chunks are compressed and stored by frame tasks while the next
/// batches are read and cut: a chunk met again before its first frame is
/// stored must not be stored twice. One thread queues every frame task
/// until the batch buffers run out, so the repeats are all looked up
/// before the first copy's frames are put.
#[test]
fn content_repeated_within_one_backup_is_stored_once_while_its_frames_wait() {
    let content = disk_image(2 << 20, 5);
    let data: Vec<u8> = (0..12).flat_map(|_| content.iter().copied()).collect();
    let nonzero = content.chunks(4096).filter(|c| c.iter().any(|&x| x != 0)).count() as u64 * 4096;
    for threads in [1, 2] {
        let env = Env::new();
        let store = env.create(false);
        let src = MemSource { label: "d".into(), data: data.clone() };
        let opts = BackupOptions::default().threads(threads);
        let r = store.backup(VmInfo::named("vm"), &[&src as &dyn DiskSource], &opts).unwrap();
        // The first copy, and the chunks across each copy's seam.
        assert!(
            r.new_bytes < nonzero + nonzero / 4,
            "{threads} thread(s): {} new bytes for 12 copies of {nonzero}",
            r.new_bytes
        );
        assert_eq!(sha256(&restore_bytes(&env, &store, &r.version, 0)), sha256(&data));
        assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
    }
}

#[test]
fn data_that_moved_by_whole_blocks_deduplicates() {
    // The same 6 MiB of content at a 12 KiB shift: fixed 64 KiB blocks find
    // none of it again, content-defined chunks almost all.
    let content = disk_image(6 << 20, 2);
    let mut a = vec![0u8; 8 << 20];
    a[1 << 20..(1 << 20) + content.len()].copy_from_slice(&content);
    let mut b = vec![0u8; 8 << 20];
    let at = (1 << 20) + 3 * 4096;
    b[at..at + content.len()].copy_from_slice(&content);
    let nonzero = content.chunks(4096).filter(|c| c.iter().any(|&x| x != 0)).count() as u64 * 4096;
    let added = |chunking: Chunking| {
        let env = Env::new();
        let store = env.create_with(false, chunking);
        let (sa, sb) =
            (MemSource { label: "a".into(), data: a.clone() }, MemSource { label: "b".into(), data: b.clone() });
        store.backup(VmInfo::named("a"), &[&sa as &dyn DiskSource], &BackupOptions::default()).unwrap();
        let r = store.backup(VmInfo::named("b"), &[&sb as &dyn DiskSource], &BackupOptions::default()).unwrap();
        assert_eq!(sha256(&restore_bytes(&env, &store, &r.version, 0)), sha256(&b));
        r.new_bytes
    };
    let cdc = added(Chunking::default());
    let fixed = added(Chunking::Fixed { block_size: 65536 });
    assert!(cdc < nonzero / 20, "content-defined chunks stored {cdc} new bytes of {nonzero} moved");
    assert!(fixed > nonzero / 2, "fixed blocks stored {fixed} of {nonzero}: the shift defeats them");
}

#[test]
fn a_change_tracked_incremental_equals_a_full_chunking_and_reads_little() {
    let env = Env::new();
    let store = env.create(true);
    // Past one 128 MiB map window, so that windows, carried windows and
    // the window boundary are all exercised.
    let size = (128 << 20) + (3 << 20) + 12_345 * 8;
    let disk = TrackedDisk::new(disk_image(size, 3));
    let vm = VmInfo::named("cbt");
    let first = store.backup(vm.clone(), &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
    assert!(!first.version.disks[0].incremental);
    let mut rng = Rng::new(4);
    for round in 0..4 {
        let mut written = 0u64;
        for _ in 0..40 {
            let big = rng.below(4) == 0;
            let len = 1 + rng.below(if big { 300_000 } else { 5_000 });
            let off = rng.below(size as u64 - len);
            let mut buf = vec![0u8; len as usize];
            // Some writes fill holes, some zero data out, most change data.
            if rng.below(6) != 0 {
                rng.fill(&mut buf);
            }
            disk.write(off, &buf);
            written += len;
        }
        // Across the window boundary, too.
        disk.write((128 << 20) - 5000, &[round as u8 + 1; 10_000]);
        let inc = store.backup(vm.clone(), &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
        let d = &inc.version.stored_manifest().disks[0];
        assert!(d.incremental && d.fallback_reason.is_none(), "{d:?}");
        let full = store
            .backup(vm.clone(), &[&disk as &dyn DiskSource], &BackupOptions::default().parent(Parent::None))
            .unwrap();
        assert_eq!(
            d.maps,
            full.version.stored_manifest().disks[0].maps,
            "round {round}: re-cutting around changes = cutting it all"
        );
        assert_eq!(d.data_bytes, full.version.disks[0].data_bytes);
        // What a change needs: its 4 KiB blocks, the chunk it starts in and
        // the cuts after it (≤ 2 × 64 KiB each, on average far less).
        assert!(inc.read_bytes <= written + 41 * 2 * 65536, "round {round}: read {} for {written}", inc.read_bytes);
        assert_eq!(sha256(&restore_bytes(&env, &store, &inc.version, 0)), sha256(&disk.bytes()), "round {round}");
    }
    assert!(store.verify(&VerifyOptions::default().full(true)).unwrap().ok());
}

#[test]
fn other_chunk_sizes_work_incrementally() {
    let env = Env::new();
    let store = env.create_with(false, "cdc:32/64/128".parse().unwrap());
    let disk = TrackedDisk::new(disk_image(4 << 20, 5));
    let vm = VmInfo::named("vm");
    store.backup(vm.clone(), &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
    disk.write(10, &[1; 10]);
    let r = store.backup(vm.clone(), &[&disk as &dyn DiskSource], &BackupOptions::default()).unwrap();
    assert!(r.version.disks[0].incremental);
    assert_eq!(r.version.disks[0].chunking, "cdc:32/64/128");
    assert_eq!(sha256(&restore_bytes(&env, &store, &r.version, 0)), sha256(&disk.bytes()));
}

#[test]
fn vaulting_between_the_two_kinds_rechunks_and_stays_incremental() {
    let env = Env::new();
    let data0 = disk_image(12 << 20, 6);
    let data1 = disk_image(5 << 20, 7);
    for (site_kind, vault_kind) in [
        (Chunking::Fixed { block_size: 65536 }, Chunking::default()),
        (Chunking::default(), Chunking::Fixed { block_size: 128 << 10 }),
    ] {
        let dir = env.path(&format!("pair-{}", site_kind == Chunking::default()));
        let mk = |name: &str, c: Chunking| {
            let mut b = alike::Store::builder();
            b.chunking(c).no_encryption().cache_dir(dir.join(format!("{name}-cache")));
            b.create(dir.join(name)).unwrap()
        };
        let (site, vault) = (mk("site", site_kind), mk("vault", vault_kind));
        let d0 = TrackedDisk::new(data0.clone());
        let d1 = TrackedDisk::new(data1.clone());
        let disks = [&d0 as &dyn DiskSource, &d1 as &dyn DiskSource];
        site.backup(VmInfo::named("web"), &disks, &BackupOptions::default().time_ms(1000)).unwrap();
        let r1 = site.vault(&vault, &VaultOptions::default()).unwrap();
        assert_eq!(r1.copied.len(), 1);
        for i in 0..20u64 {
            d0.write(i * 600_000 + 7, &[i as u8; 3000]);
        }
        site.backup(VmInfo::named("web"), &disks, &BackupOptions::default().time_ms(2000)).unwrap();
        let r2 = site.vault(&vault, &VaultOptions::default()).unwrap();
        assert_eq!(r2.copied.len(), 1);
        assert!(
            r2.read_bytes < (data0.len() + data1.len()) as u64 / 4,
            "{site_kind} → {vault_kind}: read {}",
            r2.read_bytes
        );
        let v = vault.version(&r2.copied[0].vault, None).unwrap();
        assert!(v.disks.iter().all(|d| d.incremental), "{site_kind} → {vault_kind}: {:?}", v.disks);
        assert_eq!(v.disks[0].chunking, vault_kind.to_string());
        let edir = env.path("restore");
        std::fs::create_dir_all(&edir).unwrap();
        for (i, want) in [d0.bytes(), d1.bytes()].iter().enumerate() {
            let out = edir.join("x.img");
            vault.restore_to_file(&v, i as u32, &out, &RestoreOptions::default().force(true)).unwrap();
            assert!(std::fs::read(&out).unwrap() == *want, "{site_kind} → {vault_kind}: disk {i}");
        }
        assert!(vault.verify(&VerifyOptions::default().full(true)).unwrap().ok());
    }
}
