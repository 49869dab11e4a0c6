"""What a benchmark run does: the workload (operation mix, keys, values) and its limits.

A ``Workload`` is a frozen value shared by the parent and every generator process (sent as JSON).
Keys are ``<prefix><number>`` with numbers drawn uniformly from ``[0, key_space)``; values are
``value_size_bytes`` random bytes drawn once per process (the server sees the same size on every
write, not the same bytes everywhere). ``mixed`` draws a read with probability
``read_fraction``, else a write.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "CLIENTS_MAX",
    "KEY_SPACE_MAX",
    "OPERATIONS",
    "PROCESSES_MAX",
    "VALUE_SIZE_MAX_BYTES",
    "WORKLOADS",
    "Op",
    "Workload",
]

WorkloadName = Literal["put", "get", "stale-get", "mixed"]
WORKLOADS: tuple[WorkloadName, ...] = ("put", "get", "stale-get", "mixed")
Op = Literal["put", "get", "stale-get"]
OPERATIONS: tuple[Op, ...] = ("put", "get", "stale-get")

CLIENTS_MAX = 4096
PROCESSES_MAX = 64
KEY_SPACE_MAX = 10_000_000
VALUE_SIZE_MAX_BYTES = 1024 * 1024
DURATION_DEFAULT_S = 10.0
DURATION_MAX_S = 24 * 3600.0
COUNT_MAX = 1_000_000_000
KEY_PREFIX_MAX_CHARS = 64


@dataclass(frozen=True)
class Workload:
    """One run's work. At most one of ``duration_s`` and ``count`` bounds the run (neither:
    ``DURATION_DEFAULT_S``)."""

    name: WorkloadName = "put"
    value_size_bytes: int = 256
    key_space: int = 1000
    key_prefix: str = "bench/"
    read_fraction: float = 0.5
    mixed_read: Op = "get"
    clients: int = 16
    duration_s: float | None = None
    count: int | None = None
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.duration_s is None and self.count is None:
            object.__setattr__(self, "duration_s", DURATION_DEFAULT_S)
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every reason this workload is invalid (empty when it is fine)."""
        out: list[str] = []
        if self.name not in WORKLOADS:
            out.append(f"workload must be one of {', '.join(WORKLOADS)}, not {self.name!r}")
        if not 0 <= self.value_size_bytes <= VALUE_SIZE_MAX_BYTES:
            out.append(f"value size must be 0..{VALUE_SIZE_MAX_BYTES} bytes")
        if not 1 <= self.key_space <= KEY_SPACE_MAX:
            out.append(f"key space must be 1..{KEY_SPACE_MAX}")
        if not self.key_prefix.isprintable() or len(self.key_prefix) > KEY_PREFIX_MAX_CHARS:
            out.append(f"key prefix must be printable, at most {KEY_PREFIX_MAX_CHARS} chars")
        if not 0.0 <= self.read_fraction <= 1.0:
            out.append("read fraction must be between 0 and 1")
        if self.mixed_read not in ("get", "stale-get"):
            out.append("the read of a mixed workload is get or stale-get")
        if not 1 <= self.clients <= CLIENTS_MAX:
            out.append(f"clients must be 1..{CLIENTS_MAX}")
        if (self.duration_s is None) == (self.count is None):
            out.append("give a duration or an operation count, not both")
        if self.duration_s is not None and not 0 < self.duration_s <= DURATION_MAX_S:
            out.append(f"duration must be more than 0 and at most {DURATION_MAX_S:.0f} s")
        if self.count is not None and not 1 <= self.count <= COUNT_MAX:
            out.append(f"operation count must be 1..{COUNT_MAX}")
        if not 0 < self.timeout_s <= 600:
            out.append("request timeout must be more than 0 and at most 600 s")
        return out

    @property
    def reads(self) -> bool:
        return self.name in ("get", "stale-get") or (
            self.name == "mixed" and self.read_fraction > 0
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        return cls(**data)


class OpSource:
    """Draws operations and keys for one generator process (its own seeded ``Random``)."""

    def __init__(self, workload: Workload, seed: int) -> None:
        self.workload = workload
        self.rng = random.Random(seed)
        self.value = self.rng.randbytes(workload.value_size_bytes)

    def next_op(self) -> Op:
        name = self.workload.name
        if name == "mixed":
            if self.rng.random() < self.workload.read_fraction:
                return self.workload.mixed_read
            return "put"
        return name

    def next_key(self) -> str:
        return f"{self.workload.key_prefix}{self.rng.randrange(self.workload.key_space)}"

    def key(self, number: int) -> str:
        return f"{self.workload.key_prefix}{number}"
