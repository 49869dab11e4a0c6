"""Minimal reproductions of bugs found by ``replog torture``, kept as regression tests."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from replog.client import Client, UnknownOutcome

HEADER = {"node_id": "n1", "leader_id": "n1", "term": 1, "commit_index": 1, "applied_index": 1,
          "revision": 1}  # fmt: skip
KV = {"key": "a", "value": "1", "create_revision": 1, "mod_revision": 1, "version": 1}


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        body += conn.recv(65536)
    return head


def node_that_dies_on_the_second_request() -> tuple[int, threading.Thread]:
    """Answers one PUT on a keep-alive connection, then reads the next request and "dies":
    closes the connection without answering and stops listening (as a SIGKILLed node does)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            read_request(conn)
            body = json.dumps({"header": HEADER, "kv": KV, "prev_kv": None}).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            read_request(conn)  # the second write reached the node ...
            server.close()  # ... which dies before answering: no more connections
        # closing conn here: the client sees the connection end without an answer

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], thread


def test_write_lost_with_the_node_is_unknown_not_unavailable() -> None:
    """A write sent on a kept-alive connection that the node closed without answering may
    have been applied: when no node answers afterwards, the outcome is unknown."""
    port, thread = node_that_dies_on_the_second_request()
    with Client(f"http://127.0.0.1:{port}", timeout_s=1.0, retry_timeout_s=0.5) as client:
        client.put("a", "1")
        with pytest.raises(UnknownOutcome):
            client.put("a", "2")
    thread.join(timeout=5)
