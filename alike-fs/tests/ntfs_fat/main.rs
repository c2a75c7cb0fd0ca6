//! The NTFS and FAT readers against images made by the real tools (mkntfs,
//! ntfscp, ntfs-3g; mkfs.vfat, mcopy), and against damaged images.

mod common;
mod fat;
mod hostile;
mod ntfs;
