//! The streaming reader: a VHD arriving over a pipe or HTTP body, read once
//! from front to back without seeking (XAPI's `/export_raw_vdi?format=vhd`).

use std::collections::VecDeque;
use std::io::{self, Read};

use super::error::{Result, VhdError};
use super::format::{
    DiskType, DynHeader, FOOTER_SIZE, Footer, HEADER_SIZE, MAX_BLOCKS, SECTOR, UNALLOCATED, bit, bitmap_bytes, run_end,
    uuid_hex,
};

/// Largest extent yielded (and buffer held) at once.
const PIECE: u64 = 4 << 20;
/// Granule of a fixed stream's extents; all-zero granules are not yielded.
const FIXED_PIECE: usize = 1 << 20;

/// Data for `data.len()` bytes of the virtual disk starting at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the virtual disk (a multiple of 512).
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A block still to come: where it starts in the stream (in sectors, as in
/// the BAT) and which block it is. 8 bytes, as the list can be long.
#[derive(Debug, Clone, Copy)]
struct Pending {
    sector: u32,
    block: u32,
}

impl Pending {
    fn at(self) -> u64 {
        u64::from(self.sector) * SECTOR
    }
}

#[derive(Debug)]
struct Current {
    block: u64,
    bitmap: Vec<u8>,
    /// Bytes of the block's data consumed so far.
    done: u64,
}

#[derive(Debug)]
enum State {
    Dynamic {
        blocks: Vec<Pending>,
        next: usize,
        current: Option<Current>,
        block_size: u64,
        bitmap_len: u64,
    },
    /// `held`: bytes read but not yet yielded (the last 512 may be the footer).
    Fixed {
        held: Vec<u8>,
        data_pos: u64,
    },
    Done,
}

/// Reads a VHD from a [`Read`] front to back and yields its data as
/// [`Extent`]s, for images that arrive over the network.
///
/// Dynamic and differencing streams: the footer copy at offset 0, the
/// dynamic header and the BAT are parsed by [`StreamReader::new`]; then
/// blocks are read in the order they lie in the stream (BAT entries sorted
/// by file offset, padding and anything between skipped), and for each
/// block only the sectors whose bitmap bit is set are yielded — for a
/// differencing stream (XAPI's export with `base=`) exactly the sectors that
/// differ from the base. Extents are therefore in stream order, not
/// necessarily in disk order, and are at most 4 MiB. At the end the footer
/// must be there and agree with the copy at the front, so a stream cut short
/// is an error, never a silently shorter disk.
///
/// Fixed streams (the data, then a footer) are recognised by the missing
/// footer copy at offset 0; their extents come in disk order, in 1 MiB
/// pieces, all-zero pieces left out, and their size is known only at the end.
///
/// Memory stays bounded whatever the stream claims: the BAT is capped
/// (16 Mi entries) and grows only as its bytes arrive; a block is read in
/// pieces of at most 4 MiB.
#[derive(Debug)]
pub struct StreamReader<R> {
    r: R,
    label: String,
    /// Bytes consumed from the stream.
    pos: u64,
    footer: Option<Footer>,
    header: Option<DynHeader>,
    disk_type: DiskType,
    size: Option<u64>,
    state: State,
    queue: VecDeque<Extent>,
}

impl<R: Read> StreamReader<R> {
    /// Starts reading a stream labelled "VHD stream" in errors.
    ///
    /// # Errors
    /// As [`StreamReader::with_label`].
    pub fn new(r: R) -> Result<StreamReader<R>> {
        StreamReader::with_label(r, "VHD stream")
    }

    /// Starts reading a stream: parses the footer copy, dynamic header and BAT
    /// (or, for a fixed stream, only peeks at the first sector).
    ///
    /// # Errors
    /// [`VhdError::Read`] when the stream fails or ends early; [`VhdError::Checksum`],
    /// [`VhdError::BadCookie`], [`VhdError::BadBlockSize`], [`VhdError::Malformed`],
    /// [`VhdError::TooLarge`] for a damaged header; [`VhdError::BlockOutOfOrder`]
    /// for a BAT entry pointing backwards or at an overlapping block.
    pub fn with_label(r: R, label: &str) -> Result<StreamReader<R>> {
        let mut s = StreamReader {
            r,
            label: label.to_owned(),
            pos: 0,
            footer: None,
            header: None,
            disk_type: DiskType::Fixed,
            size: None,
            state: State::Done,
            queue: VecDeque::new(),
        };
        let mut first = vec![0u8; FOOTER_SIZE];
        let got = s.fill(&mut first)?;
        first.truncate(got);
        let looks_like_footer = first.len() == FOOTER_SIZE && first.starts_with(b"conectix");
        let footer = if looks_like_footer { Some(Footer::decode(&first, label, 0)?) } else { None };
        match footer {
            Some(f) if f.disk_type == 3 || f.disk_type == 4 => s.start_dynamic(f)?,
            Some(f) if f.disk_type != 2 => {
                return Err(VhdError::UnsupportedDiskType { file: s.label, disk_type: f.disk_type });
            }
            // A fixed stream: its first sector is data (or, improbably, a fixed footer: data too).
            _ => s.state = State::Fixed { held: first, data_pos: 0 },
        }
        Ok(s)
    }

    /// Disk type: fixed until a footer copy says otherwise.
    pub fn disk_type(&self) -> DiskType {
        self.disk_type
    }

    /// The virtual size: known from the start for dynamic and differencing
    /// streams, after the last extent for fixed ones.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The unique id of the image (from its footer), once a footer was read.
    pub fn unique_id(&self) -> Option<[u8; 16]> {
        self.footer.as_ref().map(|f| f.unique_id)
    }

    /// For a differencing stream, the parent's unique id from the header.
    pub fn parent_unique_id(&self) -> Option<[u8; 16]> {
        self.header.as_ref().filter(|_| self.disk_type == DiskType::Differencing).map(|h| h.parent_unique_id)
    }

    /// For a differencing stream, the parent's name from the header.
    pub fn parent_name(&self) -> Option<String> {
        self.header.as_ref().filter(|_| self.disk_type == DiskType::Differencing).map(DynHeader::parent_name)
    }

    /// The block size of a dynamic or differencing stream.
    pub fn block_size(&self) -> Option<u32> {
        self.header.as_ref().map(|h| h.block_size)
    }

    /// The next extent, or `None` at the end of a complete stream. After an
    /// error the reader is finished and returns `None`.
    ///
    /// # Errors
    /// [`VhdError::Read`] when the stream fails or ends early (inside a block,
    /// or before its footer); [`VhdError::Checksum`] / [`VhdError::Malformed`] for a
    /// bad or disagreeing footer at the end.
    pub fn next_extent(&mut self) -> Result<Option<Extent>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(Some(e));
            }
            let step = match self.state {
                State::Done => return Ok(None),
                State::Dynamic { .. } => self.step_dynamic(),
                State::Fixed { .. } => self.step_fixed(),
            };
            if let Err(e) = step {
                self.state = State::Done;
                self.queue.clear();
                return Err(e);
            }
        }
    }

    /// Reads until `buf` is full or the stream ends; returns bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(VhdError::Read {
                        file: self.label.clone(),
                        offset: self.pos + n as u64,
                        len: (buf.len() - n) as u64,
                        source,
                    });
                }
            }
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let at = self.pos;
        let n = self.fill(buf)?;
        if n < buf.len() {
            return Err(VhdError::Read {
                file: self.label.clone(),
                offset: at,
                len: buf.len() as u64,
                source: io::Error::new(io::ErrorKind::UnexpectedEof, format!("the stream ended inside {what}")),
            });
        }
        Ok(())
    }

    /// Discards bytes up to stream offset `to`.
    fn skip_to(&mut self, to: u64, what: &str) -> Result<()> {
        let mut scratch = vec![0u8; (to.saturating_sub(self.pos)).min(1 << 16) as usize];
        while self.pos < to {
            let n = (to - self.pos).min(scratch.len() as u64) as usize;
            let at = self.pos;
            let got = self.fill(&mut scratch[..n])?;
            if got < n {
                return Err(VhdError::Read {
                    file: self.label.clone(),
                    offset: at,
                    len: to - at,
                    source: io::Error::new(io::ErrorKind::UnexpectedEof, format!("the stream ended before {what}")),
                });
            }
        }
        Ok(())
    }

    fn start_dynamic(&mut self, footer: Footer) -> Result<()> {
        self.disk_type = if footer.disk_type == 4 { DiskType::Differencing } else { DiskType::Dynamic };
        let hoff = footer.data_offset;
        if hoff < FOOTER_SIZE as u64 {
            return Err(VhdError::Malformed {
                file: self.label.clone(),
                offset: 16,
                reason: format!("dynamic header offset {hoff} overlaps the footer copy"),
            });
        }
        self.skip_to(hoff, "the dynamic disk header")?;
        let mut hb = vec![0u8; HEADER_SIZE];
        self.read_exact(&mut hb, "the dynamic disk header")?;
        let header = DynHeader::decode(&hb, &self.label, hoff)?;
        let size = footer.current_size;
        let block_size = u64::from(header.block_size);
        let blocks = size.div_ceil(block_size);
        if blocks > MAX_BLOCKS {
            return Err(VhdError::TooLarge {
                file: self.label.clone(),
                what: "block count",
                value: blocks,
                limit: MAX_BLOCKS,
            });
        }
        if blocks > u64::from(header.max_table_entries) {
            return Err(VhdError::Malformed {
                file: self.label.clone(),
                offset: hoff + 28,
                reason: format!(
                    "the BAT has {} entries, but a disk of {size} bytes in {block_size}-byte blocks needs {blocks}",
                    header.max_table_entries
                ),
            });
        }
        let table = header.table_offset;
        if table < self.pos {
            return Err(VhdError::Malformed {
                file: self.label.clone(),
                offset: hoff + 16,
                reason: format!("the BAT at {table} lies before the end of the dynamic header ({})", self.pos),
            });
        }
        self.skip_to(table, "the BAT")?;
        // Grows only as BAT bytes arrive, so a lying header costs no memory.
        let mut bat: Vec<u32> = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let mut left = blocks * 4;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            self.read_exact(&mut chunk[..n], "the BAT")?;
            bat.extend(chunk[..n].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])));
            left -= n as u64;
        }
        let bitmap_len = bitmap_bytes(block_size);
        let mut pending: Vec<Pending> = bat
            .iter()
            .enumerate()
            .filter(|(_, e)| **e != UNALLOCATED)
            .map(|(i, &e)| Pending { sector: e, block: i as u32 })
            .collect();
        pending.sort_unstable_by_key(|p| p.sector);
        // Blocks must come after what was consumed: the BAT entries in use.
        let mut floor = self.pos;
        let mut prev: Option<u64> = None;
        for p in &pending {
            if p.at() < floor {
                let reason = match prev {
                    None => "the block would overlap the headers or the BAT".to_owned(),
                    Some(b) => format!("the block would overlap block {b}"),
                };
                return Err(VhdError::BlockOutOfOrder {
                    file: self.label.clone(),
                    block: u64::from(p.block),
                    offset: p.at(),
                    position: floor,
                    reason,
                });
            }
            floor = p.at() + bitmap_len + block_size;
            prev = Some(u64::from(p.block));
        }
        self.size = Some(size);
        self.footer = Some(footer);
        self.header = Some(header);
        self.state = State::Dynamic { blocks: pending, next: 0, current: None, block_size, bitmap_len };
        Ok(())
    }

    fn step_dynamic(&mut self) -> Result<()> {
        let State::Dynamic { blocks, next, current, block_size, bitmap_len } = &mut self.state else {
            return Ok(());
        };
        let (block_size, bitmap_len) = (*block_size, *bitmap_len);
        let size = self.size.unwrap_or(0);
        let Some(cur) = current.take() else {
            let Some(p) = blocks.get(*next).copied() else {
                return self.finish_dynamic();
            };
            *next += 1;
            self.skip_to(p.at(), "a data block")?;
            let mut bitmap = vec![0u8; bitmap_len as usize];
            self.read_exact(&mut bitmap, "a sector bitmap")?;
            if let State::Dynamic { current, .. } = &mut self.state {
                *current = Some(Current { block: u64::from(p.block), bitmap, done: 0 });
            }
            return Ok(());
        };
        let n = (block_size - cur.done).min(PIECE);
        let mut data = vec![0u8; n as usize];
        self.read_exact(&mut data, "a data block")?;
        let block_start = cur.block * block_size;
        // Sectors of this piece inside the disk.
        let first = cur.done / SECTOR;
        let in_disk = size.saturating_sub(block_start).min(cur.done + n);
        let last = in_disk.div_ceil(SECTOR).max(first);
        let mut s = first;
        let mut runs = Vec::new();
        while s < last {
            let e = run_end(&cur.bitmap, s, last);
            if bit(&cur.bitmap, s) {
                runs.push((s * SECTOR - cur.done, (e * SECTOR).min(in_disk) - cur.done));
            }
            s = e;
        }
        if let [(0, b)] = runs[..]
            && b == n
        {
            self.queue.push_back(Extent { offset: block_start + cur.done, data });
        } else {
            for (a, b) in runs {
                let data = data[a as usize..b as usize].to_vec();
                self.queue.push_back(Extent { offset: block_start + cur.done + a, data });
            }
        }
        let done = cur.done + n;
        if done < block_size
            && let State::Dynamic { current, .. } = &mut self.state
        {
            *current = Some(Current { done, ..cur });
        }
        Ok(())
    }

    /// After the last block: the rest of the stream must end with a footer
    /// that agrees with the copy at the front.
    fn finish_dynamic(&mut self) -> Result<()> {
        let mut tail: Vec<u8> = Vec::with_capacity(2 * FOOTER_SIZE);
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let n = self.fill(&mut chunk)?;
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&chunk[..n]);
            if tail.len() > FOOTER_SIZE {
                tail.drain(..tail.len() - FOOTER_SIZE);
            }
        }
        let at = self.pos.saturating_sub(tail.len() as u64);
        if tail.len() < FOOTER_SIZE {
            return Err(VhdError::Read {
                file: self.label.clone(),
                offset: at,
                len: FOOTER_SIZE as u64,
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended before its footer"),
            });
        }
        let f = Footer::decode(&tail, &self.label, at)?;
        let front = self.footer.as_ref().expect("dynamic streams have a footer");
        if f.unique_id != front.unique_id || f.current_size != front.current_size || f.disk_type != front.disk_type {
            return Err(VhdError::Malformed {
                file: self.label.clone(),
                offset: at,
                reason: format!(
                    "the footer (id {}, {} bytes, type {}) disagrees with its copy at offset 0 (id {}, {} bytes, type {})",
                    uuid_hex(&f.unique_id),
                    f.current_size,
                    f.disk_type,
                    uuid_hex(&front.unique_id),
                    front.current_size,
                    front.disk_type
                ),
            });
        }
        self.state = State::Done;
        Ok(())
    }

    fn step_fixed(&mut self) -> Result<()> {
        let State::Fixed { held, data_pos } = &mut self.state else { return Ok(()) };
        let mut buf = std::mem::take(held);
        let data_pos = *data_pos;
        let want = FIXED_PIECE + FOOTER_SIZE;
        let have = buf.len();
        buf.resize(want, 0);
        let got = self.fill(&mut buf[have..])?;
        buf.truncate(have + got);
        if buf.len() == want {
            // More may follow: yield a piece, keep the rest (which may be the footer).
            let rest = buf.split_off(FIXED_PIECE);
            if buf.iter().any(|&b| b != 0) {
                self.queue.push_back(Extent { offset: data_pos, data: buf });
            }
            self.state = State::Fixed { held: rest, data_pos: data_pos + FIXED_PIECE as u64 };
            return Ok(());
        }
        // The end: the last 512 bytes are the footer.
        if buf.len() < FOOTER_SIZE {
            return Err(VhdError::Read {
                file: self.label.clone(),
                offset: self.pos,
                len: FOOTER_SIZE as u64,
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended before its footer"),
            });
        }
        let footer_at = self.pos - FOOTER_SIZE as u64;
        let data = buf.len() - FOOTER_SIZE;
        let f = Footer::decode(&buf[data..], &self.label, footer_at)?;
        if f.disk_type != 2 {
            return Err(VhdError::Malformed {
                file: self.label.clone(),
                offset: footer_at,
                reason: format!("a stream without a footer copy at offset 0 ends with a type {} footer", f.disk_type),
            });
        }
        if f.current_size != footer_at {
            return Err(VhdError::Malformed {
                file: self.label.clone(),
                offset: footer_at,
                reason: format!(
                    "the fixed disk's footer says {} bytes, but {footer_at} bytes of data came",
                    f.current_size
                ),
            });
        }
        buf.truncate(data);
        if buf.iter().any(|&b| b != 0) {
            self.queue.push_back(Extent { offset: data_pos, data: buf });
        }
        self.size = Some(f.current_size);
        self.footer = Some(f);
        self.state = State::Done;
        Ok(())
    }
}

impl<R: Read> Iterator for StreamReader<R> {
    type Item = Result<Extent>;
    fn next(&mut self) -> Option<Result<Extent>> {
        self.next_extent().transpose()
    }
}
