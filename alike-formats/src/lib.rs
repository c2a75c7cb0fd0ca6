//! # alike-formats
//!
//! The disk image formats, read and written, apart from any hypervisor:
//! backups read them (XAPI exports, Hyper-V checkpoints, image files),
//! restores and exports write them whatever the hypervisor, and the XAPI
//! simulator serves its exports with them without linking the Xen client.
//! It depends on `alike-core` only.
//!
//! Modules:
//! - [`vhd`]: legacy VHD — [`vhd::VhdSource`] (fixed, dynamic and
//!   differencing files with parent chains), [`vhd::StreamReader`] (a VHD
//!   arriving over a stream, as XAPI's `export_raw_vdi?format=vhd`),
//!   [`vhd::VhdTarget`], [`vhd::write_differencing`] and
//!   [`vhd::StreamWriter`]; errors are [`vhd::VhdError`].
//! - [`vhdx`]: VHDX and AVHDX — [`vhdx::VhdxSource`] (differencing chains,
//!   the log replayed in memory, change tracking from checkpoints) and
//!   [`vhdx::VhdxTarget`]; errors are [`vhdx::VhdxError`].
//!
//! Both readers are positional and `Sync` and report allocated ranges.
//! Every parser of untrusted bytes has a `fuzz_one` (the body of the
//! `vhd` and `vhdx` fuzz targets).
//!
//! ## Example
//! ```
//! use alike_core::{DiskSource, MemSource};
//! use alike_formats::vhd::{VhdOptions, VhdSource, write_stream};
//!
//! let disk = MemSource { label: "disk".into(), data: vec![7u8; 1 << 20] };
//! let mut image = Vec::new();
//! write_stream(&disk, &mut image, &VhdOptions::default())?;
//! assert_eq!(VhdSource::from_bytes("image", image)?.size(), 1 << 20);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod vhd;
pub mod vhdx;
