//! # alike-core
//!
//! The engine of *alike*: fixed-block chunking, BLAKE3 ids, zstd and
//! AES-256-GCM blob encoding, versions and block maps, and the backup and
//! restore engines — written against the seam traits [`DiskSource`],
//! [`DiskTarget`] and [`ChunkStore`]. It knows no concrete store,
//! hypervisor or network: those live in `alike-ads`, `alike-xen` and
//! `alike-hyperv`, and the `alike` facade composes them.
//!
//! ```
//! use alike_core::{BlobKind, ChunkLocation, FrameRef, Keys, MasterKey, chunk_in, decode_frame, encode_single};
//! let keys = Keys::from_master(&MasterKey::generate()?);
//! let frame = encode_single(&keys, BlobKind::Data, b"disk block", Some(3))?;
//! let at = FrameRef { container: [0; 32], offset: 0, stored_len: frame.bytes.len() as u32,
//!                     raw_len: frame.raw_len, kind: frame.kind, compression: frame.compression };
//! let plain = decode_frame(&keys, &at, &frame.bytes)?;
//! let c = frame.chunks[0];
//! assert_eq!(chunk_in(&keys, &plain, &ChunkLocation { frame: at, offset: c.offset, len: c.len }, &c.id)?, b"disk block");
//! # Ok::<(), alike_core::Error>(())
//! ```

mod blob;
mod cdc;
mod cdc_backup;
mod chunker;
mod crypto;
mod disk;
mod error;
mod extents;
mod hypervisor;
mod id;
mod manifest;
mod policy;
mod progress;
mod store;
mod version_source;

pub mod backup;
pub mod provision;
pub mod restore;
pub mod retention;

// Errors
pub use error::{Error, ErrorKind, Foreign, Result, Retry, SeamError};
// Ids, keys and blobs
pub use blob::{
    BlobKind, ChunkLocation, Compression, FRAME_BUF_ALIGN, FrameBuf, FrameChunk, FrameRef, StoredFrame, chunk_in,
    compress, decode_frame, decode_frame_into, encode_frame, encode_single, frame_aad,
};
pub use crypto::{
    KdfParams, Keys, MasterKey, PUBLIC_SEAL_OVERHEAD, SEAL_OVERHEAD, WrappedKey, WriterKey, random_bytes,
    seal_to_public, store_public_key, unwrap_master, wrap_master,
};
pub use id::ChunkId;
// Chunking
pub use cdc::{CDC_BLOCK, CDC_MAX_CHUNK, CDC_WINDOW_BLOCKS, CdcParams, CdcState, Chunking, cut_hash, cut_image};
pub use chunker::{
    DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, blocks_touching, cdc_ranges, is_zero, merge_ranges,
    valid_block_size,
};
// Versions
pub use extents::{Extent, ExtentMap, Window, load_window};
pub use manifest::{BLOCKS_PER_MAP, BlockMap, DiskRecord, Manifest, NicInfo, Origin, VmInfo};
pub use version_source::{ManifestLookup, VersionSource};
// Seams
pub use disk::{DiskSource, DiskTarget, HookedSource, MemSource, RawFileSource, RawFileTarget};
pub use hypervisor::{
    BackupSession, CreatedVm, DiskSink, Hypervisor, Placement, PlannedDisk, PreviousDisk, Quiesce, ReleaseReport,
    RestoreSession, SessionDisk, SnapshotOptions, StreamSink, StreamWritten,
};
pub use store::{ChunkStore, read_chunk};
// Workspace policies: locks, threads
pub use policy::{Recover, spawn, spawn_scoped};
// Progress
pub use progress::{CancelToken, Phase, Progress, ProgressFn, ProgressSink, RunOptions};
