//! Keeping the last N points: the oldest merge into a new base, every
//! point kept reads as before, and the files left are exactly the chain.

use alike_formats::vhdx::{CreateOptions, VhdxSource, VhdxTarget};
use alike_replica::{ReplicaDir, ReplicaTarget};
use alike_testing::vhdx_spec as spec;

use crate::{MIB, Vm, assert_point, assert_record_fresh, assert_tidy, chain_files, qemu_check_base};

#[test]
fn keep_last_merges_forward_and_every_point_still_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("k").create(tmp.path().join("r")).unwrap();
    let seed = 21;
    let mut vm = Vm::new(seed, &[5 * MIB, 2 * MIB + 512]);
    let mut history = vec![];
    for generation in 1..=6u64 {
        vm.replicate(&r, generation, None);
        history.push(vm.clone());
        vm.evolve(seed, generation);
    }
    assert!(r.keep_last(0).is_err());
    assert_eq!(r.keep_last(6).unwrap(), Vec::<u64>::new());
    // Keep 3: points 4, 5, 6 remain; 4 becomes the base.
    assert_eq!(r.keep_last(3).unwrap(), [1, 2, 3]);
    let points: Vec<u64> = r.points().unwrap().iter().map(|p| p.point).collect();
    assert_eq!(points, [4, 5, 6]);
    for p in 4..=6 {
        assert_point(&r, p, &history[p as usize - 1], "after keep 3");
    }
    assert_tidy(&r);
    assert!(qemu_check_base(&r, &history[3], tmp.path()) || !alike_testing::on_ci());
    // The chains: 6 → 5 → the new base 4; the re-parented AVHDX keeps its DataWriteGuid.
    for d in 0..2 {
        let files = chain_files(&r, 6, d);
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            [format!("disk{d}-p00000006.avhdx"), format!("disk{d}-p00000005.avhdx"), format!("disk{d}-p00000004.vhdx")]
        );
        let five = spec::parse(&std::fs::read(&files[1]).unwrap());
        let six = spec::parse(&std::fs::read(&files[0]).unwrap());
        let loc = six.meta.iter().find(|m| m.0 == spec::PARENT_LOCATOR).unwrap();
        let kv = spec::locator(&loc.1);
        assert!(kv.iter().any(|(k, v)| k == "parent_linkage" && *v == format!("{{{}}}", five.hdr.dwg)));
        assert!(kv.iter().any(|(k, v)| k == "relative_path" && *v == format!("disk{d}-p00000005.avhdx")));
    }
    assert_record_fresh(&r, "after keep 3");
    // A run on top of the merged chain, then keep 1: only the newest, as a base.
    vm.replicate(&r, 7, None);
    history.push(vm.clone());
    assert_eq!(r.keep_last(1).unwrap(), [4, 5, 6]);
    assert_point(&r, 7, &history[6], "after keep 1");
    assert_tidy(&r);
    assert!(qemu_check_base(&r, &history[6], tmp.path()) || !alike_testing::on_ci());
    assert!(VhdxSource::open(r.path().join("disk0-p00000007.vhdx")).unwrap().layers().len() == 1);
    // Runs with keep on every run.
    for generation in 8..=11u64 {
        vm.evolve(seed, generation);
        let rep = vm.replicate(&r, generation, Some(2));
        history.push(vm.clone());
        if generation > 8 {
            assert_eq!(rep.removed_points, [generation - 2]);
        }
        assert!(rep.stats.needed_bytes < 2 * MIB as u64);
    }
    assert_eq!(r.points().unwrap().iter().map(|p| p.point).collect::<Vec<_>>(), [10, 11]);
    assert_point(&r, 10, &history[9], "keep 2");
    assert_point(&r, 11, &history[10], "keep 2");
    assert_tidy(&r);
    assert_record_fresh(&r, "keep 2");
}

#[test]
fn a_merge_cut_short_is_finished_by_the_next() {
    // The state a merge leaves when it dies after re-parenting, made by
    // hand: a new base for point 3 and point 4's AVHDX rewritten over it,
    // while the manifest still lists points 1 to 4. Every point reads
    // right, repair keeps what the chains reach, and the next merge
    // finishes the work.
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("c").create(tmp.path().join("r")).unwrap();
    let mut vm = Vm::new(31, &[3 * MIB]);
    let mut history = vec![];
    for generation in 1..=4u64 {
        vm.replicate(&r, generation, None);
        history.push(vm.clone());
        vm.evolve(31, generation);
    }
    let size = 3 * MIB as u64;
    let base = r.path().join("disk0-p00000003.vhdx");
    let mut o = CreateOptions::default();
    o.block_size(2 << 20);
    let t = VhdxTarget::create(&base, size, &o).unwrap();
    t.write(0, &history[2].disks[0]).unwrap();
    t.complete(size).unwrap();
    let four = r.path().join("disk0-p00000004.avhdx");
    let old = VhdxSource::open(&four).unwrap();
    let t =
        VhdxTarget::create_differencing(&four, &base).unwrap().with_data_write_guid(old.layers()[0].data_write_guid);
    for range in old.child_ranges().unwrap() {
        let s = range.start as usize..range.end as usize;
        t.write(range.start, &history[3].disks[0][s]).unwrap();
    }
    t.complete(size).unwrap();
    drop(old);
    // Leftovers of dead runs, and a stray base no chain reaches.
    std::fs::write(r.path().join(".disk0-p00000005.avhdx.alike-partial-1-0"), b"x").unwrap();
    std::fs::write(r.path().join("record-00000009.bin"), b"x").unwrap();
    std::fs::write(r.path().join("disk0-p00000002.vhdx"), b"half a file").unwrap();
    assert_eq!(r.repair().unwrap(), None);
    let mut left = crate::names(r.path());
    left.retain(|n| n.starts_with("disk"));
    assert_eq!(
        left,
        [
            "disk0-p00000001.vhdx",
            "disk0-p00000002.avhdx",
            "disk0-p00000003.avhdx",
            "disk0-p00000003.vhdx",
            "disk0-p00000004.avhdx"
        ]
    );
    for p in 1..=4 {
        assert_point(&r, p, &history[p as usize - 1], "merge cut short");
    }
    assert_eq!(r.keep_last(2).unwrap(), [1, 2]);
    for p in 3..=4 {
        assert_point(&r, p, &history[p as usize - 1], "merge finished");
    }
    assert_tidy(&r);
    assert!(qemu_check_base(&r, &history[2], tmp.path()) || !alike_testing::on_ci());
}

#[test]
fn a_replica_holds_at_most_max_points() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("many").vhdx_block_size(1 << 20).create(tmp.path().join("r")).unwrap();
    let mut vm = Vm::new(51, &[64 << 10]);
    for generation in 1..=alike_replica::MAX_POINTS as u64 {
        vm.disks[0][generation as usize * 512] = generation as u8;
        vm.replicate(&r, generation, None);
    }
    assert_point(&r, alike_replica::MAX_POINTS as u64, &vm, "the deepest chain");
    let e = r.begin(&[64 << 10]).unwrap_err();
    assert!(e.to_string().contains("keep fewer"), "{e}");
    assert_eq!(r.keep_last(2).unwrap().len(), alike_replica::MAX_POINTS - 2);
    vm.replicate(&r, 100, None);
    assert_point(&r, alike_replica::MAX_POINTS as u64 + 1, &vm, "after keep 2");
}
