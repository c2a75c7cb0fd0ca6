//! # alike-xen-sim
//!
//! A protocol-level XenServer/XCP-ng XAPI simulator, for testing the Xen
//! adapter without a XenServer. It speaks what XAPI speaks, on loopback:
//!
//! - **RPC**: XML-RPC on `POST /` (what the official `XenAPI` Python SDK
//!   uses; `/RPC2` and any other path not taken below land there too, since
//!   XAPI routes by longest prefix) and JSON-RPC 1.0/2.0 on `POST
//!   /jsonrpc`, with XAPI's reply and error shapes and its HTTP 500 pages
//!   for malformed requests.
//! - **Objects**: pool, host, VM, VBD, VDI, SR, PBD, network, PIF, VIF,
//!   task and session records as `get_record` returns them; generic
//!   `get_*`/`set_*`/`add_to_*`/`remove_from_*`, `get_all(_records)`,
//!   `get_by_uuid`, `get_by_name_label`; `VM.snapshot`/`clone`/`create`/
//!   `destroy`/`start`/`hard_shutdown`, `VBD`/`VIF.create`, `VDI.create`/
//!   `destroy`/`resize`/`snapshot`/`clone`, CBT (`enable_cbt`,
//!   `disable_cbt`, `list_changed_blocks`, `data_destroy`),
//!   `VDI.get_nbd_info`, `network.add_purpose`; `Async.*` with tasks.
//! - **Sessions**: login, logout, idle expiry (`SESSION_INVALID`), and a
//!   pool supporter's listener that answers logins with `HOST_IS_SLAVE`.
//! - **Data**: VDIs backed by copy-on-write layers of sparse files (a VHD
//!   chain's semantics), CBT logs handled like sm's `.cbtlog`s,
//!   `GET /export_raw_vdi` (raw, VHD, differencing VHD with `base=`),
//!   `PUT /import_raw_vdi` (raw, XAPI's `chunked` framing, VHD), and an NBD
//!   server that behaves like `xapi-nbd` (fixed newstyle, `EXPORT_NAME`,
//!   `STARTTLS` forced when a network has purpose `nbd`, read-only).
//! - **Test API**: [`Simulator::guest_write`] (a guest writing to its
//!   disk: marks CBT), power switches, session expiry and [`Faults`]; the
//!   same over HTTP under `/sim/` for out-of-process tests.
//!
//! ```
//! use alike_xen_sim::{SimConfig, Simulator, Value};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let sim = Simulator::start(SimConfig::new(dir.path()).demo(true)).unwrap();
//! let session = sim.login().unwrap();
//! let vms = sim.call("VM.get_all", vec![Value::s(&session)]).unwrap();
//! assert!(!vms.as_array().unwrap().is_empty());
//! println!("XAPI at {}", sim.url());
//! ```
//!
//! Deviations from XAPI are listed in `README.md`.

mod api;
mod boot;
mod demo;
mod error;
mod faults;
mod http;
mod nbd;
mod records;
mod state;
mod store;
mod tls;
mod value;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use boot::{BootProcessors, BootedProcessor};
pub use error::{Error, Result};
pub use faults::Faults;
pub use records::Class;
pub use store::{CBT_BLOCK, VHD_BLOCK};
pub use value::{NULL_REF, Value, method_call, method_response, parse_method_call, parse_method_response, parse_value};

use state::State;

/// The password of `root` unless [`SimConfig::password`] says otherwise.
pub const DEFAULT_PASSWORD: &str = "alike";

/// How the simulator is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimConfig {
    /// Where the XAPI (HTTP/HTTPS) listener binds; port 0 picks one.
    pub listen: SocketAddr,
    /// State directory (objects, layer files, certificate).
    pub state_dir: PathBuf,
    /// `root`'s password.
    pub password: String,
    /// Serve the API over HTTPS (self-signed certificate).
    pub tls: bool,
    /// Create the demo pool if the state is empty.
    pub demo: bool,
    /// Also listen as a pool supporter on this address (same port): logins
    /// there fail with `HOST_IS_SLAVE [coordinator address]`.
    pub slave_ip: Option<IpAddr>,
    /// Sessions idle longer than this expire (XAPI: 24 h).
    pub session_timeout: Duration,
    /// NBD port (XAPI always uses 10809; 0 picks one).
    pub nbd_port: u16,
    /// Also accept `NBD_OPT_GO`/`NBD_OPT_INFO` (xapi-nbd answers them with
    /// `NBD_REP_ERR_UNSUP`; off by default).
    pub nbd_go: bool,
    /// Purpose given to the demo network: `nbd` (TLS forced), `insecure_nbd`
    /// or none; default `nbd` with [`SimConfig::tls`], else `insecure_nbd`.
    pub nbd_purpose: Option<String>,
    /// How long `VDI.data_destroy` waits for the VDI's VBDs to go (XAPI: 4 s).
    pub data_destroy_wait: Duration,
    /// Starting a processor VM starts a local processor (a network
    /// namespace with sshd at the VM's address, its disks at their device
    /// paths: see [`BootProcessors`] and `README.md`); off by default.
    pub boot_processors: Option<BootProcessors>,
}

impl SimConfig {
    /// Defaults: `127.0.0.1:0`, password [`DEFAULT_PASSWORD`], plain HTTP,
    /// no demo, 24 h sessions, NBD on any port.
    pub fn new(state_dir: impl AsRef<Path>) -> SimConfig {
        SimConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            state_dir: state_dir.as_ref().to_owned(),
            password: DEFAULT_PASSWORD.to_owned(),
            tls: false,
            demo: false,
            slave_ip: None,
            session_timeout: Duration::from_secs(86_400),
            nbd_port: 0,
            nbd_go: false,
            nbd_purpose: None,
            data_destroy_wait: Duration::from_secs(4),
            boot_processors: None,
        }
    }
    /// Sets [`SimConfig::listen`].
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> SimConfig {
        self.listen = addr;
        self
    }
    /// Sets [`SimConfig::password`].
    #[must_use]
    pub fn password(mut self, pw: &str) -> SimConfig {
        self.password = pw.to_owned();
        self
    }
    /// Sets [`SimConfig::tls`].
    #[must_use]
    pub fn tls(mut self, on: bool) -> SimConfig {
        self.tls = on;
        self
    }
    /// Sets [`SimConfig::demo`].
    #[must_use]
    pub fn demo(mut self, on: bool) -> SimConfig {
        self.demo = on;
        self
    }
    /// Sets [`SimConfig::slave_ip`].
    #[must_use]
    pub fn slave_ip(mut self, ip: IpAddr) -> SimConfig {
        self.slave_ip = Some(ip);
        self
    }
    /// Sets [`SimConfig::session_timeout`].
    #[must_use]
    pub fn session_timeout(mut self, t: Duration) -> SimConfig {
        self.session_timeout = t;
        self
    }
    /// Sets [`SimConfig::nbd_port`].
    #[must_use]
    pub fn nbd_port(mut self, port: u16) -> SimConfig {
        self.nbd_port = port;
        self
    }
    /// Sets [`SimConfig::nbd_go`].
    #[must_use]
    pub fn nbd_go(mut self, on: bool) -> SimConfig {
        self.nbd_go = on;
        self
    }
    /// Sets [`SimConfig::nbd_purpose`] (`"nbd"`, `"insecure_nbd"` or `""` for none).
    #[must_use]
    pub fn nbd_purpose(mut self, p: &str) -> SimConfig {
        self.nbd_purpose = Some(p.to_owned());
        self
    }
    /// Sets [`SimConfig::boot_processors`].
    #[must_use]
    pub fn boot_processors(mut self, b: BootProcessors) -> SimConfig {
        self.boot_processors = Some(b);
        self
    }
    /// Sets [`SimConfig::data_destroy_wait`].
    #[must_use]
    pub fn data_destroy_wait(mut self, t: Duration) -> SimConfig {
        self.data_destroy_wait = t;
        self
    }
}

/// What the front-ends share.
#[derive(Debug)]
pub(crate) struct Inner {
    state: Mutex<State>,
    pub(crate) faults: Faults,
    pub(crate) data_destroy_wait: Duration,
    pub(crate) nbd_go: bool,
    pub(crate) tls: Arc<rustls::ServerConfig>,
    pub(crate) tmp_dir: PathBuf,
    pub(crate) booter: Option<boot::Booter>,
    /// Bytes of VDI data served by NBD reads, for tests that prove how
    /// often a disk was read.
    pub(crate) nbd_read_bytes: std::sync::atomic::AtomicU64,
}

impl Inner {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running simulator: its listeners run on their own tokio runtime until
/// [`Simulator::shutdown`] or drop. It may be started and dropped from sync
/// code or from inside another tokio runtime.
#[derive(Debug)]
pub struct Simulator {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    nbd_addr: SocketAddr,
    slave_addr: Option<SocketAddr>,
    https: bool,
    cert_pem: String,
    password: String,
}

impl Simulator {
    /// Opens the state directory, binds the listeners and starts serving.
    ///
    /// # Errors
    /// [`Error::Io`]/[`Error::State`] for the state directory,
    /// [`Error::Net`] when a port cannot be bound, [`Error::Tls`] when the
    /// certificate cannot be made.
    pub fn start(cfg: SimConfig) -> Result<Simulator> {
        let host_ip = match cfg.listen.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), host_ip.to_string()];
        names.extend(cfg.slave_ip.map(|ip| ip.to_string()));
        names.dedup();
        let tls = tls::load_or_create(&cfg.state_dir, &names)?;
        let mut state = State::open(&cfg.state_dir, cfg.password.clone(), cfg.session_timeout)?;
        let tmp_dir = cfg.state_dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(Error::io(&tmp_dir))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("xapi-sim")
            .enable_all()
            .build()
            .map_err(|source| Error::Net { what: "starting the runtime".into(), source })?;
        // Bound with std and handed to tokio under `enter`, not `block_on`,
        // so that starting from inside another runtime (an async test) works.
        let _guard = runtime.enter();
        let bind = |addr: SocketAddr, what: &str| {
            let net = |source| Error::Net { what: format!("binding {what} on {addr}"), source };
            let l = std::net::TcpListener::bind(addr).map_err(net)?;
            l.set_nonblocking(true).map_err(net)?;
            tokio::net::TcpListener::from_std(l).map_err(net)
        };
        let api = bind(cfg.listen, "the XAPI listener")?;
        let addr = api.local_addr().map_err(|source| Error::Net { what: "local address".into(), source })?;
        let nbd = bind(SocketAddr::new(cfg.listen.ip(), cfg.nbd_port), "the NBD listener")?;
        let nbd_addr = nbd.local_addr().map_err(|source| Error::Net { what: "local address".into(), source })?;
        let slave = match cfg.slave_ip {
            Some(ip) => Some(bind(SocketAddr::new(ip, addr.port()), "the supporter listener")?),
            None => None,
        };
        let slave_addr = slave.as_ref().and_then(|l| l.local_addr().ok());
        if cfg.demo && state.is_empty() {
            let purpose =
                cfg.nbd_purpose.clone().unwrap_or_else(|| if cfg.tls { "nbd".into() } else { "insecure_nbd".into() });
            demo::populate(&mut state, &host_ip.to_string(), &purpose)?;
            state.save()?;
        }
        state.nbd = Some(state::NbdEndpoint {
            port: nbd_addr.port(),
            cert_pem: tls.cert_pem.clone(),
            subject: "localhost".into(),
        });
        let booter = match cfg.boot_processors.clone() {
            Some(b) => Some(boot::Booter::new(b, &cfg.state_dir)?),
            None => None,
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            faults: Faults::default(),
            data_destroy_wait: cfg.data_destroy_wait,
            nbd_go: cfg.nbd_go,
            tls: tls.config.clone(),
            tmp_dir,
            booter,
            nbd_read_bytes: std::sync::atomic::AtomicU64::new(0),
        });
        let https = if cfg.tls { Some(tokio_rustls::TlsAcceptor::from(tls.config.clone())) } else { None };
        runtime.spawn(http::serve(api, Arc::clone(&inner), api::Ctx::default(), https.clone()));
        if let Some(l) = slave {
            let ctx = api::Ctx { slave_of: Some(host_ip.to_string()) };
            runtime.spawn(http::serve(l, Arc::clone(&inner), ctx, https));
        }
        runtime.spawn(nbd::serve(nbd, Arc::clone(&inner)));
        Ok(Simulator {
            inner,
            runtime: Some(runtime),
            addr,
            nbd_addr,
            slave_addr,
            https: cfg.tls,
            cert_pem: tls.cert_pem,
            password: cfg.password,
        })
    }

    /// The API's base URL, e.g. `http://127.0.0.1:40123/`.
    pub fn url(&self) -> String {
        format!("{}://{}/", if self.https { "https" } else { "http" }, self.addr)
    }

    /// The API listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The NBD listener's address.
    pub fn nbd_addr(&self) -> SocketAddr {
        self.nbd_addr
    }

    /// The pool supporter's URL, when one was configured.
    pub fn slave_url(&self) -> Option<String> {
        self.slave_addr.map(|a| format!("{}://{a}/", if self.https { "https" } else { "http" }))
    }

    /// The host certificate (PEM), used for HTTPS and NBD TLS.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `root`'s password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Runs an API call in-process, exactly as the RPC front-ends do
    /// (parameters include the session, as on the wire). It blocks (delays,
    /// `VDI.data_destroy`'s wait): from async code, call it on a blocking
    /// thread.
    ///
    /// # Errors
    /// The call's XAPI failure as [`Error::Api`].
    pub fn call(&self, method: &str, params: Vec<Value>) -> Result<Value> {
        self.inner.call(method, params, &api::Ctx::default())
    }

    /// Bytes of VDI data this simulator has served through NBD reads since
    /// it started (every client, every VDI).
    pub fn nbd_read_bytes(&self) -> u64 {
        self.inner.nbd_read_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Logs `root` in; returns the session ref.
    ///
    /// # Errors
    /// As [`Simulator::call`].
    pub fn login(&self) -> Result<String> {
        let v = self.call("session.login_with_password", vec![Value::s("root"), Value::s(&self.password)])?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// The ref of the object of `class` named `name_label` (first match).
    pub fn lookup(&self, class: Class, name_label: &str) -> Option<String> {
        self.inner.state().where_eq(class, "name_label", name_label).into_iter().next()
    }

    /// A field of an object's full record.
    pub fn field(&self, class: Class, r: &str, field: &str) -> Option<Value> {
        self.inner.state().record(class, r).ok().and_then(|mut rec| rec.remove(field))
    }

    /// The guest writes `data` at `offset` of the VDI (ref or uuid): the
    /// data changes and, with CBT on, its 64 KiB blocks are marked.
    ///
    /// # Errors
    /// `HANDLE_INVALID` for an unknown VDI, `VDI_READONLY` for a snapshot,
    /// `VDI_IO_ERROR` past the end.
    pub fn guest_write(&self, vdi: &str, offset: u64, data: &[u8]) -> Result<()> {
        let mut st = self.inner.state();
        let r = st.resolve(Class::Vdi, vdi).ok_or_else(|| Error::api("HANDLE_INVALID", ["VDI", vdi]))?;
        st.vdi_write(&r, offset, data, false)?;
        st.save()
    }

    /// Reads `len` bytes of a VDI (ref or uuid) at `offset`.
    ///
    /// # Errors
    /// `HANDLE_INVALID`; `VDI_INCOMPATIBLE_TYPE` for a `cbt_metadata` VDI.
    pub fn read_vdi(&self, vdi: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let reader = {
            let st = self.inner.state();
            let r = st.resolve(Class::Vdi, vdi).ok_or_else(|| Error::api("HANDLE_INVALID", ["VDI", vdi]))?;
            st.vdi_reader(&r)?
        };
        let mut buf = vec![0u8; len];
        reader.read_at(offset, &mut buf)?;
        Ok(buf)
    }

    /// Sets a VM's power state (`Running`, `Halted`, `Paused`) without the
    /// checks of `VM.start`/`hard_shutdown`, attaching or detaching its VBDs.
    ///
    /// # Errors
    /// `HANDLE_INVALID` for an unknown VM.
    pub fn set_power_state(&self, vm: &str, state: &str) -> Result<()> {
        let mut st = self.inner.state();
        st.vm_power(vm, state, "set")?;
        st.save()
    }

    /// Makes a VM's guest report (or stop reporting) VSS quiesce support,
    /// which `VM.snapshot_with_quiesce` needs (otherwise
    /// `VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED [vm]`).
    pub fn set_quiesce_support(&self, vm: &str, on: bool) {
        let mut st = self.inner.state();
        if on {
            st.quiesce.insert(vm.to_owned());
        } else {
            st.quiesce.remove(vm);
        }
    }

    /// Expires one session, or all of them.
    pub fn expire_sessions(&self, session: Option<&str>) {
        self.inner.state().expire_sessions(session);
    }

    /// Adds the demo pool (see `README.md`) if the state is empty.
    ///
    /// # Errors
    /// As [`Simulator::start`].
    pub fn add_demo(&self, nbd_purpose: &str) -> Result<()> {
        let mut st = self.inner.state();
        if st.is_empty() {
            demo::populate(&mut st, &self.addr.ip().to_string(), nbd_purpose)?;
            st.save()?;
        }
        Ok(())
    }

    /// The processor VMs' guests that run now (with
    /// [`SimConfig::boot_processors`]).
    pub fn booted_processors(&self) -> Vec<BootedProcessor> {
        self.inner.booter.as_ref().map(boot::Booter::booted).unwrap_or_default()
    }

    /// Stops the listeners (and every booted processor).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if let Some(b) = &self.inner.booter {
            b.stop_all();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop();
    }
}
