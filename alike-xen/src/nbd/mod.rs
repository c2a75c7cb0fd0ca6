//! An NBD client for reading disks: XAPI's NBD export of a VDI
//! (`VDI.get_nbd_info`), or any NBD server such as `qemu-nbd`.
//!
//! ## Layers
//! - [`proto`] (the `alike-nbd` crate): the protocol, sans I/O — fixed-newstyle handshake
//!   ([`proto::Handshake`]: `NBD_OPT_STARTTLS`, `NBD_OPT_STRUCTURED_REPLY`,
//!   `NBD_OPT_GO` with `NBD_INFO_EXPORT`/`NBD_INFO_BLOCK_SIZE`, falling back to
//!   `NBD_OPT_EXPORT_NAME` when the server answers `NBD_REP_ERR_UNSUP`, as
//!   XAPI's does), and transmission ([`proto::Transmission`]: `NBD_CMD_READ`
//!   with handles, simple and structured replies — data, hole and error
//!   chunks —, `NBD_CMD_DISC`). Total decoders; [`fuzz_one`] runs them.
//! - [`NbdClient`]: one blocking connection (`std::net::TcpStream`, TLS
//!   through rustls with the ring provider), pipelined reads.
//! - [`NbdDisk`]: an [`alike_core::DiskSource`] over a pool of connections.
//!
//! ## TLS
//! [`NbdBuilder::tls`] makes TLS mandatory (a server that refuses
//! `NBD_OPT_STARTTLS` is an error, never a silent downgrade), with the
//! server certificate checked by [`ServerCertCheck`]: the platform's roots,
//! a given CA certificate (XAPI's `cert`), or pinned SHA-256 fingerprints.
//! The SNI name is [`NbdBuilder::tls_server_name`] (XAPI's `subject`).
//!
//! ## Example
//! ```no_run
//! use alike_core::DiskSource;
//! use alike_xen::nbd::NbdBuilder;
//!
//! let mut b = NbdBuilder::new("127.0.0.1", 10809, "disk");
//! b.connections(4);
//! let disk = b.open_disk()?;
//! let mut block = vec![0u8; 65536];
//! disk.read_at(0, &mut block)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
mod disk;
pub use alike_nbd::proto;
pub(crate) mod tls;
pub use client::{DEFAULT_ALIGN, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_REQUEST, MAX_CONNECTIONS, NbdBuilder, NbdClient};
pub use disk::NbdDisk;
pub use proto::fuzz_one;
pub use tls::{ServerCertCheck, format_fingerprint, parse_fingerprint, pem_certs, sha256};

/// An export name (or URL) with the value of any `session_id=` hidden:
/// XAPI export names carry the caller's session, a bearer secret.
pub fn redact_export(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("session_id=") {
        let (head, tail) = rest.split_at(i + "session_id=".len());
        out.push_str(head);
        let end = tail.find(['&', ' ', '#', '\'', '"', ')', '<', '>', ',', ';']).unwrap_or(tail.len());
        if end > 0 {
            out.push('…');
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_hidden() {
        assert_eq!(redact_export("/abc?session_id=OpaqueRef:1234"), "/abc?session_id=…");
        assert_eq!(
            redact_export("http://h/x?session_id=S&vdi=V&session_id=T"),
            "http://h/x?session_id=…&vdi=V&session_id=…"
        );
        assert_eq!(redact_export("plain"), "plain");
        assert_eq!(redact_export("export 'x?session_id=S' not present"), "export 'x?session_id=…' not present");
    }
}
