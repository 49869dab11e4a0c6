"""``replog.Client``: the blocking client, on the standard library's ``http.client``.

It keeps one persistent keep-alive connection per endpoint (a watch opens its own). Endpoint
choice, retries and watch resumption are decided in ``_policy`` (see its docstring); this module
only moves bytes. A ``Client`` is not thread-safe: give each thread its own.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from replog.client._calls import Call, Calls, settle
from replog.client._policy import (
    ANSWER_MAX_BYTES,
    DEFAULT_ENDPOINTS,
    WATCH_LINE_MAX_BYTES,
    Attempts,
    Endpoints,
    Request,
    Retry,
    TransportFailure,
    WatchCursor,
    check_session_id,
    normalize_endpoint,
    normalize_endpoints,
)
from replog.client.errors import ReplogClientError, ServerError, Unavailable, UnknownOutcome
from replog.client.types import (
    Compare,
    DeleteResponse,
    GetResponse,
    KeyValue,
    Op,
    PutResponse,
    RangeResponse,
    StatusResponse,
    TxnResponse,
    WatchEvent,
)

__all__ = ["Client", "Watch"]

T = TypeVar("T")
WATCH_IDLE_TIMEOUT_S = 15.0
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _connection(endpoint: str, timeout_s: float) -> http.client.HTTPConnection:
    parts = urlsplit(endpoint)
    assert parts.hostname is not None, "endpoints are normalized"
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname, parts.port, timeout=timeout_s)


def _open(endpoint: str, timeout_s: float) -> http.client.HTTPConnection:
    connection = _connection(endpoint, timeout_s)
    try:
        connection.connect()
    except OSError as error:
        connection.close()
        raise TransportFailure(f"cannot connect: {error}", sent=False) from None
    return connection


def _send(connection: http.client.HTTPConnection, request: Request) -> http.client.HTTPResponse:
    connection.request(request.method, request.target, request.body, request.headers())
    return connection.getresponse()


def _read_body(response: http.client.HTTPResponse) -> bytes:
    body = response.read(ANSWER_MAX_BYTES + 1)
    if len(body) > ANSWER_MAX_BYTES:
        raise TransportFailure(f"answer over {ANSWER_MAX_BYTES} bytes", sent=True)
    return body


class _StaleConnection(Exception):
    """A kept-alive connection turned out closed by the node."""


class _Connections:
    """One keep-alive connection per endpoint, reopened after any failure."""

    def __init__(self) -> None:
        self._open: dict[str, http.client.HTTPConnection] = {}

    def exchange(self, endpoint: str, request: Request, timeout_s: float) -> tuple[int, bytes]:
        connection = self._open.pop(endpoint, None)
        if connection is not None:
            connection.timeout = timeout_s
            if connection.sock is not None:
                connection.sock.settimeout(timeout_s)
            try:
                return self._finish(endpoint, connection, request, reused=True)
            except _StaleConnection:
                if request.is_write:
                    # The node may have read the write before the connection ended (it may
                    # have been killed just then): a retry must not forget that.
                    message = (
                        "no answer: the kept-alive connection closed; the write may have arrived"
                    )
                    raise TransportFailure(message, sent=True) from None
                # A read on an idle connection the node closed: one fresh try.
        return self._finish(endpoint, _open(endpoint, timeout_s), request, reused=False)

    def _finish(
        self,
        endpoint: str,
        connection: http.client.HTTPConnection,
        request: Request,
        *,
        reused: bool,
    ) -> tuple[int, bytes]:
        try:
            response = _send(connection, request)
            body = _read_body(response)
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            if reused and isinstance(error, _STALE_CONNECTION):
                raise _StaleConnection from error
            text = "timed out" if isinstance(error, TimeoutError) else repr(error)
            raise TransportFailure(f"no answer: {text}", sent=True) from None
        except TransportFailure:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            self._open[endpoint] = connection
        return response.status, body

    def close(self) -> None:
        while self._open:
            _, connection = self._open.popitem()
            connection.close()


class Client:
    """A blocking client of a replog cluster (see ``docs/http-api.md``).

    >>> with Client("http://127.0.0.1:14300,http://127.0.0.1:14301") as client:
    ...     client.put("config/a", "1")
    ...     client.get("config/a").value
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINTS,
        *,
        timeout_s: float = 5.0,
        retry_timeout_s: float = 15.0,
        session_id: str | None = None,
    ) -> None:
        if timeout_s <= 0 or retry_timeout_s < 0:
            raise ValueError("timeout_s must be positive and retry_timeout_s not negative")
        self.endpoints = Endpoints(normalize_endpoints(endpoints))
        self.timeout_s = timeout_s
        self.retry_timeout_s = retry_timeout_s
        self.session_id = check_session_id(session_id or uuid.uuid4().hex)
        self._calls = Calls(self.session_id)
        self._rng = random.Random()
        self._connections = _Connections()
        self._watches: set[Watch] = set()

    # --- key-value ---

    def put(self, key: bytes | str, value: bytes | str) -> PutResponse:
        """Write ``value`` under ``key``; the answer holds the new and the previous key-value."""
        return self._run(self._calls.put(key, value))

    def get(
        self,
        key: bytes | str,
        *,
        consistency: str = "linearizable",
        min_revision: int | None = None,
    ) -> KeyValue | None:
        """The key-value of ``key``, or ``None`` when it does not exist."""
        return self.get_response(key, consistency=consistency, min_revision=min_revision).kv

    def get_response(
        self,
        key: bytes | str,
        *,
        consistency: str = "linearizable",
        min_revision: int | None = None,
    ) -> GetResponse:
        """Like ``get``, with the answering node's header (``kv`` is ``None`` if missing)."""
        call = self._calls.get(key, consistency=consistency, min_revision=min_revision)
        return self._run(call)

    def delete(self, key: bytes | str) -> DeleteResponse:
        """Delete ``key``; ``deleted`` is 0 when it did not exist (not an error)."""
        return self._run(self._calls.delete(key))

    def range(
        self, prefix: bytes | str = b"", *, limit: int = 1000, consistency: str = "linearizable"
    ) -> RangeResponse:
        """The keys that start with ``prefix`` (all keys by default), in byte order."""
        return self._run(self._calls.range(prefix, limit=limit, consistency=consistency))

    def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResponse:
        """Run ``success`` if every compare holds, else ``failure``, as one write."""
        return self._run(self._calls.txn(compare, success, failure))

    def cas(
        self,
        key: bytes | str,
        *,
        expected_value: bytes | str | None = None,
        expected_mod_revision: int | None = None,
        new_value: bytes | str,
    ) -> bool:
        """Put ``new_value`` if the key still has the expected value and/or mod_revision.

        ``expected_mod_revision=0`` means "the key must not exist". Answers whether it wrote.
        """
        call = self._calls.cas(
            key,
            expected_value=expected_value,
            expected_mod_revision=expected_mod_revision,
            new_value=new_value,
        )
        return self._run(call)

    # --- watch and status ---

    def watch(
        self,
        *,
        key: bytes | str | None = None,
        prefix: bytes | str | None = None,
        start_revision: int | None = None,
        idle_timeout_s: float = WATCH_IDLE_TIMEOUT_S,
    ) -> Watch:
        """Iterate over the events of ``key`` or of the keys under ``prefix``.

        Without ``start_revision`` the watch starts after the cluster's current revision. A broken
        stream resumes on another endpoint from the last seen revision + 1; a stream silent for
        ``idle_timeout_s`` (the server sends keepalive lines) counts as broken. Raises
        ``RevisionCompacted`` when the history needed is gone. Close it (or use ``with``).
        """
        cursor = WatchCursor(key=key, prefix=prefix, start_revision=start_revision)
        if cursor.next_revision is None:
            cursor.next_revision = self.status().header.revision + 1
        watch = Watch(self, cursor, idle_timeout_s)
        self._watches.add(watch)
        return watch

    def status(self, endpoint: str | None = None) -> StatusResponse:
        """The status of one node: ``endpoint`` (one attempt), or any endpoint (with retries)."""
        if endpoint is None:
            return self._run(self._calls.status())
        return self._run_once(normalize_endpoint(endpoint), self._calls.status())

    def status_all(self) -> list[tuple[str, StatusResponse | ReplogClientError]]:
        """The status of every endpoint, or the error that endpoint gave (one attempt each)."""
        answers: list[tuple[str, StatusResponse | ReplogClientError]] = []
        for endpoint in self.endpoints.urls:
            try:
                answers.append((endpoint, self.status(endpoint)))
            except ReplogClientError as error:
                answers.append((endpoint, error))
        return answers

    # --- membership and leadership (answers: the API's JSON objects, as dicts) ---

    def members(self) -> dict[str, Any]:
        """Every member: id, URLs, role (voter or learner), whether it has caught up."""
        return self._run(self._calls.members())

    def add_member(
        self, name: str, peer_url: str, client_url: str, *, learner: bool = False
    ) -> dict[str, Any]:
        """Add ``name`` as a learner (promoted to voter once caught up, unless ``learner``);
        the answer's ``command`` is the ``replog serve`` line that starts it."""
        return self._run(self._calls.add_member(name, peer_url, client_url, learner))

    def remove_member(self, name: str, *, force: bool = False) -> dict[str, Any]:
        return self._run(self._calls.remove_member(name, force))

    def promote_member(self, name: str) -> dict[str, Any]:
        return self._run(self._calls.promote_member(name))

    def transfer_leader(self, to: str | None = None) -> dict[str, Any]:
        """Hand leadership to ``to`` (or the most up-to-date voter); the answer's
        ``leader_id`` is the new leader."""
        return self._run(self._calls.transfer_leader(to))

    # --- lifetime ---

    def close(self) -> None:
        """Close every connection and every open watch."""
        for watch in list(self._watches):
            watch.close()
        self._connections.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- the retry loop ---

    def _run(self, call: Call[T]) -> T:
        attempts = Attempts(
            self.endpoints, call.request, retry_timeout_s=self.retry_timeout_s, rng=self._rng
        )
        while True:
            endpoint = attempts.next_endpoint()
            timeout_s = attempts.attempt_timeout_s(self.timeout_s)
            try:
                status, body = self._connections.exchange(endpoint, call.request, timeout_s)
            except TransportFailure as failure:
                outcome: T | Retry = attempts.on_failure(endpoint, failure)
            else:
                outcome = settle(call, attempts, endpoint, status, body)
            if not isinstance(outcome, Retry):
                return outcome
            time.sleep(outcome.delay_s)

    def _run_once(self, endpoint: str, call: Call[T]) -> T:
        attempts = Attempts(self.endpoints, call.request, retry_timeout_s=0.0, rng=self._rng)
        try:
            status, body = self._connections.exchange(endpoint, call.request, self.timeout_s)
        except TransportFailure as failure:
            attempts.on_failure(endpoint, failure)
            raise attempts.last_error from None
        outcome = settle(call, attempts, endpoint, status, body)
        if isinstance(outcome, Retry):
            raise attempts.last_error
        return outcome


class Watch:
    """An open watch: iterate over it for ``WatchEvent``s; ``close()`` (or ``with``) ends it.

    ``next_revision`` is the revision it resumes from after a broken stream.
    """

    def __init__(self, client: Client, cursor: WatchCursor, idle_timeout_s: float) -> None:
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be positive, got {idle_timeout_s}")
        self._client = client
        self._cursor = cursor
        self._idle_timeout_s = idle_timeout_s
        self._pending: deque[WatchEvent] = deque()
        self._connection: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None
        self._endpoint = ""
        self._closed = False

    @property
    def next_revision(self) -> int | None:
        return self._cursor.next_revision

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        while not self._pending:
            if self._closed:
                raise StopIteration
            self._read_line()
        return self._pending.popleft()

    def close(self) -> None:
        """End the watch (safe from another thread: a blocked iteration then stops)."""
        self._closed = True
        self._client._watches.discard(self)
        self._drop()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _read_line(self) -> None:
        if self._response is None:
            self._connect()
        assert self._response is not None
        try:
            line = self._response.readline(WATCH_LINE_MAX_BYTES + 1)
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            line = b""  # a broken stream, a silent one, or one closed by close()
        if self._closed:
            return
        if not line.endswith(b"\n"):
            if len(line) > WATCH_LINE_MAX_BYTES:
                self._drop()
                raise ServerError(
                    f"watch line over {WATCH_LINE_MAX_BYTES} bytes", endpoint=self._endpoint
                )
            self._client.endpoints.failed(self._endpoint)
            self._drop()  # resume from the next revision, on another endpoint
            return
        if line.strip():
            try:
                events = self._cursor.accept_line(self._client.endpoints, self._endpoint, line)
            except (Unavailable, UnknownOutcome):
                self._client.endpoints.failed(self._endpoint)
                self._drop()  # the node gave up on this stream: resume elsewhere
                return
            except ReplogClientError:
                self._drop()
                raise
            except ValueError as error:
                self._drop()
                raise ServerError(
                    str(error), code="bad_response", endpoint=self._endpoint
                ) from None
            self._pending.extend(events)

    def _connect(self) -> None:
        client = self._client
        request = self._cursor.request()
        attempts = Attempts(
            client.endpoints, request, retry_timeout_s=client.retry_timeout_s, rng=client._rng
        )
        while not self._closed:
            endpoint = attempts.next_endpoint()
            try:
                connection = _open(endpoint, client.timeout_s)
                response = self._start(connection, request)
            except TransportFailure as failure:
                delay_s = attempts.on_failure(endpoint, failure).delay_s
            else:
                if 200 <= response.status < 300:
                    self._connection, self._response, self._endpoint = (
                        connection,
                        response,
                        endpoint,
                    )
                    if connection.sock is not None:
                        connection.sock.settimeout(self._idle_timeout_s)
                    return
                body = _read_limited(response)
                connection.close()
                outcome = attempts.on_answer(endpoint, response.status, body)
                assert isinstance(outcome, Retry), "2xx answers were handled above"
                delay_s = outcome.delay_s
            time.sleep(delay_s)
        raise StopIteration

    @staticmethod
    def _start(
        connection: http.client.HTTPConnection, request: Request
    ) -> http.client.HTTPResponse:
        try:
            return _send(connection, request)
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise TransportFailure(f"no answer: {error!r}", sent=True) from None

    def _drop(self) -> None:
        connection, self._connection, self._response = self._connection, None, None
        if connection is None:
            return
        if connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()


def _read_limited(response: http.client.HTTPResponse) -> bytes:
    try:
        return _read_body(response)
    except (OSError, http.client.HTTPException):
        return b""
