"""``replog member`` and ``replog leader transfer`` against real clusters, and a fourth node
added to ``replog dev`` with the command line that ``replog member add`` prints."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from replog.cli import main
from replog.client import AsyncClient, MembershipRefused
from replog.server.supervisor import plan_cluster, ports_in_use
from replog.testing.processes import ProcessCluster, free_ports, request

WAIT_S = 40.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path_factory.mktemp("members"), size=3) as c:
        # Followers forward to the leader once they know its client URL: each node publishes
        # its own through the log shortly after it starts.
        wait_until(lambda: all_published(c.endpoints), "every node's client URL")
        yield c


def all_published(endpoints: list[str]) -> bool:
    for url in endpoints:
        try:
            code, body = request("GET", f"{url}/v1/members", timeout_s=5)
        except OSError:
            return False
        if code != 200 or not all(m["client_url"] for m in body["members"]):
            return False
    return True


def cli(endpoints: list[str], *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--endpoints", ",".join(endpoints)])


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def listed(endpoints: list[str]) -> dict[str, Any]:
    result = cli(endpoints, "member", "list", "--output", "json")
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def test_member_list(cluster: ProcessCluster) -> None:
    body = listed(cluster.endpoints[1:2])  # a follower or the leader: the leader answers
    members = {m["id"]: m for m in body["members"]}
    assert set(members) == {"n1", "n2", "n3"}
    for name, member in members.items():
        node = cluster.nodes[name]
        assert member["role"] == "voter" and member["caught_up"] is True
        assert member["peer_url"] == f"127.0.0.1:{node.peer_port}"
        assert member["client_url"] == node.url
        assert set(member) >= {"id", "peer_url", "client_url", "role", "caught_up", "lag"}
    assert [m["is_leader"] for m in members.values()].count(True) == 1
    table = cli(cluster.endpoints, "member", "list")
    assert table.exit_code == 0 and "voter" in table.stdout and "n3" in table.stdout


def test_leader_transfer_to_a_chosen_voter_and_to_the_most_up_to_date(
    cluster: ProcessCluster,
) -> None:
    leader = cluster.wait_for_leader()
    target = next(n for n in ("n1", "n2", "n3") if n != leader)
    result = cli(cluster.endpoints, "leader", "transfer", "--to", target)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"leader: {target}"
    wait_until(lambda: cluster.leader() == target, f"{target} to lead everywhere")
    result = cli(cluster.endpoints, "leader", "transfer", "--output", "json")
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.stdout)["leader_id"]
    assert chosen in {"n1", "n2", "n3"} - {target}
    result = cli(cluster.endpoints, "leader", "transfer", "--to", "nobody")
    assert result.exit_code == 1 and "member_not_found" in result.stderr


def test_member_add_promote_remove_and_refusals(cluster: ProcessCluster) -> None:
    endpoints = cluster.endpoints
    peer, client = free_ports(2)
    result = cli(endpoints, "member", "add", "n2", "--peer-url", f"127.0.0.1:{peer}",
                 "--client-url", f"http://127.0.0.1:{client}")  # fmt: skip
    assert result.exit_code == 1 and "member_exists" in result.stderr
    result = cli(endpoints, "member", "add", "n9", "--peer-url", f"127.0.0.1:{peer}",
                 "--client-url", f"http://127.0.0.1:{client}", "--learner")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("added n9 as a learner")
    argv = shlex.split(lines[1])
    assert argv[:4] == ["replog", "serve", "--name", "n9"]
    assert "--initial-cluster-state" in argv and "existing" in argv
    members = {m["id"]: m for m in listed(endpoints)["members"]}
    assert members["n9"]["role"] == "learner" and members["n9"]["caught_up"] is False
    result = cli(endpoints, "member", "promote", "n9")  # never started: far behind
    assert result.exit_code == 1 and "member_not_caught_up" in result.stderr
    result = cli(endpoints, "member", "remove", "n9")
    assert result.exit_code == 0 and result.stdout.strip() == "removed n9"
    result = cli(endpoints, "member", "remove", "n9")
    assert result.exit_code == 1 and "member_not_found" in result.stderr
    assert {m["id"] for m in listed(endpoints)["members"]} == {"n1", "n2", "n3"}


def test_http_refusals_and_bad_input(cluster: ProcessCluster) -> None:
    url = cluster.endpoints[1]

    def post(path: str, body: object) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        return request("POST", url + path, data, {"Content-Type": "application/json"})

    code, body = post("/v1/members", {"name": "n9", "peer_url": "127.0.0.1:1"})
    assert (code, body["error"]["code"]) == (400, "invalid_request")
    code, body = post("/v1/members", {"name": "n9", "peer_url": "x:1", "voter": True})
    assert (code, body["error"]["code"]) == (400, "invalid_request")
    assert "voter" in body["error"]["message"]
    code, body = post("/v1/members", ["n9"])
    assert (code, body["error"]["code"]) == (400, "invalid_request")
    code, body = request("DELETE", f"{url}/v1/members/n9")
    assert (code, body["error"]["code"]) == (404, "member_not_found")
    code, body = request("DELETE", f"{url}/v1/members/n1?force=maybe")
    assert (code, body["error"]["code"]) == (400, "invalid_request")
    code, body = post("/v1/members/n9/promote", {})
    assert (code, body["error"]["code"]) == (404, "member_not_found")
    code, body = post("/v1/leader/transfer", {"to": 7})
    assert (code, body["error"]["code"]) == (400, "invalid_request")


async def test_the_async_client_speaks_membership(cluster: ProcessCluster) -> None:
    async with AsyncClient(cluster.endpoints) as client:
        body = await client.members()
        assert {m["id"] for m in body["members"]} == {"n1", "n2", "n3"}
        with pytest.raises(MembershipRefused) as refused:
            await client.promote_member("n9")
        assert refused.value.code == "member_not_found"


def test_removal_that_would_lose_quorum_is_refused(cluster: ProcessCluster) -> None:
    """Last in this module: it kills a node."""
    leader = cluster.wait_for_leader()
    dead = next(n for n in ("n1", "n2", "n3") if n != leader)
    alive = next(n for n in ("n1", "n2", "n3") if n not in (leader, dead))
    cluster.kill(dead)
    time.sleep(1.2)  # longer than the window in which a voter counts as reachable
    endpoints = [cluster.nodes[leader].url, cluster.nodes[alive].url]
    result = cli(endpoints, "member", "remove", alive)
    assert result.exit_code == 1 and "would_lose_quorum" in result.stderr
    assert "force" in result.stderr
    assert {m["id"] for m in listed(endpoints)["members"]} == {"n1", "n2", "n3"}


# ---- replog dev, then a fourth node by hand -----------------------------------------------------


def free_base_port(nodes: int) -> int:
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        if not ports_in_use(plan_cluster(nodes, "x", base)):
            return base
    raise AssertionError("no free port range found")


class Background:
    """A process whose output is collected by a thread."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLOG_")}
        self.process = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.reader.join(timeout=5)
            assert self.process.stdout is not None
            self.process.stdout.close()


def test_dev_cluster_grows_by_a_node_started_with_the_printed_command(tmp_path: Path) -> None:
    base = free_base_port(3)
    endpoints = [f"http://127.0.0.1:{base + i}" for i in range(3)]
    dev = Background([sys.executable, "-m", "replog", "dev", "--base-port", str(base)], tmp_path)
    n4: Background | None = None
    try:
        wait_until(lambda: any(line.startswith("leader: n") for line in dev.lines), "a leader")
        peer, client = free_ports(2)
        result = cli(endpoints, "member", "add", "n4", "--peer-url", f"127.0.0.1:{peer}",
                     "--client-url", f"http://127.0.0.1:{client}")  # fmt: skip
        assert result.exit_code == 0, result.output
        command = next(line for line in result.stdout.splitlines() if line.startswith("replog "))
        argv = shlex.split(command)
        n4 = Background([sys.executable, "-m", "replog", *argv[1:]], tmp_path)  # as printed
        wait_until(
            lambda: {m["id"]: m["role"] for m in listed(endpoints)["members"]}.get("n4") == "voter",
            "n4 to become a voter",
        )
        assert (tmp_path / "replog-data" / "n4").is_dir()  # the default data directory
        four = [*endpoints, f"http://127.0.0.1:{client}"]
        assert cli(four, "put", "grown", "yes").exit_code == 0
        read = cli([f"http://127.0.0.1:{client}"], "get", "grown", "--output", "json")
        assert read.exit_code == 0 and json.loads(read.stdout)["kv"]["value"] == "yes"
    finally:
        if n4 is not None:
            assert n4.stop() == 0, "\n".join(n4.lines)
        assert dev.stop(signal.SIGINT) == 0, "\n".join(dev.lines)
