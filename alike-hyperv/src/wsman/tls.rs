//! HTTPS to WinRM's 5986 listener: which server certificates to accept. A
//! Hyper-V host's WinRM certificate is usually self-signed, so the choices
//! are a pinned SHA-256 fingerprint (no chain, name or expiry check, as for
//! SSH host keys) or a CA file whose certificates the server's must chain
//! to (and name the host). The rustls configuration uses the ring provider
//! explicitly, never a process-wide default.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{Error, Result};

/// Which server certificates an HTTPS connection accepts.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerCertCheck {
    /// Exactly the certificate whose DER has this SHA-256.
    Sha256([u8; 32]),
    /// Certificates chaining to these (PEM text) and naming the host.
    CaPem(String),
}

impl fmt::Debug for ServerCertCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerCertCheck::Sha256(fp) => write!(f, "Sha256({})", format_fingerprint(fp)),
            ServerCertCheck::CaPem(p) => write!(f, "CaPem({} bytes)", p.len()),
        }
    }
}

impl ServerCertCheck {
    /// Pins a fingerprint given as text: 64 hex digits, with or without
    /// colons or spaces, any case, optionally prefixed `sha256:`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when it is not 32 bytes of hex.
    pub fn pin(fingerprint: &str) -> Result<ServerCertCheck> {
        let body = fingerprint.rsplit('=').next().unwrap_or(fingerprint);
        let body = body.strip_prefix("sha256:").or_else(|| body.strip_prefix("SHA256:")).unwrap_or(body);
        let hex: Vec<u8> = body.bytes().filter(|c| !matches!(c, b':' | b' ' | b'-')).collect();
        let bad = || Error::InvalidArgument(format!("{fingerprint:?} is not a SHA-256 fingerprint (64 hex digits)"));
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            out[i] = u8::from_str_radix(std::str::from_utf8(pair).map_err(|_| bad())?, 16).map_err(|_| bad())?;
        }
        Ok(ServerCertCheck::Sha256(out))
    }
}

/// `AB:CD:…`.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    fp.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A client configuration and its verifier (which remembers a refused
/// certificate's fingerprint for the error).
#[derive(Clone)]
pub(crate) struct TlsSetup {
    pub(crate) config: Arc<ClientConfig>,
    verifier: Arc<Recording>,
}

impl TlsSetup {
    pub(crate) fn new(check: &ServerCertCheck) -> Result<TlsSetup> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let setup = |e: rustls::Error| Error::InvalidArgument(format!("TLS set-up: {e}"));
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(setup)?;
        let inner = match check {
            ServerCertCheck::Sha256(fp) => Inner::Pin(*fp, provider),
            ServerCertCheck::CaPem(pem) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::InvalidArgument(format!("CA file: {e}")))?;
                if certs.is_empty() {
                    return Err(Error::InvalidArgument("the CA file holds no PEM certificate".into()));
                }
                for c in certs {
                    roots.add(c).map_err(setup)?;
                }
                Inner::Ca(
                    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| Error::InvalidArgument(format!("CA file: {e}")))?,
                )
            }
        };
        let verifier = Arc::new(Recording { inner, refused: Mutex::new(None) });
        let config = builder.dangerous().with_custom_certificate_verifier(verifier.clone()).with_no_client_auth();
        Ok(TlsSetup { config: Arc::new(config), verifier })
    }

    /// The fingerprint of the certificate the last handshake refused, and why.
    pub(crate) fn refused(&self) -> Option<(String, String)> {
        self.verifier.refused.lock().ok()?.take().map(|(fp, why)| (format_fingerprint(&fp), why))
    }
}

/// The name sent as SNI (a host name, or an address).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| Error::InvalidArgument(format!("{host:?} is not a server name: {e}")))
}

#[derive(Debug)]
enum Inner {
    Pin([u8; 32], Arc<CryptoProvider>),
    Ca(Arc<rustls::client::WebPkiServerVerifier>),
}

#[derive(Debug)]
struct Recording {
    inner: Inner,
    refused: Mutex<Option<([u8; 32], String)>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let fp = sha256(end_entity);
        let r = match &self.inner {
            Inner::Pin(pin, _) if *pin == fp => Ok(ServerCertVerified::assertion()),
            Inner::Pin(pin, _) => Err((
                rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure),
                format!("its fingerprint is not the pinned {}", format_fingerprint(pin)),
            )),
            Inner::Ca(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now).map_err(|e| {
                let why = format!("not trusted by the CA file: {e}");
                (e, why)
            }),
        };
        r.map_err(|(e, why)| {
            if let Ok(mut g) = self.refused.lock() {
                *g = Some((fp, why));
            }
            e
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        match &self.inner {
            Inner::Pin(_, p) => {
                rustls::crypto::verify_tls12_signature(message, cert, dss, &p.signature_verification_algorithms)
            }
            Inner::Ca(v) => v.verify_tls12_signature(message, cert, dss),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        match &self.inner {
            Inner::Pin(_, p) => {
                rustls::crypto::verify_tls13_signature(message, cert, dss, &p.signature_verification_algorithms)
            }
            Inner::Ca(v) => v.verify_tls13_signature(message, cert, dss),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match &self.inner {
            Inner::Pin(_, p) => p.signature_verification_algorithms.supported_schemes(),
            Inner::Ca(v) => v.supported_verify_schemes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse() {
        let fp: [u8; 32] = std::array::from_fn(|i| (i * 7) as u8);
        let text = format_fingerprint(&fp);
        assert_eq!(ServerCertCheck::pin(&text).unwrap(), ServerCertCheck::Sha256(fp));
        assert_eq!(ServerCertCheck::pin(&text.replace(':', "").to_lowercase()).unwrap(), ServerCertCheck::Sha256(fp));
        assert!(ServerCertCheck::pin("AB:CD").is_err());
        assert!(ServerCertCheck::pin(&"zz".repeat(32)).is_err());
    }
}
