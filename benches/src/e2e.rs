//! `alike-e2e`: end-to-end figures for one image pair, in one process run.
//!
//! `cargo run --release -p alike-benches --bin alike-e2e -- V1.img V2.img [WORKDIR] [--block-size N]`
//!
//! Backs up V1 (first full), V1 again (unchanged re-run), V2 (incremental
//! without change hints: everything read, dedup by hash), restores V2, and
//! prints wall time, MB/s of image and of data, bytes added and peak RSS for
//! each step (peak RSS is the process high-water mark so far, read from
//! /proc; the `alike` command run per step shows each step's own peak).
//! Dirty pages are flushed (`sync`) before each step.

use std::path::PathBuf;
use std::time::Instant;

use alike::{BackupOptions, RestoreOptions, Store};
use anyhow::{Context, Result};

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Flushes dirty pages so one step's writeback does not slow the next.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

fn main() -> Result<()> {
    let mut pos = Vec::new();
    let mut block_size = 65536u32;
    let mut level = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--block-size" => block_size = it.next().context("--block-size N")?.parse()?,
            "--level" => level = Some(it.next().context("--level N")?.parse::<i32>()?),
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [v1, v2] = [pos.first().context("V1 image")?.clone(), pos.get(1).context("V2 image")?.clone()];
    let work = pos.get(2).cloned().unwrap_or_else(|| std::env::temp_dir().join("alike-e2e"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut b = Store::builder();
    b.passphrase("bench").cache_dir(work.join("cache")).block_size(block_size);
    if let Some(l) = level {
        b.compression_level(Some(l));
    }
    let store = b.create(work.join("store"))?;
    let image_size = std::fs::metadata(&v1)?.len() as f64;
    let mut rows = Vec::new();
    for (step, img) in [("first backup v1", &v1), ("unchanged re-run v1", &v1), ("incremental v2 (no hints)", &v2)] {
        settle();
        let r = store.backup_images("bench", &[img], &BackupOptions::default())?;
        let secs = r.elapsed.as_secs_f64();
        let stored = store.stats()?.stored_bytes;
        rows.push(serde_json::json!({
            "step": step, "seconds": secs, "image_MBps": image_size / secs / 1e6,
            "data_MBps": r.read_bytes as f64 / secs / 1e6, "new_bytes": r.new_bytes,
            "added_stored_bytes": r.new_stored_bytes, "store_bytes": stored, "peak_rss_MiB": peak_rss_mib(),
        }));
    }
    let v = store.version("latest", Some("bench"))?;
    let out = work.join("restore.img");
    settle();
    let t = Instant::now();
    let rr = store.restore_to_file(&v, 0, &out, &RestoreOptions::default().force(true))?;
    let secs = t.elapsed().as_secs_f64();
    rows.push(serde_json::json!({
        "step": "restore v2", "seconds": secs, "image_MBps": rr.size as f64 / secs / 1e6,
        "data_MBps": rr.data_bytes as f64 / secs / 1e6, "peak_rss_MiB": peak_rss_mib(),
    }));
    std::fs::remove_file(&out)?;
    println!(
        "{:<28} {:>8} {:>10} {:>10} {:>12} {:>12} {:>9}",
        "step", "s", "image MB/s", "data MB/s", "added MiB", "store MiB", "RSS MiB"
    );
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<28} {:>8.2} {:>10.0} {:>10.0} {:>12.1} {:>12.1} {:>9.1}",
            r["step"].as_str().unwrap_or(""),
            f("seconds"),
            f("image_MBps"),
            f("data_MBps"),
            f("added_stored_bytes") / 1048576.0,
            f("store_bytes") / 1048576.0,
            f("peak_rss_MiB")
        );
    }
    if std::env::var_os("ALIKE_E2E_JSON").is_some() {
        println!("{}", serde_json::Value::Array(rows));
    }
    Ok(())
}
