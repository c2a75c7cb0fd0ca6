//! A pack's header, footer and trailer, on arbitrary bytes.
#![no_main]

use alike_ads::{Backend, MemoryBackend, read_trailer};
use alike_core::Keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let be = MemoryBackend::new();
    be.write("packs/aa/p", data).unwrap();
    let _ = read_trailer(&be, "packs/aa/p", &Keys::unencrypted());
});
