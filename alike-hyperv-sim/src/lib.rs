//! # alike-hyperv-sim
//!
//! A Hyper-V host simulator, for testing the Hyper-V adapter without
//! Windows. It speaks what a Hyper-V host speaks to an agentless backup
//! engine, on loopback:
//!
//! - **WS-Management** (WinRM) at `http://ADDR:PORT/wsman`: SOAP 1.2,
//!   Identify, Enumerate/Pull/Release with WQL filters (`SELECT … FROM …
//!   WHERE …`, `ASSOCIATORS OF {…} WHERE AssocClass = … ResultClass = …`)
//!   and the DMTF association filter, Get by selector set, and method
//!   invocation with EPR and embedded-instance arguments; SOAP faults with
//!   WinRM's `WSManFault` detail and WMI's `WBEM_E_*` codes.
//! - **Authentication** as Windows ships it: `Negotiate` with NTLMv2 over
//!   HTTP, every message sealed with the NTLM session
//!   (`multipart/encrypted`, `application/HTTP-SPNEGO-session-encrypted`);
//!   unencrypted SOAP and Basic are refused.
//! - **`root\virtualization\v2`**: `Msvm_ComputerSystem` (the host and its
//!   VMs), `Msvm_VirtualSystemSettingData` (realized and checkpoints),
//!   processor, memory, controller, drive, `Msvm_StorageAllocationSettingData`
//!   and NIC settings, `Msvm_VirtualEthernetSwitch`,
//!   `Msvm_VirtualSystemReferencePoint`, `Msvm_ConcreteJob`, the services,
//!   and their associations; `CreateSnapshot` (standard and recovery
//!   checkpoints, returning 4096 and a job), `DestroySnapshot`,
//!   `ConvertToReferencePoint`, `DestroyReferencePoint` and
//!   `GetVirtualDiskChanges` (RCT).
//! - **Disks**: real VHDX/AVHDX chains (alike-formats' writer) under
//!   `STATE/C`, the host's `C:` drive, which a real Samba `smbd` (started
//!   and stopped by the simulator) shares as `C$` with the same user and
//!   password.
//! - **Test API**: [`Simulator::guest_write`] (a guest writes: data and
//!   RCT), [`Simulator::reset_rct`], [`Simulator::fail_next_job`], power
//!   and VSS switches, and [`Simulator::handle_soap`] (a SOAP message in
//!   process, without HTTP or NTLM).
//!
//! It shares no code with the client in `alike-hyperv` (its SOAP, WQL and
//! NTLM are its own); pywinrm and smbclient prove it in the test command.
//! What it models and what a real host may do differently: `README.md`.
//!
//! ```no_run
//! use alike_hyperv_sim::{SimConfig, Simulator};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let sim = Simulator::start(SimConfig::new(dir.path()).demo(true).smb_port(Some(0))).unwrap();
//! println!("WS-Man at {}, SMB at {:?}", sim.url(), sim.smb_addr());
//! let vm = sim.vm_id("web-01").unwrap();
//! sim.guest_write(&vm, 0, 4096, b"new data").unwrap();
//! ```

mod cim;
mod define;
mod demo;
mod disks;
mod error;
mod host;
mod http;
mod ntlm;
mod smb;
mod soap;
mod tls;
mod wql;
mod xml;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use demo::demo_content;
pub use error::{Error, Result};

use host::{Host, HostConfig, MethodError};

/// The share name under which the host's `C:` drive is served.
pub const SHARE: &str = "C$";
/// The host's computer name.
pub const HOST_NAME: &str = "HV-SIM-01";

/// How the simulator is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimConfig {
    /// Where the WS-Man listener binds; port 0 picks one.
    pub listen: SocketAddr,
    /// State directory: `C/` (the host's drive) and `smb/` (Samba's files).
    pub state_dir: PathBuf,
    /// The account's user name.
    pub user: String,
    /// The account's password.
    pub password: String,
    /// Create the demo VMs (see `README.md`).
    pub demo: bool,
    /// Start `smbd` on this port (0: a free one); `None`: no SMB.
    pub smb_port: Option<u16>,
    /// How long a job runs (`JobState` 4) before it completes.
    pub job_time: Duration,
    /// RCT's granularity: guest writes are logged rounded out to it.
    pub rct_block: u64,
    /// The most `GetVirtualDiskChanges` processes in one call (the rest is
    /// the caller's next call, as `ProcessedByteLength` says).
    pub rct_max_processed: u64,
    /// Serve HTTPS (WinRM's 5986 listener) with a self-signed certificate
    /// kept in `STATE/tls/cert.pem`; Basic and NTLM authentication, SOAP
    /// in clear inside TLS.
    pub tls: bool,
    /// With `demo`: web-01's first disk this many MiB of dense data (for
    /// throughput measurements) instead of 64 MiB, mostly sparse.
    pub demo_os_mib: Option<u64>,
}

impl SimConfig {
    /// Defaults: `127.0.0.1:0`, user `Administrator`, password `alike`, no
    /// demo, no SMB, jobs of 100 ms, 64 KiB RCT blocks, 16 MiB processed per call.
    pub fn new(state_dir: impl AsRef<Path>) -> SimConfig {
        SimConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            state_dir: state_dir.as_ref().to_owned(),
            user: "Administrator".into(),
            password: "alike".into(),
            demo: false,
            smb_port: None,
            job_time: Duration::from_millis(100),
            rct_block: 64 << 10,
            rct_max_processed: 16 << 20,
            tls: false,
            demo_os_mib: None,
        }
    }
    /// Sets [`SimConfig::listen`].
    #[must_use]
    pub fn listen(mut self, a: SocketAddr) -> SimConfig {
        self.listen = a;
        self
    }
    /// Sets [`SimConfig::user`] and [`SimConfig::password`].
    #[must_use]
    pub fn credentials(mut self, user: &str, password: &str) -> SimConfig {
        self.user = user.to_owned();
        self.password = password.to_owned();
        self
    }
    /// Sets [`SimConfig::demo`].
    #[must_use]
    pub fn demo(mut self, on: bool) -> SimConfig {
        self.demo = on;
        self
    }
    /// Sets [`SimConfig::smb_port`].
    #[must_use]
    pub fn smb_port(mut self, port: Option<u16>) -> SimConfig {
        self.smb_port = port;
        self
    }
    /// Sets [`SimConfig::job_time`].
    #[must_use]
    pub fn job_time(mut self, t: Duration) -> SimConfig {
        self.job_time = t;
        self
    }
    /// Sets [`SimConfig::tls`].
    #[must_use]
    pub fn tls(mut self, on: bool) -> SimConfig {
        self.tls = on;
        self
    }
    /// Sets [`SimConfig::rct_max_processed`].
    #[must_use]
    pub fn rct_max_processed(mut self, n: u64) -> SimConfig {
        self.rct_max_processed = n.max(1);
        self
    }
}

/// What the listener threads share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) host: Mutex<Host>,
    pub(crate) enums: Mutex<soap::Enumerations>,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) host_name: String,
    /// The HTTPS server configuration, when serving TLS.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// A disk of a VM as the test API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskFile {
    /// The VM's disk position (0-based, in the VM's order).
    pub index: usize,
    /// Virtual size in bytes.
    pub size: u64,
    /// The file the VM writes, as the host names it (`C:\…`).
    pub win_path: String,
    /// The same file on this machine.
    pub local_path: PathBuf,
    /// Every file of the chain, base first, on this machine.
    pub chain: Vec<PathBuf>,
}

/// A VM as the simulator's model holds it (the test API: what a restore
/// made, read without WS-Man).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VmSummary {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// 1 or 2.
    pub generation: u8,
    /// Secure boot.
    pub secure_boot: bool,
    /// Virtual processors.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Running.
    pub running: bool,
    /// A replica VM (refuses to start until failover).
    pub replica: bool,
    /// A replica's authorization entry: (`AllowedPrimaryHostSystem`,
    /// `TrustGroup`, `ReplicaStorageLocation`).
    pub replica_entry: Option<(String, String, String)>,
    /// Disks in the host's order: (`scsi` or `ide`, controller index,
    /// location, the host's path of the file, virtual size).
    pub disks: Vec<(String, u32, u32, String, u64)>,
    /// NICs: (MAC, the switch's name when connected).
    pub nics: Vec<(String, Option<String>)>,
}

/// A running simulator: a listener thread (and `smbd`) until
/// [`Simulator::shutdown`] or drop.
#[derive(Debug)]
pub struct Simulator {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    smbd: Option<smb::Smbd>,
    c_drive: PathBuf,
    /// With TLS: the certificate (PEM) and its SHA-256 fingerprint.
    cert: Option<(String, String)>,
}

impl Simulator {
    /// Prepares the state directory (the host's drive is made anew: the
    /// simulator keeps no state across runs), binds the listener, starts
    /// `smbd` when asked, and serves.
    ///
    /// # Errors
    /// [`Error::Io`] for the state directory, [`Error::Disk`] for the demo's
    /// files, [`Error::Net`] when the port cannot be bound, [`Error::Smb`]
    /// when Samba is missing or does not start.
    pub fn start(cfg: SimConfig) -> Result<Simulator> {
        let c_drive = cfg.state_dir.join("C");
        let hv = c_drive.join("Hyper-V");
        if hv.exists() {
            std::fs::remove_dir_all(&hv).map_err(Error::io(&hv))?;
        }
        std::fs::create_dir_all(&c_drive).map_err(Error::io(&c_drive))?;
        let c_drive = std::fs::canonicalize(&c_drive).map_err(Error::io(&c_drive))?;
        let mut host = Host {
            name: HOST_NAME.into(),
            c_drive: c_drive.clone(),
            vms: Vec::new(),
            switches: Vec::new(),
            jobs: Vec::new(),
            cfg: HostConfig {
                job_time: cfg.job_time,
                rct_block: cfg.rct_block,
                rct_max_processed: cfg.rct_max_processed,
            },
            job_failures: Vec::new(),
            // A host prepared to hold replicas (Hyper-V's default is off:
            // `Set-VMReplicationServer -ReplicationEnabled $true`).
            recovery_server: true,
        };
        if cfg.demo {
            demo::populate(&mut host, cfg.demo_os_mib)?;
        }
        let net = |what: &str| {
            let what = format!("{what} {}", cfg.listen);
            move |source| Error::Net { what, source }
        };
        let listener = std::net::TcpListener::bind(cfg.listen).map_err(net("binding the WS-Man listener on"))?;
        let addr = listener.local_addr().map_err(net("reading the address of"))?;
        let smbd = match cfg.smb_port {
            Some(port) => {
                Some(smb::Smbd::start(&cfg.state_dir, SHARE, &c_drive, addr.ip(), port, &cfg.user, &cfg.password)?)
            }
            None => None,
        };
        let tls = if cfg.tls { Some(tls::load_or_create(&cfg.state_dir.join("tls"))?) } else { None };
        let cert = tls.as_ref().map(|t| (t.cert_pem.clone(), t.fingerprint.clone()));
        let inner = Arc::new(Inner {
            tls: tls.map(|t| t.config),
            host: Mutex::new(host),
            enums: Mutex::new(soap::Enumerations::default()),
            user: cfg.user,
            password: cfg.password,
            host_name: HOST_NAME.into(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (i2, s2) = (Arc::clone(&inner), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("wsman-listener".into())
            .spawn(move || http::serve(listener, i2, s2))
            .map_err(|source| Error::Net { what: "starting the listener thread".into(), source })?;
        Ok(Simulator { inner, addr, stop, thread: Some(thread), smbd, c_drive, cert })
    }

    fn host(&self) -> MutexGuard<'_, Host> {
        self.inner.host.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The WS-Man endpoint, e.g. `http://127.0.0.1:5985/wsman`.
    pub fn url(&self) -> String {
        let scheme = if self.cert.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/wsman", self.addr)
    }

    /// With TLS, the certificate's SHA-256 fingerprint (`AB:CD:…`).
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.cert.as_ref().map(|c| c.1.as_str())
    }

    /// With TLS, the certificate (PEM): a CA file that trusts it.
    pub fn tls_cert_pem(&self) -> Option<&str> {
        self.cert.as_ref().map(|c| c.0.as_str())
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `smbd` listens, when it runs.
    pub fn smb_addr(&self) -> Option<SocketAddr> {
        self.smbd.as_ref().map(|s| s.addr)
    }

    /// The local folder that is the host's `C:` drive (shared as [`SHARE`]).
    pub fn c_drive(&self) -> &Path {
        &self.c_drive
    }

    /// A VM's id (its `Msvm_ComputerSystem.Name`) by name.
    pub fn vm_id(&self, name: &str) -> Option<String> {
        self.host().vm_by_name(name).map(|v| v.id.clone())
    }

    /// A VM's disks.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown VM.
    pub fn disks(&self, vm: &str) -> Result<Vec<DiskFile>> {
        let h = self.host();
        let v = h.vm(vm).ok_or_else(|| Error::NotFound(format!("VM {vm}")))?;
        Ok(v.disks
            .iter()
            .enumerate()
            .map(|(index, d)| {
                let top = d.chain.last().cloned().unwrap_or_default();
                DiskFile { index, size: d.size, win_path: h.win_path(&top), local_path: top, chain: d.chain.clone() }
            })
            .collect())
    }

    /// The guest of VM `vm` (id) writes `data` at `offset` of its disk
    /// `disk`: the VM's top file changes and RCT logs the write.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown VM or disk or a write past the
    /// end; [`Error::Disk`] if the file cannot be rewritten.
    pub fn guest_write(&self, vm: &str, disk: usize, offset: u64, data: &[u8]) -> Result<()> {
        self.host().guest_write(vm, disk, &[(offset, data.to_vec())])
    }

    /// Several writes at once (one rewrite of the file).
    ///
    /// # Errors
    /// As [`Simulator::guest_write`].
    pub fn guest_writes(&self, vm: &str, disk: usize, writes: &[(u64, Vec<u8>)]) -> Result<()> {
        self.host().guest_write(vm, disk, writes)
    }

    /// What the VM's guest reads: `len` bytes at `offset` of disk `disk`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Disk`].
    pub fn read_disk(&self, vm: &str, disk: usize, offset: u64, len: usize) -> Result<Vec<u8>> {
        let top = {
            let h = self.host();
            let v = h.vm(vm).ok_or_else(|| Error::NotFound(format!("VM {vm}")))?;
            let d = v.disks.get(disk).ok_or_else(|| Error::NotFound(format!("disk {disk} of VM {vm}")))?;
            d.chain.last().cloned().unwrap_or_default()
        };
        disks::read(&top, offset, len)
    }

    /// Forgets a disk's change tracking (a resize or RCT turned off and on).
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn reset_rct(&self, vm: &str, disk: usize) -> Result<()> {
        self.host().reset_rct(vm, disk)
    }

    /// The next call of `method` (e.g. `CreateSnapshot`) starts a job that
    /// fails with `code` and `description` (JobState 10), changing nothing.
    pub fn fail_next_job(&self, method: &str, code: u32, description: &str) {
        self.host().job_failures.push((method.to_owned(), MethodError { code, text: description.to_owned() }));
    }

    /// Turns the host's Replica server role on or off
    /// (`Msvm_ReplicationServiceSettingData.RecoveryServerEnabled`; on when
    /// the simulator starts): off, `SetAuthorizationEntry` is refused.
    pub fn set_recovery_server(&self, on: bool) {
        self.host().recovery_server = on;
    }

    /// Every VM by name, as the model holds it.
    pub fn vm_summaries(&self) -> Vec<VmSummary> {
        let h = self.host();
        h.vms
            .iter()
            .map(|v| VmSummary {
                id: v.id.clone(),
                name: v.name.clone(),
                generation: v.generation,
                secure_boot: v.secure_boot,
                vcpus: v.vcpus,
                memory_mb: v.memory_mb,
                running: v.running,
                replica: v.replica.is_some(),
                replica_entry: v
                    .replica
                    .as_ref()
                    .map(|r| (r.allowed_primary.clone(), r.trust_group.clone(), r.storage.clone())),
                disks: v
                    .disks
                    .iter()
                    .map(|d| {
                        let top = d.chain.last().cloned().unwrap_or_default();
                        (
                            if d.slot.scsi { "scsi" } else { "ide" }.to_owned(),
                            d.slot.controller,
                            d.slot.location,
                            h.win_path(&top),
                            d.size,
                        )
                    })
                    .collect(),
                nics: v
                    .nics
                    .iter()
                    .map(|n| {
                        let sw = n.switch.as_ref().and_then(|s| h.switches.iter().find(|x| &x.id == s));
                        (n.mac.clone(), sw.map(|s| s.name.clone()))
                    })
                    .collect(),
            })
            .collect()
    }

    /// Adds a virtual switch named `name` (test API).
    pub fn add_switch(&self, name: &str) {
        self.host().switches.push(host::Switch { id: host::new_guid(), name: name.to_owned() });
    }

    /// Turns a VM on or off (no checks).
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn set_running(&self, vm: &str, on: bool) -> Result<()> {
        let mut h = self.host();
        let v = h
            .vms
            .iter_mut()
            .find(|v| v.id.eq_ignore_ascii_case(vm))
            .ok_or_else(|| Error::NotFound(format!("VM {vm}")))?;
        v.running = on;
        Ok(())
    }

    /// Whether a VM's guest takes VSS snapshots (application-consistent checkpoints).
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn set_vss(&self, vm: &str, on: bool) -> Result<()> {
        let mut h = self.host();
        let v = h
            .vms
            .iter_mut()
            .find(|v| v.id.eq_ignore_ascii_case(vm))
            .ok_or_else(|| Error::NotFound(format!("VM {vm}")))?;
        v.vss = on;
        Ok(())
    }

    /// Handles one SOAP envelope in process (no HTTP, no NTLM): the HTTP
    /// status WinRM would send and the reply envelope.
    pub fn handle_soap(&self, envelope: &str) -> (u16, String) {
        soap::handle(&self.inner.host, &self.inner.enums, envelope)
    }

    /// Stops the listener and `smbd`.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.smbd = None;
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A snapshot-settings embedded instance as clients send it (for tests
/// that write envelopes by hand).
pub fn snapshot_settings(consistency_level: u8) -> String {
    Host::snapshot_settings(consistency_level)
}
