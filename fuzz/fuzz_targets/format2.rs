//! Store format 2's decoders (docs/format.md §3, §8): extent maps with any
//! window and longest extent, and config and manifest bodies inside valid
//! envelopes (a right checksum, a zstd frame, header versions 1 and 2), so
//! that the JSON and its validation are reached, not only the envelope.
//! Must return, never panic; what decodes must satisfy what readers rely on.
#![no_main]

use alike_ads::{ObjectKind, decode_config, decode_manifest, encode_config, header_v};
use alike_core::{CDC_BLOCK, CDC_WINDOW_BLOCKS, ExtentMap, Keys, Manifest};
use libfuzzer_sys::fuzz_target;

/// Valid bodies the input edits (a fuzzer rarely writes a whole valid
/// document itself): configs of format 1 and 2, manifests of schema 1 and 2.
const BASES: [&str; 4] = [
    r#"{"store_id":"00112233445566778899aabbccddeeff","created_ms":1,"compression_level":3,"encryption":"none","pack_size":33554432,"key_check":null,"chunking":{"min":16384,"avg":32768,"max":65536}}"#,
    r#"{"store_id":"00112233445566778899aabbccddeeff","created_ms":1,"block_size":65536,"compression_level":null,"encryption":"aes-256-gcm","pack_size":33554432,"key_check":"00"}"#,
    r#"{"schema":2,"vm":{"name":"v","uuid":null,"hypervisor":"raw","vcpus":null,"memory_bytes":null,"nics":[],"extra":{}},"time_ms":1,"parent":null,"host":null,"disks":[{"position":0,"label":"a","size":134221824,"block_size":4096,"blocks_per_map":32768,"data_bytes":0,"read_bytes":0,"new_bytes":0,"new_stored_bytes":0,"incremental":false,"fallback_reason":null,"change_token":null,"maps":["0101010101010101010101010101010101010101010101010101010101010101","0202020202020202020202020202020202020202020202020202020202020202"],"chunking":{"min":16384,"avg":32768,"max":65536}}]}"#,
    r#"{"schema":1,"vm":{"name":"v","uuid":null,"hypervisor":"raw","vcpus":null,"memory_bytes":null},"time_ms":1,"parent":null,"host":null,"disks":[{"position":0,"label":"a","size":65537,"block_size":65536,"blocks_per_map":4096,"data_bytes":0,"read_bytes":0,"new_bytes":0,"new_stored_bytes":0,"incremental":false,"fallback_reason":null,"change_token":null,"maps":["0101010101010101010101010101010101010101010101010101010101010101"]}]}"#,
];

/// `base` with `data[4..]` spliced in: `data[0]` picks the base, `data[1..3]`
/// the offset, `data[3]` how many bytes to remove there.
fn splice(data: &[u8]) -> Option<Vec<u8>> {
    let [which, o0, o1, del, ins @ ..] = data else { return None };
    let base = BASES[usize::from(*which) % BASES.len()].as_bytes();
    let at = usize::from(u16::from_le_bytes([*o0, *o1])) % (base.len() + 1);
    let end = (at + usize::from(*del)).min(base.len());
    Some([&base[..at], ins, &base[end..]].concat())
}

fn config_object(version: u32, json: &[u8]) -> Vec<u8> {
    let mut out = header_v(ObjectKind::Config, version).to_vec();
    out.extend_from_slice(json);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn manifest_object(version: u32, json: &[u8]) -> Vec<u8> {
    let mut out = header_v(ObjectKind::Manifest, version).to_vec();
    out.extend_from_slice(&zstd::bulk::compress(json, 1).expect("compresses"));
    out
}

/// What every reader relies on once a manifest decoded.
fn check_manifest(m: &Manifest, version: Option<u32>) {
    assert!((1..=2).contains(&m.schema));
    if let Some(v) = version {
        assert_eq!(m.schema, v);
    }
    for d in &m.disks {
        assert_eq!(d.maps.len() as u64, d.window_count());
        if let Some(p) = d.chunking {
            assert!(m.schema == 2 && p.validate().is_ok() && d.block_size == CDC_BLOCK);
            // Extent starts are u16 block counts from the window's start.
            assert!(d.blocks_per_map >= 1 && d.blocks_per_map <= 1 << 16);
        }
        for w in 0..d.maps.len() {
            let r = d.window_range(w);
            assert!(r.start < r.end && r.end <= d.size);
        }
    }
}

fn bodies(json: &[u8]) {
    for v in [1, 2] {
        if let Ok(c) = decode_config(&config_object(v, json)) {
            assert_eq!(c.format_version(), v);
            assert!(c.chunking().validate().is_ok());
            assert_eq!(decode_config(&encode_config(&c)).expect("re-encoded config decodes"), c);
        }
        if let Ok(m) = decode_manifest(&Keys::unencrypted(), &manifest_object(v, json), "fuzz") {
            check_manifest(&m, Some(v));
        }
    }
    if let Ok(m) = Manifest::from_json(json, "fuzz") {
        check_manifest(&m, None);
    }
}

fuzz_target!(|data: &[u8]| {
    // Extent maps: the first 8 bytes choose the window and the longest extent.
    if let Some((sizes, map)) = data.split_first_chunk::<8>() {
        let window = u32::from_le_bytes(sizes[..4].try_into().expect("4 bytes"));
        let max = u32::from_le_bytes(sizes[4..].try_into().expect("4 bytes"));
        for (window, max) in [(window, max), (window % (CDC_WINDOW_BLOCKS + 1), max % 257), (CDC_WINDOW_BLOCKS, 16)] {
            if let Ok(m) = ExtentMap::decode(map, window, max, "fuzz") {
                assert_eq!(m.encode(), map, "a decoded map encodes back to its bytes");
                let mut end = 0u32;
                for &(s, n, _) in &m.extents {
                    assert!(n >= 1 && u32::from(n) <= max && u32::from(s) >= end);
                    end = u32::from(s) + u32::from(n);
                    assert!(end <= window);
                }
            }
        }
    }
    bodies(data);
    if let Some(json) = splice(data) {
        bodies(&json);
    }
});
