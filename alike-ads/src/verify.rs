//! `verify`: proves that versions restore, and names what is damaged.
//!
//! *Quick*: every manifest and block map opens; every chunk a version needs
//! is in the index, in the trailer of the pack the index names, at the same
//! place, inside the pack. *Full*: also reads every pack once, checks its
//! BLAKE3 name (no key needed: bit rot is found even without it), opens every
//! frame a version needs (authentication, decompression) and re-hashes every
//! chunk.
//!
//! Damage is reported per object with the versions, disks and byte ranges it
//! breaks; nothing is repaired here.

use std::collections::{BTreeMap, HashMap, HashSet};

use alike_core::{ChunkId, ChunkLocation, FrameRef, chunk_in, decode_frame, load_window};
use serde::Serialize;

use crate::pack::{FOOTER_LEN, pack_key, read_trailer};
use crate::repo::Repository;
use crate::{Error, Result};

/// How deep to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyDepth {
    /// Structure, index and trailers; no chunk data read.
    Quick,
    /// Every byte a version needs, authenticated and re-hashed; every pack's name checked.
    Full,
}

/// Byte ranges of one disk of one version that a damaged object breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Affected {
    /// Version id.
    pub version: String,
    /// VM name.
    pub vm: String,
    /// Disk position.
    pub disk: u32,
    /// Broken byte ranges `[start, end)`, merged; empty when the whole version
    /// is broken (its manifest cannot be read, so its disks are unknown).
    pub ranges: Vec<(u64, u64)>,
}

/// One damaged object (or chunk) and what it breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// Store key of the damaged object (`packs/…`, `versions/…`, `index/…`).
    pub object: String,
    /// The chunk, when the damage is one chunk's.
    pub chunk: Option<String>,
    /// What check failed.
    pub reason: String,
    /// What it breaks (empty when no version in scope needs it).
    pub affects: Vec<Affected>,
}

/// The result of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Whether nothing is damaged (the same as [`VerifyReport::ok`]).
    pub ok: bool,
    /// `quick` or `full`.
    pub depth: String,
    /// Versions checked.
    pub versions: u64,
    /// Distinct chunks checked.
    pub chunks: u64,
    /// Packs read in full (full depth).
    pub packs_read: u64,
    /// Bytes read from packs.
    pub bytes_read: u64,
    /// Everything found damaged.
    pub damaged: Vec<Damage>,
    /// Data frames a full verification could not open because the store
    /// was opened with a write-only key (their packs' hashes were checked,
    /// their contents not).
    pub data_frames_not_opened: u64,
    /// What was not checked, and why; `None` when everything in scope was.
    pub not_checked: Option<String>,
}

impl VerifyReport {
    /// Whether nothing is damaged and everything in scope was checked.
    pub fn ok(&self) -> bool {
        self.damaged.is_empty() && self.not_checked.is_none()
    }
}

/// Where a chunk is used: (version index, disk position, start and end byte).
type Use = (usize, u32, u64, u64);

/// A version in scope: id, VM name, and per disk (position, block size, size).
type VersionInScope = (String, String, Vec<(u32, u64, u64)>);

struct Walk {
    /// Versions in scope.
    versions: Vec<VersionInScope>,
    /// Every data chunk in scope, sorted, once (32 bytes each: memory stays
    /// small for millions of chunks; uses are looked up only for damage).
    chunks: Vec<ChunkId>,
    /// Damage found so far: (object, chunk, reason), and pre-resolved damage.
    found: Vec<(String, Option<ChunkId>, String)>,
    damaged: Vec<Damage>,
    /// Where damaged chunks are used (filled by `resolve`).
    uses: HashMap<ChunkId, Vec<Use>>,
}

impl Repository {
    /// Verifies the versions whose ids are given (all, when `None`).
    ///
    /// `progress(done, total)` is called with bytes of packs read (full) or
    /// chunks checked (quick).
    ///
    /// # Errors
    /// Only failures to list or reach the store; damage is reported, not an error.
    pub fn verify(
        &self,
        ids: Option<&[String]>,
        depth: VerifyDepth,
        progress: &dyn Fn(u64, u64),
    ) -> Result<VerifyReport> {
        let ids: Vec<String> = match ids {
            Some(v) => v.to_vec(),
            None => self.version_ids()?,
        };
        // Versions known, then the cache brought up to date: a version
        // committed by another writer since this handle opened has its index
        // segment on the store already (no false "in no index segment").
        self.sync_cache()?;
        let mut walk = self.walk(&ids)?;
        let mut report = VerifyReport {
            depth: if matches!(depth, VerifyDepth::Full) { "full" } else { "quick" }.into(),
            versions: walk.versions.len() as u64,
            chunks: walk.chunks.len() as u64,
            ..Default::default()
        };
        // Locate every chunk; group by pack.
        let mut by_pack: BTreeMap<[u8; 32], Vec<(ChunkId, ChunkLocation)>> = BTreeMap::new();
        let mut missing = Vec::new();
        for id in &walk.chunks {
            match self.cache().lookup(id)? {
                Some(loc) => by_pack.entry(loc.frame.container).or_default().push((*id, loc)),
                None => missing.push(*id),
            }
        }
        for id in missing {
            walk.damage(
                "index".into(),
                Some(id),
                "chunk is in no index segment (run rebuild-index if packs hold it)".into(),
            );
        }
        let listed: HashMap<String, u64> = self.backend().list("packs/")?.into_iter().collect();
        let total: u64 = match depth {
            VerifyDepth::Full => by_pack.keys().filter_map(|p| listed.get(&pack_key(p))).sum(),
            VerifyDepth::Quick => report.chunks,
        };
        let mut done = 0u64;
        for (pack, chunks) in &by_pack {
            let key = pack_key(pack);
            let Some(&size) = listed.get(&key) else {
                for (id, _) in chunks {
                    walk.damage(key.clone(), Some(*id), "pack is missing".into());
                }
                continue;
            };
            match depth {
                VerifyDepth::Quick => {
                    self.quick_pack(&key, size, chunks, &mut walk);
                    done += chunks.len() as u64;
                }
                VerifyDepth::Full => {
                    self.full_pack(pack, &key, chunks, &mut walk, &mut report);
                    done += size;
                }
            }
            progress(done, total);
        }
        if matches!(depth, VerifyDepth::Full) {
            self.verify_segments(&by_pack, &mut walk, &mut report)?;
        }
        for (seg, why) in self.bad_segments() {
            walk.damaged.push(Damage {
                object: seg,
                chunk: None,
                reason: format!("{why} (run rebuild-index)"),
                affects: Vec::new(),
            });
        }
        drop(by_pack);
        self.resolve_uses(&mut walk)?;
        report.damaged = walk.finish();
        if report.data_frames_not_opened > 0 {
            report.not_checked = Some(format!(
                "{} data frames were not opened: the store was opened with a write-only key, which cannot read chunk data (their packs' hashes, the pack trailers, index segments, manifests and block maps were checked); verify with the full key to check the data",
                report.data_frames_not_opened
            ));
        }
        report.ok = report.ok();
        Ok(report)
    }

    /// The stored index segments themselves, never only the cache built from
    /// them (`docs/format.md` §8.5): each one's name is the BLAKE3 of its
    /// bytes and it opens; every pack in scope is listed by an intact
    /// segment, and listed as its trailer says. Where one is not, a host
    /// with a cold cache could not find (or would misplace) those chunks:
    /// they are damage, mapped to the versions that need them.
    fn verify_segments(
        &self,
        by_pack: &BTreeMap<[u8; 32], Vec<(ChunkId, ChunkLocation)>>,
        walk: &mut Walk,
        report: &mut VerifyReport,
    ) -> Result<()> {
        let mut listed: HashMap<[u8; 32], (String, Vec<crate::PackEntry>)> = HashMap::new();
        for (key, _) in self.backend().list("index/")? {
            let bytes = match self.backend().read(&key) {
                Ok(b) => b,
                Err(Error::NotFound { .. }) => continue, // replaced by a GC meanwhile
                Err(e @ (Error::Io { .. } | Error::Remote { .. })) => return Err(e),
                Err(e) => {
                    walk.damage(key.clone(), None, format!("index segment unreadable: {e}"));
                    continue;
                }
            };
            report.bytes_read += bytes.len() as u64;
            let name_ok = key.strip_prefix("index/") == Some(blake3::hash(&bytes).to_hex().as_str());
            let decoded = if name_ok {
                crate::decode_segment(self.keys(), &bytes, &key)
            } else {
                Err(Error::Corrupt { object: key.clone(), reason: "content does not match its name".into() })
            };
            match decoded {
                Ok(packs) => {
                    for (p, entries) in packs {
                        listed.entry(p).or_insert_with(|| (key.clone(), Vec::new())).1.extend(entries);
                    }
                }
                Err(e) => walk.damaged.push(Damage {
                    object: key,
                    chunk: None,
                    reason: format!("{e}: a host with a cold cache cannot use it (run rebuild-index)"),
                    affects: Vec::new(),
                }),
            }
        }
        for (pack, chunks) in by_pack {
            let pkey = pack_key(pack);
            let Some((seg, entries)) = listed.get(pack) else {
                for (id, _) in chunks {
                    walk.damage(
                        "index".into(),
                        Some(*id),
                        format!(
                            "no intact index segment lists {pkey}: a cold cache cannot find it (run rebuild-index)"
                        ),
                    );
                }
                continue;
            };
            // The segment must say where each chunk is as the pack's own trailer does.
            let Ok(trailer) = read_trailer(&**self.backend(), &pkey, self.keys()) else { continue };
            let truth: HashMap<ChunkId, crate::PackEntry> = trailer.into_iter().map(|e| (e.id, e)).collect();
            let said: HashMap<ChunkId, &crate::PackEntry> = entries.iter().map(|e| (e.id, e)).collect();
            for (id, _) in chunks {
                if said.get(id).map(|e| **e) != truth.get(id).copied() {
                    walk.damage(
                        seg.clone(),
                        Some(*id),
                        format!("index segment disagrees with {pkey}'s trailer about this chunk (run rebuild-index)"),
                    );
                }
            }
        }
        Ok(())
    }

    /// Opens the manifests and block maps in scope and records where every chunk is used.
    fn walk(&self, ids: &[String]) -> Result<Walk> {
        let mut w = Walk {
            versions: Vec::new(),
            chunks: Vec::new(),
            found: Vec::new(),
            damaged: Vec::new(),
            uses: HashMap::new(),
        };
        for id in ids {
            let key = format!("versions/{id}");
            let m = match self.read_manifest(id) {
                Ok(m) => m,
                // Removed by a prune since the listing: nothing to verify, nothing damaged.
                Err(Error::NotFound { .. }) => continue,
                Err(e @ (Error::Io { .. } | Error::Cache { .. })) => return Err(e),
                Err(e) => {
                    w.damaged.push(Damage {
                        object: key,
                        chunk: None,
                        reason: e.to_string(),
                        // The whole version: its disks and sizes are in the
                        // manifest that cannot be read (no byte ranges).
                        affects: vec![Affected { version: id.clone(), vm: "?".into(), disk: 0, ranges: Vec::new() }],
                    });
                    continue;
                }
            };
            w.versions.push((
                id.clone(),
                m.vm.name.clone(),
                m.disks.iter().map(|d| (d.position, u64::from(d.block_size), d.size)).collect(),
            ));
            for d in &m.disks {
                for (mi, map_id) in d.maps.iter().enumerate() {
                    // The map's own frame is checked with its pack like any chunk's.
                    w.chunks.push(*map_id);
                    match load_window(self, self.keys(), d, mi) {
                        Ok(win) => {
                            w.chunks.extend(win.extents.iter().map(|e| e.id));
                            if w.chunks.len() > 1 << 20 {
                                w.chunks.sort_unstable();
                                w.chunks.dedup();
                            }
                        }
                        Err(e) => {
                            // The whole map's range is unreadable; name the pack that holds the map.
                            let object = match self.cache().lookup(map_id)? {
                                Some(loc) => pack_key(&loc.frame.container),
                                None => "index".to_string(),
                            };
                            let r = d.window_range(mi);
                            w.damaged.push(Damage {
                                object,
                                chunk: Some(map_id.to_hex()),
                                reason: format!("block map: {e}"),
                                affects: vec![Affected {
                                    version: id.clone(),
                                    vm: m.vm.name.clone(),
                                    disk: d.position,
                                    ranges: vec![(r.start, r.end)],
                                }],
                            });
                        }
                    }
                }
            }
        }
        w.chunks.sort_unstable();
        w.chunks.dedup();
        Ok(w)
    }

    /// Second pass, only when chunks are damaged: where each damaged chunk is used.
    fn resolve_uses(&self, w: &mut Walk) -> Result<()> {
        let bad: std::collections::HashSet<ChunkId> = w.found.iter().filter_map(|(_, c, _)| *c).collect();
        if bad.is_empty() {
            return Ok(());
        }
        for (vi, (id, _, _)) in w.versions.iter().enumerate() {
            let Ok(m) = self.read_manifest(id) else { continue };
            for d in &m.disks {
                for (mi, map_id) in d.maps.iter().enumerate() {
                    if bad.contains(map_id) {
                        // A damaged map breaks its whole window.
                        let r = d.window_range(mi);
                        w.uses.entry(*map_id).or_default().push((vi, d.position, r.start, r.end));
                    }
                    let Ok(win) = load_window(self, self.keys(), d, mi) else { continue };
                    for e in &win.extents {
                        if bad.contains(&e.id) {
                            w.uses.entry(e.id).or_default().push((vi, d.position, e.offset, e.end()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn quick_pack(&self, key: &str, size: u64, chunks: &[(ChunkId, ChunkLocation)], walk: &mut Walk) {
        let trailer = match read_trailer(&**self.backend(), key, self.keys()) {
            Ok(t) => t,
            Err(e) => {
                for (id, _) in chunks {
                    walk.damage(key.to_string(), Some(*id), format!("pack trailer unreadable: {e}"));
                }
                return;
            }
        };
        let listed: HashMap<ChunkId, ChunkLocation> = trailer.iter().map(|e| (e.id, e.location([0; 32]))).collect();
        for (id, loc) in chunks {
            let end = u64::from(loc.frame.offset) + u64::from(loc.frame.stored_len);
            let mut local = *loc;
            local.frame.container = [0; 32];
            if end + FOOTER_LEN as u64 > size {
                walk.damage(
                    key.to_string(),
                    Some(*id),
                    format!("frame at {} ends past the pack's {size} bytes", loc.frame.offset),
                );
            } else if listed.get(id) != Some(&local) {
                walk.damage(
                    key.to_string(),
                    Some(*id),
                    "the pack's trailer does not list the chunk where the index says".into(),
                );
            }
        }
    }

    fn full_pack(
        &self,
        pack: &[u8; 32],
        key: &str,
        chunks: &[(ChunkId, ChunkLocation)],
        walk: &mut Walk,
        report: &mut VerifyReport,
    ) {
        let bytes = match self.backend().read(key) {
            Ok(b) => b,
            Err(e) => {
                for (id, _) in chunks {
                    walk.damage(key.to_string(), Some(*id), format!("pack unreadable: {e}"));
                }
                return;
            }
        };
        report.packs_read += 1;
        report.bytes_read += bytes.len() as u64;
        if blake3::hash(&bytes).as_bytes() != pack {
            // Damaged somewhere: the per-frame checks below say which chunks.
            walk.damaged.push(Damage {
                object: key.to_string(),
                chunk: None,
                reason: "content does not match its name (bit rot or tampering)".into(),
                affects: Vec::new(),
            });
        }
        let mut frames: HashMap<FrameRef, Vec<(ChunkId, ChunkLocation)>> = HashMap::new();
        for (id, loc) in chunks {
            frames.entry(loc.frame).or_default().push((*id, *loc));
        }
        for (f, cs) in frames {
            let (a, b) = (f.offset as usize, f.offset as usize + f.stored_len as usize);
            let Some(stored) = bytes.get(a..b) else {
                for (id, _) in &cs {
                    walk.damage(
                        key.to_string(),
                        Some(*id),
                        format!("frame at {} is past the end of the pack (truncated)", f.offset),
                    );
                }
                continue;
            };
            match decode_frame(self.keys(), &f, stored) {
                Ok(plain) => {
                    for (id, loc) in &cs {
                        if let Err(e) = chunk_in(self.keys(), &plain, loc, id) {
                            walk.damage(key.to_string(), Some(*id), e.to_string());
                        }
                    }
                }
                Err(alike_core::Error::WriteOnlyKey { .. }) => report.data_frames_not_opened += 1,
                Err(e) => {
                    for (id, _) in &cs {
                        walk.damage(key.to_string(), Some(*id), e.to_string());
                    }
                }
            }
        }
    }
}

impl Walk {
    fn damage(&mut self, object: String, chunk: Option<ChunkId>, reason: String) {
        self.found.push((object, chunk, reason));
    }

    fn resolve(&mut self, object: String, chunk: Option<ChunkId>, reason: String) {
        let mut per: BTreeMap<(usize, u32), Vec<(u64, u64)>> = BTreeMap::new();
        if let Some(c) = &chunk {
            for &(vi, disk, start, end) in self.uses.get(c).map(Vec::as_slice).unwrap_or_default() {
                per.entry((vi, disk)).or_default().push((start, end));
            }
        }
        let affects = per
            .into_iter()
            .map(|((vi, disk), r)| Affected {
                version: self.versions[vi].0.clone(),
                vm: self.versions[vi].1.clone(),
                disk,
                ranges: alike_core::merge_ranges(r),
            })
            .collect();
        self.damaged.push(Damage { object, chunk: chunk.map(|c| c.to_hex()), reason, affects });
    }

    fn finish(mut self) -> Vec<Damage> {
        for (object, chunk, reason) in std::mem::take(&mut self.found) {
            self.resolve(object, chunk, reason);
        }
        // One entry per (object, reason) for pack-level failures would hide chunks; keep them all, sorted.
        let mut d = self.damaged;
        let mut seen = HashSet::new();
        d.retain(|x| seen.insert((x.object.clone(), x.chunk.clone(), x.reason.clone())));
        d.sort_by(|a, b| a.object.cmp(&b.object).then(a.chunk.cmp(&b.chunk)));
        d
    }
}

/// A record that a version was verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Verification {
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// `"quick"` or `"full"`.
    pub depth: String,
    /// Whether the version was found whole.
    pub ok: bool,
}

impl Repository {
    /// Records that `version` was verified (an immutable `verifications/<version>/<time>-<depth>` object).
    ///
    /// # Errors
    /// Backend write errors.
    pub fn record_verification(&self, version: &str, v: &Verification) -> Result<()> {
        let mut out = crate::format::header(crate::format::ObjectKind::Verification).to_vec();
        out.extend_from_slice(&serde_json::to_vec(v).expect("serializes"));
        self.backend().write(&format!("verifications/{version}/{}-{}", v.time_ms, v.depth), &out)
    }

    /// The newest verification of every version that has one.
    ///
    /// # Errors
    /// Backend errors; unreadable records are skipped.
    pub fn verifications(&self) -> Result<HashMap<String, Verification>> {
        let mut out: HashMap<String, Verification> = HashMap::new();
        for (key, _) in self.backend().list("verifications/")? {
            let Some((vid, _)) = key.strip_prefix("verifications/").and_then(|r| r.split_once('/')) else { continue };
            let Ok(bytes) = self.backend().read(&key) else { continue };
            let Ok(body) = crate::format::check_header(&bytes, crate::format::ObjectKind::Verification, &key) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Verification>(body) else { continue };
            if out.get(vid).is_none_or(|o| o.time_ms < v.time_ms) {
                out.insert(vid.to_string(), v);
            }
        }
        Ok(out)
    }
}
