//! XPRESS with Huffman coding ([MS-XCA] 2.2.4), as CompactOS (WOF) stores
//! each 4, 8 or 16 KiB chunk of a file: one Huffman block per chunk, no
//! end-of-data symbol required, output size known from the chunk table.
//!
//! Written here because the one crate that decodes this format
//! (`xpress-huffman` 0.1.3) stops at the end of the input with decoded
//! symbols still in its bit buffer: it drops the last bytes of about 7 % of
//! the chunks wimlib's compressor produces (measured, see the report of
//! issue 15). Every field is checked: a hostile chunk is an error, never a
//! panic, and the output never grows past the chunk.

/// Why a chunk could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct XpressError(pub(crate) String);

const SYMBOLS: usize = 512;
const TABLE_BITS: u32 = 15;

/// Decompresses one chunk into exactly `out.len()` bytes.
pub(crate) fn decompress(input: &[u8], out: &mut [u8]) -> Result<(), XpressError> {
    if input.len() < SYMBOLS / 2 {
        return Err(XpressError(format!("{} bytes hold no Huffman table (256 needed)", input.len())));
    }
    let mut lens = [0u8; SYMBOLS];
    for (i, &b) in input[..SYMBOLS / 2].iter().enumerate() {
        lens[2 * i] = b & 0x0f;
        lens[2 * i + 1] = b >> 4;
    }
    let table = build_table(&lens)?;
    let mut bits = Bits::new(&input[SYMBOLS / 2..]);
    let mut op = 0usize;
    while op < out.len() {
        if bits.overrun() {
            return Err(XpressError(format!("the chunk ends at output {op} of {}", out.len())));
        }
        let sym = table[(bits.peek() >> (32 - TABLE_BITS)) as usize];
        if sym == u16::MAX {
            return Err(XpressError(format!("a bit pattern no Huffman code has, at output {op}")));
        }
        bits.consume(u32::from(lens[usize::from(sym)]));
        if sym < 256 {
            out[op] = sym as u8;
            op += 1;
            continue;
        }
        let sym = sym - 256;
        let mut length = usize::from(sym & 0x0f);
        let offset_bits = u32::from(sym >> 4);
        if length == 15 {
            length = usize::from(bits.byte());
            if length == 255 {
                length = usize::from(bits.word());
                if length == 0 {
                    length = bits.dword() as usize;
                }
                if length < 15 {
                    return Err(XpressError(format!("match length {length} below its 15-byte base")));
                }
                length -= 15;
            }
            length += 15;
        }
        length += 3;
        let offset =
            if offset_bits == 0 { 0 } else { (bits.peek() >> (32 - offset_bits)) as usize } + (1usize << offset_bits);
        bits.consume(offset_bits);
        if offset > op {
            return Err(XpressError(format!("match {offset} bytes back at output {op}")));
        }
        if length > out.len() - op {
            return Err(XpressError(format!(
                "a {length}-byte match at output {op} runs past the {}-byte chunk",
                out.len()
            )));
        }
        for k in op..op + length {
            out[k] = out[k - offset];
        }
        op += length;
    }
    Ok(())
}

/// Canonical Huffman decode table over 15-bit prefixes: symbol per prefix,
/// `u16::MAX` where no code matches (an incomplete code).
fn build_table(lens: &[u8; SYMBOLS]) -> Result<Vec<u16>, XpressError> {
    let mut table = vec![u16::MAX; 1 << TABLE_BITS];
    let mut code: u32 = 0; // next code, left-aligned to TABLE_BITS
    for len in 1..=TABLE_BITS {
        for (sym, &l) in lens.iter().enumerate() {
            if u32::from(l) != len {
                continue;
            }
            let span = 1u32 << (TABLE_BITS - len);
            if code + span > 1 << TABLE_BITS {
                return Err(XpressError("the Huffman code lengths over-subscribe the code space".into()));
            }
            table[code as usize..(code + span) as usize].fill(sym as u16);
            code += span;
        }
    }
    if code == 0 {
        return Err(XpressError("the Huffman table has no symbol".into()));
    }
    Ok(table)
}

/// The bit stream: 16-bit little-endian words read most significant bit
/// first, interleaved with whole bytes for long match lengths. Bytes past
/// the end read as zero and are counted, so a truncated chunk is caught.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u32,
    count: i32,
    past_end: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Bits<'a> {
        let mut b = Bits { data, pos: 0, buf: 0, count: 0, past_end: 0 };
        b.buf = (u32::from(b.raw_u16()) << 16) | u32::from(b.raw_u16());
        b.count = 32;
        b
    }

    fn raw_u8(&mut self) -> u8 {
        let v = self.data.get(self.pos).copied();
        self.pos += 1;
        v.unwrap_or_else(|| {
            self.past_end += 1;
            0
        })
    }

    fn raw_u16(&mut self) -> u16 {
        u16::from(self.raw_u8()) | (u16::from(self.raw_u8()) << 8)
    }

    fn peek(&self) -> u32 {
        self.buf
    }

    fn consume(&mut self, n: u32) {
        if n == 0 {
            return;
        }
        self.buf = self.buf.checked_shl(n).unwrap_or(0);
        self.count -= n as i32;
        if self.count < 16 {
            self.buf |= u32::from(self.raw_u16()) << (16 - self.count);
            self.count += 16;
        }
    }

    fn byte(&mut self) -> u8 {
        self.raw_u8()
    }

    fn word(&mut self) -> u16 {
        self.raw_u16()
    }

    fn dword(&mut self) -> u32 {
        u32::from(self.raw_u16()) | (u32::from(self.raw_u16()) << 16)
    }

    /// More than the look-ahead (4 bytes) was read past the end: the data
    /// decoded so far used bits that are not there.
    fn overrun(&self) -> bool {
        self.past_end > 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table where every literal has an 8-bit code and nothing else has one.
    fn literal_table() -> Vec<u8> {
        let mut t = vec![0x88u8; 128];
        t.extend(vec![0u8; 128]);
        t
    }

    #[test]
    fn literals_with_eight_bit_codes_are_the_bytes_themselves() {
        // With all 256 literals at length 8, the canonical code of byte b is b.
        let msg = b"WOF!";
        let mut input = literal_table();
        // Words are read most significant bit first, stored little-endian.
        input.extend([msg[1], msg[0], msg[3], msg[2], 0, 0]);
        let mut out = [0u8; 4];
        decompress(&input, &mut out).unwrap();
        assert_eq!(&out, msg);
    }

    #[test]
    fn hostile_tables_and_streams_are_errors() {
        let mut out = [0u8; 64];
        assert!(decompress(&[0u8; 10], &mut out).is_err());
        assert!(decompress(&[0u8; 260], &mut out).is_err(), "no symbol");
        let mut over = vec![0x11u8; 256]; // 512 codes of length 1
        over.extend([0, 0, 0, 0]);
        assert!(decompress(&over, &mut out).is_err());
        // Literals only, but the input ends long before 64 bytes of output.
        let mut short = literal_table();
        short.extend([1, 2]);
        assert!(decompress(&short, &mut out).is_err());
    }
}
