"""The Python clients against a real 3-node cluster: failover, exactly-once retries, watch."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import replog
from replog.testing.processes import ProcessCluster


def test_client_fails_over_when_the_leader_dies(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, size=3) as cluster:
        leader = cluster.wait_for_leader()
        acknowledged: list[str] = []
        with replog.Client(cluster.endpoints, timeout_s=2, retry_timeout_s=20) as client:
            for i in range(20):
                client.put(f"fo/{i}", str(i))
                acknowledged.append(f"fo/{i}")
                if i == 9:
                    cluster.kill(leader)  # the client must find the new leader by itself
            response = client.range("fo/", limit=100)
        assert sorted(kv.key.decode() for kv in response.kvs) == sorted(acknowledged)
        assert all(kv.version == 1 for kv in response.kvs)  # each write applied exactly once


def test_cas_helper_and_transactions(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, size=3) as cluster, replog.Client(cluster.endpoints) as client:
        assert client.cas("lock", expected_mod_revision=0, new_value="me") is True
        assert client.cas("lock", expected_mod_revision=0, new_value="you") is False
        assert client.cas("lock", expected_value="me", new_value="you") is True
        kv = client.get("lock")
        assert kv is not None and kv.value == b"you" and kv.version == 2


def test_async_watch_sees_every_write_in_order(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, size=3) as cluster:

        async def scenario() -> list[int]:
            async with replog.AsyncClient(cluster.endpoints) as client:
                first = await client.put("w/0", "0")
                start = first.kv.mod_revision
                writer_done = threading.Event()

                async def writer() -> None:
                    for i in range(1, 30):
                        await client.put(f"w/{i % 3}", str(i))
                    writer_done.set()

                task = asyncio.create_task(writer())
                seen: list[int] = []
                watch = client.watch(prefix="w/", start_revision=start)
                async for event in watch:
                    seen.append(event.kv.mod_revision)
                    if len(seen) == 30:
                        break
                await watch.close()
                await task
                return seen

        revisions = asyncio.run(scenario())
        assert revisions == sorted(revisions) and len(set(revisions)) == 30
