//! Versions (restore points): the VM's identity and configuration, and per
//! disk the list of block maps that name every block's chunk.
//!
//! A disk's chunk list is cut into block maps of [`BLOCKS_PER_MAP`] blocks,
//! each stored as a deduplicated blob; a version lists map ids. Unchanged
//! regions of a disk give identical maps, so an incremental version costs a
//! few map blobs, not a full chunk list.

use serde::{Deserialize, Serialize};

use crate::{CdcParams, ChunkId, Error, Result};

/// Blocks covered by one block map (256 MiB of disk at 64 KiB blocks).
pub const BLOCKS_PER_MAP: u32 = 4096;

/// A NIC of a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NicInfo {
    /// Device position (e.g. "0").
    pub device: String,
    /// Network name or uuid.
    pub network: Option<String>,
    /// MAC address.
    pub mac: Option<String>,
}

/// Who the version belongs to and how the VM was configured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VmInfo {
    /// VM name (the key that groups versions).
    pub name: String,
    /// Hypervisor uuid of the VM, when known.
    pub uuid: Option<String>,
    /// "xen", "hyperv", or "raw" for plain images.
    pub hypervisor: String,
    /// Virtual CPUs.
    pub vcpus: Option<u32>,
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
    /// Network interfaces.
    #[serde(default)]
    pub nics: Vec<NicInfo>,
    /// Free-form configuration (boot order, platform flags…).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl VmInfo {
    /// A VM known only by name, backed up from plain images.
    pub fn named(name: impl Into<String>) -> VmInfo {
        VmInfo { name: name.into(), hypervisor: "raw".into(), ..VmInfo::default() }
    }
}

/// One disk of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DiskRecord {
    /// Position of the disk in the VM (0-based).
    pub position: u32,
    /// Source label (path, VDI uuid…).
    pub label: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Blocks per map.
    pub blocks_per_map: u32,
    /// Bytes in non-hole blocks.
    pub data_bytes: u64,
    /// Bytes read from the source for this version.
    pub read_bytes: u64,
    /// Plaintext bytes of chunks this version added to the store.
    pub new_bytes: u64,
    /// Stored (compressed, sealed) bytes this version added.
    pub new_stored_bytes: u64,
    /// Whether only changed ranges were read (true) or everything allocated.
    pub incremental: bool,
    /// Why a change-tracked read fell back to a full read, if it did.
    pub fallback_reason: Option<String>,
    /// The source's change token after this backup, hex.
    pub change_token: Option<String>,
    /// Block map ids, in disk order.
    pub maps: Vec<ChunkId>,
    /// Content-defined chunking (format 2): the chunk sizes the disk was
    /// cut with; its maps are [`crate::ExtentMap`]s over 4 KiB blocks.
    /// Absent: fixed blocks of `block_size`, bitmap maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking: Option<CdcParams>,
}

impl DiskRecord {
    /// Number of blocks of the disk.
    pub fn block_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.block_size))
    }
}

/// A version (restore point) as stored in its manifest object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Manifest {
    /// Manifest schema version: 1, or 2 when a disk is content-defined.
    pub schema: u32,
    /// The VM.
    pub vm: VmInfo,
    /// Creation time, milliseconds since the Unix epoch (UTC).
    pub time_ms: i64,
    /// The version this one was made against (its id), if any.
    pub parent: Option<String>,
    /// Host that wrote it.
    pub host: Option<String>,
    /// Disks in VM order.
    pub disks: Vec<DiskRecord>,
    /// For a copy (a vaulted version): the version it was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// Where a copied version came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The source store's id (hex).
    pub store: String,
    /// The source version's id.
    pub version: String,
}

impl Manifest {
    /// Encodes as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serializes")
    }
    /// The schema a manifest with these disks is written with.
    pub fn schema_for(disks: &[DiskRecord]) -> u32 {
        if disks.iter().any(|d| d.chunking.is_some()) { 2 } else { 1 }
    }
    /// Decodes from JSON.
    ///
    /// # Errors
    /// [`Error::Malformed`] when the JSON does not describe a manifest.
    pub fn from_json(bytes: &[u8], what: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
            what: what.to_string(),
            offset: e.column() as u64,
            reason: e.to_string(),
        })?;
        if !(1..=2).contains(&m.schema) {
            return Err(Error::Malformed {
                what: what.into(),
                offset: 0,
                reason: format!("manifest schema {} is not supported (this build knows 1 and 2)", m.schema),
            });
        }
        if m.schema == 1 && m.disks.iter().any(|d| d.chunking.is_some()) {
            return Err(Error::Malformed {
                what: what.into(),
                offset: 0,
                reason: "a schema 1 manifest with a content-defined disk".into(),
            });
        }
        for d in &m.disks {
            d.check_geometry(&format!("{what}, disk {}", d.position))?;
        }
        Ok(m)
    }
}

/// The chunk of every block in one map's range; `None` is a hole (zeroes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockMap {
    /// One entry per block.
    pub entries: Vec<Option<ChunkId>>,
}

impl BlockMap {
    /// Encodes: `u32 LE count ‖ bitmap (bit i set = block i has data, LSB first) ‖ ids of set bits`.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.entries.len();
        let mut out = Vec::with_capacity(4 + n.div_ceil(8) + 32 * n);
        out.extend_from_slice(&(n as u32).to_le_bytes());
        let mut bitmap = vec![0u8; n.div_ceil(8)];
        for (i, e) in self.entries.iter().enumerate() {
            if e.is_some() {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        out.extend_from_slice(&bitmap);
        for id in self.entries.iter().flatten() {
            out.extend_from_slice(&id.0);
        }
        out
    }

    /// Decodes what [`BlockMap::encode`] wrote, checking every length.
    ///
    /// # Errors
    /// [`Error::Malformed`] naming the offset of the first inconsistency.
    pub fn decode(b: &[u8], what: &str) -> Result<BlockMap> {
        let bad =
            |offset: usize, reason: String| Error::Malformed { what: what.to_string(), offset: offset as u64, reason };
        if b.len() < 4 {
            return Err(bad(0, "shorter than its count".into()));
        }
        let n = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
        if n > 1 << 24 {
            return Err(bad(0, format!("{n} entries is implausible")));
        }
        let bm_end = 4 + n.div_ceil(8);
        if b.len() < bm_end {
            return Err(bad(b.len(), "truncated bitmap".into()));
        }
        let bitmap = &b[4..bm_end];
        let set = (0..n).filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0).count();
        if b.len() != bm_end + 32 * set {
            return Err(bad(bm_end, format!("{} id bytes for {set} data blocks", b.len() - bm_end)));
        }
        if n % 8 != 0 && bitmap[n / 8] >> (n % 8) != 0 {
            return Err(bad(4 + n / 8, "bits set past the last entry".into()));
        }
        let mut ids = b[bm_end..].chunks_exact(32);
        let entries = (0..n)
            .map(|i| {
                (bitmap[i / 8] & (1 << (i % 8)) != 0)
                    .then(|| ChunkId(ids.next().expect("counted").try_into().expect("32")))
            })
            .collect();
        Ok(BlockMap { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn map_round_trip(v in proptest::collection::vec(proptest::option::of(any::<[u8; 32]>()), 0..300)) {
            let m = BlockMap { entries: v.into_iter().map(|o| o.map(ChunkId)).collect() };
            prop_assert_eq!(BlockMap::decode(&m.encode(), "t").unwrap(), m);
        }

        #[test]
        fn map_decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = BlockMap::decode(&b, "t");
        }
    }
}
