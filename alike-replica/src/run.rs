//! [`Run`]: one replication run on the receiving side, over any target's
//! [`RunLayer`].
//!
//! A run keeps a working copy of the record, one entry per chunk of the
//! new point, each *kept* (the newest point holds it there and the layer
//! shows it), *pending* (offered and lacking: its data must arrive) or
//! *written* (arrived, or copied from elsewhere in the replica, and
//! checked against its id). Beside it, per disk, the ranges whose ids are
//! unknown (*stale*: written raw, or the rest of a chunk that an offer cut)
//! and the ranges this run wrote. Whatever the layer may hold that is not
//! zero lies inside kept, pending or written entries, stale ranges or
//! written ranges; an offer's holes are zeroed only there.
//!
//! At commit, every pending extent must have arrived; stale ranges are read
//! back from the sealed layer and cut afresh (as a disk of their own, so
//! their cuts may differ from a whole-disk cut: the ids stay true, only
//! matching is less likely there); and the layer commits the new point with
//! its record.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Mutex, OnceLock};

use alike_core::{CancelToken, ChunkId, DiskSource, Extent, Keys, Recover};
use serde::Serialize;

use crate::error::{ReplicaError, Result};
use crate::record::{MAX_EXTENT, Record, RecordDisk, check_extents, cut_range, grid};
use crate::target::{Point, RunLayer};

/// Byte counts of a run, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RunStats {
    /// Bytes of every extent offered.
    pub offered_bytes: u64,
    /// Offered bytes the replica already held in place.
    pub present_bytes: u64,
    /// Offered bytes the replica held elsewhere and copied locally.
    pub copied_bytes: u64,
    /// Offered bytes the replica lacked: what the sender must send.
    pub needed_bytes: u64,
    /// Bytes of extents received and checked.
    pub received_bytes: u64,
    /// Bytes written raw (not through an offer).
    pub raw_bytes: u64,
    /// Bytes made zero (holes of offers, explicit zeroing).
    pub zeroed_bytes: u64,
    /// Bytes read back at commit to hash ranges of unknown ids.
    pub rehashed_bytes: u64,
    /// Offered bytes found in a seed (a version the receiver could read)
    /// and copied from it instead of sent.
    pub seeded_bytes: u64,
    /// Offered bytes found in what an earlier attempt of the run received
    /// (its resume journal) and copied from it instead of sent.
    pub resumed_bytes: u64,
}

/// Where a run may copy offered chunks from instead of having them sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CopyKind {
    /// A seed: a version of the VM the receiver can read.
    Seed,
    /// What an earlier attempt received (a resume journal).
    Resume,
}

struct CopySource<'a> {
    src: Box<dyn DiskSource + 'a>,
    ids: HashMap<ChunkId, (u64, u64)>,
    kind: CopyKind,
}

/// Where a chunk with a given id can be read locally.
#[derive(Debug, Clone, Copy)]
enum Loc {
    /// Disk, offset of the newest point.
    Parent(usize, u64),
    /// Copy source, offset.
    Extra(usize, u64),
}

/// What [`Run::commit`] made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Committed {
    /// The new point.
    pub point: Point,
    /// The run's byte counts.
    pub stats: RunStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Kept,
    Pending,
    Written,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    len: u64,
    id: ChunkId,
    state: State,
}

/// A set of disjoint byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    fn insert(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let (mut s, mut e) = (r.start, r.end);
        let touching: Vec<u64> =
            self.0.range(..=e).rev().take_while(|(_, end)| **end >= s).map(|(start, _)| *start).collect();
        for k in touching {
            let end = self.0.remove(&k).expect("listed");
            s = s.min(k);
            e = e.max(end);
        }
        self.0.insert(s, e);
    }
    fn remove(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let hit: Vec<(u64, u64)> =
            self.0.range(..r.end).rev().take_while(|(_, end)| **end > r.start).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in hit {
            self.0.remove(&s);
            if s < r.start {
                self.0.insert(s, r.start);
            }
            if e > r.end {
                self.0.insert(r.end, e);
            }
        }
    }
    /// The parts of the set inside `r`, in order.
    fn within(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut v: Vec<Range<u64>> = self
            .0
            .range(..r.end)
            .rev()
            .take_while(|(_, end)| **end > r.start)
            .map(|(s, e)| (*s).max(r.start)..(*e).min(r.end))
            .collect();
        v.reverse();
        v
    }
    fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.0.iter().map(|(s, e)| *s..*e)
    }
}

#[derive(Debug)]
struct DiskState {
    size: u64,
    map: BTreeMap<u64, Entry>,
    stale: Ranges,
    written: Ranges,
}

impl DiskState {
    /// The entries overlapping `r`, in order.
    fn overlapping(&self, r: Range<u64>) -> Vec<(u64, Entry)> {
        let mut v: Vec<(u64, Entry)> =
            self.map.range(..r.end).rev().take_while(|(o, e)| **o + e.len > r.start).map(|(o, e)| (*o, *e)).collect();
        v.reverse();
        v
    }
    /// Fails when a pending entry overlaps `r` without lying inside `inside`.
    fn check_pending(&self, disk: usize, r: Range<u64>, inside: Range<u64>, what: &str) -> Result<()> {
        for (o, e) in self.overlapping(r) {
            if e.state == State::Pending && (o < inside.start || o + e.len > inside.end) {
                return Err(ReplicaError::InvalidArgument(format!(
                    "disk {disk}: {what} cuts the extent at {o} ({} bytes), which was offered and has not arrived",
                    e.len
                )));
            }
        }
        Ok(())
    }
    /// Removes the entries overlapping `r`; the parts of them outside `r`
    /// become stale.
    fn clear(&mut self, r: Range<u64>) {
        for (o, e) in self.overlapping(r.clone()) {
            self.map.remove(&o);
            if o < r.start {
                self.stale.insert(o..r.start);
            }
            if o + e.len > r.end {
                self.stale.insert(r.end..o + e.len);
            }
        }
    }
}

#[derive(Debug)]
struct RunState {
    disks: Vec<DiskState>,
    stats: RunStats,
}

/// One run of a replication on the receiving side: the sender's offers,
/// the data that arrives, and the commit that makes the new point.
///
/// Made by [`crate::ReplicaTarget::begin`]. Methods take `&self` and may
/// be called from several threads (writes of different extents go on side
/// by side); offers that overlap must not run at the same time. Nothing of
/// a run is a point until [`Run::commit`] returns; dropping a run (or
/// [`Run::abort`]) discards it.
///
/// The usual order, per disk: [`Run::offer`] the extents of a span of the
/// new point (the chunks the sender cut there; what lies between them is
/// zeroes), then [`Run::write_extent`] each extent it answered as needed.
/// Spans of a disk may come in any order and need not cover the disk: what
/// no span covers keeps the newest point's content. Raw positional writes
/// ([`Run::write_at`], [`Run::write_zeroes`]) are for writers that do not
/// offer (seeding a replica from an image); their ranges are hashed at
/// commit.
pub struct Run<'a> {
    layer: Box<dyn RunLayer + 'a>,
    /// The newest point's disks (empty for a first point), for local copies.
    parents: Vec<Box<dyn DiskSource>>,
    record: Record,
    keys: Keys,
    note: Option<String>,
    state: Mutex<RunState>,
    index: OnceLock<HashMap<ChunkId, (usize, u64)>>,
    extra: Vec<CopySource<'a>>,
    journal: Option<crate::journal::JournalWriter>,
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").field("point", &self.layer.point()).field("disks", &self.sizes()).finish()
    }
}

impl<'a> Run<'a> {
    /// A run writing `layer`, a new point with disks of `sizes` bytes, over
    /// the newest point whose disks are `parents` (none for a replica's
    /// first point) and whose record is `record`. `note` says why the
    /// record had to be rebuilt, if it was.
    ///
    /// # Errors
    /// [`ReplicaError::DisksDiffer`] when the record, the parents and the
    /// sizes do not describe the same disks.
    pub fn new(
        layer: Box<dyn RunLayer + 'a>,
        sizes: &[u64],
        parents: Vec<Box<dyn DiskSource>>,
        record: Record,
        keys: Keys,
        note: Option<String>,
    ) -> Result<Run<'a>> {
        let differ = |reason: String| ReplicaError::DisksDiffer { target: format!("point {}", layer.point()), reason };
        let recorded: Vec<u64> = record.disks().iter().map(|d| d.size).collect();
        if record.point() > 0 && (recorded != sizes || parents.iter().map(|p| p.size()).ne(sizes.iter().copied())) {
            return Err(differ(format!("the run's disks {sizes:?}, the record's {recorded:?}")));
        }
        let disks = sizes
            .iter()
            .enumerate()
            .map(|(d, &size)| {
                let map = record.disks().get(d).filter(|_| record.point() > 0).map_or_else(BTreeMap::new, |rd| {
                    rd.extents.iter().map(|e| (e.offset, Entry { len: e.len, id: e.id, state: State::Kept })).collect()
                });
                DiskState { size, map, stale: Ranges::default(), written: Ranges::default() }
            })
            .collect();
        Ok(Run {
            layer,
            parents,
            record,
            keys,
            note,
            state: Mutex::new(RunState { disks, stats: RunStats::default() }),
            index: OnceLock::new(),
            extra: Vec::new(),
            journal: None,
        })
    }

    /// Adds a place offered chunks may be copied from instead of sent:
    /// `src` holds `extents` (their ids under [`Run::keys`]; each is checked
    /// again when copied, so a wrong one only costs its sending). Call
    /// before the first offer.
    pub fn add_copy_source(&mut self, kind: CopyKind, src: Box<dyn DiskSource + 'a>, extents: &[Extent]) {
        let ids = extents.iter().map(|e| (e.id, (e.offset, e.len))).collect();
        self.extra.push(CopySource { src, ids, kind });
    }

    /// Keeps every extent that arrives in `journal` too, so that an attempt
    /// cut short can be resumed without sending it again.
    pub(crate) fn set_journal(&mut self, journal: crate::journal::JournalWriter) {
        self.journal = Some(journal);
    }

    /// Makes this run resumable through the resume journal at `path` (the
    /// format of `docs/replica-dir.md` §8), for targets whose own layer
    /// cannot outlive an attempt: what an earlier attempt kept there is
    /// offered as a place to copy from ([`CopyKind::Resume`], each chunk
    /// re-hashed to its id before use), every extent that arrives is
    /// appended, and the journal is deleted when the run commits. Call
    /// before the first offer, for a replica's first point only. Returns the
    /// bytes of extents the journal already held.
    ///
    /// # Errors
    /// The journal cannot be opened, read or created.
    pub fn resume_journal(&mut self, path: &std::path::Path) -> Result<u64> {
        let (writer, held) = crate::journal::JournalWriter::open(path)?;
        let mut bytes = 0;
        if let Some((src, extents)) = held {
            bytes = extents.iter().map(|e| e.len).sum();
            self.add_copy_source(CopyKind::Resume, Box::new(src), &extents);
        }
        self.set_journal(writer);
        Ok(bytes)
    }

    /// The chunks of disk `disk` as the new point holds them so far, in
    /// order: what its digest is computed over.
    ///
    /// # Errors
    /// [`ReplicaError::InvalidArgument`] for a disk the run does not have,
    /// or one holding ranges whose ids are known only at commit (written
    /// raw, or parts of chunks an offer cut).
    pub fn disk_extents(&self, disk: usize) -> Result<Vec<Extent>> {
        let st = self.state.locked();
        let d = st.disks.get(disk).ok_or_else(|| {
            ReplicaError::InvalidArgument(format!("disk {disk}: the run has {} disk(s)", st.disks.len()))
        })?;
        if let Some(r) = d.stale.iter().next() {
            return Err(ReplicaError::InvalidArgument(format!(
                "disk {disk}: range {}..{} has ids known only at commit",
                r.start, r.end
            )));
        }
        Ok(d.map.iter().map(|(o, e)| Extent { offset: *o, len: e.len, id: e.id }).collect())
    }

    /// The id the new point will have.
    pub fn point(&self) -> u64 {
        self.layer.point()
    }
    /// The sizes of the run's disks.
    pub fn sizes(&self) -> Vec<u64> {
        self.state.locked().disks.iter().map(|d| d.size).collect()
    }
    /// The replica's keys: offered ids must be made with them.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
    /// The record of the point the run starts from.
    pub fn base_record(&self) -> &Record {
        &self.record
    }
    /// Why the record of the point the run starts from was rebuilt, when it was.
    pub fn record_note(&self) -> Option<&str> {
        self.note.as_deref()
    }
    /// Byte counts so far.
    pub fn stats(&self) -> RunStats {
        self.state.locked().stats
    }

    fn check_range(&self, disk: usize, r: &Range<u64>) -> Result<u64> {
        let st = self.state.locked();
        let d = st.disks.get(disk).ok_or_else(|| {
            ReplicaError::InvalidArgument(format!("disk {disk}: the run has {} disk(s)", st.disks.len()))
        })?;
        let size = d.size;
        if r.start > r.end || r.end > size {
            return Err(ReplicaError::InvalidArgument(format!(
                "disk {disk}: range {}..{} is not inside the {size}-byte disk",
                r.start, r.end
            )));
        }
        Ok(size)
    }

    /// Where each id of the newest point lies (built on first use).
    fn index(&self) -> &HashMap<ChunkId, (usize, u64)> {
        self.index.get_or_init(|| {
            let mut m = HashMap::new();
            if self.parents.is_empty() {
                return m;
            }
            for (d, rd) in self.record.disks().iter().enumerate() {
                for e in &rd.extents {
                    m.entry(e.id).or_insert((d, e.offset));
                }
            }
            m
        })
    }

    /// The sender's offer for `span` of disk `disk`: in the new point,
    /// `span` holds exactly `extents` (sorted, disjoint, inside `span`, each
    /// the bytes of one chunk with its id under [`Run::keys`]) and zeroes
    /// between them. Extents the newest point holds in place cost nothing;
    /// those it holds elsewhere are copied locally (and checked); the holes
    /// are zeroed where needed. Returns the indices (in order) of the
    /// extents whose data must be sent with [`Run::write_extent`].
    ///
    /// # Errors
    /// [`ReplicaError::InvalidArgument`] for a disk the run does not have,
    /// a span outside the disk, extents out of order, overlapping, empty,
    /// longer than [`MAX_EXTENT`], outside the span or not chunks of the
    /// replica's chunking (off its grid), or a span that cuts an extent
    /// still awaited; a read or write failure.
    pub fn offer(&self, disk: usize, span: Range<u64>, extents: &[Extent]) -> Result<Vec<usize>> {
        let size = self.check_range(disk, &span)?;
        let bad = |i: usize, e: &Extent, why: &str| {
            ReplicaError::InvalidArgument(format!(
                "disk {disk}: offered extent {i} at {} ({} bytes) {why}",
                e.offset, e.len
            ))
        };
        let mut at = span.start;
        for (i, e) in extents.iter().enumerate() {
            if e.len == 0 || e.len > MAX_EXTENT {
                return Err(bad(i, e, &format!("has a length out of 1..={MAX_EXTENT}")));
            }
            if e.offset < at {
                return Err(bad(i, e, "is out of order, overlaps another or starts before the span"));
            }
            if e.offset.checked_add(e.len).is_none_or(|end| end > span.end) {
                return Err(bad(i, e, &format!("ends past the span {}..{}", span.start, span.end)));
            }
            at = e.end();
        }
        // Each must be a chunk of the replica's chunking: the record's
        // ranges stay on its grid, so that a range re-cut at commit starts
        // at a chunk boundary.
        check_extents(disk, size, &self.record.chunking(), extents).map_err(ReplicaError::InvalidArgument)?;
        let mut need = Vec::new();
        let mut copies = Vec::new();
        let mut zero = Vec::new();
        {
            let mut st = self.state.locked();
            let RunState { disks, stats } = &mut *st;
            let ds = &mut disks[disk];
            ds.check_pending(disk, span.clone(), span.clone(), "an offer's span")?;
            // What the layer may hold that is not zero, inside the span.
            let mut maybe = Ranges::default();
            for (o, e) in ds.overlapping(span.clone()) {
                maybe.insert(o.max(span.start)..(o + e.len).min(span.end));
            }
            for r in ds.stale.within(span.clone()).into_iter().chain(ds.written.within(span.clone())) {
                maybe.insert(r);
            }
            let mut states = Vec::with_capacity(extents.len());
            for (i, e) in extents.iter().enumerate() {
                stats.offered_bytes += e.len;
                let held =
                    ds.map.get(&e.offset).filter(|h| h.len == e.len && h.id == e.id && h.state != State::Pending);
                if let Some(h) = held {
                    stats.present_bytes += e.len;
                    states.push(h.state);
                    continue;
                }
                states.push(State::Pending);
                let found = self.index().get(&e.id).map(|&(d, o)| Loc::Parent(d, o)).or_else(|| {
                    self.extra.iter().enumerate().find_map(|(x, c)| {
                        c.ids.get(&e.id).filter(|(_, len)| *len == e.len).map(|&(o, _)| Loc::Extra(x, o))
                    })
                });
                match found {
                    Some(loc) => copies.push((i, loc)),
                    None => need.push(i),
                }
            }
            // The holes of the span: zero what may not be zero there.
            let mut gap_start = span.start;
            for e in extents.iter().map(|e| e.offset..e.end()).chain(std::iter::once(span.end..span.end)) {
                zero.extend(maybe.within(gap_start..e.start));
                gap_start = e.end;
            }
            ds.clear(span.clone());
            ds.stale.remove(span.clone());
            for (e, state) in extents.iter().zip(states) {
                ds.map.insert(e.offset, Entry { len: e.len, id: e.id, state });
            }
            stats.zeroed_bytes += zero.iter().map(|r| r.end - r.start).sum::<u64>();
        }
        for r in zero {
            self.layer.write_zeroes(disk, r.start, r.end - r.start)?;
        }
        let mut buf = Vec::new();
        for (i, loc) in copies {
            let e = &extents[i];
            buf.resize(e.len as usize, 0);
            let (src, so): (&dyn DiskSource, u64) = match loc {
                Loc::Parent(sd, so) => (&*self.parents[sd], so),
                Loc::Extra(x, so) => (&*self.extra[x].src, so),
            };
            let ok = so + e.len <= src.size() && src.read_at(so, &mut buf).is_ok() && self.keys.hash(&buf) == e.id;
            if !ok {
                need.push(i); // the record was wrong about it: have it sent
                continue;
            }
            self.layer.write_at(disk, e.offset, &buf)?;
            let mut st = self.state.locked();
            match loc {
                Loc::Parent(..) => st.stats.copied_bytes += e.len,
                Loc::Extra(x, _) => match self.extra[x].kind {
                    CopyKind::Seed => st.stats.seeded_bytes += e.len,
                    CopyKind::Resume => st.stats.resumed_bytes += e.len,
                },
            }
            let ds = &mut st.disks[disk];
            if let Some(en) = ds.map.get_mut(&e.offset).filter(|en| en.state == State::Pending && en.id == e.id) {
                en.state = State::Written;
            }
            ds.written.insert(e.offset..e.end());
        }
        need.sort_unstable();
        self.state.locked().stats.needed_bytes += need.iter().map(|&i| extents[i].len).sum::<u64>();
        Ok(need)
    }

    /// The data of an extent that an offer answered as needed: checked
    /// against the offered id, then written. Sending an extent that already
    /// arrived again is harmless.
    ///
    /// # Errors
    /// [`ReplicaError::InvalidArgument`] when no extent of that length is
    /// awaited at `offset`; [`ReplicaError::ExtentMismatch`] when the data
    /// does not hash to the offered id (nothing is written); a write failure.
    pub fn write_extent(&self, disk: usize, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(disk, &(offset..offset.saturating_add(data.len() as u64)))?;
        let len = data.len() as u64;
        let (id, again) = {
            let st = self.state.locked();
            match st.disks[disk].map.get(&offset) {
                Some(e) if e.len == len && e.state != State::Kept => (e.id, e.state == State::Written),
                _ => {
                    return Err(ReplicaError::InvalidArgument(format!(
                        "disk {disk}: no offered extent of {len} bytes is awaited at {offset}"
                    )));
                }
            }
        };
        let found = self.keys.hash(data);
        if found != id {
            return Err(ReplicaError::ExtentMismatch { disk, offset, len, expected: id, found });
        }
        if again {
            return Ok(());
        }
        self.layer.write_at(disk, offset, data)?;
        if let Some(j) = &self.journal {
            j.append(&id, data)?;
        }
        let mut st = self.state.locked();
        st.stats.received_bytes += len;
        let ds = &mut st.disks[disk];
        if let Some(e) = ds.map.get_mut(&offset).filter(|e| e.state == State::Pending && e.id == id) {
            e.state = State::Written;
        }
        ds.written.insert(offset..offset + len);
        Ok(())
    }

    /// Writes `data` at `offset` of disk `disk` without an offer; the
    /// range's ids are computed at commit.
    ///
    /// # Errors
    /// Out of the disk, over an extent still awaited, or a write failure.
    pub fn write_at(&self, disk: usize, offset: u64, data: &[u8]) -> Result<()> {
        let r = offset..offset.saturating_add(data.len() as u64);
        self.check_range(disk, &r)?;
        {
            let mut st = self.state.locked();
            st.stats.raw_bytes += r.end - r.start;
            let ds = &mut st.disks[disk];
            ds.check_pending(disk, r.clone(), 0..0, "a raw write")?;
            ds.clear(r.clone());
            ds.stale.insert(r.clone());
            ds.written.insert(r);
        }
        self.layer.write_at(disk, offset, data)
    }

    /// Makes `len` bytes at `offset` of disk `disk` read as zeroes, without
    /// an offer.
    ///
    /// # Errors
    /// Out of the disk, over an extent still awaited, or a write failure.
    pub fn write_zeroes(&self, disk: usize, offset: u64, len: u64) -> Result<()> {
        let r = offset..offset.saturating_add(len);
        self.check_range(disk, &r)?;
        {
            let mut st = self.state.locked();
            st.stats.zeroed_bytes += len;
            let ds = &mut st.disks[disk];
            ds.check_pending(disk, r.clone(), 0..0, "zeroing")?;
            // Known zeroes now (the parts of chunks it cuts, outside it, become stale).
            ds.clear(r.clone());
            ds.stale.remove(r);
        }
        self.layer.write_zeroes(disk, offset, len)
    }

    /// Makes the run the replica's newest point, stamped `time_ms`
    /// (milliseconds since the Unix epoch), with the record of its chunks.
    ///
    /// # Errors
    /// [`ReplicaError::Incomplete`] while an offered extent has not arrived
    /// (the run is discarded); a read, write or sync failure. After an
    /// error the replica is at its previous point.
    pub fn commit(self, time_ms: u64) -> Result<Committed> {
        let Run { mut layer, record, keys, state, journal, .. } = self;
        let RunState { mut disks, mut stats } = state.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (d, ds) in disks.iter().enumerate() {
            let pending: Vec<(&u64, &Entry)> = ds.map.iter().filter(|(_, e)| e.state == State::Pending).collect();
            if let Some((o, e)) = pending.first() {
                return Err(ReplicaError::Incomplete { disk: d, count: pending.len(), offset: **o, len: e.len });
            }
        }
        let sources = layer.seal()?;
        let chunking = record.chunking();
        let unit = grid(&chunking);
        let cancel = CancelToken::new();
        let mut out = Vec::with_capacity(disks.len());
        for (d, ds) in disks.iter_mut().enumerate() {
            // Stale ranges, out to the grid and over every chunk they touch.
            let mut todo: Vec<Range<u64>> = ds.stale.iter().collect();
            loop {
                let mut grown = Ranges::default();
                for r in &todo {
                    let (mut s, mut e) =
                        (r.start / unit * unit, r.end.div_ceil(unit).saturating_mul(unit).min(ds.size));
                    for (o, en) in ds.overlapping(s..e) {
                        ds.map.remove(&o);
                        s = s.min(o);
                        e = e.max(o + en.len);
                    }
                    grown.insert(s..e);
                }
                let grown: Vec<Range<u64>> = grown.iter().collect();
                if grown == todo {
                    break;
                }
                todo = grown;
            }
            for r in todo {
                stats.rehashed_bytes += cut_range(&*sources[d], r, &chunking, &keys, &cancel, &mut |_, chunks| {
                    for (e, _) in chunks {
                        ds.map.insert(e.offset, Entry { len: e.len, id: e.id, state: State::Written });
                    }
                    Ok(())
                })?;
            }
            let extents = ds.map.iter().map(|(o, e)| Extent { offset: *o, len: e.len, id: e.id }).collect();
            out.push(RecordDisk { size: ds.size, extents });
        }
        let new = Record::new(layer.point(), chunking, out)?;
        let point = layer.commit(time_ms, &new)?;
        if let Some(j) = journal {
            // Committed: what the attempts received is the point now.
            j.discard();
        }
        Ok(Committed { point, stats })
    }

    /// Discards the run: it never becomes a point.
    ///
    /// # Errors
    /// A file could not be removed (the next writer removes it).
    pub fn abort(self) -> Result<()> {
        self.layer.abort()
    }
}

#[cfg(test)]
mod tests {
    use super::Ranges;

    #[test]
    fn ranges_merge_split_and_clip() {
        let mut r = Ranges::default();
        r.insert(10..20);
        r.insert(30..40);
        r.insert(20..25);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![10..25, 30..40]);
        r.insert(5..35);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![5..40]);
        r.remove(10..12);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![5..10, 12..40]);
        assert_eq!(r.within(8..20), vec![8..10, 12..20]);
        r.remove(0..100);
        assert!(r.iter().next().is_none());
    }
}
