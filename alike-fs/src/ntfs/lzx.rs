//! LZX as WIM archives and CompactOS (WOF) files use it: each chunk of up
//! to 32 KiB is a stream of its own (a 32 KiB window, 30 position slots,
//! block sizes as a "default size" bit or 16 bits, no E8 header: E8
//! translation always on, with a translation size of 12,000,000).
//!
//! Written here because no Rust crate decodes this variant: `lzxd`
//! implements LZX DELTA ([MS-PATCH]), whose first-chunk E8 header and
//! 24-bit block sizes differ. Every field is checked: a hostile chunk is an
//! error, never a panic, and the output never grows past the chunk.

/// Why a chunk could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LzxError(pub(crate) String);

fn err<T>(what: impl Into<String>) -> Result<T, LzxError> {
    Err(LzxError(what.into()))
}

const WINDOW: usize = 32768;
const SLOTS: usize = 30;
const MAIN_SYMBOLS: usize = 256 + SLOTS * 8;
const LENGTH_SYMBOLS: usize = 249;
const PRETREE_SYMBOLS: usize = 20;
const MAX_CODE_LEN: u32 = 16;
const E8_SIZE: i64 = 12_000_000;

/// Extra offset bits of each position slot.
const FOOTER_BITS: [u32; SLOTS] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

/// The smallest formatted offset of each position slot (offset + 2).
fn slot_base(slot: usize) -> u32 {
    // 0, 1, 2, 3, 4, 6, 8, 12, 16, 24, …: each pair of slots doubles.
    if slot < 4 { slot as u32 } else { (2 + (slot as u32 & 1)) << (slot as u32 / 2 - 1) }
}

/// Decompresses one chunk into exactly `out.len()` bytes (at most 32 KiB).
pub(crate) fn decompress(input: &[u8], out: &mut [u8]) -> Result<(), LzxError> {
    if out.len() > WINDOW {
        return err(format!("a {}-byte chunk (32 KiB at most)", out.len()));
    }
    let mut bits = Bits { data: input, pos: 0, buf: 0, count: 0, past_end: 0 };
    let mut main_lens = [0u8; MAIN_SYMBOLS];
    let mut length_lens = [0u8; LENGTH_SYMBOLS];
    let mut recent = [1u32; 3];
    let mut op = 0usize;
    while op < out.len() {
        let kind = bits.get(3);
        let size = if bits.get(1) == 1 { WINDOW } else { bits.get(16) as usize };
        if size == 0 || size > out.len() - op {
            return err(format!("a {size}-byte block at output {op} of {}", out.len()));
        }
        let end = op + size;
        match kind {
            1 | 2 => {
                let aligned = if kind == 2 {
                    let mut lens = [0u8; 8];
                    for l in &mut lens {
                        *l = bits.get(3) as u8;
                    }
                    Some(Code::new(&lens, "aligned offset")?)
                } else {
                    None
                };
                read_lengths(&mut bits, &mut main_lens[..256])?;
                read_lengths(&mut bits, &mut main_lens[256..])?;
                let main = Code::new(&main_lens, "main")?;
                read_lengths(&mut bits, &mut length_lens)?;
                let length = Code::new(&length_lens, "length")?;
                while op < end {
                    let sym = main.decode(&mut bits)? as usize;
                    if sym < 256 {
                        out[op] = sym as u8;
                        op += 1;
                        continue;
                    }
                    let header = (sym - 256) & 7;
                    let slot = (sym - 256) >> 3;
                    let len = 2 + header + if header == 7 { length.decode(&mut bits)? as usize } else { 0 };
                    let offset = if slot < 3 {
                        recent.swap(slot, 0);
                        recent[0]
                    } else {
                        let extra = FOOTER_BITS[slot];
                        let footer = match &aligned {
                            Some(a) if extra >= 3 => (bits.get(extra - 3) << 3) + a.decode(&mut bits)?,
                            _ => bits.get(extra),
                        };
                        let o = slot_base(slot) + footer - 2;
                        recent = [o, recent[0], recent[1]];
                        o
                    } as usize;
                    if offset == 0 || offset > op {
                        return err(format!("match {offset} bytes back at output {op}"));
                    }
                    if len > end - op {
                        return err(format!("a {len}-byte match at output {op} runs past its block"));
                    }
                    for k in op..op + len {
                        out[k] = out[k - offset];
                    }
                    op += len;
                }
            }
            3 => {
                bits.align();
                for r in &mut recent {
                    *r = bits.raw_u32()?;
                }
                let src =
                    input.get(bits.pos..bits.pos + size).ok_or_else(|| LzxError("stored block cut off".into()))?;
                out[op..end].copy_from_slice(src);
                bits.pos += size + (size & 1);
                op = end;
            }
            k => return err(format!("block type {k}")),
        }
        if bits.past_end > 4 {
            return err(format!("the chunk ends at output {op} of {}", out.len()));
        }
    }
    undo_e8(out);
    Ok(())
}

/// Reads code lengths, each the delta from the previous block's, through
/// a pretree ([MS-PATCH] 2.2.2).
fn read_lengths(bits: &mut Bits<'_>, lens: &mut [u8]) -> Result<(), LzxError> {
    let mut pre = [0u8; PRETREE_SYMBOLS];
    for l in &mut pre {
        *l = bits.get(4) as u8;
    }
    let pretree = Code::new(&pre, "pretree")?;
    let mut i = 0;
    while i < lens.len() {
        let sym = pretree.decode(bits)?;
        let (n, value) = match sym {
            0..=16 => (1, ((u32::from(lens[i]) + 17 - sym) % 17) as u8),
            17 => (4 + bits.get(4) as usize, 0),
            18 => (20 + bits.get(5) as usize, 0),
            19 => {
                let n = 4 + bits.get(1) as usize;
                let s = pretree.decode(bits)?;
                if s > 16 {
                    return err(format!("pretree symbol {s} after a run"));
                }
                (n, ((u32::from(lens[i]) + 17 - s) % 17) as u8)
            }
            s => return err(format!("pretree symbol {s}")),
        };
        if i + n > lens.len() {
            return err("code lengths run past their tree");
        }
        lens[i..i + n].fill(value);
        i += n;
    }
    Ok(())
}

/// E8 translation undone: x86 CALL targets stored as absolute positions
/// back to relative ones (the chunk's own positions, from 0).
fn undo_e8(b: &mut [u8]) {
    if b.len() <= 10 {
        return;
    }
    let mut i = 0usize;
    while i < b.len() - 10 {
        if b[i] != 0xE8 {
            i += 1;
            continue;
        }
        let cur = i as i64;
        let abs = i64::from(i32::from_le_bytes([b[i + 1], b[i + 2], b[i + 3], b[i + 4]]));
        if abs >= -cur && abs < E8_SIZE {
            let rel = if abs >= 0 { abs - cur } else { abs + E8_SIZE };
            b[i + 1..i + 5].copy_from_slice(&(rel as i32).to_le_bytes());
        }
        i += 5;
    }
}

/// A canonical Huffman code: a table for codes up to `FAST` bits, and the
/// counts per length for the rest.
struct Code {
    fast: Vec<u16>,
    lens: Vec<u8>,
    /// Symbols sorted by (length, symbol).
    sorted: Vec<u16>,
    count: [u32; MAX_CODE_LEN as usize + 1],
    empty: bool,
    what: &'static str,
}

const FAST: u32 = 10;

impl Code {
    fn new(lens: &[u8], what: &'static str) -> Result<Code, LzxError> {
        let mut count = [0u32; MAX_CODE_LEN as usize + 1];
        for &l in lens {
            count[usize::from(l)] += 1;
        }
        count[0] = 0;
        // Kraft: an over-subscribed set of lengths is no code.
        let mut left: i64 = 1;
        for n in count.iter().skip(1) {
            left = left * 2 - i64::from(*n);
            if left < 0 {
                return err(format!("the {what} code's lengths over-subscribe it"));
            }
        }
        let mut sorted: Vec<u16> = (0..lens.len() as u16).filter(|&s| lens[usize::from(s)] != 0).collect();
        sorted.sort_by_key(|&s| lens[usize::from(s)]);
        let mut fast = vec![u16::MAX; 1 << FAST];
        let mut code = 0u32;
        let mut prev_len = 0u32;
        for &s in &sorted {
            let l = u32::from(lens[usize::from(s)]);
            code <<= l - prev_len;
            prev_len = l;
            if l <= FAST {
                let start = (code << (FAST - l)) as usize;
                fast[start..start + (1 << (FAST - l))].fill(s);
            }
            code += 1;
        }
        Ok(Code { fast, lens: lens.to_vec(), empty: sorted.is_empty(), sorted, count, what })
    }

    fn decode(&self, bits: &mut Bits<'_>) -> Result<u32, LzxError> {
        if self.empty {
            return err(format!("a symbol of the empty {} code", self.what));
        }
        let peek = bits.peek();
        let s = self.fast[(peek >> (32 - FAST)) as usize];
        if s != u16::MAX {
            bits.consume(u32::from(self.lens[usize::from(s)]));
            return Ok(u32::from(s));
        }
        // Longer codes: walk the lengths canonically.
        let mut code = 0u32; // first code of the current length
        let mut index = 0u32; // index in `sorted` of that code's symbol
        for len in 1..=MAX_CODE_LEN {
            let n = self.count[len as usize];
            let v = peek >> (32 - len);
            if v >= code && v - code < n {
                bits.consume(len);
                return Ok(u32::from(self.sorted[(index + v - code) as usize]));
            }
            index += n;
            code = (code + n) << 1;
        }
        err(format!("a bit pattern the {} code does not have", self.what))
    }
}

/// 16-bit little-endian words read most significant bit first. Bytes past
/// the end read as zero and are counted.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u32,
    count: u32,
    past_end: usize,
}

impl Bits<'_> {
    fn word(&mut self) -> u32 {
        let b = |i: usize| self.data.get(i).copied();
        let v = match (b(self.pos), b(self.pos + 1)) {
            (Some(lo), Some(hi)) => u32::from(u16::from_le_bytes([lo, hi])),
            (lo, _) => {
                self.past_end += 2 - usize::from(lo.is_some());
                u32::from(lo.unwrap_or(0))
            }
        };
        self.pos += 2;
        v
    }

    fn fill(&mut self) {
        while self.count <= 16 {
            let w = self.word();
            self.buf |= w << (16 - self.count);
            self.count += 16;
        }
    }

    fn peek(&mut self) -> u32 {
        self.fill();
        self.buf
    }

    fn consume(&mut self, n: u32) {
        self.buf = self.buf.checked_shl(n).unwrap_or(0);
        self.count -= n;
    }

    fn get(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        self.fill();
        let v = self.buf >> (32 - n);
        self.consume(n);
        v
    }

    /// To the next 16-bit boundary; at one already, past the next word.
    fn align(&mut self) {
        let partial = self.count % 16;
        let mut loaded = self.count / 16;
        if partial == 0 {
            if loaded == 0 {
                self.pos += 2;
            } else {
                loaded -= 1;
            }
        }
        // Words loaded ahead go back to the byte stream.
        self.pos -= 2 * loaded as usize;
        self.buf = 0;
        self.count = 0;
    }

    fn raw_u32(&mut self) -> Result<u32, LzxError> {
        let b = self.data.get(self.pos..self.pos + 4).ok_or_else(|| LzxError("stored block header cut off".into()))?;
        self.pos += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_bases_follow_the_footer_bits() {
        for s in 1..SLOTS {
            assert_eq!(slot_base(s), slot_base(s - 1) + (1 << FOOTER_BITS[s - 1]), "slot {s}");
        }
        assert_eq!(slot_base(29), 24576);
    }

    #[test]
    fn e8_translation_is_undone_within_the_chunk() {
        let mut b = vec![0x90u8; 32];
        b[4] = 0xE8;
        b[5..9].copy_from_slice(&20i32.to_le_bytes()); // absolute 20 from position 4
        undo_e8(&mut b);
        assert_eq!(i32::from_le_bytes(b[5..9].try_into().unwrap()), 16);
    }

    /// Packs bit strings ("0110…") into 16-bit little-endian words,
    /// padding the last with zeros.
    fn words(bits: &str) -> Vec<u8> {
        let mut b = bits.to_string();
        while b.len() % 16 != 0 {
            b.push('0');
        }
        b.as_bytes()
            .chunks(16)
            .flat_map(|w| u16::from_str_radix(std::str::from_utf8(w).unwrap(), 2).unwrap().to_le_bytes())
            .collect()
    }

    #[test]
    fn stored_blocks_align_and_pad() {
        // Stored block: type 3, not the default size, 16-bit size 6; padding
        // to the word; R0..R2; the bytes.
        let mut input = words(&format!("011{}{:016b}", 0, 6));
        for r in [1u32, 1, 1] {
            input.extend(r.to_le_bytes());
        }
        input.extend(b"abcdef");
        // A second stored block, odd-sized: a pad byte follows its bytes.
        input.extend(words(&format!("011{}{:016b}", 0, 3)));
        for r in [1u32, 1, 1] {
            input.extend(r.to_le_bytes());
        }
        input.extend(b"xyz\0");
        let mut out = [0u8; 9];
        decompress(&input, &mut out).unwrap();
        assert_eq!(&out, b"abcdefxyz");
    }

    #[test]
    fn hostile_chunks_are_errors() {
        let mut out = [0u8; 100];
        assert!(decompress(&[], &mut out).is_err());
        assert!(decompress(&[0xff; 64], &mut out).is_err());
        // A stored block of 100 bytes whose data is missing.
        assert!(decompress(&[0x00, 0x30, 0x64, 0x00], &mut out).is_err());
    }
}
