"""The reports' fields are the keys of the library's JSON reports (the same
``testdata/report-schema.json`` that the Rust and CLI tests pin), and the
old names still answer, with a DeprecationWarning."""

import json
from pathlib import Path
from typing import Any

import pytest

import alike
from conftest import write_image

SCHEMA = json.loads((Path(__file__).parents[2] / "testdata" / "report-schema.json").read_text())


def has_keys(obj: Any, keys: Any, what: str) -> None:
    for k, sub in keys.items():
        assert hasattr(obj, k), f"{what} has no {k!r}"
        v = getattr(obj, k)
        if isinstance(sub, dict) and not isinstance(v, dict):
            has_keys(v, sub, f"{what}.{k}")
        elif isinstance(sub, list) and sub and isinstance(sub[0], dict) and v and not isinstance(v[0], dict):
            has_keys(v[0], sub[0], f"{what}.{k}[0]")


def test_reports_carry_the_schema_keys(tmp: Path, store: alike.Store) -> None:
    write_image(tmp / "d.img", 2 << 20, 3)
    b = store.backup(vm="vm1", disks=[tmp / "d.img"])
    has_keys(b, SCHEMA["backup"], "BackupReport")
    has_keys(b.version, SCHEMA["version"], "Version")
    has_keys(store.restore(b.version, tmp / "out.img"), SCHEMA["restore"], "RestoreReport")
    has_keys(store.verify(full=True), SCHEMA["verify"], "VerifyReport")
    has_keys(store.stats(), SCHEMA["stats"], "Stats")
    has_keys(store.prune(keep_last=1, dry_run=True), SCHEMA["prune"], "PruneReport")
    has_keys(store.gc(dry_run=True), SCHEMA["gc"], "GcReport")
    with alike.Store.create(tmp / "vault", passphrase="v", cache_dir=tmp / "vc", insecure_fast_kdf=True) as v:
        has_keys(store.vault(v), SCHEMA["vault"], "VaultReport")


def test_old_names_are_deprecated_aliases(tmp: Path, store: alike.Store) -> None:
    write_image(tmp / "d.img", 1 << 20, 4)
    b = store.backup(vm="vm1", disks=[tmp / "d.img"])
    with pytest.warns(DeprecationWarning):
        assert b.elapsed_s == b.elapsed_seconds
    with pytest.warns(DeprecationWarning):
        assert b.version.vm_info == b.version.config
    r = store.restore(b.version, tmp / "out.img")
    with pytest.warns(DeprecationWarning):
        assert r.failed == r.failed_ranges == ()
    p = store.prune(keep_last=1, dry_run=True)
    with pytest.warns(DeprecationWarning):
        assert p.decisions == {v.vm: v.versions for v in p.vms}


def test_latest_needs_a_vm_when_the_store_holds_several(tmp: Path, store: alike.Store) -> None:
    write_image(tmp / "d.img", 1 << 20, 5)
    store.backup(vm="a", disks=[tmp / "d.img"])
    assert store.version("latest").vm == "a"
    store.backup(vm="b", disks=[tmp / "d.img"])
    with pytest.raises(alike.InvalidArgument, match="latest"):
        store.version("latest")
    assert store.version("latest", vm="b").vm == "b"
