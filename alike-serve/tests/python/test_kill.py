"""Killing `alike serve` (SIGKILL) in the middle of a run, at several
moments: the next start finds the run and records it `interrupted`, the store
verifies whole, a second daemon on the same database is refused while one
runs, and the restarted daemon runs the job again to success."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import ALIKE, Daemon, alike, env, make_daemon


def wait(cond, timeout: float = 60.0, step: float = 0.01):  # type: ignore[no-untyped-def]
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out")


def runs(d: Daemon) -> list[dict]:  # type: ignore[type-arg]
    status, body, _ = d.get("/api/runs?job=nightly")
    assert status == 200, body
    return json.loads(body)


def test_killed_mid_run(tmp_path: Path) -> None:
    d, sim = make_daemon(tmp_path)
    try:
        # A second daemon on the same database is refused, naming the holder.
        r = subprocess.run(
            [str(ALIKE), "serve", "--config", str(d.config), "--listen", "127.0.0.1:0"],
            env=env(), capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 1 and "in use by another alike serve" in r.stderr, r.stderr

        # Moments: as soon as the run is asked for; once a disk reports
        # progress; once the first VM is done (the job covers two VMs).
        moments = ["asked", "progress", "first-vm"]
        seen: list[str] = []
        for m in moments:
            status, body = d.post("/api/jobs/nightly/run")
            assert status == 200, body
            run = json.loads(body)["run"]
            if m == "progress":
                wait(lambda: any(x["id"] == int(run) and x["result"] == "running" for x in runs(d)))
            elif m == "first-vm":
                wait(lambda: any(x["id"] == int(run) and x["vms"] for x in runs(d)))
            d.kill()
            d.start()
            rec = next(x for x in runs(d) if x["id"] == int(run))
            seen.append(rec["result"])
            # A run killed before it ended reads interrupted; one that
            # finished first keeps its result. Never "running" after a restart.
            assert rec["result"] in ("interrupted", "success"), rec
            if rec["result"] == "interrupted":
                assert rec["ended"] is not None
        print("results after each kill:", dict(zip(moments, seen)))
        assert "interrupted" in seen, seen

        # The store is consistent: a full verification finds nothing damaged.
        store = str(tmp_path / "state/store")
        alike("--store", store, "--cache-dir", str(tmp_path / "cli-cache"), "verify", "--full")

        # The restarted daemon still has its job, on its schedule (the next
        # 02:30 in Berlin), and runs it to the end.
        status, body, _ = d.get("/api/jobs")
        assert status == 200, body
        nightly = next(j for j in json.loads(body) if j["name"] == "nightly")
        assert nightly["schedule"] == "30 2 * * *" and nightly["timezone"] == "Europe/Berlin"
        assert nightly["next_run"] is not None, nightly
        status, body = d.post("/api/jobs/nightly/run")
        assert status == 200, body
        run = int(json.loads(body)["run"])
        done = wait(lambda: next((x for x in runs(d) if x["id"] == run and x["result"] != "running" and x["result"] != "queued"), None), 120)
        assert done["result"] == "success", done
        assert [v["vm"] for v in done["vms"]] == ["web-01", "db-01"]

        # /metrics, through the reference parser: the interrupted runs count
        # as failures, and each VM has its last good backup time.
        status, body, _ = d.get("/metrics", token=None)
        assert status == 200
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        failures = [s for s in fams["alike_job_failures"].samples if s.labels == {"job": "nightly"}]
        assert failures and failures[0].value == seen.count("interrupted"), failures
        ok = {s.labels["vm"]: s.value for s in fams["alike_vm_last_success_timestamp_seconds"].samples if s.labels["job"] == "nightly"}
        assert set(ok) == {"web-01", "db-01"} and min(ok.values()) > time.time() - 600, ok
        results = [s.labels["result"] for s in fams["alike_job_last_result"].samples if s.labels["job"] == "nightly"]
        assert results == ["success"], results
    finally:
        d.stop()
        sim.stop()
