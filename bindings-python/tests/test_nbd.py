"""An NBD export of a version from Python: ``Store.serve_nbd`` returns a
server serving on its own thread; qemu-img reads it; ``stop()`` ends it."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import alike
from conftest import write_image

SCHEMA = json.loads((Path(__file__).parents[2] / "testdata" / "report-schema.json").read_text())


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed, and CI is set")
        pytest.skip(f"{tool} is not installed (bash scripts/test.sh installs it)")


def test_serve_nbd_until_stop(tmp: Path, store: alike.Store) -> None:
    need("qemu-img")
    data = write_image(tmp / "d.img", 4 << 20, 6)
    v = store.backup(vm="web", disks=[tmp / "d.img"]).version
    with store.serve_nbd(v, listen="127.0.0.1:0") as srv:
        assert srv.running
        assert srv.uri.startswith("nbd://127.0.0.1:")
        (e,) = srv.exports
        assert (e.name, e.disk, e.size, e.writable, e.default) == ("disk0", 0, 4 << 20, False, True)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", e.uri, str(tmp / "out.img")], check=True)
        assert (tmp / "out.img").read_bytes() == data
        report = srv.stop()
        assert not srv.running
    assert report.connections == 1 and report.bytes_read <= len(data) and report.id == v.id
    assert srv.stop() == report
    assert set(SCHEMA["nbd"]) == set(report.__dataclass_fields__)


def test_serve_nbd_errors_come_before_it_listens(tmp: Path, store: alike.Store) -> None:
    write_image(tmp / "d.img", 1 << 20, 7)
    v = store.backup(vm="web", disks=[tmp / "d.img"]).version
    with pytest.raises(alike.InvalidArgument, match="no disk 3"):
        store.serve_nbd(v, disk=3, listen="127.0.0.1:0")
    with pytest.raises(alike.NotFound):
        store.serve_nbd("0" * 12, listen="127.0.0.1:0")
    (tmp / "taken").write_text("x")
    with pytest.raises(alike.IoError):
        store.serve_nbd(v, socket=tmp / "taken")
