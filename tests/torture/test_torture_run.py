"""Real-process fault runs: a bounded run in the default suite, longer ones marked slow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from replog.cli import main
from replog.client import ServerError, Unavailable, UnknownOutcome
from replog.testing.torture import TortureConfig, TortureReport, find_faketime, run_torture
from replog.testing.torture_workloads import BankWorkload, FailoverClock


def assert_clean(report: TortureReport) -> None:
    problems = {name: found for name, found in report.problems.items() if found}
    assert report.clean, f"violations (see {report.out}): {json.dumps(problems, indent=1)}"
    assert set(report.verdicts.values()) <= {"linearizable", "ok"}, report.verdicts


def test_bounded_run_with_kills_pauses_and_partitions(tmp_path: Path) -> None:
    """Both protocols (the default): HTTP and RPC clients, pinned and roaming, on every
    workload, through pauses and kills of the leader (seed 11 kills the leader at 19.7 s)."""
    config = TortureConfig(
        nodes=3,
        duration_s=35.0,
        seed=11,
        faults=("kill", "pause", "partition"),
        clients=4,
        out=tmp_path / "run",
    )
    assert config.protocol == "both"
    report = run_torture(config)
    assert_clean(report)
    assert sum(report.faults.values()) >= 5, report.faults
    assert report.faults.get("kill-leader", 0) >= 1, report.faults
    for workload in ("register", "bank", "append"):
        assert report.ops[workload]["ok"] > 50, report.ops
        for protocol in ("http", "rpc"):
            assert report.ops_by_protocol[workload][protocol]["ok"] > 20, report.ops_by_protocol
    kinds = {(c["protocol"], c["pinned"] == "roaming") for c in report.clients}
    assert kinds == {("http", False), ("http", True), ("rpc", False), ("rpc", True)}, kinds
    first = json.loads((tmp_path / "run" / "register.jsonl").read_text().splitlines()[0])
    assert first["protocol"] in ("http", "rpc")
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["clean"] is True and saved["operations"] == report.operations
    for name in ("register.jsonl", "bank.jsonl", "append.jsonl", "faults.jsonl", "n1.log"):
        assert (tmp_path / "run" / name).stat().st_size > 0


def test_cli_usage_errors_exit_2() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["torture", "--faults", "kill,meteor"])
    assert result.exit_code == 2 and "unknown fault kind meteor" in result.output
    result = runner.invoke(main, ["torture", "--workload", "ledger"])
    assert result.exit_code == 2 and "unknown workload ledger" in result.output
    result = runner.invoke(main, ["torture", "--nodes", "4"])
    assert result.exit_code == 2
    result = runner.invoke(main, ["torture", "--protocol", "grpc"])
    assert result.exit_code == 2


def test_config_refuses_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nodes"):
        TortureConfig(nodes=4)
    with pytest.raises(ValueError, match="workloads"):
        TortureConfig(workloads=("ledger",))
    with pytest.raises(ValueError, match="faults"):
        TortureConfig(faults=("meteor",))
    with pytest.raises(ValueError, match="unreachable_writes"):
        TortureConfig(unreachable_writes="maybe")


def test_write_outcomes_follow_the_client_contract(tmp_path: Path) -> None:
    workload = BankWorkload(tmp_path, lambda: 0.0, FailoverClock(lambda: 0.0))
    unreachable = Unavailable("no endpoint reachable", code="unreachable")
    refused = Unavailable("no leader")
    assert workload._write_outcome(refused) == "fail"
    assert workload._write_outcome(unreachable) == "fail"
    assert workload._write_outcome(UnknownOutcome("timed out")) == "info"
    assert workload._write_outcome(ServerError("boom")) == "info"
    workload.unreachable_is_info = True
    assert workload._write_outcome(unreachable) == "info"
    assert workload._write_outcome(refused) == "fail"
    workload.history.close()


def test_cli_short_run_without_faults(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["torture", "--duration", "3", "--faults", "none", "--workload", "register,append",
            "--clients", "2", "--seed", "4", "--out", str(out), "--output", "json",
            "--protocol", "rpc"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["clean"] is True and report["faults"] == {} and report["seed"] == 4
    assert set(report["ops"]) == {"register", "append"}
    assert report["verdicts"] == {"register": "linearizable", "append": "ok"}
    assert {client["protocol"] for client in report["clients"]} == {"rpc"}
    assert set(report["ops_by_protocol"]["register"]) == {"rpc"}
    assert report["ops_by_protocol"]["register"]["rpc"]["ok"] > 0


def test_cli_exits_1_and_names_the_folder_on_a_violation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_run(config: TortureConfig) -> TortureReport:
        report = TortureReport(config.out, config.seed, config.nodes, config.duration_s)
        report.problems["bank"] = ["read lines 3-4: negative balance {'a': -1}"]
        return report

    # the module (the package's attribute of that name is the click command)
    monkeypatch.setattr(sys.modules["replog.cli.torture"], "run_torture", fake_run)
    result = CliRunner().invoke(main, ["torture", "--seed", "1", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "PROBLEM bank: read lines 3-4: negative balance" in result.output
    assert f"histories and node logs are in {tmp_path}" in result.output


@pytest.mark.slow
def test_five_nodes_every_fault(tmp_path: Path) -> None:
    faults = ("kill", "pause", "partition", "crash-all", "clock")
    config = TortureConfig(
        nodes=5,
        duration_s=90.0,
        seed=5,
        faults=faults,
        out=tmp_path / "r5",
    )
    report = run_torture(config)
    assert_clean(report)
    if find_faketime() is not None:
        assert report.faults.get("clock-jump", 0) >= 1, report.faults


@pytest.mark.slow
def test_three_nodes_crashes_and_clock_jumps(tmp_path: Path) -> None:
    config = TortureConfig(
        nodes=3,
        duration_s=90.0,
        seed=9,
        faults=("crash-all", "clock", "kill"),
        out=tmp_path / "r3",
    )
    assert_clean(run_torture(config))
