//! Replica VMs on a Hyper-V host, through Hyper-V Replica's own methods on
//! the replica side (`docs/hyperv.md`, "Replica VMs", says why these):
//!
//! - [`HyperVHost::make_replica`] — `Msvm_ReplicationService.SetAuthorizationEntry`
//!   with a `Msvm_ReplicationAuthorizationSettingData` — what
//!   `Enable-VMReplication -AsReplica -AllowedPrimaryServer` does to a VM
//!   that was restored or imported on a Replica server so that it can seed a
//!   primary's initial replication. The VM becomes a replica
//!   (`ReplicationMode` 2) and the host refuses to start it. The host must
//!   be a Replica server (`Msvm_ReplicationServiceSettingData.RecoveryServerEnabled`);
//!   this module reads that first and never changes it.
//! - [`HyperVHost::fail_over`] — `RemoveReplicationRelationship`, which turns
//!   the replica into an ordinary VM that starts. Not `InitiateFailover`: a
//!   host fails over to a recovery point, and only a primary's replication
//!   makes those; a replica made here has none, and a host refuses it
//!   (32775). The replica's disks already hold the point, so removing the
//!   relationship is the failover.

use crate::adapter::{HyperVHost, never};
use crate::wsman::{Arg, Embedded};
use crate::{Error, Result};

/// Who may replicate into a replica VM: the fields of its
/// `Msvm_ReplicationAuthorizationSettingData`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaAuthorization {
    /// `AllowedPrimaryHostSystem`: the primary servers (an FQDN, `*.domain`
    /// or `*`) whose replication the replica accepts.
    pub allowed_primary: String,
    /// `TrustGroup`: the group of authorization entries it belongs to.
    pub trust_group: String,
    /// `ReplicaStorageLocation`: where replication files would go (the
    /// VM's own folder is usual).
    pub storage_location: String,
}

impl ReplicaAuthorization {
    /// An entry for `storage_location`; allowed primary `*`, trust group
    /// `alike` (the engine is no Hyper-V primary: these only matter if a
    /// real primary is later pointed at the replica).
    #[must_use]
    pub fn new(storage_location: &str) -> ReplicaAuthorization {
        ReplicaAuthorization {
            allowed_primary: "*".into(),
            trust_group: "alike".into(),
            storage_location: storage_location.to_owned(),
        }
    }

    /// The primary servers allowed.
    #[must_use]
    pub fn allowed_primary(mut self, servers: &str) -> ReplicaAuthorization {
        servers.clone_into(&mut self.allowed_primary);
        self
    }

    /// The trust group.
    #[must_use]
    pub fn trust_group(mut self, group: &str) -> ReplicaAuthorization {
        group.clone_into(&mut self.trust_group);
        self
    }
}

impl HyperVHost {
    fn replication(&self, vm: &str, method: &str, extra: Vec<(&str, Arg)>) -> Result<()> {
        let i = self.find_vm(vm)?;
        let e = HyperVHost::epr(&i)?;
        let svc = self.service("Msvm_ReplicationService")?;
        let mut args = vec![("ComputerSystem", Arg::Ref(e))];
        args.extend(extra);
        self.client().invoke(&svc, method, &args, &never)?;
        Ok(())
    }

    /// Whether the host is a Replica server
    /// (`Msvm_ReplicationServiceSettingData.RecoveryServerEnabled`).
    ///
    /// # Errors
    /// The host's refusals.
    pub fn is_replica_server(&self) -> Result<bool> {
        let r = self.client().query("SELECT * FROM Msvm_ReplicationServiceSettingData")?;
        Ok(r.iter().any(|i| i.text("RecoveryServerEnabled").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))))
    }

    /// [`HyperVHost::is_replica_server`], or an error that says how to make it one.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the host is not a Replica server; the host's refusals.
    pub fn require_replica_server(&self) -> Result<()> {
        if self.is_replica_server()? {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "{}: the host is not a Replica server (RecoveryServerEnabled is false; Set-VMReplicationServer \
             -ReplicationEnabled $true enables it)",
            self.client().url()
        )))
    }

    /// Makes the (off) VM `vm` (id or unique name) a replica
    /// (`SetAuthorizationEntry`): the host then refuses to start it until
    /// [`HyperVHost::fail_over`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the host is not a Replica server
    /// (enable it there: `Set-VMReplicationServer -ReplicationEnabled
    /// $true`); no such VM; the host refuses (it runs, it is a replica already).
    pub fn make_replica(&self, vm: &str, auth: &ReplicaAuthorization) -> Result<()> {
        self.require_replica_server()?;
        let entry = Embedded::new("Msvm_ReplicationAuthorizationSettingData")
            .prop("AllowedPrimaryHostSystem", "string", &auth.allowed_primary)
            .prop("TrustGroup", "string", &auth.trust_group)
            .prop("ReplicaStorageLocation", "string", &auth.storage_location);
        self.replication(vm, "SetAuthorizationEntry", vec![("AuthorizationEntry", Arg::Embedded(entry))])
    }

    /// Fails the replica VM `vm` over: its replication relationship is
    /// removed (`RemoveReplicationRelationship`) and it becomes an ordinary
    /// VM that starts, on the disks it holds.
    ///
    /// # Errors
    /// No such VM; it is no replica.
    pub fn fail_over(&self, vm: &str) -> Result<()> {
        self.replication(vm, "RemoveReplicationRelationship", Vec::new())
    }

    /// Removes the (off) VM `vm` (`DestroySystem`) and, with `files`, the
    /// files of its disks over SMB (the host leaves them, as Hyper-V does);
    /// the paths removed.
    ///
    /// # Errors
    /// No such VM; the host refuses (it runs); a file that cannot be deleted.
    pub fn destroy_vm(&self, vm: &str, files: bool) -> Result<Vec<String>> {
        let i = self.find_vm(vm)?;
        let id = i.text("Name").unwrap_or_default().to_owned();
        let paths: Vec<String> = if files {
            self.vms()?
                .into_iter()
                .filter(|v| v.id.eq_ignore_ascii_case(&id))
                .flat_map(|v| v.disks)
                .map(|d| d.path)
                .collect()
        } else {
            Vec::new()
        };
        let e = HyperVHost::epr(&i)?;
        let svc = self.service("Msvm_VirtualSystemManagementService")?;
        self.client().invoke(&svc, "DestroySystem", &[("AffectedSystem", Arg::Ref(e))], &never)?;
        for p in &paths {
            let (share, rel) = crate::smb::share_path(p)
                .ok_or_else(|| Error::InvalidArgument(format!("{p}: not a path on a drive letter")))?;
            self.share(&share)?.delete(&rel)?;
        }
        Ok(paths)
    }

    /// Begins a test VM from `config` (the replica's): defined like a
    /// restore but with no network adapters (or, when `placement` names a
    /// switch, an isolated one, its NICs on it), each disk written as a copy of
    /// the point (`…\\NAME.vhdx`) under a differencing AVHDX the VM writes
    /// ([`crate::restore::test_disk_path`]), so the test never changes the
    /// copy; fill the disks through the session, then `commit`.
    ///
    /// # Errors
    /// As a restore's `create_vm`.
    pub fn create_test_vm(
        &self,
        config: &alike_core::VmInfo,
        disks: &[alike_core::PlannedDisk],
        placement: &alike_core::Placement,
    ) -> Result<crate::restore::HyperVRestore<'_>> {
        crate::restore::begin_with(self, config, disks, placement, true)
    }

    /// Ends the test VM `vm`: turns it off, removes it (`DestroySystem`),
    /// then its differencing files and the copies under them; the files
    /// removed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a VM whose disks are not all a test
    /// VM's (named as [`crate::restore::test_disk_path`] names them): it is
    /// left alone; the host's refusals.
    pub fn end_test_vm(&self, vm: &str) -> Result<Vec<String>> {
        let i = self.find_vm(vm)?;
        let id = i.text("Name").unwrap_or_default().to_owned();
        let cfg = self
            .vms()?
            .into_iter()
            .find(|v| v.id.eq_ignore_ascii_case(&id))
            .ok_or_else(|| Error::NotFound(format!("VM {vm}")))?;
        let mut files = Vec::new();
        for d in &cfg.disks {
            let base = crate::restore::test_disk_base(&d.path).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: disk {} is no test VM's ({}): left alone",
                    cfg.name, d.position, d.path
                ))
            })?;
            files.push(d.path.clone());
            files.push(base);
        }
        if i.u64("EnabledState") == Some(2) {
            self.set_running(&id, false)?;
        }
        let e = HyperVHost::epr(&i)?;
        let svc = self.service("Msvm_VirtualSystemManagementService")?;
        self.client().invoke(&svc, "DestroySystem", &[("AffectedSystem", Arg::Ref(e))], &never)?;
        for p in &files {
            let (share, rel) = crate::smb::share_path(p)
                .ok_or_else(|| Error::InvalidArgument(format!("{p}: not a path on a drive letter")))?;
            self.share(&share)?.delete(&rel)?;
        }
        Ok(files)
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
