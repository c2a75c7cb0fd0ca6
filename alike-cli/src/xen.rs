//! `alike xen …`: a XenServer/XCP-ng pool — list its VMs, back one up
//! (CBT incremental when possible), restore a version as a new VM or over
//! an existing VDI.

use std::io::IsTerminal;
use std::path::PathBuf;

use alike::{BackupOptions, Parent, Placement, Quiesce, RestoreOptions, Transport, XenBackupOptions, XenPool};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::Cli;
use crate::commands::VersionArg;
use crate::common::{JsonArg, ThreadsArg, long, mib, open, print_json, read_secret};

/// A pool and what to do with it.
#[derive(Args, Debug)]
pub(crate) struct XenArgs {
    /// The pool master: https://host, http://host:port, or a bare host (HTTPS).
    #[arg(long, env = "ALIKE_XEN_URL")]
    url: String,
    /// XAPI user.
    #[arg(long, env = "ALIKE_XEN_USER", default_value = "root")]
    user: String,
    /// Read the XAPI password from this file (else ALIKE_XEN_PASSWORD, else a prompt on a terminal).
    /// (`--password-file` is the store's passphrase.)
    #[arg(long, value_name = "F")]
    xen_password_file: Option<PathBuf>,
    /// Accept the pool's certificate by its SHA-256 fingerprint (AB:CD:… or hex): pool certificates
    /// are usually self-signed.
    #[arg(long, value_name = "SHA256")]
    fingerprint: Option<String>,
    /// Allow http:// to a pool that is not on this machine: the password then crosses the network
    /// in clear (without it, http:// is accepted only to a loopback address).
    #[arg(long)]
    insecure: bool,
    #[command(subcommand)]
    cmd: XenCmd,
}

#[derive(Subcommand, Debug)]
enum XenCmd {
    /// List the pool's VMs (not templates, snapshots or dom0) with their disks and NICs.
    Vms(JsonArg),
    /// List the pool's storage repositories and networks.
    Pool(JsonArg),
    /// Back up a VM: snapshot, read the blocks changed since its previous version (CBT), or
    /// everything (deduplicated) the first time or when the CBT chain is broken, then release
    /// the previous snapshot.
    Backup {
        /// The VM: name or uuid.
        #[arg(long)]
        vm: String,
        /// Quiesce the guest (VSS) when it offers it; otherwise a crash-consistent snapshot.
        #[arg(long)]
        quiesce: bool,
        /// How to read the disks.
        #[arg(long, value_enum, default_value = "auto")]
        transport: XenTransport,
        /// Read everything (deduplicated) instead of building on the previous version.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        threads: ThreadsArg,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Restore a version as a new, halted VM: its recorded configuration, its disks on an SR.
    Restore {
        #[command(flatten)]
        which: VersionArg,
        /// The SR for the disks: name or uuid.
        #[arg(long)]
        sr: String,
        /// The network for every NIC: name or uuid (default: the networks the VM had).
        #[arg(long)]
        network: Option<String>,
        /// The new VM's name (default: the recorded one).
        #[arg(long)]
        name: Option<String>,
        /// Let XAPI make new MAC addresses (default: the recorded ones).
        #[arg(long)]
        new_macs: bool,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Write one disk of a version over an existing VDI (every byte).
    RestoreDisk {
        #[command(flatten)]
        which: VersionArg,
        /// Disk position, from 0.
        #[arg(long, default_value_t = 0)]
        disk: u32,
        /// The VDI to overwrite: uuid.
        #[arg(long)]
        vdi: String,
        #[command(flatten)]
        out: JsonArg,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum XenTransport {
    /// NBD when the pool offers it, else /export_raw_vdi.
    Auto,
    /// XAPI's NBD export only.
    Nbd,
    /// /export_raw_vdi only.
    Export,
}

fn password(a: &XenArgs) -> Result<String> {
    if let Some(f) = &a.xen_password_file {
        return read_secret(f, "XAPI password");
    }
    if let Ok(p) = std::env::var("ALIKE_XEN_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        return Ok(rpassword::prompt_password(format!("XAPI password for {}@{}: ", a.user, a.url))?);
    }
    bail!("no XAPI password: use --xen-password-file, set ALIKE_XEN_PASSWORD, or run on a terminal")
}

fn connect(a: &XenArgs) -> Result<XenPool> {
    let pw = password(a)?;
    let mut o = alike::XenConnectOptions::default().insecure(a.insecure);
    if let Some(fp) = &a.fingerprint {
        o = o.fingerprint(fp);
    }
    alike::xen_pool_with(&a.url, &a.user, &pw, &o).with_context(|| format!("connecting to {}", a.url))
}

/// A disk's VDI uuid among the host identifiers of a report.
fn vdi(ids: &std::collections::BTreeMap<String, String>) -> &str {
    ids.get("vdi").or_else(|| ids.get("vdi_uuid")).map_or("?", String::as_str)
}

/// What `alike xen restore|restore-disk --json` prints: the version, and the report.
#[derive(serde::Serialize)]
struct Restored<'a, R> {
    id: &'a str,
    vm: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    disk: Option<u32>,
    restored: &'a R,
}

pub(crate) fn run(cli: &Cli, a: &XenArgs) -> Result<()> {
    match &a.cmd {
        XenCmd::Vms(out) => vms(a, out),
        XenCmd::Pool(out) => pool(a, out),
        XenCmd::Backup { vm, quiesce, transport, full, threads, out } => {
            backup(cli, a, vm, *quiesce, *transport, *full, threads, out)
        }
        XenCmd::Restore { which, sr, network, name, new_macs, out } => {
            restore(cli, a, which, sr, network.as_deref(), name.as_deref(), *new_macs, out)
        }
        XenCmd::RestoreDisk { which, disk, vdi, out } => restore_disk(cli, a, which, *disk, vdi, out),
    }
}

fn vms(a: &XenArgs, out: &JsonArg) -> Result<()> {
    let vms = connect(a)?.vms()?;
    if out.json {
        return print_json(&vms);
    }
    for v in &vms {
        let disks: Vec<String> = v
            .disks
            .iter()
            .map(|d| format!("{}:{} {}{}", d.position, d.name, mib(d.size), if d.cbt_enabled { " cbt" } else { "" }))
            .collect();
        println!(
            "{}  {:<20} {:<8} {} vCPU {:>6}  {}",
            v.uuid,
            v.name,
            v.power_state,
            v.vcpus,
            mib(v.memory_bytes),
            disks.join(", ")
        );
    }
    Ok(())
}

fn pool(a: &XenArgs, out: &JsonArg) -> Result<()> {
    let pool = connect(a)?;
    let (srs, nets) = (pool.srs()?, pool.networks()?);
    if out.json {
        return print_json(&serde_json::json!({"srs": srs, "networks": nets}));
    }
    for s in &srs {
        println!(
            "SR       {}  {:<24} {:<6} {} of {} used{}",
            s.uuid,
            s.name,
            s.kind,
            mib(s.physical_utilisation),
            mib(s.physical_size),
            if s.cbt { ", CBT" } else { "" }
        );
    }
    for n in &nets {
        println!("network  {}  {:<24} {} {}", n.uuid, n.name, n.bridge, n.purpose.join(","));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn backup(
    cli: &Cli,
    a: &XenArgs,
    vm: &str,
    quiesce: bool,
    transport: XenTransport,
    full: bool,
    threads: &ThreadsArg,
    out: &JsonArg,
) -> Result<()> {
    let store = open(cli)?;
    let mut pool = connect(a)?;
    pool.set_backup_options(XenBackupOptions::default().transport(match transport {
        XenTransport::Auto => Transport::Auto,
        XenTransport::Nbd => Transport::Nbd,
        XenTransport::Export => Transport::Export,
    }));
    let r = long(cli, "backup", |cb, cancel| {
        let mut o = BackupOptions::default().threads(threads.threads).cancel_token(cancel).quiesce(if quiesce {
            Quiesce::IfSupported
        } else {
            Quiesce::No
        });
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        if full {
            o = o.parent(Parent::None);
        }
        store.backup_vm(&pool, vm, &o)
    })?;
    for d in &r.disks {
        if let Some(why) = &d.fallback_reason {
            eprintln!("alike: warning: disk {} (VDI {}) was read in full: {why}", d.position, vdi(&d.ids));
        }
    }
    for w in &r.warnings {
        eprintln!("alike: warning: {w}");
    }
    if out.json {
        return print_json(&r);
    }
    println!("{}", r.id);
    for d in &r.disks {
        eprintln!(
            "disk {} (VDI {}): {} over {}, read {}",
            d.position,
            vdi(&d.ids),
            d.mode,
            d.transport,
            mib(d.read_bytes)
        );
    }
    eprintln!(
        "backed up VM {} ({} snapshot): read {} in {:.2} s, {} new, {} stored; released {} earlier snapshot(s)",
        r.vm,
        r.consistency,
        mib(r.read_bytes),
        r.elapsed_seconds,
        mib(r.new_bytes),
        mib(r.new_stored_bytes),
        r.released.destroyed_snapshots.len()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn restore(
    cli: &Cli,
    a: &XenArgs,
    which: &VersionArg,
    sr: &str,
    network: Option<&str>,
    name: Option<&str>,
    new_macs: bool,
    out: &JsonArg,
) -> Result<()> {
    let store = open(cli)?;
    let v = which.find(&store)?;
    let pool = connect(a)?;
    let mut place = Placement::on(sr).keep_macs(!new_macs);
    if let Some(n) = name {
        place = place.name(n);
    }
    if let Some(n) = network {
        place = place.network(n);
    }
    let r = long(cli, "restore", |cb, cancel| {
        let mut o = RestoreOptions::default().cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        store.restore_vm(&v, &pool, &place, &o)
    })?;
    for w in &r.warnings {
        eprintln!("alike: warning: {w}");
    }
    if out.json {
        return print_json(&Restored { id: &v.id, vm: &v.vm, disk: None, restored: &r });
    }
    println!("{}", r.vm_uuid);
    for d in &r.disks {
        eprintln!("disk {} -> VDI {} ({}, {} sent)", d.position, vdi(&d.ids), d.format, mib(d.sent_bytes));
    }
    eprintln!(
        "restored version {} of {} as VM {:?} ({}), halted, in {:.2} s",
        v.short_id(),
        v.vm,
        r.name,
        r.vm_uuid,
        r.elapsed_seconds
    );
    Ok(())
}

fn restore_disk(cli: &Cli, a: &XenArgs, which: &VersionArg, disk: u32, target: &str, out: &JsonArg) -> Result<()> {
    let store = open(cli)?;
    let v = which.find(&store)?;
    let pool = connect(a)?;
    let r = long(cli, "restore", |cb, cancel| {
        let mut o = RestoreOptions::default().cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        store.restore_vm_disk(&v, disk, &pool, target, &o)
    })?;
    if out.json {
        return print_json(&Restored { id: &v.id, vm: &v.vm, disk: Some(disk), restored: &r });
    }
    eprintln!(
        "wrote disk {disk} of {} ({}) over VDI {}: {} sent ({}) in {:.2} s",
        v.short_id(),
        v.vm,
        vdi(&r.ids),
        mib(r.sent_bytes),
        r.format,
        r.elapsed_seconds
    );
    Ok(())
}
