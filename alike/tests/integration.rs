//! Integration tests of the `alike` facade: one binary, a module per feature.
#![allow(unreachable_pub, missing_docs)]

mod integration {
    mod bad_input;
    mod cdc;
    mod dedup;
    mod ext4;
    mod files;
    mod formats;
    mod hypervisor;
    mod incremental;
    mod limits;
    mod maintenance;
    mod matrix;
    mod nbd;
    mod nbd_tls;
    mod processor;
    mod replicate;
    mod roundtrip;
    mod s3;
    mod schema;
    mod util;
    mod vault;
    mod verify;
    mod writer_keys;
}
