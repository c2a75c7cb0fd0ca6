//! The orchestrator's side: run a [`ProcessorJob`] on a host over SSH.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alike_core::{Phase, Progress};
use alike_remote::protocol::WorkerMessage;
use alike_remote::ssh::{ClientKey, Host, HostKeyPolicy, JobOptions, Session, SshOptions, run_job};

use super::ProcessorJob;
use crate::Result;
use crate::options::Run;

/// A callback told every event of a job.
type EventFn = Arc<dyn Fn(&WorkerMessage) + Send + Sync>;

/// Options of [`run_remote`]: progress and cancel as every long operation
/// has them, every event as it arrives, how to start the worker, and the
/// connection's timeouts.
///
/// ```
/// use std::time::Duration;
/// let opts = alike::remote::RemoteOptions::default()
///     .command("/usr/local/bin/alike processor")
///     .on_event(|e| eprintln!("{e:?}"))
///     .connect_timeout(Duration::from_secs(5));
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RemoteOptions {
    pub(crate) run: Run,
    pub(crate) on_event: Option<EventFn>,
    pub(crate) ssh: SshOptions,
    pub(crate) job: JobOptions,
}

impl RemoteOptions {
    /// Called with the job's progress (its phase, bytes done and total),
    /// on the calling thread, as the processor reports it.
    pub fn progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.run.progress = Some(Arc::new(f));
        self
    }
    /// Cancels the job when `token` is cancelled: the processor is told,
    /// stops at the next block, and the call returns
    /// [`crate::ErrorKind::Cancelled`].
    pub fn cancel_token(mut self, token: crate::CancelToken) -> Self {
        self.run.cancel = token;
        self
    }
    /// Called with every event the processor sends (`started`, `queued`,
    /// `progress` with bytes per disk, `warning`), as it arrives.
    pub fn on_event(mut self, f: impl Fn(&WorkerMessage) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(f));
        self
    }
    /// The command that starts the worker on the host (default `alike
    /// processor`; an absolute path where `alike` is not on the login's
    /// `PATH`, and options such as `--queue-lock FILE`). Never a secret.
    pub fn command(mut self, c: impl Into<String>) -> Self {
        self.job.command = c.into();
        self
    }
    /// All of the connection's timeouts and bounds.
    pub fn ssh_options(mut self, o: SshOptions) -> Self {
        self.ssh = o;
        self
    }
    /// How long a TCP connect may take (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.ssh.connect_timeout = d;
        self
    }
    /// How long the SSH handshake may take (default 10 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.ssh.handshake_timeout = d;
        self
    }
    /// How long the worker may take to say hello (default 30 s).
    pub fn hello_timeout(mut self, d: Duration) -> Self {
        self.job.hello_timeout = d;
        self
    }
    /// After a cancel, how long the worker may take to stop before its
    /// channel is closed on it (default 30 s; zero closes it at once).
    pub fn cancel_grace(mut self, d: Duration) -> Self {
        self.job.cancel_grace = d;
        self
    }
}

/// What [`run_remote`] did.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct RemoteReport {
    /// The host, as `user@host:port`.
    pub host: String,
    /// The fingerprint of the host key that was accepted.
    pub host_key: String,
    /// The job's id.
    pub job: String,
    /// Its kind.
    pub kind: String,
    /// The job's result, as the processor's facade serialised it: the
    /// report a local run of the same operation returns (`BackupReport`,
    /// a restore's report, `VerifyReport`), so `--json` prints the same
    /// keys either way.
    pub result: serde_json::Value,
    /// The warnings the job sent.
    pub warnings: Vec<String>,
    /// Wall time, connection included.
    #[serde(rename = "elapsed_seconds", serialize_with = "crate::store::seconds")]
    pub elapsed: Duration,
}

fn phase(name: &str) -> Option<Phase> {
    [Phase::Scanning, Phase::Backup, Phase::Restore, Phase::Verify, Phase::Index, Phase::Gc]
        .into_iter()
        .find(|p| p.name() == name)
}

/// Runs `job` on the processor at `host`: connects over SSH (the host key
/// checked against `policy`, logged in with `key`), starts the worker
/// (`alike processor`, or [`RemoteOptions::command`]), hands it the job —
/// with its secrets, which travel only in the channel — and reports its
/// events until it returns the result.
///
/// ```no_run
/// use alike::remote::{BackupJob, ClientKey, Host, HostKeyPolicy, ProcessorJob, RemoteOptions, StoreSpec, run_remote};
///
/// let host: Host = "root@10.0.0.7".parse()?;
/// let job = ProcessorJob::backup(BackupJob::new(StoreSpec::new("/mnt/ads"), "web-01", vec!["/dev/xvdb".into()]))
///     .passphrase("correct horse");
/// let report = run_remote(
///     &host,
///     &HostKeyPolicy::known_hosts("/etc/alike/known_hosts"),
///     &ClientKey::new("/etc/alike/id_ed25519"),
///     &job,
///     &RemoteOptions::default().progress(|p| eprintln!("{}/{}", p.bytes_done, p.bytes_total)),
/// )?;
/// println!("version {}", report.result["id"]);
/// # Ok::<(), alike::Error>(())
/// ```
///
/// # Errors
/// [`crate::Error::Remote`]: the connection (refused host key, failed
/// authentication, timeouts — [`crate::Error::code`] tells them apart),
/// the worker (another protocol version, a kind it does not run, an exit
/// without a result), or the job's own failure with the kind, retry class
/// and code the processor gave it; [`crate::ErrorKind::Cancelled`];
/// [`crate::ErrorKind::InvalidArgument`] for a job that cannot be sent.
pub fn run_remote(
    host: &Host,
    policy: &HostKeyPolicy,
    key: &ClientKey,
    job: &ProcessorJob,
    opts: &RemoteOptions,
) -> Result<RemoteReport> {
    let spec = job.to_spec()?;
    let t0 = Instant::now();
    let session = Session::connect(host, policy, key, &opts.ssh)?;
    let mut warnings = Vec::new();
    let mut on_event = |e: &WorkerMessage| {
        match e {
            WorkerMessage::Progress(p) => {
                if let (Some(cb), Some(ph)) = (&opts.run.progress, phase(&p.phase)) {
                    cb(&Progress::of(ph, p.bytes_done, p.bytes_total));
                }
            }
            WorkerMessage::Warning(w) => warnings.push(w.message.clone()),
            _ => {}
        }
        if let Some(f) = &opts.on_event {
            f(e);
        }
    };
    let r = run_job(&session, spec, &opts.job, &opts.run.cancel, &mut on_event);
    let host_key = session.host_key_fingerprint().to_string();
    session.close();
    Ok(RemoteReport {
        host: host.to_string(),
        host_key,
        job: job.id.clone(),
        kind: job.kind_name().to_string(),
        result: r?,
        warnings,
        elapsed: t0.elapsed(),
    })
}
