//! Criterion micro-benchmarks of each stage of the pipeline, through the
//! public APIs of `alike-core`, `alike-ads` and `alike`:
//!
//! - `chunking`: fixed blocks and zero detection (`is_zero` on data and on
//!   zero blocks, `blocks_touching` over a 4 GiB disk's extents);
//! - `hash`: keyed BLAKE3 of a 64 KiB block (the chunk id);
//! - `zstd`: a 1 MiB frame at the store's default level (3) and at level 1;
//! - `seal`: AES-256-GCM of a 1 MiB frame;
//! - `frame`: concatenate + compress + seal of 16 × 64 KiB chunks;
//! - `pack`: 32 × 1 MiB frames through a `PackWriter` (finish = trailer +
//!   fsync), and through `Repository` put + flush (+ index segment + cache);
//! - `index`: `IndexCache::lookup` hit and miss at 1 M and 10 M chunks (the
//!   caches are built once under `target/alike-bench/index-*` and reused);
//! - `index insert`: one index segment (24 000 chunks) into a cache of
//!   192 000, as the index publisher does after every 8 packs;
//! - `restore`: a 256 MiB disk restored (read + open frames + assemble) to
//!   a target that discards, and to a sparse file.
//!
//! Data: the first non-zero blocks of `target/alike-bench/pair-4096/v1.img`
//! (real files; `ALIKE_BENCH_IMAGE` names another image) when it exists,
//! else text-like synthetic bytes.
//!
//! `cargo bench -p alike-benches --bench stages [-- FILTER]`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alike_ads::{CreateOptions, IndexCache, OpenOptions, PackEntry, PackWriter, Repository};
use alike_core::{
    BlobKind, ChunkId, ChunkStore, Compression, DiskSource, DiskTarget, KdfParams, Keys, MasterKey, RawFileSource,
    blocks_touching, compress, encode_frame, is_zero,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const BLOCK: usize = 64 << 10;
const FRAME: usize = 1 << 20;

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/alike-bench")
}

/// `n` bytes of real data (every 8th non-zero 64 KiB block of the bench
/// image from a quarter into it: a spread of its files, not the file-system
/// metadata at its start, which compresses far better) or, without the
/// image, text-like bytes.
fn sample(n: usize) -> Vec<u8> {
    let img = std::env::var_os("ALIKE_BENCH_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| bench_dir().join("pair-4096/v1.img"));
    let mut out = Vec::with_capacity(n);
    if let Ok(src) = RawFileSource::open(&img) {
        let mut buf = vec![0u8; BLOCK];
        let mut seen = 0u64;
        let from = src.size() / 4;
        'outer: for r in src.allocated_ranges().unwrap_or_default().into_iter().filter(|r| r.end > from) {
            let start = r.start.max(from);
            let mut off = start - start % BLOCK as u64;
            while off + BLOCK as u64 <= r.end.min(src.size()) {
                if src.read_at(off, &mut buf).is_ok() && !is_zero(&buf) {
                    seen += 1;
                    if !seen.is_multiple_of(8) {
                        off += BLOCK as u64;
                        continue;
                    }
                    out.extend_from_slice(&buf);
                    if out.len() >= n {
                        break 'outer;
                    }
                }
                off += BLOCK as u64;
            }
        }
    }
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let words = [&b"the "[..], b"disk ", b"block ", b"frame ", b"alike ", b"\x00\x01\x7f", b"store "];
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(5) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(words[(x % words.len() as u64) as usize]);
        }
    }
    out.truncate(n);
    out
}

fn keys() -> Keys {
    Keys::from_master(&MasterKey([42; 32]))
}

fn chunking(c: &mut Criterion) {
    let data = sample(BLOCK);
    let zero = vec![0u8; BLOCK];
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    g.bench_function("is_zero/data block", |b| b.iter(|| is_zero(std::hint::black_box(&data))));
    g.bench_function("is_zero/zero block", |b| b.iter(|| is_zero(std::hint::black_box(&zero))));
    // A 4 GiB disk's allocated extents: 20 000 ranges of 4 KiB – 1 MiB.
    let mut x = 7u64;
    let mut ranges = Vec::new();
    let mut off = 0u64;
    for _ in 0..20_000 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let len = 4096 * (1 + (x >> 33) % 256);
        ranges.push(off..off + len);
        off += len + 4096 * ((x >> 20) % 64);
    }
    g.throughput(Throughput::Elements(ranges.len() as u64));
    g.bench_function("blocks_touching/20k extents", |b| {
        b.iter(|| blocks_touching(std::hint::black_box(&ranges), BLOCK as u64, 65536))
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let data = sample(BLOCK);
    let k = keys();
    let plain = Keys::unencrypted();
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    g.bench_function("blake3 keyed/64 KiB", |b| b.iter(|| k.hash(std::hint::black_box(&data))));
    g.bench_function("blake3 unkeyed/64 KiB", |b| b.iter(|| plain.hash(std::hint::black_box(&data))));
    g.finish();
}

fn zstd(c: &mut Criterion) {
    let data = sample(FRAME);
    let mut g = c.benchmark_group("zstd");
    g.throughput(Throughput::Bytes(FRAME as u64));
    for level in [3, 1] {
        g.bench_with_input(BenchmarkId::new("compress 1 MiB frame/level", level), &level, |b, &l| {
            b.iter(|| compress(std::hint::black_box(&data), l))
        });
    }
    g.finish();
}

fn seal(c: &mut Criterion) {
    let data = sample(FRAME);
    let k = keys();
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Bytes(FRAME as u64));
    g.bench_function("aes-256-gcm/1 MiB", |b| b.iter(|| k.seal(b"alike frame", std::hint::black_box(&data))));
    g.finish();
}

fn frame(c: &mut Criterion) {
    let data = sample(FRAME);
    let k = keys();
    let chunks: Vec<(ChunkId, &[u8])> = data.chunks(BLOCK).map(|d| (k.hash(d), d)).collect();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(FRAME as u64));
    for level in [Some(3), Some(1), None] {
        let name = level.map_or("stored raw".to_string(), |l| format!("zstd {l}"));
        g.bench_function(format!("build 16 x 64 KiB/{name} + seal"), |b| {
            b.iter(|| encode_frame(&k, BlobKind::Data, std::hint::black_box(&chunks), level).expect("frame"))
        });
    }
    g.finish();
}

/// 32 frames of 16 chunks each (a 32 MiB pack once compressed… or not: the
/// frames are built at level 3, as the engine would).
fn frames(k: &Keys, n: usize) -> Vec<alike_core::StoredFrame> {
    let data = sample(n * FRAME);
    data.chunks(FRAME)
        .map(|f| {
            let chunks: Vec<(ChunkId, &[u8])> = f.chunks(BLOCK).map(|d| (k.hash(d), d)).collect();
            encode_frame(k, BlobKind::Data, &chunks, Some(3)).expect("frame")
        })
        .collect()
}

fn pack(c: &mut Criterion) {
    let k = keys();
    let fs = frames(&k, 32);
    let raw: u64 = fs.iter().map(|f| u64::from(f.raw_len)).sum();
    let tmp = tempfile::tempdir_in(bench_dir().parent().expect("target")).expect("tempdir");
    let mut g = c.benchmark_group("pack");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(raw));
    g.bench_function("PackWriter 32 frames + finish (fsync)", |b| {
        b.iter(|| {
            let mut w = PackWriter::new(tmp.path()).expect("pack");
            for f in &fs {
                w.add(f).expect("add");
            }
            let p = w.finish(&k).expect("finish");
            std::fs::remove_file(&p.path).expect("rm");
        })
    });
    let store = tmp.path().join("store");
    let mut co = CreateOptions::default();
    co.passphrase = Some(b"bench".to_vec());
    co.kdf = KdfParams::insecure_fast();
    Repository::create_local(&store, &co).expect("create");
    let mut oo = OpenOptions::default();
    oo.passphrase = Some(b"bench".to_vec());
    oo.cache_dir = Some(tmp.path().join("cache"));
    let repo = Repository::open_local(&store, &oo).expect("open");
    // Frames sealed under the store's own keys.
    let fs = frames(repo.keys(), 32);
    g.bench_function("Repository put 32 frames + flush (pack, segment, cache)", |b| {
        b.iter(|| {
            for f in &fs {
                repo.put(f.clone()).expect("put");
            }
            repo.flush().expect("flush");
        })
    });
    g.finish();
}

/// Deterministic chunk id number `i`.
fn id(i: u64) -> ChunkId {
    ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

/// An index cache holding `n` chunks, built once under target/ and reused.
fn index_cache(n: u64) -> IndexCache {
    let dir = bench_dir().join(format!("index-{n}"));
    let marker = dir.join("complete");
    if marker.is_file() {
        return IndexCache::open(&dir, "bench").expect("open cache");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let cache = IndexCache::open(&dir, "bench").expect("create cache");
    let t = Instant::now();
    // As the store loads it: segments of 16 packs × 8 Ki chunks.
    let per_pack = 8192u64;
    let mut i = 0u64;
    let mut seg = 0u64;
    while i < n {
        let mut packs = Vec::new();
        for p in 0..16u64 {
            let mut entries = Vec::new();
            for j in 0..per_pack.min(n - i) {
                entries.push(PackEntry {
                    id: id(i),
                    kind: BlobKind::Data,
                    compression: Compression::Zstd,
                    frame_offset: (j / 16 * 300_000) as u32,
                    frame_stored_len: 300_000,
                    frame_raw_len: FRAME as u32,
                    chunk_offset: (j % 16 * BLOCK as u64) as u32,
                    chunk_len: BLOCK as u32,
                });
                i += 1;
            }
            if entries.is_empty() {
                break;
            }
            packs.push((*blake3::hash(&(seg * 16 + p).to_le_bytes()).as_bytes(), entries));
        }
        cache.insert(&format!("index/bench-{seg}"), &packs).expect("insert");
        seg += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(cache.path()).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "built the {n}-chunk index cache in {secs:.1} s ({:.0} MiB) at {}",
        size as f64 / 1048576.0,
        dir.display()
    );
    std::fs::write(&marker, format!("{n} chunks built in {secs:.1} s, {size} bytes\n")).expect("marker");
    cache
}

fn index(c: &mut Criterion) {
    let mut g = c.benchmark_group("index");
    let sizes: Vec<u64> = match std::env::var("ALIKE_BENCH_INDEX_SIZES") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![1_000_000, 10_000_000],
    };
    for n in sizes {
        let cache = index_cache(n);
        let mut x = 1u64;
        g.bench_function(BenchmarkId::new("lookup hit", n), |b| {
            b.iter(|| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                cache.lookup(&id((x >> 11) % n)).expect("lookup").expect("hit")
            })
        });
        // The engine's way: 128 ids per read transaction (time per batch).
        g.bench_function(BenchmarkId::new("lookup_many 128 hits", n), |b| {
            b.iter(|| {
                let ids: Vec<_> = (0..128)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        id((x >> 11) % n)
                    })
                    .collect();
                cache.lookup_many(&ids).expect("lookup")
            })
        });
        g.bench_function(BenchmarkId::new("lookup miss", n), |b| {
            b.iter(|| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = cache.lookup(&id(n + (x >> 11))).expect("lookup");
                debug_assert!(r.is_none());
                r
            })
        });
    }
    g.finish();
}

/// One index segment's packs as the index publisher hands them to the
/// cache: 8 packs × 3000 chunks (ids `first…`), in pack order.
fn segment(first: u64) -> Vec<([u8; 32], Vec<PackEntry>)> {
    (0..8u64)
        .map(|p| {
            let entries = (0..3000u64)
                .map(|j| PackEntry {
                    id: id(first + p * 3000 + j),
                    kind: BlobKind::Data,
                    compression: Compression::Zstd,
                    frame_offset: (j / 32 * 300_000) as u32,
                    frame_stored_len: 300_000,
                    frame_raw_len: FRAME as u32,
                    chunk_offset: (j % 32 * 32768) as u32,
                    chunk_len: 32768,
                })
                .collect();
            (*blake3::hash(&(first + p).to_le_bytes()).as_bytes(), entries)
        })
        .collect()
}

/// The index publisher's step that a backup's end waits for: one segment
/// (24 000 chunks) into a cache of 192 000, committed; a fresh cache each
/// time, its building not timed.
fn index_insert(c: &mut Criterion) {
    std::fs::create_dir_all(bench_dir()).expect("bench dir");
    let mut g = c.benchmark_group("index insert");
    g.sample_size(10);
    g.bench_function("segment of 24000 into 192000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
                let cache = IndexCache::open(dir.path(), "bench").expect("cache");
                for seg in 0..8u64 {
                    cache.insert(&format!("index/base-{seg}"), &segment(seg * 24_000)).expect("insert");
                }
                let next = segment(8 * 24_000);
                let t = Instant::now();
                cache.insert("index/next", &next).expect("insert");
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// A target that discards what it is given: restore without the write.
struct NullTarget;

impl DiskTarget for NullTarget {
    fn label(&self) -> String {
        "null".into()
    }
    fn write_at(&self, _offset: u64, data: &[u8]) -> alike_core::Result<()> {
        std::hint::black_box(data);
        Ok(())
    }
    fn holes_read_as_zero(&self) -> bool {
        true
    }
    fn finish(&self, _size: u64) -> alike_core::Result<()> {
        Ok(())
    }
}

fn restore(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(bench_dir().parent().expect("target")).expect("tempdir");
    // A 256 MiB disk: 60% real data, then holes.
    let size = 256u64 << 20;
    let img = tmp.path().join("disk.img");
    {
        let data = sample((size as usize) * 6 / 10);
        let f = std::fs::File::create(&img).expect("image");
        f.set_len(size).expect("len");
        std::os::unix::fs::FileExt::write_all_at(&f, &data, 0).expect("write");
    }
    let store = alike::Store::builder()
        .passphrase("bench")
        .insecure_fast_kdf()
        .cache_dir(tmp.path().join("cache"))
        .create(tmp.path().join("store"))
        .expect("store");
    store.backup_images("bench", &[&img], &alike::BackupOptions::default()).expect("backup");
    let v = store.version("latest", Some("bench")).expect("version");
    let opts = alike::RestoreOptions::default();
    let mut g = c.benchmark_group("restore");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes(size));
    g.bench_function("256 MiB disk/discard", |b| b.iter(|| store.restore(&v, 0, &NullTarget, &opts).expect("restore")));
    let out = tmp.path().join("out.img");
    g.bench_function("256 MiB disk/sparse file (fsync)", |b| {
        b.iter(|| {
            store.restore_to_file(&v, 0, &out, &opts).expect("restore");
            std::fs::remove_file(&out).expect("rm");
        })
    });
    g.finish();
}

criterion_group!(stages, chunking, hashing, zstd, seal, frame, pack, index, index_insert, restore);
criterion_main!(stages);
