//! HTTPS (WinRM's 5986 listener): a self-signed certificate kept in
//! `STATE/tls/cert.pem` (made at the first start with `--tls`, so its
//! fingerprint survives restarts) and one rustls server config (ring).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

pub(crate) struct Tls {
    pub(crate) cert_pem: String,
    pub(crate) fingerprint: String,
    pub(crate) config: Arc<rustls::ServerConfig>,
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

pub(crate) fn load_or_create(dir: &Path) -> Result<Tls> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let path = dir.join("cert.pem");
    let pem = if path.exists() {
        std::fs::read_to_string(&path).map_err(Error::io(&path))?
    } else {
        let key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned(), crate::HOST_NAME.to_owned()];
        let mut params = rcgen::CertificateParams::new(names).map_err(tls_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, crate::HOST_NAME);
        let cert = params.self_signed(&key).map_err(tls_err)?;
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        std::fs::write(&path, &pem).map_err(Error::io(&path))?;
        pem
    };
    let cert =
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let fingerprint = d.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    let cert_pem = pem.split_inclusive('\n').take_while(|l| !l.contains("PRIVATE KEY")).collect::<String>();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(tls_err)?;
    Ok(Tls { cert_pem, fingerprint, config: Arc::new(config) })
}
