"""One generator process: many concurrent clients on one asyncio loop, over HTTP or RPC.

Run as ``python -m replog.bench.worker``; the parent (``replog.bench.generator``) speaks to it
with JSON lines, never pickle:

1. the parent writes the job (one JSON object) on stdin;
2. the worker opens its session, writes ``{"ready": true}`` and waits for ``go`` on stdin, so
   that every process starts its load at the same moment;
3. while running it writes ``{"progress": ok, "errors": n}`` every ``progress_interval_s``;
4. at the end ``{"result": {...}}``: a histogram per operation (microseconds), errors by kind,
   elapsed wall time and this process's CPU time (user + system) during the run.

Each client is one coroutine with one request in flight at a time. Over HTTP a process's
clients share an aiohttp connection pool sized to their number, so each keeps its own persistent
connection. HTTP/1.1 pipelining proper (several requests queued on one connection) is not done:
aiohttp does not support it; concurrency comes from many connections with one request each.

Over RPC (``replog.client.RpcClient``, the job's ``urls`` are then ``host:port`` RPC addresses)
the process opens ``connections`` connections per address (at most one per client of it) before
it says it is ready, and deals that address's clients over them round-robin: many clients share
one connection, their requests in flight together. Calls are not retried (as over HTTP), so
every failure is counted: as ``timeout`` (no answer in time), ``connection`` (the connection
broke or no node answered) or ``rpc:<code>`` (the node's error code, as over HTTP a missing
key on a read is ``rpc:key_not_found``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import os
import resource
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from replog.bench.histogram import Histogram
from replog.bench.targets import ERROR_CODE_MAX_CHARS, Target, adapter
from replog.bench.workloads import Op, OpSource, Workload
from replog.client.errors import ReplogClientError
from replog.client.rpc import RpcClient
from replog.protocol import LINEARIZABLE, STALE

__all__ = ["Job", "main", "rpc_error_kind", "run_job"]

ERROR_KINDS_MAX = 64
BACKOFF_AFTER_FAILURE_S = 0.01


@dataclass(frozen=True)
class Job:
    """What one worker process does (sent as JSON by the parent)."""

    workload: Workload
    target: str
    urls: tuple[str, ...]  # one per client, in client order (RPC: host:port addresses)
    seed: int
    count: int | None = None  # this process's share of an operation count
    preload_start: int | None = None  # preload: put keys start, start+step, ... < key_space
    preload_step: int = 1
    progress_interval_s: float = 0.25
    protocol: str = "http"  # or "rpc"
    connections: int = 4  # rpc: connections per address
    idempotency_keys: bool = False  # every put carries one: "<this process's session>-<n>"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        data = dict(data)
        data["workload"] = Workload.from_json(data["workload"])
        data["urls"] = tuple(data["urls"])
        return cls(**data)


@dataclass
class Tally:
    """What the clients of this process have done so far."""

    histograms: dict[str, Histogram] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    ok: int = 0
    failed: int = 0

    def record(self, op: Op, seconds: float) -> None:
        histogram = self.histograms.get(op)
        if histogram is None:
            histogram = self.histograms[op] = Histogram()
        histogram.record_s(seconds)
        self.ok += 1

    def fail(self, kind: str) -> None:
        if kind not in self.errors and len(self.errors) >= ERROR_KINDS_MAX:
            kind = "other"
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.failed += 1


class Plan:
    """Hands out the next operation to any client until the run is over."""

    def __init__(self, job: Job, source: OpSource) -> None:
        self.job = job
        self.source = source
        self.remaining = job.count
        self.deadline = float("inf")
        self.preload: Iterator[int] | None = None
        if job.preload_start is not None:
            self.preload = iter(range(job.preload_start, job.workload.key_space, job.preload_step))

    def start(self) -> None:
        if self.job.workload.duration_s is not None and self.job.count is None:
            self.deadline = time.perf_counter() + self.job.workload.duration_s

    def next(self) -> tuple[Op, str] | None:
        if self.preload is not None:
            number = next(self.preload, None)
            return None if number is None else ("put", self.source.key(number))
        if self.remaining is not None:
            if self.remaining <= 0:
                return None
            self.remaining -= 1
        elif time.perf_counter() >= self.deadline:
            return None
        return self.source.next_op(), self.source.next_key()


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    target: Target,
    plan: Plan,
    tally: Tally,
    *,
    keys: Iterator[str] | None,
) -> None:
    value = plan.source.value
    while (step := plan.next()) is not None:
        op, key = step
        request = target.request(op, key, value)
        headers = request.headers
        if keys is not None and op == "put":
            headers = {**headers, "Idempotency-Key": next(keys)}
        started = time.perf_counter()
        try:
            async with session.request(
                request.method, url + request.path, data=request.body, headers=headers
            ) as response:
                body = await response.read()
                status = response.status
        except TimeoutError:
            tally.fail("timeout")
            continue
        except aiohttp.ClientConnectionError:
            tally.fail("connection")
            await asyncio.sleep(BACKOFF_AFTER_FAILURE_S)
            continue
        except aiohttp.ClientError as error:
            tally.fail("client:" + type(error).__name__)
            continue
        kind = target.error_kind(status, body)
        if kind is None:
            tally.record(op, time.perf_counter() - started)
        else:
            tally.fail(kind)


ClientLoop = Callable[[Plan, Tally], Awaitable[None]]


async def _http_clients(job: Job, stack: contextlib.AsyncExitStack) -> list[ClientLoop]:
    target = adapter(job.target)
    timeout = aiohttp.ClientTimeout(total=job.workload.timeout_s)
    connector = aiohttp.TCPConnector(limit=len(job.urls), limit_per_host=0)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout)
    await stack.enter_async_context(session)
    keys = _idempotency_keys(job)
    return [functools.partial(_client, session, url, target, keys=keys) for url in job.urls]


def _session_id() -> str:
    """An id no other generator process, here or on another machine, uses."""
    return f"bench-{os.getpid()}-{secrets.token_hex(6)}"


def _idempotency_keys(job: Job) -> Iterator[str] | None:
    if not job.idempotency_keys:
        return None
    session = _session_id()
    return (f"{session}-{n}" for n in itertools.count(1))


def rpc_error_kind(error: ReplogClientError) -> str:
    """``timeout``, ``connection`` or ``rpc:<code>`` for one failed RPC call."""
    if isinstance(error.__cause__, TimeoutError):
        return "timeout"
    if isinstance(error.__cause__, ConnectionError) or error.code == "unreachable":
        return "connection"
    return "rpc:" + error.code[:ERROR_CODE_MAX_CHARS]


async def _rpc_client(client: RpcClient, plan: Plan, tally: Tally) -> None:
    value = plan.source.value
    while (step := plan.next()) is not None:
        op, key = step
        started = time.perf_counter()
        try:
            if op == "put":
                await client.put(key, value)
            else:
                consistency = STALE if op == "stale-get" else LINEARIZABLE
                if await client.get(key, consistency=consistency) is None:
                    tally.fail("rpc:key_not_found")
                    continue
        except ReplogClientError as error:
            kind = rpc_error_kind(error)
            tally.fail(kind)
            if kind == "connection":
                await asyncio.sleep(BACKOFF_AFTER_FAILURE_S)
            continue
        tally.record(op, time.perf_counter() - started)


async def _rpc_clients(job: Job, stack: contextlib.AsyncExitStack) -> list[ClientLoop]:
    loops: list[ClientLoop] = []
    for address, clients in collections.Counter(job.urls).items():
        connections: list[RpcClient] = []
        for _ in range(min(job.connections, clients)):
            connection = await RpcClient.connect(
                address,
                timeout_s=job.workload.timeout_s,
                retry_timeout_s=0.0,
                session_id=_session_id() if job.idempotency_keys else None,
            )
            stack.push_async_callback(connection.close)
            connections.append(connection)
        for k in range(clients):
            loops.append(functools.partial(_rpc_client, connections[k % len(connections)]))
    return loops


def _emit(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def _report_progress(tally: Tally, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        _emit({"progress": tally.ok, "errors": tally.failed})


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_job(job: Job, wait_for_go: bool = True) -> dict[str, Any]:
    """Run ``job``; returns the result document (see the module docstring)."""
    plan = Plan(job, OpSource(job.workload, job.seed))
    tally = Tally()
    open_clients = _rpc_clients if job.protocol == "rpc" else _http_clients
    async with contextlib.AsyncExitStack() as stack:
        clients = await open_clients(job, stack)
        if wait_for_go:
            _emit({"ready": True})
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            if line.strip() != "go":
                raise SystemExit("replog.bench.worker: expected 'go' on stdin")
        progress = asyncio.create_task(_report_progress(tally, job.progress_interval_s))
        cpu_start, started = _cpu_s(), time.perf_counter()
        plan.start()
        await asyncio.gather(*(client(plan, tally) for client in clients))
        elapsed_s, cpu_s = time.perf_counter() - started, _cpu_s() - cpu_start
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
    return {
        "histograms": {op: h.to_json() for op, h in tally.histograms.items()},
        "errors": tally.errors,
        "elapsed_s": elapsed_s,
        "cpu_s": cpu_s,
    }


def main() -> None:
    job = Job.from_json(json.loads(sys.stdin.readline()))
    try:
        import uvloop  # the faster loop when installed, as on the nodes
    except ImportError:
        result = asyncio.run(run_job(job))
    else:
        result = uvloop.run(run_job(job))
    _emit({"result": result})


if __name__ == "__main__":
    main()
