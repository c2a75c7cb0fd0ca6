//! The NBD protocol core, sans I/O: encoders, decoders and the two state
//! machines of a client — [`Handshake`] (fixed-newstyle negotiation) and
//! [`Transmission`] (`NBD_CMD_READ` requests and their replies). Nothing
//! here touches a socket or a clock; a shell (alike-xen's blocking
//! `NbdClient`) moves the bytes.
//!
//! All integers on the wire are big-endian (NBD `doc/proto.md`).
//!
//! ## Totality
//! Every decoder takes the bytes buffered so far and answers "need more"
//! ([`Progress::NeedMore`] / [`Step::NeedMore`], with the exact total it
//! needs, so a shell never reads past a message — which matters before
//! `NBD_OPT_STARTTLS`), a decoded message, or a [`ProtoError`] that names
//! what was wrong. Nothing panics on any input, and nothing allocates more
//! than [`MAX_OPTION_REPLY`] / [`MAX_CHUNK_META`] bytes on the server's
//! word: read payloads are never buffered here — a [`Step::Payload`] tells
//! the shell to put the next bytes straight into the caller's buffer, after
//! checking that they lie inside a read that is in flight.

use std::collections::{HashMap, VecDeque};
use std::fmt;

/// "NBDMAGIC", the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": the newstyle greeting's second word and every option request's magic.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The oldstyle greeting's second word (not supported).
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of an option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Server handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Server handshake flag: the 124 zero bytes after `NBD_OPT_EXPORT_NAME` may be dropped.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes.
pub const FLAG_C_NO_ZEROES: u32 = 2;

/// `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// `NBD_OPT_EXTENDED_HEADERS` (not supported by the server half: answered `NBD_REP_ERR_UNSUP`).
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply: acknowledged.
pub const REP_ACK: u32 = 1;
/// Option reply: an export description (`NBD_OPT_LIST`).
pub const REP_SERVER: u32 = 2;
/// Option reply: information about an export (`NBD_OPT_GO`/`INFO`).
pub const REP_INFO: u32 = 3;
/// Option reply: a metadata context (`NBD_OPT_LIST_META_CONTEXT`/`SET_META_CONTEXT`).
pub const REP_META_CONTEXT: u32 = 4;
/// Bit set in every option error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Option error: unsupported option.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Option error: forbidden by policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// Option error: syntactically invalid.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// Option error: not on this platform.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
/// Option error: TLS must be started first.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
/// Option error: no such export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// Option error: the server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// Option error: the client must honour block sizes.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
/// Option error: the request is too big.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`.
pub const INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the flags field is valid.
pub const TFLAG_HAS_FLAGS: u16 = 1;
/// Transmission flag: the export is read-only.
pub const TFLAG_READ_ONLY: u16 = 2;
/// Transmission flag: `NBD_CMD_FLUSH` is understood.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` is understood.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: `NBD_CMD_TRIM` is understood.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` (and `NBD_CMD_FLAG_NO_HOLE`) is understood.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: `NBD_CMD_FLAG_DF` is understood (structured replies only).
pub const TFLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag: several connections may serve one client consistently.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE` (not advertised by the server half: answered `EINVAL`).
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: force unit access (reply only once the write is durable).
pub const CMD_FLAG_FUA: u16 = 1;
/// Command flag of `NBD_CMD_WRITE_ZEROES`: do not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag of `NBD_CMD_READ`: one content chunk only ("don't fragment").
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag of `NBD_CMD_BLOCK_STATUS`: one extent only.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag of `NBD_CMD_WRITE_ZEROES`: fail fast unless zeroing is fast (not advertised).
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// NBD error: operation not permitted (a write to a read-only export).
pub const EPERM: u32 = 1;
/// NBD error: input/output error.
pub const EIO: u32 = 5;
/// NBD error: cannot allocate memory.
pub const ENOMEM: u32 = 12;
/// NBD error: invalid argument (a bad request, a read past the end).
pub const EINVAL: u32 = 22;
/// NBD error: no space left (a write past the end).
pub const ENOSPC: u32 = 28;
/// NBD error: value too large.
pub const EOVERFLOW: u32 = 75;
/// NBD error: operation not supported.
pub const ENOTSUP: u32 = 95;
/// NBD error: the server is shutting down.
pub const ESHUTDOWN: u32 = 108;

/// The one metadata context the specification defines.
pub const META_BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation` status bit: the extent is a hole (not allocated).
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` status bit: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// Structured reply flag: the last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1;
/// Structured chunk: nothing (the final chunk of a successful reply).
pub const REPLY_TYPE_NONE: u16 = 0;
/// Structured chunk: data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Structured chunk: a hole (reads as zeroes) at an offset.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Structured chunk: block status (not requested by this client).
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Bit set in every structured error chunk type.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
/// Structured chunk: an error.
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_FLAG_ERROR | 1;
/// Structured chunk: an error at an offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_FLAG_ERROR | 2;

/// Length of the server greeting (magic, magic, handshake flags).
pub const GREETING_LEN: usize = 18;
/// Length of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Length of an option request header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a request.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Longest option reply payload accepted (error messages are at most 4096
/// bytes by the specification; XAPI and qemu send far less).
pub const MAX_OPTION_REPLY: u32 = 64 << 10;
/// Longest non-data structured chunk payload accepted (error chunks and
/// chunks this client ignores).
pub const MAX_CHUNK_META: u32 = 64 << 10;
/// Longest export name the specification allows.
pub const MAX_EXPORT_NAME: usize = 4096;
/// Largest read request length this client sends (the specification lets
/// a server refuse more than 32 MiB unless it advertised more).
pub const MAX_READ_LEN: u32 = 32 << 20;

/// What went wrong in the protocol: data, so a caller can tell a refusal
/// from a broken server from a failed read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The server sent something the protocol does not allow (or this
    /// client does not support, such as oldstyle negotiation).
    #[error("protocol violation during {phase}: {reason}")]
    Violation {
        /// Where we were ("greeting", "NBD_OPT_GO reply", "reply to handle 3"…).
        phase: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The server refused an option this client needs.
    #[error("server refused {}: {}{}", option_name(*.option), reply_name(*.reply), msg_suffix(.message))]
    OptionRefused {
        /// The option (`OPT_*`).
        option: u32,
        /// The error reply type (`REP_ERR_*`).
        reply: u32,
        /// The server's message, if any (lossy UTF-8, truncated).
        message: String,
    },
    /// The export does not exist (or the server would not say, and closed
    /// the connection after `NBD_OPT_EXPORT_NAME`).
    #[error("export {export:?} not found{}", msg_suffix(.message))]
    ExportNotFound {
        /// The export name asked for.
        export: String,
        /// The server's message, or how we know.
        message: String,
    },
    /// A command failed on the server.
    #[error("{} of {len} bytes at offset {offset} failed: {} ({errno}){}", command_name(*.command), errno_name(*.errno), msg_suffix(.message))]
    Command {
        /// The command (`CMD_*`).
        command: u16,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u32,
        /// The error number the server sent (NBD's: EPERM 1, EIO 5, ENOMEM 12, EINVAL 22, ENOSPC 28, EOVERFLOW 75, ENOTSUP 95, ESHUTDOWN 108).
        errno: u32,
        /// The server's message (structured replies only).
        message: String,
    },
    /// The caller asked for something the protocol cannot carry.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

fn msg_suffix(m: &str) -> String {
    if m.is_empty() { String::new() } else { format!(" ({m})") }
}

/// The name of an option, for messages.
pub fn option_name(opt: u32) -> &'static str {
    match opt {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        OPT_ABORT => "NBD_OPT_ABORT",
        OPT_LIST => "NBD_OPT_LIST",
        OPT_STARTTLS => "NBD_OPT_STARTTLS",
        OPT_INFO => "NBD_OPT_INFO",
        OPT_GO => "NBD_OPT_GO",
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
        _ => "an unknown option",
    }
}

/// The name of an option reply type, for messages.
pub fn reply_name(rep: u32) -> &'static str {
    match rep {
        REP_ACK => "NBD_REP_ACK",
        REP_SERVER => "NBD_REP_SERVER",
        REP_INFO => "NBD_REP_INFO",
        REP_META_CONTEXT => "NBD_REP_META_CONTEXT",
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP (unsupported)",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY (forbidden by policy)",
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID (invalid)",
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM (not on this platform)",
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD (TLS required)",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN (no such export)",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN (server shutting down)",
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD (block sizes required)",
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG (too big)",
        r if r & REP_FLAG_ERROR != 0 => "an unknown error reply",
        _ => "an unknown reply",
    }
}

/// The name of a command, for messages.
pub fn command_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_READ => "NBD_CMD_READ",
        CMD_WRITE => "NBD_CMD_WRITE",
        CMD_DISC => "NBD_CMD_DISC",
        CMD_FLUSH => "NBD_CMD_FLUSH",
        CMD_TRIM => "NBD_CMD_TRIM",
        CMD_CACHE => "NBD_CMD_CACHE",
        CMD_WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES",
        CMD_BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS",
        _ => "an unknown command",
    }
}

/// The name of an NBD error number, for messages.
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EOVERFLOW => "EOVERFLOW",
        ENOTSUP => "ENOTSUP",
        ESHUTDOWN => "ESHUTDOWN",
        _ => "unknown error",
    }
}

pub(crate) fn violation(phase: &'static str, reason: impl Into<String>) -> ProtoError {
    ProtoError::Violation { phase, reason: reason.into() }
}

/// Up to 512 bytes of a server message as text.
pub(crate) fn message_text(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(512)];
    let mut s: String = String::from_utf8_lossy(cut).chars().filter(|c| !c.is_control()).collect();
    if bytes.len() > cut.len() {
        s.push('…');
    }
    s
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(a)
}
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

// ---------------------------------------------------------------------------
// Encoders

/// An option request: `IHAVEOPT`, option, length, data.
///
/// # Errors
/// [`ProtoError::InvalidRequest`] when `data` is longer than a u32 can say.
pub fn encode_option(option: u32, data: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let len = u32::try_from(data.len()).map_err(|_| ProtoError::InvalidRequest("option data too long".into()))?;
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// The data of `NBD_OPT_GO` (and `NBD_OPT_INFO`): the export name and the
/// information requested (`INFO_BLOCK_SIZE`, which also tells the server
/// that this client honours block-size constraints).
pub fn encode_go_data(export: &str) -> Vec<u8> {
    let name = export.as_bytes();
    let mut out = Vec::with_capacity(8 + name.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out
}

/// A transmission request (28 bytes).
pub fn encode_request(flags: u16, command: u16, handle: u64, offset: u64, len: u32) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&command.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out[16..24].copy_from_slice(&offset.to_be_bytes());
    out[24..28].copy_from_slice(&len.to_be_bytes());
    out
}

/// The server's greeting (18 bytes): `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_greeting(flags: u16) -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&flags.to_be_bytes());
    out
}

/// An option reply: magic, option, reply type, length, data.
///
/// # Errors
/// [`ProtoError::InvalidRequest`] when `data` is longer than [`MAX_OPTION_REPLY`]
/// (no client would accept it).
pub fn encode_option_reply(option: u32, reply: u32, data: &[u8]) -> Result<Vec<u8>, ProtoError> {
    if data.len() > MAX_OPTION_REPLY as usize {
        return Err(ProtoError::InvalidRequest(format!(
            "option reply of {} bytes; at most {MAX_OPTION_REPLY}",
            data.len()
        )));
    }
    let mut out = Vec::with_capacity(OPTION_REPLY_HEADER_LEN + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124
/// zero bytes unless the client negotiated `NBD_FLAG_C_NO_ZEROES`.
pub fn encode_export_name_reply(size: u64, flags: u16, zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    out
}

/// A simple reply header (16 bytes); a successful read's data follows it.
pub fn encode_simple_reply(errno: u32, handle: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&errno.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out
}

/// A structured reply chunk header (20 bytes); `len` payload bytes follow it.
pub fn encode_chunk_header(flags: u16, ty: u16, handle: u64, len: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut out = [0u8; CHUNK_HEADER_LEN];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&ty.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out[16..20].copy_from_slice(&len.to_be_bytes());
    out
}

/// A whole `NBD_REPLY_TYPE_ERROR` chunk, final: the error and a message
/// for a human (cut to 4096 bytes at a character boundary).
pub fn encode_error_chunk(handle: u64, errno: u32, message: &str) -> Vec<u8> {
    let mut cut = message.len().min(MAX_EXPORT_NAME);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let msg = &message.as_bytes()[..cut];
    let mut out = encode_chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, handle, 6 + msg.len() as u32).to_vec();
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

// ---------------------------------------------------------------------------
// Decoders of single messages

/// The server's first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Handshake flags (`FLAG_*`).
    pub flags: u16,
}

/// Decodes the greeting from the first [`GREETING_LEN`] bytes.
///
/// # Errors
/// [`ProtoError::Violation`] when the bytes are not a newstyle greeting.
pub fn decode_greeting(b: &[u8]) -> Result<Option<Greeting>, ProtoError> {
    if b.len() < GREETING_LEN {
        if b.len() >= 8 && be64(b, 0) != NBDMAGIC {
            return Err(not_nbd(b));
        }
        return Ok(None);
    }
    if be64(b, 0) != NBDMAGIC {
        return Err(not_nbd(b));
    }
    match be64(b, 8) {
        IHAVEOPT => Ok(Some(Greeting { flags: be16(b, 16) })),
        OLDSTYLE_MAGIC => Err(violation("greeting", "the server speaks oldstyle negotiation, which is not supported")),
        m => Err(violation("greeting", format!("second magic is {m:#018x}, expected IHAVEOPT"))),
    }
}

fn not_nbd(b: &[u8]) -> ProtoError {
    let head: String = b.iter().take(8).map(|c| format!("{c:02x}")).collect();
    violation("greeting", format!("not an NBD server: first bytes are {head}, expected \"NBDMAGIC\""))
}

/// An option reply header and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    /// The option replied to.
    pub option: u32,
    /// The reply type (`REP_*`).
    pub reply: u32,
    /// The payload.
    pub data: Vec<u8>,
}

/// Decodes one option reply. `Ok(Err(n))`: the input must hold `n` bytes.
///
/// # Errors
/// [`ProtoError::Violation`] on a bad magic or a payload over [`MAX_OPTION_REPLY`].
pub fn decode_option_reply(b: &[u8], phase: &'static str) -> Result<Result<(OptionReply, usize), usize>, ProtoError> {
    if b.len() < OPTION_REPLY_HEADER_LEN {
        return Ok(Err(OPTION_REPLY_HEADER_LEN));
    }
    let magic = be64(b, 0);
    if magic != OPTION_REPLY_MAGIC {
        return Err(violation(
            phase,
            format!("option reply magic is {magic:#018x}, expected {OPTION_REPLY_MAGIC:#018x}"),
        ));
    }
    let len = be32(b, 16);
    if len > MAX_OPTION_REPLY {
        return Err(violation(
            phase,
            format!("option reply of {len} bytes, more than the {MAX_OPTION_REPLY} accepted"),
        ));
    }
    let total = OPTION_REPLY_HEADER_LEN + len as usize;
    if b.len() < total {
        return Ok(Err(total));
    }
    let reply =
        OptionReply { option: be32(b, 8), reply: be32(b, 12), data: b[OPTION_REPLY_HEADER_LEN..total].to_vec() };
    Ok(Ok((reply, total)))
}

/// The header of an option request; its `len` data bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option (`OPT_*`).
    pub option: u32,
    /// Length of its data.
    pub len: u32,
}

/// Decodes an option request header from the first [`OPTION_HEADER_LEN`]
/// bytes (`Ok(None)`: more are needed).
///
/// # Errors
/// [`ProtoError::Violation`] when the magic is not `IHAVEOPT`.
pub fn decode_option_header(b: &[u8]) -> Result<Option<OptionHeader>, ProtoError> {
    if b.len() < OPTION_HEADER_LEN {
        return Ok(None);
    }
    let magic = be64(b, 0);
    if magic != IHAVEOPT {
        return Err(violation("option request", format!("magic is {magic:#018x}, expected IHAVEOPT")));
    }
    Ok(Some(OptionHeader { option: be32(b, 8), len: be32(b, 12) }))
}

/// A transmission request, as sent (not yet checked against the export).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`CMD_*`).
    pub command: u16,
    /// The client's handle, echoed in the reply.
    pub handle: u64,
    /// Offset.
    pub offset: u64,
    /// Length (of the payload, for `NBD_CMD_WRITE`).
    pub len: u32,
}

/// Decodes a request from the first [`REQUEST_LEN`] bytes (`Ok(None)`: more are needed).
///
/// # Errors
/// [`ProtoError::Violation`] when the magic is not the request magic.
pub fn decode_request(b: &[u8]) -> Result<Option<Request>, ProtoError> {
    if b.len() < 4 {
        return Ok(None);
    }
    let magic = be32(b, 0);
    if magic != REQUEST_MAGIC {
        return Err(violation("request", format!("magic is {magic:#010x}, expected {REQUEST_MAGIC:#010x}")));
    }
    if b.len() < REQUEST_LEN {
        return Ok(None);
    }
    Ok(Some(Request {
        flags: be16(b, 4),
        command: be16(b, 6),
        handle: be64(b, 8),
        offset: be64(b, 16),
        len: be32(b, 24),
    }))
}

// ---------------------------------------------------------------------------
// Handshake

/// What the client asks for in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeConfig {
    /// The export name (XAPI: `/<vdi-uuid>?session_id=<ref>`).
    pub export: String,
    /// Upgrade to TLS with `NBD_OPT_STARTTLS` as the first option; a refusal is an error.
    pub tls: bool,
    /// Try `NBD_OPT_GO` (size, flags and block sizes, and a clear "no such
    /// export"); on `NBD_REP_ERR_UNSUP` (XAPI's server) fall back to `NBD_OPT_EXPORT_NAME`.
    pub go: bool,
    /// Ask for structured replies (holes are then sent as holes); a refusal is not an error.
    pub structured_replies: bool,
}

impl HandshakeConfig {
    /// A configuration for `export`: no TLS, `NBD_OPT_GO` with fallback, structured replies asked for.
    pub fn new(export: impl Into<String>) -> HandshakeConfig {
        HandshakeConfig { export: export.into(), tls: false, go: true, structured_replies: true }
    }
    /// Sets [`HandshakeConfig::tls`].
    pub fn tls(mut self, on: bool) -> HandshakeConfig {
        self.tls = on;
        self
    }
    /// Sets [`HandshakeConfig::go`].
    pub fn go(mut self, on: bool) -> HandshakeConfig {
        self.go = on;
        self
    }
    /// Sets [`HandshakeConfig::structured_replies`].
    pub fn structured_replies(mut self, on: bool) -> HandshakeConfig {
        self.structured_replies = on;
        self
    }
}

/// Block-size constraints the server advertised (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Requests must be aligned to this (a power of two, 1 to 64 KiB).
    pub min: u32,
    /// The size the server prefers.
    pub preferred: u32,
    /// The largest request the server accepts.
    pub max: u32,
}

/// The export as negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`TFLAG_*`).
    pub flags: u16,
    /// Block sizes, when the server sent them (only through `NBD_OPT_GO`).
    pub block_size: Option<BlockSize>,
    /// Whether structured replies were agreed.
    pub structured_replies: bool,
    /// Whether TLS was started.
    pub tls: bool,
    /// Whether the export was entered with `NBD_OPT_GO` (else `NBD_OPT_EXPORT_NAME`).
    pub via_go: bool,
}

/// What the handshake asks of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeEvent {
    /// The server agreed to `NBD_OPT_STARTTLS`: do the TLS handshake on the
    /// connection now, then call [`Handshake::tls_established`]. Every later
    /// byte goes through TLS.
    StartTls,
    /// Negotiation is over: transmission starts.
    Done(ExportInfo),
}

/// Progress of a decoder over the bytes buffered so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// This many bytes were used; drop them from the front of the buffer.
    Consumed(usize),
    /// Nothing could be decoded: the buffer must first hold this many bytes in total.
    NeedMore(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HState {
    Greeting,
    /// Waiting for the reply to this option.
    Option(u32),
    /// Waiting for the shell to run the TLS handshake.
    TlsUpgrade,
    /// Waiting for the export-name reply (size, flags, zeroes).
    ExportName,
    Done,
    Failed,
}

/// The client side of fixed-newstyle negotiation.
///
/// Call order (quinn style): after [`Handshake::new`], loop — send whatever
/// [`Handshake::poll_transmit`] returns, then feed the bytes received so far
/// to [`Handshake::handle_input`] and drop the consumed prefix (on
/// [`Progress::NeedMore`]`(n)`, read until the buffer holds `n` bytes,
/// never more), then take [`Handshake::poll_event`]. On
/// [`HandshakeEvent::StartTls`], wrap the connection in TLS and call
/// [`Handshake::tls_established`]; on [`HandshakeEvent::Done`], build a
/// [`Transmission`]. After an error the machine stays failed.
///
/// Plan: greeting → client flags → `STARTTLS` (if asked) →
/// `STRUCTURED_REPLY` (if asked) → `GO` (if asked; `ERR_UNSUP` falls back)
/// → `EXPORT_NAME`.
#[derive(Debug)]
pub struct Handshake {
    cfg: HandshakeConfig,
    state: HState,
    fixed: bool,
    no_zeroes: bool,
    tls_done: bool,
    structured_asked: bool,
    structured: bool,
    go_tried: bool,
    info: Option<(u64, u16)>,
    block_size: Option<BlockSize>,
    out: Vec<u8>,
    events: VecDeque<HandshakeEvent>,
}

impl Handshake {
    /// A handshake for `cfg`.
    ///
    /// # Errors
    /// [`ProtoError::InvalidRequest`] when the export name is longer than 4096 bytes.
    pub fn new(cfg: HandshakeConfig) -> Result<Handshake, ProtoError> {
        if cfg.export.len() > MAX_EXPORT_NAME {
            return Err(ProtoError::InvalidRequest(format!(
                "export name of {} bytes; at most {MAX_EXPORT_NAME}",
                cfg.export.len()
            )));
        }
        Ok(Handshake {
            cfg,
            state: HState::Greeting,
            fixed: false,
            no_zeroes: false,
            tls_done: false,
            structured_asked: false,
            structured: false,
            go_tried: false,
            info: None,
            block_size: None,
            out: Vec::new(),
            events: VecDeque::new(),
        })
    }

    /// Bytes to send to the server, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() { None } else { Some(std::mem::take(&mut self.out)) }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<HandshakeEvent> {
        self.events.pop_front()
    }

    /// Whether negotiation is over (successfully).
    pub fn is_done(&self) -> bool {
        self.state == HState::Done
    }

    /// Where the handshake is, for messages ("greeting", "NBD_OPT_GO reply"…).
    pub fn phase(&self) -> &'static str {
        match self.state {
            HState::Greeting => "greeting",
            HState::Option(o) => match o {
                OPT_STARTTLS => "NBD_OPT_STARTTLS reply",
                OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY reply",
                OPT_GO => "NBD_OPT_GO reply",
                _ => "option reply",
            },
            HState::TlsUpgrade => "TLS handshake",
            HState::ExportName => "NBD_OPT_EXPORT_NAME reply",
            HState::Done => "transmission",
            HState::Failed => "failed handshake",
        }
    }

    /// What it means when the server closes the connection now: after
    /// `NBD_OPT_EXPORT_NAME` that the export does not exist (or may not be
    /// used) — a server cannot say so otherwise —; `None` elsewhere (a lost
    /// connection).
    pub fn eof_error(&self) -> Option<ProtoError> {
        match self.state {
            HState::ExportName => Some(ProtoError::ExportNotFound {
                export: self.cfg.export.clone(),
                message:
                    "the server closed the connection after NBD_OPT_EXPORT_NAME: no such export, or access refused"
                        .into(),
            }),
            _ => None,
        }
    }

    /// The shell finished the TLS handshake after [`HandshakeEvent::StartTls`].
    pub fn tls_established(&mut self) {
        if self.state == HState::TlsUpgrade {
            self.tls_done = true;
            self.next_option();
        }
    }

    /// Feeds the bytes buffered so far (from the start of the next message).
    ///
    /// # Errors
    /// Any [`ProtoError`]; the machine is failed afterwards.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<Progress, ProtoError> {
        let r = self.step(input);
        if r.is_err() {
            self.state = HState::Failed;
        }
        r
    }

    fn step(&mut self, b: &[u8]) -> Result<Progress, ProtoError> {
        match self.state {
            HState::Greeting => {
                let Some(g) = decode_greeting(b)? else { return Ok(Progress::NeedMore(GREETING_LEN)) };
                self.fixed = g.flags & FLAG_FIXED_NEWSTYLE != 0;
                self.no_zeroes = self.fixed && g.flags & FLAG_NO_ZEROES != 0;
                if !self.fixed && self.cfg.tls {
                    return Err(violation("greeting", "the server is not fixed-newstyle, so it cannot start TLS"));
                }
                let mut cflags = 0u32;
                if self.fixed {
                    cflags |= FLAG_C_FIXED_NEWSTYLE;
                }
                if self.no_zeroes {
                    cflags |= FLAG_C_NO_ZEROES;
                }
                self.out.extend_from_slice(&cflags.to_be_bytes());
                self.next_option();
                Ok(Progress::Consumed(GREETING_LEN))
            }
            HState::Option(opt) => {
                let phase = self.phase();
                let (rep, used) = match decode_option_reply(b, phase)? {
                    Ok(x) => x,
                    Err(need) => return Ok(Progress::NeedMore(need)),
                };
                if rep.option != opt {
                    return Err(violation(
                        phase,
                        format!(
                            "reply is for option {} ({}), but {} was sent",
                            rep.option,
                            option_name(rep.option),
                            option_name(opt)
                        ),
                    ));
                }
                self.on_option_reply(opt, rep)?;
                Ok(Progress::Consumed(used))
            }
            HState::ExportName => {
                let need = if self.no_zeroes { 10 } else { 134 };
                if b.len() < need {
                    return Ok(Progress::NeedMore(need));
                }
                let size = be64(b, 0);
                let flags = be16(b, 8);
                self.finish(size, flags, false);
                Ok(Progress::Consumed(need))
            }
            HState::TlsUpgrade | HState::Done | HState::Failed => Ok(Progress::Consumed(0)),
        }
    }

    fn on_option_reply(&mut self, opt: u32, rep: OptionReply) -> Result<(), ProtoError> {
        let phase = self.phase();
        let refused = |rep: &OptionReply| ProtoError::OptionRefused {
            option: opt,
            reply: rep.reply,
            message: message_text(&rep.data),
        };
        match opt {
            OPT_STARTTLS => match rep.reply {
                REP_ACK => {
                    self.state = HState::TlsUpgrade;
                    self.events.push_back(HandshakeEvent::StartTls);
                    Ok(())
                }
                r if r & REP_FLAG_ERROR != 0 => Err(refused(&rep)),
                r => Err(violation(phase, format!("unexpected reply type {r:#x} ({})", reply_name(r)))),
            },
            OPT_STRUCTURED_REPLY => match rep.reply {
                REP_ACK => {
                    if !rep.data.is_empty() {
                        return Err(violation(phase, "NBD_REP_ACK with a payload"));
                    }
                    self.structured = true;
                    self.next_option();
                    Ok(())
                }
                REP_ERR_TLS_REQD => Err(refused(&rep)),
                r if r & REP_FLAG_ERROR != 0 => {
                    self.structured = false;
                    self.next_option();
                    Ok(())
                }
                r => Err(violation(phase, format!("unexpected reply type {r:#x} ({})", reply_name(r)))),
            },
            OPT_GO => match rep.reply {
                REP_INFO => self.on_info(&rep.data),
                REP_ACK => {
                    let Some((size, flags)) = self.info else {
                        return Err(violation(phase, "NBD_REP_ACK without NBD_INFO_EXPORT"));
                    };
                    self.finish(size, flags, true);
                    Ok(())
                }
                REP_ERR_UNSUP => {
                    // XAPI's server: only EXPORT_NAME enters transmission.
                    self.info = None;
                    self.block_size = None;
                    self.next_option();
                    Ok(())
                }
                REP_ERR_UNKNOWN => Err(ProtoError::ExportNotFound {
                    export: self.cfg.export.clone(),
                    message: message_text(&rep.data),
                }),
                r if r & REP_FLAG_ERROR != 0 => Err(refused(&rep)),
                r => Err(violation(phase, format!("unexpected reply type {r:#x} ({})", reply_name(r)))),
            },
            _ => Err(violation(phase, format!("reply to an option never sent ({opt})"))),
        }
    }

    fn on_info(&mut self, d: &[u8]) -> Result<(), ProtoError> {
        let phase = "NBD_OPT_GO reply";
        if d.len() < 2 {
            return Err(violation(phase, format!("NBD_REP_INFO of {} bytes, shorter than its type", d.len())));
        }
        match be16(d, 0) {
            INFO_EXPORT => {
                if d.len() != 12 {
                    return Err(violation(phase, format!("NBD_INFO_EXPORT of {} bytes, expected 12", d.len())));
                }
                self.info = Some((be64(d, 2), be16(d, 10)));
            }
            INFO_BLOCK_SIZE => {
                if d.len() != 14 {
                    return Err(violation(phase, format!("NBD_INFO_BLOCK_SIZE of {} bytes, expected 14", d.len())));
                }
                let bs = BlockSize { min: be32(d, 2), preferred: be32(d, 6), max: be32(d, 10) };
                let ok = bs.min.is_power_of_two()
                    && bs.min <= 64 << 10
                    && bs.preferred.is_power_of_two()
                    && bs.preferred >= bs.min.max(512)
                    && bs.max >= bs.min
                    && (bs.max == u32::MAX || bs.max % bs.min == 0);
                if !ok {
                    return Err(violation(
                        phase,
                        format!(
                            "inconsistent block sizes: minimum {}, preferred {}, maximum {}",
                            bs.min, bs.preferred, bs.max
                        ),
                    ));
                }
                self.block_size = Some(bs);
            }
            // Name, description and future types: not needed, ignored as the specification asks.
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self, size: u64, flags: u16, via_go: bool) {
        self.state = HState::Done;
        self.events.push_back(HandshakeEvent::Done(ExportInfo {
            size,
            flags,
            block_size: self.block_size,
            structured_replies: self.structured,
            tls: self.tls_done,
            via_go,
        }));
    }

    fn send_option(&mut self, opt: u32, data: &[u8]) {
        // Option data here is at most 4096 + 8 bytes (checked in `new`), so this cannot fail.
        if let Ok(bytes) = encode_option(opt, data) {
            self.out.extend_from_slice(&bytes);
        }
        self.state = if opt == OPT_EXPORT_NAME { HState::ExportName } else { HState::Option(opt) };
    }

    fn next_option(&mut self) {
        if !self.fixed {
            let name = self.cfg.export.clone();
            self.send_option(OPT_EXPORT_NAME, name.as_bytes());
        } else if self.cfg.tls && !self.tls_done {
            self.send_option(OPT_STARTTLS, &[]);
        } else if self.cfg.structured_replies && !self.structured_asked {
            self.structured_asked = true;
            self.send_option(OPT_STRUCTURED_REPLY, &[]);
        } else if self.cfg.go && !self.go_tried {
            self.go_tried = true;
            let data = encode_go_data(&self.cfg.export);
            self.send_option(OPT_GO, &data);
        } else {
            let name = self.cfg.export.clone();
            self.send_option(OPT_EXPORT_NAME, name.as_bytes());
        }
    }
}

// ---------------------------------------------------------------------------
// Transmission

/// One step of reply decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing decodable yet: the buffer must hold this many bytes.
    NeedMore(usize),
    /// `consumed` bytes were used and there is nothing to do (a chunk that is ignored).
    Consumed(usize),
    /// Drop `consumed` header bytes; the *next* `len` bytes of the stream
    /// are data of the read `handle`, going `at` bytes into its buffer.
    /// Move them, then call [`Transmission::payload_done`].
    Payload {
        /// Header bytes used.
        consumed: usize,
        /// The request.
        handle: u64,
        /// Where in the request's buffer.
        at: u32,
        /// How many bytes.
        len: u32,
    },
    /// `len` bytes of the read `handle`, `at` bytes into its buffer, are zeroes.
    Zeroes {
        /// Bytes used.
        consumed: usize,
        /// The request.
        handle: u64,
        /// Where in the request's buffer.
        at: u32,
        /// How many bytes.
        len: u32,
    },
    /// The request `handle` is complete (its buffer is filled) or failed.
    Finished {
        /// Bytes used.
        consumed: usize,
        /// The request.
        handle: u64,
        /// The outcome.
        result: Result<(), ProtoError>,
    },
}

#[derive(Debug)]
struct Inflight {
    offset: u64,
    len: u32,
    covered: u64,
    error: Option<ProtoError>,
}

#[derive(Debug, Clone, Copy)]
struct AwaitPayload {
    handle: u64,
    finish_after: bool,
}

/// The transmission phase of a read-only client: request encoding and reply
/// decoding, with replies matched to requests by handle (in any order, and
/// structured chunks of several replies interleaved).
///
/// Call order: [`Transmission::read_request`] for each read (send the bytes
/// it returns); feed received bytes to [`Transmission::handle_input`] and
/// act on each [`Step`] (after [`Step::Payload`] move the payload and call
/// [`Transmission::payload_done`]); a failed read ([`Step::Finished`] with
/// an error) leaves the connection usable, a returned `Err` does not.
#[derive(Debug)]
pub struct Transmission {
    structured: bool,
    size: u64,
    next_handle: u64,
    inflight: HashMap<u64, Inflight>,
    await_payload: Option<AwaitPayload>,
    finished: VecDeque<(u64, Result<(), ProtoError>)>,
}

impl Transmission {
    /// The transmission phase of an export.
    pub fn new(info: &ExportInfo) -> Transmission {
        Transmission {
            structured: info.structured_replies,
            size: info.size,
            next_handle: 1,
            inflight: HashMap::new(),
            await_payload: None,
            finished: VecDeque::new(),
        }
    }

    /// How many requests are awaiting their replies.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// A read of `len` bytes at `offset`: its handle and the request bytes to send.
    ///
    /// # Errors
    /// [`ProtoError::InvalidRequest`] for an empty read, one over
    /// [`MAX_READ_LEN`], or one past the end of the export.
    pub fn read_request(&mut self, offset: u64, len: u32) -> Result<(u64, [u8; REQUEST_LEN]), ProtoError> {
        if len == 0 || len > MAX_READ_LEN {
            return Err(ProtoError::InvalidRequest(format!("read of {len} bytes (1 to {MAX_READ_LEN} allowed)")));
        }
        if offset.checked_add(u64::from(len)).is_none_or(|end| end > self.size) {
            return Err(ProtoError::InvalidRequest(format!(
                "read of {len} bytes at {offset} is past the end of the export ({} bytes)",
                self.size
            )));
        }
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        self.inflight.insert(handle, Inflight { offset, len, covered: 0, error: None });
        Ok((handle, encode_request(0, CMD_READ, handle, offset, len)))
    }

    /// The `NBD_CMD_DISC` request (no reply comes).
    pub fn disconnect_request(&mut self) -> [u8; REQUEST_LEN] {
        encode_request(0, CMD_DISC, 0, 0, 0)
    }

    /// The payload announced by the last [`Step::Payload`] has been moved.
    pub fn payload_done(&mut self) {
        if let Some(p) = self.await_payload.take() {
            if p.finish_after {
                self.finish(p.handle);
            }
        }
    }

    fn finish(&mut self, handle: u64) {
        if let Some(r) = self.inflight.remove(&handle) {
            let result = match r.error {
                Some(e) => Err(e),
                None if r.covered != u64::from(r.len) => Err(violation(
                    "structured reply",
                    format!("the reply to the read of {} bytes at {} covered {} bytes", r.len, r.offset, r.covered),
                )),
                None => Ok(()),
            };
            self.finished.push_back((handle, result));
        }
    }

    /// Decodes the next message from the bytes buffered so far.
    ///
    /// # Errors
    /// [`ProtoError::Violation`] when the server broke the protocol (then
    /// the connection must be dropped), or a payload was not consumed.
    pub fn handle_input(&mut self, b: &[u8]) -> Result<Step, ProtoError> {
        if let Some((handle, result)) = self.finished.pop_front() {
            return Ok(Step::Finished { consumed: 0, handle, result });
        }
        if self.await_payload.is_some() {
            return Err(ProtoError::InvalidRequest("payload_done was not called after Step::Payload".into()));
        }
        if b.len() < 4 {
            return Ok(Step::NeedMore(4));
        }
        match be32(b, 0) {
            SIMPLE_REPLY_MAGIC => self.simple(b),
            STRUCTURED_REPLY_MAGIC => self.chunk(b),
            m => Err(violation("reply", format!("reply magic is {m:#010x}, expected a simple or structured reply"))),
        }
    }

    fn simple(&mut self, b: &[u8]) -> Result<Step, ProtoError> {
        if b.len() < SIMPLE_REPLY_LEN {
            return Ok(Step::NeedMore(SIMPLE_REPLY_LEN));
        }
        let errno = be32(b, 4);
        let handle = be64(b, 8);
        if self.structured {
            return Err(violation(
                "reply",
                format!("simple reply to handle {handle} although structured replies were agreed"),
            ));
        }
        let Some(req) = self.inflight.get_mut(&handle) else {
            return Err(violation(
                "reply",
                format!("simple reply for handle {handle}, which has no request in flight"),
            ));
        };
        if errno != 0 {
            let e = ProtoError::Command {
                command: CMD_READ,
                offset: req.offset,
                len: req.len,
                errno,
                message: String::new(),
            };
            self.inflight.remove(&handle);
            return Ok(Step::Finished { consumed: SIMPLE_REPLY_LEN, handle, result: Err(e) });
        }
        req.covered = u64::from(req.len);
        let len = req.len;
        self.await_payload = Some(AwaitPayload { handle, finish_after: true });
        Ok(Step::Payload { consumed: SIMPLE_REPLY_LEN, handle, at: 0, len })
    }

    fn chunk(&mut self, b: &[u8]) -> Result<Step, ProtoError> {
        if b.len() < CHUNK_HEADER_LEN {
            return Ok(Step::NeedMore(CHUNK_HEADER_LEN));
        }
        let flags = be16(b, 4);
        let ty = be16(b, 6);
        let handle = be64(b, 8);
        let length = be32(b, 16);
        let done = flags & REPLY_FLAG_DONE != 0;
        if !self.structured {
            return Err(violation(
                "reply",
                format!("structured reply chunk for handle {handle} that was never agreed"),
            ));
        }
        let phase = "structured reply";
        let Some(req) = self.inflight.get_mut(&handle) else {
            return Err(violation(phase, format!("chunk for handle {handle}, which has no request in flight")));
        };
        let (req_off, req_len) = (req.offset, req.len);
        // Where an (offset, len) range sits inside the request, if it does.
        let inside = |off: u64, len: u64| -> Option<u32> {
            let at = off.checked_sub(req_off)?;
            let end = at.checked_add(len)?;
            (end <= u64::from(req_len)).then_some(at as u32)
        };
        match ty {
            REPLY_TYPE_NONE => {
                if length != 0 || !done {
                    return Err(violation(phase, format!("NBD_REPLY_TYPE_NONE with length {length}, done {done}")));
                }
                self.finish(handle);
                self.finished_step(CHUNK_HEADER_LEN)
            }
            REPLY_TYPE_OFFSET_DATA => {
                if length < 9 {
                    return Err(violation(
                        phase,
                        format!("NBD_REPLY_TYPE_OFFSET_DATA of length {length}, less than 9"),
                    ));
                }
                let need = CHUNK_HEADER_LEN + 8;
                if b.len() < need {
                    return Ok(Step::NeedMore(need));
                }
                let off = be64(b, CHUNK_HEADER_LEN);
                let dlen = length - 8;
                let Some(at) = inside(off, u64::from(dlen)) else {
                    return Err(violation(
                        phase,
                        format!(
                            "data chunk of {dlen} bytes at {off} lies outside the read of {req_len} bytes at {req_off}"
                        ),
                    ));
                };
                req.covered += u64::from(dlen);
                if req.covered > u64::from(req_len) {
                    return Err(violation(phase, format!("chunks overlap in the reply to handle {handle}")));
                }
                self.await_payload = Some(AwaitPayload { handle, finish_after: done });
                Ok(Step::Payload { consumed: need, handle, at, len: dlen })
            }
            REPLY_TYPE_OFFSET_HOLE => {
                if length != 12 {
                    return Err(violation(
                        phase,
                        format!("NBD_REPLY_TYPE_OFFSET_HOLE of length {length}, expected 12"),
                    ));
                }
                let need = CHUNK_HEADER_LEN + 12;
                if b.len() < need {
                    return Ok(Step::NeedMore(need));
                }
                let off = be64(b, CHUNK_HEADER_LEN);
                let hlen = be32(b, CHUNK_HEADER_LEN + 8);
                let at = match inside(off, u64::from(hlen)) {
                    Some(at) if hlen > 0 => at,
                    _ => {
                        return Err(violation(
                            phase,
                            format!(
                                "hole of {hlen} bytes at {off} is empty or outside the read of {req_len} bytes at {req_off}"
                            ),
                        ));
                    }
                };
                req.covered += u64::from(hlen);
                if req.covered > u64::from(req_len) {
                    return Err(violation(phase, format!("chunks overlap in the reply to handle {handle}")));
                }
                if done {
                    self.finish(handle);
                }
                Ok(Step::Zeroes { consumed: need, handle, at, len: hlen })
            }
            t if t & REPLY_TYPE_FLAG_ERROR != 0 => {
                if !(6..=MAX_CHUNK_META).contains(&length) {
                    return Err(violation(
                        phase,
                        format!("error chunk of length {length} (6 to {MAX_CHUNK_META} allowed)"),
                    ));
                }
                let need = CHUNK_HEADER_LEN + length as usize;
                if b.len() < need {
                    return Ok(Step::NeedMore(need));
                }
                let p = &b[CHUNK_HEADER_LEN..need];
                let errno = be32(p, 0);
                let mlen = usize::from(be16(p, 4));
                if mlen > p.len() - 6 {
                    return Err(violation(phase, format!("error message of {mlen} bytes in a chunk of {length}")));
                }
                if t == REPLY_TYPE_ERROR_OFFSET && p.len() != 6 + mlen + 8 {
                    return Err(violation(phase, "NBD_REPLY_TYPE_ERROR_OFFSET of the wrong length"));
                }
                if errno == 0 {
                    return Err(violation(phase, "error chunk with error number 0"));
                }
                let mut message = message_text(&p[6..6 + mlen]);
                if t == REPLY_TYPE_ERROR_OFFSET {
                    let at = be64(p, 6 + mlen);
                    message = format!("at offset {at}{}", msg_suffix(&message));
                }
                if req.error.is_none() {
                    req.error =
                        Some(ProtoError::Command { command: CMD_READ, offset: req_off, len: req_len, errno, message });
                }
                if done {
                    self.finish(handle);
                    return self.finished_step(need);
                }
                Ok(Step::Consumed(need))
            }
            t => Err(violation(phase, format!("unexpected chunk type {t} in the reply to a read"))),
        }
    }

    fn finished_step(&mut self, consumed: usize) -> Result<Step, ProtoError> {
        match self.finished.pop_front() {
            Some((handle, result)) => Ok(Step::Finished { consumed, handle, result }),
            None => Ok(Step::Consumed(consumed)),
        }
    }
}

// ---------------------------------------------------------------------------
// Fuzzing (and the replay driver of the unit tests)

/// Most steps a replay takes (every step consumes input or drains a queue).
const FUZZ_STEPS: usize = 1 << 16;

/// The reads [`fuzz_one`] puts in flight: those of the captured sessions
/// in `testdata/` (handles 1, 2, 3), so mutated captures reach deep.
const FUZZ_READS: [(u64, u32); 3] = [(0, 8192), (61440, 4096), (512, 1024)];

/// Feeds `data` as a server's byte stream through a whole client session —
/// handshake (TLS pretended at once) and then replies to the reads of the
/// captured sessions — in three configurations (`NBD_OPT_GO` with
/// structured replies; `NBD_OPT_EXPORT_NAME` with simple replies; STARTTLS
/// first); then as a client's byte stream through a whole server session
/// ([`crate::server::fuzz_server_one`]). The body of the `nbd` fuzz target,
/// public so a stable-toolchain test can run it: it must return, never
/// panic, on any bytes.
pub fn fuzz_one(data: &[u8]) {
    crate::server::fuzz_server_one(data);
    for cfg in [
        HandshakeConfig::new("fuzz"),
        HandshakeConfig::new("fuzz").go(false).structured_replies(false),
        HandshakeConfig::new("/0a1b?session_id=OpaqueRef:x").tls(true).go(false),
    ] {
        let _ = replay(cfg, data, &FUZZ_READS);
    }
}

/// Runs a client session over a recorded server stream: the handshake, then
/// `reads` (offset, length; trusted, small) put in flight at once and their
/// replies decoded into buffers. Payload placement indexes buffers with what
/// the decoder vouched for, so a decoder bug panics here (under fuzzing).
fn replay(cfg: HandshakeConfig, data: &[u8], reads: &[(u64, u32)]) -> Result<(ExportInfo, Vec<Vec<u8>>), ProtoError> {
    let ended = || violation("replay", "the stream ended");
    let mut hs = Handshake::new(cfg)?;
    let mut pos = 0usize;
    let info = loop {
        let _ = hs.poll_transmit();
        match hs.poll_event() {
            Some(HandshakeEvent::StartTls) => {
                hs.tls_established();
                continue;
            }
            Some(HandshakeEvent::Done(info)) => break info,
            None => {}
        }
        match hs.handle_input(&data[pos..])? {
            Progress::Consumed(0) | Progress::NeedMore(_) => return Err(ended()),
            Progress::Consumed(n) => pos += n,
        }
    };
    let mut tx = Transmission::new(&info);
    let mut bufs: Vec<Vec<u8>> = reads.iter().map(|&(_, len)| vec![0xEE; len as usize]).collect();
    let mut which = HashMap::new();
    for (i, &(off, len)) in reads.iter().enumerate() {
        let (handle, _) = tx.read_request(off, len)?;
        which.insert(handle, i);
    }
    for _ in 0..FUZZ_STEPS {
        if tx.in_flight() == 0 && tx.finished.is_empty() {
            return Ok((info, bufs));
        }
        match tx.handle_input(&data[pos..])? {
            Step::NeedMore(_) => return Err(ended()),
            Step::Consumed(n) => pos += n,
            Step::Payload { consumed, handle, at, len } => {
                pos += consumed;
                let src = data.get(pos..pos + len as usize).ok_or_else(ended)?;
                bufs[which[&handle]][at as usize..][..len as usize].copy_from_slice(src);
                pos += len as usize;
                tx.payload_done();
            }
            Step::Zeroes { consumed, handle, at, len } => {
                pos += consumed;
                bufs[which[&handle]][at as usize..][..len as usize].fill(0);
            }
            Step::Finished { consumed, result, .. } => {
                pos += consumed;
                result?;
            }
        }
    }
    Err(violation("replay", "too many steps"))
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "min {} / preferred {} / max {}", self.min, self.preferred, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// qemu-nbd 10.0 serving a 64 KiB raw file (4 KiB of data, then a
    /// hole), recorded server-to-client while this client negotiated and
    /// read [`FUZZ_READS`] one at a time, then disconnected.
    const GO_STRUCTURED: &[u8] = include_bytes!("testdata/go-structured.bin");
    /// The same with `NBD_OPT_EXPORT_NAME` and simple replies (XAPI's path).
    const EXPORT_NAME_SIMPLE: &[u8] = include_bytes!("testdata/export-name-simple.bin");

    fn image() -> Vec<u8> {
        let mut d = vec![0u8; 65536];
        alike_testing::Rng::new(9).fill(&mut d[..4096]);
        d
    }

    fn check_reads(bufs: &[Vec<u8>]) {
        let img = image();
        for (buf, &(off, len)) in bufs.iter().zip(FUZZ_READS.iter()) {
            assert!(buf[..] == img[off as usize..(off + u64::from(len)) as usize], "read at {off}");
        }
    }

    #[test]
    fn captured_go_session_with_structured_replies_decodes() {
        let (info, bufs) = replay(HandshakeConfig::new("fuzz"), GO_STRUCTURED, &FUZZ_READS).unwrap();
        assert_eq!(info.size, 65536);
        assert!(info.via_go && info.structured_replies && !info.tls);
        assert_eq!(info.flags & TFLAG_READ_ONLY, TFLAG_READ_ONLY);
        let bs = info.block_size.unwrap();
        assert!(bs.min >= 1 && bs.max >= 1 << 20, "{bs}");
        check_reads(&bufs);
        // The 8 KiB read came back as data then a hole.
        let mut tx = Transmission::new(&info);
        tx.read_request(0, 8192).unwrap();
        let start = GO_STRUCTURED.len() - (5364 - 0x7c); // first chunk header in the capture
        let s = tx.handle_input(&GO_STRUCTURED[start..]).unwrap();
        assert!(matches!(s, Step::Payload { at: 0, len: 4096, .. }), "{s:?}");
    }

    #[test]
    fn captured_export_name_session_with_simple_replies_decodes() {
        let cfg = HandshakeConfig::new("fuzz").go(false).structured_replies(false);
        let (info, bufs) = replay(cfg, EXPORT_NAME_SIMPLE, &FUZZ_READS).unwrap();
        assert!(!info.via_go && !info.structured_replies && info.block_size.is_none());
        assert_eq!(info.size, 65536);
        check_reads(&bufs);
    }

    // The server's messages, from the codec the server half uses.
    fn greeting(flags: u16) -> Vec<u8> {
        encode_greeting(flags).to_vec()
    }

    fn opt_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
        encode_option_reply(option, reply, data).unwrap()
    }

    fn export_reply(size: u64, flags: u16, zeroes: bool) -> Vec<u8> {
        encode_export_name_reply(size, flags, zeroes)
    }

    /// Feeds a whole buffer, asserting each NeedMore asks for exactly what a message needs.
    fn feed(hs: &mut Handshake, mut input: &[u8]) -> Result<Vec<HandshakeEvent>, ProtoError> {
        let mut events = vec![];
        loop {
            while let Some(e) = hs.poll_event() {
                if e == HandshakeEvent::StartTls {
                    hs.tls_established();
                }
                events.push(e);
            }
            match hs.handle_input(input)? {
                Progress::Consumed(0) | Progress::NeedMore(_) if hs.events.is_empty() => return Ok(events),
                Progress::Consumed(n) => input = &input[n..],
                _ => {}
            }
        }
    }

    #[test]
    fn xapi_style_server_go_unsupported_falls_back_to_export_name() {
        // xapi-nbd: FIXED_NEWSTYLE only, forced TLS, UNSUP for everything but EXPORT_NAME.
        let mut hs = Handshake::new(HandshakeConfig::new("/uuid?session_id=OpaqueRef:s").tls(true)).unwrap();
        let mut server = greeting(FLAG_FIXED_NEWSTYLE);
        server.extend(opt_reply(OPT_STARTTLS, REP_ACK, &[]));
        server.extend(opt_reply(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, &[]));
        server.extend(opt_reply(OPT_GO, REP_ERR_UNSUP, &[]));
        server.extend(export_reply(10 << 30, TFLAG_HAS_FLAGS | TFLAG_READ_ONLY, true));
        let events = feed(&mut hs, &server).unwrap();
        let Some(HandshakeEvent::Done(info)) = events.last() else { panic!("{events:?}") };
        assert_eq!(events[0], HandshakeEvent::StartTls);
        assert_eq!(info.size, 10 << 30);
        assert!(info.tls && !info.via_go && !info.structured_replies);
        // What the client sent: flags, STARTTLS, STRUCTURED_REPLY, GO, EXPORT_NAME.
        let out = hs.poll_transmit().unwrap();
        assert_eq!(&out[..4], &FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
        let opts: Vec<u32> = [4usize, 20, 36].iter().map(|&at| be32(&out, at + 8)).collect();
        assert_eq!(opts, [OPT_STARTTLS, OPT_STRUCTURED_REPLY, OPT_GO]);
    }

    #[test]
    fn need_more_never_asks_past_a_message() {
        let mut hs = Handshake::new(HandshakeConfig::new("e").tls(true)).unwrap();
        assert_eq!(hs.handle_input(&[]).unwrap(), Progress::NeedMore(GREETING_LEN));
        assert_eq!(hs.handle_input(&greeting(1)[..17]).unwrap(), Progress::NeedMore(GREETING_LEN));
        assert_eq!(hs.handle_input(&greeting(1)).unwrap(), Progress::Consumed(GREETING_LEN));
        let ack = opt_reply(OPT_STARTTLS, REP_ACK, &[]);
        assert_eq!(hs.handle_input(&ack[..5]).unwrap(), Progress::NeedMore(OPTION_REPLY_HEADER_LEN));
        // Bytes after the ACK belong to TLS: not consumed.
        let mut more = ack.clone();
        more.extend_from_slice(b"\x16\x03\x01 tls record");
        assert_eq!(hs.handle_input(&more).unwrap(), Progress::Consumed(ack.len()));
        assert_eq!(hs.poll_event(), Some(HandshakeEvent::StartTls));
        assert_eq!(hs.handle_input(&more[ack.len()..]).unwrap(), Progress::Consumed(0));
        let err = opt_reply(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, b"no");
        hs.tls_established();
        assert_eq!(hs.handle_input(&err[..20]).unwrap(), Progress::NeedMore(22));
    }

    #[test]
    fn handshake_errors_name_what_was_wrong() {
        let err = |cfg: HandshakeConfig, input: Vec<u8>| feed(&mut Handshake::new(cfg).unwrap(), &input).unwrap_err();
        let e = err(HandshakeConfig::new("e"), b"HTTP/1.1 400 Bad Request\r\n".to_vec());
        assert!(e.to_string().contains("not an NBD server"), "{e}");
        let mut old = NBDMAGIC.to_be_bytes().to_vec();
        old.extend_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
        old.extend_from_slice(&[0; 2]);
        assert!(err(HandshakeConfig::new("e"), old).to_string().contains("oldstyle"));
        // STARTTLS refused: an error, never a silent downgrade.
        let mut s = greeting(1);
        s.extend(opt_reply(OPT_STARTTLS, REP_ERR_POLICY, b"no TLS here"));
        let e = err(HandshakeConfig::new("e").tls(true), s);
        assert!(matches!(e, ProtoError::OptionRefused { option: OPT_STARTTLS, reply: REP_ERR_POLICY, .. }), "{e:?}");
        assert!(e.to_string().contains("no TLS here"), "{e}");
        // GO: no such export.
        let mut s = greeting(1);
        s.extend(opt_reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        s.extend(opt_reply(OPT_GO, REP_ERR_UNKNOWN, b"export 'x' not present"));
        let e = err(HandshakeConfig::new("x"), s);
        assert!(matches!(&e, ProtoError::ExportNotFound { export, .. } if export == "x"), "{e:?}");
        // GO: ACK without the export info.
        let mut s = greeting(1);
        s.extend(opt_reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        s.extend(opt_reply(OPT_GO, REP_ACK, &[]));
        assert!(err(HandshakeConfig::new("x"), s).to_string().contains("without NBD_INFO_EXPORT"));
        // A reply to another option; a bad magic; an oversized reply.
        let mut s = greeting(1);
        s.extend(opt_reply(OPT_GO, REP_ACK, &[]));
        assert!(err(HandshakeConfig::new("x"), s).to_string().contains("but NBD_OPT_STRUCTURED_REPLY was sent"));
        let mut s = greeting(1);
        s.extend(vec![0x55; 20]);
        assert!(err(HandshakeConfig::new("x"), s).to_string().contains("option reply magic"));
        let mut s = greeting(1);
        let mut big = opt_reply(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, &[]);
        big[16..20].copy_from_slice(&(MAX_OPTION_REPLY + 1).to_be_bytes());
        s.extend(big);
        assert!(err(HandshakeConfig::new("x"), s).to_string().contains("more than the"));
        // Bad block sizes.
        let mut s = greeting(1);
        s.extend(opt_reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [3u32, 4096, 1 << 20] {
            bs.extend_from_slice(&v.to_be_bytes());
        }
        s.extend(opt_reply(OPT_GO, REP_INFO, &bs));
        assert!(err(HandshakeConfig::new("x"), s).to_string().contains("inconsistent block sizes"));
        // Export names over 4096 bytes are refused up front.
        assert!(Handshake::new(HandshakeConfig::new("x".repeat(4097))).is_err());
    }

    #[test]
    fn plain_newstyle_server_gets_export_name_and_no_zeroes_is_honoured() {
        let mut hs = Handshake::new(HandshakeConfig::new("e")).unwrap();
        let mut s = greeting(0);
        s.extend(export_reply(4096, 1, true));
        let ev = feed(&mut hs, &s).unwrap();
        assert!(matches!(&ev[..], [HandshakeEvent::Done(i)] if i.size == 4096 && !i.via_go));
        let mut hs = Handshake::new(HandshakeConfig::new("e").go(false).structured_replies(false)).unwrap();
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.extend(export_reply(8192, 1, false));
        let ev = feed(&mut hs, &s).unwrap();
        assert!(matches!(&ev[..], [HandshakeEvent::Done(i)] if i.size == 8192));
        assert_eq!(&hs.poll_transmit().unwrap()[..4], &(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
        // A TLS client refuses a server that cannot do fixed newstyle.
        let mut hs = Handshake::new(HandshakeConfig::new("e").tls(true)).unwrap();
        assert!(hs.handle_input(&greeting(0)).is_err());
    }

    fn info(structured: bool) -> ExportInfo {
        ExportInfo {
            size: 1 << 30,
            flags: 3,
            block_size: None,
            structured_replies: structured,
            tls: false,
            via_go: true,
        }
    }

    fn chunk(flags: u16, ty: u16, handle: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = encode_chunk_header(flags, ty, handle, payload.len() as u32).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn structured_replies_interleave_and_errors_keep_the_connection() {
        let mut tx = Transmission::new(&info(true));
        let (h1, req) = tx.read_request(4096, 1024).unwrap();
        assert_eq!(be32(&req, 0), REQUEST_MAGIC);
        assert_eq!(be64(&req, 16), 4096);
        let (h2, _) = tx.read_request(0, 512).unwrap();
        let mut s = vec![];
        // h2 fails with a message, h1 gets a hole then data, interleaved.
        let mut hole = 4096u64.to_be_bytes().to_vec();
        hole.extend_from_slice(&512u32.to_be_bytes());
        s.extend(chunk(0, REPLY_TYPE_OFFSET_HOLE, h1, &hole));
        let mut err = 5u32.to_be_bytes().to_vec();
        err.extend_from_slice(&4u16.to_be_bytes());
        err.extend_from_slice(b"disk");
        s.extend(chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, h2, &err));
        let mut data = 4608u64.to_be_bytes().to_vec();
        data.extend_from_slice(&[7u8; 512]);
        s.extend(chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, h1, &data));
        let (info, bufs) = {
            // Drive by hand to see each step.
            let mut pos = 0;
            let mut steps = vec![];
            while tx.in_flight() > 0 || !tx.finished.is_empty() {
                let st = tx.handle_input(&s[pos..]).unwrap();
                match &st {
                    Step::Payload { consumed, len, .. } => {
                        pos += consumed + *len as usize;
                        tx.payload_done();
                    }
                    Step::Zeroes { consumed, .. } | Step::Finished { consumed, .. } | Step::Consumed(consumed) => {
                        pos += consumed;
                    }
                    Step::NeedMore(_) => panic!("stuck at {pos}"),
                }
                steps.push(st);
            }
            (steps, pos)
        };
        assert_eq!(bufs, s.len());
        assert!(matches!(info[0], Step::Zeroes { at: 0, len: 512, .. }));
        match &info[1] {
            Step::Finished { handle, result: Err(ProtoError::Command { errno: 5, message, .. }), .. } => {
                assert_eq!(*handle, h2);
                assert_eq!(message, "disk");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(info[2], Step::Payload { at: 512, len: 512, .. }));
        assert!(matches!(&info[3], Step::Finished { handle, result: Ok(()), .. } if *handle == h1));
        assert!(
            ProtoError::Command { command: CMD_READ, offset: 0, len: 512, errno: 5, message: "disk".into() }
                .to_string()
                .contains("NBD_CMD_READ of 512 bytes at offset 0 failed: EIO (5) (disk)")
        );
    }

    #[test]
    fn reply_violations_are_named() {
        let viol = |structured: bool, reads: &[(u64, u32)], s: Vec<u8>| -> String {
            let mut tx = Transmission::new(&info(structured));
            for &(o, l) in reads {
                tx.read_request(o, l).unwrap();
            }
            let mut pos = 0;
            loop {
                match tx.handle_input(&s[pos..]) {
                    Err(e) => return e.to_string(),
                    Ok(Step::Finished { result: Err(e), .. }) => return e.to_string(),
                    Ok(Step::NeedMore(_)) => panic!("no error"),
                    Ok(Step::Payload { consumed, len, .. }) => {
                        pos += consumed + len as usize;
                        tx.payload_done();
                    }
                    Ok(Step::Consumed(n) | Step::Zeroes { consumed: n, .. } | Step::Finished { consumed: n, .. }) => {
                        pos += n
                    }
                }
            }
        };
        let mut simple = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
        simple.extend_from_slice(&0u32.to_be_bytes());
        simple.extend_from_slice(&99u64.to_be_bytes());
        assert!(viol(false, &[(0, 512)], simple.clone()).contains("handle 99, which has no request in flight"));
        assert!(viol(true, &[(0, 512)], simple).contains("although structured replies were agreed"));
        assert!(viol(false, &[(0, 512)], chunk(1, 0, 1, &[])).contains("never agreed"));
        assert!(viol(true, &[(0, 512)], vec![1, 2, 3, 4]).contains("reply magic is 0x01020304"));
        let mut data = 1024u64.to_be_bytes().to_vec();
        data.extend_from_slice(&[0; 16]);
        assert!(viol(true, &[(0, 512)], chunk(1, REPLY_TYPE_OFFSET_DATA, 1, &data)).contains("lies outside the read"));
        // Data past the request end by one byte.
        let mut data = 0u64.to_be_bytes().to_vec();
        data.extend_from_slice(&[0; 513]);
        assert!(viol(true, &[(0, 512)], chunk(1, REPLY_TYPE_OFFSET_DATA, 1, &data)).contains("lies outside"));
        // A reply covering less than the read.
        let mut data = 0u64.to_be_bytes().to_vec();
        data.extend_from_slice(&[0; 256]);
        assert!(viol(true, &[(0, 512)], chunk(1, REPLY_TYPE_OFFSET_DATA, 1, &data)).contains("covered 256 bytes"));
        // Overlapping chunks.
        let mut s = chunk(0, REPLY_TYPE_OFFSET_DATA, 1, &data);
        s.extend(chunk(0, REPLY_TYPE_OFFSET_DATA, 1, &data));
        s.extend(chunk(1, REPLY_TYPE_OFFSET_DATA, 1, &data));
        assert!(viol(true, &[(0, 512)], s).contains("overlap"));
        assert!(
            viol(true, &[(0, 512)], chunk(1, REPLY_TYPE_BLOCK_STATUS, 1, &[0; 12])).contains("unexpected chunk type 5")
        );
        let mut e = 5u32.to_be_bytes().to_vec();
        e.extend_from_slice(&100u16.to_be_bytes());
        assert!(viol(true, &[(0, 512)], chunk(1, REPLY_TYPE_ERROR, 1, &e)).contains("error message of 100 bytes"));
        // Requests the protocol cannot carry.
        let mut tx = Transmission::new(&info(false));
        assert!(tx.read_request(0, 0).is_err());
        assert!(tx.read_request(0, MAX_READ_LEN + 1).is_err());
        assert!(tx.read_request((1 << 30) - 1, 2).is_err());
    }

    /// Deterministic mutations of the captured streams through the whole
    /// client session: flips, interesting values at length and magic
    /// positions, truncations, splices and insertions. About three seconds
    /// (at most 300 000 inputs); a panicking input is saved and named with
    /// its seed and index.
    #[test]
    fn fuzz_smoke_captured_streams() {
        const SEED: u64 = 0x6e62_6420_6675_7a7a;
        let start = std::time::Instant::now();
        let mut rng = alike_testing::Rng::new(SEED);
        let corpus = [GO_STRUCTURED, EXPORT_NAME_SIMPLE];
        let mut runs = 0u64;
        let interesting: [u32; 10] = [0, 1, 8, 9, 12, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 4096, 1 << 25];
        while runs < 300_000 && start.elapsed() < std::time::Duration::from_secs(3) {
            let mut d = corpus[(runs % 2) as usize].to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(d.len() as u64) as usize;
                match rng.below(6) {
                    0 => d[at] ^= 1 << rng.below(8),
                    1 => d[at] = rng.below(256) as u8,
                    2 => {
                        let v = interesting[rng.below(interesting.len() as u64) as usize].to_be_bytes();
                        let end = (at + 4).min(d.len());
                        d[at..end].copy_from_slice(&v[..end - at]);
                    }
                    3 => d.truncate(at),
                    4 => {
                        let len = rng.below(64) as usize;
                        let from = rng.below(d.len() as u64) as usize;
                        let piece: Vec<u8> = d[from..(from + len).min(d.len())].to_vec();
                        d.splice(at..at, piece);
                    }
                    _ => {
                        let mut junk = vec![0u8; rng.below(32) as usize];
                        rng.fill(&mut junk);
                        d.splice(at..at, junk);
                    }
                }
                if d.is_empty() {
                    break;
                }
            }
            if std::panic::catch_unwind(|| fuzz_one(&d)).is_err() {
                let path = std::env::temp_dir().join(format!("nbd-fuzz-crash-{SEED:x}-{runs}.bin"));
                let _ = std::fs::write(&path, &d);
                panic!("fuzz_one panicked on input {runs} of seed {SEED:#x}; saved to {}", path.display());
            }
            runs += 1;
        }
        eprintln!("nbd fuzz smoke: {runs} mutated streams in {:?}", start.elapsed());
        assert!(runs >= 1000);
        fuzz_one(&[]);
        fuzz_one(GO_STRUCTURED);
    }
}
