"""Progress reaches Python on the caller's thread; cancel tokens, callback errors and Ctrl-C stop cleanly."""

import os
import signal
import threading
from pathlib import Path
from typing import List

import pytest

import alike
from conftest import big_random_image, write_image


def test_progress_on_the_calling_thread(tmp: Path, store: alike.Store) -> None:
    img = tmp / "d.img"
    big_random_image(img, 64)
    seen: List[alike.Progress] = []
    threads = set()

    def cb(p: alike.Progress) -> None:
        seen.append(p)
        threads.add(threading.get_ident())

    store.backup(vm="x", disks=[img], progress=cb)
    assert threads == {threading.get_ident()}
    backup = [p for p in seen if p.phase == "backup"]
    assert backup, seen
    assert all(a.done <= b.done for a, b in zip(backup, backup[1:]))
    assert backup[-1].done == backup[-1].total == 64 << 20
    assert backup[-1].fraction == 1.0
    seen.clear()
    store.restore("latest", output=tmp / "o.img", progress=cb)
    assert seen[-1].phase == "restore" and seen[-1].done == seen[-1].total


def test_cancel_token_from_another_thread(tmp: Path, store: alike.Store) -> None:
    img = tmp / "d.img"
    big_random_image(img, 256)
    token = alike.CancelToken()
    assert not token.cancelled

    def cb(p: alike.Progress) -> None:
        if p.done > 0:
            threading.Thread(target=token.cancel).start()

    with pytest.raises(alike.Cancelled):
        store.backup(vm="x", disks=[img], progress=cb, cancel=token)
    assert token.cancelled
    assert store.versions() == []
    assert store.verify(full=True).ok


def test_callback_exception_cancels_and_propagates(tmp: Path, store: alike.Store) -> None:
    img = tmp / "d.img"
    big_random_image(img, 256)

    def cb(p: alike.Progress) -> None:
        if p.done > 0:
            raise ValueError("stop here")

    with pytest.raises(ValueError, match="stop here"):
        store.backup(vm="x", disks=[img], progress=cb)
    assert store.versions() == []
    # The store is usable afterwards.
    small = tmp / "s.img"
    write_image(small, 1 << 20, seed=1)
    store.backup(vm="x", disks=[small])
    assert len(store.versions()) == 1


def test_ctrl_c_stops_a_backup(tmp: Path, store: alike.Store) -> None:
    img = tmp / "d.img"
    big_random_image(img, 256)
    sent = []

    def cb(p: alike.Progress) -> None:
        if p.done > 0 and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        store.backup(vm="x", disks=[img], progress=cb)
    assert sent
    assert store.verify(full=True).ok
    # Unless the backup had already finished when the signal arrived, nothing was recorded.
    assert len(store.versions()) <= 1
