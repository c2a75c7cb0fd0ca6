//! An in-memory link between two state machines in one process.

use crate::error::Error;
use crate::link::{Endpoint, Progress};

/// One direction of an in-memory link: what one end transmitted and the
/// other has not used yet.
///
/// When one process plays both roles (it sees the source and the replica),
/// a sender and a receiver joined by two pipes do the whole protocol with
/// no socket, and their counters say what would have crossed a network.
/// Tests use it too.
#[derive(Debug, Default)]
pub struct Pipe {
    buf: Vec<u8>,
    carried: u64,
}

impl Pipe {
    /// An empty pipe.
    pub fn new() -> Pipe {
        Pipe::default()
    }

    /// Moves everything `from` has to transmit into the pipe, then feeds
    /// `to` every whole record (or preamble) the pipe holds. Returns the
    /// bytes taken from `from`.
    ///
    /// # Errors
    /// What `to.handle_input` returned: `to` has failed (pump the other
    /// way once more to carry its error message back).
    pub fn pump<A, B>(&mut self, from: &mut A, to: &mut B) -> Result<usize, Error>
    where
        A: Endpoint + ?Sized,
        B: Endpoint + ?Sized,
    {
        let mut n = 0;
        while let Some(b) = from.poll_transmit() {
            n += b.len();
            self.buf.extend_from_slice(&b);
        }
        self.carried += n as u64;
        let r = self.feed(to);
        r.map(|()| n)
    }

    /// Feeds `to` every whole record the pipe holds.
    ///
    /// # Errors
    /// As [`Pipe::pump`].
    pub fn feed<B: Endpoint + ?Sized>(&mut self, to: &mut B) -> Result<(), Error> {
        let mut pos = 0;
        let r = loop {
            match to.handle_input(&self.buf[pos..]) {
                Ok(Progress::Consumed(0) | Progress::NeedMore(_)) => break Ok(()),
                Ok(Progress::Consumed(k)) => pos += k,
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..pos);
        r
    }

    /// Puts bytes in the pipe as if an end had sent them.
    pub fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// The bytes waiting in the pipe.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes the pipe has carried.
    pub fn carried(&self) -> u64 {
        self.carried
    }
}
