//! File-restore fixtures: a tree of files worth extracting, filesystem
//! images made of it by the real tools, and a comparison of two trees.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of `tool` (PATH, then the sbin directories), if it is here.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').chain(["/usr/sbin", "/sbin", "/usr/bin"]).map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Whether every tool is here; if not, skips (fails under CI).
pub fn need(tools: &[&str]) -> bool {
    for t in tools {
        if tool(t).is_none() {
            crate::skip(&format!("{t} is not installed (bash scripts/test.sh installs it)"));
            return false;
        }
    }
    true
}

/// Runs `name args…`, panicking with its output if it fails; returns stdout.
pub fn run(name: &str, args: &[&str]) -> String {
    let exe = tool(name).unwrap_or_else(|| PathBuf::from(name));
    let out = Command::new(&exe).args(args).output().unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// debugfs -w -R REQUEST IMG.
pub fn debugfs_w(img: &Path, request: &str) -> String {
    run("debugfs", &["-w", "-R", request, img.to_str().unwrap()])
}

/// `n` bytes of noise from `seed`.
pub fn data(seed: u64, n: usize) -> Vec<u8> {
    crate::Rng::new(seed).noise(n)
}

fn set_mtime(p: &Path, secs: u64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let f = std::fs::File::options().write(true).open(p).or_else(|_| std::fs::File::open(p)).unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t)).unwrap();
}

/// The tree every format test extracts: files of many sizes, a sparse
/// file, hard links, unicode names, symlinks (short, long, absolute,
/// dangling), nested directories, modes and times.
pub fn build_tree(root: &Path) {
    std::fs::create_dir_all(root.join("nested/a/b/c/d/e")).unwrap();
    std::fs::create_dir_all(root.join("dir mode 750")).unwrap();
    for (i, size) in [0usize, 1, 4095, 4096, 4097, (1 << 20) + 1, 3 << 20].into_iter().enumerate() {
        std::fs::write(root.join(format!("size-{size}")), data(i as u64 + 1, size)).unwrap();
    }
    std::fs::write(root.join("nested/a/b/c/d/e/deep.txt"), b"deep down\n").unwrap();
    std::fs::write(root.join("nested/a/b/mid.bin"), data(99, 70_000)).unwrap();
    // Sparse: 8 MiB, data at 1 MiB and at the very end.
    let sparse = std::fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(&data(7, 5000), 1 << 20).unwrap();
    sparse.write_all_at(b"tail", (8 << 20) - 4).unwrap();
    drop(sparse);
    // Hard links, one across directories.
    std::fs::write(root.join("linked-1"), data(11, 9000)).unwrap();
    std::fs::hard_link(root.join("linked-1"), root.join("linked-2")).unwrap();
    std::fs::hard_link(root.join("linked-1"), root.join("nested/a/linked-3")).unwrap();
    // Unicode names.
    std::fs::write(root.join("héllo wörld ✓.txt"), "unicode\n").unwrap();
    std::fs::create_dir(root.join("日本語")).unwrap();
    std::fs::write(root.join("日本語/ファイル"), "日本\n").unwrap();
    // Symlinks.
    std::os::unix::fs::symlink("size-4096", root.join("link-short")).unwrap();
    let long = format!("nested/a/b/{}/../mid.bin", "x".repeat(80));
    std::os::unix::fs::symlink(&long, root.join("link-long")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-absolute")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("link-dangling")).unwrap();
    std::os::unix::fs::symlink("nested/a", root.join("link-to-dir")).unwrap();
    // Modes and times.
    std::fs::write(root.join("exec.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("exec.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("secret"), "s\n").unwrap();
    std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(root.join("dir mode 750/inside"), "in\n").unwrap();
    for (i, e) in walk(root).iter().enumerate() {
        if !std::fs::symlink_metadata(e).unwrap().is_symlink() && !e.is_dir() {
            set_mtime(e, 1_000_000_000 + i as u64 * 3600);
        }
    }
    std::fs::set_permissions(root.join("dir mode 750"), std::fs::Permissions::from_mode(0o750)).unwrap();
    for (i, e) in walk(root).iter().enumerate() {
        if e.is_dir() && !std::fs::symlink_metadata(e).unwrap().is_symlink() {
            set_mtime(e, 1_200_000_000 + i as u64 * 60);
        }
    }
}

/// Every path under `root` (not `root`), sorted, links not followed.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Makes an image of `src` with `mkfs.TYPE -d` (extra options before the image).
pub fn mkfs(fstype: &str, src: &Path, img: &Path, size_mib: u64, extra: &[&str]) {
    let _ = std::fs::remove_file(img);
    let mut args: Vec<String> = vec!["-q".into(), "-F".into(), "-d".into(), src.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(img.display().to_string());
    args.push(format!("{size_mib}M"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&format!("mkfs.{fstype}"), &args);
}

/// What a path is, for comparing trees.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    /// A regular file: its data's SHA-256, mode bits, mtime (s), length.
    File {
        /// SHA-256 of the data, hex.
        sha: String,
        /// Permission bits.
        mode: u32,
        /// Modification time, seconds.
        mtime: i64,
        /// Length.
        len: u64,
    },
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
        /// Modification time, seconds.
        mtime: i64,
    },
    /// A symlink and its target.
    Link {
        /// The target.
        target: PathBuf,
    },
}

/// Relative path → node, and the groups of hard-linked paths.
pub type Described = (BTreeMap<PathBuf, Node>, Vec<Vec<PathBuf>>);

/// The tree under `root` as relative path → node, plus the groups of hard links.
pub fn describe(root: &Path) -> Described {
    let mut nodes = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for p in walk(root) {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let n = if m.is_symlink() {
            Node::Link { target: std::fs::read_link(&p).unwrap() }
        } else if m.is_dir() {
            Node::Dir { mode: m.mode() & 0o7777, mtime: m.mtime() }
        } else {
            inodes.entry(m.ino()).or_default().push(rel.clone());
            Node::File { sha: crate::sha256_file(&p), mode: m.mode() & 0o7777, mtime: m.mtime(), len: m.len() }
        };
        nodes.insert(rel, n);
    }
    let mut groups: Vec<Vec<PathBuf>> = inodes.into_values().filter(|g| g.len() > 1).collect();
    for g in &mut groups {
        g.sort();
    }
    groups.sort();
    (nodes, groups)
}

/// Asserts the two trees hold the same names, data, modes, mtimes, links
/// and hard-link groups.
pub fn assert_same_tree(src: &Path, out: &Path) {
    let (a, ga) = describe(src);
    let (b, gb) = describe(out);
    let names_a: Vec<_> = a.keys().collect();
    let names_b: Vec<_> = b.keys().collect();
    assert_eq!(names_a, names_b, "the extracted tree holds other names");
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "{}", k.display());
    }
    assert_eq!(ga, gb, "hard-link groups differ");
    assert!(!ga.is_empty(), "the source tree has hard links");
}

/// Bytes the file at `p` occupies on disk.
pub fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}
