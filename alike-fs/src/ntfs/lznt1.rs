//! LZNT1, the compression of NTFS compressed files ([MS-XCA] 2.5).
//!
//! A compression unit (16 clusters) is stored as a sequence of chunks, each
//! the compressed (or verbatim) form of 4096 bytes of the unit. Every length,
//! offset and back-reference read from the input is checked: a hostile unit
//! ends in [`Lznt1Error`], never in a panic or a read outside the buffers,
//! and the output never grows past the unit.

/// Bytes of output one LZNT1 chunk stands for.
const CHUNK: usize = 4096;

/// Why a compression unit could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lznt1Error(pub(crate) String);

/// Decompresses the chunks in `input` into `out`, one 4096-byte window of
/// `out` per chunk; windows a chunk leaves short stay zero (as NTFS reads
/// them). Stops at a zero chunk header, at the end of `input`, or when
/// `out` is full. Returns the bytes of `out` the chunks covered.
pub(crate) fn decompress(input: &[u8], out: &mut [u8]) -> Result<usize, Lznt1Error> {
    let mut ip = 0usize;
    let mut op = 0usize;
    while ip + 2 <= input.len() && op < out.len() {
        let header = u16::from_le_bytes([input[ip], input[ip + 1]]);
        if header == 0 {
            break;
        }
        let len = usize::from(header & 0x0fff) + 1;
        let compressed = header & 0x8000 != 0;
        let start = ip + 2;
        let end = start + len;
        let data = input.get(start..end).ok_or_else(|| {
            Lznt1Error(format!("chunk at input offset {ip} claims {len} bytes, {} are left", input.len() - start))
        })?;
        let window_end = (op + CHUNK).min(out.len());
        let window = &mut out[op..window_end];
        if compressed {
            chunk(data, window).map_err(|e| Lznt1Error(format!("chunk at input offset {ip}: {}", e.0)))?;
        } else {
            // A stored chunk: its bytes as they are (a short one only at the end).
            let n = data.len().min(window.len());
            window[..n].copy_from_slice(&data[..n]);
        }
        op = window_end;
        ip = end;
    }
    Ok(op)
}

/// One compressed chunk into `out` (at most 4096 bytes); returns how many
/// bytes it produced (the rest of `out` is left as it is).
fn chunk(data: &[u8], out: &mut [u8]) -> Result<usize, Lznt1Error> {
    let mut ip = 0usize;
    let mut op = 0usize;
    while ip < data.len() {
        let flags = data[ip];
        ip += 1;
        for bit in 0..8 {
            if ip >= data.len() {
                return Ok(op);
            }
            if flags & (1 << bit) == 0 {
                if op >= out.len() {
                    return Err(Lznt1Error("literal past the end of the 4096-byte chunk".into()));
                }
                out[op] = data[ip];
                op += 1;
                ip += 1;
                continue;
            }
            let token = match data.get(ip..ip + 2) {
                Some(b) => u16::from_le_bytes([b[0], b[1]]),
                None => return Err(Lznt1Error("back-reference token cut off".into())),
            };
            ip += 2;
            if op == 0 {
                return Err(Lznt1Error("back-reference before any output".into()));
            }
            // The split between offset and length bits widens the offset as
            // the chunk fills: 4 offset bits up to 16 bytes out, then one more
            // per doubling.
            let mut offset_bits = 4u32;
            let mut reach = 16usize;
            while op > reach {
                offset_bits += 1;
                reach <<= 1;
            }
            let length_bits = 16 - offset_bits;
            let offset = usize::from(token >> length_bits) + 1;
            let length = usize::from(token & ((1u16 << length_bits) - 1)) + 3;
            if offset > op {
                return Err(Lznt1Error(format!("back-reference {offset} bytes back at output {op}")));
            }
            if op + length > out.len() {
                return Err(Lznt1Error(format!("a {length}-byte match at output {op} runs past the chunk")));
            }
            // Byte by byte: the source may overlap what is being written.
            for k in 0..length {
                out[op + k] = out[op + k - offset];
            }
            op += length;
        }
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_chunk_and_a_zero_header() {
        let mut input = vec![0xff, 0x3f]; // stored, 4096 bytes
        input.extend((0..4096u32).map(|i| (i % 251) as u8));
        input.extend([0, 0]);
        let mut out = vec![0u8; 8192];
        assert_eq!(decompress(&input, &mut out).unwrap(), 4096);
        assert_eq!(out[4095], (4095 % 251) as u8);
        assert!(out[4096..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_back_reference_repeats_what_it_points_at() {
        // "abc" then a match of 9 at offset 3: offset 3 -> (3-1) << 12, length 9 -> 9-3.
        let token: u16 = (2 << 12) | 6;
        let body = [0b0000_1000, b'a', b'b', b'c', token as u8, (token >> 8) as u8];
        let mut input = vec![((body.len() - 1) as u16 | 0xb000) as u8, (((body.len() - 1) as u16 | 0xb000) >> 8) as u8];
        input.extend(body);
        let mut out = vec![0u8; 4096];
        decompress(&input, &mut out).unwrap();
        assert_eq!(&out[..12], b"abcabcabcabc");
    }

    #[test]
    fn hostile_chunks_are_errors() {
        let mut out = vec![0u8; 4096];
        // Claims more bytes than there are.
        assert!(decompress(&[0x10, 0xb0, 1, 2], &mut out).is_err());
        // A back-reference first.
        assert!(decompress(&[0x02, 0xb0, 0x01, 0x00, 0x00], &mut out).is_err());
        // A back-reference further back than the output.
        let token: u16 = 5 << 12;
        assert!(decompress(&[0x04, 0xb0, 0x02, b'a', token as u8, (token >> 8) as u8], &mut out).is_err());
    }
}
