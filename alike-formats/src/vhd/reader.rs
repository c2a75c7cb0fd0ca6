//! The positional reader: a VHD file, or a chain of differencing VHDs, as a
//! [`DiskSource`].

use alike_core::Recover;
use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use alike_core::{DiskSource, RawFileSource};

use super::error::{Result, VhdError};
use super::format::{
    DiskType, DynHeader, FOOTER_SIZE, Footer, HEADER_SIZE, MAX_BLOCKS, PLAT_MACX, PLAT_W2KU, PLAT_W2RU, SECTOR,
    UNALLOCATED, bit, bitmap_bytes, run_end, utf16, uuid_hex,
};

/// Deepest differencing chain [`VhdSource::open`] follows.
pub const MAX_CHAIN_DEPTH: usize = 64;
/// Longest parent locator read (bytes).
const MAX_LOCATOR_LEN: u32 = 32 * 1024;
/// Memory for cached sector bitmaps, per image in a chain.
const BITMAP_CACHE_BYTES: u64 = 2 << 20;

/// Bytes a layer is read from: a file, or memory (fuzzing, tests).
pub(crate) trait Storage: Send + Sync + fmt::Debug {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn len(&self) -> u64;
}

#[derive(Debug)]
struct FileStorage {
    file: File,
    len: u64,
}

impl Storage for FileStorage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// An image held in memory.
#[derive(Debug)]
pub(crate) struct MemStorage(pub(crate) Vec<u8>);

impl Storage for MemStorage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|s| *s <= self.0.len());
        let src = start.and_then(|s| self.0.get(s..s.checked_add(buf.len())?));
        match src {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the image")),
        }
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

/// A cache slot: which block's bitmap it holds, and the bitmap.
type Slot = Mutex<Option<(u64, Arc<[u8]>)>>;

/// A direct-mapped cache of sector bitmaps: bounded memory, one short lock
/// per lookup, so sequential reads from several threads rarely meet.
struct BitmapCache {
    slots: Vec<Slot>,
}

impl BitmapCache {
    fn new(bitmap_len: u64, blocks: u64) -> BitmapCache {
        let n = (BITMAP_CACHE_BYTES / bitmap_len.max(1)).clamp(16, 4096).min(blocks.max(1));
        BitmapCache { slots: (0..n).map(|_| Mutex::new(None)).collect() }
    }

    fn get(&self, block: u64, load: impl FnOnce() -> Result<Vec<u8>>) -> Result<Arc<[u8]>> {
        let slot = &self.slots[(block % self.slots.len() as u64) as usize];
        if let Some((b, bm)) = &*slot.locked()
            && *b == block
        {
            return Ok(bm.clone());
        }
        let bm: Arc<[u8]> = load()?.into();
        *slot.locked() = Some((block, bm.clone()));
        Ok(bm)
    }
}

/// The block map of a dynamic or differencing image.
struct Sparse {
    header: DynHeader,
    block_size: u64,
    bitmap_len: u64,
    /// BAT entries for the blocks that cover the disk (sector numbers).
    bat: Vec<u32>,
    bitmaps: BitmapCache,
}

/// One image of a chain.
pub(crate) struct Layer {
    label: String,
    path: Option<PathBuf>,
    storage: Box<dyn Storage>,
    footer: Footer,
    disk_type: DiskType,
    size: u64,
    sparse: Option<Sparse>,
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("label", &self.label)
            .field("disk_type", &self.disk_type)
            .field("size", &self.size)
            .field("block_size", &self.sparse.as_ref().map(|s| s.block_size))
            .finish_non_exhaustive()
    }
}

impl Layer {
    /// Reads exactly `buf.len()` bytes at `offset` of the file.
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.storage.read_exact_at(buf, offset).map_err(|source| VhdError::Read {
            file: self.label.clone(),
            offset,
            len: buf.len() as u64,
            source,
        })
    }

    fn read_vec(&self, offset: u64, len: u64, what: &'static str) -> Result<Vec<u8>> {
        let file_len = self.storage.len();
        if offset.checked_add(len).is_none_or(|e| e > file_len) {
            return Err(VhdError::Truncated { file: self.label.clone(), what, offset, len, file_len });
        }
        let mut v = vec![0u8; len as usize];
        self.read(&mut v, offset)?;
        Ok(v)
    }

    /// Parses one image: footer (the tail copy, or the head copy of a
    /// dynamic disk when the tail one is damaged), dynamic header and BAT.
    pub(crate) fn parse(storage: Box<dyn Storage>, label: String, path: Option<PathBuf>) -> Result<Layer> {
        let file_len = storage.len();
        if file_len < FOOTER_SIZE as u64 {
            return Err(VhdError::Truncated { file: label, what: "footer", offset: 0, len: 512, file_len });
        }
        let mut tail = [0u8; FOOTER_SIZE];
        let tail_at = file_len - FOOTER_SIZE as u64;
        storage.read_exact_at(&mut tail, tail_at).map_err(|source| VhdError::Read {
            file: label.clone(),
            offset: tail_at,
            len: 512,
            source,
        })?;
        // The spec keeps a footer copy at offset 0 of dynamic and differencing
        // disks "for redundancy": the tail footer is authoritative, the copy is
        // used only when the tail one is unusable (damaged, or the file was cut
        // short). A fixed disk has no copy (offset 0 is guest data), so a head
        // copy claiming "fixed" is not believed. When both are bad the tail's
        // error is reported.
        let footer = match Footer::decode(&tail, &label, tail_at) {
            Ok(f) => f,
            Err(tail_err) => {
                let mut head = [0u8; FOOTER_SIZE];
                let head_ok = file_len >= 2 * FOOTER_SIZE as u64 && storage.read_exact_at(&mut head, 0).is_ok();
                match head_ok.then(|| Footer::decode(&head, &label, 0)) {
                    Some(Ok(f)) if matches!(f.disk_type, 3 | 4) => f,
                    _ => return Err(tail_err),
                }
            }
        };
        let Some(disk_type) = DiskType::from_code(footer.disk_type) else {
            return Err(VhdError::UnsupportedDiskType { file: label, disk_type: footer.disk_type });
        };
        let size = footer.current_size;
        let mut layer = Layer { label, path, storage, footer, disk_type, size, sparse: None };
        if disk_type == DiskType::Fixed {
            if size > tail_at {
                return Err(VhdError::Truncated {
                    file: layer.label,
                    what: "fixed disk data",
                    offset: 0,
                    len: size,
                    file_len,
                });
            }
            return Ok(layer);
        }
        let hoff = layer.footer.data_offset;
        let hb = layer.read_vec(hoff, HEADER_SIZE as u64, "dynamic disk header")?;
        let header = DynHeader::decode(&hb, &layer.label, hoff)?;
        let block_size = u64::from(header.block_size);
        let blocks = size.div_ceil(block_size);
        if blocks > MAX_BLOCKS {
            return Err(VhdError::TooLarge {
                file: layer.label,
                what: "block count",
                value: blocks,
                limit: MAX_BLOCKS,
            });
        }
        if blocks > u64::from(header.max_table_entries) {
            return Err(VhdError::Malformed {
                file: layer.label,
                offset: hoff + 28,
                reason: format!(
                    "the BAT has {} entries, but a disk of {size} bytes in {block_size}-byte blocks needs {blocks}",
                    header.max_table_entries
                ),
            });
        }
        // Bounded by the file's length (checked by read_vec) and MAX_BLOCKS.
        let raw = layer.read_vec(header.table_offset, blocks * 4, "BAT")?;
        let bat: Vec<u32> = raw.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
        let bitmap_len = bitmap_bytes(block_size);
        for (i, &e) in bat.iter().enumerate() {
            if e == UNALLOCATED {
                continue;
            }
            let start = u64::from(e) * SECTOR;
            let block_start = i as u64 * block_size;
            // What must be in the file: the bitmap and the sectors of the block inside the disk.
            let used = (size - block_start).min(block_size).div_ceil(SECTOR) * SECTOR;
            if start + bitmap_len + used > file_len {
                return Err(VhdError::BatEntryPastEnd { file: layer.label, block: i as u64, offset: start, file_len });
            }
        }
        let bitmaps = BitmapCache::new(bitmap_len, blocks);
        layer.sparse = Some(Sparse { header, block_size, bitmap_len, bat, bitmaps });
        Ok(layer)
    }

    fn open_file(path: &Path) -> Result<Layer> {
        let io_err = |source| VhdError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if meta.is_dir() {
            return Err(VhdError::InvalidArgument(format!("{} is a directory, not a VHD file", path.display())));
        }
        let storage = FileStorage { file, len: meta.len() };
        Layer::parse(Box::new(storage), path.display().to_string(), Some(path.to_owned()))
    }

    /// Where the parent of this differencing image may be, best first:
    /// relative (`W2ru`) then absolute (`W2ku`) locators, `MacX` file URLs,
    /// then the parent's name from the header, beside this file.
    pub(crate) fn parent_candidates(&self, dir: &Path) -> Vec<PathBuf> {
        let Some(sparse) = &self.sparse else { return Vec::new() };
        let mut out: Vec<PathBuf> = Vec::new();
        let mut push = |p: PathBuf| {
            if !p.as_os_str().is_empty() && !out.contains(&p) {
                out.push(p);
            }
        };
        for code in [PLAT_W2RU, PLAT_W2KU, PLAT_MACX] {
            for loc in sparse.header.locators.iter().filter(|l| l.code == code) {
                if loc.length == 0 || loc.length > MAX_LOCATOR_LEN {
                    continue;
                }
                let Ok(data) = self.read_vec(loc.offset, u64::from(loc.length), "parent locator") else { continue };
                let text = if code == PLAT_MACX {
                    let s = String::from_utf8_lossy(&data).trim_end_matches('\0').to_owned();
                    s.strip_prefix("file://").map(str::to_owned).unwrap_or(s)
                } else {
                    utf16(&data, true)
                };
                for p in locator_paths(&text, dir) {
                    push(p);
                }
            }
        }
        let name = sparse.header.parent_name();
        if !name.is_empty() {
            for p in locator_paths(&name, dir) {
                push(p);
            }
            // The bare file name beside the child (an absolute name from another host).
            if let Some(base) = Path::new(&name.replace('\\', "/")).file_name() {
                push(dir.join(base));
            }
        }
        out
    }
}

/// Paths a locator string may name: as written, and with Windows
/// separators turned into `/`; relative ones resolved against `dir`.
fn locator_paths(text: &str, dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![text.to_owned()];
    if text.contains('\\') {
        v.push(text.replace('\\', "/"));
    }
    v.into_iter()
        .map(|t| {
            let p = PathBuf::from(t);
            if p.is_absolute() { p } else { dir.join(p) }
        })
        .collect()
}

/// A VHD image — fixed, dynamic, or the top of a differencing chain — as a
/// [`DiskSource`]: positional, thread-safe reads (`pread`, no shared cursor).
///
/// Each sector resolves through the chain: the first image whose block is
/// allocated *and* whose sector bitmap bit is set holds it; a sector no
/// image holds reads as zeroes. Runs of sectors are read with one `pread`
/// each, and sector bitmaps are cached in bounded memory (2 MiB per image).
#[derive(Debug)]
pub struct VhdSource {
    label: String,
    size: u64,
    /// Top first; the last is fixed or dynamic (or, from memory, a parentless differencing image).
    layers: Vec<Layer>,
}

impl VhdSource {
    /// Opens a VHD file and, for a differencing disk, its parents.
    ///
    /// Parents are found through the parent locators (relative paths against
    /// the child's folder first, then absolute ones, then `MacX` URLs, then
    /// the parent's name beside the child) and must carry the unique id the
    /// child records. The chain may be at most [`MAX_CHAIN_DEPTH`] deep and
    /// must not loop.
    ///
    /// # Errors
    /// [`VhdError::Io`] when a file cannot be opened; [`VhdError::BadCookie`],
    /// [`VhdError::Checksum`], [`VhdError::Truncated`], [`VhdError::BatEntryPastEnd`],
    /// [`VhdError::BadBlockSize`], [`VhdError::Malformed`] and friends for a damaged
    /// image; [`VhdError::ParentNotFound`], [`VhdError::ParentUuidMismatch`],
    /// [`VhdError::ParentLoop`], [`VhdError::ChainTooDeep`] for a broken chain.
    pub fn open(path: impl AsRef<Path>) -> Result<VhdSource> {
        let path = path.as_ref();
        let canon = |p: &Path| std::fs::canonicalize(p).map_err(|source| VhdError::Io { path: p.to_owned(), source });
        let mut seen = HashSet::new();
        seen.insert(canon(path)?);
        let mut layers = vec![Layer::open_file(path)?];
        loop {
            let child = layers.last().expect("at least one layer");
            if child.disk_type != DiskType::Differencing {
                break;
            }
            if layers.len() >= MAX_CHAIN_DEPTH {
                return Err(VhdError::ChainTooDeep { file: path.display().to_string(), limit: MAX_CHAIN_DEPTH });
            }
            let child_path = child.path.clone().expect("file layers have paths");
            let dir = match child_path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            let expected = child.sparse.as_ref().map(|s| s.header.parent_unique_id).unwrap_or_default();
            let mut tried = Vec::new();
            let mut mismatch = None;
            let mut found = None;
            for cand in child.parent_candidates(&dir) {
                if !cand.is_file() {
                    tried.push(cand);
                    continue;
                }
                let c = canon(&cand)?;
                if seen.contains(&c) {
                    return Err(VhdError::ParentLoop { file: child.label.clone(), parent: c });
                }
                let parent = Layer::open_file(&cand)?;
                if parent.footer.unique_id != expected {
                    mismatch.get_or_insert((cand, parent.footer.unique_id));
                    continue;
                }
                found = Some((c, parent));
                break;
            }
            match (found, mismatch) {
                (Some((c, parent)), _) => {
                    seen.insert(c);
                    layers.push(parent);
                }
                (None, Some((parent, uid))) => {
                    return Err(VhdError::ParentUuidMismatch {
                        file: child.label.clone(),
                        parent,
                        expected: uuid_hex(&expected),
                        found: uuid_hex(&uid),
                    });
                }
                (None, None) => {
                    let parent_name = child.sparse.as_ref().map(|s| s.header.parent_name()).unwrap_or_default();
                    return Err(VhdError::ParentNotFound { file: child.label.clone(), parent_name, tried });
                }
            }
        }
        Ok(VhdSource::from_layers(path.display().to_string(), layers))
    }

    /// Reads a fixed or dynamic VHD image held in memory.
    ///
    /// # Errors
    /// As [`VhdSource::open`] for a damaged image; [`VhdError::NeedsParent`] for
    /// a differencing image.
    pub fn from_bytes(label: &str, image: Vec<u8>) -> Result<VhdSource> {
        let layer = Layer::parse(Box::new(MemStorage(image)), label.to_owned(), None)?;
        if layer.disk_type == DiskType::Differencing {
            return Err(VhdError::NeedsParent { file: label.to_owned() });
        }
        Ok(VhdSource::from_layers(label.to_owned(), vec![layer]))
    }

    pub(crate) fn from_layers(label: String, layers: Vec<Layer>) -> VhdSource {
        let size = layers[0].size;
        VhdSource { label, size, layers }
    }

    /// The files of the chain, this image first, its base last.
    pub fn chain(&self) -> Vec<&Path> {
        self.layers.iter().filter_map(|l| l.path.as_deref()).collect()
    }

    /// The type of the top image.
    pub fn disk_type(&self) -> DiskType {
        self.layers[0].disk_type
    }

    /// The unique id in the top image's footer (what a child's header names as its parent).
    pub fn unique_id(&self) -> [u8; 16] {
        self.layers[0].footer.unique_id
    }

    /// The top image's block size, for dynamic and differencing images.
    pub fn block_size(&self) -> Option<u32> {
        self.layers[0].sparse.as_ref().map(|s| s.header.block_size)
    }

    /// Fills `buf` from `off` as image `idx` of the chain sees the disk.
    fn read_from(&self, idx: usize, off: u64, buf: &mut [u8]) -> Result<()> {
        let Some(layer) = self.layers.get(idx) else {
            buf.fill(0);
            return Ok(());
        };
        // Beyond this image's own size: whatever its parent says (zeroes at the base).
        let inside = layer.size.saturating_sub(off).min(buf.len() as u64) as usize;
        let (buf, beyond) = buf.split_at_mut(inside);
        if !beyond.is_empty() {
            self.read_from(idx + 1, off + inside as u64, beyond)?;
        }
        let Some(sp) = &layer.sparse else {
            return if buf.is_empty() { Ok(()) } else { layer.read(buf, off) };
        };
        let mut pos = 0usize;
        while pos < buf.len() {
            let abs = off + pos as u64;
            let block = abs / sp.block_size;
            let in_block = abs % sp.block_size;
            let n = (sp.block_size - in_block).min((buf.len() - pos) as u64) as usize;
            let piece = &mut buf[pos..pos + n];
            let entry = sp.bat[block as usize];
            if entry == UNALLOCATED {
                self.read_from(idx + 1, abs, piece)?;
            } else {
                let base = u64::from(entry) * SECTOR;
                let bitmap = sp.bitmaps.get(block, || layer.read_vec(base, sp.bitmap_len, "sector bitmap"))?;
                let end = in_block + n as u64;
                let mut s = in_block / SECTOR;
                let last = end.div_ceil(SECTOR);
                while s < last {
                    let e = run_end(&bitmap, s, last);
                    let a = (s * SECTOR).max(in_block);
                    let b = (e * SECTOR).min(end);
                    let sub = &mut piece[(a - in_block) as usize..(b - in_block) as usize];
                    if bit(&bitmap, s) {
                        layer.read(sub, base + sp.bitmap_len + a)?;
                    } else {
                        self.read_from(idx + 1, block * sp.block_size + a, sub)?;
                    }
                    s = e;
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Sorted, disjoint byte ranges that may hold data: the union over the
    /// chain of allocated blocks (block precision), and of the data (not
    /// holes) of a fixed base.
    pub(crate) fn ranges(&self) -> Result<Vec<Range<u64>>> {
        let mut all: Vec<Range<u64>> = Vec::new();
        for layer in &self.layers {
            let limit = layer.size.min(self.size);
            match &layer.sparse {
                Some(sp) => {
                    for (i, &e) in sp.bat.iter().enumerate() {
                        let start = i as u64 * sp.block_size;
                        if e != UNALLOCATED && start < limit {
                            all.push(start..(start + sp.block_size).min(limit));
                        }
                    }
                }
                None => match &layer.path {
                    Some(p) => {
                        let raw = RawFileSource::open(p).map_err(|e| match e {
                            alike_core::Error::Io { path, source } => VhdError::Io { path, source },
                            e => VhdError::Source(e),
                        })?;
                        let holes = raw.allocated_ranges().map_err(VhdError::Source)?;
                        all.extend(holes.into_iter().filter(|r| r.start < limit).map(|r| r.start..r.end.min(limit)));
                    }
                    None => all.push(0..limit),
                },
            }
        }
        Ok(merge(all))
    }
}

/// Sorts and merges ranges (touching ones join); drops empty ones.
pub(crate) fn merge(mut v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    v.retain(|r| r.start < r.end);
    v.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

impl DiskSource for VhdSource {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn allocated_ranges(&self) -> alike_core::Result<Vec<Range<u64>>> {
        self.ranges().map_err(|e| alike_core::Error::SourceRead {
            disk: self.label.clone(),
            offset: 0,
            source: e.into_io(),
        })
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        let fail =
            |e: VhdError| alike_core::Error::SourceRead { disk: self.label.clone(), offset, source: e.into_io() };
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.size) {
            return Err(fail(VhdError::InvalidArgument(format!(
                "read of {} bytes at {offset} is past the end of the disk ({} bytes)",
                buf.len(),
                self.size
            ))));
        }
        self.read_from(0, offset, buf).map_err(fail)
    }
}
