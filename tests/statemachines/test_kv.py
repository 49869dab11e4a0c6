"""The KV store, one semantic of docs/http-api.md per test: revisions and versions, deletes,
transactions, idempotency, reads, the watch history, limits, snapshots."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Sequence

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replog.statemachines import (
    ApplyResult,
    Compacted,
    Compare,
    Delete,
    DeleteResult,
    ErrorResult,
    Event,
    Get,
    GetResult,
    InvalidCommand,
    InvalidSnapshot,
    KeyValue,
    KVLimits,
    KVStore,
    Put,
    PutResult,
    Request,
    StateMachine,
    TooLarge,
    Txn,
    TxnResult,
    check_request,
    decode_request,
    encode_request,
)
from replog.statemachines import kv as kv_module
from replog.statemachines.commands import TxnOp
from replog.statemachines.kv import (
    IMAGE_CHUNK_BYTES,
    IMAGE_CHUNK_ITEMS,
    KVImage,
    encode_image,
    prefix_end,
)


def run(
    store: KVStore, op: Put | Delete | Txn, key: str | None = None, time_ms: int = 0
) -> ApplyResult:
    return store.apply(encode_request(Request(op, idempotency_key=key, time_ms=time_ms)))


def put(store: KVStore, key: bytes, value: bytes = b"v") -> PutResult:
    result = run(store, Put(key, value))
    assert isinstance(result, PutResult)
    return result


def delete(store: KVStore, key: bytes) -> DeleteResult:
    result = run(store, Delete(key))
    assert isinstance(result, DeleteResult)
    return result


def txn(
    store: KVStore,
    compare: tuple[Compare, ...] = (),
    success: Sequence[TxnOp] = (),
    failure: Sequence[TxnOp] = (),
) -> TxnResult:
    result = run(store, Txn(compare, tuple(success), tuple(failure)))
    assert isinstance(result, TxnResult), result
    return result


# --- revisions, versions, deletes -----------------------------------------------------------


def test_a_fresh_store_is_empty_at_revision_zero() -> None:
    store = KVStore()
    assert (store.revision, len(store), store.get(b"a")) == (0, 0, None)
    assert store.range(b"", 10) == ([], 0, False)


def test_each_put_is_one_revision_and_counts_a_version() -> None:
    store = KVStore()
    first = put(store, b"a", b"1")
    assert first == PutResult(1, KeyValue(b"a", b"1", 1, 1, 1), None)
    put(store, b"b", b"x")
    second = put(store, b"a", b"1")  # the same value again is still a write
    assert second == PutResult(3, KeyValue(b"a", b"1", 1, 3, 2), first.kv)
    assert store.revision == 3
    assert store.get(b"a") == second.kv


def test_delete_of_a_missing_key_changes_nothing() -> None:
    store = KVStore()
    put(store, b"a")
    assert delete(store, b"zz") == DeleteResult(1, 0, None)
    assert store.revision == 1
    assert store.events_since(0) == [Event("put", KeyValue(b"a", b"v", 1, 1, 1))]


def test_the_watch_history_is_invisible_to_the_cycle_collector() -> None:
    """The history holds up to 100k events for as long as they are kept: scanning them made
    a busy node's full collections slow. An event refers to no container, so no cycle."""
    store = KVStore()
    put(store, b"a")
    delete(store, b"a")
    assert not any(gc.is_tracked(event) for event in store.events_since(0))


def test_the_key_table_is_invisible_to_the_cycle_collector() -> None:
    """A key-value refers to no container, so it can be in no cycle. Its type being outside
    the collector keeps the dict of every key untracked too: with a million keys, a full
    collection took 41 ms instead of 16."""
    store = KVStore()
    for i in range(100):
        put(store, b"k%d" % i)
    assert not gc.is_tracked(store.get(b"k1"))
    assert not gc.is_tracked(store._kvs)  # white box: the table itself


def test_delete_then_recreate_starts_a_new_life() -> None:
    store = KVStore()
    put(store, b"a", b"1")
    put(store, b"a", b"2")
    gone = delete(store, b"a")
    assert gone == DeleteResult(3, 1, KeyValue(b"a", b"2", 1, 2, 2))
    assert store.get(b"a") is None
    again = put(store, b"a", b"3")
    assert again.kv == KeyValue(b"a", b"3", 4, 4, 1)
    assert again.prev_kv is None


# --- transactions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "op", "value", "holds"),
    [
        ("version", "==", 0, True),
        ("version", ">", 0, False),
        ("mod_revision", "==", 0, True),
        ("create_revision", "<", 1, True),
        ("create_revision", "!=", 0, False),
        ("value", "==", b"", False),  # every value compare on a missing key is false
        ("value", "!=", b"x", False),
        ("value", "<", b"zzz", False),
        ("value", ">", b"", False),
    ],
)
def test_compares_on_a_missing_key(target: str, op: str, value: bytes | int, holds: bool) -> None:
    store = KVStore()
    result = txn(store, (Compare(b"k", target, op, value),), [Get(b"k")], [])
    assert result.succeeded is holds


@pytest.mark.parametrize(
    ("target", "op", "value", "holds"),
    [
        ("value", "==", b"abc", True),
        ("value", "<", b"abd", True),
        ("value", "<", b"abc", False),
        ("value", ">", b"ab", True),
        ("value", "!=", b"abc", False),
        ("version", "==", 2, True),
        ("mod_revision", "==", 3, True),
        ("mod_revision", "<", 3, False),
        ("create_revision", "==", 1, True),
        ("create_revision", ">", 0, True),
    ],
)
def test_compares_on_a_present_key(target: str, op: str, value: bytes | int, holds: bool) -> None:
    store = KVStore()
    put(store, b"k", b"x")
    put(store, b"other")
    put(store, b"k", b"abc")  # k: create 1, mod 3, version 2
    assert txn(store, (Compare(b"k", target, op, value),)).succeeded is holds


def test_all_compares_must_hold() -> None:
    store = KVStore()
    put(store, b"a", b"1")
    compares = (Compare(b"a", "value", "==", b"1"), Compare(b"b", "version", "==", 1))
    result = txn(store, compares, [Put(b"x", b"s")], [Put(b"y", b"f")])
    assert not result.succeeded
    assert store.get(b"x") is None
    assert store.get(b"y") is not None


def test_a_txn_is_one_revision_and_its_ops_see_earlier_ops() -> None:
    store = KVStore()
    put(store, b"a", b"0")
    result = txn(
        store,
        success=[
            Put(b"a", b"1"),
            Put(b"a", b"2"),
            Get(b"a"),
            Delete(b"a"),
            Get(b"a"),
            Put(b"b", b""),
        ],
    )
    assert result.revision == 2 and store.revision == 2 and result.succeeded
    put_1, put_2, get_a, del_a, get_gone, put_b = result.responses
    assert put_1 == PutResult(2, KeyValue(b"a", b"1", 1, 2, 2), KeyValue(b"a", b"0", 1, 1, 1))
    assert put_2 == PutResult(2, KeyValue(b"a", b"2", 1, 2, 3), put_1.kv)
    assert get_a == GetResult(put_2.kv)
    assert del_a == DeleteResult(2, 1, put_2.kv)
    assert get_gone == GetResult(None)
    assert put_b == PutResult(2, KeyValue(b"b", b"", 2, 2, 1), None)
    types = [(e.type, e.kv.key, e.kv.mod_revision) for e in store.events_since(2)]
    assert types == [
        ("put", b"a", 2),
        ("put", b"a", 2),
        ("delete", b"a", 2),
        ("put", b"b", 2),
    ]


def test_a_txn_that_deletes_and_recreates_a_key() -> None:
    store = KVStore()
    put(store, b"a")
    put(store, b"a")
    result = txn(store, success=[Delete(b"a"), Put(b"a", b"new")])
    assert result.responses[1] == PutResult(3, KeyValue(b"a", b"new", 3, 3, 1), None)


def test_a_txn_without_writes_keeps_the_revision() -> None:
    store = KVStore()
    put(store, b"a")
    result = txn(store, success=[Get(b"a"), Delete(b"missing"), Get(b"nope")])
    assert result.revision == 1 and store.revision == 1
    assert result.responses[1] == DeleteResult(1, 0, None)
    assert txn(store).revision == 1  # an empty txn succeeds and changes nothing
    assert store.events_since(2) == []


def test_a_txn_whose_only_write_is_a_delete_moves_the_revision() -> None:
    store = KVStore()
    put(store, b"a")
    result = txn(store, success=[Delete(b"missing"), Delete(b"a")])
    assert result.revision == 2
    assert result.responses == (
        DeleteResult(2, 0, None),
        DeleteResult(2, 1, KeyValue(b"a", b"v", 1, 1, 1)),
    )


def test_compare_and_set_on_mod_revision() -> None:
    store = KVStore()
    seen = put(store, b"lock", b"free").kv.mod_revision
    cas = (Compare(b"lock", "mod_revision", "==", seen),)
    assert txn(store, cas, [Put(b"lock", b"mine")]).succeeded
    assert not txn(store, cas, [Put(b"lock", b"theirs")]).succeeded
    assert store.get(b"lock").value == b"mine"  # type: ignore[union-attr]


def test_an_invalid_txn_changes_nothing_at_all() -> None:
    store = KVStore()
    put(store, b"a", b"1")
    before = store.snapshot()
    bad = Txn((), (Put(b"a", b"2"), Put(b"", b"empty key")), ())
    result = run(store, bad)
    assert isinstance(result, ErrorResult) and result.code == "invalid_request"
    assert "success[1].key" in result.message
    assert store.snapshot() == before


def test_apply_never_raises_on_garbage() -> None:
    store = KVStore()
    for data in (b"", b"\xc1", b"\x80", b"\x81\xa2op\xc0", b"\x91\x01", bytes(range(256))):
        result = store.apply(data)
        assert isinstance(result, ErrorResult) and result.code == "invalid_request"
    assert store.revision == 0 and store.snapshot() == KVStore().snapshot()


# --- idempotency ----------------------------------------------------------------------------


def test_a_retry_with_the_same_key_is_answered_from_memory() -> None:
    store = KVStore()
    first = run(store, Put(b"a", b"1"), key="s-1", time_ms=10)
    put(store, b"a", b"2")
    again = run(store, Put(b"a", b"1"), key="s-1", time_ms=20)
    assert again == first
    assert store.revision == 2 and store.get(b"a").value == b"2"  # type: ignore[union-attr]


def test_a_key_reused_for_another_request_is_refused() -> None:
    store = KVStore()
    run(store, Put(b"a", b"1"), key="s-1")
    refused = run(store, Put(b"a", b"other"), key="s-1")
    assert isinstance(refused, ErrorResult) and refused.code == "idempotency_key_reused"
    assert store.revision == 1


def test_failed_txns_and_missing_deletes_are_remembered_too() -> None:
    store = KVStore()
    failing = Txn((Compare(b"a", "version", "==", 1),), (Put(b"a", b"x"),), ())
    first = run(store, failing, key="t")
    put(store, b"a")  # now the compare would hold
    assert run(store, failing, key="t") == first
    gone = run(store, Delete(b"zz"), key="d")
    put(store, b"zz")
    assert run(store, Delete(b"zz"), key="d") == gone
    assert store.get(b"zz") is not None


def test_remembered_keys_expire_by_the_log_stamped_time() -> None:
    store = KVStore(KVLimits(idempotency_ttl_ms=1000))
    run(store, Put(b"a", b"1"), key="k", time_ms=5000)
    run(store, Put(b"b", b"1"), time_ms=5999)
    assert run(store, Put(b"a", b"1"), key="k", time_ms=4000) == PutResult(
        1, KeyValue(b"a", b"1", 1, 1, 1), None
    )  # time never goes back: still 5999 < 6000
    assert store.revision == 2
    again = run(store, Put(b"a", b"1"), key="k", time_ms=6000)  # expired: applied anew
    assert isinstance(again, PutResult) and again.revision == 3
    assert store.now_ms == 6000


def test_remembered_keys_are_bounded_oldest_first() -> None:
    store = KVStore(KVLimits(idempotency_keys_max=2))
    for name in ("k1", "k2", "k3"):
        run(store, Put(b"a", name.encode()), key=name)
    assert store.revision == 3
    assert run(store, Put(b"a", b"k3"), key="k3").revision == 3  # type: ignore[union-attr]
    assert run(store, Put(b"a", b"k2"), key="k2").revision == 2  # type: ignore[union-attr]
    assert run(store, Put(b"a", b"k1"), key="k1").revision == 4  # type: ignore[union-attr]


def test_remembered_results_are_bounded_in_bytes_but_the_newest_stays() -> None:
    store = KVStore(KVLimits(idempotency_bytes_max=1000))
    run(store, Put(b"a", b"x" * 400), key="k1")
    run(store, Put(b"b", b"y" * 2000), key="k2")  # alone over the budget: evicts k1, stays
    assert run(store, Put(b"b", b"y" * 2000), key="k2").revision == 2  # type: ignore[union-attr]
    assert run(store, Put(b"a", b"x" * 400), key="k1").revision == 3  # type: ignore[union-attr]


def test_the_idempotency_table_is_in_the_snapshot() -> None:
    store = KVStore(KVLimits(idempotency_ttl_ms=100))
    first = run(store, Put(b"a", b"1"), key="k", time_ms=50)
    copy = KVStore(KVLimits(idempotency_ttl_ms=100))
    copy.restore(store.snapshot())
    assert copy.now_ms == 50
    assert run(copy, Put(b"a", b"1"), key="k", time_ms=149) == first
    assert run(copy, Put(b"a", b"1"), key="k", time_ms=150) != first


# --- reads ----------------------------------------------------------------------------------


def test_range_by_prefix_in_byte_order() -> None:
    store = KVStore()
    for key in (b"b/2", b"a", b"b/1", b"b", b"b\xff", b"c", b"b/10", b"\xff\xff", b"\xff"):
        put(store, key)
    keys = [kv.key for kv in store.range(b"b", 100)[0]]
    assert keys == [b"b", b"b/1", b"b/10", b"b/2", b"b\xff"]
    kvs, count, more = store.range(b"b/", 2)
    assert ([kv.key for kv in kvs], count, more) == ([b"b/1", b"b/10"], 3, True)
    assert store.range(b"b/", 3)[1:] == (3, False)
    assert [kv.key for kv in store.range(b"\xff", 10)[0]] == [b"\xff", b"\xff\xff"]
    assert store.range(b"", 0) == ([], 9, True)
    assert store.range(b"zz", 5) == ([], 0, False)
    assert [kv.key for kv in store.range(b"", 3)[0]] == [b"a", b"b", b"b/1"]


def test_range_refuses_a_bad_limit() -> None:
    store = KVStore(KVLimits(range_limit_max=5))
    store.range(b"", 5)
    for limit in (-1, 6):
        with pytest.raises(InvalidCommand, match="limit"):
            store.range(b"", limit)


def test_prefix_end() -> None:
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") is None
    assert prefix_end(b"") is None


# --- watch history --------------------------------------------------------------------------


def test_events_since_filters_by_key_and_prefix() -> None:
    store = KVStore()
    put(store, b"app/a")  # 1
    put(store, b"app/b")  # 2
    put(store, b"other")  # 3
    delete(store, b"app/a")  # 4
    all_keys = [(e.type, e.kv.key) for e in store.events_since(2)]
    assert all_keys == [("put", b"app/b"), ("put", b"other"), ("delete", b"app/a")]
    assert [e.kv.mod_revision for e in store.events_since(1, key=b"app/a")] == [1, 4]
    assert [e.kv.key for e in store.events_since(3, prefix=b"app/")] == [b"app/a"]
    assert store.events_since(5) == []
    assert store.events_since(4)[0] == Event("delete", KeyValue(b"app/a", b"", 0, 4, 0))
    with pytest.raises(InvalidCommand, match="not both"):
        store.events_since(1, key=b"a", prefix=b"a")
    with pytest.raises(InvalidCommand, match="limit"):
        store.events_since(1, limit=0)


def test_events_since_limit_never_splits_a_revision() -> None:
    store = KVStore()
    put(store, b"a")
    txn(store, success=[Put(b"x", b"1"), Put(b"y", b"2"), Put(b"z", b"3")])
    put(store, b"b")
    events = store.events_since(1, limit=2)
    assert [e.kv.mod_revision for e in events] == [1, 2, 2, 2]
    resumed = store.events_since(events[-1].kv.mod_revision + 1, limit=2)
    assert [e.kv.key for e in resumed] == [b"b"]


def test_the_history_is_bounded_and_reports_compaction() -> None:
    store = KVStore(KVLimits(history_events_max=3))
    for i in range(5):
        put(store, b"k%d" % i)  # revisions 1..5; 3, 4, 5 kept
    assert store.compact_revision == 3
    assert [e.kv.mod_revision for e in store.events_since(3)] == [3, 4, 5]
    with pytest.raises(Compacted) as raised:
        store.events_since(2)
    assert raised.value.compact_revision == 3


def test_compaction_inside_a_txn_drops_the_whole_revision() -> None:
    store = KVStore(KVLimits(history_events_max=3))
    put(store, b"a")  # 1
    txn(store, success=[Put(b"x", b"1"), Put(b"y", b"2"), Put(b"z", b"3")])  # 2 (three events)
    assert store.compact_revision == 2
    put(store, b"b")  # 3: one event of revision 2 is dropped, so 2 is no longer whole
    assert store.compact_revision == 3
    with pytest.raises(Compacted):
        store.events_since(2)
    assert [e.kv.key for e in store.events_since(3)] == [b"b"]


def test_the_newest_revision_is_kept_whole_even_over_the_budget() -> None:
    store = KVStore(KVLimits(history_events_max=2))
    put(store, b"a")
    txn(store, success=[Put(b"k%d" % i, b"") for i in range(5)])
    assert store.compact_revision == 2
    assert [e.kv.key for e in store.events_since(2)] == [b"k%d" % i for i in range(5)]
    copy = KVStore(KVLimits(history_events_max=2))
    copy.restore(store.snapshot())  # a node restores its own image, whatever it holds
    put(store, b"b")
    assert store.compact_revision == 3
    assert [e.kv.key for e in store.events_since(3)] == [b"b"]


def test_the_history_is_bounded_in_bytes() -> None:
    store = KVStore(KVLimits(history_bytes_max=1000))
    for i in range(10):
        put(store, b"k%d" % i, b"v" * 300)
    kept = store.events_since(store.compact_revision)
    assert 1 <= len(kept) <= 3 and kept[-1].kv.mod_revision == 10


def test_a_long_history_stays_bounded_and_searchable() -> None:
    store = KVStore(KVLimits(history_events_max=50))
    for i in range(1000):
        put(store, b"k%d" % (i % 7))
    assert store.compact_revision == 951
    assert [e.kv.mod_revision for e in store.events_since(990)] == list(range(990, 1001))
    assert len(store._history) <= 101  # the ring is compacted as it goes


# --- limits and checks ----------------------------------------------------------------------


LIMITS = KVLimits(
    key_bytes_max=8, value_bytes_max=16, request_bytes_max=40, txn_ops_max=3, txn_compares_max=2
)


@pytest.mark.parametrize(
    ("op", "error", "message"),
    [
        (Put(b"", b"v"), InvalidCommand, "key must not be empty"),
        (Put(b"k" * 9, b"v"), TooLarge, "key is 9 bytes"),
        (Put(b"k", b"v" * 17), TooLarge, "value is 17 bytes"),
        (Delete(b""), InvalidCommand, "key must not be empty"),
        (Txn((), (Put(b"a", b""),) * 4, ()), TooLarge, "success has 4 entries"),
        (Txn((), (), (Get(b"a"),) * 4), TooLarge, "failure has 4 entries"),
        (Txn((Compare(b"a", "version", "==", 0),) * 3, (), ()), TooLarge, "compare has 3"),
        (Txn((), (Put(b"a", b"v" * 16),) * 3, ()), TooLarge, "carries 51 bytes"),
        (Txn((Compare(b"a", "age", "==", 0),), (), ()), InvalidCommand, r"compare\[0\].target"),
        (Txn((Compare(b"a", "version", "<=", 0),), (), ()), InvalidCommand, r"compare\[0\].op"),
        (Txn((Compare(b"a", "version", "==", b"0"),), (), ()), InvalidCommand, "integer"),
        (Txn((Compare(b"a", "value", "==", 0),), (), ()), InvalidCommand, "must be bytes"),
        (Txn((Compare(b"a", "version", "==", 2**63),), (), ()), InvalidCommand, "64-bit"),
        (Txn((Compare(b"", "version", "==", 0),), (), ()), InvalidCommand, r"compare\[0\].key"),
        (Txn((), (Get(b"a"), Get(b"")), ()), InvalidCommand, r"success\[1\].key"),
    ],
)
def test_check_request_refuses(op: object, error: type[Exception], message: str) -> None:
    req = Request(op)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        check_request(req, LIMITS)
    result = KVStore(LIMITS).apply(encode_request(req))
    assert isinstance(result, ErrorResult)
    assert result.code == ("too_large" if error is TooLarge else "invalid_request")


@pytest.mark.parametrize("key", ["", "x" * 129, "caf\u00e9", "tab\t"])
def test_bad_idempotency_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidCommand, match="idempotency_key"):
        check_request(Request(Put(b"a", b""), idempotency_key=key), KVLimits())


def test_the_store_tells_how_long_it_has_remembered_idempotency_keys() -> None:
    kv = KVStore(KVLimits(idempotency_keys_max=2))
    assert (kv.idempotency_keys, kv.idempotency_retention_ms) == (0, 0)
    for i, now_ms in enumerate((1_000, 4_000, 9_000)):
        kv.apply(encode_request(Request(Put(b"k", b"v"), f"key-{i}", now_ms)))
    assert kv.idempotency_keys == 2  # the oldest was evicted by count
    assert kv.idempotency_retention_ms == 5_000  # the oldest left was stored at 4,000
    kv.apply(encode_request(Request(Put(b"k", b"w"), None, 10_000)))
    assert kv.idempotency_retention_ms == 6_000


@given(st.text(max_size=140))
def test_an_idempotency_key_is_checked_as_1_to_128_printable_ascii_characters(key: str) -> None:
    valid = 1 <= len(key) <= 128 and all(" " <= c <= "~" for c in key)
    try:
        check_request(Request(Put(b"a", b""), idempotency_key=key), KVLimits())
    except InvalidCommand:
        assert not valid
    else:
        assert valid


def test_check_request_catches_wrong_python_types() -> None:
    limits = KVLimits()
    for req in (
        Request(Put("a", b"v")),  # type: ignore[arg-type]
        Request(Put(b"a", "v")),  # type: ignore[arg-type]
        Request(Get(b"a")),  # type: ignore[arg-type]
        Request(Txn((), (Txn(),), ())),  # type: ignore[arg-type]
        Request(Txn((Compare(b"a", "version", "==", True),), (), ())),
        Request(Put(b"a", b""), time_ms=-1),
        "not a request",
    ):
        with pytest.raises(InvalidCommand):
            check_request(req, limits)  # type: ignore[arg-type]


def test_decode_request_round_trips_and_refuses_oversized_bytes() -> None:
    req = Request(
        Txn((Compare(b"a", "value", "==", b"x"),), (Put(b"a", b"y"), Get(b"a")), (Delete(b"a"),)),
        idempotency_key="abc-1",
        time_ms=123,
    )
    assert decode_request(encode_request(req)) == req
    with pytest.raises(TooLarge):
        decode_request(encode_request(Request(Put(b"a", b"v" * 5000))), LIMITS)


def test_a_request_may_always_carry_one_largest_key_and_value() -> None:
    limits = KVLimits(key_bytes_max=4, value_bytes_max=100, request_bytes_max=10)
    assert limits.payload_bytes_max == 104
    check_request(Request(Put(b"kkkk", b"v" * 100)), limits)
    big = Request(Txn((), (Put(b"kkkk", b"v" * 100), Put(b"k", b"")), ()))
    with pytest.raises(TooLarge, match="carries 105 bytes"):
        check_request(big, limits)
    decode_request(encode_request(Request(Put(b"kkkk", b"v" * 100), "i" * 128)), limits)


def test_the_package_exports_the_whole_vocabulary() -> None:
    import replog.statemachines as package

    for name in package.__all__:
        assert getattr(package, name) is not None


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="key_bytes_max"):
        KVLimits(key_bytes_max=0)


# --- snapshots ------------------------------------------------------------------------------


def busy_store() -> KVStore:
    store = KVStore(KVLimits(history_events_max=5))
    run(store, Put(b"a", b"1"), key="k1", time_ms=7)
    run(store, Txn((), (Put(b"b", b"\xff"), Delete(b"a"), Get(b"b")), ()), key="k2", time_ms=9)
    run(store, Txn((Compare(b"b", "value", ">", b"z"),), (), (Get(b"b"),)), key="k3")
    for i in range(6):
        put(store, b"c%d" % i)
    return store


# Images are loaded a chunk of items at a time; small chunks put every check across a
# boundary (order, repeats and current kvs of the history looked up in earlier chunks).
CHUNK_ITEMS = [1, 2, 3, IMAGE_CHUNK_ITEMS]


@pytest.fixture(params=CHUNK_ITEMS)
def chunk_items(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(kv_module, "IMAGE_CHUNK_ITEMS", request.param)
    return int(request.param)


def test_restore_of_a_snapshot_gives_the_same_state(chunk_items: int) -> None:
    store = busy_store()
    image = store.snapshot()
    copy = KVStore(KVLimits(history_events_max=5))
    copy.restore(image)
    assert copy.snapshot() == image
    assert (copy.revision, copy.compact_revision, copy.now_ms) == (
        store.revision,
        store.compact_revision,
        store.now_ms,
    )
    assert copy.range(b"", 100) == store.range(b"", 100)
    assert copy.events_since(copy.compact_revision) == store.events_since(store.compact_revision)
    for later in (Put(b"c1", b"z"), Delete(b"b")):
        assert run(copy, later, key="k9") == run(store, later, key="k9")
    assert copy.snapshot() == store.snapshot()


def test_restore_refuses_garbage_and_keeps_the_state() -> None:
    store = busy_store()
    before = store.snapshot()
    for bad in (
        b"",
        b"garbage",
        before[:-3],
        before + b"\x00",
        encode_request(Request(Delete(b"a"))),
    ):
        with pytest.raises(InvalidSnapshot):
            store.restore(bad)
    assert store.snapshot() == before


def test_restore_refuses_an_inconsistent_image(chunk_items: int) -> None:
    good = msgspec.msgpack.decode(busy_store().snapshot(), type=KVImage)
    kv = KeyValue(b"0", b"", 1, 1, 1)
    event = Event("put", KeyValue(b"x", b"", 1, 99, 1))
    for change in (
        {"format": 2},
        {"revision": -1},
        {"compact_revision": 0},
        {"kvs": [*good.kvs, kv]},  # out of key order
        {"kvs": [KeyValue(b"a", b"", 5, 4, 1)]},  # create after mod
        {"kvs": [KeyValue(b"", b"", 1, 1, 1)]},
        {"kvs": [KeyValue(b"a", b"", 1, good.revision + 1, 1)]},
        {"kvs": [*good.kvs[:2], good.kvs[1], *good.kvs[2:]]},  # repeated
        {"idempotency": [*good.idempotency, good.idempotency[0]]},
        {"idempotency": [*good.idempotency[1:], good.idempotency[0]]},  # out of time order
        {"history": [*good.history, event]},
        {"history": [Event("put", KeyValue(b"a", b"", 1, 1, 1))]},  # before compact_revision
        {"history": [Event("move", good.history[-1].kv)]},
        {"history": [Event("put=", KeyValue(b"nokey", b"", 1, good.revision, 1))]},
    ):
        bad = msgspec.msgpack.encode(msgspec.structs.replace(good, **change))
        with pytest.raises(InvalidSnapshot):
            KVStore().restore(bad)


def test_a_restorer_loads_apart_and_installs_at_once() -> None:
    image = busy_store().snapshot()
    store = KVStore()
    put(store, b"other")
    before = store.snapshot()
    install = store.snapshot_restorer(memoryview(image))
    assert store.snapshot() == before  # loading neither reads nor changes the live state
    put(store, b"later")  # and may run while the store goes on (what it applies is replaced)
    install()
    assert store.snapshot() == image
    with pytest.raises(InvalidSnapshot):
        store.snapshot_restorer(image[:-3])
    assert store.snapshot() == image


def test_a_background_load_rests_after_each_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    # As for encoding: on the loading thread, resting as long as each chunk took leaves the
    # event loop at least half of the GIL; restore(), run where the caller likes, never rests.
    store = KVStore()
    for i in range(2 * IMAGE_CHUNK_ITEMS + 1):
        put(store, b"k%06d" % i)
    image = store.snapshot()
    rests: list[float] = []
    chunks: list[int] = []
    decoders = dict(kv_module._item_decoders)

    class Recording:
        def __init__(self, name: str) -> None:
            self.name = name

        def decode(self, data: bytes) -> list[object]:
            items: list[object] = decoders[self.name].decode(data)
            chunks.append(len(items))
            return items

    monkeypatch.setattr(kv_module, "_rest", rests.append)
    KVStore().restore(image)
    assert not rests
    for name in decoders:
        monkeypatch.setitem(kv_module._item_decoders, name, Recording(name))
    copy = KVStore()
    copy.snapshot_restorer(image)()
    assert copy.snapshot() == image
    assert max(chunks) <= IMAGE_CHUNK_ITEMS
    assert len(rests) == len(chunks) > 2 * 2  # keys, history (an event per put)
    assert all(rest >= 0 for rest in rests)


def image_of(store: KVStore) -> KVImage:
    return msgspec.msgpack.decode(store.snapshot(), type=KVImage)


@pytest.mark.parametrize("items", [0, 1, 15, 16, 17, 4096, 4097, 65_535, 65_536])
def test_a_chunked_image_has_the_bytes_of_one_encoding(items: int) -> None:
    # Lists of each header size (fixarray, array 16, array 32) and chunk boundaries.
    image = image_of(busy_store())
    kvs = [KeyValue(b"k%08d" % i, b"v", 1, 1, 1) for i in range(items)]
    image = msgspec.structs.replace(image, kvs=kvs, revision=max(image.revision, 1))
    for chunk_items in (1, 16, 4096):
        assert encode_image(image, chunk_items) == msgspec.msgpack.encode(image)


def test_a_snapshot_is_encoded_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each encoding call holds the GIL; none may cover more than IMAGE_CHUNK_ITEMS items, so
    # a large snapshot encoded on another thread never stalls the event loop for long.
    store = KVStore()
    for i in range(3 * IMAGE_CHUNK_ITEMS):
        put(store, b"k%06d" % i)
    expected = msgspec.msgpack.encode(image_of(store))
    sizes: list[int] = []

    class Recording:
        def encode(self, value: object) -> bytes:
            sizes.append(len(value) if isinstance(value, list) else 1)
            return msgspec.msgpack.encode(value)

    monkeypatch.setattr(kv_module, "_image_encoder", Recording())
    assert store.snapshot() == expected
    assert max(sizes) == IMAGE_CHUNK_ITEMS
    assert sum(sizes) >= 3 * IMAGE_CHUNK_ITEMS


def test_a_chunk_of_large_values_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4,096 values of 64 KiB would be 256 MiB copied in one call, holding the GIL throughout.
    store = KVStore()
    for i in range(200):
        put(store, b"k%03d" % i, bytes([i]) * 65536)
    expected = msgspec.msgpack.encode(image_of(store))
    sizes: list[int] = []

    class Recording:
        def encode(self, value: object) -> bytes:
            encoded = msgspec.msgpack.encode(value)
            sizes.append(len(encoded))
            return encoded

    monkeypatch.setattr(kv_module, "_image_encoder", Recording())
    assert store.snapshot() == expected
    assert max(sizes) <= IMAGE_CHUNK_BYTES + 65536 + 1024  # at most one item past the budget
    assert sum(sizes) >= 200 * 65536


@pytest.mark.parametrize("chunk_bytes", [1, 100, 5000, 1 << 20])
def test_chunks_bounded_in_bytes_have_the_bytes_of_one_encoding(chunk_bytes: int) -> None:
    store = busy_store()
    for i in range(50):
        put(store, b"v%02d" % i, b"x" * (i * 37))
    image = image_of(store)
    assert encode_image(image, chunk_bytes=chunk_bytes) == msgspec.msgpack.encode(image)


def test_a_background_encoding_rests_after_each_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    # On the encoder thread, resting as long as each chunk took leaves the event loop at least
    # half of the GIL; snapshot(), which the caller runs where it likes, never rests.
    store = KVStore()
    for i in range(2 * IMAGE_CHUNK_ITEMS + 1):
        put(store, b"k%06d" % i)
    rests: list[float] = []
    chunks: list[int] = []

    class Recording:
        def encode(self, value: object) -> bytes:
            if isinstance(value, list):
                chunks.append(len(value))
            return msgspec.msgpack.encode(value)

    monkeypatch.setattr(kv_module, "_rest", rests.append)
    unpaced = store.snapshot()
    assert not rests
    monkeypatch.setattr(kv_module, "_image_encoder", Recording())
    assert store.snapshot_encoder()() == unpaced
    assert len(rests) == len(chunks) > 2 * 2  # keys, history (an event per put)
    assert all(rest >= 0 for rest in rests)


def captured(keys: int, value: bytes) -> tuple[KVStore, bytes, Callable[[], bytes]]:
    """A store of ``keys`` keys, its snapshot, and an encoder of a capture taken then."""
    store = KVStore()
    for i in range(keys):
        put(store, b"k%05d" % i, value)
    return store, store.snapshot(), store.snapshot_encoder()


def test_an_encoding_holds_the_state_of_its_capture() -> None:
    store, expected, encode = captured(100, b"old")
    put(store, b"k00001", b"new")  # overwritten, deleted, created, then deleted and written again
    delete(store, b"k00002")
    put(store, b"k00100", b"created")
    delete(store, b"k00003")
    put(store, b"k00003", b"again")
    assert encode() == expected
    assert store.snapshot() != expected
    copy = KVStore()
    copy.restore(store.snapshot())
    assert copy.snapshot() == store.snapshot()


def test_a_capture_copies_no_table_and_stops_remembering_once_encoded() -> None:
    # Copying the key table would stall the event loop linearly in the keys (36 ms per
    # million); the old values of keys written meanwhile are remembered instead.
    store = KVStore()
    for i in range(10):
        put(store, b"k%d" % i)
    encode = store.snapshot_encoder()
    put(store, b"k1", b"new")
    assert len(store._captures) == 1 and set(store._captures[0].old) == {b"k1"}
    encode()
    put(store, b"k2", b"new")
    assert not store._captures  # forgotten at the first write after the encoding
    store.snapshot_encoder()  # dropped without being run: forgotten as well
    gc.collect()
    put(store, b"k3", b"new")
    assert not store._captures


def test_an_encoding_on_a_thread_while_the_store_applies() -> None:
    store, expected, encode = captured(3000, b"first")
    encoded: list[bytes] = []
    thread = threading.Thread(target=lambda: encoded.append(encode()))
    thread.start()
    i = 0
    while thread.is_alive() or i < 3000:
        key = b"k%05d" % (i % 4000)
        if i % 3:
            put(store, key, b"second %d" % i)
        else:
            delete(store, key)
        i += 1
    thread.join()
    assert encoded == [expected]


def test_a_snapshot_holds_each_current_value_once() -> None:
    store = KVStore()
    for i in range(100):
        put(store, b"k%03d" % i, bytes([i]) * 1000)
    assert len(store.events_since(1)) == 100
    assert len(store.snapshot()) < 100 * 1000 * 1.2
    copy = KVStore()
    copy.restore(store.snapshot())
    assert copy.events_since(1) == store.events_since(1)


def test_snapshot_of_a_txn_that_puts_deletes_and_puts_a_key_again() -> None:
    store = KVStore()
    txn(store, success=[Put(b"a", b"first"), Delete(b"a"), Put(b"a", b"second")])
    copy = KVStore()
    copy.restore(store.snapshot())
    values = [e.kv.value for e in copy.events_since(1)]
    assert values == [b"first", b"", b"second"]
    assert copy.snapshot() == store.snapshot()


def test_the_store_is_a_state_machine() -> None:
    machine: StateMachine = KVStore()
    assert isinstance(machine.apply(b""), ErrorResult)


def test_history_dropped_by_its_byte_budget_is_freed_soon() -> None:
    # Large values: the byte budget drops events long before the event count would. The
    # dropped events must not stay referenced until 100,000 of them have piled up.
    limits = KVLimits(value_bytes_max=16_384, history_bytes_max=65_536)
    kv = KVStore(limits=limits)
    for i in range(2_000):
        kv.apply(encode_request(Request(Put(b"big", bytes([i % 256]) * 16_000))))
    live = len(kv._history) - kv._history_start  # white box: what the list still holds
    assert live <= 5
    assert len(kv._history) <= 2 * live + 64
