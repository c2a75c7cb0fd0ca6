//! Both ends of a replication in one process, from the two ends' job
//! descriptions: what a processor that sees both the source and the
//! replica runs (the processor job `replicate-both`, `alike replicate
//! --via A`). No TCP link and no second worker: the in-process path
//! ([`super::replicate_images`], [`super::replicate_xen`]), whose
//! `sent_bytes` are still the bytes the sender hands the receiver,
//! compressed as they would cross a link.

use super::end::EndOptions;
use super::job::{JobReplica, JobRole, JobSource, ReplicationJob};
use super::{Replica, ReplicateOptions, ReplicateReport};
use crate::{Error, Result};

/// Whether one process can play both ends of `send` and `recv`: image
/// sources onto a replica folder, or a Xen VM onto a Xen replica, with no
/// seed and no one-pass store (those run as two ends).
pub(crate) fn one_process_can(send: &ReplicationJob, recv: &ReplicationJob) -> bool {
    if send.backup_to.is_some() || recv.backup_to.is_some() || recv.seed.is_some() {
        return false;
    }
    match (&send.disks[..], &recv.replica) {
        ([JobSource::Xen { .. }], Some(JobReplica::Xen(_))) => cfg!(feature = "xen"),
        (disks, Some(JobReplica::Dir { .. })) => {
            !disks.is_empty() && disks.iter().all(|d| matches!(d, JobSource::Image { .. }))
        }
        _ => false,
    }
}

/// Runs both ends: `send` (the sender's job) reads, `recv` (the
/// receiver's) says where the replica is, its retention; the bandwidth
/// limit is the sender's.
///
/// # Errors
/// The jobs are not the two ends of one replication, or of a kind one
/// process cannot play (see [`one_process_can`]); as the in-process runs.
pub(crate) fn run_both(send: &ReplicationJob, recv: &ReplicationJob, opts: &EndOptions) -> Result<ReplicateReport> {
    send.validate()?;
    recv.validate()?;
    if send.role != JobRole::Sender || recv.role != JobRole::Receiver || send.job_id != recv.job_id {
        return Err(Error::InvalidArgument(format!(
            "one process plays both ends of one job: a sender's and a receiver's job of the same id (got the {}'s \
             job {:?} and the {}'s job {:?})",
            send.role.name(),
            send.job_id,
            recv.role.name(),
            recv.job_id
        )));
    }
    if !one_process_can(send, recv) {
        return Err(Error::InvalidArgument(format!(
            "job {:?}: one process plays both ends for image sources onto a replica folder, or a Xen VM onto a Xen \
             replica, without seed or one-pass store",
            send.job_id
        )));
    }
    let o = ReplicateOptions {
        run: opts.run.clone(),
        disk_progress: opts.disk_progress.clone(),
        keep: recv.keep,
        bwlimit: send.bwlimit,
        ..ReplicateOptions::default()
    };
    match &recv.replica {
        #[cfg(feature = "xen")]
        Some(JobReplica::Xen(x)) => {
            let Some(JobSource::Xen { pool }) = send.disks.first() else { unreachable_kind()? };
            let src = super::xen_end::connect_pool(pool)?;
            let dst = std::sync::Arc::new(super::xen_end::connect_pool(&x.pool)?);
            let mut ro = crate::XenReplicaOptions::new(&x.sr, &x.state_dir).chunking(send.chunking_or_default()?);
            if let Some(n) = &x.network {
                ro = ro.network(n);
            }
            if let Some(n) = &x.name {
                ro = ro.name(n);
            }
            Ok(super::replicate_xen(&src, &send.vm, dst, &ro, &o)?.0)
        }
        Some(JobReplica::Dir { path }) => {
            let replica = match &send.chunking {
                Some(_) => Replica::open_or_create_with(path, &send.vm, send.chunking_or_default()?)?,
                None => Replica::open_or_create(path, &send.vm)?,
            };
            let images: Vec<&std::path::Path> = send
                .disks
                .iter()
                .filter_map(|d| match d {
                    JobSource::Image { path } => Some(path.as_path()),
                    _ => None,
                })
                .collect();
            super::replicate_images(&send.vm, &images, &replica, &o)
        }
        _ => unreachable_kind(),
    }
}

fn unreachable_kind<T>() -> Result<T> {
    Err(Error::InvalidArgument("a replica this build cannot write in one process".into()))
}
