"""A log-linear latency histogram (the HDR histogram idea, in plain Python).

What it owns: counting recorded latencies (integer microseconds) in buckets whose width grows
with the value, so that any percentile read back is within about 1% of the true sample while
memory stays bounded (a few thousand counters however many samples are recorded).

Layout: values below ``SUB_BUCKETS`` (128) have one bucket each (exact). Above, each power of two
``[2^k, 2^(k+1))`` is cut into ``SUB_BUCKETS / 2`` equal slices, so a bucket's width is at most
1/64 of its lower bound. Values over ``VALUE_MAX_US`` (one hour) are clamped to it and counted in
``clamped``. Invariants: ``count == sum(counts)``; ``min_us <= max_us`` once anything is recorded;
merging adds counts, so merge(a, b) reads the same percentiles as recording a's and b's samples
into one histogram. The JSON form (``to_json``/``from_json``) carries only the non-empty buckets,
so histograms cross process boundaries as plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SUB_BUCKETS", "VALUE_MAX_US", "Histogram"]

SUB_BUCKETS = 128
_HALF = SUB_BUCKETS // 2
_SHIFT_BASE = SUB_BUCKETS.bit_length() - 1  # log2(SUB_BUCKETS) = 7
VALUE_MAX_US = 3_600_000_000
BUCKETS_MAX = 4096


def bucket_of(value_us: int) -> int:
    """The bucket index of a non-negative value (monotonic in the value)."""
    if value_us < SUB_BUCKETS:
        return value_us
    shift = value_us.bit_length() - _SHIFT_BASE  # >= 1: keeps 7 significant bits
    return SUB_BUCKETS + (shift - 1) * _HALF + ((value_us >> shift) - _HALF)


def bucket_low(index: int) -> int:
    """The smallest value that falls in bucket ``index``."""
    if index < SUB_BUCKETS:
        return index
    shift, slot = divmod(index - SUB_BUCKETS, _HALF)
    return (slot + _HALF) << (shift + 1)


def bucket_high(index: int) -> int:
    """The largest value that falls in bucket ``index``."""
    return bucket_low(index + 1) - 1


@dataclass
class Histogram:
    """Counts of latencies in microseconds; see the module docstring."""

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total_us: int = 0
    min_us: int = 0
    max_us: int = 0
    clamped: int = 0

    def record(self, value_us: int) -> None:
        if value_us < 0:
            raise ValueError(f"a latency cannot be negative: {value_us}")
        if value_us > VALUE_MAX_US:
            value_us = VALUE_MAX_US
            self.clamped += 1
        index = bucket_of(value_us)
        self.counts[index] = self.counts.get(index, 0) + 1
        if self.count == 0 or value_us < self.min_us:
            self.min_us = value_us
        self.max_us = max(self.max_us, value_us)
        self.count += 1
        self.total_us += value_us

    def record_s(self, seconds: float) -> None:
        self.record(max(0, round(seconds * 1_000_000)))

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s samples to this histogram."""
        if other.count == 0:
            return
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.min_us = other.min_us if self.count == 0 else min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        self.count += other.count
        self.total_us += other.total_us
        self.clamped += other.clamped

    def percentile_us(self, percent: float) -> int:
        """The value at ``percent`` (0-100): the upper edge of the bucket holding that rank,
        capped by the largest value seen (so p100 is exactly ``max_us``). 0 when empty."""
        if not 0 <= percent <= 100:
            raise ValueError(f"a percentile is between 0 and 100, got {percent}")
        if self.count == 0:
            return 0
        rank = max(1, -(-self.count * percent // 100))  # ceil, at least the first sample
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return max(self.min_us, min(bucket_high(index), self.max_us))
        return self.max_us

    @property
    def mean_us(self) -> float:
        return self.total_us / self.count if self.count else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": [[index, n] for index, n in sorted(self.counts.items())],
            "count": self.count,
            "total_us": self.total_us,
            "min_us": self.min_us,
            "max_us": self.max_us,
            "clamped": self.clamped,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        """Rebuild from ``to_json``'s form; checks the shape and the count invariant."""
        try:
            pairs = data["counts"]
            if len(pairs) > BUCKETS_MAX:
                raise ValueError(f"{len(pairs)} buckets is over {BUCKETS_MAX}")
            counts = {int(index): int(n) for index, n in pairs}
            histogram = cls(
                counts=counts,
                count=int(data["count"]),
                total_us=int(data["total_us"]),
                min_us=int(data["min_us"]),
                max_us=int(data["max_us"]),
                clamped=int(data["clamped"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a histogram: {error!r}") from None
        if sum(counts.values()) != histogram.count or any(n < 0 for n in counts.values()):
            raise ValueError("a histogram's bucket counts do not add up to its count")
        return histogram
