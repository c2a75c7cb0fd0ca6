//! `alike ls` and `alike extract`: file-level restore, one function each
//! (the library decides which volume and what is safe; this prints).

use std::path::PathBuf;

use alike::{ExtractOptions, FileEntry, Listing, LsOptions, VolumeInfo};
use anyhow::{Result, bail};
use clap::Args;

use crate::Cli;
use crate::commands::VersionArg;
use crate::common::{JsonArg, long, mib, open, print_json};

/// Which volume: `--disk`, `--partition` or `--volume`.
#[derive(Args, Debug)]
pub(crate) struct VolumeArgs {
    /// The disk (position from 0; default 0).
    #[arg(long)]
    disk: Option<u32>,
    /// A partition of the disk, numbered as Linux numbers them (GPT slots from 1,
    /// MBR primaries 1-4, logical partitions from 5), as `alike ls VERSION` lists them.
    #[arg(long, value_name = "P", conflicts_with = "volume")]
    partition: Option<u32>,
    /// An LVM2 logical volume, VG/LV; when two volume groups share a name, VG@UUID/LV
    /// with a prefix of the group's UUID, as `alike ls VERSION` lists them.
    #[arg(long, value_name = "VG/LV")]
    volume: Option<String>,
    /// MiB of decoded store frames cached (8 to 65536).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    cache_size: u64,
}

macro_rules! choose {
    ($opts:expr, $a:expr) => {{
        let mut o = $opts.cache_size($a.cache_size << 20);
        if let Some(d) = $a.disk {
            o = o.disk(d);
        }
        if let Some(p) = $a.partition {
            o = o.partition(p);
        }
        if let Some(v) = &$a.volume {
            o = o.volume(v.clone());
        }
        o
    }};
}

/// `alike ls`.
#[derive(Args, Debug)]
pub(crate) struct LsArgs {
    #[command(flatten)]
    which: VersionArg,
    /// A directory (its entries) or a file of the volume; without it, the volumes
    /// of the version (partitions, logical volumes, filesystems).
    path: Option<String>,
    #[command(flatten)]
    volume: VolumeArgs,
    #[command(flatten)]
    out: JsonArg,
}

fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("alike: warning: {w}");
    }
}

/// `-rw-r--r--` and the like.
fn mode_string(e: &FileEntry) -> String {
    let t = match e.kind.as_str() {
        "dir" => 'd',
        "symlink" => 'l',
        "file" => '-',
        _ => '?',
    };
    let Some(m) = e.mode else { return format!("{t}?????????") };
    let mut s = String::from(t);
    for (i, c) in ['r', 'w', 'x', 'r', 'w', 'x', 'r', 'w', 'x'].into_iter().enumerate() {
        let bit = 0o400 >> i;
        let special = match i {
            2 if m & 0o4000 != 0 => Some('s'),
            5 if m & 0o2000 != 0 => Some('s'),
            8 if m & 0o1000 != 0 => Some('t'),
            _ => None,
        };
        s.push(match (special, m & bit != 0) {
            (Some(c), true) => c,
            (Some(c), false) => c.to_ascii_uppercase(),
            (None, true) => c,
            (None, false) => '-',
        });
    }
    s
}

fn time(ns: Option<i64>) -> String {
    match ns {
        Some(ns) if ns >= 0 => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64);
            humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").trim_end_matches('Z').to_string()
        }
        _ => "-".into(),
    }
}

fn print_volumes(vols: &[VolumeInfo]) {
    println!("{:<4} {:<24} {:>12}  {:<32} {:<8} LABEL", "DISK", "VOLUME", "SIZE", "TYPE", "FS");
    for v in vols {
        let what = match (&v.partition_name, &v.partition_type_name) {
            (Some(n), Some(t)) => format!("{n} ({t})"),
            (None, Some(t)) => t.clone(),
            _ if v.lvm_pv => "LVM2 physical volume".into(),
            _ => v.kind.clone(),
        };
        let fs = v.filesystem.clone().unwrap_or_else(|| if v.lvm_pv { "LVM2".into() } else { "-".into() });
        let label = match (&v.label, &v.error) {
            (_, Some(e)) => format!("(unreadable: {e})"),
            (Some(l), None) => l.clone(),
            (None, None) => String::new(),
        };
        println!("{:<4} {:<24} {:>12}  {:<32} {:<8} {label}", v.disk, v.name, mib(v.size), what, fs);
    }
}

fn print_entries(l: &Listing) {
    for e in &l.entries {
        let name = if l.entries.len() == 1 && e.kind != "dir" { e.path.clone() } else { e.name.clone() };
        let target = e.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
        let note = e.unreadable.as_ref().map(|u| format!("  (not extractable: {u})")).unwrap_or_default();
        println!(
            "{} {:>3} {:>6} {:>6} {:>12} {} {name}{target}{note}",
            mode_string(e),
            e.nlink,
            e.uid.map_or("-".into(), |u| u.to_string()),
            e.gid.map_or("-".into(), |g| g.to_string()),
            e.size,
            time(e.mtime_ns)
        );
    }
}

pub(crate) fn ls(cli: &Cli, a: &LsArgs) -> Result<()> {
    let store = open(cli)?;
    let v = a.which.find(&store)?;
    let mut o = choose!(LsOptions::default(), a.volume);
    if let Some(p) = &a.path {
        o = o.path(p.clone());
    }
    let l = store.ls(&v, &o)?;
    warn(&l.warnings);
    if a.out.json {
        return print_json(&l);
    }
    if a.path.is_some() {
        print_entries(&l);
    } else {
        print_volumes(&l.volumes);
    }
    Ok(())
}

/// `alike extract`.
#[derive(Args, Debug)]
pub(crate) struct ExtractArgs {
    #[command(flatten)]
    which: VersionArg,
    /// Paths to extract, from the volume's root (`/` is everything): each goes into
    /// DIR under its last name, a directory with everything under it.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
    #[command(flatten)]
    volume: VolumeArgs,
    /// The directory to extract into (created if missing). Nothing is ever written
    /// outside it: names that would leave it are refused, links are never followed.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// Replace existing files and links in DIR and merge into existing directories
    /// (without it each is refused and reported). A directory is never removed.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    out: JsonArg,
}

pub(crate) fn extract(cli: &Cli, a: &ExtractArgs) -> Result<()> {
    let store = open(cli)?;
    let v = a.which.find(&store)?;
    let r = long(cli, "extract", |cb, cancel| {
        let mut o = choose!(ExtractOptions::default(), a.volume)
            .paths(a.paths.iter().cloned())
            .to(&a.to)
            .force(a.force)
            .cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        store.extract(&v, &o)
    })?;
    warn(&r.warnings);
    if a.out.json {
        print_json(&r)?;
    } else {
        for f in &r.failures {
            eprintln!("alike: not extracted: {}: {}", f.path, f.error);
        }
        eprintln!(
            "extracted {} file(s), {} dir(s), {} symlink(s), {} hard link(s) from volume {} of {} ({}) into {}: \
             {} written, {} fetched from the store, {:.2} s",
            r.files,
            r.dirs,
            r.symlinks,
            r.hard_links,
            r.volume.name,
            v.short_id(),
            v.vm,
            a.to.display(),
            mib(r.bytes),
            mib(r.store_bytes_read),
            r.elapsed.as_secs_f64()
        );
    }
    if !r.failures.is_empty() {
        bail!(
            "{} entr{} could not be extracted (the rest were)",
            r.failures.len(),
            if r.failures.len() == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}
