//! TLS for NBD exports ([`crate::NbdOptions::tls`]): the `TlsAcceptor`
//! that alike-nbd's shell calls after `NBD_OPT_STARTTLS`, over rustls with
//! the ring provider. It lives here, not in alike-nbd, because alike-nbd
//! links no network or TLS crate (its layering rule); the facade already
//! chooses the crypto backend for the whole build.
//!
//! The server's certificate chain and private key come from PEM files; with
//! a client CA, clients must present a certificate it signed (mutual TLS).
//! rustls offers no external pre-shared keys, so TLS-PSK clients cannot
//! connect. TLS 1.2 and 1.3 (rustls' safe defaults), as the NBD
//! specification asks. The key is read once, at start, and never logged:
//! errors name the file, never its content.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use alike_core::Recover;
use alike_nbd::serve::{Io, TlsAcceptor, TlsHalves};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use crate::options::NbdTls;
use crate::{Error, Result};

/// The acceptor of one export session.
pub(crate) struct Acceptor {
    config: Arc<ServerConfig>,
}

fn bad(file: &Path, what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("TLS: {}: {what}", file.display()))
}

fn read_pem(file: &Path, what: &str) -> Result<Vec<u8>> {
    // PEM files are small; a huge one is a mistake, not a certificate.
    const MAX: u64 = 1 << 20;
    let f = std::fs::File::open(file)
        .map_err(|source| Error::Engine(alike_core::Error::Io { path: file.to_path_buf(), source }))?;
    let mut out = Vec::new();
    f.take(MAX + 1)
        .read_to_end(&mut out)
        .map_err(|source| Error::Engine(alike_core::Error::Io { path: file.to_path_buf(), source }))?;
    if out.len() as u64 > MAX {
        return Err(bad(file, format!("larger than {MAX} bytes: not a PEM {what}")));
    }
    Ok(out)
}

fn certs(file: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(file, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(file, format!("a PEM certificate does not decode ({e})")))?;
    if certs.is_empty() {
        return Err(bad(file, "no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in it"));
    }
    Ok(certs)
}

impl Acceptor {
    /// Reads the files and builds the rustls configuration.
    pub(crate) fn new(tls: &NbdTls) -> Result<Acceptor> {
        let chain = certs(&tls.cert)?;
        let key_pem = read_pem(&tls.key, "private key")?;
        // The decoder's error names the PEM section kind at most, never
        // key bytes; say only which file.
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|_| bad(&tls.key, "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it"))?;
        drop(key_pem);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))?;
        let builder = match &tls.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in certs(ca)? {
                    roots.add(c).map_err(|e| bad(ca, format!("not a usable CA certificate ({e})")))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| bad(ca, format!("client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            bad(&tls.key, format!("the key does not go with the certificate in {} ({e})", tls.cert.display()))
        })?;
        Ok(Acceptor { config: Arc::new(config) })
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

impl TlsAcceptor for Acceptor {
    fn accept(
        &self,
        mut io: Box<dyn Io>,
        writer: Box<dyn Write + Send>,
        proceed: &dyn Fn() -> io::Result<()>,
    ) -> io::Result<TlsHalves> {
        let mut conn = ServerConnection::new(self.config.clone()).map_err(io::Error::other)?;
        loop {
            while conn.wants_write() {
                conn.write_tls(&mut io)?;
            }
            if !conn.is_handshaking() {
                break;
            }
            match conn.read_tls(&mut io) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed the connection")),
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        // Tell the client why (an alert), then give up.
                        while conn.wants_write() {
                            if conn.write_tls(&mut io).is_err() {
                                break;
                            }
                        }
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
                Err(e) if would_block(&e) => proceed()?,
                Err(e) => return Err(e),
            }
        }
        io.flush()?;
        // The halves encrypt whole replies at once (a reply is at most the
        // export's maximum request): no limit on rustls' own buffers.
        conn.set_buffer_limit(None);
        // What the client sent right after its last handshake message was
        // opened already: it is the reading half's first plaintext.
        let mut plain = Vec::new();
        let eof = drain_plaintext(&mut conn, &mut plain)?;
        let shared = Arc::new(Shared { conn: Mutex::new(conn), sock: Mutex::new(writer) });
        let reader = TlsReader { shared: shared.clone(), sock: io, raw: vec![0; RAW_READ], plain, at: 0, eof };
        Ok((Box::new(reader), Box::new(TlsWriter(shared))))
    }
}

/// Moves the plaintext `conn` opened to `plain`; whether the client said goodbye.
fn drain_plaintext(conn: &mut ServerConnection, plain: &mut Vec<u8>) -> io::Result<bool> {
    let mut piece = [0u8; 16 << 10];
    loop {
        match conn.reader().read(&mut piece) {
            Ok(0) => return Ok(true),
            Ok(n) => plain.extend_from_slice(&piece[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// Bytes read from the socket at a time by the reading half.
const RAW_READ: usize = 64 << 10;

/// What the two halves share: the TLS state, and the socket's writing
/// handle. Lock order: `conn`, then `sock` (taken before `conn` is
/// released, so records reach the socket in the order they were sealed);
/// no socket I/O happens while `conn` is held.
struct Shared {
    conn: Mutex<ServerConnection>,
    sock: Mutex<Box<dyn Write + Send>>,
}

impl Shared {
    /// Sends what the TLS state has queued (records sealed by `conn`'s holder).
    fn flush_out(&self, mut conn: std::sync::MutexGuard<'_, ServerConnection>) -> io::Result<()> {
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out)?;
        }
        if out.is_empty() {
            return Ok(());
        }
        let mut sock = self.sock.locked();
        drop(conn);
        sock.write_all(&out)?;
        sock.flush()
    }
}

/// The reading half: reads records from its socket handle without holding
/// the TLS state, then opens them under its lock.
struct TlsReader {
    shared: Arc<Shared>,
    sock: Box<dyn Io>,
    raw: Vec<u8>,
    /// Plaintext opened and not yet read (`plain[at..]`).
    plain: Vec<u8>,
    at: usize,
    /// The client said goodbye, or the socket ended.
    eof: bool,
}

impl TlsReader {
    /// Opens `raw` (`None`: the socket ended) into `plain`.
    fn open(&mut self, raw: Option<usize>) -> io::Result<()> {
        let mut conn = self.shared.conn.locked();
        let mut rd: &[u8] = match raw {
            Some(n) => &self.raw[..n],
            None => &[],
        };
        self.plain.drain(..self.at);
        self.at = 0;
        loop {
            // An empty input tells rustls the socket ended.
            let fed = conn.read_tls(&mut rd)?;
            if let Err(e) = conn.process_new_packets() {
                // Tell the client why (an alert), then give up.
                let _ = self.shared.flush_out(conn);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if drain_plaintext(&mut conn, &mut self.plain)? {
                self.eof = true;
            }
            if fed == 0 || rd.is_empty() {
                break;
            }
        }
        if raw.is_none() {
            self.eof = true;
        }
        // Answers the reading causes (a key update) go out in order.
        self.shared.flush_out(conn)
    }
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.at);
                buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if self.eof || buf.is_empty() {
                return Ok(0);
            }
            // Time-outs go to the caller, which reads again: nothing is lost.
            let n = self.sock.read(&mut self.raw)?;
            self.open(if n == 0 { None } else { Some(n) })?;
        }
    }
}

/// The writing half: seals plaintext under the TLS state's lock, sends it
/// after; says goodbye (`close_notify`) when dropped, as the NBD
/// specification asks of a soft disconnect.
struct TlsWriter(Arc<Shared>);

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut conn = self.0.conn.locked();
        let n = conn.writer().write(buf)?;
        self.0.flush_out(conn)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        let conn = self.0.conn.locked();
        self.0.flush_out(conn)
    }
}

impl Drop for TlsWriter {
    fn drop(&mut self) {
        let mut conn = self.0.conn.locked();
        conn.send_close_notify();
        let _ = self.0.flush_out(conn);
    }
}
