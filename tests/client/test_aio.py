"""``replog.AsyncClient`` against the fake cluster: the same behaviour as the blocking client."""

from __future__ import annotations

import asyncio

import pytest

from replog import (
    AsyncClient,
    InvalidRequest,
    RevisionCompacted,
    TooLarge,
    Unavailable,
    UnknownOutcome,
)
from replog.client import Compare, GetResult, PutResult, get_op, put_op

from .fake_server import HISTORY_MAX_EVENTS, VALUE_MAX_BYTES, FakeCluster, Fault


def client_of(cluster: FakeCluster, **kwargs: object) -> AsyncClient:
    options: dict[str, object] = {"timeout_s": 2.0, "retry_timeout_s": 3.0} | kwargs
    return AsyncClient(cluster.urls, **options)  # type: ignore[arg-type]


async def test_round_trip(cluster: FakeCluster) -> None:
    async with client_of(cluster, session_id="a") as client:
        put = await client.put("dir/k", "1")
        assert (put.kv.key, put.kv.value, put.prev_kv) == (b"dir/k", b"1", None)
        assert await client.get("dir/k") == put.kv
        assert await client.get("missing") is None
        assert (await client.get_response("missing", consistency="stale")).kv is None
        ranged = await client.range("dir/")
        assert (ranged.kvs, ranged.count, ranged.more) == ((put.kv,), 1, False)
        deleted = await client.delete("dir/k")
        assert (deleted.deleted, deleted.prev_kv) == (1, put.kv)
    assert [key for _, _, key in cluster.requests("n1") if key] == ["a-1", "a-2"]


async def test_binary_keys_and_values(cluster: FakeCluster) -> None:
    async with client_of(cluster) as client:
        await client.put(b"\xfe", b"\xff\x00")
        kv = await client.get(b"\xfe")
        assert kv is not None and kv.value == b"\xff\x00"
        assert (await client.delete(b"\xfe")).deleted == 1


async def test_txn_and_cas(cluster: FakeCluster) -> None:
    async with client_of(cluster) as client:
        answer = await client.txn([Compare(b"a", "create_revision", "==", 0)], [put_op("a", "1")])
        assert answer.succeeded and isinstance(answer.responses[0], PutResult)
        failed = await client.txn([Compare("a", "version", ">", 5)], [], [get_op("a")])
        assert not failed.succeeded and isinstance(failed.responses[0], GetResult)
        assert not await client.cas("a", expected_mod_revision=0, new_value="2")
        assert await client.cas("a", expected_value=b"1", new_value="2")


async def test_retries_keep_the_key_and_apply_once(cluster: FakeCluster) -> None:
    cluster.inject("n1", Fault("unknown_outcome", apply=True))
    cluster.inject("n2", Fault("unavailable"))
    async with client_of(cluster, session_id="s") as client:
        answer = await client.put("a", "1")
    assert answer.kv.version == 1
    assert cluster.store.applied_writes == 1
    keys = [key for node in ("n1", "n2", "n3") for _, _, key in cluster.requests(node)]
    assert keys == ["s-1", "s-1", "s-1"]


async def test_a_timed_out_write_is_retried(cluster: FakeCluster) -> None:
    cluster.inject("n1", Fault("slow", delay_s=0.6))
    async with client_of(cluster, timeout_s=0.2) as client:
        assert (await client.put("a", "1")).kv.version == 1
        await asyncio.sleep(0.6)
    assert cluster.store.applied_writes == 1


async def test_unreachable_and_unknown_outcome(cluster: FakeCluster) -> None:
    for node in ("n1", "n2", "n3"):
        cluster.inject(node, Fault("unknown_outcome"), times=100)
    async with client_of(cluster, retry_timeout_s=0.3) as client:
        with pytest.raises(UnknownOutcome):
            await client.delete("a")
        for node in ("n1", "n2", "n3"):
            cluster.stop_node(node)
        with pytest.raises(Unavailable) as raised:
            await client.get("a")
        assert raised.value.code == "unreachable"


async def test_client_errors_are_not_retried(cluster: FakeCluster) -> None:
    async with client_of(cluster) as client:
        with pytest.raises(TooLarge) as raised:
            await client.put("a", b"x" * (VALUE_MAX_BYTES + 1))
    assert isinstance(raised.value, InvalidRequest)
    assert len(cluster.requests("n1")) == 1


async def test_status_all_asks_every_endpoint(cluster: FakeCluster) -> None:
    cluster.stop_node("n3")
    async with client_of(cluster) as client:
        answers = await client.status_all()
        assert (await client.status(cluster.urls[1])).node.id == "n2"
    assert [endpoint for endpoint, _ in answers] == cluster.urls
    assert isinstance(answers[2][1], Unavailable)


async def test_watch_resumes_and_reports_compaction(cluster: FakeCluster) -> None:
    async with client_of(cluster) as client:
        watch = client.watch(prefix="w/", start_revision=1)
        seen = []
        async with watch:
            for round_ in range(3):
                cluster.put(f"w/{round_}", "v")
                event = await anext(watch)
                seen.append((event.type, event.kv.key, event.kv.mod_revision))
                for node in ("n1", "n2", "n3"):
                    cluster.break_watches(node)
            cluster.stop_node("n1")
            await client.delete("w/0")
            event = await anext(watch)
            seen.append((event.type, event.kv.key, event.kv.mod_revision))
        puts = [("put", f"w/{index}".encode(), index + 1) for index in range(3)]
        assert seen == [*puts, ("delete", b"w/0", 4)]
        for index in range(HISTORY_MAX_EVENTS):
            cluster.put("w/x", str(index))
        with pytest.raises(RevisionCompacted) as raised:
            async for _ in client.watch(key="w/x", start_revision=2):
                pass
        assert raised.value.compact_revision > 2


async def test_watch_starts_now_and_close_ends_it(cluster: FakeCluster) -> None:
    cluster.put("k", "old")
    async with client_of(cluster) as client:
        watch = client.watch(key="k")

        async def collect() -> list[bytes]:
            return [event.kv.value async for event in watch]

        task = asyncio.create_task(collect())
        await asyncio.sleep(0.3)
        cluster.put("k", "new")
        await asyncio.sleep(0.3)
        await watch.close()
        assert await asyncio.wait_for(task, 5) == [b"new"]


async def test_a_silent_stream_is_replaced(cluster: FakeCluster) -> None:
    cluster.keepalive_s = 5.0
    client = client_of(cluster)
    async with client, client.watch(key="k", start_revision=1, idle_timeout_s=0.3) as watch:
        cluster.put("k", "1")
        assert (await anext(watch)).kv.value == b"1"
        asyncio.get_running_loop().call_later(0.6, cluster.put, "k", "2")
        assert (await anext(watch)).kv.value == b"2"
    watches = [p for n in ("n1", "n2", "n3") for _, p, _ in cluster.requests(n) if "watch" in p]
    assert len(watches) >= 2


async def test_close_closes_open_watches(cluster: FakeCluster) -> None:
    client = client_of(cluster)
    watch = client.watch(key="k", start_revision=1)
    cluster.put("k", "1")
    assert (await anext(watch)).kv.value == b"1"
    await client.close()
    with pytest.raises(StopAsyncIteration):
        await anext(watch)


async def test_error_lines_resume_or_raise(cluster: FakeCluster) -> None:
    async with client_of(cluster) as client, client.watch(key="k", start_revision=1) as watch:
        cluster.put("k", "1")
        assert (await anext(watch)).kv.value == b"1"
        cluster.break_watches("n1", {"code": "unavailable", "message": "stopping"})
        cluster.put("k", "2")
        assert (await anext(watch)).kv.value == b"2"
        compacted = {"code": "revision_compacted", "message": "gone", "compact_revision": 9}
        for node in ("n1", "n2", "n3"):
            cluster.break_watches(node, compacted)
        with pytest.raises(RevisionCompacted) as raised:
            await anext(watch)
        assert raised.value.compact_revision == 9
