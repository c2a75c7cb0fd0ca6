//! The resume journal: what a replica's first run received, kept so that
//! an attempt cut short (a WAN seed can take days) resumes without sending
//! it again. The incomplete point itself is never a point and is discarded
//! with its process; the journal outlives it until a run commits (or the
//! partial run is abandoned).
//!
//! An append-only file (`docs/replica-dir.md` §8): a header, then one
//! entry per extent received — its length, its id under the replica's key,
//! its bytes. Nothing in it is trusted: a resumed run copies an offered
//! chunk from the journal only after re-hashing the bytes to the offered
//! id, so a torn tail or a damaged entry costs only its sending again.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use alike_core::{ChunkId, DiskSource, Extent, Recover};

use crate::error::{ReplicaError, Result};
use crate::record::MAX_EXTENT;

/// Magic of a resume journal: `0x89 'A' 'L' 'K' 'R' 'J' '\r' '\n'` (do not edit).
const MAGIC: [u8; 8] = [0x89, b'A', b'L', b'K', b'R', b'J', b'\r', b'\n'];
const VERSION: u32 = 1;
const HEADER: u64 = 12;
const ENTRY_HEADER: u64 = 4 + 32;
/// Bytes appended between two syncs.
const SYNC_EVERY: u64 = 64 << 20;

/// What a journal already holds: its bytes, and the extents in them.
pub(crate) type Held = Option<(JournalSource, Vec<Extent>)>;

/// Appends received extents to a journal.
pub(crate) struct JournalWriter {
    path: PathBuf,
    file: Mutex<(File, u64, u64)>,
}

impl JournalWriter {
    /// Opens the journal at `path` for appending after its last whole
    /// entry (a torn tail is cut off), creating it when missing; returns
    /// the writer and what the journal already holds.
    pub(crate) fn open(path: &Path) -> Result<(JournalWriter, Held)> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |what| ReplicaError::io(path, what);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io("opening the resume journal"))?;
        let len = f.metadata().map_err(io("reading the resume journal"))?.len();
        let mut head = [0u8; HEADER as usize];
        let fresh = len < HEADER
            || f.read_exact_at(&mut head, 0).is_err()
            || head[..8] != MAGIC
            || head[8..] != VERSION.to_le_bytes();
        let mut extents = Vec::new();
        let mut end = HEADER;
        if fresh {
            // Not a journal of this version (or none): start afresh.
            f.set_len(0).map_err(io("truncating the resume journal"))?;
            let mut h = MAGIC.to_vec();
            h.extend_from_slice(&VERSION.to_le_bytes());
            f.write_all_at(&h, 0).map_err(io("writing the resume journal"))?;
        } else {
            let mut eh = [0u8; ENTRY_HEADER as usize];
            while end + ENTRY_HEADER <= len {
                if f.read_exact_at(&mut eh, end).is_err() {
                    break;
                }
                let n = u64::from(u32::from_le_bytes(eh[..4].try_into().expect("4 bytes")));
                if n == 0 || n > MAX_EXTENT || end + ENTRY_HEADER + n > len {
                    break;
                }
                let id = ChunkId(eh[4..].try_into().expect("32 bytes"));
                extents.push(Extent { offset: end + ENTRY_HEADER, len: n, id });
                end += ENTRY_HEADER + n;
            }
            if end < len {
                f.set_len(end).map_err(io("cutting the torn tail of the resume journal"))?;
            }
        }
        f.sync_all().map_err(io("syncing the resume journal"))?;
        let held = if extents.is_empty() {
            None
        } else {
            let r = File::open(path).map_err(io("opening the resume journal"))?;
            Some((JournalSource { file: r, size: end, label: path.display().to_string() }, extents))
        };
        Ok((JournalWriter { path: path.to_owned(), file: Mutex::new((f, end, 0)) }, held))
    }

    /// Appends one verified extent.
    pub(crate) fn append(&self, id: &ChunkId, data: &[u8]) -> Result<()> {
        let mut g = self.file.locked();
        let (f, end, unsynced) = &mut *g;
        let mut b = Vec::with_capacity(ENTRY_HEADER as usize + data.len());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&id.0);
        b.extend_from_slice(data);
        f.write_all_at(&b, *end).map_err(ReplicaError::io(&self.path, "appending to the resume journal"))?;
        *end += b.len() as u64;
        *unsynced += b.len() as u64;
        if *unsynced >= SYNC_EVERY {
            f.sync_data().map_err(ReplicaError::io(&self.path, "syncing the resume journal"))?;
            *unsynced = 0;
        }
        Ok(())
    }

    /// Removes the journal: the run committed.
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        // Best effort: what the attempt received survives a clean failure
        // too (a lost link), not only a crash.
        let g = self.file.locked();
        let _ = g.0.sync_data();
        let _ = (&g.0).flush();
    }
}

/// The journal's bytes, to copy extents from (offsets are the file's).
pub(crate) struct JournalSource {
    file: File,
    size: u64,
    label: String,
}

impl DiskSource for JournalSource {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| alike_core::Error::Io { path: PathBuf::from(&self.label), source })
    }
}
