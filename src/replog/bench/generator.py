"""The load generator: spreads clients over worker processes, starts them together, merges.

What it owns: the life of one benchmark run. ``run_bench`` resolves where clients send
(every endpoint round-robin by client, or only the leader found through the target's status
call), optionally preloads the key space (so reads find their keys), then starts ``processes``
workers (``python -m replog.bench.worker``, spawned fresh, spoken to in JSON lines; nothing is
pickled), waits until all are ready, tells them all to go at once, follows their progress and
merges their results into a ``Report``.

Two protocols: ``http`` (the API of docs/http-api.md, every target) and ``rpc`` (replog's
binary client protocol, ``replog.protocol``). With ``rpc`` each endpoint chosen above is asked
once, before any worker starts, for its node's RPC address (``rpc_address`` in
``GET /v1/status``); workers are given those addresses instead of the URLs, and each opens
``connections_per_process`` connections per node it was given (fewer when it has fewer clients
for that node), its clients dealt over them round-robin.

Invariants: clients are dealt to processes as evenly as possible (sizes differ by at most one)
and client ``i`` talks to ``urls[i % len(urls)]`` whatever process it is in; an operation count
is split in proportion to each process's clients; every worker is killed (by its own PID) when
the run ends early, so none outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from replog.bench.report import Report, merge_results
from replog.bench.targets import adapter
from replog.bench.workloads import PROCESSES_MAX, Workload

__all__ = [
    "PROTOCOLS",
    "BenchConfig",
    "BenchError",
    "deal",
    "rpc_addresses",
    "run_bench",
    "run_bench_async",
]

SendTo = Literal["all", "leader", "followers"]
Protocol = Literal["http", "rpc"]
PROTOCOLS: tuple[Protocol, ...] = ("http", "rpc")
CONNECTIONS_PER_PROCESS_MAX = 64
WORKER_LINE_MAX_BYTES = 8 * 1024 * 1024
WORKER_STDERR_MAX_CHARS = 4000
LEADER_WAIT_S = 15.0
ProgressCallback = Callable[[int, int, float], None]


class BenchError(Exception):
    """The benchmark could not run (bad target, no leader, a worker died)."""


@dataclass(frozen=True)
class BenchConfig:
    """One run: what to send (``workload``), where (``target``, ``endpoints``), from how many
    processes (default: one per CPU, at most one per client), over which ``protocol``."""

    endpoints: tuple[str, ...]
    workload: Workload
    target: str = "replog"
    processes: int | None = None
    send_to: SendTo = "all"
    preload: bool = True
    seed: int = 0
    leader_wait_s: float = LEADER_WAIT_S
    protocol: Protocol = "http"
    connections_per_process: int = 4
    idempotency_keys: bool = False  # every put carries one, as the Python clients send them

    def __post_init__(self) -> None:
        adapter(self.target)  # raises ValueError for an unknown target
        if not 1 <= len(self.endpoints) <= 64:
            raise ValueError("give 1 to 64 endpoints")
        if self.processes is not None and not 1 <= self.processes <= PROCESSES_MAX:
            raise ValueError(f"processes must be 1..{PROCESSES_MAX}")
        if self.send_to not in ("all", "leader", "followers"):
            raise ValueError("send to 'all', 'leader' or 'followers'")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if self.protocol == "rpc" and self.target != "replog":
            raise ValueError("the rpc protocol is replog's own: use it with target replog only")
        if self.idempotency_keys and self.target != "replog":
            raise ValueError("idempotency keys are replog's: use them with target replog only")
        if not 1 <= self.connections_per_process <= CONNECTIONS_PER_PROCESS_MAX:
            raise ValueError(f"connections per process must be 1..{CONNECTIONS_PER_PROCESS_MAX}")

    @property
    def process_count(self) -> int:
        wanted = self.processes if self.processes is not None else (os.cpu_count() or 1)
        return max(1, min(wanted, self.workload.clients))


def deal(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` sizes differing by at most one (larger ones first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def find_leader(target: str, endpoints: tuple[str, ...], wait_s: float = LEADER_WAIT_S) -> str:
    """The endpoint whose node says it leads; retried until ``wait_s`` passes."""
    probe = adapter(target).leader_probe()
    deadline = time.monotonic() + wait_s
    while True:
        for url in endpoints:
            request = urllib.request.Request(url + probe.path, data=probe.body, method=probe.method)
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if adapter(target).is_leader(response.read()):
                        return url
            except (OSError, ValueError, KeyError, TypeError):
                continue
        if time.monotonic() > deadline:
            raise BenchError(f"no leader found among {', '.join(endpoints)}")
        time.sleep(0.1)


def chosen_endpoints(send_to: SendTo, endpoints: tuple[str, ...], leader: str) -> tuple[str, ...]:
    """The endpoints the clients are dealt over, given the leader's."""
    if send_to == "leader":
        return (leader,)
    if send_to == "all":
        return endpoints
    followers = tuple(url for url in endpoints if url != leader)
    if not followers:
        raise BenchError(f"no follower among {', '.join(endpoints)}: give more endpoints")
    return followers


def rpc_address(url: str, timeout_s: float = 5.0) -> str:
    """The ``host:port`` where the node at ``url`` serves the binary protocol."""
    try:
        with urllib.request.urlopen(url + "/v1/status", timeout=timeout_s) as response:
            document = json.loads(response.read())
    except (OSError, ValueError) as error:
        raise BenchError(f"cannot ask {url} for its RPC address: {error}") from None
    address = document.get("rpc_address") if isinstance(document, dict) else None
    if not isinstance(address, str) or not address:
        raise BenchError(
            f"the node at {url} has no RPC address (start it with --listen-rpc HOST:PORT)"
        )
    return address


def rpc_addresses(urls: tuple[str, ...]) -> tuple[str, ...]:
    """Each URL's node's RPC address, in the same order."""
    found = {url: rpc_address(url) for url in dict.fromkeys(urls)}
    return tuple(found[url] for url in urls)


def _jobs(config: BenchConfig, urls: tuple[str, ...], preload: bool) -> list[dict[str, Any]]:
    workload = config.workload
    processes = config.process_count
    if preload:
        workload = replace(workload, name="put", duration_s=None, count=workload.key_space)
    sizes = deal(workload.clients, processes)
    counts = deal(workload.count, processes) if workload.count is not None else None
    jobs, first = [], 0
    for i, size in enumerate(sizes):
        job: dict[str, Any] = {
            "workload": workload.to_json(),
            "target": config.target,
            "urls": [urls[(first + k) % len(urls)] for k in range(size)],
            "seed": config.seed * 1_000_003 + i + (7919 if preload else 0),
            "count": None if counts is None else counts[i],
            "protocol": config.protocol,
            "connections": config.connections_per_process,
            "idempotency_keys": config.idempotency_keys,
        }
        if preload:
            job.update(preload_start=i, preload_step=processes)
        jobs.append(job)
        first += size
    return jobs


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.ok = 0
        self.failed = 0
        self.result: dict[str, Any] | None = None
        self.stderr = b""

    async def read_line(self) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        return json.loads(line) if line else None

    async def drain_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self.stderr = (self.stderr + chunk)[-WORKER_STDERR_MAX_CHARS:]

    def failure(self) -> BenchError:
        text = self.stderr.decode(errors="replace").strip()
        return BenchError(f"a generator process failed (exit {self.process.returncode}): {text}")


async def _spawn(job: dict[str, Any]) -> _Worker:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "replog.bench.worker",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, limit=WORKER_LINE_MAX_BYTES,
    )  # fmt: skip
    assert process.stdin is not None
    process.stdin.write(json.dumps(job).encode() + b"\n")
    await process.stdin.drain()
    return _Worker(process)


async def _follow(
    worker: _Worker, workers: list[_Worker], on_progress: ProgressCallback | None, t0: float
) -> None:
    while (message := await worker.read_line()) is not None:
        if "progress" in message:
            worker.ok, worker.failed = int(message["progress"]), int(message["errors"])
            if on_progress is not None:
                ok = sum(w.ok for w in workers)
                on_progress(ok, sum(w.failed for w in workers), time.perf_counter() - t0)
        elif "result" in message:
            worker.result = message["result"]
    await worker.process.wait()
    if worker.result is None:
        raise worker.failure()


async def _run_phase(
    jobs: list[dict[str, Any]], on_progress: ProgressCallback | None
) -> list[dict[str, Any]]:
    workers: list[_Worker] = []
    drains: list[asyncio.Task[None]] = []
    try:
        for job in jobs:
            workers.append(await _spawn(job))
            drains.append(asyncio.create_task(workers[-1].drain_stderr()))
        for worker in workers:
            message = await worker.read_line()
            if message is None or not message.get("ready"):
                await worker.process.wait()
                raise worker.failure()
        for worker in workers:
            assert worker.process.stdin is not None
            worker.process.stdin.write(b"go\n")
            await worker.process.stdin.drain()
        t0 = time.perf_counter()
        await asyncio.gather(*(_follow(w, workers, on_progress, t0) for w in workers))
        await asyncio.gather(*drains)
        return [w.result for w in workers if w.result is not None]
    finally:
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()
        for task in drains:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run_bench_async(
    config: BenchConfig, on_progress: ProgressCallback | None = None
) -> Report:
    """Run one benchmark (see the module docstring); ``on_progress(ok, failed, elapsed_s)``
    is called as the workers report, a few times per second."""
    urls = config.endpoints
    if config.send_to != "all":
        found = await asyncio.to_thread(
            find_leader, config.target, config.endpoints, config.leader_wait_s
        )
        urls = chosen_endpoints(config.send_to, config.endpoints, found)
    if config.protocol == "rpc":
        urls = await asyncio.to_thread(rpc_addresses, urls)
    if config.preload and config.workload.reads:
        await _run_phase(_jobs(config, urls, preload=True), None)
    results = await _run_phase(_jobs(config, urls, preload=False), on_progress)
    return Report.build(
        merge_results(results),
        target=config.target,
        workload=config.workload,
        endpoints=config.endpoints,
        send_to=config.send_to,
        processes=config.process_count,
        protocol=config.protocol,
        idempotency_keys=config.idempotency_keys,
    )


def run_bench(config: BenchConfig, on_progress: ProgressCallback | None = None) -> Report:
    """``run_bench_async`` on a fresh event loop."""
    return asyncio.run(run_bench_async(config, on_progress))
