//! Where a chain's files are read from: the seam that lets the same reader
//! open a VHDX/AVHDX chain on local disk, on an SMB share (the Hyper-V
//! adapter reads a host's checkpointed disks over SMB, with no mount) or in
//! memory. A [`Files`] opens a path as a positional reader ([`ReadAt`]) and
//! says which existing file a candidate path names (parents are looked for
//! by the paths in their child's locator, ignoring ASCII case as Windows
//! does).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One file's bytes, read by position. Implementations must be safe to
/// call from several threads at once (the reader is `Sync`).
pub trait ReadAt: Send + Sync + std::fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of
    /// the file (0 at or past it).
    ///
    /// # Errors
    /// The storage's I/O error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;

    /// The file's length in bytes.
    ///
    /// # Errors
    /// The storage's I/O error.
    fn size(&self) -> std::io::Result<u64>;
}

/// A folder tree the chain's files live in.
pub trait Files: Send + Sync {
    /// Opens the file at `path`.
    ///
    /// # Errors
    /// The storage's I/O error (`NotFound` for a missing file).
    fn open(&self, path: &Path) -> std::io::Result<Arc<dyn ReadAt>>;

    /// The path of the existing file `path` names: `path` itself, or a file
    /// in the same folder whose name matches ignoring ASCII case; `None`
    /// when there is none.
    fn existing(&self, path: &Path) -> Option<PathBuf>;

    /// An identity of an existing file, equal for two paths that name the
    /// same file (a parent loop is detected by it).
    fn identity(&self, path: &Path) -> Option<String> {
        Some(path.to_string_lossy().into_owned())
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.metadata().map(|m| m.len())
    }
}

/// The local file system (what [`super::VhdxSource::open`] uses).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalFiles;

impl Files for LocalFiles {
    fn open(&self, path: &Path) -> std::io::Result<Arc<dyn ReadAt>> {
        Ok(Arc::new(File::open(path)?))
    }

    fn existing(&self, p: &Path) -> Option<PathBuf> {
        if p.is_file() {
            return Some(p.to_owned());
        }
        let name = p.file_name()?.to_str()?;
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .map(|e| e.path())
            .filter(|p| p.is_file())
    }

    fn identity(&self, p: &Path) -> Option<String> {
        std::fs::metadata(p).ok().map(|m| format!("{}:{}", m.dev(), m.ino()))
    }
}

/// Files held in memory, by path (tests, and images received whole).
#[derive(Debug, Clone, Default)]
pub struct MemoryFiles {
    files: HashMap<PathBuf, Arc<Vec<u8>>>,
}

#[derive(Debug)]
struct MemoryFile(Arc<Vec<u8>>);

impl ReadAt for MemoryFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else { return Ok(0) };
        let Some(src) = self.0.get(start..) else { return Ok(0) };
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

impl MemoryFiles {
    /// No files.
    pub fn new() -> MemoryFiles {
        MemoryFiles::default()
    }

    /// Adds (or replaces) the file at `path`.
    pub fn insert(&mut self, path: impl Into<PathBuf>, bytes: Vec<u8>) {
        self.files.insert(path.into(), Arc::new(bytes));
    }
}

impl Files for MemoryFiles {
    fn open(&self, path: &Path) -> std::io::Result<Arc<dyn ReadAt>> {
        let f = self.files.get(path).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        Ok(Arc::new(MemoryFile(Arc::clone(f))))
    }

    fn existing(&self, p: &Path) -> Option<PathBuf> {
        if self.files.contains_key(p) {
            return Some(p.to_owned());
        }
        let (dir, name) = (p.parent()?, p.file_name()?.to_str()?);
        self.files
            .keys()
            .find(|k| {
                k.parent() == Some(dir)
                    && k.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhdx::{OpenOptions, VhdxSource, VhdxTarget};
    use alike_core::{DiskSource as _, DiskTarget as _};

    /// A chain opened from memory reads as the same chain opened from disk,
    /// and finds its parent through the locator ignoring case.
    #[test]
    fn a_chain_opens_from_memory_like_from_disk() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("disk.vhdx");
        let t = VhdxTarget::create(&base, 8 << 20, &Default::default()).unwrap();
        t.write_at(0, &[1; 8192]).unwrap();
        t.write_at(5 << 20, &[2; 512]).unwrap();
        t.finish(8 << 20).unwrap();
        let child = d.path().join("disk_A1.avhdx");
        let t = VhdxTarget::create_differencing(&child, &base).unwrap();
        t.write_at(4096, &[3; 4096]).unwrap();
        t.finish(8 << 20).unwrap();

        let mut m = MemoryFiles::new();
        m.insert("/share/VMs/DISK.VHDX", std::fs::read(&base).unwrap());
        m.insert("/share/VMs/disk_A1.avhdx", std::fs::read(&child).unwrap());
        let mem = VhdxSource::open_in("/share/VMs/disk_A1.avhdx", &m, &OpenOptions::default()).unwrap();
        let disk = VhdxSource::open(&child).unwrap();
        assert_eq!(mem.layers().len(), 2);
        assert_eq!(mem.layers()[1].path, PathBuf::from("/share/VMs/DISK.VHDX"));
        let (mut a, mut b) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
        mem.read_at(0, &mut a).unwrap();
        disk.read_at(0, &mut b).unwrap();
        assert!(a == b);
        assert_eq!(&a[4096..8192], &[3; 4096][..]);
        assert_eq!(mem.allocated_ranges().unwrap(), disk.allocated_ranges().unwrap());
        assert_eq!(mem.child_ranges().unwrap(), disk.child_ranges().unwrap());

        // Without the parent: the error lists what was tried.
        let mut lone = MemoryFiles::new();
        lone.insert("/share/VMs/disk_A1.avhdx", std::fs::read(&child).unwrap());
        let e = VhdxSource::open_in("/share/VMs/disk_A1.avhdx", &lone, &OpenOptions::default()).unwrap_err();
        assert!(matches!(e, crate::vhdx::VhdxError::ParentNotFound { .. }), "{e}");
    }
}
