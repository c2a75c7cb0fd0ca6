//! [`VhdxSource`]: a VHDX file or AVHDX chain as an [`alike_core::DiskSource`].

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{Result, VhdxError};
use super::files::{Files, LocalFiles};
use super::format::*;
use super::image::Layer;

/// Prefix of the change tokens a [`VhdxSource`] hands out.
pub const CHANGE_TOKEN_PREFIX: &[u8] = b"vhdx-dwg:";

/// Deepest parent chain opened by default.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// How [`VhdxSource::open_with`] finds parents.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Extra folders searched for a parent's file name when the locator's
    /// paths do not lead to it (e.g. where Windows paths were copied to).
    pub search_dirs: Vec<PathBuf>,
    /// Most files in a chain, the top one included.
    pub max_depth: usize,
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        OpenOptions { search_dirs: Vec::new(), max_depth: DEFAULT_MAX_DEPTH }
    }
}

impl OpenOptions {
    /// Adds a folder to search for parents by file name.
    pub fn search_dir(&mut self, dir: impl Into<PathBuf>) -> &mut OpenOptions {
        self.search_dirs.push(dir.into());
        self
    }
    /// Sets the chain depth limit.
    pub fn max_depth(&mut self, depth: usize) -> &mut OpenOptions {
        self.max_depth = depth.max(1);
        self
    }
}

/// What one file of a chain is, for reports and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerInfo {
    /// The file.
    pub path: PathBuf,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Payload block size in bytes.
    pub block_size: u64,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size (512 or 4096).
    pub physical_sector_size: u32,
    /// Whether this file is a differencing disk.
    pub has_parent: bool,
    /// Whether the file is fixed (LeaveBlocksAllocated).
    pub fixed: bool,
    /// The current header's DataWriteGuid.
    pub data_write_guid: Guid,
    /// The current header's FileWriteGuid.
    pub file_write_guid: Guid,
    /// The page 83 (SCSI identity) GUID.
    pub page83: Guid,
    /// The parent locator, for differencing files.
    pub parent_locator: Option<ParentLocator>,
    /// Log entries replayed in memory when the file was opened.
    pub log_entries_replayed: usize,
}

/// A VHDX file, or a chain of differencing AVHDX files down to their base,
/// opened read-only. Reads are positional and lock-free (`pread`), so any
/// number of threads can read at once; the log, if any, is replayed in
/// memory and the files are never written.
#[derive(Debug)]
pub struct VhdxSource {
    /// Index 0 is the top (newest) file, the last one the base.
    layers: Vec<Layer>,
    size: u64,
    label: String,
}

/// Appends `r` to sorted `out`, merging with the last range when they touch.
fn push_range(out: &mut Vec<Range<u64>>, r: Range<u64>) {
    if r.start >= r.end {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.end >= r.start {
            last.end = last.end.max(r.end);
            return;
        }
    }
    out.push(r);
}

fn merge(mut v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    v.sort_by_key(|r| r.start);
    let mut out = Vec::with_capacity(v.len());
    for r in v {
        push_range(&mut out, r);
    }
    out
}

/// Turns a Windows path from a locator into a relative POSIX path, or `None`.
fn windows_relative(p: &str) -> Option<PathBuf> {
    let p = p.trim();
    if p.is_empty() || p.starts_with('\\') || p.starts_with('/') || p.as_bytes().get(1) == Some(&b':') {
        return None;
    }
    Some(p.split(['\\', '/']).filter(|c| !c.is_empty() && *c != ".").collect())
}

/// Maps an absolute Windows path to a POSIX one where that makes sense:
/// `\\?\` and `\\.\` prefixes are dropped; a path with no drive letter
/// (`\srv\vm\a.vhdx`, what our writer records on Linux) becomes `/srv/vm/a.vhdx`.
/// Drive-letter, UNC and volume-GUID paths have no POSIX meaning: `None`.
fn windows_absolute(p: &str) -> Option<PathBuf> {
    let p = p.trim();
    let p = p.strip_prefix("\\\\?\\").or_else(|| p.strip_prefix("\\\\.\\")).unwrap_or(p);
    if p.starts_with("\\\\") || p.as_bytes().get(1) == Some(&b':') || p.starts_with("Volume{") {
        return None;
    }
    let rest = p.strip_prefix('\\').or_else(|| p.strip_prefix('/'))?;
    let mut out = PathBuf::from("/");
    out.extend(rest.split(['\\', '/']).filter(|c| !c.is_empty() && *c != "."));
    Some(out)
}

fn file_name_of(p: &str) -> Option<&str> {
    p.rsplit(['\\', '/']).next().filter(|n| !n.is_empty() && *n != "." && *n != "..")
}

/// Candidate paths for a child's parent, in the order tried (MS-VHDX:
/// relative_path, volume_path, absolute_win32_path), then the parent's file
/// name beside the child and in each search folder.
fn parent_candidates(child: &Path, loc: &ParentLocator, opts: &OpenOptions) -> Vec<PathBuf> {
    let dir = child.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let mut out: Vec<PathBuf> = Vec::new();
    let mut add = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    let keys = ["relative_path", "volume_path", "absolute_win32_path"];
    if let Some(rel) = loc.get("relative_path").and_then(windows_relative) {
        add(dir.join(rel));
    }
    for k in &keys[1..] {
        if let Some(abs) = loc.get(k).and_then(windows_absolute) {
            add(abs);
        }
    }
    for k in keys {
        if let Some(name) = loc.get(k).and_then(file_name_of) {
            add(dir.join(name));
            for d in &opts.search_dirs {
                add(d.join(name));
            }
        }
    }
    out
}

fn linkages(loc: &ParentLocator) -> Vec<Guid> {
    ["parent_linkage", "parent_linkage2"].iter().filter_map(|k| loc.get(k).and_then(Guid::parse)).collect()
}

impl VhdxSource {
    /// Opens a VHDX or AVHDX file and, for a differencing file, its chain of
    /// parents (see [`OpenOptions`] and the module docs for how parents are found).
    ///
    /// # Errors
    /// [`VhdxError`] naming the file and what is wrong: not a VHDX file, no
    /// valid header, a CRC mismatch, an unknown required region or metadata
    /// item, a block size not allowed, a BAT entry past the end of the file,
    /// a log that cannot be replayed, a parent not found (with the paths
    /// tried), a parent linkage mismatch, a loop or a chain too deep.
    pub fn open(path: impl AsRef<Path>) -> Result<VhdxSource> {
        VhdxSource::open_with(path, &OpenOptions::default())
    }

    /// [`VhdxSource::open`] with options.
    ///
    /// # Errors
    /// As [`VhdxSource::open`].
    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<VhdxSource> {
        VhdxSource::open_chain(path.as_ref(), &LocalFiles, opts, true)
    }

    /// Opens a file and its chain of parents from `files` (an SMB share,
    /// memory…): the same rules as [`VhdxSource::open_with`], with paths in
    /// `files`' namespace. Reads go through `files`' readers, positional and
    /// from any thread.
    ///
    /// # Errors
    /// As [`VhdxSource::open`]; `files`' I/O errors as [`VhdxError::Io`].
    pub fn open_in(path: impl AsRef<Path>, files: &dyn Files, opts: &OpenOptions) -> Result<VhdxSource> {
        VhdxSource::open_chain(path.as_ref(), files, opts, false)
    }

    fn open_chain(path: &Path, files: &dyn Files, opts: &OpenOptions, local: bool) -> Result<VhdxSource> {
        let open = |p: &Path| if local { Layer::open(p) } else { Layer::open_in(p, files) };
        let path = path.to_owned();
        let top = open(&path)?;
        let mut seen = vec![files.identity(&path)];
        let mut layers = vec![top];
        loop {
            let child = layers.last().expect("at least one layer");
            let Some(loc) = child.parent_locator.clone() else { break };
            if layers.len() >= opts.max_depth {
                return Err(VhdxError::ChainTooDeep { file: child.path.clone(), limit: opts.max_depth });
            }
            let expect = linkages(&loc);
            if expect.is_empty() {
                return Err(malformed(&child.path, "parent locator", 0, "no valid parent_linkage GUID"));
            }
            let candidates = parent_candidates(&child.path, &loc, opts);
            let mut mismatch = None;
            let mut found = None;
            for cand in &candidates {
                let Some(real) = files.existing(cand) else { continue };
                let id = files.identity(&real);
                if id.is_some() && seen.contains(&id) {
                    return Err(VhdxError::ParentLoop { file: child.path.clone(), parent: real });
                }
                let parent = open(&real)?;
                if !expect.contains(&parent.header.data_write_guid) {
                    mismatch.get_or_insert(VhdxError::ParentLinkageMismatch {
                        file: child.path.clone(),
                        parent: real,
                        expected: expect[0],
                        found: parent.header.data_write_guid,
                    });
                    continue;
                }
                if parent.geo.logical_sector != child.geo.logical_sector {
                    return Err(malformed(
                        &child.path,
                        "parent",
                        0,
                        format!(
                            "parent {} has {}-byte sectors, the child {}-byte ones",
                            real.display(),
                            parent.geo.logical_sector,
                            child.geo.logical_sector
                        ),
                    ));
                }
                found = Some((id, parent));
                break;
            }
            match (found, mismatch) {
                (Some((id, parent)), _) => {
                    seen.push(id);
                    layers.push(parent);
                }
                (None, Some(m)) => return Err(m),
                (None, None) => return Err(VhdxError::ParentNotFound { file: child.path.clone(), tried: candidates }),
            }
        }
        Ok(VhdxSource::from_layers(layers))
    }

    /// Parses an image held in memory; a differencing image's parent reads
    /// as zeroes. Used by the fuzz target.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<VhdxSource> {
        let layer = Layer::from_bytes(PathBuf::from("<memory>"), Arc::new(bytes))?;
        Ok(VhdxSource::from_layers(vec![layer]))
    }

    fn from_layers(layers: Vec<Layer>) -> VhdxSource {
        let size = layers[0].geo.virtual_size;
        let label = layers[0].path.display().to_string();
        VhdxSource { layers, size, label }
    }

    /// The files of the chain, top first.
    pub fn layers(&self) -> Vec<LayerInfo> {
        self.layers
            .iter()
            .map(|l| LayerInfo {
                path: l.path.clone(),
                virtual_size: l.geo.virtual_size,
                block_size: l.geo.block_size,
                logical_sector_size: l.geo.logical_sector as u32,
                physical_sector_size: l.physical_sector,
                has_parent: l.geo.has_parent,
                fixed: l.leave_allocated,
                data_write_guid: l.header.data_write_guid,
                file_write_guid: l.header.file_write_guid,
                page83: l.page83,
                parent_locator: l.parent_locator.clone(),
                log_entries_replayed: l.log_entries_replayed,
            })
            .collect()
    }

    /// Reads virtual bytes of layer `i` (and below) at `off`.
    fn read_level(&self, i: usize, off: u64, buf: &mut [u8]) -> Result<()> {
        let Some(l) = self.layers.get(i) else {
            buf.fill(0); // below the base, or a zero parent
            return Ok(());
        };
        let g = l.geo;
        let inside = g.virtual_size.saturating_sub(off).min(buf.len() as u64) as usize;
        buf[inside..].fill(0); // a child larger than its parent
        let mut done = 0usize;
        while done < inside {
            let pos = off + done as u64;
            let block = pos / g.block_size;
            let within = pos % g.block_size;
            let n = ((g.block_size - within) as usize).min(inside - done);
            let piece = &mut buf[done..done + n];
            let e = l.payload(block);
            match e & BAT_STATE_MASK {
                PAYLOAD_FULLY_PRESENT => l.read((e & BAT_OFFSET_MASK) + within, piece, "payload block")?,
                PAYLOAD_PARTIALLY_PRESENT => {
                    let bits = l.block_bitmap(block)?;
                    let ss = g.logical_sector;
                    let mut p = 0usize;
                    while p < n {
                        let sector = (within + p as u64) / ss;
                        let set = bits[(sector / 8) as usize] >> (sector % 8) & 1 == 1;
                        // Extend the run of sectors with the same bit.
                        let mut end_sector = sector + 1;
                        let last_sector = (within + n as u64 - 1) / ss;
                        while end_sector <= last_sector
                            && (bits[(end_sector / 8) as usize] >> (end_sector % 8) & 1 == 1) == set
                        {
                            end_sector += 1;
                        }
                        let run_end = ((end_sector * ss - within) as usize).min(n);
                        let part = &mut piece[p..run_end];
                        if set {
                            l.read((e & BAT_OFFSET_MASK) + within + p as u64, part, "payload block")?;
                        } else {
                            self.read_level(i + 1, pos + p as u64, part)?;
                        }
                        p = run_end;
                    }
                }
                PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED if g.has_parent => self.read_level(i + 1, pos, piece)?,
                _ => piece.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Ranges of `r` whose bytes layer `i` and below may hold (allocated).
    fn resolve(&self, i: usize, r: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<()> {
        let Some(l) = self.layers.get(i) else { return Ok(()) };
        let g = l.geo;
        let end = r.end.min(g.virtual_size);
        let mut pos = r.start;
        while pos < end {
            let block = pos / g.block_size;
            let bend = ((block + 1) * g.block_size).min(end);
            let e = l.payload(block);
            match e & BAT_STATE_MASK {
                PAYLOAD_FULLY_PRESENT => push_range(out, pos..bend),
                PAYLOAD_PARTIALLY_PRESENT => {
                    for (run, set) in self.bitmap_runs(l, block, pos..bend)? {
                        if set {
                            push_range(out, run);
                        } else {
                            self.resolve(i + 1, run, out)?;
                        }
                    }
                }
                PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED if g.has_parent => self.resolve(i + 1, pos..bend, out)?,
                _ => {}
            }
            pos = bend;
        }
        Ok(())
    }

    /// Runs of equal sector-bitmap bits of `block` over the byte range `r`.
    fn bitmap_runs(&self, l: &Layer, block: u64, r: Range<u64>) -> Result<Vec<(Range<u64>, bool)>> {
        let bits = l.block_bitmap(block)?;
        let g = l.geo;
        let base = block * g.block_size;
        let ss = g.logical_sector;
        let mut out: Vec<(Range<u64>, bool)> = Vec::new();
        let mut pos = r.start;
        while pos < r.end {
            let s = (pos - base) / ss;
            let set = bits[(s / 8) as usize] >> (s % 8) & 1 == 1;
            let next = (base + (s + 1) * ss).min(r.end);
            match out.last_mut() {
                Some((run, b)) if *b == set && run.end == pos => run.end = next,
                _ => out.push((pos..next, set)),
            }
            pos = next;
        }
        Ok(out)
    }

    /// Byte ranges layer `i` itself defines: present data, and for a
    /// differencing file also ZERO/UNMAPPED blocks (they hide the parent).
    fn own_ranges(&self, i: usize) -> Result<Vec<Range<u64>>> {
        let l = &self.layers[i];
        let g = l.geo;
        let mut out = Vec::new();
        for block in 0..g.data_blocks() {
            let r = block * g.block_size..((block + 1) * g.block_size).min(g.virtual_size);
            match l.payload(block) & BAT_STATE_MASK {
                PAYLOAD_FULLY_PRESENT => push_range(&mut out, r),
                PAYLOAD_ZERO | PAYLOAD_UNMAPPED | PAYLOAD_UNMAPPED_V095 if g.has_parent => push_range(&mut out, r),
                PAYLOAD_PARTIALLY_PRESENT => {
                    for (run, set) in self.bitmap_runs(l, block, r)? {
                        if set {
                            push_range(&mut out, run);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Byte ranges present in the top file alone — for a checkpoint's AVHDX,
    /// what was written since the checkpoint (sector-bitmap precision for
    /// partially present blocks; ZERO/UNMAPPED blocks count, as they hide
    /// the parent's data). Clipped to the virtual size, sorted, disjoint.
    ///
    /// # Errors
    /// A sector bitmap cannot be read.
    pub fn child_ranges(&self) -> Result<Vec<Range<u64>>> {
        let size = self.size;
        Ok(self.own_ranges(0)?.into_iter().map(|r| r.start..r.end.min(size)).filter(|r| r.start < r.end).collect())
    }

    /// The change token of the current state: the top file's DataWriteGuid
    /// after [`CHANGE_TOKEN_PREFIX`].
    pub fn token(&self) -> Vec<u8> {
        let mut t = CHANGE_TOKEN_PREFIX.to_vec();
        t.extend_from_slice(&self.layers[0].header.data_write_guid.0);
        t
    }

    /// Ranges changed since the state named by `since` when `since` is the
    /// token of this chain's top file (nothing changed) or of one of its
    /// ancestors (the union of what the files above it hold); `None`
    /// otherwise.
    ///
    /// # Errors
    /// A sector bitmap cannot be read.
    pub fn changed_since(&self, since: &[u8]) -> Result<Option<Vec<Range<u64>>>> {
        let Some(g) = since.strip_prefix(CHANGE_TOKEN_PREFIX) else { return Ok(None) };
        let Ok(g) = <[u8; 16]>::try_from(g) else { return Ok(None) };
        let g = Guid(g);
        let Some(k) = self.layers.iter().position(|l| l.header.data_write_guid == g) else { return Ok(None) };
        let mut all = Vec::new();
        for i in 0..k {
            all.extend(self.own_ranges(i)?);
        }
        let size = self.size;
        Ok(Some(merge(all).into_iter().map(|r| r.start..r.end.min(size)).filter(|r| r.start < r.end).collect()))
    }

    /// Byte ranges of the whole chain that may hold data.
    ///
    /// # Errors
    /// A sector bitmap cannot be read.
    pub fn allocated(&self) -> Result<Vec<Range<u64>>> {
        let mut out = Vec::new();
        self.resolve(0, 0..self.size, &mut out)?;
        Ok(out)
    }

    /// Fills `buf` with the virtual disk's bytes at `offset`.
    ///
    /// # Errors
    /// [`VhdxError::ReadPastEnd`] past the end, or an I/O error.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.size) {
            return Err(VhdxError::ReadPastEnd {
                file: self.layers[0].path.clone(),
                offset,
                len: buf.len() as u64,
                size: self.size,
            });
        }
        self.read_level(0, offset, buf)
    }
}

fn src_err(disk: &str, offset: u64, e: VhdxError) -> alike_core::Error {
    alike_core::Error::SourceRead { disk: disk.to_owned(), offset, source: e.into_io() }
}

impl alike_core::DiskSource for VhdxSource {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn allocated_ranges(&self) -> alike_core::Result<Vec<Range<u64>>> {
        self.allocated().map_err(|e| src_err(&self.label, 0, e))
    }
    fn change_token(&self) -> Option<Vec<u8>> {
        Some(self.token())
    }
    fn changed_ranges(&self, since: &[u8]) -> alike_core::Result<Option<Vec<Range<u64>>>> {
        self.changed_since(since).map_err(|e| src_err(&self.label, 0, e))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        self.read_exact_at(offset, buf).map_err(|e| src_err(&self.label, offset, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_map_sensibly() {
        assert_eq!(windows_relative("..\\b\\p.vhdx"), Some(PathBuf::from("../b/p.vhdx")));
        assert_eq!(windows_relative(".\\p.vhdx"), Some(PathBuf::from("p.vhdx")));
        assert_eq!(windows_relative("C:\\p.vhdx"), None);
        assert_eq!(windows_absolute("\\\\?\\d:\\path2\\parent.vhdx"), None);
        assert_eq!(windows_absolute("\\srv\\vm\\p.vhdx"), Some(PathBuf::from("/srv/vm/p.vhdx")));
        assert_eq!(windows_absolute("\\\\?\\Volume{26A21BDA-A627-11D7-9931-806E6F6E6963}\\p.vhdx"), None);
        assert_eq!(file_name_of("\\\\?\\d:\\path2\\parent.vhdx"), Some("parent.vhdx"));
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(merge(vec![5..7, 0..2, 2..3, 6..9]), vec![0..3, 5..9]);
    }
}
