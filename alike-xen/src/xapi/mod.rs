//! A XAPI client (XenServer / XCP-ng): JSON-RPC over HTTP and HTTPS, and
//! the HTTP handlers that move disk contents.
//!
//! - Transport: `POST /jsonrpc` with JSON-RPC 2.0 requests; replies
//!   decoded in every shape XAPI uses (2.0 error objects, 1.0 error arrays,
//!   the `Status`/`Failure` struct). HTTPS through rustls with the ring
//!   provider; server certificates checked by [`crate::ServerCertCheck`]
//!   (pinning by SHA-256 fingerprint, since pool certificates are usually
//!   self-signed). reqwest's blocking client carries it (already in the
//!   build for the object store).
//! - Bounds: a JSON-RPC reply is read up to [`ClientBuilder::max_reply_bytes`]
//!   ([`DEFAULT_MAX_REPLY`], 256 MiB; XAPI sets none), an error body up to
//!   2 KiB, an upload's answer up to 64 KiB; a raw export must be exactly
//!   the VDI's virtual size, and a VHD export is parsed as it streams
//!   (never buffered whole).
//! - Plain HTTP: `http://` only to a loopback address unless
//!   [`ClientBuilder::allow_insecure_http`] (the password would travel in
//!   clear), never with a certificate check; an untrusted HTTPS certificate
//!   is [`crate::Error::CertificateUntrusted`] with its fingerprint, to check
//!   and pin.
//! - Sessions: [`ClientBuilder::login`]; transparent re-login and one retry
//!   on `SESSION_INVALID`; `HOST_IS_SLAVE` moves to the pool master.
//! - Errors: [`crate::Error::Xapi`] keeps the XAPI code and parameters and
//!   the method; transport failures are [`crate::Error::Http`],
//!   [`crate::Error::HttpStatus`], [`crate::Error::CertificateMismatch`].
//! - Calls: [`Client::call`] for any method, [`Client::call_async`] for
//!   `Async.*` with task polling, and typed helpers for what a backup needs
//!   (VM/VBD/VDI records, `VM.snapshot`, CBT: `VDI.enable_cbt`,
//!   `VDI.list_changed_blocks` → [`ChangedBlocks`], `VDI.get_nbd_info` →
//!   [`NbdInfo`] → [`crate::nbd::NbdBuilder`], `VDI.data_destroy`, `VM.destroy`).
//! - HTTP: [`Client::export_raw_vdi`] (raw, VHD, VHD delta with `base=`) as
//!   a stream, [`Client::import_raw_vdi`] / [`Client::import_disk`] with a
//!   `Content-Length` (XAPI refuses chunked encoding).
//!
//! ```no_run
//! use alike_xen::xapi::Client;
//! use alike_xen::ServerCertCheck;
//!
//! let xapi = Client::builder("https://pool.example")
//!     .credentials("root", "secret")
//!     .server_cert(ServerCertCheck::pin("AB:CD:…")?)
//!     .login()?;
//! for (vm_ref, vm) in xapi.vm_get_all_records()? {
//!     if vm.is_guest() {
//!         println!("{vm_ref} {}", vm.name_label);
//!     }
//! }
//! xapi.logout()?;
//! # Ok::<(), alike_xen::Error>(())
//! ```

mod client;
mod http;
mod types;
mod wire;

pub use client::{Client, ClientBuilder, DEFAULT_MAX_REPLY};
pub use http::{ExportFormat, ExportStream, ImportFormat};
pub use types::{NULL_REF, NbdInfo, TaskRecord, VbdRecord, VdiRecord, VmRecord};
pub use wire::ChangedBlocks;
