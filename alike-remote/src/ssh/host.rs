//! A host to run on: `user@host[:port]`.

use std::fmt;
use std::str::FromStr;

use super::RemoteError;

/// The default SSH port.
pub const SSH_PORT: u16 = 22;

/// A host reached over SSH: the user to log in as, a name or address, a port.
///
/// ```
/// use alike_remote::ssh::Host;
/// let h: Host = "backup@10.0.0.7:2222".parse()?;
/// assert_eq!((h.user.as_str(), h.host.as_str(), h.port), ("backup", "10.0.0.7", 2222));
/// let v6: Host = "root@[fd00::7]".parse()?;
/// assert_eq!((v6.host.as_str(), v6.port), ("fd00::7", 22));
/// assert_eq!(v6.to_string(), "root@[fd00::7]:22");
/// # Ok::<(), alike_remote::ssh::RemoteError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Host {
    /// The user to log in as.
    pub user: String,
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    /// The SSH port.
    pub port: u16,
}

impl Host {
    /// `user` at `host`, port `port`.
    ///
    /// # Errors
    /// [`RemoteError::InvalidArgument`] for an empty or malformed user or host.
    pub fn new(user: impl Into<String>, host: impl Into<String>, port: u16) -> Result<Host, RemoteError> {
        let h = Host { user: user.into(), host: host.into(), port };
        let bad = |what: &str, s: &str| {
            s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_whitespace() || c.is_control() || what.contains(c))
        };
        if bad("@", &h.user) {
            return Err(RemoteError::InvalidArgument(format!("SSH user {:?}: empty, too long or not a name", h.user)));
        }
        if bad("@/[]", &h.host) {
            return Err(RemoteError::InvalidArgument(format!("SSH host {:?}: empty, too long or not a name", h.host)));
        }
        if port == 0 {
            return Err(RemoteError::InvalidArgument("SSH port 0".into()));
        }
        Ok(h)
    }
}

impl FromStr for Host {
    type Err = RemoteError;

    /// `user@host`, `user@host:port`, `user@[v6]:port`, `user@[v6]`, or
    /// `user@v6` (an address with several colons is all host).
    fn from_str(s: &str) -> Result<Host, RemoteError> {
        let bad = || RemoteError::InvalidArgument(format!("{s:?} is not user@host[:port]"));
        let (user, rest) = s.rsplit_once('@').ok_or_else(bad)?;
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (h, None),
                p => (h, Some(p.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h, Some(p)),
                _ => (rest, None),
            }
        };
        let port = match port {
            None => SSH_PORT,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| RemoteError::InvalidArgument(format!("{s:?}: port {p:?} is not a port")))?,
        };
        Host::new(user, host, port)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let h: Host = "u@h".parse().unwrap();
        assert_eq!((h.user.as_str(), h.host.as_str(), h.port), ("u", "h", 22));
        let h: Host = "u@::1".parse().unwrap();
        assert_eq!((h.host.as_str(), h.port), ("::1", 22));
        let h: Host = "u@[::1]:2200".parse().unwrap();
        assert_eq!((h.host.as_str(), h.port), ("::1", 2200));
        for bad in ["h", "@h", "u@", "u@h:x", "u@h:0", "u@[::1", "u@[::1]x", "u v@h", "u@h h"] {
            assert!(bad.parse::<Host>().is_err(), "{bad}");
        }
    }
}
