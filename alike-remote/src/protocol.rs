//! The processor protocol, version 1: what an orchestrator and a processor
//! (`alike processor`, the worker) say to each other over the worker's
//! standard input and output — specified in `docs/processor-protocol.md`,
//! pinned by `testdata/processor-v1.json`.
//!
//! Sans I/O. Messages are JSON objects, one per line (`\n`-terminated, at
//! most [`MAX_LINE`] bytes). The worker speaks first ([`Hello`], naming its
//! version); the orchestrator answers with one [`JobSpec`] (its version, the
//! job's kind, parameters and secrets) — only after it checked the worker's
//! version, so secrets never reach a worker of another version — then may
//! send [`OrchestratorMessage::Cancel`]. The worker streams events
//! ([`WorkerMessage`]) and ends with `done` or `failed`.
//!
//! - [`LineDecoder`] cuts a byte stream into lines, refusing a line longer
//!   than its bound (the worker's output is untrusted input to the
//!   orchestrator).
//! - [`decode_worker`] / [`decode_orchestrator`] decode one line; a peer of
//!   another version is refused naming both versions
//!   ([`ProtocolError::Version`]).
//! - [`Orchestrator`] is the orchestrator's side as a small state machine:
//!   lines in, what to send and what happened out. Its call order: feed
//!   every line the worker writes to [`Orchestrator::handle_line`]; send the
//!   bytes of [`Step::Send`] to the worker; stop at [`Step::Finished`].
//!
//! Decoders are total: any bytes give a message or an error, never a panic,
//! and allocate no more than the line's length (serde_json also bounds
//! nesting at 128 levels).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line either side accepts, terminator excluded: 1 MiB. A job
/// spec or a result is a few KiB; a verify report naming much damage can be
/// larger, and still fits.
pub const MAX_LINE: usize = 1 << 20;

/// Errors of the protocol: a line that breaks it, or a peer that does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A line longer than the bound (the peer is broken or hostile).
    #[error("a line of more than {limit} bytes from the {from}: not a processor protocol message")]
    LineTooLong {
        /// The bound.
        limit: usize,
        /// Who sent it (`processor` or `orchestrator`).
        from: &'static str,
    },
    /// A line that is not a message of this protocol.
    #[error("malformed message from the {from}: {reason}")]
    Malformed {
        /// Who sent it.
        from: &'static str,
        /// What is wrong (serde's words: the field, the line and column).
        reason: String,
    },
    /// The peer speaks another version of the protocol.
    #[error("the {peer} speaks processor protocol v{theirs}, this {ours_role} speaks v{ours}: upgrade one of them")]
    Version {
        /// The peer (`processor` or `orchestrator`).
        peer: &'static str,
        /// Its version.
        theirs: u64,
        /// Our role.
        ours_role: &'static str,
        /// Our version.
        ours: u32,
    },
    /// A message the protocol does not allow at this point.
    #[error("unexpected {what} from the {from}: {why}")]
    Unexpected {
        /// The message's type.
        what: String,
        /// Who sent it.
        from: &'static str,
        /// Why it is not allowed.
        why: &'static str,
    },
    /// The worker does not run this kind of job.
    #[error("the processor does not run {kind:?} jobs (it runs: {})", supported.join(", "))]
    UnsupportedKind {
        /// The job's kind.
        kind: String,
        /// What the worker runs.
        supported: Vec<String>,
    },
}

impl alike_core::SeamError for ProtocolError {
    /// Another version is `UnsupportedVersion`; a kind the worker does not
    /// run, `InvalidArgument`; anything else breaks the protocol: `Other`.
    fn kind(&self) -> alike_core::ErrorKind {
        match self {
            ProtocolError::Version { .. } => alike_core::ErrorKind::UnsupportedVersion,
            ProtocolError::UnsupportedKind { .. } => alike_core::ErrorKind::InvalidArgument,
            _ => alike_core::ErrorKind::Other,
        }
    }
    fn retry(&self) -> alike_core::Retry {
        alike_core::Retry::Permanent
    }
}

/// A secret: a passphrase, key or credential. Never printed (`Debug` says
/// `<secret>`), wiped from memory when dropped; it travels only inside a
/// [`JobSpec`] on the worker's standard input.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// A secret holding `s`.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(Zeroizing::new(s.into()))
    }
    /// The secret's text (for the one place that uses it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// The secrets of a job, by name (`passphrase`, `key_file`,
/// `s3_secret_access_key`…: each job kind says which it takes, and refuses
/// others). `Debug` names them, never their values.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(BTreeMap<String, Secret>);

impl Secrets {
    /// No secrets.
    pub fn new() -> Secrets {
        Secrets::default()
    }
    /// Sets `name`.
    pub fn insert(&mut self, name: impl Into<String>, value: Secret) -> &mut Self {
        self.0.insert(name.into(), value);
        self
    }
    /// The secret called `name`.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name)
    }
    /// Removes and returns `name`.
    pub fn take(&mut self, name: &str) -> Option<Secret> {
        self.0.remove(name)
    }
    /// The names present.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The job an orchestrator gives a worker: the one `job` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JobSpec {
    /// The orchestrator's protocol version ([`PROTOCOL_VERSION`]).
    pub v: u64,
    /// The job's id, chosen by the orchestrator (echoed in `started`, used
    /// in the worker's log lines).
    pub id: String,
    /// What to do: `backup`, `restore`, `verify`… (the worker's `hello`
    /// lists what it runs).
    pub kind: String,
    /// The kind's parameters (an object; each kind documents its fields and
    /// refuses unknown ones).
    pub params: serde_json::Value,
    /// The job's secrets.
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    /// The shortest time between two `progress` events, in milliseconds
    /// (default 500; the worker clamps it to 10–60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_interval_ms: Option<u64>,
}

impl JobSpec {
    /// A spec of this version for `kind` with `params`.
    pub fn new(id: impl Into<String>, kind: impl Into<String>, params: serde_json::Value) -> JobSpec {
        JobSpec {
            v: u64::from(PROTOCOL_VERSION),
            id: id.into(),
            kind: kind.into(),
            params,
            secrets: Secrets::new(),
            progress_interval_ms: None,
        }
    }
    /// Sets the secrets.
    pub fn with_secrets(mut self, secrets: Secrets) -> JobSpec {
        self.secrets = secrets;
        self
    }
    /// Sets the progress interval.
    pub fn with_progress_interval_ms(mut self, ms: u64) -> JobSpec {
        self.progress_interval_ms = Some(ms);
        self
    }
}

/// What the orchestrator writes to the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum OrchestratorMessage {
    /// The job (exactly once, first, after the worker's `hello`).
    Job(JobSpec),
    /// Stop the job at the next block; the worker answers `failed` with
    /// kind `cancelled`. (Closing the worker's standard input cancels as
    /// well, with no answer: the channel is gone.)
    Cancel,
}

/// The worker's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Hello {
    /// The worker's protocol version.
    pub v: u64,
    /// The worker's program and version (`alike 0.1.0`), for messages.
    pub processor: String,
    /// The job kinds it runs.
    pub kinds: Vec<String>,
}

impl Hello {
    /// This build's hello.
    pub fn new(processor: impl Into<String>, kinds: &[&str]) -> Hello {
        Hello {
            v: u64::from(PROTOCOL_VERSION),
            processor: processor.into(),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The job began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Started {
    /// The job's id (as in the spec).
    pub job: String,
    /// Its kind.
    pub kind: String,
    /// The worker's process id (for diagnostics on the processor).
    pub pid: u32,
}

impl Started {
    /// A `started` event.
    pub fn new(job: impl Into<String>, kind: impl Into<String>, pid: u32) -> Started {
        Started { job: job.into(), kind: kind.into(), pid }
    }
}

/// The job waits for something before it can go on (a lock another job
/// holds, a free slot); it goes on by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Queued {
    /// What it waits for, for a person.
    pub reason: String,
}

impl Queued {
    /// A `queued` event.
    pub fn new(reason: impl Into<String>) -> Queued {
        Queued { reason: reason.into() }
    }
}

/// The job listens for a peer (a replication end that waits for the other
/// end to dial it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Listening {
    /// The address and port it listens on (`10.0.0.2:2812`, `[fd00::2]:2812`).
    pub address: String,
}

impl Listening {
    /// A `listening` event.
    pub fn new(address: impl Into<String>) -> Listening {
        Listening { address: address.into() }
    }
}

/// Bytes done in one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DiskProgress {
    /// The disk's position in the job (from 0).
    pub disk: u32,
    /// Bytes done (read for a backup, written for a restore).
    pub bytes_done: u64,
    /// The disk's size in bytes.
    pub bytes_total: u64,
}

impl DiskProgress {
    /// One disk's figures.
    pub fn new(disk: u32, bytes_done: u64, bytes_total: u64) -> DiskProgress {
        DiskProgress { disk, bytes_done, bytes_total }
    }
}

/// How far the job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProgressEvent {
    /// The stage (`scanning`, `backup`, `restore`, `verify`… as the
    /// engine's `Phase` names it).
    pub phase: String,
    /// Done so far in this stage (bytes, or the stage's own units).
    pub bytes_done: u64,
    /// This stage's total.
    pub bytes_total: u64,
    /// Per disk, where the job reads or writes disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskProgress>,
}

impl ProgressEvent {
    /// A `progress` event.
    pub fn new(phase: impl Into<String>, bytes_done: u64, bytes_total: u64, disks: Vec<DiskProgress>) -> Self {
        ProgressEvent { phase: phase.into(), bytes_done, bytes_total, disks }
    }
}

/// Something a person should know; the job goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Warning {
    /// For a person.
    pub message: String,
    /// The disk it is about, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u32>,
}

impl Warning {
    /// A `warning` event.
    pub fn new(message: impl Into<String>, disk: Option<u32>) -> Warning {
        Warning { message: message.into(), disk }
    }
}

/// The job succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Done {
    /// The job's report: the facade's report of the operation, serialised
    /// as the facade serialises it (a backup's `BackupReport`…).
    pub result: serde_json::Value,
}

impl Done {
    /// A `done` event.
    pub fn new(result: serde_json::Value) -> Done {
        Done { result }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Failure {
    /// The error's kind, as `ErrorKind::name` spells it (`cancelled`,
    /// `wrong_passphrase`, `not_found`…); an unknown name reads as `other`.
    pub kind: String,
    /// For a person: the error with its context.
    pub message: String,
    /// Whether a retry may succeed: `transient`, `permanent` or `unknown`.
    #[serde(default = "unknown")]
    pub retry: String,
    /// A host's or service's own code for the refusal, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

fn unknown() -> String {
    "unknown".into()
}

impl Failure {
    /// A failure.
    pub fn new(kind: impl Into<String>, message: impl Into<String>, retry: impl Into<String>) -> Failure {
        Failure { kind: kind.into(), message: message.into(), retry: retry.into(), code: None }
    }
    /// Sets the code.
    pub fn with_code(mut self, code: Option<String>) -> Failure {
        self.code = code;
        self
    }
}

/// The job failed (or was cancelled: kind `cancelled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Failed {
    /// Why.
    pub error: Failure,
}

/// What the worker writes to the orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerMessage {
    /// The first line: the worker's version and the kinds it runs.
    Hello(Hello),
    /// The job began.
    Started(Started),
    /// The job waits for something.
    Queued(Queued),
    /// The job listens for a peer.
    Listening(Listening),
    /// How far it is.
    Progress(ProgressEvent),
    /// Something a person should know.
    Warning(Warning),
    /// Success, with the result (the last line).
    Done(Done),
    /// Failure (the last line).
    Failed(Failed),
}

impl WorkerMessage {
    /// The message's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            WorkerMessage::Hello(_) => "hello",
            WorkerMessage::Started(_) => "started",
            WorkerMessage::Queued(_) => "queued",
            WorkerMessage::Listening(_) => "listening",
            WorkerMessage::Progress(_) => "progress",
            WorkerMessage::Warning(_) => "warning",
            WorkerMessage::Done(_) => "done",
            WorkerMessage::Failed(_) => "failed",
        }
    }
    /// A `failed` message.
    pub fn failed(error: Failure) -> WorkerMessage {
        WorkerMessage::Failed(Failed { error })
    }
}

/// One message as a line: compact JSON and `\n`. The line may hold secrets
/// (a job spec): it is wiped when dropped.
pub fn encode(msg: &impl Serialize) -> Zeroizing<Vec<u8>> {
    // Serialising our own message types cannot fail (string keys, no
    // non-finite floats); an empty object would be refused by the peer.
    let mut v = Zeroizing::new(serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec()));
    v.push(b'\n');
    v
}

/// What every version's first message shares: its type and version.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type")]
    ty: Option<String>,
    v: Option<serde_json::Value>,
}

fn malformed(from: &'static str, e: impl fmt::Display) -> ProtocolError {
    ProtocolError::Malformed { from, reason: e.to_string() }
}

/// The version a `hello` or `job` line claims: a non-negative integer, else
/// the line is malformed.
fn version_of(line: &[u8], from: &'static str, first: &str) -> Result<Option<u64>, ProtocolError> {
    let p: Probe = serde_json::from_slice(line).map_err(|e| malformed(from, e))?;
    if p.ty.as_deref() != Some(first) {
        return Ok(None);
    }
    match p.v {
        None => Err(malformed(from, format!("a {first} message without a version (\"v\")"))),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| malformed(from, format!("version {v} is not a whole number"))),
    }
}

/// Decodes one line the worker wrote. A `hello` of another version is
/// [`ProtocolError::Version`] (whatever else it holds: a later version may
/// say hello differently). Fields this version does not know are ignored
/// (a later worker may say more in an event); an unknown `type` is an error.
///
/// # Errors
/// [`ProtocolError::Malformed`], [`ProtocolError::Version`].
pub fn decode_worker(line: &[u8]) -> Result<WorkerMessage, ProtocolError> {
    if let Some(v) = version_of(line, "processor", "hello")?
        && v != u64::from(PROTOCOL_VERSION)
    {
        return Err(ProtocolError::Version {
            peer: "processor",
            theirs: v,
            ours_role: "orchestrator",
            ours: PROTOCOL_VERSION,
        });
    }
    serde_json::from_slice(line).map_err(|e| malformed("processor", e))
}

/// Decodes one line the orchestrator wrote. A `job` of another version is
/// [`ProtocolError::Version`]; a job with a field this version does not know
/// is refused (a setting the worker would ignore is a setting not honoured).
///
/// # Errors
/// [`ProtocolError::Malformed`], [`ProtocolError::Version`].
pub fn decode_orchestrator(line: &[u8]) -> Result<OrchestratorMessage, ProtocolError> {
    if let Some(v) = version_of(line, "orchestrator", "job")?
        && v != u64::from(PROTOCOL_VERSION)
    {
        return Err(ProtocolError::Version {
            peer: "orchestrator",
            theirs: v,
            ours_role: "processor",
            ours: PROTOCOL_VERSION,
        });
    }
    serde_json::from_slice(line).map_err(|e| malformed("orchestrator", e))
}

/// Cuts a byte stream into lines of at most `max` bytes (`\n` ends a line;
/// a `\r` before it is dropped; empty lines are skipped). Memory is the
/// bound plus one pushed chunk.
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    max: usize,
    from: &'static str,
    spent: bool,
}

impl LineDecoder {
    /// A decoder of lines from `from` (`processor` or `orchestrator`, for
    /// errors) of at most `max` bytes.
    pub fn new(max: usize, from: &'static str) -> LineDecoder {
        LineDecoder { buf: Vec::new(), max, from, spent: false }
    }

    /// Adds `data`, appending the lines it completes to `out`, in order.
    ///
    /// # Errors
    /// [`ProtocolError::LineTooLong`] once a line passes the bound; the
    /// lines completed before it are in `out` all the same. The decoder is
    /// then spent: the stream has no line boundary to resume at.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), ProtocolError> {
        if self.spent {
            return Err(self.too_long());
        }
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.buf.len() + i > self.max {
                return Err(self.too_long());
            }
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(&rest[..i]);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.is_empty() {
                out.push(line);
            }
            rest = &rest[i + 1..];
        }
        if self.buf.len() + rest.len() > self.max {
            return Err(self.too_long());
        }
        self.buf.extend_from_slice(rest);
        Ok(())
    }

    /// Bytes of an unfinished line held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn too_long(&mut self) -> ProtocolError {
        self.buf = Vec::new();
        self.spent = true;
        ProtocolError::LineTooLong { limit: self.max, from: self.from }
    }
}

/// What the orchestrator should do after a line.
#[derive(Debug)]
#[non_exhaustive]
pub enum Step {
    /// Write these bytes to the worker (the job line: it holds secrets).
    Send(Zeroizing<Vec<u8>>),
    /// An event to report (`started`, `queued`, `progress`, `warning`).
    Event(WorkerMessage),
    /// The job ended: its result, or why it failed. Nothing follows.
    Finished(Result<serde_json::Value, Failure>),
}

/// The orchestrator's side of one job, sans I/O: waits for the worker's
/// `hello`, checks its version and that it runs the job's kind, then hands
/// out the job line, then the events up to `done` or `failed`.
///
/// Call order: [`Orchestrator::handle_line`] for each line the worker
/// writes (a [`LineDecoder`] makes them), acting on each [`Step`]; after
/// [`Step::Finished`] or an error, nothing more. [`Orchestrator::cancel_line`]
/// once the job was sent, to ask the worker to stop.
#[derive(Debug)]
pub struct Orchestrator {
    job: Option<JobSpec>,
    kind: String,
    state: State,
    hello: Option<Hello>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    Running,
    Finished,
}

impl Orchestrator {
    /// The orchestrator of `job`.
    pub fn new(job: JobSpec) -> Orchestrator {
        let kind = job.kind.clone();
        Orchestrator { job: Some(job), kind, state: State::AwaitHello, hello: None }
    }

    /// The worker's hello, once it came.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// Whether the job line was handed out (a cancel now needs a message).
    pub fn job_sent(&self) -> bool {
        self.state != State::AwaitHello
    }

    /// Whether the job ended (`done` or `failed` came).
    pub fn finished(&self) -> bool {
        self.state == State::Finished
    }

    /// The `cancel` line.
    pub fn cancel_line() -> Zeroizing<Vec<u8>> {
        encode(&OrchestratorMessage::Cancel)
    }

    /// Takes one line the worker wrote.
    ///
    /// # Errors
    /// A malformed line, a worker of another version, a kind it does not
    /// run, a message out of order ([`ProtocolError`]).
    pub fn handle_line(&mut self, line: &[u8]) -> Result<Step, ProtocolError> {
        let msg = decode_worker(line)?;
        let what = msg.type_name();
        let unexpected = |why| ProtocolError::Unexpected { what: what.into(), from: "processor", why };
        match (self.state, msg) {
            (State::AwaitHello, WorkerMessage::Hello(h)) => {
                if !h.kinds.contains(&self.kind) {
                    return Err(ProtocolError::UnsupportedKind { kind: self.kind.clone(), supported: h.kinds });
                }
                self.hello = Some(h);
                self.state = State::Running;
                let job = self.job.take().map(OrchestratorMessage::Job);
                Ok(Step::Send(job.map(|j| encode(&j)).unwrap_or_default()))
            }
            (State::AwaitHello, m) => Err(ProtocolError::Unexpected {
                what: m.type_name().into(),
                from: "processor",
                why: "the first line must be hello",
            }),
            (State::Running, WorkerMessage::Hello(_)) => Err(unexpected("hello comes once, first")),
            (State::Running, WorkerMessage::Done(d)) => {
                self.state = State::Finished;
                Ok(Step::Finished(Ok(d.result)))
            }
            (State::Running, WorkerMessage::Failed(f)) => {
                self.state = State::Finished;
                Ok(Step::Finished(Err(f.error)))
            }
            (State::Running, m) => Ok(Step::Event(m)),
            (State::Finished, m) => Err(ProtocolError::Unexpected {
                what: m.type_name().into(),
                from: "processor",
                why: "nothing may follow done or failed",
            }),
        }
    }
}

/// Runs one fuzz input through every decoder the orchestrator exposes to a
/// worker's bytes: the line decoder, the message decoder, and the
/// orchestrator's state machine. For `fuzz/fuzz_targets/processor.rs` and
/// its stable smoke test; not an API.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let mut dec = LineDecoder::new(4096, "processor");
    let mut orch = Orchestrator::new(JobSpec::new("fuzz", "backup", serde_json::json!({})));
    // The first byte picks how the input is chunked, so that lines split
    // across pushes are exercised.
    let (chunk, body) = match data.split_first() {
        Some((&c, rest)) => (usize::from(c % 61) + 1, rest),
        None => (1, data),
    };
    for part in body.chunks(chunk) {
        let mut lines = Vec::new();
        let pushed = dec.push(part, &mut lines);
        for l in lines {
            let _ = decode_orchestrator(&l);
            match orch.handle_line(&l) {
                Ok(Step::Finished(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
        if pushed.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_across_pushes_and_bounded() {
        let mut d = LineDecoder::new(8, "processor");
        let push = |d: &mut LineDecoder, b: &[u8]| {
            let mut out = Vec::new();
            d.push(b, &mut out).map(|()| out)
        };
        assert!(push(&mut d, b"ab").unwrap().is_empty());
        assert_eq!(push(&mut d, b"c\r\n\nde\nf").unwrap(), vec![b"abc".to_vec(), b"de".to_vec()]);
        assert_eq!(d.pending(), 1);
        assert_eq!(push(&mut d, b"1234567\n").unwrap(), vec![b"f1234567".to_vec()]);
        // 9 bytes without a newline: refused as soon as it is known.
        assert!(matches!(push(&mut d, b"123456789"), Err(ProtocolError::LineTooLong { limit: 8, .. })));
        assert!(push(&mut d, b"\n").is_err(), "spent");
        // A long line ending in the same push too; the lines before it still come out.
        let mut d = LineDecoder::new(8, "processor");
        let mut out = Vec::new();
        assert!(matches!(d.push(b"ok\n123456789\n", &mut out), Err(ProtocolError::LineTooLong { .. })));
        assert_eq!(out, vec![b"ok".to_vec()]);
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        let e = decode_worker(br#"{"type":"hello","v":2,"something":"new"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the processor speaks processor protocol v2, this orchestrator speaks v1: upgrade one of them"
        );
        let e = decode_orchestrator(br#"{"type":"job","v":7,"id":"j"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the orchestrator speaks processor protocol v7, this processor speaks v1: upgrade one of them"
        );
        assert!(matches!(decode_worker(br#"{"type":"hello","v":"1"}"#), Err(ProtocolError::Malformed { .. })));
        assert!(matches!(decode_worker(br#"{"type":"hello"}"#), Err(ProtocolError::Malformed { .. })));
    }

    #[test]
    fn job_specs_refuse_unknown_fields_and_events_ignore_them() {
        let e = decode_orchestrator(br#"{"type":"job","v":1,"id":"j","kind":"backup","params":{},"bwlimit":5}"#);
        assert!(matches!(e, Err(ProtocolError::Malformed { .. })), "{e:?}");
        let m = decode_worker(br#"{"type":"warning","message":"m","severity":"high"}"#).unwrap();
        assert_eq!(m, WorkerMessage::Warning(Warning::new("m", None)));
        assert!(decode_worker(br#"{"type":"party"}"#).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let mut s = Secrets::new();
        s.insert("passphrase", Secret::new("hunter2"));
        let spec = JobSpec::new("j", "backup", serde_json::json!({})).with_secrets(s);
        let dbg = format!("{spec:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("passphrase"), "{dbg}");
    }

    #[test]
    fn the_orchestrator_sends_the_job_only_after_a_hello_it_accepts() {
        let job = JobSpec::new("j1", "backup", serde_json::json!({"vm":"a"}));
        let mut o = Orchestrator::new(job.clone());
        assert!(o.handle_line(br#"{"type":"progress","phase":"backup","bytes_done":0,"bytes_total":1}"#).is_err());
        let mut o = Orchestrator::new(job.clone());
        let e = o.handle_line(br#"{"type":"hello","v":1,"processor":"alike","kinds":["verify"]}"#).unwrap_err();
        assert_eq!(e.to_string(), "the processor does not run \"backup\" jobs (it runs: verify)");
        let mut o = Orchestrator::new(job.clone());
        let Step::Send(line) =
            o.handle_line(br#"{"type":"hello","v":1,"processor":"alike","kinds":["backup"]}"#).unwrap()
        else {
            panic!("expected the job line")
        };
        assert_eq!(decode_orchestrator(&line[..line.len() - 1]).unwrap(), OrchestratorMessage::Job(job));
        assert!(matches!(
            o.handle_line(br#"{"type":"started","job":"j1","kind":"backup","pid":7}"#).unwrap(),
            Step::Event(_)
        ));
        assert!(o.handle_line(br#"{"type":"hello","v":1,"processor":"alike","kinds":["backup"]}"#).is_err());
        let mut o2 = Orchestrator::new(JobSpec::new("j1", "backup", serde_json::json!({})));
        o2.handle_line(br#"{"type":"hello","v":1,"processor":"alike","kinds":["backup"]}"#).unwrap();
        let Step::Finished(Err(f)) = o2
            .handle_line(br#"{"type":"failed","error":{"kind":"cancelled","message":"the operation was cancelled"}}"#)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!((f.kind.as_str(), f.retry.as_str()), ("cancelled", "unknown"));
        assert!(o2.handle_line(br#"{"type":"done","result":{}}"#).is_err());
    }
}
