//! The baselines: restic 0.14 (CDC ~1 MiB, zstd `auto`), casync (buzhash
//! CDC 16/64/256 KiB, zstd) and the alike engine itself (fixed 64 KiB
//! today), each backing up v1, then v2 in place (repository A) and v2
//! afresh (repository B, a copy of A after v1). Figures are repository
//! sizes (apparent bytes of every file), so each tool's own overheads are in.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// One tool's figures on one pair.
#[derive(Debug, Clone)]
pub(crate) struct PeerRun {
    /// Tool name.
    pub(crate) tool: String,
    /// Repository bytes after v1.
    pub(crate) v1: u64,
    /// Bytes added by v2 in place.
    pub(crate) inplace: u64,
    /// Bytes added by v2 afresh.
    pub(crate) fresh: u64,
    /// Seconds of the v1 backup.
    pub(crate) v1_secs: f64,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn run(c: &mut Command) -> Result<f64> {
    let t = std::time::Instant::now();
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr).chars().take(1500).collect::<String>());
    }
    Ok(t.elapsed().as_secs_f64())
}

fn copy_dir(a: &Path, b: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(b);
    run(Command::new("cp").arg("-a").arg(a).arg(b))?;
    Ok(())
}

/// The tools to run: those installed, and alike when its CLI is given.
pub(crate) fn available(alike: Option<&Path>) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(a) = alike.filter(|a| a.is_file()) {
        v.push(format!("alike:{}", a.display()));
    }
    for t in ["restic", "casync"] {
        if which(t).is_some() {
            v.push(t.to_string());
        }
    }
    v
}

/// Runs `tool` on the pair in `pair` (v1.img, v2-inplace.img, v2-fresh.img), in `work`.
pub(crate) fn run_tool(tool: &str, pair: &Path, work: &Path) -> Result<PeerRun> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let (a, b) = (work.join("repo-a"), work.join("repo-b"));
    let img = |n: &str| pair.join(n);
    let r = if let Some(bin) = tool.strip_prefix("alike:") {
        let cmd = |repo: &Path| {
            let mut c = Command::new(bin);
            c.env("ALIKE_PASSWORD", "study")
                .arg("--store")
                .arg(repo)
                .arg("--cache-dir")
                .arg(repo.with_extension("cache"))
                .arg("--quiet");
            c
        };
        let backup =
            |repo: &Path, image: &Path| -> Result<f64> { run(cmd(repo).args(["backup", "--vm", "disk"]).arg(image)) };
        run(cmd(&a).arg("init"))?;
        run(cmd(&b).arg("init"))?;
        let v1_secs = backup(&a, &img("v1.img"))?;
        backup(&b, &img("v1.img"))?;
        let v1 = dir_bytes(&a);
        backup(&a, &img("v2-inplace.img"))?;
        let b0 = dir_bytes(&b);
        backup(&b, &img("v2-fresh.img"))?;
        PeerRun {
            tool: "alike (engine today)".into(),
            v1,
            inplace: dir_bytes(&a) - v1,
            fresh: dir_bytes(&b) - b0,
            v1_secs,
        }
    } else if tool == "restic" {
        let cmd = |repo: &Path| {
            let mut c = Command::new("restic");
            c.env("RESTIC_PASSWORD", "study")
                .env("RESTIC_REPOSITORY", repo)
                .env("RESTIC_CACHE_DIR", work.join("restic-cache"))
                .arg("--quiet")
                .current_dir(pair);
            c
        };
        run(cmd(&a).arg("init"))?;
        let v1_secs = run(cmd(&a).args(["backup", "--host", "study", "v1.img"]))?;
        let v1 = dir_bytes(&a);
        copy_dir(&a, &b)?;
        run(cmd(&a).args(["backup", "--host", "study", "v2-inplace.img"]))?;
        run(cmd(&b).args(["backup", "--host", "study", "v2-fresh.img"]))?;
        PeerRun { tool: "restic 0.14".into(), v1, inplace: dir_bytes(&a) - v1, fresh: dir_bytes(&b) - v1, v1_secs }
    } else if tool == "casync" {
        let make = |store: &Path, idx: &str, image: &str| -> Result<f64> {
            run(Command::new("casync")
                .arg("make")
                .arg(format!("--store={}", store.display()))
                .arg("--compression=zstd")
                .arg(work.join(idx))
                .arg(img(image)))
        };
        let v1_secs = make(&a, "v1.caibx", "v1.img")?;
        let v1 = dir_bytes(&a);
        copy_dir(&a, &b)?;
        make(&a, "v2-inplace.caibx", "v2-inplace.img")?;
        make(&b, "v2-fresh.caibx", "v2-fresh.img")?;
        PeerRun {
            tool: "casync (64 KiB CDC, zstd)".into(),
            v1,
            inplace: dir_bytes(&a) - v1,
            fresh: dir_bytes(&b) - v1,
            v1_secs,
        }
    } else {
        bail!("unknown tool {tool}");
    };
    let _ = std::fs::remove_dir_all(work);
    Ok(r)
}
