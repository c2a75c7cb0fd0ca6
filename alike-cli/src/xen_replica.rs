//! Replicas kept as VMs on a XenServer/XCP-ng pool (`docs/replica-xen.md`):
//! `alike replicate --source-xen … --target-xen …` and `alike replica
//! xen-list|test|test-end|failover|failback`, thin over the facade's
//! `replicate_xen` and `XenReplicaVm`. XAPI passwords come from files, the
//! environment or a prompt — never the command line.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use alike::{ReplicateOptions, XenPool, XenReplicaOptions, XenReplicaVm};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::Cli;
use crate::common::{JsonArg, long, mib, print_json, read_secret};

/// How one pool is reached.
struct PoolSpec<'a> {
    url: &'a str,
    user: &'a str,
    password_file: Option<&'a PathBuf>,
    password_env: &'static str,
    fingerprint: Option<&'a String>,
    insecure: bool,
}

/// A pool's XAPI password: its file, its environment variable, or a prompt.
fn password(p: &PoolSpec<'_>) -> Result<String> {
    Ok(if let Some(f) = p.password_file {
        read_secret(f, "XAPI password")?
    } else if let Ok(pw) = std::env::var(p.password_env) {
        pw
    } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        rpassword::prompt_password(format!("XAPI password for {}@{}: ", p.user, p.url))?
    } else {
        bail!("no XAPI password for {}: give its password file, set {}, or run on a terminal", p.url, p.password_env)
    })
}

fn connect(p: &PoolSpec<'_>) -> Result<XenPool> {
    let pw = password(p)?;
    let mut o = alike::XenConnectOptions::default().insecure(p.insecure);
    if let Some(fp) = p.fingerprint {
        o = o.fingerprint(fp);
    }
    alike::xen_pool_with(p.url, p.user, &pw, &o).with_context(|| format!("connecting to {}", p.url))
}

/// `alike replicate` from a VM of one pool onto its replica VM on another.
#[derive(Args, Debug, Default)]
pub(crate) struct XenReplicateArgs {
    /// The source pool (a VM of it replicated by CBT; --vm names it).
    #[arg(long, value_name = "URL", requires_all = ["target_xen", "sr", "replica_state"])]
    pub(crate) source_xen: Option<String>,
    /// The source pool's XAPI user.
    #[arg(long, value_name = "USER", default_value = "root")]
    source_xen_user: String,
    /// Read the source pool's XAPI password from this file (else ALIKE_SOURCE_XEN_PASSWORD).
    #[arg(long, value_name = "F")]
    source_xen_password_file: Option<PathBuf>,
    /// The source pool's certificate, by SHA-256 fingerprint.
    #[arg(long, value_name = "SHA256")]
    source_xen_fingerprint: Option<String>,
    /// The target pool, where the replica VM lives (made on the first run from the source
    /// VM's configuration, named "NAME (replica)", blocked from starting).
    #[arg(long, value_name = "URL")]
    target_xen: Option<String>,
    /// The target pool's XAPI user.
    #[arg(long, value_name = "USER", default_value = "root")]
    target_xen_user: String,
    /// Read the target pool's XAPI password from this file (else ALIKE_TARGET_XEN_PASSWORD).
    #[arg(long, value_name = "F")]
    target_xen_password_file: Option<PathBuf>,
    /// The target pool's certificate, by SHA-256 fingerprint.
    #[arg(long, value_name = "SHA256")]
    target_xen_fingerprint: Option<String>,
    /// The SR of a new replica's disks (name or uuid).
    #[arg(long, value_name = "SR")]
    sr: Option<String>,
    /// The network of a new replica's NICs (default: each NIC's network by uuid or name).
    #[arg(long, value_name = "NETWORK")]
    network: Option<String>,
    /// Where the receiver keeps replicas' keys, records, history and change-tracking state.
    #[arg(long, value_name = "DIR")]
    replica_state: Option<PathBuf>,
    /// Allow http:// to pools not on this machine.
    #[arg(long)]
    xen_insecure: bool,
}

/// What `alike replicate --source-xen …` was asked besides the pools.
pub(crate) struct XenRun<'a> {
    pub(crate) vm: &'a str,
    pub(crate) chunking: Option<&'a str>,
    pub(crate) keep: Option<usize>,
    pub(crate) bwlimit: Option<u64>,
    /// `--seed-from STORE:VERSION`, opened.
    pub(crate) seed: Option<(&'a alike::Store, &'a alike::Version)>,
    /// `--backup-to STORE`, opened.
    pub(crate) backup_to: Option<&'a alike::Store>,
    pub(crate) json: bool,
}

/// The Xen ends of `alike replicate --source-xen … --target-xen … --via
/// A[,B]`: the source pool as the sender's job names it, and the replica
/// as the receiver's does. The passwords are read here (files, the
/// environment, a prompt) and travel in each end's SSH channel only.
pub(crate) fn remote_ends(x: &XenReplicateArgs) -> Result<(alike::JobXenPool, alike::JobXenReplica)> {
    let (Some(src_url), Some(dst_url), Some(sr), Some(state)) = (&x.source_xen, &x.target_xen, &x.sr, &x.replica_state)
    else {
        bail!("--source-xen needs --target-xen, --sr and --replica-state");
    };
    let pool = |spec: &PoolSpec<'_>| -> Result<alike::JobXenPool> {
        let mut p = alike::JobXenPool::new(spec.url);
        p.user = spec.user.to_owned();
        p.password = Some(alike::JobPassword(password(spec)?));
        p.fingerprint = spec.fingerprint.cloned();
        p.insecure = spec.insecure;
        Ok(p)
    };
    let src = pool(&PoolSpec {
        url: src_url,
        user: &x.source_xen_user,
        password_file: x.source_xen_password_file.as_ref(),
        password_env: "ALIKE_SOURCE_XEN_PASSWORD",
        fingerprint: x.source_xen_fingerprint.as_ref(),
        insecure: x.xen_insecure,
    })?;
    let dst = pool(&PoolSpec {
        url: dst_url,
        user: &x.target_xen_user,
        password_file: x.target_xen_password_file.as_ref(),
        password_env: "ALIKE_TARGET_XEN_PASSWORD",
        fingerprint: x.target_xen_fingerprint.as_ref(),
        insecure: x.xen_insecure,
    })?;
    let mut r = alike::JobXenReplica::new(dst, sr, state);
    r.network.clone_from(&x.network);
    Ok((src, r))
}

/// `alike replicate --source-xen …`.
pub(crate) fn replicate(cli: &Cli, x: &XenReplicateArgs, run: &XenRun<'_>) -> Result<()> {
    let XenRun { vm, chunking, keep, bwlimit, seed, backup_to, json } = *run;
    let (Some(src_url), Some(dst_url), Some(sr), Some(state)) = (&x.source_xen, &x.target_xen, &x.sr, &x.replica_state)
    else {
        bail!("--source-xen needs --target-xen, --sr and --replica-state");
    };
    let src = connect(&PoolSpec {
        url: src_url,
        user: &x.source_xen_user,
        password_file: x.source_xen_password_file.as_ref(),
        password_env: "ALIKE_SOURCE_XEN_PASSWORD",
        fingerprint: x.source_xen_fingerprint.as_ref(),
        insecure: x.xen_insecure,
    })?;
    let dst = Arc::new(connect(&PoolSpec {
        url: dst_url,
        user: &x.target_xen_user,
        password_file: x.target_xen_password_file.as_ref(),
        password_env: "ALIKE_TARGET_XEN_PASSWORD",
        fingerprint: x.target_xen_fingerprint.as_ref(),
        insecure: x.xen_insecure,
    })?);
    let mut ro = XenReplicaOptions::new(sr, state);
    if let Some(n) = &x.network {
        ro = ro.network(n);
    }
    if let Some(c) = chunking {
        ro = ro.chunking(c.parse()?);
    }
    let (r, replica) = long(cli, "replicate", |cb, cancel| {
        let mut o = ReplicateOptions::default().cancel_token(cancel);
        if let Some(cb) = cb {
            o = o.progress(cb);
        }
        if let Some(k) = keep {
            o = o.keep(k);
        }
        if let Some(b) = bwlimit {
            o = o.bwlimit(b);
        }
        if let Some((store, version)) = seed {
            o = o.seed(store, version);
        }
        if let Some(store) = backup_to {
            o = o.backup_to(store, alike::BackupOptions::default());
        }
        alike::replicate_xen(&src, vm, Arc::clone(&dst), &ro, &o)
    })?;
    if json {
        return print_json(&serde_json::json!({
            "point": r.point, "read_bytes": r.read_bytes, "sent_bytes": r.sent_bytes,
            "replica_vm": replica.uuid(), "replica_name": replica.name(), "report": r,
        }));
    }
    println!("{}", r.point);
    eprintln!(
        "replicated {} disk(s) of {vm} onto {:?} ({}) as point {}: read {}, sent {} ({} of chunks the replica lacked) in {:.2} s{}{}{}",
        r.disks.len(),
        replica.name(),
        replica.uuid(),
        r.point,
        mib(r.read_bytes),
        mib(r.sent_bytes),
        mib(r.needed_bytes),
        r.elapsed_seconds,
        if r.replica.seeded_bytes > 0 {
            format!("; {} from the seed", mib(r.replica.seeded_bytes))
        } else {
            String::new()
        },
        if r.replica.resumed_bytes > 0 {
            format!("; {} resumed from an earlier attempt", mib(r.replica.resumed_bytes))
        } else {
            String::new()
        },
        r.backup.as_ref().map(|b| format!("; stored version {}", b.version.id)).unwrap_or_default()
    );
    Ok(())
}

/// A replica VM: its pool, name and state folder.
#[derive(Args, Debug)]
pub(crate) struct XenReplicaRef {
    /// The pool holding the replica VM.
    #[arg(long, value_name = "URL", env = "ALIKE_XEN_URL")]
    xen: String,
    /// XAPI user.
    #[arg(long, value_name = "USER", default_value = "root")]
    xen_user: String,
    /// Read the XAPI password from this file (else ALIKE_XEN_PASSWORD).
    #[arg(long, value_name = "F")]
    xen_password_file: Option<PathBuf>,
    /// The pool's certificate, by SHA-256 fingerprint.
    #[arg(long, value_name = "SHA256")]
    fingerprint: Option<String>,
    /// Allow http:// to a pool not on this machine.
    #[arg(long)]
    insecure: bool,
    /// The replica VM (name, uuid or ref).
    #[arg(long, value_name = "VM")]
    replica: String,
    /// The receiver's state folder (--replica-state of `alike replicate`).
    #[arg(long, value_name = "DIR")]
    replica_state: PathBuf,
}

impl XenReplicaRef {
    fn pool(&self) -> Result<Arc<XenPool>> {
        Ok(Arc::new(connect(&PoolSpec {
            url: &self.xen,
            user: &self.xen_user,
            password_file: self.xen_password_file.as_ref(),
            password_env: "ALIKE_XEN_PASSWORD",
            fingerprint: self.fingerprint.as_ref(),
            insecure: self.insecure,
        })?))
    }
    fn open(&self) -> Result<XenReplicaVm> {
        Ok(XenReplicaVm::open(self.pool()?, &self.replica, &self.replica_state)?)
    }
}

/// `alike replica …` on a replica VM.
#[derive(Subcommand, Debug)]
pub(crate) enum XenReplicaCmd {
    /// List a replica VM's points, oldest first.
    XenList {
        #[command(flatten)]
        r: XenReplicaRef,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Test failover: boot a copy of a point (the newest by default) without NICs (or on an
    /// isolated --network) while replication goes on; end it with `alike replica test-end`.
    Test {
        #[command(flatten)]
        r: XenReplicaRef,
        /// The point.
        #[arg(long)]
        point: Option<u64>,
        /// Put the copy's NICs on this (isolated) network instead of removing them.
        #[arg(long, value_name = "NETWORK")]
        network: Option<String>,
        /// Leave the copy halted.
        #[arg(long)]
        no_start: bool,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Discard what an unfinished first run kept to resume (its journal in the state folder);
    /// the replica VM's disks go back to its base.
    XenAbandon {
        #[command(flatten)]
        r: XenReplicaRef,
    },
    /// End a test failover: shut the copy down and destroy it with its disks.
    TestEnd {
        #[command(flatten)]
        r: XenReplicaRef,
        /// The test VM (name or uuid).
        #[arg(long, value_name = "VM")]
        vm: String,
    },
    /// Failover: make the replica the live VM at a point (the newest by default), NICs moved by
    /// --map SOURCE-NETWORK=TARGET-NETWORK, start unblocked. Re-addressing inside the guest is
    /// not done.
    Failover {
        #[command(flatten)]
        r: XenReplicaRef,
        /// The point.
        #[arg(long)]
        point: Option<u64>,
        /// SOURCE=TARGET: the source VM's network (uuid or name) → a network of this pool.
        #[arg(long, value_name = "SRC=DST")]
        map: Vec<String>,
        /// Start the VM.
        #[arg(long)]
        start: bool,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Failback: send what changed on the failed-over VM back onto the original VM (halted;
    /// only differing chunks travel), then swap roles: the original is live again, the
    /// failed-over VM a replica again. With --new-vm (the original VM is gone): make a new VM
    /// on the original pool from the failed-over VM's configuration (its disks on --sr), copy
    /// the disks whole onto it, then swap roles the same way; on failure nothing made is left.
    Failback {
        #[command(flatten)]
        r: XenReplicaRef,
        /// The original pool.
        #[arg(long, value_name = "URL")]
        original_xen: String,
        /// The original pool's XAPI user.
        #[arg(long, value_name = "USER", default_value = "root")]
        original_xen_user: String,
        /// Read the original pool's XAPI password from this file (else ALIKE_ORIGINAL_XEN_PASSWORD).
        #[arg(long, value_name = "F")]
        original_xen_password_file: Option<PathBuf>,
        /// The original pool's certificate, by SHA-256 fingerprint.
        #[arg(long, value_name = "SHA256")]
        original_xen_fingerprint: Option<String>,
        /// The VM to fail back onto (name or uuid).
        #[arg(long, value_name = "VM", required_unless_present = "new_vm", conflicts_with = "new_vm")]
        original_vm: Option<String>,
        /// Fail back onto a new VM made on the original pool (tagged alike-failback).
        #[arg(long, requires = "sr")]
        new_vm: bool,
        /// The SR of the new VM's disks (with --new-vm).
        #[arg(long, value_name = "SR", requires = "new_vm")]
        sr: Option<String>,
        /// The network of every NIC of the new VM (with --new-vm; default: the networks the
        /// source VM had on the original pool).
        #[arg(long, value_name = "NET", requires = "new_vm")]
        network: Option<String>,
        /// The new VM's name (with --new-vm; default: the source VM's name).
        #[arg(long, value_name = "NAME", requires = "new_vm")]
        name: Option<String>,
        /// Start the original once it holds the failed-over VM's content.
        #[arg(long)]
        start: bool,
        #[command(flatten)]
        out: JsonArg,
    },
}

pub(crate) fn replica(cli: &Cli, cmd: &XenReplicaCmd) -> Result<()> {
    match cmd {
        XenReplicaCmd::XenList { r, out } => {
            let points = r.open()?.points()?;
            if out.json {
                return print_json(&points);
            }
            for p in points {
                let sizes: Vec<String> = p.disks.iter().map(|d| mib(d.size)).collect();
                println!("{:>6}  {}  {}", p.point, p.time, sizes.join(", "));
            }
            Ok(())
        }
        XenReplicaCmd::Test { r, point, network, no_start, out } => {
            let t = r.open()?.test_failover(*point, network.as_deref(), !no_start)?;
            if out.json {
                return print_json(&t);
            }
            println!("{}", t.uuid);
            eprintln!(
                "test VM {:?} ({}) of point {}{}",
                t.name,
                t.uuid,
                t.point,
                if t.started { ", started" } else { "" }
            );
            Ok(())
        }
        XenReplicaCmd::XenAbandon { r } => {
            let done = r.open()?.discard_partial()?;
            eprintln!("{}", if done { "discarded the unfinished first run" } else { "nothing to discard" });
            Ok(())
        }
        XenReplicaCmd::TestEnd { r, vm } => {
            r.open()?.end_test(vm)?;
            eprintln!("test VM {vm} destroyed");
            Ok(())
        }
        XenReplicaCmd::Failover { r, point, map, start, out } => {
            let mut networks = BTreeMap::new();
            for m in map {
                let (s, d) = m.split_once('=').with_context(|| format!("--map {m:?}: SOURCE=TARGET"))?;
                networks.insert(s.to_owned(), d.to_owned());
            }
            let f = r.open()?.failover(*point, &networks, *start)?;
            if out.json {
                return print_json(&f);
            }
            eprintln!(
                "{:?} ({}) is live at point {}{}",
                f.name,
                f.uuid,
                f.point,
                if f.started { ", started" } else { "" }
            );
            Ok(())
        }
        XenReplicaCmd::Failback {
            r,
            original_xen,
            original_xen_user,
            original_xen_password_file,
            original_xen_fingerprint,
            original_vm,
            new_vm: _,
            sr,
            network,
            name,
            start,
            out,
        } => {
            let replica = r.open()?;
            let original = Arc::new(connect(&PoolSpec {
                url: original_xen,
                user: original_xen_user,
                password_file: original_xen_password_file.as_ref(),
                password_env: "ALIKE_ORIGINAL_XEN_PASSWORD",
                fingerprint: original_xen_fingerprint.as_ref(),
                insecure: r.insecure,
            })?);
            let f = long(cli, "failback", |cb, cancel| {
                let mut o = ReplicateOptions::default().cancel_token(cancel);
                if let Some(cb) = cb {
                    o = o.progress(cb);
                }
                match (original_vm, sr) {
                    (Some(vm), _) => replica.failback(Arc::clone(&original), vm, *start, &o),
                    (None, Some(sr)) => {
                        let mut n = alike::FailbackNewVm::new(sr);
                        n.network.clone_from(network);
                        n.name.clone_from(name);
                        replica.failback_new_vm(Arc::clone(&original), &n, *start, &o)
                    }
                    (None, None) => Err(alike::Error::InvalidArgument("--original-vm or --new-vm --sr SR".into())),
                }
            })?;
            if out.json {
                return print_json(&f);
            }
            eprintln!(
                "failed back onto {:?} ({}): sent {} ({} of chunks it lacked) in {:.2} s; {:?} is a replica again at point {}",
                f.roles.original_name,
                f.roles.original_uuid,
                mib(f.sent_bytes),
                mib(f.needed_bytes),
                f.elapsed_seconds,
                replica.name(),
                f.roles.replica_point
            );
            Ok(())
        }
    }
}
