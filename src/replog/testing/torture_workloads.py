"""The client workloads of ``replog torture``: registers, bank transfers, list appends.

Theory of operation. Each workload is driven by client threads of the harness process, each with
its own blocking client: the HTTP ``replog.Client``, or ``RpcTortureClient``, a blocking facade
over the binary protocol's ``replog.RpcClient`` (its own event loop in its thread, one
``run_until_complete`` per call, one attempt per call: the RPC client's own classification of
every outcome goes straight into the history). Some clients are pinned to one node's endpoint
(so a paused or partitioned node keeps being asked), the others roam. Every event of a client
carries its ``protocol`` (``http`` or ``rpc``), a field the checkers ignore. Every operation is
recorded twice in the workload's history (JSON lines, ``Recorder``): its invoke before the
request and its completion after, under one lock and stamped by one monotonic clock, so line
order is real-time order across threads. Outcomes follow the client's contract: an answer is
``ok`` (or ``fail`` when a compare did not hold), ``Unavailable`` on a write is ``fail``
(certainly not applied), ``UnknownOutcome`` and every other error are ``info`` (may or may not
have happened).

- register: read / write / cas of small integers on a few keys (the key set changes every
  ``REGISTER_EPOCH_S`` so that no key's history grows without bound), checked by the
  linearizability checker. Reads are linearizable, or lease reads when the run turns them on.
- bank: ``BANK_ACCOUNTS`` accounts of ``BANK_BALANCE`` each; a transfer reads both accounts and
  writes both new balances in one transaction that compares both ``mod_revision``s; a read gets
  every account in one transaction.
- append: a JSON list under one key, appended by a transaction comparing the key's
  ``mod_revision`` (re-read and retry on conflict, a bounded number of times); when a list reaches
  ``APPEND_ITEMS_MAX`` items the clients move on to the next key.

Every acknowledged write reports its answer's header to ``FailoverClock``: the first write
acknowledged in a later term than a killed leader's ends that failover.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

from replog import statemachines as sm
from replog.client import (
    Client,
    Compare,
    DeleteOp,
    GetOp,
    Header,
    KeyValue,
    PutOp,
    PutResponse,
    ReplogClientError,
    RpcClient,
    TxnResponse,
    Unavailable,
    get_op,
    put_op,
)
from replog.client import types as ct
from replog.testing.linearizability import check_history
from replog.testing.torture_checks import (
    FINAL_PREFIX,
    check_append,
    check_bank,
    pair_events,
)

REGISTER_KEYS = 4
REGISTER_VALUES = 5
REGISTER_EPOCH_S = 20.0
BANK_ACCOUNTS = 5
BANK_BALANCE = 100
APPEND_ITEMS_MAX = 100
APPEND_ATTEMPTS_MAX = 8
FAILOVERS_MAX = 10_000
CHECK_TIME_BUDGET_S = 120.0
ERROR_CHARS_MAX = 300
WORKLOADS = ("register", "bank", "append")
PROTOCOLS = ("http", "rpc")
T = TypeVar("T")


class TortureClient(Protocol):
    """What the workloads call on a client: the HTTP ``Client``'s methods and answers."""

    def get(
        self, key: bytes | str, *, consistency: str = ..., min_revision: int | None = ...
    ) -> KeyValue | None: ...

    def put(self, key: bytes | str, value: bytes | str) -> PutResponse: ...

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[PutOp | DeleteOp | GetOp],
        failure: Sequence[PutOp | DeleteOp | GetOp] = (),
    ) -> TxnResponse: ...

    def close(self) -> None: ...


class RpcTortureClient:
    """A blocking facade over one ``RpcClient`` for one thread, answering like ``Client``.

    It owns a private event loop (``run_until_complete`` per call) and one ``RpcClient``, which
    connects on the first call. Every call is one attempt, without retries: its outcome is the
    RPC client's own classification (``Unavailable``: certainly not applied; ``UnknownOutcome``:
    may have applied; a node's ``Failure``: the error class of its code). Answers are the HTTP
    client's types (``KeyValue``, ``PutResponse``, ``TxnResponse``), with the header of the
    answer and the id of the node this client is connected to. A transaction is sent as the
    KV store's ``Txn`` (compares, then puts, deletes and gets), as ``Client.txn`` does over HTTP.
    """

    protocol = "rpc"

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float,
        connect_timeout_s: float = 1.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = RpcClient(
            endpoints,
            timeout_s=timeout_s,
            retry_timeout_s=0.0,
            connect_timeout_s=min(connect_timeout_s, timeout_s),
        )
        self._closed = False

    def _call(self, call: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(call)

    def _header(self) -> Header:
        header = self._client.header
        assert header is not None, "an answer was received"
        return Header(
            node_id=self._client.node_id,
            leader_id=header.leader_id,
            term=header.term,
            commit_index=header.commit_index,
            applied_index=header.applied_index,
            revision=header.revision,
        )

    def get(
        self,
        key: bytes | str,
        *,
        consistency: str = "linearizable",
        min_revision: int | None = None,
    ) -> KeyValue | None:
        call = self._client.get(key, consistency=consistency, min_revision=min_revision or 0)
        return _kv(self._call(call))

    def put(self, key: bytes | str, value: bytes | str) -> PutResponse:
        result = self._call(self._client.put(key, value))
        kv = _kv(result.kv)
        assert kv is not None
        return PutResponse(header=self._header(), kv=kv, prev_kv=_kv(result.prev_kv))

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[PutOp | DeleteOp | GetOp],
        failure: Sequence[PutOp | DeleteOp | GetOp] = (),
    ) -> TxnResponse:
        txn = sm.Txn(
            compare=tuple(_compare(c) for c in compare),
            success=tuple(_op(op) for op in success),
            failure=tuple(_op(op) for op in failure),
        )
        result = self._call(self._client.txn(txn))
        return TxnResponse(
            header=self._header(),
            succeeded=result.succeeded,
            revision=result.revision,
            responses=tuple(_op_result(r) for r in result.responses),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._client.close())
        finally:
            self._loop.close()

    def __enter__(self) -> RpcTortureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kv(kv: sm.KeyValue | None) -> KeyValue | None:
    if kv is None:
        return None
    return KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)


def _compare(compare: Compare) -> sm.Compare:
    value = compare.value
    if isinstance(value, str):
        value = value.encode()
    return sm.Compare(ct.to_bytes(compare.key), compare.target, compare.op, value)


def _op(op: PutOp | DeleteOp | GetOp) -> sm.Put | sm.Delete | sm.Get:
    key = ct.to_bytes(op.key)
    if isinstance(op, PutOp):
        return sm.Put(key, ct.to_bytes(op.value, "value"))
    if isinstance(op, DeleteOp):
        return sm.Delete(key)
    return sm.Get(key)


def _op_result(
    result: sm.PutResult | sm.DeleteResult | sm.GetResult,
) -> ct.PutResult | ct.DeleteResult | ct.GetResult:
    if isinstance(result, sm.PutResult):
        kv = _kv(result.kv)
        assert kv is not None
        return ct.PutResult(kv, _kv(result.prev_kv))
    if isinstance(result, sm.DeleteResult):
        return ct.DeleteResult(result.deleted, _kv(result.prev_kv))
    return ct.GetResult(_kv(result.kv))


class Recorder:
    """A history file of JSON lines in real-time order (thread-safe)."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        self.counts: dict[str, int] = {"ok": 0, "fail": 0, "info": 0}
        self.protocols: dict[int | str, str] = {}  # process -> "http" or "rpc" (when known)
        self.counts_by_protocol: dict[str, dict[str, int]] = {}

    def event(
        self,
        process: int | str,
        kind: str,
        f: str,
        key: Any,
        value: Any = None,
        *,
        error: object = None,
    ) -> None:
        """Record one event; ``error`` (for diagnosis only) says why an operation did not end ok."""
        event: dict[str, Any] = {"process": process, "type": kind, "f": f, "key": key}
        if kind != "invoke" and f == "read" and kind != "ok":
            pass  # a failed read carries no value
        elif kind == "ok" or f != "read":
            event["value"] = value
        if error is not None:
            event["error"] = str(error)[:ERROR_CHARS_MAX]
        protocol = self.protocols.get(process)
        if protocol is not None:
            event["protocol"] = protocol
        with self._lock:
            event["time"] = round(self._clock() * 1e9)
            self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
            if kind != "invoke":
                self.counts[kind] += 1
                if protocol is not None:
                    counts = self.counts_by_protocol.setdefault(
                        protocol, {"ok": 0, "fail": 0, "info": 0}
                    )
                    counts[kind] += 1

    def close(self) -> None:
        with self._lock:
            self._file.close()


@dataclass
class FailoverClock:
    """Failover times: from a leader's SIGKILL to the first write acknowledged in a later term."""

    clock: Callable[[], float]
    pending: list[tuple[float, int]] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def leader_killed(self, term: int) -> None:
        with self.lock:
            self.pending.append((self.clock(), term))

    def write_acked(self, header: Header) -> None:
        now = self.clock()
        with self.lock:
            if not self.pending:
                return
            done = [(t, term) for t, term in self.pending if header.term > term]
            for killed_s, _ in done:
                if len(self.times_s) < FAILOVERS_MAX:
                    self.times_s.append(now - killed_s)
            self.pending = [item for item in self.pending if item not in done]

    def summary(self) -> dict[str, Any]:
        with self.lock:
            times = sorted(self.times_s)
        if not times:
            return {"count": 0}
        return {
            "count": len(times),
            "min_s": round(times[0], 3),
            "median_s": round(statistics.median(times), 3),
            "max_s": round(times[-1], 3),
        }


@dataclass
class ClientContext:
    """One client thread: its process id, client, random source, pinning and protocol."""

    process: int
    client: TortureClient
    rng: random.Random
    pinned: str | None
    protocol: str = "http"


class Workload:
    """The base of the three workloads: ``setup``, ``step`` per client, ``final``, ``check``."""

    name = "workload"
    # A write that fails with Unavailable code "unreachable" (no node answered in time) is
    # recorded as info instead of fail when set: see TortureConfig.unreachable_writes.
    unreachable_is_info = False

    def __init__(self, out: Path, clock: Callable[[], float], failover: FailoverClock) -> None:
        self.clock = clock
        self.failover = failover
        self.history = Recorder(out / f"{self.name}.jsonl", clock)
        self.verdict = "not checked"
        self.final_nodes: list[str] = []  # the nodes asked for the final state

    def setup(self, client: Client) -> None:
        """Prepare the keys before the clients start (retried by the caller)."""

    def step(self, ctx: ClientContext) -> None:
        raise NotImplementedError

    def final(self, clients: Sequence[tuple[str, Client]]) -> None:
        """Read the final state from every node (``clients`` pinned one per node)."""

    def check(self) -> list[str]:
        raise NotImplementedError

    def _write_outcome(self, error: ReplogClientError) -> str:
        if not isinstance(error, Unavailable):
            return "info"
        return "info" if self.unreachable_is_info and error.code == "unreachable" else "fail"

    def _acked(self, header: Header) -> None:
        self.failover.write_acked(header)


class RegisterWorkload(Workload):
    name = "register"

    def __init__(
        self, out: Path, clock: Callable[[], float], failover: FailoverClock, *, lease: bool
    ) -> None:
        super().__init__(out, clock, failover)
        self.lease = lease

    def step(self, ctx: ClientContext) -> None:
        rng = ctx.rng
        key = f"r{int(self.clock() / REGISTER_EPOCH_S)}-{rng.randrange(REGISTER_KEYS)}"
        roll = rng.random()
        if roll < 0.5:
            self._read(ctx, key)
        elif roll < 0.75:
            self._write(ctx, key, rng.randrange(REGISTER_VALUES))
        else:
            pair = (rng.randrange(REGISTER_VALUES), rng.randrange(REGISTER_VALUES))
            self._cas(ctx, key, pair)

    def _read(self, ctx: ClientContext, key: str) -> None:
        consistency = "lease" if self.lease and ctx.rng.random() < 0.5 else "linearizable"
        self.history.event(ctx.process, "invoke", "read", key)
        try:
            kv = ctx.client.get(key, consistency=consistency)
        except ReplogClientError as error:
            self.history.event(ctx.process, "info", "read", key, error=error)
            return
        self.history.event(ctx.process, "ok", "read", key, None if kv is None else int(kv.value))

    def _write(self, ctx: ClientContext, key: str, value: int) -> None:
        self.history.event(ctx.process, "invoke", "write", key, value)
        try:
            answer = ctx.client.put(key, str(value))
        except ReplogClientError as error:
            outcome = self._write_outcome(error)
            self.history.event(ctx.process, outcome, "write", key, value, error=error)
            return
        self.history.event(ctx.process, "ok", "write", key, value)
        self._acked(answer.header)

    def _cas(self, ctx: ClientContext, key: str, pair: tuple[int, int]) -> None:
        self.history.event(ctx.process, "invoke", "cas", key, list(pair))
        compare = [Compare(key, "value", "==", str(pair[0]))]
        try:
            answer = ctx.client.txn(compare, [put_op(key, str(pair[1]))])
        except ReplogClientError as error:
            outcome = self._write_outcome(error)
            self.history.event(ctx.process, outcome, "cas", key, list(pair), error=error)
            return
        outcome = "ok" if answer.succeeded else "fail"
        self.history.event(ctx.process, outcome, "cas", key, list(pair))
        self._acked(answer.header)

    def check(self) -> list[str]:
        self.history.close()
        result = check_history(
            self.history.path.read_text().splitlines(), time_budget_s=CHECK_TIME_BUDGET_S
        )
        self.verdict = str(result.status)
        return [] if result.status.value == "linearizable" else result.explain()


class BankWorkload(Workload):
    name = "bank"
    accounts = [f"bank/a{i}" for i in range(BANK_ACCOUNTS)]
    total = BANK_ACCOUNTS * BANK_BALANCE

    def setup(self, client: Client) -> None:
        compares = [Compare(a, "mod_revision", "==", 0) for a in self.accounts]
        client.txn(compares, [put_op(a, str(BANK_BALANCE)) for a in self.accounts])

    def step(self, ctx: ClientContext) -> None:
        if ctx.rng.random() < 0.3:
            self._read(ctx.process, ctx.client)
        else:
            self._transfer(ctx)

    def _read(self, process: int | str, client: TortureClient, **stale: Any) -> None:
        self.history.event(process, "invoke", "read", "bank")
        try:
            if stale:
                kvs = [client.get(a, consistency="stale", **stale) for a in self.accounts]
            else:
                answer = client.txn([], [get_op(a) for a in self.accounts])
                kvs = [getattr(r, "kv", None) for r in answer.responses]
        except ReplogClientError as error:
            self.history.event(process, "info", "read", "bank", error=error)
            return
        balances = {
            a: (None if kv is None else int(kv.value))
            for a, kv in zip(self.accounts, kvs, strict=True)
        }
        self.history.event(process, "ok", "read", "bank", balances)

    def _transfer(self, ctx: ClientContext) -> None:
        source, target = ctx.rng.sample(self.accounts, 2)
        try:
            answer = ctx.client.txn([], [get_op(source), get_op(target)])
        except ReplogClientError:
            return  # nothing was written
        kvs = [getattr(r, "kv", None) for r in answer.responses]
        if any(kv is None for kv in kvs):
            return
        src_kv, dst_kv = kvs
        assert src_kv is not None and dst_kv is not None
        balance = int(src_kv.value)
        amount = ctx.rng.randint(1, max(1, min(balance, 30)))
        if amount > balance:
            return
        value = {"from": source, "to": target, "amount": amount}
        self.history.event(ctx.process, "invoke", "transfer", "bank", value)
        compares = [
            Compare(source, "mod_revision", "==", src_kv.mod_revision),
            Compare(target, "mod_revision", "==", dst_kv.mod_revision),
        ]
        puts = [
            put_op(source, str(balance - amount)),
            put_op(target, str(int(dst_kv.value) + amount)),
        ]
        try:
            result = ctx.client.txn(compares, puts)
        except ReplogClientError as error:
            outcome = self._write_outcome(error)
            self.history.event(ctx.process, outcome, "transfer", "bank", value, error=error)
            return
        self.history.event(
            ctx.process, "ok" if result.succeeded else "fail", "transfer", "bank", value
        )
        self._acked(result.header)

    def final(self, clients: Sequence[tuple[str, Client]]) -> None:
        revision = _final_revision(clients)
        self.final_nodes = [name for name, _ in clients]
        for name, client in clients:
            self._read(FINAL_PREFIX + name, client, min_revision=revision)

    def check(self) -> list[str]:
        self.history.close()
        ops = pair_events(self.history.path.read_text().splitlines())
        problems = check_bank(ops, self.accounts, self.total, self.final_nodes)
        self.verdict = "ok" if not problems else "violation"
        return problems


class AppendWorkload(Workload):
    name = "append"

    def __init__(self, out: Path, clock: Callable[[], float], failover: FailoverClock) -> None:
        super().__init__(out, clock, failover)
        self.generation = 0
        self.sequence = 0
        self.lock = threading.Lock()

    def key(self) -> str:
        return f"list/{self.generation}"

    def step(self, ctx: ClientContext) -> None:
        key = self.key()
        if ctx.rng.random() < 0.3:
            self._read(ctx.process, ctx.client, key)
            return
        with self.lock:
            self.sequence += 1
            value = f"p{ctx.process}-{self.sequence}"
        self.history.event(ctx.process, "invoke", "append", key, value)
        outcome, header, error = self._append(ctx.client, key, value)
        self.history.event(ctx.process, outcome, "append", key, value, error=error)
        if header is not None:
            self._acked(header)

    def _append(
        self, client: TortureClient, key: str, value: str
    ) -> tuple[str, Header | None, str | None]:
        for _ in range(APPEND_ATTEMPTS_MAX):
            try:
                kv = client.get(key)
            except ReplogClientError as error:
                return "fail", None, f"read: {error}"  # nothing written yet by this append
            items: list[str] = json.loads(kv.value) if kv is not None else []
            if len(items) >= APPEND_ITEMS_MAX:
                with self.lock:
                    self.generation = max(self.generation, int(key.split("/")[1]) + 1)
            revision = kv.mod_revision if kv is not None else 0
            compare = [Compare(key, "mod_revision", "==", revision)]
            body = json.dumps([*items, value])
            try:
                answer: TxnResponse = client.txn(compare, [put_op(key, body)])
            except ReplogClientError as error:
                return self._write_outcome(error), None, f"txn: {error!r}"
            if answer.succeeded:
                return "ok", answer.header, None
        return "fail", None, f"{APPEND_ATTEMPTS_MAX} compares failed"

    def _read(self, process: int | str, client: TortureClient, key: str, **options: Any) -> None:
        self.history.event(process, "invoke", "read", key)
        try:
            kv = client.get(key, **options)
        except ReplogClientError as error:
            self.history.event(process, "info", "read", key, error=error)
            return
        items = json.loads(kv.value) if kv is not None else []
        self.history.event(process, "ok", "read", key, items)

    def final(self, clients: Sequence[tuple[str, Client]]) -> None:
        revision = _final_revision(clients)
        self.final_nodes = [name for name, _ in clients]
        for generation in range(self.generation + 1):
            for name, client in clients:
                options = {"consistency": "stale", "min_revision": revision}
                self._read(FINAL_PREFIX + name, client, f"list/{generation}", **options)

    def check(self) -> list[str]:
        self.history.close()
        ops = pair_events(self.history.path.read_text().splitlines())
        problems = check_append(ops, self.final_nodes)
        self.verdict = "ok" if not problems else "violation"
        return problems


def _final_revision(clients: Sequence[tuple[str, Client]]) -> int:
    """The cluster's revision now, from a linearizable read through any node."""
    for _, client in clients:
        try:
            return client.get_response("final/probe").header.revision
        except ReplogClientError:
            continue
    return 0
