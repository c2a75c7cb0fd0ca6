#!/usr/bin/env python3
"""Fixed-block dedup study over raw disk images (see docs/design/block-size-data.md).

usage: blockstudy.py V1.img V2-INPLACE.img V2-FRESH.img [--json OUT.json]
                     [--sizes 64,128,...] [--frames 256,1024,4096]
                     [--no-throughput] [--tp-repeat N]
       blockstudy.py V1.img --throughput-only [--tp-repeat N]

For each block size (KiB, power of two, 64 KiB .. 4 MiB) the images are cut
into aligned fixed blocks; all-zero blocks (and holes) are skipped, as a store
would record them as holes. Blocks are identified by BLAKE3.

Reported per block size:
  v1:   non-zero blocks, unique blocks, unique bytes, index entries, and the
        zstd level 1 / level 3 size of the unique blocks, each compressed on
        its own (one frame per block);
  v2-*: blocks whose position changed against v1 (what changed-block tracking
        would send), and blocks whose content is NOT already in v1 by hash
        (deduplicated among themselves too): count, raw bytes, zstd-1, zstd-3;
  index: entries x 80 bytes for v1, and extrapolated to a 2 TB store.
Packing: the new (first-seen, in image order) 64 KiB blocks of each image are
also compressed together in frames of 256 KiB / 1 MiB / 4 MiB, to compare
"small dedup unit, bigger compression frame" with per-block compression.
Throughput: single-thread zstd level 1 / 3 compress and decompress, and BLAKE3,
on 64 KiB and 1 MiB inputs taken from v1's data.

Needs only python3 with the `zstandard` and `blake3` packages.
"""
import argparse
import json
import os
import sys
import time

try:
    import blake3
    import zstandard
except ImportError as e:  # pragma: no cover
    sys.exit(f"blockstudy: missing python package ({e}); pip install zstandard blake3")

KIB = 1024
MIB = 1024 * KIB
UNIT = 64 * KIB                # smallest block size; every size is a multiple
CHUNK = 4 * MIB                # read unit = largest block size
ZERO_UNIT = bytes(UNIT)
FSBLOCK = 4 * KIB              # ext4 block: reference granularity only
ZERO_FS = bytes(FSBLOCK)
ZERO_DIGEST = b"\0" * 16
LEVELS = (1, 3)
INDEX_ENTRY_BYTES = 80
STORE_BYTES = 2 * 10**12       # "2 TB store"


def digest(b):
    return blake3.blake3(b).digest(length=16)


def data_ranges(f, size):
    """Yield CHUNK-aligned offsets of chunks that contain data (SEEK_DATA)."""
    fd = f.fileno()
    off = 0
    while off < size:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:  # ENXIO: no more data
            return
        c = d - d % CHUNK
        try:
            h = os.lseek(fd, d, os.SEEK_HOLE)
        except OSError:
            h = size
        end = min(size, h + (-h) % CHUNK)
        while c < end:
            yield c
            c += CHUNK
        off = end


class Packer:
    """Compresses a stream of 64 KiB blocks in frames of `frame` bytes."""

    def __init__(self, frame, cctx):
        self.frame, self.cctx = frame, cctx
        self.buf = []
        self.n = 0
        self.out = {lv: 0 for lv in cctx}
        self.frames = 0

    def add(self, b):
        self.buf.append(b)
        self.n += len(b)
        if self.n >= self.frame:
            self.flush()

    def flush(self):
        if not self.buf:
            return
        data = b"".join(self.buf)
        for lv, c in self.cctx.items():
            self.out[lv] += len(c.compress(data))
        self.frames += 1
        self.buf, self.n = [], 0


def scan(path, sizes, frames, cctx, known=None, ref_digests=None, compress=True, label="",
         ref_path=None):
    """One pass over an image.

    known: {size: set(digest)} of a reference image (v1); blocks whose digest
    is in it are not "new". ref_digests: {size: {offset: digest}} of v1 for
    positional comparison; ref_path: v1's file, to count changed 4 KiB (ext4
    block) positions as a reference for what the file system really wrote.
    Returns (result, digests_by_size_and_offset, seen_digests_by_size).
    """
    t0 = time.time()
    st = {s: dict(nonzero=0, unique=0, new_blocks=0, new_bytes=0,
                  z={lv: 0 for lv in LEVELS}, pos_changed=0, pos_changed_bytes=0,
                  pos_zeroed=0)
          for s in sizes}
    seen = {s: set() for s in sizes}
    where = {s: {} for s in sizes}
    packers = {fr: Packer(fr, cctx) for fr in frames} if compress else {}
    size = os.path.getsize(path)
    fs_changed = 0
    visited = set()
    rf = open(ref_path, "rb", buffering=0) if ref_path else None
    with open(path, "rb", buffering=0) as f:
        done = 0
        for off in data_ranges(f, size):
            f.seek(off)
            chunk = f.read(CHUNK)
            if len(chunk) < CHUNK:
                chunk += bytes(CHUNK - len(chunk))
            mv = memoryview(chunk)
            if rf is not None:
                visited.add(off)
                rf.seek(off)
                rc = rf.read(CHUNK)
                rc += bytes(CHUNK - len(rc))
                if rc != chunk:
                    rm = memoryview(rc)
                    fs_changed += sum(1 for i in range(0, CHUNK, FSBLOCK)
                                      if mv[i:i + FSBLOCK] != rm[i:i + FSBLOCK])
            units = []
            for i in range(0, CHUNK, UNIT):
                u = mv[i:i + UNIT]
                units.append(None if u == ZERO_UNIT else digest(u))
            for s in sizes:
                k = s // UNIT
                for j in range(0, len(units), k):
                    sub = units[j:j + k]
                    boff = off + j * UNIT
                    ref = ref_digests[s].get(boff) if ref_digests is not None else None
                    if all(d is None for d in sub):
                        if ref is not None:
                            st[s]["pos_zeroed"] += 1
                        continue
                    d = sub[0] if k == 1 else digest(b"".join(x or ZERO_DIGEST for x in sub))
                    e = st[s]
                    e["nonzero"] += 1
                    where[s][boff] = d
                    if ref_digests is not None and ref != d:
                        e["pos_changed"] += 1
                        e["pos_changed_bytes"] += s
                    if d in seen[s]:
                        continue
                    seen[s].add(d)
                    e["unique"] += 1
                    if known is not None and d in known[s]:
                        continue
                    e["new_blocks"] += 1
                    e["new_bytes"] += s
                    if compress:
                        blk = mv[j * UNIT:j * UNIT + s]
                        for lv, c in cctx.items():
                            e["z"][lv] += len(c.compress(blk))
                        if s == UNIT:
                            for p in packers.values():
                                p.add(blk)
            done += 1
            if done % 128 == 0:
                print(f"  {label}: {done * CHUNK / MIB:.0f} MiB of data scanned, "
                      f"{time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    if ref_digests is not None:  # v1 blocks that are holes now
        for s in sizes:
            st[s]["pos_zeroed"] += sum(1 for o in ref_digests[s] if o not in where[s])
    if rf is not None:  # v1 data where this image has holes (zeroed 4 KiB blocks)
        for off in data_ranges(rf, os.path.getsize(ref_path)):
            if off in visited:
                continue
            rf.seek(off)
            rc = rf.read(CHUNK)
            fs_changed += sum(1 for i in range(0, len(rc), FSBLOCK) if rc[i:i + FSBLOCK] != ZERO_FS)
        rf.close()
    for p in packers.values():
        p.flush()
    pack = {fr: dict(frames=p.frames, z=dict(p.out)) for fr, p in packers.items()}
    return dict(stats=st, pack=pack, seconds=round(time.time() - t0, 1),
                image_bytes=size, fs_block_changed=fs_changed if rf is not None else None), where, seen


def best_time(fn, repeat):
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best


def throughput(path, sample_bytes=256 * MIB, repeat=3):
    """Single-thread zstd / blake3 throughput on real non-zero data of `path`
    (best of `repeat` runs, to damp interference from other processes)."""
    buf = bytearray()
    with open(path, "rb") as f:
        for off in data_ranges(f, os.path.getsize(path)):
            f.seek(off)
            c = f.read(CHUNK)
            for i in range(0, len(c), UNIT):
                u = c[i:i + UNIT]
                if len(u) == UNIT and u != ZERO_UNIT:
                    buf += u
            if len(buf) >= sample_bytes:
                break
    data = bytes(buf[:sample_bytes])
    res = []
    for insize in (64 * KIB, 1 * MIB):
        pieces = [data[i:i + insize] for i in range(0, len(data) - insize + 1, insize)]
        total = insize * len(pieces)
        row = dict(input=insize, sample=total, repeat=repeat)
        for lv in LEVELS:
            c = zstandard.ZstdCompressor(level=lv)
            comp = [c.compress(p) for p in pieces]
            row[f"z{lv}_comp_MBps"] = total / best_time(lambda: [c.compress(p) for p in pieces], repeat) / 1e6
            row[f"z{lv}_ratio"] = total / sum(map(len, comp))
            d = zstandard.ZstdDecompressor()
            row[f"z{lv}_decomp_MBps"] = total / best_time(lambda: [d.decompress(p) for p in comp], repeat) / 1e6
        row["blake3_MBps"] = total / best_time(lambda: [blake3.blake3(p).digest() for p in pieces], repeat) / 1e6
        res.append(row)
    return res


def throughput_table(tp):
    out = [f"### zstd / BLAKE3 single-thread throughput (python zstandard, libzstd "
           f"{'.'.join(map(str, zstandard.ZSTD_VERSION))}; MB/s of uncompressed data)\n",
           "| input size | zstd-1 compress | zstd-1 decompress | zstd-1 ratio | zstd-3 compress | zstd-3 decompress | zstd-3 ratio | BLAKE3 |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in tp:
        out.append(f"| {fmt_size(t['input'])} | {t['z1_comp_MBps']:.0f} | {t['z1_decomp_MBps']:.0f} | {t['z1_ratio']:.2f} "
                   f"| {t['z3_comp_MBps']:.0f} | {t['z3_decomp_MBps']:.0f} | {t['z3_ratio']:.2f} | {t['blake3_MBps']:.0f} |")
    out.append(f"\nSample: the first {tp[0]['sample'] / MIB:.0f} MiB of non-zero 64 KiB blocks of v1, "
               f"cut into inputs of the given size, one frame per input, one thread; best of "
               f"{tp[0]['repeat']} runs.\n")
    return "\n".join(out)


def fmt_size(s):
    return f"{s // MIB} MiB" if s >= MIB else f"{s // KIB} KiB"


def mb(b):
    return f"{b / 1e6:,.1f}"


def report(r):
    sizes = r["sizes"]
    out = []
    w = out.append
    v1 = r["v1"]["stats"]
    w(f"Images: v1 `{r['paths'][0]}`, v2-inplace `{r['paths'][1]}`, v2-fresh `{r['paths'][2]}`, "
      f"{r['v1']['image_bytes'] / MIB:.0f} MiB each. MB = 10^6 bytes.\n")
    w("### v1 (full backup)\n")
    w("| block | non-zero blocks | unique blocks | unique MB | zstd-1 MB (per block) | zstd-3 MB (per block) | zstd-3 ratio | index entries | index (x80 B) | index for 2 TB unique raw | index for 2 TB stored (zstd-3) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in sizes:
        e = v1[s]
        ub = e["unique"] * s
        z3 = e["z"][3]
        idx2tb_raw = STORE_BYTES / s * INDEX_ENTRY_BYTES
        idx2tb_z = STORE_BYTES / (z3 / e["unique"]) * INDEX_ENTRY_BYTES if e["unique"] else 0
        w(f"| {fmt_size(s)} | {e['nonzero']:,} | {e['unique']:,} | {mb(ub)} | {mb(e['z'][1])} | {mb(z3)} "
          f"| {ub / z3:.2f} | {e['unique']:,} | {e['unique'] * INDEX_ENTRY_BYTES / 1e6:.2f} MB "
          f"| {idx2tb_raw / 1e9:.2f} GB | {idx2tb_z / 1e9:.2f} GB |")
    w("")
    for name in ("v2-inplace", "v2-fresh"):
        st = r[name]["stats"]
        w(f"### {name} (incremental against v1)\n")
        n4 = r[name]["fs_block_changed"]
        w(f"Reference: {n4:,} 4 KiB ext4 blocks ({mb(n4 * FSBLOCK)} MB) differ from v1 at the same offset.\n")
        w("| block | non-zero blocks | changed at same offset (CBT) | CBT MB | new blocks (not in v1, deduped) | new MB raw | new MB zstd-1 (per block) | new MB zstd-3 (per block) |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for s in sizes:
            e = st[s]
            w(f"| {fmt_size(s)} | {e['nonzero']:,} | {e['pos_changed']:,} | {mb(e['pos_changed_bytes'])} "
              f"| {e['new_blocks']:,} | {mb(e['new_bytes'])} | {mb(e['z'][1])} | {mb(e['z'][3])} |")
        w("")
    if UNIT in sizes:
        w("### 64 KiB dedup units: per-block compression vs. packed frames\n")
        w("New 64 KiB blocks (for v1: its unique blocks) in image order, compressed one frame per block, "
          "or concatenated into frames of the given size (consecutive new blocks only). "
          "The last columns compare with blocks of the frame size deduplicated and compressed on their own.\n")
        w("| image | 64 KiB new MB raw | frame | zstd-1 MB | zstd-3 MB | zstd-3 gain vs per-64K-block | same-size blocks: new MB raw | same-size blocks: zstd-3 MB |")
        w("|---|---:|---|---:|---:|---:|---:|---:|")
        for name in ("v1", "v2-inplace", "v2-fresh"):
            st = r[name]["stats"]
            e = st[UNIT]
            raw = e["new_bytes"] if name != "v1" else e["unique"] * UNIT
            w(f"| {name} | {mb(raw)} | 64 KiB (per block) | {mb(e['z'][1])} | {mb(e['z'][3])} | - | {mb(raw)} | {mb(e['z'][3])} |")
            for fr in r["frames"]:
                p = r[name]["pack"][fr]
                gain = 1 - p["z"][3] / e["z"][3] if e["z"][3] else 0
                same = st.get(fr)
                sraw = (same["new_bytes"] if name != "v1" else same["unique"] * fr) if same else None
                w(f"| {name} | {mb(raw)} | {fmt_size(fr)} | {mb(p['z'][1])} | {mb(p['z'][3])} | {gain * 100:.1f}% "
                  f"| {mb(sraw) if same else '-'} | {mb(same['z'][3]) if same else '-'} |")
        w("")
    if r.get("throughput"):
        w(throughput_table(r["throughput"]))
    w(f"Scan times: v1 {r['v1']['seconds']}s, v2-inplace {r['v2-inplace']['seconds']}s, "
      f"v2-fresh {r['v2-fresh']['seconds']}s.")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("v1")
    ap.add_argument("v2_inplace", nargs="?")
    ap.add_argument("v2_fresh", nargs="?")
    ap.add_argument("--sizes", default="64,128,256,512,1024,2048,4096", help="block sizes in KiB")
    ap.add_argument("--frames", default="256,1024,4096", help="frame sizes (KiB) for packed 64 KiB blocks")
    ap.add_argument("--json", help="also write raw results here")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--tp-repeat", type=int, default=3, help="throughput runs (best is kept)")
    ap.add_argument("--throughput-only", action="store_true",
                    help="only measure zstd/BLAKE3 throughput on V1's data")
    a = ap.parse_args()
    if a.throughput_only:
        r = dict(throughput=throughput(a.v1, repeat=a.tp_repeat))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(r, f, indent=1)
        print(throughput_table(r["throughput"]))
        return
    if not (a.v2_inplace and a.v2_fresh):
        ap.error("V2-INPLACE and V2-FRESH are required (unless --throughput-only)")
    sizes = sorted(int(x) * KIB for x in a.sizes.split(","))
    frames = sorted(int(x) * KIB for x in a.frames.split(",")) if a.frames else []
    for s in sizes + frames:
        if s < UNIT or s > CHUNK or s & (s - 1):
            sys.exit(f"blockstudy: sizes must be powers of two from 64 to 4096 KiB (got {s // KIB})")
    for p in (a.v1, a.v2_inplace, a.v2_fresh):
        if not os.path.isfile(p):
            sys.exit(f"blockstudy: no such image: {p}")
    cctx = {lv: zstandard.ZstdCompressor(level=lv) for lv in LEVELS}
    r = dict(sizes=sizes, frames=frames, paths=[a.v1, a.v2_inplace, a.v2_fresh],
             zstd=zstandard.ZSTD_VERSION, blake3=blake3.__version__)
    print("scanning v1", file=sys.stderr)
    r["v1"], v1where, v1seen = scan(a.v1, sizes, frames, cctx, label="v1")
    for name, p in (("v2-inplace", a.v2_inplace), ("v2-fresh", a.v2_fresh)):
        print(f"scanning {name}", file=sys.stderr)
        r[name], _, _ = scan(p, sizes, frames, cctx, known=v1seen, ref_digests=v1where, label=name,
                             ref_path=a.v1)
    if not a.no_throughput:
        print("measuring throughput", file=sys.stderr)
        r["throughput"] = throughput(a.v1, repeat=a.tp_repeat)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1, default=str)
    print(report(r))


if __name__ == "__main__":
    main()
