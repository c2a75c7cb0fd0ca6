//! Frames: the stored unit. A frame holds one or more chunks (consecutive
//! new disk blocks, or one block map), concatenated, compressed as one zstd
//! frame and sealed once; every chunk keeps its own id and index entry.
//! Small chunks dedup well; compressing them together in ~1 MiB frames
//! compresses as well as large chunks would (`docs/design/block-size.md`).
//!
//! Reading a chunk: open the frame (authenticate, decompress to its exact
//! length), slice the chunk, re-compute its id.

use std::cell::RefCell;

use crate::{ChunkId, Error, Keys, Result};

/// What a frame's chunks hold. Bound into the seal so one kind cannot pass for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    /// Disk blocks (or content-defined chunks of a stream).
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

/// How a frame's payload is compressed.
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

/// One chunk inside a frame's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameChunk {
    /// The chunk's id.
    pub id: ChunkId,
    /// Offset in the frame's plaintext.
    pub offset: u32,
    /// Length.
    pub len: u32,
}

/// A frame ready to store: header fields, its chunks, and the stored bytes
/// (sealed when the store is encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFrame {
    /// What the chunks hold.
    pub kind: BlobKind,
    /// Payload compression.
    pub compression: Compression,
    /// Plaintext length (sum of chunk lengths).
    pub raw_len: u32,
    /// The chunks, in plaintext order.
    pub chunks: Vec<FrameChunk>,
    /// The stored bytes.
    pub bytes: Vec<u8>,
}

/// Where a stored frame is, as the store reports it. `container` and
/// `offset` are opaque to the engine (a pack id and an offset in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameRef {
    /// The object holding the frame.
    pub container: [u8; 32],
    /// Offset of the stored bytes.
    pub offset: u32,
    /// Stored length.
    pub stored_len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Kind.
    pub kind: BlobKind,
    /// Compression.
    pub compression: Compression,
}

/// Where a chunk is: its frame and its range in the frame's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkLocation {
    /// The frame.
    pub frame: FrameRef,
    /// Offset in the frame's plaintext.
    pub offset: u32,
    /// Length.
    pub len: u32,
}

/// Associated data bound into every sealed frame.
pub fn frame_aad(kind: BlobKind, compression: Compression, raw_len: u32) -> [u8; 21] {
    let mut a = [0u8; 21];
    a[..15].copy_from_slice(b"alike frame v1\0");
    a[15] = kind.code();
    a[16] = compression as u8;
    a[17..].copy_from_slice(&raw_len.to_le_bytes());
    a
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses with zstd at `level`; `None` when the result would not save at
/// least 1/32 of the input (then the frame is stored raw).
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

/// Builds a frame from chunks whose ids are known: concatenates, compresses
/// (`level`, or not at all), seals.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty or over-4-GiB frame; crypto failures.
pub fn encode_frame(
    keys: &Keys,
    kind: BlobKind,
    chunks: &[(ChunkId, &[u8])],
    level: Option<i32>,
) -> Result<StoredFrame> {
    let total: usize = chunks.iter().map(|(_, d)| d.len()).sum();
    let raw_len =
        u32::try_from(total).map_err(|_| Error::InvalidArgument(format!("frame of {total} bytes is too large")))?;
    if chunks.is_empty() {
        return Err(Error::InvalidArgument("a frame needs at least one chunk".into()));
    }
    let mut plain = Vec::with_capacity(total);
    let mut meta = Vec::with_capacity(chunks.len());
    for (id, d) in chunks {
        meta.push(FrameChunk { id: *id, offset: plain.len() as u32, len: d.len() as u32 });
        plain.extend_from_slice(d);
    }
    let compressed = level.and_then(|l| compress(&plain, l));
    let compression = if compressed.is_some() { Compression::Zstd } else { Compression::None };
    let payload = compressed.unwrap_or(plain);
    let aad = frame_aad(kind, compression, raw_len);
    let bytes = match kind {
        _ if !keys.is_encrypted() => payload,
        // Format 3: data to the store's public key, so a write-only key
        // cannot read it back; block maps stay with the blob key, which
        // writers hold (they need the maps for incrementals).
        BlobKind::Data => keys.seal_data(&aad, &payload)?,
        BlobKind::Map => keys.seal(&aad, &payload)?,
    };
    Ok(StoredFrame { kind, compression, raw_len, chunks: meta, bytes })
}

/// Builds a one-chunk frame, hashing the plaintext for its id.
///
/// # Errors
/// As [`encode_frame`].
pub fn encode_single(keys: &Keys, kind: BlobKind, plain: &[u8], level: Option<i32>) -> Result<StoredFrame> {
    encode_frame(keys, kind, &[(keys.hash(plain), plain)], level)
}

fn corrupt(f: &FrameRef, reason: String) -> Error {
    Error::CorruptFrame { container: hex::encode(&f.container[..8]), offset: f.offset, kind: f.kind.name(), reason }
}

/// Opens a frame's stored bytes into its plaintext: authentication (when
/// encrypted) and decompression to exactly `raw_len` bytes.
///
/// # Errors
/// [`Error::CorruptFrame`] naming the frame and the failed check.
pub fn decode_frame(keys: &Keys, f: &FrameRef, stored: &[u8]) -> Result<Vec<u8>> {
    if stored.len() != f.stored_len as usize {
        return Err(corrupt(f, format!("{} stored bytes, expected {}", stored.len(), f.stored_len)));
    }
    let aad = frame_aad(f.kind, f.compression, f.raw_len);
    let payload = match f.kind {
        BlobKind::Data if !keys.can_read_data() => {
            return Err(Error::WriteOnlyKey {
                what: format!("data frame {}@{}", hex::encode(&f.container[..8]), f.offset),
            });
        }
        BlobKind::Data => keys.open_data(&aad, stored),
        BlobKind::Map => keys.open(&aad, stored),
    }
    .map_err(|r| corrupt(f, r.into()))?;
    let plain = match f.compression {
        Compression::None => payload,
        Compression::Zstd => decompress(&payload, f.raw_len as usize).map_err(|r| corrupt(f, r))?,
    };
    if plain.len() != f.raw_len as usize {
        return Err(corrupt(f, format!("{} bytes, expected {}", plain.len(), f.raw_len)));
    }
    Ok(plain)
}

/// Alignment of [`FrameBuf`]'s contents: a file system block, what direct
/// I/O needs of a buffer's address.
pub const FRAME_BUF_ALIGN: usize = 4096;

/// A reusable buffer for a frame's plaintext whose contents start on a
/// [`FRAME_BUF_ALIGN`] boundary: a restore decompresses into it and writes
/// runs of 4 KiB-aligned chunks straight from it with direct I/O (no
/// staging copy), and one buffer per worker serves every frame (no fresh
/// allocation, no page faults on new memory per frame).
#[derive(Debug, Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl FrameBuf {
    /// An empty buffer.
    pub fn new() -> FrameBuf {
        FrameBuf::default()
    }

    /// `len` bytes, aligned, of unspecified contents, to be filled; grows
    /// the buffer if needed (never shrinks it).
    fn prepare(&mut self, len: usize) -> &mut [u8] {
        if self.buf.len() < len + FRAME_BUF_ALIGN {
            // Dropped first: never two large buffers at once.
            self.buf = Vec::new();
            self.buf = vec![0u8; len + FRAME_BUF_ALIGN];
        }
        self.start = self.buf.as_ptr().align_offset(FRAME_BUF_ALIGN);
        self.len = len;
        &mut self.buf[self.start..self.start + len]
    }

    /// The contents (the last frame decoded into it).
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Bytes held (what the buffer costs in memory).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

/// [`decode_frame`] into a reusable aligned buffer, with no copy of its own:
/// the stored bytes are authenticated and decrypted where they lie (`stored`
/// is scratch afterwards) and decompressed straight into `out`. The same
/// checks as [`decode_frame`], in the same order (nothing is decompressed
/// before it authenticates).
///
/// # Errors
/// As [`decode_frame`].
pub fn decode_frame_into<'a>(keys: &Keys, f: &FrameRef, stored: &mut [u8], out: &'a mut FrameBuf) -> Result<&'a [u8]> {
    if stored.len() != f.stored_len as usize {
        return Err(corrupt(f, format!("{} stored bytes, expected {}", stored.len(), f.stored_len)));
    }
    let aad = frame_aad(f.kind, f.compression, f.raw_len);
    let payload = match f.kind {
        BlobKind::Data if !keys.can_read_data() => {
            return Err(Error::WriteOnlyKey {
                what: format!("data frame {}@{}", hex::encode(&f.container[..8]), f.offset),
            });
        }
        BlobKind::Data => keys.open_data_in_place(&aad, stored),
        BlobKind::Map => keys.open_in_place(&aad, stored),
    }
    .map_err(|r| corrupt(f, r.into()))?;
    let payload = &stored[payload];
    let raw_len = f.raw_len as usize;
    match f.compression {
        Compression::None => {
            if payload.len() != raw_len {
                return Err(corrupt(f, format!("{} bytes, expected {raw_len}", payload.len())));
            }
            out.prepare(raw_len).copy_from_slice(payload);
        }
        Compression::Zstd => {
            let dst = out.prepare(raw_len);
            let n = DECOMPRESSOR
                .with(|d| {
                    let mut d = d.borrow_mut();
                    if d.is_none() {
                        *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
                    }
                    let dec = d.as_mut().expect("set above");
                    dec.decompress_to_buffer(payload, dst).map_err(|e| format!("zstd: {e}"))
                })
                .map_err(|r| corrupt(f, r))?;
            if n != raw_len {
                return Err(corrupt(f, format!("decompressed to {n} bytes, expected {raw_len}")));
            }
        }
    }
    Ok(out.as_slice())
}

/// The chunk `id` at `loc` inside an opened frame, after checking its id.
///
/// # Errors
/// [`Error::CorruptBlob`] when the range is outside the frame or the bytes do not hash to `id`.
pub fn chunk_in<'a>(keys: &Keys, frame_plain: &'a [u8], loc: &ChunkLocation, id: &ChunkId) -> Result<&'a [u8]> {
    let end = loc.offset as usize + loc.len as usize;
    let kind = loc.frame.kind.name();
    let data = frame_plain.get(loc.offset as usize..end).ok_or_else(|| Error::CorruptBlob {
        id: *id,
        kind,
        reason: format!("range {}..{end} outside its frame of {} bytes", loc.offset, frame_plain.len()),
    })?;
    if keys.hash(data) != *id {
        return Err(Error::CorruptBlob { id: *id, kind, reason: "content does not match its id".into() });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterKey;
    use proptest::prelude::*;

    fn fref(f: &StoredFrame) -> FrameRef {
        FrameRef {
            container: [0; 32],
            offset: 0,
            stored_len: f.bytes.len() as u32,
            raw_len: f.raw_len,
            kind: f.kind,
            compression: f.compression,
        }
    }

    fn read_all(keys: &Keys, f: &StoredFrame) -> Vec<Vec<u8>> {
        let r = fref(f);
        let plain = decode_frame(keys, &r, &f.bytes).unwrap();
        f.chunks
            .iter()
            .map(|c| {
                chunk_in(keys, &plain, &ChunkLocation { frame: r, offset: c.offset, len: c.len }, &c.id)
                    .unwrap()
                    .to_vec()
            })
            .collect()
    }

    proptest! {
        #[test]
        fn frame_round_trip(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..3000), 1..6), rep: bool, enc: bool, level in proptest::option::of(1i32..4)) {
            let keys = if enc { Keys::from_master(&MasterKey([9; 32])) } else { Keys::unencrypted() };
            let chunks: Vec<Vec<u8>> = chunks.into_iter().map(|c| if rep { c.repeat(3) } else { c }).collect();
            let with_ids: Vec<(ChunkId, &[u8])> = chunks.iter().map(|c| (keys.hash(c), c.as_slice())).collect();
            let f = encode_frame(&keys, BlobKind::Data, &with_ids, level).unwrap();
            prop_assert_eq!(read_all(&keys, &f), chunks);
        }

        /// Decoding into a reused aligned buffer gives what `decode_frame`
        /// gives, for every key kind (none, blob key, format 3's public key)
        /// and both compressions, across frames of changing sizes.
        #[test]
        fn decode_into_matches_decode(frames in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 1..9000), any::<bool>(), proptest::option::of(1i32..4)), 1..5), key in 0u8..3) {
            let keys = match key {
                0 => Keys::unencrypted(),
                1 => Keys::from_master(&MasterKey([9; 32])),
                _ => Keys::from_master_sealing_data(&MasterKey([7; 32])),
            };
            let mut buf = FrameBuf::new();
            for (data, rep, level) in frames {
                let data = if rep { data.repeat(5) } else { data };
                let f = encode_single(&keys, BlobKind::Data, &data, level).unwrap();
                let want = decode_frame(&keys, &fref(&f), &f.bytes).unwrap();
                let mut stored = f.bytes.clone();
                let got = decode_frame_into(&keys, &fref(&f), &mut stored, &mut buf).unwrap();
                prop_assert_eq!(got, &want[..]);
                prop_assert_eq!(got.as_ptr().align_offset(FRAME_BUF_ALIGN), 0);
            }
        }
    }

    #[test]
    fn decode_into_refuses_what_decode_refuses() {
        for keys in [Keys::unencrypted(), Keys::from_master(&MasterKey([2; 32]))] {
            let data: Vec<u8> = (0..20_000u32).map(|i| (i % 7) as u8).collect();
            let f = encode_single(&keys, BlobKind::Data, &data, Some(3)).unwrap();
            let mut buf = FrameBuf::new();
            // A flipped byte: the seal, or zstd's own checks, or the length.
            for at in [0, f.bytes.len() / 2, f.bytes.len() - 1] {
                let mut stored = f.bytes.clone();
                stored[at] ^= 0x10;
                let old = decode_frame(&keys, &fref(&f), &stored);
                let new = decode_frame_into(&keys, &fref(&f), &mut stored.clone(), &mut buf).map(<[u8]>::to_vec);
                match (old, new) {
                    (Err(_), Err(_)) => {}
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "byte {at}"),
                    (a, b) => panic!("byte {at}: decode {a:?}, decode_frame_into {b:?}"),
                }
            }
            // A frame that claims another plaintext length.
            let mut r = fref(&f);
            r.raw_len += 4096;
            assert!(decode_frame_into(&keys, &r, &mut f.bytes.clone(), &mut buf).is_err());
            // Truncated.
            let mut short = f.bytes[..f.bytes.len() - 1].to_vec();
            assert!(decode_frame_into(&keys, &fref(&f), &mut short, &mut buf).is_err());
        }
        // A write-only key never opens a data frame.
        let m = MasterKey([4; 32]);
        let full = Keys::from_master_sealing_data(&m);
        let writer = Keys::from_writer(&crate::WriterKey::from_master(&m));
        let f = encode_single(&full, BlobKind::Data, b"secret data", None).unwrap();
        let e = decode_frame_into(&writer, &fref(&f), &mut f.bytes.clone(), &mut FrameBuf::new()).unwrap_err();
        assert!(matches!(e, Error::WriteOnlyKey { .. }), "{e}");
    }

    #[test]
    fn compressible_is_compressed_and_random_is_raw() {
        let keys = Keys::unencrypted();
        let f = encode_single(&keys, BlobKind::Data, &vec![5u8; 65536], Some(1)).unwrap();
        assert_eq!(f.compression, Compression::Zstd);
        assert!(f.bytes.len() < 1000);
        let mut r = vec![0u8; 65536];
        crate::crypto::random_bytes(&mut r).unwrap();
        let f = encode_single(&keys, BlobKind::Data, &r, Some(1)).unwrap();
        assert_eq!(f.compression, Compression::None);
        assert_eq!(f.bytes, r);
    }

    #[test]
    fn damage_is_named() {
        let keys = Keys::from_master(&MasterKey([2; 32]));
        let mut f = encode_single(&keys, BlobKind::Data, b"some bytes here", Some(3)).unwrap();
        f.bytes[13] ^= 0x40;
        let e = decode_frame(&keys, &fref(&f), &f.bytes).unwrap_err().to_string();
        assert!(e.contains("authentication"), "{e}");
        // Kind confusion is caught by the seal.
        let mut f = encode_single(&keys, BlobKind::Data, b"x", None).unwrap();
        f.kind = BlobKind::Map;
        assert!(decode_frame(&keys, &fref(&f), &f.bytes).is_err());
        // Unencrypted: the id check catches damage, naming the chunk.
        let k = Keys::unencrypted();
        let mut f = encode_single(&k, BlobKind::Data, b"abcdef", None).unwrap();
        f.bytes[0] = b'z';
        let plain = decode_frame(&k, &fref(&f), &f.bytes).unwrap();
        let c = f.chunks[0];
        let e = chunk_in(&k, &plain, &ChunkLocation { frame: fref(&f), offset: c.offset, len: c.len }, &c.id)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match") && e.contains(&c.id.to_hex()), "{e}");
    }
}
