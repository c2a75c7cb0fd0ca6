//! The VHD readers (positional, parent locators, streaming) on arbitrary bytes:
//! must return, never panic, loop or allocate by what the bytes claim.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_formats::vhd::fuzz_one(data);
});
