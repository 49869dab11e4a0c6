"""Merging the worker processes' results into one report; workloads and target adapters."""

from __future__ import annotations

import base64
import json

import pytest

from replog.bench.generator import BenchConfig, deal
from replog.bench.histogram import Histogram
from replog.bench.report import Report, merge_results
from replog.bench.targets import adapter
from replog.bench.workloads import OpSource, Workload


def result(latencies_us: dict[str, list[int]], errors: dict[str, int], elapsed_s: float,
           cpu_s: float) -> dict[str, object]:  # fmt: skip
    histograms = {}
    for op, values in latencies_us.items():
        histogram = Histogram()
        for value in values:
            histogram.record(value)
        histograms[op] = histogram.to_json()
    # through JSON, as the workers send it
    return json.loads(json.dumps({"histograms": histograms, "errors": errors,
                                  "elapsed_s": elapsed_s, "cpu_s": cpu_s}))  # fmt: skip


def test_merge_adds_counts_errors_and_cpu() -> None:
    merged = merge_results(
        [
            result({"put": [1000] * 90, "get": [100] * 10}, {"timeout": 2}, 2.0, 1.0),
            result({"put": [3000] * 100}, {"timeout": 1, "http_503:unavailable": 4}, 2.5, 0.5),
        ]
    )
    assert merged.histograms["put"].count == 190
    assert merged.errors == {"timeout": 3, "http_503:unavailable": 4}
    assert merged.elapsed_s == 2.5
    assert merged.cpu_s == 1.5
    assert merged.cpu_busiest == 0.5
    workload = Workload(name="mixed", duration_s=2)
    report = Report.build(merged, target="replog", workload=workload, endpoints=("http://a",),
                          send_to="all", processes=2)  # fmt: skip
    assert report.ops == 200
    assert report.error_count == 7
    assert report.throughput_ops_s == 80.0
    assert report.latency.max_ms == 3.0
    assert report.per_op["get"].p99_ms == 0.1
    assert report.cpu_cores == 0.6
    assert not report.generator_saturated
    document = json.loads(json.dumps(report.to_json()))
    assert 1.0 <= document["latency"]["p50_ms"] <= 1.0 * 65 / 64
    assert document["workload"]["name"] == "mixed"
    labels = [label for label, _ in report.lines()]
    assert "latency (get)" in labels
    assert "errors timeout" in labels


def test_an_empty_run_reports_zeros() -> None:
    report = Report.build(merge_results([]), target="etcd", workload=Workload(count=5),
                          endpoints=("http://a",), send_to="leader", processes=1)  # fmt: skip
    assert report.ops == 0
    assert report.throughput_ops_s == 0.0


def test_deal_spreads_evenly() -> None:
    assert deal(10, 3) == [4, 3, 3]
    assert deal(2, 2) == [1, 1]
    assert sum(deal(1000, 7)) == 1000


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "scan"}, "workload must be"),
        ({"clients": 0}, "clients"),
        ({"value_size_bytes": -1}, "value size"),
        ({"key_space": 0}, "key space"),
        ({"duration_s": 1.0, "count": 5}, "not both"),
        ({"duration_s": 0.0}, "duration"),
        ({"read_fraction": 1.5}, "read fraction"),
        ({"timeout_s": 0}, "timeout"),
        ({"key_prefix": "a\nb"}, "prefix"),
    ],
)
def test_bad_workloads_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Workload(**fields)  # type: ignore[arg-type]


def test_workload_defaults_to_a_duration_and_round_trips() -> None:
    workload = Workload()
    assert workload.duration_s == 10.0
    assert Workload.from_json(workload.to_json()) == workload
    assert not workload.reads
    assert Workload(name="mixed").reads


def test_bench_config_checks() -> None:
    with pytest.raises(ValueError, match="target"):
        BenchConfig(endpoints=("http://a",), workload=Workload(), target="redis")
    with pytest.raises(ValueError, match="endpoints"):
        BenchConfig(endpoints=(), workload=Workload())
    config = BenchConfig(endpoints=("http://a",), workload=Workload(clients=3), processes=8)
    assert config.process_count == 3


def test_op_source_mixes_reads_and_writes() -> None:
    source = OpSource(Workload(name="mixed", read_fraction=0.5, key_space=10), seed=1)
    ops = [source.next_op() for _ in range(1000)]
    assert 350 < ops.count("get") < 650
    assert all(source.next_key().startswith("bench/") for _ in range(10))
    assert len(source.value) == 256


def test_adapters_build_each_systems_requests() -> None:
    replog = adapter("replog")
    assert replog.request("put", "bench/1", b"v").path == "/v1/kv/bench%2F1"
    assert replog.request("stale-get", "k", b"").path == "/v1/kv/k?consistency=stale"
    etcd = adapter("etcd")
    put = etcd.request("put", "k", b"v")
    assert put.path == "/v3/kv/put"
    assert json.loads(put.body or b"") == {"key": base64.b64encode(b"k").decode(), "value": "dg=="}
    get = etcd.request("get", "k", b"")
    assert json.loads(get.body or b"")["serializable"] is False
    assert etcd.is_leader(b'{"header": {"member_id": "7"}, "leader": "7"}')
    assert adapter("pysyncobj").request("get", "k", b"").path == "/kv/k?consistency=linearizable"
    with pytest.raises(ValueError, match="target"):
        adapter("zookeeper")


def test_error_kinds() -> None:
    target = adapter("replog")
    assert target.error_kind(200, b"{}") is None
    body = b'{"error": {"code": "unavailable", "message": "no leader"}}'
    assert target.error_kind(503, body) == "http_503:unavailable"
    assert target.error_kind(502, b"<html>") == "http_502:error"
    etcd_body = b'{"error": "etcdserver: request timed out", "code": 14}'
    assert adapter("etcd").error_kind(503, etcd_body) == "http_503:etcdserver"
