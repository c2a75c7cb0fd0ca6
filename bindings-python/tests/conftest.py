import os
import random
from pathlib import Path

import pytest

import alike


def write_image(path: Path, size: int, seed: int, extents: int = 12) -> bytes:
    """A sparse image with `extents` random 64 KiB-aligned runs of random data."""
    rng = random.Random(seed)
    data = bytearray(size)
    for _ in range(extents):
        length = rng.randrange(1, 8) * 65536
        off = rng.randrange(0, max(1, (size - length) // 65536)) * 65536
        data[off : off + length] = rng.randbytes(length)
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def store(tmp_path: Path):
    with alike.Store.create(
        tmp_path / "store", passphrase="pw", cache_dir=tmp_path / "cache", insecure_fast_kdf=True
    ) as s:
        yield s


def open_store(tmp_path: Path, passphrase: str = "pw", cache: str = "cache") -> alike.Store:
    return alike.Store.open(tmp_path / "store", passphrase=passphrase, cache_dir=tmp_path / cache)


def big_random_image(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
