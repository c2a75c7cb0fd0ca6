//! # alike-hyperv
//!
//! The Hyper-V adapter: the VHDX/AVHDX disk format, read and written
//! ([`vhdx`]: [`vhdx::VhdxSource`] is an [`alike_core::DiskSource`] over a
//! file or a differencing chain, with change tracking from checkpoints;
//! [`vhdx::VhdxTarget`] an [`alike_core::DiskTarget`] writing dynamic and
//! differencing files). Host control and a simulator come later (issue 4).
//! It depends on `alike-core` only.

pub mod error;
pub mod vhdx;

pub use error::VhdxError;
