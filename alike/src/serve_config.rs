//! The `[serve]` table of the configuration file: what `alike serve` (the
//! daemon, crate `alike-serve`) needs beyond stores, pools and jobs — where
//! it listens, TLS, the first administrator's credential, who may read
//! `/metrics`, where restores through the API may write, and its database.
//! `docs/serve.md` documents the keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::SecretRef;

/// `[serve]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServeConfig {
    /// `ADDR:PORT` to listen on (default `127.0.0.1:8080`; `--listen` overrides it).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The daemon's database (jobs, history); one daemon per database.
    pub database: PathBuf,
    /// Whether `GET /metrics` answers without credentials (default false:
    /// it then needs the API token or a session).
    #[serde(default)]
    pub metrics_public: bool,
    /// TLS; absent: plain HTTP (listen on loopback then, or behind a TLS proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServeTls>,
    /// The first administrator.
    pub admin: ServeAdmin,
    /// Directories restores through the API may write into, by name.
    #[serde(default)]
    pub restore_destinations: BTreeMap<String, PathBuf>,
    /// How long a login session lasts, seconds (default 43200, 60..=2592000).
    #[serde(default = "default_session")]
    pub session_seconds: u64,
    /// The stores' index caches when a `[[store]]` names none (default:
    /// `DATABASE.cache/STORE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

/// `[serve.tls]`: PEM files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServeTls {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// `[serve.admin]`: a user name with an Argon2 password hash (for the
/// page's login) and/or an API token (for scripts). At least one; there is
/// no default credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServeAdmin {
    /// The login name (default `admin`).
    #[serde(default = "default_user")]
    pub user: String,
    /// An Argon2 PHC string (`$argon2id$v=19$…`; `alike serve
    /// --hash-password` makes one). A hash, not a secret that opens
    /// anything by itself, so it may be inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// A file holding the PHC string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash_file: Option<PathBuf>,
    /// The API token (`Authorization: Bearer TOKEN`), at least 16
    /// characters, by reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretRef>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_session() -> u64 {
    12 * 3600
}
fn default_user() -> String {
    "admin".into()
}

impl ServeConfig {
    pub(crate) fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.database);
        if let Some(t) = &mut self.tls {
            fix(&mut t.cert);
            fix(&mut t.key);
        }
        self.admin.password_hash_file.as_mut().map(fix);
        if let Some(SecretRef::File(p)) = &mut self.admin.token {
            fix(p);
        }
        self.cache_dir.as_mut().map(fix);
        self.restore_destinations.values_mut().for_each(fix);
    }

    /// Checks the table; errors as (key, message).
    pub(crate) fn check(&self) -> std::result::Result<(), (String, String)> {
        let a = &self.admin;
        if a.password_hash.is_none() && a.password_hash_file.is_none() && a.token.is_none() {
            return Err((
                "serve.admin".into(),
                "needs password_hash, password_hash_file or token: there is no default credential".into(),
            ));
        }
        if a.password_hash.is_some() && a.password_hash_file.is_some() {
            return Err((
                "serve.admin.password_hash_file".into(),
                "give password_hash or password_hash_file, not both".into(),
            ));
        }
        if a.user.is_empty() || a.user.len() > 64 || a.user.contains([':', '\n', '\0']) {
            return Err(("serve.admin.user".into(), format!("{:?} is not a user name", a.user)));
        }
        if !(60..=30 * 24 * 3600).contains(&self.session_seconds) {
            return Err(("serve.session_seconds".into(), format!("{}: 60..=2592000", self.session_seconds)));
        }
        for name in self.restore_destinations.keys() {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err((
                    format!("serve.restore_destinations.{name}"),
                    "a name of 1 to 64 of A-Z a-z 0-9 - _ .".into(),
                ));
            }
        }
        Ok(())
    }
}
