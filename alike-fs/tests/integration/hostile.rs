//! A hostile ext4 image: names with `/` and `..`, a symlink out of the
//! target followed by a directory of the same name, a directory loop,
//! absurd sizes, an extent outside the filesystem. Nothing is written
//! outside the target, nothing hangs, each bad entry fails by name.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use alike_fs::FsError;
use alike_fs::extract::{ExtractOptions, ExtractSummary, extract};

use super::util::{debugfs_w, dev, mkfs, need, walk};

/// Replaces the one directory entry `(name_len, file_type, name)` in the
/// image by `new` (same record; `new_len` as its name length).
fn patch_entry(img: &Path, name: &[u8], file_type: u8, new: &[u8], new_len: u8) {
    let mut b = std::fs::read(img).unwrap();
    let mut pat = vec![name.len() as u8, file_type];
    pat.extend_from_slice(name);
    let hits: Vec<usize> =
        b.windows(pat.len()).enumerate().filter(|(_, w)| *w == pat.as_slice()).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "entry {:?} found {} times", String::from_utf8_lossy(name), hits.len());
    let at = hits[0];
    b[at] = new_len;
    b[at + 2..at + 2 + new.len()].copy_from_slice(new);
    std::fs::write(img, b).unwrap();
}

/// Runs `f` on a thread; fails if it takes longer than `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).expect("extraction hung")
}

fn run_extract(img: &Path, out: &Path, force: bool) -> ExtractSummary {
    let (img, out) = (img.to_path_buf(), out.to_path_buf());
    within(120, move || {
        let fs = alike_fs::ext::open(dev(&img)).unwrap().unwrap();
        let opts = ExtractOptions::default().force(force).max_bytes(64 << 20);
        extract(fs.as_ref(), &[b"/".as_slice()], &out, &opts).unwrap()
    })
}

#[test]
fn a_hostile_image_writes_nothing_outside_the_target() {
    if !need(&["mkfs.ext4", "debugfs"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, img, out, outside) =
        (t.path().join("src"), t.path().join("fs.img"), t.path().join("out"), t.path().join("outside"));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(src.join("escx")).unwrap();
    std::fs::write(src.join("escx/pwned"), b"pwned").unwrap();
    std::os::unix::fs::symlink(&outside, src.join("esc")).unwrap();
    std::fs::write(src.join("AAAAAAAAAA"), b"evil").unwrap();
    std::fs::write(src.join("BB"), b"dots").unwrap();
    std::fs::create_dir_all(src.join("loop/sub")).unwrap();
    std::fs::write(src.join("huge"), b"h").unwrap();
    std::fs::create_dir_all(src.join("bigdir")).unwrap();
    std::fs::write(src.join("badext"), vec![1u8; 8192]).unwrap();
    std::fs::write(src.join("fine"), b"fine").unwrap();
    mkfs("ext4", &src, &img, 16, &[]);

    // A directory loop, a size past what ext can map, a 2 GiB directory,
    // an extent past the end of the filesystem.
    debugfs_w(&img, "link /loop /loop/sub/back");
    debugfs_w(&img, "sif /huge size 0x4000000000000000");
    debugfs_w(&img, "sif /bigdir size 0x80000000");
    debugfs_w(&img, "sif /badext block[5] 0x7ffffff0");
    // Then bytes patched (debugfs would refuse the directory block after:
    // its checksum no longer matches).
    // "../../evil" (holds '/'), "..", "esc" twice (a symlink out, then a directory).
    patch_entry(&img, b"AAAAAAAAAA", 1, b"../../evil", 10);
    patch_entry(&img, b"BB", 1, b"..", 2);
    patch_entry(&img, b"escx", 2, b"esc", 3);

    let evil = t.path().parent().unwrap().join("evil");
    assert!(!evil.exists());

    let r = run_extract(&img, &out, false);
    let failed = |name: &str| r.failures.iter().find(|f| f.path == name).map(|f| &f.error);
    assert_eq!(r.skipped_names, 1, "the name with '/' is skipped by the reader");
    assert!(matches!(failed("/esc"), Some(FsError::Exists { .. })), "{:?}", r.failures);
    assert!(matches!(failed("/loop/sub/back"), Some(FsError::Corrupt { .. })), "{:?}", r.failures);
    assert!(matches!(failed("/huge"), Some(FsError::Unreadable { .. })), "{:?}", r.failures);
    assert!(matches!(failed("/bigdir"), Some(FsError::Limit(_))), "{:?}", r.failures);
    assert!(matches!(failed("/badext"), Some(FsError::Corrupt { .. })), "{:?}", r.failures);
    assert_eq!(std::fs::read(out.join("fine")).unwrap(), b"fine");
    assert!(std::fs::symlink_metadata(out.join("esc")).unwrap().is_symlink());
    assert!(!out.join("badext").exists(), "a failed file is removed");

    // Forced: the symlink is replaced by the directory, never followed.
    let r = run_extract(&img, &out, true);
    assert!(out.join("esc").is_dir() && !std::fs::symlink_metadata(out.join("esc")).unwrap().is_symlink());
    assert_eq!(std::fs::read(out.join("esc/pwned")).unwrap(), b"pwned");
    assert!(r.failures.iter().all(|f| f.path != "/esc"), "{:?}", r.failures);

    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was written outside the target");
    assert!(!evil.exists());
    // Every name extracted lies under the target.
    for p in walk(&out) {
        assert!(p.canonicalize().map_or(true, |c| c.starts_with(out.canonicalize().unwrap())
            || std::fs::symlink_metadata(&p).unwrap().is_symlink()));
    }
}

#[test]
fn a_symlink_placed_in_the_target_is_never_followed() {
    if !need(&["mkfs.ext4"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, img, out, outside) =
        (t.path().join("src"), t.path().join("fs.img"), t.path().join("out"), t.path().join("outside"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"data").unwrap();
    std::fs::write(src.join("g"), b"data").unwrap();
    mkfs("ext4", &src, &img, 16, &[]);
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    // Someone planted links where the extraction will write.
    std::os::unix::fs::symlink(&outside, out.join("d")).unwrap();
    std::os::unix::fs::symlink(outside.join("g"), out.join("g")).unwrap();
    let r = run_extract(&img, &out, false);
    assert_eq!(r.failures.len(), 2, "{:?}", r.failures);
    let r = run_extract(&img, &out, true);
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(std::fs::read(out.join("d/f")).unwrap(), b"data");
    assert!(!std::fs::symlink_metadata(out.join("g")).unwrap().is_symlink());
}

#[test]
fn absurd_depth_fails_by_name_and_the_byte_bound_stops_the_run() {
    if !need(&["mkfs.ext4"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, img, out) = (t.path().join("src"), t.path().join("fs.img"), t.path().join("out"));
    let mut deep = src.clone();
    for _ in 0..300 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom"), b"too deep").unwrap();
    std::fs::write(src.join("hundred"), vec![7u8; 100]).unwrap();
    mkfs("ext4", &src, &img, 16, &[]);
    let r = run_extract(&img, &out, false);
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    assert!(matches!(r.failures[0].error, FsError::Limit(_)), "{:?}", r.failures);
    assert_eq!(r.failures[0].path.matches("/d").count(), alike_fs::extract::MAX_DEPTH);
    // A bound of 10 bytes: the 100-byte file stops the whole run.
    let fs = alike_fs::ext::open(dev(&img)).unwrap().unwrap();
    let opts = ExtractOptions::default().max_bytes(10);
    let e = extract(fs.as_ref(), &[b"/hundred".as_slice()], &t.path().join("o2"), &opts).unwrap_err();
    assert!(matches!(e, FsError::Limit(_)), "{e}");
}
