"""``replog.Client`` against the fake cluster: the API, retries, leader preference, watch."""

from __future__ import annotations

import threading
import time

import pytest

from replog import (
    Client,
    IdempotencyKeyReused,
    InvalidRequest,
    RevisionCompacted,
    ServerError,
    TooLarge,
    Unavailable,
    UnknownOutcome,
)
from replog.client import Compare, DeleteResult, GetResult, PutResult, delete_op, get_op, put_op

from .fake_server import HISTORY_MAX_EVENTS, VALUE_MAX_BYTES, FakeCluster, Fault


def client_of(cluster: FakeCluster, **kwargs: object) -> Client:
    options: dict[str, object] = {"timeout_s": 2.0, "retry_timeout_s": 3.0} | kwargs
    return Client(cluster.urls, **options)  # type: ignore[arg-type]


def test_put_get_delete_round_trip(cluster: FakeCluster) -> None:
    with client_of(cluster) as client:
        first = client.put("config/a", "1")
        assert (first.kv.key, first.kv.value, first.kv.version) == (b"config/a", b"1", 1)
        assert first.prev_kv is None
        second = client.put(b"config/a", b"2")
        assert second.prev_kv == first.kv
        assert second.kv.create_revision == first.kv.mod_revision
        assert (second.kv.mod_revision, second.kv.version) == (2, 2)
        kv = client.get("config/a")
        assert kv == second.kv
        deleted = client.delete("config/a")
        assert (deleted.deleted, deleted.prev_kv) == (1, second.kv)
        assert client.get("config/a") is None
        assert client.delete("config/a").deleted == 0


def test_missing_key_answers_none_with_the_header(cluster: FakeCluster) -> None:
    with client_of(cluster) as client:
        answer = client.get_response("nothing", consistency="stale", min_revision=0)
        assert answer.kv is None
        assert answer.header.node_id in {"n1", "n2", "n3"}
    assert "consistency=stale&min_revision=0" in cluster.requests("n1")[-1][1]


@pytest.mark.parametrize("key", ["a/b", "with space", "per%cent", "ünï/ç?ode#", "x" * 300])
def test_keys_are_percent_encoded_in_paths(cluster: FakeCluster, key: str) -> None:
    with client_of(cluster) as client:
        client.put(key, "v")
        kv = client.get(key)
        assert kv is not None and kv.key == key.encode()
        assert client.range(key).kvs[0].key == key.encode()


def test_binary_keys_and_values_go_through_base64(cluster: FakeCluster) -> None:
    key, value = b"\xff\x00bin", b"\x80\x81"
    with client_of(cluster) as client:
        assert client.put(key, value).kv.value == value
        kv = client.get(key)
        assert kv is not None and (kv.key, kv.value) == (key, value)
        assert client.range(b"\xff").kvs == (kv,)
        assert client.delete(key).deleted == 1
        assert client.get(key) is None
    paths = [path for _, path, _ in cluster.requests("n1")]
    assert "/v1/txn" in paths
    assert any("prefix_base64=" in path for path in paths)


def test_range_counts_and_cuts_at_the_limit(cluster: FakeCluster) -> None:
    with client_of(cluster) as client:
        for name in ["b", "a", "c", "other"]:
            client.put(f"p/{name}", name)
        answer = client.range("p/", limit=2)
        assert [kv.key for kv in answer.kvs] == [b"p/a", b"p/b"]
        assert (answer.count, answer.more) == (4, True)
        everything = client.range()
        assert (everything.count, everything.more) == (4, False)
        with pytest.raises(ValueError, match="limit"):
            client.range("p/", limit=0)
        with pytest.raises(ValueError, match="consistency"):
            client.range("p/", consistency="eventual")


def test_txn_runs_success_or_failure(cluster: FakeCluster) -> None:
    with client_of(cluster) as client:
        created = client.txn(
            [Compare("a", "version", "==", 0)], [put_op("a", "1"), get_op("a")], [get_op("a")]
        )
        assert created.succeeded and created.revision == 1
        put, got = created.responses
        assert isinstance(put, PutResult) and put.kv.value == b"1"
        assert isinstance(got, GetResult) and got.kv == put.kv
        again = client.txn(
            [Compare("a", "value", "==", "other")], [put_op("a", "2")], [delete_op("a")]
        )
        assert not again.succeeded
        (deleted,) = again.responses
        assert isinstance(deleted, DeleteResult) and deleted.deleted == 1


def test_cas_by_mod_revision_and_by_value(cluster: FakeCluster) -> None:
    with client_of(cluster) as client:
        assert client.cas("k", expected_mod_revision=0, new_value="1")
        assert not client.cas("k", expected_mod_revision=0, new_value="2")
        kv = client.get("k")
        assert kv is not None
        assert client.cas("k", expected_mod_revision=kv.mod_revision, new_value="2")
        assert not client.cas("k", expected_value="1", new_value="3")
        assert client.cas("k", expected_value="2", new_value="3")
        assert client.get("k") == client.range("k").kvs[0]
        with pytest.raises(ValueError, match="expected"):
            client.cas("k", new_value="x")


def test_every_write_carries_a_new_idempotency_key(cluster: FakeCluster) -> None:
    with client_of(cluster, session_id="s1") as client:
        client.put("a", "1")
        client.get("a")
        client.delete("a")
        client.txn([], [put_op("b", "1")])
        client.txn([], [get_op("b")])  # read-only: no key
    keys = [key for _, _, key in cluster.requests("n1")]
    assert keys == ["s1-1", None, "s1-2", "s1-3", None]
    with pytest.raises(ValueError, match="session_id"):
        Client(cluster.urls, session_id="has space")


def test_retries_reuse_the_idempotency_key_and_apply_once(cluster: FakeCluster) -> None:
    cluster.inject("n1", Fault("unknown_outcome", apply=True), times=2)
    with client_of(cluster, session_id="s") as client:
        answer = client.put("a", "1")
    assert answer.kv.version == 1
    assert cluster.store.applied_writes == 1
    keys = [key for node in ("n1", "n2", "n3") for _, _, key in cluster.requests(node)]
    assert keys == ["s-1", "s-1"]  # n1 answered unknown_outcome, then n2 answered


def test_a_write_that_times_out_is_retried_with_the_same_key(cluster: FakeCluster) -> None:
    cluster.inject("n1", Fault("slow", delay_s=0.6))
    with client_of(cluster, timeout_s=0.2, session_id="s") as client:
        answer = client.put("a", "1")
        time.sleep(0.6)  # let the slow attempt finish (it is deduplicated)
    assert answer.kv.version == 1
    assert cluster.store.applied_writes == 1
    assert cluster.store.kvs[b"a"].version == 1


def test_unavailable_moves_to_the_next_endpoint(cluster: FakeCluster) -> None:
    cluster.inject("n1", Fault("unavailable"), times=5)
    with client_of(cluster) as client:
        assert client.put("a", "1").kv.value == b"1"
    assert cluster.store.applied_writes == 1


def test_a_stopped_node_is_skipped(cluster: FakeCluster) -> None:
    cluster.stop_node("n1")
    with client_of(cluster) as client:
        for index in range(5):
            client.put(f"k{index}", "v")
        assert client.range("k").count == 5


def test_a_restarted_node_is_reached_again(cluster: FakeCluster) -> None:
    with client_of(cluster) as client:
        client.put("a", "1")
        cluster.stop_node("n1")
        cluster.start_node("n1")  # same port: the kept-alive connection is stale
        kv = client.get("a")  # a read simply tries a fresh connection
    assert kv is not None and kv.value == b"1"


def test_a_write_cut_off_on_a_kept_alive_connection_may_have_arrived(
    cluster: FakeCluster,
) -> None:
    with client_of(cluster) as client:
        client.put("a", "1")
        cluster.stop_node("n1")
        cluster.start_node("n1")
        assert client.put("a", "2").kv.value == b"2"  # retried with the same key, elsewhere
    assert cluster.store.applied_writes == 2


def test_requests_prefer_the_leader(cluster: FakeCluster) -> None:
    cluster.leader_id = "n3"
    with client_of(cluster) as client:
        for index in range(6):
            client.put(f"k{index}", "v")
    # n1 names the leader n3, n2 is tried to find which endpoint is n3, then all go to n3
    assert [len(cluster.requests(node)) for node in ("n1", "n2", "n3")] == [1, 1, 4]


def test_without_a_leader_requests_go_round_robin(cluster: FakeCluster) -> None:
    cluster.leader_id = None
    with client_of(cluster) as client:
        for _ in range(6):
            client.range()
    assert [len(cluster.requests(node)) for node in ("n1", "n2", "n3")] == [2, 2, 2]


def test_no_endpoint_reachable(cluster: FakeCluster) -> None:
    for node in ("n1", "n2", "n3"):
        cluster.stop_node(node)
    started = time.monotonic()
    with client_of(cluster, retry_timeout_s=0.3) as client, pytest.raises(Unavailable) as raised:
        client.put("a", "1")
    assert time.monotonic() - started < 2
    assert raised.value.code == "unreachable"
    assert "no endpoint reachable" in str(raised.value)
    assert raised.value.endpoint in cluster.urls


def test_no_quorum_is_unavailable(cluster: FakeCluster) -> None:
    for node in ("n1", "n2", "n3"):
        cluster.inject(node, Fault("unavailable"), times=100)
    with client_of(cluster, retry_timeout_s=0.3) as client, pytest.raises(Unavailable) as raised:
        client.put("a", "1")
    assert (raised.value.code, raised.value.status) == ("unavailable", 503)
    assert raised.value.header is not None


def test_unknown_outcome_after_the_retry_timeout(cluster: FakeCluster) -> None:
    for node in ("n1", "n2", "n3"):
        cluster.inject(node, Fault("unknown_outcome"), times=100)
    with client_of(cluster, retry_timeout_s=0.3, session_id="s") as client:
        with pytest.raises(UnknownOutcome) as raised:
            client.put("a", "1")
        assert "s-1" in raised.value.message
        for node in ("n1", "n2", "n3"):
            cluster.node(node).faults.clear()
        assert client.put("a", "2").kv.version == 1  # the next write gets a new key


def test_a_dropped_connection_makes_the_outcome_unknown(cluster: FakeCluster) -> None:
    for node in ("n1", "n2", "n3"):
        cluster.inject(node, Fault("drop"), times=100)
    with client_of(cluster, retry_timeout_s=0.3) as client, pytest.raises(UnknownOutcome):
        client.put("a", "1")


def test_client_errors_are_raised_at_once(cluster: FakeCluster) -> None:
    with client_of(cluster) as client:
        with pytest.raises(TooLarge) as raised:
            client.put("big", b"x" * (VALUE_MAX_BYTES + 1))
        assert isinstance(raised.value, InvalidRequest)
        assert (raised.value.status, raised.value.code) == (400, "too_large")
        assert raised.value.endpoint == cluster.urls[0]
        assert str(raised.value).startswith("too_large: ")
    assert len(cluster.requests("n1")) == 1


def test_server_errors_are_not_retried(cluster: FakeCluster) -> None:
    cluster.inject("n1", Fault("status", status=500, code="internal"))
    with client_of(cluster) as client, pytest.raises(ServerError) as raised:
        client.put("a", "1")
    assert raised.value.status == 500
    assert len(cluster.requests("n1")) == 1


def test_a_reused_idempotency_key_is_reported(cluster: FakeCluster) -> None:
    with client_of(cluster, session_id="same") as first:
        first.put("a", "1")
    with client_of(cluster, session_id="same") as second, pytest.raises(IdempotencyKeyReused):
        second.put("b", "2")


def test_status_and_status_all(cluster: FakeCluster) -> None:
    cluster.stop_node("n2")
    with client_of(cluster) as client:
        assert client.status().node.id == "n1"
        assert client.status(cluster.urls[2]).node.role == "follower"
        answers = client.status_all()
    assert [endpoint for endpoint, _ in answers] == cluster.urls
    assert isinstance(answers[1][1], Unavailable) and answers[1][1].code == "unreachable"
    assert not isinstance(answers[0][1], Exception) and answers[0][1].node.role == "leader"


def test_bad_endpoints_are_refused() -> None:
    for bad in ["", "127.0.0.1:14300", "ftp://host:1", "http://host:1/path", "http://host:x"]:
        with pytest.raises(ValueError):
            Client(bad)
    assert Client("http://a:1/, http://b:2").endpoints.urls == ("http://a:1", "http://b:2")


# --- watch ---


def test_watch_replays_from_a_start_revision_then_follows(cluster: FakeCluster) -> None:
    cluster.put("w/a", "1")
    cluster.put("other", "x")
    with client_of(cluster) as client, client.watch(prefix="w/", start_revision=1) as watch:
        first = next(watch)
        assert (first.type, first.kv.key, first.kv.mod_revision) == ("put", b"w/a", 1)
        client.delete("w/a")
        second = next(watch)
        assert (second.type, second.kv.key, second.kv.mod_revision) == ("delete", b"w/a", 3)
        assert watch.next_revision == 4


def test_watch_without_a_start_revision_sees_only_new_events(cluster: FakeCluster) -> None:
    cluster.put("k", "old")
    with client_of(cluster) as client, client.watch(key="k") as watch:
        cluster.put("k", "new")
        event = next(watch)
        assert event.kv.value == b"new"


def test_watch_resumes_after_broken_streams_without_loss_or_repeat(cluster: FakeCluster) -> None:
    with client_of(cluster) as client, client.watch(key="k", start_revision=1) as watch:
        seen = []
        for round_ in range(4):
            cluster.put("k", str(round_))
            seen.append(next(watch).kv.value)
            for node in ("n1", "n2", "n3"):
                cluster.break_watches(node)
        cluster.stop_node("n1")
        cluster.stop_node("n2")
        cluster.put("k", "last")
        seen.append(next(watch).kv.value)
    assert seen == [b"0", b"1", b"2", b"3", b"last"]
    assert any("start_revision=5" in path for _, path, _ in cluster.requests("n3"))


def test_watch_of_compacted_history_raises(cluster: FakeCluster) -> None:
    for index in range(HISTORY_MAX_EVENTS + 5):
        cluster.put("k", str(index))
    with client_of(cluster) as client, pytest.raises(RevisionCompacted) as raised:
        next(iter(client.watch(key="k", start_revision=1)))
    assert raised.value.compact_revision == 6
    assert raised.value.status == 410


def test_a_silent_stream_counts_as_broken(cluster: FakeCluster) -> None:
    cluster.keepalive_s = 5.0
    client = client_of(cluster)
    with client, client.watch(key="k", start_revision=1, idle_timeout_s=0.3) as watch:
        cluster.put("k", "1")
        assert next(watch).kv.value == b"1"
        timer = threading.Timer(0.6, cluster.put, ("k", "2"))
        timer.start()
        assert next(watch).kv.value == b"2"
        timer.join()
    watches = sum(
        path.startswith("/v1/watch")
        for node in ("n1", "n2", "n3")
        for _, path, _ in cluster.requests(node)
    )
    assert watches >= 2


def test_close_from_another_thread_ends_the_iteration(cluster: FakeCluster) -> None:
    with client_of(cluster) as client:
        watch = client.watch(key="k")
        timer = threading.Timer(0.3, watch.close)
        timer.start()
        assert list(watch) == []
        timer.join()


def test_watch_needs_exactly_one_filter(cluster: FakeCluster) -> None:
    with client_of(cluster) as client:
        with pytest.raises(ValueError, match="exactly one"):
            client.watch()
        with pytest.raises(ValueError, match="exactly one"):
            client.watch(key="a", prefix="b")
        with pytest.raises(ValueError, match="start_revision"):
            client.watch(key="a", start_revision=0)


def test_an_error_line_of_an_unavailable_node_resumes_elsewhere(cluster: FakeCluster) -> None:
    with client_of(cluster) as client, client.watch(key="k", start_revision=1) as watch:
        cluster.put("k", "1")
        assert next(watch).kv.value == b"1"
        cluster.break_watches("n1", {"code": "unavailable", "message": "stopping"})
        cluster.put("k", "2")
        assert next(watch).kv.value == b"2"


def test_an_error_line_of_compaction_raises(cluster: FakeCluster) -> None:
    error = {"code": "revision_compacted", "message": "gone", "compact_revision": 40}
    with client_of(cluster) as client, client.watch(key="k", start_revision=1) as watch:
        cluster.put("k", "1")
        assert next(watch).kv.value == b"1"
        cluster.break_watches("n1", error)
        with pytest.raises(RevisionCompacted) as raised:
            next(watch)
    assert (raised.value.compact_revision, raised.value.status) == (40, 410)
