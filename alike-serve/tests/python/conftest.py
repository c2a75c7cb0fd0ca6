"""Fixtures of the daemon's end-to-end tests: the XAPI simulator's demo pool,
a store, and `alike serve` run from examples/serve/alike.toml (copied, with the
simulator's address), all as real processes.

Binaries: target/debug/alike and target/debug/alike-xapi-sim (scripts/test.sh
builds them; ALIKE_BIN / ALIKE_XAPI_SIM override). Screenshots go to
target/serve-browser/ (ALIKE_SCREENSHOTS overrides): the test command's
artifacts.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[3]
ALIKE = Path(os.environ.get("ALIKE_BIN", ROOT / "target/debug/alike"))
SIM = Path(os.environ.get("ALIKE_XAPI_SIM", ROOT / "target/debug/alike-xapi-sim"))
SHOTS = Path(os.environ.get("ALIKE_SCREENSHOTS", ROOT / "target/serve-browser"))
PASSWORD = "manager-" + secrets.token_hex(8)
TOKEN = secrets.token_hex(16)


class Proc:
    """A child process whose output is read line by line on a thread."""

    def __init__(self, args: list[str], env: dict[str, str], stream: str) -> None:
        self.p = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        for s in (self.p.stdout, self.p.stderr):
            threading.Thread(target=self._read, args=(s,), daemon=True).start()

    def _read(self, s) -> None:  # type: ignore[no-untyped-def]
        for line in s:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        end = time.time() + timeout
        while time.time() < end:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.p.poll() is not None:
                raise AssertionError(f"exited {self.p.returncode}: {self.lines}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in {self.lines}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        ALIKE_XAPI_PASSWORD="alike",
        ALIKE_XEN_PASSWORD="alike",
        ALIKE_SERVE_TOKEN=TOKEN,
    )
    e.pop("ALIKE_STORE", None)
    return e


def alike(*args: str, cwd: Path | None = None) -> str:
    r = subprocess.run([str(ALIKE), *args], env=env(), capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, f"alike {args}: {r.stderr}"
    return r.stdout


class Daemon:
    def __init__(self, base: Path, sim_url: str) -> None:
        self.base = base
        self.sim_url = sim_url
        self.config = base / "alike.toml"
        self.proc: Proc | None = None
        self.url = ""

    def start(self) -> None:
        self.proc = Proc([str(ALIKE), "serve", "--config", str(self.config), "--listen", "127.0.0.1:0"], env(), "stderr")
        m = self.proc.wait_for(r"alike serve: listening on (http://\S+)")
        self.url = m.group(1)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def kill(self) -> None:
        assert self.proc
        self.proc.p.kill()
        self.proc.p.wait()

    def get(self, path: str, token: str | None = TOKEN) -> tuple[int, bytes, Message]:
        req = urllib.request.Request(self.url + path)
        if token:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers


    def post(self, path: str, body: object = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data or b"", method="POST")
        req.add_header("Authorization", "Bearer " + TOKEN)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


def make_daemon(base: Path) -> tuple[Daemon, Proc]:
    """The simulator and a daemon from the example configuration, in `base`."""
    for b in (ALIKE, SIM):
        if not b.exists():
            pytest.fail(f"{b} is missing: cargo build -p alike-cli --bin alike; cargo build -p alike-xen-sim --bin alike-xapi-sim")
    sim = Proc([str(SIM), "--listen", "127.0.0.1:0", "--demo", "--state", str(base / "sim")], env(), "stdout")
    sim_url = sim.wait_for(r"serving XAPI at (http://\S+)").group(1).rstrip("/")
    # The example configuration, pointed at this simulator.
    text = (ROOT / "examples/serve/alike.toml").read_text()
    text = text.replace('url = "http://127.0.0.1:8099"', f'url = "{sim_url}"')
    (base / "alike.toml").write_text(text)
    state = base / "state"
    (state / "restores").mkdir(parents=True)
    hashed = subprocess.run(
        [str(ALIKE), "serve", "--hash-password"], input=PASSWORD, capture_output=True, text=True, check=True
    ).stdout
    (state / "admin.hash").write_text(hashed)
    alike("--store", str(state / "store"), "--cache-dir", str(base / "cli-cache"), "init", "--no-encryption")
    d = Daemon(base, sim_url)
    d.start()
    return d, sim


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("serve")
    d, sim = make_daemon(base)
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    try:
        yield d
    finally:
        d.stop()
        sim.stop()
        shutil.rmtree(base / "sim", ignore_errors=True)
