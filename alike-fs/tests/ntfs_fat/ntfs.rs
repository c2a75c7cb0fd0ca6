//! NTFS: an image built by mkntfs, ntfscp and ntfs-3g (tests/tools/make-ntfs.sh)
//! from a tree this test writes, read back through the `FileSystem` trait.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use alike_fs::{FileKind, FileSystem, FsError, FsKind};
use alike_testing::{Rng, sha256, skip};

use crate::common::{FileDev, read_all, run, text, within};

/// What the test wrote, path → bytes, and the times it set.
pub(crate) struct Fixture {
    pub(crate) img: PathBuf,
    pub(crate) files: BTreeMap<String, Vec<u8>>,
    pub(crate) mtimes: BTreeMap<String, i64>,
    _dir: tempfile::TempDir,
}

pub(crate) fn can_build() -> bool {
    for t in ["mkntfs", "ntfscp", "ntfs-3g", "setfattr", "python3"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t} || test -x /usr/sbin/{t} || test -x /sbin/{t}"))
            .output();
        if !found.is_ok_and(|o| o.status.success()) {
            skip(&format!("{t} is not installed (bash scripts/test.sh installs it)"));
            return false;
        }
    }
    let wim = Command::new("python3")
        .args(["-c", "import ctypes, ctypes.util; ctypes.CDLL(ctypes.util.find_library('wim') or 'libwim.so.15')"])
        .status();
    if !wim.is_ok_and(|s| s.success()) {
        skip("libwim (Debian libwim15) is not installed: the CompactOS chunks are compressed with it");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        skip("no /dev/fuse: ntfs-3g cannot mount the image to build it");
        return false;
    }
    true
}

fn write(src: &Path, rel: &str, data: &[u8], files: &mut BTreeMap<String, Vec<u8>>) {
    let p = src.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    files.insert(rel.to_string(), data.to_vec());
}

/// Builds the image; `None` where the tools are missing (a skip).
pub(crate) fn fixture() -> Option<Fixture> {
    if !can_build() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut rng = Rng::new(15);
    let mut files = BTreeMap::new();
    let mut mtimes = BTreeMap::new();
    write(&src, "cp-small", &rng.noise(4095), &mut files);
    write(&src, "cp-big", &rng.noise((1 << 20) + 1), &mut files);
    for (i, (name, len)) in [
        ("empty", 0usize),
        ("one", 1),
        ("f4095", 4095),
        ("f4096", 4096),
        ("f4097", 4097),
        ("mib1", (1 << 20) + 1),
        ("big5", (5 << 20) + 123),
    ]
    .into_iter()
    .enumerate()
    {
        let rel = format!("plain/{name}");
        write(&src, &rel, &rng.noise(len), &mut files);
        // Times in whole 100 ns, NTFS's resolution.
        let t = Duration::new(1_600_000_000 + i as u64 * 86_400, 123_456_700);
        std::fs::File::options()
            .write(true)
            .open(src.join(&rel))
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + t)
            .unwrap();
        mtimes.insert(rel, t.as_nanos() as i64);
    }
    write(&src, "plain/text", &text(200_000, 1), &mut files);
    write(&src, "a/b/c/deep.txt", b"deep\n", &mut files);
    write(&src, "ünï€😀.txt", "ünï€😀\n".as_bytes(), &mut files);
    write(&src, "日本語/ファイル.txt", &rng.noise(5000), &mut files);
    write(&src, "efs.bin", &rng.noise(10_000), &mut files);
    write(&src, "Long Name File.txt", b"long name\n", &mut files);
    // LZNT1: text (compresses), noise (units stored as they are), a file
    // with a zero middle (sparse units), a resident one, one off the unit size.
    write(&src, "comp/text3m", &text(3_000_000, 2), &mut files);
    // Two runs per compression unit: too many for one MFT record, so its
    // $DATA extents spread over records named by an attribute list.
    write(&src, "comp/text16m", &text(16 << 20, 11), &mut files);
    write(&src, "comp/random200k", &rng.noise(200_000), &mut files);
    let mut zeromid = text(1 << 20, 3);
    zeromid[256 << 10..768 << 10].fill(0);
    write(&src, "comp/zeromid", &zeromid, &mut files);
    write(&src, "comp/tiny", b"tiny file\n", &mut files);
    write(&src, "comp/f70000", &text(70_000, 4), &mut files);
    // CompactOS: text with noise in it (some chunks stored as they are).
    for (name, seed) in [("xpress4k.bin", 5u64), ("xpress8k.bin", 6), ("xpress16k.bin", 7), ("lzx.bin", 8)] {
        let mut d = text(300_000, seed);
        let n = rng.noise(40_000);
        d[100_000..140_000].copy_from_slice(&n);
        write(&src, &format!("wof/{name}"), &d, &mut files);
    }
    // x86-like: CALL opcodes (E8) with 4-byte operands, which LZX
    // translates before compressing and the reader must translate back.
    let mut e8 = text(200_000, 10);
    for at in (0..e8.len() - 8).step_by(37) {
        e8[at] = 0xE8;
        let v = (rng.below(1 << 20) as u32).to_le_bytes();
        e8[at + 1..at + 5].copy_from_slice(&v);
    }
    write(&src, "wof/lzx.e8.bin", &e8, &mut files);
    // 8-byte records copied from records further back: match offsets that
    // are multiples of 8, which aligned-offset blocks code best.
    let mut recs = rng.noise(8 * 64);
    while recs.len() < 200_000 {
        let back = 8 * (1 + rng.below(recs.len() as u64 / 8 - 1) as usize);
        let at = recs.len() - back;
        let mut r: Vec<u8> = recs[at..at + 8].to_vec();
        if rng.below(4) == 0 {
            r[rng.below(8) as usize] = rng.below(256) as u8;
        }
        recs.extend(r);
    }
    write(&src, "wof/lzx.aligned.bin", &recs, &mut files);
    let chunk = rng.noise(4096);
    std::fs::write(src.join("sparse-chunk"), &chunk).unwrap();
    let mut sparse = vec![0u8; 20 << 20];
    sparse[8 << 20..(8 << 20) + 4096].copy_from_slice(&chunk);
    files.insert("sparse".into(), sparse);
    files.insert("hl-mib1".into(), files["plain/mib1"].clone());
    let img = dir.path().join("ntfs.img");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/make-ntfs.sh");
    run(Command::new("bash").arg(script).arg(&img).arg(&src));
    Some(Fixture { img, files, mtimes, _dir: dir })
}

fn open(img: &Path) -> std::sync::Arc<dyn FileSystem> {
    alike_fs::ntfs::open(FileDev::open(img)).unwrap().expect("an NTFS volume")
}

#[test]
fn ntfs_files_links_compression_and_compactos_read_back() {
    let Some(fx) = fixture() else { return };
    let img = fx.img.clone();
    let fs = within(120, "open and list", move || {
        let fs = open(&img);
        let t = crate::common::tree(&*fs);
        (fs, t)
    });
    let (fs, tree) = fs;
    assert_eq!(fs.kind(), FsKind::Ntfs);
    assert_eq!(fs.label().as_deref(), Some("ALIKE"));

    // The root: what was written, no metafile, no DOS name.
    let root: BTreeSet<String> =
        fs.read_dir(fs.root()).unwrap().into_iter().map(|e| String::from_utf8(e.name).unwrap()).collect();
    let want: BTreeSet<String> = [
        "cp-small",
        "cp-big",
        "plain",
        "a",
        "ünï€😀.txt",
        "日本語",
        "efs.bin",
        "comp",
        "hl-mib1",
        "Long Name File.txt",
        "sparse",
        "rlink",
        "junc",
        "ilink",
        "wof",
        "many",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(root, want);

    // Every file's bytes, read in steps that cross clusters, compression
    // units and WOF chunks at odd places.
    for (path, data) in &fx.files {
        let m = tree.get(path).unwrap_or_else(|| panic!("{path} not listed"));
        assert_eq!(m.kind, FileKind::File, "{path}");
        assert_eq!(m.size, data.len() as u64, "{path}");
        assert_eq!(m.unreadable, None, "{path}");
        for step in [77_777, 1 << 20] {
            let got = read_all(&*fs, m.id, m.size, step);
            assert!(sha256(&got) == sha256(data), "{path}: content differs (reads of {step})");
        }
    }
    // A read that starts inside a compression unit.
    let m = &tree["comp/text3m"];
    let mut buf = vec![0u8; 10_000];
    assert_eq!(fs.read_at(m.id, 65_000, &mut buf).unwrap(), 10_000);
    assert_eq!(buf, fx.files["comp/text3m"][65_000..75_000]);

    // Times as set through ntfs-3g.
    for (path, t) in &fx.mtimes {
        assert_eq!(tree[path].mtime, Some(*t), "{path}");
    }
    assert!(tree["plain/one"].btime.is_some());

    // A hard link: one record, two names.
    assert_eq!(tree["hl-mib1"].id, tree["plain/mib1"].id);
    assert_eq!(tree["hl-mib1"].nlink, 2);
    assert_eq!(tree["plain/one"].nlink, 1);

    // The sparse file: its hole is not a data range.
    let ranges = fs.data_ranges(tree["sparse"].id).unwrap();
    let covered: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    assert!(covered < 1 << 20, "{ranges:?}");
    assert!(ranges.iter().any(|r| r.start <= 8 << 20 && r.end >= (8 << 20) + 4096), "{ranges:?}");
    let zr = fs.data_ranges(tree["comp/zeromid"].id).unwrap();
    assert!(zr.iter().map(|r| r.end - r.start).sum::<u64>() < 1 << 20, "compressed zeros are holes: {zr:?}");

    // Links.
    for (path, target) in [("rlink", "../plain/one"), ("junc", "C:/Windows"), ("ilink", "plain/one")] {
        let m = &tree[path];
        assert_eq!(m.kind, FileKind::Symlink, "{path}");
        assert_eq!(String::from_utf8(fs.read_link(m.id).unwrap()).unwrap(), target, "{path}");
        assert_eq!(m.size, target.len() as u64, "{path}");
    }

    // The big directory (an index allocation with B-tree nodes).
    let many: Vec<_> = tree.keys().filter(|k| k.starts_with("many/")).collect();
    assert_eq!(many.len(), 300);
    assert!(!tree.contains_key("LONGNA~1.TXT"));
    drop(fs);

    // EFS: the $DATA attribute's encrypted flag, patched in.
    let rec = tree["efs.bin"].id.0;
    set_data_flag(&fx.img, rec, 0x4000);
    let fs = open(&fx.img);
    let m = fs.read_dir(fs.root()).unwrap().into_iter().find(|e| e.name == b"efs.bin").unwrap().meta;
    assert!(m.unreadable.as_deref().unwrap().contains("EFS"), "{:?}", m.unreadable);
    match fs.read_at(m.id, 0, &mut buf) {
        Err(FsError::Unreadable { path, why }) => {
            assert!(path.contains("efs.bin") && why.contains("EFS"), "{path}: {why}")
        }
        other => panic!("EFS read: {other:?}"),
    }
    let other = fs.read_dir(fs.root()).unwrap().into_iter().find(|e| e.name == b"cp-big").unwrap().meta;
    assert_eq!(sha256(&read_all(&*fs, other.id, other.size, 1 << 20)), sha256(&fx.files["cp-big"]));
}

/// The boot sector's geometry: (cluster bytes, MFT byte offset, record bytes).
pub(crate) fn geometry(img: &[u8]) -> (u64, u64, u64) {
    let sector = u64::from(u16::from_le_bytes([img[0x0b], img[0x0c]]));
    let cluster = sector * u64::from(img[0x0d]);
    let mft = u64::from_le_bytes(img[0x30..0x38].try_into().unwrap()) * cluster;
    let r = img[0x40] as i8;
    let record = if r < 0 { 1u64 << (-r) } else { r as u64 * cluster };
    (cluster, mft, record)
}

/// Offset in the image of the `ty` attribute (unnamed) of MFT record `rec`
/// (the MFT of a fresh volume is contiguous at its start).
pub(crate) fn attribute_at(img: &[u8], rec: u64, ty: u32) -> usize {
    let (_, mft, record) = geometry(img);
    let base = (mft + rec * record) as usize;
    assert_eq!(&img[base..base + 4], b"FILE");
    let mut off = base + u16::from_le_bytes([img[base + 0x14], img[base + 0x15]]) as usize;
    loop {
        let t = u32::from_le_bytes(img[off..off + 4].try_into().unwrap());
        assert_ne!(t, 0xffff_ffff, "record {rec} has no attribute {ty:#x}");
        let len = u32::from_le_bytes(img[off + 4..off + 8].try_into().unwrap()) as usize;
        if t == ty && img[off + 9] == 0 {
            return off;
        }
        off += len;
    }
}

/// Sets `flag` in the header flags of record `rec`'s unnamed $DATA.
fn set_data_flag(img: &Path, rec: u64, flag: u16) {
    let mut b = std::fs::read(img).unwrap();
    let at = attribute_at(&b, rec, 0x80) + 0x0c;
    // Not one of the two bytes at a sector's end the fixups own.
    assert!(at % 512 < 510, "the flags lie under a fixup");
    let f = u16::from_le_bytes([b[at], b[at + 1]]) | flag;
    b[at..at + 2].copy_from_slice(&f.to_le_bytes());
    std::fs::write(img, b).unwrap();
}
