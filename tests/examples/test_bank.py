"""The bank example on a real 3-node cluster of separate processes: every node makes the same
decision on each withdrawal and ends with the same balance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from replog.testing.processes import free_ports

BANK = Path(__file__).resolve().parents[2] / "examples" / "bank.py"


def test_concurrent_withdrawals_are_decided_alike_everywhere(tmp_path: Path) -> None:
    ports = free_ports(3)
    peers = ",".join(f"n{i + 1}=127.0.0.1:{port}" for i, port in enumerate(ports))
    withdrawals = {"n1": 800, "n2": 600, "n3": 0}
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                str(BANK),
                "--name",
                name,
                "--peers",
                peers,
                "--data-dir",
                str(tmp_path / name),
                "--withdraw",
                str(amount),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for name, amount in withdrawals.items()
    }
    try:
        results = {}
        deadline = time.monotonic() + 60
        for name, proc in procs.items():
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, f"{name} exited with {proc.poll()} before deciding"
            results[name] = json.loads(line)
            assert time.monotonic() < deadline
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(timeout=20)
            if proc.stdout is not None:
                proc.stdout.close()

    first = results["n1"]
    assert all(result == first for result in results.values()), results
    decisions = first["decisions"]
    assert sorted(d["amount"] for d in decisions) == [600, 800]
    assert [d["approved"] for d in decisions] == [True, False]  # the first in log order wins
    assert first["balance"] == 1000 - decisions[0]["amount"]
