//! Disk data and changed-block tracking, modelled on a VHD-based SR.
//!
//! ## Data: chains of copy-on-write layers
//! A VDI's data is a chain of layers, like a VHD chain in an `ext`/`lvm` SR.
//! A layer is a sparse file in `<state>/layers/` plus the set of 2 MiB
//! blocks it holds (VHD's default block size). Reading a block takes it from
//! the top-most layer that holds it, or zeroes. A write goes to the top layer
//! of a writable (non-snapshot) VDI, copying the rest of the 2 MiB block up
//! first. A snapshot freezes the VDI's chain for the snapshot and gives the
//! VDI a fresh empty top layer, so snapshots cost nothing and the layers hold
//! exactly what XAPI's VHD files hold: `export_raw_vdi?format=vhd&base=B`
//! then includes the blocks of the layers that are in one chain but not the
//! other, as `vhd-tool` does with VHD files.
//!
//! ## Change tracking: SM's `.cbtlog` files
//! Each VDI with CBT enabled has a log (bitmap of 64 KiB blocks, size,
//! parent and child uuids), handled the way sm's `VDI.py` handles
//! `<uuid>.cbtlog`: a snapshot renames the leaf's log to the snapshot and
//! gives the leaf a fresh log linked after it; `list_changed_blocks(from,
//! to)` walks child links after `from` up to `to` ORing bitmaps; destroying a
//! VDI merges its bitmap into its child's and relinks; `data_destroy` keeps
//! the log; disabling CBT deletes the leaf's log and unlinks it from its
//! parent. A VDI's `cbt_enabled` is "has a log".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// VHD block size: the unit of layer allocation and of delta exports.
pub const VHD_BLOCK: u64 = 2 << 20;
/// CBT block size: one bit of a `list_changed_blocks` bitmap.
pub const CBT_BLOCK: u64 = 64 << 10;

/// One copy-on-write layer.
#[derive(Debug)]
pub(crate) struct Layer {
    path: PathBuf,
    file: File,
    blocks: RwLock<BTreeSet<u64>>,
}

impl Layer {
    fn has(&self, block: u64) -> bool {
        self.blocks.read().expect("layer lock").contains(&block)
    }
    pub(crate) fn blocks(&self) -> BTreeSet<u64> {
        self.blocks.read().expect("layer lock").clone()
    }
}

/// A VDI's data as a chain of layers (bottom first), readable without the
/// simulator's lock.
#[derive(Debug, Clone)]
pub(crate) struct ChainReader {
    pub(crate) layers: Vec<Arc<Layer>>,
    pub(crate) size: u64,
    pub(crate) label: String,
}

impl ChainReader {
    /// Virtual size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` from `offset`; bytes past the end read as zeroes.
    ///
    /// # Errors
    /// [`Error::Io`] when a layer file cannot be read.
    pub(crate) fn read_at(&self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            let block = offset / VHD_BLOCK;
            let in_block = (VHD_BLOCK - offset % VHD_BLOCK).min(buf.len() as u64) as usize;
            let (now, rest) = buf.split_at_mut(in_block);
            match self.layers.iter().rev().find(|l| l.has(block)) {
                Some(l) if offset < self.size => {
                    let valid = ((self.size - offset) as usize).min(now.len());
                    read_full(&l.file, &mut now[..valid], offset).map_err(Error::io(&l.path))?;
                    now[valid..].fill(0);
                }
                _ => now.fill(0),
            }
            offset += in_block as u64;
            buf = rest;
        }
        Ok(())
    }

    /// The 2 MiB blocks allocated anywhere in the chain.
    pub(crate) fn allocated_blocks(&self) -> BTreeSet<u64> {
        let mut all = BTreeSet::new();
        for l in &self.layers {
            all.extend(l.blocks());
        }
        all.retain(|b| b * VHD_BLOCK < self.size);
        all
    }
}

/// Reads all of `buf` at `offset`; a file shorter than that reads as zeroes.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

impl alike_core::DiskSource for ChainReader {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn allocated_ranges(&self) -> alike_core::Result<Vec<Range<u64>>> {
        Ok(block_ranges(&self.allocated_blocks(), self.size))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        ChainReader::read_at(self, offset, buf).map_err(|e| alike_core::Error::SourceRead {
            disk: self.label.clone(),
            offset,
            source: std::io::Error::other(e),
        })
    }
}

/// Whole 2 MiB blocks as byte ranges, clipped to `size`, adjacent ones merged.
pub(crate) fn block_ranges(blocks: &BTreeSet<u64>, size: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &b in blocks {
        let r = b * VHD_BLOCK..((b + 1) * VHD_BLOCK).min(size);
        if r.start >= r.end {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// A CBT log (sm's `<uuid>.cbtlog`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CbtLog {
    /// Disk size the bitmap covers.
    pub(crate) size: u64,
    /// One bit per 64 KiB, most significant bit first.
    pub(crate) bitmap: Vec<u8>,
    pub(crate) parent: Option<String>,
    pub(crate) child: Option<String>,
}

fn bitmap_len(size: u64) -> usize {
    size.div_ceil(CBT_BLOCK).div_ceil(8) as usize
}

impl CbtLog {
    fn new(size: u64) -> CbtLog {
        CbtLog { size, bitmap: vec![0; bitmap_len(size)], parent: None, child: None }
    }
    fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = (offset + len).min(self.size);
        for b in offset / CBT_BLOCK..end.div_ceil(CBT_BLOCK) {
            if let Some(byte) = self.bitmap.get_mut((b / 8) as usize) {
                *byte |= 0x80 >> (b % 8);
            }
        }
    }
}

/// What the state file holds about storage.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct StoreMeta {
    next_layer: u64,
    layers: BTreeMap<u64, Vec<u64>>,
    /// VDI uuid → layer ids, bottom first.
    chains: BTreeMap<String, Vec<u64>>,
    /// VDI uuid → virtual size.
    sizes: BTreeMap<String, u64>,
    cbt: BTreeMap<String, CbtLog>,
}

/// The storage of all VDIs.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    next_layer: u64,
    layers: HashMap<u64, Arc<Layer>>,
    chains: HashMap<String, Vec<u64>>,
    sizes: HashMap<String, u64>,
    cbt: HashMap<String, CbtLog>,
}

impl Store {
    /// Opens (or starts) the store under `dir/layers`.
    pub(crate) fn open(dir: &Path, meta: StoreMeta) -> Result<Store> {
        let dir = dir.join("layers");
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let mut s = Store {
            dir,
            next_layer: meta.next_layer,
            layers: HashMap::new(),
            chains: meta.chains.into_iter().collect(),
            sizes: meta.sizes.into_iter().collect(),
            cbt: meta.cbt.into_iter().collect(),
        };
        for (id, blocks) in meta.layers {
            let l = s.open_layer(id, blocks.into_iter().collect())?;
            s.layers.insert(id, l);
        }
        Ok(s)
    }

    pub(crate) fn meta(&self) -> StoreMeta {
        StoreMeta {
            next_layer: self.next_layer,
            layers: self.layers.iter().map(|(id, l)| (*id, l.blocks().into_iter().collect())).collect(),
            chains: self.chains.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            sizes: self.sizes.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            cbt: self.cbt.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    fn open_layer(&self, id: u64, blocks: BTreeSet<u64>) -> Result<Arc<Layer>> {
        let path = self.dir.join(format!("{id:08}.img"));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
        let file = file.map_err(Error::io(&path))?;
        Ok(Arc::new(Layer { path, file, blocks: RwLock::new(blocks) }))
    }

    fn new_layer(&mut self) -> Result<u64> {
        let id = self.next_layer;
        self.next_layer += 1;
        let l = self.open_layer(id, BTreeSet::new())?;
        l.file.set_len(0).map_err(Error::io(&l.path))?;
        self.layers.insert(id, l);
        Ok(id)
    }

    /// Creates empty storage for a new VDI.
    pub(crate) fn create(&mut self, uuid: &str, size: u64) -> Result<()> {
        let id = self.new_layer()?;
        self.chains.insert(uuid.to_owned(), vec![id]);
        self.sizes.insert(uuid.to_owned(), size);
        Ok(())
    }

    /// Whether the VDI still has data (not destroyed, not `data_destroy`ed).
    pub(crate) fn has_data(&self, uuid: &str) -> bool {
        self.chains.contains_key(uuid)
    }

    pub(crate) fn size(&self, uuid: &str) -> u64 {
        self.sizes.get(uuid).copied().unwrap_or(0)
    }

    /// A reader of the VDI's data.
    pub(crate) fn reader(&self, uuid: &str) -> Option<ChainReader> {
        let chain = self.chains.get(uuid)?;
        Some(ChainReader {
            layers: chain.iter().filter_map(|id| self.layers.get(id).cloned()).collect(),
            size: self.size(uuid),
            label: format!("VDI {uuid}"),
        })
    }

    /// Writes `data` at `offset` into the VDI's top layer (copying the rest
    /// of each touched 2 MiB block up first) and marks its CBT log. With
    /// `skip_zeroes`, pieces that are all zero over blocks that read as zero
    /// already are not written (what `vhd-tool --prezeroed` does).
    pub(crate) fn write(&mut self, uuid: &str, offset: u64, data: &[u8], skip_zeroes: bool) -> Result<()> {
        let size = self.size(uuid);
        let end = offset.saturating_add(data.len() as u64);
        if end > size {
            return Err(Error::api(
                "VDI_IO_ERROR",
                [format!("write of {} bytes at {offset} past the end ({size})", data.len())],
            ));
        }
        let reader = self.reader(uuid).ok_or_else(|| Error::api("VDI_MISSING", ["", uuid]))?;
        let top = reader.layers.last().cloned().ok_or_else(|| Error::api("VDI_MISSING", ["", uuid]))?;
        let below = ChainReader { layers: reader.layers[..reader.layers.len() - 1].to_vec(), ..reader.clone() };
        let mut pos = offset;
        let mut rest = data;
        let mut block_buf = Vec::new();
        while !rest.is_empty() {
            let block = pos / VHD_BLOCK;
            let n = ((VHD_BLOCK - pos % VHD_BLOCK) as usize).min(rest.len());
            let (piece, tail) = rest.split_at(n);
            let allocated = top.has(block) || below.layers.iter().any(|l| l.has(block));
            if skip_zeroes && !allocated && piece.iter().all(|&b| b == 0) {
                pos += n as u64;
                rest = tail;
                continue;
            }
            if !top.has(block) {
                // Copy-up: the whole block as it reads now, then the new bytes over it.
                let start = block * VHD_BLOCK;
                let len = VHD_BLOCK.min(size - start) as usize;
                block_buf.resize(len, 0);
                below.read_at(start, &mut block_buf)?;
                let at = (pos - start) as usize;
                block_buf[at..at + n].copy_from_slice(piece);
                top.file.write_all_at(&block_buf, start).map_err(Error::io(&top.path))?;
                top.blocks.write().expect("layer lock").insert(block);
            } else {
                top.file.write_all_at(piece, pos).map_err(Error::io(&top.path))?;
            }
            pos += n as u64;
            rest = tail;
        }
        if let Some(log) = self.cbt.get_mut(uuid) {
            log.mark(offset, data.len() as u64);
        }
        Ok(())
    }

    /// Snapshots `uuid` as `snap`: the snapshot takes the chain, the VDI gets
    /// a fresh top layer, and the CBT log moves as sm's `_cbt_snapshot` does.
    pub(crate) fn snapshot(&mut self, uuid: &str, snap: &str) -> Result<()> {
        let chain = self.chains.get(uuid).cloned().ok_or_else(|| Error::api("VDI_MISSING", ["", uuid]))?;
        let size = self.size(uuid);
        self.chains.insert(snap.to_owned(), chain.clone());
        self.sizes.insert(snap.to_owned(), size);
        let top = self.new_layer()?;
        let mut leaf = chain;
        leaf.push(top);
        self.chains.insert(uuid.to_owned(), leaf);
        if let Some(mut log) = self.cbt.remove(uuid) {
            if let Some(p) = log.parent.clone()
                && let Some(pl) = self.cbt.get_mut(&p)
            {
                pl.child = Some(snap.to_owned());
            }
            let old_child = log.child.take();
            log.child = Some(uuid.to_owned());
            self.cbt.insert(snap.to_owned(), log);
            let mut fresh = CbtLog::new(size);
            fresh.parent = Some(snap.to_owned());
            fresh.child = old_child;
            self.cbt.insert(uuid.to_owned(), fresh);
        }
        Ok(())
    }

    /// A writable copy of `uuid` (VDI.clone / VM.clone): shares the frozen
    /// chain, like a VHD clone. No CBT log.
    pub(crate) fn clone_vdi(&mut self, uuid: &str, new: &str) -> Result<()> {
        let chain = self.chains.get(uuid).cloned().ok_or_else(|| Error::api("VDI_MISSING", ["", uuid]))?;
        let size = self.size(uuid);
        // Freeze the source's top too, as a VHD clone of a leaf does.
        let top = self.new_layer()?;
        let mut src = chain.clone();
        src.push(top);
        self.chains.insert(uuid.to_owned(), src);
        let mine = self.new_layer()?;
        let mut c = chain;
        c.push(mine);
        self.chains.insert(new.to_owned(), c);
        self.sizes.insert(new.to_owned(), size);
        Ok(())
    }

    /// Grows the VDI (and its CBT log's bitmap).
    pub(crate) fn resize(&mut self, uuid: &str, size: u64) {
        self.sizes.insert(uuid.to_owned(), size);
        if let Some(log) = self.cbt.get_mut(uuid) {
            log.size = size;
            log.bitmap.resize(bitmap_len(size), 0);
        }
    }

    /// Drops the VDI's data, keeping its CBT log (`VDI.data_destroy`).
    pub(crate) fn data_destroy(&mut self, uuid: &str) {
        self.chains.remove(uuid);
        self.gc();
    }

    /// Drops the VDI's data and CBT log, merging the log into its child's as
    /// sm does on delete.
    pub(crate) fn destroy(&mut self, uuid: &str) {
        self.chains.remove(uuid);
        self.sizes.remove(uuid);
        if let Some(log) = self.cbt.remove(uuid) {
            if let Some(p) = &log.parent
                && let Some(pl) = self.cbt.get_mut(p)
            {
                pl.child = log.child.clone();
            }
            if let Some(c) = &log.child
                && let Some(cl) = self.cbt.get_mut(c)
            {
                cl.parent = log.parent.clone();
                for (d, s) in cl.bitmap.iter_mut().zip(&log.bitmap) {
                    *d |= *s;
                }
            }
        }
        self.gc();
    }

    /// Deletes layers no chain refers to.
    fn gc(&mut self) {
        let used: BTreeSet<u64> = self.chains.values().flatten().copied().collect();
        let dead: Vec<u64> = self.layers.keys().filter(|id| !used.contains(id)).copied().collect();
        for id in dead {
            if let Some(l) = self.layers.remove(&id) {
                let _ = std::fs::remove_file(&l.path);
            }
        }
    }

    pub(crate) fn cbt_enabled(&self, uuid: &str) -> bool {
        self.cbt.contains_key(uuid)
    }

    /// `VDI.enable_cbt` at the SM level (idempotent).
    pub(crate) fn enable_cbt(&mut self, uuid: &str) {
        let size = self.size(uuid);
        self.cbt.entry(uuid.to_owned()).or_insert_with(|| CbtLog::new(size));
    }

    /// `VDI.disable_cbt` at the SM level: delete the log, unlink the parent.
    pub(crate) fn disable_cbt(&mut self, uuid: &str) {
        if let Some(log) = self.cbt.remove(uuid)
            && let Some(p) = log.parent
            && let Some(pl) = self.cbt.get_mut(&p)
        {
            pl.child = None;
        }
    }

    /// sm's `list_changed_blocks(vdi_from, vdi_to)`: the OR of the bitmaps of
    /// the logs after `from` up to and including `to`.
    pub(crate) fn list_changed_blocks(&self, from: &str, to: &str) -> Result<Vec<u8>> {
        const CHANGED: &str = "Failed to calculate changed blocks for given VDIs.";
        const INCONSISTENT: &str = "Changed block tracking log is in an inconsistent state.";
        if from == to {
            return Err(Error::sm(460, CHANGED, "Source and target VDI are same"));
        }
        if self.cbt.contains_key(from) && self.cbt.contains_key(to) {
            let mut merged: Option<Vec<u8>> = None;
            let mut size = 0u64;
            let mut cur = from.to_owned();
            let mut steps = 0;
            while let Some((next, log)) =
                self.cbt.get(&cur).and_then(|l| l.child.clone()).and_then(|n| self.cbt.get(&n).map(|log| (n, log)))
            {
                steps += 1;
                if steps > 100_000 {
                    return Err(Error::sm(459, INCONSISTENT, "Loop in the CBT chain"));
                }
                cur = next;
                if log.bitmap.len() * 8 < (log.size / CBT_BLOCK) as usize {
                    return Err(Error::sm(459, INCONSISTENT, "Inconsistent bitmaps"));
                }
                match &mut merged {
                    None => {
                        merged = Some(log.bitmap.clone());
                        size = log.size;
                    }
                    Some(m) => {
                        if log.size < size || log.bitmap.len() < m.len() {
                            return Err(Error::sm(459, INCONSISTENT, "Inconsistent bitmaps"));
                        }
                        if log.size > size {
                            size = log.size;
                        }
                        m.resize(log.bitmap.len(), 0);
                        for (d, s) in m.iter_mut().zip(&log.bitmap) {
                            *d |= *s;
                        }
                    }
                }
                if cur == to {
                    return Ok(merged.unwrap_or_default());
                }
            }
        }
        Err(Error::sm(460, CHANGED, "Source and target VDI are unrelated"))
    }

    /// The 2 MiB blocks a `format=vhd&base=` export of `uuid` over `base`
    /// holds: those of layers in one chain but not the other.
    pub(crate) fn delta_blocks(&self, uuid: &str, base: &str) -> Option<BTreeSet<u64>> {
        let a: BTreeSet<u64> = self.chains.get(uuid)?.iter().copied().collect();
        let b: BTreeSet<u64> = self.chains.get(base)?.iter().copied().collect();
        let size = self.size(uuid);
        let mut out = BTreeSet::new();
        for id in a.symmetric_difference(&b) {
            if let Some(l) = self.layers.get(id) {
                out.extend(l.blocks().into_iter().filter(|blk| blk * VHD_BLOCK < size));
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(bitmap: &[u8]) -> Vec<u64> {
        (0..bitmap.len() as u64 * 8).filter(|i| bitmap[(i / 8) as usize] & (0x80 >> (i % 8)) != 0).collect()
    }

    #[test]
    fn snapshots_share_layers_and_writes_copy_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), StoreMeta::default()).unwrap();
        s.create("v", 8 << 20).unwrap();
        s.write("v", 100, b"hello", false).unwrap();
        s.snapshot("v", "s1").unwrap();
        s.write("v", 102, b"XY", false).unwrap();
        let mut buf = [0u8; 5];
        s.reader("s1").unwrap().read_at(100, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        s.reader("v").unwrap().read_at(100, &mut buf).unwrap();
        assert_eq!(&buf, b"heXYo");
        assert_eq!(s.delta_blocks("v", "s1").unwrap(), [0].into());
        s.destroy("s1");
        s.reader("v").unwrap().read_at(100, &mut buf).unwrap();
        assert_eq!(&buf, b"heXYo");
    }

    #[test]
    fn cbt_chain_like_sm() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), StoreMeta::default()).unwrap();
        s.create("v", 4 << 20).unwrap();
        s.enable_cbt("v");
        s.write("v", 0, &[1; 10], false).unwrap();
        s.snapshot("v", "s1").unwrap();
        s.write("v", 3 * CBT_BLOCK + 5, &[2; 10], false).unwrap();
        s.write("v", 40 * CBT_BLOCK, &[2; 10], false).unwrap();
        s.snapshot("v", "s2").unwrap();
        assert_eq!(bits(&s.list_changed_blocks("s1", "s2").unwrap()), vec![3, 40]);
        assert_eq!(s.list_changed_blocks("s1", "s1").unwrap_err().code(), Some("SR_BACKEND_FAILURE_460"));
        s.write("v", 7 * CBT_BLOCK, &[2; 10], false).unwrap();
        s.snapshot("v", "s3").unwrap();
        assert_eq!(bits(&s.list_changed_blocks("s1", "s3").unwrap()), vec![3, 7, 40]);
        // Deleting the middle snapshot merges its bitmap into the next.
        s.destroy("s2");
        assert_eq!(bits(&s.list_changed_blocks("s1", "s3").unwrap()), vec![3, 7, 40]);
        // data_destroy keeps the log.
        s.data_destroy("s1");
        assert!(s.cbt_enabled("s1") && !s.has_data("s1"));
        assert_eq!(bits(&s.list_changed_blocks("s1", "s3").unwrap()), vec![3, 7, 40]);
        // Disabling and re-enabling breaks the chain.
        s.disable_cbt("v");
        s.enable_cbt("v");
        s.snapshot("v", "s4").unwrap();
        assert_eq!(s.list_changed_blocks("s3", "s4").unwrap_err().code(), Some("SR_BACKEND_FAILURE_460"));
    }
}
