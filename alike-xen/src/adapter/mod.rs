//! The XenServer/XCP-ng adapter: a pool's inventory, Enhanced Backup with
//! changed-block tracking (CBT), and restore of whole VMs or single disks —
//! the [`XenPool`] over a [`crate::xapi::Client`].
//!
//! ## Inventory
//! [`XenPool::vms`] lists guest VMs (templates, snapshots and the control
//! domain are skipped) with their disks — the VBDs of type `Disk` with a
//! VDI, ordered by `userdevice`; the order gives the disk *positions* of a
//! version —, NICs, and [`XenPool::srs`] / [`XenPool::networks`] the
//! pool's storage and networks. [`XenVmConfig`] captures what restore needs
//! to recreate a VM field by field: the `VM.create` fields as XAPI sent them
//! (name, description, vCPUs, memory, HVM/PV boot, platform,
//! `other_config`…), the disks (size, `userdevice`, bootable, VDI name…),
//! empty CD drives and the NICs (device, MAC, MTU, network name and uuid).
//! It goes into the version's [`alike_core::VmInfo`] (`hypervisor = "xen"`,
//! `extra["xen"]` as structured JSON).
//!
//! ## Backup: the CBT cycle
//! [`XenPool::begin_backup`] enables CBT on the VM's VDIs that lack it,
//! takes `VM.snapshot` (`VM.snapshot_with_quiesce` when asked for and
//! offered; otherwise crash-consistent), marks the snapshot VM and its VDIs
//! with `other_config["alike:backup"] = <VM uuid>`, and returns a
//! [`XenBackup`] whose [`XenBackup::disks`] are [`alike_core::DiskSource`]s
//! over the snapshot VDIs:
//! - **Reading**: through XAPI's NBD export (`VDI.get_nbd_info` →
//!   [`crate::xapi::NbdInfo::builder`], TLS when the info carries a
//!   certificate, a pool of connections opened on the first read — an NBD
//!   connection attaches the VDI to dom0, and XAPI refuses
//!   `list_changed_blocks` on an attached VDI, so change tracking is asked
//!   first; the export name carries the session, so the connections are
//!   made early in the read), or, when no network has an NBD purpose (`get_nbd_info` is
//!   empty), through `GET /export_raw_vdi`: a dynamic VHD (raw above
//!   2040 GiB) downloaded into a sparse spool file that the engine then
//!   reads at random; for an incremental, a differencing VHD against the
//!   previous snapshot (`base=`), which holds only the 2 MiB blocks that
//!   differ.
//! - **Change token** ([`alike_core::DiskSource::change_token`]): JSON naming
//!   the VM, the VDI and the snapshot VDI (uuids). The engine stores it,
//!   hex, in the version's manifest: the manifest *is* the engine's record
//!   of what was backed up from where ("the engine's local database" of the
//!   issue), so the next backup finds the previous snapshot VDI from the
//!   parent version, whichever machine runs it, and nothing is kept beside
//!   the store.
//! - **Changed ranges** (NBD path): `VDI.list_changed_blocks(previous
//!   snapshot VDI, this snapshot VDI)` → 64 KiB blocks. When that cannot be
//!   answered — CBT was disabled (the chain is "unrelated"), the previous
//!   snapshot VDI is gone, the disk is another VDI now (replaced, or
//!   migrated: a new uuid), XAPI fails the call — the source returns an
//!   **error that says why**, and the engine falls back to a full read
//!   (still deduplicated against the whole store), records the reason in the
//!   version (`fallback_reason` of the disk) and logs it at `warn`; a VDI
//!   whose size changed is caught by the engine before it asks. A
//!   `data_destroy`ed previous snapshot is fine: only its CBT log is needed.
//!
//! ## What survives between backups, and why
//! [`XenBackup::commit`] runs after the version is stored; for a VM backed
//! up N times it leaves:
//! 1. **the snapshot VM of backup N, with its VDIs' data** — the base of
//!    the next backup when it reads through `/export_raw_vdi` (a delta
//!    export needs the base's data: `base=`), and a crash-consistent local
//!    restore point on the pool. Its CBT logs are what the next
//!    `list_changed_blocks` starts from.
//! 2. **the VDIs of backup N−1 as `cbt_metadata`** (`VDI.data_destroy`:
//!    the data is freed, the CBT log kept), and its snapshot VM destroyed
//!    (`VM.destroy` removes the VM and its VBDs; `data_destroy` needs the
//!    VBDs gone). Should version N be forgotten, backup N+1 builds on
//!    version N−1 and still reads only what changed.
//! 3. nothing older: `cbt_metadata` VDIs of backup N−2 and before are
//!    destroyed (sm merges their logs into the next, so the chain stays
//!    whole).
//!
//! Only objects marked `alike:backup` are touched: snapshots a user (or
//! another tool) took are left alone. Two stores backing up one VM release
//! each other's snapshots; their next backups stay incremental over NBD
//! (a CBT log is enough) but not over the export path (a delta export needs
//! the base's data). A snapshot VDI without CBT cannot be
//! data-destroyed (`VDI_NO_CBT_METADATA`) and is destroyed instead. A
//! backup that fails or is cancelled destroys its own snapshot (VM and
//! VDIs) in [`XenBackup::abort`] (also on drop). Release failures after a
//! stored version do not fail the backup: they are reported
//! ([`ReleaseReport::warnings`]) and retried by the next commit, which
//! cleans every marked snapshot but the current one.
//!
//! ## Restore
//! [`XenPool::create_vm`] recreates a VM from a [`XenVmConfig`] on a chosen
//! SR and network: `VM.create` with the recorded fields, `VDI.create` sized
//! like each disk, `VBD.create` at the same `userdevice`, empty CD drives,
//! `VIF.create` with the recorded MAC; the VM is left halted.
//! [`XenPool::upload_disk`] then writes a disk into a VDI with `PUT
//! /import_raw_vdi` and a `Content-Length` (XAPI refuses chunked transfer
//! encoding): a VHD holding only the allocated blocks when the VDI is new
//! and at most 2040 GiB, raw otherwise. The facade streams a stored
//! version's disk into it, so no temporary copy is made.

mod backup;
mod config;
mod error;
mod host;
mod pool;
mod provision;
mod replica;
mod restore;
mod source;

pub use backup::{MAX_NBD_CONNECTIONS, Quiesce, ReleaseReport, Transport, XenBackup, XenBackupOptions};
pub use config::{XenCdConfig, XenDiskConfig, XenNicConfig, XenSnapshotInfo, XenVmConfig};
pub use error::{PoolError, PoolResult};
pub use pool::{DiskSummary, NetworkSummary, NicSummary, SrSummary, VmSummary, XenPool};
pub use provision::{XENSTORE_PREFIX, XenProcessor, XenProcessorOptions, XenProvisioner};
pub use replica::{
    BASE_MARK, BLOCK_CODE, DIRTY_MARK, DISK_MARK, FAILBACK_MARK, FAILBACK_TAG, FailbackNewVm, FailbackReport,
    FailoverReport, POINT_MARK, REPLICA_MARK, RESUME_JOURNAL, ReplicaMeta, ReplicaNic, TEST_MARK, TestVm, VdiSource,
    XenReplica, XenReplicaOptions,
};
pub use restore::{CreatedDisk, CreatedVm, UploadFormat, VmRestoreOptions};
pub use source::{DiskTransport, XenDisk};

/// `other_config` key marking the snapshot VMs and VDIs a backup made (value: the VM's uuid).
pub const BACKUP_MARK: &str = "alike:backup";
