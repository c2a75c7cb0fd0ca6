//! A stored version's disk read back as a [`DiskSource`]: what vaulting
//! (store → store copy) backs up. Its change token names the version, and
//! `changed_ranges` against an earlier version of the same store compares
//! block maps, so copying a new version reads only the blocks that differ.

use crate::Recover;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use crate::blob::{chunk_in, decode_frame};
use crate::extents::{Extent, Window, load_window};
use crate::{ChunkId, ChunkStore, DiskRecord, DiskSource, Error, FrameRef, Keys, Manifest, Result};
use std::collections::HashSet;

/// Looks up another version of the same store by id (`Ok(None)`: gone).
pub type ManifestLookup<'a> = dyn Fn(&str) -> Result<Option<Manifest>> + Send + Sync + 'a;

/// Block maps and opened frames kept at most (bounded memory on any disk size).
const MAPS_CACHED: usize = 8;
const FRAMES_CACHED: usize = 16;

/// Disk `position` of a stored version, as a source.
pub struct VersionSource<'a> {
    store: &'a dyn ChunkStore,
    keys: &'a Keys,
    store_id: String,
    version: String,
    vm: String,
    disk: DiskRecord,
    lookup: &'a ManifestLookup<'a>,
    maps: Mutex<Lru<usize, Arc<Window>>>,
    frames: Mutex<Lru<FrameRef, Arc<Vec<u8>>>>,
}

/// A tiny least-recently-used map (a handful of entries: linear scans are fine).
struct Lru<K, V> {
    cap: usize,
    tick: u64,
    items: HashMap<K, (u64, V)>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Lru<K, V> {
    fn new(cap: usize) -> Self {
        Lru { cap, tick: 0, items: HashMap::new() }
    }
    fn get(&mut self, k: &K) -> Option<V> {
        self.tick += 1;
        let t = self.tick;
        self.items.get_mut(k).map(|e| {
            e.0 = t;
            e.1.clone()
        })
    }
    fn put(&mut self, k: K, v: V) {
        if self.items.len() >= self.cap
            && let Some(old) = self.items.iter().min_by_key(|(_, e)| e.0).map(|(k, _)| k.clone())
        {
            self.items.remove(&old);
        }
        self.tick += 1;
        self.items.insert(k, (self.tick, v));
    }
}

const TOKEN_PREFIX: &str = "alike-version:";

impl<'a> VersionSource<'a> {
    /// Disk `position` of version `version_id` (whose manifest is
    /// `manifest`) in the store `store_id`; `lookup` finds other versions
    /// of that store for [`DiskSource::changed_ranges`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the version has no such disk.
    pub fn new(
        store: &'a dyn ChunkStore,
        keys: &'a Keys,
        store_id: &str,
        version_id: &str,
        manifest: &Manifest,
        position: u32,
        lookup: &'a ManifestLookup<'a>,
    ) -> Result<VersionSource<'a>> {
        let disk = manifest
            .disks
            .iter()
            .find(|d| d.position == position)
            .cloned()
            .ok_or_else(|| Error::InvalidArgument(format!("version {version_id} has no disk {position}")))?;
        Ok(VersionSource {
            store,
            keys,
            store_id: store_id.to_string(),
            version: version_id.to_string(),
            vm: manifest.vm.name.clone(),
            disk,
            lookup,
            maps: Mutex::new(Lru::new(MAPS_CACHED)),
            frames: Mutex::new(Lru::new(FRAMES_CACHED)),
        })
    }

    fn window(&self, m: usize) -> Result<Arc<Window>> {
        if let Some(x) = self.maps.locked().get(&m) {
            return Ok(x);
        }
        if m >= self.disk.maps.len() {
            return Err(Error::Malformed {
                what: format!("version {} disk {}", self.version, self.disk.position),
                offset: m as u64,
                reason: "block map index past the disk".into(),
            });
        }
        let w = Arc::new(load_window(self.store, self.keys, &self.disk, m)?);
        self.maps.locked().put(m, w.clone());
        Ok(w)
    }

    fn chunk(&self, id: &ChunkId, offset: u64) -> Result<Arc<Vec<u8>>> {
        let needed_by = || format!("VM {} disk {} at offset {offset}", self.vm, self.disk.position);
        let loc = self.store.locate(id)?.ok_or_else(|| Error::MissingChunk { id: *id, needed_by: needed_by() })?;
        let cached = self.frames.locked().get(&loc.frame);
        let plain = match cached {
            Some(p) => p,
            None => {
                let stored = self.store.read_frame(&loc.frame)?;
                let p = Arc::new(decode_frame(self.keys, &loc.frame, &stored)?);
                self.frames.locked().put(loc.frame, p.clone());
                p
            }
        };
        Ok(Arc::new(chunk_in(self.keys, &plain, &loc, id)?.to_vec()))
    }

    /// Byte ranges whose chunks differ between this disk and `other`'s maps
    /// (same geometry): an extent of either side that the other lacks.
    fn diff(&self, other: &DiskRecord) -> Result<Vec<Range<u64>>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (m, id) in self.disk.maps.iter().enumerate() {
            if other.maps.get(m) == Some(id) {
                continue;
            }
            let mine = self.window(m)?;
            let theirs = load_window(self.store, self.keys, other, m)?;
            let a: HashSet<&Extent> = mine.extents.iter().collect();
            let b: HashSet<&Extent> = theirs.extents.iter().collect();
            out.extend(mine.extents.iter().filter(|e| !b.contains(e)).map(|e| (e.offset, e.end())));
            out.extend(theirs.extents.iter().filter(|e| !a.contains(e)).map(|e| (e.offset, e.end())));
        }
        Ok(crate::merge_ranges(out).into_iter().map(|(a, b)| a..b).collect())
    }
}

impl DiskSource for VersionSource<'_> {
    fn label(&self) -> String {
        format!(
            "{} (version {} disk {})",
            self.disk.label,
            &self.version[..12.min(self.version.len())],
            self.disk.position
        )
    }

    fn size(&self) -> u64 {
        self.disk.size
    }

    fn allocated_ranges(&self) -> Result<Vec<Range<u64>>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for m in 0..self.disk.maps.len() {
            for e in &self.window(m)?.extents {
                match out.last_mut() {
                    Some(r) if r.end == e.offset => r.end = e.end(),
                    _ => out.push(e.offset..e.end()),
                }
            }
        }
        Ok(out)
    }

    fn change_token(&self) -> Option<Vec<u8>> {
        Some(format!("{TOKEN_PREFIX}{}:{}:{}", self.store_id, self.version, self.disk.position).into_bytes())
    }

    fn changed_ranges(&self, since: &[u8]) -> Result<Option<Vec<Range<u64>>>> {
        let Some(rest) = std::str::from_utf8(since).ok().and_then(|s| s.strip_prefix(TOKEN_PREFIX)) else {
            return Ok(None);
        };
        let mut parts = rest.split(':');
        let (Some(store), Some(version), Some(pos), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(None);
        };
        if store != self.store_id || pos != self.disk.position.to_string() {
            return Ok(None);
        }
        let Some(earlier) = (self.lookup)(version)? else { return Ok(None) };
        match earlier.disks.iter().find(|d| d.position == self.disk.position) {
            Some(d)
                if d.size == self.disk.size
                    && d.block_size == self.disk.block_size
                    && d.blocks_per_map == self.disk.blocks_per_map
                    && d.chunking == self.disk.chunking =>
            {
                Ok(Some(self.diff(d)?))
            }
            _ => Ok(None),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.disk.size).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "read of {} bytes at {offset} is past the end of {} ({} bytes)",
                buf.len(),
                self.label(),
                self.disk.size
            ))
        })?;
        let wb = self.disk.window_bytes();
        let mut pos = offset;
        while pos < end {
            let w = self.window((pos / wb) as usize)?;
            let wend = w.range.end.min(end);
            while pos < wend {
                let dst_at = (pos - offset) as usize;
                match w.find(pos) {
                    None => {
                        // A hole up to the next extent.
                        let i = w.extents.partition_point(|e| e.offset <= pos);
                        let to = w.extents.get(i).map_or(wend, |e| e.offset.min(wend));
                        buf[dst_at..(to - offset) as usize].fill(0);
                        pos = to;
                    }
                    Some(e) => {
                        let c = self.chunk(&e.id, e.offset)?;
                        let to = e.end().min(wend);
                        let src = c.get((pos - e.offset) as usize..(to - e.offset) as usize).ok_or_else(|| {
                            Error::Malformed {
                                what: format!("chunk {} of {}", e.id.short(), self.label()),
                                offset: pos - e.offset,
                                reason: format!("{} bytes, shorter than its extent ({})", c.len(), e.len),
                            }
                        })?;
                        buf[dst_at..(to - offset) as usize].copy_from_slice(src);
                        pos = to;
                    }
                }
            }
        }
        Ok(())
    }
}
