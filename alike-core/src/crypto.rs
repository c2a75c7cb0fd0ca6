//! Keys and sealing: chunk-id hashing, AES-256-GCM blob sealing, the
//! Argon2id wrapping of the master key by a passphrase, and the sealing of
//! data frames to a store's X25519 public key (store format 3, write-only
//! keys: `docs/format.md` §4.1, §5.2).
//!
//! Every subkey is derived from the random 32-byte master key with
//! `blake3::derive_key` under a fixed context string, so one secret serves
//! every purpose without reuse.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};

use crate::{ChunkId, Error, Result};

/// Bytes a sealed blob adds to its payload: 12-byte nonce + 16-byte tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

// Do not edit: changing a context string changes every id and key of every store.
const CTX_ID_KEY: &str = "alike 2026-11 chunk id key v1";
const CTX_ENC_KEY: &str = "alike 2026-11 blob encryption key v1";
const CTX_STORE_SECRET: &str = "alike 2026-12 store secret key v1";
/// HKDF-SHA256 `info` of a data frame's key (store format 3).
const FRAME_KEY_INFO: &[u8] = b"alike sealed frame key v1";
/// Bytes a data frame sealed to the store's public key adds to its payload:
/// the 32-byte ephemeral public key, the nonce and the tag.
pub const PUBLIC_SEAL_OVERHEAD: usize = 32 + SEAL_OVERHEAD;

/// Fills `buf` with bytes from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Crypto(format!("system random source failed: {e}")))
}

/// The store's random master key.
#[derive(Clone)]
pub struct MasterKey(pub [u8; 32]);

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Result<MasterKey> {
        let mut k = [0u8; 32];
        random_bytes(&mut k)?;
        Ok(MasterKey(k))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The store's X25519 public key: data frames of a format 3 store are
/// sealed to it, so a key that holds only this (and not the secret) can
/// write data but never read it back.
pub fn store_public_key(master: &MasterKey) -> [u8; 32] {
    x25519_dalek::x25519(store_secret(master), x25519_dalek::X25519_BASEPOINT_BYTES)
}

fn store_secret(master: &MasterKey) -> [u8; 32] {
    blake3::derive_key(CTX_STORE_SECRET, &master.0)
}

/// What a write-only key holds (`docs/format.md` §4.1): the id key (to
/// compute chunk ids and so deduplicate), the blob key (to read and write
/// the metadata: pack trailers, index segments, manifests, block maps) and
/// the store's public key (to seal data frames). Not the master key, not the
/// store's secret key: data frames, once sealed, are closed to it.
#[derive(Clone, PartialEq, Eq)]
pub struct WriterKey {
    /// The chunk id key.
    pub id_key: [u8; 32],
    /// The AES-256 blob key (metadata).
    pub blob_key: [u8; 32],
    /// The store's X25519 public key.
    pub public_key: [u8; 32],
}

impl std::fmt::Debug for WriterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterKey(..)")
    }
}

impl WriterKey {
    /// The write-only key of a format 3 store with this master key.
    pub fn from_master(master: &MasterKey) -> WriterKey {
        WriterKey {
            id_key: blake3::derive_key(CTX_ID_KEY, &master.0),
            blob_key: blake3::derive_key(CTX_ENC_KEY, &master.0),
            public_key: store_public_key(master),
        }
    }
}

/// How data frames are sealed.
#[derive(Clone)]
enum DataSeal {
    /// With the blob key, like everything else (formats 1 and 2).
    BlobKey,
    /// To the store's public key (format 3); `secret` is held by the full
    /// key only.
    Public { public: [u8; 32], secret: Option<[u8; 32]> },
}

/// The working keys of an open store: how ids are computed and blobs sealed.
#[derive(Clone)]
pub struct Keys {
    id_key: Option<[u8; 32]>,
    cipher: Option<Aes256Gcm>,
    data: DataSeal,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("encrypted", &self.is_encrypted())
            .field("data_sealed_to_public_key", &self.seals_data_to_public_key())
            .field("can_read_data", &self.can_read_data())
            .finish()
    }
}

impl Keys {
    /// Keys of an unencrypted store: plain BLAKE3 ids, blobs stored in clear.
    pub fn unencrypted() -> Keys {
        Keys { id_key: None, cipher: None, data: DataSeal::BlobKey }
    }

    /// Keys derived from a master key: keyed BLAKE3 ids, AES-256-GCM sealing
    /// (store formats 1 and 2).
    pub fn from_master(master: &MasterKey) -> Keys {
        let id_key = blake3::derive_key(CTX_ID_KEY, &master.0);
        let enc = blake3::derive_key(CTX_ENC_KEY, &master.0);
        let cipher = Aes256Gcm::new_from_slice(&enc).expect("32-byte key");
        Keys { id_key: Some(id_key), cipher: Some(cipher), data: DataSeal::BlobKey }
    }

    /// The full keys of a format 3 store: as [`Keys::from_master`], but data
    /// frames are sealed to the store's public key and opened with its
    /// secret key.
    pub fn from_master_sealing_data(master: &MasterKey) -> Keys {
        let mut k = Keys::from_master(master);
        k.data = DataSeal::Public { public: store_public_key(master), secret: Some(store_secret(master)) };
        k
    }

    /// The keys of a write-only key (format 3): ids and metadata as the full
    /// key, data frames sealed to the public key and never opened.
    pub fn from_writer(w: &WriterKey) -> Keys {
        let cipher = Aes256Gcm::new_from_slice(&w.blob_key).expect("32-byte key");
        Keys {
            id_key: Some(w.id_key),
            cipher: Some(cipher),
            data: DataSeal::Public { public: w.public_key, secret: None },
        }
    }

    /// Keys that only compute ids, keyed with `id_key` (no sealing): a
    /// replication sender hashes with the key the replica hands it.
    pub fn for_ids(id_key: [u8; 32]) -> Keys {
        Keys { id_key: Some(id_key), cipher: None, data: DataSeal::BlobKey }
    }

    /// Whether data frames are sealed to the store's public key (format 3).
    pub fn seals_data_to_public_key(&self) -> bool {
        matches!(self.data, DataSeal::Public { .. })
    }

    /// The public key data frames are sealed to (format 3), else `None`.
    pub fn data_public_key(&self) -> Option<[u8; 32]> {
        match self.data {
            DataSeal::Public { public, .. } => Some(public),
            DataSeal::BlobKey => None,
        }
    }

    /// Whether these keys open data frames: false for a write-only key.
    pub fn can_read_data(&self) -> bool {
        !matches!(self.data, DataSeal::Public { secret: None, .. })
    }

    /// Seals a data frame's payload: with the blob key ([`Keys::seal`]) in
    /// formats 1 and 2; to the store's public key in format 3:
    /// `ephemeral public key (32) ‖ nonce (12) ‖ AES-256-GCM(k, payload) ‖ tag (16)`,
    /// `k` = HKDF-SHA256 of the X25519 shared secret (`docs/format.md` §5.2).
    ///
    /// # Errors
    /// [`Error::Crypto`] when no random bytes can be drawn.
    pub fn seal_data(&self, aad: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
        match self.data {
            DataSeal::BlobKey => self.seal(aad, payload),
            DataSeal::Public { public, .. } => {
                let mut eph = [0u8; 32];
                random_bytes(&mut eph)?;
                let mut nonce = [0u8; NONCE_LEN];
                random_bytes(&mut nonce)?;
                seal_to_public(&public, eph, nonce, aad, payload)
            }
        }
    }

    /// Opens what [`Keys::seal_data`] produced. `Err(reason)` when it is too
    /// short, does not authenticate — or these are a write-only key's, which
    /// never open data ([`Keys::can_read_data`]; callers check that first to
    /// give [`Error::WriteOnlyKey`]).
    pub fn open_data(&self, aad: &[u8], stored: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
        match self.data {
            DataSeal::BlobKey => self.open(aad, stored),
            DataSeal::Public { secret: None, .. } => Err("a write-only key cannot open data frames"),
            DataSeal::Public { public, secret: Some(secret) } => {
                open_copy(&public_frame_cipher(&public, &secret, stored)?, aad, stored, 32)
            }
        }
    }

    /// The key ids are computed with (`None`: plain BLAKE3). A replica
    /// hands it to its senders; a store's never leaves the store.
    pub fn id_key(&self) -> Option<[u8; 32]> {
        self.id_key
    }

    /// Whether blobs are sealed.
    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// The id of a plaintext.
    pub fn hash(&self, data: &[u8]) -> ChunkId {
        match &self.id_key {
            Some(k) => ChunkId(*blake3::keyed_hash(k, data).as_bytes()),
            None => ChunkId(*blake3::hash(data).as_bytes()),
        }
    }

    /// Seals `payload` with a fresh random nonce: `nonce ‖ ciphertext ‖ tag`.
    /// Without encryption the payload is returned unchanged.
    pub fn seal(&self, aad: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        Ok(self.seal_with_nonce(aad, payload, nonce))
    }

    /// [`Keys::seal`] without a copy: `buf[start..]` is sealed where it lies,
    /// so `buf` ends as `prefix ‖ nonce ‖ ciphertext ‖ tag` (or unchanged
    /// without encryption). For large objects built in one buffer (index
    /// segments), which would otherwise be held two or three times at once.
    ///
    /// # Errors
    /// [`Error::Crypto`] when no nonce can be drawn.
    pub fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>, start: usize) -> Result<()> {
        let Some(cipher) = &self.cipher else {
            return Ok(());
        };
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        buf.reserve(SEAL_OVERHEAD);
        buf.splice(start..start, nonce);
        let n = Nonce::<Aes256Gcm>::try_from(&nonce[..]).expect("12 bytes");
        let tag = cipher
            .encrypt_inout_detached(&n, aad, (&mut buf[start + NONCE_LEN..]).into())
            .expect("AES-GCM encryption of a buffer under 64 GiB cannot fail");
        buf.extend_from_slice(tag.as_slice());
        Ok(())
    }

    /// [`Keys::seal`] with a given nonce: for golden vectors only; a nonce must
    /// never be used twice with one key.
    pub fn seal_with_nonce(&self, aad: &[u8], payload: &[u8], nonce: [u8; 12]) -> Vec<u8> {
        let Some(cipher) = &self.cipher else {
            return payload.to_vec();
        };
        let mut out = Vec::with_capacity(payload.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(payload);
        let n = Nonce::<Aes256Gcm>::try_from(&nonce[..]).expect("12 bytes");
        let tag = cipher
            .encrypt_inout_detached(&n, aad, (&mut out[NONCE_LEN..]).into())
            .expect("AES-GCM encryption of a buffer under 64 GiB cannot fail");
        out.extend_from_slice(tag.as_slice());
        out
    }

    /// Opens what [`Keys::seal`] produced. `Err(reason)` when it is too short
    /// or does not authenticate.
    pub fn open(&self, aad: &[u8], stored: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
        let Some(cipher) = &self.cipher else {
            return Ok(stored.to_vec());
        };
        open_copy(cipher, aad, stored, 0)
    }

    /// [`Keys::open`] without a copy: `stored` is decrypted where it lies;
    /// returns where the plaintext is in it (the whole of it without
    /// encryption). `stored` is garbage when it does not authenticate.
    pub fn open_in_place(
        &self,
        aad: &[u8],
        stored: &mut [u8],
    ) -> std::result::Result<std::ops::Range<usize>, &'static str> {
        let Some(cipher) = &self.cipher else {
            return Ok(0..stored.len());
        };
        open_with(cipher, aad, stored, 0)
    }

    /// [`Keys::open_data`] without a copy, as [`Keys::open_in_place`].
    pub fn open_data_in_place(
        &self,
        aad: &[u8],
        stored: &mut [u8],
    ) -> std::result::Result<std::ops::Range<usize>, &'static str> {
        match self.data {
            DataSeal::BlobKey => self.open_in_place(aad, stored),
            DataSeal::Public { secret: None, .. } => Err("a write-only key cannot open data frames"),
            DataSeal::Public { public, secret: Some(secret) } => open_from_public(&public, &secret, aad, stored),
        }
    }
}

/// The AES-256 key of one data frame sealed to `public` with the ephemeral
/// public key `eph_public` and the shared secret `shared`; `None` when the
/// shared secret is all zero (a low-order point: no secret at all).
fn frame_key(shared: [u8; 32], eph_public: &[u8; 32], public: &[u8; 32]) -> Option<Aes256Gcm> {
    if shared == [0u8; 32] {
        return None;
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph_public);
    salt[32..].copy_from_slice(public);
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), &shared);
    let mut k = [0u8; 32];
    hk.expand(FRAME_KEY_INFO, &mut k).expect("32 bytes is a valid HKDF-SHA256 length");
    Some(Aes256Gcm::new_from_slice(&k).expect("32-byte key"))
}

/// Seals `payload` to the X25519 key `public` with the ephemeral secret
/// `eph` and `nonce` (random in [`Keys::seal_data`]; fixed only for golden
/// vectors: neither may ever be reused).
///
/// # Errors
/// [`Error::Crypto`] when `public` is a low-order point.
pub fn seal_to_public(
    public: &[u8; 32],
    eph: [u8; 32],
    nonce: [u8; 12],
    aad: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>> {
    let eph_public = x25519_dalek::x25519(eph, x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = x25519_dalek::x25519(eph, *public);
    let cipher = frame_key(shared, &eph_public, public)
        .ok_or_else(|| Error::Crypto("the store's public key is a low-order point".into()))?;
    let mut out = Vec::with_capacity(payload.len() + PUBLIC_SEAL_OVERHEAD);
    out.extend_from_slice(&eph_public);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(payload);
    let n = Nonce::<Aes256Gcm>::try_from(&nonce[..]).expect("12 bytes");
    let tag = cipher
        .encrypt_inout_detached(&n, aad, (&mut out[32 + NONCE_LEN..]).into())
        .expect("AES-GCM encryption of a buffer under 64 GiB cannot fail");
    out.extend_from_slice(tag.as_slice());
    Ok(out)
}

fn open_from_public(
    public: &[u8; 32],
    secret: &[u8; 32],
    aad: &[u8],
    stored: &mut [u8],
) -> std::result::Result<std::ops::Range<usize>, &'static str> {
    open_with(&public_frame_cipher(public, secret, stored)?, aad, stored, 32)
}

/// The cipher of a data frame sealed to `public` (format 3), from its
/// ephemeral key.
fn public_frame_cipher(
    public: &[u8; 32],
    secret: &[u8; 32],
    stored: &[u8],
) -> std::result::Result<Aes256Gcm, &'static str> {
    if stored.len() < PUBLIC_SEAL_OVERHEAD {
        return Err("shorter than ephemeral key, nonce and tag");
    }
    let eph_public: [u8; 32] = stored[..32].try_into().expect("32 bytes");
    let shared = x25519_dalek::x25519(*secret, eph_public);
    frame_key(shared, &eph_public, public).ok_or("the ephemeral key is a low-order point")
}

/// Opens `nonce ‖ ciphertext ‖ tag` at `stored[at..]` into a new buffer
/// (the ciphertext copied once, decrypted there).
fn open_copy(cipher: &Aes256Gcm, aad: &[u8], stored: &[u8], at: usize) -> std::result::Result<Vec<u8>, &'static str> {
    if stored.len() < at + SEAL_OVERHEAD {
        return Err("shorter than nonce and tag");
    }
    let mut buf = stored[at + NONCE_LEN..stored.len() - TAG_LEN].to_vec();
    let n = Nonce::<Aes256Gcm>::try_from(&stored[at..at + NONCE_LEN]).expect("12 bytes");
    let t = Tag::<Aes256Gcm>::try_from(&stored[stored.len() - TAG_LEN..]).expect("16 bytes");
    cipher
        .decrypt_inout_detached(&n, aad, (&mut buf[..]).into(), &t)
        .map_err(|_| "authentication failed (wrong key or damaged bytes)")?;
    Ok(buf)
}

/// Opens `nonce ‖ ciphertext ‖ tag` at `stored[at..]` in place; returns
/// where the plaintext is.
fn open_with(
    cipher: &Aes256Gcm,
    aad: &[u8],
    stored: &mut [u8],
    at: usize,
) -> std::result::Result<std::ops::Range<usize>, &'static str> {
    if stored.len() < at + SEAL_OVERHEAD {
        return Err("shorter than nonce and tag");
    }
    let (head, rest) = stored.split_at_mut(at + NONCE_LEN);
    let (ct, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    let n = Nonce::<Aes256Gcm>::try_from(&head[at..]).expect("12 bytes");
    let t = Tag::<Aes256Gcm>::try_from(&tag[..]).expect("16 bytes");
    cipher
        .decrypt_inout_detached(&n, aad, ct.into(), &t)
        .map_err(|_| "authentication failed (wrong key or damaged bytes)")?;
    Ok(at + NONCE_LEN..stored.len() - TAG_LEN)
}

/// Argon2id cost parameters, stored beside every wrapped key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's Argon2id recommendation: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        KdfParams { m_cost: 19 * 1024, t_cost: 2, p_cost: 1 }
    }
}

impl KdfParams {
    /// Deliberately cheap parameters for tests; never for real stores.
    pub fn insecure_fast() -> Self {
        KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 }
    }
}

/// A master key sealed under a passphrase-derived key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Argon2id parameters.
    pub kdf: KdfParams,
    /// 32-byte random salt.
    pub salt: [u8; 32],
    /// `nonce ‖ AES-256-GCM(master key) ‖ tag`, 60 bytes.
    pub sealed: Vec<u8>,
}

fn kdf(passphrase: &[u8], salt: &[u8; 32], p: KdfParams) -> Result<Keys> {
    let params = argon2::Params::new(p.m_cost, p.t_cost, p.p_cost, Some(32))
        .map_err(|e| Error::Crypto(format!("bad Argon2id parameters {p:?}: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(passphrase, salt, &mut out).map_err(|e| Error::Crypto(format!("Argon2id failed: {e}")))?;
    let cipher = Aes256Gcm::new_from_slice(&out).expect("32-byte key");
    Ok(Keys { id_key: None, cipher: Some(cipher), data: DataSeal::BlobKey })
}

/// Wraps `master` under `passphrase`. `aad` binds the wrapped key to its store.
pub fn wrap_master(master: &MasterKey, passphrase: &[u8], kdf_params: KdfParams, aad: &[u8]) -> Result<WrappedKey> {
    let mut salt = [0u8; 32];
    random_bytes(&mut salt)?;
    let k = kdf(passphrase, &salt, kdf_params)?;
    let sealed = k.seal(aad, &master.0)?;
    Ok(WrappedKey { kdf: kdf_params, salt, sealed })
}

/// Unwraps a master key; `None` when the passphrase is wrong (or the wrapped
/// key damaged — the two cannot be told apart by design).
pub fn unwrap_master(w: &WrappedKey, passphrase: &[u8], aad: &[u8]) -> Result<Option<MasterKey>> {
    let k = kdf(passphrase, &w.salt, w.kdf)?;
    match k.open(aad, &w.sealed) {
        Ok(pt) if pt.len() == 32 => {
            let mut m = [0u8; 32];
            m.copy_from_slice(&pt);
            Ok(Some(MasterKey(m)))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = Keys::from_master(&MasterKey([7; 32]));
        let s = k.seal(b"aad", b"hello").unwrap();
        assert_eq!(s.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(k.open(b"aad", &s).unwrap(), b"hello");
        assert!(k.open(b"other", &s).is_err(), "aad must be bound");
        let mut bad = s.clone();
        bad[14] ^= 1;
        assert!(k.open(b"aad", &bad).is_err());
        let other = Keys::from_master(&MasterKey([8; 32]));
        assert!(other.open(b"aad", &s).is_err());
    }

    #[test]
    fn keyed_ids_differ_from_plain() {
        let k = Keys::from_master(&MasterKey([1; 32]));
        assert_ne!(k.hash(b"x"), Keys::unencrypted().hash(b"x"));
        assert_eq!(Keys::unencrypted().hash(b"x").0, *blake3::hash(b"x").as_bytes());
    }

    #[test]
    fn data_sealed_to_the_public_key_opens_with_the_full_key_only() {
        let m = MasterKey([4; 32]);
        let full = Keys::from_master_sealing_data(&m);
        let writer = Keys::from_writer(&WriterKey::from_master(&m));
        let sealed = writer.seal_data(b"aad", b"block").unwrap();
        assert_eq!(sealed.len(), 5 + PUBLIC_SEAL_OVERHEAD);
        assert_eq!(full.open_data(b"aad", &sealed).unwrap(), b"block");
        assert!(!writer.can_read_data() && full.can_read_data());
        assert!(writer.open_data(b"aad", &sealed).is_err(), "the writer cannot read what it wrote");
        assert!(full.open_data(b"other", &sealed).is_err(), "aad must be bound");
        // The blob key and the ids are the same for both: metadata is shared.
        let meta = full.seal(b"m", b"manifest").unwrap();
        assert_eq!(writer.open(b"m", &meta).unwrap(), b"manifest");
        assert_eq!(writer.hash(b"x"), full.hash(b"x"));
        // A format 2 key (blob-key sealing) opens none of it.
        assert!(Keys::from_master(&m).open_data(b"aad", &sealed).is_err());
        // Nor another store's full key.
        assert!(Keys::from_master_sealing_data(&MasterKey([5; 32])).open_data(b"aad", &sealed).is_err());
        for i in [0usize, 33, 50, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(full.open_data(b"aad", &bad).is_err(), "flipped byte {i}");
        }
        // A low-order ephemeral key (all zero) is refused, not used.
        let mut zero = sealed.clone();
        zero[..32].fill(0);
        assert!(full.open_data(b"aad", &zero).is_err());
        assert!(seal_to_public(&[0; 32], [1; 32], [2; 12], b"", b"x").is_err());
    }

    #[test]
    fn wrap_unwrap() {
        let m = MasterKey([3; 32]);
        let w = wrap_master(&m, b"pw", KdfParams::insecure_fast(), b"store").unwrap();
        assert_eq!(unwrap_master(&w, b"pw", b"store").unwrap().unwrap().0, m.0);
        assert!(unwrap_master(&w, b"wrong", b"store").unwrap().is_none());
        assert!(unwrap_master(&w, b"pw", b"other store").unwrap().is_none());
    }
}
