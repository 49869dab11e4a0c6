"""The HTTP API of a node (docs/http-api.md): JSON under ``/v1``, health and metrics.

Every handler checks its whole request before anything is proposed, so bad input never reaches
the log and never applies half a request. Writes go through ``Node.propose`` (a follower's
proposals travel to the leader through the Raft log); linearizable reads first pass
``Node.read_barrier``; stale reads answer from this node's applied state. Every JSON body
carries the cluster header.

Membership and leadership requests (``/v1/members``, ``/v1/leader/transfer``) are served by the
leader: another node forwards them over HTTP to the leader's client URL (from the member
registry) once, marked with ``X-Replog-Forwarded``, and relays the answer; a request that was
already forwarded is never forwarded again (503 ``unavailable``: the client retries).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from replog import __version__
from replog.core import NotLeader, ReplogError
from replog.errors import Unavailable, UnknownOutcome
from replog.server.config import parse_address
from replog.server.members import MemberInfo
from replog.server.membership import MembershipError, MemberStatus
from replog.server.node import Node, NodeOptions, OnDone
from replog.statemachines import (
    Compacted,
    Delete,
    DeleteResult,
    ErrorResult,
    Event,
    InvalidCommand,
    KVLimits,
    KVStore,
    Put,
    PutResult,
    Request,
    TooLarge,
    Txn,
    TxnResult,
    check_request,
    encode_request,
    event_to_json,
    kv_to_json,
    result_to_json,
    txn_from_json,
)

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RANGE_LIMIT_DEFAULT = 1_000
WATCH_KEEPALIVE_S = 5.0
WATCH_BATCH_EVENTS = 1_000
IDEMPOTENCY_KEY_BYTES_MAX = 128
FORWARDED_HEADER = "X-Replog-Forwarded"
FORWARD_ANSWER_BYTES_MAX = 4 << 20
FORWARD_EXTRA_S = 5.0  # the forwarding node waits this much longer than the leader would
MEMBER_FIELDS = frozenset({"name", "peer_url", "client_url", "learner"})
_CONSISTENCY = ("linearizable", "lease", "stale")
_ENCODER = msgspec.json.Encoder()


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


@dataclass(frozen=True, slots=True)
class ApiOptions:
    """``limits`` are this node's request limits, checked before anything is proposed. The
    store applies the log with its own, cluster-wide ceilings (``APPLY_LIMITS``): a command
    the leader accepted must be accepted alike by every node, whatever its flags."""

    cluster_id: str = "replog"
    request_bytes_max: int = 2 << 20
    limits: KVLimits = field(default_factory=KVLimits)
    rpc_address: str | None = None  # where this node serves replog.protocol, if it does


class Api:
    """The handlers, bound to one node and its KV store."""

    def __init__(self, node: Node, kv: KVStore, options: ApiOptions) -> None:
        self.node = node
        self.kv = kv
        self.options = options
        self._session: aiohttp.ClientSession | None = None

    async def close(self, app: web.Application | None = None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- plumbing --------------------------------------------------------------------------

    def header(self) -> Json:
        status = self.node.position()
        return {
            "node_id": self.node.name,
            "leader_id": status.leader,
            "term": status.term,
            "commit_index": status.commit_index,
            "applied_index": status.applied_index,
            "revision": self.kv.revision,
        }

    def reply(self, body: Json, status: int = 200) -> web.Response:
        body = {"header": self.header(), **body}
        return web.Response(
            body=_ENCODER.encode(body), status=status, content_type="application/json"
        )

    def error(self, error: ApiError) -> web.Response:
        detail = {"code": error.code, "message": error.message, **error.extra}
        return self.reply({"error": detail}, error.status)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = self.options.request_bytes_max
            return self.error(ApiError(400, "too_large", f"the request body is over {limit} bytes"))
        except web.HTTPNotFound:
            return self.error(ApiError(404, "not_found", f"no endpoint {request.path}"))
        except web.HTTPMethodNotAllowed:
            message = f"{request.method} is not allowed on {request.path}"
            return self.error(ApiError(405, "method_not_allowed", message))
        except Exception as error:
            api_error = api_error_of(error)
            if api_error is None:
                raise
            return self.error(api_error)

    # ---- writes ----------------------------------------------------------------------------

    async def put(self, request: web.Request) -> web.Response:
        _query(request, ())
        key = _path_key(request)
        value = await request.read()
        return await self._write(request, Put(key, value))

    async def delete(self, request: web.Request) -> web.Response:
        _query(request, ())
        return await self._write(request, Delete(_path_key(request)))

    async def txn(self, request: web.Request) -> web.Response:
        _query(request, ())
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as error:
            raise ApiError(400, "invalid_request", f"malformed JSON: {error}") from None
        try:
            txn = txn_from_json(body, self.options.limits)
        except InvalidCommand as error:
            raise _invalid(error) from None
        return await self._write(request, txn)

    async def _write(self, request: web.Request, op: Put | Delete | Txn) -> web.Response:
        result = await self.write(op, request.headers.get("Idempotency-Key"))
        return self.reply(result_to_json(result))

    async def write(
        self, op: Put | Delete | Txn, idempotency_key: str | None
    ) -> PutResult | DeleteResult | TxnResult:
        """Check, propose and wait for one write; raises ``ApiError`` or the node's errors."""
        return self.finish_write(await self.start_write(op, idempotency_key))

    def start_write(
        self, op: Put | Delete | Txn, idempotency_key: str | None
    ) -> asyncio.Future[object]:
        """Check and propose one write; the future receives what ``finish_write`` takes. A
        write with an idempotency key is applied once however often it commits, so the node
        may propose it again after a leader change."""
        command = self._command(op, idempotency_key)
        return self.node.submit(command, idempotent=idempotency_key is not None)

    def start_write_callback(
        self, op: Put | Delete | Txn, idempotency_key: str | None, on_done: OnDone
    ) -> None:
        """``start_write`` with ``Node.submit_callback``'s way of answering."""
        command = self._command(op, idempotency_key)
        self.node.submit_callback(command, on_done, idempotent=idempotency_key is not None)

    def _command(self, op: Put | Delete | Txn, idempotency_key: str | None) -> bytes:
        """The command of one write, checked; raises ``ApiError``."""
        if idempotency_key is not None and not _valid_idempotency_key(idempotency_key):
            message = "Idempotency-Key must be 1 to 128 printable ASCII characters"
            raise ApiError(400, "invalid_request", message)
        command = Request(op, idempotency_key=idempotency_key, time_ms=int(time.time() * 1000))
        try:
            check_request(command, self.options.limits)
        except InvalidCommand as error:
            raise _invalid(error) from None
        return encode_request(command)

    def finish_write(self, result: object) -> PutResult | DeleteResult | TxnResult:
        """The store's answer to a write, or its refusal as an ``ApiError``."""
        if isinstance(result, ErrorResult):
            status = 409 if result.code == "idempotency_key_reused" else 400
            raise ApiError(status, result.code, result.message)
        assert isinstance(result, PutResult | DeleteResult | TxnResult), result
        return result

    # ---- reads -----------------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.Response:
        query = _query(request, ("consistency", "min_revision"))
        key = _path_key(request)
        await self._read_barrier(query)
        kv = self.kv.get(key)
        if kv is None:
            raise ApiError(404, "key_not_found", f"key {key!r} not found")
        return self.reply({"kv": kv_to_json(kv)})

    async def range(self, request: web.Request) -> web.Response:
        query = _query(request, ("prefix", "prefix_base64", "limit", "consistency", "min_revision"))
        prefix = _bytes_param(query, "prefix", required=False)
        limit = _int_param(
            query, "limit", RANGE_LIMIT_DEFAULT, 1, self.options.limits.range_limit_max
        )
        await self._read_barrier(query)
        kvs, count, more = self.kv.range(prefix, limit)
        return self.reply({"kvs": [kv_to_json(kv) for kv in kvs], "count": count, "more": more})

    async def _read_barrier(self, query: Mapping[str, str]) -> None:
        consistency = query.get("consistency", "linearizable")
        await self.read_barrier(consistency, _int_param(query, "min_revision", 0, 0, 1 << 62))

    async def read_barrier(self, consistency: str, min_revision: int) -> None:
        """Wait until a read at ``consistency`` may be answered from this node's store, and
        its revision has reached ``min_revision``; raises ``ApiError`` or the node's errors."""
        if consistency not in _CONSISTENCY:
            message = f"consistency must be one of {', '.join(_CONSISTENCY)}, not {consistency!r}"
            raise ApiError(400, "invalid_request", message)
        if consistency != "stale":
            await self.node.read_barrier(lease=consistency == "lease")
        if min_revision > self.kv.revision:
            timeout_s = self.node.options.request_timeout_ms / 1000
            if not await self.node.wait_applied(
                lambda: self.kv.revision >= min_revision, timeout_s
            ):
                message = f"this node has not reached revision {min_revision} in time"
                raise ApiError(503, "unavailable", message)

    # ---- watch -----------------------------------------------------------------------------

    async def watch(self, request: web.Request) -> web.StreamResponse:
        query = _query(request, ("key", "key_base64", "prefix", "prefix_base64", "start_revision"))
        has_key = "key" in query or "key_base64" in query
        if has_key == ("prefix" in query or "prefix_base64" in query):
            raise ApiError(400, "invalid_request", "give exactly one of key and prefix")
        key = _bytes_param(query, "key", required=True) if has_key else None
        prefix = None if has_key else _bytes_param(query, "prefix", required=False)
        start = _int_param(query, "start_revision", self.kv.revision + 1, 1, 1 << 62)
        events = self._events(start, key, prefix)  # a compacted start fails before streaming
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError, Unavailable):
            while True:
                if events:
                    await self._send_events(response, events)
                    start = events[-1].kv.mod_revision + 1
                elif not await self._applied_within(WATCH_KEEPALIVE_S):
                    await self._send_events(response, [])  # keepalive: the stream is alive
                try:
                    events = self._events(start, key, prefix)
                except ApiError as error:
                    await self._send_line(response, {"error": _error_detail(error)})
                    break
        return response

    def _events(self, start: int, key: bytes | None, prefix: bytes | None) -> list[Event]:
        try:
            events = self.kv.events_since(start, key=key, prefix=prefix, limit=WATCH_BATCH_EVENTS)
        except Compacted as error:
            message = (
                f"revision {start} is compacted; the oldest available is {error.compact_revision}"
            )
            raise ApiError(
                410, "revision_compacted", message, compact_revision=error.compact_revision
            ) from None
        return events

    async def _applied_within(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.node.applied_changed()
                return True
        return False

    async def _send_events(self, response: web.StreamResponse, events: list[Event]) -> None:
        await self._send_line(response, {"events": [event_to_json(e) for e in events]})

    async def _send_line(self, response: web.StreamResponse, body: Json) -> None:
        await response.write(_ENCODER.encode({"header": self.header(), **body}) + b"\n")

    # ---- status ----------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        _query(request, ())
        status = self.node.status()
        node = {
            "id": status.name,
            "role": status.role,
            "term": status.term,
            "leader_id": status.leader,
            "commit_index": status.commit_index,
            "applied_index": status.applied_index,
            "last_index": status.last_index,
            "snapshot_index": status.snapshot_index,
        }
        followers = [
            {
                "id": f.name,
                "match_index": f.match_index,
                "next_index": f.next_index,
                "lag": f.lag,
                "state": f.state,
            }
            for f in status.followers
        ]
        return self.reply(
            {
                "cluster_id": self.options.cluster_id,
                "version": __version__,
                "rpc_address": self.options.rpc_address,
                "node": node,
                "followers": followers,
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        if self.node.stopped:
            return self.reply({"health": False, "reason": "the node is stopping"}, 503)
        if self.node.leader is None:
            return self.reply({"health": False, "reason": "no leader is known"}, 503)
        return self.reply({"health": True})

    # ---- membership and leadership (served by the leader) ------------------------------------

    async def members(self, request: web.Request) -> web.Response:
        _query(request, ())
        if not self.node.is_leader and FORWARDED_HEADER not in request.headers:
            with contextlib.suppress(ApiError):
                return await self._forward(request, b"")
        listed = [_member_json(m) for m in self.node.members()]
        return self.reply({"members": listed, "change_pending": self.node.membership_pending})

    async def add_member(self, request: web.Request) -> web.Response:
        _query(request, ())
        body = await request.read()
        fields = _json_object(body, MEMBER_FIELDS)
        name = _text_field(fields, "name")
        peer, client = _text_field(fields, "peer_url"), _text_field(fields, "client_url")
        learner = fields.get("learner", False)
        if not isinstance(learner, bool):
            raise ApiError(400, "invalid_request", "learner must be true or false")
        try:
            info = await self.node.add_member(name, peer, client, learner=learner)
        except NotLeader:
            return await self._forward(request, body)
        argv = join_argv(self.node, info, self.options.cluster_id)
        return self.reply(
            {
                "member": _member_json(self._member_status(info)),
                "command": shlex.join(argv),
                "argv": argv,
            }
        )

    async def remove_member(self, request: web.Request) -> web.Response:
        query = _query(request, ("force",))
        force = _bool_param(query, "force")
        name = request.match_info["name"]
        try:
            info = await self.node.remove_member(name, force=force)
        except NotLeader:
            return await self._forward(request, b"")
        return self.reply({"removed": {"id": info.name, "peer_url": info.peer}})

    async def promote_member(self, request: web.Request) -> web.Response:
        _query(request, ())
        try:
            info = await self.node.promote_member(request.match_info["name"])
        except NotLeader:
            return await self._forward(request, b"")
        return self.reply({"member": _member_json(self._member_status(info))})

    async def transfer_leader(self, request: web.Request) -> web.Response:
        _query(request, ())
        body = await request.read()
        fields = _json_object(body, frozenset({"to"})) if body.strip() else {}
        to = fields.get("to")
        if to is not None and not isinstance(to, str):
            raise ApiError(400, "invalid_request", "to must be a member name or null")
        timeout_s = self.node.options.request_timeout_ms / 1000
        try:
            leader = await self.node.transfer_leadership(to, timeout_s=timeout_s)
        except NotLeader:
            return await self._forward(request, body)
        return self.reply({"leader_id": leader})

    def _member_status(self, info: MemberInfo) -> MemberStatus:
        for member in self.node.members():
            if member.name == info.name:
                return member
        return MemberStatus(
            info.name, info.node_id, info.peer, info.client, "removed", False, info.promote,
            None, None, None,
        )  # fmt: skip

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        """Relay ``request`` to the leader's client URL and its answer back."""
        if FORWARDED_HEADER in request.headers:
            raise ApiError(503, "unavailable", "this node is not the leader either; retry")
        leader = self.node.leader
        if leader is None:
            raise ApiError(503, "unavailable", "no leader is known; retry")
        info = self.node.member(leader)
        if info is None or not info.client:
            message = f"the client URL of the leader {leader} is not known yet; retry"
            raise ApiError(503, "unavailable", message)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout_s = self.node.options.request_timeout_ms / 1000 + FORWARD_EXTRA_S
        url = info.client + request.path_qs
        headers = {FORWARDED_HEADER: self.node.name, "Content-Type": "application/json"}
        try:
            async with self._session.request(
                request.method,
                url,
                data=body or None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as answer:
                status, data = answer.status, await _read_limited(answer)
        except aiohttp.ClientConnectorError as error:
            raise ApiError(
                503, "unavailable", f"cannot reach the leader {leader}: {error}"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as error:
            code = "unavailable" if request.method == "GET" else "unknown_outcome"
            message = f"the leader {leader} did not answer: {error or 'timeout'}"
            raise ApiError(503, code, message) from None
        return web.Response(body=data, status=status, content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        self.node.refresh_metrics()
        metrics = self.node.metrics
        metrics.idempotency_keys.set(self.kv.idempotency_keys)
        metrics.idempotency_retention_seconds.set(self.kv.idempotency_retention_ms / 1000)
        return web.Response(
            body=self.node.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


def make_app(api: Api) -> web.Application:
    options = api.options
    app = web.Application(middlewares=[api.middleware], client_max_size=options.request_bytes_max)
    app.router.add_put("/v1/kv/{key:.+}", api.put)
    app.router.add_get("/v1/kv/{key:.+}", api.get)
    app.router.add_delete("/v1/kv/{key:.+}", api.delete)
    app.router.add_get("/v1/kv", api.range)
    app.router.add_post("/v1/txn", api.txn)
    app.router.add_get("/v1/watch", api.watch)
    app.router.add_get("/v1/status", api.status)
    app.router.add_get("/v1/members", api.members)
    app.router.add_post("/v1/members", api.add_member)
    app.router.add_delete("/v1/members/{name}", api.remove_member)
    app.router.add_post("/v1/members/{name}/promote", api.promote_member)
    app.router.add_post("/v1/leader/transfer", api.transfer_leader)
    app.on_cleanup.append(api.close)
    app.router.add_get("/health", api.health)
    app.router.add_get("/metrics", api.metrics)
    return app


async def _read_limited(answer: aiohttp.ClientResponse) -> bytes:
    data = bytearray()
    async for chunk in answer.content.iter_chunked(64 << 10):
        data += chunk
        if len(data) > FORWARD_ANSWER_BYTES_MAX:
            message = f"the leader's answer is over {FORWARD_ANSWER_BYTES_MAX} bytes"
            raise ApiError(500, "internal", message)
    return bytes(data)


def join_argv(node: Node, info: MemberInfo, cluster_id: str) -> list[str]:
    """The ``replog serve`` command line that starts the new member ``info`` and joins it."""
    members = {m.name: m.peer for m in node.members() if m.peer}
    members[info.name] = info.peer
    initial = ",".join(f"{name}={peer}" for name, peer in sorted(members.items()))
    argv = ["replog", "serve", "--name", info.name]
    if cluster_id != "replog":
        argv += ["--cluster-id", cluster_id]
    argv += [
        "--listen-client", str(parse_address(info.client, "client")),
        "--listen-peer", info.peer,
        "--initial-cluster", initial,
        "--initial-cluster-state", "existing",
    ]  # fmt: skip
    defaults, options = NodeOptions(), node.options
    for setting in (
        "tick_ms",
        "heartbeat_ms",
        "election_timeout_ms",
        "clock_drift_ms",
        "request_timeout_ms",
        "snapshot_entries",
        "snapshot_keep_entries",
    ):
        value = getattr(options, setting)
        if value != getattr(defaults, setting):
            argv += ["--" + setting.replace("_", "-"), str(value)]
    if options.lease_reads:
        argv.append("--lease-reads")
    if not node.auto_promote:
        argv.append("--no-auto-promote")
    return argv


def _member_json(member: MemberStatus) -> Json:
    return {
        "id": member.name,
        "node_id": member.node_id,
        "peer_url": member.peer or None,
        "client_url": member.client or None,
        "role": member.role,
        "is_leader": member.is_leader,
        "auto_promote": member.promote,
        "caught_up": member.caught_up,
        "match_index": member.match_index,
        "lag": member.lag,
    }


# ---- request parsing -------------------------------------------------------------------------


def _json_object(body: bytes, allowed: frozenset[str]) -> Json:
    try:
        fields = msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        raise ApiError(400, "invalid_request", f"malformed JSON: {error}") from None
    if not isinstance(fields, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    unknown = sorted(set(fields) - allowed)
    if unknown:
        expected = ", ".join(sorted(allowed))
        raise ApiError(400, "invalid_request", f"unknown fields {unknown} (expected: {expected})")
    return fields


def _text_field(fields: Json, name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, "invalid_request", f"{name} is required (a non-empty string)")
    return value


def _bool_param(query: Mapping[str, str], name: str) -> bool:
    text = query.get(name, "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise ApiError(400, "invalid_request", f"{name} must be true or false, not {text!r}")
    return text in ("true", "1")


def _query(request: web.Request, allowed: tuple[str, ...]) -> Mapping[str, str]:
    query = request.query
    for name in query:
        if name not in allowed:
            expected = ", ".join(allowed) if allowed else "none"
            message = f"unknown query parameter {name!r} (expected: {expected})"
            raise ApiError(400, "invalid_request", message)
        if len(query.getall(name)) > 1:
            raise ApiError(400, "invalid_request", f"query parameter {name!r} is repeated")
    return query


def _path_key(request: web.Request) -> bytes:
    key = request.match_info["key"].encode()
    if not key:
        raise ApiError(400, "invalid_request", "the key is empty")
    return key


def _bytes_param(query: Mapping[str, str], name: str, *, required: bool) -> bytes:
    text, encoded = query.get(name), query.get(f"{name}_base64")
    if text is not None and encoded is not None:
        raise ApiError(400, "invalid_request", f"give {name} or {name}_base64, not both")
    if encoded is not None:
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "invalid_request", f"{name}_base64 is not valid base64") from None
    if text is None and required:
        raise ApiError(400, "invalid_request", f"{name} is required")
    return (text or "").encode()


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be an integer, not {text!r}") from None
    if not low <= value <= high:
        raise ApiError(400, "invalid_request", f"{name} must be between {low} and {high}")
    return value


def api_error_of(error: Exception) -> ApiError | None:
    """The API's answer to an error a handler raised; None for a programming error."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, Unavailable | NotLeader):
        return ApiError(503, "unavailable", str(error))
    if isinstance(error, UnknownOutcome):
        return ApiError(503, "unknown_outcome", str(error))
    if isinstance(error, MembershipError):
        return ApiError(error.status, error.code, str(error))
    if isinstance(error, ReplogError):  # the core refused a request as invalid
        return ApiError(400, "invalid_request", str(error))
    return None


def _valid_idempotency_key(key: str) -> bool:
    """Printable ASCII without spaces (``!`` to ``~``), as a header value allows."""
    return (
        0 < len(key) <= IDEMPOTENCY_KEY_BYTES_MAX
        and key.isascii()
        and key.isprintable()
        and " " not in key
    )


def _invalid(error: InvalidCommand) -> ApiError:
    code = "too_large" if isinstance(error, TooLarge) else "invalid_request"
    return ApiError(400, code, str(error))


def _error_detail(error: ApiError) -> Json:
    return {"code": error.code, "message": error.message, **error.extra}
