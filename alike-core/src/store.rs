//! The [`ChunkStore`] seam: what the engines need from a store.
//!
//! **API boundary:** `alike-ads` implements it over a directory or object
//! storage; tests implement it in memory.

use crate::{ChunkId, Manifest, Result, StoredBlob};

/// A content-addressed store of blobs, and of versions that refer to them.
///
/// Calls may come from many threads at once.
pub trait ChunkStore: Send + Sync {
    /// Whether a blob with this id is stored already (published by any
    /// writer, or put earlier in this session).
    fn contains(&self, id: &ChunkId) -> Result<bool>;
    /// Adds a blob. May buffer; it is durable and findable after [`ChunkStore::flush`].
    /// Putting an id that is already present is allowed and stores nothing.
    fn put(&self, blob: StoredBlob) -> Result<()>;
    /// Reads a stored blob back (not yet opened: see [`crate::decode_blob`]).
    fn get(&self, id: &ChunkId) -> Result<StoredBlob>;
    /// Makes every blob put so far durable and visible to other writers.
    fn flush(&self) -> Result<()>;
    /// Writes a version durably and atomically; it becomes visible only now.
    /// Returns the version's id. Call after [`ChunkStore::flush`].
    fn commit_version(&self, manifest: &Manifest) -> Result<String>;
}
