"""``replog.AsyncClient``: the asyncio client, on ``aiohttp.ClientSession``.

Same methods and behaviour as ``replog.Client`` (coroutines instead of blocking calls); endpoint
choice, retries and watch resumption are decided in ``_policy`` (see its docstring). The session
is opened on first use, inside the running event loop; ``await client.close()`` (or
``async with``) closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from yarl import URL

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

__all__ = ["AsyncClient", "AsyncWatch"]

T = TypeVar("T")
WATCH_IDLE_TIMEOUT_S = 15.0
# ConnectionTimeoutError (a connect that timed out) exists from aiohttp 3.10 on.
_NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    getattr(aiohttp, "ConnectionTimeoutError", aiohttp.ClientConnectorError),
)


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > ANSWER_MAX_BYTES:
            raise TransportFailure(f"answer over {ANSWER_MAX_BYTES} bytes", sent=True)
    return bytes(body)


def _failure(error: BaseException) -> TransportFailure:
    if isinstance(error, _NOT_SENT):
        return TransportFailure(f"cannot connect: {error}", sent=False)
    if isinstance(error, TimeoutError):
        return TransportFailure("no answer: timed out", sent=True)
    return TransportFailure(f"no answer: {error!r}", sent=True)


class AsyncClient:
    """An asyncio client of a replog cluster (see ``docs/http-api.md``).

    >>> async with AsyncClient("http://127.0.0.1:14300") as client:
    ...     await client.put("config/a", "1")
    ...     async for event in client.watch(prefix="config/"):
    ...         print(event.type, event.kv.key)
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
        self._session: aiohttp.ClientSession | None = None
        self._watches: set[AsyncWatch] = set()

    # --- key-value ---

    async def put(self, key: bytes | str, value: bytes | str) -> PutResponse:
        """Write ``value`` under ``key``; the answer holds the new and the previous key-value."""
        return await self._run(self._calls.put(key, value))

    async def get(
        self,
        key: bytes | str,
        *,
        consistency: str = "linearizable",
        min_revision: int | None = None,
    ) -> KeyValue | None:
        """The key-value of ``key``, or ``None`` when it does not exist."""
        answer = await self.get_response(key, consistency=consistency, min_revision=min_revision)
        return answer.kv

    async def get_response(
        self,
        key: bytes | str,
        *,
        consistency: str = "linearizable",
        min_revision: int | None = None,
    ) -> GetResponse:
        """Like ``get``, with the answering node's header (``kv`` is ``None`` if missing)."""
        call = self._calls.get(key, consistency=consistency, min_revision=min_revision)
        return await self._run(call)

    async def delete(self, key: bytes | str) -> DeleteResponse:
        """Delete ``key``; ``deleted`` is 0 when it did not exist (not an error)."""
        return await self._run(self._calls.delete(key))

    async def range(
        self, prefix: bytes | str = b"", *, limit: int = 1000, consistency: str = "linearizable"
    ) -> RangeResponse:
        """The keys that start with ``prefix`` (all keys by default), in byte order."""
        return await self._run(self._calls.range(prefix, limit=limit, consistency=consistency))

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResponse:
        """Run ``success`` if every compare holds, else ``failure``, as one write."""
        return await self._run(self._calls.txn(compare, success, failure))

    async def cas(
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
        return await self._run(call)

    # --- watch and status ---

    def watch(
        self,
        *,
        key: bytes | str | None = None,
        prefix: bytes | str | None = None,
        start_revision: int | None = None,
        idle_timeout_s: float = WATCH_IDLE_TIMEOUT_S,
    ) -> AsyncWatch:
        """Iterate (``async for``) over the events of ``key`` or of the keys under ``prefix``.

        As ``Client.watch``; without ``start_revision`` it starts after the cluster's revision at
        the first iteration.
        """
        cursor = WatchCursor(key=key, prefix=prefix, start_revision=start_revision)
        watch = AsyncWatch(self, cursor, idle_timeout_s)
        self._watches.add(watch)
        return watch

    async def status(self, endpoint: str | None = None) -> StatusResponse:
        """The status of one node: ``endpoint`` (one attempt), or any endpoint (with retries)."""
        if endpoint is None:
            return await self._run(self._calls.status())
        return await self._run_once(normalize_endpoint(endpoint), self._calls.status())

    async def status_all(self) -> list[tuple[str, StatusResponse | ReplogClientError]]:
        """The status of every endpoint (asked at once), or the error it gave."""

        async def one(endpoint: str) -> tuple[str, StatusResponse | ReplogClientError]:
            try:
                return endpoint, await self.status(endpoint)
            except ReplogClientError as error:
                return endpoint, error

        return list(await asyncio.gather(*(one(url) for url in self.endpoints.urls)))

    # --- membership and leadership (answers: the API's JSON objects, as dicts) ---

    async def members(self) -> dict[str, Any]:
        """Every member: id, URLs, role (voter or learner), whether it has caught up."""
        return await self._run(self._calls.members())

    async def add_member(
        self, name: str, peer_url: str, client_url: str, *, learner: bool = False
    ) -> dict[str, Any]:
        """Add ``name`` as a learner (promoted to voter once caught up, unless ``learner``);
        the answer's ``command`` is the ``replog serve`` line that starts it."""
        return await self._run(self._calls.add_member(name, peer_url, client_url, learner))

    async def remove_member(self, name: str, *, force: bool = False) -> dict[str, Any]:
        return await self._run(self._calls.remove_member(name, force))

    async def promote_member(self, name: str) -> dict[str, Any]:
        return await self._run(self._calls.promote_member(name))

    async def transfer_leader(self, to: str | None = None) -> dict[str, Any]:
        """Hand leadership to ``to`` (or the most up-to-date voter); the answer's
        ``leader_id`` is the new leader."""
        return await self._run(self._calls.transfer_leader(to))

    # --- lifetime ---

    async def close(self) -> None:
        """Close every open watch and the HTTP session."""
        for watch in list(self._watches):
            await watch.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the retry loop ---

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(raise_for_status=False)
        return self._session

    async def _exchange(
        self, endpoint: str, request: Request, timeout_s: float
    ) -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self.session().request(
                request.method,
                URL(endpoint + request.target, encoded=True),
                data=request.body,
                headers=request.headers(),
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                return response.status, await _read_limited(response)
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise _failure(error) from None

    async def _run(self, call: Call[T]) -> T:
        attempts = Attempts(
            self.endpoints, call.request, retry_timeout_s=self.retry_timeout_s, rng=self._rng
        )
        while True:
            endpoint = attempts.next_endpoint()
            timeout_s = attempts.attempt_timeout_s(self.timeout_s)
            try:
                status, body = await self._exchange(endpoint, call.request, timeout_s)
            except TransportFailure as failure:
                outcome: T | Retry = attempts.on_failure(endpoint, failure)
            else:
                outcome = settle(call, attempts, endpoint, status, body)
            if not isinstance(outcome, Retry):
                return outcome
            await asyncio.sleep(outcome.delay_s)

    async def _run_once(self, endpoint: str, call: Call[T]) -> T:
        attempts = Attempts(self.endpoints, call.request, retry_timeout_s=0.0, rng=self._rng)
        try:
            status, body = await self._exchange(endpoint, call.request, self.timeout_s)
        except TransportFailure as failure:
            attempts.on_failure(endpoint, failure)
            raise attempts.last_error from None
        outcome = settle(call, attempts, endpoint, status, body)
        if isinstance(outcome, Retry):
            raise attempts.last_error
        return outcome


class AsyncWatch:
    """An open watch: ``async for event in watch``; ``await watch.close()`` (or ``async with``)."""

    def __init__(self, client: AsyncClient, cursor: WatchCursor, idle_timeout_s: float) -> None:
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be positive, got {idle_timeout_s}")
        self._client = client
        self._cursor = cursor
        self._idle_timeout_s = idle_timeout_s
        self._pending: deque[WatchEvent] = deque()
        self._response: aiohttp.ClientResponse | None = None
        self._buffer = bytearray()
        self._endpoint = ""
        self._closed = False

    @property
    def next_revision(self) -> int | None:
        return self._cursor.next_revision

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            await self._read_line()
        return self._pending.popleft()

    async def close(self) -> None:
        """End the watch; an iteration waiting in another task then stops."""
        self._closed = True
        self._client._watches.discard(self)
        self._drop()

    aclose = close

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _read_line(self) -> None:
        if self._response is None:
            await self._connect()
            if self._response is None:
                return  # closed while connecting
        line = await self._next_line(self._response)
        if self._closed:
            return
        if line is None:
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
                where = self._endpoint
                raise ServerError(str(error), code="bad_response", endpoint=where) from None
            self._pending.extend(events)

    async def _next_line(self, response: aiohttp.ClientResponse) -> bytes | None:
        """The next full line, or ``None`` when the stream broke or went silent."""
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > WATCH_LINE_MAX_BYTES:
                self._drop()
                message = f"watch line over {WATCH_LINE_MAX_BYTES} bytes"
                raise ServerError(message, endpoint=self._endpoint)
            try:
                chunk = await response.content.readany()
            except (TimeoutError, aiohttp.ClientError, OSError):
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return line

    async def _connect(self) -> None:
        client = self._client
        if self._cursor.next_revision is None:
            self._cursor.next_revision = (await client.status()).header.revision + 1
        request = self._cursor.request()
        attempts = Attempts(
            client.endpoints, request, retry_timeout_s=client.retry_timeout_s, rng=client._rng
        )
        while not self._closed:
            endpoint = attempts.next_endpoint()
            try:
                response = await self._start(endpoint, request)
            except TransportFailure as failure:
                delay_s = attempts.on_failure(endpoint, failure).delay_s
            else:
                if 200 <= response.status < 300:
                    self._response, self._endpoint = response, endpoint
                    self._buffer.clear()
                    return
                body = await self._error_body(response)
                outcome = attempts.on_answer(endpoint, response.status, body)
                assert isinstance(outcome, Retry), "2xx answers were handled above"
                delay_s = outcome.delay_s
            await asyncio.sleep(delay_s)

    async def _start(self, endpoint: str, request: Request) -> aiohttp.ClientResponse:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._client.timeout_s, sock_read=self._idle_timeout_s
        )
        try:
            return await self._client.session().request(
                request.method,
                URL(endpoint + request.target, encoded=True),
                headers=request.headers(),
                timeout=timeout,
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise _failure(error) from None

    @staticmethod
    async def _error_body(response: aiohttp.ClientResponse) -> bytes:
        try:
            return await _read_limited(response)
        except (TimeoutError, aiohttp.ClientError, OSError, TransportFailure):
            return b""
        finally:
            response.release()

    def _drop(self) -> None:
        response, self._response = self._response, None
        self._buffer.clear()
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()
