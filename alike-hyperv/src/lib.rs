//! # alike-hyperv
//!
//! The Hyper-V adapter. Host control and a simulator come later (issue 4).
//! The VHDX/AVHDX format lives in `alike-formats` (restores and exports
//! write it whatever the hypervisor); it is re-exported here as [`vhdx`].
//! It depends on `alike-core` and `alike-formats` only.

pub use alike_formats::vhdx;
pub use alike_formats::vhdx::VhdxError;
