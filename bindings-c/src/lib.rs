//! # libalike — the C ABI of alike
//!
//! Only the version query exists so far; the store API (opaque handles,
//! result codes, `alike_last_error_message`, progress callbacks, a
//! cbindgen-generated `alike.h`) is issue 6.

use std::ffi::{CStr, c_char};

static VERSION: &CStr = c"0.1.0";

/// The library version as a NUL-terminated UTF-8 string with static lifetime.
#[unsafe(no_mangle)]
pub extern "C" fn alike_version() -> *const c_char {
    VERSION.as_ptr()
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_matches_the_crate() {
        assert_eq!(super::VERSION.to_str().unwrap(), alike::VERSION);
    }
}
