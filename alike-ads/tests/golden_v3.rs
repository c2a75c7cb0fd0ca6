//! Golden vectors of format 3 (write-only keys, `docs/format.md` §3, §4.1,
//! §5.2): fixed master key, ephemeral key and nonce → the exact bytes of the
//! config, the write-only key file and a data frame sealed to the store's
//! public key, pinned by `testdata/golden-v3.json`. The frame is also
//! re-derived here step by step from the document (X25519, HKDF-SHA256,
//! AES-256-GCM) with those crates directly, not through `alike_core`.
//! Regenerate (only for a deliberate format change) with `ALIKE_BLESS=1`.
#![allow(missing_docs)]

use aes_gcm::aead::{Aead, KeyInit, Payload};
use alike_ads::{AnyKeyFile, StoreConfig, WriterKeyFile, decode_config, encode_config};
use alike_core::{
    BlobKind, CdcParams, Compression, FrameRef, Keys, MasterKey, WriterKey, decode_frame, frame_aad, seal_to_public,
    store_public_key,
};
use serde_json::{Value, json};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/golden-v3.json");
const MASTER: [u8; 32] = [0x11; 32];
const EPHEMERAL: [u8; 32] = [0x44; 32];
const NONCE: [u8; 12] = [0x22; 12];
const STORE_ID: &str = "00112233445566778899aabbccddeeff";
const PLAINTEXT: &[u8] = b"alike golden data frame: a chunk a writer may store but never read back";

fn config() -> StoreConfig {
    let full = Keys::from_master(&MasterKey(MASTER));
    StoreConfig {
        store_id: STORE_ID.into(),
        created_ms: 1_790_000_000_000,
        block_size: None,
        compression_level: Some(3),
        encryption: "aes-256-gcm".into(),
        pack_size: 32 << 20,
        key_check: Some(full.hash(b"alike key check v1").to_hex()),
        chunking: Some(CdcParams::default()),
        public_key: Some(hex::encode(store_public_key(&MasterKey(MASTER)))),
    }
}

/// The frame of §5.2, from the document: X25519, HKDF-SHA256, AES-256-GCM.
fn frame_by_hand(aad: &[u8]) -> (Vec<u8>, [u8; 32], [u8; 32], [u8; 32]) {
    let secret = blake3::derive_key("alike 2026-12 store secret key v1", &MASTER);
    let public = x25519_dalek::x25519(secret, x25519_dalek::X25519_BASEPOINT_BYTES);
    let eph_public = x25519_dalek::x25519(EPHEMERAL, x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = x25519_dalek::x25519(EPHEMERAL, public);
    assert_eq!(shared, x25519_dalek::x25519(secret, eph_public), "both ends agree");
    let mut salt = eph_public.to_vec();
    salt.extend_from_slice(&public);
    let mut k = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), &shared).expand(b"alike sealed frame key v1", &mut k).unwrap();
    let ct = aes_gcm::Aes256Gcm::new_from_slice(&k)
        .unwrap()
        .encrypt(&NONCE.into(), Payload { msg: PLAINTEXT, aad })
        .unwrap();
    let mut out = eph_public.to_vec();
    out.extend_from_slice(&NONCE);
    out.extend_from_slice(&ct);
    (out, eph_public, shared, k)
}

fn compute() -> Value {
    let master = MasterKey(MASTER);
    let cfg = encode_config(&config());
    let writer = WriterKey::from_master(&master);
    let key_file = WriterKeyFile::new(STORE_ID, &writer).encode();
    let raw_len = PLAINTEXT.len() as u32;
    let aad = frame_aad(BlobKind::Data, Compression::None, raw_len);
    let stored = seal_to_public(&writer.public_key, EPHEMERAL, NONCE, &aad, PLAINTEXT).unwrap();
    let (by_hand, eph_public, shared, frame_key) = frame_by_hand(&aad);
    assert_eq!(stored, by_hand, "the library seals as docs/format.md §5.2 says");
    json!({
        "master_key": hex::encode(MASTER),
        "store_secret_key": hex::encode(blake3::derive_key("alike 2026-12 store secret key v1", &MASTER)),
        "store_public_key": hex::encode(writer.public_key),
        "id_key": hex::encode(writer.id_key),
        "blob_key": hex::encode(writer.blob_key),
        "config": {"bytes": hex::encode(&cfg)},
        "writer_key_file": {"bytes": hex::encode(&key_file)},
        "data_frame": {
            "kind": 0, "compression": 0, "raw_len": raw_len,
            "plaintext": hex::encode(PLAINTEXT),
            "aad": hex::encode(aad),
            "ephemeral_secret": hex::encode(EPHEMERAL),
            "ephemeral_public": hex::encode(eph_public),
            "shared_secret": hex::encode(shared),
            "frame_key": hex::encode(frame_key),
            "nonce": hex::encode(NONCE),
            "stored": hex::encode(&stored),
        },
    })
}

#[test]
fn golden_v3_vectors_match() {
    let now = compute();
    if std::env::var_os("ALIKE_BLESS").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&now).unwrap() + "\n").unwrap();
        return;
    }
    let text = std::fs::read_to_string(PATH).unwrap_or_else(|e| panic!("{PATH}: {e} (ALIKE_BLESS=1 creates it)"));
    let want: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(want, now, "golden vectors changed: the on-disk format moved (update docs/format.md)");
    let hex_of = |v: &Value| hex::decode(v.as_str().unwrap()).unwrap();

    // The config reads back as format 3, its public key the master key's.
    let cfg_bytes = hex_of(&want["config"]["bytes"]);
    assert_eq!(&cfg_bytes[8..12], &3u32.to_le_bytes());
    let cfg = decode_config(&cfg_bytes).unwrap();
    assert_eq!(cfg.format_version(), 3);
    assert_eq!(cfg.public_key().map(hex::encode), want["store_public_key"].as_str().map(String::from));

    // The key file reads back as a write-only key of this store.
    let kf = hex_of(&want["writer_key_file"]["bytes"]);
    assert_eq!(&kf[..12], b"\x89ALKWK\r\n\x01\0\0\0");
    let AnyKeyFile::Writer(f) = AnyKeyFile::decode(&kf, "g").unwrap() else { panic!("not a writer key file") };
    assert_eq!(f.key("g").unwrap(), WriterKey::from_master(&MasterKey(MASTER)));
    assert_eq!(f.store_id, STORE_ID);

    // The frame opens with the full key, not with the writer's, nor with
    // the format 2 keys of the same master key.
    let stored = hex_of(&want["data_frame"]["stored"]);
    let at = FrameRef {
        container: [0; 32],
        offset: 0,
        stored_len: stored.len() as u32,
        raw_len: PLAINTEXT.len() as u32,
        kind: BlobKind::Data,
        compression: Compression::None,
    };
    let m = MasterKey(MASTER);
    assert_eq!(decode_frame(&Keys::from_master_sealing_data(&m), &at, &stored).unwrap(), PLAINTEXT);
    let e = decode_frame(&Keys::from_writer(&WriterKey::from_master(&m)), &at, &stored).unwrap_err();
    assert_eq!(e.kind(), alike_core::ErrorKind::WriteOnlyKey, "{e}");
    assert!(decode_frame(&Keys::from_master(&m), &at, &stored).is_err());
}

mod mutations {
    //! The fuzz target `key_files` as a stable smoke test: mutations of the
    //! golden key file and frame are refused, never accepted and never a panic.
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn a_changed_key_file_or_frame_is_refused(at in 0usize..4096, bit in 0u8..8, cut in 0usize..4096) {
            let m = MasterKey(MASTER);
            let good = WriterKeyFile::new(STORE_ID, &WriterKey::from_master(&m)).encode();
            let mut bad = good.clone();
            let i = at % bad.len();
            bad[i] ^= 1 << bit;
            prop_assert!(AnyKeyFile::decode(&bad, "p").is_err(), "a flipped bit at {} was accepted", i);
            prop_assert!(AnyKeyFile::decode(&good[..cut % good.len()], "p").is_err());

            let aad = frame_aad(BlobKind::Data, Compression::None, PLAINTEXT.len() as u32);
            let stored = seal_to_public(&WriterKey::from_master(&m).public_key, EPHEMERAL, NONCE, &aad, PLAINTEXT).unwrap();
            let mut bad = stored.clone();
            let i = at % bad.len();
            bad[i] ^= 1 << bit;
            let at_ref = FrameRef {
                container: [0; 32], offset: 0, stored_len: bad.len() as u32, raw_len: PLAINTEXT.len() as u32,
                kind: BlobKind::Data, compression: Compression::None,
            };
            prop_assert!(decode_frame(&Keys::from_master_sealing_data(&m), &at_ref, &bad).is_err());
            let short = &stored[..cut % stored.len()];
            let short_ref = FrameRef { stored_len: short.len() as u32, ..at_ref };
            prop_assert!(decode_frame(&Keys::from_master_sealing_data(&m), &short_ref, short).is_err());
        }
    }
}
