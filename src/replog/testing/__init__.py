"""Tools to test replog and the state machines built on it.

* ``run_seed`` / ``run_seeds`` / ``SimConfig``: the deterministic cluster simulator (faults,
  safety invariants after every event, a liveness phase, linearizability of client histories).
* ``check_history`` / ``parse_history``: the linearizability checker for Jepsen-style
  histories of read / write / cas operations on registers.
"""

from replog.testing.history import HistoryError, Operation, parse_history
from replog.testing.invariants import InvariantViolation
from replog.testing.linearizability import CheckResult, Status, Violation, check_history
from replog.testing.sim import RunSummary, SeedResult, SimConfig, run_seed, run_seeds

__all__ = [
    "CheckResult",
    "HistoryError",
    "InvariantViolation",
    "Operation",
    "RunSummary",
    "SeedResult",
    "SimConfig",
    "Status",
    "Violation",
    "check_history",
    "parse_history",
    "run_seed",
    "run_seeds",
]
