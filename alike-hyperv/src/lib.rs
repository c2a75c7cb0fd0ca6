//! # alike-hyperv
//!
//! The Hyper-V adapter: a WS-Management client for WMI over WinRM
//! ([`wsman`]: NTLM with message encryption, Enumerate/Pull with WQL, Get,
//! method invocation and job following), [`smb`] (the host's share read
//! and written over SMB2/3 without a mount; as a `vhdx::Files`, a
//! checkpoint's VHDX/AVHDX chain opens on the host as it would locally),
//! [`adapter`] (`HyperVHost`, the `Hypervisor`: inventory and the backup
//! cycle with recovery checkpoints, reference points and RCT) and
//! [`restore`] (a VM defined on the host from a version), [`replica`]
//! (replica VMs: marked, refused a start, failed over), all tested
//! against the simulator `alike-hyperv-sim` (which does not link this
//! crate).
//!
//! The VHDX/AVHDX format lives in `alike-formats` (restores and exports
//! write it whatever the hypervisor); it is re-exported here as [`vhdx`].

pub mod adapter;
mod error;
pub mod replica;
pub mod restore;
pub mod smb;
pub mod wsman;

pub use adapter::{HostOptions, HvDiskConfig, HvNicConfig, HvVmConfig, HyperVBackup, HyperVHost};
pub use alike_formats::vhdx;
pub use alike_formats::vhdx::VhdxError;
pub use error::{Error, NtlmError, Result};
pub use replica::ReplicaAuthorization;
