"""The Hyper-V simulator driven by clients nobody here wrote: pywinrm's
`Protocol` (NTLM through requests-ntlm/pyspnego, message encryption
always) for WS-Management, and Samba's `smbclient` for the host's share.

The envelopes' headers are pywinrm's own (`Protocol._get_soap_header`);
the bodies are WS-Enumeration, WS-Transfer and WMI method calls as
Windows' WinRM client writes them. Run from the repository root:

    cargo build -p alike-hyperv-sim && .venv/bin/python -m pytest alike-hyperv-sim/tests/python
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import pytest
import winrm
import xmltodict
from winrm.exceptions import InvalidCredentialsError, WSManFaultError

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("ALIKE_HYPERV_SIM", ROOT / "target" / "debug" / "alike-hyperv-sim"))
USER, PASSWORD = "hvadmin", "Pa$$w0rd&<'\""
V2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/"
ENUM = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "n": ENUM,
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}
CI = bool(os.environ.get("CI"))


def need(tool: str) -> None:
    if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
        if CI:
            pytest.fail(f"{tool} is missing (under CI nothing may be skipped)")
        pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="module")
def sim() -> Iterator[dict[str, str]]:
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: cargo build -p alike-hyperv-sim")
    need("smbd")
    state = tempfile.mkdtemp(prefix="hvsim-")
    # The password is an argument here: a test tool on loopback (see the README).
    p = subprocess.Popen(
        [str(BIN), "--listen", "127.0.0.1:0", "--state", state, "--demo", "--user", USER, "--password", PASSWORD, "--smb-port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    info: dict[str, str] = {"state": state}
    assert p.stdout is not None
    for _ in range(4):
        line = p.stdout.readline()
        if "WS-Management at" in line:
            info["url"] = line.split()[-1]
        elif "SMB share" in line:
            info["smb_port"] = line.split(" on port ")[1].split()[0]
    assert "url" in info and "smb_port" in info, info
    try:
        yield info
    finally:
        p.terminate()
        p.wait(timeout=20)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def proto(sim: dict[str, str]) -> winrm.Protocol:
    # Plain HTTP: no certificate to validate (and no CA-bundle warning).
    return winrm.Protocol(
        sim["url"], transport="ntlm", username=USER, password=PASSWORD, message_encryption="always", server_cert_validation="ignore"
    )


def envelope(p: winrm.Protocol, uri: str, action: str, body: dict, selectors: dict[str, str] | None = None) -> str:
    header = p._get_soap_header(resource_uri=uri, action=action)
    if selectors:
        header["env:Header"]["w:SelectorSet"] = {"w:Selector": [{"@Name": k, "#text": v} for k, v in selectors.items()]}
    header["env:Body"] = body
    return xmltodict.unparse({"env:Envelope": header})


def send(p: winrm.Protocol, *a, **k) -> ET.Element:
    return ET.fromstring(p.send_message(envelope(p, *a, **k)))


def enumerate_all(p: winrm.Protocol, wql: str, mode: str | None = None) -> list[ET.Element]:
    body: dict = {"n:Enumerate": {"w:OptimizeEnumeration": None, "w:MaxElements": "2"}}
    if mode:
        body["n:Enumerate"]["w:EnumerationMode"] = mode
    body["n:Enumerate"]["w:Filter"] = {"@Dialect": "http://schemas.microsoft.com/wbem/wsman/1/WQL", "#text": wql}
    r = send(p, V2 + "*", ENUM + "/Enumerate", body)
    resp = r.find("s:Body/n:EnumerateResponse", NS)
    assert resp is not None
    items = list(resp.find("w:Items", NS) or [])
    ctx = resp.findtext("n:EnumerationContext", namespaces=NS)
    done = resp.find("w:EndOfSequence", NS) is not None
    pulls = 0
    while not done:
        r = send(p, V2 + "*", ENUM + "/Pull", {"n:Pull": {"n:EnumerationContext": ctx, "n:MaxElements": "2"}})
        pr = r.find("s:Body/n:PullResponse", NS)
        assert pr is not None
        items += list(pr.find("n:Items", NS) or [])
        done = pr.find("n:EndOfSequence", NS) is not None
        ctx = pr.findtext("n:EnumerationContext", namespaces=NS) or ctx
        pulls += 1
        assert pulls < 100
    return items


def prop(inst: ET.Element, name: str) -> str | None:
    cls = inst.tag.split("}")[1]
    return inst.findtext(f"{{{V2}{cls}}}{name}")


def props(inst: ET.Element, name: str) -> list[str]:
    cls = inst.tag.split("}")[1]
    return [e.text or "" for e in inst.findall(f"{{{V2}{cls}}}{name}")]


def epr_body(cls: str, keys: dict[str, str]) -> dict:
    return {
        "a:Address": "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous",
        "a:ReferenceParameters": {
            "w:ResourceURI": V2 + cls,
            "w:SelectorSet": {"w:Selector": [{"@Name": k, "#text": v} for k, v in keys.items()]},
        },
    }


def epr_keys(e: ET.Element) -> tuple[str, dict[str, str]]:
    uri = e.findtext("a:ReferenceParameters/w:ResourceURI", namespaces=NS) or ""
    sel = {s.get("Name", ""): s.text or "" for s in e.findall("a:ReferenceParameters/w:SelectorSet/w:Selector", NS)}
    return uri.rsplit("/", 1)[1], sel


def invoke(p: winrm.Protocol, cls: str, method: str, selectors: dict[str, str], args: dict) -> ET.Element:
    body = {f"p:{method}_INPUT": {"@xmlns:p": V2 + cls, **args}}
    r = send(p, V2 + cls, f"{V2}{cls}/{method}", body, selectors)
    out = r.find(f"s:Body/{{{V2}{cls}}}{method}_OUTPUT", NS)
    assert out is not None, ET.tostring(r)
    return out


def service(p: winrm.Protocol, cls: str) -> dict[str, str]:
    (svc,) = enumerate_all(p, f"SELECT * FROM {cls}", mode="EnumerateObjectAndEPR")
    _, keys = epr_keys(svc.find("a:EndpointReference", NS))
    return keys


def wait_job(p: winrm.Protocol, job: ET.Element) -> ET.Element:
    cls, keys = epr_keys(job)
    assert cls == "Msvm_ConcreteJob"
    states = []
    for _ in range(200):
        j = send(p, V2 + cls, "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get", None, keys).find(f"s:Body/{{{V2}{cls}}}{cls}", NS)
        assert j is not None
        states.append(prop(j, "JobState"))
        if states[-1] != "4":
            assert "4" in states, "a job is seen running before it ends"
            return j
        time.sleep(0.02)
    raise AssertionError("the job never finished")


def test_identify(proto: winrm.Protocol) -> None:
    r = ET.fromstring(
        proto.send_message(
            '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            'xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd">'
            "<s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>"
        )
    )
    v = r.findtext(".//{http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd}ProductVendor")
    assert v == "Microsoft Corporation"


def test_enumerate_pull_with_wql(proto: winrm.Protocol) -> None:
    systems = enumerate_all(proto, "SELECT * FROM Msvm_ComputerSystem")
    captions = sorted(prop(s, "Caption") or "" for s in systems)
    assert captions == ["Hosting Computer System", "Virtual Machine", "Virtual Machine"]
    (web,) = enumerate_all(proto, "SELECT * FROM Msvm_ComputerSystem WHERE ElementName='web-01'")
    assert prop(web, "EnabledState") == "2"
    assert web.get(f"{{{NS['xsi']}}}type") == "p:Msvm_ComputerSystem_Type"
    assert enumerate_all(proto, "SELECT * FROM Msvm_ComputerSystem WHERE ElementName='nobody'") == []
    # A projection keeps only the named properties.
    (db,) = enumerate_all(proto, "SELECT ElementName, EnabledState FROM Msvm_ComputerSystem WHERE ElementName = \"db-01\"")
    assert sorted(c.tag.split("}")[1] for c in db) == ["ElementName", "EnabledState"]
    assert prop(db, "EnabledState") == "3"


def vm_keys(p: winrm.Protocol, name: str) -> dict[str, str]:
    (vm,) = enumerate_all(p, f"SELECT * FROM Msvm_ComputerSystem WHERE ElementName='{name}'", mode="EnumerateObjectAndEPR")
    _, keys = epr_keys(vm.find("a:EndpointReference", NS))
    return keys


def test_get_and_associations(proto: winrm.Protocol, sim: dict[str, str]) -> None:
    keys = vm_keys(proto, "web-01")
    assert set(keys) == {"CreationClassName", "Name"}
    got = send(proto, V2 + "Msvm_ComputerSystem", "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get", None, keys)
    vm = got.find(f"s:Body/{{{V2}Msvm_ComputerSystem}}Msvm_ComputerSystem", NS)
    assert vm is not None and prop(vm, "ElementName") == "web-01"
    path = f'Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="{keys["Name"]}"'
    (vssd,) = enumerate_all(proto, f"ASSOCIATORS OF {{{path}}} WHERE AssocClass = Msvm_SettingsDefineState ResultClass = Msvm_VirtualSystemSettingData")
    assert prop(vssd, "VirtualSystemType") == "Microsoft:Hyper-V:System:Realized"
    assert prop(vssd, "VirtualSystemSubType") == "Microsoft:Hyper-V:SubType:2"
    iid = prop(vssd, "InstanceID") or ""
    sasds = enumerate_all(
        proto,
        f'ASSOCIATORS OF {{Msvm_VirtualSystemSettingData.InstanceID="{iid}"}} WHERE AssocClass = Msvm_VirtualSystemSettingDataComponent ResultClass = Msvm_StorageAllocationSettingData',
    )
    paths = sorted(props(s, "HostResource")[0] for s in sasds)
    assert paths == [
        "C:\\Hyper-V\\web-01\\Virtual Hard Disks\\web-01-data.vhdx",
        "C:\\Hyper-V\\web-01\\Virtual Hard Disks\\web-01-os.vhdx",
    ]
    # The same through the DMTF association filter (as PowerShell's CIM cmdlets send it).
    body = {
        "n:Enumerate": {
            "w:Filter": {
                "@Dialect": "http://schemas.dmtf.org/wbem/wsman/1/cimbinding/associationFilter",
                "b:AssociatedInstances": {
                    "b:Object": epr_body("Msvm_ComputerSystem", keys),
                    "b:AssociationClassName": "Msvm_SettingsDefineState",
                    "b:ResultClassName": "Msvm_VirtualSystemSettingData",
                },
            }
        }
    }
    r = send(proto, V2 + "*", ENUM + "/Enumerate", body)
    ctx = r.findtext("s:Body/n:EnumerateResponse/n:EnumerationContext", namespaces=NS)
    r = send(proto, V2 + "*", ENUM + "/Pull", {"n:Pull": {"n:EnumerationContext": ctx, "n:MaxElements": "10"}})
    items = list(r.find("s:Body/n:PullResponse/n:Items", NS) or [])
    assert [prop(i, "InstanceID") for i in items] == [iid]


def test_faults(proto: winrm.Protocol) -> None:
    with pytest.raises(WSManFaultError) as e:
        send(proto, V2 + "Msvm_ComputerSystem", "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get", None, {"CreationClassName": "Msvm_ComputerSystem", "Name": "NOPE"})
    assert e.value.code == 500 and e.value.wmierror_code == 0x80041002
    with pytest.raises(WSManFaultError) as e:
        enumerate_all(proto, "SELECT * FROM Msvm_ComputerSystem WHERE ElementName LIKE 'web%'")
    assert e.value.wmierror_code == 0x80041017
    with pytest.raises(WSManFaultError) as e:
        send(proto, V2 + "*", ENUM + "/Pull", {"n:Pull": {"n:EnumerationContext": "uuid:" + str(uuid.uuid4())}})
    assert e.value.wsman_fault_code == 2150858770


def test_wrong_password_is_refused(sim: dict[str, str]) -> None:
    p = winrm.Protocol(sim["url"], transport="ntlm", username=USER, password="wrong", message_encryption="always", server_cert_validation="ignore")
    with pytest.raises(InvalidCredentialsError):
        p.send_message("<x/>")


def guest_write(sim: dict[str, str], vm: str, disk: int, offset: int, data: bytes) -> None:
    base = sim["url"].rsplit("/wsman", 1)[0]
    req = urllib.request.Request(f"{base}/sim/guest-write?vm={vm}&disk={disk}&offset={offset}", data=data, method="POST")
    with urllib.request.urlopen(req) as r:
        assert r.status == 200


def test_checkpoint_reference_point_and_rct(proto: winrm.Protocol, sim: dict[str, str]) -> None:
    vm = vm_keys(proto, "web-01")
    snap_svc = service(proto, "Msvm_VirtualSystemSnapshotService")
    settings = (
        '<INSTANCE CLASSNAME="Msvm_VirtualSystemSnapshotSettingData">'
        '<PROPERTY NAME="ConsistencyLevel" TYPE="uint8"><VALUE>1</VALUE></PROPERTY>'
        '<PROPERTY NAME="IgnoreNonSnapshottableDisks" TYPE="boolean"><VALUE>TRUE</VALUE></PROPERTY>'
        "</INSTANCE>"
    )

    def checkpoint() -> ET.Element:
        out = invoke(
            proto,
            "Msvm_VirtualSystemSnapshotService",
            "CreateSnapshot",
            snap_svc,
            {"p:AffectedSystem": epr_body("Msvm_ComputerSystem", vm), "p:SnapshotSettings": settings, "p:SnapshotType": "32768"},
        )
        assert out.findtext(f"{{{V2}Msvm_VirtualSystemSnapshotService}}ReturnValue") == "4096"
        job = wait_job(proto, out.find(f"{{{V2}Msvm_VirtualSystemSnapshotService}}Job"))
        assert prop(job, "JobState") == "7", prop(job, "ErrorDescription")
        _, jkeys = epr_keys(out.find(f"{{{V2}Msvm_VirtualSystemSnapshotService}}Job"))
        (snap,) = enumerate_all(
            proto,
            f'ASSOCIATORS OF {{Msvm_ConcreteJob.InstanceID="{jkeys["InstanceID"]}"}} WHERE AssocClass = Msvm_AffectedJobElement ResultClass = Msvm_VirtualSystemSettingData',
        )
        assert prop(snap, "VirtualSystemType") == "Microsoft:Hyper-V:Snapshot:Recovery"
        assert prop(snap, "ConsistencyLevel") == "1"
        return snap

    snap = checkpoint()
    disks = Path(sim["state"]) / "C" / "Hyper-V" / "web-01" / "Virtual Hard Disks"
    assert len(list(disks.glob("web-01-os_*.avhdx"))) == 1
    # The checkpoint's disks are the frozen parents; the VM now writes to the AVHDX.
    sasds = enumerate_all(
        proto,
        f'ASSOCIATORS OF {{Msvm_VirtualSystemSettingData.InstanceID="{prop(snap, "InstanceID")}"}} WHERE AssocClass = Msvm_VirtualSystemSettingDataComponent ResultClass = Msvm_StorageAllocationSettingData',
    )
    assert sorted(props(s, "HostResource")[0].rsplit("\\", 1)[1] for s in sasds) == ["web-01-data.vhdx", "web-01-os.vhdx"]

    def to_reference_point(snap: ET.Element) -> list[str]:
        out = invoke(
            proto,
            "Msvm_VirtualSystemSnapshotService",
            "ConvertToReferencePoint",
            snap_svc,
            {"p:AffectedSnapshot": epr_body("Msvm_VirtualSystemSettingData", {"InstanceID": prop(snap, "InstanceID") or ""})},
        )
        assert out.findtext(f"{{{V2}Msvm_VirtualSystemSnapshotService}}ReturnValue") == "4096"
        job = wait_job(proto, out.find(f"{{{V2}Msvm_VirtualSystemSnapshotService}}Job"))
        assert prop(job, "JobState") == "7"
        _, rkeys = epr_keys(out.find(f"{{{V2}Msvm_VirtualSystemSnapshotService}}ResultingReferencePoint"))
        rp = send(proto, V2 + "Msvm_VirtualSystemReferencePoint", "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get", None, rkeys)
        inst = rp.find(f"s:Body/{{{V2}Msvm_VirtualSystemReferencePoint}}Msvm_VirtualSystemReferencePoint", NS)
        assert prop(inst, "ReferencePointType") == "1"
        return props(inst, "ResilientChangeTrackingIdentifiers")

    rct = to_reference_point(snap)
    assert len(rct) == 2 and all(r.startswith("rctX:") for r in rct)
    assert list(disks.glob("*.avhdx")) == [], "the checkpoint's AVHDX was merged"

    # The guest writes; the next checkpoint's changes since the reference point are exactly those.
    guest_write(sim, "web-01", 0, 5 << 20, b"x" * 10)
    guest_write(sim, "web-01", 0, 40 << 20, b"y" * 70000)
    snap2 = checkpoint()
    img_svc = service(proto, "Msvm_ImageManagementService")
    path = "C:\\Hyper-V\\web-01\\Virtual Hard Disks\\web-01-os.vhdx"
    offsets: list[int] = []
    lengths: list[int] = []
    at, size, calls = 0, 64 << 20, 0
    while at < size:
        out = invoke(
            proto,
            "Msvm_ImageManagementService",
            "GetVirtualDiskChanges",
            img_svc,
            {"p:Path": path, "p:LimitId": rct[0], "p:TargetSnapshotId": "", "p:ByteOffset": str(at), "p:ByteLength": str(size - at)},
        )
        c = f"{{{V2}Msvm_ImageManagementService}}"
        assert out.findtext(c + "ReturnValue") == "0"
        processed = int(out.findtext(c + "ProcessedByteLength") or "0")
        assert 0 < processed <= size - at
        offsets += [int(e.text or "0") for e in out.findall(c + "ChangedByteOffsets")]
        lengths += [int(e.text or "0") for e in out.findall(c + "ChangedByteLengths")]
        at += processed
        calls += 1
    assert calls > 1, "the simulator processes part of a large request per call"
    changed = list(zip(offsets, lengths))
    assert changed == [(5 << 20, 64 << 10), (40 << 20, 128 << 10)]
    # A stale or foreign RCT id is refused.
    out = invoke(
        proto,
        "Msvm_ImageManagementService",
        "GetVirtualDiskChanges",
        img_svc,
        {"p:Path": path, "p:LimitId": "rctX:00000000:0000:0000:0000:000000000000:00000001", "p:TargetSnapshotId": "", "p:ByteOffset": "0", "p:ByteLength": "4096"},
    )
    assert out.findtext(f"{{{V2}Msvm_ImageManagementService}}ReturnValue") == "32773"
    to_reference_point(snap2)


def test_define_modify_add_and_destroy_a_vm(proto: winrm.Protocol) -> None:
    """VM definition as a restore does it, sent by pywinrm: arrays of embedded instances, references out."""
    vmms = service(proto, "Msvm_VirtualSystemManagementService")
    C = "Msvm_VirtualSystemManagementService"

    def call(method: str, args: dict) -> tuple[str, ET.Element]:
        out = invoke(proto, C, method, vmms, args)
        rv = out.findtext(f"{{{V2}{C}}}ReturnValue") or ""
        if rv == "4096":
            job = wait_job(proto, out.find(f"{{{V2}{C}}}Job"))
            assert prop(job, "JobState") == "7", prop(job, "ErrorDescription")
        return rv, out

    def inst(cls: str, **p: str) -> str:
        body = "".join(f'<PROPERTY NAME="{k}" TYPE="string"><VALUE>{v}</VALUE></PROPERTY>' for k, v in p.items())
        return f'<INSTANCE CLASSNAME="{cls}">{body}</INSTANCE>'

    rv, out = call("DefineSystem", {"p:SystemSettings": inst("Msvm_VirtualSystemSettingData", ElementName="py-vm", VirtualSystemSubType="Microsoft:Hyper-V:SubType:2")})
    assert rv == "4096"
    _, vm = epr_keys(out.find(f"{{{V2}{C}}}ResultingSystem"))
    (vssd,) = enumerate_all(proto, f'ASSOCIATORS OF {{Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="{vm["Name"]}"}} WHERE AssocClass = Msvm_SettingsDefineState')
    assert prop(vssd, "VirtualSystemSubType") == "Microsoft:Hyper-V:SubType:2"
    assert prop(vssd, "SecureBootEnabled") == "true"
    vid = prop(vssd, "InstanceID") or ""
    parts = enumerate_all(proto, f'ASSOCIATORS OF {{Msvm_VirtualSystemSettingData.InstanceID="{vid}"}} WHERE AssocClass = Msvm_VirtualSystemSettingDataComponent')
    cpu = next(p for p in parts if p.tag.endswith("}Msvm_ProcessorSettingData"))
    assert prop(cpu, "VirtualQuantity") == "1"
    rv, _ = call("ModifyResourceSettings", {"p:ResourceSettings": [inst("Msvm_ProcessorSettingData", InstanceID=prop(cpu, "InstanceID") or "", VirtualQuantity="4")]})
    assert rv == "4096"
    scsi = inst("Msvm_ResourceAllocationSettingData", ResourceType="6", ResourceSubType="Microsoft:Hyper-V:Synthetic SCSI Controller")
    target = {"p:AffectedConfiguration": epr_body("Msvm_VirtualSystemSettingData", {"InstanceID": vid})}
    rv, out = call("AddResourceSettings", {**target, "p:ResourceSettings": [scsi, scsi]})
    assert rv == "4096"
    made = out.findall(f"{{{V2}{C}}}ResultingResourceSettings")
    assert len(made) == 2
    _, ctrl = epr_keys(made[0])
    path = f'\\\\HV-SIM-01\\root\\virtualization\\v2:Msvm_ResourceAllocationSettingData.InstanceID="{ctrl["InstanceID"].replace(chr(92), chr(92) * 2)}"'
    drive = inst("Msvm_ResourceAllocationSettingData", ResourceType="17", ResourceSubType="Microsoft:Hyper-V:Synthetic Disk Drive", Parent=path, AddressOnParent="0")
    rv, out = call("AddResourceSettings", {**target, "p:ResourceSettings": drive})
    assert rv == "4096"
    _, dkeys = epr_keys(out.find(f"{{{V2}{C}}}ResultingResourceSettings"))
    dpath = f'Msvm_ResourceAllocationSettingData.InstanceID="{dkeys["InstanceID"].replace(chr(92), chr(92) * 2)}"'
    image = inst("Msvm_StorageAllocationSettingData", ResourceType="31", ResourceSubType="Microsoft:Hyper-V:Virtual Hard Disk", Parent=dpath, HostResource="C:\\nowhere\\x.vhdx")
    rv, _ = call("AddResourceSettings", {**target, "p:ResourceSettings": image})
    assert rv == "32779", "a missing file"
    rv, _ = call("AddResourceSettings", {**target, "p:ResourceSettings": drive})
    assert rv == "32773", "the location is taken"
    parts = enumerate_all(proto, f'ASSOCIATORS OF {{Msvm_VirtualSystemSettingData.InstanceID="{vid}"}} WHERE AssocClass = Msvm_VirtualSystemSettingDataComponent')
    assert sum(1 for p in parts if prop(p, "ResourceType") == "6") == 2
    assert sum(1 for p in parts if prop(p, "ResourceType") == "17") == 1
    cpu = next(p for p in parts if p.tag.endswith("}Msvm_ProcessorSettingData"))
    assert prop(cpu, "VirtualQuantity") == "4"
    rv, _ = call("DestroySystem", {"p:AffectedSystem": epr_body("Msvm_ComputerSystem", vm)})
    assert rv == "4096"
    assert enumerate_all(proto, "SELECT * FROM Msvm_ComputerSystem WHERE ElementName='py-vm'") == []


def test_smbclient_reads_a_disk_file(sim: dict[str, str]) -> None:
    need("smbclient")
    rel = "Hyper-V/web-01/Virtual Hard Disks/web-01-data.vhdx"
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "copy.vhdx"
        auth = Path(d) / "auth"
        # Credentials in a file, not on the command line.
        auth.write_text(f"username = {USER}\npassword = {PASSWORD}\n")
        cmd = [
            "smbclient", "//127.0.0.1/C$", "-p", sim["smb_port"], "-A", str(auth),
            "-c", f'cd "Hyper-V/web-01/Virtual Hard Disks"; ls; get web-01-data.vhdx {out}',
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "web-01-os.vhdx" in r.stdout and "web-01-data.vhdx" in r.stdout
        assert out.read_bytes() == (Path(sim["state"]) / "C" / rel).read_bytes()
        bad = Path(d) / "bad"
        bad.write_text(f"username = {USER}\npassword = wrong\n")
        r = subprocess.run(["smbclient", "//127.0.0.1/C$", "-p", sim["smb_port"], "-A", str(bad), "-c", "ls"], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "LOGON_FAILURE" in (r.stdout + r.stderr)


def test_https_with_basic_and_ntlm() -> None:
    """The 5986 listener: pywinrm over TLS with Basic, and with NTLM (no message encryption inside TLS)."""
    state = tempfile.mkdtemp(prefix="hvsim-tls-")
    p = subprocess.Popen(
        [str(BIN), "--listen", "127.0.0.1:0", "--state", state, "--user", USER, "--password", PASSWORD, "--tls"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        url, fp = "", ""
        for _ in range(3):
            line = p.stdout.readline()
            if "WS-Management at" in line:
                url = line.split()[-1]
            if "certificate SHA-256" in line:
                fp = line.split("certificate SHA-256 ")[1].strip()
        assert url.startswith("https://127.0.0.1:") and len(fp) == 95, (url, fp)
        # pywinrm checks certificates with requests (a CA bundle); the file the simulator keeps is that CA.
        ca = str(Path(state) / "tls" / "cert.pem")
        for transport in ("basic", "ntlm"):
            proto = winrm.Protocol(url, transport=transport, username=USER, password=PASSWORD, server_cert_validation="validate", ca_trust_path=ca)
            hosts = enumerate_all(proto, "SELECT * FROM Msvm_ComputerSystem")
            assert [prop(h, "Caption") for h in hosts] == ["Hosting Computer System"], transport
        bad = winrm.Protocol(url, transport="basic", username=USER, password="wrong", server_cert_validation="validate", ca_trust_path=ca)
        with pytest.raises(InvalidCredentialsError):
            enumerate_all(bad, "SELECT * FROM Msvm_ComputerSystem")
    finally:
        p.terminate()
        p.wait(timeout=20)
        shutil.rmtree(state, ignore_errors=True)



def test_a_replica_by_authorization_entry(proto: winrm.Protocol) -> None:
    """Hyper-V Replica on the replica side, sent by pywinrm: SetAuthorizationEntry makes a VM a replica
    that refuses to start and to fail over (no recovery point); RemoveReplicationRelationship frees it."""
    vmms = service(proto, "Msvm_VirtualSystemManagementService")
    rsvc = service(proto, "Msvm_ReplicationService")
    R = "Msvm_ReplicationService"

    def call(cls: str, method: str, sel: dict[str, str], args: dict) -> str:
        out = invoke(proto, cls, method, sel, args)
        rv = out.findtext(f"{{{V2}{cls}}}ReturnValue") or ""
        if rv == "4096":
            job = wait_job(proto, out.find(f"{{{V2}{cls}}}Job"))
            assert prop(job, "JobState") == "7", prop(job, "ErrorDescription")
        return rv

    (settings,) = enumerate_all(proto, "SELECT * FROM Msvm_ReplicationServiceSettingData")
    assert prop(settings, "RecoveryServerEnabled") == "true"
    vssd = '<INSTANCE CLASSNAME="Msvm_VirtualSystemSettingData"><PROPERTY NAME="ElementName" TYPE="string"><VALUE>py-replica</VALUE></PROPERTY></INSTANCE>'
    out = invoke(proto, "Msvm_VirtualSystemManagementService", "DefineSystem", vmms, {"p:SystemSettings": vssd})
    wait_job(proto, out.find(f"{{{V2}Msvm_VirtualSystemManagementService}}Job"))
    _, vm = epr_keys(out.find(f"{{{V2}Msvm_VirtualSystemManagementService}}ResultingSystem"))
    cs = {"p:ComputerSystem": epr_body("Msvm_ComputerSystem", vm)}

    def entry(**p: str) -> str:
        body = "".join(f'<PROPERTY NAME="{k}" TYPE="string"><VALUE>{v}</VALUE></PROPERTY>' for k, v in p.items())
        return f'<INSTANCE CLASSNAME="Msvm_ReplicationAuthorizationSettingData">{body}</INSTANCE>'

    assert call(R, "SetAuthorizationEntry", rsvc, {**cs, "p:AuthorizationEntry": entry(TrustGroup="g")}) == "32773", "no AllowedPrimaryHostSystem"
    assert call(R, "SetAuthorizationEntry", rsvc, {**cs, "p:AuthorizationEntry": entry(AllowedPrimaryHostSystem="*", TrustGroup="g", ReplicaStorageLocation="C:\\R")}) == "4096"
    (cs_inst,) = enumerate_all(proto, "SELECT * FROM Msvm_ComputerSystem WHERE ElementName='py-replica'")
    assert (prop(cs_inst, "ReplicationMode"), prop(cs_inst, "ReplicationState")) == ("2", "1")
    assert call("Msvm_ComputerSystem", "RequestStateChange", vm, {"p:RequestedState": "2"}) == "32775", "a replica does not start"
    assert call(R, "InitiateFailover", rsvc, cs) == "32775", "no recovery point to fail over to"
    for m in ("CommitFailover", "RevertFailover", "ReverseReplicationRelationship"):
        assert call(R, m, rsvc, cs) == "32775", f"{m}: no failover in progress"
    assert call(R, "RemoveReplicationRelationship", rsvc, cs) == "4096"
    (cs_inst,) = enumerate_all(proto, "SELECT * FROM Msvm_ComputerSystem WHERE ElementName='py-replica'")
    assert prop(cs_inst, "ReplicationMode") == "0"
    assert call(R, "RemoveReplicationRelationship", rsvc, cs) == "32775", "no relationship left"
    assert call("Msvm_ComputerSystem", "RequestStateChange", vm, {"p:RequestedState": "2"}) == "4096"
    assert call("Msvm_ComputerSystem", "RequestStateChange", vm, {"p:RequestedState": "3"}) == "4096"
    assert call("Msvm_VirtualSystemManagementService", "DestroySystem", vmms, {"p:AffectedSystem": epr_body("Msvm_ComputerSystem", vm)}) == "4096"
