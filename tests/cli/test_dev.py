"""``replog dev``: the port plan, command lines, port checks, supervision of child processes,
and (when the server runtime is importable) a real local cluster started, stopped, resumed."""

from __future__ import annotations

import importlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from replog.cli import main
from replog.server.supervisor import (
    Leader,
    NodePlan,
    Supervisor,
    fetch_leader,
    newest_leader,
    plan_cluster,
    ports_in_use,
    rotate_log,
    serve_args,
    serve_argv,
    tail_lines,
)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["dev", *args])


def free_base_port(nodes: int) -> int:
    """A base port whose 2 * nodes planned ports are all free now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        if not ports_in_use(plan_cluster(nodes, "x", base)):
            return base
    raise AssertionError("no free port range found")


# ---- the plan and the command lines -----------------------------------------------------------


def test_port_plan() -> None:
    cluster = plan_cluster(3, "d", 14300)
    assert [n.name for n in cluster] == ["n1", "n2", "n3"]
    assert [n.client_port for n in cluster] == [14300, 14301, 14302]
    assert [n.peer_port for n in cluster] == [14400, 14401, 14402]
    assert cluster[1].data_dir == os.path.join("d", "n2")
    assert cluster[1].log_path == os.path.join("d", "n2.log")
    assert cluster[2].client_url == "http://127.0.0.1:14302"


@pytest.mark.parametrize(
    ("nodes", "base", "message"),
    [(0, 14300, "between 1 and 9"), (10, 14300, "between 1 and 9"), (3, 65500, "65702")],
)
def test_bad_plans(nodes: int, base: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_cluster(nodes, "d", base)


def test_serve_command_lines_pass_check_config(tmp_path: Path) -> None:
    cluster = plan_cluster(3, str(tmp_path), 14300)
    argv = serve_argv(cluster[1], cluster)
    assert argv[:4] == [sys.executable, "-m", "replog", "serve"]
    result = CliRunner().invoke(
        main, [*serve_args(cluster[1], cluster), "--check-config", "--output", "json"], env={}
    )
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert config["name"] == "n2" and config["listen_client"] == "127.0.0.1:14301"
    assert config["advertise_peer"] == "127.0.0.1:14401"
    assert [m["peer"] for m in config["initial_cluster"]] == [n.peer_address for n in cluster]


def test_print_only(tmp_path: Path) -> None:
    result = run("--print-only", "--nodes", "5", "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert lines[4].startswith("replog serve --name n5 ")
    assert "--listen-client 127.0.0.1:14304 --listen-peer 127.0.0.1:14404" in lines[4]
    assert not (tmp_path / "d").exists()  # printing starts and creates nothing


def test_bad_arguments() -> None:
    assert run("--nodes", "10", "--print-only").exit_code == 2
    result = run("--base-port", "65500", "--print-only")
    assert result.exit_code == 2 and "outside 1-65535" in result.output


def test_port_in_use_is_named(tmp_path: Path) -> None:
    base = free_base_port(3)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base + 101))
        holder.listen()
        result = run("--data-dir", str(tmp_path / "d"), "--base-port", str(base))
    assert result.exit_code == 1
    assert f"port {base + 101} (peer port of n2) on 127.0.0.1 is not free" in result.stderr
    assert "--base-port" in result.stderr
    assert not (tmp_path / "d" / "n1.log").exists()


def test_directory_of_another_cluster_size(tmp_path: Path) -> None:
    (tmp_path / "dev-cluster.json").write_text('{"nodes": 3}')
    result = run("--nodes", "5", "--data-dir", str(tmp_path), "--base-port", "20000")
    assert result.exit_code == 2
    assert "holds a 3-node dev cluster; run with --nodes 3" in result.output


# ---- leaders ------------------------------------------------------------------------------------


class FakeStatus(BaseHTTPRequestHandler):
    body: bytes = b""
    status = 200

    agents: list[str] = []

    def do_GET(self) -> None:
        assert self.path == "/v1/status"
        FakeStatus.agents.append(self.headers.get("User-Agent", ""))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeStatus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def header(leader: str | None, term: int) -> bytes:
    return json.dumps({"header": {"node_id": "n1", "leader_id": leader, "term": term}}).encode()


def test_fetch_leader(status_server: ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{status_server.server_address[1]}"
    FakeStatus.status, FakeStatus.body = 200, header("n2", 3)
    assert fetch_leader(url, 2.0) == Leader("n2", 3)
    assert FakeStatus.agents[-1] == "replog-dev"
    FakeStatus.status, FakeStatus.body = 503, header(None, 4)
    assert fetch_leader(url, 2.0) is None
    FakeStatus.status, FakeStatus.body = 200, b"not json"
    assert fetch_leader(url, 2.0) is None
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        assert fetch_leader(f"http://127.0.0.1:{unused.getsockname()[1]}", 0.5) is None


def test_newest_leader_has_the_highest_term() -> None:
    assert newest_leader([None, Leader("n1", 2), Leader("n3", 5), None]) == Leader("n3", 5)
    assert newest_leader([None, None]) is None


# ---- supervision with stand-in children ---------------------------------------------------------

SLEEPER = "import time; print('up', flush=True); time.sleep(60)"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('up', flush=True); time.sleep(60)"
)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


class Recorder:
    """Collects the supervisor's lines; asks it to stop once a line contains ``stop_on``."""

    def __init__(self, stop_on: str) -> None:
        self.lines: list[str] = []
        self.stop_on = stop_on
        self.supervisor: Supervisor | None = None

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self.stop_on in line and self.supervisor is not None:
            self.supervisor.request_stop()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def supervise(
    cluster: Sequence[NodePlan], codes: dict[str, str], stop_on: str, **kw: float
) -> tuple[int, Recorder, Supervisor]:
    out = Recorder(stop_on)
    supervisor = Supervisor(
        cluster, argv_for=lambda node, _: python(codes[node.name]), out=out, poll_interval_s=0.05,
        status_timeout_s=0.2, **kw,
    )  # fmt: skip
    out.supervisor = supervisor
    supervisor.start()
    try:
        code = supervisor.run()
    finally:
        supervisor.stop_all()
    return code, out, supervisor


def test_a_dying_child_is_reported_and_the_others_keep_running(tmp_path: Path) -> None:
    cluster = plan_cluster(3, str(tmp_path), free_base_port(3))
    codes = {"n1": SLEEPER, "n2": "print('disk on fire'); raise SystemExit(3)", "n3": SLEEPER}
    code, out, supervisor = supervise(cluster, codes, stop_on="hint:")
    assert code == 0
    assert (
        f"n2 exited with code 3 unexpectedly; last lines of its log {cluster[1].log_path}:"
        in out.text
    )
    assert "  | disk on fire" in out.lines
    assert "hint: the other nodes keep running (2 of 3 up, a majority" in out.text
    assert "stopping n1, n3 ..." in out.lines and out.lines[-1] == "stopped"
    assert supervisor.exit_codes == {"n1": -signal.SIGTERM, "n2": 3, "n3": -signal.SIGTERM}


def test_all_children_dead_exits_1(tmp_path: Path) -> None:
    cluster = plan_cluster(2, str(tmp_path), free_base_port(2))
    codes = {"n1": "raise SystemExit(1)", "n2": "import os, signal; os.kill(os.getpid(), 9)"}
    code, out, _ = supervise(cluster, codes, stop_on="never")
    assert code == 1
    assert "n2 was killed by SIGKILL unexpectedly" in out.text
    assert out.lines[-1] == "all nodes have exited; see their logs above"


def test_a_child_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    cluster = plan_cluster(1, str(tmp_path), free_base_port(1))
    out = Recorder("never")
    supervisor = Supervisor(
        cluster, argv_for=lambda n, _: python(STUBBORN), out=out, stop_timeout_s=0.3
    )
    supervisor.start()
    deadline = time.monotonic() + 10
    while "up" not in tail_lines(cluster[0].log_path, 5) and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    supervisor.stop_all()
    assert time.monotonic() - started < 5
    assert "n1 did not stop in time: SIGKILL" in out.lines
    assert supervisor.exit_codes == {"n1": -signal.SIGKILL}


def test_leader_changes_are_printed(tmp_path: Path, status_server: ThreadingHTTPServer) -> None:
    port = status_server.server_address[1]
    cluster = (NodePlan("n1", port, 1, str(tmp_path / "n1"), str(tmp_path / "n1.log")),)
    FakeStatus.status, FakeStatus.body = 200, header("n1", 7)
    code, out, _ = supervise(cluster, {"n1": SLEEPER}, stop_on="leader:")
    assert code == 0
    assert out.lines[:2] == ["waiting for a leader ...", "leader: n1 (term 7)"]
    log = Path(cluster[0].log_path).read_text()
    assert log.startswith("=== ") and "replog dev starts n1" in log


def test_logs_are_rotated_at_start(tmp_path: Path) -> None:
    log = tmp_path / "n1.log"
    rotate_log(str(log), 10)  # no log yet: nothing to do
    log.write_text("old run\n" * 2)
    rotate_log(str(log), 100)
    assert log.exists()
    rotate_log(str(log), 10)
    assert not log.exists() and (tmp_path / "n1.log.1").read_text().startswith("old run")


def test_tail_lines(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("".join(f"line {i}\n" for i in range(100_000)) + '"GET" "replog-dev"\n')
    assert tail_lines(str(path), 2) == ["line 99998", "line 99999"]  # own polls left out
    assert "cannot read" in tail_lines(str(tmp_path / "missing"), 2)[0]


# ---- end to end, with the real server runtime -----------------------------------------------


def runtime_available() -> bool:
    try:
        return callable(importlib.import_module("replog.server.app").run)
    except (ImportError, AttributeError):
        return False


class DevProcess:
    def __init__(self, data_dir: Path, base: int) -> None:
        argv = [sys.executable, "-m", "replog", "dev", "--data-dir", str(data_dir)]
        self.process = subprocess.Popen(
            [*argv, "--base-port", str(base)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("REPLOG_")},
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [line for line in self.lines if line.startswith(prefix)]
            if found:
                return found[0]
            assert self.process.poll() is None, "\n".join(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"no {prefix!r} line:\n" + "\n".join(self.lines))

    def interrupt(self) -> int:
        """Ctrl-C; the supervisor stops its nodes and exits."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.reader.join(timeout=5)
            assert self.process.stdout is not None
            self.process.stdout.close()


def get_json(url: str, within_s: float) -> Any:
    """GET with retries while the node is still starting (connection refused, 503)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.skipif(not runtime_available(), reason="replog.server.app is not importable yet")
def test_dev_cluster_starts_stops_and_resumes(tmp_path: Path) -> None:
    base = free_base_port(3)
    first = DevProcess(tmp_path / "d", base)
    try:
        assert first.wait_for("n1: ").startswith(f"n1: http://127.0.0.1:{base}")
        first.wait_for("leader: n")
        request = urllib.request.Request(
            f"http://127.0.0.1:{base}/v1/kv/dev-test", data=b"kept", method="PUT"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        assert first.interrupt() == 0, "\n".join(first.lines)
    assert first.lines[-1] == "stopped"
    assert ports_in_use(plan_cluster(3, "x", base)) == []
    second = DevProcess(tmp_path / "d", base)
    try:
        second.wait_for("leader: n")
        body = get_json(f"http://127.0.0.1:{base + 2}/v1/kv/dev-test", within_s=30)
        assert body["kv"]["value"] == "kept"
    finally:
        assert second.interrupt() == 0, "\n".join(second.lines)
