//! Fuzzes the NBD client's protocol decoders (handshake and transmission)
//! with arbitrary server bytes: a malicious or broken server must get a
//! clear error, never a panic, a hang or an allocation it chose.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_nbd::fuzz_one(data);
});
