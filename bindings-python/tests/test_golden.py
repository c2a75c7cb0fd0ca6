"""The golden vectors under testdata/, read with the Python API by the same expectations as the Rust tests."""

import hashlib
import json
from pathlib import Path

import pytest

import alike

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"


@pytest.mark.parametrize("fmt,chunking", [(1, "fixed:64"), (2, "cdc:16/32/64")])
def test_golden_store_opens_lists_and_restores(tmp: Path, fmt: int, chunking: str) -> None:
    g = json.loads((TESTDATA / f"golden-store-v{fmt}.json").read_text())
    root = tmp / "golden"
    for key, hexbytes in g["objects"].items():
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bytes.fromhex(hexbytes))
    with alike.Store.open(root, passphrase=g["passphrase"], cache_dir=tmp / "cache") as s:
        assert (s.format_version, s.chunking) == (fmt, chunking)
        (v,) = s.versions()
        assert v.id == g["version_id"] and v.vm == g["vm"] and v.time_ms == g["time_ms"]
        assert v.disks[0].size == g["disk_size"]
        out = tmp / "out.img"
        s.restore(v, output=out)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == g["disk_sha256"]
        assert s.verify(full=True).ok


@pytest.mark.parametrize("fmt", [1, 2])
def test_golden_objects_carry_the_documented_headers(fmt: int) -> None:
    # docs/format.md: every object starts with 0x89 "ALK" + a two-letter kind + "\r\n" + u32 LE format version;
    # a format 2 store writes its config and manifests as version 2 and every other object as version 1.
    kinds = {"config": b"CF", "keys": b"KY", "packs": b"PK", "index": b"IX", "versions": b"MF"}
    g = json.loads((TESTDATA / f"golden-store-v{fmt}.json").read_text())
    for key, hexbytes in g["objects"].items():
        b = bytes.fromhex(hexbytes)
        kind = key.split("/")[0]
        assert b[:4] == b"\x89ALK" and b[4:6] == kinds[kind] and b[6:8] == b"\r\n", key
        want = fmt if kind in ("config", "versions") else 1
        assert int.from_bytes(b[8:12], "little") == want, key


# Format 2 (docs/format.md §5.1, §8.2), written again here from the document alone:
# the cut hash, the threshold, the cut rule and the extent map layout must give the
# bytes testdata/golden-v2.json pins from the Rust code.

_M64 = (1 << 64) - 1


def _cut_hash(b: bytes) -> int:
    m = 0x9E3779B97F4A7C15
    a, c = 0x243F6A8885A308D3, 0x13198A2E03707344
    whole = len(b) // 128 * 128
    for line in range(whole // 64):
        o = 64 * line + 8 * (line % 8)
        w = int.from_bytes(b[o : o + 8], "little")
        if line % 2 == 0:
            a = ((a ^ w) * m) & _M64
        else:
            c = ((c ^ w) * m) & _M64
    for i, v in enumerate(b[whole:]):
        a ^= v << (8 * (i % 8))
    h = a ^ (((c << 32) | (c >> 32)) & _M64)
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def _threshold(p: dict[str, int]) -> int:
    return _M64 // (p["avg"] // 4096 - p["min"] // 4096 + 1)


def _cut_image(data: bytes, p: dict[str, int]) -> list[list[int]]:
    lo, hi, t = p["min"] // 4096, p["max"] // 4096, _threshold(p)
    out: list[list[int]] = []
    start, n = -1, 0

    def end() -> None:
        nonlocal start, n
        if start >= 0:
            out.append([start * 4096, min((start + n) * 4096, len(data)) - start * 4096])
        start, n = -1, 0

    for blk in range((len(data) + 4095) // 4096):
        if blk and blk % 32768 == 0:
            end()
        b = data[blk * 4096 : (blk + 1) * 4096]
        if not any(b):
            end()
            continue
        if start < 0:
            start = blk
        n += 1
        if n >= hi or (n >= lo and _cut_hash(b) < t):
            end()
    end()
    return out


def _generator(n: int) -> bytes:
    def splitmix64(k: int) -> int:
        z = ((k + 1) * 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return z ^ (z >> 31)

    return b"".join(splitmix64(k).to_bytes(8, "little") for k in range((n + 7) // 8))[:n]


def test_golden_v2_cuts_follow_the_document() -> None:
    g = json.loads((TESTDATA / "golden-v2.json").read_text())
    assert g["format_version"] == 2

    def pattern(n: int) -> bytes:
        return bytes((i * 31 + 7) % 251 for i in range(n))

    blocks = [pattern(4096), None, b"\xff" * 4096, bytes(4096), pattern(1000), pattern(130)]
    for want, b in zip(g["cut_hash"], blocks, strict=True):
        if b is not None:
            assert f"{_cut_hash(b):016x}" == want["hash"], want["input"]
    for t in g["threshold"]:
        assert f"{_threshold(t['chunking']):016x}" == t["threshold"]

    ci = g["cut_image"]
    data = bytearray(_generator(ci["len"]))
    for start, end in ci["zero_runs"]:
        data[start:end] = bytes(end - start)
    for c in ci["cuts"]:
        assert _cut_image(bytes(data), c["chunking"]) == c["chunks"]
    w = g["cut_image_window"]
    window = bytes(w["data_from"]) + _generator(w["len"] - w["data_from"])
    assert _cut_image(window, g["config"]["chunking"]) == w["chunks"]

    # Extent map: u32 count, then count × (start u16, blocks u16, id 32 bytes); the extents are the cuts.
    em = g["extent_map"]
    plain = bytes.fromhex(em["plaintext"])
    n = int.from_bytes(plain[:4], "little")
    assert len(plain) == 4 + 36 * n
    extents: list[tuple[int, int, str]] = [
        (int.from_bytes(e[0:2], "little"), int.from_bytes(e[2:4], "little"), e[4:36].hex())
        for e in (plain[4 + 36 * i : 40 + 36 * i] for i in range(n))
    ]
    assert [list(e) for e in extents] == em["extents"]
    size = int(ci["len"])
    assert [[s * 4096, min(k * 4096, size - s * 4096)] for s, k, _ in extents] == ci["cuts"][0]["chunks"]

    # Format 2 writes config and manifests with header version 2.
    for obj, kind in [(g["config"]["bytes"], b"CF"), (g["manifest_unencrypted"]["bytes"], b"MF")]:
        b = bytes.fromhex(obj)
        assert b[:8] == b"\x89ALK" + kind + b"\r\n" and int.from_bytes(b[8:12], "little") == 2
