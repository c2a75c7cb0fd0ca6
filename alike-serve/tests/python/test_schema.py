"""schemathesis against the daemon's OpenAPI description (docs/openapi.json):
generated requests to every operation (the event stream aside: it never
ends), with the token; no answer may be a server error, and every answer must
match the description (status codes, content types, schemas)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TOKEN, make_daemon

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed")
def test_api_conforms_to_its_description(tmp_path: Path) -> None:
    d, sim = make_daemon(tmp_path)
    try:
        r = subprocess.run(
            [
                str(SCHEMATHESIS), "run", str(ROOT / "docs/openapi.json"),
                "--url", d.url,
                "-H", f"Authorization: Bearer {TOKEN}",
                "--exclude-path", "/api/events",
                "--max-examples", os.environ.get("SCHEMATHESIS_EXAMPLES", "25"),
                "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--no-color",
            ],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    finally:
        d.stop()
        sim.stop()
        shutil.rmtree(tmp_path / "sim", ignore_errors=True)
