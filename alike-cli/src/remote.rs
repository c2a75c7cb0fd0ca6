//! Jobs on processors: `alike processor` (the worker, reading its job from
//! its standard input) and `--via user@host[:port]` on `backup`, `restore`
//! and `verify` (the same command, run by a processor over SSH).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use alike::ErrorKind;
use alike::remote::{
    BackupJob, ClientKey, Host, HostKeyPolicy, ProcessorEvent, ProcessorJob, RemoteOptions, RemoteReport, RestoreJob,
    StoreSpec, VerifyJob, WorkerOptions,
};
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use crate::Cli;
use crate::common::{Bar, cancel_on_ctrl_c, mib, passphrase, print_json, read_secret, store_path};

/// `alike processor`.
#[derive(Args, Debug)]
pub(crate) struct ProcessorArgs {
    /// Run jobs on this processor one at a time: each holds FILE (flock)
    /// while it runs; another job reports `queued` and waits.
    #[arg(long, value_name = "FILE")]
    queue_lock: Option<PathBuf>,
    /// Seconds to wait for the job after saying hello.
    #[arg(long, default_value_t = 60)]
    job_timeout: u64,
}

/// Runs the worker on standard input and output; exits with its status.
pub(crate) fn processor(a: &ProcessorArgs) -> ! {
    let mut o = WorkerOptions::default();
    o.job_timeout = Duration::from_secs(a.job_timeout.max(1));
    if let Some(p) = &a.queue_lock {
        o = o.queue_lock(p);
    }
    let exit = alike::remote::serve_processor(Box::new(std::io::stdin()), Box::new(std::io::stdout()), &o);
    std::process::exit(exit.code())
}

/// `--via` and the SSH settings that go with it.
#[derive(Args, Debug, Default)]
pub(crate) struct ViaArgs {
    /// Run on this processor over SSH (`user@host[:port]`): disk and
    /// output paths, and a directory store, are the processor's. Secrets
    /// (passphrase, key file, S3 credentials) travel in the SSH channel only.
    #[arg(long, value_name = "USER@HOST[:PORT]")]
    pub(crate) via: Option<String>,
    /// The SSH private key to log in with (OpenSSH format).
    #[arg(long, value_name = "FILE", requires = "via")]
    ssh_key: Option<PathBuf>,
    /// A file holding the SSH key's passphrase.
    #[arg(long, value_name = "FILE", requires = "via")]
    ssh_key_passphrase_file: Option<PathBuf>,
    /// An OpenSSH known_hosts file pinning the processor's host key.
    #[arg(long, value_name = "FILE", requires = "via", conflicts_with = "host_key")]
    known_hosts: Option<PathBuf>,
    /// The processor's host key fingerprint (`SHA256:…`, as `ssh-keygen -l`
    /// prints it), instead of a known_hosts file; repeatable.
    #[arg(long, value_name = "SHA256:…", requires = "via")]
    host_key: Vec<String>,
    /// The command that starts the worker on the processor.
    #[arg(long, value_name = "COMMAND", default_value = alike::remote::DEFAULT_COMMAND, requires = "via")]
    processor_command: String,
    /// Seconds a connection attempt (TCP and SSH handshake) may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, requires = "via")]
    connect_timeout: u64,
}

impl ViaArgs {
    fn host(&self) -> Result<Host> {
        let via = self.via.as_deref().context("no --via")?;
        if via.contains(',') {
            bail!("--via {via}: two processors are for `alike replicate --to-dir DIR DISK…` only");
        }
        Ok(via.parse()?)
    }
    fn policy(&self) -> Result<HostKeyPolicy> {
        match (&self.known_hosts, self.host_key.is_empty()) {
            (Some(f), true) => Ok(HostKeyPolicy::known_hosts(f)),
            (None, false) => Ok(HostKeyPolicy::fingerprints(&self.host_key)?),
            _ => bail!("--via needs the processor's host key pinned: --known-hosts FILE or --host-key SHA256:…"),
        }
    }
    fn key(&self) -> Result<ClientKey> {
        let path = self.ssh_key.clone().context("--via needs --ssh-key FILE (the key to log in with)")?;
        let k = ClientKey::new(path);
        Ok(match &self.ssh_key_passphrase_file {
            Some(f) => k.with_passphrase_file(f)?,
            None => k,
        })
    }
}

/// The store as the processor sees it; object-storage settings from this
/// side's environment (the same variables a local run reads).
fn store_spec(cli: &Cli) -> Result<StoreSpec> {
    let mut s = StoreSpec::new(store_path(cli)?);
    s.cache_dir = cli.cache_dir.clone();
    s.endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
    s.region = std::env::var("AWS_REGION").ok();
    s.allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true" || v == "1");
    Ok(s)
}

/// The job's secrets from this side: the passphrase (`--password-file`,
/// `ALIKE_PASSWORD`, or `prompted`), the key file's contents, S3 credentials.
fn with_secrets(cli: &Cli, mut job: ProcessorJob, prompted: Option<String>) -> Result<ProcessorJob> {
    if let Some(kf) = &cli.key_file {
        let data = std::fs::read(kf).with_context(|| format!("reading key file {}", kf.display()))?;
        job = job.key_file_contents(&data);
    } else if let Some(p) = prompted {
        job = job.passphrase(p);
    } else if let Some(f) = &cli.password_file {
        job = job.passphrase(read_secret(f, "password")?);
    } else if let Ok(p) = std::env::var("ALIKE_PASSWORD") {
        job = job.passphrase(p);
    }
    if let (Ok(k), Ok(s)) = (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
        job = job.s3_credentials(k, s);
        if let Ok(t) = std::env::var("AWS_SESSION_TOKEN") {
            job = job.s3_session_token(t);
        }
    }
    Ok(job)
}

/// Runs `job` on the processor with a progress bar, Ctrl-C, and events on
/// stderr; asks for the passphrase on a terminal when the processor says
/// the store needs one.
fn run(cli: &Cli, via: &ViaArgs, what: &'static str, make: impl Fn() -> ProcessorJob) -> Result<RemoteReport> {
    run_with(cli, via, what, true, make)
}

/// [`run`], with the store's secrets from this side or (`store_secrets`
/// false: a replication end, whose secrets are in its job) without.
fn run_with(
    cli: &Cli,
    via: &ViaArgs,
    what: &'static str,
    store_secrets: bool,
    make: impl Fn() -> ProcessorJob,
) -> Result<RemoteReport> {
    let host = via.host()?;
    let policy = via.policy()?;
    let key = via.key()?;
    let t = Duration::from_secs(via.connect_timeout.max(1));
    let go = |job: ProcessorJob| {
        let bar = Bar::new(cli, what);
        let mut o = RemoteOptions::default()
            .command(&via.processor_command)
            .connect_timeout(t)
            .handshake_timeout(t)
            .cancel_token(cancel_on_ctrl_c())
            .on_event(|e| match e {
                ProcessorEvent::Queued(q) => eprintln!("alike: queued: {}", q.reason),
                ProcessorEvent::Warning(w) => eprintln!("alike: warning: {}", w.message),
                ProcessorEvent::Listening(l) => eprintln!("alike: listening on {} (on the processor)", l.address),
                _ => {}
            });
        if let Some(cb) = bar.callback() {
            o = o.progress(cb);
        }
        let r = alike::remote::run_remote(&host, &policy, &key, &job, &o);
        bar.done();
        r
    };
    if !store_secrets {
        return Ok(go(make())?);
    }
    match go(with_secrets(cli, make(), None)?) {
        Err(e)
            if e.kind() == ErrorKind::PassphraseRequired
                && cli.key_file.is_none()
                && std::io::stdin().is_terminal() =>
        {
            let p = passphrase(cli, false)?.context("the store needs a passphrase")?;
            Ok(go(with_secrets(cli, make(), Some(p))?)?)
        }
        r => Ok(r?),
    }
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_default()
}

/// `alike backup --via`.
pub(crate) fn backup(cli: &Cli, a: &crate::commands::BackupArgs, via: &ViaArgs) -> Result<()> {
    let store = store_spec(cli)?;
    let meta = a
        .meta
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').with_context(|| format!("--meta {kv:?}: expected KEY=VALUE"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect::<Result<std::collections::BTreeMap<_, _>>>()?;
    let r = run(cli, via, "backup", || {
        let mut b = BackupJob::new(store.clone(), &a.vm, a.disks.clone());
        b.format = a.format.map(|f| f.name().to_string());
        b.threads = a.threads.threads;
        b.allow_empty = a.allow_empty;
        if a.no_parent {
            b.parent = Some("none".into());
        }
        b.meta = meta.clone();
        ProcessorJob::backup(b)
    })?;
    if a.out.json {
        return print_json(&r.result);
    }
    let v = &r.result;
    let secs = v["elapsed_seconds"].as_f64().unwrap_or_default();
    println!("{}", v["id"].as_str().unwrap_or_default());
    eprintln!(
        "backed up {} disk(s) of {} on {}: read {} in {:.2} s ({:.0} MiB/s), {} new, {} stored",
        v["disks"].as_array().map_or(0, Vec::len),
        a.vm,
        r.host,
        mib(u(v, "read_bytes")),
        secs,
        u(v, "read_bytes") as f64 / 1048576.0 / secs.max(1e-9),
        mib(u(v, "new_bytes")),
        mib(u(v, "new_stored_bytes"))
    );
    Ok(())
}

/// `alike restore --via`.
pub(crate) fn restore(cli: &Cli, a: &crate::commands::RestoreArgs, via: &ViaArgs) -> Result<()> {
    let store = store_spec(cli)?;
    let r = run(cli, via, "restore", || {
        let mut j = RestoreJob::new(store.clone(), &a.which.version, a.disk, &a.output);
        j.vm = a.which.vm.clone();
        j.format = Some(a.format.name().to_string());
        j.force = a.force;
        j.partial = a.partial;
        j.threads = a.threads.threads;
        ProcessorJob::restore(j)
    })?;
    let v = &r.result;
    if a.out.json {
        print_json(v)?;
    } else {
        eprintln!(
            "restored disk {} of {} ({}) to {} on {}: {} data, {} holes, {:.2} s",
            a.disk,
            &v["id"].as_str().unwrap_or_default()[..12.min(v["id"].as_str().unwrap_or_default().len())],
            v["vm"].as_str().unwrap_or_default(),
            a.output.display(),
            r.host,
            mib(u(v, "data_bytes")),
            mib(u(v, "hole_bytes")),
            v["elapsed_seconds"].as_f64().unwrap_or_default()
        );
    }
    let failed = v["failed_ranges"].as_array().map_or(0, Vec::len);
    if failed > 0 {
        bail!("{failed} byte range(s) could not be restored: {}", v["first_error"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// `alike verify --via`.
pub(crate) fn verify(cli: &Cli, a: &crate::commands::VerifyArgs, via: &ViaArgs) -> Result<()> {
    let store = store_spec(cli)?;
    let r = run(cli, via, "verify", || {
        let mut j = VerifyJob::new(store.clone());
        j.full = a.full;
        j.vm = a.vm.clone();
        j.version = a.version.clone();
        ProcessorJob::verify(j)
    })?;
    let v = &r.result;
    let damaged = v["damaged"].as_array().map_or(0, Vec::len);
    if a.out.json {
        print_json(v)?;
    } else {
        eprintln!(
            "{} verify of {} version(s), {} chunks on {}: {}",
            v["depth"].as_str().unwrap_or_default(),
            u(v, "versions"),
            u(v, "chunks"),
            r.host,
            if damaged == 0 { "all good" } else { "DAMAGED" }
        );
    }
    if damaged > 0 {
        bail!("{damaged} damaged object(s) or chunk(s) found");
    }
    Ok(())
}

/// `alike replicate --via`: one end of a replication on a processor.
pub(crate) fn replication_end(cli: &Cli, job: &alike::ReplicationJob, via: &ViaArgs, json: bool) -> Result<()> {
    let what = if job.role == alike::JobRole::Sender { "send" } else { "receive" };
    let r = run_with(cli, via, what, false, || ProcessorJob::replication_end(job.clone()))?;
    let v = &r.result;
    if json {
        return print_json(v);
    }
    println!("{}", u(v, "point"));
    eprintln!(
        "{} of job {} ({}) on {}: point {}, read {}, sent {} in {:.2} s",
        v["role"].as_str().unwrap_or_default(),
        v["job_id"],
        v["vm"].as_str().unwrap_or_default(),
        r.host,
        u(v, "point"),
        mib(u(v, "read_bytes")),
        mib(u(v, "sent_bytes")),
        v["elapsed_seconds"].as_f64().unwrap_or_default()
    );
    Ok(())
}

/// One processor of `--via A,B` (or `--via A`: A twice): where, and how its key is pinned.
pub(crate) struct ViaHost {
    pub(crate) host: Host,
    policy: HostKeyPolicy,
}

/// The sender's and the receiver's processors of `--via A[,B]`. With
/// `--host-key` given once per processor, the first pins A and the second
/// B; otherwise every key given (or the known_hosts file) pins both.
pub(crate) fn via_pair(via: &ViaArgs) -> Result<[ViaHost; 2]> {
    let spec = via.via.as_deref().context("no --via")?;
    let hosts: Vec<&str> = spec.split(',').map(str::trim).collect();
    let (a, b) = match hosts[..] {
        [a] => (a, a),
        [a, b] => (a, b),
        _ => bail!("--via {spec}: one processor, or two (SENDER,RECEIVER)"),
    };
    let (a, b): (Host, Host) = (a.parse()?, b.parse()?);
    let per_host = hosts.len() == 2 && via.known_hosts.is_none() && via.host_key.len() == 2;
    let (pa, pb) = if per_host {
        (HostKeyPolicy::fingerprints(&via.host_key[..1])?, HostKeyPolicy::fingerprints(&via.host_key[1..])?)
    } else {
        (via.policy()?, via.policy()?)
    };
    Ok([ViaHost { host: a, policy: pa }, ViaHost { host: b, policy: pb }])
}

/// Runs a replication's two ends on processors (`alike replicate --via A,B`),
/// with a progress bar of the sender's reading, Ctrl-C stopping both ends,
/// and events on stderr.
pub(crate) fn replicate_on(
    cli: &Cli,
    via: &ViaArgs,
    ends: [ViaHost; 2],
    send: alike::ReplicationJob,
    recv: alike::ReplicationJob,
) -> Result<alike::remote::RemoteReplicationReport> {
    let key = via.key()?;
    let t = Duration::from_secs(via.connect_timeout.max(1));
    let bar = Bar::new(cli, "replicate");
    let mut o = RemoteOptions::default()
        .command(&via.processor_command)
        .connect_timeout(t)
        .handshake_timeout(t)
        .cancel_token(cancel_on_ctrl_c())
        .on_event(|e| match e {
            ProcessorEvent::Queued(q) => eprintln!("alike: queued: {}", q.reason),
            ProcessorEvent::Warning(w) => eprintln!("alike: warning: {}", w.message),
            _ => {}
        });
    if let Some(cb) = bar.callback() {
        o = o.progress(cb);
    }
    let [a, b] = ends;
    let r = alike::remote::replicate_remote(
        &alike::remote::RemoteEnd::new(a.host, a.policy, key.clone(), send),
        &alike::remote::RemoteEnd::new(b.host, b.policy, key, recv),
        &o,
    );
    bar.done();
    Ok(r?)
}
