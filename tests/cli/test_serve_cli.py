"""``replog serve``: flags, environment and file through the real command, --check-config."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import sys
import tomllib
import types
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from replog.cli import main
from replog.server.config import ServerConfig, node_id_of

THREE = "n1=10.0.0.1:14400,n2=10.0.0.2:14400,n3=10.0.0.3:14400"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["serve", *args], env=env)


@pytest.fixture(autouse=True)
def _clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in list(__import__("os").environ) if n.startswith("REPLOG_")]:
        monkeypatch.delenv(name)


def check_json(*args: str, env: dict[str, str] | None = None) -> dict[str, dict[str, object]]:
    result = run("--check-config", "--output", "json", *args, env=env)
    assert result.exit_code == 0, result.output
    body: dict[str, dict[str, object]] = json.loads(result.stdout)
    return body


def test_check_config_prints_the_resolved_toml() -> None:
    result = run("--name", "n1", "--check-config")
    assert result.exit_code == 0, result.output
    table = tomllib.loads(result.stdout)
    assert table["name"] == "n1" and table["listen_client"] == "127.0.0.1:14300"
    assert table["initial_cluster"] == {"n1": "127.0.0.1:14400"}
    assert 'name = "n1"  # flag --name' in result.stdout


def test_check_config_json_names_sources() -> None:
    body = check_json("--name", "n2", "--tick-ms", "5", env={"REPLOG_HEARTBEAT_MS": "25"})
    config, sources = body["config"], body["sources"]
    assert config["node_id"] == node_id_of("n2")
    assert (config["tick_ms"], config["heartbeat_ms"], config["heartbeat_ticks"]) == (5, 25, 5)
    assert sources["tick_ms"] == "flag --tick-ms"
    assert sources["heartbeat_ms"] == "env var REPLOG_HEARTBEAT_MS"
    assert sources["election_timeout_ms"] == "default"


def test_flags_not_given_do_not_override_env_or_file(tmp_path: Path) -> None:
    path = tmp_path / "replog.toml"
    path.write_text('name = "n1"\nlease_reads = true\nsnapshot-entries = 77\n', encoding="utf-8")
    body = check_json("--config", str(path), env={"REPLOG_SNAPSHOT_ENTRIES": "88"})
    assert body["config"]["lease_reads"] is True
    assert body["config"]["snapshot_entries"] == 88
    body = check_json("--no-lease-reads", env={"REPLOG_CONFIG": str(path)})
    assert body["config"]["lease_reads"] is False
    assert body["sources"]["lease_reads"] == "flag --lease-reads"


def test_three_machine_example_from_help_is_valid() -> None:
    help_text = run("--help").stdout
    assert "--initial-cluster n1=10.0.0.1:14400,n2=10.0.0.2:14400" in help_text
    body = check_json(
        "--name", "n1", "--listen-client", "0.0.0.0:14300",
        "--advertise-client", "http://10.0.0.1:14300", "--listen-peer", "0.0.0.0:14400",
        "--advertise-peer", "10.0.0.1:14400", "--initial-cluster", THREE,
    )  # fmt: skip
    assert [m["name"] for m in body["config"]["initial_cluster"]] == ["n1", "n2", "n3"]  # type: ignore[attr-defined]


def test_every_problem_printed_and_exit_2() -> None:
    result = run(
        "--check-config", "--tick-ms", "x", "--listen-peer", "0.0.0.0:14400",
        "--initial-cluster", "n1=h:1,n1=h:2",
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "error: 4 problems in the configuration:"
    assert len(lines) == 5  # in the order of the settings
    assert lines[1] == "  - initial_cluster (flag --initial-cluster): duplicate node name 'n1'"
    assert lines[2].startswith("  - tick_ms (flag --tick-ms): expected an integer")
    assert lines[3].startswith("  - name: required")
    assert lines[4].startswith("  - advertise_peer: required when listen_peer")


def test_problems_stop_serve_before_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[ServerConfig] = []
    fake = types.ModuleType("replog.server.app")
    fake.run = called.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "replog.server.app", fake)
    result = run("--name", "N1")
    assert result.exit_code == 2 and called == []
    assert "bad node name 'N1'" in result.stderr


def test_serve_runs_the_runtime_and_exits_with_its_code(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServerConfig] = []

    def fake_run(config: ServerConfig) -> int:
        seen.append(config)
        return 3

    fake = types.ModuleType("replog.server.app")
    fake.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "replog.server.app", fake)
    result = run("--name", "n1", "--data-dir", "d", env={"REPLOG_CLUSTER_ID": "prod"})
    assert result.exit_code == 3, result.output
    assert seen[0].name == "n1" and seen[0].data_dir == "d" and seen[0].cluster_id == "prod"


def test_serve_without_a_runtime_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "replog.server.app", None)  # import raises ImportError
    result = run("--name", "n1")
    assert result.exit_code == 1
    assert "the server runtime is not available" in result.stderr


# ---- the examples in docs/deployment.md and deploy/replog.service stay valid ------------------

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, re.S)


def test_doc_toml_example(tmp_path: Path) -> None:
    (text,) = doc_blocks("toml")
    path = tmp_path / "replog.toml"
    path.write_text(text, encoding="utf-8")
    result = run("--config", str(path), "--data-dir", str(tmp_path / "n1"), "--check-config")
    assert result.exit_code == 0, result.output
    assert 'n3 = "10.0.0.3:14400"' in result.stdout


def test_doc_command_line_env_and_container_examples(tmp_path: Path) -> None:
    command = next(b for b in doc_blocks("sh") if b.startswith("replog serve --name n1"))
    args = shlex.split(command.replace("\\\n", " "))[2:]
    result = run(*args, "--data-dir", str(tmp_path / "a"), "--check-config")
    assert result.exit_code == 0, result.output
    env_block = next(b for b in doc_blocks("sh") if b.startswith("REPLOG_NAME=n1"))
    env = dict(line.split("=", 1) for line in env_block.splitlines())
    env["REPLOG_DATA_DIR"] = str(tmp_path / "b")
    assert run("--check-config", env=env).exit_code == 0
    docker = next(b for b in doc_blocks("sh") if b.startswith("docker run"))
    words = shlex.split(docker.replace("\\\n", " "))
    env = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "-e")
    env["REPLOG_DATA_DIR"] = str(tmp_path / "c")
    result = run("--check-config", "--output", "json", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["advertise_peer"] == "10.0.0.1:14400"


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy" / "replog.service", encoding="utf-8")
    service = unit["Service"]
    assert service["Type"] == "simple" and service["Restart"] == "on-failure"
    assert service["User"] == "replog" and service["StateDirectory"] == "replog"
    assert service["KillSignal"] == "SIGTERM" and service["TimeoutStopSec"]
    assert service["ExecStart"].endswith("serve --config /etc/replog/replog.toml")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
