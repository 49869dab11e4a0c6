"""``benchmarks/etcd_gobench.py``: the Go load generator for etcd, and its Python wrapper.

The runs need Go, etcd's Go sources (Debian's golang-etcd-server-dev) and the etcd binary;
without any of them they are skipped. The wrapper's error when Go is missing is always tested.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from replog.testing.processes import free_ports

# The first test also builds the tool: a cold `go build` of clientv3 takes 20-40 s here.
pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def _load() -> ModuleType:
    path = ROOT / "benchmarks" / "etcd_gobench.py"
    spec = importlib.util.spec_from_file_location("etcd_gobench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gobench = _load()


def _skip_reason() -> str | None:
    reason = gobench.unavailable_reason()
    if reason is not None:
        return reason
    if shutil.which("etcd") is None:
        return "etcd is not installed: apt-get install -y etcd-server"
    return None


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return gobench.build(tmp_path_factory.mktemp("gobench-build"))


@pytest.fixture(scope="module")
def etcd(binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A single-member etcd on free loopback ports; yields its client endpoint host:port."""
    root = tmp_path_factory.mktemp("etcd")
    client_port, peer_port = free_ports(2)
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    command = [
        "etcd", "--name", "m1", "--data-dir", str(root / "data"),
        "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"m1={peer_url}", "--log-level", "warn",
    ]  # fmt: skip
    with open(root / "etcd.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        endpoint = f"127.0.0.1:{client_port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            probe = subprocess.run(
                [str(binary), f"-endpoints={endpoint}", "-total=1", "-dial-timeout=1s"],
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log_text = (root / "etcd.log").read_text(errors="replace")
                pytest.fail(f"etcd did not start: {probe.stderr!r}\n{log_text}")
            time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _check_result(result: dict[str, object], op: str, clients: int) -> None:
    for field in ("ops", "errors", "elapsed_s", "throughput_ops_s", "latency_ms", "clients"):
        assert field in result, field
    assert result["op"] == op
    assert result["clients"] == clients
    assert result["conns"] == 1
    assert isinstance(result["ops"], int) and result["ops"] > 0
    assert result["errors"] == {}
    assert result["error_count"] == 0
    assert isinstance(result["throughput_ops_s"], float) and result["throughput_ops_s"] > 0
    latency = result["latency_ms"]
    assert isinstance(latency, dict)
    assert set(latency) == {"p50", "p90", "p99", "max", "mean"}
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert 0 < latency["mean"] <= latency["max"]


def test_put_run_against_a_local_etcd(etcd: str, tmp_path: Path) -> None:
    result = gobench.run(
        [f"http://{etcd}"], op="put", clients=8, duration_s=2, value_size=64, key_space=100
    )
    _check_result(result, "put", 8)
    assert 1.9 < result["elapsed_s"] < 10


def test_linearizable_get_run_with_preload(etcd: str) -> None:
    result = gobench.run(etcd, op="get", clients=4, duration_s=1, key_space=50)
    _check_result(result, "get", 4)
    assert result["serializable"] is False


def test_total_and_explicit_conns(binary: Path, etcd: str) -> None:
    done = subprocess.run(
        [str(binary), f"-endpoints={etcd}", "-op=get", "-serializable", "-clients=6",
         "-conns=3", "-total=300"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert result["ops"] == 300
    assert result["conns"] == 3
    assert result["serializable"] is True


def test_endpoints_that_do_not_answer_fail_clearly(binary: Path) -> None:
    (port,) = free_ports(1)
    done = subprocess.run(
        [str(binary), f"-endpoints=127.0.0.1:{port}", "-dial-timeout=500ms", "-total=1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert done.stdout == ""
    assert f"cannot connect to etcd at 127.0.0.1:{port}" in done.stderr


def test_bad_flags_are_usage_errors(binary: Path) -> None:
    for args in (["-op=delete"], ["-clients=0"], ["-duration=1s", "-total=5"], ["-endpoints="]):
        done = subprocess.run([str(binary), *args], capture_output=True, text=True, check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("etcd_gobench: ") or "Usage" in done.stderr


def test_build_without_go_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_which = shutil.which

    def which(name: str, *args: object, **kwargs: object) -> str | None:
        return None if name == "go" else real_which(name)

    monkeypatch.setattr(gobench.shutil, "which", which)
    with pytest.raises(gobench.GoBenchUnavailable, match="apt-get install -y golang-go"):
        gobench.build(tmp_path)
    assert not any(tmp_path.iterdir())


def test_build_without_go_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(gobench.GoBenchUnavailable, match="golang-etcd-server-dev"):
        gobench.run("127.0.0.1:2379", op="put", clients=1, duration_s=1, cache_dir=tmp_path)


def test_build_without_etcd_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(gobench.shutil, "which", lambda name, *a, **k: "/usr/bin/go")
    monkeypatch.setattr(gobench, "GOPATH", tmp_path / "gocode")
    with pytest.raises(gobench.GoBenchUnavailable, match="etcd's Go sources"):
        gobench.build(tmp_path)


def test_command_line_reports_missing_go(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    code = gobench.main(["--endpoints", "127.0.0.1:2379", "--cache-dir", str(tmp_path)])
    assert code == 1
    assert "apt-get install -y golang-go golang-etcd-server-dev" in capsys.readouterr().err


def test_command_options() -> None:
    args = gobench.command(Path("/x/tool"), "http://a:1, b:2/", op="get", clients=64, duration_s=10)
    assert args[0] == "/x/tool"
    assert "-endpoints=a:1,b:2" in args
    assert "-preload" in args
    assert "-serializable" not in args
    put = gobench.command(Path("t"), ["a:1"], op="put", clients=1, duration_s=1, conns=2)
    assert "-preload" not in put and "-conns=2" in put
    with pytest.raises(ValueError, match="op"):
        gobench.command(Path("t"), "a:1", op="scan", clients=1, duration_s=1)
