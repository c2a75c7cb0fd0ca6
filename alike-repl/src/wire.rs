//! The replication protocol's bytes: constants, message structs, encoders
//! and total decoders. `docs/replication-protocol.md` is the specification
//! and this module follows it; `testdata/golden-repl-v1.json` pins both.
//!
//! All integers are little-endian, as in the store format (the record
//! length too, unlike the framing the Noise specification suggests).
//!
//! Layers, from the socket up:
//! 1. the **preamble**: 12 clear bytes each way ([`MAGIC`], version);
//! 2. **records**: a `u16` length, then that many bytes of one Noise message
//!    — the two handshake messages, then transport messages that carry
//!    ciphertext of at most [`MAX_RECORD_PLAINTEXT`] bytes;
//! 3. the **message stream**: the plaintext of the transport records,
//!    concatenated, is a sequence of messages (`type: u8`, `len: u32`, a
//!    body of `len` bytes). Record boundaries mean nothing to it: a message
//!    may span many records, and a record may carry many messages.
//!
//! Every decoder here answers "need more" with the exact total it needs, a
//! message, or an [`Error::Violation`] naming what was wrong; none panics on
//! any input, and none waits for (so none buffers) more than the largest
//! body its message type may have ([`max_body`]).

use crate::error::{Error, hex};

/// The first 8 bytes each end sends: `0x89 'A' 'L' 'K' 'R' 'P' '\r' '\n'`,
/// the store's magic family (`docs/format.md` §2) with kind `RP`. Do not edit.
pub const MAGIC: [u8; 8] = [0x89, b'A', b'L', b'K', b'R', b'P', b'\r', b'\n'];
/// The protocol version this code speaks.
pub const VERSION: u32 = 1;
/// The protocol's versioned name, `alike-repl/1`.
pub const PROTOCOL_ID: &str = "alike-repl/1";
/// Length of the preamble: [`MAGIC`] and the version (`u32`).
pub const PREAMBLE_LEN: usize = 12;
/// The Noise protocol name: no static keys, the job secret as PSK at position 0.
pub const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Start of the Noise prologue; the two preambles follow (initiator's first).
pub const PROLOGUE_LABEL: &[u8] = b"alike-repl/1 prologue";
/// Length of a record's header (the `u16` length of its Noise message).
pub const RECORD_HEADER_LEN: usize = 2;
/// The longest Noise message, so the longest record body.
pub const MAX_RECORD: usize = 65535;
/// The AEAD tag every encrypted Noise payload carries.
pub const TAG_LEN: usize = 16;
/// The most plaintext one transport record carries.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD - TAG_LEN;
/// Length of each of the two handshake messages: an ephemeral public key
/// (32) and the tag of an empty payload (16).
pub const HANDSHAKE_MESSAGE_LEN: usize = 48;
/// Length of a message header: type (`u8`) and body length (`u32`).
pub const MESSAGE_HEADER_LEN: usize = 5;

/// The longest job id, in bytes of UTF-8.
pub const MAX_JOB_ID: usize = 255;
/// The longest replica point id.
pub const MAX_POINT_ID: usize = 255;
/// The most extents one offer may carry, whatever the ends agree.
pub const MAX_BATCH: u32 = 4096;
/// The most ranges one offer may carry.
pub const MAX_RANGES: u32 = 4096;
/// The most outstanding batches, whatever the ends agree.
pub const MAX_WINDOW: u32 = 1024;
/// The least an end may set as its largest data frame.
pub const MIN_FRAME: u32 = 64 * 1024;
/// The largest data frame (the raw bytes of its extents), whatever the ends
/// agree; so also the longest extent.
pub const MAX_FRAME: u32 = 8 * 1024 * 1024;
/// The most extents one data frame may carry.
pub const MAX_FRAME_EXTENTS: u32 = 4096;
/// The longest metadata body (after its kind).
pub const MAX_META: usize = 1024 * 1024;
/// The longest error text.
pub const MAX_ERROR_TEXT: usize = 1024;
/// The most disks one session may begin.
pub const MAX_DISKS: usize = 1024;
/// The grid of content-defined chunks: every extent and range starts on it.
pub const CDC_GRAIN: u32 = 4096;

/// Size of an extent in an offer: offset (`u64`), length (`u32`), id (32).
pub const OFFER_EXTENT_LEN: usize = 44;
/// Size of a range in an offer: start (`u64`), end (`u64`).
pub const OFFER_RANGE_LEN: usize = 16;
/// Size of an extent in a data frame: offset (`u64`), length (`u32`).
pub const DATA_EXTENT_LEN: usize = 12;

/// Message type: hello, the first message each way.
pub const MSG_HELLO: u8 = 0x01;
/// Message type: opaque metadata from the sender (for instance the VM's configuration).
pub const MSG_META: u8 = 0x02;
/// Message type: a disk begins.
pub const MSG_DISK_BEGIN: u8 = 0x10;
/// Message type: the sender's extents for a changed range.
pub const MSG_OFFER: u8 = 0x11;
/// Message type: which extents of an offer the replica lacks.
pub const MSG_NEED: u8 = 0x12;
/// Message type: compressed bytes of needed extents.
pub const MSG_DATA: u8 = 0x13;
/// Message type: a disk ends, with its digest.
pub const MSG_DISK_END: u8 = 0x14;
/// Message type: the sender asks the receiver to commit the point.
pub const MSG_COMMIT: u8 = 0x20;
/// Message type: the receiver committed the point.
pub const MSG_ACK: u8 = 0x21;
/// Message type: the end that sends it has failed.
pub const MSG_ERROR: u8 = 0x7f;

/// Error code: the peer broke the protocol.
pub const ERR_PROTOCOL: u16 = 1;
/// Error code: a record failed authentication (corrupted, replayed, injected).
pub const ERR_INTEGRITY: u16 = 2;
/// Error code: the ends run different jobs.
pub const ERR_JOB: u16 = 3;
/// Error code: both ends play the same role.
pub const ERR_ROLE: u16 = 4;
/// Error code: a disk's digest differs from the replica's.
pub const ERR_DIGEST: u16 = 5;
/// Error code: data did not hash to its extent's id.
pub const ERR_EXTENT_ID: u16 = 6;
/// Error code: the engine cancelled the run.
pub const ERR_CANCELLED: u16 = 7;
/// Error code: the engine failed (a read of the source, a write of the replica…).
pub const ERR_ENGINE: u16 = 8;

/// The name of an error code, for messages.
pub fn error_code_name(code: u16) -> &'static str {
    match code {
        ERR_PROTOCOL => "protocol violation",
        ERR_INTEGRITY => "integrity failure",
        ERR_JOB => "job mismatch",
        ERR_ROLE => "role mismatch",
        ERR_DIGEST => "digest mismatch",
        ERR_EXTENT_ID => "extent id mismatch",
        ERR_CANCELLED => "cancelled",
        ERR_ENGINE => "engine failure",
        _ => "unknown error",
    }
}

/// The name of a message type, for messages.
pub fn message_name(ty: u8) -> &'static str {
    match ty {
        MSG_HELLO => "hello",
        MSG_META => "meta",
        MSG_DISK_BEGIN => "disk begin",
        MSG_OFFER => "offer",
        MSG_NEED => "need",
        MSG_DATA => "data",
        MSG_DISK_END => "disk end",
        MSG_COMMIT => "commit",
        MSG_ACK => "ack",
        MSG_ERROR => "error",
        _ => "unknown message",
    }
}

/// Which end of a replication: independent of which end dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Next to the source VM: hashes, offers, sends data.
    Sender,
    /// Next to the replica: answers what it lacks, verifies, commits.
    Receiver,
}

impl Role {
    /// Its byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Role::Sender => 1,
            Role::Receiver => 2,
        }
    }

    /// The other role.
    pub fn peer(self) -> Role {
        match self {
            Role::Sender => Role::Receiver,
            Role::Receiver => Role::Sender,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        })
    }
}

/// How far each end lets the other run ahead; each end sends its own in
/// its hello and both use the smaller of the two values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Extents per offer (1 to [`MAX_BATCH`]).
    pub max_batch: u32,
    /// Batches outstanding at once (1 to [`MAX_WINDOW`]): offered and not
    /// yet answered, or answered and not all of their data sent.
    pub window: u32,
    /// Raw bytes per data frame ([`MIN_FRAME`] to [`MAX_FRAME`]); no
    /// extent may be longer.
    pub max_frame: u32,
}

impl Default for Limits {
    /// 1024 extents per batch, 32 batches outstanding, 8 MiB frames: with
    /// 64 KiB blocks, 2 GiB of disk offered ahead, enough to keep a 1 Gbit/s
    /// link with a 100 ms round trip busy.
    fn default() -> Limits {
        Limits { max_batch: 1024, window: 32, max_frame: MAX_FRAME }
    }
}

impl Limits {
    /// Checks each value against its range.
    ///
    /// # Errors
    /// [`Error::Usage`] naming the value and its range.
    pub fn check(&self) -> Result<(), Error> {
        self.problem().map_or(Ok(()), |p| Err(Error::Usage(p)))
    }

    fn problem(&self) -> Option<String> {
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return Some(format!("max_batch {} is outside 1..={MAX_BATCH}", self.max_batch));
        }
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Some(format!("window {} is outside 1..={MAX_WINDOW}", self.window));
        }
        if !(MIN_FRAME..=MAX_FRAME).contains(&self.max_frame) {
            return Some(format!("max_frame {} is outside {MIN_FRAME}..={MAX_FRAME}", self.max_frame));
        }
        None
    }

    /// The smaller of each value.
    pub fn min(&self, other: &Limits) -> Limits {
        Limits {
            max_batch: self.max_batch.min(other.max_batch),
            window: self.window.min(other.window),
            max_frame: self.max_frame.min(other.max_frame),
        }
    }
}

/// What the receiver tells the sender about its replica, in its hello.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// The key of the replica's extent ids (keyed BLAKE3): the replica is its
    /// own trust domain, and the sender hashes with this key.
    pub id_key: [u8; 32],
    /// The replica's last committed point as the engine names it (empty: none).
    pub base: Vec<u8>,
}

impl std::fmt::Debug for ReplicaInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaInfo").field("id_key", &"…").field("base", &hex(&self.base)).finish()
    }
}

/// The first message each way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version (the one in the preamble).
    pub version: u32,
    /// The role of the end that sends it.
    pub role: Role,
    /// The job id, 1 to [`MAX_JOB_ID`] bytes of UTF-8.
    pub job: String,
    /// The sender's limits.
    pub limits: Limits,
    /// The receiver's replica (present exactly when `role` is receiver).
    pub replica: Option<ReplicaInfo>,
}

/// How a disk is cut into extents; the receiver checks every extent against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Geometry {
    /// Disk-aligned blocks of `block_size` (a power of two, 4 KiB to
    /// [`MAX_FRAME`]); the last block ends at the disk's end.
    Fixed {
        /// Bytes per block.
        block_size: u32,
    },
    /// Content-defined chunks on the 4 KiB grid (`docs/format.md` §5.1): at
    /// most `max` bytes, never across a `window` boundary.
    Cdc {
        /// Smallest chunk a cut makes (shorter ones end at holes, windows or the disk's end).
        min: u32,
        /// Average chunk.
        avg: u32,
        /// Longest chunk.
        max: u32,
        /// Bytes per window (128 MiB in a store).
        window: u64,
    },
}

impl Geometry {
    /// The grid every extent and range starts on.
    pub fn grain(&self) -> u32 {
        match *self {
            Geometry::Fixed { block_size } => block_size,
            Geometry::Cdc { .. } => CDC_GRAIN,
        }
    }

    /// The longest extent it makes.
    pub fn max_extent(&self) -> u32 {
        match *self {
            Geometry::Fixed { block_size } => block_size,
            Geometry::Cdc { max, .. } => max,
        }
    }

    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        match *self {
            Geometry::Fixed { block_size } => {
                if !block_size.is_power_of_two() || !(CDC_GRAIN..=MAX_FRAME).contains(&block_size) {
                    return Some(format!("block size {block_size} is not a power of two in {CDC_GRAIN}..={MAX_FRAME}"));
                }
            }
            Geometry::Cdc { min, avg, max, window } => {
                let on_grid = |v: u64| v % u64::from(CDC_GRAIN) == 0;
                let ordered = CDC_GRAIN <= min && min <= avg && avg <= max && max <= MAX_FRAME;
                if !(ordered && [min, avg, max].iter().all(|&v| on_grid(u64::from(v)))) {
                    return Some(format!(
                        "chunk sizes {min}/{avg}/{max} are not multiples of {CDC_GRAIN} with {CDC_GRAIN} <= min <= avg <= max <= {MAX_FRAME}"
                    ));
                }
                if !on_grid(window) || window < u64::from(max) {
                    return Some(format!("window {window} is not a multiple of {CDC_GRAIN} at least max ({max})"));
                }
            }
        }
        None
    }

    /// What is wrong with extent `offset`, `len` of a disk of `size` bytes, if anything.
    pub fn extent_problem(&self, size: u64, offset: u64, len: u32) -> Option<String> {
        let Some(end) = offset.checked_add(u64::from(len)).filter(|&e| e <= size && len > 0) else {
            return Some(format!("extent at {offset} of {len} bytes is empty or past the disk's end ({size})"));
        };
        if offset % u64::from(self.grain()) != 0 {
            return Some(format!("extent at {offset} is not on the {}-byte grid", self.grain()));
        }
        match *self {
            Geometry::Fixed { block_size } => {
                let want = (size - offset).min(u64::from(block_size));
                if u64::from(len) != want {
                    return Some(format!("block at {offset} has {len} bytes; {want} expected"));
                }
            }
            Geometry::Cdc { max, window, .. } => {
                if len > max {
                    return Some(format!("chunk at {offset} has {len} bytes, more than max ({max})"));
                }
                if len % CDC_GRAIN != 0 && end != size {
                    return Some(format!("chunk at {offset} of {len} bytes does not end on the grid"));
                }
                if offset / window != (end - 1) / window {
                    return Some(format!("chunk at {offset} of {len} bytes crosses a {window}-byte window"));
                }
            }
        }
        None
    }

    fn encoded_len(&self) -> usize {
        match self {
            Geometry::Fixed { .. } => 1 + 4,
            Geometry::Cdc { .. } => 1 + 4 + 4 + 4 + 8,
        }
    }
}

/// A disk as the sender describes it at its begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpec {
    /// The disk's position in the VM (its key in every later message).
    pub disk: u32,
    /// Its size in bytes.
    pub size: u64,
    /// How it is cut.
    pub geometry: Geometry,
}

/// A run of a disk's bytes that holds data, and its id (keyed BLAKE3 of
/// those bytes with the replica's id key).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Byte offset in the disk.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// Id of its bytes.
    pub id: [u8; 32],
}

impl std::fmt::Debug for Extent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extent({}+{} {}…)", self.offset, self.len, hex(&self.id[..6]))
    }
}

impl Extent {
    /// The byte after it (saturating: an extent that would end past
    /// `u64::MAX` is refused by every check before it is used).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(u64::from(self.len))
    }
}

/// The sender's extents for changed ranges of a disk: after the point
/// commits, each range holds exactly the extents inside it and zeroes
/// between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The disk.
    pub disk: u32,
    /// The batch number: 0, 1, 2… across all disks of the session.
    pub batch: u64,
    /// The changed ranges (`start..end`), in order, not overlapping, after
    /// every range of the disk's earlier offers; at least one.
    pub ranges: Vec<std::ops::Range<u64>>,
    /// Their extents, in order, each inside one range, not overlapping.
    pub extents: Vec<Extent>,
}

/// The receiver's answer to an offer: one flag per extent, in the offer's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The batch answered.
    pub batch: u64,
    /// Whether the replica lacks each extent.
    pub needed: Vec<bool>,
}

/// How a data frame's payload is coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The raw bytes.
    None,
    /// One zstd frame, strictly shorter than the raw bytes.
    Zstd,
}

impl Codec {
    /// Its byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
        }
    }
}

/// Bytes of needed extents of one disk: the extents' raw bytes
/// concatenated in the listed order, coded as one payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// The disk.
    pub disk: u32,
    /// The payload's coding.
    pub codec: Codec,
    /// Offset and length of each extent, in payload order.
    pub extents: Vec<(u64, u32)>,
    /// The coded bytes.
    pub payload: Vec<u8>,
}

impl Data {
    /// The length of the raw bytes: the sum of the extents' lengths.
    pub fn raw_len(&self) -> u64 {
        self.extents.iter().map(|&(_, l)| u64::from(l)).sum()
    }
}

/// A disk ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskEnd {
    /// The disk.
    pub disk: u32,
    /// How many extents the sender offered for it.
    pub offered: u64,
    /// How many it sent data for.
    pub sent: u64,
    /// The digest of the whole disk as the sender has it ([`crate::DiskDigest`]).
    pub digest: [u8; 32],
}

/// One message of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// The first message each way.
    Hello(Hello),
    /// Opaque metadata from the sender, of a kind the engines agree on.
    Meta {
        /// What it is.
        kind: u32,
        /// Its bytes (at most [`MAX_META`]).
        bytes: Vec<u8>,
    },
    /// A disk begins.
    DiskBegin(DiskSpec),
    /// Extents of a changed range.
    Offer(Offer),
    /// The answer to an offer.
    Need(Need),
    /// Bytes of needed extents.
    Data(Data),
    /// A disk ends.
    DiskEnd(DiskEnd),
    /// The sender asks to commit: every disk it began has ended.
    Commit {
        /// How many disks the session began.
        disks: u32,
    },
    /// The receiver committed.
    Ack {
        /// The new point's id, as the engine names it.
        point: Vec<u8>,
    },
    /// The sending end has failed.
    Error {
        /// What failed (`ERR_*`).
        code: u16,
        /// Text for people (at most [`MAX_ERROR_TEXT`] bytes of UTF-8).
        message: String,
    },
}

impl Message {
    /// Its type byte.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => MSG_HELLO,
            Message::Meta { .. } => MSG_META,
            Message::DiskBegin(_) => MSG_DISK_BEGIN,
            Message::Offer(_) => MSG_OFFER,
            Message::Need(_) => MSG_NEED,
            Message::Data(_) => MSG_DATA,
            Message::DiskEnd(_) => MSG_DISK_END,
            Message::Commit { .. } => MSG_COMMIT,
            Message::Ack { .. } => MSG_ACK,
            Message::Error { .. } => MSG_ERROR,
        }
    }
}

/// The longest body a message of type `ty` may have; `None` for an unknown type.
pub fn max_body(ty: u8) -> Option<usize> {
    Some(match ty {
        MSG_HELLO => 4 + 1 + 1 + MAX_JOB_ID + 12 + 32 + 1 + MAX_POINT_ID,
        MSG_META => 4 + MAX_META,
        MSG_DISK_BEGIN => 4 + 8 + 1 + 20,
        MSG_OFFER => 4 + 8 + 4 + OFFER_RANGE_LEN * MAX_RANGES as usize + 4 + OFFER_EXTENT_LEN * MAX_BATCH as usize,
        MSG_NEED => 8 + 4 + MAX_BATCH as usize / 8,
        MSG_DATA => 4 + 1 + 4 + DATA_EXTENT_LEN * MAX_FRAME_EXTENTS as usize + MAX_FRAME as usize,
        MSG_DISK_END => 4 + 8 + 8 + 32,
        MSG_COMMIT => 4,
        MSG_ACK => 1 + MAX_POINT_ID,
        MSG_ERROR => 2 + 2 + MAX_ERROR_TEXT,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Encoders

/// The preamble of an end speaking `version`.
pub fn encode_preamble(version: u32) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..8].copy_from_slice(&MAGIC);
    p[8..].copy_from_slice(&version.to_le_bytes());
    p
}

/// Appends `m` (header and body) to `out`.
///
/// The caller keeps every field in its range (the state machines check
/// before they encode); a string or list too long for its length field is
/// cut to what the field can say, so the result is always decodable in length.
pub fn encode_message(m: &Message, out: &mut Vec<u8>) {
    let at = out.len();
    out.push(m.kind());
    out.extend_from_slice(&[0; 4]);
    match m {
        Message::Hello(h) => {
            put_u32(out, h.version);
            out.push(h.role.code());
            put_short(out, h.job.as_bytes(), MAX_JOB_ID);
            put_u32(out, h.limits.max_batch);
            put_u32(out, h.limits.window);
            put_u32(out, h.limits.max_frame);
            if let Some(r) = &h.replica {
                out.extend_from_slice(&r.id_key);
                put_short(out, &r.base, MAX_POINT_ID);
            }
        }
        Message::Meta { kind, bytes } => {
            put_u32(out, *kind);
            out.extend_from_slice(&bytes[..bytes.len().min(MAX_META)]);
        }
        Message::DiskBegin(d) => {
            put_u32(out, d.disk);
            put_u64(out, d.size);
            match d.geometry {
                Geometry::Fixed { block_size } => {
                    out.push(1);
                    put_u32(out, block_size);
                }
                Geometry::Cdc { min, avg, max, window } => {
                    out.push(2);
                    put_u32(out, min);
                    put_u32(out, avg);
                    put_u32(out, max);
                    put_u64(out, window);
                }
            }
        }
        Message::Offer(o) => {
            put_u32(out, o.disk);
            put_u64(out, o.batch);
            let r = o.ranges.len().min(MAX_RANGES as usize);
            put_u32(out, r as u32);
            for range in &o.ranges[..r] {
                put_u64(out, range.start);
                put_u64(out, range.end);
            }
            let n = o.extents.len().min(MAX_BATCH as usize);
            put_u32(out, n as u32);
            for e in &o.extents[..n] {
                put_u64(out, e.offset);
                put_u32(out, e.len);
                out.extend_from_slice(&e.id);
            }
        }
        Message::Need(n) => {
            let count = n.needed.len().min(MAX_BATCH as usize);
            put_u64(out, n.batch);
            put_u32(out, count as u32);
            let mut bits = vec![0u8; count.div_ceil(8)];
            for (i, _) in n.needed[..count].iter().enumerate().filter(|(_, b)| **b) {
                bits[i / 8] |= 1 << (i % 8);
            }
            out.extend_from_slice(&bits);
        }
        Message::Data(d) => {
            let n = d.extents.len().min(MAX_FRAME_EXTENTS as usize);
            put_u32(out, d.disk);
            out.push(d.codec.code());
            put_u32(out, n as u32);
            for &(offset, len) in &d.extents[..n] {
                put_u64(out, offset);
                put_u32(out, len);
            }
            out.extend_from_slice(&d.payload[..d.payload.len().min(MAX_FRAME as usize)]);
        }
        Message::DiskEnd(e) => {
            put_u32(out, e.disk);
            put_u64(out, e.offered);
            put_u64(out, e.sent);
            out.extend_from_slice(&e.digest);
        }
        Message::Commit { disks } => put_u32(out, *disks),
        Message::Ack { point } => put_short(out, point, MAX_POINT_ID),
        Message::Error { code, message } => {
            out.extend_from_slice(&code.to_le_bytes());
            let text = truncate_utf8(message, MAX_ERROR_TEXT);
            out.extend_from_slice(&(text.len() as u16).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
    let body = (out.len() - at - MESSAGE_HEADER_LEN) as u32;
    out[at + 1..at + MESSAGE_HEADER_LEN].copy_from_slice(&body.to_le_bytes());
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
/// A `u8` length and at most `max` (≤ 255) bytes.
fn put_short(out: &mut Vec<u8>, b: &[u8], max: usize) {
    let b = &b[..b.len().min(max).min(255)];
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

// ---------------------------------------------------------------------------
// Decoders

/// The version in a peer's preamble.
///
/// Returns `Ok(None)` until `b` holds [`PREAMBLE_LEN`] bytes.
///
/// # Errors
/// [`Error::NotAlike`] when the magic is wrong (the peer is something else).
pub fn decode_preamble(b: &[u8]) -> Result<Option<u32>, Error> {
    let Some(p) = b.get(..PREAMBLE_LEN) else { return Ok(None) };
    if p[..8] != MAGIC {
        return Err(Error::NotAlike { got: hex(&p[..8]) });
    }
    Ok(Some(le32(&p[8..12])))
}

/// The result of decoding from the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// The buffer must first hold this many bytes in total.
    NeedMore(usize),
    /// A value, and the bytes it used.
    Done(T, usize),
}

/// Decodes the message at the front of `b`.
///
/// # Errors
/// [`Error::Violation`]: an unknown type, a body longer than its type
/// allows (found from the header alone, before waiting for the body), or a
/// body that does not decode exactly.
pub fn decode_message(b: &[u8]) -> Result<Decoded<Message>, Error> {
    if b.len() < MESSAGE_HEADER_LEN {
        return Ok(Decoded::NeedMore(MESSAGE_HEADER_LEN));
    }
    let ty = b[0];
    let len = le32(&b[1..5]) as usize;
    let Some(max) = max_body(ty) else {
        return Err(Error::Violation { what: "message header", reason: format!("unknown message type {ty:#04x}") });
    };
    if len > max {
        return Err(Error::Violation {
            what: message_name(ty),
            reason: format!("body of {len} bytes; at most {max} allowed"),
        });
    }
    let total = MESSAGE_HEADER_LEN + len;
    let Some(body) = b.get(MESSAGE_HEADER_LEN..total) else { return Ok(Decoded::NeedMore(total)) };
    let mut r = Reader { b: body, at: 0, what: message_name(ty) };
    let m = decode_body(ty, &mut r)?;
    if r.at != body.len() {
        return Err(r.bad(format!("{} bytes after the end of the body", body.len() - r.at)));
    }
    Ok(Decoded::Done(m, total))
}

fn decode_body(ty: u8, r: &mut Reader<'_>) -> Result<Message, Error> {
    Ok(match ty {
        MSG_HELLO => {
            let version = r.u32()?;
            let role = match r.u8()? {
                1 => Role::Sender,
                2 => Role::Receiver,
                x => return Err(r.bad(format!("unknown role {x}"))),
            };
            let job = r.short()?;
            let job = std::str::from_utf8(job).map_err(|_| r.bad("the job id is not UTF-8"))?.to_owned();
            if job.is_empty() {
                return Err(r.bad("empty job id"));
            }
            let limits = Limits { max_batch: r.u32()?, window: r.u32()?, max_frame: r.u32()? };
            if let Some(p) = limits.problem() {
                return Err(r.bad(p));
            }
            let replica = match role {
                Role::Sender => None,
                Role::Receiver => Some(ReplicaInfo { id_key: r.array()?, base: r.short()?.to_vec() }),
            };
            Message::Hello(Hello { version, role, job, limits, replica })
        }
        MSG_META => Message::Meta { kind: r.u32()?, bytes: r.rest().to_vec() },
        MSG_DISK_BEGIN => {
            let disk = r.u32()?;
            let size = r.u64()?;
            let geometry = match r.u8()? {
                1 => Geometry::Fixed { block_size: r.u32()? },
                2 => Geometry::Cdc { min: r.u32()?, avg: r.u32()?, max: r.u32()?, window: r.u64()? },
                x => return Err(r.bad(format!("unknown geometry {x}"))),
            };
            if let Some(p) = geometry.problem() {
                return Err(r.bad(p));
            }
            debug_assert_eq!(r.at, 12 + geometry.encoded_len());
            Message::DiskBegin(DiskSpec { disk, size, geometry })
        }
        MSG_OFFER => {
            let (disk, batch) = (r.u32()?, r.u64()?);
            let nr = r.u32()?;
            if nr > MAX_RANGES {
                return Err(r.bad(format!("{nr} ranges; at most {MAX_RANGES}")));
            }
            if r.b.len() - r.at < nr as usize * OFFER_RANGE_LEN {
                return Err(r.bad(format!("{nr} ranges do not fit in the body")));
            }
            let mut ranges = Vec::with_capacity(nr as usize);
            for _ in 0..nr {
                ranges.push(r.u64()?..r.u64()?);
            }
            let count = r.u32()?;
            if count > MAX_BATCH {
                return Err(r.bad(format!("{count} extents; at most {MAX_BATCH}")));
            }
            r.expect_rest(count as usize * OFFER_EXTENT_LEN)?;
            let mut extents = Vec::with_capacity(count as usize);
            for _ in 0..count {
                extents.push(Extent { offset: r.u64()?, len: r.u32()?, id: r.array()? });
            }
            Message::Offer(Offer { disk, batch, ranges, extents })
        }
        MSG_NEED => {
            let batch = r.u64()?;
            let count = r.u32()?;
            if count > MAX_BATCH {
                return Err(r.bad(format!("{count} flags; at most {MAX_BATCH}")));
            }
            let bytes = (count as usize).div_ceil(8);
            r.expect_rest(bytes)?;
            let bits = r.take(bytes)?;
            if count % 8 != 0 && bits[bytes - 1] >> (count % 8) != 0 {
                return Err(r.bad("bits set past the last flag"));
            }
            let needed = (0..count as usize).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect();
            Message::Need(Need { batch, needed })
        }
        MSG_DATA => {
            let disk = r.u32()?;
            let codec = match r.u8()? {
                0 => Codec::None,
                1 => Codec::Zstd,
                x => return Err(r.bad(format!("unknown codec {x}"))),
            };
            let count = r.u32()?;
            if count == 0 || count > MAX_FRAME_EXTENTS {
                return Err(r.bad(format!("{count} extents; 1 to {MAX_FRAME_EXTENTS} allowed")));
            }
            let table = count as usize * DATA_EXTENT_LEN;
            if r.b.len() - r.at < table {
                return Err(r.bad(format!("{count} extents do not fit in the body")));
            }
            let mut extents = Vec::with_capacity(count as usize);
            let mut raw = 0u64;
            for _ in 0..count {
                let (offset, len) = (r.u64()?, r.u32()?);
                raw += u64::from(len);
                extents.push((offset, len));
            }
            if raw > u64::from(MAX_FRAME) {
                return Err(r.bad(format!("{raw} raw bytes; at most {MAX_FRAME}")));
            }
            let payload = r.rest().to_vec();
            if payload.len() > MAX_FRAME as usize {
                return Err(r.bad(format!("payload of {} bytes; at most {MAX_FRAME}", payload.len())));
            }
            Message::Data(Data { disk, codec, extents, payload })
        }
        MSG_DISK_END => {
            Message::DiskEnd(DiskEnd { disk: r.u32()?, offered: r.u64()?, sent: r.u64()?, digest: r.array()? })
        }
        MSG_COMMIT => Message::Commit { disks: r.u32()? },
        MSG_ACK => Message::Ack { point: r.short()?.to_vec() },
        MSG_ERROR => {
            let code = u16::from_le_bytes(r.array()?);
            let n = u16::from_le_bytes(r.array()?) as usize;
            if n > MAX_ERROR_TEXT {
                return Err(r.bad(format!("error text of {n} bytes; at most {MAX_ERROR_TEXT}")));
            }
            let text = r.take(n)?;
            Message::Error { code, message: String::from_utf8_lossy(text).into_owned() }
        }
        // max_body refused every other type.
        _ => return Err(r.bad("unknown message type")),
    })
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// A cursor over a body whose length is known; every read checks it.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::Violation { what: self.what, reason: reason.into() }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(self.bad(format!("body of {} bytes ends inside a field at {}", self.b.len(), self.at)));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn short(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.at..];
        self.at = self.b.len();
        s
    }
    /// The rest of the body must be exactly `n` bytes.
    fn expect_rest(&self, n: usize) -> Result<(), Error> {
        let left = self.b.len() - self.at;
        if left != n {
            return Err(self.bad(format!("{left} bytes of entries; {n} expected")));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // a list of one range
mod tests {
    use super::*;

    fn roundtrip(m: Message) {
        let mut b = Vec::new();
        encode_message(&m, &mut b);
        for cut in 0..b.len() {
            match decode_message(&b[..cut]).unwrap() {
                Decoded::NeedMore(n) => assert!(n > cut && n <= b.len(), "{m:?} cut at {cut}: needs {n}"),
                Decoded::Done(..) => panic!("{m:?} decoded from {cut} of {} bytes", b.len()),
            }
        }
        assert_eq!(decode_message(&b).unwrap(), Decoded::Done(m, b.len()));
    }

    fn ext(offset: u64, len: u32, b: u8) -> Extent {
        Extent { offset, len, id: [b; 32] }
    }

    #[test]
    fn every_message_roundtrips_and_asks_for_exactly_its_length() {
        roundtrip(Message::Hello(Hello {
            version: 1,
            role: Role::Sender,
            job: "job-é".into(),
            limits: Limits::default(),
            replica: None,
        }));
        roundtrip(Message::Hello(Hello {
            version: 7,
            role: Role::Receiver,
            job: "j".into(),
            limits: Limits { max_batch: 1, window: 1, max_frame: MIN_FRAME },
            replica: Some(ReplicaInfo { id_key: [3; 32], base: b"point-9".to_vec() }),
        }));
        roundtrip(Message::Meta { kind: 9, bytes: b"{\"vm\":1}".to_vec() });
        roundtrip(Message::DiskBegin(DiskSpec {
            disk: 2,
            size: 1 << 40,
            geometry: Geometry::Fixed { block_size: 65536 },
        }));
        roundtrip(Message::DiskBegin(DiskSpec {
            disk: 0,
            size: 12345,
            geometry: Geometry::Cdc { min: 16384, avg: 32768, max: 65536, window: 128 << 20 },
        }));
        roundtrip(Message::Offer(Offer { disk: 1, batch: 5, ranges: vec![0..8192], extents: vec![] }));
        roundtrip(Message::Offer(Offer {
            disk: 1,
            batch: 5,
            ranges: vec![4096..8192, 65536..1 << 20],
            extents: vec![ext(4096, 4096, 1), ext(65536, 4096, 2)],
        }));
        for n in [0, 1, 7, 8, 9, 4096] {
            roundtrip(Message::Need(Need { batch: 3, needed: (0..n).map(|i| i % 3 == 0).collect() }));
        }
        roundtrip(Message::Data(Data {
            disk: 0,
            codec: Codec::Zstd,
            extents: vec![(0, 4096), (8192, 100)],
            payload: vec![1, 2, 3],
        }));
        roundtrip(Message::DiskEnd(DiskEnd { disk: 3, offered: 10, sent: 4, digest: [9; 32] }));
        roundtrip(Message::Commit { disks: 2 });
        roundtrip(Message::Ack { point: b"p1".to_vec() });
        roundtrip(Message::Ack { point: vec![] });
        roundtrip(Message::Error { code: ERR_DIGEST, message: "disk 0".into() });
    }

    #[test]
    fn malformed_bodies_are_named() {
        let err = |b: &[u8]| decode_message(b).unwrap_err().to_string();
        assert!(err(&[0x55, 0, 0, 0, 0]).contains("unknown message type 0x55"));
        assert!(err(&[MSG_COMMIT, 5, 0, 0, 0]).contains("commit: body of 5 bytes; at most 4"));
        // A huge declared body is refused from the header alone.
        assert!(err(&[MSG_DATA, 0xff, 0xff, 0xff, 0xff]).contains("at most"));
        assert!(err(&[MSG_COMMIT, 3, 0, 0, 0, 1, 2, 3]).contains("ends inside a field"));
        let mut b = Vec::new();
        encode_message(&Message::Need(Need { batch: 0, needed: vec![true; 3] }), &mut b);
        let last = b.len() - 1;
        b[last] |= 0x80;
        assert!(err(&b).contains("bits set past the last flag"));
        let mut b = Vec::new();
        encode_message(&Message::Ack { point: b"xy".to_vec() }, &mut b);
        b[1] += 1;
        b.push(0);
        assert!(err(&b).contains("1 bytes after the end"));
        let mut b = Vec::new();
        encode_message(
            &Message::DiskBegin(DiskSpec { disk: 0, size: 1, geometry: Geometry::Fixed { block_size: 3000 } }),
            &mut b,
        );
        assert!(err(&b).contains("not a power of two"));
    }

    #[test]
    fn preamble_names_what_it_got() {
        assert_eq!(decode_preamble(&encode_preamble(1)[..11]).unwrap(), None);
        assert_eq!(decode_preamble(&encode_preamble(3)).unwrap(), Some(3));
        let e = decode_preamble(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert!(e.to_string().contains("474554202f204854"), "{e}");
    }

    #[test]
    fn geometry_checks_extents() {
        let f = Geometry::Fixed { block_size: 4096 };
        assert_eq!(f.extent_problem(10000, 8192, 1808), None);
        assert!(f.extent_problem(10000, 8192, 1000).is_some());
        assert!(f.extent_problem(10000, 100, 4096).is_some());
        assert!(f.extent_problem(10000, 8192, 4096).is_some());
        let c = Geometry::Cdc { min: 4096, avg: 8192, max: 16384, window: 32768 };
        assert_eq!(c.extent_problem(100_000, 4096, 16384), None);
        assert!(c.extent_problem(100_000, 4096, 20480).is_some());
        assert!(c.extent_problem(100_000, 24576, 12288).unwrap().contains("window"));
        assert!(c.extent_problem(100_000, 4096, 100).is_some());
        assert_eq!(c.extent_problem(100_000, 98304, 1696), None);
        assert!(c.extent_problem(u64::MAX, u64::MAX - 10, 100).is_some());
    }
}
