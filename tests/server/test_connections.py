"""Client connections are bounded so that clients cannot take the node's file descriptors."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from replog.client import RpcClient
from replog.server import connections as connections_module
from replog.server.connections import (
    ClientConnections,
    LimitedSite,
    client_connections_limit,
    http_refusal,
    raise_open_files_limit,
)
from replog.testing.processes import free_ports, request


@pytest.mark.parametrize(
    ("configured", "open_files", "limits"),
    [
        (10_000, 1_024, (576, 64)),  # 384 for the node, 64 answering refusals
        (10_000, 1_048_576, (10_000, 64)),
        (10_000, 128, (48, 16)),  # a small limit: half of it for the node
        (10, 1_024, (10, 64)),
        (10_000, 4, (1, 1)),
        (10_000, resource.RLIM_INFINITY, (10_000, 64)),
    ],
)
def test_the_limits_leave_files_for_the_node(
    configured: int, open_files: int, limits: tuple[int, int]
) -> None:
    assert client_connections_limit(configured, open_files) == limits


@pytest.fixture
def lowered_open_files() -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 256:
        pytest.skip("needs a finite hard limit on open files of at least 256")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(lowered_open_files: int) -> None:
    assert raise_open_files_limit() == lowered_open_files
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (lowered_open_files,) * 2
    assert raise_open_files_limit() == lowered_open_files  # already there: unchanged


class Site:
    def __init__(self, connections: ClientConnections, port: int) -> None:
        self.connections, self.port = connections, port


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    connections = ClientConnections(2, "n1")
    (port,) = free_ports(1)
    refusal = lambda: http_refusal(lambda: {"node_id": "n1"}, connections)  # noqa: E731
    limited = LimitedSite(
        runner, "127.0.0.1", port, connections=connections, refusal=refusal, backlog=16
    )
    await limited.start()
    yield Site(connections, port)
    await runner.cleanup()


async def get(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """Open a connection, send one keep-alive GET, return the answer's status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        status = (await reader.readline()).decode().strip()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
    return reader, writer, status


async def test_an_http_connection_over_the_limit_gets_503_and_is_closed(site: Site) -> None:
    kept = [await get(site.port) for _ in range(2)]
    assert [status for _, _, status in kept] == ["HTTP/1.1 200 OK"] * 2
    assert site.connections.open == 2
    reader, writer, status = await get(site.port)
    assert status == "HTTP/1.1 503 Service Unavailable"
    async with asyncio.timeout(5):
        body = json.loads(await reader.read())  # then the node closes the connection
    writer.close()
    await writer.wait_closed()
    assert body["header"] == {"node_id": "n1"}
    assert body["error"]["code"] == "unavailable"
    assert "client_connections_max" in body["error"]["message"]
    assert site.connections.refused == 1
    kept[0][1].close()  # one place frees up
    async with asyncio.timeout(5):
        while site.connections.open > 1:
            await asyncio.sleep(0.01)
    _, last, status = await get(site.port)
    assert status == "HTTP/1.1 200 OK"
    assert site.connections.refusing == 0  # a refusal holds nothing once the client has closed
    for w in (kept[0][1], kept[1][1], last):
        w.close()
        await w.wait_closed()


# Runs the command in argv[1:] with a limit of 128 open files.
WITH_128_FILES = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def test_clients_holding_connections_cannot_make_a_node_fail(tmp_path: Path) -> None:
    """A node whose process may open 128 files, with snapshots every 100 entries: 200 idle
    connections took every descriptor, and the next snapshot file failed with EMFILE, which
    stopped the node. Now connections past the limit are refused and the node keeps going."""
    client_port, peer_port, rpc_port = free_ports(3)
    command = [
        sys.executable, "-m", "replog", "serve", "--name", "n1",
        "--data-dir", str(tmp_path / "n1"),
        "--listen-client", f"127.0.0.1:{client_port}",
        "--listen-peer", f"127.0.0.1:{peer_port}",
        "--listen-rpc", f"127.0.0.1:{rpc_port}",
        "--snapshot-entries", "100", "--snapshot-keep-entries", "10",
    ]  # fmt: skip

    with open(tmp_path / "n1.log", "wb") as log:
        node = subprocess.Popen(
            [sys.executable, "-c", WITH_128_FILES, *command], stdout=log, stderr=log
        )
    held: list[socket.socket] = []
    try:
        url = f"http://127.0.0.1:{client_port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                code, _ = request("GET", url + "/v1/status", timeout_s=1)
            except OSError:
                code = 0
            if code == 200:
                break
            time.sleep(0.05)

        async def write(count: int) -> int:
            async with RpcClient([f"127.0.0.1:{rpc_port}"]) as client:
                await client.put(b"first", b"v")  # connected before the others come
                for _ in range(200):
                    held.append(socket.create_connection(("127.0.0.1", client_port)))
                await asyncio.sleep(0.5)
                for i in range(count):
                    await client.put(b"k%d" % (i % 10), b"v" * 100)
                return count

        assert asyncio.run(write(600)) == 600
        assert node.poll() is None, (tmp_path / "n1.log").read_text()
        log_text = (tmp_path / "n1.log").read_text()
        assert "at most 48 client connections" in log_text
        assert "Too many open files" not in log_text
    finally:
        for sock in held:
            sock.close()
        node.terminate()
        node.wait(timeout=15)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    async with asyncio.timeout(seconds):
        return await reader.read()


async def test_a_connection_that_sends_no_header_in_time_is_closed(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections_module, "FIRST_REQUEST_S", 0.2)
    site.connections.limit = 3
    idle = await asyncio.open_connection("127.0.0.1", site.port)
    slow = await asyncio.open_connection("127.0.0.1", site.port)
    slow[1].write(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # the header never ends
    spoke = await get(site.port)
    assert spoke[2] == "HTTP/1.1 200 OK"
    assert await closed_within(idle[0], 2) == b""
    assert await closed_within(slow[0], 2) == b""
    async with asyncio.timeout(2):
        while site.connections.open > 1:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    assert not spoke[0].at_eof()  # a client that has spoken may stay idle
    spoke[1].write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(2):
        assert (await spoke[0].readline()).endswith(b"HTTP/1.1 200 OK\r\n")  # after a body
    for _, writer, *_ in (idle, slow, spoke):
        writer.close()
