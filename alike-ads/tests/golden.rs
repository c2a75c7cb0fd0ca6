//! Golden vectors: fixed keys, nonces and inputs → the exact bytes we write.
//! They pin `docs/format.md`: `testdata/golden-v1.json` what format 1 and 2
//! share and format 1's config and manifest, `testdata/golden-v2.json` what
//! format 2 (content-defined chunking) adds. The Python tests read the same
//! files. Regenerate (only for a deliberate format change) with
//! `ALIKE_BLESS=1`.
#![allow(missing_docs)]

use alike_ads::{
    CreateOptions, KeyObject, MemoryBackend, OpenOptions, PackEntry, PackWriter, Repository, StoreConfig,
    decode_config, decode_manifest, decode_segment, encode_config, encode_manifest, encode_segment, key_aad,
};
use alike_core::backup::{BackupJob, EngineParams};
use alike_core::{
    BlobKind, BlockMap, CdcParams, ChunkId, ChunkLocation, Chunking, Compression, ExtentMap, FrameChunk, FrameRef,
    KdfParams, Keys, Manifest, MasterKey, MemSource, RunOptions, StoredFrame, VmInfo, chunk_in, compress, cut_hash,
    cut_image, decode_frame, frame_aad, unwrap_master, wrap_master,
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
        public_key: None,
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

// --- format 2: content-defined chunking -------------------------------------

const PATH_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/golden-v2.json");
/// Bytes of the cut_image input: 2 MiB and a 1000-byte short last block.
const IMAGE_LEN: usize = (2 << 20) + 1000;
/// Byte ranges of the cut_image input set to zero (see `image`).
const ZERO_RUNS: [(usize, usize); 5] = [
    (10 * 4096, 13 * 4096),   // three aligned blocks
    (200_000, 210_000),       // unaligned: blocks 49 and 50 are holes, 48 and 51 data
    (300 * 4096, 301 * 4096), // one block
    (400 * 4096, 402 * 4096), // blocks 402 and 403 stay data between two holes:
    (404 * 4096, 410 * 4096), //   a chunk shorter than min
];

/// splitmix64 output `k` (seed 0): `z = (k+1)·0x9E3779B97F4A7C15`, then the usual mix.
fn splitmix64(k: u64) -> u64 {
    let mut z = (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The cut_image input: u64 word k (LE, at byte 8k) = splitmix64 output k,
/// truncated to [`IMAGE_LEN`] bytes, then the [`ZERO_RUNS`] zeroed.
fn image() -> Vec<u8> {
    let mut v: Vec<u8> = (0..IMAGE_LEN.div_ceil(8) as u64).flat_map(|k| splitmix64(k).to_le_bytes()).collect();
    v.truncate(IMAGE_LEN);
    for (a, b) in ZERO_RUNS {
        v[a..b].fill(0);
    }
    v
}

/// The window input: [`WINDOW_IMAGE_LEN`] bytes, zero up to
/// [`WINDOW_DATA_FROM`], then the first bytes of [`image`]'s generator.
const WINDOW_IMAGE_LEN: usize = (128 << 20) + 10_000;
const WINDOW_DATA_FROM: usize = (128 << 20) - (48 << 10);

fn window_image() -> Vec<u8> {
    let mut v = vec![0u8; WINDOW_IMAGE_LEN];
    let n = WINDOW_IMAGE_LEN - WINDOW_DATA_FROM;
    let words: Vec<u8> = (0..n.div_ceil(8) as u64).flat_map(|k| splitmix64(k).to_le_bytes()).collect();
    v[WINDOW_DATA_FROM..].copy_from_slice(&words[..n]);
    v
}

/// byte i = (i·31 + 7) mod 251.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

/// `b` with every byte the cut hash does not sample set to zero: of 64-byte
/// line L only the 8-byte word L mod 8 is kept.
fn sample_only(b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; b.len()];
    for l in 0..b.len() / 64 {
        let o = 64 * l + 8 * (l % 8);
        out[o..o + 8].copy_from_slice(&b[o..o + 8]);
    }
    out
}

fn u64_hex(x: u64) -> String {
    format!("{x:016x}")
}

fn params_json(p: &CdcParams) -> Value {
    json!({"min": p.min, "avg": p.avg, "max": p.max})
}

/// The extent map of window 0 of `data` cut with `p`, ids under `keys`.
fn extent_map(data: &[u8], p: &CdcParams, keys: &Keys) -> ExtentMap {
    ExtentMap {
        extents: cut_image(data, p)
            .into_iter()
            .map(|(off, len)| {
                let id = keys.hash(&data[off as usize..(off + len) as usize]);
                ((off / 4096) as u16, len.div_ceil(4096) as u16, id)
            })
            .collect(),
    }
}

fn manifest_v2_json(map0: &ChunkId, data_bytes: u64) -> Value {
    let disk = |position: u32, label: &str, size: u64, data_bytes: u64, maps: Vec<String>| {
        json!({"position": position, "label": label, "size": size, "block_size": 4096, "blocks_per_map": 32768,
               "data_bytes": data_bytes, "read_bytes": size, "new_bytes": data_bytes, "new_stored_bytes": 4000,
               "incremental": false, "fallback_reason": null, "change_token": null,
               "maps": maps, "chunking": {"min": 16384, "avg": 32768, "max": 65536}})
    };
    json!({
        "schema": 2,
        "vm": {"name": "golden-vm", "uuid": null, "hypervisor": "raw", "vcpus": null, "memory_bytes": null,
               "nics": [], "extra": {}},
        "time_ms": 1_790_000_000_000i64, "parent": null, "host": "golden-host",
        "disks": [
            // The cut_image input as a disk: one window, its map the golden extent map.
            disk(0, "image", IMAGE_LEN as u64, data_bytes, vec![map0.to_hex()]),
            // 128 MiB + 4 KiB: two windows, so two maps.
            disk(1, "xvdb", (128 << 20) + 4096, 8192, vec!["01".repeat(32), "02".repeat(32)]),
        ]
    })
}

fn compute_v2() -> Value {
    let enc = Keys::from_master(&MasterKey(MASTER));
    let plain = Keys::unencrypted();
    let default = CdcParams::default();
    let small = CdcParams { min: 4096, avg: 12288, max: 32768 };

    let config = StoreConfig {
        store_id: "00112233445566778899aabbccddeeff".into(),
        created_ms: 1_790_000_000_000,
        block_size: None,
        compression_level: Some(3),
        encryption: "aes-256-gcm".into(),
        pack_size: 32 << 20,
        key_check: Some(enc.hash(b"alike key check v1").to_hex()),
        chunking: Some(default),
        public_key: None,
    };

    let pat = pattern(4096);
    let blocks: Vec<(&str, Vec<u8>)> = vec![
        ("pattern: byte i = (i*31 + 7) % 251, 4096 bytes", pat.clone()),
        ("pattern with every byte outside the sample zeroed (same hash)", sample_only(&pat)),
        ("all 0xff, 4096 bytes", vec![0xff; 4096]),
        ("all zero, 4096 bytes (a hole: never hashed by a backup)", vec![0; 4096]),
        ("pattern, first 1000 bytes (a short last block: tail fold)", pattern(1000)),
        ("pattern, first 130 bytes (one sampled pair, two tail bytes)", pattern(130)),
    ];

    let data = image();
    let map = extent_map(&data, &default, &plain);
    let map_plain = map.encode();
    let map_id = plain.hash(&map_plain);
    let data_bytes: u64 = cut_image(&data, &default).iter().map(|c| c.1).sum();
    let manifest = Manifest::from_json(manifest_v2_json(&map_id, data_bytes).to_string().as_bytes(), "golden").unwrap();
    let manifest_bytes = encode_manifest(&plain, &manifest).unwrap();
    let map_frame = frame(&enc, BlobKind::Map, &[&map_plain]);
    let sizes = [default, small];
    let thresholds: Vec<Value> =
        sizes.iter().map(|p| json!({"chunking": params_json(p), "threshold": u64_hex(p.threshold())})).collect();
    let cuts: Vec<Value> =
        sizes.iter().map(|p| json!({"chunking": params_json(p), "chunks": cut_image(&data, p)})).collect();

    json!({
        "format_version": 2,
        "master_key": hex::encode(MASTER),
        "nonce": hex::encode(NONCE),
        "config": {"chunking": params_json(&default), "bytes": hex::encode(encode_config(&config))},
        "cut_hash": blocks.iter().map(|(what, b)| json!({"input": what, "len": b.len(), "input_blake3": blake3_hex(b), "hash": u64_hex(cut_hash(b))})).collect::<Vec<_>>(),
        "threshold": thresholds,
        "cut_image": {
            "generator": "u64 word k (little-endian, at byte 8k) = splitmix64 output k: z = (k+1)*0x9e3779b97f4a7c15, z = (z ^ z>>30)*0xbf58476d1ce4e5b9, z = (z ^ z>>27)*0x94d049bb133111eb, z ^ z>>31 (mod 2^64); truncated to len bytes; then bytes [a, b) of each zero run set to 0",
            "len": IMAGE_LEN, "zero_runs": ZERO_RUNS, "input_blake3": blake3_hex(&data),
            "cuts": cuts,
        },
        "cut_image_window": {
            "what": "len bytes: zero before data_from, then the first len - data_from bytes of the cut_image generator (before its zero runs); cut with the default chunking, the 128 MiB window boundary (block 32768) ends a chunk",
            "len": WINDOW_IMAGE_LEN, "data_from": WINDOW_DATA_FROM,
            "chunks": cut_image(&window_image(), &default),
        },
        "extent_map": {
            "what": "window 0 of the cut_image input cut with the default chunking; ids: unencrypted (BLAKE3 of each chunk)",
            "window_blocks": data.len().div_ceil(4096), "max_blocks": default.max / 4096,
            "extents": map.extents.iter().map(|(s, n, id)| json!([s, n, id.to_hex()])).collect::<Vec<_>>(),
            "plaintext": hex::encode(&map_plain),
            "id_plain": map_id.to_hex(),
            "id_keyed": enc.hash(&map_plain).to_hex(),
            "frame_sealed": frame_json(&map_frame),
        },
        "manifest_unencrypted": {"json": manifest_v2_json(&map_id, data_bytes), "bytes": hex::encode(&manifest_bytes)},
    })
}

/// Compares `now` with the committed file at `path` key by key, or writes it
/// under `ALIKE_BLESS`; returns the committed vectors.
fn check_or_bless(path: &str, now: &Value) -> Option<Value> {
    if std::env::var_os("ALIKE_BLESS").is_some() {
        std::fs::write(path, serde_json::to_string_pretty(now).unwrap() + "\n").unwrap();
        return None;
    }
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e} (run with ALIKE_BLESS=1 to create)"));
    let want: Value = serde_json::from_str(&text).unwrap();
    for (k, v) in now.as_object().unwrap() {
        assert_eq!(
            &want[k], v,
            "golden vector {k:?} changed: the on-disk format moved (update docs/format.md and bump the version)"
        );
    }
    assert_eq!(want.as_object().unwrap().len(), now.as_object().unwrap().len(), "{path} has vectors no test computes");
    Some(want)
}

#[test]
fn golden_v2_vectors_match() {
    let Some(want) = check_or_bless(PATH_V2, &compute_v2()) else { return };
    let hex_of = |v: &Value| hex::decode(v.as_str().unwrap()).unwrap();

    // The config reads back as what was written: format 2, chunking, no block size.
    let cfg_bytes = hex_of(&want["config"]["bytes"]);
    assert_eq!(&cfg_bytes[8..12], &2u32.to_le_bytes());
    let cfg = decode_config(&cfg_bytes).unwrap();
    assert_eq!((cfg.block_size, cfg.chunking, cfg.format_version()), (None, Some(CdcParams::default()), 2));
    assert_eq!(cfg.chunking(), Chunking::default());

    // The cut hash samples one word per 64-byte line.
    let h = &want["cut_hash"];
    assert_eq!(h[0]["hash"], h[1]["hash"]);

    // The extent map decodes to the extents listed, and they are the cuts.
    let em = &want["extent_map"];
    let window = em["window_blocks"].as_u64().unwrap() as u32;
    let map =
        ExtentMap::decode(&hex_of(&em["plaintext"]), window, em["max_blocks"].as_u64().unwrap() as u32, "g").unwrap();
    let listed: Vec<(u16, u16, String)> = serde_json::from_value(em["extents"].clone()).unwrap();
    assert_eq!(map.extents.iter().map(|(s, n, id)| (*s, *n, id.to_hex())).collect::<Vec<_>>(), listed);
    let cuts: Vec<(u64, u64)> = serde_json::from_value(want["cut_image"]["cuts"][0]["chunks"].clone()).unwrap();
    assert_eq!(map.extents.len(), cuts.len());
    for ((s, n, _), (off, len)) in map.extents.iter().zip(&cuts) {
        assert_eq!((u64::from(*s) * 4096, (u64::from(*n) * 4096).min(IMAGE_LEN as u64 - off)), (*off, *len));
    }

    // The manifest reads back: schema 2 in a version 2 header, geometry checked.
    let plain = Keys::unencrypted();
    let mf = hex_of(&want["manifest_unencrypted"]["bytes"]);
    assert_eq!(&mf[8..12], &2u32.to_le_bytes());
    let m = decode_manifest(&plain, &mf, "g").unwrap();
    assert_eq!(m, Manifest::from_json(want["manifest_unencrypted"]["json"].to_string().as_bytes(), "g").unwrap());
    assert_eq!((m.schema, m.disks[0].chunking, m.disks[1].maps.len()), (2, Some(CdcParams::default()), 2));
    assert_eq!(m.disks[0].maps[0].to_hex(), em["id_plain"].as_str().unwrap());

    // The engine cuts the input as the reference does: a backup of it into an
    // unencrypted content-defined store writes the golden extent map.
    let be = std::sync::Arc::new(MemoryBackend::new());
    let mut c = CreateOptions::default();
    c.encrypted = false;
    Repository::create(be.clone(), &c).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut o = OpenOptions::default();
    o.cache_dir = Some(cache.path().to_owned());
    let repo = Repository::open(be, &o).unwrap();
    let src = MemSource { label: "image".into(), data: image() };
    let wsrc = MemSource { label: "window".into(), data: window_image() };
    let job = BackupJob {
        vm: VmInfo::named("golden-vm"),
        disks: vec![&src, &wsrc],
        parent: None,
        time_ms: 1,
        host: None,
        origin: None,
        no_parent_reason: None,
    };
    let params = EngineParams::with_chunking(repo.config().chunking());
    let (_, backed) = alike_core::backup::backup(&repo, repo.keys(), &params, job, &RunOptions::default()).unwrap();
    assert_eq!(backed.schema, 2);
    assert_eq!(backed.disks[0].maps, m.disks[0].maps);
    assert_eq!(backed.disks[0].data_bytes, m.disks[0].data_bytes);
    let wcuts: Vec<(u64, u64)> = serde_json::from_value(want["cut_image_window"]["chunks"].clone()).unwrap();
    let d = &backed.disks[1];
    assert_eq!(d.maps.len(), 2);
    let got: Vec<(u64, u64)> = (0..d.maps.len())
        .flat_map(|w| alike_core::load_window(&repo, repo.keys(), d, w).unwrap().extents)
        .map(|e| (e.offset, e.len))
        .collect();
    assert_eq!(got, wcuts);
}
