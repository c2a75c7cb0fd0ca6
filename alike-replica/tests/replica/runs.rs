//! Runs: points read back bit-exact, only changes travel, raw writes,
//! local copies of moved data, aborts, offers refused, the writer lock.

use alike_core::{Chunking, DiskSource, Extent, RawFileSource};
use alike_replica::{ExportOptions, ReplicaDir, ReplicaError, ReplicaTarget, ReplicateOptions, replicate_local};
use alike_testing::{Rng, sha256_file, sparse_image};

use crate::{MIB, Vm, assert_point, assert_record_fresh, assert_tidy, names, qemu_check_base, read_all};

#[test]
fn runs_read_back_bit_exact_and_send_only_changes() {
    for (c, chunking) in [Chunking::default(), Chunking::Fixed { block_size: 64 << 10 }].into_iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let r = ReplicaDir::builder().vm("vm1").chunking(chunking).open_or_create(tmp.path().join("r")).unwrap();
        assert_eq!(r.chunking(), chunking);
        let seed = 11 + c as u64;
        let mut vm = Vm::new(seed, &[6 * MIB, 3 * MIB + 1536]);
        let mut history = Vec::new();
        for generation in 1..=5u64 {
            let rep = vm.replicate(&r, generation * 1000, None);
            assert_eq!(rep.point, generation);
            let total: usize = vm.disks.iter().map(Vec::len).sum();
            if generation == 1 {
                assert!(rep.stats.needed_bytes > 0 && rep.stats.present_bytes == 0);
            } else {
                // ~6 writes of ≤ 40 KB and a moved 256 KiB region per disk: a small part of the disks travels.
                assert!(
                    (rep.stats.needed_bytes as usize) < total / 4,
                    "{chunking}: generation {generation} sent {} of {total}",
                    rep.stats.needed_bytes
                );
                assert!(rep.stats.present_bytes > 0);
            }
            assert!(rep.sent_bytes <= rep.stats.needed_bytes);
            history.push(vm.clone());
            for (i, old) in history.iter().enumerate() {
                assert_point(&r, i as u64 + 1, old, &format!("{chunking} after run {generation}"));
            }
            assert_record_fresh(&r, &format!("{chunking} run {generation}"));
            assert_tidy(&r);
            vm.evolve(seed, generation);
        }
        let points = r.points().unwrap();
        assert_eq!(points.iter().map(|p| p.time_ms).collect::<Vec<_>>(), [1000, 2000, 3000, 4000, 5000]);
        assert_eq!(points[1].time, "1970-01-01T00:00:02.000Z");
        assert!(qemu_check_base(&r, &history[0], tmp.path()) || !alike_testing::on_ci());
        // Export: a raw image of a point's disk, and an existing output is refused.
        let out = tmp.path().join("out.img");
        let rep = r.export(3, 1, &out, &ExportOptions::default()).unwrap();
        assert_eq!((rep.point, rep.disk, rep.size), (3, 1, history[2].disks[1].len() as u64));
        assert!(std::fs::read(&out).unwrap() == history[2].disks[1]);
        let e = r.export(3, 1, &out, &ExportOptions::default()).unwrap_err();
        assert!(matches!(e, ReplicaError::OutputExists { .. }), "{e}");
        r.export(2, 0, &out, ExportOptions::default().force(true)).unwrap();
        assert!(std::fs::read(&out).unwrap() == history[1].disks[0]);
        let e = r.export(9, 0, &tmp.path().join("none.img"), &ExportOptions::default()).unwrap_err();
        assert!(
            matches!(e, ReplicaError::PointNotFound { .. }) && e.to_string().contains("points: 1, 2, 3, 4, 5"),
            "{e}"
        );
        assert!(matches!(r.point_disk(2, 2), Err(ReplicaError::DiskNotFound { .. })));
    }
}

#[test]
fn sparse_sources_are_read_only_where_they_hold_data() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    sparse_image(&img, 256 << 20, 6, 5);
    let src = RawFileSource::open(&img).unwrap();
    let allocated: u64 = src.allocated_ranges().unwrap().iter().map(|r| r.end - r.start).sum();
    let r = ReplicaDir::builder().vm("big").create(tmp.path().join("r")).unwrap();
    let rep = replicate_local(&r, &[&src], &ReplicateOptions::default()).unwrap();
    assert!(rep.read_bytes <= allocated + (1 << 20), "read {} of {allocated} allocated", rep.read_bytes);
    let out = tmp.path().join("out.img");
    r.export(1, 0, &out, &ExportOptions::default()).unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&img));
    // The replica's files are sparse too: the base holds the data, not 256 MiB.
    let base = std::fs::metadata(r.path().join("disk0-p00000001.vhdx")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(base.blocks() * 512 < 64 << 20, "{} bytes on disk", base.blocks() * 512);
    // A second run of the same image sends nothing.
    let rep = replicate_local(&r, &[&src], &ReplicateOptions::default()).unwrap();
    assert_eq!((rep.stats.needed_bytes, rep.sent_bytes), (0, 0));
}

#[test]
fn moved_data_is_copied_from_the_replica_not_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("m").create(tmp.path().join("r")).unwrap();
    let mut vm = Vm::new(3, &[8 * MIB]);
    vm.replicate(&r, 1, None);
    // Move 1 MiB of data by a whole number of 4 KiB blocks.
    let mut rng = Rng::new(9);
    let mut block = vec![0u8; MIB];
    rng.fill(&mut block);
    vm.disks[0][MIB..2 * MIB].copy_from_slice(&block);
    vm.replicate(&r, 2, None);
    vm.disks[0][5 * MIB + 8192..6 * MIB + 8192].copy_from_slice(&block);
    let rep = vm.replicate(&r, 3, None);
    assert!(rep.stats.copied_bytes >= 900 << 10, "copied {}", rep.stats.copied_bytes);
    assert!(rep.stats.needed_bytes < 256 << 10, "sent {}", rep.stats.needed_bytes);
    assert_point(&r, 3, &vm, "moved");
}

#[test]
fn raw_writes_and_zeroes_are_hashed_at_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("raw").create(tmp.path().join("r")).unwrap();
    let mut vm = Vm::new(4, &[4 * MIB, 2 * MIB]);
    vm.replicate(&r, 1, None);
    let run = r.begin(&[4 * MIB as u64, 2 * MIB as u64]).unwrap();
    let mut rng = Rng::new(1);
    for (d, off, len) in [(0usize, 1000usize, 70_000usize), (0, 3 * MIB - 100, 5000), (1, 0, 513)] {
        let data = rng.noise(len);
        run.write_at(d, off as u64, &data).unwrap();
        vm.disks[d][off..off + len].copy_from_slice(&data);
    }
    run.write_zeroes(0, 2 * MIB as u64 + 7, 300_000).unwrap();
    vm.disks[0][2 * MIB + 7..2 * MIB + 300_007].fill(0);
    let done = run.commit(2).unwrap();
    assert!(done.stats.rehashed_bytes > 0 && done.stats.raw_bytes == 70_000 + 5000 + 513);
    assert_point(&r, 2, &vm, "raw writes");
    // Every id of the record is true of the point's bytes, and what no extent covers is zero.
    let rec = r.record().unwrap();
    let keys = r.keys().unwrap();
    for (d, rd) in rec.disks().iter().enumerate() {
        let bytes = &vm.disks[d];
        let mut covered = vec![false; bytes.len()];
        for e in &rd.extents {
            let (a, b) = (e.offset as usize, e.end() as usize);
            assert_eq!(keys.hash(&bytes[a..b]), e.id, "disk {d} extent at {a}");
            covered[a..b].fill(true);
        }
        assert!(bytes.iter().zip(&covered).all(|(x, c)| *c || *x == 0), "disk {d}: data outside the record");
    }
    // The next offered run sends only what differs from the record.
    vm.evolve(4, 2);
    let rep = vm.replicate(&r, 3, None);
    assert!(rep.stats.needed_bytes < 1 << 20, "{}", rep.stats.needed_bytes);
    assert_point(&r, 3, &vm, "after raw writes");
}

#[test]
fn an_aborted_or_dropped_run_leaves_no_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("a").create(tmp.path().join("r")).unwrap();
    let vm = Vm::new(6, &[2 * MIB]);
    vm.replicate(&r, 1, None);
    let before = names(r.path());
    let sizes = [2 * MIB as u64];
    let run = r.begin(&sizes).unwrap();
    run.write_at(0, 0, &[1; 9000]).unwrap();
    run.abort().unwrap();
    assert_eq!(names(r.path()), before);
    {
        let run = r.begin(&sizes).unwrap();
        run.write_zeroes(0, 0, 4096).unwrap();
    }
    assert_eq!(names(r.path()), before);
    // A run that fails at commit (an extent never arrived) leaves nothing either.
    let run = r.begin(&sizes).unwrap();
    let keys = r.keys().unwrap();
    let data = vec![5u8; 8192];
    let need = run.offer(0, 0..8192, &[Extent { offset: 0, len: 8192, id: keys.hash(&data) }]).unwrap();
    assert_eq!(need, [0]);
    let e = run.commit(2).unwrap_err();
    assert!(matches!(e, ReplicaError::Incomplete { disk: 0, count: 1, offset: 0, len: 8192 }), "{e}");
    assert_eq!(names(r.path()), before);
    assert_eq!(r.points().unwrap().len(), 1);
    assert_point(&r, 1, &vm, "after failed runs");
}

#[test]
fn offers_and_writes_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("o").create(tmp.path().join("r")).unwrap();
    let run = r.begin(&[MIB as u64]).unwrap();
    let keys = r.keys().unwrap();
    let a = vec![1u8; 4096];
    let b = vec![2u8; 8192];
    let ea = Extent { offset: 0, len: 4096, id: keys.hash(&a) };
    let eb = Extent { offset: 8192, len: 8192, id: keys.hash(&b) };
    let invalid = |res: Result<Vec<usize>, ReplicaError>, want: &str| {
        let e = res.unwrap_err();
        assert!(matches!(e, ReplicaError::InvalidArgument(_)) && e.to_string().contains(want), "{e} (wanted {want})");
    };
    invalid(run.offer(0, 0..65536, &[eb, ea]), "out of order");
    invalid(run.offer(0, 0..12288, &[ea, eb]), "ends past the span");
    invalid(run.offer(1, 0..4096, &[]), "the run has 1 disk");
    invalid(run.offer(0, 0..(2 * MIB as u64), &[]), "not inside");
    invalid(run.offer(0, 0..65536, &[Extent { len: 0, ..ea }]), "length");
    invalid(run.offer(0, 0..65536, &[Extent { offset: 512, ..ea }]), "not a chunk of cdc:16/32/64");
    invalid(run.offer(0, 0..65536, &[Extent { len: 4000, ..ea }]), "4096-byte grid");
    assert_eq!(run.offer(0, 0..65536, &[ea, eb]).unwrap(), [0, 1]);
    // Data that does not hash to the offered id is refused; nothing else is awaited.
    let e = run.write_extent(0, 8192, &a.repeat(2)).unwrap_err();
    assert!(matches!(e, ReplicaError::ExtentMismatch { disk: 0, offset: 8192, len: 8192, .. }), "{e}");
    assert!(run.write_extent(0, 4096, &a).is_err());
    // Neither a span nor a raw write may cut an extent still awaited.
    invalid(run.offer(0, 12288..65536, &[]), "has not arrived");
    assert!(run.write_at(0, 9000, b"x").is_err());
    run.write_extent(0, 0, &a).unwrap();
    run.write_extent(0, 0, &a).unwrap(); // again: harmless
    run.write_extent(0, 8192, &b).unwrap();
    let done = run.commit(1).unwrap();
    assert_eq!(done.point.point, 1);
    assert_eq!((done.stats.offered_bytes, done.stats.received_bytes), (12288, 12288));
    let got = read_all(&*r.point_disk(1, 0).unwrap());
    assert!(got[..4096] == a[..] && got[4096..8192].iter().all(|x| *x == 0) && got[8192..16384] == b[..]);
    assert!(got[16384..].iter().all(|x| *x == 0));
}

#[test]
fn one_writer_at_a_time_while_readers_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("l").create(tmp.path().join("r")).unwrap();
    let vm = Vm::new(8, &[MIB]);
    vm.replicate(&r, 1, None);
    let run = r.begin(&[MIB as u64]).unwrap();
    let other = ReplicaDir::open(r.path()).unwrap();
    assert!(matches!(other.begin(&[MIB as u64]), Err(ReplicaError::Busy { .. })));
    assert!(matches!(other.keep_last(1), Err(ReplicaError::Busy { .. })));
    assert!(matches!(other.repair(), Err(ReplicaError::Busy { .. })));
    assert_eq!(other.points().unwrap().len(), 1);
    assert_point(&other, 1, &vm, "while a run holds the lock");
    drop(run);
    other.begin(&[MIB as u64]).unwrap().abort().unwrap();
    // A run of other disks than the replica's is refused.
    let e = r.begin(&[2 * MIB as u64]).unwrap_err();
    assert!(matches!(e, ReplicaError::DisksDiffer { .. }) && e.to_string().contains("[1048576]"), "{e}");
    assert!(matches!(r.begin(&[MIB as u64, MIB as u64]), Err(ReplicaError::DisksDiffer { .. })));
    assert_tidy(&r);
}
