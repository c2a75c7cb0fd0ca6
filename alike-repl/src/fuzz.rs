//! The body of the `repl` fuzz target.

use crate::link::{Config, Dial, Endpoint, Progress};
use crate::pipe::Pipe;
use crate::receiver::{Receiver, ReceiverEvent};
use crate::sender::{Sender, SenderEvent};
use crate::wire::{self, Decoded, DiskSpec, Extent, Geometry, ReplicaInfo};

const SECRET: [u8; 32] = [0x5a; 32];
const ID_KEY: [u8; 32] = [0x1d; 32];
const JOB: &str = "fuzz";
/// Bound on the steps of one run, so no input can make it loop for long.
const STEPS: usize = 1 << 12;

/// Feeds `data` to every decoder and to both state machines, three ways:
///
/// 1. as a message stream to [`wire::decode_message`] and as a preamble;
/// 2. as the raw wire bytes of a peer, to a sender and a receiver, each as
///    initiator and as responder (preamble, handshake and record parsing;
///    an attacker without the secret gets no further);
/// 3. as the plaintext message stream of an *authenticated* peer — a real
///    handshake and hello first, then `data` sealed by the real peer — to a
///    receiver that answers offers and checks digests, and to a sender that
///    offers a disk and sends what is asked for: the decoders and state
///    machines after authentication, where the first byte picks the side.
///
/// It must return, never panic, on any bytes; the public function lets a
/// stable-toolchain test run it too.
pub fn fuzz_one(data: &[u8]) {
    // 1. Decoders alone.
    let _ = wire::decode_preamble(data);
    let mut at = 0;
    for _ in 0..STEPS {
        match wire::decode_message(&data[at..]) {
            Ok(Decoded::Done(_, n)) if n > 0 => at += n,
            _ => break,
        }
    }
    // 2. Raw wire bytes from a peer without the secret.
    for dial in [Dial::Connect, Dial::Accept] {
        if let Ok(mut s) = Sender::new(config(dial, 1)) {
            feed_raw(&mut s, data);
        }
        if let Ok(mut r) = Receiver::new(config(dial, 2), replica()) {
            feed_raw(&mut r, data);
        }
    }
    // 3. Plaintext from an authenticated peer.
    let Some((&first, rest)) = data.split_first() else { return };
    let _ = if first & 1 == 0 { against_receiver(rest) } else { against_sender(rest) };
}

fn config(dial: Dial, eph: u8) -> Config {
    Config::new(JOB, SECRET, dial, [eph; 32]).zstd_level(Some(1))
}

fn replica() -> ReplicaInfo {
    ReplicaInfo { id_key: ID_KEY, base: b"base".to_vec() }
}

fn feed_raw<E: Endpoint>(e: &mut E, data: &[u8]) {
    let _ = e.poll_transmit();
    let mut at = 0;
    for _ in 0..STEPS {
        match e.handle_input(&data[at..]) {
            Ok(Progress::Consumed(n)) if n > 0 => at += n,
            _ => break,
        }
        let _ = e.poll_transmit();
    }
    let _ = e.handle_eof();
}

/// A sender and a receiver after the handshake and both hellos.
fn pair() -> Option<(Sender, Receiver, Pipe, Pipe)> {
    let mut s = Sender::new(config(Dial::Connect, 3)).ok()?;
    let mut r = Receiver::new(config(Dial::Accept, 4), replica()).ok()?;
    let (mut sr, mut rs) = (Pipe::new(), Pipe::new());
    for _ in 0..4 {
        sr.pump(&mut s, &mut r).ok()?;
        rs.pump(&mut r, &mut s).ok()?;
    }
    Some((s, r, sr, rs))
}

/// `data` as the sender's messages, to a receiver that answers every offer
/// (every other extent needed) and accepts every digest.
fn against_receiver(data: &[u8]) -> Option<()> {
    let (mut s, mut r, mut sr, _) = pair()?;
    s.inject_plaintext(data);
    for _ in 0..STEPS {
        let moved = sr.pump(&mut s, &mut r);
        while let Some(ev) = r.poll_event() {
            match ev {
                ReceiverEvent::Offer(o) => {
                    let needed: Vec<bool> = (0..o.extents.len()).map(|i| i % 2 == 0).collect();
                    let _ = r.need(o.batch, &needed);
                }
                ReceiverEvent::DiskEnd { disk, digest } => {
                    let _ = r.finish_disk(disk, digest);
                }
                ReceiverEvent::Commit { .. } => {
                    let _ = r.ack(b"p");
                }
                _ => {}
            }
        }
        let _ = r.poll_transmit();
        if moved.ok()? == 0 && sr.pending().is_empty() {
            break;
        }
    }
    let _ = r.handle_eof();
    Some(())
}

/// `data` as the receiver's messages, to a sender that offers two batches
/// of a small disk, sends zeroes for what is needed, ends and commits.
#[allow(clippy::single_range_in_vec_init)] // a list of one range
fn against_sender(data: &[u8]) -> Option<()> {
    let (mut s, mut r, _, mut rs) = pair()?;
    let spec = DiskSpec { disk: 0, size: 6 * 4096 + 100, geometry: Geometry::Fixed { block_size: 4096 } };
    let ext = |i: u64| Extent { offset: i * 4096, len: if i == 6 { 100 } else { 4096 }, id: [i as u8; 32] };
    r.inject_plaintext(data);
    let mut offered = 0;
    for _ in 0..STEPS {
        let moved = rs.pump(&mut r, &mut s);
        while let Some(ev) = s.poll_event() {
            if let SenderEvent::Need(n) = ev {
                for e in &n.extents {
                    let _ = s.send_data(n.disk, e.offset, &vec![0u8; e.len as usize]);
                }
            }
        }
        if s.can_offer() {
            match offered {
                0 => {
                    let _ = s.begin_disk(spec);
                    let _ = s.offer(0, &[0..4 * 4096], vec![ext(0), ext(2), ext(3)]);
                }
                1 => {
                    let _ = s.offer(0, &[4 * 4096..5 * 4096, 5 * 4096..spec.size], vec![ext(5), ext(6)]);
                }
                _ => {
                    if s.pending(0) == 0 && s.end_disk(0, [0; 32]).is_ok() {
                        let _ = s.commit();
                    }
                }
            }
            offered += 1;
        }
        let _ = s.poll_transmit();
        if moved.ok()? == 0 && rs.pending().is_empty() && offered > 3 {
            break;
        }
    }
    let _ = s.handle_eof();
    Some(())
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // a list of one range
mod tests {
    use super::*;

    #[test]
    fn fuzz_body_reaches_both_machines_after_authentication() {
        // A well-formed offer to the receiver, and a need answering it to the sender.
        let mut b = Vec::new();
        wire::encode_message(
            &wire::Message::DiskBegin(DiskSpec { disk: 0, size: 8192, geometry: Geometry::Fixed { block_size: 4096 } }),
            &mut b,
        );
        wire::encode_message(
            &wire::Message::Offer(wire::Offer {
                disk: 0,
                batch: 0,
                ranges: vec![0..8192],
                extents: vec![Extent { offset: 0, len: 4096, id: [1; 32] }],
            }),
            &mut b,
        );
        let mut data = vec![0u8];
        data.extend_from_slice(&b);
        fuzz_one(&data);
        let mut b = vec![1u8];
        wire::encode_message(&wire::Message::Need(wire::Need { batch: 0, needed: vec![true, false, true] }), &mut b);
        fuzz_one(&b);
        fuzz_one(&[]);
        fuzz_one(&wire::encode_preamble(1));
    }
}
