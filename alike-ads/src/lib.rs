//! # alike-ads — the Alike Data Store
//!
//! A global, block-level deduplicated store of VM disk versions, on a local
//! directory or share, or on object storage (S3 and S3-compatible services,
//! Azure, GCS: [`backend_for`], [`ObjectOptions`]). Everything it holds is an
//! immutable object, written whole or not at all (temporary name and rename
//! on a directory, one PUT or a completed multipart upload on object storage):
//!
//! | object | what |
//! |---|---|
//! | `config` | store settings (block size, compression, encryption) |
//! | `keys/<id>` | the master key wrapped by a passphrase (Argon2id + AES-256-GCM) |
//! | `packs/<ab>/<id>` | many sealed blobs and a trailer listing them |
//! | `index/<id>` | which pack holds which blob, for a batch of packs |
//! | `versions/<id>` | a version manifest: VM config and per-disk block maps |
//!
//! The byte layout is in `docs/format.md`.
//!
//! ## Several writers
//! Writers on any number of machines add their own packs and index segments;
//! a version becomes visible only when its manifest is written, last. No
//! mutable object is shared, so backups of different VMs (or the same VM) run
//! at once without waiting on each other: each holds a shared lock whose only
//! job is to tell GC what it must not delete yet.
//!
//! | A \\ B | backup | restore | verify | prune / forget | gc |
//! |---|---|---|---|---|---|
//! | backup | allowed | allowed | allowed | allowed | allowed: gc defers deleting packs the backup may use |
//! | restore | | allowed | allowed | allowed | allowed: gc defers deletion while a read lock lives |
//! | verify | | | allowed | allowed | allowed (same) |
//! | prune / forget | | | | allowed | allowed |
//! | gc | | | | | excluded (`Error::Locked`) |
//! | read of named versions ([`Repository::lock_versions`]: an NBD export) | allowed | allowed | allowed | prune keeps them; forget refuses them (`Error::Locked`) | allowed: gc keeps them and deletes the rest |
//!
//! How GC stays safe: see the `maintenance` module and `ARCHITECTURE.md`.
//! Store creation is the one step that needs "create only if absent"
//! ([`Backend::write_new`] of `config`): of two concurrent `create`s of one
//! store exactly one succeeds.
//!
//! ## Cargo features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `s3` | on | `s3://bucket/prefix` stores (S3, MinIO, SeaweedFS, R2, Ceph RGW…) |
//! | `azure` | off | `az://container/prefix` stores |
//! | `gcp` | off | `gs://bucket/prefix` stores |
//!
//! Each pulls in `object_store` with the ring crypto provider (no aws-lc-sys)
//! and a small tokio runtime per object backend.

//!
//! ```
//! use alike_ads::{CreateOptions, OpenOptions, Repository};
//! let dir = tempfile::tempdir()?;
//! let store = dir.path().join("store");
//! let mut create = CreateOptions::default();
//! create.encrypted = false;
//! Repository::create_local(&store, &create)?;
//! let mut open = OpenOptions::default();
//! open.cache_dir = Some(dir.path().join("cache"));
//! let repo = Repository::open_local(&store, &open)?;
//! assert_eq!(repo.versions()?.len(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backend;
mod config;
mod error;
mod format;
mod index;
mod lock;
mod maintenance;
mod object;
mod pack;
mod repo;
mod verify;

pub use backend::{Backend, LocalBackend, MemoryBackend};
pub use config::{
    AES_256_GCM, AnyKeyFile, KeyFile, KeyObject, NO_ENCRYPTION, StoreConfig, WriterKeyFile, decode_config,
    encode_config, key_aad,
};
pub use error::{Error, Result, Retry};
pub use format::{FORMAT_VERSION, HEADER_LEN, ObjectKind, check_header, check_header_version, header, header_v};
pub use index::{IndexCache, SegmentPacks, decode_segment, encode_segment};
pub use lock::{LockGuard, LockInfo, LockKind, REFRESH, STALE_AFTER, list_locks, live_locks};
pub use maintenance::{CLOCK_SKEW_MS, GcReport, PruneReport, REPACK_BELOW};
#[cfg(feature = "object")]
pub use object::ObjectBackend;
pub use object::{MULTIPART_THRESHOLD, ObjectOptions, PART_SIZE, backend_for};
pub use pack::{
    ENTRY_LEN, FOOTER_LEN, FRAMES_START, FinishedPack, MAX_PACK_SIZE, PackEntry, PackFooter, PackWriter, SALT_LEN,
    decode_footer, decode_pack_trailer, decode_trailer, encode_trailer, pack_key, read_trailer,
};
pub use repo::{
    COMPRESSION_LEVELS, CreateOptions, DEFAULT_PACK_SIZE, DamagedVersion, MAX_PACK_ENTRIES, MAX_SEGMENT_ENTRIES,
    OpenOptions, Repository, StoreStats, VersionScan, decode_manifest, default_cache_dir, encode_manifest, host_name,
};
pub use verify::{Affected, Damage, Verification, VerifyDepth, VerifyReport};
