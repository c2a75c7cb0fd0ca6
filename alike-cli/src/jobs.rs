//! `alike job`: jobs of a configuration file (`docs/config.md`) run on
//! processors made for them — `run` (several jobs at once, each on its own
//! processor, queued while its pool has no free address) and `sweep`
//! (remove what a killed run left).

use std::path::PathBuf;
use std::sync::Arc;

use alike::processors::{JobEvent, Orchestrator, RunJobOptions};
use alike::remote::ProcessorEvent;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::Cli;
use crate::common::{cancel_on_ctrl_c, print_json};

/// `alike job`.
#[derive(Args, Debug)]
pub(crate) struct JobArgs {
    /// The configuration file.
    #[arg(long, value_name = "FILE", env = "ALIKE_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: JobCmd,
}

#[derive(Subcommand, Debug)]
enum JobCmd {
    /// Run jobs (by name) on processors of their pools, all at once; each
    /// waits ("queued: no free address in pool P") while its pool has no
    /// free address. Leftovers of a killed earlier run are removed first.
    /// Prints one JSON line per job (with --json) or a summary line.
    Run(RunArgs),
    /// Remove processors (and everything made for them) that a killed run
    /// of this configuration's orchestrator left.
    Sweep(crate::common::JsonArg),
    /// Check the configuration file and print it as JSON (secrets are
    /// references: nothing secret is printed).
    Check,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The jobs to run.
    #[arg(required = true)]
    jobs: Vec<String>,
    /// Print each job's result and events as JSON lines.
    #[arg(long)]
    json: bool,
}

/// Runs `alike job`.
pub(crate) fn run(cli: &Cli, a: &JobArgs) -> Result<()> {
    let config = alike::Config::from_file(&a.config)?;
    match &a.cmd {
        JobCmd::Check => print_json(&config),
        JobCmd::Sweep(j) => {
            let o = Orchestrator::from_config(&config)?;
            let r = o.sweep()?;
            if j.json {
                print_json(&r)
            } else {
                let n: usize = r.iter().map(|r| r.removed.len()).sum();
                println!("removed {n} leftover objects");
                Ok(())
            }
        }
        JobCmd::Run(r) => run_jobs(cli, &config, r),
    }
}

fn run_jobs(cli: &Cli, config: &alike::Config, a: &RunArgs) -> Result<()> {
    for name in &a.jobs {
        config.job(name).with_context(|| format!("no job named {name:?} in {}", config.path.display()))?;
    }
    let (json, quiet) = (a.json, cli.quiet);
    let print = Arc::new(std::sync::Mutex::new(()));
    let opts = RunJobOptions::default().cancel_token(cancel_on_ctrl_c()).on_event(move |e| {
        let _g = print.lock();
        if json {
            if let Ok(l) = serde_json::to_string(&serde_json::json!({ "event": e })) {
                println!("{l}");
            }
        } else if !quiet {
            describe(e);
        }
    });
    let report = alike::processors::run_config_jobs(config, &a.jobs, &opts)?;
    let removed: Vec<String> = report.swept.iter().flat_map(|r| r.removed.clone()).collect();
    if !removed.is_empty() && !quiet && !json {
        eprintln!("removed leftovers of an earlier run: {}", removed.join(", "));
    }
    for j in &report.jobs {
        if json {
            print_json(j)?;
        } else if let Some(run) = &j.result {
            println!(
                "{}: {} VMs on {} (ready after {:.2} s, queued {:.2} s), {:.2} s",
                j.job,
                run.vms.len(),
                run.address,
                run.ready_after.as_secs_f64(),
                run.queued.as_secs_f64(),
                run.elapsed.as_secs_f64()
            );
        }
        if let Some(e) = &j.error {
            eprintln!("alike: job {}: {}", j.job, e.message);
        }
    }
    let failed = report.jobs.iter().filter(|j| j.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} of {} jobs failed", a.jobs.len());
    }
    Ok(())
}

fn describe(e: &JobEvent) {
    match e {
        JobEvent::Queued { job, message, .. } => eprintln!("{job}: {message}"),
        JobEvent::Provisioning { job, address, .. } => eprintln!("{job}: making a processor at {address}"),
        JobEvent::ProcessorReady { job, address, after_ms } => {
            eprintln!("{job}: processor {address} ready after {after_ms} ms")
        }
        JobEvent::VmStarted { job, vm } => eprintln!("{job}: backing up {vm}"),
        JobEvent::Worker { job, vm, event: ProcessorEvent::Warning(w) } => {
            eprintln!("{job}: {vm}: warning: {}", w.message)
        }
        JobEvent::TornDown { job, address } => eprintln!("{job}: processor {address} torn down"),
        _ => {}
    }
}
