//! The pipelining property, on a simulated link in virtual time: a
//! bandwidth, a one-way delay, a socket send buffer. Both engines act in
//! zero time; the link is the only thing that takes time. A transfer over a
//! 50 ms round trip must take a few round trips longer than over 0 ms, not
//! one per batch; the number of times the sender's link goes idle waiting
//! for the peer ("turns") must not grow with the number of batches.

use std::collections::VecDeque;

use alike_repl::{Config, Dial, DiskSpec, Endpoint, Geometry, Limits, Progress, Receiver, Sender};

use super::util::*;

const MS: u64 = 1_000_000;
/// What the shell hands the socket at most (the kernel's send buffer).
const SNDBUF: usize = 256 << 10;
/// What the shell takes from the machine at most.
const SHELL: usize = 1 << 20;

struct Direction {
    /// Bytes per nanosecond.
    bw: f64,
    delay: u64,
    /// When the link has serialised everything handed so far.
    queue_end: u64,
    arrivals: VecDeque<(u64, Vec<u8>)>,
    pending: Vec<u8>,
    inbuf: Vec<u8>,
    count_gaps: bool,
    gaps: Vec<u64>,
    min_gap: u64,
}

impl Direction {
    fn new(bytes_per_sec: f64, delay: u64) -> Direction {
        Direction {
            bw: bytes_per_sec / 1e9,
            delay,
            queue_end: 0,
            arrivals: VecDeque::new(),
            pending: Vec::new(),
            inbuf: Vec::new(),
            count_gaps: false,
            gaps: Vec::new(),
            // A turn: the link idle for at least half a round trip, or 5 ms.
            min_gap: delay.max(5 * MS),
        }
    }

    fn pull<E: Endpoint>(&mut self, from: &mut E) {
        while self.pending.len() < SHELL {
            let Some(b) = from.poll_transmit() else { break };
            self.pending.extend_from_slice(&b);
        }
    }

    fn unsent(&self, t: u64) -> usize {
        (self.queue_end.saturating_sub(t) as f64 * self.bw) as usize
    }

    fn hand(&mut self, t: u64) {
        while !self.pending.is_empty() && self.unsent(t) < SNDBUF {
            let n = self.pending.len().min(64 << 10);
            let piece: Vec<u8> = self.pending.drain(..n).collect();
            if self.count_gaps && t > self.queue_end && t - self.queue_end >= self.min_gap {
                self.gaps.push(t - self.queue_end);
            }
            let start = t.max(self.queue_end);
            let end = start + (n as f64 / self.bw).ceil() as u64;
            self.queue_end = end;
            self.arrivals.push_back((end + self.delay, piece));
        }
    }

    fn next_event(&self, t: u64) -> Option<u64> {
        let arrival = self.arrivals.front().map(|a| a.0);
        let room = (!self.pending.is_empty())
            .then(|| self.queue_end.saturating_sub((SNDBUF as f64 / self.bw) as u64).max(t + 1));
        [arrival, room].into_iter().flatten().min()
    }

    fn deliver<E: Endpoint>(&mut self, t: u64, to: &mut E) {
        while self.arrivals.front().is_some_and(|a| a.0 <= t) {
            let (_, b) = self.arrivals.pop_front().expect("checked");
            self.inbuf.extend_from_slice(&b);
        }
        let mut pos = 0;
        loop {
            match to.handle_input(&self.inbuf[pos..]).expect("no failure on a clean link") {
                Progress::Consumed(0) | Progress::NeedMore(_) => break,
                Progress::Consumed(k) => pos += k,
            }
        }
        self.inbuf.drain(..pos);
    }
}

struct Run {
    /// Virtual nanoseconds until the acknowledgement.
    time: u64,
    /// Times the sender's link sat idle waiting for the peer, between the
    /// receiver's hello and the commit.
    turns: usize,
    batches: u64,
}

/// Replicates a disk of `blocks` 4 KiB blocks (no holes) onto an empty
/// replica, `batch` blocks per offer, over a link of `bw` bytes/s with a
/// round trip of `rtt`.
fn simulate(blocks: usize, batch: u64, window: u32, bw: f64, rtt: u64) -> Run {
    let d = make_disk(21, blocks * 4096, 4096, 0);
    let spec = DiskSpec { disk: 0, size: d.len() as u64, geometry: Geometry::Fixed { block_size: 4096 } };
    let limits = Limits { window, ..Limits::default() };
    let mut s = Sender::new(Config::new(JOB, SECRET, Dial::Connect, [1; 32]).limits(limits).zstd_level(None)).unwrap();
    let mut se = SenderEngine::new(vec![(spec, d)], &[None], batch);
    let mut re = ReceiverEngine::new(Replica::default());
    let mut r = Receiver::new(Config::new(JOB, SECRET, Dial::Accept, [2; 32]), re.replica_info()).unwrap();
    let (mut sr, mut rs) = (Direction::new(bw, rtt / 2), Direction::new(bw, rtt / 2));
    let mut t = 0u64;
    for _ in 0..10_000_000 {
        sr.deliver(t, &mut r);
        rs.deliver(t, &mut s);
        se.step(&mut s).unwrap();
        re.step(&mut r).unwrap();
        if se.acked.is_some() {
            return Run { time: t, turns: sr.gaps.len(), batches: se.batches_answered };
        }
        sr.count_gaps = se.ready && !se.committed;
        sr.pull(&mut s);
        rs.pull(&mut r);
        sr.hand(t);
        rs.hand(t);
        t = sr.next_event(t).into_iter().chain(rs.next_event(t)).min().expect("a stall: nothing will ever happen");
    }
    panic!("no end");
}

#[test]
fn a_50ms_round_trip_costs_a_few_round_trips_not_one_per_batch() {
    let bw = 8e6; // 8 MB/s: 4 MiB take about half a second
    let fast = simulate(1024, 8, 32, bw, 0);
    let slow = simulate(1024, 8, 32, bw, 50 * MS);
    assert_eq!(slow.batches, 128);
    let ideal = (1024.0 * 4096.0 / bw * 1e9) as u64;
    assert!(fast.time < ideal + ideal / 10, "0 ms: {} ms for an ideal {} ms", fast.time / MS, ideal / MS);
    assert!(
        slow.time < fast.time + 8 * 50 * MS,
        "50 ms round trip: {} ms against {} ms at 0 ms",
        slow.time / MS,
        fast.time / MS
    );
    assert!(slow.turns <= 3, "{} turns over 128 batches", slow.turns);

    // The same transfer stop-and-wait (a window of one batch) pays a round
    // trip per batch: the measure above would see it.
    let sw = simulate(1024, 8, 1, bw, 50 * MS);
    eprintln!(
        "4 MiB at 8 MB/s in 128 batches: 0 ms RTT {} ms, 50 ms RTT {} ms ({} turns); stop-and-wait at 50 ms {} ms ({} turns)",
        fast.time / MS,
        slow.time / MS,
        slow.turns,
        sw.time / MS,
        sw.turns
    );
    assert!(sw.turns >= 100, "stop-and-wait: {} turns", sw.turns);
    assert!(sw.time > fast.time + 100 * 50 * MS, "stop-and-wait: {} ms", sw.time / MS);
}

#[test]
fn turns_do_not_grow_with_the_number_of_batches() {
    let bw = 4e6;
    let few = simulate(64, 4, 32, bw, 50 * MS);
    let many = simulate(2048, 4, 32, bw, 50 * MS);
    assert_eq!((few.batches, many.batches), (16, 512));
    assert!(many.turns <= 3 && few.turns <= 3, "turns: {} for 16 batches, {} for 512", few.turns, many.turns);
}
