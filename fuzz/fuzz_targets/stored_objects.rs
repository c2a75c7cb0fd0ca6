//! Every decoder of store objects, on arbitrary bytes: must return, never panic.
#![no_main]

use alike_core::{BlockMap, Keys, MasterKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = BlockMap::decode(data, "fuzz");
    for k in [Keys::unencrypted(), Keys::from_master(&MasterKey([7; 32]))] {
        let _ = alike_ads::decode_segment(&k, data, "fuzz");
        let _ = alike_ads::decode_manifest(&k, data, "fuzz");
    }
    let _ = alike_ads::decode_config(data);
    let _ = alike_ads::KeyObject::decode(data, "fuzz");
    let _ = alike_ads::KeyFile::decode(data, "fuzz");
    let _ = alike_core::Manifest::from_json(data, "fuzz");
});
