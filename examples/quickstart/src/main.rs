//! # quickstart — alike's main job on an embedded default
//!
//! 1. Builds a sample VM disk: a raw ext4 image filled with real files from
//!    this machine (`scripts/make-ext4-pair.sh`), plus its twin after an
//!    in-place update of ~6% of the files, the way a VM's disk changes.
//!    Without `mkfs.ext4`/`debugfs` it falls back to a synthetic image.
//! 2. Creates an encrypted store and backs up the disk (version 1).
//! 3. Backs up the updated disk (version 2): only changed blocks are stored.
//! 4. Restores both versions and proves them bit-exact against the originals.
//! 5. Prints the dedup and compression figures.
//!
//! Run: `cargo run --release -p quickstart [-- WORKDIR [SIZE_MIB]]`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use alike::{BackupOptions, RestoreOptions, Store};
use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let work = PathBuf::from(args.next().unwrap_or_else(|| "target/quickstart".into()));
    let size_mib: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(512);
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("cleaning {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;

    // 1. The sample disk and its updated twin.
    let (v1, v2, what) = sample_images(&work, size_mib)?;
    println!("sample disk: {what}");

    // 2. An encrypted store. (A real deployment reads the passphrase from a prompt or a file.)
    let store = Store::builder()
        .passphrase("quickstart demo passphrase")
        .cache_dir(work.join("cache"))
        .create(work.join("store"))?;
    println!("created encrypted store {} at {}", store.id(), store.location());

    // 3. Two backups of the same VM.
    let mut ids = Vec::new();
    for (label, img) in [("v1 (first backup)", &v1), ("v2 (after an in-place update)", &v2)] {
        let r = store.backup_images("sample-vm", &[img], &BackupOptions::default())?;
        let secs = r.elapsed.as_secs_f64();
        println!(
            "backup {label}: version {}  read {:.0} MiB in {secs:.2} s ({:.0} MiB/s)  new {:.1} MiB  stored {:.1} MiB",
            r.version.short_id(),
            mib(r.read_bytes),
            mib(r.read_bytes) / secs.max(1e-9),
            mib(r.new_bytes),
            mib(r.new_stored_bytes),
        );
        ids.push(r.version.id);
    }

    // 4. Restore both and compare with the originals.
    for (id, original) in ids.iter().zip([&v1, &v2]) {
        let version = store.version(id, None)?;
        let out = work.join(format!("restored-{}.img", version.short_id()));
        let t = Instant::now();
        // The example's own scratch files: a rerun replaces them.
        store.restore_to_file(&version, 0, &out, &RestoreOptions::default().force(true))?;
        let secs = t.elapsed().as_secs_f64();
        let (a, b) = (digest(original)?, digest(&out)?);
        if a != b {
            bail!("restored {} differs from {}", out.display(), original.display());
        }
        println!(
            "restore {}: {:.0} MiB in {secs:.2} s, blake3 {} matches the original",
            version.short_id(),
            mib(version.disks[0].size),
            &a[..16]
        );
    }

    // 5. Figures.
    let s = store.stats()?;
    println!(
        "store: {} versions, logical {:.1} MiB, unique {:.1} MiB, stored {:.1} MiB  (dedup {:.2}x, compression {:.2}x, overall {:.2}x)",
        s.versions,
        mib(s.logical_bytes),
        mib(s.unique_bytes),
        mib(s.stored_bytes),
        s.logical_bytes as f64 / s.unique_bytes.max(1) as f64,
        s.unique_bytes as f64 / s.pack_bytes.max(1) as f64,
        s.logical_bytes as f64 / s.stored_bytes.max(1) as f64,
    );
    println!("OK: both versions restored bit-exact");
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn sample_images(work: &Path, size_mib: u64) -> Result<(PathBuf, PathBuf, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-ext4-pair.sh");
    let imgs = work.join("images");
    let ok = Command::new("bash").arg(&script).arg(&imgs).arg(size_mib.to_string()).status().map(|s| s.success());
    if ok.unwrap_or(false) {
        let what = format!("{size_mib} MiB ext4 image of real files, and its twin with ~6% of files changed in place");
        return Ok((imgs.join("v1.img"), imgs.join("v2-inplace.img"), what));
    }
    eprintln!("note: mkfs.ext4/debugfs unavailable; using a synthetic image instead");
    std::fs::create_dir_all(&imgs)?;
    let (v1, v2) = (imgs.join("v1.img"), imgs.join("v2.img"));
    let mut data = vec![0u8; (size_mib as usize) << 20];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for (i, c) in data.chunks_mut(4096).enumerate() {
        if i % 3 == 0 {
            continue; // free space
        }
        for b in c.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = if i % 2 == 0 { b"text "[(x % 5) as usize] } else { x as u8 };
        }
    }
    std::fs::write(&v1, &data)?;
    for i in (0..data.len()).step_by(1 << 20) {
        data[i..i + 100].fill(0xEE);
    }
    std::fs::write(&v2, &data)?;
    Ok((v1, v2, format!("{size_mib} MiB synthetic image and a copy with 100 bytes changed per MiB")))
}

fn digest(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}
