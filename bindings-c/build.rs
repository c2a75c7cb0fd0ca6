//! Generates `alike.h` with cbindgen into OUT_DIR; `tests/header.rs` fails
//! when the committed `include/alike.h` differs from it.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("alike.h");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("bindings-c/cbindgen.toml");
    cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate alike.h")
        .write_to_file(out);
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
}
