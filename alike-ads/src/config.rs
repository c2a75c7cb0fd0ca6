//! The `config` object, key objects (`keys/…`) and exported key files.

use std::path::Path;

use alike_core::{CdcParams, Chunking, KdfParams, MasterKey, WrappedKey, WriterKey};
use serde::{Deserialize, Serialize};

use crate::format::{HEADER_LEN, ObjectKind, check_header_version, header_v};
use crate::{Error, Result};

/// Encryption name in `config` for encrypted stores.
pub const AES_256_GCM: &str = "aes-256-gcm";
/// Encryption name in `config` for unencrypted stores.
pub const NO_ENCRYPTION: &str = "none";

/// The store's settings, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// 16 random bytes, hex: names the store (and its local cache).
    pub store_id: String,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Fixed-block stores (format 1): the disk block size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// Default zstd level for new blobs; `null` = no compression.
    pub compression_level: Option<i32>,
    /// `"aes-256-gcm"` or `"none"`.
    pub encryption: String,
    /// Target pack size in bytes.
    pub pack_size: u64,
    /// Encrypted stores: keyed BLAKE3 of a fixed string under the id key,
    /// hex; tells a right key from a wrong one without revealing anything.
    pub key_check: Option<String>,
    /// Content-defined stores (formats 2 and 3): the chunk sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking: Option<CdcParams>,
    /// Stores with write-only keys (format 3): the store's X25519 public
    /// key, hex; data frames are sealed to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

impl StoreConfig {
    /// Whether blobs are sealed.
    pub fn encrypted(&self) -> bool {
        self.encryption == AES_256_GCM
    }
    /// How the store cuts disks.
    pub fn chunking(&self) -> Chunking {
        match (self.chunking, self.block_size) {
            (Some(p), _) => Chunking::Cdc(p),
            (None, bs) => Chunking::Fixed { block_size: bs.unwrap_or(alike_core::DEFAULT_BLOCK_SIZE) },
        }
    }
    /// The format version of the store: 3 with write-only keys (a public
    /// key), else 2 for content-defined chunking, else 1.
    pub fn format_version(&self) -> u32 {
        if self.public_key.is_some() {
            3
        } else if self.chunking.is_some() {
            2
        } else {
            1
        }
    }
    /// The store's public key (format 3).
    pub fn public_key(&self) -> Option<[u8; 32]> {
        self.public_key.as_deref().and_then(|h| hex::decode(h).ok()).and_then(|b| b.try_into().ok())
    }
}

fn with_checksum(kind: ObjectKind, json: Vec<u8>) -> Vec<u8> {
    with_checksum_v(kind, 1, json)
}

fn with_checksum_v(kind: ObjectKind, version: u32, json: Vec<u8>) -> Vec<u8> {
    let mut out = header_v(kind, version).to_vec();
    out.extend_from_slice(&json);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn check_checksum<'a>(bytes: &'a [u8], kind: ObjectKind, object: &str) -> Result<&'a [u8]> {
    check_checksum_v(bytes, kind, object).map(|(_, json)| json)
}

fn check_checksum_v<'a>(bytes: &'a [u8], kind: ObjectKind, object: &str) -> Result<(u32, &'a [u8])> {
    let (version, body) = check_header_version(bytes, kind, object)?;
    if body.len() < 32 {
        return Err(Error::Truncated {
            object: object.into(),
            offset: HEADER_LEN as u64,
            wanted: 32,
            got: body.len() as u64,
        });
    }
    let (json, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(json).as_bytes() != sum {
        return Err(Error::Corrupt { object: object.into(), reason: "checksum mismatch".into() });
    }
    Ok((version, &json[HEADER_LEN..]))
}

fn parse<T: for<'de> Deserialize<'de>>(json: &[u8], object: &str) -> Result<T> {
    serde_json::from_slice(json).map_err(|e| Error::Corrupt { object: object.into(), reason: format!("bad JSON: {e}") })
}

/// Encodes `config`: header ‖ JSON ‖ BLAKE3 of the preceding bytes.
pub fn encode_config(c: &StoreConfig) -> Vec<u8> {
    with_checksum_v(ObjectKind::Config, c.format_version(), serde_json::to_vec_pretty(c).expect("serializes"))
}

/// Decodes and validates `config`.
///
/// # Errors
/// Header, checksum and JSON errors naming `config`; unknown encryption or a
/// bad block size.
pub fn decode_config(bytes: &[u8]) -> Result<StoreConfig> {
    let (version, json) = check_checksum_v(bytes, ObjectKind::Config, "config")?;
    let c: StoreConfig = parse(json, "config")?;
    let bad = |r: String| Error::Corrupt { object: "config".into(), reason: r };
    if c.encryption != AES_256_GCM && c.encryption != NO_ENCRYPTION {
        return Err(bad(format!("unknown encryption {:?}", c.encryption)));
    }
    match (version, c.block_size, c.chunking) {
        (1, Some(bs), None) if !alike_core::valid_block_size(bs) => {
            return Err(bad(format!("block size {bs} is not allowed")));
        }
        (1, Some(_), None) => {}
        (2 | 3, None, Some(p)) => p.validate().map_err(|e| bad(format!("chunking: {e}")))?,
        (1, ..) => return Err(bad("a format 1 config needs block_size and no chunking".into())),
        (v, ..) => return Err(bad(format!("a format {v} config needs chunking and no block_size"))),
    }
    match (version, &c.public_key) {
        (3, Some(_)) if c.public_key().is_none() => return Err(bad("public_key is not 32 bytes of hex".into())),
        (3, Some(_)) if c.encryption != AES_256_GCM => {
            return Err(bad("a format 3 config (write-only keys) needs encryption".into()));
        }
        (3, Some(_)) | (1 | 2, None) => {}
        (3, None) => return Err(bad("a format 3 config needs public_key".into())),
        (_, None) => {}
        (v, Some(_)) => return Err(bad(format!("a format {v} config has no public_key"))),
    }
    if c.store_id.len() != 32 || hex::decode(&c.store_id).is_err() {
        return Err(bad("store_id is not 32 hex digits".into()));
    }
    if !(1 << 20..=1 << 30).contains(&c.pack_size) {
        return Err(bad(format!("pack size {} is out of range", c.pack_size)));
    }
    Ok(c)
}

/// A key object: the master key wrapped under a passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyObject {
    /// Always `"argon2id"`.
    pub kdf: String,
    /// Argon2id memory (KiB).
    pub m_cost: u32,
    /// Argon2id passes.
    pub t_cost: u32,
    /// Argon2id lanes.
    pub p_cost: u32,
    /// 32-byte salt, hex.
    pub salt: String,
    /// nonce ‖ AES-256-GCM(master key) ‖ tag, hex (60 bytes).
    pub sealed: String,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Host that made it.
    pub host: Option<String>,
}

/// Associated data binding a wrapped key to its store.
pub fn key_aad(store_id: &str) -> Vec<u8> {
    let mut a = b"alike key v1\0".to_vec();
    a.extend_from_slice(store_id.as_bytes());
    a
}

impl KeyObject {
    /// From a wrapped key.
    pub fn new(w: &WrappedKey, created_ms: i64, host: Option<String>) -> KeyObject {
        KeyObject {
            kdf: "argon2id".into(),
            m_cost: w.kdf.m_cost,
            t_cost: w.kdf.t_cost,
            p_cost: w.kdf.p_cost,
            salt: hex::encode(w.salt),
            sealed: hex::encode(&w.sealed),
            created_ms,
            host,
        }
    }
    /// Back to a wrapped key.
    pub fn wrapped(&self, object: &str) -> Result<WrappedKey> {
        let bad = |r: &str| Error::Corrupt { object: object.into(), reason: r.into() };
        if self.kdf != "argon2id" {
            return Err(bad("unknown key derivation"));
        }
        let salt: [u8; 32] = hex::decode(&self.salt)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("salt is not 32 bytes of hex"))?;
        let sealed = hex::decode(&self.sealed).map_err(|_| bad("sealed key is not hex"))?;
        let kdf = KdfParams { m_cost: self.m_cost, t_cost: self.t_cost, p_cost: self.p_cost };
        // The cost is the object's word: bounded, so a forged object cannot
        // make opening the store allocate terabytes or run for days.
        check_kdf(&kdf).map_err(|r| bad(&r))?;
        Ok(WrappedKey { kdf, salt, sealed })
    }
    /// Encodes: header ‖ JSON ‖ BLAKE3.
    pub fn encode(&self) -> Vec<u8> {
        with_checksum(ObjectKind::Key, serde_json::to_vec_pretty(self).expect("serializes"))
    }
    /// Decodes.
    pub fn decode(bytes: &[u8], object: &str) -> Result<KeyObject> {
        parse(check_checksum(bytes, ObjectKind::Key, object)?, object)
    }
}

/// Most memory an Argon2id key derivation may use: 4 GiB (in KiB).
pub(crate) const MAX_KDF_MEMORY_KIB: u32 = 4 << 20;
/// Most Argon2id passes.
pub(crate) const MAX_KDF_PASSES: u32 = 64;
/// Most Argon2id lanes.
pub(crate) const MAX_KDF_LANES: u32 = 64;

/// Checks an Argon2id cost against the bounds above (on create, and on
/// every key object read).
///
/// # Errors
/// What is out of range.
pub(crate) fn check_kdf(k: &KdfParams) -> std::result::Result<(), String> {
    if k.m_cost > MAX_KDF_MEMORY_KIB || k.t_cost > MAX_KDF_PASSES || k.p_cost > MAX_KDF_LANES {
        return Err(format!(
            "Argon2id cost m={} KiB t={} p={} is above the limits (m ≤ {MAX_KDF_MEMORY_KIB} KiB, t ≤ {MAX_KDF_PASSES}, p ≤ {MAX_KDF_LANES})",
            k.m_cost, k.t_cost, k.p_cost
        ));
    }
    Ok(())
}

/// The largest key file read: one is about 150 bytes.
pub(crate) const MAX_KEY_FILE: u64 = 64 << 10;

/// Reads and decodes the key file at `path`: a regular file of at most
/// [`MAX_KEY_FILE`] bytes (a mistaken `/dev/zero` is not read forever).
/// No error shows any of its content.
///
/// # Errors
/// [`Error::Io`]; [`Error::InvalidArgument`] for something that is not a
/// regular file or is too large; header, checksum and JSON errors.
pub(crate) fn read_key_file(path: &Path) -> Result<AnyKeyFile> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(crate::error::io(path))?;
    let m = f.metadata().map_err(crate::error::io(path))?;
    if !m.is_file() {
        return Err(Error::InvalidArgument(format!("key file {} is not a regular file", path.display())));
    }
    let mut bytes = Vec::new();
    f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes).map_err(crate::error::io(path))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(Error::InvalidArgument(format!(
            "key file {} is larger than {} KiB: not a key file",
            path.display(),
            MAX_KEY_FILE >> 10
        )));
    }
    AnyKeyFile::decode(&bytes, &path.display().to_string())
}

/// Writes a new key file, readable by its owner only (0600), durably: to a
/// temporary name beside it, then linked to its name (so it appears whole,
/// and an existing file is never replaced) and the temporary name removed.
///
/// # Errors
/// [`Error::FileExists`]; [`Error::Io`].
pub(crate) fn write_key_file_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut r = [0u8; 8];
    alike_core::random_bytes(&mut r)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(r)));
    write_key_file(&tmp, data)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::FileExists { path: path.to_owned(), what: "key file" });
        }
        Err(e) => return Err(Error::Io { path: path.to_owned(), source: e }),
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes a new key file, readable by its owner only (0600), durably. An
/// existing file is never replaced.
///
/// # Errors
/// [`Error::FileExists`]; [`Error::Io`].
pub(crate) fn write_key_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::FileExists { path: path.to_owned(), what: "key file" });
        }
        Err(e) => return Err(Error::Io { path: path.to_owned(), source: e }),
    };
    if let Err(e) = f.write_all(data).and_then(|_| f.sync_all()) {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(Error::Io { path: path.to_owned(), source: e });
    }
    // The new name is durable once its folder is.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A key file exported for the user: the master key itself, for opening the
/// store without a passphrase. Keep it as safe as the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// The store it opens.
    pub store_id: String,
    /// The 32-byte master key, hex.
    pub master_key: String,
}

impl KeyFile {
    /// For a master key.
    pub fn new(store_id: &str, m: &MasterKey) -> KeyFile {
        KeyFile { store_id: store_id.into(), master_key: hex::encode(m.0) }
    }
    /// The master key.
    pub fn master(&self, object: &str) -> Result<MasterKey> {
        let k: [u8; 32] = hex::decode(&self.master_key).ok().and_then(|s| s.try_into().ok()).ok_or_else(|| {
            Error::Corrupt { object: object.into(), reason: "master_key is not 32 bytes of hex".into() }
        })?;
        Ok(MasterKey(k))
    }
    /// Encodes: header ‖ JSON ‖ BLAKE3.
    pub fn encode(&self) -> Vec<u8> {
        with_checksum(ObjectKind::KeyFile, serde_json::to_vec_pretty(self).expect("serializes"))
    }
    /// Decodes.
    pub fn decode(bytes: &[u8], object: &str) -> Result<KeyFile> {
        parse(check_checksum(bytes, ObjectKind::KeyFile, object)?, object)
    }
}

/// A write-only key file (format 3 stores): what a processor gets to back
/// up into a store without being able to read its data (`docs/format.md`
/// §4.1). Keep it as safe as a means to write to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterKeyFile {
    /// The store it writes to.
    pub store_id: String,
    /// The chunk id key, 32 bytes hex.
    pub id_key: String,
    /// The blob key (metadata), 32 bytes hex.
    pub blob_key: String,
    /// The store's X25519 public key, 32 bytes hex.
    pub public_key: String,
}

fn hex32(h: &str, field: &str, object: &str) -> Result<[u8; 32]> {
    hex::decode(h)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Error::Corrupt { object: object.into(), reason: format!("{field} is not 32 bytes of hex") })
}

impl WriterKeyFile {
    /// For a write-only key.
    pub fn new(store_id: &str, w: &WriterKey) -> WriterKeyFile {
        WriterKeyFile {
            store_id: store_id.into(),
            id_key: hex::encode(w.id_key),
            blob_key: hex::encode(w.blob_key),
            public_key: hex::encode(w.public_key),
        }
    }
    /// The key it holds.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when a field is not 32 bytes of hex.
    pub fn key(&self, object: &str) -> Result<WriterKey> {
        Ok(WriterKey {
            id_key: hex32(&self.id_key, "id_key", object)?,
            blob_key: hex32(&self.blob_key, "blob_key", object)?,
            public_key: hex32(&self.public_key, "public_key", object)?,
        })
    }
    /// Encodes: header ‖ JSON ‖ BLAKE3.
    pub fn encode(&self) -> Vec<u8> {
        with_checksum(ObjectKind::WriterKeyFile, serde_json::to_vec_pretty(self).expect("serializes"))
    }
    /// Decodes.
    ///
    /// # Errors
    /// Header, checksum and JSON errors, none showing the file's bytes.
    pub fn decode(bytes: &[u8], object: &str) -> Result<WriterKeyFile> {
        let f: WriterKeyFile = parse(check_checksum(bytes, ObjectKind::WriterKeyFile, object)?, object)?;
        f.key(object)?;
        Ok(f)
    }
}

/// A key file of either kind: the full key or a write-only key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyKeyFile {
    /// A full key file (`KF`).
    Full(KeyFile),
    /// A write-only key file (`WK`).
    Writer(WriterKeyFile),
}

impl AnyKeyFile {
    /// Decodes by the magic: `WK` a write-only key file, else a full key
    /// file (so a file of neither kind is refused as "not a key file").
    ///
    /// # Errors
    /// As [`KeyFile::decode`] and [`WriterKeyFile::decode`].
    pub fn decode(bytes: &[u8], object: &str) -> Result<AnyKeyFile> {
        if bytes.starts_with(&ObjectKind::WriterKeyFile.magic()) {
            WriterKeyFile::decode(bytes, object).map(AnyKeyFile::Writer)
        } else {
            KeyFile::decode(bytes, object).map(AnyKeyFile::Full)
        }
    }
    /// The store it belongs to.
    pub fn store_id(&self) -> &str {
        match self {
            AnyKeyFile::Full(f) => &f.store_id,
            AnyKeyFile::Writer(f) => &f.store_id,
        }
    }
}
