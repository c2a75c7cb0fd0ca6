//! The `alike` command: a thin layer over the `alike` crate.
//!
//! Scripts depend on its shape: the commands, flags, `--json` keys and exit
//! status (0 success, 1 failure with a one-line error on stderr, 2 usage).

mod alloc;
mod xen;

use std::io::IsTerminal;
use std::path::PathBuf;

use alike::{BackupOptions, CancelToken, ErrorKind, Parent, Progress, RestoreOptions, Store, StoreBuilder};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

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
    Init {
        /// Store data unencrypted (encryption is the default).
        #[arg(long)]
        no_encryption: bool,
        /// Block size in bytes: a power of two from 65536 to 4194304.
        #[arg(long, default_value_t = 65536)]
        block_size: u32,
        /// zstd level (0 = no compression).
        #[arg(long, default_value_t = 3)]
        compression_level: i32,
    },
    /// Back up disk images or block devices as a new version of a VM.
    Backup {
        /// VM name.
        #[arg(long)]
        vm: String,
        /// The VM's disks, in order: raw images, block devices, VHD or VHDX/AVHDX files.
        #[arg(required = true)]
        disks: Vec<PathBuf>,
        /// Image format of the disks (default: detected from each file's signature).
        #[arg(long, value_name = "raw|vhd|vhdx")]
        format: Option<alike::ImageFormat>,
        /// Free-form metadata recorded with the version (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Do not build on the VM's previous version.
        #[arg(long)]
        no_parent: bool,
        /// Worker threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List versions.
    Versions {
        /// Only this VM's versions.
        #[arg(long)]
        vm: Option<String>,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Restore one disk of a version to an image file (raw, VHD or VHDX) or a block device.
    Restore {
        /// Version id (or unique prefix), or `latest` (with --vm).
        version: String,
        /// VM name (needed with `latest`).
        #[arg(long)]
        vm: Option<String>,
        /// Disk position, from 0.
        #[arg(long, default_value_t = 0)]
        disk: u32,
        /// Output path.
        #[arg(long, short)]
        output: PathBuf,
        /// Output format: a sparse raw image, a dynamic VHD or a dynamic VHDX.
        #[arg(long, value_name = "raw|vhd|vhdx", default_value = "raw")]
        format: alike::ImageFormat,
        /// Go on past damage: write what can be read, leave zeroes elsewhere, list the
        /// unreadable ranges, and exit 1 if there were any.
        #[arg(long)]
        partial: bool,
        /// Worker threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show store figures: logical and stored bytes, dedup and compression ratios.
    Stats {
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check that versions restore: quick (structure, index, trailers) or --full (every byte).
    /// Exit status 0 only when nothing is damaged.
    Verify {
        /// Read, authenticate and re-hash every byte, and check every pack's name.
        #[arg(long)]
        full: bool,
        /// Only this VM's versions.
        #[arg(long)]
        vm: Option<String>,
        /// Only this version (id, prefix, or `latest` with --vm).
        #[arg(long)]
        version: Option<String>,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Copy versions to a vault store (Offsite Vaulting): only what the vault lacks,
    /// deduplicated, compressed and sealed with the vault's own key.
    Vault {
        /// The vault store, a directory or URL (its passphrase: ALIKE_VAULT_PASSWORD or --vault-password-file).
        #[arg(long)]
        to: String,
        /// Create the vault store if there is none at --to.
        #[arg(long)]
        init: bool,
        /// With --init: the vault shares the source store's master key (by explicit
        /// choice; default: a key of its own). It still has its own passphrase.
        #[arg(long, requires = "init")]
        share_key: bool,
        /// Read the vault's passphrase from this file.
        #[arg(long)]
        vault_password_file: Option<PathBuf>,
        /// Directory of the vault's local index cache (default: beside the source's cache).
        #[arg(long)]
        vault_cache_dir: Option<PathBuf>,
        /// Only this VM.
        #[arg(long)]
        vm: Option<String>,
        /// Only the newest N versions of each VM.
        #[arg(long)]
        last: Option<usize>,
        /// The vault's own retention, applied after the copy: keep the newest N versions…
        #[arg(long)]
        keep_last: Option<u32>,
        /// … the newest of each of the last N days…
        #[arg(long)]
        keep_daily: Option<u32>,
        /// … weeks…
        #[arg(long)]
        keep_weekly: Option<u32>,
        /// … months…
        #[arg(long)]
        keep_monthly: Option<u32>,
        /// … years.
        #[arg(long)]
        keep_yearly: Option<u32>,
        /// Read from the source at most this many bytes per second (suffixes K, M, G: powers of 1024).
        #[arg(long, value_parser = parse_rate)]
        bwlimit: Option<u64>,
        /// Worker threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove versions a retention policy does not keep (pinned versions always stay).
    Prune {
        /// Only this VM (default: each VM on its own).
        #[arg(long)]
        vm: Option<String>,
        /// Keep the newest N versions.
        #[arg(long, default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest version of each of the last N hours.
        #[arg(long, default_value_t = 0)]
        keep_hourly: u32,
        /// … days.
        #[arg(long, default_value_t = 0)]
        keep_daily: u32,
        /// … weeks.
        #[arg(long, default_value_t = 0)]
        keep_weekly: u32,
        /// … months.
        #[arg(long, default_value_t = 0)]
        keep_monthly: u32,
        /// … years.
        #[arg(long, default_value_t = 0)]
        keep_yearly: u32,
        /// Show what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Reclaim space: delete data no version needs (safe while backups run).
    Gc {
        /// Count only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove one version (its data goes at the next gc).
    Forget {
        /// Version id or unique prefix.
        version: String,
    },
    /// Protect a version from every retention policy.
    Pin {
        /// Version id or unique prefix.
        version: String,
    },
    /// Remove a version's protection.
    Unpin {
        /// Version id or unique prefix.
        version: String,
    },
    /// Remove locks left by processes that are gone, and list the live ones.
    Unlock {
        /// Print a JSON array of the live locks.
        #[arg(long)]
        json: bool,
    },
    /// XenServer/XCP-ng: list a pool's VMs, back one up (CBT incremental), restore a version as a new VM.
    Xen(xen::XenArgs),
    /// Rebuild the store's index from pack trailers.
    RebuildIndex {
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    alloc::tune();
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALIKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("alike: error: {msg}");
        let cancelled = e.downcast_ref::<alike::Error>().is_some_and(|e| e.kind() == ErrorKind::Cancelled);
        std::process::exit(if cancelled { 130 } else { 1 });
    }
}

fn passphrase(cli: &Cli, confirm: bool) -> Result<Option<String>> {
    if let Some(f) = &cli.password_file {
        let s = std::fs::read_to_string(f).with_context(|| format!("reading password file {}", f.display()))?;
        return Ok(Some(s.trim_end_matches(['\n', '\r']).to_string()));
    }
    if let Ok(p) = std::env::var("ALIKE_PASSWORD") {
        return Ok(Some(p));
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let p = rpassword::prompt_password("Store passphrase: ")?;
        if confirm && rpassword::prompt_password("Repeat passphrase: ")? != p {
            bail!("the passphrases do not match");
        }
        return Ok(Some(p));
    }
    Ok(None)
}

fn builder(cli: &Cli) -> StoreBuilder {
    let mut b = Store::builder();
    if let Some(d) = &cli.cache_dir {
        b.cache_dir(d);
    }
    if let Some(k) = &cli.key_file {
        b.key_file(k);
    }
    b
}

fn store_path(cli: &Cli) -> Result<String> {
    cli.store.clone().context("no store given: use --store PATH|URL or set ALIKE_STORE")
}

fn open(cli: &Cli) -> Result<Store> {
    let path = store_path(cli)?;
    let mut b = builder(cli);
    if cli.key_file.is_none() {
        // Ask for a passphrase only if the store turns out to need one.
        if let Some(p) = cli
            .password_file
            .is_some()
            .then(|| passphrase(cli, false))
            .transpose()?
            .flatten()
            .or_else(|| std::env::var("ALIKE_PASSWORD").ok())
        {
            b.passphrase(p);
        }
    }
    match b.open_at(&path) {
        Err(e) if e.kind() == ErrorKind::PassphraseRequired => match passphrase(cli, false)? {
            Some(p) => Ok(b.passphrase(p).open_at(&path)?),
            None => Err(e.into()),
        },
        r => Ok(r?),
    }
}

struct Bar {
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    fn new(cli: &Cli, what: &'static str) -> Bar {
        if cli.quiet || !std::io::stderr().is_terminal() {
            return Bar { bar: None };
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what);
        Bar { bar: Some(bar) }
    }
    fn callback(&self) -> Option<impl Fn(&Progress) + Send + Sync + 'static> {
        let bar = self.bar.clone()?;
        Some(move |p: &Progress| {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
        })
    }
    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A token that Ctrl-C cancels: the operation stops at the next block,
/// removes its unfinished spool files, and the command exits with status 130.
fn cancel_on_ctrl_c() -> CancelToken {
    let token = CancelToken::new();
    let t = token.clone();
    // Only one handler per process; a second call (never made) would fail harmlessly.
    let _ = ctrlc::set_handler(move || t.cancel());
    token
}

fn alike_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_rate(s: &str) -> std::result::Result<u64, String> {
    let (num, mult) = match s.trim().to_ascii_uppercase() {
        t if t.ends_with('K') => (t[..t.len() - 1].to_string(), 1u64 << 10),
        t if t.ends_with('M') => (t[..t.len() - 1].to_string(), 1 << 20),
        t if t.ends_with('G') => (t[..t.len() - 1].to_string(), 1 << 30),
        t => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a rate like 500K, 20M or 1G"))?;
    if n.is_nan() || n <= 0.0 {
        return Err(format!("{s:?}: the rate must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

fn vault_store(
    cli: &Cli,
    source: &Store,
    to: &str,
    init: bool,
    share_key: bool,
    password_file: Option<&PathBuf>,
    cache: Option<&PathBuf>,
) -> Result<Store> {
    let mut b = Store::builder();
    if let Some(c) = cache.or(cli.cache_dir.as_ref()) {
        b.cache_dir(c);
    }
    let pass = match password_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading vault password file {}", f.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        ),
        None => std::env::var("ALIKE_VAULT_PASSWORD").ok(),
    };
    if let Some(p) = &pass {
        b.passphrase(p);
    }
    match b.open_at(to) {
        Err(e) if e.kind() == ErrorKind::NotAStore && init => {
            if pass.is_none() {
                bail!(
                    "creating the vault needs its own passphrase: set ALIKE_VAULT_PASSWORD or use --vault-password-file"
                );
            }
            if share_key {
                b.share_key_of(source)?;
            }
            let s = b.create_at(to)?;
            eprintln!(
                "created vault store {} at {to}{}",
                s.id(),
                if share_key { " (sharing the source's key)" } else { " (with a key of its own)" }
            );
            Ok(s)
        }
        Err(e) if e.kind() == ErrorKind::NotAStore => {
            Err(anyhow::Error::from(e).context("no vault store there (use --init to create one)"))
        }
        r => Ok(r?),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Init { no_encryption, block_size, compression_level } => {
            let path = store_path(&cli)?;
            let mut b = builder(&cli);
            b.block_size(*block_size).compression_level((*compression_level > 0).then_some(*compression_level));
            if *no_encryption {
                b.no_encryption();
            } else if cli.key_file.is_none()
                || cli.password_file.is_some()
                || std::env::var_os("ALIKE_PASSWORD").is_some()
            {
                let p = passphrase(&cli, true)?.context("an encrypted store needs a passphrase: set ALIKE_PASSWORD, use --password-file, run on a terminal, or pass --no-encryption")?;
                if p.is_empty() {
                    bail!("the passphrase is empty");
                }
                b.passphrase(p);
            }
            let s = b.create_at(&path)?;
            eprintln!(
                "created store {} at {} ({}, {} KiB blocks)",
                s.id(),
                path,
                if s.is_encrypted() { "encrypted" } else { "unencrypted" },
                s.block_size() / 1024
            );
        }
        Cmd::Backup { vm, disks, format, meta, no_parent, threads, json } => {
            let store = open(&cli)?;
            let bar = Bar::new(&cli, "backup");
            let mut opts = BackupOptions::default().threads(*threads).cancel_token(cancel_on_ctrl_c());
            if let Some(cb) = bar.callback() {
                opts = opts.progress(cb);
            }
            if *no_parent {
                opts = opts.parent(Parent::None);
            }
            let mut info = alike::VmInfo::named(vm);
            for kv in meta {
                let (k, v) = kv.split_once('=').with_context(|| format!("--meta {kv:?}: expected KEY=VALUE"))?;
                info.extra.insert(k.to_string(), serde_json::Value::String(v.to_string()));
            }
            let sources = disks.iter().map(|d| alike::open_image(d, *format)).collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&dyn alike::DiskSource> = sources.iter().map(|s| &**s).collect();
            let r = store.backup(info, &refs, &opts);
            bar.done();
            let r = r?;
            for d in &r.version.disks {
                if let Some(why) = &d.fallback_reason {
                    eprintln!("alike: warning: disk {} was read in full: {why}", d.position);
                }
            }
            let secs = r.elapsed.as_secs_f64();
            if *json {
                println!(
                    "{}",
                    json!({
                        "id": r.version.id, "vm": r.version.vm, "time": r.version.time_rfc3339(),
                        "read_bytes": r.read_bytes, "new_bytes": r.new_bytes, "new_stored_bytes": r.new_stored_bytes,
                        "elapsed_seconds": secs, "disks": r.version.disks,
                    })
                );
            } else {
                println!("{}", r.version.id);
                eprintln!(
                    "backed up {} disk(s) of {vm}: read {} in {:.2} s ({:.0} MiB/s), {} new, {} stored",
                    r.version.disks.len(),
                    mib(r.read_bytes),
                    secs,
                    r.read_bytes as f64 / 1048576.0 / secs.max(1e-9),
                    mib(r.new_bytes),
                    mib(r.new_stored_bytes)
                );
            }
        }
        Cmd::Versions { vm, json } => {
            let store = open(&cli)?;
            let vs = store.versions(vm.as_deref())?;
            if *json {
                let arr: Vec<_> = vs
                    .iter()
                    .map(|v| {
                        json!({"id": v.id, "vm": v.vm, "time": v.time_rfc3339(), "time_ms": v.time_ms,
                               "parent": v.manifest.parent, "config": v.manifest.vm, "disks": v.disks})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(arr));
            } else {
                for v in &vs {
                    let sizes: Vec<String> = v.disks.iter().map(|d| mib(d.size)).collect();
                    println!("{}  {}  {:<20}  {}", v.short_id(), v.time_rfc3339(), v.vm, sizes.join(", "));
                }
            }
        }
        Cmd::Restore { version, vm, disk, output, format, partial, threads, json } => {
            let store = open(&cli)?;
            if version == "latest"
                && vm.is_none()
                && store.versions(None)?.iter().map(|v| &v.vm).collect::<std::collections::HashSet<_>>().len() > 1
            {
                bail!("`latest` needs --vm NAME when the store holds several VMs");
            }
            let v = store.version(version, vm.as_deref())?;
            let bar = Bar::new(&cli, "restore");
            let mut opts = RestoreOptions::default()
                .threads(*threads)
                .partial(*partial)
                .format(*format)
                .cancel_token(cancel_on_ctrl_c());
            if let Some(cb) = bar.callback() {
                opts = opts.progress(cb);
            }
            let t = std::time::Instant::now();
            let r = store.restore_to_file(&v, *disk, output, &opts);
            bar.done();
            let r = r?;
            let secs = t.elapsed().as_secs_f64();
            if *json {
                println!(
                    "{}",
                    json!({"id": v.id, "vm": v.vm, "disk": disk, "output": output, "size": r.size, "data_bytes": r.data_bytes,
                           "hole_bytes": r.hole_bytes, "failed_ranges": r.failed, "elapsed_seconds": secs})
                );
            } else {
                for (a, b) in &r.failed {
                    println!("UNREADABLE {a}..{b} ({} bytes, zeroes written)", b - a);
                }
                eprintln!(
                    "restored disk {disk} of {} ({}) to {}: {} data, {} holes, {:.2} s",
                    v.short_id(),
                    v.vm,
                    output.display(),
                    mib(r.data_bytes),
                    mib(r.hole_bytes),
                    secs
                );
            }
            if !r.failed.is_empty() {
                bail!(
                    "{} byte range(s) could not be restored: {}",
                    r.failed.len(),
                    r.first_error.clone().unwrap_or_default()
                );
            }
        }
        Cmd::Stats { json } => {
            let store = open(&cli)?;
            let s = store.stats()?;
            let dedup = s.logical_bytes as f64 / (s.unique_bytes.max(1)) as f64;
            let comp = s.unique_bytes as f64 / (s.pack_bytes.max(1)) as f64;
            if *json {
                println!(
                    "{}",
                    json!({
                        "versions": s.versions, "logical_bytes": s.logical_bytes, "unique_bytes": s.unique_bytes,
                        "stored_bytes": s.stored_bytes, "pack_bytes": s.pack_bytes, "packs": s.packs, "blobs": s.blobs,
                        "dedup_ratio": dedup, "compression_ratio": comp,
                        "total_ratio": s.logical_bytes as f64 / (s.stored_bytes.max(1)) as f64,
                    })
                );
            } else {
                println!("versions:          {}", s.versions);
                println!("logical bytes:     {} ({})", s.logical_bytes, mib(s.logical_bytes));
                println!("unique bytes:      {} ({})", s.unique_bytes, mib(s.unique_bytes));
                println!("stored bytes:      {} ({}) in {} packs", s.stored_bytes, mib(s.stored_bytes), s.packs);
                println!("dedup ratio:       {dedup:.2}x");
                println!("compression ratio: {comp:.2}x");
            }
        }
        Cmd::Verify { full, vm, version, json } => {
            let store = open(&cli)?;
            let bar = Bar::new(&cli, "verify");
            let mut opts = alike::VerifyOptions::default().full(*full).cancel_token(cancel_on_ctrl_c());
            if let Some(cb) = bar.callback() {
                opts = opts.progress(cb);
            }
            if let Some(v) = vm {
                opts = opts.vm(v);
            }
            if let Some(v) = version {
                opts = opts.version(v);
            }
            let r = store.verify(&opts);
            bar.done();
            let r = r?;
            let depth = if *full { "full" } else { "quick" };
            if *json {
                println!(
                    "{}",
                    json!({"ok": r.ok(), "depth": depth, "versions": r.versions, "chunks": r.chunks,
                           "packs_read": r.packs_read, "bytes_read": r.bytes_read, "damaged": r.damaged})
                );
            } else {
                for d in &r.damaged {
                    let chunk = d.chunk.as_deref().map(|c| format!(" chunk {}", &c[..16])).unwrap_or_default();
                    println!("DAMAGED {}{chunk}: {}", d.object, d.reason);
                    for a in &d.affects {
                        let ranges: Vec<String> = a.ranges.iter().take(4).map(|(x, y)| format!("{x}..{y}")).collect();
                        let more =
                            if a.ranges.len() > 4 { format!(" (+{} more)", a.ranges.len() - 4) } else { String::new() };
                        println!(
                            "  breaks version {} ({}) disk {} bytes {}{more}",
                            &a.version[..12.min(a.version.len())],
                            a.vm,
                            a.disk,
                            ranges.join(", ")
                        );
                    }
                }
                eprintln!(
                    "{depth} verify of {} version(s), {} chunks: {}",
                    r.versions,
                    r.chunks,
                    if r.ok() { "all good" } else { "DAMAGED" }
                );
            }
            if !r.ok() {
                bail!("{} damaged object(s) or chunk(s) found", r.damaged.len());
            }
        }
        Cmd::Vault {
            to,
            init,
            share_key,
            vault_password_file,
            vault_cache_dir,
            vm,
            last,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            bwlimit,
            threads,
            json,
        } => {
            let store = open(&cli)?;
            let vault = vault_store(
                &cli,
                &store,
                to,
                *init,
                *share_key,
                vault_password_file.as_ref(),
                vault_cache_dir.as_ref(),
            )?;
            let bar = Bar::new(&cli, "vault");
            let mut opts = alike::VaultOptions::default().threads(*threads).cancel_token(cancel_on_ctrl_c());
            if let Some(cb) = bar.callback() {
                opts = opts.progress(cb);
            }
            if let Some(v) = vm {
                opts = opts.vm(v);
            }
            if let Some(n) = last {
                opts = opts.last(*n);
            }
            if let Some(r) = bwlimit {
                opts = opts.bandwidth_limit(*r);
            }
            let p = alike::RetentionPolicy::default()
                .last(keep_last.unwrap_or(0))
                .daily(keep_daily.unwrap_or(0))
                .weekly(keep_weekly.unwrap_or(0))
                .monthly(keep_monthly.unwrap_or(0))
                .yearly(keep_yearly.unwrap_or(0));
            if !p.is_empty() {
                opts = opts.retention(p);
            }
            let r = store.vault(&vault, &opts);
            bar.done();
            let r = r?;
            let secs = r.elapsed.as_secs_f64();
            if *json {
                println!(
                    "{}",
                    json!({"vault": vault.id(), "copied": r.copied.iter().map(|(s, v)| json!({"source": s, "vault": v})).collect::<Vec<_>>(),
                           "already": r.already, "read_bytes": r.read_bytes, "new_bytes": r.new_bytes,
                           "sent_bytes": r.new_stored_bytes, "pruned": r.pruned, "elapsed_seconds": secs})
                );
            } else {
                for (s, v) in &r.copied {
                    println!("{}  ->  {}", &s[..12], &v[..12]);
                }
                eprintln!(
                    "vaulted {} version(s) ({} already there): read {}, sent {} in {:.2} s{}",
                    r.copied.len(),
                    r.already.len(),
                    mib(r.read_bytes),
                    mib(r.new_stored_bytes),
                    secs,
                    if r.pruned.is_empty() {
                        String::new()
                    } else {
                        format!("; vault retention removed {}", r.pruned.len())
                    }
                );
            }
        }
        Cmd::Prune {
            vm,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            dry_run,
            json,
        } => {
            let store = open(&cli)?;
            let p = alike::RetentionPolicy::default()
                .last(*keep_last)
                .hourly(*keep_hourly)
                .daily(*keep_daily)
                .weekly(*keep_weekly)
                .monthly(*keep_monthly)
                .yearly(*keep_yearly);
            let r = store.prune(vm.as_deref(), &p, *dry_run)?;
            if *json {
                let vms: Vec<_> = r.decisions.iter().map(|(vm, d)| json!({"vm": vm, "versions": d})).collect();
                println!("{}", json!({"dry_run": dry_run, "removed": r.removed, "vms": vms}));
            } else {
                for (vm, ds) in &r.decisions {
                    for d in ds {
                        let t = alike_time(d.time_ms);
                        let what = if d.keep {
                            format!("keep   ({})", d.reasons.join(", "))
                        } else if *dry_run {
                            "would remove".into()
                        } else {
                            "removed".into()
                        };
                        println!("{}  {t}  {vm:<20}  {what}", &d.id[..12]);
                    }
                }
                let n = r.decisions.iter().flat_map(|(_, d)| d).filter(|d| !d.keep).count();
                eprintln!(
                    "{} {n} version(s){}",
                    if *dry_run { "would remove" } else { "removed" },
                    if *dry_run { "" } else { "; run `alike gc` to reclaim space" }
                );
            }
        }
        Cmd::Gc { dry_run, json } => {
            let store = open(&cli)?;
            let bar = Bar::new(&cli, "gc");
            let mut opts = alike::MaintenanceOptions::default().dry_run(*dry_run).cancel_token(cancel_on_ctrl_c());
            if let Some(cb) = bar.callback() {
                opts = opts.progress(cb);
            }
            let r = store.gc(&opts);
            bar.done();
            let r = r?;
            if *json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                eprintln!(
                    "gc: {} live / {} dead chunks in {} packs; condemned {} (repacked {}), deleted {} ({}), deferred {}, rescued {}",
                    r.live_chunks,
                    r.dead_chunks,
                    r.packs,
                    r.condemned,
                    r.repacked,
                    r.deleted,
                    mib(r.bytes_freed),
                    r.deferred,
                    r.rescued
                );
                if r.deferred > 0 {
                    eprintln!(
                        "alike: note: a backup, restore or verify is running; run gc again later to delete the rest"
                    );
                }
            }
        }
        Cmd::Forget { version } => {
            open(&cli)?.forget(version)?;
        }
        Cmd::Pin { version } => {
            open(&cli)?.pin(version)?;
        }
        Cmd::Unpin { version } => {
            open(&cli)?.unpin(version)?;
        }
        Cmd::Unlock { json } => {
            let store = open(&cli)?;
            let live = store.locks()?;
            if *json {
                let arr: Vec<_> = live.iter().map(|(k, l)| json!({"lock": k, "info": l})).collect();
                println!("{}", serde_json::Value::Array(arr));
                return Ok(());
            }
            for (k, l) in &live {
                println!("{k}  {:?} by pid {} on {} since {}", l.kind, l.pid, l.host, alike_time(l.created_ms));
            }
            eprintln!("stale locks removed; {} live lock(s) remain", live.len());
        }
        Cmd::Xen(a) => xen::run(&cli, a)?,
        Cmd::RebuildIndex { json } => {
            let store = open(&cli)?;
            let bar = Bar::new(&cli, "index");
            let mut opts = alike::MaintenanceOptions::default().cancel_token(cancel_on_ctrl_c());
            if let Some(cb) = bar.callback() {
                opts = opts.progress(cb);
            }
            let r = store.rebuild_index(&opts);
            bar.done();
            let (n, bad) = r?;
            if *json {
                let arr: Vec<_> = bad.iter().map(|(k, e)| json!({"pack": k, "error": e})).collect();
                println!("{}", json!({"packs_indexed": n, "damaged_packs": arr}));
            }
            eprintln!("indexed {n} packs");
            for (k, e) in &bad {
                eprintln!("alike: damaged pack {k}: {e}");
            }
            if !bad.is_empty() {
                bail!("{} pack(s) could not be read", bad.len());
            }
        }
    }
    Ok(())
}
