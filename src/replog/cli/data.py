"""The ``replog data`` commands: look at a node's data directory.

``replog data inspect DIR`` lists the metadata, the WAL segments (first/last index, bytes,
records), the hard state, the snapshots and any damage, and what a node starting on the
directory would do about it. It only reads. Exit status: 0 when the directory is clean, 1
when damage was found (a torn tail, a damaged snapshot, corruption), 2 on usage errors.
Inspect a stopped node: a running node's last write may look torn while it is in flight.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from replog.storage.disk import OsDisk
from replog.storage.errors import StorageError
from replog.storage.survey import DirectoryReport, inspect_directory


@click.group()
def data() -> None:
    """Inspect a node's data directory (WAL segments, hard state, snapshots)."""


@data.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def inspect(directory: str, output: str) -> None:
    """Show what DIRECTORY holds and any damage, without changing anything."""
    try:
        report = inspect_directory(OsDisk(), directory)
    except (StorageError, OSError) as error:
        raise click.ClickException(f"cannot inspect {directory}: {error}") from error
    if output == "json":
        click.echo(json.dumps(report_json(report), indent=2))
    else:
        console = Console()
        print_report(report, console if console.is_terminal else Console(width=120))
    if report.damaged:
        raise click.exceptions.Exit(1)


def report_json(report: DirectoryReport) -> dict[str, Any]:
    hs = report.hard_state
    return {
        "directory": report.directory,
        "verdict": report.verdict,
        "metadata": report.metadata,
        "hard_state": None
        if hs is None
        else {"term": hs.term, "voted_for": hs.voted_for, "commit_index": hs.commit_index},
        "log": {
            "first_index": report.log_first_index,
            "last_index": report.log_last_index,
            "snapshot_index": report.snapshot_index,
        },
        "segments": [
            {
                "name": s.name,
                "seq": s.seq,
                "first_index": s.first_index,
                "first_entry": s.first_entry or None,
                "last_entry": s.last_entry or None,
                "bytes": s.bytes,
                "unused_bytes": s.unused_bytes,
                "records": s.records,
                "batches": s.batches,
                "damage_offset": s.damage_offset,
                "status": s.status,
            }
            for s in report.segments
        ],
        "snapshots": [
            {
                "name": s.name,
                "index": s.index,
                "term": s.term,
                "bytes": s.bytes,
                "voters": s.voters,
                "status": s.status,
            }
            for s in report.snapshots
        ],
        "findings": [
            {
                "severity": f.severity.value,
                "path": f.path,
                "offset": f.offset,
                "rule": f.rule,
                "message": f.message,
            }
            for f in report.findings
        ],
    }


def print_report(report: DirectoryReport, console: Console) -> None:
    meta = report.metadata or {}
    console.print(f"[bold]{report.directory}[/bold]  verdict: [bold]{report.verdict}[/bold]")
    if "error" in meta:
        console.print(f"metadata: [red]{meta['error']}[/red]")
    elif meta:
        console.print(
            f"metadata: cluster {meta['cluster_id']!r}, node {meta['node_id']}, "
            f"format version {meta['format_version']}"
        )
    else:
        console.print("metadata: none (empty directory)")
    hs = report.hard_state
    if hs is not None:
        console.print(
            f"hard state: term {hs.term}, voted for {hs.voted_for}, commit {hs.commit_index}"
        )
        console.print(
            f"log: {report.log_first_index}..{report.log_last_index}, snapshot index "
            f"{report.snapshot_index if report.snapshot_index is not None else '-'}"
        )
    console.print(_segment_table(report))
    console.print(_snapshot_table(report))
    for f in report.findings:
        where = f.path if f.offset is None else f"{f.path} @ {f.offset}"
        console.print(f"[{f.severity.value}] {where} ({f.rule}): {f.message}", markup=False)


def _segment_table(report: DirectoryReport) -> Table:
    table = Table(title="WAL segments")
    table.add_column("name", no_wrap=True, min_width=41)
    for column in ("entries", "bytes", "records", "batches"):
        table.add_column(column, justify="right")
    table.add_column("status")
    for s in report.segments:
        entries = f"{s.first_entry}..{s.last_entry}" if s.last_entry else "-"
        status = "ok" if s.damage_offset is None else f"damage @ {s.damage_offset}"
        size = f"{s.bytes - s.unused_bytes} (+{s.unused_bytes} free)" if s.unused_bytes else s.bytes
        table.add_row(s.name, entries, str(size), str(s.records), str(s.batches), status)
    return table


def _snapshot_table(report: DirectoryReport) -> Table:
    table = Table(title="snapshots")
    table.add_column("name", no_wrap=True, min_width=41)
    for column in ("index", "term", "bytes", "voters"):
        table.add_column(column, justify="right")
    table.add_column("status", overflow="fold")
    for s in report.snapshots:
        voters = ",".join(map(str, s.voters)) or "-"
        table.add_row(s.name, str(s.index), str(s.term), str(s.bytes), voters, s.status)
    return table
