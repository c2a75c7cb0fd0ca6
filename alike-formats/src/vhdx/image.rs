//! One VHDX file, parsed: headers, log overlay, regions, metadata and BAT,
//! with positional reads that see the replayed log.

use alike_core::Recover;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::{Result, VhdxError};
use super::format::*;
use super::log::{self, Overlay};

/// Where a layer's bytes come from.
#[derive(Debug)]
pub(crate) enum Backing {
    File(File),
    Mem(Arc<Vec<u8>>),
    /// A reader from a [`super::files::Files`] (SMB, memory, …).
    Dyn(Arc<dyn super::files::ReadAt>),
}

impl Backing {
    fn pread(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        match self {
            Backing::File(f) => f.read_at(buf, off),
            Backing::Dyn(r) => r.read_at(buf, off),
            Backing::Mem(m) => {
                let Ok(start) = usize::try_from(off) else { return Ok(0) };
                let Some(src) = m.get(start..) else { return Ok(0) };
                let n = src.len().min(buf.len());
                buf[..n].copy_from_slice(&src[..n]);
                Ok(n)
            }
        }
    }
}

/// Budget of cached per-block sector bitmaps, in bytes.
const BITMAP_CACHE_BYTES: usize = 16 << 20;

#[derive(Debug, Default)]
struct BitmapCache {
    map: HashMap<u64, Arc<[u8]>>,
    bytes: usize,
}

/// A parsed VHDX file.
#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) path: PathBuf,
    backing: Backing,
    physical_len: u64,
    /// Length after log replay (LastFileOffset, writes past the end).
    pub(crate) effective_len: u64,
    overlay: Overlay,
    pub(crate) log_entries_replayed: usize,
    pub(crate) header: Header,
    pub(crate) geo: Geometry,
    pub(crate) physical_sector: u32,
    pub(crate) leave_allocated: bool,
    pub(crate) page83: Guid,
    pub(crate) parent_locator: Option<ParentLocator>,
    bat: Vec<u64>,
    bitmaps: Mutex<BitmapCache>,
}

fn io_err<'a>(file: &'a Path, what: &'static str, offset: u64) -> impl FnOnce(std::io::Error) -> VhdxError + 'a {
    move |source| VhdxError::Io { file: file.to_owned(), what, offset, source }
}

impl Layer {
    /// Opens and parses the file at `path`.
    pub(crate) fn open(path: &Path) -> Result<Layer> {
        let file = File::open(path).map_err(io_err(path, "opening", 0))?;
        let len = file.metadata().map_err(io_err(path, "inspecting", 0))?.len();
        Layer::parse(path.to_owned(), Backing::File(file), len)
    }

    /// Opens and parses `path` through a [`super::files::Files`].
    pub(crate) fn open_in(path: &Path, files: &dyn super::files::Files) -> Result<Layer> {
        let r = files.open(path).map_err(io_err(path, "opening", 0))?;
        let len = r.size().map_err(io_err(path, "inspecting", 0))?;
        Layer::parse(path.to_owned(), Backing::Dyn(r), len)
    }

    /// Parses an image held in memory.
    pub(crate) fn from_bytes(label: PathBuf, bytes: Arc<Vec<u8>>) -> Result<Layer> {
        let len = bytes.len() as u64;
        Layer::parse(label, Backing::Mem(bytes), len)
    }

    /// Reads exactly `buf.len()` bytes of the raw file (no overlay); bytes
    /// past the physical end read as zeroes up to `limit`.
    fn raw_read(&self, off: u64, buf: &mut [u8], limit: u64, what: &'static str) -> Result<()> {
        off.checked_add(buf.len() as u64).filter(|e| *e <= limit).ok_or_else(|| VhdxError::Malformed {
            file: self.path.clone(),
            what,
            offset: off,
            reason: format!("{} bytes at {off} lie past the end of the file ({limit} bytes)", buf.len()),
        })?;
        let mut done = 0;
        while done < buf.len() {
            let n = self.backing.pread(&mut buf[done..], off + done as u64).map_err(io_err(&self.path, what, off))?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// Reads file bytes as the replayed log leaves them.
    pub(crate) fn read(&self, off: u64, buf: &mut [u8], what: &'static str) -> Result<()> {
        self.raw_read(off, buf, self.effective_len, what)?;
        if !self.overlay.is_empty() {
            self.overlay.apply(off, buf);
        }
        Ok(())
    }

    /// Reads a structure that must lie inside the physical file (so no
    /// allocation is ever sized beyond the file's length).
    fn read_vec(&self, off: u64, len: u64, what: &'static str) -> Result<Vec<u8>> {
        if off.checked_add(len).is_none_or(|e| e > self.physical_len) {
            return Err(malformed(
                &self.path,
                what,
                off,
                format!("{len} bytes at {off} lie past the end of the file ({} bytes)", self.physical_len),
            ));
        }
        let mut v = vec![0u8; len as usize];
        self.read(off, &mut v, what)?;
        Ok(v)
    }

    fn parse(path: PathBuf, backing: Backing, physical_len: u64) -> Result<Layer> {
        let mut l = Layer {
            path,
            backing,
            physical_len,
            effective_len: physical_len,
            overlay: Overlay::default(),
            log_entries_replayed: 0,
            header: Header {
                sequence: 0,
                file_write_guid: Guid::ZERO,
                data_write_guid: Guid::ZERO,
                log_guid: Guid::ZERO,
                log_version: 0,
                version: 0,
                log_length: 0,
                log_offset: 0,
            },
            geo: Geometry { block_size: MIB, logical_sector: 512, virtual_size: 0, has_parent: false },
            physical_sector: 4096,
            leave_allocated: false,
            page83: Guid::ZERO,
            parent_locator: None,
            bat: Vec::new(),
            bitmaps: Mutex::new(BitmapCache::default()),
        };
        // File type identifier.
        let mut sig = [0u8; 8];
        if physical_len < 8 {
            return Err(VhdxError::NotVhdx { file: l.path });
        }
        l.raw_read(0, &mut sig, physical_len, "file type identifier")?;
        if &sig != FILE_ID_SIG {
            return Err(VhdxError::NotVhdx { file: l.path });
        }
        // Headers: the valid one with the higher sequence number is current.
        let mut hb = vec![0u8; HEADER_SIZE];
        let mut read_header = |l: &Layer, at: u64| -> Result<std::result::Result<Header, String>> {
            if at + HEADER_SIZE as u64 > physical_len {
                return Ok(Err("the file ends before it".into()));
            }
            l.raw_read(at, &mut hb, physical_len, "header")?;
            Ok(Header::decode(&hb))
        };
        let h1 = read_header(&l, HEADER1_OFFSET)?;
        let h2 = read_header(&l, HEADER2_OFFSET)?;
        l.header = match (h1, h2) {
            (Ok(a), Ok(b)) => {
                if b.sequence > a.sequence {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(first), Err(second)) => return Err(VhdxError::NoValidHeader { file: l.path, first, second }),
        };
        if l.header.version != 1 {
            return Err(malformed(
                &l.path,
                "header",
                HEADER1_OFFSET,
                format!("format version {} is not supported (only 1)", l.header.version),
            ));
        }
        l.replay_log()?;
        // Region tables: both are checked; the first valid one is used.
        let rt = |l: &Layer, at: u64, what: &'static str| -> Result<(Region, Region)> {
            let b = l.read_vec(at, REGION_TABLE_SIZE as u64, what)?;
            decode_region_table(&l.path, what, at, &b, l.physical_len)
        };
        let (bat_r, meta_r) = match rt(&l, REGION1_OFFSET, "region table 1") {
            Ok(r) => r,
            Err(e1) => match rt(&l, REGION2_OFFSET, "region table 2") {
                Ok(r) => r,
                // Report the first table's problem: the second is only a copy.
                Err(_) => return Err(e1),
            },
        };
        l.parse_metadata(meta_r)?;
        l.load_bat(bat_r)?;
        Ok(l)
    }

    fn replay_log(&mut self) -> Result<()> {
        let h = self.header.clone();
        if h.log_guid.is_zero() || h.log_length == 0 {
            return Ok(());
        }
        let log_err = |reason: String| VhdxError::Log { file: self.path.clone(), log_offset: h.log_offset, reason };
        if h.log_version != 0 {
            return Err(log_err(format!("log version {} is not supported (only 0)", h.log_version)));
        }
        if h.log_offset < MIB || h.log_offset % MIB != 0 || u64::from(h.log_length) % MIB != 0 {
            return Err(log_err(format!(
                "log region ({} bytes at {}) is not 1 MiB aligned or overlaps the header section",
                h.log_length, h.log_offset
            )));
        }
        if u64::from(h.log_length) > log::MAX_REPLAY_LOG {
            return Err(log_err(format!(
                "the log is {} bytes; logs over {} bytes are not replayed in memory",
                h.log_length,
                log::MAX_REPLAY_LOG
            )));
        }
        if h.log_offset + u64::from(h.log_length) > self.physical_len {
            return Err(log_err(format!("the log region ends past the end of the file ({} bytes)", self.physical_len)));
        }
        let mut buf = vec![0u8; h.log_length as usize];
        self.raw_read(h.log_offset, &mut buf, self.physical_len, "log")?;
        let r = log::replay(&buf, h.log_guid, self.physical_len).map_err(log_err)?;
        self.effective_len = self.physical_len.max(r.last_file_offset).max(r.overlay.end());
        self.overlay = r.overlay;
        self.log_entries_replayed = r.entries;
        Ok(())
    }

    fn parse_metadata(&mut self, r: Region) -> Result<()> {
        let table = self.read_vec(r.offset, METADATA_TABLE_SIZE as u64, "metadata table")?;
        let entries = decode_metadata_table(&self.path, r.offset, &table, r.length)?;
        let item = |l: &Layer, g: Guid, what: &'static str| -> Result<Option<(u64, Vec<u8>)>> {
            match entries.iter().find(|e| e.guid == g && e.flags & META_IS_USER == 0) {
                None => Ok(None),
                Some(e) => {
                    let at = r.offset + u64::from(e.offset);
                    Ok(Some((at, l.read_vec(at, e.length.into(), what)?)))
                }
            }
        };
        let known = [
            FILE_PARAMETERS,
            VIRTUAL_DISK_SIZE,
            PAGE83_DATA,
            LOGICAL_SECTOR_SIZE,
            PHYSICAL_SECTOR_SIZE,
            PARENT_LOCATOR,
        ];
        for e in &entries {
            let system_known = e.flags & META_IS_USER == 0 && known.contains(&e.guid);
            if e.flags & META_IS_REQUIRED != 0 && !system_known {
                return Err(VhdxError::UnknownRequiredMetadata { file: self.path.clone(), guid: e.guid });
            }
        }
        let need = |l: &Layer, g: Guid, what: &'static str, size: usize| -> Result<(u64, Vec<u8>)> {
            match item(l, g, what)? {
                None => Err(malformed(
                    &l.path,
                    "metadata table",
                    r.offset,
                    format!("required item {what} ({g}) is missing"),
                )),
                Some((at, b)) if b.len() < size => {
                    Err(malformed(&l.path, what, at, format!("{} bytes, {size} expected", b.len())))
                }
                Some(x) => Ok(x),
            }
        };
        let (_, fp) = need(self, FILE_PARAMETERS, "file parameters", 8)?;
        let block_size = u64::from(le32(&fp, 0));
        let flags = le32(&fp, 4);
        if !(MIB..=256 * MIB).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(VhdxError::BlockSizeNotAllowed { file: self.path.clone(), block_size });
        }
        let has_parent = flags & FLAG_HAS_PARENT != 0;
        self.leave_allocated = flags & FLAG_LEAVE_BLOCKS_ALLOCATED != 0 && !has_parent;
        let (lat, ls) = need(self, LOGICAL_SECTOR_SIZE, "logical sector size", 4)?;
        let logical = le32(&ls, 0);
        if logical != 512 && logical != 4096 {
            return Err(malformed(&self.path, "logical sector size", lat, format!("{logical} (512 or 4096 allowed)")));
        }
        let (pat, ps) = need(self, PHYSICAL_SECTOR_SIZE, "physical sector size", 4)?;
        let physical = le32(&ps, 0);
        if physical != 512 && physical != 4096 {
            return Err(malformed(
                &self.path,
                "physical sector size",
                pat,
                format!("{physical} (512 or 4096 allowed)"),
            ));
        }
        let (vat, vs) = need(self, VIRTUAL_DISK_SIZE, "virtual disk size", 8)?;
        let virtual_size = le64(&vs, 0);
        if virtual_size > MAX_VIRTUAL_SIZE || virtual_size % u64::from(logical) != 0 {
            return Err(malformed(
                &self.path,
                "virtual disk size",
                vat,
                format!("{virtual_size} bytes (must be a multiple of the {logical}-byte sector, at most 64 TiB)"),
            ));
        }
        let (_, p83) = need(self, PAGE83_DATA, "page 83 data", 16)?;
        self.page83 = guid_at(&p83, 0);
        if has_parent {
            let (at, pl) = need(self, PARENT_LOCATOR, "parent locator", 20)?;
            self.parent_locator = Some(decode_parent_locator(&self.path, at, &pl)?);
        }
        self.physical_sector = physical;
        self.geo = Geometry { block_size, logical_sector: logical.into(), virtual_size, has_parent };
        Ok(())
    }

    fn load_bat(&mut self, r: Region) -> Result<()> {
        let count = self.geo.bat_entries();
        let bytes = count.checked_mul(8).filter(|b| *b <= u64::from(r.length)).ok_or_else(|| {
            malformed(
                &self.path,
                "BAT region",
                r.offset,
                format!("{} bytes cannot hold the {count} entries the disk size needs", r.length),
            )
        })?;
        let raw = self.read_vec(r.offset, bytes, "BAT")?;
        let bat: Vec<u64> = raw.chunks_exact(8).map(|c| le64(c, 0)).collect();
        drop(raw);
        let g = self.geo;
        let cr = g.chunk_ratio();
        for (i, &e) in bat.iter().enumerate() {
            let i = i as u64;
            let state = e & BAT_STATE_MASK;
            let is_bitmap = i % (cr + 1) == cr;
            let off = e & BAT_OFFSET_MASK;
            let bad = |reason: String| malformed(&self.path, "BAT", r.offset + i * 8, format!("entry {i}: {reason}"));
            let needed = if is_bitmap {
                match state {
                    SB_NOT_PRESENT => continue,
                    // Sector bitmaps matter only for differencing disks.
                    SB_PRESENT if g.has_parent => MIB,
                    SB_PRESENT => continue,
                    s => return Err(bad(format!("invalid sector bitmap state {s}"))),
                }
            } else {
                let block = i - i / (cr + 1);
                match state {
                    PAYLOAD_NOT_PRESENT
                    | PAYLOAD_UNDEFINED
                    | PAYLOAD_ZERO
                    | PAYLOAD_UNMAPPED
                    | PAYLOAD_UNMAPPED_V095 => {
                        continue;
                    }
                    PAYLOAD_FULLY_PRESENT => {}
                    PAYLOAD_PARTIALLY_PRESENT if g.has_parent => {}
                    s => return Err(bad(format!("invalid payload block state {s}"))),
                }
                if block >= g.data_blocks() {
                    continue; // past the disk's last block: never read
                }
                (g.virtual_size - block * g.block_size).min(g.block_size)
            };
            if off < MIB {
                return Err(bad(format!("points into the header section (file offset {off})")));
            }
            if off.checked_add(needed).is_none_or(|end| end > self.effective_len) {
                return Err(VhdxError::BatEntryPastEof {
                    file: self.path.clone(),
                    index: i,
                    file_offset: off,
                    needed,
                    file_len: self.effective_len,
                });
            }
        }
        // Partially present blocks need their chunk's sector bitmap.
        if g.has_parent {
            for block in 0..g.data_blocks() {
                let e = bat[g.payload_index(block) as usize];
                if e & BAT_STATE_MASK == PAYLOAD_PARTIALLY_PRESENT {
                    let bi = g.bitmap_index(block / cr);
                    if bat[bi as usize] & BAT_STATE_MASK != SB_PRESENT {
                        return Err(malformed(
                            &self.path,
                            "BAT",
                            r.offset + bi * 8,
                            format!("block {block} is partially present but its sector bitmap block is not present"),
                        ));
                    }
                }
            }
        }
        self.bat = bat;
        Ok(())
    }

    /// The payload BAT entry of virtual block `block`.
    pub(crate) fn payload(&self, block: u64) -> u64 {
        self.bat.get(self.geo.payload_index(block) as usize).copied().unwrap_or(0)
    }

    /// The sector bitmap bits (LSB-first) of payload block `block`, cached.
    pub(crate) fn block_bitmap(&self, block: u64) -> Result<Arc<[u8]>> {
        if let Some(b) = self.bitmaps.locked().map.get(&block) {
            return Ok(b.clone());
        }
        let g = self.geo;
        let cr = g.chunk_ratio();
        let e = self.bat.get(g.bitmap_index(block / cr) as usize).copied().unwrap_or(0);
        let len = (g.sectors_per_block() / 8) as usize;
        let mut bits = vec![0u8; len];
        if e & BAT_STATE_MASK == SB_PRESENT {
            let at = (e & BAT_OFFSET_MASK) + (block % cr) * len as u64;
            self.read(at, &mut bits, "sector bitmap")?;
        }
        let bits: Arc<[u8]> = Arc::from(bits);
        let mut c = self.bitmaps.locked();
        if c.bytes + len > BITMAP_CACHE_BYTES {
            c.map.clear();
            c.bytes = 0;
        }
        if c.map.insert(block, bits.clone()).is_none() {
            c.bytes += len;
        }
        Ok(bits)
    }
}
