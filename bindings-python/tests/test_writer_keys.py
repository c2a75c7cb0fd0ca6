"""Write-only keys (format 3): a writer backs up, only the full key restores."""

import os
import stat
from pathlib import Path

import pytest

import alike

from conftest import write_image


def test_a_writer_backs_up_and_only_the_full_key_restores(tmp: Path) -> None:
    full = alike.Store.create(
        tmp / "store", passphrase="pw", cache_dir=tmp / "cache", insecure_fast_kdf=True, writer_keys=True
    )
    assert full.format_version == 3 and not full.write_only
    other = write_image(tmp / "other.img", 2 << 20, 1)
    full.backup("other", [tmp / "other.img"])
    full.add_writer_key(tmp / "w.key")
    assert stat.S_IMODE(os.stat(tmp / "w.key").st_mode) == 0o600
    with pytest.raises(alike.AlreadyExists):
        full.add_writer_key(tmp / "w.key")

    with alike.Store.open(tmp / "store", key_file=tmp / "w.key", cache_dir=tmp / "wcache") as w:
        assert w.write_only
        data = write_image(tmp / "d.img", 3 << 20, 2)
        v = w.backup("vm1", [tmp / "d.img"]).version
        with pytest.raises(alike.WriteOnlyKey) as e:
            w.restore("latest", tmp / "r.img", vm="other")
        assert "write-only key" in str(e.value) and e.value.kind == "write_only_key"
        with pytest.raises(alike.WriteOnlyKey):
            w.restore(v, tmp / "r.img")
        r = w.verify(full=True)
        assert not r.ok and not r.damaged and r.data_frames_not_opened > 0 and r.not_checked

    # The same key as bytes, as a processor gets it over its channel.
    with alike.Store.open(
        tmp / "store", key_file_contents=full.writer_key_file_bytes(), cache_dir=tmp / "wcache2"
    ) as w2:
        assert w2.write_only
        assert w2.backup("vm2", [tmp / "other.img"]).new_bytes == 0

    full.restore(v, tmp / "r.img")
    assert (tmp / "r.img").read_bytes() == data
    full.restore("latest", tmp / "o.img", vm="other")
    assert (tmp / "o.img").read_bytes() == other
    assert full.verify(full=True).ok
    full.close()


def test_a_store_without_writer_keys_refuses_to_make_one(tmp: Path, store: alike.Store) -> None:
    assert store.format_version == 2
    with pytest.raises(alike.InvalidArgument):
        store.add_writer_key(tmp / "w.key")
    assert not (tmp / "w.key").exists()
