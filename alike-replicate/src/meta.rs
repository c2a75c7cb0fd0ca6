//! What the engines tell each other beyond the protocol's own messages
//! (its `meta` messages, and the point names in hello and ack), specified
//! in `docs/replication-protocol.md` §12.

use alike_core::{Chunking, Extent};
use alike_repl::{DiskDigest, Geometry};
use serde::{Deserialize, Serialize};

use crate::error::{ReplicateError, Result};

/// Meta kind of [`RunMeta`]: the run's VM, disks and chunking, sent before
/// the first disk begins.
pub const META_RUN: u32 = 1;
/// Meta kind of [`SenderSummary`]: what the sender read, sent before the commit.
pub const META_SUMMARY: u32 = 2;

/// The run, as the sender describes it ([`META_RUN`], JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    /// The source VM's name.
    pub vm: String,
    /// The size of each disk, in the VM's order.
    pub disks: Vec<u64>,
    /// How the sender cuts them (`cdc:16/32/64`, `fixed:64`): the replica's.
    pub chunking: String,
}

/// What the sender did, for the receiver's history ([`META_SUMMARY`], JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderSummary {
    /// Bytes read from the sources.
    pub read_bytes: u64,
    /// Bytes of chunks hashed.
    pub hashed_bytes: u64,
    /// Per disk, bytes read.
    pub disk_read_bytes: Vec<u64>,
    /// Whether each disk was read only where its source said it changed.
    pub changed_only: Vec<bool>,
}

/// The protocol's geometry of a chunking.
///
/// # Errors
/// [`ReplicateError::InvalidArgument`] for a chunking the protocol has no
/// geometry for.
pub(crate) fn geometry(c: &Chunking) -> Result<Geometry> {
    match c {
        Chunking::Fixed { block_size } => Ok(Geometry::Fixed { block_size: *block_size }),
        Chunking::Cdc(p) => Ok(Geometry::Cdc {
            min: p.min,
            avg: p.avg,
            max: p.max,
            window: u64::from(alike_core::CDC_WINDOW_BLOCKS) * u64::from(alike_core::CDC_BLOCK),
        }),
        other => Err(ReplicateError::InvalidArgument(format!("chunking {other} has no replication geometry"))),
    }
}

/// The whole-disk digest of the protocol over a map of chunks.
pub(crate) fn digest(size: u64, extents: &[Extent]) -> Result<[u8; 32]> {
    let mut d = DiskDigest::new(size);
    for e in extents {
        d.push(&wire_extent(e)?)?;
    }
    Ok(d.finish())
}

/// A chunk as the protocol carries it.
pub(crate) fn wire_extent(e: &Extent) -> Result<alike_repl::Extent> {
    let len = u32::try_from(e.len)
        .map_err(|_| ReplicateError::InvalidArgument(format!("an extent of {} bytes at {}", e.len, e.offset)))?;
    Ok(alike_repl::Extent { offset: e.offset, len, id: e.id.0 })
}

/// A point as the engines name it in the protocol's hello (`base`) and
/// ack: `"{point}:{fingerprint}"`, the fingerprint being 32 hex digits of
/// BLAKE3 over a label, the point and every disk's digest. Two ends whose
/// names agree hold the same map of chunks of the same point, so the
/// sender may offer only what changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointName {
    /// The point's id.
    pub point: u64,
    /// What its disks' digests fingerprint to.
    pub fingerprint: [u8; 16],
}

impl PointName {
    /// The name of `point` whose disks have `digests`.
    pub fn new(point: u64, digests: &[[u8; 32]]) -> PointName {
        let mut h = blake3::Hasher::new_derive_key("alike-replicate point fingerprint v1");
        h.update(&point.to_le_bytes());
        for d in digests {
            h.update(d);
        }
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&h.finalize().as_bytes()[..16]);
        PointName { point, fingerprint }
    }

    /// The name as it travels.
    pub fn encode(&self) -> Vec<u8> {
        let hex: String = self.fingerprint.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{hex}", self.point).into_bytes()
    }

    /// A name from the wire (`None`: empty, or not one of ours).
    pub fn decode(b: &[u8]) -> Option<PointName> {
        let s = std::str::from_utf8(b).ok()?;
        let (p, f) = s.split_once(':')?;
        let point = p.parse().ok()?;
        if f.len() != 32 {
            return None;
        }
        let mut fingerprint = [0u8; 16];
        for (i, c) in f.as_bytes().chunks(2).enumerate() {
            fingerprint[i] = u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok()?;
        }
        Some(PointName { point, fingerprint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_round_trip() {
        let n = PointName::new(7, &[[1; 32], [2; 32]]);
        let b = n.encode();
        assert!(b.starts_with(b"7:"));
        assert_eq!(PointName::decode(&b), Some(n.clone()));
        assert_ne!(n, PointName::new(7, &[[1; 32], [3; 32]]));
        assert_eq!(PointName::decode(b""), None);
        assert_eq!(PointName::decode(b"7:zz"), None);
    }
}
