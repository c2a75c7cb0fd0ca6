//! The job description one end of a replication receives: what an
//! orchestrator hands a processor (over its SSH channel, as JSON), and what
//! `alike replicate --job FILE` reads. Specified in
//! `docs/replication-job.md`; this module is that page in code.
//!
//! A job names the end's role (sender or receiver), the flow (push: the
//! sender dials; pull: the receiver dials), where to dial or listen, the
//! per-job secret both ends authenticate with, and the role's own part:
//! the sender's disks (image files, versions in a store) and change-tracking
//! state, the receiver's replica, retention and seed; the bandwidth limit;
//! the store of a one-pass backup. [`ReplicationJob::from_json`] refuses a
//! job of another version with an error naming both, and
//! [`ReplicationJob::validate`] checks every rule the page states.
//!
//! The secret is never printed: [`JobSecret`]'s `Debug` is redacted, and no
//! error quotes it. It is serialised (as hex), because the job carries it
//! to the end; keep job files private (0600) and pass them on stdin or a
//! file, never on a command line.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The job description format this build writes and reads.
pub const JOB_VERSION: u32 = 1;

/// The TCP port of processor-to-processor data by default.
pub const DEFAULT_PORT: u16 = alike_repl::net::DEFAULT_PORT;

/// The most bytes a job description may have (it is small; a mistaken
/// `/dev/zero` must not be read forever).
pub const MAX_JOB_BYTES: usize = 1 << 20;

/// Which end of a replication a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobRole {
    /// Next to the source VM: reads its disks, offers their chunks, sends
    /// what the replica lacks.
    Sender,
    /// Next to the replica: answers what it lacks, writes what arrives,
    /// commits a point.
    Receiver,
}

impl JobRole {
    /// `"sender"` or `"receiver"`.
    pub fn name(self) -> &'static str {
        match self {
            JobRole::Sender => "sender",
            JobRole::Receiver => "receiver",
        }
    }
}

/// Who dials whom; independent of the roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flow {
    /// The sender dials the receiver (the default).
    #[default]
    Push,
    /// The receiver dials the sender: nothing at the replica's site needs
    /// to accept connections.
    Pull,
}

impl Flow {
    /// `"push"` or `"pull"`.
    pub fn name(self) -> &'static str {
        match self {
            Flow::Push => "push",
            Flow::Pull => "pull",
        }
    }
}

/// The per-job secret both ends authenticate with (the Noise pre-shared
/// key of `docs/replication-protocol.md`): 32 bytes, serialised as 64
/// lower-case hex digits. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct JobSecret(pub(crate) [u8; 32]);

impl std::fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSecret(<redacted>)")
    }
}

impl JobSecret {
    /// A fresh random secret (what an orchestrator makes per job).
    ///
    /// # Errors
    /// The system's random source failed.
    pub fn generate() -> Result<JobSecret> {
        let mut b = [0u8; 32];
        alike_core::random_bytes(&mut b)?;
        Ok(JobSecret(b))
    }

    /// The secret's bytes.
    pub fn from_bytes(b: [u8; 32]) -> JobSecret {
        JobSecret(b)
    }

    /// The secret from a secret file's content: 64 hex digits are the
    /// secret itself; anything else (a passphrase both ends share) is
    /// turned into 32 bytes with BLAKE3's key derivation. Surrounding
    /// white space is ignored.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] for an empty secret.
    pub fn from_text(text: &[u8]) -> Result<JobSecret> {
        let t = text.trim_ascii();
        if t.is_empty() {
            return Err(Error::InvalidArgument("the job secret is empty".into()));
        }
        if let Some(b) = from_hex(t) {
            return Ok(JobSecret(b));
        }
        let mut h = blake3::Hasher::new_derive_key("alike replication job secret v1");
        h.update(t);
        Ok(JobSecret(*h.finalize().as_bytes()))
    }

    /// The secret's bytes (the protocol's pre-shared key).
    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn from_hex(t: &[u8]) -> Option<[u8; 32]> {
    if t.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in t.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

impl Serialize for JobSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for JobSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<JobSecret, D::Error> {
        let s = String::deserialize(d)?;
        from_hex(s.as_bytes())
            .map(JobSecret)
            .ok_or_else(|| serde::de::Error::custom("the secret must be 64 hex digits (32 bytes)"))
    }
}

/// A passphrase carried in a job (a store's). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobPassword(pub String);

impl std::fmt::Debug for JobPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobPassword(<redacted>)")
    }
}

/// A store an end opens (to seed from, to read a source version from, or
/// to back up into in a one-pass job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JobStore {
    /// A directory, or a URL (`s3://bucket/prefix`, `file:///…`).
    pub location: String,
    /// The passphrase, carried in the job (at most one of `password`,
    /// `password_file` and `key_file`; none for a store that needs none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<JobPassword>,
    /// A file holding the passphrase (on the end's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// A key file opening the store instead of a passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The local index cache's folder (default: the user's cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

impl JobStore {
    /// A store at `location`, opened without a secret (set one of the fields).
    pub fn new(location: impl Into<String>) -> JobStore {
        JobStore { location: location.into(), password: None, password_file: None, key_file: None, cache_dir: None }
    }
}

/// One disk of the source VM, in the VM's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum JobSource {
    /// An image file (raw, VHD or VHDX/AVHDX, told by its signature) or a
    /// block device. A VHDX chain and a store version carry change tokens,
    /// so an incremental run reads only what changed.
    Image {
        /// Its path on the sender's host.
        path: PathBuf,
    },
    /// Disks of a version in a store.
    StoreVersion {
        /// The store.
        store: JobStore,
        /// A version id (or unique prefix), or `latest` (of `vm`).
        version: String,
        /// One disk of it (0-based); absent: every disk, in order.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk: Option<usize>,
    },
    /// A VM of a XenServer/XCP-ng pool, read through the CBT backup cycle:
    /// the job's `vm` (name, uuid or ref) is snapshotted at the start of the
    /// run, only what changed since the previous run is read (CBT), and the
    /// snapshot is released after the commit. It is the sender's only disk
    /// entry (it stands for all of the VM's disks).
    Xen {
        /// The pool.
        pool: JobXenPool,
    },
}

/// How an end reaches a XenServer/XCP-ng pool. The XAPI password travels
/// in the job (inside the SSH channel, as the secret `xapi_password:URL`,
/// never in the parameters) or in a file on the end's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JobXenPool {
    /// The pool master's URL (`https://host`, `http://host:port`).
    pub url: String,
    /// The XAPI user (default `root`).
    #[serde(default = "default_xen_user")]
    pub user: String,
    /// The XAPI password, carried in the job (at most one of `password`
    /// and `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<JobPassword>,
    /// A file holding the XAPI password (on the end's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The pool's certificate, by SHA-256 fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Allow `http://` to a pool that is not on the end's host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

fn default_xen_user() -> String {
    "root".into()
}

impl JobXenPool {
    /// The pool at `url`, user `root`, no password set (set one).
    pub fn new(url: impl Into<String>) -> JobXenPool {
        JobXenPool {
            url: url.into(),
            user: default_xen_user(),
            password: None,
            password_file: None,
            fingerprint: None,
            insecure: false,
        }
    }

    fn check(&self, job: &str, what: &str) -> Result<()> {
        if self.url.is_empty() || self.user.is_empty() || (self.password.is_some() && self.password_file.is_some()) {
            return Err(Error::InvalidArgument(format!(
                "job {job:?}: {what}: a url, a user, and at most one of password and password_file"
            )));
        }
        Ok(())
    }
}

/// A replica VM on a XenServer/XCP-ng pool (`docs/replica-xen.md`): found
/// by the source VM's uuid, or made from the source VM's configuration on
/// the first run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JobXenReplica {
    /// The target pool.
    pub pool: JobXenPool,
    /// The SR of a new replica's disks (name or uuid).
    pub sr: String,
    /// The network of a new replica's NICs (default: each NIC's network
    /// by uuid or name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// A new replica's name (default `NAME (replica)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where the receiver keeps replicas' keys, records and history.
    pub state_dir: PathBuf,
    /// The source VM's recorded configuration (`XenVmConfig` as JSON):
    /// what the replica is found by (its uuid) or made from. An
    /// orchestrator fills it from the sender's `source` event
    /// (`docs/processor-protocol.md`); a job file may hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
}

impl JobXenReplica {
    /// A replica on `pool`, new disks on `sr`, state under `state_dir`.
    pub fn new(pool: JobXenPool, sr: impl Into<String>, state_dir: impl Into<PathBuf>) -> JobXenReplica {
        JobXenReplica { pool, sr: sr.into(), network: None, name: None, state_dir: state_dir.into(), source: None }
    }
}

/// Where the replica is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum JobReplica {
    /// A folder of VHDX files (`docs/replica-dir.md`), made on the first run.
    Dir {
        /// The folder on the receiver's host.
        path: PathBuf,
    },
    /// A replica VM on a XenServer/XCP-ng pool.
    Xen(Box<JobXenReplica>),
}

/// A version in a store the receiver can read, to seed a first replication
/// from: only what differs from it crosses the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JobSeed {
    /// The store.
    pub store: JobStore,
    /// A version id (or unique prefix), or `latest` (of the job's VM).
    pub version: String,
}

impl JobSeed {
    /// Version `version` of `store`.
    pub fn new(store: JobStore, version: impl Into<String>) -> JobSeed {
        JobSeed { store, version: version.into() }
    }
}

/// The job description of one end of a replication; see the module docs
/// and `docs/replication-job.md`.
///
/// ```
/// use alike::{Flow, JobRole, JobSecret, JobSource, ReplicationJob};
///
/// let secret = JobSecret::from_bytes([7; 32]);
/// let mut job = ReplicationJob::new("job-42", "web-01", JobRole::Sender, secret);
/// job.flow = Flow::Push;
/// job.peer = Some("10.0.0.2".into()); // the receiver's host; port 2812
/// job.disks.push(JobSource::Image { path: "/vms/web-01/disk0.vhdx".into() });
/// job.validate()?;
///
/// let text = job.to_json()?;
/// assert!(!format!("{job:?}").contains("0707"), "Debug never shows the secret");
/// assert_eq!(ReplicationJob::from_json(text.as_bytes())?, job);
/// # Ok::<(), alike::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ReplicationJob {
    /// The format's version: [`JOB_VERSION`].
    pub version: u32,
    /// The job's id: both ends must have the same (1 to 255 bytes). It is
    /// bound into the protocol's handshake.
    pub job_id: String,
    /// The source VM's name (the replica holds it).
    pub vm: String,
    /// This end's role.
    pub role: JobRole,
    /// Who dials (default push: the sender).
    #[serde(default)]
    pub flow: Flow,
    /// The end that dials: the other end's host, `host:port` or
    /// `[v6]:port` (port [`ReplicationJob::port`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The end that listens: the local address to listen on, same forms
    /// (default `0.0.0.0`, all IPv4 addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The TCP port where an address has none (default 2812).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The per-job secret (the same on both ends).
    pub secret: JobSecret,
    /// The sender: the VM's disks, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<JobSource>,
    /// How both ends cut disks: `cdc:MIN/AVG/MAX` (KiB) or `fixed:KIB`;
    /// default `cdc:16/32/64`, a store's. The receiver makes a new replica
    /// with it and refuses a run cut otherwise than its replica is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking: Option<String>,
    /// The sender: a folder where it keeps, between runs, the change
    /// tokens and chunk maps of the last point the receiver acknowledged,
    /// so that the next run reads only what changed (without it every run
    /// reads and hashes every disk, and still sends only differences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The receiver: the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<JobReplica>,
    /// The receiver: after a commit, keep only the newest this many points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<usize>,
    /// The receiver: seed a replica's first point from this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<JobSeed>,
    /// Bytes per second this end may put on the wire (its own direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<u64>,
    /// One-pass backup and replication: the store a new version goes to.
    /// Only the end closer to the store sets it: the sender in push, the
    /// receiver in pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_to: Option<JobStore>,
    /// How long the dialling end keeps trying, and the listening end
    /// waits for its peer (default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_seconds: Option<u64>,
    /// A peer silent for this long is gone (default 300 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

/// The most points a job may keep.
pub const MAX_KEEP: usize = alike_replica::MAX_POINTS;

impl ReplicationJob {
    /// A job of this version for `role`, push, port 2812, and nothing else
    /// set: fill in the role's fields, then [`ReplicationJob::validate`].
    pub fn new(job_id: impl Into<String>, vm: impl Into<String>, role: JobRole, secret: JobSecret) -> ReplicationJob {
        ReplicationJob {
            version: JOB_VERSION,
            job_id: job_id.into(),
            vm: vm.into(),
            role,
            flow: Flow::Push,
            peer: None,
            listen: None,
            port: DEFAULT_PORT,
            secret,
            disks: Vec::new(),
            chunking: None,
            state_dir: None,
            replica: None,
            keep: None,
            seed: None,
            bwlimit: None,
            backup_to: None,
            connect_timeout_seconds: None,
            idle_timeout_seconds: None,
        }
    }

    /// Reads a job from its JSON text and validates it.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`]: not JSON, longer than
    /// [`MAX_JOB_BYTES`], another version (the error names both), an
    /// unknown field, or a rule of [`ReplicationJob::validate`] broken.
    pub fn from_json(text: &[u8]) -> Result<ReplicationJob> {
        if text.len() > MAX_JOB_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a job description of {} bytes: at most {MAX_JOB_BYTES}",
                text.len()
            )));
        }
        // The version first, so that a newer job is refused by its version
        // rather than by a field this build does not know.
        #[derive(Deserialize)]
        struct Peek {
            version: Option<u64>,
        }
        let peek: Peek = serde_json::from_slice(text)
            .map_err(|e| Error::InvalidArgument(format!("the job description is not a JSON object: {}", redact(&e))))?;
        match peek.version {
            Some(v) if v == u64::from(JOB_VERSION) => {}
            Some(v) => {
                return Err(Error::InvalidArgument(format!(
                    "job description version {v}: this build reads version {JOB_VERSION}"
                )));
            }
            None => return Err(Error::InvalidArgument("the job description has no \"version\"".into())),
        }
        let job: ReplicationJob = serde_json::from_slice(text)
            .map_err(|e| Error::InvalidArgument(format!("job description: {}", redact(&e))))?;
        job.validate()?;
        Ok(job)
    }

    /// The job as JSON (it holds the secret: keep it private).
    ///
    /// # Errors
    /// Never in practice (serde_json's error is kept for form).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// The job's chunking, or the default.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] for one that does not parse or is out of range.
    pub fn chunking_or_default(&self) -> Result<alike_core::Chunking> {
        let Some(c) = &self.chunking else { return Ok(alike_core::Chunking::default()) };
        let bad = |e: alike_core::Error| Error::InvalidArgument(format!("job {:?}: chunking {c:?}: {e}", self.job_id));
        let parsed: alike_core::Chunking = c.parse().map_err(bad)?;
        parsed.validate().map_err(bad)?;
        Ok(parsed)
    }

    /// Whether this end dials (the sender in push, the receiver in pull);
    /// the other end listens.
    pub fn dials(&self) -> bool {
        matches!((self.role, self.flow), (JobRole::Sender, Flow::Push) | (JobRole::Receiver, Flow::Pull))
    }

    /// The address this end dials (resolved), when it dials.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] when it has no `peer` or the
    /// name does not resolve.
    pub fn peer_addrs(&self) -> Result<Vec<SocketAddr>> {
        let peer = self.peer.as_deref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the {} dials in {}: the job needs \"peer\"",
                self.role.name(),
                self.flow.name()
            ))
        })?;
        resolve(peer, self.port)
    }

    /// The address this end listens on, when it listens.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] when it does not resolve.
    pub fn listen_addrs(&self) -> Result<Vec<SocketAddr>> {
        resolve(self.listen.as_deref().unwrap_or("0.0.0.0"), self.port)
    }

    /// Checks every rule of `docs/replication-job.md`.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] naming the first rule broken.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("job {:?}: {m}", self.job_id)));
        if self.version != JOB_VERSION {
            return bad(format!("version {}: this build reads version {JOB_VERSION}", self.version));
        }
        if self.job_id.is_empty() || self.job_id.len() > alike_repl::wire::MAX_JOB_ID {
            return bad(format!("a job id of {} bytes: 1 to {}", self.job_id.len(), alike_repl::wire::MAX_JOB_ID));
        }
        if self.vm.is_empty() {
            return bad("no VM name".into());
        }
        if self.dials() {
            if self.peer.is_none() {
                return bad(format!("the {} dials in {}: it needs \"peer\"", self.role.name(), self.flow.name()));
            }
            if self.listen.is_some() {
                return bad(format!(
                    "the {} dials in {}: \"listen\" is for the other end",
                    self.role.name(),
                    self.flow.name()
                ));
            }
        } else if self.peer.is_some() {
            return bad(format!(
                "the {} listens in {}: \"peer\" is for the other end",
                self.role.name(),
                self.flow.name()
            ));
        }
        if self.port == 0 && self.dials() && self.peer.as_deref().is_some_and(|p| split_port(p).1.is_none()) {
            return bad("port 0 to dial".into());
        }
        if self.chunking.is_some() {
            self.chunking_or_default()?;
        }
        if let Some(b) = self.bwlimit.filter(|&b| b < crate::MIN_BANDWIDTH) {
            return bad(format!("a bandwidth limit of {b} bytes/s: at least {}", crate::MIN_BANDWIDTH));
        }
        let stores = |s: &JobStore, what: &str| -> Result<()> {
            let n = usize::from(s.password.is_some())
                + usize::from(s.password_file.is_some())
                + usize::from(s.key_file.is_some());
            if s.location.is_empty() || n > 1 {
                return Err(Error::InvalidArgument(format!(
                    "job {:?}: {what}: a location, and at most one of password, password_file and key_file",
                    self.job_id
                )));
            }
            Ok(())
        };
        let closer = match self.flow {
            Flow::Push => JobRole::Sender,
            Flow::Pull => JobRole::Receiver,
        };
        if let Some(s) = &self.backup_to {
            if self.role != closer {
                return bad(format!(
                    "\"backup_to\" (one-pass) belongs to the {} in {}",
                    closer.name(),
                    self.flow.name()
                ));
            }
            stores(s, "backup_to")?;
        }
        match self.role {
            JobRole::Sender => {
                if self.disks.is_empty() {
                    return bad("a sender needs \"disks\"".into());
                }
                if self.disks.len() > alike_repl::wire::MAX_DISKS {
                    return bad(format!("{} disks: at most {}", self.disks.len(), alike_repl::wire::MAX_DISKS));
                }
                for (i, d) in self.disks.iter().enumerate() {
                    match d {
                        JobSource::StoreVersion { store, version, .. } => {
                            stores(store, &format!("disks[{i}]"))?;
                            if version.is_empty() {
                                return bad(format!("disks[{i}]: no version"));
                            }
                        }
                        JobSource::Xen { pool } => {
                            pool.check(&self.job_id, &format!("disks[{i}]"))?;
                            if self.disks.len() > 1 {
                                return bad("a Xen VM is the sender's only entry in \"disks\"".into());
                            }
                            if self.backup_to.is_some() {
                                return bad(
                                    "one-pass backup (\"backup_to\") is not available for Xen sources yet".into()
                                );
                            }
                        }
                        JobSource::Image { .. } => {}
                    }
                }
                for (what, set) in
                    [("replica", self.replica.is_some()), ("keep", self.keep.is_some()), ("seed", self.seed.is_some())]
                {
                    if set {
                        return bad(format!("\"{what}\" belongs to the receiver"));
                    }
                }
            }
            JobRole::Receiver => {
                if self.replica.is_none() {
                    return bad("a receiver needs \"replica\"".into());
                }
                if !self.disks.is_empty() || self.state_dir.is_some() {
                    return bad("\"disks\" and \"state_dir\" belong to the sender".into());
                }
                if let Some(k) = self.keep.filter(|k| !(1..=MAX_KEEP).contains(k)) {
                    return bad(format!("keep {k}: 1 to {MAX_KEEP}"));
                }
                if let Some(s) = &self.seed {
                    stores(&s.store, "seed")?;
                }
                if let Some(JobReplica::Xen(x)) = &self.replica {
                    x.pool.check(&self.job_id, "replica")?;
                    if x.sr.is_empty() {
                        return bad("a Xen replica needs \"sr\"".into());
                    }
                    if self.seed.is_some() || self.backup_to.is_some() {
                        return bad("seeding and one-pass backup are not available for Xen replicas yet".into());
                    }
                }
            }
        }
        Ok(())
    }
}

/// A serde_json error without the bytes it quotes (a job holds a secret).
fn redact(e: &serde_json::Error) -> String {
    format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column())
}

/// Splits `host:port`, `[v6]:port`, `host`, `v6` into host and port.
fn split_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            return (h, Some(p));
        }
        return (rest.trim_end_matches(']'), None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

/// Resolves `host[:port]` with `port` as the default.
pub(crate) fn resolve(s: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let (host, p) = split_port(s);
    let port = match p {
        Some(p) => p.parse::<u16>().map_err(|_| Error::InvalidArgument(format!("{s:?}: bad port {p:?}")))?,
        None => port,
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::InvalidArgument(format!("{s:?} does not resolve: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::InvalidArgument(format!("{s:?} resolves to no address")));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver() -> ReplicationJob {
        let mut j = ReplicationJob::new("j", "vm", JobRole::Receiver, JobSecret::from_bytes([1; 32]));
        j.replica = Some(JobReplica::Dir { path: "/r".into() });
        j
    }

    #[test]
    fn a_job_round_trips_and_its_rules_hold() {
        let mut j = receiver();
        j.keep = Some(3);
        j.seed = Some(JobSeed { store: JobStore::new("/s"), version: "latest".into() });
        j.validate().unwrap();
        let text = j.to_json().unwrap();
        assert!(text.contains(&"01".repeat(32)), "the secret travels as hex");
        assert_eq!(ReplicationJob::from_json(text.as_bytes()).unwrap(), j);
        assert!(!format!("{j:?}").contains(&"01".repeat(32)));

        let v2 = text.replace("\"version\": 1", "\"version\": 2");
        let e = ReplicationJob::from_json(v2.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("version 2") && e.contains("version 1"), "{e}");
        let unknown = text.replacen('{', "{\"colour\": 1,", 1);
        assert!(ReplicationJob::from_json(unknown.as_bytes()).is_err());
        let bad_secret = text.replace(&"01".repeat(32), "abc");
        let e = ReplicationJob::from_json(bad_secret.as_bytes()).unwrap_err().to_string();
        assert!(!e.contains("abc"), "no error quotes the secret: {e}");

        let mut k = receiver();
        k.keep = Some(0);
        assert!(k.validate().is_err());
        let mut p = receiver();
        p.flow = Flow::Pull;
        assert!(p.validate().is_err(), "the receiver dials in pull: it needs a peer");
        p.peer = Some("127.0.0.1:9".into());
        p.validate().unwrap();
        assert_eq!(p.peer_addrs().unwrap(), vec!["127.0.0.1:9".parse().unwrap()]);
        let mut s = ReplicationJob::new("j", "vm", JobRole::Sender, JobSecret::from_bytes([1; 32]));
        assert!(s.validate().is_err(), "a sender needs disks");
        s.disks.push(JobSource::Image { path: "/d".into() });
        assert!(s.validate().is_err(), "it dials in push");
        s.peer = Some("[::1]".into());
        s.validate().unwrap();
        assert_eq!(s.peer_addrs().unwrap(), vec!["[::1]:2812".parse().unwrap()]);
        s.backup_to = Some(JobStore::new("/s"));
        s.validate().unwrap();
        s.flow = Flow::Pull;
        s.peer = None;
        assert!(s.validate().is_err(), "one-pass belongs to the receiver in pull");
    }

    #[test]
    fn xen_ends_validate_and_round_trip() {
        let mut pool = JobXenPool::new("https://10.0.0.7");
        pool.password = Some(JobPassword("pw".into()));
        let mut s = ReplicationJob::new("j", "web-01", JobRole::Sender, JobSecret::from_bytes([1; 32]));
        s.peer = Some("10.0.0.8".into());
        s.disks.push(JobSource::Xen { pool: pool.clone() });
        s.validate().unwrap();
        assert_eq!(ReplicationJob::from_json(s.to_json().unwrap().as_bytes()).unwrap(), s);
        assert!(!format!("{s:?}").contains("\"pw\""), "Debug never shows the XAPI password");
        s.disks.push(JobSource::Image { path: "/d".into() });
        assert!(s.validate().unwrap_err().to_string().contains("only entry"));
        s.disks.pop();
        s.disks[0] = JobSource::Xen { pool: JobXenPool { password_file: Some("/f".into()), ..pool.clone() } };
        assert!(s.validate().is_err(), "a password and a password file");

        let mut r = receiver();
        r.replica = Some(JobReplica::Xen(Box::new(JobXenReplica::new(pool.clone(), "Local storage", "/state"))));
        r.validate().unwrap();
        assert_eq!(ReplicationJob::from_json(r.to_json().unwrap().as_bytes()).unwrap(), r);
        r.seed = Some(JobSeed::new(JobStore::new("/s"), "latest"));
        assert!(r.validate().is_err(), "no seeding of Xen replicas yet");
        r.seed = None;
        r.replica = Some(JobReplica::Xen(Box::new(JobXenReplica::new(pool, "", "/state"))));
        assert!(r.validate().is_err(), "a Xen replica needs an SR");
    }

    #[test]
    fn secrets_from_text() {
        let hex = "ab".repeat(32);
        assert_eq!(JobSecret::from_text(format!("{hex}\n").as_bytes()).unwrap().0, [0xab; 32]);
        let a = JobSecret::from_text(b"correct horse\n").unwrap();
        assert_eq!(a, JobSecret::from_text(b"correct horse").unwrap());
        assert_ne!(a, JobSecret::from_text(b"correct horse battery").unwrap());
        assert!(JobSecret::from_text(b" \n").is_err());
    }
}
