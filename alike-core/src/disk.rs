//! The disk seams — [`DiskSource`] and [`DiskTarget`] — and their first
//! implementations over raw image files and block devices.
//!
//! **API boundary:** hypervisor adapters implement these traits; the backup
//! and restore engines know nothing else about disks.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

// A disk that is all data is one range; `vec![0..size]` is meant, not a range of numbers.
#[allow(clippy::single_range_in_vec_init)]
fn whole(size: u64) -> Vec<Range<u64>> {
    vec![0..size]
}

/// A disk to back up: its size, which bytes hold data, what changed since a
/// change token, and positional reads.
///
/// Implementations must be safe to read from several threads at once.
pub trait DiskSource: Send + Sync {
    /// A label for messages and the version record (a path, a VDI uuid…).
    fn label(&self) -> String;
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// Byte ranges that may hold data, sorted and disjoint; everything else
    /// reads as zeroes and is not read at all. Default: the whole disk.
    fn allocated_ranges(&self) -> Result<Vec<Range<u64>>> {
        Ok(whole(self.size()))
    }
    /// An opaque token naming the disk's current state, to ask
    /// [`DiskSource::changed_ranges`] about at the next backup.
    fn change_token(&self) -> Option<Vec<u8>> {
        None
    }
    /// Byte ranges changed since the state named by `since`, sorted and
    /// disjoint, or `None` when the source cannot tell (then everything
    /// allocated is read and deduplicated by hash).
    fn changed_ranges(&self, _since: &[u8]) -> Result<Option<Vec<Range<u64>>>> {
        Ok(None)
    }
    /// Fills `buf` from `offset`. Reads past the end are an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// Where a restored disk is written.
///
/// Implementations must accept writes from several threads at once, at
/// any offsets, in any order.
pub trait DiskTarget: Send + Sync {
    /// A label for messages.
    fn label(&self) -> String;
    /// Writes `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// Whether unwritten ranges already read as zeroes (a fresh sparse file):
    /// then holes are skipped, otherwise [`DiskTarget::write_zeroes`] is called.
    fn holes_read_as_zero(&self) -> bool;
    /// Makes `len` bytes at `offset` read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let zero = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zero.len() as u64);
            self.write_at(offset + done, &zero[..n as usize])?;
            done += n;
        }
        Ok(())
    }
    /// Says that `len` bytes at `offset` will be written soon. A target may
    /// allocate them now: on ext4, direct writes into allocated space run
    /// side by side, while writes that allocate take the file's lock in turn.
    fn reserve(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Completes the disk at `size` bytes, durably.
    fn finish(&self, size: u64) -> Result<()>;
}

/// A source that reads through another and calls `hook(bytes)` after each
/// successful read — to count, pace or cancel reads (a vault's bandwidth
/// limit, an upload's progress). Everything else is the inner source's.
pub struct HookedSource<'a, F> {
    inner: &'a dyn DiskSource,
    hook: F,
}

impl<'a, F: Fn(u64) -> Result<()> + Send + Sync> HookedSource<'a, F> {
    /// Wraps `inner`; `hook` gets the length of each read.
    pub fn new(inner: &'a dyn DiskSource, hook: F) -> Self {
        HookedSource { inner, hook }
    }
}

impl<F: Fn(u64) -> Result<()> + Send + Sync> DiskSource for HookedSource<'_, F> {
    fn label(&self) -> String {
        self.inner.label()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn allocated_ranges(&self) -> Result<Vec<Range<u64>>> {
        self.inner.allocated_ranges()
    }
    fn change_token(&self) -> Option<Vec<u8>> {
        self.inner.change_token()
    }
    fn changed_ranges(&self, since: &[u8]) -> Result<Option<Vec<Range<u64>>>> {
        self.inner.changed_ranges(since)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_at(offset, buf)?;
        (self.hook)(buf.len() as u64)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

/// A raw disk image or block device as a [`DiskSource`]. Holes of sparse
/// files (SEEK_DATA/SEEK_HOLE) are reported as unallocated.
#[derive(Debug)]
pub struct RawFileSource {
    path: PathBuf,
    file: File,
    size: u64,
}

impl RawFileSource {
    /// Opens a raw image or block device for reading.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be opened or sized.
    pub fn open(path: impl AsRef<Path>) -> Result<RawFileSource> {
        let path = path.as_ref().to_owned();
        let mut file = File::open(&path).map_err(io_err(&path))?;
        let meta = file.metadata().map_err(io_err(&path))?;
        if meta.is_dir() {
            return Err(Error::InvalidArgument(format!("{} is a directory, not a disk image", path.display())));
        }
        // Block devices report length 0 in metadata; seeking to the end works for both.
        let size = file.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
        Ok(RawFileSource { path, file, size })
    }
}

impl DiskSource for RawFileSource {
    fn label(&self) -> String {
        self.path.display().to_string()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn allocated_ranges(&self) -> Result<Vec<Range<u64>>> {
        use rustix::fs::{SeekFrom as S, seek};
        let mut out = Vec::new();
        let mut pos = 0u64;
        while pos < self.size {
            let start = match seek(&self.file, S::Data(pos)) {
                Ok(s) => s,
                Err(rustix::io::Errno::NXIO) => break,
                // Filesystems or devices without hole support: all data.
                Err(rustix::io::Errno::INVAL) if pos == 0 => return Ok(whole(self.size)),
                Err(e) => {
                    return Err(Error::SourceRead { disk: self.label(), offset: pos, source: e.into() });
                }
            };
            let end = match seek(&self.file, S::Hole(start)) {
                Ok(e) => e.min(self.size),
                Err(e) => {
                    return Err(Error::SourceRead { disk: self.label(), offset: start, source: e.into() });
                }
            };
            if end > start {
                out.push(start..end);
            }
            pos = end.max(start + 1);
        }
        Ok(out)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|source| Error::SourceRead { disk: self.label(), offset, source })
    }
}

/// A raw image file (or block device) as a [`DiskTarget`].
///
/// A regular file is written under a temporary name beside `path` and renamed
/// into place by [`DiskTarget::finish`], so a failed restore never leaves a
/// half-written file under the final name.
///
/// Aligned writes bypass the page cache (`O_DIRECT`) where the file system
/// allows it: a restore streams gigabytes that will not be read back soon,
/// and on the machines measured the kernel spent more time inserting them
/// into the page cache (and reclaiming it) than the device took to write
/// them. Unaligned writes (a disk's last partial block) go through the cache.
#[derive(Debug)]
pub struct RawFileTarget {
    path: PathBuf,
    tmp: Option<PathBuf>,
    file: File,
    /// The same file opened `O_DIRECT`, while the file system accepts it.
    direct: Option<File>,
    direct_ok: std::sync::atomic::AtomicBool,
    fresh: bool,
}

/// Alignment of direct writes: offset, length and memory address.
const DIRECT_ALIGN: usize = 4096;

thread_local! {
    /// Per-thread staging buffer for direct writes (grown as needed).
    static DIRECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Not every file system takes O_DIRECT (tmpfs, some FUSE); buffered writes then.
    let flags = i32::try_from(rustix::fs::OFlags::DIRECT.bits()).ok()?;
    OpenOptions::new().write(true).custom_flags(flags).open(path).ok()
}

impl RawFileTarget {
    /// Writes through the direct handle; `Ok(false)` when it cannot take this
    /// write (unaligned, or the file system refused direct I/O).
    fn write_direct(&self, offset: u64, data: &[u8]) -> std::io::Result<bool> {
        use std::sync::atomic::Ordering;
        let Some(direct) = &self.direct else { return Ok(false) };
        if !self.direct_ok.load(Ordering::Relaxed)
            || offset % DIRECT_ALIGN as u64 != 0
            || data.len() % DIRECT_ALIGN != 0
            || data.is_empty()
        {
            return Ok(false);
        }
        // Memory already aligned (a restore's frame buffer) goes out as it is.
        if data.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
            return match direct.write_all_at(data, offset) {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    self.direct_ok.store(false, Ordering::Relaxed);
                    Ok(false)
                }
                Err(e) => Err(e),
            };
        }
        DIRECT_BUF.with_borrow_mut(|buf| {
            if buf.len() < data.len() + DIRECT_ALIGN {
                *buf = vec![0u8; data.len() + DIRECT_ALIGN];
            }
            let pad = buf.as_ptr().align_offset(DIRECT_ALIGN);
            let staged = &mut buf[pad..pad + data.len()];
            staged.copy_from_slice(data);
            match direct.write_all_at(staged, offset) {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    // The file system takes O_DIRECT opens but not these writes.
                    self.direct_ok.store(false, Ordering::Relaxed);
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })
    }
}

impl RawFileTarget {
    /// Creates (or replaces, at finish) the file at `path`; writes into a
    /// block device in place.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be created.
    pub fn create(path: impl AsRef<Path>) -> Result<RawFileTarget> {
        let path = path.as_ref().to_owned();
        let is_dev = std::fs::metadata(&path).map(|m| m.file_type().is_block_device()).unwrap_or(false);
        if is_dev {
            // O_EXCL on a block device: EBUSY when it is mounted or held by
            // another exclusive opener (a VM, a device mapper) — never
            // write under a live filesystem.
            use std::os::unix::fs::OpenOptionsExt;
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
                .open(&path)
                .map_err(|e| {
                    if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                        Error::InvalidArgument(format!(
                            "{} is mounted or in use (EBUSY): refusing to write over it",
                            path.display()
                        ))
                    } else {
                        Error::Io { path: path.clone(), source: e }
                    }
                })?;
            let direct = open_direct(&path);
            return Ok(RawFileTarget { path, tmp: None, file, direct, direct_ok: true.into(), fresh: false });
        }
        let name =
            path.file_name().ok_or_else(|| Error::InvalidArgument(format!("{} is not a file path", path.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".alike-partial-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(io_err(&tmp))?;
        let direct = open_direct(&tmp);
        Ok(RawFileTarget { path, tmp: Some(tmp), file, direct, direct_ok: true.into(), fresh: true })
    }
}

impl DiskTarget for RawFileTarget {
    fn label(&self) -> String {
        self.path.display().to_string()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let werr = |source| Error::TargetWrite { target: self.label(), offset, source };
        if self.write_direct(offset, data).map_err(werr)? {
            return Ok(());
        }
        self.file.write_all_at(data, offset).map_err(werr)
    }
    fn holes_read_as_zero(&self) -> bool {
        self.fresh
    }
    fn reserve(&self, offset: u64, len: u64) -> Result<()> {
        if !self.fresh || self.direct.is_none() || len == 0 {
            return Ok(());
        }
        // Space the restore will fill anyway; a file system without fallocate just skips it.
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), offset, len) {
            Ok(()) | Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => Ok(()),
            Err(e) => Err(Error::TargetWrite { target: self.label(), offset, source: e.into() }),
        }
    }
    fn finish(&self, size: u64) -> Result<()> {
        let werr = |source| Error::TargetWrite { target: self.label(), offset: size, source };
        if self.tmp.is_some() {
            self.file.set_len(size).map_err(werr)?;
        }
        self.file.sync_all().map_err(werr)?;
        if let Some(tmp) = &self.tmp {
            std::fs::rename(tmp, &self.path).map_err(io_err(&self.path))?;
            if let Some(dir) = self.path.parent() {
                let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
                File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
            }
        }
        Ok(())
    }
}

impl Drop for RawFileTarget {
    fn drop(&mut self) {
        // A target dropped before finish (error, cancel) leaves nothing behind.
        if let Some(tmp) = &self.tmp {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// A [`DiskSource`] over bytes in memory, for tests and small inputs.
#[derive(Debug, Clone)]
pub struct MemSource {
    /// Label.
    pub label: String,
    /// The disk's bytes.
    pub data: Vec<u8>,
}

impl DiskSource for MemSource {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|e| *e <= self.size());
        let Some(end) = end else {
            return Err(Error::SourceRead {
                disk: self.label.clone(),
                offset,
                source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past end of disk"),
            });
        };
        buf.copy_from_slice(&self.data[offset as usize..end as usize]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_file_reports_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 8 << 20).unwrap();
        f.write_all_at(&[2u8; 4096], 40 << 20).unwrap();
        f.sync_all().unwrap();
        let s = RawFileSource::open(&p).unwrap();
        assert_eq!(s.size(), 64 << 20);
        let r = s.allocated_ranges().unwrap();
        let total: u64 = r.iter().map(|r| r.end - r.start).sum();
        assert!(total < (2 << 20), "holes not reported: {r:?}");
        assert!(r.iter().any(|r| r.contains(&(8 << 20))) && r.iter().any(|r| r.contains(&(40 << 20))), "{r:?}");
    }

    #[test]
    fn direct_and_buffered_writes_land_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.img");
        let t = RawFileTarget::create(&p).unwrap();
        let size = (3 << 20) + 1000; // a last block that is not 4 KiB long
        let mut want = vec![0u8; size];
        // Source memory at an odd address: the direct path must stage it.
        let src: Vec<u8> = (0..(1 << 20) + 1).map(|i| (i % 251) as u8).collect();
        let a = &src[1..];
        t.reserve(0, 1 << 20).unwrap();
        t.reserve(2 << 20, (1 << 20) + 1000).unwrap();
        t.write_at(0, a).unwrap();
        want[..1 << 20].copy_from_slice(a);
        t.write_at(2 << 20, &a[..1 << 20]).unwrap();
        want[2 << 20..3 << 20].copy_from_slice(&a[..1 << 20]);
        t.write_at(3 << 20, &a[..1000]).unwrap();
        want[3 << 20..].copy_from_slice(&a[..1000]);
        // Aligned memory goes out without the staging copy.
        let mut backing = vec![0u8; (1 << 20) + DIRECT_ALIGN];
        let pad = backing.as_ptr().align_offset(DIRECT_ALIGN);
        let aligned = &mut backing[pad..pad + (1 << 20)];
        aligned.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 241) as u8);
        t.write_at(2 << 20, aligned).unwrap();
        want[2 << 20..3 << 20].copy_from_slice(aligned);
        // Unaligned offset and length in the middle of reserved space.
        t.write_at(4096 + 7, b"unaligned").unwrap();
        want[4096 + 7..4096 + 16].copy_from_slice(b"unaligned");
        t.finish(size as u64).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), want);
        // The hole between the two reserved runs stays a hole.
        let s = RawFileSource::open(&p).unwrap();
        let allocated: u64 = s.allocated_ranges().unwrap().iter().map(|r| r.end - r.start).sum();
        assert!(allocated < size as u64 - (512 << 10), "hole filled: {allocated} bytes allocated");
    }

    #[test]
    fn target_renames_at_finish_and_cleans_up_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.img");
        {
            let t = RawFileTarget::create(&p).unwrap();
            t.write_at(10, b"abc").unwrap();
            assert!(!p.exists());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "partial file left behind");
        let t = RawFileTarget::create(&p).unwrap();
        t.write_at(10, b"abc").unwrap();
        t.finish(100).unwrap();
        let d = std::fs::read(&p).unwrap();
        assert_eq!(d.len(), 100);
        assert_eq!(&d[10..13], b"abc");
    }
}
