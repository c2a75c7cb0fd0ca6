//! The replica folder end to end: runs read back bit-exact (through our
//! reader and an independent decoder), keep-N merges, the receiver's
//! record, damage, bad input, and SIGKILL at random moments.
#![allow(missing_docs)]

mod damage;
mod kill;
mod merge;
mod runs;

use std::path::{Path, PathBuf};
use std::process::Command;

use alike_core::{CancelToken, DiskSource, MemSource};
use alike_formats::vhdx::VhdxSource;
use alike_replica::{ReplicaDir, ReplicaTarget, ReplicateOptions, ReplicateReport, cut_disk, replicate_local};
use alike_testing::{Rng, vhdx_spec as spec};

pub(crate) const MIB: usize = 1 << 20;

/// A VM's disks in memory, changed a little at each generation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Vm {
    pub(crate) disks: Vec<Vec<u8>>,
}

impl Vm {
    /// Disks of `sizes` bytes with scattered data and holes.
    pub(crate) fn new(seed: u64, sizes: &[usize]) -> Vm {
        let mut rng = Rng::new(seed);
        let disks = sizes
            .iter()
            .map(|&n| {
                let mut d = vec![0u8; n];
                for _ in 0..8 {
                    let len = 1 + rng.below((n / 6) as u64) as usize;
                    let off = rng.below((n - len) as u64) as usize;
                    rng.fill(&mut d[off..off + len]);
                }
                d
            })
            .collect();
        Vm { disks }
    }

    /// Generation `gen`'s changes: scattered writes of odd sizes, a range
    /// made zero, a region copied elsewhere (data that moves).
    pub(crate) fn evolve(&mut self, seed: u64, generation: u64) {
        let mut rng = Rng::new(seed ^ generation.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for d in &mut self.disks {
            let n = d.len();
            for _ in 0..6 {
                let len = 1 + rng.below(40_000) as usize;
                let off = rng.below((n - len) as u64) as usize;
                rng.fill(&mut d[off..off + len]);
            }
            if rng.below(2) == 0 {
                let len = rng.below(300_000) as usize;
                let off = rng.below((n - len) as u64) as usize;
                d[off..off + len].fill(0);
            }
            if rng.below(2) == 0 {
                let len = (256 << 10).min(n / 4);
                let a = rng.below((n - len) as u64) as usize;
                let b = rng.below((n - len) as u64) as usize;
                d.copy_within(a..a + len, b);
            }
        }
    }

    pub(crate) fn sources(&self) -> Vec<MemSource> {
        self.disks.iter().enumerate().map(|(i, d)| MemSource { label: format!("disk{i}"), data: d.clone() }).collect()
    }

    /// Replicates this state into `r` as a point stamped `time_ms`.
    pub(crate) fn replicate(&self, r: &ReplicaDir, time_ms: u64, keep: Option<usize>) -> ReplicateReport {
        let src = self.sources();
        let refs: Vec<&dyn DiskSource> = src.iter().map(|s| s as &dyn DiskSource).collect();
        let mut o = ReplicateOptions::default();
        o.time_ms(time_ms);
        if let Some(k) = keep {
            o.keep(k);
        }
        replicate_local(r, &refs, &o).unwrap_or_else(|e| panic!("replicate at {time_ms}: {e}"))
    }
}

/// Reads a whole disk.
pub(crate) fn read_all(src: &dyn DiskSource) -> Vec<u8> {
    let mut v = vec![0u8; src.size() as usize];
    for (i, c) in v.chunks_mut(4 * MIB).enumerate() {
        src.read_at((i * 4 * MIB) as u64, c).unwrap();
    }
    v
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at byte {i}"),
        None => format!("lengths {} and {}", a.len(), b.len()),
    }
}

/// The files of a point's chain, top first (found by our reader; decoded
/// below by the independent one).
pub(crate) fn chain_files(r: &ReplicaDir, point: u64, disk: usize) -> Vec<PathBuf> {
    let p = r.points().unwrap().into_iter().find(|p| p.point == point).unwrap();
    VhdxSource::open(r.path().join(&p.disks[disk].location)).unwrap().layers().into_iter().map(|l| l.path).collect()
}

/// Asserts that point `point` of `r` holds exactly `vm`: through
/// `point_disk`, and through the independent decoder over its VHDX chain.
pub(crate) fn assert_point(r: &ReplicaDir, point: u64, vm: &Vm, what: &str) {
    for (d, want) in vm.disks.iter().enumerate() {
        let got = read_all(&*r.point_disk(point, d).unwrap());
        assert!(got == *want, "{what}: point {point} disk {d} differs: {}", first_difference(&got, want));
        let files: Vec<Vec<u8>> = chain_files(r, point, d).iter().map(|f| std::fs::read(f).unwrap()).collect();
        let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        let indep = spec::read_chain(&refs);
        assert!(
            indep == *want,
            "{what}: point {point} disk {d} read by the independent decoder differs: {}",
            first_difference(&indep, want)
        );
    }
}

/// Asserts that the record of the newest point is what cutting it afresh gives.
pub(crate) fn assert_record_fresh(r: &ReplicaDir, what: &str) {
    let rec = r.record().unwrap();
    let keys = r.keys().unwrap();
    for (d, rd) in rec.disks().iter().enumerate() {
        let src = r.point_disk(rec.point(), d).unwrap();
        let want = cut_disk(&*src, &r.chunking(), &keys, &CancelToken::new()).unwrap();
        assert!(rd.extents == want, "{what}: the record of disk {d} is not the point's cut");
    }
}

/// `qemu-img check` and `compare` on the base VHDX of each disk (the oldest
/// point); false when qemu-img is missing outside CI.
pub(crate) fn qemu_check_base(r: &ReplicaDir, vm: &Vm, scratch: &Path) -> bool {
    if !alike_testing::require_tool("qemu-img") {
        return false;
    }
    let p = r.points().unwrap().into_iter().next().unwrap();
    for (d, disk) in p.disks.iter().enumerate() {
        let base = r.path().join(&disk.location);
        assert!(disk.location.ends_with(".vhdx"), "{}", disk.location);
        let raw = scratch.join(format!("base{d}.raw"));
        std::fs::write(&raw, &vm.disks[d]).unwrap();
        for args in [
            vec!["check", "-f", "vhdx", base.to_str().unwrap()],
            vec!["compare", "-f", "raw", "-F", "vhdx", raw.to_str().unwrap(), base.to_str().unwrap()],
        ] {
            let out = Command::new("qemu-img").args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "qemu-img {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    true
}

/// The names in the replica folder, sorted.
pub(crate) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// What the folder of a healthy replica holds: its files and nothing else.
pub(crate) fn assert_tidy(r: &ReplicaDir) {
    let points = r.points().unwrap();
    let mut want: Vec<String> = vec!["key".into(), "lock".into(), "replica.json".into()];
    if let Some(p) = points.last() {
        want.push(format!("record-{:08}.bin", p.point));
    }
    for p in &points {
        want.extend(p.disks.iter().map(|d| d.location.clone()));
    }
    want.sort();
    assert_eq!(names(r.path()), want);
}

/// What the folder of a replica holds after a repair: the files some
/// point's chain reaches (a merge cut short leaves a new base that a
/// re-parented AVHDX already uses), and nothing else.
pub(crate) fn assert_no_leftovers(r: &ReplicaDir, what: &str) {
    let points = r.points().unwrap();
    let mut want: Vec<String> = vec!["key".into(), "lock".into(), "replica.json".into()];
    if let Some(p) = points.last() {
        want.push(format!("record-{:08}.bin", p.point));
    }
    for p in &points {
        for d in 0..p.disks.len() {
            for f in chain_files(r, p.point, d) {
                want.push(f.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    want.sort();
    want.dedup();
    assert_eq!(names(r.path()), want, "{what}");
}
