//! File-level restore: a version's volumes and directories as JSON, and
//! files extracted into a directory.

use std::ffi::{CString, c_char, c_void};

use crate::options::{Run, alike_cancel, alike_progress_fn, with_run};
use crate::store::{alike_store, store as store_ref};
use crate::version::alike_version;
use crate::{FfiResult, alike_result, arg_str, guard, invalid, need, opt_str, put};

/// `alike_store_extract` flags: replace existing files and links in the
/// target, merge into existing directories (a directory is never removed).
pub const ALIKE_EXTRACT_FORCE: u32 = 1;

/// A string the library allocated, as JSON text (NUL-terminated).
pub(crate) fn json_out(v: &impl serde::Serialize) -> FfiResult<*mut c_char> {
    let s = serde_json::to_string(v).map_err(|e| invalid(format!("internal: {e}")))?;
    Ok(CString::new(s).map_err(|e| invalid(format!("internal: {e}")))?.into_raw())
}

/// Sets the volume on ls or extract options: disk `disk`, partition
/// `partition` (0 = none), logical volume `volume` (NULL = none).
macro_rules! choose {
    ($o:expr, $disk:expr, $partition:expr, $volume:expr) => {{
        let mut o = $o.disk($disk);
        if $partition != 0 {
            o = o.partition($partition);
        }
        if let Some(v) = opt_str($volume, "volume")? {
            o = o.volume(v);
        }
        o
    }};
}

/// Lists, as JSON in the schema of `alike ls --json`, the volumes of
/// `version` (`path` NULL: partitions, LVM2 logical volumes, filesystems),
/// or the entries of the directory `path` (or the one file or link it
/// names) in a volume of disk `disk`: partition `partition` (Linux's
/// numbering; 0 = none), the logical volume `volume` (`"VG/LV"`; NULL =
/// none), or with neither the disk's one filesystem. `*out_json` receives
/// the text; free it with `alike_string_free`.
///
/// # Safety
/// Pointers as documented; strings NUL-terminated; `out_json` writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_store_ls_json(
    store: *const alike_store,
    version: *const alike_version,
    disk: u32,
    partition: u32,
    volume: *const c_char,
    path: *const c_char,
    out_json: *mut *mut c_char,
) -> alike_result {
    guard(|| unsafe {
        need(out_json, "out_json")?;
        let s = store_ref(store)?;
        let v = version.as_ref().ok_or_else(|| invalid("version is NULL"))?;
        let mut o = choose!(alike::LsOptions::default(), disk, partition, volume);
        if let Some(p) = opt_str(path, "path")? {
            o = o.path(p);
        }
        let l = s.ls(&v.inner, &o)?;
        put(out_json, json_out(&l)?, "out_json")
    })
}

/// Extracts the `n_paths` paths of `paths` (`"/"` is everything) of a
/// volume of `version` (chosen as in `alike_store_ls_json`) into the
/// directory `to` (created if missing), each under its last name. Nothing
/// is written outside `to`; links are restored as links and never followed;
/// hard links, sparse files, modes and times are kept. `flags`: a bitwise OR
/// of `ALIKE_EXTRACT_*`. Entries that cannot be extracted (a damaged block,
/// an existing name without `ALIKE_EXTRACT_FORCE`) do not fail the call:
/// `*out_failures` (may be NULL) receives how many, and the report (JSON in
/// the schema of `alike extract --json`, freed with `alike_string_free`;
/// `out_report` may be NULL) names them.
///
/// # Safety
/// Pointers as documented; `paths` holds `n_paths` NUL-terminated strings;
/// `cancel` NULL or live.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn alike_store_extract(
    store: *const alike_store,
    version: *const alike_version,
    disk: u32,
    partition: u32,
    volume: *const c_char,
    paths: *const *const c_char,
    n_paths: usize,
    to: *const c_char,
    flags: u32,
    progress: alike_progress_fn,
    user_data: *mut c_void,
    cancel: *const alike_cancel,
    out_failures: *mut u64,
    out_report: *mut *mut c_char,
) -> alike_result {
    guard(|| unsafe {
        let s = store_ref(store)?;
        let v = version.as_ref().ok_or_else(|| invalid("version is NULL"))?;
        let to = arg_str(to, "to")?;
        if flags & !ALIKE_EXTRACT_FORCE != 0 {
            return Err(invalid(format!("flags {flags:#x} holds bits that are not ALIKE_EXTRACT_*")));
        }
        if paths.is_null() || n_paths == 0 {
            return Err(invalid("no paths to extract"));
        }
        if n_paths > 1 << 20 {
            return Err(invalid(format!("{n_paths} paths: at most {}", 1 << 20)));
        }
        let mut list = Vec::with_capacity(n_paths);
        for i in 0..n_paths {
            list.push(arg_str(*paths.add(i), &format!("paths[{i}]"))?.to_string());
        }
        let run = Run::new(progress, user_data, cancel);
        let o = choose!(
            alike::ExtractOptions::default().paths(list).to(to).force(flags & ALIKE_EXTRACT_FORCE != 0),
            disk,
            partition,
            volume
        );
        let r = s.extract(&v.inner, &with_run!(o, run))?;
        let report = if out_report.is_null() { None } else { Some(json_out(&r)?) };
        if !out_failures.is_null() {
            out_failures.write(r.failures.len() as u64);
        }
        if let Some(j) = report {
            out_report.write(j);
        }
        Ok(())
    })
}

/// Frees a string the library returned for the caller to own (JSON from
/// `alike_store_ls_json` or `alike_store_extract`); NULL is fine.
///
/// # Safety
/// `s` is NULL or such a string, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: from CString::into_raw, freed once by contract.
        drop(unsafe { CString::from_raw(s) });
    }
}
