//! Replicas (folders of VHDX files): replicate into one (both ends of the
//! protocol in this process), list its points, export a point's disk.

use std::ffi::{CString, c_char, c_void};

use alike::{ReplicaExportOptions, ReplicateOptions};

use crate::options::{Run, alike_cancel, alike_progress_fn, with_run};
use crate::{FfiResult, alike_result, arg_str, guard, invalid, need, put};

/// A replica of a VM kept as a folder of VHDX files. Safe to use from
/// several threads at once (one replication at a time writes it; others
/// fail with ALIKE_ERR_BUSY).
pub struct alike_replica {
    inner: alike::Replica,
}

/// What a replication did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct alike_replicate_report {
    /// The new point's id.
    pub point: u64,
    /// Its time, milliseconds since 1970-01-01 UTC.
    pub time_ms: u64,
    /// Bytes read from the images.
    pub read_bytes: u64,
    /// Bytes of the chunks the replica lacked.
    pub needed_bytes: u64,
    /// Bytes the sender handed the receiver, as they would cross a link
    /// (compressed, framed).
    pub sent_bytes: u64,
}

/// A committed point of a replica.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct alike_replica_point {
    /// Its id.
    pub point: u64,
    /// When it was committed, milliseconds since 1970-01-01 UTC.
    pub time_ms: u64,
    /// How many disks it holds.
    pub disk_count: u32,
}

/// A replica's points, oldest first.
pub struct alike_replica_point_list {
    items: Vec<alike_replica_point>,
    json: CString,
}

impl alike_replica_point_list {
    /// The list of `points`, with its JSON in the schema of `alike replica list --json`.
    pub(crate) fn new(points: &[alike::ReplicaPoint]) -> alike_replica_point_list {
        let items = points
            .iter()
            .map(|p| alike_replica_point { point: p.point, time_ms: p.time_ms, disk_count: p.disks.len() as u32 })
            .collect();
        let json =
            CString::new(serde_json::to_string(points).unwrap_or_default().replace('\0', "\\0")).unwrap_or_default();
        alike_replica_point_list { items, json }
    }
}

/// # Safety
/// `r` NULL or live.
unsafe fn replica<'a>(r: *const alike_replica) -> FfiResult<&'a alike::Replica> {
    // SAFETY: NULL or live by contract.
    unsafe { r.as_ref() }.map(|r| &r.inner).ok_or_else(|| invalid("replica is NULL"))
}

/// Opens the replica in folder `dir`.
///
/// # Safety
/// `dir` NUL-terminated; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_replica_open(dir: *const c_char, out: *mut *mut alike_replica) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let r = alike::Replica::open(arg_str(dir, "dir")?)?;
        put(out, Box::into_raw(Box::new(alike_replica { inner: r })), "out")
    })
}

/// Opens the replica of VM `vm` in folder `dir`, or makes one there.
///
/// # Safety
/// Strings NUL-terminated; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_replica_open_or_create(
    dir: *const c_char,
    vm: *const c_char,
    out: *mut *mut alike_replica,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let r = alike::Replica::open_or_create(arg_str(dir, "dir")?, arg_str(vm, "vm")?)?;
        put(out, Box::into_raw(Box::new(alike_replica { inner: r })), "out")
    })
}

/// Frees a replica handle (NULL is fine).
///
/// # Safety
/// `r` NULL or from `alike_replica_open*`, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_replica_free(r: *mut alike_replica) {
    unsafe { crate::free_box(r) }
}

/// Replicates image files (raw, VHD, VHDX/AVHDX; block devices) as the
/// disks of the replica's VM into a new point, sending only the chunks the
/// replica lacks. `keep` > 0 keeps only the newest `keep` points after;
/// `bwlimit` > 0 caps the bytes per second on the (in-process) link.
/// Progress counts bytes read (ALIKE_PHASE_BACKUP). On success `*out` (if
/// not NULL) receives the report. On failure the replica is at its last point.
///
/// # Safety
/// `images` points to `image_count` NUL-terminated strings; other pointers as documented.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_replica_replicate(
    r: *const alike_replica,
    images: *const *const c_char,
    image_count: usize,
    keep: u32,
    bwlimit: u64,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out: *mut alike_replicate_report,
) -> alike_result {
    guard(|| unsafe {
        let rep = replica(r)?;
        if images.is_null() || image_count == 0 {
            return Err(invalid("images is NULL or empty: a replication needs at least one disk"));
        }
        let paths = std::slice::from_raw_parts(images, image_count)
            .iter()
            .enumerate()
            .map(|(i, p)| arg_str(*p, &format!("images[{i}]")))
            .collect::<FfiResult<Vec<&str>>>()?;
        let run = Run::new(progress, user_data, cancel);
        let mut o = with_run!(ReplicateOptions::default(), run);
        if keep > 0 {
            o = o.keep(keep as usize);
        }
        if bwlimit > 0 {
            o = o.bwlimit(bwlimit);
        }
        let rr = alike::replicate_images(rep.vm(), &paths, rep, &o)?;
        if !out.is_null() {
            out.write(alike_replicate_report {
                point: rr.point,
                time_ms: rr.time_ms,
                read_bytes: rr.read_bytes,
                needed_bytes: rr.needed_bytes,
                sent_bytes: rr.sent_bytes,
            });
        }
        Ok(())
    })
}

/// The replica's committed points, oldest first; free the list.
///
/// # Safety
/// `r` live; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_replica_points(
    r: *const alike_replica,
    out: *mut *mut alike_replica_point_list,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let points = replica(r)?.points()?;
        put(out, Box::into_raw(Box::new(alike_replica_point_list::new(&points))), "out")
    })
}

/// How many points the list holds (0 for NULL).
///
/// # Safety
/// `list` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_replica_point_list_len(list: *const alike_replica_point_list) -> usize {
    unsafe { list.as_ref() }.map_or(0, |l| l.items.len())
}

/// Point `i` of the list (oldest first) into `*out`.
///
/// # Safety
/// `list` live; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_replica_point_list_get(
    list: *const alike_replica_point_list,
    i: usize,
    out: *mut alike_replica_point,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let l = list.as_ref().ok_or_else(|| invalid("list is NULL"))?;
        let p = l.items.get(i).ok_or_else(|| invalid(format!("point {i} of a list of {}", l.items.len())))?;
        put(out, *p, "out")
    })
}

/// The list as JSON, in the schema of `alike replica list --json` (point,
/// time, time_ms, disks), valid as long as `list`.
///
/// # Safety
/// `list` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_replica_point_list_json(list: *const alike_replica_point_list) -> *const c_char {
    unsafe { list.as_ref() }.map_or(std::ptr::null(), |l| l.json.as_ptr())
}

/// Frees a list of points (NULL is fine).
///
/// # Safety
/// `list` NULL or from `alike_replica_points`, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_replica_point_list_free(list: *mut alike_replica_point_list) {
    unsafe { crate::free_box(list) }
}

/// Writes disk `disk` of point `point` to `output` as a raw image (sparse
/// where the point holds zeroes); an existing `output` is replaced only
/// when `force`.
///
/// # Safety
/// Pointers as documented.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_replica_export(
    r: *const alike_replica,
    point: u64,
    disk: u32,
    output: *const c_char,
    force: bool,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
) -> alike_result {
    guard(|| unsafe {
        let rep = replica(r)?;
        let output = arg_str(output, "output")?;
        let run = Run::new(progress, user_data, cancel);
        let mut ro = alike::RunOptions::default();
        ro.cancel = run.cancel.clone();
        if let Some(p) = run.progress() {
            ro.progress = Some(std::sync::Arc::new(p));
        }
        let mut o = ReplicaExportOptions::default();
        o.force(force).run(ro);
        rep.export(point, disk as usize, std::path::Path::new(output), &o)?;
        Ok(())
    })
}
