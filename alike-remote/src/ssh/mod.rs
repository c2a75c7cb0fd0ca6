//! The SSH side: an orchestrator's client for processors.
//!
//! - [`Host`] (`user@host[:port]`), [`HostKeyPolicy`] (a known_hosts file or
//!   fingerprints: an unknown or changed key is refused, naming the host,
//!   the port and both fingerprints), [`ClientKey`] (an OpenSSH private key
//!   file, maybe with a passphrase), [`SshOptions`] (timeouts and bounds).
//! - [`Session::connect`] → [`Session::exec`] → [`RemoteProcess`]: a
//!   command's output as bounded lines, its input, its end.
//! - [`run_job`]: one job on a processor (`alike processor`), events as they
//!   come, the result at the end, cancel.
//!
//! ```no_run
//! use alike_remote::ssh::{ClientKey, Host, HostKeyPolicy, JobOptions, Session, SshOptions, run_job};
//! use alike_remote::protocol::JobSpec;
//!
//! let host: Host = "backup@10.0.0.7".parse()?;
//! let session = Session::connect(
//!     &host,
//!     &HostKeyPolicy::known_hosts("/etc/alike/known_hosts"),
//!     &ClientKey::new("/etc/alike/id_ed25519"),
//!     &SshOptions::default(),
//! )?;
//! let spec = JobSpec::new("job-1", "verify", serde_json::json!({"store": {"location": "/srv/store"}}));
//! let result = run_job(&session, spec, &JobOptions::default(), &Default::default(), &mut |e| println!("{e:?}"))?;
//! println!("{result}");
//! # Ok::<(), alike_remote::ssh::RemoteError>(())
//! ```

mod client;
mod error;
mod host;
mod known_hosts;
mod run;

pub use client::{ClientKey, Output, RemoteProcess, Session, SshOptions};
pub use error::RemoteError;
pub use host::{Host, SSH_PORT};
pub use known_hosts::{HostKeyPolicy, KnownHosts, Lookup, fingerprint};
pub use run::{DEFAULT_COMMAND, JobOptions, run_job};
