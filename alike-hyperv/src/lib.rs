//! # alike-hyperv
//!
//! The Hyper-V adapter. Today: a WS-Management client for WMI over WinRM
//! ([`wsman`]: NTLM with message encryption, Enumerate/Pull with WQL, Get,
//! method invocation and job following) and [`smb`] (the host's share read
//! over SMB2/3 without a mount, as a `vhdx::Files`, so a checkpoint's
//! VHDX/AVHDX chain opens on the host as it would locally), both tested
//! against the simulator `alike-hyperv-sim` (which does not link this
//! crate). The backup cycle over the hypervisor trait (recovery
//! checkpoints, reference points and RCT) comes next (issue 17).
//!
//! The VHDX/AVHDX format lives in `alike-formats` (restores and exports
//! write it whatever the hypervisor); it is re-exported here as [`vhdx`].

pub mod adapter;
mod error;
pub mod smb;
pub mod wsman;

pub use adapter::{HostOptions, HvDiskConfig, HvNicConfig, HvVmConfig, HyperVBackup, HyperVHost};
pub use alike_formats::vhdx;
pub use alike_formats::vhdx::VhdxError;
pub use error::{Error, NtlmError, Result};
