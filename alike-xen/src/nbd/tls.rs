//! TLS client settings shared by the NBD client and the XAPI client:
//! which server certificates to accept, and a rustls configuration built
//! with the ring provider (never the process-wide default, so nothing has to
//! be installed at start-up and aws-lc stays out of the build).

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{Error, Result};

/// Which server certificates a TLS connection accepts.
///
/// XenServer pool and NBD certificates are usually self-signed, so the
/// practical choices are a pinned fingerprint or the certificate itself
/// (XAPI hands it out in `VDI.get_nbd_info`).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerCertCheck {
    /// The platform's trust store; the certificate must name the server.
    System,
    /// Trust the certificate(s) in this PEM text as roots; the server's
    /// certificate must chain to one of them and name the server (by its
    /// subject alternative names).
    CaPem(String),
    /// Accept exactly the certificates whose DER encoding has one of these
    /// SHA-256 fingerprints — no chain, name or expiry check, as for SSH
    /// host keys. Give every pool member's fingerprint if calls may be
    /// redirected to the pool master.
    Sha256(Vec<[u8; 32]>),
}

impl fmt::Debug for ServerCertCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerCertCheck::System => f.write_str("System"),
            ServerCertCheck::CaPem(p) => write!(f, "CaPem({} bytes)", p.len()),
            ServerCertCheck::Sha256(fps) => {
                f.debug_tuple("Sha256").field(&fps.iter().map(format_fingerprint).collect::<Vec<_>>()).finish()
            }
        }
    }
}

impl ServerCertCheck {
    /// Pins the certificate(s) in `pem` by fingerprint.
    ///
    /// # Errors
    /// [`Error::TlsSetup`] when the text holds no PEM certificate.
    pub fn pin_pem(pem: &str) -> Result<ServerCertCheck> {
        let fps = pem_certs(pem)?.iter().map(|c| sha256(c)).collect();
        Ok(ServerCertCheck::Sha256(fps))
    }

    /// Pins one fingerprint given as text ([`parse_fingerprint`]).
    ///
    /// # Errors
    /// [`Error::TlsSetup`] when it is not 32 bytes of hex.
    pub fn pin(fingerprint: &str) -> Result<ServerCertCheck> {
        Ok(ServerCertCheck::Sha256(vec![parse_fingerprint(fingerprint)?]))
    }
}

/// The SHA-256 of some bytes (a certificate's DER).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `AB:CD:…` (upper-case hex pairs with colons, as `openssl x509 -fingerprint -sha256` prints).
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    fp.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Parses a SHA-256 fingerprint: 64 hex digits, optionally separated by
/// colons or spaces, any case, optionally prefixed `sha256:` or `SHA256 Fingerprint=`.
///
/// # Errors
/// [`Error::TlsSetup`] when it is not 32 bytes of hex.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32]> {
    let body = s.rsplit(['=']).next().unwrap_or(s);
    let body = body.strip_prefix("sha256:").or_else(|| body.strip_prefix("SHA256:")).unwrap_or(body);
    let hex: Vec<u8> = body.bytes().filter(|c| !matches!(c, b':' | b' ' | b'-')).collect();
    let bad = || Error::TlsSetup(format!("{s:?} is not a SHA-256 fingerprint (64 hex digits)"));
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The certificates in a PEM text (DER).
///
/// # Errors
/// [`Error::TlsSetup`] when there is none, or one does not decode.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::TlsSetup(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::TlsSetup("no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in the text given".into()));
    }
    Ok(certs)
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration and its verifier, which remembers the
/// fingerprint of a refused certificate, for the error.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) pins: Option<Arc<PinVerifier>>,
    pub(crate) trust: Option<Arc<RecordingVerifier>>,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSetup").field("pinned", &self.pins.is_some()).finish()
    }
}

impl TlsSetup {
    pub(crate) fn new(check: &ServerCertCheck) -> Result<TlsSetup> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::TlsSetup(e.to_string()))?;
        let inner: Arc<dyn ServerCertVerifier> = match check {
            ServerCertCheck::System => Arc::new(
                rustls_platform_verifier::Verifier::new(provider.clone())
                    .map_err(|e| Error::TlsSetup(format!("platform trust store: {e}")))?,
            ),
            ServerCertCheck::CaPem(pem) => {
                let mut roots = RootCertStore::empty();
                for c in pem_certs(pem)? {
                    roots.add(c).map_err(|e| Error::TlsSetup(format!("CA certificate: {e}")))?;
                }
                rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::TlsSetup(format!("CA certificates: {e}")))?
            }
            ServerCertCheck::Sha256(fps) => {
                if fps.is_empty() {
                    return Err(Error::TlsSetup("no fingerprint to pin".into()));
                }
                let v = Arc::new(PinVerifier { pins: fps.clone(), provider, refused: Mutex::new(None) });
                let config = builder.dangerous().with_custom_certificate_verifier(v.clone()).with_no_client_auth();
                return Ok(TlsSetup { config: Arc::new(config), pins: Some(v), trust: None });
            }
        };
        let v = Arc::new(RecordingVerifier { inner, refused: Mutex::new(None) });
        let config = builder.dangerous().with_custom_certificate_verifier(v.clone()).with_no_client_auth();
        Ok(TlsSetup { config: Arc::new(config), pins: None, trust: Some(v) })
    }

    /// The error for a failed TLS handshake when the verifier refused a
    /// certificate: a pin mismatch, or an untrusted certificate with its
    /// fingerprint (so the user can check it and pin it).
    pub(crate) fn mismatch_error(&self, server: &str) -> Option<Error> {
        if let Some(trust) = &self.trust {
            let (fp, reason) = trust.refused.lock().ok()?.take()?;
            return Some(Error::CertificateUntrusted {
                server: server.to_owned(),
                reason,
                fingerprint: Some(format_fingerprint(&fp)),
            });
        }
        let pins = self.pins.as_ref()?;
        let found = pins.refused.lock().ok()?.take()?;
        Some(Error::CertificateMismatch {
            server: server.to_owned(),
            expected: pins.pins.iter().map(format_fingerprint).collect(),
            found: format_fingerprint(&found),
        })
    }
}

/// The name to send as SNI and check certificates against: `preferred`
/// (XAPI's `subject`) when it is a usable DNS name, else `host`.
pub(crate) fn server_name(preferred: Option<&str>, host: &str) -> Result<ServerName<'static>> {
    if let Some(p) = preferred.filter(|p| !p.is_empty() && !p.contains('*')) {
        if let Ok(n) = ServerName::try_from(p.to_owned()) {
            return Ok(n);
        }
    }
    let h = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(h.to_owned()).map_err(|e| Error::TlsSetup(format!("{host:?} is not a server name: {e}")))
}

/// A trust-store verifier (the platform's, or given CA certificates) that
/// remembers the fingerprint of the certificate it refused and why.
#[derive(Debug)]
pub(crate) struct RecordingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    refused: Mutex<Option<([u8; 32], String)>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now).inspect_err(|e| {
            if let Ok(mut r) = self.refused.lock() {
                *r = Some((sha256(end_entity), e.to_string()));
            }
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// Accepts the pinned certificates only; signatures are still checked.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
    refused: Mutex<Option<[u8; 32]>>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let fp = sha256(end_entity);
        if self.pins.contains(&fp) {
            return Ok(ServerCertVerified::assertion());
        }
        if let Ok(mut r) = self.refused.lock() {
            *r = Some(fp);
        }
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_common_spellings() {
        let fp: [u8; 32] = std::array::from_fn(|i| (i * 7) as u8);
        let text = format_fingerprint(&fp);
        assert_eq!(parse_fingerprint(&text).unwrap(), fp);
        assert_eq!(parse_fingerprint(&text.replace(':', "").to_lowercase()).unwrap(), fp);
        assert_eq!(parse_fingerprint(&format!("SHA256 Fingerprint={text}")).unwrap(), fp);
        assert_eq!(parse_fingerprint(&format!("sha256:{}", text.replace(':', ""))).unwrap(), fp);
        assert!(parse_fingerprint("AB:CD").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn empty_pem_is_a_clear_error() {
        let e = pem_certs("hello").unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
