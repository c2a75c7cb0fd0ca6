//! Fuzzes what the replication engine reads that it did not write in this
//! process: a sender's state file (damaged on disk, or another version's),
//! and the point names and run descriptions a peer sends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_replicate::fuzz_one(data);
});
