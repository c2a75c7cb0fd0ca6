//! The history of a replica's runs: one JSON line per run, appended to
//! `history.jsonl` beside the replica (`docs/replica-dir.md` §9) by the
//! end that writes the replica, whether the run succeeded or not.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The history file's name in a replica folder.
pub(crate) const HISTORY: &str = "history.jsonl";
/// The most bytes of history read (older lines beyond are skipped).
const MAX_HISTORY: u64 = 64 << 20;

/// One run of a replication, as the replica's history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReplicationRecord {
    /// When the run started, RFC 3339.
    pub started: String,
    /// The same instant in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// `"ok"`, `"failed"` or `"cancelled"`.
    pub result: String,
    /// The point the run committed (none when it failed).
    pub point: Option<u64>,
    /// Bytes the sender read from the sources (0 when it did not say).
    pub read_bytes: u64,
    /// Bytes the sender put on the wire (as the receiver took them).
    pub sent_bytes: u64,
    /// Wall time.
    pub elapsed_seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
}

impl ReplicationRecord {
    pub(crate) fn new(started_ms: u64) -> ReplicationRecord {
        ReplicationRecord {
            started: alike_replica::rfc3339(started_ms),
            started_ms,
            result: "ok".into(),
            point: None,
            read_bytes: 0,
            sent_bytes: 0,
            elapsed_seconds: 0.0,
            error: None,
        }
    }

    /// Fills in a failure.
    pub(crate) fn failed(mut self, e: &Error) -> ReplicationRecord {
        self.result = if e.kind() == crate::ErrorKind::Cancelled { "cancelled" } else { "failed" }.into();
        self.error = Some(e.to_string());
        self
    }
}

/// Appends `rec` to the history of the replica in `dir` (best effort: a
/// replica on read-only media has none).
pub(crate) fn append(dir: &Path, rec: &ReplicationRecord) {
    let line = match serde_json::to_string(rec) {
        Ok(l) => l + "\n",
        Err(_) => return,
    };
    let path = dir.join(HISTORY);
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_data()));
    if let Err(e) = r {
        tracing::warn!(file = %path.display(), error = %e, "the run's history record was not written");
    }
}

/// The history of the replica in `dir`, oldest first (lines that do not
/// parse — a line cut by a crash — are skipped).
pub(crate) fn read(dir: &Path) -> Result<Vec<ReplicationRecord>> {
    use std::io::{Read, Seek, SeekFrom};
    let path = dir.join(HISTORY);
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Engine(alike_core::Error::Io { path, source: e })),
    };
    let io = |e| Error::Engine(alike_core::Error::Io { path: dir.join(HISTORY), source: e });
    let len = f.metadata().map_err(io)?.len();
    if len > MAX_HISTORY {
        f.seek(SeekFrom::Start(len - MAX_HISTORY)).map_err(io)?;
    }
    let mut bytes = Vec::new();
    f.take(MAX_HISTORY).read_to_end(&mut bytes).map_err(io)?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}
