"""alike: an embeddable VM backup engine on a block-level deduplicated, encrypted store.

A thin, typed layer over the native module ``alike._native`` (Rust, pyo3)::

    import alike

    with alike.Store.create("/backups/store", passphrase="s3cret") as store:
        report = store.backup(vm="web-01", disks=["disk0.img"])
        store.restore(report.version, output="restored.img")

Long operations release the GIL, call ``progress(Progress)`` on the calling
thread, stop cleanly on Ctrl-C (then raise ``KeyboardInterrupt``) and accept a
``CancelToken`` that another thread may cancel.
"""

# Only the API's names are public: what the implementation imports is bound
# under a leading underscore, so that `dir(alike)` lists `__all__`'s names
# (and the `_native` module) and nothing else (tests/test_namespace.py).
from __future__ import annotations as _annotations

import datetime as _dt
import os as _os
from dataclasses import dataclass as _dataclass
from typing import Any as _Any
from typing import Callable as _Callable
from typing import Dict as _Dict
from typing import List as _List
from typing import Mapping as _Mapping
from typing import Optional as _Optional
from typing import Sequence as _Sequence
from typing import Tuple as _Tuple
from typing import Union as _Union

from . import _native
from ._native import (
    AlreadyExists,
    BadImage,
    Busy,
    CancelToken,
    Cancelled,
    Corruption,
    Error,
    InvalidArgument,
    IoError,
    NotAStore,
    NotFound,
    PassphraseRequired,
    UnsupportedVersion,
    WrongPassphrase,
)

__version__: str = _native.__version__

#: Another name for :class:`Busy` (a lock held by another process).
Locked = Busy

#: A filesystem path: a ``str`` or an ``os.PathLike`` (``pathlib.Path``).
PathLike = _Union[str, "_os.PathLike[str]"]

__all__ = [
    "AlreadyExists",
    "BackupReport",
    "BadImage",
    "Busy",
    "CancelToken",
    "Cancelled",
    "Corruption",
    "Damage",
    "Disk",
    "Error",
    "GcReport",
    "InvalidArgument",
    "IoError",
    "Locked",
    "NotAStore",
    "NotFound",
    "PassphraseRequired",
    "PathLike",
    "Progress",
    "ProgressCallback",
    "PruneDecision",
    "PruneReport",
    "RestoreReport",
    "Stats",
    "Store",
    "UnsupportedVersion",
    "VaultReport",
    "VerifyReport",
    "Version",
    "WrongPassphrase",
    "XenBackupReport",
    "XenDisk",
    "XenPool",
    "__version__",
]


@_dataclass(frozen=True)
class Progress:
    """How far a long operation is: ``phase`` is one of scanning, backup,
    restore, verify, index, gc; ``done``/``total`` count bytes (for index and
    gc, the units of that phase)."""

    phase: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        """``done / total`` (1.0 when there is nothing to do)."""
        return self.done / self.total if self.total else 1.0


#: What ``progress=`` takes: called with a :class:`Progress`; its return value is ignored.
ProgressCallback = _Callable[[Progress], _Any]


@_dataclass(frozen=True)
class Disk:
    """One disk of a version, with what its backup did."""

    position: int
    label: str
    size: int
    data_bytes: int
    read_bytes: int
    new_bytes: int
    new_stored_bytes: int
    incremental: bool
    fallback_reason: _Optional[str]

    @classmethod
    def _from(cls, d: _Mapping[str, _Any]) -> "Disk":
        return cls(**{f: d[f] for f in cls.__dataclass_fields__})


@_dataclass(frozen=True)
class Version:
    """A restore point of one VM."""

    id: str
    vm: str
    time_ms: int
    disks: _Tuple[Disk, ...]
    #: The VM's recorded configuration (name, uuid, hypervisor, vCPUs, memory, NICs…).
    vm_info: _Dict[str, _Any]
    host: str
    parent: _Optional[str]

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the id."""
        return self.id[:12]

    @property
    def time(self) -> _dt.datetime:
        """Creation time (UTC)."""
        return _dt.datetime.fromtimestamp(self.time_ms / 1000, tz=_dt.timezone.utc)

    @classmethod
    def _from(cls, v: _Mapping[str, _Any]) -> "Version":
        return cls(
            id=v["id"],
            vm=v["vm"],
            time_ms=v["time_ms"],
            disks=tuple(Disk._from(d) for d in v["disks"]),
            vm_info=dict(v["vm_info"]),
            host=v["host"],
            parent=v["parent"],
        )


@_dataclass(frozen=True)
class BackupReport:
    """What a backup did."""

    version: Version
    read_bytes: int
    new_bytes: int
    new_stored_bytes: int
    elapsed_s: float


@_dataclass(frozen=True)
class RestoreReport:
    """What a restore did. ``failed`` lists ``(start, end)`` byte ranges a
    partial restore could not read (they hold zeroes); empty means whole."""

    size: int
    data_bytes: int
    hole_bytes: int
    failed: _Tuple[_Tuple[int, int], ...]
    first_error: _Optional[str]


@_dataclass(frozen=True)
class Damage:
    """One damaged object found by verify, and the versions it breaks."""

    object: str
    chunk: _Optional[str]
    reason: str
    affects: _Tuple[_Dict[str, _Any], ...]


@_dataclass(frozen=True)
class VerifyReport:
    """The result of a verification; ``ok`` when nothing is damaged."""

    versions: int
    chunks: int
    packs_read: int
    bytes_read: int
    damaged: _Tuple[Damage, ...]

    @property
    def ok(self) -> bool:
        return not self.damaged


@_dataclass(frozen=True)
class PruneDecision:
    """Whether one version stays, and which rules keep it."""

    id: str
    time_ms: int
    keep: bool
    reasons: _Tuple[str, ...]


@_dataclass(frozen=True)
class PruneReport:
    """Per VM the decisions (newest first), and the versions removed."""

    decisions: _Dict[str, _Tuple[PruneDecision, ...]]
    removed: _Tuple[str, ...]


@_dataclass(frozen=True)
class GcReport:
    """What garbage collection found and did."""

    versions: int
    live_chunks: int
    dead_chunks: int
    packs: int
    condemned: int
    repacked: int
    deleted: int
    bytes_freed: int
    rescued: int
    deferred: int


@_dataclass(frozen=True)
class VaultReport:
    """What a vault run did: ``copied`` pairs (source id, vault id), oldest first."""

    copied: _Tuple[_Tuple[str, str], ...]
    already: _Tuple[str, ...]
    read_bytes: int
    new_bytes: int
    sent_bytes: int
    pruned: _Tuple[str, ...]
    elapsed_s: float


@_dataclass(frozen=True)
class XenDisk:
    """How one disk of a XenServer VM was backed up."""

    position: int
    vdi_uuid: str
    snapshot_vdi_uuid: str
    size: int
    transport: str
    incremental: bool
    #: Why it was read whole although an earlier version existed (said loudly, never silently).
    fallback_reason: _Optional[str]
    read_bytes: int
    wire_bytes: int


@_dataclass(frozen=True)
class XenBackupReport:
    """What a XenServer VM backup did."""

    version: Version
    read_bytes: int
    new_bytes: int
    new_stored_bytes: int
    elapsed_s: float
    vm_uuid: str
    snapshot_uuid: str
    consistency: str
    disks: _Tuple[XenDisk, ...]
    warnings: _Tuple[str, ...]


class XenPool:
    """A logged-in session with a XenServer/XCP-ng pool (XAPI)."""

    def __init__(self, native: "_native.NativeXenPool") -> None:
        self._n = native

    @classmethod
    def connect(cls, url: str, user: str, password: str, *, fingerprint: _Optional[str] = None) -> "XenPool":
        """Logs in to ``url`` (``https://pool-master``); ``fingerprint`` (SHA-256,
        hex) pins a self-signed pool certificate."""
        return cls(_native.NativeXenPool.connect(url, user, password, fingerprint))


@_dataclass(frozen=True)
class Stats:
    """Figures about a store."""

    versions: int
    logical_bytes: int
    unique_bytes: int
    blobs: int
    stored_bytes: int
    pack_bytes: int
    packs: int


def _fields(cls: _Any, d: _Mapping[str, _Any]) -> _Dict[str, _Any]:
    return {f: d[f] for f in cls.__dataclass_fields__ if f in d}


def _progress(cb: _Optional[ProgressCallback]) -> _Optional[_Callable[[str, int, int], _Any]]:
    if cb is None:
        return None
    return lambda phase, done, total: cb(Progress(phase, done, total))


def _spec(version: _Union[Version, str]) -> str:
    return version.id if isinstance(version, Version) else version


class Store:
    """An open store. Use :meth:`create` or :meth:`open`; use it as a context
    manager (or call :meth:`close`) to release it and its cache lock."""

    def __init__(self, native: "_native.NativeStore") -> None:
        self._n = native

    @classmethod
    def create(
        cls,
        path: PathLike,
        passphrase: _Optional[str] = None,
        *,
        key_file: _Optional[PathLike] = None,
        encrypt: bool = True,
        cache_dir: _Optional[PathLike] = None,
        block_size: _Optional[int] = None,
        compression_level: _Optional[int] = None,
        insecure_fast_kdf: bool = False,
    ) -> "Store":
        """Creates a store at ``path``, a directory or a URL such as
        ``s3://bucket/prefix`` (S3 settings from the ``AWS_*`` environment),
        encrypted unless ``encrypt=False``. ``insecure_fast_kdf`` is for tests only."""
        return cls(
            _native.NativeStore.create(
                _os.fspath(path),
                passphrase,
                None if key_file is None else _os.fspath(key_file),
                encrypt,
                None if cache_dir is None else _os.fspath(cache_dir),
                block_size,
                compression_level,
                insecure_fast_kdf,
            )
        )

    @classmethod
    def open(
        cls,
        path: PathLike,
        passphrase: _Optional[str] = None,
        *,
        key_file: _Optional[PathLike] = None,
        cache_dir: _Optional[PathLike] = None,
    ) -> "Store":
        """Opens the store at ``path`` (a directory or URL)."""
        return cls(
            _native.NativeStore.open(
                _os.fspath(path),
                passphrase,
                None if key_file is None else _os.fspath(key_file),
                None if cache_dir is None else _os.fspath(cache_dir),
            )
        )

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Releases the store; further calls raise :class:`InvalidArgument`."""
        self._n.close()

    @property
    def closed(self) -> bool:
        return self._n.closed

    @property
    def id(self) -> str:
        """The store's id (hex)."""
        return str(self._n.info()["id"])

    @property
    def location(self) -> str:
        return str(self._n.info()["location"])

    @property
    def encrypted(self) -> bool:
        return bool(self._n.info()["encrypted"])

    @property
    def block_size(self) -> int:
        return int(self._n.info()["block_size"])

    def backup(
        self,
        vm: str,
        disks: _Sequence[PathLike],
        *,
        parent: _Optional[_Union[Version, str]] = "latest",
        format: _Optional[str] = None,
        threads: int = 0,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> BackupReport:
        """Backs up disk images — raw files or block devices, VHD, VHDX/AVHDX
        (``format`` "raw", "vhd" or "vhdx"; detected when ``None``) — as the
        disks of ``vm``; only allocated data is read. ``parent`` is the
        version to build on: ``"latest"`` (default), a version or id, or
        ``None`` for a full read (still deduplicated)."""
        r = self._n.backup(
            vm,
            [_os.fspath(d) for d in disks],
            None if parent is None else _spec(parent),
            parent is None,
            format,
            threads,
            _progress(progress),
            cancel,
        )
        return BackupReport(
            version=Version._from(r["version"]),
            read_bytes=r["read_bytes"],
            new_bytes=r["new_bytes"],
            new_stored_bytes=r["new_stored_bytes"],
            elapsed_s=r["elapsed_s"],
        )

    def versions(self, vm: _Optional[str] = None) -> _List[Version]:
        """All versions, oldest first (only ``vm``'s when given)."""
        return [Version._from(v) for v in self._n.versions(vm)]

    def version(self, spec: str = "latest", vm: _Optional[str] = None) -> Version:
        """A version by id, unique id prefix, or ``"latest"`` (of ``vm``)."""
        return Version._from(self._n.version(spec, vm))

    def restore(
        self,
        version: _Union[Version, str],
        output: PathLike,
        *,
        disk: int = 0,
        vm: _Optional[str] = None,
        format: str = "raw",
        partial: bool = False,
        threads: int = 0,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> RestoreReport:
        """Writes disk ``disk`` of ``version`` (a Version, id, prefix or
        ``"latest"`` with ``vm``) to the file ``output``, atomically, as a
        sparse raw image or (``format`` "vhd"/"vhdx") a dynamic VHD/VHDX."""
        r = self._n.restore(
            _spec(version), _os.fspath(output), disk, vm, format, partial, threads, _progress(progress), cancel
        )
        return RestoreReport(
            size=r["size"],
            data_bytes=r["data_bytes"],
            hole_bytes=r["hole_bytes"],
            failed=tuple((int(a), int(b)) for a, b in r["failed"]),
            first_error=r["first_error"],
        )

    def verify(
        self,
        *,
        full: bool = False,
        vm: _Optional[str] = None,
        version: _Optional[_Union[Version, str]] = None,
        threads: int = 0,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> VerifyReport:
        """Checks the store: structure and index by default, every byte with ``full``."""
        r = self._n.verify(
            full, vm, None if version is None else _spec(version), threads, _progress(progress), cancel
        )
        return VerifyReport(
            versions=r["versions"],
            chunks=r["chunks"],
            packs_read=r["packs_read"],
            bytes_read=r["bytes_read"],
            damaged=tuple(
                Damage(d["object"], d["chunk"], d["reason"], tuple(d["affects"])) for d in r["damaged"]
            ),
        )

    def prune(
        self,
        *,
        vm: _Optional[str] = None,
        keep_last: int = 0,
        keep_hourly: int = 0,
        keep_daily: int = 0,
        keep_weekly: int = 0,
        keep_monthly: int = 0,
        keep_yearly: int = 0,
        dry_run: bool = False,
    ) -> PruneReport:
        """Removes the versions no rule keeps (pinned versions always stay)."""
        r = self._n.prune(vm, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, dry_run)
        return PruneReport(
            decisions={
                name: tuple(PruneDecision(x["id"], x["time_ms"], x["keep"], tuple(x["reasons"])) for x in ds)
                for name, ds in r["decisions"]
            },
            removed=tuple(r["removed"]),
        )

    def forget(self, version: _Union[Version, str]) -> None:
        """Removes one version; its data is freed by the next :meth:`gc`."""
        self._n.forget(_spec(version))

    def pin(self, version: _Union[Version, str]) -> None:
        """Protects a version from prune and forget."""
        self._n.pin(_spec(version))

    def unpin(self, version: _Union[Version, str]) -> None:
        self._n.unpin(_spec(version))

    def pinned(self) -> _List[str]:
        """Ids of pinned versions, sorted."""
        return list(self._n.pinned())

    def gc(
        self,
        *,
        dry_run: bool = False,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> GcReport:
        """Frees the space of data no version references."""
        return GcReport(**_fields(GcReport, self._n.gc(dry_run, _progress(progress), cancel)))

    def vault(
        self,
        to: "Store",
        *,
        vm: _Optional[str] = None,
        last: _Optional[int] = None,
        keep_last: int = 0,
        keep_daily: int = 0,
        keep_weekly: int = 0,
        keep_monthly: int = 0,
        keep_yearly: int = 0,
        bandwidth_limit: _Optional[int] = None,
        threads: int = 0,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> VaultReport:
        """Copies versions (all, ``vm``'s, or the newest ``last`` of each VM)
        to the store ``to`` — only what it lacks, sealed with its own key —
        then applies the ``keep_*`` rules there as the vault's own retention."""
        r = self._n.vault(
            to._n, vm, last, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly,
            bandwidth_limit, threads, _progress(progress), cancel,
        )
        return VaultReport(
            copied=tuple((a, b) for a, b in r["copied"]),
            already=tuple(r["already"]),
            read_bytes=r["read_bytes"],
            new_bytes=r["new_bytes"],
            sent_bytes=r["sent_bytes"],
            pruned=tuple(r["pruned"]),
            elapsed_s=r["elapsed_s"],
        )

    def backup_xen(
        self,
        pool: XenPool,
        vm: str,
        *,
        full: bool = False,
        quiesce: bool = False,
        threads: int = 0,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> XenBackupReport:
        """Backs up the VM ``vm`` (name or uuid) of ``pool``: a snapshot, then
        only the blocks changed since the last backup (CBT), or everything,
        deduplicated, when ``full`` or when the change chain is broken — which
        each disk's ``fallback_reason`` then says."""
        r = self._n.backup_xen(pool._n, vm, full, quiesce, threads, _progress(progress), cancel)
        return XenBackupReport(
            version=Version._from(r["version"]),
            read_bytes=r["read_bytes"],
            new_bytes=r["new_bytes"],
            new_stored_bytes=r["new_stored_bytes"],
            elapsed_s=r["elapsed_s"],
            vm_uuid=r["vm_uuid"],
            snapshot_uuid=r["snapshot_uuid"],
            consistency=r["consistency"],
            disks=tuple(XenDisk(**_fields(XenDisk, d)) for d in r["disks"]),
            warnings=tuple(r["warnings"]),
        )

    def restore_xen_vm(
        self,
        version: _Union[Version, str],
        pool: XenPool,
        sr: str,
        *,
        network: _Optional[str] = None,
        vm: _Optional[str] = None,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> _Dict[str, _Any]:
        """Recreates ``version`` as a new VM on ``pool`` (its recorded
        configuration, disks uploaded to the storage repository ``sr``, NICs on
        ``network``); returns the new VM's ``vm_uuid``, ``name`` and ``disks``."""
        return dict(self._n.restore_xen_vm(_spec(version), pool._n, sr, network, vm, _progress(progress), cancel))

    def stats(self) -> Stats:
        return Stats(**_fields(Stats, self._n.stats()))
