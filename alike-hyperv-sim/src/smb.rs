//! The host's administrative share, served by a real Samba `smbd` that the
//! simulator starts as its child: a private `smb.conf`, private state,
//! lock, cache and log folders and a private `tdbsam` password database,
//! all under `STATE/smb`, listening on the WS-Man listener's address and a
//! port of its own. The client's user name is mapped (`username map`) to
//! the Unix account the simulator runs as, whose entry in the private
//! database carries the given password; nothing system-wide is touched.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// A running `smbd`; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub(crate) struct Smbd {
    child: Child,
    pub(crate) addr: SocketAddr,
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn unix_user() -> Result<String> {
    let out = Command::new("id").arg("-un").output().map_err(|e| Error::Smb(format!("running id -un: {e}")))?;
    let u = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if u.is_empty() { Err(Error::Smb("cannot tell the Unix user (id -un)".into())) } else { Ok(u) }
}

fn free_port(ip: IpAddr) -> Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0))
        .map_err(|source| Error::Net { what: "finding a free port for smbd".into(), source })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Net { what: "finding a free port for smbd".into(), source })
}

impl Smbd {
    /// Writes the configuration, sets the password and starts `smbd`,
    /// waiting (up to 15 s) until it accepts connections.
    pub(crate) fn start(
        state: &Path,
        share: &str,
        share_dir: &Path,
        ip: IpAddr,
        port: u16,
        user: &str,
        password: &str,
    ) -> Result<Smbd> {
        let smbd =
            find_tool("smbd").ok_or_else(|| Error::Smb("smbd is not installed (Debian package samba)".into()))?;
        let smbpasswd = find_tool("smbpasswd")
            .ok_or_else(|| Error::Smb("smbpasswd is not installed (Debian package samba-common-bin)".into()))?;
        if user.chars().any(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(c))) {
            return Err(Error::Smb(format!("user name {user:?}: only letters, digits, '-', '_' and '.' are allowed")));
        }
        let dir = state.join("smb");
        for d in ["private", "lock", "state", "cache", "pid", "ncalrpc", "log"] {
            std::fs::create_dir_all(dir.join(d)).map_err(Error::io(dir.join(d)))?;
        }
        let dir = std::fs::canonicalize(&dir).map_err(Error::io(&dir))?;
        let share_dir = std::fs::canonicalize(share_dir).map_err(Error::io(share_dir))?;
        let port = if port == 0 { free_port(ip)? } else { port };
        let unix = unix_user()?;
        let map = dir.join("usermap");
        std::fs::write(&map, format!("{unix} = {user}\n")).map_err(Error::io(&map))?;
        let d = |s: &str| dir.join(s).display().to_string();
        let conf = format!(
            "[global]\n  server role = standalone server\n  workgroup = WORKGROUP\n  netbios name = HV-SIM-01\n  passdb backend = tdbsam:{}\n  private dir = {}\n  lock directory = {}\n  state directory = {}\n  cache directory = {}\n  pid directory = {}\n  ncalrpc dir = {}\n  log file = {}\n  max log size = 1000\n  interfaces = {ip}\n  bind interfaces only = yes\n  smb ports = {port}\n  disable netbios = yes\n  load printers = no\n  printing = bsd\n  printcap name = /dev/null\n  disable spoolss = yes\n  username map = {}\n  server min protocol = SMB2_10\n  map to guest = never\n  restrict anonymous = 2\n\n[{share}]\n  path = {}\n  read only = no\n  browseable = no\n  valid users = {unix}\n",
            d("private/passdb.tdb"),
            d("private"),
            d("lock"),
            d("state"),
            d("cache"),
            d("pid"),
            d("ncalrpc"),
            d("log/smbd.log"),
            map.display(),
            share_dir.display()
        );
        let conf_path = dir.join("smb.conf");
        std::fs::write(&conf_path, conf).map_err(Error::io(&conf_path))?;
        // The password goes on stdin, never on a command line.
        let mut p = Command::new(smbpasswd)
            .arg("-c")
            .arg(&conf_path)
            .args(["-s", "-a"])
            .arg(&unix)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Smb(format!("running smbpasswd: {e}")))?;
        if let Some(mut i) = p.stdin.take() {
            let _ = writeln!(i, "{password}\n{password}");
        }
        let out = p.wait_with_output().map_err(|e| Error::Smb(format!("smbpasswd: {e}")))?;
        if !out.status.success() {
            return Err(Error::Smb(format!("smbpasswd failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        let log = std::fs::File::create(dir.join("log/smbd.out")).map_err(Error::io(dir.join("log/smbd.out")))?;
        let log2 = log.try_clone().map_err(Error::io(dir.join("log/smbd.out")))?;
        // smbd signals its whole process group when it stops: give it a
        // group of its own, or it would take the simulator (and a test
        // process hosting it) down with it.
        let child = Command::new(smbd)
            .process_group(0)
            .args(["--foreground", "--no-process-group", "--debug-stdout", "--configfile"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::Smb(format!("starting smbd: {e}")))?;
        let mut s = Smbd { child, addr: SocketAddr::new(ip, port) };
        let t0 = Instant::now();
        loop {
            if TcpStream::connect_timeout(&s.addr, Duration::from_millis(200)).is_ok() {
                return Ok(s);
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(Error::Smb(format!("smbd exited ({st}); see {}", dir.join("log").display())));
            }
            if t0.elapsed() > Duration::from_secs(15) {
                return Err(Error::Smb(format!(
                    "smbd did not listen on {} within 15 s; see {}",
                    s.addr,
                    dir.join("log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Smbd {
    fn drop(&mut self) {
        // SIGTERM lets smbd end its per-connection children too.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
