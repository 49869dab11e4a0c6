"""Membership on real `replog serve` processes: grow and shrink under writes, replace a dead
node, catch up by snapshot after many compactions. (Refusals: tests/cli/test_member_cli.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from replog.client import Client, ReplogClientError
from replog.testing.processes import FAST_TIMING, ProcessCluster, free_ports, request

WAIT_S = 40.0


@dataclass
class Joiners:
    """New nodes started with the command line that `POST /v1/members` printed."""

    root: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, tuple[int, int]] = field(default_factory=dict)

    def reserve(self, *names: str) -> None:
        ports = free_ports(2 * len(names))
        for i, name in enumerate(names):
            self.ports[name] = (ports[2 * i], ports[2 * i + 1])

    def client_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name][0]}"

    def peer_url(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name][1]}"

    def start(self, name: str, argv: list[str]) -> None:
        assert argv[:2] == ["replog", "serve"], argv
        command = [sys.executable, "-m", "replog", *argv[1:], "--data-dir", str(self.root / name)]
        with open(self.root / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def joiners(tmp_path: Path) -> Iterator[Joiners]:
    j = Joiners(tmp_path)
    yield j
    j.stop_all()


class Writer(threading.Thread):
    """Puts w/00000, w/00001, ... through replog.Client and remembers what was acknowledged."""

    def __init__(self, endpoints: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = Client(endpoints, retry_timeout_s=30.0)
        self.acked: dict[str, str] = {}
        self.failures = 0
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            key, value = f"w/{i:05d}", f"v{i}"
            try:
                self.client.put(key, value)
                self.acked[key] = value
            except ReplogClientError:
                self.failures += 1
            i += 1
            time.sleep(0.005)

    def finish(self) -> None:
        self.halt.set()
        self.join(timeout=60)
        self.client.close()


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def members(url: str) -> dict[str, dict[str, Any]]:
    """The members as the leader sees them, once no change is pending ({} until then)."""
    try:
        code, body = request("GET", f"{url}/v1/members", timeout_s=5)
    except OSError:
        return {}
    if code != 200 or body["change_pending"]:
        return {}
    return {m["id"]: m for m in body["members"]}


def voters(url: str) -> set[str]:
    return {name for name, m in members(url).items() if m["role"] == "voter"}


def keys_on(url: str) -> dict[str, str]:
    code, body = request("GET", f"{url}/v1/kv?prefix=w/&limit=10000", timeout_s=10)
    assert code == 200, body
    return {kv["key"]: kv["value"] for kv in body["kvs"]}


def test_grow_to_five_and_shrink_to_three_under_writes(tmp_path: Path, joiners: Joiners) -> None:
    joiners.reserve("n4", "n5")
    with ProcessCluster(tmp_path / "c", size=3) as cluster:
        everyone = [*cluster.endpoints, joiners.client_url("n4"), joiners.client_url("n5")]
        writer = Writer(everyone)
        writer.start()
        admin = Client(everyone, retry_timeout_s=30.0)
        try:
            for name in ("n4", "n5"):
                answer = admin.add_member(name, joiners.peer_url(name), joiners.client_url(name))
                assert answer["member"]["role"] == "learner"
                assert "--initial-cluster-state existing" in answer["command"]
                joiners.start(name, answer["argv"])
                wait_until(lambda name=name: name in voters(cluster.endpoints[2]), f"{name} voter")
            assert voters(cluster.endpoints[0]) == {"n1", "n2", "n3", "n4", "n5"}
            assert admin.transfer_leader("n1")["leader_id"] == "n1"  # n1 removes itself below
            for name in ("n1", "n2"):
                admin.remove_member(name)
                cluster.stop(name)
            survivors = [cluster.endpoints[2], joiners.client_url("n4"), joiners.client_url("n5")]
            assert voters(survivors[0]) == {"n3", "n4", "n5"}
            time.sleep(0.5)  # a few more writes on the shrunk cluster
        finally:
            writer.finish()
            admin.close()
        assert len(writer.acked) > 50, (len(writer.acked), writer.failures)
        for url in survivors:
            present = keys_on(url)
            lost = {k: v for k, v in writer.acked.items() if present.get(k) != v}
            assert not lost, f"{url} lost acknowledged writes: {sorted(lost)[:10]}"


def test_replace_a_dead_node(tmp_path: Path, joiners: Joiners) -> None:
    joiners.reserve("n4")
    with ProcessCluster(tmp_path / "c", size=3) as cluster:
        with Client(cluster.endpoints, retry_timeout_s=30.0) as client:
            client.put("w/before", "1")
            cluster.kill("n3")
            client.remove_member("n3")
            assert voters(cluster.endpoints[0]) == {"n1", "n2"}
            answer = client.add_member("n4", joiners.peer_url("n4"), joiners.client_url("n4"))
            joiners.start("n4", answer["argv"])
            wait_until(lambda: "n4" in voters(cluster.endpoints[1]), "n4 to become a voter")
            client.put("w/after", "2")
            assert set(members(joiners.client_url("n4"))) == {"n1", "n2", "n4"}
            wait_until(  # client URLs are published through the log, soon after a node starts
                lambda: all(
                    m["caught_up"] and m["client_url"]
                    for m in members(joiners.client_url("n4")).values()
                ),
                "every member caught up, with its client URL",
            )
        cluster.stop("n1")  # n2 and n4 still form a quorum of three
        wait_until(lambda: keys_on(joiners.client_url("n4")).get("w/after") == "2", "n4 serving")
        assert keys_on(joiners.client_url("n4")) == {"w/before": "1", "w/after": "2"}


@pytest.mark.slow  # the same on one event loop: test_membership_node.py, in a second or two
def test_a_node_offline_through_many_compactions_catches_up_by_snapshot(tmp_path: Path) -> None:
    snapshots = ("--snapshot-entries", "50", "--snapshot-keep-entries", "10")
    with ProcessCluster(tmp_path / "c", size=3, extra_args=(*FAST_TIMING, *snapshots)) as cluster:
        status = cluster.status("n3")
        assert status is not None and status["node"]["snapshot_index"] == 0
        cluster.stop("n3")
        written: dict[str, str] = {}
        lock = threading.Lock()

        def write(worker: int) -> None:
            with Client(cluster.endpoints[:2], retry_timeout_s=30.0) as client:
                for i in range(125):
                    key, value = f"w/{worker}-{i:03d}", f"{worker}.{i}"
                    client.put(key, value)
                    with lock:
                        written[key] = value

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(written) == 500
        leader_status = cluster.status(cluster.wait_for_leader())
        assert leader_status is not None and leader_status["node"]["snapshot_index"] >= 450
        cluster.start_node("n3")
        url = cluster.nodes["n3"].url
        wait_until(lambda: len(keys_on(url)) == 500, "n3 to catch up")
        assert keys_on(url) == written
        status = cluster.status("n3")
        assert status is not None and status["node"]["snapshot_index"] > 0
        assert set(members(url)) == {"n1", "n2", "n3"}
