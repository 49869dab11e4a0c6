"""The local cluster of ``replog dev``: N ``replog serve`` processes on 127.0.0.1, supervised.

Theory of operation. ``plan_cluster`` lays out the nodes: node i (1-based) is ``n<i>``, with
client port ``base + i - 1``, peer port ``base + 100 + i - 1``, data in ``<dir>/n<i>`` and its
output in ``<dir>/n<i>.log`` (moved to ``n<i>.log.1`` at start once over 16 MiB). The plan
is a pure function of (nodes, dir, base port), so a second run with the same arguments starts
the same nodes on the same directories: the children reopen their data and the cluster
resumes.

``Supervisor`` owns the children, and only them: it starts each one in its own process group
(a Ctrl-C in the terminal reaches the supervisor alone), and on Linux asks the kernel to send
the child SIGTERM should the supervisor die, so no orphan keeps a port. Every signal it sends
goes to a child's own PID. Its loop, every ``poll_interval_s``:

- reaps children that exited: prints the exit code and the tail of the log; the others keep
  running; when none is left the loop ends with exit code 1;
- asks each live node for ``GET /v1/status`` (short timeouts, stdlib only) and prints the
  leader whenever it changes (the report with the highest term wins).

``request_stop`` (from a signal handler: it only counts) ends the loop; ``stop_all`` then sends
SIGTERM to every live child, waits up to ``stop_timeout_s`` (a second request cuts the wait
short) and SIGKILLs whatever is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

HOST = "127.0.0.1"
NODES_MAX = 9
PEER_PORT_OFFSET = 100
RPC_PORT_OFFSET = 200
DEFAULT_BASE_PORT = 14300
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 64 << 10
LOG_ROTATE_BYTES = 16 << 20  # at start, a bigger log moves to <log>.1 (one old log is kept)
STATUS_BYTES_MAX = 1 << 20
USER_AGENT = "replog-dev"  # the supervisor's status polls, left out of the log tails it shows
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str
    client_port: int
    peer_port: int
    data_dir: str
    log_path: str
    rpc_port: int = 0  # 0: no binary client protocol

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_address(self) -> str:
        return f"{HOST}:{self.peer_port}"


def plan_cluster(nodes: int, data_dir: str, base_port: int) -> tuple[NodePlan, ...]:
    """The nodes of a local cluster; raises ValueError for a size or port out of range."""
    if not 1 <= nodes <= NODES_MAX:
        raise ValueError(f"--nodes must be between 1 and {NODES_MAX}, not {nodes}")
    top = base_port + RPC_PORT_OFFSET + nodes - 1
    if base_port < 1 or top > 65535:
        raise ValueError(
            f"--base-port {base_port} puts ports outside 1-65535 (the highest would be {top})"
        )
    return tuple(
        NodePlan(
            name=f"n{i}",
            client_port=base_port + i - 1,
            peer_port=base_port + PEER_PORT_OFFSET + i - 1,
            rpc_port=base_port + RPC_PORT_OFFSET + i - 1,
            data_dir=os.path.join(data_dir, f"n{i}"),
            log_path=os.path.join(data_dir, f"n{i}.log"),
        )
        for i in range(1, nodes + 1)
    )


def serve_args(node: NodePlan, cluster: Sequence[NodePlan]) -> list[str]:
    """The ``replog serve`` arguments of one node (after the program name)."""
    members = ",".join(f"{n.name}={n.peer_address}" for n in cluster)
    rpc = ["--listen-rpc", f"{HOST}:{node.rpc_port}"] if node.rpc_port else []
    return [
        "serve",
        "--name", node.name,
        "--data-dir", node.data_dir,
        "--listen-client", f"{HOST}:{node.client_port}",
        "--listen-peer", node.peer_address,
        *rpc,
        "--initial-cluster", members,
    ]  # fmt: skip


def serve_argv(node: NodePlan, cluster: Sequence[NodePlan]) -> list[str]:
    """The command line the supervisor runs: this Python, ``-m replog serve ...``."""
    return [sys.executable, "-m", "replog", *serve_args(node, cluster)]


def serve_command_line(node: NodePlan, cluster: Sequence[NodePlan]) -> str:
    """The same as a shell line, as a person would type it (``replog dev --print-only``)."""
    return shlex.join(["replog", *serve_args(node, cluster)])


def ports_in_use(cluster: Sequence[NodePlan]) -> list[str]:
    """One message per planned port that cannot be bound now."""
    taken: list[str] = []
    for node in cluster:
        ports = ((node.client_port, "client"), (node.peer_port, "peer"), (node.rpc_port, "rpc"))
        for port, role in ports:
            if not port:
                continue
            error = _bind_error(port)
            if error is not None:
                taken.append(
                    f"port {port} ({role} port of {node.name}) on {HOST} is not free: {error}"
                )
    return taken


def _bind_error(port: int) -> str | None:
    """Binds as the servers do (SO_REUSEADDR, so sockets in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            return error.strerror or str(error)
    return None


# --------------------------------------------------------------------------------------------
# Asking nodes who leads.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leader:
    name: str
    term: int


def fetch_leader(url: str, timeout_s: float) -> Leader | None:
    """The leader a node reports in its cluster header (``/v1/status``), if it knows one."""
    try:
        request = urllib.request.Request(f"{url}/v1/status", headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(STATUS_BYTES_MAX)
    except urllib.error.HTTPError as error:  # a 503 still carries the header
        body = error.read(STATUS_BYTES_MAX)
        error.close()
    except (OSError, ValueError):
        return None
    return _leader_in(body)


def _leader_in(body: bytes) -> Leader | None:
    try:
        header = json.loads(body)["header"]
        name, term = header["leader_id"], header["term"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(name, str) or not isinstance(term, int) or isinstance(term, bool):
        return None
    return Leader(name, term)


def newest_leader(reports: Sequence[Leader | None]) -> Leader | None:
    known = [r for r in reports if r is not None]
    return max(known, key=lambda r: r.term) if known else None


# --------------------------------------------------------------------------------------------
# The supervisor.
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Child:
    node: NodePlan
    process: subprocess.Popen[bytes]
    exit_code: int | None = None


@dataclass(slots=True)
class Supervisor:
    cluster: Sequence[NodePlan]
    argv_for: Callable[[NodePlan, Sequence[NodePlan]], list[str]] = serve_argv
    out: Callable[[str], None] = print
    poll_interval_s: float = 1.0
    status_timeout_s: float = 0.5
    stop_timeout_s: float = 10.0
    stop_requests: int = 0
    _children: list[_Child] = field(default_factory=list)
    _leader: Leader | None = None

    def request_stop(self) -> None:
        """Safe in a signal handler: it only counts."""
        self.stop_requests += 1

    def start(self) -> None:
        for node in self.cluster:
            os.makedirs(os.path.dirname(node.log_path) or ".", exist_ok=True)
            argv = self.argv_for(node, self.cluster)
            rotate_log(node.log_path, LOG_ROTATE_BYTES)
            with open(node.log_path, "ab") as log:
                stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
                log.write(
                    f"=== {stamp} replog dev starts {node.name}: {shlex.join(argv)}\n".encode()
                )
                log.flush()
                process = _spawn(argv, log)
            self._children.append(_Child(node, process))

    @property
    def exit_codes(self) -> dict[str, int | None]:
        """Each started node's exit code (negative: killed by that signal), None if running."""
        return {c.node.name: c.exit_code for c in self._children}

    @property
    def alive(self) -> list[_Child]:
        return [c for c in self._children if c.exit_code is None]

    def run(self) -> int:
        """Watch until a stop request (exit code 0) or until every child died (1)."""
        self.out("waiting for a leader ...")
        while self.stop_requests == 0:
            self._reap()
            if not self.alive:
                self.out("all nodes have exited; see their logs above")
                return 1
            self._watch_leader()
            self._sleep(self.poll_interval_s)
        return 0

    def stop_all(self) -> None:
        """SIGTERM every live child, wait, then SIGKILL what is left."""
        live = self.alive
        if not live:
            return
        names = ", ".join(c.node.name for c in live)
        self.out(f"stopping {names} ...")
        requests = self.stop_requests
        for child in live:
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        while any(c.process.poll() is None for c in live):
            if time.monotonic() >= deadline or self.stop_requests > max(requests, 1):
                break
            time.sleep(0.05)
        for child in live:
            if child.process.poll() is None:
                self.out(f"{child.node.name} did not stop in time: SIGKILL")
                _signal(child, signal.SIGKILL)
            child.exit_code = child.process.wait()
        self.out("stopped")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.stop_requests == 0 and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _reap(self) -> None:
        for child in self.alive:
            code = child.process.poll()
            if code is not None:
                child.exit_code = code
                self._report_death(child, code)

    def _report_death(self, child: _Child, code: int) -> None:
        node = child.node
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        self.out(f"{node.name} {how} unexpectedly; last lines of its log {node.log_path}:")
        for line in tail_lines(node.log_path, LOG_TAIL_LINES):
            self.out(f"  | {line}")
        up, total = len(self.alive), len(self._children)
        if up == 0:
            return
        if up > total // 2:
            self.out(
                f"hint: the other nodes keep running ({up} of {total} up, a majority: the "
                f"cluster still serves); press Ctrl-C and run replog dev again to restart "
                f"{node.name}"
            )
        else:
            self.out(
                f"hint: only {up} of {total} nodes are up, no majority: the cluster cannot "
                "commit; press Ctrl-C, fix the cause shown in the logs and run replog dev again"
            )

    def _watch_leader(self) -> None:
        reports: list[Leader | None] = []
        for child in self.alive:
            if self.stop_requests:
                return
            reports.append(fetch_leader(child.node.client_url, self.status_timeout_s))
        leader = newest_leader(reports)
        if leader == self._leader:
            return
        if leader is not None:
            self.out(f"leader: {leader.name} (term {leader.term})")
        else:
            self.out("leader: none known (election in progress?)")
        self._leader = leader


def rotate_log(path: str, limit_bytes: int) -> None:
    """Bounds a node's log across runs: over ``limit_bytes`` it replaces ``<path>.1``."""
    try:
        if os.path.getsize(path) > limit_bytes:
            os.replace(path, path + ".1")
    except FileNotFoundError:
        pass


def tail_lines(path: str, count: int) -> list[str]:
    """The last ``count`` lines of a file (reading at most its last 64 KiB), without the access
    log lines of the supervisor's own status polls."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            data = handle.read(LOG_TAIL_BYTES)
    except OSError as error:
        return [f"(cannot read {path}: {error.strerror or error})"]
    lines = data.decode("utf-8", "replace").splitlines()
    return [line for line in lines if USER_AGENT not in line][-count:]


def _spawn(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        process_group=0,
        preexec_fn=_die_with_parent(),  # noqa: PLW1509 (the supervisor starts no threads)
    )


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux: the kernel sends the child SIGTERM when the supervisor dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc: Any = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return set_death_signal


def _signal(child: _Child, signum: signal.Signals) -> None:
    """Signal one child by its PID, unless it was already reaped."""
    if child.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signum)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
