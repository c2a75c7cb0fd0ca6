//! A replication across processors from one call ([`replicate_remote`]):
//! the orchestrator starts the sender on one host and the receiver on
//! another (or on the same host) over SSH, hands each its end's job — with
//! the per-job secret, which travels only inside the SSH channel —, relays
//! both ends' events, and returns one report.
//!
//! The listening end (the receiver in push, the sender in pull) starts
//! first; the dialling end starts once it says where it listens (its
//! `listening` event), so the dialler never waits on a port that is not
//! open yet. Each end runs under a cancel token of its own: the caller's
//! cancel, or either end failing, cancels both — each worker sees its
//! channel's cancel, stops cleanly (a receiver never commits a torn point)
//! and the call returns the first failure, naming the end and its host
//! ([`crate::Error::RemoteEnd`]).
//!
//! Both ends on one host (the same `user@host:port`), where one process can
//! play both roles, run as one worker: the processor job `replicate-both`,
//! the in-process path, no link on 2812 and no second worker.
//!
//! Xen ends (`docs/replica-xen.md`): a receiver's Xen replica is found or
//! made from the source VM's configuration, which only the sender's side
//! can read; when its job lacks it, the orchestrator first runs the short
//! `xen-vm-config` job on the sender's processor and hands the result to
//! the receiver in its job.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alike_remote::protocol::WorkerMessage;
use alike_remote::ssh::{ClientKey, Host, HostKeyPolicy};

use super::job::{JobKind, XenVmConfigJob};
use super::run::{RemoteOptions, RemoteReport, run_remote};
use super::{ProcessorEvent, ProcessorJob};
use crate::{CancelToken, Error, Flow, JobReplica, JobRole, JobSecret, JobSource, ReplicationJob, Result};

/// How often the orchestrator looks at both ends and the caller's cancel.
const WATCH: Duration = Duration::from_millis(20);

/// One end of a replication on a processor: where it runs (the host, how
/// its SSH host key is pinned, the key to log in with) and its job.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RemoteEnd {
    /// The processor, `user@host[:port]`.
    pub host: Host,
    /// Its pinned host key(s): an unknown or changed key is refused.
    pub policy: HostKeyPolicy,
    /// The key the orchestrator logs in with.
    pub key: ClientKey,
    /// The end's job (its role says which end it is).
    pub job: ReplicationJob,
}

impl RemoteEnd {
    /// The end running `job` on `host`.
    pub fn new(host: Host, policy: HostKeyPolicy, key: ClientKey, job: ReplicationJob) -> RemoteEnd {
        RemoteEnd { host, policy, key, job }
    }
}

/// The two jobs of one replication across processors: the same id, VM,
/// flow, port and a fresh secret; the listening end (the receiver in push,
/// the sender in pull) listens on `listen_host` and the other end dials
/// it there. Fill in the sender's disks and the receiver's replica (and
/// what else the run needs), then hand both to [`replicate_remote`].
///
/// ```
/// use alike::{Flow, JobReplica, JobSource};
/// let (mut send, mut recv) = alike::remote::replication_pair("dr-web", "web", Flow::Push, "10.0.0.8", 2812)?;
/// send.disks.push(JobSource::Image { path: "/dev/xvdb".into() });
/// recv.replica = Some(JobReplica::Dir { path: "/srv/replicas/web".into() });
/// assert_eq!((send.peer.as_deref(), recv.listen.as_deref()), (Some("10.0.0.8"), Some("10.0.0.8")));
/// assert_eq!(send.secret.to_hex(), recv.secret.to_hex());
/// # Ok::<(), alike::Error>(())
/// ```
///
/// # Errors
/// The system's random source failed (the secret).
pub fn replication_pair(
    job_id: &str,
    vm: &str,
    flow: Flow,
    listen_host: &str,
    port: u16,
) -> Result<(ReplicationJob, ReplicationJob)> {
    let secret = JobSecret::generate()?;
    let mut send = ReplicationJob::new(job_id, vm, JobRole::Sender, secret.clone());
    let mut recv = ReplicationJob::new(job_id, vm, JobRole::Receiver, secret);
    for j in [&mut send, &mut recv] {
        j.flow = flow;
        j.port = port;
        if j.dials() {
            j.peer = Some(listen_host.to_string());
        } else {
            j.listen = Some(listen_host.to_string());
        }
    }
    Ok((send, recv))
}

/// What [`replicate_remote`] did: the run's figures, and each end's own report.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct RemoteReplicationReport {
    /// The job's id.
    pub job_id: String,
    /// The VM.
    pub vm: String,
    /// `push` or `pull`.
    pub flow: String,
    /// The replica's new point (the receiver's commit).
    pub point: u64,
    /// Bytes the sender read from the source.
    pub read_bytes: u64,
    /// Bytes the sender put on the link (compressed, sealed).
    pub sent_bytes: u64,
    /// The sender's end (its `result` is the sender's report).
    pub sender: RemoteReport,
    /// The receiver's end.
    pub receiver: RemoteReport,
    /// Wall time, connections included.
    #[serde(rename = "elapsed_seconds", serialize_with = "crate::store::seconds")]
    pub elapsed: Duration,
}

fn check_pair(sender: &ReplicationJob, receiver: &ReplicationJob) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidArgument(format!("replication across processors: {m}")));
    if sender.role != JobRole::Sender || receiver.role != JobRole::Receiver {
        return bad(format!(
            "the first end must be the sender and the second the receiver (they are the {} and the {})",
            sender.role.name(),
            receiver.role.name()
        ));
    }
    if sender.job_id != receiver.job_id || sender.vm != receiver.vm {
        return bad(format!(
            "the ends run different jobs ({:?} of VM {:?}, {:?} of VM {:?})",
            sender.job_id, sender.vm, receiver.job_id, receiver.vm
        ));
    }
    if sender.flow != receiver.flow {
        return bad(format!("the sender says {} and the receiver {}", sender.flow.name(), receiver.flow.name()));
    }
    if sender.secret.bytes() != receiver.secret.bytes() {
        return bad("the ends have different secrets".into());
    }
    sender.validate()?;
    receiver.validate()
}

/// Both ends on one host, as one worker playing both roles (the processor
/// job `replicate-both`): no link, no second worker. The report's
/// `sender` and `receiver` are that one worker's report.
fn one_process(
    sender: &RemoteEnd,
    receiver: &RemoteEnd,
    opts: &RemoteOptions,
    t0: Instant,
) -> Result<RemoteReplicationReport> {
    let job = ProcessorJob::new(JobKind::ReplicateBoth(Box::new(sender.job.clone()), Box::new(receiver.job.clone())))
        .with_id(sender.job.job_id.clone());
    let r = run_remote(&sender.host, &sender.policy, &sender.key, &job, opts).map_err(|e| Error::RemoteEnd {
        end: "sender and receiver",
        host: sender.host.to_string(),
        source: Box::new(e),
    })?;
    let u = |k: &str| r.result[k].as_u64().unwrap_or_default();
    Ok(RemoteReplicationReport {
        job_id: sender.job.job_id.clone(),
        vm: sender.job.vm.clone(),
        flow: sender.job.flow.name().to_string(),
        point: u("point"),
        read_bytes: u("read_bytes"),
        sent_bytes: u("sent_bytes"),
        sender: r.clone(),
        receiver: r,
        elapsed: t0.elapsed(),
    })
}

/// The receiver's end, with the source VM's configuration its Xen replica
/// is found by or made from: read first through the sender's processor
/// (the `xen-vm-config` job; the source pool is reached from there, not
/// necessarily from here) when the receiver's job has none.
fn with_source(sender: &RemoteEnd, receiver: &RemoteEnd, opts: &RemoteOptions) -> Result<RemoteEnd> {
    let mut receiver = receiver.clone();
    let (Some(JobSource::Xen { pool }), Some(JobReplica::Xen(x))) =
        (sender.job.disks.first(), &mut receiver.job.replica)
    else {
        return Ok(receiver);
    };
    if x.source.is_some() {
        return Ok(receiver);
    }
    let mut o = opts.clone();
    o.run.progress = None;
    let job = ProcessorJob::new(JobKind::XenVmConfig(XenVmConfigJob::new(pool.clone(), &sender.job.vm)))
        .with_id(format!("{}-source", sender.job.job_id));
    let r = run_remote(&sender.host, &sender.policy, &sender.key, &job, &o).map_err(|e| Error::RemoteEnd {
        end: "sender",
        host: sender.host.to_string(),
        source: Box::new(e),
    })?;
    x.source = Some(r.result);
    Ok(receiver)
}

/// Runs one replication across processors: `sender` and `receiver` are
/// started over SSH (host keys pinned), the listening end first, and each
/// is handed its job — secrets only inside its SSH channel. Events of both
/// ends go to [`RemoteOptions::on_event`]; progress (the sender's bytes
/// read, of every disk) to [`RemoteOptions::progress`]. The caller's
/// cancel token stops both ends; if one end fails, the other is cancelled
/// and the error names the end that failed. Both ends may be on one host:
/// image sources onto a replica folder, or a Xen VM onto a Xen replica
/// (no seed, no one-pass store), then run as one worker playing both roles
/// (the processor job `replicate-both`: no link, no second worker);
/// otherwise as two workers there.
///
/// ```no_run
/// use alike::Flow;
/// use alike::remote::{ClientKey, HostKeyPolicy, RemoteEnd, RemoteOptions, replicate_remote, replication_pair};
///
/// let (mut send, mut recv) = replication_pair("dr-web", "web", Flow::Push, "10.0.1.9", 2812)?;
/// send.disks.push(alike::JobSource::Image { path: "/dev/xvdb".into() });
/// recv.replica = Some(alike::JobReplica::Dir { path: "/srv/replicas/web".into() });
/// let (pins, key) = (HostKeyPolicy::known_hosts("/etc/alike/known_hosts"), ClientKey::new("/etc/alike/id_ed25519"));
/// let r = replicate_remote(
///     &RemoteEnd::new("root@10.0.0.7".parse()?, pins.clone(), key.clone(), send),
///     &RemoteEnd::new("root@10.0.1.9".parse()?, pins, key, recv),
///     &RemoteOptions::default(),
/// )?;
/// println!("point {}: read {}, sent {}", r.point, r.read_bytes, r.sent_bytes);
/// # Ok::<(), alike::Error>(())
/// ```
///
/// # Errors
/// [`crate::ErrorKind::InvalidArgument`] for two jobs that are not the two
/// ends of one replication; [`Error::RemoteEnd`] wrapping the first end's
/// failure (its connection, its worker, its job, or
/// [`crate::ErrorKind::Cancelled`]).
pub fn replicate_remote(
    sender: &RemoteEnd,
    receiver: &RemoteEnd,
    opts: &RemoteOptions,
) -> Result<RemoteReplicationReport> {
    check_pair(&sender.job, &receiver.job)?;
    let t0 = Instant::now();
    if sender.host == receiver.host && crate::replicate::one_process_can(&sender.job, &receiver.job) {
        return one_process(sender, receiver, opts, t0);
    }
    let receiver = &with_source(sender, receiver, opts)?;
    let ends = [sender, receiver];
    // The listening end first.
    let order: [usize; 2] = if sender.job.dials() { [1, 0] } else { [0, 1] };
    let tokens = [CancelToken::new(), CancelToken::new()];
    let listening: Arc<Mutex<Option<String>>> = Arc::default();
    let end_opts = |i: usize| -> RemoteOptions {
        let mut o = opts.clone();
        o.run.cancel = tokens[i].clone();
        if i == 1 {
            o.run.progress = None;
        }
        let (forward, heard) = (opts.on_event.clone(), listening.clone());
        let listens = !ends[i].job.dials();
        o.on_event = Some(Arc::new(move |e: &WorkerMessage| {
            if let (true, ProcessorEvent::Listening(l)) = (listens, e) {
                *heard.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(l.address.clone());
            }
            if let Some(f) = &forward {
                f(e);
            }
        }));
        o
    };
    let named = |i: usize, e: Error| Error::RemoteEnd {
        end: ends[i].job.role.name(),
        host: ends[i].host.to_string(),
        source: Box::new(e),
    };
    let cancel_all = || tokens.iter().for_each(CancelToken::cancel);
    let join = |h: std::thread::ScopedJoinHandle<'_, Result<RemoteReport>>| {
        h.join().unwrap_or_else(|_| Err(Error::InvalidArgument("the thread of an end panicked".into())))
    };
    let (sent, got) = std::thread::scope(|s| -> Result<(RemoteReport, RemoteReport)> {
        let run = |i: usize| {
            let o = end_opts(i);
            let end = ends[i];
            let job = ProcessorJob::replication_end(end.job.clone());
            move || run_remote(&end.host, &end.policy, &end.key, &job, &o)
        };
        let first = crate::spawn_scoped(s, "alike-end", run(order[0]))?;
        // The dialling end starts once the listening end listens.
        loop {
            if listening.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some() {
                break;
            }
            if first.is_finished() || opts.run.cancel.is_cancelled() {
                cancel_all();
                let e = match join(first) {
                    Ok(_) => Error::InvalidArgument("it ended before saying where it listens".into()),
                    Err(e) => e,
                };
                return Err(named(order[0], e));
            }
            std::thread::sleep(WATCH);
        }
        let second = match crate::spawn_scoped(s, "alike-end", run(order[1])) {
            Ok(h) => h,
            Err(e) => {
                cancel_all();
                drop(join(first));
                return Err(e.into());
            }
        };
        // Until both are over: the caller's cancel, or one end failing, stops both.
        let mut handles = [Some(first), Some(second)];
        let mut out: [Option<Result<RemoteReport>>; 2] = [None, None];
        let mut cause: Option<usize> = None;
        while handles.iter().any(Option::is_some) {
            if opts.run.cancel.is_cancelled() {
                cancel_all();
            }
            for k in 0..2 {
                if !handles[k].as_ref().is_some_and(|h| h.is_finished()) {
                    continue;
                }
                let Some(h) = handles[k].take() else { continue };
                let r = join(h);
                if r.is_err() && cause.is_none() {
                    cause = Some(order[k]);
                    cancel_all();
                }
                out[order[k]] = Some(r);
            }
            if handles.iter().any(Option::is_some) {
                std::thread::sleep(WATCH);
            }
        }
        match out {
            [Some(Ok(a)), Some(Ok(b))] => Ok((a, b)),
            [a, b] => {
                // The first failure is the cause; the other end's, its cancel.
                let i = cause.unwrap_or(0);
                let mut both = [a, b];
                match both[i].take() {
                    Some(Err(e)) => Err(named(i, e)),
                    _ => Err(Error::InvalidArgument("an end did not report".into())),
                }
            }
        }
    })?;
    let u = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_default();
    let point = u(&got.result, "point");
    if u(&sent.result, "point") != point {
        return Err(Error::InvalidArgument(format!(
            "the ends disagree on the point: the sender says {}, the receiver {point}",
            sent.result["point"]
        )));
    }
    Ok(RemoteReplicationReport {
        job_id: sender.job.job_id.clone(),
        vm: sender.job.vm.clone(),
        flow: sender.job.flow.name().to_string(),
        point,
        read_bytes: u(&sent.result, "read_bytes"),
        sent_bytes: u(&sent.result, "sent_bytes"),
        sender: sent,
        receiver: got,
        elapsed: t0.elapsed(),
    })
}
