//! The SSH client: connect with a pinned host key, authenticate with a key,
//! run a command and talk to it as a stream of lines.
//!
//! # Threads and memory
//!
//! A [`Session`] owns a small tokio runtime (one worker thread,
//! `alike-ssh`) that runs russh. Every blocking call spawns its work there
//! and waits on a channel, so it may be made from any thread, inside
//! another runtime or not. A [`RemoteProcess`]'s output is read by a task
//! that cuts it into lines (at most [`SshOptions::max_line`] bytes each)
//! into a queue of 64 lines; when the queue is full the task stops reading,
//! the SSH window closes and the remote command blocks on its writes, so a
//! fast or hostile remote never makes memory grow. Standard error keeps only
//! its last [`SshOptions::stderr_tail`] bytes, for error messages.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use alike_core::Recover;
use russh::client::{self, Handle, Msg};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelWriteHalf, Disconnect};
use tokio::sync::mpsc;

use super::known_hosts::fingerprint;
use super::{Host, HostKeyPolicy, RemoteError};
use crate::protocol::{LineDecoder, MAX_LINE, ProtocolError, Secret};

/// Timeouts and bounds of a connection.
///
/// ```
/// use std::time::Duration;
/// let o = alike_remote::ssh::SshOptions::default().connect_timeout(Duration::from_secs(3));
/// # let _ = o;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SshOptions {
    /// TCP connect (name resolution included): 10 s.
    pub connect_timeout: Duration,
    /// The SSH handshake up to the host key check and key exchange: 10 s.
    pub handshake_timeout: Duration,
    /// Authentication: 10 s.
    pub auth_timeout: Duration,
    /// Opening a channel and starting a command; writing to it: 30 s.
    pub request_timeout: Duration,
    /// Keepalives while connected: every 15 s; after
    /// [`SshOptions::keepalive_max`] unanswered the connection is dropped
    /// (a host that died mid-job is noticed within a minute).
    pub keepalive_interval: Duration,
    /// Unanswered keepalives before giving up: 4.
    pub keepalive_max: usize,
    /// The longest line of a command's output: [`MAX_LINE`].
    pub max_line: usize,
    /// How much of a command's standard error is kept: 8 KiB.
    pub stderr_tail: usize,
}

impl Default for SshOptions {
    fn default() -> SshOptions {
        SshOptions {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(15),
            keepalive_max: 4,
            max_line: MAX_LINE,
            stderr_tail: 8 << 10,
        }
    }
}

impl SshOptions {
    /// Sets [`SshOptions::connect_timeout`].
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Sets [`SshOptions::handshake_timeout`].
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }
    /// Sets [`SshOptions::auth_timeout`].
    pub fn auth_timeout(mut self, d: Duration) -> Self {
        self.auth_timeout = d;
        self
    }
    /// Sets [`SshOptions::keepalive_interval`].
    pub fn keepalive_interval(mut self, d: Duration) -> Self {
        self.keepalive_interval = d;
        self
    }
    /// Sets [`SshOptions::max_line`].
    pub fn max_line(mut self, n: usize) -> Self {
        self.max_line = n;
        self
    }
}

/// The client's private key: an OpenSSH private key file, maybe
/// passphrase-protected. The passphrase is a [`Secret`] and appears in no
/// message.
#[derive(Debug, Clone)]
pub struct ClientKey {
    path: std::path::PathBuf,
    passphrase: Option<Secret>,
}

/// The largest key or passphrase file read.
const MAX_KEY_FILE: u64 = 64 << 10;

impl ClientKey {
    /// The key in `path` (not read until a connection needs it).
    pub fn new(path: impl Into<std::path::PathBuf>) -> ClientKey {
        ClientKey { path: path.into(), passphrase: None }
    }

    /// Decrypts the key with `passphrase`.
    pub fn with_passphrase(mut self, passphrase: Secret) -> ClientKey {
        self.passphrase = Some(passphrase);
        self
    }

    /// Decrypts the key with the passphrase in `file` (its trailing newline
    /// removed).
    ///
    /// # Errors
    /// [`RemoteError::ClientKey`] when the file cannot be read.
    pub fn with_passphrase_file(self, file: &std::path::Path) -> Result<ClientKey, RemoteError> {
        let bad = |reason: String| RemoteError::ClientKey {
            path: self.path.clone(),
            reason: format!("passphrase file {}: {reason}", file.display()),
        };
        let text = read_bounded(file).map_err(bad)?;
        let p = text.trim_end_matches(['\n', '\r']).to_string();
        Ok(self.with_passphrase(Secret::new(p)))
    }

    /// The key file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn load(&self) -> Result<russh::keys::PrivateKey, RemoteError> {
        let bad = |reason: String| RemoteError::ClientKey { path: self.path.clone(), reason };
        let text = zeroize::Zeroizing::new(read_bounded(&self.path).map_err(bad)?);
        let pass = self.passphrase.as_ref().map(Secret::expose);
        russh::keys::decode_secret_key(&text, pass).map_err(|e| match (e, pass) {
            (russh::keys::Error::KeyIsEncrypted, None) => {
                bad("the key is encrypted: give its passphrase (a passphrase file)".into())
            }
            (e, Some(_)) => {
                bad(format!("cannot decrypt it with the passphrase given, or it is not a private key: {e}"))
            }
            (e, None) => bad(format!("not an OpenSSH private key: {e}")),
        })
    }
}

fn read_bounded(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    if !f.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut s = String::new();
    f.take(MAX_KEY_FILE + 1).read_to_string(&mut s).map_err(|e| e.to_string())?;
    if s.len() as u64 > MAX_KEY_FILE {
        return Err(format!("larger than {} KiB", MAX_KEY_FILE >> 10));
    }
    Ok(s)
}

/// russh's handler: checks the host key against the policy and keeps the
/// refusal (russh itself only says "unknown key").
struct Checker {
    policy: HostKeyPolicy,
    host: String,
    port: u16,
    refusal: Arc<Mutex<Option<RemoteError>>>,
    accepted: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let verdict = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                self.policy.check(&self.host, self.port, key).map(|()| fingerprint(key))
            }
            PublicKeyOrCertificate::Certificate(c) => Err(RemoteError::HostKeyUnknown {
                host: self.host.clone(),
                port: self.port,
                presented: format!("a host certificate ({})", c.algorithm()),
                source_of_keys: "this client (it pins keys, and trusts no certificate authority)".into(),
            }),
        };
        match verdict {
            Ok(fp) => {
                *self.accepted.locked() = Some(fp);
                Ok(true)
            }
            Err(e) => {
                *self.refusal.locked() = Some(e);
                Ok(false)
            }
        }
    }
}

/// Runs `fut` on `rt` and waits for it from this thread (any thread: the
/// future runs on the runtime's worker, this thread waits on a channel).
fn block<T: Send + 'static>(rt: &tokio::runtime::Handle, fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().ok()
}

/// A connected, authenticated SSH session.
pub struct Session {
    rt: Option<tokio::runtime::Runtime>,
    handle: Arc<Handle<Checker>>,
    host: Host,
    host_key: String,
    opts: SshOptions,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("host", &self.host).field("host_key", &self.host_key).finish()
    }
}

impl Session {
    /// Connects to `host`, checks its key against `policy`, and logs in
    /// with `key`.
    ///
    /// # Errors
    /// [`RemoteError::Connect`], [`RemoteError::Timeout`] (each step has its
    /// own limit in `opts`), a refused host key
    /// ([`RemoteError::HostKeyUnknown`], [`RemoteError::HostKeyChanged`],
    /// [`RemoteError::HostKeyRevoked`], [`RemoteError::KnownHosts`]),
    /// [`RemoteError::ClientKey`], [`RemoteError::AuthFailed`],
    /// [`RemoteError::Ssh`].
    pub fn connect(
        host: &Host,
        policy: &HostKeyPolicy,
        key: &ClientKey,
        opts: &SshOptions,
    ) -> Result<Session, RemoteError> {
        // The key first: a wrong key file fails before any network.
        let private = Arc::new(key.load()?);
        let key_fp = fingerprint(private.public_key());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("alike-ssh")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Connect { host: host.host.clone(), port: host.port, source: e })?;
        let mut config = client::Config {
            keepalive_interval: Some(opts.keepalive_interval),
            keepalive_max: opts.keepalive_max,
            nodelay: true,
            ..Default::default()
        };
        // Ask for the pinned keys' algorithms first, so a host with several
        // host keys presents the one pinned (as OpenSSH orders them).
        let pinned = policy.pinned_algorithms(&host.host, host.port);
        if !pinned.is_empty() {
            let mut order: Vec<_> = config.preferred.key.iter().filter(|a| pinned.contains(a)).cloned().collect();
            order.extend(config.preferred.key.iter().filter(|a| !pinned.contains(a)).cloned());
            config.preferred.key = order.into();
        }
        let refusal = Arc::new(Mutex::new(None));
        let accepted = Arc::new(Mutex::new(None));
        let checker = Checker {
            policy: policy.clone(),
            host: host.host.clone(),
            port: host.port,
            refusal: refusal.clone(),
            accepted: accepted.clone(),
        };
        let (h, o) = (host.clone(), opts.clone());
        let fut = async move {
            let timeout =
                |what, after, hint| RemoteError::Timeout { host: h.host.clone(), port: h.port, what, after, hint };
            let stream =
                tokio::time::timeout(o.connect_timeout, tokio::net::TcpStream::connect((h.host.as_str(), h.port)))
                    .await
                    .map_err(|_| {
                        timeout("TCP connect", o.connect_timeout, " (no answer: a firewall, or the host is down)")
                    })?
                    .map_err(|e| RemoteError::Connect { host: h.host.clone(), port: h.port, source: e })?;
            let _ = stream.set_nodelay(true);
            let mut handle = match tokio::time::timeout(
                o.handshake_timeout,
                client::connect_stream(Arc::new(config), stream, checker),
            )
            .await
            {
                Err(_) => {
                    return Err(timeout(
                        "SSH handshake",
                        o.handshake_timeout,
                        " (the port accepts connections but does not speak SSH, or the host is overloaded)",
                    ));
                }
                Ok(Err(e)) => {
                    if let Some(r) = refusal.locked().take() {
                        return Err(r);
                    }
                    return Err(RemoteError::Ssh {
                        host: h.host.clone(),
                        port: h.port,
                        what: "SSH handshake",
                        source: e,
                    });
                }
                Ok(Ok(handle)) => handle,
            };
            let ssh = |what, source| RemoteError::Ssh { host: h.host.clone(), port: h.port, what, source };
            let auth = async {
                let hash = handle.best_supported_rsa_hash().await.map_err(|e| ssh("authentication", e))?.flatten();
                handle
                    .authenticate_publickey(h.user.clone(), PrivateKeyWithHashAlg::new(private, hash))
                    .await
                    .map_err(|e| ssh("authentication", e))
            };
            let res = tokio::time::timeout(o.auth_timeout, auth)
                .await
                .map_err(|_| timeout("authentication", o.auth_timeout, ""))??;
            if let client::AuthResult::Failure { remaining_methods, .. } = res {
                let remaining: Vec<String> = remaining_methods.iter().map(|m| format!("{m:?}")).collect();
                return Err(RemoteError::AuthFailed {
                    host: h.host.clone(),
                    port: h.port,
                    user: h.user.clone(),
                    key_fingerprint: key_fp,
                    remaining: if remaining.is_empty() { "none".into() } else { remaining.join(", ") },
                });
            }
            Ok(handle)
        };
        let handle = block(rt.handle(), fut).ok_or_else(|| RemoteError::Connect {
            host: host.host.clone(),
            port: host.port,
            source: std::io::Error::other("the SSH runtime stopped"),
        })??;
        let host_key = accepted.locked().take().unwrap_or_default();
        Ok(Session { rt: Some(rt), handle: Arc::new(handle), host: host.clone(), host_key, opts: opts.clone() })
    }

    /// The host this session is connected to.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The fingerprint of the host key that was accepted.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.host_key
    }

    fn rt(&self) -> &tokio::runtime::Handle {
        self.rt.as_ref().expect("runtime present until drop").handle()
    }

    fn ssh_err(&self, what: &'static str) -> impl Fn(russh::Error) -> RemoteError + '_ {
        move |source| RemoteError::Ssh { host: self.host.host.clone(), port: self.host.port, what, source }
    }

    /// Starts `command` (a shell command line on the host: it holds no
    /// secret, since other users may see it) on a new channel.
    ///
    /// # Errors
    /// [`RemoteError::Ssh`], [`RemoteError::Timeout`].
    pub fn exec(&self, command: &str) -> Result<RemoteProcess<'_>, RemoteError> {
        let handle = self.handle.clone();
        let cmd = command.to_string();
        let t = self.opts.request_timeout;
        let opened = block(self.rt(), async move {
            tokio::time::timeout(t, async {
                let ch = handle.channel_open_session().await.map_err(|e| ("opening a channel", e))?;
                ch.exec(true, cmd.into_bytes()).await.map_err(|e| ("starting the command", e))?;
                Ok::<_, (&'static str, russh::Error)>(ch)
            })
            .await
        });
        let ch = match opened {
            None => return Err(self.ssh_err("starting the command")(russh::Error::Disconnect)),
            Some(Err(_)) => {
                return Err(RemoteError::Timeout {
                    host: self.host.host.clone(),
                    port: self.host.port,
                    what: "starting the command",
                    after: t,
                    hint: "",
                });
            }
            Some(Ok(Err((what, e)))) => return Err(self.ssh_err(what)(e)),
            Some(Ok(Ok(ch))) => ch,
        };
        let (read, write) = ch.split();
        let (tx, rx) = mpsc::channel(64);
        let stderr = Arc::new(Mutex::new(Tail::new(self.opts.stderr_tail)));
        let decoder = LineDecoder::new(self.opts.max_line, "processor");
        self.rt().spawn(pump(read, tx, stderr.clone(), decoder));
        Ok(RemoteProcess {
            session: self,
            command: command.to_string(),
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            writer: Arc::new(write),
            stderr,
            ended: Mutex::new(None),
        })
    }

    /// Ends the session politely (waits up to 2 s for the host to hear it).
    pub fn close(mut self) {
        let handle = self.handle.clone();
        let _ = block(self.rt(), async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                handle.disconnect(Disconnect::ByApplication, "done", "en"),
            )
            .await;
        });
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Never blocks: the connection drops with the runtime, and the host
        // closes the session's channels (a worker sees its input end).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What a remote command said.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// One line of its standard output (without the newline).
    Line(Vec<u8>),
    /// The channel closed: the command's exit status or signal, if it sent one.
    Closed {
        /// Exit status.
        status: Option<u32>,
        /// The signal that ended it.
        signal: Option<String>,
    },
}

/// A command running on the host.
pub struct RemoteProcess<'s> {
    session: &'s Session,
    command: String,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Result<Output, ProtocolError>>>>,
    writer: Arc<ChannelWriteHalf<Msg>>,
    stderr: Arc<Mutex<Tail>>,
    ended: Mutex<Option<Output>>,
}

impl std::fmt::Debug for RemoteProcess<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteProcess").field("host", &self.session.host).field("command", &self.command).finish()
    }
}

impl RemoteProcess<'_> {
    /// The command line.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The session it runs in.
    pub fn session(&self) -> &Session {
        self.session
    }

    /// The next line or the end, waiting at most `timeout` (`None` when
    /// nothing came in time). After [`Output::Closed`], returns it again.
    ///
    /// # Errors
    /// [`RemoteError::Protocol`] for a line longer than the bound (the
    /// stream is then unusable: close it).
    pub fn recv(&self, timeout: Duration) -> Result<Option<Output>, RemoteError> {
        if let Some(end) = self.ended.locked().clone() {
            return Ok(Some(end));
        }
        let rx = self.rx.clone();
        let got = block(self.session.rt(), async move {
            let mut rx = rx.lock().await;
            tokio::time::timeout(timeout, rx.recv()).await
        });
        match got {
            Some(Err(_)) => Ok(None),
            Some(Ok(Some(Ok(out)))) => {
                if let Output::Closed { .. } = out {
                    *self.ended.locked() = Some(out.clone());
                }
                Ok(Some(out))
            }
            Some(Ok(Some(Err(e)))) => Err(RemoteError::Protocol { host: self.session.host.to_string(), source: e }),
            // The reader task is gone without a word: the runtime stopped.
            Some(Ok(None)) | None => {
                let end = Output::Closed { status: None, signal: None };
                *self.ended.locked() = Some(end.clone());
                Ok(Some(end))
            }
        }
    }

    /// Writes `data` to the command's standard input (waiting for the SSH
    /// window, at most the request timeout).
    ///
    /// # Errors
    /// [`RemoteError::Ssh`] when the channel is gone, [`RemoteError::Timeout`].
    pub fn send(&self, data: &[u8]) -> Result<(), RemoteError> {
        let w = self.writer.clone();
        let data = bytes::Bytes::copy_from_slice(data);
        let t = self.session.opts.request_timeout;
        match block(self.session.rt(), async move { tokio::time::timeout(t, w.data_bytes(data)).await }) {
            Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(self.session.ssh_err("writing to the command")(e)),
            Some(Err(_)) => Err(RemoteError::Timeout {
                host: self.session.host.host.clone(),
                port: self.session.host.port,
                what: "writing to the command",
                after: t,
                hint: " (the command does not read its input)",
            }),
            None => Err(self.session.ssh_err("writing to the command")(russh::Error::Disconnect)),
        }
    }

    /// Closes the channel: the command's standard input and output end
    /// (waits up to 2 s for the host to hear it).
    pub fn close(&self) {
        let w = self.writer.clone();
        let _ = block(self.session.rt(), async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = w.eof().await;
                let _ = w.close().await;
            })
            .await;
        });
    }

    /// The end of what the command wrote to its standard error (lossy
    /// UTF-8, bounded).
    pub fn stderr_tail(&self) -> String {
        self.stderr.locked().text()
    }
}

/// Reads the channel: lines of standard output into the queue, standard
/// error into its tail, and at the end the exit status.
async fn pump(
    mut read: russh::ChannelReadHalf,
    tx: mpsc::Sender<Result<Output, ProtocolError>>,
    stderr: Arc<Mutex<Tail>>,
    mut dec: LineDecoder,
) {
    let (mut status, mut signal) = (None, None);
    while let Some(msg) = read.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                let mut lines = Vec::new();
                let pushed = dec.push(&data, &mut lines);
                for l in lines {
                    if tx.send(Ok(Output::Line(l))).await.is_err() {
                        return;
                    }
                }
                if let Err(e) = pushed {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => stderr.locked().push(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => signal = Some(format!("{signal_name:?}")),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = tx.send(Ok(Output::Closed { status, signal })).await;
}

/// The last `cap` bytes written.
#[derive(Debug)]
struct Tail {
    buf: std::collections::VecDeque<u8>,
    cap: usize,
}

impl Tail {
    fn new(cap: usize) -> Tail {
        Tail { buf: std::collections::VecDeque::with_capacity(cap.min(64 << 10)), cap }
    }
    fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.cap)..];
        let over = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..over.min(self.buf.len()));
        self.buf.extend(data);
    }
    fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let s = String::from_utf8_lossy(&[a, b].concat()).into_owned();
        s.trim().replace('\n', " | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_tail_keeps_the_end() {
        let mut t = Tail::new(8);
        t.push(b"hello ");
        t.push(b"world\n");
        assert_eq!(t.text(), "o world");
        t.push(b"0123456789abc");
        assert_eq!(t.text(), "56789abc");
    }
}
