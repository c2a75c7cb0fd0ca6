//! Fuzzes the NBD server half (handshake and transmission) with arbitrary
//! client bytes: a hostile client must get an NBD error or a closed
//! connection, never a panic, a hang or an allocation it chose. (The `nbd`
//! target runs this body too, on server-shaped inputs.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_nbd::fuzz_server_one(data);
});
