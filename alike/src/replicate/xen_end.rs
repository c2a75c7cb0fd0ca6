//! The Xen ends of a replication between two processes
//! (`docs/replica-xen.md` §"Two processes"): a sender reading a VM of one
//! pool through the CBT backup cycle (snapshot at the start, released
//! after the commit, aborted on failure), and a receiver writing the
//! replica VM on another pool (`alike-xen`'s `XenReplica`, never torn).
//!
//! The receiver finds or makes the replica from the source VM's recorded
//! configuration, which it cannot read itself (the source pool is the
//! other site's): the job carries it ([`JobXenReplica::source`]), which
//! an orchestrator reads first through the sender's processor (the
//! `xen-vm-config` job, [`vm_config`]).

use super::end::{EndOptions, EndReport, JobLink};
use super::job::{JobXenPool, JobXenReplica, ReplicationJob};
use crate::Result;

#[cfg(feature = "xen")]
mod imp {
    use std::sync::Arc;
    use std::time::Instant;

    use alike_replicate::{ReceiverOptions, SenderOptions};
    use alike_xen::adapter::{XenBackupOptions, XenPool, XenReplica, XenReplicaOptions, XenVmConfig};

    use super::super::end::{EndOptions, EndReport, JobLink, connect, read_secret_file};
    use super::super::history::{self, ReplicationRecord};
    use super::super::job::{JobXenPool, JobXenReplica, ReplicationJob};
    use crate::{Error, Result};

    /// Logs in to a pool a job names, with the job's password (or its file).
    pub(crate) fn connect_pool(p: &JobXenPool) -> Result<XenPool> {
        let pw = match (&p.password, &p.password_file) {
            (Some(pw), _) => zeroize::Zeroizing::new(pw.0.clone()),
            (None, Some(f)) => zeroize::Zeroizing::new(read_secret_file(f)?),
            (None, None) => {
                return Err(Error::InvalidArgument(format!(
                    "pool {}: the job has no XAPI password (password or password_file)",
                    p.url
                )));
            }
        };
        let mut o = crate::XenConnectOptions::default().insecure(p.insecure);
        if let Some(fp) = &p.fingerprint {
            o = o.fingerprint(fp);
        }
        crate::xen_pool_with(&p.url, &p.user, &pw, &o)
    }

    pub(super) fn vm_config(pool: &JobXenPool, vm: &str) -> Result<serde_json::Value> {
        let p = connect_pool(pool)?;
        let (vm_ref, _) = p.find_vm(vm)?;
        let config = p.vm_config(&vm_ref)?;
        serde_json::to_value(&config)
            .map_err(|e| Error::InvalidArgument(format!("VM {vm:?} of {}: its configuration: {e}", pool.url)))
    }

    pub(super) fn run_sender(
        job: &ReplicationJob,
        pool: &JobXenPool,
        link: JobLink,
        opts: &EndOptions,
    ) -> Result<EndReport> {
        job.validate()?;
        let started = Instant::now();
        opts.run.check()?;
        let source = connect_pool(pool)?;
        let bo = XenBackupOptions::default().cancel_token(opts.run.cancel.clone());
        let snap = source.begin_backup(&job.vm, &bo, &[])?;
        let name = snap.config().name().to_owned();
        let sent = (|| {
            let mut so = SenderOptions::new(&name);
            so.chunking = job.chunking_or_default()?;
            so.state_file = job.state_dir.as_deref().map(|d| super::super::state_file(d, &job.job_id));
            so.run = opts.run.to_core();
            so.progress = opts.disk_progress.clone();
            let end = connect(job, link, opts)?;
            Ok::<_, Error>(alike_replicate::run_sender(end, &snap.disks(), &so)?)
        })();
        // The snapshot is released only once the replica acknowledged the point.
        let r = match sent {
            Ok(r) => {
                snap.commit();
                r
            }
            Err(e) => {
                let _ = snap.abort();
                return Err(e);
            }
        };
        Ok(EndReport {
            role: "sender".into(),
            job_id: job.job_id.clone(),
            vm: name,
            point: r.point,
            read_bytes: r.read_bytes,
            hashed_bytes: r.hashed_bytes,
            needed_bytes: r.needed_bytes,
            sent_bytes: r.sent_bytes,
            answer_bytes: r.received_bytes,
            disks: r.disks,
            replica: None,
            removed_points: Vec::new(),
            backup: None,
            elapsed_seconds: started.elapsed().as_secs_f64(),
        })
    }

    pub(super) fn run_receiver(
        job: &ReplicationJob,
        x: &JobXenReplica,
        link: JobLink,
        opts: &EndOptions,
    ) -> Result<EndReport> {
        job.validate()?;
        let started = Instant::now();
        opts.run.check()?;
        let Some(source) = &x.source else {
            return Err(Error::InvalidArgument(format!(
                "job {:?}: a Xen replica needs the source VM's configuration (\"source\"): an orchestrator \
                 fills it from the sender's \"source\" event",
                job.job_id
            )));
        };
        let config: XenVmConfig = serde_json::from_value(source.clone())
            .map_err(|e| Error::InvalidArgument(format!("job {:?}: the source VM's configuration: {e}", job.job_id)))?;
        let pool = Arc::new(connect_pool(&x.pool)?);
        let mut ro = XenReplicaOptions::new(&x.sr, &x.state_dir).chunking(job.chunking_or_default()?);
        if let Some(n) = &x.network {
            ro = ro.network(n);
        }
        if let Some(n) = &x.name {
            ro = ro.name(n);
        }
        let rep = XenReplica::open_or_create(pool, &config, &ro)?;
        let dir = x.state_dir.join(rep.uuid());
        let rec = ReplicationRecord::new(super::super::alike_replicate_now_ms());
        let got = (|| {
            let end = connect(job, link, opts)?;
            let mut o = ReceiverOptions::default();
            o.vm = Some(config.name().to_owned());
            o.keep = job.keep;
            o.run = opts.run.to_core();
            Ok::<_, Error>(alike_replicate::run_receiver(end, &rep, &o, &[])?)
        })();
        let r = match got {
            Ok(r) => r,
            Err(e) => {
                history::append(
                    &dir,
                    &ReplicationRecord { elapsed_seconds: started.elapsed().as_secs_f64(), ..rec }.failed(&e),
                );
                return Err(e);
            }
        };
        let summary = r.sender.clone().unwrap_or_default();
        let report = EndReport {
            role: "receiver".into(),
            job_id: job.job_id.clone(),
            vm: config.name().to_owned(),
            point: r.point,
            read_bytes: summary.read_bytes,
            hashed_bytes: summary.hashed_bytes,
            needed_bytes: r.stats.needed_bytes,
            sent_bytes: r.received_bytes,
            answer_bytes: r.sent_bytes,
            disks: Vec::new(),
            replica: Some(r.stats),
            removed_points: r.removed_points,
            backup: None,
            elapsed_seconds: started.elapsed().as_secs_f64(),
        };
        history::append(
            &dir,
            &ReplicationRecord {
                point: Some(report.point),
                read_bytes: report.read_bytes,
                sent_bytes: report.sent_bytes,
                elapsed_seconds: report.elapsed_seconds,
                ..rec
            },
        );
        Ok(report)
    }
}

#[cfg(feature = "xen")]
pub(crate) use imp::connect_pool;

#[cfg(not(feature = "xen"))]
mod imp {
    use super::*;

    fn unavailable() -> crate::Error {
        crate::Error::InvalidArgument("this build has no Xen support (the facade's `xen` feature)".into())
    }
    pub(super) fn vm_config(_: &JobXenPool, _: &str) -> Result<serde_json::Value> {
        Err(unavailable())
    }
    pub(super) fn run_sender(_: &ReplicationJob, _: &JobXenPool, _: JobLink, _: &EndOptions) -> Result<EndReport> {
        Err(unavailable())
    }
    pub(super) fn run_receiver(_: &ReplicationJob, _: &JobXenReplica, _: JobLink, _: &EndOptions) -> Result<EndReport> {
        Err(unavailable())
    }
}

/// The recorded configuration (`XenVmConfig` as JSON) of VM `vm` (name,
/// uuid or ref) of `pool`: what a Xen replica is found by or made from
/// ([`JobXenReplica::source`]). An orchestrator asks the sender's
/// processor for it (the processor job `xen-vm-config`) when the
/// receiver's job has none.
///
/// # Errors
/// The pool cannot be reached or refuses the login; no such VM.
pub(crate) fn vm_config(pool: &JobXenPool, vm: &str) -> Result<serde_json::Value> {
    imp::vm_config(pool, vm)
}

/// Runs the sending end of `job`, whose only source is a VM of `pool`.
pub(super) fn run_sender(
    job: &ReplicationJob,
    pool: &JobXenPool,
    link: JobLink,
    opts: &EndOptions,
) -> Result<EndReport> {
    imp::run_sender(job, pool, link, opts)
}

/// Runs the receiving end of `job` onto the Xen replica `x`.
pub(super) fn run_receiver(
    job: &ReplicationJob,
    x: &JobXenReplica,
    link: JobLink,
    opts: &EndOptions,
) -> Result<EndReport> {
    imp::run_receiver(job, x, link, opts)
}
