//! Fuzzes the processor protocol as an orchestrator meets it: a worker's
//! output (untrusted: the processor may be compromised) through the bounded
//! line decoder, the message decoders and the orchestrator's state machine.
//! Any bytes must give events or a clear error, never a panic, a hang or an
//! allocation larger than the line bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_remote::protocol::fuzz_one(data);
});
