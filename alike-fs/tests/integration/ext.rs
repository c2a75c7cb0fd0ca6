//! ext2, ext3 and ext4 images made by mke2fs from a real tree: extracted
//! trees equal the source (data, modes, times, links, holes).

use std::path::Path;

use alike_fs::FileSystem;
use alike_fs::extract::{ExtractOptions, extract, lookup};

use super::util::{allocated, assert_same_tree, build_tree, debugfs_w, dev, mkfs, need, run};

/// Builds the tree, an image of it (`fstype`, `extra` options), extracts
/// the root and compares; returns the filesystem for more checks.
fn roundtrip(
    fstype: &str,
    extra: &[&str],
    want_type: &str,
) -> Option<(tempfile::TempDir, std::sync::Arc<dyn FileSystem>)> {
    if !need(&[&format!("mkfs.{fstype}"), "debugfs"]) {
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, img, out) = (t.path().join("src"), t.path().join("fs.img"), t.path().join("out"));
    build_tree(&src);
    mkfs(fstype, &src, &img, 64, extra);
    let fs = alike_fs::ext::open(dev(&img)).unwrap().expect("an ext filesystem");
    assert_eq!(fs.type_name(), want_type);
    assert!(fs.warnings().is_empty(), "{:?}", fs.warnings());
    let done = extract(fs.as_ref(), &[b"/".as_slice()], &out, &ExtractOptions::default()).unwrap();
    assert!(done.failures.is_empty(), "{:?}", done.failures);
    // lost+found is mke2fs's own; the source has none.
    std::fs::remove_dir(out.join("lost+found")).unwrap();
    assert_same_tree(&src, &out);
    assert_eq!(done.hard_links, 2);
    assert_eq!(done.symlinks, 5);
    // Holes stay holes: 8 MiB with two small pieces of data.
    assert!(allocated(&out.join("sparse.img")) < 1 << 20, "{}", allocated(&out.join("sparse.img")));
    Some((t, fs))
}

#[test]
fn ext4_extracts_bit_exact_with_modes_times_links_and_holes() {
    let Some((_t, fs)) = roundtrip("ext4", &[], "ext4") else { return };
    // Listing through look-up: a hard link's count, a symlink, a directory.
    let f = lookup(fs.as_ref(), b"/nested/a/linked-3").unwrap();
    assert_eq!(f.meta.nlink, 3);
    let l = lookup(fs.as_ref(), b"link-long").unwrap();
    assert_eq!(fs.read_link(l.meta.id).unwrap(), format!("nested/a/b/{}/../mid.bin", "x".repeat(80)).as_bytes());
    let ranges = fs.data_ranges(lookup(fs.as_ref(), b"/sparse.img").unwrap().meta.id).unwrap();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(ranges[0].start <= 1 << 20 && ranges[1].end == 8 << 20);
    // A path through a symlink is not followed.
    let e = lookup(fs.as_ref(), b"/link-to-dir/b").unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    assert!(matches!(lookup(fs.as_ref(), b"/nope"), Err(alike_fs::FsError::NotFound(_))));
}

#[test]
fn ext4_without_64bit_or_checksums_with_1k_blocks() {
    roundtrip("ext4", &["-O", "^64bit,^metadata_csum", "-b", "1024"], "ext4");
}

#[test]
fn ext3_extracts_bit_exact_through_indirect_blocks() {
    roundtrip("ext3", &[], "ext3");
}

#[test]
fn ext2_with_1k_blocks_reads_double_indirect_blocks() {
    // 3 MiB in 1 KiB blocks needs the double-indirect tree.
    roundtrip("ext2", &["-b", "1024"], "ext2");
}

#[test]
fn ext4_inline_data_files_and_directories() {
    roundtrip("ext4", &["-O", "inline_data", "-I", "256"], "ext4");
}

#[test]
fn htree_directory_of_3000_entries_lists_every_name() {
    if !need(&["mkfs.ext4", "e2fsck", "debugfs"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, img) = (t.path().join("src"), t.path().join("fs.img"));
    std::fs::create_dir_all(src.join("big")).unwrap();
    for i in 0..3000 {
        std::fs::write(src.join(format!("big/file-with-a-longish-name-{i:05}")), format!("{i}\n")).unwrap();
    }
    mkfs("ext4", &src, &img, 64, &[]);
    // e2fsck -D rebuilds directories as hashed trees.
    let fsck = std::process::Command::new(super::util::tool("e2fsck").unwrap())
        .args(["-fyD", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(fsck.status.code().is_some_and(|c| c <= 1), "{fsck:?}");
    let stat = run("debugfs", &["-R", "stat /big", img.to_str().unwrap()]);
    assert!(stat.contains("Flags: 0x81000") || stat.contains("Flags: 0x1000"), "not an htree: {stat}");
    let fs = alike_fs::ext::open(dev(&img)).unwrap().unwrap();
    let big = lookup(fs.as_ref(), b"/big").unwrap();
    let mut names: Vec<String> =
        fs.read_dir(big.meta.id).unwrap().into_iter().map(|e| String::from_utf8(e.name).unwrap()).collect();
    names.sort();
    let want: Vec<String> = (0..3000).map(|i| format!("file-with-a-longish-name-{i:05}")).collect();
    assert_eq!(names, want);
    let f = lookup(fs.as_ref(), b"/big/file-with-a-longish-name-02999").unwrap();
    let mut b = [0u8; 16];
    let n = fs.read_at(f.meta.id, 0, &mut b).unwrap();
    assert_eq!(&b[..n], b"2999\n");
}

#[test]
fn nanosecond_times_and_post_2038_epoch_bits() {
    if !need(&["mkfs.ext4", "debugfs"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, img) = (t.path().join("src"), t.path().join("fs.img"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    mkfs("ext4", &src, &img, 16, &[]);
    // mtime 2040-01-01 (past 2^31 s: epoch bit 1), 123456789 ns.
    debugfs_w(&img, "sif /f mtime 0x83AA7E80");
    debugfs_w(&img, &format!("sif /f mtime_extra {}", (123_456_789u32 << 2) | 1));
    let fs = alike_fs::ext::open(dev(&img)).unwrap().unwrap();
    let m = lookup(fs.as_ref(), b"/f").unwrap().meta;
    let secs = 2_208_988_800i64; // 0x83AA7E80: negative as i32, + 2^32 by the epoch bit
    assert_eq!(m.mtime, Some(secs * 1_000_000_000 + 123_456_789));
    // debugfs agrees on the date.
    let stat = run("debugfs", &["-R", "stat /f", img.to_str().unwrap()]);
    assert!(stat.contains("2040"), "{stat}");
    let out = t.path().join("out");
    extract(fs.as_ref(), &[b"/f".as_slice()], &out, &ExtractOptions::default()).unwrap();
    let got = std::fs::metadata(out.join("f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((got.mtime(), got.mtime_nsec()), (secs, 123_456_789));
}

/// A transaction written into the journal (debugfs `jw`) and not yet
/// checkpointed, as a crash-consistent snapshot leaves it: the reader
/// sees the journal's copy; e2fsck's replay is the oracle.
#[test]
fn an_unreplayed_journal_is_replayed_in_memory() {
    if !need(&["mkfs.ext4", "debugfs", "e2fsck"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, img) = (t.path().join("src"), t.path().join("fs.img"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("note.txt"), vec![b'o'; 4096]).unwrap();
    mkfs("ext4", &src, &img, 32, &["-b", "4096"]);
    let blocks = run("debugfs", &["-R", "blocks /note.txt", img.to_str().unwrap()]);
    let blk: u64 = blocks.split_whitespace().next().unwrap().parse().unwrap();
    let newer = t.path().join("newer");
    std::fs::write(&newer, vec![b'n'; 4096]).unwrap();
    // debugfs -R takes one request: feed the three through -f.
    let script = t.path().join("script");
    std::fs::write(&script, format!("jo\njw -b {blk} {}\njc\n", newer.display())).unwrap();
    run("debugfs", &["-w", "-f", script.to_str().unwrap(), img.to_str().unwrap()]);
    let raw = std::fs::read(&img).unwrap();
    assert_eq!(raw[(blk * 4096) as usize], b'o', "the block itself is unchanged");
    let fs = alike_fs::ext::open(dev(&img)).unwrap().unwrap();
    assert!(fs.warnings().iter().any(|w| w.contains("replayed")), "{:?}", fs.warnings());
    let f = lookup(fs.as_ref(), b"/note.txt").unwrap();
    let mut b = vec![0u8; 4096];
    fs.read_at(f.meta.id, 0, &mut b).unwrap();
    // The oracle: e2fsck replays the journal into a copy.
    let copy = t.path().join("copy.img");
    std::fs::copy(&img, &copy).unwrap();
    let _ =
        std::process::Command::new(super::util::tool("e2fsck").unwrap()).args(["-fy", copy.to_str().unwrap()]).output();
    let replayed = std::fs::read(&copy).unwrap();
    assert_eq!(b.as_slice(), &replayed[(blk * 4096) as usize..][..4096]);
    assert_eq!(b, vec![b'n'; 4096]);
}

#[test]
fn extraction_refuses_existing_files_unless_forced() {
    if !need(&["mkfs.ext4"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, img, out) = (t.path().join("src"), t.path().join("fs.img"), t.path().join("out"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"new").unwrap();
    mkfs("ext4", &src, &img, 16, &[]);
    let fs = alike_fs::ext::open(dev(&img)).unwrap().unwrap();
    std::fs::create_dir_all(out.join("d")).unwrap();
    std::fs::write(out.join("d/f"), b"old").unwrap();
    let r = extract(fs.as_ref(), &[b"/d".as_slice()], &out, &ExtractOptions::default()).unwrap();
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    assert!(matches!(r.failures[0].error, alike_fs::FsError::Exists { .. }));
    assert_eq!(std::fs::read(out.join("d/f")).unwrap(), b"old");
    let r = extract(fs.as_ref(), &[b"/d".as_slice()], &out, &ExtractOptions::default().force(true)).unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(std::fs::read(out.join("d/f")).unwrap(), b"new");
    // A missing path fails before anything is written.
    let e = extract(
        fs.as_ref(),
        &[b"/d/f".as_slice(), b"/missing".as_slice()],
        &t.path().join("o2"),
        &ExtractOptions::default(),
    );
    assert!(matches!(e, Err(alike_fs::FsError::NotFound(_))));
    assert!(!Path::new(&t.path().join("o2/f")).exists());
}

/// An indirect-mapped (ext2) file whose size claims far more than a
/// triple-indirect tree can map: its data ranges come back at once, not
/// after one block-map call per block (found by the `fs` fuzz target).
#[test]
fn an_indirect_file_claiming_an_absurd_size_maps_at_once() {
    if !need(&["mkfs.ext2", "debugfs"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, img) = (t.path().join("src"), t.path().join("fs.img"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), vec![b'a'; 4096]).unwrap();
    mkfs("ext2", &src, &img, 16, &["-b", "1024"]);
    debugfs_w(&img, "sif /f size 0x7FFFFFFFFFFF");
    let fs = alike_fs::ext::open(dev(&img)).unwrap().unwrap();
    let id = lookup(fs.as_ref(), b"/f").unwrap().meta.id;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fs.data_ranges(id).map(|r| r.iter().map(|x| x.end - x.start).sum::<u64>()));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("data_ranges still running after 20 s");
    assert_eq!(got.unwrap(), 4096, "the 4 KiB written, and nothing past the tree");
}
