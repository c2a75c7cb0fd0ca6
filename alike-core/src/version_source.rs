//! A stored version's disk read back as a [`DiskSource`]: what vaulting
//! (store → store copy) backs up. Its change token names the version, and
//! `changed_ranges` against an earlier version of the same store compares
//! block maps, so copying a new version reads only the blocks that differ.

use crate::Recover;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use crate::backup::load_map;
use crate::blob::{chunk_in, decode_frame};
use crate::{BlockMap, ChunkId, ChunkStore, DiskRecord, DiskSource, Error, FrameRef, Keys, Manifest, Result};

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
    maps: Mutex<Lru<usize, Arc<BlockMap>>>,
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

    fn bs(&self) -> u64 {
        u64::from(self.disk.block_size)
    }

    fn blocks_in_map(&self, m: usize) -> usize {
        let bpm = u64::from(self.disk.blocks_per_map);
        (self.disk.block_count() - m as u64 * bpm).min(bpm) as usize
    }

    fn map(&self, m: usize) -> Result<Arc<BlockMap>> {
        if let Some(x) = self.maps.locked().get(&m) {
            return Ok(x);
        }
        let id = self.disk.maps.get(m).ok_or_else(|| Error::Malformed {
            what: format!("version {} disk {}", self.version, self.disk.position),
            offset: m as u64,
            reason: "block map index past the disk".into(),
        })?;
        let map = Arc::new(load_map(self.store, self.keys, id, self.blocks_in_map(m))?);
        self.maps.locked().put(m, map.clone());
        Ok(map)
    }

    fn chunk(&self, id: &ChunkId, blk: u64) -> Result<Vec<u8>> {
        let needed_by = || format!("VM {} disk {} at offset {}", self.vm, self.disk.position, blk * self.bs());
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
        Ok(chunk_in(self.keys, &plain, &loc, id)?.to_vec())
    }

    /// Byte ranges whose blocks differ between this disk and `other`'s maps.
    fn diff(&self, other: &DiskRecord) -> Result<Vec<Range<u64>>> {
        let bs = self.bs();
        let bpm = u64::from(self.disk.blocks_per_map);
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut push = |a: u64, b: u64| match out.last_mut() {
            Some(r) if r.end == a => r.end = b,
            _ => out.push(a..b),
        };
        for (m, id) in self.disk.maps.iter().enumerate() {
            if other.maps.get(m) == Some(id) {
                continue;
            }
            let n = self.blocks_in_map(m);
            let mine = self.map(m)?;
            let theirs = load_map(self.store, self.keys, &other.maps[m], n)?;
            for (i, (a, b)) in mine.entries.iter().zip(&theirs.entries).enumerate() {
                if a != b {
                    let blk = m as u64 * bpm + i as u64;
                    push(blk * bs, ((blk + 1) * bs).min(self.disk.size));
                }
            }
        }
        Ok(out)
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
        let bs = self.bs();
        let bpm = u64::from(self.disk.blocks_per_map);
        let mut out: Vec<Range<u64>> = Vec::new();
        for m in 0..self.disk.maps.len() {
            let map = self.map(m)?;
            for (i, e) in map.entries.iter().enumerate() {
                if e.is_some() {
                    let blk = m as u64 * bpm + i as u64;
                    let (a, b) = (blk * bs, ((blk + 1) * bs).min(self.disk.size));
                    match out.last_mut() {
                        Some(r) if r.end == a => r.end = b,
                        _ => out.push(a..b),
                    }
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
                    && d.blocks_per_map == self.disk.blocks_per_map =>
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
        let bs = self.bs();
        let bpm = u64::from(self.disk.blocks_per_map);
        let mut pos = offset;
        while pos < end {
            let blk = pos / bs;
            let in_blk = (pos - blk * bs) as usize;
            let n = ((blk + 1) * bs).min(end) - pos;
            let dst = &mut buf[(pos - offset) as usize..(pos - offset + n) as usize];
            let map = self.map((blk / bpm) as usize)?;
            match map.entries[(blk % bpm) as usize] {
                None => dst.fill(0),
                Some(id) => {
                    let c = self.chunk(&id, blk)?;
                    let src = c.get(in_blk..in_blk + n as usize).ok_or_else(|| Error::Malformed {
                        what: format!("chunk {} of {}", id.short(), self.label()),
                        offset: in_blk as u64,
                        reason: format!("{} bytes, shorter than its block", c.len()),
                    })?;
                    dst.copy_from_slice(src);
                }
            }
            pos += n;
        }
        Ok(())
    }
}
