"""Hyper-V backup and restore from Python against the Hyper-V simulator (alike-hyperv-sim --demo, with its smbd)."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import alike

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "hvadmin", "Py!pw<&>"


@pytest.fixture(scope="module")
def sim() -> Iterator[dict[str, str]]:
    if not any(os.path.exists(p) for p in ("/usr/sbin/smbd", "/usr/bin/smbd")):
        if os.environ.get("CI"):
            pytest.fail("smbd is missing (under CI nothing may be skipped)")
        pytest.skip("smbd is not installed")
    binary = os.environ.get("ALIKE_HYPERV_SIM") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "alike-hyperv-sim"
    )
    state = tempfile.mkdtemp(prefix="hv-sim-py-")
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--state", state, "--demo", "--user", USER, "--password", PASSWORD, "--smb-port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    info = {"state": state}
    for _ in range(4):
        line = proc.stdout.readline()
        if "WS-Management at" in line:
            info["url"] = line.split()[-1]
        elif " on port " in line:
            info["smb_port"] = line.split(" on port ")[1].split()[0]
    assert "url" in info and "smb_port" in info, info
    yield info
    proc.terminate()
    proc.wait(timeout=20)
    shutil.rmtree(state, ignore_errors=True)


def test_backup_twice_then_restore_as_a_new_vm(store: alike.Store, sim: dict[str, str]) -> None:
    host = alike.HyperVHost.connect(sim["url"], USER, PASSWORD, smb_port=int(sim["smb_port"]))
    first = store.backup_hyperv(host, "web-01", quiesce=True)
    assert [d.mode for d in first.disks] == ["full", "full"]
    assert first.consistency == "application-consistent"
    assert first.disks[0].transport == "smb" and first.disks[0].path.endswith("web-01-os.vhdx")
    assert first.version.config["hypervisor"] == "hyperv"
    again = store.backup_hyperv(host, "web-01")
    # Nothing changed in the guest: RCT says so and nothing is read.
    assert all(d.incremental and d.fallback_reason is None for d in again.disks), again.disks
    assert again.read_bytes == 0
    assert again.released["destroyed_snapshots"], again.released
    restored = store.restore_hyperv_vm(again.version, host, "C:\\Restored", name="web-01 py", switch="LAN")
    assert restored["name"] == "web-01 py" and len(restored["disks"]) == 2
    assert restored["disks"][0]["path"] == "C:\\Restored\\web-01 py\\web-01-os.vhdx"
    assert (Path(sim["state"]) / "C" / "Restored" / "web-01 py" / "web-01-os.vhdx").is_file()
    with pytest.raises(alike.NotFound):
        store.restore_hyperv_vm(again.version, host, "C:\\Restored", name="x", switch="no such switch")
    with pytest.raises(alike.Error):
        alike.HyperVHost.connect(sim["url"], USER, "wrong", smb_port=int(sim["smb_port"]))
