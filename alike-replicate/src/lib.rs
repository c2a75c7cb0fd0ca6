//! # alike-replicate
//!
//! The replication engine: the protocol's [`alike_repl::Sender`] fed from
//! [`alike_core::DiskSource`]s (image files, versions in a store, a
//! hypervisor's snapshot disks — with change tokens where the source has
//! them), its [`alike_repl::Receiver`] writing an
//! [`alike_replica::ReplicaTarget`]'s run, joined
//!
//! - in one process over an in-memory link ([`replicate_local`]): the
//!   whole protocol runs, so the sender's `sent_bytes` are what would
//!   cross a network;
//! - or as one end of two processes over TCP ([`run_sender`],
//!   [`run_receiver`], with [`dial`] and [`accept`]): push (the sender
//!   dials) or pull (the receiver dials), on port 2812 by default.
//!
//! The sender reads each disk once: a reader thread cuts and hashes it
//! with the replica's key and hands the chunks to the protocol, which
//! offers them, learns which the replica lacks, and sends those,
//! compressed. With a state file ([`SenderOptions::state_file`]) a later
//! run reads only what each source says changed. The receiver answers from
//! the replica's record, copies locally what the replica (or a seed, or an
//! earlier attempt's journal) holds elsewhere, checks each disk's digest,
//! and commits the point before acknowledging it.
//!
//! The facade (`alike`) opens sources and replicas from a job description
//! and calls these; its docs have the examples.
//!
//! ```
//! use alike_core::MemSource;
//! use alike_replica::{ReplicaDir, ReplicaTarget};
//! use alike_replicate::{LinkOptions, ReceiverOptions, SenderOptions, replicate_local};
//!
//! let dir = tempfile::tempdir()?;
//! let replica = ReplicaDir::builder().vm("web1").open_or_create(dir.path())?;
//! let mut data = vec![7u8; 1 << 20];
//! let disk = MemSource { label: "disk0".into(), data: data.clone() };
//! let sender = SenderOptions::new("web1");
//! let first = replicate_local(&[&disk], &sender, &replica, &ReceiverOptions::default(), &[], &LinkOptions::default())?;
//! assert_eq!(first.receiver.point, 1);
//!
//! data[4096..8192].fill(1);
//! let disk = MemSource { label: "disk0".into(), data };
//! let second = replicate_local(&[&disk], &sender, &replica, &ReceiverOptions::default(), &[], &LinkOptions::default())?;
//! assert!(second.sender.needed_bytes <= 64 << 10, "one chunk travels");
//! assert_eq!(replica.points()?.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod fuzz;
mod link;
mod meta;
mod progress;
mod receiver;
mod sender;
mod state;

pub use error::{ReplicateError, Result};
pub use link::{LinkOptions, LocalReport, TcpEnd, accept, dial, replicate_local, run_receiver, run_sender};
pub use meta::{META_RUN, META_SUMMARY, PointName, RunMeta, SenderSummary};
pub use progress::{DiskProgress, ReplicationProgress, ReplicationProgressFn};
pub use receiver::{ReceiverOptions, ReceiverReport, Seed, replica_info};
pub use sender::{DEFAULT_HELD_BUDGET, SenderOptions, SenderReport};
pub use state::{SenderState, StateDisk};

/// Which end made the connection.
pub use alike_repl::Dial;
/// The body of the `replicate` fuzz target.
pub use fuzz::fuzz_one;

/// The TCP port of replication by default.
pub use alike_repl::net::DEFAULT_PORT;
