//! # alike-netns
//!
//! Local processors: Linux network namespaces on a bridge, each with its own
//! address on a veth pair and a real OpenSSH server inside — hosts as far as
//! the network can tell. alike's local provisioner, the XAPI simulator's
//! booted processor VMs and the test helpers are built on it.
//!
//! - [`ensure_bridge`]: a bridge in the root namespace holding an address of
//!   the processors' network, so the root namespace reaches every processor
//!   without routing or NAT (the root namespace's routes are untouched).
//! - [`add_namespace`]: a namespace whose `eth0` (one end of a veth pair,
//!   the other end on the bridge) has the processor's address, loopback up.
//! - [`SshdConfig`] and [`start_sshd`]: `sshd -D -e` inside the namespace,
//!   waited for until it listens; with a *private `/dev`* (a directory that
//!   the server's mount namespace sees as `/dev`: the usual character
//!   devices bound in, nothing else), [`plug_device`] binds a file at a
//!   device path only that server and its sessions see (read-only when
//!   asked) — how a simulated guest sees its disks at `/dev/xvdb`.
//! - [`delete_namespace`]: kills what runs in a namespace and deletes it
//!   (the veth pair goes with it).
//!
//! The file system is otherwise shared with the root namespace. Everything
//! here drives iproute2, OpenSSH and util-linux (`ip`, `sshd`,
//! `ssh-keygen`, `nsenter`, `mount`) and needs root. No crate of ours is a
//! dependency: the layering check keeps it so.

use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts sshd.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A failure: the command (or file) and what it said.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command failed or could not run.
    #[error("{what}: {detail}")]
    Command {
        /// The command.
        what: String,
        /// Its exit status and standard error, or why it did not run.
        detail: String,
    },
    /// A file could not be written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was done, naming the file.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// This crate's results.
pub type Result<T> = std::result::Result<T, Error>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Runs `cmd` (standard input closed) and returns its standard output.
///
/// # Errors
/// [`Error::Command`] when it cannot start or exits unsuccessfully (its
/// standard error in the message).
pub fn run(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out =
        cmd.stdin(Stdio::null()).output().map_err(|e| Error::Command { what: what.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(Error::Command {
            what,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS…`.
///
/// # Errors
/// As [`run`].
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// `ip ARGS…`, its failure ignored (removing what may already be gone).
pub fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Why local processors cannot run here (not root, no `ip netns`, no
/// sshd), or `None` when they can.
pub fn unavailable() -> Option<String> {
    if !Path::new(SSHD).exists() {
        return Some(format!("{SSHD} is not installed (package openssh-server)"));
    }
    let root = run(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0");
    if !root || ip(&["netns", "list"]).is_err() {
        return Some("network namespaces need root and iproute2 (`ip netns`)".into());
    }
    None
}

/// The names of the network namespaces that exist now.
///
/// # Errors
/// As [`run`].
pub fn namespaces() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

/// The names of the links of `kind` (`bridge`, `veth`…) in the root namespace.
///
/// # Errors
/// As [`run`].
pub fn links(kind: &str) -> Result<Vec<String>> {
    Ok(ip(&["-o", "link", "show", "type", kind])?
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .collect())
}

/// Makes bridge `name` unless it exists, gives it `address/prefix` unless
/// it has it, and brings it up.
///
/// # Errors
/// As [`run`].
pub fn ensure_bridge(name: &str, address: IpAddr, prefix: u8) -> Result<()> {
    if ip(&["-o", "link", "show", "dev", name]).is_err() {
        ip(&["link", "add", name, "type", "bridge"])?;
    }
    let cidr = format!("{address}/{prefix}");
    if !ip(&["-o", "addr", "show", "dev", name])?.contains(&format!(" {cidr} ")) {
        ip(&["addr", "add", &cidr, "dev", name])?;
    }
    ip(&["link", "set", name, "up"])?;
    Ok(())
}

/// Deletes link `name` (a bridge, a veth end), if it exists.
pub fn delete_link(name: &str) {
    ip_quiet(&["link", "del", name]);
}

/// The network's first address (its `.1`): where a bridge sits by default.
pub fn first_address(a: IpAddr, prefix: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            IpAddr::V4(((u32::from(v) & mask) + 1).into())
        }
        IpAddr::V6(v) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            IpAddr::V6(((u128::from(v) & mask) + 1).into())
        }
    }
}

/// One namespace on a bridge: what [`add_namespace`] makes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NamespaceSpec {
    /// The namespace's name.
    pub netns: String,
    /// The bridge its veth pair joins.
    pub bridge: String,
    /// The root namespace's end of the pair (at most 15 bytes).
    pub host_end: String,
    /// The namespace's end, before it is renamed `eth0` (at most 15 bytes).
    pub ns_end: String,
    /// The namespace's address on `eth0`.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
}

impl NamespaceSpec {
    /// Namespace `netns` at `address/prefix` on `bridge`, its veth ends
    /// named `host_end` and `ns_end`.
    pub fn new(
        netns: impl Into<String>,
        bridge: impl Into<String>,
        host_end: impl Into<String>,
        ns_end: impl Into<String>,
        address: IpAddr,
        prefix: u8,
    ) -> NamespaceSpec {
        NamespaceSpec {
            netns: netns.into(),
            bridge: bridge.into(),
            host_end: host_end.into(),
            ns_end: ns_end.into(),
            address,
            prefix,
        }
    }
}

/// Makes the namespace `s` describes: `ip netns add`, a veth pair with one
/// end on the bridge and the other as the namespace's `eth0` at the
/// address, loopback up. On failure the namespace is deleted again.
///
/// # Errors
/// As [`run`], naming the step.
pub fn add_namespace(s: &NamespaceSpec) -> Result<()> {
    ip(&["netns", "add", &s.netns])?;
    let r = (|| {
        // A pair a killed run left under this name would make `add` fail.
        ip_quiet(&["link", "del", &s.host_end]);
        ip(&["link", "add", &s.host_end, "type", "veth", "peer", "name", &s.ns_end])?;
        ip(&["link", "set", &s.ns_end, "netns", &s.netns])?;
        ip(&["link", "set", &s.host_end, "master", &s.bridge])?;
        ip(&["link", "set", &s.host_end, "up"])?;
        let n = s.netns.as_str();
        ip(&["-n", n, "link", "set", &s.ns_end, "name", "eth0"])?;
        ip(&["-n", n, "addr", "add", &format!("{}/{}", s.address, s.prefix), "dev", "eth0"])?;
        ip(&["-n", n, "link", "set", "eth0", "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        Ok(())
    })();
    if r.is_err() {
        ip_quiet(&["netns", "del", &s.netns]);
        ip_quiet(&["link", "del", &s.host_end]);
    }
    r
}

/// The processes running in namespace `ns`.
pub fn pids(ns: &str) -> Vec<u32> {
    ip(&["netns", "pids", ns]).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Kills (SIGKILL) every process in namespace `ns`; how many there were.
pub fn kill_all(ns: &str) -> usize {
    let pids = pids(ns);
    for p in &pids {
        let _ = Command::new("kill").args(["-KILL", &p.to_string()]).stderr(Stdio::null()).status();
    }
    pids.len()
}

/// Kills what runs in namespace `ns` and deletes it (its veth pair goes
/// with it); how many processes were killed.
///
/// # Errors
/// As [`run`] (`ip netns del`).
pub fn delete_namespace(ns: &str) -> Result<usize> {
    let killed = kill_all(ns);
    ip(&["netns", "del", ns])?;
    Ok(killed)
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a name `<prefix><pid>…` (names that carry their maker's pid,
/// so that a later run removes what a killed one left).
pub fn owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Makes an Ed25519 key pair without passphrase at `path` and `path.pub`.
///
/// # Errors
/// As [`run`] (`ssh-keygen`).
pub fn keygen(path: &Path, comment: &str) -> Result<()> {
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-C", comment, "-N", "", "-f"]).arg(path))?;
    Ok(())
}

/// Writes an OpenSSH private key (mode 0600, a new file) and its public
/// half (`path.pub`, `ssh-keygen -y`).
///
/// # Errors
/// [`Error::Io`] when the file exists or cannot be written; as [`run`].
pub fn install_key(path: &Path, private_openssh: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let what = || format!("writing the key {}", path.display());
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(what()))?;
    f.write_all(private_openssh.as_bytes()).map_err(io(what()))?;
    drop(f);
    let public = run(Command::new("ssh-keygen").arg("-y").arg("-f").arg(path))?;
    let p = pub_path(path);
    std::fs::write(&p, public).map_err(io(format!("writing {}", p.display())))
}

fn pub_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// The SHA-256 fingerprint (`SHA256:…`) of the public key in `public_key_file`.
///
/// # Errors
/// As [`run`] (`ssh-keygen -l`); [`Error::Command`] when it prints none.
pub fn fingerprint(public_key_file: &Path) -> Result<String> {
    let out = run(Command::new("ssh-keygen").arg("-lf").arg(public_key_file))?;
    out.split_whitespace().nth(1).map(str::to_string).ok_or_else(|| Error::Command {
        what: format!("ssh-keygen -lf {}", public_key_file.display()),
        detail: "printed no fingerprint".into(),
    })
}

/// An sshd configuration for a processor: key login only, one user.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SshdConfig {
    /// The address it listens at.
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
    /// The host key (private; the public half at `…pub`).
    pub host_key: PathBuf,
    /// The `authorized_keys` file.
    pub authorized_keys: PathBuf,
    /// The one user allowed in (`root`: key login as root is allowed).
    pub user: String,
    /// Environment variables set for every session (`SetEnv`), e.g. `PATH`.
    pub set_env: Vec<(String, String)>,
}

impl SshdConfig {
    /// sshd at `address:22` with `host_key`, letting `user` in by a key in
    /// `authorized_keys`.
    pub fn new(address: IpAddr, host_key: &Path, authorized_keys: &Path, user: &str) -> SshdConfig {
        SshdConfig {
            address,
            port: 22,
            host_key: host_key.to_owned(),
            authorized_keys: authorized_keys.to_owned(),
            user: user.into(),
            set_env: Vec::new(),
        }
    }

    /// The `sshd_config` text.
    pub fn render(&self) -> String {
        let listen = match self.address {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        let mut s = format!(
            "Port {port}\nListenAddress {listen}\nHostKey {hk}\nPidFile none\nAuthorizedKeysFile {ak}\n\
             StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUseDNS no\nPrintMotd no\n\
             AllowUsers {user}\nMaxStartups 100\nMaxSessions 100\nLogLevel VERBOSE\n",
            port = self.port,
            hk = self.host_key.display(),
            ak = self.authorized_keys.display(),
            user = self.user,
        );
        if !self.set_env.is_empty() {
            let vars: Vec<String> = self.set_env.iter().map(|(k, v)| format!("\"{k}={v}\"")).collect();
            s += &format!("SetEnv {}\n", vars.join(" "));
        }
        s
    }
}

/// The character devices a private `/dev` gets from the real one.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The script that makes `$1` the mount namespace's `/dev` and then runs
/// the rest of its arguments. `ip netns exec` has already given the command
/// a mount namespace of its own (with `/` a slave), so nothing here is seen
/// outside it.
fn private_dev_script() -> String {
    let mut s = String::from("set -e\nD=\"$1\"\nshift\n");
    for d in DEVICES {
        s += &format!(": > \"$D/{d}\"\nmount --bind /dev/{d} \"$D/{d}\"\n");
    }
    s += "mkdir -p \"$D/pts\" \"$D/shm\"\nmount --bind /dev/pts \"$D/pts\"\nmount --bind /dev/shm \"$D/shm\"\n";
    s += "ln -sfn /proc/self/fd \"$D/fd\"\nln -sfn /proc/self/fd/0 \"$D/stdin\"\n";
    s += "ln -sfn /proc/self/fd/1 \"$D/stdout\"\nln -sfn /proc/self/fd/2 \"$D/stderr\"\nln -sfn pts/ptmx \"$D/ptmx\"\n";
    s += "mount --rbind \"$D\" /dev\nexec \"$@\"\n";
    s
}

/// Starts `sshd -D -e -f CONFIG` inside namespace `netns`, its log in
/// `log`, and waits (up to `timeout`) until it listens. With `private_dev`
/// (an empty directory), the server's mount namespace sees that directory
/// as `/dev` (see the crate documentation and [`plug_device`]). The child's
/// pid is the server's.
///
/// # Errors
/// It cannot start, exits, or does not listen in time (its log in the
/// message).
pub fn start_sshd(
    netns: &str,
    config: &Path,
    log: &Path,
    private_dev: Option<&Path>,
    timeout: Duration,
) -> Result<Child> {
    let _ = std::fs::create_dir_all("/run/sshd");
    let out = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]);
    if let Some(d) = private_dev {
        std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
        cmd.args(["sh", "-c", &private_dev_script(), "sh"]).arg(d);
    }
    cmd.args([SSHD, "-D", "-e", "-f"]).arg(config);
    let what = format!("sshd in namespace {netns}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .map_err(|e| Error::Command { what: what.clone(), detail: e.to_string() })?;
    let read_log = || {
        let mut s = String::new();
        let _ = std::fs::File::open(log).and_then(|mut f| f.read_to_string(&mut s));
        s
    };
    let t0 = Instant::now();
    loop {
        if read_log().contains("Server listening on") {
            return Ok(child);
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Command { what, detail: format!("did not start: {}", read_log().trim()) });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Binds `file` at `device` (a path inside the private `/dev` of the sshd
/// whose pid is `pid`, e.g. `/dev/xvdb`), read-only when asked; only that
/// server and its sessions see it. `dev_dir` is the directory that server
/// sees as `/dev` (the mount point is made there).
///
/// # Errors
/// As [`run`] (`nsenter … mount`).
pub fn plug_device(pid: u32, dev_dir: &Path, device: &str, file: &Path, read_only: bool) -> Result<()> {
    let name = device.strip_prefix("/dev/").unwrap_or(device);
    let point = dev_dir.join(name);
    std::fs::File::create(&point).map_err(io(format!("creating {}", point.display())))?;
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &pid.to_string(), "-m", "--", "mount", "--bind"]);
    if read_only {
        cmd.args(["-o", "ro"]);
    }
    cmd.arg(file).arg(format!("/dev/{name}"));
    run(&mut cmd)?;
    Ok(())
}

/// Unbinds `device` from the private `/dev` of the sshd whose pid is `pid`
/// (lazily: a process that still has it open keeps reading what it had),
/// and removes its mount point from `dev_dir`.
pub fn unplug_device(pid: u32, dev_dir: &Path, device: &str) {
    let name = device.strip_prefix("/dev/").unwrap_or(device);
    let _ = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--", "umount", "-l", &format!("/dev/{name}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_file(dev_dir.join(name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_address_owner_and_config() {
        assert_eq!(first_address("10.7.3.99".parse().unwrap(), 24), "10.7.3.1".parse::<IpAddr>().unwrap());
        assert_eq!(first_address("fd00::9".parse().unwrap(), 64), "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(owner("axs1234d5", "axs"), Some(1234));
        assert_eq!(owner("other", "axs"), None);
        let mut c = SshdConfig::new("10.1.2.3".parse().unwrap(), Path::new("/k"), Path::new("/a"), "root");
        c.set_env.push(("PATH".into(), "/x/bin:/usr/bin".into()));
        let t = c.render();
        assert!(t.contains("ListenAddress 10.1.2.3\n") && t.contains("SetEnv \"PATH=/x/bin:/usr/bin\"\n"), "{t}");
    }
}
