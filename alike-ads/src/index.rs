//! Index segments (`index/…`: which pack holds which blob) and the local
//! redb cache built from them.
//!
//! The cache is only a cache: deleting it loses nothing; it is rebuilt from
//! the store's index segments (or, by `rebuild_index`, from pack trailers).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use alike_core::{BlobKind, ChunkId, ChunkLocation, Compression, FrameRef, Keys};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::format::{ObjectKind, check_header, header};
use crate::pack::{ENTRY_LEN, PackEntry, decode_entries};
use crate::{Error, Result};

const SEGMENT_AAD: &[u8] = b"alike index v1\0";

/// The packs and entries one index segment lists.
pub type SegmentPacks = Vec<([u8; 32], Vec<PackEntry>)>;

/// Encodes an index segment: header ‖ sealed(u32 pack count ‖ per pack: id ‖ u32 n ‖ n entries).
pub fn encode_segment(keys: &Keys, packs: &[([u8; 32], Vec<PackEntry>)]) -> Result<Vec<u8>> {
    // One buffer, sealed in place: a full segment is ~7 MB.
    let hdr = header(ObjectKind::Index);
    let body_len = 4 + packs.iter().map(|(_, e)| 36 + e.len() * ENTRY_LEN).sum::<usize>();
    let mut out = Vec::with_capacity(hdr.len() + body_len + alike_core::SEAL_OVERHEAD);
    out.extend_from_slice(&hdr);
    let start = out.len();
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for (id, entries) in packs {
        out.extend_from_slice(id);
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            e.encode_into(&mut out);
        }
    }
    keys.seal_in_place(SEGMENT_AAD, &mut out, start)?;
    Ok(out)
}

/// Decodes an index segment.
///
/// # Errors
/// Header errors, [`Error::Corrupt`] naming the segment.
pub fn decode_segment(keys: &Keys, bytes: &[u8], object: &str) -> Result<SegmentPacks> {
    let sealed = check_header(bytes, ObjectKind::Index, object)?;
    let body =
        keys.open(SEGMENT_AAD, sealed).map_err(|r| Error::Corrupt { object: object.into(), reason: r.into() })?;
    let bad = |at: usize| Error::Corrupt { object: object.into(), reason: format!("truncated at byte {at}") };
    let mut p = 0usize;
    let u32_at = |p: usize| -> Result<u32> {
        body.get(p..p + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4"))).ok_or_else(|| bad(p))
    };
    let n = u32_at(p)? as usize;
    p += 4;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let id: [u8; 32] = body.get(p..p + 32).ok_or_else(|| bad(p))?.try_into().expect("32");
        p += 32;
        let cnt = u32_at(p)? as usize;
        p += 4;
        let len = cnt.checked_mul(ENTRY_LEN).ok_or_else(|| bad(p))?;
        let raw = body.get(p..p + len).ok_or_else(|| bad(p))?;
        out.push((id, decode_entries(raw, None, object)?));
        p += len;
    }
    if p != body.len() {
        return Err(Error::Corrupt { object: object.into(), reason: format!("{} trailing bytes", body.len() - p) });
    }
    Ok(out)
}

const CHUNKS: TableDefinition<[u8; 32], [u8; 26]> = TableDefinition::new("chunks-v1");
const PACKS: TableDefinition<u32, [u8; 32]> = TableDefinition::new("packs-v1");
const PACK_NOS: TableDefinition<[u8; 32], u32> = TableDefinition::new("pack-numbers-v1");
const SEGMENTS: TableDefinition<&str, u64> = TableDefinition::new("segments-v1");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta-v1");

fn reset(tx: &redb::WriteTransaction) -> std::result::Result<(), redb::TableError> {
    tx.delete_table(CHUNKS)?;
    tx.delete_table(PACKS)?;
    tx.delete_table(PACK_NOS)?;
    tx.delete_table(SEGMENTS)?;
    tx.open_table(CHUNKS)?;
    tx.open_table(PACKS)?;
    tx.open_table(PACK_NOS)?;
    tx.open_table(SEGMENTS)?;
    Ok(())
}

/// The local chunk-index cache (redb).
pub struct IndexCache {
    db: redb::Database,
    path: PathBuf,
    temporary: bool,
}

impl std::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexCache").field("path", &self.path).field("temporary", &self.temporary).finish()
    }
}

impl Drop for IndexCache {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn cerr(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::Cache { path: path.to_owned(), reason: e.to_string() }
}

/// The cache's folder, its owner's only (0700): it names the store's
/// chunks. Folders created above it are 0700 too.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(crate::error::io(dir))?;
    let m = std::fs::metadata(dir).map_err(crate::error::io(dir))?;
    // A folder made by an older version, or shared on purpose by its
    // owner: tightened when we may, used as it is when not.
    if m.permissions().mode() & 0o077 != 0 {
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(cache = %dir.display(), error = %e, "cache folder is readable by others");
        }
    }
    Ok(())
}

/// Creates `path` empty and 0600 when missing (redb then initialises it),
/// or makes an existing cache file 0600.
fn private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(crate::error::io(path))?;
    let m = f.metadata().map_err(crate::error::io(path))?;
    if m.permissions().mode() & 0o077 != 0 {
        if let Err(e) = f.set_permissions(std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(cache = %path.display(), error = %e, "cache file is readable by others");
        }
    }
    Ok(())
}

impl IndexCache {
    /// Opens (or creates) the cache in `dir` for `store_id`. When another
    /// process holds it, a private temporary cache is used instead.
    pub fn open(dir: &Path, store_id: &str) -> Result<IndexCache> {
        private_dir(dir)?;
        let path = dir.join("index-v1.redb");
        private_file(&path)?;
        let builder = || {
            let mut b = redb::Builder::new();
            // A bounded page cache keeps memory flat however large the index
            // grows. 4 MiB, not more: the OS page cache holds the file anyway,
            // and look-ups at 1 M chunks were 5.0 µs against 4.6 µs with
            // 16 MiB, while a 16 GiB backup peaked 10 MiB lower (alike-bench).
            b.set_cache_size(4 << 20);
            b
        };
        let (db, path, temporary) = match builder().create(&path) {
            Ok(db) => (db, path, false),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                let tmp = dir.join(format!("index-tmp-{}-{}.redb", std::process::id(), crate::backend::random_hex(4)?));
                tracing::info!(cache = %path.display(), "index cache in use by another process: using a private one");
                private_file(&tmp)?;
                let db = builder().create(&tmp).map_err(|e| cerr(&tmp)(&e))?;
                (db, tmp, true)
            }
            Err(e) => {
                // A damaged cache is rebuilt, never trusted.
                tracing::warn!(cache = %path.display(), error = %e, "index cache unreadable: rebuilding it");
                let _ = std::fs::remove_file(&path);
                private_file(&path)?;
                let db = builder().create(&path).map_err(|e| cerr(&path)(&e))?;
                (db, path, false)
            }
        };
        let c = IndexCache { db, path, temporary };
        c.init(store_id)?;
        Ok(c)
    }

    fn init(&self, store_id: &str) -> Result<()> {
        let e = cerr(&self.path);
        let tx = self.db.begin_write().map_err(|x| e(&x))?;
        {
            let mut meta = tx.open_table(META).map_err(|x| e(&x))?;
            let same = meta.get("store_id").map_err(|x| e(&x))?.map(|v| v.value() == store_id);
            if same == Some(false) {
                drop(meta);
                reset(&tx).map_err(|x| e(&x))?;
                meta = tx.open_table(META).map_err(|x| e(&x))?;
            }
            meta.insert("store_id", store_id).map_err(|x| e(&x))?;
            tx.open_table(CHUNKS).map_err(|x| e(&x))?;
            tx.open_table(PACKS).map_err(|x| e(&x))?;
            tx.open_table(PACK_NOS).map_err(|x| e(&x))?;
            tx.open_table(SEGMENTS).map_err(|x| e(&x))?;
        }
        tx.commit().map_err(|x| e(&x))
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a chunk is, if an indexed pack holds it.
    pub fn lookup(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        Ok(self.lookup_many(std::slice::from_ref(id))?.pop().flatten())
    }

    /// [`IndexCache::lookup`] for many ids, in one read transaction: a
    /// transaction and its table handles cost more than a look-up itself, and
    /// consecutive chunks mostly share a pack.
    pub fn lookup_many(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkLocation>>> {
        let e = cerr(&self.path);
        let tx = self.db.begin_read().map_err(|x| e(&x))?;
        let chunks = tx.open_table(CHUNKS).map_err(|x| e(&x))?;
        let mut packs = None;
        let mut last_pack: Option<(u32, [u8; 32])> = None;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(v) = chunks.get(id.0).map_err(|x| e(&x))? else {
                out.push(None);
                continue;
            };
            let v = v.value();
            let u = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().expect("4"));
            let pack = match last_pack {
                Some((no, pack)) if no == u(0) => pack,
                _ => {
                    let t = match &mut packs {
                        Some(t) => t,
                        None => packs.insert(tx.open_table(PACKS).map_err(|x| e(&x))?),
                    };
                    let pack = t
                        .get(u(0))
                        .map_err(|x| e(&x))?
                        .ok_or_else(|| Error::Cache {
                            path: self.path.clone(),
                            reason: format!("pack number {} missing", u(0)),
                        })?
                        .value();
                    last_pack = Some((u(0), pack));
                    pack
                }
            };
            let kind = BlobKind::from_code(v[24]).ok_or_else(|| e(&"bad kind code"))?;
            let compression = Compression::from_code(v[25]).ok_or_else(|| e(&"bad compression code"))?;
            out.push(Some(ChunkLocation {
                frame: FrameRef { container: pack, offset: u(4), stored_len: u(8), raw_len: u(12), kind, compression },
                offset: u(16),
                len: u(20),
            }));
        }
        Ok(out)
    }

    /// Names of the segments already loaded.
    pub fn segments(&self) -> Result<HashSet<String>> {
        let e = cerr(&self.path);
        let tx = self.db.begin_read().map_err(|x| e(&x))?;
        let t = tx.open_table(SEGMENTS).map_err(|x| e(&x))?;
        let mut out = HashSet::new();
        for r in t.iter().map_err(|x| e(&x))? {
            out.insert(r.map_err(|x| e(&x))?.0.value().to_string());
        }
        Ok(out)
    }

    /// Adds the entries of one segment (or of packs read directly, with `name` recorded as loaded).
    pub fn insert(&self, name: &str, packs: &[([u8; 32], Vec<PackEntry>)]) -> Result<()> {
        let e = cerr(&self.path);
        let tx = self.db.begin_write().map_err(|x| e(&x))?;
        {
            let mut chunks = tx.open_table(CHUNKS).map_err(|x| e(&x))?;
            let mut pt = tx.open_table(PACKS).map_err(|x| e(&x))?;
            let mut pn = tx.open_table(PACK_NOS).map_err(|x| e(&x))?;
            let mut rows: Vec<([u8; 32], [u8; 26])> = Vec::with_capacity(packs.iter().map(|p| p.1.len()).sum());
            for (pack, entries) in packs {
                let existing = pn.get(pack).map_err(|x| e(&x))?.map(|v| v.value());
                let no = match existing {
                    Some(n) => n,
                    None => {
                        let n = pt.len().map_err(|x| e(&x))? as u32;
                        pt.insert(n, pack).map_err(|x| e(&x))?;
                        pn.insert(pack, n).map_err(|x| e(&x))?;
                        n
                    }
                };
                for en in entries {
                    let mut v = [0u8; 26];
                    for (i, x) in
                        [no, en.frame_offset, en.frame_stored_len, en.frame_raw_len, en.chunk_offset, en.chunk_len]
                            .into_iter()
                            .enumerate()
                    {
                        v[i * 4..i * 4 + 4].copy_from_slice(&x.to_le_bytes());
                    }
                    v[24] = en.kind.code();
                    v[25] = en.compression as u8;
                    rows.push((en.id.0, v));
                }
            }
            // In id order, each leaf of the tree takes its inserts in one
            // run instead of being walked to again for every random id.
            // The sort is stable: a chunk listed twice keeps its last place.
            rows.sort_by_key(|r| r.0);
            let count = rows.len() as u64;
            for (id, v) in rows {
                chunks.insert(id, v).map_err(|x| e(&x))?;
            }
            tx.open_table(SEGMENTS).map_err(|x| e(&x))?.insert(name, count).map_err(|x| e(&x))?;
        }
        tx.commit().map_err(|x| e(&x))
    }

    /// Ids of the packs the cache knows.
    pub fn pack_ids(&self) -> Result<HashSet<[u8; 32]>> {
        let e = cerr(&self.path);
        let tx = self.db.begin_read().map_err(|x| e(&x))?;
        let t = tx.open_table(PACK_NOS).map_err(|x| e(&x))?;
        let mut out = HashSet::new();
        for r in t.iter().map_err(|x| e(&x))? {
            out.insert(r.map_err(|x| e(&x))?.0.value());
        }
        Ok(out)
    }

    /// Calls `f(chunk id, pack id, chunk length, kind)` for every indexed chunk.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&ChunkId, &[u8; 32], u32, BlobKind)) -> Result<()> {
        let e = cerr(&self.path);
        let tx = self.db.begin_read().map_err(|x| e(&x))?;
        let packs: std::collections::HashMap<u32, [u8; 32]> = {
            let t = tx.open_table(PACKS).map_err(|x| e(&x))?;
            let mut m = std::collections::HashMap::new();
            for r in t.iter().map_err(|x| e(&x))? {
                let (k, v) = r.map_err(|x| e(&x))?;
                m.insert(k.value(), v.value());
            }
            m
        };
        let t = tx.open_table(CHUNKS).map_err(|x| e(&x))?;
        for r in t.iter().map_err(|x| e(&x))? {
            let (k, v) = r.map_err(|x| e(&x))?;
            let v = v.value();
            let no = u32::from_le_bytes(v[..4].try_into().expect("4"));
            let Some(pack) = packs.get(&no) else { continue };
            let kind = BlobKind::from_code(v[24]).unwrap_or(BlobKind::Data);
            f(&ChunkId(k.value()), pack, u32::from_le_bytes(v[20..24].try_into().expect("4")), kind);
        }
        Ok(())
    }

    /// Forgets everything (before a full reload).
    pub fn clear(&self) -> Result<()> {
        let e = cerr(&self.path);
        let tx = self.db.begin_write().map_err(|x| e(&x))?;
        reset(&tx).map_err(|x| e(&x))?;
        tx.commit().map_err(|x| e(&x))
    }

    /// Unique chunks indexed: (count, plaintext bytes of data chunks).
    pub fn totals(&self) -> Result<(u64, u64)> {
        let e = cerr(&self.path);
        let tx = self.db.begin_read().map_err(|x| e(&x))?;
        let t = tx.open_table(CHUNKS).map_err(|x| e(&x))?;
        let (mut n, mut raw) = (0u64, 0u64);
        for r in t.iter().map_err(|x| e(&x))? {
            let (_, v) = r.map_err(|x| e(&x))?;
            let v = v.value();
            n += 1;
            if v[24] == BlobKind::Data.code() {
                raw += u64::from(u32::from_le_bytes(v[20..24].try_into().expect("4")));
            }
        }
        Ok((n, raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alike_core::{BlobKind, Compression};

    fn entry(id: u8, frame_offset: u32) -> PackEntry {
        PackEntry {
            id: ChunkId([id; 32]),
            kind: BlobKind::Data,
            compression: Compression::Zstd,
            frame_offset,
            frame_stored_len: 100,
            frame_raw_len: 200,
            chunk_offset: 0,
            chunk_len: 50,
        }
    }

    /// Entries go in sorted by id; every one is found where its pack put
    /// it, and a chunk listed twice keeps the place listed last, as when
    /// the entries went in in the order given.
    #[test]
    fn a_segment_inserted_out_of_order_finds_every_chunk_and_keeps_the_last_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let cache = IndexCache::open(dir.path(), "s").unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let packs = vec![
            (a, vec![entry(9, 10), entry(3, 20), entry(7, 30)]),
            (b, vec![entry(5, 40), entry(3, 50), entry(1, 60)]),
        ];
        cache.insert("index/s1", &packs).unwrap();
        let found = |id: u8| cache.lookup(&ChunkId([id; 32])).unwrap().map(|l| (l.frame.container, l.frame.offset));
        assert_eq!(found(9), Some((a, 10)));
        assert_eq!(found(7), Some((a, 30)));
        assert_eq!(found(5), Some((b, 40)));
        assert_eq!(found(1), Some((b, 60)));
        assert_eq!(found(3), Some((b, 50)), "the duplicate listed last wins");
        assert_eq!(found(4), None);
        assert_eq!(cache.segments().unwrap(), HashSet::from(["index/s1".to_string()]));
    }
}
