"""The golden vectors under testdata/, read with the Python API by the same expectations as the Rust tests."""

import hashlib
import json
from pathlib import Path

import alike

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"


def test_golden_store_opens_lists_and_restores(tmp: Path) -> None:
    g = json.loads((TESTDATA / "golden-store-v1.json").read_text())
    root = tmp / "golden"
    for key, hexbytes in g["objects"].items():
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bytes.fromhex(hexbytes))
    with alike.Store.open(root, passphrase=g["passphrase"], cache_dir=tmp / "cache") as s:
        (v,) = s.versions()
        assert v.id == g["version_id"] and v.vm == g["vm"] and v.time_ms == g["time_ms"]
        assert v.disks[0].size == g["disk_size"]
        out = tmp / "out.img"
        s.restore(v, output=out)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == g["disk_sha256"]
        assert s.verify(full=True).ok


def test_golden_objects_carry_the_documented_headers() -> None:
    # docs/format.md: every object starts with 0x89 "ALK" + a two-letter kind + "\r\n" + u32 LE format version.
    kinds = {"config": b"CF", "keys": b"KY", "packs": b"PK", "index": b"IX", "versions": b"MF"}
    version = json.loads((TESTDATA / "golden-v1.json").read_text())["format_version"]
    g = json.loads((TESTDATA / "golden-store-v1.json").read_text())
    for key, hexbytes in g["objects"].items():
        b = bytes.fromhex(hexbytes)
        assert b[:4] == b"\x89ALK" and b[4:6] == kinds[key.split("/")[0]] and b[6:8] == b"\r\n", key
        assert int.from_bytes(b[8:12], "little") == version, key
