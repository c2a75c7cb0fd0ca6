//! A small engine for each role (a source of disks in memory, a replica in
//! memory with a record and an uncommitted layer) and an in-memory link
//! that can be slow, cut, corrupt, replay, inject and delay.

use std::collections::{BTreeMap, HashMap, VecDeque};

use alike_repl::{
    Config, Dial, DiskSpec, Endpoint, Error, Extent, Geometry, Progress, Receiver, ReceiverEvent, ReplicaInfo, Sender,
    SenderEvent, disk_digest, extent_id,
};

pub const SECRET: [u8; 32] = [0x42; 32];
pub const ID_KEY: [u8; 32] = [0x17; 32];
pub const JOB: &str = "job-test";

/// xorshift, seeded: test data and fault positions.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Half-compressible bytes.
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(64) {
            let v = self.next();
            if v & 1 == 0 {
                c.fill((v >> 8) as u8);
            } else {
                for x in c.iter_mut() {
                    *x = self.next() as u8;
                }
            }
        }
    }
}

/// A disk of `size` bytes: data everywhere but a zero block every `hole_every` blocks.
pub fn make_disk(seed: u64, size: usize, block: usize, hole_every: usize) -> Vec<u8> {
    let mut d = vec![0u8; size];
    Rng::new(seed).fill(&mut d);
    for (i, b) in d.chunks_mut(block).enumerate() {
        if hole_every > 0 && i % hole_every == hole_every - 1 {
            b.fill(0);
        }
    }
    d
}

pub fn sender_config(dial: Dial) -> Config {
    Config::new(JOB, SECRET, dial, [0x01; 32])
}
pub fn receiver_config(dial: Dial) -> Config {
    Config::new(JOB, SECRET, dial, [0x02; 32])
}

/// The extents of `src[start..end]` for `geometry` (zero runs are holes).
pub fn extents(src: &[u8], geometry: Geometry, start: u64, end: u64, key: &[u8; 32]) -> Vec<Extent> {
    let size = src.len() as u64;
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let len = match geometry {
            Geometry::Fixed { block_size } => u64::from(block_size).min(size - at),
            // A stand-in for content-defined cuts: `avg`-byte chunks that
            // restart at every window.
            Geometry::Cdc { avg, window, .. } => {
                let next_window = (at / window + 1) * window;
                u64::from(avg).min(next_window - at).min(end - at)
            }
        };
        let b = &src[at as usize..(at + len) as usize];
        if b.iter().any(|&x| x != 0) {
            out.push(Extent { offset: at, len: len as u32, id: extent_id(key, b) });
        }
        at += len;
    }
    out
}

/// One offer of the plan: disk, ranges, extents.
pub type PlannedOffer = (u32, Vec<std::ops::Range<u64>>, Vec<Extent>);

/// The offers for the changed `ranges` of a disk (`None`: all of it), at
/// most `batch` extents each: small ranges share a batch, a range with more
/// extents is split at an extent's start.
pub fn plan(
    disk: u32,
    src: &[u8],
    geometry: Geometry,
    ranges: Option<&[(u64, u64)]>,
    batch: u64,
    key: &[u8; 32],
) -> Vec<PlannedOffer> {
    let size = src.len() as u64;
    let all = [(0, size)];
    let mut out = Vec::new();
    let (mut cur_r, mut cur_e): (Vec<std::ops::Range<u64>>, Vec<Extent>) = (Vec::new(), Vec::new());
    for &(a, b) in ranges.unwrap_or(&all) {
        let mut start = a;
        for e in extents(src, geometry, a, b, key) {
            if cur_e.len() as u64 == batch {
                if start < e.offset {
                    cur_r.push(start..e.offset);
                }
                out.push((disk, std::mem::take(&mut cur_r), std::mem::take(&mut cur_e)));
                start = e.offset;
            }
            cur_e.push(e);
        }
        cur_r.push(start..b);
    }
    if !cur_r.is_empty() {
        out.push((disk, cur_r, cur_e));
    }
    out
}

/// The sender's engine: walks a plan, offers while it may, sends what is needed.
pub struct SenderEngine {
    pub sources: Vec<(DiskSpec, Vec<u8>)>,
    pub offers: VecDeque<PlannedOffer>,
    pub todo: VecDeque<(u32, Extent)>,
    pub ready: bool,
    pub ended: Vec<bool>,
    pub committed: bool,
    pub acked: Option<Vec<u8>>,
    pub batches_answered: u64,
    /// Send wrong bytes for the first needed extent (a lying sender).
    pub corrupt: bool,
}

impl SenderEngine {
    /// `ranges[i]`: the changed ranges of disk i (`None`: everything).
    pub fn new(sources: Vec<(DiskSpec, Vec<u8>)>, ranges: &[Option<Vec<(u64, u64)>>], batch: u64) -> SenderEngine {
        let mut offers = VecDeque::new();
        for (i, (spec, src)) in sources.iter().enumerate() {
            let r = ranges.get(i).cloned().flatten();
            offers.extend(plan(spec.disk, src, spec.geometry, r.as_deref(), batch, &ID_KEY));
        }
        let n = sources.len();
        SenderEngine {
            sources,
            offers,
            todo: VecDeque::new(),
            ready: false,
            ended: vec![false; n],
            committed: false,
            acked: None,
            batches_answered: 0,
            corrupt: false,
        }
    }

    fn source(&self, disk: u32) -> &(DiskSpec, Vec<u8>) {
        self.sources.iter().find(|(s, _)| s.disk == disk).expect("a disk of ours")
    }

    pub fn step(&mut self, s: &mut Sender) -> Result<(), Error> {
        while let Some(ev) = s.poll_event() {
            match ev {
                SenderEvent::Ready { replica, .. } => {
                    assert_eq!(replica.id_key, ID_KEY);
                    self.ready = true;
                    for (spec, _) in &self.sources {
                        s.begin_disk(*spec)?;
                    }
                }
                SenderEvent::Need(n) => {
                    self.batches_answered += 1;
                    self.todo.extend(n.extents.iter().map(|e| (n.disk, *e)));
                }
                SenderEvent::Acked { point } => self.acked = Some(point),
                _ => {}
            }
        }
        if !self.ready || s.error().is_some() {
            return Ok(());
        }
        while s.can_send() {
            let Some((disk, e)) = self.todo.pop_front() else { break };
            let mut b = self.source(disk).1[e.offset as usize..e.end() as usize].to_vec();
            if std::mem::take(&mut self.corrupt) {
                b[0] ^= 1;
            }
            s.send_data(disk, e.offset, &b)?;
        }
        while s.can_offer() {
            let Some((disk, ranges, ext)) = self.offers.pop_front() else { break };
            s.offer(disk, &ranges, ext)?;
        }
        for i in 0..self.sources.len() {
            let disk = self.sources[i].0.disk;
            let offered_all = !self.offers.iter().any(|o| o.0 == disk);
            if !self.ended[i] && offered_all && s.pending(disk) == 0 && !self.todo.iter().any(|t| t.0 == disk) {
                let (spec, src) = &self.sources[i];
                let full = extents(src, spec.geometry, 0, spec.size, &ID_KEY);
                s.end_disk(disk, disk_digest(spec.size, &full)?)?;
                self.ended[i] = true;
            }
        }
        if !self.committed && self.ended.iter().all(|&e| e) {
            s.commit()?;
            self.committed = true;
        }
        Ok(())
    }
}

/// A replica in memory: committed disks and their records, and the layer
/// of the run in progress (discarded unless the run commits).
#[derive(Clone, Debug, Default)]
pub struct Replica {
    pub disks: BTreeMap<u32, Vec<u8>>,
    pub records: BTreeMap<u32, BTreeMap<u64, Extent>>,
    pub points: Vec<Vec<u8>>,
}

impl Replica {
    /// A replica already holding `disks` (its record built by reading them).
    pub fn seeded(disks: &[(DiskSpec, Vec<u8>)]) -> Replica {
        let mut r = Replica::default();
        for (spec, d) in disks {
            let rec = extents(d, spec.geometry, 0, spec.size, &ID_KEY).into_iter().map(|e| (e.offset, e)).collect();
            r.disks.insert(spec.disk, d.clone());
            r.records.insert(spec.disk, rec);
        }
        r
    }
}

#[derive(Default)]
struct Layer {
    size: u64,
    record: BTreeMap<u64, Extent>,
    zero: Vec<(u64, u64)>,
    writes: Vec<(u64, Vec<u8>)>,
}

/// The receiver's engine.
pub struct ReceiverEngine {
    pub replica: Replica,
    layers: BTreeMap<u32, Layer>,
    /// Committed extents by id: where the replica already has those bytes.
    index: HashMap<[u8; 32], (u32, u64, u32)>,
    pub acked: Option<Vec<u8>>,
    /// Answer offers only every `answer_every`-th step (a slow engine).
    pub hold: VecDeque<(u64, Vec<bool>)>,
    pub digest_override: Option<[u8; 32]>,
    pub copied_bytes: u64,
    /// Stop taking events after the first data frame (an engine that dies there).
    pub stop_after_data: bool,
    pub stopped: bool,
}

impl ReceiverEngine {
    pub fn new(replica: Replica) -> ReceiverEngine {
        let mut index = HashMap::new();
        for (&disk, rec) in &replica.records {
            for e in rec.values() {
                index.insert(e.id, (disk, e.offset, e.len));
            }
        }
        ReceiverEngine {
            replica,
            layers: BTreeMap::new(),
            index,
            acked: None,
            hold: VecDeque::new(),
            digest_override: None,
            copied_bytes: 0,
            stop_after_data: false,
            stopped: false,
        }
    }

    pub fn replica_info(&self) -> ReplicaInfo {
        ReplicaInfo { id_key: ID_KEY, base: self.replica.points.last().cloned().unwrap_or_default() }
    }

    pub fn step(&mut self, r: &mut Receiver) -> Result<(), Error> {
        while !self.stopped
            && let Some(ev) = r.poll_event()
        {
            match ev {
                ReceiverEvent::DiskBegin(spec) => {
                    let record = self.replica.records.get(&spec.disk).cloned().unwrap_or_default();
                    let record = record.into_iter().filter(|(o, _)| *o < spec.size).collect();
                    self.layers.insert(spec.disk, Layer { size: spec.size, record, ..Layer::default() });
                }
                ReceiverEvent::Offer(o) => {
                    let layer = self.layers.get_mut(&o.disk).expect("begun");
                    for r in &o.ranges {
                        let old: Vec<u64> = layer.record.range(r.clone()).map(|(k, _)| *k).collect();
                        for k in old {
                            layer.record.remove(&k);
                        }
                        layer.zero.push((r.start, r.end));
                    }
                    let mut needed = Vec::with_capacity(o.extents.len());
                    for e in &o.extents {
                        layer.record.insert(e.offset, *e);
                        match self.index.get(&e.id) {
                            // The replica has these bytes somewhere: copy them, do not ask.
                            Some(&(d, off, len)) if len == e.len => {
                                let b = self.replica.disks[&d][off as usize..][..len as usize].to_vec();
                                self.copied_bytes += u64::from(len);
                                layer.writes.push((e.offset, b));
                                needed.push(false);
                            }
                            _ => needed.push(true),
                        }
                    }
                    self.hold.push_back((o.batch, needed));
                }
                ReceiverEvent::Data(f) => {
                    let layer = self.layers.get_mut(&f.disk).expect("begun");
                    for (e, b) in f.iter() {
                        layer.writes.push((e.offset, b.to_vec()));
                    }
                    self.stopped = self.stop_after_data;
                }
                ReceiverEvent::DiskEnd { disk, .. } => {
                    let layer = &self.layers[&disk];
                    let ours = disk_digest(layer.size, layer.record.values())?;
                    r.finish_disk(disk, self.digest_override.unwrap_or(ours))?;
                }
                ReceiverEvent::Commit { .. } => {
                    let point = format!("point-{}", self.replica.points.len() + 1).into_bytes();
                    self.commit(point.clone());
                    r.ack(&point)?;
                    self.acked = Some(point);
                }
                _ => {}
            }
        }
        while let Some((batch, needed)) = self.hold.pop_front() {
            r.need(batch, &needed)?;
        }
        Ok(())
    }

    fn commit(&mut self, point: Vec<u8>) {
        for (disk, layer) in std::mem::take(&mut self.layers) {
            let d = self.replica.disks.entry(disk).or_default();
            d.resize(layer.size as usize, 0);
            for (a, b) in layer.zero {
                d[a as usize..b as usize].fill(0);
            }
            for (at, b) in layer.writes {
                d[at as usize..at as usize + b.len()].copy_from_slice(&b);
            }
            self.replica.records.insert(disk, layer.record);
        }
        self.replica.points.push(point);
    }
}

/// What can happen to the bytes of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Flip bit 0 of byte `byte` of unit `unit` (unit 0 is the preamble, then records).
    Corrupt {
        unit: usize,
        byte: usize,
    },
    /// After unit `after`, deliver unit `unit` again.
    Replay {
        after: usize,
        unit: usize,
    },
    /// After unit `after`, deliver a record of random bytes.
    Inject {
        after: usize,
    },
    /// Drop unit `unit`.
    Drop {
        unit: usize,
    },
    /// Deliver only the first `bytes` bytes, then end the connection.
    Cut {
        bytes: u64,
    },
}

/// One direction of the in-memory link: cuts what an end transmits into
/// units (preamble, records), applies a fault, delivers at most `chunk`
/// bytes per step.
pub struct Dir {
    raw: Vec<u8>,
    parse_at: usize,
    units: usize,
    sent: Vec<Vec<u8>>,
    ready: Vec<u8>,
    inbuf: Vec<u8>,
    pub chunk: usize,
    pub fault: Fault,
    pub delivered: u64,
    pub cut: bool,
}

impl Dir {
    pub fn new(chunk: usize, fault: Fault) -> Dir {
        Dir {
            raw: Vec::new(),
            parse_at: 0,
            units: 0,
            sent: Vec::new(),
            ready: Vec::new(),
            inbuf: Vec::new(),
            chunk,
            fault,
            delivered: 0,
            cut: false,
        }
    }

    /// Takes what `from` transmits.
    pub fn take<E: Endpoint>(&mut self, from: &mut E) {
        while let Some(b) = from.poll_transmit() {
            self.raw.extend_from_slice(&b);
        }
        loop {
            let rest = &self.raw[self.parse_at..];
            let len = if self.units == 0 {
                12
            } else if rest.len() >= 2 {
                2 + usize::from(u16::from_le_bytes([rest[0], rest[1]]))
            } else {
                break;
            };
            if rest.len() < len {
                break;
            }
            let mut unit = rest[..len].to_vec();
            self.parse_at += len;
            let n = self.units;
            self.units += 1;
            match self.fault {
                Fault::Corrupt { unit: u, byte } if u == n => unit[byte.min(len - 1)] ^= 1,
                Fault::Drop { unit: u } if u == n => {
                    self.sent.push(unit);
                    continue;
                }
                _ => {}
            }
            self.ready.extend_from_slice(&unit);
            self.sent.push(unit);
            match self.fault {
                Fault::Replay { after, unit: u } if after == n => {
                    let again = self.sent[u].clone();
                    self.ready.extend_from_slice(&again);
                }
                Fault::Inject { after } if after == n => {
                    let mut rec = vec![100u8, 0];
                    let mut rng = Rng::new(n as u64 + 7);
                    rec.extend((0..100).map(|_| rng.next() as u8));
                    self.ready.extend_from_slice(&rec);
                }
                _ => {}
            }
        }
    }

    /// Delivers up to `chunk` bytes to `to`; returns how many moved.
    pub fn deliver<E: Endpoint>(&mut self, to: &mut E) -> Result<usize, Error> {
        let mut n = self.ready.len().min(self.chunk);
        if let Fault::Cut { bytes } = self.fault {
            n = n.min((bytes - self.delivered.min(bytes)) as usize);
            if self.delivered + n as u64 >= bytes {
                self.cut = true;
            }
        }
        self.inbuf.extend(self.ready.drain(..n));
        self.delivered += n as u64;
        let mut pos = 0;
        let r = loop {
            match to.handle_input(&self.inbuf[pos..]) {
                Ok(Progress::Consumed(0) | Progress::NeedMore(_)) => break Ok(n),
                Ok(Progress::Consumed(k)) => pos += k,
                Err(e) => break Err(e),
            }
        };
        self.inbuf.drain(..pos);
        r
    }

    pub fn idle(&self) -> bool {
        self.ready.is_empty()
    }
}

/// How a run ended on each side.
#[derive(Debug)]
pub struct Outcome {
    pub sender: Result<Vec<u8>, Error>,
    pub receiver: Result<Vec<u8>, Error>,
    pub steps: usize,
}

/// Runs both engines over two directions until both are done, both have
/// failed, or nothing moves.
pub fn run(
    s: &mut Sender,
    se: &mut SenderEngine,
    r: &mut Receiver,
    re: &mut ReceiverEngine,
    sr: &mut Dir,
    rs: &mut Dir,
) -> Outcome {
    let mut s_err: Option<Error> = None;
    let mut r_err: Option<Error> = None;
    let mut steps = 0;
    for _ in 0..1_000_000 {
        steps += 1;
        if s_err.is_none()
            && let Err(e) = se.step(s)
        {
            s_err = Some(s.error().cloned().unwrap_or(e));
        }
        sr.take(s);
        rs.take(r);
        let mut moved = 0;
        if r_err.is_none() {
            match sr.deliver(r) {
                Ok(n) => moved += n,
                Err(e) => r_err = Some(e),
            }
        }
        if r_err.is_none()
            && let Err(e) = re.step(r)
        {
            r_err = Some(r.error().cloned().unwrap_or(e));
        }
        rs.take(r);
        if s_err.is_none() {
            match rs.deliver(s) {
                Ok(n) => moved += n,
                Err(e) => s_err = Some(e),
            }
        }
        // An end that failed closes the connection once its last bytes left.
        if r_err.is_some() && rs.idle() && s_err.is_none() {
            s_err = s.handle_eof().err();
        }
        if s_err.is_some() && sr.idle() && r_err.is_none() {
            r_err = r.handle_eof().err();
        }
        // A cut connection: each end sees the end of the stream once it
        // has used everything that arrived before the cut.
        if sr.cut || rs.cut {
            if r_err.is_none()
                && let Err(e) = r.handle_eof()
            {
                r_err = Some(e);
            }
            if s_err.is_none()
                && let Err(e) = s.handle_eof()
            {
                s_err = Some(e);
            }
        }
        let s_end = s_err.is_some() || (s.is_done() && se.acked.is_some());
        let r_end = r_err.is_some() || r.is_done();
        if s_end && r_end && sr.idle() && rs.idle() {
            break;
        }
        if moved == 0 && sr.idle() && rs.idle() && !s.can_offer() && se.todo.is_empty() && se.acked.is_none() {
            // Nothing moves and nobody can act: a stall (reported as is).
            if s_end || r_end {
                break;
            }
        }
    }
    Outcome {
        sender: match s_err {
            Some(e) => Err(e),
            None => se.acked.clone().ok_or(Error::Usage("the sender never saw an acknowledgement".into())),
        },
        receiver: match r_err {
            Some(e) => Err(e),
            None => re.acked.clone().ok_or(Error::Usage("the receiver never acknowledged".into())),
        },
        steps,
    }
}

/// The two-disk VM of the tests: disk 0 of 1 MiB + 100 bytes (64 KiB
/// blocks), disk 1 of 512 KiB (4 KiB blocks), a zero block here and there.
pub fn two_disks(seed: u64) -> Vec<(DiskSpec, Vec<u8>)> {
    let d0 = make_disk(seed, (1 << 20) + 100, 65536, 5);
    let d1 = make_disk(seed + 1, 512 << 10, 4096, 7);
    vec![
        (DiskSpec { disk: 0, size: d0.len() as u64, geometry: Geometry::Fixed { block_size: 65536 } }, d0),
        (DiskSpec { disk: 1, size: d1.len() as u64, geometry: Geometry::Fixed { block_size: 4096 } }, d1),
    ]
}

/// A sender and a receiver for the standard job, each with its engine.
pub fn ends(
    sources: Vec<(DiskSpec, Vec<u8>)>,
    ranges: &[Option<Vec<(u64, u64)>>],
    replica: Replica,
    batch: u64,
) -> (Sender, SenderEngine, Receiver, ReceiverEngine) {
    let s = Sender::new(sender_config(Dial::Connect)).expect("sender");
    let re = ReceiverEngine::new(replica);
    let r = Receiver::new(receiver_config(Dial::Accept), re.replica_info()).expect("receiver");
    (s, SenderEngine::new(sources, ranges, batch), r, re)
}
