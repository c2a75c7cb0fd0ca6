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


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_serve_nbd_over_tls(tmp: Path, store: alike.Store) -> None:
    need("nbdinfo")
    need("openssl")
    write_image(tmp / "d.img", 2 << 20, 8)
    v = store.backup(vm="web", disks=[tmp / "d.img"]).version
    # A CA, and a certificate it signs for 127.0.0.1.
    creds = tmp / "creds"
    creds.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", str(tmp / "ca-key.pem"), "-out", str(creds / "ca-cert.pem"),
            "-subj", "/CN=alike test CA", "-days", "2",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", *ec, "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "req.csr"), "-subj", "/CN=127.0.0.1")
    (tmp / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", str(tmp / "req.csr"), "-CA", str(creds / "ca-cert.pem"),
            "-CAkey", str(tmp / "ca-key.pem"), "-CAcreateserial", "-out", str(tmp / "cert.pem"),
            "-days", "2", "-extfile", str(tmp / "ext.cnf"))
    with store.serve_nbd(v, listen="127.0.0.1:0", tls_cert=tmp / "cert.pem", tls_key=tmp / "key.pem") as srv:
        assert srv.uri.startswith("nbds://127.0.0.1:")
        (e,) = srv.exports
        out = subprocess.run(["nbdinfo", "--size", f"{e.uri}?tls-certificates={creds}"],
                             check=True, capture_output=True, text=True)
        assert out.stdout.strip() == str(2 << 20)
        plain = e.uri.replace("nbds://", "nbd://", 1)
        assert subprocess.run(["nbdinfo", "--size", plain], capture_output=True).returncode != 0
    with pytest.raises(alike.InvalidArgument, match="tls_cert and tls_key"):
        store.serve_nbd(v, listen="127.0.0.1:0", tls_cert=tmp / "cert.pem")
    with pytest.raises(alike.InvalidArgument, match="no PEM private key"):
        store.serve_nbd(v, listen="127.0.0.1:0", tls_cert=tmp / "cert.pem", tls_key=tmp / "cert.pem")
