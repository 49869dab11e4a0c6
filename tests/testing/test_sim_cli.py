"""``replog sim`` through click's test runner."""

from __future__ import annotations

import importlib
import json

import pytest
from click.testing import CliRunner

from replog.cli import main
from replog.testing.sim import SeedResult

# the package re-exports the command under the module's name; fetch the module itself
sim_cli = importlib.import_module("replog.cli.sim")


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["sim", *args])
    return result.exit_code, result.stdout, result.stderr


def test_help_explains_the_options() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    for option in ("--seeds", "--seed", "--nodes", "--events", "--output", "--trace"):
        assert option in out
    flat = " ".join(out.split())
    assert "--store [wal|memory]" in flat and "--disk-faults / --no-disk-faults" in flat
    assert "[default: wal]" in flat
    assert "liveness" in out


def test_text_summary_for_a_range_of_seeds() -> None:
    code, out, _ = invoke("--seed", "40", "--seeds", "3", "--events", "1500")
    assert code == 0, out
    assert "3 of 40..42, 3 nodes" in out
    for row in ("events", "elections", "commits", "reads", "faults", "violations", "seeds/s"):
        assert row in out
    assert out.rstrip().endswith("PASS")


def test_json_summary() -> None:
    code, out, _ = invoke(
        "--seed", "7", "--seeds", "2", "--nodes", "5", "--events", "1500", "--output", "json"
    )
    assert code == 0, out
    summary = json.loads(out)
    assert summary["first_seed"] == 7
    assert summary["seeds"] == 2 and summary["nodes"] == 5
    assert summary["violations"] == 0 and summary["failures"] == []
    assert summary["events_per_seed"] > 1500


def test_wal_store_with_disk_faults_is_the_default() -> None:
    code, out, _ = invoke("--seed", "3", "--seeds", "2", "--events", "1500")
    assert code == 0, out
    assert "store           wal with disk faults" in out


def test_memory_store_and_no_disk_faults() -> None:
    code, out, _ = invoke("--seed", "3", "--seeds", "2", "--events", "1500", "--store", "memory")
    assert code == 0, out
    assert "store           memory\n" in out
    code, out, _ = invoke("--seed", "3", "--seeds", "2", "--events", "1500", "--no-disk-faults")
    assert code == 0, out
    assert "store           wal\n" in out
    assert "disk:inject" not in out


def test_random_start_without_seed() -> None:
    code, out, _ = invoke("--seeds", "1", "--events", "500", "--output", "json")
    assert code == 0, out
    assert json.loads(out)["seeds"] == 1


def test_trace_prints_every_event_of_one_seed_deterministically() -> None:
    code, first, _ = invoke("--seed", "9", "--events", "800", "--trace")
    assert code == 0
    _, second, _ = invoke("--seed", "9", "--events", "800", "--trace")
    assert first == second
    lines = first.splitlines()
    assert len(lines) > 300
    assert "WORLD" in lines[0]
    assert lines[-1].startswith("# seed 9:")


def test_trace_needs_a_single_seed() -> None:
    code, _, err = invoke("--seeds", "2", "--trace")
    assert code == 2
    assert "--trace" in err


def test_bad_node_count_is_a_usage_error() -> None:
    code, _, err = invoke("--nodes", "4")
    assert code == 2
    assert "4" in err


def test_violation_exits_1_with_seed_replay_and_trace_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    real = sim_cli.run_seeds

    def broken_run_seeds(*args: object, **kwargs: object) -> object:
        summary = real(*args, **kwargs)  # type: ignore[arg-type]
        failed = SeedResult(seed=77, nodes=3, violation="election safety violated (term 4): demo")
        failed.trace_tail = ["   100ms n1 is leader of term 4", "   101ms n2 is leader of term 4"]
        summary.add(failed)
        return summary

    monkeypatch.setattr(sim_cli, "run_seeds", broken_run_seeds)
    code, out, err = invoke("--seed", "1", "--events", "500")
    assert code == 1
    assert "FAIL seed 77: election safety violated" in out
    assert "replay: replog sim --seed 77 --nodes 3 --events 500" in out
    assert "n2 is leader of term 4" in out
    assert "violation in seed 77" in err
