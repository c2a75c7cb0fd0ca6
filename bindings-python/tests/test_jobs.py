"""Jobs of a configuration file on processors made for them: the file's
checks (errors name the key; secrets only by reference), and a job run on a
local processor (a network namespace with its own sshd) where this machine
allows it (root, iproute2, sshd; the `alike` binary built by `cargo test`)."""

import os
import subprocess
from pathlib import Path

import pytest

import alike

ROOT = Path(__file__).resolve().parents[2]
ALIKE = ROOT / "target" / "debug" / "alike"


def test_a_config_error_names_the_file_and_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "alike.toml"
    cfg.write_text('[[store]]\nname = "main"\npath = "/srv/ads"\npassphrase = "hunter2"\n')
    with pytest.raises(alike.InvalidArgument) as e:
        alike.load_config(cfg)
    assert str(cfg) in str(e.value) and "never written" in str(e.value)
    cfg.write_text('[[store]]\nname = "main"\npath = "s"\npassphrase = { env = "ALIKE_PASSWORD" }\n')
    c = alike.load_config(cfg)
    assert c["store"][0]["passphrase"] == {"env": "ALIKE_PASSWORD"}
    assert c["store"][0]["path"] == str(tmp_path / "s")
    with pytest.raises(alike.InvalidArgument, match="no job named"):
        alike.run_jobs(cfg, ["nightly"])


def test_a_job_runs_on_a_local_processor(tmp_path: Path) -> None:
    if not ALIKE.exists():
        pytest.skip(f"{ALIKE} is not built (cargo build -p alike-cli)")
    d = tmp_path / "jobs"
    r = subprocess.run(["bash", str(ROOT / "scripts/local-pool-config.sh"), str(ALIKE), str(d), "py-job"])
    if r.returncode == 3:
        if os.environ.get("CI"):
            pytest.fail("local processors need root, iproute2 and sshd")
        pytest.skip("local processors need root, iproute2 and sshd")
    assert r.returncode == 0
    try:
        report = alike.run_jobs(d / "alike.toml", ["py-job"], cancel=alike.CancelToken())
        [job] = report["jobs"]
        assert "error" not in job, job
        run = job["result"]
        assert run["ready_after_seconds"] > 0 and len(run["vms"]) == 1
        backed_up = run["vms"][0]["result"]
        password = (d / "store.pass").read_text().strip()
        with alike.Store.open(d / "store", passphrase=password, cache_dir=d / "cache") as s:
            [v] = s.versions("vm-c")
            assert v.id == backed_up["id"]
    finally:
        net = (d / "net").read_text().strip()
        shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
        for line in shown.splitlines():
            f = line.split()
            if f[1].startswith("alkl") and f[3].startswith(net + "."):
                subprocess.run(["ip", "link", "del", f[1]])
