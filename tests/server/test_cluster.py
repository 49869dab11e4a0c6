"""Real clusters of `replog serve` processes on loopback, driven through the HTTP API."""

from __future__ import annotations

import base64
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replog.testing.processes import ProcessCluster, request


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path_factory.mktemp("cluster3"), size=3) as c:
        yield c


def put(url: str, key: str, value: bytes, **headers: str) -> tuple[int, Any]:
    return request("PUT", f"{url}/v1/kv/{key}", value, headers)


def get(url: str, key: str, query: str = "") -> tuple[int, Any]:
    return request("GET", f"{url}/v1/kv/{key}{query}")


def test_write_on_any_node_reads_on_every_node(cluster: ProcessCluster) -> None:
    urls = cluster.endpoints
    for i, url in enumerate(urls):
        code, body = put(url, f"any/{i}", b"v%d" % i)
        assert code == 200, body
        assert body["kv"]["value"] == f"v{i}" and body["kv"]["version"] == 1
        assert set(body["header"]) == {
            "node_id", "leader_id", "term", "commit_index", "applied_index", "revision"
        }  # fmt: skip
    for url in urls:
        for i in range(len(urls)):
            code, body = get(url, f"any/{i}")
            assert code == 200 and body["kv"]["value"] == f"v{i}", body


def test_stale_read_with_min_revision_reads_own_writes(cluster: ProcessCluster) -> None:
    urls = cluster.endpoints
    code, body = put(urls[0], "ryw", b"mine")
    assert code == 200
    revision = body["kv"]["mod_revision"]
    for url in urls:
        code, body = get(url, "ryw", f"?consistency=stale&min_revision={revision}")
        assert code == 200 and body["kv"]["value"] == "mine"
        assert body["header"]["revision"] >= revision


def test_revisions_versions_and_delete(cluster: ProcessCluster) -> None:
    url = cluster.endpoints[1]
    _, first = put(url, "rv", b"1")
    _, second = put(url, "rv", b"2")
    assert second["kv"]["create_revision"] == first["kv"]["create_revision"]
    assert second["kv"]["mod_revision"] > first["kv"]["mod_revision"]
    assert second["kv"]["version"] == 2
    assert second["prev_kv"]["value"] == "1"
    code, deleted = request("DELETE", f"{url}/v1/kv/rv")
    assert code == 200 and deleted["deleted"] == 1
    code, body = get(url, "rv")
    assert code == 404 and body["error"]["code"] == "key_not_found"
    code, again = request("DELETE", f"{url}/v1/kv/rv")
    assert code == 200 and again["deleted"] == 0


def test_binary_values_round_trip(cluster: ProcessCluster) -> None:
    url = cluster.endpoints[0]
    raw = bytes(range(256))
    assert put(url, "bin", raw)[0] == 200
    _, body = get(url, "bin")
    assert "value" not in body["kv"]
    assert base64.b64decode(body["kv"]["value_base64"]) == raw


def test_range_by_prefix_with_limit(cluster: ProcessCluster) -> None:
    url = cluster.endpoints[2]
    for i in range(5):
        put(url, f"range/{i}", b"x")
    code, body = request("GET", f"{url}/v1/kv?prefix=range/&limit=3")
    assert code == 200
    assert [kv["key"] for kv in body["kvs"]] == ["range/0", "range/1", "range/2"]
    assert body["count"] == 5 and body["more"] is True


def test_compare_and_set_transaction(cluster: ProcessCluster) -> None:
    url = cluster.endpoints[0]
    _, body = put(url, "cas", b"old")
    revision = body["kv"]["mod_revision"]
    txn = {
        "compare": [{"key": "cas", "target": "mod_revision", "op": "==", "value": revision}],
        "success": [{"put": {"key": "cas", "value": "new"}}, {"get": {"key": "cas"}}],
        "failure": [{"get": {"key": "cas"}}],
    }
    code, body = request("POST", f"{url}/v1/txn", json.dumps(txn).encode())
    assert code == 200 and body["succeeded"] is True, body
    assert body["responses"][1]["get"]["kv"]["value"] == "new"
    code, body = request("POST", f"{url}/v1/txn", json.dumps(txn).encode())
    assert code == 200 and body["succeeded"] is False
    assert body["responses"][0]["get"]["kv"]["value"] == "new"


def test_idempotency_key_applies_a_retried_write_once(cluster: ProcessCluster) -> None:
    url = cluster.endpoints[1]
    code, first = put(url, "idem", b"a", **{"Idempotency-Key": "client-1-1"})
    assert code == 200
    code, retry = put(cluster.endpoints[2], "idem", b"a", **{"Idempotency-Key": "client-1-1"})
    assert code == 200
    assert retry["kv"] == first["kv"]  # the first result, not a second write
    _, now = get(url, "idem")
    assert now["kv"]["version"] == 1
    code, body = put(url, "idem", b"different", **{"Idempotency-Key": "client-1-1"})
    assert code == 409 and body["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/txn", b"{not json", 400, "invalid_request"),
        ("POST", "/v1/txn", b'{"compare": [], "bogus": 1}', 400, "invalid_request"),
        ("POST", "/v1/txn", b'{"success": [{"put": {"key": "a"}}]}', 400, "invalid_request"),
        ("GET", "/v1/kv/x?consistency=sometimes", None, 400, "invalid_request"),
        ("GET", "/v1/kv/x?unknown=1", None, 400, "invalid_request"),
        ("GET", "/v1/kv?limit=0", None, 400, "invalid_request"),
        ("PUT", "/v1/kv/big", b"x" * (1 << 20 | 1), 400, "too_large"),
        ("PUT", "/v1/kv/" + "k" * 5000, b"v", 400, "too_large"),
        ("GET", "/v1/nothing-here", None, 404, "not_found"),
        ("POST", "/v1/status", b"", 405, "method_not_allowed"),
        ("GET", "/v1/watch?key=a&prefix=b", None, 400, "invalid_request"),
    ],
)
def test_bad_requests_get_clear_errors(
    cluster: ProcessCluster, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    got, answer = request(method, cluster.endpoints[0] + path, body)
    assert got == status, answer
    assert answer["error"]["code"] == code
    assert answer["error"]["message"]
    assert answer["header"]["node_id"] == "n1"


def test_status_health_and_metrics(cluster: ProcessCluster) -> None:
    leader = cluster.wait_for_leader()
    for name in cluster.nodes:
        status = cluster.status(name)
        assert status is not None
        assert status["node"]["id"] == name
        assert status["node"]["role"] == ("leader" if name == leader else "follower")
        followers = status["followers"]
        assert len(followers) == (2 if name == leader else 0)
        code, health = request("GET", cluster.nodes[name].url + "/health")
        assert code == 200 and health["health"] is True
    with urllib.request.urlopen(cluster.nodes[leader].url + "/metrics") as response:
        text = response.read().decode()
    assert "replog_server_has_leader 1.0" in text
    assert "replog_disk_wal_fsync_duration_seconds_bucket" in text
    assert "replog_kv_idempotency_retention_seconds" in text


def test_watch_streams_events_in_revision_order(cluster: ProcessCluster) -> None:
    url = cluster.endpoints[2]
    _, start = put(url, "watched/0", b"first")
    start_revision = start["kv"]["mod_revision"]
    lines: list[dict[str, Any]] = []
    ready = threading.Event()

    def reader() -> None:
        watch_url = f"{url}/v1/watch?prefix=watched/&start_revision={start_revision}"
        with urllib.request.urlopen(watch_url, timeout=20) as response:
            ready.set()
            events = 0
            for line in response:
                body = json.loads(line)
                lines.append(body)
                events += len(body["events"])
                if events >= 6:
                    return

    thread = threading.Thread(target=reader)
    thread.start()
    assert ready.wait(10)
    for i in range(1, 4):
        put(cluster.endpoints[i % 3], f"watched/{i}", b"v")
    request("DELETE", f"{url}/v1/kv/watched/0")
    put(url, "unwatched", b"x")
    put(url, "watched/9", b"last")
    thread.join(20)
    events = [e for line in lines for e in line["events"]]
    revisions = [e["kv"]["mod_revision"] for e in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    assert [e["type"] for e in events] == ["put", "put", "put", "put", "delete", "put"]
    assert events[0]["kv"]["value"] == "first" and events[-1]["kv"]["key"] == "watched/9"


def test_writes_resume_after_the_leader_is_killed_and_it_catches_up(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, size=3) as c:
        leader = c.wait_for_leader()
        assert put(c.nodes[leader].url, "k", b"before")[0] == 200
        c.kill(leader)
        others = [n for n in c.nodes if n != leader]
        c.wait_until(lambda: c.leader() not in (None, leader), "a new leader")
        code, body = put(c.nodes[others[0]].url, "k", b"after")
        assert code == 200, body
        revision = body["kv"]["mod_revision"]
        c.start_node(leader)
        url = c.nodes[leader].url
        code, body = get(url, "k", f"?consistency=stale&min_revision={revision}")
        assert code == 200 and body["kv"]["value"] == "after"
        code, body = get(url, "k")  # linearizable, through the new leader
        assert code == 200 and body["kv"]["value"] == "after"


def test_five_nodes_survive_two_failures(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, size=5) as c:
        leader = c.wait_for_leader()
        followers = [n for n in c.nodes if n != leader]
        c.kill(followers[0])
        c.kill(followers[1])
        for i in range(10):
            code, _ = put(c.nodes[followers[2]].url, f"five/{i}", b"v")
            assert code == 200
        code, body = request("GET", c.nodes[followers[3]].url + "/v1/kv?prefix=five/")
        assert code == 200 and body["count"] == 10
