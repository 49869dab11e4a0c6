"""The RPC clients of ``replog torture``: how ``RpcTortureClient`` answers and fails.

A scripted node speaks the binary protocol (``replog.protocol``) on a real socket and does with
each request what the test says: answer it, answer a ``Failure``, stay silent, or die with the
request in flight (close the connection and stop listening, as a SIGKILLed node does). The
workloads then record each outcome as ok / fail (certainly not applied) / info (unknown).
"""

from __future__ import annotations

import json
import random
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from replog import protocol
from replog import statemachines as sm
from replog.client import Compare, Unavailable, UnknownOutcome, get_op, put_op
from replog.testing.torture import TortureConfig
from replog.testing.torture_workloads import (
    ClientContext,
    FailoverClock,
    RegisterWorkload,
    RpcTortureClient,
)

HEADER = protocol.Header(leader_id="n1", term=3, commit_index=7, applied_index=7, revision=5)
KV = sm.KeyValue(b"k", b"1", 2, 5, 2)
DIE = "die"  # close the connection without answering and stop listening
SILENT = "silent"  # never answer

Handler = Callable[[protocol.Write | protocol.Read], "protocol.NodeMessage | str"]


class ScriptedNode:
    """One connection at a time; ``handler`` decides the fate of every request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.received: list[protocol.Write | protocol.Read] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # the listener was closed: the node is dead
            with conn:
                if self._converse(conn):
                    self.server.close()
                    return

    def _converse(self, conn: socket.socket) -> bool:
        """Serve one connection; True when the node died."""
        reader = protocol.FrameReader(1 << 20)
        encoder = msgspec.msgpack.Encoder()
        while data := conn.recv(65536):
            for body in reader.feed(data):
                message = protocol.node_decoder.decode(body)
                if isinstance(message, protocol.Hello):
                    answer: protocol.NodeMessage | str = protocol.Welcome(1, "n1", "c", 1 << 20)
                else:
                    self.received.append(message)
                    answer = self.handler(message)
                if answer == DIE:
                    self.server.close()  # no more connections ...
                    return True  # ... and this one closes without an answer
                if isinstance(answer, str):
                    continue  # silent
                conn.sendall(protocol.frame(encoder.encode(answer)))
        return False

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def node_factory() -> Iterator[Callable[[Handler], ScriptedNode]]:
    nodes: list[ScriptedNode] = []

    def make(handler: Handler) -> ScriptedNode:
        nodes.append(ScriptedNode(handler))
        return nodes[-1]

    yield make
    for node in nodes:
        node.close()


def ok(message: protocol.Write | protocol.Read) -> protocol.NodeMessage:
    """A plausible answer to any request."""
    if isinstance(message, protocol.Read):
        return protocol.Reply(message.id, HEADER, sm.GetResult(KV))
    op = message.request.op
    if isinstance(op, sm.Put):
        return protocol.Reply(message.id, HEADER, sm.PutResult(5, KV, None))
    assert isinstance(op, sm.Txn)
    responses = tuple(sm.GetResult(KV) for item in op.success if isinstance(item, sm.Get))
    return protocol.Reply(message.id, HEADER, sm.TxnResult(5, True, responses))


def client(node: ScriptedNode, timeout_s: float = 1.0) -> RpcTortureClient:
    return RpcTortureClient([node.address], timeout_s=timeout_s, connect_timeout_s=0.5)


def test_answers_have_the_http_clients_types(
    node_factory: Callable[[Handler], ScriptedNode],
) -> None:
    node = node_factory(ok)
    with client(node) as rpc:
        put = rpc.put("k", "1")
        assert put.kv.value == b"1" and put.header.term == 3 and put.header.node_id == "n1"
        kv = rpc.get("k", consistency="lease")
        assert kv is not None and kv.mod_revision == 5
        answer = rpc.txn(
            [Compare("k", "value", "==", "1"), Compare("k", "mod_revision", "==", 5)],
            [put_op("k", "2"), get_op("k")],
        )
        assert answer.succeeded and answer.revision == 5 and answer.header.revision == 5
        assert getattr(answer.responses[0], "kv", None) == kv
    read, txn = node.received[1], node.received[2]
    assert isinstance(read, protocol.Read) and read.consistency == "lease"
    assert isinstance(txn, protocol.Write)
    assert txn.request.op == sm.Txn(
        compare=(sm.Compare(b"k", "value", "==", b"1"), sm.Compare(b"k", "mod_revision", "==", 5)),
        success=(sm.Put(b"k", b"2"), sm.Get(b"k")),
    )


def run_register_op(tmp_path: Path, rpc: RpcTortureClient, f: str, **args: Any) -> dict[str, Any]:
    """One register operation through the workload; its completion event in the history."""
    workload = RegisterWorkload(tmp_path, lambda: 0.0, FailoverClock(lambda: 0.0), lease=False)
    workload.history.protocols[7] = "rpc"
    ctx = ClientContext(7, rpc, random.Random(1), "n1", "rpc")
    if f == "write":
        workload._write(ctx, "k", 1)
    elif f == "cas":
        workload._cas(ctx, "k", (1, 2))
    else:
        workload._read(ctx, "k")
    workload.history.close()
    lines = workload.history.path.read_text().splitlines()
    invoke, done = (json.loads(line) for line in lines)
    assert invoke["type"] == "invoke" and invoke["protocol"] == done["protocol"] == "rpc"
    assert isinstance(done, dict)
    return done


@pytest.mark.parametrize("f", ["write", "cas"])
def test_a_write_in_flight_when_the_node_dies_is_info(
    tmp_path: Path, node_factory: Callable[[Handler], ScriptedNode], f: str
) -> None:
    node = node_factory(lambda message: DIE)
    with client(node) as rpc:
        done = run_register_op(tmp_path, rpc, f)
        assert done["type"] == "info", done
        assert "may or may not" in done["error"]
        with pytest.raises(Unavailable) as raised:  # nobody listens now: never sent
            rpc.put("k", "1")
        assert raised.value.code == "unreachable"


def test_a_write_to_a_dead_node_is_fail(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()
    with RpcTortureClient([f"127.0.0.1:{port}"], timeout_s=0.5) as rpc:
        done = run_register_op(tmp_path, rpc, "write")
    assert done["type"] == "fail" and done["error"].startswith("unreachable:"), done


def test_a_read_in_flight_when_the_node_dies_is_info(
    tmp_path: Path, node_factory: Callable[[Handler], ScriptedNode]
) -> None:
    node = node_factory(lambda message: DIE)
    with client(node) as rpc:
        done = run_register_op(tmp_path, rpc, "read")
    assert done["type"] == "info" and "value" not in done, done


def test_a_silent_node_makes_a_write_info(
    tmp_path: Path, node_factory: Callable[[Handler], ScriptedNode]
) -> None:
    node = node_factory(lambda message: SILENT)
    with client(node, timeout_s=0.3) as rpc:
        done = run_register_op(tmp_path, rpc, "write")
        assert done["type"] == "info", done
        with pytest.raises(Unavailable):  # a read without an answer failed
            rpc.get("k")


@pytest.mark.parametrize(
    ("code", "outcome"),
    [("unavailable", "fail"), ("unknown_outcome", "info"), ("internal", "info")],
)
def test_a_nodes_failure_code_decides_the_outcome(
    tmp_path: Path, node_factory: Callable[[Handler], ScriptedNode], code: str, outcome: str
) -> None:
    node = node_factory(lambda message: protocol.Failure(message.id, code, "no", HEADER))
    with client(node) as rpc:
        done = run_register_op(tmp_path, rpc, "cas")
        assert done["type"] == outcome and done["error"].startswith(code), done
        if code == "unknown_outcome":
            with pytest.raises(UnknownOutcome):
                rpc.put("k", "1")


def test_a_cas_whose_compare_fails_is_fail(
    tmp_path: Path, node_factory: Callable[[Handler], ScriptedNode]
) -> None:
    def refuse(message: protocol.Write | protocol.Read) -> protocol.NodeMessage:
        return protocol.Reply(message.id, HEADER, sm.TxnResult(5, False, ()))

    node = node_factory(refuse)
    with client(node) as rpc:
        done = run_register_op(tmp_path, rpc, "cas")
    assert done["type"] == "fail" and "error" not in done, done


def test_both_protocols_take_turns_across_workloads() -> None:
    both = TortureConfig()
    assert both.protocol == "both"
    first = [both.client_protocol(0, c) for c in range(4)]
    second = [both.client_protocol(1, c) for c in range(4)]
    assert first == ["http", "rpc", "http", "rpc"] and second == ["rpc", "http", "rpc", "http"]
    assert TortureConfig(protocol="rpc").client_protocol(1, 2) == "rpc"
    with pytest.raises(ValueError, match="protocol"):
        TortureConfig(protocol="grpc")
