//! Versions (restore points) and lists of them, with read-only accessors.

use std::ffi::{CString, c_char};

/// A version (restore point): id, VM, time and disks.
pub struct alike_version {
    pub(crate) inner: alike::Version,
    id: CString,
    vm: CString,
    json: CString,
}

impl alike_version {
    pub(crate) fn new(v: alike::Version) -> alike_version {
        // Ids are hex and VM names come from C strings or manifests: an interior
        // NUL cannot come from a C caller, and a manifest's is escaped here.
        let c = |s: &str| CString::new(s.replace('\0', "\\0")).unwrap_or_default();
        // The facade's schema of a version, as the CLI's `versions --json` prints it.
        let json = c(&serde_json::to_string(&v).unwrap_or_default());
        alike_version { id: c(&v.id), vm: c(&v.vm), json, inner: v }
    }
}

/// A list of versions, oldest first.
pub struct alike_version_list {
    pub(crate) items: Vec<alike_version>,
}

/// The version's id (64 hex digits), valid as long as `v`.
///
/// # Safety
/// `v` is a live version.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_version_id(v: *const alike_version) -> *const c_char {
    // SAFETY: NULL or live by contract.
    unsafe { v.as_ref() }.map_or(std::ptr::null(), |v| v.id.as_ptr())
}

/// The VM's name, valid as long as `v`.
///
/// # Safety
/// `v` is a live version.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_version_vm(v: *const alike_version) -> *const c_char {
    // SAFETY: NULL or live by contract.
    unsafe { v.as_ref() }.map_or(std::ptr::null(), |v| v.vm.as_ptr())
}

/// The version as JSON, in the schema of `alike versions --json` (id, vm,
/// time, time_ms, parent, host, config, disks), valid as long as `v`.
///
/// # Safety
/// `v` is NULL or a live version.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_version_json(v: *const alike_version) -> *const c_char {
    // SAFETY: NULL or live by contract.
    unsafe { v.as_ref() }.map_or(std::ptr::null(), |v| v.json.as_ptr())
}

/// Creation time, milliseconds since 1970-01-01 UTC (0 for NULL).
///
/// # Safety
/// `v` is NULL or a live version.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_version_time_ms(v: *const alike_version) -> i64 {
    // SAFETY: NULL or live by contract.
    unsafe { v.as_ref() }.map_or(0, |v| v.inner.time_ms)
}

/// Number of disks (0 for NULL).
///
/// # Safety
/// `v` is NULL or a live version.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_version_disk_count(v: *const alike_version) -> u32 {
    // SAFETY: NULL or live by contract.
    unsafe { v.as_ref() }.map_or(0, |v| v.inner.disks.len() as u32)
}

/// Virtual size in bytes of disk `disk` (0 when out of range or NULL).
///
/// # Safety
/// `v` is NULL or a live version.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_version_disk_size(v: *const alike_version, disk: u32) -> u64 {
    // SAFETY: NULL or live by contract.
    unsafe { v.as_ref() }.and_then(|v| v.inner.disks.get(disk as usize)).map_or(0, |d| d.size)
}

/// Bytes of disk `disk` that hold data (not holes); 0 when out of range or NULL.
///
/// # Safety
/// `v` is NULL or a live version.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_version_disk_data_bytes(v: *const alike_version, disk: u32) -> u64 {
    // SAFETY: NULL or live by contract.
    unsafe { v.as_ref() }.and_then(|v| v.inner.disks.get(disk as usize)).map_or(0, |d| d.data_bytes)
}

/// Frees a version (NULL is fine). Never pass one borrowed from a list.
///
/// # Safety
/// `v` is NULL or an owned version from libalike, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_version_free(v: *mut alike_version) {
    unsafe { crate::free_box(v) }
}

/// Number of versions in the list (0 for NULL).
///
/// # Safety
/// `list` is NULL or a live list.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_version_list_len(list: *const alike_version_list) -> usize {
    // SAFETY: NULL or live by contract.
    unsafe { list.as_ref() }.map_or(0, |l| l.items.len())
}

/// Version `i` of the list, borrowed (valid as long as the list; do not
/// free it), or NULL when `i` is out of range.
///
/// # Safety
/// `list` is NULL or a live list.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_version_list_get(list: *const alike_version_list, i: usize) -> *const alike_version {
    // SAFETY: NULL or live by contract.
    unsafe { list.as_ref() }.and_then(|l| l.items.get(i)).map_or(std::ptr::null(), |v| v as *const _)
}

/// Frees a list and the versions in it (NULL is fine).
///
/// # Safety
/// `list` is NULL or from libalike, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_version_list_free(list: *mut alike_version_list) {
    unsafe { crate::free_box(list) }
}
