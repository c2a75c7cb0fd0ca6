//! The server half of the NBD protocol, sans I/O: [`ServerHandshake`]
//! (fixed-newstyle option haggling) and [`ServerTransmission`] (requests
//! checked against the export, replies encoded). They share the codec of
//! [`crate::proto`] with the client half; nothing here touches a socket, a
//! clock or a file — [`crate::serve`] is the blocking shell that does.
//!
//! ## What the server offers
//! - Handshake: fixed newstyle with `NBD_FLAG_NO_ZEROES`; options
//!   `NBD_OPT_EXPORT_NAME`, `ABORT`, `LIST`, `STARTTLS` (a hook: the shell
//!   runs TLS, or the option is refused with `NBD_REP_ERR_POLICY` when no TLS
//!   is configured), `INFO`, `GO` (`NBD_INFO_EXPORT`, `NAME`,
//!   `DESCRIPTION`, `BLOCK_SIZE`), `STRUCTURED_REPLY`, and
//!   `LIST_META_CONTEXT`/`SET_META_CONTEXT` for `base:allocation`. Every
//!   other option gets `NBD_REP_ERR_UNSUP`; with TLS required and not yet
//!   started, every option but `STARTTLS` and `ABORT` gets
//!   `NBD_REP_ERR_TLS_REQD`.
//! - Transmission: `NBD_CMD_READ` (simple, or structured with data and hole
//!   chunks; `NBD_CMD_FLAG_DF`), `WRITE`, `WRITE_ZEROES`, `TRIM`, `FLUSH`
//!   (writable exports), `BLOCK_STATUS` (`base:allocation`), `DISC`.
//!
//! ## Totality and bounds
//! As the client half: every decoder answers "need more" with the exact
//! total, a decoded message, or a [`ProtoError`]; nothing panics on any
//! input. An option's data is buffered only up to [`MAX_OPTION_DATA`]; a
//! longer option is read past in pieces and refused with
//! `NBD_REP_ERR_TOO_BIG`. A request's payload is never buffered here: a
//! [`Command::Write`] tells the shell to read it (at most the advertised
//! maximum block size), a refused write tells it to drop it
//! ([`ServerStep::Skip`]). A request past the end, over the maximum size,
//! with an unknown flag or command, or a write to a read-only export gets
//! its NBD error (`EINVAL`, `ENOSPC`, `EPERM`) and the connection goes on.

use std::collections::VecDeque;
use std::ops::Range;

use crate::proto::{
    BlockSize, CHUNK_HEADER_LEN, CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLAG_DF, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE,
    CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES, EINVAL, ENOSPC, EPERM,
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, INFO_BLOCK_SIZE, INFO_DESCRIPTION,
    INFO_EXPORT, INFO_NAME, MAX_EXPORT_NAME, META_BASE_ALLOCATION, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO,
    OPT_LIST, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_STARTTLS, OPT_STRUCTURED_REPLY, OPTION_HEADER_LEN,
    Progress, ProtoError, REP_ACK, REP_ERR_INVALID, REP_ERR_POLICY, REP_ERR_SHUTDOWN, REP_ERR_TLS_REQD,
    REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_FLAG_ERROR, REP_INFO, REP_META_CONTEXT, REP_SERVER,
    REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REQUEST_LEN,
    TFLAG_CAN_MULTI_CONN, TFLAG_HAS_FLAGS, TFLAG_READ_ONLY, TFLAG_SEND_DF, TFLAG_SEND_FLUSH, TFLAG_SEND_FUA,
    TFLAG_SEND_TRIM, TFLAG_SEND_WRITE_ZEROES, be16, be32, decode_option_header, decode_request, encode_chunk_header,
    encode_error_chunk, encode_export_name_reply, encode_greeting, encode_option_reply, encode_simple_reply,
    message_text, option_name, violation,
};

/// The longest option data the server buffers (an export name is at most
/// 4096 bytes; `NBD_OPT_GO` adds 6 bytes and its information requests,
/// metadata queries are short). Longer options are read past and refused.
pub const MAX_OPTION_DATA: u32 = 64 << 10;
/// The largest read or write the server accepts by default (the
/// specification's interoperable maximum); advertised in `NBD_INFO_BLOCK_SIZE`.
pub const DEFAULT_MAX_REQUEST: u32 = 32 << 20;
/// The most descriptors one `NBD_CMD_BLOCK_STATUS` reply carries (a
/// client asks again from where the reply stopped).
pub const MAX_DESCRIPTORS: usize = 4096;
/// The id the server gives `base:allocation` in `NBD_OPT_SET_META_CONTEXT`.
pub const ALLOCATION_CONTEXT_ID: u32 = 1;

/// How the server treats TLS (the modes of the specification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsMode {
    /// No TLS: `NBD_OPT_STARTTLS` is refused with `NBD_REP_ERR_POLICY`.
    #[default]
    Off,
    /// The client may start TLS (the shell must be able to run it).
    Optional,
    /// The client must start TLS before anything else ("FORCEDTLS").
    Required,
}

/// What the handshake says of one export.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportConfig {
    /// The name clients ask for (at most 4096 bytes).
    pub name: String,
    /// A description for `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION` (may be empty).
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether writes are accepted (then `FLUSH`, `TRIM`, `WRITE_ZEROES`
    /// and `FUA` are advertised); otherwise the export is read-only.
    pub writable: bool,
    /// Whether `NBD_FLAG_CAN_MULTI_CONN` is advertised: every connection
    /// sees the same data (always true of a read-only export of immutable data).
    pub multi_conn: bool,
    /// Whether `base:allocation` can be selected (`NBD_CMD_BLOCK_STATUS`).
    pub block_status: bool,
    /// The largest read or write accepted (1 to 32 MiB is sensible).
    pub max_request: u32,
}

impl ExportConfig {
    /// A read-only export of `size` bytes named `name`, with `base:allocation`,
    /// multi-connection, and 32 MiB requests.
    pub fn read_only(name: impl Into<String>, size: u64) -> ExportConfig {
        ExportConfig {
            name: name.into(),
            description: String::new(),
            size,
            writable: false,
            multi_conn: true,
            block_status: true,
            max_request: DEFAULT_MAX_REQUEST,
        }
    }
    /// Sets [`ExportConfig::description`].
    pub fn description(mut self, d: impl Into<String>) -> ExportConfig {
        self.description = d.into();
        self
    }
    /// Sets [`ExportConfig::writable`] (a writable export is not multi-connection unless told so).
    pub fn writable(mut self, on: bool) -> ExportConfig {
        self.writable = on;
        if on {
            self.multi_conn = false;
        }
        self
    }
    /// Sets [`ExportConfig::multi_conn`].
    pub fn multi_conn(mut self, on: bool) -> ExportConfig {
        self.multi_conn = on;
        self
    }
    /// Sets [`ExportConfig::block_status`].
    pub fn block_status(mut self, on: bool) -> ExportConfig {
        self.block_status = on;
        self
    }
    /// Sets [`ExportConfig::max_request`] (clamped to 4 KiB … 32 MiB).
    pub fn max_request(mut self, bytes: u32) -> ExportConfig {
        self.max_request = bytes.clamp(4096, DEFAULT_MAX_REQUEST);
        self
    }

    /// The transmission flags of this export for a client that did (or did
    /// not) negotiate structured replies.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = TFLAG_HAS_FLAGS;
        if self.writable {
            f |= TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
        } else {
            f |= TFLAG_READ_ONLY;
        }
        if self.multi_conn {
            f |= TFLAG_CAN_MULTI_CONN;
        }
        if structured {
            f |= TFLAG_SEND_DF;
        }
        f
    }

    /// The block sizes advertised: any alignment, 4 KiB preferred, `max_request` at most.
    pub fn block_size(&self) -> BlockSize {
        BlockSize { min: 1, preferred: 4096, max: self.max_request }
    }
}

/// What a server serves and how.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The exports, in the order `NBD_OPT_LIST` gives them.
    pub exports: Vec<ExportConfig>,
    /// The export the empty name means (the "default export"), if any.
    pub default_export: Option<usize>,
    /// TLS mode.
    pub tls: TlsMode,
}

impl ServerConfig {
    /// A server of `exports`; the first is the default export.
    pub fn new(exports: Vec<ExportConfig>) -> ServerConfig {
        let default_export = (!exports.is_empty()).then_some(0);
        ServerConfig { exports, default_export, tls: TlsMode::Off }
    }
    /// Sets [`ServerConfig::default_export`].
    pub fn default_export(mut self, index: Option<usize>) -> ServerConfig {
        self.default_export = index;
        self
    }
    /// Sets [`ServerConfig::tls`].
    pub fn tls(mut self, mode: TlsMode) -> ServerConfig {
        self.tls = mode;
        self
    }

    /// The export a client names (the empty name: the default export).
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        if name.is_empty() {
            if let Some(d) = self.default_export.filter(|&d| d < self.exports.len()) {
                return Some(d);
            }
        }
        self.exports.iter().position(|e| e.name.as_bytes() == name)
    }
}

/// What transmission was negotiated for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Negotiated {
    /// The export, as an index into [`ServerConfig::exports`].
    pub export: usize,
    /// Its size.
    pub size: u64,
    /// The transmission flags sent.
    pub flags: u16,
    /// Whether structured replies were agreed.
    pub structured: bool,
    /// The id of `base:allocation` when it was selected for this export.
    pub allocation_context: Option<u32>,
    /// Whether TLS was started.
    pub tls: bool,
    /// Whether transmission was entered with `NBD_OPT_GO` (else `NBD_OPT_EXPORT_NAME`).
    pub via_go: bool,
    /// Largest read or write accepted.
    pub max_request: u32,
}

/// Why a handshake ended without transmission.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client sent `NBD_OPT_ABORT` (its acknowledgement is queued: send it, then close).
    Abort,
    /// `NBD_OPT_EXPORT_NAME` named no export (or TLS was required first, or
    /// the server is shutting down): the protocol has no error reply for
    /// it, so the server closes the connection.
    Refused(String),
}

/// What the server handshake asks of the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// `NBD_OPT_STARTTLS` was acknowledged: send the queued bytes, run the
    /// TLS handshake as the server, then call [`ServerHandshake::tls_established`]
    /// (or drop the connection if TLS failed). Every later byte goes through TLS.
    StartTls,
    /// Negotiation is over: build a [`ServerTransmission`].
    Done(Negotiated),
    /// Close the connection after sending what is queued.
    Close(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SState {
    /// Waiting for the client's 32-bit flags.
    ClientFlags,
    /// Waiting for an option.
    Options,
    /// Reading past the data of an oversized option, then refusing it.
    Discard {
        option: u32,
        remaining: u32,
    },
    /// Waiting for the shell to run TLS.
    TlsUpgrade,
    Done,
    Closed,
}

/// The server side of fixed-newstyle negotiation.
///
/// Call order (quinn style): after [`ServerHandshake::new`], loop — send
/// whatever [`ServerHandshake::poll_transmit`] returns (the greeting first),
/// feed the bytes received so far to [`ServerHandshake::handle_input`] and
/// drop the consumed prefix (on [`Progress::NeedMore`]`(n)` read until the
/// buffer holds `n` bytes, never more: after `NBD_OPT_STARTTLS` the next
/// bytes are TLS), then take [`ServerHandshake::poll_event`]. On
/// [`ServerEvent::StartTls`] run TLS and call
/// [`ServerHandshake::tls_established`]; on [`ServerEvent::Done`] build a
/// [`ServerTransmission`]; on [`ServerEvent::Close`] send what is queued and
/// close. A returned `Err` means the client broke the protocol: close at once.
#[derive(Debug)]
pub struct ServerHandshake {
    cfg: ServerConfig,
    state: SState,
    fixed: bool,
    no_zeroes: bool,
    tls_done: bool,
    structured: bool,
    /// (export index, base:allocation selected) of the last `SET_META_CONTEXT`.
    meta: Option<(usize, bool)>,
    shutting_down: bool,
    out: Vec<u8>,
    events: VecDeque<ServerEvent>,
}

impl ServerHandshake {
    /// A handshake serving `cfg`; the greeting is queued.
    pub fn new(cfg: ServerConfig) -> ServerHandshake {
        ServerHandshake {
            cfg,
            state: SState::ClientFlags,
            fixed: false,
            no_zeroes: false,
            tls_done: false,
            structured: false,
            meta: None,
            shutting_down: false,
            out: encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_vec(),
            events: VecDeque::new(),
        }
    }

    /// The configuration served.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Bytes to send to the client, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() { None } else { Some(std::mem::take(&mut self.out)) }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Whether negotiation is over (transmission starts, or the connection closes).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, SState::Done | SState::Closed)
    }

    /// The server is shutting down: further options are refused with
    /// `NBD_REP_ERR_SHUTDOWN` (`NBD_OPT_ABORT` is still acknowledged).
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// The shell finished the TLS handshake after [`ServerEvent::StartTls`].
    /// Negotiation state from before TLS (structured replies, metadata
    /// contexts) is forgotten, as the specification requires.
    pub fn tls_established(&mut self) {
        if self.state == SState::TlsUpgrade {
            self.tls_done = true;
            self.structured = false;
            self.meta = None;
            self.state = SState::Options;
        }
    }

    /// Feeds the bytes buffered so far (from the start of the next message).
    ///
    /// # Errors
    /// [`ProtoError::Violation`] when the client broke the protocol (unknown
    /// client flags, a bad option magic, an oversized `NBD_OPT_EXPORT_NAME`);
    /// the machine is closed afterwards.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<Progress, ProtoError> {
        let r = self.step(input);
        if r.is_err() {
            self.state = SState::Closed;
        }
        r
    }

    fn step(&mut self, b: &[u8]) -> Result<Progress, ProtoError> {
        match self.state {
            SState::ClientFlags => {
                if b.len() < 4 {
                    return Ok(Progress::NeedMore(4));
                }
                let flags = be32(b, 0);
                if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
                    return Err(violation("client flags", format!("unknown client flags {flags:#010x}")));
                }
                self.fixed = flags & FLAG_C_FIXED_NEWSTYLE != 0;
                self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
                if !self.fixed && self.cfg.tls == TlsMode::Required {
                    return Err(violation(
                        "client flags",
                        "the client does not speak fixed newstyle, and this server requires TLS",
                    ));
                }
                self.state = SState::Options;
                Ok(Progress::Consumed(4))
            }
            SState::Options => {
                let Some(h) = decode_option_header(b)? else { return Ok(Progress::NeedMore(OPTION_HEADER_LEN)) };
                if h.len > MAX_OPTION_DATA {
                    if h.option == OPT_EXPORT_NAME {
                        return Err(violation(
                            "NBD_OPT_EXPORT_NAME",
                            format!("an export name of {} bytes (at most {MAX_EXPORT_NAME})", h.len),
                        ));
                    }
                    self.state = SState::Discard { option: h.option, remaining: h.len };
                    return Ok(Progress::Consumed(OPTION_HEADER_LEN));
                }
                let total = OPTION_HEADER_LEN + h.len as usize;
                if b.len() < total {
                    return Ok(Progress::NeedMore(total));
                }
                self.option(h.option, &b[OPTION_HEADER_LEN..total]);
                Ok(Progress::Consumed(total))
            }
            SState::Discard { option, remaining } => {
                let want = remaining.min(MAX_OPTION_DATA) as usize;
                if b.len() < want {
                    return Ok(Progress::NeedMore(want));
                }
                let remaining = remaining - want as u32;
                if remaining == 0 {
                    self.state = SState::Options;
                    let m = format!("{} with {MAX_OPTION_DATA}+ bytes of data", option_name(option));
                    self.reply_error(option, REP_ERR_TOO_BIG, m);
                } else {
                    self.state = SState::Discard { option, remaining };
                }
                Ok(Progress::Consumed(want))
            }
            SState::TlsUpgrade | SState::Done | SState::Closed => Ok(Progress::Consumed(0)),
        }
    }

    fn reply(&mut self, option: u32, reply: u32, data: &[u8]) {
        // Replies here are at most a name or a message plus a few bytes, far
        // under MAX_OPTION_REPLY, so this cannot fail.
        if let Ok(bytes) = encode_option_reply(option, reply, data) {
            self.out.extend_from_slice(&bytes);
        }
    }

    fn reply_error(&mut self, option: u32, reply: u32, message: String) {
        debug_assert!(reply & REP_FLAG_ERROR != 0);
        let mut cut = message.len().min(MAX_EXPORT_NAME);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        self.reply(option, reply, &message.as_bytes()[..cut]);
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = SState::Closed;
        self.events.push_back(ServerEvent::Close(reason));
    }

    fn export_list(&self) -> String {
        let names: Vec<String> = self.cfg.exports.iter().map(|e| format!("{:?}", e.name)).collect();
        if names.is_empty() { "none".into() } else { names.join(", ") }
    }

    fn option(&mut self, opt: u32, data: &[u8]) {
        if opt == OPT_ABORT {
            self.reply(opt, REP_ACK, &[]);
            self.close(CloseReason::Abort);
            return;
        }
        if self.shutting_down {
            if opt == OPT_EXPORT_NAME {
                self.close(CloseReason::Refused("the server is shutting down".into()));
            } else {
                self.reply_error(opt, REP_ERR_SHUTDOWN, "the server is shutting down".into());
            }
            return;
        }
        if self.cfg.tls == TlsMode::Required && !self.tls_done && opt != OPT_STARTTLS {
            if opt == OPT_EXPORT_NAME {
                self.close(CloseReason::Refused("TLS is required: NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS".into()));
            } else {
                self.reply_error(opt, REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS first".into());
            }
            return;
        }
        match opt {
            OPT_EXPORT_NAME => match self.cfg.find(data) {
                Some(i) => {
                    let e = &self.cfg.exports[i];
                    let reply =
                        encode_export_name_reply(e.size, e.transmission_flags(self.structured), !self.no_zeroes);
                    self.out.extend_from_slice(&reply);
                    self.finish(i, false);
                }
                None => {
                    let why = format!("no export named {:?} (exports: {})", message_text(data), self.export_list());
                    self.close(CloseReason::Refused(why));
                }
            },
            OPT_LIST => {
                if !data.is_empty() {
                    return self.reply_error(opt, REP_ERR_INVALID, "NBD_OPT_LIST takes no data".into());
                }
                for i in 0..self.cfg.exports.len() {
                    let e = &self.cfg.exports[i];
                    let mut d = (e.name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(e.name.as_bytes());
                    d.extend_from_slice(e.description.as_bytes());
                    self.reply(opt, REP_SERVER, &d);
                }
                self.reply(opt, REP_ACK, &[]);
            }
            OPT_STARTTLS => {
                if !data.is_empty() {
                    self.reply_error(opt, REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data".into());
                } else if self.cfg.tls == TlsMode::Off {
                    self.reply_error(opt, REP_ERR_POLICY, "TLS is not configured on this server".into());
                } else if self.tls_done {
                    self.reply_error(opt, REP_ERR_INVALID, "TLS is already started".into());
                } else {
                    self.reply(opt, REP_ACK, &[]);
                    self.state = SState::TlsUpgrade;
                    self.events.push_back(ServerEvent::StartTls);
                }
            }
            OPT_INFO | OPT_GO => self.info_or_go(opt, data),
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    self.reply_error(opt, REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data".into());
                } else if self.structured {
                    self.reply_error(opt, REP_ERR_INVALID, "structured replies are already negotiated".into());
                } else {
                    self.structured = true;
                    self.reply(opt, REP_ACK, &[]);
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(opt, data),
            _ => self.reply_error(opt, REP_ERR_UNSUP, format!("option {opt} ({}) is not supported", option_name(opt))),
        }
    }

    fn info_or_go(&mut self, opt: u32, d: &[u8]) {
        let bad = "malformed request: name length, name, count, information types";
        if d.len() < 6 {
            return self.reply_error(opt, REP_ERR_INVALID, bad.into());
        }
        let nlen = be32(d, 0) as usize;
        if nlen > d.len() - 6 {
            return self.reply_error(opt, REP_ERR_INVALID, bad.into());
        }
        let name = &d[4..4 + nlen];
        let n = usize::from(be16(d, 4 + nlen));
        if d.len() != 6 + nlen + 2 * n {
            return self.reply_error(opt, REP_ERR_INVALID, bad.into());
        }
        let asked: Vec<u16> = (0..n).map(|k| be16(d, 6 + nlen + 2 * k)).collect();
        let Some(i) = self.cfg.find(name) else {
            let why = format!("no export named {:?} (exports: {})", message_text(name), self.export_list());
            return self.reply_error(opt, REP_ERR_UNKNOWN, why);
        };
        let e = self.cfg.exports[i].clone();
        let mut info = INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&e.size.to_be_bytes());
        info.extend_from_slice(&e.transmission_flags(self.structured).to_be_bytes());
        self.reply(opt, REP_INFO, &info);
        if asked.contains(&INFO_NAME) {
            let mut v = INFO_NAME.to_be_bytes().to_vec();
            v.extend_from_slice(e.name.as_bytes());
            self.reply(opt, REP_INFO, &v);
        }
        if asked.contains(&INFO_DESCRIPTION) && !e.description.is_empty() {
            let mut v = INFO_DESCRIPTION.to_be_bytes().to_vec();
            v.extend_from_slice(e.description.as_bytes());
            self.reply(opt, REP_INFO, &v);
        }
        // Sent whether asked or not (allowed): it only tells the client our maximum.
        let bs = e.block_size();
        let mut v = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for x in [bs.min, bs.preferred, bs.max] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        self.reply(opt, REP_INFO, &v);
        self.reply(opt, REP_ACK, &[]);
        if opt == OPT_GO {
            self.finish(i, true);
        }
    }

    fn meta_context(&mut self, opt: u32, d: &[u8]) {
        let set = opt == OPT_SET_META_CONTEXT;
        if set {
            // Replaces every earlier selection, even when this one fails.
            self.meta = None;
        }
        if !self.structured {
            return self.reply_error(opt, REP_ERR_INVALID, "negotiate NBD_OPT_STRUCTURED_REPLY first".into());
        }
        let Some((name, queries)) = parse_meta_request(d) else {
            return self.reply_error(
                opt,
                REP_ERR_INVALID,
                "malformed request: name length, name, query count, queries (length, text)".into(),
            );
        };
        if let Some(q) = queries.iter().find(|q| !q.contains(&b':')) {
            return self.reply_error(
                opt,
                REP_ERR_INVALID,
                format!("query {:?} has no namespace (namespace:leaf)", message_text(q)),
            );
        }
        let Some(i) = self.cfg.find(name) else {
            let why = format!("no export named {:?} (exports: {})", message_text(name), self.export_list());
            return self.reply_error(opt, REP_ERR_UNKNOWN, why);
        };
        let supported = self.cfg.exports[i].block_status;
        let base = META_BASE_ALLOCATION.as_bytes();
        let selected = supported
            && if set {
                queries.contains(&base)
            } else {
                queries.is_empty() || queries.iter().any(|q| *q == base || *q == b"base:")
            };
        if selected {
            let id = if set { ALLOCATION_CONTEXT_ID } else { 0 };
            let mut v = id.to_be_bytes().to_vec();
            v.extend_from_slice(base);
            self.reply(opt, REP_META_CONTEXT, &v);
        }
        if set {
            self.meta = Some((i, selected));
        }
        self.reply(opt, REP_ACK, &[]);
    }

    fn finish(&mut self, export: usize, via_go: bool) {
        let e = &self.cfg.exports[export];
        let allocation_context =
            (self.structured && e.block_status && self.meta == Some((export, true))).then_some(ALLOCATION_CONTEXT_ID);
        let n = Negotiated {
            export,
            size: e.size,
            flags: e.transmission_flags(self.structured),
            structured: self.structured,
            allocation_context,
            tls: self.tls_done,
            via_go,
            max_request: e.max_request,
        };
        self.state = SState::Done;
        self.events.push_back(ServerEvent::Done(n));
    }
}

/// `NBD_OPT_LIST_META_CONTEXT`/`SET_META_CONTEXT` data: the export name and
/// the queries; `None` when the lengths do not add up exactly or a string
/// is longer than 4096 bytes.
fn parse_meta_request(d: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let take = |at: usize, n: usize| d.get(at..at.checked_add(n)?);
    let nlen = be32(take(0, 4)?, 0) as usize;
    if nlen > MAX_EXPORT_NAME {
        return None;
    }
    let name = take(4, nlen)?;
    let mut at = 4 + nlen;
    let count = be32(take(at, 4)?, 0) as usize;
    at += 4;
    // Each query takes at least 4 bytes: a count the data cannot hold is malformed.
    if count > (d.len() - at) / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        let qlen = be32(take(at, 4)?, 0) as usize;
        if qlen > MAX_EXPORT_NAME {
            return None;
        }
        queries.push(take(at + 4, qlen)?);
        at += 4 + qlen;
    }
    (at == d.len()).then_some((name, queries))
}

// ---------------------------------------------------------------------------
// Transmission

/// A request the shell must carry out (the machine checked it against the
/// export: inside it, within the size limit, allowed on it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Read `len` bytes at `offset`; answer with [`ServerTransmission::read_reply`].
    Read {
        /// The client's handle.
        handle: u64,
        /// Offset.
        offset: u64,
        /// Length (1 to the maximum request size).
        len: u32,
        /// One content chunk only (`NBD_CMD_FLAG_DF`).
        df: bool,
    },
    /// Write the next `len` bytes of the stream (the payload: read them
    /// straight into a buffer) at `offset`; answer with [`ServerTransmission::reply_ok`].
    Write {
        /// The client's handle.
        handle: u64,
        /// Offset.
        offset: u64,
        /// Payload length.
        len: u32,
        /// Reply only once the write is durable.
        fua: bool,
    },
    /// Zero `len` bytes at `offset`.
    WriteZeroes {
        /// The client's handle.
        handle: u64,
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
        /// Do not punch a hole.
        no_hole: bool,
        /// Reply only once durable.
        fua: bool,
    },
    /// The client no longer needs `len` bytes at `offset` (they may read as anything; zeroes here).
    Trim {
        /// The client's handle.
        handle: u64,
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
        /// Reply only once durable.
        fua: bool,
    },
    /// Make every acknowledged write durable.
    Flush {
        /// The client's handle.
        handle: u64,
    },
    /// Report allocation (`base:allocation`) from `offset`; answer with
    /// [`ServerTransmission::block_status_reply`].
    BlockStatus {
        /// The client's handle.
        handle: u64,
        /// Offset.
        offset: u64,
        /// Length of interest.
        len: u32,
        /// One extent only (`NBD_CMD_FLAG_REQ_ONE`).
        req_one: bool,
    },
    /// The client disconnects: finish what is in flight, then close.
    Disconnect,
}

/// One step of request decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerStep {
    /// Nothing decodable yet: the buffer must hold this many bytes.
    NeedMore(usize),
    /// This many bytes were used; the reply (an error) is queued in
    /// [`ServerTransmission::poll_transmit`].
    Consumed(usize),
    /// `consumed` header bytes were used; the *next* `len` bytes are the
    /// payload of a refused write: drop them (the error reply is queued).
    Skip {
        /// Header bytes used.
        consumed: usize,
        /// Payload bytes to drop.
        len: u32,
    },
    /// `consumed` bytes were used; carry out the command.
    Command {
        /// Bytes used.
        consumed: usize,
        /// What to do.
        command: Command,
    },
}

/// A piece of a read reply: header bytes, then (maybe) data borrowed from
/// the caller's buffer. Send them in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyPart<'a> {
    /// Reply or chunk header (with a chunk's offset and hole fields).
    pub header: Vec<u8>,
    /// Data that follows the header (empty for holes and errors).
    pub data: &'a [u8],
}

/// One `base:allocation` extent of a block status reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub len: u64,
    /// Status flags (`STATE_HOLE`, `STATE_ZERO`).
    pub flags: u32,
}

/// The transmission phase of a server: requests decoded and checked
/// against the export, replies encoded.
///
/// Call order: feed received bytes to [`ServerTransmission::handle_input`]
/// and act on each [`ServerStep`] — drop `consumed` bytes; on
/// [`ServerStep::Skip`] drop the payload too; on [`ServerStep::Command`]
/// carry it out (for [`Command::Write`] the payload is the next `len`
/// bytes) and answer with [`ServerTransmission::read_reply`],
/// [`ServerTransmission::block_status_reply`],
/// [`ServerTransmission::reply_ok`] or [`ServerTransmission::reply_error`].
/// Send [`ServerTransmission::poll_transmit`] after every step. After
/// [`Command::Disconnect`] read nothing more. A returned `Err` (a bad
/// request magic) means the stream cannot be followed: close at once.
#[derive(Debug)]
pub struct ServerTransmission {
    n: Negotiated,
    writable: bool,
    out: Vec<u8>,
    disconnected: bool,
}

impl ServerTransmission {
    /// The transmission phase for what the handshake negotiated.
    pub fn new(n: Negotiated) -> ServerTransmission {
        let writable = n.flags & TFLAG_READ_ONLY == 0;
        ServerTransmission { n, writable, out: Vec::new(), disconnected: false }
    }

    /// What was negotiated.
    pub fn negotiated(&self) -> &Negotiated {
        &self.n
    }

    /// Queued reply bytes to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() { None } else { Some(std::mem::take(&mut self.out)) }
    }

    /// Whether the client sent `NBD_CMD_DISC`.
    pub fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// Decodes and checks the next request.
    ///
    /// # Errors
    /// [`ProtoError::Violation`] on a bad request magic (the stream cannot
    /// be followed), or input after `NBD_CMD_DISC`.
    pub fn handle_input(&mut self, b: &[u8]) -> Result<ServerStep, ProtoError> {
        if self.disconnected {
            return Err(violation("request", "a request after NBD_CMD_DISC"));
        }
        let Some(r) = decode_request(b)? else { return Ok(ServerStep::NeedMore(REQUEST_LEN)) };
        let consumed = REQUEST_LEN;
        let (handle, offset, len) = (r.handle, r.offset, r.len);
        let fua_ok = if self.writable { CMD_FLAG_FUA } else { 0 };
        let allowed = match r.command {
            CMD_READ => fua_ok | if self.n.structured { CMD_FLAG_DF } else { 0 },
            CMD_WRITE | CMD_TRIM | CMD_FLUSH => fua_ok,
            CMD_WRITE_ZEROES => fua_ok | CMD_FLAG_NO_HOLE,
            CMD_BLOCK_STATUS => fua_ok | CMD_FLAG_REQ_ONE,
            _ => 0,
        };
        let end = offset.checked_add(u64::from(len));
        let past_end = end.is_none_or(|e| e > self.n.size);
        let too_big = len > self.n.max_request;
        let payload = if r.command == CMD_WRITE { len } else { 0 };
        // A refusal: queue the error; a write's payload must still be read past.
        let refuse = |me: &mut Self, errno: u32, msg: String| {
            me.reply_error(handle, errno, &msg);
            if payload > 0 { ServerStep::Skip { consumed, len: payload } } else { ServerStep::Consumed(consumed) }
        };
        if r.flags & !allowed != 0 {
            let msg =
                format!("command flags {:#06x} are not valid for {}", r.flags, crate::proto::command_name(r.command));
            return Ok(refuse(self, EINVAL, msg));
        }
        let what = crate::proto::command_name(r.command);
        let max = self.n.max_request;
        let size = self.n.size;
        let range_msg = || format!("{what} of {len} bytes at {offset}: past the end of the export ({size} bytes)");
        let cmd = match r.command {
            CMD_READ | CMD_BLOCK_STATUS => {
                if r.command == CMD_BLOCK_STATUS && self.n.allocation_context.is_none() {
                    return Ok(refuse(self, EINVAL, "NBD_CMD_BLOCK_STATUS without a selected metadata context".into()));
                }
                if len == 0 {
                    return Ok(refuse(self, EINVAL, format!("{what} of 0 bytes")));
                }
                if r.command == CMD_READ && too_big {
                    return Ok(refuse(self, EINVAL, format!("read of {len} bytes: at most {max}")));
                }
                if past_end {
                    return Ok(refuse(self, EINVAL, range_msg()));
                }
                if r.command == CMD_READ {
                    Command::Read { handle, offset, len, df: r.flags & CMD_FLAG_DF != 0 }
                } else {
                    Command::BlockStatus { handle, offset, len, req_one: r.flags & CMD_FLAG_REQ_ONE != 0 }
                }
            }
            CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM => {
                if !self.writable {
                    return Ok(refuse(self, EPERM, format!("{what} on a read-only export")));
                }
                if len == 0 {
                    return Ok(refuse(self, EINVAL, format!("{what} of 0 bytes")));
                }
                if r.command == CMD_WRITE && too_big {
                    return Ok(refuse(self, EINVAL, format!("write of {len} bytes: at most {max}")));
                }
                if past_end {
                    let errno = if r.command == CMD_TRIM { EINVAL } else { ENOSPC };
                    return Ok(refuse(self, errno, range_msg()));
                }
                let fua = r.flags & CMD_FLAG_FUA != 0;
                match r.command {
                    CMD_WRITE => Command::Write { handle, offset, len, fua },
                    CMD_TRIM => Command::Trim { handle, offset, len, fua },
                    _ => Command::WriteZeroes { handle, offset, len, no_hole: r.flags & CMD_FLAG_NO_HOLE != 0, fua },
                }
            }
            CMD_FLUSH => {
                if offset != 0 || len != 0 {
                    return Ok(refuse(self, EINVAL, "NBD_CMD_FLUSH with a nonzero offset or length".into()));
                }
                if !self.writable {
                    // Nothing was ever written: nothing to make durable.
                    self.reply_ok(handle);
                    return Ok(ServerStep::Consumed(consumed));
                }
                Command::Flush { handle }
            }
            CMD_DISC => {
                self.disconnected = true;
                Command::Disconnect
            }
            CMD_CACHE => return Ok(refuse(self, EINVAL, "NBD_CMD_CACHE is not supported".into())),
            c => return Ok(refuse(self, EINVAL, format!("unknown command {c}"))),
        };
        Ok(ServerStep::Command { consumed, command: cmd })
    }

    /// Queues a successful reply without data (write, trim, write zeroes, flush).
    pub fn reply_ok(&mut self, handle: u64) {
        self.out.extend_from_slice(&encode_simple_reply(0, handle));
    }

    /// Queues an error reply (`errno` one of the `E*` constants): a
    /// structured error chunk with `message` when structured replies were
    /// agreed, else a simple reply.
    pub fn reply_error(&mut self, handle: u64, errno: u32, message: &str) {
        let errno = if errno == 0 { crate::proto::EIO } else { errno };
        if self.n.structured {
            self.out.extend_from_slice(&encode_error_chunk(handle, errno, message));
        } else {
            self.out.extend_from_slice(&encode_simple_reply(errno, handle));
        }
    }

    /// The reply to [`Command::Read`] `(handle, offset, len = data.len(), df)`:
    /// `data` holds the bytes read (zeroes in holes); `holes` are ranges of
    /// the export inside the read that are known to read as zeroes, sorted
    /// (with structured replies they go as hole chunks, without data).
    /// Send queued bytes first, then every part in order.
    pub fn read_reply<'a>(
        &mut self,
        handle: u64,
        offset: u64,
        data: &'a [u8],
        holes: &[Range<u64>],
        df: bool,
    ) -> Vec<ReplyPart<'a>> {
        if !self.n.structured {
            return vec![ReplyPart { header: encode_simple_reply(0, handle).to_vec(), data }];
        }
        let end = offset + data.len() as u64;
        // Pieces: (start, end, hole) covering the read, holes clipped and merged.
        let mut pieces: Vec<(u64, u64, bool)> = Vec::new();
        let mut at = offset;
        if !df {
            for h in holes {
                let (s, e) = (h.start.max(at), h.end.min(end));
                if s >= e {
                    continue;
                }
                if s > at {
                    pieces.push((at, s, false));
                }
                match pieces.last_mut() {
                    Some(p) if p.2 && p.1 == s => p.1 = e,
                    _ => pieces.push((s, e, true)),
                }
                at = e;
            }
        }
        if at < end {
            pieces.push((at, end, false));
        }
        let last = pieces.len().saturating_sub(1);
        pieces
            .iter()
            .enumerate()
            .map(|(k, &(s, e, hole))| {
                let flags = if k == last { REPLY_FLAG_DONE } else { 0 };
                let n = (e - s) as u32;
                if hole {
                    let mut header = encode_chunk_header(flags, REPLY_TYPE_OFFSET_HOLE, handle, 12).to_vec();
                    header.extend_from_slice(&s.to_be_bytes());
                    header.extend_from_slice(&n.to_be_bytes());
                    ReplyPart { header, data: &[] }
                } else {
                    let mut header = Vec::with_capacity(CHUNK_HEADER_LEN + 8);
                    header.extend_from_slice(&encode_chunk_header(flags, REPLY_TYPE_OFFSET_DATA, handle, n + 8));
                    header.extend_from_slice(&s.to_be_bytes());
                    let from = (s - offset) as usize;
                    ReplyPart { header, data: &data[from..from + n as usize] }
                }
            })
            .collect()
    }

    /// Queues the reply to [`Command::BlockStatus`] `(handle, len, req_one)`:
    /// `extents` describe the export from the request's offset, in order.
    /// Consecutive extents of one status are merged, zero-length ones
    /// dropped, the list cut at the request's end (the last extent clipped)
    /// and at [`MAX_DESCRIPTORS`] (one with `req_one`). An empty list is
    /// answered as one extent of status 0 ("allocated, contents unknown"),
    /// which is always true.
    pub fn block_status_reply(&mut self, handle: u64, len: u32, req_one: bool, extents: &[Extent]) {
        let max = if req_one { 1 } else { MAX_DESCRIPTORS };
        let mut out: Vec<(u32, u32)> = Vec::new();
        let mut left = u64::from(len);
        for e in extents {
            if left == 0 || e.len == 0 {
                if left == 0 {
                    break;
                }
                continue;
            }
            let n = e.len.min(left);
            left -= n;
            let full = out.len() == max;
            match out.last_mut() {
                Some(last) if last.1 == e.flags => last.0 += n as u32,
                _ if full => break,
                _ => out.push((n as u32, e.flags)),
            }
        }
        if out.is_empty() {
            out.push((len, 0));
        }
        let ctx = self.n.allocation_context.unwrap_or(crate::server::ALLOCATION_CONTEXT_ID);
        let plen = 4 + 8 * out.len() as u32;
        self.out.extend_from_slice(&encode_chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, handle, plen));
        self.out.extend_from_slice(&ctx.to_be_bytes());
        for (l, f) in out {
            self.out.extend_from_slice(&l.to_be_bytes());
            self.out.extend_from_slice(&f.to_be_bytes());
        }
    }
}

// ---------------------------------------------------------------------------
// Fuzzing (and the replay driver of the unit tests)

/// Most steps a replay takes (every step consumes input or ends the replay).
const FUZZ_STEPS: usize = 1 << 16;

/// The exports [`fuzz_server_one`] serves: a read-only 1 MiB disk (the
/// default export) and a writable 64 KiB one.
fn fuzz_config(tls: TlsMode) -> ServerConfig {
    ServerConfig::new(vec![
        ExportConfig::read_only("disk0", 1 << 20).max_request(64 << 10),
        ExportConfig::read_only("rw", 64 << 10).writable(true).description("scratch"),
    ])
    .tls(tls)
}

/// Feeds `data` as a client's byte stream through a whole server session
/// — handshake (TLS pretended at once), then requests carried out against
/// a fake export whose every other 4 KiB block is a hole, their replies
/// encoded — with TLS off and required. The body of the `nbd_server` fuzz
/// target (and part of [`crate::fuzz_one`]): it must return, never panic,
/// on any bytes.
pub fn fuzz_server_one(data: &[u8]) {
    for tls in [TlsMode::Off, TlsMode::Required] {
        let _ = replay_server(fuzz_config(tls), data);
    }
}

/// What a replayed server session produced.
#[derive(Debug, Default)]
struct Replayed {
    /// Everything the server sent.
    sent: Vec<u8>,
    /// What transmission was negotiated for.
    negotiated: Option<Negotiated>,
    /// Commands carried out.
    commands: Vec<Command>,
    /// Why the handshake closed, if it did.
    closed: Option<CloseReason>,
}

/// Runs a server session over a recorded client stream. Reads answer with
/// the export's offset bytes (`offset % 251`) and a hole in every odd 4 KiB
/// block; writes skip their payload.
fn replay_server(cfg: ServerConfig, data: &[u8]) -> Result<Replayed, ProtoError> {
    let ended = || violation("replay", "the stream ended");
    let mut out = Replayed::default();
    let mut hs = ServerHandshake::new(cfg);
    let mut pos = 0usize;
    let mut steps = 0usize;
    let n = loop {
        steps += 1;
        if steps > FUZZ_STEPS {
            return Err(violation("replay", "too many steps"));
        }
        out.sent.extend(hs.poll_transmit().unwrap_or_default());
        match hs.poll_event() {
            Some(ServerEvent::StartTls) => {
                hs.tls_established();
                continue;
            }
            Some(ServerEvent::Done(n)) => break n,
            Some(ServerEvent::Close(r)) => {
                out.closed = Some(r);
                return Ok(out);
            }
            None => {}
        }
        match hs.handle_input(&data[pos..])? {
            Progress::Consumed(0) | Progress::NeedMore(_) => return Err(ended()),
            Progress::Consumed(k) => pos += k,
        }
    };
    out.negotiated = Some(n.clone());
    let mut tx = ServerTransmission::new(n);
    let mut buf = Vec::new();
    for _ in 0..FUZZ_STEPS {
        let step = tx.handle_input(&data[pos..])?;
        match step {
            ServerStep::NeedMore(_) => return Err(ended()),
            ServerStep::Consumed(k) => pos += k,
            ServerStep::Skip { consumed, len } => pos = (pos + consumed).saturating_add(len as usize).min(data.len()),
            ServerStep::Command { consumed, command } => {
                pos += consumed;
                out.commands.push(command.clone());
                match command {
                    Command::Read { handle, offset, len, df } => {
                        buf.clear();
                        buf.extend((offset..offset + u64::from(len)).map(|o| (o % 251) as u8));
                        let holes: Vec<Range<u64>> = (offset / 4096..(offset + u64::from(len)).div_ceil(4096))
                            .filter(|b| b % 2 == 1)
                            .map(|b| b * 4096..(b + 1) * 4096)
                            .collect();
                        for p in tx.read_reply(handle, offset, &buf, &holes, df) {
                            out.sent.extend_from_slice(&p.header);
                            out.sent.extend_from_slice(p.data);
                        }
                    }
                    Command::Write { handle, len, .. } => {
                        let end = pos.checked_add(len as usize).filter(|&e| e <= data.len()).ok_or_else(ended)?;
                        pos = end;
                        tx.reply_ok(handle);
                    }
                    Command::WriteZeroes { handle, .. } | Command::Trim { handle, .. } | Command::Flush { handle } => {
                        tx.reply_ok(handle);
                    }
                    Command::BlockStatus { handle, offset, len, req_one } => {
                        let ext: Vec<Extent> =
                            (0..8).map(|k| Extent { len: 512 + (offset + k) % 8192, flags: (k % 3) as u32 }).collect();
                        tx.block_status_reply(handle, len, req_one, &ext);
                    }
                    Command::Disconnect => {
                        out.sent.extend(tx.poll_transmit().unwrap_or_default());
                        return Ok(out);
                    }
                }
            }
        }
        out.sent.extend(tx.poll_transmit().unwrap_or_default());
    }
    Err(violation("replay", "too many steps"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        self, CMD_FLAG_DF, EIO, ENOSPC, ExportInfo, FLAG_C_FIXED_NEWSTYLE, Handshake, HandshakeConfig, HandshakeEvent,
        OPT_EXTENDED_HEADERS, OptionReply, REP_ERR_UNKNOWN, STATE_HOLE, STATE_ZERO, Step, TFLAG_SEND_DF, Transmission,
        decode_option_reply, encode_option, encode_request,
    };

    fn cfg() -> ServerConfig {
        ServerConfig::new(vec![
            ExportConfig::read_only("disk0", 1 << 20).description("first disk"),
            ExportConfig::read_only("rw", 1 << 16).writable(true),
            ExportConfig::read_only("nobs", 4096).block_status(false),
        ])
    }

    /// Runs a client handshake against a server handshake in memory; both
    /// sides pretend TLS at once. Returns the client's and the server's
    /// final events (or the first error of either side).
    fn pump(
        client: &mut Handshake,
        server: &mut ServerHandshake,
    ) -> (Result<ExportInfo, ProtoError>, Vec<ServerEvent>) {
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        let mut sevents = Vec::new();
        for _ in 0..1000 {
            to_client.extend(server.poll_transmit().unwrap_or_default());
            to_server.extend(client.poll_transmit().unwrap_or_default());
            let mut progressed = false;
            while let Some(e) = server.poll_event() {
                if e == ServerEvent::StartTls {
                    server.tls_established();
                }
                let end = matches!(e, ServerEvent::Done(_) | ServerEvent::Close(_));
                sevents.push(e);
                progressed = true;
                if end {
                    // Let the client read what was queued last.
                    to_client.extend(server.poll_transmit().unwrap_or_default());
                }
            }
            match client.poll_event() {
                Some(HandshakeEvent::StartTls) => {
                    client.tls_established();
                    continue;
                }
                Some(HandshakeEvent::Done(i)) => return (Ok(i), sevents),
                None => {}
            }
            if !server.is_finished() {
                match server.handle_input(&to_server) {
                    Ok(Progress::Consumed(n)) if n > 0 => {
                        to_server.drain(..n);
                        progressed = true;
                    }
                    Ok(_) => {}
                    Err(e) => return (Err(e), sevents),
                }
            }
            match client.handle_input(&to_client) {
                Ok(Progress::Consumed(n)) if n > 0 => {
                    to_client.drain(..n);
                    progressed = true;
                }
                Ok(_) => {}
                Err(e) => return (Err(e), sevents),
            }
            if !progressed {
                let e = client.eof_error().unwrap_or_else(|| violation("pump", "stuck"));
                return (Err(e), sevents);
            }
        }
        panic!("pump did not end");
    }

    fn done(ev: &[ServerEvent]) -> Negotiated {
        match ev.last() {
            Some(ServerEvent::Done(n)) => n.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_half_negotiates_go_with_structured_replies() {
        let mut c = Handshake::new(HandshakeConfig::new("disk0")).unwrap();
        let mut s = ServerHandshake::new(cfg());
        let (info, ev) = pump(&mut c, &mut s);
        let info = info.unwrap();
        let n = done(&ev);
        assert_eq!((info.size, info.flags), (n.size, n.flags));
        assert!(info.via_go && n.via_go && info.structured_replies && n.structured);
        assert_eq!(info.block_size, Some(BlockSize { min: 1, preferred: 4096, max: 32 << 20 }));
        let f = info.flags;
        assert!(f & TFLAG_READ_ONLY != 0 && f & TFLAG_CAN_MULTI_CONN != 0 && f & TFLAG_SEND_DF != 0);
        assert!(f & TFLAG_SEND_FLUSH == 0, "a read-only export advertises no flush");
        assert_eq!(n.allocation_context, None, "no SET_META_CONTEXT was sent");
        // The default export: the empty name.
        let mut c = Handshake::new(HandshakeConfig::new("")).unwrap();
        let (info, ev) = pump(&mut c, &mut ServerHandshake::new(cfg()));
        assert_eq!((info.unwrap().size, done(&ev).export), (1 << 20, 0));
    }

    #[test]
    fn client_half_falls_back_and_export_name_honours_no_zeroes() {
        for go in [false, true] {
            let hc = HandshakeConfig::new("rw").go(go).structured_replies(false);
            let mut c = Handshake::new(hc).unwrap();
            let (info, ev) = pump(&mut c, &mut ServerHandshake::new(cfg()));
            let (info, n) = (info.unwrap(), done(&ev));
            assert_eq!(info.via_go, go);
            assert!(!info.structured_replies && info.flags & TFLAG_SEND_DF == 0);
            let want = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
            assert_eq!((info.flags, n.flags), (want, want), "writable, not multi-conn");
        }
        // A client without NO_ZEROES gets the 124 zero bytes.
        let mut input = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        input.extend(encode_option(OPT_EXPORT_NAME, b"disk0").unwrap());
        let (sent, ev) = raw(cfg(), &input);
        assert_eq!(sent.len(), 18 + 134);
        assert!(matches!(ev.last(), Some(ServerEvent::Done(_))));
        // EXPORT_NAME of an unknown export: the server closes (no error reply exists).
        let mut c = Handshake::new(HandshakeConfig::new("nope").go(false)).unwrap();
        let (r, ev) = pump(&mut c, &mut ServerHandshake::new(cfg()));
        assert!(matches!(r, Err(ProtoError::ExportNotFound { .. })), "{r:?}");
        match ev.last() {
            Some(ServerEvent::Close(CloseReason::Refused(why))) => {
                assert!(why.contains("no export named \"nope\"") && why.contains("\"disk0\", \"rw\""), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // GO of an unknown export: a clear refusal.
        let mut c = Handshake::new(HandshakeConfig::new("nope")).unwrap();
        let (r, _) = pump(&mut c, &mut ServerHandshake::new(cfg()));
        match r {
            Err(ProtoError::ExportNotFound { export, message }) => {
                assert_eq!(export, "nope");
                assert!(message.contains("exports: \"disk0\""), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn starttls_is_refused_without_tls_and_a_hook_with_it() {
        let mut c = Handshake::new(HandshakeConfig::new("disk0").tls(true)).unwrap();
        let (r, _) = pump(&mut c, &mut ServerHandshake::new(cfg()));
        assert!(
            matches!(r, Err(ProtoError::OptionRefused { option: OPT_STARTTLS, reply: REP_ERR_POLICY, .. })),
            "{r:?}"
        );
        for mode in [TlsMode::Optional, TlsMode::Required] {
            let mut c = Handshake::new(HandshakeConfig::new("disk0").tls(true)).unwrap();
            let (info, ev) = pump(&mut c, &mut ServerHandshake::new(cfg().tls(mode)));
            assert!(info.unwrap().tls && done(&ev).tls);
            assert_eq!(ev[0], ServerEvent::StartTls);
        }
        // Required: every option before STARTTLS is refused; EXPORT_NAME closes.
        let mut input = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        for opt in [OPT_LIST, OPT_GO, OPT_STRUCTURED_REPLY, 99] {
            input.extend(encode_option(opt, &[]).unwrap());
        }
        input.extend(encode_option(OPT_EXPORT_NAME, b"disk0").unwrap());
        let (sent, ev) = raw(cfg().tls(TlsMode::Required), &input);
        let got = replies(&sent[18..]);
        assert_eq!(got.iter().map(|r| r.reply).collect::<Vec<_>>(), [REP_ERR_TLS_REQD; 4]);
        assert!(matches!(ev.last(), Some(ServerEvent::Close(CloseReason::Refused(_)))));
        // STARTTLS twice; options before TLS are forgotten after it.
        let mut input = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        input.extend(encode_option(OPT_STRUCTURED_REPLY, &[]).unwrap());
        input.extend(encode_option(OPT_STARTTLS, &[]).unwrap());
        input.extend(encode_option(OPT_STARTTLS, &[]).unwrap());
        input.extend(encode_option(OPT_STARTTLS, b"x").unwrap());
        input.extend(encode_option(OPT_GO, &go_data("disk0", &[])).unwrap());
        let (sent, ev) = raw(cfg().tls(TlsMode::Optional), &input);
        let r: Vec<u32> = replies(&sent[18..]).iter().map(|r| r.reply).collect();
        assert_eq!(r, [REP_ACK, REP_ACK, REP_ERR_INVALID, REP_ERR_INVALID, REP_INFO, REP_INFO, REP_ACK]);
        let n = done(&ev);
        assert!(n.tls && !n.structured, "structured replies negotiated before TLS do not survive it");
    }

    /// Feeds raw client bytes to a server handshake until they run out:
    /// what the server sent and its events.
    fn raw(cfg: ServerConfig, input: &[u8]) -> (Vec<u8>, Vec<ServerEvent>) {
        let mut s = ServerHandshake::new(cfg);
        let (mut sent, mut ev, mut pos) = (Vec::new(), Vec::new(), 0);
        loop {
            sent.extend(s.poll_transmit().unwrap_or_default());
            while let Some(e) = s.poll_event() {
                if e == ServerEvent::StartTls {
                    s.tls_established();
                }
                ev.push(e);
            }
            sent.extend(s.poll_transmit().unwrap_or_default());
            if s.is_finished() {
                return (sent, ev);
            }
            match s.handle_input(&input[pos..]).unwrap() {
                Progress::Consumed(n) if n > 0 => pos += n,
                _ => return (sent, ev),
            }
        }
    }

    fn replies(mut b: &[u8]) -> Vec<OptionReply> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (r, n) = decode_option_reply(b, "test").unwrap().unwrap();
            out.push(r);
            b = &b[n..];
        }
        out
    }

    fn go_data(name: &str, info: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(info.len() as u16).to_be_bytes());
        for i in info {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    /// Sends options one after another; the replies to each.
    fn options(cfg: ServerConfig, opts: &[(u32, Vec<u8>)]) -> (Vec<Vec<OptionReply>>, Vec<ServerEvent>) {
        let mut input = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        for (o, d) in opts {
            input.extend(encode_option(*o, d).unwrap());
        }
        let (sent, ev) = raw(cfg, &input);
        let all = replies(&sent[18..]);
        let mut per: Vec<Vec<OptionReply>> = Vec::new();
        let mut cur = Vec::new();
        for r in all {
            let last = r.reply == REP_ACK || r.reply & REP_FLAG_ERROR != 0;
            cur.push(r);
            if last {
                per.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            per.push(cur);
        }
        (per, ev)
    }

    fn types(r: &[OptionReply]) -> Vec<u32> {
        r.iter().map(|r| r.reply).collect()
    }

    #[test]
    fn list_info_abort_structured_and_unknown_options() {
        let (r, ev) = options(
            cfg(),
            &[
                (OPT_LIST, vec![]),
                (OPT_LIST, vec![1]),
                (OPT_INFO, go_data("disk0", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE])),
                (OPT_INFO, go_data("rw", &[INFO_DESCRIPTION])),
                (OPT_INFO, b"\0\0\0\x09disk0\0\0".to_vec()),
                (OPT_INFO, go_data("x", &[])),
                (OPT_STRUCTURED_REPLY, vec![]),
                (OPT_STRUCTURED_REPLY, vec![]),
                (OPT_STRUCTURED_REPLY, vec![0]),
                (OPT_EXTENDED_HEADERS, vec![]),
                (4, vec![1, 2, 3]),
                (0xdead_beef, vec![]),
                (OPT_ABORT, b"ignored".to_vec()),
            ],
        );
        assert_eq!(types(&r[0]), [REP_SERVER, REP_SERVER, REP_SERVER, REP_ACK]);
        assert_eq!(&r[0][0].data[..4], &5u32.to_be_bytes());
        assert_eq!(&r[0][0].data[4..], b"disk0first disk");
        assert_eq!(types(&r[1]), [REP_ERR_INVALID]);
        assert_eq!(types(&r[2]), [REP_INFO, REP_INFO, REP_INFO, REP_INFO, REP_ACK]);
        assert_eq!(be16(&r[2][0].data, 0), INFO_EXPORT);
        assert_eq!(&r[2][1].data[2..], b"disk0");
        assert_eq!(&r[2][2].data[2..], b"first disk");
        assert_eq!(r[2][3].data.len(), 14);
        assert_eq!(types(&r[3]), [REP_INFO, REP_INFO, REP_ACK], "no description to give");
        assert_eq!(types(&r[4]), [REP_ERR_INVALID], "a name length past the data");
        assert_eq!(types(&r[5]), [REP_ERR_UNKNOWN]);
        assert_eq!(types(&r[6]), [REP_ACK]);
        assert_eq!(types(&r[7]), [REP_ERR_INVALID], "structured replies twice");
        assert_eq!(types(&r[8]), [REP_ERR_INVALID], "with data");
        for unsup in &r[9..12] {
            assert_eq!(types(unsup), [REP_ERR_UNSUP]);
            assert!(String::from_utf8_lossy(&unsup[0].data).contains("not supported"));
        }
        assert_eq!(types(&r[12]), [REP_ACK]);
        assert_eq!(ev, [ServerEvent::Close(CloseReason::Abort)]);
    }

    #[test]
    fn meta_contexts_select_base_allocation_for_the_export_entered() {
        let sr = (OPT_STRUCTURED_REPLY, vec![]);
        let (r, _) = options(
            cfg(),
            &[
                (OPT_LIST_META_CONTEXT, meta_data("disk0", &[])),
                sr.clone(),
                (OPT_LIST_META_CONTEXT, meta_data("disk0", &[])),
                (OPT_LIST_META_CONTEXT, meta_data("disk0", &["base:"])),
                (OPT_LIST_META_CONTEXT, meta_data("disk0", &["qemu:dirty-bitmap:x", "base:nope"])),
                (OPT_LIST_META_CONTEXT, meta_data("disk0", &["nocolon"])),
                (OPT_LIST_META_CONTEXT, meta_data("nope", &[])),
                (OPT_LIST_META_CONTEXT, meta_data("nobs", &[])),
                (OPT_LIST_META_CONTEXT, b"\0\0\0\x05disk0\0\0\0\x02".to_vec()),
                (OPT_SET_META_CONTEXT, meta_data("disk0", &["base:", "base:allocation"])),
            ],
        );
        assert_eq!(types(&r[0]), [REP_ERR_INVALID], "before structured replies");
        assert_eq!(types(&r[2]), [REP_META_CONTEXT, REP_ACK]);
        assert_eq!(&r[2][0].data[..4], &0u32.to_be_bytes());
        assert_eq!(&r[2][0].data[4..], b"base:allocation");
        assert_eq!(types(&r[3]), [REP_META_CONTEXT, REP_ACK]);
        assert_eq!(types(&r[4]), [REP_ACK], "unknown namespaces and leaves are ignored");
        assert_eq!(types(&r[5]), [REP_ERR_INVALID]);
        assert_eq!(types(&r[6]), [REP_ERR_UNKNOWN]);
        assert_eq!(types(&r[7]), [REP_ACK], "an export without block status");
        assert_eq!(types(&r[8]), [REP_ERR_INVALID], "two queries announced, none sent");
        assert_eq!(types(&r[9]), [REP_META_CONTEXT, REP_ACK]);
        assert_eq!(&r[9][0].data[..4], &ALLOCATION_CONTEXT_ID.to_be_bytes());
        // Selected for disk0, entered disk0: block status; entered rw: none.
        for (export, want) in [("disk0", Some(ALLOCATION_CONTEXT_ID)), ("rw", None)] {
            let (_, ev) = options(
                cfg(),
                &[
                    sr.clone(),
                    (OPT_SET_META_CONTEXT, meta_data("disk0", &["base:allocation"])),
                    (OPT_GO, go_data(export, &[])),
                ],
            );
            assert_eq!(done(&ev).allocation_context, want, "{export}");
        }
        // A later SET that selects nothing (or fails) replaces the selection.
        for last in [meta_data("disk0", &[]), b"junk".to_vec()] {
            let (_, ev) = options(
                cfg(),
                &[
                    sr.clone(),
                    (OPT_SET_META_CONTEXT, meta_data("disk0", &["base:allocation"])),
                    (OPT_SET_META_CONTEXT, last),
                    (OPT_GO, go_data("disk0", &[])),
                ],
            );
            assert_eq!(done(&ev).allocation_context, None);
        }
    }

    #[test]
    fn oversized_options_are_read_past_and_bad_input_closes() {
        let mut input = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        let big = vec![7u8; MAX_OPTION_DATA as usize * 2 + 5];
        input.extend(encode_option(OPT_LIST, &big).unwrap());
        input.extend(encode_option(OPT_LIST, &[]).unwrap());
        let mut s = ServerHandshake::new(cfg());
        let _ = s.poll_transmit();
        let mut pos = 0;
        let mut asks = Vec::new();
        while pos < input.len() {
            match s.handle_input(&input[pos..]).unwrap() {
                Progress::Consumed(n) => pos += n,
                Progress::NeedMore(n) => panic!("needs {n} with {} buffered", input.len() - pos),
            }
            asks.push(pos);
            // Never asks for more than 64 KiB at a time.
            if let Progress::NeedMore(n) = s.handle_input(&[]).unwrap() {
                assert!(n <= MAX_OPTION_DATA as usize + OPTION_HEADER_LEN);
            }
        }
        let r = replies(&s.poll_transmit().unwrap());
        assert_eq!(types(&r), [REP_ERR_TOO_BIG, REP_SERVER, REP_SERVER, REP_SERVER, REP_ACK]);
        // Unknown client flags, a bad option magic, a huge EXPORT_NAME: protocol errors.
        let mut s = ServerHandshake::new(cfg());
        assert!(s.handle_input(&8u32.to_be_bytes()).is_err());
        assert!(s.is_finished());
        let mut s = ServerHandshake::new(cfg());
        s.handle_input(&1u32.to_be_bytes()).unwrap();
        assert!(s.handle_input(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap_err().to_string().contains("IHAVEOPT"));
        let mut s = ServerHandshake::new(cfg());
        s.handle_input(&1u32.to_be_bytes()).unwrap();
        let mut h = encode_option(OPT_EXPORT_NAME, &[]).unwrap();
        h[12..16].copy_from_slice(&(1u32 << 20).to_be_bytes());
        assert!(s.handle_input(&h).is_err());
        // Shutting down: options refused, ABORT still acknowledged.
        let mut s = ServerHandshake::new(cfg());
        let _ = s.poll_transmit();
        s.shutdown();
        let mut input = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        input.extend(encode_option(OPT_GO, &go_data("disk0", &[])).unwrap());
        input.extend(encode_option(OPT_ABORT, &[]).unwrap());
        let mut pos = 0;
        while let Ok(Progress::Consumed(n)) = s.handle_input(&input[pos..]) {
            if n == 0 {
                break;
            }
            pos += n;
        }
        assert_eq!(types(&replies(&s.poll_transmit().unwrap())), [REP_ERR_SHUTDOWN, REP_ACK]);
        // A non-fixed-newstyle client is refused when TLS is required.
        let mut s = ServerHandshake::new(cfg().tls(TlsMode::Required));
        assert!(s.handle_input(&0u32.to_be_bytes()).is_err());
    }

    // --- transmission -------------------------------------------------------

    /// The fake export: byte `o` is `o % 251`, every odd 4 KiB block a hole.
    fn expect(offset: u64, len: u32) -> Vec<u8> {
        (offset..offset + u64::from(len)).map(|o| if (o / 4096) % 2 == 1 { 0 } else { (o % 251) as u8 }).collect()
    }

    fn negotiated(structured: bool, writable: bool, ctx: bool) -> Negotiated {
        let e = ExportConfig::read_only("d", 1 << 20).writable(writable).max_request(1 << 16);
        Negotiated {
            export: 0,
            size: e.size,
            flags: e.transmission_flags(structured),
            structured,
            allocation_context: ctx.then_some(ALLOCATION_CONTEXT_ID),
            tls: false,
            via_go: true,
            max_request: e.max_request,
        }
    }

    /// Serves one request against the fake export: what the server sent.
    fn serve_one(tx: &mut ServerTransmission, req: &[u8]) -> Vec<u8> {
        let mut sent = Vec::new();
        match tx.handle_input(req).unwrap() {
            ServerStep::Command { consumed, command: Command::Read { handle, offset, len, df } } => {
                assert_eq!(consumed, REQUEST_LEN);
                let mut data: Vec<u8> = (offset..offset + u64::from(len)).map(|o| (o % 251) as u8).collect();
                let mut holes = Vec::new();
                for b in offset / 4096..(offset + u64::from(len)).div_ceil(4096) {
                    if b % 2 == 1 {
                        let r = (b * 4096).max(offset)..((b + 1) * 4096).min(offset + u64::from(len));
                        data[(r.start - offset) as usize..(r.end - offset) as usize].fill(0);
                        holes.push(r);
                    }
                }
                for p in tx.read_reply(handle, offset, &data, &holes, df) {
                    sent.extend(p.header);
                    sent.extend_from_slice(p.data);
                }
            }
            ServerStep::Command { command: Command::BlockStatus { handle, len, req_one, .. }, .. } => {
                let ext = [
                    Extent { len: 4096, flags: 0 },
                    Extent { len: 4096, flags: 0 },
                    Extent { len: 0, flags: 1 },
                    Extent { len: 8192, flags: STATE_HOLE | STATE_ZERO },
                    Extent { len: 1 << 20, flags: 0 },
                ];
                tx.block_status_reply(handle, len, req_one, &ext);
            }
            ServerStep::Command { command, .. } => match command {
                Command::Write { handle, .. }
                | Command::Flush { handle }
                | Command::Trim { handle, .. }
                | Command::WriteZeroes { handle, .. } => tx.reply_ok(handle),
                c => panic!("{c:?}"),
            },
            ServerStep::Consumed(n) | ServerStep::Skip { consumed: n, .. } => assert_eq!(n, REQUEST_LEN),
            s => panic!("{s:?}"),
        }
        sent.extend(tx.poll_transmit().unwrap_or_default());
        sent
    }

    /// The client half's reads against the server half: bit-exact, holes as holes.
    #[test]
    fn client_half_reads_from_server_half_simple_and_structured() {
        for structured in [true, false] {
            let n = negotiated(structured, false, false);
            let info = ExportInfo {
                size: n.size,
                flags: n.flags,
                block_size: None,
                structured_replies: structured,
                tls: false,
                via_go: true,
            };
            let mut tx = ServerTransmission::new(n);
            let mut client = Transmission::new(&info);
            for (off, len) in [(0u64, 4096u32), (4000, 200), (100, 65536), ((1 << 20) - 10, 10), (8192, 4096)] {
                let (handle, req) = client.read_request(off, len).unwrap();
                let sent = serve_one(&mut tx, &req);
                let (data, zeroes) = client_read(&mut client, &sent, len);
                assert_eq!(data, expect(off, len), "{off}+{len}");
                if structured {
                    let holes_expected = (off / 4096..(off + u64::from(len)).div_ceil(4096)).any(|b| b % 2 == 1);
                    assert_eq!(zeroes > 0, holes_expected, "{off}+{len}: holes are sent as holes");
                }
                let _ = handle;
            }
        }
    }

    /// Decodes one reply with the client half: (data, bytes that came as hole chunks).
    fn client_read(client: &mut Transmission, mut b: &[u8], len: u32) -> (Vec<u8>, u32) {
        let mut data = vec![0xEE; len as usize];
        let mut zeroes = 0;
        loop {
            match client.handle_input(b).unwrap() {
                Step::Payload { consumed, at, len, .. } => {
                    data[at as usize..][..len as usize].copy_from_slice(&b[consumed..consumed + len as usize]);
                    b = &b[consumed + len as usize..];
                    client.payload_done();
                }
                Step::Zeroes { consumed, at, len, .. } => {
                    data[at as usize..][..len as usize].fill(0);
                    zeroes += len;
                    b = &b[consumed..];
                }
                Step::Consumed(n) => b = &b[n..],
                Step::Finished { consumed, result, .. } => {
                    result.unwrap();
                    assert_eq!(consumed, b.len(), "nothing after the last chunk");
                    return (data, zeroes);
                }
                Step::NeedMore(n) => panic!("needs {n}"),
            }
        }
    }

    #[test]
    fn df_sends_one_data_chunk_with_the_zeroes() {
        let mut tx = ServerTransmission::new(negotiated(true, false, false));
        let sent = serve_one(&mut tx, &encode_request(CMD_FLAG_DF, CMD_READ, 9, 0, 16384));
        assert_eq!(sent.len(), CHUNK_HEADER_LEN + 8 + 16384);
        assert_eq!(be16(&sent, 4), REPLY_FLAG_DONE);
        assert_eq!(be16(&sent, 6), REPLY_TYPE_OFFSET_DATA);
        assert_eq!(&sent[28..], &expect(0, 16384)[..]);
    }

    /// The error a server sent for one request: (errno, message) from a
    /// structured error chunk or a simple reply.
    fn error_of(sent: &[u8]) -> (u32, String) {
        if be32(sent, 0) == proto::SIMPLE_REPLY_MAGIC {
            assert_eq!(sent.len(), 16);
            return (be32(sent, 4), String::new());
        }
        assert_eq!(be16(sent, 6), proto::REPLY_TYPE_ERROR);
        assert_eq!(be16(sent, 4), REPLY_FLAG_DONE);
        let mlen = usize::from(be16(sent, 24));
        (be32(sent, 20), String::from_utf8(sent[26..26 + mlen].to_vec()).unwrap())
    }

    #[test]
    fn every_refusal_gets_its_nbd_error_and_the_connection_goes_on() {
        let size = 1u64 << 20;
        let cases: Vec<(bool, u16, u16, u64, u32, u32, &str)> = vec![
            // (writable, flags, command, offset, len, errno, message part)
            (false, 0, CMD_READ, size - 10, 11, EINVAL, "past the end"),
            (false, 0, CMD_READ, u64::MAX, 1, EINVAL, "past the end"),
            (false, 0, CMD_READ, 0, (1 << 16) + 1, EINVAL, "at most 65536"),
            (false, 0, CMD_READ, 0, 0, EINVAL, "of 0 bytes"),
            (false, CMD_FLAG_REQ_ONE, CMD_READ, 0, 512, EINVAL, "not valid for NBD_CMD_READ"),
            (false, CMD_FLAG_FUA, CMD_READ, 0, 512, EINVAL, "not valid"),
            (false, 0, CMD_WRITE, 0, 512, EPERM, "read-only"),
            (false, 0, CMD_TRIM, 0, 512, EPERM, "read-only"),
            (false, 0, CMD_WRITE_ZEROES, 0, 512, EPERM, "read-only"),
            (true, 0, CMD_WRITE, size - 1, 2, ENOSPC, "past the end"),
            (true, 0, CMD_WRITE_ZEROES, size, 1, ENOSPC, "past the end"),
            (true, 0, CMD_TRIM, size, 1, EINVAL, "past the end"),
            (true, 0, CMD_WRITE, 0, (1 << 16) + 1, EINVAL, "at most"),
            (true, CMD_FLAG_DF, CMD_WRITE, 0, 512, EINVAL, "not valid"),
            (true, 0, CMD_FLUSH, 1, 0, EINVAL, "nonzero offset"),
            (false, 0, CMD_BLOCK_STATUS, 0, 512, EINVAL, "metadata context"),
            (false, 0, CMD_CACHE, 0, 512, EINVAL, "not supported"),
            (false, 0, 77, 0, 0, EINVAL, "unknown command 77"),
        ];
        for structured in [true, false] {
            for &(writable, flags, cmd, off, len, errno, msg) in &cases {
                let mut tx = ServerTransmission::new(negotiated(structured, writable, false));
                let req = encode_request(flags, cmd, 42, off, len);
                let step = tx.handle_input(&req).unwrap();
                if cmd == CMD_WRITE {
                    assert_eq!(step, ServerStep::Skip { consumed: REQUEST_LEN, len }, "the payload is read past");
                } else {
                    assert_eq!(step, ServerStep::Consumed(REQUEST_LEN));
                }
                let sent = tx.poll_transmit().unwrap();
                assert_eq!(be64(&sent, 8), 42, "the handle is echoed");
                let (e, m) = error_of(&sent);
                assert_eq!(e, errno, "{} {m}", proto::command_name(cmd));
                if structured {
                    assert!(m.contains(msg), "{m:?} lacks {msg:?}");
                }
                // The connection goes on.
                let ok = serve_one(&mut tx, &encode_request(0, CMD_READ, 43, 0, 512));
                assert!(!ok.is_empty());
            }
        }
        // A read-only flush succeeds at once; DISC ends transmission; input after it is refused.
        let mut tx = ServerTransmission::new(negotiated(true, false, false));
        assert_eq!(tx.handle_input(&encode_request(0, CMD_FLUSH, 5, 0, 0)).unwrap(), ServerStep::Consumed(28));
        assert_eq!(tx.poll_transmit().unwrap(), proto::encode_simple_reply(0, 5));
        let step = tx.handle_input(&encode_request(0, CMD_DISC, 0, 0, 0)).unwrap();
        assert_eq!(step, ServerStep::Command { consumed: 28, command: Command::Disconnect });
        assert!(tx.is_disconnected() && tx.handle_input(&[0; 28]).is_err());
        // A bad magic cannot be followed: an error; a partial request asks for the rest.
        let mut tx = ServerTransmission::new(negotiated(true, false, false));
        assert!(tx.handle_input(b"\x01\x02\x03\x04").is_err());
        let mut tx = ServerTransmission::new(negotiated(true, false, false));
        assert_eq!(tx.handle_input(&encode_request(0, CMD_READ, 1, 0, 1)[..20]).unwrap(), ServerStep::NeedMore(28));
        // A command that failed in the export: structured error with the message.
        tx.reply_error(7, EIO, "chunk 1a2b is damaged");
        assert_eq!(error_of(&tx.poll_transmit().unwrap()), (EIO, "chunk 1a2b is damaged".into()));
    }

    #[test]
    fn writable_commands_reach_the_shell() {
        let mut tx = ServerTransmission::new(negotiated(true, true, false));
        let w = tx.handle_input(&encode_request(CMD_FLAG_FUA, CMD_WRITE, 1, 4096, 512)).unwrap();
        assert_eq!(
            w,
            ServerStep::Command {
                consumed: 28,
                command: Command::Write { handle: 1, offset: 4096, len: 512, fua: true }
            }
        );
        let z = tx.handle_input(&encode_request(CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 2, 0, 8192)).unwrap();
        assert!(matches!(
            z,
            ServerStep::Command { command: Command::WriteZeroes { no_hole: true, fua: false, .. }, .. }
        ));
        let t = tx.handle_input(&encode_request(0, CMD_TRIM, 3, 0, 8192)).unwrap();
        assert!(matches!(t, ServerStep::Command { command: Command::Trim { .. }, .. }));
        let f = tx.handle_input(&encode_request(CMD_FLAG_FUA, CMD_FLUSH, 4, 0, 0)).unwrap();
        assert!(matches!(f, ServerStep::Command { command: Command::Flush { handle: 4 }, .. }));
        tx.reply_ok(1);
        assert_eq!(tx.poll_transmit().unwrap(), proto::encode_simple_reply(0, 1));
    }

    #[test]
    fn block_status_replies_merge_clip_and_honour_req_one() {
        let mut tx = ServerTransmission::new(negotiated(true, false, true));
        // 4096+4096 data merge; the empty extent is dropped; the hole; data clipped to the request.
        let sent = serve_one(&mut tx, &encode_request(0, CMD_BLOCK_STATUS, 3, 0, 20000));
        assert_eq!(be16(&sent, 6), REPLY_TYPE_BLOCK_STATUS);
        assert_eq!(be16(&sent, 4), REPLY_FLAG_DONE);
        assert_eq!(be32(&sent, 20), ALLOCATION_CONTEXT_ID);
        let d: Vec<(u32, u32)> = sent[24..].chunks(8).map(|c| (be32(c, 0), be32(c, 4))).collect();
        assert_eq!(d, [(8192, 0), (8192, STATE_HOLE | STATE_ZERO), (20000 - 16384, 0)]);
        let sent = serve_one(&mut tx, &encode_request(CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 4, 0, 6000));
        assert_eq!(&sent[24..], [&6000u32.to_be_bytes()[..], &0u32.to_be_bytes()[..]].concat());
        // Nothing known: one extent of status 0 over the request.
        tx.block_status_reply(5, 777, false, &[]);
        let sent = tx.poll_transmit().unwrap();
        assert_eq!((be32(&sent, 24), be32(&sent, 28)), (777, 0));
        // At most MAX_DESCRIPTORS.
        let many: Vec<Extent> = (0..10_000).map(|k| Extent { len: 512, flags: k % 2 }).collect();
        tx.block_status_reply(6, u32::MAX, false, &many);
        let sent = tx.poll_transmit().unwrap();
        assert_eq!(be32(&sent, 16) as usize, 4 + 8 * MAX_DESCRIPTORS);
    }

    fn be64(b: &[u8], at: usize) -> u64 {
        proto::be64(b, at)
    }

    /// A client stream that exercises every option and command, for the
    /// replay and the mutation smoke test.
    fn client_stream() -> Vec<u8> {
        let mut s = (FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).to_be_bytes().to_vec();
        for (o, d) in [
            (OPT_LIST, vec![]),
            (OPT_STARTTLS, vec![]),
            (OPT_STRUCTURED_REPLY, vec![]),
            (OPT_LIST_META_CONTEXT, meta_data("rw", &["base:"])),
            (OPT_SET_META_CONTEXT, meta_data("rw", &["base:allocation"])),
            (OPT_INFO, go_data("rw", &[INFO_NAME, INFO_BLOCK_SIZE, INFO_DESCRIPTION])),
            (OPT_GO, go_data("rw", &[INFO_BLOCK_SIZE])),
        ] {
            s.extend(encode_option(o, &d).unwrap());
        }
        s.extend(encode_request(0, CMD_READ, 1, 0, 12288));
        s.extend(encode_request(CMD_FLAG_DF, CMD_READ, 2, 4000, 8192));
        s.extend(encode_request(CMD_FLAG_FUA, CMD_WRITE, 3, 512, 16));
        s.extend([0xAB; 16]);
        s.extend(encode_request(0, CMD_WRITE_ZEROES, 4, 0, 4096));
        s.extend(encode_request(0, CMD_TRIM, 5, 4096, 4096));
        s.extend(encode_request(0, CMD_FLUSH, 6, 0, 0));
        s.extend(encode_request(0, CMD_BLOCK_STATUS, 7, 0, 65536));
        s.extend(encode_request(CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 8, 100, 100));
        s.extend(encode_request(0, CMD_READ, 9, 60000, 9999));
        s.extend(encode_request(0, CMD_WRITE, 10, 65000, 1000));
        s.extend([1; 1000]);
        s.extend(encode_request(0, CMD_DISC, 11, 0, 0));
        s
    }

    #[test]
    fn replayed_client_stream_reaches_every_command() {
        let r = replay_server(fuzz_config(TlsMode::Required), &client_stream()).unwrap();
        let n = r.negotiated.unwrap();
        assert!(n.tls && n.structured && n.allocation_context.is_some());
        let kinds: Vec<&str> = r
            .commands
            .iter()
            .map(|c| match c {
                Command::Read { .. } => "read",
                Command::Write { .. } => "write",
                Command::WriteZeroes { .. } => "zero",
                Command::Trim { .. } => "trim",
                Command::Flush { .. } => "flush",
                Command::BlockStatus { .. } => "status",
                Command::Disconnect => "disc",
            })
            .collect();
        assert_eq!(kinds, ["read", "read", "write", "zero", "trim", "flush", "status", "status", "disc"]);
        // The read past the end and the write past the end were refused, and the session went on.
        assert!(r.closed.is_none());
    }

    /// Deterministic mutations of client streams through the whole server
    /// session (as the client half's smoke test does with server streams);
    /// about three seconds. A panicking input is saved and named.
    #[test]
    fn fuzz_smoke_client_streams() {
        const SEED: u64 = 0x6e62_6420_7372_7672;
        let start = std::time::Instant::now();
        let mut rng = alike_testing::Rng::new(SEED);
        let mut corpus = vec![client_stream()];
        let mut go_only = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        go_only.extend(encode_option(OPT_GO, &go_data("", &[])).unwrap());
        go_only.extend(encode_request(0, CMD_READ, 1, 0, 4096));
        corpus.push(go_only);
        let interesting: [u32; 10] = [0, 1, 8, 9, 12, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 4096, 1 << 25];
        let mut runs = 0u64;
        while runs < 300_000 && start.elapsed() < std::time::Duration::from_secs(3) {
            let mut d = corpus[(runs % corpus.len() as u64) as usize].clone();
            for _ in 0..1 + rng.below(4) {
                if d.is_empty() {
                    break;
                }
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
            }
            if std::panic::catch_unwind(|| fuzz_server_one(&d)).is_err() {
                let path = std::env::temp_dir().join(format!("nbd-server-fuzz-crash-{SEED:x}-{runs}.bin"));
                let _ = std::fs::write(&path, &d);
                panic!("fuzz_server_one panicked on input {runs} of seed {SEED:#x}; saved to {}", path.display());
            }
            runs += 1;
        }
        eprintln!("nbd server fuzz smoke: {runs} mutated streams in {:?}", start.elapsed());
        assert!(runs >= 1000);
        fuzz_server_one(&[]);
    }
}
