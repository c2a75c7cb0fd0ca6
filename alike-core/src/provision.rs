//! The provisioning seam: processors made for a job, and the address pools
//! that bound how many run at once. **API boundary.**
//!
//! A *processor* is a throw-away worker that runs one job: a VM cloned from
//! a template in a Xen pool, or a network namespace with its own sshd on the
//! orchestrator's machine. A [`Provisioner`] makes them for one pool:
//!
//! [`Provisioner::make`] (a processor at one address, every object it makes
//! tagged with the job id and the orchestrator's id) →
//! [`Processor::attach`] (the job's disks: snapshots read-only for a backup,
//! targets writable for a restore) → [`Processor::start`] (boots it and
//! returns how to reach it over SSH, with the host key to pin) → the job
//! runs over SSH → [`Processor::teardown`] (detach, destroy, release), on
//! success, failure and cancel alike. Dropping a processor without a
//! teardown tears it down too, best effort.
//!
//! An orchestrator that died leaves processors behind; at its next start it
//! calls [`Provisioner::sweep`] with its own id, which finds every object
//! tagged with that id (VMs, VIFs, VBDs, snapshots, namespaces, sshd
//! processes) and removes it. One orchestrator id must be run by one
//! process at a time (the caller holds a lock), so everything tagged with
//! it at start is a leftover.
//!
//! [`AddressPool`] is the sans-IO bookkeeping of one pool's addresses: one
//! address per processor, handed out first come first served, a job waiting
//! (and saying so) when none is free. Each pool has its own, so pools never
//! wait on each other; the facade drives it with a lock and a condition
//! variable per pool.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::Result;

/// The tag key every object a provisioner makes carries, with the job id.
pub const TAG_JOB: &str = "alike-job";
/// The tag key carrying the orchestrator's id (what [`Provisioner::sweep`] looks for).
pub const TAG_ORCHESTRATOR: &str = "alike-orchestrator";

/// What to make: one processor for one job, at one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessorRequest {
    /// The orchestrator's id (tags every object; see [`Provisioner::sweep`]).
    pub orchestrator: String,
    /// The job's id (tags every object).
    pub job: String,
    /// The processor's address, from the pool's list.
    pub address: IpAddr,
    /// Its network's prefix length.
    pub prefix: u8,
    /// Its default gateway.
    pub gateway: Option<IpAddr>,
    /// The SSH host key the orchestrator made for this processor alone
    /// (the `inject` policy): the provisioner hands it in, and
    /// [`Reachable::host_key_fingerprint`] pins it. Never serialised.
    #[serde(skip)]
    pub host_key: Option<InjectedHostKey>,
}

/// A host key made for one processor: its private half (OpenSSH format)
/// and its fingerprint. `Debug` shows the fingerprint only.
#[derive(Clone, PartialEq, Eq)]
pub struct InjectedHostKey {
    private_openssh: String,
    fingerprint: String,
}

impl InjectedHostKey {
    /// A key from its OpenSSH private text and its `SHA256:…` fingerprint.
    pub fn new(private_openssh: impl Into<String>, fingerprint: impl Into<String>) -> InjectedHostKey {
        InjectedHostKey { private_openssh: private_openssh.into(), fingerprint: fingerprint.into() }
    }
    /// The private key, OpenSSH format (for the one place that installs it).
    pub fn private_openssh(&self) -> &str {
        &self.private_openssh
    }
    /// Its fingerprint (`SHA256:…`).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl std::fmt::Debug for InjectedHostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InjectedHostKey({})", self.fingerprint)
    }
}

impl ProcessorRequest {
    /// A request for `job` of `orchestrator` at `address`/`prefix`.
    pub fn new(orchestrator: impl Into<String>, job: impl Into<String>, address: IpAddr, prefix: u8) -> Self {
        ProcessorRequest {
            orchestrator: orchestrator.into(),
            job: job.into(),
            address,
            prefix,
            gateway: None,
            host_key: None,
        }
    }
}

/// A disk to attach to a processor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AttachDisk {
    /// The host's name for it: a VDI's uuid (Xen), a file's path (local).
    pub id: String,
    /// Attached read-only (a backup's snapshot) or writable (a restore's target).
    pub read_only: bool,
}

impl AttachDisk {
    /// A snapshot to read.
    pub fn read_only(id: impl Into<String>) -> AttachDisk {
        AttachDisk { id: id.into(), read_only: true }
    }
    /// A target to write.
    pub fn writable(id: impl Into<String>) -> AttachDisk {
        AttachDisk { id: id.into(), read_only: false }
    }
}

/// How to reach a started processor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Reachable {
    /// Its address.
    pub address: IpAddr,
    /// Its SSH port.
    pub port: u16,
    /// Its SSH host key's fingerprint (`SHA256:…`, as `ssh-keygen -l`
    /// prints it), the one to pin; `None` where the pool pins keys from a
    /// known_hosts file.
    pub host_key_fingerprint: Option<String>,
}

impl Reachable {
    /// `address`:`port`, with no key to pin.
    pub fn new(address: IpAddr, port: u16) -> Reachable {
        Reachable { address, port, host_key_fingerprint: None }
    }
}

/// What a [`Provisioner::sweep`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SweepReport {
    /// Each object removed, as `kind id (job JOB)`: `vm …`, `vif …`,
    /// `vbd …`, `snapshot …`, `netns …`, `sshd …`.
    pub removed: Vec<String>,
    /// Objects found but not removed, with why.
    pub failed: Vec<String>,
}

/// One processor, made by a [`Provisioner`]. **API boundary.**
///
/// Call order: [`attach`](Processor::attach) (any number of times, before
/// [`start`](Processor::start) on hosts that cannot hot-plug) →
/// `start` → the job → [`teardown`](Processor::teardown). `teardown` may be
/// called at any point, also after a failed step.
pub trait Processor: Send {
    /// The job it was made for.
    fn job(&self) -> &str;
    /// Its address.
    fn address(&self) -> IpAddr;
    /// Attaches `disks`; returns, in order, the path each has on the
    /// processor (`/dev/xvdb`, or a file's path).
    ///
    /// # Errors
    /// The host refused (no such disk, already in use).
    fn attach(&mut self, disks: &[AttachDisk]) -> Result<Vec<String>>;
    /// Detaches every disk attached so far (between VMs of one job).
    ///
    /// # Errors
    /// The host refused.
    fn detach_all(&mut self) -> Result<()>;
    /// Starts it and returns how to reach it. Does not wait for SSH: the
    /// orchestrator does, with the host key pinned.
    ///
    /// # Errors
    /// The host refused to start it.
    fn start(&mut self) -> Result<Reachable>;
    /// Stops and removes it and everything made for it. Idempotent.
    ///
    /// # Errors
    /// What could not be removed (a later [`Provisioner::sweep`] retries).
    fn teardown(&mut self) -> Result<()>;
}

/// Makes processors for one pool. **API boundary.**
pub trait Provisioner: Send + Sync {
    /// The pool's name.
    fn pool(&self) -> &str;
    /// Makes (but does not start) a processor for `req`, every object tagged
    /// with [`TAG_JOB`] = `req.job` and [`TAG_ORCHESTRATOR`] = `req.orchestrator`.
    ///
    /// # Errors
    /// The host refused (no template, no space); what was made is removed.
    fn make(&self, req: &ProcessorRequest) -> Result<Box<dyn Processor>>;
    /// Removes every object tagged with `orchestrator` (see the module
    /// documentation): the leftovers of a run of it that died.
    ///
    /// # Errors
    /// The host could not be listed; objects that could not be removed are
    /// in [`SweepReport::failed`].
    fn sweep(&self, orchestrator: &str) -> Result<SweepReport>;
}

/// One pool's addresses, handed out one per job, first come first served.
/// Sans-IO: the caller serialises calls (a lock) and waits (a condition
/// variable) where [`AddressPool::try_acquire`] says [`Acquire::Queued`].
///
/// Call order for a job: [`enqueue`](AddressPool::enqueue) once →
/// [`try_acquire`](AddressPool::try_acquire) until it returns
/// [`Acquire::Got`] (or [`leave`](AddressPool::leave) to give up waiting)
/// → [`release`](AddressPool::release) when its processor is gone.
#[derive(Debug, Clone)]
pub struct AddressPool {
    name: String,
    free: VecDeque<IpAddr>,
    held: BTreeMap<IpAddr, String>,
    queue: VecDeque<String>,
}

/// What [`AddressPool::try_acquire`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The job holds this address now.
    Got(IpAddr),
    /// No address is free for it yet: `ahead` jobs wait before it.
    Queued {
        /// Jobs waiting ahead of it.
        ahead: usize,
    },
}

impl AddressPool {
    /// A pool named `name` with `addresses` (duplicates are kept once).
    pub fn new(name: impl Into<String>, addresses: impl IntoIterator<Item = IpAddr>) -> AddressPool {
        let mut seen = BTreeSet::new();
        let free = addresses.into_iter().filter(|a| seen.insert(*a)).collect();
        AddressPool { name: name.into(), free, held: BTreeMap::new(), queue: VecDeque::new() }
    }
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Addresses free now.
    pub fn free(&self) -> usize {
        self.free.len()
    }
    /// Addresses held, with the job holding each.
    pub fn held(&self) -> &BTreeMap<IpAddr, String> {
        &self.held
    }
    /// Jobs waiting, in order.
    pub fn waiting(&self) -> impl Iterator<Item = &str> {
        self.queue.iter().map(String::as_str)
    }
    /// Puts `job` at the end of the queue (no effect if it is queued already).
    pub fn enqueue(&mut self, job: &str) {
        if !self.queue.iter().any(|j| j == job) {
            self.queue.push_back(job.to_string());
        }
    }
    /// Gives `job` an address if one is free and no job queued before it
    /// waits; `Queued` otherwise. A job not queued is queued first.
    pub fn try_acquire(&mut self, job: &str) -> Acquire {
        self.enqueue(job);
        let ahead = self.queue.iter().position(|j| j == job).unwrap_or(0);
        if ahead == 0 {
            if let Some(a) = self.free.pop_front() {
                self.queue.pop_front();
                self.held.insert(a, job.to_string());
                return Acquire::Got(a);
            }
        }
        Acquire::Queued { ahead }
    }
    /// Takes `job` out of the queue (it gave up waiting: cancelled).
    pub fn leave(&mut self, job: &str) {
        self.queue.retain(|j| j != job);
    }
    /// Returns `address` to the pool; false if it was not held.
    pub fn release(&mut self, address: IpAddr) -> bool {
        if self.held.remove(&address).is_some() {
            self.free.push_back(address);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn one_address_per_job_and_first_come_first_served() {
        let mut p = AddressPool::new("p", [a(1), a(2), a(2)]);
        assert_eq!(p.free(), 2);
        assert_eq!(p.try_acquire("j1"), Acquire::Got(a(1)));
        assert_eq!(p.try_acquire("j2"), Acquire::Got(a(2)));
        assert_eq!(p.try_acquire("j3"), Acquire::Queued { ahead: 0 });
        assert_eq!(p.try_acquire("j4"), Acquire::Queued { ahead: 1 });
        assert_eq!(p.held().get(&a(1)).map(String::as_str), Some("j1"));
        assert!(p.release(a(1)));
        assert!(!p.release(a(1)), "released twice");
        // j4 came after j3: it waits although an address is free.
        assert_eq!(p.try_acquire("j4"), Acquire::Queued { ahead: 1 });
        assert_eq!(p.try_acquire("j3"), Acquire::Got(a(1)));
        assert_eq!(p.try_acquire("j4"), Acquire::Queued { ahead: 0 });
        p.release(a(2));
        assert_eq!(p.try_acquire("j4"), Acquire::Got(a(2)));
        assert_eq!(p.waiting().count(), 0);
    }

    #[test]
    fn a_job_that_leaves_the_queue_holds_no_one_up() {
        let mut p = AddressPool::new("p", [a(1)]);
        assert_eq!(p.try_acquire("j1"), Acquire::Got(a(1)));
        assert_eq!(p.try_acquire("j2"), Acquire::Queued { ahead: 0 });
        assert_eq!(p.try_acquire("j3"), Acquire::Queued { ahead: 1 });
        p.leave("j2");
        p.release(a(1));
        assert_eq!(p.try_acquire("j3"), Acquire::Got(a(1)));
    }
}
