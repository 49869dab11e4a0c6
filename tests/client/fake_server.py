"""A fake replog cluster for client tests: the HTTP API of docs/http-api.md over one dict.

Every fake node serves the same in-memory store on its own loopback port (port 0), in one
background thread with its own event loop, so blocking and asyncio clients can both talk to it.
Faults are injected per node: answer 503 ``unavailable`` or ``unknown_outcome`` (after applying
or not), answer slowly, drop the connection, stop listening (connection refused), break watch
streams. It is not a Raft: ``leader_id`` is whatever the test sets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

KEY_MAX_BYTES = 4096
VALUE_MAX_BYTES = 64 * 1024
HISTORY_MAX_EVENTS = 50


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


@dataclass
class Fault:
    """What a node does to the next request matching ``method`` (None: any) and ``path``."""

    kind: str  # unavailable | unknown_outcome | slow | drop | status
    method: str | None = None
    path: str = "/v1/"
    apply: bool = False  # unknown_outcome / drop: apply the write first
    delay_s: float = 0.0
    status: int = 500
    code: str = "internal"


@dataclass
class Stored:
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


def wire_bytes(name: str, data: bytes) -> dict[str, str]:
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode()}


def read_bytes(doc: dict[str, Any], name: str) -> bytes:
    text, b64 = doc.get(name), doc.get(f"{name}_base64")
    if (text is None) == (b64 is None):
        raise ApiError(400, "invalid_request", f"exactly one of {name} and {name}_base64")
    if text is not None:
        if not isinstance(text, str):
            raise ApiError(400, "invalid_request", f"{name} must be a string")
        return text.encode()
    return base64.b64decode(b64, validate=True)


@dataclass
class Store:
    """The replicated state every fake node shares."""

    kvs: dict[bytes, Stored] = field(default_factory=dict)
    revision: int = 0
    history: deque[tuple[int, str, bytes, Stored]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_MAX_EVENTS)
    )
    dedup: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    applied_writes: int = 0
    changed: asyncio.Event | None = None

    def kv_json(self, key: bytes, stored: Stored | None) -> dict[str, Any] | None:
        if stored is None:
            return None
        return (
            wire_bytes("key", key)
            | wire_bytes("value", stored.value)
            | {
                "create_revision": stored.create_revision,
                "mod_revision": stored.mod_revision,
                "version": stored.version,
            }
        )

    @property
    def compact_revision(self) -> int:
        return self.history[0][0] if len(self.history) == self.history.maxlen else 1

    def run_ops(self, ops: list[dict[str, Any]], revision: int) -> tuple[list[Any], bool]:
        results, wrote = [], False
        for op in ops:
            ((kind, body),) = op.items()
            key = read_bytes(body, "key")
            prev = self.kvs.get(key)
            if kind == "get":
                results.append({"get": {"kv": self.kv_json(key, prev)}})
            elif kind == "put":
                value = read_bytes(body, "value")
                create = prev.create_revision if prev else revision
                new = Stored(value, create, revision, prev.version + 1 if prev else 1)
                self.kvs[key] = new
                self.history.append((revision, "put", key, new))
                results.append(
                    {"put": {"kv": self.kv_json(key, new), "prev_kv": self.kv_json(key, prev)}}
                )
                wrote = True
            elif kind == "delete":
                if prev is not None:
                    del self.kvs[key]
                    self.history.append((revision, "delete", key, Stored(b"", 0, revision, 0)))
                    wrote = True
                results.append(
                    {
                        "delete": {
                            "deleted": int(prev is not None),
                            "prev_kv": self.kv_json(key, prev),
                        }
                    }
                )
            else:
                raise ApiError(400, "invalid_request", f"unknown operation {kind}")
        return results, wrote

    def compare_holds(self, compare: dict[str, Any]) -> bool:
        key = read_bytes(compare, "key")
        stored = self.kvs.get(key)
        target, op = compare["target"], compare["op"]
        if target == "value":
            if stored is None:
                return False
            have, want = stored.value, read_bytes(compare, "value")
        else:
            have = getattr(stored, target) if stored is not None else 0
            want = compare["value"]
        return {"==": have == want, "!=": have != want, "<": have < want, ">": have > want}[op]

    def txn(self, doc: dict[str, Any]) -> dict[str, Any]:
        unknown = set(doc) - {"compare", "success", "failure"}
        if unknown:
            raise ApiError(400, "invalid_request", f"unknown fields {sorted(unknown)}")
        succeeded = all(self.compare_holds(c) for c in doc.get("compare", []))
        ops = doc.get("success" if succeeded else "failure", [])
        results, wrote = self.run_ops(ops, self.revision + 1)
        if wrote:
            self.revision += 1
            self.notify()
        return {"succeeded": succeeded, "revision": self.revision, "responses": results}

    def notify(self) -> None:
        self.applied_writes += 1
        if self.changed is not None:
            self.changed.set()
            self.changed = asyncio.Event()


class FakeNode:
    def __init__(self, cluster: FakeCluster, node_id: str) -> None:
        self.cluster, self.node_id = cluster, node_id
        self.faults: deque[Fault] = deque()
        self.requests: list[tuple[str, str, str | None]] = []
        self.port = 0
        self.runner: web.AppRunner | None = None
        self.stream_error: dict[str, Any] | None = None
        self.broken = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def header(self) -> dict[str, Any]:
        store = self.cluster.store
        index = store.revision + 10
        return {
            "node_id": self.node_id,
            "leader_id": self.cluster.leader_id,
            "term": 3,
            "commit_index": index,
            "applied_index": index,
            "revision": store.revision,
        }

    def answer(self, status: int, body: dict[str, Any]) -> web.Response:
        return web.json_response({"header": self.header(), **body}, status=status)

    def error(self, error: ApiError) -> web.Response:
        body = {"code": error.code, "message": error.message, **error.extra}
        return self.answer(error.status, {"error": body})

    async def start(self) -> None:
        app = web.Application(middlewares=[self.middleware])
        app.router.add_route("*", "/v1/kv/{key:.+}", self.kv)
        app.router.add_get("/v1/kv", self.range)
        app.router.add_post("/v1/txn", self.txn)
        app.router.add_get("/v1/watch", self.watch)
        app.router.add_get("/v1/status", self.status)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            self.broken.set()
            await self.runner.cleanup()
            self.runner = None
            self.broken = asyncio.Event()

    def take_fault(self, request: web.Request) -> Fault | None:
        for fault in self.faults:
            if fault.method in (None, request.method) and request.path.startswith(fault.path):
                self.faults.remove(fault)
                return fault
        return None

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[..., Any]
    ) -> web.StreamResponse:
        self.requests.append(
            (request.method, request.path_qs, request.headers.get("Idempotency-Key"))
        )
        fault = self.take_fault(request)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
        elif fault is not None and fault.kind == "unavailable":
            return self.error(ApiError(503, "unavailable", "no leader"))
        elif fault is not None and fault.kind == "status":
            return self.error(ApiError(fault.status, fault.code, "injected"))
        elif fault is not None and not fault.apply:
            if fault.kind == "drop":
                assert request.transport is not None
                request.transport.close()
                raise asyncio.CancelledError
            return self.error(ApiError(503, "unknown_outcome", "proposal timed out"))
        try:
            response: web.StreamResponse = await handler(request)
        except ApiError as error:
            return self.error(error)
        if fault is not None and fault.kind == "drop":
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        if fault is not None and fault.kind == "unknown_outcome":
            return self.error(ApiError(503, "unknown_outcome", "proposal timed out"))
        return response

    def check_params(self, request: web.Request, allowed: set[str]) -> None:
        unknown = set(request.query) - allowed
        if unknown:
            raise ApiError(400, "invalid_request", f"unknown parameters {sorted(unknown)}")

    async def deduplicated(
        self, request: web.Request, body: bytes, run: Callable[[], dict[str, Any]]
    ) -> web.Response:
        idem = request.headers.get("Idempotency-Key")
        fingerprint = hashlib.sha256(f"{request.method} {request.path}".encode() + body).hexdigest()
        if idem is not None and idem in self.cluster.store.dedup:
            seen, status, answer = self.cluster.store.dedup[idem]
            if seen != fingerprint:
                raise ApiError(409, "idempotency_key_reused", "different request")
            return self.answer(status, answer)
        answer = run()
        if idem is not None:
            self.cluster.store.dedup[idem] = (fingerprint, 200, answer)
        return self.answer(200, answer)

    async def kv(self, request: web.Request) -> web.Response:
        key = request.match_info["key"].encode()
        if len(key) > KEY_MAX_BYTES:
            raise ApiError(400, "too_large", "key over 4096 bytes")
        store = self.cluster.store
        if request.method == "GET":
            self.check_params(request, {"consistency", "min_revision"})
            consistency = request.query.get("consistency", "linearizable")
            if consistency not in ("linearizable", "lease", "stale"):
                raise ApiError(400, "invalid_request", "bad consistency")
            stored = store.kvs.get(key)
            if stored is None:
                raise ApiError(404, "key_not_found", f"key not found: {key.decode()}")
            return self.answer(200, {"kv": store.kv_json(key, stored)})
        self.check_params(request, set())
        body = await request.read()
        if request.method == "PUT":
            if len(body) > VALUE_MAX_BYTES:
                raise ApiError(400, "too_large", f"value over {VALUE_MAX_BYTES} bytes")
            op = {"put": wire_bytes("key", key) | wire_bytes("value", body)}
            return await self.deduplicated(request, body, lambda: self.single(op, "put"))
        if request.method == "DELETE":
            op = {"delete": wire_bytes("key", key)}
            return await self.deduplicated(request, body, lambda: self.single(op, "delete"))
        raise ApiError(405, "method_not_allowed", request.method)

    def single(self, op: dict[str, Any], kind: str) -> dict[str, Any]:
        result = self.cluster.store.txn({"success": [op]})
        return result["responses"][0][kind]

    async def range(self, request: web.Request) -> web.Response:
        self.check_params(
            request, {"prefix", "prefix_base64", "limit", "consistency", "min_revision"}
        )
        query = dict(request.query)
        prefix = read_bytes(query, "prefix") if query.keys() & {"prefix", "prefix_base64"} else b""
        limit = int(request.query.get("limit", "1000"))
        store = self.cluster.store
        keys = sorted(key for key in store.kvs if key.startswith(prefix))
        kvs = [store.kv_json(key, store.kvs[key]) for key in keys[:limit]]
        return self.answer(200, {"kvs": kvs, "count": len(keys), "more": len(keys) > limit})

    async def txn(self, request: web.Request) -> web.Response:
        self.check_params(request, set())
        body = await request.read()
        try:
            doc = json.loads(body)
        except ValueError:
            raise ApiError(400, "invalid_request", "malformed JSON") from None
        return await self.deduplicated(request, body, lambda: self.cluster.store.txn(doc))

    async def status(self, request: web.Request) -> web.Response:
        self.check_params(request, set())
        leader = self.cluster.leader_id
        index = self.header()["commit_index"]
        node = {
            "id": self.node_id,
            "role": "leader" if leader == self.node_id else "follower",
            "term": 3,
            "leader_id": leader,
            "commit_index": index,
            "applied_index": index - self.cluster.lag.get(self.node_id, 0),
            "last_index": index,
            "snapshot_index": 0,
        }
        return self.answer(
            200, {"cluster_id": "replog", "version": "0.1.0", "node": node, "followers": []}
        )

    def watch_filter(self, request: web.Request) -> Callable[[bytes], bool]:
        self.check_params(
            request, {"key", "key_base64", "prefix", "prefix_base64", "start_revision"}
        )
        query = dict(request.query)
        if query.keys() & {"key", "key_base64"}:
            key = read_bytes(query, "key")
            return lambda candidate: candidate == key
        prefix = read_bytes(query, "prefix")
        return lambda candidate: candidate.startswith(prefix)

    async def watch(self, request: web.Request) -> web.StreamResponse:
        matches = self.watch_filter(request)
        store = self.cluster.store
        start = int(request.query.get("start_revision", store.revision + 1))
        if start < store.compact_revision:
            compact = store.compact_revision
            raise ApiError(410, "revision_compacted", "history is gone", compact_revision=compact)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        broken = self.broken
        while not broken.is_set():
            events = [
                {"type": kind, "kv": store.kv_json(key, stored)}
                for revision, kind, key, stored in list(store.history)
                if revision >= start and matches(key)
            ]
            if events:
                start = store.revision + 1
            line = json.dumps({"header": self.header(), "events": events}) + "\n"
            await response.write(line.encode())
            if store.changed is None:
                store.changed = asyncio.Event()
            changed = store.changed
            waiters = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(broken.wait())]
            await asyncio.wait(
                waiters, timeout=self.cluster.keepalive_s, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in waiters:
                waiter.cancel()
        if self.stream_error is not None:
            line = {"header": self.header(), "error": self.stream_error}
            await response.write(json.dumps(line).encode() + b"\n")
        if request.transport is not None:
            request.transport.close()
        return response


class FakeCluster:
    """N fake nodes sharing one store, served from a background thread's event loop."""

    def __init__(self, size: int = 3, *, keepalive_s: float = 0.2) -> None:
        self.store = Store()
        self.leader_id: str | None = "n1"
        self.keepalive_s = keepalive_s
        self.lag: dict[str, int] = {}
        self.nodes = [FakeNode(self, f"n{i + 1}") for i in range(size)]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FakeCluster:
        self.thread.start()
        for node in self.nodes:
            self.call(node.start())
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            self.call(node.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def in_loop(self, function: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return function()

        return self.call(run())

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, node_id: str) -> FakeNode:
        return next(node for node in self.nodes if node.node_id == node_id)

    def inject(self, node_id: str, fault: Fault, times: int = 1) -> None:
        node = self.node(node_id)
        self.in_loop(lambda: node.faults.extend([fault] * times))

    def stop_node(self, node_id: str) -> None:
        self.call(self.node(node_id).stop())

    def start_node(self, node_id: str) -> None:
        self.call(self.node(node_id).start())

    def break_watches(self, node_id: str, error: dict[str, Any] | None = None) -> None:
        """End the node's watch streams (with an error line first, if given)."""
        node = self.node(node_id)

        def run() -> None:
            node.stream_error = error
            node.broken.set()
            node.broken = asyncio.Event()

        self.in_loop(run)

    def put(self, key: bytes | str, value: bytes | str) -> int:
        raw_key = key.encode() if isinstance(key, str) else key
        raw_value = value.encode() if isinstance(value, str) else value
        op = {"put": wire_bytes("key", raw_key) | wire_bytes("value", raw_value)}
        result = self.in_loop(lambda: self.store.txn({"success": [op]}))
        return int(result["revision"])

    def requests(self, node_id: str) -> list[tuple[str, str, str | None]]:
        return list(self.node(node_id).requests)
