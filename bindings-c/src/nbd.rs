//! NBD export of a version: `alike_store_serve_nbd` starts a server on its
//! own thread and returns once it listens; `alike_nbd_server_stop` ends it
//! (each connection after the request it serves) and keeps its report.

use std::ffi::{CString, c_char};
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::alike_store;
use crate::version::alike_version;
use crate::{Failure, FfiResult, alike_result, arg_str, guard, invalid, need, put};

/// Options of an NBD export (`alike_nbd_options_new`, then setters). The
/// defaults: TCP `127.0.0.1:10809`, disk 0, read-only, no TLS.
pub struct alike_nbd_options {
    inner: alike::NbdOptions,
}

/// A running NBD export (`alike_store_serve_nbd`).
pub struct alike_nbd_server {
    uri: CString,
    listening: CString,
    cancel: alike::CancelToken,
    thread: Option<JoinHandle<alike::Result<alike::NbdReport>>>,
    report: Option<CString>,
}

/// New options with the defaults. Free with `alike_nbd_options_free`.
#[unsafe(no_mangle)]
pub extern "C" fn alike_nbd_options_new() -> *mut alike_nbd_options {
    Box::into_raw(Box::new(alike_nbd_options { inner: alike::NbdOptions::default() }))
}

/// Frees options (NULL is fine).
///
/// # Safety
/// `opts` is NULL or from `alike_nbd_options_new`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_nbd_options_free(opts: *mut alike_nbd_options) {
    unsafe { crate::free_box(opts) }
}

/// # Safety
/// `opts` NULL or live.
unsafe fn set(
    opts: *mut alike_nbd_options,
    f: impl FnOnce(alike::NbdOptions) -> FfiResult<alike::NbdOptions>,
) -> alike_result {
    guard(|| {
        // SAFETY: NULL or live by contract.
        let o = unsafe { opts.as_mut() }.ok_or_else(|| invalid("opts is NULL"))?;
        o.inner = f(o.inner.clone())?;
        Ok(())
    })
}

/// Listen on TCP `addr` (`HOST:PORT`, `[V6]:PORT`, a host alone for port
/// 10809; port 0 picks a free one).
///
/// # Safety
/// `opts` live; `addr` NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_nbd_options_set_listen_tcp(
    opts: *mut alike_nbd_options,
    addr: *const c_char,
) -> alike_result {
    unsafe { set(opts, |o| Ok(o.listen_tcp(arg_str(addr, "addr")?))) }
}

/// Listen on a Unix socket at `path`.
///
/// # Safety
/// `opts` live; `path` NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_nbd_options_set_listen_unix(
    opts: *mut alike_nbd_options,
    path: *const c_char,
) -> alike_result {
    unsafe { set(opts, |o| Ok(o.listen_unix(arg_str(path, "path")?))) }
}

/// Serve disk `disk` (from 0) as the default export and as `diskN`.
///
/// # Safety
/// `opts` live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_nbd_options_set_disk(opts: *mut alike_nbd_options, disk: u32) -> alike_result {
    unsafe { set(opts, |o| Ok(o.disk(disk))) }
}

/// Serve every disk, disk N as the export `diskN` (no default export).
///
/// # Safety
/// `opts` live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_nbd_options_set_all_disks(opts: *mut alike_nbd_options) -> alike_result {
    unsafe { set(opts, |o| Ok(o.all_disks())) }
}

/// Require TLS (URIs become `nbds://`): the server's certificate chain and
/// private key, PEM files read when the export starts (the key is never
/// logged). `client_ca` (NULL = none): clients must present a certificate
/// this CA signed.
///
/// # Safety
/// `opts` live; `cert`, `key` NUL-terminated; `client_ca` NUL-terminated or NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_nbd_options_set_tls(
    opts: *mut alike_nbd_options,
    cert: *const c_char,
    key: *const c_char,
    client_ca: *const c_char,
) -> alike_result {
    unsafe {
        set(opts, |o| {
            let o = o.tls(arg_str(cert, "cert")?, arg_str(key, "key")?);
            Ok(match crate::opt_str(client_ca, "client_ca")? {
                Some(ca) => o.tls_client_ca(ca),
                None => o,
            })
        })
    }
}

/// Starts serving `version` over NBD on a thread of its own and returns once
/// it listens (`*out`: the server; stop and free it with
/// `alike_nbd_server_free`). `opts` NULL = the defaults. Errors before it
/// listens (a disk the version lacks, an address in use, unusable TLS
/// files) are returned here; errors while serving go to the clients.
///
/// # Safety
/// `store`, `version` live; `opts` NULL or live; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_store_serve_nbd(
    store: *const alike_store,
    version: *const alike_version,
    opts: *const alike_nbd_options,
    out: *mut *mut alike_nbd_server,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let store = store.as_ref().map(|s| s.inner.clone()).ok_or_else(|| invalid("store is NULL"))?;
        let v = version.as_ref().map(|v| v.inner.clone()).ok_or_else(|| invalid("version is NULL"))?;
        let opts = opts.as_ref().map(|o| o.inner.clone()).unwrap_or_default();
        let cancel = alike::CancelToken::new();
        let (tx, rx) = std::sync::mpsc::sync_channel::<alike::NbdListening>(1);
        let opts = opts.cancel_token(cancel.clone()).on_listening(move |l| {
            let _ = tx.send(l.clone());
        });
        let thread = alike::spawn("alike-c-nbd", move || store.serve_nbd(&v, &opts)).map_err(alike::Error::from)?;
        let listening = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => break l,
                Err(RecvTimeoutError::Timeout) => {}
                // The options (and the sender) went with the thread: it ended before listening.
                Err(RecvTimeoutError::Disconnected) => {
                    return match thread.join() {
                        Ok(Err(e)) => Err(Failure::from(e)),
                        Ok(Ok(_)) => Err(invalid("the NBD server stopped before listening")),
                        Err(_) => Err(invalid("the NBD server panicked (please report this)")),
                    };
                }
            }
        };
        let c = |s: String| CString::new(s.replace('\0', "\\0")).unwrap_or_default();
        let server = alike_nbd_server {
            uri: c(listening.uri.clone()),
            listening: c(serde_json::to_string(&listening).unwrap_or_default()),
            cancel,
            thread: Some(thread),
            report: None,
        };
        put(out, Box::into_raw(Box::new(server)), "out")
    })
}

/// Where the server listens, without an export name (`nbd://127.0.0.1:PORT`,
/// `nbds://…` with TLS, `nbd+unix://?socket=…`); valid as long as `server`.
///
/// # Safety
/// `server` is a live server.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_nbd_server_uri(server: *const alike_nbd_server) -> *const c_char {
    // SAFETY: live by contract.
    unsafe { server.as_ref() }.map_or(std::ptr::null(), |s| s.uri.as_ptr())
}

/// Where the server listens and its exports, as JSON (`uri`, `exports`:
/// `name`, `uri`, `disk`, `size`, `writable`, `default`); valid as long as `server`.
///
/// # Safety
/// `server` is a live server.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_nbd_server_listening_json(server: *const alike_nbd_server) -> *const c_char {
    // SAFETY: live by contract.
    unsafe { server.as_ref() }.map_or(std::ptr::null(), |s| s.listening.as_ptr())
}

/// Stops serving (each connection after the request it serves) and waits
/// for the server's thread; again: nothing more to do. The session's
/// report is then `alike_nbd_server_report_json`.
///
/// # Safety
/// `server` is a live server, not used by another thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_nbd_server_stop(server: *mut alike_nbd_server) -> alike_result {
    guard(|| {
        // SAFETY: live by contract.
        let s = unsafe { server.as_mut() }.ok_or_else(|| invalid("server is NULL"))?;
        s.cancel.cancel();
        if let Some(t) = s.thread.take() {
            let report = t.join().map_err(|_| invalid("the NBD server panicked (please report this)"))??;
            s.report = CString::new(serde_json::to_string(&report).unwrap_or_default()).ok();
        }
        Ok(())
    })
}

/// The report of a stopped server as JSON (`connections`, `requests`,
/// `bytes_read`, `store_bytes_read`, …), or NULL while it runs; valid as
/// long as `server`.
///
/// # Safety
/// `server` is a live server.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_nbd_server_report_json(server: *const alike_nbd_server) -> *const c_char {
    // SAFETY: live by contract.
    unsafe { server.as_ref() }.and_then(|s| s.report.as_ref()).map_or(std::ptr::null(), |r| r.as_ptr())
}

/// Stops the server if it runs and frees it (NULL is fine).
///
/// # Safety
/// `server` is NULL or from `alike_store_serve_nbd`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_nbd_server_free(server: *mut alike_nbd_server) {
    if let Some(s) = unsafe { server.as_mut() } {
        s.cancel.cancel();
        if let Some(t) = s.thread.take() {
            let _ = t.join();
        }
    }
    unsafe { crate::free_box(server) }
}
