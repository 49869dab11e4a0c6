"""The systems the comparison runs, each a cluster of local processes on loopback free ports.

``ReplogSystem`` (``replog serve`` through ``ProcessCluster``, default timing, fsync on),
``EtcdSystem`` (Debian's ``etcd`` binary, members started and stopped by PID, never the Debian
service) and ``PySyncObjSystem`` (``pysyncobj_server.py`` processes). Each is a context manager
with ``endpoints`` (client URLs) and ``target`` (the ``replog bench`` adapter name); data lives
under a directory given by the caller.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replog.testing.processes import ProcessCluster, free_ports

HERE = Path(__file__).resolve().parent
START_TIMEOUT_S = 30.0


def _get_json(url: str, body: bytes | None = None) -> Any:
    method = "POST" if body is not None else "GET"
    request = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(request, timeout=2) as response:
        return json.loads(response.read())


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait(predicate: Any, what: str, logs: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if predicate():
                return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}; logs in {logs}")
        time.sleep(0.1)


@dataclass
class ReplogSystem:
    root: Path
    size: int = 3
    target: str = "replog"
    cluster: ProcessCluster | None = None

    def __enter__(self) -> ReplogSystem:
        self.cluster = ProcessCluster(self.root, size=self.size, extra_args=(), rpc=True)
        self.cluster.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cluster is not None:
            self.cluster.stop_all()

    @property
    def endpoints(self) -> list[str]:
        assert self.cluster is not None
        return self.cluster.endpoints

    def describe(self) -> str:
        return f"replog, {self.size} nodes, `replog serve` default timing, fsync on, --listen-rpc"


@dataclass
class EtcdSystem:
    root: Path
    size: int = 3
    target: str = "etcd"
    endpoints: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, i: int, client_ports: list[int], peer_ports: list[int]) -> list[str]:
        initial = ",".join(f"m{k + 1}=http://127.0.0.1:{p}" for k, p in enumerate(peer_ports))
        client_url = f"http://127.0.0.1:{client_ports[i]}"
        peer_url = f"http://127.0.0.1:{peer_ports[i]}"
        return [
            "etcd", "--name", f"m{i + 1}", "--data-dir", str(self.root / f"m{i + 1}"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", "replog-bench", "--log-level", "warn",
        ]  # fmt: skip

    def __enter__(self) -> EtcdSystem:
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd not found: apt-get install -y etcd-server etcd-client")
        self.root.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * self.size)
        client_ports, peer_ports = ports[: self.size], ports[self.size :]
        for i in range(self.size):
            with open(self.root / f"m{i + 1}.log", "ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        self.command(i, client_ports, peer_ports), stdout=log, stderr=log
                    )
                )
        self.endpoints = [f"http://127.0.0.1:{p}" for p in client_ports]
        _wait(self._has_leader, "an etcd leader", self.root)
        return self

    def _has_leader(self) -> bool:
        leaders = {
            _get_json(url + "/v3/maintenance/status", b"{}")["leader"] for url in self.endpoints
        }
        return len(leaders) == 1 and "0" not in leaders

    def __exit__(self, *exc: object) -> None:
        _stop(self.processes)

    def version(self) -> str:
        out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, check=False)
        return out.stdout.splitlines()[0] if out.stdout else "etcd (version unknown)"

    def describe(self) -> str:
        return f"{self.version()}, {self.size} members, default settings (fsync on)"


@dataclass
class PySyncObjSystem:
    root: Path
    size: int = 3
    journal: bool = True
    batch: bool = True
    target: str = "pysyncobj"
    endpoints: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> PySyncObjSystem:
        self.root.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * self.size)
        raft = [f"127.0.0.1:{p}" for p in ports[: self.size]]
        http = [f"127.0.0.1:{p}" for p in ports[self.size :]]
        for i in range(self.size):
            command = [
                sys.executable, str(HERE / "pysyncobj_server.py"), "--self", raft[i],
                "--partners", ",".join(a for k, a in enumerate(raft) if k != i),
                "--http", http[i],
            ]  # fmt: skip
            if self.journal:
                command += ["--journal-dir", str(self.root / f"p{i + 1}")]
            if not self.batch:
                command.append("--no-batch")
            with open(self.root / f"p{i + 1}.log", "ab") as log:
                self.processes.append(subprocess.Popen(command, stdout=log, stderr=log))
        self.endpoints = [f"http://{a}" for a in http]
        _wait(self._has_leader, "a PySyncObj leader", self.root)
        return self

    def _has_leader(self) -> bool:
        statuses = [_get_json(url + "/status") for url in self.endpoints]
        leaders = {s["leader"] for s in statuses}
        return sum(s["is_leader"] for s in statuses) == 1 and len(leaders) == 1

    def __exit__(self, *exc: object) -> None:
        _stop(self.processes)

    def describe(self) -> str:
        from importlib.metadata import version

        store = "on-disk journal (mmap, never fsynced)" if self.journal else "in memory"
        batch = "batched appends (default)" if self.batch else "appendEntriesUseBatch=False"
        return f"PySyncObj {version('pysyncobj')}, {self.size} processes, {store}, {batch}"
