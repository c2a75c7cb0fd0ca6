//! The body of the `replicate` fuzz target: what the engine parses that it
//! did not write itself in this process — a sender's state file (it may be
//! damaged on disk), the point names and run descriptions a peer sends.

use std::path::Path;

use alike_core::{ChunkId, Chunking, Extent, Keys};

use crate::meta::{PointName, RunMeta, SenderSummary};
use crate::state::{SenderState, StateDisk};

/// Feeds `data` to every decoder of the engine: as a state file (as it
/// is, and re-sealed with a valid checksum so the fields themselves are
/// reached), as a point name, as the run's description and the sender's
/// summary. It must return, never panic, on any bytes; the public function
/// lets a stable-toolchain test run it too.
pub fn fuzz_one(data: &[u8]) {
    let keys = Keys::for_ids([0x2b; 32]);
    let file = Path::new("fuzz.state");
    let _ = SenderState::decode(data, &keys, file);
    // Re-sealed: a valid magic and checksum around the bytes.
    let mut body = b"\x89ALKRS\r\n".to_vec();
    body.extend_from_slice(data);
    let sum = blake3::hash(&body);
    body.extend_from_slice(sum.as_bytes());
    let _ = SenderState::decode(&body, &keys, file);
    // A valid state with the bytes spliced into its middle.
    let valid = SenderState {
        point: PointName::new(3, &[[1; 32]]).encode(),
        chunking: Chunking::default(),
        disks: vec![StateDisk {
            size: 1 << 20,
            token: Some(b"token".to_vec()),
            extents: vec![Extent { offset: 4096, len: 8192, id: ChunkId([7; 32]) }],
        }],
    }
    .encode(&keys);
    let cut = (data.first().copied().unwrap_or(0) as usize) % (valid.len() - 32);
    let mut spliced = valid[..cut].to_vec();
    spliced.extend_from_slice(data);
    let sum = blake3::hash(&spliced);
    spliced.extend_from_slice(sum.as_bytes());
    let _ = SenderState::decode(&spliced, &keys, file);
    let _ = PointName::decode(data);
    let _ = serde_json::from_slice::<RunMeta>(data);
    let _ = serde_json::from_slice::<SenderSummary>(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz body on stable: mutations of a valid state file and of
    /// point names and descriptions return, never panic.
    #[test]
    fn the_fuzz_body_survives_mutations() {
        let keys = Keys::for_ids([0x2b; 32]);
        let st = SenderState {
            point: b"3:00".to_vec(),
            chunking: Chunking::default(),
            disks: vec![StateDisk { size: 8192, token: None, extents: vec![] }],
        }
        .encode(&keys);
        let seeds: Vec<Vec<u8>> = vec![
            st[8..st.len() - 32].to_vec(),
            b"12:0123456789abcdef0123456789abcdef".to_vec(),
            br#"{"vm":"a","disks":[4096],"chunking":"cdc:16/32/64"}"#.to_vec(),
            br#"{"read_bytes":1,"hashed_bytes":2,"disk_read_bytes":[1],"changed_only":[true]}"#.to_vec(),
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for s in &seeds {
            fuzz_one(s);
            for _ in 0..300 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut b = s.clone();
                let i = (x as usize) % b.len().max(1);
                match x % 4 {
                    0 if !b.is_empty() => b[i] ^= (x >> 8) as u8,
                    1 => b.truncate(i),
                    2 => b.insert(i.min(b.len()), (x >> 16) as u8),
                    _ => b.extend_from_slice(&(x as u32).to_le_bytes()),
                }
                fuzz_one(&b);
            }
        }
    }
}
