"""The peer proxy: pass, delay, drop (blackhole) and cut, per directed link."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from replog.testing.torture_proxy import PeerProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    """An echo server on 127.0.0.1 (one thread per connection)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.fixture
def proxy() -> Iterator[PeerProxy]:
    with PeerProxy() as p:
        yield p


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    sock.settimeout(2)
    return sock


def echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_pass_forwards_both_ways(proxy: PeerProxy, echo_port: int) -> None:
    port = proxy.add_link("n1", "n2", echo_port)
    assert proxy.port("n1", "n2") == port
    with connect(port) as sock:
        assert echo(sock, b"hello") == b"hello"
        big = bytes(range(256)) * 2000
        assert echo(sock, big) == big


def test_delay_holds_bytes_back(proxy: PeerProxy, echo_port: int) -> None:
    port = proxy.add_link("n1", "n2", echo_port)
    proxy.set_link("n1", "n2", "pass", delay_ms=200)
    with connect(port) as sock:
        started = time.monotonic()
        assert echo(sock, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.19


def test_drop_keeps_the_connection_but_loses_everything(proxy: PeerProxy, echo_port: int) -> None:
    port = proxy.add_link("n1", "n2", echo_port)
    with connect(port) as sock:
        assert echo(sock, b"before") == b"before"
        proxy.set_link("n1", "n2", "drop")
        sock.settimeout(0.3)
        sock.sendall(b"lost")  # accepted by the proxy, never delivered
        with pytest.raises(TimeoutError):
            sock.recv(100)
        proxy.set_link("n1", "n2", "pass")
        sock.settimeout(2)
        assert echo(sock, b"after") == b"after"  # "lost" stays lost


def test_cut_closes_open_and_new_connections(proxy: PeerProxy, echo_port: int) -> None:
    port = proxy.add_link("n1", "n2", echo_port)
    other = proxy.add_link("n2", "n1", echo_port)
    with connect(port) as sock, connect(other) as untouched:
        assert echo(sock, b"x") == b"x"
        proxy.set_link("n1", "n2", "cut")
        assert sock.recv(100) == b""  # closed by the proxy
        assert echo(untouched, b"y") == b"y"  # the reverse link is its own
    with connect(port) as sock:
        assert sock.recv(100) == b""  # accepted and closed at once
    proxy.heal_all()
    assert proxy.links()[("n1", "n2")] == ("pass", 0)
    with connect(port) as sock:
        assert echo(sock, b"again") == b"again"


def test_a_dead_target_closes_the_dialer(proxy: PeerProxy) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    port = proxy.add_link("n1", "n2", dead_port)
    with connect(port) as sock:
        assert sock.recv(100) == b""


def test_bad_input_is_refused(proxy: PeerProxy, echo_port: int) -> None:
    proxy.add_link("n1", "n2", echo_port)
    with pytest.raises(ValueError, match="exists"):
        proxy.add_link("n1", "n2", echo_port)
    with pytest.raises(ValueError, match="no link"):
        proxy.set_link("n2", "n3")
    with pytest.raises(ValueError, match="mode"):
        proxy.set_link("n1", "n2", "explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay_ms"):
        proxy.set_link("n1", "n2", delay_ms=-1)
