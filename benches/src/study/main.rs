//! `chunk-study`: which chunking should alike's disks use (issue 13)?
//!
//! For each image pair (v1.img, v2-inplace.img, v2-fresh.img, as made by
//! `scripts/make-ext4-pair.sh` and `scripts/make-ntfs-pair.sh`) and each
//! candidate chunker (`chunkers.rs`), it cuts v1, then v2 in place and v2
//! afresh against v1's chunks, hashing and compressing as the engine would
//! (`sink.rs`), and reports per image: chunks, mean/min/max chunk size,
//! unique bytes, bytes new against v1, and those bytes after zstd-3 in
//! ~1 MiB frames. Then, on one core, the throughput of each chunker with
//! keyed BLAKE3 included; the CBT incremental model of the 4 KiB CDC
//! candidates (`resync.rs`); and, with `--peers`, restic, casync and the
//! alike engine of today on the same pairs (`peers.rs`).
//!
//! ```sh
//! cargo build --release -p alike-cli -p alike-benches
//! target/release/chunk-study --pair ext4=DIR --pair ntfs=DIR --peers --alike target/release/alike
//! ```
//!
//! The measurements of `docs/design/chunking.md` come from it.

mod chunkers;
mod image;
mod peers;
mod resync;
mod sink;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;

use chunkers::{ByteCdc, Cdc4k, Cdc4kParams, Chunker, Fixed};
use image::Image;
use sink::{Sink, Tally};

/// Command-line options.
#[derive(Parser, Debug)]
#[command(name = "chunk-study", about = "candidate chunkers on image pairs: dedup, compression, speed, CBT resync")]
struct Args {
    /// A pair: NAME=DIR, DIR holding v1.img, v2-inplace.img, v2-fresh.img (repeatable).
    #[arg(long, required = true)]
    pair: Vec<String>,
    /// MiB of v1's data kept in memory for the throughput runs.
    #[arg(long, default_value_t = 512)]
    sample_mib: u64,
    /// Runs of each throughput measurement (the best counts).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also run restic and casync (when installed) and `--alike` on the pairs.
    #[arg(long)]
    peers: bool,
    /// With `--peers`, only these (restic, casync, alike; comma-separated).
    #[arg(long, value_delimiter = ',')]
    peer_tools: Option<Vec<String>>,
    /// The alike CLI, for the engine-of-today baseline with `--peers`.
    #[arg(long)]
    alike: Option<PathBuf>,
    /// Scratch space for the peers' repositories (default target/chunk-study).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Only these candidates (substrings of their names, comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Compression threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Skip the throughput runs.
    #[arg(long)]
    no_throughput: bool,
    /// Only the throughput runs (on the first pair's v1), no dedup figures.
    #[arg(long)]
    throughput_only: bool,
    /// Also write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The candidates, today's first.
fn candidates(disk_size: u64) -> Vec<Box<dyn Chunker>> {
    vec![
        Box::new(Fixed::new(64 << 10, disk_size)),
        Box::new(Cdc4k::new(Cdc4kParams::kib(8, 32, 128))),
        Box::new(Cdc4k::new(Cdc4kParams::kib(16, 64, 256))),
        Box::new(Cdc4k::new(Cdc4kParams::kib(32, 128, 512))),
        Box::new(Cdc4k::new(Cdc4kParams::kib(32, 64, 128))),
        Box::new(Cdc4k::new(Cdc4kParams::kib(16, 32, 64))),
        Box::new(Cdc4k::new(Cdc4kParams::kib(16, 32, 64).sampled())),
        Box::new(Cdc4k::new(Cdc4kParams::kib(8, 32, 128).sampled())),
        Box::new(Cdc4k::new(Cdc4kParams::kib(32, 64, 128).sampled())),
        Box::new(ByteCdc::new(16 << 10, 64 << 10, 256 << 10)),
        Box::new(ByteCdc::new(512 << 10, 1 << 20, 8 << 20)),
    ]
}

const PIECE: usize = 8 << 20;

/// Cuts `img` with `c` into `sink`; returns seconds.
fn cut(img: &Image, c: &mut dyn Chunker, sink: &mut Sink<'_>) -> Result<f64> {
    let t = Instant::now();
    let mut emit = |o: u64, b: &[u8]| sink.chunk(o, b);
    img.for_each_piece(PIECE, |o, d| c.feed(o, d, &mut emit))?;
    c.finish(&mut emit);
    sink.finish();
    Ok(t.elapsed().as_secs_f64())
}

/// One candidate on one pair.
struct Row {
    name: String,
    v1: Tally,
    inplace: Tally,
    fresh: Tally,
    resync: Option<resync::Resync>,
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

fn tally_json(t: &Tally) -> serde_json::Value {
    json!({"chunks": t.chunks, "bytes": t.bytes, "min": t.min, "max": t.max, "new_chunks": t.new_chunks,
           "new_bytes": t.new_bytes, "new_stored": t.new_stored, "frames": t.frames})
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let work = args.work.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(|p| p.join("target/chunk-study")).unwrap_or_default()
    });
    // Absolute: restic runs in the pair's directory.
    let work = std::path::absolute(&work)?;
    let keep = |name: &str| args.only.as_ref().is_none_or(|o| o.iter().any(|s| name.contains(s.as_str())));
    let mut md = String::new();
    let mut js = Vec::new();
    let mut throughput_done = false;
    let mut tp_rows: Vec<(String, f64, f64)> = Vec::new();
    for spec in &args.pair {
        let (name, dir) = spec.split_once('=').context("--pair NAME=DIR")?;
        let dir = PathBuf::from(dir);
        let v1 = Image::open(&dir.join("v1.img"))?;
        if args.throughput_only {
            eprintln!("{name}: throughput, one core, {} MiB of v1 in memory", args.sample_mib);
            tp_rows = throughput(&v1, args.sample_mib << 20, args.runs, &keep)?;
            throughput_table(&mut md, name, &args, &tp_rows);
            break;
        }
        let v2i = Image::open(&dir.join("v2-inplace.img"))?;
        let v2f = Image::open(&dir.join("v2-fresh.img"))?;
        eprintln!("{name}: changed 64 KiB blocks v1 → v2 in place");
        let changed = image::changed_ranges(&v1, &v2i, 64 << 10)?;
        let mut rows = Vec::new();
        for mut c in candidates(v1.size) {
            if !keep(&c.name()) {
                continue;
            }
            let cdc4k = c.cdc4k_params().is_some();
            eprintln!("{name}: {}", c.name());
            let mut s1 = Sink::new(None, threads, cdc4k);
            cut(&v1, c.as_mut(), &mut s1)?;
            let ids = std::mem::take(&mut s1.ids);
            let mut si = Sink::new(Some(&ids), threads, cdc4k);
            cut(&v2i, c.fresh().as_mut(), &mut si)?;
            let mut sf = Sink::new(Some(&ids), threads, false);
            cut(&v2f, c.fresh().as_mut(), &mut sf)?;
            let resync = if cdc4k {
                let p = c.cdc4k_params().context("a 4 KiB CDC candidate has parameters")?;
                let l1 = s1.list.take().unwrap_or_default();
                let l2 = si.list.take().unwrap_or_default();
                Some(resync::model(p, &l1, &l2, &v2i, &changed)?)
            } else {
                None
            };
            rows.push(Row { name: c.name(), v1: s1.t.clone(), inplace: si.t.clone(), fresh: sf.t.clone(), resync });
        }
        let mut peer_rows = Vec::new();
        if args.peers {
            let wanted = |t: &str| args.peer_tools.as_ref().is_none_or(|w| w.iter().any(|x| t.starts_with(x.as_str())));
            for tool in peers::available(args.alike.as_deref()).into_iter().filter(|t| wanted(t)) {
                eprintln!("{name}: {tool}");
                match peers::run_tool(&tool, &dir, &work.join(format!("{name}-peer"))) {
                    Ok(r) => peer_rows.push(r),
                    Err(e) => eprintln!("chunk-study: {tool} on {name}: {e:#}"),
                }
            }
        }
        report_pair(&mut md, name, &dir, &v1, &v2i, &v2f, &rows, &peer_rows);
        js.push(json!({
            "pair": name, "dir": dir, "v1_allocated": v1.allocated(), "size": v1.size,
            "changed_64k_bytes": changed.iter().map(|r| r.end - r.start).sum::<u64>(),
            "candidates": rows.iter().map(|r| json!({
                "name": r.name, "v1": tally_json(&r.v1), "inplace": tally_json(&r.inplace), "fresh": tally_json(&r.fresh),
                "resync": r.resync.as_ref().map(|x| json!({"changed_ranges": x.changed_ranges, "changed_bytes": x.changed_bytes,
                    "spans": x.spans, "read_bytes": x.read_bytes, "before": x.before_bytes, "after": x.after_bytes,
                    "p50": resync::pct(&x.distances, 0.5), "p90": resync::pct(&x.distances, 0.9),
                    "max": resync::pct(&x.distances, 1.0), "identical": x.identical, "chunks": x.chunks})),
            })).collect::<Vec<_>>(),
            "peers": peer_rows.iter().map(|p| json!({"tool": p.tool, "v1": p.v1, "inplace": p.inplace, "fresh": p.fresh, "v1_secs": p.v1_secs})).collect::<Vec<_>>(),
        }));
        if !throughput_done && !args.no_throughput {
            eprintln!("{name}: throughput, one core, {} MiB of v1 in memory", args.sample_mib);
            tp_rows = throughput(&v1, args.sample_mib << 20, args.runs, &keep)?;
            throughput_done = true;
            throughput_table(&mut md, name, &args, &tp_rows);
        }
    }
    println!("{md}");
    if let Some(j) = &args.json {
        let tp: Vec<_> =
            tp_rows.iter().map(|(n, r, g)| json!({"name": n, "bytes_per_sec": r, "chunks_per_gib": g})).collect();
        std::fs::write(j, serde_json::to_string_pretty(&json!({"pairs": js, "throughput": tp}))?)?;
    }
    Ok(())
}

fn throughput_table(md: &mut String, name: &str, args: &Args, rows: &[(String, f64, f64)]) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(
        md,
        "\n### Throughput, one core ({} MiB of {name} v1's data in memory, best of {}; load average {})\n",
        args.sample_mib,
        args.runs,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let blake = rows.iter().find(|r| r.0.starts_with("keyed BLAKE3 alone, 64")).map_or(f64::NAN, |r| r.1);
    let _ = writeln!(md, "| what | MB/s | time vs BLAKE3 of 64 KiB blocks | chunks per GiB |\n|---|---:|---:|---:|");
    for (n, rate, per_gib) in rows {
        let pg = if *per_gib > 0.0 { format!("{per_gib:.0}") } else { "—".into() };
        let _ = writeln!(md, "| {n} | {:.0} | {:.2}× | {pg} |", rate / 1e6, blake / rate);
    }
}

#[allow(clippy::too_many_arguments)]
fn report_pair(
    md: &mut String,
    name: &str,
    dir: &std::path::Path,
    v1: &Image,
    v2i: &Image,
    v2f: &Image,
    rows: &[Row],
    peers: &[peers::PeerRun],
) {
    let _ = writeln!(
        md,
        "\n## {name} ({}; {} MiB images; allocated: v1 {:.0} MB, v2 in place {:.0} MB, v2 afresh {:.0} MB)\n",
        dir.display(),
        v1.size >> 20,
        mb(v1.allocated()),
        mb(v2i.allocated()),
        mb(v2f.allocated())
    );
    let _ = writeln!(
        md,
        "| chunker | v1 chunks | mean KiB | min–max KiB | v1 unique MB | v1 stored MB (zstd 3, 1 MiB frames) | in place: new MB | stored MB | afresh: new MB | stored MB |"
    );
    let _ = writeln!(md, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {}–{} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.name,
            r.v1.chunks,
            r.v1.bytes as f64 / r.v1.chunks.max(1) as f64 / 1024.0,
            r.v1.min >> 10,
            r.v1.max >> 10,
            mb(r.v1.new_bytes),
            mb(r.v1.new_stored),
            mb(r.inplace.new_bytes),
            mb(r.inplace.new_stored),
            mb(r.fresh.new_bytes),
            mb(r.fresh.new_stored)
        );
    }
    for p in peers {
        let _ = writeln!(
            md,
            "| **{}** (repository bytes) | | | | | {:.1} | | {:.1} | | {:.1} |",
            p.tool,
            mb(p.v1),
            mb(p.inplace),
            mb(p.fresh)
        );
    }
    let rs: Vec<&Row> = rows.iter().filter(|r| r.resync.is_some()).collect();
    if !rs.is_empty() {
        let _ =
            writeln!(md, "\n### {name}: CBT incremental of v2 in place, 4 KiB CDC re-chunked around changed ranges\n");
        let _ = writeln!(
            md,
            "| chunker | changed 64 KiB blocks: ranges | MB | re-chunked spans | MB read | of which before | after | resync distance p50 / p90 / max KiB | chunks re-cut | = full chunking |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|---:|---|");
        for r in rs {
            let x = r.resync.as_ref().expect("filtered");
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} / {} / {} | {} | {} |",
                r.name,
                x.changed_ranges,
                mb(x.changed_bytes),
                x.spans,
                mb(x.read_bytes),
                mb(x.before_bytes),
                mb(x.after_bytes),
                resync::pct(&x.distances, 0.5) >> 10,
                resync::pct(&x.distances, 0.9) >> 10,
                resync::pct(&x.distances, 1.0) >> 10,
                x.chunks,
                if x.identical { "yes" } else { "**NO**" }
            );
        }
    }
}

/// Throughput on one core of each candidate (cut + keyed BLAKE3 of every
/// chunk) and of the primitives, over `limit` bytes of `img` held in
/// memory. Each 1 MiB piece is first copied into one reused buffer, as the
/// engine's read lands in its buffer, so every row pays that first touch of
/// the data and what follows runs on cached bytes, as it would in the engine.
fn throughput(img: &Image, limit: u64, runs: usize, keep: &dyn Fn(&str) -> bool) -> Result<Vec<(String, f64, f64)>> {
    const STAGE: usize = 1 << 20;
    let sample = img.sample(limit, STAGE)?;
    let bytes: u64 = sample.iter().map(|p| p.1.len() as u64).sum();
    let keys = sink::keys();
    let mut stage = vec![0u8; STAGE];
    let mut best = |f: &mut dyn FnMut(u64, &[u8]), end: &mut dyn FnMut()| -> f64 {
        let mut b = f64::INFINITY;
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            for (o, d) in &sample {
                stage[..d.len()].copy_from_slice(d);
                f(*o, &stage[..d.len()]);
            }
            end();
            b = b.min(t.elapsed().as_secs_f64());
        }
        b
    };
    let mut out = Vec::new();
    for c in candidates(img.size) {
        if !keep(&c.name()) {
            continue;
        }
        let chunker = std::cell::RefCell::new(c.fresh());
        let n = std::cell::Cell::new(0u64);
        let mut emit = |_o: u64, b: &[u8]| {
            std::hint::black_box(keys.hash(b));
            n.set(n.get() + 1);
        };
        let emit = std::cell::RefCell::new(&mut emit);
        let secs = best(&mut |o, d| chunker.borrow_mut().feed(o, d, *emit.borrow_mut()), &mut || {
            chunker.borrow_mut().finish(*emit.borrow_mut());
            *chunker.borrow_mut() = c.fresh();
        });
        let per_run = n.get() as f64 / runs.max(1) as f64;
        out.push((
            format!("{} + keyed BLAKE3", c.name()),
            bytes as f64 / secs,
            per_run * (1u64 << 30) as f64 / bytes as f64,
        ));
    }
    let mut prim = |name: &str, f: &mut dyn FnMut(u64, &[u8])| {
        let secs = best(f, &mut || {});
        out.push((name.to_string(), bytes as f64 / secs, 0.0));
    };
    prim("the copy alone (every row includes it)", &mut |_, d| {
        std::hint::black_box(d);
    });
    prim("keyed BLAKE3 alone, 64 KiB blocks", &mut |_, d| {
        for b in d.chunks(64 << 10) {
            std::hint::black_box(keys.hash(b));
        }
    });
    prim("keyed BLAKE3 alone, 4 KiB blocks", &mut |_, d| {
        for b in d.chunks(chunkers::BLOCK) {
            std::hint::black_box(keys.hash(b));
        }
    });
    prim("4 KiB cut hash alone (every block)", &mut |_, d| {
        for b in d.chunks(chunkers::BLOCK) {
            std::hint::black_box(chunkers::cut_hash(b));
        }
    });
    prim("4 KiB sampled cut hash alone (every block)", &mut |_, d| {
        for b in d.chunks(chunkers::BLOCK) {
            std::hint::black_box(chunkers::cut_hash_sampled(b));
        }
    });
    prim("zero test alone (every 4 KiB block)", &mut |_, d| {
        for b in d.chunks(chunkers::BLOCK) {
            std::hint::black_box(chunkers::is_zero(b));
        }
    });
    prim("FastCDC 16/64/256 KiB cut alone (no hash)", &mut |_, d| {
        std::hint::black_box(alike_core::cdc_ranges(d, 64 << 10).len());
    });
    Ok(out)
}
