//! A lost or damaged record is rebuilt; bad input gives errors that name
//! the file and change nothing.

use std::path::Path;

use alike_core::{ErrorKind, SeamError};
use alike_replica::{ReplicaDir, ReplicaError, ReplicaTarget};

use crate::{MIB, Vm, assert_point, assert_record_fresh};

fn replica_with_points(tmp: &Path, n: u64) -> (ReplicaDir, Vm) {
    let r = ReplicaDir::builder().vm("d").create(tmp.join("r")).unwrap();
    let mut vm = Vm::new(41, &[3 * MIB, MIB]);
    for generation in 1..=n {
        vm.evolve(41, generation);
        vm.replicate(&r, generation, None);
    }
    (r, vm)
}

#[test]
fn a_lost_or_damaged_record_is_rebuilt_from_the_replica() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, mut vm) = replica_with_points(tmp.path(), 2);
    let rec = r.path().join("record-00000002.bin");
    let good = r.record().unwrap();
    let original = std::fs::read(&rec).unwrap();
    // Lost.
    std::fs::remove_file(&rec).unwrap();
    let why = r.repair().unwrap().expect("rebuilt");
    assert!(why.contains("record-00000002.bin"), "{why}");
    assert_eq!(r.record().unwrap(), good);
    assert_eq!(std::fs::read(&rec).unwrap(), original, "the rebuilt record is the same bytes");
    // Damaged: one bit flipped, or truncated.
    for damage in [|b: &mut Vec<u8>| b[100] ^= 4, |b: &mut Vec<u8>| b.truncate(b.len() - 7)] {
        let mut b = original.clone();
        damage(&mut b);
        std::fs::write(&rec, &b).unwrap();
        let why = r.repair().unwrap().expect("rebuilt");
        assert!(why.starts_with(&rec.display().to_string()), "{why}");
        assert_eq!(std::fs::read(&rec).unwrap(), original);
    }
    // The record of another point in its place.
    let other = tmp.path().join("other");
    let (o, _) = replica_with_points(&other, 1);
    std::fs::copy(o.path().join("record-00000001.bin"), &rec).unwrap();
    let why = r.repair().unwrap().expect("rebuilt");
    assert!(why.contains("another key") || why.contains("not point 2"), "{why}");
    // A lost key: a new one is made and the record rebuilt under it; runs go on, sending only changes.
    std::fs::remove_file(r.path().join("key")).unwrap();
    let r = ReplicaDir::open(r.path()).unwrap();
    let why = r.repair().unwrap().expect("rebuilt");
    assert!(why.contains("another key"), "{why}");
    assert_record_fresh(&r, "after a new key");
    vm.evolve(41, 3);
    let rep = vm.replicate(&r, 3, None);
    assert!(rep.stats.needed_bytes < MIB as u64, "{}", rep.stats.needed_bytes);
    assert_point(&r, 3, &vm, "after a new key");
    // A damaged key is an error naming it (never silently replaced).
    std::fs::write(r.path().join("key"), b"garbage").unwrap();
    let r = ReplicaDir::open(r.path()).unwrap();
    let e = r.begin(&[3 * MIB as u64, MIB as u64]).unwrap_err();
    assert!(e.to_string().starts_with(&format!("{}: ", r.path().join("key").display())), "{e}");
    assert_eq!(e.kind(), ErrorKind::Corruption);
}

#[test]
fn bad_input_names_the_file_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, vm) = replica_with_points(tmp.path(), 3);
    let manifest = r.path().join("replica.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let starts = |e: &ReplicaError, f: &Path| {
        assert!(e.to_string().starts_with(&format!("{}: ", f.display())), "{e} (should name {})", f.display());
    };

    // Not a replica.
    let e = ReplicaDir::open(tmp.path()).unwrap_err();
    assert!(matches!(e, ReplicaError::NotAReplica { .. }) && e.kind() == ErrorKind::NotFound, "{e}");
    assert!(matches!(ReplicaDir::builder().vm("d").create(r.path()), Err(ReplicaError::AlreadyExists { .. })));
    let e = ReplicaDir::builder().vm("other").open_or_create(r.path()).unwrap_err();
    assert!(matches!(e, ReplicaError::OtherVm { .. }), "{e}");
    assert!(ReplicaDir::builder().create(tmp.path().join("novm")).is_err());
    let e = ReplicaDir::builder().vm("x").vhdx_block_size(3 << 20).create(tmp.path().join("bs")).unwrap_err();
    assert!(e.to_string().contains("vhdx_block_size"), "{e}");

    // A damaged or absurd manifest.
    for (bad, kind) in [
        (text[..text.len() / 2].to_string(), ErrorKind::Corruption),
        (text.replacen("3145728", "18446744073709551615", 1), ErrorKind::Corruption),
        (text.replace("\"version\": 1", "\"version\": 7"), ErrorKind::UnsupportedVersion),
        (text.replace("disk1-p00000002.avhdx", "../../etc/passwd"), ErrorKind::Corruption),
    ] {
        std::fs::write(&manifest, &bad).unwrap();
        let e = ReplicaDir::open(r.path()).unwrap_err();
        starts(&e, &manifest);
        assert_eq!(e.kind(), kind, "{e}");
        let e = r.points().unwrap_err();
        starts(&e, &manifest);
    }
    std::fs::write(&manifest, &text).unwrap();

    // Absurd sizes for a run.
    for sizes in [vec![1u64 << 60, MIB as u64], vec![1000, MIB as u64], vec![]] {
        let e = r.begin(&sizes).unwrap_err();
        assert!(matches!(e, ReplicaError::DisksDiffer { .. }), "{e}");
    }

    // A missing AVHDX: reading that point, any later one, and writing all name it.
    let avhdx = r.path().join("disk0-p00000002.avhdx");
    let kept = std::fs::read(&avhdx).unwrap();
    std::fs::remove_file(&avhdx).unwrap();
    let e = r.point_disk(2, 0).err().unwrap();
    assert!(matches!(e, ReplicaError::MissingFile { point: 2, disk: 0, .. }) && e.kind() == ErrorKind::Corruption);
    starts(&e, &avhdx);
    let e = r.point_disk(3, 0).err().unwrap();
    assert!(e.to_string().contains("disk0-p00000003.avhdx") && e.to_string().contains("disk0-p00000002.avhdx"), "{e}");
    let e = r.begin(&[3 * MIB as u64, MIB as u64]).unwrap_err();
    assert!(e.to_string().contains("disk0-p00000002.avhdx"), "{e}");
    assert!(r.keep_last(1).is_err());
    assert_point(&r, 1, &Vm::new(41, &[3 * MIB, MIB]).tap_evolve(41, 1), "point 1 is untouched");
    std::fs::write(&avhdx, &kept).unwrap();

    // A truncated or damaged AVHDX: an image error naming it.
    std::fs::write(&avhdx, &kept[..kept.len() / 3]).unwrap();
    let e = r.point_disk(2, 0).err().unwrap();
    assert!(matches!(e, ReplicaError::Image { point: 2, disk: 0, .. }), "{e}");
    assert!(e.to_string().contains("disk0-p00000002.avhdx"), "{e}");
    let mut damaged = kept.clone();
    damaged[65536 + 100] ^= 1; // header 1
    damaged[131072 + 100] ^= 1; // header 2
    std::fs::write(&avhdx, &damaged).unwrap();
    let e = r.point_disk(2, 0).err().unwrap();
    assert!(e.to_string().contains("disk0-p00000002.avhdx") && e.to_string().contains("header"), "{e}");
    std::fs::write(&avhdx, &kept).unwrap();
    assert_point(&r, 3, &vm, "repaired by hand");
    assert_record_fresh(&r, "after bad input");
}

trait TapEvolve {
    fn tap_evolve(self, seed: u64, generation: u64) -> Self;
}

impl TapEvolve for Vm {
    fn tap_evolve(mut self, seed: u64, generation: u64) -> Vm {
        self.evolve(seed, generation);
        self
    }
}
