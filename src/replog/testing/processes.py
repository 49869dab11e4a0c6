"""A cluster of real ``replog serve`` processes on loopback, for tests and fault runs.

Each node is a separate process with its own data directory and log file; the harness starts,
kills (SIGKILL), pauses (SIGSTOP/SIGCONT), stops (SIGTERM) and restarts them by PID, never by
name. Ports are picked free at construction. ``request`` is a small blocking HTTP helper that
returns the status and the decoded JSON body, so tests read like transcripts.

Two hooks serve fault runs (``replog.testing.torture``): ``peer_address(src, dst)`` gives the
address node ``src`` dials to send to ``dst`` (a proxy port for that directed link; by default
``dst``'s own peer address), and ``node_env`` adds environment variables per node (e.g. a fake
clock). Only a node's own entry of its ``--initial-cluster`` must be its real peer address.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAST_TIMING = ("--tick-ms", "5", "--heartbeat-ms", "25", "--election-timeout-ms", "250")


def free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1 (held together while picked, so all differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def request(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, Any]:
    """One HTTP request; (status, JSON body or raw text). Connection errors raise OSError."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class ProcessNode:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    rpc_port: int = 0  # 0: the binary client protocol is off

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def rpc_address(self) -> str | None:
        return f"127.0.0.1:{self.rpc_port}" if self.rpc_port else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class ProcessCluster:
    """``size`` nodes named n1..nN under ``root``; call ``start()`` (or use ``with``)."""

    root: Path
    size: int = 3
    extra_args: tuple[str, ...] = FAST_TIMING
    nodes: dict[str, ProcessNode] = field(default_factory=dict)
    peer_address: Callable[[str, str], str] | None = None
    node_env: dict[str, dict[str, str]] = field(default_factory=dict)
    rpc: bool = False  # serve the binary client protocol too (--listen-rpc)

    def __post_init__(self) -> None:
        ports = free_ports(3 * self.size)
        for i in range(self.size):
            name = f"n{i + 1}"
            self.nodes[name] = ProcessNode(
                name, ports[i], ports[self.size + i], self.root / name, self.root / f"{name}.log"
            )
            if self.rpc:
                self.nodes[name].rpc_port = ports[2 * self.size + i]

    def __enter__(self) -> ProcessCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    @property
    def endpoints(self) -> list[str]:
        return [node.url for node in self.nodes.values()]

    @property
    def rpc_endpoints(self) -> list[str]:
        return [node.rpc_address for node in self.nodes.values() if node.rpc_address]

    def command(self, name: str) -> list[str]:
        node = self.nodes[name]
        initial = ",".join(
            f"{n.name}={self.address_for(name, n.name)}" for n in self.nodes.values()
        )
        return [
            sys.executable, "-m", "replog", "serve",
            "--name", name,
            "--data-dir", str(node.data_dir),
            "--listen-client", f"127.0.0.1:{node.client_port}",
            "--listen-peer", f"127.0.0.1:{node.peer_port}",
            *(["--listen-rpc", node.rpc_address] if node.rpc_address else []),
            "--initial-cluster", initial,
            *self.extra_args,
        ]  # fmt: skip

    def address_for(self, src: str, dst: str) -> str:
        """The peer address ``src`` dials to reach ``dst`` (its own real one for ``src == dst``)."""
        if src == dst or self.peer_address is None:
            return f"127.0.0.1:{self.nodes[dst].peer_port}"
        return self.peer_address(src, dst)

    def start(self, wait: bool = True) -> None:
        for name in self.nodes:
            self.start_node(name, wait=False)
        if wait:
            self.wait_for_leader()

    def start_node(self, name: str, wait: bool = True) -> None:
        node = self.nodes[name]
        assert not node.running, f"{name} is already running"
        self.root.mkdir(parents=True, exist_ok=True)
        with open(node.log_path, "ab") as log_file:
            node.process = subprocess.Popen(
                self.command(name), stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.node_env.get(name, {})},
            )  # fmt: skip
        if wait:
            self.wait_until(lambda: self.status(name) is not None, f"{name} to serve")

    def signal_node(self, name: str, signum: signal.Signals) -> None:
        process = self.nodes[name].process
        assert process is not None
        process.send_signal(signum)

    def kill(self, name: str) -> None:
        node = self.nodes[name]
        if node.running:
            assert node.process is not None
            node.process.kill()
            node.process.wait(timeout=10)

    def stop(self, name: str, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait; SIGKILL after ``timeout_s``. Returns the exit code."""
        process = self.nodes[name].process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                return process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait(timeout=10)

    def stop_all(self) -> None:
        for name in self.nodes:
            self.stop(name)

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            code, body = request("GET", self.nodes[name].url + "/v1/status", timeout_s=2)
        except OSError:
            return None
        return body if code == 200 and isinstance(body, dict) else None

    def leader(self) -> str | None:
        """The leader that every running node agrees on, if any."""
        seen = set()
        for name, node in self.nodes.items():
            if node.running:
                status = self.status(name)
                seen.add(status["header"]["leader_id"] if status else None)
        if len(seen) == 1:
            return seen.pop()
        return None

    def wait_for_leader(self, timeout_s: float = 20.0) -> str:
        self.wait_until(lambda: self.leader() is not None, "a leader", timeout_s)
        leader = self.leader()
        assert leader is not None
        return leader

    def wait_until(self, predicate: Any, what: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}; logs in {self.root}")
            for node in self.nodes.values():
                if node.process is not None and node.process.poll() not in (None, 0, -9, -15):
                    tail = node.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{node.name} exited with {node.process.poll()}:\n{tail}")
            time.sleep(0.05)
