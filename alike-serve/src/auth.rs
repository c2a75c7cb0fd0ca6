//! Who may ask: the administrator's credential from the configuration, and
//! login sessions.
//!
//! Two ways in, both checked on every request under `/api/` (and `/metrics`
//! unless it is public): `Authorization: Bearer TOKEN` with the token from
//! `token_file`, or the `alike_session` cookie that `POST /login` (user name
//! and password, checked against the Argon2 hash) sets. Sessions live in
//! memory only (a restart logs everyone out), expire, and are bounded in
//! number; the cookie is `HttpOnly`, `SameSite=Strict` (a cross-site page
//! cannot make the browser send it, which is the CSRF defence) and `Secure`
//! under TLS. Password checks run one at a time on a blocking thread: Argon2
//! is deliberately slow, and many guesses at once must not starve the API.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::phc::PasswordHash;

use crate::error::{Error, Result};
use crate::settings::read_small;
use alike::ServeAdmin;

/// The most sessions held at once; a new login past it ends the oldest.
const MAX_SESSIONS: usize = 256;
/// The session cookie's name.
pub(crate) const COOKIE: &str = "alike_session";

/// The credential and the sessions.
#[derive(Debug)]
pub(crate) struct Auth {
    user: String,
    /// The PHC string, checked parseable at start.
    password_hash: Option<String>,
    token: Option<String>,
    ttl: Duration,
    sessions: Mutex<HashMap<String, Instant>>,
    /// One Argon2 check at a time.
    checking: tokio::sync::Semaphore,
}

impl Auth {
    /// Reads the credential files named in `[serve.admin]`.
    pub(crate) fn load(a: &ServeAdmin, ttl: Duration) -> Result<Auth> {
        let password_hash = match (&a.password_hash, &a.password_hash_file) {
            (Some(h), _) => Some(h.trim().to_string()),
            (None, Some(f)) => Some(
                String::from_utf8(read_small(f, "password hash file")?)
                    .map_err(|_| Error::config(f, "not UTF-8"))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if let Some(h) = &password_hash {
            PasswordHash::new(h)
                .map_err(|e| Error::config(std::path::Path::new("[serve.admin]"), format!("password hash: {e}")))?;
        }
        let token = match &a.token {
            Some(r) => {
                let where_ = std::path::PathBuf::from(r.describe());
                let t = r.read().map_err(|e| Error::config(&where_, e.to_string()))?.expose().trim().to_string();
                if t.len() < 16 {
                    return Err(Error::config(&where_, "the API token must be at least 16 characters"));
                }
                Some(t)
            }
            None => None,
        };
        Ok(Auth {
            user: a.user.clone(),
            password_hash,
            token,
            ttl,
            sessions: Mutex::new(HashMap::new()),
            checking: tokio::sync::Semaphore::new(1),
        })
    }

    /// Whether a request's headers carry a valid credential.
    pub(crate) fn allows(&self, headers: &hyper::HeaderMap) -> bool {
        if let (Some(t), Some(h)) = (&self.token, headers.get(hyper::header::AUTHORIZATION)) {
            if let Some(given) = h.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
                if constant_time_eq(given.trim().as_bytes(), t.as_bytes()) {
                    return true;
                }
            }
        }
        match session_of(headers) {
            Some(id) => self.session_valid(&id),
            None => false,
        }
    }

    fn session_valid(&self, id: &str) -> bool {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match s.get(id) {
            Some(t) if t.elapsed() < self.ttl => true,
            Some(_) => {
                s.remove(id);
                false
            }
            None => false,
        }
    }

    /// Checks a user name and password; on success opens a session and
    /// returns its id.
    pub(crate) async fn login(&self, user: &str, password: &str) -> Option<String> {
        let hash = self.password_hash.clone()?;
        let _one = self.checking.acquire().await.ok()?;
        let (pw, user_ok) = (password.to_string(), constant_time_eq(user.as_bytes(), self.user.as_bytes()));
        let ok = tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&hash).ok()?;
            Some(argon2::Argon2::default().verify_password(pw.as_bytes(), &parsed).is_ok())
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
        if !(ok && user_ok) {
            return None;
        }
        let id = new_id();
        if id.is_empty() {
            return None;
        }
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, t| t.elapsed() < self.ttl);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                s.remove(&oldest);
            }
        }
        s.insert(id.clone(), Instant::now());
        Some(id)
    }

    /// Ends the session a request carries, if any.
    pub(crate) fn logout(&self, headers: &hyper::HeaderMap) {
        if let Some(id) = session_of(headers) {
            self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }
}

/// The session id in a request's `Cookie` header.
fn session_of(headers: &hyper::HeaderMap) -> Option<String> {
    for h in headers.get_all(hyper::header::COOKIE) {
        let Ok(v) = h.to_str() else { continue };
        for part in v.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                if k == COOKIE && val.len() == 64 && val.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Some(val.to_string());
                }
            }
        }
    }
    None
}

/// 32 random bytes as hex.
fn new_id() -> String {
    let mut b = [0u8; 32];
    // The OS generator failing is not something a daemon can go on without.
    if getrandom::fill(&mut b).is_err() {
        // Fall back to an id nobody can use: every check compares 64 hex digits.
        return String::new();
    }
    hex::encode(b)
}

/// Compares without an early exit on the first differing byte (the length
/// still shows).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hashes a password into the PHC string `password_hash` takes (Argon2id,
/// the crate's default parameters, a random salt).
///
/// ```
/// let phc = alike_serve::hash_password("correct horse").unwrap();
/// assert!(phc.starts_with("$argon2id$"));
/// ```
///
/// # Errors
/// [`Error::BadRequest`] if hashing fails (no OS randomness).
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::BadRequest(format!("hashing the password: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(hash: Option<String>) -> ServeAdmin {
        let text = match hash {
            Some(h) => format!("[serve]\ndatabase = \"db\"\n[serve.admin]\npassword_hash = {h:?}\n"),
            None => "[serve]\ndatabase = \"db\"\n[serve.admin]\ntoken = { env = \"NOPE\" }\n".into(),
        };
        alike::Config::parse(&text, "/x/alike.toml").unwrap().serve.unwrap().admin
    }

    #[tokio::test]
    async fn login_checks_user_and_password() {
        let a = Auth::load(&settings(Some(hash_password("pw-1").unwrap())), Duration::from_secs(60)).unwrap();
        assert!(a.login("admin", "pw-2").await.is_none());
        assert!(a.login("root", "pw-1").await.is_none());
        let id = a.login("admin", "pw-1").await.unwrap();
        let mut h = hyper::HeaderMap::new();
        assert!(!a.allows(&h));
        h.insert(hyper::header::COOKIE, format!("x=1; {COOKIE}={id}").parse().unwrap());
        assert!(a.allows(&h));
        a.logout(&h);
        assert!(!a.allows(&h));
    }

    #[tokio::test]
    async fn sessions_expire() {
        let a = Auth::load(&settings(Some(hash_password("pw").unwrap())), Duration::from_millis(1)).unwrap();
        let id = a.login("admin", "pw").await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let mut h = hyper::HeaderMap::new();
        h.insert(hyper::header::COOKIE, format!("{COOKIE}={id}").parse().unwrap());
        assert!(!a.allows(&h));
    }

    #[test]
    fn a_bad_hash_is_refused_at_start() {
        assert!(Auth::load(&settings(Some("not-a-phc".into())), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn no_credential_is_refused() {
        let e =
            alike::Config::parse("[serve]\ndatabase = \"db\"\n[serve.admin]\nuser = \"a\"\n", "/x/a.toml").unwrap_err();
        assert!(e.to_string().contains("no default credential"), "{e}");
        let e = alike::Config::parse(
            "[serve]\ndatabase = \"db\"\n[serve.admin]\ntoken = \"inline-secret-0123456789\"\n",
            "/x/a.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("never written in the configuration"), "{e}");
    }
}
