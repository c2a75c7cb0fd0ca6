//! The [`ChunkStore`] seam: what the engines need from a store.
//!
//! **API boundary:** `alike-ads` implements it over a directory or object
//! storage; tests implement it in memory.

use crate::{ChunkId, ChunkLocation, Error, FrameRef, Keys, Manifest, Result, StoredFrame, chunk_in, decode_frame};

/// A content-addressed store of chunks (kept in frames), and of versions
/// that refer to them.
///
/// Calls may come from many threads at once.
pub trait ChunkStore: Send + Sync {
    /// Whether a chunk with this id is stored already (published by any
    /// writer, or put earlier in this session).
    fn contains(&self, id: &ChunkId) -> Result<bool>;
    /// Adds a frame. May buffer; it is durable and findable after [`ChunkStore::flush`].
    /// Chunks already present are harmless duplicates.
    fn put(&self, frame: StoredFrame) -> Result<()>;
    /// Where a chunk is, if stored.
    fn locate(&self, id: &ChunkId) -> Result<Option<ChunkLocation>>;
    /// [`ChunkStore::contains`] for many ids; a store with an index
    /// transaction answers them all in one.
    fn contains_many(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        ids.iter().map(|id| self.contains(id)).collect()
    }
    /// [`ChunkStore::locate`] for many ids; a store with an index transaction
    /// answers them all in one.
    fn locate_many(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkLocation>>> {
        ids.iter().map(|id| self.locate(id)).collect()
    }
    /// The stored bytes of a frame (not yet opened: see [`crate::decode_frame`]).
    fn read_frame(&self, frame: &FrameRef) -> Result<Vec<u8>>;
    /// Makes every frame put so far durable and visible to other writers.
    fn flush(&self) -> Result<()>;
    /// Writes a version durably and atomically; it becomes visible only now.
    /// Returns the version's id. Call after [`ChunkStore::flush`].
    fn commit_version(&self, manifest: &Manifest) -> Result<String>;
}

/// Reads one chunk: locate, read its frame, open it, check the id.
///
/// # Errors
/// [`Error::MissingChunk`] (with `needed_by`), frame and chunk corruption, store errors.
pub fn read_chunk(
    store: &dyn ChunkStore,
    keys: &Keys,
    id: &ChunkId,
    needed_by: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let loc = store.locate(id)?.ok_or_else(|| Error::MissingChunk { id: *id, needed_by: needed_by() })?;
    let stored = store.read_frame(&loc.frame)?;
    let plain = decode_frame(keys, &loc.frame, &stored)?;
    Ok(chunk_in(keys, &plain, &loc, id)?.to_vec())
}
