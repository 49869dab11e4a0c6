"""``replog bench``: the load generator's command line (see ``replog.bench``).

Exit codes: 0 the run completed (failed operations are counted in the report, not fatal), 1 the
run could not be done (no leader, a generator process died), 2 bad usage.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from replog.bench import TARGETS, WORKLOADS, BenchConfig, BenchError, Report, Workload, run_bench
from replog.bench.generator import CONNECTIONS_PER_PROCESS_MAX, PROTOCOLS, ProgressCallback
from replog.bench.workloads import CLIENTS_MAX, PROCESSES_MAX, VALUE_SIZE_MAX_BYTES
from replog.client import DEFAULT_ENDPOINTS
from replog.client._policy import normalize_endpoints

__all__ = ["bench", "parse_size"]

ENV_ENDPOINTS = "REPLOG_ENDPOINTS"
_GROUP_ENDPOINTS = "replog.client.endpoints"  # set by the group's --endpoints (cli.kv)
_GROUP_OUTPUT = "replog.client.output"
_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024}
_UNITS.update({"m": 1024 * 1024, "mb": 1024 * 1024, "mib": 1024 * 1024})


def parse_size(text: str) -> int:
    """Bytes from ``256``, ``4k``, ``4KiB``, ``1MiB`` (K and M are powers of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (examples: 256, 4KiB, 1MiB)")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _UNITS[unit]


class SizeType(click.ParamType):  # type: ignore[type-arg]
    name = "BYTES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)
        if size > VALUE_SIZE_MAX_BYTES:
            self.fail(f"at most {VALUE_SIZE_MAX_BYTES} bytes", param, ctx)
        return size


def _endpoints(given: str | None) -> tuple[str, ...]:
    meta = click.get_current_context().meta
    text = given or meta.get(_GROUP_ENDPOINTS) or os.environ.get(ENV_ENDPOINTS)
    if not text:
        return DEFAULT_ENDPOINTS
    try:
        return normalize_endpoints(text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--endpoints'") from None


@contextmanager
def _progress_bar(workload: Workload, show: bool) -> Iterator[ProgressCallback | None]:
    if not show:
        yield None
        return
    total = workload.count if workload.count is not None else workload.duration_s
    console = Console(file=sys.stderr)
    columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=total)

        def update(ok: int, failed: int, elapsed_s: float) -> None:
            rate = ok / elapsed_s if elapsed_s > 0 else 0.0
            done = ok + failed if workload.count is not None else elapsed_s
            description = f"{ok:,} ok {failed:,} failed {rate:,.0f} ops/s"
            progress.update(task, completed=done, description=description)

        yield update


def _print_table(report: Report) -> None:
    table = Table(show_header=False, box=box.SIMPLE)
    for label, value in report.lines():
        table.add_row(label, value)
    Console(file=sys.stdout, highlight=False, soft_wrap=False, width=140).print(table)


@click.command("bench")
@click.option(
    "--endpoints",
    metavar="URL,...",
    default=None,
    help=f"Client URLs [env {ENV_ENDPOINTS}; default: the replog dev cluster].",
)
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="replog",
    show_default=True,
    help="The API spoken: replog, etcd (its JSON gateway) or pysyncobj "
    "(benchmarks/pysyncobj_server.py).",
)
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    default="http",
    show_default=True,
    help="http: the HTTP API; rpc: replog's binary client protocol (--target replog only; "
    "each node's RPC address is read from its /v1/status).",
)
@click.option(
    "--connections-per-process",
    type=click.IntRange(1, CONNECTIONS_PER_PROCESS_MAX),
    default=4,
    show_default=True,
    help="With --protocol rpc: connections each generator process opens per node; its "
    "clients share them, round-robin.",
)
@click.option(
    "--idempotency-keys/--no-idempotency-keys",
    default=False,
    show_default=True,
    help="Give every put an idempotency key, as the Python clients do (--target replog "
    "only): each node then also checks and remembers it.",
)
@click.option(
    "--workload",
    "-w",
    "name",
    type=click.Choice(WORKLOADS),
    default="put",
    show_default=True,
    help="put; get (linearizable); stale-get; mixed.",
)
@click.option(
    "--read-fraction",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Share of reads in the mixed workload.",
)
@click.option(
    "--mixed-read",
    type=click.Choice(["get", "stale-get"]),
    default="get",
    show_default=True,
    help="The kind of read in the mixed workload.",
)
@click.option(
    "--value-size",
    type=SizeType(),
    default="256",
    show_default=True,
    help="Bytes per value (256, 4KiB, 64KiB ...).",
)
@click.option(
    "--key-space",
    type=click.IntRange(1, 10_000_000),
    default=1000,
    show_default=True,
    help="Number of distinct keys.",
)
@click.option("--key-prefix", default="bench/", show_default=True, help="Prefix of every key.")
@click.option(
    "--clients",
    "-c",
    type=click.IntRange(1, CLIENTS_MAX),
    default=16,
    show_default=True,
    help="Concurrent clients (one request in flight each).",
)
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(1, PROCESSES_MAX),
    default=None,
    help="Generator processes [default: one per CPU, at most one per client].",
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Run this long [default: 10].",
)
@click.option(
    "--count",
    "-n",
    type=click.IntRange(min=1),
    default=None,
    help="Run this many operations in all (instead of --duration).",
)
@click.option(
    "--send-to",
    type=click.Choice(["all", "leader", "followers"]),
    default="all",
    show_default=True,
    help="all: clients spread over every endpoint; leader: only the leader; followers: over "
    "the other endpoints (they forward writes to the leader).",
)
@click.option(
    "--leader-wait",
    "leader_wait_s",
    type=click.FloatRange(min=0, max=600),
    default=15.0,
    show_default=True,
    metavar="SECONDS",
    help="With --send-to leader or followers: how long to look for the leader.",
)
@click.option(
    "--preload/--no-preload",
    default=True,
    show_default=True,
    help="Write every key once before a workload with reads.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True, max=600),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Per-request timeout.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of keys and values.")
@click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default=None,
    help="table (for people) or json [default: table].",
)
@click.option(
    "--progress/--no-progress",
    "show_progress",
    default=None,
    help="Progress bar on stderr [default: when stderr is a terminal].",
)
def bench(**options: Any) -> None:
    """Load a cluster with many concurrent clients and report throughput and latency.

    Clients are spread over several generator processes, each running asyncio (on uvloop when
    it is installed) with persistent HTTP/1.1 connections (one request in flight per client:
    aiohttp has no HTTP pipelining, so concurrency comes from many keep-alive connections). With
    --protocol rpc the clients of a process share a few connections of the binary protocol
    instead, with many requests in flight on each. Latency percentiles come from a log-linear
    histogram (within about 1%); the generator's own CPU use is reported.
    """
    config = _config(options)
    output = options["output"] or click.get_current_context().meta.get(_GROUP_OUTPUT) or "table"
    show_progress = options["show_progress"]
    if show_progress is None:
        show_progress = sys.stderr.isatty() and output == "table"
    try:
        with _progress_bar(config.workload, show_progress) as on_progress:
            report = run_bench(config, on_progress)
    except BenchError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if output == "json":
        click.echo(json.dumps(report.to_json()))
    else:
        _print_table(report)


def _config(options: dict[str, Any]) -> BenchConfig:
    if options["duration_s"] is not None and options["count"] is not None:
        raise click.UsageError("give --duration or --count, not both")
    try:
        workload = Workload(
            name=options["name"],
            value_size_bytes=options["value_size"],
            key_space=options["key_space"],
            key_prefix=options["key_prefix"],
            read_fraction=options["read_fraction"],
            mixed_read=options["mixed_read"],
            clients=options["clients"],
            duration_s=options["duration_s"],
            count=options["count"],
            timeout_s=options["timeout_s"],
        )
        return BenchConfig(
            endpoints=_endpoints(options["endpoints"]),
            workload=workload,
            target=options["target"],
            processes=options["processes"],
            send_to=options["send_to"],
            preload=options["preload"],
            seed=options["seed"],
            leader_wait_s=options["leader_wait_s"],
            protocol=options["protocol"],
            connections_per_process=options["connections_per_process"],
            idempotency_keys=options["idempotency_keys"],
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
