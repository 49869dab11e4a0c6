"""Side-by-side: the same workloads against replog, etcd and PySyncObj, in one run.

Each system runs alone (started, measured, stopped; never two at once), 3 members on loopback,
and is driven by each of its clients in turn. With ``--rounds N`` (N > 1) every system is
started first and stays up, idle while the others are measured, and the workloads interleave:
each round runs every case on every system back to back (the systems' order reverses every
other round), so a machine whose speed drifts over minutes favours none of them; each cell of
the table is then the round with the median throughput, and the JSON keeps every round:

* replog: ``replog serve`` x3, default timing, fsync on every Ready batch; driven by
  ``replog bench`` over the binary protocol (``rpc``, the Python ``RpcClient``) and over HTTP;
* etcd: Debian's etcd 3.4 x3 (``apt-get install -y etcd-server etcd-client``), default
  settings; driven by etcd's own Go gRPC client (``grpc``: ``benchmarks/etcd_gobench``, built
  with Debian's Go and etcd sources: ``apt-get install -y golang-go golang-etcd-server-dev``;
  skipped with a message when they are missing) and by ``replog bench`` through etcd's JSON
  gateway (``gateway``); then ``etcdctl check perf`` on the same cluster;
* PySyncObj (PyPI) x3 behind ``pysyncobj_server.py``, with its on-disk journal (never fsynced)
  and ``appendEntriesUseBatch=False`` (its faster setting here; ``--pysyncobj-batch`` for the
  library default, which waits for the next 100 ms append period); driven over HTTP.

The workloads (256-byte values, 1,000 keys, every client sending to the leader): sequential put
(1 client), put with 64 clients, put with many clients (``--many-clients``, default 1000),
linearizable get with 64 clients. Then a table with each column's throughput and latency and
the ratios of replog's best client to etcd's best and to PySyncObj. ``--output json`` prints
everything as one JSON document; ``--save FILE`` also writes it to a file.

    .venv/bin/python benchmarks/compare.py --duration 10
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
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

import etcd_gobench
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


# The columns: (system, client). The first column of a system that ran is its best client.
COLUMNS = (
    ("replog", "rpc"),
    ("replog", "http"),
    ("etcd", "grpc"),
    ("etcd", "gateway"),
    ("pysyncobj", "http"),
)
CLIENT_LABELS = {
    "rpc": "binary protocol",
    "http": "HTTP",
    "grpc": "Go gRPC client",
    "gateway": "JSON gateway",
}
Result = dict[str, Any]  # throughput_ops_s, p50_ms, p90_ms, p99_ms, max_ms, errors, cpu_cores


def make_system(name: str, root: Path, args: argparse.Namespace) -> Any:
    if name == "replog":
        return ReplogSystem(root / "replog", args.nodes)
    if name == "etcd":
        return EtcdSystem(root / "etcd", args.nodes)
    return PySyncObjSystem(root / "pysyncobj", args.nodes, batch=args.pysyncobj_batch)


def from_report(report: Report) -> Result:
    latency = report.latency
    return {
        "throughput_ops_s": report.throughput_ops_s,
        "p50_ms": latency.p50_ms,
        "p90_ms": latency.p90_ms,
        "p99_ms": latency.p99_ms,
        "max_ms": latency.max_ms,
        "errors": report.error_count,
        "cpu_cores": report.cpu_cores,
        "raw": report.to_json(),
    }


def from_gobench(found: dict[str, Any]) -> Result:
    latency = found["latency_ms"]
    return {
        "throughput_ops_s": found["throughput_ops_s"],
        "p50_ms": latency["p50"],
        "p90_ms": latency["p90"],
        "p99_ms": latency["p99"],
        "max_ms": latency["max"],
        "errors": found["error_count"],
        "cpu_cores": found.get("generator_cores", 0.0),
        "raw": found,
    }


def run_case(system: Any, client: str, case: Case, args: argparse.Namespace) -> Result:
    workload = case.workload
    if client == "grpc":
        hosts = [url.removeprefix("http://") for url in system.endpoints]
        found = etcd_gobench.run(
            hosts,
            op=workload.name,
            clients=workload.clients,
            duration_s=workload.duration_s,
            value_size=workload.value_size_bytes,
            key_space=workload.key_space,
            target_leader=args.send_to == "leader",
        )
        return from_gobench(found)
    config = BenchConfig(
        endpoints=tuple(system.endpoints),
        workload=workload,
        target=system.target,
        processes=args.processes,
        send_to=args.send_to,
        protocol="rpc" if client == "rpc" else "http",
    )
    return from_report(run_bench(config))


def clients_of(name: str, args: argparse.Namespace) -> list[str]:
    chosen = [c for s, c in COLUMNS if s == name and c in args.clients]
    if "grpc" in chosen:
        reason = etcd_gobench.unavailable_reason()
        if reason is not None:
            print(f"etcd: no Go gRPC client run: {reason}", file=sys.stderr)
            chosen.remove("grpc")
    return chosen


def measure(
    system: Any, name: str, all_cases: list[Case], args: argparse.Namespace
) -> dict[str, dict[str, Result]]:
    """{client: {case: result}} for every client of this system."""
    results: dict[str, dict[str, Result]] = {}
    for client in clients_of(name, args):
        results[client] = {}
        for case in all_cases:
            results[client][case.name] = r = run_case(system, client, case, args)
            print(
                f"  {name:9} {client:7} {case.name:9} {r['throughput_ops_s']:10,.1f} ops/s  "
                f"p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  "
                f"errors {r['errors']}  generator {r['cpu_cores']:.2f} cores",
                file=sys.stderr,
            )
    return results


def measure_interleaved(
    systems: dict[str, Any], all_cases: list[Case], args: argparse.Namespace
) -> tuple[dict[str, dict[str, dict[str, Result]]], dict[str, Any]]:
    """``--rounds``: every case on every system back to back, round after round. Returns the
    median round of each cell and every round's results."""
    clients = {name: clients_of(name, args) for name in systems}
    rounds: dict[str, dict[str, dict[str, list[Result]]]] = {
        name: {client: {case.name: [] for case in all_cases} for client in clients[name]}
        for name in systems
    }
    for r in range(args.rounds):
        order = list(systems) if r % 2 == 0 else list(reversed(systems))
        for case in all_cases:
            for name in order:
                for client in clients[name]:
                    result = run_case(systems[name], client, case, args)
                    rounds[name][client][case.name].append(result)
                    print(
                        f"  round {r + 1} {name:9} {client:7} {case.name:9} "
                        f"{result['throughput_ops_s']:10,.1f} ops/s  "
                        f"p50 {result['p50_ms']:8.2f} ms  errors {result['errors']}",
                        file=sys.stderr,
                    )
    medians = {
        name: {
            client: {case: _median_round(runs) for case, runs in by_case.items()}
            for client, by_case in by_client.items()
        }
        for name, by_client in rounds.items()
    }
    return medians, rounds


def _median_round(runs: list[Result]) -> Result:
    """The run whose throughput is the median (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["throughput_ops_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rounds_ops_s"] = [round(r["throughput_ops_s"], 1) for r in runs]
    chosen["rounds_p50_ms"] = [r["p50_ms"] for r in runs]
    chosen["median_p50_ms"] = statistics.median(r["p50_ms"] for r in runs)
    return chosen


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def best(results: dict[str, dict[str, dict[str, Result]]], system: str) -> str | None:
    """The first column of ``system`` that ran (COLUMNS lists each system's best first)."""
    for s, client in COLUMNS:
        if s == system and client in results.get(system, {}):
            return client
    return None


def table(all_cases: list[Case], results: dict[str, dict[str, dict[str, Result]]]) -> Table:
    columns = [(s, c) for s, c in COLUMNS if c in results.get(s, {})]
    out = Table(box=box.SIMPLE_HEAD, title="throughput ops/s (p50 / p99 ms)")
    out.add_column("workload")
    for system, client in columns:
        out.add_column(f"{system}\n{CLIENT_LABELS[client]}", justify="right")
    mine = best(results, "replog")
    others = [(o, best(results, o)) for o in ("etcd", "pysyncobj")]
    others = [(o, c) for o, c in others if c is not None and mine is not None]
    for other, client in others:
        out.add_column(f"replog/{other}\n({mine} / {client})", justify="right")
    for case in all_cases:
        row = [case.label]
        for system, client in columns:
            r = results[system][client][case.name]
            errors = f" [{r['errors']} err]" if r["errors"] else ""
            row.append(
                f"{r['throughput_ops_s']:,.0f} ({r['p50_ms']:.1f} / {r['p99_ms']:.1f})" + errors
            )
        for other, client in others:
            assert mine is not None and client is not None
            a = results["replog"][mine][case.name]
            b = results[other][client][case.name]
            row.append(
                f"{ratio(a['throughput_ops_s'], b['throughput_ops_s'])} "
                f"(p50 {ratio(a['p50_ms'], b['p50_ms'])})"
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
    parser.add_argument("--many-clients", type=int, default=1000, help="the many-client put")
    parser.add_argument("--clients", default="rpc,http,grpc,gateway",
                        help="comma-separated clients to drive the systems with")  # fmt: skip
    parser.add_argument("--value-size", type=int, default=256, help="bytes per value")
    parser.add_argument("--processes", type=int, default=None, help="generator processes")
    parser.add_argument("--send-to", choices=["all", "leader"], default="leader")
    parser.add_argument("--etcdctl-load", choices=["s", "m", "l", "none"], default="s")
    parser.add_argument("--pysyncobj-batch", action="store_true",
                        help="PySyncObj's default batched appends (100 ms period)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1,
                        help="N > 1: all systems up together, cases interleaved")  # fmt: skip
    parser.add_argument("--output", choices=["table", "json"], default="table")
    parser.add_argument("--save", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    args.clients = [c for c in args.clients.split(",") if c]
    bad_clients = set(args.clients) - set(CLIENT_LABELS)
    if bad_clients:
        parser.error(f"unknown clients: {', '.join(sorted(bad_clients))}")
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    all_cases = cases(args.duration, args.many_clients, args.value_size)
    results: dict[str, dict[str, dict[str, Result]]] = {}
    described: dict[str, str] = {}
    etcdctl: dict[str, Any] | None = None
    every_round: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="replog-compare-") as tmp:
        if args.rounds > 1:
            with contextlib.ExitStack() as stack:
                systems: dict[str, Any] = {}
                for name in args.systems:
                    print(f"{name}: starting", file=sys.stderr)
                    systems[name] = stack.enter_context(make_system(name, Path(tmp), args))
                    described[name] = systems[name].describe()
                results, every_round = measure_interleaved(systems, all_cases, args)
                if "etcd" in systems and args.etcdctl_load != "none":
                    print(f"etcd: etcdctl check perf --load={args.etcdctl_load}", file=sys.stderr)
                    etcdctl = run_etcdctl_check_perf(systems["etcd"].endpoints, args.etcdctl_load)
        else:
            for name in args.systems:
                print(f"{name}: starting", file=sys.stderr)
                with make_system(name, Path(tmp), args) as system:
                    described[name] = system.describe()
                    results[name] = measure(system, name, all_cases, args)
                    if name == "etcd" and args.etcdctl_load != "none":
                        load = args.etcdctl_load
                        print(f"etcd: etcdctl check perf --load={load}", file=sys.stderr)
                        etcdctl = run_etcdctl_check_perf(system.endpoints, load)
    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "benchmarks/compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "systems": described,
        "cases": {c.name: c.label for c in all_cases},
        "results": results,
        "rounds": every_round,
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
