"""``replog bench``: argument checks, and a short smoke run against a real 3-node cluster.

No timing assertions: the smoke run only checks that operations completed, numbers were
reported and nothing failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from replog.bench import BenchError
from replog.bench.generator import chosen_endpoints
from replog.cli import main
from replog.cli.bench import parse_size
from replog.testing.processes import ProcessCluster


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "0"], "clients"),
        (["--duration", "1", "--count", "5"], "not both"),
        (["--value-size", "2MiB"], "at most"),
        (["--value-size", "lots"], "not a size"),
        (["--target", "redis"], "redis"),
        (["--workload", "scan"], "scan"),
        (["--endpoints", "ftp://x"], "endpoints"),
        (["--read-fraction", "2"], "read-fraction"),
        (["--key-prefix", "a\tb"], "prefix"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    outcome = CliRunner().invoke(main, ["bench", *args])
    assert outcome.exit_code == 2, outcome.output
    assert message in outcome.output


def test_sizes() -> None:
    assert parse_size("256") == 256
    assert parse_size("4k") == 4096
    assert parse_size("64KiB") == 65536
    assert parse_size("1MiB") == 1024 * 1024
    with pytest.raises(ValueError):
        parse_size("-1")


def test_clients_go_to_the_endpoints_asked_for() -> None:
    endpoints = ("http://a", "http://b", "http://c")
    assert chosen_endpoints("all", endpoints, "http://b") == endpoints
    assert chosen_endpoints("leader", endpoints, "http://b") == ("http://b",)
    assert chosen_endpoints("followers", endpoints, "http://b") == ("http://a", "http://c")
    with pytest.raises(BenchError, match="no follower"):
        chosen_endpoints("followers", ("http://b",), "http://b")


def test_an_unreachable_leader_fails_cleanly() -> None:
    outcome = CliRunner().invoke(
        main,
        ["bench", "--endpoints", "http://127.0.0.1:9", "--send-to", "leader", "--count", "1",
         "--leader-wait", "0.1"],
    )  # fmt: skip
    assert outcome.exit_code == 1
    assert "no leader" in outcome.output


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    # default timing (500 ms election timeout): a busy machine does not make it change leaders
    with ProcessCluster(tmp_path_factory.mktemp("bench"), size=3, extra_args=()) as c:
        yield c


def run_bench_command(cluster: ProcessCluster, *args: str) -> dict[str, object]:
    command = [sys.executable, "-m", "replog", "bench", "--endpoints", ",".join(cluster.endpoints),
               "--output", "json", *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert isinstance(report, dict)
    return report


def test_smoke_put_for_a_few_seconds(cluster: ProcessCluster) -> None:
    report = run_bench_command(cluster, "--duration", "2", "--clients", "8", "--processes", "2")
    assert report["ops"] > 0
    assert report["error_count"] == 0
    assert report["throughput_ops_s"] > 0
    latency = report["latency"]
    assert isinstance(latency, dict)
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert report["cpu_cores"] > 0


def test_smoke_mixed_on_the_leader_by_count(cluster: ProcessCluster) -> None:
    report = run_bench_command(cluster, "--workload", "mixed", "--count", "300", "--clients", "4",
                               "--key-space", "50", "--send-to", "leader",
                               "--value-size", "1KiB")  # fmt: skip
    assert report["ops"] == 300
    assert report["error_count"] == 0
    per_op = report["per_op"]
    assert isinstance(per_op, dict)
    assert set(per_op) == {"get", "put"}


def test_smoke_stale_reads_table_output(cluster: ProcessCluster) -> None:
    command = [sys.executable, "-m", "replog", "bench", "--endpoints", ",".join(cluster.endpoints),
               "-w", "stale-get", "--count", "200", "--key-space", "20", "-c", "2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    text = done.stdout.decode()
    assert "throughput" in text
    assert "200 ok, 0 failed" in text
