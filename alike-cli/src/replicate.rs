//! `alike replicate` and `alike replica …`: one function per command, thin
//! over the facade's replication API.

use std::io::Read;
use std::path::PathBuf;

use alike::{
    EndOptions, Flow, JobLink, JobReplica, JobRole, JobSecret, JobSeed, JobSource, JobStore, Replica,
    ReplicaExportOptions, ReplicateOptions, ReplicationJob, Store,
};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::Cli;
use crate::common::{JsonArg, builder, long, mib, parse_rate, passphrase, print_json, read_secret};

/// `alike replicate`.
#[derive(Args, Debug)]
pub(crate) struct ReplicateArgs {
    /// The source VM's name (the replica holds it).
    #[arg(long, required_unless_present = "job")]
    vm: Option<String>,
    /// The replica: a folder of VHDX files, made on the first run. With
    /// DISKs and no --listen/--connect, both ends run in this process;
    /// without DISKs this process is the receiving end.
    #[arg(long, value_name = "DIR")]
    to_dir: Option<PathBuf>,
    /// The VM's disks, in order (raw images, block devices, VHD, VHDX/AVHDX):
    /// this process reads them (the sending end).
    disks: Vec<PathBuf>,
    /// How a new replica cuts disks (`cdc:MIN/AVG/MAX` in KiB, `fixed:KIB`;
    /// default cdc:16/32/64); both ends of two processes must say the same.
    #[arg(long, value_name = "SPEC")]
    chunking: Option<String>,
    /// After the commit keep only the newest N points.
    #[arg(long, value_name = "N")]
    keep: Option<usize>,
    /// Bytes per second on the wire (500K, 20M, 1G…).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    bwlimit: Option<u64>,
    /// One-pass backup and replication: the disks are read once, into a
    /// new version in this store (a path or URL; its passphrase as for
    /// --store: --password-file, --key-file, ALIKE_PASSWORD). In two
    /// processes, the end closer to the store: the sender in push, the
    /// receiver in pull.
    #[arg(long, value_name = "STORE")]
    backup_to: Option<String>,
    /// Seed a replica's first point from a version in a store the receiving
    /// end can read, `STORE:VERSION` (`latest` for the VM's newest): only
    /// what differs from it is sent.
    #[arg(long, value_name = "STORE:VERSION")]
    seed_from: Option<String>,
    /// Two processes: listen for the other end on ADDR[:PORT] (one connection).
    #[arg(long, value_name = "ADDR[:PORT]", conflicts_with = "connect")]
    listen: Option<String>,
    /// Two processes: dial the other end at HOST[:PORT].
    #[arg(long, value_name = "HOST[:PORT]")]
    connect: Option<String>,
    /// The port where --listen or --connect has none.
    #[arg(long, default_value_t = alike::DEFAULT_PORT)]
    port: u16,
    /// Two processes: the job's secret, the same on both ends (64 hex
    /// digits, or any text both share); `-` reads it from stdin. Never on
    /// the command line.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Two processes: the job's id, the same on both ends (default: the VM's name).
    #[arg(long, value_name = "ID")]
    job_id: Option<String>,
    /// The sending end of two processes: keep change-tracking state here
    /// between runs, so a later run reads only what changed.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Two processes: how long to wait for (or keep dialling) the other end, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
    /// Run one end from a job description (`docs/replication-job.md`): a
    /// file, or `-` for stdin. Everything else comes from the job.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["to_dir", "disks", "listen", "connect"])]
    job: Option<PathBuf>,
    /// With `--via SENDER,RECEIVER` (two processors; one, `--via A`, runs
    /// both ends as one process there where it can: image DISKs onto
    /// --to-dir, or --source-xen onto --target-xen):
    /// who dials — push (the sender dials the receiver at its SSH address,
    /// --port) or pull (the receiver dials the sender).
    #[arg(long, value_enum, default_value_t = FlowArg::Push)]
    flow: FlowArg,
    /// Run the end on a processor over SSH (`--job` or `--listen/--connect`
    /// only): the job's paths are the processor's; its secret and store
    /// passphrases travel in the SSH channel only. `--via A,B` with
    /// `--to-dir DIR DISK…` runs the whole replication on processors: the
    /// sender on A (the DISKs are A's), the receiver on B (DIR is B's),
    /// with a fresh job secret handed to each over SSH. `--via A,B` with
    /// `--source-xen … --target-xen …` does the same for a Xen VM: the
    /// sender on A reads the source pool, the receiver on B writes the
    /// replica VM (--replica-state is B's path, --state-dir A's).
    #[command(flatten)]
    via: crate::remote::ViaArgs,
    /// From a VM of a XenServer/XCP-ng pool onto its replica VM on another
    /// (`docs/replica-xen.md`).
    #[command(flatten)]
    xen: crate::xen_replica::XenReplicateArgs,
    #[command(flatten)]
    out: JsonArg,
}

/// `--flow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FlowArg {
    /// The sender dials the receiver.
    Push,
    /// The receiver dials the sender.
    Pull,
}

/// Reads a file (or stdin for `-`) of at most `max` bytes.
fn read_bounded(path: &std::path::Path, max: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(max as u64 + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {what} from stdin"))?;
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("reading {what} file {}", path.display()))?;
        if !f.metadata()?.is_file() {
            bail!("{what} file {} is not a regular file", path.display());
        }
        f.take(max as u64 + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {what} file {}", path.display()))?;
    }
    if buf.len() > max {
        bail!("{what} {} is larger than {} KiB", path.display(), max >> 10);
    }
    Ok(buf)
}

/// A store named on the command line, with the global secret options.
fn job_store(cli: &Cli, location: &str) -> Result<JobStore> {
    let mut s = JobStore::new(location);
    s.cache_dir.clone_from(&cli.cache_dir);
    if let Some(k) = &cli.key_file {
        s.key_file = Some(k.clone());
    } else if let Some(f) = &cli.password_file {
        s.password_file = Some(f.clone());
    } else if let Ok(p) = std::env::var("ALIKE_PASSWORD") {
        s.password = Some(alike::JobPassword(p));
    }
    Ok(s)
}

/// Opens a store named on the command line (asking for a passphrase only if it needs one).
fn open_store(cli: &Cli, location: &str) -> Result<Store> {
    let mut b = builder(cli);
    if cli.key_file.is_none() {
        if let Some(p) = cli.password_file.as_ref().map(|f| read_secret(f, "password")).transpose()? {
            b.passphrase(p);
        } else if let Ok(p) = std::env::var("ALIKE_PASSWORD") {
            b.passphrase(p);
        }
    }
    match b.open_at(location) {
        Err(e) if e.kind() == alike::ErrorKind::PassphraseRequired => match passphrase(cli, false)? {
            Some(p) => Ok(b.passphrase(p).open_at(location)?),
            None => Err(e.into()),
        },
        r => Ok(r?),
    }
}

fn split_seed(spec: &str) -> Result<(&str, &str)> {
    spec.rsplit_once(':')
        .filter(|(s, v)| !s.is_empty() && !v.is_empty() && !v.contains('/'))
        .with_context(|| format!("--seed-from {spec:?}: expected STORE:VERSION (a version id, prefix, or latest)"))
}

pub(crate) fn replicate(cli: &Cli, a: &ReplicateArgs) -> Result<()> {
    // One end, here or (with --via) on a processor over SSH.
    let end = |job: &ReplicationJob| match a.via.via {
        Some(_) => crate::remote::replication_end(cli, job, &a.via, a.out.json),
        None => run_job(cli, job, a.out.json),
    };
    if let Some(f) = &a.job {
        let text = read_bounded(f, alike::MAX_JOB_BYTES, "job description")?;
        let job = ReplicationJob::from_json(&text)?;
        return end(&job);
    }
    let vm = a.vm.clone().context("--vm is required")?;
    if a.xen.source_xen.is_some() {
        if a.to_dir.is_some() || !a.disks.is_empty() || a.listen.is_some() || a.connect.is_some() {
            bail!(
                "--source-xen replicates onto --target-xen in this process: no --to-dir, DISKs or --listen/--connect"
            );
        }
        if a.via.via.is_some() {
            if a.backup_to.is_some() || a.seed_from.is_some() {
                bail!("--backup-to and --seed-from are not available with --via for Xen replicas yet");
            }
            let (src, replica) = crate::xen_replica::remote_ends(&a.xen)?;
            return on_processors_with(
                cli,
                a,
                &vm,
                vec![JobSource::Xen { pool: src }],
                JobReplica::Xen(Box::new(replica)),
            );
        }
        if a.backup_to.is_some() && a.seed_from.is_some() {
            bail!("--backup-to and --seed-from together: a one-pass run's version is in the store already");
        }
        let seed = match &a.seed_from {
            Some(spec) => {
                let (s, v) = split_seed(spec)?;
                let store = open_store(cli, s)?;
                let version = store.version(v, Some(&vm))?;
                Some((store, version))
            }
            None => None,
        };
        let backup = a.backup_to.as_deref().map(|s| open_store(cli, s)).transpose()?;
        let run = crate::xen_replica::XenRun {
            vm: &vm,
            chunking: a.chunking.as_deref(),
            keep: a.keep,
            bwlimit: a.bwlimit,
            seed: seed.as_ref().map(|(s, v)| (s, v)),
            backup_to: backup.as_ref(),
            json: a.out.json,
        };
        return crate::xen_replica::replicate(cli, &a.xen, &run);
    }
    if a.listen.is_some() || a.connect.is_some() {
        let job = two_process_job(cli, a, &vm)?;
        return end(&job);
    }
    if a.via.via.is_some() {
        return on_processors(cli, a, &vm);
    }
    if a.flow != FlowArg::Push {
        bail!("--flow is for --via SENDER,RECEIVER (one end of two processes takes its flow from --listen/--connect)");
    }
    let (Some(dir), false) = (&a.to_dir, a.disks.is_empty()) else {
        bail!(
            "give --to-dir DIR and the VM's disks (both ends here), or --listen/--connect for one end of two processes"
        );
    };
    if a.state_dir.is_some() || a.secret_file.is_some() || a.job_id.is_some() {
        bail!("--state-dir, --secret-file and --job-id are for one end of two processes (--listen/--connect)");
    }
    let replica = match &a.chunking {
        Some(c) => Replica::open_or_create_with(dir, &vm, c.parse()?)?,
        None => Replica::open_or_create(dir, &vm)?,
    };
    let seed = match &a.seed_from {
        Some(spec) => {
            let (s, v) = split_seed(spec)?;
            let store = open_store(cli, s)?;
            let version = store.version(v, Some(&vm))?;
            Some((store, version))
        }
        None => None,
    };
    let backup = a.backup_to.as_deref().map(|s| open_store(cli, s)).transpose()?;
    let r = long(cli, "replicate", |cb, cancel| {
        let mut o = ReplicateOptions::default().cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        if let Some(k) = a.keep {
            o = o.keep(k);
        }
        if let Some(b) = a.bwlimit {
            o = o.bwlimit(b);
        }
        if let Some((store, version)) = &seed {
            o = o.seed(store, version);
        }
        if let Some(store) = &backup {
            o = o.backup_to(store, alike::BackupOptions::default());
        }
        alike::replicate_images(&vm, &a.disks, &replica, &o)
    })?;
    if a.out.json {
        return print_json(&r);
    }
    println!("{}", r.point);
    eprintln!(
        "replicated {} disk(s) of {} as point {}: read {}, sent {} ({} of chunks the replica lacked) in {:.2} s{}",
        r.disks.len(),
        vm,
        r.point,
        mib(r.read_bytes),
        mib(r.sent_bytes),
        mib(r.needed_bytes),
        r.elapsed_seconds,
        r.backup.as_ref().map(|b| format!("; stored version {}", b.version.id)).unwrap_or_default()
    );
    Ok(())
}

/// The job of one end of two processes, from the command line.
fn two_process_job(cli: &Cli, a: &ReplicateArgs, vm: &str) -> Result<ReplicationJob> {
    let role = match (&a.to_dir, a.disks.is_empty()) {
        (Some(_), true) => JobRole::Receiver,
        (None, false) => JobRole::Sender,
        _ => bail!(
            "one end of two processes is either the receiver (--to-dir DIR, no disks) or the sender (disks, no --to-dir)"
        ),
    };
    let secret_path =
        a.secret_file.as_deref().context("two processes need the job's secret: --secret-file FILE (or - for stdin)")?;
    let secret = JobSecret::from_text(&read_bounded(secret_path, 64 << 10, "secret")?)?;
    let mut job = ReplicationJob::new(a.job_id.clone().unwrap_or_else(|| vm.to_owned()), vm, role, secret);
    job.port = a.port;
    job.flow = match (role, a.connect.is_some()) {
        (JobRole::Sender, true) | (JobRole::Receiver, false) => Flow::Push,
        _ => Flow::Pull,
    };
    job.peer.clone_from(&a.connect);
    job.listen.clone_from(&a.listen);
    job.bwlimit = a.bwlimit;
    job.chunking.clone_from(&a.chunking);
    job.connect_timeout_seconds = Some(a.timeout);
    if let Some(s) = &a.backup_to {
        job.backup_to = Some(job_store(cli, s)?);
    }
    match role {
        JobRole::Sender => {
            job.disks = a.disks.iter().map(|p| JobSource::Image { path: p.clone() }).collect();
            job.state_dir.clone_from(&a.state_dir);
        }
        JobRole::Receiver => {
            job.replica = Some(JobReplica::Dir { path: a.to_dir.clone().context("--to-dir")? });
            job.keep = a.keep;
            if let Some(spec) = &a.seed_from {
                let (s, v) = split_seed(spec)?;
                job.seed = Some(JobSeed::new(job_store(cli, s)?, v));
            }
        }
    }
    job.validate()?;
    Ok(job)
}

/// Runs one end and prints its report.
fn run_job(cli: &Cli, job: &ReplicationJob, json: bool) -> Result<()> {
    let what = if job.role == JobRole::Sender { "send" } else { "receive" };
    let r = long(cli, what, |cb, cancel| {
        let mut o = EndOptions::default().cancel_token(cancel).on_listening(|a| eprintln!("alike: listening on {a}"));
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        alike::run_end(job, JobLink::FromJob, &o)
    })?;
    if json {
        return print_json(&r);
    }
    println!("{}", r.point);
    eprintln!(
        "{} of job {:?} ({}): point {}, read {}, sent {} in {:.2} s",
        r.role,
        r.job_id,
        r.vm,
        r.point,
        mib(r.read_bytes),
        mib(r.sent_bytes),
        r.elapsed_seconds
    );
    Ok(())
}

/// `alike replica`.
#[derive(Args, Debug)]
pub(crate) struct ReplicaArgs {
    #[command(subcommand)]
    cmd: ReplicaCmd,
}

#[derive(Subcommand, Debug)]
enum ReplicaCmd {
    /// List a replica's points, oldest first.
    List {
        /// The replica's folder.
        dir: PathBuf,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Write one disk of a point as a raw image.
    Export {
        /// The replica's folder.
        dir: PathBuf,
        /// The point.
        #[arg(long)]
        point: u64,
        /// The disk (0-based).
        #[arg(long)]
        disk: usize,
        /// The raw image to write.
        #[arg(long)]
        output: PathBuf,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        out: JsonArg,
    },
    /// The history of runs into a replica (point, bytes read and sent, duration, result).
    History {
        /// The replica's folder.
        dir: PathBuf,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Discard what an unfinished first run kept to resume.
    Abandon {
        /// The replica's folder.
        dir: PathBuf,
    },
    /// Replica VMs on a XenServer/XCP-ng pool.
    #[command(flatten)]
    Xen(Box<crate::xen_replica::XenReplicaCmd>),
}

pub(crate) fn replica(cli: &Cli, a: &ReplicaArgs) -> Result<()> {
    match &a.cmd {
        ReplicaCmd::List { dir, out } => {
            let points = Replica::open(dir)?.points()?;
            if out.json {
                return print_json(&points);
            }
            for p in points {
                let sizes: Vec<String> = p.disks.iter().map(|d| mib(d.size)).collect();
                println!("{:>6}  {}  {}", p.point, p.time, sizes.join(", "));
            }
            Ok(())
        }
        ReplicaCmd::Export { dir, point, disk, output, force, out } => {
            let replica = Replica::open(dir)?;
            let r = long(cli, "export", |cb, cancel| {
                let mut o = ReplicaExportOptions::default();
                o.force(*force);
                let mut run = alike::RunOptions::default();
                run.cancel = cancel;
                if let Some(cb) = cb {
                    run.progress = Some(std::sync::Arc::new(cb));
                }
                o.run(run);
                replica.export(*point, *disk, output, &o)
            })?;
            if out.json {
                return print_json(&r);
            }
            eprintln!("exported point {} disk {} to {} ({})", r.point, r.disk, output.display(), mib(r.size));
            Ok(())
        }
        ReplicaCmd::History { dir, out } => {
            let h = Replica::open(dir)?.history()?;
            if out.json {
                return print_json(&h);
            }
            for r in h {
                println!(
                    "{}  {:<9}  point {:<6}  read {:>12}  sent {:>12}  {:.2} s{}",
                    r.started,
                    r.result,
                    r.point.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    mib(r.read_bytes),
                    mib(r.sent_bytes),
                    r.elapsed_seconds,
                    r.error.map(|e| format!("  ({e})")).unwrap_or_default()
                );
            }
            Ok(())
        }
        ReplicaCmd::Xen(cmd) => crate::xen_replica::replica(cli, cmd),
        ReplicaCmd::Abandon { dir } => {
            let done = Replica::open(dir)?.discard_partial()?;
            eprintln!("{}", if done { "discarded the unfinished first run" } else { "nothing to discard" });
            Ok(())
        }
    }
}

/// `alike replicate --via A[,B] --to-dir DIR DISK…`: the sender on A, the
/// receiver on B (A again when only one is named), over SSH.
fn on_processors(cli: &Cli, a: &ReplicateArgs, vm: &str) -> Result<()> {
    let (Some(dir), false) = (&a.to_dir, a.disks.is_empty()) else {
        bail!(
            "--via SENDER,RECEIVER runs a whole replication: give --to-dir DIR (the receiver's) and the DISKs (the sender's)"
        );
    };
    let disks = a.disks.iter().map(|p| JobSource::Image { path: p.clone() }).collect();
    on_processors_with(cli, a, vm, disks, JobReplica::Dir { path: dir.clone() })
}

/// `--via A[,B]` with the sender's sources and the receiver's replica.
fn on_processors_with(
    cli: &Cli,
    a: &ReplicateArgs,
    vm: &str,
    disks: Vec<JobSource>,
    replica: JobReplica,
) -> Result<()> {
    if a.secret_file.is_some() || a.seed_from.is_some() || a.backup_to.is_some() {
        bail!(
            "--secret-file, --seed-from and --backup-to are not for --via SENDER,RECEIVER (the secret is made fresh)"
        );
    }
    let flow = match a.flow {
        FlowArg::Push => Flow::Push,
        FlowArg::Pull => Flow::Pull,
    };
    let ends = crate::remote::via_pair(&a.via)?;
    // The listening end listens on the address the orchestrator reaches it at.
    let listen_host = match flow {
        Flow::Push => ends[1].host.host.clone(),
        _ => ends[0].host.host.clone(),
    };
    let job_id = a.job_id.clone().unwrap_or_else(|| vm.to_string());
    let (mut send, mut recv) = alike::remote::replication_pair(&job_id, vm, flow, &listen_host, a.port)?;
    send.disks = disks;
    send.state_dir.clone_from(&a.state_dir);
    recv.replica = Some(replica);
    recv.keep = a.keep;
    for j in [&mut send, &mut recv] {
        j.chunking.clone_from(&a.chunking);
        j.bwlimit = a.bwlimit;
        j.connect_timeout_seconds = Some(a.timeout);
    }
    let r = crate::remote::replicate_on(cli, &a.via, ends, send, recv)?;
    if a.out.json {
        return print_json(&r);
    }
    println!("{}", r.point);
    eprintln!(
        "replicated {} ({}, {}) from {} to {} as point {}: read {}, sent {} in {:.2} s",
        vm,
        r.job_id,
        r.flow,
        r.sender.host,
        r.receiver.host,
        r.point,
        mib(r.read_bytes),
        mib(r.sent_bytes),
        r.elapsed.as_secs_f64()
    );
    Ok(())
}
