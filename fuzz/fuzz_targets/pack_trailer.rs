//! A pack's header, footer and trailer, on arbitrary bytes (the pure
//! decoders: no backend).
#![no_main]

use alike_ads::decode_pack_trailer;
use alike_core::Keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_pack_trailer(data, &Keys::unencrypted(), "packs/aa/p");
});
