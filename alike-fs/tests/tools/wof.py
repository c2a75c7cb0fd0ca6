#!/usr/bin/env python3
"""Builds the two halves of a CompactOS (WOF) file for the NTFS tests.

    wof.py ALGO INPUT STREAM_OUT   -> prints the reparse point as 0xHEX

ALGO is xpress4k, xpress8k, xpress16k or lzx. STREAM_OUT receives what goes
into the file's WofCompressedData stream: the chunk table (one little-endian
u32 per chunk after the first, or u64 for files of 4 GiB and more, each the
end of a chunk measured from the end of the table), then the chunks, each
compressed on its own or stored as it is when compressing does not make it
smaller. The chunks are compressed by wimlib (libwim, Debian's libwim15),
whose XPRESS and LZX are the formats WOF uses; nothing here shares code with
the Rust decoders under test.
"""
import ctypes
import ctypes.util
import struct
import sys

ALGOS = {"xpress4k": (0, 1, 4096), "lzx": (1, 2, 32768), "xpress8k": (2, 1, 8192), "xpress16k": (3, 1, 16384)}


def main():
    algo, src, dst = sys.argv[1:4]
    wof_algo, wimlib_type, chunk = ALGOS[algo]
    lib = ctypes.CDLL(ctypes.util.find_library("wim") or "libwim.so.15")
    lib.wimlib_create_compressor.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)]
    lib.wimlib_compress.restype = ctypes.c_size_t
    lib.wimlib_compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    comp = ctypes.c_void_p()
    # LZX at a high level: wimlib then also picks aligned-offset blocks.
    level = 100 if algo == "lzx" else 0
    rc = lib.wimlib_create_compressor(wimlib_type, chunk, level, ctypes.byref(comp))
    if rc != 0:
        sys.exit(f"wimlib_create_compressor: {rc}")
    data = open(src, "rb").read()
    chunks = []
    for at in range(0, len(data), chunk):
        piece = data[at:at + chunk]
        out = ctypes.create_string_buffer(len(piece))
        n = lib.wimlib_compress(piece, len(piece), out, len(piece) - 1, comp) if len(piece) > 1 else 0
        chunks.append(out.raw[:n] if n else piece)
    width = "<Q" if len(data) > 0xFFFFFFFF else "<I"
    table, end = b"", 0
    for c in chunks[:-1]:
        end += len(c)
        table += struct.pack(width, end)
    with open(dst, "wb") as f:
        f.write(table + b"".join(chunks))
    # Reparse header (tag, data length, reserved), WOF_EXTERNAL_INFO
    # (version 1, provider 2 = file), FILE_PROVIDER_EXTERNAL_INFO_V1
    # (version 1, algorithm).
    print("0x" + struct.pack("<IHHIIII", 0x80000017, 16, 0, 1, 2, 1, wof_algo).hex())
    stored = sum(1 for c, at in zip(chunks, range(0, len(data), chunk)) if len(c) == len(data[at:at + chunk]))
    print(f"{len(chunks)} chunks, {stored} stored", file=sys.stderr)


main()
