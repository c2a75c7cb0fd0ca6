//! The volumes of a set of disks, and the filesystem on each.
//!
//! A volume is a whole disk with no partition table, a partition, or an
//! LVM2 logical volume (whose physical volumes may lie on any of the
//! disks, whole or partitioned). Each is probed for a filesystem by
//! [`open_filesystem`], the one place that decides the probing order.
//!
//! ## Names
//! A partition is named by its number (`1`, `5`: Linux's numbering, see
//! [`crate::part`]); a logical volume by `VG/LV`; the whole disk by
//! `disk`. A volume group name found twice (two VMs' disks cloned from one
//! template, both named `vg0`) is told apart by its UUID: its LVs are then
//! named `VG@UUID8/LV`, with the first 8 characters of the VG's UUID
//! (dashes left out), and a selector may give any unique prefix of the
//! UUID after the `@` ([`Selector::Volume`]).
//!
//! ## Choosing a volume
//! [`Scan::select`]: a partition of a disk by number, an LV by name, or,
//! with neither, the one filesystem of a disk (a disk with none or several
//! is an error listing the choices).

use std::sync::Arc;

use crate::part::{Partition, PartitionTable};
use crate::{BlockDevice, FileSystem, FsError, Result};

/// A disk of a version.
#[derive(Clone)]
#[non_exhaustive]
pub struct Disk {
    /// Its position in the VM (from 0).
    pub index: u32,
    /// Its label (the source's name for it).
    pub label: String,
    /// Its bytes.
    pub device: Arc<dyn BlockDevice>,
}

impl Disk {
    /// Disk `index`, labelled `label`, reading `device`.
    pub fn new(index: u32, label: impl Into<String>, device: Arc<dyn BlockDevice>) -> Disk {
        Disk { index, label: label.into(), device }
    }
}

/// What kind of volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VolumeKind {
    /// A whole disk without a partition table.
    Disk,
    /// A partition of a disk.
    Partition,
    /// An LVM2 logical volume.
    LogicalVolume,
}

impl VolumeKind {
    /// `disk`, `partition` or `lv`.
    pub fn name(self) -> &'static str {
        match self {
            VolumeKind::Disk => "disk",
            VolumeKind::Partition => "partition",
            VolumeKind::LogicalVolume => "lv",
        }
    }
}

/// A logical volume as LVM describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LvInfo {
    /// The volume group's name.
    pub vg: String,
    /// The volume group's UUID.
    pub vg_uuid: String,
    /// The LV's name.
    pub lv: String,
    /// The LV's UUID.
    pub lv_uuid: String,
}

/// One volume found.
#[derive(Clone)]
#[non_exhaustive]
pub struct Volume {
    /// Its name (`disk`, `2`, `vg0/root`, `vg0@1a2b3c4d/root`).
    pub name: String,
    /// What it is.
    pub kind: VolumeKind,
    /// The disk it is on (for an LV: the disks holding its volume group's
    /// physical volumes).
    pub disks: Vec<u32>,
    /// Size in bytes.
    pub size: u64,
    /// The partition, for a partition.
    pub partition: Option<Partition>,
    /// The LV, for an LV.
    pub lv: Option<LvInfo>,
    /// The filesystem on it, if one was recognised.
    pub fs: Option<Arc<dyn FileSystem>>,
    /// Why probing it failed (a damaged superblock, an unsupported feature).
    pub error: Option<String>,
    /// Whether it is an LVM2 physical volume (its LVs are volumes of their own).
    pub lvm_pv: bool,
    /// Its bytes.
    pub device: Arc<dyn BlockDevice>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("disks", &self.disks)
            .field("size", &self.size)
            .field("fs", &self.fs.as_ref().map(|f| f.type_name()))
            .field("error", &self.error)
            .finish()
    }
}

/// What [`scan`] found.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Scan {
    /// Every volume, disk by disk (partitions by number), then the LVs.
    pub volumes: Vec<Volume>,
    /// Each disk's partition table, if it has one.
    pub tables: Vec<(u32, Option<PartitionTable>)>,
    /// What was odd (a damaged table read from its backup, a loop in an EBR
    /// chain, a table that could not be read at all).
    pub warnings: Vec<String>,
}

/// Which volume to read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Selector {
    /// The one filesystem of the disk.
    #[default]
    Auto,
    /// Partition N of the disk.
    Partition(u32),
    /// A logical volume: `VG/LV`, or `VG@UUIDPREFIX/LV` when two volume
    /// groups share the name.
    Volume(String),
}

/// Opens the filesystem on `dev`, trying each reader in turn: ext, then
/// NTFS, then FAT. `Ok(None)` when none recognises it.
///
/// Filesystems with no reader here are named rather than passed over: XFS
/// and btrfs (no well-kept Rust reader of either exists, and writing one is
/// not this crate's job yet) give [`FsError::Unsupported`] naming the
/// filesystem and the way around it (`alike serve-nbd`, then the system's
/// own tools).
///
/// # Errors
/// The first reader that recognises the device but fails to open it; an
/// XFS or btrfs volume.
pub fn open_filesystem(dev: Arc<dyn BlockDevice>) -> Result<Option<Arc<dyn FileSystem>>> {
    type Probe = fn(Arc<dyn BlockDevice>) -> Result<Option<Arc<dyn FileSystem>>>;
    // The probing order, in one place. ext and NTFS have magic numbers at
    // fixed offsets; FAT's boot sector is the least distinctive, so last.
    const PROBES: &[Probe] = &[crate::ext::open, crate::ntfs::open, crate::fat::open];
    for probe in PROBES {
        if let Some(fs) = probe(dev.clone())? {
            return Ok(Some(fs));
        }
    }
    if let Some(fs) = unsupported(dev.as_ref())? {
        return Err(FsError::Unsupported {
            fs,
            what: "no reader for this filesystem here; serve the version over NBD (alike serve-nbd) and read it with the system's own tools"
                .into(),
        });
    }
    Ok(None)
}

/// Names a filesystem that has no reader here, by its magic number: XFS
/// (`XFSB` at byte 0) and btrfs (`_BHRfS_M` at 64 KiB + 0x40).
fn unsupported(dev: &dyn BlockDevice) -> Result<Option<&'static str>> {
    const MAGICS: [(&str, u64, &[u8]); 2] = [("XFS", 0, b"XFSB"), ("btrfs", 0x1_0040, b"_BHRfS_M")];
    for (name, at, magic) in MAGICS {
        if dev.size() >= at + magic.len() as u64 {
            let mut buf = [0u8; 8];
            let buf = &mut buf[..magic.len()];
            dev.read_exact_at(at, buf)?;
            if buf == magic {
                return Ok(Some(name));
            }
        }
    }
    Ok(None)
}

/// A logical volume found by the LVM2 reader.
struct FoundLv {
    info: LvInfo,
    /// Its name's VG part: the VG's name, with `@UUID8` when another VG
    /// shares the name.
    vg_label: String,
    size: u64,
    /// Indexes (into the PVs given) of the devices holding its VG.
    pvs: Vec<usize>,
    device: std::result::Result<Arc<dyn BlockDevice>, String>,
}

/// The visible logical volumes on `pvs` (devices without a filesystem),
/// and what went wrong reading them.
fn logical_volumes(pvs: &[Arc<dyn BlockDevice>]) -> (Vec<FoundLv>, Vec<String>) {
    let report = crate::lvm::scan_report(pvs);
    let mut warnings: Vec<String> = report
        .problems
        .iter()
        .map(|p| format!("LVM2 on {}: {}", pvs.get(p.device).map_or_else(|| "?".into(), |d| d.describe()), p.error))
        .collect();
    let mut out = Vec::new();
    for vg in &report.volume_groups {
        if !vg.missing_pvs.is_empty() {
            warnings.push(format!(
                "volume group {} ({}): physical volume(s) {} not found on these disks",
                vg.name,
                vg.uuid,
                vg.missing_pvs.join(", ")
            ));
        }
        let vg_label = if vg.name_collision {
            format!("{}@{}", vg.name, vg.uuid.chars().filter(|c| *c != '-').take(8).collect::<String>())
        } else {
            vg.name.clone()
        };
        let on: Vec<usize> = vg.pvs.iter().filter_map(|p| p.device).collect();
        for lv in vg.lvs.iter().filter(|lv| lv.visible) {
            out.push(FoundLv {
                info: LvInfo {
                    vg: vg.name.clone(),
                    vg_uuid: vg.uuid.clone(),
                    lv: lv.name.clone(),
                    lv_uuid: lv.uuid.clone(),
                },
                vg_label: vg_label.clone(),
                size: lv.size,
                pvs: on.clone(),
                device: lv.device().map_err(|e| e.to_string()),
            });
        }
    }
    (out, warnings)
}

/// Whether `dev` carries an LVM2 label (`LABELONE` … `LVM2 001` in one of
/// its first four sectors): worth handing to the LVM2 reader.
fn is_lvm_pv(dev: &dyn BlockDevice) -> Result<bool> {
    if dev.size() < 2048 {
        return Ok(false);
    }
    let mut b = [0u8; 2048];
    dev.read_exact_at(0, &mut b)?;
    Ok(b.chunks(512).any(|s| &s[..8] == b"LABELONE" && &s[24..32] == b"LVM2 001"))
}

/// Probes one volume (a failure becomes its `error`).
fn probe(name: String, kind: VolumeKind, disks: Vec<u32>, device: Arc<dyn BlockDevice>) -> Volume {
    let mut v = Volume {
        name,
        kind,
        disks,
        size: device.size(),
        partition: None,
        lv: None,
        fs: None,
        error: None,
        lvm_pv: false,
        device: device.clone(),
    };
    match open_filesystem(device.clone()) {
        Ok(Some(fs)) => v.fs = Some(fs),
        Ok(None) => match is_lvm_pv(device.as_ref()) {
            Ok(pv) => v.lvm_pv = pv,
            Err(e) => v.error = Some(e.to_string()),
        },
        Err(e) => v.error = Some(e.to_string()),
    }
    v
}

/// Finds the volumes of `disks` and the filesystem on each.
///
/// # Errors
/// Only a failure that leaves nothing to report (none today: a disk whose
/// table cannot be read is listed as a whole disk, with a warning).
pub fn scan(disks: &[Disk]) -> Result<Scan> {
    let mut out = Scan::default();
    for d in disks {
        let table = match crate::part::read_table(&d.device) {
            Ok(t) => t,
            Err(e) => {
                out.warnings.push(format!("disk {}: its partition table cannot be read: {e}", d.index));
                None
            }
        };
        match &table {
            Some(t) => {
                out.warnings.extend(t.warnings.iter().map(|w| format!("disk {}: {w}", d.index)));
                for p in &t.partitions {
                    if p.is_container {
                        continue;
                    }
                    let mut v = probe(p.number.to_string(), VolumeKind::Partition, vec![d.index], p.device(&d.device));
                    v.partition = Some(p.clone());
                    out.volumes.push(v);
                }
            }
            None => out.volumes.push(probe("disk".into(), VolumeKind::Disk, vec![d.index], d.device.clone())),
        }
        out.tables.push((d.index, table));
    }
    let pvs: Vec<&Volume> = out.volumes.iter().filter(|v| v.lvm_pv).collect();
    if !pvs.is_empty() {
        let devices: Vec<Arc<dyn BlockDevice>> = pvs.iter().map(|v| v.device.clone()).collect();
        let pv_disks: Vec<Vec<u32>> = pvs.iter().map(|v| v.disks.clone()).collect();
        let (lvs, warnings) = logical_volumes(&devices);
        out.warnings.extend(warnings);
        for lv in lvs {
            let mut disks: Vec<u32> = lv.pvs.iter().filter_map(|&i| pv_disks.get(i)).flatten().copied().collect();
            disks.sort_unstable();
            disks.dedup();
            let name = format!("{}/{}", lv.vg_label, lv.info.lv);
            let mut v = match lv.device {
                Ok(dev) => probe(name, VolumeKind::LogicalVolume, disks, dev),
                Err(why) => Volume {
                    device: Arc::new(crate::MemDevice::new(name.clone(), Vec::new())),
                    name,
                    kind: VolumeKind::LogicalVolume,
                    disks,
                    size: 0,
                    partition: None,
                    lv: None,
                    fs: None,
                    error: Some(why),
                    lvm_pv: false,
                },
            };
            v.size = lv.size;
            v.lv = Some(lv.info);
            out.volumes.push(v);
        }
    }
    Ok(out)
}

fn no_dash_lower(s: &str) -> String {
    s.chars().filter(|c| *c != '-').flat_map(char::to_lowercase).collect()
}

impl Scan {
    /// The volume `which` names on `disk` (an LV is found whatever the disk).
    ///
    /// # Errors
    /// [`FsError::NotFound`] naming what exists: no such disk, partition or
    /// LV; an ambiguous VG name; a disk with no filesystem or several (for
    /// [`Selector::Auto`]).
    pub fn select(&self, disk: u32, which: &Selector) -> Result<&Volume> {
        let on_disk = |v: &&Volume| v.disks.contains(&disk);
        match which {
            Selector::Partition(n) => self
                .volumes
                .iter()
                .filter(on_disk)
                .find(|v| v.kind == VolumeKind::Partition && v.partition.as_ref().is_some_and(|p| p.number == *n))
                .ok_or_else(|| {
                    let have: Vec<&str> = self
                        .volumes
                        .iter()
                        .filter(on_disk)
                        .filter(|v| v.kind == VolumeKind::Partition)
                        .map(|v| v.name.as_str())
                        .collect();
                    FsError::NotFound(format!(
                        "disk {disk} has no partition {n} ({})",
                        if have.is_empty() {
                            "it has no partition table".to_string()
                        } else {
                            format!("it has {}", have.join(", "))
                        }
                    ))
                }),
            Selector::Volume(spec) => {
                let (vg, lv) = spec
                    .split_once('/')
                    .ok_or_else(|| FsError::NotFound(format!("{spec:?}: a logical volume is named VG/LV")))?;
                let (vg_name, uuid) = match vg.split_once('@') {
                    Some((n, u)) => (n, Some(no_dash_lower(u))),
                    None => (vg, None),
                };
                let lvs: Vec<&Volume> = self.volumes.iter().filter(|v| v.kind == VolumeKind::LogicalVolume).collect();
                let hits: Vec<&Volume> = lvs
                    .iter()
                    .copied()
                    .filter(|v| {
                        v.lv.as_ref().is_some_and(|i| {
                            i.vg == vg_name
                                && i.lv == lv
                                && uuid.as_ref().is_none_or(|u| no_dash_lower(&i.vg_uuid).starts_with(u.as_str()))
                        })
                    })
                    .collect();
                match hits.as_slice() {
                    [one] => Ok(*one),
                    [] => {
                        let have: Vec<&str> = lvs.iter().map(|v| v.name.as_str()).collect();
                        Err(FsError::NotFound(format!(
                            "no logical volume {spec} ({})",
                            if have.is_empty() {
                                "no LVM2 volumes were found".to_string()
                            } else {
                                format!("there are {}", have.join(", "))
                            }
                        )))
                    }
                    many => {
                        let names: Vec<&str> = many.iter().map(|v| v.name.as_str()).collect();
                        Err(FsError::NotFound(format!(
                            "{spec} names {} logical volumes (volume groups share the name): use {}",
                            many.len(),
                            names.join(" or ")
                        )))
                    }
                }
            }
            Selector::Auto => {
                if !self.tables.iter().any(|(i, _)| *i == disk) {
                    return Err(FsError::NotFound(format!("there is no disk {disk}")));
                }
                let with_fs: Vec<&Volume> = self.volumes.iter().filter(on_disk).filter(|v| v.fs.is_some()).collect();
                match with_fs.as_slice() {
                    [one] => Ok(*one),
                    [] => {
                        let errors: Vec<String> = self
                            .volumes
                            .iter()
                            .filter(on_disk)
                            .filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.name)))
                            .collect();
                        Err(FsError::NotFound(format!(
                            "no filesystem recognised on disk {disk}{}",
                            if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) }
                        )))
                    }
                    many => {
                        let names: Vec<String> = many
                            .iter()
                            .map(|v| match v.kind {
                                VolumeKind::LogicalVolume => format!("volume {}", v.name),
                                _ => format!("partition {}", v.name),
                            })
                            .collect();
                        Err(FsError::NotFound(format!(
                            "disk {disk} holds {} filesystems: choose one ({})",
                            many.len(),
                            names.join(", ")
                        )))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod unsupported_tests {
    use super::*;
    use crate::fuzz::MemDevice;

    #[test]
    fn xfs_and_btrfs_are_named_not_passed_over() {
        let mut xfs = vec![0u8; 1 << 20];
        xfs[..4].copy_from_slice(b"XFSB");
        let mut btrfs = vec![0u8; 1 << 20];
        btrfs[0x1_0040..0x1_0048].copy_from_slice(b"_BHRfS_M");
        for (img, name) in [(xfs, "XFS"), (btrfs, "btrfs")] {
            match open_filesystem(Arc::new(MemDevice(img))) {
                Err(FsError::Unsupported { fs, what }) => {
                    assert_eq!(fs, name);
                    assert!(what.contains("serve-nbd"), "{what}");
                }
                other => panic!("{name}: {:?}", other.map(|f| f.map(|f| f.kind()))),
            }
        }
        // Zeroes are nothing at all, not an error.
        assert!(open_filesystem(Arc::new(MemDevice(vec![0u8; 1 << 20]))).unwrap().is_none());
    }
}
