# Type stubs of the private native module (checked with mypy.stubtest in the test command).
from typing import Any, Callable, Dict, List, Optional, final

__all__ = [
    "__version__",
    "AlreadyExists",
    "BadImage",
    "Busy",
    "CancelToken",
    "Cancelled",
    "Corruption",
    "Error",
    "InvalidArgument",
    "IoError",
    "NativeNbdServer",
    "NativeReplica",
    "NativeServices",
    "NativeStore",
    "NativeXenPool",
    "NativeHyperVHost",
    "NativeXenReplica",
    "NotAStore",
    "NotFound",
    "PassphraseRequired",
    "UnsupportedVersion",
    "WriteOnlyKey",
    "WrongPassphrase",
    "load_config",
    "run_jobs",
]

__version__: str

def run_jobs(config: str, jobs: List[str], cancel: Optional[CancelToken] = None) -> Dict[str, Any]: ...
def load_config(config: str) -> Dict[str, Any]: ...

class Error(Exception):
    kind: str
    retry: str
    code: Optional[str]

class WrongPassphrase(Error): ...
class PassphraseRequired(Error): ...
class NotAStore(Error): ...
class AlreadyExists(Error): ...
class NotFound(Error): ...
class Corruption(Error): ...
class UnsupportedVersion(Error): ...
class Cancelled(Error): ...
class InvalidArgument(Error): ...
class IoError(Error): ...
class Busy(Error): ...
class BadImage(Error): ...
class WriteOnlyKey(Error): ...

@final
class CancelToken:
    def __new__(cls) -> CancelToken: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...

_Progress = Optional[Callable[[str, int, int], Any]]

@final
class NativeStore:
    @staticmethod
    def create(
        path: str,
        passphrase: Optional[str] = None,
        key_file: Optional[str] = None,
        encrypt: bool = True,
        cache_dir: Optional[str] = None,
        block_size: Optional[int] = None,
        compression_level: Optional[int] = None,
        insecure_fast_kdf: bool = False,
        chunking: Optional[str] = None,
        writer_keys: bool = False,
    ) -> NativeStore: ...
    @staticmethod
    def open(
        path: str,
        passphrase: Optional[str] = None,
        key_file: Optional[str] = None,
        cache_dir: Optional[str] = None,
        key_file_contents: Optional[bytes] = None,
    ) -> NativeStore: ...
    def add_writer_key(self, output: str) -> None: ...
    def writer_key_file_bytes(self) -> bytes: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def info(self) -> Dict[str, Any]: ...
    def backup(
        self,
        vm: str,
        disks: List[str],
        parent: Optional[str] = None,
        full: bool = False,
        format: Optional[str] = None,
        threads: int = 0,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
        allow_empty: bool = False,
    ) -> Dict[str, Any]: ...
    def versions(self, vm: Optional[str] = None) -> List[Dict[str, Any]]: ...
    def version(self, spec: str, vm: Optional[str] = None) -> Dict[str, Any]: ...
    def restore(
        self,
        spec: str,
        output: str,
        disk: int = 0,
        vm: Optional[str] = None,
        format: str = "raw",
        partial: bool = False,
        threads: int = 0,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
        force: bool = False,
    ) -> Dict[str, Any]: ...
    def verify(
        self,
        full: bool = False,
        vm: Optional[str] = None,
        version: Optional[str] = None,
        threads: int = 0,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
    ) -> Dict[str, Any]: ...
    def prune(
        self,
        vm: Optional[str] = None,
        keep_last: int = 0,
        keep_hourly: int = 0,
        keep_daily: int = 0,
        keep_weekly: int = 0,
        keep_monthly: int = 0,
        keep_yearly: int = 0,
        dry_run: bool = False,
    ) -> Dict[str, Any]: ...
    def forget(self, version: str) -> None: ...
    def pin(self, version: str) -> None: ...
    def unpin(self, version: str) -> None: ...
    def pinned(self) -> List[str]: ...
    def gc(
        self,
        dry_run: bool = False,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
    ) -> Dict[str, Any]: ...
    def vault(
        self,
        to: NativeStore,
        vm: Optional[str] = None,
        last: Optional[int] = None,
        keep_last: int = 0,
        keep_daily: int = 0,
        keep_weekly: int = 0,
        keep_monthly: int = 0,
        keep_yearly: int = 0,
        bandwidth_limit: Optional[int] = None,
        threads: int = 0,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
    ) -> Dict[str, Any]: ...
    def backup_xen(
        self,
        pool: NativeXenPool,
        vm: str,
        full: bool = False,
        quiesce: bool = False,
        threads: int = 0,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
    ) -> Dict[str, Any]: ...
    def restore_xen_vm(
        self,
        spec: str,
        pool: NativeXenPool,
        sr: str,
        network: Optional[str] = None,
        vm: Optional[str] = None,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
    ) -> Dict[str, Any]: ...
    def backup_hyperv(
        self,
        host: NativeHyperVHost,
        vm: str,
        full: bool = False,
        quiesce: bool = False,
        threads: int = 0,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
    ) -> Dict[str, Any]: ...
    def restore_hyperv_vm(
        self,
        spec: str,
        host: NativeHyperVHost,
        path: str,
        switch: Optional[str] = None,
        name: Optional[str] = None,
        vm: Optional[str] = None,
        new_macs: bool = False,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
    ) -> Dict[str, Any]: ...
    def stats(self) -> Dict[str, Any]: ...
    def ls(
        self,
        spec: str,
        vm: Optional[str] = None,
        path: Optional[str] = None,
        disk: Optional[int] = None,
        partition: Optional[int] = None,
        volume: Optional[str] = None,
        cache_size: Optional[int] = None,
    ) -> Dict[str, Any]: ...
    def extract(
        self,
        spec: str,
        paths: List[str],
        to: str,
        vm: Optional[str] = None,
        disk: Optional[int] = None,
        partition: Optional[int] = None,
        volume: Optional[str] = None,
        force: bool = False,
        max_bytes: Optional[int] = None,
        cache_size: Optional[int] = None,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
    ) -> Dict[str, Any]: ...
    def serve_nbd(
        self,
        spec: str,
        vm: Optional[str] = None,
        disk: int = 0,
        all_disks: bool = False,
        listen: Optional[str] = None,
        socket: Optional[str] = None,
        writable_overlay: Optional[str] = None,
        keep_overlay: bool = False,
        cache_size: Optional[int] = None,
        readahead: Optional[int] = None,
        connections: Optional[int] = None,
        threads: int = 0,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        tls_client_ca: Optional[str] = None,
    ) -> NativeNbdServer: ...

@final
class NativeNbdServer:
    def listening(self) -> Dict[str, Any]: ...
    @property
    def running(self) -> bool: ...
    def stop(self) -> Dict[str, Any]: ...

@final
class NativeReplica:
    @staticmethod
    def open(path: str) -> NativeReplica: ...
    @staticmethod
    def open_or_create(path: str, vm: str) -> NativeReplica: ...
    @property
    def path(self) -> str: ...
    @property
    def vm(self) -> str: ...
    def replicate(
        self,
        disks: List[str],
        keep: Optional[int] = None,
        bwlimit: Optional[int] = None,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
        seed_store: Optional[NativeStore] = None,
        seed_version: Optional[str] = None,
        backup_to: Optional[NativeStore] = None,
    ) -> Dict[str, Any]: ...
    def points(self) -> List[Dict[str, Any]]: ...
    def history(self) -> List[Dict[str, Any]]: ...
    def export(
        self,
        point: int,
        disk: int,
        output: str,
        force: bool = False,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
    ) -> Dict[str, Any]: ...

@final
class NativeHyperVHost:
    @staticmethod
    def connect(
        url: str,
        user: str,
        password: str,
        smb_port: int = 445,
        fingerprint: Optional[str] = None,
        ca_pem: Optional[str] = None,
        basic: bool = False,
        staging_dir: Optional[str] = None,
    ) -> NativeHyperVHost: ...

@final
class NativeXenPool:
    @staticmethod
    def connect(
        url: str, user: str, password: str, fingerprint: Optional[str] = None, insecure: bool = False
    ) -> NativeXenPool: ...

@final
class NativeServices:
    @staticmethod
    def open(config: str, database: str) -> NativeServices: ...
    def start(self) -> None: ...
    def stop(self, cancel_running: bool = True, timeout: float = 30.0) -> None: ...
    def jobs(self) -> List[Dict[str, Any]]: ...
    def put_job_json(self, job: str) -> None: ...
    def remove_job(self, name: str) -> None: ...
    def run_now(self, name: str) -> int: ...
    def cancel(self, run: int) -> None: ...
    def run(self, id: int) -> Dict[str, Any]: ...
    def runs(
        self, job: Optional[str] = None, result: Optional[str] = None, vm: Optional[str] = None, limit: int = 100
    ) -> List[Dict[str, Any]]: ...
    def wait_idle(self, timeout: float) -> bool: ...
    def subscribe(self, callback: Callable[[Dict[str, Any]], None]) -> int: ...
    def unsubscribe(self, id: int) -> bool: ...
    def rebuild_history(self) -> int: ...

@final
class NativeXenReplica:
    @staticmethod
    def replicate(
        source: NativeXenPool,
        vm: str,
        target: NativeXenPool,
        sr: str,
        state_dir: str,
        network: Optional[str] = None,
        keep: Optional[int] = None,
        bwlimit: Optional[int] = None,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
        seed_store: Optional[NativeStore] = None,
        seed_version: Optional[str] = None,
        backup_to: Optional[NativeStore] = None,
    ) -> Dict[str, Any]: ...
    @staticmethod
    def open(pool: NativeXenPool, vm: str, state_dir: str) -> NativeXenReplica: ...
    @property
    def uuid(self) -> str: ...
    @property
    def name(self) -> str: ...
    def points(self) -> List[Dict[str, Any]]: ...
    def discard_partial(self) -> bool: ...
    def test_failover(
        self, point: Optional[int] = None, network: Optional[str] = None, start: bool = True
    ) -> Dict[str, Any]: ...
    def end_test(self, vm: str) -> None: ...
    def failover(
        self, point: Optional[int] = None, networks: Optional[dict[str, str]] = None, start: bool = False
    ) -> Dict[str, Any]: ...
    def failback(
        self,
        original: NativeXenPool,
        vm: str,
        start: bool = False,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
    ) -> Dict[str, Any]: ...
    def failback_new_vm(
        self,
        original: NativeXenPool,
        sr: str,
        network: Optional[str] = None,
        name: Optional[str] = None,
        start: bool = False,
        progress: _Progress = None,
        cancel: Optional[CancelToken] = None,
    ) -> Dict[str, Any]: ...
