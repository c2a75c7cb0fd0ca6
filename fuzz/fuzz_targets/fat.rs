//! The FAT12/16/32 reader on arbitrary bytes: open, list the root and the
//! directories under it, read the start and end of every file.
//! Seeds: small mkfs.vfat/mcopy images in fuzz/corpus/fat (the `fuzz_seeds`
//! test with `FS_FUZZ_SEEDS=fuzz/corpus`), then
//! `cargo +nightly fuzz run fat -- -max_total_time=600`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_fs::fat::fuzz_one(data);
});
