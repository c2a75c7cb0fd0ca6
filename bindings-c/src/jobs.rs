//! Jobs of a configuration file run on processors made for them.

use std::ffi::c_char;

use crate::files::json_out;
use crate::options::{Run, alike_cancel};
use crate::{alike_result, arg_str, guard, invalid, need, put};

/// Runs the `n_jobs` jobs named in `jobs` of the configuration file
/// `config` (`docs/config.md`) at once, each on a processor made for it in
/// its pool (a job waits while its pool has no free address), after
/// removing what a killed earlier run left. `*out_json` receives the report
/// (`{"swept": [...], "jobs": [...]}`: per job its `job` id and either
/// `result` or `error` with `message`, `kind` and `code` — what `alike job
/// run --json` prints per job); free it with `alike_string_free`. The call
/// succeeds when the jobs ran, whatever each job's outcome: read each one's
/// in the report. `cancel` (may be NULL) cancels every job.
///
/// # Safety
/// `config` and the `n_jobs` strings of `jobs` NUL-terminated; `cancel`
/// NULL or live; `out_json` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn alike_jobs_run(
    config: *const c_char,
    jobs: *const *const c_char,
    n_jobs: usize,
    cancel: *const alike_cancel,
    out_json: *mut *mut c_char,
) -> alike_result {
    guard(|| unsafe {
        need(out_json, "out_json")?;
        let config = arg_str(config, "config")?;
        if jobs.is_null() || n_jobs == 0 {
            return Err(invalid("no jobs to run"));
        }
        if n_jobs > alike::config::MAX_ENTRIES {
            return Err(invalid(format!("{n_jobs} jobs: at most {}", alike::config::MAX_ENTRIES)));
        }
        let mut names = Vec::with_capacity(n_jobs);
        for i in 0..n_jobs {
            names.push(arg_str(*jobs.add(i), &format!("jobs[{i}]"))?.to_string());
        }
        let run = Run::new(None, std::ptr::null_mut(), cancel);
        let c = alike::Config::from_file(config)?;
        let opts = alike::processors::RunJobOptions::default().cancel_token(run.cancel.clone());
        let r = alike::processors::run_config_jobs(&c, &names, &opts)?;
        put(out_json, json_out(&r)?, "out_json")
    })
}
