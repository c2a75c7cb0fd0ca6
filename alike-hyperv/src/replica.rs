//! Replica VMs on a Hyper-V host: a VM defined from a replica folder
//! (`alike-replica`'s VHDX folder) is marked a replica, which the host
//! refuses to start, until [`HyperVHost::fail_over`] (`docs/hyperv.md`,
//! "Replica VMs").
//!
//! The simulator marks a VM a replica with its own method
//! `Msvm_ReplicationService.AlikeMarkReplica`; Hyper-V has no WMI method
//! that turns an ordinary VM into a replica (a real host makes replicas
//! only as the target of a Hyper-V Replica relationship), so against a real
//! host the mark is refused with the host's error and the docs say what a
//! deployment would do instead. Failover is Hyper-V's
//! `Msvm_ReplicationService.InitiateFailover`.

use crate::Result;
use crate::adapter::{HyperVHost, never};
use crate::wsman::Arg;

impl HyperVHost {
    fn replication(&self, vm: &str, method: &str) -> Result<()> {
        let i = self.find_vm(vm)?;
        let e = HyperVHost::epr(&i)?;
        let svc = self.service("Msvm_ReplicationService")?;
        self.client().invoke(&svc, method, &[("ComputerSystem", Arg::Ref(e))], &never)?;
        Ok(())
    }

    /// Marks the (off) VM `vm` (id or unique name) a replica: the host then
    /// refuses to start it until [`HyperVHost::fail_over`].
    ///
    /// # Errors
    /// No such VM; the host refuses (it runs; a real Hyper-V host has no
    /// such method: see the module docs).
    pub fn mark_replica(&self, vm: &str) -> Result<()> {
        self.replication(vm, "AlikeMarkReplica")
    }

    /// Fails the replica VM `vm` over (`InitiateFailover`): it becomes an
    /// ordinary VM that starts.
    ///
    /// # Errors
    /// No such VM; it is no replica or it runs.
    pub fn fail_over(&self, vm: &str) -> Result<()> {
        self.replication(vm, "InitiateFailover")
    }

    /// Whether `vm` is a replica (`Msvm_ComputerSystem.ReplicationMode` 2).
    ///
    /// # Errors
    /// No such VM.
    pub fn is_replica(&self, vm: &str) -> Result<bool> {
        Ok(self.find_vm(vm)?.u64("ReplicationMode") == Some(2))
    }

    /// Starts (`true`) or turns off (`false`) `vm` (`RequestStateChange`
    /// 2 or 3).
    ///
    /// # Errors
    /// No such VM; the host refuses (a replica VM does not start).
    pub fn set_running(&self, vm: &str, running: bool) -> Result<()> {
        let i = self.find_vm(vm)?;
        let e = HyperVHost::epr(&i)?;
        let state = if running { "2" } else { "3" };
        self.client().invoke(&e, "RequestStateChange", &[("RequestedState", Arg::Text(state.into()))], &never)?;
        Ok(())
    }
}
