//! Object headers: every object starts with an 8-byte magic and a u32 LE
//! format version. See `docs/format.md`.
//!
//! The magics are `0x89 'A' 'L' 'K' k0 k1 '\r' '\n'`: the high-bit first
//! byte exposes 7-bit transports, the CR LF pair exposes newline conversion
//! (as PNG's signature does). **Do not edit** — stored objects carry them.

use crate::{Error, Result};

/// The newest format version this build writes and reads. Version 2
/// (content-defined chunking) changed `config` and version manifests only;
/// version 3 (write-only keys) changed `config` and the sealing of data
/// frames; every other object kind is still written as version 1.
pub const FORMAT_VERSION: u32 = 3;
/// Bytes of magic + version at the start of every object.
pub const HEADER_LEN: usize = 12;

/// The kinds of object, by magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// `config`.
    Config,
    /// `keys/…`: a master key wrapped by a passphrase.
    Key,
    /// A key file exported for the user (not kept in the store).
    KeyFile,
    /// A write-only key file (format 3 stores; not kept in the store).
    WriterKeyFile,
    /// `packs/…`.
    Pack,
    /// `index/…`.
    Index,
    /// `versions/…`.
    Manifest,
    /// `verifications/…`: when and how a version was verified.
    Verification,
    /// `locks/…`: who is working on the store.
    Lock,
    /// `gc/…`: packs a GC condemned, to delete in a later run.
    Condemned,
    /// `pins/…`: a version no retention policy removes.
    Pin,
    /// A copy-on-write overlay of an NBD export (a local file of the user's,
    /// not in the store).
    Overlay,
}

impl ObjectKind {
    /// The two kind letters.
    pub const fn letters(self) -> [u8; 2] {
        match self {
            ObjectKind::Config => *b"CF",
            ObjectKind::Key => *b"KY",
            ObjectKind::KeyFile => *b"KF",
            ObjectKind::WriterKeyFile => *b"WK",
            ObjectKind::Pack => *b"PK",
            ObjectKind::Index => *b"IX",
            ObjectKind::Manifest => *b"MF",
            ObjectKind::Verification => *b"VF",
            ObjectKind::Lock => *b"LK",
            ObjectKind::Condemned => *b"GC",
            ObjectKind::Pin => *b"PN",
            ObjectKind::Overlay => *b"OV",
        }
    }
    /// The 8-byte magic.
    pub const fn magic(self) -> [u8; 8] {
        let l = self.letters();
        [0x89, b'A', b'L', b'K', l[0], l[1], b'\r', b'\n']
    }
    /// Whether objects of this kind carry a key (wrapped or not): their
    /// bytes never appear in an error.
    pub const fn secret(self) -> bool {
        matches!(self, ObjectKind::Key | ObjectKind::KeyFile | ObjectKind::WriterKeyFile)
    }
    /// The header versions this build reads for objects of this kind.
    pub const fn versions(self) -> std::ops::RangeInclusive<u32> {
        match self {
            ObjectKind::Config => 1..=3,
            ObjectKind::Manifest => 1..=2,
            _ => 1..=1,
        }
    }
    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Key => "key",
            ObjectKind::KeyFile => "key file",
            ObjectKind::WriterKeyFile => "write-only key file",
            ObjectKind::Pack => "pack",
            ObjectKind::Index => "index segment",
            ObjectKind::Manifest => "version manifest",
            ObjectKind::Verification => "verification record",
            ObjectKind::Lock => "lock",
            ObjectKind::Condemned => "GC condemnation record",
            ObjectKind::Pin => "pin",
            ObjectKind::Overlay => "NBD write overlay",
        }
    }
}

/// The 12-byte header of an object of `kind`, format version 1.
pub fn header(kind: ObjectKind) -> [u8; HEADER_LEN] {
    header_v(kind, 1)
}

/// The 12-byte header of an object of `kind` at format `version`.
pub fn header_v(kind: ObjectKind, version: u32) -> [u8; HEADER_LEN] {
    debug_assert!(kind.versions().contains(&version));
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&kind.magic());
    h[8..].copy_from_slice(&version.to_le_bytes());
    h
}

/// Checks the header of `bytes` and returns the body after it.
///
/// # Errors
/// [`Error::Truncated`], [`Error::BadMagic`], [`Error::UnsupportedVersion`],
/// [`Error::UpgradeRequired`].
pub fn check_header<'a>(bytes: &'a [u8], kind: ObjectKind, object: &str) -> Result<&'a [u8]> {
    check_header_version(bytes, kind, object).map(|(_, body)| body)
}

/// Like [`check_header`], and also returns the object's format version.
///
/// # Errors
/// As [`check_header`].
pub fn check_header_version<'a>(bytes: &'a [u8], kind: ObjectKind, object: &str) -> Result<(u32, &'a [u8])> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::Truncated {
            object: object.into(),
            offset: 0,
            wanted: HEADER_LEN as u64,
            got: bytes.len() as u64,
        });
    }
    if bytes[..8] != kind.magic() {
        // A key file given by mistake may be a passphrase file: show none of it.
        let found = if kind.secret() { String::new() } else { hex::encode(&bytes[..8]) };
        return Err(Error::BadMagic { object: object.into(), kind: kind.name(), found });
    }
    let v = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let known = kind.versions();
    if v > *known.end() {
        return Err(Error::UnsupportedVersion { object: object.into(), version: v, known: *known.end() });
    }
    if v < *known.start() {
        return Err(Error::UpgradeRequired { object: object.into(), version: v });
    }
    Ok((v, &bytes[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_expose_transport_damage() {
        for k in [
            ObjectKind::Config,
            ObjectKind::Key,
            ObjectKind::KeyFile,
            ObjectKind::WriterKeyFile,
            ObjectKind::Pack,
            ObjectKind::Index,
            ObjectKind::Manifest,
            ObjectKind::Overlay,
        ] {
            let m = k.magic();
            assert!(m[0] & 0x80 != 0, "high bit catches 7-bit stripping");
            assert_eq!(&m[6..8], b"\r\n", "CR LF catches newline conversion");
            // A text-mode conversion CRLF→LF shortens the magic and no longer matches.
            let converted: Vec<u8> = String::from_utf8_lossy(&m).replace("\r\n", "\n").into_bytes();
            assert_ne!(&converted[..], &m[..]);
        }
    }

    #[test]
    fn versions_are_refused_by_name() {
        let mut h = header(ObjectKind::Pack).to_vec();
        assert!(check_header(&h, ObjectKind::Pack, "p").is_ok());
        assert!(matches!(check_header(&h, ObjectKind::Index, "p"), Err(Error::BadMagic { .. })));
        let e = check_header(b"line1secret\nline2", ObjectKind::KeyFile, "k").unwrap_err().to_string();
        assert!(!e.contains("6c696e65") && !e.contains("line1"), "a secret file's bytes are never shown: {e}");
        let e = check_header(b"line1secret\nline2", ObjectKind::Pack, "p").unwrap_err().to_string();
        assert!(e.contains("bad magic 6c696e6531736563"), "{e}");
        h[8] = 2;
        let e = check_header(&h, ObjectKind::Pack, "p").unwrap_err();
        assert!(matches!(e, Error::UnsupportedVersion { version: 2, .. }), "{e}");
        assert!(e.to_string().contains("version 2"));
        h[8] = 0;
        assert!(matches!(check_header(&h, ObjectKind::Pack, "p"), Err(Error::UpgradeRequired { version: 0, .. })));
        // Manifests come in versions 1 and 2, configs in 1 to 3; the next is refused.
        for v in [1u32, 2] {
            let h = header_v(ObjectKind::Manifest, v);
            assert_eq!(check_header_version(&h, ObjectKind::Manifest, "m").unwrap().0, v);
        }
        let mut h = header_v(ObjectKind::Manifest, 2).to_vec();
        h[8] = 3;
        assert!(matches!(check_header(&h, ObjectKind::Manifest, "m"), Err(Error::UnsupportedVersion { known: 2, .. })));
        let mut h = header_v(ObjectKind::Config, 3).to_vec();
        h[8] = 4;
        assert!(matches!(check_header(&h, ObjectKind::Config, "c"), Err(Error::UnsupportedVersion { known: 3, .. })));
        assert!(matches!(check_header(&h[..5], ObjectKind::Pack, "p"), Err(Error::Truncated { .. })));
    }
}
