//! Progress of a replication: per disk, bytes read, hashed, offered,
//! needed and sent, shared between the reader thread and the engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// One disk's progress (and, at the end, its report).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DiskProgress {
    /// The disk, 0-based, in the VM's order.
    pub disk: usize,
    /// Its virtual size.
    pub size: u64,
    /// Bytes this run reads from it (what its source reports allocated,
    /// inside what changed when only changes are read).
    pub total_bytes: u64,
    /// Bytes read so far.
    pub read_bytes: u64,
    /// Bytes of chunks cut and hashed (the data among them).
    pub hashed_bytes: u64,
    /// Bytes of chunks offered to the receiver.
    pub offered_bytes: u64,
    /// Offered bytes the replica lacked.
    pub needed_bytes: u64,
    /// Those bytes as sent, compressed (without framing).
    pub sent_bytes: u64,
    /// Whether only what changed since the replica's point was read.
    pub changed_only: bool,
}

/// What a progress callback gets: every disk, and the bytes on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReplicationProgress {
    /// Each disk.
    pub disks: Vec<DiskProgress>,
    /// Bytes this end has put on the wire (all of it: framing, offers, data).
    pub wire_sent_bytes: u64,
    /// Bytes this end has taken from the wire.
    pub wire_received_bytes: u64,
}

/// A replication progress callback; called from the engine's thread about
/// five times a second, and once at the end.
pub type ReplicationProgressFn = Arc<dyn Fn(&ReplicationProgress) + Send + Sync>;

/// Counters the reader thread updates.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) read: Vec<AtomicU64>,
    pub(crate) hashed: Vec<AtomicU64>,
}

impl Counters {
    pub(crate) fn new(disks: usize) -> Arc<Counters> {
        Arc::new(Counters {
            read: (0..disks).map(|_| AtomicU64::new(0)).collect(),
            hashed: (0..disks).map(|_| AtomicU64::new(0)).collect(),
        })
    }
    pub(crate) fn read(&self, d: usize) -> u64 {
        self.read[d].load(Ordering::Relaxed)
    }
    pub(crate) fn hashed(&self, d: usize) -> u64 {
        self.hashed[d].load(Ordering::Relaxed)
    }
}
