//! The local provisioner: processors as network namespaces on this machine,
//! each with its own address from the pool's list and a real OpenSSH
//! server — for users without Xen, and for tests.
//!
//! Per pool, a bridge `alkl<hash>` carries the pool's network; the root
//! namespace holds the bridge address (the pool's `gateway`, else the
//! network's first address) so the orchestrator reaches every processor
//! without routing or NAT. Per processor, a namespace
//! `alk-<orchestrator>-<job>` whose `eth0` (a veth pair to the bridge) has
//! the processor's address, and `sshd -D` inside it with a host key made
//! for this processor alone (the `inject` policy: the key never leaves this
//! machine, and it is the one the orchestrator pins) and the pool's login
//! key in its `authorized_keys`. The file system is shared: attached disks
//! are files (or block devices) here, visible at their own paths.
//!
//! Everything made is named after the orchestrator and the job, so
//! [`LocalProvisioner::sweep`] finds the leftovers of a killed orchestrator
//! by name: it kills what runs in those namespaces, deletes them, and
//! removes their state directories. Needs root, iproute2, OpenSSH's sshd
//! and ssh-keygen.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alike_core::provision::{AttachDisk, Processor, ProcessorRequest, Provisioner, Reachable, SweepReport};

/// Where Debian puts sshd.
const SSHD: &str = "/usr/sbin/sshd";

/// A failure of the local provisioner: the command and what it said.
#[derive(Debug, thiserror::Error)]
#[error("local processor: {what}: {detail}")]
pub struct LocalError {
    what: String,
    detail: String,
}

impl alike_core::SeamError for LocalError {
    fn kind(&self) -> alike_core::ErrorKind {
        alike_core::ErrorKind::Io
    }
    fn retry(&self) -> alike_core::Retry {
        alike_core::Retry::Unknown
    }
    fn code(&self) -> Option<&str> {
        Some("LOCAL_PROVISIONER")
    }
}

fn fail(what: impl Into<String>, detail: impl std::fmt::Display) -> alike_core::Error {
    alike_core::Error::seam(LocalError { what: what.into(), detail: detail.to_string() })
}

fn run(cmd: &mut Command) -> alike_core::Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| fail(&what, e))?;
    if !out.status.success() {
        return Err(fail(what, format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> alike_core::Result<String> {
    run(Command::new("ip").args(args))
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Names made of ids: only `[A-Za-z0-9_]`, others become `_`.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// The namespace name of `job` of `orchestrator` (also its state directory's name).
fn netns_name(orchestrator: &str, job: &str) -> String {
    format!("alk-{}-{}", clean(orchestrator), clean(job))
}

/// How the local provisioner is set up for one pool.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LocalPoolOptions {
    /// The pool's name.
    pub pool: String,
    /// The processors' network prefix length.
    pub prefix: u8,
    /// The root namespace's address on the pool's bridge (default: the
    /// network's first address).
    pub gateway: Option<IpAddr>,
    /// The user the orchestrator logs in as (`root`: sshd allows key login
    /// as root; another user must exist here).
    pub ssh_user: String,
    /// The OpenSSH public key line allowed to log in.
    pub authorized_key: String,
    /// Where processors' files (sshd configuration, host key, log) go
    /// (default: the system's temporary directory, `alike-processors/`).
    pub state_dir: PathBuf,
    /// An address of the pool, to tell the network from.
    pub sample: IpAddr,
}

impl LocalPoolOptions {
    /// Options for pool `pool` whose processors are on `sample`/`prefix`,
    /// letting in the holder of `authorized_key`.
    pub fn new(pool: impl Into<String>, sample: IpAddr, prefix: u8, authorized_key: impl Into<String>) -> Self {
        LocalPoolOptions {
            pool: pool.into(),
            prefix,
            gateway: None,
            ssh_user: "root".into(),
            authorized_key: authorized_key.into(),
            state_dir: std::env::temp_dir().join("alike-processors"),
            sample,
        }
    }
}

/// Processors as network namespaces on this machine (see the module
/// documentation).
#[derive(Debug)]
pub struct LocalProvisioner {
    o: LocalPoolOptions,
    bridge: String,
    tag: String,
}

impl LocalProvisioner {
    /// The provisioner of one pool. Makes the pool's bridge (once; it is
    /// kept for the next run).
    ///
    /// # Errors
    /// Not root, iproute2 or sshd missing, or the bridge could not be made.
    pub fn new(o: LocalPoolOptions) -> alike_core::Result<LocalProvisioner> {
        if !Path::new(SSHD).exists() {
            return Err(fail("local processors", format!("{SSHD} is not installed (package openssh-server)")));
        }
        let tag = blake3::hash(o.pool.as_bytes()).to_hex()[..6].to_string();
        let bridge = format!("alkl{tag}");
        let have = ip(&["-o", "link", "show", "dev", &bridge]).is_ok();
        if !have {
            ip(&["link", "add", &bridge, "type", "bridge"])?;
        }
        let gw = match o.gateway {
            Some(g) => g,
            None => first_of(o.sample, o.prefix),
        };
        let cidr = format!("{gw}/{}", o.prefix);
        let shown = ip(&["-o", "addr", "show", "dev", &bridge])?;
        if !shown.contains(&format!(" {cidr} ")) {
            ip(&["addr", "add", &cidr, "dev", &bridge])?;
        }
        ip(&["link", "set", &bridge, "up"])?;
        std::fs::create_dir_all(&o.state_dir).map_err(|e| fail(format!("creating {}", o.state_dir.display()), e))?;
        Ok(LocalProvisioner { o, bridge, tag })
    }
}

/// The network's first address (its `.1`).
fn first_of(a: IpAddr, prefix: u8) -> IpAddr {
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

/// A processor of a [`LocalProvisioner`].
#[derive(Debug)]
pub struct LocalProcessor {
    job: String,
    netns: String,
    dir: PathBuf,
    address: IpAddr,
    sshd: Option<Child>,
    attached: Vec<PathBuf>,
    torn_down: bool,
}

impl Provisioner for LocalProvisioner {
    fn pool(&self) -> &str {
        &self.o.pool
    }

    fn make(&self, req: &ProcessorRequest) -> alike_core::Result<Box<dyn Processor>> {
        let netns = netns_name(&req.orchestrator, &req.job);
        let dir = self.o.state_dir.join(&netns);
        let p = LocalProcessor {
            job: req.job.clone(),
            netns: netns.clone(),
            dir: dir.clone(),
            address: req.address,
            sshd: None,
            attached: Vec::new(),
            torn_down: false,
        };
        // Any failure below tears down what was made (Drop).
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating {}", dir.display()), e))?;
        ip(&["netns", "add", &netns])?;
        // veth names are at most 15 bytes: the pool's tag and the address's last bits.
        let n = match req.address {
            IpAddr::V4(v) => u32::from(v) & 0xffff,
            IpAddr::V6(v) => (u128::from(v) & 0xffff) as u32,
        };
        let host_end = format!("alh{}{n:x}", self.tag);
        let ns_end = format!("aln{}{n:x}", self.tag);
        ip_quiet(&["link", "del", &host_end]);
        ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end])?;
        ip(&["link", "set", &ns_end, "netns", &netns])?;
        ip(&["link", "set", &host_end, "master", &self.bridge])?;
        ip(&["link", "set", &host_end, "up"])?;
        ip(&["-n", &netns, "link", "set", &ns_end, "name", "eth0"])?;
        ip(&["-n", &netns, "addr", "add", &format!("{}/{}", req.address, req.prefix), "dev", "eth0"])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        // The job id and orchestrator, for a person looking at leftovers.
        std::fs::write(
            dir.join("tags"),
            format!(
                "{}={}\n{}={}\n",
                alike_core::provision::TAG_JOB,
                req.job,
                alike_core::provision::TAG_ORCHESTRATOR,
                req.orchestrator
            ),
        )
        .map_err(|e| fail("writing tags", e))?;
        // The host key: the one the orchestrator made for this processor
        // alone (and pins), else one made here.
        match &req.host_key {
            Some(k) => {
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(dir.join("host_ed25519"))
                    .map_err(|e| fail("writing the host key", e))?;
                f.write_all(k.private_openssh().as_bytes()).map_err(|e| fail("writing the host key", e))?;
                let out = run(Command::new("ssh-keygen").arg("-y").arg("-f").arg(dir.join("host_ed25519")))?;
                std::fs::write(dir.join("host_ed25519.pub"), out).map_err(|e| fail("writing the host key", e))?;
            }
            None => {
                run(Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-C", &format!("alike-processor-{}", req.job), "-N", "", "-f"])
                    .arg(dir.join("host_ed25519")))?;
            }
        }
        std::fs::write(dir.join("authorized_keys"), format!("{}\n", self.o.authorized_key.trim()))
            .map_err(|e| fail("writing authorized_keys", e))?;
        let addr = req.address;
        let config = format!(
            "Port 22\nListenAddress {addr}\nHostKey {hk}\nPidFile none\nAuthorizedKeysFile {ak}\n\
             StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUseDNS no\nPrintMotd no\n\
             AllowUsers {user}\nMaxStartups 100\nMaxSessions 100\nLogLevel VERBOSE\n",
            hk = dir.join("host_ed25519").display(),
            ak = dir.join("authorized_keys").display(),
            user = self.o.ssh_user,
        );
        std::fs::write(dir.join("sshd_config"), config).map_err(|e| fail("writing sshd_config", e))?;
        Ok(Box::new(p))
    }

    fn sweep(&self, orchestrator: &str) -> alike_core::Result<SweepReport> {
        sweep_local(&self.o.state_dir, orchestrator)
    }
}

/// Removes every namespace (and state directory) of `orchestrator`, first
/// killing what runs in it.
pub(crate) fn sweep_local(state_dir: &Path, orchestrator: &str) -> alike_core::Result<SweepReport> {
    let prefix = format!("alk-{}-", clean(orchestrator));
    let mut report = SweepReport::default();
    let listed = ip(&["netns", "list"])?;
    let mut names: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    if let Ok(rd) = std::fs::read_dir(state_dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) && !names.contains(&n) {
                names.push(n);
            }
        }
    }
    for ns in names {
        let job = ns[prefix.len()..].to_string();
        if kill_netns(&ns) > 0 {
            report.removed.push(format!("sshd in {ns} (job {job})"));
        }
        if listed.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())) {
            match ip(&["netns", "del", &ns]) {
                Ok(_) => report.removed.push(format!("netns {ns} (job {job})")),
                Err(e) => report.failed.push(format!("netns {ns}: {e}")),
            }
        }
        let _ = std::fs::remove_dir_all(state_dir.join(&ns));
    }
    Ok(report)
}

/// Kills every process in namespace `ns`; how many there were.
fn kill_netns(ns: &str) -> usize {
    let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
    let pids: Vec<&str> = pids.split_whitespace().collect();
    for p in &pids {
        let _ = Command::new("kill").args(["-KILL", p]).stderr(Stdio::null()).status();
    }
    pids.len()
}

impl LocalProcessor {
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Processor for LocalProcessor {
    fn job(&self) -> &str {
        &self.job
    }
    fn address(&self) -> IpAddr {
        self.address
    }
    fn attach(&mut self, disks: &[AttachDisk]) -> alike_core::Result<Vec<String>> {
        let mut out = Vec::new();
        for d in disks {
            let p = PathBuf::from(&d.id);
            if !p.exists() {
                return Err(fail(format!("attaching {}", p.display()), "no such file or device"));
            }
            self.attached.push(p.clone());
            out.push(p.display().to_string());
        }
        Ok(out)
    }
    fn detach_all(&mut self) -> alike_core::Result<()> {
        self.attached.clear();
        Ok(())
    }
    fn start(&mut self) -> alike_core::Result<Reachable> {
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = std::fs::File::create(self.dir.join("sshd.log")).map_err(|e| fail("creating sshd.log", e))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, SSHD, "-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| fail(format!("starting {SSHD} in {}", self.netns), e))?;
        self.sshd = Some(child);
        let t0 = Instant::now();
        loop {
            if self.log_text().contains("Server listening on") {
                break;
            }
            let exited = self.sshd.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || t0.elapsed() > Duration::from_secs(10) {
                return Err(fail(format!("sshd in {}", self.netns), format!("did not start: {}", self.log_text())));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let fp = run(Command::new("ssh-keygen").arg("-lf").arg(self.dir.join("host_ed25519.pub")))?;
        let fp = fp.split_whitespace().nth(1).map(str::to_string);
        let mut r = Reachable::new(self.address, 22);
        r.host_key_fingerprint = fp;
        Ok(r)
    }
    fn teardown(&mut self) -> alike_core::Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        self.attached.clear();
        kill_netns(&self.netns);
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        ip_quiet(&["netns", "del", &self.netns]);
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

impl Drop for LocalProcessor {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
