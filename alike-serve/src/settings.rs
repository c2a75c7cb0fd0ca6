//! The daemon's part of the configuration file: the `[serve]` table (where
//! it listens, TLS, the first administrator's credential, who may read
//! `/metrics`, where restores may write, the lock that keeps a second
//! daemon off the same database) and the stores it shows.
//!
//! Secrets are never inline: a password *hash* may be (it is not a secret
//! that opens anything by itself), a token or a store's key only by file.
//! Relative paths are relative to the configuration file's directory.
//! `docs/serve.md` documents every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The largest configuration or secret file read (1 MiB): a file named by
/// mistake (a disk image) fails clearly instead of filling memory.
pub(crate) const MAX_FILE: u64 = 1 << 20;

/// The daemon's settings: the `[serve]` table and the `[[stores]]` it shows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServeSettings {
    /// `ADDR:PORT` to listen on (`--listen` overrides it). Default
    /// `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The daemon's database: the engine's embedded database (job
    /// definitions, history). A second daemon on the same database is
    /// refused (an exclusive lock on `DATABASE.lock`).
    pub database: PathBuf,
    /// Whether `GET /metrics` answers without credentials. Default `false`:
    /// it then needs the API token (or a session).
    #[serde(default)]
    pub metrics_public: bool,
    /// TLS: both files PEM. Absent: plain HTTP (bind to loopback then, or
    /// put a TLS proxy in front).
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// The first administrator.
    pub admin: AdminSettings,
    /// Directories restores through the API may write into, by name; a
    /// restore names one and a plain file name inside it, nothing else.
    #[serde(default)]
    pub restore_destinations: BTreeMap<String, PathBuf>,
    /// How long a login session lasts, in seconds (default 12 h).
    #[serde(default = "default_session")]
    pub session_seconds: u64,
}

/// TLS certificate chain and private key, both PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsSettings {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The first administrator's credential: a user name with an Argon2 password
/// hash (PHC string, inline or in a file) for the page's login, and/or a
/// bearer token read from a file for scripts. At least one is required;
/// there is no built-in default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AdminSettings {
    /// The login name (default `admin`).
    #[serde(default = "default_user")]
    pub user: String,
    /// An Argon2 PHC string (`$argon2id$v=19$...`), e.g. from
    /// `alike serve --hash-password`.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// A file holding the PHC string.
    #[serde(default)]
    pub password_hash_file: Option<PathBuf>,
    /// A file holding the API token (`Authorization: Bearer TOKEN`); at
    /// least 16 characters.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// A store the daemon opens and shows (VMs, versions, figures, restores).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StoreSettings {
    /// The name jobs and the API use.
    pub name: String,
    /// A directory or URL, as `alike --store`.
    pub location: String,
    /// The store's key file (else `password_file`; else unencrypted).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A file with the store's passphrase.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The local index cache (default: beside the daemon's database).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

/// The whole file as the daemon reads it: `[serve]` and `[[stores]]`; other
/// tables (pools, jobs) belong to the engine's own configuration and are
/// left to it.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct DaemonConfig {
    /// `[serve]`.
    pub serve: ServeSettings,
    /// `[[stores]]`.
    #[serde(default)]
    pub stores: Vec<StoreSettings>,
    /// The directory relative paths are taken from.
    #[serde(skip)]
    pub base: PathBuf,
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

impl DaemonConfig {
    /// Reads and checks a configuration file; relative paths in it become
    /// relative to its directory.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file and what is wrong.
    pub fn load(path: &Path) -> Result<DaemonConfig> {
        let text = read_small(path, "configuration file")?;
        let text = String::from_utf8(text).map_err(|_| Error::config(path, "not UTF-8"))?;
        let mut c = DaemonConfig::parse(&text).map_err(|e| Error::config(path, e))?;
        c.base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        c.resolve();
        c.check().map_err(|e| Error::config(path, e))?;
        Ok(c)
    }

    /// Parses the text of a configuration file (paths left as written).
    ///
    /// # Errors
    /// The TOML error as text.
    pub fn parse(text: &str) -> std::result::Result<DaemonConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn resolve(&mut self) {
        let base = self.base.clone();
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let s = &mut self.serve;
        abs(&mut s.database);
        if let Some(t) = &mut s.tls {
            abs(&mut t.cert);
            abs(&mut t.key);
        }
        for p in [&mut s.admin.password_hash_file, &mut s.admin.token_file].into_iter().flatten() {
            abs(p);
        }
        for p in s.restore_destinations.values_mut() {
            abs(p);
        }
        for st in &mut self.stores {
            for p in [&mut st.key_file, &mut st.password_file, &mut st.cache_dir].into_iter().flatten() {
                abs(p);
            }
            // A plain relative store path is relative to the file too; URLs stay.
            if !st.location.contains("://") && Path::new(&st.location).is_relative() {
                st.location = base.join(&st.location).to_string_lossy().into_owned();
            }
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        let a = &self.serve.admin;
        if a.password_hash.is_none() && a.password_hash_file.is_none() && a.token_file.is_none() {
            return Err("[serve.admin] needs password_hash, password_hash_file or token_file: \
                        there is no default credential"
                .into());
        }
        if a.password_hash.is_some() && a.password_hash_file.is_some() {
            return Err("[serve.admin]: password_hash and password_hash_file are exclusive".into());
        }
        if a.user.is_empty() {
            return Err("[serve.admin] user is empty".into());
        }
        for (name, dir) in &self.serve.restore_destinations {
            if name.is_empty() || name.len() > 64 {
                return Err(format!("restore destination name {name:?}: 1 to 64 characters"));
            }
            if !dir.is_absolute() {
                return Err(format!("restore destination {name}: {} is not absolute", dir.display()));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.stores {
            if !seen.insert(&s.name) {
                return Err(format!("store {:?} named twice", s.name));
            }
        }
        Ok(())
    }
}

/// Reads a small file whole (at most [`MAX_FILE`] bytes).
pub(crate) fn read_small(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(what, path, e))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE + 1).read_to_end(&mut buf).map_err(|e| Error::io(what, path, e))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(Error::config(path, format!("{what} is larger than {MAX_FILE} bytes")));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_credential_is_refused() {
        let mut c = DaemonConfig::parse("[serve]\ndatabase = \"db\"\n[serve.admin]\nuser = \"a\"\n").unwrap();
        c.base = PathBuf::from("/etc/alike");
        c.resolve();
        assert!(c.check().unwrap_err().contains("no default credential"));
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let mut c = DaemonConfig::parse(
            "[serve]\ndatabase = \"state/db\"\nrestore_destinations = { scratch = \"r\" }\n\
             [serve.admin]\ntoken_file = \"tok\"\n[[stores]]\nname = \"main\"\nlocation = \"store\"\n\
             [[stores]]\nname = \"s3\"\nlocation = \"s3://b/p\"\n",
        )
        .unwrap();
        c.base = PathBuf::from("/etc/alike");
        c.resolve();
        c.check().unwrap();
        assert_eq!(c.serve.database, Path::new("/etc/alike/state/db"));
        assert_eq!(c.serve.restore_destinations["scratch"], Path::new("/etc/alike/r"));
        assert_eq!(c.serve.admin.token_file.as_deref(), Some(Path::new("/etc/alike/tok")));
        assert_eq!(c.stores[0].location, "/etc/alike/store");
        assert_eq!(c.stores[1].location, "s3://b/p");
        assert_eq!(c.serve.listen, default_listen());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = DaemonConfig::parse("[serve]\ndatabase = \"db\"\npasword = \"x\"\n[serve.admin]\ntoken_file = \"t\"\n")
            .unwrap_err();
        assert!(e.contains("pasword"), "{e}");
    }
}
