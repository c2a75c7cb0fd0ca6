//! The VHD on-disk structures: footer, dynamic disk header, parent locators,
//! checksums, CHS geometry and time stamps. Pure functions on byte buffers;
//! no I/O. All integers are big-endian.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::{Result, VhdError};

/// Bytes per sector; every VHD offset and size is counted in these.
pub(crate) const SECTOR: u64 = 512;
/// Size of the footer (and of its copy at offset 0).
pub(crate) const FOOTER_SIZE: usize = 512;
/// Size of the dynamic disk header.
pub(crate) const HEADER_SIZE: usize = 1024;
/// A BAT entry for a block with no data in this file.
pub(crate) const UNALLOCATED: u32 = u32::MAX;
/// Footer cookie.
pub(crate) const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// Dynamic disk header cookie.
pub(crate) const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
/// File format / header version 1.0.
pub(crate) const VERSION_1: u32 = 0x0001_0000;
/// Smallest block size accepted.
pub(crate) const MIN_BLOCK_SIZE: u64 = 512;
/// Largest block size accepted (keeps one block's buffer and bitmap bounded).
pub(crate) const MAX_BLOCK_SIZE: u64 = 1 << 28;
/// Most blocks (BAT entries in use) accepted: a 64 MiB BAT, 32 TiB at 2 MiB blocks.
pub(crate) const MAX_BLOCKS: u64 = 1 << 24;
/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC, the VHD epoch.
const VHD_EPOCH: u64 = 946_684_800;

/// Platform code of a Windows absolute path in UTF-16LE.
pub(crate) const PLAT_W2KU: u32 = u32::from_be_bytes(*b"W2ku");
/// Platform code of a Windows relative path in UTF-16LE.
pub(crate) const PLAT_W2RU: u32 = u32::from_be_bytes(*b"W2ru");
/// Platform code of a file URL in UTF-8 (XAPI, blktap).
pub(crate) const PLAT_MACX: u32 = u32::from_be_bytes(*b"MacX");

/// The kind of a VHD file, from its footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskType {
    /// Type 2: the data, then a footer.
    Fixed,
    /// Type 3: blocks allocated on first write, listed in a BAT.
    Dynamic,
    /// Type 4: like dynamic, sectors not in this file come from a parent.
    Differencing,
}

impl DiskType {
    pub(crate) fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }
    pub(crate) fn from_code(code: u32) -> Option<DiskType> {
        match code {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// One's complement of the byte sum of `b`, the 4 bytes at `field` counted as zero.
pub(crate) fn checksum(b: &[u8], field: usize) -> u32 {
    let sum = b.iter().enumerate().filter(|(i, _)| !(field..field + 4).contains(i)).map(|(_, &x)| u32::from(x));
    !sum.fold(0u32, u32::wrapping_add)
}

/// Printable form of a cookie for messages.
pub(crate) fn escape(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// Hex of a unique id, for messages.
pub(crate) fn uuid_hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hard disk footer (512 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Footer {
    pub(crate) features: u32,
    pub(crate) version: u32,
    /// Offset of the dynamic header; all ones for fixed disks.
    pub(crate) data_offset: u64,
    pub(crate) timestamp: u32,
    pub(crate) creator_app: [u8; 4],
    pub(crate) creator_version: u32,
    pub(crate) creator_os: u32,
    pub(crate) original_size: u64,
    /// The virtual size: what we read as the truth (not the CHS geometry).
    pub(crate) current_size: u64,
    pub(crate) cylinders: u16,
    pub(crate) heads: u8,
    pub(crate) sectors_per_track: u8,
    pub(crate) disk_type: u32,
    pub(crate) unique_id: [u8; 16],
    pub(crate) saved_state: u8,
}

impl Footer {
    /// Parses and verifies (cookie, checksum, major version) a footer found
    /// at `offset` of `file`. The disk type is checked by the caller.
    pub(crate) fn decode(b: &[u8], file: &str, offset: u64) -> Result<Footer> {
        if b.len() < FOOTER_SIZE {
            return Err(VhdError::Malformed {
                file: file.to_owned(),
                offset,
                reason: "footer shorter than 512 bytes".into(),
            });
        }
        let b = &b[..FOOTER_SIZE];
        if &b[..8] != FOOTER_COOKIE {
            return Err(VhdError::BadCookie {
                file: file.to_owned(),
                what: "footer",
                offset,
                found: escape(&b[..8]),
                expected: "conectix",
            });
        }
        let stored = be32(b, 64);
        let computed = checksum(b, 64);
        if stored != computed {
            return Err(VhdError::Checksum { file: file.to_owned(), what: "footer", offset, stored, computed });
        }
        let version = be32(b, 12);
        if version >> 16 != 1 {
            return Err(VhdError::UnsupportedVersion { file: file.to_owned(), what: "footer", version });
        }
        let mut creator_app = [0u8; 4];
        creator_app.copy_from_slice(&b[28..32]);
        let mut unique_id = [0u8; 16];
        unique_id.copy_from_slice(&b[68..84]);
        Ok(Footer {
            features: be32(b, 8),
            version,
            data_offset: be64(b, 16),
            timestamp: be32(b, 24),
            creator_app,
            creator_version: be32(b, 32),
            creator_os: be32(b, 36),
            original_size: be64(b, 40),
            current_size: be64(b, 48),
            cylinders: be16(b, 56),
            heads: b[58],
            sectors_per_track: b[59],
            disk_type: be32(b, 60),
            unique_id,
            saved_state: b[84],
        })
    }

    /// The 512 bytes of this footer, checksum computed.
    pub(crate) fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[..8].copy_from_slice(FOOTER_COOKIE);
        put32(&mut b, 8, self.features);
        put32(&mut b, 12, self.version);
        put64(&mut b, 16, self.data_offset);
        put32(&mut b, 24, self.timestamp);
        b[28..32].copy_from_slice(&self.creator_app);
        put32(&mut b, 32, self.creator_version);
        put32(&mut b, 36, self.creator_os);
        put64(&mut b, 40, self.original_size);
        put64(&mut b, 48, self.current_size);
        put16(&mut b, 56, self.cylinders);
        b[58] = self.heads;
        b[59] = self.sectors_per_track;
        put32(&mut b, 60, self.disk_type);
        b[68..84].copy_from_slice(&self.unique_id);
        b[84] = self.saved_state;
        let c = checksum(&b, 64);
        put32(&mut b, 64, c);
        b
    }

    /// A footer as we write it: features "reserved" bit set, version 1.0,
    /// creator `alik`, host OS `Wi2k`, CHS geometry from the size.
    pub(crate) fn new(disk_type: DiskType, size: u64, data_offset: u64, unique_id: [u8; 16], timestamp: u32) -> Footer {
        let (cylinders, heads, sectors_per_track) = chs(size / SECTOR);
        Footer {
            features: 2,
            version: VERSION_1,
            data_offset,
            timestamp,
            // Our own creator: qemu (since 10.0), Hyper-V and XenServer then size the disk by
            // `current_size`; only "vpc " and "qemu" creators make qemu use CHS geometry.
            creator_app: *b"alik",
            creator_version: 0x0001_0000,
            creator_os: u32::from_be_bytes(*b"Wi2k"),
            original_size: size,
            current_size: size,
            cylinders,
            heads,
            sectors_per_track,
            disk_type: disk_type.code(),
            unique_id,
            saved_state: 0,
        }
    }
}

/// One parent locator entry of the dynamic header (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Locator {
    pub(crate) code: u32,
    /// Space reserved for the data. The spec says sectors, Windows writes
    /// bytes; we only read `length`, and write bytes (a multiple of 512,
    /// which readers that guess, like libvhd, take as bytes).
    pub(crate) space: u32,
    pub(crate) length: u32,
    pub(crate) offset: u64,
}

/// The dynamic disk header (1024 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DynHeader {
    pub(crate) table_offset: u64,
    pub(crate) version: u32,
    pub(crate) max_table_entries: u32,
    pub(crate) block_size: u32,
    pub(crate) parent_unique_id: [u8; 16],
    pub(crate) parent_timestamp: u32,
    /// Parent's file name, UTF-16 big-endian, NUL padded (raw).
    pub(crate) parent_name: [u8; 512],
    pub(crate) locators: [Locator; 8],
}

impl DynHeader {
    /// Parses and verifies (cookie, checksum, version, block size) a header at `offset` of `file`.
    pub(crate) fn decode(b: &[u8], file: &str, offset: u64) -> Result<DynHeader> {
        if b.len() < HEADER_SIZE {
            return Err(VhdError::Malformed {
                file: file.to_owned(),
                offset,
                reason: "header shorter than 1024 bytes".into(),
            });
        }
        let b = &b[..HEADER_SIZE];
        if &b[..8] != HEADER_COOKIE {
            return Err(VhdError::BadCookie {
                file: file.to_owned(),
                what: "dynamic disk header",
                offset,
                found: escape(&b[..8]),
                expected: "cxsparse",
            });
        }
        let stored = be32(b, 36);
        let computed = checksum(b, 36);
        if stored != computed {
            return Err(VhdError::Checksum {
                file: file.to_owned(),
                what: "dynamic disk header",
                offset,
                stored,
                computed,
            });
        }
        let version = be32(b, 24);
        if version >> 16 != 1 {
            return Err(VhdError::UnsupportedVersion { file: file.to_owned(), what: "dynamic disk header", version });
        }
        let block_size = be32(b, 32);
        check_block_size(u64::from(block_size), file)?;
        let mut parent_unique_id = [0u8; 16];
        parent_unique_id.copy_from_slice(&b[40..56]);
        let mut parent_name = [0u8; 512];
        parent_name.copy_from_slice(&b[64..576]);
        let mut locators = [Locator::default(); 8];
        for (i, l) in locators.iter_mut().enumerate() {
            let at = 576 + 24 * i;
            *l = Locator {
                code: be32(b, at),
                space: be32(b, at + 4),
                length: be32(b, at + 8),
                offset: be64(b, at + 16),
            };
        }
        Ok(DynHeader {
            table_offset: be64(b, 16),
            version,
            max_table_entries: be32(b, 28),
            block_size,
            parent_unique_id,
            parent_timestamp: be32(b, 56),
            parent_name,
            locators,
        })
    }

    /// The 1024 bytes of this header, checksum computed.
    pub(crate) fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(HEADER_COOKIE);
        put64(&mut b, 8, u64::MAX);
        put64(&mut b, 16, self.table_offset);
        put32(&mut b, 24, self.version);
        put32(&mut b, 28, self.max_table_entries);
        put32(&mut b, 32, self.block_size);
        b[40..56].copy_from_slice(&self.parent_unique_id);
        put32(&mut b, 56, self.parent_timestamp);
        b[64..576].copy_from_slice(&self.parent_name);
        for (i, l) in self.locators.iter().enumerate() {
            let at = 576 + 24 * i;
            put32(&mut b, at, l.code);
            put32(&mut b, at + 4, l.space);
            put32(&mut b, at + 8, l.length);
            put64(&mut b, at + 16, l.offset);
        }
        let c = checksum(&b, 36);
        put32(&mut b, 36, c);
        b
    }

    /// The parent's name from the header: UTF-16 big-endian per the spec;
    /// some writers use little-endian, so the decoding with more ASCII wins.
    pub(crate) fn parent_name(&self) -> String {
        let be = utf16(&self.parent_name, false);
        let le = utf16(&self.parent_name, true);
        let ascii = |s: &str| s.chars().filter(char::is_ascii).count();
        if ascii(&le) > ascii(&be) { le } else { be }
    }
}

/// Decodes UTF-16 (lossy), stopping at the first NUL.
pub(crate) fn utf16(b: &[u8], little_endian: bool) -> String {
    let units = b
        .chunks_exact(2)
        .map(|c| if little_endian { u16::from_le_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], c[1]]) });
    let units: Vec<u16> = units.take_while(|u| *u != 0).collect();
    String::from_utf16_lossy(&units)
}

/// Encodes UTF-16 without a terminator.
pub(crate) fn to_utf16(s: &str, little_endian: bool) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| if little_endian { u.to_le_bytes() } else { u.to_be_bytes() }).collect()
}

/// Checks a block size: a power of two in `MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE`.
pub(crate) fn check_block_size(block_size: u64, file: &str) -> Result<()> {
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(VhdError::BadBlockSize { file: file.to_owned(), block_size });
    }
    Ok(())
}

/// Bytes of a block's sector bitmap: one bit per sector, padded to a sector.
pub(crate) fn bitmap_bytes(block_size: u64) -> u64 {
    (block_size / SECTOR).div_ceil(8).div_ceil(SECTOR) * SECTOR
}

/// Whether sector `s` of a block is marked present (MSB-first bit order).
pub(crate) fn bit(bitmap: &[u8], s: u64) -> bool {
    bitmap.get((s / 8) as usize).is_some_and(|b| b & (0x80 >> (s % 8)) != 0)
}

/// Marks sector `s` present.
pub(crate) fn set_bit(bitmap: &mut [u8], s: u64) {
    if let Some(b) = bitmap.get_mut((s / 8) as usize) {
        *b |= 0x80 >> (s % 8);
    }
}

/// The end (exclusive) of the run of sectors from `s` whose bit equals
/// `bit(bitmap, s)`, at most `end`. Whole bytes of one value are skipped at once.
pub(crate) fn run_end(bitmap: &[u8], s: u64, end: u64) -> u64 {
    let v = bit(bitmap, s);
    let full = if v { 0xFF } else { 0x00 };
    let mut i = s + 1;
    while i < end {
        if i % 8 == 0 && i + 8 <= end && bitmap.get((i / 8) as usize) == Some(&full) {
            i += 8;
            continue;
        }
        if bit(bitmap, i) != v {
            return i;
        }
        i += 1;
    }
    end
}

/// CHS geometry of a disk of `total_sectors`, by the algorithm of the VHD
/// specification (appendix "CHS calculation"); capped at 65535×16×255.
pub(crate) fn chs(total_sectors: u64) -> (u16, u8, u8) {
    let total = total_sectors.min(65535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads).min(65535) as u16, heads as u8, spt as u8)
}

/// A time as a VHD time stamp: seconds since 2000-01-01 UTC (saturating).
pub(crate) fn vhd_time(t: SystemTime) -> u32 {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    secs.saturating_sub(VHD_EPOCH).min(u64::from(u32::MAX)) as u32
}

/// Rounds up to a whole number of sectors.
pub(crate) fn round_up_sector(n: u64) -> u64 {
    n.div_ceil(SECTOR) * SECTOR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_round_trips_and_checksum_catches_a_flip() {
        let f = Footer::new(DiskType::Dynamic, 3 << 20, 512, [7; 16], 1234);
        let b = f.encode();
        assert_eq!(Footer::decode(&b, "t", 0).unwrap(), f);
        let mut bad = b;
        bad[50] ^= 1;
        assert!(matches!(Footer::decode(&bad, "t", 0), Err(VhdError::Checksum { .. })));
    }

    #[test]
    fn chs_matches_the_spec_examples() {
        // qemu's "3M" dynamic disk, rounded up to 6188 sectors: 0x005b 04 11.
        assert_eq!(chs(6188), (91, 4, 17));
        assert_eq!(chs(3 * 2048), (90, 4, 17));
        assert_eq!(chs(u64::MAX), (65535, 16, 255));
    }

    #[test]
    fn bitmap_runs_are_msb_first() {
        let mut bm = vec![0u8; 512];
        bm[0] = 0b1100_0000;
        bm[1] = 0xFF;
        assert!(bit(&bm, 0) && bit(&bm, 1) && !bit(&bm, 2));
        assert_eq!(run_end(&bm, 0, 4096), 2);
        assert_eq!(run_end(&bm, 2, 4096), 8);
        assert_eq!(run_end(&bm, 8, 4096), 16);
        assert_eq!(run_end(&bm, 16, 4096), 4096);
        assert_eq!(bitmap_bytes(2 << 20), 512);
        assert_eq!(bitmap_bytes(512), 512);
        assert_eq!(bitmap_bytes(1 << 28), 65536);
    }

    #[test]
    fn parent_name_either_byte_order() {
        let mut h = DynHeader::decode(
            &{
                let mut b = [0u8; HEADER_SIZE];
                b[..8].copy_from_slice(HEADER_COOKIE);
                b[24..28].copy_from_slice(&VERSION_1.to_be_bytes());
                b[32..36].copy_from_slice(&(2u32 << 20).to_be_bytes());
                let c = checksum(&b, 36);
                b[36..40].copy_from_slice(&c.to_be_bytes());
                b
            },
            "t",
            512,
        )
        .unwrap();
        for le in [false, true] {
            let n = to_utf16("base-é.vhd", le);
            h.parent_name = [0; 512];
            h.parent_name[..n.len()].copy_from_slice(&n);
            assert_eq!(h.parent_name(), "base-é.vhd");
        }
    }
}
