"""Drives alike-xapi-sim with the official XenAPI Python SDK (PyPI `xenapi`).

Run: .venv/bin/pip install -r alike-xen-sim/requirements-test.txt
     cargo build -p alike-xen-sim
     .venv/bin/python -m pytest alike-xen-sim/tests/python

The simulator binary is taken from $ALIKE_XAPI_SIM, else target/debug.
"""

import base64
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import XenAPI

ROOT = Path(__file__).resolve().parents[3]
CBT_BLOCK = 64 * 1024


def sim_binary():
    b = os.environ.get("ALIKE_XAPI_SIM")
    if b:
        return b
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return os.path.join(target, "debug", "alike-xapi-sim")


@pytest.fixture(scope="module")
def sim():
    state = tempfile.mkdtemp(prefix="xapi-sim-")
    proc = subprocess.Popen(
        [sim_binary(), "--listen", "127.0.0.1:0", "--state", state, "--demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()
    m = re.search(r"(https?://\S+)", line)
    assert m, "simulator did not print its URL: %r" % line
    yield m.group(1)
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def session(sim):
    s = XenAPI.Session(sim)
    s.xenapi.login_with_password("root", "alike", "2.21", "alike-tests")
    yield s
    try:
        s.xenapi.session.logout()
    except Exception:
        pass


def guest_write(url, vdi_uuid, offset, data):
    req = urllib.request.Request(
        "%ssim/write?vdi=%s&offset=%d" % (url, vdi_uuid, offset), data=data, method="PUT"
    )
    with urllib.request.urlopen(req) as r:
        assert r.status == 200


def bits(b64):
    raw = base64.b64decode(b64)
    return [i for i in range(len(raw) * 8) if raw[i // 8] & (0x80 >> (i % 8))]


def disks(x, vm):
    out = []
    for vbd in x.VM.get_VBDs(vm):
        r = x.VBD.get_record(vbd)
        if r["type"] == "Disk" and r["VDI"] != "OpaqueRef:NULL":
            out.append((int(r["userdevice"]), r["VDI"]))
    return [v for _, v in sorted(out)]


def test_login_failure_and_api_version(sim):
    s = XenAPI.Session(sim)
    with pytest.raises(XenAPI.Failure) as e:
        s.xenapi.login_with_password("root", "wrong", "2.21", "alike-tests")
    assert e.value.details[0] == "SESSION_AUTHENTICATION_FAILED"
    s.xenapi.login_with_password("root", "alike")
    assert s.API_version == "2.21"
    s.xenapi.session.logout()


def test_inventory(session):
    x = session.xenapi
    recs = x.VM.get_all_records()
    vms = {
        r["name_label"]: ref
        for ref, r in recs.items()
        if not r["is_a_template"] and not r["is_a_snapshot"] and not r["is_control_domain"]
    }
    assert set(vms) == {"web-01", "db-01"}
    assert any(r["is_control_domain"] for r in recs.values())
    assert any(r["is_a_template"] for r in recs.values())
    web = x.VM.get_record(vms["web-01"])
    assert web["power_state"] == "Running"
    assert web["VCPUs_max"] == "2"  # XML-RPC sends ints as strings
    assert int(web["memory_static_max"]) == 1 << 30
    assert web["HVM_boot_policy"] == "BIOS order"
    assert x.VM.get_by_uuid(web["uuid"]) == vms["web-01"]
    assert x.VM.get_by_name_label("web-01") == [vms["web-01"]]
    vdis = disks(x, vms["web-01"])
    assert len(vdis) == 2
    vdi = x.VDI.get_record(vdis[0])
    assert vdi["virtual_size"] == str(64 << 20)
    assert vdi["SR"] in x.SR.get_all()
    assert x.SR.get_record(vdi["SR"])["type"] == "ext"
    vif = x.VIF.get_record(web["VIFs"][0])
    assert x.network.get_name_label(vif["network"]).startswith("Pool-wide network")
    pool = x.pool.get_all()[0]
    assert x.pool.get_master(pool) in x.host.get_all()


def test_cbt_snapshot_changed_blocks_data_destroy(sim, session):
    x = session.xenapi
    web = x.VM.get_by_name_label("web-01")[0]
    leaf = disks(x, web)
    for v in leaf:
        x.VDI.enable_cbt(v)
        assert x.VDI.get_cbt_enabled(v) is True
    snap1 = x.VM.snapshot(web, "backup-1")
    s1 = disks(x, snap1)
    assert x.VM.get_is_a_snapshot(snap1) and x.VM.get_snapshot_of(snap1) == web
    assert snap1 in x.VM.get_snapshots(web)

    root_uuid = x.VDI.get_uuid(leaf[0])
    guest_write(sim, root_uuid, 3 * CBT_BLOCK + 10, b"hello")
    guest_write(sim, root_uuid, 200 * CBT_BLOCK, b"x" * (CBT_BLOCK + 1))

    task = x.Async.VM.snapshot(web, "backup-2")
    for _ in range(200):
        if x.task.get_status(task) != "pending":
            break
        time.sleep(0.01)
    assert x.task.get_status(task) == "success"
    snap2 = re.search(r"OpaqueRef:[0-9a-f-]+", x.task.get_result(task)).group(0)
    x.task.destroy(task)
    s2 = disks(x, snap2)

    assert bits(x.VDI.list_changed_blocks(s1[0], s2[0])) == [3, 200, 201]
    assert bits(x.VDI.list_changed_blocks(s1[1], s2[1])) == []

    with pytest.raises(XenAPI.Failure) as e:
        x.VDI.list_changed_blocks(s2[0], leaf[0])
    assert e.value.details == ["VDI_IN_USE", leaf[0], "list_changed_blocks"]

    nbd = x.VDI.get_nbd_info(s2[0])
    assert nbd and nbd[0]["exportname"].startswith("/" + x.VDI.get_uuid(s2[0]))

    # Keep only CBT metadata of the first snapshot: its VM goes first.
    x.VM.destroy(snap1)
    for v in s1:
        x.VDI.data_destroy(v)
        assert x.VDI.get_type(v) == "cbt_metadata"
    with pytest.raises(XenAPI.Failure) as e:
        x.VDI.get_nbd_info(s1[0])
    assert e.value.details == ["VDI_INCOMPATIBLE_TYPE", s1[0], "cbt_metadata"]
    assert bits(x.VDI.list_changed_blocks(s1[0], s2[0])) == [3, 200, 201]

    x.VM.destroy(snap2)
    for v in s1 + s2:
        x.VDI.destroy(v)
    assert snap2 not in x.VM.get_all()


def test_error_codes(session):
    x = session.xenapi
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.get_record("OpaqueRef:00000000-0000-0000-0000-000000000000")
    assert e.value.details == ["HANDLE_INVALID", "VM", "OpaqueRef:00000000-0000-0000-0000-000000000000"]
    with pytest.raises(XenAPI.Failure) as e:
        x.VDI.enable_cbt("OpaqueRef:bad")
    assert e.value.details[:2] == ["HANDLE_INVALID", "VDI"]
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.get_by_uuid("not-a-uuid")
    assert e.value.details == ["UUID_INVALID", "VM", "not-a-uuid"]
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.no_such_call()
    assert e.value.details == ["MESSAGE_METHOD_UNKNOWN", "VM.no_such_call"]
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.get_record()
    assert e.value.details == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record", "2", "1"]
    web = x.VM.get_by_name_label("web-01")[0]
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.destroy(web)
    assert e.value.details == ["VM_BAD_POWER_STATE", web, "halted", "running"]


def test_expired_session_is_renewed_by_the_sdk(sim, session):
    x = session.xenapi
    old = session._session
    req = urllib.request.Request("%ssim/expire_sessions?session=%s" % (sim, old), data=b"", method="POST")
    urllib.request.urlopen(req).read()
    # The SDK sees SESSION_INVALID, logs in again and retries.
    assert x.VM.get_all()
    assert session._session != old


def test_https_with_the_sdk():
    state = tempfile.mkdtemp(prefix="xapi-sim-tls-")
    proc = subprocess.Popen(
        [sim_binary(), "--listen", "127.0.0.1:0", "--state", state, "--demo", "--tls", "--password", "s3cret"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = re.search(r"(https://\S+)", proc.stdout.readline()).group(1)
        s = XenAPI.Session(url, ignore_ssl=True)
        s.xenapi.login_with_password("root", "s3cret", "2.21", "alike-tests")
        x = s.xenapi
        vdi = disks(x, x.VM.get_by_name_label("db-01")[0])[0]
        nbd = x.VDI.get_nbd_info(vdi)
        assert nbd[0]["cert"].startswith("-----BEGIN CERTIFICATE-----")
        assert x.network.get_purpose(x.network.get_all()[0]) == ["nbd"]
        s.xenapi.session.logout()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(state, ignore_errors=True)
