"""VHD and VHDX images in and out through the Python API (qemu-img as the oracle)."""

import subprocess
from pathlib import Path

import pytest

import alike
from conftest import write_image


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_backup_vhdx_restore_vhd(tmp: Path, store: alike.Store) -> None:
    raw = tmp / "d.img"
    want = write_image(raw, 16 << 20, seed=9)
    vhdx = tmp / "d.vhdx"
    qemu_img("convert", "-f", "raw", "-O", "vhdx", str(raw), str(vhdx))
    v = store.backup(vm="hv", disks=[vhdx]).version
    assert v.disks[0].size == 16 << 20
    out = tmp / "o.vhd"
    store.restore(v, output=out, format="vhd")
    qemu_img("compare", "-f", "vpc", "-F", "raw", str(out), str(raw))
    store.restore(v, output=tmp / "o.raw")
    assert (tmp / "o.raw").read_bytes() == want


def test_bad_image_and_bad_format(tmp: Path, store: alike.Store) -> None:
    raw = tmp / "d.img"
    write_image(raw, 4 << 20, seed=2)
    with pytest.raises(alike.BadImage) as e:
        store.backup(vm="x", disks=[raw], format="vhdx")
    assert "d.img" in str(e.value) and e.value.kind == "bad_image"
    with pytest.raises(alike.InvalidArgument, match="qcow2"):
        store.backup(vm="x", disks=[raw], format="qcow2")
