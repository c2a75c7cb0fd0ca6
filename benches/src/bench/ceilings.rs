//! The machine's ceilings, measured in the same run with the engine's own
//! primitives (`alike_core`): image read bandwidth (cold and cached),
//! keyed BLAKE3 over 64 KiB blocks, zstd over ~1 MiB frames at the store's
//! level and at level 1, and AES-256-GCM sealing of 1 MiB frames — each on
//! one core and on all cores.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use alike_core::{DiskSource, Keys, MasterKey, RawFileSource, compress, is_zero};
use anyhow::Result;
use rayon::prelude::*;

use crate::measure;

/// One ceiling: a name, bytes per second, and what it is measured over.
#[derive(Debug, Clone)]
pub(crate) struct Ceiling {
    /// e.g. `BLAKE3 keyed, 64 KiB blocks`.
    pub(crate) name: String,
    /// One core, bytes/s (`None` when not measured that way).
    pub(crate) single: Option<f64>,
    /// All cores, bytes/s.
    pub(crate) all: Option<f64>,
    /// A note (input, cold/cached).
    pub(crate) note: String,
}

/// The measured ceilings, by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ceilings {
    /// In report order.
    pub(crate) rows: Vec<Ceiling>,
    /// Keyed BLAKE3, all cores, bytes/s (the re-run target is relative to it).
    pub(crate) blake3_all: f64,
}

/// Up to `limit` bytes of the image's non-zero 64 KiB blocks, every
/// `stride`th: real file data spread over the disk (not only the
/// file-system metadata at its start), so that zstd rates are the backup's.
pub(crate) fn sample(image: &Path, limit: usize, stride: u64) -> Result<Vec<u8>> {
    let src = RawFileSource::open(image)?;
    let mut out = Vec::with_capacity(limit);
    let mut buf = vec![0u8; 65536];
    let mut seen = 0u64;
    'outer: for r in src.allocated_ranges()? {
        let mut off = r.start - r.start % 65536;
        while off < r.end {
            let n = (src.size() - off).min(65536) as usize;
            src.read_at(off, &mut buf[..n])?;
            if !is_zero(&buf[..n]) {
                seen += 1;
                if seen.is_multiple_of(stride) {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() >= limit {
                        break 'outer;
                    }
                }
            }
            off += 65536;
        }
    }
    Ok(out)
}

/// Runs `f` over `data` until `min_secs` have passed (at least once);
/// returns bytes per second.
fn rate(data: &[u8], min_secs: f64, f: impl Fn(&[u8])) -> f64 {
    let t = Instant::now();
    let mut bytes = 0u64;
    loop {
        f(data);
        bytes += data.len() as u64;
        if t.elapsed().as_secs_f64() >= min_secs {
            break;
        }
    }
    bytes as f64 / t.elapsed().as_secs_f64()
}

/// One core and all cores, each the best of three alternating tries: a
/// ceiling is what the machine can do, and on a shared machine a single
/// try mostly measures the neighbours.
fn single_all(data: &[u8], min_secs: f64, piece: usize, f: impl Fn(&[u8]) + Sync) -> (f64, f64) {
    let (mut one, mut all) = (0f64, 0f64);
    for _ in 0..3 {
        one = one.max(rate(data, min_secs, |d| d.chunks(piece).for_each(&f)));
        all = all.max(rate(data, min_secs, |d| d.par_chunks(piece).for_each(&f)));
    }
    (one, all)
}

/// Reads the allocated ranges of `image` sequentially in 1 MiB reads;
/// returns (bytes read, seconds).
fn read_image(image: &Path) -> Result<(u64, f64)> {
    use std::io::{Seek, SeekFrom};
    let src = RawFileSource::open(image)?;
    let ranges = src.allocated_ranges()?;
    let mut f = std::fs::File::open(image)?;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut total = 0u64;
    for r in ranges {
        f.seek(SeekFrom::Start(r.start))?;
        let mut left = r.end - r.start;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            f.read_exact(&mut buf[..n])?;
            std::hint::black_box(&buf);
            total += n as u64;
            left -= n as u64;
        }
    }
    Ok((total, t.elapsed().as_secs_f64()))
}

/// Measures every ceiling. `sample_bytes` bounds the data used for the CPU
/// rates; `min_secs` is how long each rate is measured; `cold` drops the
/// page cache before the first image read.
pub(crate) fn measure(image: &Path, level: i32, sample_bytes: usize, min_secs: f64, cold: bool) -> Result<Ceilings> {
    let image_size = std::fs::metadata(image)?.len() as f64;
    let mut rows = Vec::new();
    let cold_ok = cold && measure::drop_caches();
    let (n, s) = read_image(image)?;
    let (n2, s2) = read_image(image)?;
    let first = if cold_ok {
        "cold (guest page cache dropped; the host may still cache the disk)"
    } else {
        "first read (page cache not dropped)"
    };
    rows.push(Ceiling {
        name: "image read, allocated ranges, 1 MiB reads".into(),
        single: Some(n as f64 / s),
        all: None,
        note: format!(
            "{first}: {:.0} MB/s of data = {:.0} MB/s of image; cached: {:.0} MB/s of data = {:.0} MB/s of image",
            n as f64 / s / 1e6,
            image_size / s / 1e6,
            n2 as f64 / s2 / 1e6,
            image_size / s2 / 1e6
        ),
    });
    rows.push(Ceiling {
        name: "image read, cached".into(),
        single: Some(n2 as f64 / s2),
        all: None,
        note: "second read, bytes of allocated data per second".into(),
    });
    let data = sample(image, sample_bytes, 4)?;
    let keys = Keys::from_master(&MasterKey([7; 32]));
    let (one, all) = single_all(&data, min_secs, 65536, |b| {
        std::hint::black_box(keys.hash(b));
    });
    let blake3_all = all;
    rows.push(Ceiling {
        name: "BLAKE3 keyed, 64 KiB blocks".into(),
        single: Some(one),
        all: Some(all),
        note: "per block, as the engine hashes".into(),
    });
    for (lvl, what) in [(level, "the store's level"), (1, "level 1")] {
        let (one, all) = single_all(&data, min_secs, 1 << 20, |b| {
            std::hint::black_box(compress(b, lvl));
        });
        let ratio = {
            let c: usize = data.chunks(1 << 20).map(|b| compress(b, lvl).map_or(b.len(), |c| c.len())).sum();
            data.len() as f64 / c as f64
        };
        rows.push(Ceiling {
            name: format!("zstd level {lvl} ({what}), 1 MiB frames"),
            single: Some(one),
            all: Some(all),
            note: format!("MB/s of input; ratio {ratio:.2} on this image's data"),
        });
        if lvl == 1 && level == 1 {
            break;
        }
    }
    let (one, all) = single_all(&data, min_secs, 1 << 20, |b| {
        std::hint::black_box(keys.seal(b"bench", b).expect("seal"));
    });
    rows.push(Ceiling {
        name: "AES-256-GCM seal, 1 MiB frames".into(),
        single: Some(one),
        all: Some(all),
        note: "including the nonce draw and the output copy".into(),
    });
    Ok(Ceilings { rows, blake3_all })
}
