//! Store options (a builder), cancel tokens and progress callbacks.

use alike::Recover;
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use alike::{Phase, Progress};

use crate::{FfiResult, alike_result, arg_str, guard};

/// Options for opening or creating a store (a builder; NULL = defaults).
pub struct alike_store_options {
    pub(crate) builder: alike::StoreBuilder,
}

/// A new set of options with the defaults: encryption on, Argon2id with
/// the default cost, the cache in the user's cache folder.
#[unsafe(no_mangle)]
pub extern "C" fn alike_store_options_new() -> *mut alike_store_options {
    Box::into_raw(Box::new(alike_store_options { builder: alike::Store::builder() }))
}

/// Frees options (NULL is fine).
///
/// # Safety
/// `opts` is NULL or from `alike_store_options_new`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_options_free(opts: *mut alike_store_options) {
    unsafe { crate::free_box(opts) }
}

/// Applies `f` to the builder behind `opts`.
unsafe fn with_opts(
    opts: *mut alike_store_options,
    f: impl FnOnce(&mut alike::StoreBuilder) -> FfiResult,
) -> alike_result {
    guard(|| {
        // SAFETY: NULL or a live options object by contract.
        let o = unsafe { opts.as_mut() }.ok_or_else(|| crate::invalid("opts is NULL"))?;
        f(&mut o.builder)
    })
}

/// Where the local index cache lives (default: the user's cache folder).
///
/// # Safety
/// `opts` is a live options object; `dir` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_options_set_cache_dir(
    opts: *mut alike_store_options,
    dir: *const c_char,
) -> alike_result {
    unsafe {
        with_opts(opts, |b| {
            b.cache_dir(arg_str(dir, "dir")?);
            Ok(())
        })
    }
}

/// A key file to use instead of (or, at create, besides) a passphrase.
///
/// # Safety
/// `opts` is a live options object; `path` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_options_set_key_file(
    opts: *mut alike_store_options,
    path: *const c_char,
) -> alike_result {
    unsafe {
        with_opts(opts, |b| {
            b.key_file(arg_str(path, "path")?);
            Ok(())
        })
    }
}

/// Create a store that can hand out write-only keys
/// (`alike_store_add_writer_key`): format 3, data sealed to the store's
/// public key. Needs encryption and content-defined chunking.
///
/// # Safety
/// `opts` is a live options object.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_options_set_writer_keys(opts: *mut alike_store_options) -> alike_result {
    unsafe {
        with_opts(opts, |b| {
            b.writer_keys();
            Ok(())
        })
    }
}

/// Create an unencrypted store (no passphrase needed to open it).
///
/// # Safety
/// `opts` is a live options object.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_options_set_no_encryption(opts: *mut alike_store_options) -> alike_result {
    unsafe {
        with_opts(opts, |b| {
            b.no_encryption();
            Ok(())
        })
    }
}

/// zstd level for new data (1–22), or 0 to store data uncompressed.
///
/// # Safety
/// `opts` is a live options object.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_options_set_compression_level(
    opts: *mut alike_store_options,
    level: c_int,
) -> alike_result {
    unsafe {
        with_opts(opts, |b| {
            if !(0..=22).contains(&level) {
                return Err(crate::invalid(format!("compression level {level} is not in 0..=22")));
            }
            b.compression_level((level != 0).then_some(level));
            Ok(())
        })
    }
}

/// How a new store cuts disks: `"cdc"` (content-defined 16/32/64 KiB
/// chunks on 4 KiB boundaries, the default), `"cdc:MIN/AVG/MAX"` in KiB,
/// `"fixed"` (64 KiB blocks, a format 1 store) or `"fixed:KIB"`.
///
/// # Safety
/// `opts` is a live options object; `spec` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_options_set_chunking(
    opts: *mut alike_store_options,
    spec: *const c_char,
) -> alike_result {
    unsafe {
        with_opts(opts, |b| {
            let c: alike::Chunking = arg_str(spec, "spec")?.parse().map_err(alike::Error::from)?;
            b.chunking(c);
            Ok(())
        })
    }
}

/// A cheap key derivation, for tests only: it makes a passphrase easy to guess.
///
/// # Safety
/// `opts` is a live options object.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_options_set_insecure_fast_kdf(opts: *mut alike_store_options) -> alike_result {
    unsafe {
        with_opts(opts, |b| {
            b.insecure_fast_kdf();
            Ok(())
        })
    }
}

/// A token that cancels the operations it is passed to, from any thread.
pub struct alike_cancel {
    pub(crate) token: alike::CancelToken,
}

/// A new token, not cancelled.
#[unsafe(no_mangle)]
pub extern "C" fn alike_cancel_new() -> *mut alike_cancel {
    Box::into_raw(Box::new(alike_cancel { token: alike::CancelToken::new() }))
}

/// Asks every operation holding `cancel` to stop soon (thread-safe).
///
/// # Safety
/// `cancel` is NULL or a live token.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_cancel_cancel(cancel: *const alike_cancel) {
    // SAFETY: NULL or live by contract.
    if let Some(c) = unsafe { cancel.as_ref() } {
        c.token.cancel();
    }
}

/// Whether `alike_cancel_cancel` was called on `cancel`.
///
/// # Safety
/// `cancel` is NULL or a live token.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_cancel_is_cancelled(cancel: *const alike_cancel) -> bool {
    // SAFETY: NULL or live by contract.
    unsafe { cancel.as_ref() }.is_some_and(|c| c.token.is_cancelled())
}

/// Frees a token (NULL is fine). Free it only after the operations using it returned.
///
/// # Safety
/// `cancel` is NULL or from `alike_cancel_new`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_cancel_free(cancel: *mut alike_cancel) {
    unsafe { crate::free_box(cancel) }
}

/// The stage a progress report is about.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum alike_phase {
    /// Finding what to read.
    ALIKE_PHASE_SCANNING = 0,
    /// Reading, deduplicating and storing disk data.
    ALIKE_PHASE_BACKUP = 1,
    /// Writing a disk out of a version.
    ALIKE_PHASE_RESTORE = 2,
    /// Checking stored data.
    ALIKE_PHASE_VERIFY = 3,
    /// Rebuilding the index (units: packs).
    ALIKE_PHASE_INDEX = 4,
    /// Garbage collection (units: block maps, then packs).
    ALIKE_PHASE_GC = 5,
    /// A stage this header does not know yet.
    ALIKE_PHASE_OTHER = 99,
}

/// A progress callback: `done` of `total` bytes (or units) in `phase`.
/// Called from engine threads, one call at a time. Return 0 to go on,
/// non-zero to cancel the operation (it then fails with ALIKE_ERR_CANCELLED,
/// and the alike_cancel passed with it, if any, is cancelled too).
pub type alike_progress_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, phase: alike_phase, done: u64, total: u64) -> c_int>;

/// The C callback and its user data, made callable from engine threads.
struct Callback {
    f: unsafe extern "C" fn(*mut c_void, alike_phase, u64, u64) -> c_int,
    user_data: *mut c_void,
}

// SAFETY: the caller promises (header) that the callback may run on engine
// threads; calls are serialised by the mutex below.
unsafe impl Send for Callback {}

/// Progress and cancellation for one operation, in facade terms.
pub(crate) struct Run {
    pub(crate) cancel: alike::CancelToken,
    callback: Option<Arc<Mutex<Callback>>>,
}

impl Run {
    /// # Safety
    /// `cancel` is NULL or a live token that outlives the operation.
    pub(crate) unsafe fn new(progress: alike_progress_fn, user_data: *mut c_void, cancel: *const alike_cancel) -> Run {
        // SAFETY: NULL or live by contract.
        let cancel = unsafe { cancel.as_ref() }.map(|c| c.token.clone()).unwrap_or_default();
        Run { cancel, callback: progress.map(|f| Arc::new(Mutex::new(Callback { f, user_data }))) }
    }

    /// The facade progress closure, if a callback was given.
    pub(crate) fn progress(&self) -> Option<impl Fn(&Progress) + Send + Sync + 'static> {
        let cb = self.callback.clone()?;
        let cancel = self.cancel.clone();
        Some(move |p: &Progress| {
            let phase = match p.phase {
                Phase::Scanning => alike_phase::ALIKE_PHASE_SCANNING,
                Phase::Backup => alike_phase::ALIKE_PHASE_BACKUP,
                Phase::Restore => alike_phase::ALIKE_PHASE_RESTORE,
                Phase::Verify => alike_phase::ALIKE_PHASE_VERIFY,
                Phase::Index => alike_phase::ALIKE_PHASE_INDEX,
                Phase::Gc => alike_phase::ALIKE_PHASE_GC,
                _ => alike_phase::ALIKE_PHASE_OTHER,
            };
            let c = cb.locked();
            // SAFETY: a valid function pointer with the documented signature.
            if unsafe { (c.f)(c.user_data, phase, p.bytes_done, p.bytes_total) } != 0 {
                cancel.cancel();
            }
        })
    }
}

/// Sets progress and cancellation on a facade options value.
macro_rules! with_run {
    ($opts:expr, $run:expr) => {{
        let mut o = $opts.cancel_token($run.cancel.clone());
        if let Some(p) = $run.progress() {
            o = o.progress(p);
        }
        o
    }};
}
pub(crate) use with_run;
