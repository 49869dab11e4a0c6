"""The seeded fault schedule, the partition shapes, and the nemesis on a fake cluster."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

from replog.testing.torture_faults import (
    FAULT_KINDS,
    FaultStep,
    Nemesis,
    make_schedule,
    partition_links,
)

NAMES = ["n1", "n2", "n3", "n4", "n5"]


def test_the_same_seed_gives_the_same_schedule() -> None:
    first = make_schedule(7, FAULT_KINDS, 120.0, 5)
    assert first == make_schedule(7, FAULT_KINDS, 120.0, 5)
    assert first != make_schedule(8, FAULT_KINDS, 120.0, 5)
    assert {step.kind for step in first} == set(FAULT_KINDS)
    for before, after in itertools.pairwise(first):
        assert after.at_s >= before.at_s + before.hold_s  # faults never overlap
    assert all(step.at_s < 120.0 for step in first)


def test_schedule_only_uses_the_kinds_asked_for() -> None:
    steps = make_schedule(1, ("pause",), 60.0, 3)
    assert steps and {step.kind for step in steps} == {"pause"}
    assert make_schedule(1, (), 60.0, 3) == []
    with pytest.raises(ValueError, match="unknown fault kind"):
        make_schedule(1, ("meteor",), 60.0, 3)


def step(shape: str, seed: int = 3) -> FaultStep:
    return FaultStep(0.0, "partition", "leader", 1.0, shape=shape, mode="drop", seed=seed)


def test_partition_shapes() -> None:
    isolated = set(partition_links(step("isolate-leader"), "n2", NAMES))
    assert isolated == {(a, b) for a in NAMES for b in NAMES if a != b and "n2" in (a, b)}
    one_way = partition_links(step("one-way-leader"), "n2", NAMES)
    assert sorted(one_way) == [("n2", n) for n in NAMES if n != "n2"]
    halves = set(partition_links(step("halves"), "n1", NAMES))
    minority = {a for a, _ in halves} & {b for _, b in halves}
    assert len(halves) == 2 * 2 * 3 and len(minority) == 5  # every node loses some links
    bridge = set(partition_links(step("bridge"), "n1", NAMES))
    touched = {a for a, _ in bridge}
    assert len(touched) == 4  # the bridge node keeps every link
    assert len(partition_links(step("slow"), "n1", NAMES)) == 20


class FakeCluster:
    def __init__(self) -> None:
        self.names = ["n1", "n2", "n3"]
        self.actions: list[str] = []

    def leader(self) -> tuple[str, int] | None:
        return ("n1", 4)

    def kill(self, name: str) -> None:
        self.actions.append(f"kill {name}")

    def restart(self, name: str) -> None:
        self.actions.append(f"restart {name}")

    def pause(self, name: str) -> None:
        self.actions.append(f"pause {name}")

    def resume(self, name: str) -> None:
        self.actions.append(f"resume {name}")

    def set_link(self, src: str, dst: str, mode: str, delay_ms: int) -> None:
        self.actions.append(f"link {src}->{dst} {mode}")

    def heal_links(self) -> None:
        self.actions.append("heal links")

    def jump_clock(self, name: str, jump_s: float) -> bool:
        return False

    def heal_all(self) -> None:
        self.actions.append("heal all")


def test_nemesis_runs_heals_and_logs(tmp_path: Path) -> None:
    steps = [
        FaultStep(0.0, "kill", "leader", 0.01),
        FaultStep(0.02, "pause", "leader", 0.01),
        FaultStep(0.04, "partition", "leader", 0.01, shape="isolate-leader", mode="cut"),
        FaultStep(0.06, "crash-all", "all", 0.01),
        FaultStep(0.08, "clock", "node:1", 0.01, jump_s=2.0),
        FaultStep(0.10, "kill", "node:2", 0.01),
    ]
    cluster = FakeCluster()
    killed: list[int] = []
    started = time.monotonic()
    log = tmp_path / "faults.jsonl"
    clock = lambda: time.monotonic() - started  # noqa: E731
    nemesis = Nemesis(cluster, steps, clock, log, killed.append, min_gap_s=0.0)
    nemesis.start()
    time.sleep(0.5)
    nemesis.stop()
    assert killed == [4]
    assert nemesis.counts == {
        "kill-leader": 1, "pause-leader": 1, "partition:isolate-leader": 1, "crash-all": 1,
        "skipped (no faketime)": 1, "kill": 1,
    }  # fmt: skip
    assert cluster.actions[:4] == ["kill n1", "restart n1", "pause n1", "resume n1"]
    assert "link n1->n2 cut" in cluster.actions and "link n2->n1 cut" in cluster.actions
    assert cluster.actions[-1] == "heal all"
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(e["time_s"] < 0.4 for e in logged)
    assert [e["kind"] for e in logged] == [s.kind for s in steps]
    assert logged[0]["detail"] == "killed n1 (leader, term 4), restarted"


def test_a_late_step_still_leaves_a_quiet_gap(tmp_path: Path) -> None:
    steps = [FaultStep(0.0, "kill", "node:1", 0.01), FaultStep(0.0, "kill", "node:2", 0.01)]
    cluster = FakeCluster()
    started = time.monotonic()
    clock = lambda: time.monotonic() - started  # noqa: E731
    nemesis = Nemesis(cluster, steps, clock, tmp_path / "f.jsonl", print, min_gap_s=0.3)
    nemesis.start()
    time.sleep(0.6)
    nemesis.stop()
    times = [json.loads(line)["time_s"] for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert len(times) == 2 and times[1] - times[0] >= 0.3


class LeaderlessCluster(FakeCluster):
    def leader(self) -> tuple[str, int] | None:
        return None


def test_without_a_leader_only_leader_faults_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("replog.testing.torture_faults.LEADER_WAIT_S", 0.05)
    steps = [
        FaultStep(0.0, "pause", "leader", 0.01),
        FaultStep(0.0, "partition", "leader", 0.01, shape="halves", mode="drop", seed=1),
    ]
    cluster = LeaderlessCluster()
    started = time.monotonic()
    clock = lambda: time.monotonic() - started  # noqa: E731
    nemesis = Nemesis(cluster, steps, clock, tmp_path / "f.jsonl", print, min_gap_s=0.0)
    nemesis.start()
    time.sleep(0.4)
    nemesis.stop()
    assert nemesis.counts == {"skipped (no leader)": 1, "partition:halves": 1}
    assert not any(a.startswith("pause") for a in cluster.actions)
    assert sum(a.startswith("link") for a in cluster.actions) == 4  # 1 node against 2
