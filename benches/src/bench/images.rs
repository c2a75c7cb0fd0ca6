//! The images a run needs: the ext4 pair (`scripts/make-ext4-pair.sh`), the
//! NTFS pair (`scripts/make-ntfs-pair.sh`) and
//! a chain of VHDX checkpoints for the change-hint run. (The scaling run's
//! larger disks are generated on the fly from v1: `synthetic::Tiled`.)

use std::path::{Path, PathBuf};

use alike_core::{DiskSource, DiskTarget, RawFileSource, is_zero};
use anyhow::{Context, Result, ensure};

/// The three images of a pair.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    /// The first state.
    pub(crate) v1: PathBuf,
    /// v1 updated in place.
    pub(crate) v2_inplace: PathBuf,
    /// v2's files laid out afresh.
    pub(crate) v2_fresh: PathBuf,
}

impl Pair {
    fn in_dir(dir: &Path) -> Pair {
        Pair { v1: dir.join("v1.img"), v2_inplace: dir.join("v2-inplace.img"), v2_fresh: dir.join("v2-fresh.img") }
    }
    fn exists(&self) -> bool {
        [&self.v1, &self.v2_inplace, &self.v2_fresh].iter().all(|p| p.is_file())
    }
}

/// The workspace root (for `scripts/` and `docs/`).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ has a parent").to_path_buf()
}

/// Takes the pair in `dir` if it is there (and, when `size_mib` is given,
/// of that size); otherwise builds it with `scripts/make-ext4-pair.sh`.
pub(crate) fn pair(dir: &Path, size_mib: u64, build: bool) -> Result<Pair> {
    pair_from(dir, size_mib, build, "make-ext4-pair.sh")
}

/// The same for an NTFS pair, built with `scripts/make-ntfs-pair.sh`
/// (ntfs-3g and FUSE, as root).
pub(crate) fn ntfs_pair(dir: &Path, size_mib: u64, build: bool) -> Result<Pair> {
    pair_from(dir, size_mib, build, "make-ntfs-pair.sh")
}

fn pair_from(dir: &Path, size_mib: u64, build: bool, script_name: &str) -> Result<Pair> {
    let p = Pair::in_dir(dir);
    if p.exists() {
        let len = std::fs::metadata(&p.v1)?.len();
        if !build || len == size_mib << 20 {
            return Ok(p);
        }
    }
    ensure!(build, "no image pair in {} (v1.img, v2-inplace.img, v2-fresh.img)", dir.display());
    let script = workspace_root().join("scripts").join(script_name);
    eprintln!("building the {size_mib} MiB image pair in {} ({})", dir.display(), script.display());
    let st = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir)
        .arg(size_mib.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {script_name}"))?;
    ensure!(st.success(), "{script_name} failed ({st})");
    ensure!(p.exists(), "{script_name} did not leave the three images in {}", dir.display());
    Ok(p)
}

/// Bytes of allocated (non-hole) ranges of an image.
pub(crate) fn allocated_bytes(image: &Path) -> Result<u64> {
    let s = RawFileSource::open(image)?;
    Ok(s.allocated_ranges()?.iter().map(|r| r.end - r.start).sum())
}

/// The change-hint fixture: a chain of checkpoints.
#[derive(Debug, Clone)]
pub(crate) struct VhdxChain {
    /// Dynamic VHDX holding v1's data.
    pub(crate) base: PathBuf,
    /// A differencing child of `base` with nothing written (a checkpoint
    /// taken, nothing changed): its backup is the fixed cost of one.
    pub(crate) empty: PathBuf,
    /// A differencing child of `empty` holding the change.
    pub(crate) child: PathBuf,
    /// Bytes written into `child`.
    pub(crate) changed: u64,
}

/// Builds `base.vhdx` (v1's non-zero 64 KiB blocks), `empty.avhdx` over it,
/// and `child.avhdx` over that holding a `pct`% change of the virtual size
/// in writes of 4 KiB to 128 KiB at 4 KiB-aligned random offsets.
pub(crate) fn vhdx_chain(v1: &Path, dir: &Path, pct: f64, seed: u64) -> Result<VhdxChain> {
    use alike_hyperv::vhdx::{CreateOptions, VhdxTarget, create_differencing};
    std::fs::create_dir_all(dir)?;
    let base = dir.join("base.vhdx");
    let empty = dir.join("empty.avhdx");
    let child = dir.join("child.avhdx");
    for p in [&base, &empty, &child] {
        let _ = std::fs::remove_file(p);
    }
    let src = RawFileSource::open(v1)?;
    let size = src.size();
    let t = VhdxTarget::create(&base, size, &CreateOptions::default())?;
    let mut buf = vec![0u8; 65536];
    for r in src.allocated_ranges()? {
        let mut off = r.start - r.start % 65536;
        while off < r.end {
            let n = (size - off).min(65536) as usize;
            src.read_at(off, &mut buf[..n])?;
            if !is_zero(&buf[..n]) {
                t.write_at(off, &buf[..n])?;
            }
            off += 65536;
        }
    }
    t.finish(size)?;
    drop(t);
    let e = create_differencing(&empty, &base)?;
    e.finish(size)?;
    drop(e);
    let c = create_differencing(&child, &empty)?;
    let goal = (size as f64 * pct / 100.0) as u64;
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut changed = 0u64;
    let mut data = vec![0u8; 128 << 10];
    while changed < goal {
        let len = (4096 * (1 + next() % 32)).min((goal - changed).div_ceil(4096) * 4096);
        let off = (next() % ((size - len) / 4096)) * 4096;
        for w in data[..len as usize].chunks_mut(8) {
            w.copy_from_slice(&next().to_le_bytes()[..w.len()]);
        }
        c.write_at(off, &data[..len as usize])?;
        changed += len;
    }
    c.finish(size)?;
    drop(c);
    ensure!(child.is_file(), "the differencing VHDX was not written");
    Ok(VhdxChain { base, empty, child, changed })
}
