//! VHDX/AVHDX against `qemu-img` as the oracle (qemu reads and writes fixed
//! and dynamic VHDX, not differencing), plus an independent minimal decoder
//! of the on-disk structures written here from the MS-VHDX text, a crafted
//! log, corrupt inputs, a 64 GiB sparse disk and a fuzz smoke run.

use std::fs::{File, OpenOptions as FsOpen};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use alike_core::{DiskSource, DiskTarget, RawFileSource};
use alike_formats::vhdx::{self, CreateOptions, VhdxError, VhdxSource, VhdxTarget};
use alike_testing::vhdx_spec as spec;
use alike_testing::{Rng, sha256_file, sparse_image};

const MIB: u64 = 1 << 20;

fn qemu(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A raw image with scattered data, a written first sector and a written tail.
fn pattern_raw(path: &Path, size: u64, seed: u64) {
    sparse_image(path, size, 10, seed);
    let f = FsOpen::new().write(true).open(path).unwrap();
    let mut rng = Rng::new(seed ^ 0xabc);
    let mut head = vec![0u8; 5000.min(size as usize)];
    rng.fill(&mut head);
    f.write_all_at(&head, 0).unwrap();
    let tail = 777.min(size);
    let mut t = vec![0u8; tail as usize];
    rng.fill(&mut t);
    f.write_all_at(&t, size - tail).unwrap();
}

/// Asserts that `src` reads exactly the bytes of the raw file `raw`.
fn assert_reads_like(src: &dyn DiskSource, raw: &Path) {
    let f = File::open(raw).unwrap();
    let size = f.metadata().unwrap().len();
    assert_eq!(src.size(), size, "{}: size", src.label());
    let mut a = vec![0u8; 4 << 20];
    let mut b = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(a.len() as u64) as usize;
        src.read_at(off, &mut a[..n]).unwrap();
        f.read_exact_at(&mut b[..n], off).unwrap();
        if a[..n] != b[..n] {
            let i = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y).unwrap();
            panic!("{}: byte {} differs from {}", src.label(), off + i as u64, raw.display());
        }
        off += n as u64;
    }
}

/// Asserts that every non-zero byte of `raw` lies in `ranges` (sorted, disjoint).
fn assert_covers(ranges: &[Range<u64>], raw: &Path) {
    let f = File::open(raw).unwrap();
    let size = f.metadata().unwrap().len();
    let mut prev = 0;
    let mut gaps = Vec::new();
    for r in ranges {
        assert!(r.start >= prev && r.start < r.end && r.end <= size, "bad ranges {ranges:?}");
        gaps.push(prev..r.start);
        prev = r.end;
    }
    gaps.push(prev..size);
    let mut buf = vec![0u8; 1 << 20];
    for g in gaps {
        let mut off = g.start;
        while off < g.end {
            let n = (g.end - off).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], off).unwrap();
            assert!(buf[..n].iter().all(|b| *b == 0), "non-zero byte in unallocated {g:?} of {}", raw.display());
            off += n as u64;
        }
    }
}

fn total(r: &[Range<u64>]) -> u64 {
    r.iter().map(|r| r.end - r.start).sum()
}

#[test]
fn qemu_images_read_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, u64, u64)] = &[
        ("dynamic", 1, 3 * MIB + 512),
        ("dynamic", 1, 65 * MIB),
        ("dynamic", 8, 3 * MIB + 512),
        ("dynamic", 8, 130 * MIB),
        ("dynamic", 32, 65 * MIB),
        ("dynamic", 32, 130 * MIB),
        ("dynamic", 256, 65 * MIB),
        ("fixed", 1, 3 * MIB + 512),
        ("fixed", 8, 65 * MIB),
        ("fixed", 32, 3 * MIB + 512),
    ];
    for (i, &(sub, bs, size)) in cases.iter().enumerate() {
        let raw = dir.path().join(format!("{i}.raw"));
        let img = dir.path().join(format!("{i}.vhdx"));
        let back = dir.path().join(format!("{i}.back"));
        pattern_raw(&raw, size, i as u64);
        qemu(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "-o",
            &format!("subformat={sub},block_size={bs}M"),
            p(&raw),
            p(&img),
        ]);
        qemu(&["convert", "-f", "vhdx", "-O", "raw", p(&img), p(&back)]);
        let src = VhdxSource::open(&img).unwrap_or_else(|e| panic!("{sub} {bs}M {size}: {e}"));
        let info = &src.layers()[0];
        assert_eq!((info.block_size, info.fixed, info.has_parent), (bs * MIB, sub == "fixed", false));
        assert_reads_like(&src, &back);
        let alloc = src.allocated_ranges().unwrap();
        assert_covers(&alloc, &back);
        // Only blocks that hold data (qemu marks the others ZERO, in fixed
        // files too): the pattern touches 12 extents.
        assert!(total(&alloc) <= 12 * 2 * bs * MIB, "{sub} {bs}M: {alloc:?}");
        // A VHDX with no parent has nothing "since" another token.
        assert_eq!(src.changed_ranges(b"vhdx-dwg:0123456789abcdef").unwrap(), None);
        assert_eq!(src.changed_ranges(&src.change_token().unwrap()).unwrap(), Some(vec![]));
    }
}

/// Writes `raw` into `t` from 3 threads, in shuffled chunks of odd sizes.
fn copy_into(t: &VhdxTarget, raw: &Path, seed: u64) {
    let f = File::open(raw).unwrap();
    let size = f.metadata().unwrap().len();
    let mut chunks = Vec::new();
    let mut rng = Rng::new(seed);
    let mut off = 0;
    while off < size {
        let n = (1 + rng.below(3 * MIB)).min(size - off);
        chunks.push(off..off + n);
        off += n;
    }
    for i in (1..chunks.len()).rev() {
        chunks.swap(i, rng.below(i as u64 + 1) as usize);
    }
    std::thread::scope(|s| {
        for part in chunks.chunks(chunks.len().div_ceil(3)) {
            let f = &f;
            s.spawn(move || {
                for r in part {
                    let mut buf = vec![0u8; (r.end - r.start) as usize];
                    f.read_exact_at(&mut buf, r.start).unwrap();
                    t.write_at(r.start, &buf).unwrap();
                }
            });
        }
    });
}

#[test]
fn writer_output_passes_qemu_check_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    for (i, &(bs, size, lss)) in [
        (1u32, 3 * MIB + 512, 512u32),
        (32, 65 * MIB, 512),
        (8, 130 * MIB, 512),
        (1, 9 * MIB, 4096),
        (2, 33 * MIB, 4096),
    ]
    .iter()
    .enumerate()
    {
        let raw = dir.path().join(format!("w{i}.raw"));
        let img = dir.path().join(format!("w{i}.vhdx"));
        pattern_raw(&raw, size, 100 + i as u64);
        let mut o = CreateOptions::default();
        o.block_size(bs << 20).logical_sector_size(lss);
        let t = VhdxTarget::create(&img, size, &o).unwrap();
        assert!(t.holes_read_as_zero());
        copy_into(&t, &raw, i as u64);
        assert!(!img.exists(), "visible before finish");
        t.finish(size).unwrap();
        drop(t);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| !n.to_string_lossy().contains("alike-partial")), "temp left: {names:?}");
        // qemu reads only 512-byte logical sectors ("Operation not supported"
        // otherwise); 4096-byte ones are checked by our decoder and reader.
        if lss == 512 {
            qemu(&["check", "-f", "vhdx", p(&img)]);
            qemu(&["compare", "-f", "raw", "-F", "vhdx", p(&raw), p(&img)]);
        }
        let parsed = spec::parse(&std::fs::read(&img).unwrap());
        assert!(parsed.required);
        let sector = parsed.meta.iter().find(|m| m.0 == "8141bf1d-a96f-4709-ba47-f233a8faab5f").unwrap();
        assert_eq!(spec::le32(&sector.1, 0), lss);
        let src = VhdxSource::open(&img).unwrap();
        assert_reads_like(&src, &raw);
        assert_covers(&src.allocated_ranges().unwrap(), &raw);
    }
    // Abandoned and mis-finished targets leave nothing behind.
    let img = dir.path().join("abandoned.vhdx");
    {
        let t = VhdxTarget::create(&img, 8 * MIB, &CreateOptions::default()).unwrap();
        t.write_at(0, b"x").unwrap();
        assert!(t.finish(4 * MIB).is_err());
    }
    assert!(!img.exists());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("partial"))
    );
}

/// One write of the chain test: bytes at an offset.
fn apply(expected: &mut [u8], t: &VhdxTarget, off: u64, data: &[u8]) {
    t.write_at(off, data).unwrap();
    expected[off as usize..off as usize + data.len()].copy_from_slice(data);
}

#[test]
fn differencing_chain_of_three_restores_and_tracks_changes() {
    let dir = tempfile::tempdir().unwrap();
    let size = 40 * MIB + 4096;
    let raw = dir.path().join("base.raw");
    pattern_raw(&raw, size, 7);
    let base = dir.path().join("base.vhdx");
    let mut o = CreateOptions::default();
    o.block_size(2 << 20);
    let t = VhdxTarget::create(&base, size, &o).unwrap();
    copy_into(&t, &raw, 1);
    t.finish(size).unwrap();
    qemu(&["check", "-f", "vhdx", p(&base)]);
    qemu(&["compare", "-f", "raw", "-F", "vhdx", p(&raw), p(&base)]);
    let base_token = VhdxSource::open(&base).unwrap().change_token().unwrap();
    let mut expected = std::fs::read(&raw).unwrap();
    let mut rng = Rng::new(99);
    let mut data = |n: usize| {
        let mut v = vec![0u8; n];
        rng.fill(&mut v);
        v
    };

    // Child 1 (in a sub-folder, so relative_path has a "..").
    std::fs::create_dir(dir.path().join("snaps")).unwrap();
    let c1 = dir.path().join("snaps").join("base_1.avhdx");
    let t1 = vhdx::create_differencing(&c1, &base).unwrap();
    assert!(!t1.holes_read_as_zero());
    apply(&mut expected, &t1, 4096, &data(8192)); // partial block, aligned sectors
    apply(&mut expected, &t1, 6 * MIB, &data(2 * MIB as usize)); // a whole block
    apply(&mut expected, &t1, 10 * MIB + 100, &data(1000)); // unaligned: merged with the parent's sectors
    apply(&mut expected, &t1, 12 * MIB + 511, &data(2)); // two partial sectors
    t1.write_zeroes(20 * MIB, 2 * MIB).unwrap(); // a whole block of zeroes: a ZERO block
    expected[20 * MIB as usize..22 * MIB as usize].fill(0);
    apply(&mut expected, &t1, size - 4096, &data(4096)); // the last sector
    t1.finish(size).unwrap();
    let c1_ranges = vec![
        4096..12288,
        6 * MIB..8 * MIB,
        10 * MIB..10 * MIB + 1536,
        12 * MIB..12 * MIB + 1024,
        20 * MIB..22 * MIB,
        size - 4096..size,
    ];

    // Child 2 over child 1, beside it.
    let c2 = dir.path().join("snaps").join("base_2.avhdx");
    let t2 = vhdx::create_differencing(&c2, &c1).unwrap();
    apply(&mut expected, &t2, 4096 + 512, &data(512)); // inside child 1's range
    apply(&mut expected, &t2, 30 * MIB, &data(3 * MIB as usize)); // a block and a half
    apply(&mut expected, &t2, 21 * MIB, &data(4096)); // into child 1's ZERO block
    t2.finish(size).unwrap();
    let c2_ranges = vec![4608..5120, 21 * MIB..21 * MIB + 4096, 30 * MIB..33 * MIB];

    let src = VhdxSource::open(&c2).unwrap();
    let layers = src.layers();
    assert_eq!(layers.len(), 3);
    assert_eq!(layers[2].path.canonicalize().unwrap(), base.canonicalize().unwrap());
    let exp_path = dir.path().join("expected.raw");
    std::fs::write(&exp_path, &expected).unwrap();
    assert_reads_like(&src, &exp_path);
    assert_covers(&src.allocated_ranges().unwrap(), &exp_path);
    assert_eq!(src.child_ranges().unwrap(), c2_ranges);
    let one = VhdxSource::open(&c1).unwrap();
    assert_eq!(one.child_ranges().unwrap(), c1_ranges);
    // Change tracking through the chain.
    let mut both: Vec<_> = c1_ranges.iter().chain(&c2_ranges).cloned().collect();
    both.sort_by_key(|r| r.start);
    let merged = both.into_iter().fold(Vec::<Range<u64>>::new(), |mut v, r| {
        match v.last_mut() {
            Some(l) if l.end >= r.start => l.end = l.end.max(r.end),
            _ => v.push(r),
        }
        v
    });
    assert_eq!(src.changed_ranges(&base_token).unwrap(), Some(merged));
    assert_eq!(src.changed_ranges(&one.change_token().unwrap()).unwrap(), Some(c2_ranges.clone()));
    assert_eq!(src.changed_ranges(&src.change_token().unwrap()).unwrap(), Some(vec![]));
    assert_eq!(src.changed_ranges(b"vhdx-dwg:not-a-known-guid").unwrap(), None);
    assert_eq!(src.changed_ranges(b"something else").unwrap(), None);

    // The children's structures, checked by the independent decoder.
    for (child, parent) in [(&c1, &base), (&c2, &c1)] {
        let f = std::fs::read(child).unwrap();
        let parsed = spec::parse(&f);
        let parent_hdr = spec::parse(&std::fs::read(parent).unwrap()).hdr;
        let fp = parsed.meta.iter().find(|m| m.0 == spec::FILE_PARAMS).unwrap();
        assert_eq!(spec::le32(&fp.1, 4) & 2, 2, "HasParent");
        let loc = parsed.meta.iter().find(|m| m.0 == spec::PARENT_LOCATOR).unwrap();
        assert_eq!(loc.2 & 4, 4, "parent locator is required");
        let kv = spec::locator(&loc.1);
        let get = |k: &str| kv.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("parent_linkage"), format!("{{{}}}", parent_hdr.dwg));
        let rel = get("relative_path");
        assert_eq!(rel, if child == &c1 { "..\\base.vhdx" } else { "base_1.avhdx" });
        assert!(get("absolute_win32_path").ends_with(&parent.file_name().unwrap().to_string_lossy().to_string()));
        assert!(!get("absolute_win32_path").contains('/'));
        // Sector bitmap entries: the chunk holding partial blocks has one (state 6).
        // 2 MiB blocks, 512-byte sectors: chunk ratio 2048, so chunk 0's bitmap entry is index 2048.
        let sb = spec::le64(&f, parsed.bat_off as usize + 8 * 2048);
        assert_eq!(sb & 7, 6, "sector bitmap block present");
    }

    // Relative path wins even when the parent moved along with its children.
    let moved = dir.path().join("moved");
    std::fs::create_dir_all(moved.join("snaps")).unwrap();
    std::fs::rename(&base, moved.join("base.vhdx")).unwrap();
    std::fs::rename(&c1, moved.join("snaps/base_1.avhdx")).unwrap();
    std::fs::rename(&c2, moved.join("snaps/base_2.avhdx")).unwrap();
    let src = VhdxSource::open(moved.join("snaps/base_2.avhdx")).unwrap();
    assert_reads_like(&src, &exp_path);
}

#[test]
fn a_child_rewritten_over_a_new_parent_keeps_its_data_write_guid() {
    // What a replica's merge does: base ← c1 ← c2 becomes base2 ← c1' ← c2,
    // base2 holding base+c1... here base2 holds what base holds and c1' what
    // c1 holds, with c1's DataWriteGuid, so c2 still finds and accepts it.
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let mut o = CreateOptions::default();
    o.block_size(MIB as u32);
    let mut expected = vec![0u8; size as usize];
    let mut rng = Rng::new(5);
    let mut data = |n: usize| rng.noise(n);
    let base = dir.path().join("base.vhdx");
    let t = VhdxTarget::create(&base, size, &o).unwrap();
    apply(&mut expected, &t, 0, &data(3 * MIB as usize));
    t.finish(size).unwrap();
    let c1 = dir.path().join("c1.avhdx");
    let t = vhdx::create_differencing(&c1, &base).unwrap();
    apply(&mut expected, &t, MIB + 1000, &data(70_000));
    t.finish(size).unwrap();
    let c2 = dir.path().join("c2.avhdx");
    let t = vhdx::create_differencing(&c2, &c1).unwrap();
    apply(&mut expected, &t, 5 * MIB, &data(4096));
    t.finish(size).unwrap();
    let exp = dir.path().join("expected.raw");
    std::fs::write(&exp, &expected).unwrap();

    let base2 = dir.path().join("base2.vhdx");
    let t = VhdxTarget::create(&base2, size, &o).unwrap();
    let old_base = VhdxSource::open(&base).unwrap();
    let mut buf = vec![0u8; size as usize];
    old_base.read_exact_at(0, &mut buf).unwrap();
    t.write(0, &buf).unwrap();
    t.finish(size).unwrap();
    let old_c1 = VhdxSource::open(&c1).unwrap();
    let dwg = old_c1.layers()[0].data_write_guid;
    let t = VhdxTarget::create_differencing(&c1, &base2).unwrap().with_data_write_guid(dwg);
    for r in old_c1.child_ranges().unwrap() {
        let mut b = vec![0u8; (r.end - r.start) as usize];
        old_c1.read_exact_at(r.start, &mut b).unwrap();
        t.write(r.start, &b).unwrap();
    }
    t.finish(size).unwrap();
    std::fs::remove_file(&base).unwrap();
    let src = VhdxSource::open(&c2).unwrap();
    let names: Vec<_> = src.layers().iter().map(|l| l.path.file_name().unwrap().to_owned()).collect();
    assert_eq!(names, ["c2.avhdx", "c1.avhdx", "base2.vhdx"]);
    assert_eq!(src.layers()[1].data_write_guid, dwg);
    assert_reads_like(&src, &exp);
    let parsed = spec::parse(&std::fs::read(&c1).unwrap());
    assert_eq!(parsed.hdr.dwg, dwg.to_string());
    let files: Vec<Vec<u8>> = [&c2, &c1, &base2].iter().map(|f| std::fs::read(f).unwrap()).collect();
    let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    assert!(spec::read_chain(&refs) == expected, "the independent decoder reads the chain");
    qemu(&["check", "-f", "vhdx", p(&base2)]);
}

/// A log entry per MS-VHDX 2.3.1: header, descriptors, data sectors.
enum Desc {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

fn log_entry(seq: u64, guid: &[u8; 16], tail: u32, flushed: u64, last: u64, descs: &[Desc]) -> Vec<u8> {
    let desc_sectors = (descs.len() + 2).div_ceil(128);
    let data: Vec<&Vec<u8>> = descs
        .iter()
        .filter_map(|d| match d {
            Desc::Data(_, s) => Some(s),
            Desc::Zero(..) => None,
        })
        .collect();
    let len = (desc_sectors + data.len()) * 4096;
    let mut e = vec![0u8; len];
    e[..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    e[12..16].copy_from_slice(&tail.to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&(descs.len() as u32).to_le_bytes());
    e[32..48].copy_from_slice(guid);
    e[48..56].copy_from_slice(&flushed.to_le_bytes());
    e[56..64].copy_from_slice(&last.to_le_bytes());
    for (i, d) in descs.iter().enumerate() {
        let at = 64 + i * 32;
        match d {
            Desc::Data(off, s) => {
                e[at..at + 4].copy_from_slice(b"desc");
                e[at + 4..at + 8].copy_from_slice(&s[4092..]);
                e[at + 8..at + 16].copy_from_slice(&s[..8]);
                e[at + 16..at + 24].copy_from_slice(&off.to_le_bytes());
            }
            Desc::Zero(off, n) => {
                e[at..at + 4].copy_from_slice(b"zero");
                e[at + 8..at + 16].copy_from_slice(&n.to_le_bytes());
                e[at + 16..at + 24].copy_from_slice(&off.to_le_bytes());
            }
        }
        e[at + 24..at + 32].copy_from_slice(&seq.to_le_bytes());
    }
    for (k, s) in data.iter().enumerate() {
        let at = (desc_sectors + k) * 4096;
        e[at..at + 4].copy_from_slice(b"data");
        e[at + 4..at + 8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
        e[at + 8..at + 4092].copy_from_slice(&s[8..4092]);
        e[at + 4092..at + 4096].copy_from_slice(&(seq as u32).to_le_bytes());
    }
    spec::reseal(&mut e, 4);
    e
}

/// Sets LogGuid in both headers (re-sealed).
fn set_log_guid(f: &File, guid: &[u8; 16]) {
    for at in [65536u64, 131072] {
        let mut h = vec![0u8; 4096];
        f.read_exact_at(&mut h, at).unwrap();
        h[48..64].copy_from_slice(guid);
        spec::reseal(&mut h, 4);
        f.write_all_at(&h, at).unwrap();
    }
}

#[test]
fn log_is_replayed_in_memory_like_qemu_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("l.raw");
    let size = 12 * MIB;
    let f = File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng::new(5);
    let mut d = vec![0u8; 3 * MIB as usize];
    rng.fill(&mut d);
    f.write_all_at(&d, 0).unwrap(); // blocks 0-2 present, the rest ZERO
    drop(f);
    let img = dir.path().join("l.vhdx");
    qemu(&["convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M", p(&raw), p(&img)]);
    let bytes = std::fs::read(&img).unwrap();
    let parsed = spec::parse(&bytes);
    let bat = parsed.bat_off;
    // 1 MiB blocks, 512-byte sectors: chunk ratio 4096, so payload entry i is at index i.
    let e1 = spec::le64(&bytes, bat as usize + 8);
    assert_eq!(e1 & 7, 6, "block 1 present");
    let block1 = e1 & !0xfffff;
    // Entry 1: new data in block 1's sector 2, and zeroes over its sectors 4-5.
    let mut sector = vec![0u8; 4096];
    rng.fill(&mut sector);
    // Entry 2: the BAT's first sector with block 7 aliased to block 1's data.
    let mut bat_sector = bytes[bat as usize..bat as usize + 4096].to_vec();
    bat_sector[7 * 8..8 * 8].copy_from_slice(&(block1 | 6).to_le_bytes());
    let guid: [u8; 16] = *b"alike-log-guid-1";
    let flen = bytes.len() as u64;
    let e1 = log_entry(
        10,
        &guid,
        0,
        flen,
        flen,
        &[Desc::Data(block1 + 8192, sector.clone()), Desc::Zero(block1 + 16384, 8192)],
    );
    let e2 = log_entry(11, &guid, 0, flen, flen, &[Desc::Data(bat, bat_sector)]);
    let f = FsOpen::new().read(true).write(true).open(&img).unwrap();
    f.write_all_at(&e1, parsed.hdr.log_off).unwrap();
    f.write_all_at(&e2, parsed.hdr.log_off + e1.len() as u64).unwrap();
    set_log_guid(&f, &guid);
    drop(f);
    let before = sha256_file(&img);

    let src = VhdxSource::open(&img).unwrap();
    assert_eq!(src.layers()[0].log_entries_replayed, 2);
    let mut expected = std::fs::read(&raw).unwrap();
    let b1 = MIB as usize;
    expected[b1 + 8192..b1 + 12288].copy_from_slice(&sector);
    expected[b1 + 16384..b1 + 24576].fill(0);
    let block1_data = expected[b1..2 * b1].to_vec();
    expected[7 * b1..8 * b1].copy_from_slice(&block1_data);
    let exp = dir.path().join("l.expected");
    std::fs::write(&exp, &expected).unwrap();
    assert_reads_like(&src, &exp);
    assert!(src.allocated_ranges().unwrap().contains(&(7 * MIB..8 * MIB)));
    drop(src);
    assert_eq!(sha256_file(&img), before, "the file was modified");

    // qemu replays the same log into a copy (check -r all): same bytes.
    let copy = dir.path().join("copy.vhdx");
    std::fs::copy(&img, &copy).unwrap();
    qemu(&["check", "-r", "all", "-f", "vhdx", p(&copy)]);
    let back = dir.path().join("copy.raw");
    qemu(&["convert", "-f", "vhdx", "-O", "raw", p(&copy), p(&back)]);
    assert_eq!(sha256_file(&back), sha256_file(&exp), "qemu's replay differs from ours");

    // A log whose FlushedFileOffset is past the end: the file was truncated.
    let f = FsOpen::new().read(true).write(true).open(&img).unwrap();
    let e3 = log_entry(12, &guid, 0, flen + 100 * MIB, flen, &[Desc::Zero(block1, 4096)]);
    f.write_all_at(&e3, parsed.hdr.log_off + (e1.len() + e2.len()) as u64).unwrap();
    drop(f);
    let err = VhdxSource::open(&img).unwrap_err();
    assert!(matches!(err, VhdxError::Log { .. }), "{err}");
    assert!(err.to_string().contains("truncated") && err.to_string().contains("l.vhdx"), "{err}");
}

fn small_image(dir: &Path, name: &str) -> PathBuf {
    let img = dir.join(name);
    let t = VhdxTarget::create(&img, 8 * MIB, CreateOptions::default().block_size(MIB as u32)).unwrap();
    let mut d = vec![0u8; 3 * MIB as usize];
    Rng::new(3).fill(&mut d);
    t.write_at(MIB / 2, &d).unwrap();
    t.finish(8 * MIB).unwrap();
    img
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    FsOpen::new().write(true).open(path).unwrap().write_all_at(bytes, at).unwrap();
}

fn reseal_at(path: &Path, at: u64, len: usize) {
    let f = FsOpen::new().read(true).write(true).open(path).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, at).unwrap();
    spec::reseal(&mut b, 4);
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn bad_inputs_give_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let err = |p: &Path| VhdxSource::open(p).unwrap_err();

    let a = small_image(d, "crc.vhdx");
    patch(&a, 65536 + 200, &[1]);
    patch(&a, 131072 + 200, &[1]);
    let e = err(&a);
    assert!(matches!(e, VhdxError::NoValidHeader { .. }) && e.to_string().contains("CRC-32C"), "{e}");
    assert!(e.to_string().contains("crc.vhdx"));

    let a = small_image(d, "one-header.vhdx");
    patch(&a, 65536 + 200, &[1]);
    VhdxSource::open(&a).expect("one valid header is enough");

    let a = small_image(d, "regions.vhdx");
    patch(&a, 196608 + 1000, &[1]);
    patch(&a, 262144 + 1000, &[1]);
    let e = err(&a);
    assert!(matches!(e, VhdxError::Checksum { what: "region table 1", offset: 196608, .. }), "{e}");

    let a = small_image(d, "unknown-region.vhdx");
    for at in [196608u64, 262144] {
        let mut entry = [0u8; 32];
        entry[..16].copy_from_slice(b"0123456789abcdef");
        entry[16..24].copy_from_slice(&(5 * MIB).to_le_bytes());
        entry[24..28].copy_from_slice(&(MIB as u32).to_le_bytes());
        entry[28] = 1;
        patch(&a, at + 16 + 2 * 32, &entry);
        patch(&a, at + 8, &3u32.to_le_bytes());
        reseal_at(&a, at, 65536);
    }
    let e = err(&a);
    assert!(matches!(e, VhdxError::UnknownRequiredRegion { .. }), "{e}");

    // Our writer: metadata at 2 MiB, table entries from byte 32; add a sixth, required.
    let a = small_image(d, "unknown-meta.vhdx");
    let mut entry = [0u8; 32];
    entry[..16].copy_from_slice(b"fedcba9876543210");
    entry[24] = 4;
    patch(&a, 2 * MIB + 32 + 5 * 32, &entry);
    patch(&a, 2 * MIB + 10, &6u16.to_le_bytes());
    let e = err(&a);
    assert!(matches!(e, VhdxError::UnknownRequiredMetadata { .. }), "{e}");
    assert!(e.to_string().contains("63646566"), "{e}"); // data1 of the GUID ("fedc" little-endian), as text

    let a = small_image(d, "blocksize.vhdx");
    patch(&a, 2 * MIB + 65536, &(3 * MIB as u32).to_le_bytes());
    assert!(matches!(err(&a), VhdxError::BlockSizeNotAllowed { block_size, .. } if block_size == 3 * MIB));

    let a = small_image(d, "bat-past-eof.vhdx");
    patch(&a, 3 * MIB + 8, &((900 * MIB) | 6).to_le_bytes());
    let e = err(&a);
    assert!(matches!(e, VhdxError::BatEntryPastEof { index: 1, file_offset, .. } if file_offset == 900 * MIB), "{e}");

    let a = small_image(d, "truncated.vhdx");
    let len = std::fs::metadata(&a).unwrap().len();
    FsOpen::new().write(true).open(&a).unwrap().set_len(len - MIB - 4096).unwrap();
    assert!(matches!(err(&a), VhdxError::BatEntryPastEof { .. }));
    FsOpen::new().write(true).open(&a).unwrap().set_len(200 * 1024).unwrap();
    let e = err(&a);
    assert!(matches!(e, VhdxError::Malformed { .. }), "{e}");
    FsOpen::new().write(true).open(&a).unwrap().set_len(100).unwrap();
    assert!(matches!(err(&a), VhdxError::NoValidHeader { .. }));
    std::fs::write(&a, b"not a disk at all").unwrap();
    assert!(matches!(err(&a), VhdxError::NotVhdx { .. }));

    // Parent problems. Names of equal length, so the locator can be patched.
    let base = small_image(d, "aaaa.vhdx");
    let child = d.join("bbbb.vhdx");
    let t = VhdxTarget::create_differencing(&child, &base).unwrap();
    t.write_at(0, &[9u8; 4096]).unwrap();
    t.finish(8 * MIB).unwrap();
    VhdxSource::open(&child).unwrap();
    // Parent modified (a new file, a new DataWriteGuid): linkage mismatch.
    let saved = std::fs::read(&base).unwrap();
    std::fs::remove_file(&base).unwrap();
    small_image(d, "aaaa.vhdx");
    let e = err(&child);
    assert!(matches!(e, VhdxError::ParentLinkageMismatch { .. }), "{e}");
    // Parent gone: every path tried is listed.
    std::fs::remove_file(&base).unwrap();
    let e = err(&child);
    match &e {
        VhdxError::ParentNotFound { tried, .. } => assert!(tried.iter().any(|t| t.ends_with("aaaa.vhdx")), "{e}"),
        _ => panic!("{e}"),
    }
    std::fs::write(&base, &saved).unwrap();
    VhdxSource::open(&child).unwrap();
    // Case-insensitive match, as on Windows.
    std::fs::rename(&base, d.join("AAAA.VHDX")).unwrap();
    VhdxSource::open(&child).unwrap();
    std::fs::rename(d.join("AAAA.VHDX"), &base).unwrap();
    // The child made its own parent: a loop.
    let mut bytes = std::fs::read(&child).unwrap();
    let from: Vec<u8> = "aaaa".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let to: Vec<u8> = "bbbb".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if bytes[i..i + from.len()] == from[..] {
            bytes[i..i + from.len()].copy_from_slice(&to);
        }
        i += 1;
    }
    std::fs::write(&child, &bytes).unwrap();
    let e = err(&child);
    assert!(matches!(e, VhdxError::ParentLoop { .. }), "{e}");
    // Depth limit.
    let c2 = d.join("c2.vhdx");
    let c3 = d.join("c3.vhdx");
    let t = VhdxTarget::create_differencing(&c2, &base).unwrap();
    t.finish(8 * MIB).unwrap();
    let t = VhdxTarget::create_differencing(&c3, &c2).unwrap();
    t.finish(8 * MIB).unwrap();
    let mut o = vhdx::OpenOptions::default();
    o.max_depth(2);
    assert!(matches!(VhdxSource::open_with(&c3, &o).unwrap_err(), VhdxError::ChainTooDeep { limit: 2, .. }));
    assert_eq!(VhdxSource::open(&c3).unwrap().layers().len(), 3);

    // Errors map into alike_core::Error keeping the message.
    let core: alike_core::Error = VhdxError::NotVhdx { file: "x.vhdx".into() }.into();
    assert!(core.to_string().contains("x.vhdx"));
    // Reads past the end are errors, not panics.
    let s = VhdxSource::open(&c3).unwrap();
    assert!(s.read_at(8 * MIB - 1, &mut [0u8; 2]).is_err());
}

#[test]
fn huge_sparse_disk_lists_only_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("huge.vhdx");
    let size = 64u64 << 30;
    let t = VhdxTarget::create(&img, size, &CreateOptions::default()).unwrap();
    let mut rng = Rng::new(11);
    let mut written = Vec::new();
    for i in 0..6u64 {
        let off = ((i * 10 + rng.below(9)) << 30) | (rng.below(1 << 20) * 4);
        let mut d = vec![0u8; 100_000];
        rng.fill(&mut d);
        t.write_at(off, &d).unwrap();
        written.push(off..off + 100_000);
    }
    t.finish(size).unwrap();
    assert!(std::fs::metadata(&img).unwrap().len() < 300 * MIB);
    qemu(&["check", "-f", "vhdx", p(&img)]);
    let s = VhdxSource::open(&img).unwrap();
    let alloc = s.allocated_ranges().unwrap();
    assert!(total(&alloc) <= 12 * 32 * MIB, "{} bytes listed", total(&alloc));
    for w in &written {
        assert!(alloc.iter().any(|a| a.start <= w.start && w.end <= a.end), "{w:?} not in {alloc:?}");
        let mut buf = vec![0u8; 100_000];
        s.read_at(w.start, &mut buf).unwrap();
        assert!(buf.iter().any(|b| *b != 0));
    }
    // qemu's empty 64 GiB dynamic disk lists nothing.
    let q = dir.path().join("q.vhdx");
    qemu(&["create", "-f", "vhdx", p(&q), "64G"]);
    let s = VhdxSource::open(&q).unwrap();
    assert_eq!(s.allocated_ranges().unwrap(), vec![]);
}

#[test]
fn fuzz_smoke_survives_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Compact seeds: a 4 MiB disk, 1 MiB blocks, written by us and by qemu,
    // a differencing child, and an image with a log.
    let base = d.join("seed.vhdx");
    let t = VhdxTarget::create(&base, 4 * MIB, CreateOptions::default().block_size(MIB as u32)).unwrap();
    t.write_at(100, &[7u8; 5000]).unwrap();
    t.write_at(3 * MIB, &[8u8; 4096]).unwrap();
    t.finish(4 * MIB).unwrap();
    let child = d.join("seed.avhdx");
    let t = VhdxTarget::create_differencing(&child, &base).unwrap();
    t.write_at(MIB + 700, &[9u8; 3000]).unwrap();
    t.finish(4 * MIB).unwrap();
    let raw = d.join("q.raw");
    std::fs::write(&raw, vec![5u8; 2 * MIB as usize]).unwrap();
    let q = d.join("q.vhdx");
    qemu(&["convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M", p(&raw), p(&q)]);
    let mut logged = std::fs::read(&base).unwrap();
    let guid = *b"fuzz-seed-log-id";
    let e = log_entry(3, &guid, 0, logged.len() as u64, logged.len() as u64, &[Desc::Zero(5 * MIB, 4096)]);
    logged[MIB as usize..MIB as usize + e.len()].copy_from_slice(&e);
    for at in [65536usize, 131072] {
        logged[at + 48..at + 64].copy_from_slice(&guid);
        spec::reseal(&mut logged[at..at + 4096], 4);
    }
    let logged_path = d.join("logged.vhdx");
    std::fs::write(&logged_path, &logged).unwrap();
    assert_eq!(VhdxSource::open(&logged_path).unwrap().layers()[0].log_entries_replayed, 1);
    let seeds = [std::fs::read(&base).unwrap(), std::fs::read(&child).unwrap(), std::fs::read(&q).unwrap(), logged];
    // `VHDX_FUZZ_SEEDS=fuzz/corpus/vhdx` leaves the seeds there for `cargo fuzz run vhdx`.
    if let Some(out) = std::env::var_os("VHDX_FUZZ_SEEDS") {
        std::fs::create_dir_all(&out).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(Path::new(&out).join(format!("seed-{i}.vhdx")), s).unwrap();
        }
    }
    for s in &seeds {
        let t = std::time::Instant::now();
        vhdx::fuzz_one(s);
        eprintln!("seed of {} bytes: {:?}", s.len(), t.elapsed());
    }
    let hot = [0u64, 65536, 131072, 196608, 262144, MIB, 2 * MIB, 2 * MIB + 65536, 3 * MIB, 4 * MIB, 5 * MIB];
    let mut rng = Rng::new(2024);
    let started = std::time::Instant::now();
    let mut n = 0;
    let mut m = Vec::new();
    while n < 10_000 {
        m.clear();
        m.extend_from_slice(&seeds[rng.below(seeds.len() as u64) as usize]);
        let edits = 1 + rng.below(4);
        for _ in 0..edits {
            let len = m.len() as u64;
            let at = match rng.below(3) {
                0 => rng.below(len),
                _ => (hot[rng.below(hot.len() as u64) as usize] + rng.below(256)).min(len - 1),
            } as usize;
            match rng.below(5) {
                0 => m[at] ^= 1 << rng.below(8),
                1 => m[at] = rng.next_u64() as u8,
                2 => {
                    let n = (len as usize - at).min(8);
                    m[at..at + n].copy_from_slice(&rng.next_u64().to_le_bytes()[..n]);
                }
                3 => m.truncate(at.max(1)),
                _ => m[at] = 0xff,
            }
        }
        // Half the time keep the checksums valid so the mutation reaches deeper.
        if rng.below(2) == 0 && m.len() > 262144 + 65536 {
            for at in [65536usize, 131072] {
                spec::reseal(&mut m[at..at + 4096], 4);
            }
            for at in [196608usize, 262144] {
                spec::reseal(&mut m[at..at + 65536], 4);
            }
        }
        vhdx::fuzz_one(&m);
        n += 1;
    }
    eprintln!("fuzz smoke: {n} inputs in {:?}", started.elapsed());
}

/// Throughput of VhdxSource vs RawFileSource over ~1 GiB, and the 64 GiB
/// sparse case. Release only:
/// `cargo test --release -p alike-hyperv --test vhdx_qemu -- --ignored --nocapture`
#[test]
#[ignore]
#[allow(clippy::single_range_in_vec_init)]
fn bench_read_throughput() {
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into())).unwrap();
    let raw = dir.path().join("b.raw");
    let size = 1u64 << 30;
    {
        let f = File::create(&raw).unwrap();
        let mut rng = Rng::new(1);
        let mut buf = vec![0u8; 16 << 20];
        for i in 0..size / buf.len() as u64 {
            rng.fill(&mut buf);
            f.write_all_at(&buf, i * buf.len() as u64).unwrap();
        }
    }
    let img = dir.path().join("b.vhdx");
    qemu(&["convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic,block_size=32M", p(&raw), p(&img)]);
    let read_all = |s: &dyn DiskSource, ranges: &[Range<u64>], threads: usize| -> (u64, f64) {
        let mut pieces = Vec::new();
        for r in ranges {
            let mut o = r.start;
            while o < r.end {
                let n = (r.end - o).min(16 << 20);
                pieces.push(o..o + n);
                o += n;
            }
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let t = std::time::Instant::now();
        std::thread::scope(|sc| {
            for _ in 0..threads {
                sc.spawn(|| {
                    let mut buf = vec![0u8; 16 << 20];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(r) = pieces.get(i) else { break };
                        s.read_at(r.start, &mut buf[..(r.end - r.start) as usize]).unwrap();
                    }
                });
            }
        });
        (total(ranges), t.elapsed().as_secs_f64())
    };
    let v = VhdxSource::open(&img).unwrap();
    let r = RawFileSource::open(&raw).unwrap();
    // Warm the page cache for both, then take the best of three rounds each.
    read_all(&v, &[0..size], 4);
    read_all(&r, &[0..size], 4);
    for threads in [1, 4] {
        let (mut best_v, mut best_r) = (0f64, 0f64);
        for _ in 0..3 {
            let (b, s) = read_all(&v, &[0..size], threads);
            best_v = best_v.max(b as f64 / s / 1048576.0);
            let (b, s) = read_all(&r, &[0..size], threads);
            best_r = best_r.max(b as f64 / s / 1048576.0);
        }
        eprintln!(
            "{threads} thread(s), 16 MiB reads of 1 GiB: VhdxSource {best_v:.0} MiB/s, RawFileSource {best_r:.0} MiB/s"
        );
    }
    // 64 GiB dynamic with 1 GiB written (32 extents of 32 MiB).
    let huge = dir.path().join("huge.vhdx");
    let t = VhdxTarget::create(&huge, 64 << 30, &CreateOptions::default()).unwrap();
    let mut buf = vec![0u8; 32 << 20];
    let f = File::open(&raw).unwrap();
    for i in 0..32u64 {
        f.read_exact_at(&mut buf, i * (32 << 20)).unwrap();
        t.write_at(i * (2 << 30), &buf).unwrap();
    }
    t.finish(64 << 30).unwrap();
    let t0 = std::time::Instant::now();
    let v = VhdxSource::open(&huge).unwrap();
    let alloc = v.allocated_ranges().unwrap();
    let list = t0.elapsed();
    let (b, s) = read_all(&v, &alloc, 4);
    let (b2, s2) = read_all(&r, &[0..size], 4);
    eprintln!(
        "64 GiB vhdx: open+list {list:?} ({} ranges, {} MiB), read {:.2}s ({:.0} MiB/s); raw 1 GiB read {:.2}s ({:.0} MiB/s)",
        alloc.len(),
        b >> 20,
        s,
        b as f64 / s / 1048576.0,
        s2,
        b2 as f64 / s2 / 1048576.0
    );
}
