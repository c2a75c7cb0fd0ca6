//! [`XenDisk`]: a snapshot VDI as an [`alike_core::DiskSource`], read
//! through XAPI's NBD export or `/export_raw_vdi`, with CBT change tokens.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use alike_core::{CancelToken, DiskSource};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{PoolError, PoolResult};
use crate::nbd::NbdDisk;
use crate::vhd::StreamReader;
use crate::xapi::{ChangedBlocks, Client, ExportFormat, NbdInfo};

/// The largest VDI XAPI exports as a VHD (2040 GiB, `max_vhd_size`).
pub(crate) const MAX_VHD_EXPORT: u64 = 2040 << 30;

/// How a snapshot VDI's data is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DiskTransport {
    /// XAPI's NBD export (`VDI.get_nbd_info`): random reads of just the blocks needed.
    Nbd,
    /// `GET /export_raw_vdi` into a local spool file: a VHD of the allocated
    /// blocks for a full read, a differencing VHD against the previous
    /// snapshot for an incremental.
    Export,
}

impl DiskTransport {
    /// `nbd` or `export`.
    pub fn name(self) -> &'static str {
        match self {
            DiskTransport::Nbd => "nbd",
            DiskTransport::Export => "export",
        }
    }
}

/// The change token of a snapshot VDI (JSON; stored hex in the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Token {
    /// Token layout (1).
    pub(crate) xen_cbt: u32,
    /// The VM's uuid.
    pub(crate) vm: String,
    /// The VM's VDI (the disk) uuid.
    pub(crate) vdi: String,
    /// The snapshot VDI read by that backup.
    pub(crate) snapshot_vdi: String,
    /// The snapshot VM.
    pub(crate) snapshot_vm: String,
}

impl Token {
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub(crate) fn decode(b: &[u8]) -> Option<Token> {
        serde_json::from_slice::<Token>(b).ok().filter(|t| t.xen_cbt == 1)
    }
}

/// Sorted, disjoint byte ranges.
type Extents = Vec<Range<u64>>;

/// What the export path has downloaded.
struct Spool {
    file: Arc<File>,
    /// Byte ranges holding data, sorted, merged.
    extents: Vec<Range<u64>>,
    /// Only the blocks that differ from a base (a differencing VHD).
    delta: bool,
}

/// Where the bytes come from, per transport.
enum Reader {
    Nbd { info: NbdInfo, connections: usize, disk: Mutex<Option<Arc<NbdDisk>>> },
    Export { spool_dir: PathBuf, delta_base: Option<String>, spool: Mutex<Option<Spool>> },
}

/// A snapshot VDI of a backup as an [`alike_core::DiskSource`].
///
/// - `read_at`: NBD (a pool of connections, opened on the first read so
///   that `VDI.list_changed_blocks`, which XAPI refuses on an attached VDI,
///   is asked first), or the export spool (downloaded on first need).
/// - `change_token`: the VM, VDI and snapshot VDI uuids (JSON).
/// - `changed_ranges(since)`: `VDI.list_changed_blocks(previous snapshot,
///   this snapshot)` → 64 KiB ranges (NBD), or the blocks of a delta VHD
///   export against the previous snapshot (export). When that is not
///   possible, an error ([`PoolError::ChangesUnknown`] inside
///   `alike_core::Error::Seam`) that says why: the engine then reads the
///   whole disk and records the text as the disk's fallback reason.
pub struct XenDisk<'p> {
    client: &'p Client,
    label: String,
    position: u32,
    size: u64,
    vdi_uuid: String,
    snap_ref: String,
    snap_uuid: String,
    token: Token,
    reader: Reader,
    cancel: CancelToken,
    wire_bytes: Arc<AtomicU64>,
    changes: Mutex<Option<String>>,
}

impl std::fmt::Debug for XenDisk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenDisk")
            .field("label", &self.label)
            .field("position", &self.position)
            .field("size", &self.size)
            .field("snapshot_vdi", &self.snap_uuid)
            .field("transport", &self.transport())
            .finish_non_exhaustive()
    }
}

/// What [`XenDisk::new`] needs.
pub(crate) struct DiskSpec {
    pub(crate) label: String,
    pub(crate) position: u32,
    pub(crate) size: u64,
    pub(crate) vdi_uuid: String,
    pub(crate) snap_ref: String,
    pub(crate) snap_uuid: String,
    pub(crate) token: Token,
    pub(crate) nbd: Option<(NbdInfo, usize)>,
    pub(crate) spool_dir: PathBuf,
    /// The previous backup's token for this position, if any.
    pub(crate) previous: Option<Token>,
    pub(crate) cancel: CancelToken,
}

impl<'p> XenDisk<'p> {
    pub(crate) fn new(client: &'p Client, s: DiskSpec) -> XenDisk<'p> {
        let reader = match s.nbd {
            Some((info, connections)) => Reader::Nbd { info, connections, disk: Mutex::new(None) },
            None => Reader::Export {
                spool_dir: s.spool_dir,
                delta_base: s.previous.filter(|p| p.vdi == s.vdi_uuid).map(|p| p.snapshot_vdi),
                spool: Mutex::new(None),
            },
        };
        XenDisk {
            client,
            label: s.label,
            position: s.position,
            size: s.size,
            vdi_uuid: s.vdi_uuid,
            snap_ref: s.snap_ref,
            snap_uuid: s.snap_uuid,
            token: s.token,
            reader,
            cancel: s.cancel,
            wire_bytes: Arc::new(AtomicU64::new(0)),
            changes: Mutex::new(None),
        }
    }

    /// The disk's position in the VM (by `userdevice`).
    pub fn position(&self) -> u32 {
        self.position
    }
    /// The VM's VDI (the disk) uuid.
    pub fn vdi_uuid(&self) -> &str {
        &self.vdi_uuid
    }
    /// The snapshot VDI read.
    pub fn snapshot_vdi_uuid(&self) -> &str {
        &self.snap_uuid
    }
    /// How it is read.
    pub fn transport(&self) -> DiskTransport {
        match self.reader {
            Reader::Nbd { .. } => DiskTransport::Nbd,
            Reader::Export { .. } => DiskTransport::Export,
        }
    }
    /// Bytes received from the pool so far: NBD read replies, or export
    /// bodies (VHD framing included).
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes.load(Ordering::Relaxed)
    }
    /// How the changes since the previous backup were found ("CBT: 12
    /// blocks of 64 KiB changed"), or why they could not be, once asked.
    pub fn changes(&self) -> Option<String> {
        lock(&self.changes).clone()
    }

    fn note(&self, s: String) {
        *lock(&self.changes) = Some(s);
    }

    fn unknown(&self, reason: String, source: Option<Box<crate::Error>>) -> PoolError {
        let e = PoolError::ChangesUnknown { disk: self.label.clone(), reason, error: source };
        tracing::warn!(disk = %self.label, error = %e, "CBT: falling back to a full read of the disk");
        self.note(e.to_string());
        e
    }

    /// The changed byte ranges since the backup that left `since`.
    fn changed(&self, since: &[u8]) -> PoolResult<Vec<Range<u64>>> {
        let Some(prev) = Token::decode(since) else {
            return Err(self
                .unknown("the previous version's change token is not one of a XenServer/XCP-ng backup".into(), None));
        };
        if prev.vdi != self.vdi_uuid {
            return Err(self.unknown(
                format!(
                    "this disk was VDI {} at the previous backup and is VDI {} now (replaced, or migrated to another SR)",
                    prev.vdi, self.vdi_uuid
                ),
                None,
            ));
        }
        if let Reader::Export { spool, .. } = &self.reader {
            // Data not downloaded yet: a delta export against the previous
            // snapshot gives both the changes and their data.
            let have_full = lock(spool).as_ref().is_some_and(|s| !s.delta);
            if !have_full {
                return self.delta_export(&prev.snapshot_vdi);
            }
        }
        let from = match self.client.call("VDI.get_by_uuid", &[json!(prev.snapshot_vdi)]) {
            Ok(serde_json::Value::String(r)) => r,
            Ok(other) => return Err(self.unknown(format!("VDI.get_by_uuid answered {other}"), None)),
            Err(e) => {
                let why = if e.xapi_code() == Some("UUID_INVALID") {
                    format!("the previous snapshot VDI {} is gone: {e}", prev.snapshot_vdi)
                } else {
                    format!("looking up the previous snapshot VDI {}: {e}", prev.snapshot_vdi)
                };
                return Err(self.unknown(why, Some(Box::new(e))));
            }
        };
        let cb = match self.client.vdi_list_changed_blocks(&from, &self.snap_ref) {
            Ok(cb) => cb,
            Err(e) => {
                let why = format!(
                    "VDI.list_changed_blocks({}, {}) failed — the CBT chain is broken (CBT disabled or its log lost since the previous backup?): {e}",
                    prev.snapshot_vdi, self.snap_uuid
                );
                return Err(self.unknown(why, Some(Box::new(e))));
            }
        };
        let blocks = self.size.div_ceil(ChangedBlocks::BLOCK);
        if (cb.bitmap().len() as u64) * 8 < blocks {
            return Err(self.unknown(
                format!(
                    "the CBT bitmap covers {} blocks of 64 KiB, the disk has {blocks}",
                    cb.bitmap().len() as u64 * 8
                ),
                None,
            ));
        }
        let ranges = cb.ranges(self.size);
        let n = cb.count(self.size);
        tracing::info!(disk = %self.label, blocks = n, "CBT: changed blocks since the previous snapshot");
        self.note(format!("CBT: {n} block(s) of 64 KiB changed since snapshot VDI {}", prev.snapshot_vdi));
        Ok(ranges)
    }

    /// Export path: downloads a differencing VHD against `base` into the spool.
    fn delta_export(&self, base: &str) -> PoolResult<Vec<Range<u64>>> {
        let Reader::Export { spool, spool_dir, .. } = &self.reader else {
            return Err(PoolError::InvalidArgument("not an export disk".into()));
        };
        let mut guard = lock(spool);
        let fmt = ExportFormat::VhdDelta { base: base.to_owned() };
        match self.download(spool_dir, &fmt) {
            Ok(s) => {
                let ranges = s.extents.clone();
                let bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
                self.note(format!("VHD delta against snapshot VDI {base}: {bytes} bytes differ"));
                *guard = Some(s);
                Ok(ranges)
            }
            Err(PoolError::Cancelled) => Err(PoolError::Cancelled),
            Err(e) => {
                let source = match e {
                    PoolError::Xen { error, .. } => Some(error),
                    _ => None,
                };
                let text = source.as_ref().map(ToString::to_string).unwrap_or_default();
                Err(self.unknown(
                    format!(
                        "the delta export against the previous snapshot VDI {base} failed (is its data gone?): {text}"
                    ),
                    source,
                ))
            }
        }
    }

    /// Downloads the snapshot VDI (`fmt`) into a new spool file.
    fn download(&self, dir: &Path, fmt: &ExportFormat) -> PoolResult<Spool> {
        let what = || format!("exporting snapshot VDI {} ({})", self.snap_uuid, self.label);
        let xen = |source: crate::Error| PoolError::Xen { context: what(), error: Box::new(source) };
        let file = spool_file(dir).map_err(|e| xen(crate::Error::Io { path: dir.to_owned(), source: e }))?;
        file.set_len(self.size).map_err(|e| xen(crate::Error::Io { path: dir.to_owned(), source: e }))?;
        let stream = self.client.export_raw_vdi(&self.snap_ref, fmt).map_err(xen)?;
        let counted = Counted { inner: stream, n: Arc::clone(&self.wire_bytes) };
        let mut extents: Vec<Range<u64>> = Vec::new();
        let mut put = |off: u64, data: &[u8]| -> PoolResult<()> {
            if off + data.len() as u64 > self.size {
                return Err(xen(crate::Error::InvalidArgument(format!(
                    "export holds data at {off}+{} past the disk's {} bytes",
                    data.len(),
                    self.size
                ))));
            }
            file.write_all_at(data, off).map_err(|e| xen(crate::Error::Io { path: dir.to_owned(), source: e }))?;
            push_range(&mut extents, off..off + data.len() as u64);
            Ok(())
        };
        let delta = matches!(fmt, ExportFormat::VhdDelta { .. });
        if *fmt == ExportFormat::Raw {
            let mut r = counted;
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            while off < self.size {
                self.check_cancel()?;
                let n = (self.size - off).min(buf.len() as u64) as usize;
                r.read_exact(&mut buf[..n])
                    .map_err(|e| xen(crate::Error::Read { file: what(), offset: off, len: n as u64, source: e }))?;
                for (i, piece) in buf[..n].chunks(ChangedBlocks::BLOCK as usize).enumerate() {
                    if !alike_core::is_zero(piece) {
                        put(off + (i as u64) * ChangedBlocks::BLOCK, piece)?;
                    }
                }
                off += n as u64;
            }
        } else {
            let mut vhd = StreamReader::with_label(counted, &what()).map_err(|e| xen(e.into()))?;
            if let Some(size) = vhd.size().filter(|s| *s != self.size) {
                return Err(xen(crate::Error::InvalidArgument(format!(
                    "the exported VHD is {size} bytes, the VDI {}",
                    self.size
                ))));
            }
            while let Some(e) = vhd.next_extent().map_err(|e| xen(e.into()))? {
                self.check_cancel()?;
                put(e.offset, &e.data)?;
            }
        }
        tracing::debug!(disk = %self.label, delta, bytes = self.wire_bytes(), "export spooled");
        Ok(Spool { file: Arc::new(file), extents, delta })
    }

    fn check_cancel(&self) -> PoolResult<()> {
        if self.cancel.is_cancelled() { Err(PoolError::Cancelled) } else { Ok(()) }
    }

    /// The format of a full export of this disk.
    fn full_format(&self) -> ExportFormat {
        if self.size <= MAX_VHD_EXPORT { ExportFormat::Vhd } else { ExportFormat::Raw }
    }

    /// Export path: the spool file, with `range` downloaded (a full export
    /// unless the delta already holds it).
    fn spooled(&self, range: Range<u64>) -> PoolResult<(Arc<File>, Option<Extents>)> {
        let Reader::Export { spool, spool_dir, .. } = &self.reader else {
            return Err(PoolError::InvalidArgument("not an export disk".into()));
        };
        let mut guard = lock(spool);
        let covered = match guard.as_ref() {
            Some(s) if !s.delta => true,
            Some(s) => covers(&s.extents, &range),
            None => false,
        };
        if !covered {
            if guard.as_ref().is_some_and(|s| s.delta) {
                tracing::warn!(disk = %self.label, offset = range.start,
                    "a read outside the delta export: downloading the whole disk");
            }
            *guard = Some(self.download(spool_dir, &self.full_format())?);
        }
        let s = guard.as_ref().expect("spool present");
        Ok((Arc::clone(&s.file), (!s.delta).then(|| s.extents.clone())))
    }

    /// NBD path: the pooled export, opened on first use.
    fn nbd(&self) -> PoolResult<Arc<NbdDisk>> {
        let Reader::Nbd { info, connections, disk } = &self.reader else {
            return Err(PoolError::InvalidArgument("not an NBD disk".into()));
        };
        let mut guard = lock(disk);
        if let Some(d) = guard.as_ref() {
            return Ok(Arc::clone(d));
        }
        let what = || format!("opening the NBD export of snapshot VDI {} ({})", self.snap_uuid, self.label);
        let mut b = info.builder().map_err(|source| PoolError::Xen { context: what(), error: Box::new(source) })?;
        b.connections((*connections).max(1)).label(format!("NBD export of {}", self.label));
        let d = Arc::new(b.open_disk().map_err(|source| PoolError::Xen { context: what(), error: Box::new(source) })?);
        *guard = Some(Arc::clone(&d));
        Ok(d)
    }

    /// Closes NBD connections and drops the spool (before the snapshot is released).
    pub(crate) fn close(&self) {
        match &self.reader {
            Reader::Nbd { disk, .. } => drop(lock(disk).take()),
            Reader::Export { spool, .. } => drop(lock(spool).take()),
        }
    }

    fn source_err(&self, offset: u64, e: PoolError) -> alike_core::Error {
        match e {
            PoolError::Cancelled => alike_core::Error::Cancelled,
            e => alike_core::Error::SourceRead { disk: self.label.clone(), offset, source: io::Error::other(e) },
        }
    }
}

impl DiskSource for XenDisk<'_> {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn allocated_ranges(&self) -> alike_core::Result<Vec<Range<u64>>> {
        match &self.reader {
            // xapi-nbd has no BLOCK_STATUS: every block may hold data.
            Reader::Nbd { .. } => Ok(whole(self.size)),
            Reader::Export { delta_base, spool, .. } => {
                // An incremental is decided by `changed_ranges` (a delta
                // export); until then nothing is downloaded.
                if delta_base.is_some() && lock(spool).is_none() {
                    return Ok(whole(self.size));
                }
                match self.spooled(0..0) {
                    Ok((_, Some(extents))) => Ok(extents),
                    Ok((_, None)) => Ok(whole(self.size)),
                    Err(e) => Err(self.source_err(0, e)),
                }
            }
        }
    }

    fn change_token(&self) -> Option<Vec<u8>> {
        Some(self.token.encode())
    }

    fn changed_ranges(&self, since: &[u8]) -> alike_core::Result<Option<Vec<Range<u64>>>> {
        match self.changed(since) {
            Ok(r) => Ok(Some(r)),
            Err(PoolError::Cancelled) => Err(alike_core::Error::Cancelled),
            Err(e) => Err(alike_core::Error::seam(e)),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> alike_core::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|e| *e <= self.size);
        if end.is_none() {
            let e = PoolError::InvalidArgument(format!("read of {} bytes at {offset} past the end", buf.len()));
            return Err(self.source_err(offset, e));
        }
        match &self.reader {
            Reader::Nbd { .. } => {
                let d = self.nbd().map_err(|e| self.source_err(offset, e))?;
                d.read(offset, buf).map_err(|e| alike_core::Error::SourceRead {
                    disk: self.label.clone(),
                    offset,
                    source: e.into_io(),
                })?;
                self.wire_bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Reader::Export { .. } => {
                let (file, _) =
                    self.spooled(offset..offset + buf.len() as u64).map_err(|e| self.source_err(offset, e))?;
                file.read_exact_at(buf, offset).map_err(|source| alike_core::Error::SourceRead {
                    disk: self.label.clone(),
                    offset,
                    source,
                })
            }
        }
    }
}

// A disk that is all data is one range; `vec![0..size]` is meant.
#[allow(clippy::single_range_in_vec_init)]
fn whole(size: u64) -> Vec<Range<u64>> {
    vec![0..size]
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds `r` to sorted, disjoint ranges, merging what touches.
fn push_range(out: &mut Vec<Range<u64>>, r: Range<u64>) {
    if r.is_empty() {
        return;
    }
    match out.last_mut() {
        // Extents arrive in BAT order, which is nearly always ascending.
        Some(last) if r.start >= last.start && r.start <= last.end => last.end = last.end.max(r.end),
        Some(last) if r.start > last.end => out.push(r),
        None => out.push(r),
        Some(_) => {
            out.push(r);
            out.sort_by_key(|r| r.start);
            let mut merged: Vec<Range<u64>> = Vec::with_capacity(out.len());
            for r in out.drain(..) {
                match merged.last_mut() {
                    Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
                    _ => merged.push(r),
                }
            }
            *out = merged;
        }
    }
}

/// Whether sorted, disjoint `extents` cover `r`.
fn covers(extents: &[Range<u64>], r: &Range<u64>) -> bool {
    if r.is_empty() {
        return true;
    }
    let i = extents.partition_point(|e| e.end <= r.start);
    extents.get(i).is_some_and(|e| e.start <= r.start && e.end >= r.end)
}

/// A new spool file in `dir`, unlinked at once (its space goes with the handle).
fn spool_file(dir: &Path) -> io::Result<File> {
    static N: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(".alike-xen-spool-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let f = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_others() {
        let t =
            Token { xen_cbt: 1, vm: "v".into(), vdi: "d".into(), snapshot_vdi: "s".into(), snapshot_vm: "sv".into() };
        assert_eq!(Token::decode(&t.encode()), Some(t));
        assert_eq!(Token::decode(b"alike-version:x:y:0"), None);
        assert_eq!(Token::decode(br#"{"xen_cbt":2,"vm":"","vdi":"","snapshot_vdi":"","snapshot_vm":""}"#), None);
    }

    #[test]
    fn ranges_merge_and_cover() {
        let mut v = Vec::new();
        push_range(&mut v, 0..10);
        push_range(&mut v, 10..20);
        push_range(&mut v, 30..40);
        push_range(&mut v, 5..8);
        assert_eq!(v, vec![0..20, 30..40]);
        push_range(&mut v, 25..26);
        assert_eq!(v, vec![0..20, 25..26, 30..40]);
        assert!(covers(&v, &(2..20)) && covers(&v, &(30..31)) && !covers(&v, &(19..21)) && !covers(&v, &(40..41)));
        assert!(covers(&v, &(50..50)));
    }
}
