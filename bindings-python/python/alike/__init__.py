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
from typing import NamedTuple as _NamedTuple
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
    WriteOnlyKey,
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
    "ExtractFailure",
    "ExtractReport",
    "FileEntry",
    "GcReport",
    "InvalidArgument",
    "IoError",
    "Listing",
    "Locked",
    "NbdExport",
    "NbdReport",
    "NbdServer",
    "NotAStore",
    "NotFound",
    "PassphraseRequired",
    "PathLike",
    "Progress",
    "ProgressCallback",
    "PruneDecision",
    "PruneReport",
    "PruneVm",
    "Replica",
    "ReplicaDiskProgress",
    "ReplicaExportReport",
    "ReplicaPoint",
    "ReplicaPointDisk",
    "ReplicaRunStats",
    "ReplicateReport",
    "ReplicationRecord",
    "RestoreReport",
    "Services",
    "Stats",
    "Store",
    "UnsupportedVersion",
    "VaultCopy",
    "VaultReport",
    "VerifyReport",
    "Version",
    "Volume",
    "WriteOnlyKey",
    "WrongPassphrase",
    "HyperVBackupReport",
    "HyperVDisk",
    "HyperVHost",
    "XenBackupReport",
    "XenDisk",
    "XenPool",
    "XenReplica",
    "__version__",
    "load_config",
    "run_jobs",
]


def load_config(config: PathLike) -> _Dict[str, _Any]:
    """Checks the configuration file ``config`` (``docs/config.md``: stores,
    pools, jobs) and returns it as a dict. Secrets in it are references
    (``{"file": …}`` or ``{"env": …}``), so nothing secret is returned.
    Raises :class:`InvalidArgument` naming the file and the key at fault."""
    return _native.load_config(_os.fspath(config))


def run_jobs(
    config: PathLike, jobs: _Sequence[str], *, cancel: _Optional[CancelToken] = None
) -> _Dict[str, _Any]:
    """Runs the jobs ``jobs`` of the configuration file ``config`` at once,
    each on a processor made for it in its pool (a job waits while its pool
    has no free address), after removing what a killed earlier run left.

    Returns ``{"swept": [...], "jobs": [...]}``: per job its ``job`` id and
    either ``result`` (``address``, ``ready_after_seconds``,
    ``queued_seconds``, ``elapsed_seconds``, and ``vms``: each VM's backup
    report) or ``error`` (``message``, ``kind``, ``code``) — the lines
    ``alike job run --json`` prints. Raises only when nothing could run (a bad
    file, an unknown job)."""
    return _native.run_jobs(_os.fspath(config), list(jobs), cancel)


def _deprecated(old: str, new: str) -> None:
    import warnings as _warnings

    _warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)


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
    #: The source's change token at backup (hex), when it gave one.
    change_token: _Optional[str] = None
    #: How the disk was cut: ``cdc:MIN/AVG/MAX`` (KiB) or ``fixed:KIB``.
    chunking: str = ""

    @classmethod
    def _from(cls, d: _Mapping[str, _Any]) -> "Disk":
        return cls(**_fields(cls, d))


@_dataclass(frozen=True)
class Version:
    """A restore point of one VM."""

    id: str
    vm: str
    time_ms: int
    disks: _Tuple[Disk, ...]
    #: The VM's recorded configuration (name, uuid, hypervisor, vCPUs, memory, NICs…).
    config: _Dict[str, _Any]
    host: _Optional[str]
    parent: _Optional[str]

    @property
    def vm_info(self) -> _Dict[str, _Any]:
        """Deprecated alias of :attr:`config`."""
        _deprecated("Version.vm_info", "config")
        return self.config

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
            config=dict(v["config"]),
            host=v["host"],
            parent=v["parent"],
        )


@_dataclass(frozen=True)
class BackupReport:
    """What a backup did: the fields of ``alike backup --json``, plus ``version``."""

    version: Version
    id: str
    vm: str
    time: str
    read_bytes: int
    new_bytes: int
    new_stored_bytes: int
    elapsed_seconds: float
    disks: _Tuple[Disk, ...]

    @property
    def elapsed_s(self) -> float:
        """Deprecated alias of :attr:`elapsed_seconds`."""
        _deprecated("BackupReport.elapsed_s", "elapsed_seconds")
        return self.elapsed_seconds


@_dataclass(frozen=True)
class RestoreReport:
    """What a restore did. ``failed_ranges`` lists ``(start, end)`` byte ranges a
    partial restore could not read (they hold zeroes); empty means whole."""

    size: int
    data_bytes: int
    hole_bytes: int
    failed_ranges: _Tuple[_Tuple[int, int], ...]
    first_error: _Optional[str]
    elapsed_seconds: float

    @property
    def failed(self) -> _Tuple[_Tuple[int, int], ...]:
        """Deprecated alias of :attr:`failed_ranges`."""
        _deprecated("RestoreReport.failed", "failed_ranges")
        return self.failed_ranges


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

    #: True when nothing is damaged.
    ok: bool
    #: ``quick`` or ``full``.
    depth: str
    versions: int
    chunks: int
    packs_read: int
    bytes_read: int
    damaged: _Tuple[Damage, ...]
    #: Data frames not opened: the store was opened with a write-only key.
    data_frames_not_opened: int = 0
    #: What was not checked and why (``ok`` is then false); ``None`` when all was.
    not_checked: _Optional[str] = None


@_dataclass(frozen=True)
class PruneDecision:
    """Whether one version stays, and which rules keep it."""

    id: str
    time_ms: int
    keep: bool
    reasons: _Tuple[str, ...]


@_dataclass(frozen=True)
class PruneVm:
    """The decisions for one VM's versions, newest first."""

    vm: str
    versions: _Tuple[PruneDecision, ...]


@_dataclass(frozen=True)
class PruneReport:
    """Per VM the decisions (newest first), and the versions removed."""

    dry_run: bool
    removed: _Tuple[str, ...]
    vms: _Tuple[PruneVm, ...]

    @property
    def decisions(self) -> _Dict[str, _Tuple[PruneDecision, ...]]:
        """Deprecated: the decisions by VM name (use :attr:`vms`)."""
        _deprecated("PruneReport.decisions", "vms")
        return {v.vm: v.versions for v in self.vms}


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
    #: Packs of interrupted writers adopted into the index.
    adopted: int = 0
    #: Spool files of writers that are gone, removed.
    spool_files_removed: int = 0
    #: Damaged version manifests (or versions whose maps cannot be read): while any exists, gc deletes nothing.
    damaged_versions: _Tuple[str, ...] = ()
    #: Packs the index listed but the store no longer held, dropped from the index.
    lost_packs: _Tuple[str, ...] = ()


class VaultCopy(_NamedTuple):
    """A version copied to a vault: ``(source, vault)`` ids."""

    source: str
    vault: str


@_dataclass(frozen=True)
class VaultReport:
    """What a vault run did: ``copied`` pairs (source id, vault id), oldest first."""

    vault: str
    copied: _Tuple[VaultCopy, ...]
    already: _Tuple[str, ...]
    read_bytes: int
    new_bytes: int
    sent_bytes: int
    pruned: _Tuple[str, ...]
    elapsed_seconds: float

    @property
    def elapsed_s(self) -> float:
        """Deprecated alias of :attr:`elapsed_seconds`."""
        _deprecated("VaultReport.elapsed_s", "elapsed_seconds")
        return self.elapsed_seconds


@_dataclass(frozen=True)
class XenDisk:
    """How one disk of a XenServer VM was backed up (the fields of ``alike xen backup --json``)."""

    position: int
    #: The VM's VDI (uuid).
    vdi: str
    #: The snapshot VDI read (uuid).
    snapshot_vdi: str
    size: int
    transport: str
    #: ``incremental`` or ``full``.
    mode: str
    incremental: bool
    #: Why it was read whole although an earlier version existed (said loudly, never silently).
    fallback_reason: _Optional[str]
    read_bytes: int
    wire_bytes: int

    @property
    def vdi_uuid(self) -> str:
        """Deprecated alias of :attr:`vdi`."""
        _deprecated("XenDisk.vdi_uuid", "vdi")
        return self.vdi

    @property
    def snapshot_vdi_uuid(self) -> str:
        """Deprecated alias of :attr:`snapshot_vdi`."""
        _deprecated("XenDisk.snapshot_vdi_uuid", "snapshot_vdi")
        return self.snapshot_vdi


@_dataclass(frozen=True)
class XenBackupReport:
    """What a XenServer VM backup did (the fields of ``alike xen backup --json``, plus ``version``)."""

    version: Version
    id: str
    vm: str
    vm_uuid: str
    time: str
    #: The snapshot VM kept as the next backup's base (uuid).
    snapshot: str
    consistency: str
    read_bytes: int
    wire_bytes: int
    new_bytes: int
    new_stored_bytes: int
    elapsed_seconds: float
    disks: _Tuple[XenDisk, ...]
    #: What the pool released: ``kept_snapshot``, ``destroyed_snapshots``, ``data_destroyed_vdis``, ``destroyed_vdis``, ``warnings``.
    released: _Dict[str, _Any]
    warnings: _Tuple[str, ...]

    @property
    def elapsed_s(self) -> float:
        """Deprecated alias of :attr:`elapsed_seconds`."""
        _deprecated("XenBackupReport.elapsed_s", "elapsed_seconds")
        return self.elapsed_seconds

    @property
    def snapshot_uuid(self) -> str:
        """Deprecated alias of :attr:`snapshot`."""
        _deprecated("XenBackupReport.snapshot_uuid", "snapshot")
        return self.snapshot


@_dataclass(frozen=True)
class HyperVDisk:
    """How one disk of a Hyper-V VM was backed up (the fields of ``alike hyperv backup --json``)."""

    position: int
    #: The frozen file read (the checkpoint's), as the host names it.
    path: str
    #: The recovery checkpoint read (its InstanceID).
    checkpoint: str
    size: int
    #: ``smb``.
    transport: str
    #: ``incremental`` or ``full``.
    mode: str
    incremental: bool
    #: Why it was read whole although an earlier version existed (said loudly, never silently).
    fallback_reason: _Optional[str]
    read_bytes: int
    wire_bytes: int


@_dataclass(frozen=True)
class HyperVBackupReport:
    """What a Hyper-V VM backup did (the fields of ``alike hyperv backup --json``, plus ``version``)."""

    version: Version
    id: str
    vm: str
    vm_uuid: str
    time: str
    #: The checkpoint read, kept as the next backup's reference point.
    snapshot: str
    #: ``application-consistent`` or ``crash-consistent``.
    consistency: str
    read_bytes: int
    wire_bytes: int
    new_bytes: int
    new_stored_bytes: int
    elapsed_seconds: float
    disks: _Tuple[HyperVDisk, ...]
    #: What the host released: ``kept_snapshot``, ``destroyed_snapshots``, ``warnings``.
    released: _Dict[str, _Any]
    warnings: _Tuple[str, ...]


class HyperVHost:
    """A connected Hyper-V host: WMI over WinRM, its disks over SMB."""

    def __init__(self, native: "_native.NativeHyperVHost") -> None:
        self._n = native

    @classmethod
    def connect(
        cls,
        url: str,
        user: str,
        password: str,
        *,
        smb_port: int = 445,
        fingerprint: _Optional[str] = None,
        ca_pem: _Optional[str] = None,
        basic: bool = False,
        staging_dir: _Optional[str] = None,
    ) -> "HyperVHost":
        """Connects to ``url``: ``http://host:5985/wsman`` (NTLM with message
        encryption) or ``https://host:5986/wsman`` with the certificate pinned
        by ``fingerprint`` (SHA-256) or trusted through ``ca_pem`` (PEM text),
        NTLM or ``basic``. The host's share is reached on ``smb_port`` with the
        same credentials; a restore stages each VHDX in ``staging_dir``
        (default: the temporary folder)."""
        return cls(_native.NativeHyperVHost.connect(url, user, password, smb_port, fingerprint, ca_pem, basic, staging_dir))


class XenPool:
    """A logged-in session with a XenServer/XCP-ng pool (XAPI)."""

    def __init__(self, native: "_native.NativeXenPool") -> None:
        self._n = native

    @classmethod
    def connect(
        cls, url: str, user: str, password: str, *, fingerprint: _Optional[str] = None, insecure: bool = False
    ) -> "XenPool":
        """Logs in to ``url`` (``https://pool-master``); ``fingerprint`` (SHA-256,
        hex) pins a self-signed pool certificate. ``http://`` is refused to a
        host that is not a loopback address unless ``insecure`` (the password
        would travel in clear), and never takes a fingerprint."""
        return cls(_native.NativeXenPool.connect(url, user, password, fingerprint, insecure))


class Services:
    """The services (``docs/services.md``): jobs on schedules, their history
    and events, over the stores, pools and jobs of a configuration file
    (``docs/config.md``). Runs, jobs and events are dicts of the JSON the
    documentation describes (a run: ``id``, ``job``, ``result``, ``vms``,
    ``steps``…; an event: ``seq``, ``run``, ``job``, ``type``…)."""

    def __init__(self, native: "_native.NativeServices") -> None:
        self._n = native

    @classmethod
    def open(cls, config: "str | _os.PathLike[str]", database: "str | _os.PathLike[str]") -> "Services":
        """Opens the services of ``config`` with the history database
        ``database``; raises :class:`Busy` while another process has it open."""
        return cls(_native.NativeServices.open(_os.fspath(config), _os.fspath(database)))

    def start(self) -> None:
        """Starts the schedule loop."""
        self._n.start()

    def stop(self, cancel_running: bool = True, timeout: float = 30.0) -> None:
        """Stops; running runs are cancelled when asked and waited for."""
        self._n.stop(cancel_running, timeout)

    def jobs(self) -> _List[_Dict[str, _Any]]:
        """Every job: ``spec``, ``next_run``, ``active_run``, ``last_run``."""
        return self._n.jobs()

    def put_job(self, job: _Mapping[str, _Any]) -> None:
        """Adds or replaces a job (``name``, ``kind``, ``vms``, ``store``,
        ``pool``, ``schedule``, ``timezone``, ``chain``…)."""
        import json as _json

        self._n.put_job_json(_json.dumps(dict(job)))

    def remove_job(self, name: str) -> None:
        """Removes a job (its history stays)."""
        self._n.remove_job(name)

    def run_now(self, name: str) -> int:
        """Runs a job now; returns the run's id. Raises :class:`Busy` when it already runs."""
        return self._n.run_now(name)

    def cancel(self, run: int) -> None:
        """Cancels a queued or running run."""
        self._n.cancel(run)

    def run(self, id: int) -> _Dict[str, _Any]:
        """One run's record (live while it runs)."""
        return self._n.run(id)

    def runs(
        self, job: _Optional[str] = None, result: _Optional[str] = None, vm: _Optional[str] = None, limit: int = 100
    ) -> _List[_Dict[str, _Any]]:
        """Runs, newest first, filtered by job, result (``failed``…) or VM."""
        return self._n.runs(job, result, vm, limit)

    def wait_idle(self, timeout: float = 3600.0) -> bool:
        """Waits until nothing is queued or running; ``False`` on timeout."""
        return self._n.wait_idle(timeout)

    def subscribe(self, callback: _Callable[[_Dict[str, _Any]], None]) -> int:
        """Calls ``callback(event)`` for every event, on the thread that emits
        it: keep it short. Returns an id for :meth:`unsubscribe`."""
        return self._n.subscribe(callback)

    def unsubscribe(self, id: int) -> bool:
        """Ends a subscription."""
        return self._n.unsubscribe(id)

    def rebuild_history(self) -> int:
        """Rebuilds a lost history from the stores; returns the runs added."""
        return self._n.rebuild_history()


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
    #: Logical bytes per unique byte.
    dedup_ratio: float = 0.0
    #: Unique bytes per pack byte.
    compression_ratio: float = 0.0
    #: Logical bytes per stored byte.
    total_ratio: float = 0.0


@_dataclass(frozen=True)
class NbdExport:
    """One export of an NBD server: ``name`` (``disk0``…), its ``uri``
    (``nbd://127.0.0.1:10809/disk0``), the version's ``disk``, ``size`` in
    bytes, whether it is ``writable`` (into the overlay) and whether the empty
    export name (``default``) serves it."""

    name: str
    uri: str
    disk: int
    size: int
    writable: bool
    default: bool


@_dataclass(frozen=True)
class NbdReport:
    """What an NBD session did (``bytes_read``: data sent, holes not counted;
    ``store_bytes_read``: stored frames read, read-ahead included)."""

    id: str
    connections: int
    refused: int
    requests: int
    bytes_read: int
    bytes_written: int
    store_bytes_read: int
    overlay_kept: _Optional[str]
    elapsed_seconds: float


class NbdServer:
    """A version served over NBD on its own thread (:meth:`Store.serve_nbd`)
    until :meth:`stop` — or the end of a ``with`` block. ``uri`` is the
    server's (the default export, when one disk is served); ``exports`` each
    export's."""

    def __init__(self, native: "_native.NativeNbdServer") -> None:
        self._n = native
        listening = native.listening()
        self.uri: str = listening["uri"]
        self.exports: _Tuple[NbdExport, ...] = tuple(
            NbdExport(**_fields(NbdExport, e)) for e in listening["exports"]
        )

    @property
    def running(self) -> bool:
        return self._n.running

    def stop(self) -> NbdReport:
        """Stops serving (each connection after the request it serves) and
        returns the session's report (the same one when called again)."""
        return NbdReport(**_fields(NbdReport, self._n.stop()))

    def __enter__(self) -> "NbdServer":
        return self

    def __exit__(self, *exc: _Any) -> None:
        self.stop()


@_dataclass(frozen=True)
class Volume:
    """A volume of a version's disks (:meth:`Store.ls` without a path): a
    filesystem on a whole disk (``name`` ``"disk"``), a partition (``name``
    its number, as Linux numbers them) or an LVM2 logical volume (``"VG/LV"``,
    ``"VG@UUID8/LV"`` when two volume groups share a name); ``filesystem`` is
    ``"ext4"``, ``"NTFS"``… or None, ``error`` why it could not be read."""

    disk: int
    name: str
    kind: str
    size: int
    start: _Optional[int]
    partition_type: _Optional[str]
    partition_type_name: _Optional[str]
    partition_name: _Optional[str]
    partition_uuid: _Optional[str]
    vg_uuid: _Optional[str]
    lv_uuid: _Optional[str]
    filesystem: _Optional[str]
    label: _Optional[str]
    uuid: _Optional[str]
    error: _Optional[str]
    lvm_pv: bool


@_dataclass(frozen=True)
class FileEntry:
    """A file, directory or link in a listing. ``kind`` is ``"file"``,
    ``"dir"``, ``"symlink"`` or ``"other"``; times are nanoseconds since the
    epoch; ``target`` is a symlink's target (never followed); ``name_hex`` the
    name's bytes when they are not UTF-8; ``unreadable`` why the file cannot
    be extracted, when it cannot."""

    name: str
    name_hex: _Optional[str]
    path: str
    kind: str
    size: int
    mode: _Optional[int]
    uid: _Optional[int]
    gid: _Optional[int]
    nlink: int
    mtime_ns: _Optional[int]
    atime_ns: _Optional[int]
    btime_ns: _Optional[int]
    target: _Optional[str]
    id: int
    unreadable: _Optional[str]

    @property
    def mtime(self) -> _Optional[_dt.datetime]:
        """The modification time, in UTC (microseconds)."""
        if self.mtime_ns is None:
            return None
        return _dt.datetime.fromtimestamp(self.mtime_ns / 1e9, tz=_dt.timezone.utc)


@_dataclass(frozen=True)
class Listing:
    """What :meth:`Store.ls` found: without a path the ``volumes``; with one
    the ``volume`` read, the normalised ``path`` and its ``entries`` (a
    directory's, by name, or the one file or link the path names).
    Iterating a listing gives its entries (or, without a path, its volumes)."""

    id: str
    vm: str
    volumes: _Tuple[Volume, ...]
    volume: _Optional[Volume]
    path: _Optional[str]
    entries: _Tuple[FileEntry, ...]
    warnings: _Tuple[str, ...]
    store_bytes_read: int

    def __iter__(self) -> _Any:
        return iter(self.entries if self.path is not None else self.volumes)

    def __len__(self) -> int:
        return len(self.entries if self.path is not None else self.volumes)


@_dataclass(frozen=True)
class ExtractFailure:
    """An entry :meth:`Store.extract` could not extract: its ``path``, the
    error's ``kind`` (``"corruption"``, ``"already_exists"``…) and message."""

    path: str
    kind: str
    error: str


@_dataclass(frozen=True)
class ExtractReport:
    """What :meth:`Store.extract` did: entries written, ``bytes`` of file
    data written, ``store_bytes_read`` fetched from the store, and the
    ``failures`` (the rest extracted)."""

    id: str
    vm: str
    volume: Volume
    to: str
    files: int
    dirs: int
    symlinks: int
    hard_links: int
    skipped: int
    skipped_names: int
    bytes: int
    store_bytes_read: int
    failures: _Tuple[ExtractFailure, ...]
    warnings: _Tuple[str, ...]
    elapsed_seconds: float


def _volume(d: _Mapping[str, _Any]) -> Volume:
    return Volume(**_fields(Volume, d))


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
        chunking: _Optional[str] = None,
        writer_keys: bool = False,
    ) -> "Store":
        """Creates a store at ``path``, a directory or a URL such as
        ``s3://bucket/prefix`` (S3 settings from the ``AWS_*`` environment),
        encrypted unless ``encrypt=False``. ``insecure_fast_kdf`` is for tests only.

        ``chunking`` is how disks are cut: ``"cdc"`` (content-defined
        16/32/64 KiB chunks on 4 KiB boundaries, the default),
        ``"cdc:MIN/AVG/MAX"`` in KiB, ``"fixed"`` or ``"fixed:KIB"``; a
        ``block_size`` makes a fixed-block (format 1) store. ``writer_keys``
        makes a store that hands out write-only keys (format 3,
        :meth:`add_writer_key`)."""
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
                chunking,
                writer_keys,
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
        key_file_contents: _Optional[bytes] = None,
    ) -> "Store":
        """Opens the store at ``path`` (a directory or URL). ``key_file`` (or
        its bytes, ``key_file_contents``) may be a full or a write-only key."""
        return cls(
            _native.NativeStore.open(
                _os.fspath(path),
                passphrase,
                None if key_file is None else _os.fspath(key_file),
                None if cache_dir is None else _os.fspath(cache_dir),
                key_file_contents,
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
    def block_size(self) -> _Optional[int]:
        """The block size of a fixed-block store; ``None`` for content-defined chunks."""
        bs = self._n.info()["block_size"]
        return None if bs is None else int(bs)

    @property
    def chunking(self) -> str:
        """How the store cuts disks, in words."""
        return str(self._n.info()["chunking"])

    @property
    def format_version(self) -> int:
        """3 for content-defined chunks with write-only keys, 2 for
        content-defined chunks, 1 for fixed blocks."""
        return int(self._n.info()["format_version"])

    @property
    def write_only(self) -> bool:
        """Whether the store was opened with a write-only key: it backs up
        but restores nothing (:class:`WriteOnlyKey`)."""
        return bool(self._n.info()["write_only"])

    def add_writer_key(self, output: PathLike) -> None:
        """Writes a write-only key file to ``output`` (mode 0600, never over
        an existing file): it backs up into this store but cannot read chunk
        data. Needs a store made with ``writer_keys=True``, opened with its
        full key."""
        self._n.add_writer_key(_os.fspath(output))

    def writer_key_file_bytes(self) -> bytes:
        """The bytes of a write-only key file, for ``key_file_contents``."""
        return self._n.writer_key_file_bytes()

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
        allow_empty: bool = False,
    ) -> BackupReport:
        """Backs up disk images — raw files or block devices, VHD, VHDX/AVHDX
        (``format`` "raw", "vhd" or "vhdx"; detected when ``None``) — as the
        disks of ``vm``; only allocated data is read. ``parent`` is the
        version to build on: ``"latest"`` (default), a version or id, or
        ``None`` for a full read (still deduplicated). A disk of 0 bytes is
        refused unless ``allow_empty``; character devices always are;
        ``threads`` is at most 1024 (0: one per core)."""
        r = self._n.backup(
            vm,
            [_os.fspath(d) for d in disks],
            None if parent is None else _spec(parent),
            parent is None,
            format,
            threads,
            _progress(progress),
            cancel,
            allow_empty,
        )
        fields = _fields(BackupReport, r)
        fields.update(version=Version._from(r["version"]), disks=tuple(Disk._from(d) for d in r["disks"]))
        return BackupReport(**fields)

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
        force: bool = False,
    ) -> RestoreReport:
        """Writes disk ``disk`` of ``version`` (a Version, id, prefix or
        ``"latest"`` with ``vm``) to the file ``output``, atomically, as a
        sparse raw image or (``format`` "vhd"/"vhdx") a dynamic VHD/VHDX. An
        existing file is refused (:class:`AlreadyExists`) unless ``force``."""
        r = self._n.restore(
            _spec(version), _os.fspath(output), disk, vm, format, partial, threads, _progress(progress), cancel, force
        )
        fields = _fields(RestoreReport, r)
        fields.update(failed_ranges=tuple((int(a), int(b)) for a, b in r["failed_ranges"]))
        return RestoreReport(**fields)

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
        fields = _fields(VerifyReport, r)
        fields.update(
            damaged=tuple(Damage(d["object"], d["chunk"], d["reason"], tuple(d["affects"])) for d in r["damaged"])
        )
        return VerifyReport(**fields)

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
            dry_run=r["dry_run"],
            removed=tuple(r["removed"]),
            vms=tuple(
                PruneVm(
                    v["vm"],
                    tuple(PruneDecision(x["id"], x["time_ms"], x["keep"], tuple(x["reasons"])) for x in v["versions"]),
                )
                for v in r["vms"]
            ),
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
        fields = _fields(GcReport, self._n.gc(dry_run, _progress(progress), cancel))
        fields["damaged_versions"] = tuple(fields.get("damaged_versions", ()))
        fields["lost_packs"] = tuple(fields.get("lost_packs", ()))
        return GcReport(**fields)

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
        fields = _fields(VaultReport, r)
        fields.update(
            copied=tuple(VaultCopy(c["source"], c["vault"]) for c in r["copied"]),
            already=tuple(r["already"]),
            pruned=tuple(r["pruned"]),
        )
        return VaultReport(**fields)

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
        fields = _fields(XenBackupReport, r)
        fields.update(
            version=Version._from(r["version"]),
            disks=tuple(XenDisk(**_fields(XenDisk, d)) for d in r["disks"]),
            released=dict(r["released"]),
            warnings=tuple(r["warnings"]),
        )
        return XenBackupReport(**fields)

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

    def backup_hyperv(
        self,
        host: HyperVHost,
        vm: str,
        *,
        full: bool = False,
        quiesce: bool = False,
        threads: int = 0,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> HyperVBackupReport:
        """Backs up the VM ``vm`` (name or id) of ``host``: a recovery
        checkpoint, then only the ranges RCT says changed since the last
        backup, or everything, deduplicated, when ``full`` or when the RCT
        chain is broken — which each disk's ``fallback_reason`` then says."""
        r = self._n.backup_hyperv(host._n, vm, full, quiesce, threads, _progress(progress), cancel)
        fields = _fields(HyperVBackupReport, r)
        fields.update(
            version=Version._from(r["version"]),
            disks=tuple(HyperVDisk(**_fields(HyperVDisk, d)) for d in r["disks"]),
            released=dict(r["released"]),
            warnings=tuple(r["warnings"]),
        )
        return HyperVBackupReport(**fields)

    def restore_hyperv_vm(
        self,
        version: _Union[Version, str],
        host: HyperVHost,
        path: str,
        *,
        switch: _Optional[str] = None,
        name: _Optional[str] = None,
        vm: _Optional[str] = None,
        new_macs: bool = False,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> _Dict[str, _Any]:
        """Recreates ``version`` (of a Hyper-V VM, or of a Xen VM: its
        configuration mapped, what does not map in ``warnings``) as a new VM on
        ``host``: VHDX files in the host's folder ``path`` (``C:\\…``), NICs on
        ``switch`` (default: the recorded switches); returns the new VM's
        ``vm_uuid``, ``name``, ``disks`` and ``warnings``."""
        return dict(
            self._n.restore_hyperv_vm(_spec(version), host._n, path, switch, name, vm, new_macs, _progress(progress), cancel)
        )

    def stats(self) -> Stats:
        return Stats(**_fields(Stats, self._n.stats()))

    def ls(
        self,
        version: _Union[Version, str],
        path: _Optional[str] = None,
        *,
        vm: _Optional[str] = None,
        disk: _Optional[int] = None,
        partition: _Optional[int] = None,
        volume: _Optional[str] = None,
        cache_size: _Optional[int] = None,
    ) -> Listing:
        """Lists what ``version``'s disks hold, straight from the store (no
        restore, no mount): without ``path`` the volumes (partitions, LVM2
        logical volumes, filesystems); with one the entries of that directory
        (or the one file or link) of the volume chosen by ``partition`` (its
        number), ``volume`` (``"VG/LV"``) or, with neither, the one filesystem
        of ``disk`` (default 0). Links are never followed.

        ::

            for e in store.ls("latest", "/etc", vm="web01", partition=2):
                print(e.name, e.size)
        """
        r = self._n.ls(_spec(version), vm, path, disk, partition, volume, cache_size)
        return Listing(
            id=r["id"],
            vm=r["vm"],
            volumes=tuple(_volume(v) for v in r["volumes"]),
            volume=None if r["volume"] is None else _volume(r["volume"]),
            path=r["path"],
            entries=tuple(FileEntry(**_fields(FileEntry, e)) for e in r["entries"]),
            warnings=tuple(r["warnings"]),
            store_bytes_read=r["store_bytes_read"],
        )

    def extract(
        self,
        version: _Union[Version, str],
        paths: _Union[str, _Sequence[str]],
        to: PathLike,
        *,
        vm: _Optional[str] = None,
        disk: _Optional[int] = None,
        partition: _Optional[int] = None,
        volume: _Optional[str] = None,
        force: bool = False,
        max_bytes: _Optional[int] = None,
        cache_size: _Optional[int] = None,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> ExtractReport:
        """Extracts ``paths`` (one or several; ``"/"`` is everything) of
        ``version`` into the directory ``to``, each under its last name,
        straight from the store. Nothing is written outside ``to``: names that
        would leave it are refused, symlinks are restored as links and never
        followed. Hard links, sparse files, modes and times are kept. Existing
        names are refused unless ``force``. Entries that fail (a damaged block,
        an unreadable file) are in ``failures``; the rest extract.

        ::

            r = store.extract("latest", ["/etc/nginx"], "/tmp/out", vm="web01", volume="vg0/root")
            for f in r.failures:
                print(f.path, f.error)
        """
        if isinstance(paths, str):
            paths = [paths]
        r = self._n.extract(
            _spec(version),
            list(paths),
            _os.fspath(to),
            vm,
            disk,
            partition,
            volume,
            force,
            max_bytes,
            cache_size,
            _progress(progress),
            cancel,
        )
        fields = _fields(ExtractReport, r)
        fields.update(
            volume=_volume(r["volume"]),
            failures=tuple(ExtractFailure(**f) for f in r["failures"]),
            warnings=tuple(r["warnings"]),
        )
        return ExtractReport(**fields)

    def serve_nbd(
        self,
        version: _Union[Version, str],
        *,
        vm: _Optional[str] = None,
        disk: int = 0,
        all_disks: bool = False,
        listen: _Optional[str] = None,
        socket: _Optional[PathLike] = None,
        writable_overlay: _Optional[PathLike] = None,
        keep_overlay: bool = False,
        cache_size: _Optional[int] = None,
        readahead: _Optional[int] = None,
        connections: _Optional[int] = None,
        threads: int = 0,
        tls_cert: _Optional[PathLike] = None,
        tls_key: _Optional[PathLike] = None,
        tls_client_ca: _Optional[PathLike] = None,
    ) -> NbdServer:
        """Serves ``version`` over NBD until the returned server's
        :meth:`NbdServer.stop`: disk ``disk`` (also the default export) or
        every disk (``all_disks``, as ``diskN``), on TCP ``listen``
        (``"HOST:PORT"``, default ``"127.0.0.1:10809"``; port 0: a free one)
        or a Unix ``socket``; read-only, or writable through a copy-on-write
        ``writable_overlay`` file (deleted at the end unless ``keep_overlay``).
        ``cache_size`` and ``readahead`` are bytes. With ``tls_cert`` and
        ``tls_key`` (PEM files) every client must use TLS (``nbds://``);
        with ``tls_client_ca`` too, only clients with a certificate that CA
        signed get in. Returns once it listens."""
        return NbdServer(
            self._n.serve_nbd(
                _spec(version),
                vm,
                disk,
                all_disks,
                listen,
                None if socket is None else _os.fspath(socket),
                None if writable_overlay is None else _os.fspath(writable_overlay),
                keep_overlay,
                cache_size,
                readahead,
                connections,
                threads,
                None if tls_cert is None else _os.fspath(tls_cert),
                None if tls_key is None else _os.fspath(tls_key),
                None if tls_client_ca is None else _os.fspath(tls_client_ca),
            )
        )


@_dataclass(frozen=True)
class ReplicaDiskProgress:
    """One disk of a replication: bytes the run reads (``total_bytes``), has
    read, hashed, offered to the replica, that the replica lacked
    (``needed_bytes``) and sent compressed (``sent_bytes``); whether only
    what changed was read (``changed_only``)."""

    disk: int
    size: int
    total_bytes: int
    read_bytes: int
    hashed_bytes: int
    offered_bytes: int
    needed_bytes: int
    sent_bytes: int
    changed_only: bool


@_dataclass(frozen=True)
class ReplicaRunStats:
    """What the replica's side did with the offers: held in place
    (``present_bytes``), copied from elsewhere in it, from a seed or from an
    earlier attempt (``copied_bytes``, ``seeded_bytes``, ``resumed_bytes``),
    received."""

    offered_bytes: int
    present_bytes: int
    copied_bytes: int
    needed_bytes: int
    received_bytes: int
    raw_bytes: int
    zeroed_bytes: int
    rehashed_bytes: int
    seeded_bytes: int
    resumed_bytes: int


@_dataclass(frozen=True)
class ReplicateReport:
    """What a replication did: the fields of ``alike replicate --json``.
    ``sent_bytes`` are the bytes the sender handed the receiver as they
    would cross a link (compressed, framed); ``backup`` is the version a
    one-pass run stored."""

    vm: str
    point: int
    time: str
    time_ms: int
    read_bytes: int
    store_read_bytes: int
    hashed_bytes: int
    needed_bytes: int
    sent_bytes: int
    disks: _Tuple[ReplicaDiskProgress, ...]
    replica: ReplicaRunStats
    removed_points: _Tuple[int, ...]
    backup: _Optional[BackupReport]
    elapsed_seconds: float


@_dataclass(frozen=True)
class ReplicaPointDisk:
    """One disk of a replica point: its size and the file at the top of its chain."""

    size: int
    location: str


@_dataclass(frozen=True)
class ReplicaPoint:
    """A committed point of a replica (``alike replica list --json``)."""

    point: int
    time: str
    time_ms: int
    disks: _Tuple[ReplicaPointDisk, ...]


@_dataclass(frozen=True)
class ReplicationRecord:
    """One run into a replica, as its history keeps it (``result``: ``"ok"``,
    ``"failed"`` or ``"cancelled"``)."""

    started: str
    started_ms: int
    result: str
    point: _Optional[int]
    read_bytes: int
    sent_bytes: int
    elapsed_seconds: float
    error: _Optional[str]


@_dataclass(frozen=True)
class ReplicaExportReport:
    """What exporting a point's disk wrote."""

    point: int
    disk: int
    size: int
    written_bytes: int
    elapsed_seconds: float


def _backup_report(r: _Mapping[str, _Any]) -> BackupReport:
    fields = _fields(BackupReport, r)
    fields.update(version=Version._from(r["version"]), disks=tuple(Disk._from(d) for d in r["disks"]))
    return BackupReport(**fields)


class Replica:
    """A replica of a VM kept as a folder of VHDX files (a base VHDX and one
    differencing AVHDX per point), as a Hyper-V host or a share holds one.
    No store is needed to replicate (one only to seed a first replication or
    for one-pass backup and replication)::

        replica = alike.Replica.open_or_create("/replicas/web-01", vm="web-01")
        report = replica.replicate(["disk0.img"], keep=7)
        replica.export(report.point, 0, "disk0-restored.img")
    """

    def __init__(self, native: "_native.NativeReplica") -> None:
        self._n = native

    @classmethod
    def open(cls, path: PathLike) -> "Replica":
        """Opens the replica in ``path`` (``NotFound`` when there is none)."""
        return cls(_native.NativeReplica.open(_os.fspath(path)))

    @classmethod
    def open_or_create(cls, path: PathLike, vm: str) -> "Replica":
        """Opens the replica of ``vm`` in ``path``, or makes one there."""
        return cls(_native.NativeReplica.open_or_create(_os.fspath(path), vm))

    @property
    def path(self) -> str:
        return self._n.path

    @property
    def vm(self) -> str:
        return self._n.vm

    def replicate(
        self,
        disks: _Sequence[PathLike],
        *,
        keep: _Optional[int] = None,
        bwlimit: _Optional[int] = None,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
        seed: _Optional[_Tuple[Store, _Union[Version, str]]] = None,
        backup_to: _Optional[Store] = None,
    ) -> ReplicateReport:
        """Replicates image files (raw, VHD, VHDX/AVHDX; block devices) as
        the VM's disks into a new point, sending only the chunks the replica
        lacks (both ends of the protocol run here). ``keep``: keep only the
        newest N points after; ``bwlimit``: bytes per second on the wire;
        ``seed``: ``(store, version)`` a first point starts from;
        ``backup_to``: one-pass backup and replication into this store (the
        disks read once). Progress counts bytes read; Ctrl-C or ``cancel``
        leave the replica at its last point."""
        r = self._n.replicate(
            [_os.fspath(d) for d in disks],
            keep,
            bwlimit,
            _progress(progress),
            cancel,
            None if seed is None else seed[0]._n,
            None if seed is None else _spec(seed[1]),
            None if backup_to is None else backup_to._n,
        )
        fields = _fields(ReplicateReport, r)
        fields.update(
            disks=tuple(ReplicaDiskProgress(**_fields(ReplicaDiskProgress, d)) for d in r["disks"]),
            replica=ReplicaRunStats(**_fields(ReplicaRunStats, r["replica"])),
            removed_points=tuple(r["removed_points"]),
            backup=None if r["backup"] is None else _backup_report(r["backup"]),
        )
        return ReplicateReport(**fields)

    def points(self) -> _List[ReplicaPoint]:
        """The committed points, oldest first."""
        return [
            ReplicaPoint(
                point=p["point"],
                time=p["time"],
                time_ms=p["time_ms"],
                disks=tuple(ReplicaPointDisk(**_fields(ReplicaPointDisk, d)) for d in p["disks"]),
            )
            for p in self._n.points()
        ]

    def history(self) -> _List[ReplicationRecord]:
        """The runs into this replica, oldest first: point, bytes read and
        sent, duration, result."""
        return [ReplicationRecord(**_fields(ReplicationRecord, r)) for r in self._n.history()]

    def export(
        self,
        point: int,
        disk: int,
        output: PathLike,
        *,
        force: bool = False,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> ReplicaExportReport:
        """Writes disk ``disk`` of point ``point`` to ``output`` as a raw
        image (sparse where the point holds zeroes)."""
        r = self._n.export(point, disk, _os.fspath(output), force, _progress(progress), cancel)
        return ReplicaExportReport(**_fields(ReplicaExportReport, r))


class XenReplica:
    """A replica VM on a XenServer/XCP-ng pool (``docs/replica-xen.md``): made
    from the source VM's recorded configuration, blocked from starting, one
    snapshot per point. Results are plain dicts: a replication's report (as
    :meth:`Replica.replicate`'s, with ``replica_vm``), points (``point``,
    ``time``, ``time_ms``, ``disks``), a test VM (``uuid``, ``name``,
    ``point``, ``started``), a failover (``uuid``, ``point``, ``networks``,
    ``started``) and a failback (``read_bytes``, ``needed_bytes``,
    ``sent_bytes``, ``roles``, ``elapsed_seconds``)."""

    def __init__(self, native: "_native.NativeXenReplica") -> None:
        self._n = native

    @staticmethod
    def replicate(
        source: XenPool,
        vm: str,
        target: XenPool,
        sr: str,
        state_dir: "_os.PathLike[str] | str",
        *,
        network: _Optional[str] = None,
        keep: _Optional[int] = None,
        bwlimit: _Optional[int] = None,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
        seed: _Optional[_Tuple[Store, _Union[Version, str]]] = None,
        backup_to: _Optional[Store] = None,
    ) -> _Dict[str, _Any]:
        """Replicates VM ``vm`` of ``source`` onto its replica VM on ``target``
        (made on SR ``sr`` the first time; its key, record and history kept
        under ``state_dir``), sending only the chunks the replica lacks.
        ``seed``: ``(store, version)`` a first point starts from (only what
        differs from it is sent); ``backup_to``: one-pass backup and
        replication into this store (the VM's disks read once; the report's
        ``backup`` is the new version). A first run cut short is resumed by
        the next one; :meth:`discard_partial` abandons it."""
        return _native.NativeXenReplica.replicate(
            source._n,
            vm,
            target._n,
            sr,
            _os.fspath(state_dir),
            network,
            keep,
            bwlimit,
            _progress(progress),
            cancel,
            None if seed is None else seed[0]._n,
            None if seed is None else _spec(seed[1]),
            None if backup_to is None else backup_to._n,
        )

    @classmethod
    def open(cls, pool: XenPool, vm: str, state_dir: "_os.PathLike[str] | str") -> "XenReplica":
        """Opens replica VM ``vm`` (name or uuid) of ``pool``."""
        return cls(_native.NativeXenReplica.open(pool._n, vm, _os.fspath(state_dir)))

    @property
    def uuid(self) -> str:
        """The replica VM's uuid."""
        return self._n.uuid

    @property
    def name(self) -> str:
        """The replica VM's name."""
        return self._n.name

    def points(self) -> _List[_Dict[str, _Any]]:
        """The committed points, oldest first."""
        return self._n.points()

    def discard_partial(self) -> bool:
        """Discards what an unfinished first run kept to resume (the VM's
        disks go back to its base); returns whether there was something."""
        return self._n.discard_partial()

    def test_failover(
        self, point: _Optional[int] = None, *, network: _Optional[str] = None, start: bool = True
    ) -> _Dict[str, _Any]:
        """Boots a copy of ``point`` (the newest by default) without NICs (or on
        an isolated ``network``) while replication goes on."""
        return self._n.test_failover(point, network, start)

    def end_test(self, vm: str) -> None:
        """Shuts a test failover's VM down and destroys it with its disks."""
        self._n.end_test(vm)

    def failover(
        self,
        point: _Optional[int] = None,
        *,
        networks: _Optional[_Mapping[str, str]] = None,
        start: bool = False,
    ) -> _Dict[str, _Any]:
        """Makes the replica the live VM at ``point`` (the newest by default),
        NICs moved by ``networks`` (source network → target network).
        Re-addressing inside the guest is not done."""
        return self._n.failover(point, dict(networks) if networks is not None else None, start)

    def failback(
        self,
        original: XenPool,
        vm: str,
        *,
        start: bool = False,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> _Dict[str, _Any]:
        """Sends what changed on this failed-over VM back onto VM ``vm`` of
        ``original`` (halted), then swaps roles."""
        return self._n.failback(original._n, vm, start, _progress(progress), cancel)

    def failback_new_vm(
        self,
        original: XenPool,
        sr: str,
        *,
        network: _Optional[str] = None,
        name: _Optional[str] = None,
        start: bool = False,
        progress: _Optional[ProgressCallback] = None,
        cancel: _Optional[CancelToken] = None,
    ) -> _Dict[str, _Any]:
        """Failback onto a new VM, when the original VM is gone: makes a VM
        on ``original`` from this VM's configuration (disks on SR ``sr``,
        NICs on ``network`` or the source's networks, named ``name`` or as
        the source, tagged ``alike-failback``), copies the disks whole onto
        it, then swaps roles. On failure or cancel the new VM and its disks
        are removed and this VM is left as it was."""
        return self._n.failback_new_vm(original._n, sr, network, name, start, _progress(progress), cancel)
