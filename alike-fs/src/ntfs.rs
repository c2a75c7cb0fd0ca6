//! NTFS, read-only, for file-level restore.
//!
//! The `ntfs` crate (Colin Finck) reads the boot sector, MFT records and
//! their fixups, attributes and attribute lists, `$FILE_NAME` and
//! `$STANDARD_INFORMATION` values, index nodes and data runs. This module
//! adds what restore needs on top:
//!
//! - **Directory listings** walk the `$I30` B-tree node by node, each node
//!   at most once (a VCN seen twice is a loop and is not followed again), and
//!   read no more nodes than the index allocation holds. DOS 8.3 names are
//!   not listed (the Win32 or POSIX name of the same file is); at the root the
//!   metafiles (`$MFT`, `$Bitmap`, … records 0–15) are not listed either.
//!   Names become UTF-8, an unpaired surrogate U+FFFD. A file whose own MFT
//!   record cannot be read (damaged, unreadable block) is still listed,
//!   from the copy of its `$FILE_NAME` the index keeps, with
//!   [`Metadata::unreadable`] saying why; reading it fails, the rest do not.
//! - **Data** of the unnamed stream: resident, non-resident with sparse runs
//!   (holes reported by `data_ranges`), LZNT1-compressed (decoded here,
//!   [MS-XCA] 2.5), and CompactOS/WOF files (reparse tag `0x80000017`, the
//!   data in the `WofCompressedData` stream as a chunk table and XPRESS
//!   4K/8K/16K or LZX chunks, decoded here: [MS-XCA] 2.2.4 for XPRESS, the
//!   WIM variant of LZX, which no Rust crate decodes — `lzxd` implements LZX
//!   DELTA, whose block and E8 headers differ). EFS-encrypted files and
//!   WIMBoot (WIM-backed WOF) files are listed with
//!   [`Metadata::unreadable`] set and fail one by one.
//!   Alternate data streams are not read.
//! - **Links**: symbolic links and junctions (reparse tags `0xA000000C` and
//!   `0xA0000003`) are [`FileKind::Symlink`]; their target is the print name
//!   (or the substitute name without its `\??\` prefix) with `\` turned into
//!   `/`: `C:/Users/x` for an absolute target, `../x` for a relative one.
//!   Files with other reparse tags are [`FileKind::Other`]; directories with
//!   other tags stay directories (their index is real). Interix symlinks
//!   (system files holding `IntxLNK\1` and a UTF-16 target, what ntfs-3g
//!   writes for `ln -s`) are symlinks too.
//! - **Times** are `$STANDARD_INFORMATION`'s, converted from 100 ns since
//!   1601 to ns since the Unix epoch; `nlink` counts the file's names that
//!   are not DOS-only names.
//!
//! ## Hostile images
//! The `ntfs` crate validates most sizes, but it indexes record bytes
//! without a bounds check in a few places (fields of a non-resident
//! attribute header too short to hold them), and its B-tree iterator follows
//! subnode pointers without noticing a loop; its index entry iterator
//! indexes entry bytes unchecked (found by the `ntfs` fuzz target); and an
//! I/O error inside a structure it reads with binrw (boot sector, attribute
//! list entries) reaches an `unreachable!` in its error conversion, so a
//! damaged block under a non-resident attribute list was a panic. So this
//! module (1) re-reads every MFT record the crate hands over and checks each
//! attribute header's lengths and offsets before the crate looks past the
//! first 16 bytes, (2) walks index B-trees and parses index nodes itself,
//! (3) reads and checks attribute lists itself and serves them (and the
//! boot sector) to the crate from memory, never lets it read a non-resident
//! `$FILE_NAME`, and (4) gives every operation a budget of bytes it may read
//! through the crate (a loop in the crate ends in [`FsError::Limit`]). Run lists, attribute lists and directories have
//! fixed caps; compressed data is decoded into buffers of the unit's or the
//! chunk's size, never of a size read from the image.
//!
//! The crate is not `Sync`, and its objects borrow a reader: metadata work
//! runs under one mutex (a parsed file is cached), data reads do not take
//! it: they use run lists parsed once and read the device directly.

mod lznt1;
mod lzx;
mod xpress;

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use ntfs::attribute_value::NtfsAttributeValue;
use ntfs::structured_values::{NtfsAttributeList, NtfsFileName, NtfsFileNamespace, NtfsStandardInformation};
use ntfs::{NtfsAttribute, NtfsAttributeType, NtfsFile, NtfsReadSeek};

use crate::{BlockDevice, DirEntry, FileId, FileKind, FileSystem, FsError, FsKind, Metadata, Result};

const FS: &str = "NTFS";
/// The root directory's MFT record.
const ROOT: u64 = 5;
/// Records 0–15 are the metafiles; records 16–23 are reserved.
const FIRST_USER_RECORD: u64 = 16;
/// Bytes one metadata operation may read through the crate.
const META_BUDGET: u64 = 256 << 20;
/// Data runs one stream may have (a run is 24 bytes here).
const MAX_RUNS: usize = 1 << 20;
/// Parsed files kept.
const CACHE: usize = 4096;
/// Entries one directory may list.
const MAX_DIR_ENTRIES: usize = 1 << 20;
/// Depth of a directory's B-tree (real ones are a handful deep).
const MAX_INDEX_DEPTH: usize = 32;
/// Attributes one file may have, all its records together.
const MAX_ATTRIBUTES: usize = 1 << 16;
/// Largest reparse point (the format's own limit is 16 KiB).
const MAX_REPARSE: usize = 16 << 10;

const TAG_MOUNT_POINT: u32 = 0xA000_0003;
const TAG_SYMLINK: u32 = 0xA000_000C;
const TAG_WOF: u32 = 0x8000_0017;
/// `$STANDARD_INFORMATION` file attributes.
const ATTR_ENCRYPTED: u32 = 0x4000;
const ATTR_SYSTEM: u32 = 0x0004;
/// Attribute header flags.
const FLAG_COMPRESSED: u16 = 0x0001;
const FLAG_ENCRYPTED: u16 = 0x4000;

/// Opens the NTFS volume on `dev`: `Ok(None)` when the boot sector does not
/// say NTFS, an error when it does but the volume cannot be read (its boot
/// sector, `$MFT` record or root directory is damaged).
///
/// # Errors
/// [`FsError::Corrupt`] for a damaged volume; device errors as they come.
pub fn open(dev: Arc<dyn BlockDevice>) -> Result<Option<Arc<dyn FileSystem>>> {
    if dev.size() < 512 {
        return Ok(None);
    }
    let mut boot = [0u8; 512];
    dev.read_exact_at(0, &mut boot)?;
    if &boot[3..11] != b"NTFS    " {
        return Ok(None);
    }
    let mut cur = DevReader::new(dev.clone());
    cur.budget = META_BUDGET;
    // The crate reads the boot sector with binrw: from memory, so no I/O
    // error can reach its conversion (see attribute_list_bytes).
    cur.pins.push((0, boot.to_vec()));
    let vol = ntfs::Ntfs::new(&mut cur).map_err(|e| cur.fail("boot sector", e))?;
    let cluster = u64::from(vol.cluster_size());
    let record_size = vol.file_record_size();
    if !(256..=65536).contains(&record_size) || !record_size.is_power_of_two() {
        return Err(corrupt(format!("MFT record size {record_size}")));
    }
    // Ntfs::file parses record 0 ($MFT) on every call: check it once here,
    // before the crate reads past any attribute header in it.
    let mft_pos = vol.mft_position().value().map(|p| p.get()).ok_or_else(|| corrupt("no $MFT position".into()))?;
    validate_record(&dev, mft_pos, record_size as usize).map_err(|e| corrupt(format!("MFT record 0: {e}")))?;
    // $Volume (record 3), checked before the crate reads its name.
    let label = match open_record(&vol, &mut cur, &dev, 3) {
        Ok(_) => match vol.volume_name(&mut cur) {
            Some(Ok(name)) => Some(name.name().to_string_lossy()).filter(|s| !s.is_empty()),
            _ => None,
        },
        Err(_) => None,
    };
    let fs = NtfsFs { dev, cluster, label, state: Mutex::new(State { vol, cur, cache: HashMap::new() }) };
    let root = fs.node(ROOT)?;
    if root.meta.kind != FileKind::Dir {
        return Err(corrupt("the root directory (MFT record 5) is not a directory".into()));
    }
    Ok(Some(Arc::new(fs)))
}

fn corrupt(what: String) -> FsError {
    FsError::Corrupt { fs: FS, what }
}

/// An NTFS volume (see the module docs).
struct NtfsFs {
    dev: Arc<dyn BlockDevice>,
    cluster: u64,
    label: Option<String>,
    state: Mutex<State>,
}

struct State {
    vol: ntfs::Ntfs,
    cur: DevReader,
    cache: HashMap<u64, Arc<Node>>,
}

/// What this reader keeps of a file: its metadata and how to read it.
struct Node {
    meta: Metadata,
    /// A name for errors: `NAME (MFT record N)`.
    display: String,
    /// The sequence number of the record (directory entries must match it).
    sequence: u16,
    data: Data,
    link: Option<std::result::Result<Vec<u8>, String>>,
    /// The last chunk or compression unit decoded: (index, bytes).
    unit: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

enum Data {
    None,
    Plain(Stream),
    /// LZNT1: compression units of `unit` bytes.
    Lznt1 {
        stream: Runs,
        unit: u64,
    },
    /// CompactOS: chunks of `chunk` bytes, XPRESS- or LZX-coded, `size`
    /// bytes in all.
    Wof {
        stream: Stream,
        chunk: u64,
        size: u64,
        lzx: bool,
    },

    Unreadable(String),
}

/// A stream's bytes: in the record, or in clusters.
enum Stream {
    Resident(Vec<u8>),
    Runs(Runs),
}

/// A non-resident stream's clusters.
struct Runs {
    /// In VCN order, contiguous from VCN 0.
    runs: Vec<Run>,
    size: u64,
    /// Bytes past this read as zeros.
    initialized: u64,
    cluster: u64,
}

#[derive(Clone, Copy, Debug)]
struct Run {
    vcn: u64,
    clusters: u64,
    /// Byte position on the device; `None` for a hole.
    pos: Option<u64>,
}

impl Stream {
    fn len(&self) -> u64 {
        match self {
            Stream::Resident(v) => v.len() as u64,
            Stream::Runs(r) => r.size,
        }
    }

    fn read_exact(&self, dev: &dyn BlockDevice, off: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            Stream::Resident(v) => {
                let src = usize::try_from(off).ok().and_then(|o| v.get(o..o.checked_add(buf.len())?));
                buf.copy_from_slice(
                    src.ok_or_else(|| corrupt(format!("read of {} bytes at {off} past a resident stream", buf.len())))?,
                );
                Ok(())
            }
            Stream::Runs(r) => {
                if off.checked_add(buf.len() as u64).is_none_or(|end| end > r.size) {
                    return Err(corrupt(format!("read of {} bytes at {off} past a {}-byte stream", buf.len(), r.size)));
                }
                r.read(dev, off, buf)
            }
        }
    }
}

impl Runs {
    /// Reads `buf.len()` bytes at `off` (the caller keeps it within `size`).
    fn read(&self, dev: &dyn BlockDevice, off: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let rest = &mut buf[done..];
            if pos >= self.initialized {
                rest.fill(0);
                break;
            }
            let vcn = pos / self.cluster;
            let i = self.runs.partition_point(|r| r.vcn + r.clusters <= vcn);
            let run =
                self.runs.get(i).filter(|r| r.vcn <= vcn).ok_or_else(|| {
                    corrupt(format!("byte {pos} of a {}-byte stream lies past its data runs", self.size))
                })?;
            let run_end = (run.vcn + run.clusters) * self.cluster;
            let n = (run_end.min(self.initialized) - pos).min(rest.len() as u64) as usize;
            match run.pos {
                None => rest[..n].fill(0),
                Some(p) => dev.read_exact_at(p + (pos - run.vcn * self.cluster), &mut rest[..n])?,
            }
            done += n;
        }
        Ok(())
    }

    /// Byte ranges that hold clusters, within the initialized size.
    fn ranges(&self) -> Vec<Range<u64>> {
        let end = self.size.min(self.initialized);
        let mut out: Vec<Range<u64>> = Vec::new();
        for r in self.runs.iter().filter(|r| r.pos.is_some()) {
            let s = r.vcn * self.cluster;
            let e = ((r.vcn + r.clusters) * self.cluster).min(end);
            if s >= e {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.end == s => last.end = e,
                _ => out.push(s..e),
            }
        }
        out
    }
}

impl NtfsFs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The parsed file of MFT record `rec` (from the cache when there).
    fn node(&self, rec: u64) -> Result<Arc<Node>> {
        let mut st = self.lock();
        node_locked(&mut st, &self.dev, self.cluster, rec)
    }

    fn read_dir_locked(&self, st: &mut State, dir: u64) -> Result<Vec<IndexEntry>> {
        let State { vol, cur, .. } = st;
        cur.budget = META_BUDGET;
        let (file, raw) = open_record(vol, cur, &self.dev, dir)?;
        let ctx = |e: &str| format!("directory MFT record {dir}: {e}");
        let mut root_value = None;
        let mut alloc = None;
        let mut attrs = file.attributes();
        let mut seen = 0usize;
        while let Some(item) = attrs.next(cur) {
            let item = item.map_err(|e| cur.fail(&ctx("attributes"), e))?;
            seen += 1;
            if seen > MAX_ATTRIBUTES {
                return Err(FsError::Limit(ctx(&format!("more than {MAX_ATTRIBUTES} attributes"))));
            }
            let a = item.to_attribute().map_err(|e| cur.fail(&ctx("attribute"), e))?;
            let ty = a.ty();
            if !matches!(ty, Ok(NtfsAttributeType::IndexRoot | NtfsAttributeType::IndexAllocation)) {
                continue;
            }
            if a.name().map(|n| n.to_string_lossy()).ok().as_deref() != Some("$I30") {
                continue;
            }
            match ty {
                Ok(NtfsAttributeType::IndexRoot) if root_value.is_none() => {
                    root_value = Some(read_small_value(cur, &a, 1 << 16).map_err(|e| e.in_ctx(&ctx("$INDEX_ROOT")))?);
                }
                Ok(NtfsAttributeType::IndexAllocation) if alloc.is_none() && !a.is_resident() => {
                    let d = parse_data(
                        vol,
                        cur,
                        &raw,
                        &file,
                        &a,
                        NtfsAttributeType::IndexAllocation,
                        "$I30",
                        self.cluster,
                        dir,
                    )?;
                    alloc = d.and_then(|d| d.runs);
                }
                _ => {}
            }
        }
        let root = root_value.ok_or_else(|| corrupt(ctx("no $INDEX_ROOT")))?;
        if root.len() < 0x20 {
            return Err(corrupt(ctx(&format!("a {}-byte $INDEX_ROOT", root.len()))));
        }
        let record_size = u32::from_le_bytes([root[8], root[9], root[10], root[11]]);
        if !(512..=65536).contains(&record_size) || !record_size.is_power_of_two() {
            return Err(corrupt(ctx(&format!("index record size {record_size}"))));
        }
        // Index VCNs count clusters, or 512-byte blocks where a cluster is
        // larger than an index record.
        let vcn_bytes = if self.cluster <= u64::from(record_size) { self.cluster } else { 512 };
        // No more nodes than the allocation holds, whatever the pointers say.
        let max_nodes = alloc.as_ref().map_or(0, |r| r.size.min(self.dev.size()) / u64::from(record_size) + 1);
        let mut walk = IndexWalk {
            dev: &*self.dev,
            out: Vec::new(),
            visited: HashSet::new(),
            max_nodes,
            record_size,
            vcn_bytes,
            dir,
        };
        let items = node_items(&root, 0x10, dir)?;
        walk.items(alloc.as_ref(), items, 0)?;
        Ok(walk.out)
    }
}

/// Parses MFT record `rec` into a [`Node`], caching it.
fn node_locked(st: &mut State, dev: &Arc<dyn BlockDevice>, cluster: u64, rec: u64) -> Result<Arc<Node>> {
    if let Some(n) = st.cache.get(&rec) {
        return Ok(n.clone());
    }
    let State { vol, cur, cache } = st;
    cur.budget = META_BUDGET;
    let node = Arc::new(parse_node(vol, cur, dev, cluster, rec)?);
    if cache.len() >= CACHE {
        cache.clear();
    }
    cache.insert(rec, node.clone());
    Ok(node)
}

/// The fixed-up bytes of the records of one file (its base record and the
/// extension records its attribute list names), each checked by
/// [`validate_record`].
struct Raw {
    recs: Vec<(u64, Vec<u8>)>,
}

impl Raw {
    /// The bytes from `pos` to the end of the record holding it.
    fn at(&self, pos: u64) -> Option<&[u8]> {
        self.recs.iter().find_map(|(start, b)| {
            let off = usize::try_from(pos.checked_sub(*start)?).ok()?;
            b.get(off..).filter(|r| !r.is_empty())
        })
    }
}

/// Reads MFT record `rec` through the crate and checks the attribute
/// headers of it and of every extension record its attribute list names,
/// before the crate reads any attribute past its first 16 bytes.
fn open_record<'n>(
    vol: &'n ntfs::Ntfs,
    cur: &mut DevReader,
    dev: &Arc<dyn BlockDevice>,
    rec: u64,
) -> Result<(NtfsFile<'n>, Raw)> {
    let file = vol.file(cur, rec).map_err(|e| cur.fail(&format!("MFT record {rec}"), e))?;
    let base = check_file(dev, &file).map_err(|e| corrupt(format!("MFT record {rec}: {e}")))?;
    if file.flags().bits() & 1 == 0 {
        return Err(FsError::NotFound(format!("MFT record {rec} is not in use")));
    }
    let mut raw = Raw { recs: vec![base] };
    cur.pins.clear();
    let list =
        file.attributes_raw().filter_map(|a| a.ok()).find(|a| matches!(a.ty(), Ok(NtfsAttributeType::AttributeList)));
    if let Some(list) = list {
        let ctx = format!("MFT record {rec}: $ATTRIBUTE_LIST");
        // The crate parses list entries with binrw, which panics on an I/O
        // error inside an entry (its error conversion calls unreachable!).
        // So the list's bytes are read and checked here first, and a
        // non-resident list is served to the crate from memory.
        let bytes = attribute_list_bytes(cur, dev, &raw, &list).map_err(|e| e.in_ctx(&ctx))?;
        check_attribute_list(&bytes).map_err(|e| corrupt(format!("{ctx}: {e}")))?;
        let list = list.structured_value::<_, NtfsAttributeList>(cur).map_err(|e| cur.fail(&ctx, e))?;
        let mut entries = list.entries();
        let mut seen = HashSet::from([rec]);
        let mut n = 0usize;
        while let Some(entry) = entries.next(cur) {
            let entry = entry.map_err(|e| cur.fail(&ctx, e))?;
            n += 1;
            if n > MAX_ATTRIBUTES {
                return Err(FsError::Limit(format!("{ctx}: more than {MAX_ATTRIBUTES} entries")));
            }
            let other = entry.base_file_reference().file_record_number();
            if !seen.insert(other) {
                continue;
            }
            let ext = vol.file(cur, other).map_err(|e| cur.fail(&format!("{ctx}: MFT record {other}"), e))?;
            raw.recs.push(check_file(dev, &ext).map_err(|e| corrupt(format!("{ctx}: MFT record {other}: {e}")))?);
        }
    }
    Ok((file, raw))
}

/// Largest attribute list read (a real one holds a few thousand entries).
const MAX_LIST_BYTES: u64 = 4 << 20;

/// The value of an $ATTRIBUTE_LIST: from the record when resident; else
/// read through its runs, and pinned in `cur` so that the crate reads the
/// same bytes from memory.
fn attribute_list_bytes(
    cur: &mut DevReader,
    dev: &Arc<dyn BlockDevice>,
    raw: &Raw,
    a: &NtfsAttribute<'_, '_>,
) -> Result<Vec<u8>> {
    let pos = a.position().value().map(|p| p.get()).ok_or_else(|| corrupt("attribute without a position".into()))?;
    let h = raw.at(pos).ok_or_else(|| corrupt("attribute outside its record".into()))?;
    if a.is_resident() {
        // Offsets checked by validate_record.
        let len = u32::from_le_bytes([h[16], h[17], h[18], h[19]]) as usize;
        let off = usize::from(u16::from_le_bytes([h[20], h[21]]));
        return h.get(off..off + len).map(<[u8]>::to_vec).ok_or_else(|| corrupt("value outside the record".into()));
    }
    let len = a.value_length();
    if len > MAX_LIST_BYTES {
        return Err(FsError::Limit(format!("a {len}-byte attribute list (at most {MAX_LIST_BYTES})")));
    }
    let runs = match a.value(cur).map_err(|e| cur.fail("runs", e))? {
        NtfsAttributeValue::NonResident(v) => v.data_runs(),
        _ => return Err(corrupt("a non-resident attribute without runs".into())),
    };
    let mut out = Vec::with_capacity(len as usize);
    for r in runs {
        let r = r.map_err(|e| corrupt(format!("data run: {e}")))?;
        if out.len() as u64 >= len {
            break;
        }
        let n = r.allocated_size().min(len - out.len() as u64) as usize;
        let start = out.len();
        out.resize(start + n, 0);
        if let Some(p) = r.data_position().value() {
            dev.read_exact_at(p.get(), &mut out[start..])?;
            cur.pins.push((p.get(), out[start..].to_vec()));
        }
    }
    if (out.len() as u64) < len {
        return Err(corrupt(format!("runs hold {} of its {len} bytes", out.len())));
    }
    Ok(out)
}

/// Checks that an attribute list is whole entries, each at least a header
/// long and holding its name.
fn check_attribute_list(b: &[u8]) -> std::result::Result<(), String> {
    let mut at = 0usize;
    while at < b.len() {
        let e = &b[at..];
        if e.len() < 26 {
            return Err(format!("entry at {at} cut off"));
        }
        let len = usize::from(u16::from_le_bytes([e[4], e[5]]));
        let name_len = usize::from(e[6]);
        let name_off = usize::from(e[7]);
        if len < 26 || len > e.len() || (name_len > 0 && name_off.max(26) + 2 * name_len > len) {
            return Err(format!("entry at {at}: length {len}"));
        }
        at += len;
    }
    Ok(())
}

fn check_file(dev: &Arc<dyn BlockDevice>, file: &NtfsFile<'_>) -> std::result::Result<(u64, Vec<u8>), String> {
    let pos = file.position().value().ok_or("record without a position")?.get();
    Ok((pos, validate_record(dev, pos, file.ntfs().file_record_size() as usize)?))
}

/// Reads a record's raw bytes, applies its fixups and checks every
/// attribute header: each fits the record, is long enough for the fields
/// the crate reads of its kind, and its name and value/run offsets lie
/// within it.
fn validate_record(dev: &Arc<dyn BlockDevice>, pos: u64, size: usize) -> std::result::Result<Vec<u8>, String> {
    let mut b = vec![0u8; size];
    dev.read_exact_at(pos, &mut b).map_err(|e| e.to_string())?;
    if &b[..4] != b"FILE" {
        return Err("no FILE signature".into());
    }
    fixup(&mut b)?;
    let first = usize::from(u16::from_le_bytes([b[0x14], b[0x15]]));
    let in_use = u32::from_le_bytes([b[0x18], b[0x19], b[0x1a], b[0x1b]]) as usize;
    if in_use > size || first > in_use {
        return Err(format!("attributes at {first}, {in_use} bytes in use of {size}"));
    }
    let mut off = first;
    while off + 4 <= in_use {
        let ty = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
        if ty == 0xffff_ffff {
            break;
        }
        if off + 16 > in_use {
            return Err(format!("attribute at {off} is cut off"));
        }
        let len = u32::from_le_bytes([b[off + 4], b[off + 5], b[off + 6], b[off + 7]]) as usize;
        let non_resident = b[off + 8] != 0;
        let name_len = usize::from(b[off + 9]);
        let name_off = usize::from(u16::from_le_bytes([b[off + 10], b[off + 11]]));
        let min = if non_resident { 0x40 } else { 0x18 };
        if len < min || off + len > in_use {
            return Err(format!("attribute at {off}: length {len}"));
        }
        if name_len > 0 && name_off + 2 * name_len > len {
            return Err(format!("attribute at {off}: name outside it"));
        }
        if non_resident {
            let runs = usize::from(u16::from_le_bytes([b[off + 0x20], b[off + 0x21]]));
            if runs > len {
                return Err(format!("attribute at {off}: data runs outside it"));
            }
        } else {
            let vlen = u32::from_le_bytes([b[off + 16], b[off + 17], b[off + 18], b[off + 19]]) as usize;
            let voff = usize::from(u16::from_le_bytes([b[off + 20], b[off + 21]]));
            if voff + vlen > len {
                return Err(format!("attribute at {off}: value outside it"));
            }
        }
        off += len;
    }
    Ok(b)
}

/// One item of an index node: a subnode to descend into first, or an entry.
enum Item {
    Sub(u64),
    Entry(IndexEntry),
}

/// A directory index entry: the name, the file it names, and the copy of
/// the file's $FILE_NAME the index keeps (what a listing shows of a file
/// whose own MFT record cannot be read).
struct IndexEntry {
    name: Vec<u8>,
    rec: u64,
    seq: u16,
    size: u64,
    dir: bool,
    mtime: Option<i64>,
    atime: Option<i64>,
    btime: Option<i64>,
}

/// The items of the index node whose header (entries offset, bytes in use,
/// allocated, flags) starts at `node` in `b`. Parsed here, not by the crate,
/// whose entry iterator indexes entry bytes unchecked and loops on an entry
/// of length 0.
fn node_items(b: &[u8], node: usize, dir: u64) -> Result<Vec<Item>> {
    let bad = |what: String| corrupt(format!("directory MFT record {dir}: index node: {what}"));
    let le32 = |at: usize| b.get(at..at + 4).map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) as usize);
    let (Some(first), Some(used)) = (le32(node), le32(node + 4)) else {
        return Err(bad("header cut off".into()));
    };
    let end = node.checked_add(used).filter(|&e| e <= b.len()).ok_or_else(|| bad(format!("{used} bytes in use")))?;
    let mut at = node.checked_add(first).filter(|&a| a <= end).ok_or_else(|| bad(format!("entries at {first}")))?;
    let mut out = Vec::new();
    loop {
        let e = b.get(at..end).filter(|e| e.len() >= 16).ok_or_else(|| bad(format!("entry at {at} cut off")))?;
        let len = usize::from(u16::from_le_bytes([e[8], e[9]]));
        let key_len = usize::from(u16::from_le_bytes([e[10], e[11]]));
        let flags = e[12];
        let sub = flags & 1 != 0;
        if len < 16 || len > e.len() || len % 8 != 0 || (sub && len < 24) {
            return Err(bad(format!("entry at {at}: length {len}")));
        }
        if sub {
            let v = u64::from_le_bytes(e[len - 8..len].try_into().unwrap_or_default());
            out.push(Item::Sub(v));
        }
        if flags & 2 != 0 {
            break;
        }
        let key_end = 16 + key_len;
        if key_len < 0x42 || key_end > len - if sub { 8 } else { 0 } {
            return Err(bad(format!("entry at {at}: key of {key_len} bytes")));
        }
        let key = &e[16..key_end];
        let name_len = usize::from(key[0x40]);
        let namespace = key[0x41];
        let name =
            key.get(0x42..0x42 + 2 * name_len).ok_or_else(|| bad(format!("entry at {at}: name past its key")))?;
        // Namespace 2: a DOS 8.3 name, listed under its Win32 name already.
        if namespace != 2 {
            let r = u64::from_le_bytes(e[..8].try_into().unwrap_or_default());
            let le64 = |at: usize| u64::from_le_bytes(key[at..at + 8].try_into().unwrap_or_default());
            out.push(Item::Entry(IndexEntry {
                name: utf16_to_utf8(name),
                rec: r & 0xffff_ffff_ffff,
                seq: (r >> 48) as u16,
                btime: nt_time(le64(0x08)),
                mtime: nt_time(le64(0x10)),
                atime: nt_time(le64(0x20)),
                size: le64(0x30),
                dir: u32::from_le_bytes(key[0x38..0x3c].try_into().unwrap_or_default()) & 0x1000_0000 != 0,
            }));
        }
        at += len;
    }
    Ok(out)
}

struct IndexWalk<'d> {
    dev: &'d dyn BlockDevice,
    out: Vec<IndexEntry>,
    visited: HashSet<u64>,
    max_nodes: u64,
    record_size: u32,
    vcn_bytes: u64,
    dir: u64,
}

impl IndexWalk<'_> {
    fn items(&mut self, alloc: Option<&Runs>, items: Vec<Item>, depth: usize) -> Result<()> {
        let dir = self.dir;
        for it in items {
            match it {
                Item::Entry(entry) => {
                    if self.out.len() >= MAX_DIR_ENTRIES {
                        return Err(FsError::Limit(format!(
                            "directory MFT record {dir} has more than {MAX_DIR_ENTRIES} entries"
                        )));
                    }
                    self.out.push(entry);
                }
                Item::Sub(vcn) => {
                    let alloc = alloc.ok_or_else(|| {
                        corrupt(format!("directory MFT record {dir}: a subnode without $INDEX_ALLOCATION"))
                    })?;
                    if depth >= MAX_INDEX_DEPTH {
                        return Err(corrupt(format!(
                            "directory MFT record {dir}: index deeper than {MAX_INDEX_DEPTH}"
                        )));
                    }
                    // A node seen before is a loop: its entries are listed once.
                    if !self.visited.insert(vcn) {
                        continue;
                    }
                    if self.visited.len() as u64 > self.max_nodes {
                        return Err(corrupt(format!(
                            "directory MFT record {dir}: more index nodes than its allocation holds"
                        )));
                    }
                    let node = self.node(alloc, vcn)?;
                    let sub = node_items(&node, 0x18, dir)?;
                    self.items(Some(alloc), sub, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    /// The index record at `vcn`, read, signature and fixups checked.
    fn node(&self, alloc: &Runs, vcn: u64) -> Result<Vec<u8>> {
        let dir = self.dir;
        let size = u64::from(self.record_size);
        let off = vcn
            .checked_mul(self.vcn_bytes)
            .filter(|o| o.checked_add(size).is_some_and(|e| e <= alloc.size))
            .ok_or_else(|| {
                corrupt(format!("directory MFT record {dir}: index node at VCN {vcn} lies past its allocation"))
            })?;
        let mut b = vec![0u8; size as usize];
        alloc.read(self.dev, off, &mut b)?;
        if &b[..4] != b"INDX" {
            return Err(corrupt(format!("directory MFT record {dir}: no index node at VCN {vcn}")));
        }
        fixup(&mut b).map_err(|e| corrupt(format!("directory MFT record {dir}: index node at VCN {vcn}: {e}")))?;
        Ok(b)
    }
}

/// Applies a multi-sector record's fixups (the update sequence array):
/// checks that every sector ends in the update sequence number, and puts
/// back the bytes it stands for.
fn fixup(b: &mut [u8]) -> std::result::Result<(), String> {
    let size = b.len();
    let usa_off = usize::from(u16::from_le_bytes([b[4], b[5]]));
    let usa_count = usize::from(u16::from_le_bytes([b[6], b[7]]));
    if usa_count < 2 || usa_off + 2 * usa_count > size || (usa_count - 1) * 512 > size {
        return Err(format!("update sequence array ({usa_count} at {usa_off}) does not fit"));
    }
    let usn = [b[usa_off], b[usa_off + 1]];
    for i in 1..usa_count {
        let at = i * 512 - 2;
        if b[at..at + 2] != usn {
            return Err(format!("sector {} does not end in the update sequence number", i - 1));
        }
        let src = usa_off + 2 * i;
        b[at] = b[src];
        b[at + 1] = b[src + 1];
    }
    Ok(())
}

/// UTF-16LE bytes to UTF-8; an unpaired surrogate becomes U+FFFD.
fn utf16_to_utf8(b: &[u8]) -> Vec<u8> {
    let units = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
    char::decode_utf16(units).map(|c| c.unwrap_or('\u{fffd}')).collect::<String>().into_bytes()
}

/// 100 ns since 1601 to ns since 1970; `None` for 0 (not set) or out of range.
fn nt_time(t: u64) -> Option<i64> {
    if t == 0 {
        return None;
    }
    const EPOCH_DIFF: i128 = 116_444_736_000_000_000;
    i64::try_from((i128::from(t) - EPOCH_DIFF) * 100).ok()
}

/// What parsing one $DATA attribute (all its extents) found.
struct DataAttr {
    flags: u16,
    resident: Option<Vec<u8>>,
    runs: Option<Runs>,
    compression_unit: u8,
}

fn parse_node(
    vol: &ntfs::Ntfs,
    cur: &mut DevReader,
    dev: &Arc<dyn BlockDevice>,
    cluster: u64,
    rec: u64,
) -> Result<Node> {
    let (file, raw) = open_record(vol, cur, dev, rec)?;
    let is_dir = file.is_directory();
    let mut meta = Metadata::new(FileId(rec), FileKind::File, 0);
    let mut names = 0u32;
    let mut display: Option<String> = None;
    let mut file_attributes = 0u32;
    let mut reparse: Option<Vec<u8>> = None;
    let mut efs = false;
    let mut main: Option<DataAttr> = None;
    let mut wof: Option<DataAttr> = None;
    let ctx = |what: &str| format!("MFT record {rec}: {what}");

    let mut attrs = file.attributes();
    let mut seen = 0usize;
    while let Some(item) = attrs.next(cur) {
        let item = item.map_err(|e| cur.fail(&ctx("attributes"), e))?;
        seen += 1;
        if seen > MAX_ATTRIBUTES {
            return Err(FsError::Limit(ctx(&format!("more than {MAX_ATTRIBUTES} attributes"))));
        }
        let a = item.to_attribute().map_err(|e| cur.fail(&ctx("attribute"), e))?;
        let Ok(ty) = a.ty() else { continue };
        let name = a.name().map_err(|e| cur.fail(&ctx("attribute name"), e))?;
        match ty {
            NtfsAttributeType::StandardInformation => {
                let si = a
                    .resident_structured_value::<NtfsStandardInformation>()
                    .map_err(|e| cur.fail(&ctx("$STANDARD_INFORMATION"), e))?;
                meta.mtime = nt_time(si.modification_time().nt_timestamp());
                meta.atime = nt_time(si.access_time().nt_timestamp());
                meta.btime = nt_time(si.creation_time().nt_timestamp());
                file_attributes = si.file_attributes().bits();
            }
            NtfsAttributeType::FileName => {
                // Resident only: the crate would read a non-resident one from
                // the device with binrw (see attribute_list_bytes).
                if !a.is_resident() {
                    return Err(corrupt(ctx("a non-resident $FILE_NAME")));
                }
                let fname = a.structured_value::<_, NtfsFileName>(cur).map_err(|e| cur.fail(&ctx("$FILE_NAME"), e))?;
                if fname.namespace() != NtfsFileNamespace::Dos {
                    names += 1;
                    if display.is_none() {
                        display = Some(String::from_utf8_lossy(&utf16_to_utf8(fname.name().0)).into_owned());
                    }
                }
            }
            NtfsAttributeType::Data => {
                let n = name.to_string_lossy();
                if n.is_empty() && main.is_none() {
                    main = parse_data(vol, cur, &raw, &file, &a, NtfsAttributeType::Data, "", cluster, rec)?;
                } else if n == "WofCompressedData" && wof.is_none() {
                    wof = parse_data(vol, cur, &raw, &file, &a, NtfsAttributeType::Data, &n, cluster, rec)?;
                }
            }
            NtfsAttributeType::ReparsePoint => {
                let v = read_small_value(cur, &a, MAX_REPARSE).map_err(|e| e.in_ctx(&ctx("$REPARSE_POINT")))?;
                reparse = Some(v);
            }
            NtfsAttributeType::LoggedUtilityStream if name.to_string_lossy() == "$EFS" => efs = true,
            _ => {}
        }
    }
    meta.nlink = names.max(1);
    let display = format!("{} (MFT record {rec})", display.unwrap_or_else(|| "?".into()));
    let tag = reparse.as_ref().and_then(|r| r.get(..4)).map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]));

    let mut link = None;
    let mut data = Data::None;
    if matches!(tag, Some(TAG_SYMLINK | TAG_MOUNT_POINT)) {
        meta.kind = FileKind::Symlink;
        let target = reparse_target(reparse.as_deref().unwrap_or_default());
        if let Ok(t) = &target {
            meta.size = t.len() as u64;
        }
        link = Some(target);
    } else if is_dir {
        meta.kind = FileKind::Dir;
    } else if tag == Some(TAG_WOF) {
        meta.kind = FileKind::File;
        let size = main.as_ref().map_or(0, data_size);
        meta.size = size;
        data = wof_data(reparse.as_deref().unwrap_or_default(), wof, size);
    } else if tag.is_some() {
        meta.kind = FileKind::Other;
        meta.size = main.as_ref().map_or(0, data_size);
    } else {
        meta.kind = FileKind::File;
        let encrypted = efs
            || file_attributes & ATTR_ENCRYPTED != 0
            || main.as_ref().is_some_and(|d| d.flags & FLAG_ENCRYPTED != 0);
        if let Some(d) = main {
            meta.size = data_size(&d);
            data = if encrypted {
                Data::Unreadable("EFS-encrypted: its data is ciphertext and the key is not on the volume".into())
            } else {
                plain_or_compressed(d)
            };
        } else if encrypted {
            data = Data::Unreadable("EFS-encrypted".into());
        }
    }
    // An Interix symlink (what ntfs-3g's `ln -s` makes): a system file
    // whose data is "IntxLNK\1" and the target in UTF-16.
    if meta.kind == FileKind::File && file_attributes & ATTR_SYSTEM != 0 && (10..=8 + 2 * 4096).contains(&meta.size) {
        if let Data::Plain(s) = &data {
            let mut b = vec![0u8; meta.size as usize];
            if s.read_exact(&**dev, 0, &mut b).is_ok() && b.starts_with(b"IntxLNK\x01") {
                let target = String::from_utf8_lossy(&utf16_to_utf8(&b[8..])).into_owned();
                meta.kind = FileKind::Symlink;
                meta.size = target.len() as u64;
                link = Some(Ok(target.into_bytes()));
                data = Data::None;
            }
        }
    }
    if let Data::Unreadable(why) = &data {
        meta.unreadable = Some(why.clone());
    }
    Ok(Node { meta, display, sequence: file.sequence_number(), data, link, unit: Mutex::new(None) })
}

fn data_size(d: &DataAttr) -> u64 {
    match (&d.resident, &d.runs) {
        (Some(v), _) => v.len() as u64,
        (None, Some(r)) => r.size,
        (None, None) => 0,
    }
}

fn plain_or_compressed(d: DataAttr) -> Data {
    match (d.resident, d.runs) {
        (Some(v), _) => Data::Plain(Stream::Resident(v)),
        (None, Some(runs)) => {
            if d.flags & FLAG_COMPRESSED != 0 && d.compression_unit != 0 {
                if d.compression_unit > 8 || runs.cluster > 4096 {
                    return Data::Unreadable(format!(
                        "compressed with units of 2^{} clusters of {} bytes, which NTFS does not write",
                        d.compression_unit, runs.cluster
                    ));
                }
                let unit = runs.cluster << d.compression_unit;
                Data::Lznt1 { stream: runs, unit }
            } else {
                Data::Plain(Stream::Runs(runs))
            }
        }
        (None, None) => Data::None,
    }
}

/// The WOF reparse point's algorithm and the compressed stream.
fn wof_data(reparse: &[u8], stream: Option<DataAttr>, size: u64) -> Data {
    let le32 = |at: usize| reparse.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    // Reparse header (8), WOF_EXTERNAL_INFO {version, provider},
    // FILE_PROVIDER_EXTERNAL_INFO_V1 {version, algorithm}.
    let (Some(wof_version), Some(provider)) = (le32(8), le32(12)) else {
        return Data::Unreadable("CompactOS (WOF) file with a short reparse point".into());
    };
    if wof_version != 1 {
        return Data::Unreadable(format!("WOF reparse point version {wof_version}"));
    }
    if provider == 1 {
        return Data::Unreadable("WIMBoot (WOF WIM provider): the data lives in a WIM file outside the volume".into());
    }
    if provider != 2 {
        return Data::Unreadable(format!("WOF provider {provider}"));
    }
    let (chunk, lzx) = match le32(20) {
        Some(0) => (4096, false),
        Some(1) => (32768, true),
        Some(2) => (8192, false),
        Some(3) => (16384, false),
        Some(a) => return Data::Unreadable(format!("CompactOS algorithm {a}")),
        None => return Data::Unreadable("CompactOS (WOF) file with a short reparse point".into()),
    };
    let Some(d) = stream else {
        return Data::Unreadable("CompactOS (WOF) file without its WofCompressedData stream".into());
    };
    let stream = match (d.resident, d.runs) {
        (Some(v), _) => Stream::Resident(v),
        (None, Some(r)) => Stream::Runs(r),
        (None, None) => Stream::Resident(Vec::new()),
    };
    Data::Wof { stream, chunk, size, lzx }
}

/// Reads a (small) attribute value whole.
fn read_small_value(cur: &mut DevReader, a: &NtfsAttribute<'_, '_>, max: usize) -> Result<Vec<u8>> {
    let len = a.value_length();
    if len > max as u64 {
        return Err(corrupt(format!("a {len}-byte value where at most {max} are expected")));
    }
    let mut v = a.value(cur).map_err(|e| cur.fail("value", e))?;
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        let n = v.read(cur, &mut buf[got..]).map_err(|e| cur.fail("value", e))?;
        if n == 0 {
            return Err(corrupt(format!("value ends after {got} of {len} bytes")));
        }
        got += n;
    }
    Ok(buf)
}

trait InCtx {
    fn in_ctx(self, ctx: &str) -> FsError;
}

impl InCtx for FsError {
    fn in_ctx(self, ctx: &str) -> FsError {
        match self {
            FsError::Corrupt { fs, what } => FsError::Corrupt { fs, what: format!("{ctx}: {what}") },
            e => e,
        }
    }
}

/// The header fields of a non-resident attribute the crate does not expose
/// (read from the validated raw record).
struct NonResidentHeader {
    lowest_vcn: u64,
    compression_unit: u8,
    data_size: u64,
    initialized: u64,
}

fn non_resident_header(raw: &Raw, a: &NtfsAttribute<'_, '_>) -> Result<NonResidentHeader> {
    let h = a
        .position()
        .value()
        .and_then(|p| raw.at(p.get()))
        .filter(|h| h.len() >= 0x40)
        .ok_or_else(|| corrupt("a non-resident attribute outside the records checked".into()))?;
    let le64 = |at: usize| {
        u64::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3], h[at + 4], h[at + 5], h[at + 6], h[at + 7]])
    };
    Ok(NonResidentHeader {
        lowest_vcn: le64(0x10),
        compression_unit: h[0x22],
        data_size: le64(0x30),
        initialized: le64(0x38),
    })
}

/// A $DATA (or $INDEX_ALLOCATION) attribute: its resident value, or its
/// run list across all its extents. `None` for an extent that does not start
/// at VCN 0 (the crate lists extents in the base record on their own): the
/// first extent's attribute gathers them all.
#[allow(clippy::too_many_arguments)]
fn parse_data(
    vol: &ntfs::Ntfs,
    cur: &mut DevReader,
    raw: &Raw,
    file: &NtfsFile<'_>,
    a: &NtfsAttribute<'_, '_>,
    ty: NtfsAttributeType,
    stream_name: &str,
    cluster: u64,
    rec: u64,
) -> Result<Option<DataAttr>> {
    let ctx = format!("MFT record {rec}: {ty:?}:{stream_name}");
    let flags = a.flags().bits();
    if a.is_resident() {
        let v = read_small_value(cur, a, 1 << 20).map_err(|e| e.in_ctx(&ctx))?;
        return Ok(Some(DataAttr { flags, resident: Some(v), runs: None, compression_unit: 0 }));
    }
    let head = non_resident_header(raw, a)?;
    if head.lowest_vcn != 0 {
        return Ok(None);
    }
    let mut runs = Vec::new();
    let mut next_vcn = 0u64;
    let list_attr =
        file.attributes_raw().filter_map(|r| r.ok()).find(|r| matches!(r.ty(), Ok(NtfsAttributeType::AttributeList)));
    match list_attr {
        None => match a.value(cur).map_err(|e| cur.fail(&ctx, e))? {
            NtfsAttributeValue::NonResident(v) => collect_runs(&mut runs, &mut next_vcn, v.data_runs(), cluster, &ctx)?,
            _ => return Err(corrupt(format!("{ctx}: a non-resident attribute without its runs"))),
        },
        Some(list_attr) => {
            // The extents may lie in several records: the attribute list
            // names each, with the VCN it starts at.
            let list = list_attr.structured_value::<_, NtfsAttributeList>(cur).map_err(|e| cur.fail(&ctx, e))?;
            let mut entries = list.entries();
            let mut extents = Vec::new();
            while let Some(entry) = entries.next(cur) {
                let entry = entry.map_err(|e| cur.fail(&ctx, e))?;
                if extents.len() >= MAX_ATTRIBUTES {
                    return Err(FsError::Limit(format!("{ctx}: more than {MAX_ATTRIBUTES} extents")));
                }
                if entry.ty().ok() == Some(ty) && entry.name().to_string_lossy() == stream_name {
                    extents.push((u64::try_from(entry.lowest_vcn().value()).unwrap_or(u64::MAX), entry));
                }
            }
            extents.sort_by_key(|(vcn, _)| *vcn);
            for (lowest, entry) in extents {
                if lowest != next_vcn {
                    return Err(corrupt(format!("{ctx}: extent at VCN {lowest}, expected {next_vcn}")));
                }
                // Checked by open_record, with every record the list names.
                let ext = entry.to_file(vol, cur).map_err(|e| cur.fail(&ctx, e))?;
                let ea = entry.to_attribute(&ext).map_err(|e| cur.fail(&ctx, e))?;
                if ea.is_resident() {
                    return Err(corrupt(format!("{ctx}: a resident extent")));
                }
                match ea.value(cur).map_err(|e| cur.fail(&ctx, e))? {
                    NtfsAttributeValue::NonResident(v) => {
                        collect_runs(&mut runs, &mut next_vcn, v.data_runs(), cluster, &ctx)?
                    }
                    _ => return Err(corrupt(format!("{ctx}: an extent that is not non-resident"))),
                }
            }
        }
    }
    let size = head.data_size;
    let initialized = head.initialized.min(size);
    Ok(Some(DataAttr {
        flags,
        resident: None,
        runs: Some(Runs { runs, size, initialized, cluster }),
        compression_unit: head.compression_unit,
    }))
}

fn collect_runs(
    out: &mut Vec<Run>,
    next_vcn: &mut u64,
    mut runs: ntfs::attribute_value::NtfsDataRuns<'_, '_>,
    cluster: u64,
    ctx: &str,
) -> Result<()> {
    for r in &mut runs {
        let r = r.map_err(|e| corrupt(format!("{ctx}: data run: {e}")))?;
        if out.len() >= MAX_RUNS {
            return Err(FsError::Limit(format!("{ctx}: more than {MAX_RUNS} data runs")));
        }
        let clusters = r.allocated_size() / cluster;
        let end = next_vcn
            .checked_add(clusters)
            .filter(|e| e.checked_mul(cluster).is_some())
            .ok_or_else(|| corrupt(format!("{ctx}: data runs past 2^64 bytes")))?;
        let pos = r.data_position().value().map(|p| p.get());
        out.push(Run { vcn: *next_vcn, clusters, pos });
        *next_vcn = end;
    }
    Ok(())
}

/// The target of a symlink or junction reparse point, `/`-separated.
fn reparse_target(r: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let le16 = |at: usize| r.get(at..at + 2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    let tag = r.get(..4).map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]])).unwrap_or(0);
    let buf_start = if tag == TAG_SYMLINK { 20 } else { 16 };
    let (Some(sub_off), Some(sub_len), Some(print_off), Some(print_len)) = (le16(8), le16(10), le16(12), le16(14))
    else {
        return Err("reparse point too short for a link".into());
    };
    let name = |off: usize, len: usize| r.get(buf_start + off..buf_start + off + len);
    let print = name(print_off, print_len).filter(|p| !p.is_empty());
    let raw = match print {
        Some(p) => p,
        None => name(sub_off, sub_len).ok_or("link target outside the reparse point")?,
    };
    let mut s = String::from_utf8_lossy(&utf16_to_utf8(raw)).into_owned();
    for prefix in [r"\??\", r"\\?\"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest.to_string();
        }
    }
    if s.is_empty() {
        return Err("empty link target".into());
    }
    Ok(s.replace('\\', "/").into_bytes())
}

impl FileSystem for NtfsFs {
    fn kind(&self) -> FsKind {
        FsKind::Ntfs
    }

    fn label(&self) -> Option<String> {
        self.label.clone()
    }

    fn root(&self) -> FileId {
        FileId(ROOT)
    }

    fn metadata(&self, id: FileId) -> Result<Metadata> {
        Ok(self.node(id.0)?.meta.clone())
    }

    fn read_dir(&self, dir: FileId) -> Result<Vec<DirEntry>> {
        let node = self.node(dir.0)?;
        if node.meta.kind != FileKind::Dir {
            return Err(FsError::NotADirectory(node.display.clone()));
        }
        let mut st = self.lock();
        let raw = self.read_dir_locked(&mut st, dir.0)?;
        let mut out = Vec::with_capacity(raw.len());
        for e in raw {
            let (name, rec) = (e.name.clone(), e.rec);
            if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
                continue;
            }
            if dir.0 == ROOT && rec < FIRST_USER_RECORD {
                continue;
            }
            if rec == dir.0 {
                continue;
            }
            let meta = match node_locked(&mut st, &self.dev, self.cluster, rec) {
                // An entry whose record was reused since is stale.
                Ok(node) if e.seq != 0 && node.sequence != e.seq => continue,
                Ok(node) => node.meta.clone(),
                // The file's own record cannot be read: it is listed from the
                // index's copy of its name record, and fails on its own.
                Err(err) => {
                    let kind = if e.dir { FileKind::Dir } else { FileKind::File };
                    let mut m = Metadata::new(FileId(rec), kind, if e.dir { 0 } else { e.size });
                    m.mtime = e.mtime;
                    m.atime = e.atime;
                    m.btime = e.btime;
                    m.unreadable = Some(format!("MFT record {rec}: {err}"));
                    m
                }
            };
            out.push(DirEntry { name, meta });
        }
        Ok(out)
    }

    fn read_at(&self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let node = self.node(file.0)?;
        let size = node.meta.size;
        if offset >= size || buf.is_empty() {
            return match &node.data {
                Data::Unreadable(why) => Err(FsError::Unreadable { path: node.display.clone(), why: why.clone() }),
                _ => Ok(0),
            };
        }
        let n = (size - offset).min(buf.len() as u64) as usize;
        let buf = &mut buf[..n];
        let named = |e: FsError| match e {
            FsError::Corrupt { fs, what } => FsError::Corrupt { fs, what: format!("{}: {what}", node.display) },
            e => e,
        };
        match &node.data {
            Data::None => return Err(FsError::Unreadable { path: node.display.clone(), why: "has no data".into() }),
            Data::Unreadable(why) => {
                return Err(FsError::Unreadable { path: node.display.clone(), why: why.clone() });
            }
            Data::Plain(s) => s.read_exact(&*self.dev, offset, buf).map_err(named)?,
            Data::Lznt1 { stream, unit } => self
                .read_units(&node, *unit, offset, buf, |u| lznt1_unit(&*self.dev, stream, *unit, u))
                .map_err(named)?,
            Data::Wof { stream, chunk, size, lzx } => self
                .read_units(&node, *chunk, offset, buf, |c| wof_chunk(&*self.dev, stream, *chunk, *size, *lzx, c))
                .map_err(named)?,
        }
        Ok(n)
    }

    fn read_link(&self, link: FileId) -> Result<Vec<u8>> {
        let node = self.node(link.0)?;
        match &node.link {
            Some(Ok(t)) => Ok(t.clone()),
            Some(Err(why)) => Err(corrupt(format!("{}: {why}", node.display))),
            None => Err(FsError::Unsupported { fs: FS, what: format!("{} is not a link", node.display) }),
        }
    }

    fn data_ranges(&self, file: FileId) -> Result<Vec<Range<u64>>> {
        let node = self.node(file.0)?;
        let size = node.meta.size;
        #[allow(clippy::single_range_in_vec_init)] // one range: the whole file
        let whole = if size == 0 { Vec::new() } else { vec![0..size] };
        Ok(match &node.data {
            Data::Plain(Stream::Runs(r)) => r.ranges(),
            Data::Lznt1 { stream, unit } => {
                // Units with any cluster hold data; all-sparse units are holes.
                let mut out: Vec<Range<u64>> = Vec::new();
                for r in stream.ranges() {
                    let s = r.start / unit * unit;
                    let e = r.end.div_ceil(*unit).saturating_mul(*unit).min(size);
                    match out.last_mut() {
                        Some(last) if last.end >= s => last.end = last.end.max(e),
                        _ => out.push(s..e),
                    }
                }
                out
            }
            _ => whole,
        })
    }
}

impl NtfsFs {
    /// Reads through fixed-size units (compression units, WOF chunks),
    /// keeping the last one decoded.
    fn read_units(
        &self,
        node: &Node,
        unit: u64,
        offset: u64,
        buf: &mut [u8],
        decode: impl Fn(u64) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let idx = pos / unit;
            let cached = node.unit.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let bytes = match cached {
                Some((i, b)) if i == idx => b,
                _ => {
                    let b = Arc::new(decode(idx)?);
                    *node.unit.lock().unwrap_or_else(|p| p.into_inner()) = Some((idx, b.clone()));
                    b
                }
            };
            let at = (pos - idx * unit) as usize;
            let n = (bytes.len().saturating_sub(at)).min(buf.len() - done);
            if n == 0 {
                return Err(corrupt(format!("unit {idx} decodes to {} bytes, short of byte {at}", bytes.len())));
            }
            buf[done..done + n].copy_from_slice(&bytes[at..at + n]);
            done += n;
        }
        Ok(())
    }
}

/// Compression unit `u` of an LZNT1-compressed stream, `unit` bytes long.
fn lznt1_unit(dev: &dyn BlockDevice, s: &Runs, unit: u64, u: u64) -> Result<Vec<u8>> {
    let per = unit / s.cluster;
    let first = u * per;
    let mut out = vec![0u8; unit as usize];
    // The unit's clusters in order; those before the first hole hold it.
    let mut stored = 0u64;
    let mut sparse = false;
    let mut i = s.runs.partition_point(|r| r.vcn + r.clusters <= first);
    let mut vcn = first;
    let mut pieces = Vec::new();
    while vcn < first + per {
        let Some(r) = s.runs.get(i).filter(|r| r.vcn <= vcn) else { break };
        let take = (r.vcn + r.clusters).min(first + per) - vcn;
        match r.pos {
            Some(p) if !sparse => {
                pieces.push((p + (vcn - r.vcn) * s.cluster, take * s.cluster));
                stored += take;
            }
            Some(_) => return Err(corrupt(format!("compression unit {u}: clusters after its hole"))),
            None => sparse = true,
        }
        vcn += take;
        i += 1;
    }
    if vcn < first + per && vcn.saturating_mul(s.cluster) < s.size {
        return Err(corrupt(format!("compression unit {u} lies past the data runs")));
    }
    if stored == 0 {
        return Ok(out);
    }
    let mut raw = vec![0u8; (stored * s.cluster) as usize];
    let mut at = 0usize;
    for (p, len) in pieces {
        dev.read_exact_at(p, &mut raw[at..at + len as usize])?;
        at += len as usize;
    }
    if stored == per && !sparse {
        // Stored whole: this unit did not compress.
        return Ok(raw);
    }
    lznt1::decompress(&raw, &mut out).map_err(|e| corrupt(format!("compression unit {u}: LZNT1: {}", e.0)))?;
    Ok(out)
}

/// Chunk `c` of a CompactOS file, decompressed.
fn wof_chunk(dev: &dyn BlockDevice, s: &Stream, chunk: u64, size: u64, lzx: bool, c: u64) -> Result<Vec<u8>> {
    let chunks = size.div_ceil(chunk);
    let width: u64 = if size > u64::from(u32::MAX) { 8 } else { 4 };
    let table = (chunks - 1)
        .checked_mul(width)
        .filter(|t| *t <= s.len())
        .ok_or_else(|| corrupt(format!("WOF chunk table of {chunks} chunks exceeds the {}-byte stream", s.len())))?;
    let entry = |i: u64| -> Result<u64> {
        let mut b = [0u8; 8];
        s.read_exact(dev, i * width, &mut b[..width as usize])?;
        Ok(u64::from_le_bytes(b))
    };
    let start = if c == 0 { 0 } else { entry(c - 1)? };
    let end = if c + 1 == chunks { s.len() - table } else { entry(c)? };
    let out_len = chunk.min(size - c * chunk) as usize;
    if start > end || end > s.len() - table || end - start > out_len as u64 {
        return Err(corrupt(format!("WOF chunk {c}: stored at {start}..{end} of {}", s.len() - table)));
    }
    let mut stored = vec![0u8; (end - start) as usize];
    s.read_exact(dev, table + start, &mut stored)?;
    if stored.len() == out_len {
        return Ok(stored);
    }
    let mut out = vec![0u8; out_len];
    if lzx {
        lzx::decompress(&stored, &mut out).map_err(|e| corrupt(format!("WOF chunk {c}: LZX: {}", e.0)))?;
    } else {
        xpress::decompress(&stored, &mut out).map_err(|e| corrupt(format!("WOF chunk {c}: XPRESS: {}", e.0)))?;
    }
    Ok(out)
}

/// `Read + Seek` over a [`BlockDevice`] for the `ntfs` crate, with a read
/// budget (see the module docs) and a small window cache (the crate reads
/// structures field by field).
struct DevReader {
    dev: Arc<dyn BlockDevice>,
    pos: u64,
    budget: u64,
    /// The device error behind the crate's last I/O error.
    err: Option<FsError>,
    win: Vec<u8>,
    win_off: u64,
    /// Bytes read ahead and served from memory: what the crate parses with
    /// binrw (an I/O error there would be a panic in the crate).
    pins: Vec<(u64, Vec<u8>)>,
}

const WINDOW: u64 = 64 << 10;

impl DevReader {
    fn new(dev: Arc<dyn BlockDevice>) -> DevReader {
        DevReader { dev, pos: 0, budget: 0, err: None, win: Vec::new(), win_off: 0, pins: Vec::new() }
    }

    /// The error for a failed crate call: the device's own when there was one.
    fn fail(&mut self, what: &str, e: ntfs::NtfsError) -> FsError {
        match self.err.take() {
            Some(FsError::Limit(l)) => FsError::Limit(format!("{what}: {l}")),
            Some(dev_err) => dev_err,
            None => corrupt(format!("{what}: {e}")),
        }
    }
}

impl Read for DevReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pos = self.pos;
        if let Some((start, b)) = self.pins.iter().find(|(start, b)| pos >= *start && pos - start < b.len() as u64) {
            let at = (pos - start) as usize;
            let n = (b.len() - at).min(buf.len());
            buf[..n].copy_from_slice(&b[at..at + n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let size = self.dev.size();
        if self.pos >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = (size - self.pos).min(buf.len() as u64);
        if n > self.budget {
            self.err = Some(FsError::Limit(format!(
                "read more than {} MiB of metadata for one operation (a loop in the volume's structures?)",
                META_BUDGET >> 20
            )));
            return Err(io::Error::other("read budget exhausted"));
        }
        self.budget -= n;
        let n = n as usize;
        let fill = |r: std::result::Result<(), FsError>, err: &mut Option<FsError>| {
            r.map_err(|e| {
                let msg = e.to_string();
                *err = Some(e);
                io::Error::other(msg)
            })
        };
        if n as u64 >= WINDOW / 4 {
            fill(self.dev.read_exact_at(self.pos, &mut buf[..n]), &mut self.err)?;
            self.pos += n as u64;
            return Ok(n);
        }
        let in_win = self.pos >= self.win_off && self.pos < self.win_off + self.win.len() as u64;
        if !in_win {
            let start = self.pos / WINDOW * WINDOW;
            let len = WINDOW.min(size - start) as usize;
            self.win.resize(len, 0);
            let r = self.dev.read_exact_at(start, &mut self.win);
            if r.is_err() {
                self.win.clear();
            }
            fill(r, &mut self.err)?;
            self.win_off = start;
        }
        let at = (self.pos - self.win_off) as usize;
        let n = n.min(self.win.len() - at);
        buf[..n].copy_from_slice(&self.win[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for DevReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.dev.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before 0"))?;
        Ok(self.pos)
    }
}

/// The fuzz body: opens `data` as an NTFS volume, lists the root and the
/// directories under it, and reads the start of every file found. Must
/// return, never panic, loop or allocate by what the bytes claim.
pub fn fuzz_one(data: &[u8]) {
    let dev: Arc<dyn BlockDevice> = Arc::new(crate::fuzz::MemDevice(data.to_vec()));
    crate::fuzz::walk(open(dev));
}

/// The fuzz body of the `ntfs_codecs` target: the first byte picks the
/// decoder (LZNT1, XPRESS, LZX) and, with the second, the output size; the
/// rest is the compressed input. Must return, never panic.
pub fn fuzz_codecs(data: &[u8]) {
    let [which, size, rest @ ..] = data else { return };
    let len = (usize::from(*size) + 1) * 128 * (1 + usize::from(which >> 2 & 3));
    let mut out = vec![0u8; len.min(64 << 10)];
    match which & 3 {
        0 => {
            let _ = lznt1::decompress(rest, &mut out);
        }
        1 => {
            let _ = xpress::decompress(rest, &mut out);
        }
        _ => {
            out.truncate(32 << 10);
            let _ = lzx::decompress(rest, &mut out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_survive_noise() {
        // A small xorshift: no dependency for a smoke test.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000u64 {
            let len = (next() % 3000) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(b) = data.first_mut() {
                *b = round as u8;
            }
            fuzz_codecs(&data);
        }
    }

    #[test]
    fn times_convert_from_1601() {
        assert_eq!(nt_time(116_444_736_000_000_000), Some(0));
        assert_eq!(nt_time(116_444_736_000_000_001), Some(100));
        assert_eq!(nt_time(0), None);
        assert!(nt_time(u64::MAX).is_none());
    }

    #[test]
    fn names_decode_with_replacement() {
        assert_eq!(utf16_to_utf8(&[b'a', 0, 0x00, 0xd8, b'b', 0]), "a\u{fffd}b".as_bytes());
    }

    #[test]
    fn link_targets_drop_the_nt_prefix_and_use_slashes() {
        let mk = |tag: u32, sub: &str, print: &str| {
            let s: Vec<u8> = sub.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            let p: Vec<u8> = print.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            let mut r = tag.to_le_bytes().to_vec();
            r.extend([0; 4]);
            r.extend(0u16.to_le_bytes());
            r.extend((s.len() as u16).to_le_bytes());
            r.extend((s.len() as u16).to_le_bytes());
            r.extend((p.len() as u16).to_le_bytes());
            if tag == TAG_SYMLINK {
                r.extend(1u32.to_le_bytes());
            }
            r.extend(s);
            r.extend(p);
            r
        };
        assert_eq!(reparse_target(&mk(TAG_MOUNT_POINT, r"\??\C:\Users", "")).unwrap(), b"C:/Users");
        assert_eq!(reparse_target(&mk(TAG_SYMLINK, r"..\a\b", r"..\a\b")).unwrap(), b"../a/b");
        assert!(reparse_target(&[0x0c, 0, 0, 0xa0]).is_err());
    }
}
