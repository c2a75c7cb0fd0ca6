//! Small files the daemon reads (credential files): bounded, so a file
//! named by mistake (a disk image) fails clearly instead of filling memory.

use std::path::Path;

use crate::error::{Error, Result};

/// The largest credential file read (1 MiB).
pub(crate) const MAX_FILE: u64 = 1 << 20;

/// Reads a small file whole (at most [`MAX_FILE`] bytes).
pub(crate) fn read_small(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(what, path, e))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE + 1).read_to_end(&mut buf).map_err(|e| Error::io(what, path, e))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(Error::config(path, format!("{what} is larger than {MAX_FILE} bytes")));
    }
    Ok(buf)
}
