//! The engine end to end, in one process over the in-memory link and
//! across two threads over loopback TCP: what is read, what crosses, what
//! the replica holds after each run (bit-exact), seeding, resuming a first
//! run cut short, and what a peer without the secret or of another VM gets.
#![allow(missing_docs)]

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alike_core::{CancelToken, Chunking, DiskSource, Extent, MemSource, RunOptions};
use alike_replica::{ReplicaDir, ReplicaTarget, cut_disk};
use alike_replicate::{
    Dial, LinkOptions, ReceiverOptions, ReplicateError, Seed, SenderOptions, TcpEnd, accept, dial, replicate_local,
    run_receiver, run_sender,
};
use alike_testing::{Rng, TrackedDisk};

const MIB: usize = 1 << 20;

/// A disk of `n` bytes: compressible text-like data, random data, and holes.
fn disk(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut d = vec![0u8; n];
    let mut at = 0;
    while at < n {
        let len = (64 << 10) + rng.below(512 << 10) as usize;
        let end = (at + len).min(n);
        match rng.below(3) {
            0 => rng.fill(&mut d[at..end]),
            1 => {
                for (i, b) in d[at..end].iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog "[(i + at) % 44];
                }
            }
            _ => {}
        }
        at = end;
    }
    d
}

/// Writes `count` random 4 KiB blocks at random 4 KiB-aligned places.
fn scatter(d: &mut [u8], seed: u64, count: usize) -> Vec<std::ops::Range<u64>> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for _ in 0..count {
        let at = rng.below((d.len() / 4096) as u64) as usize * 4096;
        rng.fill(&mut d[at..at + 4096]);
        out.push(at as u64..at as u64 + 4096);
    }
    out
}

fn sources(disks: &[Vec<u8>]) -> Vec<MemSource> {
    disks.iter().enumerate().map(|(i, d)| MemSource { label: format!("disk{i}"), data: d.clone() }).collect()
}

fn read_all(src: &dyn DiskSource) -> Vec<u8> {
    let mut v = vec![0u8; src.size() as usize];
    for (i, c) in v.chunks_mut(4 * MIB).enumerate() {
        src.read_at((i * 4 * MIB) as u64, c).unwrap();
    }
    v
}

fn assert_point(r: &ReplicaDir, point: u64, disks: &[Vec<u8>]) {
    for (d, want) in disks.iter().enumerate() {
        let got = read_all(&*r.point_disk(point, d).unwrap());
        assert!(got == *want, "point {point} disk {d} differs");
    }
}

/// The chunks of `new` that the replica (holding `old`) lacks — neither
/// in place nor anywhere else in it (those it copies locally) — and the
/// sum of each one's zstd-compressed size.
fn changed_chunks(r: &ReplicaDir, old: &[Vec<u8>], new: &[Vec<u8>]) -> (u64, u64) {
    let keys = r.keys().unwrap();
    let cut = |d: &Vec<u8>| {
        cut_disk(&MemSource { label: "x".into(), data: d.clone() }, &r.chunking(), &keys, &CancelToken::new()).unwrap()
    };
    let held: HashSet<[u8; 32]> = old.iter().flat_map(&cut).map(|e| e.id.0).collect();
    let (mut raw, mut compressed) = (0, 0);
    for n in new {
        for e in cut(n).iter().filter(|e| !held.contains(&e.id.0)) {
            let b = &n[e.offset as usize..(e.offset + e.len) as usize];
            raw += e.len;
            compressed += alike_core::compress(b, 3).map_or(b.len(), |c| c.len()) as u64;
        }
    }
    (raw, compressed)
}

fn local(
    disks: &[&dyn DiskSource],
    r: &ReplicaDir,
    opts: &SenderOptions,
) -> Result<alike_replicate::LocalReport, ReplicateError> {
    replicate_local(disks, opts, r, &ReceiverOptions::default(), &[], &LinkOptions::default())
}

#[test]
fn in_process_the_first_run_sends_everything_and_the_next_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("vm").open_or_create(tmp.path().join("r")).unwrap();
    let v1 = vec![disk(1, 12 * MIB), disk(2, 5 * MIB + 4096 * 3 + 512)];
    let src = sources(&v1);
    let refs: Vec<&dyn DiskSource> = src.iter().map(|s| s as &dyn DiskSource).collect();
    let opts = SenderOptions::new("vm");
    let first = local(&refs, &r, &opts).unwrap();
    assert_eq!(first.receiver.point, 1);
    assert_eq!(first.sender.point, 1);
    assert_eq!(first.sender.read_bytes, (v1[0].len() + v1[1].len()) as u64);
    let (all_raw, all_z) = changed_chunks(&r, &[vec![0; v1[0].len()], vec![0; v1[1].len()]], &v1);
    assert_eq!(first.sender.needed_bytes, all_raw, "a first run sends every chunk with data");
    assert!(first.sender.sent_bytes < all_z + (300 << 10), "compressed: {} vs {all_z}", first.sender.sent_bytes);
    assert_point(&r, 1, &v1);

    let mut v2 = v1.clone();
    scatter(&mut v2[0], 7, 40);
    scatter(&mut v2[1], 8, 10);
    let src = sources(&v2);
    let refs: Vec<&dyn DiskSource> = src.iter().map(|s| s as &dyn DiskSource).collect();
    let second = local(&refs, &r, &opts).unwrap();
    let (raw, z) = changed_chunks(&r, &v1, &v2);
    assert_eq!(second.sender.needed_bytes, raw, "only the chunks that changed are needed");
    // Everything on the wire: the compressed changed chunks, plus offers
    // (44 bytes per chunk of the disks) and framing.
    let offers = 44 * (second.sender.offered_bytes / (16 << 10));
    assert!(
        second.sender.sent_bytes <= z + offers + (64 << 10),
        "sent {} for {z} compressed bytes of changed chunks",
        second.sender.sent_bytes
    );
    assert!(second.sender.sent_bytes * 2 < first.sender.sent_bytes);
    assert_point(&r, 2, &v2);
    assert_point(&r, 1, &v1);
}

#[test]
fn with_change_tracking_only_what_changed_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("vm").open_or_create(tmp.path().join("r")).unwrap();
    let d0 = TrackedDisk::new(disk(3, 16 * MIB));
    let d1 = TrackedDisk::new(disk(4, 3 * MIB));
    let mut opts = SenderOptions::new("vm");
    opts.state_file = Some(tmp.path().join("state/vm.state"));
    let refs: Vec<&dyn DiskSource> = vec![&d0, &d1];
    let first = local(&refs, &r, &opts).unwrap();
    assert_eq!(first.sender.read_bytes, 19 * MIB as u64);
    assert!(first.sender.disks.iter().all(|d| !d.changed_only));

    let mut rng = Rng::new(9);
    for _ in 0..6 {
        let at = rng.below(16 * MIB as u64 - 10_000);
        d0.write(at, &rng.noise(5000));
    }
    let second = local(&refs, &r, &opts).unwrap();
    assert!(second.sender.disks.iter().all(|d| d.changed_only));
    // Each write grows to the chunks it touches, and on until the cuts meet the old ones again.
    assert!(second.sender.read_bytes < 2 * MIB as u64, "read {} bytes for six small writes", second.sender.read_bytes);
    assert_eq!(second.sender.disks[1].read_bytes, 0, "an unchanged disk is not read");
    assert_point(&r, 2, &[d0.bytes(), d1.bytes()]);

    // The map is what cutting the whole disk afresh gives.
    let fresh = cut_disk(
        &MemSource { label: "x".into(), data: d0.bytes() },
        &r.chunking(),
        &r.keys().unwrap(),
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(r.record().unwrap().disks()[0].extents, fresh);
    // A fresh sender state (or a rebuilt one) reads everything once, and sends the same.
    std::fs::remove_file(tmp.path().join("state/vm.state")).unwrap();
    d1.write(4096, &[1; 100]);
    let third = local(&refs, &r, &opts).unwrap();
    assert_eq!(third.sender.read_bytes, 19 * MIB as u64);
    assert!(third.sender.needed_bytes <= 64 << 10);
    assert_point(&r, 3, &[d0.bytes(), d1.bytes()]);
    let fourth = local(&refs, &r, &opts).unwrap();
    assert_eq!(fourth.sender.read_bytes, 0, "nothing changed: nothing read");
    assert_eq!(fourth.sender.needed_bytes, 0);
    assert_point(&r, 4, &[d0.bytes(), d1.bytes()]);
}

#[test]
fn a_first_run_seeded_from_an_older_copy_sends_only_the_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("vm").open_or_create(tmp.path().join("r")).unwrap();
    let old = disk(5, 10 * MIB);
    let mut new = old.clone();
    scatter(&mut new, 11, 12);
    let seed_src = MemSource { label: "seed".into(), data: old.clone() };
    let seeds = vec![Seed::prepare(&r, &seed_src, &RunOptions::default()).unwrap()];
    let src = MemSource { label: "disk0".into(), data: new.clone() };
    let rep = replicate_local(
        &[&src],
        &SenderOptions::new("vm"),
        &r,
        &ReceiverOptions::default(),
        &seeds,
        &LinkOptions::default(),
    )
    .unwrap();
    let (raw, _) = changed_chunks(&r, std::slice::from_ref(&old), std::slice::from_ref(&new));
    assert_eq!(rep.sender.needed_bytes, raw, "only what differs from the seed");
    assert!(rep.receiver.stats.seeded_bytes > 5 * MIB as u64);
    assert_point(&r, 1, &[new]);
}

#[test]
fn a_first_run_cut_short_resumes_without_sending_again_what_arrived() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("vm").open_or_create(tmp.path().join("r")).unwrap();
    let data = disk(6, 24 * MIB);
    let src = MemSource { label: "disk0".into(), data: data.clone() };
    // Cancel the first attempt once some of the disk has been sent.
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let mut opts = SenderOptions::new("vm");
    opts.run.cancel = cancel.clone();
    let seen = Arc::new(AtomicU64::new(0));
    let s2 = seen.clone();
    opts.progress = Some(Arc::new(move |p: &alike_replicate::ReplicationProgress| {
        s2.store(p.wire_sent_bytes, Ordering::Relaxed);
        if p.wire_sent_bytes >= 2 * MIB as u64 {
            c.cancel();
        }
    }));
    // Slow enough (1 MiB/s on the link: the ~4.5 MiB of compressed chunks
    // take 4 s or more) that the cancel, at 2 MiB sent, lands mid-way even
    // when progress is reported late on a loaded machine (it was 4 MiB/s,
    // and under CI's load the run ended before the cancel was seen).
    let mut slow = LinkOptions::default();
    slow.bwlimit = Some(1 << 20);
    let err = replicate_local(&[&src], &opts, &r, &ReceiverOptions::default(), &[], &slow).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert!(r.points().unwrap().is_empty(), "an unfinished run is never a point");
    let journal = std::fs::metadata(tmp.path().join("r/resume.journal")).unwrap().len();
    assert!(journal >= seen.load(Ordering::Relaxed), "what was sent is journaled");

    let again = local(&[&src], &r, &SenderOptions::new("vm")).unwrap();
    let (all, _) = changed_chunks(&r, &[vec![0; data.len()]], std::slice::from_ref(&data));
    assert!(again.receiver.stats.resumed_bytes > 2 * MIB as u64, "{:?}", again.receiver.stats);
    assert_eq!(again.sender.needed_bytes + again.receiver.stats.resumed_bytes, all);
    assert_point(&r, 1, &[data]);
    assert!(!tmp.path().join("r/resume.journal").exists(), "the journal goes at the commit");
}

#[test]
fn a_replica_of_another_vm_or_chunking_is_refused_and_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("vm").open_or_create(tmp.path().join("r")).unwrap();
    let src = MemSource { label: "disk0".into(), data: disk(7, MIB) };
    local(&[&src], &r, &SenderOptions::new("vm")).unwrap();
    let mut ro = ReceiverOptions::default();
    ro.vm = Some("vm".into());
    let e = replicate_local(&[&src], &SenderOptions::new("other"), &r, &ro, &[], &LinkOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"other\"") && e.contains("\"vm\""), "{e}");
    let mut fixed = SenderOptions::new("vm");
    fixed.chunking = Chunking::Fixed { block_size: 65536 };
    let e = local(&[&src], &r, &fixed).unwrap_err().to_string();
    assert!(e.contains("fixed:64") && e.contains("cdc:16/32/64"), "{e}");
    assert_eq!(r.points().unwrap().len(), 1);
}

/// Both ends over loopback TCP, one thread each.
fn over_tcp(
    r: &ReplicaDir,
    disks: &[Vec<u8>],
    pull: bool,
    secrets: ([u8; 32], [u8; 32]),
) -> (Result<alike_replicate::SenderReport, ReplicateError>, Result<alike_replicate::ReceiverReport, ReplicateError>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let src = sources(disks);
    let refs: Vec<&dyn DiskSource> = src.iter().map(|s| s as &dyn DiskSource).collect();
    let cancel = CancelToken::new();
    let mut link = LinkOptions::default();
    link.idle_timeout = Some(Duration::from_secs(30));
    let end = |dials: bool, secret: [u8; 32]| -> Result<TcpEnd, ReplicateError> {
        let stream = if dials {
            dial(&[addr], Duration::from_secs(10), &cancel)?
        } else {
            accept(&listener, Duration::from_secs(10), &cancel)?
        };
        let d = if dials { Dial::Connect } else { Dial::Accept };
        Ok(TcpEnd { stream, dial: d, job: "job-1".into(), secret, link: link.clone() })
    };
    std::thread::scope(|sc| {
        let s = sc.spawn(|| run_sender(end(!pull, secrets.0)?, &refs, &SenderOptions::new("vm")));
        let rr = run_receiver(end(pull, secrets.1).unwrap(), r, &ReceiverOptions::default(), &[]);
        (s.join().unwrap(), rr)
    })
}

#[test]
fn two_ends_over_tcp_push_and_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("vm").open_or_create(tmp.path().join("r")).unwrap();
    let v1 = vec![disk(8, 6 * MIB), disk(9, 2 * MIB)];
    let (s, rr) = over_tcp(&r, &v1, false, ([1; 32], [1; 32]));
    let (s, rr) = (s.unwrap(), rr.unwrap());
    assert_eq!((s.point, rr.point), (1, 1));
    assert_eq!(rr.received_bytes, s.sent_bytes, "what one end sent, the other took");
    assert_point(&r, 1, &v1);
    let mut v2 = v1.clone();
    scatter(&mut v2[1], 3, 5);
    let (s, rr) = over_tcp(&r, &v2, true, ([1; 32], [1; 32]));
    let (s, rr) = (s.unwrap(), rr.unwrap());
    assert_eq!((s.point, rr.point), (2, 2));
    assert!(s.needed_bytes <= 5 * (64 << 10));
    assert_point(&r, 2, &v2);

    // A peer without the job's secret: both ends fail, the replica is as it was.
    let (s, rr) = over_tcp(&r, &v1, false, ([1; 32], [2; 32]));
    for e in [s.unwrap_err().to_string(), rr.unwrap_err().to_string()] {
        assert!(e.contains("secret") || e.contains("authentication") || e.contains("handshake"), "{e}");
    }
    assert_eq!(r.points().unwrap().len(), 2);
    assert_point(&r, 2, &v2);
}

#[test]
fn extents_offered_are_the_replicas_cuts() {
    // What the sender offers for a full read is exactly what the record holds afterwards.
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("vm").open_or_create(tmp.path().join("r")).unwrap();
    let data = disk(10, 9 * MIB + 8192);
    let src = MemSource { label: "d".into(), data: data.clone() };
    local(&[&src], &r, &SenderOptions::new("vm")).unwrap();
    let record = r.record().unwrap();
    let want: Vec<Extent> = cut_disk(&src, &r.chunking(), &r.keys().unwrap(), &CancelToken::new()).unwrap();
    assert_eq!(record.disks()[0].extents, want);
}

#[test]
fn with_a_state_file_a_source_without_change_tracking_offers_only_what_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ReplicaDir::builder().vm("vm").open_or_create(tmp.path().join("r")).unwrap();
    let mut opts = SenderOptions::new("vm");
    opts.state_file = Some(tmp.path().join("vm.state"));
    let mut data = disk(12, 16 * MIB);
    let src = MemSource { label: "d".into(), data: data.clone() };
    let first = local(&[&src], &r, &opts).unwrap();
    assert!(first.sender.offered_bytes > 8 * MIB as u64);
    // Scattered writes, a range made zero, data written into a hole.
    scatter(&mut data, 13, 8);
    data[5 * MIB..5 * MIB + 300_000].fill(0);
    let hole = (0..data.len() / 4096).find(|b| data[b * 4096..(b + 1) * 4096].iter().all(|x| *x == 0)).unwrap();
    data[hole * 4096..hole * 4096 + 100].fill(9);
    let src = MemSource { label: "d".into(), data: data.clone() };
    let second = local(&[&src], &r, &opts).unwrap();
    assert_eq!(second.sender.read_bytes, data.len() as u64, "no change tracking: read whole");
    assert!(
        second.sender.offered_bytes < 2 * MIB as u64,
        "only what differs is offered: {} of {}",
        second.sender.offered_bytes,
        first.sender.offered_bytes
    );
    assert_point(&r, 2, std::slice::from_ref(&data));
    assert_point(&r, 1, &[disk(12, 16 * MIB)]);
    // The record is the whole-disk cut, so the next run's digests agree.
    let fresh = cut_disk(&src, &r.chunking(), &r.keys().unwrap(), &CancelToken::new()).unwrap();
    assert_eq!(r.record().unwrap().disks()[0].extents, fresh);
    let third = local(&[&src], &r, &opts).unwrap();
    assert_eq!((third.sender.offered_bytes, third.sender.needed_bytes), (0, 0));
}
