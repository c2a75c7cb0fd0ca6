//! An independent, minimal decoder of VHDX structures, written from the
//! MS-VHDX text alone (it shares no code with `alike_formats::vhdx`): the
//! headers, region tables, metadata and parent locator of a file, and the
//! virtual disk a chain of files reads as. Tests check what our writer
//! makes with it, so that a reader and writer that agree on a mistake
//! do not pass each other. It panics on anything it does not expect.

/// Little-endian u32 at `at`.
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Little-endian u64 at `at`.
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// CRC-32C of `b` with its 4-byte checksum field at `field` taken as zero.
pub fn crc_zeroed(b: &[u8], field: usize) -> u32 {
    let mut v = b.to_vec();
    v[field..field + 4].fill(0);
    crc32c::crc32c(&v)
}

/// Rewrites the checksum field at `field` to match `b`.
pub fn reseal(b: &mut [u8], field: usize) {
    let c = crc_zeroed(b, field);
    b[field..field + 4].copy_from_slice(&c.to_le_bytes());
}

/// GUID text from its stored bytes (data1..3 little-endian).
pub fn guid(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8..10].iter().map(|x| format!("{x:02x}")).collect::<String>(),
        b[10..16].iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}
/// The fields of a header that the tests look at.
#[derive(Debug)]
pub struct Hdr {
    /// SequenceNumber.
    pub seq: u64,
    /// DataWriteGuid, as text.
    pub dwg: String,
    /// Whether LogGuid is zero.
    pub log_guid_zero: bool,
    /// Version (1).
    pub version: u16,
    /// LogLength.
    pub log_len: u32,
    /// LogOffset.
    pub log_off: u64,
}

/// The header at `at`, its signature and CRC checked.
pub fn header(f: &[u8], at: usize) -> Hdr {
    let b = &f[at..at + 4096];
    assert_eq!(&b[..4], b"head");
    assert_eq!(le32(b, 4), crc_zeroed(b, 4), "header CRC at {at}");
    Hdr {
        seq: le64(b, 8),
        dwg: guid(&b[32..48]),
        log_guid_zero: b[48..64].iter().all(|x| *x == 0),
        version: u16::from_le_bytes([b[66], b[67]]),
        log_len: le32(b, 68),
        log_off: le64(b, 72),
    }
}

/// (guid, offset, length, required) of each region.
pub fn regions(f: &[u8], at: usize) -> Vec<(String, u64, u32, bool)> {
    let b = &f[at..at + 65536];
    assert_eq!(&b[..4], b"regi");
    assert_eq!(le32(b, 4), crc_zeroed(b, 4), "region table CRC at {at}");
    (0..le32(b, 8) as usize)
        .map(|i| {
            let e = 16 + i * 32;
            (guid(&b[e..e + 16]), le64(b, e + 16), le32(b, e + 24), le32(b, e + 28) & 1 == 1)
        })
        .collect()
}

/// (guid, bytes, flags) of each metadata item.
pub fn metadata(f: &[u8], region: u64) -> Vec<(String, Vec<u8>, u32)> {
    let r = region as usize;
    assert_eq!(&f[r..r + 8], b"metadata");
    let n = u16::from_le_bytes([f[r + 10], f[r + 11]]) as usize;
    (0..n)
        .map(|i| {
            let e = r + 32 + i * 32;
            let (off, len) = (le32(f, e + 16) as usize, le32(f, e + 20) as usize);
            (guid(&f[e..e + 16]), f[r + off..r + off + len].to_vec(), le32(f, e + 24))
        })
        .collect()
}

/// UTF-16LE text.
pub fn utf16(b: &[u8]) -> String {
    String::from_utf16(&b.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>()).unwrap()
}

/// The key/value pairs of a VHDX parent locator item.
pub fn locator(b: &[u8]) -> Vec<(String, String)> {
    assert_eq!(guid(&b[..16]), "b04aefb7-d19e-4a81-b789-25b8e9445913");
    let n = u16::from_le_bytes([b[18], b[19]]) as usize;
    (0..n)
        .map(|i| {
            let e = 20 + i * 12;
            let (ko, vo) = (le32(b, e) as usize, le32(b, e + 4) as usize);
            let (kl, vl) = (
                u16::from_le_bytes([b[e + 8], b[e + 9]]) as usize,
                u16::from_le_bytes([b[e + 10], b[e + 11]]) as usize,
            );
            (utf16(&b[ko..ko + kl]), utf16(&b[vo..vo + vl]))
        })
        .collect()
}

/// Region GUID of the BAT.
pub const BAT: &str = "2dc27766-f623-4200-9d64-115e9bfd4a08";
/// Region GUID of the metadata.
pub const METADATA: &str = "8b7ca206-4790-4b9a-b8fe-575f050f886e";
/// Metadata item: file parameters.
pub const FILE_PARAMS: &str = "caa16737-fa36-4d43-b3b6-33f0aa44e76b";
/// Metadata item: parent locator.
pub const PARENT_LOCATOR: &str = "a8d35f2d-b30b-454d-abf7-d3d84834ab0c";
/// Metadata item: virtual disk size.
pub const VIRTUAL_DISK_SIZE: &str = "2fa54224-cd1b-4876-b211-5dbed83bf4b8";
/// Metadata item: logical sector size.
pub const LOGICAL_SECTOR_SIZE: &str = "8141bf1d-a96f-4709-ba47-f233a8faab5f";

/// The current header, region tables and metadata of a file, checked.
pub struct Parsed {
    /// The current header.
    pub hdr: Hdr,
    /// File offset of the BAT.
    pub bat_off: u64,
    /// The metadata items.
    pub meta: Vec<(String, Vec<u8>, u32)>,
    /// Both regions marked required (we do; qemu does not).
    pub required: bool,
}

/// Parses and checks a whole file's header, region tables and metadata.
pub fn parse(f: &[u8]) -> Parsed {
    assert_eq!(&f[..8], b"vhdxfile");
    let (h1, h2) = (header(f, 65536), header(f, 131072));
    let hdr = if h2.seq > h1.seq { h2 } else { h1 };
    assert_eq!(hdr.version, 1);
    assert!(hdr.log_guid_zero && hdr.log_len as u64 % (1 << 20) == 0 && hdr.log_off >= 1 << 20);
    let r1 = regions(f, 196608);
    assert_eq!(r1, regions(f, 262144), "both region tables agree");
    let bat = r1.iter().find(|r| r.0 == BAT).expect("BAT region");
    let md = r1.iter().find(|r| r.0 == METADATA).expect("metadata region");
    assert!(bat.1 % (1 << 20) == 0 && md.1 % (1 << 20) == 0);
    Parsed { hdr, bat_off: bat.1, meta: metadata(f, md.1), required: bat.3 && md.3 }
}

/// The BAT of a parsed file: (payload block size, logical sector size,
/// virtual size, entries).
pub fn bat(f: &[u8]) -> (u64, u64, u64, Vec<u64>) {
    let p = parse(f);
    let item = |g: &str| &p.meta.iter().find(|m| m.0 == g).unwrap_or_else(|| panic!("metadata item {g}")).1;
    let block = u64::from(le32(item(FILE_PARAMS), 0));
    let size = le64(item(VIRTUAL_DISK_SIZE), 0);
    let sector = u64::from(le32(item(LOGICAL_SECTOR_SIZE), 0));
    let chunk_ratio = (1u64 << 23) * sector / block;
    let blocks = size.div_ceil(block);
    let has_parent = le32(item(FILE_PARAMS), 4) & 2 == 2;
    // MS-VHDX 2.5: payload entries interleaved with one sector bitmap entry per chunk.
    let entries =
        if has_parent { blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1) } else { blocks + (blocks - 1) / chunk_ratio };
    let e = (0..entries as usize).map(|i| le64(f, p.bat_off as usize + 8 * i)).collect();
    (block, sector, size, e)
}

/// The virtual disk that a chain of files reads as, top file first and
/// the base last. Checks that every child's `parent_linkage` names its
/// parent's DataWriteGuid and that every file has the same size and sectors.
pub fn read_chain(files: &[&[u8]]) -> Vec<u8> {
    let parsed: Vec<_> = files.iter().map(|f| (parse(f), bat(f))).collect();
    for (i, (p, _)) in parsed.iter().enumerate() {
        let loc = p.meta.iter().find(|m| m.0 == PARENT_LOCATOR);
        if i + 1 == parsed.len() {
            assert!(loc.is_none(), "the last file of the chain has no parent");
            continue;
        }
        let kv = locator(&loc.expect("a child has a parent locator").1);
        let linkage = kv.iter().find(|(k, _)| k == "parent_linkage").expect("parent_linkage").1.clone();
        assert_eq!(linkage, format!("{{{}}}", parsed[i + 1].0.hdr.dwg), "file {i}: parent_linkage");
    }
    let (_, sector, size, _) = parsed[0].1;
    for (_, (b, s, z, _)) in &parsed {
        assert_eq!((*s, *z), (sector, size), "every file of a chain has the same geometry");
        assert!(b.is_power_of_two());
    }
    let mut out = vec![0u8; size as usize];
    let mut pos = 0u64;
    while pos < size {
        let n = sector.min(size - pos) as usize;
        'layers: for (f, (_, (block, sector, _, bat))) in files.iter().zip(&parsed) {
            let (b, within) = (pos / block, pos % block);
            let chunk_ratio = (1u64 << 23) * sector / block;
            let entry = bat[(b + b / chunk_ratio) as usize];
            let at = (entry & !0xfffff) + within;
            match entry & 7 {
                0 | 1 => continue,      // NOT_PRESENT, UNDEFINED: the parent's
                2 | 3 => break 'layers, // ZERO, UNMAPPED
                6 => {}                 // FULLY_PRESENT
                7 => {
                    // PARTIALLY_PRESENT: the chunk's sector bitmap, one bit per sector, LSB first.
                    let chunk = b / chunk_ratio;
                    let sb = bat[(chunk * (chunk_ratio + 1) + chunk_ratio) as usize];
                    assert_eq!(sb & 7, 6, "a partially present block's chunk has its sector bitmap");
                    let bit = (b % chunk_ratio) * (block / sector) + within / sector;
                    let byte = f[((sb & !0xfffff) + bit / 8) as usize];
                    if byte >> (bit % 8) & 1 == 0 {
                        continue;
                    }
                }
                s => panic!("payload state {s} at block {b}"),
            }
            out[pos as usize..pos as usize + n].copy_from_slice(&f[at as usize..at as usize + n]);
            break;
        }
        pos += n as u64;
    }
    out
}
