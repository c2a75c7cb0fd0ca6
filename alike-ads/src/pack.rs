//! Pack objects: many frames in one object, with a sealed trailer that lists
//! them, so the index can always be rebuilt from packs alone.
//!
//! Layout (`docs/format.md`): header (12) ‖ salt (16) ‖ frames ‖ sealed trailer ‖ footer
//! (16: trailer length u32, entry count u32, magic). A pack's name is the
//! BLAKE3 hash of its bytes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use alike_core::{BlobKind, ChunkId, ChunkLocation, Compression, FrameRef, Keys, StoredFrame};

use crate::backend::{Backend, random_hex};
use crate::error::io;
use crate::format::{HEADER_LEN, ObjectKind, check_header, header};
use crate::{Error, Result};

/// Bytes of one trailer/index entry.
pub const ENTRY_LEN: usize = 54;
/// Bytes of the footer.
pub const FOOTER_LEN: usize = 16;
/// Random bytes after the header: no two packs ever share a name (content
/// hash), even with identical frames in an unencrypted store — so a pack a
/// GC condemned can never be re-created under the same name by a writer.
pub const SALT_LEN: usize = 16;
/// Where the first frame starts.
pub const FRAMES_START: u64 = (HEADER_LEN + SALT_LEN) as u64;
/// Packs never grow past this (offsets are u32).
pub const MAX_PACK_SIZE: u64 = 1 << 31;

/// Where a chunk lives: its frame in the pack, and its range in the frame's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// Chunk id.
    pub id: ChunkId,
    /// Kind of the frame's chunks.
    pub kind: BlobKind,
    /// Frame compression.
    pub compression: Compression,
    /// Offset of the frame's stored bytes in the pack.
    pub frame_offset: u32,
    /// Stored length of the frame.
    pub frame_stored_len: u32,
    /// Plaintext length of the frame.
    pub frame_raw_len: u32,
    /// Offset of the chunk in the frame's plaintext.
    pub chunk_offset: u32,
    /// Length of the chunk.
    pub chunk_len: u32,
}

impl PackEntry {
    /// Appends the 54-byte encoding.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.push(self.kind.code());
        out.push(self.compression as u8);
        for v in [self.frame_offset, self.frame_stored_len, self.frame_raw_len, self.chunk_offset, self.chunk_len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// Decodes 54 bytes; `None` if a code is unknown.
    pub fn decode(b: &[u8; ENTRY_LEN]) -> Option<PackEntry> {
        let u = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        Some(PackEntry {
            id: ChunkId(b[..32].try_into().expect("32")),
            kind: BlobKind::from_code(b[32])?,
            compression: Compression::from_code(b[33])?,
            frame_offset: u(34),
            frame_stored_len: u(38),
            frame_raw_len: u(42),
            chunk_offset: u(46),
            chunk_len: u(50),
        })
    }

    /// The chunk's location, for the engine.
    pub fn location(&self, pack: [u8; 32]) -> ChunkLocation {
        ChunkLocation {
            frame: FrameRef {
                container: pack,
                offset: self.frame_offset,
                stored_len: self.frame_stored_len,
                raw_len: self.frame_raw_len,
                kind: self.kind,
                compression: self.compression,
            },
            offset: self.chunk_offset,
            len: self.chunk_len,
        }
    }
}

/// Decodes a run of entries, checking each chunk lies inside its frame and,
/// when `body_end` is known, each frame inside `[HEADER_LEN, body_end)` of its pack.
pub(crate) fn decode_entries(b: &[u8], body_end: Option<u64>, object: &str) -> Result<Vec<PackEntry>> {
    if b.len() % ENTRY_LEN != 0 {
        return Err(Error::Corrupt {
            object: object.into(),
            reason: format!("entry table of {} bytes is not a multiple of {ENTRY_LEN}", b.len()),
        });
    }
    b.chunks_exact(ENTRY_LEN)
        .enumerate()
        .map(|(i, c)| {
            let bad = |r: &str| Error::Corrupt { object: object.into(), reason: format!("entry {i}: {r}") };
            let e =
                PackEntry::decode(c.try_into().expect("54")).ok_or_else(|| bad("unknown kind or compression code"))?;
            if u64::from(e.chunk_offset) + u64::from(e.chunk_len) > u64::from(e.frame_raw_len) {
                return Err(bad("chunk outside its frame"));
            }
            let stop = u64::from(e.frame_offset) + u64::from(e.frame_stored_len);
            if u64::from(e.frame_offset) < FRAMES_START || body_end.is_some_and(|end| stop > end) {
                return Err(bad("frame outside the pack's frame area"));
            }
            Ok(e)
        })
        .collect()
}

fn trailer_aad(count: u32) -> Vec<u8> {
    let mut a = b"alike pack trailer v1\0".to_vec();
    a.extend_from_slice(&count.to_le_bytes());
    a
}

/// The store key of a pack.
pub fn pack_key(id: &[u8; 32]) -> String {
    let h = hex::encode(id);
    format!("packs/{}/{}", &h[..2], h)
}

/// Builds one pack in a local spool file.
///
/// Space for a frame is reserved in order ([`PackWriter::reserve`], under
/// whatever lock the caller shares the writer with) and its bytes written
/// after that lock is released ([`FrameSlot::write`]), so several threads
/// copy their frames into one pack side by side; [`PackWriter::finish`]
/// waits for every reserved frame, then writes the trailer and hashes the
/// pack for its id (on the finishing thread, not under the lock).
pub struct PackWriter {
    path: PathBuf,
    file: Arc<File>,
    writes: Arc<Writes>,
    len: u64,
    entries: Vec<PackEntry>,
}

/// Frames reserved in a pack and not yet written, and the first failure
/// of a write.
#[derive(Default)]
struct Writes {
    state: Mutex<(usize, Option<(std::io::ErrorKind, String)>)>,
    done: Condvar,
}

impl Writes {
    fn end(&self, failure: Option<&std::io::Error>) {
        let mut g = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.0 -= 1;
        if let Some(e) = failure {
            g.1.get_or_insert((e.kind(), e.to_string()));
        }
        self.done.notify_all();
    }
    /// Waits until no reserved frame is being written; the first failure.
    fn wait(&self) -> Option<std::io::Error> {
        let mut g = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while g.0 > 0 {
            g = self.done.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        g.1.as_ref().map(|(k, m)| std::io::Error::new(*k, m.clone()))
    }
}

/// Where one frame's bytes go in a pack, reserved by
/// [`PackWriter::reserve`]. Written once with [`FrameSlot::write`]; a slot
/// dropped unwritten fails the pack (its finish), never leaves a hole in it.
#[must_use = "a reserved frame must be written"]
pub struct FrameSlot {
    file: Arc<File>,
    path: PathBuf,
    offset: u64,
    writes: Arc<Writes>,
    written: bool,
}

impl FrameSlot {
    /// Writes the frame's bytes at their place in the pack.
    pub fn write(mut self, bytes: &[u8]) -> Result<()> {
        let r = self.file.write_all_at(bytes, self.offset);
        self.written = true;
        self.writes.end(r.as_ref().err());
        r.map_err(io(&self.path))
    }
}

impl Drop for FrameSlot {
    fn drop(&mut self) {
        if !self.written {
            self.writes.end(Some(&std::io::Error::other("a frame reserved in the pack was never written")));
        }
    }
}

impl PackWriter {
    /// Starts a pack in `spool` with a random salt.
    pub fn new(spool: &Path) -> Result<PackWriter> {
        let mut salt = [0u8; SALT_LEN];
        alike_core::random_bytes(&mut salt)?;
        Self::with_salt(spool, salt)
    }

    /// Starts a pack with a given salt: for golden vectors only (a repeated
    /// salt can give two writers the same pack name).
    pub fn with_salt(spool: &Path, salt: [u8; SALT_LEN]) -> Result<PackWriter> {
        let path = spool.join(format!("pack-{}.tmp", random_hex(12)?));
        let f = OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io(&path))?;
        let mut start = header(ObjectKind::Pack).to_vec();
        start.extend_from_slice(&salt);
        f.write_all_at(&start, 0).map_err(io(&path))?;
        Ok(PackWriter {
            path,
            file: Arc::new(f),
            writes: Arc::new(Writes::default()),
            len: start.len() as u64,
            entries: Vec::new(),
        })
    }

    /// The spool file the pack is written to (also [`FinishedPack::path`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Chunk entries so far.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Whether no frame was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reserves the frame's place in the pack and records its chunks'
    /// entries; its bytes are written with the returned slot.
    pub fn reserve(&mut self, f: &StoredFrame) -> Result<FrameSlot> {
        let offset = self.len;
        if offset + f.bytes.len() as u64 > MAX_PACK_SIZE {
            return Err(Error::InvalidArgument("pack would exceed 2 GiB".into()));
        }
        for c in &f.chunks {
            self.entries.push(PackEntry {
                id: c.id,
                kind: f.kind,
                compression: f.compression,
                frame_offset: offset as u32,
                frame_stored_len: f.bytes.len() as u32,
                frame_raw_len: f.raw_len,
                chunk_offset: c.offset,
                chunk_len: c.len,
            });
        }
        self.len += f.bytes.len() as u64;
        self.writes.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 += 1;
        Ok(FrameSlot {
            file: self.file.clone(),
            path: self.path.clone(),
            offset,
            writes: self.writes.clone(),
            written: false,
        })
    }

    /// Appends a frame (reserves and writes it); returns the entries of its chunks.
    pub fn add(&mut self, f: &StoredFrame) -> Result<&[PackEntry]> {
        let first = self.entries.len();
        self.reserve(f)?.write(&f.bytes)?;
        Ok(&self.entries[first..])
    }

    /// Waits for the frames reserved, writes trailer and footer, hashes
    /// the pack for its id, fsyncs, and returns the pack id, its entries
    /// and the spool file (ready for [`Backend::write_file`]).
    pub fn finish(self, keys: &Keys) -> Result<FinishedPack> {
        if let Some(e) = self.writes.wait() {
            return Err(Error::Io { path: self.path.clone(), source: e });
        }
        let tail = encode_trailer(&self.entries, keys)?;
        self.file.write_all_at(&tail, self.len).map_err(io(&self.path))?;
        let size = self.len + tail.len() as u64;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], at).map_err(io(&self.path))?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        self.file.sync_all().map_err(io(&self.path))?;
        Ok(FinishedPack { id: *hasher.finalize().as_bytes(), entries: self.entries, path: self.path, size })
    }
}

impl PackWriter {
    /// Drops an unfinished pack and its spool file.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A pack written to the spool, not yet placed in the store.
#[derive(Debug)]
pub struct FinishedPack {
    /// BLAKE3 of the pack's bytes.
    pub id: [u8; 32],
    /// What it holds.
    pub entries: Vec<PackEntry>,
    /// Spool file.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
}

/// What a pack's footer says, checked against the pack's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackFooter {
    /// Where the sealed trailer starts: also the end of the frame area.
    pub trailer_offset: u64,
    /// Bytes of the sealed trailer.
    pub trailer_len: u32,
    /// Entries the trailer holds.
    pub entry_count: u32,
}

impl PackFooter {
    /// The 16 footer bytes: `trailer_len u32 ‖ entry_count u32 ‖ magic`.
    pub fn encode(trailer_len: u32, entry_count: u32) -> [u8; FOOTER_LEN] {
        let mut footer = [0u8; FOOTER_LEN];
        footer[..4].copy_from_slice(&trailer_len.to_le_bytes());
        footer[4..8].copy_from_slice(&entry_count.to_le_bytes());
        footer[8..].copy_from_slice(&ObjectKind::Pack.magic());
        footer
    }
}

/// The sealed trailer listing `entries`, followed by the footer: the bytes
/// that end a pack (`docs/format.md`). Pure: [`PackWriter::finish`] writes
/// them, and [`decode_pack_trailer`] reads them back.
///
/// # Errors
/// Sealing failed (see [`Keys::seal`]).
pub fn encode_trailer(entries: &[PackEntry], keys: &Keys) -> Result<Vec<u8>> {
    let count = entries.len() as u32;
    let mut t = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        e.encode_into(&mut t);
    }
    let mut tail = keys.seal(&trailer_aad(count), &t)?;
    let footer = PackFooter::encode(tail.len() as u32, count);
    tail.extend_from_slice(&footer);
    Ok(tail)
}

/// Decodes the last [`FOOTER_LEN`] bytes of a pack of `pack_size` bytes
/// (`footer` may be shorter when the pack is): checks the magic and that the
/// trailer fits between the header and the footer.
///
/// # Errors
/// [`Error::Truncated`] for a pack too short to hold a header and a footer,
/// [`Error::Corrupt`] naming `object` for a missing magic or an impossible
/// trailer length.
pub fn decode_footer(footer: &[u8], pack_size: u64, object: &str) -> Result<PackFooter> {
    if pack_size < (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(Error::Truncated {
            object: object.into(),
            offset: 0,
            wanted: (HEADER_LEN + FOOTER_LEN) as u64,
            got: pack_size,
        });
    }
    if footer.len() < FOOTER_LEN {
        return Err(Error::Truncated {
            object: object.into(),
            offset: pack_size - footer.len() as u64,
            wanted: FOOTER_LEN as u64,
            got: footer.len() as u64,
        });
    }
    let footer = &footer[footer.len() - FOOTER_LEN..];
    if footer[8..] != ObjectKind::Pack.magic() {
        return Err(Error::Corrupt {
            object: object.into(),
            reason: "footer magic missing (truncated or damaged pack)".into(),
        });
    }
    let trailer_len = u32::from_le_bytes(footer[..4].try_into().expect("4"));
    let entry_count = u32::from_le_bytes(footer[4..8].try_into().expect("4"));
    let trailer_offset = pack_size
        .checked_sub(FOOTER_LEN as u64 + u64::from(trailer_len))
        .filter(|e| *e >= HEADER_LEN as u64)
        .ok_or_else(|| Error::Corrupt {
            object: object.into(),
            reason: format!("trailer length {trailer_len} exceeds the pack"),
        })?;
    Ok(PackFooter { trailer_offset, trailer_len, entry_count })
}

/// Opens the sealed trailer that `footer` locates (`sealed` = its
/// `trailer_len` bytes) and decodes its entries, checking each frame lies in
/// the pack's frame area.
///
/// # Errors
/// [`Error::Corrupt`] naming `object`: the trailer does not authenticate,
/// holds the wrong number of bytes, or an entry is invalid.
pub fn decode_trailer(sealed: &[u8], footer: &PackFooter, keys: &Keys, object: &str) -> Result<Vec<PackEntry>> {
    let count = footer.entry_count;
    let plain = keys
        .open(&trailer_aad(count), sealed)
        .map_err(|r| Error::Corrupt { object: object.into(), reason: format!("trailer: {r}") })?;
    if plain.len() != count as usize * ENTRY_LEN {
        return Err(Error::Corrupt {
            object: object.into(),
            reason: format!("trailer holds {} bytes for {count} entries", plain.len()),
        });
    }
    decode_entries(&plain, Some(footer.trailer_offset), object)
}

/// [`read_trailer`] over a whole pack held in memory: header, footer and
/// trailer checked and decoded, no I/O.
///
/// # Errors
/// As [`read_trailer`].
pub fn decode_pack_trailer(pack: &[u8], keys: &Keys, object: &str) -> Result<Vec<PackEntry>> {
    check_header(pack, ObjectKind::Pack, object)?;
    let size = pack.len() as u64;
    let footer = decode_footer(&pack[pack.len().saturating_sub(FOOTER_LEN)..], size, object)?;
    let start = footer.trailer_offset as usize;
    decode_trailer(&pack[start..start + footer.trailer_len as usize], &footer, keys, object)
}

/// Reads and opens a pack's trailer, checking the header too: the I/O
/// around [`decode_footer`] and [`decode_trailer`] (two ranged reads and the
/// tail, never the frames).
///
/// # Errors
/// [`Error::Truncated`], [`Error::BadMagic`], [`Error::Corrupt`] naming the pack.
pub fn read_trailer(backend: &dyn Backend, key: &str, keys: &Keys) -> Result<Vec<PackEntry>> {
    let head = backend.read_range(key, 0, HEADER_LEN as u64)?;
    check_header(&head, ObjectKind::Pack, key)?;
    let (tail, size) = backend.read_tail(key, FOOTER_LEN as u64)?;
    let footer = decode_footer(&tail, size, key)?;
    let sealed = backend.read_range(key, footer.trailer_offset, u64::from(footer.trailer_len))?;
    decode_trailer(&sealed, &footer, keys, key)
}

#[cfg(test)]
mod tests {
    use alike_core::MasterKey;
    use proptest::prelude::*;

    use super::*;

    fn keys() -> [Keys; 2] {
        [Keys::unencrypted(), Keys::from_master(&MasterKey([7; 32]))]
    }

    fn entry(i: u32, frame_len: u32) -> PackEntry {
        PackEntry {
            id: ChunkId([i as u8; 32]),
            kind: if i % 3 == 0 { BlobKind::Map } else { BlobKind::Data },
            compression: if i % 2 == 0 { Compression::Zstd } else { Compression::None },
            frame_offset: FRAMES_START as u32 + i * frame_len,
            frame_stored_len: frame_len,
            frame_raw_len: 4 * frame_len,
            chunk_offset: i % 4 * frame_len,
            chunk_len: frame_len,
        }
    }

    /// A whole pack with `frames` bytes of frame area and these entries.
    fn pack(entries: &[PackEntry], frames: usize, keys: &Keys) -> Vec<u8> {
        let mut p = header(ObjectKind::Pack).to_vec();
        p.extend_from_slice(&[0xA5; SALT_LEN]);
        p.resize(FRAMES_START as usize + frames, 0x5A);
        p.extend_from_slice(&encode_trailer(entries, keys).unwrap());
        p
    }

    fn frames(n: usize, keys: &Keys) -> Vec<StoredFrame> {
        (0..n)
            .map(|i| {
                let data: Vec<u8> = (0..3000 + i * 7).map(|j| (j * 31 + i) as u8).collect();
                alike_core::encode_single(keys, BlobKind::Data, &data, Some(3)).unwrap()
            })
            .collect()
    }

    /// Frames reserved in order and written from many threads at once, in
    /// any order, make the same pack, byte for byte and id for id, as
    /// frames added one after the other.
    #[test]
    fn frames_written_side_by_side_make_the_same_pack_as_in_order() {
        let keys = Keys::from_master(&MasterKey([9; 32]));
        let fs = frames(64, &keys);
        let dir = tempfile::tempdir().unwrap();
        let mut a = PackWriter::with_salt(dir.path(), [5; SALT_LEN]).unwrap();
        for f in &fs {
            a.add(f).unwrap();
        }
        let a = a.finish(&keys).unwrap();
        let mut b = PackWriter::with_salt(dir.path(), [5; SALT_LEN]).unwrap();
        let slots: Vec<FrameSlot> = fs.iter().map(|f| b.reserve(f).unwrap()).collect();
        std::thread::scope(|t| {
            let mut pairs: Vec<(FrameSlot, &StoredFrame)> = slots.into_iter().zip(&fs).collect();
            pairs.reverse();
            while !pairs.is_empty() {
                let part: Vec<(FrameSlot, &StoredFrame)> = pairs.drain(..pairs.len().min(9)).collect();
                t.spawn(move || {
                    for (slot, f) in part {
                        slot.write(&f.bytes).unwrap();
                    }
                });
            }
        });
        let b = b.finish(&keys).unwrap();
        // The trailer is sealed with a fresh nonce: the frame area is what must match.
        let (ra, rb) = (std::fs::read(&a.path).unwrap(), std::fs::read(&b.path).unwrap());
        let end = fs.iter().map(|f| f.bytes.len()).sum::<usize>() + HEADER_LEN + SALT_LEN;
        assert_eq!((a.size, a.entries.len(), ra.len()), (b.size, b.entries.len(), rb.len()));
        assert!(ra[..end] == rb[..end], "the frames' bytes");
        assert_eq!(a.entries, b.entries);
        assert_eq!(b.id, *blake3::hash(&rb).as_bytes(), "the id hashes the finished pack");
    }

    /// A frame reserved but never written fails the pack's finish, and a
    /// finish waits for a frame still being written.
    #[test]
    fn a_pack_finishes_only_once_every_reserved_frame_is_written() {
        let keys = Keys::unencrypted();
        let fs = frames(2, &keys);
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::new(dir.path()).unwrap();
        w.add(&fs[0]).unwrap();
        drop(w.reserve(&fs[1]).unwrap());
        let e = w.finish(&keys).expect_err("a hole in the pack");
        assert!(e.to_string().contains("never written"), "{e}");

        let mut w = PackWriter::new(dir.path()).unwrap();
        let slot = w.reserve(&fs[0]).unwrap();
        let late = std::thread::spawn({
            let bytes = fs[0].bytes.clone();
            move || {
                std::thread::sleep(std::time::Duration::from_millis(100));
                slot.write(&bytes).unwrap();
            }
        });
        let p = w.finish(&keys).unwrap();
        late.join().unwrap();
        let stored = std::fs::read(&p.path).unwrap();
        assert_eq!(p.id, *blake3::hash(&stored).as_bytes(), "hashed after the late write");
        let at = p.entries[0].frame_offset as usize;
        assert_eq!(&stored[at..at + fs[0].bytes.len()], &fs[0].bytes[..]);
    }

    #[test]
    fn footer_layout_is_pinned() {
        let f = PackFooter::encode(0x0102, 7);
        assert_eq!(f[..8], [2, 1, 0, 0, 7, 0, 0, 0]);
        assert_eq!(f[8..], ObjectKind::Pack.magic());
        let got = decode_footer(&f, 0x1000, "p").unwrap();
        assert_eq!(got, PackFooter { trailer_offset: 0x1000 - 16 - 0x0102, trailer_len: 0x0102, entry_count: 7 });
    }

    #[test]
    fn round_trip_and_every_truncation_fails() {
        for k in keys() {
            let entries: Vec<_> = (0..5).map(|i| entry(i, 100)).collect();
            let p = pack(&entries, 500, &k);
            assert_eq!(decode_pack_trailer(&p, &k, "p").unwrap(), entries);
            // The I/O path agrees with the pure one.
            let be = crate::MemoryBackend::new();
            be.write("packs/aa/p", &p).unwrap();
            assert_eq!(read_trailer(&be, "packs/aa/p", &k).unwrap(), entries);
            for n in 0..p.len() {
                assert!(decode_pack_trailer(&p[..n], &k, "p").is_err(), "prefix of {n} bytes decoded");
            }
        }
    }

    #[test]
    fn damage_is_named() {
        let k = &keys()[1];
        let entries: Vec<_> = (0..3).map(|i| entry(i, 10)).collect();
        let mut p = pack(&entries, 30, k);
        let n = p.len();
        p[n - FOOTER_LEN - 1] ^= 1;
        let e = decode_pack_trailer(&p, k, "p").unwrap_err().to_string();
        assert!(e.contains("trailer"), "{e}");
        p[n - 1] ^= 1;
        let e = decode_pack_trailer(&p, k, "p").unwrap_err().to_string();
        assert!(e.contains("footer magic"), "{e}");
        // A frame the trailer places past the frame area.
        let p = pack(&entries, 29, k);
        let e = decode_pack_trailer(&p, k, "p").unwrap_err().to_string();
        assert!(e.contains("frame outside"), "{e}");
        // A trailer longer than the pack.
        let mut f = pack(&[], 0, k);
        let n = f.len();
        f[n - FOOTER_LEN..n - FOOTER_LEN + 4].copy_from_slice(&1000u32.to_le_bytes());
        let e = decode_pack_trailer(&f, k, "p").unwrap_err().to_string();
        assert!(e.contains("exceeds the pack"), "{e}");
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(n in 0u32..40, frame_len in 1u32..300, enc: bool) {
            let k = &keys()[usize::from(enc)];
            let entries: Vec<_> = (0..n).map(|i| entry(i, frame_len)).collect();
            let p = pack(&entries, (n * frame_len) as usize, k);
            prop_assert_eq!(decode_pack_trailer(&p, k, "p").unwrap(), entries);
        }

        #[test]
        fn decoders_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..200), size in 0u64..1000) {
            for k in keys() {
                let _ = decode_pack_trailer(&tail, &k, "p");
                if let Ok(f) = decode_footer(&tail, size, "p") {
                    let _ = decode_trailer(&tail, &f, &k, "p");
                }
            }
        }
    }
}
