"""The Python client of a replog cluster: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both speak the HTTP API of docs/http-api.md, prefer the leader's endpoint, retry what is safe to
retry (every write carries one idempotency key for all its attempts) and raise the typed errors
of ``replog.client.errors``.

``RpcClient`` (asyncio) speaks the binary client protocol of ``replog.protocol`` instead: one
TCP connection with many requests in flight, for programs that send many requests. It raises the
same typed errors and retries what is safe to retry, on the next endpoint (any node serves any
request, so it does not look for the leader); it keys writes only when given a ``session_id``.
"""

from __future__ import annotations

from replog.client._policy import DEFAULT_ENDPOINTS
from replog.client.aio import AsyncClient, AsyncWatch
from replog.client.errors import (
    IdempotencyKeyReused,
    InvalidRequest,
    KeyNotFound,
    MembershipRefused,
    ReplogClientError,
    RevisionCompacted,
    ServerError,
    TooLarge,
    Unavailable,
    UnknownOutcome,
)
from replog.client.rpc import RpcClient
from replog.client.sync import Client, Watch
from replog.client.types import (
    Compare,
    DeleteOp,
    DeleteResponse,
    DeleteResult,
    FollowerStatus,
    GetOp,
    GetResponse,
    GetResult,
    Header,
    KeyValue,
    NodeStatus,
    Op,
    OpResult,
    PutOp,
    PutResponse,
    PutResult,
    RangeResponse,
    StatusResponse,
    TxnResponse,
    WatchEvent,
    delete_op,
    get_op,
    parse_txn,
    put_op,
    to_api_json,
)

__all__ = [
    "DEFAULT_ENDPOINTS",
    "AsyncClient",
    "AsyncWatch",
    "Client",
    "Compare",
    "DeleteOp",
    "DeleteResponse",
    "DeleteResult",
    "FollowerStatus",
    "GetOp",
    "GetResponse",
    "GetResult",
    "Header",
    "IdempotencyKeyReused",
    "InvalidRequest",
    "KeyNotFound",
    "KeyValue",
    "MembershipRefused",
    "NodeStatus",
    "Op",
    "OpResult",
    "PutOp",
    "PutResponse",
    "PutResult",
    "RangeResponse",
    "ReplogClientError",
    "RevisionCompacted",
    "RpcClient",
    "ServerError",
    "StatusResponse",
    "TooLarge",
    "TxnResponse",
    "Unavailable",
    "UnknownOutcome",
    "Watch",
    "WatchEvent",
    "delete_op",
    "get_op",
    "parse_txn",
    "put_op",
    "to_api_json",
]
