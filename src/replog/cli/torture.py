"""The ``replog torture`` command: a fault run on real ``replog serve`` processes.

It starts a cluster on 127.0.0.1, drives the chosen workloads while injecting a seeded fault
schedule, checks every history and prints a report. Exit status: 0 clean, 1 a violation (the
folder with the histories and node logs is printed), 2 bad usage.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click

from replog.testing.torture import TortureConfig, TortureReport, find_faketime, run_torture
from replog.testing.torture_faults import FAULT_KINDS
from replog.testing.torture_workloads import WORKLOADS

EXIT_VIOLATION = 1


def _split(value: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if items == ("all",):
        return known
    if items == ("none",) and what == "fault kind":
        return ()
    unknown = [item for item in items if item not in known]
    if unknown or not items:
        raise click.BadParameter(
            f"unknown {what} {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(known)} or all"
        )
    return items


@click.command()
@click.option(
    "--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True, help="Cluster size."
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds of faults and client load.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Seed of the fault schedule and clients [default: random, printed].",
)
@click.option(
    "--workload",
    "workload",
    default="all",
    show_default=True,
    help=f"Comma-separated workloads: {', '.join(WORKLOADS)} or all.",
)
@click.option(
    "--faults",
    default="all",
    show_default=True,
    help=f"Comma-separated fault kinds: {', '.join(FAULT_KINDS)}, all or none.",
)
@click.option(
    "--clients",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Client threads per workload.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for histories, node logs and the report [default: a new temp dir].",
)
@click.option(
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Report format.",
)
@click.option(
    "--unreachable-writes",
    type=click.Choice(["fail", "info"]),
    default="fail",
    show_default=True,
    help="How to record a write that failed with Unavailable because no node answered: fail "
    "(the client promises it was not applied) or info (unknown; works around a client that "
    "breaks the promise when the node dies under a write).",
)
@click.option(
    "--protocol",
    type=click.Choice(["http", "rpc", "both"]),
    default="both",
    show_default=True,
    help="The clients' protocol: HTTP (replog.Client), the binary protocol (replog.RpcClient, "
    "one attempt per call) or both (every other client of each workload uses RPC).",
)
def torture(
    *,
    nodes: str,
    duration_s: float,
    seed: int | None,
    workload: str,
    faults: str,
    clients: int,
    out: str | None,
    output: str,
    unreachable_writes: str,
    protocol: str,
) -> None:
    """Run a cluster of real processes under faults and check what the clients saw.

    Faults: kill (SIGKILL and restart a node or the leader), pause (SIGSTOP/SIGCONT of the
    leader), partition (peer links dropped, cut or slowed through a proxy), crash-all (every
    node killed and restarted), clock (forward clock jumps through libfaketime, with lease reads
    on; skipped with a note when faketime is not installed). See docs/torture.md.

    \b
    Examples:
      replog torture --duration 60
      replog torture --nodes 5 --duration 1800 --faults all --seed 7
      replog torture --workload bank --faults kill,partition --output json
      replog torture --protocol rpc --faults kill --duration 120
    """
    workloads = _split(workload, WORKLOADS, "workload")
    kinds = _split(faults, FAULT_KINDS, "fault kind")
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big") >> 1
    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix=f"replog-torture-{seed}-"))
    if "clock" in kinds and find_faketime() is None:
        click.echo(
            "note: clock faults skipped: libfaketime not found (apt-get install faketime)", err=True
        )
    config = TortureConfig(
        nodes=int(nodes),
        duration_s=duration_s,
        seed=seed,
        workloads=workloads,
        faults=kinds,
        clients=clients,
        out=folder,
        unreachable_writes=unreachable_writes,
        protocol=protocol,
    )
    click.echo(
        f"torture: seed {seed}, {nodes} nodes, {duration_s:g}s, {protocol} clients, "
        f"output in {folder}",
        err=True,
    )
    report = run_torture(config)
    if output == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_table(report)
    if not report.clean:
        click.echo(f"VIOLATION: histories and node logs are in {report.out}", err=True)
        sys.exit(EXIT_VIOLATION)


def _print_table(report: TortureReport) -> None:
    failover = report.failover
    if failover.get("count"):
        failover_text = (
            f"{failover['count']} leader kills: min {failover['min_s']}s, "
            f"median {failover['median_s']}s, max {failover['max_s']}s"
        )
    else:
        failover_text = "no leader kill measured"
    rows = [
        ("seed", f"{report.seed} ({report.nodes} nodes, {report.duration_s:g}s)"),
        ("folder", str(report.out)),
        ("faults", ", ".join(f"{k} {n}" for k, n in report.faults.items()) or "none"),
        ("failover", failover_text),
    ]
    for name, counts in report.ops.items():
        text = ", ".join(f"{k} {n}" for k, n in counts.items())
        rows.append((f"ops {name}", f"{text} -> {report.verdicts.get(name, '?')}"))
        for protocol, by_kind in report.ops_by_protocol.get(name, {}).items():
            text = ", ".join(f"{k} {n}" for k, n in by_kind.items())
            rows.append((f"  over {protocol}", text))
    rows.extend(("note", note) for note in report.notes)
    for name, value in rows:
        click.echo(f"{name:<15} {value}")
    for name, problems in report.problems.items():
        for problem in problems:
            click.echo(f"PROBLEM {name}: {problem}")
    click.echo("PASS" if report.clean else "FAIL")
