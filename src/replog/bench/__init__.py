"""Benchmarks of replog and of the systems it is compared with (etcd, PySyncObj).

``run_bench(BenchConfig(...))`` drives a cluster with many concurrent clients spread over
several generator processes and returns a ``Report`` (throughput, latency percentiles from a
log-linear histogram, errors by kind, the generator's own CPU use). ``replog bench`` is its
command line.
"""

from replog.bench.generator import BenchConfig, BenchError, run_bench, run_bench_async
from replog.bench.histogram import Histogram
from replog.bench.report import Latency, Report, merge_results
from replog.bench.targets import TARGETS, adapter
from replog.bench.workloads import WORKLOADS, Workload

__all__ = [
    "TARGETS",
    "WORKLOADS",
    "BenchConfig",
    "BenchError",
    "Histogram",
    "Latency",
    "Report",
    "Workload",
    "adapter",
    "merge_results",
    "run_bench",
    "run_bench_async",
]
