//! Fuzzes the NBD protocol decoders with arbitrary bytes: as a server's
//! stream through the client half (a malicious or broken server must get a
//! clear error, never a panic, a hang or an allocation it chose), then as a
//! client's stream through the server half.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_nbd::fuzz_one(data);
});
