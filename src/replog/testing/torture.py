"""Real-process fault runs (``replog torture``): real processes, sockets, disks and signals.

Theory of operation. ``run_torture`` starts a cluster of ``replog serve`` processes on 127.0.0.1
(``TortureCluster``, on ``ProcessCluster``) whose peer links all go through a userspace proxy
(``PeerProxy``, one port per directed link, so partitions of any shape can be made without
privileges), drives client threads of the chosen workloads
(``replog.testing.torture_workloads``) while a ``Nemesis`` injects the seeded fault schedule
(``replog.testing.torture_faults``), then heals everything, lets the cluster settle, reads the
final state from every node and checks each workload's history. Clients speak HTTP
(``replog.Client``), the binary protocol (``RpcTortureClient`` over ``replog.RpcClient``) or, by
default, both: within each workload every other client uses RPC, alternating between workloads
so that both protocols have pinned and roaming clients (``TortureConfig.protocol``; the report's
``clients`` says who used which). The setup and the final reads use HTTP. Everything of a run
lands in one folder: ``<workload>.jsonl`` histories, ``faults.jsonl``, ``n<i>.log`` node logs
and ``report.json``. With ``clock`` faults (and libfaketime installed) every node runs under
libfaketime with a per-node offset file, and lease reads are on.

Time: the run's clock is ``time.monotonic()`` minus the start, shared by every thread of the
harness; the nodes' own clocks are theirs (and faked under ``clock``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from replog.client import Client, ReplogClientError
from replog.testing.processes import ProcessCluster, request
from replog.testing.torture_faults import FAULT_KINDS, FaultStep, Nemesis, make_schedule
from replog.testing.torture_proxy import LinkMode, PeerProxy
from replog.testing.torture_workloads import (
    PROTOCOLS,
    WORKLOADS,
    AppendWorkload,
    BankWorkload,
    ClientContext,
    FailoverClock,
    RegisterWorkload,
    RpcTortureClient,
    TortureClient,
    Workload,
)

FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)
TIMING = (
    "--tick-ms", "10", "--heartbeat-ms", "50", "--election-timeout-ms", "500",
    "--snapshot-entries", "500", "--snapshot-keep-entries", "50",
    "--request-timeout-ms", "3000",
)  # fmt: skip
CLIENT_TIMEOUT_S = 2.0
# An RPC call is one attempt: its timeout covers the node's own request timeout (3 s, TIMING),
# so a node that is alive answers (ok, unavailable or unknown_outcome) before the client gives up.
RPC_TIMEOUT_S = 4.0
RPC_CONNECT_TIMEOUT_S = 1.0
PROTOCOL_CHOICES = (*PROTOCOLS, "both")
CLIENT_RETRY_S = 4.0
CLIENT_PAUSE_S = 0.01
SETTLE_TIMEOUT_S = 60.0
CLIENTS_MAX = 64
LOG_TAIL_CHARS = 3000
EXITS_MAX = 20


def find_faketime() -> str | None:
    """The libfaketime library, if installed (Debian: ``apt-get install faketime``)."""
    env = os.environ.get("REPLOG_FAKETIME_LIB")
    for path in (env, *FAKETIME_LIBS):
        if path and Path(path).is_file():
            return path
    return None


@dataclass(frozen=True)
class TortureConfig:
    nodes: int = 3
    duration_s: float = 30.0
    seed: int = 0
    workloads: tuple[str, ...] = WORKLOADS
    faults: tuple[str, ...] = ("kill", "pause", "partition", "crash-all")
    clients: int = 4  # per workload
    out: Path = Path("torture-out")
    # "fail" trusts the client's contract: a write that raised Unavailable was not applied.
    # "info" records writes that raised Unavailable with code "unreachable" (no node answered
    # in time) as unknown: a way around a client that breaks that promise when the node it
    # sent a write to dies (tests/torture/test_torture_known_bugs.py).
    unreachable_writes: str = "fail"
    # "http", "rpc", or "both": alternate clients of every workload use the binary protocol.
    protocol: str = "both"

    def __post_init__(self) -> None:
        if self.nodes not in (3, 5):
            raise ValueError(f"nodes must be 3 or 5, got {self.nodes}")
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be positive, got {self.duration_s}")
        if not 1 <= self.clients <= CLIENTS_MAX:
            raise ValueError(f"clients must be in 1..{CLIENTS_MAX}, got {self.clients}")
        if not self.workloads or not set(self.workloads) <= set(WORKLOADS):
            raise ValueError(f"workloads must be among {WORKLOADS}: {self.workloads}")
        if not set(self.faults) <= set(FAULT_KINDS):
            raise ValueError(f"faults must be among {FAULT_KINDS}: {self.faults}")
        if self.unreachable_writes not in ("fail", "info"):
            raise ValueError(f"unreachable_writes must be fail or info: {self.unreachable_writes}")
        if self.protocol not in PROTOCOL_CHOICES:
            raise ValueError(f"protocol must be one of {PROTOCOL_CHOICES}: {self.protocol}")

    def client_protocol(self, workload_index: int, client_index: int) -> str:
        """The protocol of one client: with "both", every other one, shifted per workload."""
        if self.protocol != "both":
            return self.protocol
        return PROTOCOLS[(workload_index + client_index) % 2]


@dataclass
class TortureReport:
    out: Path
    seed: int
    nodes: int
    duration_s: float
    ops: dict[str, dict[str, int]] = field(default_factory=dict)
    ops_by_protocol: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    clients: list[dict[str, Any]] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    failover: dict[str, Any] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    schedule: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(self.problems.values())

    @property
    def operations(self) -> int:
        return sum(sum(counts.values()) for counts in self.ops.values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["clean"] = self.clean
        data["operations"] = self.operations
        return data


class TortureCluster:
    """A ``ProcessCluster`` whose peer links run through a ``PeerProxy``, with a fake clock."""

    def __init__(
        self, root: Path, size: int, *, faketime: str | None, lease: bool, rpc: bool = False
    ) -> None:
        self.proxy = PeerProxy()
        extra = (*TIMING, "--lease-reads") if lease else TIMING
        self.processes = ProcessCluster(
            root, size, extra_args=extra, peer_address=self._address, rpc=rpc
        )
        self.names = list(self.processes.nodes)
        self.paused: set[str] = set()
        self.clock_offsets_s = dict.fromkeys(self.names, 0.0)
        self.faketime = faketime
        self.exits: list[str] = []
        self._noted: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        for src in self.names:
            for dst in self.names:
                if src != dst:
                    port = self.processes.nodes[dst].peer_port
                    self.proxy.add_link(src, dst, port)
        if faketime is not None:
            for name in self.names:
                self._write_offset(name)
                self.processes.node_env[name] = {
                    "LD_PRELOAD": faketime,
                    "FAKETIME_TIMESTAMP_FILE": str(self._offset_path(name)),
                    "FAKETIME_NO_CACHE": "0",
                    "FAKETIME_CACHE_DURATION": "1",
                }

    def _address(self, src: str, dst: str) -> str:
        return f"127.0.0.1:{self.proxy.port(src, dst)}"

    def _offset_path(self, name: str) -> Path:
        return self.processes.root / f"{name}.faketime"

    def _write_offset(self, name: str) -> None:
        self.processes.root.mkdir(parents=True, exist_ok=True)
        self._offset_path(name).write_text(f"+{self.clock_offsets_s[name]:.3f}\n")

    def endpoint(self, name: str) -> str:
        return self.processes.nodes[name].url

    def rpc_endpoint(self, name: str) -> str:
        address = self.processes.nodes[name].rpc_address
        assert address is not None, "the cluster was made with rpc=True"
        return address

    def start(self) -> None:
        self.processes.start(wait=False)
        self.wait_for_leader()

    def leader(self) -> tuple[str, int] | None:
        """The node that says it leads in the highest term, with that term (paused ones skipped)."""
        best: tuple[int, str] | None = None
        for name in self.names:
            if name in self.paused or not self.processes.nodes[name].running:
                continue
            try:
                code, body = request("GET", self.endpoint(name) + "/v1/status", timeout_s=0.5)
            except OSError:
                continue
            if code != 200 or not isinstance(body, dict):
                continue
            node = body.get("node", {})
            if node.get("role") == "leader" and (best is None or node["term"] > best[0]):
                best = (node["term"], name)
        return None if best is None else (best[1], best[0])

    def wait_for_leader(self, timeout_s: float = SETTLE_TIMEOUT_S) -> tuple[str, int]:
        deadline = time.monotonic() + timeout_s
        while (leader := self.leader()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no leader within {timeout_s}s; logs in {self.processes.root}")
            self._check_exits()
            time.sleep(0.1)
        return leader

    def _check_exits(self) -> None:
        """Raise if a node exited on its own while we wait for a leader."""
        self.note_exits()
        if self.exits:
            raise RuntimeError(self.exits[-1])

    def note_exits(self) -> None:
        """Record every node that exited on its own (not by our SIGKILL): a crash is a bug."""
        for node in self.processes.nodes.values():
            process = node.process
            code = None if process is None else process.poll()
            if process is None or code is None or code == -signal.SIGKILL:
                continue
            if process in self._noted:
                continue
            self._noted.add(process)
            tail = node.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
            if len(self.exits) < EXITS_MAX:
                self.exits.append(f"{node.name} exited on its own with {code}; log tail:\n{tail}")

    def kill(self, name: str) -> None:
        with self._lock:
            self.paused.discard(name)
            self.processes.kill(name)

    def restart(self, name: str) -> None:
        with self._lock:
            self.note_exits()
            if not self.processes.nodes[name].running:
                self.processes.start_node(name, wait=False)

    def pause(self, name: str) -> None:
        with self._lock:
            if self.processes.nodes[name].running:
                self.processes.signal_node(name, signal.SIGSTOP)
                self.paused.add(name)

    def resume(self, name: str) -> None:
        with self._lock:
            if name in self.paused and self.processes.nodes[name].running:
                self.processes.signal_node(name, signal.SIGCONT)
            self.paused.discard(name)

    def set_link(self, src: str, dst: str, mode: str, delay_ms: int) -> None:
        assert mode in ("pass", "drop", "cut"), mode
        link_mode: LinkMode = "pass" if mode == "pass" else "drop" if mode == "drop" else "cut"
        self.proxy.set_link(src, dst, link_mode, delay_ms)

    def heal_links(self) -> None:
        self.proxy.heal_all()

    def jump_clock(self, name: str, jump_s: float) -> bool:
        if self.faketime is None:
            return False
        self.clock_offsets_s[name] += jump_s
        self._write_offset(name)
        return True

    def heal_all(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        self.heal_links()
        for name in self.names:
            self.restart(name)

    def close(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        self.note_exits()
        self.processes.stop_all()
        self.proxy.close()


class _Run:
    """One run's moving parts: the clock, the cluster, the workloads, the client threads."""

    def __init__(self, config: TortureConfig, report: TortureReport) -> None:
        self.config = config
        self.report = report
        self.started_s = time.monotonic()
        self.stop = threading.Event()
        self.failover = FailoverClock(self.clock)
        faketime = find_faketime() if "clock" in config.faults else None
        if "clock" in config.faults and faketime is None:
            report.notes.append(
                "clock faults skipped: libfaketime not found (apt-get install faketime)"
            )
        self.lease = faketime is not None
        self.cluster = TortureCluster(
            config.out,
            config.nodes,
            faketime=faketime,
            lease=self.lease,
            rpc=config.protocol != "http",
        )
        self.workloads = [self._workload(name) for name in config.workloads]
        for workload in self.workloads:
            workload.unreachable_is_info = config.unreachable_writes == "info"
        if config.unreachable_writes == "info":
            report.notes.append("writes that failed as unreachable were recorded as info")
        self.threads: list[threading.Thread] = []
        self.client_errors: list[str] = []

    def clock(self) -> float:
        return time.monotonic() - self.started_s

    def _workload(self, name: str) -> Workload:
        out, clock, failover = self.config.out, self.clock, self.failover
        if name == "register":
            return RegisterWorkload(out, clock, failover, lease=self.lease)
        if name == "bank":
            return BankWorkload(out, clock, failover)
        return AppendWorkload(out, clock, failover)

    def client(self, endpoints: list[str], retry_s: float = CLIENT_RETRY_S) -> Client:
        return Client(endpoints, timeout_s=CLIENT_TIMEOUT_S, retry_timeout_s=retry_s)

    def setup(self) -> None:
        self.cluster.start()
        all_endpoints = [self.cluster.endpoint(n) for n in self.cluster.names]
        with self.client(all_endpoints, retry_s=SETTLE_TIMEOUT_S) as client:
            for workload in self.workloads:
                workload.setup(client)

    def torture_client(self, protocol: str, pinned: str | None) -> TortureClient:
        """A workload client: pinned to one node's endpoint, or roaming over all of them."""
        names = [pinned] if pinned else self.cluster.names
        if protocol == "rpc":
            endpoints = [self.cluster.rpc_endpoint(n) for n in names]
            return RpcTortureClient(
                endpoints, timeout_s=RPC_TIMEOUT_S, connect_timeout_s=RPC_CONNECT_TIMEOUT_S
            )
        return self.client([self.cluster.endpoint(n) for n in names])

    def start_clients(self) -> None:
        names = self.cluster.names
        process = 0
        for w_index, workload in enumerate(self.workloads):
            for c in range(self.config.clients):
                # every client but the last of each workload is pinned to one node, in turn
                roams = c == self.config.clients - 1 and self.config.clients > 1
                pinned = None if roams else names[process % len(names)]
                protocol = self.config.client_protocol(w_index, c)
                workload.history.protocols[process] = protocol
                self.report.clients.append(
                    {
                        "process": process,
                        "workload": workload.name,
                        "protocol": protocol,
                        "pinned": pinned or "roaming",
                    }
                )
                rng = random.Random(self.config.seed * 1000 + w_index * 100 + c)
                client = self.torture_client(protocol, pinned)
                ctx = ClientContext(process, client, rng, pinned, protocol)
                thread = threading.Thread(target=self._drive, args=(workload, ctx), daemon=True)
                self.threads.append(thread)
                process += 1
        for thread in self.threads:
            thread.start()

    def _drive(self, workload: Workload, ctx: ClientContext) -> None:
        try:
            while not self.stop.is_set():
                workload.step(ctx)
                self.stop.wait(CLIENT_PAUSE_S)
        except Exception as error:  # a harness bug or an unexpected answer: report it
            self.client_errors.append(f"{workload.name} client {ctx.process}: {error!r}")
        finally:
            ctx.client.close()

    def stop_clients(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def finish(self) -> None:
        """Settle after healing, then read the final state through every node."""
        self.cluster.wait_for_leader()
        clients = [
            (name, self.client([self.cluster.endpoint(name)], retry_s=SETTLE_TIMEOUT_S))
            for name in self.cluster.names
        ]
        try:
            for workload in self.workloads:
                workload.final(clients)
        finally:
            for _, client in clients:
                client.close()


def run_torture(config: TortureConfig) -> TortureReport:
    """Run one torture run (see the module docstring); the report says whether it was clean."""
    config.out.mkdir(parents=True, exist_ok=True)
    kinds = config.faults
    if "clock" in kinds and find_faketime() is None:
        kinds = tuple(k for k in kinds if k != "clock")
    steps = make_schedule(config.seed, kinds, config.duration_s, config.nodes)
    report = TortureReport(config.out, config.seed, config.nodes, config.duration_s)
    report.schedule = [step.to_json() for step in steps]
    run = _Run(config, report)
    try:
        _execute(run, steps)
    except (TimeoutError, RuntimeError, OSError, ReplogClientError) as error:
        report.problems["run"] = [f"the run stopped early: {error}"]
    finally:
        run.stop.set()
        run.stop_clients()
        run.cluster.close()
    for workload in run.workloads:
        report.problems[workload.name] = workload.check()
        report.verdicts[workload.name] = workload.verdict
        report.ops[workload.name] = dict(workload.history.counts)
        report.ops_by_protocol[workload.name] = dict(
            sorted(workload.history.counts_by_protocol.items())
        )
    if run.client_errors:
        report.problems["harness"] = run.client_errors[:20]
    if run.cluster.exits:
        report.problems["crashes"] = run.cluster.exits
    report.failover = run.failover.summary()
    (config.out / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def _execute(run: _Run, steps: list[FaultStep]) -> None:
    run.setup()
    run.started_s = time.monotonic()  # the schedule counts from the first client operation
    nemesis = Nemesis(
        run.cluster,
        steps,
        run.clock,
        run.config.out / "faults.jsonl",
        run.failover.leader_killed,
    )
    run.start_clients()
    nemesis.start()
    try:
        run.stop.wait(run.config.duration_s)
    finally:
        nemesis.stop()
        run.stop_clients()
    run.report.faults = dict(sorted(nemesis.counts.items()))
    if nemesis.errors:
        run.report.problems["nemesis"] = nemesis.errors[:20]
    try:
        run.finish()
    except (TimeoutError, RuntimeError, ReplogClientError) as error:
        run.report.problems["settle"] = [f"the cluster did not settle after healing: {error}"]
