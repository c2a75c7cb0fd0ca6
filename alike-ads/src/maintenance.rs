//! Housekeeping: pins, prune (retention), orphan-pack adoption, and garbage
//! collection with a two-phase delete that is safe against backups running
//! at the same time on any machine.
//!
//! ## How GC stays safe with concurrent writers
//!
//! 1. GC marks every chunk referenced by the versions it lists.
//! 2. Packs with no live chunk are *condemned*: a `gc/<time>-<id>` record
//!    lists them. Partly dead packs are repacked (live chunks copied into new
//!    packs, published) and the old pack condemned. Nothing is deleted yet.
//! 3. A backup takes its lock, *then* reads the condemnation records, and
//!    never deduplicates against a chunk in a condemned pack (it stores it
//!    again). So only backups whose lock is older than a record (plus the
//!    allowed clock skew) can reference that record's packs.
//! 4. A record's packs are deleted only when no such backup is alive, no
//!    restore or verify is running, and after re-marking: versions that
//!    appeared since step 1 rescue any chunk they reference. A reader of
//!    named versions only (an NBD export: [`LockInfo::versions`]) does not
//!    block deletion while those versions were marked by this run (their
//!    chunks are live, so no deleted pack holds one); if one of them is gone,
//!    it blocks like any reader.
//!
//! A GC run deletes what it can at once (the common case: nothing else is
//! running) and defers the rest to the next run.

use std::collections::{HashMap, HashSet};

use alike_core::retention::{Decision, RetentionPolicy, apply};
use alike_core::{ChunkId, Manifest, encode_frame};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::LockInfo;
use crate::backend::random_hex;
use crate::format::{ObjectKind, check_header, header};
use crate::index::decode_segment;
use crate::lock::{LockKind, live_locks, now_ms};
use crate::pack::{PackEntry, pack_key, read_trailer};
use crate::repo::Repository;
use crate::{Error, Result};

/// Writers' clocks must agree within this.
pub const CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;
/// Packs whose live bytes are below this fraction are repacked.
pub const REPACK_BELOW: f64 = 0.5;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CondemnedRecord {
    time_ms: i64,
    packs: Vec<String>,
}

/// What `prune` decided (and did, unless it was a dry run).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PruneReport {
    /// Whether nothing was removed, only decided.
    pub dry_run: bool,
    /// Per VM, newest first.
    pub decisions: Vec<(String, Vec<Decision>)>,
    /// Versions removed (none on a dry run).
    pub removed: Vec<String>,
}

/// The schema of `alike prune --json`: `vms` is a list of `{vm, versions}`.
impl Serialize for PruneReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Vm<'a> {
            vm: &'a str,
            versions: &'a [Decision],
        }
        #[derive(Serialize)]
        struct Json<'a> {
            dry_run: bool,
            removed: &'a [String],
            vms: Vec<Vm<'a>>,
        }
        Json {
            dry_run: self.dry_run,
            removed: &self.removed,
            vms: self.decisions.iter().map(|(vm, d)| Vm { vm, versions: d }).collect(),
        }
        .serialize(s)
    }
}

/// What `gc` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GcReport {
    /// Versions whose chunks were marked.
    pub versions: u64,
    /// Distinct chunks referenced.
    pub live_chunks: u64,
    /// Indexed chunks no version references.
    pub dead_chunks: u64,
    /// Packs in the index.
    pub packs: u64,
    /// Packs condemned by this run (whole-dead or repacked).
    pub condemned: u64,
    /// Packs whose live chunks were copied into new packs.
    pub repacked: u64,
    /// Packs deleted by this run.
    pub deleted: u64,
    /// Bytes freed by the deletions.
    pub bytes_freed: u64,
    /// Condemned packs rescued (a new version references them again).
    pub rescued: u64,
    /// Condemned packs left for a later run because a backup or read is running.
    pub deferred: u64,
    /// Orphan packs (in no index segment) adopted into the index.
    pub adopted: u64,
    /// Spool files of writers that are gone, removed (`tmp/pack-*.tmp`…).
    pub spool_files_removed: u64,
    /// Damaged version manifests, and versions whose block maps cannot be
    /// read: while any is in the store, GC condemns and deletes nothing (what
    /// they referenced cannot be known).
    pub damaged_versions: Vec<String>,
    /// Packs the index listed but the store no longer held, dropped from
    /// the index (their data was lost; verify names the versions that need it).
    pub lost_packs: Vec<String>,
}

impl Repository {
    /// Pins a version: no retention policy removes it.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown version; backend errors.
    pub fn pin(&self, version: &str) -> Result<()> {
        if !self.backend().exists(&format!("versions/{version}"))? {
            return Err(Error::NotFound { object: format!("versions/{version}") });
        }
        let mut out = header(ObjectKind::Pin).to_vec();
        out.extend_from_slice(format!("{{\"time_ms\":{}}}", now_ms()).as_bytes());
        self.backend().write(&format!("pins/{version}"), &out)
    }

    /// Removes a pin (missing is fine).
    ///
    /// # Errors
    /// Backend errors.
    pub fn unpin(&self, version: &str) -> Result<()> {
        self.backend().delete(&format!("pins/{version}"))
    }

    /// Versions held by live `read` locks on named versions (NBD exports):
    /// prune keeps them as if pinned, forget refuses them, GC keeps them.
    ///
    /// # Errors
    /// Backend errors.
    pub fn held_versions(&self) -> Result<HashSet<String>> {
        Ok(live_locks(&**self.backend())?
            .into_iter()
            .filter(|(_, l)| l.kind == LockKind::Read)
            .flat_map(|(_, l)| l.versions.unwrap_or_default())
            .collect())
    }

    fn holders_of(&self, id: &str) -> Result<Vec<(String, LockInfo)>> {
        Ok(live_locks(&**self.backend())?
            .into_iter()
            .filter(|(_, l)| l.kind == LockKind::Read && l.versions.as_ref().is_some_and(|v| v.iter().any(|x| x == id)))
            .collect())
    }

    /// Ids of pinned versions.
    ///
    /// # Errors
    /// Backend errors.
    pub fn pinned(&self) -> Result<HashSet<String>> {
        Ok(self
            .backend()
            .list("pins/")?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix("pins/").map(str::to_string))
            .collect())
    }

    /// Applies `policy` to the versions of `vm` (every VM when `None`), and
    /// removes the versions no rule keeps unless `dry_run`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty policy; backend errors.
    pub fn prune(&self, vm: Option<&str>, policy: &RetentionPolicy, dry_run: bool) -> Result<PruneReport> {
        if policy.is_empty() {
            return Err(Error::InvalidArgument(
                "a retention policy needs at least one keep rule (it would remove every version)".into(),
            ));
        }
        let _lock = (!dry_run).then(|| self.lock(LockKind::Prune)).transpose()?;
        // Versions an NBD export is serving stay, as pinned ones do.
        let mut pinned = self.pinned()?;
        pinned.extend(self.held_versions()?);
        let mut by_vm: HashMap<String, Vec<(String, i64)>> = HashMap::new();
        for (id, m) in self.versions()? {
            if vm.is_none_or(|v| v == m.vm.name) {
                by_vm.entry(m.vm.name.clone()).or_default().push((id, m.time_ms));
            }
        }
        let mut report = PruneReport { dry_run, ..PruneReport::default() };
        let mut names: Vec<String> = by_vm.keys().cloned().collect();
        names.sort();
        for name in names {
            let d = apply(&by_vm[&name], policy, &pinned);
            if !dry_run {
                for x in d.iter().filter(|x| !x.keep) {
                    self.remove_version(&x.id)?;
                    report.removed.push(x.id.clone());
                }
            }
            report.decisions.push((name, d));
        }
        info!(removed = report.removed.len(), dry_run, "prune");
        Ok(report)
    }

    /// Removes one version (not its data: that is `gc`'s job). Pinned versions are refused.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a pinned version; [`Error::NotFound`]; backend errors.
    pub fn forget(&self, id: &str) -> Result<()> {
        if self.pinned()?.contains(id) {
            return Err(Error::InvalidArgument(format!("version {id} is pinned; unpin it first")));
        }
        if let Some((lock, l)) = self.holders_of(id)?.into_iter().next() {
            return Err(Error::Locked {
                lock,
                holder: format!("version {id} is being read (an NBD export?) by pid {} on {}", l.pid, l.host),
            });
        }
        if !self.backend().exists(&format!("versions/{id}"))? {
            return Err(Error::NotFound { object: format!("versions/{id}") });
        }
        let _lock = self.lock(LockKind::Prune)?;
        self.remove_version(id)
    }

    fn remove_version(&self, id: &str) -> Result<()> {
        self.backend().delete(&format!("versions/{id}"))?;
        for (k, _) in self.backend().list(&format!("verifications/{id}/"))? {
            self.backend().delete(&k)?;
        }
        Ok(())
    }

    /// Indexes packs that no index segment lists (left by an interrupted
    /// writer), so their chunks are reused instead of stored again. Returns
    /// how many were adopted.
    ///
    /// # Errors
    /// Backend errors; unreadable packs are skipped (verify reports them).
    pub fn adopt_orphan_packs(&self) -> Result<u64> {
        let known = self.cache().pack_ids()?;
        let mut adopted = Vec::new();
        for (key, _) in self.backend().list("packs/")? {
            let Some(id) = key.rsplit('/').next().and_then(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?).ok()) else {
                continue;
            };
            if known.contains(&id) {
                continue;
            }
            match read_trailer(&**self.backend(), &key, self.keys()) {
                Ok(entries) => adopted.push((id, entries)),
                Err(e) => warn!(pack = %key, error = %e, "orphan pack unreadable; not adopted"),
            }
        }
        if adopted.is_empty() {
            return Ok(0);
        }
        self.write_segments(&adopted, true)?;
        info!(packs = adopted.len(), "orphan packs adopted into the index");
        Ok(adopted.len() as u64)
    }

    /// Drops packs that the index lists but the store no longer holds (lost
    /// to a disk, deleted by hand) from the index segments, one segment at a
    /// time as GC does for the packs it deletes, so that no cache — a cold
    /// one loading segments in any order — points a chunk at them once a
    /// backup has stored it again. Returns the packs dropped.
    ///
    /// # Errors
    /// Backend and cache errors.
    fn drop_lost_packs(&self) -> Result<Vec<String>> {
        let lost = self.missing_packs()?;
        if lost.is_empty() {
            return Ok(Vec::new());
        }
        warn!(packs = lost.len(), "dropping packs missing from the store from the index");
        for (seg, _) in self.backend().list("index/")? {
            let packs = decode_segment(self.keys(), &self.backend().read(&seg)?, &seg)?;
            if packs.iter().any(|(p, _)| lost.contains(p)) {
                let keep: Vec<_> = packs.into_iter().filter(|(p, _)| !lost.contains(p)).collect();
                if !keep.is_empty() {
                    self.write_segments(&keep, false)?;
                }
                self.backend().delete(&seg)?;
            }
        }
        self.sync_cache()?;
        let mut names: Vec<String> = lost.iter().map(pack_key).collect();
        names.sort();
        Ok(names)
    }

    /// Removes the spool files of writers that are gone: a pack spool file
    /// (`pack-*.tmp`) last written before the oldest live writer (backup
    /// lock) started cannot be a live writer's, whatever host wrote it; with
    /// no live writer, none is. Five minutes of margin absorb clock skew
    /// between hosts sharing a store. Other temporary files (one object on its
    /// way to its key, written by any process) go after an hour.
    /// Returns how many files were removed.
    ///
    /// # Errors
    /// Backend errors listing the locks.
    pub fn reclaim_spool(&self) -> Result<u64> {
        const SKEW_MS: i64 = 5 * 60 * 1000;
        let oldest_writer = crate::live_locks(&**self.backend())?
            .into_iter()
            .filter(|(_, l)| l.kind == LockKind::Backup)
            .map(|(_, l)| l.created_ms)
            .min();
        let Ok(dir) = self.backend().spool_dir() else { return Ok(0) };
        let Ok(rd) = std::fs::read_dir(&dir) else { return Ok(0) };
        let mut removed = 0;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".tmp") {
                continue;
            }
            // Other temporary files are single objects on their way to their
            // key (a lock, a record), written by any process in milliseconds
            // and renamed: only one left an hour is a dead writer's.
            let is_pack = name.starts_with("pack-");
            let mtime_ms = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(i64::MAX, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let dead = if is_pack {
                oldest_writer.is_none_or(|start| mtime_ms < start - SKEW_MS)
            } else {
                mtime_ms < now_ms() - 3_600_000
            };
            if dead && std::fs::remove_file(e.path()).is_ok() {
                info!(file = %name, "removed the spool file of a writer that is gone");
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Packs condemned by GC records (a writer must not deduplicate against them).
    ///
    /// # Errors
    /// Backend errors; malformed records are ignored with a warning.
    pub fn condemned_packs(&self) -> Result<HashSet<[u8; 32]>> {
        Ok(self
            .condemned_records()?
            .into_iter()
            .flat_map(|(_, r)| r.packs)
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect())
    }

    fn condemned_records(&self) -> Result<Vec<(String, CondemnedRecord)>> {
        let mut out = Vec::new();
        for (key, _) in self.backend().list("gc/")? {
            let parsed = self.backend().read(&key).and_then(|b| {
                let body = check_header(&b, ObjectKind::Condemned, &key)?.to_vec();
                serde_json::from_slice::<CondemnedRecord>(&body)
                    .map_err(|e| Error::Corrupt { object: key.clone(), reason: e.to_string() })
            });
            match parsed {
                Ok(r) => out.push((key, r)),
                Err(e) => warn!(record = %key, error = %e, "unreadable GC record ignored"),
            }
        }
        Ok(out)
    }

    /// Marks every chunk (data and maps) referenced by the given manifests,
    /// as 16-byte id prefixes (a prefix collision can only keep a dead chunk,
    /// never delete a live one). Sorted, deduplicated.
    fn mark(
        &self,
        manifests: &[(String, Manifest)],
        progress: &dyn Fn(u64, u64) -> Result<()>,
        unreadable: &mut Vec<String>,
    ) -> Result<Vec<u128>> {
        let total: u64 = manifests.iter().flat_map(|(_, m)| &m.disks).map(|d| d.maps.len() as u64).sum();
        let mut done = 0u64;
        let mut live: Vec<u128> = Vec::new();
        let prefix = |c: &ChunkId| u128::from_le_bytes(c.0[..16].try_into().expect("16"));
        'versions: for (_id, m) in manifests {
            for d in &m.disks {
                for (mi, map_id) in d.maps.iter().enumerate() {
                    live.push(prefix(map_id));
                    let map = match alike_core::load_window(self, self.keys(), d, mi) {
                        Ok(m) => m,
                        // Lost or damaged data: what the version referenced
                        // cannot be known; the caller deletes nothing.
                        Err(e) if e.is_damage() => {
                            warn!(version = %_id, error = %e, "a block map cannot be read: gc deletes nothing");
                            unreadable.push(_id.clone());
                            continue 'versions;
                        }
                        Err(e) => return Err(Error::Core(e)),
                    };
                    live.extend(map.extents.iter().map(|e| prefix(&e.id)));
                    done += 1;
                    progress(done, total)?;
                }
            }
            if live.len() > 1 << 22 {
                live.sort_unstable();
                live.dedup();
            }
        }
        live.sort_unstable();
        live.dedup();
        Ok(live)
    }

    /// Collects garbage: see the module doc for the safety rules.
    ///
    /// # Errors
    /// [`Error::Locked`] while another GC runs; a version that cannot be read
    /// (GC refuses to guess what is live: run `verify`); backend errors.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        self.gc_with(dry_run, &|_, _| Ok(()))
    }

    /// [`Repository::gc`] with progress: `progress(maps marked, maps in all)`
    /// during the mark phase; an `Err` from it (cancellation) stops the run
    /// before anything is condemned or deleted.
    ///
    /// # Errors
    /// As [`Repository::gc`], and whatever `progress` returns.
    pub fn gc_with(&self, dry_run: bool, progress: &dyn Fn(u64, u64) -> Result<()>) -> Result<GcReport> {
        let _lock = self.lock(LockKind::Gc)?;
        let mut report = GcReport::default();
        if !dry_run {
            report.spool_files_removed = self.reclaim_spool()?;
            report.adopted = self.adopt_orphan_packs()?;
        }
        // Versions first, then the cache: a manifest is written only after
        // the index segment of its chunks, so every version listed here has
        // its segment on the store by the time the cache is brought up to
        // date. (The other order let a backup finishing in between hand GC a
        // manifest whose chunks its cache did not know: "chunk … is not in
        // the store".)
        let (versions, damaged) = self.scan_versions()?;
        self.sync_cache()?;
        report.damaged_versions = damaged.iter().map(|d| d.id.clone()).collect();
        if !dry_run {
            report.lost_packs = self.drop_lost_packs()?;
        }
        report.versions = versions.len() as u64;
        let seen: HashSet<String> = versions.iter().map(|(id, _)| id.clone()).collect();
        let mut unreadable = Vec::new();
        let live = self.mark(&versions, progress, &mut unreadable)?;
        report.damaged_versions.extend(unreadable);
        let is_live = |c: &ChunkId| live.binary_search(&u128::from_le_bytes(c.0[..16].try_into().expect("16"))).is_ok();

        // Per pack: live and dead bytes.
        let mut packs: HashMap<[u8; 32], (u64, u64)> = HashMap::new();
        let mut live_chunks = 0u64;
        self.cache().for_each_chunk(|id, pack, len, _| {
            let e = packs.entry(*pack).or_default();
            if is_live(id) {
                e.0 += u64::from(len);
                live_chunks += 1;
            } else {
                e.1 += u64::from(len);
                report.dead_chunks += 1;
            }
        })?;
        report.live_chunks = live_chunks;
        report.packs = packs.len() as u64;
        let already: HashSet<[u8; 32]> = self.condemned_packs()?;
        let mut condemn: Vec<[u8; 32]> = Vec::new();
        let mut repack: Vec<[u8; 32]> = Vec::new();
        for (p, (l, d)) in &packs {
            if already.contains(p) || *d == 0 {
                continue;
            }
            if *l == 0 {
                condemn.push(*p);
            } else if (*l as f64) < REPACK_BELOW * (*l + *d) as f64 {
                repack.push(*p);
            }
        }
        if !report.damaged_versions.is_empty() {
            // Conservative: a damaged manifest, or a version whose maps
            // cannot be read, may reference any chunk.
            warn!(
                damaged = damaged.len(),
                "damaged version manifests: gc deletes nothing until they are forgotten or restored"
            );
            return Ok(report);
        }
        if dry_run {
            report.condemned = (condemn.len() + repack.len()) as u64;
            report.repacked = repack.len() as u64;
            return Ok(report);
        }
        // Repack: copy live chunks of mostly-dead packs into new packs.
        for p in &repack {
            self.repack(p, &is_live)?;
        }
        if !repack.is_empty() {
            alike_core::ChunkStore::flush(self)?;
        }
        report.repacked = repack.len() as u64;
        condemn.extend(&repack);
        if !condemn.is_empty() {
            let rec = CondemnedRecord { time_ms: now_ms(), packs: condemn.iter().map(hex::encode).collect() };
            let mut out = header(ObjectKind::Condemned).to_vec();
            out.extend_from_slice(&serde_json::to_vec(&rec).expect("serializes"));
            self.backend().write(&format!("gc/{}-{}", rec.time_ms, random_hex(4)?), &out)?;
            report.condemned = condemn.len() as u64;
        }
        self.delete_condemned(&seen, &live, &mut report)?;
        Ok(report)
    }

    fn repack(&self, pack: &[u8; 32], is_live: &dyn Fn(&ChunkId) -> bool) -> Result<()> {
        let key = pack_key(pack);
        let entries = read_trailer(&**self.backend(), &key, self.keys())?;
        let mut frames: HashMap<u32, Vec<PackEntry>> = HashMap::new();
        for e in entries.into_iter().filter(|e| is_live(&e.id)) {
            frames.entry(e.frame_offset).or_default().push(e);
        }
        for (_, es) in frames {
            let f = es[0].location(*pack).frame;
            let stored = self.backend().read_range(&key, u64::from(f.offset), u64::from(f.stored_len))?;
            let plain = alike_core::decode_frame(self.keys(), &f, &stored)?;
            let mut chunks = Vec::new();
            for e in &es {
                let loc = e.location(*pack);
                chunks.push((e.id, alike_core::chunk_in(self.keys(), &plain, &loc, &e.id)?));
            }
            let frame = encode_frame(self.keys(), f.kind, &chunks, self.config().compression_level)?;
            alike_core::ChunkStore::put(self, frame)?;
        }
        Ok(())
    }

    /// Deletes the packs of condemnation records whose conditions hold.
    /// A condemned pack that holds a chunk in `live` (this run's mark) or
    /// referenced by a version that appeared since is rescued, not deleted.
    fn delete_condemned(&self, seen: &HashSet<String>, live: &[u128], report: &mut GcReport) -> Result<()> {
        let records = self.condemned_records()?;
        if records.is_empty() {
            return Ok(());
        }
        let locks = live_locks(&**self.backend())?;
        // Re-mark with versions that appeared since the mark phase.
        let mut newer: Vec<(String, Manifest)> = Vec::new();
        for id in self.version_ids()?.into_iter().filter(|id| !seen.contains(id)) {
            match self.read_manifest(&id) {
                Ok(m) => newer.push((id, m)),
                Err(Error::NotFound { .. }) => {} // pruned meanwhile
                Err(e) => {
                    // A version that appeared damaged: keep everything this run.
                    warn!(version = %id, error = %e, "a new version cannot be read: gc deletes nothing this run");
                    return Ok(());
                }
            }
        }
        let mut unreadable = Vec::new();
        let rescue = self.mark(&newer, &|_, _| Ok(()), &mut unreadable)?;
        if !unreadable.is_empty() {
            return Ok(());
        }
        // Versions whose chunks this run marked (listed at the start, or since).
        let marked: HashSet<&str> =
            seen.iter().map(String::as_str).chain(newer.iter().map(|(id, _)| id.as_str())).collect();
        let mut deletable: Vec<(String, Vec<[u8; 32]>)> = Vec::new();
        for (key, rec) in &records {
            let blocking = locks.iter().find(|(_, l)| match l.kind {
                LockKind::Backup => l.created_ms <= rec.time_ms + CLOCK_SKEW_MS,
                // A reader of named versions (an NBD export) blocks nothing
                // while they are versions this run marked (their chunks are
                // live, so no pack holding one is deleted); one of them gone
                // (forgotten mid-export) means its chunks were not marked:
                // then it blocks like any reader.
                LockKind::Read => l.versions.as_ref().is_none_or(|vs| vs.iter().any(|v| !marked.contains(v.as_str()))),
                LockKind::Prune | LockKind::Gc => false,
            });
            if let Some((k, l)) = blocking {
                info!(record = %key, lock = %k, holder = ?l.kind, "deletion deferred");
                report.deferred += rec.packs.len() as u64;
                continue;
            }
            let packs = rec
                .packs
                .iter()
                .filter_map(|h| hex::decode(h).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()))
                .collect();
            deletable.push((key.clone(), packs));
        }
        // One pass over the index: which candidate packs hold a chunk a newer version needs.
        let candidates: HashSet<[u8; 32]> = deletable.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let mut rescued: HashSet<[u8; 32]> = HashSet::new();
        if !candidates.is_empty() {
            self.cache().for_each_chunk(|id, pack, _, _| {
                let p = u128::from_le_bytes(id.0[..16].try_into().expect("16"));
                if candidates.contains(pack) && (live.binary_search(&p).is_ok() || rescue.binary_search(&p).is_ok()) {
                    rescued.insert(*pack);
                }
            })?;
        }
        report.rescued = rescued.len() as u64;
        let deleted: HashSet<[u8; 32]> = candidates.difference(&rescued).copied().collect();
        let done_records: Vec<String> = deletable.into_iter().map(|(k, _)| k).collect();
        if !deleted.is_empty() {
            // Index first, one segment at a time: its survivors are written to a
            // new segment before it goes; the packs are deleted only after that.
            for (seg, _) in self.backend().list("index/")? {
                let packs = decode_segment(self.keys(), &self.backend().read(&seg)?, &seg)?;
                if packs.iter().any(|(p, _)| deleted.contains(p)) {
                    let keep: Vec<_> = packs.into_iter().filter(|(p, _)| !deleted.contains(p)).collect();
                    if !keep.is_empty() {
                        self.write_segments(&keep, false)?;
                    }
                    self.backend().delete(&seg)?;
                }
            }
            let sizes: HashMap<String, u64> = self.backend().list("packs/")?.into_iter().collect();
            for p in &deleted {
                let k = pack_key(p);
                report.bytes_freed += sizes.get(&k).copied().unwrap_or(0);
                self.backend().delete(&k)?;
            }
            report.deleted = deleted.len() as u64;
            self.sync_cache()?;
        }
        for k in done_records {
            self.backend().delete(&k)?;
        }
        Ok(())
    }
}
