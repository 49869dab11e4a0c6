"""``replog bench --protocol rpc``: argument checks, RPC address lookup, error kinds, and short
real runs against a 3-node cluster serving the binary protocol.

No timing assertions: the real runs only check that operations completed and nothing failed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner

from replog.bench import BenchConfig, BenchError, Workload
from replog.bench.generator import rpc_addresses
from replog.bench.worker import rpc_error_kind
from replog.cli import main
from replog.client import InvalidRequest, Unavailable, UnknownOutcome
from replog.testing.processes import ProcessCluster, free_ports


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "rpc", "--target", "etcd"], "target replog"),
        (["--protocol", "grpc"], "grpc"),
        (["--connections-per-process", "0"], "connections-per-process"),
        (["--connections-per-process", "65"], "connections-per-process"),
        (["--idempotency-keys", "--target", "pysyncobj"], "target replog"),
    ],
)
def test_bad_rpc_arguments_are_usage_errors(args: list[str], message: str) -> None:
    outcome = CliRunner().invoke(main, ["bench", *args])
    assert outcome.exit_code == 2, outcome.output
    assert message in outcome.output


def test_bench_config_checks_the_protocol() -> None:
    endpoints, workload = ("http://a:1",), Workload()
    assert BenchConfig(endpoints=endpoints, workload=workload).protocol == "http"
    with pytest.raises(ValueError, match="target replog"):
        BenchConfig(endpoints=endpoints, workload=workload, target="pysyncobj", protocol="rpc")
    with pytest.raises(ValueError, match="protocol must be"):
        BenchConfig(endpoints=endpoints, workload=workload, protocol="udp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="connections per process"):
        BenchConfig(endpoints=endpoints, workload=workload, connections_per_process=0)


def test_rpc_error_kinds() -> None:
    timed_out = UnknownOutcome("no answer")
    timed_out.__cause__ = TimeoutError("no answer within 1 s")
    lost = Unavailable("the read failed")
    lost.__cause__ = ConnectionError("connection lost")
    assert rpc_error_kind(timed_out) == "timeout"
    assert rpc_error_kind(lost) == "connection"
    assert rpc_error_kind(Unavailable("nobody", code="unreachable")) == "connection"
    assert rpc_error_kind(Unavailable("no leader")) == "rpc:unavailable"
    assert rpc_error_kind(UnknownOutcome("lost leadership")) == "rpc:unknown_outcome"
    assert rpc_error_kind(InvalidRequest("bad", code="x" * 100)) == "rpc:" + "x" * 40


@dataclass
class StatusServer:
    """Answers ``GET /v1/status`` with ``document`` on a loopback port, in a thread."""

    document: dict[str, Any]
    server: ThreadingHTTPServer = field(init=False)

    def __post_init__(self) -> None:
        document = self.document

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(document).encode()
                self.send_response(200 if self.path == "/v1/status" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_rpc_addresses_come_from_each_nodes_status() -> None:
    with_rpc = StatusServer({"rpc_address": "127.0.0.1:16500"})
    without = StatusServer({"rpc_address": None})
    try:
        urls = (with_rpc.url, with_rpc.url)
        assert rpc_addresses(urls) == ("127.0.0.1:16500", "127.0.0.1:16500")
        with pytest.raises(BenchError, match=r"has no RPC address.*--listen-rpc"):
            rpc_addresses((with_rpc.url, without.url))
    finally:
        with_rpc.close()
        without.close()
    with pytest.raises(BenchError, match=r"cannot ask http://127\.0\.0\.1:9 for its RPC address"):
        rpc_addresses(("http://127.0.0.1:9",))


def test_a_node_without_rpc_fails_the_run_cleanly() -> None:
    status = StatusServer({"rpc_address": None})
    try:
        outcome = CliRunner().invoke(
            main, ["bench", "--endpoints", status.url, "--protocol", "rpc", "--count", "1"]
        )
    finally:
        status.close()
    assert outcome.exit_code == 1
    assert "has no RPC address" in outcome.output


@dataclass
class RpcProcessCluster(ProcessCluster):
    """``ProcessCluster`` whose nodes also serve the binary protocol (``--listen-rpc``)."""

    rpc_ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        taken = {port for n in self.nodes.values() for port in (n.client_port, n.peer_port)}
        ports = [port for port in free_ports(self.size + len(taken)) if port not in taken]
        self.rpc_ports = dict(zip(self.nodes, ports[: self.size], strict=True))

    def command(self, name: str) -> list[str]:
        return [*super().command(name), "--listen-rpc", f"127.0.0.1:{self.rpc_ports[name]}"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RpcProcessCluster]:
    # default timing (500 ms election timeout): a busy machine does not make it change leaders
    c = RpcProcessCluster(tmp_path_factory.mktemp("bench-rpc"), size=3, extra_args=())
    try:
        c.start()
        yield c
    finally:
        c.stop_all()  # also when the start failed half-way


def run_bench_command(cluster: ProcessCluster, *args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "replog", "bench", "--endpoints", ",".join(cluster.endpoints),
               "--output", "json", "--protocol", "rpc", *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert isinstance(report, dict)
    return report


def test_a_short_rpc_run_on_every_node(cluster: RpcProcessCluster) -> None:
    report = run_bench_command(
        cluster, "--duration", "1", "--clients", "12", "--processes", "2", "--workload", "mixed"
    )
    assert report["protocol"] == "rpc"
    assert report["ops"] > 0 and report["errors"] == {}
    assert set(report["per_op"]) == {"get", "put"}


def test_a_run_on_the_followers(cluster: RpcProcessCluster) -> None:
    # Writes at a follower are forwarded to the leader; each waits for its commit index.
    report = run_bench_command(
        cluster, "--count", "200", "--clients", "2", "--processes", "1", "--send-to", "followers",
    )  # fmt: skip
    assert report["ops"] == 200 and report["errors"] == {}
    assert report["send_to"] == "followers"


def test_a_counted_rpc_run_on_the_leader(cluster: RpcProcessCluster) -> None:
    report = run_bench_command(
        cluster, "--count", "300", "--clients", "16", "--processes", "1", "--send-to", "leader",
        "--workload", "stale-get", "--connections-per-process", "2",
    )  # fmt: skip
    assert report["ops"] == 300 and report["errors"] == {}
    assert report["send_to"] == "leader"


def remembered_keys(cluster: ProcessCluster) -> int:
    with urllib.request.urlopen(cluster.endpoints[0] + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(r"^replog_kv_idempotency_keys (\S+)$", text, re.MULTILINE)
    assert found is not None, "the node exports replog_kv_idempotency_keys"
    return int(float(found.group(1)))


@pytest.mark.parametrize("protocol", ["rpc", "http"])
def test_puts_with_idempotency_keys(cluster: RpcProcessCluster, protocol: str) -> None:
    before = remembered_keys(cluster)
    report = run_bench_command(
        cluster, "--count", "200", "--clients", "4", "--processes", "2",
        "--idempotency-keys", "--protocol", protocol,
    )  # fmt: skip
    assert report["ops"] == 200 and report["errors"] == {}
    assert report["idempotency_keys"] is True
    deadline = time.monotonic() + 10
    while remembered_keys(cluster) < before + 200:  # one key per put, each its own
        assert time.monotonic() < deadline, remembered_keys(cluster) - before
        time.sleep(0.05)
