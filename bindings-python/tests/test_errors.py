"""Errors arrive as alike.Error subclasses that name what was wrong; nothing stored changes."""

from pathlib import Path

import pytest

import alike
from conftest import open_store, write_image


def test_wrong_passphrase(tmp: Path, store: alike.Store) -> None:
    store.close()
    with pytest.raises(alike.WrongPassphrase) as e:
        open_store(tmp, passphrase="nope")
    assert isinstance(e.value, alike.Error) and e.value.kind == "wrong_passphrase"
    assert "passphrase" in str(e.value)
    with pytest.raises(alike.PassphraseRequired):
        alike.Store.open(tmp / "store", cache_dir=tmp / "cache")


def test_not_a_store_and_already_exists(tmp: Path, store: alike.Store) -> None:
    with pytest.raises(alike.NotAStore) as e:
        alike.Store.open(tmp / "nothing-here", passphrase="pw", cache_dir=tmp / "c2")
    assert "nothing-here" in str(e.value)
    with pytest.raises(alike.AlreadyExists):
        alike.Store.create(tmp / "store", passphrase="pw", cache_dir=tmp / "c3", insecure_fast_kdf=True)


def test_not_found_and_bad_arguments(tmp: Path, store: alike.Store) -> None:
    with pytest.raises(alike.NotFound) as e:
        store.version("latest", vm="ghost")
    assert "ghost" in str(e.value) and e.value.kind == "not_found"
    assert e.value.retry == "permanent" and e.value.code is None
    with pytest.raises(alike.InvalidArgument):
        store.version("not-hex")
    with pytest.raises(alike.InvalidArgument):
        store.prune()  # an empty policy would remove everything
    with pytest.raises(alike.IoError) as io:
        store.backup(vm="x", disks=[tmp / "missing.img"])
    assert "missing.img" in str(io.value)
    # Ranges and what is a disk are the facade's, so Python gets them too.
    img = tmp / "one.img"
    img.write_bytes(b"x" * 65536)
    with pytest.raises(alike.InvalidArgument, match="at most 1024"):
        store.backup(vm="x", disks=[img], threads=1_000_000)
    with pytest.raises(alike.InvalidArgument, match="character device"):
        store.backup(vm="x", disks=["/dev/zero"])
    empty = tmp / "empty.img"
    empty.write_bytes(b"")
    with pytest.raises(alike.InvalidArgument, match="empty disk"):
        store.backup(vm="x", disks=[empty])
    assert store.versions() == []
    assert store.backup(vm="x", disks=[empty], allow_empty=True).disks[0].size == 0
    store.close()
    with pytest.raises(alike.InvalidArgument, match="closed"):
        store.versions()


def test_corruption_is_named_and_partial_restore_recovers_the_rest(tmp: Path, store: alike.Store) -> None:
    img = tmp / "d.img"
    want = write_image(img, 4 << 20, seed=3)
    store.backup(vm="x", disks=[img])
    packs = sorted((tmp / "store" / "packs").rglob("*"))
    pack = max((p for p in packs if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    pack.write_bytes(bytes(raw))
    rep = store.verify(full=True)
    assert not rep.ok and rep.damaged[0].object.startswith("packs/")
    with pytest.raises(alike.Corruption) as e:
        store.restore("latest", output=tmp / "o.img")
    assert e.value.kind == "corruption"
    assert not (tmp / "o.img").exists()
    r = store.restore("latest", output=tmp / "o.img", partial=True)
    assert r.failed_ranges and r.first_error
    got = (tmp / "o.img").read_bytes()
    bad = set()
    for a, b in r.failed_ranges:
        bad.update(range(a // 65536, (b + 65535) // 65536))
    for blk in range(len(want) // 65536):
        if blk not in bad:
            assert got[blk * 65536 : (blk + 1) * 65536] == want[blk * 65536 : (blk + 1) * 65536]


def test_every_kind_has_its_class() -> None:
    # The classes are made from the engine's one table of kinds.
    names = ["WrongPassphrase", "PassphraseRequired", "NotAStore", "AlreadyExists", "NotFound", "Corruption",
             "UnsupportedVersion", "Cancelled", "InvalidArgument", "IoError", "Busy", "BadImage",
             "WriteOnlyKey"]
    for n in names:
        cls = getattr(alike, n)
        assert issubclass(cls, alike.Error), n


def test_restore_refuses_an_existing_file_unless_forced(tmp: Path, store: alike.Store) -> None:
    write_image(tmp / "d.img", 1 << 20, 8)
    v = store.backup(vm="a", disks=[tmp / "d.img"]).version
    (tmp / "out.img").write_bytes(b"keep me")
    with pytest.raises(alike.AlreadyExists):
        store.restore(v, tmp / "out.img")
    assert (tmp / "out.img").read_bytes() == b"keep me"
    store.restore(v, tmp / "out.img", force=True)
    assert (tmp / "out.img").read_bytes() == (tmp / "d.img").read_bytes()
