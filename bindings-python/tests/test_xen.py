"""XenServer backup from Python against the XAPI simulator (alike-xapi-sim --demo)."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import alike

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    binary = os.environ.get("ALIKE_XAPI_SIM") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "alike-xapi-sim"
    )
    state = tempfile.mkdtemp(prefix="xapi-sim-py-")
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--state", state, "--demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    m = re.search(r"(https?://\S+)", proc.stdout.readline())
    assert m, "the simulator did not print its URL"
    yield m.group(1)
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(state, ignore_errors=True)


def test_backup_twice_then_restore_as_a_new_vm(tmp: Path, store: alike.Store, sim_url: str) -> None:
    pool = alike.XenPool.connect(sim_url, "root", "alike")
    first = store.backup_xen(pool, "web-01")
    assert [d.incremental for d in first.disks] == [False, False]
    assert first.version.config["hypervisor"] == "xen"
    again = store.backup_xen(pool, "web-01")
    # Nothing changed in the guest: CBT says so and nothing is read.
    assert all(d.incremental and d.fallback_reason is None for d in again.disks), again.disks
    assert again.read_bytes == 0
    # The fields are those of `alike xen backup --json`; the old names still answer, with a warning.
    assert again.released["kept_snapshot"] == again.snapshot
    assert again.released["destroyed_snapshots"] == [first.snapshot]
    assert [d.mode for d in again.disks] == ["incremental", "incremental"]
    with pytest.warns(DeprecationWarning):
        assert again.snapshot_uuid == again.snapshot
    with pytest.warns(DeprecationWarning):
        assert again.disks[0].vdi_uuid == again.disks[0].vdi
    with pytest.warns(DeprecationWarning):
        assert again.elapsed_s == again.elapsed_seconds
    restored = store.restore_xen_vm(again.version, pool, "Local storage")
    assert restored["vm_uuid"] and len(restored["disks"]) == 2
    with pytest.raises(alike.Error) as e:
        alike.XenPool.connect(sim_url, "root", "wrong")
    assert "SESSION_AUTHENTICATION_FAILED" in str(e.value)


def test_no_password_in_clear_across_the_network() -> None:
    with pytest.raises(alike.InvalidArgument, match="in clear"):
        alike.XenPool.connect("http://192.0.2.1:80", "root", "pw")
    with pytest.raises(alike.InvalidArgument, match="plain HTTP"):
        alike.XenPool.connect("http://127.0.0.1:9", "root", "pw", fingerprint="AB" * 32)
    # Allowed on request: then it is only unreachable.
    with pytest.raises(alike.IoError):
        alike.XenPool.connect("http://0.0.0.0:9", "root", "pw", insecure=True)
