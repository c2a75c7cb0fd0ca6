//! WS-Management replies on arbitrary bytes: every SOAP decoder of the
//! Hyper-V client (enumerate, pull, get, invoke, identify, faults), the
//! `multipart/encrypted` body parser with NTLM unsealing, and the NTLM
//! CHALLENGE parser. Seeds: real replies of the simulator, written by
//! `WSMAN_FUZZ_SEEDS=$PWD/fuzz/corpus/wsman cargo test -p alike-hyperv --test wsman fuzz_smoke`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_hyperv::wsman::fuzz_one(data);
});
