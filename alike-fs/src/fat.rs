//! FAT12, FAT16 and FAT32 with long file names (EFI system partitions),
//! read-only, written here: FAT is small, and the `fatfs` crate (0.3) wants
//! a writable device (`Read + Write + Seek`; its files write on drop).
//!
//! - **Detection**: a boot sector with the `55 AA` signature, a jump
//!   instruction and a BIOS parameter block whose sizes make sense; the FAT
//!   type follows from the cluster count, as the specification says.
//! - **Names**: VFAT long names (UTF-16, checksummed against their short
//!   entry; an unpaired surrogate becomes U+FFFD); without one, the 8.3 name
//!   with the NT lower-case flags applied, bytes above 0x7F read as Latin-1
//!   (the volume's OEM code page is not recorded anywhere).
//! - **Ids**: a file's [`FileId`] is the byte offset of its short directory
//!   entry on the device (the root, which has none, is 0): stable for the
//!   life of the volume, and enough to find the entry again.
//! - **Times** are local times of whoever wrote them, with no zone recorded;
//!   this reader takes them as UTC. Modification times have 2-second
//!   resolution, creation times 10 ms, access times a day.
//! - **Limits**: cluster chains are followed no further than the file's size
//!   (or, for a directory, 2 MiB, the format's 65,536 entries) needs, and no
//!   further than the volume has clusters, so a loop in the FAT is an error,
//!   not a hang. The first FAT is read whole at open, refused above 64 MiB
//!   (a FAT32 volume of some 16 million clusters).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use crate::{BlockDevice, DirEntry, FileId, FileKind, FileSystem, FsError, FsKind, Metadata, Result, TimeNs};

const FS: &str = "FAT";
/// The root directory's id (no directory entry describes it).
const ROOT: u64 = 0;
/// Most bytes a directory may have (65,536 entries of 32 bytes).
const MAX_DIR_BYTES: u64 = 2 << 20;
/// Largest FAT read into memory.
const MAX_FAT_BYTES: u64 = 64 << 20;
/// Chains kept (first cluster → runs).
const CACHE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Fat12,
    Fat16,
    Fat32,
}

/// Opens the FAT volume on `dev`: `Ok(None)` when its boot sector is not a
/// FAT boot sector, an error when it is but the volume cannot be read.
///
/// # Errors
/// [`FsError::Corrupt`] for a boot sector whose geometry does not fit the
/// device, [`FsError::Unsupported`] for a FAT larger than this reader loads.
pub fn open(dev: Arc<dyn BlockDevice>) -> Result<Option<Arc<dyn FileSystem>>> {
    if dev.size() < 512 {
        return Ok(None);
    }
    let mut b = [0u8; 512];
    dev.read_exact_at(0, &mut b)?;
    let le16 = |at: usize| u64::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let le32 = |at: usize| u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]));
    let jump = b[0] == 0xEB && b[2] == 0x90 || b[0] == 0xE9;
    let sector = le16(11);
    let spc = u64::from(b[13]);
    let reserved = le16(14);
    let fats = u64::from(b[16]);
    let root_entries = le16(17);
    let total = if le16(19) != 0 { le16(19) } else { le32(32) };
    let fat_sectors = if le16(22) != 0 { le16(22) } else { le32(36) };
    if b[510..512] != [0x55, 0xAA]
        || !jump
        || !matches!(sector, 512 | 1024 | 2048 | 4096)
        || spc == 0
        || !spc.is_power_of_two()
        || reserved == 0
        || fats == 0
        || fat_sectors == 0
        || total == 0
        || &b[3..11] == b"NTFS    "
        || &b[3..11] == b"EXFAT   "
    {
        return Ok(None);
    }
    let root_dir_sectors = (root_entries * 32).div_ceil(sector);
    let meta_sectors = reserved + fats * fat_sectors + root_dir_sectors;
    if meta_sectors >= total {
        return Err(corrupt(format!("{meta_sectors} sectors of metadata in a {total}-sector volume")));
    }
    let clusters = (total - meta_sectors) / spc;
    let ty = if clusters < 4085 {
        Type::Fat12
    } else if clusters < 65525 {
        Type::Fat16
    } else {
        Type::Fat32
    };
    if ty == Type::Fat32 && root_entries != 0 {
        return Err(corrupt("FAT32 volume with a fixed root directory".into()));
    }
    if ty != Type::Fat32 && root_entries == 0 {
        return Err(corrupt("FAT12/16 volume without root directory entries".into()));
    }
    // Entries the FAT must hold: clusters 0 and 1 are reserved.
    let fat_bytes_needed = match ty {
        Type::Fat12 => ((clusters + 2) * 3).div_ceil(2),
        Type::Fat16 => (clusters + 2) * 2,
        Type::Fat32 => (clusters + 2) * 4,
    };
    let fat_bytes = fat_sectors * sector;
    if fat_bytes < fat_bytes_needed {
        return Err(corrupt(format!("a {fat_bytes}-byte FAT for {clusters} clusters")));
    }
    if fat_bytes_needed > MAX_FAT_BYTES {
        return Err(FsError::Unsupported {
            fs: FS,
            what: format!("a FAT of {fat_bytes_needed} bytes (this reader loads at most {MAX_FAT_BYTES})"),
        });
    }
    let cluster_bytes = spc * sector;
    let data_start = meta_sectors * sector;
    let end = data_start + clusters * cluster_bytes;
    if end > dev.size() {
        return Err(corrupt(format!("the volume needs {end} bytes, the device has {}", dev.size())));
    }
    let mut fat = vec![0u8; fat_bytes_needed as usize];
    dev.read_exact_at(reserved * sector, &mut fat)?;
    let root_cluster = if ty == Type::Fat32 { le32(44) & 0x0FFF_FFFF } else { 0 };
    let bpb_label = match ty {
        Type::Fat32 if b[66] == 0x29 => Some(&b[71..82]),
        Type::Fat12 | Type::Fat16 if b[38] == 0x29 => Some(&b[43..54]),
        _ => None,
    };
    let mut fs = FatFs {
        dev,
        ty,
        fat,
        clusters: clusters as u32,
        cluster_bytes,
        data_start,
        root_start: (reserved + fats * fat_sectors) * sector,
        root_bytes: root_entries * 32,
        root_cluster: root_cluster as u32,
        label: None,
        chains: Mutex::new(HashMap::new()),
    };
    if ty == Type::Fat32 && !fs.valid_cluster(fs.root_cluster) {
        return Err(corrupt(format!("root directory at cluster {}", fs.root_cluster)));
    }
    let (_, label) = fs.dir_entries(ROOT)?;
    fs.label = label
        .or_else(|| bpb_label.map(short_text))
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty() && l != "NO NAME");
    Ok(Some(Arc::new(fs)))
}

fn corrupt(what: String) -> FsError {
    FsError::Corrupt { fs: FS, what }
}

/// A FAT volume (see the module docs).
struct FatFs {
    dev: Arc<dyn BlockDevice>,
    ty: Type,
    /// The first FAT.
    fat: Vec<u8>,
    clusters: u32,
    cluster_bytes: u64,
    data_start: u64,
    /// FAT12/16: the fixed root directory.
    root_start: u64,
    root_bytes: u64,
    /// FAT32: the root directory's first cluster.
    root_cluster: u32,
    label: Option<String>,
    /// Runs (first cluster, clusters) of the chains followed, by first
    /// cluster and length followed.
    chains: Mutex<HashMap<(u32, u64), Arc<Chain>>>,
}

/// A cluster chain as runs of contiguous clusters.
type Chain = Vec<Run>;

/// Contiguous clusters of a chain.
#[derive(Clone, Copy)]
struct Run {
    /// Clusters of the chain before this run.
    at: u64,
    first: u32,
    len: u32,
}

/// A directory's bytes, and (offset in them, device offset) where each run
/// of clusters starts.
type DirBytes = (Vec<u8>, Vec<(u64, u64)>);

/// A short directory entry, parsed.
struct Short {
    attr: u8,
    cluster: u32,
    size: u32,
    mtime: Option<TimeNs>,
    atime: Option<TimeNs>,
    btime: Option<TimeNs>,
}

impl FatFs {
    fn valid_cluster(&self, c: u32) -> bool {
        c >= 2 && c - 2 < self.clusters
    }

    /// The FAT entry of cluster `c` (a valid cluster).
    fn next(&self, c: u32) -> u32 {
        let c = c as usize;
        match self.ty {
            Type::Fat12 => {
                let at = c + c / 2;
                let v = u16::from_le_bytes([self.fat[at], self.fat[at + 1]]);
                u32::from(if c % 2 == 0 { v & 0x0FFF } else { v >> 4 })
            }
            Type::Fat16 => u32::from(u16::from_le_bytes([self.fat[2 * c], self.fat[2 * c + 1]])),
            Type::Fat32 => {
                u32::from_le_bytes([self.fat[4 * c], self.fat[4 * c + 1], self.fat[4 * c + 2], self.fat[4 * c + 3]])
                    & 0x0FFF_FFFF
            }
        }
    }

    fn end_of_chain(&self, v: u32) -> bool {
        match self.ty {
            Type::Fat12 => v >= 0xFF8,
            Type::Fat16 => v >= 0xFFF8,
            Type::Fat32 => v >= 0x0FFF_FFF8,
        }
    }

    /// The runs of the chain starting at `first`, `want` clusters long
    /// (fewer where the chain ends first: the caller checks).
    fn chain(&self, first: u32, want: u64, what: &dyn Fn() -> String) -> Result<Arc<Chain>> {
        let key = (first, want);
        if let Some(c) = self.chains.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        // More clusters than the volume has means a loop somewhere.
        let want = want.min(u64::from(self.clusters) + 1);
        let mut runs: Chain = Vec::new();
        let mut c = first;
        let mut n = 0u64;
        // Brent's cycle detection: a chain that comes back to a cluster it
        // passed is a loop, found within twice its length.
        let (mut tortoise, mut power, mut lam) = (first, 1u64, 0u64);
        while n < want {
            if !self.valid_cluster(c) {
                return Err(corrupt(format!("{}: cluster chain reaches cluster {c:#x} after {n} clusters", what())));
            }
            match runs.last_mut() {
                Some(r) if r.first + r.len == c => r.len += 1,
                _ => runs.push(Run { at: n, first: c, len: 1 }),
            }
            n += 1;
            if n > u64::from(self.clusters) {
                return Err(corrupt(format!("{}: cluster chain longer than the volume (a loop)", what())));
            }
            let next = self.next(c);
            if self.end_of_chain(next) {
                break;
            }
            c = next;
            if c == tortoise {
                return Err(corrupt(format!("{}: cluster chain loops back to cluster {c:#x}", what())));
            }
            lam += 1;
            if lam == power {
                tortoise = c;
                power *= 2;
                lam = 0;
            }
        }
        let runs = Arc::new(runs);
        let mut cache = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE {
            cache.clear();
        }
        cache.insert(key, runs.clone());
        Ok(runs)
    }

    fn cluster_pos(&self, c: u32) -> u64 {
        self.data_start + u64::from(c - 2) * self.cluster_bytes
    }

    /// Reads `buf.len()` bytes at `off` of the chain `runs`.
    fn read_runs(&self, runs: &[Run], off: u64, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
        let cb = self.cluster_bytes;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let i = runs.partition_point(|r| (r.at + u64::from(r.len)) * cb <= pos);
            let Some(r) = runs.get(i) else {
                return Err(corrupt(format!("{}: its cluster chain ends before byte {pos}", what())));
            };
            let in_run = pos - r.at * cb;
            let n = (u64::from(r.len) * cb - in_run).min((buf.len() - done) as u64) as usize;
            self.dev.read_exact_at(self.cluster_pos(r.first) + in_run, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// The bytes of directory `dir`, and where each 32-byte entry lies.
    fn dir_bytes(&self, dir: u64) -> Result<DirBytes> {
        if dir == ROOT && self.ty != Type::Fat32 {
            let mut b = vec![0u8; self.root_bytes as usize];
            self.dev.read_exact_at(self.root_start, &mut b)?;
            return Ok((b, vec![(0, self.root_start)]));
        }
        let first = if dir == ROOT {
            self.root_cluster
        } else {
            let s = self.short_at(dir)?;
            if s.attr & 0x10 == 0 {
                return Err(FsError::NotADirectory(format!("FAT entry at {dir}")));
            }
            s.cluster
        };
        if first == 0 {
            // A ".." to the root on FAT32, or an empty directory.
            return if dir == ROOT {
                Err(corrupt("root directory without a cluster".into()))
            } else {
                Ok((Vec::new(), Vec::new()))
            };
        }
        let what = || format!("directory at {dir}");
        let want = MAX_DIR_BYTES / self.cluster_bytes;
        let runs = self.chain(first, want.max(1), &what)?;
        let len: u64 = runs.iter().map(|r| u64::from(r.len) * self.cluster_bytes).sum();
        let mut b = vec![0u8; len as usize];
        self.read_runs(&runs, 0, &mut b, &what)?;
        let mut map = Vec::with_capacity(runs.len());
        let mut at = 0u64;
        for r in runs.iter() {
            map.push((at, self.cluster_pos(r.first)));
            at += u64::from(r.len) * self.cluster_bytes;
        }
        Ok((b, map))
    }

    /// The entries of directory `dir`, and the volume label found in it.
    fn dir_entries(&self, dir: u64) -> Result<(Vec<DirEntry>, Option<String>)> {
        let (b, map) = self.dir_bytes(dir)?;
        let device_pos = |off: u64| {
            let i = map.partition_point(|&(start, _)| start <= off) - 1;
            map[i].1 + (off - map[i].0)
        };
        let mut out = Vec::new();
        let mut label = None;
        let mut lfn: Vec<u16> = Vec::new();
        let mut lfn_sum: Option<u8> = None;
        let mut lfn_next: u8 = 0; // the sequence number expected next (counting down)
        for (i, e) in b.chunks_exact(32).enumerate() {
            if e[0] == 0 {
                break;
            }
            if e[0] == 0xE5 {
                lfn.clear();
                lfn_sum = None;
                continue;
            }
            let attr = e[11];
            if attr & 0x3F == 0x0F {
                let seq = e[0] & 0x1F;
                if e[0] & 0x40 != 0 {
                    lfn.clear();
                    lfn_sum = Some(e[13]);
                    lfn_next = seq;
                } else if lfn_sum != Some(e[13]) || seq != lfn_next {
                    lfn_sum = None;
                    continue;
                }
                if seq == 0 || lfn_sum.is_none() {
                    lfn_sum = None;
                    continue;
                }
                // Parts come last first: prepend this one.
                let mut part: Vec<u16> = Vec::with_capacity(13);
                for r in [1..11, 14..26, 28..32] {
                    part.extend(e[r].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
                }
                part.append(&mut lfn);
                lfn = part;
                lfn_next = seq - 1;
                continue;
            }
            let long = match lfn_sum.take() {
                Some(sum) if lfn_next == 0 && sum == checksum(&e[..11]) => {
                    let end = lfn.iter().position(|&u| u == 0).unwrap_or(lfn.len());
                    Some(
                        char::decode_utf16(lfn[..end].iter().copied())
                            .map(|c| c.unwrap_or('\u{fffd}'))
                            .collect::<String>(),
                    )
                }
                _ => None,
            };
            lfn.clear();
            if attr & 0x08 != 0 {
                if dir == ROOT && attr & 0x10 == 0 && label.is_none() {
                    label = Some(short_text(&e[..11]));
                }
                continue;
            }
            let name = long.unwrap_or_else(|| short_name(e));
            if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
                continue;
            }
            let id = device_pos(i as u64 * 32);
            let s = parse_short(e, self.ty);
            out.push(DirEntry { name: name.into_bytes(), meta: self.meta(id, &s) });
        }
        Ok((out, label))
    }

    fn short_at(&self, id: u64) -> Result<Short> {
        if id < self.root_start || id % 32 != 0 {
            return Err(FsError::NotFound(format!("FAT entry at {id}")));
        }
        let mut e = [0u8; 32];
        self.dev.read_exact_at(id, &mut e)?;
        if e[0] == 0 || e[0] == 0xE5 || e[11] & 0x3F == 0x0F {
            return Err(FsError::NotFound(format!("FAT entry at {id}")));
        }
        Ok(parse_short(&e, self.ty))
    }

    fn meta(&self, id: u64, s: &Short) -> Metadata {
        let dir = s.attr & 0x10 != 0;
        let mut m = Metadata::new(
            FileId(id),
            if dir { FileKind::Dir } else { FileKind::File },
            if dir { 0 } else { u64::from(s.size) },
        );
        m.mtime = s.mtime;
        m.atime = s.atime;
        m.btime = s.btime;
        m
    }
}

/// The short name's checksum that its long-name entries carry.
fn checksum(name: &[u8]) -> u8 {
    name.iter().fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c))
}

/// Bytes of a short name as text: ASCII, and Latin-1 above it.
fn short_text(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}

/// The 8.3 name of a short entry, with the NT lower-case flags applied.
fn short_name(e: &[u8]) -> String {
    let mut base = e[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xE5;
    }
    let mut base = short_text(&base).trim_end().to_string();
    let mut ext = short_text(&e[8..11]).trim_end().to_string();
    if e[12] & 0x08 != 0 {
        base = base.to_ascii_lowercase();
    }
    if e[12] & 0x10 != 0 {
        ext = ext.to_ascii_lowercase();
    }
    if ext.is_empty() { base } else { format!("{base}.{ext}") }
}

fn parse_short(e: &[u8], ty: Type) -> Short {
    let le16 = |at: usize| u16::from_le_bytes([e[at], e[at + 1]]);
    let hi = if ty == Type::Fat32 { u32::from(le16(20)) << 16 } else { 0 };
    Short {
        attr: e[11],
        cluster: (hi | u32::from(le16(26))) & 0x0FFF_FFFF,
        size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
        mtime: fat_time(le16(24), le16(22), 0),
        atime: fat_time(le16(18), 0, 0),
        btime: fat_time(le16(16), le16(14), e[13]),
    }
}

/// A FAT date, time and 10-ms count as ns since the epoch (taken as UTC);
/// `None` for a zero or impossible date.
fn fat_time(date: u16, time: u16, tens_of_ms: u8) -> Option<TimeNs> {
    let year = 1980 + i64::from(date >> 9);
    let month = i64::from((date >> 5) & 0x0F);
    let day = i64::from(date & 0x1F);
    let (h, m, s) = (i64::from(time >> 11), i64::from((time >> 5) & 0x3F), i64::from(time & 0x1F) * 2);
    if date == 0 || !(1..=12).contains(&month) || day == 0 || h > 23 || m > 59 || s > 59 || tens_of_ms > 199 {
        return None;
    }
    // Days from 1970-01-01 to the date (proleptic Gregorian, year >= 1980).
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    Some(secs * 1_000_000_000 + i64::from(tens_of_ms) * 10_000_000)
}

impl FileSystem for FatFs {
    fn kind(&self) -> FsKind {
        FsKind::Fat
    }

    fn label(&self) -> Option<String> {
        self.label.clone()
    }

    fn root(&self) -> FileId {
        FileId(ROOT)
    }

    fn metadata(&self, id: FileId) -> Result<Metadata> {
        if id.0 == ROOT {
            return Ok(Metadata::new(FileId(ROOT), FileKind::Dir, 0));
        }
        let s = self.short_at(id.0)?;
        Ok(self.meta(id.0, &s))
    }

    fn read_dir(&self, dir: FileId) -> Result<Vec<DirEntry>> {
        Ok(self.dir_entries(dir.0)?.0)
    }

    fn read_at(&self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let s = if file.0 == ROOT {
            return Err(FsError::Unsupported { fs: FS, what: "reading a directory as a file".into() });
        } else {
            self.short_at(file.0)?
        };
        if s.attr & 0x10 != 0 {
            return Err(FsError::Unsupported {
                fs: FS,
                what: format!("reading the directory at {} as a file", file.0),
            });
        }
        let size = u64::from(s.size);
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = (size - offset).min(buf.len() as u64) as usize;
        let what = || format!("file at FAT entry {}", file.0);
        if s.cluster == 0 {
            return Err(corrupt(format!("{}: {size} bytes and no cluster", what())));
        }
        let runs = self.chain(s.cluster, size.div_ceil(self.cluster_bytes), &what)?;
        self.read_runs(&runs, offset, &mut buf[..n], &what)?;
        Ok(n)
    }

    fn read_link(&self, link: FileId) -> Result<Vec<u8>> {
        Err(FsError::Unsupported { fs: FS, what: format!("FAT has no links (entry at {})", link.0) })
    }

    fn data_ranges(&self, file: FileId) -> Result<Vec<Range<u64>>> {
        let size = self.metadata(file)?.size;
        #[allow(clippy::single_range_in_vec_init)] // one range: the whole file
        Ok(if size == 0 { Vec::new() } else { vec![0..size] })
    }
}

/// The fuzz body: opens `data` as a FAT volume, lists the root and the
/// directories under it, and reads the start of every file found. Must
/// return, never panic, loop or allocate by what the bytes claim.
pub fn fuzz_one(data: &[u8]) {
    let dev: Arc<dyn BlockDevice> = Arc::new(crate::fuzz::MemDevice(data.to_vec()));
    crate::fuzz::walk(open(dev));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_as_utc() {
        // 2024-02-29 13:37:42 UTC = 1709213862.
        let date = ((2024 - 1980) << 9) | (2 << 5) | 29;
        let time = (13 << 11) | (37 << 5) | 21;
        assert_eq!(fat_time(date, time, 0), Some(1_709_213_862_000_000_000));
        assert_eq!(fat_time(date, time, 150), Some(1_709_213_863_500_000_000));
        assert_eq!(fat_time(0, 0, 0), None);
        assert_eq!(fat_time((1 << 5) | 1, 24 << 11, 0), None);
    }

    #[test]
    fn short_names_and_checksums() {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(b"README  TXT");
        assert_eq!(short_name(&e), "README.TXT");
        e[12] = 0x18;
        assert_eq!(short_name(&e), "readme.txt");
        // The checksum of "README  TXT" as the specification's loop gives it.
        let mut sum = 0u8;
        for &c in b"README  TXT" {
            sum = (if sum & 1 != 0 { 0x80 } else { 0 }) + (sum >> 1);
            sum = sum.wrapping_add(c);
        }
        assert_eq!(checksum(b"README  TXT"), sum);
    }
}
