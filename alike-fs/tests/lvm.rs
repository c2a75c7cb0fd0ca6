//! LVM2 volume groups made by the real lvm2 tools on loop devices
//! (`tests/fixtures/make-lvm.sh`), read back through `alike_fs::lvm`.
//!
//! The oracles are independent of the reader: where each logical volume
//! lies comes from `lvs --segments` and `pvs` (the tools' own view), the
//! test writes known bytes there itself, and a real ext4 filesystem copied
//! into a volume's extents must read back through `debugfs`. Hostile
//! metadata is made by editing a real image's metadata text and sealing it
//! again with this file's own CRC.
//!
//! Needs root, loop devices, lvm2, python3, sfdisk, mkfs.ext4 and debugfs
//! (`bash scripts/test.sh` installs them); without them each test prints
//! why it skips, and fails under `CI`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use alike_fs::lvm::{self, LogicalVolume, SegmentKind, VolumeGroup};
use alike_fs::{BlockDevice, FsError};

// --- devices ----------------------------------------------------------------

struct FileDevice {
    name: String,
    file: File,
    size: u64,
}

impl FileDevice {
    fn open(path: &Path) -> Arc<dyn BlockDevice> {
        let file = File::open(path).unwrap();
        let size = file.metadata().unwrap().len();
        Arc::new(FileDevice { name: path.display().to_string(), file, size })
    }
}

fn out_of_range(device: &str, offset: u64, len: usize, size: u64) -> FsError {
    FsError::OutOfRange { device: device.into(), offset, len: len as u64, size }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> alike_fs::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.size) {
            return Err(out_of_range(&self.name, offset, buf.len(), self.size));
        }
        self.file.read_exact_at(buf, offset).map_err(|e| FsError::Device {
            device: self.name.clone(),
            offset,
            len: buf.len() as u64,
            message: e.to_string(),
        })
    }
}

/// A partition: `len` bytes of `inner` from `offset` (partition tables are
/// another module's job; the test computes the offset from sfdisk).
struct SliceDevice {
    inner: Arc<dyn BlockDevice>,
    offset: u64,
    len: u64,
}

impl BlockDevice for SliceDevice {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> alike_fs::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.len) {
            return Err(out_of_range("partition", offset, buf.len(), self.len));
        }
        self.inner.read_exact_at(self.offset + offset, buf)
    }
}

struct MemDevice(Vec<u8>);

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> alike_fs::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.size()) {
            return Err(out_of_range("memory", offset, buf.len(), self.size()));
        }
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
}

fn mem(img: Vec<u8>) -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice(img))
}

// --- fixtures ---------------------------------------------------------------

/// Whether `tool ARG` runs (e2fsprogs tools know `-V`, not `--version`);
/// when not, a skip (which fails under CI).
fn has_tool(tool: &str, arg: &str) -> bool {
    let ok = Command::new(tool).arg(arg).output().is_ok_and(|o| o.status.success());
    if !ok {
        alike_testing::skip(&format!("{tool} is not installed (bash scripts/test.sh installs it)"));
    }
    ok
}

/// Runs the fixture script for `case` into a fresh directory; `None` (a
/// skip, which fails under CI) when the tools or loop devices are missing.
fn fixture(case: &str) -> Option<tempfile::TempDir> {
    for tool in ["pvcreate", "losetup", "python3", "sfdisk"] {
        if !alike_testing::require_tool(tool) {
            return None;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-lvm.sh");
    let out = Command::new("bash").arg(script).arg(case).arg(dir.path()).output().unwrap();
    match out.status.code() {
        Some(0) => Some(dir),
        Some(77) => {
            alike_testing::skip(&format!(
                "no loop device could be attached (root and /dev/loop-control are needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            None
        }
        _ => panic!("make-lvm.sh {case} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)),
    }
}

/// One segment as `lvs --segments` reports it.
#[derive(Debug, Clone)]
struct ToolSeg {
    lv: String,
    lv_uuid: String,
    vg_uuid: String,
    extent: u64,
    start_pe: u64,
    size_pe: u64,
    segtype: String,
    stripe_size: u64,
    /// (PV name as the script renamed it, first extent) per stripe.
    ranges: Vec<(String, u64)>,
}

fn report_rows(path: &Path, kind: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["report"][0][kind].as_array().unwrap().clone()
}

fn num(v: &serde_json::Value) -> u64 {
    v.as_str().unwrap().parse().unwrap()
}

fn tool_segs(path: &Path) -> Vec<ToolSeg> {
    report_rows(path, "seg")
        .iter()
        .map(|r| ToolSeg {
            lv: r["lv_name"].as_str().unwrap().into(),
            lv_uuid: r["lv_uuid"].as_str().unwrap().into(),
            vg_uuid: r["vg_uuid"].as_str().unwrap().into(),
            extent: num(&r["vg_extent_size"]),
            start_pe: num(&r["seg_start_pe"]),
            size_pe: num(&r["seg_size_pe"]),
            segtype: r["segtype"].as_str().unwrap().into(),
            stripe_size: num(&r["stripe_size"]),
            ranges: r["seg_pe_ranges"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .map(|s| {
                    let (pv, range) = s.rsplit_once(':').unwrap();
                    (pv.to_owned(), range.split('-').next().unwrap().parse().unwrap())
                })
                .collect(),
        })
        .collect()
}

/// PV name → (uuid, pe_start in bytes), from `pvs`.
fn tool_pvs(path: &Path) -> HashMap<String, (String, u64)> {
    report_rows(path, "pv")
        .iter()
        .map(|r| {
            (
                r["pv_name"].as_str().unwrap().to_owned(),
                (r["pv_uuid"].as_str().unwrap().to_owned(), num(&r["pe_start"])),
            )
        })
        .collect()
}

/// Where a PV named by the script lies: the image and the byte offset of
/// the PV in it (`IMAGE#N` is partition N, found with `sfdisk --json`).
fn pv_location(dir: &Path, name: &str) -> (PathBuf, u64) {
    match name.split_once('#') {
        None => (dir.join(name), 0),
        Some((img, n)) => {
            let path = dir.join(img);
            let (start, _) = partition(&path, n.parse().unwrap());
            (path, start)
        }
    }
}

/// Partition `n` (from 1) of a disk image: (start, size) in bytes, as
/// `sfdisk --json` says.
fn partition(img: &Path, n: usize) -> (u64, u64) {
    let out = Command::new("sfdisk").arg("--json").arg(img).output().unwrap();
    assert!(out.status.success(), "sfdisk --json: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["partitiontable"]["partitions"][n - 1];
    let sector = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    (p["start"].as_u64().unwrap() * sector, p["size"].as_u64().unwrap() * sector)
}

/// Writes `data` (the whole logical volume) at its extents, as the tools
/// report them: linear ranges as they are, striped ones chunk by chunk
/// round-robin over the stripes (device-mapper's `striped` target).
fn write_lv(dir: &Path, pvs: &HashMap<String, (String, u64)>, segs: &[ToolSeg], lv: &str, data: &[u8]) {
    let mut written = 0u64;
    for s in segs.iter().filter(|s| s.lv == lv) {
        let seg = &data[(s.start_pe * s.extent) as usize..((s.start_pe + s.size_pe) * s.extent) as usize];
        let base = |k: usize| {
            let (pv, first) = &s.ranges[k];
            let (img, part) = pv_location(dir, pv);
            (img, part + pvs[pv].1 + first * s.extent)
        };
        let n = s.ranges.len();
        let chunk = if n == 1 { seg.len() } else { s.stripe_size as usize };
        for (k, piece) in seg.chunks(chunk).enumerate() {
            let (img, at) = base(k % n);
            let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
            f.write_all_at(piece, at + ((k / n) * chunk) as u64).unwrap();
        }
        written += seg.len() as u64;
    }
    assert_eq!(written, data.len() as u64, "{lv}: the segments cover the volume");
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Reads a whole device in pieces of an odd size, so that reads cross
/// segment and stripe boundaries in the middle.
fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut out = vec![0u8; dev.size() as usize];
    for (k, piece) in out.chunks_mut(777_777).enumerate() {
        dev.read_exact_at(k as u64 * 777_777, piece).unwrap();
    }
    out
}

fn lv<'a>(vg: &'a VolumeGroup, name: &str) -> &'a LogicalVolume {
    vg.lvs.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no LV {name} in {vg:?}"))
}

fn only_vg(vgs: Vec<VolumeGroup>) -> VolumeGroup {
    assert_eq!(vgs.len(), 1, "{vgs:#?}");
    vgs.into_iter().next().unwrap()
}

/// (path, content) of files put into a filesystem.
type Files = Vec<(String, Vec<u8>)>;

/// A real ext4 filesystem of `size` bytes with a few files: the image's
/// bytes and (path, content) of each file.
fn make_ext4(size: u64) -> Option<(Vec<u8>, Files)> {
    if !has_tool("mkfs.ext4", "-V") || !has_tool("debugfs", "-V") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    let files = vec![
        ("hello.txt".to_owned(), b"hello from a logical volume\n".to_vec()),
        ("sub/big.bin".to_owned(), pattern(7, 3 << 20 | 12345)),
        ("sub/deeper/mid.bin".to_owned(), pattern(8, 300_000)),
    ];
    for (p, c) in &files {
        std::fs::write(src.join(p), c).unwrap();
    }
    let img = dir.path().join("fs.img");
    File::create(&img).unwrap().set_len(size).unwrap();
    let out = Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096", "-d"]).arg(&src).arg(&img).output().unwrap();
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    Some((std::fs::read(&img).unwrap(), files))
}

/// The oracle: debugfs reads each file out of `bytes` (a device read back
/// through the reader), and they equal what went into the filesystem.
fn debugfs_reads(bytes: &[u8], files: &[(String, Vec<u8>)]) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lv.img");
    std::fs::write(&img, bytes).unwrap();
    for (p, c) in files {
        let out = Command::new("debugfs").arg("-R").arg(format!("cat /{p}")).arg(&img).output().unwrap();
        assert!(out.status.success(), "debugfs cat {p}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == *c, "debugfs reads /{p} differently ({} bytes, want {})", out.stdout.len(), c.len());
    }
}

// --- the cases ----------------------------------------------------------------

#[test]
fn linear_two_segments_and_an_unsupported_type() {
    let Some(fx) = fixture("one-disk") else { return };
    let dir = fx.path();
    let segs = tool_segs(&dir.join("vg0.lvs.json"));
    let pvs = tool_pvs(&dir.join("vg0.pvs.json"));
    let lin = pattern(1, 8 << 20);
    write_lv(dir, &pvs, &segs, "lin", &lin);
    let Some((fs, files)) = make_ext4(10 << 20) else { return };
    write_lv(dir, &pvs, &segs, "twoseg", &fs);

    let vg = only_vg(lvm::scan(&[FileDevice::open(&dir.join("disk.img"))]).unwrap());
    assert_eq!(vg.name, "vg0");
    assert_eq!(vg.uuid, segs[0].vg_uuid);
    assert!(!vg.name_collision);
    assert_eq!(vg.extent_size, 1 << 20);
    assert!(vg.missing_pvs.is_empty());
    assert_eq!(vg.pvs.len(), 1);
    assert_eq!(vg.pvs[0].uuid, pvs["disk.img"].0);
    assert_eq!(vg.pvs[0].pe_start, pvs["disk.img"].1);
    assert_eq!(vg.pvs[0].device, Some(0));
    // vgcreate wrote seqno 1, the restore 2.
    assert!(vg.seqno >= 2, "{}", vg.seqno);
    let names: Vec<&str> = vg.lvs.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lin", "twoseg", "zero"]);

    let l = lv(&vg, "lin");
    assert_eq!(l.uuid, segs.iter().find(|s| s.lv == "lin").unwrap().lv_uuid);
    assert_eq!((l.size, l.layout.as_str(), l.visible), (8 << 20, "linear", true));
    assert_eq!(read_all(l.device().unwrap().as_ref()), lin);

    let t = lv(&vg, "twoseg");
    assert_eq!(t.size, 10 << 20);
    assert_eq!(t.layout, "linear, 2 segments");
    assert_eq!(t.segments.len(), 2);
    assert_eq!((t.segments[1].start, t.segments[1].len), (4 << 20, 6 << 20));
    match &t.segments[1].kind {
        SegmentKind::Striped { stripes, .. } => assert_eq!(stripes[0].start_extent, 12),
        k => panic!("{k:?}"),
    }
    let got = read_all(t.device().unwrap().as_ref());
    assert!(got == fs, "the ext4 image reads back through the two segments");
    debugfs_reads(&got, &files);
    // A read across the segment boundary, and reads past the end.
    let dev = t.device().unwrap();
    let mut buf = vec![0u8; 10_000];
    dev.read_exact_at((4 << 20) - 5000, &mut buf).unwrap();
    assert_eq!(buf, fs[(4 << 20) - 5000..(4 << 20) + 5000]);
    assert!(matches!(dev.read_exact_at((10 << 20) - 10, &mut buf), Err(FsError::OutOfRange { .. })));
    assert!(matches!(dev.read_exact_at(u64::MAX - 10, &mut buf), Err(FsError::OutOfRange { .. })));

    let z = lv(&vg, "zero");
    assert_eq!(z.layout, "zero (not readable)");
    match z.device() {
        Err(FsError::Unsupported { what, .. }) => assert!(what.contains("\"zero\""), "{what}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn striped_over_two_disks_and_newest_metadata() {
    let Some(fx) = fixture("striped") else { return };
    let dir = fx.path();
    let segs = tool_segs(&dir.join("vgs.lvs.json"));
    let pvs = tool_pvs(&dir.join("vgs.pvs.json"));
    let str_seg = segs.iter().find(|s| s.lv == "str").unwrap();
    assert_eq!((str_seg.segtype.as_str(), str_seg.ranges.len(), str_seg.stripe_size), ("striped", 2, 65536));
    let Some((fs, files)) = make_ext4(16 << 20) else { return };
    write_lv(dir, &pvs, &segs, "str", &fs);
    let lin = pattern(2, 4 << 20);
    write_lv(dir, &pvs, &segs, "lin", &lin);
    let later = pattern(3, 3 << 20);
    write_lv(dir, &pvs, &segs, "later", &later);
    let a = FileDevice::open(&dir.join("a.img"));
    let b = FileDevice::open(&dir.join("b.img"));

    // b.img holds the older metadata (without `later`): whichever disk
    // comes first, the newest copy wins.
    for devices in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
        let vg = only_vg(lvm::scan(&devices).unwrap());
        assert_eq!(vg.uuid, str_seg.vg_uuid);
        assert!(vg.missing_pvs.is_empty());
        let s = lv(&vg, "str");
        assert_eq!(s.layout, "striped (2 stripes of 64 KiB)");
        let got = read_all(s.device().unwrap().as_ref());
        assert!(got == fs, "the ext4 image reads back through the stripes");
        assert_eq!(read_all(lv(&vg, "lin").device().unwrap().as_ref()), lin);
        assert_eq!(read_all(lv(&vg, "later").device().unwrap().as_ref()), later);
    }
    let vg = only_vg(lvm::scan(&[a.clone(), b.clone()]).unwrap());
    let got = read_all(lv(&vg, "str").device().unwrap().as_ref());
    debugfs_reads(&got, &files);
    let b_only = only_vg(lvm::scan(std::slice::from_ref(&b)).unwrap());
    assert!(b_only.seqno < vg.seqno);
    assert!(b_only.lvs.iter().all(|l| l.name != "later"));

    // Disk b missing: what lies on a reads, what lies on b fails naming b.
    let b_uuid = &pvs["b.img"].0;
    let vg = only_vg(lvm::scan(std::slice::from_ref(&a)).unwrap());
    assert_eq!(&vg.missing_pvs, std::slice::from_ref(b_uuid));
    assert_eq!(vg.pvs.iter().find(|p| &p.uuid == b_uuid).unwrap().device, None);
    assert_eq!(read_all(lv(&vg, "later").device().unwrap().as_ref()), later);
    let s = lv(&vg, "str").device().unwrap();
    let mut chunk = vec![0u8; 65536];
    s.read_exact_at(0, &mut chunk).unwrap();
    assert_eq!(chunk, fs[..65536]);
    let e = s.read_exact_at(65536, &mut chunk).unwrap_err();
    assert!(matches!(&e, FsError::Device { message, .. } if message.contains(b_uuid.as_str())), "{e}");
    let e = lv(&vg, "lin").device().unwrap().read_exact_at(0, &mut chunk).unwrap_err();
    assert!(e.to_string().contains(b_uuid.as_str()), "{e}");
}

#[test]
fn two_disks_each_with_a_vg0() {
    let Some(fx) = fixture("dup") else { return };
    let dir = fx.path();
    let mut want = HashMap::new();
    for (k, d) in ["a", "b"].into_iter().enumerate() {
        let segs = tool_segs(&dir.join(format!("{d}.vg0.lvs.json")));
        let pvs = tool_pvs(&dir.join(format!("{d}.vg0.pvs.json")));
        let data = pattern(10 + k as u64, 4 << 20);
        write_lv(dir, &pvs, &segs, "data", &data);
        want.insert(segs[0].vg_uuid.clone(), (k, data));
    }
    assert_eq!(want.len(), 2, "two volume groups, two uuids");
    let devices = [FileDevice::open(&dir.join("a.img")), FileDevice::open(&dir.join("b.img"))];
    let vgs = lvm::scan(&devices).unwrap();
    assert_eq!(vgs.len(), 2, "{vgs:#?}");
    for vg in &vgs {
        assert_eq!(vg.name, "vg0");
        assert!(vg.name_collision);
        let (k, data) = &want[&vg.uuid];
        assert_eq!(vg.pvs[0].device, Some(*k));
        assert_eq!(&read_all(lv(vg, "data").device().unwrap().as_ref()), data);
    }
    // Alone, a vg0 collides with nothing.
    assert!(!only_vg(lvm::scan(&devices[..1]).unwrap()).name_collision);
}

#[test]
fn pv_on_a_partition() {
    let Some(fx) = fixture("partition") else { return };
    let dir = fx.path();
    let segs = tool_segs(&dir.join("vgp.lvs.json"));
    let pvs = tool_pvs(&dir.join("vgp.pvs.json"));
    let data = pattern(20, 6 << 20);
    write_lv(dir, &pvs, &segs, "lin", &data);
    let disk = FileDevice::open(&dir.join("disk.img"));
    let (start, size) = partition(&dir.join("disk.img"), 2);
    let part: Arc<dyn BlockDevice> = Arc::new(SliceDevice { inner: disk.clone(), offset: start, len: size });
    // The whole disk starts with its MBR, not a label: only the partition
    // is a PV.
    let vg = only_vg(lvm::scan(&[disk, part]).unwrap());
    assert_eq!(vg.name, "vgp");
    assert_eq!(vg.pvs[0].device, Some(1));
    assert_eq!(read_all(lv(&vg, "lin").device().unwrap().as_ref()), data);
}

// --- hostile and odd metadata, on a real image ------------------------------

fn crc(mut c: u32, data: &[u8]) -> u32 {
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = (c >> 1) ^ if c & 1 != 0 { 0xEDB8_8320 } else { 0 };
        }
    }
    c
}
const CRC0: u32 = 0xf597_a6cf;

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// (start, size) of the first metadata area, from the PV header in sector 1.
fn mda_area(img: &[u8]) -> (usize, usize) {
    let ph = 512 + 32;
    let mut at = ph + 40;
    while u64_at(img, at) != 0 {
        at += 16;
    }
    at += 16;
    (u64_at(img, at) as usize, u64_at(img, at + 8) as usize)
}

/// The committed metadata text (not wrapped).
fn committed_text(img: &[u8]) -> Vec<u8> {
    let (start, _) = mda_area(img);
    let (off, len) = (u64_at(img, start + 40) as usize, u64_at(img, start + 48) as usize);
    img[start + off..start + off + len].to_vec()
}

/// Puts `text` in the metadata area at `off` (wrapping past the end to
/// just after the header, as LVM's circular buffer does), points the
/// committed `raw_locn` at it with its checksum, and seals the header.
fn reseal(img: &mut [u8], text: &[u8], off: usize) {
    let (start, size) = mda_area(img);
    for (k, &b) in text.iter().enumerate() {
        let mut p = off + k;
        if p >= size {
            p = p - size + 512;
        }
        img[start + p] = b;
    }
    let h = &mut img[start..start + 512];
    h[40..48].copy_from_slice(&(off as u64).to_le_bytes());
    h[48..56].copy_from_slice(&(text.len() as u64).to_le_bytes());
    h[56..60].copy_from_slice(&crc(CRC0, text).to_le_bytes());
    let c = crc(CRC0, &h[4..]);
    h[..4].copy_from_slice(&c.to_le_bytes());
}

fn one_disk_image() -> Option<(Vec<u8>, Vec<u8>)> {
    let fx = fixture("one-disk")?;
    let dir = fx.path();
    let segs = tool_segs(&dir.join("vg0.lvs.json"));
    let pvs = tool_pvs(&dir.join("vg0.pvs.json"));
    let lin = pattern(1, 8 << 20);
    write_lv(dir, &pvs, &segs, "lin", &lin);
    Some((std::fs::read(dir.join("disk.img")).unwrap(), lin))
}

fn edited(img: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(committed_text(img)).unwrap();
    assert!(text.contains(from), "{from:?} not in the metadata text:\n{text}");
    let mut img = img.to_vec();
    reseal(&mut img, text.replacen(from, to, 1).as_bytes(), 512);
    img
}

#[test]
fn metadata_that_wraps_around_the_area() {
    let Some((img, lin)) = one_disk_image() else { return };
    let (_, size) = mda_area(&img);
    let text = committed_text(&img);
    let mut wrapped = img.clone();
    // Scrub the old copy so that only the wrapped one can be read.
    let (start, _) = mda_area(&img);
    wrapped[start + 512..start + size].fill(0);
    reseal(&mut wrapped, &text, size - 100);
    let vg = only_vg(lvm::scan(&[mem(wrapped.clone())]).unwrap());
    assert_eq!(read_all(lv(&vg, "lin").device().unwrap().as_ref()), lin);
    // One byte of the wrapped part changed: the checksum says so.
    let p = start + 512 + 10;
    wrapped[p] ^= 1;
    let e = lvm::scan(&[mem(wrapped)]).unwrap_err();
    assert!(e.to_string().contains("metadata text checksum"), "{e}");
}

#[test]
fn hostile_metadata_is_an_error_not_a_panic() {
    let Some((img, lin)) = one_disk_image() else { return };
    let text = committed_text(&img);
    let scan = |img: Vec<u8>| lvm::scan(&[mem(img)]);

    // Whole-VG failures: the scan finds nothing and says why.
    // Cut off inside the volume group's section (as a torn write would).
    let cut = text.windows(8).position(|w| w == b"segment1").unwrap();
    let mut truncated = img.clone();
    reseal(&mut truncated, &text[..cut], 512);
    for (name, bad, want) in [
        ("truncated text", truncated, "ends inside a section"),
        ("huge seqno", edited(&img, "seqno = ", "seqno = 99999999999999999999"), "not a number"),
        ("absurd extent size", edited(&img, "extent_size = 2048", "extent_size = 4611686018427387904"), "extent_size"),
        ("absurd pe_count", edited(&img, "pe_count = 63", "pe_count = 922337203685477580"), "overflow"),
        ("pe_count past dev_size", edited(&img, "pe_count = 63", "pe_count = 64"), "run past the device"),
        ("negative pe_start", edited(&img, "pe_start = ", "pe_start = -"), "negative"),
        (
            "two VGs",
            {
                let mut t = text.clone();
                t.retain(|&b| b != 0);
                t.extend_from_slice(b"vg9 { id = \"x\" seqno = 1 extent_size = 8 }\n");
                let mut i = img.clone();
                reseal(&mut i, &t, 512);
                i
            },
            "more than one volume group",
        ),
        (
            "deep nesting",
            {
                let t = format!("vg0 {{ {}{} }}", "a { ".repeat(100), "} ".repeat(100));
                let mut i = img.clone();
                reseal(&mut i, t.as_bytes(), 512);
                i
            },
            "nest deeper",
        ),
    ] {
        match scan(bad) {
            Err(e @ FsError::Corrupt { .. }) => assert!(e.to_string().contains(want), "{name}: {e}"),
            other => panic!("{name}: {other:?}"),
        }
    }

    // One LV's segments make no sense: that LV is listed with its problem,
    // and the others still read.
    for (name, from, to, want) in [
        ("absurd extent count", "extent_count = 8", "extent_count = 4611686018427387904", "overflow"),
        ("extents past the PV", "\"pv0\", 3", "\"pv0\", 60", "run past"),
        ("huge first extent", "\"pv0\", 3", "\"pv0\", 9223372036854775807", "run past"),
        ("negative first extent", "\"pv0\", 3", "\"pv0\", -3", "pair a PV name"),
        ("unknown PV", "\"pv0\", 3", "\"pv7\", 3", "does not list"),
        (
            "stripe count and list disagree",
            "stripe_count = 1\n\nstripes = [\n\"pv0\", 3",
            "stripe_count = 2\n\nstripes = [\n\"pv0\", 3",
            "stripe_count 2",
        ),
        ("segment gap", "start_extent = 4", "start_extent = 5", "not contiguous"),
    ] {
        let vg = only_vg(scan(edited(&img, from, to)).unwrap_or_else(|e| panic!("{name}: {e}")));
        let bad: Vec<&LogicalVolume> = vg.lvs.iter().filter(|l| l.problem.is_some()).collect();
        assert_eq!(bad.len(), 1, "{name}: {:#?}", vg.lvs);
        let why = bad[0].problem.as_deref().unwrap();
        assert!(why.contains(want), "{name}: {why}");
        match bad[0].device() {
            Err(FsError::Corrupt { what, .. }) => assert!(what.contains(want), "{name}: {what}"),
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
        if bad[0].name != "lin" {
            assert_eq!(read_all(lv(&vg, "lin").device().unwrap().as_ref()), lin, "{name}");
        }
    }

    // Broken labels and headers: the device is a problem, nothing is found.
    let (start, size) = mda_area(&img);
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let mut i = img.clone();
    i[512 + 40] ^= 1; // a byte of the PV uuid: the label checksum
    cases.push(("label checksum", i, "label checksum"));
    let mut i = img.clone();
    i[start + 100] ^= 1; // in the header's unused raw_locns
    cases.push(("header checksum", i, "header checksum"));
    let mut i = img.clone();
    reseal(&mut i, &text, 512);
    i[start + 48..start + 56].copy_from_slice(&(size as u64).to_le_bytes());
    let c = crc(CRC0, &i[start + 4..start + 512]);
    i[start..start + 4].copy_from_slice(&c.to_le_bytes());
    cases.push(("text larger than its area", i, "does not fit the area"));
    let mut i = img.clone();
    // The metadata area's size in the PV header: past the device's end.
    let mut at = 512 + 32 + 40;
    while u64_at(&i, at) != 0 {
        at += 16;
    }
    i[at + 16 + 8..at + 16 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    let c = crc(CRC0, &i[512 + 20..1024]);
    i[512 + 16..512 + 20].copy_from_slice(&c.to_le_bytes());
    cases.push(("metadata area past the device", i, "does not fit the device"));
    for (name, bad, want) in cases {
        let report = lvm::scan_report(&[mem(bad.clone())]);
        assert!(report.volume_groups.is_empty(), "{name}");
        assert_eq!(report.problems.len(), 1, "{name}: {:?}", report.problems);
        let e = scan(bad).unwrap_err();
        assert!(e.to_string().contains(want), "{name}: {e}");
    }

    // Devices without a label are not volume groups, and not problems.
    assert!(lvm::scan(&[mem(vec![0; 100]), mem(vec![0; 4096]), mem(Vec::new())]).unwrap().is_empty());
}

/// The `lvm` fuzz target's body over mutations of a real image and its
/// metadata text, on stable (the real fuzzing runs in scripts/test.sh).
#[test]
fn fuzz_body_smoke() {
    let Some((img, _)) = one_disk_image() else { return };
    let text = committed_text(&img);
    let head = &img[..1 << 20];
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut rnd = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    // Unmutated, both modes find the volume group.
    let mut input = vec![1u8];
    input.extend_from_slice(&text);
    alike_fs::lvm::fuzz_one(&input);
    for _ in 0..3000 {
        let mut t = text.clone();
        for _ in 0..1 + rnd(4) {
            let p = rnd(t.len());
            match rnd(4) {
                0 => t[p] = b"0123456789-{}[]\",= \n"[rnd(20)],
                1 => t.truncate(p),
                2 => t.insert(p, b'9'),
                _ => t[p] ^= 1 << rnd(8),
            }
            if t.is_empty() {
                break;
            }
        }
        let mut input = vec![1u8];
        input.extend_from_slice(&t);
        alike_fs::lvm::fuzz_one(&input);
    }
    for _ in 0..300 {
        let mut i = vec![0u8];
        i.extend_from_slice(head);
        let p = 1 + rnd(8192);
        i[p] ^= 1 << rnd(8);
        alike_fs::lvm::fuzz_one(&i);
    }
}
