//! The NTFS reader on arbitrary bytes: open, list the root and the
//! directories under it, read the start and end of every file, follow links.
//! Seeds (random bytes are never NTFS): `bash scripts/test.sh` writes small
//! mkntfs/ntfs-3g images to fuzz/corpus/ntfs (the `fuzz_seeds` test with
//! `FS_FUZZ_SEEDS=fuzz/corpus`), then
//! `cargo +nightly fuzz run ntfs -- -max_total_time=600`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_fs::ntfs::fuzz_one(data);
});
