//! `alike serve`: the daemon (scheduler, REST API, `/metrics`, the web
//! Manager) in the foreground, a thin layer over `alike_serve::run`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// `alike serve` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// The configuration file (TOML; docs/serve.md).
    #[arg(long, required_unless_present = "hash_password")]
    config: Option<PathBuf>,
    /// Listen here instead of the configuration's `listen` (ADDR:PORT; port 0 picks one,
    /// printed on stderr as `alike serve: listening on URL`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Read a password from standard input, print its Argon2 PHC string (for
    /// `[serve.admin] password_hash`) and exit.
    #[arg(long)]
    hash_password: bool,
}

pub(crate) fn serve(a: &ServeArgs) -> Result<()> {
    if a.hash_password {
        let mut pw = String::new();
        std::io::stdin().take(4096).read_to_string(&mut pw).context("reading the password from standard input")?;
        let pw = pw.trim_end_matches(['\n', '\r']);
        if pw.is_empty() {
            bail!("empty password on standard input");
        }
        println!("{}", alike_serve::hash_password(pw)?);
        return Ok(());
    }
    let Some(config) = &a.config else { bail!("--config FILE is required") };
    let cfg = alike_serve::load_config(config)?;
    alike_serve::run(&cfg, a.listen)?;
    Ok(())
}
