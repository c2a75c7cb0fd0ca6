"""Round trip through the Python API: backup, incremental, list, restore, verify, maintenance."""

from pathlib import Path

import pytest

import alike
from conftest import open_store, write_image


def test_backup_restore_round_trip(tmp: Path, store: alike.Store) -> None:
    img = tmp / "disk.img"
    want = write_image(img, 8 << 20, seed=1)
    r = store.backup(vm="web-01", disks=[img])
    assert isinstance(r, alike.BackupReport)
    v = r.version
    assert v.vm == "web-01" and len(v.id) == 64 and v.short_id == v.id[:12]
    assert v.disks[0].size == 8 << 20 and v.disks[0].position == 0
    assert r.new_bytes == v.disks[0].data_bytes > 0
    out = tmp / "out.img"
    rr = store.restore(v, output=out)
    assert out.read_bytes() == want
    assert rr.size == 8 << 20 and rr.failed_ranges == () and rr.data_bytes + rr.hole_bytes == rr.size


def test_incremental_and_listing(tmp: Path, store: alike.Store) -> None:
    img = tmp / "disk.img"
    first = write_image(img, 8 << 20, seed=2)
    v1 = store.backup(vm="db", disks=[img]).version
    changed = bytearray(first)
    changed[3 << 20 : (3 << 20) + 4096] = b"\x55" * 4096
    img.write_bytes(bytes(changed))
    r2 = store.backup(vm="db", disks=[img])
    # Only the chunk around the changed 4 KiB block is new (at most 64 KiB).
    assert 4096 <= r2.new_bytes <= 65536, r2
    assert r2.version.parent == v1.id
    store.backup(vm="other", disks=[img])
    assert [v.id for v in store.versions(vm="db")] == [v1.id, r2.version.id]
    assert len(store.versions()) == 3
    assert store.version("latest", vm="db").id == r2.version.id
    assert store.version(v1.id[:10]).id == v1.id
    # Several VMs: `latest` needs one named (the library's rule, the same in the CLI and C).
    with pytest.raises(alike.InvalidArgument):
        store.version()
    assert store.version(vm="other").vm == "other"
    out = tmp / "v1.img"
    store.restore(v1.id, output=out)
    assert out.read_bytes() == first
    store.restore("latest", output=out, vm="db", force=True)
    assert out.read_bytes() == bytes(changed)
    assert v1.time.tzinfo is not None


def test_verify_stats_prune_gc(tmp: Path, store: alike.Store) -> None:
    img = tmp / "disk.img"
    for seed in range(3):
        write_image(img, 4 << 20, seed=10 + seed)
        store.backup(vm="app", disks=[img])
    rep = store.verify(full=True)
    assert rep.ok and rep.versions == 3 and rep.bytes_read > 0
    st = store.stats()
    assert st.versions == 3 and st.packs >= 1 and st.stored_bytes > 0
    keep = store.versions()[0]
    store.pin(keep)
    assert store.pinned() == [keep.id]
    pr = store.prune(keep_last=1)
    assert len(pr.removed) == 1 and keep.id not in pr.removed
    assert [d.keep for v in pr.vms if v.vm == "app" for d in v.versions].count(True) == 2
    gc = store.gc()
    assert gc.versions == 2
    assert store.verify(full=True).ok
    store.unpin(keep)
    store.forget(keep)
    assert len(store.versions()) == 1


def test_store_properties_and_reopen(tmp: Path, store: alike.Store) -> None:
    assert store.encrypted and store.block_size is None and len(store.id) == 32
    assert (store.chunking, store.format_version) == ("cdc:16/32/64", 2)
    img = tmp / "d.img"
    want = write_image(img, 2 << 20, seed=5)
    store.backup(vm="x", disks=[img])
    store.close()
    assert store.closed
    with open_store(tmp) as s2:
        out = tmp / "o.img"
        s2.restore("latest", output=out)
        assert out.read_bytes() == want


def test_unencrypted_store(tmp: Path) -> None:
    with alike.Store.create(tmp / "plain", encrypt=False, cache_dir=tmp / "c") as s:
        assert not s.encrypted
        img = tmp / "d.img"
        want = write_image(img, 1 << 20, seed=6)
        s.backup(vm="x", disks=[img])
    with alike.Store.open(tmp / "plain", cache_dir=tmp / "c") as s:
        s.restore("latest", output=tmp / "o.img")
        assert (tmp / "o.img").read_bytes() == want


def test_a_fixed_block_store_is_format_1(tmp: Path) -> None:
    s = alike.Store.create(tmp / "fixed", encrypt=False, chunking="fixed", cache_dir=tmp / "cache")
    assert (s.block_size, s.chunking, s.format_version) == (65536, "fixed:64", 1)
    img = tmp / "d.img"
    want = write_image(img, 2 << 20, seed=9)
    r = s.backup(vm="x", disks=[img])
    assert r.version.disks[0].chunking == "fixed:64"
    s.restore("latest", output=tmp / "o.img")
    assert (tmp / "o.img").read_bytes() == want
    with pytest.raises(alike.InvalidArgument, match="chunking"):
        alike.Store.create(tmp / "bad", encrypt=False, chunking="cdc:64/32/16")
