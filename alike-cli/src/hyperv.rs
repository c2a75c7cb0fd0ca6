//! `alike hyperv …`: a Hyper-V host over WMI/WinRM (NTLM, message
//! encryption) with its disks read over SMB — list its VMs, back one up
//! (RCT incremental when possible), restore a version (of a Hyper-V VM, or
//! of a Xen VM: the facade maps its configuration) as a new VM on the host.

use std::io::IsTerminal;
use std::path::PathBuf;

use alike::{BackupOptions, HyperVHost, HyperVHostOptions, Parent, Placement, Quiesce, RestoreOptions};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::Cli;
use crate::commands::VersionArg;
use crate::common::{JsonArg, ThreadsArg, long, mib, open, print_json, read_secret};

/// A host and what to do with it.
#[derive(Args, Debug)]
pub(crate) struct HypervArgs {
    /// The host's WS-Management endpoint: http://HOST:5985/wsman.
    #[arg(long, env = "ALIKE_HYPERV_URL")]
    url: String,
    /// The account (user, DOMAIN\user or user@domain), for WinRM and the host's share.
    #[arg(long, env = "ALIKE_HYPERV_USER", default_value = "Administrator")]
    user: String,
    /// Read the password from this file (else ALIKE_HYPERV_PASSWORD, else a prompt on a terminal).
    /// (`--password-file` is the store's passphrase.)
    #[arg(long, value_name = "F")]
    hyperv_password_file: Option<PathBuf>,
    /// The SMB port of the host's administrative shares.
    #[arg(long, default_value_t = 445)]
    smb_port: u16,
    /// With https:// (port 5986): accept the host's certificate by its SHA-256 fingerprint
    /// (AB:CD:… or hex); WinRM certificates are usually self-signed.
    #[arg(long, value_name = "SHA256", conflicts_with = "ca_file")]
    fingerprint: Option<String>,
    /// With https://: trust the CA certificate(s) in this PEM file (the host's must chain to one
    /// and name the host).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// With https://: authenticate with Basic (else NTLM).
    #[arg(long)]
    basic: bool,
    #[command(subcommand)]
    cmd: HypervCmd,
}

#[derive(Subcommand, Debug)]
enum HypervCmd {
    /// List the host's VMs with their configuration and disks.
    Vms(JsonArg),
    /// Back up a VM: a recovery checkpoint, its disks read over SMB — only the ranges RCT says
    /// changed since the previous version's reference point, or everything (deduplicated) the
    /// first time or when the RCT chain is broken — then the checkpoint becomes a reference point.
    Backup {
        /// The VM: name or id.
        #[arg(long)]
        vm: String,
        /// Quiesce the guest (VSS) when it can; otherwise a crash-consistent checkpoint.
        #[arg(long)]
        quiesce: bool,
        /// Read everything (deduplicated) instead of building on the previous version.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        threads: ThreadsArg,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Restore a version as a new VM on the host, off: VHDX files copied to a folder of the host
    /// over SMB, the VM defined with the recorded generation, secure boot, vCPUs, memory, disks at
    /// their controller locations and NICs. A version backed up from Xen restores too (generation
    /// 1 for a BIOS guest, 2 for UEFI; what does not map is said in warnings).
    Restore {
        #[command(flatten)]
        which: VersionArg,
        /// The host's folder for the VM's files: C:\…; the VM gets a folder of its name in it.
        #[arg(long)]
        path: String,
        /// The virtual switch for every NIC (default: the switches the VM had, by name).
        #[arg(long)]
        switch: Option<String>,
        /// The new VM's name (default: the recorded one).
        #[arg(long)]
        name: Option<String>,
        /// Let the host make new MAC addresses (default: the recorded ones, static).
        #[arg(long)]
        new_macs: bool,
        /// A local folder to stage each VHDX in before it is copied to the host (default: the
        /// system's temporary folder; it needs room for the disk's data).
        #[arg(long, value_name = "DIR")]
        staging_dir: Option<PathBuf>,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Replica VMs: register a replica folder (`alike replica`'s VHDX folder) on the host as a
    /// replica VM that the host refuses to start, and fail it over.
    #[command(subcommand)]
    Replica(ReplicaCmd),
}

#[derive(Subcommand, Debug)]
enum ReplicaCmd {
    /// Define a new, off VM from the replica folder DIR's newest point (VHDX files copied to the
    /// host over SMB) with the configuration the folder recorded (or a store version's, Hyper-V's
    /// or Xen's), made a replica (SetAuthorizationEntry): the host refuses to start it until
    /// `replica failover`.
    Register {
        /// The replica folder.
        dir: PathBuf,
        /// The version whose recorded configuration the VM gets: an id, a prefix or `latest`
        /// (default: the configuration the replica folder recorded).
        #[arg(long = "config-version", value_name = "VERSION")]
        version: Option<String>,
        /// VM name for `latest` (default: the replica's VM).
        #[arg(long)]
        vm: Option<String>,
        /// The host's folder for the VM's files: C:\…; the VM gets a folder of its name in it.
        #[arg(long)]
        path: String,
        /// The virtual switch for every NIC (default: the switches the VM had, by name).
        #[arg(long)]
        switch: Option<String>,
        /// The VM's name (default: the recorded one followed by " (replica)").
        #[arg(long)]
        name: Option<String>,
        /// Let the host make new MAC addresses (default: the recorded ones, static).
        #[arg(long)]
        new_macs: bool,
        /// A local folder to stage each VHDX in before it is copied to the host.
        #[arg(long, value_name = "DIR")]
        staging_dir: Option<PathBuf>,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Test failover: a new VM "<VM> - Test" with no network adapters from a point of DIR (the
    /// newest by default), each disk a differencing AVHDX over a copy of the point, while runs
    /// into DIR go on; end it with `replica test-end`.
    Test {
        /// The replica folder.
        dir: PathBuf,
        /// The point.
        #[arg(long)]
        point: Option<u64>,
        /// The version whose recorded configuration the VM gets (default: the folder's).
        #[arg(long = "config-version", value_name = "VERSION")]
        version: Option<String>,
        /// VM name for `latest` (default: the replica's VM).
        #[arg(long)]
        vm: Option<String>,
        /// The host's folder for the test VM's files: C:\…; the VM gets a folder of its name in it.
        #[arg(long)]
        path: String,
        /// The test VM's name (default: the replica's VM followed by " - Test").
        #[arg(long)]
        name: Option<String>,
        /// Put the test VM's NICs on this (isolated) switch, with new MACs, instead of leaving
        /// them out.
        #[arg(long)]
        switch: Option<String>,
        /// Leave the test VM off.
        #[arg(long)]
        no_start: bool,
        /// A local folder to stage each VHDX in before it is copied to the host.
        #[arg(long, value_name = "DIR")]
        staging_dir: Option<PathBuf>,
        #[command(flatten)]
        out: JsonArg,
    },
    /// End a test failover: turn the test VM NAME (name or id) off, remove it and its files
    /// (refused for a VM that is no test VM).
    TestEnd {
        /// The test VM: name or id.
        name: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Failback: send what changed on the failed-over VM NAME (off) since its point back onto
    /// the original disks (raw images or block devices, in disk order; only differing bytes are
    /// written), or with --to-new-images write its whole disks into new raw images (an existing
    /// path is refused; all-zero 4 KiB pieces stay holes), then swap roles: NAME is a replica
    /// again and DIR takes runs again.
    Failback {
        /// The replica folder.
        dir: PathBuf,
        /// The failed-over VM: name or id.
        name: String,
        /// The original disks, in the VM's disk order.
        #[arg(long = "to-images", value_name = "IMG", num_args = 1.., required_unless_present = "new_images", conflicts_with = "new_images")]
        originals: Vec<PathBuf>,
        /// New raw images to make, in the VM's disk order (the original disks are gone).
        #[arg(long = "to-new-images", value_name = "IMG", num_args = 1..)]
        new_images: Vec<PathBuf>,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Fail the replica folder DIR over to its registered VM NAME (name or id): the VM then
    /// starts, and DIR refuses runs until it is registered again.
    Failover {
        /// The replica folder.
        dir: PathBuf,
        /// The replica VM: name or id.
        name: String,
    },
}

/// The configuration a replica VM gets: a store version's when named, else
/// the one the folder recorded.
fn replica_config(
    cli: &Cli,
    replica: &alike::Replica,
    dir: &std::path::Path,
    version: Option<&str>,
    vm: Option<&str>,
) -> Result<alike::VmInfo> {
    match version {
        Some(version) => {
            let store = open(cli)?;
            Ok(store.version(version, Some(vm.unwrap_or(replica.vm())))?.config().clone())
        }
        None => replica.vm_config()?.with_context(|| {
            format!(
                "{}: the replica folder records no VM configuration (its runs came from plain images): give \
                 --config-version VERSION",
                dir.display()
            )
        }),
    }
}

fn password(a: &HypervArgs) -> Result<String> {
    if let Some(f) = &a.hyperv_password_file {
        return read_secret(f, "Hyper-V password");
    }
    if let Ok(p) = std::env::var("ALIKE_HYPERV_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        return Ok(rpassword::prompt_password(format!("password for {}@{}: ", a.user, a.url))?);
    }
    bail!("no Hyper-V password: use --hyperv-password-file, set ALIKE_HYPERV_PASSWORD, or run on a terminal")
}

fn connect(a: &HypervArgs) -> Result<HyperVHost> {
    connect_staging(a, None)
}

fn connect_staging(a: &HypervArgs, staging: Option<&PathBuf>) -> Result<HyperVHost> {
    let pw = password(a)?;
    let mut o = HyperVHostOptions::new(&a.url, &a.user, &pw);
    o.smb_port(a.smb_port);
    if let Some(fp) = &a.fingerprint {
        o.wsman.server_cert(alike::HyperVCertCheck::pin(fp)?);
    }
    if let Some(f) = &a.ca_file {
        let pem = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        o.wsman.server_cert(alike::HyperVCertCheck::CaPem(pem));
    }
    o.wsman.basic(a.basic);
    o.staging_dir = staging.cloned();
    HyperVHost::connect(&o).with_context(|| format!("connecting to {}", a.url))
}

pub(crate) fn run(cli: &Cli, a: &HypervArgs) -> Result<()> {
    match &a.cmd {
        HypervCmd::Vms(out) => vms(a, out),
        HypervCmd::Backup { vm, quiesce, full, threads, out } => backup(cli, a, vm, *quiesce, *full, threads, out),
        HypervCmd::Restore { which, path, switch, name, new_macs, staging_dir, out } => {
            let mut place = Placement::on(path.as_str()).keep_macs(!*new_macs);
            if let Some(n) = name {
                place = place.name(n.as_str());
            }
            if let Some(s) = switch {
                place = place.network(s.as_str());
            }
            restore(cli, a, which, &place, staging_dir.as_ref(), out)
        }
        HypervCmd::Replica(ReplicaCmd::Register {
            dir,
            version,
            vm,
            path,
            switch,
            name,
            new_macs,
            staging_dir,
            out,
        }) => {
            let replica = alike::Replica::open(dir)?;
            let name = name.clone().unwrap_or_else(|| format!("{} (replica)", replica.vm()));
            let mut place = Placement::on(path.as_str()).keep_macs(!*new_macs).name(name);
            if let Some(s) = switch {
                place = place.network(s.as_str());
            }
            let config = replica_config(cli, &replica, dir, version.as_deref(), vm.as_deref())?;
            let host = connect_staging(a, staging_dir.as_ref())?;
            let r = long(cli, "register", |cb, cancel| {
                let mut o = RestoreOptions::default().cancel_token(cancel);
                if let Some(cb) = cb {
                    o = o.progress(cb);
                }
                replica.register_hyperv(&host, &config, &place, &o)
            })?;
            for w in &r.warnings {
                eprintln!("alike: warning: {w}");
            }
            if out.json {
                return print_json(&r);
            }
            println!("{}", r.vm_id);
            eprintln!(
                "registered point {} of {} as replica VM {:?} ({}), off and refused a start until failover, in {:.2} s",
                r.point,
                dir.display(),
                r.name,
                r.vm_id,
                r.elapsed_seconds
            );
            Ok(())
        }
        HypervCmd::Replica(ReplicaCmd::Test {
            dir,
            point,
            version,
            vm,
            path,
            name,
            switch,
            no_start,
            staging_dir,
            out,
        }) => {
            let replica = alike::Replica::open(dir)?;
            let config = replica_config(cli, &replica, dir, version.as_deref(), vm.as_deref())?;
            let mut place = Placement::on(path.as_str());
            if let Some(n) = name {
                place = place.name(n.as_str());
            }
            if let Some(s) = switch {
                place = place.network(s.as_str());
            }
            let host = connect_staging(a, staging_dir.as_ref())?;
            let t = long(cli, "test failover", |cb, cancel| {
                let mut o = RestoreOptions::default().cancel_token(cancel);
                if let Some(cb) = cb {
                    o = o.progress(cb);
                }
                replica.test_hyperv(&host, &config, *point, &place, &o)
            })?;
            if !*no_start {
                host.set_running(&t.vm_id, true)?;
            }
            for w in &t.warnings {
                eprintln!("alike: warning: {w}");
            }
            if out.json {
                return print_json(&t);
            }
            println!("{}", t.vm_id);
            eprintln!(
                "test VM {:?} ({}) from point {} of {}{}, {}; end it with `replica test-end`",
                t.name,
                t.vm_id,
                t.point,
                dir.display(),
                if *no_start { ", off" } else { ", started" },
                switch.as_ref().map_or_else(|| "no network adapters".to_owned(), |s| format!("NICs on {s:?}"))
            );
            Ok(())
        }
        HypervCmd::Replica(ReplicaCmd::TestEnd { name, out }) => {
            let files = alike::Replica::end_test_hyperv(&connect(a)?, name)?;
            if out.json {
                return print_json(&serde_json::json!({ "vm": name, "removed_files": files }));
            }
            eprintln!("test VM {name:?} removed with {} file(s)", files.len());
            Ok(())
        }
        HypervCmd::Replica(ReplicaCmd::Failback { dir, name, originals, new_images, out }) => {
            let replica = alike::Replica::open(dir)?;
            let host = connect(a)?;
            let r = long(cli, "failback", |cb, cancel| {
                let mut o = RestoreOptions::default().cancel_token(cancel);
                if let Some(cb) = cb {
                    o = o.progress(cb);
                }
                if new_images.is_empty() {
                    replica.failback_hyperv(&host, name, originals, &o)
                } else {
                    replica.failback_hyperv_new(&host, name, new_images, &o)
                }
            })?;
            for w in &r.warnings {
                eprintln!("alike: warning: {w}");
            }
            if out.json {
                return print_json(&r);
            }
            eprintln!(
                "failed back from {name:?}: {} changed since the failover, {} read, {} sent in {:.2} s; {name:?} is a \
                 replica again",
                mib(r.changed_bytes),
                mib(r.read_bytes),
                mib(r.sent_bytes),
                r.elapsed_seconds
            );
            Ok(())
        }
        HypervCmd::Replica(ReplicaCmd::Failover { dir, name }) => {
            let replica = alike::Replica::open(dir)?;
            replica.fail_over_hyperv(&connect(a)?, name)?;
            eprintln!("failed {} over to VM {name:?}: it starts now; the folder takes no more runs", dir.display());
            Ok(())
        }
    }
}

#[derive(serde::Serialize)]
struct Restored<'a, R> {
    id: &'a str,
    vm: &'a str,
    restored: &'a R,
}

fn restore(
    cli: &Cli,
    a: &HypervArgs,
    which: &VersionArg,
    place: &Placement,
    staging: Option<&PathBuf>,
    out: &JsonArg,
) -> Result<()> {
    let store = open(cli)?;
    let v = which.find(&store)?;
    let host = connect_staging(a, staging)?;
    let r = long(cli, "restore", |cb, cancel| {
        let mut o = RestoreOptions::default().cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        store.restore_vm(&v, &host, place, &o)
    })?;
    for w in &r.warnings {
        eprintln!("alike: warning: {w}");
    }
    if out.json {
        return print_json(&Restored { id: &v.id, vm: &v.vm, restored: &r });
    }
    println!("{}", r.vm_uuid);
    for d in &r.disks {
        let path = d.ids.get("path").cloned().unwrap_or_default();
        eprintln!("disk {} -> {path} ({} written)", d.position, mib(d.sent_bytes));
    }
    eprintln!(
        "restored version {} of {} as VM {:?} ({}), off, in {:.2} s",
        v.short_id(),
        v.vm,
        r.name,
        r.vm_uuid,
        r.elapsed_seconds
    );
    Ok(())
}

fn vms(a: &HypervArgs, out: &JsonArg) -> Result<()> {
    let vms = connect(a)?.vms()?;
    if out.json {
        return print_json(&vms);
    }
    for v in &vms {
        let disks: Vec<String> = v
            .disks
            .iter()
            .map(|d| format!("{}:{} {}:{} {}", d.position, d.controller, d.controller_index, d.location, d.path))
            .collect();
        println!(
            "{}  {:<20} {:<8} gen {} {} vCPU {:>6}  {}",
            v.id,
            v.name,
            if v.running { "running" } else { "off" },
            v.generation,
            v.vcpus,
            mib(v.memory_mb << 20),
            disks.join(", ")
        );
    }
    Ok(())
}

fn backup(
    cli: &Cli,
    a: &HypervArgs,
    vm: &str,
    quiesce: bool,
    full: bool,
    threads: &ThreadsArg,
    out: &JsonArg,
) -> Result<()> {
    let store = open(cli)?;
    let host = connect(a)?;
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
        store.backup_vm(&host, vm, &o)
    })?;
    let path = |ids: &std::collections::BTreeMap<String, String>| ids.get("path").cloned().unwrap_or_default();
    for d in &r.disks {
        if let Some(why) = &d.fallback_reason {
            eprintln!("alike: warning: disk {} ({}) was read in full: {why}", d.position, path(&d.ids));
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
            "disk {} ({}): {} over {}, read {}",
            d.position,
            path(&d.ids),
            d.mode,
            d.transport,
            mib(d.read_bytes)
        );
    }
    eprintln!(
        "backed up VM {} ({} checkpoint): read {} in {:.2} s, {} new, {} stored; released {} earlier reference point(s)",
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
