//! # alike-nbd
//!
//! The NBD protocol (`doc/proto.md` of the NBD project), both halves, on
//! one codec ([`proto`]: wire constants, encoders, total decoders):
//!
//! - the **client** half, sans I/O — [`Handshake`] (fixed-newstyle
//!   negotiation, STARTTLS, structured replies, `NBD_OPT_GO` falling back
//!   to `NBD_OPT_EXPORT_NAME`) and [`Transmission`] (`NBD_CMD_READ` requests
//!   and their replies); alike-xen's blocking client reads XAPI's NBD
//!   exports with it;
//! - the **server** half, sans I/O ([`server`]) — [`ServerHandshake`]
//!   (export list, `INFO`/`GO`, structured replies, `base:allocation`
//!   metadata context, a STARTTLS hook) and [`ServerTransmission`] (reads
//!   with hole chunks, writes, `BLOCK_STATUS`, every refusal as its NBD
//!   error);
//! - a **blocking server shell** ([`serve`]): TCP and Unix sockets, one
//!   thread per connection up to a bound, serving anything that implements
//!   [`serve::Export`] (the `alike` facade serves stored versions with it).
//!
//! No clock, TLS library or other crate in the state machines; the shell
//! uses `std::net` only. It depends on nothing but `std` and `thiserror`,
//! so restores and exports can speak NBD whatever the hypervisor.
//! [`fuzz_one`] (both halves) and [`fuzz_server_one`] are the bodies of the
//! `nbd` and `nbd_server` fuzz targets.
//!
//! ## Example
//! The client half against the server half, in memory:
//! ```
//! use alike_nbd::{Handshake, HandshakeConfig, HandshakeEvent, Progress, ServerHandshake, ServerEvent};
//! use alike_nbd::server::{ExportConfig, ServerConfig};
//!
//! let mut client = Handshake::new(HandshakeConfig::new("disk0"))?;
//! let mut server = ServerHandshake::new(ServerConfig::new(vec![ExportConfig::read_only("disk0", 1 << 30)]));
//! let (mut to_client, mut to_server) = (Vec::new(), Vec::new());
//! let info = loop {
//!     to_client.extend(server.poll_transmit().unwrap_or_default());
//!     to_server.extend(client.poll_transmit().unwrap_or_default());
//!     if let Some(HandshakeEvent::Done(info)) = client.poll_event() {
//!         break info;
//!     }
//!     if let Progress::Consumed(n) = server.handle_input(&to_server)? {
//!         to_server.drain(..n);
//!     }
//!     if let Progress::Consumed(n) = client.handle_input(&to_client)? {
//!         to_client.drain(..n);
//!     }
//! };
//! assert_eq!(info.size, 1 << 30);
//! assert!(matches!(server.poll_event(), Some(ServerEvent::Done(n)) if n.structured));
//! # Ok::<(), alike_nbd::ProtoError>(())
//! ```

pub mod proto;
pub mod serve;
pub mod server;

pub use proto::{
    BlockSize, ExportInfo, Handshake, HandshakeConfig, HandshakeEvent, Progress, ProtoError, Step, Transmission,
    fuzz_one,
};
pub use server::{
    Command, ServerConfig, ServerEvent, ServerHandshake, ServerStep, ServerTransmission, TlsMode, fuzz_server_one,
};
