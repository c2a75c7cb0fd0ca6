//! # alike-xen
//!
//! The XenServer/XCP-ng adapter: XAPI client, VHD format, NBD reader and a
//! XAPI simulator. It depends on `alike-core` only.
//!
//! Today it holds the [`vhd`] module: reading (files, chains, streams) and
//! writing (restore targets, differencing images, upload streams) of legacy
//! VHD images. The XAPI client and NBD reader follow (issues 4 and 5).

mod error;
pub mod nbd;
pub mod vhd;

pub use error::{Error, Result};
pub use nbd::ServerCertCheck;
