//! Fuzzes the replication protocol: the message decoders on raw bytes; the
//! preamble, Noise handshake and record layer of both machines against a
//! peer without the secret; and both state machines against an
//! *authenticated* peer that sends arbitrary messages. A broken or hostile
//! peer must get a clear error, never a panic, a hang or an allocation it
//! chose.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_repl::fuzz_one(data);
});
