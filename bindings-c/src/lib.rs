//! # libalike — the C ABI of alike
//!
//! Opaque handles over the `alike` facade, with the conventions written at
//! the top of the generated `include/alike.h` (see `cbindgen.toml`): result
//! codes with stable numbers, a thread-local last error message, `_free` for
//! every object, out-parameters last and written only on success, and no
//! panic crossing the boundary.
//!
//! Names follow C (`alike_result`, `ALIKE_OK`), since cbindgen copies them
//! into the header as they are.

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

mod files;
mod jobs;
mod nbd;
mod options;
mod replica;
mod services;
mod store;
mod version;
mod xen_replica;

pub use files::*;
pub use jobs::*;
pub use nbd::*;
pub use options::*;
pub use replica::*;
pub use services::*;
pub use store::*;
pub use version::*;
pub use xen_replica::*;

static VERSION: &CStr = c"0.1.0";

/// Result codes. The numbers are stable (see the ABI promise above).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum alike_result {
    /// Success.
    ALIKE_OK = 0,
    /// The passphrase or key file does not unlock the store.
    ALIKE_ERR_WRONG_PASSPHRASE = 1,
    /// An encrypted store was opened without a passphrase or key file.
    ALIKE_ERR_PASSPHRASE_REQUIRED = 2,
    /// No store at that location.
    ALIKE_ERR_NOT_A_STORE = 3,
    /// A store already exists there.
    ALIKE_ERR_ALREADY_EXISTS = 4,
    /// A version, VM, disk or object does not exist.
    ALIKE_ERR_NOT_FOUND = 5,
    /// Stored data is damaged.
    ALIKE_ERR_CORRUPTION = 6,
    /// An object has a format version this build does not read.
    ALIKE_ERR_UNSUPPORTED_VERSION = 7,
    /// The operation was cancelled (token or progress callback).
    ALIKE_ERR_CANCELLED = 8,
    /// A bad argument: NULL where a value is needed, invalid UTF-8, out of range.
    ALIKE_ERR_INVALID_ARGUMENT = 9,
    /// Reading a source, writing a target, or the store's files failed.
    ALIKE_ERR_IO = 10,
    /// Another process holds a lock that excludes this operation.
    ALIKE_ERR_BUSY = 11,
    /// Any other failure.
    ALIKE_ERR_OTHER = 12,
    /// An input disk image (VHD, VHDX) is malformed or unsupported.
    ALIKE_ERR_BAD_IMAGE = 13,
    /// The store was opened with a write-only key, which backs up but cannot
    /// read chunk data (restore, verify --full): use the full key.
    ALIKE_ERR_WRITE_ONLY_KEY = 14,
    /// A bug inside libalike (a caught panic); nothing stored was changed.
    ALIKE_ERR_PANIC = 99,
}

/// Whether retrying a failed call may succeed (`alike_last_error_retry`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum alike_retry {
    /// The last call succeeded.
    ALIKE_RETRY_NONE = 0,
    /// The same call will fail the same way (bad input, damage).
    ALIKE_RETRY_PERMANENT = 1,
    /// A retry may succeed (a network blip, a lock held by someone else).
    ALIKE_RETRY_TRANSIENT = 2,
    /// Cannot be told.
    ALIKE_RETRY_UNKNOWN = 3,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    static LAST_RETRY: std::cell::Cell<alike_retry> = const { std::cell::Cell::new(alike_retry::ALIKE_RETRY_NONE) };
}

fn set_last_error(msg: impl Into<String>, retry: alike_retry) {
    let msg = msg.into().replace('\0', "\\0");
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(msg).ok());
    LAST_RETRY.with(|r| r.set(retry));
}

fn clear_last_error() {
    LAST_ERROR.with(|e| *e.borrow_mut() = None);
    LAST_RETRY.with(|r| r.set(alike_retry::ALIKE_RETRY_NONE));
}

/// An error inside an exported function: its code, message and retry class.
pub(crate) struct Failure(alike_result, String, alike_retry);

pub(crate) type FfiResult<T = ()> = Result<T, Failure>;

impl Failure {
    /// Damage a call went past (a partial restore's unreadable ranges).
    pub(crate) fn corruption(msg: String) -> Failure {
        Failure(alike_result::ALIKE_ERR_CORRUPTION, msg, alike_retry::ALIKE_RETRY_PERMANENT)
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> Failure {
    Failure(alike_result::ALIKE_ERR_INVALID_ARGUMENT, msg.into(), alike_retry::ALIKE_RETRY_PERMANENT)
}

/// The result code of a kind, by its number in the one table
/// (`alike::ErrorKind::code`; a test checks every kind).
fn result_of(kind: alike::ErrorKind) -> alike_result {
    use alike_result::*;
    match kind.code() {
        1 => ALIKE_ERR_WRONG_PASSPHRASE,
        2 => ALIKE_ERR_PASSPHRASE_REQUIRED,
        3 => ALIKE_ERR_NOT_A_STORE,
        4 => ALIKE_ERR_ALREADY_EXISTS,
        5 => ALIKE_ERR_NOT_FOUND,
        6 => ALIKE_ERR_CORRUPTION,
        7 => ALIKE_ERR_UNSUPPORTED_VERSION,
        8 => ALIKE_ERR_CANCELLED,
        9 => ALIKE_ERR_INVALID_ARGUMENT,
        10 => ALIKE_ERR_IO,
        11 => ALIKE_ERR_BUSY,
        13 => ALIKE_ERR_BAD_IMAGE,
        14 => ALIKE_ERR_WRITE_ONLY_KEY,
        _ => ALIKE_ERR_OTHER,
    }
}

impl From<alike::Error> for Failure {
    fn from(e: alike::Error) -> Failure {
        let code = result_of(e.kind());
        let retry = match e.retry() {
            alike::Retry::Transient => alike_retry::ALIKE_RETRY_TRANSIENT,
            alike::Retry::Permanent => alike_retry::ALIKE_RETRY_PERMANENT,
            _ => alike_retry::ALIKE_RETRY_UNKNOWN,
        };
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            let s = c.to_string();
            if !msg.contains(&s) {
                msg.push_str(": ");
                msg.push_str(&s);
            }
            src = c.source();
        }
        Failure(code, msg, retry)
    }
}

/// Runs an exported function's body: clears the last error, catches panics,
/// and turns a failure into its code plus the thread's last error message.
pub(crate) fn guard(body: impl FnOnce() -> FfiResult) -> alike_result {
    clear_last_error();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => alike_result::ALIKE_OK,
        Ok(Err(Failure(code, msg, retry))) => {
            set_last_error(msg, retry);
            code
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_last_error(
                format!("internal error in libalike (please report): {what}"),
                alike_retry::ALIKE_RETRY_UNKNOWN,
            );
            alike_result::ALIKE_ERR_PANIC
        }
    }
}

/// A required NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the call.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, name: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(invalid(format!("{name} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| invalid(format!("{name} is not valid UTF-8")))
}

/// An optional NUL-terminated UTF-8 string argument (NULL = absent).
///
/// # Safety
/// As [`arg_str`].
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, name: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() { Ok(None) } else { unsafe { arg_str(p, name) }.map(Some) }
}

/// Checks a required out-pointer before any work is done, so a NULL one
/// never leaves an effect behind.
pub(crate) fn need<T>(out: *mut T, name: &str) -> FfiResult {
    if out.is_null() { Err(invalid(format!("{name} is NULL"))) } else { Ok(()) }
}

/// Frees what `Box::into_raw` handed out; NULL is fine.
///
/// # Safety
/// `p` is NULL or came from `Box::into_raw` and is freed only once.
pub(crate) unsafe fn free_box<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: from Box::into_raw, freed once by the caller's contract.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Writes `v` through a required out-pointer.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(out: *mut T, v: T, name: &str) -> FfiResult {
    if out.is_null() {
        return Err(invalid(format!("{name} is NULL")));
    }
    // SAFETY: non-NULL and writable by the caller's contract.
    unsafe { out.write(v) };
    Ok(())
}

/// The library version ("MAJOR.MINOR.PATCH"), a static NUL-terminated string.
#[unsafe(no_mangle)]
pub extern "C" fn alike_library_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The message of the last failure on this thread, or NULL if the last call
/// succeeded. Valid until the next libalike call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn alike_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(std::ptr::null(), |s| s.as_ptr()))
}

/// Whether retrying the last failed call on this thread may succeed;
/// `ALIKE_RETRY_NONE` if the last call succeeded.
#[unsafe(no_mangle)]
pub extern "C" fn alike_last_error_retry() -> alike_retry {
    LAST_RETRY.with(std::cell::Cell::get)
}

/// A short, static, NUL-terminated name of a result code ("ALIKE_ERR_IO"…);
/// "ALIKE_UNKNOWN" for a number that is not one.
#[unsafe(no_mangle)]
pub extern "C" fn alike_result_name(code: i32) -> *const c_char {
    let s: &'static CStr = match code {
        0 => c"ALIKE_OK",
        1 => c"ALIKE_ERR_WRONG_PASSPHRASE",
        2 => c"ALIKE_ERR_PASSPHRASE_REQUIRED",
        3 => c"ALIKE_ERR_NOT_A_STORE",
        4 => c"ALIKE_ERR_ALREADY_EXISTS",
        5 => c"ALIKE_ERR_NOT_FOUND",
        6 => c"ALIKE_ERR_CORRUPTION",
        7 => c"ALIKE_ERR_UNSUPPORTED_VERSION",
        8 => c"ALIKE_ERR_CANCELLED",
        9 => c"ALIKE_ERR_INVALID_ARGUMENT",
        10 => c"ALIKE_ERR_IO",
        11 => c"ALIKE_ERR_BUSY",
        12 => c"ALIKE_ERR_OTHER",
        13 => c"ALIKE_ERR_BAD_IMAGE",
        14 => c"ALIKE_ERR_WRITE_ONLY_KEY",
        99 => c"ALIKE_ERR_PANIC",
        _ => c"ALIKE_UNKNOWN",
    };
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_error_kind_has_its_code_and_name() {
        for k in alike::ErrorKind::ALL {
            let r = super::result_of(*k);
            assert_eq!(r as u32, k.code(), "{k:?}");
            let name = unsafe { std::ffi::CStr::from_ptr(super::alike_result_name(k.code() as i32)) };
            assert_eq!(name.to_str().unwrap(), k.c_name(), "{k:?}");
        }
    }

    #[test]
    fn version_matches_the_crate() {
        assert_eq!(super::VERSION.to_str().unwrap(), alike::VERSION);
    }

    #[test]
    fn a_panic_becomes_a_code_and_a_message() {
        let r = super::guard(|| panic!("boom"));
        assert_eq!(r, super::alike_result::ALIKE_ERR_PANIC);
        let m = unsafe { std::ffi::CStr::from_ptr(super::alike_last_error_message()) };
        assert!(m.to_str().unwrap().contains("boom"));
        assert_eq!(super::guard(|| Ok(())), super::alike_result::ALIKE_OK);
        assert!(super::alike_last_error_message().is_null());
    }

    #[test]
    fn result_names_match_the_codes() {
        use super::alike_result::*;
        for code in [ALIKE_OK, ALIKE_ERR_BUSY, ALIKE_ERR_OTHER, ALIKE_ERR_PANIC] {
            let n = unsafe { std::ffi::CStr::from_ptr(super::alike_result_name(code as i32)) };
            assert_eq!(n.to_str().unwrap(), format!("{code:?}"));
        }
        let n = unsafe { std::ffi::CStr::from_ptr(super::alike_result_name(1234)) };
        assert_eq!(n.to_str().unwrap(), "ALIKE_UNKNOWN");
    }
}
