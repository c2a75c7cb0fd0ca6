//! An NBD export as an [`alike_core::DiskSource`]: a small pool of
//! connections shared by the engine's reader threads.

use alike_core::Recover;
use std::sync::{Condvar, Mutex, MutexGuard};

use alike_core::DiskSource;

use super::client::{NbdBuilder, NbdClient};
use super::proto::ExportInfo;
use super::tls::TlsSetup;
use crate::{Error, Result};

/// An NBD export as a [`DiskSource`] that several threads read at once.
///
/// **Concurrency choice: a pool of connections**, not one connection behind
/// a mutex. A thread takes an idle connection (or opens one, up to
/// [`NbdBuilder::connections`], else waits for one to come back), reads,
/// and returns it; a large read is pipelined on its connection. So reads of
/// different threads run in parallel on separate TCP (and TLS) streams —
/// which also spreads TLS decryption over cores — and no thread waits on
/// another's reply. A single shared connection would need a dispatcher
/// thread to interleave writes and reads, and TLS would serialise on it.
/// XAPI's NBD server serves several connections to one export (Xen
/// Orchestra reads with several), each attaching the VDI read-only.
///
/// A connection that fails (lost, timed out, protocol violation) is
/// dropped; a read that failed because its connection was lost is retried
/// once on a fresh connection. A read the server refuses (an NBD error
/// number) is not retried.
pub struct NbdDisk {
    builder: NbdBuilder,
    tls: Option<TlsSetup>,
    label: String,
    info: ExportInfo,
    pool: Mutex<Pool>,
    returned: Condvar,
}

struct Pool {
    idle: Vec<NbdClient>,
    open: usize,
}

impl std::fmt::Debug for NbdDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdDisk").field("label", &self.label).field("info", &self.info).finish()
    }
}

impl NbdBuilder {
    /// Opens the export as a pooled [`NbdDisk`] (one connection now, more on demand).
    ///
    /// # Errors
    /// As [`NbdBuilder::connect`].
    pub fn open_disk(&self) -> Result<NbdDisk> {
        let tls = self.tls.as_ref().map(TlsSetup::new).transpose()?;
        let first = self.connect_with(tls.as_ref())?;
        Ok(NbdDisk {
            label: self.disk_label(),
            info: first.info().clone(),
            builder: self.clone(),
            tls,
            pool: Mutex::new(Pool { idle: vec![first], open: 1 }),
            returned: Condvar::new(),
        })
    }
}

impl NbdDisk {
    /// The export as negotiated on the first connection.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// Connections open now (idle or in use).
    pub fn open_connections(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.locked()
    }

    fn take(&self) -> Result<NbdClient> {
        let mut pool = self.lock();
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok(c);
            }
            if pool.open < self.builder.connections {
                pool.open += 1;
                drop(pool);
                return self.fresh();
            }
            pool = self.returned.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Opens a connection whose slot is already counted.
    fn fresh(&self) -> Result<NbdClient> {
        let r = self.builder.connect_with(self.tls.as_ref());
        if r.is_err() {
            self.forget();
        }
        r
    }

    fn give_back(&self, c: NbdClient) {
        if c.is_broken() {
            drop(c);
            self.forget();
            return;
        }
        self.lock().idle.push(c);
        self.returned.notify_one();
    }

    /// Frees a connection slot.
    fn forget(&self) {
        self.lock().open -= 1;
        self.returned.notify_one();
    }

    /// Reads through the pool (the body of [`DiskSource::read_at`]).
    ///
    /// # Errors
    /// As [`NbdClient::read_at`].
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut c = self.take()?;
        let r = c.read_at(offset, buf);
        let lost = matches!(r, Err(Error::Connection { .. })) && c.is_broken();
        self.give_back(c);
        if !lost {
            return r;
        }
        tracing::warn!(disk = %self.label, offset, "NBD connection lost; retrying the read on a new connection");
        let retry = self.take().and_then(|mut c| {
            let r = c.read_at(offset, buf);
            self.give_back(c);
            r
        });
        // When the retry fails too, the first failure is the one to report
        // (the retry's is usually "cannot connect" to a server that died).
        retry.or_else(|e2| {
            tracing::warn!(disk = %self.label, offset, error = %e2, "NBD read retry failed");
            r
        })
    }
}

impl DiskSource for NbdDisk {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn size(&self) -> u64 {
        self.info.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        self.read(offset, buf).map_err(|e| alike_core::Error::SourceRead {
            disk: self.label.clone(),
            offset,
            source: e.into_io(),
        })
    }
}
