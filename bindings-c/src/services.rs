//! The services (`docs/services.md`) from C: open them from a configuration
//! file, run a job, wait, read its record, and subscribe to events.

use std::ffi::{CString, c_char, c_void};
use std::time::Duration;

use alike::services::Services;

use crate::alike_result;
use crate::{FfiResult, arg_str, guard, invalid, need, put};

/// Open services (`alike_services_open`); free with `alike_services_free`.
pub struct alike_services {
    inner: Services,
}

/// An event callback: `event_json` is one event as JSON (valid during the
/// call only); `user` is what `alike_services_subscribe` was given. Called
/// on the thread that emits the event (a run's thread): keep it short.
pub type alike_event_fn = Option<unsafe extern "C" fn(event_json: *const c_char, user: *mut c_void)>;

fn services_ref<'a>(s: *const alike_services) -> FfiResult<&'a alike_services> {
    // SAFETY: NULL or a live handle by the caller's contract.
    unsafe { s.as_ref() }.ok_or_else(|| invalid("services is NULL"))
}

/// Opens the services of the configuration file `config` with the history
/// database `database` (created if missing). `ALIKE_ERR_BUSY` while another
/// process has the database open.
///
/// # Safety
/// Strings NUL-terminated; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_services_open(
    config: *const c_char,
    database: *const c_char,
    out: *mut *mut alike_services,
) -> alike_result {
    guard(|| unsafe {
        need(out, "out")?;
        let (c, d) = (arg_str(config, "config")?, arg_str(database, "database")?);
        let cfg = alike::Config::from_file(c)?;
        let s = Services::builder().config(&cfg)?.database(d).open()?;
        put(out, Box::into_raw(Box::new(alike_services { inner: s })), "out")
    })
}

/// Starts the schedule loop.
///
/// # Safety
/// `services` is a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_services_start(services: *const alike_services) -> alike_result {
    guard(|| Ok(services_ref(services)?.inner.start()?))
}

/// Runs the job `name` now; `*out_run` receives the run's id.
/// `ALIKE_ERR_BUSY` when it is already queued or running.
///
/// # Safety
/// `services` live; `name` NUL-terminated; `out_run` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_services_run_now(
    services: *const alike_services,
    name: *const c_char,
    out_run: *mut u64,
) -> alike_result {
    guard(|| unsafe {
        need(out_run, "out_run")?;
        let s = services_ref(services)?;
        let id = s.inner.run_now(arg_str(name, "name")?)?;
        put(out_run, id, "out_run")
    })
}

/// Waits until no run is queued or running, at most `timeout_ms`. Returns
/// whether that was reached (false for NULL).
///
/// # Safety
/// `services` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_services_wait_idle(services: *const alike_services, timeout_ms: u64) -> bool {
    // SAFETY: NULL or live by contract.
    unsafe { services.as_ref() }.is_some_and(|s| s.inner.wait_idle(Duration::from_millis(timeout_ms)))
}

/// The record of run `run` as JSON (`docs/services.md`); free `*out_json`
/// with `alike_string_free`.
///
/// # Safety
/// `services` live; `out_json` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_services_run_json(
    services: *const alike_services,
    run: u64,
    out_json: *mut *mut c_char,
) -> alike_result {
    guard(|| unsafe {
        need(out_json, "out_json")?;
        let r = services_ref(services)?.inner.run(run)?;
        let text = serde_json::to_string(&r).map_err(|e| invalid(e.to_string()))?;
        let c = CString::new(text).map_err(|e| invalid(e.to_string()))?;
        put(out_json, c.into_raw(), "out_json")
    })
}

/// Calls `callback(event_json, user)` for every event from now on;
/// `*out_id` receives an id for `alike_services_unsubscribe`. `user` must
/// stay valid until then (or until `alike_services_free`).
///
/// # Safety
/// `services` live; `out_id` writable; `callback` safe to call from any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_services_subscribe(
    services: *const alike_services,
    callback: alike_event_fn,
    user: *mut c_void,
    out_id: *mut u64,
) -> alike_result {
    guard(|| unsafe {
        need(out_id, "out_id")?;
        let s = services_ref(services)?;
        let cb = callback.ok_or_else(|| invalid("callback is NULL"))?;
        // The pointer crosses threads as a number: the caller promised it stays valid.
        let user = user as usize;
        let id = s.inner.subscribe(move |e| {
            if let Ok(c) = CString::new(e.to_json()) {
                // SAFETY: the caller's callback and pointer, valid by contract.
                cb(c.as_ptr(), user as *mut c_void);
            }
        });
        put(out_id, id.get(), "out_id")
    })
}

/// Ends a subscription. Returns whether it existed.
///
/// # Safety
/// `services` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_services_unsubscribe(services: *const alike_services, id: u64) -> bool {
    // SAFETY: NULL or live by contract.
    unsafe { services.as_ref() }.is_some_and(|s| s.inner.unsubscribe(alike::services::SubscriptionId::from_raw(id)))
}

/// Stops (running runs cancelled, waited for at most 30 s) and frees; NULL is fine.
///
/// # Safety
/// `services` is NULL or a live handle, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_services_free(services: *mut alike_services) {
    if let Some(s) = unsafe { services.as_ref() } {
        s.inner.stop(true, Duration::from_secs(30));
    }
    unsafe { crate::free_box(services) }
}
