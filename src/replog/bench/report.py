"""Benchmark results: merging the generator processes' results and printing them.

Each worker process returns a histogram per operation kind, its errors by kind, its elapsed
wall time and its CPU time. ``merge_results`` adds them up (histograms merge exactly, see
``histogram``); ``Report`` is the frozen summary that ``replog bench`` prints as a table or as
JSON. Throughput counts successful operations only, over the longest process's elapsed time.
The generator's own CPU use is reported so that a saturated generator is visible: ``cpu_cores``
is the sum of its processes' user+system time over the wall time, ``cpu_busiest`` the largest
share of one core that any single process used (near 1.0 means that process was the limit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from replog.bench.histogram import Histogram
from replog.bench.workloads import Workload

__all__ = ["GENERATOR_SATURATED", "Latency", "Merged", "Report", "merge_results"]

GENERATOR_SATURATED = 0.9


@dataclass(frozen=True)
class Latency:
    """Latency percentiles of one set of operations, in milliseconds."""

    ops: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, histogram: Histogram) -> Latency:
        def ms(us: float) -> float:
            return round(us / 1000.0, 3)

        return cls(
            ops=histogram.count,
            p50_ms=ms(histogram.percentile_us(50)),
            p90_ms=ms(histogram.percentile_us(90)),
            p99_ms=ms(histogram.percentile_us(99)),
            max_ms=ms(histogram.max_us),
            mean_ms=ms(histogram.mean_us),
        )


@dataclass
class Merged:
    """The sum of the workers' results."""

    histograms: dict[str, Histogram] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    cpu_busiest: float = 0.0

    @property
    def overall(self) -> Histogram:
        total = Histogram()
        for histogram in self.histograms.values():
            total.merge(histogram)
        return total


def merge_results(results: list[dict[str, Any]]) -> Merged:
    """Add up the result documents of the worker processes."""
    merged = Merged()
    for result in results:
        for op, data in result["histograms"].items():
            merged.histograms.setdefault(op, Histogram()).merge(Histogram.from_json(data))
        for kind, n in result["errors"].items():
            merged.errors[kind] = merged.errors.get(kind, 0) + int(n)
        elapsed_s, cpu_s = float(result["elapsed_s"]), float(result["cpu_s"])
        merged.elapsed_s = max(merged.elapsed_s, elapsed_s)
        merged.cpu_s += cpu_s
        if elapsed_s > 0:
            merged.cpu_busiest = max(merged.cpu_busiest, cpu_s / elapsed_s)
    return merged


@dataclass(frozen=True)
class Report:
    """One benchmark run, summarized."""

    target: str
    workload: Workload
    endpoints: tuple[str, ...]
    send_to: str
    processes: int
    elapsed_s: float
    ops: int
    errors: dict[str, int]
    throughput_ops_s: float
    latency: Latency
    per_op: dict[str, Latency]
    cpu_cores: float
    cpu_busiest: float
    protocol: str = "http"
    idempotency_keys: bool = False

    @classmethod
    def build(
        cls,
        merged: Merged,
        *,
        target: str,
        workload: Workload,
        endpoints: tuple[str, ...],
        send_to: str,
        processes: int,
        protocol: str = "http",
        idempotency_keys: bool = False,
    ) -> Report:
        overall = merged.overall
        elapsed_s = merged.elapsed_s
        return cls(
            target=target,
            workload=workload,
            endpoints=endpoints,
            send_to=send_to,
            processes=processes,
            elapsed_s=round(elapsed_s, 3),
            ops=overall.count,
            errors=dict(sorted(merged.errors.items())),
            throughput_ops_s=round(overall.count / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            latency=Latency.of(overall),
            per_op={op: Latency.of(h) for op, h in sorted(merged.histograms.items())},
            cpu_cores=round(merged.cpu_s / elapsed_s, 3) if elapsed_s > 0 else 0.0,
            cpu_busiest=round(merged.cpu_busiest, 3),
            protocol=protocol,
            idempotency_keys=idempotency_keys,
        )

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def generator_saturated(self) -> bool:
        return self.cpu_busiest >= GENERATOR_SATURATED

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["endpoints"] = list(self.endpoints)
        document["error_count"] = self.error_count
        document["generator_saturated"] = self.generator_saturated
        return document

    def lines(self) -> list[tuple[str, str]]:
        """(label, value) rows for a table meant for people."""
        w = self.workload
        bound = f"{w.duration_s:g} s" if w.duration_s is not None else f"{w.count:,} ops"
        keyed = ", an idempotency key on every put" if self.idempotency_keys else ""
        rows = [
            (
                "target",
                f"{self.target} over {self.protocol} "
                f"({len(self.endpoints)} endpoints, send to {self.send_to})",
            ),
            ("workload", f"{w.name}, {w.value_size_bytes} B values, {w.key_space:,} keys{keyed}"),
            ("clients", f"{w.clients} over {self.processes} processes, {bound}"),
            ("elapsed", f"{self.elapsed_s:.2f} s"),
            ("operations", f"{self.ops:,} ok, {self.error_count:,} failed"),
            ("throughput", f"{self.throughput_ops_s:,.1f} ops/s"),
        ]
        for op, latency in [("all", self.latency), *self.per_op.items()]:
            if op != "all" and len(self.per_op) < 2:
                continue
            rows.append(
                (
                    f"latency ({op})",
                    f"p50 {latency.p50_ms:.2f} ms, p90 {latency.p90_ms:.2f} ms, "
                    f"p99 {latency.p99_ms:.2f} ms, max {latency.max_ms:.2f} ms",
                )
            )
        for kind, n in self.errors.items():
            rows.append((f"errors {kind}", f"{n:,}"))
        saturated = " (saturated: the generator may be the limit)"
        if not self.generator_saturated:
            saturated = ""
        rows.append(
            (
                "generator CPU",
                f"{self.cpu_cores:.2f} cores, busiest process {self.cpu_busiest:.0%}{saturated}",
            )
        )
        return rows
