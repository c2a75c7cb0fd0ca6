//! `replica.json`: the manifest of a replica folder (`docs/replica-dir.md`).
//!
//! The one file that says which points exist. It is replaced whole, by
//! write-then-rename, and only ever after every file it names is durable:
//! its rename is the instant a run commits or a merge takes effect.

use std::path::{Path, PathBuf};

use alike_core::Chunking;
use serde::{Deserialize, Serialize};

use crate::error::{ReplicaError, Result};

/// The manifest's file name.
pub(crate) const MANIFEST: &str = "replica.json";
/// The value of its `format` field (do not edit).
pub(crate) const FORMAT: &str = "alike-replica-dir";
/// The manifest version this build writes and reads.
pub(crate) const VERSION: u64 = 1;
/// Largest manifest read (a replica of 64 disks and 10,000 points is well under it).
const MAX_MANIFEST: u64 = 16 << 20;
/// Most disks a replica holds.
pub(crate) const MAX_DISKS: usize = 256;
/// Largest disk (the VHDX limit, 64 TiB).
pub(crate) const MAX_DISK_SIZE: u64 = 64 << 40;

/// One disk of a point: its size and the file at the top of its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ManifestDisk {
    pub(crate) size: u64,
    pub(crate) file: String,
}

/// A committed point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ManifestPoint {
    pub(crate) point: u64,
    pub(crate) time_ms: u64,
    pub(crate) disks: Vec<ManifestDisk>,
}

/// The manifest, version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub(crate) format: String,
    pub(crate) version: u64,
    pub(crate) vm: String,
    pub(crate) chunking: String,
    pub(crate) vhdx_block_size: u32,
    pub(crate) next_point: u64,
    pub(crate) points: Vec<ManifestPoint>,
}

/// The file of disk `disk` of point `point`: the base VHDX for the oldest
/// point, a differencing AVHDX for every later one.
pub(crate) fn disk_file(disk: usize, point: u64, base: bool) -> String {
    format!("disk{disk}-p{point:08}.{}", if base { "vhdx" } else { "avhdx" })
}

/// The record file of point `point`.
pub(crate) fn record_file(point: u64) -> String {
    format!("record-{point:08}.bin")
}

/// Checks a disk size against what a VHDX can hold.
pub(crate) fn check_size(size: u64) -> std::result::Result<(), String> {
    if size == 0 || size % 512 != 0 || size > MAX_DISK_SIZE {
        return Err(format!("size {size} is not a multiple of 512 from 512 bytes to 64 TiB"));
    }
    Ok(())
}

impl Manifest {
    pub(crate) fn new(vm: &str, chunking: &Chunking, vhdx_block_size: u32) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            vm: vm.into(),
            chunking: chunking.to_string(),
            vhdx_block_size,
            next_point: 1,
            points: Vec::new(),
        }
    }

    /// The chunking (checked by [`Manifest::check`]).
    pub(crate) fn chunking(&self) -> Chunking {
        self.chunking.parse().unwrap_or_default()
    }

    /// Reads and checks `dir/replica.json`.
    ///
    /// # Errors
    /// [`ReplicaError::NotAReplica`] when it does not exist; otherwise an
    /// error naming the file.
    pub(crate) fn read(dir: &Path) -> Result<Manifest> {
        let file = dir.join(MANIFEST);
        let meta = match std::fs::metadata(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReplicaError::NotAReplica { dir: dir.to_owned() });
            }
            r => r.map_err(ReplicaError::io(&file, "reading"))?,
        };
        if !meta.is_file() || meta.len() > MAX_MANIFEST {
            return Err(ReplicaError::malformed(&file, format!("not a file of at most {MAX_MANIFEST} bytes")));
        }
        let bytes = std::fs::read(&file).map_err(ReplicaError::io(&file, "reading"))?;
        Manifest::decode(&bytes, &file)
    }

    pub(crate) fn decode(bytes: &[u8], file: &Path) -> Result<Manifest> {
        let bad = |reason: String| ReplicaError::malformed(file, reason);
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad(format!("not a replica manifest (no \"format\": \"{FORMAT}\")")));
        }
        match v.get("version").and_then(serde_json::Value::as_u64) {
            Some(VERSION) => {}
            Some(n) if n > VERSION => {
                return Err(ReplicaError::UnsupportedVersion { file: file.to_owned(), found: n, supported: VERSION });
            }
            _ => return Err(bad("no valid \"version\"".into())),
        }
        let m: Manifest = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        m.check().map_err(bad)?;
        Ok(m)
    }

    /// Every rule of `docs/replica-dir.md` §2.
    fn check(&self) -> std::result::Result<(), String> {
        if self.vm.is_empty() || self.vm.len() > 1024 {
            return Err(format!("vm name of {} bytes (1 to 1024)", self.vm.len()));
        }
        let chunking: Chunking = self.chunking.parse().map_err(|e| format!("chunking: {e}"))?;
        chunking.validate().map_err(|e| format!("chunking: {e}"))?;
        let bs = u64::from(self.vhdx_block_size);
        if !(1 << 20..=256 << 20).contains(&bs) || !bs.is_power_of_two() {
            return Err(format!("vhdx_block_size {bs} is not a power of two from 1 MiB to 256 MiB"));
        }
        let mut prev = 0;
        for (i, p) in self.points.iter().enumerate() {
            if p.point <= prev || p.point >= self.next_point {
                return Err(format!(
                    "point {} is out of order (after {prev}, before next_point {})",
                    p.point, self.next_point
                ));
            }
            prev = p.point;
            if p.disks.is_empty() || p.disks.len() > MAX_DISKS {
                return Err(format!("point {}: {} disks (1 to {MAX_DISKS})", p.point, p.disks.len()));
            }
            let first = &self.points[0];
            if p.disks.len() != first.disks.len() {
                return Err(format!(
                    "point {} has {} disks, point {} {}",
                    p.point,
                    p.disks.len(),
                    first.point,
                    first.disks.len()
                ));
            }
            for (d, disk) in p.disks.iter().enumerate() {
                check_size(disk.size).map_err(|e| format!("point {}, disk {d}: {e}", p.point))?;
                if disk.size != first.disks[d].size {
                    return Err(format!(
                        "point {}, disk {d}: size {} but {} in point {}",
                        p.point, disk.size, first.disks[d].size, first.point
                    ));
                }
                let want = disk_file(d, p.point, i == 0);
                if disk.file != want {
                    return Err(format!("point {}, disk {d}: file {:?}, expected {want:?}", p.point, disk.file));
                }
            }
        }
        Ok(())
    }

    /// The files of the newest point (and its id), if any.
    pub(crate) fn newest(&self) -> Option<&ManifestPoint> {
        self.points.last()
    }

    /// Writes the manifest into `dir` by write-then-rename, durably.
    ///
    /// # Errors
    /// A write, sync or rename failure, naming the file.
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let mut bytes =
            serde_json::to_vec_pretty(self).map_err(|e| ReplicaError::malformed(dir.join(MANIFEST), e.to_string()))?;
        bytes.push(b'\n');
        write_atomic(dir, MANIFEST, &bytes, 0o644)
    }
}

/// Writes `dir/name` by write-then-rename: a temporary file (mode
/// `mode`), fsync, rename over `name`, fsync of the folder.
///
/// # Errors
/// A failure naming the file.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let fin = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(ReplicaError::io(&tmp, "creating"))?;
    f.write_all(bytes).map_err(ReplicaError::io(&tmp, "writing"))?;
    f.sync_all().map_err(ReplicaError::io(&tmp, "syncing"))?;
    drop(f);
    std::fs::rename(&tmp, &fin).map_err(ReplicaError::io(&fin, "renaming into place"))?;
    sync_dir(dir)
}

/// Syncs a folder, so that renames and new names in it are durable.
///
/// # Errors
/// A failure naming the folder.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ReplicaError::io(PathBuf::from(dir), "syncing the folder"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut m = Manifest::new("vm1", &Chunking::default(), 2 << 20);
        m.points = vec![
            ManifestPoint {
                point: 2,
                time_ms: 5,
                disks: vec![ManifestDisk { size: 1 << 20, file: disk_file(0, 2, true) }],
            },
            ManifestPoint {
                point: 3,
                time_ms: 6,
                disks: vec![ManifestDisk { size: 1 << 20, file: disk_file(0, 3, false) }],
            },
        ];
        m.next_point = 4;
        m
    }

    #[test]
    fn manifests_round_trip_and_name_what_is_wrong() {
        let f = Path::new("/r/replica.json");
        let m = sample();
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(Manifest::decode(text.as_bytes(), f).unwrap(), m);
        let cases = [
            (text.replace("\"version\":1", "\"version\":2"), "format version 2 is not supported"),
            (text.replace("alike-replica-dir", "other"), "not a replica manifest"),
            (text.replace("\"size\":1048576", "\"size\":9223372036854775807"), "is not a multiple of 512"),
            (text.replace("p00000003.avhdx", "p00000003.vhdx"), "expected \"disk0-p00000003.avhdx\""),
            (text.replace("\"next_point\":4", "\"next_point\":3"), "out of order"),
            (text.replace("\"vm\"", "\"vm\":\"x\",\"extra\""), "unknown field"),
            (text[..text.len() / 2].to_string(), "not JSON"),
            (text.replace("cdc:16/32/64", "cdc:1/2/3"), "chunking"),
        ];
        for (t, want) in cases {
            let e = Manifest::decode(t.as_bytes(), f).unwrap_err().to_string();
            assert!(e.starts_with("/r/replica.json: ") && e.contains(want), "{e} (wanted {want})");
        }
    }
}
