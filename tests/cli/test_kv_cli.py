"""The client commands (put, get, del, list, txn, watch, status) against the fake cluster."""

from __future__ import annotations

import _thread
import contextlib
import importlib.util
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner, Result

from replog.cli import main


def _load_fake_server() -> ModuleType:
    name = "replog_tests_fake_server"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).parents[1] / "client" / "fake_server.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fake = _load_fake_server()


@pytest.fixture
def cluster() -> Iterator[Any]:
    with fake.FakeCluster() as cluster:
        yield cluster


def run(cluster: Any, *args: str, stdin: bytes | str | None = None, **kwargs: Any) -> Result:
    endpoints = ",".join(cluster.urls)
    return CliRunner().invoke(main, ["--endpoints", endpoints, *args], input=stdin, **kwargs)


def test_put_get_del_for_people(cluster: Any) -> None:
    put = run(cluster, "put", "config/a", "hello")
    assert put.exit_code == 0, put.output
    assert put.stdout == "put config/a (revision 1, version 1)\n"
    got = run(cluster, "get", "config/a")
    assert got.exit_code == 0
    assert "config/a" in got.stdout and "hello" in got.stdout
    deleted = run(cluster, "del", "config/a")
    assert deleted.stdout == "deleted config/a (revision 2)\n"
    again = run(cluster, "del", "config/a")
    assert (again.exit_code, again.stdout) == (0, "config/a did not exist; nothing deleted\n")


def test_json_output_is_the_api_json(cluster: Any) -> None:
    put = json.loads(run(cluster, "--output", "json", "put", "k", "v").stdout)
    assert put["kv"] == {
        "key": "k",
        "value": "v",
        "create_revision": 1,
        "mod_revision": 1,
        "version": 1,
    }
    assert put["prev_kv"] is None and put["header"]["node_id"] == "n1"
    got = json.loads(run(cluster, "get", "k", "-o", "json").stdout)
    assert got["kv"] == put["kv"]
    deleted = json.loads(run(cluster, "del", "k", "--output", "json").stdout)
    assert (deleted["deleted"], deleted["prev_kv"]) == (1, put["kv"])


def test_get_of_a_missing_key_exits_1(cluster: Any) -> None:
    result = run(cluster, "get", "nothing")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: key_not_found: key not found: nothing\n"


def test_get_passes_consistency_and_min_revision(cluster: Any) -> None:
    run(cluster, "put", "k", "v")
    result = run(cluster, "get", "k", "--consistency", "stale", "--min-revision", "1")
    assert result.exit_code == 0
    assert "consistency=stale&min_revision=1" in cluster.requests("n1")[-1][1]
    bad = run(cluster, "get", "k", "--consistency", "eventual")
    assert bad.exit_code == 2


def test_put_reads_binary_stdin(cluster: Any) -> None:
    result = run(cluster, "put", "blob", "-", "-o", "json", stdin=b"\x00\xff\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kv"]["value_base64"] == "AP8K"
    assert cluster.store.kvs[b"blob"].value == b"\x00\xff\n"
    shown = run(cluster, "get", "blob")
    assert "base64:AP8K" in shown.stdout


def test_list_with_limit(cluster: Any) -> None:
    for name in "abc":
        cluster.put(f"p/{name}", name.upper())
    cluster.put("q", "x")
    table = run(cluster, "list", "p/", "--limit", "2")
    assert table.exit_code == 0
    assert "p/a" in table.stdout and "p/b" in table.stdout and "p/c" not in table.stdout
    assert "2 of 3 keys (more" in table.stdout
    document = json.loads(run(cluster, "-o", "json", "list").stdout)
    assert [kv["key"] for kv in document["kvs"]] == ["p/a", "p/b", "p/c", "q"]
    assert (document["count"], document["more"]) == (4, False)


def test_txn_from_a_file_and_from_stdin(cluster: Any, tmp_path: Path) -> None:
    body = {
        "compare": [{"key": "a", "target": "mod_revision", "op": "==", "value": 0}],
        "success": [{"put": {"key": "a", "value": "1"}}, {"get": {"key": "a"}}],
        "failure": [{"get": {"key": "a"}}],
    }
    path = tmp_path / "cas.json"
    path.write_text(json.dumps(body))
    first = run(cluster, "txn", str(path))
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("succeeded: true (revision 1)\n")
    second = run(cluster, "txn", "-", "-o", "json", stdin=json.dumps(body))
    document = json.loads(second.stdout)
    assert document["succeeded"] is False
    assert document["responses"][0]["get"]["kv"]["value"] == "1"


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        '{"compare": [], "sucess": []}',
        '{"success": [{"put": {"key": "a"}}]}',
        '{"compare": [{"key": "a", "target": "size", "op": "==", "value": 1}]}',
        '{"success": [{"put": {"key": "a", "value": "1"}, "get": {"key": "a"}}]}',
    ],
)
def test_a_bad_txn_is_a_usage_error(cluster: Any, body: str) -> None:
    result = run(cluster, "txn", "-", stdin=body)
    assert result.exit_code == 2
    assert cluster.requests("n1") == []


def test_status_shows_every_endpoint_with_lag(cluster: Any) -> None:
    cluster.lag["n2"] = 7
    cluster.stop_node("n3")
    result = CliRunner().invoke(
        main, ["status", "--endpoints", ",".join(cluster.urls)], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    row_n2 = next(line for line in lines if cluster.urls[1] in line and "n2" in line)
    assert "follower" in row_n2 and " 7 " in row_n2
    row_n3 = next(line for line in lines if cluster.urls[2] in line)
    assert "unreachable" in row_n3
    assert any(line.startswith(f"{cluster.urls[2]}: unreachable: ") for line in lines)
    document = json.loads(run(cluster, "status", "-o", "json").stdout)
    assert [row["endpoint"] for row in document] == cluster.urls
    assert document[0]["status"]["node"]["role"] == "leader"
    assert (document[0]["lag"], document[1]["lag"]) == (0, 7)
    assert document[2]["error"]["code"] == "unreachable"


def test_no_endpoint_reachable_exits_3(cluster: Any) -> None:
    for node in ("n1", "n2", "n3"):
        cluster.stop_node(node)
    result = run(cluster, "--retry-timeout", "0.2", "put", "a", "1")
    assert result.exit_code == 3
    assert result.stderr.startswith("error: unreachable: no endpoint reachable")
    assert result.stderr.rstrip().endswith(")")
    assert run(cluster, "status").exit_code == 3


def test_an_unavailable_cluster_exits_1(cluster: Any) -> None:
    for node in ("n1", "n2", "n3"):
        cluster.inject(node, fake.Fault("unavailable"), times=100)
    result = run(cluster, "put", "a", "1", "--retry-timeout", "0.2")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unavailable: ")


def test_endpoints_come_from_the_command_the_group_or_the_environment(cluster: Any) -> None:
    urls = ",".join(cluster.urls)
    from_env = CliRunner().invoke(main, ["put", "a", "1"], env={"REPLOG_ENDPOINTS": urls})
    assert from_env.exit_code == 0, from_env.output
    dead = "http://127.0.0.1:9"
    group_wins = CliRunner().invoke(
        main, ["--endpoints", urls, "get", "a"], env={"REPLOG_ENDPOINTS": dead}
    )
    assert group_wins.exit_code == 0
    command_wins = CliRunner().invoke(
        main, ["--endpoints", dead, "get", "a", "--endpoints", urls, "--retry-timeout", "0.1"]
    )
    assert command_wins.exit_code == 0
    bad = CliRunner().invoke(main, ["get", "a", "--endpoints", "localhost:1"])
    assert bad.exit_code == 2
    assert "--endpoints" in bad.stderr


def run_until_ctrl_c(cluster: Any, *args: str, meanwhile: Callable[[], None]) -> Result:
    """Run a command, call ``meanwhile`` from another thread after 0.3 s, then press Ctrl-C
    until the command returns. Python's own SIGINT handler is installed for the run: a
    process started in the background by a shell inherits SIGINT ignored, and then a
    simulated Ctrl-C does nothing."""
    done = threading.Event()

    def press() -> None:
        done.wait(0.3)
        meanwhile()
        while not done.wait(0.3):
            _thread.interrupt_main()

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press)
    presser.start()
    try:
        return run(cluster, *args)
    finally:
        done.set()
        with contextlib.suppress(KeyboardInterrupt):  # a press sent as the command returned
            presser.join()
            time.sleep(0.05)
        signal.signal(signal.SIGINT, previous)


def test_watch_prints_events_until_ctrl_c(cluster: Any) -> None:
    cluster.put("w/a", "1")

    def changes() -> None:
        cluster.put("w/b", "2")
        cluster.put("other", "3")
        cluster.in_loop(lambda: cluster.store.txn({"success": [{"delete": {"key": "w/a"}}]}))

    args = ("watch", "--prefix", "w/", "--start-revision", "1")
    result = run_until_ctrl_c(cluster, *args, meanwhile=changes)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "PUT w/a = 1 (revision 1)",
        "PUT w/b = 2 (revision 2)",
        "DELETE w/a (revision 4)",
    ]


def test_watch_json_prints_one_event_per_line(cluster: Any) -> None:
    cluster.put("k", "1")
    cluster.put("k", "2")
    args = ("-o", "json", "watch", "k", "--start-revision", "2")
    result = run_until_ctrl_c(cluster, *args, meanwhile=lambda: None)
    assert result.exit_code == 0
    (line,) = result.stdout.splitlines()
    event = json.loads(line)
    assert event["type"] == "put" and event["kv"]["value"] == "2"


def test_watch_needs_a_key_or_a_prefix(cluster: Any) -> None:
    assert run(cluster, "watch").exit_code == 2
    assert run(cluster, "watch", "k", "--prefix", "p").exit_code == 2


def test_watch_of_compacted_history_exits_1(cluster: Any) -> None:
    for index in range(fake.HISTORY_MAX_EVENTS + 1):
        cluster.put("k", str(index))
    result = run(cluster, "watch", "k", "--start-revision", "1")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: revision_compacted: ")


@pytest.mark.parametrize("command", ["put", "get", "del", "list", "txn", "watch", "status"])
def test_every_command_explains_itself(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.stdout
    assert "--endpoints" in result.stdout and "--output" in result.stdout
