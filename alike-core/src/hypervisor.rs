//! The hypervisor seam: what the engine needs from a virtualisation host to
//! back a VM up and to recreate one. **API boundary.**
//!
//! A host adapter (`alike-xen` for XenServer/XCP-ng pools, `alike-hyperv`
//! next) implements [`Hypervisor`]; the facade's one backup path
//! (`alike::Store::backup_vm`) and one restore path (`alike::Store::restore_vm`)
//! run over `&dyn Hypervisor`, so a new host needs no facade change.
//!
//! A backup is a session with a lifecycle:
//! [`Hypervisor::begin_backup`] (snapshot, a [`DiskSource`] per disk with
//! change tokens) → the engine reads and stores a version →
//! [`BackupSession::commit`] (release the previous snapshot, keep this one as
//! the next backup's base) or [`BackupSession::abort`] (release this one).
//! Dropping a session without either aborts it.
//!
//! A restore is a session too: [`Hypervisor::create_vm`] makes the VM from a
//! recorded [`VmInfo`] on chosen storage and networks → for each disk,
//! [`RestoreSession::disk`] hands back a [`DiskSink`] → the engine fills it →
//! [`RestoreSession::commit`], or [`RestoreSession::abort`] removes the VM.
//! Hosts differ in how a disk is written: XAPI takes a disk as one upload
//! stream (`import_raw_vdi`), which the engine feeds from a source it
//! provides ([`DiskSink::Stream`]); a host that takes positional writes
//! (a VHDX on a share) hands back a [`DiskTarget`] the engine restores into
//! in parallel ([`DiskSink::Target`]).
//!
//! Every trait here is object-safe; errors are [`crate::Error`], with host
//! refusals carried whole in [`crate::Error::Seam`] (kind, retry class and
//! the host's own error code survive the seam).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{CancelToken, DiskSource, DiskTarget, Result, VmInfo};

/// Whether to ask the guest to quiesce (flush its filesystems and
/// applications, VSS on Windows) before the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Quiesce {
    /// A crash-consistent snapshot (the default).
    #[default]
    No,
    /// Quiesced when the guest offers it; otherwise, with a warning, a
    /// crash-consistent snapshot.
    IfSupported,
    /// Quiesced, or fail.
    Required,
}

/// Settings of [`Hypervisor::begin_backup`] that every host understands;
/// host-specific settings (transports, connection counts) are set on the
/// adapter itself.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SnapshotOptions {
    /// Quiesce the guest before the snapshot.
    pub quiesce: Quiesce,
    /// Stops the session's reads at the next block when cancelled.
    pub cancel: CancelToken,
}

impl SnapshotOptions {
    /// Quiesced or crash-consistent (default: crash-consistent).
    #[must_use]
    pub fn quiesce(mut self, q: Quiesce) -> Self {
        self.quiesce = q;
        self
    }
    /// The token that cancels the session's reads.
    #[must_use]
    pub fn cancel_token(mut self, c: CancelToken) -> Self {
        self.cancel = c;
        self
    }
}

/// The change token a disk of the previous version recorded, so the host
/// can prepare a delta (an export against a base) where it needs to know
/// before the engine asks [`DiskSource::changed_ranges`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousDisk {
    /// The disk's position in the VM.
    pub position: u32,
    /// The token the source gave at that backup.
    pub token: Vec<u8>,
}

/// What a backup session says of one of its disks (beyond the
/// [`DiskSource`] the engine reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SessionDisk {
    /// Position in the VM.
    pub position: u32,
    /// The host's identifiers of the disk and of its snapshot, under the
    /// host's own names (XenServer: `vdi`, `snapshot_vdi`).
    #[serde(flatten)]
    pub ids: BTreeMap<String, String>,
    /// Virtual size, bytes.
    pub size: u64,
    /// How it is read (`nbd`, `export`, `smb`…).
    pub transport: String,
    /// Bytes received from the host so far (protocol payload).
    pub wire_bytes: u64,
}

impl SessionDisk {
    /// A disk record with no identifiers yet.
    pub fn new(position: u32, size: u64, transport: impl Into<String>) -> SessionDisk {
        SessionDisk { position, ids: BTreeMap::new(), size, transport: transport.into(), wire_bytes: 0 }
    }
    /// Adds a host identifier under `name`.
    #[must_use]
    pub fn id(mut self, name: &str, value: impl Into<String>) -> SessionDisk {
        self.ids.insert(name.to_owned(), value.into());
        self
    }
    /// Sets the bytes received.
    #[must_use]
    pub fn wire_bytes(mut self, n: u64) -> SessionDisk {
        self.wire_bytes = n;
        self
    }
}

/// What [`BackupSession::commit`] released.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReleaseReport {
    /// The snapshot kept as the next backup's base.
    pub kept_snapshot: String,
    /// Earlier backup snapshots destroyed.
    pub destroyed_snapshots: Vec<String>,
    /// Host-specific lists of what else was released, under the host's
    /// names (XenServer: `data_destroyed_vdis`, `destroyed_vdis`).
    #[serde(flatten)]
    pub released: BTreeMap<String, Vec<String>>,
    /// What could not be released (the version is stored all the same; the
    /// next commit tries again).
    pub warnings: Vec<String>,
}

/// A backup in progress on a host: the snapshot is taken and its disks are
/// ready to read.
pub trait BackupSession {
    /// The VM's configuration to record in the version (name, uuid,
    /// hypervisor, vCPUs, memory, NICs, and the host's full record in
    /// `extra`).
    fn vm(&self) -> &VmInfo;
    /// The disks as sources for the engine, in position order.
    fn disks(&self) -> Vec<&dyn DiskSource>;
    /// What the session says of each disk (identifiers, transport, bytes
    /// received so far): ask after the engine has read them.
    fn disk_details(&self) -> Vec<SessionDisk>;
    /// The snapshot's identifier on the host.
    fn snapshot_id(&self) -> String;
    /// `crash-consistent` or `quiesced`.
    fn consistency(&self) -> String;
    /// What went less well than asked (change tracking could not be
    /// enabled, no quiesce).
    fn warnings(&self) -> Vec<String>;
    /// After the version is stored: keep this snapshot as the next
    /// backup's base and release the earlier ones. Failures are reported,
    /// not raised: the version is stored.
    fn commit(self: Box<Self>) -> ReleaseReport;
    /// Gives up: releases this backup's snapshot.
    ///
    /// # Errors
    /// What could not be released.
    fn abort(self: Box<Self>) -> Result<()>;
}

/// Where and how to recreate a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Placement {
    /// The storage for the new disks (XenServer: an SR's name or uuid).
    pub storage: String,
    /// The network for every NIC (default: the networks the VM had, found
    /// by id or name).
    pub network: Option<String>,
    /// The new VM's name (default: the recorded one).
    pub name: Option<String>,
    /// Give NICs the recorded MAC addresses (default) or let the host
    /// make new ones.
    pub keep_macs: bool,
}

impl Placement {
    /// Disks on `storage`, NICs on their recorded networks, recorded MACs.
    pub fn on(storage: impl Into<String>) -> Placement {
        Placement { storage: storage.into(), network: None, name: None, keep_macs: true }
    }
    /// Every NIC on this network.
    #[must_use]
    pub fn network(mut self, n: impl Into<String>) -> Self {
        self.network = Some(n.into());
        self
    }
    /// The new VM's name.
    #[must_use]
    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.name = Some(n.into());
        self
    }
    /// Keep the recorded MAC addresses (true) or let the host choose.
    #[must_use]
    pub fn keep_macs(mut self, yes: bool) -> Self {
        self.keep_macs = yes;
        self
    }
}

/// A disk the engine will write into a new VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedDisk {
    /// Position in the VM.
    pub position: u32,
    /// Virtual size, bytes.
    pub size: u64,
}

/// The VM a [`RestoreSession`] made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CreatedVm {
    /// Its uuid.
    pub vm_uuid: String,
    /// The host's handle for it (XenServer: the VM's ref).
    pub vm_ref: String,
    /// Its name.
    pub name: String,
    /// The positions of the disks it was given, in order.
    pub disks: Vec<u32>,
    /// What was not recreated exactly.
    pub warnings: Vec<String>,
}

impl CreatedVm {
    /// A created VM's record.
    pub fn new(vm_uuid: impl Into<String>, vm_ref: impl Into<String>, name: impl Into<String>) -> CreatedVm {
        CreatedVm {
            vm_uuid: vm_uuid.into(),
            vm_ref: vm_ref.into(),
            name: name.into(),
            disks: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// What a disk write did on the host's side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StreamWritten {
    /// The host's identifiers of the disk written, under its own names
    /// (XenServer: `vdi_uuid`).
    #[serde(flatten)]
    pub ids: BTreeMap<String, String>,
    /// The upload's format (`raw`, `vhd`…).
    pub format: String,
    /// Bytes sent to the host.
    pub sent_bytes: u64,
}

impl StreamWritten {
    /// A record of a write.
    pub fn new(format: impl Into<String>, sent_bytes: u64) -> StreamWritten {
        StreamWritten { ids: BTreeMap::new(), format: format.into(), sent_bytes }
    }
    /// Adds a host identifier under `name`.
    #[must_use]
    pub fn id(mut self, name: &str, value: impl Into<String>) -> StreamWritten {
        self.ids.insert(name.to_owned(), value.into());
        self
    }
}

/// A host that takes a disk as one stream read from a source.
pub trait StreamSink {
    /// Reads `source` (in the order the host wants) and sends it.
    ///
    /// # Errors
    /// The host's refusal; the source's errors (a damaged block stops the
    /// upload; a cancel too).
    fn write_from(self: Box<Self>, source: &dyn DiskSource) -> Result<StreamWritten>;
}

/// How a host takes a restored disk.
pub enum DiskSink<'a> {
    /// As one stream that the host reads from a source the engine
    /// provides (XAPI's `import_raw_vdi`).
    Stream(Box<dyn StreamSink + 'a>),
    /// As positional writes: the engine restores into this target (in
    /// parallel), then calls [`DiskTarget::finish`].
    Target {
        /// What to report of the disk (its identifiers; `format` and
        /// `sent_bytes` are filled in by the engine).
        written: StreamWritten,
        /// Where the engine writes.
        target: Box<dyn DiskTarget + 'a>,
    },
}

impl std::fmt::Debug for DiskSink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskSink::Stream(_) => f.write_str("DiskSink::Stream"),
            DiskSink::Target { written, .. } => write!(f, "DiskSink::Target({:?})", written.ids),
        }
    }
}

/// A VM being recreated: its disks are written one by one, then it is
/// committed or, on failure, aborted (removed).
pub trait RestoreSession {
    /// The VM made.
    fn vm(&self) -> &CreatedVm;
    /// Where to write the disk at `position`.
    ///
    /// # Errors
    /// A position the VM has no disk for; the host's refusal.
    fn disk(&mut self, position: u32) -> Result<DiskSink<'_>>;
    /// Every disk is written: the VM is ready.
    ///
    /// # Errors
    /// The host's refusal of a last step.
    fn commit(self: Box<Self>) -> Result<CreatedVm>;
    /// Removes the VM and its disks.
    ///
    /// # Errors
    /// What could not be removed.
    fn abort(self: Box<Self>) -> Result<()>;
}

/// A virtualisation host (a XenServer pool, a Hyper-V host): the
/// hypervisor seam. **API boundary.**
pub trait Hypervisor {
    /// The kind of host, as recorded in [`VmInfo::hypervisor`] (`xen`,
    /// `hyperv`).
    fn kind(&self) -> &str;
    /// The guest VMs (no templates, snapshots or control domains), each with
    /// the configuration a backup would record.
    ///
    /// # Errors
    /// The host's refusal or an unreachable host.
    fn list_vms(&self) -> Result<Vec<VmInfo>>;
    /// The name under which a VM (given by name, uuid or host handle) is
    /// recorded in the store — how the engine finds its previous version.
    ///
    /// # Errors
    /// No such VM, or several match.
    fn vm_name(&self, vm: &str) -> Result<String>;
    /// Snapshots the VM and prepares a source per disk; `previous` holds the
    /// change tokens of the version this backup builds on.
    ///
    /// # Errors
    /// No such VM; the host refuses the snapshot (a quiesce that is
    /// [`Quiesce::Required`] but not offered, a full SR…). A snapshot taken
    /// before an error is released.
    fn begin_backup(
        &self,
        vm: &str,
        previous: &[PreviousDisk],
        opts: &SnapshotOptions,
    ) -> Result<Box<dyn BackupSession + '_>>;
    /// Creates a halted VM from a recorded configuration, with empty disks
    /// for `disks`, placed as asked.
    ///
    /// # Errors
    /// A configuration this host cannot recreate (not backed up from this
    /// kind of host, or a disk recorded that `disks` lacks); unknown
    /// storage or network; the host's refusal. Nothing is left behind.
    fn create_vm(
        &self,
        config: &VmInfo,
        disks: &[PlannedDisk],
        placement: &Placement,
    ) -> Result<Box<dyn RestoreSession + '_>>;
    /// Where to write over an existing disk (by the host's id or handle),
    /// every byte (holes must overwrite what the disk held).
    ///
    /// # Errors
    /// No such disk; the host refuses (a disk in use by a running VM).
    fn existing_disk(&self, disk: &str) -> Result<DiskSink<'_>>;
}
