//! The HTTP transport: one persistent TCP connection to `/wsman`,
//! authenticated with `Negotiate` (raw NTLM tokens) and then carrying every
//! message sealed with the NTLM session (`multipart/encrypted`, MS-WSMV
//! §2.2.9.1). Over HTTPS (`https://`, 5986; the certificate pinned or
//! checked against a CA file, [`super::tls`]) the SOAP travels in clear
//! inside TLS, after NTLM on the connection or with Basic on every request. NTLM authenticates the connection, not each request, so the
//! transport owns its socket (a pooled HTTP client could hand a request to
//! another, unauthenticated connection). A connection the host closed while
//! idle is opened and authenticated again once, transparently.
//!
//! The framing of encrypted bodies ([`seal_body`], [`unseal_body`]) is sans
//! I/O; the rest is a small blocking HTTP/1.1 client over `std::net` with
//! `httparse` (Content-Length and chunked replies, bounded sizes).

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::ntlm::{self, NtlmError, Randoms, Session};
use crate::{Error, Result};

const BOUNDARY: &[u8] = b"--Encrypted Boundary";
const PROTOCOL: &str = "application/HTTP-SPNEGO-session-encrypted";
/// Replies are bounded (WinRM's MaxEnvelopeSize is far below).
const MAX_REPLY: usize = 64 << 20;
const MAX_HEADER: usize = 64 << 10;

/// Where to connect.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) url: String,
    host: String,
    port: u16,
    path: String,
    /// `https://`.
    pub(crate) tls: bool,
}

impl Endpoint {
    /// Parses `http[s]://HOST[:PORT]/PATH` (port 5985, or 5986 for HTTPS, by default).
    pub(crate) fn parse(url: &str) -> Result<Endpoint> {
        let bad = |why: &str| Error::InvalidArgument(format!("WS-Man URL {url:?}: {why}"));
        let (rest, tls) = if let Some(r) = url.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("https://") {
            (r, true)
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/wsman"),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h.to_owned(), p.strip_prefix(':').map(str::parse).transpose().map_err(|_| bad("bad port"))?)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p.parse().map_err(|_| bad("bad port"))?)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() || path.bytes().any(|b| b <= b' ') {
            return Err(bad("no host, or a path with spaces"));
        }
        let port = port.unwrap_or(if tls { 5986 } else { 5985 });
        Ok(Endpoint { url: url.to_owned(), host, port, path: path.to_owned(), tls })
    }
}

/// Seals `plain` for the wire: the multipart body WinRM expects.
pub(crate) fn seal_body(session: &mut Session, plain: &[u8]) -> Vec<u8> {
    let mut msg = plain.to_vec();
    let sig = session.seal(&mut msg);
    let mut out = Vec::with_capacity(msg.len() + 256);
    out.extend_from_slice(BOUNDARY);
    out.extend_from_slice(
        format!(
            "\r\n\tContent-Type: {PROTOCOL}\r\n\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length={}\r\n",
            plain.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(BOUNDARY);
    out.extend_from_slice(b"\r\n\tContent-Type: application/octet-stream\r\n");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&sig);
    out.extend_from_slice(&msg);
    out.extend_from_slice(BOUNDARY);
    out.extend_from_slice(b"--\r\n");
    out
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// Why an encrypted body could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unseal {
    Malformed(&'static str),
    Ntlm(NtlmError),
}

/// Opens a `multipart/encrypted` reply: every part, in order (total on any input).
pub(crate) fn unseal_body(session: &mut Session, body: &[u8]) -> Result<Vec<u8>, Unseal> {
    let mut out = Vec::new();
    let mut at = find(body, BOUNDARY, 0).ok_or(Unseal::Malformed("no boundary"))?;
    loop {
        let head_start = at + BOUNDARY.len();
        if body.get(head_start..head_start + 2) == Some(b"--") {
            return if out.is_empty() { Err(Unseal::Malformed("no encrypted part")) } else { Ok(out) };
        }
        let next = find(body, BOUNDARY, head_start).ok_or(Unseal::Malformed("a part without its data"))?;
        let head =
            std::str::from_utf8(&body[head_start..next]).map_err(|_| Unseal::Malformed("part header is not text"))?;
        if !head.contains(PROTOCOL) {
            return Err(Unseal::Malformed("an unknown protocol"));
        }
        let len: usize = head
            .split("Length=")
            .nth(1)
            .and_then(|s| s.trim().split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .ok_or(Unseal::Malformed("no Length in OriginalContent"))?;
        let marker = b"application/octet-stream\r\n";
        let data = find(body, marker, next).ok_or(Unseal::Malformed("no octet-stream part"))? + marker.len();
        let sig_len = body
            .get(data..data + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or(Unseal::Malformed("truncated signature length"))?;
        if sig_len != 16 {
            return Err(Unseal::Malformed("signature length is not 16"));
        }
        let sig = body.get(data + 4..data + 20).ok_or(Unseal::Malformed("truncated signature"))?.to_vec();
        let end = (data + 20).checked_add(len).ok_or(Unseal::Malformed("length overflows"))?;
        let mut msg = body.get(data + 20..end).ok_or(Unseal::Malformed("shorter than its Length"))?.to_vec();
        session.unseal(&mut msg, &sig).map_err(Unseal::Ntlm)?;
        out.extend_from_slice(&msg);
        at = find(body, BOUNDARY, end).ok_or(Unseal::Malformed("no closing boundary"))?;
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

trait Stream: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> Stream for T {}

struct Conn {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
    session: Option<Session>,
}

/// The transport: one authenticated connection at a time.
pub(crate) struct Transport {
    pub(crate) ep: Endpoint,
    user: String,
    password: String,
    timeout: Duration,
    conn: Option<Conn>,
    /// For HTTPS: the client configuration and its verifier.
    pub(crate) tls: Option<super::tls::TlsSetup>,
    /// Basic authentication on every request (HTTPS only).
    pub(crate) basic: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("url", &self.ep.url).field("user", &self.user).finish_non_exhaustive()
    }
}

impl Transport {
    pub(crate) fn new(ep: Endpoint, user: &str, password: &str, timeout: Duration) -> Transport {
        Transport {
            ep,
            user: user.to_owned(),
            password: password.to_owned(),
            timeout,
            conn: None,
            tls: None,
            basic: false,
        }
    }

    fn net(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Network { endpoint: self.ep.url.clone(), what, source }
    }

    fn connect(&self) -> Result<Conn> {
        let addrs: Vec<_> =
            (self.ep.host.as_str(), self.ep.port).to_socket_addrs().map_err(self.net("resolving the host"))?.collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(15)) {
                Ok(s) => {
                    s.set_read_timeout(Some(self.timeout)).map_err(self.net("configuring the socket"))?;
                    s.set_write_timeout(Some(self.timeout)).map_err(self.net("configuring the socket"))?;
                    let _ = s.set_nodelay(true);
                    return match &self.tls {
                        None => Ok(Conn { stream: Box::new(s), buf: Vec::new(), session: None }),
                        Some(t) => self.handshake(t, s),
                    };
                }
                Err(e) => last = e,
            }
        }
        Err(self.net("connecting")(last))
    }

    /// The TLS handshake, done at once so that a refused certificate is
    /// named as such (its fingerprint in the error).
    fn handshake(&self, t: &super::tls::TlsSetup, mut s: TcpStream) -> Result<Conn> {
        let name = super::tls::server_name(&self.ep.host)?;
        let mut conn = rustls::ClientConnection::new(t.config.clone(), name)
            .map_err(|e| Error::InvalidArgument(format!("TLS set-up: {e}")))?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut s) {
                if let Some((fingerprint, why)) = t.refused() {
                    return Err(Error::Certificate { endpoint: self.ep.url.clone(), fingerprint, why });
                }
                return Err(self.net("the TLS handshake")(e));
            }
        }
        Ok(Conn { stream: Box::new(rustls::StreamOwned::new(conn, s)), buf: Vec::new(), session: None })
    }

    fn send(&self, c: &mut Conn, extra: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
        let host = if self.ep.host.contains(':') { format!("[{}]", self.ep.host) } else { self.ep.host.clone() };
        let mut h = format!(
            "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: alike-hyperv\r\nConnection: Keep-Alive\r\nContent-Length: {}\r\n",
            self.ep.path,
            self.ep.port,
            body.len()
        );
        for (k, v) in extra {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        c.stream.write_all(h.as_bytes())?;
        c.stream.write_all(body)?;
        c.stream.flush()
    }

    fn fill(c: &mut Conn) -> std::io::Result<usize> {
        let mut chunk = [0u8; 64 << 10];
        let n = c.stream.read(&mut chunk)?;
        c.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one reply; `Ok(None)` when the peer closed before any byte.
    fn receive(c: &mut Conn) -> std::io::Result<Option<Reply>> {
        let proto = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        let (status, headers, n) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&c.buf).map_err(|e| proto(&format!("bad HTTP reply: {e}")))? {
                httparse::Status::Complete(n) => {
                    let headers: Vec<(String, String)> = r
                        .headers
                        .iter()
                        .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).trim().to_owned()))
                        .collect();
                    break (r.code.unwrap_or(0), headers, n);
                }
                httparse::Status::Partial => {
                    if c.buf.len() > MAX_HEADER {
                        return Err(proto("HTTP reply header too large"));
                    }
                    if Transport::fill(c)? == 0 {
                        return if c.buf.is_empty() {
                            Ok(None)
                        } else {
                            Err(proto("connection closed inside a reply"))
                        };
                    }
                }
            }
        };
        c.buf.drain(..n);
        let get = |k: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str());
        let body = if get("Transfer-Encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&c.buf, b"\r\n", 0) {
                        break i;
                    }
                    if c.buf.len() > 1024 || Transport::fill(c)? == 0 {
                        return Err(proto("bad chunk size line"));
                    }
                };
                let size_text = String::from_utf8_lossy(&c.buf[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| proto("bad chunk size"))?;
                c.buf.drain(..line_end + 2);
                if body.len() + size > MAX_REPLY {
                    return Err(proto("reply too large"));
                }
                while c.buf.len() < size + 2 {
                    if Transport::fill(c)? == 0 {
                        return Err(proto("connection closed inside a chunk"));
                    }
                }
                body.extend_from_slice(&c.buf[..size]);
                c.buf.drain(..size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            let len: usize =
                get("Content-Length").map_or(Ok(0), str::parse).map_err(|_| proto("bad Content-Length"))?;
            if len > MAX_REPLY {
                return Err(proto("reply too large"));
            }
            while c.buf.len() < len {
                if Transport::fill(c)? == 0 {
                    return Err(proto("connection closed inside a reply"));
                }
            }
            c.buf.drain(..len).collect()
        };
        Ok(Some(Reply { status, headers, body }))
    }

    fn round_trip(&self, c: &mut Conn, extra: &[(&str, String)], body: &[u8]) -> Result<Reply> {
        self.send(c, extra, body).map_err(self.net("sending a request"))?;
        Transport::receive(c)
            .map_err(self.net("reading a reply"))?
            .ok_or_else(|| self.net("reading a reply")(std::io::ErrorKind::UnexpectedEof.into()))
    }

    /// NTLM over `Negotiate` on a fresh connection.
    fn authenticate(&self, c: &mut Conn) -> Result<()> {
        let ntlm_err = |source| Error::Ntlm { endpoint: self.ep.url.clone(), source };
        let refused = || Error::AuthenticationFailed { endpoint: self.ep.url.clone(), user: self.user.clone() };
        let neg = ntlm::negotiate();
        let r = self.round_trip(c, &[("Authorization", format!("Negotiate {}", B64.encode(&neg)))], b"")?;
        if r.status != 401 {
            return Err(Error::Http {
                endpoint: self.ep.url.clone(),
                action: "NTLM negotiate".into(),
                status: r.status,
            });
        }
        let challenge = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("WWW-Authenticate"))
            .flat_map(|(_, v)| v.split(','))
            .find_map(|v| {
                let v = v.trim();
                let (scheme, tok) = v.split_once(' ')?;
                (scheme.eq_ignore_ascii_case("Negotiate") || scheme.eq_ignore_ascii_case("NTLM"))
                    .then(|| B64.decode(tok.trim()).ok())?
            })
            .ok_or_else(refused)?;
        let randoms = Randoms::draw().map_err(ntlm_err)?;
        let (auth, session) =
            ntlm::authenticate(&neg, &challenge, &self.user, &self.password, &randoms).map_err(ntlm_err)?;
        let r = self.round_trip(c, &[("Authorization", format!("Negotiate {}", B64.encode(&auth)))], b"")?;
        match r.status {
            200..=299 => {
                c.session = Some(session);
                Ok(())
            }
            401 => Err(refused()),
            s => Err(Error::Http { endpoint: self.ep.url.clone(), action: "NTLM authenticate".into(), status: s }),
        }
    }

    /// Sends one SOAP message; the reply's HTTP status and envelope text.
    /// `action` names the request in errors.
    pub(crate) fn post(&mut self, action: &str, xml: &str) -> Result<(u16, String)> {
        for attempt in 0..2 {
            let mut c = match self.conn.take() {
                Some(c) => c,
                None => {
                    let mut c = self.connect()?;
                    if !self.basic {
                        self.authenticate(&mut c)?;
                    }
                    c
                }
            };
            // Inside TLS the SOAP goes in clear; over HTTP it is sealed with the NTLM session.
            let (headers, body) = if self.tls.is_some() {
                let mut h = vec![("Content-Type", "application/soap+xml;charset=UTF-8".to_owned())];
                if self.basic {
                    h.push((
                        "Authorization",
                        format!("Basic {}", B64.encode(format!("{}:{}", self.user, self.password))),
                    ));
                }
                (h, xml.as_bytes().to_vec())
            } else {
                let Some(session) = c.session.as_mut() else { continue };
                let ct = format!("multipart/encrypted;protocol=\"{PROTOCOL}\";boundary=\"Encrypted Boundary\"");
                (vec![("Content-Type", ct)], seal_body(session, xml.as_bytes()))
            };
            if let Err(e) = self.send(&mut c, &headers, &body) {
                if attempt == 0 {
                    continue; // the host closed the idle connection: open another
                }
                return Err(self.net("sending a request")(e));
            }
            let reply = match Transport::receive(&mut c) {
                Ok(Some(r)) => r,
                Ok(None) if attempt == 0 => continue, // closed while idle, before reading our request
                Ok(None) => return Err(self.net("reading a reply")(std::io::ErrorKind::UnexpectedEof.into())),
                Err(e) => return Err(self.net("reading a reply")(e)),
            };
            if reply.status == 401 {
                return Err(Error::AuthenticationFailed { endpoint: self.ep.url.clone(), user: self.user.clone() });
            }
            let encrypted = reply.header("Content-Type").is_some_and(|t| t.contains(PROTOCOL));
            let text = if self.tls.is_some() && !encrypted && !reply.body.is_empty() {
                String::from_utf8_lossy(&reply.body).into_owned()
            } else if encrypted {
                let session = c.session.as_mut().ok_or_else(|| Error::AuthenticationFailed {
                    endpoint: self.ep.url.clone(),
                    user: self.user.clone(),
                })?;
                match unseal_body(session, &reply.body) {
                    Ok(t) => String::from_utf8_lossy(&t).into_owned(),
                    Err(Unseal::Ntlm(source)) => return Err(Error::Ntlm { endpoint: self.ep.url.clone(), source }),
                    Err(Unseal::Malformed(what)) => {
                        return Err(Error::Protocol {
                            endpoint: self.ep.url.clone(),
                            action: action.into(),
                            what: what.into(),
                        });
                    }
                }
            } else if reply.body.is_empty() {
                return Err(Error::Http { endpoint: self.ep.url.clone(), action: action.into(), status: reply.status });
            } else {
                return Err(Error::Protocol {
                    endpoint: self.ep.url.clone(),
                    action: action.into(),
                    what: format!("HTTP {} with an unencrypted body", reply.status),
                });
            };
            let close = reply.header("Connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            if !close {
                self.conn = Some(c);
            }
            return Ok((reply.status, text));
        }
        Err(self.net("sending a request")(std::io::ErrorKind::ConnectionReset.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("http://hv01:5985/wsman").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("hv01", 5985, "/wsman"));
        let e = Endpoint::parse("http://[::1]:8080/x").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8080));
        assert_eq!(Endpoint::parse("http://h").unwrap().path, "/wsman");
        let e = Endpoint::parse("https://hv01/wsman").unwrap();
        assert_eq!((e.port, e.tls), (5986, true));
        for bad in ["ftp://h", "http://:1/", "http://h:x/", "http://h/a b"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unseal_is_total() {
        let mut s = ntlm::test_session();
        for b in [&b""[..], BOUNDARY, b"--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n\tOriginalContent: type=x;Length=99999999999999999999\r\n--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n\x10\0\0\0"] {
            assert!(unseal_body(&mut s, b).is_err());
        }
    }
}
