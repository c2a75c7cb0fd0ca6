//! Cutting data into chunks: fixed, disk-aligned blocks for disks (what CBT
//! reports and what random-access restores need), FastCDC for byte streams
//! whose content shifts (files, exported archives).

use std::ops::Range;

/// Smallest allowed block size: the granularity of XenServer's CBT.
pub const MIN_BLOCK_SIZE: u32 = 64 * 1024;
/// Largest allowed block size.
pub const MAX_BLOCK_SIZE: u32 = 4 * 1024 * 1024;
/// The default block size; `docs/design/block-size.md` has the measurements.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;

/// Whether `bs` is an allowed block size (a power of two in range).
pub fn valid_block_size(bs: u32) -> bool {
    bs.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs)
}

/// Whether every byte is zero. Written so the compiler vectorises it.
pub fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    let body = chunks.by_ref().all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0);
    body && chunks.remainder().iter().all(|&x| x == 0)
}

/// Block indices (of size `bs`) that overlap any of `ranges`, as merged,
/// sorted index ranges, clipped to `nblocks`.
pub fn blocks_touching(ranges: &[Range<u64>], bs: u64, nblocks: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut rs: Vec<Range<u64>> = ranges.iter().filter(|r| r.end > r.start).cloned().collect();
    rs.sort_by_key(|r| r.start);
    for r in rs {
        let a = r.start / bs;
        let b = r.end.div_ceil(bs).min(nblocks);
        if a >= b {
            continue;
        }
        match out.last_mut() {
            Some(last) if a <= last.end => last.end = last.end.max(b),
            _ => out.push(a..b),
        }
    }
    out
}

/// Sorts byte ranges `[start, end)` and merges the ones that touch or overlap.
pub fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(l) if a <= l.1 => l.1 = l.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Content-defined chunk boundaries of `data` with FastCDC (2020), as byte ranges.
/// `avg` must be a power of two between 256 bytes and 256 MiB; min = avg/4, max = avg*4.
pub fn cdc_ranges(data: &[u8], avg: u32) -> Vec<Range<usize>> {
    let avg = avg as usize;
    fastcdc::v2020::FastCDC::new(data, avg / 4, avg, avg * 4).map(|c| c.offset..c.offset + c.length).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 65537]));
        let mut v = vec![0u8; 65537];
        v[65536] = 1;
        assert!(!is_zero(&v));
        v[65536] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn block_sizes() {
        assert!(valid_block_size(65536) && valid_block_size(4 << 20));
        assert!(!valid_block_size(32768) && !valid_block_size(8 << 20) && !valid_block_size(100_000));
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(merge_ranges(vec![(10, 20), (0, 5), (5, 8), (15, 30), (40, 41)]), vec![(0, 8), (10, 30), (40, 41)]);
        assert!(merge_ranges(vec![]).is_empty());
    }

    #[test]
    fn touching() {
        let r = blocks_touching(&[0..1, 10..11, 70000..70001, 200_000..300_000], 65536, 4);
        assert_eq!(r, vec![0..2, 3..4]);
    }

    proptest! {
        #[test]
        fn cdc_chunks_concatenate_to_input(data in proptest::collection::vec(any::<u8>(), 0..20000)) {
            let rs = cdc_ranges(&data, 1024);
            let mut joined = Vec::new();
            for r in &rs { joined.extend_from_slice(&data[r.clone()]); }
            prop_assert_eq!(joined, data);
            for r in rs.iter().rev().skip(1) { prop_assert!(r.len() <= 4096); }
        }
    }
}
