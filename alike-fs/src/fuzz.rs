//! What the filesystem fuzz targets share: a device in memory and a walk
//! over what a reader opened. Public (hidden) so the `fuzz/` crate and the
//! stable smoke tests run the same bodies.

use std::sync::Arc;

use crate::{BlockDevice, FileKind, FileSystem, FsError, Result};

/// A device whose bytes are in memory.
pub struct MemDevice(pub Vec<u8>);

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let src = usize::try_from(offset).ok().and_then(|o| self.0.get(o..o.checked_add(buf.len())?));
        match src {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => Err(FsError::OutOfRange {
                device: "memory".into(),
                offset,
                len: buf.len() as u64,
                size: self.0.len() as u64,
            }),
        }
    }
}

/// Lists the root and the directories under it (two levels, at most 64
/// entries each), reads up to 64 KiB of each file, its ranges and links.
pub fn walk(opened: Result<Option<Arc<dyn FileSystem>>>) {
    let Ok(Some(fs)) = opened else { return };
    let _ = fs.label();
    let mut dirs = vec![(fs.root(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = fs.read_dir(dir) else { continue };
        for e in entries.into_iter().take(64) {
            let _ = fs.metadata(e.meta.id);
            match e.meta.kind {
                FileKind::Dir if depth < 2 => dirs.push((e.meta.id, depth + 1)),
                FileKind::File => {
                    let _ = fs.data_ranges(e.meta.id);
                    let mut buf = vec![0u8; 64 << 10];
                    let _ = fs.read_at(e.meta.id, 0, &mut buf);
                    let _ = fs.read_at(e.meta.id, e.meta.size.saturating_sub(100), &mut buf[..4096]);
                }
                FileKind::Symlink => {
                    let _ = fs.read_link(e.meta.id);
                }
                _ => {}
            }
        }
    }
}
