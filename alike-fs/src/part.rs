//! Partition tables: MBR (with extended and logical partitions) and GPT.
//!
//! Written by hand rather than with `gptman`/`mbrman`: both read through
//! `Read + Seek` and allocate what the header claims (`gptman` sizes its
//! entry array by the header's count), while a table here is read from a
//! positional [`BlockDevice`] fetched from a store block by block and must
//! be bounded before any allocation; the formats are small and fully
//! specified (UEFI 2.10 §5.3, the IBM PC MBR).
//!
//! **Numbering** follows Linux: GPT partitions by their slot in the entry
//! array (slot 0 is partition 1; empty slots leave gaps), MBR primaries
//! 1–4 by their slot, logical partitions from 5 in the order of the EBR
//! chain. An extended partition is listed (as Linux lists `sda2`) but
//! holds no filesystem itself ([`Partition::is_container`]).
//!
//! **GPT**: a table is used when the MBR is protective (a partition of type
//! `0xEE`, hybrid MBRs included) or when there is no MBR signature at all.
//! The primary header (LBA 1) must match its CRC-32 and so must its entry
//! array; when either fails, the backup header (last LBA) and its array are
//! read instead, and [`PartitionTable::warnings`] says so. Sectors of 512
//! bytes are tried first, then 4096.
//!
//! **Limits against hostile tables**: a GPT entry array of at most 4 MiB
//! (the usual is 16 KiB), entries of 128 bytes to 4 KiB, a chain of at most
//! [`MAX_LOGICAL`] EBRs, each visited once (a loop ends the chain with a
//! warning). A partition that runs past the end of the disk is cut at the
//! end, with a warning.

use std::collections::HashSet;
use std::sync::Arc;

use crate::{BlockDevice, FsError, Result, check_range};

/// The most logical partitions read from an EBR chain.
pub const MAX_LOGICAL: usize = 256;
/// The largest GPT entry array read.
const MAX_GPT_ARRAY: u64 = 4 << 20;

/// Which kind of table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TableKind {
    /// A DOS/IBM PC master boot record.
    Mbr,
    /// A GUID partition table.
    Gpt,
}

impl TableKind {
    /// `mbr` or `gpt`.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Mbr => "mbr",
            TableKind::Gpt => "gpt",
        }
    }
}

/// A partition table found on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionTable {
    /// MBR or GPT.
    pub kind: TableKind,
    /// Sector size the table was read with (512 or 4096).
    pub sector_size: u64,
    /// The disk's GUID (GPT) or its 32-bit signature (MBR, 8 hex digits).
    pub disk_id: Option<String>,
    /// The partitions, by number.
    pub partitions: Vec<Partition>,
    /// What was odd but survivable: a damaged primary GPT, a partition cut
    /// at the disk's end, a loop in the EBR chain.
    pub warnings: Vec<String>,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Partition {
    /// Its number as Linux names it (`sda3` is 3).
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// The type: a GUID (GPT, lower case) or the MBR type byte (`0x83`, `0xf`: as partx prints them).
    pub type_: String,
    /// The type for people (`Linux filesystem`, `EFI System`, `unknown`).
    pub type_name: String,
    /// The GPT partition name, when not empty.
    pub name: Option<String>,
    /// The GPT partition's unique GUID.
    pub uuid: Option<String>,
    /// An MBR extended partition: a container of logical partitions, with no
    /// filesystem of its own.
    pub is_container: bool,
}

impl Partition {
    /// The partition as a device of its own, over `disk`.
    pub fn device(&self, disk: &Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
        Arc::new(Slice::new(
            disk.clone(),
            self.start,
            self.size,
            format!("{} partition {}", disk.describe(), self.number),
        ))
    }
}

/// A device over a byte range of another: a partition, an LV segment.
pub struct Slice {
    inner: Arc<dyn BlockDevice>,
    start: u64,
    size: u64,
    name: String,
}

impl std::fmt::Debug for Slice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slice").field("name", &self.name).field("start", &self.start).field("size", &self.size).finish()
    }
}

impl Slice {
    /// Bytes `start..start + size` of `inner`, named `name` in errors (cut
    /// at `inner`'s end).
    pub fn new(inner: Arc<dyn BlockDevice>, start: u64, size: u64, name: impl Into<String>) -> Slice {
        let start = start.min(inner.size());
        let size = size.min(inner.size() - start);
        Slice { inner, start, size, name: name.into() }
    }
}

impl BlockDevice for Slice {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self, offset, buf.len())?;
        self.inner.read_exact_at(self.start + offset, buf)
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A GUID as text (the mixed-endian form every tool prints), lower case.
pub fn guid_string(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
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

/// A UUID stored in byte order (ext, LVM, FAT serials aside) as text, lower case.
pub fn uuid_string(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Reads the partition table of `dev`: `Ok(None)` when there is none (a
/// filesystem on the whole disk, a blank disk, an LVM physical volume).
///
/// # Errors
/// A read that fails; a protective MBR whose GPT is damaged in both copies
/// ([`FsError::Corrupt`]).
pub fn read_table(dev: &Arc<dyn BlockDevice>) -> Result<Option<PartitionTable>> {
    if dev.size() < 512 {
        return Ok(None);
    }
    let mut mbr = [0u8; 512];
    dev.read_exact_at(0, &mut mbr)?;
    let signed = mbr[510] == 0x55 && mbr[511] == 0xAA;
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..446 + 16 * (i + 1)]).collect();
    let protective = signed && entries.iter().any(|e| e[4] == 0xEE);
    if protective || !signed {
        match read_gpt(dev)? {
            Some(mut t) => {
                if !signed {
                    t.warnings.push("no MBR signature (no protective MBR): the GPT was used anyway".into());
                }
                return Ok(Some(t));
            }
            None if protective => {
                return Err(FsError::Corrupt {
                    fs: "GPT",
                    what: format!(
                        "{}: a protective MBR, but neither the primary nor the backup GPT header is valid",
                        dev.describe()
                    ),
                });
            }
            None => return Ok(None),
        }
    }
    read_mbr(dev, &mbr)
}

// ---------------------------------------------------------------------------
// MBR

/// MBR types of extended partitions (containers of logical partitions).
fn is_extended(t: u8) -> bool {
    matches!(t, 0x05 | 0x0F | 0x85)
}

/// A sector size for MBR tables: always 512 here (4Kn disks carry GPT).
const MBR_SECTOR: u64 = 512;

/// One MBR slot, checked: `None` when empty; `Err` when it cannot be a
/// partition entry at all (so the sector is not an MBR).
fn mbr_slot(e: &[u8]) -> std::result::Result<Option<(u8, u64, u64)>, ()> {
    if e[0] != 0 && e[0] != 0x80 {
        return Err(());
    }
    let (t, start, count) = (e[4], u64::from(le32(e, 8)), u64::from(le32(e, 12)));
    if t == 0 {
        return Ok(None);
    }
    if start == 0 || count == 0 {
        return Err(());
    }
    Ok(Some((t, start, count)))
}

fn read_mbr(dev: &Arc<dyn BlockDevice>, mbr: &[u8; 512]) -> Result<Option<PartitionTable>> {
    let mut slots = Vec::new();
    for i in 0..4 {
        match mbr_slot(&mbr[446 + 16 * i..446 + 16 * (i + 1)]) {
            Ok(s) => slots.push(s),
            // Boot code of a filesystem's boot sector, not a table.
            Err(()) => return Ok(None),
        }
    }
    if slots.iter().all(Option::is_none) {
        return Ok(None);
    }
    let mut table = PartitionTable {
        kind: TableKind::Mbr,
        sector_size: MBR_SECTOR,
        disk_id: Some(format!("{:08x}", le32(mbr, 440))),
        partitions: Vec::new(),
        warnings: Vec::new(),
    };
    let disk_size = dev.size();
    let mut extended = None;
    for (i, s) in slots.iter().enumerate() {
        let Some((t, start, count)) = *s else { continue };
        let number = i as u32 + 1;
        let Some(p) = mbr_partition(number, t, start, count, disk_size, &mut table.warnings) else { continue };
        if p.is_container {
            if extended.is_some() {
                table.warnings.push(format!("partition {number}: a second extended partition, ignored"));
            } else {
                extended = Some((start, count));
            }
        }
        table.partitions.push(p);
    }
    if let Some((ext_start, ext_count)) = extended {
        read_ebr_chain(dev, ext_start, ext_count, &mut table)?;
    }
    Ok(Some(table))
}

/// A partition from an MBR entry at `start` sectors for `count` sectors,
/// cut at the disk's end (`None` if it starts past it).
fn mbr_partition(
    number: u32,
    t: u8,
    start: u64,
    count: u64,
    disk_size: u64,
    warnings: &mut Vec<String>,
) -> Option<Partition> {
    let start_b = start * MBR_SECTOR;
    let mut size = count * MBR_SECTOR;
    if start_b >= disk_size {
        warnings.push(format!(
            "partition {number} starts at byte {start_b}, past the end of the disk ({disk_size}): ignored"
        ));
        return None;
    }
    if start_b + size > disk_size {
        warnings.push(format!(
            "partition {number} runs {} bytes past the end of the disk: cut there",
            start_b + size - disk_size
        ));
        size = disk_size - start_b;
    }
    Some(Partition {
        number,
        start: start_b,
        size,
        type_: format!("{t:#x}"),
        type_name: mbr_type_name(t).into(),
        name: None,
        uuid: None,
        is_container: is_extended(t),
    })
}

/// Follows the chain of extended boot records from the extended partition
/// at `ext_start` sectors: each EBR's first entry is a logical partition
/// (relative to the EBR), its second the next EBR (relative to the
/// extended partition).
fn read_ebr_chain(
    dev: &Arc<dyn BlockDevice>,
    ext_start: u64,
    ext_count: u64,
    table: &mut PartitionTable,
) -> Result<()> {
    let mut seen = HashSet::new();
    let mut ebr = ext_start;
    let mut number = 5u32;
    loop {
        if !seen.insert(ebr) {
            table.warnings.push(format!("the chain of logical partitions loops back to sector {ebr}: stopped there"));
            return Ok(());
        }
        if seen.len() > MAX_LOGICAL {
            table.warnings.push(format!("more than {MAX_LOGICAL} logical partitions: the rest are ignored"));
            return Ok(());
        }
        let at = ebr * MBR_SECTOR;
        let mut b = [0u8; 512];
        if at.checked_add(512).is_none_or(|end| end > dev.size()) {
            table.warnings.push(format!("an extended boot record at sector {ebr} lies past the end of the disk"));
            return Ok(());
        }
        dev.read_exact_at(at, &mut b)?;
        if b[510] != 0x55 || b[511] != 0xAA {
            table.warnings.push(format!("the extended boot record at sector {ebr} has no signature: chain ends"));
            return Ok(());
        }
        let (first, next) = (mbr_slot(&b[446..462]), mbr_slot(&b[462..478]));
        if let Ok(Some((t, rel, count))) = first {
            if !is_extended(t) {
                let start = ebr + rel;
                if start + count > ext_start + ext_count {
                    table.warnings.push(format!("logical partition {number} runs past its extended partition"));
                }
                if let Some(p) = mbr_partition(number, t, start, count, dev.size(), &mut table.warnings) {
                    table.partitions.push(p);
                }
                number += 1;
            }
        }
        match next {
            Ok(Some((t, rel, _))) if is_extended(t) => ebr = ext_start + rel,
            _ => return Ok(()),
        }
    }
}

/// Names of common MBR partition types.
pub fn mbr_type_name(t: u8) -> &'static str {
    match t {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0E => "FAT16",
        0x05 | 0x0F | 0x85 => "Extended",
        0x07 => "NTFS/exFAT",
        0x0B | 0x0C => "FAT32",
        0x27 => "Windows recovery",
        0x42 => "Windows dynamic (LDM)",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8E => "Linux LVM",
        0xA5 => "FreeBSD",
        0xEE => "GPT protective",
        0xEF => "EFI System",
        0xFD => "Linux RAID",
        _ => "unknown",
    }
}

// ---------------------------------------------------------------------------
// GPT

/// Names of common GPT partition types (by lower-case GUID).
pub fn gpt_type_name(guid: &str) -> &'static str {
    match guid {
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "EFI System",
        "21686148-6449-6e6f-744e-656564454649" => "BIOS boot",
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "Microsoft basic data",
        "e3c9e316-0b5c-4db8-817d-f92df00215ae" => "Microsoft reserved",
        "de94bba4-06d1-4d40-a16a-bfd50179d6ac" => "Windows recovery",
        "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3" => "Windows LDM metadata",
        "af9b60a0-1431-4f62-bc68-3311714a69ad" => "Windows LDM data",
        "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux filesystem",
        "e6d6d379-f507-44c2-a23c-238f2a3df928" => "Linux LVM",
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "Linux swap",
        "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" => "Linux root (x86-64)",
        "44479540-f297-41b2-9af7-d131d5f0458a" => "Linux root (x86)",
        "b921b045-1df0-41c3-af44-4c6f280d3fae" => "Linux root (ARM64)",
        "933ac7e1-2eb4-4f13-b844-0e14e2aef915" => "Linux home",
        "bc13c2ff-59e6-4262-a352-b275fd6f7172" => "Linux extended boot",
        "3b8f8425-20e0-4f3b-907f-1a25a76f98e8" => "Linux server data",
        "ca7d7ccb-63ed-4c53-861c-1742536059cc" => "Linux LUKS",
        "516e7cb4-6ecf-11d6-8ff8-00022d09712b" => "FreeBSD data",
        "48465300-0000-11aa-aa11-00306543ecac" => "Apple HFS+",
        _ => "unknown",
    }
}

/// A GPT header, checked.
struct GptHeader {
    my_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: String,
    entries_lba: u64,
    count: u64,
    entry_size: u64,
    entries_crc: u32,
}

/// The header at `lba` (sector size `ss`), if it is one and its CRC matches.
fn gpt_header(dev: &dyn BlockDevice, lba: u64, ss: u64) -> Result<std::result::Result<GptHeader, String>> {
    let Some(at) = lba.checked_mul(ss).filter(|a| a.checked_add(ss).is_some_and(|e| e <= dev.size())) else {
        return Ok(Err(format!("LBA {lba} lies past the end of the disk")));
    };
    let mut b = vec![0u8; ss as usize];
    dev.read_exact_at(at, &mut b)?;
    if &b[0..8] != b"EFI PART" {
        return Ok(Err(format!("no GPT signature at LBA {lba}")));
    }
    let hsize = le32(&b, 12) as usize;
    if !(92..=ss as usize).contains(&hsize) {
        return Ok(Err(format!("header at LBA {lba}: a header size of {hsize} bytes")));
    }
    let want = le32(&b, 16);
    let mut h = b[..hsize].to_vec();
    h[16..20].fill(0);
    if CRC32.checksum(&h) != want {
        return Ok(Err(format!("header at LBA {lba} does not match its CRC-32")));
    }
    let hdr = GptHeader {
        my_lba: le64(&b, 24),
        first_usable: le64(&b, 40),
        last_usable: le64(&b, 48),
        disk_guid: guid_string(&b[56..72]),
        entries_lba: le64(&b, 72),
        count: u64::from(le32(&b, 80)),
        entry_size: u64::from(le32(&b, 84)),
        entries_crc: le32(&b, 88),
    };
    if hdr.my_lba != lba {
        return Ok(Err(format!("header at LBA {lba} says it lies at LBA {}", hdr.my_lba)));
    }
    if hdr.entry_size < 128 || hdr.entry_size > 4096 || hdr.entry_size % 8 != 0 {
        return Ok(Err(format!("header at LBA {lba}: entries of {} bytes", hdr.entry_size)));
    }
    if hdr.count * hdr.entry_size > MAX_GPT_ARRAY {
        return Ok(Err(format!(
            "header at LBA {lba}: an entry array of {} × {} bytes (at most {MAX_GPT_ARRAY} bytes are read)",
            hdr.count, hdr.entry_size
        )));
    }
    Ok(Ok(hdr))
}

/// The entry array of `h`, if its CRC matches.
fn gpt_entries(dev: &dyn BlockDevice, h: &GptHeader, ss: u64) -> Result<std::result::Result<Vec<u8>, String>> {
    let len = h.count * h.entry_size;
    let Some(at) = h.entries_lba.checked_mul(ss).filter(|a| a.checked_add(len).is_some_and(|e| e <= dev.size())) else {
        return Ok(Err(format!("the entry array at LBA {} lies past the end of the disk", h.entries_lba)));
    };
    let mut b = vec![0u8; len as usize];
    dev.read_exact_at(at, &mut b)?;
    if CRC32.checksum(&b) != h.entries_crc {
        return Ok(Err(format!("the entry array at LBA {} does not match its CRC-32", h.entries_lba)));
    }
    Ok(Ok(b))
}

fn read_gpt(dev: &Arc<dyn BlockDevice>) -> Result<Option<PartitionTable>> {
    for ss in [512u64, 4096] {
        if dev.size() < 2 * ss {
            continue;
        }
        let last = dev.size() / ss - 1;
        let mut warnings = Vec::new();
        let primary = match gpt_header(dev.as_ref(), 1, ss)? {
            Ok(h) => match gpt_entries(dev.as_ref(), &h, ss)? {
                Ok(e) => Some((h, e)),
                Err(why) => {
                    warnings.push(format!("primary GPT damaged ({why}): the backup at the disk's end was read"));
                    None
                }
            },
            Err(why) => {
                // A missing signature with 512-byte sectors may be a 4Kn disk.
                if ss == 512 && why.starts_with("no GPT signature") && gpt_header(dev.as_ref(), 1, 4096)?.is_ok() {
                    continue;
                }
                warnings.push(format!("primary GPT damaged ({why}): the backup at the disk's end was read"));
                None
            }
        };
        let (h, entries) = match primary {
            Some(p) => p,
            None => match gpt_header(dev.as_ref(), last, ss)? {
                Ok(h) => match gpt_entries(dev.as_ref(), &h, ss)? {
                    Ok(e) => (h, e),
                    Err(_) => continue,
                },
                Err(_) => continue,
            },
        };
        let mut table = PartitionTable {
            kind: TableKind::Gpt,
            sector_size: ss,
            disk_id: Some(h.disk_guid.clone()),
            partitions: Vec::new(),
            warnings,
        };
        for (i, e) in entries.chunks_exact(h.entry_size as usize).enumerate() {
            if e[..16].iter().all(|&x| x == 0) {
                continue;
            }
            let number = i as u32 + 1;
            let (first, last_lba) = (le64(e, 32), le64(e, 40));
            if last_lba < first || first > last {
                table.warnings.push(format!("partition {number}: LBAs {first}..={last_lba} make no sense: ignored"));
                continue;
            }
            if first < h.first_usable || last_lba > h.last_usable {
                table.warnings.push(format!(
                    "partition {number} lies outside the usable LBAs {}..={}",
                    h.first_usable, h.last_usable
                ));
            }
            let start = first * ss;
            let mut size = (last_lba - first + 1).saturating_mul(ss);
            if start.saturating_add(size) > dev.size() {
                table.warnings.push(format!("partition {number} runs past the end of the disk: cut there"));
                size = dev.size() - start;
            }
            let type_ = guid_string(&e[..16]);
            let name_units: Vec<u16> =
                e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
            let name = String::from_utf16_lossy(&name_units);
            table.partitions.push(Partition {
                number,
                start,
                size,
                type_name: gpt_type_name(&type_).into(),
                type_,
                name: (!name.is_empty()).then_some(name),
                uuid: Some(guid_string(&e[16..32])),
                is_container: false,
            });
        }
        return Ok(Some(table));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDevice;

    fn dev(b: Vec<u8>) -> Arc<dyn BlockDevice> {
        Arc::new(MemDevice::new("t", b))
    }

    fn mbr_entry(b: &mut [u8], slot: usize, t: u8, start: u32, count: u32) {
        let e = &mut b[446 + 16 * slot..446 + 16 * (slot + 1)];
        e[4] = t;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&count.to_le_bytes());
    }

    #[test]
    fn guid_text_is_mixed_endian() {
        let b = [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b];
        assert_eq!(guid_string(&b), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn ebr_chain_that_loops_ends_with_a_warning() {
        let mut d = vec![0u8; 4 << 20];
        d[510] = 0x55;
        d[511] = 0xAA;
        mbr_entry(&mut d, 0, 0x83, 2048, 100);
        mbr_entry(&mut d, 1, 0x05, 4096, 4096);
        // EBR at 4096: a logical at +64, the next EBR at extended+100;
        // that one names itself as the next.
        for (ebr_at, next) in [(4096usize, 100u32), (4196, 100)] {
            let e = ebr_at * 512;
            d[e + 510] = 0x55;
            d[e + 511] = 0xAA;
            let mut ebr = [0u8; 512];
            mbr_entry(&mut ebr, 0, 0x83, 64, 10);
            mbr_entry(&mut ebr, 1, 0x05, next, 100);
            d[e + 446..e + 478].copy_from_slice(&ebr[446..478]);
        }
        let t = read_table(&dev(d)).unwrap().unwrap();
        let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 5, 6]);
        assert_eq!(t.partitions[2].start, (4096 + 64) * 512);
        assert!(t.warnings.iter().any(|w| w.contains("loops")), "{:?}", t.warnings);
    }

    #[test]
    fn boot_sector_code_is_not_a_table() {
        let mut d = vec![0u8; 1 << 20];
        d[510] = 0x55;
        d[511] = 0xAA;
        d[446] = 0x33; // not a boot indicator
        d[450] = 0x83;
        assert!(read_table(&dev(d)).unwrap().is_none());
    }

    #[test]
    fn a_partition_past_the_end_is_cut() {
        let mut d = vec![0u8; 1 << 20];
        d[510] = 0x55;
        d[511] = 0xAA;
        mbr_entry(&mut d, 0, 0x83, 1024, 100_000);
        let t = read_table(&dev(d)).unwrap().unwrap();
        assert_eq!(t.partitions[0].start + t.partitions[0].size, 1 << 20);
        assert_eq!(t.warnings.len(), 1);
    }

    #[test]
    fn slices_refuse_reads_past_their_end() {
        let s = Slice::new(dev(vec![7u8; 4096]), 1024, 1024, "s");
        let mut b = [0u8; 16];
        s.read_exact_at(1008, &mut b).unwrap();
        assert!(matches!(s.read_exact_at(1009, &mut b), Err(FsError::OutOfRange { .. })));
        let over = Slice::new(dev(vec![7u8; 4096]), 4000, 1 << 30, "s");
        assert_eq!(over.size(), 96);
    }
}
