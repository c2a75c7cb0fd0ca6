//! File-level restore through the facade: disks made by the real tools
//! (sgdisk, parted, mke2fs, the lvm2 tools), backed up into a store, then
//! listed and extracted straight from it — sha256, modes, times and links
//! equal to the source, only what is needed fetched, damage failing only
//! the files it touches.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alike::{BackupOptions, ErrorKind, ExtractOptions, LsOptions};
use alike_testing::tree::{assert_same_tree, build_tree, data, mkfs, need, run};

use super::util::Env;

/// Writes `img` into `disk` at byte `at`.
fn put(disk: &Path, at: u64, img: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&std::fs::read(img).unwrap(), at).unwrap();
}

/// The partitions' starts of `disk`, by number (from alike-fs, which the
/// alike-fs tests check against partx).
fn starts(disk: &Path) -> Vec<(u32, u64)> {
    let dev: Arc<dyn alike::alike_fs::BlockDevice> = Arc::new(alike::alike_fs::FileDevice::open(disk).unwrap());
    let t = alike::alike_fs::part::read_table(&dev).unwrap().unwrap();
    t.partitions.iter().map(|p| (p.number, p.start)).collect()
}

/// A 96 MiB GPT disk: partition 1 an ext2 `/boot`, partition 2 the tree in ext4.
fn gpt_disk(env: &Env) -> (PathBuf, PathBuf) {
    let (src, disk) = (env.path("src"), env.path("disk.img"));
    build_tree(&src);
    std::fs::File::create(&disk).unwrap().set_len(96 << 20).unwrap();
    run(
        "sgdisk",
        &["-n", "1:2048:+8M", "-t", "1:8300", "-c", "1:boot", "-n", "2:0:+80M", "-c", "2:root", disk.to_str().unwrap()],
    );
    let boot_src = env.path("boot");
    std::fs::create_dir_all(&boot_src).unwrap();
    std::fs::write(boot_src.join("vmlinuz"), data(5, 100_000)).unwrap();
    mkfs("ext2", &boot_src, &env.path("p1.img"), 8, &[]);
    mkfs("ext4", &src, &env.path("p2.img"), 80, &[]);
    let s = starts(&disk);
    put(&disk, s[0].1, &env.path("p1.img"));
    put(&disk, s[1].1, &env.path("p2.img"));
    (src, disk)
}

#[test]
fn a_gpt_disk_lists_its_volumes_and_extracts_bit_exact() {
    if !need(&["sgdisk", "mkfs.ext4", "mkfs.ext2"]) {
        return;
    }
    let env = Env::new();
    let (src, disk) = gpt_disk(&env);
    let store = env.create(true);
    let v = store.backup_images("web01", &[&disk], &BackupOptions::default()).unwrap().version;

    // The volumes.
    let l = store.ls(&v, &LsOptions::default()).unwrap();
    let vols: Vec<(&str, Option<&str>, Option<&str>)> =
        l.volumes.iter().map(|x| (x.name.as_str(), x.filesystem.as_deref(), x.partition_name.as_deref())).collect();
    assert_eq!(vols, [("1", Some("ext2"), Some("boot")), ("2", Some("ext4"), Some("root"))]);
    assert_eq!(l.volumes[1].partition_type_name.as_deref(), Some("Linux filesystem"));
    assert!(l.store_bytes_read > 0 && l.store_bytes_read < 8 << 20, "{}", l.store_bytes_read);

    // Two filesystems: the disk alone does not say which.
    let e = store.ls(&v, &LsOptions::default().path("/")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("2 filesystems"), "{e}");
    let e = store.ls(&v, &LsOptions::default().partition(2).volume("vg/lv").path("/")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);

    // A directory, and one file.
    let root = store.ls(&v, &LsOptions::default().partition(2).path("/")).unwrap();
    let mut names: Vec<String> = root.entries.iter().map(|e| e.name.clone()).collect();
    let mut want: Vec<String> =
        std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    want.push("lost+found".into());
    names.sort();
    want.sort();
    assert_eq!(names, want);
    let link = root.entries.iter().find(|e| e.name == "link-absolute").unwrap();
    assert_eq!((link.kind.as_str(), link.target.as_deref()), ("symlink", Some("/etc/passwd")));
    let one = store.ls(&v, &LsOptions::default().partition(2).path("/nested/a/linked-3")).unwrap();
    assert_eq!(one.entries.len(), 1);
    assert_eq!((one.entries[0].nlink, one.entries[0].size), (3, 9000));
    assert_eq!(one.path.as_deref(), Some("/nested/a/linked-3"));
    let e = store.ls(&v, &LsOptions::default().partition(2).path("/nope")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // Everything, with progress.
    let out = env.path("out");
    let last = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let seen = last.clone();
    let opts = ExtractOptions::default().partition(2).path("/").to(&out).progress(move |p| {
        seen.0.store(p.bytes_done, Ordering::Relaxed);
        seen.1.store(p.bytes_total, Ordering::Relaxed);
    });
    let r = store.extract(&v, &opts).unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    std::fs::remove_dir(out.join("lost+found")).unwrap();
    assert_same_tree(&src, &out);
    assert_eq!((r.hard_links, r.symlinks), (2, 5));
    assert!(last.1.load(Ordering::Relaxed) > 4 << 20);
    assert_eq!(last.0.load(Ordering::Relaxed), last.1.load(Ordering::Relaxed));

    // Some paths; existing names refused, then forced.
    let out2 = env.path("out2");
    let some = ExtractOptions::default().partition(2).paths(["/nested/a", "/size-4096"]).to(&out2);
    let r = store.extract(&v, &some).unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert!(out2.join("a/b/c/d/e/deep.txt").is_file() && out2.join("size-4096").is_file());
    let r = store.extract(&v, &some).unwrap();
    assert_eq!(r.failures.len(), 2, "{:?}", r.failures);
    assert!(r.failures.iter().all(|f| f.kind == "already_exists"), "{:?}", r.failures);
    let r = store.extract(&v, &some.clone().force(true)).unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);

    // Cancelled before it starts.
    let stop = alike::CancelToken::new();
    stop.cancel();
    let e = store
        .extract(&v, &ExtractOptions::default().partition(1).path("/").to(env.path("out3")).cancel_token(stop))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
}

#[test]
fn one_small_file_of_a_large_disk_fetches_little() {
    if !need(&["mkfs.ext4"]) {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("bulk")).unwrap();
    for i in 0..48u64 {
        std::fs::write(src.join(format!("bulk/{i:02}.bin")), data(100 + i, 2 << 20)).unwrap();
    }
    let wanted = data(7, (1 << 20) + 1);
    std::fs::write(src.join("wanted.bin"), &wanted).unwrap();
    let disk = env.path("disk.img");
    mkfs("ext4", &src, &disk, 256, &[]);
    let store = env.create(true);
    let v = store.backup_images("big", &[&disk], &BackupOptions::default()).unwrap().version;
    let stored: u64 = v.disks[0].new_stored_bytes;
    let out = env.path("out");
    let r = store.extract(&v, &ExtractOptions::default().path("/wanted.bin").to(&out)).unwrap();
    assert_eq!(std::fs::read(out.join("wanted.bin")).unwrap(), wanted);
    eprintln!(
        "one 1 MiB file of a 256 MiB disk ({} MiB stored): {} KiB fetched from the store",
        stored >> 20,
        r.store_bytes_read >> 10
    );
    assert!(r.store_bytes_read < 8 << 20, "{} bytes fetched", r.store_bytes_read);
    assert!(r.store_bytes_read * 10 < stored, "{} of {stored} stored bytes fetched", r.store_bytes_read);
}

#[test]
fn a_damaged_chunk_fails_the_file_it_holds_and_the_rest_extract() {
    if !need(&["mkfs.ext4"]) {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = data(1, 3 << 20);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    for i in 0..10u64 {
        std::fs::write(src.join(format!("small-{i}")), data(10 + i, 20_000)).unwrap();
    }
    let disk = env.path("disk.img");
    mkfs("ext4", &src, &disk, 32, &["-b", "4096"]);
    // Unencrypted and uncompressed, so the file's bytes can be found in a pack.
    let store = alike::Store::builder()
        .no_encryption()
        .compression_level(None)
        .cache_dir(env.cache())
        .create(env.path("store"))
        .unwrap();
    let v = store.backup_images("dmg", &[&disk], &BackupOptions::default()).unwrap().version;
    let needle = &big[(3 << 19)..(3 << 19) + 64];
    let mut hit = false;
    for p in alike_testing::tree::walk(&env.path("store/packs")) {
        if !p.is_file() {
            continue;
        }
        let mut b = std::fs::read(&p).unwrap();
        if let Some(at) = b.windows(64).position(|w| w == needle) {
            b[at + 10] ^= 0xFF;
            std::fs::write(&p, b).unwrap();
            hit = true;
        }
    }
    assert!(hit, "the file's bytes were not found in a pack");
    let out = env.path("out");
    let r = store.extract(&v, &ExtractOptions::default().path("/").to(&out)).unwrap();
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    assert_eq!((r.failures[0].path.as_str(), r.failures[0].kind.as_str()), ("/big.bin", "corruption"));
    assert!(!out.join("big.bin").exists());
    for i in 0..10u64 {
        assert_eq!(std::fs::read(out.join(format!("small-{i}"))).unwrap(), data(10 + i, 20_000));
    }
}

// ---------------------------------------------------------------------------
// LVM2: fixtures made by the lvm2 tools on loop devices (alike-fs's script)

fn lvm_fixture(case: &str) -> Option<tempfile::TempDir> {
    if !need(&["pvcreate", "losetup", "python3", "sfdisk", "mkfs.ext4"]) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../alike-fs/tests/fixtures/make-lvm.sh");
    let out = Command::new("bash").arg(script).arg(case).arg(dir.path()).output().unwrap();
    match out.status.code() {
        Some(0) => Some(dir),
        Some(77) => {
            alike_testing::skip("no loop device could be attached (root and /dev/loop-control are needed)");
            None
        }
        _ => panic!("make-lvm.sh {case}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Writes `bytes` into logical volume `vg/lv` found on `devices` (files),
/// through its segments as LVM lays them out (striped chunks included).
fn write_lv(devices: &[PathBuf], vg_uuid: Option<&str>, vg: &str, lv: &str, bytes: &[u8]) {
    use alike::alike_fs::lvm::SegmentKind;
    let devs: Vec<Arc<dyn alike::alike_fs::BlockDevice>> =
        devices.iter().map(|p| Arc::new(alike::alike_fs::FileDevice::open(p).unwrap()) as _).collect();
    let vgs = alike::alike_fs::lvm::scan(&devs).unwrap();
    let g = vgs.iter().find(|g| g.name == vg && vg_uuid.is_none_or(|u| g.uuid == u)).unwrap();
    let l = g.lvs.iter().find(|l| l.name == lv).unwrap();
    assert!(bytes.len() as u64 <= l.size);
    for seg in &l.segments {
        let SegmentKind::Striped { stripe_size, stripes } = &seg.kind else { panic!("{:?}", seg.kind) };
        let n = stripes.len() as u64;
        let chunk = if n == 1 { seg.len } else { *stripe_size };
        let mut o = 0;
        while o < seg.len && seg.start + o < bytes.len() as u64 {
            let k = o / chunk;
            let s = &stripes[(k % n) as usize];
            let pv = g.pvs.iter().find(|p| p.name == s.pv_name).unwrap();
            let at = pv.pe_start + s.start_extent * g.extent_size + (k / n) * chunk + o % chunk;
            let len = (chunk - o % chunk).min(bytes.len() as u64 - seg.start - o);
            let from = (seg.start + o) as usize;
            let f = std::fs::OpenOptions::new().write(true).open(&devices[pv.device.unwrap()]).unwrap();
            f.write_all_at(&bytes[from..from + len as usize], at).unwrap();
            o += len;
        }
    }
}

/// An ext4 image of `size_mib` holding one file `who` with `text`.
fn small_fs(dir: &Path, name: &str, text: &str, size_mib: u64) -> Vec<u8> {
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("who"), text).unwrap();
    let img = dir.join(format!("{name}.fs"));
    mkfs("ext4", &src, &img, size_mib, &[]);
    std::fs::read(img).unwrap()
}

fn who(store: &alike::Store, v: &alike::Version, opts: ExtractOptions, out: &Path) -> String {
    let r = store.extract(v, &opts.path("/who").to(out).force(true)).unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    std::fs::read_to_string(out.join("who")).unwrap()
}

#[test]
fn a_partition_and_a_logical_volume_on_one_disk() {
    let Some(fx) = lvm_fixture("partition") else { return };
    let dir = fx.path();
    let disk = dir.join("disk.img");
    let p1 = small_fs(dir, "p1", "partition one", 2);
    let s = starts(&disk);
    disk_write(&disk, s[0].1, &p1);
    // The PV is partition 2: write the LV through a slice file of it.
    let part2 = dir.join("p2.img");
    let (start2, size2) = (s[1].1, std::fs::metadata(&disk).unwrap().len() - s[1].1);
    std::fs::write(&part2, read_range(&disk, start2, size2)).unwrap();
    write_lv(std::slice::from_ref(&part2), None, "vgp", "lin", &small_fs(dir, "lin", "the LV", 6));
    disk_write(&disk, start2, &std::fs::read(&part2).unwrap());

    let env = Env::new();
    let store = env.create(true);
    let v = store.backup_images("lvm", &[&disk], &BackupOptions::default()).unwrap().version;
    let l = store.ls(&v, &LsOptions::default()).unwrap();
    let vols: Vec<(&str, &str, Option<&str>, bool)> =
        l.volumes.iter().map(|x| (x.name.as_str(), x.kind.as_str(), x.filesystem.as_deref(), x.lvm_pv)).collect();
    assert_eq!(
        vols,
        [
            ("1", "partition", Some("ext4"), false),
            ("2", "partition", None, true),
            ("vgp/lin", "lv", Some("ext4"), false)
        ]
    );
    let e = store.ls(&v, &LsOptions::default().path("/")).unwrap_err();
    assert!(e.to_string().contains("volume vgp/lin"), "{e}");
    let e = store.ls(&v, &LsOptions::default().partition(2).path("/")).unwrap_err();
    assert!(e.to_string().contains("LVM2 physical volume"), "{e}");
    let out = env.path("out");
    assert_eq!(who(&store, &v, ExtractOptions::default().partition(1), &out), "partition one");
    assert_eq!(who(&store, &v, ExtractOptions::default().volume("vgp/lin"), &out), "the LV");
}

#[test]
fn two_disks_with_a_volume_group_of_the_same_name() {
    let Some(fx) = lvm_fixture("dup") else { return };
    let dir = fx.path();
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    let uuid = |img: &Path| {
        let dev: Arc<dyn alike::alike_fs::BlockDevice> = Arc::new(alike::alike_fs::FileDevice::open(img).unwrap());
        alike::alike_fs::lvm::scan(&[dev]).unwrap()[0].uuid.clone()
    };
    let (ua, ub) = (uuid(&a), uuid(&b));
    write_lv(std::slice::from_ref(&a), Some(&ua), "vg0", "data", &small_fs(dir, "a", "disk a", 4));
    write_lv(std::slice::from_ref(&b), Some(&ub), "vg0", "data", &small_fs(dir, "b", "disk b", 4));
    let env = Env::new();
    let store = env.create(true);
    let v = store.backup_images("dup", &[&a, &b], &BackupOptions::default()).unwrap().version;
    let l = store.ls(&v, &LsOptions::default()).unwrap();
    let short = |u: &str| u.chars().filter(|c| *c != '-').take(8).collect::<String>();
    let lvs: Vec<(&str, u32)> =
        l.volumes.iter().filter(|x| x.kind == "lv").map(|x| (x.name.as_str(), x.disk)).collect();
    assert_eq!(
        lvs,
        [(format!("vg0@{}/data", short(&ua)).as_str(), 0), (format!("vg0@{}/data", short(&ub)).as_str(), 1)]
    );
    let e = store.ls(&v, &LsOptions::default().volume("vg0/data").path("/")).unwrap_err();
    assert!(e.to_string().contains("2 logical volumes"), "{e}");
    let out = env.path("out");
    // The listed name, or any unique prefix of the UUID, with or without dashes.
    assert_eq!(who(&store, &v, ExtractOptions::default().volume(format!("vg0@{}/data", short(&ua))), &out), "disk a");
    assert_eq!(who(&store, &v, ExtractOptions::default().volume(format!("vg0@{}/data", &ub[..9])), &out), "disk b");
}

#[test]
fn a_logical_volume_striped_over_two_disks() {
    let Some(fx) = lvm_fixture("striped") else { return };
    let dir = fx.path();
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    let src = dir.join("tree");
    build_tree(&src);
    let img = dir.join("str.fs");
    mkfs("ext4", &src, &img, 16, &[]);
    write_lv(&[a.clone(), b.clone()], None, "vgs", "str", &std::fs::read(&img).unwrap());
    let env = Env::new();
    let store = env.create(true);
    let v = store.backup_images("striped", &[&a, &b], &BackupOptions::default()).unwrap().version;
    let out = env.path("out");
    let r = store.extract(&v, &ExtractOptions::default().volume("vgs/str").path("/").to(&out)).unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    std::fs::remove_dir(out.join("lost+found")).unwrap();
    assert_same_tree(&src, &out);
}

fn disk_write(disk: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn read_range(disk: &Path, at: u64, len: u64) -> Vec<u8> {
    let f = std::fs::File::open(disk).unwrap();
    let mut b = vec![0u8; len as usize];
    f.read_exact_at(&mut b, at).unwrap();
    b
}
