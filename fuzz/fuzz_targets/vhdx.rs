//! A VHDX image on arbitrary bytes: headers, log replay, regions, metadata,
//! BAT, sector bitmaps, and reads of everything it claims (bounded).
//! Seeds (valid images are over 3 MiB, so start from them):
//! `VHDX_FUZZ_SEEDS=$PWD/fuzz/corpus/vhdx cargo test -p alike-formats --test vhdx_qemu fuzz_smoke`,
//! then `cargo +nightly fuzz run vhdx -- -max_len=12000000 -max_total_time=300`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_formats::vhdx::fuzz_one(data);
});
