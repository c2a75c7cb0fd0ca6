//! Partition tables and filesystems (alike-fs) on arbitrary bytes taken
//! as a disk: the table, each volume's filesystem, every directory from the
//! root, every file's ranges and data, every symlink. Must return, never
//! panic, loop or allocate by what the bytes claim. scripts/test.sh seeds
//! the corpus with small images made by mke2fs and sgdisk.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_fs::fuzz_one(data);
});
