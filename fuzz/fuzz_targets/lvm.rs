//! Fuzzes the LVM2 reader: labels, PV headers, metadata area headers and
//! metadata text (served from valid physical volumes, so the parser and
//! the volume mapping are reached without finding checksums), then reads
//! every logical volume found. A hostile image must give an error, never a
//! panic, a hang or an allocation it chose.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alike_fs::lvm::fuzz_one(data);
});
