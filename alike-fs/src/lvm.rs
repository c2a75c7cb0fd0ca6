//! LVM2 volume groups and logical volumes, read from the disks that hold
//! their physical volumes, without device-mapper.
//!
//! [`scan`] looks at each device for an LVM2 label, reads each physical
//! volume's metadata areas, groups the volume groups by **uuid** (two disks
//! may each hold a volume group called `vg0`: both are listed, told apart
//! by uuid and marked [`VolumeGroup::name_collision`]), and keeps the
//! newest metadata (highest `seqno`) when copies disagree.
//! [`LogicalVolume::device`] then reads a logical volume as a
//! [`BlockDevice`], mapping its offsets through its segments to the
//! physical volumes. Linear and striped segments are read; other segment
//! types (thin, RAID, mirror, snapshot, cache, …) are listed with their type
//! and their `device` is [`FsError::Unsupported`]. A segment on a physical
//! volume that was not found fails the reads of its range, naming that
//! volume's uuid; the rest of the logical volume reads.
//!
//! # On-disk layout read here
//!
//! (All integers little-endian; "sector" is 512 bytes; checksums are LVM's
//! CRC-32: the reflected polynomial `0xEDB88320`, initial value
//! `0xf597a6cf`, no final inversion.)
//!
//! - **Label** — in one of sectors 0–3: `"LABELONE"`, the sector's own
//!   number (u64), a checksum (u32) of the sector from byte 20 on, the
//!   offset of the PV header in the sector (u32), `"LVM2 001"`.
//! - **PV header** — the PV's uuid (32 characters, no dashes), the device
//!   size in bytes (u64), then lists of `(offset, size)` pairs (u64 each, in
//!   bytes from the start of the device), each ended by a zero pair: data
//!   areas, then metadata areas. The whole header lies in the label sector.
//! - **Metadata area** — starts with a 512-byte header: checksum (u32) of
//!   the other 508 bytes, `" LVM2 x[5A%r0N*>"`, version 1 (u32), the area's
//!   own start and size (u64 each), then `raw_locn`s: offset (from the
//!   area's start), size, checksum (u32) and flags (u32) of the metadata
//!   text. The first is the committed text (flag 1: the area is ignored).
//!   The rest of the area is a circular buffer: text that runs past the
//!   area's end continues right after the header.
//! - **Metadata text** — `vgname { id = "…" seqno = N extent_size = S
//!   physical_volumes { pv0 { id dev_size pe_start pe_count } … }
//!   logical_volumes { lv { id status segment1 { start_extent extent_count
//!   type stripe_count stripe_size stripes = ["pv0", E, …] } … } … } }`, sizes
//!   in sectors (parsed by the `text` module).
//!
//! A physical extent `e` of a PV starts at byte `(pe_start + e ×
//! extent_size) × 512` of its device. A striped segment of `n` stripes and
//! stripe size `c` puts the LV's chunk `k` (of `c` bytes) on stripe `k mod
//! n`, at chunk `k div n` of that stripe's area — the mapping of
//! device-mapper's `striped` target.
//!
//! Every number read from the image is checked before it is used: areas
//! within the device, the metadata text within its area and at most
//! [`MAX_METADATA_TEXT`] bytes, extent arithmetic without overflow,
//! segments contiguous, stripes within their PV's extents and its data
//! area.

mod text;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use text::{Section, Value};

use crate::{BlockDevice, FsError, Result};

const FS: &str = "LVM2";
const SECTOR: u64 = 512;
const LABEL_SCAN_SECTORS: u64 = 4;
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
const LABEL_HEADER_SIZE: usize = 32;
const UUID_LEN: usize = 32;
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
const MDA_VERSION: u32 = 1;
const MDA_HEADER_SIZE: u64 = 512;
const RAW_LOCN_IGNORED: u32 = 1;
const INITIAL_CRC: u32 = 0xf597_a6cf;

/// The largest metadata text read (LVM's default metadata area is 1 MiB;
/// a volume group with thousands of volumes stays far below this).
pub const MAX_METADATA_TEXT: u64 = 16 << 20;

/// At most this many stripes in one segment (LVM's own limit is 128).
const MAX_STRIPES: usize = 128;

/// What [`scan`] found on a set of devices.
#[derive(Debug)]
#[non_exhaustive]
pub struct Scan {
    /// The volume groups, in the order their first physical volume's
    /// device was given.
    pub volume_groups: Vec<VolumeGroup>,
    /// Devices with an LVM2 label whose structures could not be read
    /// (a physical volume on such a device counts as missing).
    pub problems: Vec<ScanProblem>,
}

/// A device [`scan_report`] could not read as a physical volume.
#[derive(Debug)]
#[non_exhaustive]
pub struct ScanProblem {
    /// Index of the device in the slice given to the scan.
    pub device: usize,
    /// What was wrong.
    pub error: FsError,
}

/// A volume group, as its newest metadata describes it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VolumeGroup {
    /// The name (not unique: see [`VolumeGroup::name_collision`]).
    pub name: String,
    /// The uuid, as LVM prints it (`xxxxxx-xxxx-…`): what tells apart two
    /// volume groups of one name.
    pub uuid: String,
    /// Another volume group found in the same scan has the same name.
    pub name_collision: bool,
    /// The metadata's sequence number (the newest copy's).
    pub seqno: u64,
    /// Size of a physical extent in bytes.
    pub extent_size: u64,
    /// The physical volumes the metadata lists.
    pub pvs: Vec<PhysicalVolume>,
    /// The uuids of the physical volumes the metadata lists and the scan
    /// did not find.
    pub missing_pvs: Vec<String>,
    /// The logical volumes, visible and hidden, in metadata order.
    pub lvs: Vec<LogicalVolume>,
}

/// A physical volume of a volume group.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PhysicalVolume {
    /// The name the metadata gives it (`pv0`, `pv1`, …).
    pub name: String,
    /// The uuid, as LVM prints it.
    pub uuid: String,
    /// The device path LVM last saw it on (a hint only).
    pub device_hint: Option<String>,
    /// Index of the device that holds it in the slice given to the scan,
    /// or `None` when it was not found.
    pub device: Option<usize>,
    /// Where its first extent starts on the device, in bytes.
    pub pe_start: u64,
    /// How many extents it has.
    pub pe_count: u64,
}

/// A logical volume.
#[derive(Clone)]
#[non_exhaustive]
pub struct LogicalVolume {
    /// The name.
    pub name: String,
    /// The uuid, as LVM prints it.
    pub uuid: String,
    /// The volume group's name.
    pub vg_name: String,
    /// The volume group's uuid.
    pub vg_uuid: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether LVM lists it (`VISIBLE`); hidden volumes are the parts of
    /// others (RAID images, thin pool data, snapshot stores).
    pub visible: bool,
    /// A short description: `linear`, `striped (2 stripes of 64 KiB)`,
    /// `linear, 2 segments`, `thin (not readable)`, …
    pub layout: String,
    /// The segments, in LV order.
    pub segments: Vec<Segment>,
    /// Why the volume cannot be read at all (its metadata is
    /// inconsistent), if so.
    pub problem: Option<String>,
    map: Map,
    pvs: Arc<[PvSlot]>,
}

impl fmt::Debug for LogicalVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogicalVolume")
            .field("name", &self.name)
            .field("uuid", &self.uuid)
            .field("vg_name", &self.vg_name)
            .field("vg_uuid", &self.vg_uuid)
            .field("size", &self.size)
            .field("visible", &self.visible)
            .field("layout", &self.layout)
            .field("segments", &self.segments)
            .field("problem", &self.problem)
            .finish_non_exhaustive()
    }
}

/// A run of a logical volume with one layout.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Segment {
    /// Where it starts in the logical volume, in bytes.
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
    /// How its bytes are laid out.
    pub kind: SegmentKind,
}

/// How a segment's bytes are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentKind {
    /// Linear (one stripe) or striped over several physical volumes.
    Striped {
        /// Bytes per stripe chunk (0 with one stripe).
        stripe_size: u64,
        /// The stripes, in order.
        stripes: Vec<Stripe>,
    },
    /// A segment type this reader lists but does not read (`thin`,
    /// `raid1`, `mirror`, `snapshot`, `cache`, …).
    Other {
        /// The type as the metadata names it.
        type_name: String,
    },
}

/// Where one stripe of a segment lies.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stripe {
    /// The physical volume's name in the metadata (`pv0`).
    pub pv_name: String,
    /// The physical volume's uuid.
    pub pv_uuid: String,
    /// The first physical extent of the stripe's area on that volume.
    pub start_extent: u64,
    /// Extents in the stripe's area.
    pub extents: u64,
}

/// A physical volume as the readers of a volume group's LVs see it.
#[derive(Clone)]
struct PvSlot {
    name: String,
    uuid: String,
    device: Option<Arc<dyn BlockDevice>>,
}

/// What [`LogicalVolume::device`] serves, decided (and checked) when the
/// volume group was built: the public fields only describe it.
#[derive(Clone)]
enum Map {
    Readable(Arc<[MapSeg]>),
    Unsupported(String),
    Corrupt(String),
}

/// A segment as the reader maps it: bytes, with each stripe's area as a
/// byte offset on its PV's device.
#[derive(Debug, Clone)]
struct MapSeg {
    start: u64,
    len: u64,
    /// Bytes per chunk; equal to `len` with one stripe.
    stripe_size: u64,
    stripes: Vec<MapStripe>,
}

#[derive(Debug, Clone)]
struct MapStripe {
    /// Index into the volume group's [`PvSlot`]s.
    pv: usize,
    /// Where the stripe's area starts on the PV's device, in bytes.
    base: u64,
    /// The area's length in bytes.
    len: u64,
}

impl LogicalVolume {
    /// The logical volume as a device: reads map through the segments to
    /// the physical volumes' devices.
    ///
    /// # Errors
    ///
    /// [`FsError::Unsupported`] naming the segment type when a segment is
    /// neither linear nor striped; [`FsError::Corrupt`] when the metadata
    /// of the volume is inconsistent ([`LogicalVolume::problem`]). Reads of
    /// a range on a missing physical volume fail with [`FsError::Device`]
    /// naming its uuid.
    pub fn device(&self) -> Result<Arc<dyn BlockDevice>> {
        let label = format!("logical volume {}/{}", self.vg_name, self.name);
        match &self.map {
            Map::Readable(segs) => {
                Ok(Arc::new(LvDevice { label, size: self.size, segs: segs.clone(), pvs: self.pvs.clone() }))
            }
            Map::Unsupported(type_name) => Err(FsError::Unsupported {
                fs: FS,
                what: format!("{label}: segment type {type_name:?} (only linear and striped volumes are read)"),
            }),
            Map::Corrupt(why) => Err(FsError::Corrupt { fs: FS, what: format!("{label}: {why}") }),
        }
    }
}

/// A readable logical volume.
struct LvDevice {
    label: String,
    size: u64,
    segs: Arc<[MapSeg]>,
    pvs: Arc<[PvSlot]>,
}

impl BlockDevice for LvDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(FsError::OutOfRange { device: self.label.clone(), offset, len, size: self.size });
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            // The segments are contiguous from 0 and cover the size.
            let i = self.segs.partition_point(|s| s.start + s.len <= pos);
            let seg = self.segs.get(i).ok_or_else(|| self.corrupt(pos, "no segment maps this offset"))?;
            let o = pos - seg.start;
            let n_stripes = seg.stripes.len() as u64;
            let chunk = o / seg.stripe_size;
            let in_chunk = o % seg.stripe_size;
            let stripe = &seg.stripes[(chunk % n_stripes) as usize];
            let on_stripe = (chunk / n_stripes) * seg.stripe_size + in_chunk;
            let want = (buf.len() - done) as u64;
            let n = want.min(seg.stripe_size - in_chunk).min(seg.len - o);
            if on_stripe + n > stripe.len {
                return Err(self.corrupt(pos, "a stripe runs past its area"));
            }
            let pv = &self.pvs[stripe.pv];
            let part = &mut buf[done..done + n as usize];
            match &pv.device {
                Some(dev) => dev.read_exact_at(stripe.base + on_stripe, part)?,
                None => {
                    return Err(FsError::Device {
                        device: self.label.clone(),
                        offset: pos,
                        len: n,
                        message: format!("physical volume {} ({}) is missing", pv.uuid, pv.name),
                    });
                }
            }
            done += n as usize;
        }
        Ok(())
    }
}

impl LvDevice {
    fn corrupt(&self, pos: u64, what: &str) -> FsError {
        FsError::Corrupt { fs: FS, what: format!("{} at offset {pos}: {what}", self.label) }
    }
}

// ---------------------------------------------------------------------------
// Scanning

/// Finds the LVM2 volume groups on `devices` (whole disks, partitions, or
/// any mix: a device without an LVM2 label is skipped).
///
/// # Errors
///
/// Only when no volume group was found and some device had an LVM2 label
/// that could not be read: that device's error. Use [`scan_report`] to see
/// every problem alongside what was found.
///
/// # Example
///
/// ```no_run
/// # fn demo(disks: Vec<std::sync::Arc<dyn alike_fs::BlockDevice>>) -> alike_fs::Result<()> {
/// for vg in alike_fs::lvm::scan(&disks)? {
///     for lv in &vg.lvs {
///         println!("{}/{} ({}): {} bytes, {}", vg.name, lv.name, vg.uuid, lv.size, lv.layout);
///     }
/// }
/// # Ok(()) }
/// ```
pub fn scan(devices: &[Arc<dyn BlockDevice>]) -> Result<Vec<VolumeGroup>> {
    let mut report = scan_report(devices);
    if report.volume_groups.is_empty() && !report.problems.is_empty() {
        return Err(report.problems.swap_remove(0).error);
    }
    Ok(report.volume_groups)
}

/// Like [`scan`], and also reports each device whose LVM2 structures could
/// not be read. Never fails as a whole: a damaged device is one problem.
pub fn scan_report(devices: &[Arc<dyn BlockDevice>]) -> Scan {
    let mut problems = Vec::new();
    // PV uuid (no dashes) → device index; the first device wins.
    let mut labels: HashMap<String, usize> = HashMap::new();
    // VG uuid (no dashes) → the copies of its metadata, with their device.
    let mut copies: Vec<(String, usize, VgMeta)> = Vec::new();
    for (i, dev) in devices.iter().enumerate() {
        match read_pv(dev.as_ref(), i) {
            Ok(None) => {}
            Ok(Some(pv)) => {
                labels.entry(pv.uuid.clone()).or_insert(i);
                for m in pv.metadata {
                    match m {
                        Ok(vg) => copies.push((strip_dashes(&vg.uuid), i, vg)),
                        Err(error) => problems.push(ScanProblem { device: i, error }),
                    }
                }
            }
            Err(error) => problems.push(ScanProblem { device: i, error }),
        }
    }

    // The newest copy of each volume group, in order of first sighting.
    let mut order: Vec<String> = Vec::new();
    let mut newest: HashMap<String, (usize, VgMeta)> = HashMap::new();
    for (uuid, dev, vg) in copies {
        match newest.get(&uuid) {
            None => {
                order.push(uuid.clone());
                newest.insert(uuid, (dev, vg));
            }
            Some((_, old)) if vg.seqno > old.seqno => {
                newest.insert(uuid, (dev, vg));
            }
            Some(_) => {}
        }
    }

    let mut volume_groups = Vec::new();
    for uuid in order {
        let Some((dev, meta)) = newest.remove(&uuid) else { continue };
        match build_vg(meta, devices, &labels) {
            Ok(vg) => volume_groups.push(vg),
            Err(error) => problems.push(ScanProblem { device: dev, error }),
        }
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    for vg in &volume_groups {
        *names.entry(vg.name.clone()).or_default() += 1;
    }
    for vg in &mut volume_groups {
        vg.name_collision = names.get(&vg.name).copied().unwrap_or(0) > 1;
    }
    Scan { volume_groups, problems }
}

/// What one device holds as a physical volume.
struct PvOnDevice {
    /// Without dashes.
    uuid: String,
    /// The volume group metadata of each metadata area that has some.
    metadata: Vec<Result<VgMeta>>,
}

fn corrupt(dev: usize, what: impl fmt::Display) -> FsError {
    FsError::Corrupt { fs: FS, what: format!("device {dev}: {what}") }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// LVM's CRC-32 (reflected `0xEDB88320`, no final inversion), continued
/// from `crc`.
fn lvm_crc(mut crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The label and PV header of device `i`, and the metadata of each of its
/// metadata areas. `Ok(None)` when the device carries no LVM2 label.
fn read_pv(dev: &dyn BlockDevice, i: usize) -> Result<Option<PvOnDevice>> {
    let sectors = (dev.size() / SECTOR).min(LABEL_SCAN_SECTORS);
    let mut head = vec![0u8; (sectors * SECTOR) as usize];
    dev.read_exact_at(0, &mut head)?;
    let Some((sector, s)) = head.chunks_exact(SECTOR as usize).enumerate().find(|(_, s)| &s[..8] == LABEL_ID) else {
        return Ok(None);
    };
    // As LVM: the label names its own sector and its checksum covers the
    // rest of the sector from the offset field on.
    if le_u64(s, 8) != sector as u64 {
        return Err(corrupt(i, format!("LVM2 label in sector {sector} names sector {}", le_u64(s, 8))));
    }
    let crc = lvm_crc(INITIAL_CRC, &s[20..]);
    if crc != le_u32(s, 16) {
        return Err(corrupt(i, format!("LVM2 label checksum {:#010x}, computed {crc:#010x}", le_u32(s, 16))));
    }
    if &s[24..32] != LABEL_TYPE {
        return Err(FsError::Unsupported {
            fs: FS,
            what: format!("device {i}: label type {:?}", String::from_utf8_lossy(&s[24..32])),
        });
    }
    let off = le_u32(s, 20) as usize;
    // uuid, device size, and at least the two terminating area entries.
    if off < LABEL_HEADER_SIZE || off > s.len() - (UUID_LEN + 8 + 32) {
        return Err(corrupt(i, format!("PV header offset {off} in the label sector")));
    }
    let ph = &s[off..];
    let uuid_raw = &ph[..UUID_LEN];
    if !uuid_raw.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'!' || b == b'#') {
        return Err(corrupt(i, "PV uuid holds characters LVM never writes"));
    }
    let uuid = String::from_utf8_lossy(uuid_raw).into_owned();
    // The device size recorded next is informational (LVM trusts the
    // device): a read of extents past the device's end fails there.
    let mut at = UUID_LEN + 8;
    let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            if at + 16 > ph.len() {
                return Err(corrupt(i, "PV header area lists run past the label sector"));
            }
            let (o, n) = (le_u64(ph, at), le_u64(ph, at + 8));
            at += 16;
            if o == 0 {
                break;
            }
            list.push((o, n));
        }
    }
    let [_data_areas, metadata_areas] = lists;
    let metadata = metadata_areas.into_iter().filter_map(|(o, n)| read_mda(dev, i, o, n).transpose()).collect();
    Ok(Some(PvOnDevice { uuid, metadata }))
}

/// The committed metadata of the metadata area at `start` (`size` bytes),
/// parsed; `Ok(None)` when the area holds none (an orphan PV) or is
/// ignored.
fn read_mda(dev: &dyn BlockDevice, i: usize, start: u64, size: u64) -> Result<Option<VgMeta>> {
    let where_ = |what: String| corrupt(i, format!("metadata area at {start}: {what}"));
    if size <= MDA_HEADER_SIZE || start.checked_add(size).is_none_or(|end| end > dev.size()) {
        return Err(where_(format!("size {size} does not fit the device ({} bytes)", dev.size())));
    }
    let mut h = [0u8; MDA_HEADER_SIZE as usize];
    dev.read_exact_at(start, &mut h)?;
    if &h[4..20] != MDA_MAGIC {
        return Err(where_("no metadata area header magic".into()));
    }
    let crc = lvm_crc(INITIAL_CRC, &h[4..]);
    if crc != le_u32(&h, 0) {
        return Err(where_(format!("header checksum {:#010x}, computed {crc:#010x}", le_u32(&h, 0))));
    }
    if le_u32(&h, 20) != MDA_VERSION {
        return Err(FsError::Unsupported {
            fs: FS,
            what: format!("device {i}: metadata area at {start}: version {}", le_u32(&h, 20)),
        });
    }
    if le_u64(&h, 24) != start || le_u64(&h, 32) != size {
        return Err(where_(format!("header says it starts at {} with {} bytes", le_u64(&h, 24), le_u64(&h, 32))));
    }
    let (off, len, sum, flags) = (le_u64(&h, 40), le_u64(&h, 48), le_u32(&h, 56), le_u32(&h, 60));
    if (off == 0 && len == 0) || flags & RAW_LOCN_IGNORED != 0 {
        return Ok(None);
    }
    if off < MDA_HEADER_SIZE || off >= size || len == 0 || len > size - MDA_HEADER_SIZE {
        return Err(where_(format!("metadata text of {len} bytes at {off} does not fit the area")));
    }
    if len > MAX_METADATA_TEXT {
        return Err(FsError::Limit(format!(
            "device {i}: metadata text of {len} bytes (at most {MAX_METADATA_TEXT} are read)"
        )));
    }
    let mut text = vec![0u8; len as usize];
    // The area past its header is a circular buffer.
    let first = len.min(size - off) as usize;
    dev.read_exact_at(start + off, &mut text[..first])?;
    if first < text.len() {
        dev.read_exact_at(start + MDA_HEADER_SIZE, &mut text[first..])?;
    }
    let crc = lvm_crc(INITIAL_CRC, &text);
    if crc != sum {
        return Err(where_(format!("metadata text checksum {sum:#010x}, computed {crc:#010x}")));
    }
    parse_vg(&text).map(Some).map_err(where_)
}

// ---------------------------------------------------------------------------
// Metadata text → volume group

/// A volume group as one metadata text describes it.
#[derive(Debug)]
struct VgMeta {
    name: String,
    uuid: String,
    seqno: u64,
    extent_size: u64,
    pvs: Vec<PvMeta>,
    lvs: Vec<LvMeta>,
}

#[derive(Debug)]
struct PvMeta {
    name: String,
    uuid: String,
    device_hint: Option<String>,
    pe_start: u64,
    pe_count: u64,
}

#[derive(Debug)]
struct LvMeta {
    name: String,
    uuid: String,
    visible: bool,
    /// The segments, or why they make no sense.
    segments: std::result::Result<Vec<SegMeta>, String>,
}

#[derive(Debug)]
struct SegMeta {
    start_extent: u64,
    extent_count: u64,
    kind: SegMetaKind,
}

#[derive(Debug)]
enum SegMetaKind {
    Striped {
        /// In sectors; 0 with one stripe.
        stripe_size: u64,
        /// PV name and first extent.
        stripes: Vec<(String, u64)>,
    },
    Other(String),
}

fn get_u64(s: &Section, key: &str, what: &str) -> std::result::Result<u64, String> {
    match s.value(key) {
        Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| format!("{what}: {key} = {n} is negative")),
        Some(_) => Err(format!("{what}: {key} is not an integer")),
        None => Err(format!("{what}: no {key}")),
    }
}

fn get_str<'a>(s: &'a Section, key: &str, what: &str) -> std::result::Result<&'a str, String> {
    match s.value(key) {
        Some(Value::Str(v)) => Ok(v),
        Some(_) => Err(format!("{what}: {key} is not a string")),
        None => Err(format!("{what}: no {key}")),
    }
}

fn has_flag(s: &Section, key: &str, flag: &str) -> bool {
    matches!(s.value(key), Some(Value::List(l)) if l.iter().any(|v| matches!(v, Value::Str(x) if x == flag)))
}

/// Parses a metadata text into a volume group. Errors are messages (the
/// caller says where the text came from).
fn parse_vg(text: &[u8]) -> std::result::Result<VgMeta, String> {
    let top = text::parse(text).map_err(|e| e.to_string())?;
    let mut vgs = top.sections();
    let Some((name, vg)) = vgs.next() else {
        return Err("metadata text holds no volume group".into());
    };
    if vgs.next().is_some() {
        return Err("metadata text holds more than one volume group".into());
    }
    let what = format!("volume group {name:?}");
    let uuid = get_str(vg, "id", &what)?.to_owned();
    let seqno = get_u64(vg, "seqno", &what)?;
    let extent_sectors = get_u64(vg, "extent_size", &what)?;
    let extent_size = extent_sectors
        .checked_mul(SECTOR)
        .filter(|&b| b > 0 && b <= 1 << 40)
        .ok_or_else(|| format!("{what}: extent_size {extent_sectors} sectors"))?;
    let mut pvs = Vec::new();
    if let Some(list) = vg.section("physical_volumes") {
        for (pv_name, pv) in list.sections() {
            let what = format!("{what}: physical volume {pv_name:?}");
            let pe_start_s = get_u64(pv, "pe_start", &what)?;
            let pe_count = get_u64(pv, "pe_count", &what)?;
            let pe_start =
                pe_start_s.checked_mul(SECTOR).ok_or_else(|| format!("{what}: pe_start {pe_start_s} sectors"))?;
            let end = pe_count
                .checked_mul(extent_size)
                .and_then(|b| b.checked_add(pe_start))
                .ok_or_else(|| format!("{what}: {pe_count} extents from {pe_start} overflow"))?;
            // dev_size is optional in old metadata; where present the
            // extents must lie within it.
            if let Ok(dev_sectors) = get_u64(pv, "dev_size", &what) {
                if dev_sectors.checked_mul(SECTOR).is_none_or(|size| end > size) {
                    return Err(format!(
                        "{what}: {pe_count} extents from byte {pe_start} run past the device ({dev_sectors} sectors)"
                    ));
                }
            }
            pvs.push(PvMeta {
                name: pv_name.to_owned(),
                uuid: get_str(pv, "id", &what)?.to_owned(),
                device_hint: get_str(pv, "device", &what).ok().map(str::to_owned),
                pe_start,
                pe_count,
            });
        }
    }
    let mut lvs = Vec::new();
    if let Some(list) = vg.section("logical_volumes") {
        for (lv_name, lv) in list.sections() {
            let what = format!("logical volume {lv_name:?}");
            lvs.push(LvMeta {
                name: lv_name.to_owned(),
                uuid: get_str(lv, "id", &what).unwrap_or_default().to_owned(),
                visible: has_flag(lv, "status", "VISIBLE"),
                segments: parse_segments(lv),
            });
        }
    }
    Ok(VgMeta { name: name.to_owned(), uuid, seqno, extent_size, pvs, lvs })
}

fn parse_segments(lv: &Section) -> std::result::Result<Vec<SegMeta>, String> {
    let mut segs = Vec::new();
    for (seg_name, seg) in lv.sections().filter(|(n, _)| n.starts_with("segment")) {
        let what = seg_name;
        let start_extent = get_u64(seg, "start_extent", what)?;
        let extent_count = get_u64(seg, "extent_count", what)?;
        let type_name = get_str(seg, "type", what)?;
        let kind = if type_name == "striped" || type_name == "linear" {
            let count =
                get_u64(seg, "stripe_count", what).or_else(|e| if type_name == "linear" { Ok(1) } else { Err(e) })?;
            if count == 0 || count > MAX_STRIPES as u64 {
                return Err(format!("{what}: stripe_count {count}"));
            }
            let Some(Value::List(list)) = seg.value("stripes") else {
                return Err(format!("{what}: no stripes list"));
            };
            if list.len() as u64 != 2 * count {
                return Err(format!("{what}: {} stripes listed, stripe_count {count}", list.len() / 2));
            }
            let mut stripes = Vec::with_capacity(count as usize);
            for pair in list.chunks_exact(2) {
                match pair {
                    [Value::Str(pv), Value::Int(e)] if *e >= 0 => stripes.push((pv.clone(), *e as u64)),
                    _ => return Err(format!("{what}: stripes must pair a PV name with a first extent")),
                }
            }
            let stripe_size = if count > 1 { get_u64(seg, "stripe_size", what)? } else { 0 };
            SegMetaKind::Striped { stripe_size, stripes }
        } else {
            SegMetaKind::Other(type_name.to_owned())
        };
        segs.push(SegMeta { start_extent, extent_count, kind });
    }
    if segs.is_empty() {
        return Err("no segments".into());
    }
    segs.sort_by_key(|s| s.start_extent);
    let mut next = 0u64;
    for s in &segs {
        if s.start_extent != next || s.extent_count == 0 {
            return Err(format!(
                "segments are not contiguous: one of {} extents starts at extent {}, expected {next}",
                s.extent_count, s.start_extent
            ));
        }
        next = next.checked_add(s.extent_count).ok_or_else(|| "extent counts overflow".to_owned())?;
    }
    Ok(segs)
}

fn strip_dashes(uuid: &str) -> String {
    uuid.chars().filter(|&c| c != '-').collect()
}

/// Builds the public volume group from its newest metadata and the
/// devices whose labels the scan found.
fn build_vg(meta: VgMeta, devices: &[Arc<dyn BlockDevice>], labels: &HashMap<String, usize>) -> Result<VolumeGroup> {
    let vg_what = format!("volume group {} ({})", meta.name, meta.uuid);
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    let mut pvs = Vec::with_capacity(meta.pvs.len());
    let mut slots = Vec::with_capacity(meta.pvs.len());
    let mut missing_pvs = Vec::new();
    for (k, p) in meta.pvs.iter().enumerate() {
        if by_name.insert(&p.name, k).is_some() {
            return Err(FsError::Corrupt {
                fs: FS,
                what: format!("{vg_what}: physical volume {:?} listed twice", p.name),
            });
        }
        let found = labels.get(&strip_dashes(&p.uuid)).copied();
        if found.is_none() {
            missing_pvs.push(p.uuid.clone());
        }
        slots.push(PvSlot { name: p.name.clone(), uuid: p.uuid.clone(), device: found.map(|d| devices[d].clone()) });
        pvs.push(PhysicalVolume {
            name: p.name.clone(),
            uuid: p.uuid.clone(),
            device_hint: p.device_hint.clone(),
            device: found,
            pe_start: p.pe_start,
            pe_count: p.pe_count,
        });
    }
    let slots: Arc<[PvSlot]> = slots.into();
    let lvs = meta
        .lvs
        .into_iter()
        .map(|lv| build_lv(lv, &meta.name, &meta.uuid, meta.extent_size, &meta.pvs, &by_name, &slots))
        .collect();
    Ok(VolumeGroup {
        name: meta.name,
        uuid: meta.uuid,
        name_collision: false,
        seqno: meta.seqno,
        extent_size: meta.extent_size,
        pvs,
        missing_pvs,
        lvs,
    })
}

fn build_lv(
    lv: LvMeta,
    vg_name: &str,
    vg_uuid: &str,
    extent_size: u64,
    pv_meta: &[PvMeta],
    by_name: &BTreeMap<&str, usize>,
    slots: &Arc<[PvSlot]>,
) -> LogicalVolume {
    let mut out = LogicalVolume {
        name: lv.name,
        uuid: lv.uuid,
        vg_name: vg_name.to_owned(),
        vg_uuid: vg_uuid.to_owned(),
        size: 0,
        visible: lv.visible,
        layout: String::new(),
        segments: Vec::new(),
        problem: None,
        map: Map::Corrupt(String::new()),
        pvs: slots.clone(),
    };
    match map_segments(lv.segments, extent_size, pv_meta, by_name) {
        Ok((segments, map)) => {
            out.size = segments.last().map_or(0, |s| s.start + s.len);
            out.layout = describe_layout(&segments);
            out.segments = segments;
            out.map = map;
        }
        Err(why) => {
            out.layout = "invalid".into();
            out.problem = Some(why.clone());
            out.map = Map::Corrupt(why);
        }
    }
    out
}

/// The public segments and the reader's map, every number checked.
fn map_segments(
    segments: std::result::Result<Vec<SegMeta>, String>,
    extent_size: u64,
    pv_meta: &[PvMeta],
    by_name: &BTreeMap<&str, usize>,
) -> std::result::Result<(Vec<Segment>, Map), String> {
    let segments = segments?;
    let mut public = Vec::with_capacity(segments.len());
    let mut map = Vec::with_capacity(segments.len());
    let mut unsupported = None;
    for s in segments {
        let bytes = |extents: u64| {
            extents.checked_mul(extent_size).ok_or_else(|| format!("{extents} extents of {extent_size} bytes overflow"))
        };
        let start = bytes(s.start_extent)?;
        let len = bytes(s.extent_count)?;
        start.checked_add(len).ok_or("the volume's size overflows")?;
        let kind = match s.kind {
            SegMetaKind::Other(type_name) => {
                unsupported.get_or_insert_with(|| type_name.clone());
                SegmentKind::Other { type_name }
            }
            SegMetaKind::Striped { stripe_size, stripes } => {
                let n = stripes.len() as u64;
                if s.extent_count % n != 0 {
                    return Err(format!("{} extents do not divide into {n} stripes", s.extent_count));
                }
                let area_extents = s.extent_count / n;
                let area_len = bytes(area_extents)?;
                let chunk = if n == 1 {
                    len
                } else {
                    let c = stripe_size
                        .checked_mul(SECTOR)
                        .filter(|&c| c > 0)
                        .ok_or_else(|| format!("stripe_size {stripe_size} sectors"))?;
                    if area_len % c != 0 {
                        return Err(format!("stripe areas of {area_len} bytes are not whole {c}-byte chunks"));
                    }
                    c
                };
                let mut pub_stripes = Vec::with_capacity(stripes.len());
                let mut map_stripes = Vec::with_capacity(stripes.len());
                for (pv_name, first) in stripes {
                    let &k = by_name
                        .get(pv_name.as_str())
                        .ok_or_else(|| format!("stripe on {pv_name:?}, which the volume group does not list"))?;
                    let pv = &pv_meta[k];
                    if first.checked_add(area_extents).is_none_or(|end| end > pv.pe_count) {
                        return Err(format!(
                            "extents {first}+{area_extents} of {pv_name} run past its {} extents",
                            pv.pe_count
                        ));
                    }
                    // Within pe_count, so within the checked data area.
                    let base = pv.pe_start + first * extent_size;
                    pub_stripes.push(Stripe {
                        pv_name: pv_name.clone(),
                        pv_uuid: pv.uuid.clone(),
                        start_extent: first,
                        extents: area_extents,
                    });
                    map_stripes.push(MapStripe { pv: k, base, len: area_len });
                }
                map.push(MapSeg { start, len, stripe_size: chunk, stripes: map_stripes });
                SegmentKind::Striped { stripe_size: if n == 1 { 0 } else { chunk }, stripes: pub_stripes }
            }
        };
        public.push(Segment { start, len, kind });
    }
    let map = match unsupported {
        Some(t) => Map::Unsupported(t),
        None => Map::Readable(map.into()),
    };
    Ok((public, map))
}

fn describe_layout(segments: &[Segment]) -> String {
    let one = |k: &SegmentKind| match k {
        SegmentKind::Striped { stripes, .. } if stripes.len() == 1 => "linear".to_owned(),
        SegmentKind::Striped { stripe_size, stripes } if stripe_size % 1024 == 0 => {
            format!("striped ({} stripes of {} KiB)", stripes.len(), stripe_size / 1024)
        }
        SegmentKind::Striped { stripe_size, stripes } => {
            format!("striped ({} stripes of {stripe_size} bytes)", stripes.len())
        }
        SegmentKind::Other { type_name } => format!("{type_name} (not readable)"),
    };
    let mut kinds: Vec<String> = segments.iter().map(|s| one(&s.kind)).collect();
    kinds.dedup();
    let mut out = kinds.join(" + ");
    if segments.len() > 1 {
        out.push_str(&format!(", {} segments", segments.len()));
    }
    out
}

// ---------------------------------------------------------------------------
// Fuzzing

/// A device in memory, for the fuzz body.
struct MemDevice(Vec<u8>);

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(buf.len())?))
            .filter(|r| r.end <= self.0.len());
        match range {
            Some(r) => {
                buf.copy_from_slice(&self.0[r]);
                Ok(())
            }
            None => Err(FsError::OutOfRange {
                device: "fuzz device".into(),
                offset,
                len: buf.len() as u64,
                size: self.size(),
            }),
        }
    }
}

/// A physical volume image in memory holding `text` as its committed
/// metadata, with a valid label, PV header and metadata area header, so
/// that the fuzzer reaches the metadata parser and the volume reader
/// without having to find checksums.
fn fuzz_pv_image(uuid: &str, text: &[u8]) -> Vec<u8> {
    let mut id: Vec<u8> =
        strip_dashes(uuid).bytes().map(|b| if b.is_ascii_alphanumeric() { b } else { b'x' }).take(UUID_LEN).collect();
    id.resize(UUID_LEN, b'0');
    let mda_start = 4096u64;
    let mda_size = (MDA_HEADER_SIZE + text.len() as u64).div_ceil(SECTOR) * SECTOR;
    let data_start = mda_start + mda_size;
    let mut img = vec![0u8; (data_start + (64 << 10)) as usize];
    let size = img.len() as u64;
    let s = &mut img[512..1024];
    s[..8].copy_from_slice(LABEL_ID);
    s[8..16].copy_from_slice(&1u64.to_le_bytes());
    s[20..24].copy_from_slice(&32u32.to_le_bytes());
    s[24..32].copy_from_slice(LABEL_TYPE);
    s[32..64].copy_from_slice(&id);
    for (k, v) in [size, data_start, 0, 0, 0, mda_start, mda_size, 0, 0].into_iter().enumerate() {
        s[64 + 8 * k..72 + 8 * k].copy_from_slice(&v.to_le_bytes());
    }
    let crc = lvm_crc(INITIAL_CRC, &s[20..]);
    s[16..20].copy_from_slice(&crc.to_le_bytes());
    let m = mda_start as usize;
    img[m + 512..m + 512 + text.len()].copy_from_slice(text);
    let text_crc = lvm_crc(INITIAL_CRC, text);
    let h = &mut img[m..m + 512];
    h[4..20].copy_from_slice(MDA_MAGIC);
    h[20..24].copy_from_slice(&MDA_VERSION.to_le_bytes());
    h[24..32].copy_from_slice(&mda_start.to_le_bytes());
    h[32..40].copy_from_slice(&mda_size.to_le_bytes());
    let (off, len) = if text.is_empty() { (0, 0) } else { (MDA_HEADER_SIZE, text.len() as u64) };
    h[40..48].copy_from_slice(&off.to_le_bytes());
    h[48..56].copy_from_slice(&len.to_le_bytes());
    h[56..60].copy_from_slice(&text_crc.to_le_bytes());
    let crc = lvm_crc(INITIAL_CRC, &h[4..]);
    h[..4].copy_from_slice(&crc.to_le_bytes());
    img
}

/// The body of the `lvm` fuzz target. The first byte picks the mode: even,
/// the rest is one device image (labels, headers, metadata areas); odd,
/// the rest is a metadata text, served from valid physical volumes (one
/// per PV the text lists, up to four, carrying that PV's uuid). Every
/// logical volume found is then read at its start, middle and end.
/// Nothing may panic, hang or allocate beyond the input's size and the
/// crate's limits.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut devices: Vec<Arc<dyn BlockDevice>> = Vec::new();
    if mode & 1 == 0 {
        devices.push(Arc::new(MemDevice(rest.to_vec())));
    } else {
        let uuids: Vec<String> = match parse_vg(rest) {
            Ok(vg) => vg.pvs.into_iter().take(4).map(|p| p.uuid).collect(),
            Err(_) => Vec::new(),
        };
        if uuids.is_empty() {
            devices.push(Arc::new(MemDevice(fuzz_pv_image("fuzz", rest))));
        }
        for u in uuids {
            devices.push(Arc::new(MemDevice(fuzz_pv_image(&u, rest))));
        }
    }
    let found = scan_report(&devices);
    let mut buf = [0u8; 4096];
    for vg in found.volume_groups.iter().take(4) {
        for lv in vg.lvs.iter().take(16) {
            let Ok(dev) = lv.device() else { continue };
            let size = dev.size();
            for off in [0, size / 2, size.saturating_sub(4096)] {
                let n = (size - off).min(4096) as usize;
                let _ = dev.read_exact_at(off, &mut buf[..n]);
            }
            let _ = dev.read_exact_at(size, &mut buf[..1]);
        }
    }
}
