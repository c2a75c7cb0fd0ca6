"""The services from Python: a configuration file's backup job run against the
XAPI simulator, its events delivered to a Python callback, its record read back."""

import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest

import alike

from test_xen import sim_url  # noqa: F401  (the simulator fixture)


def config(tmp: Path, url: str) -> Path:
    alike.Store.create(tmp / "store", passphrase="pw", cache_dir=tmp / "cache", insecure_fast_kdf=True).close()
    (tmp / "store.pass").write_text("pw\n")
    (tmp / "xapi.pass").write_text("alike\n")
    path = tmp / "alike.toml"
    path.write_text(
        f"""
[[store]]
name = "main"
path = "store"
cache_dir = "cache"
passphrase = {{ file = "store.pass" }}

[[pool]]
name = "demo"
kind = "xen"
url = "{url}"
user = "root"
password = {{ file = "xapi.pass" }}
template = "alike-processor"
addresses = ["10.99.0.10"]
ssh_key = "id_ed25519"

[[job]]
name = "nightly"
kind = "backup"
vms = ["web-01"]
store = "main"
pool = "demo"
options = {{ processor = false }}
schedule = "30 2 * * *"
timezone = "Europe/Berlin"
[job.chain]
verify = "quick"
"""
    )
    return path


def test_run_a_job_and_receive_its_events(tmp: Path, sim_url: str) -> None:  # noqa: F811
    services = alike.Services.open(config(tmp, sim_url), tmp / "services.redb")
    with pytest.raises(alike.Busy):
        alike.Services.open(tmp / "alike.toml", tmp / "services.redb")
    events: List[Dict[str, Any]] = []
    threads = set()

    def on_event(e: Dict[str, Any]) -> None:
        events.append(e)
        threads.add(threading.get_ident())

    sub = services.subscribe(on_event)
    [job] = services.jobs()
    assert job["spec"]["name"] == "nightly" and job["next_run"] is not None
    run = services.run_now("nightly")
    assert services.wait_idle(120)
    r = services.run(run)
    assert r["result"] == "success", r
    [vm] = r["vms"]
    assert vm["vm"] == "web-01" and vm["version"] and vm["read_bytes"] > 0
    assert [s["step"] for s in r["steps"]] == ["verify"]
    kinds = [e["type"] for e in events if e["type"] != "progress"]
    assert kinds == ["job_started", "vm_started", "vm_done", "step_done", "finished"], kinds
    assert all(e["run"] == run for e in events)
    assert threading.get_ident() not in threads, "events come from the run's thread"
    assert services.runs(job="nightly", result="success")[0]["id"] == run
    assert services.unsubscribe(sub) and not services.unsubscribe(sub)
    with pytest.raises(alike.InvalidArgument):
        services.put_job({"name": "bad", "kind": "backup", "vms": ["x"], "pool": "demo", "store": "nowhere"})
    services.stop()
