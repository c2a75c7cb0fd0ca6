//! The `config` object, key objects (`keys/…`) and exported key files.

use alike_core::{KdfParams, MasterKey, WrappedKey};
use serde::{Deserialize, Serialize};

use crate::format::{HEADER_LEN, ObjectKind, check_header, header};
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
    /// Disk block size in bytes.
    pub block_size: u32,
    /// Default zstd level for new blobs; `null` = no compression.
    pub compression_level: Option<i32>,
    /// `"aes-256-gcm"` or `"none"`.
    pub encryption: String,
    /// Target pack size in bytes.
    pub pack_size: u64,
    /// Encrypted stores: keyed BLAKE3 of a fixed string under the id key,
    /// hex; tells a right key from a wrong one without revealing anything.
    pub key_check: Option<String>,
}

impl StoreConfig {
    /// Whether blobs are sealed.
    pub fn encrypted(&self) -> bool {
        self.encryption == AES_256_GCM
    }
}

fn with_checksum(kind: ObjectKind, json: Vec<u8>) -> Vec<u8> {
    let mut out = header(kind).to_vec();
    out.extend_from_slice(&json);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn check_checksum<'a>(bytes: &'a [u8], kind: ObjectKind, object: &str) -> Result<&'a [u8]> {
    let body = check_header(bytes, kind, object)?;
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
    Ok(&json[HEADER_LEN..])
}

fn parse<T: for<'de> Deserialize<'de>>(json: &[u8], object: &str) -> Result<T> {
    serde_json::from_slice(json).map_err(|e| Error::Corrupt { object: object.into(), reason: format!("bad JSON: {e}") })
}

/// Encodes `config`: header ‖ JSON ‖ BLAKE3 of the preceding bytes.
pub fn encode_config(c: &StoreConfig) -> Vec<u8> {
    with_checksum(ObjectKind::Config, serde_json::to_vec_pretty(c).expect("serializes"))
}

/// Decodes and validates `config`.
///
/// # Errors
/// Header, checksum and JSON errors naming `config`; unknown encryption or a
/// bad block size.
pub fn decode_config(bytes: &[u8]) -> Result<StoreConfig> {
    let c: StoreConfig = parse(check_checksum(bytes, ObjectKind::Config, "config")?, "config")?;
    let bad = |r: String| Error::Corrupt { object: "config".into(), reason: r };
    if c.encryption != AES_256_GCM && c.encryption != NO_ENCRYPTION {
        return Err(bad(format!("unknown encryption {:?}", c.encryption)));
    }
    if !alike_core::valid_block_size(c.block_size) {
        return Err(bad(format!("block size {} is not allowed", c.block_size)));
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
        Ok(WrappedKey {
            kdf: KdfParams { m_cost: self.m_cost, t_cost: self.t_cost, p_cost: self.p_cost },
            salt,
            sealed,
        })
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
