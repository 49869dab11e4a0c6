"""A read-only report on a data directory, for ``replog data inspect``.

Theory of operation. Two independent looks at the directory, neither of which writes:

* a per-file survey that parses every segment record by record and every snapshot file, and
  says where parsing stopped (it never raises on damage, so a broken directory can still be
  listed in full);
* the recovery plan (``replay.plan_recovery``), which says what a node starting on this
  directory would do: its findings (torn tails it would cut, damaged snapshots it would skip)
  or the corruption that would stop it.

The verdict is the worst finding: clean, repairable (a torn tail or leftover file recovery
handles alone), damaged (recovery works around it) or fatal (the node will not start).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from replog.core.types import HardState, Snapshot
from replog.storage.disk import Disk
from replog.storage.errors import StorageError
from replog.storage.layout import Identity, list_directory, read_file, read_meta
from replog.storage.record import (
    Defect,
    Frame,
    RecordType,
    decode_batch_part,
    decode_segment_header,
    read_frame,
)
from replog.storage.recovery import Finding, Severity
from replog.storage.replay import SEGMENT_BYTES_READ_MAX, all_zero, plan_recovery
from replog.storage.snapshot import read_snapshot


@dataclass(slots=True)
class SegmentReport:
    name: str
    seq: int
    first_index: int
    bytes: int
    records: int = 0
    batches: int = 0
    first_entry: int = 0
    last_entry: int = 0
    status: str = "ok"
    damage_offset: int | None = None  # where parsing stopped, if it stopped early
    unused_bytes: int = 0  # the preallocated rest after the last record, all zeros


@dataclass(slots=True)
class SnapshotReport:
    name: str
    index: int
    term: int
    bytes: int
    status: str = "ok"
    voters: list[int] = field(default_factory=list)


@dataclass(slots=True)
class DirectoryReport:
    directory: str
    metadata: dict[str, object] | None = None
    hard_state: HardState | None = None
    log_first_index: int | None = None
    log_last_index: int | None = None
    snapshot_index: int | None = None
    segments: list[SegmentReport] = field(default_factory=list)
    snapshots: list[SnapshotReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        worst = {finding.severity for finding in self.findings}
        for severity, name in (
            (Severity.FATAL, "fatal"),
            (Severity.DAMAGED, "damaged"),
            (Severity.REPAIRED, "repairable"),
        ):
            if severity in worst:
                return name
        return "clean"

    @property
    def damaged(self) -> bool:
        return self.verdict != "clean"


def inspect_directory(disk: Disk, directory: str) -> DirectoryReport:
    """Survey ``directory`` and dry-run its recovery. Raises only if it cannot be listed."""
    report = DirectoryReport(directory)
    listing = list_directory(disk, directory)
    identity = _survey_meta(disk, report)
    for name in listing.segments:
        path = os.path.join(directory, name.name)
        segment = SegmentReport(name.name, name.seq, name.first_index, disk.file_size(path))
        _survey_segment(disk, path, segment)
        report.segments.append(segment)
    for snap in listing.snapshots:
        path = os.path.join(directory, snap.name)
        item = SnapshotReport(snap.name, snap.index, snap.term, disk.file_size(path))
        if identity is None:
            item.status = "not checked: metadata unreadable"
        else:
            found = read_snapshot(disk, directory, snap, identity, 1 << 40)
            if isinstance(found, Snapshot):
                item.voters = sorted(found.meta.config.voters)
            else:
                item.status = f"damaged: {found}"
        report.snapshots.append(item)
    _dry_run(disk, report)
    return report


def _survey_meta(disk: Disk, report: DirectoryReport) -> Identity | None:
    try:
        meta = read_meta(disk, report.directory)
    except (StorageError, OSError) as error:
        if disk.exists(os.path.join(report.directory, "replog.meta")):
            report.metadata = {"error": str(error)}
        return None
    report.metadata = {
        "cluster_id": meta.cluster_id,
        "node_id": meta.node_id,
        "format_version": meta.format_version,
    }
    return Identity(meta.cluster_id, meta.node_id)


def _survey_segment(disk: Disk, path: str, report: SegmentReport) -> None:
    data = read_file(disk, path, SEGMENT_BYTES_READ_MAX)
    if data is None:
        report.status = "too large to read"
        report.damage_offset = 0
        return
    pos = 0
    while pos < len(data):
        found = read_frame(data, pos)
        problem = found.value if isinstance(found, Defect) else _understood(found)
        if isinstance(found, Defect) and report.records and all_zero(data, pos):
            report.unused_bytes = len(data) - pos
            return
        if problem:
            report.status = f"stops at offset {pos}: {problem}"
            report.damage_offset = pos
            return
        assert not isinstance(found, Defect)
        report.records += 1
        pos = found.end
        part = decode_batch_part(found.body) if found.rtype == RecordType.BATCH else None
        if part is None or isinstance(part, str):
            continue  # the segment header
        report.batches += part.final
        if part.datas:
            first, last = part.first_index, part.first_index + len(part.datas) - 1
            report.first_entry = min(report.first_entry or first, first)
            report.last_entry = max(report.last_entry, last)


def _understood(found: Frame) -> str:
    if found.rtype == RecordType.SEGMENT_HEADER:
        header = decode_segment_header(found.body)
        return f"bad segment header: {header}" if isinstance(header, str) else ""
    if found.rtype == RecordType.BATCH:
        part = decode_batch_part(found.body)
        return f"bad batch: {part}" if isinstance(part, str) else ""
    return f"unexpected record type {found.rtype}"


def _dry_run(disk: Disk, report: DirectoryReport) -> None:
    try:
        plan = plan_recovery(disk, report.directory, None, 1 << 40)
    except (StorageError, OSError) as error:
        path = getattr(error, "path", report.directory)
        offset = getattr(error, "offset", None)
        rule = getattr(error, "rule", type(error).__name__)
        report.findings.append(Finding(Severity.FATAL, path, offset, rule, str(error)))
        return
    report.findings.extend(plan.findings)
    if plan.fresh:
        return
    report.hard_state = plan.hard_state
    report.log_first_index = plan.log.base_index + 1
    report.log_last_index = plan.log.last_index
    report.snapshot_index = plan.snapshot.meta.index if plan.snapshot else None
