//! The configuration file: stores, pools of processors, and jobs, in one
//! TOML file (`docs/config.md` is its reference).
//!
//! One file serves every part that needs to know the installation: the
//! processor orchestrator (pools, their templates and address lists) and
//! the services (jobs, and later their schedules) extend the same
//! [`Config`] rather than start a second file. Parsing is strict: an
//! unknown key, a value out of range, a name used twice or a job naming a
//! store or pool that does not exist is an [`Error::Config`] naming the
//! file and the key, never a silent default.
//!
//! Secrets are never inline. A passphrase, password or credential is a
//! [`SecretRef`] — `{ file = "…" }` or `{ env = "NAME" }` — read only when
//! a job needs it ([`SecretRef::read`]), so the file itself can be world
//! readable and shown in a page or an API without leaking anything.
//!
//! Relative paths in the file are relative to the file's directory.
//!
//! ```
//! let text = r#"
//! [[store]]
//! name = "main"
//! path = "/srv/ads"
//! passphrase = { env = "ALIKE_PASSWORD" }
//!
//! [[pool]]
//! name = "lab"
//! kind = "local"
//! addresses = ["10.77.0.10-10.77.0.13"]
//! ssh_key = "/etc/alike/id_ed25519"
//!
//! [[job]]
//! name = "nightly"
//! kind = "backup"
//! vms = ["web-01", "db-01"]
//! store = "main"
//! pool = "lab"
//! disks = { web-01 = ["/images/web-01.img"], db-01 = ["/dev/vg0/db-01"] }
//! "#;
//! let config = alike::Config::parse(text, "/etc/alike/alike.toml")?;
//! assert_eq!(config.pool("lab").unwrap().addresses.len(), 4);
//! assert_eq!(config.job("nightly").unwrap().vms, ["web-01", "db-01"]);
//! # Ok::<(), alike::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The newest configuration file version this build reads.
pub const CONFIG_VERSION: u32 = 1;
/// The most addresses one pool may list (bounds the processors it runs).
pub const MAX_POOL_ADDRESSES: usize = 4096;
/// The most VMs one job may name.
pub const MAX_JOB_VMS: usize = 10_000;
/// The most entries in each of `store`, `pool` and `job`.
pub const MAX_ENTRIES: usize = 10_000;
/// The most days `[history] keep_days` may give (100 years).
pub const MAX_HISTORY_DAYS: u32 = 36_500;
/// The most runs per job `[history] keep_runs` may give.
pub const MAX_HISTORY_RUNS: u32 = 1_000_000;
/// The longest a secret read from a file or the environment may be.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;
/// The command that starts the worker on a processor, by default.
pub const DEFAULT_PROCESSOR_COMMAND: &str = "alike processor";

/// A whole configuration file. See the module documentation and
/// `docs/config.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The file format's version (1; absent means 1).
    #[serde(default = "one")]
    pub version: u32,
    /// This installation's orchestrator id (default `alike`): tags every
    /// object made for a job, so that the next start removes what a run
    /// that died left. One process runs an id at a time.
    #[serde(default = "default_orchestrator")]
    pub orchestrator: String,
    /// Where the orchestrator keeps its lock and processors' files
    /// (default `/run/alike`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Stores, as `[[store]]` tables.
    #[serde(default, rename = "store")]
    pub stores: Vec<StoreConfig>,
    /// Pools of processors, as `[[pool]]` tables.
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
    /// Jobs, as `[[job]]` tables.
    #[serde(default, rename = "job")]
    pub jobs: Vec<JobConfig>,
    /// The daemon (`alike serve`), as the `[serve]` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<crate::serve_config::ServeConfig>,
    /// Notifications of the services' runs, as `[[notify]]` tables.
    #[serde(default, rename = "notify")]
    pub notify: Vec<crate::services::notify::NotifyConfig>,
    /// How long the services' history keeps runs, as the `[history]`
    /// table (`keep_days`, `keep_runs`; absent: 90 days, 100 runs per job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<alike_sched::HistoryRetention>,
    /// The file this came from (relative paths in it were resolved against
    /// its directory).
    #[serde(skip)]
    pub path: PathBuf,
}

fn one() -> u32 {
    1
}
fn default_orchestrator() -> String {
    "alike".into()
}
fn default_state_dir() -> PathBuf {
    "/run/alike".into()
}

/// A secret by reference: the name of a file holding it, or of an
/// environment variable. Never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SecretRef {
    /// A file whose contents (less one trailing newline) are the secret.
    File(PathBuf),
    /// An environment variable of the process reading the configuration.
    Env(String),
}

impl SecretRef {
    /// Reads the secret now.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the file or variable when it
    /// cannot be read, is empty, or is larger than [`MAX_SECRET_BYTES`].
    pub fn read(&self) -> Result<crate::remote::Secret> {
        let text = match self {
            SecretRef::File(p) => {
                let meta = std::fs::metadata(p)
                    .map_err(|e| Error::InvalidArgument(format!("reading secret file {}: {e}", p.display())))?;
                if meta.len() > MAX_SECRET_BYTES {
                    return Err(Error::InvalidArgument(format!(
                        "secret file {} holds {} bytes (at most {MAX_SECRET_BYTES})",
                        p.display(),
                        meta.len()
                    )));
                }
                let t = zeroize::Zeroizing::new(
                    std::fs::read_to_string(p)
                        .map_err(|e| Error::InvalidArgument(format!("reading secret file {}: {e}", p.display())))?,
                );
                let s = t.strip_suffix('\n').unwrap_or(&t);
                let s = s.strip_suffix('\r').unwrap_or(s);
                s.to_string()
            }
            SecretRef::Env(v) => std::env::var(v)
                .map_err(|_| Error::InvalidArgument(format!("environment variable {v} (a secret) is not set")))?,
        };
        if text.is_empty() {
            return Err(Error::InvalidArgument(format!("the secret in {} is empty", self.describe())));
        }
        Ok(crate::remote::Secret::new(text))
    }

    /// Where the secret is, for messages: `file /x` or `environment variable X`.
    pub fn describe(&self) -> String {
        match self {
            SecretRef::File(p) => format!("file {}", p.display()),
            SecretRef::Env(v) => format!("environment variable {v}"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<SecretRef, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            file: Option<PathBuf>,
            env: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Inline(#[allow(dead_code)] String),
            Table(Raw),
        }
        match Either::deserialize(d).map_err(|_| {
            D::Error::custom("a secret is a table { file = \"PATH\" } or { env = \"NAME\" } (and nothing else)")
        })? {
            Either::Inline(_) => Err(D::Error::custom(
                "secrets are never written in the configuration: use { file = \"PATH\" } or { env = \"NAME\" }",
            )),
            Either::Table(Raw { file: Some(f), env: None }) => Ok(SecretRef::File(f)),
            Either::Table(Raw { file: None, env: Some(e) }) => {
                let ok = !e.is_empty()
                    && e.len() <= 255
                    && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !e.starts_with(|c: char| c.is_ascii_digit());
                if ok {
                    Ok(SecretRef::Env(e))
                } else {
                    Err(D::Error::custom(format!("{e:?} is not an environment variable name")))
                }
            }
            Either::Table(_) => Err(D::Error::custom("a secret takes exactly one of `file` and `env`")),
        }
    }
}

/// A store (`[[store]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Its name, as jobs refer to it.
    pub name: String,
    /// A directory store (on the machine that runs the job: for a job on a
    /// processor, the processor's path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// An object-storage store: `s3://bucket/prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The store's passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<SecretRef>,
    /// The store's key file (instead of a passphrase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The index cache directory (default: the user's `~/.cache/alike`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Where backups lock each VM against other processes (default:
    /// `PATH.vm-locks` beside a directory store; under `$TMPDIR` for an
    /// object-storage store). See [`crate::Store::vm_lock_dir`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_lock_dir: Option<PathBuf>,
    /// Object storage: the service's address (`https://…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Object storage: the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Object storage: allow a plain `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// Object storage: the access key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<SecretRef>,
    /// Object storage: the secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<SecretRef>,
    /// Object storage: a session token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<SecretRef>,
    /// Which key a processor gets for this store (default: the write-only
    /// key when the store has writer keys).
    #[serde(default)]
    pub processor_key: ProcessorKey,
}

/// Which key of a store the orchestrator hands a processor
/// (`docs/security.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ProcessorKey {
    /// The store's write-only key when it has writer keys (format 3): the
    /// processor can add versions but not read chunk data it did not
    /// write; the full key otherwise.
    #[default]
    WriteOnly,
    /// Always the store's own passphrase or key file (opt-out).
    Full,
}

impl StoreConfig {
    /// The store's location: its path, or its URL.
    pub fn location(&self) -> String {
        match (&self.path, &self.url) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(u)) => u.clone(),
            (None, None) => String::new(),
        }
    }

    /// Opens the store on this machine, reading its secrets now.
    ///
    /// # Errors
    /// As [`crate::StoreBuilder::open_at`]; [`Error::InvalidArgument`] when
    /// a secret cannot be read.
    pub fn open(&self) -> Result<crate::Store> {
        let mut b = crate::Store::builder();
        if let Some(p) = &self.passphrase {
            b.passphrase(p.read()?.expose());
        }
        if let Some(k) = &self.key_file {
            b.key_file(k);
        }
        if let Some(c) = &self.cache_dir {
            b.cache_dir(c);
        }
        if let Some(d) = &self.vm_lock_dir {
            b.vm_lock_dir(d);
        }
        if self.url.is_some() {
            let mut o = alike_ads::ObjectOptions::default();
            o.endpoint = self.endpoint.clone();
            o.region = self.region.clone();
            o.allow_http = self.allow_http;
            if let (Some(k), Some(s)) = (&self.access_key_id, &self.secret_access_key) {
                o.access_key_id = Some(k.read()?.expose().to_string());
                o.secret_access_key = Some(s.read()?.expose().to_string());
            }
            if let Some(t) = &self.session_token {
                o.session_token = Some(t.read()?.expose().to_string());
            }
            b.object_options(o);
        }
        b.open_at(&self.location())
    }
}

/// What a pool's processors run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PoolKind {
    /// A XenServer/XCP-ng pool: processors are VMs cloned from a template.
    Xen,
    /// This machine: processors are network namespaces with their own sshd.
    Local,
}

/// How the orchestrator knows a processor's SSH host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum HostKeyPolicy {
    /// The orchestrator makes a fresh host key for every processor and
    /// hands it in (Xen: through the VM's xenstore `vm-data`; local: the
    /// namespace's sshd), and pins exactly that key.
    #[default]
    Inject,
    /// The processors' keys are listed in an OpenSSH known_hosts file
    /// (`known_hosts`): for appliances with keys of their own.
    KnownHosts,
}

/// A pool of processors (`[[pool]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Its name, as jobs refer to it.
    pub name: String,
    /// `xen` or `local`.
    pub kind: PoolKind,
    /// Xen: the pool master's XAPI address (`https://host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Xen: the XAPI user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Xen: the XAPI user's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretRef>,
    /// Xen: the processor template, by name or uuid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Xen: the SR clones are made on (default: the template's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sr: Option<String>,
    /// Xen: the network (name or uuid) processors' VIFs are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The processors' addresses: single addresses, `a.b.c.d-a.b.c.e`
    /// ranges and CIDR blocks. One processor per address: the pool runs
    /// as many jobs at once as it has addresses.
    #[serde(with = "address_list")]
    pub addresses: Vec<IpAddr>,
    /// The prefix length of the processors' network (default 24).
    #[serde(default = "default_prefix")]
    pub prefix: u8,
    /// The processors' default gateway, if they need one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The user the orchestrator logs in as (default `root`).
    #[serde(default = "default_ssh_user")]
    pub ssh_user: String,
    /// The private key it logs in with (OpenSSH format).
    pub ssh_key: PathBuf,
    /// The private key's passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key_passphrase: Option<SecretRef>,
    /// How processors' host keys are known (default `inject`).
    #[serde(default)]
    pub host_keys: HostKeyPolicy,
    /// The known_hosts file, with `host_keys = "known-hosts"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    /// How long a new processor may take to answer SSH (default 120 s).
    #[serde(default = "default_ssh_timeout")]
    pub ssh_timeout_seconds: u64,
    /// The command that starts the worker on a processor (default `alike
    /// processor`; local pools default to this very program).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_command: Option<String>,
}

fn default_prefix() -> u8 {
    24
}
fn default_ssh_user() -> String {
    "root".into()
}
fn default_ssh_timeout() -> u64 {
    120
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobKind {
    /// Back up its VMs into its store, then the chain (`[job.chain]`).
    Backup,
    /// Verify its store's versions (`[job.validation]`: quick or full,
    /// a byte budget per run).
    Validation,
    /// Retention (`chain.retention`) and garbage collection of its store.
    Housekeeping,
    /// Copy its store's versions to `chain.vault`.
    Vault,
    /// Replicate its VMs (a fresh snapshot each run) to replica folders
    /// under `target`, one per VM, keeping `options.keep` points.
    Replication,
}

/// A job (`[[job]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JobConfig {
    /// Its name.
    pub name: String,
    /// What it does.
    pub kind: JobKind,
    /// The VMs it covers, by name or uuid, processed one after another
    /// (backup jobs; `tag:T` names the VMs tagged `T`).
    #[serde(default)]
    pub vms: Vec<String>,
    /// The store it writes to (a `[[store]]` name).
    pub store: String,
    /// The pool its VMs are in and its processor comes from (a `[[pool]]`
    /// name; backup jobs).
    #[serde(default)]
    pub pool: String,
    /// Local pools: each VM's disks (image files or block devices), by VM
    /// name. Xen pools find the disks themselves.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disks: BTreeMap<String, Vec<PathBuf>>,
    /// Replication jobs: the folder under which each VM's replica folder
    /// (`TARGET/VM_NAME`) is kept (relative to the file's folder), or a
    /// table naming a Xen pool of the file to keep replica VMs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<ReplicaTarget>,
    /// Its options.
    #[serde(default)]
    pub options: JobOptions,
    /// When it runs: a cron expression (`"30 2 * * *"`, `"@daily"`); none
    /// = only when asked (`docs/services.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The schedule's time zone (tz database name; default `UTC`).
    #[serde(default = "utc", skip_serializing_if = "is_utc")]
    pub timezone: String,
    /// Due times missed while the daemon was down: `"catch-up"` (one run)
    /// or `"skip"`.
    #[serde(default)]
    pub missed: alike_sched::MissedRule,
    /// Seconds a due time may be seen late before it counts as missed.
    #[serde(default = "default_grace")]
    pub grace_seconds: u64,
    /// A disabled job keeps its history but is not scheduled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A bandwidth limit, bytes/s (vault copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    /// What follows a backup: retention → vault → verification.
    #[serde(default)]
    pub chain: alike_sched::Chain,
    /// A validation job's depth and budget.
    #[serde(default)]
    pub validation: alike_sched::Validation,
}

fn utc() -> String {
    "UTC".into()
}
fn is_utc(s: &String) -> bool {
    s == "UTC"
}
fn default_grace() -> u64 {
    300
}

impl JobConfig {
    /// The job as the services schedule it.
    pub fn spec(&self) -> alike_sched::JobSpec {
        let kind = match self.kind {
            JobKind::Backup => alike_sched::JobKind::Backup,
            JobKind::Validation => alike_sched::JobKind::Validation,
            JobKind::Housekeeping => alike_sched::JobKind::Housekeeping,
            JobKind::Vault => alike_sched::JobKind::Vault,
            JobKind::Replication => alike_sched::JobKind::Replication,
        };
        let mut j = alike_sched::JobSpec::new(self.name.clone(), kind);
        j.vms = self.vms.clone();
        j.store = Some(self.store.clone());
        j.pool = (!self.pool.is_empty()).then(|| self.pool.clone());
        match &self.target {
            Some(ReplicaTarget::Dir(d)) => j.target = Some(d.display().to_string()),
            Some(ReplicaTarget::Xen(x)) => {
                let (t, o) = x.to_spec();
                j.target = Some(t);
                j.options.insert("xen_replica".into(), o);
            }
            None => {}
        }
        j.schedule = self.schedule.clone();
        j.timezone = self.timezone.clone();
        j.missed = self.missed;
        j.grace_seconds = self.grace_seconds;
        j.enabled = self.enabled;
        j.quiesce = self.options.quiesce;
        j.bandwidth = self.bandwidth;
        j.chain = self.chain.clone();
        j.validation = self.validation.clone();
        j.options.insert("processor".into(), self.options.processor.into());
        if let Some(t) = self.options.threads {
            j.options.insert("threads".into(), t.into());
        }
        if let Some(k) = self.options.keep {
            j.options.insert("keep".into(), k.into());
        }
        j
    }
}

/// Where a replication job keeps its replicas (`target`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ReplicaTarget {
    /// A folder: one replica folder per VM (`TARGET/VM_NAME`).
    Dir(PathBuf),
    /// Replica VMs on a Xen pool (`docs/replica-xen.md`).
    Xen(XenReplicaTarget),
}

/// A replication job's Xen target: `target = { pool = "dr", sr = "…" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct XenReplicaTarget {
    /// A xen `[[pool]]` of the file, the replica VMs' pool.
    pub pool: String,
    /// The SR for the replicas' disks (name, uuid or ref).
    pub sr: String,
    /// The network every replica NIC goes on (default: each NIC's recorded
    /// network, which must exist in the target pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Where the replicas' keys and records are kept (a folder per replica
    /// VM uuid in it).
    pub state_dir: PathBuf,
}

impl XenReplicaTarget {
    /// The job's `target` string for this target (`xen:POOL`) and the
    /// option (`options.xen_replica`) that carries the rest.
    pub fn to_spec(&self) -> (String, serde_json::Value) {
        let mut o = serde_json::json!({"sr": self.sr, "state_dir": self.state_dir.display().to_string()});
        if let Some(n) = &self.network {
            o["network"] = n.clone().into();
        }
        (format!("xen:{}", self.pool), o)
    }
}

/// A job's options (`[job.options]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JobOptions {
    /// Run on a processor of the pool (default true); false runs in the
    /// orchestrator's own process.
    #[serde(default = "yes")]
    pub processor: bool,
    /// Quiesce the VMs' snapshots (default false).
    #[serde(default)]
    pub quiesce: bool,
    /// Backup threads (default: the engine's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Replication jobs: the points each replica keeps (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<usize>,
}

fn yes() -> bool {
    true
}

impl Default for JobOptions {
    fn default() -> JobOptions {
        JobOptions { processor: true, quiesce: false, threads: None, keep: None }
    }
}

/// Parses and writes address lists: `"10.0.0.5"`, `"10.0.0.5-10.0.0.9"`,
/// `"10.0.0.0/29"`.
mod address_list {
    use std::net::IpAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[IpAddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|a| a.to_string()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        let mut out = Vec::new();
        for item in &items {
            super::expand(item, &mut out).map_err(serde::de::Error::custom)?;
            if out.len() > super::MAX_POOL_ADDRESSES {
                return Err(serde::de::Error::custom(format!("more than {} addresses", super::MAX_POOL_ADDRESSES)));
            }
        }
        Ok(out)
    }
}

fn to_u128(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(v) => (true, u32::from(v) as u128),
        IpAddr::V6(v) => (false, u128::from(v)),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 { IpAddr::V4((n as u32).into()) } else { IpAddr::V6(n.into()) }
}

/// Appends the addresses `item` names to `out` (bounded by
/// [`MAX_POOL_ADDRESSES`]).
fn expand(item: &str, out: &mut Vec<IpAddr>) -> std::result::Result<(), String> {
    let item = item.trim();
    let parse = |s: &str| s.trim().parse::<IpAddr>().map_err(|_| format!("{s:?} is not an IP address"));
    let (lo, hi) = if let Some((a, b)) = item.split_once('-') {
        let (a, b) = (parse(a)?, parse(b)?);
        let ((a4, a), (b4, b)) = (to_u128(a), to_u128(b));
        if a4 != b4 {
            return Err(format!("range {item:?} mixes IPv4 and IPv6"));
        }
        if a > b {
            return Err(format!("range {item:?} ends before it starts"));
        }
        ((a4, a), b)
    } else if let Some((a, p)) = item.split_once('/') {
        let (v4, base) = to_u128(parse(a)?);
        let bits = if v4 { 32 } else { 128 };
        let p: u32 = p.parse().ok().filter(|p| *p <= bits).ok_or_else(|| format!("{item:?}: bad prefix length"))?;
        let host_bits = bits - p;
        let size: u128 = if host_bits >= 128 { u128::MAX } else { 1u128 << host_bits };
        let first = if host_bits >= 128 { 0 } else { base >> host_bits << host_bits };
        if first != base {
            return Err(format!("{item:?} has host bits set (the block starts at {})", from_u128(v4, first)));
        }
        // Skip the network and broadcast addresses of IPv4 blocks that have them.
        if v4 && host_bits >= 2 {
            ((v4, first + 1), first + size - 2)
        } else {
            ((v4, first), first.saturating_add(size - 1))
        }
    } else {
        let (v4, a) = to_u128(parse(item)?);
        ((v4, a), a)
    };
    let ((v4, lo), hi) = (lo, hi);
    if hi - lo >= (MAX_POOL_ADDRESSES - out.len().min(MAX_POOL_ADDRESSES)) as u128 {
        return Err(format!("{item:?} holds more than {MAX_POOL_ADDRESSES} addresses"));
    }
    for n in lo..=hi {
        out.push(from_u128(v4, n));
    }
    Ok(())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['-', '.'])
}

impl Config {
    /// Reads and checks the configuration file at `path`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file and the key: unreadable, not
    /// TOML, an unknown key, a value out of range, a name used twice, a
    /// job naming a store or pool that is not there.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            key: "(file)".into(),
            message: e.to_string(),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks `text` as if read from `path` (relative paths in
    /// it are resolved against `path`'s directory).
    ///
    /// # Errors
    /// As [`Config::from_file`].
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let mut c: Config = toml::from_str(text).map_err(|e| {
            let key = match e.span() {
                Some(s) => {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line}, column {col}")
                }
                None => "(file)".into(),
            };
            Error::Config { file: path.to_path_buf(), key, message: e.message().trim().to_string() }
        })?;
        c.path = path.to_path_buf();
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        c.resolve(&base);
        c.check()?;
        Ok(c)
    }

    /// The store named `name`.
    pub fn store(&self, name: &str) -> Option<&StoreConfig> {
        self.stores.iter().find(|s| s.name == name)
    }
    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|s| s.name == name)
    }
    /// The job named `name`.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|s| s.name == name)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let fix_secret = |s: &mut Option<SecretRef>| {
            if let Some(SecretRef::File(p)) = s {
                fix(p);
            }
        };
        for n in &mut self.notify {
            if let Some(e) = &mut n.email {
                fix_secret(&mut e.password);
            }
        }
        for s in &mut self.stores {
            s.path.as_mut().map(fix);
            s.key_file.as_mut().map(fix);
            s.cache_dir.as_mut().map(fix);
            s.vm_lock_dir.as_mut().map(fix);
            fix_secret(&mut s.passphrase);
            fix_secret(&mut s.access_key_id);
            fix_secret(&mut s.secret_access_key);
            fix_secret(&mut s.session_token);
        }
        if let Some(s) = &mut self.serve {
            s.resolve(base);
        }
        fix(&mut self.state_dir);
        for j in &mut self.jobs {
            j.disks.values_mut().flatten().for_each(fix);
            match &mut j.target {
                Some(ReplicaTarget::Dir(d)) => fix(d),
                Some(ReplicaTarget::Xen(x)) => fix(&mut x.state_dir),
                None => {}
            }
        }
        for p in &mut self.pools {
            fix(&mut p.ssh_key);
            p.known_hosts.as_mut().map(fix);
            fix_secret(&mut p.password);
            fix_secret(&mut p.ssh_key_passphrase);
        }
    }

    fn check(&self) -> Result<()> {
        let err = |key: String, message: String| Error::Config { file: self.path.clone(), key, message };
        if self.version == 0 || self.version > CONFIG_VERSION {
            return Err(err(
                "version".into(),
                format!("version {} is not one this build reads (1..={CONFIG_VERSION})", self.version),
            ));
        }
        let o = &self.orchestrator;
        if o.is_empty() || o.len() > 32 || !o.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(err("orchestrator".into(), format!("{o:?}: 1 to 32 of A-Z a-z 0-9 - _")));
        }
        for (what, n) in [("store", self.stores.len()), ("pool", self.pools.len()), ("job", self.jobs.len())] {
            if n > MAX_ENTRIES {
                return Err(err(what.into(), format!("{n} entries (at most {MAX_ENTRIES})")));
            }
        }
        if let Some(s) = &self.serve {
            s.check().map_err(|(key, message)| err(key, message))?;
        }
        if let Some(h) = &self.history {
            if !(1..=MAX_HISTORY_DAYS).contains(&h.keep_days) {
                return Err(err("history.keep_days".into(), format!("{}: 1..={MAX_HISTORY_DAYS}", h.keep_days)));
            }
            if h.keep_runs > MAX_HISTORY_RUNS {
                return Err(err("history.keep_runs".into(), format!("{}: 0..={MAX_HISTORY_RUNS}", h.keep_runs)));
            }
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.stores.iter().enumerate() {
            let k = |f: &str| format!("store[{i}].{f}");
            if !valid_name(&s.name) {
                return Err(err(k("name"), format!("{:?}: 1 to 64 of A-Z a-z 0-9 - _ .", s.name)));
            }
            if !names.insert(&s.name) {
                return Err(err(k("name"), format!("a second store named {:?}", s.name)));
            }
            match (&s.path, &s.url) {
                (Some(_), Some(_)) => return Err(err(k("url"), "give `path` or `url`, not both".into())),
                (None, None) => return Err(err(k("path"), "a store needs `path` or `url`".into())),
                (None, Some(u)) if !u.starts_with("s3://") || u.len() <= 5 => {
                    return Err(err(k("url"), format!("{u:?}: an object-storage store is s3://bucket[/prefix]")));
                }
                _ => {}
            }
            if s.passphrase.is_some() && s.key_file.is_some() {
                return Err(err(k("key_file"), "give `passphrase` or `key_file`, not both".into()));
            }
            let object = [
                ("endpoint", s.endpoint.is_some()),
                ("region", s.region.is_some()),
                ("allow_http", s.allow_http),
                ("access_key_id", s.access_key_id.is_some()),
                ("secret_access_key", s.secret_access_key.is_some()),
                ("session_token", s.session_token.is_some()),
            ];
            if s.url.is_none() {
                if let Some((f, _)) = object.iter().find(|(_, set)| *set) {
                    return Err(err(k(f), "only object-storage stores (`url`) take this".into()));
                }
            }
            if s.access_key_id.is_some() != s.secret_access_key.is_some() {
                return Err(err(k("secret_access_key"), "give both `access_key_id` and `secret_access_key`".into()));
            }
            if let Some(e) = &s.endpoint {
                if !(e.starts_with("https://") || e.starts_with("http://")) {
                    return Err(err(k("endpoint"), format!("{e:?}: an http(s):// address")));
                }
                if e.starts_with("http://") && !s.allow_http {
                    return Err(err(k("endpoint"), "a plain http:// endpoint needs `allow_http = true`".into()));
                }
            }
        }
        let mut names = BTreeSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let k = |f: &str| format!("pool[{i}].{f}");
            if !valid_name(&p.name) {
                return Err(err(k("name"), format!("{:?}: 1 to 64 of A-Z a-z 0-9 - _ .", p.name)));
            }
            if !names.insert(&p.name) {
                return Err(err(k("name"), format!("a second pool named {:?}", p.name)));
            }
            let xen_only = [
                ("url", p.url.is_some()),
                ("user", p.user.is_some()),
                ("password", p.password.is_some()),
                ("template", p.template.is_some()),
                ("sr", p.sr.is_some()),
                ("network", p.network.is_some()),
            ];
            match p.kind {
                PoolKind::Xen => {
                    for f in ["url", "user", "password", "template"] {
                        if !xen_only.iter().any(|(n, set)| *n == f && *set) {
                            return Err(err(k(f), "a xen pool needs it".into()));
                        }
                    }
                    let u = p.url.as_deref().unwrap_or_default();
                    if !(u.starts_with("https://") || u.starts_with("http://")) {
                        return Err(err(k("url"), format!("{u:?}: the XAPI address, https://host[:port]")));
                    }
                }
                PoolKind::Local => {
                    if let Some((f, _)) = xen_only.iter().find(|(_, set)| *set) {
                        return Err(err(k(f), "only xen pools take this".into()));
                    }
                }
            }
            if p.addresses.is_empty() {
                return Err(err(k("addresses"), "a pool needs at least one address".into()));
            }
            let mut seen = BTreeSet::new();
            for a in &p.addresses {
                if !seen.insert(a) {
                    return Err(err(k("addresses"), format!("{a} is listed twice")));
                }
                if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                    return Err(err(k("addresses"), format!("{a} cannot be a processor's address")));
                }
            }
            let v4 = p.addresses.iter().all(IpAddr::is_ipv4);
            let v6 = p.addresses.iter().all(IpAddr::is_ipv6);
            if !v4 && !v6 {
                return Err(err(k("addresses"), "mixes IPv4 and IPv6".into()));
            }
            let max = if v4 { 32 } else { 128 };
            if p.prefix == 0 || p.prefix > max {
                return Err(err(k("prefix"), format!("{}: 1..={max}", p.prefix)));
            }
            if let Some(g) = p.gateway {
                if g.is_ipv4() != v4 {
                    return Err(err(k("gateway"), format!("{g} is not of the addresses' family")));
                }
            }
            if p.ssh_user.is_empty() || p.ssh_user.len() > 32 || p.ssh_user.contains(['@', ':', ' ']) {
                return Err(err(k("ssh_user"), format!("{:?} is not a user name", p.ssh_user)));
            }
            match (p.host_keys, &p.known_hosts) {
                (HostKeyPolicy::KnownHosts, None) => {
                    return Err(err(k("known_hosts"), "host_keys = \"known-hosts\" needs the file".into()));
                }
                (HostKeyPolicy::Inject, Some(_)) => {
                    return Err(err(k("known_hosts"), "only with host_keys = \"known-hosts\"".into()));
                }
                _ => {}
            }
            if !(1..=3600).contains(&p.ssh_timeout_seconds) {
                return Err(err(k("ssh_timeout_seconds"), format!("{}: 1..=3600", p.ssh_timeout_seconds)));
            }
            if let Some(c) = &p.processor_command {
                if c.trim().is_empty() || c.len() > 4096 || c.contains(['\n', '\0']) {
                    return Err(err(k("processor_command"), "one line, not empty".into()));
                }
            }
        }
        let mut names = BTreeSet::new();
        for (i, j) in self.jobs.iter().enumerate() {
            let k = |f: &str| format!("job[{i}].{f}");
            if !valid_name(&j.name) {
                return Err(err(k("name"), format!("{:?}: 1 to 64 of A-Z a-z 0-9 - _ .", j.name)));
            }
            if !names.insert(&j.name) {
                return Err(err(k("name"), format!("a second job named {:?}", j.name)));
            }
            // Replication jobs cover VMs of a pool as backups do.
            let backup = matches!(j.kind, JobKind::Backup | JobKind::Replication);
            if (backup && j.vms.is_empty()) || j.vms.len() > MAX_JOB_VMS {
                return Err(err(k("vms"), format!("{} VMs (1..={MAX_JOB_VMS})", j.vms.len())));
            }
            if let Some(v) = j.vms.iter().find(|v| v.trim().is_empty() || v.len() > 255) {
                return Err(err(k("vms"), format!("{v:?} is not a VM name or uuid")));
            }
            if self.store(&j.store).is_none() {
                return Err(err(k("store"), format!("no [[store]] named {:?}", j.store)));
            }
            if (backup || !j.pool.is_empty()) && self.pool(&j.pool).is_none() {
                return Err(err(k("pool"), format!("no [[pool]] named {:?}", j.pool)));
            }
            match self.pool(&j.pool).map(|p| p.kind) {
                Some(PoolKind::Local) => {
                    if let Some(v) = j.vms.iter().find(|v| j.disks.get(*v).is_none_or(Vec::is_empty)) {
                        return Err(err(
                            k("disks"),
                            format!("a job in a local pool lists each VM's disks: none for {v:?}"),
                        ));
                    }
                    if let Some(v) = j.disks.keys().find(|d| !j.vms.contains(d)) {
                        return Err(err(k("disks"), format!("{v:?} is not one of the job's vms")));
                    }
                }
                _ => {
                    if !j.disks.is_empty() {
                        return Err(err(k("disks"), "only jobs in local pools list disks".into()));
                    }
                }
            }
            if let Some(v) = &j.chain.vault {
                if self.store(v).is_none() || *v == j.store {
                    return Err(err(k("chain.vault"), format!("{v:?}: another [[store]]'s name")));
                }
            } else if j.kind == JobKind::Vault {
                return Err(err(k("chain.vault"), "a vault job names the store it copies to".into()));
            }
            if j.chain.retention.is_some_and(|p| p.is_empty()) {
                return Err(err(k("chain.retention"), "keeps nothing (give keep_last, keep_daily…)".into()));
            }
            match (j.kind == JobKind::Replication, &j.target) {
                (true, None) => {
                    return Err(err(k("target"), "a replication job names the folder its replicas are kept in".into()));
                }
                (false, Some(_)) => return Err(err(k("target"), "only replication jobs have a target".into())),
                (true, Some(ReplicaTarget::Xen(x))) => {
                    if self.pool(&x.pool).is_none_or(|p| p.kind != PoolKind::Xen) {
                        return Err(err(k("target.pool"), format!("no xen [[pool]] named {:?}", x.pool)));
                    }
                    if self.pool(&j.pool).is_none_or(|p| p.kind != PoolKind::Xen) {
                        return Err(err(k("pool"), "a Xen replica target needs VMs of a xen [[pool]]".into()));
                    }
                    if x.sr.trim().is_empty() || x.sr.len() > 255 {
                        return Err(err(k("target.sr"), format!("{:?} is not an SR name or uuid", x.sr)));
                    }
                }
                _ => {}
            }
            if let Some(n) = j.options.keep {
                if j.kind != JobKind::Replication {
                    return Err(err(k("options.keep"), "only replication jobs keep points".into()));
                }
                if n == 0 || n > 10_000 {
                    return Err(err(k("options.keep"), format!("{n}: 1..=10000")));
                }
            }
            // The schedule, zone and ranges, as the services check them (below).
            if let Err(e) = j.spec().check() {
                let key = match &e {
                    alike_sched::Error::Schedule { .. } => "schedule",
                    alike_sched::Error::TimeZone { .. } => "timezone",
                    _ => "name",
                };
                return Err(err(k(key), e.to_string()));
            }
            if let Some(t) = j.options.threads {
                if t == 0 || t > crate::MAX_THREADS {
                    return Err(err(k("options.threads"), format!("{t}: 1..={}", crate::MAX_THREADS)));
                }
            }
        }
        for (i, n) in self.notify.iter().enumerate() {
            if let Err(e) = n.notifier() {
                return Err(err(format!("notify[{i}]"), e.to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1

[[store]]
name = "main"
path = "stores/main"
passphrase = { file = "secrets/store.pass" }

[[store]]
name = "cloud"
url = "s3://bucket/alike"
endpoint = "http://127.0.0.1:9000"
allow_http = true
access_key_id = { env = "AWS_ACCESS_KEY_ID" }
secret_access_key = { env = "AWS_SECRET_ACCESS_KEY" }

[[pool]]
name = "xen-a"
kind = "xen"
url = "https://xapi.example"
user = "root"
password = { file = "/etc/alike/xapi.pass" }
template = "alike-processor"
network = "backup-vlan"
addresses = ["10.1.0.8/30", "10.1.0.20-10.1.0.21", "10.1.0.30"]
gateway = "10.1.0.1"
ssh_key = "id_ed25519"

[[pool]]
name = "lab"
kind = "local"
addresses = ["fd00::10-fd00::11"]
prefix = 64
ssh_key = "/k"
host_keys = "known-hosts"
known_hosts = "kh"

[[job]]
name = "nightly"
kind = "backup"
vms = ["web-01", "db-01"]
store = "main"
pool = "xen-a"
options = { quiesce = true, threads = 2 }

[[job]]
name = "dr"
kind = "replication"
vms = ["web-01"]
store = "main"
pool = "xen-a"
target = "replicas"
schedule = "0 * * * *"
options = { processor = false, keep = 24 }
"#;

    #[test]
    fn parses_and_resolves_a_whole_file() {
        let c = Config::parse(GOOD, "/etc/alike/alike.toml").unwrap();
        let s = c.store("main").unwrap();
        assert_eq!(s.path.as_deref(), Some(Path::new("/etc/alike/stores/main")));
        assert_eq!(s.passphrase, Some(SecretRef::File("/etc/alike/secrets/store.pass".into())));
        assert_eq!(c.store("cloud").unwrap().location(), "s3://bucket/alike");
        let p = c.pool("xen-a").unwrap();
        let a: Vec<String> = p.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(a, ["10.1.0.9", "10.1.0.10", "10.1.0.20", "10.1.0.21", "10.1.0.30"]);
        assert_eq!((p.prefix, p.ssh_user.as_str(), p.ssh_timeout_seconds), (24, "root", 120));
        assert_eq!(p.ssh_key, Path::new("/etc/alike/id_ed25519"));
        assert_eq!(p.host_keys, HostKeyPolicy::Inject);
        let l = c.pool("lab").unwrap();
        assert_eq!(l.addresses.len(), 2);
        assert_eq!(l.known_hosts.as_deref(), Some(Path::new("/etc/alike/kh")));
        let j = c.job("nightly").unwrap();
        assert!(j.options.processor && j.options.quiesce);
        assert_eq!(j.options.threads, Some(2));
        let dr = c.job("dr").unwrap().spec();
        assert_eq!(dr.kind, alike_sched::JobKind::Replication);
        assert_eq!(dr.target.as_deref(), Some("/etc/alike/replicas"));
        assert_eq!(dr.options.get("keep").and_then(|v| v.as_u64()), Some(24));
        // What it serialises to parses back the same.
        let again: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again.pool("xen-a").unwrap().addresses, p.addresses);
    }

    fn bad(edit: impl Fn(&str) -> String) -> (String, String) {
        match Config::parse(&edit(GOOD), "/c.toml").unwrap_err() {
            Error::Config { key, message, .. } => (key, message),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn every_mistake_names_its_key() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("kind = \"backup\"", "kind = \"backup\"\nschedul = \"daily\"", "line", "unknown field `schedul`"),
            ("passphrase = { file = \"secrets/store.pass\" }", "passphrase = \"hunter2\"", "line", "never written"),
            ("{ env = \"AWS_ACCESS_KEY_ID\" }", "{ env = \"1X\" }", "line", "environment variable name"),
            ("\"10.1.0.30\"]", "\"10.1.0.300\"]", "line", "not an IP address"),
            ("\"10.1.0.20-10.1.0.21\"", "\"10.1.0.21-10.1.0.20\"", "line", "ends before"),
            ("\"10.1.0.8/30\"", "\"10.1.0.9/30\"", "line", "host bits"),
            ("\"10.1.0.30\"]", "\"10.1.0.30\", \"10.1.0.9\"]", "pool[0].addresses", "listed twice"),
            ("\"10.1.0.30\"]", "\"10.0.0.0/8\"]", "line", "more than 4096"),
            ("prefix = 64", "prefix = 129", "pool[1].prefix", "1..=128"),
            ("pool = \"xen-a\"", "pool = \"xen-b\"", "job[0].pool", "no [[pool]]"),
            ("store = \"main\"", "store = \"nope\"", "job[0].store", "no [[store]]"),
            ("threads = 2", "threads = 0", "job[0].options.threads", "1..="),
            ("template = \"alike-processor\"", "", "pool[0].template", "needs it"),
            ("name = \"lab\"", "name = \"xen-a\"", "pool[1].name", "second pool"),
            ("version = 1", "version = 2", "version", "not one this build reads"),
            ("version = 1", "version = 1\norchestrator = \"a b\"", "orchestrator", "1 to 32"),
            ("pool = \"xen-a\"", "pool = \"lab\"", "job[0].disks", "none for \"web-01\""),
            (
                "pool = \"xen-a\"",
                "pool = \"xen-a\"\ndisks = { web-01 = [\"/a\"] }",
                "job[0].disks",
                "only jobs in local",
            ),
            ("host_keys = \"known-hosts\"\n", "", "pool[1].known_hosts", "only with"),
            ("kind = \"local\"", "kind = \"local\"\nnetwork = \"x\"", "pool[1].network", "only xen"),
            ("path = \"stores/main\"", "path = \"stores/main\"\nregion = \"eu\"", "store[0].region", "object-storage"),
            ("allow_http = true\n", "", "store[1].endpoint", "allow_http"),
            ("target = \"replicas\"\n", "", "job[1].target", "names the folder"),
            ("keep = 24", "keep = 0", "job[1].options.keep", "1..="),
            ("threads = 2", "threads = 2, keep = 3", "job[0].options.keep", "only replication"),
            (
                "pool = \"xen-a\"\noptions",
                "pool = \"xen-a\"\ntarget = \"r\"\noptions",
                "job[0].target",
                "only replication",
            ),
        ];
        for (from, to, key, msg) in cases {
            assert!(GOOD.contains(from), "{from}");
            let (k, m) = bad(|g| g.replacen(from, to, 1));
            assert!(k.starts_with(key) && m.contains(msg), "{from} -> {to}: got {k}: {m}");
        }
    }

    #[test]
    fn secrets_are_read_from_their_reference_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(SecretRef::File(f.clone()).read().unwrap().expose(), "s3cret");
        std::fs::write(&f, "").unwrap();
        assert!(SecretRef::File(f).read().unwrap_err().to_string().contains("empty"));
        let e = SecretRef::Env("ALIKE_TEST_SURELY_UNSET_VARIABLE".into()).read().unwrap_err();
        assert!(e.to_string().contains("ALIKE_TEST_SURELY_UNSET_VARIABLE"), "{e}");
    }
}
