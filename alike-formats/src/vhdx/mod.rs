//! VHDX and AVHDX (MS-VHDX v1) images: a reader for single files and
//! differencing chains ([`VhdxSource`], an [`alike_core::DiskSource`]) and a
//! writer of dynamic and differencing files ([`VhdxTarget`], an
//! [`alike_core::DiskTarget`]).
//!
//! # What is read
//!
//! Fixed, dynamic and differencing files with 512- or 4096-byte logical
//! sectors and any block size the specification allows (a power of two
//! from 1 MiB to 256 MiB). Opening checks the file type identifier; both
//! headers (CRC-32C; the valid one with the higher sequence number is
//! current; format version 1 only); both region tables (the first valid one
//! is used; an unknown region marked required is refused); the metadata
//! table (every item within the region, no item over 1 MiB, an unknown
//! item marked required is refused; file parameters, virtual disk size,
//! page 83 data and both sector sizes must be present, and a parent locator
//! for a differencing file); and the BAT (every entry in a valid state,
//! every allocated block inside the file). Payload states NOT_PRESENT and
//! UNDEFINED read from the parent in a differencing file and as zeroes
//! otherwise; ZERO and UNMAPPED (3, or 5 from the 0.95 draft) read as
//! zeroes; PARTIALLY_PRESENT consults the chunk's sector bitmap (one bit
//! per logical sector, least significant bit first; 1 = this file).
//!
//! # The log
//!
//! When the current header's LogGuid is not zero, the log is searched for
//! its active sequence and **replayed in memory**: the replayed sectors form
//! an overlay that every later read of region tables, metadata, BAT,
//! bitmaps and data consults. The file itself is never written. A log
//! whose head entry's FlushedFileOffset lies past the end of the file
//! (a truncated file), or a log region over 64 MiB, is refused with
//! [`VhdxError::Log`]; a LogGuid with no valid entry means nothing was ever
//! applied from the log, and the file is read as it is.
//!
//! # Finding parents
//!
//! A differencing file's parent locator is tried in the specification's
//! order, mapped to this (POSIX) host: `relative_path` against the child's
//! folder (`\` becomes `/`); `volume_path` and `absolute_win32_path` when
//! they have a POSIX meaning (a `\\?\` prefix is dropped and a path with no
//! drive letter such as `\srv\vm\base.vhdx` becomes `/srv/vm/base.vhdx`;
//! drive-letter, UNC and volume-GUID paths have none); then the parent's
//! file name beside the child and in every [`OpenOptions::search_dirs`]
//! folder. A name that does not exist is also matched ignoring ASCII case,
//! as Windows would. A candidate is accepted only if its DataWriteGuid
//! equals `parent_linkage` (or `parent_linkage2`); the first mismatch is
//! reported if no candidate matches ([`VhdxError::ParentLinkageMismatch`]),
//! and [`VhdxError::ParentNotFound`] lists every path tried. A file met
//! twice is a loop ([`VhdxError::ParentLoop`]); chains are limited to
//! [`OpenOptions::max_depth`] files (64 by default).
//!
//! # Where files are read from
//!
//! [`VhdxSource::open`] reads local files. [`VhdxSource::open_in`] reads a
//! chain through a [`Files`] — a positional reader per file ([`ReadAt`]) and
//! the look-up of existing names — so the same reader opens a chain on an
//! SMB share (the Hyper-V adapter, with no mount) or in memory
//! ([`MemoryFiles`]); parents are found by the same rules, in `Files`'
//! namespace.
//!
//! # Change tracking without RCT
//!
//! [`VhdxSource::child_ranges`] lists what the top file alone holds: for a
//! checkpoint's AVHDX, what the VM wrote since the checkpoint. The change
//! token is the top file's DataWriteGuid (after [`CHANGE_TOKEN_PREFIX`]);
//! `changed_ranges(token)` answers when `token` names a file of the chain
//! (the union of what the files above it hold) and says "unknown"
//! otherwise. DataWriteGuid changes at the first visible write of every
//! session that opens the file for writing, so a token is trustworthy for a
//! file nobody writes to — the parent of a checkpoint, or the disk of a VM
//! that is off. Back up the frozen parent after taking a checkpoint.
//!
//! # What is written
//!
//! [`VhdxTarget::create`] writes a dynamic file the way Hyper-V lays one
//! out: both headers (LogGuid zero), both region tables, an empty 1 MiB log
//! at 1 MiB, the metadata region at 2 MiB (file parameters, virtual disk
//! size, a random page 83 GUID, both sector sizes), the BAT at 3 MiB sized
//! by the specification's formula, then payload blocks, each allocated at
//! its first non-zero write under a mutex (the file grows by whole blocks,
//! multiples of 1 MiB) and written with `pwrite`. Defaults: 32 MiB blocks,
//! 512-byte logical and 4096-byte physical sectors.
//! [`VhdxTarget::create_differencing`] writes an AVHDX over a parent
//! (HasParent, a parent locator with `parent_linkage`, `relative_path` and
//! `absolute_win32_path` — the parent's POSIX path with `\` separators on
//! this host — and sector bitmap blocks); sectors not written read from the
//! parent, and a partly written sector is merged with its current content.
//! Everything goes to a temporary file that `finish` syncs and renames into
//! place. [`VhdxTarget::with_data_write_guid`] keeps a chosen DataWriteGuid,
//! so a file rewritten over another parent (a replica's merge) stays the
//! parent its children name.
//!
//! # Limits
//!
//! Memory: the BAT (8 bytes per block, bounded by the file's length), a
//! bounded cache of per-block sector bitmaps (16 MiB), the replayed log
//! (at most the log's size, 64 MiB), and for the writer one bit per
//! logical sector of each allocated block. Nothing is sized by a count read
//! from the file without first checking it against the file's length and
//! the specification's limits. Not supported: parent locator types other
//! than VHDX, user metadata (ignored unless marked required), writing fixed
//! files, and writing through the log (files are written whole, then renamed).
//!
//! # Example
//!
//! ```
//! use alike_core::{DiskSource, DiskTarget};
//! use alike_formats::vhdx::{CreateOptions, VhdxSource, VhdxTarget};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.vhdx");
//! let t = VhdxTarget::create(&path, 64 << 20, &CreateOptions::default()).unwrap();
//! t.write_at(1 << 20, b"hello").unwrap();
//! t.finish(64 << 20).unwrap();
//!
//! let s = VhdxSource::open(&path).unwrap();
//! let mut buf = [0u8; 5];
//! s.read_at(1 << 20, &mut buf).unwrap();
//! assert_eq!(&buf, b"hello");
//! assert_eq!(s.allocated_ranges().unwrap(), vec![0..32 << 20]);
//! ```

mod error;
mod files;
mod format;
mod image;
mod log;
mod reader;
mod writer;

pub use files::{Files, LocalFiles, MemoryFiles, ReadAt};
pub use format::{Guid, ParentLocator};
pub use reader::{CHANGE_TOKEN_PREFIX, DEFAULT_MAX_DEPTH, LayerInfo, OpenOptions, VhdxSource};
pub use writer::{CreateOptions, DEFAULT_BLOCK_SIZE, VhdxTarget};

pub use error::{Result, VhdxError};

use std::path::Path;

/// Creates a differencing VHDX at `path` over `parent`; see
/// [`VhdxTarget::create_differencing`].
///
/// # Errors
/// As [`VhdxTarget::create_differencing`].
pub fn create_differencing(path: impl AsRef<Path>, parent: impl AsRef<Path>) -> Result<VhdxTarget, VhdxError> {
    VhdxTarget::create_differencing(path, parent)
}

/// The fuzz body: parses `data` as a VHDX image held in memory (a
/// differencing image's parent reads as zeroes) and reads what it claims,
/// bounded to a few MiB. Panics only on a broken invariant: allocated ranges
/// not sorted, disjoint and inside the disk, or a read inside the disk
/// failing after a successful open.
pub fn fuzz_one(data: &[u8]) {
    let Ok(src) = VhdxSource::from_bytes(data.to_vec()) else { return };
    let size = src.layers()[0].virtual_size;
    let mut budget: u64 = 4 << 20;
    let mut buf = vec![0u8; 64 * 1024];
    let mut check = |ranges: &[std::ops::Range<u64>], read: bool| {
        let mut prev = 0;
        for r in ranges {
            assert!(r.start < r.end && r.start >= prev && r.end <= size, "bad ranges {ranges:?} (size {size})");
            prev = r.end;
            if !read {
                continue;
            }
            let mut pos = r.start;
            while pos < r.end && budget > 0 {
                let n = (r.end - pos).min(buf.len() as u64).min(budget);
                if let Err(e) = src.read_exact_at(pos, &mut buf[..n as usize]) {
                    panic!("read of {n} bytes at {pos} failed: {e}");
                }
                budget -= n;
                pos += n;
            }
        }
    };
    if let Ok(r) = src.allocated() {
        check(&r, true);
    }
    if let Ok(r) = src.child_ranges() {
        check(&r, false);
    }
    if let Ok(Some(r)) = src.changed_since(&src.token()) {
        assert!(r.is_empty(), "changes since the top file's own token: {r:?}");
    }
    for off in [0, size / 3, size.saturating_sub(4097)] {
        let n = size.saturating_sub(off).min(4097) as usize;
        if let Err(e) = src.read_exact_at(off, &mut buf[..n]) {
            panic!("read of {n} bytes at {off} failed: {e}");
        }
    }
}
