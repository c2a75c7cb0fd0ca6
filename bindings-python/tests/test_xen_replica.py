"""A replica VM on a second simulated pool from Python: replicate twice, points,
test failover, failover and failback with the bytes it sent."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

import alike

ROOT = Path(__file__).resolve().parents[2]
NET = "Pool-wide network associated with eth0"


def _sims(n: int) -> Iterator[List[str]]:
    binary = os.environ.get("ALIKE_XAPI_SIM") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "alike-xapi-sim"
    )
    states, procs, urls = [], [], []
    for _ in range(n):
        state = tempfile.mkdtemp(prefix="xapi-sim-py-")
        p = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--state", state, "--demo"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert p.stdout is not None
        m = re.search(r"(https?://\S+)", p.stdout.readline())
        assert m, "the simulator did not print its URL"
        states.append(state)
        procs.append(p)
        urls.append(m.group(1))
    yield urls
    for p in procs:
        p.terminate()
        p.wait(timeout=10)
    for s in states:
        shutil.rmtree(s, ignore_errors=True)


@pytest.fixture(scope="module")
def two_sims() -> Iterator[List[str]]:
    yield from _sims(2)


@pytest.fixture
def three_sims() -> Iterator[List[str]]:
    yield from _sims(3)


def test_replicate_then_test_fail_over_and_back(tmp: Path, two_sims: List[str]) -> None:
    a = alike.XenPool.connect(two_sims[0], "root", "alike")
    b = alike.XenPool.connect(two_sims[1], "root", "alike")
    seen: List[alike.Progress] = []
    r1 = alike.XenReplica.replicate(a, "web-01", b, "Local storage", tmp / "st", network=NET, progress=seen.append)
    assert r1["point"] == 1 and seen
    r2 = alike.XenReplica.replicate(a, "web-01", b, "Local storage", tmp / "st", keep=3)
    assert r2["point"] == 2 and r2["needed_bytes"] == 0 and r2["sent_bytes"] < r1["sent_bytes"] // 20
    replica = alike.XenReplica.open(b, "web-01 (replica)", tmp / "st")
    assert replica.uuid == r2["replica_vm"]
    assert [p["point"] for p in replica.points()] == [1, 2]
    t = replica.test_failover()
    assert t["point"] == 2 and t["started"]
    replica.end_test(t["uuid"])
    f = replica.failover(networks={NET: NET})
    assert f["point"] == 2 and not f["started"]
    with pytest.raises(alike.InvalidArgument):
        replica.failback(a, "web-01")  # the original still runs
    # Failback onto a new VM: a wrong SR leaves nothing; then a whole copy, roles swapped.
    with pytest.raises(alike.NotFound):
        replica.failback_new_vm(a, "no such SR")
    fb = replica.failback_new_vm(a, "Local storage", network=NET, name="web-01 (rebuilt)")
    assert fb["roles"]["original_name"] == "web-01 (rebuilt)" and fb["needed_bytes"] > 1 << 20
    r3 = alike.XenReplica.replicate(a, fb["roles"]["original_uuid"], b, "Local storage", tmp / "st")
    assert r3["replica_vm"] == replica.uuid and r3["needed_bytes"] == 0


def test_one_pass_then_a_seeded_replica(tmp: Path, store: alike.Store, three_sims: List[str]) -> None:
    a, b, c = (alike.XenPool.connect(u, "root", "alike") for u in three_sims)
    r = alike.XenReplica.replicate(a, "web-01", b, "Local storage", tmp / "st", network=NET, backup_to=store)
    assert r["point"] == 1 and r["read_bytes"] == 96 << 20 and r["store_read_bytes"] > 0
    assert r["backup"]["version"]["id"] == store.version("latest", vm="web-01").id
    s = alike.XenReplica.replicate(
        a, "web-01", c, "Local storage", tmp / "st", network=NET, seed=(store, r["backup"]["version"]["id"])
    )
    assert s["point"] == 1 and s["replica"]["seeded_bytes"] > 0 and s["sent_bytes"] < r["sent_bytes"] // 4
    replica = alike.XenReplica.open(c, "web-01 (replica)", tmp / "st")
    assert not replica.discard_partial(), "a committed first run leaves nothing to discard"
