//! The committed `include/alike.h` must equal what cbindgen generates from
//! the source now. Refresh it with `ALIKE_BLESS=1 cargo test -p alike-c --test header`.
#![allow(missing_docs)]

const FRESH: &str = include_str!(concat!(env!("OUT_DIR"), "/alike.h"));
const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include/alike.h");

#[test]
fn committed_header_is_fresh() {
    if std::env::var_os("ALIKE_BLESS").is_some() {
        std::fs::write(COMMITTED, FRESH).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == FRESH,
        "bindings-c/include/alike.h is stale: regenerate it with `ALIKE_BLESS=1 cargo test -p alike-c --test header` and commit it"
    );
}

#[test]
fn header_version_macros_match_the_crate() {
    let want = format!("#define ALIKE_VERSION_STRING \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(FRESH.contains(&want), "cbindgen.toml's version macros differ from the crate version");
}
