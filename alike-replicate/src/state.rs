//! The sender's state between runs: for the last point the receiver
//! acknowledged, each disk's change token (taken before it was read) and
//! the map of chunks the sender offered for it. With them, the next run
//! whose receiver still names that point asks each source what changed
//! since the token, reads and offers only that, and computes each disk's
//! digest from the map without reading the rest.
//!
//! The file (`docs/replication-protocol.md` §12):
//! `MAGIC ‖ version u32 ‖ key check [32] ‖ name len u16 ‖ point name ‖
//! chunking len u16 ‖ chunking ‖ disks u32 ‖ per disk (size u64 ‖ has
//! token u8 ‖ token len u32 ‖ token ‖ extents u64 ‖ per extent (offset
//! u64 ‖ len u32 ‖ id [32])) ‖ BLAKE3 of all before`, little-endian. It is
//! only a cache: a missing, damaged or foreign file means one full read.

use std::path::{Path, PathBuf};

use alike_core::{ChunkId, Chunking, Extent, Keys};

use crate::error::{ReplicateError, Result};

/// Magic of a sender state file: `0x89 'A' 'L' 'K' 'R' 'S' '\r' '\n'` (do not edit).
const MAGIC: [u8; 8] = [0x89, b'A', b'L', b'K', b'R', b'S', b'\r', b'\n'];
const VERSION: u32 = 1;
/// Hashed under the replica's id key: which replica a state belongs to (do not edit).
const KEY_CHECK: &[u8] = b"alike-replicate sender state key check v1";
/// The largest state file read (a map of 2^24 chunks per disk and more is not ours).
const MAX_STATE: u64 = 4 << 30;

/// One disk of a [`SenderState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDisk {
    /// Virtual size.
    pub size: u64,
    /// The source's change token when it was read (`None`: it has none).
    pub token: Option<Vec<u8>>,
    /// The chunks offered for the point, in order.
    pub extents: Vec<Extent>,
}

/// What the sender remembers of the last acknowledged point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderState {
    /// The point's name ([`crate::PointName::encode`] of the sender's own maps).
    pub point: Vec<u8>,
    /// How the disks were cut.
    pub chunking: Chunking,
    /// The disks.
    pub disks: Vec<StateDisk>,
}

fn key_check(keys: &Keys) -> ChunkId {
    keys.hash(KEY_CHECK)
}

impl SenderState {
    /// The file's bytes, bound to the replica whose id key `keys` hold.
    pub fn encode(&self, keys: &Keys) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&key_check(keys).0);
        b.extend_from_slice(&(self.point.len() as u16).to_le_bytes());
        b.extend_from_slice(&self.point);
        let c = self.chunking.to_string();
        b.extend_from_slice(&(c.len() as u16).to_le_bytes());
        b.extend_from_slice(c.as_bytes());
        b.extend_from_slice(&(self.disks.len() as u32).to_le_bytes());
        for d in &self.disks {
            b.extend_from_slice(&d.size.to_le_bytes());
            let t = d.token.as_deref().unwrap_or_default();
            b.push(u8::from(d.token.is_some()));
            b.extend_from_slice(&(t.len() as u32).to_le_bytes());
            b.extend_from_slice(t);
            b.extend_from_slice(&(d.extents.len() as u64).to_le_bytes());
            for e in &d.extents {
                b.extend_from_slice(&e.offset.to_le_bytes());
                b.extend_from_slice(&(e.len as u32).to_le_bytes());
                b.extend_from_slice(&e.id.0);
            }
        }
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    /// Reads the file's bytes; `None` when they belong to another replica.
    ///
    /// # Errors
    /// [`ReplicateError::State`]: bad magic or version, checksum, or shape.
    pub fn decode(bytes: &[u8], keys: &Keys, file: &Path) -> Result<Option<SenderState>> {
        let bad = |reason: &str| ReplicateError::State { file: file.to_owned(), reason: reason.to_owned() };
        if bytes.len() < 8 + 4 + 32 + 32 || bytes[..8] != MAGIC {
            return Err(bad("not a sender state file"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err(bad("checksum mismatch: the file is damaged"));
        }
        let mut r = Reader { b: body, at: 8 };
        if r.u32().ok_or_else(|| bad("truncated"))? != VERSION {
            return Err(bad("another version of the state file"));
        }
        if r.take(32).ok_or_else(|| bad("truncated"))? != key_check(keys).0 {
            return Ok(None);
        }
        let n = usize::from(r.u16().ok_or_else(|| bad("truncated"))?);
        let point = r.take(n).ok_or_else(|| bad("truncated"))?.to_vec();
        let n = usize::from(r.u16().ok_or_else(|| bad("truncated"))?);
        let chunking = r
            .take(n)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<Chunking>().ok())
            .ok_or_else(|| bad("bad chunking"))?;
        let ndisks = r.u32().ok_or_else(|| bad("truncated"))?;
        let mut disks = Vec::new();
        for _ in 0..ndisks {
            let size = r.u64().ok_or_else(|| bad("truncated"))?;
            let has = r.take(1).ok_or_else(|| bad("truncated"))?[0] == 1;
            let n = r.u32().ok_or_else(|| bad("truncated"))? as usize;
            let t = r.take(n).ok_or_else(|| bad("truncated"))?.to_vec();
            let count = r.u64().ok_or_else(|| bad("truncated"))?;
            if count > (r.left() / 44) as u64 {
                return Err(bad("more extents than the file holds"));
            }
            let mut extents = Vec::with_capacity(count as usize);
            let mut at = 0;
            for _ in 0..count {
                let offset = r.u64().ok_or_else(|| bad("truncated"))?;
                let len = u64::from(r.u32().ok_or_else(|| bad("truncated"))?);
                let id = ChunkId(r.take(32).ok_or_else(|| bad("truncated"))?.try_into().expect("32 bytes"));
                if offset < at || len == 0 || offset.checked_add(len).is_none_or(|e| e > size) {
                    return Err(bad("extents out of order or past their disk"));
                }
                at = offset + len;
                extents.push(Extent { offset, len, id });
            }
            disks.push(StateDisk { size, token: has.then_some(t), extents });
        }
        if r.left() != 0 {
            return Err(bad("trailing bytes"));
        }
        Ok(Some(SenderState { point, chunking, disks }))
    }

    /// Loads the state at `file` for the replica of `keys`: `None` when
    /// there is none, it is another replica's, or it cannot be read (a
    /// warning says why; the run then reads everything).
    pub fn load(file: &Path, keys: &Keys) -> Option<SenderState> {
        match std::fs::metadata(file) {
            Err(_) => return None,
            Ok(m) if !m.is_file() || m.len() > MAX_STATE => {
                tracing::warn!(file = %file.display(), "not a state file; ignored");
                return None;
            }
            Ok(_) => {}
        }
        match std::fs::read(file).map_err(|e| ReplicateError::State { file: file.to_owned(), reason: e.to_string() }) {
            Ok(b) => match SenderState::decode(&b, keys, file) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "sender state ignored: this run reads every disk");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "sender state ignored: this run reads every disk");
                None
            }
        }
    }

    /// Writes the state to `file` (temporary file, sync, rename, sync of the folder).
    ///
    /// # Errors
    /// [`ReplicateError::State`] when it cannot be written.
    pub fn save(&self, file: &Path, keys: &Keys) -> Result<()> {
        let err = |e: std::io::Error| ReplicateError::State { file: file.to_owned(), reason: e.to_string() };
        let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp: PathBuf = dir.join(format!(
            ".{}.{}.tmp",
            file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            std::process::id()
        ));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&self.encode(keys)).and_then(|()| f.sync_all()).map_err(err)?;
        }
        std::fs::rename(&tmp, file).map_err(err)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_knows_its_replica() {
        let keys = Keys::for_ids([3; 32]);
        let s = SenderState {
            point: b"4:00".to_vec(),
            chunking: Chunking::default(),
            disks: vec![
                StateDisk {
                    size: 1 << 20,
                    token: Some(b"tok".to_vec()),
                    extents: vec![Extent { offset: 4096, len: 8192, id: ChunkId([9; 32]) }],
                },
                StateDisk { size: 4096, token: None, extents: vec![] },
            ],
        };
        let b = s.encode(&keys);
        let f = Path::new("s.state");
        assert_eq!(SenderState::decode(&b, &keys, f).unwrap(), Some(s.clone()));
        assert_eq!(SenderState::decode(&b, &Keys::for_ids([4; 32]), f).unwrap(), None);
        for i in [0, 10, b.len() / 2, b.len() - 1] {
            let mut d = b.clone();
            d[i] ^= 1;
            assert!(SenderState::decode(&d, &keys, f).is_err());
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x/s.state");
        s.save(&file, &keys).unwrap();
        assert_eq!(SenderState::load(&file, &keys), Some(s));
        std::fs::write(&file, b"junk").unwrap();
        assert_eq!(SenderState::load(&file, &keys), None);
    }
}
