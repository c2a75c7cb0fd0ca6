//! Golden vectors: fixed keys, nonces and inputs → the exact bytes we write.
//! They pin `docs/format.md`; the Python and C tests read the same file.
//! Regenerate (only for a deliberate format change) with `ALIKE_BLESS=1`.
#![allow(missing_docs)]

use alike_ads::{
    KeyObject, PackEntry, PackWriter, StoreConfig, decode_config, decode_manifest, decode_segment, encode_config,
    encode_manifest, encode_segment, key_aad,
};
use alike_core::{
    BlobKind, BlockMap, ChunkId, ChunkLocation, Compression, FrameChunk, FrameRef, KdfParams, Keys, Manifest,
    MasterKey, StoredFrame, chunk_in, compress, decode_frame, frame_aad, unwrap_master, wrap_master,
};
use serde_json::{Value, json};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/golden-v1.json");
const MASTER: [u8; 32] = [0x11; 32];
const NONCE: [u8; 12] = [0x22; 12];

fn block(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"alike golden block "[i % 19] ^ (i / 4096) as u8).collect()
}

/// A frame of `chunks` sealed with the fixed nonce (the library draws a random one).
fn frame(keys: &Keys, kind: BlobKind, chunks: &[&[u8]]) -> StoredFrame {
    let mut plain = Vec::new();
    let mut meta = Vec::new();
    for c in chunks {
        meta.push(FrameChunk { id: keys.hash(c), offset: plain.len() as u32, len: c.len() as u32 });
        plain.extend_from_slice(c);
    }
    let z = compress(&plain, 3);
    let compression = if z.is_some() { Compression::Zstd } else { Compression::None };
    let payload = z.unwrap_or_else(|| plain.clone());
    let raw_len = plain.len() as u32;
    let bytes = keys.seal_with_nonce(&frame_aad(kind, compression, raw_len), &payload, NONCE);
    let f = StoredFrame { kind, compression, raw_len, chunks: meta, bytes };
    // What we wrote must read back.
    let at = FrameRef { container: [0; 32], offset: 0, stored_len: f.bytes.len() as u32, raw_len, kind, compression };
    let opened = decode_frame(keys, &at, &f.bytes).unwrap();
    for (c, want) in f.chunks.iter().zip(chunks) {
        assert_eq!(
            chunk_in(keys, &opened, &ChunkLocation { frame: at, offset: c.offset, len: c.len }, &c.id).unwrap(),
            *want
        );
    }
    f
}

fn frame_json(f: &StoredFrame) -> Value {
    json!({"kind": f.kind.code(), "compression": f.compression as u8, "raw_len": f.raw_len,
           "chunks": f.chunks.iter().map(|c| json!({"id": c.id.to_hex(), "offset": c.offset, "len": c.len})).collect::<Vec<_>>(),
           "stored": hex::encode(&f.bytes)})
}

fn manifest_json() -> Value {
    json!({
        "schema": 1,
        "vm": {"name": "golden-vm", "uuid": "6f1e0c2a-0000-4000-8000-000000000001", "hypervisor": "xen",
               "vcpus": 2, "memory_bytes": 2147483648u64,
               "nics": [{"device": "0", "network": "net-a", "mac": "aa:bb:cc:dd:ee:ff"}], "extra": {"boot": "cd"}},
        "time_ms": 1_790_000_000_000i64, "parent": null, "host": "golden-host",
        "disks": [{"position": 0, "label": "xvda", "size": 200000, "block_size": 65536, "blocks_per_map": 4096,
                   "data_bytes": 131072, "read_bytes": 200000, "new_bytes": 131072, "new_stored_bytes": 4000,
                   "incremental": false, "fallback_reason": null, "change_token": "0102",
                   "maps": ["00".repeat(32)]}]
    })
}

fn compute() -> Value {
    let enc = Keys::from_master(&MasterKey(MASTER));
    let plain = Keys::unencrypted();
    let (a, b) = (block(65536), block(65536 + 4096)[4096..].to_vec());
    let sealed = frame(&enc, BlobKind::Data, &[&a, &b]);
    let plain_frame = frame(&plain, BlobKind::Data, &[&a, &b]);

    let map = BlockMap { entries: vec![Some(ChunkId([1; 32])), None, None, Some(ChunkId([2; 32])), None] };

    // An unencrypted pack of two blobs (a sealed pack's trailer nonce is random).
    let dir = tempfile::tempdir().unwrap();
    let mut w = PackWriter::with_salt(dir.path(), [0x33; 16]).unwrap();
    let b1 = frame(&plain, BlobKind::Data, &[&block(1000), &block(700)]);
    let b2 = frame(&plain, BlobKind::Map, &[&map.encode()]);
    w.add(&b1).unwrap();
    w.add(&b2).unwrap();
    let fp = w.finish(&plain).unwrap();
    let pack = std::fs::read(&fp.path).unwrap();
    assert_eq!(*blake3::hash(&pack).as_bytes(), fp.id);
    let segment = encode_segment(&plain, &[(fp.id, fp.entries.clone())]).unwrap();
    assert_eq!(decode_segment(&plain, &segment, "g").unwrap()[0].1, fp.entries);

    let config = StoreConfig {
        store_id: "00112233445566778899aabbccddeeff".into(),
        created_ms: 1_790_000_000_000,
        block_size: Some(65536),
        compression_level: Some(3),
        encryption: "aes-256-gcm".into(),
        pack_size: 32 << 20,
        key_check: Some(enc.hash(b"alike key check v1").to_hex()),
        chunking: None,
    };
    let manifest = Manifest::from_json(manifest_json().to_string().as_bytes(), "golden").unwrap();
    let manifest_bytes = encode_manifest(&plain, &manifest).unwrap();

    json!({
        "format_version": 1,
        "master_key": hex::encode(MASTER),
        "nonce": hex::encode(NONCE),
        "chunk_id_plain": {"input": "616c696b65", "id": plain.hash(b"alike").to_hex()},
        "chunk_id_keyed": {"input": "616c696b65", "id": enc.hash(b"alike").to_hex()},
        "frame_inputs": {"generator": "chunk i of n bytes: byte j = b\"alike golden block \"[j % 19] ^ (j / 4096); chunk 2 starts at j = 4096",
                         "chunk_blake3": [blake3_hex(&a), blake3_hex(&b)], "zstd_level": 3},
        "frame_sealed": frame_json(&sealed),
        "frame_plain": frame_json(&plain_frame),
        "block_map": {"entries": map.entries.iter().map(|e| e.map(|i| i.to_hex())).collect::<Vec<_>>(), "encoded": hex::encode(map.encode())},
        "pack_unencrypted": {"id": hex::encode(fp.id), "bytes": hex::encode(&pack),
                             "entries": fp.entries.iter().map(|e| json!({"id": e.id.to_hex(), "kind": e.kind.code(), "compression": e.compression as u8,
                                 "frame_offset": e.frame_offset, "frame_stored_len": e.frame_stored_len, "frame_raw_len": e.frame_raw_len,
                                 "chunk_offset": e.chunk_offset, "chunk_len": e.chunk_len})).collect::<Vec<_>>()},
        "index_segment_unencrypted": {"bytes": hex::encode(&segment)},
        "config": {"bytes": hex::encode(encode_config(&config))},
        "manifest_unencrypted": {"json": manifest_json(), "bytes": hex::encode(&manifest_bytes)},
    })
}

fn blake3_hex(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

#[test]
fn golden_vectors_match() {
    let now = compute();
    if std::env::var_os("ALIKE_BLESS").is_some() {
        let mut v = now.clone();
        // Key objects carry a random salt and nonce: generated once, then only read.
        let ko = KeyObject::new(
            &wrap_master(
                &MasterKey(MASTER),
                b"golden passphrase",
                KdfParams::insecure_fast(),
                &key_aad("00112233445566778899aabbccddeeff"),
            )
            .unwrap(),
            1_790_000_000_000,
            None,
        );
        v["key_object"] = json!({"passphrase": "golden passphrase", "store_id": "00112233445566778899aabbccddeeff", "bytes": hex::encode(ko.encode())});
        std::fs::write(PATH, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
        return;
    }
    let text = std::fs::read_to_string(PATH).expect("testdata/golden-v1.json (run with ALIKE_BLESS=1 to create)");
    let want: Value = serde_json::from_str(&text).unwrap();
    for (k, v) in now.as_object().unwrap() {
        assert_eq!(
            &want[k], v,
            "golden vector {k:?} changed: the on-disk format moved (update docs/format.md and bump the version)"
        );
    }
    // What is stored must also read back with today's code.
    let plain = Keys::unencrypted();
    let cfg = decode_config(&hex::decode(want["config"]["bytes"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(cfg.block_size, Some(65536));
    let m =
        decode_manifest(&plain, &hex::decode(want["manifest_unencrypted"]["bytes"].as_str().unwrap()).unwrap(), "g")
            .unwrap();
    assert_eq!(m.vm.name, "golden-vm");
    let ko_bytes = hex::decode(want["key_object"]["bytes"].as_str().unwrap()).unwrap();
    let ko = KeyObject::decode(&ko_bytes, "keys/golden").unwrap();
    let m =
        unwrap_master(&ko.wrapped("k").unwrap(), b"golden passphrase", &key_aad("00112233445566778899aabbccddeeff"))
            .unwrap()
            .unwrap();
    assert_eq!(m.0, MASTER);
    let e: Vec<PackEntry> = decode_segment(
        &plain,
        &hex::decode(want["index_segment_unencrypted"]["bytes"].as_str().unwrap()).unwrap(),
        "g",
    )
    .unwrap()[0]
        .1
        .clone();
    assert_eq!(e.len(), 3);
}
