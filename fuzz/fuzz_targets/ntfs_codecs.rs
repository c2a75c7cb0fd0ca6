//! The NTFS decompressors on arbitrary bytes: LZNT1 (compressed files),
//! XPRESS-Huffman and LZX (CompactOS chunks). The first byte picks the
//! decoder and the output size. Must return, never panic or overrun.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_fs::ntfs::fuzz_codecs(data);
});
