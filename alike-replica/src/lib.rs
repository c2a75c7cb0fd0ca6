//! # alike-replica
//!
//! The receiving end of replication: where a replica's points live, what
//! the receiver knows of them, and how a run adds one without ever leaving
//! the replica torn. It depends on `alike-core` and `alike-formats` only
//! (no network, no store): the protocol (crate `alike-repl`) drives a
//! [`Run`] from the wire, the facade from image files or a hypervisor.
//!
//! - [`ReplicaTarget`] (**API boundary**): a replica's committed
//!   [`Point`]s, its [`Record`], [`ReplicaTarget::begin`] a [`Run`],
//!   [`ReplicaTarget::keep_last`], reading a point's disk as an
//!   [`alike_core::DiskSource`] and [`ReplicaTarget::export`] to a raw
//!   image. A target supplies a [`RunLayer`] (where a run writes); every
//!   target shares [`Run`] (offers, checks, the new record).
//! - [`ReplicaDir`]: a replica kept as a folder of VHDX files (a base
//!   VHDX and one differencing AVHDX per point), as a Hyper-V host or a
//!   share holds one. The layout, and why it is never torn, are in the
//!   [`ReplicaDir`] docs and `docs/replica-dir.md`.
//! - [`Record`]: per disk, the keyed id of every chunk of the newest point,
//!   cut as a store cuts ([`alike_core::Chunking`]); [`Record::lacks`]
//!   answers which offered extents the replica does not hold. Rebuilt from
//!   the replica when lost or damaged. [`cut_disk`] is the cut a sender
//!   offers.
//! - [`replicate_local`]: both ends in one process.
//!
//! Errors are [`ReplicaError`] (it crosses seams as
//! [`alike_core::Error::Seam`] with its kind and retry class).
//!
//! ## The commands above it
//!
//! The CLI's replica commands are thin layers over this crate:
//!
//! | command | calls |
//! |---|---|
//! | `alike replicate --vm NAME --to-dir DIR DISK…` | `ReplicaDir::builder().vm(NAME).open_or_create(DIR)`, then [`replicate_local`] (or the protocol's two ends over one process) with a [`alike_core::DiskSource`] per image; prints [`ReplicateReport::point`] (`--json`: the report) |
//! | `alike replica list DIR [--json]` | [`ReplicaDir::open`] then [`ReplicaTarget::points`]: [`Point`]s oldest first, serialised with `point`, `time` (RFC 3339), `time_ms` and `disks` |
//! | `alike replica export DIR --point P --disk N --output FILE` | [`ReplicaDir::open`] then [`ReplicaTarget::export`] |
//! | `--keep N` | [`ReplicateOptions::keep`], or [`ReplicaTarget::keep_last`] |
//!
//! ## Example
//!
//! ```
//! use alike_core::MemSource;
//! use alike_replica::{ExportOptions, ReplicaDir, ReplicaTarget, ReplicateOptions, replicate_local};
//!
//! let dir = tempfile::tempdir()?;
//! let replica = ReplicaDir::builder().vm("web1").open_or_create(dir.path().join("web1"))?;
//!
//! // `alike replicate --vm web1 --to-dir DIR disk.img`, twice.
//! let mut data = vec![0u8; 4 << 20];
//! data[..5].copy_from_slice(b"hello");
//! let disk = MemSource { label: "disk0".into(), data: data.clone() };
//! let first = replicate_local(&replica, &[&disk], ReplicateOptions::default().time_ms(1_000))?;
//! data[1 << 20] = 1;
//! let disk = MemSource { label: "disk0".into(), data: data.clone() };
//! let second = replicate_local(&replica, &[&disk], ReplicateOptions::default().time_ms(2_000))?;
//! assert!(second.stats.needed_bytes < 64 << 10, "only the changed chunk travels");
//!
//! // `alike replica list DIR --json`
//! let points = replica.points()?;
//! assert_eq!(points.iter().map(|p| p.point).collect::<Vec<_>>(), [first.point, second.point]);
//! assert_eq!(points[0].time, "1970-01-01T00:00:01.000Z");
//!
//! // `alike replica export DIR --point 1 --disk 0 --output out.img`
//! let out = dir.path().join("out.img");
//! replica.export(first.point, 0, &out, &ExportOptions::default())?;
//! assert_eq!(&std::fs::read(&out)?[..5], b"hello");
//! assert_eq!(std::fs::read(&out)?[1 << 20], 0, "point 1 as it was");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Cargo features
//!
//! None.

mod dir;
mod error;
mod journal;
mod local;
mod manifest;
mod record;
mod run;
mod target;

// The seam
pub use target::{ExportOptions, ExportReport, Point, PointDisk, ReplicaTarget, RunLayer, rfc3339};
// Runs and the record
pub use record::{CutSink, MAX_EXTENT, Record, RecordDisk, cut_disk, cut_range, cut_range_batched};
pub use run::{Committed, CopyKind, Run, RunStats};
// A folder of VHDX files
pub use dir::{DEFAULT_VHDX_BLOCK_SIZE, MAX_POINTS, ReplicaDir, ReplicaDirBuilder};
// Both ends in one process
pub use local::{ReplicateOptions, ReplicateReport, replicate_local};
// Errors
pub use error::{ReplicaError, Result};

#[cfg(test)]
mod tests {
    #[test]
    fn handles_are_shared_across_threads() {
        fn both<T: Send + Sync>() {}
        both::<crate::Run<'static>>();
        both::<crate::ReplicaDir>();
        both::<crate::Record>();
        both::<Box<dyn crate::ReplicaTarget>>();
    }
}
