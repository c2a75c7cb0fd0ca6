//! Pinned host keys: an OpenSSH `known_hosts` file or SHA-256 fingerprints.
//!
//! The known_hosts reader follows sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT":
//! `[marker] patterns keytype base64 [comment]`, `#` comments; patterns are
//! comma-separated, with `*` and `?` wildcards, `!` negation, `[host]:port`
//! for a port other than 22, and hashed names (`|1|salt|HMAC-SHA1`, what
//! `ssh-keygen -H` writes). `@revoked` keys are refused outright;
//! `@cert-authority` lines are skipped (host certificates are not trusted
//! here: keys are pinned one by one). Unlike OpenSSH there is no
//! "accept new": a host with no pinned key is refused, and so is a key that
//! differs from the pinned one.

use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use russh::keys::{Algorithm, HashAlg, PublicKey};

use super::RemoteError;

/// The largest known_hosts file read (a mistaken device must not be read
/// forever).
const MAX_FILE: u64 = 16 << 20;

/// How a host's key is checked. Either way an unknown or changed key is
/// refused, with an error naming the host, the port and both fingerprints.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostKeyPolicy {
    /// Keys pinned in an OpenSSH `known_hosts` file (the host as given,
    /// `[host]:port` when the port is not 22).
    KnownHosts(PathBuf),
    /// Any of these SHA-256 fingerprints (`SHA256:` and 43 base64
    /// characters, as `ssh-keygen -l` prints them), whatever the host.
    Fingerprints(Vec<String>),
}

impl HostKeyPolicy {
    /// Keys from a known_hosts file.
    pub fn known_hosts(path: impl Into<PathBuf>) -> HostKeyPolicy {
        HostKeyPolicy::KnownHosts(path.into())
    }

    /// Keys given as fingerprints.
    ///
    /// # Errors
    /// [`RemoteError::InvalidArgument`] for none, or one that is not
    /// `SHA256:` and 43 base64 characters.
    pub fn fingerprints<S: AsRef<str>>(fps: impl IntoIterator<Item = S>) -> Result<HostKeyPolicy, RemoteError> {
        let fps: Vec<String> = fps.into_iter().map(|s| s.as_ref().trim().to_string()).collect();
        if fps.is_empty() {
            return Err(RemoteError::InvalidArgument("no host key fingerprint given".into()));
        }
        for f in &fps {
            let ok = f.strip_prefix("SHA256:").is_some_and(|b| {
                b.len() == 43 && data_encoding::BASE64_NOPAD.decode(b.as_bytes()).is_ok_and(|d| d.len() == 32)
            });
            if !ok {
                return Err(RemoteError::InvalidArgument(format!(
                    "host key fingerprint {f:?}: expected SHA256: and 43 base64 characters (as `ssh-keygen -lf KEY` prints it)"
                )));
            }
        }
        Ok(HostKeyPolicy::Fingerprints(fps))
    }

    fn describe(&self) -> String {
        match self {
            HostKeyPolicy::KnownHosts(p) => format!("known_hosts file {}", p.display()),
            HostKeyPolicy::Fingerprints(_) => "the job's host key fingerprints".into(),
        }
    }

    /// Accepts `key` for `host`:`port`, or says why not.
    ///
    /// # Errors
    /// [`RemoteError::HostKeyUnknown`], [`RemoteError::HostKeyChanged`],
    /// [`RemoteError::HostKeyRevoked`]; [`RemoteError::KnownHosts`] when the
    /// file cannot be read or has a malformed line.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), RemoteError> {
        let presented = describe_key(key);
        let fp = fingerprint(key);
        let pinned: Vec<String> = match self {
            HostKeyPolicy::Fingerprints(fps) => {
                if fps.contains(&fp) {
                    return Ok(());
                }
                fps.clone()
            }
            HostKeyPolicy::KnownHosts(path) => {
                let kh = KnownHosts::read(path)?;
                let found = kh.lookup(host, port);
                if found.revoked.iter().any(|k| k == key) {
                    return Err(RemoteError::HostKeyRevoked {
                        host: host.into(),
                        port,
                        presented,
                        source_of_keys: self.describe(),
                    });
                }
                if found.keys.iter().any(|k| k.key_data() == key.key_data()) {
                    return Ok(());
                }
                found.keys.iter().map(describe_key).collect()
            }
        };
        if pinned.is_empty() {
            Err(RemoteError::HostKeyUnknown { host: host.into(), port, presented, source_of_keys: self.describe() })
        } else {
            Err(RemoteError::HostKeyChanged {
                host: host.into(),
                port,
                presented,
                pinned,
                source_of_keys: self.describe(),
            })
        }
    }

    /// The algorithms of the keys pinned for `host`:`port`, so the
    /// handshake asks for those first (as OpenSSH orders its host key
    /// algorithms by known_hosts). Empty when unknown.
    pub(crate) fn pinned_algorithms(&self, host: &str, port: u16) -> Vec<Algorithm> {
        match self {
            HostKeyPolicy::KnownHosts(p) => KnownHosts::read(p)
                .map(|kh| kh.lookup(host, port).keys.iter().map(|k| k.algorithm()).collect())
                .unwrap_or_default(),
            HostKeyPolicy::Fingerprints(_) => Vec::new(),
        }
    }
}

/// A key's SHA-256 fingerprint, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn describe_key(key: &PublicKey) -> String {
    format!("{} ({})", fingerprint(key), key.algorithm())
}

/// A parsed known_hosts file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    revoked: bool,
    patterns: Vec<String>,
    key: PublicKey,
}

/// The keys a known_hosts file holds for one host.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Lookup {
    /// Keys pinned for it.
    pub keys: Vec<PublicKey>,
    /// Keys marked `@revoked` (for it, or for every host).
    pub revoked: Vec<PublicKey>,
}

impl KnownHosts {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`RemoteError::KnownHosts`]: the file cannot be read, is larger than
    /// 16 MiB, or has a malformed line.
    pub fn read(path: &Path) -> Result<KnownHosts, RemoteError> {
        use std::io::Read;
        let err = |line, reason: String| RemoteError::KnownHosts { path: path.to_owned(), line, reason };
        let f = std::fs::File::open(path).map_err(|e| err(None, e.to_string()))?;
        let mut text = String::new();
        f.take(MAX_FILE + 1).read_to_string(&mut text).map_err(|e| err(None, e.to_string()))?;
        if text.len() as u64 > MAX_FILE {
            return Err(err(None, format!("larger than {} MiB: not a known_hosts file", MAX_FILE >> 20)));
        }
        KnownHosts::parse(&text).map_err(|(line, reason)| err(Some(line), reason))
    }

    /// Parses known_hosts text.
    ///
    /// # Errors
    /// The first malformed line (from 1) and why.
    pub fn parse(text: &str) -> Result<KnownHosts, (usize, String)> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_ascii_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let mut revoked = false;
            if let Some(marker) = first.strip_prefix('@') {
                match marker {
                    "revoked" => revoked = true,
                    // Host certificates are not trusted here.
                    "cert-authority" => continue,
                    m => return Err((i + 1, format!("unknown marker @{m}"))),
                }
                first = fields.next().unwrap_or_default();
            }
            let (Some(_kind), Some(b64)) = (fields.next(), fields.next()) else {
                return Err((i + 1, "expected: host patterns, key type, base64 key".into()));
            };
            let key = russh::keys::parse_public_key_base64(b64)
                .map_err(|e| (i + 1, format!("the key does not parse: {e}")))?;
            let patterns = first.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect();
            entries.push(Entry { revoked, patterns, key });
        }
        Ok(KnownHosts { entries })
    }

    /// The keys pinned for `host`:`port` and the revoked keys.
    pub fn lookup(&self, host: &str, port: u16) -> Lookup {
        let name = if port == super::SSH_PORT { host.to_string() } else { format!("[{host}]:{port}") };
        let mut out = Lookup::default();
        for e in &self.entries {
            if e.revoked {
                // OpenSSH applies @revoked whatever the patterns say.
                out.revoked.push(e.key.clone());
            } else if matches_patterns(&e.patterns, &name) {
                out.keys.push(e.key.clone());
            }
        }
        out
    }
}

/// Whether `name` matches a known_hosts pattern list: some pattern matches
/// and no negated one does.
fn matches_patterns(patterns: &[String], name: &str) -> bool {
    let mut hit = false;
    for p in patterns {
        if let Some(neg) = p.strip_prefix('!') {
            if pattern_matches(neg, name) {
                return false;
            }
        } else if pattern_matches(p, name) {
            hit = true;
        }
    }
    hit
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    if let Some(hashed) = pattern.strip_prefix("|1|") {
        let Some((salt, hash)) = hashed.split_once('|') else { return false };
        let (Ok(salt), Ok(hash)) =
            (data_encoding::BASE64.decode(salt.as_bytes()), data_encoding::BASE64.decode(hash.as_bytes()))
        else {
            return false;
        };
        let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else { return false };
        mac.update(name.as_bytes());
        return mac.verify_slice(&hash).is_ok();
    }
    glob(pattern.to_ascii_lowercase().as_bytes(), name.to_ascii_lowercase().as_bytes())
}

/// `*` and `?` matching, iterative (no recursion, linear memory).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    // ssh-keygen -t ed25519; `ssh-keygen -lf` says SHA256:xn1PJEOrPxXO9kbKfBLVvYPJZlvYJoztyGC06zlEC90.
    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIM9rU3vRXdzrP3uXCCGabOI9JqQjH0IcTCMnOTxv3ZD+";

    #[test]
    fn globs() {
        assert!(glob(b"*.example.com", b"a.example.com"));
        assert!(glob(b"10.0.0.?", b"10.0.0.7"));
        assert!(!glob(b"10.0.0.?", b"10.0.0.17"));
        assert!(glob(b"[10.0.*]:2222", b"[10.0.3.4]:2222"));
        assert!(!glob(b"a*b", b"acbd"));
        assert!(glob(b"*", b""));
    }

    #[test]
    fn patterns_ports_negation_markers() {
        let text = format!(
            "# comment\n\nh1,h2 ssh-ed25519 {ED} c\n[h3]:2222 ssh-ed25519 {ED}\n*.lan,!bad.lan ssh-ed25519 {ED}\n\
             @cert-authority *.ca ssh-ed25519 {ED}\n"
        );
        let kh = KnownHosts::parse(&text).unwrap();
        assert_eq!(kh.lookup("h1", 22).keys.len(), 1);
        assert_eq!(kh.lookup("h2", 22).keys.len(), 1);
        assert_eq!(kh.lookup("h1", 2222).keys.len(), 0);
        assert_eq!(kh.lookup("h3", 2222).keys.len(), 1);
        assert_eq!(kh.lookup("h3", 22).keys.len(), 0);
        assert_eq!(kh.lookup("x.lan", 22).keys.len(), 1);
        assert_eq!(kh.lookup("bad.lan", 22).keys.len(), 0);
        assert_eq!(kh.lookup("x.ca", 22).keys.len(), 0);
        let kh = KnownHosts::parse(&format!("@revoked * ssh-ed25519 {ED}\n")).unwrap();
        assert_eq!(kh.lookup("any", 22).revoked.len(), 1);
        assert_eq!(KnownHosts::parse("h ssh-ed25519\n").unwrap_err().0, 1);
        assert_eq!(KnownHosts::parse("\n@odd h ssh-ed25519 AAAA\n").unwrap_err().0, 2);
        assert!(KnownHosts::parse("h ssh-ed25519 !!!\n").is_err());
    }

    #[test]
    fn fingerprints_are_checked_when_given() {
        assert!(HostKeyPolicy::fingerprints(["SHA256:x"]).is_err());
        assert!(HostKeyPolicy::fingerprints(Vec::<String>::new()).is_err());
        let key = russh::keys::parse_public_key_base64(ED).unwrap();
        let fp = fingerprint(&key);
        assert_eq!(fp, "SHA256:xn1PJEOrPxXO9kbKfBLVvYPJZlvYJoztyGC06zlEC90");
        assert!(HostKeyPolicy::fingerprints([&fp]).unwrap().check("h", 22, &key).is_ok());
        let other = "SHA256:".to_string() + &"A".repeat(43);
        let e = HostKeyPolicy::fingerprints([&other]).unwrap().check("h", 22, &key).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&fp) && msg.contains(&other) && msg.contains("h port 22"), "{msg}");
    }
}
