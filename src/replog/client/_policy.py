"""Endpoint choice, retries and watch resumption, shared by the sync and the async client.

Theory of operation (sans-I/O: the two clients do the sockets and the sleeping, this module makes
every decision):

- ``Endpoints`` remembers each endpoint's ``node_id`` and the last ``leader_id`` seen in any
  answer's header, and offers the leader's endpoint first (a follower would only forward to it);
  while the leader's endpoint is unknown it tries endpoints not yet heard from; otherwise it goes
  round-robin. An endpoint that fails loses the leader mark and is passed over for ``DOWN_S``
  while others remain, so requests move on instead of knocking at a dead node.
- ``Attempts`` drives one logical request. Connection errors, timeouts and 503 ``unavailable`` /
  ``unknown_outcome`` are retried on the next endpoint with exponential backoff and jitter until
  ``retry_timeout_s`` has passed; every other error answer is raised at once. A write carries one
  idempotency key for all its attempts, so a retry after an uncertain attempt is applied at most
  once (docs/http-api.md, "Writes"). Invariant: once an attempt of a write may have been applied
  (503 ``unknown_outcome``, or a failure after the request was sent), running out of time raises
  ``UnknownOutcome``, never ``Unavailable`` (which promises the write was not applied).
- ``WatchCursor`` keeps a watch's next revision (the last event's ``mod_revision`` + 1), so a
  broken stream resumes from there on any endpoint, and drops any event it has already delivered.
"""

from __future__ import annotations

import random
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from replog.client.errors import (
    ReplogClientError,
    ServerError,
    Unavailable,
    UnknownOutcome,
    error_from_answer,
)
from replog.client.types import (
    Header,
    WatchEvent,
    WatchLine,
    WireError,
    bytes_field,
    decode_answer,
    decode_header,
    to_bytes,
)

DEFAULT_ENDPOINTS = ("http://127.0.0.1:14300", "http://127.0.0.1:14301", "http://127.0.0.1:14302")
BACKOFF_BASE_S = 0.025
BACKOFF_MAX_S = 1.0
ENDPOINTS_MAX = 64
DOWN_S = 2.0
ANSWER_MAX_BYTES = 256 * 1024 * 1024  # a full range of large values stays well under this
WATCH_LINE_MAX_BYTES = 64 * 1024 * 1024
SESSION_ID_MAX_CHARS = 100  # leaves room for "-<seq>" within the header's 128 characters
RETRYABLE_CODES = frozenset({"unavailable", "unknown_outcome"})
STATUS_OF_CODE = {
    "invalid_request": 400,
    "too_large": 400,
    "key_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "idempotency_key_reused": 409,
    "revision_compacted": 410,
    "unavailable": 503,
    "unknown_outcome": 503,
    "internal": 500,
}


def normalize_endpoints(endpoints: str | Sequence[str]) -> tuple[str, ...]:
    """``endpoints`` (a list, or one comma-separated string) as checked base URLs."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    urls = tuple(normalize_endpoint(item) for item in items if item.strip())
    if not urls:
        raise ValueError("no endpoints given")
    if len(urls) > ENDPOINTS_MAX:
        raise ValueError(f"at most {ENDPOINTS_MAX} endpoints, got {len(urls)}")
    return urls


def normalize_endpoint(url: str) -> str:
    """One endpoint as ``scheme://host:port`` (``http`` or ``https``); ``ValueError`` if bad."""
    text = url.strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) endpoint URL: {text!r} (example: http://127.0.0.1:14300)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an endpoint URL is scheme://host:port only, without a path: {text!r}")
    try:
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise ValueError(f"bad port in endpoint URL: {text!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


def check_session_id(session_id: str) -> str:
    ok = 0 < len(session_id) <= SESSION_ID_MAX_CHARS
    if not ok or not all(33 <= ord(char) <= 126 for char in session_id):
        raise ValueError(
            f"session_id must be 1 to {SESSION_ID_MAX_CHARS} printable ASCII characters "
            f"without spaces: {session_id!r}"
        )
    return session_id


@dataclass(frozen=True)
class Request:
    """One HTTP request: ``target`` is the encoded path and query."""

    method: str
    target: str
    body: bytes | None = None
    idempotency_key: str | None = None
    content_type: str | None = None

    @property
    def is_write(self) -> bool:
        return self.idempotency_key is not None

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        return headers


def kv_target(key: bytes) -> str:
    """The URL path of a key that is valid UTF-8 (binary keys go through a transaction)."""
    return "/v1/kv/" + urllib.parse.quote(key.decode("utf-8"), safe="")


def query_target(path: str, params: dict[str, Any]) -> str:
    given = {name: value for name, value in params.items() if value is not None}
    if not given:
        return path
    return path + "?" + urllib.parse.urlencode(given, quote_via=urllib.parse.quote)


def key_params(name: str, key: bytes | str | None) -> dict[str, str]:
    """Query parameters naming a key or prefix (``name`` or ``name_base64``)."""
    if key is None:
        return {}
    return bytes_field(name, to_bytes(key, name))


class TransportFailure(Exception):
    """No answer from an endpoint; ``sent`` when the request may have reached the node."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class Endpoints:
    """The endpoints of one client, with the leader preference described above.

    An endpoint that failed is passed over for ``DOWN_S`` while others remain.
    """

    def __init__(self, urls: Sequence[str], *, clock: Callable[[], float] = time.monotonic) -> None:
        assert urls, "normalize_endpoints refuses an empty list"
        self.urls = tuple(urls)
        self._clock = clock
        self._node_ids: dict[str, str] = {}
        self._leader_id: str | None = None
        self._down_until: dict[str, float] = {}
        self._cursor = 0

    def pick(self) -> str:
        """The leader's endpoint if known; else, while the leader's endpoint is unknown, the
        next endpoint not yet heard from; else the next endpoint round-robin."""
        leader = self.leader_endpoint()
        if leader is not None and not self._is_down(leader):
            return leader
        count = len(self.urls)
        order = [(self._cursor + step) % count for step in range(count)]
        order = [index for index in order if not self._is_down(self.urls[index])] or order
        if self._leader_id is not None:
            unheard = [index for index in order if self.urls[index] not in self._node_ids]
            order = unheard or order
        self._cursor = (order[0] + 1) % count
        return self.urls[order[0]]

    def leader_endpoint(self) -> str | None:
        if self._leader_id is None:
            return None
        for url in self.urls:
            if self._node_ids.get(url) == self._leader_id:
                return url
        return None

    def observe(self, endpoint: str, header: Header) -> None:
        self._down_until.pop(endpoint, None)
        self._node_ids[endpoint] = header.node_id
        if header.leader_id is not None:
            self._leader_id = header.leader_id

    def failed(self, endpoint: str) -> None:
        if self._leader_id is not None and self._node_ids.get(endpoint) == self._leader_id:
            self._leader_id = None
        self._down_until[endpoint] = self._clock() + DOWN_S
        if endpoint in self.urls:
            self._cursor = (self.urls.index(endpoint) + 1) % len(self.urls)

    def _is_down(self, endpoint: str) -> bool:
        return self._down_until.get(endpoint, 0.0) > self._clock()


@dataclass(frozen=True)
class Retry:
    """Try again after ``delay_s`` (the answer or failure was retryable)."""

    delay_s: float


def error_of_answer(endpoint: str, status: int, body: bytes) -> ReplogClientError:
    """The typed error for a non-2xx answer (a ``ServerError`` if the body is unreadable)."""
    try:
        wire: WireError = decode_answer(WireError, body)
    except ValueError:
        if status == 503:
            return Unavailable(
                f"HTTP {status} without an error body", status=503, endpoint=endpoint
            )
        snippet = body[:200].decode("utf-8", "replace")
        return ServerError(
            f"HTTP {status}: {snippet!r}", code="bad_response", status=status, endpoint=endpoint
        )
    compact = wire.error.compact_revision
    return error_from_answer(
        status=status,
        code=wire.error.code,
        message=wire.error.message or f"HTTP {status}",
        header=wire.header,
        endpoint=endpoint,
        compact_revision=compact if compact is not None else wire.compact_revision,
    )


class Attempts:
    """The retry loop of one logical request (see the module docstring)."""

    def __init__(
        self,
        endpoints: Endpoints,
        request: Request,
        *,
        retry_timeout_s: float,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = endpoints
        self.request = request
        self.retry_timeout_s = retry_timeout_s
        self._rng = rng
        self._clock = clock
        self._deadline = clock() + retry_timeout_s
        self._count = 0
        self._maybe_applied = False
        self._answered = False
        self._last_error: ReplogClientError | None = None

    def next_endpoint(self) -> str:
        """The endpoint of the next attempt; raises the final error once time is up."""
        if self._count > 0 and self._clock() >= self._deadline:
            raise self.give_up()
        self._count += 1
        return self.endpoints.pick()

    def attempt_timeout_s(self, timeout_s: float) -> float:
        """A per-attempt timeout that does not run far past the deadline."""
        return max(0.05, min(timeout_s, self._deadline - self._clock()))

    def on_failure(self, endpoint: str, failure: TransportFailure) -> Retry:
        self.endpoints.failed(endpoint)
        if failure.sent and self.request.is_write:
            self._maybe_applied = True
        self._last_error = Unavailable(str(failure), code="unreachable", endpoint=endpoint)
        return self._retry()

    def on_answer(self, endpoint: str, status: int, body: bytes) -> bytes | Retry:
        """The body of a 2xx answer, a ``Retry``, or raises the answer's error."""
        header = decode_header(body)
        if header is not None:
            self.endpoints.observe(endpoint, header)
        if 200 <= status < 300:
            return body
        error = error_of_answer(endpoint, status, body)
        if status != 503 or error.code not in RETRYABLE_CODES:
            raise error
        self._answered = True
        if error.code == "unknown_outcome":
            self._maybe_applied = True
        self._last_error = error
        self.endpoints.failed(endpoint)
        return self._retry()

    def _retry(self) -> Retry:
        return Retry(retry_delay_s(self._count, self._deadline - self._clock(), self._rng))

    @property
    def last_error(self) -> ReplogClientError:
        """The error of the latest failed attempt (there must have been one)."""
        assert self._last_error is not None, "asked after a failed attempt only"
        return self._last_error

    def give_up(self) -> ReplogClientError:
        last = self._last_error
        assert last is not None, "give_up follows at least one failed attempt"
        last_text = f"last error: {last.code}: {last.message}"
        within = f"{self.retry_timeout_s:g} s and {self._count} attempts"
        if self.request.is_write and self._maybe_applied:
            return outcome_unknown(self.request.idempotency_key, within, last)
        if not self._answered:
            return Unavailable(
                f"no endpoint reachable within {within}; {last_text}",
                code="unreachable",
                endpoint=last.endpoint,
            )
        return Unavailable(
            f"cluster unavailable for {within}; {last_text}",
            status=last.status,
            header=last.header,
            endpoint=last.endpoint,
        )


def retry_delay_s(attempts: int, remaining_s: float, rng: random.Random) -> float:
    """The pause before the next attempt: exponential in the attempts made so far, with
    jitter (clients that failed together do not come back together), never past the deadline."""
    backoff_s = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** min(attempts, 16))
    return max(0.0, min(remaining_s, backoff_s * rng.uniform(0.5, 1.0)))


def outcome_unknown(key: str | None, within: str, last: ReplogClientError) -> UnknownOutcome:
    """The final error of a write that one attempt may have applied."""
    return UnknownOutcome(
        f"the write may or may not have been applied (idempotency key {key}; retrying with it "
        f"is safe); gave up after {within}; last error: {last.code}: {last.message}",
        status=last.status,
        header=last.header,
        endpoint=last.endpoint,
    )


class WatchCursor:
    """Where a watch stands: the filter, and the next revision it needs."""

    def __init__(
        self, *, key: bytes | str | None, prefix: bytes | str | None, start_revision: int | None
    ) -> None:
        if (key is None) == (prefix is None):
            raise ValueError("watch needs exactly one of key= and prefix=")
        if start_revision is not None and start_revision < 1:
            raise ValueError(f"start_revision must be at least 1, got {start_revision}")
        self._filter = key_params("key", key) if key is not None else key_params("prefix", prefix)
        self.next_revision = start_revision

    def request(self) -> Request:
        params: dict[str, Any] = dict(self._filter)
        params["start_revision"] = self.next_revision
        return Request("GET", query_target("/v1/watch", params))

    def accept_line(self, endpoints: Endpoints, endpoint: str, line: bytes) -> list[WatchEvent]:
        """The new events of one stream line.

        Raises ``ValueError`` if the line is unreadable, and the typed error of an error line.
        """
        wire: WatchLine = decode_answer(WatchLine, line)
        endpoints.observe(endpoint, wire.header)
        if wire.error is not None:
            raise error_from_answer(
                status=STATUS_OF_CODE.get(wire.error.code, 500),
                code=wire.error.code,
                message=wire.error.message or "the watch stream ended with an error",
                header=wire.header,
                endpoint=endpoint,
                compact_revision=wire.error.compact_revision,
            )
        events = [
            event
            for event in wire.public_events()
            if self.next_revision is None or event.kv.mod_revision >= self.next_revision
        ]
        if events:
            self.next_revision = max(event.kv.mod_revision for event in events) + 1
        return events
