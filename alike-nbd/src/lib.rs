//! # alike-nbd
//!
//! The NBD protocol (`doc/proto.md` of the NBD project), sans I/O: wire
//! constants, encoders, total decoders, and the client's two state machines
//! — [`Handshake`] (fixed-newstyle negotiation, STARTTLS, structured
//! replies, `NBD_OPT_GO` falling back to `NBD_OPT_EXPORT_NAME`) and
//! [`Transmission`] (`NBD_CMD_READ` requests and their replies). No
//! sockets, no clock, no TLS: a shell moves the bytes (alike-xen's blocking
//! client reads XAPI's NBD exports with it). The server half, for serving a
//! stored version over NBD, will live here too.
//!
//! It depends on nothing but `std` and `thiserror`, so restores and
//! exports can speak NBD whatever the hypervisor. [`fuzz_one`] is the body
//! of the `nbd` fuzz target.
//!
//! ## Example
//! ```
//! use alike_nbd::{Handshake, HandshakeConfig, Progress};
//!
//! let mut hs = Handshake::new(HandshakeConfig::new("disk"))?;
//! // Before the server's greeting the client sends nothing and asks for
//! // the greeting's 18 bytes.
//! assert!(hs.poll_transmit().is_none());
//! assert_eq!(hs.handle_input(b"NBDMAGIC")?, Progress::NeedMore(alike_nbd::proto::GREETING_LEN));
//! # Ok::<(), alike_nbd::ProtoError>(())
//! ```

pub mod proto;

pub use proto::{
    BlockSize, ExportInfo, Handshake, HandshakeConfig, HandshakeEvent, Progress, ProtoError, Step, Transmission,
    fuzz_one,
};
