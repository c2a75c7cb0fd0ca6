//! The integration tests of alike-repl, one binary: the two machines over
//! in-memory links (`memory`), the pipelining property under a simulated
//! round trip (`pipelining`), the golden vectors (`golden`) and the TCP
//! shell over 127.0.0.1 (`net`).
#![allow(unreachable_pub, missing_docs)]
// Offers take a list of ranges; many tests offer one.
#![allow(clippy::single_range_in_vec_init)]

mod integration {
    mod golden;
    mod memory;
    mod net;
    mod pipelining;
    mod util;
}
