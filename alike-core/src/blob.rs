//! Blob encoding: plaintext → (id, optional zstd, optional AES-256-GCM seal),
//! and back, with every check a reader owes: authentication, decompressed
//! length, and the id re-computed from the plaintext.

use std::cell::RefCell;

use crate::{ChunkId, Error, Keys, Result};

/// What a blob holds. Bound into the seal so one kind cannot pass for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    /// A disk block (or a content-defined chunk of a stream).
    Data = 0,
    /// A block map: the chunk list of a range of a disk.
    Map = 1,
}

impl BlobKind {
    /// The on-disk code.
    pub fn code(self) -> u8 {
        self as u8
    }
    /// From the on-disk code.
    pub fn from_code(c: u8) -> Option<BlobKind> {
        match c {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Map),
            _ => None,
        }
    }
    /// A name for messages.
    pub fn name(self) -> &'static str {
        match self {
            BlobKind::Data => "data",
            BlobKind::Map => "map",
        }
    }
}

/// How a blob's payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compression {
    /// Stored as is (it did not shrink).
    None = 0,
    /// One zstd frame.
    Zstd = 1,
}

impl Compression {
    /// From the on-disk code.
    pub fn from_code(c: u8) -> Option<Compression> {
        match c {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A blob as it is kept in a pack: its id and header fields, and the stored
/// bytes (sealed when the store is encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// Id of the plaintext.
    pub id: ChunkId,
    /// What it holds.
    pub kind: BlobKind,
    /// How the payload is compressed.
    pub compression: Compression,
    /// Plaintext length.
    pub raw_len: u32,
    /// The stored bytes.
    pub bytes: Vec<u8>,
}

/// Associated data bound into every sealed blob.
pub fn blob_aad(id: &ChunkId, kind: BlobKind, compression: Compression, raw_len: u32) -> [u8; 52] {
    let mut a = [0u8; 52];
    a[..14].copy_from_slice(b"alike blob v1\0");
    a[14] = kind.code();
    a[15] = compression as u8;
    a[16..20].copy_from_slice(&raw_len.to_le_bytes());
    a[20..].copy_from_slice(&id.0);
    a
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses with zstd at `level`; `None` when the result would not save at
/// least 1/32 of the input (then the blob is stored raw).
pub fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    if data.len() < 64 {
        return None;
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let comp = &mut c.as_mut()?.1;
        let limit = data.len() - data.len() / 32;
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        comp.compress_to_buffer(data, &mut out).ok()?;
        (out.len() < limit).then_some(out)
    })
}

fn decompress(data: &[u8], raw_len: usize) -> std::result::Result<Vec<u8>, String> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        let dec = d.as_mut().expect("set above");
        let out = dec.decompress(data, raw_len).map_err(|e| format!("zstd: {e}"))?;
        if out.len() != raw_len {
            return Err(format!("decompressed to {} bytes, expected {raw_len}", out.len()));
        }
        Ok(out)
    })
}

/// Turns a plaintext into a stored blob with a known id.
pub fn encode_blob_with_id(
    keys: &Keys,
    id: ChunkId,
    kind: BlobKind,
    plain: &[u8],
    level: Option<i32>,
) -> Result<StoredBlob> {
    let raw_len = u32::try_from(plain.len())
        .map_err(|_| Error::InvalidArgument(format!("blob of {} bytes is too large", plain.len())))?;
    let compressed = level.and_then(|l| compress(plain, l));
    let (compression, payload) = match &compressed {
        Some(c) => (Compression::Zstd, &c[..]),
        None => (Compression::None, plain),
    };
    let aad = blob_aad(&id, kind, compression, raw_len);
    let bytes =
        if keys.is_encrypted() { keys.seal(&aad, payload)? } else { compressed.unwrap_or_else(|| plain.to_vec()) };
    Ok(StoredBlob { id, kind, compression, raw_len, bytes })
}

/// Turns a plaintext into a stored blob: hash, compress, seal.
pub fn encode_blob(keys: &Keys, kind: BlobKind, plain: &[u8], level: Option<i32>) -> Result<StoredBlob> {
    encode_blob_with_id(keys, keys.hash(plain), kind, plain, level)
}

/// Opens a stored blob back into its plaintext, checking authenticity,
/// length and id.
pub fn decode_blob(keys: &Keys, b: &StoredBlob) -> Result<Vec<u8>> {
    let corrupt = |reason: String| Error::CorruptBlob { id: b.id, kind: b.kind.name(), reason };
    let aad = blob_aad(&b.id, b.kind, b.compression, b.raw_len);
    let payload = keys.open(&aad, &b.bytes).map_err(|r| corrupt(r.to_string()))?;
    let plain = match b.compression {
        Compression::None => payload,
        Compression::Zstd => decompress(&payload, b.raw_len as usize).map_err(corrupt)?,
    };
    if plain.len() != b.raw_len as usize {
        return Err(corrupt(format!("{} bytes, expected {}", plain.len(), b.raw_len)));
    }
    if keys.hash(&plain) != b.id {
        return Err(corrupt("content does not match its id".into()));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterKey;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn blob_round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000), rep in 0usize..3, enc: bool, level in proptest::option::of(1i32..4)) {
            let mut plain = data.clone();
            for _ in 0..rep { plain.extend_from_slice(&data); }
            let keys = if enc { Keys::from_master(&MasterKey([9; 32])) } else { Keys::unencrypted() };
            let b = encode_blob(&keys, BlobKind::Data, &plain, level).unwrap();
            prop_assert_eq!(decode_blob(&keys, &b).unwrap(), plain);
        }
    }

    #[test]
    fn compressible_is_compressed_and_random_is_raw() {
        let keys = Keys::unencrypted();
        let b = encode_blob(&keys, BlobKind::Data, &vec![5u8; 65536], Some(1)).unwrap();
        assert_eq!(b.compression, Compression::Zstd);
        assert!(b.bytes.len() < 1000);
        let mut r = vec![0u8; 65536];
        crate::crypto::random_bytes(&mut r).unwrap();
        let b = encode_blob(&keys, BlobKind::Data, &r, Some(1)).unwrap();
        assert_eq!(b.compression, Compression::None);
        assert_eq!(b.bytes, r);
    }

    #[test]
    fn damage_is_named() {
        let keys = Keys::from_master(&MasterKey([2; 32]));
        let mut b = encode_blob(&keys, BlobKind::Data, b"some bytes here", Some(3)).unwrap();
        b.bytes[13] ^= 0x40;
        let e = decode_blob(&keys, &b).unwrap_err().to_string();
        assert!(e.contains(&b.id.to_hex()) && e.contains("authentication"), "{e}");
        // Kind confusion is caught by the seal.
        let mut b = encode_blob(&keys, BlobKind::Data, b"x", None).unwrap();
        b.kind = BlobKind::Map;
        assert!(decode_blob(&keys, &b).is_err());
        // Unencrypted: the id check catches damage.
        let k = Keys::unencrypted();
        let mut b = encode_blob(&k, BlobKind::Data, b"abcdef", None).unwrap();
        b.bytes[0] = b'z';
        assert!(decode_blob(&k, &b).unwrap_err().to_string().contains("does not match"));
    }
}
