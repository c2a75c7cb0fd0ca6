//! # alike-hyperv
//!
//! The Hyper-V adapter. Today: a WS-Management client for WMI over WinRM
//! ([`wsman`]: NTLM with message encryption, Enumerate/Pull with WQL, Get,
//! method invocation and job following), tested against the simulator
//! `alike-hyperv-sim` (which does not link this crate). The backup cycle
//! over the hypervisor trait (recovery checkpoints, disks read over SMB,
//! reference points and RCT) comes next (issue 17).
//!
//! The VHDX/AVHDX format lives in `alike-formats` (restores and exports
//! write it whatever the hypervisor); it is re-exported here as [`vhdx`].

mod error;
pub mod wsman;

pub use alike_formats::vhdx;
pub use alike_formats::vhdx::VhdxError;
pub use error::{Error, NtlmError, Result};
