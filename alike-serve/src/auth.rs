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
//!
//! Failed logins are limited per client address (IPv6: per /64) and per
//! user name, with exponential backoff ([`Limiter`]): the first
//! [`FREE_FAILURES`] - 1 failures cost nothing, each one from then on
//! blocks that address and that user name for 1, 2, 4… seconds (at most
//! [`MAX_BLOCK`]); a login attempt while either is blocked answers 429
//! with `Retry-After` and checks nothing. A success clears both. The
//! address is the TCP peer's (a proxy's `X-Forwarded-For` is not trusted).
//! Credentials are compared in constant time: the token as fixed-length
//! digests, the user name byte by byte without an early exit, and the
//! password by Argon2 (run whether the user name matched or not).

use std::collections::HashMap;
use std::net::IpAddr;
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
/// Failures (per address, per user) before each further one blocks.
pub(crate) const FREE_FAILURES: u32 = 3;
/// The longest block.
pub(crate) const MAX_BLOCK: Duration = Duration::from_secs(15 * 60);
/// A key's failures are forgotten this long after its last one.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// The most addresses and user names tracked at once.
const MAX_TRACKED: usize = 10_000;

/// What a login attempt came to.
#[derive(Debug)]
pub(crate) enum Login {
    /// A new session's id.
    Ok(String),
    /// Wrong user name or password (counted).
    Wrong,
    /// Blocked for this long after earlier failures (nothing checked).
    Limited(Duration),
}

/// Failed logins per key (`ip:…`, `user:…`), with exponential backoff.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    keys: Mutex<HashMap<String, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// The limiter's key for a client address: IPv4 as it is, IPv6 by its /64
/// (one host commonly holds a whole /64).
fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => format!("ip:{v}"),
        IpAddr::V6(v) => match v.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn user_key(user: &str) -> String {
    // Bounded: a client chooses the name.
    let mut end = user.len().min(128);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    format!("user:{}", &user[..end])
}

impl Limiter {
    /// How long the longest block over `keys` still lasts, if any.
    fn blocked(&self, keys: &[String], now: Instant) -> Option<Duration> {
        let m = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().filter_map(|k| m.get(k).and_then(|f| f.blocked_until)).filter(|t| *t > now).map(|t| t - now).max()
    }

    /// Counts a failure against each key; from the [`FREE_FAILURES`]th on,
    /// each blocks the key for twice as long as the one before.
    fn failed(&self, keys: &[String], now: Instant) {
        let mut m = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() + keys.len() > MAX_TRACKED {
            m.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER || f.blocked_until.is_some_and(|t| t > now));
            while m.len() + keys.len() > MAX_TRACKED {
                let Some(oldest) = m.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone()) else { break };
                m.remove(&oldest);
            }
        }
        for k in keys {
            let f = m.entry(k.clone()).or_insert(Failures { count: 0, last: now, blocked_until: None });
            if now.duration_since(f.last) >= FORGET_AFTER && f.count > 0 {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
            if f.count >= FREE_FAILURES {
                let shift = (f.count - FREE_FAILURES).min(20);
                f.blocked_until = Some(now + Duration::from_secs(1u64 << shift).min(MAX_BLOCK));
            }
        }
    }

    fn succeeded(&self, keys: &[String]) {
        let mut m = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            m.remove(k);
        }
    }
}

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
    limiter: Limiter,
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
            limiter: Limiter::default(),
        })
    }

    /// Whether a request's headers carry a valid credential.
    pub(crate) fn allows(&self, headers: &hyper::HeaderMap) -> bool {
        if let (Some(t), Some(h)) = (&self.token, headers.get(hyper::header::AUTHORIZATION)) {
            if let Some(given) = h.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
                if token_eq(given.trim(), t) {
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

    /// Checks a user name and password from client address `from`, within
    /// the failed-login limits; on success opens a session.
    pub(crate) async fn login(&self, from: IpAddr, user: &str, password: &str) -> Login {
        let keys = [address_key(from), user_key(user)];
        if let Some(wait) = self.limiter.blocked(&keys, Instant::now()) {
            return Login::Limited(wait);
        }
        let Some(hash) = self.password_hash.clone() else {
            self.limiter.failed(&keys, Instant::now());
            return Login::Wrong;
        };
        let Ok(_one) = self.checking.acquire().await else { return Login::Wrong };
        // Checked again: attempts queued behind a failing one wait here.
        if let Some(wait) = self.limiter.blocked(&keys, Instant::now()) {
            return Login::Limited(wait);
        }
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
            self.limiter.failed(&keys, Instant::now());
            return Login::Wrong;
        }
        self.limiter.succeeded(&keys);
        let id = new_id();
        if id.is_empty() {
            return Login::Wrong;
        }
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, t| t.elapsed() < self.ttl);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                s.remove(&oldest);
            }
        }
        s.insert(id.clone(), Instant::now());
        Login::Ok(id)
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

/// Compares a presented token with the configured one through their
/// BLAKE3 digests: the time taken shows neither the length nor a prefix.
fn token_eq(given: &str, token: &str) -> bool {
    constant_time_eq(blake3::hash(given.as_bytes()).as_bytes(), blake3::hash(token.as_bytes()).as_bytes())
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

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn failures_back_off_exponentially_per_key() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let k = [address_key(LOCAL), user_key("admin")];
        for _ in 1..FREE_FAILURES {
            l.failed(&k, t0);
            assert_eq!(l.blocked(&k, t0), None);
        }
        let mut want = 1;
        for _ in 0..5 {
            l.failed(&k, t0);
            assert_eq!(l.blocked(&k, t0), Some(Duration::from_secs(want)));
            want *= 2;
        }
        // One key blocked blocks an attempt that carries it.
        assert!(l.blocked(&[address_key("10.0.0.1".parse().unwrap()), user_key("admin")], t0).is_some());
        assert!(l.blocked(&[address_key("10.0.0.1".parse().unwrap()), user_key("other")], t0).is_none());
        // Far along, the block stops growing.
        for _ in 0..40 {
            l.failed(&k, t0);
        }
        assert_eq!(l.blocked(&k, t0), Some(MAX_BLOCK));
        l.succeeded(&k);
        assert_eq!(l.blocked(&k, t0), None);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        assert_eq!(a, address_key("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert_ne!(a, address_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(address_key("::ffff:10.0.0.1".parse().unwrap()), "ip:10.0.0.1");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_eq("0123456789abcdef", "0123456789abcdef"));
        assert!(!token_eq("0123456789abcdeF", "0123456789abcdef"));
        assert!(!token_eq("0123456789abcdef0", "0123456789abcdef"));
        assert!(!token_eq("", "0123456789abcdef"));
    }

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
        assert!(matches!(a.login(LOCAL, "admin", "pw-2").await, Login::Wrong));
        assert!(matches!(a.login(LOCAL, "root", "pw-1").await, Login::Wrong));
        let id = match a.login(LOCAL, "admin", "pw-1").await {
            Login::Ok(id) => id,
            other => panic!("{other:?}"),
        };
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
        let Login::Ok(id) = a.login(LOCAL, "admin", "pw").await else { panic!("login") };
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
