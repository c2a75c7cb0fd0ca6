//! [`ReplicaDir`]: a replica kept as a folder of VHDX files — how a Hyper-V
//! host or a share holds one (`docs/replica-dir.md`).
//!
//! # Layout
//!
//! ```text
//! replica.json            the manifest: the committed points (JSON, versioned)
//! key                     the replica's key (0600), for the record's ids
//! lock                    flock(2)ed by the one writer (a run, a merge)
//! record-00000007.bin     the receiver's record of the newest point
//! disk0-p00000005.vhdx    disk 0 of the oldest point: a dynamic VHDX
//! disk0-p00000006.avhdx   disk 0 of point 6: a differencing AVHDX over point 5's
//! disk0-p00000007.avhdx   … over point 6's
//! ```
//!
//! # Never torn
//!
//! Files named by the manifest are never modified. A run writes each
//! disk's new AVHDX under a temporary name (`.disk0-p00000008.avhdx.alike-partial-…`)
//! over the newest point's file, then, at commit: each AVHDX is completed,
//! synced and renamed to its name; the record of the new point is written
//! (write-then-rename); and the manifest listing the new point replaces
//! the old one by rename. That last rename is the commit: before it the
//! replica is at its last point (the new files are not named by any
//! manifest), after it at the new one. The next writer removes what a
//! dead run left.
//!
//! Keeping the last N points merges forward without touching a file in
//! use: for the new oldest point P it writes a new base VHDX holding P's
//! whole disk (`disk0-pP.vhdx`), then rewrites the next point's AVHDX over
//! that base (same content, same DataWriteGuid, so the AVHDX files above it
//! still find their parent) and renames it over itself, then writes the
//! manifest without the older points, then deletes what no point's chain
//! reaches. At every instant each point of the manifest on disk reads the
//! same bytes; a merge cut short is finished or redone by the next one.
//!
//! Readers take no lock: they read the manifest and open the chain; a
//! file deleted by a merge between the two is retried with the new manifest.

use std::collections::HashSet;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use alike_core::{CancelToken, Chunking, DiskSource, Keys, MasterKey, is_zero};
use alike_formats::vhdx::{CreateOptions, VhdxError, VhdxSource, VhdxTarget};

use crate::error::{ReplicaError, Result};
use crate::journal::JournalWriter;
use crate::manifest::{
    MANIFEST, MAX_DISKS, Manifest, ManifestDisk, ManifestPoint, check_size, disk_file, record_file, sync_dir,
    write_atomic,
};
use crate::record::Record;
use crate::run::{CopyKind, Run};
use crate::target::{Point, PointDisk, ReplicaTarget, RunLayer};

/// The key file's name.
const KEY: &str = "key";
/// The lock file's name.
const LOCK: &str = "lock";
/// Present once the replica was failed over: names the VM (`ReplicaDir::set_failed_over`).
const FAILED_OVER: &str = "failed-over";
/// The VM's recorded configuration (`docs/replica-dir.md` §1).
const VM_CONFIG: &str = "vm-config.json";
/// What a failover recorded for its failback (opaque to this crate).
const FAILOVER_BASE: &str = "failover-base.json";
/// Largest `vm-config.json` or `failover-base.json` read.
const VM_CONFIG_MAX: u64 = 1 << 20;
/// The resume journal of a first run (`crate::journal`).
const JOURNAL: &str = "resume.journal";
/// Magic of the key file: `0x89 'A' 'L' 'K' 'R' 'K' '\r' '\n'` (do not edit).
const KEY_MAGIC: [u8; 8] = [0x89, b'A', b'L', b'K', b'R', b'K', b'\r', b'\n'];
const KEY_VERSION: u32 = 1;
/// Default payload block size of new VHDX files: Hyper-V's for differencing disks.
pub const DEFAULT_VHDX_BLOCK_SIZE: u32 = 2 << 20;
/// Most points a replica folder holds: a new point's chain (one file per
/// point) must stay within the VHDX reader's depth limit.
pub const MAX_POINTS: usize = alike_formats::vhdx::DEFAULT_MAX_DEPTH - 1;

/// Options of a new replica folder; [`ReplicaDirBuilder::create`] or
/// [`ReplicaDirBuilder::open_or_create`] ends them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplicaDirBuilder {
    vm: Option<String>,
    chunking: Chunking,
    vhdx_block_size: u32,
}

impl Default for ReplicaDirBuilder {
    fn default() -> Self {
        ReplicaDirBuilder { vm: None, chunking: Chunking::default(), vhdx_block_size: DEFAULT_VHDX_BLOCK_SIZE }
    }
}

impl ReplicaDirBuilder {
    /// The VM the replica holds (required to create; checked on open).
    pub fn vm(&mut self, name: impl Into<String>) -> &mut Self {
        self.vm = Some(name.into());
        self
    }
    /// How the record cuts disks (default: content-defined, 16/32/64 KiB,
    /// as a new store). Fixed when the replica is created.
    pub fn chunking(&mut self, c: Chunking) -> &mut Self {
        self.chunking = c;
        self
    }
    /// Payload block size of the VHDX files (default 2 MiB).
    pub fn vhdx_block_size(&mut self, b: u32) -> &mut Self {
        self.vhdx_block_size = b;
        self
    }

    /// Creates a replica in `dir` (made if missing), with no point yet.
    ///
    /// # Errors
    /// [`ReplicaError::AlreadyExists`] when `dir` holds a replica;
    /// [`ReplicaError::InvalidArgument`] without a VM name or with a
    /// chunking or block size out of range; a file failure.
    pub fn create(&self, dir: impl AsRef<Path>) -> Result<ReplicaDir> {
        let dir = dir.as_ref();
        let vm = self.vm.as_deref().unwrap_or_default();
        let m = Manifest::new(vm, &self.chunking, self.vhdx_block_size);
        // Check the settings as a reader will.
        let text = serde_json::to_vec(&m).map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
        Manifest::decode(&text, &dir.join(MANIFEST)).map_err(|e| match e {
            ReplicaError::Malformed { reason, .. } => ReplicaError::InvalidArgument(reason),
            e => e,
        })?;
        std::fs::create_dir_all(dir).map_err(ReplicaError::io(dir, "creating the folder"))?;
        let r = ReplicaDir::from_manifest(dir, &m);
        let _lock = r.lock()?;
        if dir.join(MANIFEST).exists() {
            return Err(ReplicaError::AlreadyExists { dir: dir.to_owned() });
        }
        r.keys()?;
        m.write(dir)?;
        Ok(r)
    }

    /// Opens the replica in `dir`, or creates it when there is none.
    ///
    /// # Errors
    /// [`ReplicaError::OtherVm`] when the replica there holds another VM;
    /// as [`ReplicaDir::open`] and [`ReplicaDirBuilder::create`].
    pub fn open_or_create(&self, dir: impl AsRef<Path>) -> Result<ReplicaDir> {
        let dir = dir.as_ref();
        let r = match ReplicaDir::open(dir) {
            Err(ReplicaError::NotAReplica { .. }) => match self.create(dir) {
                Err(ReplicaError::AlreadyExists { .. }) => ReplicaDir::open(dir)?,
                r => return r,
            },
            r => r?,
        };
        match &self.vm {
            Some(vm) if *vm != r.vm => {
                Err(ReplicaError::OtherVm { dir: dir.to_owned(), found: r.vm.clone(), wanted: vm.clone() })
            }
            _ => Ok(r),
        }
    }
}

/// A replica kept as a folder of VHDX files; see the module docs.
#[derive(Debug)]
pub struct ReplicaDir {
    dir: PathBuf,
    vm: String,
    chunking: Chunking,
    vhdx_block_size: u32,
    keys: OnceLock<Keys>,
}

/// The writer's lock, held while its file is open.
#[derive(Debug)]
struct DirLock(#[allow(dead_code)] File);

impl ReplicaDir {
    /// Options for a new replica.
    pub fn builder() -> ReplicaDirBuilder {
        ReplicaDirBuilder::default()
    }

    /// Opens the replica in `dir`.
    ///
    /// # Errors
    /// [`ReplicaError::NotAReplica`]; a manifest that is damaged or of
    /// another version (an error naming it).
    pub fn open(dir: impl AsRef<Path>) -> Result<ReplicaDir> {
        let dir = dir.as_ref();
        let m = Manifest::read(dir)?;
        Ok(ReplicaDir::from_manifest(dir, &m))
    }

    fn from_manifest(dir: &Path, m: &Manifest) -> ReplicaDir {
        ReplicaDir {
            dir: dir.to_owned(),
            vm: m.vm.clone(),
            chunking: m.chunking(),
            vhdx_block_size: m.vhdx_block_size,
            keys: OnceLock::new(),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// The VM the replica holds.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    fn lock(&self) -> Result<DirLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(LOCK);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(ReplicaError::io(&path, "opening the lock"))?;
        // A lock just released can stay held for a moment by a process
        // forked (to run something else) while its descriptor was open, until
        // that child execs: wait up to 2 s before calling the replica busy.
        let mut tries = 0;
        loop {
            match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(DirLock(f)),
                Err(rustix::io::Errno::WOULDBLOCK) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Err(ReplicaError::Busy { file: path }),
                Err(e) => return Err(ReplicaError::Io { file: path, what: "locking", source: e.into() }),
            }
        }
    }

    /// Reads the key file, or makes one (never over an existing file).
    fn load_key(&self) -> Result<Keys> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(KEY);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                if !meta.is_file() || meta.len() > 64 << 10 {
                    return Err(ReplicaError::malformed(&path, "not a regular file of at most 64 KiB"));
                }
                let b = std::fs::read(&path).map_err(ReplicaError::io(&path, "reading"))?;
                if b.len() != 44 || b[..8] != KEY_MAGIC || b[8..12] != KEY_VERSION.to_le_bytes() {
                    return Err(ReplicaError::malformed(
                        &path,
                        "not a replica key (delete it to make a new key; the record is then rebuilt)",
                    ));
                }
                let k: [u8; 32] = b[12..].try_into().expect("32 bytes");
                Ok(Keys::from_master(&MasterKey(k)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = MasterKey::generate()?;
                let tmp = self.dir.join(format!(".key.{}.tmp", std::process::id()));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(ReplicaError::io(&tmp, "creating"))?;
                let mut b = KEY_MAGIC.to_vec();
                b.extend_from_slice(&KEY_VERSION.to_le_bytes());
                b.extend_from_slice(&key.0);
                f.write_all(&b).and_then(|()| f.sync_all()).map_err(ReplicaError::io(&tmp, "writing"))?;
                // A link never replaces a key another process made meanwhile.
                let linked = std::fs::hard_link(&tmp, &path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        sync_dir(&self.dir)?;
                        Ok(Keys::from_master(&key))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self.load_key(),
                    Err(e) => Err(ReplicaError::Io { file: path, what: "creating", source: e }),
                }
            }
            Err(e) => Err(ReplicaError::Io { file: path, what: "reading", source: e }),
        }
    }

    /// Opens the chain of disk `d` of point `p`.
    fn open_chain(&self, p: &ManifestPoint, d: usize) -> Result<VhdxSource> {
        let md = &p.disks[d];
        let path = self.dir.join(&md.file);
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(ReplicaError::MissingFile { file: path, point: p.point, disk: d });
        }
        let src = VhdxSource::open(&path).map_err(ReplicaError::image(p.point, d))?;
        if src.layers()[0].virtual_size != md.size {
            return Err(ReplicaError::malformed(
                path,
                format!("holds a {}-byte disk, the manifest says {}", src.layers()[0].virtual_size, md.size),
            ));
        }
        Ok(src)
    }

    /// The VM the replica was failed over to, if it was: runs are then
    /// refused ([`ReplicaError::FailedOver`]).
    ///
    /// # Errors
    /// The marker file cannot be read.
    pub fn failed_over(&self) -> Result<Option<String>> {
        let path = self.dir.join(FAILED_OVER);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ReplicaError::Io { file: path, what: "reading", source: e }),
        }
    }

    /// The VM's configuration as the last run that knew it recorded it
    /// ([`ReplicaDir::set_vm_config`]); `None` when none did.
    ///
    /// # Errors
    /// The file cannot be read, is larger than 1 MiB, or is not a
    /// configuration.
    pub fn vm_config(&self) -> Result<Option<alike_core::VmInfo>> {
        let Some(buf) = self.read_small(VM_CONFIG)? else { return Ok(None) };
        serde_json::from_slice(&buf).map(Some).map_err(|e| ReplicaError::Malformed {
            file: self.dir.join(VM_CONFIG),
            reason: format!("not a VM configuration: {e}"),
        })
    }

    /// The bytes of a small file of the folder (at most [`VM_CONFIG_MAX`]);
    /// `None` when it does not exist.
    fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>> {
        use std::io::Read as _;
        let path = self.dir.join(name);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ReplicaError::Io { file: path, what: "reading", source: e }),
        };
        let mut buf = Vec::new();
        f.take(VM_CONFIG_MAX + 1).read_to_end(&mut buf).map_err(|e| ReplicaError::Io {
            file: path.clone(),
            what: "reading",
            source: e,
        })?;
        if buf.len() as u64 > VM_CONFIG_MAX {
            return Err(ReplicaError::Malformed { file: path, reason: format!("larger than {VM_CONFIG_MAX} bytes") });
        }
        Ok(Some(buf))
    }

    /// Records the VM's configuration (what a version records: a Xen or
    /// Hyper-V source's), so that the replica can be registered as a VM
    /// without a store. Write-then-rename; takes the writer's lock.
    ///
    /// # Errors
    /// [`ReplicaError::Busy`] while a run holds the lock; a file failure.
    pub fn set_vm_config(&self, config: &alike_core::VmInfo) -> Result<()> {
        let _lock = self.lock()?;
        let bytes = serde_json::to_vec_pretty(config).map_err(|e| ReplicaError::Malformed {
            file: self.dir.join(VM_CONFIG),
            reason: format!("the configuration does not serialise: {e}"),
        })?;
        write_atomic(&self.dir, VM_CONFIG, &bytes, 0o644)
    }

    /// What the failover recorded for a failback ([`ReplicaDir::set_failover_base`]).
    ///
    /// # Errors
    /// The file cannot be read or is larger than 1 MiB.
    pub fn failover_base(&self) -> Result<Option<Vec<u8>>> {
        self.read_small(FAILOVER_BASE)
    }

    /// Records (`Some`) or forgets (`None`) what a failover keeps for its
    /// failback: the failed-over VM's change-tracking tokens at the point
    /// (the caller's format). Write-then-rename; takes the writer's lock.
    ///
    /// # Errors
    /// [`ReplicaError::Busy`] while a run holds the lock; a file failure.
    pub fn set_failover_base(&self, base: Option<&[u8]>) -> Result<()> {
        let _lock = self.lock()?;
        match base {
            Some(b) => write_atomic(&self.dir, FAILOVER_BASE, b, 0o644),
            None => match std::fs::remove_file(self.dir.join(FAILOVER_BASE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(ReplicaError::Io { file: self.dir.join(FAILOVER_BASE), what: "removing", source: e })
                }
                _ => sync_dir(&self.dir),
            },
        }
    }

    /// Records that the replica was failed over to VM `vm` (runs are then
    /// refused), or with `None` that it is a replica again (registered
    /// anew, failed back). Takes the writer's lock.
    ///
    /// # Errors
    /// [`ReplicaError::Busy`] while a run holds the lock; a file failure.
    pub fn set_failed_over(&self, vm: Option<&str>) -> Result<()> {
        let _lock = self.lock()?;
        match vm {
            Some(vm) => write_atomic(&self.dir, FAILED_OVER, vm.as_bytes(), 0o644),
            None => match std::fs::remove_file(self.dir.join(FAILED_OVER)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(ReplicaError::Io { file: self.dir.join(FAILED_OVER), what: "removing", source: e })
                }
                _ => sync_dir(&self.dir),
            },
        }
    }

    /// Removes what no committed point needs: files of dead runs and of
    /// merges, temporary files, older records. Only names this crate makes
    /// are ever removed. Call with the lock held.
    fn tidy(&self, m: &Manifest) -> Result<()> {
        let mut live: HashSet<std::ffi::OsString> = [MANIFEST, KEY, LOCK].iter().map(Into::into).collect();
        if let Some(p) = m.newest() {
            live.insert(record_file(p.point).into());
        }
        // Newest first: its chain usually holds every point's file, and a
        // file already reached needs no chain of its own.
        for p in m.points.iter().rev() {
            for d in 0..p.disks.len() {
                if live.contains(std::ffi::OsStr::new(&p.disks[d].file)) {
                    continue;
                }
                for l in self.open_chain(p, d)?.layers() {
                    if let Some(n) = l.path.file_name() {
                        live.insert(n.to_owned());
                    }
                }
            }
        }
        if m.newest().is_some() {
            // Only a first run keeps a journal: once a point exists it is a leftover.
            let _ = std::fs::remove_file(self.dir.join(JOURNAL));
        }
        let entries = std::fs::read_dir(&self.dir).map_err(ReplicaError::io(&self.dir, "listing"))?;
        for e in entries {
            let e = e.map_err(ReplicaError::io(&self.dir, "listing"))?;
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            let ours = (n.starts_with('.') && (n.contains(".alike-partial-") || n.ends_with(".tmp")))
                || (n.starts_with("disk") && n.contains("-p") && (n.ends_with(".vhdx") || n.ends_with(".avhdx")))
                || (n.starts_with("record-") && n.ends_with(".bin"));
            if ours && !live.contains(&name) {
                match std::fs::remove_file(e.path()) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        return Err(ReplicaError::Io { file: e.path(), what: "removing a leftover", source: err });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The record of the newest point of `m`, and why it was rebuilt (if).
    fn load_record(&self, m: &Manifest) -> Result<(Record, Option<String>)> {
        let Some(p) = m.newest() else {
            return Ok((Record::empty(0, self.chunking, &[]), None));
        };
        let keys = self.keys()?;
        let sizes: Vec<u64> = p.disks.iter().map(|d| d.size).collect();
        let path = self.dir.join(record_file(p.point));
        let why = match std::fs::read(&path) {
            Err(e) => format!("{}: {e}", path.display()),
            Ok(b) => match Record::decode(&b, &keys, &path) {
                Err(e) => e.to_string(),
                Ok(r) => {
                    let got: Vec<u64> = r.disks().iter().map(|d| d.size).collect();
                    if r.point() == p.point && r.chunking() == self.chunking && got == sizes {
                        return Ok((r, None));
                    }
                    format!(
                        "{}: describes point {} with disks {got:?}, not point {}",
                        path.display(),
                        r.point(),
                        p.point
                    )
                }
            },
        };
        let chains = (0..p.disks.len()).map(|d| self.open_chain(p, d)).collect::<Result<Vec<_>>>()?;
        let sources: Vec<&dyn DiskSource> = chains.iter().map(|c| c as &dyn DiskSource).collect();
        let r = Record::rebuild(p.point, self.chunking, &keys, &sources, &CancelToken::new())?;
        // Best effort: a replica on read-only media still answers from the rebuilt record.
        let _ = write_atomic(&self.dir, &record_file(p.point), &r.encode(&keys), 0o644);
        Ok((r, Some(why)))
    }

    /// Completes a merge towards keeping the points of `m` from index `k`:
    /// a base VHDX for point `k`, the next point re-parented onto it.
    fn merge(&self, m: &Manifest, k: usize) -> Result<()> {
        let p = &m.points[k];
        for d in 0..p.disks.len() {
            let size = p.disks[d].size;
            let base_name = disk_file(d, p.point, true);
            let base = self.dir.join(&base_name);
            if std::fs::symlink_metadata(&base).is_err() {
                let src = self.open_chain(p, d)?;
                let t =
                    VhdxTarget::create(&base, size, &self.create_options()).map_err(ReplicaError::image(p.point, d))?;
                copy(&src, &t, src.allocated().map_err(ReplicaError::image(p.point, d))?)
                    .map_err(ReplicaError::image(p.point, d))?;
                t.complete(size).map_err(ReplicaError::image(p.point, d))?;
            }
            let Some(next) = m.points.get(k + 1) else { continue };
            let src = self.open_chain(next, d)?;
            let layers = src.layers();
            if layers.get(1).and_then(|l| l.path.file_name()) == Some(std::ffi::OsStr::new(&base_name)) {
                continue; // already re-parented
            }
            let path = self.dir.join(&next.disks[d].file);
            let img = ReplicaError::image(next.point, d);
            let t = VhdxTarget::create_differencing(&path, &base)
                .map_err(ReplicaError::image(next.point, d))?
                .with_data_write_guid(layers[0].data_write_guid);
            let own = src.child_ranges().map_err(ReplicaError::image(next.point, d))?;
            copy(&src, &t, own).map_err(ReplicaError::image(next.point, d))?;
            t.complete(size).map_err(img)?;
        }
        Ok(())
    }

    fn create_options(&self) -> CreateOptions {
        let mut o = CreateOptions::default();
        o.block_size(self.vhdx_block_size).logical_sector_size(512).physical_sector_size(4096);
        o
    }

    /// Removes leftovers of interrupted runs and merges, and rebuilds the
    /// record if it is missing or damaged: what every writer does first.
    /// Returns why the record was rebuilt, if it was.
    ///
    /// # Errors
    /// [`ReplicaError::Busy`]; a point's files are missing or damaged.
    pub fn repair(&self) -> Result<Option<String>> {
        let _lock = self.lock()?;
        let m = Manifest::read(&self.dir)?;
        self.tidy(&m)?;
        Ok(self.load_record(&m)?.1)
    }
}

/// Copies `ranges` of `src` into `t`, leaving zeroes to the writer (a
/// dynamic file keeps them unallocated, a differencing one marks them).
fn copy(src: &VhdxSource, t: &VhdxTarget, ranges: Vec<Range<u64>>) -> std::result::Result<(), VhdxError> {
    let mut buf = vec![0u8; 4 << 20];
    for r in ranges {
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(buf.len() as u64);
            let b = &mut buf[..n as usize];
            src.read_exact_at(at, b)?;
            if is_zero(b) {
                t.zero(at, n)?
            } else {
                t.write(at, b)?
            }
            at += n;
        }
    }
    Ok(())
}

/// A point's disk, read through its VHDX chain.
struct PointSource {
    src: VhdxSource,
    label: String,
}

impl DiskSource for PointSource {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn size(&self) -> u64 {
        self.src.size()
    }
    fn allocated_ranges(&self) -> alike_core::Result<Vec<Range<u64>>> {
        self.src.allocated_ranges()
    }
    fn change_token(&self) -> Option<Vec<u8>> {
        self.src.change_token()
    }
    fn changed_ranges(&self, since: &[u8]) -> alike_core::Result<Option<Vec<Range<u64>>>> {
        self.src.changed_ranges(since)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        self.src.read_at(offset, buf)
    }
}

impl ReplicaTarget for ReplicaDir {
    fn label(&self) -> String {
        self.dir.display().to_string()
    }

    fn chunking(&self) -> Chunking {
        self.chunking
    }

    fn keys(&self) -> Result<Keys> {
        if let Some(k) = self.keys.get() {
            return Ok(k.clone());
        }
        let k = self.load_key()?;
        Ok(self.keys.get_or_init(|| k).clone())
    }

    fn points(&self) -> Result<Vec<Point>> {
        let m = Manifest::read(&self.dir)?;
        Ok(m.points
            .iter()
            .map(|p| {
                Point::new(p.point, p.time_ms, p.disks.iter().map(|d| PointDisk::new(d.size, d.file.clone())).collect())
            })
            .collect())
    }

    fn point_disk(&self, point: u64, disk: usize) -> Result<Box<dyn DiskSource>> {
        let mut m = Manifest::read(&self.dir)?;
        loop {
            let Some(p) = m.points.iter().find(|p| p.point == point) else {
                let points = m.points.iter().map(|p| p.point.to_string()).collect::<Vec<_>>().join(", ");
                return Err(ReplicaError::PointNotFound {
                    target: self.label(),
                    point,
                    points: if points.is_empty() { "none".into() } else { points },
                });
            };
            if disk >= p.disks.len() {
                return Err(ReplicaError::DiskNotFound { point, disk, disks: p.disks.len() });
            }
            match self.open_chain(p, disk) {
                Ok(src) => {
                    let label = format!("{} point {point} disk {disk}", self.dir.display());
                    return Ok(Box::new(PointSource { src, label }));
                }
                Err(e) => {
                    // A merge may have replaced the files between reading the manifest and opening them.
                    let again = Manifest::read(&self.dir)?;
                    if again == m {
                        return Err(e);
                    }
                    m = again;
                }
            }
        }
    }

    fn record(&self) -> Result<Record> {
        let m = Manifest::read(&self.dir)?;
        Ok(self.load_record(&m)?.0)
    }

    fn begin(&self, disk_sizes: &[u64]) -> Result<Run<'_>> {
        let lock = self.lock()?;
        if let Some(vm) = self.failed_over()? {
            return Err(ReplicaError::FailedOver { dir: self.dir.clone(), vm });
        }
        let m = Manifest::read(&self.dir)?;
        self.tidy(&m)?;
        let differ = |reason: String| ReplicaError::DisksDiffer { target: self.label(), reason };
        if disk_sizes.is_empty() || disk_sizes.len() > MAX_DISKS {
            return Err(differ(format!("{} disks (1 to {MAX_DISKS})", disk_sizes.len())));
        }
        for (d, &s) in disk_sizes.iter().enumerate() {
            check_size(s).map_err(|e| differ(format!("disk {d}: {e}")))?;
        }
        if m.points.len() >= MAX_POINTS {
            return Err(ReplicaError::InvalidArgument(format!(
                "{}: the replica holds {} points, the most a chain of VHDX files may have here: keep fewer (keep_last)",
                self.label(),
                m.points.len()
            )));
        }
        if let Some(p) = m.newest() {
            let have: Vec<u64> = p.disks.iter().map(|d| d.size).collect();
            if have != disk_sizes {
                return Err(differ(format!(
                    "the run's disks are {disk_sizes:?} bytes, the replica's {have:?} (a resized or added disk needs a new replica)"
                )));
            }
        }
        let keys = self.keys()?;
        let (record, note) = match m.newest() {
            Some(_) => self.load_record(&m)?,
            None => (Record::empty(0, self.chunking, disk_sizes), None),
        };
        let point = m.next_point;
        let mut parents: Vec<Box<dyn DiskSource>> = Vec::new();
        let mut disks = Vec::with_capacity(disk_sizes.len());
        for (d, &size) in disk_sizes.iter().enumerate() {
            let target = match m.newest() {
                None => {
                    let name = disk_file(d, point, true);
                    let t = VhdxTarget::create(self.dir.join(&name), size, &self.create_options());
                    (t, name)
                }
                Some(p) => {
                    let src = self.open_chain(p, d)?;
                    parents.push(Box::new(PointSource { src, label: format!("point {} disk {d}", p.point) }));
                    let name = disk_file(d, point, false);
                    (VhdxTarget::create_differencing(self.dir.join(&name), self.dir.join(&p.disks[d].file)), name)
                }
            };
            let (t, name) = target;
            let t = t.map_err(ReplicaError::image(point, d))?;
            disks.push(LayerDisk { target: Some(t), name, size });
        }
        let first = m.newest().is_none();
        let layer = DirLayer { dir: self, _lock: lock, manifest: m, point, disks, sealed: false, committed: false };
        let mut run = Run::new(Box::new(layer), disk_sizes, parents, record, keys, note)?;
        if first {
            // A first run can be long (a seed over a WAN): what arrives is
            // journaled, and what an earlier attempt received is copied from
            // the journal instead of being sent again.
            let (writer, held) = JournalWriter::open(&self.dir.join(JOURNAL))?;
            if let Some((src, extents)) = held {
                run.add_copy_source(CopyKind::Resume, Box::new(src), &extents);
            }
            run.set_journal(writer);
        }
        Ok(run)
    }

    fn discard_partial(&self) -> Result<bool> {
        let _lock = self.lock()?;
        match std::fs::remove_file(self.dir.join(JOURNAL)) {
            Ok(()) => {
                sync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ReplicaError::Io { file: self.dir.join(JOURNAL), what: "removing", source: e }),
        }
    }

    fn keep_last(&self, n: usize) -> Result<Vec<u64>> {
        if n == 0 {
            return Err(ReplicaError::InvalidArgument("keep at least 1 point".into()));
        }
        let _lock = self.lock()?;
        let m = Manifest::read(&self.dir)?;
        self.tidy(&m)?;
        if m.points.len() <= n {
            return Ok(Vec::new());
        }
        let k = m.points.len() - n;
        self.merge(&m, k)?;
        let mut kept = m.clone();
        let removed: Vec<u64> = kept.points.drain(..k).map(|p| p.point).collect();
        let p = &mut kept.points[0];
        for (d, disk) in p.disks.iter_mut().enumerate() {
            disk.file = disk_file(d, p.point, true);
        }
        kept.write(&self.dir)?;
        self.tidy(&kept)?;
        Ok(removed)
    }
}

struct LayerDisk {
    /// The AVHDX (or first VHDX) being written; `None` once sealed.
    target: Option<VhdxTarget>,
    name: String,
    size: u64,
}

/// A run's new files in a replica folder.
struct DirLayer<'a> {
    dir: &'a ReplicaDir,
    _lock: DirLock,
    manifest: Manifest,
    point: u64,
    disks: Vec<LayerDisk>,
    sealed: bool,
    committed: bool,
}

impl DirLayer<'_> {
    fn target(&self, disk: usize) -> Result<&VhdxTarget> {
        self.disks.get(disk).and_then(|d| d.target.as_ref()).ok_or_else(|| {
            ReplicaError::InvalidArgument(format!("disk {disk}: no such disk, or the run is already sealed"))
        })
    }
}

impl RunLayer for DirLayer<'_> {
    fn point(&self) -> u64 {
        self.point
    }

    fn write_at(&self, disk: usize, offset: u64, data: &[u8]) -> Result<()> {
        self.target(disk)?.write(offset, data).map_err(ReplicaError::image(self.point, disk))
    }

    fn write_zeroes(&self, disk: usize, offset: u64, len: u64) -> Result<()> {
        self.target(disk)?.zero(offset, len).map_err(ReplicaError::image(self.point, disk))
    }

    fn seal(&mut self) -> Result<Vec<Box<dyn DiskSource>>> {
        self.sealed = true;
        let mut out: Vec<Box<dyn DiskSource>> = Vec::with_capacity(self.disks.len());
        for (d, ld) in self.disks.iter_mut().enumerate() {
            let t = ld.target.take().ok_or_else(|| ReplicaError::InvalidArgument("sealed twice".into()))?;
            t.complete(ld.size).map_err(ReplicaError::image(self.point, d))?;
            drop(t);
            let src = VhdxSource::open(self.dir.dir.join(&ld.name)).map_err(ReplicaError::image(self.point, d))?;
            out.push(Box::new(PointSource { src, label: format!("new point {} disk {d}", self.point) }));
        }
        Ok(out)
    }

    fn commit(mut self: Box<Self>, time_ms: u64, record: &Record) -> Result<Point> {
        if !self.sealed || self.disks.iter().any(|d| d.target.is_some()) {
            return Err(ReplicaError::InvalidArgument("commit before seal".into()));
        }
        let dir = &self.dir.dir;
        let keys = self.dir.keys()?;
        write_atomic(dir, &record_file(self.point), &record.encode(&keys), 0o644)?;
        let mut m = self.manifest.clone();
        let disks: Vec<ManifestDisk> =
            self.disks.iter().map(|d| ManifestDisk { size: d.size, file: d.name.clone() }).collect();
        m.points.push(ManifestPoint { point: self.point, time_ms, disks });
        m.next_point = self.point + 1;
        // From here on the files may be named by the manifest on disk: never remove them.
        self.committed = true;
        m.write(dir)?;
        if let Some(prev) = self.manifest.newest() {
            let _ = std::fs::remove_file(dir.join(record_file(prev.point)));
        }
        Ok(Point::new(self.point, time_ms, self.disks.iter().map(|d| PointDisk::new(d.size, d.name.clone())).collect()))
    }

    fn abort(self: Box<Self>) -> Result<()> {
        drop(self);
        Ok(())
    }
}

impl Drop for DirLayer<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for d in &mut self.disks {
            // An unfinished target removes its temporary file; a sealed one is removed here.
            if d.target.take().is_none() && self.sealed {
                let _ = std::fs::remove_file(self.dir.dir.join(&d.name));
            }
        }
        let _ = std::fs::remove_file(self.dir.dir.join(record_file(self.point)));
    }
}
