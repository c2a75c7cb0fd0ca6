//! A disk of a stored version read on demand, the part NBD export and file
//! restore share: the disk's windows (block maps, either chunking) map a
//! read to chunks and holes; chunks are located and copied out of decoded
//! frames held in one cache bounded in bytes, shared by every disk a
//! session reads (a frame being loaded is waited for, never loaded twice);
//! a chunk's id is verified the first time it is served from a frame.
//! Windows are cached per disk (32 of them). Every stored byte fetched is
//! counted ([`StoreReader::store_bytes`]).
//!
//! A read that meets a missing pack or chunk (GC repacked it under a long
//! session) syncs the index cache and tries once more ([`DiskReader::read_at`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use alike_ads::Repository;
use alike_core::{ChunkId, ChunkLocation, ChunkStore, DiskRecord, ErrorKind, FrameRef, Recover, Window};

/// Windows (block maps) cached per disk.
const WINDOWS_CACHED: usize = 32;

impl crate::Store {
    /// Holds `version` for a long reader (an NBD export, a file restore): a
    /// `read` lock naming that version only, so GC keeps its data and
    /// collects the rest, prune keeps it and forget refuses it. The version
    /// is held first and then checked to still exist (a forget between the
    /// caller's look-up and the hold would leave GC free to delete its
    /// data); the index cache is brought up to date.
    ///
    /// # Errors
    /// The version gone ([`crate::ErrorKind::NotFound`]); the store failing.
    pub(crate) fn hold_version(&self, version: &crate::Version) -> crate::Result<alike_ads::LockGuard> {
        let hold = self.repo().lock_versions(std::slice::from_ref(&version.id))?;
        match self.repo().read_manifest(&version.id) {
            Err(alike_ads::Error::NotFound { .. }) => {
                return Err(crate::Error::VersionNotFound { spec: version.id.clone(), vm: Some(version.vm.clone()) });
            }
            r => drop(r?),
        }
        self.repo().sync_cache()?;
        Ok(hold)
    }
}

// ---------------------------------------------------------------------------
// Frames: one bounded cache per session

/// A decoded frame and the chunks of it already verified.
pub(crate) struct Frame {
    plain: Vec<u8>,
    verified: Mutex<HashSet<ChunkId>>,
}

/// Why a frame could not be loaded (kept in the cache slot, so it must clone).
#[derive(Debug, Clone)]
pub(crate) struct LoadError {
    kind: ErrorKind,
    message: String,
}

type Slot = Arc<OnceLock<std::result::Result<Arc<Frame>, LoadError>>>;

struct CacheInner {
    tick: u64,
    bytes: u64,
    slots: HashMap<FrameRef, (u64, Slot)>,
    order: BTreeMap<u64, FrameRef>,
}

/// Decoded frames, least recently used out first, at most `cap` plaintext
/// bytes (plus frames being loaded).
struct FrameCache {
    cap: u64,
    inner: Mutex<CacheInner>,
}

impl FrameCache {
    fn new(cap: u64) -> FrameCache {
        FrameCache {
            cap,
            inner: Mutex::new(CacheInner { tick: 0, bytes: 0, slots: HashMap::new(), order: BTreeMap::new() }),
        }
    }

    /// The slot of `f`, new (and counted) if absent; evicts the least recently used.
    fn slot(&self, f: &FrameRef) -> Slot {
        let mut c = self.inner.locked();
        c.tick += 1;
        let t = c.tick;
        if let Some((old, slot)) = c.slots.get(f).map(|(t, s)| (*t, s.clone())) {
            c.order.remove(&old);
            c.order.insert(t, *f);
            c.slots.insert(*f, (t, slot.clone()));
            return slot;
        }
        let slot: Slot = Arc::new(OnceLock::new());
        c.slots.insert(*f, (t, slot.clone()));
        c.order.insert(t, *f);
        c.bytes += u64::from(f.raw_len);
        while c.bytes > self.cap && c.order.len() > 1 {
            let Some((&oldest, &victim)) = c.order.iter().next() else { break };
            c.order.remove(&oldest);
            c.slots.remove(&victim);
            c.bytes = c.bytes.saturating_sub(u64::from(victim.raw_len));
        }
        slot
    }

    /// Forgets `f` if its slot is still `slot` (a failed load is tried again next time).
    fn forget(&self, f: &FrameRef, slot: &Slot) {
        let mut c = self.inner.locked();
        if let Some((t, s)) = c.slots.get(f).map(|(t, s)| (*t, s.clone()))
            && Arc::ptr_eq(&s, slot)
        {
            c.slots.remove(f);
            c.order.remove(&t);
            c.bytes = c.bytes.saturating_sub(u64::from(f.raw_len));
        }
    }
}

/// Reads frames from the store for every disk of a session (an NBD
/// export, a file restore), through one cache.
pub(crate) struct StoreReader {
    pub(crate) repo: Arc<Repository>,
    cache: FrameCache,
    store_bytes: AtomicU64,
}

impl StoreReader {
    /// A reader of `repo` keeping at most `cache_bytes` of decoded frames.
    pub(crate) fn new(repo: Arc<Repository>, cache_bytes: u64) -> StoreReader {
        StoreReader { repo, cache: FrameCache::new(cache_bytes), store_bytes: AtomicU64::new(0) }
    }

    /// Stored bytes read from the store so far (frames as stored).
    pub(crate) fn store_bytes(&self) -> u64 {
        self.store_bytes.load(Ordering::Relaxed)
    }

    /// The decoded frame `f`, from the cache or the store (a load in flight is waited for).
    pub(crate) fn frame(&self, f: &FrameRef) -> std::result::Result<Arc<Frame>, LoadError> {
        let slot = self.cache.slot(f);
        let r = slot.get_or_init(|| {
            let load = || -> alike_core::Result<Frame> {
                let stored = self.repo.read_frame(f)?;
                self.store_bytes.fetch_add(stored.len() as u64, Ordering::Relaxed);
                let plain = alike_core::decode_frame(self.repo.keys(), f, &stored)?;
                Ok(Frame { plain, verified: Mutex::new(HashSet::new()) })
            };
            load().map(Arc::new).map_err(|e| LoadError { kind: e.kind(), message: e.to_string() })
        });
        if r.is_err() {
            self.cache.forget(f, &slot);
        }
        r.clone()
    }
}

// ---------------------------------------------------------------------------
// One disk of a version

/// Cached windows: (tick, [(map index, last use, window)]).
type Windows = (u64, Vec<(usize, u64, Arc<Window>)>);

/// A piece of a read: disk bytes `range` held by `extent`.
pub(crate) struct Part {
    pub(crate) id: ChunkId,
    pub(crate) extent_offset: u64,
    pub(crate) range: Range<u64>,
}

/// One disk of a stored version, read from the store on demand.
pub(crate) struct DiskReader {
    reader: Arc<StoreReader>,
    /// The disk's stored record.
    pub(crate) record: DiskRecord,
    /// What errors and logs call it (`VM web01 disk 0 (version 1a2b…)`).
    pub(crate) label: String,
    windows: Mutex<Windows>,
}

impl DiskReader {
    /// Disk `record` of `version`, read through `reader`.
    pub(crate) fn new(reader: Arc<StoreReader>, record: DiskRecord, version: &crate::Version) -> DiskReader {
        let label = format!("VM {} disk {} (version {})", version.vm, record.position, version.short_id());
        DiskReader { reader, record, label, windows: Mutex::new((0, Vec::new())) }
    }

    /// Reads `buf` at `offset` (within the disk); the holes it met back.
    /// A chunk that moved (GC repacked it) or a new index segment this
    /// handle has not loaded: the index cache is synced and the read tried
    /// once more.
    ///
    /// # Errors
    /// Damage that a sync does not cure, the store failing.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::Result<Vec<Range<u64>>> {
        match self.read_once(offset, buf) {
            Ok(h) => Ok(h),
            Err(e) if e.is_damage() => {
                tracing::info!(disk = %self.label, error = %e, "a chunk moved: syncing the index cache");
                self.reader.repo.sync_cache()?;
                Ok(self.read_once(offset, buf)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn window(&self, m: usize) -> alike_core::Result<Arc<Window>> {
        {
            let mut g = self.windows.locked();
            let (tick, w) = &mut *g;
            *tick += 1;
            if let Some(e) = w.iter_mut().find(|e| e.0 == m) {
                e.1 = *tick;
                return Ok(e.2.clone());
            }
        }
        let loaded =
            Arc::new(alike_core::load_window(self.reader.repo.as_ref(), self.reader.repo.keys(), &self.record, m)?);
        let mut g = self.windows.locked();
        let (tick, w) = &mut *g;
        *tick += 1;
        if w.len() >= WINDOWS_CACHED
            && let Some(i) = w.iter().enumerate().min_by_key(|(_, e)| e.1).map(|(i, _)| i)
        {
            w.swap_remove(i);
        }
        w.push((m, *tick, loaded.clone()));
        Ok(loaded)
    }

    /// Data pieces and holes of `[start, end)`, in order.
    pub(crate) fn layout(&self, start: u64, end: u64) -> alike_core::Result<(Vec<Part>, Vec<Range<u64>>)> {
        let wb = self.record.window_bytes().max(1);
        let (mut parts, mut holes): (Vec<Part>, Vec<Range<u64>>) = (Vec::new(), Vec::new());
        let mut hole = |r: Range<u64>| match holes.last_mut() {
            Some(h) if h.end == r.start => h.end = r.end,
            _ => holes.push(r),
        };
        let mut pos = start;
        while pos < end {
            let w = self.window((pos / wb) as usize)?;
            let wend = w.range.end.min(end);
            if wend <= pos {
                return Err(alike_core::Error::Malformed {
                    what: self.label.clone(),
                    offset: pos,
                    reason: format!("window {} ends at {} (disk of {} bytes)", pos / wb, w.range.end, self.record.size),
                });
            }
            let mut i = w.extents.partition_point(|e| e.end() <= pos);
            while pos < wend {
                match w.extents.get(i) {
                    Some(e) if e.offset < wend => {
                        if e.offset > pos {
                            hole(pos..e.offset);
                            pos = e.offset;
                        }
                        let to = e.end().min(wend);
                        parts.push(Part { id: e.id, extent_offset: e.offset, range: pos..to });
                        pos = to;
                        i += 1;
                    }
                    _ => {
                        hole(pos..wend);
                        pos = wend;
                    }
                }
            }
        }
        Ok((parts, holes))
    }

    /// Copies the data pieces of a read into `buf` (which starts at `offset`).
    fn fill(&self, offset: u64, parts: &[Part], buf: &mut [u8]) -> alike_core::Result<()> {
        let ids: Vec<ChunkId> = parts.iter().map(|p| p.id).collect();
        let locs = self.reader.repo.locate_many(&ids)?;
        for (p, loc) in parts.iter().zip(locs) {
            let needed_by = || format!("{} at offset {}", self.label, p.range.start);
            let loc: ChunkLocation =
                loc.ok_or_else(|| alike_core::Error::MissingChunk { id: p.id, needed_by: needed_by() })?;
            let frame = self.reader.frame(&loc.frame).map_err(|e| match e.kind {
                ErrorKind::NotFound => {
                    alike_core::Error::MissingChunk { id: p.id, needed_by: format!("{}: {}", needed_by(), e.message) }
                }
                _ => alike_core::Error::Malformed { what: needed_by(), offset: 0, reason: e.message },
            })?;
            let chunk = self.chunk(&frame, &loc, &p.id)?;
            let from = (p.range.start - p.extent_offset) as usize;
            let n = (p.range.end - p.range.start) as usize;
            let src = chunk.get(from..from + n).ok_or_else(|| alike_core::Error::Malformed {
                what: format!("chunk {} of {}", p.id.short(), self.label),
                offset: from as u64,
                reason: format!("{} bytes, shorter than its extent", chunk.len()),
            })?;
            let at = (p.range.start - offset) as usize;
            buf[at..at + n].copy_from_slice(src);
        }
        Ok(())
    }

    /// The chunk's bytes in `frame`, its id checked the first time.
    pub(crate) fn chunk<'f>(
        &self,
        frame: &'f Frame,
        loc: &ChunkLocation,
        id: &ChunkId,
    ) -> alike_core::Result<&'f [u8]> {
        let keys = self.reader.repo.keys();
        let start = loc.offset as usize;
        let end = start + loc.len as usize;
        if frame.verified.locked().contains(id) {
            if let Some(b) = frame.plain.get(start..end) {
                return Ok(b);
            }
        }
        let b = alike_core::chunk_in(keys, &frame.plain, loc, id)?;
        frame.verified.locked().insert(*id);
        Ok(b)
    }

    pub(crate) fn read_once(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<Vec<Range<u64>>> {
        let end = offset + buf.len() as u64;
        let (parts, holes) = self.layout(offset, end)?;
        for h in &holes {
            buf[(h.start - offset) as usize..(h.end - offset) as usize].fill(0);
        }
        self.fill(offset, &parts, buf)?;
        Ok(holes)
    }

    /// Loads the frames of `range` into the cache and checks the chunks the
    /// range needs, so that the reader only copies (a prefetch job; errors
    /// are the reader's to meet).
    pub(crate) fn prefetch(&self, range: Range<u64>) {
        let Ok((parts, _)) = self.layout(range.start, range.end.min(self.record.size)) else { return };
        let ids: Vec<ChunkId> = parts.iter().map(|p| p.id).collect();
        let Ok(locs) = self.reader.repo.locate_many(&ids) else { return };
        let mut frame: Option<(FrameRef, Arc<Frame>)> = None;
        for (id, loc) in ids.iter().zip(locs) {
            let Some(loc) = loc else { continue };
            if frame.as_ref().is_none_or(|(f, _)| *f != loc.frame) {
                let Ok(f) = self.reader.frame(&loc.frame) else { continue };
                frame = Some((loc.frame, f));
            }
            if let Some((_, f)) = &frame {
                let _ = self.chunk(f, &loc, id);
            }
        }
    }
}
