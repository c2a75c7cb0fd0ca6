//! The writers: [`VhdTarget`] (a restore target, dynamic or fixed),
//! [`write_differencing`] (a child over an existing VHD) and [`StreamWriter`]
//! (a dynamic VHD produced front to back, for an HTTP upload).

use alike_core::Recover;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use alike_core::{DiskSource, DiskTarget};

use super::error::{Result, VhdError};
use super::format::{
    DiskType, DynHeader, FOOTER_SIZE, Footer, HEADER_SIZE, Locator, MAX_BLOCKS, PLAT_MACX, PLAT_W2KU, PLAT_W2RU,
    SECTOR, UNALLOCATED, VERSION_1, bitmap_bytes, check_block_size, round_up_sector, set_bit, to_utf16, vhd_time,
};
use super::reader::{VhdSource, merge};

/// Block size of the dynamic and differencing disks we write unless told otherwise.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// Where the dynamic header goes (right after the footer copy).
const HEADER_AT: u64 = FOOTER_SIZE as u64;
/// Where parent locator data or the BAT starts.
const AFTER_HEADER: u64 = HEADER_AT + HEADER_SIZE as u64;
/// Largest read from a source at once.
const READ_PIECE: u64 = 4 << 20;

/// How to write a VHD.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VhdOptions {
    /// A fixed VHD (the data, then a footer) instead of a dynamic one.
    pub fixed: bool,
    /// Block size of a dynamic disk: a power of two from 512 bytes to
    /// 256 MiB; default [`DEFAULT_BLOCK_SIZE`] (what XenServer and Hyper-V use).
    pub block_size: u32,
    /// The image's unique id; default random.
    pub unique_id: Option<[u8; 16]>,
}

impl Default for VhdOptions {
    fn default() -> VhdOptions {
        VhdOptions { fixed: false, block_size: DEFAULT_BLOCK_SIZE, unique_id: None }
    }
}

impl VhdOptions {
    /// Sets [`VhdOptions::fixed`].
    #[must_use]
    pub fn fixed(mut self, fixed: bool) -> VhdOptions {
        self.fixed = fixed;
        self
    }
    /// Sets [`VhdOptions::block_size`].
    #[must_use]
    pub fn block_size(mut self, block_size: u32) -> VhdOptions {
        self.block_size = block_size;
        self
    }
    /// Sets [`VhdOptions::unique_id`].
    #[must_use]
    pub fn unique_id(mut self, id: [u8; 16]) -> VhdOptions {
        self.unique_id = Some(id);
        self
    }

    fn uid(&self) -> Result<[u8; 16]> {
        if let Some(u) = self.unique_id {
            return Ok(u);
        }
        let mut u = [0u8; 16];
        alike_core::random_bytes(&mut u).map_err(VhdError::Source)?;
        // An RFC 4122 version 4 UUID, as other writers produce.
        u[6] = (u[6] & 0x0F) | 0x40;
        u[8] = (u[8] & 0x3F) | 0x80;
        Ok(u)
    }
}

fn now() -> u32 {
    vhd_time(SystemTime::now())
}

fn pwrite(file: &File, data: &[u8], offset: u64, label: &str) -> Result<()> {
    file.write_all_at(data, offset).map_err(|source| VhdError::Write { file: label.to_owned(), offset, source })
}

/// The BAT area: entries big-endian, padded to a sector with `0xFF`.
fn encode_bat(bat: &[u32]) -> Vec<u8> {
    let mut v: Vec<u8> = bat.iter().flat_map(|e| e.to_be_bytes()).collect();
    v.resize(round_up_sector(v.len() as u64) as usize, 0xFF);
    v
}

/// Geometry of a dynamic image's metadata.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Virtual size (whole sectors).
    size: u64,
    block_size: u64,
    bitmap_len: u64,
    /// BAT entries.
    entries: u64,
    bat_at: u64,
    /// First byte after the BAT area.
    data_start: u64,
}

impl Layout {
    fn new(size: u64, block_size: u64, bat_at: u64, label: &str) -> Result<Layout> {
        check_block_size(block_size, label)?;
        let entries = size.div_ceil(block_size);
        if entries > MAX_BLOCKS {
            return Err(VhdError::TooLarge {
                file: label.to_owned(),
                what: "block count",
                value: entries,
                limit: MAX_BLOCKS,
            });
        }
        let data_start = bat_at + round_up_sector(entries * 4);
        Ok(Layout { size, block_size, bitmap_len: bitmap_bytes(block_size), entries, bat_at, data_start })
    }

    fn header(&self) -> DynHeader {
        DynHeader {
            table_offset: self.bat_at,
            version: VERSION_1,
            max_table_entries: self.entries as u32,
            block_size: self.block_size as u32,
            parent_unique_id: [0; 16],
            parent_timestamp: 0,
            parent_name: [0; 512],
            locators: Default::default(),
        }
    }

    /// Where a block allocated at `next_free` goes in a file we can seek in:
    /// its data 4 KiB aligned (holes and page-sized I/O), a few KiB of hole
    /// between blocks. Checks the BAT can name it.
    fn place(&self, next_free: u64, label: &str) -> Result<u64> {
        let at = (next_free + self.bitmap_len).div_ceil(4096) * 4096 - self.bitmap_len;
        bat_entry(at, label)?;
        Ok(at)
    }
}

/// The BAT entry (sector number) for a block at byte `at`.
fn bat_entry(at: u64, label: &str) -> Result<u32> {
    let sector = at / SECTOR;
    if sector >= u64::from(UNALLOCATED) {
        return Err(VhdError::TooLarge {
            file: label.to_owned(),
            what: "block offset (in sectors)",
            value: sector,
            limit: u64::from(UNALLOCATED) - 1,
        });
    }
    Ok(sector as u32)
}

/// A file written under a temporary name beside its final path and renamed
/// into place only once complete and synced.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    committed: AtomicBool,
}

impl TempFile {
    fn create(path: &Path) -> Result<TempFile> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = path
            .file_name()
            .ok_or_else(|| VhdError::InvalidArgument(format!("{} is not a file path", path.display())))?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".alike-partial-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let tmp = path.with_file_name(tmp_name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|source| VhdError::Io { path: tmp.clone(), source })?;
        Ok(TempFile { path: path.to_owned(), tmp, file, committed: AtomicBool::new(false) })
    }

    /// fsync, rename into place, fsync the directory.
    fn commit(&self) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| VhdError::Io { path, source }
        };
        self.file.sync_all().map_err(io(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        self.committed.store(true, Ordering::SeqCst);
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Dropped before commit (error, cancel): leave nothing behind.
        if !self.committed.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes the BAT, the dynamic header, the footer copy at 0 and the footer
/// at `end`, and sets the file's length to just after it.
fn write_dynamic_metadata(
    t: &TempFile,
    label: &str,
    layout: &Layout,
    bat: &[u32],
    header: &DynHeader,
    footer: &Footer,
    end: u64,
) -> Result<()> {
    pwrite(&t.file, &encode_bat(bat), layout.bat_at, label)?;
    pwrite(&t.file, &header.encode(), HEADER_AT, label)?;
    let f = footer.encode();
    pwrite(&t.file, &f, 0, label)?;
    pwrite(&t.file, &f, end, label)?;
    t.file.set_len(end + FOOTER_SIZE as u64).map_err(|source| VhdError::Write {
        file: label.to_owned(),
        offset: end,
        source,
    })
}

struct DynState {
    bat: Vec<u32>,
    next_free: u64,
}

// Summarised: the BAT can hold millions of entries.
impl std::fmt::Debug for DynState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let allocated = self.bat.iter().filter(|e| **e != UNALLOCATED).count();
        f.debug_struct("DynState")
            .field("entries", &self.bat.len())
            .field("allocated", &allocated)
            .field("next_free", &self.next_free)
            .finish()
    }
}

enum Kind {
    Fixed,
    Dynamic { layout: Layout, state: Mutex<DynState>, ones: Vec<u8> },
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Fixed => f.write_str("Fixed"),
            Kind::Dynamic { layout, state, .. } => {
                f.debug_struct("Dynamic").field("layout", layout).field("state", state).finish_non_exhaustive()
            }
        }
    }
}

/// A new VHD file as a restore target ([`DiskTarget`]): dynamic (default)
/// or fixed.
///
/// Writes may come from several threads, in any order, at any offsets. A
/// dynamic disk allocates a block on its first write (under a short lock),
/// marks all its sectors present — unwritten sectors of an allocated block
/// are holes of the sparse file and read as zeroes, as everywhere in a
/// fresh target — and writes data with `pwrite`. The file is written under
/// a temporary name; [`DiskTarget::finish`] writes the BAT, header and
/// footers, fsyncs and renames it into place, so a failed restore never
/// leaves a half file at the path.
///
/// Sizes are rounded up to whole sectors (512 bytes): VHD counts sectors.
#[derive(Debug)]
pub struct VhdTarget {
    label: String,
    t: TempFile,
    /// Size given at creation, whole sectors.
    capacity: u64,
    uid: [u8; 16],
    kind: Kind,
    finishing: AtomicBool,
}

impl VhdTarget {
    /// Starts a VHD of `size` bytes (rounded up to a sector) at `path`
    /// (replaced at finish).
    ///
    /// # Errors
    /// [`VhdError::BadBlockSize`] / [`VhdError::TooLarge`] for unusable options or
    /// sizes; [`VhdError::Io`] when the temporary file cannot be created.
    pub fn create(path: impl AsRef<Path>, size: u64, opts: &VhdOptions) -> Result<VhdTarget> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let capacity = round_up_sector(size);
        let kind = if opts.fixed {
            Kind::Fixed
        } else {
            let layout = Layout::new(capacity, u64::from(opts.block_size), AFTER_HEADER, &label)?;
            let state = DynState { bat: vec![UNALLOCATED; layout.entries as usize], next_free: layout.data_start };
            Kind::Dynamic { layout, state: Mutex::new(state), ones: vec![0xFF; layout.bitmap_len as usize] }
        };
        let uid = opts.uid()?;
        let t = TempFile::create(path)?;
        Ok(VhdTarget { label, t, capacity, uid, kind, finishing: AtomicBool::new(false) })
    }

    /// The unique id the footer will carry.
    pub fn unique_id(&self) -> [u8; 16] {
        self.uid
    }

    /// Byte offset in the file of block `block`'s sector bitmap, allocating it on first use.
    fn block_at(&self, block: u64, layout: &Layout, state: &Mutex<DynState>, ones: &[u8]) -> Result<u64> {
        let mut st = state.locked();
        let e = st.bat[block as usize];
        if e != UNALLOCATED {
            return Ok(u64::from(e) * SECTOR);
        }
        let at = layout.place(st.next_free, &self.label)?;
        st.bat[block as usize] = bat_entry(at, &self.label)?;
        st.next_free = at + layout.bitmap_len + layout.block_size;
        drop(st);
        // All sectors present: an unwritten sector of the block is a hole and reads as zero.
        pwrite(&self.t.file, ones, at, &self.label)?;
        Ok(at)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        if self.finishing.load(Ordering::SeqCst) {
            return Err(VhdError::InvalidArgument(format!("{}: write after finish", self.label)));
        }
        if offset.checked_add(data.len() as u64).is_none_or(|e| e > self.capacity) {
            return Err(VhdError::InvalidArgument(format!(
                "{}: write of {} bytes at {offset} is past the end of the disk ({} bytes)",
                self.label,
                data.len(),
                self.capacity
            )));
        }
        let Kind::Dynamic { layout, state, ones } = &self.kind else {
            return pwrite(&self.t.file, data, offset, &self.label);
        };
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = offset + pos as u64;
            let block = abs / layout.block_size;
            let in_block = abs % layout.block_size;
            let n = (layout.block_size - in_block).min((data.len() - pos) as u64) as usize;
            let at = self.block_at(block, layout, state, ones)?;
            pwrite(&self.t.file, &data[pos..pos + n], at + layout.bitmap_len + in_block, &self.label)?;
            pos += n;
        }
        Ok(())
    }

    fn complete(&self, size: u64) -> Result<()> {
        if self.finishing.swap(true, Ordering::SeqCst) {
            return Err(VhdError::InvalidArgument(format!("{}: finish called twice", self.label)));
        }
        let size = round_up_sector(size);
        if size > self.capacity {
            return Err(VhdError::InvalidArgument(format!(
                "{}: finishing at {size} bytes, but it was created for {}",
                self.label, self.capacity
            )));
        }
        match &self.kind {
            Kind::Fixed => {
                let footer = Footer::new(DiskType::Fixed, size, u64::MAX, self.uid, now());
                pwrite(&self.t.file, &footer.encode(), size, &self.label)?;
                self.t.file.set_len(size + FOOTER_SIZE as u64).map_err(|source| VhdError::Write {
                    file: self.label.clone(),
                    offset: size,
                    source,
                })?;
            }
            Kind::Dynamic { layout, state, .. } => {
                let st = state.locked();
                let footer = Footer::new(DiskType::Dynamic, size, HEADER_AT, self.uid, now());
                write_dynamic_metadata(&self.t, &self.label, layout, &st.bat, &layout.header(), &footer, st.next_free)?;
            }
        }
        self.t.commit()
    }
}

impl DiskTarget for VhdTarget {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> alike_core::Result<()> {
        self.write(offset, data).map_err(|e| alike_core::Error::TargetWrite {
            target: self.label.clone(),
            offset,
            source: e.into_io(),
        })
    }
    fn holes_read_as_zero(&self) -> bool {
        true
    }
    fn finish(&self, size: u64) -> alike_core::Result<()> {
        self.complete(size).map_err(|e| alike_core::Error::TargetWrite {
            target: self.label.clone(),
            offset: size,
            source: e.into_io(),
        })
    }
}

/// `ranges` clipped to `size`, widened to whole sectors, sorted and merged.
fn sector_ranges(ranges: &[Range<u64>], size: u64) -> Vec<Range<u64>> {
    let v = ranges.iter().map(|r| r.start / SECTOR * SECTOR..round_up_sector(r.end.min(size))).collect();
    merge(v)
}

/// Calls `f(block, pieces)` for each block `ranges` (sorted, disjoint) touch,
/// in order, with the in-block byte ranges they cover.
fn for_each_block(
    ranges: &[Range<u64>],
    block_size: u64,
    mut f: impl FnMut(u64, &[Range<u64>]) -> Result<()>,
) -> Result<()> {
    let mut cur: Option<u64> = None;
    let mut pieces: Vec<Range<u64>> = Vec::new();
    for r in ranges {
        let mut a = r.start;
        while a < r.end {
            let block = a / block_size;
            let b = r.end.min((block + 1) * block_size);
            if cur != Some(block) {
                if let Some(c) = cur {
                    f(c, &pieces)?;
                }
                pieces.clear();
                cur = Some(block);
            }
            pieces.push(a - block * block_size..b - block * block_size);
            a = b;
        }
    }
    if let Some(c) = cur {
        f(c, &pieces)?;
    }
    Ok(())
}

/// Fills `buf` from `source` at `offset`; bytes past the source's end (the
/// rounding to a sector) are zeroes.
fn read_source(source: &dyn DiskSource, offset: u64, buf: &mut [u8]) -> Result<()> {
    let avail = source.size().saturating_sub(offset).min(buf.len() as u64) as usize;
    let (head, tail) = buf.split_at_mut(avail);
    if !head.is_empty() {
        source.read_at(offset, head).map_err(VhdError::Source)?;
    }
    tail.fill(0);
    Ok(())
}

/// `to` relative to directory `from` (both absolute), with `..` as needed.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let a: Vec<Component<'_>> = from.components().collect();
    let b: Vec<Component<'_>> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c);
    }
    out
}

/// Writes a differencing VHD at `path` over the VHD at `parent`, holding
/// the sectors of `ranges` (widened to whole sectors) read from `source`;
/// every other sector reads from the parent.
///
/// The child's size is `source.size()` (rounded up to a sector) and its
/// block size the parent's (2 MiB for a fixed parent). Its header records
/// the parent's unique id, modification time and file name, and three
/// parent locators: `W2ru` (the path relative to the child's folder,
/// Windows style), `W2ku` (the absolute path) and `MacX` (a relative
/// `file://` URL, as XenServer writes). The file is written under a
/// temporary name, synced and renamed into place.
///
/// # Errors
/// As [`VhdSource::open`] for the parent; [`VhdError::Source`] when `source`
/// fails; [`VhdError::Io`] / [`VhdError::Write`] for the new file.
pub fn write_differencing(
    path: impl AsRef<Path>,
    parent: impl AsRef<Path>,
    source: &dyn DiskSource,
    ranges: &[Range<u64>],
) -> Result<()> {
    let (path, parent) = (path.as_ref(), parent.as_ref());
    let label = path.display().to_string();
    let parent_src = VhdSource::open(parent)?;
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| VhdError::Io { path: p, source }
    };
    let parent_abs = std::fs::canonicalize(parent).map_err(io(parent))?;
    let mtime = std::fs::metadata(parent).and_then(|m| m.modified()).map_err(io(parent))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir_abs = std::fs::canonicalize(dir).map_err(io(dir))?;
    let rel = relative_path(&dir_abs, &parent_abs).to_string_lossy().into_owned();
    let rel = if rel.starts_with("..") { rel } else { format!("./{rel}") };
    let locs: [(u32, Vec<u8>); 3] = [
        (PLAT_W2RU, to_utf16(&rel.replace('/', "\\"), true)),
        (PLAT_W2KU, to_utf16(&parent_abs.to_string_lossy(), true)),
        (PLAT_MACX, format!("file://{rel}").into_bytes()),
    ];
    let mut header_locs = [Locator::default(); 8];
    let mut at = AFTER_HEADER;
    for (slot, (code, data)) in header_locs.iter_mut().zip(&locs) {
        let space = round_up_sector(data.len() as u64).max(SECTOR);
        *slot = Locator { code: *code, space: space as u32, length: data.len() as u32, offset: at };
        at += space;
    }
    let size = round_up_sector(source.size());
    let block_size = parent_src.block_size().map_or(u64::from(DEFAULT_BLOCK_SIZE), u64::from);
    let layout = Layout::new(size, block_size, at, &label)?;
    let mut header = layout.header();
    header.parent_unique_id = parent_src.unique_id();
    header.parent_timestamp = vhd_time(mtime);
    let name = parent_abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut name16 = to_utf16(&name, false);
    name16.truncate(512);
    header.parent_name[..name16.len()].copy_from_slice(&name16);
    header.locators = header_locs;

    let t = TempFile::create(path)?;
    for (loc, (_, data)) in header_locs.iter().zip(&locs) {
        pwrite(&t.file, data, loc.offset, &label)?;
    }
    let mut bat = vec![UNALLOCATED; layout.entries as usize];
    let mut next_free = layout.data_start;
    let mut buf = Vec::new();
    let ranges = sector_ranges(ranges, size);
    for_each_block(&ranges, block_size, |block, pieces| {
        let at = layout.place(next_free, &label)?;
        bat[block as usize] = bat_entry(at, &label)?;
        next_free = at + layout.bitmap_len + block_size;
        let mut bitmap = vec![0u8; layout.bitmap_len as usize];
        for p in pieces {
            for s in p.start / SECTOR..p.end / SECTOR {
                set_bit(&mut bitmap, s);
            }
            let mut off = p.start;
            while off < p.end {
                let n = (p.end - off).min(READ_PIECE);
                buf.resize(n as usize, 0);
                read_source(source, block * block_size + off, &mut buf)?;
                pwrite(&t.file, &buf, at + layout.bitmap_len + off, &label)?;
                off += n;
            }
        }
        pwrite(&t.file, &bitmap, at, &label)
    })?;
    let footer = Footer::new(DiskType::Differencing, size, HEADER_AT, VhdOptions::default().uid()?, now());
    write_dynamic_metadata(&t, &label, &layout, &bat, &header, &footer, next_free)?;
    t.commit()
}

/// A VHD produced front to back from a [`DiskSource`], without seeking —
/// for a `PUT /import_raw_vdi?format=vhd` body, which must announce its
/// length ([`StreamWriter::len`]) because XAPI refuses chunked encoding.
///
/// Dynamic layout: footer copy, dynamic header, BAT (planned up front from
/// `allocated_ranges()`), then each block touched by an allocated range, in
/// disk order (sector bitmap: the sectors of allocated ranges; data: those
/// sectors read from the source, zeroes elsewhere), then the footer. With
/// [`VhdOptions::fixed`]: every byte of the disk, then the footer.
pub struct StreamWriter<'a> {
    source: &'a dyn DiskSource,
    fixed: bool,
    layout: Layout,
    ranges: Vec<Range<u64>>,
    /// Number of blocks written (dynamic).
    blocks: u64,
    uid: [u8; 16],
}

impl std::fmt::Debug for StreamWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("source", &self.source.label())
            .field("fixed", &self.fixed)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<'a> StreamWriter<'a> {
    /// Plans the stream: asks `source` for its allocated ranges once.
    ///
    /// # Errors
    /// [`VhdError::Source`] when the source fails; [`VhdError::BadBlockSize`] /
    /// [`VhdError::TooLarge`] for unusable options or sizes.
    pub fn new(source: &'a dyn DiskSource, opts: &VhdOptions) -> Result<StreamWriter<'a>> {
        let label = source.label();
        let size = round_up_sector(source.size());
        let layout = Layout::new(size, u64::from(opts.block_size), AFTER_HEADER, &label)?;
        let ranges = sector_ranges(&source.allocated_ranges().map_err(VhdError::Source)?, size);
        let mut blocks = 0u64;
        for_each_block(&ranges, layout.block_size, |_, _| {
            blocks += 1;
            Ok(())
        })?;
        if blocks > 0 {
            bat_entry(layout.data_start + (blocks - 1) * (layout.bitmap_len + layout.block_size), &label)?;
        }
        Ok(StreamWriter { source, fixed: opts.fixed, layout, ranges, blocks, uid: opts.uid()? })
    }

    /// The exact number of bytes [`StreamWriter::write_to`] writes.
    pub fn len(&self) -> u64 {
        let l = &self.layout;
        let body = if self.fixed { l.size } else { l.data_start + self.blocks * (l.bitmap_len + l.block_size) };
        body + FOOTER_SIZE as u64
    }

    /// Always false: a VHD has at least a footer.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The unique id the image carries.
    pub fn unique_id(&self) -> [u8; 16] {
        self.uid
    }

    /// Writes the whole image to `out`; returns the bytes written ([`StreamWriter::len`]).
    ///
    /// # Errors
    /// [`VhdError::Source`] when the source fails; [`VhdError::Write`] when `out` fails.
    pub fn write_to(&self, out: impl Write) -> Result<u64> {
        let mut out = Counted { out, n: 0, label: "VHD stream" };
        let l = &self.layout;
        if self.fixed {
            self.write_fixed(&mut out)?;
            out.put(&Footer::new(DiskType::Fixed, l.size, u64::MAX, self.uid, now()).encode())?;
            out.flush()?;
            return Ok(out.n);
        }
        let footer = Footer::new(DiskType::Dynamic, l.size, HEADER_AT, self.uid, now()).encode();
        out.put(&footer)?;
        out.put(&l.header().encode())?;
        let stride = l.bitmap_len + l.block_size;
        let mut bat = vec![UNALLOCATED; l.entries as usize];
        let mut k = 0u64;
        for_each_block(&self.ranges, l.block_size, |block, _| {
            bat[block as usize] = bat_entry(l.data_start + k * stride, "VHD stream")?;
            k += 1;
            Ok(())
        })?;
        out.put(&encode_bat(&bat))?;
        drop(bat);
        let mut buf = vec![0u8; l.block_size as usize];
        for_each_block(&self.ranges, l.block_size, |block, pieces| {
            let mut bitmap = vec![0u8; l.bitmap_len as usize];
            buf.fill(0);
            for p in pieces {
                for s in p.start / SECTOR..p.end / SECTOR {
                    set_bit(&mut bitmap, s);
                }
                read_source(self.source, block * l.block_size + p.start, &mut buf[p.start as usize..p.end as usize])?;
            }
            out.put(&bitmap)?;
            out.put(&buf)
        })?;
        out.put(&footer)?;
        out.flush()?;
        Ok(out.n)
    }

    fn write_fixed(&self, out: &mut Counted<impl Write>) -> Result<()> {
        let size = self.layout.size;
        let mut buf = vec![0u8; READ_PIECE as usize];
        let mut ri = 0usize;
        let mut off = 0u64;
        while off < size {
            let end = (off + READ_PIECE).min(size);
            let chunk = &mut buf[..(end - off) as usize];
            chunk.fill(0);
            while ri < self.ranges.len() && self.ranges[ri].end <= off {
                ri += 1;
            }
            for r in self.ranges[ri..].iter().take_while(|r| r.start < end) {
                let (a, b) = (r.start.max(off), r.end.min(end));
                read_source(self.source, a, &mut chunk[(a - off) as usize..(b - off) as usize])?;
            }
            out.put(chunk)?;
            off = end;
        }
        Ok(())
    }
}

/// Writes `source` as a VHD to `out`, front to back (see [`StreamWriter`]);
/// returns the bytes written.
///
/// # Errors
/// As [`StreamWriter::new`] and [`StreamWriter::write_to`].
pub fn write_stream(source: &dyn DiskSource, out: impl Write, opts: &VhdOptions) -> Result<u64> {
    StreamWriter::new(source, opts)?.write_to(out)
}

/// A writer that counts what went through, for error offsets and the total.
struct Counted<W> {
    out: W,
    n: u64,
    label: &'static str,
}

impl<W: Write> Counted<W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).map_err(|source| VhdError::Write {
            file: self.label.to_owned(),
            offset: self.n,
            source,
        })?;
        self.n += b.len() as u64;
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|source| VhdError::Write { file: self.label.to_owned(), offset: self.n, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path(Path::new("/a/b"), Path::new("/a/b/p.vhd")), PathBuf::from("p.vhd"));
        assert_eq!(relative_path(Path::new("/a/b"), Path::new("/a/c/p.vhd")), PathBuf::from("../c/p.vhd"));
        assert_eq!(relative_path(Path::new("/"), Path::new("/p.vhd")), PathBuf::from("p.vhd"));
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // lists of one range are meant
    fn blocks_group_pieces() {
        let mut seen = Vec::new();
        for_each_block(&[0..512, 1024..5000, 8192..8704], 4096, |b, p| {
            seen.push((b, p.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(0, vec![0..512, 1024..4096]), (1, vec![0..904]), (2, vec![0..512])]);
    }
}
