//! Key files of both kinds (`KF` full, `WK` write-only) and data frames
//! sealed to a store's public key (format 3), on arbitrary bytes: must
//! return, never panic. A frame's first 32 bytes are an untrusted X25519
//! point (low-order ones included).
#![no_main]

use alike_core::{BlobKind, Compression, FrameRef, Keys, MasterKey, WriterKey, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(alike_ads::AnyKeyFile::Writer(f)) = alike_ads::AnyKeyFile::decode(data, "fuzz") {
        let _ = f.key("fuzz");
    }
    let _ = alike_ads::WriterKeyFile::decode(data, "fuzz");
    let _ = alike_ads::decode_config(data);
    let m = MasterKey([7; 32]);
    for keys in [Keys::from_master_sealing_data(&m), Keys::from_writer(&WriterKey::from_master(&m))] {
        for kind in [BlobKind::Data, BlobKind::Map] {
            let f = FrameRef {
                container: [0; 32],
                offset: 0,
                stored_len: data.len() as u32,
                raw_len: data.len() as u32,
                kind,
                compression: Compression::None,
            };
            let _ = decode_frame(&keys, &f, data);
        }
    }
});
