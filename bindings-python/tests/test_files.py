"""File-level restore from Python: the volumes of a version, a directory's
entries, and files extracted bit-exact with modes, times and links, from an
ext4 image made by mke2fs."""

import hashlib
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import List

import pytest

import alike

SCHEMA = json.loads((Path(__file__).parents[2] / "testdata" / "report-schema.json").read_text())


def mkfs_ext4() -> str:
    for p in [shutil.which("mkfs.ext4"), "/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]:
        if p and os.path.exists(p):
            return p
    if os.environ.get("CI"):
        raise AssertionError("mkfs.ext4 is missing (bash scripts/test.sh installs e2fsprogs)")
    pytest.skip("mkfs.ext4 is not installed")


@pytest.fixture
def version(tmp: Path, store: alike.Store) -> alike.Version:
    src = tmp / "src"
    (src / "etc" / "nginx").mkdir(parents=True)
    (src / "etc" / "nginx" / "nginx.conf").write_bytes(b"worker_processes 4;\n")
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    os.link(src / "big.bin", src / "big-again.bin")
    os.symlink("/etc/passwd", src / "pw")
    os.chmod(src / "etc" / "nginx" / "nginx.conf", 0o640)
    os.utime(src / "big.bin", (1_000_000_000, 1_234_567_890))
    img = tmp / "fs.img"
    subprocess.run([mkfs_ext4(), "-q", "-F", "-d", str(src), str(img), "32M"], check=True, capture_output=True)
    return store.backup(vm="files", disks=[img]).version


def test_volumes_and_entries(tmp: Path, store: alike.Store, version: alike.Version) -> None:
    vols = store.ls(version)
    assert [(v.name, v.kind, v.filesystem) for v in vols] == [("disk", "disk", "ext4")]
    assert vols.path is None and vols.store_bytes_read > 0
    root = store.ls(version, "/")
    names = sorted(e.name for e in root)
    assert names == ["big-again.bin", "big.bin", "etc", "lost+found", "pw"]
    pw = next(e for e in root.entries if e.name == "pw")
    assert (pw.kind, pw.target) == ("symlink", "/etc/passwd")
    big = store.ls("latest", "/big.bin", vm="files")
    assert len(big) == 1
    e = big.entries[0]
    assert (e.path, e.size, e.nlink, e.mtime_ns) == ("/big.bin", 3 << 20, 2, 1_234_567_890 * 10**9)
    assert e.mtime is not None and e.mtime.year == 2009
    conf = store.ls(version, "/etc/nginx").entries[0]
    assert conf.mode == 0o640
    with pytest.raises(alike.NotFound):
        store.ls(version, "/nope")
    with pytest.raises(alike.InvalidArgument):
        store.ls(version, "/", partition=1, volume="vg/lv")


def test_extract_bit_exact_with_progress(tmp: Path, store: alike.Store, version: alike.Version) -> None:
    out = tmp / "out"
    seen: List[alike.Progress] = []
    threads = set()

    def cb(p: alike.Progress) -> None:
        seen.append(p)
        threads.add(threading.get_ident())

    r = store.extract(version, ["/etc", "/big.bin", "/big-again.bin", "/pw"], out, progress=cb)
    assert r.failures == ()
    assert (r.files, r.hard_links, r.symlinks) == (2, 1, 1)
    src = tmp / "src"
    for rel in ["big.bin", "etc/nginx/nginx.conf"]:
        assert hashlib.sha256((out / rel).read_bytes()).digest() == hashlib.sha256((src / rel).read_bytes()).digest()
    assert os.stat(out / "big.bin").st_ino == os.stat(out / "big-again.bin").st_ino
    assert os.readlink(out / "pw") == "/etc/passwd"
    assert os.stat(out / "etc" / "nginx" / "nginx.conf").st_mode & 0o7777 == 0o640
    assert os.stat(out / "big.bin").st_mtime == 1_234_567_890
    assert threads == {threading.get_ident()}
    assert seen and seen[-1].phase == "restore" and seen[-1].done == seen[-1].total
    # Again: everything exists; refused, then forced.
    again = store.extract(version, "/etc", out)
    assert [(f.path, f.kind) for f in again.failures] == [("/etc", "already_exists")]
    assert store.extract(version, "/etc", out, force=True).failures == ()


def test_cancel_and_the_schema(tmp: Path, store: alike.Store, version: alike.Version) -> None:
    token = alike.CancelToken()
    token.cancel()
    with pytest.raises(alike.Cancelled):
        store.extract(version, "/", tmp / "o", cancel=token)
    listing = store.ls(version, "/")
    for k in SCHEMA["ls"]:
        assert hasattr(listing, k), k
    for k in SCHEMA["ls"]["entries"][0]:
        assert hasattr(listing.entries[0], k), k
    for k in SCHEMA["ls_volumes"]["volumes"][0]:
        assert hasattr(store.ls(version).volumes[0], k), k
    r = store.extract(version, "/pw", tmp / "o2")
    for k in SCHEMA["extract"]:
        assert hasattr(r, k), k
