"""``RpcClient`` against a fake node that speaks ``replog.protocol`` over asyncio streams.

The fake keeps one dict as its store and can be told to hold requests (to test timeouts, lost
connections and the in-flight bound), to answer them in reverse order, to fail them with a
given code, to answer the handshake differently, or to send garbage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from replog import protocol
from replog.client import (
    IdempotencyKeyReused,
    InvalidRequest,
    KeyNotFound,
    MembershipRefused,
    ReplogClientError,
    RevisionCompacted,
    RpcClient,
    ServerError,
    TooLarge,
    Unavailable,
    UnknownOutcome,
)
from replog.client.rpc import parse_endpoint
from replog.protocol import Failure, GetKey, Header, RangePrefix, RangeResult, Read, Reply, Write
from replog.statemachines import (
    Delete,
    DeleteResult,
    GetResult,
    KeyValue,
    Put,
    PutResult,
    Txn,
    TxnResult,
)

FRAME_MAX = 1 << 20


@dataclass
class FakeNode:
    """One fake node on a loopback port (see the module docstring)."""

    node_id: str = "n1"
    cluster_id: str = "c1"
    welcome: Callable[[protocol.Hello], protocol.NodeMessage] | None = None
    store: dict[bytes, KeyValue] = field(default_factory=dict)
    revision: int = 0
    hold: bool = False  # keep requests unanswered in ``held``
    reverse_batch: int = 0  # when this many are held, answer them all in reverse order
    fail_code: str | None = None  # answer every request with a Failure of this code
    wrong_result: bool = False  # answer writes with a GetResult
    held: list[tuple[asyncio.StreamWriter, Write | Read]] = field(default_factory=list)
    hellos: list[protocol.Hello] = field(default_factory=list)
    requests: list[Write | Read] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> FakeNode:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self.server is not None:
            self.server.close()
            self.drop()
            await self.server.wait_closed()
            self.server = None

    def drop(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    def header(self) -> Header:
        return Header("n1", 2, self.revision, self.revision, self.revision)

    def release(self, reverse: bool = False) -> None:
        held, self.held = self.held, []
        for writer, request in reversed(held) if reverse else held:
            writer.write(protocol.frame(protocol.client_encoder.encode(self.answer(request))))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        frames = protocol.FrameReader(FRAME_MAX)
        try:
            while data := await reader.read(65536):
                for body in frames.feed(data):
                    self._on_message(writer, protocol.node_decoder.decode(body))
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _on_message(self, writer: asyncio.StreamWriter, message: protocol.ClientMessage) -> None:
        if isinstance(message, protocol.Hello):
            self.hellos.append(message)
            default = protocol.Welcome(protocol.VERSION, self.node_id, self.cluster_id)
            answer = self.welcome(message) if self.welcome else default
            writer.write(protocol.frame(protocol.client_encoder.encode(answer)))
            if isinstance(answer, Failure):
                writer.close()
            return
        self.requests.append(message)
        if self.hold or self.reverse_batch:
            self.held.append((writer, message))
            if self.reverse_batch and len(self.held) >= self.reverse_batch:
                self.release(reverse=True)
            return
        writer.write(protocol.frame(protocol.client_encoder.encode(self.answer(message))))

    def answer(self, message: Write | Read) -> Reply | Failure:
        if self.fail_code is not None:
            return Failure(
                message.id, self.fail_code, f"told to fail: {self.fail_code}", self.header()
            )
        if isinstance(message, Read):
            return self._read(message)
        if self.wrong_result:
            return Reply(message.id, self.header(), GetResult(None))
        op = message.request.op
        if isinstance(op, Put):
            self.revision += 1
            old = self.store.get(op.key)
            created = old.create_revision if old else self.revision
            kv = KeyValue(op.key, op.value, created, self.revision, old.version + 1 if old else 1)
            self.store[op.key] = kv
            return Reply(message.id, self.header(), PutResult(self.revision, kv, old))
        if isinstance(op, Delete):
            old = self.store.pop(op.key, None)
            self.revision += old is not None
            return Reply(
                message.id, self.header(), DeleteResult(self.revision, int(bool(old)), old)
            )
        assert isinstance(op, Txn)
        return Reply(message.id, self.header(), TxnResult(self.revision, True, ()))

    def _read(self, message: Read) -> Reply | Failure:
        query = message.query
        if isinstance(query, GetKey):
            kv = self.store.get(query.key)
            if kv is None:
                return Failure(message.id, "key_not_found", "no such key", self.header())
            return Reply(message.id, self.header(), GetResult(kv))
        assert isinstance(query, RangePrefix)
        kvs = sorted(
            (kv for k, kv in self.store.items() if k.startswith(query.prefix)),
            key=lambda kv: kv.key,
        )
        cut = tuple(kvs[: query.limit])
        return Reply(message.id, self.header(), RangeResult(cut, len(kvs), len(kvs) > len(cut)))

    async def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} requests, not {count}"
            await asyncio.sleep(0.005)


@pytest.fixture
async def node() -> AsyncIterator[FakeNode]:
    fake = await FakeNode().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def node2() -> AsyncIterator[FakeNode]:
    fake = await FakeNode(node_id="n2").start()
    yield fake
    await fake.stop()


async def closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def connect(endpoints: str | list[str], **options: Any) -> RpcClient:
    """A client that makes one attempt per call (retries have their own tests below)."""
    options.setdefault("retry_timeout_s", 0.0)
    return await RpcClient.connect(endpoints, **options)


# --- handshake and basic calls --------------------------------------------------------------


async def test_handshake_and_every_call(node: FakeNode) -> None:
    async with await connect(node.address, cluster_id="c1") as client:
        assert client.node_id == "n1" and client.endpoint == node.address
        assert node.hellos == [protocol.Hello(protocol.VERSION, "c1")]
        assert client.header is None
        put = await client.put("a/1", "one", idempotency_key="k-1")
        assert put.kv == KeyValue(b"a/1", b"one", 1, 1, 1) and put.prev_kv is None
        write = node.requests[-1]
        assert isinstance(write, Write) and write.request.idempotency_key == "k-1"
        await client.put(b"a/2", b"\x00two")
        assert client.header is not None and client.header.revision == 2
        kv = await client.get("a/2", consistency="stale", min_revision=2)
        assert kv is not None and kv.value == b"\x00two"
        read = node.requests[-1]
        assert isinstance(read, Read) and (read.consistency, read.min_revision) == ("stale", 2)
        assert await client.get("missing") is None
        listed = await client.range("a/", limit=1)
        assert [kv.key for kv in listed.kvs] == [b"a/1"] and listed.count == 2 and listed.more
        deleted = await client.delete("a/1")
        assert deleted.deleted == 1 and deleted.prev_kv is not None
        assert (await client.txn(Txn())).succeeded


async def test_endpoint_forms() -> None:
    assert parse_endpoint("tcp://127.0.0.1:14500") == ("127.0.0.1", 14500)
    assert parse_endpoint(" localhost:1 ") == ("localhost", 1)
    assert parse_endpoint("[::1]:7") == ("::1", 7)
    for bad in ("http://h:1", "h", "h:port", "tcp://h:1/path", ""):
        with pytest.raises(ValueError, match="RPC endpoint"):
            parse_endpoint(bad)
    with pytest.raises(ValueError, match="no RPC endpoints"):
        RpcClient([])
    assert RpcClient("a:1, tcp://b:2").endpoints == (("a", 1), ("b", 2))


async def test_bad_arguments_are_refused_before_sending(node: FakeNode) -> None:
    async with await connect([node.address]) as client:
        with pytest.raises(ValueError, match="consistency"):
            await client.get("k", consistency="eventual")
        with pytest.raises(ValueError, match="limit"):
            await client.range("", limit=0)
        with pytest.raises(ValueError, match="min_revision"):
            await client.get("k", min_revision=-1)
    assert node.requests == []


# --- pipelining -------------------------------------------------------------------------------


async def test_many_requests_in_flight_on_one_connection_answered_out_of_order(
    node: FakeNode,
) -> None:
    node.reverse_batch = 100
    async with await connect(node.address) as client:
        results = await asyncio.gather(*(client.put(f"k{i}", f"v{i}") for i in range(300)))
    assert [r.kv.value for r in results] == [f"v{i}".encode() for i in range(300)]
    assert len(node.writers) == 1 and len(node.hellos) == 1
    ids = [request.id for request in node.requests]
    assert len(set(ids)) == 300


async def test_in_flight_requests_are_bounded(node: FakeNode) -> None:
    node.hold = True
    async with await connect(node.address, max_in_flight=3) as client:
        calls = [asyncio.create_task(client.put(f"k{i}", "v")) for i in range(10)]
        await node.wait_for_requests(3)
        await asyncio.sleep(0.05)
        assert len(node.requests) == 3
        while not all(call.done() for call in calls):
            node.release()
            await asyncio.sleep(0.01)
        assert len(node.requests) == 10
        assert sorted(call.result().revision for call in calls) == list(range(1, 11))


# --- errors -----------------------------------------------------------------------------------

ERRORS: list[tuple[str, type[ReplogClientError]]] = [
    ("invalid_request", InvalidRequest),
    ("too_large", TooLarge),
    ("key_not_found", KeyNotFound),
    ("idempotency_key_reused", IdempotencyKeyReused),
    ("unavailable", Unavailable),
    ("unknown_outcome", UnknownOutcome),
    ("internal", ServerError),
    ("revision_compacted", RevisionCompacted),
    ("member_not_found", MembershipRefused),
    ("member_exists", MembershipRefused),
    ("membership_change_pending", MembershipRefused),
    ("would_lose_quorum", MembershipRefused),
    ("member_not_caught_up", MembershipRefused),
    ("something_new", ServerError),
]


@pytest.mark.parametrize(("code", "cls"), ERRORS)
async def test_failure_codes_map_to_the_typed_errors(
    node: FakeNode, code: str, cls: type[ReplogClientError]
) -> None:
    node.fail_code = code
    async with await connect(node.address) as client:
        with pytest.raises(cls) as caught:
            await client.put("k", "v")
        if code != "key_not_found":
            with pytest.raises(cls):
                await client.range("k")
    error = caught.value
    assert type(error) is cls
    assert (error.code, error.status, error.endpoint) == (code, None, node.address)
    assert error.message == f"told to fail: {code}"
    assert error.header is not None and error.header.node_id == "n1"
    assert error.header.leader_id == "n1" and error.__cause__ is None
    assert str(error) == f"{code}: told to fail: {code} ({node.address})"


async def test_an_unexpected_result_is_a_server_error(node: FakeNode) -> None:
    node.wrong_result = True
    async with await connect(node.address) as client:
        with pytest.raises(ServerError, match="expected a PutResult"):
            await client.put("k", "v")


# --- lost connections, timeouts, reconnection --------------------------------------------------


async def test_a_lost_connection_fails_writes_as_unknown_and_reads_as_unavailable(
    node: FakeNode,
) -> None:
    node.hold = True
    async with await connect(node.address) as client:
        write = asyncio.create_task(client.put("k", "v"))
        read = asyncio.create_task(client.get("k"))
        await node.wait_for_requests(2)
        node.drop()
        with pytest.raises(UnknownOutcome, match="may or may not") as lost_write:
            await write
        with pytest.raises(Unavailable) as lost_read:
            await read
        assert not isinstance(lost_read.value, UnknownOutcome)
        for error in (lost_write.value, lost_read.value):
            assert isinstance(error.__cause__, ConnectionError)
        node.hold = False
        assert (await client.put("k", "again")).kv.value == b"again"  # reconnected
        assert len(node.hellos) == 2


async def test_a_write_that_never_left_is_unavailable(node: FakeNode) -> None:
    """On an idle connection a request leaves at once; while one is in flight the next ones
    wait for the end of the loop turn. A break before that turn ends loses only the sent one."""
    async with await connect(node.address) as client:
        sent = asyncio.create_task(client.put("k", "v"))
        queued = asyncio.create_task(client.put("k", "w"))
        await asyncio.sleep(0)  # both submitted: the first was written, the second is queued
        assert client._conn is not None
        client._conn.abort("dropped on purpose")
        with pytest.raises(UnknownOutcome):
            await sent
        with pytest.raises(Unavailable, match="not applied") as caught:
            await queued
        assert not isinstance(caught.value, UnknownOutcome)
    assert all(request.request.op.value != b"w" for request in node.requests)


async def test_reconnects_to_the_next_endpoint(node: FakeNode, node2: FakeNode) -> None:
    async with await connect([node.address, node2.address]) as client:
        await client.put("k", "v")
        assert client.node_id == "n1"
        await node.stop()
        while client.connected:
            await asyncio.sleep(0.005)
        kv = await client.put("k", "v2")
        assert client.node_id == "n2" and client.endpoint == node2.address
        assert kv.kv.value == b"v2" and len(node2.hellos) == 1


async def test_the_first_endpoint_down_connects_to_the_next(node2: FakeNode) -> None:
    port = await closed_port()
    async with await connect([f"127.0.0.1:{port}", node2.address]) as client:
        assert client.node_id == "n2"


async def test_no_endpoint_answering_is_unavailable_within_the_timeout() -> None:
    port = await closed_port()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="no endpoint answered") as caught:
        await connect(f"127.0.0.1:{port}", timeout_s=0.3)
    assert caught.value.code == "unreachable"
    assert 0.25 < time.monotonic() - started < 2.0


async def test_a_timed_out_write_is_unknown_and_a_timed_out_read_unavailable(
    node: FakeNode,
) -> None:
    node.hold = True
    async with await connect(node.address, timeout_s=0.2) as client:
        started = time.monotonic()
        write = asyncio.create_task(client.put("k", "v"))
        read = asyncio.create_task(client.get("k"))
        with pytest.raises(UnknownOutcome, match=r"no answer within 0\.2 s") as timed_out_write:
            await write
        with pytest.raises(Unavailable) as timed_out_read:
            await read
        assert 0.18 < time.monotonic() - started < 1.5
        assert isinstance(timed_out_write.value.__cause__, TimeoutError)
        assert isinstance(timed_out_read.value.__cause__, TimeoutError)
        node.release()  # late answers are dropped
        node.hold = False
        assert (await client.put("k", "v2")).kv.version == 2
        assert len(node.hellos) == 2  # a connection that timed out is not used again


async def test_closing_fails_requests_in_flight_and_later_calls(node: FakeNode) -> None:
    node.hold = True
    client = await connect(node.address)
    write = asyncio.create_task(client.put("k", "v"))
    await node.wait_for_requests(1)
    await client.close()
    with pytest.raises(UnknownOutcome, match="closed"):
        await write
    with pytest.raises(Unavailable, match="closed"):
        await client.get("k")


async def test_garbage_from_the_node_breaks_the_connection(node: FakeNode) -> None:
    node.hold = True
    async with await connect(node.address) as client:
        read = asyncio.create_task(client.get("k"))
        await node.wait_for_requests(1)
        node.writers[0].write(protocol.frame(b"\xc1 not msgpack"))
        with pytest.raises(Unavailable, match="does not decode"):
            await read


async def test_a_failure_before_closing_explains_the_lost_requests(node: FakeNode) -> None:
    node.hold = True
    async with await connect(node.address) as client:
        write = asyncio.create_task(client.put("k", "v"))
        await node.wait_for_requests(1)
        bad = Failure(0, "invalid_request", "a frame did not decode")
        node.writers[0].write(protocol.frame(protocol.client_encoder.encode(bad)))
        node.drop()
        with pytest.raises(UnknownOutcome, match="a frame did not decode"):
            await write


async def test_a_node_going_away_fails_what_it_did_not_read_as_unavailable(
    node: FakeNode, node2: FakeNode
) -> None:
    node.hold = True
    async with await connect([node.address, node2.address]) as client:
        write = asyncio.create_task(client.put("k", "v"))
        read = asyncio.create_task(client.get("k"))
        await node.wait_for_requests(2)
        farewell = Failure(0, protocol.GOING_AWAY, "node n1 is stopping")
        node.writers[0].write(protocol.frame(protocol.client_encoder.encode(farewell)))
        for task in (write, read):
            with pytest.raises(Unavailable, match="did not read") as caught:
                await task
            assert not isinstance(caught.value, UnknownOutcome)  # certainly not applied
            assert isinstance(caught.value.__cause__, ConnectionError)
        assert not client.connected
        await client.put("k", "elsewhere")
        assert client.node_id == "n2"


# --- retries ------------------------------------------------------------------------------------


def keys_of(fake: FakeNode) -> list[str | None]:
    return [r.request.idempotency_key for r in fake.requests if isinstance(r, Write)]


async def test_a_refused_write_is_retried_on_the_next_node_with_one_key(
    node: FakeNode, node2: FakeNode
) -> None:
    node.fail_code = "unavailable"
    async with await RpcClient.connect([node.address, node2.address], session_id="s1") as client:
        assert (await client.put("k", "v")).kv.value == b"v"
        assert client.node_id == "n2"
        assert (await client.put("k", "w", idempotency_key="mine")).kv.value == b"w"
    assert keys_of(node) == ["s1-1"] and keys_of(node2) == ["s1-1", "mine"]


async def test_a_write_without_a_key_is_retried_only_when_certainly_not_applied(
    node: FakeNode, node2: FakeNode
) -> None:
    node.fail_code = "unavailable"
    async with await RpcClient.connect([node.address, node2.address]) as client:
        assert (await client.put("k", "v")).kv.value == b"v"  # refused by n1: sent to n2
        node2.hold = True
        write = asyncio.create_task(client.put("k", "w"))
        await node2.wait_for_requests(2)
        node2.drop()  # it may have applied: without a key it cannot be sent again
        with pytest.raises(UnknownOutcome, match="may or may not"):
            await write
    assert keys_of(node) == [None] and keys_of(node2) == [None, None]
    assert len(node.requests) == 1


async def test_reads_are_retried_and_answers_that_retrying_cannot_change_are_not(
    node: FakeNode, node2: FakeNode
) -> None:
    node.fail_code = "unavailable"
    async with await RpcClient.connect([node.address, node2.address]) as client:
        assert await client.get("missing") is None  # key_not_found, from n2
        assert len(node.requests) == 1 and len(node2.requests) == 1
        node2.fail_code = "invalid_request"
        with pytest.raises(InvalidRequest):
            await client.range("k")
        assert len(node2.requests) == 2  # raised at once


async def test_a_write_that_may_have_applied_is_retried_with_its_key(
    node: FakeNode, node2: FakeNode
) -> None:
    node.hold = True
    async with await RpcClient.connect([node.address, node2.address], session_id="s1") as client:
        write = asyncio.create_task(client.put("k", "v"))
        await node.wait_for_requests(1)
        node.drop()  # the write may have applied at n1: n2 gets it with the same key
        assert (await write).kv.value == b"v"
    assert keys_of(node) == keys_of(node2) == ["s1-1"]


async def test_a_timed_out_write_is_retried_on_the_next_node(
    node: FakeNode, node2: FakeNode
) -> None:
    node.hold = True
    endpoints = [node.address, node2.address]
    async with await RpcClient.connect(endpoints, timeout_s=0.2, session_id="s1") as client:
        assert (await client.put("k", "v")).kv.value == b"v"
    assert keys_of(node) == keys_of(node2) == ["s1-1"]


async def test_a_write_that_may_have_applied_never_ends_unavailable(
    node: FakeNode, node2: FakeNode
) -> None:
    """After an attempt that may have applied it, a write whose later attempts are refused
    ends in ``UnknownOutcome`` (naming the key to retry with), not ``Unavailable``."""
    node.hold = True
    node2.fail_code = "unavailable"
    endpoints = [node.address, node2.address]
    async with await RpcClient.connect(endpoints, retry_timeout_s=0.3, session_id="s1") as client:
        write = asyncio.create_task(client.put("k", "v"))
        await node.wait_for_requests(1)
        node.hold = False
        node.fail_code = "unavailable"
        node.drop()
        started = time.monotonic()
        with pytest.raises(UnknownOutcome, match="idempotency key s1-1") as caught:
            await write
        assert time.monotonic() - started < 1.5
    assert "attempts" in caught.value.message and "told to fail" in caught.value.message
    assert len(node.requests) + len(node2.requests) >= 3


async def test_retries_stop_after_retry_timeout(node: FakeNode, node2: FakeNode) -> None:
    node.fail_code = node2.fail_code = "unavailable"
    endpoints = [node.address, node2.address]
    async with await RpcClient.connect(endpoints, retry_timeout_s=0.3) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="gave up after") as caught:
            await client.put("k", "v")
        assert 0.25 < time.monotonic() - started < 1.5
    assert not isinstance(caught.value, UnknownOutcome)  # every attempt was refused
    assert caught.value.code == "unavailable"
    assert len(node.requests) >= 2 and len(node2.requests) >= 2  # the nodes took turns


async def test_a_retired_connection_still_answers_what_was_sent_on_it(
    node: FakeNode, node2: FakeNode
) -> None:
    node.hold = True
    async with await RpcClient.connect([node.address, node2.address]) as client:
        first = asyncio.create_task(client.put("k", "v"))
        await node.wait_for_requests(1)
        node.hold, node.fail_code = False, "unavailable"
        assert await client.get("k") is None  # refused by n1, answered by n2
        assert client.node_id == "n2"
        old_connection = node.writers[0].transport
        await asyncio.sleep(0.05)
        assert not old_connection.is_closing()  # a write is still in flight on it
        node.fail_code = None
        node.release()
        assert (await first).kv.value == b"v"  # answered on the retired connection
        for _ in range(100):
            if old_connection.is_closing():
                break
            await asyncio.sleep(0.01)
        assert old_connection.is_closing()  # closed by the client once it had answered
        assert len(node.hellos) == 1 and len(node.requests) == 2


async def test_closing_the_client_ends_its_retries(node: FakeNode) -> None:
    node.fail_code = "unavailable"
    client = await RpcClient.connect(node.address)
    read = asyncio.create_task(client.get("k"))
    await node.wait_for_requests(2)
    await client.close()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(read, 1.0)


def test_retry_options_are_checked() -> None:
    with pytest.raises(ValueError, match="retry_timeout_s"):
        RpcClient("a:1", retry_timeout_s=-1)
    with pytest.raises(ValueError, match="session_id"):
        RpcClient("a:1", session_id="has space")


# --- bad handshakes ---------------------------------------------------------------------------


async def test_a_wrong_version_is_refused(node: FakeNode, node2: FakeNode) -> None:
    node.welcome = lambda hello: protocol.Welcome(protocol.VERSION + 1, "n1", "c1")
    with pytest.raises(InvalidRequest, match="protocol version 2") as caught:
        await connect([node.address, node2.address])
    assert caught.value.code == "version_mismatch"
    assert node2.hellos == []  # a refusal is not a reason to try elsewhere


async def test_a_different_cluster_is_refused(node: FakeNode) -> None:
    with pytest.raises(InvalidRequest, match="cluster 'c1', not 'other'"):
        await connect(node.address, cluster_id="other")


async def test_a_refusing_node_raises_its_error(node: FakeNode) -> None:
    node.welcome = lambda hello: Failure(0, "invalid_request", "cluster id mismatch")
    with pytest.raises(InvalidRequest, match="cluster id mismatch"):
        await connect(node.address)


async def test_an_unavailable_node_at_handshake_sends_the_client_on(
    node: FakeNode, node2: FakeNode
) -> None:
    node.welcome = lambda hello: Failure(0, "unavailable", "starting up")
    async with await connect([node.address, node2.address]) as client:
        assert client.node_id == "n2"


async def test_a_request_over_the_nodes_frame_limit_is_refused_here(node: FakeNode) -> None:
    node.welcome = lambda hello: protocol.Welcome(protocol.VERSION, "n1", "c1", 1_000)
    async with await connect(node.address) as client:
        in_flight = asyncio.ensure_future(client.put("small", "v"))
        with pytest.raises(TooLarge, match="over the node's limit of 1000"):
            await client.put("big", "v" * 2_000)
        assert (await in_flight).kv.key == b"small"  # the connection was not given up
        assert [r.request.op.key for r in node.requests if isinstance(r, Write)] == [b"small"]


def test_the_client_runs_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> bytes | None:
        fake = await FakeNode().start()
        try:
            async with await connect(fake.address, timeout_s=2) as client:
                await client.put("k", "on uvloop")
                kv = await client.get("k")
                return None if kv is None else kv.value
        finally:
            await fake.stop()

    assert uvloop.run(scenario()) == b"on uvloop"
