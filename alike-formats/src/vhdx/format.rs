//! On-disk structures of MS-VHDX: decoding from and encoding to byte
//! buffers, with no I/O. All integers are little-endian; GUIDs are stored
//! in Microsoft's mixed-endian layout.

use std::fmt;
use std::path::Path;

use super::error::{Result, VhdxError};

pub(crate) const KIB: u64 = 1024;
pub(crate) const MIB: u64 = 1024 * 1024;

pub(crate) const FILE_ID_SIG: &[u8; 8] = b"vhdxfile";
pub(crate) const HEADER_SIG: &[u8; 4] = b"head";
pub(crate) const REGION_SIG: &[u8; 4] = b"regi";
pub(crate) const METADATA_SIG: &[u8; 8] = b"metadata";

pub(crate) const HEADER1_OFFSET: u64 = 64 * KIB;
pub(crate) const HEADER2_OFFSET: u64 = 128 * KIB;
pub(crate) const REGION1_OFFSET: u64 = 192 * KIB;
pub(crate) const REGION2_OFFSET: u64 = 256 * KIB;
pub(crate) const HEADER_SIZE: usize = 4096;
pub(crate) const REGION_TABLE_SIZE: usize = 64 * 1024;
pub(crate) const METADATA_TABLE_SIZE: usize = 64 * 1024;
pub(crate) const MAX_TABLE_ENTRIES: u32 = 2047;
/// Largest virtual disk the specification allows (64 TiB).
pub(crate) const MAX_VIRTUAL_SIZE: u64 = 64 * 1024 * 1024 * MIB;
/// Sectors described by one 1 MiB sector bitmap block.
pub(crate) const SECTORS_PER_BITMAP_BLOCK: u64 = 1 << 23;

// Payload BAT entry states.
pub(crate) const PAYLOAD_NOT_PRESENT: u64 = 0;
pub(crate) const PAYLOAD_UNDEFINED: u64 = 1;
pub(crate) const PAYLOAD_ZERO: u64 = 2;
pub(crate) const PAYLOAD_UNMAPPED: u64 = 3;
/// The 0.95 draft's value for UNMAPPED; qemu accepts it, so do we.
pub(crate) const PAYLOAD_UNMAPPED_V095: u64 = 5;
pub(crate) const PAYLOAD_FULLY_PRESENT: u64 = 6;
pub(crate) const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;
// Sector bitmap BAT entry states.
pub(crate) const SB_NOT_PRESENT: u64 = 0;
pub(crate) const SB_PRESENT: u64 = 6;
pub(crate) const BAT_STATE_MASK: u64 = 7;
pub(crate) const BAT_OFFSET_MASK: u64 = !(MIB - 1);

pub(crate) const FLAG_LEAVE_BLOCKS_ALLOCATED: u32 = 1;
pub(crate) const FLAG_HAS_PARENT: u32 = 2;
pub(crate) const META_IS_USER: u32 = 1;
pub(crate) const META_IS_VIRTUAL_DISK: u32 = 2;
pub(crate) const META_IS_REQUIRED: u32 = 4;

/// A GUID as VHDX stores it: `u32`, `u16`, `u16` little-endian, then 8 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID.
    pub const ZERO: Guid = Guid([0; 16]);

    /// Builds a GUID from its textual fields (`data1-data2-data3-data4`).
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7]])
    }

    /// A fresh random (version 4) GUID.
    ///
    /// # Errors
    /// When the operating system's random source fails (the workspace's
    /// policy: an error, never a panic or a weaker source).
    pub fn random() -> alike_core::Result<Guid> {
        let mut b = [0u8; 16];
        alike_core::random_bytes(&mut b)?;
        b[7] = (b[7] & 0x0f) | 0x40; // data3 high nibble = version 4 (stored LE)
        b[8] = (b[8] & 0x3f) | 0x80; // variant 10b
        Ok(Guid(b))
    }

    /// Whether all bytes are zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}` (braces optional, any case).
    pub fn parse(s: &str) -> Option<Guid> {
        let s = s.trim();
        let s = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')).unwrap_or(s);
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() != 5
            || [8, 4, 4, 4, 12] != [parts[0].len(), parts[1].len(), parts[2].len(), parts[3].len(), parts[4].len()]
        {
            return None;
        }
        let d1 = u32::from_str_radix(parts[0], 16).ok()?;
        let d2 = u16::from_str_radix(parts[1], 16).ok()?;
        let d3 = u16::from_str_radix(parts[2], 16).ok()?;
        let mut d4 = [0u8; 8];
        let tail = format!("{}{}", parts[3], parts[4]);
        for (i, b) in d4.iter_mut().enumerate() {
            *b = u8::from_str_radix(tail.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(Guid::from_fields(d1, d2, d3, d4))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

pub(crate) const BAT_REGION: Guid =
    Guid::from_fields(0x2DC2_7766, 0xF623, 0x4200, [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08]);
pub(crate) const METADATA_REGION: Guid =
    Guid::from_fields(0x8B7C_A206, 0x4790, 0x4B9A, [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E]);
pub(crate) const FILE_PARAMETERS: Guid =
    Guid::from_fields(0xCAA1_6737, 0xFA36, 0x4D43, [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B]);
pub(crate) const VIRTUAL_DISK_SIZE: Guid =
    Guid::from_fields(0x2FA5_4224, 0xCD1B, 0x4876, [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8]);
pub(crate) const PAGE83_DATA: Guid =
    Guid::from_fields(0xBECA_12AB, 0xB2E6, 0x4523, [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46]);
pub(crate) const LOGICAL_SECTOR_SIZE: Guid =
    Guid::from_fields(0x8141_BF1D, 0xA96F, 0x4709, [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F]);
pub(crate) const PHYSICAL_SECTOR_SIZE: Guid =
    Guid::from_fields(0xCDA3_48C7, 0x445D, 0x4471, [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56]);
pub(crate) const PARENT_LOCATOR: Guid =
    Guid::from_fields(0xA8D3_5F2D, 0xB30B, 0x454D, [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C]);
pub(crate) const VHDX_PARENT_LOCATOR_TYPE: Guid =
    Guid::from_fields(0xB04A_EFB7, 0xD19E, 0x4A81, [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13]);

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
pub(crate) fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    Guid(g)
}

/// CRC-32C of `buf` with the 4 bytes at `field` taken as zero.
pub(crate) fn crc_with_zeroed(buf: &[u8], field: usize) -> u32 {
    let c = crc32c::crc32c(&buf[..field]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &buf[field + 4..])
}

/// Stores the CRC-32C of `buf` (checksum field at `field` zeroed) in that field.
pub(crate) fn seal(buf: &mut [u8], field: usize) {
    buf[field..field + 4].copy_from_slice(&[0; 4]);
    let c = crc32c::crc32c(buf);
    buf[field..field + 4].copy_from_slice(&c.to_le_bytes());
}

pub(crate) fn malformed(file: &Path, what: &'static str, offset: u64, reason: impl Into<String>) -> VhdxError {
    VhdxError::Malformed { file: file.to_owned(), what, offset, reason: reason.into() }
}

/// One of the two headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) sequence: u64,
    pub(crate) file_write_guid: Guid,
    pub(crate) data_write_guid: Guid,
    pub(crate) log_guid: Guid,
    pub(crate) log_version: u16,
    pub(crate) version: u16,
    pub(crate) log_length: u32,
    pub(crate) log_offset: u64,
}

impl Header {
    /// Decodes a 4 KiB header, checking signature and checksum; the error is
    /// a reason for messages.
    pub(crate) fn decode(b: &[u8]) -> std::result::Result<Header, String> {
        if b.len() < HEADER_SIZE {
            return Err("truncated".into());
        }
        let b = &b[..HEADER_SIZE];
        if &b[..4] != HEADER_SIG {
            return Err(format!("bad signature {:?}", String::from_utf8_lossy(&b[..4])));
        }
        let stored = le32(b, 4);
        let computed = crc_with_zeroed(b, 4);
        if stored != computed {
            return Err(format!("CRC-32C mismatch (stored {stored:#010x}, computed {computed:#010x})"));
        }
        Ok(Header {
            sequence: le64(b, 8),
            file_write_guid: guid_at(b, 16),
            data_write_guid: guid_at(b, 32),
            log_guid: guid_at(b, 48),
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[..4].copy_from_slice(HEADER_SIG);
        b[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        b[16..32].copy_from_slice(&self.file_write_guid.0);
        b[32..48].copy_from_slice(&self.data_write_guid.0);
        b[48..64].copy_from_slice(&self.log_guid.0);
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        seal(&mut b, 4);
        b
    }
}

/// A region table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub(crate) guid: Guid,
    pub(crate) offset: u64,
    pub(crate) length: u32,
    pub(crate) required: bool,
}

/// Decodes a 64 KiB region table at `at`, checking signature, checksum and
/// entry bounds; returns the BAT and metadata regions.
pub(crate) fn decode_region_table(
    file: &Path,
    what: &'static str,
    at: u64,
    b: &[u8],
    file_len: u64,
) -> Result<(Region, Region)> {
    if b.len() < REGION_TABLE_SIZE {
        return Err(malformed(file, what, at, "truncated"));
    }
    let b = &b[..REGION_TABLE_SIZE];
    if &b[..4] != REGION_SIG {
        return Err(malformed(file, what, at, format!("bad signature {:?}", String::from_utf8_lossy(&b[..4]))));
    }
    let stored = le32(b, 4);
    let computed = crc_with_zeroed(b, 4);
    if stored != computed {
        return Err(VhdxError::Checksum { file: file.to_owned(), what, offset: at, stored, computed });
    }
    let count = le32(b, 8);
    if count > MAX_TABLE_ENTRIES {
        return Err(malformed(file, what, at + 8, format!("{count} entries (at most {MAX_TABLE_ENTRIES} allowed)")));
    }
    let (mut bat, mut meta) = (None, None);
    for i in 0..count as usize {
        let e = 16 + i * 32;
        let r = Region {
            guid: guid_at(b, e),
            offset: le64(b, e + 16),
            length: le32(b, e + 24),
            required: le32(b, e + 28) & 1 != 0,
        };
        let eoff = at + e as u64;
        let slot = if r.guid == BAT_REGION {
            &mut bat
        } else if r.guid == METADATA_REGION {
            &mut meta
        } else if r.required {
            return Err(VhdxError::UnknownRequiredRegion { file: file.to_owned(), guid: r.guid });
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(malformed(file, what, eoff, format!("region {} listed twice", r.guid)));
        }
        if r.offset < MIB || r.offset % MIB != 0 || u64::from(r.length) % MIB != 0 || r.length == 0 {
            return Err(malformed(
                file,
                what,
                eoff,
                format!(
                    "region {} at {} length {} is not 1 MiB aligned (or inside the header section)",
                    r.guid, r.offset, r.length
                ),
            ));
        }
        if r.offset.checked_add(u64::from(r.length)).is_none_or(|end| end > file_len) {
            return Err(malformed(
                file,
                what,
                eoff,
                format!(
                    "region {} ({} bytes at {}) extends past the end of the file ({file_len} bytes)",
                    r.guid, r.length, r.offset
                ),
            ));
        }
        *slot = Some(r);
    }
    match (bat, meta) {
        (Some(b), Some(m)) => {
            let overlap = b.offset < m.offset + u64::from(m.length) && m.offset < b.offset + u64::from(b.length);
            if overlap {
                return Err(malformed(file, what, at, "BAT and metadata regions overlap"));
            }
            Ok((b, m))
        }
        (None, _) => Err(malformed(file, what, at, "no BAT region")),
        (_, None) => Err(malformed(file, what, at, "no metadata region")),
    }
}

/// Encodes a region table holding the BAT and metadata regions.
pub(crate) fn encode_region_table(regions: &[Region]) -> Vec<u8> {
    let mut b = vec![0u8; REGION_TABLE_SIZE];
    b[..4].copy_from_slice(REGION_SIG);
    b[8..12].copy_from_slice(&(regions.len() as u32).to_le_bytes());
    for (i, r) in regions.iter().enumerate() {
        let e = 16 + i * 32;
        b[e..e + 16].copy_from_slice(&r.guid.0);
        b[e + 16..e + 24].copy_from_slice(&r.offset.to_le_bytes());
        b[e + 24..e + 28].copy_from_slice(&r.length.to_le_bytes());
        b[e + 28..e + 32].copy_from_slice(&u32::from(r.required).to_le_bytes());
    }
    seal(&mut b, 4);
    b
}

/// A metadata table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MetaEntry {
    pub(crate) guid: Guid,
    pub(crate) offset: u32,
    pub(crate) length: u32,
    pub(crate) flags: u32,
}

/// Decodes the 64 KiB metadata table (no checksum: the spec has none for it).
pub(crate) fn decode_metadata_table(file: &Path, at: u64, b: &[u8], region_len: u32) -> Result<Vec<MetaEntry>> {
    const WHAT: &str = "metadata table";
    if b.len() < METADATA_TABLE_SIZE {
        return Err(malformed(file, WHAT, at, "truncated"));
    }
    if &b[..8] != METADATA_SIG {
        return Err(malformed(file, WHAT, at, format!("bad signature {:?}", String::from_utf8_lossy(&b[..8]))));
    }
    let count = u32::from(le16(b, 10));
    if count > MAX_TABLE_ENTRIES {
        return Err(malformed(file, WHAT, at + 10, format!("{count} entries (at most {MAX_TABLE_ENTRIES} allowed)")));
    }
    let mut out: Vec<MetaEntry> = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let e = 32 + i * 32;
        let m =
            MetaEntry { guid: guid_at(b, e), offset: le32(b, e + 16), length: le32(b, e + 20), flags: le32(b, e + 24) };
        let eoff = at + e as u64;
        if m.length > MIB as u32 {
            return Err(malformed(
                file,
                WHAT,
                eoff,
                format!("item {} is {} bytes (at most 1 MiB allowed)", m.guid, m.length),
            ));
        }
        if m.length == 0 {
            if m.offset != 0 {
                return Err(malformed(
                    file,
                    WHAT,
                    eoff,
                    format!("item {} has length 0 but offset {}", m.guid, m.offset),
                ));
            }
        } else if (m.offset as usize) < METADATA_TABLE_SIZE
            || u64::from(m.offset) + u64::from(m.length) > u64::from(region_len)
        {
            return Err(malformed(
                file,
                WHAT,
                eoff,
                format!(
                    "item {} ({} bytes at {}) is not inside the metadata region after its table",
                    m.guid, m.length, m.offset
                ),
            ));
        }
        if out.iter().any(|o| o.guid == m.guid && (o.flags & META_IS_USER) == (m.flags & META_IS_USER)) {
            return Err(malformed(file, WHAT, eoff, format!("item {} listed twice", m.guid)));
        }
        out.push(m);
    }
    Ok(out)
}

/// Encodes a metadata table for `entries`.
pub(crate) fn encode_metadata_table(entries: &[MetaEntry]) -> Vec<u8> {
    let mut b = vec![0u8; METADATA_TABLE_SIZE];
    b[..8].copy_from_slice(METADATA_SIG);
    b[10..12].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    for (i, m) in entries.iter().enumerate() {
        let e = 32 + i * 32;
        b[e..e + 16].copy_from_slice(&m.guid.0);
        b[e + 16..e + 20].copy_from_slice(&m.offset.to_le_bytes());
        b[e + 20..e + 24].copy_from_slice(&m.length.to_le_bytes());
        b[e + 24..e + 28].copy_from_slice(&m.flags.to_le_bytes());
    }
    b
}

/// The key/value pairs of a VHDX parent locator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParentLocator {
    /// Key/value pairs in file order (`parent_linkage`, `relative_path`…).
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn utf16(b: &[u8]) -> Option<String> {
    if b.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    String::from_utf16(&units).ok()
}

/// Decodes a parent locator item.
pub(crate) fn decode_parent_locator(file: &Path, at: u64, b: &[u8]) -> Result<ParentLocator> {
    const WHAT: &str = "parent locator";
    if b.len() < 20 {
        return Err(malformed(file, WHAT, at, "shorter than its 20-byte header"));
    }
    let kind = guid_at(b, 0);
    if kind != VHDX_PARENT_LOCATOR_TYPE {
        return Err(malformed(
            file,
            WHAT,
            at,
            format!("unsupported locator type {kind} (only VHDX parents are supported)"),
        ));
    }
    let count = usize::from(le16(b, 18));
    if 20 + count * 12 > b.len() {
        return Err(malformed(file, WHAT, at + 18, format!("{count} entries do not fit in {} bytes", b.len())));
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let e = 20 + i * 12;
        let (ko, vo) = (le32(b, e) as usize, le32(b, e + 4) as usize);
        let (kl, vl) = (usize::from(le16(b, e + 8)), usize::from(le16(b, e + 10)));
        let key = b.get(ko..ko.saturating_add(kl)).filter(|_| kl > 0).and_then(utf16);
        let val = b.get(vo..vo.saturating_add(vl)).filter(|_| vl > 0).and_then(utf16);
        match (key, val) {
            (Some(k), Some(v)) => {
                if entries.iter().any(|(ek, _): &(String, String)| *ek == k) {
                    return Err(malformed(file, WHAT, at + e as u64, format!("key {k:?} listed twice")));
                }
                entries.push((k, v));
            }
            _ => {
                return Err(malformed(
                    file,
                    WHAT,
                    at + e as u64,
                    format!("entry {i}: key/value out of bounds, empty or not UTF-16"),
                ));
            }
        }
    }
    Ok(ParentLocator { entries })
}

/// Encodes a VHDX parent locator item.
pub(crate) fn encode_parent_locator(entries: &[(&str, String)]) -> Vec<u8> {
    let mut b = vec![0u8; 20 + entries.len() * 12];
    b[..16].copy_from_slice(&VHDX_PARENT_LOCATOR_TYPE.0);
    b[18..20].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    for (i, (k, v)) in entries.iter().enumerate() {
        let kb: Vec<u8> = k.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let vb: Vec<u8> = v.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let e = 20 + i * 12;
        let ko = b.len();
        b.extend_from_slice(&kb);
        let vo = b.len();
        b.extend_from_slice(&vb);
        b[e..e + 4].copy_from_slice(&(ko as u32).to_le_bytes());
        b[e + 4..e + 8].copy_from_slice(&(vo as u32).to_le_bytes());
        b[e + 8..e + 10].copy_from_slice(&(kb.len() as u16).to_le_bytes());
        b[e + 10..e + 12].copy_from_slice(&(vb.len() as u16).to_le_bytes());
    }
    b
}

/// Geometry derived from the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) block_size: u64,
    pub(crate) logical_sector: u64,
    pub(crate) virtual_size: u64,
    pub(crate) has_parent: bool,
}

impl Geometry {
    /// Payload blocks per sector bitmap block.
    pub(crate) fn chunk_ratio(&self) -> u64 {
        SECTORS_PER_BITMAP_BLOCK * self.logical_sector / self.block_size
    }
    pub(crate) fn data_blocks(&self) -> u64 {
        self.virtual_size.div_ceil(self.block_size)
    }
    /// BAT entries the file must hold (MS-VHDX 2.5).
    pub(crate) fn bat_entries(&self) -> u64 {
        let db = self.data_blocks();
        let cr = self.chunk_ratio();
        if self.has_parent {
            db.div_ceil(cr) * (cr + 1)
        } else if db == 0 {
            0
        } else {
            db + (db - 1) / cr
        }
    }
    pub(crate) fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio()
    }
    pub(crate) fn bitmap_index(&self, chunk: u64) -> u64 {
        chunk * (self.chunk_ratio() + 1) + self.chunk_ratio()
    }
    pub(crate) fn sectors_per_block(&self) -> u64 {
        self.block_size / self.logical_sector
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_round_trip_and_layout() {
        // The BAT region GUID's first bytes are data1 little-endian.
        assert_eq!(&BAT_REGION.0[..4], &[0x66, 0x77, 0xC2, 0x2D]);
        assert_eq!(BAT_REGION.to_string(), "2dc27766-f623-4200-9d64-115e9bfd4a08");
        assert_eq!(Guid::parse("{2DC27766-F623-4200-9D64-115E9BFD4A08}"), Some(BAT_REGION));
        assert_eq!(Guid::parse("nope"), None);
        let r = Guid::random().unwrap();
        assert_eq!(Guid::parse(&format!("{{{r}}}")), Some(r));
    }

    #[test]
    fn header_round_trip_and_crc() {
        let h = Header {
            sequence: 7,
            file_write_guid: Guid::random().unwrap(),
            data_write_guid: Guid::random().unwrap(),
            log_guid: Guid::ZERO,
            log_version: 0,
            version: 1,
            log_length: MIB as u32,
            log_offset: MIB,
        };
        let mut b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);
        b[100] ^= 1;
        assert!(Header::decode(&b).unwrap_err().contains("CRC"));
    }

    #[test]
    fn bat_geometry_matches_spec_formulas() {
        let g = Geometry { block_size: 32 * MIB, logical_sector: 512, virtual_size: 64 << 30, has_parent: false };
        assert_eq!(g.chunk_ratio(), 128);
        assert_eq!(g.data_blocks(), 2048);
        assert_eq!(g.bat_entries(), 2048 + 2047 / 128);
        assert_eq!(g.payload_index(128), 129);
        let d = Geometry { has_parent: true, ..g };
        assert_eq!(d.bat_entries(), 16 * 129);
        assert_eq!(d.bitmap_index(0), 128);
    }

    #[test]
    fn parent_locator_round_trip() {
        let b = encode_parent_locator(&[("parent_linkage", "{x}".into()), ("relative_path", "a\\b.vhdx".into())]);
        let l = decode_parent_locator(Path::new("f"), 0, &b).unwrap();
        assert_eq!(l.get("relative_path"), Some("a\\b.vhdx"));
        assert_eq!(l.entries.len(), 2);
    }
}
