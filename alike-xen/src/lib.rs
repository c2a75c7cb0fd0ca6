//! # alike-xen
//!
//! The XenServer/XCP-ng adapter: XAPI client, NBD reader, pool adapter. Of
//! the workspace it depends on `alike-core`, `alike-formats` (the VHD
//! format, re-exported as [`vhd`]) and `alike-nbd` (the NBD protocol core,
//! re-exported as [`nbd::proto`]) only; the XAPI simulator is a crate of its
//! own, `alike-xen-sim`, that does not link this one.
//!
//! Modules:
//! - [`vhd`]: reading (files, chains, streams) and writing (restore
//!   targets, differencing images, upload streams) of legacy VHD images
//!   (`alike_formats::vhd`).
//! - [`nbd`]: an NBD client (sans-IO protocol core in [`nbd::proto`], a
//!   blocking TLS-capable connection with pipelined reads, and
//!   [`nbd::NbdDisk`], an [`alike_core::DiskSource`] over a connection pool)
//!   for XAPI's NBD export of a VDI.
//! - [`xapi`]: the XAPI client — JSON-RPC transport with sessions,
//!   re-login, pool-master redirects, typed errors, task polling, the calls
//!   a backup needs, and `/export_raw_vdi` / `/import_raw_vdi` streaming.
//! - [`adapter`]: the pool adapter over these — inventory, Enhanced Backup
//!   with CBT ([`adapter::XenPool::begin_backup`], snapshot VDIs as
//!   [`alike_core::DiskSource`]s over NBD or exports), and restore of whole
//!   VMs and single disks.
//!
//! TLS everywhere is rustls with the ring provider (set per connection; no
//! process-wide provider needed), with certificate pinning by SHA-256
//! fingerprint ([`ServerCertCheck`]).

pub mod adapter;
mod error;
pub mod nbd;
pub mod xapi;

pub use alike_formats::vhd;

pub use error::{Error, Result};
pub use nbd::ServerCertCheck;
