//! Extent ids and the whole-disk digest.
//!
//! An extent's id is BLAKE3 keyed with the replica's id key
//! ([`crate::wire::ReplicaInfo::id_key`]) over the extent's bytes: the
//! replica is its own trust domain, so its ids say nothing to whoever holds
//! a store's ids. The digest of a disk is BLAKE3 over a label, the disk's
//! size and every extent that holds data, in order — a digest of the whole
//! disk's content (ids are content hashes; everything between extents is
//! zero), cheap to compute from a map of ids without reading the disk.

use crate::error::Error;
use crate::wire::Extent;

/// What the digest starts with. Do not edit.
pub const DIGEST_LABEL: &[u8] = b"alike-repl/1 disk digest";

/// The id of an extent's bytes: BLAKE3 keyed with `id_key`.
pub fn extent_id(id_key: &[u8; 32], bytes: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(id_key, bytes).as_bytes()
}

/// The digest of a whole disk, fed its extents in order.
///
/// `BLAKE3(DIGEST_LABEL ‖ size u64 ‖ for each extent: offset u64 ‖ len u32 ‖ id)`,
/// little-endian, extents with data only (a zero run is never an extent).
///
/// ```
/// use alike_repl::{DiskDigest, Extent};
/// let mut d = DiskDigest::new(8192);
/// d.push(&Extent { offset: 4096, len: 4096, id: [7; 32] })?;
/// assert!(d.push(&Extent { offset: 0, len: 4096, id: [7; 32] }).is_err(), "out of order");
/// let digest: [u8; 32] = d.finish();
/// # Ok::<(), alike_repl::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DiskDigest {
    hasher: blake3::Hasher,
    size: u64,
    next: u64,
}

impl DiskDigest {
    /// The digest of a disk of `size` bytes, before any extent.
    pub fn new(size: u64) -> DiskDigest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(DIGEST_LABEL);
        hasher.update(&size.to_le_bytes());
        DiskDigest { hasher, size, next: 0 }
    }

    /// Adds the next extent.
    ///
    /// # Errors
    /// [`Error::Usage`] when it is empty, starts before the previous one
    /// ended or ends past the disk (the digest is unchanged).
    pub fn push(&mut self, e: &Extent) -> Result<(), Error> {
        let end = e.offset.checked_add(u64::from(e.len));
        if e.len == 0 || e.offset < self.next || end.is_none_or(|end| end > self.size) {
            return Err(Error::Usage(format!(
                "digest: extent at {} of {} bytes is empty, before {} or past the disk's end ({})",
                e.offset, e.len, self.next, self.size
            )));
        }
        self.hasher.update(&e.offset.to_le_bytes());
        self.hasher.update(&e.len.to_le_bytes());
        self.hasher.update(&e.id);
        self.next = e.end();
        Ok(())
    }

    /// The digest.
    pub fn finish(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

/// The digest of a disk of `size` bytes holding `extents` (in order).
///
/// # Errors
/// As [`DiskDigest::push`].
pub fn disk_digest<'a>(size: u64, extents: impl IntoIterator<Item = &'a Extent>) -> Result<[u8; 32], Error> {
    let mut d = DiskDigest::new(size);
    for e in extents {
        d.push(e)?;
    }
    Ok(d.finish())
}
