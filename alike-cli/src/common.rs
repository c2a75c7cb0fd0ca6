//! What every command shares: opening the store, secrets from files, the
//! progress bar, Ctrl-C, and printing.

use std::io::{IsTerminal, Read};
use std::path::Path;

use alike::{CancelToken, ErrorKind, Progress, Store, StoreBuilder};
use anyhow::{Context, Result, bail};
use clap::Args;

use crate::Cli;

/// `--json`.
#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct JsonArg {
    /// Print JSON (the report as the library defines it).
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--threads`.
#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct ThreadsArg {
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
}

/// The largest secret file read: a passphrase or key file is small, and a
/// mistaken `/dev/zero` must not be read forever.
const MAX_SECRET: u64 = 64 << 10;

/// Reads a passphrase (or password) from `path`: a regular file of at most
/// 64 KiB, its trailing newline removed. Its content never appears in an
/// error.
pub(crate) fn read_secret(path: &Path, what: &str) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("reading {what} file {}", path.display()))?;
    let m = f.metadata().with_context(|| format!("reading {what} file {}", path.display()))?;
    if !m.is_file() {
        bail!("{what} file {} is not a regular file", path.display());
    }
    let mut buf = Vec::new();
    f.take(MAX_SECRET + 1).read_to_end(&mut buf).with_context(|| format!("reading {what} file {}", path.display()))?;
    if buf.len() as u64 > MAX_SECRET {
        bail!("{what} file {} is larger than {} KiB: not a passphrase file", path.display(), MAX_SECRET >> 10);
    }
    let s = String::from_utf8(buf).map_err(|_| anyhow::anyhow!("{what} file {} is not UTF-8 text", path.display()))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

/// The store's passphrase: `--password-file`, else `ALIKE_PASSWORD`, else a
/// prompt on a terminal (twice when `confirm`).
pub(crate) fn passphrase(cli: &Cli, confirm: bool) -> Result<Option<String>> {
    if let Some(f) = &cli.password_file {
        return Ok(Some(read_secret(f, "password")?));
    }
    if let Ok(p) = std::env::var("ALIKE_PASSWORD") {
        return Ok(Some(p));
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let p = rpassword::prompt_password("Store passphrase: ")?;
        if confirm && rpassword::prompt_password("Repeat passphrase: ")? != p {
            bail!("the passphrases do not match");
        }
        return Ok(Some(p));
    }
    Ok(None)
}

pub(crate) fn builder(cli: &Cli) -> StoreBuilder {
    let mut b = Store::builder();
    if let Some(d) = &cli.cache_dir {
        b.cache_dir(d);
    }
    if let Some(k) = &cli.key_file {
        b.key_file(k);
    }
    b
}

pub(crate) fn store_path(cli: &Cli) -> Result<String> {
    cli.store.clone().context("no store given: use --store PATH|URL or set ALIKE_STORE")
}

/// Opens `--store`, asking for a passphrase only if the store needs one.
pub(crate) fn open(cli: &Cli) -> Result<Store> {
    let path = store_path(cli)?;
    let mut b = builder(cli);
    if cli.key_file.is_none() {
        if let Some(p) = cli
            .password_file
            .is_some()
            .then(|| passphrase(cli, false))
            .transpose()?
            .flatten()
            .or_else(|| std::env::var("ALIKE_PASSWORD").ok())
        {
            b.passphrase(p);
        }
    }
    match b.open_at(&path) {
        Err(e) if e.kind() == ErrorKind::PassphraseRequired => match passphrase(cli, false)? {
            Some(p) => Ok(b.passphrase(p).open_at(&path)?),
            None => Err(e.into()),
        },
        r => Ok(r?),
    }
}

/// A progress bar on a terminal (none with `--quiet` or when stderr is not one).
pub(crate) struct Bar {
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    pub(crate) fn new(cli: &Cli, what: &'static str) -> Bar {
        if cli.quiet || !std::io::stderr().is_terminal() {
            return Bar { bar: None };
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what);
        Bar { bar: Some(bar) }
    }
    pub(crate) fn callback(&self) -> Option<impl Fn(&Progress) + Send + Sync + 'static> {
        let bar = self.bar.clone()?;
        Some(move |p: &Progress| {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
        })
    }
    pub(crate) fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A token that Ctrl-C cancels: the operation stops at the next block,
/// removes its unfinished spool files, and the command exits with status 130.
pub(crate) fn cancel_on_ctrl_c() -> CancelToken {
    let token = CancelToken::new();
    let t = token.clone();
    // Only one handler per process; a second call (never made) would fail harmlessly.
    let _ = ctrlc::set_handler(move || t.cancel());
    token
}

/// Runs a long operation with a progress bar (unless quiet) and Ctrl-C
/// cancelling it; `with` gets the progress callback (if any) and the token.
pub(crate) fn long<T>(
    cli: &Cli,
    what: &'static str,
    with: impl FnOnce(Option<Box<dyn Fn(&Progress) + Send + Sync>>, CancelToken) -> alike::Result<T>,
) -> Result<T> {
    let bar = Bar::new(cli, what);
    let cb = bar.callback().map(|f| Box::new(f) as Box<dyn Fn(&Progress) + Send + Sync>);
    let r = with(cb, cancel_on_ctrl_c());
    bar.done();
    Ok(r?)
}

/// Prints a report as JSON on stdout.
pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

pub(crate) fn alike_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn parse_rate(s: &str) -> std::result::Result<u64, String> {
    let (num, mult) = match s.trim().to_ascii_uppercase() {
        t if t.ends_with('K') => (t[..t.len() - 1].to_string(), 1u64 << 10),
        t if t.ends_with('M') => (t[..t.len() - 1].to_string(), 1 << 20),
        t if t.ends_with('G') => (t[..t.len() - 1].to_string(), 1 << 30),
        t => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a rate like 500K, 20M or 1G"))?;
    if n.is_nan() || n <= 0.0 {
        return Err(format!("{s:?}: the rate must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

pub(crate) fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}
