//! Running one job on a processor: the blocking driver of
//! [`crate::protocol::Orchestrator`] over a [`Session`].

use std::time::{Duration, Instant};

use alike_core::CancelToken;

use super::{Output, RemoteError, Session};
use crate::protocol::{JobSpec, Orchestrator, Step, WorkerMessage};

/// The command that starts a worker when none is given.
pub const DEFAULT_COMMAND: &str = "alike processor";

/// How a job is run on a processor.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobOptions {
    /// The command line that starts the worker on the host (default
    /// [`DEFAULT_COMMAND`]; an absolute path where `alike` is not on the
    /// login's `PATH`). It holds no secret: secrets go in the job spec.
    pub command: String,
    /// How long the worker may take to say hello: 30 s.
    pub hello_timeout: Duration,
    /// After a cancel, how long the worker may take to stop and say so
    /// before the channel is closed on it: 30 s. Zero closes the channel at
    /// once (the worker sees its input end, and cancels by itself).
    pub cancel_grace: Duration,
    /// How often the cancel token is looked at: 100 ms.
    pub poll: Duration,
}

impl Default for JobOptions {
    fn default() -> JobOptions {
        JobOptions {
            command: DEFAULT_COMMAND.into(),
            hello_timeout: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(30),
            poll: Duration::from_millis(100),
        }
    }
}

impl JobOptions {
    /// Sets [`JobOptions::command`].
    pub fn command(mut self, c: impl Into<String>) -> Self {
        self.command = c.into();
        self
    }
    /// Sets [`JobOptions::hello_timeout`].
    pub fn hello_timeout(mut self, d: Duration) -> Self {
        self.hello_timeout = d;
        self
    }
    /// Sets [`JobOptions::cancel_grace`].
    pub fn cancel_grace(mut self, d: Duration) -> Self {
        self.cancel_grace = d;
        self
    }
}

/// Runs `spec` on the processor `session` is connected to: starts the
/// worker with `opts.command`, checks its hello, sends the job, hands every
/// event (`started`, `queued`, `progress`, `warning`) to `on_event` as it
/// arrives, and returns the `done` result. Cancelling `cancel` sends
/// `cancel` and waits up to `opts.cancel_grace` for the worker to stop.
///
/// # Errors
/// [`RemoteError::Job`] with the worker's failure; [`RemoteError::Cancelled`];
/// [`RemoteError::Protocol`] (another version — the job, and its secrets,
/// are then never sent —, a kind the worker does not run, a malformed or
/// too long line); [`RemoteError::Exited`] when the worker ends without a
/// result (its stderr's end in the message); [`RemoteError::Timeout`] when
/// it never says hello; the session's errors.
pub fn run_job(
    session: &Session,
    spec: JobSpec,
    opts: &JobOptions,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(&WorkerMessage),
) -> Result<serde_json::Value, RemoteError> {
    let host = session.host().clone();
    let (kind, id) = (spec.kind.clone(), spec.id.clone());
    let proc = session.exec(&opts.command)?;
    let mut orch = Orchestrator::new(spec);
    let started = Instant::now();
    let mut cancel_sent: Option<Instant> = None;
    let cancelled = || RemoteError::Cancelled { host: host.to_string(), job: kind.clone() };
    let result = loop {
        if cancel.is_cancelled() && cancel_sent.is_none() {
            if !orch.job_sent() || opts.cancel_grace.is_zero() {
                proc.close();
                return Err(cancelled());
            }
            tracing::info!(host = %host, job = %id, "cancelling the job");
            if proc.send(&Orchestrator::cancel_line()).is_err() {
                proc.close();
                return Err(cancelled());
            }
            cancel_sent = Some(Instant::now());
        }
        if cancel_sent.is_some_and(|t| t.elapsed() > opts.cancel_grace) {
            tracing::warn!(host = %host, job = %id, "the processor did not stop within the grace period: closing its channel");
            proc.close();
            return Err(cancelled());
        }
        if orch.hello().is_none() && started.elapsed() > opts.hello_timeout {
            proc.close();
            return Err(RemoteError::Timeout {
                host: host.host.clone(),
                port: host.port,
                what: "the processor's hello",
                after: opts.hello_timeout,
                hint: " (is the command a processor? `alike processor` says hello at once)",
            });
        }
        let line = match proc.recv(opts.poll) {
            Ok(None) => continue,
            Ok(Some(Output::Line(l))) => l,
            Ok(Some(Output::Closed { status, signal })) => {
                if cancel_sent.is_some() {
                    return Err(cancelled());
                }
                return Err(RemoteError::Exited {
                    host: host.to_string(),
                    command: opts.command.clone(),
                    status,
                    signal,
                    expected: if orch.hello().is_none() { "saying hello" } else { "giving a result" },
                    stderr: proc.stderr_tail(),
                });
            }
            Err(e) => {
                proc.close();
                return Err(e);
            }
        };
        let step = match orch.handle_line(&line) {
            Ok(s) => s,
            Err(source) => {
                proc.close();
                return Err(RemoteError::Protocol { host: host.to_string(), source });
            }
        };
        match step {
            Step::Send(bytes) => {
                if let Some(h) = orch.hello() {
                    tracing::debug!(host = %host, processor = %h.processor, job = %id, kind = %kind, "sending the job");
                }
                proc.send(&bytes)?;
            }
            Step::Event(e) => on_event(&e),
            Step::Finished(r) => break r,
        }
    };
    proc.close();
    match result {
        Ok(v) => Ok(v),
        Err(f) if f.kind == "cancelled" && cancel.is_cancelled() => Err(cancelled()),
        Err(failure) => Err(RemoteError::Job { host: host.to_string(), job: kind, id, failure: Box::new(failure) }),
    }
}
