//! # alike
//!
//! An embeddable engine for agentless VM backup on a global, block-level
//! deduplicated store (the *Alike Data Store*). This crate is the stable API:
//! it composes the store (`alike-ads`) and the engine (`alike-core`), and
//! the hypervisor adapters and disk image formats (`alike-xen`,
//! `alike-hyperv`), into the operations a user asks for.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # let (store_dir, cache, image) = (dir.path().join("store"), dir.path().join("cache"), dir.path().join("disk.img"));
//! # std::fs::write(&image, vec![42u8; 1 << 20]).unwrap();
//! use alike::{Store, BackupOptions, RestoreOptions};
//!
//! let store = Store::builder().passphrase("s3cret").cache_dir(&cache)
//! #   .insecure_fast_kdf()
//!     .create(&store_dir)?;
//! let report = store.backup_images("web-01", &[&image], &BackupOptions::default())?;
//! println!("version {} stored {} new bytes", report.version.short_id(), report.new_stored_bytes);
//!
//! let latest = store.version("latest", Some("web-01"))?;
//! store.restore_to_file(&latest, 0, dir.path().join("restored.img"), &RestoreOptions::default())?;
//! # assert_eq!(std::fs::read(dir.path().join("restored.img")).unwrap(), std::fs::read(&image).unwrap());
//! # Ok::<(), alike::Error>(())
//! ```
//!
//! Every long operation takes a progress callback and a [`CancelToken`]
//! through its options.
//!
//! Restores: a whole disk to an image file or a device
//! ([`Store::restore_to_file`]), a whole VM to a host ([`Store::restore_vm`]),
//! a version served over NBD ([`Store::serve_nbd`]), and files out of a
//! version without restoring or mounting anything ([`Store::ls`],
//! [`Store::extract`]: partitions, LVM2 and the filesystems `alike-fs` reads, from the
//! store on demand).

pub mod config;
mod cross;
mod disk_reader;
mod error;
mod files;
mod image;
mod nbd;
#[cfg(feature = "tls")]
mod nbd_tls;
mod options;
#[cfg(feature = "remote")]
pub mod processors;
pub mod remote;
mod replicate;
mod serve_config;
pub mod services;
mod store;
mod vm;
mod vm_lock;
#[cfg(feature = "xen")]
mod xen;

pub use alike_ads::{
    Affected, Damage, DamagedVersion, GcReport, LockInfo, LockKind, ObjectOptions, PruneReport, Verification,
    VerifyReport,
};
pub use alike_core::retention::{Decision, RetentionPolicy};
/// Which HTTPS certificate a Hyper-V host's WinRM (5986) may present: a
/// pinned SHA-256 fingerprint or a CA file's certificates.
#[cfg(feature = "hyperv")]
pub use alike_hyperv::wsman::tls::ServerCertCheck as HyperVCertCheck;
/// Hyper-V hosts: a [`HyperVHost`] (WMI over WinRM, disks over SMB) is a
/// [`Hypervisor`] for [`Store::backup_vm`]; restore to a host comes later.
#[cfg(feature = "hyperv")]
pub use alike_hyperv::{HostOptions as HyperVHostOptions, HvVmConfig, HyperVHost};
/// XenServer/XCP-ng pools: a [`XenPool`] is a [`Hypervisor`] for
/// [`Store::backup_vm`] and [`Store::restore_vm`].
#[cfg(feature = "xen")]
pub use alike_xen::adapter::{
    DiskTransport, PoolError, Transport, UploadFormat, VmRestoreOptions, VmSummary, XenBackupOptions, XenPool,
    XenVmConfig,
};
#[cfg(feature = "xen")]
pub use xen::{XenConnectOptions, xen_pool, xen_pool_with};
// The hypervisor seam.
pub use alike_core::{
    BackupSession, CreatedVm, DiskSink, Hypervisor, Placement, PlannedDisk, PreviousDisk, Quiesce, ReleaseReport,
    RestoreSession, SessionDisk, SnapshotOptions, StreamSink, StreamWritten,
};
/// File-level restore's building blocks, for embedders that read disks of
/// their own (an image file, a block device) the way [`Store::ls`] and
/// [`Store::extract`] read a version's.
pub use alike_fs;
/// The configuration file (`docs/config.md`): stores, pools, jobs.
pub use config::Config;
pub use error::{Error, ErrorKind, Result, Retry};
pub use files::{ExtractFailure, ExtractReport, FileEntry, Listing, VolumeInfo};
pub use image::{ImageFormat, create_image, open_image};
pub use nbd::{NbdExportInfo, NbdListening, NbdReport};
pub use options::{
    BackupOptions, DiskProgressFn, DiskReadProgress, ExtractOptions, LsOptions, MAX_NBD_CONNECTIONS, MAX_THREADS,
    MIN_BANDWIDTH, MaintenanceOptions, NBD_CACHE_RANGE, NbdListen, NbdOptions, Parent, RestoreOptions, VaultOptions,
    VerifyOptions,
};
pub use serve_config::{ServeAdmin, ServeConfig, ServeTls};
// Replication.
pub use replicate::{
    DEFAULT_PORT, DiskProgress, EndOptions, EndReport, Flow, JOB_VERSION, JobLink, JobPassword, JobReplica, JobRole,
    JobSecret, JobSeed, JobSource, JobStore, JobXenPool, JobXenReplica, MAX_JOB_BYTES, MAX_KEEP, Replica,
    ReplicaExportOptions, ReplicaExportReport, ReplicaPoint, ReplicaRunStats, ReplicateOptions, ReplicateReport,
    ReplicationJob, ReplicationProgress, ReplicationRecord, replicate, replicate_images, run_end, run_receiver,
    run_sender,
};
#[cfg(feature = "xen")]
pub use replicate::{
    FailbackNewVm, FailbackReport, FailoverReport, TestVm, XenFailbackReport, XenReplicaOptions, XenReplicaVm,
    replicate_xen,
};
#[cfg(feature = "hyperv")]
pub use replicate::{HyperVFailbackReport, HyperVReplicaReport, HyperVTestReport};
pub use store::{
    BackupReport, DamagedPack, DiskInfo, HeldLock, RebuildReport, RestoreReport, Store, StoreBuilder, StoreStats,
    VaultCopy, VaultReport, Version,
};
pub use vm::{DiskUploadReport, VmBackupReport, VmDiskReport, VmRestoreReport};

// Engine vocabulary users need.
pub use alike_core::{
    CancelToken, CdcParams, ChunkId, Chunking, DiskRecord, DiskSource, DiskTarget, KdfParams, Manifest, MemSource,
    NicInfo, Origin, Phase, Progress, RawFileSource, RawFileTarget, RunOptions, VmInfo,
};

/// The workspace's policies for the bindings' own locks and threads: a
/// poisoned mutex is recovered, a thread that cannot start is an error.
pub use alike_core::{Recover, spawn, spawn_scoped};

/// This library's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
