//! Damaged and hostile images: truncated, randomly corrupted, with loops in
//! cluster chains and directory indexes, and with absurd sizes. Each must
//! end in errors (or in what can still be read), within a time limit, and
//! without a panic; the walk is the fuzz targets' body.

use std::sync::Arc;

use alike_fs::fuzz::{MemDevice, walk};
use alike_fs::{BlockDevice, FileKind, FileSystem, FsError};
use alike_testing::Rng;

use crate::common::within;

type Open = fn(Arc<dyn BlockDevice>) -> alike_fs::Result<Option<Arc<dyn FileSystem>>>;

fn mem(b: Vec<u8>) -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice(b))
}

/// Opens and walks `img` on a thread; fails on a panic or after 30 s.
fn survive(open: Open, img: Vec<u8>, what: String) {
    within(30, &what.clone(), move || walk(open(mem(img))));
}

/// The image cut short at several lengths.
fn truncate_and_walk(open: Open, img: &[u8], name: &str) {
    for cut in [0usize, 100, 512, 8192, 1 << 16, 1 << 20, img.len() / 2, img.len() - 1] {
        if cut < img.len() {
            survive(open, img[..cut].to_vec(), format!("{name} cut at {cut}"));
        }
    }
}

/// `rounds` rounds of random bytes written over `region`.
fn corrupt_and_walk(open: Open, img: &[u8], region: std::ops::Range<usize>, rounds: u64, name: &str) {
    for seed in 0..rounds {
        let mut rng = Rng::new(seed);
        let mut b = img.to_vec();
        // A few bursts of noise, and many single flipped bytes.
        for _ in 0..1 + rng.below(4) {
            let at = region.start + rng.below((region.end - region.start) as u64) as usize;
            let n = (1 + rng.below(64) as usize).min(region.end - at);
            rng.fill(&mut b[at..at + n]);
        }
        for _ in 0..rng.below(200) {
            let at = region.start + rng.below((region.end - region.start) as u64) as usize;
            b[at] ^= 1 << rng.below(8);
        }
        survive(open, b, format!("{name} corrupted with seed {seed}"));
    }
}

#[test]
fn ntfs_damaged_images_end_in_errors_not_hangs() {
    let Some(fx) = crate::ntfs::fixture() else { return };
    let img = std::fs::read(&fx.img).unwrap();
    let (_, mft, record) = crate::ntfs::geometry(&img);
    let open: Open = alike_fs::ntfs::open;
    // The first 128 MFT records: metafiles, and every file the fixture made.
    let region = mft as usize..(mft + 128 * record) as usize;
    truncate_and_walk(open, &img, "NTFS");
    corrupt_and_walk(open, &img, region, 30, "NTFS");

    // Index nodes (INDX records): noise inside them.
    let indx: Vec<usize> = (0..img.len()).step_by(4096).filter(|&o| &img[o..o + 4] == b"INDX").collect();
    assert!(!indx.is_empty(), "the fixture has index nodes");
    for (i, &at) in indx.iter().enumerate().take(8) {
        corrupt_and_walk(open, &img, at..at + 4096, 3, &format!("NTFS INDX #{i}"));
    }
}

#[test]
fn ntfs_index_loop_and_absurd_size() {
    let Some(fx) = crate::ntfs::fixture() else { return };
    let mut img = std::fs::read(&fx.img).unwrap();
    let orig = img.clone();
    let fs = alike_fs::ntfs::open(mem(img.clone())).unwrap().unwrap();
    let root = fs.read_dir(fs.root()).unwrap();
    let id = |name: &str| root.iter().find(|e| e.name == name.as_bytes()).unwrap().meta.id;
    let many = id("many");
    let big = id("cp-big");
    drop(fs);

    // Every entry of every node of "many" points down to the node itself: a
    // loop in the B-tree.
    let mut looped = 0;
    for at in (0..img.len()).step_by(4096) {
        if &img[at..at + 4] != b"INDX" {
            continue;
        }
        let vcn = img[at + 0x10..at + 0x18].to_vec();
        let entries = at + 0x18 + u32::from_le_bytes(img[at + 0x18..at + 0x1c].try_into().unwrap()) as usize;
        let end = at + 0x18 + u32::from_le_bytes(img[at + 0x1c..at + 0x20].try_into().unwrap()) as usize;
        let mut e = entries;
        while e + 16 <= end {
            let len = u16::from_le_bytes([img[e + 8], img[e + 9]]) as usize;
            if len < 24 {
                break;
            }
            let tail = e + len - 8;
            // Leave the bytes the fixups own alone.
            if (tail..tail + 8).all(|p| p % 512 < 510) && (e + 12) % 512 < 510 {
                img[e + 12] |= 1;
                img[tail..tail + 8].copy_from_slice(&vcn);
                looped += 1;
            }
            e += len;
        }
    }
    assert!(looped > 0);
    let b = img.clone();
    let r = within(30, "listing a looped index", move || {
        let fs = alike_fs::ntfs::open(mem(b)).unwrap().unwrap();
        fs.read_dir(many).map(|v| v.len())
    });
    // Each node is listed once: no more entries than the directory has.
    if let Ok(n) = r {
        assert!(n <= 300, "{n} entries from a 300-entry directory");
    }

    // A damaged MFT record (its signature gone): the file is still listed,
    // from the directory index, marked unreadable; the others read.
    let mut b = orig.clone();
    let (_, mft, record) = crate::ntfs::geometry(&b);
    let at = (mft + big.0 * record) as usize;
    b[at..at + 4].copy_from_slice(b"BAAD");
    let fs = alike_fs::ntfs::open(mem(b)).unwrap().unwrap();
    let root = fs.read_dir(fs.root()).unwrap();
    let m = &root.iter().find(|e| e.name == b"cp-big").unwrap().meta;
    assert_eq!((m.kind, m.size), (FileKind::File, (1 << 20) + 1), "from the index's copy of its name record");
    assert!(m.unreadable.as_deref().unwrap().contains(&format!("MFT record {}", big.0)), "{:?}", m.unreadable);
    let mut buf = vec![0u8; 4096];
    assert!(matches!(fs.read_at(big, 0, &mut buf), Err(FsError::Corrupt { .. })));
    let small = root.iter().find(|e| e.name == b"cp-small").unwrap().meta.clone();
    assert_eq!(fs.read_at(small.id, 0, &mut buf).unwrap(), 4095);

    // A data size of 2^62 for a file with 1 MiB of clusters.
    let at = crate::ntfs::attribute_at(&img, big.0, 0x80);
    img[at + 0x30..at + 0x38].copy_from_slice(&(1u64 << 62).to_le_bytes());
    img[at + 0x38..at + 0x40].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let fs = alike_fs::ntfs::open(mem(img)).unwrap().unwrap();
    let m = fs.metadata(big).unwrap();
    assert_eq!(m.size, 1 << 62);
    assert!(fs.read_at(big, 0, &mut buf).is_ok(), "its first bytes are there");
    match fs.read_at(big, 1 << 61, &mut buf) {
        Err(FsError::Corrupt { what, .. }) => assert!(what.contains("cp-big"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert!(fs.data_ranges(big).unwrap().iter().all(|r| r.end <= 2 << 20));
}

#[test]
fn fat_damaged_images_end_in_errors_not_hangs() {
    for (bits, mib) in [(12, 4u64), (16, 32), (32, 64)] {
        let Some(fx) = crate::fat::fixture(bits, mib, 1 << 20) else { return };
        let img = std::fs::read(&fx.img).unwrap();
        // Boot sector, FATs, root directory and the first data clusters.
        truncate_and_walk(alike_fs::fat::open, &img, &format!("FAT{bits}"));
        corrupt_and_walk(alike_fs::fat::open, &img, 0..(1 << 20).min(img.len()), 40, &format!("FAT{bits}"));
    }
}

#[test]
fn fat_chain_loops_and_absurd_sizes_are_errors() {
    let Some(fx) = crate::fat::fixture(32, 64, 4 << 20) else { return };
    let img = std::fs::read(&fx.img).unwrap();
    let le16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let fat_start = le16(&img, 14) * le16(&img, 11);
    let fs = alike_fs::fat::open(mem(img.clone())).unwrap().unwrap();
    let root = fs.read_dir(fs.root()).unwrap();
    let entry = |name: &str| root.iter().find(|e| e.name == name.as_bytes()).unwrap().meta.clone();
    let file = entry("mib1.bin");
    let dir = entry("many");
    drop(fs);
    let first_cluster = |b: &[u8], id: u64| {
        let e = id as usize;
        (le16(b, e + 20) << 16) | le16(b, e + 26)
    };

    // A file whose chain comes back to its first cluster after three.
    let mut b = img.clone();
    let c = first_cluster(&b, file.id.0);
    let third = c + 2;
    b[fat_start + 4 * third..fat_start + 4 * third + 4].copy_from_slice(&(c as u32).to_le_bytes());
    let r = within(30, "reading a looped file", move || {
        let fs = alike_fs::fat::open(mem(b)).unwrap().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        fs.read_at(file.id, 0, &mut buf)
    });
    match r {
        Err(FsError::Corrupt { what, .. }) => assert!(what.contains("loop"), "{what}"),
        other => panic!("{other:?}"),
    }

    // A directory whose only cluster points at itself.
    let mut b = img.clone();
    let c = first_cluster(&b, dir.id.0);
    b[fat_start + 4 * c..fat_start + 4 * c + 4].copy_from_slice(&(c as u32).to_le_bytes());
    let r = within(30, "listing a looped directory", move || {
        let fs = alike_fs::fat::open(mem(b)).unwrap().unwrap();
        fs.read_dir(dir.id).map(|v| v.len())
    });
    assert!(matches!(r, Err(FsError::Corrupt { .. })), "{r:?}");

    // A 4 GiB - 1 file size with a 1 MiB chain: the start reads, the end is an error.
    let mut b = img.clone();
    let e = file.id.0 as usize;
    b[e + 28..e + 32].copy_from_slice(&u32::MAX.to_le_bytes());
    let fs = alike_fs::fat::open(mem(b)).unwrap().unwrap();
    assert_eq!(fs.metadata(file.id).unwrap().size, u64::from(u32::MAX));
    let mut buf = vec![0u8; 4096];
    assert_eq!(fs.read_at(file.id, 0, &mut buf).unwrap(), 4096);
    assert!(matches!(fs.read_at(file.id, 1 << 30, &mut buf), Err(FsError::Corrupt { .. })));

    // A subdirectory whose cluster is the root's: a cycle of directories.
    // Listing terminates; the ids repeat, which is how a walker sees the cycle.
    let mut b = img.clone();
    let root_cluster = u32::from_le_bytes(b[44..48].try_into().unwrap()) as usize;
    let e = dir.id.0 as usize;
    b[e + 20..e + 22].copy_from_slice(&((root_cluster >> 16) as u16).to_le_bytes());
    b[e + 26..e + 28].copy_from_slice(&(root_cluster as u16).to_le_bytes());
    let fs = alike_fs::fat::open(mem(b)).unwrap().unwrap();
    let inner = fs.read_dir(dir.id).unwrap();
    let names: Vec<_> = inner.iter().map(|x| String::from_utf8_lossy(&x.name).into_owned()).collect();
    let again = inner.iter().find(|x| x.name == b"many").unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(again.meta.id, dir.id);
    assert_eq!(again.meta.kind, FileKind::Dir);
}

/// Small images for the `ntfs` and `fat` fuzz targets: with
/// `FS_FUZZ_SEEDS=DIR` they are written to DIR/ntfs and DIR/fat (what
/// scripts/test.sh does before its fuzz step); without, the walk runs on
/// each, as a check that the seeds are worth fuzzing from.
#[test]
fn fuzz_seeds() {
    let Some(seeds) = seeds() else { return };
    let out = std::env::var_os("FS_FUZZ_SEEDS").map(std::path::PathBuf::from);
    for (target, name, bytes) in seeds {
        let open: Open = if target == "ntfs" { alike_fs::ntfs::open } else { alike_fs::fat::open };
        let fs = open(mem(bytes.clone())).unwrap().unwrap_or_else(|| panic!("{name} opens"));
        assert!(!fs.read_dir(fs.root()).unwrap().is_empty(), "{name} has files");
        if let Some(dir) = &out {
            let d = dir.join(target);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), bytes).unwrap();
        }
    }
}

fn seeds() -> Option<Vec<(&'static str, String, Vec<u8>)>> {
    use std::process::Command;
    if !crate::ntfs::can_build() || !alike_testing::require_tool("mcopy") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/make-seeds.sh");
    crate::common::run(Command::new("bash").arg(script).arg(dir.path()));
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let target = if name.starts_with("ntfs") { "ntfs" } else { "fat" };
        out.push((target, name, std::fs::read(&p).unwrap()));
    }
    out.sort();
    Some(out)
}

/// A device whose reads fail in one byte range: a block the store could
/// not deliver.
struct Damaged {
    inner: Vec<u8>,
    bad: std::ops::Range<u64>,
}

impl BlockDevice for Damaged {
    fn size(&self) -> u64 {
        self.inner.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> alike_fs::Result<()> {
        let end = offset + buf.len() as u64;
        if offset < self.bad.end && end > self.bad.start {
            return Err(FsError::Device {
                device: "test".into(),
                offset,
                len: buf.len() as u64,
                message: "damaged block".into(),
            });
        }
        let src = self.inner.get(offset as usize..end as usize).ok_or(FsError::OutOfRange {
            device: "test".into(),
            offset,
            len: buf.len() as u64,
            size: self.size(),
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[test]
fn ntfs_a_damaged_block_fails_only_the_file_it_holds() {
    let Some(fx) = crate::ntfs::fixture() else { return };
    let img = std::fs::read(&fx.img).unwrap();
    let fs = alike_fs::ntfs::open(mem(img.clone())).unwrap().unwrap();
    let comp = fs.read_dir(fs.root()).unwrap().into_iter().find(|e| e.name == b"comp").unwrap().meta.id;
    let entries = fs.read_dir(comp).unwrap();
    let id = |name: &str| entries.iter().find(|e| e.name == name.as_bytes()).unwrap().meta.id;
    let (big, tiny) = (id("text16m"), id("tiny"));
    drop(fs);
    // text16m's attribute list is non-resident (make-ntfs.sh checks it has
    // one; ntfs-3g writes it to a cluster): its first run's cluster.
    let (cluster, _, _) = crate::ntfs::geometry(&img);
    let a = crate::ntfs::attribute_at(&img, big.0, 0x20);
    assert_ne!(img[a + 8], 0, "the attribute list is non-resident");
    let runs = a + u16::from_le_bytes([img[a + 0x20], img[a + 0x21]]) as usize;
    let h = img[runs];
    let (len_bytes, off_bytes) = ((h & 0x0f) as usize, (h >> 4) as usize);
    let mut lcn = [0u8; 8];
    lcn[..off_bytes].copy_from_slice(&img[runs + 1 + len_bytes..runs + 1 + len_bytes + off_bytes]);
    let pos = u64::from_le_bytes(lcn) * cluster;

    let dev: Arc<dyn BlockDevice> = Arc::new(Damaged { inner: img, bad: pos..pos + 512 });
    let fs = within(30, "opening with a damaged block", move || alike_fs::ntfs::open(dev).unwrap().unwrap());
    let entries = fs.read_dir(comp).unwrap();
    let m = &entries.iter().find(|e| e.name == b"text16m").unwrap().meta;
    assert!(m.unreadable.as_deref().unwrap().contains("damaged block"), "{:?}", m.unreadable);
    let mut buf = vec![0u8; 64];
    assert!(matches!(fs.read_at(big, 0, &mut buf), Err(FsError::Device { .. })));
    assert_eq!(fs.read_at(tiny, 0, &mut buf).unwrap(), 10);
}
