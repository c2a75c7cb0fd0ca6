//! `alike xen …`: a XenServer/XCP-ng pool — list its VMs, back one up
//! (CBT incremental when possible), restore a version as a new VM or over
//! an existing VDI.

use std::io::IsTerminal;
use std::path::PathBuf;

use alike::{BackupOptions, Parent, Placement, Quiesce, RestoreOptions, Transport, XenBackupOptions, XenPool};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::{Bar, Cli, cancel_on_ctrl_c, mib, open};

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
    #[command(subcommand)]
    cmd: XenCmd,
}

#[derive(Subcommand, Debug)]
enum XenCmd {
    /// List the pool's VMs (not templates, snapshots or dom0) with their disks and NICs.
    Vms {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// List the pool's storage repositories and networks.
    Pool {
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
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
        /// Worker threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Restore a version as a new, halted VM: its recorded configuration, its disks on an SR.
    Restore {
        /// Version id (or unique prefix), or `latest` (with --vm).
        version: String,
        /// VM name (needed with `latest`).
        #[arg(long)]
        vm: Option<String>,
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
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write one disk of a version over an existing VDI (every byte).
    RestoreDisk {
        /// Version id (or unique prefix), or `latest` (with --vm).
        version: String,
        /// VM name (needed with `latest`).
        #[arg(long)]
        vm: Option<String>,
        /// Disk position, from 0.
        #[arg(long, default_value_t = 0)]
        disk: u32,
        /// The VDI to overwrite: uuid.
        #[arg(long)]
        vdi: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
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
        let s = std::fs::read_to_string(f).with_context(|| format!("reading XAPI password file {}", f.display()))?;
        return Ok(s.trim_end_matches(['\n', '\r']).to_string());
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
    alike::xen_pool(&a.url, &a.user, &pw, a.fingerprint.as_deref()).with_context(|| format!("connecting to {}", a.url))
}

/// A disk's VDI uuid among the host identifiers of a report.
fn vdi(ids: &std::collections::BTreeMap<String, String>) -> &str {
    ids.get("vdi").or_else(|| ids.get("vdi_uuid")).map_or("?", String::as_str)
}

fn version(store: &alike::Store, spec: &str, vm: Option<&str>) -> Result<alike::Version> {
    if spec == "latest"
        && vm.is_none()
        && store.versions(None)?.iter().map(|v| &v.vm).collect::<std::collections::HashSet<_>>().len() > 1
    {
        bail!("`latest` needs --vm NAME when the store holds several VMs");
    }
    Ok(store.version(spec, vm)?)
}

pub(crate) fn run(cli: &Cli, a: &XenArgs) -> Result<()> {
    match &a.cmd {
        XenCmd::Vms { json } => {
            let vms = connect(a)?.vms()?;
            if *json {
                println!("{}", serde_json::to_string(&vms)?);
                return Ok(());
            }
            for v in &vms {
                let disks: Vec<String> = v
                    .disks
                    .iter()
                    .map(|d| {
                        format!("{}:{} {}{}", d.position, d.name, mib(d.size), if d.cbt_enabled { " cbt" } else { "" })
                    })
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
        }
        XenCmd::Pool { json } => {
            let pool = connect(a)?;
            let (srs, nets) = (pool.srs()?, pool.networks()?);
            if *json {
                println!("{}", json!({"srs": srs, "networks": nets}));
                return Ok(());
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
        }
        XenCmd::Backup { vm, quiesce, transport, full, threads, json } => {
            let store = open(cli)?;
            let mut pool = connect(a)?;
            pool.set_backup_options(XenBackupOptions::default().transport(match transport {
                XenTransport::Auto => Transport::Auto,
                XenTransport::Nbd => Transport::Nbd,
                XenTransport::Export => Transport::Export,
            }));
            let bar = Bar::new(cli, "backup");
            let mut opts = BackupOptions::default()
                .threads(*threads)
                .cancel_token(cancel_on_ctrl_c())
                .quiesce(if *quiesce { Quiesce::IfSupported } else { Quiesce::No });
            if let Some(cb) = bar.callback() {
                opts = opts.progress(cb);
            }
            if *full {
                opts = opts.parent(Parent::None);
            }
            let r = store.backup_vm(&pool, vm, &opts);
            bar.done();
            let r = r?;
            for d in &r.disks {
                if let Some(why) = &d.fallback_reason {
                    eprintln!("alike: warning: disk {} (VDI {}) was read in full: {why}", d.position, vdi(&d.ids));
                }
            }
            for w in &r.warnings {
                eprintln!("alike: warning: {w}");
            }
            if *json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
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
            }
        }
        XenCmd::Restore { version: spec, vm, sr, network, name, new_macs, json } => {
            let store = open(cli)?;
            let v = version(&store, spec, vm.as_deref())?;
            let pool = connect(a)?;
            let bar = Bar::new(cli, "restore");
            let mut opts = RestoreOptions::default().cancel_token(cancel_on_ctrl_c());
            if let Some(cb) = bar.callback() {
                opts = opts.progress(cb);
            }
            let mut place = Placement::on(sr).keep_macs(!*new_macs);
            if let Some(n) = name {
                place = place.name(n);
            }
            if let Some(n) = network {
                place = place.network(n);
            }
            let r = store.restore_vm(&v, &pool, &place, &opts);
            bar.done();
            let r = r?;
            for w in &r.warnings {
                eprintln!("alike: warning: {w}");
            }
            if *json {
                println!("{}", json!({"id": v.id, "vm": v.vm, "restored": r}));
            } else {
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
            }
        }
        XenCmd::RestoreDisk { version: spec, vm, disk, vdi, json } => {
            let store = open(cli)?;
            let v = version(&store, spec, vm.as_deref())?;
            let pool = connect(a)?;
            let bar = Bar::new(cli, "restore");
            let mut opts = RestoreOptions::default().cancel_token(cancel_on_ctrl_c());
            if let Some(cb) = bar.callback() {
                opts = opts.progress(cb);
            }
            let r = store.restore_vm_disk(&v, *disk, &pool, vdi, &opts);
            bar.done();
            let r = r?;
            if *json {
                println!("{}", json!({"id": v.id, "vm": v.vm, "disk": disk, "restored": r}));
            } else {
                eprintln!(
                    "wrote disk {disk} of {} ({}) over VDI {}: {} sent ({}) in {:.2} s",
                    v.short_id(),
                    v.vm,
                    self::vdi(&r.ids),
                    mib(r.sent_bytes),
                    r.format,
                    r.elapsed_seconds
                );
            }
        }
    }
    Ok(())
}
