//! File-level restore ([`crate::Store::ls`], [`crate::Store::extract`]):
//! the disks of a version read as block devices straight from the store
//! (`crate::disk_reader`, the reading NBD export uses), their partitions,
//! LVM2 volumes and filesystems found by `alike-fs`, files listed and
//! extracted without mounting anything. Only the blocks a listing or an
//! extraction needs are fetched; every report counts the stored bytes
//! fetched.
//!
//! The version is held for the call as an NBD export holds it (a `read`
//! lock on that version only): GC keeps its data, prune keeps it, forget
//! refuses it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alike_fs::scan::{Disk, Scan, Selector, Volume, VolumeKind};
use alike_fs::{BlockDevice, FileKind, FileSystem, FsError, TimeNs};

use crate::disk_reader::{DiskReader, StoreReader};
use crate::options::{ExtractOptions, LsOptions, VolumeChoice};
use crate::store::{Store, Version};
use crate::{Error, ErrorKind, Progress, Result};

/// A disk of a version as a block device, read from the store on demand.
struct StoreDisk {
    disk: DiskReader,
}

impl BlockDevice for StoreDisk {
    fn size(&self) -> u64 {
        self.disk.record.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> alike_fs::Result<()> {
        alike_fs::check_range(self, offset, buf.len())?;
        self.disk.read_at(offset, buf).map(drop).map_err(|e| FsError::Device {
            device: self.disk.label.clone(),
            offset,
            len: buf.len() as u64,
            message: e.to_string(),
        })
    }

    fn describe(&self) -> String {
        format!("disk {}", self.disk.record.position)
    }
}

/// A volume found on a version's disks, as listings show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct VolumeInfo {
    /// The disk it is on (for an LV: the first disk holding its volume group).
    pub disk: u32,
    /// Its name: `disk` (a filesystem on the whole disk), a partition number
    /// (`1`, `5`), or `VG/LV` (`VG@UUID8/LV` when two volume groups share
    /// the name).
    pub name: String,
    /// `disk`, `partition` or `lv`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// A partition's first byte on its disk.
    pub start: Option<u64>,
    /// A partition's type: a GPT type GUID or an MBR type byte (`0x83`).
    pub partition_type: Option<String>,
    /// That type for people (`Linux filesystem`, `EFI System`).
    pub partition_type_name: Option<String>,
    /// A GPT partition's name.
    pub partition_name: Option<String>,
    /// A GPT partition's unique GUID.
    pub partition_uuid: Option<String>,
    /// An LV's volume group UUID.
    pub vg_uuid: Option<String>,
    /// An LV's UUID.
    pub lv_uuid: Option<String>,
    /// The filesystem found (`ext4`, `NTFS`, `FAT32`), if any.
    pub filesystem: Option<String>,
    /// The filesystem's label.
    pub label: Option<String>,
    /// The filesystem's UUID or serial.
    pub uuid: Option<String>,
    /// Why the volume could not be read, when it could not.
    pub error: Option<String>,
    /// An LVM2 physical volume (its LVs are listed as volumes of their own).
    pub lvm_pv: bool,
}

impl VolumeInfo {
    fn of(v: &Volume) -> VolumeInfo {
        let p = v.partition.as_ref();
        VolumeInfo {
            disk: v.disks.first().copied().unwrap_or(0),
            name: v.name.clone(),
            kind: v.kind.name().into(),
            size: v.size,
            start: p.map(|p| p.start),
            partition_type: p.map(|p| p.type_.clone()),
            partition_type_name: p.map(|p| p.type_name.clone()),
            partition_name: p.and_then(|p| p.name.clone()),
            partition_uuid: p.and_then(|p| p.uuid.clone()),
            vg_uuid: v.lv.as_ref().map(|l| l.vg_uuid.clone()),
            lv_uuid: v.lv.as_ref().map(|l| l.lv_uuid.clone()),
            filesystem: v.fs.as_ref().map(|f| f.type_name()),
            label: v.fs.as_ref().and_then(|f| f.label()),
            uuid: v.fs.as_ref().and_then(|f| f.uuid()),
            error: v.error.clone(),
            lvm_pv: v.lvm_pv,
        }
    }
}

/// One file, directory or link in a listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct FileEntry {
    /// The name (a name that is not UTF-8 shows U+FFFD where it is not).
    pub name: String,
    /// The name's bytes in hex, when they are not UTF-8.
    pub name_hex: Option<String>,
    /// The path from the filesystem's root (`/etc/passwd`).
    pub path: String,
    /// `file`, `dir`, `symlink` or `other` (devices, FIFOs, sockets).
    pub kind: String,
    /// Bytes of data (of a symlink: of its target).
    pub size: u64,
    /// Permission bits (`0o755` is 493), where the filesystem records them.
    pub mode: Option<u32>,
    /// Owner, where recorded.
    pub uid: Option<u32>,
    /// Group, where recorded.
    pub gid: Option<u32>,
    /// Hard links to it.
    pub nlink: u32,
    /// Last modification, nanoseconds since the epoch.
    pub mtime_ns: Option<i64>,
    /// Last access, nanoseconds since the epoch.
    pub atime_ns: Option<i64>,
    /// Creation, nanoseconds since the epoch, where recorded.
    pub btime_ns: Option<i64>,
    /// A symlink's target (a link is never followed).
    pub target: Option<String>,
    /// Its identifier in the filesystem (an inode or MFT record number).
    pub id: u64,
    /// Why its data cannot be extracted, when it cannot.
    pub unreadable: Option<String>,
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        _ => "other",
    }
}

impl FileEntry {
    fn of(fs: &dyn FileSystem, path: String, name: &[u8], m: &alike_fs::Metadata) -> FileEntry {
        let text = String::from_utf8_lossy(name).into_owned();
        let utf8 = std::str::from_utf8(name).is_ok();
        let target = (m.kind == FileKind::Symlink)
            .then(|| fs.read_link(m.id).ok())
            .flatten()
            .map(|t| String::from_utf8_lossy(&t).into_owned());
        let ns = |t: Option<TimeNs>| t;
        FileEntry {
            name: text,
            name_hex: (!utf8).then(|| name.iter().map(|b| format!("{b:02x}")).collect()),
            path,
            kind: kind_name(m.kind).into(),
            size: m.size,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            nlink: m.nlink,
            mtime_ns: ns(m.mtime),
            atime_ns: ns(m.atime),
            btime_ns: ns(m.btime),
            target,
            id: m.id.0,
            unreadable: m.unreadable.clone(),
        }
    }
}

/// What [`Store::ls`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Listing {
    /// The version.
    pub id: String,
    /// Its VM.
    pub vm: String,
    /// Without a path: the volumes found (of the chosen disk, or of every
    /// disk). With one: empty.
    pub volumes: Vec<VolumeInfo>,
    /// With a path: the volume read.
    pub volume: Option<VolumeInfo>,
    /// With a path: the path, normalised (`/etc`).
    pub path: Option<String>,
    /// With a path: a directory's entries by name, or the one file or link
    /// the path names.
    pub entries: Vec<FileEntry>,
    /// What was odd: a damaged partition table read from its backup, a
    /// journal replayed, entries skipped for their names.
    pub warnings: Vec<String>,
    /// Stored bytes fetched from the store for this listing.
    pub store_bytes_read: u64,
}

/// One entry that could not be extracted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ExtractFailure {
    /// Its path in the filesystem.
    pub path: String,
    /// The kind of failure, as [`ErrorKind::name`] spells it.
    pub kind: String,
    /// What went wrong.
    pub error: String,
}

/// What [`Store::extract`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ExtractReport {
    /// The version.
    pub id: String,
    /// Its VM.
    pub vm: String,
    /// The volume read.
    pub volume: VolumeInfo,
    /// The target directory.
    pub to: PathBuf,
    /// Regular files written (hard links not counted).
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links made to files extracted earlier in the call.
    pub hard_links: u64,
    /// Devices, FIFOs, sockets: listed, never extracted.
    pub skipped: u64,
    /// Directory entries skipped because their names hold `/` or NUL.
    pub skipped_names: u64,
    /// Bytes of file data written (holes not counted).
    pub bytes: u64,
    /// Stored bytes fetched from the store.
    pub store_bytes_read: u64,
    /// Entries that failed, by path; the rest extracted.
    pub failures: Vec<ExtractFailure>,
    /// What was odd (see [`Listing::warnings`]).
    pub warnings: Vec<String>,
    /// Wall time.
    #[serde(rename = "elapsed_seconds", serialize_with = "crate::store::seconds")]
    pub elapsed: Duration,
}

/// A version's disks opened for file restore: the hold, the shared reader
/// and the scan.
struct Opened {
    _hold: alike_ads::LockGuard,
    reader: Arc<StoreReader>,
    scan: Scan,
}

impl Store {
    fn open_files(&self, version: &Version, cache_bytes: u64) -> Result<Opened> {
        let hold = self.hold_version(version)?;
        let reader = Arc::new(StoreReader::new(self.repo_arc(), cache_bytes));
        let disks: Vec<Disk> = version
            .manifest
            .disks
            .iter()
            .map(|d| {
                let dev: Arc<dyn BlockDevice> =
                    Arc::new(StoreDisk { disk: DiskReader::new(reader.clone(), d.clone(), version) });
                Disk::new(d.position, d.label.clone(), dev)
            })
            .collect();
        if disks.is_empty() {
            return Err(Error::InvalidArgument(format!("version {} has no disks", version.short_id())));
        }
        let scan = alike_fs::scan::scan(&disks)?;
        Ok(Opened { _hold: hold, reader, scan })
    }

    /// Lists what a version's disks hold, without restoring them: with no
    /// path, the volumes (partitions, LVM2 logical volumes, a filesystem on
    /// a whole disk) and the filesystem on each; with a path, the entries of
    /// that directory (or the one file or link it names) in the chosen
    /// volume. Links are never followed.
    ///
    /// ```no_run
    /// # fn main() -> alike::Result<()> {
    /// # let store = alike::Store::builder().open("/srv/store")?;
    /// let v = store.version("latest", Some("web01"))?;
    /// for vol in store.ls(&v, &alike::LsOptions::default())?.volumes {
    ///     println!("disk {} volume {}: {:?}", vol.disk, vol.name, vol.filesystem);
    /// }
    /// let etc = store.ls(&v, &alike::LsOptions::default().partition(2).path("/etc"))?;
    /// for e in etc.entries {
    ///     println!("{} {} bytes", e.path, e.size);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Options out of range, both a partition and a volume, a disk the
    /// version lacks ([`ErrorKind::InvalidArgument`]); no such volume, no
    /// filesystem or several on the disk, a path that names nothing
    /// ([`ErrorKind::NotFound`]); a filesystem this build cannot read or a
    /// damaged one ([`ErrorKind::BadImage`]); the store failing.
    pub fn ls(&self, version: &Version, opts: &LsOptions) -> Result<Listing> {
        opts.check()?;
        self.check_can_read_data(|| format!("listing files of version {} (VM {:?})", version.short_id(), version.vm))?;
        if let Some(d) = opts.disk {
            version.disk_record(d)?;
        }
        let o = self.open_files(version, opts.cache_bytes)?;
        let mut warnings = o.scan.warnings.clone();
        let Some(path) = &opts.path else {
            let volumes = o
                .scan
                .volumes
                .iter()
                .filter(|v| opts.disk.is_none_or(|d| v.disks.contains(&d)))
                .map(|v| {
                    if let Some(fs) = &v.fs {
                        warnings.extend(fs.warnings().into_iter().map(|w| format!("volume {}: {w}", v.name)));
                    }
                    VolumeInfo::of(v)
                })
                .collect();
            return Ok(Listing {
                id: version.id.clone(),
                vm: version.vm.clone(),
                volumes,
                volume: None,
                path: None,
                entries: Vec::new(),
                warnings,
                store_bytes_read: o.reader.store_bytes(),
            });
        };
        let (vol, fs) = select(&o.scan, opts.disk, &opts.volume)?;
        warnings.extend(fs.warnings());
        let found = alike_fs::extract::lookup(fs.as_ref(), path.as_bytes())?;
        let mut entries = Vec::new();
        let skipped_before = fs.skipped_entries();
        if found.meta.kind == FileKind::Dir {
            let mut list = fs.read_dir(found.meta.id)?;
            list.sort_by(|a, b| a.name.cmp(&b.name));
            let base = if found.path == "/" { String::new() } else { found.path.clone() };
            for e in &list {
                entries.push(FileEntry::of(
                    fs.as_ref(),
                    format!("{base}/{}", String::from_utf8_lossy(&e.name)),
                    &e.name,
                    &e.meta,
                ));
            }
        } else {
            entries.push(FileEntry::of(fs.as_ref(), found.path.clone(), &found.name, &found.meta));
        }
        let skipped = fs.skipped_entries().saturating_sub(skipped_before);
        if skipped > 0 {
            warnings.push(format!("{skipped} entries skipped: their names hold '/' or NUL"));
        }
        Ok(Listing {
            id: version.id.clone(),
            vm: version.vm.clone(),
            volumes: Vec::new(),
            volume: Some(VolumeInfo::of(vol)),
            path: Some(found.path),
            entries,
            warnings,
            store_bytes_read: o.reader.store_bytes(),
        })
    }

    /// Extracts files, directories and links of a version into a directory
    /// of this machine, without restoring the disk: each path into the
    /// target as its last name (a directory with all under it; `/` as the
    /// whole filesystem). Nothing is written outside the target: names that
    /// would leave it are refused, links are restored as links and never
    /// followed, every file is created relative to its open parent
    /// directory. Hard links are restored as hard links, sparse files
    /// sparse, modes and times as recorded (owners too when run as root).
    /// Existing names in the target are refused unless
    /// [`ExtractOptions::force`]. An entry that cannot be extracted (a
    /// damaged block, an unreadable file) is listed in
    /// [`ExtractReport::failures`] and the rest go on.
    ///
    /// ```no_run
    /// # fn main() -> alike::Result<()> {
    /// # let store = alike::Store::builder().open("/srv/store")?;
    /// let v = store.version("latest", Some("web01"))?;
    /// let opts = alike::ExtractOptions::default().path("/etc/nginx").path("/var/www").to("/tmp/restored");
    /// let r = store.extract(&v, &opts)?;
    /// println!("{} files, {} bytes ({} fetched from the store)", r.files, r.bytes, r.store_bytes_read);
    /// for f in &r.failures {
    ///     eprintln!("{}: {}", f.path, f.error);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::ls`]; no path or no target ([`ErrorKind::InvalidArgument`]);
    /// the target unusable ([`ErrorKind::Io`]); cancelled; more data than
    /// [`ExtractOptions::max_bytes`] ([`ErrorKind::BadImage`]). Failures of
    /// single entries are in the report, not errors.
    pub fn extract(&self, version: &Version, opts: &ExtractOptions) -> Result<ExtractReport> {
        opts.check()?;
        self.check_can_read_data(|| {
            format!("extracting files of version {} (VM {:?})", version.short_id(), version.vm)
        })?;
        let started = Instant::now();
        if let Some(d) = opts.disk {
            version.disk_record(d)?;
        }
        let Some(to) = &opts.to else {
            return Err(Error::InvalidArgument("no target directory to extract into".into()));
        };
        let o = self.open_files(version, opts.cache_bytes)?;
        let (vol, fs) = select(&o.scan, opts.disk, &opts.volume)?;
        let mut warnings = o.scan.warnings.clone();
        warnings.extend(fs.warnings());
        let max_bytes = opts.max_bytes.unwrap_or_else(|| vol.size.saturating_mul(4).max(1 << 30));
        let cancel = opts.run.cancel.clone();
        let cancelled = move || cancel.is_cancelled();
        let progress_cb = opts.run.progress.clone();
        let progress = move |p: &alike_fs::extract::ExtractProgress| {
            if let Some(cb) = &progress_cb {
                cb(&Progress::of(alike_core::Phase::Restore, p.bytes_done, p.bytes_total));
            }
        };
        let fopts = alike_fs::extract::ExtractOptions::default()
            .force(opts.force)
            .max_bytes(max_bytes)
            .progress(&progress)
            .cancelled(&cancelled);
        let paths: Vec<&[u8]> = opts.paths.iter().map(|p| p.as_bytes()).collect();
        let done = alike_fs::extract::extract(fs.as_ref(), &paths, to, &fopts)?;
        if done.skipped_names > 0 {
            warnings.push(format!("{} entries skipped: their names hold '/' or NUL", done.skipped_names));
        }
        let failures = done
            .failures
            .into_iter()
            .map(|f| {
                // Most errors name the entry already; the path is a field of its own.
                let msg = f.error.to_string();
                let error = msg.strip_prefix(&format!("{}: ", f.path)).unwrap_or(&msg).to_string();
                ExtractFailure { kind: fs_kind(&f.error).name().into(), path: f.path, error }
            })
            .collect();
        Ok(ExtractReport {
            id: version.id.clone(),
            vm: version.vm.clone(),
            volume: VolumeInfo::of(vol),
            to: to.clone(),
            files: done.files,
            dirs: done.dirs,
            symlinks: done.symlinks,
            hard_links: done.hard_links,
            skipped: done.skipped,
            skipped_names: done.skipped_names,
            bytes: done.bytes,
            store_bytes_read: o.reader.store_bytes(),
            failures,
            warnings,
            elapsed: started.elapsed(),
        })
    }
}

/// The volume the options choose, and its filesystem.
fn select<'s>(
    scan: &'s Scan,
    disk: Option<u32>,
    choice: &VolumeChoice,
) -> Result<(&'s Volume, &'s Arc<dyn FileSystem>)> {
    let selector = match choice {
        VolumeChoice::Auto => Selector::Auto,
        VolumeChoice::Partition(n) => Selector::Partition(*n),
        VolumeChoice::Volume(s) => Selector::Volume(s.clone()),
    };
    let v = scan.select(disk.unwrap_or(0), &selector)?;
    match &v.fs {
        Some(fs) => Ok((v, fs)),
        None => Err(Error::Fs(match &v.error {
            Some(e) => FsError::Unsupported { fs: "volume", what: format!("volume {}: {e}", v.name) },
            None if v.kind == VolumeKind::Partition && v.lvm_pv => FsError::NotRecognised(format!(
                "partition {} is an LVM2 physical volume: choose one of its logical volumes (VG/LV)",
                v.name
            )),
            None => FsError::NotRecognised(format!("no filesystem recognised on volume {}", v.name)),
        })),
    }
}

/// The kind of an `alike-fs` error.
pub(crate) fn fs_kind(e: &FsError) -> ErrorKind {
    match e {
        // The store could not deliver or verify a block.
        FsError::Device { .. } => ErrorKind::Corruption,
        FsError::NotFound(_) | FsError::NotADirectory(_) => ErrorKind::NotFound,
        FsError::Io { .. } => ErrorKind::Io,
        FsError::Exists { .. } => ErrorKind::AlreadyExists,
        FsError::Cancelled => ErrorKind::Cancelled,
        // The guest's structures: malformed, unsupported, unreadable, absurd,
        // a name that cannot be created.
        _ => ErrorKind::BadImage,
    }
}
