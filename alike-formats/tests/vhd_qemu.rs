//! The VHD reader and writers against `qemu-img` (the oracle): qemu-made
//! fixed and dynamic images read byte-exact, our images read byte-exact by
//! qemu, differencing chains, the streaming reader, and damaged inputs.
//!
//! qemu cannot make differencing VHDs (`-b` is "not supported for file
//! format 'vpc'") and has no `check` for vpc, so chains are built with our
//! writer and checked with our reader against expected bytes, and written
//! images are checked with `qemu-img info` (size) and `qemu-img compare`.

// Lists of one byte range are meant (`&[0..4096]`), not lists of numbers.
#![allow(clippy::single_range_in_vec_init)]

use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use alike_core::{DiskSource, DiskTarget, MemSource, RawFileSource};
use alike_formats::vhd::{
    DiskType, StreamReader, StreamWriter, VhdError, VhdOptions, VhdSource, VhdTarget, write_differencing, write_stream,
};
use alike_testing::Rng;

const MIB: u64 = 1 << 20;

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A raw image of `size` bytes: scattered random extents, plus data in the
/// first and the last sectors (partial sectors included).
fn raw_image(path: &Path, size: u64, seed: u64) {
    alike_testing::sparse_image(path, size, (size / (4 * MIB)).clamp(3, 24) as usize, seed);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut rng = Rng::new(seed ^ 0xabc);
    let mut b = vec![0u8; 700];
    rng.fill(&mut b);
    f.write_all_at(&b[..300], 5).unwrap();
    f.write_all_at(&b, size - 700).unwrap();
}

/// What qemu reads from an image, as raw bytes.
fn qemu_raw(dir: &Path, image: &Path, fmt: &str) -> Vec<u8> {
    let out = dir.join("qemu-out.raw");
    qemu_img(&["convert", "-f", fmt, "-O", "raw", s(image), s(&out)]);
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    v
}

fn qemu_virtual_size(image: &Path) -> u64 {
    let info = qemu_img(&["info", "-f", "vpc", "--output=json", s(image)]);
    // The image's own size comes after its children's (the file node).
    let at = info.rfind("\"virtual-size\":").expect("virtual-size in qemu-img info");
    info[at + 15..].trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// Every byte of a source, read in 16 MiB batches (as the backup engine does).
fn read_all(src: &dyn DiskSource) -> Vec<u8> {
    let mut v = vec![0u8; src.size() as usize];
    for (i, c) in v.chunks_mut(16 << 20).enumerate() {
        src.read_at(i as u64 * (16 << 20), c).unwrap();
    }
    v
}

/// Every byte outside `ranges` is zero.
fn assert_covers(ranges: &[Range<u64>], data: &[u8], what: &str) {
    let mut pos = 0u64;
    for r in ranges.iter().chain(std::iter::once(&(data.len() as u64..data.len() as u64))) {
        assert!(r.start >= pos && r.end <= data.len() as u64, "{what}: ranges not sorted/disjoint/inside: {r:?}");
        if let Some(i) = data[pos as usize..r.start as usize].iter().position(|&b| b != 0) {
            panic!("{what}: non-zero byte at {} outside the allocated ranges", pos + i as u64);
        }
        pos = r.end;
    }
}

/// A restore as the engine does it: the allocated ranges of `src`, cut in
/// pieces of odd sizes, written in shuffled order from 4 threads.
fn restore(src: &dyn DiskSource, target: &dyn DiskTarget, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut pieces = Vec::new();
    for r in src.allocated_ranges().unwrap() {
        let mut a = r.start;
        while a < r.end {
            let b = (a + 1 + rng.below(3 * MIB)).min(r.end);
            pieces.push(a..b);
            a = b;
        }
    }
    for i in (1..pieces.len()).rev() {
        pieces.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let next = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                let mut buf = Vec::new();
                while let Some(p) = pieces.get(next.fetch_add(1, Ordering::Relaxed)) {
                    buf.resize((p.end - p.start) as usize, 0);
                    src.read_at(p.start, &mut buf).unwrap();
                    target.write_at(p.start, &buf).unwrap();
                }
            });
        }
    });
    target.finish(src.size()).unwrap();
}

/// qemu-made fixed and dynamic images (with and without `force_size`), of
/// sizes that are not multiples of 2 MiB or of a CHS geometry: our reader
/// returns exactly what `qemu-img convert -O raw` returns, from several
/// threads at once, and its allocated ranges cover every non-zero byte.
#[test]
fn reader_matches_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [MIB + 512, 3 * MIB, 33 * MIB, 130 * MIB];
    for (i, &size) in sizes.iter().enumerate() {
        let raw = dir.path().join(format!("src-{i}.raw"));
        raw_image(&raw, size, i as u64);
        for sub in ["fixed", "dynamic"] {
            for force in [false, true] {
                if size == 130 * MIB && !force {
                    continue; // keeps the test fast; the big size is covered with force_size
                }
                let vhd = dir.path().join(format!("q-{i}-{sub}-{force}.vhd"));
                let o = format!("subformat={sub}{}", if force { ",force_size=on" } else { "" });
                qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", &o, s(&raw), s(&vhd)]);
                let want = qemu_raw(dir.path(), &vhd, "vpc");
                let what = format!("{size} bytes {o}");
                let src = VhdSource::open(&vhd).unwrap();
                assert_eq!(src.size(), want.len() as u64, "{what}: size");
                assert_eq!(src.disk_type(), if sub == "fixed" { DiskType::Fixed } else { DiskType::Dynamic });
                assert!(read_all(&src) == want, "{what}: bytes differ from qemu's");
                assert_covers(&src.allocated_ranges().unwrap(), &want, &what);
                // Several threads at odd offsets.
                std::thread::scope(|sc| {
                    for t in 0..3u64 {
                        let (src, want, what) = (&src, &want, &what);
                        sc.spawn(move || {
                            let mut rng = Rng::new(t);
                            for _ in 0..20 {
                                let off = rng.below(want.len() as u64);
                                let len = rng.below(want.len() as u64 - off).min(5 * MIB) as usize;
                                let mut b = vec![0u8; len];
                                src.read_at(off, &mut b).unwrap();
                                assert!(b == want[off as usize..off as usize + len], "{what}: read at {off}+{len}");
                            }
                        });
                    }
                });
                assert!(src.read_at(want.len() as u64 - 10, &mut [0u8; 11]).is_err(), "read past the end");
            }
        }
        std::fs::remove_file(&raw).unwrap();
    }
}

/// Our writers' images, read by qemu: the restore target (dynamic and
/// fixed, written from 4 threads in shuffled odd pieces) and the stream
/// writer (dynamic and fixed) have the right virtual size for qemu and
/// `qemu-img compare` finds them identical to the source.
#[test]
fn writers_match_qemu() {
    let dir = tempfile::tempdir().unwrap();
    for (i, &size) in [MIB + 512, 3 * MIB, 33 * MIB, 130 * MIB].iter().enumerate() {
        let raw = dir.path().join(format!("src-{i}.raw"));
        raw_image(&raw, size, 100 + i as u64);
        let src = RawFileSource::open(&raw).unwrap();
        for fixed in [false, true] {
            if size == 130 * MIB && fixed {
                continue;
            }
            let opts = VhdOptions::default().fixed(fixed);
            let what = format!("{size} bytes fixed={fixed}");
            let t = dir.path().join(format!("t-{i}-{fixed}.vhd"));
            let target = VhdTarget::create(&t, size, &opts).unwrap();
            restore(&src, &target, i as u64);
            drop(target);
            let st = dir.path().join(format!("s-{i}-{fixed}.vhd"));
            let w = StreamWriter::new(&src, &opts).unwrap();
            let mut out = NoSeekWrite(std::fs::File::create(&st).unwrap());
            assert_eq!(w.write_to(&mut out).unwrap(), w.len(), "{what}: stream length");
            drop(out);
            assert_eq!(std::fs::metadata(&st).unwrap().len(), w.len());
            for img in [&t, &st] {
                assert_eq!(qemu_virtual_size(img), size, "{what}: {}", img.display());
                qemu_img(&["compare", "-f", "raw", "-F", "vpc", s(&raw), s(img)]);
                let ours = VhdSource::open(img).unwrap();
                assert_eq!(ours.size(), size);
            }
        }
        std::fs::remove_file(&raw).unwrap();
    }
}

/// A `Write` that is only that (no `Seek`).
struct NoSeekWrite(std::fs::File);

impl io::Write for NoSeekWrite {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A `Read` that is only that, and returns short reads of random sizes.
#[derive(Debug)]
struct NoSeekRead {
    data: Vec<u8>,
    pos: usize,
    rng: Rng,
}

impl NoSeekRead {
    fn new(data: Vec<u8>) -> NoSeekRead {
        NoSeekRead { data, pos: 0, rng: Rng::new(9) }
    }
}

impl Read for NoSeekRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.pos).min(1 + self.rng.below(300_000) as usize);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Applies every extent of a stream over `base`.
fn apply_stream(data: Vec<u8>, base: &mut [u8]) -> StreamReader<NoSeekRead> {
    let mut r = StreamReader::new(NoSeekRead::new(data)).unwrap();
    while let Some(e) = r.next_extent().unwrap() {
        assert_eq!(e.offset % 512, 0);
        base[e.offset as usize..e.offset as usize + e.data.len()].copy_from_slice(&e.data);
    }
    r
}

/// The content of an image after changes: `(ranges changed, new bytes)`.
fn scribbled(base: &[u8], n: usize, seed: u64) -> (Vec<Range<u64>>, Vec<u8>) {
    let mut v = base.to_vec();
    let mut rng = Rng::new(seed);
    let mut ranges = Vec::new();
    for _ in 0..n {
        let len = 1 + rng.below(700_000);
        let off = rng.below(v.len() as u64 - len);
        rng.fill(&mut v[off as usize..(off + len) as usize]);
        ranges.push(off..off + len);
    }
    (ranges, v)
}

fn mem(data: &[u8]) -> MemSource {
    MemSource { label: "mem".into(), data: data.to_vec() }
}

/// A chain of depth 4 (a qemu-made dynamic base and three differencing
/// children of ours, changes at unaligned offsets): the top reads as the
/// latest content, the chain is listed top first, allocated ranges cover
/// it, and a restore of the top into a new VHD compares equal in qemu.
/// Moving the whole chain keeps it readable (relative locators); moving
/// the top alone too (absolute locators).
#[test]
fn differencing_chain_restores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("chain");
    std::fs::create_dir(&d).unwrap();
    let size = 21 * MIB + 512;
    let raw = dir.path().join("base.raw");
    raw_image(&raw, size, 7);
    let base = d.join("base.vhd");
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", s(&raw), s(&base)]);
    let mut content = std::fs::read(&raw).unwrap();
    let mut parent = base.clone();
    for level in 1..=3 {
        let (ranges, next) = scribbled(&content, 5, level);
        let child = d.join(format!("child{level}.vhd"));
        write_differencing(&child, &parent, &mem(&next), &ranges).unwrap();
        let src = VhdSource::open(&child).unwrap();
        assert_eq!(src.disk_type(), DiskType::Differencing);
        assert_eq!(src.chain().len(), level as usize + 1);
        assert_eq!(src.chain()[0], child.as_path());
        assert!(read_all(&src) == next, "level {level}: bytes");
        assert_covers(&src.allocated_ranges().unwrap(), &next, "chain");
        content = next;
        parent = child;
    }
    let top = VhdSource::open(&parent).unwrap();
    let out = dir.path().join("restored.vhd");
    let target = VhdTarget::create(&out, top.size(), &VhdOptions::default()).unwrap();
    restore(&top, &target, 3);
    std::fs::write(&raw, &content).unwrap();
    qemu_img(&["compare", "-f", "raw", "-F", "vpc", s(&raw), s(&out)]);

    // Only the top moved: absolute locators.
    std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
    let lone = dir.path().join("elsewhere/top.vhd");
    std::fs::rename(&parent, &lone).unwrap();
    let src = VhdSource::open(&lone).unwrap();
    assert_eq!(src.chain()[1], d.join("child2.vhd").canonicalize().unwrap().as_path());
    assert!(read_all(&src) == content);
    std::fs::rename(&lone, &parent).unwrap();
    // The whole chain moved: relative locators.
    let moved = dir.path().join("moved");
    std::fs::rename(&d, &moved).unwrap();
    let src = VhdSource::open(moved.join("child3.vhd")).unwrap();
    assert_eq!(src.chain().len(), 4);
    assert!(read_all(&src) == content);
}

/// The streaming reader, over a `Read` that cannot seek and returns short
/// reads, yields the same disk as the positional reader: a qemu-made
/// dynamic image, a fixed one, our stream writer's output, and a
/// differencing image applied over its parent (only its own sectors come).
/// A stream cut short anywhere is an error, never a shorter disk.
#[test]
fn stream_reader_equals_positional() {
    let dir = tempfile::tempdir().unwrap();
    let size = 17 * MIB + 1536;
    let raw = dir.path().join("a.raw");
    raw_image(&raw, size, 21);
    let want = std::fs::read(&raw).unwrap();
    for sub in ["dynamic", "fixed"] {
        let vhd = dir.path().join(format!("{sub}.vhd"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            &format!("subformat={sub},force_size=on"),
            s(&raw),
            s(&vhd),
        ]);
        let mut got = vec![0u8; size as usize];
        let r = apply_stream(std::fs::read(&vhd).unwrap(), &mut got);
        assert_eq!(r.size(), Some(size));
        assert!(got == want, "{sub} stream");
    }
    let mut ours = Vec::new();
    write_stream(&mem(&want), &mut ours, &VhdOptions::default().block_size(1 << 20)).unwrap();
    let mut got = vec![0u8; size as usize];
    apply_stream(ours.clone(), &mut got);
    assert!(got == want, "our stream");

    // Differencing: only the child's sectors, over the parent.
    let parent = dir.path().join("dynamic.vhd");
    let (ranges, next) = scribbled(&want, 4, 5);
    let child = dir.path().join("child.vhd");
    write_differencing(&child, &parent, &mem(&next), &ranges).unwrap();
    let mut got = want.clone();
    let r = apply_stream(std::fs::read(&child).unwrap(), &mut got);
    assert_eq!(r.disk_type(), DiskType::Differencing);
    assert_eq!(r.parent_unique_id(), Some(VhdSource::open(&parent).unwrap().unique_id()));
    assert_eq!(r.parent_name().as_deref(), Some("dynamic.vhd"));
    assert!(got == next, "differencing stream over its parent");

    // Cut short: inside the BAT, inside a block, just before the footer.
    for cut in [1600, 4096 + 700_000, ours.len() - 512, ours.len() - 1] {
        let Ok(mut r) = StreamReader::new(NoSeekRead::new(ours[..cut].to_vec())) else {
            assert!(cut < 4096, "only a cut inside the BAT fails at the start");
            continue;
        };
        let res: Result<Vec<_>, _> = r.by_ref().collect();
        assert!(res.is_err(), "a stream cut at {cut} must fail");
        assert!(r.next().is_none(), "finished after an error");
    }
}

/// `(bytes, path)` of a small dynamic image made by qemu.
fn small_dynamic(dir: &Path, name: &str) -> (Vec<u8>, PathBuf) {
    let raw = dir.join(format!("{name}.raw"));
    raw_image(&raw, 5 * MIB, 3);
    let vhd = dir.join(name);
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", s(&raw), s(&vhd)]);
    (std::fs::read(&vhd).unwrap(), vhd)
}

fn fix_header_checksum(b: &mut [u8]) {
    let sum = b[512..1536].iter().enumerate().filter(|(i, _)| !(36..40).contains(i)).map(|(_, &x)| u32::from(x));
    let c = !sum.fold(0u32, u32::wrapping_add);
    b[548..552].copy_from_slice(&c.to_be_bytes());
}

fn open_bytes(dir: &Path, b: &[u8]) -> Result<VhdSource, VhdError> {
    let p = dir.join("bad.vhd");
    std::fs::write(&p, b).unwrap();
    VhdSource::open(&p)
}

/// Damaged images and broken chains give the named errors, never a panic.
#[test]
fn bad_inputs_give_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (good, good_path) = small_dynamic(d, "good.vhd");
    let n = good.len();

    // Tail footer damaged: the copy at offset 0 is used. Both damaged: a checksum error.
    let mut b = good.clone();
    b[n - 512 + 50] ^= 0x40;
    assert!(open_bytes(d, &b).is_ok(), "head copy should rescue a damaged tail footer");
    b[50] ^= 0x40;
    let e = open_bytes(d, &b).unwrap_err();
    assert!(matches!(e, VhdError::Checksum { what: "footer", .. }), "{e}");
    assert!(e.to_string().contains("bad.vhd"), "error names the file: {e}");

    // Dynamic header: checksum, cookie, block size.
    let mut b = good.clone();
    b[600] ^= 1;
    let e = open_bytes(d, &b).unwrap_err();
    assert!(matches!(e, VhdError::Checksum { what: "dynamic disk header", .. }), "{e}");
    let mut b = good.clone();
    b[512..520].copy_from_slice(b"cxspars!");
    assert!(matches!(open_bytes(d, &b).unwrap_err(), VhdError::BadCookie { .. }));
    let mut b = good.clone();
    b[544..548].copy_from_slice(&(3u32 << 20).to_be_bytes());
    fix_header_checksum(&mut b);
    let e = open_bytes(d, &b).unwrap_err();
    assert!(matches!(e, VhdError::BadBlockSize { block_size: 3_145_728, .. }), "{e}");

    // A BAT entry past the end of the file (qemu's BAT is at 1536).
    let mut b = good.clone();
    b[1536..1540].copy_from_slice(&0x0100_0000u32.to_be_bytes());
    let e = open_bytes(d, &b).unwrap_err();
    assert!(matches!(e, VhdError::BatEntryPastEnd { block: 0, .. }), "{e}");

    // Truncated: the footer copy at 0 is found, then the blocks are missing.
    let e = open_bytes(d, &good[..n / 2]).unwrap_err();
    assert!(matches!(e, VhdError::BatEntryPastEnd { .. } | VhdError::Truncated { .. }), "{e}");
    let e = open_bytes(d, &good[..300]).unwrap_err();
    assert!(matches!(e, VhdError::Truncated { .. }), "{e}");
    // Not a VHD at all.
    let e = open_bytes(d, &vec![7u8; 4096]).unwrap_err();
    assert!(matches!(e, VhdError::BadCookie { what: "footer", .. }), "{e}");

    // Chains: parent missing, replaced, self-referencing, too deep.
    let data = read_all(&VhdSource::open(&good_path).unwrap());
    let child = d.join("child.vhd");
    write_differencing(&child, &good_path, &mem(&data), &[0..4096]).unwrap();
    assert!(VhdSource::open(&child).is_ok());
    let moved = d.join("moved-away.vhd");
    std::fs::rename(&good_path, &moved).unwrap();
    let e = VhdSource::open(&child).unwrap_err();
    match &e {
        VhdError::ParentNotFound { tried, parent_name, .. } => {
            assert_eq!(parent_name, "good.vhd");
            assert!(tried.iter().any(|p| p.ends_with("good.vhd")), "{e}");
        }
        _ => panic!("{e}"),
    }
    let (_, other) = small_dynamic(d, "good.vhd"); // same name, new unique id
    assert_eq!(other, good_path);
    let e = VhdSource::open(&child).unwrap_err();
    assert!(matches!(e, VhdError::ParentUuidMismatch { .. }), "{e}");
    std::fs::copy(&child, &good_path).unwrap(); // "good.vhd" is now a child of "good.vhd"
    let e = VhdSource::open(&good_path).unwrap_err();
    assert!(matches!(e, VhdError::ParentLoop { .. }), "{e}");

    let deep = d.join("deep");
    std::fs::create_dir(&deep).unwrap();
    let small = mem(&[5u8; 8192]);
    let mut parent = deep.join("0.vhd");
    let target = VhdTarget::create(&parent, 8192, &VhdOptions::default().block_size(4096)).unwrap();
    target.finish(8192).unwrap();
    for i in 1..=alike_formats::vhd::MAX_CHAIN_DEPTH {
        let child = deep.join(format!("{i}.vhd"));
        write_differencing(&child, &parent, &small, &[0..512]).unwrap_or_else(|e| panic!("level {i}: {e}"));
        parent = child;
    }
    let e = VhdSource::open(&parent).unwrap_err();
    assert!(matches!(e, VhdError::ChainTooDeep { limit: 64, .. }), "{e}");

    // Streams: a BAT entry pointing backwards (into the headers).
    let mut b = good.clone();
    b[1536..1540].copy_from_slice(&1u32.to_be_bytes());
    let e = StreamReader::new(NoSeekRead::new(b)).unwrap_err();
    assert!(matches!(e, VhdError::BlockOutOfOrder { block: 0, .. }), "{e}");
}

/// The restore target: writes past the end and a second finish are
/// refused; dropped unfinished, it leaves nothing behind.
#[test]
fn target_guards() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.vhd");
    {
        let t = VhdTarget::create(&p, 3 * MIB, &VhdOptions::default()).unwrap();
        t.write_at(MIB, b"hello").unwrap();
        assert!(t.write_at(3 * MIB - 2, b"abc").is_err());
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "partial file left behind");
    let t = VhdTarget::create(&p, 3 * MIB, &VhdOptions::default()).unwrap();
    t.write_at(MIB, b"hello").unwrap();
    t.finish(3 * MIB).unwrap();
    assert!(t.finish(3 * MIB).is_err());
    assert!(t.write_at(0, b"x").is_err());
    let src = VhdSource::open(&p).unwrap();
    let mut b = [0u8; 7];
    src.read_at(MIB - 1, &mut b).unwrap();
    assert_eq!(&b, b"\0hello\0");
    assert_eq!(src.allocated_ranges().unwrap(), vec![0..2 * MIB]);
    assert!(VhdTarget::create(&p, MIB, &VhdOptions::default().block_size(3000)).is_err());
}

/// Read throughput of a ~1 GiB dynamic VHD against the same data as a raw
/// file, both in the page cache, 16 MiB reads from 4 threads. Run with
/// `cargo test --release -p alike-xen --test vhd_qemu -- --ignored --nocapture throughput`.
#[test]
#[ignore = "a measurement, not a check; needs ~2 GiB of disk"]
fn throughput_vs_raw() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("big.raw");
    let size = 1 << 30;
    {
        let f = std::fs::File::create(&raw).unwrap();
        let mut rng = Rng::new(1);
        let mut chunk = vec![0u8; 16 << 20];
        for i in 0..size / chunk.len() as u64 {
            rng.fill(&mut chunk);
            f.write_all_at(&chunk, i * chunk.len() as u64).unwrap();
        }
    }
    let vhd = dir.path().join("big.vhd");
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", s(&raw), s(&vhd)]);
    let time = |src: &dyn DiskSource| {
        let _ = read_all_parallel(src); // warm the page cache
        let t = std::time::Instant::now();
        let sum = read_all_parallel(src);
        (t.elapsed(), sum)
    };
    let (tr, sr) = time(&RawFileSource::open(&raw).unwrap());
    let (tv, sv) = time(&VhdSource::open(&vhd).unwrap());
    assert_eq!(sr, sv);
    let mbs = |d: std::time::Duration| size as f64 / d.as_secs_f64() / 1e6;
    println!("raw: {:.0} MB/s ({tr:?}); vhd: {:.0} MB/s ({tv:?})", mbs(tr), mbs(tv));
}

fn read_all_parallel(src: &dyn DiskSource) -> u64 {
    let batches = src.size().div_ceil(16 << 20);
    let next = std::sync::atomic::AtomicU64::new(0);
    let total = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                let mut buf = vec![0u8; 16 << 20];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= batches {
                        break;
                    }
                    let off = i * (16 << 20);
                    let n = (src.size() - off).min(16 << 20) as usize;
                    src.read_at(off, &mut buf[..n]).unwrap();
                    let x = buf[..n].iter().step_by(4096).fold(0u64, |a, &b| a.wrapping_add(u64::from(b)));
                    total.fetch_add(x, Ordering::Relaxed);
                }
            });
        }
    });
    total.into_inner()
}
