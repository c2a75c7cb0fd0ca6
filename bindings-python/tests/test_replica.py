"""Replication from Python: a replica folder, runs that send only what
changed, points read back bit-exact, history, seeding and one-pass, progress
on the calling thread, cancel, and the reports' schema."""

import json
import random
import threading
from pathlib import Path
from typing import Any, List

import pytest

import alike
from conftest import big_random_image, write_image

SCHEMA = json.loads((Path(__file__).parents[2] / "testdata" / "report-schema.json").read_text())


def has_keys(obj: Any, keys: Any, what: str) -> None:
    for k, sub in keys.items():
        assert hasattr(obj, k), f"{what} has no {k!r}"
        v = getattr(obj, k)
        if isinstance(sub, dict) and v is not None:
            has_keys(v, sub, f"{what}.{k}")
        elif isinstance(sub, list) and sub and isinstance(sub[0], dict) and v:
            has_keys(v[0], sub[0], f"{what}.{k}[0]")


def scatter(path: Path, seed: int, count: int) -> bytes:
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for _ in range(count):
        at = rng.randrange(0, len(data) // 4096) * 4096
        data[at : at + 4096] = rng.randbytes(4096)
    path.write_bytes(bytes(data))
    return bytes(data)


def test_replicate_list_export_and_history(tmp: Path) -> None:
    d0 = write_image(tmp / "d0.img", 8 << 20, 1, extents=40)
    d1 = write_image(tmp / "d1.img", 2 << 20, 2)
    replica = alike.Replica.open_or_create(tmp / "replica", vm="web")
    assert replica.vm == "web"
    seen: List[alike.Progress] = []
    threads = set()

    def cb(p: alike.Progress) -> None:
        seen.append(p)
        threads.add(threading.get_ident())

    first = replica.replicate([tmp / "d0.img", tmp / "d1.img"], progress=cb)
    assert first.point == 1
    assert threads == {threading.get_ident()}, "progress on the calling thread"
    assert seen and seen[-1].done == seen[-1].total == first.read_bytes
    has_keys(first, SCHEMA["replicate"], "ReplicateReport")

    new0 = scatter(tmp / "d0.img", 3, 10)
    second = replica.replicate([tmp / "d0.img", tmp / "d1.img"], keep=5)
    assert second.point == 2
    assert second.needed_bytes <= 10 * (64 << 10) < first.needed_bytes
    assert second.sent_bytes * 5 < first.sent_bytes
    assert second.disks[1].needed_bytes == 0

    points = replica.points()
    assert [p.point for p in points] == [1, 2]
    has_keys(points[0], SCHEMA["replica_point"], "ReplicaPoint")
    assert points[0].time_ms < points[1].time_ms or points[0].time <= points[1].time
    for point, want in [(1, d0), (2, new0)]:
        r = replica.export(point, 0, tmp / f"out{point}.img")
        assert r.size == len(want)
        assert (tmp / f"out{point}.img").read_bytes() == want
    replica.export(2, 1, tmp / "out-d1.img")
    assert (tmp / "out-d1.img").read_bytes() == d1
    with pytest.raises(alike.AlreadyExists):
        replica.export(2, 1, tmp / "out-d1.img")

    history = replica.history()
    assert [(h.point, h.result) for h in history] == [(1, "ok"), (2, "ok")]
    has_keys(history[0], SCHEMA["replication_record"], "ReplicationRecord")
    assert alike.Replica.open(tmp / "replica").points() == points
    with pytest.raises(alike.NotFound):
        alike.Replica.open(tmp / "nothing")
    with pytest.raises(alike.InvalidArgument):
        alike.Replica.open_or_create(tmp / "replica", vm="other")


def test_seed_and_one_pass(tmp: Path, store: alike.Store) -> None:
    write_image(tmp / "d.img", 8 << 20, 4, extents=40)
    replica = alike.Replica.open_or_create(tmp / "one-pass", vm="db")
    r = replica.replicate([tmp / "d.img"], backup_to=store)
    assert r.backup is not None and r.backup.read_bytes == r.read_bytes == 8 << 20
    assert store.version("latest", vm="db").id == r.backup.version.id

    new = scatter(tmp / "d.img", 5, 4)
    seeded = alike.Replica.open_or_create(tmp / "seeded", vm="db")
    s = seeded.replicate([tmp / "d.img"], seed=(store, "latest"))
    assert s.replica.seeded_bytes > 0 and s.needed_bytes <= 4 * (64 << 10)
    seeded.export(1, 0, tmp / "o.img")
    assert (tmp / "o.img").read_bytes() == new


def test_cancel_leaves_no_point(tmp: Path) -> None:
    big_random_image(tmp / "big.img", 128)
    replica = alike.Replica.open_or_create(tmp / "replica", vm="x")
    token = alike.CancelToken()

    def cb(p: alike.Progress) -> None:
        if p.done > 0:
            threading.Thread(target=token.cancel).start()

    with pytest.raises(alike.Cancelled):
        replica.replicate([tmp / "big.img"], progress=cb, cancel=token)
    assert replica.points() == []
    assert replica.history()[-1].result == "cancelled"
