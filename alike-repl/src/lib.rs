//! # alike-repl
//!
//! The replication protocol of alike (`alike-repl/1`), sans I/O: the
//! state machines of the two ends of a replication — the [`Sender`], next
//! to the source VM, and the [`Receiver`], next to the replica — over a
//! Noise-encrypted record layer, and a thin blocking TCP shell ([`net`]).
//! The bytes are specified in `docs/replication-protocol.md` and pinned by
//! `testdata/golden-repl-v1.json`.
//!
//! **What crosses.** After a clear preamble (magic, version: a peer of
//! another version is refused with an error naming both) the ends run
//! `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` with the per-job secret as the
//! pre-shared key: each end proves it holds the secret, every later byte
//! is encrypted and authenticated, and a replayed, injected, reordered or
//! altered record fails. Then, per disk: the sender offers the ids of the
//! extents of each changed range in batches; the receiver answers which
//! extents its replica lacks; only those travel, zstd-compressed, and the
//! receiver checks each against its id; the disk ends with a digest of the
//! whole disk that the receiver checks against the new point; the sender
//! asks for the commit and the receiver acknowledges once the point is
//! durable.
//!
//! **Pipelined.** The sender does not wait for an answer before offering
//! the next batch: up to a window of batches (32 by default, each up to
//! 1024 extents) are outstanding at once, so a transfer over a link with a
//! long round trip takes a few round trips longer than over a short one,
//! not one per batch. Memory is bounded on both ends by the window, the
//! batch size, the frame size (8 MiB) and the send buffer (8 MiB).
//!
//! **Roles and flow.** Which end dialled ([`Dial`]) decides only the Noise
//! roles; push (the sender dials) and pull (the receiver dials) are the
//! shell's business.
//!
//! **No I/O, no clock, no randomness.** The caller hands in the job secret
//! and a fresh random ephemeral key per connection ([`Config::new`]), moves
//! bytes with `poll_transmit`/`handle_input` ([`Endpoint`]), and acts on
//! `poll_event`. The engine that reads sources and writes replicas is not
//! here.
//!
//! Dependencies: `snow` (Noise), `blake3` (ids and digests), `zstd`,
//! `thiserror`; the TCP shell uses `std::net`. [`fuzz_one`] is the body of
//! the `repl` fuzz target.
//!
//! ## Example: a whole exchange in memory
//! ```
//! use alike_repl::{
//!     disk_digest, extent_id, Config, Dial, DiskSpec, Extent, Geometry, Pipe, Receiver,
//!     ReceiverEvent, ReplicaInfo, Sender, SenderEvent,
//! };
//!
//! let secret = [7u8; 32]; // the job's secret, from the orchestrator
//! // One fresh random ephemeral key per connection (fixed here for the example).
//! let mut s = Sender::new(Config::new("job-1", secret, Dial::Connect, [1; 32]))?;
//! let replica_key = [9u8; 32];
//! let mut r = Receiver::new(
//!     Config::new("job-1", secret, Dial::Accept, [2; 32]),
//!     ReplicaInfo { id_key: replica_key, base: vec![] },
//! )?;
//!
//! // The source: 3 blocks of 4 KiB, the middle one zero. The replica already
//! // holds block 0.
//! let mut source = vec![0u8; 3 * 4096];
//! source[..4096].fill(1);
//! source[8192..].fill(3);
//! let mut replica = vec![0u8; 3 * 4096];
//! replica[..4096].fill(1);
//! let spec = DiskSpec { disk: 0, size: source.len() as u64, geometry: Geometry::Fixed { block_size: 4096 } };
//! let mut digest = [0u8; 32];
//!
//! let (mut to_receiver, mut to_sender) = (Pipe::new(), Pipe::new());
//! let mut record = Vec::new(); // the receiver's map of the new point
//! let mut acked = None;
//! while acked.is_none() {
//!     to_receiver.pump(&mut s, &mut r)?;
//!     to_sender.pump(&mut r, &mut s)?;
//!     while let Some(ev) = r.poll_event() {
//!         match ev {
//!             ReceiverEvent::Offer(o) => {
//!                 // Which ids does the replica lack? (Here: look at its bytes.)
//!                 let needed: Vec<bool> = o.extents.iter().map(|e| {
//!                     let have = &replica[e.offset as usize..e.end() as usize];
//!                     extent_id(&replica_key, have) != e.id
//!                 }).collect();
//!                 record.extend(o.extents.iter().copied());
//!                 r.need(o.batch, &needed)?;
//!             }
//!             ReceiverEvent::Data(f) => {
//!                 for (e, bytes) in f.iter() {
//!                     replica[e.offset as usize..e.end() as usize].copy_from_slice(bytes);
//!                 }
//!             }
//!             ReceiverEvent::DiskEnd { disk, .. } => r.finish_disk(disk, disk_digest(spec.size, &record)?)?,
//!             ReceiverEvent::Commit { .. } => r.ack(b"point-1")?, // once the point is durable
//!             _ => {}
//!         }
//!     }
//!     while let Some(ev) = s.poll_event() {
//!         match ev {
//!             SenderEvent::Ready { replica, .. } => {
//!                 s.begin_disk(spec)?;
//!                 // The changed range is the whole disk; zero blocks are holes.
//!                 let extents: Vec<Extent> = source
//!                     .chunks(4096)
//!                     .enumerate()
//!                     .filter(|(_, b)| b.iter().any(|&x| x != 0))
//!                     .map(|(i, b)| Extent { offset: i as u64 * 4096, len: 4096, id: extent_id(&replica.id_key, b) })
//!                     .collect();
//!                 digest = disk_digest(spec.size, &extents)?;
//!                 s.offer(0, &[0..spec.size], extents)?; // more batches would follow at once
//!             }
//!             SenderEvent::Need(n) => {
//!                 for e in &n.extents {
//!                     s.send_data(n.disk, e.offset, &source[e.offset as usize..e.end() as usize])?;
//!                 }
//!                 if s.pending(0) == 0 {
//!                     s.end_disk(0, digest)?;
//!                     s.commit()?;
//!                 }
//!             }
//!             SenderEvent::Acked { point } => acked = Some(point),
//!             _ => {}
//!         }
//!     }
//! }
//! assert_eq!(acked.as_deref(), Some(&b"point-1"[..]));
//! assert_eq!(replica, source);
//! assert_eq!(s.stats().needed_extents, 1, "only block 2 travelled");
//! # Ok::<(), alike_repl::Error>(())
//! ```

mod digest;
mod error;
mod fuzz;
mod link;
pub mod net;
mod pipe;
mod receiver;
mod sender;
pub mod wire;

// The state machines and what drives them.
pub use link::{Config, DEFAULT_SEND_BUFFER, Dial, Endpoint, Progress, Stats};
pub use pipe::Pipe;
pub use receiver::{DataFrame, Receiver, ReceiverEvent};
pub use sender::{DiskStats, NeedBatch, Sender, SenderEvent};

// What the messages carry.
pub use wire::{DiskSpec, Extent, Geometry, Limits, Offer, ReplicaInfo, Role};

// Ids and digests.
pub use digest::{DIGEST_LABEL, DiskDigest, disk_digest, extent_id};

// Errors.
pub use error::Error;

// Fuzzing.
pub use fuzz::fuzz_one;
