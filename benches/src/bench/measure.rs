//! Running one step as a child process and measuring it: wall time, and the
//! step's own peak RSS.
//!
//! Peak RSS comes from `getrusage(RUSAGE_CHILDREN)`, which reports the
//! largest resident set among a process's waited-for descendants. Asked by
//! the harness itself it would be the maximum over every step so far, so
//! each step runs under a tiny wrapper — this same binary in `__measure`
//! mode — whose only child is the step: the wrapper's answer is that step's
//! peak alone (a peer that forks helpers counts its largest process).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The first argument that puts this binary in wrapper mode.
pub(crate) const WRAPPER_ARG: &str = "__measure";

/// A command to run as a measured step.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(String, OsString)>,
    cwd: Option<PathBuf>,
}

impl Cmd {
    /// A command running `program`.
    pub(crate) fn new(program: impl Into<PathBuf>) -> Cmd {
        Cmd { program: program.into(), args: Vec::new(), envs: Vec::new(), cwd: None }
    }
    /// Adds an argument.
    pub(crate) fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }
    /// Adds arguments.
    pub(crate) fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, a: I) -> Cmd {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    /// Sets an environment variable.
    pub(crate) fn env(mut self, k: &str, v: impl Into<OsString>) -> Cmd {
        self.envs.push((k.to_string(), v.into()));
        self
    }
    /// Sets the working directory.
    pub(crate) fn cwd(mut self, d: impl Into<PathBuf>) -> Cmd {
        self.cwd = Some(d.into());
        self
    }
    /// The arguments (not the program), for tests.
    #[cfg(test)]
    pub(crate) fn argv(&self) -> Vec<String> {
        self.args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }
    fn describe(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

/// What one measured step took.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    /// Wall time in seconds (spawn to exit).
    pub(crate) secs: f64,
    /// Peak resident set of the step's process, KiB.
    pub(crate) maxrss_kib: u64,
    /// User CPU seconds.
    pub(crate) user: f64,
    /// System CPU seconds.
    pub(crate) sys: f64,
    /// The step's standard output.
    pub(crate) stdout: String,
}

/// Runs `cmd` under the wrapper and returns its measurements; fails with
/// its standard error when it exits non-zero.
pub(crate) fn run(cmd: &Cmd, scratch: &Path) -> Result<Measured> {
    let exe = std::env::current_exe().context("locating alike-bench itself")?;
    let result = scratch.join(format!("rusage-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&result);
    let mut c = Command::new(exe);
    c.arg(WRAPPER_ARG).arg(&result);
    // Steps run at a higher priority than anything else on the machine
    // (when permitted), so that other work on a shared machine disturbs
    // them less; every tool gets the same.
    if nice_ok() {
        c.args(["nice", "-n", "-10"]);
    }
    c.arg(&cmd.program).args(&cmd.args);
    for (k, v) in &cmd.envs {
        c.env(k, v);
    }
    if let Some(d) = &cmd.cwd {
        c.current_dir(d);
    }
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let t = Instant::now();
    let out = c.output().with_context(|| format!("running {}", cmd.describe()))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            cmd.describe(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim().chars().take(2000).collect::<String>()
        );
    }
    let text = std::fs::read_to_string(&result).context("reading the wrapper's rusage")?;
    let _ = std::fs::remove_file(&result);
    let nums: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let [maxrss, user, sys] = nums[..] else { bail!("bad rusage line {text:?}") };
    Ok(Measured {
        secs,
        maxrss_kib: maxrss as u64,
        user,
        sys,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// Wrapper mode: `alike-bench __measure RESULT PROGRAM ARGS…` runs the
/// program with inherited standard streams, writes `maxrss_kib user_s sys_s`
/// of its (only) child to RESULT, and exits with the child's status.
pub(crate) fn wrapper_main(mut args: impl Iterator<Item = OsString>) -> ! {
    let code = (|| -> Result<i32> {
        let result = PathBuf::from(args.next().context("RESULT")?);
        let program = args.next().context("PROGRAM")?;
        let status = Command::new(&program)
            .args(args)
            .status()
            .with_context(|| format!("starting {}", program.to_string_lossy()))?;
        let ru = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        // Linux reports ru_maxrss in KiB.
        std::fs::write(
            &result,
            format!("{} {:.3} {:.3}\n", ru.max_rss(), secs(ru.user_time()), secs(ru.system_time())),
        )?;
        Ok(status.code().unwrap_or(1))
    })();
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("alike-bench wrapper: {e:#}");
            std::process::exit(125)
        }
    }
}

/// Whether `nice -n -10` works here (root).
pub(crate) fn nice_ok() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("nice").args(["-n", "-10", "true"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
            && nix::unistd::Uid::effective().is_root()
    })
}

/// Reads a file's allocated ranges through the page cache (so the next step
/// finds it cached; holes cost nothing to read anyway).
pub(crate) fn prime(path: &Path) {
    use alike_core::DiskSource;
    let Ok(src) = alike_core::RawFileSource::open(path) else { return };
    let mut buf = vec![0u8; 1 << 20];
    for r in src.allocated_ranges().unwrap_or_default() {
        let mut off = r.start;
        while off < r.end {
            let n = (r.end - off).min(buf.len() as u64) as usize;
            if src.read_at(off, &mut buf[..n]).is_err() {
                return;
            }
            off += n as u64;
        }
    }
}

/// Flushes dirty pages and drops the page cache; `false` when not permitted.
pub(crate) fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Flushes dirty pages (so one step's writeback does not slow the next).
pub(crate) fn sync() {
    let _ = Command::new("sync").status();
}

/// The 1-minute load average.
pub(crate) fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|w| w.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Apparent size of every file under `dir` (a repository's size).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            n += dir_bytes(&e.path());
        } else if t.is_file() {
            n += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    n
}
