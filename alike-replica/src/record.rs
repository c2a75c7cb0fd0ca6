//! The receiver's record: the keyed id of every chunk of each disk at a
//! replica's newest point, and the chunker that makes it.
//!
//! A disk is cut exactly as a store cuts it ([`Chunking`]): fixed blocks
//! aligned to the disk, or content-defined chunks on 4 KiB boundaries that
//! never cross a 128 MiB window ([`alike_core::cut_image`] is the
//! reference). All-zero blocks are holes and have no extent, so what no
//! extent covers reads as zeroes. Ids are [`Keys::hash`] under the
//! replica's own key, never a store's: a replica is its own trust domain.
//!
//! The record's one question is [`Record::lacks`]: of the extents a sender
//! offers (offset, length, id), which ones the replica does not hold at
//! that very place. The record is only ever a cache of the replica's
//! bytes: [`Record::rebuild`] makes it again from the newest point.

use std::ops::Range;
use std::path::Path;

use alike_core::{
    CDC_BLOCK, CDC_MAX_CHUNK, CDC_WINDOW_BLOCKS, CancelToken, CdcState, ChunkId, Chunking, DiskSource, Extent, Keys,
    cut_hash, is_zero,
};

use crate::error::{ReplicaError, Result};

/// The longest extent an offer may hold: the largest fixed block (4 MiB);
/// content-defined chunks are at most 1 MiB.
pub const MAX_EXTENT: u64 = alike_core::MAX_BLOCK_SIZE as u64;

/// Magic of a record file: `0x89 'A' 'L' 'K' 'R' 'R' '\r' '\n'` (do not edit).
pub(crate) const RECORD_MAGIC: [u8; 8] = [0x89, b'A', b'L', b'K', b'R', b'R', b'\r', b'\n'];
/// The record format this build writes and reads.
pub(crate) const RECORD_VERSION: u32 = 1;
/// Hashed under the replica's key to tell which key a record was made with (do not edit).
const KEY_CHECK: &[u8] = b"alike replica record key check v1";
/// Bytes read per batch when cutting a disk.
const BATCH: u64 = 16 << 20;

/// One disk of a [`Record`]: its size and the extents of its chunks,
/// sorted and disjoint; gaps read as zeroes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordDisk {
    /// Virtual size in bytes.
    pub size: u64,
    /// The chunks with data, in disk order.
    pub extents: Vec<Extent>,
}

/// What the receiver knows of a replica's newest point: per disk, the
/// keyed id of every chunk (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    point: u64,
    chunking: Chunking,
    disks: Vec<RecordDisk>,
}

/// Checks that `extents` are chunks of a `size`-byte disk cut by
/// `chunking`: sorted, disjoint, inside the disk and on its grid (a whole
/// block for fixed blocks; 4 KiB multiples, at most 1 MiB, for
/// content-defined chunks — only the disk's last chunk may end off the grid).
pub(crate) fn check_extents(
    disk: usize,
    size: u64,
    chunking: &Chunking,
    extents: &[Extent],
) -> std::result::Result<(), String> {
    let unit = grid(chunking);
    let max = match chunking {
        Chunking::Fixed { block_size } => u64::from(*block_size),
        _ => u64::from(CDC_MAX_CHUNK),
    };
    let mut at = 0;
    for (i, e) in extents.iter().enumerate() {
        let end = e.offset.checked_add(e.len).filter(|end| *end <= size);
        let Some(end) = end else {
            return Err(format!(
                "disk {disk}: extent {i} at {} ({} bytes) ends past the disk ({size})",
                e.offset, e.len
            ));
        };
        if e.offset < at {
            return Err(format!("disk {disk}: extent {i} at {} overlaps or precedes the one before", e.offset));
        }
        let on_grid = e.offset % unit == 0 && (e.len % unit == 0 || end == size);
        let shape = match chunking {
            Chunking::Fixed { .. } => e.len == max.min(size - e.offset),
            _ => e.len > 0 && e.len <= max,
        };
        if !on_grid || !shape {
            return Err(format!(
                "disk {disk}: extent {i} at {} ({} bytes) is not a chunk of {chunking} (offsets on the {unit}-byte grid, at most {max} bytes)",
                e.offset, e.len
            ));
        }
        at = end;
    }
    Ok(())
}

impl Record {
    /// A record of disks with nothing but zeroes (a replica with no point
    /// yet has `point` 0).
    pub fn empty(point: u64, chunking: Chunking, sizes: &[u64]) -> Record {
        let disks = sizes.iter().map(|&size| RecordDisk { size, extents: Vec::new() }).collect();
        Record { point, chunking, disks }
    }

    /// A record from its parts.
    ///
    /// # Errors
    /// [`ReplicaError::InvalidArgument`] when an extent is out of order,
    /// overlapping, past its disk, or not a chunk of `chunking` (off its
    /// grid, or too long).
    pub fn new(point: u64, chunking: Chunking, disks: Vec<RecordDisk>) -> Result<Record> {
        for (d, disk) in disks.iter().enumerate() {
            check_extents(d, disk.size, &chunking, &disk.extents).map_err(ReplicaError::InvalidArgument)?;
        }
        Ok(Record { point, chunking, disks })
    }

    /// Cuts and hashes every disk of a point afresh (reading what each
    /// source reports allocated): what the record is when it is lost,
    /// damaged or made with another key.
    ///
    /// # Errors
    /// A read fails, or `cancel` is cancelled.
    pub fn rebuild(
        point: u64,
        chunking: Chunking,
        keys: &Keys,
        disks: &[&dyn DiskSource],
        cancel: &CancelToken,
    ) -> Result<Record> {
        let disks = disks
            .iter()
            .map(|src| Ok(RecordDisk { size: src.size(), extents: cut_disk(*src, &chunking, keys, cancel)? }))
            .collect::<Result<Vec<_>>>()?;
        Ok(Record { point, chunking, disks })
    }

    /// The point this record describes (0: no point yet).
    pub fn point(&self) -> u64 {
        self.point
    }
    /// How the disks are cut.
    pub fn chunking(&self) -> Chunking {
        self.chunking
    }
    /// The disks.
    pub fn disks(&self) -> &[RecordDisk] {
        &self.disks
    }

    /// Which of the `offered` extents of `disk` the replica does not hold
    /// at that place (same offset, length and id): their indices, in order.
    ///
    /// # Errors
    /// [`ReplicaError::InvalidArgument`] for a disk the record does not have.
    pub fn lacks(&self, disk: usize, offered: &[Extent]) -> Result<Vec<usize>> {
        let d = self.disks.get(disk).ok_or_else(|| {
            ReplicaError::InvalidArgument(format!("disk {disk}: the replica has {} disk(s)", self.disks.len()))
        })?;
        Ok(offered
            .iter()
            .enumerate()
            .filter(|(_, e)| match d.extents.binary_search_by_key(&e.offset, |x| x.offset) {
                Ok(j) => d.extents[j].len != e.len || d.extents[j].id != e.id,
                Err(_) => true,
            })
            .map(|(i, _)| i)
            .collect())
    }

    /// The record file's bytes (`docs/replica-dir.md`), with the check of
    /// `keys` that tells a record made under another key.
    pub fn encode(&self, keys: &Keys) -> Vec<u8> {
        let chunking = self.chunking.to_string();
        let n: usize = self.disks.iter().map(|d| 16 + 44 * d.extents.len()).sum();
        let mut b = Vec::with_capacity(96 + chunking.len() + n);
        b.extend_from_slice(&RECORD_MAGIC);
        b.extend_from_slice(&RECORD_VERSION.to_le_bytes());
        b.extend_from_slice(&self.point.to_le_bytes());
        b.extend_from_slice(&key_check(keys).0);
        b.extend_from_slice(&(chunking.len() as u16).to_le_bytes());
        b.extend_from_slice(chunking.as_bytes());
        b.extend_from_slice(&(self.disks.len() as u32).to_le_bytes());
        for d in &self.disks {
            b.extend_from_slice(&d.size.to_le_bytes());
            b.extend_from_slice(&(d.extents.len() as u64).to_le_bytes());
            for e in &d.extents {
                b.extend_from_slice(&e.offset.to_le_bytes());
                b.extend_from_slice(&(e.len as u32).to_le_bytes());
                b.extend_from_slice(&e.id.0);
            }
        }
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    /// Reads a record file's bytes; `file` names it in errors.
    ///
    /// # Errors
    /// [`ReplicaError::Malformed`] for a bad magic, a checksum mismatch, a
    /// record made under another key, or any field out of range;
    /// [`ReplicaError::UnsupportedVersion`] for another version.
    pub fn decode(bytes: &[u8], keys: &Keys, file: &Path) -> Result<Record> {
        let bad = |reason: String| ReplicaError::malformed(file, reason);
        if bytes.len() < 8 + 4 + 8 + 32 + 2 + 4 + 32 || bytes[..8] != RECORD_MAGIC {
            return Err(bad("not a replica record (bad magic or too short)".into()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err(bad("checksum mismatch: the record is damaged".into()));
        }
        let mut r = Reader { b: body, at: 8, short: false };
        let version = r.u32();
        if version != RECORD_VERSION {
            return Err(ReplicaError::UnsupportedVersion {
                file: file.to_owned(),
                found: u64::from(version),
                supported: u64::from(RECORD_VERSION),
            });
        }
        let point = r.u64();
        let check = r.take(32).ok_or_else(|| bad("truncated".into()))?;
        if check != key_check(keys).0 {
            return Err(bad("made with another key than the replica's".into()));
        }
        let clen = usize::from(r.u16());
        let chunking = r
            .take(clen)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<Chunking>().ok())
            .ok_or_else(|| bad("bad chunking".into()))?;
        let ndisks = r.u32();
        let mut disks = Vec::new();
        for d in 0..ndisks {
            let size = r.u64();
            let count = r.u64();
            if count > (r.left() / 44) as u64 {
                return Err(bad(format!("disk {d}: {count} extents do not fit in the file")));
            }
            let mut extents = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let offset = r.u64();
                let len = u64::from(r.u32());
                let id = ChunkId(r.take(32).ok_or_else(|| bad("truncated".into()))?.try_into().expect("32 bytes"));
                extents.push(Extent { offset, len, id });
            }
            check_extents(d as usize, size, &chunking, &extents).map_err(bad)?;
            disks.push(RecordDisk { size, extents });
        }
        if r.short || r.left() != 0 {
            return Err(bad("truncated or trailing bytes".into()));
        }
        Ok(Record { point, chunking, disks })
    }
}

/// The id of a fixed string under `keys`: which key a record was made with.
fn key_check(keys: &Keys) -> ChunkId {
    keys.hash(KEY_CHECK)
}

/// A bounds-checked little-endian reader; reads past the end give zeroes
/// and set `short`.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    short: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?);
        match s {
            Some(_) => self.at += n,
            None => self.short = true,
        }
        s
    }
    fn left(&self) -> usize {
        self.b.len().saturating_sub(self.at)
    }
    fn u16(&mut self) -> u16 {
        self.take(2).map_or(0, |s| u16::from_le_bytes(s.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> u32 {
        self.take(4).map_or(0, |s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> u64 {
        self.take(8).map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
}

/// Cuts a whole disk as the record does: the extents of its chunks, in
/// order, with their ids under `keys`. Reads only what the source reports
/// allocated. This is what a sender without change tracking offers, and
/// what [`Record::rebuild`] keeps.
///
/// # Errors
/// A read fails, or `cancel` is cancelled.
pub fn cut_disk(src: &dyn DiskSource, chunking: &Chunking, keys: &Keys, cancel: &CancelToken) -> Result<Vec<Extent>> {
    let mut out = Vec::new();
    cut_range(src, 0..src.size(), chunking, keys, cancel, &mut |_, chunks| {
        out.extend(chunks.iter().map(|c| c.0));
        Ok(())
    })?;
    Ok(out)
}

/// The grid a chunking cuts on: the block size, or 4 KiB.
pub(crate) fn grid(chunking: &Chunking) -> u64 {
    match chunking {
        Chunking::Fixed { block_size } => u64::from(*block_size),
        _ => u64::from(CDC_BLOCK),
    }
}

/// What [`cut_range`] hands its sink: a span of the disk and the chunks
/// that lie in it with their bytes; the rest of the span reads as zeroes.
pub type CutSink<'s> = dyn FnMut(Range<u64>, &[(Extent, &[u8])]) -> Result<()> + 's;

/// Cuts `within` (grid-aligned, or ending at the disk's end) of `src`, as
/// if it were a disk of its own that starts at a chunk boundary, in
/// batches of about 16 MiB. The spans handed to `sink` follow each other
/// and together cover `within`; each ends at a chunk boundary. Returns the
/// bytes read.
///
/// A sender offers what this hands its sink, span by span; a range of a
/// disk cut alone may cut differently from the whole disk near its start
/// (the ids stay true, only matching is less likely there).
///
/// # Errors
/// `within` does not start on the chunking's grid; a read fails; `cancel`
/// is cancelled; what `sink` returns.
pub fn cut_range(
    src: &dyn DiskSource,
    within: Range<u64>,
    chunking: &Chunking,
    keys: &Keys,
    cancel: &CancelToken,
    sink: &mut CutSink<'_>,
) -> Result<u64> {
    cut_range_batched(src, within, chunking, keys, cancel, BATCH, sink)
}

/// [`cut_range`] reading about `batch` bytes at a time (at least one unit
/// of the chunking's grid): the sink hears of each batch's chunks as soon
/// as they are cut, so a caller that stops early reads little past where
/// it stops.
///
/// # Errors
/// As [`cut_range`].
pub fn cut_range_batched(
    src: &dyn DiskSource,
    within: Range<u64>,
    chunking: &Chunking,
    keys: &Keys,
    cancel: &CancelToken,
    batch: u64,
    sink: &mut CutSink<'_>,
) -> Result<u64> {
    let size = src.size();
    let within = within.start.min(size)..within.end.min(size);
    let unit = grid(chunking);
    if within.start % unit != 0 {
        return Err(ReplicaError::InvalidArgument(format!(
            "a cut must start on the {unit}-byte grid, not at {}",
            within.start
        )));
    }
    let batch = (batch / unit).max(1) * unit;
    let mut regions: Vec<Range<u64>> = Vec::new();
    for r in src.allocated_ranges()? {
        let s = r.start.max(within.start);
        let e = r.end.min(within.end);
        if s >= e {
            continue;
        }
        let s = (s / unit * unit).max(within.start);
        let e = (e.div_ceil(unit) * unit).min(within.end);
        match regions.last_mut() {
            Some(last) if last.end >= s => last.end = last.end.max(e),
            _ => regions.push(s..e),
        }
    }
    let mut c = Cutter {
        keys,
        size,
        cdc: match chunking {
            Chunking::Cdc(p) => Some(CdcState::new(p)),
            _ => None,
        },
        unit,
        work: Vec::new(),
        work_off: within.start,
        closed: Vec::new(),
        span_start: within.start,
        sink,
    };
    let mut read = 0;
    let mut prev_end = within.start;
    for region in regions {
        if region.start > prev_end {
            // A hole between regions ends the open chunk.
            c.end_chunk();
            c.flush(prev_end)?;
        }
        let mut at = region.start;
        while at < region.end {
            cancel.check()?;
            let end = (at + batch).min(region.end);
            c.read(src, at..end)?;
            read += end - at;
            at = end;
        }
        prev_end = region.end;
    }
    c.end_chunk();
    c.flush(within.end)?;
    Ok(read)
}

struct Cutter<'k, 's, 'x> {
    keys: &'k Keys,
    size: u64,
    cdc: Option<CdcState>,
    unit: u64,
    /// Bytes held: `work[i]` is the disk's byte `work_off + i` (the open
    /// chunk's bytes, then the batch being cut).
    work: Vec<u8>,
    work_off: u64,
    /// Chunks closed since the last flush (offsets on the disk).
    closed: Vec<Extent>,
    span_start: u64,
    sink: &'s mut CutSink<'x>,
}

impl Cutter<'_, '_, '_> {
    fn bytes(&self, offset: u64, len: u64) -> &[u8] {
        let i = (offset - self.work_off) as usize;
        &self.work[i..i + len as usize]
    }

    fn push(&mut self, offset: u64, len: u64) {
        let id = self.keys.hash(self.bytes(offset, len));
        self.closed.push(Extent { offset, len, id });
    }

    /// Records the chunk the content-defined chunker closed, if any.
    fn close(&mut self, c: Option<(u64, u32)>) {
        if let Some((blk, n)) = c {
            let off = blk * u64::from(CDC_BLOCK);
            let len = (off + u64::from(n) * u64::from(CDC_BLOCK)).min(self.size) - off;
            self.push(off, len);
        }
    }

    fn end_chunk(&mut self) {
        if let Some(st) = &mut self.cdc {
            let c = st.end();
            self.close(c);
        }
    }

    /// Reads `r` (after the open chunk's bytes, which end where it starts)
    /// and cuts it.
    fn read(&mut self, src: &dyn DiskSource, r: Range<u64>) -> Result<()> {
        if self.work.is_empty() {
            self.work_off = r.start;
        }
        debug_assert_eq!(self.work_off + self.work.len() as u64, r.start);
        let held = self.work.len();
        self.work.resize(held + (r.end - r.start) as usize, 0);
        src.read_at(r.start, &mut self.work[held..])?;
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(self.unit);
            if let Some(mut st) = self.cdc.take() {
                let blk = at / u64::from(CDC_BLOCK);
                if blk > 0 && blk % u64::from(CDC_WINDOW_BLOCKS) == 0 {
                    self.close(st.end());
                }
                let b = self.bytes(at, n);
                let c = if is_zero(b) { st.end() } else { st.push(blk, cut_hash(b)) };
                self.close(c);
                self.cdc = Some(st);
            } else if !is_zero(self.bytes(at, n)) {
                self.push(at, n);
            }
            at += n;
        }
        let open = self.cdc.as_ref().and_then(CdcState::open_start).map(|b| b * u64::from(CDC_BLOCK));
        self.flush(open.unwrap_or(r.end))
    }

    /// Hands the chunks closed so far to the sink, as the span up to
    /// `upto`, and keeps only the open chunk's bytes.
    fn flush(&mut self, upto: u64) -> Result<()> {
        if upto > self.span_start || !self.closed.is_empty() {
            let closed = std::mem::take(&mut self.closed);
            let (work, base) = (&self.work, self.work_off);
            let chunks: Vec<(Extent, &[u8])> = closed
                .iter()
                .map(|e| (*e, &work[(e.offset - base) as usize..(e.offset - base + e.len) as usize]))
                .collect();
            (self.sink)(self.span_start..upto, &chunks)?;
            self.span_start = upto;
        }
        let keep_from = self.cdc.as_ref().and_then(CdcState::open_start).map(|b| b * u64::from(CDC_BLOCK));
        match keep_from {
            Some(k) if k >= self.work_off => {
                self.work.drain(..(k - self.work_off) as usize);
                self.work_off = k;
            }
            _ => self.work.clear(),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alike_core::{CdcParams, MasterKey, MemSource, cut_image};

    fn data(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn cuts_agree_with_cut_image_and_fixed_blocks() {
        let keys = Keys::from_master(&MasterKey([7; 32]));
        let mut img = data(3, 3 * (1 << 20) + 5000);
        img[100_000..300_000].fill(0);
        img[1 << 20..(1 << 20) + 4096].fill(0);
        let src = MemSource { label: "m".into(), data: img.clone() };
        let p = CdcParams { min: 8192, avg: 16384, max: 32768 };
        let got = cut_disk(&src, &Chunking::Cdc(p), &keys, &CancelToken::new()).unwrap();
        let want: Vec<Extent> = cut_image(&img, &p)
            .into_iter()
            .map(|(o, l)| Extent { offset: o, len: l, id: keys.hash(&img[o as usize..(o + l) as usize]) })
            .collect();
        assert_eq!(got, want);
        let fixed = Chunking::Fixed { block_size: 65536 };
        let got = cut_disk(&src, &fixed, &keys, &CancelToken::new()).unwrap();
        let want: Vec<Extent> = img
            .chunks(65536)
            .enumerate()
            .filter(|(_, b)| !is_zero(b))
            .map(|(i, b)| Extent { offset: i as u64 * 65536, len: b.len() as u64, id: keys.hash(b) })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let keys = Keys::from_master(&MasterKey([1; 32]));
        let e = |o: u64, l: u64| Extent { offset: o, len: l, id: keys.hash(&o.to_le_bytes()) };
        let r = Record::new(
            4,
            Chunking::default(),
            vec![
                RecordDisk { size: 1 << 20, extents: vec![e(0, 4096), e(8192, 65536)] },
                RecordDisk { size: 4096, extents: vec![] },
            ],
        )
        .unwrap();
        let b = r.encode(&keys);
        let f = Path::new("record-4.bin");
        assert_eq!(Record::decode(&b, &keys, f).unwrap(), r);
        let other = Keys::from_master(&MasterKey([2; 32]));
        assert!(Record::decode(&b, &other, f).unwrap_err().to_string().contains("another key"));
        for i in [0, 9, 30, b.len() / 2, b.len() - 1] {
            let mut d = b.clone();
            d[i] ^= 1;
            let err = Record::decode(&d, &keys, f).unwrap_err().to_string();
            assert!(err.starts_with("record-4.bin: "), "{err}");
        }
        assert!(Record::decode(&b[..b.len() - 1], &keys, f).is_err());
        assert_eq!(r.lacks(0, &[e(0, 4096), e(4096, 4096), e(8192, 4096)]).unwrap(), vec![1, 2]);
        assert!(r.lacks(2, &[]).is_err());
        assert!(
            Record::new(1, Chunking::default(), vec![RecordDisk { size: 4096, extents: vec![e(0, 8192)] }]).is_err()
        );
    }
}
