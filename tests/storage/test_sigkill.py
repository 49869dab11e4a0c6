"""A real writer process on the real file system, killed with SIGKILL at random moments.

Each round starts ``kill_writer.py`` on the same directory (so it first recovers what the
previous round left), kills it after a random delay (sometimes during start-up and recovery),
then recovers the directory here and checks: every index the writer reported as saved is
present with its data, and the log is a clean, gap-free prefix after the snapshot.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replog.storage import NodeStorage, OsDisk

from .kill_writer import CLUSTER, OPTIONS, data_for

WRITER = Path(__file__).with_name("kill_writer.py")


def _reported(path: Path) -> int:
    """The highest index the writer printed on a complete line."""
    lines = path.read_bytes().split(b"\n")[:-1]  # the last piece may be a torn line
    numbers = [int(line) for line in lines if line.isdigit()]
    return max(numbers, default=0)


def _check(directory: Path, durable: int) -> int:
    storage, state = NodeStorage.open(OsDisk(), str(directory), CLUSTER, 1, OPTIONS)
    try:
        start = state.snapshot.meta.index if state.snapshot else 0
        indexes = [entry.index for entry in state.entries]
        assert indexes == list(range(start + 1, start + 1 + len(indexes))), "not a clean prefix"
        last = indexes[-1] if indexes else start
        assert last >= durable, f"index {durable} was reported durable, log ends at {last}"
        for entry in state.entries:
            assert entry.data == data_for(entry.index), f"entry {entry.index} damaged"
        assert state.hard_state.commit_index <= last
        return last
    finally:
        storage.close()


def _rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    directory = tmp_path / "data"
    durable = 0
    kills = 0
    for round_ in range(rounds):
        out, err = tmp_path / f"out{round_}", tmp_path / f"err{round_}"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, str(WRITER), str(directory), str(seed * 1000 + round_)],
                stdout=stdout,
                stderr=stderr,
            )
            time.sleep(rng.uniform(0.05, 0.6))
            process.send_signal(signal.SIGKILL)
            code = process.wait()
        if code != -signal.SIGKILL:
            pytest.fail(f"writer exited by itself ({code}): {err.read_text()}")
        kills += 1
        durable = max(durable, _reported(out))
        durable = max(durable, _check(directory, durable))
    assert kills == rounds and durable > 0


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    _rounds(tmp_path, rounds=25, seed=1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_soak(tmp_path: Path) -> None:
    _rounds(tmp_path, rounds=300, seed=2)
