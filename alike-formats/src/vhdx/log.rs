//! The VHDX log (MS-VHDX 2.3): finding the active sequence and replaying it
//! into an in-memory [`Overlay`], with no I/O and without touching the file.
//!
//! A log entry is a 64-byte header (`loge`, CRC-32C over the whole entry,
//! EntryLength, Tail, SequenceNumber, DescriptorCount, LogGuid,
//! FlushedFileOffset, LastFileOffset), then 32-byte descriptors filling
//! 4 KiB sectors (126 in the first, 128 in the next ones), then one 4 KiB
//! data sector per data descriptor. A data descriptor (`desc`) carries the
//! first 8 and the last 4 bytes of its 4 KiB sector; the data sector
//! (`data`, sequence high, 4084 bytes, sequence low) carries the rest. A zero
//! descriptor (`zero`) zeroes ZeroLength bytes. Entries live in a circular
//! buffer of 4 KiB sectors and may wrap.
//!
//! Finding the active sequence: every 4 KiB position is tried as an entry;
//! the entry with the highest sequence number is the head, and the sequence
//! is extended backwards through entries that end where the next one starts
//! and whose sequence number is one less. Replay starts at the entry the
//! head's Tail names when that entry is in the sequence; otherwise (qemu
//! writes stale Tail values) at the earliest entry found.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::format::{Guid, guid_at, le32, le64};

const SECTOR: usize = 4096;

/// Logs longer than this are refused rather than replayed in memory.
pub(crate) const MAX_REPLAY_LOG: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
enum Seg {
    Zero,
    Data(Arc<[u8]>, usize),
}

/// File bytes as the log leaves them: 4 KiB-aligned ranges that read as
/// given data or zeroes, consulted by every read of the file.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overlay {
    /// start → (end, content); disjoint.
    segs: BTreeMap<u64, (u64, Seg)>,
}

impl Overlay {
    pub(crate) fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    fn insert(&mut self, start: u64, end: u64, seg: Seg) {
        let overlapping: Vec<u64> =
            self.segs.range(..end).rev().take_while(|(_, (e, _))| *e > start).map(|(s, _)| *s).collect();
        for s in overlapping {
            let Some((e, old)) = self.segs.remove(&s) else { continue };
            if s < start {
                self.segs.insert(s, (start, old.clone()));
            }
            if e > end {
                let right = match &old {
                    Seg::Zero => Seg::Zero,
                    Seg::Data(d, at) => Seg::Data(d.clone(), at + (end - s) as usize),
                };
                self.segs.insert(end, (e, right));
            }
        }
        self.segs.insert(start, (end, seg));
    }

    /// Replaces what `buf` (read from file offset `off`) holds where the log wrote.
    pub(crate) fn apply(&self, off: u64, buf: &mut [u8]) {
        let end = off + buf.len() as u64;
        for (&s, (e, seg)) in self.segs.range(..end).rev().take_while(|(_, (e, _))| *e > off) {
            let lo = s.max(off);
            let hi = (*e).min(end);
            let dst = &mut buf[(lo - off) as usize..(hi - off) as usize];
            match seg {
                Seg::Zero => dst.fill(0),
                Seg::Data(d, at) => {
                    let from = at + (lo - s) as usize;
                    dst.copy_from_slice(&d[from..from + dst.len()]);
                }
            }
        }
    }

    /// End of the furthest byte the log writes.
    pub(crate) fn end(&self) -> u64 {
        self.segs.values().map(|(e, _)| *e).max().unwrap_or(0)
    }
}

/// The outcome of replaying a log.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub(crate) overlay: Overlay,
    /// LastFileOffset of the head entry: the file is at least this long.
    pub(crate) last_file_offset: u64,
    /// Entries replayed.
    pub(crate) entries: usize,
}

/// One replayed write: file offset, length, data (`None` = zeroes).
type Op = (u64, u64, Option<Arc<[u8]>>);

#[derive(Debug, Clone)]
struct Entry {
    pos: usize,
    sectors: usize,
    seq: u64,
    tail: u64,
    flushed: u64,
    last: u64,
    descs: usize,
}

struct Scanner<'a> {
    log: &'a [u8],
    n: usize,
    guid: Guid,
    budget: u64,
}

fn sector(log: &[u8], n: usize, i: usize) -> &[u8] {
    let i = i % n;
    &log[i * SECTOR..(i + 1) * SECTOR]
}

impl Scanner<'_> {
    /// The entry starting at sector `pos`, if it is valid.
    fn entry(&mut self, pos: usize) -> Result<Option<Entry>, String> {
        let (log, n) = (self.log, self.n);
        let h = sector(log, n, pos);
        if &h[..4] != b"loge" || guid_at(h, 32) != self.guid {
            return Ok(None);
        }
        let len = le32(h, 8) as usize;
        let seq = le64(h, 16);
        let descs = le32(h, 24) as usize;
        if len == 0 || len % SECTOR != 0 || len > self.log.len() || seq == 0 {
            return Ok(None);
        }
        let sectors = len / SECTOR;
        let desc_sectors = (descs + 2).div_ceil(128);
        if desc_sectors > sectors {
            return Ok(None);
        }
        // Cheap structural checks before the checksum.
        let desc = |i: usize| {
            let at = 64 + i * 32;
            (sector(log, n, pos + at / SECTOR), at % SECTOR)
        };
        let mut data_count = 0usize;
        for i in 0..descs {
            let (s, at) = desc(i);
            let sig = &s[at..at + 4];
            if le64(s, at + 24) != seq || le64(s, at + 16) % SECTOR as u64 != 0 {
                return Ok(None);
            }
            match sig {
                b"desc" => data_count += 1,
                b"zero" if le64(s, at + 8) % SECTOR as u64 == 0 => {}
                _ => return Ok(None),
            }
        }
        if desc_sectors + data_count > sectors {
            return Ok(None);
        }
        if self.budget < len as u64 {
            return Err("the log holds too many entries that look valid to check them all".into());
        }
        self.budget -= len as u64;
        let mut crc = crc32c::crc32c(&h[..4]);
        crc = crc32c::crc32c_append(crc, &[0; 4]);
        crc = crc32c::crc32c_append(crc, &h[8..]);
        for i in 1..sectors {
            crc = crc32c::crc32c_append(crc, sector(log, n, pos + i));
        }
        if crc != le32(h, 4) {
            return Ok(None);
        }
        // Data sectors must carry the entry's sequence number.
        let mut data_i = pos + desc_sectors;
        for i in 0..descs {
            let (s, at) = desc(i);
            if &s[at..at + 4] == b"zero" {
                if le64(s, at + 16).checked_add(le64(s, at + 8)).is_none() {
                    return Ok(None);
                }
            } else {
                let d = sector(log, n, data_i);
                data_i += 1;
                let dseq = (u64::from(le32(d, 4)) << 32) | u64::from(le32(d, 4092));
                if &d[..4] != b"data" || dseq != seq || le64(s, at + 16).checked_add(SECTOR as u64).is_none() {
                    return Ok(None);
                }
            }
        }
        Ok(Some(Entry { pos, sectors, seq, tail: le32(h, 12).into(), flushed: le64(h, 48), last: le64(h, 56), descs }))
    }

    /// The writes of a validated entry, in descriptor order.
    fn ops(&self, e: &Entry) -> Vec<Op> {
        let (log, n) = (self.log, self.n);
        let desc_sectors = (e.descs + 2).div_ceil(128);
        let mut data_i = e.pos + desc_sectors;
        let mut ops = Vec::with_capacity(e.descs);
        for i in 0..e.descs {
            let at = 64 + i * 32;
            let (s, at) = (sector(log, n, e.pos + at / SECTOR), at % SECTOR);
            let foff = le64(s, at + 16);
            if &s[at..at + 4] == b"zero" {
                ops.push((foff, le64(s, at + 8), None));
            } else {
                let d = sector(log, n, data_i);
                data_i += 1;
                let mut sector = vec![0u8; SECTOR];
                sector[..8].copy_from_slice(&s[at + 8..at + 16]);
                sector[8..4092].copy_from_slice(&d[8..4092]);
                sector[4092..].copy_from_slice(&s[at + 4..at + 8]);
                ops.push((foff, SECTOR as u64, Some(Arc::from(sector))));
            }
        }
        ops
    }
}

/// Finds the active sequence of `log` (the log region's bytes) for
/// `log_guid` and replays it. `physical_len` is the file's length, checked
/// against the head's FlushedFileOffset. Errors are reasons for messages.
pub(crate) fn replay(log: &[u8], log_guid: Guid, physical_len: u64) -> Result<Replayed, String> {
    if log.is_empty() || log.len() % SECTOR != 0 {
        return Err(format!("log length {} is not a positive multiple of 4 KiB", log.len()));
    }
    let n = log.len() / SECTOR;
    // Each position is checksummed at most once; the budget bounds the total
    // work on a crafted log whose every sector starts a plausible entry.
    let mut sc = Scanner { log, n, guid: log_guid, budget: 8 * log.len() as u64 + (64 << 20) };
    let mut valid: HashMap<usize, Entry> = HashMap::new();
    for pos in 0..n {
        if let Some(e) = sc.entry(pos)? {
            valid.insert(pos, e);
        }
    }
    let Some(head) = valid.values().max_by_key(|e| (e.seq, std::cmp::Reverse(e.pos))) else {
        // No entry with this LogGuid was ever made durable: nothing was
        // applied from it, so there is nothing to replay.
        return Ok(Replayed::default());
    };
    // Walk back from the head: the predecessor ends where its successor starts.
    let by_end: HashMap<(usize, u64), usize> =
        valid.values().map(|e| (((e.pos + e.sectors) % n, e.seq), e.pos)).collect();
    let mut chain = vec![head.pos];
    let mut cur = head;
    while chain.len() < n {
        // Sequence numbers strictly decrease along the walk: it cannot cycle.
        let Some(&p) = by_end.get(&(cur.pos, cur.seq.wrapping_sub(1))) else { break };
        chain.push(p);
        cur = &valid[&p];
    }
    chain.reverse();
    let tail_sector = (head.tail as usize) / SECTOR;
    let start = if head.tail as usize % SECTOR == 0 { chain.iter().position(|&p| p == tail_sector) } else { None };
    let chain = &chain[start.unwrap_or(0)..];
    if head.flushed > physical_len {
        return Err(format!(
            "the file is {physical_len} bytes but the log's FlushedFileOffset is {}: the file was truncated",
            head.flushed
        ));
    }
    let mut out = Replayed { last_file_offset: head.last, entries: chain.len(), ..Replayed::default() };
    for p in chain {
        for (off, len, data) in &sc.ops(&valid[p]) {
            if *len == 0 {
                continue;
            }
            let seg = match data {
                Some(d) => Seg::Data(d.clone(), 0),
                None => Seg::Zero,
            };
            out.overlay.insert(*off, off + len, seg);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_splits_and_applies_in_order() {
        let mut o = Overlay::default();
        o.insert(0, 16384, Seg::Zero);
        let d: Arc<[u8]> = Arc::from(vec![7u8; 4096]);
        o.insert(4096, 8192, Seg::Data(d, 0));
        let mut buf = vec![1u8; 20000];
        o.apply(0, &mut buf);
        assert!(buf[..4096].iter().all(|b| *b == 0));
        assert!(buf[4096..8192].iter().all(|b| *b == 7));
        assert!(buf[8192..16384].iter().all(|b| *b == 0));
        assert!(buf[16384..].iter().all(|b| *b == 1));
        o.insert(0, 16384, Seg::Zero);
        assert_eq!(o.segs.len(), 1);
        assert_eq!(o.end(), 16384);
    }

    #[test]
    fn empty_or_garbage_log_replays_nothing() {
        let g = Guid::random().unwrap();
        let r = replay(&vec![0u8; 1 << 20], g, 0).unwrap();
        assert!(r.overlay.is_empty());
        let mut junk = vec![0u8; 1 << 20];
        for (i, b) in junk.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        assert!(replay(&junk, g, 0).unwrap().overlay.is_empty());
    }
}
