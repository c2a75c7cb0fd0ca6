//! `alike-xapi-sim`: serves a simulated XenServer/XCP-ng pool (XAPI over
//! XML-RPC and JSON-RPC, disk export/import, NBD) until stopped.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use alike_xen_sim::{BootProcessors, DEFAULT_PASSWORD, SimConfig, Simulator};
use anyhow::Context as _;
use clap::Parser;

/// A protocol-level XAPI simulator for testing XenServer/XCP-ng clients.
#[derive(Debug, Parser)]
#[command(name = "alike-xapi-sim", version)]
struct Args {
    /// Address of the XAPI (HTTP or HTTPS) listener; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// State directory (objects, disk layers, certificate); kept across runs.
    #[arg(long)]
    state: PathBuf,
    /// Create the demo pool when the state is empty.
    #[arg(long)]
    demo: bool,
    /// Password of user `root`.
    #[arg(long, default_value = DEFAULT_PASSWORD, env = "ALIKE_XAPI_SIM_PASSWORD")]
    password: String,
    /// Serve HTTPS (self-signed certificate in STATE/xapi-ssl.pem); the demo
    /// network then has NBD purpose `nbd` (TLS forced).
    #[arg(long)]
    tls: bool,
    /// Also act as a pool supporter on this address (same port): logins there
    /// fail with HOST_IS_SLAVE naming the coordinator.
    #[arg(long)]
    slave: Option<IpAddr>,
    /// NBD port (XAPI uses 10809; 0 picks a free one).
    #[arg(long, default_value_t = 0)]
    nbd_port: u16,
    /// Accept NBD_OPT_GO/INFO (xapi-nbd does not).
    #[arg(long)]
    nbd_go: bool,
    /// Seconds of inactivity after which a session expires.
    #[arg(long, default_value_t = 86_400)]
    session_timeout: u64,
    /// Starting a processor VM (one whose xenstore_data holds
    /// vm-data/alike/address) starts a local processor running this `alike`
    /// binary: a network namespace with sshd at the VM's address, its disks
    /// at /dev/xvdX (needs root; see README.md).
    #[arg(long, value_name = "ALIKE", requires = "authorized_keys")]
    boot_processors: Option<PathBuf>,
    /// The booted processors' authorized_keys file (what the template holds).
    #[arg(long, value_name = "FILE")]
    authorized_keys: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut cfg = SimConfig::new(&a.state)
        .listen(a.listen)
        .password(&a.password)
        .tls(a.tls)
        .demo(a.demo)
        .nbd_port(a.nbd_port)
        .nbd_go(a.nbd_go)
        .session_timeout(std::time::Duration::from_secs(a.session_timeout));
    if let Some(ip) = a.slave {
        cfg = cfg.slave_ip(ip);
    }
    if let (Some(alike), Some(keys)) = (&a.boot_processors, &a.authorized_keys) {
        let keys = std::fs::read_to_string(keys).with_context(|| format!("reading {}", keys.display()))?;
        cfg = cfg.boot_processors(BootProcessors::new(alike, keys));
    }
    let sim = Simulator::start(cfg).with_context(|| format!("starting the simulator in {}", a.state.display()))?;
    println!("alike-xapi-sim serving XAPI at {}", sim.url());
    println!("  JSON-RPC at {}jsonrpc, XML-RPC at {}", sim.url(), sim.url());
    println!("  user root, password {}", if a.password == DEFAULT_PASSWORD { DEFAULT_PASSWORD } else { "(as given)" });
    println!("  NBD at {}", sim.nbd_addr());
    if let Some(s) = sim.slave_url() {
        println!("  pool supporter at {s}");
    }
    println!("  state in {}", a.state.display());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    sim.shutdown();
    Ok(())
}
