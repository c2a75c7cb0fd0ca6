//! Both machines over an in-memory link: whole exchanges, and a link that
//! is slow, cut, corrupting, replaying, injecting; peers with the wrong
//! secret, job, role or version.

use alike_repl::wire::{self, Role};
use alike_repl::{Config, Dial, DiskSpec, Error, Geometry, Pipe, Receiver, ReplicaInfo, Sender};

use super::util::*;

fn clean_run(
    sources: Vec<(DiskSpec, Vec<u8>)>,
    ranges: &[Option<Vec<(u64, u64)>>],
    replica: Replica,
) -> (Outcome, Sender, Receiver, ReceiverEngine, SenderEngine) {
    let (mut s, mut se, mut r, mut re) = ends(sources, ranges, replica, 16);
    let (mut sr, mut rs) = (Dir::new(usize::MAX, Fault::None), Dir::new(usize::MAX, Fault::None));
    let out = run(&mut s, &mut se, &mut r, &mut re, &mut sr, &mut rs);
    (out, s, r, re, se)
}

/// Bytes of the extents with data of a disk.
fn data_bytes(d: &[u8], block: usize) -> u64 {
    d.chunks(block).filter(|b| b.iter().any(|&x| x != 0)).map(|b| b.len() as u64).sum()
}

#[test]
fn full_exchange_of_two_disks_sends_only_what_the_replica_lacks() {
    let vm = two_disks(1);
    // First run: an empty replica lacks every extent with data, and no hole travels.
    let (out, s, r, re, _) = clean_run(vm.clone(), &[None, None], Replica::default());
    assert_eq!(out.sender.as_deref().unwrap(), b"point-1");
    assert_eq!(out.receiver.as_deref().unwrap(), b"point-1");
    assert_eq!(re.replica.disks[&0], vm[0].1);
    assert_eq!(re.replica.disks[&1], vm[1].1);
    let full = data_bytes(&vm[0].1, 65536) + data_bytes(&vm[1].1, 4096);
    let st = s.stats();
    assert_eq!(st.data_raw_bytes, full);
    assert_eq!(st.needed_bytes, full);
    assert_eq!(r.stats().data_raw_bytes, full);
    assert_eq!(r.stats().data_payload_bytes, st.data_payload_bytes);
    assert!(st.data_payload_bytes < full, "half-compressible data compresses: {} of {full}", st.data_payload_bytes);
    // On the wire: the payloads plus a little framing.
    assert!(st.wire_sent > st.data_payload_bytes && st.wire_sent < st.data_payload_bytes + 40_000, "{st:?}");
    assert_eq!(st.wire_sent, r.stats().wire_received);

    // Second run: a few blocks change in each disk (one becomes zero, one
    // gets data where there was a hole); with change tracking only the
    // changed ranges are offered, and only the changed blocks with data travel.
    let mut vm2 = vm.clone();
    let mut rng = Rng::new(99);
    rng.fill(&mut vm2[0].1[3 * 65536..3 * 65536 + 70_000]); // blocks 3 and 4
    vm2[0].1[6 * 65536..7 * 65536].fill(0); // block 6 becomes a hole
    rng.fill(&mut vm2[1].1[6 * 4096..7 * 4096]); // block 6 was a hole
    rng.fill(&mut vm2[1].1[40 * 4096 + 10..40 * 4096 + 20]);
    let ranges = [
        Some(vec![(3 * 65536, 5 * 65536), (6 * 65536, 7 * 65536)]),
        Some(vec![(6 * 4096, 7 * 4096), (40 * 4096, 41 * 4096)]),
    ];
    let (out, s, _r, re2, _) = clean_run(vm2.clone(), &ranges, re.replica.clone());
    assert_eq!(out.sender.as_deref().unwrap(), b"point-2");
    assert_eq!(re2.replica.disks[&0], vm2[0].1);
    assert_eq!(re2.replica.disks[&1], vm2[1].1);
    let changed = 2 * 65536 + 2 * 4096;
    assert_eq!(s.stats().needed_extents, 4);
    assert_eq!(s.stats().data_raw_bytes, changed);
    assert_eq!(s.stats().offered_extents, 4, "the zeroed block is a hole, not an extent");

    // Without change tracking: everything is offered, still only what differs travels.
    let (out, s, _r, re3, _) = clean_run(vm2.clone(), &[None, None], re.replica.clone());
    assert!(out.sender.is_ok(), "{out:?}");
    assert_eq!(re3.replica.disks[&0], vm2[0].1);
    assert_eq!(re3.replica.disks[&1], vm2[1].1);
    assert_eq!(s.stats().data_raw_bytes, changed);
    assert_eq!(s.stats().offered_bytes, data_bytes(&vm2[0].1, 65536) + data_bytes(&vm2[1].1, 4096));
}

#[test]
fn a_replica_copies_what_it_holds_elsewhere() {
    // Block 8 of disk 1 becomes a copy of its block 3: the receiver holds
    // those bytes, copies them itself and says it does not need them.
    let vm = two_disks(2);
    let (out, _, _, re, _) = clean_run(vm.clone(), &[None, None], Replica::default());
    assert!(out.sender.is_ok());
    let mut vm2 = vm.clone();
    let block: Vec<u8> = vm[1].1[3 * 4096..4 * 4096].to_vec();
    vm2[1].1[8 * 4096..9 * 4096].copy_from_slice(&block);
    let (out, s, _, re2, _) =
        clean_run(vm2.clone(), &[Some(vec![]), Some(vec![(8 * 4096, 9 * 4096)])], re.replica.clone());
    assert!(out.sender.is_ok(), "{out:?}");
    assert_eq!(re2.replica.disks[&1], vm2[1].1);
    assert_eq!((s.stats().offered_extents, s.stats().needed_extents, re2.copied_bytes), (1, 0, 4096));
}

#[test]
fn content_defined_geometry_exchanges() {
    let d = make_disk(5, 300_000, 4096, 9);
    let spec = DiskSpec {
        disk: 3,
        size: d.len() as u64,
        geometry: Geometry::Cdc { min: 4096, avg: 8192, max: 16384, window: 65536 },
    };
    let (out, s, _, re, _) = clean_run(vec![(spec, d.clone())], &[None], Replica::default());
    assert!(out.sender.is_ok(), "{out:?}");
    assert_eq!(re.replica.disks[&3], d);
    assert!(s.stats().offered_extents > 30);
}

#[test]
fn pull_mode_the_receiver_dials() {
    let vm = two_disks(3);
    let mut s = Sender::new(sender_config(Dial::Accept)).unwrap();
    let mut se = SenderEngine::new(vm.clone(), &[None, None], 16);
    let mut re = ReceiverEngine::new(Replica::default());
    let mut r = Receiver::new(receiver_config(Dial::Connect), re.replica_info()).unwrap();
    let (mut sr, mut rs) = (Dir::new(usize::MAX, Fault::None), Dir::new(usize::MAX, Fault::None));
    let out = run(&mut s, &mut se, &mut r, &mut re, &mut sr, &mut rs);
    assert_eq!(out.sender.unwrap(), b"point-1");
    assert_eq!(re.replica.disks[&0], vm[0].1);
}

#[test]
fn a_slow_link_delivering_a_few_bytes_at_a_time_changes_nothing() {
    let vm = two_disks(4);
    let (mut s, mut se, mut r, mut re) = ends(vm.clone(), &[None, None], Replica::default(), 16);
    let (mut sr, mut rs) = (Dir::new(997, Fault::None), Dir::new(7, Fault::None));
    let out = run(&mut s, &mut se, &mut r, &mut re, &mut sr, &mut rs);
    assert_eq!(out.sender.unwrap(), b"point-1");
    assert_eq!(out.receiver.unwrap(), b"point-1");
    assert_eq!(re.replica.disks[&1], vm[1].1);
    assert!(out.steps as u64 > s.stats().wire_sent / 997, "it was slow: {} steps", out.steps);
}

/// Bytes each direction carries in a clean run.
fn clean_lengths() -> (u64, u64) {
    let (out, s, r, _, _) = clean_run(two_disks(6), &[None, None], Replica::default());
    assert!(out.sender.is_ok());
    (s.stats().wire_sent, r.stats().wire_sent)
}

#[test]
fn a_cut_mid_stream_fails_both_ends_cleanly_and_nothing_claims_the_commit() {
    let (to_receiver, to_sender) = clean_lengths();
    let mut rng = Rng::new(11);
    let mut cuts: Vec<u64> = (0..12).map(|_| rng.below(to_receiver)).collect();
    cuts.extend([0, 5, 12, 60, 100, to_receiver - 1]);
    for cut in cuts {
        let (mut s, mut se, mut r, mut re) = ends(two_disks(6), &[None, None], Replica::default(), 16);
        let (mut sr, mut rs) = (Dir::new(4096, Fault::Cut { bytes: cut }), Dir::new(4096, Fault::None));
        let out = run(&mut s, &mut se, &mut r, &mut re, &mut sr, &mut rs);
        assert!(matches!(out.sender, Err(Error::ConnectionLost { .. })), "cut at {cut}: {out:?}");
        assert!(matches!(out.receiver, Err(Error::ConnectionLost { .. })), "cut at {cut}: {out:?}");
        assert!(re.replica.points.is_empty() && re.replica.disks.is_empty(), "cut at {cut}: the replica changed");
        assert!(se.acked.is_none() && !s.is_done() && !r.is_done());
    }
    // The other way: cuts before the acknowledgement leave the sender
    // without a claim; a cut inside the acknowledgement itself leaves a
    // receiver that committed and a sender that says it does not know.
    for cut in [0, 13, to_sender / 2, to_sender - 1] {
        let (mut s, mut se, mut r, mut re) = ends(two_disks(6), &[None, None], Replica::default(), 16);
        let (mut sr, mut rs) = (Dir::new(4096, Fault::None), Dir::new(4096, Fault::Cut { bytes: cut }));
        let out = run(&mut s, &mut se, &mut r, &mut re, &mut sr, &mut rs);
        assert!(se.acked.is_none(), "cut at {cut}");
        match out.sender {
            Err(Error::ConnectionLost { phase }) if cut == to_sender - 1 => {
                assert!(phase.contains("may or may not"), "{phase}");
                assert_eq!(out.receiver.unwrap(), b"point-1");
            }
            Err(Error::ConnectionLost { .. }) => {
                assert!(re.replica.points.is_empty(), "cut at {cut}");
                assert!(out.receiver.is_err(), "cut at {cut}");
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

fn faulty(fault_sr: Fault) -> (Outcome, ReceiverEngine) {
    let (mut s, mut se, mut r, mut re) = ends(two_disks(7), &[None, None], Replica::default(), 16);
    let (mut sr, mut rs) = (Dir::new(usize::MAX, fault_sr), Dir::new(usize::MAX, Fault::None));
    let out = run(&mut s, &mut se, &mut r, &mut re, &mut sr, &mut rs);
    (out, re)
}

#[test]
fn corrupted_replayed_injected_and_dropped_records_are_rejected() {
    // Units: 0 preamble, 1 handshake, 2.. transport records.
    for fault in [
        Fault::Corrupt { unit: 2, byte: 30 },
        Fault::Corrupt { unit: 5, byte: 2 },
        Fault::Corrupt { unit: 9, byte: 60_000 },
        Fault::Replay { after: 4, unit: 3 },
        Fault::Replay { after: 2, unit: 2 },
        Fault::Inject { after: 3 },
        Fault::Drop { unit: 4 },
    ] {
        let (out, re) = faulty(fault);
        assert!(matches!(out.receiver, Err(Error::Integrity { .. })), "{fault:?}: {out:?}");
        // The receiver tells the sender, inside the channel.
        match &out.sender {
            Err(Error::Peer { code, message }) => {
                assert_eq!(*code, wire::ERR_INTEGRITY);
                assert!(message.contains("failed authentication"), "{message}");
            }
            other => panic!("{fault:?}: {other:?}"),
        }
        assert!(re.replica.points.is_empty(), "{fault:?}");
    }
    // In the handshake: the responder refuses the initiator's message.
    let (out, _) = faulty(Fault::Corrupt { unit: 1, byte: 40 });
    assert!(matches!(out.receiver, Err(Error::Authentication { .. })), "{out:?}");
    assert!(matches!(out.sender, Err(Error::ConnectionLost { .. })), "{out:?}");
    // In the preamble: not alike.
    let (out, _) = faulty(Fault::Corrupt { unit: 0, byte: 3 });
    assert!(matches!(out.receiver, Err(Error::NotAlike { .. })), "{out:?}");
}

#[test]
fn a_record_cut_short_is_never_used() {
    // A record whose length promises more than arrives waits; the end of the
    // stream then fails the session without using any of it.
    let (out, re) = faulty(Fault::Cut { bytes: 12 + 50 + 2 + 40 });
    assert!(matches!(out.receiver, Err(Error::ConnectionLost { .. })), "{out:?}");
    assert!(re.replica.points.is_empty());
}

#[test]
fn a_peer_without_the_secret_can_neither_read_nor_write() {
    for sender_dials in [true, false] {
        let (sd, rd) = if sender_dials { (Dial::Connect, Dial::Accept) } else { (Dial::Accept, Dial::Connect) };
        let vm = two_disks(8);
        let mut s = Sender::new(Config::new(JOB, [0x43; 32], sd, [1; 32])).unwrap();
        let mut se = SenderEngine::new(vm, &[None, None], 16);
        let mut re = ReceiverEngine::new(Replica::default());
        let mut r = Receiver::new(Config::new(JOB, SECRET, rd, [2; 32]), re.replica_info()).unwrap();
        let (mut sr, mut rs) = (Dir::new(usize::MAX, Fault::None), Dir::new(usize::MAX, Fault::None));
        let out = run(&mut s, &mut se, &mut r, &mut re, &mut sr, &mut rs);
        // The responder finds out at the first handshake message; the
        // initiator sees the connection close during the handshake.
        let (responder, initiator) =
            if sender_dials { (&out.receiver, &out.sender) } else { (&out.sender, &out.receiver) };
        assert!(matches!(responder, Err(Error::Authentication { .. })), "{out:?}");
        match initiator {
            Err(Error::ConnectionLost { phase }) => assert!(phase.contains("job secret"), "{phase}"),
            other => panic!("{other:?}"),
        }
        assert!(!se.ready, "the sender never learnt the replica's key");
        assert!(re.replica.points.is_empty() && re.replica.disks.is_empty());
        // What crossed after the handshake: nothing either end could use.
        assert_eq!(r.stats().records_received + s.stats().records_received, 0);
    }
}

#[test]
fn a_replayed_session_from_an_earlier_run_is_rejected() {
    // Record a whole session's sender bytes, then play them to a new
    // receiver: the handshake message passes (it carries the secret), but
    // the new receiver's fresh ephemeral key makes every later record fail.
    let (mut s, mut se, mut r, mut re) = ends(two_disks(9), &[None, None], Replica::default(), 16);
    let mut recorder = Pipe::new();
    let mut rs = Dir::new(usize::MAX, Fault::None);
    let mut tape = Vec::new();
    for _ in 0..200 {
        se.step(&mut s).unwrap();
        while let Some(b) = s.poll_transmit() {
            tape.extend_from_slice(&b);
            recorder.push(&b);
        }
        recorder.feed(&mut r).unwrap();
        re.step(&mut r).unwrap();
        rs.take(&mut r);
        rs.deliver(&mut s).unwrap();
    }
    assert!(se.acked.is_some());
    let mut re2 = ReceiverEngine::new(Replica::default());
    let mut r2 = Receiver::new(Config::new(JOB, SECRET, Dial::Accept, [0x33; 32]), re2.replica_info()).unwrap();
    let mut p = Pipe::new();
    p.push(&tape);
    let e = p.feed(&mut r2).unwrap_err();
    assert_eq!(e, Error::Integrity { record: 0 });
    re2.step(&mut r2).unwrap();
    assert!(re2.replica.points.is_empty() && re2.replica.disks.is_empty());
}

#[test]
fn a_peer_of_another_version_is_refused_naming_both_versions() {
    let mut s = Sender::new(sender_config(Dial::Connect).version_for_testing(2)).unwrap();
    let re = ReceiverEngine::new(Replica::default());
    let mut r = Receiver::new(receiver_config(Dial::Accept), re.replica_info()).unwrap();
    let (mut a, mut b) = (Pipe::new(), Pipe::new());
    let er = a.pump(&mut s, &mut r).unwrap_err();
    let es = b.pump(&mut r, &mut s).unwrap_err();
    assert_eq!(er, Error::VersionMismatch { ours: 1, theirs: 2 });
    assert_eq!(es, Error::VersionMismatch { ours: 2, theirs: 1 });
    assert_eq!(er.to_string(), "the peer speaks replication protocol version 2; this end speaks version 1");
}

#[test]
fn wrong_job_and_same_roles_are_refused() {
    let re = ReceiverEngine::new(Replica::default());
    let mut s = Sender::new(Config::new("job-a", SECRET, Dial::Connect, [1; 32])).unwrap();
    let mut r = Receiver::new(Config::new("job-b", SECRET, Dial::Accept, [2; 32]), re.replica_info()).unwrap();
    let (mut a, mut b) = (Pipe::new(), Pipe::new());
    let mut errs = Vec::new();
    for _ in 0..4 {
        if let Err(e) = a.pump(&mut s, &mut r) {
            errs.push(e);
        }
        if let Err(e) = b.pump(&mut r, &mut s) {
            errs.push(e);
        }
    }
    assert!(errs.contains(&Error::JobMismatch { ours: "job-b".into(), theirs: "job-a".into() }), "{errs:?}");
    assert!(errs.contains(&Error::JobMismatch { ours: "job-a".into(), theirs: "job-b".into() }), "{errs:?}");

    let mut s1 = Sender::new(sender_config(Dial::Connect)).unwrap();
    let mut s2 = Sender::new(sender_config(Dial::Accept)).unwrap();
    let (mut a, mut b) = (Pipe::new(), Pipe::new());
    let mut errs = Vec::new();
    for _ in 0..4 {
        errs.extend(a.pump(&mut s1, &mut s2).err());
        errs.extend(b.pump(&mut s2, &mut s1).err());
    }
    assert!(errs.contains(&Error::RoleMismatch { role: Role::Sender }), "{errs:?}");
}

#[test]
fn a_digest_mismatch_fails_the_run_before_the_commit() {
    let (mut s, mut se, mut r, mut re) = ends(two_disks(10), &[None, None], Replica::default(), 16);
    re.digest_override = Some([0xee; 32]);
    let (mut sr, mut rs) = (Dir::new(usize::MAX, Fault::None), Dir::new(usize::MAX, Fault::None));
    let out = run(&mut s, &mut se, &mut r, &mut re, &mut sr, &mut rs);
    assert!(matches!(out.receiver, Err(Error::DigestMismatch { ours, .. }) if ours == [0xee; 32]), "{out:?}");
    assert!(matches!(out.sender, Err(Error::Peer { code: wire::ERR_DIGEST, .. })), "{out:?}");
    assert!(re.replica.points.is_empty());
}

#[test]
fn bytes_that_do_not_match_their_id_are_refused() {
    let (mut s, mut se, mut r, mut re) = ends(two_disks(11), &[None, None], Replica::default(), 16);
    se.corrupt = true;
    let (mut sr, mut rs) = (Dir::new(usize::MAX, Fault::None), Dir::new(usize::MAX, Fault::None));
    let out = run(&mut s, &mut se, &mut r, &mut re, &mut sr, &mut rs);
    assert!(matches!(out.receiver, Err(Error::ExtentId { offset: 0, .. })), "{out:?}");
    assert!(matches!(out.sender, Err(Error::Peer { code: wire::ERR_EXTENT_ID, .. })), "{out:?}");
    assert!(re.replica.points.is_empty());
}

#[test]
fn an_abort_reaches_the_peer() {
    let vm = two_disks(12);
    let (mut s, mut se, mut r, mut re) = ends(vm, &[None, None], Replica::default(), 16);
    let (mut sr, mut rs) = (Dir::new(usize::MAX, Fault::None), Dir::new(usize::MAX, Fault::None));
    for _ in 0..3 {
        se.step(&mut s).unwrap();
        sr.take(&mut s);
        sr.deliver(&mut r).unwrap();
        re.step(&mut r).unwrap();
        rs.take(&mut r);
        rs.deliver(&mut s).unwrap();
    }
    r.abort(wire::ERR_ENGINE, "the replica's storage is full");
    rs.take(&mut r);
    let e = rs.deliver(&mut s).unwrap_err();
    assert_eq!(e.to_string(), "the peer failed: engine failure (8): the replica's storage is full");
    assert!(matches!(r.error(), Some(Error::Aborted { .. })));
}

#[test]
fn calls_out_of_order_are_refused_and_change_nothing() {
    let mut s = Sender::new(sender_config(Dial::Connect)).unwrap();
    let spec = DiskSpec { disk: 0, size: 8192, geometry: Geometry::Fixed { block_size: 4096 } };
    assert!(matches!(s.begin_disk(spec), Err(Error::Usage(m)) if m.contains("before the receiver is ready")));
    assert!(matches!(s.commit(), Err(Error::Usage(_))));
    let re = ReceiverEngine::new(Replica::default());
    let mut r = Receiver::new(receiver_config(Dial::Accept), re.replica_info()).unwrap();
    let (mut a, mut b) = (Pipe::new(), Pipe::new());
    for _ in 0..3 {
        a.pump(&mut s, &mut r).unwrap();
        b.pump(&mut r, &mut s).unwrap();
    }
    s.begin_disk(spec).unwrap();
    assert!(s.begin_disk(spec).is_err());
    let ext = |o: u64| alike_repl::Extent { offset: o, len: 4096, id: [1; 32] };
    assert!(s.offer(0, &[0..8192], vec![ext(4096), ext(0)]).is_err(), "out of order");
    assert!(s.offer(0, &[100..8192], vec![]).is_err(), "off the grid");
    assert!(s.offer(0, &[0..8193], vec![]).is_err(), "past the end");
    assert!(s.offer(1, &[0..4096], vec![]).is_err(), "no such disk");
    assert!(s.send_data(0, 0, &[0; 4096]).is_err(), "nothing needed yet");
    assert_eq!(s.offer(0, &[0..4096], vec![ext(0)]).unwrap(), 0);
    assert!(s.offer(0, &[0..8192], vec![]).is_err(), "overlaps the previous range");
    assert!(s.offer(0, &[], vec![]).is_err(), "no range");
    assert!(s.offer(0, &[4096..8192], vec![ext(0)]).is_err(), "extent outside the ranges");
    assert!(s.end_disk(0, [0; 32]).is_err(), "a batch is outstanding");
    assert!(r.need(0, &[true]).is_err(), "not offered yet on this side");
    a.pump(&mut s, &mut r).unwrap();
    assert!(r.need(0, &[true, false]).is_err(), "wrong count");
    r.need(0, &[true]).unwrap();
    assert!(r.need(0, &[true]).is_err(), "answered twice");
    b.pump(&mut r, &mut s).unwrap();
    assert!(s.send_data(0, 0, &[0; 100]).is_err(), "wrong length");
    assert!(s.error().is_none() && r.error().is_none());
    let _ = ReplicaInfo { id_key: [0; 32], base: vec![] };
}

#[test]
fn a_replica_that_already_holds_the_disks_needs_nothing() {
    // A record rebuilt by reading the replica: every offered id is there.
    let vm = two_disks(13);
    let (out, s, _, re, _) = clean_run(vm.clone(), &[None, None], Replica::seeded(&vm));
    assert_eq!(out.sender.unwrap(), b"point-1");
    assert_eq!((s.stats().needed_extents, s.stats().data_frames), (0, 0));
    assert!(s.stats().offered_extents > 100);
    assert_eq!(re.replica.disks[&0], vm[0].1);
}
