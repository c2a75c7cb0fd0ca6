//! `alike-hyperv-sim`: serves a simulated Hyper-V host (WS-Management with
//! NTLM and message encryption, and its disks over SMB through a private
//! `smbd`) until stopped (Ctrl-C or SIGTERM).

use std::net::SocketAddr;
use std::path::PathBuf;

use alike_hyperv_sim::{SHARE, SimConfig, Simulator};
use anyhow::Context as _;
use clap::Parser;

/// A Hyper-V host simulator for testing WS-Management/WMI clients.
#[derive(Debug, Parser)]
#[command(name = "alike-hyperv-sim", version)]
struct Args {
    /// Address of the WS-Management (HTTP) listener; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:5985")]
    listen: SocketAddr,
    /// State directory: `C/` is the host's C: drive (made anew at each start), `smb/` Samba's files.
    #[arg(long)]
    state: PathBuf,
    /// Create the demo VMs (web-01 with two disks, db-01) and serve their folder over SMB.
    #[arg(long)]
    demo: bool,
    /// The account's user name (NTLM and SMB).
    #[arg(long, default_value = "Administrator")]
    user: String,
    /// The account's password (a test tool: it may be an argument).
    #[arg(long, default_value = "alike")]
    password: String,
    /// SMB port of the host's share (0: a free one); with --demo, a free one by default.
    #[arg(long)]
    smb_port: Option<u16>,
    /// Serve HTTPS (as WinRM's 5986 listener) with a self-signed certificate kept in STATE/tls/cert.pem.
    #[arg(long)]
    tls: bool,
    /// With --demo: web-01's first disk is this many MiB of dense data (throughput measurements).
    #[arg(long, value_name = "MIB")]
    demo_os_mib: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let smb = a.smb_port.or(if a.demo { Some(0) } else { None });
    let cfg = SimConfig::new(&a.state)
        .listen(a.listen)
        .credentials(&a.user, &a.password)
        .demo(a.demo)
        .smb_port(smb)
        .tls(a.tls);
    let mut cfg = cfg;
    cfg.demo_os_mib = a.demo_os_mib.filter(|m| *m > 0);
    let sim = Simulator::start(cfg).with_context(|| format!("starting the simulator in {}", a.state.display()))?;
    println!("alike-hyperv-sim serving WS-Management at {}", sim.url());
    match sim.tls_fingerprint() {
        Some(fp) => println!("  user {} (Basic or NTLM over TLS); certificate SHA-256 {fp}", a.user),
        None => println!("  user {} (NTLM with message encryption)", a.user),
    }
    if let Some(s) = sim.smb_addr() {
        println!("  SMB share //{}/{SHARE} on port {} (smbd; the same user and password)", s.ip(), s.port());
    }
    println!("  host drive C: at {}", sim.c_drive().display());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the signal handler")?;
    let _ = rx.recv();
    sim.shutdown();
    Ok(())
}
