//! FAT12, FAT16 and FAT32 images made by mkfs.vfat and filled by mcopy
//! (long names, nested directories, many sizes), read back through the
//! `FileSystem` trait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use alike_fs::{FileKind, FsKind};
use alike_testing::{Rng, require_tool, sha256};

use crate::common::{FileDev, read_all, run, text, within};

pub(crate) struct Fixture {
    pub(crate) img: PathBuf,
    pub(crate) files: BTreeMap<String, Vec<u8>>,
    pub(crate) mtimes: BTreeMap<String, i64>,
    _dir: tempfile::TempDir,
}

/// mkfs.vfat -F `bits` on an image of `mib` MiB, then mcopy of a tree
/// whose largest file is `max` bytes.
pub(crate) fn fixture(bits: u32, mib: u64, max: usize) -> Option<Fixture> {
    if !require_tool("mcopy") || !Path::new("/usr/sbin/mkfs.vfat").exists() && !require_tool("mkfs.vfat") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut rng = Rng::new(u64::from(bits));
    let mut files = BTreeMap::new();
    let mut mtimes = BTreeMap::new();
    let mut add = |rel: &str, data: Vec<u8>, files: &mut BTreeMap<String, Vec<u8>>| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &data).unwrap();
        // Even seconds: FAT keeps modification times to 2 s.
        let t = 1_700_000_000 + 2 * files.len() as i64 * 3607;
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64))
            .unwrap();
        mtimes.insert(rel.to_string(), t * 1_000_000_000);
        files.insert(rel.to_string(), data);
    };
    for (name, len) in
        [("empty", 0usize), ("one", 1), ("s511", 511), ("s512", 512), ("f4095", 4095), ("f4096", 4096), ("f4097", 4097)]
    {
        add(name, rng.noise(len), &mut files);
    }
    for (name, len) in [("mib1.bin", (1 << 20) + 1), ("big.bin", (3 << 20) + 7)] {
        if len <= max {
            add(name, rng.noise(len), &mut files);
        }
    }
    add("EFI/BOOT/BOOTX64.EFI", rng.noise(70_000), &mut files);
    add("Long File Name ü.bin", rng.noise(300), &mut files);
    add("日本語のファイル名.txt", "こんにちは".as_bytes().to_vec(), &mut files);
    add("a.b.c.d", b"dots".to_vec(), &mut files);
    add("lower.txt", b"lower".to_vec(), &mut files);
    add("UPPER.TXT", b"upper".to_vec(), &mut files);
    add("a name that is rather long, longer than one LFN entry holds, to chain several.txt", text(1000, 9), &mut files);
    for i in 0..100 {
        // A directory of several clusters.
        add(&format!("many/entry number {i}"), format!("{i}").into_bytes(), &mut files);
    }
    let img = dir.path().join(format!("fat{bits}.img"));
    run(Command::new("truncate").arg("-s").arg(format!("{mib}M")).arg(&img));
    let mkfs = if Path::new("/usr/sbin/mkfs.vfat").exists() { "/usr/sbin/mkfs.vfat" } else { "mkfs.vfat" };
    run(Command::new(mkfs).args(["-F", &bits.to_string(), "-n", "ALIKE ESP"]).arg(&img));
    // Holes in the allocation first: files copied, every other one deleted,
    // so that the files copied next are fragmented.
    let holes = dir.path().join("holes");
    std::fs::create_dir(&holes).unwrap();
    for i in 0..16 {
        let p = holes.join(format!("h{i}"));
        std::fs::write(&p, rng.noise(100)).unwrap(); // one cluster each
        let t = 1_650_000_000 + 2 * i as u64;
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(t))
            .unwrap();
        if i % 2 == 1 {
            files.insert(format!("holes/h{i}"), std::fs::read(&p).unwrap());
            mtimes.insert(format!("holes/h{i}"), t as i64 * 1_000_000_000);
        }
    }
    // One by one: each takes the next cluster.
    run(mtools("mmd").arg("-i").arg(&img).arg("::/holes"));
    for i in 0..16 {
        run(mtools("mcopy")
            .arg("-i")
            .arg(&img)
            .arg("-m")
            .arg(holes.join(format!("h{i}")))
            .arg(format!("::/holes/h{i}")));
    }
    for i in (0..16).step_by(2) {
        run(mtools("mdel").arg("-i").arg(&img).arg(format!("::/holes/h{i}")));
    }
    if bits == 32 {
        // FAT32 keeps a next-free-cluster hint (FSInfo) that mtools follows
        // past the holes: point it at the start, as a fresh volume has it.
        let mut b = std::fs::read(&img).unwrap();
        let fsinfo = usize::from(u16::from_le_bytes([b[48], b[49]])) * 512;
        assert_eq!(&b[fsinfo + 484..fsinfo + 488], b"rrAa", "FSInfo signature");
        b[fsinfo + 492..fsinfo + 496].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&img, b).unwrap();
    }
    // The largest file first, into the holes.
    let largest = files.iter().filter(|(k, _)| !k.contains('/')).max_by_key(|(_, v)| v.len()).unwrap().0.clone();
    run(mtools("mcopy").arg("-i").arg(&img).arg("-m").arg(src.join(&largest)).arg(format!("::/{largest}")));
    let mut mcopy = mtools("mcopy");
    mcopy.arg("-i").arg(&img).args(["-s", "-m"]);
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if !p.ends_with(&largest) {
            mcopy.arg(p);
        }
    }
    run(mcopy.arg("::/"));
    // It lies in several pieces (mshowfat prints one <a-b> per run).
    let out = mtools("mshowfat").arg("-i").arg(&img).arg(format!("::/{largest}")).output().unwrap();
    let runs = String::from_utf8_lossy(&out.stdout).matches('<').count();
    assert!(runs > 1, "{largest} is not fragmented: {}", String::from_utf8_lossy(&out.stdout));
    Some(Fixture { img, files, mtimes, _dir: dir })
}

/// An mtools command: UTC (mtools writes local times, which the reader
/// takes as UTC), UTF-8 names, no geometry check of image files.
fn mtools(cmd: &str) -> Command {
    let mut c = Command::new(cmd);
    c.env("TZ", "UTC").env("LC_ALL", "C.UTF-8").env("MTOOLS_SKIP_CHECK", "1");
    c
}

fn check(bits: u32, mib: u64, max: usize) {
    let Some(fx) = fixture(bits, mib, max) else { return };
    let img = fx.img.clone();
    let (fs, tree) = within(60, "open and list", move || {
        let fs = alike_fs::fat::open(FileDev::open(&img)).unwrap().expect("a FAT volume");
        let t = crate::common::tree(&*fs);
        (fs, t)
    });
    assert_eq!(fs.kind(), FsKind::Fat);
    assert_eq!(fs.label().as_deref(), Some("ALIKE ESP"));
    // Exactly the files and their directories, by their long names.
    let mut want: Vec<String> = fx.files.keys().cloned().collect();
    for d in ["EFI", "EFI/BOOT", "many", "holes"] {
        want.push(d.into());
    }
    want.sort();
    assert_eq!(tree.keys().cloned().collect::<Vec<_>>(), want);
    for (path, data) in &fx.files {
        let m = &tree[path];
        assert_eq!(m.kind, FileKind::File, "{path}");
        assert_eq!(m.size, data.len() as u64, "{path}");
        assert_eq!(m.mtime, Some(fx.mtimes[path]), "{path}");
        assert_eq!(fs.metadata(m.id).unwrap(), *m, "{path}: metadata by id");
        let got = read_all(&*fs, m.id, m.size, 65_537);
        assert!(sha256(&got) == sha256(data), "{path}: content differs");
    }
    assert_eq!(tree["EFI/BOOT"].kind, FileKind::Dir);
}

#[test]
fn fat12_long_names_and_sizes_read_back() {
    check(12, 4, 1 << 20);
}

#[test]
fn fat16_long_names_and_sizes_read_back() {
    check(16, 32, 4 << 20);
}

#[test]
fn fat32_long_names_and_sizes_read_back() {
    check(32, 64, 4 << 20);
}

#[test]
fn other_filesystems_are_not_fat_and_fat_is_not_ntfs() {
    let Some(fx) = fixture(16, 32, 0) else { return };
    assert!(alike_fs::ntfs::open(FileDev::open(&fx.img)).unwrap().is_none());
    let zeros = alike_fs::fuzz::MemDevice(vec![0u8; 1 << 20]);
    assert!(alike_fs::fat::open(std::sync::Arc::new(zeros)).unwrap().is_none());
}
