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
use std::sync::Arc;

use alike_nbd::serve::{Io, TlsAcceptor};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

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
    fn accept(&self, mut io: Box<dyn Io>, proceed: &dyn Fn() -> io::Result<()>) -> io::Result<Box<dyn Io>> {
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
        Ok(Box::new(TlsStream(StreamOwned::new(conn, io))))
    }
}

/// The encrypted stream; says goodbye (`close_notify`) when dropped, as
/// the NBD specification asks of a soft disconnect.
struct TlsStream(StreamOwned<ServerConnection, Box<dyn Io>>);

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for TlsStream {
    fn drop(&mut self) {
        self.0.conn.send_close_notify();
        while self.0.conn.wants_write() {
            if self.0.conn.write_tls(&mut self.0.sock).is_err() {
                break;
            }
        }
    }
}
