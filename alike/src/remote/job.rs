//! The job kinds a processor runs, as the processor protocol carries them:
//! each kind's parameters (a JSON object, unknown fields refused) and the
//! secrets it takes. `docs/processor-protocol.md` §5 is this file in words.

use std::collections::BTreeMap;
use std::path::PathBuf;

use alike_remote::protocol::{JobSpec, Secret, Secrets};
use serde::{Deserialize, Serialize};

use crate::{Error, JobPassword, JobRole, JobStore, ReplicationJob, Result};

/// The job kinds this build's processor runs.
pub const KINDS: &[&str] =
    &["backup", "restore", "verify", "replicate-sender", "replicate-receiver", "replicate-both", "xen-vm-config"];

/// The secrets a job on a store takes: its passphrase or key file, and
/// object-storage credentials.
const STORE_SECRETS: &[&str] =
    &["passphrase", "key_file", "s3_access_key_id", "s3_secret_access_key", "s3_session_token"];

/// The secret of a replication kind that carries the per-job secret (64
/// hex digits); each store's passphrase goes as `password:` + its location.
const JOB_SECRET: &str = "job_secret";
const PASSWORD_OF: &str = "password:";
/// The secret of a replication kind carrying a XAPI password: `xapi_password:` + the pool's URL.
const XAPI_PASSWORD_OF: &str = "xapi_password:";

/// The largest key file sent (hex of at most this many bytes).
const MAX_KEY_FILE: usize = 64 << 10;

/// Where a processor finds a store (as the processor sees it: a path on
/// the processor, or an object-storage URL), and how it reaches it. The
/// store's secrets (passphrase, key file, credentials) are set on the
/// [`ProcessorJob`], never here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StoreSpec {
    /// A directory on the processor, `file:///…`, or `s3://bucket/prefix`.
    pub location: String,
    /// The processor's index cache directory (default: its user's
    /// `~/.cache/alike`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Object storage: the service's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Object storage: the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Object storage: allow a plain `http://` endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
    /// Object storage: path-style (`true`) or virtual-hosted requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
}

impl StoreSpec {
    /// The store at `location`.
    pub fn new(location: impl Into<String>) -> StoreSpec {
        StoreSpec {
            location: location.into(),
            cache_dir: None,
            endpoint: None,
            region: None,
            allow_http: false,
            path_style: None,
        }
    }
}

/// `backup`: disks attached to the processor (image files or block devices
/// there) become a new version of a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BackupJob {
    /// The store.
    pub store: StoreSpec,
    /// The VM's name.
    pub vm: String,
    /// Its disks, in order: paths on the processor.
    pub disks: Vec<PathBuf>,
    /// Their image format (`raw`, `vhd`, `vhdx`); default: detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The version to build on: `latest` (the default), `none`, or an id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Metadata recorded with the version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Worker threads (0: one per core).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub threads: usize,
    /// Accept a disk of 0 bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_empty: bool,
    /// The VM's configuration, recorded in the version as an in-process
    /// backup from the hypervisor records it (the orchestrator sends the
    /// snapshot's); default: a VM with only a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<alike_core::VmInfo>,
    /// Per disk, in order: its change token now and what changed since
    /// the parent version's (the orchestrator asks the hypervisor: CBT),
    /// so the processor reads only that; empty when none is known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<DiskChanges>,
}

/// What changed on one disk of a [`BackupJob`] (`docs/processor-protocol.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DiskChanges {
    /// The disk's change token now (hex): recorded with the version, for
    /// the next incremental.
    pub token: String,
    /// The change token (hex) `ranges` are relative to: the parent
    /// version's for this disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The byte ranges `[start, end)` changed since `since`, sorted and
    /// disjoint; absent: unknown (everything allocated is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Vec<[u64; 2]>>,
}

impl DiskChanges {
    /// A disk whose change token is `token`, changed in `ranges` since `since`.
    pub fn new(token: &[u8], since: Option<&[u8]>, ranges: Option<&[std::ops::Range<u64>]>) -> DiskChanges {
        DiskChanges {
            token: hex::encode(token),
            since: since.map(hex::encode),
            ranges: ranges.map(|r| r.iter().map(|x| [x.start, x.end]).collect()),
        }
    }
}

impl BackupJob {
    /// Back up `disks` as a version of `vm` into `store`.
    pub fn new(store: StoreSpec, vm: impl Into<String>, disks: Vec<PathBuf>) -> BackupJob {
        BackupJob {
            store,
            vm: vm.into(),
            disks,
            format: None,
            parent: None,
            meta: BTreeMap::new(),
            threads: 0,
            allow_empty: false,
            changes: Vec::new(),
            config: None,
        }
    }
}

/// `restore`: one disk of a version onto a file or block device attached
/// to the processor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RestoreJob {
    /// The store.
    pub store: StoreSpec,
    /// The version: an id, a unique prefix, or `latest` (of `vm`).
    pub version: String,
    /// The VM (needed with `latest` when the store holds several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// The disk's position, from 0.
    #[serde(default)]
    pub disk: u32,
    /// Where to write it: a path on the processor.
    pub target: PathBuf,
    /// Output format (`raw`, the default, `vhd`, `vhdx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Replace an existing file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Go on past damage (zeroes where data cannot be read).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Worker threads (0: one per core).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub threads: usize,
}

impl RestoreJob {
    /// Restore disk `disk` of `version` to `target`.
    pub fn new(store: StoreSpec, version: impl Into<String>, disk: u32, target: impl Into<PathBuf>) -> RestoreJob {
        RestoreJob {
            store,
            version: version.into(),
            vm: None,
            disk,
            target: target.into(),
            format: None,
            force: false,
            partial: false,
            threads: 0,
        }
    }
}

/// `verify`: check that versions restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VerifyJob {
    /// The store.
    pub store: StoreSpec,
    /// Read and re-hash every byte (default: the quick check).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
    /// Only this VM's versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Only this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl VerifyJob {
    /// Verify the store.
    pub fn new(store: StoreSpec) -> VerifyJob {
        VerifyJob { store, full: false, vm: None, version: None }
    }
}

/// `xen-vm-config`: the recorded configuration of a VM of a XenServer/XCP-ng
/// pool, read through the processor next to it (what the receiving end of
/// a Xen replication finds or makes its replica from). Its password
/// travels as the secret `xapi_password:URL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct XenVmConfigJob {
    /// The pool (its `password` moves into the job's secrets).
    pub pool: crate::JobXenPool,
    /// The VM: name, uuid or ref.
    pub vm: String,
}

impl XenVmConfigJob {
    /// VM `vm` of `pool`.
    pub fn new(pool: crate::JobXenPool, vm: impl Into<String>) -> XenVmConfigJob {
        XenVmConfigJob { pool, vm: vm.into() }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What a job does.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum JobKind {
    /// Back up disks attached to the processor.
    Backup(BackupJob),
    /// Restore a disk onto the processor.
    Restore(RestoreJob),
    /// Verify a store.
    Verify(VerifyJob),
    /// Be the sending end of a replication (`docs/replication-job.md`; the
    /// job's `role` is `sender`).
    ReplicateSender(ReplicationJob),
    /// Be the receiving end of a replication (`role` `receiver`).
    ReplicateReceiver(ReplicationJob),
    /// Read a Xen VM's recorded configuration.
    XenVmConfig(XenVmConfigJob),
    /// Play both ends of a replication in one process (the sender's job
    /// first, then the receiver's): one processor sees both the source
    /// and the replica, and no data crosses a network.
    ReplicateBoth(Box<ReplicationJob>, Box<ReplicationJob>),
}

impl JobKind {
    /// The kind's name in the protocol.
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Backup(_) => "backup",
            JobKind::Restore(_) => "restore",
            JobKind::Verify(_) => "verify",
            JobKind::ReplicateSender(_) => "replicate-sender",
            JobKind::ReplicateReceiver(_) => "replicate-receiver",
            JobKind::XenVmConfig(_) => "xen-vm-config",
            JobKind::ReplicateBoth(..) => "replicate-both",
        }
    }
}

/// One job for a processor: what to do and its secrets.
///
/// ```
/// use alike::remote::{BackupJob, ProcessorJob, StoreSpec};
/// let job = ProcessorJob::backup(BackupJob::new(StoreSpec::new("/srv/store"), "web-01", vec!["/dev/xvdb".into()]))
///     .passphrase("correct horse");
/// assert_eq!(job.kind_name(), "backup");
/// // The secret is in the spec, and nowhere in its Debug form.
/// assert!(!format!("{:?}", job.to_spec()?).contains("correct horse"));
/// # Ok::<(), alike::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProcessorJob {
    /// The job's id (echoed in its events; a fresh one by default).
    pub id: String,
    /// What to do.
    pub kind: JobKind,
    /// The shortest time between progress events, milliseconds (default 500).
    pub progress_interval_ms: Option<u64>,
    secrets: Secrets,
}

fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(&std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos().to_le_bytes());
    format!("job-{}", &h.finalize().to_hex()[..12])
}

impl ProcessorJob {
    /// A job of `kind`, with a fresh id and no secrets.
    pub fn new(kind: JobKind) -> ProcessorJob {
        ProcessorJob { id: new_id(), kind, progress_interval_ms: None, secrets: Secrets::new() }
    }
    /// A backup job.
    pub fn backup(job: BackupJob) -> ProcessorJob {
        ProcessorJob::new(JobKind::Backup(job))
    }
    /// A restore job.
    pub fn restore(job: RestoreJob) -> ProcessorJob {
        ProcessorJob::new(JobKind::Restore(job))
    }
    /// A verify job.
    pub fn verify(job: VerifyJob) -> ProcessorJob {
        ProcessorJob::new(JobKind::Verify(job))
    }
    /// One end of a replication, as its role says (`replicate-sender` or
    /// `replicate-receiver`), with the replication's job id. The per-job
    /// secret and the stores' passphrases move from the job description
    /// into the job's secrets (see [`ProcessorJob::to_spec`]).
    pub fn replication_end(job: ReplicationJob) -> ProcessorJob {
        let id = job.job_id.clone();
        let kind = match job.role {
            JobRole::Sender => JobKind::ReplicateSender(job),
            JobRole::Receiver => JobKind::ReplicateReceiver(job),
        };
        ProcessorJob::new(kind).with_id(id)
    }
    /// Takes `other`'s secrets (a job made for each VM of a processor job).
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn set_secrets_from(&mut self, other: &ProcessorJob) {
        self.secrets = other.secrets.clone();
    }
    /// The kind's name.
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<String>) -> ProcessorJob {
        self.id = id.into();
        self
    }
    /// Sets the progress interval.
    pub fn with_progress_interval_ms(mut self, ms: u64) -> ProcessorJob {
        self.progress_interval_ms = Some(ms);
        self
    }
    /// The store's passphrase.
    pub fn passphrase(mut self, p: impl Into<String>) -> ProcessorJob {
        self.secrets.insert("passphrase", Secret::new(p));
        self
    }
    /// The store's key file, by its contents (what `init --key-file`
    /// wrote): the processor needs no copy of the file.
    pub fn key_file_contents(mut self, data: &[u8]) -> ProcessorJob {
        self.secrets.insert("key_file", Secret::new(hex::encode(data)));
        self
    }
    /// Object-storage credentials.
    pub fn s3_credentials(mut self, access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        self.secrets.insert("s3_access_key_id", Secret::new(access_key_id));
        self.secrets.insert("s3_secret_access_key", Secret::new(secret_access_key));
        self
    }
    /// An object-storage session token (temporary credentials).
    pub fn s3_session_token(mut self, token: impl Into<String>) -> ProcessorJob {
        self.secrets.insert("s3_session_token", Secret::new(token));
        self
    }
    /// The secrets set.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The job as the protocol carries it. For the replication kinds the
    /// parameters are the job description (`docs/replication-job.md`)
    /// without its secrets: the per-job secret goes as the secret
    /// `job_secret`, each store's `password` as `password:LOCATION`.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] when a parameter is out of range.
    pub fn to_spec(&self) -> Result<JobSpec> {
        if self.id.is_empty() || self.id.len() > 255 {
            return Err(Error::InvalidArgument(format!("job id {:?}: 1 to 255 bytes", self.id)));
        }
        let bad = |e: serde_json::Error| Error::InvalidArgument(format!("job parameters: {e}"));
        let mut secrets = self.secrets.clone();
        let params = match &self.kind {
            JobKind::Backup(b) => serde_json::to_value(b).map_err(bad)?,
            JobKind::Restore(r) => serde_json::to_value(r).map_err(bad)?,
            JobKind::Verify(v) => serde_json::to_value(v).map_err(bad)?,
            JobKind::XenVmConfig(x) => {
                let mut x = x.clone();
                if let Some(p) = x.pool.password.take() {
                    secrets.insert(format!("{XAPI_PASSWORD_OF}{}", x.pool.url), Secret::new(p.0));
                }
                serde_json::to_value(&x).map_err(bad)?
            }
            JobKind::ReplicateSender(j) | JobKind::ReplicateReceiver(j) => replication_params(j, &mut secrets)?,
            JobKind::ReplicateBoth(send, recv) => serde_json::json!({
                "sender": replication_params(send, &mut secrets)?,
                "receiver": replication_params(recv, &mut secrets)?,
            }),
        };
        let mut spec = JobSpec::new(&self.id, self.kind.name(), params).with_secrets(secrets);
        spec.progress_interval_ms = self.progress_interval_ms;
        Ok(spec)
    }

    /// The job a spec describes (the worker's side): the kind must be one
    /// of [`KINDS`], its parameters complete with no unknown field, and
    /// every secret one the kind takes.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`], naming the field or secret.
    pub fn from_spec(spec: JobSpec) -> Result<ProcessorJob> {
        if spec.id.is_empty() || spec.id.len() > 255 {
            return Err(Error::InvalidArgument("a job id is 1 to 255 bytes".into()));
        }
        let bad = |e: serde_json::Error| Error::InvalidArgument(format!("{} job parameters: {e}", spec.kind));
        let mut secrets = spec.secrets;
        let kind = match spec.kind.as_str() {
            "backup" => JobKind::Backup(serde_json::from_value(spec.params).map_err(bad)?),
            "restore" => JobKind::Restore(serde_json::from_value(spec.params).map_err(bad)?),
            "verify" => JobKind::Verify(serde_json::from_value(spec.params).map_err(bad)?),
            "xen-vm-config" => {
                let mut x: XenVmConfigJob = serde_json::from_value(spec.params).map_err(bad)?;
                if x.pool.password.is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "xen-vm-config job: the XAPI password travels in the secrets, as \"{XAPI_PASSWORD_OF}{}\"",
                        x.pool.url
                    )));
                }
                if let Some(p) = secrets.take(&format!("{XAPI_PASSWORD_OF}{}", x.pool.url)) {
                    x.pool.password = Some(JobPassword(p.expose().to_string()));
                }
                JobKind::XenVmConfig(x)
            }
            "replicate-both" => {
                let mut params = spec.params;
                let mut part = |name: &str| -> Result<serde_json::Value> {
                    let v = params.as_object_mut().and_then(|o| o.remove(name));
                    v.ok_or_else(|| {
                        Error::InvalidArgument(format!("replicate-both job: no \"{name}\" in the parameters"))
                    })
                };
                let (send, recv) = (part("sender")?, part("receiver")?);
                if let Some(k) = params.as_object().and_then(|o| o.keys().next()) {
                    return Err(Error::InvalidArgument(format!("replicate-both job: unknown parameter {k:?}")));
                }
                // Each end takes its own secrets; the job secret is both ends'.
                let mut mine = secrets.clone();
                let send = replication_job(send, &mut mine, JobRole::Sender, "replicate-both")?;
                let senders: Vec<String> =
                    secrets.names().filter(|n| mine.get(n).is_none() && *n != JOB_SECRET).map(str::to_owned).collect();
                let recv = replication_job(recv, &mut secrets, JobRole::Receiver, "replicate-both")?;
                for n in senders {
                    secrets.take(&n);
                }
                JobKind::ReplicateBoth(Box::new(send), Box::new(recv))
            }
            k @ ("replicate-sender" | "replicate-receiver") => {
                let role = if k == "replicate-sender" { JobRole::Sender } else { JobRole::Receiver };
                let job = replication_job(spec.params, &mut secrets, role, k)?;
                if role == JobRole::Sender { JobKind::ReplicateSender(job) } else { JobKind::ReplicateReceiver(job) }
            }
            k => {
                return Err(Error::InvalidArgument(format!(
                    "this processor does not run {k:?} jobs (it runs: {})",
                    KINDS.join(", ")
                )));
            }
        };
        let takes: &[&str] = match kind {
            JobKind::ReplicateSender(_)
            | JobKind::ReplicateReceiver(_)
            | JobKind::ReplicateBoth(..)
            | JobKind::XenVmConfig(_) => &[],
            _ => STORE_SECRETS,
        };
        if let Some(n) = secrets.names().find(|n| !takes.contains(n)) {
            let takes = if matches!(kind, JobKind::XenVmConfig(_)) {
                format!("{XAPI_PASSWORD_OF}URL for its pool")
            } else if takes.is_empty() {
                format!(
                    "{JOB_SECRET}, {PASSWORD_OF}LOCATION for each store and {XAPI_PASSWORD_OF}URL for each pool it names"
                )
            } else {
                takes.join(", ")
            };
            return Err(Error::InvalidArgument(format!(
                "a {} job takes no secret {n:?} (it takes: {takes})",
                spec.kind
            )));
        }
        if secrets.get("key_file").is_some_and(|k| k.expose().len() > 2 * MAX_KEY_FILE) {
            return Err(Error::InvalidArgument("the key_file secret is larger than a key file".into()));
        }
        Ok(ProcessorJob { id: spec.id, kind, progress_interval_ms: spec.progress_interval_ms, secrets })
    }

    /// Opens the job's store with its secrets (the worker's side).
    pub(crate) fn open_store(&self, s: &StoreSpec) -> Result<crate::Store> {
        let mut b = crate::Store::builder();
        if let Some(d) = &s.cache_dir {
            b.cache_dir(d);
        }
        if let Some(p) = self.secrets.get("passphrase") {
            b.passphrase(p.expose());
        }
        if let Some(k) = self.secrets.get("key_file") {
            let bytes = zeroize::Zeroizing::new(
                hex::decode(k.expose())
                    .map_err(|_| Error::InvalidArgument("the key_file secret is not hex (of a key file)".into()))?,
            );
            b.key_file_contents(bytes.to_vec());
        }
        let mut o = alike_ads::ObjectOptions::default();
        if let Some(e) = &s.endpoint {
            o.endpoint(e);
        }
        if let Some(r) = &s.region {
            o.region(r);
        }
        o.allow_http(s.allow_http);
        if let Some(p) = s.path_style {
            o.path_style(p);
        }
        match (self.secrets.get("s3_access_key_id"), self.secrets.get("s3_secret_access_key")) {
            (Some(k), Some(v)) => {
                o.credentials(k.expose(), v.expose());
            }
            (None, None) => {}
            _ => {
                return Err(Error::InvalidArgument("s3_access_key_id and s3_secret_access_key come together".into()));
            }
        }
        o.session_token = self.secrets.get("s3_session_token").map(|t| t.expose().to_string());
        b.object_options(o);
        b.open_at(&s.location)
    }
}

/// A replication end's parameters: its description without its secrets,
/// which move into `secrets` (the per-job secret as `job_secret`, each
/// store's passphrase as `password:LOCATION`, each pool's XAPI password
/// as `xapi_password:URL`).
fn replication_params(j: &ReplicationJob, secrets: &mut Secrets) -> Result<serde_json::Value> {
    let mut j = j.clone();
    for st in stores_of(&mut j) {
        if let Some(p) = st.password.take() {
            secrets.insert(format!("{PASSWORD_OF}{}", st.location), Secret::new(p.0));
        }
    }
    for pool in xen_pools_of(&mut j) {
        if let Some(p) = pool.password.take() {
            secrets.insert(format!("{XAPI_PASSWORD_OF}{}", pool.url), Secret::new(p.0));
        }
    }
    let mut v = serde_json::to_value(&j).map_err(|e| Error::InvalidArgument(format!("job parameters: {e}")))?;
    if let Some(serde_json::Value::String(hex)) = v.as_object_mut().and_then(|o| o.remove("secret")) {
        secrets.insert(JOB_SECRET, Secret::new(hex));
    }
    Ok(v)
}

/// Every store a replication job names (its sources' stores, its seed's,
/// its one-pass target).
fn stores_of(job: &mut ReplicationJob) -> Vec<&mut JobStore> {
    let mut out: Vec<&mut JobStore> = Vec::new();
    for d in &mut job.disks {
        if let crate::JobSource::StoreVersion { store, .. } = d {
            out.push(store);
        }
    }
    if let Some(s) = &mut job.seed {
        out.push(&mut s.store);
    }
    if let Some(s) = &mut job.backup_to {
        out.push(s);
    }
    out
}

/// Every XenServer/XCP-ng pool a replication job names (its Xen source's,
/// its Xen replica's).
fn xen_pools_of(job: &mut ReplicationJob) -> Vec<&mut crate::JobXenPool> {
    let mut out: Vec<&mut crate::JobXenPool> = Vec::new();
    for d in &mut job.disks {
        if let crate::JobSource::Xen { pool } = d {
            out.push(pool);
        }
    }
    if let Some(crate::JobReplica::Xen(x)) = &mut job.replica {
        out.push(&mut x.pool);
    }
    out
}

/// A replication end's job description from a spec: the parameters with
/// the secrets put back where the description holds them. The secrets
/// used are taken out of `secrets`; what is left is refused by the caller.
fn replication_job(
    mut params: serde_json::Value,
    secrets: &mut Secrets,
    role: JobRole,
    kind: &str,
) -> Result<ReplicationJob> {
    let bad = |m: String| Err(Error::InvalidArgument(format!("{kind} job: {m}")));
    let Some(obj) = params.as_object_mut() else { return bad("the parameters are not an object".into()) };
    if obj.contains_key("secret") {
        return bad(format!("the per-job secret travels in the secrets, as {JOB_SECRET:?}, not in the parameters"));
    }
    let Some(secret) = secrets.take(JOB_SECRET) else {
        return bad(format!("the secret {JOB_SECRET:?} (64 hex digits) is missing"));
    };
    obj.insert("secret".into(), serde_json::Value::String(secret.expose().to_string()));
    let text = zeroize::Zeroizing::new(serde_json::to_vec(&params).map_err(|e| Error::InvalidArgument(e.to_string()))?);
    let mut job = ReplicationJob::from_json(&text)?;
    if job.role != role {
        return bad(format!("the job description's role is {}", job.role.name()));
    }
    let mut used = Vec::new();
    for st in stores_of(&mut job) {
        if st.password.is_some() {
            return bad(format!(
                "store {}: a passphrase travels in the secrets, as \"{PASSWORD_OF}{}\"",
                st.location, st.location
            ));
        }
        let name = format!("{PASSWORD_OF}{}", st.location);
        if let Some(p) = secrets.get(&name) {
            st.password = Some(JobPassword(p.expose().to_string()));
            used.push(name);
        }
    }
    for pool in xen_pools_of(&mut job) {
        if pool.password.is_some() {
            return bad(format!(
                "pool {}: a XAPI password travels in the secrets, as \"{XAPI_PASSWORD_OF}{}\"",
                pool.url, pool.url
            ));
        }
        let name = format!("{XAPI_PASSWORD_OF}{}", pool.url);
        if let Some(p) = secrets.get(&name) {
            pool.password = Some(JobPassword(p.expose().to_string()));
            used.push(name);
        }
    }
    for n in used {
        secrets.take(&n);
    }
    Ok(job)
}
