//! One function per store command: parse nothing, decide nothing — call the
//! library and print what it returns (its report as JSON with `--json`).

use std::path::PathBuf;

use alike::{BackupOptions, Chunking, ErrorKind, Parent, RestoreOptions, RetentionPolicy, Store};
use anyhow::{Context, Result, bail};
use clap::Args;

use crate::Cli;
use crate::common::{
    JsonArg, ThreadsArg, alike_time, builder, long, mib, open, parse_rate, passphrase, print_json, read_secret,
    store_path,
};

/// `alike init`.
#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    /// Store data unencrypted (encryption is the default).
    #[arg(long)]
    no_encryption: bool,
    /// Cut disks into fixed blocks of this many bytes (a power of two from
    /// 65536 to 4194304): a format 1 store, readable by older builds.
    #[arg(long, conflicts_with = "chunking")]
    block_size: Option<u32>,
    /// How to cut disks: `cdc` (content-defined chunks on 4 KiB
    /// boundaries, 16/32/64 KiB: the default), `cdc:MIN/AVG/MAX` in KiB,
    /// `fixed` (64 KiB blocks) or `fixed:KIB`.
    #[arg(long)]
    chunking: Option<String>,
    /// zstd level (0 = no compression).
    #[arg(long, default_value_t = 3)]
    compression_level: i32,
    /// Make a store that can hand out write-only keys (`alike key
    /// add-writer`): format 3, data sealed to the store's public key.
    /// Needs encryption and content-defined chunking.
    #[arg(long)]
    writer_keys: bool,
}

pub(crate) fn init(cli: &Cli, a: &InitArgs) -> Result<()> {
    let path = store_path(cli)?;
    let mut b = builder(cli);
    b.chunking(parse_chunking(a.chunking.as_deref(), a.block_size)?)
        .compression_level((a.compression_level > 0).then_some(a.compression_level));
    if a.writer_keys {
        b.writer_keys();
    }
    if a.no_encryption {
        b.no_encryption();
    } else if cli.key_file.is_none() || cli.password_file.is_some() || std::env::var_os("ALIKE_PASSWORD").is_some() {
        let p = passphrase(cli, true)?.context("an encrypted store needs a passphrase: set ALIKE_PASSWORD, use --password-file, run on a terminal, or pass --no-encryption")?;
        if p.is_empty() {
            bail!("the passphrase is empty");
        }
        b.passphrase(p);
    }
    let s = b.create_at(&path)?;
    eprintln!(
        "created store {} at {} ({}, chunking {}, format {})",
        s.id(),
        path,
        if s.is_encrypted() { "encrypted" } else { "unencrypted" },
        s.chunking(),
        s.format_version()
    );
    Ok(())
}

/// `--chunking` and `--block-size` as a [`Chunking`].
fn parse_chunking(spec: Option<&str>, block_size: Option<u32>) -> Result<Chunking> {
    let c = match (spec, block_size) {
        (_, Some(bs)) => Chunking::Fixed { block_size: bs },
        (None, None) => Chunking::default(),
        (Some(s), None) => s.parse()?,
    };
    c.validate()?;
    Ok(c)
}

/// `alike backup`.
#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    /// VM name.
    #[arg(long)]
    pub(crate) vm: String,
    /// The VM's disks, in order: raw images, block devices, VHD or VHDX/AVHDX files.
    #[arg(required = true)]
    pub(crate) disks: Vec<PathBuf>,
    /// Image format of the disks (default: detected from each file's signature).
    #[arg(long, value_name = "raw|vhd|vhdx")]
    pub(crate) format: Option<alike::ImageFormat>,
    /// Free-form metadata recorded with the version (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub(crate) meta: Vec<String>,
    /// Do not build on the VM's previous version.
    #[arg(long)]
    pub(crate) no_parent: bool,
    /// Accept a disk of 0 bytes (refused by default: an empty file is usually a mistake).
    #[arg(long)]
    pub(crate) allow_empty: bool,
    #[command(flatten)]
    pub(crate) threads: ThreadsArg,
    #[command(flatten)]
    pub(crate) out: JsonArg,
    #[command(flatten)]
    pub(crate) via: crate::remote::ViaArgs,
}

pub(crate) fn backup(cli: &Cli, a: &BackupArgs) -> Result<()> {
    if a.via.via.is_some() {
        return crate::remote::backup(cli, a, &a.via);
    }
    let store = open(cli)?;
    let mut info = alike::VmInfo::named(&a.vm);
    for kv in &a.meta {
        let (k, v) = kv.split_once('=').with_context(|| format!("--meta {kv:?}: expected KEY=VALUE"))?;
        info.extra.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    let sources = a.disks.iter().map(|d| alike::open_image(d, a.format)).collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&dyn alike::DiskSource> = sources.iter().map(|s| &**s).collect();
    let r = long(cli, "backup", |cb, cancel| {
        let mut o = BackupOptions::default().threads(a.threads.threads).allow_empty(a.allow_empty).cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        if a.no_parent {
            o = o.parent(Parent::None);
        }
        store.backup(info, &refs, &o)
    })?;
    for d in &r.version.disks {
        if let Some(why) = &d.fallback_reason {
            eprintln!("alike: warning: disk {} was read in full: {why}", d.position);
        }
        if d.size == 0 {
            eprintln!("alike: note: disk {} ({}) is empty: backed up as a disk of 0 bytes", d.position, d.label);
        }
    }
    if a.out.json {
        return print_json(&r);
    }
    let secs = r.elapsed.as_secs_f64();
    println!("{}", r.version.id);
    eprintln!(
        "backed up {} disk(s) of {}: read {} in {:.2} s ({:.0} MiB/s), {} new, {} stored",
        r.version.disks.len(),
        a.vm,
        mib(r.read_bytes),
        secs,
        r.read_bytes as f64 / 1048576.0 / secs.max(1e-9),
        mib(r.new_bytes),
        mib(r.new_stored_bytes)
    );
    Ok(())
}

/// `alike versions`.
#[derive(Args, Debug)]
pub(crate) struct VersionsArgs {
    /// Only this VM's versions.
    #[arg(long)]
    vm: Option<String>,
    #[command(flatten)]
    out: JsonArg,
}

pub(crate) fn versions(cli: &Cli, a: &VersionsArgs) -> Result<()> {
    let store = open(cli)?;
    let vs = store.versions(a.vm.as_deref())?;
    for d in store.damaged_versions()? {
        eprintln!("alike: warning: versions/{} cannot be read and is not listed: {}", d.id, d.reason);
    }
    if a.out.json {
        return print_json(&vs);
    }
    for v in &vs {
        let sizes: Vec<String> = v.disks.iter().map(|d| mib(d.size)).collect();
        println!("{}  {}  {:<20}  {}", v.short_id(), v.time_rfc3339(), v.vm, sizes.join(", "));
    }
    Ok(())
}

/// A version: an id, a unique prefix, or `latest` (of `--vm`).
#[derive(Args, Debug)]
pub(crate) struct VersionArg {
    /// Version id (or unique prefix), or `latest` (with --vm).
    pub(crate) version: String,
    /// VM name (needed with `latest` when the store holds several VMs).
    #[arg(long)]
    pub(crate) vm: Option<String>,
}

impl VersionArg {
    /// The version in `store`; the library refuses `latest` without a VM
    /// when the store holds several, and this says which flag answers it.
    pub(crate) fn find(&self, store: &Store) -> Result<alike::Version> {
        match store.version(&self.version, self.vm.as_deref()) {
            Err(e) if e.kind() == ErrorKind::InvalidArgument && self.vm.is_none() && self.version == "latest" => {
                Err(anyhow::Error::from(e).context("give the VM with --vm NAME"))
            }
            r => Ok(r?),
        }
    }
}

/// `alike restore`.
#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    pub(crate) which: VersionArg,
    /// Disk position, from 0.
    #[arg(long, default_value_t = 0)]
    pub(crate) disk: u32,
    /// Output path.
    #[arg(long, short)]
    pub(crate) output: PathBuf,
    /// Output format: a sparse raw image, a dynamic VHD or a dynamic VHDX.
    #[arg(long, value_name = "raw|vhd|vhdx", default_value = "raw")]
    pub(crate) format: alike::ImageFormat,
    /// Go on past damage: write what can be read, leave zeroes elsewhere, list the
    /// unreadable ranges, and exit 1 if there were any.
    #[arg(long)]
    pub(crate) partial: bool,
    /// Replace an existing output file (refused without it; a block device
    /// needs no --force, but one that is mounted or in use is always refused).
    #[arg(long)]
    pub(crate) force: bool,
    #[command(flatten)]
    pub(crate) threads: ThreadsArg,
    #[command(flatten)]
    pub(crate) out: JsonArg,
    #[command(flatten)]
    pub(crate) via: crate::remote::ViaArgs,
}

/// What `alike restore --json` prints: which disk went where, and the report.
#[derive(serde::Serialize)]
struct Restored<'a> {
    id: &'a str,
    vm: &'a str,
    disk: u32,
    output: &'a std::path::Path,
    #[serde(flatten)]
    report: &'a alike::RestoreReport,
}

pub(crate) fn restore(cli: &Cli, a: &RestoreArgs) -> Result<()> {
    if a.via.via.is_some() {
        return crate::remote::restore(cli, a, &a.via);
    }
    let store = open(cli)?;
    let v = a.which.find(&store)?;
    let r = long(cli, "restore", |cb, cancel| {
        let mut o = RestoreOptions::default()
            .threads(a.threads.threads)
            .partial(a.partial)
            .force(a.force)
            .format(a.format)
            .cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        store.restore_to_file(&v, a.disk, &a.output, &o)
    })?;
    if a.out.json {
        print_json(&Restored { id: &v.id, vm: &v.vm, disk: a.disk, output: &a.output, report: &r })?;
    } else {
        for (x, y) in &r.failed_ranges {
            println!("UNREADABLE {x}..{y} ({} bytes, zeroes written)", y - x);
        }
        eprintln!(
            "restored disk {} of {} ({}) to {}: {} data, {} holes, {:.2} s",
            a.disk,
            v.short_id(),
            v.vm,
            a.output.display(),
            mib(r.data_bytes),
            mib(r.hole_bytes),
            r.elapsed.as_secs_f64()
        );
    }
    if !r.failed_ranges.is_empty() {
        bail!(
            "{} byte range(s) could not be restored: {}",
            r.failed_ranges.len(),
            r.first_error.clone().unwrap_or_default()
        );
    }
    Ok(())
}

pub(crate) fn stats(cli: &Cli, a: &JsonArg) -> Result<()> {
    let s = open(cli)?.stats()?;
    if a.json {
        return print_json(&s);
    }
    println!("versions:          {}", s.versions);
    println!("logical bytes:     {} ({})", s.logical_bytes, mib(s.logical_bytes));
    println!("unique bytes:      {} ({})", s.unique_bytes, mib(s.unique_bytes));
    println!("stored bytes:      {} ({}) in {} packs", s.stored_bytes, mib(s.stored_bytes), s.packs);
    println!("dedup ratio:       {:.2}x", s.dedup_ratio());
    println!("compression ratio: {:.2}x", s.compression_ratio());
    Ok(())
}

/// `alike verify`.
#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// Read, authenticate and re-hash every byte, and check every pack's name.
    #[arg(long)]
    pub(crate) full: bool,
    /// Only this VM's versions.
    #[arg(long)]
    pub(crate) vm: Option<String>,
    /// Only this version (id, prefix, or `latest` with --vm).
    #[arg(long)]
    pub(crate) version: Option<String>,
    #[command(flatten)]
    pub(crate) out: JsonArg,
    #[command(flatten)]
    pub(crate) via: crate::remote::ViaArgs,
}

pub(crate) fn verify(cli: &Cli, a: &VerifyArgs) -> Result<()> {
    if a.via.via.is_some() {
        return crate::remote::verify(cli, a, &a.via);
    }
    let store = open(cli)?;
    let r = long(cli, "verify", |cb, cancel| {
        let mut o = alike::VerifyOptions::default().full(a.full).cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        if let Some(v) = &a.vm {
            o = o.vm(v);
        }
        if let Some(v) = &a.version {
            o = o.version(v);
        }
        store.verify(&o)
    })?;
    if a.out.json {
        print_json(&r)?;
    } else {
        for d in &r.damaged {
            let chunk = d.chunk.as_deref().map(|c| format!(" chunk {}", &c[..16.min(c.len())])).unwrap_or_default();
            println!("DAMAGED {}{chunk}: {}", d.object, d.reason);
            for x in &d.affects {
                if x.ranges.is_empty() {
                    println!("  breaks version {} entirely (it cannot be read)", &x.version[..12.min(x.version.len())]);
                    continue;
                }
                let ranges: Vec<String> = x.ranges.iter().take(4).map(|(p, q)| format!("{p}..{q}")).collect();
                let more = if x.ranges.len() > 4 { format!(" (+{} more)", x.ranges.len() - 4) } else { String::new() };
                println!(
                    "  breaks version {} ({}) disk {} bytes {}{more}",
                    &x.version[..12.min(x.version.len())],
                    x.vm,
                    x.disk,
                    ranges.join(", ")
                );
            }
        }
        eprintln!(
            "{} verify of {} version(s), {} chunks: {}",
            r.depth,
            r.versions,
            r.chunks,
            if !r.damaged.is_empty() {
                "DAMAGED"
            } else if r.not_checked.is_some() {
                "no damage found in what could be checked, but NOT COMPLETE"
            } else {
                "all good"
            }
        );
    }
    if let (Some(why), true) = (&r.not_checked, r.damaged.is_empty()) {
        bail!("verify --full is not complete: {why}");
    }
    if !r.ok() {
        bail!("{} damaged object(s) or chunk(s) found", r.damaged.len());
    }
    Ok(())
}

/// Retention rules shared by `prune` and `vault`.
#[derive(Args, Debug, Default)]
pub(crate) struct KeepArgs {
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
}

impl KeepArgs {
    fn policy(&self) -> RetentionPolicy {
        RetentionPolicy::default()
            .last(self.keep_last)
            .hourly(self.keep_hourly)
            .daily(self.keep_daily)
            .weekly(self.keep_weekly)
            .monthly(self.keep_monthly)
            .yearly(self.keep_yearly)
    }
}

/// `alike vault`.
#[derive(Args, Debug)]
pub(crate) struct VaultArgs {
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
    #[command(flatten)]
    threads: ThreadsArg,
    #[command(flatten)]
    out: JsonArg,
}

/// Opens the vault store at `--to`, creating it with `--init`.
fn vault_store(cli: &Cli, source: &Store, a: &VaultArgs) -> Result<Store> {
    let mut b = Store::builder();
    if let Some(c) = a.vault_cache_dir.as_ref().or(cli.cache_dir.as_ref()) {
        b.cache_dir(c);
    }
    let pass = match &a.vault_password_file {
        Some(f) => Some(read_secret(f, "vault password")?),
        None => std::env::var("ALIKE_VAULT_PASSWORD").ok(),
    };
    if let Some(p) = &pass {
        b.passphrase(p);
    }
    match b.open_at(&a.to) {
        Err(e) if e.kind() == ErrorKind::NotAStore && a.init => {
            if pass.is_none() {
                bail!(
                    "creating the vault needs its own passphrase: set ALIKE_VAULT_PASSWORD or use --vault-password-file"
                );
            }
            if a.share_key {
                b.share_key_of(source)?;
            }
            let s = b.create_at(&a.to)?;
            eprintln!(
                "created vault store {} at {}{}",
                s.id(),
                a.to,
                if a.share_key { " (sharing the source's key)" } else { " (with a key of its own)" }
            );
            Ok(s)
        }
        Err(e) if e.kind() == ErrorKind::NotAStore => {
            Err(anyhow::Error::from(e).context("no vault store there (use --init to create one)"))
        }
        r => Ok(r?),
    }
}

pub(crate) fn vault(cli: &Cli, a: &VaultArgs) -> Result<()> {
    let store = open(cli)?;
    let policy = RetentionPolicy::default()
        .last(a.keep_last.unwrap_or(0))
        .daily(a.keep_daily.unwrap_or(0))
        .weekly(a.keep_weekly.unwrap_or(0))
        .monthly(a.keep_monthly.unwrap_or(0))
        .yearly(a.keep_yearly.unwrap_or(0));
    let mut o = alike::VaultOptions::default().threads(a.threads.threads);
    if let Some(v) = &a.vm {
        o = o.vm(v);
    }
    if let Some(n) = a.last {
        o = o.last(n);
    }
    if let Some(r) = a.bwlimit {
        o = o.bandwidth_limit(r);
    }
    if !policy.is_empty() {
        o = o.retention(policy);
    }
    // Before the vault is created or opened: bad options change nothing.
    o.validate()?;
    let vault = vault_store(cli, &store, a)?;
    let r = long(cli, "vault", |cb, cancel| {
        let mut o = o.cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        store.vault(&vault, &o)
    })?;
    if a.out.json {
        return print_json(&r);
    }
    for c in &r.copied {
        println!("{}  ->  {}", &c.source[..12.min(c.source.len())], &c.vault[..12.min(c.vault.len())]);
    }
    eprintln!(
        "vaulted {} version(s) ({} already there): read {}, sent {} in {:.2} s{}",
        r.copied.len(),
        r.already.len(),
        mib(r.read_bytes),
        mib(r.sent_bytes),
        r.elapsed.as_secs_f64(),
        if r.pruned.is_empty() { String::new() } else { format!("; vault retention removed {}", r.pruned.len()) }
    );
    Ok(())
}

/// `alike prune`.
#[derive(Args, Debug)]
pub(crate) struct PruneArgs {
    /// Only this VM (default: each VM on its own).
    #[arg(long)]
    vm: Option<String>,
    #[command(flatten)]
    keep: KeepArgs,
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    out: JsonArg,
}

pub(crate) fn prune(cli: &Cli, a: &PruneArgs) -> Result<()> {
    let r = open(cli)?.prune(a.vm.as_deref(), &a.keep.policy(), a.dry_run)?;
    if a.out.json {
        return print_json(&r);
    }
    for (vm, ds) in &r.decisions {
        for d in ds {
            let what = if d.keep {
                format!("keep   ({})", d.reasons.join(", "))
            } else if a.dry_run {
                "would remove".into()
            } else {
                "removed".into()
            };
            println!("{}  {}  {vm:<20}  {what}", &d.id[..12.min(d.id.len())], alike_time(d.time_ms));
        }
    }
    let n = r.decisions.iter().flat_map(|(_, d)| d).filter(|d| !d.keep).count();
    eprintln!(
        "{} {n} version(s){}",
        if a.dry_run { "would remove" } else { "removed" },
        if a.dry_run { "" } else { "; run `alike gc` to reclaim space" }
    );
    Ok(())
}

/// `alike gc`.
#[derive(Args, Debug)]
pub(crate) struct GcArgs {
    /// Count only; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    out: JsonArg,
}

pub(crate) fn gc(cli: &Cli, a: &GcArgs) -> Result<()> {
    let store = open(cli)?;
    let r = long(cli, "gc", |cb, cancel| {
        let mut o = alike::MaintenanceOptions::default().dry_run(a.dry_run).cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        store.gc(&o)
    })?;
    if a.out.json {
        return print_json(&r);
    }
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
        eprintln!("alike: note: a backup, restore or verify is running; run gc again later to delete the rest");
    }
    Ok(())
}

/// A version given by id or unique prefix.
#[derive(Args, Debug)]
pub(crate) struct IdArg {
    /// Version id or unique prefix.
    version: String,
}

pub(crate) fn forget(cli: &Cli, a: &IdArg) -> Result<()> {
    Ok(open(cli)?.forget(&a.version)?)
}

pub(crate) fn pin(cli: &Cli, a: &IdArg) -> Result<()> {
    Ok(open(cli)?.pin(&a.version)?)
}

pub(crate) fn unpin(cli: &Cli, a: &IdArg) -> Result<()> {
    Ok(open(cli)?.unpin(&a.version)?)
}

pub(crate) fn unlock(cli: &Cli, a: &JsonArg) -> Result<()> {
    let live = open(cli)?.locks()?;
    if a.json {
        return print_json(&live);
    }
    for l in &live {
        println!(
            "{}  {:?} by pid {} on {} since {}",
            l.lock,
            l.info.kind,
            l.info.pid,
            l.info.host,
            alike_time(l.info.created_ms)
        );
    }
    eprintln!("stale locks removed; {} live lock(s) remain", live.len());
    Ok(())
}

pub(crate) fn rebuild_index(cli: &Cli, a: &JsonArg) -> Result<()> {
    let store = open(cli)?;
    let r = long(cli, "index", |cb, cancel| {
        let mut o = alike::MaintenanceOptions::default().cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        store.rebuild_index(&o)
    })?;
    if a.json {
        print_json(&r)?;
    }
    eprintln!("indexed {} packs", r.packs_indexed);
    for d in &r.damaged_packs {
        eprintln!("alike: damaged pack {}: {}", d.pack, d.error);
    }
    if !r.damaged_packs.is_empty() {
        bail!("{} pack(s) could not be read", r.damaged_packs.len());
    }
    Ok(())
}

/// `alike serve-nbd`.
#[derive(Args, Debug)]
pub(crate) struct ServeNbdArgs {
    #[command(flatten)]
    which: VersionArg,
    /// Serve this disk (from 0; default 0), as the default export and as `diskN`.
    #[arg(long, conflicts_with = "all")]
    disk: Option<u32>,
    /// Serve every disk, disk N as the export `diskN` (no default export).
    #[arg(long)]
    all: bool,
    /// Listen on TCP ADDR:PORT (a host alone: port 10809; port 0: any free port).
    /// NBD has no authentication: the default serves this machine only.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10809")]
    listen: String,
    /// Listen on a Unix socket instead (a socket left by a server that is gone is replaced).
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    socket: Option<PathBuf>,
    /// Make the export writable: writes go to this copy-on-write overlay file
    /// (the version never changes), deleted at the end unless --keep-overlay.
    /// One disk only; the file must not exist (unless kept earlier, with --keep-overlay).
    #[arg(long, value_name = "FILE", conflicts_with = "all")]
    writable_overlay: Option<PathBuf>,
    /// Keep the overlay file at the end; reopen it if it exists (an overlay of the same version and disk).
    #[arg(long, requires = "writable_overlay")]
    keep_overlay: bool,
    /// Require TLS (nbds://): the server's certificate chain, PEM (leaf first).
    /// Clients must start TLS before anything else.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM (read once at start, never logged).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With TLS, accept only clients with a certificate this CA signed (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// MiB of decoded frames cached for every client together (8 to 65536).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    cache_size: u64,
    /// MiB read ahead of a sequential reader (0 = none; at most half the cache).
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    readahead: u64,
    /// The most client connections at once (1 to 64).
    #[arg(long, default_value_t = alike::MAX_NBD_CONNECTIONS)]
    connections: usize,
    #[command(flatten)]
    threads: ThreadsArg,
    #[command(flatten)]
    out: JsonArg,
}

/// Serves disks of a version over NBD until Ctrl-C; one line on stdout
/// says where, once the server accepts connections.
pub(crate) fn serve_nbd(cli: &Cli, a: &ServeNbdArgs) -> Result<()> {
    let store = open(cli)?;
    let v = a.which.find(&store)?;
    let mut o = alike::NbdOptions::default()
        .threads(a.threads.threads)
        .cache_size(a.cache_size << 20)
        .readahead(a.readahead << 20)
        .max_connections(a.connections)
        .cancel_token(crate::common::cancel_on_ctrl_c());
    o = match &a.socket {
        Some(p) => o.listen_unix(p),
        None => o.listen_tcp(&a.listen),
    };
    o = if a.all { o.all_disks() } else { o.disk(a.disk.unwrap_or(0)) };
    if let Some(f) = &a.writable_overlay {
        o = o.writable_overlay(f).keep_overlay(a.keep_overlay);
    }
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        o = o.tls(cert, key);
    }
    if let Some(ca) = &a.tls_ca {
        o = o.tls_client_ca(ca);
    }
    let (json, vm, short) = (a.out.json, v.vm.clone(), v.short_id().to_string());
    let overlay = a.writable_overlay.clone();
    let (tls, mutual) = (a.tls_cert.is_some(), a.tls_ca.is_some());
    o = o.on_listening(move |l| {
        if json {
            let _ = print_json(l);
            return;
        }
        let exports: Vec<String> = l.exports.iter().map(|e| format!("{} ({})", e.uri, mib(e.size))).collect();
        let mut mode = match &overlay {
            Some(f) => format!("writable through overlay {}", f.display()),
            None => "read-only".into(),
        };
        if tls {
            mode.push_str(if mutual { ", TLS required, with client certificates" } else { ", TLS required" });
        }
        println!("listening on {} (version {short} of {vm}, {mode}); Ctrl-C stops", exports.join(", "));
    });
    let r = store.serve_nbd(&v, &o)?;
    if a.out.json {
        return print_json(&r);
    }
    eprintln!(
        "served {} connection(s), {} requests: {} read, {} written; {} read from the store, {:.1} s{}",
        r.connections,
        r.requests,
        mib(r.bytes_read),
        mib(r.bytes_written),
        mib(r.store_bytes_read),
        r.elapsed.as_secs_f64(),
        r.overlay_kept.as_ref().map(|p| format!("; overlay kept at {}", p.display())).unwrap_or_default()
    );
    Ok(())
}

/// `alike key`.
#[derive(Args, Debug)]
pub(crate) struct KeyArgs {
    #[command(subcommand)]
    cmd: KeyCmd,
}

#[derive(clap::Subcommand, Debug)]
enum KeyCmd {
    /// Export a write-only key file: it backs up into this store (with
    /// deduplication and incrementals) but cannot restore or read chunk
    /// data. The store must have been made with `init --writer-keys`, and
    /// be opened with its full key (passphrase or full key file).
    AddWriter(AddWriterArgs),
}

#[derive(Args, Debug)]
struct AddWriterArgs {
    /// Where to write the key file (mode 0600; never over an existing file).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    out: JsonArg,
}

pub(crate) fn key(cli: &Cli, a: &KeyArgs) -> Result<()> {
    match &a.cmd {
        KeyCmd::AddWriter(w) => {
            let store = open(cli)?;
            store.add_writer_key(&w.output)?;
            if w.out.json {
                print_json(&serde_json::json!({ "store": store.id(), "output": w.output, "write_only": true }))?;
            } else {
                eprintln!("wrote a write-only key of store {} to {}", store.id(), w.output.display());
            }
            Ok(())
        }
    }
}
