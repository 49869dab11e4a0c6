"""The ``replog sim`` command: run the deterministic cluster simulator over many seeds.

Each seed is one world (its own fault mix, timing and client load); a violation prints the
seed, the command that replays it, and the tail of its trace, and exits with status 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import click

from replog.testing.cluster import StoreFactory
from replog.testing.durable import MemoryStore
from replog.testing.sim import RunSummary, SeedResult, SimConfig, run_seed, run_seeds
from replog.testing.walstore import WalStore

DEFAULT_EVENTS = SimConfig().events
STORES: dict[str, StoreFactory] = {"memory": MemoryStore, "wal": WalStore}


@click.command()
@click.option(
    "--seeds",
    "count",
    type=click.IntRange(min=1),
    default=None,
    help="How many seeds to run [default: 100, or 1 with --seed].",
)
@click.option(
    "--seed",
    "first_seed",
    type=click.IntRange(min=0),
    default=None,
    help="Run this seed (with --seeds N: seeds S..S+N-1). Default: a random start, printed.",
)
@click.option(
    "--nodes",
    type=click.Choice(["3", "5", "7"]),
    default="3",
    show_default=True,
    help="Cluster size.",
)
@click.option(
    "--events",
    type=click.IntRange(min=1),
    default=DEFAULT_EVENTS,
    show_default=True,
    help="Events of the safety phase (faults on) per seed, before the liveness phase.",
)
@click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Summary format.",
)
@click.option(
    "--store",
    type=click.Choice(["wal", "memory"]),
    default="wal",
    show_default=True,
    help="Durable store of each node: the real WAL on a simulated, faulty disk, or an "
    "in-memory model store (faster, no disk faults).",
)
@click.option(
    "--disk-faults/--no-disk-faults",
    default=True,
    show_default=True,
    help="With --store wal: I/O errors (EIO, ENOSPC) that stop a node, and bit flips on a "
    "minority of the disks, drawn per seed. Crashes lose unsynced writes either way.",
)
@click.option("--trace", is_flag=True, help="Print every trace line of one seed as it runs.")
@click.option(
    "--keep-going", is_flag=True, help="Run every seed even after a violation (default: stop)."
)
@click.option(
    "--linearizability/--no-linearizability",
    default=True,
    show_default=True,
    help="Check each seed's client history for linearizability.",
)
def sim(
    *,
    count: int | None,
    first_seed: int | None,
    nodes: str,
    events: int,
    output: str,
    store: str,
    disk_faults: bool,
    trace: bool,
    keep_going: bool,
    linearizability: bool,
) -> None:
    """Run the deterministic cluster simulator.

    Every seed builds its own world: a fault mix (message loss, duplication, reordering,
    partitions of every shape, crashes with restarts from durable state, pauses, leadership
    transfers, and by default disk faults: unsynced writes lost or torn at a crash, EIO and
    ENOSPC on chosen disk calls, bit flips on a minority of the disks) and client load.
    Safety invariants are checked after every event; then faults stop, the cluster is
    repaired and must elect a leader and commit within a bound; then the client history is
    checked for linearizability. The same seed always replays the same run.

    \b
    Examples:
      replog sim --seeds 500                 500 seeds from a random start
      replog sim --seed 42                   replay seed 42
      replog sim --seed 42 --trace           every event of seed 42
      replog sim --seeds 50 --nodes 5 --output json
    """
    if count is None:
        count = 1 if first_seed is not None else 100
    start = first_seed if first_seed is not None else int.from_bytes(os.urandom(4), "big") >> 1
    config = SimConfig(
        nodes=int(nodes),
        events=events,
        check_linearizability=linearizability,
        disk_faults=disk_faults and store == "wal",
    )
    factory = STORES[store]
    if trace:
        if count != 1:
            raise click.UsageError("--trace prints one seed: give --seed S without --seeds N")
        _trace_one(start, config, factory, store)
        return
    progress = _progress(count)
    summary = run_seeds(
        range(start, start + count),
        config,
        stop_on_failure=not keep_going,
        store_factory=factory,
        on_result=progress,
    )
    if progress is not None:
        click.echo("", err=True)
    if output == "json":
        click.echo(json.dumps({"first_seed": start, **summary.to_json()}, indent=2))
    else:
        _print_text(summary, start, count, config, store)
    if summary.violations:
        failure = summary.failures[0]
        click.echo(f"violation in seed {failure.seed}: {_replay(failure, config, store)}", err=True)
        sys.exit(1)


def _progress(count: int) -> Callable[[SeedResult], None] | None:
    """A seed counter on stderr, only when it is a terminal."""
    if not sys.stderr.isatty():
        return None
    done = [0, 0]

    def show(result: SeedResult) -> None:
        done[0] += 1
        done[1] += result.failed
        click.echo(f"\r{done[0]}/{count} seeds, {done[1]} violations", err=True, nl=False)

    return show


def _trace_one(seed: int, config: SimConfig, factory: StoreFactory, store: str) -> None:
    result = run_seed(seed, config, trace_sink=click.echo, store_factory=factory)
    click.echo(f"# {_one_line(result)}")
    if result.failed:
        click.echo(f"# VIOLATION: {result.violation}")
        click.echo(f"# replay: {_replay(result, config, store)}")
        sys.exit(1)


def _replay(result: SeedResult, config: SimConfig, store: str) -> str:
    command = f"replog sim --seed {result.seed} --nodes {config.nodes} --events {config.events}"
    if store != "wal":
        return f"{command} --store {store}"
    return command if config.disk_faults else f"{command} --no-disk-faults"


def _one_line(result: SeedResult) -> str:
    return (
        f"seed {result.seed}: {result.events} events, {result.virtual_ms} virtual ms, "
        f"{result.elections} elections, {result.commits} commits, {result.reads} reads, "
        f"linearizability {result.linearizability}, trace {result.trace_digest}"
    )


def _print_text(summary: RunSummary, start: int, count: int, config: SimConfig, store: str) -> None:
    events_per_s = summary.events / summary.wall_s if summary.wall_s > 0 else 0.0
    faults = ", ".join(f"{kind} {n}" for kind, n in sorted(summary.faults.items())) or "none"
    checks = ", ".join(f"{k} {n}" for k, n in sorted(summary.linearizability.items()))
    rows = [
        ("seeds", f"{summary.seeds} of {start}..{start + count - 1}, {config.nodes} nodes"),
        ("store", store + (" with disk faults" if config.disk_faults else "")),
        ("events", f"{summary.events:,} ({summary.events_per_seed:,.0f} per seed)"),
        ("elections", f"{summary.elections:,}"),
        ("commits", f"{summary.commits:,}"),
        ("reads", f"{summary.reads:,}"),
        ("snapshots", f"{summary.snapshots:,}"),
        ("faults", faults),
        ("linearizability", checks or "not checked"),
        ("liveness", f"slowest recovery {summary.liveness_ms_max}ms of virtual time"),
        ("violations", f"{summary.violations}"),
        ("speed", f"{summary.seeds_per_s:.2f} seeds/s, {events_per_s:,.0f} events/s"),
    ]
    for name, value in rows:
        click.echo(f"{name:<15} {value}")
    for failure in summary.failures:
        click.echo("")
        click.echo(f"FAIL seed {failure.seed}: {failure.violation}")
        click.echo(f"world: {failure.plan}")
        click.echo(f"replay: {_replay(failure, config, store)}")
        click.echo(f"trace tail (last {len(failure.trace_tail)} events):")
        for line in failure.trace_tail:
            click.echo(f"  {line}")
    click.echo("PASS" if not summary.violations else "FAIL")
