//! # alike-xen
//!
//! The XenServer/XCP-ng adapter: XAPI client, VHD format, NBD reader and a
//! XAPI simulator. Not written yet (issues 4 and 5); the crate exists so the
//! workspace has its final shape. It depends on `alike-core` only.
