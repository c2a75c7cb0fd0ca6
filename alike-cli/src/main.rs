//! The `alike` command: a thin layer over the `alike` crate.
//!
//! Scripts depend on its shape: the commands, flags, `--json` keys and exit
//! status (0 success, 1 failure with a one-line error on stderr, 2 usage).

mod alloc;
mod commands;
mod common;
mod files;
mod hyperv;
mod jobs;
mod remote;
mod replicate;
mod serve;
mod xen;
mod xen_replica;

use std::path::PathBuf;

use alike::ErrorKind;
use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "alike", version, about = "Agentless VM backup into a deduplicated, encrypted store")]
struct Cli {
    /// The store: a directory, or a URL (`s3://bucket/prefix`, `file:///…`) (also from ALIKE_STORE).
    /// S3 settings come from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP, AWS_PROFILE.
    #[arg(long, env = "ALIKE_STORE", global = true)]
    store: Option<String>,
    /// Read the passphrase from this file (else ALIKE_PASSWORD, else a prompt on a terminal).
    #[arg(long, global = true)]
    password_file: Option<PathBuf>,
    /// Open the store with this key file instead of a passphrase (with `init`: export the key to it).
    /// A write-only key file (`key add-writer`) backs up but cannot restore.
    #[arg(long, global = true)]
    key_file: Option<PathBuf>,
    /// Directory of the local index cache (default ~/.cache/alike; also ALIKE_CACHE_DIR).
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a new store.
    Init(commands::InitArgs),
    /// Back up disk images or block devices as a new version of a VM.
    Backup(commands::BackupArgs),
    /// List versions.
    Versions(commands::VersionsArgs),
    /// Restore one disk of a version to an image file (raw, VHD or VHDX) or a block device.
    Restore(commands::RestoreArgs),
    /// List the volumes of a version (partitions, LVM2 logical volumes, filesystems),
    /// or a directory or file in one of them, straight from the store: no restore, no mount.
    Ls(files::LsArgs),
    /// Extract files and directories of a version into a directory, straight from the
    /// store: modes, times, symlinks and hard links kept; nothing written outside DIR.
    /// Exit status 1 when any entry could not be extracted (the rest are).
    Extract(files::ExtractArgs),
    /// Show store figures: logical and stored bytes, dedup and compression ratios.
    Stats(common::JsonArg),
    /// Check that versions restore: quick (structure, index, trailers) or --full (every byte).
    /// Exit status 0 only when nothing is damaged.
    Verify(commands::VerifyArgs),
    /// Copy versions to a vault store (Offsite Vaulting): only what the vault lacks,
    /// deduplicated, compressed and sealed with the vault's own key.
    Vault(commands::VaultArgs),
    /// Remove versions a retention policy does not keep (pinned versions always stay).
    Prune(commands::PruneArgs),
    /// Reclaim space: delete data no version needs (safe while backups run).
    Gc(commands::GcArgs),
    /// Remove one version (its data goes at the next gc).
    Forget(commands::IdArg),
    /// Protect a version from every retention policy.
    Pin(commands::IdArg),
    /// Remove a version's protection.
    Unpin(commands::IdArg),
    /// Remove locks left by processes that are gone, and list the live ones.
    Unlock(common::JsonArg),
    /// Serve disks of a version over NBD (read-only, or writable through a
    /// copy-on-write overlay) until Ctrl-C: qemu-img, nbdcopy, nbdinfo, nbdfuse…
    /// read it without a restore. Prints one line saying where it listens.
    ServeNbd(commands::ServeNbdArgs),
    /// Replicate a VM's disks onto a replica (a folder of VHDX files), sending only
    /// the chunks it lacks: both ends here (--to-dir DIR DISK…), or one end of two
    /// processes (--listen/--connect, or --job FILE). Prints the new point's id.
    Replicate(Box<replicate::ReplicateArgs>),
    /// A replica's points, export of a point's disk, the history of runs.
    Replica(replicate::ReplicaArgs),
    /// XenServer/XCP-ng: list a pool's VMs, back one up (CBT incremental), restore a version as a new VM.
    Xen(xen::XenArgs),
    /// Hyper-V: list a host's VMs, back one up (recovery checkpoints, RCT incremental, disks over SMB).
    Hyperv(hyperv::HypervArgs),
    /// Keys of the store: `key add-writer --output FILE` exports a write-only key.
    Key(commands::KeyArgs),
    /// Jobs of a configuration file (docs/config.md) on processors made for
    /// them: run, sweep leftovers, check the file.
    Job(jobs::JobArgs),
    /// Rebuild the store's index from pack trailers.
    RebuildIndex(common::JsonArg),
    /// Run the daemon: the scheduler, the REST API, `/metrics` (OpenMetrics) and the
    /// web Manager, configured by a TOML file (docs/serve.md), until Ctrl-C or SIGTERM.
    Serve(serve::ServeArgs),
    /// Run as a processor: say hello, read one job from standard input (the
    /// processor protocol, docs/processor-protocol.md), run it, stream its
    /// events to standard output. Started over SSH by `--via`.
    #[command(hide = true)]
    Processor(remote::ProcessorArgs),
}

fn main() {
    alloc::tune();
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALIKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("alike: error: {msg}");
        let cancelled = e.downcast_ref::<alike::Error>().is_some_and(|e| e.kind() == ErrorKind::Cancelled);
        std::process::exit(if cancelled { 130 } else { 1 });
    }
}

fn run(cli: &Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Init(a) => commands::init(cli, a),
        Cmd::Backup(a) => commands::backup(cli, a),
        Cmd::Versions(a) => commands::versions(cli, a),
        Cmd::Restore(a) => commands::restore(cli, a),
        Cmd::Ls(a) => files::ls(cli, a),
        Cmd::Extract(a) => files::extract(cli, a),
        Cmd::Stats(a) => commands::stats(cli, a),
        Cmd::Verify(a) => commands::verify(cli, a),
        Cmd::Vault(a) => commands::vault(cli, a),
        Cmd::Prune(a) => commands::prune(cli, a),
        Cmd::Gc(a) => commands::gc(cli, a),
        Cmd::Forget(a) => commands::forget(cli, a),
        Cmd::Pin(a) => commands::pin(cli, a),
        Cmd::Unpin(a) => commands::unpin(cli, a),
        Cmd::Unlock(a) => commands::unlock(cli, a),
        Cmd::ServeNbd(a) => commands::serve_nbd(cli, a),
        Cmd::Replicate(a) => replicate::replicate(cli, a),
        Cmd::Replica(a) => replicate::replica(cli, a),
        Cmd::Xen(a) => xen::run(cli, a),
        Cmd::Hyperv(a) => hyperv::run(cli, a),
        Cmd::Key(a) => commands::key(cli, a),
        Cmd::Job(a) => jobs::run(cli, a),
        Cmd::RebuildIndex(a) => commands::rebuild_index(cli, a),
        Cmd::Serve(a) => serve::serve(a),
        Cmd::Processor(a) => remote::processor(a),
    }
}
