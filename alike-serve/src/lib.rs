//! The alike daemon: what `alike serve --config FILE` runs — the REST API,
//! `/metrics` (OpenMetrics), the event stream (server-sent events) and the
//! web Manager page, over the stores of the configuration and the
//! scheduler's [`Engine`].
//!
//! ```no_run
//! # async fn f() -> Result<(), alike_serve::Error> {
//! use std::sync::Arc;
//! let cfg = alike_serve::load_config("alike.toml".as_ref())?;
//! let serve = alike_serve::serve_table(&cfg)?;
//! let lock = alike_serve::lock_database(&serve.database)?;
//! let events = alike_serve::Events::default();
//! let daemon = alike_serve::Daemon::new(&cfg, lock, Arc::new(alike_serve::NoScheduler), events)?;
//! let listener = tokio::net::TcpListener::bind(serve.listen).await.map_err(|e| alike_serve::Error::Listen {
//!     addr: serve.listen.to_string(),
//!     message: e.to_string(),
//! })?;
//! daemon.serve(listener, std::future::pending()).await
//! # }
//! ```
//!
//! Layers: this crate depends on the facade (`alike`) and never the other
//! way; the scheduler reaches it through the [`Engine`] trait and the
//! [`Events`] bus. The API is described by `docs/openapi.json` (served at
//! `/api/openapi.json`); the configuration's keys by `docs/serve.md`.
//!
//! Invariants: every path under `/api/` answers 401 without a credential;
//! `/metrics` needs one unless `metrics_public`; restores write only a new
//! plain file directly inside a configured destination; one daemon per
//! database ([`lock_database`]).

mod auth;
mod engine;
mod error;
mod http;
mod metrics;
mod services;
mod settings;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use alike::{Config, ServeConfig};
pub use auth::hash_password;
pub use engine::{Engine, Event, Events, NoScheduler, RestoreRequest, RunFilter, Stores};
pub use error::{Error, Result};
pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics};
pub use services::{ServicesEngine, open_services};

/// Reads the configuration file (`alike::Config`: stores, pools, jobs and
/// the `[serve]` table).
///
/// # Errors
/// [`Error::Configuration`] naming the file and key.
pub fn load_config(path: &Path) -> Result<Config> {
    Config::from_file(path).map_err(|e| Error::Configuration(Box::new(e)))
}

/// The configuration's `[serve]` table, which the daemon needs.
///
/// # Errors
/// [`Error::Config`] when the file has none.
pub fn serve_table(cfg: &Config) -> Result<&ServeConfig> {
    cfg.serve.as_ref().ok_or_else(|| {
        Error::config(&cfg.path, "no [serve] table: alike serve needs at least its database and [serve.admin]")
    })
}

/// The page's files, compiled in: no build step, nothing fetched at run time.
mod assets {
    pub(crate) const INDEX: &str = include_str!("../assets/index.html");
    pub(crate) const APP_JS: &str = include_str!("../assets/app.js");
    pub(crate) const APP_CSS: &str = include_str!("../assets/app.css");
    pub(crate) const OPENAPI: &str = include_str!("../assets/openapi.json");
}

/// The OpenAPI description the daemon serves (`/api/openapi.json`).
pub const OPENAPI_JSON: &str = assets::OPENAPI;

/// Proof that this process holds the daemon's database: an exclusive
/// `flock` on `DATABASE.lock`, released when dropped (or when the process
/// dies, however it dies — so a killed daemon never blocks its restart).
#[derive(Debug)]
pub struct DatabaseLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl DatabaseLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the database's lock, or says who holds it.
///
/// # Errors
/// [`Error::AlreadyRunning`] when another daemon holds it; [`Error::Io`].
pub fn lock_database(database: &Path) -> Result<DatabaseLock> {
    use std::io::{Seek, Write};
    if let Some(dir) = database.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("database directory", dir, e))?;
    }
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("database lock", &path, e))?;
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let holder = std::fs::read_to_string(&path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        return Err(Error::AlreadyRunning { database: database.to_path_buf(), lock: path, holder });
    }
    // The pid is for people; the flock is the lock.
    let _ = f.set_len(0).and_then(|()| f.rewind()).and_then(|()| writeln!(f, "{}", std::process::id()));
    Ok(DatabaseLock { _file: f, path })
}

/// What every request handler shares.
pub(crate) struct State {
    pub(crate) auth: auth::Auth,
    pub(crate) stores: Stores,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) events: Events,
    pub(crate) metrics_public: bool,
    pub(crate) tls: bool,
    pub(crate) session_seconds: u64,
    pub(crate) destination_names: Vec<String>,
    started: std::time::Instant,
    started_ms: i64,
}

impl State {
    /// The whole `/metrics` page.
    pub(crate) fn metrics(&self) -> String {
        let mut m = Metrics::default();
        m.gauge(
            "alike_daemon_start_timestamp_seconds",
            "When this daemon started.",
            &[],
            self.started_ms as f64 / 1000.0,
        );
        m.gauge(
            "alike_daemon_uptime_seconds",
            "Seconds since this daemon started.",
            &[],
            self.started.elapsed().as_secs_f64(),
        );
        self.stores.metrics(&mut m);
        self.engine.metrics(&mut m);
        m.render()
    }
}

/// The daemon, configured and ready to serve.
pub struct Daemon {
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    _lock: DatabaseLock,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("stores", &self.state.stores).field("tls", &self.tls.is_some()).finish()
    }
}

impl Daemon {
    /// Reads the credential, opens the stores, loads TLS files.
    ///
    /// # Errors
    /// [`Error::Config`] / [`Error::Io`] for credential and TLS files,
    /// [`Error::Engine`] for a store that does not open.
    pub fn new(cfg: &Config, lock: DatabaseLock, engine: Arc<dyn Engine>, events: Events) -> Result<Daemon> {
        let s = serve_table(cfg)?;
        let cache = s.cache_dir.clone().unwrap_or_else(|| s.database.with_extension("cache"));
        let stores = Stores::open(&cfg.stores, &cache, s.restore_destinations.clone(), events.clone())?;
        Daemon::with_stores(cfg, lock, engine, events, stores)
    }

    /// As [`Daemon::new`], with stores the caller opened (the scheduler's).
    ///
    /// # Errors
    /// As [`Daemon::new`].
    pub fn with_stores(
        cfg: &Config,
        lock: DatabaseLock,
        engine: Arc<dyn Engine>,
        events: Events,
        stores: Stores,
    ) -> Result<Daemon> {
        let s = serve_table(cfg)?;
        let auth = auth::Auth::load(&s.admin, Duration::from_secs(s.session_seconds.max(60)))?;
        let tls = match &s.tls {
            Some(t) => Some(tls_acceptor(&t.cert, &t.key)?),
            None => None,
        };
        let state = State {
            auth,
            stores,
            engine,
            events,
            metrics_public: s.metrics_public,
            tls: tls.is_some(),
            session_seconds: s.session_seconds,
            destination_names: s.restore_destinations.keys().cloned().collect(),
            started: std::time::Instant::now(),
            started_ms: engine::now_ms(),
        };
        Ok(Daemon { state: Arc::new(state), tls, _lock: lock })
    }

    /// The stores the daemon opened (what a scheduler runs its jobs into).
    pub fn stores(&self) -> &Stores {
        &self.state.stores
    }

    /// Serves on `listener` until `shutdown` completes. Connections are
    /// bounded ([`MAX_CONNECTIONS`](http::MAX_CONNECTIONS)), each waits at
    /// most 30 s for its request headers.
    ///
    /// # Errors
    /// Never after the start; accept errors are logged and retried.
    pub async fn serve(self, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
        let limit = Arc::new(tokio::sync::Semaphore::new(http::MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return Ok(()) },
                () = &mut shutdown => return Ok(()),
            };
            let (tcp, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(()),
            };
            let (state, tls) = (self.state.clone(), self.tls.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let ip = peer.ip();
                let svc = hyper::service::service_fn(move |req| http::handle(state.clone(), ip, req));
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
                let r = match tls {
                    Some(acc) => match tokio::time::timeout(Duration::from_secs(30), acc.accept(tcp)).await {
                        Ok(Ok(s)) => b.serve_connection(hyper_util::rt::TokioIo::new(s), svc).await,
                        _ => return,
                    },
                    None => b.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await,
                };
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection");
                }
            });
        }
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| Error::config(cert, format!("TLS certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::config(cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| Error::config(key, format!("TLS key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| Error::config(cert, format!("TLS: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Runs the daemon in the foreground until Ctrl-C or SIGTERM: takes the
/// database's lock, opens the services (stores, pools, jobs of the
/// configuration; runs a killed daemon left are marked interrupted), starts
/// the schedule, and serves. At a signal, running runs are cancelled (they
/// end `cancelled`) and waited for at most 30 s.
///
/// # Errors
/// Any start-up failure ([`Error::AlreadyRunning`], [`Error::Config`],
/// [`Error::Listen`]…).
pub fn run(cfg: &Config, listen: Option<std::net::SocketAddr>) -> Result<()> {
    let serve = serve_table(cfg)?;
    let lock = lock_database(&serve.database)?;
    let events = Events::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .map_err(|e| Error::Listen { addr: "runtime".into(), message: e.to_string() })?;
    let _guard = rt.enter();
    let cache = serve.cache_dir.clone().unwrap_or_else(|| serve.database.with_extension("cache"));
    let services = Arc::new(open_services(cfg, &serve.database, &cache)?);
    let engine = ServicesEngine::new(services.clone(), &events);
    let stores = engine.stores(serve.restore_destinations.clone(), events.clone())?;
    services.start().map_err(|e| Error::Services(Box::new(e)))?;
    let daemon = Daemon::with_stores(cfg, lock, Arc::new(engine), events, stores)?;
    let addr = listen.unwrap_or(serve.listen);
    let r = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Listen { addr: addr.to_string(), message: e.to_string() })?;
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let scheme = if daemon.tls.is_some() { "https" } else { "http" };
        // Scripts wait for this line (stderr) to know the port.
        eprintln!("alike serve: listening on {scheme}://{local}");
        daemon.serve(listener, shutdown_signal()).await
    });
    services.stop(true, Duration::from_secs(30));
    r
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}
