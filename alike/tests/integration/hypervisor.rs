//! A second hypervisor behind the seam, with no facade change: an in-memory
//! host whose disks track changes and whose restores take positional
//! writes ([`DiskSink::Target`]) — the other shape of the trait than Xen's
//! upload stream. Backups go full then incremental through
//! `Store::backup_vm`, a failed backup releases its snapshot and writes no
//! version, and `Store::restore_vm` recreates the VM bit-exact.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use alike::{
    BackupOptions, BackupSession, CreatedVm, DiskSink, DiskSource, DiskTarget, ErrorKind, Hypervisor, Placement,
    PlannedDisk, PreviousDisk, Quiesce, ReleaseReport, RestoreOptions, RestoreSession, SessionDisk, SnapshotOptions,
    StreamWritten, VmInfo,
};
use alike_testing::TrackedDisk;

use super::util::Env;

/// What the host saw, for the assertions.
#[derive(Debug, Default)]
struct Log {
    snapshots: Vec<String>,
    released: Vec<String>,
    aborted: Vec<String>,
    previous: Vec<Vec<PreviousDisk>>,
    quiesce: Vec<Quiesce>,
    removed_vms: Vec<String>,
}

/// A host with one VM of two tracked disks; restored VMs land in `made`.
pub struct FakeHost {
    disks: Vec<TrackedDisk>,
    /// Fail reads of disk 1 (a host that breaks mid-backup).
    fail_disk1: bool,
    log: Mutex<Log>,
    made: Mutex<BTreeMap<String, Vec<Arc<MemTarget>>>>,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        let mut rng = alike_testing::Rng::new(11);
        FakeHost {
            disks: vec![TrackedDisk::new(rng.noise(3 << 20)), TrackedDisk::new(rng.noise(1 << 20))],
            fail_disk1: false,
            log: Mutex::default(),
            made: Mutex::default(),
        }
    }
}

/// A snapshot's disk: reads through to the tracked disk (good enough for a
/// test double: the guest does not write during a backup here).
struct SnapDisk<'a> {
    disk: &'a TrackedDisk,
    fail: bool,
}

impl DiskSource for SnapDisk<'_> {
    fn label(&self) -> String {
        "fake".into()
    }
    fn size(&self) -> u64 {
        self.disk.size()
    }
    fn change_token(&self) -> Option<Vec<u8>> {
        self.disk.change_token()
    }
    fn changed_ranges(&self, since: &[u8]) -> alike_core::Result<Option<Vec<std::ops::Range<u64>>>> {
        self.disk.changed_ranges(since)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        if self.fail {
            return Err(alike_core::Error::SourceRead {
                disk: "fake".into(),
                offset,
                source: std::io::Error::other("host lost the disk"),
            });
        }
        self.disk.read_at(offset, buf)
    }
}

struct Session<'a> {
    host: &'a FakeHost,
    vm: VmInfo,
    snap: String,
    disks: Vec<SnapDisk<'a>>,
}

impl BackupSession for Session<'_> {
    fn vm(&self) -> &VmInfo {
        &self.vm
    }
    fn disks(&self) -> Vec<&dyn DiskSource> {
        self.disks.iter().map(|d| d as &dyn DiskSource).collect()
    }
    fn disk_details(&self) -> Vec<SessionDisk> {
        (0..self.disks.len() as u32)
            .map(|p| SessionDisk::new(p, self.disks[p as usize].size(), "memory").id("path", format!("vm1/disk{p}")))
            .collect()
    }
    fn snapshot_id(&self) -> String {
        self.snap.clone()
    }
    fn consistency(&self) -> String {
        "crash-consistent".into()
    }
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    fn commit(self: Box<Self>) -> ReleaseReport {
        let mut log = self.host.log.lock().unwrap();
        let mut r = ReleaseReport::default();
        r.kept_snapshot = self.snap.clone();
        r.destroyed_snapshots = log.snapshots.iter().filter(|s| **s != self.snap).cloned().collect();
        log.released.extend(r.destroyed_snapshots.clone());
        log.snapshots.retain(|s| *s == self.snap);
        r
    }
    fn abort(self: Box<Self>) -> alike_core::Result<()> {
        let mut log = self.host.log.lock().unwrap();
        log.snapshots.retain(|s| *s != self.snap);
        log.aborted.push(self.snap.clone());
        Ok(())
    }
}

/// A restored disk in memory, taking positional writes.
#[derive(Debug, Default)]
struct MemTarget {
    data: Mutex<Vec<u8>>,
    finished: Mutex<bool>,
}

impl DiskTarget for MemTarget {
    fn label(&self) -> String {
        "memory target".into()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> alike_core::Result<()> {
        let mut d = self.data.lock().unwrap();
        let end = offset as usize + data.len();
        if d.len() < end {
            d.resize(end, 0);
        }
        d[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn holes_read_as_zero(&self) -> bool {
        true
    }
    fn finish(&self, size: u64) -> alike_core::Result<()> {
        self.data.lock().unwrap().resize(size as usize, 0);
        *self.finished.lock().unwrap() = true;
        Ok(())
    }
}

/// A DiskTarget handed out by the session; the session keeps the data.
struct Shared(Arc<MemTarget>);

impl DiskTarget for Shared {
    fn label(&self) -> String {
        self.0.label()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> alike_core::Result<()> {
        self.0.write_at(offset, data)
    }
    fn holes_read_as_zero(&self) -> bool {
        self.0.holes_read_as_zero()
    }
    fn finish(&self, size: u64) -> alike_core::Result<()> {
        self.0.finish(size)
    }
}

struct Restore<'a> {
    host: &'a FakeHost,
    vm: CreatedVm,
    targets: Vec<Arc<MemTarget>>,
}

impl RestoreSession for Restore<'_> {
    fn vm(&self) -> &CreatedVm {
        &self.vm
    }
    fn disk(&mut self, position: u32) -> alike_core::Result<DiskSink<'_>> {
        let t = self
            .targets
            .get(position as usize)
            .ok_or_else(|| alike_core::Error::InvalidArgument(format!("no disk {position}")))?;
        Ok(DiskSink::Target {
            written: StreamWritten::default().id("path", format!("{}/disk{position}", self.vm.name)),
            target: Box::new(Shared(t.clone())),
        })
    }
    fn commit(self: Box<Self>) -> alike_core::Result<CreatedVm> {
        self.host.made.lock().unwrap().insert(self.vm.name.clone(), self.targets.clone());
        Ok(self.vm.clone())
    }
    fn abort(self: Box<Self>) -> alike_core::Result<()> {
        self.host.log.lock().unwrap().removed_vms.push(self.vm.name.clone());
        Ok(())
    }
}

impl Hypervisor for FakeHost {
    fn kind(&self) -> &str {
        "fake"
    }
    fn list_vms(&self) -> alike_core::Result<Vec<VmInfo>> {
        let mut v = VmInfo::named("vm1");
        v.hypervisor = "fake".into();
        Ok(vec![v])
    }
    fn vm_name(&self, vm: &str) -> alike_core::Result<String> {
        match vm {
            "vm1" | "uuid-1" => Ok("vm1".into()),
            _ => Err(alike_core::Error::seam(NoSuchVm(vm.to_owned()))),
        }
    }
    fn begin_backup(
        &self,
        vm: &str,
        previous: &[PreviousDisk],
        opts: &SnapshotOptions,
    ) -> alike_core::Result<Box<dyn BackupSession + '_>> {
        let name = self.vm_name(vm)?;
        let mut log = self.log.lock().unwrap();
        let snap = format!("snap-{}", log.snapshots.len() + log.released.len() + log.aborted.len() + 1);
        log.snapshots.push(snap.clone());
        log.previous.push(previous.to_vec());
        log.quiesce.push(opts.quiesce);
        let mut info = VmInfo::named(name);
        info.uuid = Some("uuid-1".into());
        info.hypervisor = "fake".into();
        let disks =
            self.disks.iter().enumerate().map(|(i, d)| SnapDisk { disk: d, fail: self.fail_disk1 && i == 1 }).collect();
        Ok(Box::new(Session { host: self, vm: info, snap, disks }))
    }
    fn create_vm(
        &self,
        config: &VmInfo,
        disks: &[PlannedDisk],
        placement: &Placement,
    ) -> alike_core::Result<Box<dyn RestoreSession + '_>> {
        if config.hypervisor != "fake" {
            return Err(alike_core::Error::InvalidArgument(format!("{} is not from this host", config.name)));
        }
        let name = placement.name.clone().unwrap_or_else(|| config.name.clone());
        let mut vm = CreatedVm::new(format!("uuid-{name}"), format!("ref-{name}"), name);
        vm.disks = disks.iter().map(|d| d.position).collect();
        let targets = disks.iter().map(|_| Arc::new(MemTarget::default())).collect();
        Ok(Box::new(Restore { host: self, vm, targets }))
    }
    fn existing_disk(&self, disk: &str) -> alike_core::Result<DiskSink<'_>> {
        Err(alike_core::Error::InvalidArgument(format!("no disk {disk}")))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no VM {0:?} on the fake host")]
struct NoSuchVm(String);

impl alike_core::SeamError for NoSuchVm {
    fn kind(&self) -> ErrorKind {
        ErrorKind::NotFound
    }
    fn retry(&self) -> alike::Retry {
        alike::Retry::Permanent
    }
    fn code(&self) -> Option<&str> {
        Some("NO_SUCH_VM")
    }
}

#[test]
fn a_second_hypervisor_backs_up_and_restores_through_the_facade() {
    let env = Env::new();
    let store = env.create_fixed(true);
    let host = FakeHost::new();

    let opts = BackupOptions::default().quiesce(Quiesce::IfSupported);
    let r1 = store.backup_vm(&host, "uuid-1", &opts).unwrap();
    assert_eq!((r1.vm.as_str(), r1.vm_uuid.as_str(), r1.snapshot.as_str()), ("vm1", "uuid-1", "snap-1"));
    assert!(r1.disks.iter().all(|d| !d.incremental && d.mode == "full" && d.transport == "memory"));
    assert_eq!(r1.read_bytes, 4 << 20);
    assert_eq!(r1.disks[1].ids["path"], "vm1/disk1");
    assert_eq!(host.log.lock().unwrap().quiesce, [Quiesce::IfSupported]);
    assert!(host.log.lock().unwrap().previous[0].is_empty(), "no parent: no tokens");

    host.disks[0].write(70_000, &[9u8; 10]);
    host.disks[1].write(5, &[1u8; 3]);
    let r2 = store.backup_vm(&host, "vm1", &BackupOptions::default()).unwrap();
    assert!(r2.disks.iter().all(|d| d.incremental && d.mode == "incremental"), "{:?}", r2.disks);
    assert_eq!(r2.read_bytes, 2 * 65536, "one changed block per disk");
    assert_eq!(r2.released.kept_snapshot, "snap-2");
    assert_eq!(r2.released.destroyed_snapshots, ["snap-1"]);
    let log = host.log.lock().unwrap();
    assert_eq!(log.previous[1].len(), 2, "the parent's change tokens reached the host");
    drop(log);

    // The report is data: the host's identifiers are flattened in.
    let j = serde_json::to_value(&r2).unwrap();
    assert_eq!(j["disks"][0]["path"], "vm1/disk0");
    assert_eq!(j["disks"][0]["mode"], "incremental");
    assert_eq!(j["released"]["kept_snapshot"], "snap-2");

    // Restore through positional writes.
    let v2 = store.version(&r2.id, None).unwrap();
    let rr = store.restore_vm(&v2, &host, &Placement::on("memory").name("vm1-restored"), &RestoreOptions::default());
    let rr = rr.unwrap();
    assert_eq!(rr.name, "vm1-restored");
    assert_eq!(rr.disks.len(), 2);
    assert_eq!(rr.disks[0].format, "target");
    let made = host.made.lock().unwrap();
    let disks = &made["vm1-restored"];
    for (i, d) in disks.iter().enumerate() {
        assert!(*d.finished.lock().unwrap());
        assert_eq!(*d.data.lock().unwrap(), host.disks[i].bytes(), "disk {i} bit-exact");
    }
}

#[test]
fn a_failed_backup_releases_its_snapshot_and_writes_no_version_and_errors_keep_their_kind() {
    let env = Env::new();
    let store = env.create(false);
    let mut host = FakeHost::new();
    host.fail_disk1 = true;
    let e = store.backup_vm(&host, "vm1", &BackupOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(store.versions(None).unwrap().is_empty());
    let log = host.log.lock().unwrap();
    assert_eq!(log.aborted, ["snap-1"]);
    assert!(log.snapshots.is_empty());
    drop(log);

    let e = store.backup_vm(&host, "nope", &BackupOptions::default()).unwrap_err();
    assert_eq!((e.kind(), e.code(), e.retry()), (ErrorKind::NotFound, Some("NO_SUCH_VM"), alike::Retry::Permanent));

    // A version from another kind of host is refused before anything is made.
    let img = alike::MemSource { label: "d".into(), data: vec![1u8; 1 << 16] };
    let v = store.backup(VmInfo::named("plain"), &[&img], &BackupOptions::default()).unwrap().version;
    let e = store.restore_vm(&v, &host, &Placement::on("memory"), &RestoreOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}
