//! Golden vectors: fixed secret, ephemeral keys and inputs → the exact
//! bytes of a whole session, both ways, and of every message. They pin
//! `docs/replication-protocol.md`. Regenerate (only for a deliberate change
//! of the protocol, with a new version) with
//! `ALIKE_BLESS=1 cargo test -p alike-repl --test integration golden`.

use alike_repl::wire::{self, Codec, Data, DiskEnd, Hello, Message, Need, Role};
use alike_repl::{
    Config, Dial, DiskSpec, Endpoint, Extent, Geometry, Limits, Offer, Progress, Receiver, ReceiverEvent, ReplicaInfo,
    Sender, SenderEvent, disk_digest, extent_id,
};
use serde_json::{Value, json};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/golden-repl-v1.json");
const JOB: &str = "golden-job";

fn secret() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}
fn sender_ephemeral() -> [u8; 32] {
    std::array::from_fn(|i| 0x40 + i as u8)
}
fn receiver_ephemeral() -> [u8; 32] {
    std::array::from_fn(|i| 0x80 + i as u8)
}
const ID_KEY: [u8; 32] = [0x1d; 32];
const BLOCK: usize = 4096;

/// Block 0 and the 100-byte tail: text; block 1: zero; block 2: text ^ 1.
fn disk() -> Vec<u8> {
    let text = |i: usize| b"alike golden block "[i % 19];
    let mut d: Vec<u8> = (0..3 * BLOCK + 100).map(text).collect();
    d[BLOCK..2 * BLOCK].fill(0);
    for x in &mut d[2 * BLOCK..3 * BLOCK] {
        *x ^= 1;
    }
    d
}

fn ext(d: &[u8], offset: usize, len: usize) -> Extent {
    Extent { offset: offset as u64, len: len as u32, id: extent_id(&ID_KEY, &d[offset..offset + len]) }
}

fn feed<E: Endpoint>(to: &mut E, bytes: &[u8]) {
    let mut pos = 0;
    while pos < bytes.len() {
        match to.handle_input(&bytes[pos..]).unwrap() {
            Progress::Consumed(n) if n > 0 => pos += n,
            other => panic!("stuck at {pos} of {}: {other:?}", bytes.len()),
        }
    }
}

fn take<E: Endpoint>(from: &mut E) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = from.poll_transmit() {
        out.extend_from_slice(&b);
    }
    out
}

fn enc(m: &Message) -> String {
    let mut b = Vec::new();
    wire::encode_message(m, &mut b);
    hex::encode(b)
}

fn compute() -> Value {
    let d = disk();
    let size = d.len() as u64;
    let spec = DiskSpec { disk: 0, size, geometry: Geometry::Fixed { block_size: BLOCK as u32 } };
    let (b0, b2, tail) = (ext(&d, 0, BLOCK), ext(&d, 2 * BLOCK, BLOCK), ext(&d, 3 * BLOCK, 100));
    let digest = disk_digest(size, &[b0, b2, tail]).unwrap();
    let meta = br#"{"vm":"golden"}"#;

    let mut s = Sender::new(Config::new(JOB, secret(), Dial::Connect, sender_ephemeral())).unwrap();
    let replica = ReplicaInfo { id_key: ID_KEY, base: b"point-0".to_vec() };
    let mut r = Receiver::new(Config::new(JOB, secret(), Dial::Accept, receiver_ephemeral()), replica.clone()).unwrap();

    // Flight by flight, in a fixed order.
    let s0 = take(&mut s);
    let r0 = take(&mut r);
    feed(&mut r, &s0);
    feed(&mut s, &r0);
    let s1 = take(&mut s); // handshake message 1
    feed(&mut r, &s1);
    let r1 = take(&mut r); // handshake message 2, then a record: the receiver's hello
    feed(&mut s, &r1);
    assert!(matches!(s.poll_event(), Some(SenderEvent::Ready { .. })));
    s.send_meta(1, meta).unwrap();
    s.begin_disk(spec).unwrap();
    assert_eq!(s.offer(0, &[0..2 * BLOCK as u64], vec![b0]).unwrap(), 0);
    assert_eq!(s.offer(0, &[2 * BLOCK as u64..3 * BLOCK as u64, 3 * BLOCK as u64..size], vec![b2, tail]).unwrap(), 1);
    let s2 = take(&mut s); // one record: hello, meta, disk begin, two offers
    feed(&mut r, &s2);
    let mut offers = Vec::new();
    while let Some(ev) = r.poll_event() {
        if let ReceiverEvent::Offer(o) = ev {
            offers.push(o);
        }
    }
    assert_eq!(offers.len(), 2);
    r.need(0, &[false]).unwrap(); // the replica holds block 0
    r.need(1, &[true, true]).unwrap();
    let r2 = take(&mut r); // one record: two needs
    feed(&mut s, &r2);
    while let Some(ev) = s.poll_event() {
        if let SenderEvent::Need(n) = ev {
            for e in &n.extents {
                s.send_data(0, e.offset, &d[e.offset as usize..e.end() as usize]).unwrap();
            }
        }
    }
    s.end_disk(0, digest).unwrap();
    s.commit().unwrap();
    let s3 = take(&mut s); // one record: data, disk end, commit
    feed(&mut r, &s3);
    let mut data = Vec::new();
    while let Some(ev) = r.poll_event() {
        match ev {
            ReceiverEvent::Data(f) => data.extend(f.iter().map(|(e, b)| (e.offset, b.to_vec()))),
            ReceiverEvent::DiskEnd { disk, digest } => r.finish_disk(disk, digest).unwrap(),
            ReceiverEvent::Commit { disks: 1 } => r.ack(b"point-1").unwrap(),
            _ => {}
        }
    }
    assert_eq!(
        data,
        vec![(2 * BLOCK as u64, d[2 * BLOCK..3 * BLOCK].to_vec()), (3 * BLOCK as u64, d[3 * BLOCK..].to_vec())]
    );
    let r3 = take(&mut r); // one record: ack
    feed(&mut s, &r3);
    assert_eq!(s.poll_event(), Some(SenderEvent::Acked { point: b"point-1".to_vec() }));
    assert!(s.is_done() && r.is_done());

    // The messages those records carry, encoded alone.
    let raw = [&d[2 * BLOCK..3 * BLOCK], &d[3 * BLOCK..]].concat();
    let payload = zstd::bulk::compress(&raw, 3).unwrap();
    let messages = json!({
        "sender_hello": enc(&Message::Hello(Hello { version: 1, role: Role::Sender, job: JOB.into(), limits: Limits::default(), replica: None })),
        "receiver_hello": enc(&Message::Hello(Hello { version: 1, role: Role::Receiver, job: JOB.into(), limits: Limits::default(), replica: Some(replica) })),
        "meta": enc(&Message::Meta { kind: 1, bytes: meta.to_vec() }),
        "disk_begin": enc(&Message::DiskBegin(spec)),
        "disk_begin_cdc": enc(&Message::DiskBegin(DiskSpec { disk: 1, size: 1 << 30, geometry: Geometry::Cdc { min: 16384, avg: 32768, max: 65536, window: 128 << 20 } })),
        "offer_0": enc(&Message::Offer(Offer { disk: 0, batch: 0, ranges: vec![0..2 * BLOCK as u64], extents: vec![b0] })),
        "offer_1": enc(&Message::Offer(Offer { disk: 0, batch: 1, ranges: vec![2 * BLOCK as u64..3 * BLOCK as u64, 3 * BLOCK as u64..size], extents: vec![b2, tail] })),
        "need_0": enc(&Message::Need(Need { batch: 0, needed: vec![false] })),
        "need_1": enc(&Message::Need(Need { batch: 1, needed: vec![true, true] })),
        "data": enc(&Message::Data(Data { disk: 0, codec: Codec::Zstd, extents: vec![(2 * BLOCK as u64, BLOCK as u32), (3 * BLOCK as u64, 100)], payload })),
        "disk_end": enc(&Message::DiskEnd(DiskEnd { disk: 0, offered: 3, sent: 2, digest })),
        "commit": enc(&Message::Commit { disks: 1 }),
        "ack": enc(&Message::Ack { point: b"point-1".to_vec() }),
        "error": enc(&Message::Error { code: wire::ERR_DIGEST, message: "disk 0: digests differ".into() }),
    });
    // Each record's length is what its messages and the tag make.
    let msg_len = |k: &str| messages[k].as_str().unwrap().len() / 2;
    let rec = |b: &[u8]| usize::from(u16::from_le_bytes([b[0], b[1]]));
    assert_eq!(rec(&r1[50..]), msg_len("receiver_hello") + 16);
    assert_eq!(
        rec(&s2),
        ["sender_hello", "meta", "disk_begin", "offer_0", "offer_1"].map(msg_len).iter().sum::<usize>() + 16
    );
    assert_eq!(rec(&r2), msg_len("need_0") + msg_len("need_1") + 16);
    assert_eq!(rec(&s3), ["data", "disk_end", "commit"].map(msg_len).iter().sum::<usize>() + 16);
    assert_eq!(rec(&r3), msg_len("ack") + 16);

    let sender_flights: Vec<String> = [&s0, &s1, &s2, &s3].iter().map(hex::encode).collect();
    let receiver_flights: Vec<String> = [&r0, &r1, &r2, &r3].iter().map(hex::encode).collect();
    let mut prologue = wire::PROLOGUE_LABEL.to_vec();
    prologue.extend_from_slice(&s0);
    prologue.extend_from_slice(&r0);
    json!({
        "protocol": wire::PROTOCOL_ID,
        "noise": wire::NOISE_PATTERN,
        "inputs": {
            "job": JOB,
            "secret": hex::encode(secret()),
            "sender_ephemeral": hex::encode(sender_ephemeral()),
            "receiver_ephemeral": hex::encode(receiver_ephemeral()),
            "sender_dials": true,
            "id_key": hex::encode(ID_KEY),
            "base": hex::encode(b"point-0"),
            "disk": hex::encode(&d),
            "zstd_level": 3,
        },
        "preamble_v1": hex::encode(wire::encode_preamble(1)),
        "prologue": hex::encode(&prologue),
        "extent_ids": {"block_0": hex::encode(b0.id), "block_2": hex::encode(b2.id), "tail": hex::encode(tail.id)},
        "disk_digest": hex::encode(digest),
        "messages": messages,
        "flights": {
            "sender": sender_flights,
            "receiver": receiver_flights,
        },
    })
}

#[test]
fn golden_vectors_match() {
    let now = compute();
    if std::env::var_os("ALIKE_BLESS").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&now).unwrap() + "\n").unwrap();
        return;
    }
    let text = std::fs::read_to_string(PATH).expect("testdata/golden-repl-v1.json (run with ALIKE_BLESS=1 to create)");
    let want: Value = serde_json::from_str(&text).unwrap();
    for (k, v) in now.as_object().unwrap() {
        assert_eq!(
            &want[k], v,
            "golden vector {k:?} changed: the replication wire format moved (update docs/replication-protocol.md and bump the version)"
        );
    }
    // Every stored message decodes to what it was made from, exactly.
    for (k, v) in want["messages"].as_object().unwrap() {
        let b = hex::decode(v.as_str().unwrap()).unwrap();
        match wire::decode_message(&b).unwrap() {
            wire::Decoded::Done(m, n) => {
                assert_eq!(n, b.len(), "{k}");
                let mut again = Vec::new();
                wire::encode_message(&m, &mut again);
                assert_eq!(again, b, "{k}");
            }
            wire::Decoded::NeedMore(_) => panic!("{k} does not decode"),
        }
    }
}

#[test]
fn the_stored_sender_flights_drive_a_receiver_today() {
    let text = std::fs::read_to_string(PATH).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let flights: Vec<Vec<u8>> = want["flights"]["sender"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| hex::decode(f.as_str().unwrap()).unwrap())
        .collect();
    let replica = ReplicaInfo { id_key: ID_KEY, base: b"point-0".to_vec() };
    let mut r = Receiver::new(Config::new(JOB, secret(), Dial::Accept, receiver_ephemeral()), replica).unwrap();
    let mut events = Vec::new();
    for f in &flights {
        feed(&mut r, f);
        while let Some(ev) = r.poll_event() {
            match &ev {
                ReceiverEvent::Offer(o) if o.batch == 0 => r.need(0, &[false]).unwrap(),
                ReceiverEvent::Offer(o) => r.need(o.batch, &[true, true]).unwrap(),
                ReceiverEvent::DiskEnd { disk, digest } => r.finish_disk(*disk, *digest).unwrap(),
                ReceiverEvent::Commit { .. } => r.ack(b"point-1").unwrap(),
                _ => {}
            }
            events.push(ev);
        }
        let _ = take(&mut r);
    }
    assert!(r.is_done());
    assert!(events.iter().any(|e| matches!(e, ReceiverEvent::Meta { kind: 1, .. })));
    assert_eq!(events.iter().filter(|e| matches!(e, ReceiverEvent::Data(_))).count(), 1);
}

/// The fuzz body on stable: streams made of the golden messages, mutated,
/// against both machines (the nightly `repl` fuzz target runs it for long).
#[test]
fn fuzz_smoke_survives_mutations_of_golden_streams() {
    let text = std::fs::read_to_string(PATH).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let m = |k: &str| hex::decode(want["messages"][k].as_str().unwrap()).unwrap();
    let to_receiver: Vec<u8> =
        [vec![0u8], m("meta"), m("disk_begin"), m("offer_0"), m("offer_1"), m("data"), m("disk_end"), m("commit")]
            .concat();
    let mut need = Vec::new();
    wire::encode_message(&Message::Need(Need { batch: 0, needed: vec![true, false, true] }), &mut need);
    wire::encode_message(&Message::Need(Need { batch: 1, needed: vec![true, true] }), &mut need);
    let to_sender: Vec<u8> = [vec![1u8], need, m("ack")].concat();
    let raw: Vec<u8> = want["flights"]["sender"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| hex::decode(f.as_str().unwrap()).unwrap())
        .collect();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for base in [&to_receiver, &to_sender, &raw] {
        alike_repl::fuzz_one(base);
        for _ in 0..60 {
            let mut b = base.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % b.len();
                match next() % 3 {
                    0 => b[at] ^= 1 << (next() % 8),
                    1 => b[at] = next() as u8,
                    _ => b.truncate(at.max(1)),
                }
            }
            alike_repl::fuzz_one(&b);
        }
    }
}

/// A machine never asks for more than the next unit (preamble, record) and
/// says exactly how much that is, so a shell never reads past it.
#[test]
fn need_more_asks_for_exactly_the_next_unit() {
    let text = std::fs::read_to_string(PATH).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let stream: Vec<u8> = want["flights"]["sender"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| hex::decode(f.as_str().unwrap()).unwrap())
        .collect();
    let replica = ReplicaInfo { id_key: ID_KEY, base: b"point-0".to_vec() };
    let mut r = Receiver::new(Config::new(JOB, secret(), Dial::Accept, receiver_ephemeral()), replica).unwrap();
    let mut at = 0;
    let mut units = 0;
    while at < stream.len() {
        let unit = if units == 0 { 12 } else { 2 + usize::from(u16::from_le_bytes([stream[at], stream[at + 1]])) };
        for have in 0..unit {
            let want = if units > 0 && have < 2 { 2 } else { unit };
            assert_eq!(
                r.handle_input(&stream[at..at + have]).unwrap(),
                Progress::NeedMore(want),
                "unit {units}, {have} bytes"
            );
        }
        // With more bytes than the unit, it still uses exactly the unit.
        assert_eq!(r.handle_input(&stream[at..]).unwrap(), Progress::Consumed(unit), "unit {units}");
        at += unit;
        units += 1;
        while let Some(ev) = r.poll_event() {
            match ev {
                ReceiverEvent::Offer(o) => r.need(o.batch, &vec![o.batch == 1; o.extents.len()]).unwrap(),
                ReceiverEvent::DiskEnd { disk, digest } => r.finish_disk(disk, digest).unwrap(),
                _ => {}
            }
        }
    }
    assert_eq!(units, 4);
}
