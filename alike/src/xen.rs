//! XenServer / XCP-ng from the facade: logging in to a pool. A
//! [`XenPool`] is an [`alike_core::Hypervisor`]: backups and restores go
//! through [`crate::Store::backup_vm`] and [`crate::Store::restore_vm`] like any host's.
//! Xen-only settings (transport, NBD connections, upload format) are set
//! on the pool: [`XenPool::set_backup_options`], [`XenPool::set_upload_format`].
//!
//! ```no_run
//! let mut pool = alike::xen_pool("https://pool.example", "root", "secret", Some("AB:CD:…"))?;
//! pool.set_backup_options(alike::XenBackupOptions::default().transport(alike::Transport::Nbd));
//! # Ok::<(), alike::Error>(())
//! ```

use alike_xen::ServerCertCheck;
use alike_xen::adapter::XenPool;
use alike_xen::xapi::Client;

use crate::{Error, Result};
/// Logs in to a pool: `url` (`https://host`, `http://host:port`, or a bare
/// host), user and password, and optionally the SHA-256 fingerprint of the
/// pool's (usually self-signed) certificate to pin
/// (`AB:CD:…` or hex); without one the platform's trust store decides.
///
/// # Errors
/// [`crate::ErrorKind::InvalidArgument`] for a malformed URL or
/// fingerprint; [`Error::Xen`] with `SESSION_AUTHENTICATION_FAILED` for
/// wrong credentials, or [`crate::ErrorKind::Io`] when the pool cannot be
/// reached or its certificate is refused.
pub fn xen_pool(url: &str, user: &str, password: &str, fingerprint: Option<&str>) -> Result<XenPool> {
    let mut b = Client::builder(url);
    b.credentials(user, password);
    if let Some(fp) = fingerprint {
        let check = ServerCertCheck::pin(fp)
            .map_err(|e| Error::InvalidArgument(format!("certificate fingerprint {fp:?}: {e}")))?;
        b.server_cert(check);
    }
    Ok(XenPool::connect(&b)?)
}
