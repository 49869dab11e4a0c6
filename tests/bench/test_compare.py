"""``benchmarks/compare.py``: the interleaved rounds, on replog alone (etcd and PySyncObj may be
missing on a test machine)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
compare: Any = importlib.import_module("compare")


def test_the_median_round_is_the_middle_throughput_and_every_round_is_listed() -> None:
    runs = [
        {"throughput_ops_s": ops, "p50_ms": p50} for ops, p50 in [(30, 1.0), (10, 3.0), (20, 2.0)]
    ]
    chosen = compare._median_round(runs)
    assert chosen["throughput_ops_s"] == 20 and chosen["p50_ms"] == 2.0
    assert chosen["rounds_ops_s"] == [30, 10, 20]
    assert chosen["median_p50_ms"] == 2.0


def test_rounds_below_one_are_refused() -> None:
    with pytest.raises(SystemExit):
        compare.parse_args(["--rounds", "0"])


def test_interleaved_rounds_measure_every_case_each_round(
    capsys: pytest.CaptureFixture[str],
) -> None:
    compare.main(
        ["--systems", "replog", "--clients", "rpc", "--duration", "0.5", "--many-clients", "8",
         "--rounds", "2", "--etcdctl-load", "none", "--output", "json"]
    )  # fmt: skip
    document = json.loads(capsys.readouterr().out)
    rounds = document["rounds"]["replog"]["rpc"]
    assert set(rounds) == {"put-1", "put-64", "put-8", "get-64"}
    for runs in rounds.values():
        assert len(runs) == 2
        assert all(run["throughput_ops_s"] > 0 and run["errors"] == 0 for run in runs)
    assert document["results"]["replog"]["rpc"]["put-1"]["rounds_ops_s"] == [
        round(run["throughput_ops_s"], 1) for run in rounds["put-1"]
    ]
