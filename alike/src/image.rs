//! Disk image files: raw, VHD (XenServer) and VHDX/AVHDX (Hyper-V), as
//! sources to back up and targets to restore to. The format is detected
//! from the file's signature unless given.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # let raw = dir.path().join("disk.img");
//! # std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
//! use alike::ImageFormat;
//!
//! assert_eq!(ImageFormat::detect(&raw)?, ImageFormat::Raw);
//! let vhdx = dir.path().join("disk.vhdx");
//! let target = alike::create_image(&vhdx, ImageFormat::Vhdx, 1 << 20)?;
//! target.write_at(0, &[7u8; 1 << 20])?;
//! target.finish(1 << 20)?;
//! assert_eq!(ImageFormat::detect(&vhdx)?, ImageFormat::Vhdx);
//! let source = alike::open_image(&vhdx, None)?;
//! assert_eq!(source.size(), 1 << 20);
//! # Ok::<(), alike::Error>(())
//! ```

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::str::FromStr;

use alike_core::{DiskSource, DiskTarget, RawFileSource, RawFileTarget};

use crate::{Error, Result};

/// A disk image file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ImageFormat {
    /// A raw image or block device: byte `n` of the file is byte `n` of the disk.
    #[default]
    Raw,
    /// Legacy VHD (fixed, dynamic or differencing), as XenServer stores and exports disks.
    Vhd,
    /// VHDX, and AVHDX differencing disks (Hyper-V checkpoints).
    Vhdx,
}

impl ImageFormat {
    /// The lower-case name (`raw`, `vhd`, `vhdx`).
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Vhdx => "vhdx",
        }
    }

    /// The format of the file at `path`, from its signature: `vhdxfile` at
    /// offset 0 is VHDX; a `conectix` footer copy at 0 (dynamic and
    /// differencing VHD) or footer in the last 512 bytes (fixed VHD) is VHD;
    /// anything else, and block devices, are raw.
    ///
    /// # Errors
    /// The file cannot be opened or read; it is a character device, a FIFO,
    /// a socket or a folder ([`crate::ErrorKind::InvalidArgument`]).
    pub fn detect(path: impl AsRef<Path>) -> Result<ImageFormat> {
        let path = path.as_ref();
        let io = |source| Error::Engine(alike_core::Error::Io { path: path.to_owned(), source });
        // Before opening: opening a FIFO would wait for a writer.
        if check_disk_file(path)? {
            return Ok(ImageFormat::Raw);
        }
        let mut f = File::open(path).map_err(io)?;
        let mut head = [0u8; 8];
        let n = read_up_to(&mut f, &mut head).map_err(io)?;
        if n == 8 && &head == b"vhdxfile" {
            return Ok(ImageFormat::Vhdx);
        }
        if n == 8 && &head == b"conectix" {
            return Ok(ImageFormat::Vhd);
        }
        let len = f.seek(SeekFrom::End(0)).map_err(io)?;
        if len >= 512 {
            f.seek(SeekFrom::Start(len - 512)).map_err(io)?;
            let mut foot = [0u8; 8];
            if read_up_to(&mut f, &mut foot).map_err(io)? == 8 && &foot == b"conectix" {
                return Ok(ImageFormat::Vhd);
            }
        }
        Ok(ImageFormat::Raw)
    }
}

/// Whether `path` (symbolic links followed) is a block device; `Ok(false)`
/// for a regular file.
///
/// # Errors
/// [`Error::InvalidArgument`] naming what it is for anything else:
/// `/dev/zero`, `/dev/urandom` or `/dev/null` is not a disk.
fn check_disk_file(path: &Path) -> Result<bool> {
    let m = std::fs::metadata(path)
        .map_err(|source| Error::Engine(alike_core::Error::Io { path: path.to_owned(), source }))?;
    let t = m.file_type();
    let what = if t.is_file() {
        return Ok(false);
    } else if t.is_block_device() {
        return Ok(true);
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    };
    Err(Error::InvalidArgument(format!("{} is {what}, not a disk image or block device", path.display())))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ImageFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<ImageFormat> {
        match s.to_ascii_lowercase().as_str() {
            "raw" | "img" => Ok(ImageFormat::Raw),
            "vhd" | "vpc" => Ok(ImageFormat::Vhd),
            "vhdx" | "avhdx" => Ok(ImageFormat::Vhdx),
            _ => Err(Error::InvalidArgument(format!("unknown image format {s:?} (expected raw, vhd or vhdx)"))),
        }
    }
}

/// Opens an image as a disk source; `format` `None` detects it. A
/// differencing VHD or AVHDX brings its parent chain (found through its
/// parent locators, relative to its folder first).
///
/// # Errors
/// The file cannot be read; the image is malformed ([`crate::ErrorKind::BadImage`]);
/// a parent is missing ([`crate::ErrorKind::NotFound`]); a character
/// device, FIFO, socket or folder is not a disk ([`crate::ErrorKind::InvalidArgument`]).
pub fn open_image(path: impl AsRef<Path>, format: Option<ImageFormat>) -> Result<Box<dyn DiskSource>> {
    let path = path.as_ref();
    check_disk_file(path)?;
    let format = match format {
        Some(f) => f,
        None => ImageFormat::detect(path)?,
    };
    Ok(match format {
        ImageFormat::Raw => Box::new(RawFileSource::open(path)?),
        ImageFormat::Vhd => Box::new(alike_formats::vhd::VhdSource::open(path)?),
        ImageFormat::Vhdx => Box::new(alike_formats::vhdx::VhdxSource::open(path)?),
    })
}

/// Checks that `path` may receive a restored image: a new file, an existing
/// regular file only when `force` (it may be the very image that was backed
/// up), a block device for a raw image (opened exclusively later, so a
/// mounted or in-use device is refused then); never a directory, FIFO,
/// socket or character device.
///
/// # Errors
/// [`crate::ErrorKind::AlreadyExists`] for an existing file without
/// `force`; [`crate::ErrorKind::InvalidArgument`] for anything that is not a
/// disk image target.
pub(crate) fn check_output(path: &Path, format: ImageFormat, force: bool) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let m = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(alike_core::Error::Io { path: path.to_owned(), source: e }.into()),
    };
    let t = m.file_type();
    let what = if t.is_file() {
        if force {
            return Ok(());
        }
        return Err(Error::OutputExists { path: path.to_owned() });
    } else if t.is_block_device() {
        if format == ImageFormat::Raw {
            return Ok(());
        }
        "a block device (only a raw image can be restored onto one)"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    };
    Err(Error::InvalidArgument(format!("{} is {what}: not a place to restore a disk image to", path.display())))
}

/// Creates an image of `size` bytes to restore into: a sparse raw file, a
/// dynamic VHD (2 MiB blocks) or a dynamic VHDX (32 MiB blocks). The file
/// appears at `path` only when the target is finished.
///
/// # Errors
/// The file cannot be created; `size` is not representable in the format.
pub fn create_image(path: impl AsRef<Path>, format: ImageFormat, size: u64) -> Result<Box<dyn DiskTarget>> {
    let path = path.as_ref();
    Ok(match format {
        ImageFormat::Raw => Box::new(RawFileTarget::create(path)?),
        ImageFormat::Vhd => {
            Box::new(alike_formats::vhd::VhdTarget::create(path, size, &alike_formats::vhd::VhdOptions::default())?)
        }
        ImageFormat::Vhdx => Box::new(alike_formats::vhdx::VhdxTarget::create(
            path,
            size,
            &alike_formats::vhdx::CreateOptions::default(),
        )?),
    })
}
