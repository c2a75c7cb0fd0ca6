//! What happens to a chunk once cut, as the engine would do it: its id is
//! keyed BLAKE3 of its bytes (`alike_core::Keys::hash`); an id already in
//! the store (the parent image's chunks, or an earlier chunk of this image)
//! costs nothing; a new chunk joins the open frame, and frames of ~1 MiB of
//! consecutive new chunks are zstd-compressed at the store's level (3) with
//! `alike_core::compress` (stored raw when that saves < 1/32), on worker
//! threads.

use std::collections::HashSet;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use alike_core::{Keys, MasterKey};

/// A frame is closed once it holds this many bytes.
pub(crate) const FRAME: usize = 1 << 20;
/// zstd level, the store's default.
pub(crate) const LEVEL: i32 = 3;

/// A chunk id, shortened to 128 bits for the in-memory sets (collisions
/// at 2^-64 for the few million chunks of a study are no concern).
pub(crate) type Id = u128;

/// The chunk ids of one image (the parent, when the next one is measured).
pub(crate) type IdSet = HashSet<Id>;

/// The keys the study hashes with (fixed: the cost is what counts).
pub(crate) fn keys() -> Keys {
    Keys::from_master(&MasterKey([7; 32]))
}

/// Figures of one image under one chunker.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    /// Chunks cut (every occurrence).
    pub(crate) chunks: u64,
    /// Bytes in chunks (allocated, non-zero data as the chunker sees it).
    pub(crate) bytes: u64,
    /// Smallest and largest chunk.
    pub(crate) min: u64,
    /// Largest chunk.
    pub(crate) max: u64,
    /// Distinct chunks not in the parent: count and bytes.
    pub(crate) new_chunks: u64,
    /// Bytes of those.
    pub(crate) new_bytes: u64,
    /// Their bytes after frame compression.
    pub(crate) new_stored: u64,
    /// Frames they made.
    pub(crate) frames: u64,
}

struct Pool {
    tx: Option<SyncSender<Vec<u8>>>,
    workers: Vec<JoinHandle<u64>>,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let (tx, rx) = sync_channel::<Vec<u8>>(2 * threads);
        let rx: Arc<Mutex<Receiver<Vec<u8>>>> = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&rx);
                std::thread::spawn(move || {
                    let mut stored = 0u64;
                    loop {
                        let frame = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => break,
                        };
                        let Ok(frame) = frame else { break };
                        stored += alike_core::compress(&frame, LEVEL).map_or(frame.len(), |c| c.len()) as u64;
                    }
                    stored
                })
            })
            .collect();
        Pool { tx: Some(tx), workers }
    }
    fn send(&self, frame: Vec<u8>) {
        if let Some(tx) = &self.tx {
            // A worker only stops when the channel closes, so this cannot fail.
            let _ = tx.send(frame);
        }
    }
    fn finish(mut self) -> u64 {
        self.tx = None;
        self.workers.drain(..).map(|w| w.join().unwrap_or(0)).sum()
    }
}

/// Deduplicates and compresses the chunks of one image.
pub(crate) struct Sink<'a> {
    keys: Keys,
    parent: Option<&'a IdSet>,
    /// This image's ids (every chunk, new or not).
    pub(crate) ids: IdSet,
    /// New ids seen so far (not in the parent).
    new: IdSet,
    frame: Vec<u8>,
    pool: Option<Pool>,
    /// The figures.
    pub(crate) t: Tally,
    /// Every chunk as (offset, length), when asked for.
    pub(crate) list: Option<Vec<(u64, u32)>>,
}

impl<'a> Sink<'a> {
    /// A sink over `parent`'s chunks; `compress_threads` 0 = count only.
    pub(crate) fn new(parent: Option<&'a IdSet>, compress_threads: usize, keep_list: bool) -> Sink<'a> {
        Sink {
            keys: keys(),
            parent,
            ids: IdSet::new(),
            new: IdSet::new(),
            frame: Vec::with_capacity(FRAME + (1 << 20)),
            pool: (compress_threads > 0).then(|| Pool::new(compress_threads)),
            t: Tally { min: u64::MAX, ..Tally::default() },
            list: keep_list.then(Vec::new),
        }
    }
    /// One chunk.
    pub(crate) fn chunk(&mut self, off: u64, data: &[u8]) {
        let h = self.keys.hash(data);
        let id = u128::from_le_bytes(h.0[..16].try_into().expect("16 bytes"));
        let n = data.len() as u64;
        self.t.chunks += 1;
        self.t.bytes += n;
        self.t.min = self.t.min.min(n);
        self.t.max = self.t.max.max(n);
        if let Some(l) = &mut self.list {
            l.push((off, data.len() as u32));
        }
        self.ids.insert(id);
        if self.parent.is_some_and(|p| p.contains(&id)) || !self.new.insert(id) {
            return;
        }
        self.t.new_chunks += 1;
        self.t.new_bytes += n;
        if let Some(pool) = &self.pool {
            if !self.frame.is_empty() && self.frame.len() + data.len() > FRAME {
                self.t.frames += 1;
                pool.send(std::mem::replace(&mut self.frame, Vec::with_capacity(FRAME + (1 << 20))));
            }
            self.frame.extend_from_slice(data);
            if self.frame.len() >= FRAME {
                self.t.frames += 1;
                pool.send(std::mem::replace(&mut self.frame, Vec::with_capacity(FRAME + (1 << 20))));
            }
        }
    }
    /// Closes the last frame and waits for the compressors.
    pub(crate) fn finish(&mut self) {
        if let Some(pool) = self.pool.take() {
            if !self.frame.is_empty() {
                self.t.frames += 1;
                pool.send(std::mem::take(&mut self.frame));
            }
            self.t.new_stored = pool.finish();
        }
        if self.t.chunks == 0 {
            self.t.min = 0;
        }
    }
}
