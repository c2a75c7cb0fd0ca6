"""`alike serve` end to end, as real processes: credentials on every /api/
path, /metrics read by the reference OpenMetrics parser, and the Manager page
in headless Chromium (Playwright with the system Chromium): log in, create a
job, run it against the XAPI simulator and watch it finish, find it in the
history, restore a disk of the version it made, read the store chart.
Screenshots: target/serve-browser/*.png."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import PASSWORD, SHOTS, TOKEN, Daemon, alike

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def backed_up(daemon: Daemon) -> str:
    """One version of web-01, made by the CLI over the simulator (the store is shared)."""
    out = alike(
        "--store", str(daemon.base / "state/store"), "--cache-dir", str(daemon.base / "cli-cache"),
        "xen", "--url", daemon.sim_url, "backup", "--vm", "web-01", "--json",
    )
    return str(json.loads(out)["id"])


API_PATHS = [
    "/api", "/api/", "/api/openapi.json", "/api/session", "/api/jobs", "/api/jobs/nightly/run",
    "/api/runs", "/api/stores", "/api/vms", "/api/destinations", "/api/restore", "/api/events",
    "/api/nothing/here", "/api/%2e%2e/metrics",
]


def test_every_api_path_needs_a_credential(daemon: Daemon) -> None:
    for p in API_PATHS:
        for token in (None, TOKEN[:-1] + "x"):
            status, body, headers = daemon.get(p, token=token)
            assert status == 401, (p, token, body)
            assert json.loads(body)["status"] == 401
    status, body, _ = daemon.get("/api/openapi.json")
    assert status == 200
    spec = json.loads(body)
    # The served description is the one kept in docs/.
    root = Path(__file__).resolve().parents[3]
    assert spec == json.loads((root / "docs/openapi.json").read_text())


def test_metrics_parse_as_openmetrics(daemon: Daemon, backed_up: str) -> None:
    # The example configuration makes /metrics public.
    status, body, headers = daemon.get("/metrics", token=None)
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    versions = {tuple(sorted(s.labels.items())): s.value for s in families["alike_store_versions"].samples}
    assert versions[(("store", "main"),)] == 1
    last = [s for s in families["alike_vm_last_version_timestamp_seconds"].samples if s.labels["vm"] == "web-01"]
    assert len(last) == 1 and last[0].value > 1.7e9
    logical = families["alike_store_logical_bytes"].samples[0].value
    assert logical > 0


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian package chromium)")
def test_manager_in_a_browser(daemon: Daemon, backed_up: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    restores = daemon.base / "state/restores"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(daemon.url + "/")
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        # A wrong password keeps the form.
        page.get_by_label("User name").fill("admin")
        page.get_by_label("Password").fill("wrong")
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#status")).to_contain_text("Login failed")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("navigation", name="Sections")).to_be_visible()
        # The configuration's job is listed; a new one is made through the form.
        expect(page.locator('tr[data-job="nightly"]')).to_be_visible()
        page.get_by_text("New job").click()
        form = page.locator("#job-form")
        form.get_by_label("Name", exact=True).fill("web-now")
        form.get_by_label("Kind", exact=True).select_option("backup")
        form.get_by_label("Pool", exact=True).fill("demo")
        form.get_by_label("VMs", exact=True).fill("web-01")
        form.get_by_label("Store", exact=True).select_option("main")
        page.get_by_role("button", name="Save job").click()
        row = page.locator('tr[data-job="web-now"]')
        expect(row).to_be_visible()
        page.screenshot(path=str(SHOTS / "01-jobs.png"), full_page=True)

        # Run it against the simulator and watch it finish in the live view.
        row.get_by_role("button", name="Run web-now now").click()
        expect(page.get_by_role("heading", name="Live")).to_be_visible()
        run_box = page.locator(".run", has_text="Job web-now")
        expect(run_box.locator("[data-result]")).to_have_attribute("data-result", "success", timeout=120_000)
        assert run_box.locator("progress").count() >= 1  # per-disk bars from the progress events
        page.screenshot(path=str(SHOTS / "02-live-backup.png"), full_page=True)

        # History, filtered by job.
        page.get_by_role("link", name="History").click()
        page.locator("#history-filter").get_by_label("Job", exact=True).fill("web-now")
        page.get_by_role("button", name="Filter").click()
        hist = page.locator("#history-body tr")
        expect(hist).to_have_count(1)
        expect(hist.first).to_contain_text("success")
        page.screenshot(path=str(SHOTS / "03-history.png"), full_page=True)

        # VMs and versions: the job's version, restored through the dialog.
        runs = json.loads(daemon.get("/api/runs?job=web-now")[1])
        made = runs[0]["vms"][0]["version"]
        page.get_by_role("link", name="VMs").click()
        row = page.locator(f'tr[data-version="{made}"]')
        expect(row).to_be_visible()
        expect(page.locator(f'tr[data-version="{backed_up}"]')).to_be_visible()
        page.screenshot(path=str(SHOTS / "04-vms.png"), full_page=True)
        row.get_by_role("button", name="Restore a disk").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        dialog.get_by_label("Disk").select_option("1")
        dialog.get_by_label("Destination").select_option("restores")
        dialog.get_by_label("File name").fill("web-01-data.img")
        page.screenshot(path=str(SHOTS / "05-restore-dialog.png"), full_page=True)
        dialog.get_by_role("button", name="Restore", exact=True).click()
        expect(page.locator("#status")).to_contain_text("Restored web-01 disk 1", timeout=60_000)

        # The whole VM, restored onto the pool as a new VM.
        row.get_by_role("button", name="Restore VM").click()
        vmd = page.locator("#vm-dialog")
        expect(vmd).to_be_visible()
        vmd.get_by_label("Pool").select_option("demo")
        vmd.get_by_label("New VM's name").fill("web-01-restored")
        page.screenshot(path=str(SHOTS / "05b-restore-vm-dialog.png"), full_page=True)
        vmd.get_by_role("button", name="Restore VM").click()
        expect(page.locator("#status")).to_contain_text("Restored VM web-01 to pool demo", timeout=120_000)
        listed = json.loads(alike("xen", "--url", daemon.sim_url, "vms", "--json"))
        assert "web-01-restored" in [v["name"] for v in listed], listed

        # The live view saw the restore's progress too.
        page.get_by_role("link", name="Live").click()
        expect(page.locator(".run", has_text="Restore to web-01-data.img").locator("[data-result=success]")).to_be_visible()

        # Store figures and the chart of stored versus logical bytes.
        page.get_by_role("link", name="Store").click()
        chart = page.get_by_role("img", name="Cumulative logical and stored bytes of store main")
        expect(chart).to_be_visible()
        assert chart.locator("path").count() == 2
        assert chart.locator("circle").count() == 4  # two versions: two points on each line
        page.screenshot(path=str(SHOTS / "06-store.png"), full_page=True)
        assert errors == [], errors
        browser.close()

    # The file the page restored is the disk the CLI restores.
    oracle = daemon.base / "oracle.img"
    alike(
        "--store", str(daemon.base / "state/store"), "--cache-dir", str(daemon.base / "cli-cache"),
        "restore", made, "--disk", "1", "-o", str(oracle),
    )
    assert (restores / "web-01-data.img").read_bytes() == oracle.read_bytes()
    assert oracle.stat().st_size > 0
