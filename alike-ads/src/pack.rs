//! Pack objects: many frames in one object, with a sealed trailer that lists
//! them, so the index can always be rebuilt from packs alone.
//!
//! Layout (`docs/format.md`): header (12) ‖ salt (16) ‖ frames ‖ sealed trailer ‖ footer
//! (16: trailer length u32, entry count u32, magic). A pack's name is the
//! BLAKE3 hash of its bytes.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

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
pub struct PackWriter {
    path: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    len: u64,
    entries: Vec<PackEntry>,
}

impl PackWriter {
    /// Starts a pack in `spool` with a random salt.
    pub fn new(spool: &Path) -> Result<PackWriter> {
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| Error::InvalidArgument(format!("system random source failed: {e}")))?;
        Self::with_salt(spool, salt)
    }

    /// Starts a pack with a given salt: for golden vectors only (a repeated
    /// salt can give two writers the same pack name).
    pub fn with_salt(spool: &Path, salt: [u8; SALT_LEN]) -> Result<PackWriter> {
        let path = spool.join(format!("pack-{}.tmp", random_hex(12)));
        let f = OpenOptions::new().write(true).create_new(true).open(&path).map_err(io(&path))?;
        let mut w = PackWriter {
            out: BufWriter::with_capacity(256 << 10, f),
            path,
            hasher: blake3::Hasher::new(),
            len: 0,
            entries: Vec::new(),
        };
        w.write_raw(&header(ObjectKind::Pack))?;
        w.write_raw(&salt)?;
        Ok(w)
    }

    fn write_raw(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).map_err(io(&self.path))?;
        self.hasher.update(b);
        self.len += b.len() as u64;
        Ok(())
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

    /// Appends a frame; returns the entries of its chunks.
    pub fn add(&mut self, f: &StoredFrame) -> Result<&[PackEntry]> {
        let offset = self.len;
        if offset + f.bytes.len() as u64 > MAX_PACK_SIZE {
            return Err(Error::InvalidArgument("pack would exceed 2 GiB".into()));
        }
        self.write_raw(&f.bytes)?;
        let first = self.entries.len();
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
        Ok(&self.entries[first..])
    }

    /// Writes trailer and footer, fsyncs, and returns the pack id, its entries
    /// and the spool file (ready for [`Backend::write_file`]).
    pub fn finish(mut self, keys: &Keys) -> Result<FinishedPack> {
        let count = self.entries.len() as u32;
        let mut t = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            e.encode_into(&mut t);
        }
        let sealed = keys.seal(&trailer_aad(count), &t)?;
        self.write_raw(&sealed)?;
        let mut footer = [0u8; FOOTER_LEN];
        footer[..4].copy_from_slice(&(sealed.len() as u32).to_le_bytes());
        footer[4..8].copy_from_slice(&count.to_le_bytes());
        footer[8..].copy_from_slice(&ObjectKind::Pack.magic());
        self.write_raw(&footer)?;
        let file = self.out.into_inner().map_err(|e| Error::Io { path: self.path.clone(), source: e.into_error() })?;
        file.sync_all().map_err(io(&self.path))?;
        Ok(FinishedPack {
            id: *self.hasher.finalize().as_bytes(),
            entries: self.entries,
            path: self.path,
            size: self.len,
        })
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

/// Reads and opens a pack's trailer, checking the header too.
///
/// # Errors
/// [`Error::Truncated`], [`Error::BadMagic`], [`Error::Corrupt`] naming the pack.
pub fn read_trailer(backend: &dyn Backend, key: &str, keys: &Keys) -> Result<Vec<PackEntry>> {
    let head = backend.read_range(key, 0, HEADER_LEN as u64)?;
    check_header(&head, ObjectKind::Pack, key)?;
    let (tail, size) = backend.read_tail(key, FOOTER_LEN as u64)?;
    if size < (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(Error::Truncated {
            object: key.into(),
            offset: 0,
            wanted: (HEADER_LEN + FOOTER_LEN) as u64,
            got: size,
        });
    }
    if tail[8..] != ObjectKind::Pack.magic() {
        return Err(Error::Corrupt {
            object: key.into(),
            reason: "footer magic missing (truncated or damaged pack)".into(),
        });
    }
    let tlen = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4")));
    let count = u32::from_le_bytes(tail[4..8].try_into().expect("4"));
    let body_end = size.checked_sub(FOOTER_LEN as u64 + tlen).filter(|e| *e >= HEADER_LEN as u64).ok_or_else(|| {
        Error::Corrupt { object: key.into(), reason: format!("trailer length {tlen} exceeds the pack") }
    })?;
    let sealed = backend.read_range(key, body_end, tlen)?;
    let plain = keys
        .open(&trailer_aad(count), &sealed)
        .map_err(|r| Error::Corrupt { object: key.into(), reason: format!("trailer: {r}") })?;
    if plain.len() != count as usize * ENTRY_LEN {
        return Err(Error::Corrupt {
            object: key.into(),
            reason: format!("trailer holds {} bytes for {count} entries", plain.len()),
        });
    }
    decode_entries(&plain, Some(body_end), key)
}
