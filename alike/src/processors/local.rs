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
use std::process::Child;
use std::time::Duration;

use alike_core::provision::{AttachDisk, Processor, ProcessorRequest, Provisioner, Reachable, SweepReport};
use alike_netns::{NamespaceSpec, SSHD, SshdConfig};

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

/// An alike-netns failure, as the local provisioner's.
fn ns_err(what: &str) -> impl FnOnce(alike_netns::Error) -> alike_core::Error + '_ {
    move |e| fail(what, e)
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
        let gw = o.gateway.unwrap_or_else(|| alike_netns::first_address(o.sample, o.prefix));
        alike_netns::ensure_bridge(&bridge, gw, o.prefix).map_err(ns_err("the pool's bridge"))?;
        std::fs::create_dir_all(&o.state_dir).map_err(|e| fail(format!("creating {}", o.state_dir.display()), e))?;
        Ok(LocalProvisioner { o, bridge, tag })
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
        // veth names are at most 15 bytes: the pool's tag and the address's last bits.
        let n = match req.address {
            IpAddr::V4(v) => u32::from(v) & 0xffff,
            IpAddr::V6(v) => (u128::from(v) & 0xffff) as u32,
        };
        let spec = NamespaceSpec::new(
            &netns,
            &self.bridge,
            format!("alh{}{n:x}", self.tag),
            format!("aln{}{n:x}", self.tag),
            req.address,
            req.prefix,
        );
        alike_netns::add_namespace(&spec).map_err(ns_err("making the processor's namespace"))?;
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
        let host_key = dir.join("host_ed25519");
        match &req.host_key {
            Some(k) => alike_netns::install_key(&host_key, k.private_openssh()).map_err(ns_err("the host key"))?,
            None => alike_netns::keygen(&host_key, &format!("alike-processor-{}", req.job))
                .map_err(ns_err("making a host key"))?,
        }
        std::fs::write(dir.join("authorized_keys"), format!("{}\n", self.o.authorized_key.trim()))
            .map_err(|e| fail("writing authorized_keys", e))?;
        let config = SshdConfig::new(req.address, &host_key, &dir.join("authorized_keys"), &self.o.ssh_user).render();
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
    let listed = alike_netns::namespaces().map_err(ns_err("listing namespaces"))?;
    let mut names: Vec<String> = listed.iter().filter(|n| n.starts_with(&prefix)).cloned().collect();
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
        if alike_netns::kill_all(&ns) > 0 {
            report.removed.push(format!("sshd in {ns} (job {job})"));
        }
        if listed.contains(&ns) {
            match alike_netns::delete_namespace(&ns) {
                Ok(_) => report.removed.push(format!("netns {ns} (job {job})")),
                Err(e) => report.failed.push(format!("netns {ns}: {e}")),
            }
        }
        let _ = std::fs::remove_dir_all(state_dir.join(&ns));
    }
    Ok(report)
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
        let child = alike_netns::start_sshd(
            &self.netns,
            &self.dir.join("sshd_config"),
            &self.dir.join("sshd.log"),
            None,
            Duration::from_secs(10),
        )
        .map_err(ns_err("starting the processor's sshd"))?;
        self.sshd = Some(child);
        let fp = alike_netns::fingerprint(&self.dir.join("host_ed25519.pub")).map_err(ns_err("the host key"))?;
        let mut r = Reachable::new(self.address, 22);
        r.host_key_fingerprint = Some(fp);
        Ok(r)
    }
    fn teardown(&mut self) -> alike_core::Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        self.attached.clear();
        alike_netns::kill_all(&self.netns);
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        alike_netns::ip_quiet(&["netns", "del", &self.netns]);
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

impl Drop for LocalProcessor {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
