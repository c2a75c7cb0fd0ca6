//! The host certificate: self-signed, kept in `<state>/xapi-ssl.pem` (the
//! name XAPI uses) so its fingerprint survives restarts; one rustls server
//! config (ring provider) for HTTPS and NBD.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

pub(crate) struct Tls {
    pub(crate) cert_pem: String,
    pub(crate) config: Arc<rustls::ServerConfig>,
}

pub(crate) fn load_or_create(dir: &Path, names: &[String]) -> Result<Tls> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let path = dir.join("xapi-ssl.pem");
    let pem = if path.exists() {
        std::fs::read_to_string(&path).map_err(Error::io(&path))?
    } else {
        let key = rcgen::KeyPair::generate().map_err(|e| Error::Tls(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| Error::Tls(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        let cert = params.self_signed(&key).map_err(|e| Error::Tls(e.to_string()))?;
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        std::fs::write(&path, &pem).map_err(Error::io(&path))?;
        pem
    };
    let cert =
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
    let key =
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
    let cert_pem = pem.split_inclusive('\n').take_while(|l| !l.contains("PRIVATE KEY")).collect::<String>();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(Tls { cert_pem, config: Arc::new(config) })
}
