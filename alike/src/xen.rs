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

/// How to log in to a pool ([`xen_pool_with`]).
///
/// ```
/// let o = alike::XenConnectOptions::default().fingerprint("AB:CD:…").max_reply_bytes(64 << 20);
/// # let _ = o;
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct XenConnectOptions {
    fingerprint: Option<String>,
    insecure: bool,
    max_reply: Option<u64>,
}

impl XenConnectOptions {
    /// Pin the pool's (usually self-signed) HTTPS certificate by its SHA-256
    /// fingerprint (`AB:CD:…` or hex); without one the platform's trust
    /// store decides. Refused with an `http://` URL.
    pub fn fingerprint(mut self, fp: impl Into<String>) -> Self {
        self.fingerprint = Some(fp.into());
        self
    }
    /// Allow `http://` to a host that is not a loopback address: the
    /// password and the session then cross the network in clear. Off by
    /// default (`http://` is accepted only to 127.0.0.1, ::1 or localhost).
    pub fn insecure(mut self, yes: bool) -> Self {
        self.insecure = yes;
        self
    }
    /// The largest XAPI reply read (default 256 MiB,
    /// `alike_xen::xapi::DEFAULT_MAX_REPLY`; at least 64 KiB).
    pub fn max_reply_bytes(mut self, n: u64) -> Self {
        self.max_reply = Some(n);
        self
    }
}

/// Logs in to a pool: `url` (`https://host`, `http://host:port`, or a bare
/// host), user and password, and optionally the SHA-256 fingerprint of the
/// pool's (usually self-signed) certificate to pin
/// (`AB:CD:…` or hex); without one the platform's trust store decides.
/// As [`xen_pool_with`] with only a fingerprint.
///
/// # Errors
/// As [`xen_pool_with`].
pub fn xen_pool(url: &str, user: &str, password: &str, fingerprint: Option<&str>) -> Result<XenPool> {
    let o = XenConnectOptions { fingerprint: fingerprint.map(str::to_owned), ..XenConnectOptions::default() };
    xen_pool_with(url, user, password, &o)
}

/// Logs in to a pool with [`XenConnectOptions`].
///
/// # Errors
/// [`crate::ErrorKind::InvalidArgument`] for a malformed URL or
/// fingerprint, a fingerprint with an `http://` URL, or `http://` to a host
/// that is not a loopback address without [`XenConnectOptions::insecure`];
/// [`Error::Xen`] with `SESSION_AUTHENTICATION_FAILED` for wrong
/// credentials, or [`crate::ErrorKind::Io`] when the pool cannot be reached
/// or its certificate is refused (an untrusted one is named with its
/// fingerprint, to check and pin).
pub fn xen_pool_with(url: &str, user: &str, password: &str, opts: &XenConnectOptions) -> Result<XenPool> {
    let mut b = Client::builder(url);
    b.credentials(user, password).allow_insecure_http(opts.insecure);
    if let Some(n) = opts.max_reply {
        b.max_reply_bytes(n);
    }
    if let Some(fp) = &opts.fingerprint {
        let check = ServerCertCheck::pin(fp)
            .map_err(|e| Error::InvalidArgument(format!("certificate fingerprint {fp:?}: {e}")))?;
        b.server_cert(check);
    }
    Ok(XenPool::connect(&b)?)
}
