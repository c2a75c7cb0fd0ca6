//! Stores on object storage: [`ObjectBackend`] implements [`Backend`] over the
//! `object_store` crate, and [`backend_for`] picks a backend from a location.
//!
//! # Locations
//!
//! | location | backend | cargo feature |
//! |---|---|---|
//! | `/srv/alike`, `relative/dir`, `file:///srv/alike` | [`LocalBackend`] (a directory or an SMB/NFS mount) | — |
//! | `s3://bucket`, `s3://bucket/some/prefix` (also `s3a://`) | S3 or any S3-compatible service (MinIO, SeaweedFS, Ceph RGW, R2…) | `s3` (default) |
//! | `az://container/prefix` (also `azure://`) | Azure Blob Storage | `azure` |
//! | `gs://bucket/prefix` | Google Cloud Storage | `gcp` |
//!
//! The store's objects sit under the prefix with the same keys as in a
//! directory (`<prefix>/config`, `<prefix>/packs/ab/…`; `docs/format.md` §1).
//! `https://…` locations are refused: name the bucket with `s3://` and give
//! the service's address as the endpoint.
//!
//! # Credentials and settings (S3)
//!
//! Highest precedence first:
//!
//! 1. [`ObjectOptions`]: `endpoint`, `region`, `access_key_id`,
//!    `secret_access_key`, `session_token`, `allow_http`, `path_style`.
//! 2. The profile named by [`ObjectOptions::profile`], read from
//!    `~/.aws/credentials` and `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE`,
//!    `AWS_CONFIG_FILE`): static keys, `region`, `endpoint_url`.
//! 3. The environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!    `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`,
//!    `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`
//!    and every other `AWS_*` variable `object_store` knows.
//! 4. When the environment has no keys: the profile `AWS_PROFILE` (else
//!    `default`) from the same files.
//! 5. Otherwise `object_store`'s own chain: web identity
//!    (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`), the ECS container
//!    endpoint, then EC2 instance metadata.
//!
//! Profiles give static keys only (no SSO, no `role_arn`/`source_profile`
//! chains, no `credential_process`). Requests are path-style by default
//! (`https://endpoint/bucket/key`), which every S3-compatible service
//! accepts; set `path_style = Some(false)` for virtual-hosted requests.
//!
//! Azure: `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY` (or
//! `access_key_id` = account, `secret_access_key` = key), and the other
//! `AZURE_*` variables of `object_store`. GCS: `GOOGLE_SERVICE_ACCOUNT` /
//! `GOOGLE_APPLICATION_CREDENTIALS` and the other `GOOGLE_*` variables.
//!
//! # How the contract of [`Backend`] is kept
//!
//! - **Atomic writes.** An object up to [`ObjectOptions::multipart_threshold`]
//!   (16 MiB) is one PUT, which a service applies whole or not at all. A
//!   larger one (a 32 MiB pack) is a multipart upload of
//!   [`ObjectOptions::part_size`] parts (8 MiB, 4 in flight): nothing is
//!   visible under the key until the upload is completed, and a failed upload
//!   is aborted (a killed process leaves invisible parts; give the bucket a
//!   lifecycle rule that aborts incomplete multipart uploads after a day).
//! - **Create only if absent** ([`Backend::write_new`]) is a PUT with
//!   `If-None-Match: *` (AWS S3, R2, MinIO and SeaweedFS honour it; a service
//!   that ignores it silently breaks the guarantee: s3rver does). When the
//!   service answers that the object exists, the object is read back: if it
//!   holds exactly our bytes, a retried request of ours had landed and the
//!   call returns `Ok(true)`. Objects created this way are at most one PUT
//!   (5 GiB).
//! - **Listing** follows continuation tokens to the end (no 1000-key limit).
//! - **Reads** are ranged GETs; `read_tail` is one suffix-range GET that also
//!   reports the object's size.
//! - **Retries.** Every request is retried on 5xx, 429/SlowDown, connection
//!   errors and (for idempotent requests) timeouts: up to
//!   [`ObjectOptions::max_retries`] (10) times within
//!   [`ObjectOptions::retry_timeout`] (3 min), with exponential backoff from
//!   100 ms to 15 s and decorrelated jitter (`object_store`'s `RetryConfig`).
//!   A request times out after [`ObjectOptions::request_timeout`] (120 s: an
//!   8 MiB part at 70 KB/s), a connection attempt after 10 s.
//! - **Errors** name the operation and the object's URL ([`Error::Remote`]),
//!   keep the client's error as their source, and say whether a later retry
//!   might help ([`Error::retry`]).
//!
//! # Threads
//!
//! [`Backend`] is synchronous; an [`ObjectBackend`] owns a small tokio
//! runtime (up to 4 threads, `alike-object-io`). Each call spawns its request
//! on that runtime and blocks the calling thread until it finishes, so it may
//! be called from any thread — rayon workers, the pack finisher, and even
//! from inside another tokio runtime (which it then blocks).
//!
//! Packs are built in a local spool directory ([`ObjectOptions::spool_dir`],
//! default `<cache dir>/spool`) and uploaded from there; the spool file is
//! removed once the upload has completed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, LocalBackend};
use crate::repo::{CreateOptions, OpenOptions, Repository};
use crate::{Error, Result};

#[cfg(feature = "object")]
pub use imp::ObjectBackend;

/// How to reach object storage. `Default` + the fields you need; every
/// field left `None` comes from the environment (see the module doc).
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ObjectOptions {
    /// Service address, e.g. `http://127.0.0.1:8333` or `https://s3.eu-west-1.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Region (S3 default `us-east-1`).
    pub region: Option<String>,
    /// Access key id (Azure: the account name).
    pub access_key_id: Option<String>,
    /// Secret access key (Azure: the account key).
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// AWS profile to read keys, region and endpoint from.
    pub profile: Option<String>,
    /// Allow plain `http://` endpoints (test servers); off by default.
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`, the default) or, when
    /// `Some(false)`, virtual-hosted ones (`bucket.endpoint/key`).
    pub path_style: Option<bool>,
    /// Use conditional PUTs for [`Backend::write_new`] (default on). Turn
    /// off only for a service without `If-None-Match`; `write_new` then fails.
    pub disable_conditional_put: bool,
    /// Local directory where packs are built before upload (default
    /// `<default cache dir>/spool`).
    pub spool_dir: Option<PathBuf>,
    /// Objects larger than this are uploaded in parts (default 16 MiB; at
    /// most 5 GiB on remote services).
    pub multipart_threshold: Option<u64>,
    /// Size of upload parts (default 8 MiB; 5 MiB to 5 GiB on remote services).
    pub part_size: Option<u64>,
    /// Retries of a failed request (default 10).
    pub max_retries: Option<usize>,
    /// No retry starts later than this after the first attempt (default 3 min).
    pub retry_timeout: Option<Duration>,
    /// Time limit of one request, body included (default 120 s).
    pub request_timeout: Option<Duration>,
}

impl std::fmt::Debug for ObjectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("ObjectOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("profile", &self.profile)
            .field("allow_http", &self.allow_http)
            .field("path_style", &self.path_style)
            .field("disable_conditional_put", &self.disable_conditional_put)
            .field("spool_dir", &self.spool_dir)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl ObjectOptions {
    /// Sets the service endpoint.
    pub fn endpoint(&mut self, url: impl Into<String>) -> &mut Self {
        self.endpoint = Some(url.into());
        self
    }
    /// Sets the region.
    pub fn region(&mut self, region: impl Into<String>) -> &mut Self {
        self.region = Some(region.into());
        self
    }
    /// Sets static credentials.
    pub fn credentials(&mut self, access_key_id: impl Into<String>, secret: impl Into<String>) -> &mut Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret.into());
        self
    }
    /// Sets the AWS profile.
    pub fn profile(&mut self, name: impl Into<String>) -> &mut Self {
        self.profile = Some(name.into());
        self
    }
    /// Allows `http://` endpoints.
    pub fn allow_http(&mut self, yes: bool) -> &mut Self {
        self.allow_http = yes;
        self
    }
    /// Chooses path-style (`true`) or virtual-hosted (`false`) requests.
    pub fn path_style(&mut self, yes: bool) -> &mut Self {
        self.path_style = Some(yes);
        self
    }
    /// Sets the local spool directory.
    pub fn spool_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.spool_dir = Some(dir.into());
        self
    }
    /// Sets the multipart threshold and part size.
    pub fn multipart(&mut self, threshold: u64, part_size: u64) -> &mut Self {
        self.multipart_threshold = Some(threshold);
        self.part_size = Some(part_size);
        self
    }
}

/// Default size above which objects are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Default upload part size.
pub const PART_SIZE: u64 = 8 << 20;

/// What a location string names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// A local directory.
    Local(PathBuf),
    /// An object-storage URL: scheme, bucket (or container), prefix (no
    /// leading or trailing `/`, may be empty).
    Object { scheme: String, bucket: String, prefix: String },
}

fn bad(location: &str, reason: impl Into<String>) -> Error {
    Error::BadLocation { location: location.to_string(), reason: reason.into() }
}

fn parse_location(location: &str) -> Result<Location> {
    if location.is_empty() {
        return Err(bad(location, "empty"));
    }
    let Some((scheme, rest)) = location.split_once("://") else {
        return Ok(Location::Local(PathBuf::from(location)));
    };
    let scheme = scheme.to_ascii_lowercase();
    match scheme.as_str() {
        "file" => {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(bad(location, "a file URL needs an absolute path: file:///dir"));
            }
            Ok(Location::Local(PathBuf::from(path)))
        }
        "s3" | "s3a" | "az" | "azure" | "gs" => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad(location, "no bucket: write s3://bucket/prefix"));
            }
            if bucket.contains('@') || bucket.contains(':') {
                return Err(bad(location, "credentials or ports do not belong in the URL: use the options"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
                return Err(bad(location, "the prefix has an empty, '.' or '..' segment"));
            }
            Ok(Location::Object { scheme, bucket: bucket.to_string(), prefix: prefix.to_string() })
        }
        "http" | "https" => {
            Err(bad(location, "name the bucket as s3://bucket/prefix and give the service address as the endpoint"))
        }
        other => Err(bad(location, format!("unknown scheme {other}:// (use a path, file://, s3://, az:// or gs://)"))),
    }
}

/// The backend for a location: a path or `file://` URL gives a
/// [`LocalBackend`], `s3://`, `az://`, `gs://` an object-storage backend
/// (see the module doc for the forms and credentials).
///
/// # Errors
/// [`Error::BadLocation`] for an unusable location or a backend this build
/// lacks (cargo features `s3`, `azure`, `gcp`); client set-up errors.
pub fn backend_for(location: &str, opts: &ObjectOptions) -> Result<Arc<dyn Backend>> {
    match parse_location(location)? {
        Location::Local(p) => Ok(Arc::new(LocalBackend::new(p))),
        Location::Object { .. } => object_backend(location, opts),
    }
}

#[cfg(feature = "object")]
fn object_backend(location: &str, opts: &ObjectOptions) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(ObjectBackend::open(location, opts)?))
}

#[cfg(not(feature = "object"))]
fn object_backend(location: &str, _opts: &ObjectOptions) -> Result<Arc<dyn Backend>> {
    Err(bad(location, "this build has no object-storage support (cargo features s3, azure, gcp)"))
}

impl Repository {
    /// Creates a store at a location: a directory (created if missing, must
    /// be empty) or an object-storage URL (its prefix must hold no store).
    /// Two concurrent creations of one store: exactly one succeeds.
    ///
    /// # Errors
    /// As [`Repository::create`]; [`Error::BadLocation`].
    pub fn create_at(location: &str, object: &ObjectOptions, opts: &CreateOptions) -> Result<()> {
        match parse_location(location)? {
            Location::Local(p) => Repository::create_local(p, opts),
            Location::Object { .. } => Repository::create(object_backend(location, object)?, opts),
        }
    }

    /// Opens the store at a location (path or URL, as [`backend_for`]).
    ///
    /// # Errors
    /// As [`Repository::open`]; [`Error::BadLocation`].
    pub fn open_at(location: &str, object: &ObjectOptions, opts: &OpenOptions) -> Result<Repository> {
        Repository::open(backend_for(location, object)?, opts)
    }
}

#[cfg(feature = "object")]
mod imp {
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use object_store::path::Path as ObjPath;
    use object_store::{
        BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode,
        PutOptions, PutPayload, RetryConfig,
    };
    use tokio::task::JoinSet;

    use super::{Location, MULTIPART_THRESHOLD, ObjectOptions, PART_SIZE, bad, parse_location};
    use crate::backend::Backend;
    use crate::error::{Retry, io};
    use crate::{Error, Result};

    /// Parts uploaded at once by one multipart upload.
    const PARTS_IN_FLIGHT: usize = 4;
    /// The smallest part S3, GCS and R2 accept (except the last).
    const MIN_PART: u64 = 5 << 20;
    /// The largest part (and single PUT) S3 accepts.
    const MAX_PART: u64 = 5 << 30;

    /// A store on object storage. See the module doc of `object` for
    /// locations, credentials and how each guarantee is kept.
    pub struct ObjectBackend {
        store: Arc<dyn ObjectStore>,
        /// Key prefix inside the bucket, without slashes at either end.
        prefix: String,
        /// `scheme://bucket/prefix`, for messages.
        url: String,
        /// `None` only while dropping.
        rt: Option<tokio::runtime::Runtime>,
        spool: PathBuf,
        threshold: u64,
        part_size: usize,
    }

    impl std::fmt::Debug for ObjectBackend {
        // Not derived: the client's configuration holds credentials.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ObjectBackend")
                .field("url", &self.url)
                .field("spool", &self.spool)
                .field("threshold", &self.threshold)
                .field("part_size", &self.part_size)
                .finish_non_exhaustive()
        }
    }

    /// A failure inside an async operation, before context is added.
    enum Fail {
        Remote(&'static str, object_store::Error),
        Local(std::io::Error),
    }

    fn retry_of(e: &object_store::Error) -> Retry {
        use object_store::Error as E;
        match e {
            E::NotFound { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. } => Retry::Permanent,
            _ => {
                // Walk the chain: a transport failure is transient; a status
                // (object_store keeps the type private, its text is stable) is
                // transient for 5xx and 429, permanent for other 4xx.
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
                while let Some(x) = cur {
                    if let Some(h) = x.downcast_ref::<object_store::client::HttpError>() {
                        return match h.kind() {
                            object_store::client::HttpErrorKind::Decode => Retry::Unknown,
                            _ => Retry::Transient,
                        };
                    }
                    let text = x.to_string();
                    if let Some(rest) = text.split("status code: ").nth(1) {
                        let code: String = rest.chars().take_while(char::is_ascii_digit).collect();
                        match code.parse::<u16>() {
                            Ok(429 | 500..=599) => return Retry::Transient,
                            Ok(400..=499) => return Retry::Permanent,
                            _ => {}
                        }
                    }
                    cur = x.source();
                }
                Retry::Unknown
            }
        }
    }

    fn client_options(opts: &ObjectOptions, allow_http: bool) -> ClientOptions {
        ClientOptions::new()
            .with_allow_http(allow_http)
            .with_timeout(opts.request_timeout.unwrap_or(Duration::from_secs(120)))
            .with_connect_timeout(Duration::from_secs(10))
            .with_user_agent(object_store::HeaderValue::from_static(concat!("alike/", env!("CARGO_PKG_VERSION"))))
    }

    fn retry_config(opts: &ObjectOptions) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: opts.max_retries.unwrap_or(10),
            retry_timeout: opts.retry_timeout.unwrap_or(Duration::from_secs(180)),
        }
    }

    impl ObjectBackend {
        /// Connects to the store at `url` (`s3://`, `az://`, `gs://`; see the
        /// module doc). Sends no request.
        ///
        /// # Errors
        /// [`Error::BadLocation`] for an unusable URL, a service this build
        /// lacks, or options the client refuses.
        pub fn open(url: &str, opts: &ObjectOptions) -> Result<ObjectBackend> {
            let Location::Object { scheme, bucket, prefix } = parse_location(url)? else {
                return Err(bad(url, "not an object-storage URL"));
            };
            // The TLS stack is built without a default crypto provider (no
            // aws-lc-sys): install ring, unless the program installed one.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let store: Arc<dyn ObjectStore> = match scheme.as_str() {
                "s3" | "s3a" => s3(url, &bucket, opts)?,
                "az" | "azure" => azure(url, &bucket, opts)?,
                "gs" => gcs(url, &bucket, opts)?,
                _ => return Err(bad(url, "unknown scheme")),
            };
            let part = opts.part_size.unwrap_or(PART_SIZE);
            if part < MIN_PART {
                return Err(bad(url, format!("part size {part} is below the 5 MiB services accept")));
            }
            // S3's own limits (a part, and a single PUT, of at most 5 GiB).
            if part > MAX_PART {
                return Err(bad(url, format!("part size {part} is above the 5 GiB services accept")));
            }
            let threshold = opts.multipart_threshold.unwrap_or(MULTIPART_THRESHOLD);
            if threshold > MAX_PART {
                return Err(bad(url, format!("multipart threshold {threshold} is above the 5 GiB of a single PUT")));
            }
            let display = if prefix.is_empty() {
                format!("{scheme}://{bucket}")
            } else {
                format!("{scheme}://{bucket}/{prefix}")
            };
            Self::with_store(store, prefix, display, opts)
        }

        /// The object-storage code path over a local directory (created if
        /// missing), through `object_store`'s `LocalFileSystem` with fsync:
        /// for tests of this backend without a server.
        ///
        /// # Errors
        /// I/O errors creating the directory.
        pub fn local_filesystem(root: &Path, opts: &ObjectOptions) -> Result<ObjectBackend> {
            std::fs::create_dir_all(root).map_err(io(root))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(root)
                .map_err(|e| Error::Io { path: root.to_owned(), source: e.into() })?
                .with_fsync(true)
                .with_automatic_cleanup(true);
            Self::with_store(Arc::new(fs), String::new(), format!("objfs:{}", root.display()), opts)
        }

        fn with_store(
            store: Arc<dyn ObjectStore>,
            prefix: String,
            url: String,
            opts: &ObjectOptions,
        ) -> Result<ObjectBackend> {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("alike-object-io")
                .enable_all()
                .build()
                .map_err(|e| bad(&url, format!("starting the I/O runtime: {e}")))?;
            let spool = opts.spool_dir.clone().unwrap_or_else(|| crate::repo::default_cache_dir().join("spool"));
            let threshold = opts.multipart_threshold.unwrap_or(MULTIPART_THRESHOLD);
            let part_size = usize::try_from(opts.part_size.unwrap_or(PART_SIZE).max(1))
                .map_err(|_| bad(&url, "part size too large"))?;
            Ok(ObjectBackend { store, prefix, url, rt: Some(rt), spool, threshold, part_size })
        }

        /// The object path of a key.
        fn path(&self, key: &str) -> Result<ObjPath> {
            let full = if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) };
            ObjPath::parse(&full).map_err(|e| Error::InvalidArgument(format!("object key {key:?}: {e}")))
        }

        /// The URL of a key, for messages.
        fn url_of(&self, key: &str) -> String {
            format!("{}/{key}", self.url)
        }

        fn remote(&self, op: &'static str, key: &str, e: object_store::Error) -> Error {
            if let object_store::Error::NotFound { .. } = e {
                return Error::NotFound { object: key.to_string() };
            }
            if matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }) {
                return Error::Refused { op, object: self.url_of(key), reason: e.to_string() };
            }
            Error::Remote { op, url: self.url_of(key), retry: retry_of(&e), source: Box::new(e) }
        }

        /// Runs `fut` on the backend's runtime and waits for it. Works from
        /// any thread, inside a runtime or not: the future runs on our
        /// workers and this thread only waits on a channel.
        fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let rt = self.rt.as_ref().expect("runtime present until drop");
            rt.spawn(async move {
                let _ = tx.send(fut.await);
            });
            rx.recv().map_err(|_| Error::Remote {
                op: "request",
                url: self.url.clone(),
                retry: Retry::Unknown,
                source: "the object-storage task panicked or its runtime stopped".into(),
            })
        }

        /// Uploads everything `reader` yields as `key`: one PUT when it ends
        /// within the multipart threshold, else a multipart upload (aborted
        /// if anything fails, so nothing appears under `key`).
        ///
        /// # Errors
        /// [`Error::Io`] when `reader` fails (naming `what`), [`Error::Remote`].
        pub fn write_from_reader(&self, key: &str, reader: impl Read + Send + 'static) -> Result<()> {
            self.upload(key, Source::reader(Box::new(reader)), Path::new("<reader>"))
        }

        fn upload(&self, key: &str, src: Source, local: &Path) -> Result<()> {
            let path = self.path(key)?;
            let store = self.store.clone();
            let (threshold, part) = (self.threshold, self.part_size);
            let r = self.run(async move { upload(store, path, src, threshold, part).await })?;
            r.map_err(|f| match f {
                Fail::Remote(op, e) => self.remote(op, key, e),
                Fail::Local(e) => Error::Io { path: local.to_owned(), source: e },
            })
        }

        fn head(&self, key: &str) -> Result<u64> {
            let (store, path) = (self.store.clone(), self.path(key)?);
            self.run(async move { store.head(&path).await })?.map(|m| m.size).map_err(|e| self.remote("head", key, e))
        }
    }

    /// The largest object read whole (`Backend::read`): a full verify reads
    /// a pack whole, and no pack is larger than [`crate::MAX_PACK_SIZE`].
    /// Everything else read whole (config, keys, index segments, manifests,
    /// records) is far smaller.
    const MAX_WHOLE_OBJECT: u64 = crate::MAX_PACK_SIZE;

    /// A GET's body, bounded: never more than `limit` bytes, nor more than
    /// the response declared (its `Content-Length`/`Content-Range`), checked
    /// before reading and as the bytes arrive — a server that answers with a
    /// huge or endless body costs at most `limit` bytes of memory.
    async fn collect(g: object_store::GetResult, limit: u64) -> object_store::Result<Vec<u8>> {
        let declared = g.range.end.saturating_sub(g.range.start);
        let too_long = |what: String| object_store::Error::Generic { store: "alike", source: what.into() };
        if declared > limit {
            return Err(too_long(format!("the response declares {declared} bytes, more than the {limit} expected")));
        }
        let mut out = Vec::with_capacity(declared.min(8 << 20) as usize);
        let mut body = g.into_stream();
        while let Some(piece) = body.next().await {
            let piece = piece?;
            if (out.len() + piece.len()) as u64 > declared {
                return Err(too_long(format!("the body is longer than the {declared} bytes its response declared")));
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    impl Drop for ObjectBackend {
        fn drop(&mut self) {
            // Never blocks, so dropping inside an async context is fine.
            if let Some(rt) = self.rt.take() {
                rt.shutdown_background();
            }
        }
    }

    /// Bytes to upload: what was already read, then (maybe) a reader.
    struct Source {
        head: Bytes,
        reader: Option<Box<dyn Read + Send>>,
    }

    impl Source {
        fn bytes(b: Bytes) -> Source {
            Source { head: b, reader: None }
        }
        fn reader(r: Box<dyn Read + Send>) -> Source {
            Source { head: Bytes::new(), reader: Some(r) }
        }

        /// Up to `n` bytes; shorter only at the end.
        async fn next(&mut self, n: usize) -> std::io::Result<Bytes> {
            if self.head.len() >= n || self.reader.is_none() {
                let k = n.min(self.head.len());
                return Ok(self.head.split_to(k));
            }
            let head = std::mem::take(&mut self.head);
            let mut r = self.reader.take().expect("checked");
            let (r, res) = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::with_capacity(n);
                buf.extend_from_slice(&head);
                let res = (&mut r).take((n - head.len()) as u64).read_to_end(&mut buf).map(|_| buf);
                (r, res)
            })
            .await
            .map_err(std::io::Error::other)?;
            let buf = res?;
            if buf.len() == n {
                self.reader = Some(r); // more may follow
            }
            Ok(Bytes::from(buf))
        }
    }

    async fn upload(
        store: Arc<dyn ObjectStore>,
        path: ObjPath,
        mut src: Source,
        threshold: u64,
        part: usize,
    ) -> Result<(), Fail> {
        // An object that ends within the threshold is one PUT. From a reader,
        // read one byte past the threshold to know.
        if src.reader.is_some() {
            let n = usize::try_from(threshold).unwrap_or(usize::MAX - 1) + 1;
            src.head = src.next(n).await.map_err(Fail::Local)?;
        }
        if src.reader.is_none() && src.head.len() as u64 <= threshold {
            let data = std::mem::take(&mut src.head);
            store.put(&path, PutPayload::from(data)).await.map_err(|e| Fail::Remote("put", e))?;
            return Ok(());
        }
        let mut up = store.put_multipart(&path).await.map_err(|e| Fail::Remote("start multipart upload", e))?;
        let mut parts = JoinSet::new();
        match send_parts(&mut *up, &mut parts, &mut src, part).await {
            Ok(()) => match up.complete().await {
                Ok(_) => Ok(()),
                Err(e) => {
                    if let Err(a) = up.abort().await {
                        tracing::warn!(object = %path, error = %a, "could not abort a failed multipart upload");
                    }
                    Err(Fail::Remote("complete multipart upload", e))
                }
            },
            Err(f) => {
                parts.shutdown().await;
                if let Err(a) = up.abort().await {
                    tracing::warn!(object = %path, error = %a, "could not abort a failed multipart upload");
                }
                Err(f)
            }
        }
    }

    async fn send_parts(
        up: &mut dyn MultipartUpload,
        parts: &mut JoinSet<object_store::Result<()>>,
        src: &mut Source,
        part: usize,
    ) -> Result<(), Fail> {
        let joined = |r: Result<object_store::Result<()>, tokio::task::JoinError>| {
            r.map_err(|e| Fail::Remote("upload part", e.into()))?.map_err(|e| Fail::Remote("upload part", e))
        };
        loop {
            let data = src.next(part).await.map_err(Fail::Local)?;
            if data.is_empty() {
                break;
            }
            while parts.len() >= PARTS_IN_FLIGHT {
                if let Some(r) = parts.join_next().await {
                    joined(r)?;
                }
            }
            let short = data.len() < part;
            parts.spawn(up.put_part(PutPayload::from(data)));
            if short {
                break;
            }
        }
        while let Some(r) = parts.join_next().await {
            joined(r)?;
        }
        Ok(())
    }

    impl Backend for ObjectBackend {
        fn location(&self) -> String {
            self.url.clone()
        }

        fn read(&self, key: &str) -> Result<Vec<u8>> {
            let (store, path) = (self.store.clone(), self.path(key)?);
            let r = self.run(async move {
                match store.get(&path).await {
                    Ok(g) => collect(g, MAX_WHOLE_OBJECT).await,
                    Err(e) => Err(e),
                }
            })?;
            r.map_err(|e| self.remote("get", key, e))
        }

        fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
            let truncated = |got: u64| Error::Truncated { object: key.into(), offset, wanted: len, got };
            if len == 0 {
                let size = self.head(key)?;
                return if offset <= size { Ok(Vec::new()) } else { Err(truncated(0)) };
            }
            let end = offset.checked_add(len).ok_or_else(|| truncated(0))?;
            let (store, path) = (self.store.clone(), self.path(key)?);
            let r = self.run(async move {
                let opts = GetOptions { range: Some(GetRange::Bounded(offset..end)), ..Default::default() };
                collect(store.get_opts(&path, opts).await?, len).await
            })?;
            match r {
                Ok(b) if b.len() as u64 == len => Ok(b),
                Ok(b) => Err(truncated(b.len() as u64)),
                Err(e @ object_store::Error::NotFound { .. }) => Err(self.remote("get range", key, e)),
                Err(e) => {
                    // A range starting at or past the end is refused (416):
                    // report it as what it is.
                    match self.head(key) {
                        Ok(size) if size <= offset => Err(truncated(0)),
                        _ => Err(self.remote("get range", key, e)),
                    }
                }
            }
        }

        fn read_tail(&self, key: &str, len: u64) -> Result<(Vec<u8>, u64)> {
            if len == 0 {
                return Ok((Vec::new(), self.head(key)?));
            }
            let (store, path) = (self.store.clone(), self.path(key)?);
            let r = self.run(async move {
                let g = store
                    .get_opts(&path, GetOptions { range: Some(GetRange::Suffix(len)), ..Default::default() })
                    .await?;
                let size = g.meta.size;
                collect(g, len).await.map(|b| (b, size))
            })?;
            match r {
                Ok(x) => Ok(x),
                Err(e @ object_store::Error::NotFound { .. }) => Err(self.remote("get tail", key, e)),
                // Some services refuse a suffix range of an empty object.
                Err(e) => match self.head(key) {
                    Ok(0) => Ok((Vec::new(), 0)),
                    _ => Err(self.remote("get tail", key, e)),
                },
            }
        }

        fn write(&self, key: &str, data: &[u8]) -> Result<()> {
            self.upload(key, Source::bytes(Bytes::copy_from_slice(data)), Path::new("<memory>"))
        }

        fn write_new(&self, key: &str, data: &[u8]) -> Result<bool> {
            let (store, path) = (self.store.clone(), self.path(key)?);
            let payload = Bytes::copy_from_slice(data);
            let r = self.run(async move {
                let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
                match store.put_opts(&path, PutPayload::from(payload.clone()), opts).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                        // Ours if it holds our bytes: a retry of a PUT whose
                        // reply was lost finds the object it created.
                        match store.get(&path).await {
                            Ok(g) if g.meta.size != payload.len() as u64 => Ok(false),
                            Ok(g) => Ok(collect(g, payload.len() as u64).await? == payload),
                            Err(object_store::Error::NotFound { .. }) => Ok(false),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            })?;
            r.map_err(|e| self.remote("conditional put (If-None-Match)", key, e))
        }

        fn write_file(&self, key: &str, local: &Path) -> Result<()> {
            let f = std::fs::File::open(local).map_err(io(local))?;
            self.upload(key, Source::reader(Box::new(f)), local)?;
            if let Err(e) = std::fs::remove_file(local) {
                tracing::warn!(file = %local.display(), error = %e, "uploaded spool file not removed");
            }
            Ok(())
        }

        fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
            // List the deepest whole folder of `prefix`, then filter by the rest.
            let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d);
            let full = match (self.prefix.is_empty(), dir.is_empty()) {
                (true, true) => None,
                (true, false) => Some(dir.to_string()),
                (false, true) => Some(self.prefix.clone()),
                (false, false) => Some(format!("{}/{dir}", self.prefix)),
            };
            let list_path = full
                .map(|f| ObjPath::parse(&f).map_err(|e| Error::InvalidArgument(format!("list prefix {prefix:?}: {e}"))))
                .transpose()?;
            let store = self.store.clone();
            let r = self.run(async move {
                let mut out = Vec::new();
                let mut s = store.list(list_path.as_ref());
                while let Some(m) = s.next().await {
                    let m = m?;
                    out.push((m.location.to_string(), m.size));
                }
                Ok::<_, object_store::Error>(out)
            })?;
            let all = r.map_err(|e| self.remote("list", prefix, e))?;
            let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
            let mut out: Vec<(String, u64)> = all
                .into_iter()
                .filter_map(|(k, n)| {
                    let rel = k.get(strip..)?;
                    (rel.starts_with(prefix) && !rel.ends_with(".tmp") && !rel.ends_with('/'))
                        .then(|| (rel.to_string(), n))
                })
                .collect();
            out.sort();
            Ok(out)
        }

        fn exists(&self, key: &str) -> Result<bool> {
            match self.head(key) {
                Ok(_) => Ok(true),
                Err(Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        }

        fn delete(&self, key: &str) -> Result<()> {
            let (store, path) = (self.store.clone(), self.path(key)?);
            match self.run(async move { store.delete(&path).await })? {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.remote("delete", key, e)),
            }
        }

        fn spool_dir(&self) -> Result<PathBuf> {
            if !self.spool.exists() {
                std::fs::create_dir_all(&self.spool).map_err(io(&self.spool))?;
            }
            Ok(self.spool.clone())
        }
    }

    #[cfg(feature = "s3")]
    fn s3(url: &str, bucket: &str, opts: &ObjectOptions) -> Result<Arc<dyn ObjectStore>> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as K, S3ConditionalPut};
        let env_allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let mut b = AmazonS3Builder::new()
            .with_client_options(client_options(opts, opts.allow_http || env_allow_http))
            .with_retry(retry_config(opts))
            .with_bucket_name(bucket);
        let explicit_keys = opts.access_key_id.is_some() || opts.secret_access_key.is_some();
        let skip_env_keys = explicit_keys || opts.profile.is_some();
        let mut env_has_keys = false;
        for (k, v) in std::env::vars() {
            // An empty variable is unset (an empty endpoint would make every request URL relative).
            if v.trim().is_empty() {
                continue;
            }
            let Some(name) = k.strip_prefix("AWS_").map(str::to_ascii_lowercase) else { continue };
            let Ok(key) = format!("aws_{name}").parse::<K>() else { continue };
            let is_cred = matches!(key, K::AccessKeyId | K::SecretAccessKey | K::Token);
            if is_cred {
                env_has_keys |= key == K::AccessKeyId;
                if skip_env_keys {
                    continue;
                }
            }
            if matches!(key, K::Bucket) {
                continue; // the URL names the bucket
            }
            b = b.with_config(key, v);
        }
        let profile = match &opts.profile {
            Some(p) => Some((p.clone(), true)),
            None if !env_has_keys && !explicit_keys => {
                Some((std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into()), false))
            }
            None => None,
        };
        if let Some((name, explicit)) = profile {
            let p = profile::load(&name);
            if explicit && p.is_empty() {
                return Err(bad(url, format!("AWS profile {name:?} not found in ~/.aws/credentials or ~/.aws/config")));
            }
            let unset = |b: &AmazonS3Builder, k: K| b.get_config_value(&k).is_none();
            if let (Some(id), Some(secret)) = (p.access_key_id, p.secret_access_key) {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(t) = p.session_token {
                    b = b.with_token(t);
                }
            }
            if let Some(r) = p.region.filter(|_| explicit || unset(&b, K::Region)) {
                b = b.with_region(r);
            }
            if let Some(e) = p.endpoint_url.filter(|_| explicit || unset(&b, K::Endpoint)) {
                b = b.with_endpoint(e);
            }
        }
        if let Some(e) = &opts.endpoint {
            b = b.with_endpoint(e);
        }
        // object_store panics on a request URL that is not absolute: refuse such an endpoint here.
        if let Some(e) = b.get_config_value(&K::Endpoint)
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(bad(url, format!("the S3 endpoint {e:?} is not an http:// or https:// URL")));
        }
        if let Some(r) = &opts.region {
            b = b.with_region(r);
        }
        if let Some(id) = &opts.access_key_id {
            b = b.with_access_key_id(id);
        }
        if let Some(s) = &opts.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        if let Some(t) = &opts.session_token {
            b = b.with_token(t);
        }
        if let Some(p) = opts.path_style {
            b = b.with_virtual_hosted_style_request(!p);
        }
        b = b.with_conditional_put(if opts.disable_conditional_put {
            S3ConditionalPut::Disabled
        } else {
            S3ConditionalPut::ETagMatch
        });
        Ok(Arc::new(b.build().map_err(|e| bad(url, e.to_string()))?))
    }

    #[cfg(not(feature = "s3"))]
    fn s3(url: &str, _bucket: &str, _opts: &ObjectOptions) -> Result<Arc<dyn ObjectStore>> {
        Err(bad(url, "this build has no S3 support (cargo feature s3)"))
    }

    #[cfg(feature = "azure")]
    fn azure(url: &str, container: &str, opts: &ObjectOptions) -> Result<Arc<dyn ObjectStore>> {
        use object_store::azure::MicrosoftAzureBuilder;
        let mut b = MicrosoftAzureBuilder::from_env()
            .with_client_options(client_options(opts, opts.allow_http))
            .with_retry(retry_config(opts))
            .with_container_name(container);
        if let Some(a) = &opts.access_key_id {
            b = b.with_account(a);
        }
        if let Some(k) = &opts.secret_access_key {
            b = b.with_access_key(k);
        }
        if let Some(e) = &opts.endpoint {
            b = b.with_endpoint(e.clone());
        }
        Ok(Arc::new(b.build().map_err(|e| bad(url, e.to_string()))?))
    }

    #[cfg(not(feature = "azure"))]
    fn azure(url: &str, _container: &str, _opts: &ObjectOptions) -> Result<Arc<dyn ObjectStore>> {
        Err(bad(url, "this build has no Azure support (cargo feature azure)"))
    }

    #[cfg(feature = "gcp")]
    fn gcs(url: &str, bucket: &str, opts: &ObjectOptions) -> Result<Arc<dyn ObjectStore>> {
        use object_store::gcp::GoogleCloudStorageBuilder;
        let b = GoogleCloudStorageBuilder::from_env()
            .with_client_options(client_options(opts, opts.allow_http))
            .with_retry(retry_config(opts))
            .with_bucket_name(bucket);
        Ok(Arc::new(b.build().map_err(|e| bad(url, e.to_string()))?))
    }

    #[cfg(not(feature = "gcp"))]
    fn gcs(url: &str, _bucket: &str, _opts: &ObjectOptions) -> Result<Arc<dyn ObjectStore>> {
        Err(bad(url, "this build has no Google Cloud Storage support (cargo feature gcp)"))
    }

    /// Minimal reader of the AWS shared config files: static keys, region, endpoint.
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    mod profile {
        use std::path::PathBuf;

        #[derive(Debug, Default, PartialEq, Eq)]
        pub(super) struct Profile {
            pub(super) access_key_id: Option<String>,
            pub(super) secret_access_key: Option<String>,
            pub(super) session_token: Option<String>,
            pub(super) region: Option<String>,
            pub(super) endpoint_url: Option<String>,
        }

        impl Profile {
            pub(super) fn is_empty(&self) -> bool {
                *self == Profile::default()
            }
        }

        fn aws_file(var: &str, name: &str) -> Option<PathBuf> {
            std::env::var_os(var)
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws").join(name)))
        }

        /// The largest AWS config or credentials file read: they hold a few
        /// lines per profile.
        const MAX_AWS_FILE: u64 = 1 << 20;

        /// A regular file of at most [`MAX_AWS_FILE`] bytes, as text; `None`
        /// (the file ignored, with a warning that shows none of it) otherwise:
        /// `AWS_SHARED_CREDENTIALS_FILE=/dev/zero` is not read forever.
        fn read_small(path: &std::path::Path) -> Option<String> {
            use std::io::Read;
            let f = std::fs::File::open(path).ok()?;
            let ignored = |why: &str| {
                tracing::warn!(file = %path.display(), "AWS config file ignored: {why}");
                None
            };
            if !f.metadata().ok()?.is_file() {
                return ignored("not a regular file");
            }
            let mut text = String::new();
            f.take(MAX_AWS_FILE + 1).read_to_string(&mut text).ok()?;
            if text.len() as u64 > MAX_AWS_FILE {
                return ignored("larger than 1 MiB");
            }
            Some(text)
        }

        #[cfg(test)]
        #[test]
        fn aws_files_are_read_bounded() {
            let started = std::time::Instant::now();
            assert_eq!(read_small(std::path::Path::new("/dev/zero")), None);
            let dir = std::env::temp_dir().join(format!("alike-aws-{}", std::process::id()));
            std::fs::write(&dir, "[default]\nregion = x\n").unwrap();
            assert_eq!(read_small(&dir).as_deref(), Some("[default]\nregion = x\n"));
            std::fs::File::create(&dir).unwrap().set_len(MAX_AWS_FILE + 1).unwrap();
            assert_eq!(read_small(&dir), None);
            let _ = std::fs::remove_file(&dir);
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
        }

        /// `key = value` pairs of section `[section]` of an INI text.
        pub(super) fn section(text: &str, section: &str) -> Vec<(String, String)> {
            let mut inside = false;
            let mut out = Vec::new();
            for line in text.lines() {
                let line = line.trim();
                if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
                    continue;
                }
                if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    inside = name.trim() == section;
                    continue;
                }
                if let (true, Some((k, v))) = (inside, line.split_once('=')) {
                    out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            out
        }

        pub(super) fn load(name: &str) -> Profile {
            let mut p = Profile::default();
            let config_section = if name == "default" { "default".to_string() } else { format!("profile {name}") };
            let sources = [
                (aws_file("AWS_CONFIG_FILE", "config"), config_section),
                (aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), name.to_string()),
            ];
            // The credentials file comes last and wins, as in the AWS CLI.
            for (file, sect) in sources {
                let Some(text) = file.and_then(|f| read_small(&f)) else { continue };
                for (k, v) in section(&text, &sect) {
                    let slot = match k.as_str() {
                        "aws_access_key_id" => &mut p.access_key_id,
                        "aws_secret_access_key" => &mut p.secret_access_key,
                        "aws_session_token" => &mut p.session_token,
                        "region" => &mut p.region,
                        "endpoint_url" => &mut p.endpoint_url,
                        _ => continue,
                    };
                    *slot = Some(v);
                }
            }
            p
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ini_sections() {
            let t = "[default]\naws_access_key_id = A\n# c\n[profile x]\nregion=eu-west-1\nendpoint_url = http://h:1\n";
            assert_eq!(profile::section(t, "default"), vec![("aws_access_key_id".into(), "A".into())]);
            assert_eq!(profile::section(t, "profile x").len(), 2);
            assert!(profile::section(t, "y").is_empty());
        }

        #[test]
        fn callable_from_inside_a_runtime() {
            let dir = tempfile::tempdir().unwrap();
            let b = ObjectBackend::local_filesystem(&dir.path().join("s"), &ObjectOptions::default()).unwrap();
            let outer = tokio::runtime::Builder::new_current_thread().build().unwrap();
            outer.block_on(async {
                b.write("a/b", b"x").unwrap();
                assert_eq!(b.read("a/b").unwrap(), b"x");
            });
            drop(outer);
            // Dropped inside an async context: must not panic either.
            let outer = tokio::runtime::Builder::new_current_thread().build().unwrap();
            outer.block_on(async move { drop(b) });
        }

        #[test]
        fn retry_classes() {
            let e = object_store::Error::NotFound { path: "x".into(), source: "gone".into() };
            assert_eq!(retry_of(&e), Retry::Permanent);
            let e = object_store::Error::Generic {
                store: "S3",
                source: "Server returned non-2xx status code: 503 Service Unavailable: SlowDown".into(),
            };
            assert_eq!(retry_of(&e), Retry::Transient);
            let e = object_store::Error::Generic { store: "S3", source: "status code: 400 Bad Request".into() };
            assert_eq!(retry_of(&e), Retry::Permanent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let o = |s: &str, b: &str, p: &str| Location::Object { scheme: s.into(), bucket: b.into(), prefix: p.into() };
        assert_eq!(parse_location("/srv/a").unwrap(), Location::Local("/srv/a".into()));
        assert_eq!(parse_location("rel/a").unwrap(), Location::Local("rel/a".into()));
        assert_eq!(parse_location("file:///srv/a").unwrap(), Location::Local("/srv/a".into()));
        assert_eq!(parse_location("s3://b").unwrap(), o("s3", "b", ""));
        assert_eq!(parse_location("s3://b/").unwrap(), o("s3", "b", ""));
        assert_eq!(parse_location("S3://b/x/y/").unwrap(), o("s3", "b", "x/y"));
        assert_eq!(parse_location("gs://b/p").unwrap(), o("gs", "b", "p"));
        for badloc in ["", "s3://", "s3:///p", "file://rel", "https://h/b", "ftp://x", "s3://k:s@b/p", "s3://b/x/../y"]
        {
            assert!(matches!(parse_location(badloc), Err(Error::BadLocation { .. })), "{badloc}");
        }
    }

    #[cfg(feature = "s3")]
    #[test]
    fn a_bad_endpoint_is_an_error_not_a_panic() {
        for e in ["", "127.0.0.1:9000", "localhost"] {
            let mut o = ObjectOptions::default();
            o.endpoint(e).credentials("k", "s").region("us-east-1");
            match backend_for("s3://bucket/p", &o) {
                Err(Error::BadLocation { reason, .. }) => assert!(reason.contains("endpoint"), "{reason}"),
                Err(other) => panic!("{e:?}: {other}"),
                Ok(b) => {
                    // An empty endpoint may fall back to the default one; it must not panic on use.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.exists("config")));
                    assert!(r.is_ok(), "{e:?}: a request panicked");
                }
            }
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut o = ObjectOptions::default();
        o.credentials("AKID", "very-secret");
        let s = format!("{o:?}");
        assert!(s.contains("AKID") && !s.contains("very-secret"), "{s}");
    }

    #[cfg(not(feature = "azure"))]
    #[test]
    fn missing_features_are_named() {
        let e = backend_for("az://c/p", &ObjectOptions::default()).unwrap_err();
        assert!(e.to_string().contains("feature azure"), "{e}");
    }

    /// Local locations give a [`LocalBackend`] rooted there.
    #[test]
    fn local_locations() {
        let dir = tempfile::tempdir().unwrap();
        let loc = format!("file://{}", dir.path().display());
        let b = backend_for(&loc, &ObjectOptions::default()).unwrap();
        b.write("x/y", b"1").unwrap();
        assert!(dir.path().join("x/y").exists());
    }
}
