//! [`VhdxTarget`]: writes a dynamic or differencing VHDX as an
//! [`alike_core::DiskTarget`].

use alike_core::Recover;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::error::{Result, VhdxError};
use super::format::*;
use super::reader::VhdxSource;

/// Block size Hyper-V uses for new dynamic disks.
pub const DEFAULT_BLOCK_SIZE: u32 = 32 << 20;

const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u64 = MIB;
const METADATA_OFFSET: u64 = 2 * MIB;
const METADATA_LENGTH: u64 = MIB;
const BAT_OFFSET: u64 = 3 * MIB;
/// `blocks` value of a never-written block that must read as zeroes
/// (differencing files only: written with PAYLOAD_BLOCK_ZERO).
const ZERO_MARK: u64 = 1;

/// Options for [`VhdxTarget::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateOptions {
    /// Payload block size: a power of two from 1 MiB to 256 MiB (default 32 MiB).
    pub block_size: u32,
    /// Logical sector size, 512 (default) or 4096.
    pub logical_sector_size: u32,
    /// Physical sector size, 512 or 4096 (default).
    pub physical_sector_size: u32,
}

impl Default for CreateOptions {
    fn default() -> CreateOptions {
        CreateOptions { block_size: DEFAULT_BLOCK_SIZE, logical_sector_size: 512, physical_sector_size: 4096 }
    }
}

impl CreateOptions {
    /// Sets the payload block size.
    pub fn block_size(&mut self, b: u32) -> &mut CreateOptions {
        self.block_size = b;
        self
    }
    /// Sets the logical sector size.
    pub fn logical_sector_size(&mut self, s: u32) -> &mut CreateOptions {
        self.logical_sector_size = s;
        self
    }
    /// Sets the physical sector size.
    pub fn physical_sector_size(&mut self, s: u32) -> &mut CreateOptions {
        self.physical_sector_size = s;
        self
    }
}

#[derive(Debug)]
struct ParentInfo {
    source: VhdxSource,
    locator: Vec<(&'static str, String)>,
}

/// A VHDX being written: dynamic (over nothing) or differencing (over a
/// parent). Blocks are allocated on first write; the BAT, metadata and
/// headers are written by [`alike_core::DiskTarget::finish`], which then
/// renames the temporary file into place, so a failed or abandoned write
/// never leaves a half file under the final name.
#[derive(Debug)]
pub struct VhdxTarget {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    geo: Geometry,
    physical_sector: u32,
    bat_length: u64,
    /// Per payload block: its file offset, [`ZERO_MARK`], or 0 (not written).
    blocks: Vec<AtomicU64>,
    next_free: Mutex<u64>,
    parent: Option<ParentInfo>,
    /// Differencing only: per allocated block, one bit per logical sector.
    bitmaps: RwLock<HashMap<u64, Arc<[AtomicU64]>>>,
    /// Serialises read-modify-write of partly written sectors.
    rmw: Mutex<()>,
    finished: AtomicBool,
    /// The DataWriteGuid to record, when the caller chose it.
    data_write_guid: Option<Guid>,
}

fn tmp_path(path: &Path) -> Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| VhdxError::InvalidArgument { file: path.to_owned(), reason: "not a file path".into() })?;
    let mut t = std::ffi::OsString::from(".");
    t.push(name);
    t.push(format!(".alike-partial-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    Ok(path.with_file_name(t))
}

/// Relative path from folder `from` to file `to`, with `\` separators.
fn relative_windows(from: &Path, to: &Path) -> Option<String> {
    let from: Vec<Component<'_>> = from.components().collect();
    let to: Vec<Component<'_>> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return None;
    }
    let mut parts: Vec<String> = vec!["..".into(); from.len() - common];
    parts.extend(to[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    Some(parts.join("\\"))
}

impl VhdxTarget {
    /// Creates a dynamic VHDX of `size` bytes at `path` (written under a
    /// temporary name until [`alike_core::DiskTarget::finish`]).
    ///
    /// # Errors
    /// [`VhdxError::InvalidArgument`] for a size that is not a multiple of
    /// the logical sector or over 64 TiB, or a block or sector size not
    /// allowed; [`VhdxError::Io`] when the file cannot be created.
    pub fn create(path: impl AsRef<Path>, size: u64, opts: &CreateOptions) -> Result<VhdxTarget> {
        VhdxTarget::new(path.as_ref(), size, opts, None)
    }

    /// Creates a differencing VHDX (AVHDX) at `path` over the VHDX at
    /// `parent`: same size and sector sizes, the parent's block size, and a
    /// parent locator with `parent_linkage` (the parent's DataWriteGuid),
    /// `relative_path` and `absolute_win32_path`. Sectors never written read
    /// from the parent.
    ///
    /// # Errors
    /// The parent cannot be opened, or the file cannot be created.
    pub fn create_differencing(path: impl AsRef<Path>, parent: impl AsRef<Path>) -> Result<VhdxTarget> {
        let path = path.as_ref();
        let parent = parent.as_ref();
        let source = VhdxSource::open(parent)?;
        let info = &source.layers()[0];
        let opts = CreateOptions {
            block_size: info.block_size as u32,
            logical_sector_size: info.logical_sector_size,
            physical_sector_size: info.physical_sector_size,
        };
        let size = info.virtual_size;
        let io = |what| move |source| VhdxError::Io { file: parent.to_owned(), what, offset: 0, source };
        let parent_abs = std::fs::canonicalize(parent).map_err(io("resolving"))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir_abs = std::fs::canonicalize(dir).map_err(io("resolving the child's folder"))?;
        let mut locator = vec![("parent_linkage", format!("{{{}}}", info.data_write_guid))];
        if let Some(rel) = relative_windows(&dir_abs, &parent_abs) {
            locator.push(("relative_path", rel));
        }
        locator.push(("absolute_win32_path", parent_abs.to_string_lossy().replace('/', "\\")));
        VhdxTarget::new(path, size, &opts, Some(ParentInfo { source, locator }))
    }

    fn new(path: &Path, size: u64, opts: &CreateOptions, parent: Option<ParentInfo>) -> Result<VhdxTarget> {
        let bad = |reason: String| VhdxError::InvalidArgument { file: path.to_owned(), reason };
        let bs = u64::from(opts.block_size);
        if !(MIB..=256 * MIB).contains(&bs) || !bs.is_power_of_two() {
            return Err(bad(format!("block size {bs} (a power of two from 1 MiB to 256 MiB)")));
        }
        for s in [opts.logical_sector_size, opts.physical_sector_size] {
            if s != 512 && s != 4096 {
                return Err(bad(format!("sector size {s} (512 or 4096)")));
            }
        }
        let ls = u64::from(opts.logical_sector_size);
        if size % ls != 0 || size > MAX_VIRTUAL_SIZE {
            return Err(bad(format!("size {size} (a multiple of the {ls}-byte sector, at most 64 TiB)")));
        }
        let geo = Geometry { block_size: bs, logical_sector: ls, virtual_size: size, has_parent: parent.is_some() };
        let bat_length = (geo.bat_entries() * 8).div_ceil(MIB).max(1) * MIB;
        if bat_length > u64::from(u32::MAX) / MIB * MIB {
            return Err(bad("the BAT would exceed 4 GiB: use a larger block size".into()));
        }
        let tmp = tmp_path(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|source| VhdxError::Io { file: tmp.clone(), what: "creating", offset: 0, source })?;
        let blocks = (0..geo.data_blocks()).map(|_| AtomicU64::new(0)).collect();
        Ok(VhdxTarget {
            path: path.to_owned(),
            tmp,
            file,
            geo,
            physical_sector: opts.physical_sector_size,
            bat_length,
            blocks,
            next_free: Mutex::new(BAT_OFFSET + bat_length),
            parent,
            bitmaps: RwLock::new(HashMap::new()),
            rmw: Mutex::new(()),
            finished: AtomicBool::new(false),
            data_write_guid: None,
        })
    }

    /// Records `guid` as the file's DataWriteGuid instead of a fresh random
    /// one. For a file that replaces another holding the same virtual disk
    /// (a differencing file given a new parent, with the same content):
    /// children whose `parent_linkage` names the old file's DataWriteGuid
    /// then accept the new one. Never give two files with different
    /// content the same DataWriteGuid.
    #[must_use]
    pub fn with_data_write_guid(mut self, guid: Guid) -> VhdxTarget {
        self.data_write_guid = Some(guid);
        self
    }

    /// A random GUID; a failing system random source is an error naming this file.
    fn guid(&self) -> Result<Guid> {
        Guid::random().map_err(|e| self.io("drawing a random GUID", 0)(std::io::Error::other(e.to_string())))
    }

    fn io(&self, what: &'static str, offset: u64) -> impl FnOnce(std::io::Error) -> VhdxError + '_ {
        move |source| VhdxError::Io { file: self.tmp.clone(), what, offset, source }
    }

    fn bitmap(&self, block: u64) -> Option<Arc<[AtomicU64]>> {
        self.bitmaps.read().unwrap_or_else(|p| p.into_inner()).get(&block).cloned()
    }

    /// The file offset of `block`, allocating it (at the end of the file) on first use.
    fn allocate(&self, block: u64) -> u64 {
        let slot = &self.blocks[block as usize];
        let v = slot.load(Ordering::Acquire);
        if v >= MIB {
            return v;
        }
        let mut next = self.next_free.locked();
        let v = slot.load(Ordering::Acquire);
        if v >= MIB {
            return v;
        }
        let off = *next;
        *next += self.geo.block_size;
        if self.parent.is_some() {
            // A block marked zero reads as zeroes from our (sparse) file: all its sectors are ours.
            let fill = if v == ZERO_MARK { u64::MAX } else { 0 };
            let words = self.geo.sectors_per_block().div_ceil(64);
            let bits: Arc<[AtomicU64]> = (0..words).map(|_| AtomicU64::new(fill)).collect();
            self.bitmaps.write().unwrap_or_else(|p| p.into_inner()).insert(block, bits);
        }
        slot.store(off, Ordering::Release);
        off
    }

    fn set_bits(&self, block: u64, first: u64, end: u64) {
        let Some(bits) = self.bitmap(block) else { return };
        for s in first..end {
            bits[(s / 64) as usize].fetch_or(1 << (s % 64), Ordering::Relaxed);
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if self.finished.load(Ordering::Acquire) {
            return Err(VhdxError::InvalidArgument { file: self.path.clone(), reason: "write after finish".into() });
        }
        if offset.checked_add(len).is_none_or(|e| e > self.geo.virtual_size) {
            return Err(VhdxError::InvalidArgument {
                file: self.path.clone(),
                reason: format!(
                    "write of {len} bytes at {offset} past the end of the {}-byte disk",
                    self.geo.virtual_size
                ),
            });
        }
        Ok(())
    }

    /// Writes `data` at virtual offset `offset`.
    ///
    /// # Errors
    /// Out of range, after finish, or an I/O error.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        let bs = self.geo.block_size;
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let block = pos / bs;
            let within = pos % bs;
            let n = ((bs - within) as usize).min(data.len() - done);
            let piece = &data[done..done + n];
            done += n;
            let state = self.blocks[block as usize].load(Ordering::Acquire);
            let reads_zero = self.parent.is_none() || state == ZERO_MARK;
            if state < MIB && reads_zero && piece.iter().all(|b| *b == 0) {
                continue; // already reads as zeroes: keep the block unallocated
            }
            let foff = self.allocate(block);
            if self.parent.is_none() {
                self.file
                    .write_all_at(piece, foff + within)
                    .map_err(self.io("writing a payload block", foff + within))?;
                continue;
            }
            self.write_diff(block, foff, within, piece)?;
        }
        Ok(())
    }

    /// Writes into an allocated block of a differencing file: whole sectors
    /// directly, partly covered sectors merged with their current content.
    fn write_diff(&self, block: u64, foff: u64, within: u64, piece: &[u8]) -> Result<()> {
        let ss = self.geo.logical_sector;
        let end = within + piece.len() as u64;
        let first_full = within.div_ceil(ss) * ss;
        let last_full = end / ss * ss;
        if first_full < last_full {
            let a = (first_full - within) as usize;
            let b = (last_full - within) as usize;
            self.file
                .write_all_at(&piece[a..b], foff + first_full)
                .map_err(self.io("writing a payload block", foff))?;
            self.set_bits(block, first_full / ss, last_full / ss);
        }
        // Sectors only partly covered: the head and the tail (maybe the same sector).
        let mut edges = Vec::new();
        let head = within / ss * ss;
        if within % ss != 0 || end < head + ss {
            edges.push(head);
        }
        let tail = (end - 1) / ss * ss;
        if end % ss != 0 && !edges.contains(&tail) {
            edges.push(tail);
        }
        if edges.is_empty() {
            return Ok(());
        }
        let _g = self.rmw.locked();
        let bits = self.bitmap(block);
        for s0 in edges {
            let sector = s0 / ss;
            let mut buf = vec![0u8; ss as usize];
            let ours = bits
                .as_ref()
                .is_some_and(|b| b[(sector / 64) as usize].load(Ordering::Relaxed) >> (sector % 64) & 1 == 1);
            if ours {
                self.file.read_exact_at(&mut buf, foff + s0).map_err(self.io("reading back a sector", foff + s0))?;
            } else if let Some(p) = &self.parent {
                let vpos = block * self.geo.block_size + s0;
                let avail = p.source.layers()[0].virtual_size.saturating_sub(vpos).min(ss) as usize;
                if avail > 0 {
                    p.source.read_exact_at(vpos, &mut buf[..avail])?;
                }
            }
            let lo = within.max(s0);
            let hi = end.min(s0 + ss);
            buf[(lo - s0) as usize..(hi - s0) as usize]
                .copy_from_slice(&piece[(lo - within) as usize..(hi - within) as usize]);
            self.file.write_all_at(&buf, foff + s0).map_err(self.io("writing a payload block", foff + s0))?;
            self.set_bits(block, sector, sector + 1);
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeroes.
    ///
    /// # Errors
    /// Out of range, after finish, or an I/O error.
    pub fn zero(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let bs = self.geo.block_size;
        let zeros = vec![0u8; (len.min(MIB)) as usize];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let block = pos / bs;
            let bend = ((block + 1) * bs).min(end);
            let slot = &self.blocks[block as usize];
            let whole = pos == block * bs && bend == ((block + 1) * bs).min(self.geo.virtual_size);
            let state = slot.load(Ordering::Acquire);
            if state < MIB && (self.parent.is_none() || state == ZERO_MARK) {
                pos = bend; // already zeroes
                continue;
            }
            if state == 0 && whole {
                // Differencing, never written: mark the block zero instead of storing zeroes.
                let _n = self.next_free.locked();
                if slot.load(Ordering::Acquire) == 0 {
                    slot.store(ZERO_MARK, Ordering::Release);
                    pos = bend;
                    continue;
                }
            }
            while pos < bend {
                let n = (bend - pos).min(zeros.len() as u64);
                let blk = pos / bs;
                let foff = self.allocate(blk);
                if self.parent.is_none() {
                    self.file
                        .write_all_at(&zeros[..n as usize], foff + pos % bs)
                        .map_err(self.io("writing a payload block", foff))?;
                } else {
                    self.write_diff(blk, foff, pos % bs, &zeros[..n as usize])?;
                }
                pos += n;
            }
        }
        Ok(())
    }

    /// Writes the metadata, BAT and headers, syncs, and renames the file
    /// into place. `size` must be the size given at creation.
    ///
    /// # Errors
    /// A size mismatch, a second call, or an I/O error.
    pub fn complete(&self, size: u64) -> Result<()> {
        if size != self.geo.virtual_size {
            return Err(VhdxError::InvalidArgument {
                file: self.path.clone(),
                reason: format!("finished at {size} bytes but created with {}", self.geo.virtual_size),
            });
        }
        if self.finished.swap(true, Ordering::AcqRel) {
            return Err(VhdxError::InvalidArgument { file: self.path.clone(), reason: "finished twice".into() });
        }
        let g = self.geo;
        let mut next = *self.next_free.locked();
        let mut bat = vec![0u64; g.bat_entries() as usize];
        let spb = g.sectors_per_block();
        let block_bits = |block: u64| -> Option<Vec<u8>> {
            let bits = self.bitmap(block)?;
            let mut v: Vec<u8> = bits.iter().flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes()).collect();
            v.truncate((spb / 8) as usize);
            Some(v)
        };
        for block in 0..g.data_blocks() {
            let v = self.blocks[block as usize].load(Ordering::Acquire);
            let entry = if v >= MIB {
                let full = self.parent.is_none() || block_bits(block).is_some_and(|b| b.iter().all(|x| *x == 0xff));
                v | if full { PAYLOAD_FULLY_PRESENT } else { PAYLOAD_PARTIALLY_PRESENT }
            } else if v == ZERO_MARK {
                PAYLOAD_ZERO
            } else {
                PAYLOAD_NOT_PRESENT
            };
            bat[g.payload_index(block) as usize] = entry;
        }
        if self.parent.is_some() {
            let cr = g.chunk_ratio();
            for chunk in 0..g.data_blocks().div_ceil(cr) {
                let range = chunk * cr..((chunk + 1) * cr).min(g.data_blocks());
                let partial = range
                    .clone()
                    .any(|b| bat[g.payload_index(b) as usize] & BAT_STATE_MASK == PAYLOAD_PARTIALLY_PRESENT);
                if !partial {
                    continue;
                }
                let mut sb = vec![0u8; MIB as usize];
                let per = (spb / 8) as usize;
                for b in range {
                    let at = (b % cr) as usize * per;
                    match bat[g.payload_index(b) as usize] & BAT_STATE_MASK {
                        PAYLOAD_FULLY_PRESENT | PAYLOAD_ZERO => sb[at..at + per].fill(0xff),
                        PAYLOAD_PARTIALLY_PRESENT => {
                            if let Some(bits) = block_bits(b) {
                                sb[at..at + per].copy_from_slice(&bits);
                            }
                        }
                        _ => {}
                    }
                }
                self.file.write_all_at(&sb, next).map_err(self.io("writing a sector bitmap block", next))?;
                bat[g.bitmap_index(chunk) as usize] = next | SB_PRESENT;
                next += MIB;
            }
        }
        self.file.set_len(next).map_err(self.io("setting the file length", next))?;
        let put = |b: &[u8], at: u64, what: &'static str| self.file.write_all_at(b, at).map_err(self.io(what, at));
        // File type identifier with a creator string.
        let mut id = FILE_ID_SIG.to_vec();
        id.extend(format!("alike {}", env!("CARGO_PKG_VERSION")).encode_utf16().flat_map(u16::to_le_bytes));
        put(&id, 0, "writing the file identifier")?;
        // Metadata.
        let mut items: Vec<(Guid, u32, Vec<u8>)> = vec![
            (FILE_PARAMETERS, META_IS_REQUIRED, {
                let flags = if self.parent.is_some() { FLAG_HAS_PARENT } else { 0 };
                [(g.block_size as u32).to_le_bytes(), flags.to_le_bytes()].concat()
            }),
            (VIRTUAL_DISK_SIZE, META_IS_REQUIRED | META_IS_VIRTUAL_DISK, g.virtual_size.to_le_bytes().to_vec()),
            (PAGE83_DATA, META_IS_REQUIRED | META_IS_VIRTUAL_DISK, self.guid()?.0.to_vec()),
            (
                LOGICAL_SECTOR_SIZE,
                META_IS_REQUIRED | META_IS_VIRTUAL_DISK,
                (g.logical_sector as u32).to_le_bytes().to_vec(),
            ),
            (
                PHYSICAL_SECTOR_SIZE,
                META_IS_REQUIRED | META_IS_VIRTUAL_DISK,
                self.physical_sector.to_le_bytes().to_vec(),
            ),
        ];
        if let Some(p) = &self.parent {
            items.push((PARENT_LOCATOR, META_IS_REQUIRED, encode_parent_locator(&p.locator)));
        }
        let mut entries = Vec::new();
        let mut item_off = METADATA_TABLE_SIZE as u32;
        for (guid, flags, bytes) in &items {
            entries.push(MetaEntry { guid: *guid, offset: item_off, length: bytes.len() as u32, flags: *flags });
            put(bytes, METADATA_OFFSET + u64::from(item_off), "writing a metadata item")?;
            item_off += bytes.len() as u32;
        }
        put(&encode_metadata_table(&entries), METADATA_OFFSET, "writing the metadata table")?;
        // BAT.
        let bat_bytes: Vec<u8> = bat.iter().flat_map(|e| e.to_le_bytes()).collect();
        put(&bat_bytes, BAT_OFFSET, "writing the BAT")?;
        // Region tables.
        let regions = [
            Region { guid: BAT_REGION, offset: BAT_OFFSET, length: self.bat_length as u32, required: true },
            Region { guid: METADATA_REGION, offset: METADATA_OFFSET, length: METADATA_LENGTH as u32, required: true },
        ];
        let rt = encode_region_table(&regions);
        put(&rt, REGION1_OFFSET, "writing region table 1")?;
        put(&rt, REGION2_OFFSET, "writing region table 2")?;
        // Headers: both valid, the second current.
        let mut h = Header {
            sequence: 1,
            file_write_guid: self.guid()?,
            data_write_guid: match self.data_write_guid {
                Some(g) => g,
                None => self.guid()?,
            },
            log_guid: Guid::ZERO,
            log_version: 0,
            version: 1,
            log_length: LOG_LENGTH as u32,
            log_offset: LOG_OFFSET,
        };
        put(&h.encode(), HEADER1_OFFSET, "writing header 1")?;
        h.sequence = 2;
        put(&h.encode(), HEADER2_OFFSET, "writing header 2")?;
        self.file.sync_all().map_err(self.io("syncing", 0))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|source| VhdxError::Io {
            file: self.path.clone(),
            what: "renaming into place",
            offset: 0,
            source,
        })?;
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(|source| VhdxError::Io {
            file: dir.to_owned(),
            what: "syncing the folder",
            offset: 0,
            source,
        })?;
        Ok(())
    }
}

impl Drop for VhdxTarget {
    fn drop(&mut self) {
        // Unfinished (error, cancel) or finished (already renamed): nothing stays under the temporary name.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn tgt_err(target: &Path, offset: u64, e: VhdxError) -> alike_core::Error {
    match e {
        VhdxError::InvalidArgument { .. } => alike_core::Error::InvalidArgument(e.to_string()),
        e => alike_core::Error::TargetWrite { target: target.display().to_string(), offset, source: e.into_io() },
    }
}

impl alike_core::DiskTarget for VhdxTarget {
    fn label(&self) -> String {
        self.path.display().to_string()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> alike_core::Result<()> {
        self.write(offset, data).map_err(|e| tgt_err(&self.path, offset, e))
    }
    /// A dynamic file's unwritten blocks read as zeroes; a differencing
    /// file's read from the parent, so holes must be written (as ZERO blocks).
    fn holes_read_as_zero(&self) -> bool {
        self.parent.is_none()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> alike_core::Result<()> {
        self.zero(offset, len).map_err(|e| tgt_err(&self.path, offset, e))
    }
    fn finish(&self, size: u64) -> alike_core::Result<()> {
        self.complete(size).map_err(|e| tgt_err(&self.path, size, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_use_backslashes() {
        assert_eq!(relative_windows(Path::new("/a/b"), Path::new("/a/b/p.vhdx")).as_deref(), Some("p.vhdx"));
        assert_eq!(
            relative_windows(Path::new("/a/b/c"), Path::new("/a/x/p.vhdx")).as_deref(),
            Some("..\\..\\x\\p.vhdx")
        );
    }
}
