//! Path look-up and safe extraction over any [`FileSystem`].
//!
//! ## What extraction promises
//! **Nothing is created outside the target directory.** Every file,
//! directory and link is created by a `*at` call relative to an open
//! descriptor of its parent, opened with `O_NOFOLLOW | O_DIRECTORY`
//! (`rustix`), never by a path string: a symlink extracted earlier, or
//! one already in the directory, is never followed. Files are created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, so an existing name (a symlink planted
//! there included) is never written through.
//!
//! **Names refused** (each refusal is a failure naming the entry; its
//! siblings go on): the empty name, `.`, `..`, names holding `/` or NUL;
//! from NTFS and FAT also names holding `:` (an alternate data stream),
//! `\`, and the reserved device names of Windows (`CON`, `PRN`, `AUX`,
//! `NUL`, `COM0`–`COM9`, `LPT0`–`LPT9`, with any extension, any case).
//!
//! **Symlinks** are restored as links: their targets are data, written as
//! they are (an absolute target, `..` in a target, all allowed) and never
//! followed, neither by extraction nor by look-up. **Hard links** (a file
//! met again with the same [`FileId`]) are restored as hard links to the
//! first copy extracted in the same run. **Sparse files** are written
//! sparse: only the ranges [`FileSystem::data_ranges`] names are written,
//! and all-zero pieces of them are skipped too. **Modes** (where the
//! filesystem records them; else 0644 for files, 0755 for directories),
//! **mtime and atime** are set, directories' after their contents; the
//! owner too when running as root (as tar does).
//!
//! **Existing names** in the target are refused unless `force`: with it, a
//! file or symlink in the way is replaced (unlinked, then created), and an
//! existing directory is entered and merged into; a directory is never
//! removed.
//!
//! **Bounds**: directories at most [`MAX_DEPTH`] deep; a directory met
//! twice (a loop, or a hard-linked directory of a hostile image) is a
//! failure, not a second walk; at most [`MAX_HELD_ENTRIES`] directory
//! entries are held in memory along the current path; file data streams
//! through one buffer of [`BUFFER`] bytes; the bytes written in all are
//! bounded by [`ExtractOptions::max_bytes`].
//!
//! **Failures** of one entry (a damaged block, an unreadable or refused
//! file) are collected by path in [`ExtractSummary::failures`] while the
//! rest extract; a partly written file is removed. Cancellation, an
//! unusable target directory, or a path that names nothing end the whole
//! run with an error.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::{DirEntry, FileId, FileKind, FileSystem, FsError, FsKind, Metadata, Result, TimeNs};

/// The deepest directory extracted or looked up.
pub const MAX_DEPTH: usize = 256;
/// Directory entries held in memory at once along the path being
/// extracted (each level holds its directory's list while it descends).
pub const MAX_HELD_ENTRIES: usize = 4 << 20;
/// Bytes of file data read and written at a time.
pub const BUFFER: usize = 1 << 20;

/// The components of `path`, `/`-separated (empty ones and `.` dropped;
/// `..` kept, for [`lookup`] to resolve).
pub fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&c| c == b'/').filter(|c| !c.is_empty() && *c != b".").collect()
}

/// What a path names.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Found {
    /// The path, normalised (`/etc/passwd`; `/` for the root).
    pub path: String,
    /// The last component (empty for the root).
    pub name: Vec<u8>,
    /// Its metadata.
    pub meta: Metadata,
}

/// Looks `path` up from the root (`/`-separated, absolute or not; `..`
/// goes up, never above the root). Symlinks are not followed, not even in
/// the middle of a path: a path through one is [`FsError::NotADirectory`]
/// naming the link and its target.
///
/// # Errors
/// [`FsError::NotFound`], [`FsError::NotADirectory`], or what the
/// filesystem's reads fail with.
pub fn lookup(fs: &dyn FileSystem, path: &[u8]) -> Result<Found> {
    let root = fs.metadata(fs.root())?;
    // (name, metadata) from the root down.
    let mut stack: Vec<(Vec<u8>, Metadata)> = vec![(Vec::new(), root)];
    let shown = |stack: &[(Vec<u8>, Metadata)], extra: &[u8]| {
        let mut s = String::new();
        for (n, _) in &stack[1..] {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(n));
        }
        if !extra.is_empty() {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(extra));
        }
        if s.is_empty() { "/".into() } else { s }
    };
    for c in components(path) {
        if c == b".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        if stack.len() > MAX_DEPTH {
            return Err(FsError::Limit(format!("{}: deeper than {MAX_DEPTH} directories", shown(&stack, c))));
        }
        let (_, dir) = stack.last().ok_or_else(|| FsError::NotFound("/".into()))?;
        match dir.kind {
            FileKind::Dir => {}
            FileKind::Symlink => {
                let target = fs.read_link(dir.id).unwrap_or_default();
                return Err(FsError::NotADirectory(format!(
                    "{} is a symlink to {} (links are not followed)",
                    shown(&stack, b""),
                    String::from_utf8_lossy(&target)
                )));
            }
            _ => return Err(FsError::NotADirectory(shown(&stack, b""))),
        }
        let entries = fs.read_dir(dir.id)?;
        let Some(e) = entries.into_iter().find(|e| e.name == c) else {
            return Err(FsError::NotFound(shown(&stack, c)));
        };
        stack.push((e.name, e.meta));
    }
    let path = shown(&stack, b"");
    let (name, meta) = stack.pop().ok_or_else(|| FsError::NotFound("/".into()))?;
    Ok(Found { path, name, meta })
}

/// Why `name` (from a filesystem of `kind`) cannot be created, if it cannot.
pub fn refuse_name(kind: FsKind, name: &[u8]) -> Option<String> {
    if name.is_empty() {
        return Some("an empty name".into());
    }
    if name == b"." || name == b".." {
        return Some(format!("the name {:?} would leave its directory", String::from_utf8_lossy(name)));
    }
    if name.contains(&b'/') {
        return Some("a name holding '/' would leave its directory".into());
    }
    if name.contains(&0) {
        return Some("a name holding NUL".into());
    }
    if matches!(kind, FsKind::Ntfs | FsKind::Fat) {
        if name.contains(&b':') {
            return Some("a name holding ':' (an NTFS alternate data stream)".into());
        }
        if name.contains(&b'\\') {
            return Some("a name holding '\\' (a path separator on Windows)".into());
        }
        let base = name.split(|&c| c == b'.').next().unwrap_or(name);
        let mut base: Vec<u8> = base.iter().map(u8::to_ascii_uppercase).collect();
        while base.last() == Some(&b' ') {
            base.pop();
        }
        let base = base.as_slice();
        let reserved = matches!(base, b"CON" | b"PRN" | b"AUX" | b"NUL")
            || (base.len() == 4 && (base.starts_with(b"COM") || base.starts_with(b"LPT")) && base[3].is_ascii_digit());
        if reserved {
            return Some("a reserved device name of Windows".into());
        }
    }
    None
}

/// Progress of an extraction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExtractProgress {
    /// Entries (files, directories, links) done.
    pub entries_done: u64,
    /// Entries in all (counted before the first is written).
    pub entries_total: u64,
    /// Bytes of file data done (holes count as done).
    pub bytes_done: u64,
    /// Bytes of file data in all.
    pub bytes_total: u64,
}

type ProgressCb<'a> = &'a (dyn Fn(&ExtractProgress) + Sync);
type CancelCb<'a> = &'a (dyn Fn() -> bool + Sync);

/// Options of [`extract`].
///
/// ```
/// let stop = std::sync::atomic::AtomicBool::new(false);
/// let cancelled = || stop.load(std::sync::atomic::Ordering::Relaxed);
/// let opts = alike_fs::extract::ExtractOptions::default().force(true).cancelled(&cancelled);
/// # let _ = opts;
/// ```
#[derive(Clone, Copy, Default)]
#[non_exhaustive]
pub struct ExtractOptions<'a> {
    /// Replace existing files and symlinks, merge into existing directories.
    pub force: bool,
    /// The most bytes of file data written in all (`None`: no bound).
    pub max_bytes: Option<u64>,
    /// Called as entries and data are done (at most every MiB or 64 entries).
    pub progress: Option<ProgressCb<'a>>,
    /// Polled between entries and between buffers: `true` stops the run.
    pub cancelled: Option<CancelCb<'a>>,
}

impl<'a> ExtractOptions<'a> {
    /// Replace what is in the way (see the module docs).
    pub fn force(mut self, yes: bool) -> Self {
        self.force = yes;
        self
    }
    /// At most `bytes` of file data written in all.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }
    /// Progress callback.
    pub fn progress(mut self, f: ProgressCb<'a>) -> Self {
        self.progress = Some(f);
        self
    }
    /// Cancellation poll.
    pub fn cancelled(mut self, f: CancelCb<'a>) -> Self {
        self.cancelled = Some(f);
        self
    }
}

/// One entry that did not extract.
#[derive(Debug)]
#[non_exhaustive]
pub struct Failure {
    /// Its path in the filesystem (`/etc/shadow`).
    pub path: String,
    /// Why.
    pub error: FsError,
}

/// What [`extract`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ExtractSummary {
    /// Regular files written (hard links not counted).
    pub files: u64,
    /// Directories created (or merged into, with force).
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created to a file extracted earlier in the run.
    pub hard_links: u64,
    /// Devices, FIFOs, sockets and other entries that are not extracted.
    pub skipped: u64,
    /// Bytes of file data written (holes not counted).
    pub bytes: u64,
    /// Entries that failed, by path; the rest extracted.
    pub failures: Vec<Failure>,
    /// Directory entries the filesystem reader skipped because their names
    /// hold `/` or NUL.
    pub skipped_names: u64,
}

/// Extracts each of `paths` (looked up as [`lookup`] does) into the
/// directory `to` (created if missing): a file or link as `to/NAME`, a
/// directory as `to/NAME/…` with everything under it; the root (`/`) as
/// its contents directly in `to`.
///
/// ```no_run
/// # fn main() -> alike_fs::Result<()> {
/// use std::sync::Arc;
/// let disk: Arc<dyn alike_fs::BlockDevice> = Arc::new(alike_fs::FileDevice::open("disk.img")?);
/// let fs = alike_fs::ext::open(disk)?.expect("an ext filesystem");
/// let opts = alike_fs::extract::ExtractOptions::default();
/// let done = alike_fs::extract::extract(fs.as_ref(), &[b"/etc/hostname".as_slice()], "out".as_ref(), &opts)?;
/// for f in &done.failures {
///     eprintln!("{}: {}", f.path, f.error);
/// }
/// # Ok(()) }
/// ```
///
/// # Errors
/// A path that names nothing (before anything is written); a target
/// directory that cannot be created or opened ([`FsError::Io`]);
/// [`FsError::Cancelled`]; the byte bound reached ([`FsError::Limit`]).
/// Failures of single entries are in the summary, not errors.
pub fn extract(fs: &dyn FileSystem, paths: &[&[u8]], to: &Path, opts: &ExtractOptions<'_>) -> Result<ExtractSummary> {
    let found: Vec<Found> = paths.iter().map(|p| lookup(fs, p)).collect::<Result<_>>()?;
    let io = |source| FsError::Io { path: to.display().to_string(), source };
    std::fs::create_dir_all(to).map_err(io)?;
    let root_fd = rustix::fs::open(to, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io(e.into()))?;
    let mut w = Walker {
        fs,
        kind: fs.kind(),
        opts,
        root_fd,
        as_root: rustix::process::geteuid().is_root(),
        summary: ExtractSummary::default(),
        progress: ExtractProgress::default(),
        last_emit: ExtractProgress::default(),
        links: HashMap::new(),
        visited: HashSet::new(),
        held: 0,
        buf: Vec::new(),
    };
    // Count first, so progress has totals.
    let mut counted = HashSet::new();
    for f in &found {
        w.count(&f.meta, 0, &mut counted)?;
    }
    let skipped_before = fs.skipped_entries();
    for f in &found {
        w.check_cancel()?;
        let root_fd = w.root_fd.try_clone().map_err(io)?;
        if f.meta.id == fs.root() && f.meta.kind == FileKind::Dir {
            // The root: its contents straight into the target.
            w.visited.insert(f.meta.id);
            w.children(&root_fd, &f.meta, &mut Vec::new(), "", 0)?;
            continue;
        }
        let parent = f.path.rsplit_once('/').map_or("", |(p, _)| p).to_string();
        w.entry(&root_fd, &DirEntry { name: f.name.clone(), meta: f.meta.clone() }, &mut Vec::new(), &parent, 0)?;
    }
    w.emit(true);
    w.summary.skipped_names = fs.skipped_entries().saturating_sub(skipped_before);
    Ok(w.summary)
}

struct Walker<'a> {
    fs: &'a dyn FileSystem,
    kind: FsKind,
    opts: &'a ExtractOptions<'a>,
    root_fd: OwnedFd,
    as_root: bool,
    summary: ExtractSummary,
    progress: ExtractProgress,
    last_emit: ExtractProgress,
    /// Files with several links: where the first copy went (components under the target).
    links: HashMap<FileId, Vec<Vec<u8>>>,
    /// Directories entered.
    visited: HashSet<FileId>,
    /// Entries held by the directories on the current path.
    held: usize,
    buf: Vec<u8>,
}

fn errno_io(path: &str, e: Errno) -> FsError {
    FsError::Io { path: path.to_string(), source: e.into() }
}

fn timespec(t: Option<TimeNs>) -> Timespec {
    match t {
        Some(ns) => Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) as _ },
        None => Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
    }
}

fn times(m: &Metadata) -> Timestamps {
    Timestamps { last_access: timespec(m.atime), last_modification: timespec(m.mtime) }
}

fn ids(m: &Metadata) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (
        m.uid.filter(|&u| u != u32::MAX).map(rustix::fs::Uid::from_raw),
        m.gid.filter(|&g| g != u32::MAX).map(rustix::fs::Gid::from_raw),
    )
}

impl Walker<'_> {
    fn check_cancel(&self) -> Result<()> {
        match self.opts.cancelled {
            Some(f) if f() => Err(FsError::Cancelled),
            _ => Ok(()),
        }
    }

    fn emit(&mut self, force: bool) {
        let Some(cb) = self.opts.progress else { return };
        let p = self.progress;
        if force
            || p.bytes_done / (1 << 20) != self.last_emit.bytes_done / (1 << 20)
            || p.entries_done / 64 != self.last_emit.entries_done / 64
        {
            self.last_emit = p;
            cb(&p);
        }
    }

    fn fail(&mut self, path: String, error: FsError) {
        self.summary.failures.push(Failure { path, error });
    }

    /// Counts the entries and bytes under `m` (for progress totals); stops
    /// quietly where the real walk would fail.
    fn count(&mut self, m: &Metadata, depth: usize, seen: &mut HashSet<FileId>) -> Result<()> {
        self.check_cancel()?;
        self.progress.entries_total += 1;
        match m.kind {
            FileKind::File if m.nlink <= 1 || seen.insert(m.id) => self.progress.bytes_total += m.size,
            FileKind::Dir if depth < MAX_DEPTH && seen.insert(m.id) => {
                let Ok(entries) = self.fs.read_dir(m.id) else { return Ok(()) };
                if self.held + entries.len() > MAX_HELD_ENTRIES {
                    return Ok(());
                }
                self.held += entries.len();
                for e in &entries {
                    self.count(&e.meta, depth + 1, seen)?;
                }
                self.held -= entries.len();
            }
            _ => {}
        }
        Ok(())
    }

    /// The display path of `name` under `parent`.
    fn show(parent: &str, name: &[u8]) -> String {
        format!("{parent}/{}", String::from_utf8_lossy(name))
    }

    /// Extracts one entry into the directory `dir` (at `rel` under the target).
    fn entry(&mut self, dir: &OwnedFd, e: &DirEntry, rel: &mut Vec<Vec<u8>>, parent: &str, depth: usize) -> Result<()> {
        self.check_cancel()?;
        let path = Self::show(parent, &e.name);
        self.progress.entries_done += 1;
        if let Some(why) = refuse_name(self.kind, &e.name) {
            self.fail(path.clone(), FsError::Refused { path, why });
            return Ok(());
        }
        if let Some(why) = &e.meta.unreadable {
            self.fail(path.clone(), FsError::Unreadable { path, why: why.clone() });
            return Ok(());
        }
        let r = match e.meta.kind {
            FileKind::File => self.file(dir, e, rel, &path),
            FileKind::Dir => return self.directory(dir, e, rel, &path, depth),
            FileKind::Symlink => self.symlink(dir, e, &path),
            _ => {
                self.summary.skipped += 1;
                Ok(())
            }
        };
        match r {
            Err(FsError::Cancelled) => return Err(FsError::Cancelled),
            Err(FsError::Limit(why)) if why.starts_with("extraction") => return Err(FsError::Limit(why)),
            Err(err) => self.fail(path, err),
            Ok(()) => {}
        }
        self.emit(false);
        Ok(())
    }

    fn children(&mut self, fd: &OwnedFd, m: &Metadata, rel: &mut Vec<Vec<u8>>, path: &str, depth: usize) -> Result<()> {
        let entries = match self.fs.read_dir(m.id) {
            Ok(x) => x,
            Err(e) => {
                self.fail(if path.is_empty() { "/".into() } else { path.into() }, e);
                return Ok(());
            }
        };
        if self.held + entries.len() > MAX_HELD_ENTRIES {
            self.fail(
                path.into(),
                FsError::Limit(format!(
                    "{} entries, with {} held by the directories above (at most {MAX_HELD_ENTRIES})",
                    entries.len(),
                    self.held
                )),
            );
            return Ok(());
        }
        self.held += entries.len();
        let mut r = Ok(());
        for c in &entries {
            r = self.entry(fd, c, rel, path, depth + 1);
            if r.is_err() {
                break;
            }
        }
        self.held -= entries.len();
        r
    }

    fn directory(
        &mut self,
        dir: &OwnedFd,
        e: &DirEntry,
        rel: &mut Vec<Vec<u8>>,
        path: &str,
        depth: usize,
    ) -> Result<()> {
        if depth >= MAX_DEPTH {
            self.fail(path.into(), FsError::Limit(format!("deeper than {MAX_DEPTH} directories")));
            return Ok(());
        }
        if !self.visited.insert(e.meta.id) {
            self.fail(
                path.into(),
                FsError::Corrupt {
                    fs: "filesystem",
                    what: format!(
                        "directory {} is met a second time (a loop, or a hard-linked directory): not entered again",
                        e.meta.id.0
                    ),
                },
            );
            return Ok(());
        }
        let fd = match self.make_dir(dir, &e.name, path) {
            Ok(fd) => fd,
            Err(err) => {
                self.fail(path.into(), err);
                return Ok(());
            }
        };
        self.summary.dirs += 1;
        rel.push(e.name.clone());
        let r = self.children(&fd, &e.meta, rel, path, depth);
        rel.pop();
        r?;
        if let Err(err) = self.finish(&fd, &e.meta, 0o755, path) {
            self.fail(path.into(), err);
        }
        Ok(())
    }

    /// Creates directory `name` in `dir` (or, with force, enters the one
    /// there) and opens it without following links.
    fn make_dir(&self, dir: &OwnedFd, name: &[u8], path: &str) -> Result<OwnedFd> {
        let open = || {
            rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) if !self.opts.force => {
                return Err(FsError::Exists {
                    path: path.into(),
                    why: "exists in the target directory (force replaces files and merges directories)".into(),
                });
            }
            Err(Errno::EXIST) => match open() {
                Ok(fd) => return Ok(fd),
                // Not a directory (a file, a symlink): replaced.
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| errno_io(path, e))?;
                    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(|e| errno_io(path, e))?;
                }
                Err(e) => return Err(errno_io(path, e)),
            },
            Err(e) => return Err(errno_io(path, e)),
        }
        open().map_err(|e| errno_io(path, e))
    }

    /// Owner (as root), mode and times of an extracted file or directory.
    fn finish(&self, fd: &OwnedFd, m: &Metadata, default_mode: u32, path: &str) -> Result<()> {
        if self.as_root {
            let (u, g) = ids(m);
            if u.is_some() || g.is_some() {
                rustix::fs::fchown(fd, u, g).map_err(|e| errno_io(path, e))?;
            }
        }
        let mode = m.mode.map_or(default_mode, |x| x & 0o7777);
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(|e| errno_io(path, e))?;
        rustix::fs::futimens(fd, &times(m)).map_err(|e| errno_io(path, e))
    }

    /// Runs `create` for `name` in `dir`; if the name exists and force is
    /// on, unlinks what is there (never a directory) and runs it again.
    fn replacing<T>(
        &self,
        dir: &OwnedFd,
        name: &[u8],
        path: &str,
        create: impl Fn() -> rustix::io::Result<T>,
    ) -> Result<T> {
        match create() {
            Ok(x) => Ok(x),
            Err(Errno::EXIST) if self.opts.force => {
                rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| match e {
                    Errno::ISDIR | Errno::PERM => FsError::Exists {
                        path: path.into(),
                        why: "a directory of that name is in the target directory (it is never removed)".into(),
                    },
                    e => errno_io(path, e),
                })?;
                create().map_err(|e| errno_io(path, e))
            }
            Err(Errno::EXIST) => Err(FsError::Exists {
                path: path.into(),
                why: "exists in the target directory (force replaces it)".into(),
            }),
            Err(e) => Err(errno_io(path, e)),
        }
    }

    fn symlink(&mut self, dir: &OwnedFd, e: &DirEntry, path: &str) -> Result<()> {
        let target = self.fs.read_link(e.meta.id)?;
        if target.is_empty() || target.contains(&0) {
            return Err(FsError::Corrupt {
                fs: "filesystem",
                what: format!("{path}: a symlink with an empty target or a NUL in it"),
            });
        }
        self.replacing(dir, &e.name, path, || rustix::fs::symlinkat(target.as_slice(), dir, e.name.as_slice()))?;
        if self.as_root {
            let (u, g) = ids(&e.meta);
            if u.is_some() || g.is_some() {
                rustix::fs::chownat(dir, e.name.as_slice(), u, g, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|x| errno_io(path, x))?;
            }
        }
        rustix::fs::utimensat(dir, e.name.as_slice(), &times(&e.meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|x| errno_io(path, x))?;
        self.summary.symlinks += 1;
        Ok(())
    }

    /// Opens the directory holding an earlier extracted file, following no link.
    fn open_rel(&self, comps: &[Vec<u8>]) -> rustix::io::Result<OwnedFd> {
        let mut fd = self.root_fd.try_clone().map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        for c in comps {
            fd = rustix::fs::openat(
                &fd,
                c.as_slice(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
        }
        Ok(fd)
    }

    fn file(&mut self, dir: &OwnedFd, e: &DirEntry, rel: &[Vec<u8>], path: &str) -> Result<()> {
        let m = &e.meta;
        if m.nlink > 1
            && let Some(first) = self.links.get(&m.id)
            && let Some((last, dirs)) = first.split_last()
        {
            let linked = self.open_rel(dirs).and_then(|src| {
                self.replacing(dir, &e.name, path, || {
                    rustix::fs::linkat(&src, last.as_slice(), dir, e.name.as_slice(), AtFlags::empty())
                })
                .map_err(|_| Errno::IO)
            });
            if linked.is_ok() {
                // Its bytes were counted once, with the first copy.
                self.summary.hard_links += 1;
                return Ok(());
            }
            // The first copy is gone or cannot be linked to: write the data again.
        }
        let fd = self.replacing(dir, &e.name, path, || {
            rustix::fs::openat(
                dir,
                e.name.as_slice(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        })?;
        let written = self.write_data(&fd, m, path).and_then(|()| self.finish(&fd, m, 0o644, path));
        if let Err(err) = written {
            drop(fd);
            let _ = rustix::fs::unlinkat(dir, e.name.as_slice(), AtFlags::empty());
            return Err(err);
        }
        self.summary.files += 1;
        if m.nlink > 1 {
            let mut at = rel.to_vec();
            at.push(e.name.clone());
            self.links.insert(m.id, at);
        }
        Ok(())
    }

    fn write_data(&mut self, fd: &OwnedFd, m: &Metadata, path: &str) -> Result<()> {
        let ranges = self.fs.data_ranges(m.id)?;
        let data: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
        if let Some(max) = self.opts.max_bytes
            && self.summary.bytes.saturating_add(data) > max
        {
            return Err(FsError::Limit(format!(
                "extraction would write more than {max} bytes of file data (at {path}): \
                 the filesystem claims more data than it can hold"
            )));
        }
        let file = File::from(fd.try_clone().map_err(|e| FsError::Io { path: path.into(), source: e })?);
        if self.buf.len() < BUFFER {
            self.buf = vec![0u8; BUFFER];
        }
        let mut buf = std::mem::take(&mut self.buf);
        let r = (|| {
            for r in &ranges {
                let mut pos = r.start;
                while pos < r.end.min(m.size) {
                    self.check_cancel()?;
                    let n = ((r.end.min(m.size) - pos) as usize).min(BUFFER);
                    let got = self.fs.read_at(m.id, pos, &mut buf[..n])?;
                    if got != n {
                        return Err(FsError::Corrupt {
                            fs: "filesystem",
                            what: format!("{path}: {got} bytes read at offset {pos}, where {n} were expected"),
                        });
                    }
                    if buf[..n].iter().any(|&b| b != 0) {
                        file.write_all_at(&buf[..n], pos).map_err(|e| FsError::Io { path: path.into(), source: e })?;
                        self.summary.bytes += n as u64;
                    }
                    self.progress.bytes_done += n as u64;
                    pos += n as u64;
                    self.emit(false);
                }
            }
            file.set_len(m.size).map_err(|e| FsError::Io { path: path.into(), source: e })?;
            self.progress.bytes_done += m.size.saturating_sub(data);
            Ok(())
        })();
        self.buf = buf;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"../x", b"a\0b"] {
            assert!(refuse_name(FsKind::Ext, bad).is_some(), "{bad:?}");
        }
        for ok in [&b"a:b"[..], b"CON", b"...", b"a\\b", b" x"] {
            assert!(refuse_name(FsKind::Ext, ok).is_none(), "{ok:?}");
        }
        for bad in [&b"a:stream"[..], b"con", b"Con.txt", b"LPT1", b"com9.log", b"NUL ", b"a\\b"] {
            assert!(refuse_name(FsKind::Ntfs, bad).is_some(), "{bad:?}");
        }
        for ok in [&b"CONSOLE"[..], b"COM10", b"nul1", b"LPT"] {
            assert!(refuse_name(FsKind::Fat, ok).is_none(), "{ok:?}");
        }
    }

    #[test]
    fn components_drop_empty_and_dot() {
        assert_eq!(components(b"//a/./b//../c/"), vec![&b"a"[..], b"b", b"..", b"c"]);
        assert!(components(b"/").is_empty());
    }
}
