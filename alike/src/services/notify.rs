//! Notifications of finished runs: a webhook (an HTTP POST of JSON) and
//! email (SMTP through `lettre`), each either per run or as a digest of
//! the runs that ended in a period.
//!
//! Each notifier reads the scheduler's events on a thread of its own
//! through a bounded channel: a slow or unreachable receiver never holds a
//! run up (it loses at worst events beyond 1024 behind, and the failure
//! is logged). A send is tried 3 times, 1 s and 4 s apart.
//!
//! The webhook's body (`docs/services.md` §Notifications):
//! `{"kind": "run" | "digest", "runs": [RunRecord…], "summary": "…"}`.
//! Email: a plain-text message, one paragraph per run, the subject naming
//! the worst result.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use alike_sched::{EventKind, RunRecord, RunResult, Scheduler};

use crate::{Error, Result};

/// How an email notifier talks to its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Security {
    /// Plain SMTP (a relay on this host or a test sink).
    None,
    /// SMTP, then STARTTLS (required).
    #[default]
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

/// An email notifier's server and addresses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EmailOptions {
    /// The SMTP server's host name.
    pub server: String,
    /// Its port (default 587).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Plain, STARTTLS or TLS.
    #[serde(default)]
    pub security: Security,
    /// The sender.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// A user name for SMTP AUTH.
    #[serde(default)]
    pub username: Option<String>,
    /// The password, by reference (a file or an environment variable;
    /// read at each send; never inline).
    #[serde(default)]
    pub password: Option<crate::config::SecretRef>,
}

fn default_port() -> u16 {
    587
}

impl EmailOptions {
    /// A server and addresses, STARTTLS on port 587.
    pub fn new(server: impl Into<String>, from: impl Into<String>, to: Vec<String>) -> EmailOptions {
        EmailOptions {
            server: server.into(),
            port: default_port(),
            security: Security::StartTls,
            from: from.into(),
            to,
            username: None,
            password: None,
        }
    }
}

/// Where a notifier sends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// POST JSON to this `http://` or `https://` URL.
    Webhook(String),
    /// Send an email.
    Email(EmailOptions),
}

/// A notifier: a target, which runs it tells about, and whether per run or
/// as a digest.
///
/// ```
/// use std::time::Duration;
/// use alike::services::notify::{EmailOptions, Notifier};
/// let hook = Notifier::webhook("http://127.0.0.1:9000/alike");
/// let mail = Notifier::email(EmailOptions::new("mail.example", "alike@example", vec!["ops@example".into()]))
///     .digest(Duration::from_secs(24 * 3600))
///     .problems_only(true);
/// # let _ = (hook, mail);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Notifier {
    target: Target,
    digest: Option<Duration>,
    problems_only: bool,
}

impl Notifier {
    /// A webhook.
    pub fn webhook(url: impl Into<String>) -> Notifier {
        Notifier { target: Target::Webhook(url.into()), digest: None, problems_only: false }
    }
    /// Email.
    pub fn email(o: EmailOptions) -> Notifier {
        Notifier { target: Target::Email(o), digest: None, problems_only: false }
    }
    /// One message for all the runs that ended within `every` of the first
    /// (and at [`super::Services::stop`]), rather than one per run.
    pub fn digest(mut self, every: Duration) -> Notifier {
        self.digest = Some(every);
        self
    }
    /// Only runs that did not end in success (warning, failed,
    /// interrupted, cancelled, skipped).
    pub fn problems_only(mut self, yes: bool) -> Notifier {
        self.problems_only = yes;
        self
    }

    /// Sends these runs now (a test message, or a front-end's own use).
    ///
    /// # Errors
    /// [`Error::Notify`] naming the target.
    pub fn send(&self, runs: &[RunRecord]) -> Result<()> {
        match &self.target {
            Target::Webhook(url) => send_webhook(url, runs, self.digest.is_some()),
            Target::Email(o) => send_email(o, runs),
        }
    }

    pub(crate) fn start(self, sched: &Arc<Scheduler>) -> Result<Running> {
        let events = sched.events().channel(1024);
        let (flush_tx, flush_rx) = mpsc::channel::<mpsc::Sender<()>>();
        let sched = Arc::downgrade(sched);
        let thread = alike_core::spawn("alike-notify", move || {
            let mut pending: Vec<RunRecord> = Vec::new();
            let mut first: Option<Instant> = None;
            loop {
                match events.recv_timeout(Duration::from_millis(200)) {
                    Ok(e) => {
                        if let EventKind::Finished { result, .. } = e.kind
                            && (!self.problems_only || result != RunResult::Success)
                        {
                            let Some(s) = sched.upgrade() else { return };
                            match s.run(e.run) {
                                Ok(r) if self.digest.is_some() => {
                                    first.get_or_insert_with(Instant::now);
                                    pending.push(r);
                                }
                                Ok(r) => self.deliver(&[r]),
                                Err(err) => tracing::error!(run = e.run, "notification: {err}"),
                            }
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                let flush = flush_rx.try_recv().ok();
                let due = match (self.digest, first) {
                    (Some(every), Some(t)) => t.elapsed() >= every,
                    _ => false,
                };
                if (due || flush.is_some()) && !pending.is_empty() {
                    self.deliver(&pending);
                    pending.clear();
                    first = None;
                }
                if let Some(ack) = flush {
                    let _ = ack.send(());
                }
                if sched.strong_count() == 0 {
                    if !pending.is_empty() {
                        self.deliver(&pending);
                    }
                    return;
                }
            }
        })?;
        Ok(Running { flush: flush_tx, _thread: thread })
    }

    fn deliver(&self, runs: &[RunRecord]) {
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=3 {
            match self.send(runs) {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(attempt, "notification not sent: {e}");
                    if attempt < 3 {
                        std::thread::sleep(wait);
                        wait *= 4;
                    }
                }
            }
        }
    }
}

/// A started notifier.
pub(crate) struct Running {
    flush: mpsc::Sender<mpsc::Sender<()>>,
    _thread: JoinHandle<()>,
}

impl Running {
    /// Sends a pending digest now and waits for it (at most 30 s).
    pub(crate) fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.flush.send(tx).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
    }
}

fn line(r: &RunRecord) -> String {
    let (read, new, stored) = r.totals();
    let mut s = format!(
        "run {} of job {}: {} ({} VM{}; read {read} B, new {new} B, stored {stored} B{})",
        r.id,
        r.job,
        r.result.name(),
        r.vms.len(),
        if r.vms.len() == 1 { "" } else { "s" },
        r.elapsed_seconds().map(|e| format!(", {e:.1} s")).unwrap_or_default()
    );
    for v in &r.vms {
        s.push_str(&format!("\n  {}: {}", v.vm, if v.result.is_empty() { "?" } else { &v.result }));
        if let Some(id) = &v.version {
            s.push_str(&format!(" version {id}"));
        }
        if let Some(e) = &v.error {
            s.push_str(&format!(" error: {e}"));
        }
        for w in &v.warnings {
            s.push_str(&format!("\n    warning: {w}"));
        }
    }
    for st in &r.steps {
        s.push_str(&format!("\n  step {}: {}", st.step, st.result));
        if let Some(e) = &st.error {
            s.push_str(&format!(" error: {e}"));
        }
    }
    if let Some(e) = &r.error {
        s.push_str(&format!("\n  error: {e}"));
    }
    s
}

/// The worst result among `runs`, for a subject line.
fn worst(runs: &[RunRecord]) -> RunResult {
    let rank = |r: RunResult| match r {
        RunResult::Failed => 6,
        RunResult::Interrupted => 5,
        RunResult::Cancelled => 4,
        RunResult::Skipped => 3,
        RunResult::Warning => 2,
        _ => 1,
    };
    runs.iter().map(|r| r.result).max_by_key(|r| rank(*r)).unwrap_or(RunResult::Success)
}

fn summary(runs: &[RunRecord]) -> String {
    runs.iter().map(line).collect::<Vec<_>>().join("\n\n")
}

fn redact(url: &str) -> String {
    // A webhook URL often carries a token in its path or query: name the host only.
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("webhook on {host}")
}

fn send_webhook(url: &str, runs: &[RunRecord], digest: bool) -> Result<()> {
    let fail = |reason: String| Error::Notify { target: redact(url), reason };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(fail("the URL must start with http:// or https://".into()));
    }
    let body = serde_json::json!({
        "kind": if digest { "digest" } else { "run" },
        "runs": runs,
        "summary": summary(runs),
    });
    let body = serde_json::to_vec(&body).map_err(|e| fail(e.to_string()))?;
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(15))).build().into();
    agent
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("alike/", env!("CARGO_PKG_VERSION")))
        .send(&body[..])
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn send_email(o: &EmailOptions, runs: &[RunRecord]) -> Result<()> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{Message, SmtpTransport, Transport};

    let fail = |reason: String| Error::Notify { target: format!("mail server {}:{}", o.server, o.port), reason };
    let subject = match runs {
        [one] => format!("alike: job {} {}", one.job, one.result.name()),
        _ => format!("alike: {} runs, worst {}", runs.len(), worst(runs).name()),
    };
    let mut m = Message::builder()
        .from(o.from.parse().map_err(|e| fail(format!("sender {:?}: {e}", o.from)))?)
        .subject(subject);
    for to in &o.to {
        m = m.to(to.parse().map_err(|e| fail(format!("recipient {to:?}: {e}")))?);
    }
    let msg = m.header(ContentType::TEXT_PLAIN).body(summary(runs)).map_err(|e| fail(e.to_string()))?;
    let builder = match o.security {
        Security::None => SmtpTransport::builder_dangerous(&o.server),
        Security::StartTls => SmtpTransport::starttls_relay(&o.server).map_err(|e| fail(e.to_string()))?,
        Security::Tls => SmtpTransport::relay(&o.server).map_err(|e| fail(e.to_string()))?,
    };
    let mut builder = builder.port(o.port).timeout(Some(Duration::from_secs(15)));
    if let Some(user) = &o.username {
        let pw = match &o.password {
            Some(p) => p.read().map_err(|e| fail(e.to_string()))?,
            None => return Err(fail("a username needs a password".into())),
        };
        builder = builder.credentials(Credentials::new(user.clone(), pw.expose().to_owned()));
    }
    builder.build().send(&msg).map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// A notifier in the configuration file (`[[notify]]`, `docs/services.md`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NotifyConfig {
    /// `webhook` or `email`.
    pub kind: NotifyKind,
    /// The webhook's URL.
    #[serde(default)]
    pub url: Option<String>,
    /// The email server and addresses.
    #[serde(default)]
    pub email: Option<EmailOptions>,
    /// Send a digest every this many seconds rather than a message per run.
    #[serde(default)]
    pub digest_seconds: Option<u64>,
    /// Only runs that did not end in success.
    #[serde(default)]
    pub problems_only: bool,
}

/// The kind of a [`NotifyConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NotifyKind {
    /// An HTTP POST of JSON.
    Webhook,
    /// Email over SMTP.
    Email,
}

impl NotifyConfig {
    /// The notifier it describes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the kind's settings are missing or
    /// out of range.
    pub fn notifier(&self) -> Result<Notifier> {
        let n = match (self.kind, &self.url, &self.email) {
            (NotifyKind::Webhook, Some(u), None) if u.starts_with("http://") || u.starts_with("https://") => {
                Notifier::webhook(u.clone())
            }
            (NotifyKind::Email, None, Some(e)) if !e.to.is_empty() => Notifier::email(e.clone()),
            _ => {
                return Err(Error::InvalidArgument(
                    "[[notify]]: a webhook takes an http(s) `url`, an email `[notify.email]` with recipients".into(),
                ));
            }
        };
        let n = match self.digest_seconds {
            Some(s) if (60..=7 * 86_400).contains(&s) => n.digest(Duration::from_secs(s)),
            Some(s) => {
                return Err(Error::InvalidArgument(format!("[[notify]] digest_seconds = {s}: 60..=604800")));
            }
            None => n,
        };
        Ok(n.problems_only(self.problems_only))
    }
}
