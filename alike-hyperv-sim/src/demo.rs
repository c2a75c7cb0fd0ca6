//! The demo host (`--demo`): `HV-SIM-01` with a virtual switch and two VMs
//! whose disks are dynamic VHDX files of deterministic, partly sparse data.
//!
//! | VM | state | generation | disks |
//! |---|---|---|---|
//! | `web-01` | running, VSS in the guest | 2, secure boot, 2 vCPUs, 2048 MiB | `web-01-os.vhdx` 64 MiB (SCSI 0:0), `web-01-data.vhdx` 32 MiB (SCSI 0:1); one NIC |
//! | `db-01` | off | 1, 1 vCPU, 1024 MiB | `db-01.vhdx` 48 MiB (IDE 0:0); one NIC |

use std::path::Path;

#[cfg(test)]
use crate::host::HostConfig;
use crate::host::{Disk, Host, Nic, Rct, Slot, Switch, Vm, new_guid, now};
use crate::{Error, Result, disks};

/// Payload block size of the demo's VHDX files (Hyper-V's default for dynamic disks).
pub(crate) const BLOCK: u32 = 32 << 20;

/// Deterministic data for a disk: a 64 KiB run every 1 MiB (with a gap
/// every fourth MiB, so files have holes), from a generator seeded by `seed`.
pub fn demo_content(seed: &str, size: u64) -> Vec<(u64, Vec<u8>)> {
    let mut x: u64 = seed.bytes().fold(0x9e37_79b9_7f4a_7c15, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        if (off >> 20) % 4 != 3 {
            let mut v = vec![0u8; 64 << 10];
            for c in v.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
            }
            out.push((off, v));
        }
        off += 1 << 20;
    }
    out
}

fn disk(dir: &Path, name: &str, size: u64, slot: Slot, ctrl: &str) -> Result<Disk> {
    let path = dir.join(format!("{name}.vhdx"));
    disks::create_base(&path, size, BLOCK, &demo_content(name, size))?;
    Ok(Disk {
        size,
        chain: vec![path],
        slot,
        ctrl_guid: ctrl.to_owned(),
        rct: Rct { guid: new_guid(), epoch: 1, log: Vec::new() },
    })
}

/// Writes a dynamic VHDX of `size` bytes of pseudo-random data (every
/// block allocated), 1 MiB at a time: the large disk of `--demo-os-mib`,
/// for measurements.
fn dense(path: &Path, size: u64, seed: &str) -> Result<()> {
    use alike_core::DiskTarget as _;
    let mut x: u64 = seed.bytes().fold(0x9e37_79b9_7f4a_7c15, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut opts = alike_formats::vhdx::CreateOptions::default();
    opts.block_size(BLOCK);
    let err = |e: &dyn std::fmt::Display| Error::Disk { file: path.to_owned(), reason: e.to_string() };
    let t = alike_formats::vhdx::VhdxTarget::create(path, size, &opts).map_err(|e| err(&e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = (size - off).min(buf.len() as u64) as usize;
        t.write(off, &buf[..n]).map_err(|e| err(&e))?;
        off += n as u64;
    }
    t.finish(size).map_err(|e| err(&e))
}

/// Creates the demo VMs and their disk files under `c_drive`; `os_mib`
/// makes web-01's first disk that large and dense (measurements).
pub(crate) fn populate(host: &mut Host, os_mib: Option<u64>) -> Result<()> {
    let sw = Switch { id: new_guid(), name: "LAN".into() };
    // name, running, generation, vCPUs, memory MiB, disks (name, size)
    type Spec<'a> = (&'a str, bool, u8, u32, u64, &'a [(&'a str, u64)]);
    let specs: [Spec<'_>; 2] = [
        ("web-01", true, 2, 2, 2048, &[("web-01-os", 64 << 20), ("web-01-data", 32 << 20)]),
        ("db-01", false, 1, 1, 1024, &[("db-01", 48 << 20)]),
    ];
    for (i, (name, running, generation, vcpus, mem, ds)) in specs.iter().enumerate() {
        let dir = host.c_drive.join("Hyper-V").join(name).join("Virtual Hard Disks");
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let ctrl = new_guid();
        let mut vdisks = Vec::new();
        for (k, (dname, size)) in ds.iter().enumerate() {
            let slot = Slot { scsi: *generation == 2, controller: 0, location: k as u32 };
            match os_mib.filter(|_| *dname == "web-01-os") {
                Some(mib) => {
                    let path = dir.join(format!("{dname}.vhdx"));
                    dense(&path, mib << 20, dname)?;
                    vdisks.push(Disk {
                        size: mib << 20,
                        chain: vec![path],
                        slot,
                        ctrl_guid: ctrl.clone(),
                        rct: Rct { guid: new_guid(), epoch: 1, log: Vec::new() },
                    });
                }
                None => vdisks.push(disk(&dir, dname, *size, slot, &ctrl)?),
            }
        }
        host.vms.push(Vm {
            id: new_guid(),
            name: (*name).to_owned(),
            generation: *generation,
            vcpus: *vcpus,
            memory_mb: *mem,
            running: *running,
            secure_boot: *generation == 2,
            vss: *running,
            created: now(),
            disks: vdisks,
            nics: vec![Nic { id: new_guid(), mac: format!("00155D0100{:02X}", i + 1), switch: Some(sw.id.clone()) }],
            snapshots: Vec::new(),
            refpoints: Vec::new(),
            controllers: Vec::new(),
            empty_drives: Vec::new(),
            replica: None,
        });
    }
    host.switches.push(sw);
    Ok(())
}

/// A host with no VMs (unit tests).
#[cfg(test)]
pub(crate) fn empty_host_for_tests() -> Host {
    Host {
        name: "HV-SIM-01".into(),
        c_drive: std::env::temp_dir(),
        vms: Vec::new(),
        switches: Vec::new(),
        jobs: Vec::new(),
        cfg: HostConfig { job_time: std::time::Duration::ZERO, rct_block: 64 << 10, rct_max_processed: 1 << 30 },
        job_failures: Vec::new(),
        recovery_server: true,
    }
}
