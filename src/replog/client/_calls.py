"""The requests behind each client method, shared by the sync and the async client.

A ``Call`` pairs one HTTP request with the function that turns its 2xx body into the method's
answer. Keys that are not valid UTF-8 cannot travel in a URL path (docs/http-api.md, "Keys and
values"), so single-key methods on such keys become one-operation transactions (a read of
such a key is then linearizable whatever ``consistency`` says). Every write takes
the next sequence number of the client's session for its ``Idempotency-Key``; retries reuse the
``Call`` and so the key.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from replog.client._policy import Attempts, Request, Retry, kv_target, query_target
from replog.client.errors import KeyNotFound, ServerError
from replog.client.types import (
    Compare,
    DeleteOp,
    DeleteResponse,
    DeleteResult,
    GetOp,
    GetResponse,
    GetResult,
    Op,
    PutOp,
    PutResponse,
    PutResult,
    RangeResponse,
    StatusResponse,
    TxnResponse,
    as_text,
    bytes_field,
    decode_answer,
    to_bytes,
    txn_json,
)

T = TypeVar("T")
CONSISTENCIES = ("linearizable", "lease", "stale")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer; ``missing`` answers a 404 ``key_not_found``."""

    request: Request
    finish: Callable[[bytes], T]
    missing: Callable[[GetResponse], T] | None = None


def settle(call: Call[T], attempts: Attempts, endpoint: str, status: int, body: bytes) -> T | Retry:
    """The answer of ``call`` from one node's answer, or a ``Retry``; raises a final error."""
    try:
        outcome = attempts.on_answer(endpoint, status, body)
    except KeyNotFound as error:
        if call.missing is None or error.header is None:
            raise
        return call.missing(GetResponse(error.header, None))
    if isinstance(outcome, Retry):
        return outcome
    try:
        return call.finish(outcome)
    except ValueError as error:
        raise ServerError(str(error), code="bad_response", endpoint=endpoint) from None


def _decoder(answer_type: type[T]) -> Callable[[bytes], T]:
    def finish(body: bytes) -> T:
        decoded: T = decode_answer(answer_type, body)
        return decoded

    return finish


def _only_result(body: bytes) -> tuple[TxnResponse, PutResult | DeleteResult | GetResult]:
    txn: TxnResponse = decode_answer(TxnResponse, body)
    if len(txn.responses) != 1:
        raise ValueError(f"expected one transaction response, got {len(txn.responses)}")
    return txn, txn.responses[0]


def _put_from_txn(body: bytes) -> PutResponse:
    txn, result = _only_result(body)
    if not isinstance(result, PutResult):
        raise ValueError("expected a put response")
    return PutResponse(txn.header, result.kv, result.prev_kv)


def _delete_from_txn(body: bytes) -> DeleteResponse:
    txn, result = _only_result(body)
    if not isinstance(result, DeleteResult):
        raise ValueError("expected a delete response")
    return DeleteResponse(txn.header, result.deleted, result.prev_kv)


def _get_from_txn(body: bytes) -> GetResponse:
    txn, result = _only_result(body)
    if not isinstance(result, GetResult):
        raise ValueError("expected a get response")
    return GetResponse(txn.header, result.kv)


class Calls:
    """Builds the ``Call`` of each client method; owns the session's write sequence."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._seq = itertools.count(1)

    def _write_key(self) -> str:
        return f"{self.session_id}-{next(self._seq)}"

    def _txn_request(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
    ) -> Request:
        body = json.dumps(txn_json(compare, success, failure), separators=(",", ":"))
        writes = any(not isinstance(op, GetOp) for op in [*success, *failure])
        return Request(
            "POST",
            "/v1/txn",
            body.encode("utf-8"),
            idempotency_key=self._write_key() if writes else None,
            content_type="application/json",
        )

    def put(self, key: bytes | str, value: bytes | str) -> Call[PutResponse]:
        key_bytes, value_bytes = to_bytes(key), to_bytes(value, "value")
        if as_text(key_bytes) is None:
            request = self._txn_request([], [PutOp(key_bytes, value_bytes)], [])
            return Call(request, _put_from_txn)
        request = Request(
            "PUT",
            kv_target(key_bytes),
            value_bytes,
            idempotency_key=self._write_key(),
            content_type="application/octet-stream",
        )
        return Call(request, _decoder(PutResponse))

    def get(
        self, key: bytes | str, *, consistency: str, min_revision: int | None
    ) -> Call[GetResponse]:
        key_bytes = to_bytes(key)
        check_consistency(consistency)
        if min_revision is not None and min_revision < 0:
            raise ValueError(f"min_revision must not be negative, got {min_revision}")
        if as_text(key_bytes) is None:
            return Call(self._txn_request([], [GetOp(key_bytes)], []), _get_from_txn)
        params = {"consistency": consistency, "min_revision": min_revision}
        request = Request("GET", query_target(kv_target(key_bytes), params))
        return Call(request, _decoder(GetResponse), missing=lambda answer: answer)

    def delete(self, key: bytes | str) -> Call[DeleteResponse]:
        key_bytes = to_bytes(key)
        if as_text(key_bytes) is None:
            request = self._txn_request([], [DeleteOp(key_bytes)], [])
            return Call(request, _delete_from_txn)
        request = Request("DELETE", kv_target(key_bytes), idempotency_key=self._write_key())
        return Call(request, _decoder(DeleteResponse))

    def range(self, prefix: bytes | str, *, limit: int, consistency: str) -> Call[RangeResponse]:
        check_consistency(consistency)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        prefix_bytes = to_bytes(prefix, "prefix")
        params: dict[str, Any] = bytes_field("prefix", prefix_bytes) if prefix_bytes else {}
        params |= {"limit": limit, "consistency": consistency}
        return Call(Request("GET", query_target("/v1/kv", params)), _decoder(RangeResponse))

    def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
    ) -> Call[TxnResponse]:
        return Call(self._txn_request(compare, success, failure), _decoder(TxnResponse))

    def cas(
        self,
        key: bytes | str,
        *,
        expected_value: bytes | str | None,
        expected_mod_revision: int | None,
        new_value: bytes | str,
    ) -> Call[bool]:
        if expected_value is None and expected_mod_revision is None:
            raise ValueError("cas needs expected_value or expected_mod_revision (0: no such key)")
        compare: list[Compare] = []
        if expected_mod_revision is not None:
            compare.append(Compare(key, "mod_revision", "==", expected_mod_revision))
        if expected_value is not None:
            compare.append(Compare(key, "value", "==", expected_value))
        request = self._txn_request(compare, [PutOp(to_bytes(key), to_bytes(new_value))], [])
        return Call(request, lambda body: _decoder(TxnResponse)(body).succeeded)

    def status(self) -> Call[StatusResponse]:
        return Call(Request("GET", "/v1/status"), _decoder(StatusResponse))

    # Membership and leadership answer the API's JSON objects as dicts (docs/http-api.md).

    def members(self) -> Call[dict[str, Any]]:
        return Call(Request("GET", "/v1/members"), _json_object)

    def add_member(
        self, name: str, peer_url: str, client_url: str, learner: bool
    ) -> Call[dict[str, Any]]:
        body = {"name": name, "peer_url": peer_url, "client_url": client_url, "learner": learner}
        return Call(_json_request("POST", "/v1/members", body), _json_object)

    def remove_member(self, name: str, force: bool) -> Call[dict[str, Any]]:
        target = query_target(_member_path(name), {"force": "true" if force else None})
        return Call(Request("DELETE", target), _json_object)

    def promote_member(self, name: str) -> Call[dict[str, Any]]:
        return Call(Request("POST", _member_path(name) + "/promote"), _json_object)

    def transfer_leader(self, to: str | None) -> Call[dict[str, Any]]:
        return Call(_json_request("POST", "/v1/leader/transfer", {"to": to}), _json_object)


def _member_path(name: str) -> str:
    return "/v1/members/" + urllib.parse.quote(name, safe="")


def _json_request(method: str, target: str, body: dict[str, Any]) -> Request:
    return Request(method, target, json.dumps(body).encode(), content_type="application/json")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError as error:
        raise ValueError(f"the answer is not JSON: {error}") from None
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    return answer


def check_consistency(consistency: str) -> None:
    if consistency not in CONSISTENCIES:
        raise ValueError(f"consistency must be one of {', '.join(CONSISTENCIES)}: {consistency!r}")
