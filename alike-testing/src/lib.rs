//! Test helpers for alike (a dev-dependency only): disk sources with change
//! tracking and injected failures, image builders, and digests.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use alike_core::{DiskSource, Error, MemSource, Result};
use sha2::Digest;

pub mod netns;
pub mod proxy;
pub mod sshd;
pub mod tree;
pub mod vhdx_spec;

/// SHA-256 of a file, hex.
pub fn sha256_file(p: impl AsRef<Path>) -> String {
    let data = std::fs::read(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()));
    hex::encode(sha2::Sha256::digest(&data))
}

/// SHA-256 of bytes, hex.
pub fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// A tiny deterministic PRNG (xorshift64*), so fixtures are the same on every run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// `n` incompressible bytes.
    pub fn noise(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
    /// Fills with half-compressible bytes (text-like runs and noise).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(64) {
            let v = self.next_u64();
            if v & 1 == 0 {
                for (i, b) in c.iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog "[(i + (v >> 8) as usize) % 44];
                }
            } else {
                for b in c.iter_mut() {
                    *b = self.next_u64() as u8;
                }
            }
        }
    }
}

/// Writes a sparse image of `size` bytes with `extents` scattered data
/// extents (random lengths, some unaligned), everything else holes.
pub fn sparse_image(path: &Path, size: u64, extents: usize, seed: u64) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(size).expect("set_len");
    let mut rng = Rng::new(seed);
    for _ in 0..extents {
        if size == 0 {
            break;
        }
        let len = 1 + rng.below(300_000).min(size - 1);
        let off = rng.below(size - len + 1);
        let mut buf = vec![0u8; len as usize];
        rng.fill(&mut buf);
        f.write_all_at(&buf, off).expect("write extent");
    }
    f.sync_all().expect("sync");
}

/// Overwrites `n` random small extents of an image in place (an "update").
pub fn scribble(path: &Path, n: usize, seed: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open image");
    let size = f.metadata().expect("meta").len();
    let mut rng = Rng::new(seed);
    for _ in 0..n {
        let len = 1 + rng.below(20_000).min(size.saturating_sub(1));
        let off = rng.below(size.saturating_sub(len) + 1);
        let mut buf = vec![0u8; len as usize];
        rng.fill(&mut buf);
        f.write_all_at(&buf, off).expect("write");
    }
}

/// Writes by generation number.
type ChangeLog = Vec<(u64, Range<u64>)>;

/// A disk in memory with change tracking, like CBT: each write is logged
/// under a generation number; the change token is the generation.
#[derive(Debug)]
pub struct TrackedDisk {
    inner: Mutex<(MemSource, ChangeLog)>,
    generation: AtomicU64,
    /// Generations older than this are forgotten (the chain is "broken").
    pub forgotten_before: AtomicU64,
}

impl TrackedDisk {
    /// A disk with the given content at generation 1.
    pub fn new(data: Vec<u8>) -> TrackedDisk {
        TrackedDisk {
            inner: Mutex::new((MemSource { label: "tracked".into(), data }, Vec::new())),
            generation: AtomicU64::new(1),
            forgotten_before: AtomicU64::new(0),
        }
    }
    /// Writes and logs the change.
    pub fn write(&self, off: u64, data: &[u8]) {
        let mut g = self.inner.lock().expect("lock");
        g.0.data[off as usize..off as usize + data.len()].copy_from_slice(data);
        let gen_now = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        g.1.push((gen_now, off..off + data.len() as u64));
    }
    /// The current bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.inner.lock().expect("lock").0.data.clone()
    }
}

impl DiskSource for TrackedDisk {
    fn label(&self) -> String {
        "tracked".into()
    }
    fn size(&self) -> u64 {
        self.inner.lock().expect("lock").0.data.len() as u64
    }
    fn change_token(&self) -> Option<Vec<u8>> {
        Some(self.generation.load(Ordering::SeqCst).to_le_bytes().to_vec())
    }
    fn changed_ranges(&self, since: &[u8]) -> Result<Option<Vec<Range<u64>>>> {
        let Ok(b) = <[u8; 8]>::try_from(since) else { return Ok(None) };
        let since = u64::from_le_bytes(b);
        if since < self.forgotten_before.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let g = self.inner.lock().expect("lock");
        Ok(Some(g.1.iter().filter(|(n, _)| *n > since).map(|(_, r)| r.clone()).collect()))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.lock().expect("lock").0.read_at(offset, buf)
    }
}

/// A source that fails with an I/O error at or after `fail_at`.
#[derive(Debug)]
pub struct FailingSource {
    /// The good bytes.
    pub inner: MemSource,
    /// First failing offset.
    pub fail_at: u64,
}

impl DiskSource for FailingSource {
    fn label(&self) -> String {
        "failing".into()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset + buf.len() as u64 > self.fail_at {
            return Err(Error::SourceRead {
                disk: "failing".into(),
                offset,
                source: std::io::Error::other("injected read failure (bad sector)"),
            });
        }
        self.inner.read_at(offset, buf)
    }
}

/// Builds the ext4 image pair with `scripts/make-ext4-pair.sh` into `dir`
/// (`v1.img`, `v2-inplace.img`, `v2-fresh.img`); `None` when the tools
/// (mkfs.ext4, debugfs) are missing.
pub fn ext4_pair(dir: &Path, size_mib: u64, data_mib: u64) -> Option<[PathBuf; 3]> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-ext4-pair.sh");
    let ok = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir)
        .arg(size_mib.to_string())
        .arg(data_mib.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    Some(["v1.img", "v2-inplace.img", "v2-fresh.img"].map(|n| dir.join(n)))
}

/// Whether this run is CI (`CI` set, and not empty, `0` or `false`): there a
/// test that cannot run fails instead of skipping (see [`skip`]).
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// A test that cannot run here: on a developer's machine prints why and
/// returns (the caller then returns, skipping the rest); under CI panics
/// with the reason, because the test command must install what every test
/// needs (`scripts/test.sh`) and a skip there would hide that it did not.
pub fn skip(reason: &str) {
    assert!(!on_ci(), "CI is set, and this test cannot run: {reason}");
    eprintln!("skipped: {reason}");
}

/// Whether `tool` runs (`tool --version` exits 0). When it does not: under
/// CI panics naming it, elsewhere prints a skip line and returns `false`.
/// Use as `if !require_tool("qemu-img") { return; }`.
pub fn require_tool(tool: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(&format!("{tool} is not installed (bash scripts/test.sh installs it)"));
    }
    ok
}
