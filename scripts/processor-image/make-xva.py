#!/usr/bin/env python3
"""make-xva.py DISK.raw OUT.xva [--name NAME] [--memory-mib N] [--vcpus N]
   make-xva.py --check OUT.xva DISK.raw

Writes a raw disk as an XVA — what `xe vm-import` takes — holding one HVM
template VM (BIOS boot from its disk) with that disk as its first VBD.
The layout (docs/processors.md, "The XVA"):

  a POSIX tar (ustar) of
    ova.xml                 the VM, VBD, VDI and SR records as an XML-RPC
                            <value>: {version: {...}, objects: [...]}
    Ref:2/00000000          the disk in 1 MiB chunks, named by chunk index
    Ref:2/00000000.checksum (8 decimal digits), each followed by the SHA-1
    ...                     of its bytes in hex; chunks of zeros are left
                            out except the first and the last

`--check` reads an XVA back: ova.xml parses as XML-RPC, every chunk's
checksum holds, and the chunks laid out (missing ones as zeros) equal
DISK.raw byte for byte. It checks our writer against itself and the raw
disk, not against a pool's importer.
"""

import argparse
import hashlib
import io
import os
import sys
import tarfile
import time
import xmlrpc.client

CHUNK = 1 << 20
NULL = "OpaqueRef:NULL"
VM, VBD, VDI, SR = "Ref:0", "Ref:1", "Ref:2", "Ref:3"


def vm_record(name, vcpus, memory, vbd):
    return {
        "uuid": "", "allowed_operations": [], "current_operations": {},
        "power_state": "Halted", "name_label": name,
        "name_description": "alike processor appliance (scripts/build-processor-image.sh)",
        "user_version": "1", "is_a_template": True, "suspend_VDI": NULL,
        "resident_on": NULL, "affinity": NULL,
        "memory_overhead": "0", "memory_target": "0",
        "memory_static_max": str(memory), "memory_dynamic_max": str(memory),
        "memory_dynamic_min": str(memory), "memory_static_min": str(memory),
        "VCPUs_params": {}, "VCPUs_max": str(vcpus), "VCPUs_at_startup": str(vcpus),
        "actions_after_shutdown": "destroy", "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
        "consoles": [], "VIFs": [], "VBDs": [vbd], "crash_dumps": [], "VTPMs": [],
        "PV_bootloader": "", "PV_kernel": "", "PV_ramdisk": "", "PV_args": "",
        "PV_bootloader_args": "", "PV_legacy_args": "",
        "HVM_boot_policy": "BIOS order", "HVM_boot_params": {"order": "c"},
        "HVM_shadow_multiplier": 1.0,
        "platform": {"acpi": "1", "apic": "true", "pae": "true", "nx": "true",
                     "viridian": "false", "timeoffset": "0"},
        "PCI_bus": "", "other_config": {}, "domid": "-1", "domarch": "",
        "last_boot_CPU_flags": {}, "is_control_domain": False,
        "metrics": NULL, "guest_metrics": NULL, "last_booted_record": "",
        "recommendations": "", "xenstore_data": {}, "ha_always_run": False,
        "ha_restart_priority": "", "is_a_snapshot": False, "snapshot_of": NULL,
        "snapshots": [], "snapshot_time": xmlrpc.client.DateTime("19700101T00:00:00Z"),
        "transportable_snapshot_id": "", "blobs": {}, "tags": [],
        "blocked_operations": {}, "snapshot_info": {}, "snapshot_metadata": "",
        "parent": NULL, "children": [], "bios_strings": {},
        "protection_policy": NULL, "is_snapshot_from_vmpp": False,
        "appliance": NULL, "start_delay": "0", "shutdown_delay": "0", "order": "0",
        "VGPUs": [], "attached_PCIs": [], "suspend_SR": NULL, "version": "0",
        "generation_id": "", "hardware_platform_version": "0",
        "has_vendor_device": False, "requires_reboot": False, "reference_label": "",
    }


def vbd_record(vm, vdi):
    return {
        "uuid": "", "allowed_operations": [], "current_operations": {},
        "VM": vm, "VDI": vdi, "device": "xvda", "userdevice": "0",
        "bootable": True, "mode": "RW", "type": "Disk", "unpluggable": False,
        "storage_lock": False, "empty": False, "other_config": {},
        "currently_attached": False, "status_code": "0", "status_detail": "",
        "runtime_properties": {}, "qos_algorithm_type": "",
        "qos_algorithm_params": {}, "qos_supported_algorithms": [], "metrics": NULL,
    }


def vdi_record(name, size, sr, vbd):
    return {
        "uuid": "", "name_label": name, "name_description": "alike processor root disk",
        "allowed_operations": [], "current_operations": {}, "SR": sr, "VBDs": [vbd],
        "crash_dumps": [], "virtual_size": str(size), "physical_utilisation": str(size),
        "type": "user", "sharable": False, "read_only": False, "other_config": {},
        "storage_lock": False, "location": "", "managed": True, "missing": False,
        "parent": NULL, "xenstore_data": {}, "sm_config": {}, "is_a_snapshot": False,
        "snapshot_of": NULL, "snapshots": [],
        "snapshot_time": xmlrpc.client.DateTime("19700101T00:00:00Z"), "tags": [],
    }


def sr_record():
    return {
        "uuid": "", "name_label": "", "name_description": "",
        "allowed_operations": [], "current_operations": {}, "VDIs": [VDI], "PBDs": [],
        "virtual_allocation": "0", "physical_utilisation": "0", "physical_size": "0",
        "type": "", "content_type": "user", "shared": False, "other_config": {},
        "tags": [], "sm_config": {}, "blobs": {},
    }


def ova_xml(name, size, vcpus, memory):
    header = {
        "version": {
            "hostname": "alike-build", "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "product_version": "7.1.0", "product_brand": "XenServer",
            "build_number": "alike", "xapi_major": "1", "xapi_minor": "9",
            "export_vsn": "2",
        },
        "objects": [
            {"class": "VM", "id": VM, "snapshot": vm_record(name, vcpus, memory, VBD)},
            {"class": "VBD", "id": VBD, "snapshot": vbd_record(VM, VDI)},
            {"class": "VDI", "id": VDI, "snapshot": vdi_record(name, size, SR, VBD)},
            {"class": "SR", "id": SR, "snapshot": sr_record()},
        ],
    }
    # A methodResponse's one parameter is exactly the <value> ova.xml holds.
    doc = xmlrpc.client.dumps((header,), methodresponse=True, allow_none=False)
    start, end = doc.index("<value>"), doc.rindex("</value>") + len("</value>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + doc[start:end] + "\n").encode()


def add(tar, name, data, mtime):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    tar.addfile(info, io.BytesIO(data))


def write(disk, out, name, vcpus, memory_mib):
    size = os.path.getsize(disk)
    if size == 0 or size % CHUNK:
        sys.exit(f"make-xva: {disk}: the size ({size} bytes) must be a non-zero multiple of 1 MiB")
    last = size // CHUNK - 1
    mtime = int(time.time())
    zero = bytes(CHUNK)
    written = 0
    with open(disk, "rb") as f, tarfile.open(out + ".part", "w", format=tarfile.USTAR_FORMAT) as tar:
        add(tar, "ova.xml", ova_xml(name, size, vcpus, memory_mib << 20), mtime)
        for i in range(last + 1):
            chunk = f.read(CHUNK)
            if chunk == zero and 0 < i < last:
                continue
            add(tar, f"{VDI}/{i:08d}", chunk, mtime)
            add(tar, f"{VDI}/{i:08d}.checksum", hashlib.sha1(chunk).hexdigest().encode(), mtime)
            written += 1
    os.replace(out + ".part", out)
    print(f"make-xva: {out}: {written} of {last + 1} chunks of 1 MiB ({os.path.getsize(out)} bytes)")


def check(xva, disk):
    size = os.path.getsize(disk)
    with tarfile.open(xva, "r:*") as tar, open(disk, "rb") as f:
        members = tar.getmembers()
        if not members or members[0].name != "ova.xml":
            sys.exit("make-xva --check: ova.xml is not the first member")
        text = tar.extractfile(members[0]).read().decode()
        body = text[text.index("<value>"):]
        (header,), _ = xmlrpc.client.loads(
            "<?xml version='1.0'?><methodResponse><params><param>" + body + "</param></params></methodResponse>")
        vdis = [o for o in header["objects"] if o["class"] == "VDI"]
        if len(vdis) != 1 or int(vdis[0]["snapshot"]["virtual_size"]) != size:
            sys.exit("make-xva --check: the VDI's virtual_size is not the disk's size")
        ref = vdis[0]["id"]
        total = size // CHUNK
        # Members stream in disk order: chunk, its checksum, next chunk…
        nxt, seen, data = 0, 0, None
        for m in members[1:]:
            d, _, n = m.name.partition("/")
            if d != ref:
                sys.exit(f"make-xva --check: unexpected member {m.name}")
            body = tar.extractfile(m).read()
            if n.endswith(".checksum"):
                if data is None or n != f"{nxt - 1:08d}.checksum" or body.decode() != hashlib.sha1(data).hexdigest():
                    sys.exit(f"make-xva --check: {m.name}: no chunk before it, or its checksum does not hold")
                data = None
                continue
            if data is not None:
                sys.exit(f"make-xva --check: chunk {nxt - 1} has no checksum")
            i = int(n)
            if i < nxt or i >= total or len(body) != CHUNK:
                sys.exit(f"make-xva --check: {m.name}: out of order, beyond the disk or not 1 MiB")
            if nxt == 0 and i != 0:
                sys.exit("make-xva --check: the first chunk is missing")
            for _ in range(nxt, i):
                if f.read(CHUNK) != bytes(CHUNK):
                    sys.exit(f"make-xva --check: a chunk left out before {i} is not zeros in {disk}")
            if f.read(CHUNK) != body:
                sys.exit(f"make-xva --check: chunk {i} differs from {disk}")
            nxt, seen, data = i + 1, seen + 1, body
        if data is not None or nxt != total:
            sys.exit("make-xva --check: the last chunk or a checksum is missing")
    print(f"make-xva --check: {xva} holds {disk} ({seen} chunks present, checksums hold)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="read XVA back and compare with DISK")
    p.add_argument("--name", default="alike-processor")
    p.add_argument("--memory-mib", type=int, default=512)
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("a")
    p.add_argument("b")
    o = p.parse_args()
    if o.check:
        check(o.a, o.b)
    else:
        write(o.a, o.b, o.name, o.vcpus, o.memory_mib)


if __name__ == "__main__":
    main()
