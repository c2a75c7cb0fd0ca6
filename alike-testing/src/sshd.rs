//! A real OpenSSH server for tests: `sshd -D -e -f CONFIG` as a child
//! process (not a daemon) on a free port, with its own throwaway host key,
//! a client key in its `authorized_keys`, and a known_hosts file that pins
//! the host key — all in a temporary directory removed with it.
//!
//! It needs `openssh-server` (`/usr/sbin/sshd`) and `ssh-keygen`
//! (`bash scripts/test.sh` installs them). Run as root, sshd lets the
//! client key log in as root (`PermitRootLogin prohibit-password`); as
//! another user, as that user. `StrictModes no` and `UsePAM no` let it run
//! from a temporary directory without the system's configuration.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts sshd.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd. Dropping it stops it (SIGTERM, then SIGKILL) and removes
/// its directory. Sessions it already started end with their connections.
#[derive(Debug)]
pub struct Sshd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The address it listens on.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// The user the client key logs in as.
    pub user: String,
    /// The host key's public line (`ssh-ed25519 AAAA…`).
    pub host_key: String,
    /// The host key's fingerprint (`SHA256:…`).
    pub host_fingerprint: String,
    /// A client private key (no passphrase) in `authorized_keys`.
    pub client_key: PathBuf,
    /// A known_hosts file pinning the host key for `address`:`port`.
    pub known_hosts: PathBuf,
    /// sshd's log (`-e`: its messages on stderr, into this file).
    pub log: PathBuf,
    /// The network namespace it runs in, if any.
    pub netns: Option<String>,
}

/// Why sshd could not be had: the caller skips (or fails under CI).
pub fn unavailable() -> Option<String> {
    if !Path::new(SSHD).exists() {
        return Some(format!("{SSHD} is not installed (package openssh-server; bash scripts/test.sh installs it)"));
    }
    if Command::new("ssh-keygen").arg("-?").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        return Some("ssh-keygen is not installed (package openssh-client)".into());
    }
    None
}

/// Runs a command, panicking with its output when it fails (test setup).
pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes an ed25519 key pair at `path` (and `path.pub`), with `passphrase`
/// (empty: none). Returns the public line.
pub fn keygen(path: &Path, passphrase: &str) -> String {
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-C", "alike-test", "-N", passphrase, "-f"]).arg(path));
    std::fs::read_to_string(path.with_extension("pub")).expect("public key written").trim().to_string()
}

/// A key's SHA-256 fingerprint as `ssh-keygen -l` prints it.
pub fn fingerprint_of(public_key_file: &Path) -> String {
    let out = run(Command::new("ssh-keygen").arg("-lf").arg(public_key_file));
    out.split_whitespace().nth(1).expect("ssh-keygen -l prints a fingerprint").to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn whoami() -> String {
    run(Command::new("id").arg("-un")).trim().to_string()
}

impl Sshd {
    /// Starts sshd on a free loopback port. `None` (after
    /// [`crate::skip`]) when sshd is not installed.
    pub fn start() -> Option<Sshd> {
        if let Some(why) = unavailable() {
            crate::skip(&why);
            return None;
        }
        // The port is free when asked and taken when sshd binds: another
        // process may take it in between, so try again on a bind failure.
        let mut last = String::new();
        for _ in 0..5 {
            match Sshd::start_at(None, "127.0.0.1", free_port()) {
                Ok(s) => return Some(s),
                Err(e) => last = e,
            }
        }
        panic!("sshd did not start: {last}");
    }

    /// Starts sshd at `address`:`port`, inside network namespace `netns`
    /// (via `ip netns exec`) if given.
    ///
    /// # Errors
    /// sshd's log when it did not come up within 10 s.
    pub fn start_at(netns: Option<&str>, address: &str, port: u16) -> Result<Sshd, String> {
        let dir = tempfile::Builder::new().prefix("alike-sshd-").tempdir().expect("a temporary directory");
        let d = dir.path();
        // sshd wants its privilege separation directory (root only).
        let _ = std::fs::create_dir_all("/run/sshd");
        let host_key = keygen(&d.join("host_ed25519"), "");
        let host_fingerprint = fingerprint_of(&d.join("host_ed25519.pub"));
        let client_pub = keygen(&d.join("client_ed25519"), "");
        std::fs::write(d.join("authorized_keys"), format!("{client_pub}\n")).expect("authorized_keys");
        let pattern = if port == 22 { address.to_string() } else { format!("[{address}]:{port}") };
        std::fs::write(d.join("known_hosts"), format!("{pattern} {host_key}\n")).expect("known_hosts");
        let config = format!(
            "Port {port}\nListenAddress {address}\nHostKey {hk}\nPidFile none\nAuthorizedKeysFile {ak}\n\
             StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUseDNS no\nPrintMotd no\n\
             MaxStartups 100\nMaxSessions 100\nLogLevel VERBOSE\n",
            hk = d.join("host_ed25519").display(),
            ak = d.join("authorized_keys").display(),
        );
        std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
        let log = d.join("sshd.log");
        let log_file = std::fs::File::create(&log).expect("sshd.log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        cmd.arg("-D").arg("-e").arg("-f").arg(d.join("sshd_config"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting {SSHD}: {e}"))?;
        let mut s = Sshd {
            child: Some(child),
            address: address.to_string(),
            port,
            user: whoami(),
            host_key,
            host_fingerprint,
            client_key: d.join("client_ed25519"),
            known_hosts: d.join("known_hosts"),
            log,
            netns: netns.map(str::to_string),
            dir,
        };
        let t0 = Instant::now();
        loop {
            let text = s.log_text();
            if text.contains("Server listening on") {
                return Ok(s);
            }
            let exited = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("sshd at {address}:{port} did not come up ({exited:?}): {text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory holding its files (a place for more keys).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `user@address:port` for `alike … --via`.
    pub fn destination(&self) -> String {
        format!("{}@{}:{}", self.user, self.address, self.port)
    }

    /// What sshd logged so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Stops it now.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::sshd::terminate(&mut c);
        }
    }
}

/// SIGTERM, up to 2 s, then SIGKILL; reaps the child.
pub(crate) fn terminate(c: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}
