"""The sans-I/O decisions of the client: endpoint choice, retries, final errors, watch cursor."""

from __future__ import annotations

import json
import random

import pytest

from replog.client import (
    IdempotencyKeyReused,
    InvalidRequest,
    RevisionCompacted,
    ServerError,
    TooLarge,
    Unavailable,
    UnknownOutcome,
)
from replog.client._policy import (
    BACKOFF_MAX_S,
    DOWN_S,
    Attempts,
    Endpoints,
    Request,
    Retry,
    TransportFailure,
    WatchCursor,
    check_session_id,
    normalize_endpoints,
)
from replog.client.types import Header

URLS = ("http://a:1", "http://b:2", "http://c:3")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def header(node_id: str, leader_id: str | None) -> Header:
    return Header(node_id, leader_id, 1, 10, 10, 5)


def answer(node_id: str, leader_id: str | None, **body: object) -> bytes:
    doc = {"header": {"node_id": node_id, "leader_id": leader_id, "term": 1}} | body
    doc["header"] |= {"commit_index": 1, "applied_index": 1, "revision": 1}  # type: ignore[operator]
    return json.dumps(doc).encode()


def error(code: str, node_id: str = "n1", leader_id: str | None = "n1", **extra: object) -> bytes:
    return answer(node_id, leader_id, error={"code": code, "message": "m", **extra})


WRITE = Request("PUT", "/v1/kv/a", b"1", idempotency_key="s-1")
READ = Request("GET", "/v1/kv/a")


def attempts(request: Request, clock: Clock, endpoints: Endpoints | None = None) -> Attempts:
    return Attempts(
        endpoints or Endpoints(URLS, clock=clock),
        request,
        retry_timeout_s=1.0,
        rng=random.Random(7),
        clock=clock,
    )


def test_round_robin_without_a_leader() -> None:
    endpoints = Endpoints(URLS)
    assert [endpoints.pick() for _ in range(4)] == [*URLS, URLS[0]]


def test_the_leader_is_preferred_once_its_endpoint_is_known() -> None:
    endpoints = Endpoints(URLS)
    assert endpoints.pick() == URLS[0]
    endpoints.observe(URLS[0], header("n1", "n3"))
    assert endpoints.pick() == URLS[1]  # n3's endpoint is unknown: try one not heard from
    endpoints.observe(URLS[1], header("n2", "n3"))
    assert endpoints.pick() == URLS[2]
    endpoints.observe(URLS[2], header("n3", "n3"))
    assert [endpoints.pick() for _ in range(3)] == [URLS[2]] * 3


def test_a_failed_leader_loses_the_preference_and_is_passed_over() -> None:
    clock = Clock()
    endpoints = Endpoints(URLS, clock=clock)
    endpoints.observe(URLS[0], header("n1", "n2"))
    endpoints.observe(URLS[1], header("n2", "n2"))
    assert endpoints.pick() == URLS[1]
    endpoints.failed(URLS[1])
    endpoints.observe(URLS[0], header("n1", "n2"))  # a follower still names n2
    assert endpoints.pick() == URLS[2]
    endpoints.observe(URLS[2], header("n3", "n2"))
    assert {endpoints.pick() for _ in range(4)} == {URLS[0], URLS[2]}
    clock.now += DOWN_S + 0.1
    assert endpoints.pick() == URLS[1]


def test_when_every_endpoint_failed_all_are_tried_again() -> None:
    endpoints = Endpoints(URLS)
    for url in URLS:
        endpoints.failed(url)
    assert {endpoints.pick() for _ in range(3)} == set(URLS)


def test_a_definite_failure_of_a_write_ends_unavailable() -> None:
    clock = Clock()
    run = attempts(WRITE, clock)
    for _ in range(3):
        endpoint = run.next_endpoint()
        retry = run.on_failure(endpoint, TransportFailure("refused", sent=False))
        assert 0 <= retry.delay_s <= BACKOFF_MAX_S
    clock.now += 1.0
    with pytest.raises(Unavailable) as raised:
        run.next_endpoint()
    assert raised.value.code == "unreachable"
    assert "no endpoint reachable" in raised.value.message


def test_a_write_that_may_have_been_sent_ends_unknown() -> None:
    clock = Clock()
    run = attempts(WRITE, clock)
    run.on_failure(run.next_endpoint(), TransportFailure("timed out", sent=True))
    run.on_failure(run.next_endpoint(), TransportFailure("refused", sent=False))
    clock.now += 2.0
    with pytest.raises(UnknownOutcome) as raised:
        run.next_endpoint()
    assert "s-1" in raised.value.message


def test_a_read_that_timed_out_is_only_unavailable() -> None:
    clock = Clock()
    run = attempts(READ, clock)
    run.on_failure(run.next_endpoint(), TransportFailure("timed out", sent=True))
    clock.now += 2.0
    with pytest.raises(Unavailable):
        run.next_endpoint()


def test_503_answers_are_retried_and_remembered() -> None:
    clock = Clock()
    run = attempts(WRITE, clock)
    first = run.on_answer(run.next_endpoint(), 503, error("unavailable"))
    assert isinstance(first, Retry)
    clock.now += 2.0
    with pytest.raises(Unavailable) as unavailable:
        run.next_endpoint()
    assert (unavailable.value.code, unavailable.value.status) == ("unavailable", 503)
    run = attempts(WRITE, clock)
    assert isinstance(run.on_answer(run.next_endpoint(), 503, error("unknown_outcome")), Retry)
    assert isinstance(run.on_answer(run.next_endpoint(), 503, error("unavailable")), Retry)
    clock.now += 2.0
    with pytest.raises(UnknownOutcome):
        run.next_endpoint()


def test_backoff_grows_and_stays_within_the_deadline() -> None:
    clock = Clock()
    run = attempts(READ, clock)
    delays = [run.on_failure(run.next_endpoint(), TransportFailure("x", sent=False)).delay_s]
    delays += [run.on_failure(run.next_endpoint(), TransportFailure("x", sent=False)).delay_s]
    assert delays[1] > delays[0] > 0
    clock.now += 0.99
    assert run.on_failure(run.next_endpoint(), TransportFailure("x", sent=False)).delay_s < 0.0101


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "invalid_request", InvalidRequest),
        (400, "too_large", TooLarge),
        (409, "idempotency_key_reused", IdempotencyKeyReused),
        (500, "internal", ServerError),
        (404, "not_found", ServerError),
        (502, "bad_gateway", ServerError),
    ],
)
def test_other_errors_are_raised_at_once(status: int, code: str, expected: type) -> None:
    run = attempts(WRITE, Clock())
    endpoint = run.next_endpoint()
    with pytest.raises(expected) as raised:
        run.on_answer(endpoint, status, error(code))
    assert (raised.value.code, raised.value.status, raised.value.endpoint) == (
        code,
        status,
        endpoint,
    )
    assert raised.value.header is not None and raised.value.header.node_id == "n1"


def test_compaction_carries_the_oldest_revision() -> None:
    run = attempts(READ, Clock())
    with pytest.raises(RevisionCompacted) as raised:
        run.on_answer(run.next_endpoint(), 410, error("revision_compacted", compact_revision=9))
    assert raised.value.compact_revision == 9


def test_unreadable_answers() -> None:
    run = attempts(READ, Clock())
    with pytest.raises(ServerError) as raised:
        run.on_answer(run.next_endpoint(), 502, b"<html>bad gateway</html>")
    assert raised.value.code == "bad_response"
    assert isinstance(run.on_answer(run.next_endpoint(), 503, b"busy"), Retry)


def test_answers_teach_the_endpoints_who_leads() -> None:
    endpoints = Endpoints(URLS)
    run = attempts(READ, Clock(), endpoints)
    assert run.on_answer(URLS[1], 200, answer("n2", "n2")) == answer("n2", "n2")
    assert endpoints.leader_endpoint() == URLS[1]


def test_endpoints_and_session_ids_are_checked() -> None:
    assert normalize_endpoints(" http://a:1/ ,https://b") == ("http://a:1", "https://b")
    for bad in ["", ",", "a:1", "http://", "http://a:1/v1", "http://a:1?x=1", "http://a:99999"]:
        with pytest.raises(ValueError):
            normalize_endpoints(bad)
    with pytest.raises(ValueError, match="at most"):
        normalize_endpoints([f"http://h:{port}" for port in range(1, 100)])
    assert check_session_id("abc-1") == "abc-1"
    for bad in ["", "a b", "é", "x" * 101]:
        with pytest.raises(ValueError):
            check_session_id(bad)


def test_the_watch_cursor_resumes_after_the_last_event() -> None:
    endpoints = Endpoints(URLS)
    cursor = WatchCursor(key=None, prefix=b"\xff", start_revision=5)
    assert cursor.request().target == "/v1/watch?prefix_base64=%2Fw%3D%3D&start_revision=5"

    def line(*revisions: int) -> bytes:
        kv = {"key": "k", "value": "v", "create_revision": 1, "version": 1}
        events = [{"type": "put", "kv": kv | {"mod_revision": r}} for r in revisions]
        return answer("n1", "n1", events=events) + b"\n"

    assert [e.kv.mod_revision for e in cursor.accept_line(endpoints, URLS[0], line(5, 6))] == [5, 6]
    assert cursor.next_revision == 7
    assert cursor.accept_line(endpoints, URLS[0], line()) == []
    assert [e.kv.mod_revision for e in cursor.accept_line(endpoints, URLS[0], line(6, 7))] == [7]
    assert cursor.request().target.endswith("start_revision=8")
    with pytest.raises(ValueError):
        cursor.accept_line(endpoints, URLS[0], b'{"events": 1}\n')


def test_outcome_errors_are_the_library_wide_classes() -> None:
    from replog import errors

    assert issubclass(Unavailable, errors.Unavailable)
    assert issubclass(UnknownOutcome, errors.UnknownOutcome)
    assert issubclass(TooLarge, errors.ReplogError)
    error = Unavailable("no leader", status=503, endpoint="http://a:1")
    assert str(error) == "unavailable: no leader (http://a:1)"
