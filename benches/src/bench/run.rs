//! The run: ceilings, the tool comparison, change hints, scaling.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::ceilings::{self, Ceilings};
use crate::images::{self, Pair};
use crate::measure::{self, Cmd, Measured};
use crate::tools::{Kind, Repo, Tool};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Tiny images and short ceilings.
    pub(crate) smoke: bool,
    /// Repositories, restores, fixtures.
    pub(crate) work: PathBuf,
    /// Take the pair from here instead of building it.
    pub(crate) pair_dir: Option<PathBuf>,
    /// Pair size to build, MiB.
    pub(crate) size_mib: u64,
    /// alike first, then the peers.
    pub(crate) tools: Vec<Tool>,
    /// Scaling image sizes, MiB.
    pub(crate) scaling_mib: Vec<u64>,
    /// Run the change-hint backup.
    pub(crate) hints: bool,
    /// Chunk counts of the synthetic many-chunks backups.
    pub(crate) many_chunks: Vec<u64>,
    /// Page-cache modes to run the comparison in, the first one primary
    /// (its figures are checked against the targets; hints and scaling run in it).
    pub(crate) modes: Vec<Cache>,
    /// Compare restored images with their sources.
    pub(crate) verify: bool,
    /// Thread counts of the core-scaling run (empty: skip it).
    pub(crate) core_threads: Vec<usize>,
    /// Rounds of the core-scaling run (each step's fastest counts).
    pub(crate) core_rounds: usize,
    /// The NTFS pair for the dedup comparison: `Some((dir, build))` — take
    /// it from `dir`, or build it there when `build`; `None`: skip it.
    pub(crate) ntfs: Option<(PathBuf, bool)>,
    /// casync (binary, version) when installed and peers run: its stored
    /// bytes on each pair.
    pub(crate) casync: Option<(PathBuf, String)>,
}

/// The page cache before a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cache {
    /// The step's image is read into the page cache first, for every tool alike.
    Warm,
    /// The page cache is dropped first (`echo 3 > /proc/sys/vm/drop_caches`).
    Cold,
}

impl Cache {
    /// Its name in tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cache::Warm => "warm",
            Cache::Cold => "cold",
        }
    }
}

/// The steps of the comparison, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Repository A: first backup of v1.
    First,
    /// Repository A: v2 updated in place, no change hints.
    Inplace,
    /// Repository A: v2 in place again, unchanged (peers forced to re-read).
    Rerun,
    /// Repository A: restore of v2 (in place).
    Restore,
    /// Repository B: first backup of v1 again.
    FirstB,
    /// Repository B: v2 laid out afresh, no change hints.
    Fresh,
}

impl Step {
    /// Every step, in order.
    pub(crate) const ALL: [Step; 6] =
        [Step::First, Step::Inplace, Step::Rerun, Step::Restore, Step::FirstB, Step::Fresh];
    /// Its name in tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Step::First => "first backup of v1",
            Step::Inplace => "incremental: v2 updated in place (no hints)",
            Step::Rerun => "unchanged re-run of v2 in place",
            Step::Restore => "restore of v2 in place",
            Step::FirstB => "first backup of v1 (repository B)",
            Step::Fresh => "incremental: v2 laid out afresh (no hints), repository B",
        }
    }
}

/// One tool's one step.
#[derive(Debug, Clone)]
pub(crate) struct StepResult {
    /// Tool name.
    pub(crate) tool: String,
    /// Which step.
    pub(crate) step: Step,
    /// Time, RSS, CPU.
    pub(crate) m: Measured,
    /// Image size (virtual bytes).
    pub(crate) image_bytes: u64,
    /// Allocated bytes of the image.
    pub(crate) data_bytes: u64,
    /// Repository size after the step.
    pub(crate) repo_bytes: u64,
    /// Repository growth in the step.
    pub(crate) added_bytes: u64,
    /// 1-minute load average before the step.
    pub(crate) load: f64,
    /// For a restore: bytes the restored file occupies on disk.
    pub(crate) restored_disk_bytes: Option<u64>,
    /// For a restore: bit-exact (`None` when not checked).
    pub(crate) restore_ok: Option<bool>,
    /// The page cache before the step.
    pub(crate) cache: Cache,
    /// For a restore: seconds of the `sync` right after it (what the tool
    /// left unwritten; alike fsyncs before it exits).
    pub(crate) sync_secs: f64,
}

impl StepResult {
    /// Wall seconds until the result is durable (restores: plus the sync).
    pub(crate) fn durable_secs(&self) -> f64 {
        self.m.secs + self.sync_secs
    }
}

/// The change-hint run of one alike tool.
#[derive(Debug, Clone)]
pub(crate) struct Hints {
    /// The alike tool (its store's chunking).
    pub(crate) tool: String,
    /// Full backup of the VHDX base.
    pub(crate) full: Measured,
    /// Incremental of an empty child (the fixed cost of a backup).
    pub(crate) empty: Measured,
    /// Incremental of the child through its change ranges.
    pub(crate) incr: Measured,
    /// Bytes written into the child.
    pub(crate) changed: u64,
    /// Bytes the incremental read (from alike's report).
    pub(crate) read: u64,
    /// Bytes the full backup read.
    pub(crate) full_read: u64,
    /// Whether the engine used the change ranges.
    pub(crate) incremental: bool,
    /// Virtual size.
    pub(crate) size: u64,
}

/// One scaling backup.
#[derive(Debug, Clone)]
pub(crate) struct Scale {
    /// Image size.
    pub(crate) size: u64,
    /// Allocated bytes.
    pub(crate) data: u64,
    /// The backup.
    pub(crate) m: Measured,
    /// Store size after it.
    pub(crate) repo_bytes: u64,
}

/// The core-scaling run at one thread count: v1 backed up into a fresh
/// store, backed up again unchanged, and restored, each with `--threads`.
#[derive(Debug, Clone)]
pub(crate) struct CoreRun {
    /// `--threads`.
    pub(crate) threads: usize,
    /// First backup of v1.
    pub(crate) backup: Measured,
    /// Unchanged re-run of v1.
    pub(crate) rerun: Measured,
    /// Restore of v1 (to exit; alike fsyncs before it exits).
    pub(crate) restore: Measured,
}

impl CoreRun {
    /// Keeps, step by step, the faster of `self` and `other`.
    fn keep_fastest(&mut self, other: CoreRun) {
        for (mine, theirs) in
            [(&mut self.backup, other.backup), (&mut self.rerun, other.rerun), (&mut self.restore, other.restore)]
        {
            if theirs.secs < mine.secs {
                *mine = theirs;
            }
        }
    }
}

/// Stored bytes of one tool on one pair (issue 13): repository size after
/// v1, and what v2 in place and v2 afresh added.
#[derive(Debug, Clone)]
pub(crate) struct PairDedup {
    /// `ext4` or `NTFS`.
    pub(crate) pair: String,
    /// Tool name.
    pub(crate) tool: String,
    /// Repository bytes after v1.
    pub(crate) v1: u64,
    /// Added by v2 in place.
    pub(crate) inplace: Option<u64>,
    /// Added by v2 afresh (in a second repository holding v1).
    pub(crate) fresh: Option<u64>,
    /// Wall seconds of the first backup.
    pub(crate) v1_secs: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Results {
    /// The machine: cores, CPU model, memory.
    pub(crate) machine: Vec<(String, String)>,
    /// Tool names, versions and settings.
    pub(crate) tools: Vec<(String, String, String)>,
    /// The primary alike tool's name (targets and ratios are its).
    pub(crate) alike: String,
    /// Every alike tool's name, the primary first (the others are not peers).
    pub(crate) alike_tools: Vec<String>,
    /// The pair.
    pub(crate) pair: Option<Pair>,
    /// Image size and allocated bytes of v1.
    pub(crate) v1_size: u64,
    /// Allocated bytes of v1.
    pub(crate) v1_data: u64,
    /// Whether the page cache could be dropped.
    pub(crate) cold_ok: bool,
    /// The modes run, primary first.
    pub(crate) modes: Vec<Cache>,
    /// Ceilings.
    pub(crate) ceilings: Ceilings,
    /// The comparison.
    pub(crate) steps: Vec<StepResult>,
    /// Change hints, per alike tool (the primary first).
    pub(crate) hints: Vec<Hints>,
    /// Scaling.
    pub(crate) scaling: Vec<Scale>,
    /// Many chunks: (chunks, the backup, store bytes).
    pub(crate) many: Vec<(u64, Measured, u64)>,
    /// Core scaling, by thread count.
    pub(crate) cores: Vec<CoreRun>,
    /// Stored bytes per pair and tool (the ext4 pair's from the comparison).
    pub(crate) dedup: Vec<PairDedup>,
    /// Steps that failed (the run goes on).
    pub(crate) errors: Vec<String>,
    /// Load average at start and end.
    pub(crate) load: (f64, f64),
    /// Wall time of the whole run, seconds.
    pub(crate) total_secs: f64,
}

impl Results {
    /// What went wrong: failed steps and restores that were not bit-exact.
    pub(crate) fn failures(&self) -> Vec<String> {
        let mut v = self.errors.clone();
        for s in &self.steps {
            if s.restore_ok == Some(false) {
                v.push(format!("{}: the restored image differs from its source", s.tool));
            }
        }
        v
    }
    /// The primary alike tool's change-hint run.
    pub(crate) fn primary_hints(&self) -> Option<&Hints> {
        self.hints.iter().find(|h| h.tool == self.alike)
    }
    /// Whether `tool` is one of alike's (not a peer).
    pub(crate) fn is_alike(&self, tool: &str) -> bool {
        self.alike_tools.iter().any(|t| t == tool)
    }
    /// The result of `tool` at `step` in the primary mode.
    pub(crate) fn get(&self, tool: &str, step: Step) -> Option<&StepResult> {
        let primary = self.modes.first().copied().unwrap_or(Cache::Warm);
        self.steps.iter().find(|s| s.tool == tool && s.step == step && s.cache == primary)
    }
}

fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map(|k| format!("{:.1} GiB", k / 1048576.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    vec![
        ("date".into(), date),
        ("cores (nproc)".into(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string()),
        ("CPU".into(), model),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
    ]
}

/// Same length and bytes.
fn same_content(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let (fa, fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ra, mut rb) =
        (std::io::BufReader::with_capacity(1 << 20, fa), std::io::BufReader::with_capacity(1 << 20, fb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = ra.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        rb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn find_file(dir: &Path, name: &std::ffi::OsStr) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name() == Some(name) {
            return Some(p);
        }
    }
    None
}

struct Runner<'a> {
    cfg: &'a Config,
    scratch: PathBuf,
    primary: Cache,
}

impl Runner<'_> {
    /// Sets the page cache up for a step that reads `inputs`.
    fn prepare(&self, cache: Cache, inputs: &[&Path]) {
        match cache {
            Cache::Cold => {
                measure::drop_caches();
            }
            Cache::Warm => {
                measure::sync();
                for p in inputs {
                    measure::prime(p);
                }
            }
        }
    }
    fn measured(&self, cmd: &Cmd, cache: Cache, inputs: &[&Path]) -> Result<Measured> {
        self.prepare(cache, inputs);
        measure::run(cmd, &self.scratch)
    }
    fn quiet(&self, cmd: &Cmd) -> Result<()> {
        measure::run(cmd, &self.scratch).map(|_| ())
    }
    fn primary(&self) -> Cache {
        self.primary
    }
}

/// Runs everything `cfg` asks for.
pub(crate) fn run(cfg: &Config) -> Result<Results> {
    let t0 = std::time::Instant::now();
    let mut res = Results { machine: machine(), load: (measure::load1(), f64::NAN), ..Default::default() };
    let scratch = cfg.work.join(if cfg.smoke { "smoke" } else { "run" });
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    res.cold_ok = measure::drop_caches();
    res.modes = cfg.modes.clone();
    if !res.cold_ok && res.modes.contains(&Cache::Cold) {
        eprintln!("alike-bench: cannot drop the page cache (not root?): running warm only");
        res.modes.retain(|m| *m == Cache::Warm);
        if res.modes.is_empty() {
            res.modes.push(Cache::Warm);
        }
    }
    let r = Runner { cfg, scratch: scratch.clone(), primary: res.modes[0] };
    let pair = match &cfg.pair_dir {
        Some(d) => images::pair(d, cfg.size_mib, false)?,
        None => images::pair(&cfg.work.join(format!("pair-{}", cfg.size_mib)), cfg.size_mib, true)?,
    };
    res.v1_size = std::fs::metadata(&pair.v1)?.len();
    res.v1_data = images::allocated_bytes(&pair.v1)?;
    res.pair = Some(pair.clone());
    for t in &cfg.tools {
        res.tools.push((t.name.clone(), t.version.clone(), t.settings()));
        if t.kind == Kind::Alike {
            res.alike_tools.push(t.name.clone());
        }
    }
    res.alike = res.alike_tools.first().cloned().context("alike is always configured")?;

    eprintln!("measuring ceilings");
    let (sample, secs) = if cfg.smoke { (8 << 20, 0.02) } else { (256 << 20, 0.5) };
    res.ceilings = ceilings::measure(&pair.v1, 3, sample, secs, res.cold_ok)?;

    for cache in res.modes.clone() {
        eprintln!("comparison, page cache {}", cache.name());
        if let Err(e) = compare(&r, cache, &pair, &mut res) {
            res.errors.push(format!("comparison ({}): {e:#}", cache.name()));
        }
    }
    res.dedup.extend(dedup_from_steps(&res));
    if let Some((bin, _)) = &cfg.casync {
        eprintln!("casync on the ext4 pair: stored bytes");
        casync_dedup(&r, bin, "ext4", &pair, &mut res);
    }
    if let Some((dir, build)) = &cfg.ntfs {
        eprintln!("NTFS pair: stored bytes");
        match images::ntfs_pair(dir, cfg.size_mib, *build) {
            Ok(p) => {
                if let Err(e) = ntfs_dedup(&r, &p, &mut res) {
                    res.errors.push(format!("NTFS pair: {e:#}"));
                }
                if let Some((bin, _)) = &cfg.casync {
                    eprintln!("casync on the NTFS pair: stored bytes");
                    casync_dedup(&r, bin, "NTFS", &p, &mut res);
                }
            }
            Err(e) => res.errors.push(format!("NTFS pair: {e:#}")),
        }
    }
    let alike = cfg.tools.iter().find(|t| t.kind == Kind::Alike).context("alike is always configured")?;
    if cfg.hints {
        for t in cfg.tools.iter().filter(|t| t.kind == Kind::Alike) {
            eprintln!("change hints: {}", t.name);
            match hints(&r, t, &pair) {
                Ok(h) => res.hints.push(h),
                Err(e) => res.errors.push(format!("change hints, {}: {e:#}", t.name)),
            }
        }
    }
    for &mib in &cfg.scaling_mib {
        eprintln!("scaling: {mib} MiB");
        match scale(&r, alike, &pair, mib) {
            Ok(s) => res.scaling.push(s),
            Err(e) => res.errors.push(format!("scaling {mib} MiB: {e:#}")),
        }
    }
    // Thread counts interleaved round by round, each step's fastest kept:
    // on a shared machine a neighbour's burst then costs one round, not one
    // thread count.
    for round in 0..cfg.core_rounds.max(1) {
        for &n in &cfg.core_threads {
            eprintln!("core scaling: --threads {n} (round {})", round + 1);
            match core_run(&r, alike, &pair, n) {
                Ok(c) => match res.cores.iter_mut().find(|x| x.threads == n) {
                    Some(x) => x.keep_fastest(c),
                    None => res.cores.push(c),
                },
                Err(e) => res.errors.push(format!("core scaling, {n} threads: {e:#}")),
            }
        }
    }
    for &n in &cfg.many_chunks {
        eprintln!("many chunks: {n}");
        match many(&r, alike, n) {
            Ok(x) => res.many.push(x),
            Err(e) => res.errors.push(format!("many chunks {n}: {e:#}")),
        }
    }
    if !cfg.smoke {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    res.load.1 = measure::load1();
    res.total_secs = t0.elapsed().as_secs_f64();
    Ok(res)
}

/// A backup step of a phase: which step, of which image, under which name.
type Planned<'a> = (Step, &'a Path, &'static str);

/// The comparison in one page-cache mode, step-major: every tool does a
/// step before any does the next, so the tools of one step run close in
/// time (and load).
fn compare(r: &Runner<'_>, cache: Cache, pair: &Pair, res: &mut Results) -> Result<()> {
    let tools = &r.cfg.tools;
    let slug =
        |t: &Tool| -> String { t.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect() };
    let phases: [(&str, Vec<Planned<'_>>); 2] = [
        (
            "A",
            vec![
                (Step::First, &pair.v1, "v1"),
                (Step::Inplace, &pair.v2_inplace, "v2"),
                (Step::Rerun, &pair.v2_inplace, "v2-rerun"),
            ],
        ),
        ("B", vec![(Step::FirstB, &pair.v1, "v1"), (Step::Fresh, &pair.v2_fresh, "v2-fresh")]),
    ];
    for (phase, plan) in phases {
        let repos: Vec<Repo> =
            tools.iter().map(|t| Repo::new(r.scratch.join(format!("{}-{phase}", slug(t))))).collect();
        // A tool that fails is dropped from the rest of the phase; the others go on.
        let mut alive: Vec<bool> = vec![true; tools.len()];
        let mut before = vec![0u64; tools.len()];
        for (i, t) in tools.iter().enumerate() {
            repos[i].remove();
            if let Err(e) = r.quiet(&t.init(&repos[i])) {
                res.errors.push(format!("{} init: {e:#}", t.name));
                alive[i] = false;
            }
            before[i] = measure::dir_bytes(&repos[i].dir);
        }
        for &(step, image, name) in &plan {
            for (i, t) in tools.iter().enumerate() {
                if !alive[i] {
                    continue;
                }
                let load = measure::load1();
                let m = match r.measured(&t.backup(&repos[i], image, name, step == Step::Rerun), cache, &[image]) {
                    Ok(m) => m,
                    Err(e) => {
                        res.errors.push(format!("{} {} ({}): {e:#}", t.name, step.name(), cache.name()));
                        alive[i] = false;
                        continue;
                    }
                };
                let after = measure::dir_bytes(&repos[i].dir);
                res.steps.push(StepResult {
                    tool: t.name.clone(),
                    step,
                    m,
                    image_bytes: std::fs::metadata(image)?.len(),
                    data_bytes: images::allocated_bytes(image)?,
                    repo_bytes: after,
                    added_bytes: after.saturating_sub(before[i]),
                    load,
                    restored_disk_bytes: None,
                    restore_ok: None,
                    cache,
                    sync_secs: 0.0,
                });
                before[i] = after;
            }
        }
        if phase == "A" {
            for (i, t) in tools.iter().enumerate() {
                if !alive[i] {
                    continue;
                }
                if let Err(e) = restore(r, t, &repos[i], cache, pair, before[i], res) {
                    res.errors.push(format!("{} restore ({}): {e:#}", t.name, cache.name()));
                }
            }
        }
        for repo in &repos {
            repo.remove();
        }
    }
    Ok(())
}

fn restore(
    r: &Runner<'_>,
    t: &Tool,
    repo: &Repo,
    cache: Cache,
    pair: &Pair,
    repo_bytes: u64,
    res: &mut Results,
) -> Result<()> {
    let out_dir = r.scratch.join("restore");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir)?;
    let (cmd, expect) = t.restore(repo, &pair.v2_inplace, "v2-rerun", &out_dir);
    let load = measure::load1();
    let m = r.measured(&cmd, cache, &[])?;
    let ts = std::time::Instant::now();
    measure::sync();
    let sync_secs = ts.elapsed().as_secs_f64();
    let file = if expect.is_file() {
        expect
    } else {
        find_file(&out_dir, pair.v2_inplace.file_name().unwrap_or_default())
            .context("the restored image is not where it should be")?
    };
    let meta = std::fs::metadata(&file)?;
    let restore_ok = if r.cfg.verify { Some(same_content(&file, &pair.v2_inplace)?) } else { None };
    res.steps.push(StepResult {
        tool: t.name.clone(),
        step: Step::Restore,
        m,
        image_bytes: meta.len(),
        data_bytes: images::allocated_bytes(&pair.v2_inplace)?,
        repo_bytes,
        added_bytes: 0,
        load,
        restored_disk_bytes: Some(std::os::unix::fs::MetadataExt::blocks(&meta) * 512),
        restore_ok,
        cache,
        sync_secs,
    });
    let _ = std::fs::remove_dir_all(&out_dir);
    Ok(())
}

fn alike_json(m: &Measured) -> Result<serde_json::Value> {
    let line = m.stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).context("no JSON from alike")?;
    Ok(serde_json::from_str(line)?)
}

fn hints(r: &Runner<'_>, alike: &Tool, pair: &Pair) -> Result<Hints> {
    let dir = r.scratch.join("hints");
    let _ = std::fs::remove_dir_all(&dir);
    let fx = images::vhdx_chain(&pair.v1, &dir.join("images"), 2.0, 7)?;
    let repo = Repo::new(dir.join("repo"));
    r.quiet(&alike.init(&repo))?;
    let cache = r.primary();
    let full = r.measured(&alike.backup(&repo, &fx.base, "base", false), cache, &[&fx.base])?;
    let empty = r.measured(&alike.backup(&repo, &fx.empty, "empty", false), cache, &[&fx.base, &fx.empty])?;
    let incr = r.measured(&alike.backup(&repo, &fx.child, "child", false), cache, &[&fx.base, &fx.child])?;
    let (jf, ji) = (alike_json(&full)?, alike_json(&incr)?);
    let h = Hints {
        tool: alike.name.clone(),
        changed: fx.changed,
        read: ji["read_bytes"].as_u64().unwrap_or(0),
        full_read: jf["read_bytes"].as_u64().unwrap_or(0),
        incremental: ji["disks"][0]["incremental"].as_bool().unwrap_or(false)
            && alike_json(&empty)?["disks"][0]["incremental"].as_bool().unwrap_or(false),
        size: res_size(&pair.v1)?,
        full,
        empty,
        incr,
    };
    repo.remove();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(h)
}

fn res_size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)?.len())
}

fn scale(r: &Runner<'_>, alike: &Tool, pair: &Pair, mib: u64) -> Result<Scale> {
    let repo = Repo::new(r.scratch.join(format!("scale-{mib}")));
    repo.remove();
    let cmd = Cmd::new(std::env::current_exe()?)
        .arg(crate::synthetic::TILED_ARG)
        // The library in this process, with the allocator set as the alike CLI sets it.
        .env("MALLOC_ARENA_MAX", "1")
        .arg(&repo.dir)
        .arg(repo.dir.with_extension("cache"))
        .arg(&pair.v1)
        .arg((mib << 20).to_string())
        .args(alike.chunking.iter());
    let m = r.measured(&cmd, r.primary(), &[&pair.v1]);
    let repo_bytes = measure::dir_bytes(&repo.dir);
    repo.remove();
    let m = m?;
    let data = alike_json(&m)?["allocated"].as_u64().unwrap_or(0);
    Ok(Scale { size: mib << 20, data, m, repo_bytes })
}

fn many(r: &Runner<'_>, alike: &Tool, n: u64) -> Result<(u64, Measured, u64)> {
    let repo = Repo::new(r.scratch.join(format!("many-{n}")));
    repo.remove();
    let cmd = Cmd::new(std::env::current_exe()?)
        .arg(crate::synthetic::SYNTHETIC_ARG)
        .env("MALLOC_ARENA_MAX", "1")
        .arg(&repo.dir)
        .arg(repo.dir.with_extension("cache"))
        .arg(n.to_string())
        .args(alike.chunking.iter());
    let m = r.measured(&cmd, Cache::Warm, &[]);
    let bytes = measure::dir_bytes(&repo.dir);
    repo.remove();
    Ok((n, m?, bytes))
}

/// The thread counts of a core-scaling run: 1, 2, 4, … up to `cores`, and
/// `cores` itself.
pub(crate) fn thread_counts(cores: usize) -> Vec<usize> {
    let mut v: Vec<usize> =
        std::iter::successors(Some(1usize), |n| n.checked_mul(2)).take_while(|&n| n <= cores).collect();
    if v.last() != Some(&cores.max(1)) {
        v.push(cores.max(1));
    }
    v
}

fn core_run(r: &Runner<'_>, alike: &Tool, pair: &Pair, threads: usize) -> Result<CoreRun> {
    let repo = Repo::new(r.scratch.join(format!("cores-{threads}")));
    repo.remove();
    r.quiet(&alike.init(&repo))?;
    let n = threads.to_string();
    let cache = r.primary();
    let with_threads = |c: Cmd| c.arg("--threads").arg(&n);
    let backup = r.measured(&with_threads(alike.backup(&repo, &pair.v1, "v1", false)), cache, &[&pair.v1]);
    let rerun = backup.and_then(|b| {
        Ok((b, r.measured(&with_threads(alike.backup(&repo, &pair.v1, "v1", true)), cache, &[&pair.v1])?))
    });
    let out_dir = r.scratch.join(format!("cores-{threads}-restore"));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir)?;
    let result = rerun.and_then(|(backup, rerun)| {
        let (cmd, out) = alike.restore(&repo, &pair.v1, "v1", &out_dir);
        let restore = r.measured(&with_threads(cmd), cache, &[])?;
        if r.cfg.verify {
            anyhow::ensure!(same_content(&out, &pair.v1)?, "the restored image differs from v1");
        }
        Ok(CoreRun { threads, backup, rerun, restore })
    });
    let _ = std::fs::remove_dir_all(&out_dir);
    repo.remove();
    result
}

/// casync's stored bytes on a pair (`casync make --compression=zstd`: 64 KiB
/// buzhash chunks, zstd, one file per chunk): repository A gets v1 then v2
/// in place; B, a copy of A after v1 (hard links: casync never rewrites a
/// chunk or an index), v2 afresh. A repository is the chunk store and the
/// `.caibx` indexes, so the indexes count, as alike's manifests and maps do.
fn casync_dedup(r: &Runner<'_>, bin: &Path, label: &str, pair: &Pair, res: &mut Results) {
    let cache = r.primary();
    let dir = r.scratch.join(format!("casync-{}", label.to_lowercase()));
    let (a, b) = (dir.join("A"), dir.join("B"));
    let make = |repo: &Path, index: &str, image: &Path| -> Result<Measured> {
        let cmd = Cmd::new(bin)
            .arg("make")
            .arg(format!("--store={}", repo.join("store").display()))
            .arg("--compression=zstd")
            .arg(repo.join(index))
            .arg(image);
        r.measured(&cmd, cache, &[image])
    };
    let out = (|| -> Result<PairDedup> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&a)?;
        let first = make(&a, "v1.caibx", &pair.v1)?;
        let v1 = measure::dir_bytes(&a);
        r.quiet(&Cmd::new("cp").arg("-al").arg(&a).arg(&b))?;
        make(&a, "v2.caibx", &pair.v2_inplace)?;
        make(&b, "v2-fresh.caibx", &pair.v2_fresh)?;
        Ok(PairDedup {
            pair: label.into(),
            tool: "casync".into(),
            v1,
            inplace: Some(measure::dir_bytes(&a) - v1),
            fresh: Some(measure::dir_bytes(&b) - v1),
            v1_secs: first.secs,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    match out {
        Ok(d) => res.dedup.push(d),
        Err(e) => res.errors.push(format!("casync on the {label} pair: {e:#}")),
    }
}

/// The ext4 pair's stored bytes, from the comparison's steps (primary mode).
fn dedup_from_steps(res: &Results) -> Vec<PairDedup> {
    let mut out = Vec::new();
    for (tool, _, _) in &res.tools {
        let Some(first) = res.get(tool, Step::First) else { continue };
        out.push(PairDedup {
            pair: "ext4".into(),
            tool: tool.clone(),
            v1: first.repo_bytes,
            inplace: res.get(tool, Step::Inplace).map(|s| s.added_bytes),
            fresh: res.get(tool, Step::Fresh).map(|s| s.added_bytes),
            v1_secs: first.m.secs,
        });
    }
    out
}

/// Every tool on the NTFS pair: repository A gets v1 then v2 in place,
/// repository B v1 then v2 afresh; only sizes (and the first backup's
/// time) are kept.
fn ntfs_dedup(r: &Runner<'_>, pair: &Pair, res: &mut Results) -> Result<()> {
    let cache = r.primary();
    for t in &r.cfg.tools {
        let slug: String = t.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let one = |phase: &str, second: &Path, name: &str| -> Result<(u64, u64, f64)> {
            let repo = Repo::new(r.scratch.join(format!("ntfs-{slug}-{phase}")));
            repo.remove();
            let out = (|| {
                r.quiet(&t.init(&repo))?;
                let m = r.measured(&t.backup(&repo, &pair.v1, "v1", false), cache, &[&pair.v1])?;
                let v1 = measure::dir_bytes(&repo.dir);
                r.measured(&t.backup(&repo, second, name, false), cache, &[second])?;
                Ok((v1, measure::dir_bytes(&repo.dir) - v1, m.secs))
            })();
            repo.remove();
            out
        };
        match one("A", &pair.v2_inplace, "v2").and_then(|a| Ok((a, one("B", &pair.v2_fresh, "v2-fresh")?))) {
            Ok(((v1, inplace, secs), (_, fresh, _))) => res.dedup.push(PairDedup {
                pair: "NTFS".into(),
                tool: t.name.clone(),
                v1,
                inplace: Some(inplace),
                fresh: Some(fresh),
                v1_secs: secs,
            }),
            Err(e) => res.errors.push(format!("{} on the NTFS pair: {e:#}", t.name)),
        }
    }
    Ok(())
}
