//! A WS-Management client for WMI on a Hyper-V host: Identify, WQL queries
//! and association queries (Enumerate with EPRs, then Pull until the end),
//! Get, and method invocation with reference and embedded-instance
//! arguments; methods that start a job (`ReturnValue` 4096) are followed
//! through `Msvm_ConcreteJob` until it ends, and a failed job's own error
//! text becomes [`Error::Job`].
//!
//! Layers: [`soap`] builds and decodes messages (sans I/O, total decoders:
//! the fuzz target `wsman` runs them); `ntlm` is the NTLMv2 initiator and
//! its session security; `http` is the transport (one persistent,
//! NTLM-authenticated connection, every message sealed). Only HTTP with
//! message encryption is spoken (what Windows ships on 5985); HTTPS comes
//! later.
//!
//! ```no_run
//! use alike_hyperv::wsman::{Client, ConnectOptions, wql_quote};
//!
//! let mut opts = ConnectOptions::new("http://hv01:5985/wsman", "Administrator", "secret");
//! opts.job_timeout(std::time::Duration::from_secs(600));
//! let c = Client::connect(&opts)?;
//! let vms = c.query(&format!("SELECT * FROM Msvm_ComputerSystem WHERE ElementName={}", wql_quote("web-01")))?;
//! # Ok::<(), alike_hyperv::Error>(())
//! ```

mod http;
pub(crate) mod ntlm;
pub mod soap;
pub mod tls;
mod xml;

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use soap::{Arg, Embedded, Epr, Filter, Identity, Instance, MethodOutput, Value, wql_quote};

use crate::{Error, Result};

/// How to reach a host.
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// `http://HOST:5985/wsman`.
    pub url: String,
    /// `user`, `DOMAIN\user` or `user@domain`.
    pub user: String,
    password: String,
    /// How long one request may take (also sent as `OperationTimeout`).
    pub operation_timeout: Duration,
    /// How long a job may run before [`Error::JobTimeout`].
    pub job_timeout: Duration,
    /// Items asked for per Pull.
    pub max_elements: u32,
    /// For `https://`: the server certificate to accept (required there:
    /// WinRM certificates are usually self-signed).
    pub tls: Option<tls::ServerCertCheck>,
    /// Authenticate with Basic instead of NTLM (HTTPS only: over HTTP the
    /// password would travel in clear).
    pub basic: bool,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("operation_timeout", &self.operation_timeout)
            .field("job_timeout", &self.job_timeout)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Options with 60 s requests, 30 min jobs and 100 items per Pull.
    pub fn new(url: &str, user: &str, password: &str) -> ConnectOptions {
        ConnectOptions {
            url: url.to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
            operation_timeout: Duration::from_secs(60),
            job_timeout: Duration::from_secs(1800),
            max_elements: 100,
            tls: None,
            basic: false,
        }
    }

    /// Sets the HTTPS certificate check ([`ConnectOptions::tls`]).
    pub fn server_cert(&mut self, check: tls::ServerCertCheck) -> &mut ConnectOptions {
        self.tls = Some(check);
        self
    }

    /// Sets [`ConnectOptions::basic`].
    pub fn basic(&mut self, yes: bool) -> &mut ConnectOptions {
        self.basic = yes;
        self
    }

    /// Sets [`ConnectOptions::job_timeout`].
    pub fn job_timeout(&mut self, t: Duration) -> &mut ConnectOptions {
        self.job_timeout = t;
        self
    }

    /// Sets [`ConnectOptions::operation_timeout`].
    pub fn operation_timeout(&mut self, t: Duration) -> &mut ConnectOptions {
        self.operation_timeout = t;
        self
    }
}

/// What a `ReturnValue` means (CIM and Msvm_ method codes).
pub fn return_value_meaning(code: u32) -> &'static str {
    match code {
        0 => "completed",
        1 => "not supported",
        2 => "failed",
        3 => "timeout",
        4 => "invalid parameter",
        5 => "invalid state",
        6 => "invalid type",
        4096 => "job started",
        32768 => "failed",
        32769 => "access denied",
        32770 => "not supported",
        32771 => "status is unknown",
        32772 => "timeout",
        32773 => "invalid parameter",
        32774 => "system is in use",
        32775 => "invalid state for this operation",
        32776 => "incorrect data type",
        32777 => "system is not available",
        32778 => "out of memory",
        32779 => "file not found",
        _ => "unknown code",
    }
}

/// A connected client. Requests go one at a time over its connection
/// (calls from several threads take turns).
#[derive(Debug)]
pub struct Client {
    url: String,
    transport: Mutex<http::Transport>,
    timeout_secs: u64,
    job_timeout: Duration,
    max_elements: u32,
}

fn message_id() -> String {
    let mut b = [0u8; 16];
    // A failing random source leaves zeroes; message ids need not be secret, only distinct enough to correlate.
    let _ = alike_core::random_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

impl Client {
    /// Connects, authenticates (NTLM) and sends Identify.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad URL, [`Error::Network`],
    /// [`Error::AuthenticationFailed`], [`Error::Ntlm`], or a reply that is
    /// not WS-Management.
    pub fn connect(opts: &ConnectOptions) -> Result<Client> {
        let ep = http::Endpoint::parse(&opts.url)?;
        let tls = match (ep.tls, &opts.tls) {
            (true, Some(check)) => Some(tls::TlsSetup::new(check)?),
            (true, None) => {
                return Err(Error::InvalidArgument(format!(
                    "{}: HTTPS needs the server's certificate pinned (SHA-256 fingerprint) or a CA file",
                    opts.url
                )));
            }
            (false, Some(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "{}: a certificate check needs https:// (port 5986)",
                    opts.url
                )));
            }
            (false, None) => None,
        };
        if opts.basic && !ep.tls {
            return Err(Error::InvalidArgument(format!(
                "{}: Basic authentication sends the password in clear: only over https://",
                opts.url
            )));
        }
        let mut transport =
            http::Transport::new(ep, &opts.user, &opts.password, opts.operation_timeout + Duration::from_secs(30));
        transport.tls = tls;
        transport.basic = opts.basic;
        let c = Client {
            url: opts.url.clone(),
            transport: Mutex::new(transport),
            timeout_secs: opts.operation_timeout.as_secs().max(1),
            job_timeout: opts.job_timeout,
            max_elements: opts.max_elements.max(1),
        };
        c.identify()?;
        Ok(c)
    }

    /// The endpoint's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn exchange<T>(&self, action: &str, xml: &str, decode: impl FnOnce(&str) -> Result<T, soap::Decode>) -> Result<T> {
        let (status, text) =
            self.transport.lock().unwrap_or_else(std::sync::PoisonError::into_inner).post(action, xml)?;
        match decode(&text) {
            Ok(v) => Ok(v),
            Err(soap::Decode::Fault(f)) => Err(Error::Fault {
                action: action.to_owned(),
                subcode: f.subcode,
                reason: f.reason,
                wsman_code: f.wsman_code,
                wmi_code: f.wmi_code,
            }),
            Err(soap::Decode::Malformed(_)) if status != 200 => {
                Err(Error::Http { endpoint: self.url.clone(), action: action.to_owned(), status })
            }
            Err(soap::Decode::Malformed(what)) => {
                Err(Error::Protocol { endpoint: self.url.clone(), action: action.to_owned(), what })
            }
        }
    }

    /// WS-Man Identify.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub fn identify(&self) -> Result<Identity> {
        self.exchange("Identify", &soap::identify_request(), soap::decode_identify)
    }

    /// Every instance an enumeration with `filter` returns (Enumerate, then
    /// Pull until the end), each with its EPR.
    ///
    /// # Errors
    /// [`Error::Fault`] (an invalid query is WMI's 0x80041017), transport errors.
    pub fn enumerate(&self, filter: &Filter) -> Result<Vec<Instance>> {
        let req = soap::enumerate_request(&self.url, filter, self.max_elements, &message_id(), self.timeout_secs);
        let mut page = self.exchange("Enumerate", &req, soap::decode_enumerate)?;
        let mut out = std::mem::take(&mut page.items);
        // A server that never ends its sequence is cut off (bounded memory and time).
        let mut pulls = 0u32;
        while !page.end {
            let Some(ctx) = page.context.take() else { break };
            pulls += 1;
            if pulls > 100_000 {
                return Err(Error::Protocol {
                    endpoint: self.url.clone(),
                    action: "Pull".into(),
                    what: "an enumeration that never ends".into(),
                });
            }
            let req = soap::pull_request(&self.url, &ctx, self.max_elements, &message_id(), self.timeout_secs);
            page = self.exchange("Pull", &req, soap::decode_pull)?;
            out.append(&mut page.items);
        }
        Ok(out)
    }

    /// A WQL query (`SELECT …` or `ASSOCIATORS OF {…} …`).
    ///
    /// # Errors
    /// As [`Client::enumerate`].
    pub fn query(&self, wql: &str) -> Result<Vec<Instance>> {
        self.enumerate(&Filter::Wql(wql.to_owned()))
    }

    /// The instances associated with `of` through `association`, of class `result`.
    ///
    /// # Errors
    /// As [`Client::enumerate`].
    pub fn associators(&self, of: &Epr, association: &str, result: &str) -> Result<Vec<Instance>> {
        self.query(&format!(
            "ASSOCIATORS OF {{{}}} WHERE AssocClass = {association} ResultClass = {result}",
            of.object_path()
        ))
    }

    /// One instance by its reference.
    ///
    /// # Errors
    /// [`Error::Fault`] (not found: WMI 0x80041002), transport errors.
    pub fn get(&self, epr: &Epr) -> Result<Instance> {
        let req = soap::get_request(&self.url, epr, &message_id(), self.timeout_secs);
        let mut i = self.exchange("Get", &req, soap::decode_get)?;
        i.epr = Some(epr.clone());
        Ok(i)
    }

    /// Invokes `method` on `target`; the raw output (any `ReturnValue`).
    ///
    /// # Errors
    /// [`Error::Fault`], transport errors.
    pub fn invoke_raw(&self, target: &Epr, method: &str, args: &[(&str, Arg)]) -> Result<MethodOutput> {
        let req = soap::invoke_request(&self.url, target, method, args, &message_id(), self.timeout_secs);
        self.exchange(method, &req, |d| soap::decode_invoke(d, method))
    }

    /// Invokes `method` and, when it starts a job, waits for the job.
    /// Returns the output (with the job's final instance when there was one).
    /// `cancelled` is asked between polls.
    ///
    /// # Errors
    /// [`Error::Method`] for a failure code, [`Error::Job`] with the job's
    /// error text, [`Error::JobTimeout`], [`Error::Cancelled`], and those of
    /// [`Client::invoke_raw`].
    pub fn invoke(
        &self,
        target: &Epr,
        method: &str,
        args: &[(&str, Arg)],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(MethodOutput, Option<Instance>)> {
        let out = self.invoke_raw(target, method, args)?;
        match out.return_value {
            0 => Ok((out, None)),
            4096 => {
                let job = out.out.reference("Job").cloned().ok_or_else(|| Error::Protocol {
                    endpoint: self.url.clone(),
                    action: method.to_owned(),
                    what: "ReturnValue 4096 without a Job".into(),
                })?;
                let j = self.wait_job(&job, method, cancelled)?;
                Ok((out, Some(j)))
            }
            code => Err(Error::Method { class: target.class().to_owned(), method: method.to_owned(), code }),
        }
    }

    /// Polls a job until it ends: its final instance when it completed
    /// (`JobState` 7).
    ///
    /// # Errors
    /// [`Error::Job`] for any other end state (its `ErrorDescription`),
    /// [`Error::JobTimeout`], [`Error::Cancelled`], transport errors.
    pub fn wait_job(&self, job: &Epr, method: &str, cancelled: &dyn Fn() -> bool) -> Result<Instance> {
        let t0 = Instant::now();
        let mut pause = Duration::from_millis(25);
        let id = job.selector("InstanceID").unwrap_or_default().to_owned();
        loop {
            let j = self.get(job)?;
            let state = j.u64("JobState").unwrap_or(0) as u16;
            // 2 New, 3 Starting, 4 Running, 5 Suspended, 6 Shutting Down; 7 Completed; others ended badly.
            if state == 7 {
                return Ok(j);
            }
            if !(2..=6).contains(&state) {
                let description = j
                    .text("ErrorDescription")
                    .or_else(|| j.text("ErrorSummaryDescription"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or("(no description)")
                    .to_owned();
                return Err(Error::Job {
                    method: method.to_owned(),
                    job: id,
                    state,
                    code: j.u64("ErrorCode").unwrap_or(0) as u32,
                    description,
                });
            }
            if cancelled() {
                return Err(Error::Cancelled);
            }
            if t0.elapsed() > self.job_timeout {
                return Err(Error::JobTimeout { method: method.to_owned(), job: id, waited: t0.elapsed() });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// The fuzz body (target `wsman`): every reply decoder, and the
/// encrypted-body parser, on arbitrary bytes. Panics only on a broken invariant.
pub fn fuzz_one(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = soap::decode_enumerate(&text);
    let _ = soap::decode_pull(&text);
    let _ = soap::decode_get(&text);
    let _ = soap::decode_invoke(&text, "CreateSnapshot");
    let _ = soap::decode_identify(&text);
    let _ = http::unseal_body(&mut ntlm::test_session(), data);
    let _ = ntlm::parse_challenge(data);
}
