//! XAPI's HTTP handlers: `GET /export_raw_vdi` as a streaming
//! [`std::io::Read`] and `PUT /import_raw_vdi` from one, `session_id` in
//! the query as XAPI expects.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use alike_core::DiskSource;
use reqwest::Url;
use reqwest::blocking::{Body, Response};
use reqwest::header::CONTENT_TYPE;
use serde_json::json;

use super::client::{Client, http_client, status_error};
use crate::nbd::redact_export;
use crate::vhd::{StreamWriter, VhdOptions};
use crate::{Error, Result};

/// What `GET /export_raw_vdi` sends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportFormat {
    /// The whole virtual disk, `virtual_size` bytes.
    Raw,
    /// A dynamic VHD of the allocated blocks (read it with [`crate::vhd::StreamReader`]).
    Vhd,
    /// A differencing VHD of the blocks that differ from `base` (a VDI ref or uuid).
    VhdDelta {
        /// The base VDI.
        base: String,
    },
}

/// What `PUT /import_raw_vdi` receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportFormat {
    /// Raw bytes from offset 0.
    Raw,
    /// A VHD (dynamic or fixed), as [`crate::vhd::write_stream`] writes it.
    Vhd,
    /// XAPI's framed raw import (`format=raw&chunked=true`): records of a
    /// `u64` LE offset, a `u32` LE length and that many bytes, written at
    /// that offset; a record of offset 0 and length 0 ends the body. Only
    /// the bytes the records carry are written: the rest of the VDI stays.
    RawChunked,
}

/// A VDI export arriving over HTTP: read it front to back; it is never
/// buffered whole. XAPI streams without a `Content-Length` and ends by
/// closing the connection, so a connection dropped early would look like a
/// normal end: for a raw export the expected length (the VDI's virtual
/// size) is checked, and ending short is an error; a VHD stream carries its
/// own end (the footer, which [`crate::vhd::StreamReader`] insists on).
pub struct ExportStream {
    resp: Response,
    label: String,
    read: u64,
    expected: Option<u64>,
}

impl std::fmt::Debug for ExportStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportStream")
            .field("label", &self.label)
            .field("read", &self.read)
            .field("expected", &self.expected)
            .finish()
    }
}

impl ExportStream {
    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
    /// The length the stream must have, when known.
    pub fn expected_len(&self) -> Option<u64> {
        self.expected
    }
    /// "export of VDI …" (for messages).
    pub fn label(&self) -> &str {
        &self.label
    }

    fn fail(&self, kind: io::ErrorKind, during: String, source: io::Error) -> io::Error {
        io::Error::new(kind, Error::Connection { server: self.label.clone(), during, source })
    }
}

impl Read for ExportStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // All the bytes expected have come: the end, whatever the
        // connection does next (a TLS peer closing without close_notify).
        if self.expected.is_some_and(|e| self.read == e) {
            return Ok(0);
        }
        match self.resp.read(buf) {
            Ok(0) if !buf.is_empty() => match self.expected {
                Some(exp) if self.read < exp => {
                    let during = format!("the stream ended after {} of {} bytes", self.read, exp);
                    let src = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed early");
                    Err(self.fail(io::ErrorKind::UnexpectedEof, during, src))
                }
                _ => Ok(0),
            },
            Ok(n) => {
                self.read += n as u64;
                if let Some(exp) = self.expected.filter(|&e| self.read > e) {
                    let during = format!("the stream is longer than the {exp} bytes expected");
                    let src = io::Error::new(io::ErrorKind::InvalidData, "too long");
                    return Err(self.fail(io::ErrorKind::InvalidData, during, src));
                }
                Ok(n)
            }
            Err(e) => {
                let during = format!("reading after {} bytes", self.read);
                Err(self.fail(e.kind(), during, with_causes(e)))
            }
        }
    }
}

/// An `io::Error` whose text carries its causes (reqwest's own says only
/// "request or response body error"; the cause — hyper's "end of file
/// before message length reached", a reset — is further down).
fn with_causes(e: io::Error) -> io::Error {
    let mut text = e.to_string();
    let mut cur = e.get_ref().and_then(|inner| inner.source());
    while let Some(c) = cur {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cur = c.source();
    }
    io::Error::new(e.kind(), text)
}

impl Client {
    /// A handler URL: `/<path>?<params>&session_id=<session>`.
    fn handler_url(&self, path: &str, params: &[(&str, &str)], session: &str) -> Result<Url> {
        let mut u = self.base_url().join(path).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            q.append_pair("session_id", session);
        }
        Ok(u)
    }

    fn session_for_http(&self) -> Result<String> {
        if let Some(s) = self.session_ref() {
            return Ok(s);
        }
        self.login()?;
        self.session_ref().ok_or_else(|| Error::BadReply { method: "login".into(), reason: "no session".into() })
    }

    /// `GET /export_raw_vdi?vdi=…&format=…[&base=…]&session_id=…`: the VDI's
    /// content as a stream. For [`ExportFormat::Raw`] the virtual size is
    /// asked first (`VDI.get_virtual_size`) so a short stream is caught.
    /// XAPI's 302 to the host that sees the SR is followed (its
    /// certificate must pass the same check). On HTTP 401 (session expired)
    /// it logs in again and retries once.
    ///
    /// # Errors
    /// [`Error::HttpStatus`] when XAPI refuses (404 for an unknown format,
    /// 500 with its message); [`Error::Http`] / [`Error::CertificateMismatch`]
    /// when the host cannot be reached. Reading the stream fails with an
    /// `io::Error` holding an [`Error::Connection`] that says how far it got.
    pub fn export_raw_vdi(&self, vdi: &str, format: &ExportFormat) -> Result<ExportStream> {
        let expected = match format {
            ExportFormat::Raw => Some(self.vdi_get_virtual_size(vdi)?),
            _ => None,
        };
        let mut params = vec![("vdi", vdi), ("format", if *format == ExportFormat::Raw { "raw" } else { "vhd" })];
        if let ExportFormat::VhdDelta { base } = format {
            params.push(("base", base.as_str()));
        }
        let label = format!("export of VDI {vdi}");
        let during = format!("exporting VDI {vdi}");
        // Per-read timeout (reqwest applies the client timeout to each body read); no total deadline.
        let http = http_client(self.tls(), self.connect_timeout(), Some(self.io_timeout()), None, true)?;
        let mut retried = false;
        loop {
            let session = self.session_for_http()?;
            let url = self.handler_url("export_raw_vdi", &params, &session)?;
            let resp = http.get(url.clone()).send().map_err(|e| self.http_error(&url, during.clone(), e))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                self.login()?;
                continue;
            }
            if !resp.status().is_success() {
                return Err(status_error(&url, during, resp));
            }
            tracing::debug!(url = %redact_export(url.as_str()), "export started");
            return Ok(ExportStream { resp, label, read: 0, expected });
        }
    }

    /// `PUT /import_raw_vdi?vdi=…&format=…&session_id=…&task_id=…`: writes
    /// `len` bytes from `body` over the VDI, with a `Content-Length` (XAPI
    /// refuses chunked transfer encoding), then waits for the import's task
    /// (XAPI answers 200 before it has consumed the body; the outcome is on
    /// the task). A 302 (the SR is not visible from this host) is an
    /// [`Error::HttpStatus`] naming where to go: a streamed body cannot be
    /// sent twice.
    ///
    /// # Errors
    /// [`Error::HttpStatus`], [`Error::Http`] (also when `body` fails or ends
    /// before `len` bytes), [`Error::Xapi`] when the task fails.
    pub fn import_raw_vdi(
        &self,
        vdi: &str,
        format: ImportFormat,
        body: impl Read + Send + 'static,
        len: u64,
    ) -> Result<()> {
        let fmt = match format {
            ImportFormat::Raw | ImportFormat::RawChunked => "raw",
            ImportFormat::Vhd => "vhd",
        };
        let task = self.task_create("alike import", &format!("import_raw_vdi {vdi}"))?;
        let label = format!("importing into VDI {vdi}");
        let session = self.session_for_http()?;
        let mut params = vec![("vdi", vdi), ("format", fmt), ("task_id", task.as_str())];
        if format == ImportFormat::RawChunked {
            params.push(("chunked", "true"));
        }
        let url = self.handler_url("import_raw_vdi", &params, &session)?;
        // No total deadline (an upload takes as long as it takes); stalled
        // bytes are caught by TCP_USER_TIMEOUT.
        let http = http_client(self.tls(), self.connect_timeout(), None, Some(self.io_timeout()), false)?;
        let sent = http
            .put(url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Body::sized(body, len))
            .send()
            .map_err(|e| self.http_error(&url, label.clone(), e));
        let outcome = match sent {
            Ok(resp) if resp.status().is_success() => {
                // Drain the (empty) body so the server sees a clean end;
                // never more than a little of it.
                let _ = io::copy(&mut resp.take(64 << 10), &mut io::sink());
                self.wait_task(&task, "import_raw_vdi").map(drop)
            }
            Ok(resp) => Err(status_error(&url, label, resp)),
            Err(e) => Err(e),
        };
        if outcome.is_err() {
            let _ = self.call("task.destroy", &[json!(task)]);
        }
        outcome
    }

    /// Uploads a disk over a VDI: raw (the source read front to back) or as
    /// a VHD written on the fly by [`StreamWriter`] (only allocated blocks
    /// are sent). A producer thread writes into a bounded pipe (4 × 1 MiB)
    /// that the upload reads, so the disk is never buffered whole. Returns
    /// the bytes sent.
    ///
    /// # Errors
    /// As [`Client::import_raw_vdi`]; the source's own error when reading it fails.
    pub fn import_disk(&self, vdi: &str, source: &dyn DiskSource, format: ImportFormat) -> Result<u64> {
        let writer = match format {
            ImportFormat::Vhd => Some(StreamWriter::new(source, &VhdOptions::default())?),
            ImportFormat::Raw => None,
            ImportFormat::RawChunked => {
                return Err(Error::InvalidArgument("import_disk sends raw or VHD bodies, not framed ones".into()));
            }
        };
        let len = writer.as_ref().map_or(source.size(), StreamWriter::len);
        let (tx, rx) = sync_channel::<Vec<u8>>(4);
        std::thread::scope(|scope| {
            let producer = alike_core::spawn_scoped(scope, "alike-upload", move || -> Result<()> {
                let mut out = PipeWriter { tx, buf: Vec::with_capacity(PIPE_PIECE) };
                match &writer {
                    Some(w) => {
                        w.write_to(&mut out)?;
                    }
                    None => copy_source(source, &mut out)?,
                }
                out.finish().map_err(|e| Error::Write { file: "upload pipe".into(), offset: len, source: e })
            })
            .map_err(Error::Source)?;
            let uploaded = self.import_raw_vdi(vdi, format, PipeReader { rx, cur: Vec::new(), pos: 0 }, len);
            let produced =
                producer.join().unwrap_or_else(|_| Err(Error::InvalidArgument("upload producer panicked".into())));
            match (uploaded, produced) {
                (Ok(()), Ok(())) => Ok(len),
                // The source failing explains a failed upload better than the upload's error.
                (_, Err(e)) if !is_pipe_closed(&e) => Err(e),
                (Err(e), _) => Err(e),
                (Ok(()), Err(e)) => Err(e),
            }
        })
    }
}

/// Size of the pieces moved through the upload pipe.
const PIPE_PIECE: usize = 1 << 20;

fn copy_source(source: &dyn DiskSource, out: &mut PipeWriter) -> Result<()> {
    let size = source.size();
    let mut buf = vec![0u8; PIPE_PIECE];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(PIPE_PIECE as u64) as usize;
        source.read_at(off, &mut buf[..n]).map_err(Error::Source)?;
        out.write_all(&buf[..n]).map_err(|e| Error::Write { file: "upload pipe".into(), offset: off, source: e })?;
        off += n as u64;
    }
    Ok(())
}

fn is_pipe_closed(e: &Error) -> bool {
    matches!(e, Error::Write { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
}

struct PipeWriter {
    tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl PipeWriter {
    fn send(&mut self) -> io::Result<()> {
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_PIECE));
        self.tx.send(piece).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped reading"))
    }
    fn finish(mut self) -> io::Result<()> {
        if self.buf.is_empty() { Ok(()) } else { self.send() }
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIPE_PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIPE_PIECE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct PipeReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(piece) => {
                    self.cur = piece;
                    self.pos = 0;
                }
                // The producer finished (or failed: then the upload is short and fails).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
