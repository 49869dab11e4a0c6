"""Side-by-side: the same workloads against replog, etcd and PySyncObj, in one run.

Each system runs alone (started, measured, stopped; never two at once), 3 members on loopback:

* replog: ``replog serve`` x3, default timing, fsync on every Ready batch;
* etcd: Debian's etcd 3.4 x3 (``apt-get install -y etcd-server etcd-client``), default
  settings, driven through its JSON gateway by the same generator; then ``etcdctl check perf``
  (etcd's own Go gRPC client) on the same cluster;
* PySyncObj (PyPI) x3 behind ``pysyncobj_server.py``, with its on-disk journal (never fsynced)
  and ``appendEntriesUseBatch=False`` (its faster setting here; ``--pysyncobj-batch`` for the
  library default, which waits for the next 100 ms append period).

The workloads (256-byte values, 1,000 keys): sequential put (1 client), put with 64 clients,
put with many clients (``--many-clients``, default 256), linearizable get with 64 clients.
Then a table with each system's throughput and latency and the ratios replog/etcd and
replog/pysyncobj. ``--output json`` prints everything as one JSON document; ``--save FILE``
also writes it to a file.

    .venv/bin/python benchmarks/compare.py --duration 10
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from systems import EtcdSystem, PySyncObjSystem, ReplogSystem

from replog.bench import BenchConfig, Report, Workload, run_bench

SYSTEMS = ("replog", "etcd", "pysyncobj")
ETCDCTL_TIMEOUT_S = 300


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    workload: Workload


def cases(duration_s: float, many_clients: int, value_size: int) -> list[Case]:
    def w(name: str, clients: int) -> Workload:
        return Workload(
            name=name,  # type: ignore[arg-type]
            clients=clients,
            duration_s=duration_s,
            value_size_bytes=value_size,
            key_space=1000,
        )

    return [
        Case("put-1", "sequential put (1 client)", w("put", 1)),
        Case("put-64", "put, 64 clients", w("put", 64)),
        Case(f"put-{many_clients}", f"put, {many_clients} clients", w("put", many_clients)),
        Case("get-64", "linearizable get, 64 clients", w("get", 64)),
    ]


def run_etcdctl_check_perf(endpoints: list[str], load: str) -> dict[str, Any]:
    """``etcdctl check perf --load=LOAD`` (a 60 s run, rate-limited by the load's size)."""
    command = ["etcdctl", f"--endpoints={','.join(endpoints)}", "check", "perf", f"--load={load}"]
    env = {**os.environ, "ETCDCTL_API": "3"}
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=ETCDCTL_TIMEOUT_S, check=False
    )
    text = done.stdout + done.stderr
    found: dict[str, Any] = {"command": "ETCDCTL_API=3 " + " ".join(command[:1] + command[2:])}
    patterns = {
        "throughput_writes_s": r"Throughput is (\d+(?:\.\d+)?) writes/s",
        "slowest_request_s": r"Slowest request took (\d+(?:\.\d+)?)s",
        "stddev_s": r"Stddev is (\d+(?:\.\d+)?)s",
    }
    for key, pattern in patterns.items():
        match = re.search(pattern, text)
        found[key] = float(match.group(1)) if match else None
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    found["verdict"] = lines[-1] if lines else f"no output (exit {done.returncode})"
    found["exit_code"] = done.returncode
    return found


def make_system(name: str, root: Path, args: argparse.Namespace) -> Any:
    if name == "replog":
        return ReplogSystem(root / "replog", args.nodes)
    if name == "etcd":
        return EtcdSystem(root / "etcd", args.nodes)
    return PySyncObjSystem(root / "pysyncobj", args.nodes, batch=args.pysyncobj_batch)


def measure(system: Any, all_cases: list[Case], args: argparse.Namespace) -> dict[str, Report]:
    reports = {}
    for case in all_cases:
        config = BenchConfig(
            endpoints=tuple(system.endpoints),
            workload=case.workload,
            target=system.target,
            processes=args.processes,
            send_to=args.send_to,
        )
        reports[case.name] = report = run_bench(config)
        print(
            f"  {system.target:9} {case.name:9} {report.throughput_ops_s:10,.1f} ops/s  "
            f"p50 {report.latency.p50_ms:8.2f} ms  p99 {report.latency.p99_ms:8.2f} ms  "
            f"errors {report.error_count}  generator {report.cpu_cores:.2f} cores",
            file=sys.stderr,
        )
    return reports


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(all_cases: list[Case], results: dict[str, dict[str, Report]]) -> Table:
    systems = [s for s in SYSTEMS if s in results]
    out = Table(box=box.SIMPLE_HEAD, title="throughput ops/s (p50 / p99 ms)")
    out.add_column("workload")
    for name in systems:
        out.add_column(name, justify="right")
    for other in ("etcd", "pysyncobj"):
        if "replog" in results and other in results:
            out.add_column(f"replog/{other}", justify="right")
    for case in all_cases:
        row = [case.label]
        for name in systems:
            r = results[name][case.name]
            errors = f" [{r.error_count} err]" if r.error_count else ""
            row.append(
                f"{r.throughput_ops_s:,.0f} ({r.latency.p50_ms:.1f} / {r.latency.p99_ms:.1f})"
                + errors
            )
        for other in ("etcd", "pysyncobj"):
            if "replog" in results and other in results:
                mine, theirs = results["replog"][case.name], results[other][case.name]
                row.append(
                    f"{ratio(mine.throughput_ops_s, theirs.throughput_ops_s)} "
                    f"(p50 {ratio(mine.latency.p50_ms, theirs.latency.p50_ms)})"
                )
        out.add_row(*row)
    return out


def machine() -> str:
    python = platform.python_version()
    return f"{os.cpu_count()} CPUs, {platform.platform()}, Python {python}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="replog vs etcd vs PySyncObj, side by side")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per workload")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--nodes", type=int, default=3, help="members per cluster")
    parser.add_argument("--many-clients", type=int, default=256, help="the many-client put")
    parser.add_argument("--value-size", type=int, default=256, help="bytes per value")
    parser.add_argument("--processes", type=int, default=None, help="generator processes")
    parser.add_argument("--send-to", choices=["all", "leader"], default="leader")
    parser.add_argument("--etcdctl-load", choices=["s", "m", "l", "none"], default="s")
    parser.add_argument("--pysyncobj-batch", action="store_true",
                        help="PySyncObj's default batched appends (100 ms period)")  # fmt: skip
    parser.add_argument("--output", choices=["table", "json"], default="table")
    parser.add_argument("--save", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    all_cases = cases(args.duration, args.many_clients, args.value_size)
    results: dict[str, dict[str, Report]] = {}
    described: dict[str, str] = {}
    etcdctl: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="replog-compare-") as tmp:
        for name in args.systems:
            print(f"{name}: starting", file=sys.stderr)
            with make_system(name, Path(tmp), args) as system:
                described[name] = system.describe()
                results[name] = measure(system, all_cases, args)
                if name == "etcd" and args.etcdctl_load != "none":
                    print(f"etcd: etcdctl check perf --load={args.etcdctl_load}", file=sys.stderr)
                    etcdctl = run_etcdctl_check_perf(system.endpoints, args.etcdctl_load)
    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "benchmarks/compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "systems": described,
        "cases": {c.name: c.label for c in all_cases},
        "results": {s: {c: r.to_json() for c, r in rs.items()} for s, rs in results.items()},
        "etcdctl_check_perf": etcdctl,
    }
    if args.save is not None:
        args.save.write_text(json.dumps(document, indent=1) + "\n")
    if args.output == "json":
        print(json.dumps(document))
        return
    console = Console(width=160, highlight=False)
    for name, text in described.items():
        console.print(f"{name}: {text}")
    console.print(table(all_cases, results))
    if etcdctl is not None:
        console.print(
            f"{etcdctl['command']}: throughput {etcdctl['throughput_writes_s']} writes/s, "
            f"slowest {etcdctl['slowest_request_s']} s, stddev {etcdctl['stddev_s']} s, "
            f"{etcdctl['verdict']}"
        )


if __name__ == "__main__":
    main()
