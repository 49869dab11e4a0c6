"""Curves: throughput and p99 latency of puts against clients, value size and cluster size.

Sweeps (each point one run of ``--duration`` seconds, each system alone, every client sending
to the leader), for each column ``SYSTEM:CLIENT`` of ``--columns`` (default replog over its
binary protocol and etcd through its Go gRPC client, each system's fastest client; see
``compare.py`` for the clients):

* clients 1 to 1024 (256-byte values, 3 members) -> ``docs/bench-clients.png``;
* value size 16 B to 64 KiB (16 clients, 3 members) -> ``docs/bench-value-size.png``;
* cluster size 3, 5, 7 (64 clients, 256-byte values) -> ``docs/bench-cluster-size.png``.

The measured points are written to ``benchmarks/results/curves.json``; ``--plot-only`` redraws
the PNGs from that file without measuring. Needs matplotlib (``pip install -e '.[bench]'``).

    .venv/bin/python benchmarks/plots.py --duration 5 --columns replog:rpc,etcd:grpc
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import CLIENT_LABELS, COLUMNS, Case, machine, run_case
from systems import EtcdSystem, ReplogSystem

from replog.bench import Workload

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "results" / "curves.json"
CLIENTS = (1, 4, 16, 64, 256, 1024)
VALUE_SIZES = (16, 256, 4096, 16384, 65536)
CLUSTER_SIZES = (3, 5, 7)
SWEEPS = {
    "clients": ("number of clients", "bench-clients.png"),
    "value_size": ("value size (bytes)", "bench-value-size.png"),
    "cluster_size": ("cluster size (members)", "bench-cluster-size.png"),
}


def make(system: str, root: Path, size: int) -> Any:
    """A fresh cluster in a directory of its own (data of an earlier cluster is never reused)."""
    path = Path(tempfile.mkdtemp(prefix=f"{system}-{size}-", dir=root))
    if system == "replog":
        return ReplogSystem(path, size)
    return EtcdSystem(path, size)


def point(
    system: Any, client: str, clients: int, value_size: int, args: argparse.Namespace
) -> dict[str, Any]:
    workload = Workload(name="put", clients=clients, value_size_bytes=value_size,
                        duration_s=args.duration, key_space=1000)  # fmt: skip
    result = run_case(system, client, Case("put", "put", workload), args)
    print(f"  {system.target}:{client} clients={clients} value={value_size} -> "
          f"{result['throughput_ops_s']:,.0f} ops/s p99 {result['p99_ms']:.1f} ms "
          f"errors {result['errors']}", file=sys.stderr)  # fmt: skip
    return {
        "throughput_ops_s": result["throughput_ops_s"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": result["errors"],
        "generator_cpu_cores": result["cpu_cores"],
    }


def measure(
    columns: list[tuple[str, str]],
    args: argparse.Namespace,
    tmp: Path,
    save: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Every sweep for every column; ``save(curves)`` after each column (partial results)."""
    curves: dict[str, Any] = {sweep: {} for sweep in SWEEPS}
    for name, client in columns:
        label = f"{name} ({CLIENT_LABELS[client]})"
        for sweep in SWEEPS:
            curves[sweep][label] = []
        with make(name, tmp, 3) as system:
            for clients in CLIENTS:
                result = point(system, client, clients, 256, args)
                curves["clients"][label].append({"x": clients, **result})
            for size in VALUE_SIZES:
                result = point(system, client, 16, size, args)
                curves["value_size"][label].append({"x": size, **result})
        for members in CLUSTER_SIZES:
            with make(name, tmp, members) as system:
                result = point(system, client, 64, 256, args)
                curves["cluster_size"][label].append({"x": members, **result})
        save(curves)
    return curves


def _tick(x: int, sweep: str) -> str:
    if sweep == "value_size" and x >= 1024:
        return f"{x // 1024} KiB"
    return str(x)


def draw(document: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for sweep, (xlabel, filename) in SWEEPS.items():
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for name, points in document["curves"][sweep].items():
            xs = [p["x"] for p in points]
            left.plot(xs, [p["throughput_ops_s"] for p in points], marker="o", label=name)
            right.plot(xs, [p["p99_ms"] for p in points], marker="o", label=name)
        for axis, ylabel in ((left, "puts per second"), (right, "p99 latency (ms)")):
            axis.set_xlabel(xlabel)
            axis.set_ylabel(ylabel)
            axis.grid(True, alpha=0.3)
            axis.legend()
            if sweep != "cluster_size":
                axis.set_xscale("log", base=2)
            curves = document["curves"][sweep].values()
            ticks = sorted({p["x"] for points in curves for p in points})
            axis.set_xticks(ticks, [_tick(x, sweep) for x in ticks])
            axis.minorticks_off()
        right.set_yscale("log")
        right.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        right.yaxis.set_major_formatter(ScalarFormatter())
        right.yaxis.set_minor_formatter(NullFormatter())
        figure.suptitle(
            f"puts, {document['duration_s']:g} s per point, {document['machine']} "
            f"({document['date'][:10]})",
            fontsize=9,
        )
        figure.tight_layout()
        figure.savefig(out_dir / filename, dpi=90)
        plt.close(figure)
        print(f"wrote {out_dir / filename}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="benchmark curves as PNG plots")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--columns", default="replog:rpc,etcd:grpc",
                        help="SYSTEM:CLIENT,... (replog:rpc, replog:http, etcd:grpc, "
                        "etcd:gateway)")  # fmt: skip
    parser.add_argument("--data", type=Path, default=DATA, help="where the points are kept")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    parser.add_argument("--plot-only", action="store_true", help="redraw from --data")
    args = parser.parse_args(argv)
    args.send_to, args.processes = "leader", None  # what compare.run_case reads
    columns = [tuple(c.split(":", 1)) for c in args.columns.split(",") if c]
    for column in columns:
        if len(column) != 2 or column not in COLUMNS:
            parser.error(f"unknown column {':'.join(column)!r}")
    if not args.plot_only:

        def save(curves: dict[str, Any]) -> None:
            document = {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "duration_s": args.duration,
                "curves": curves,
            }
            args.data.parent.mkdir(parents=True, exist_ok=True)
            args.data.write_text(json.dumps(document, indent=1) + "\n")

        with tempfile.TemporaryDirectory(prefix="replog-curves-") as tmp:
            measure(columns, args, Path(tmp), save)  # type: ignore[arg-type]
    draw(json.loads(args.data.read_text()), args.out_dir)


if __name__ == "__main__":
    main()
