//! Python exceptions mirroring [`alike::ErrorKind`]: `alike.Error` and one
//! subclass per kind, each with `kind` (a string) and the full message.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(alike, Error, PyException, "Any failure of the alike engine; `kind` names the class of failure.");
create_exception!(alike, WrongPassphrase, Error, "The passphrase or key file does not unlock the store.");
create_exception!(alike, PassphraseRequired, Error, "An encrypted store was opened without a passphrase or key file.");
create_exception!(alike, NotAStore, Error, "No store at that location.");
create_exception!(alike, AlreadyExists, Error, "A store already exists there.");
create_exception!(alike, NotFound, Error, "A version, VM, disk or object does not exist.");
create_exception!(alike, Corruption, Error, "Stored data is damaged.");
create_exception!(alike, UnsupportedVersion, Error, "An object has a format version this build does not read.");
create_exception!(alike, Cancelled, Error, "The operation was cancelled.");
create_exception!(alike, InvalidArgument, Error, "A bad argument.");
create_exception!(alike, IoError, Error, "Reading a source, writing a target, or the store's files failed.");
create_exception!(alike, Busy, Error, "Another process holds a lock that excludes this operation.");
create_exception!(alike, BadImage, Error, "An input disk image (VHD, VHDX) is malformed or unsupported.");

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("WrongPassphrase", py.get_type::<WrongPassphrase>())?;
    m.add("PassphraseRequired", py.get_type::<PassphraseRequired>())?;
    m.add("NotAStore", py.get_type::<NotAStore>())?;
    m.add("AlreadyExists", py.get_type::<AlreadyExists>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("Corruption", py.get_type::<Corruption>())?;
    m.add("UnsupportedVersion", py.get_type::<UnsupportedVersion>())?;
    m.add("Cancelled", py.get_type::<Cancelled>())?;
    m.add("InvalidArgument", py.get_type::<InvalidArgument>())?;
    m.add("IoError", py.get_type::<IoError>())?;
    m.add("Busy", py.get_type::<Busy>())?;
    m.add("BadImage", py.get_type::<BadImage>())?;
    Ok(())
}

/// The message of `e` with its causes, as the CLI prints it.
fn message(e: &alike::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        src = c.source();
    }
    s
}

/// The Python exception for a facade error.
pub(crate) fn to_py(e: alike::Error) -> PyErr {
    use alike::ErrorKind as K;
    let msg = message(&e);
    let (err, kind) = match e.kind() {
        K::WrongPassphrase => (WrongPassphrase::new_err(msg), "wrong_passphrase"),
        K::PassphraseRequired => (PassphraseRequired::new_err(msg), "passphrase_required"),
        K::NotAStore => (NotAStore::new_err(msg), "not_a_store"),
        K::AlreadyExists => (AlreadyExists::new_err(msg), "already_exists"),
        K::NotFound => (NotFound::new_err(msg), "not_found"),
        K::Corruption => (Corruption::new_err(msg), "corruption"),
        K::UnsupportedVersion => (UnsupportedVersion::new_err(msg), "unsupported_version"),
        K::Cancelled => (Cancelled::new_err(msg), "cancelled"),
        K::InvalidArgument => (InvalidArgument::new_err(msg), "invalid_argument"),
        K::Io => (IoError::new_err(msg), "io"),
        K::Busy => (Busy::new_err(msg), "busy"),
        K::BadImage => (BadImage::new_err(msg), "bad_image"),
        _ => (Error::new_err(msg), "other"),
    };
    Python::attach(|py| {
        // Setting an attribute on a fresh exception object cannot fail in practice;
        // if it did, the exception would still carry its class and message.
        let _ = err.value(py).setattr("kind", kind);
    });
    err
}
