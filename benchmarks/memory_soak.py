"""Memory and disk of a replog cluster under a long stream of small writes.

Run: .venv/bin/python benchmarks/memory_soak.py [--writes 1000000] [--value-size 100]
     [--keys 10000] [--idempotency-keys] [--clients 64] [--connections 3] [--sample-every 50000]
     [--snapshot-entries N] [--snapshot-keep-entries N] [--settle 5]
     [--data-dir DIR] [--keep] [--output table|json] [--save FILE]

It starts three real ``replog serve`` processes on 127.0.0.1 with
``replog.testing.processes.ProcessCluster`` (``rpc=True``: each node also serves the binary
client protocol; the nodes keep replog's default timing), then writes ``--writes``
puts of ``--value-size`` bytes over ``--keys`` keys (key ``i % keys`` for the i-th write;
with ``--idempotency-keys`` each put also carries its own idempotency key)
from ``--clients`` coroutines sharing ``--connections`` ``replog.RpcClient`` connections
(spread over the nodes; followers forward to the leader).

What it measures, for every node, at the start, every ``--sample-every`` completed writes,
after the last write and again after ``--settle`` seconds of rest:

* resident memory: VmRSS and its peak VmHWM from /proc/PID/status;
* disk: the bytes and number of WAL segments (``wal-*.wal``) and of snapshot files
  (``snap-*.snap``) in its data directory, and everything else there;
* the log: applied, snapshot and last index from ``GET /v1/status`` (last - snapshot is the
  number of entries the node still holds in its log), and the snapshots it has taken
  (``replog_server_snapshots_total`` from ``GET /metrics``);
* the size of its output log (``n<i>.log`` next to the data directories);
* the write rate so far and since the previous sample, and failed writes by kind.

A table is printed as it goes (to stderr with ``--output json``, whose document goes to
stdout at the end); ``--save FILE`` writes the same JSON document. The nodes are stopped by
PID (SIGTERM, then SIGKILL after 15 s) at the end, on Ctrl-C and on SIGTERM; the data
directory (a fresh temporary one unless ``--data-dir``) is removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from replog import RpcClient
from replog.client.errors import ReplogClientError
from replog.testing.processes import ProcessCluster, ProcessNode

NODES = 3
MiB = 1 << 20
START_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 5.0
_SNAPSHOTS_METRIC = re.compile(rb"^replog_server_snapshots_total (\S+)$", re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Asking the nodes.
# ---------------------------------------------------------------------------------------------


def http_get(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, bytes] | None:
    """Status and body of a GET (error statuses too); None when the node does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        body = error.read()
        error.close()
        return error.code, body
    except (OSError, ValueError):
        return None


def fetch_status(node: ProcessNode) -> dict[str, Any] | None:
    answer = http_get(f"{node.url}/v1/status")
    if answer is None or answer[0] != 200:
        return None
    try:
        body = json.loads(answer[1])
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def fetch_snapshots_taken(node: ProcessNode) -> int | None:
    answer = http_get(f"{node.url}/metrics")
    if answer is None or answer[0] != 200:
        return None
    found = _SNAPSHOTS_METRIC.search(answer[1])
    return int(float(found.group(1))) if found else None


def exit_codes(cluster: ProcessCluster) -> dict[str, int | None]:
    return {
        name: node.process.poll() if node.process is not None else None
        for name, node in cluster.nodes.items()
    }


# ---------------------------------------------------------------------------------------------
# Sampling one node.
# ---------------------------------------------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (bytes) of a process, from /proc/PID/status; {} when it is gone."""
    wanted = {"VmRSS": "rss_bytes", "VmHWM": "hwm_bytes"}
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in wanted:
                    found[wanted[name]] = int(rest.split()[0]) * 1024  # reported in kB
    except OSError:
        return {}
    return found


def disk_usage(directory: str) -> dict[str, int]:
    """Bytes and counts of WAL segments, snapshot files and everything else in a data dir."""
    usage = dict.fromkeys(
        ("wal_bytes", "wal_segments", "snapshot_bytes", "snapshot_files", "other_bytes"), 0
    )
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return usage
    for entry in entries:
        try:
            size = entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue  # removed while we looked (compaction, a snapshot renamed into place)
        if entry.name.startswith("wal-") and entry.name.endswith(".wal"):
            usage["wal_bytes"] += size
            usage["wal_segments"] += 1
        elif entry.name.startswith("snap-") and entry.name.endswith(".snap"):
            usage["snapshot_bytes"] += size
            usage["snapshot_files"] += 1
        else:
            usage["other_bytes"] += size
    return usage


def sample_node(node: ProcessNode) -> dict[str, Any]:
    assert node.process is not None
    row: dict[str, Any] = {"node": node.name, "pid": node.process.pid}
    row.update(proc_memory(node.process.pid))
    row.update(disk_usage(str(node.data_dir)))
    try:
        row["node_log_bytes"] = os.path.getsize(node.log_path)  # its output, outside the data dir
    except OSError:
        row["node_log_bytes"] = None
    status = fetch_status(node)
    if status is not None:
        info = status["node"]
        row["role"] = info["role"]
        for key in ("applied_index", "snapshot_index", "last_index"):
            row[key] = info[key]
        row["log_entries"] = info["last_index"] - info["snapshot_index"]
    row["snapshots_taken"] = fetch_snapshots_taken(node)
    return row


# ---------------------------------------------------------------------------------------------
# The load and the run.
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    writes: int
    value_size: int
    keys: int
    idempotency_keys: bool
    clients: int
    connections: int
    sample_every: int
    settle_s: float
    node_args: tuple[str, ...]


@dataclass
class Run:
    """Everything measured so far (also what an interrupted run saves)."""

    settings: Settings
    cluster: ProcessCluster
    out: TextIO
    source: dict[str, Any] = field(default_factory=dict)  # what the nodes were started from
    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    issued: int = 0
    done: int = 0
    started: float = 0.0
    next_sample: int = 0
    wake: asyncio.Event | None = None
    _last: tuple[float, int] = (0.0, 0)

    def take_sample(self, phase: str) -> dict[str, Any]:
        now = time.monotonic()
        done = self.done
        elapsed = now - self.started if self.started else 0.0
        last_time, last_done = self._last
        interval = now - last_time if last_time else 0.0
        sample = {
            "phase": phase,
            "writes": done,
            "elapsed_s": round(elapsed, 3),
            "rate_total": round(done / elapsed, 1) if elapsed > 0 else 0.0,
            "rate_interval": round((done - last_done) / interval, 1) if interval > 0 else 0.0,
            "errors": sum(self.errors.values()),
            "nodes": [sample_node(node) for node in self.cluster.nodes.values()],
        }
        self._last = (now, done)
        self.samples.append(sample)
        print_rows(sample, self.out, header=len(self.samples) == 1)
        return sample

    async def sample(self, phase: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.take_sample, phase)

    async def worker(self, client: RpcClient, base: bytes) -> None:
        settings = self.settings
        while self.issued < settings.writes:
            i = self.issued
            self.issued += 1
            key = f"soak/{i % settings.keys:08d}"
            value = (i.to_bytes(8, "big") + base)[: settings.value_size]
            token = f"soak-{i}" if settings.idempotency_keys else None
            try:
                await client.put(key, value, idempotency_key=token)
            except ReplogClientError as error:
                self.errors[f"{type(error).__name__}:{error.code}"] += 1
            self.done += 1
            if self.done >= self.next_sample and self.wake is not None:
                self.wake.set()

    async def sampler(self) -> None:
        assert self.wake is not None
        every = self.settings.sample_every
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.done >= self.settings.writes:
                return
            while self.next_sample <= self.done:
                self.next_sample += every
            await self.sample("load")

    async def run(self) -> None:
        settings = self.settings
        addresses = self.cluster.rpc_endpoints
        clients = [
            await RpcClient.connect(
                addresses[i % len(addresses) :] + addresses[: i % len(addresses)],
                timeout_s=30.0,
                retry_timeout_s=0.0,  # errors are counted; keys only with --idempotency-keys
            )
            for i in range(settings.connections)
        ]
        try:
            await self.sample("start")
            self.wake = asyncio.Event()
            self.next_sample = settings.sample_every
            base = bytes(random.Random(0).randrange(32, 127) for _ in range(settings.value_size))
            self.started = time.monotonic()
            self._last = (self.started, 0)
            sampler = asyncio.create_task(self.sampler())
            await asyncio.gather(
                *(self.worker(clients[w % len(clients)], base) for w in range(settings.clients))
            )
            self.wake.set()
            await sampler
            await self.sample("end")
        finally:
            for client in clients:
                await client.close()
        if settings.settle_s > 0:
            await asyncio.sleep(settings.settle_s)
            await self.sample("settled")

    def document(self, interrupted: bool = False) -> dict[str, Any]:
        load = [s for s in self.samples if s["phase"] in ("load", "end")]
        duration = load[-1]["elapsed_s"] if load else 0.0
        return {
            "benchmark": "memory_soak",
            "settings": {
                "nodes": NODES,
                "writes": self.settings.writes,
                "value_size": self.settings.value_size,
                "keys": self.settings.keys,
                "idempotency_keys": self.settings.idempotency_keys,
                "clients": self.settings.clients,
                "connections": self.settings.connections,
                "sample_every": self.settings.sample_every,
                "settle_s": self.settings.settle_s,
                "node_args": list(self.settings.node_args),
            },
            "source": self.source,
            "machine": machine(),
            "interrupted": interrupted,
            "writes_done": self.done,
            "duration_s": duration,
            "rate": round(self.done / duration, 1) if duration else 0.0,
            "errors": dict(self.errors),
            "summary": summarize(self.samples),
            "samples": self.samples,
        }


def summarize(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per node: RSS at the start, middle and end, the peak, and the most disk seen."""
    if not samples:
        return {}
    middle = samples[len(samples) // 2]
    names = [row["node"] for row in samples[0]["nodes"]]
    summary: dict[str, Any] = {}
    for index, name in enumerate(names):
        rows = [s["nodes"][index] for s in samples]

        def most(key: str, rows: list[dict[str, Any]] = rows) -> int:
            return max((r.get(key) or 0 for r in rows), default=0)

        summary[name] = {
            "rss_start_bytes": rows[0].get("rss_bytes"),
            "rss_middle_bytes": middle["nodes"][index].get("rss_bytes"),
            "rss_middle_at_writes": middle["writes"],
            "rss_end_bytes": rows[-1].get("rss_bytes"),
            "rss_max_sampled_bytes": most("rss_bytes"),
            "hwm_bytes": rows[-1].get("hwm_bytes"),
            "wal_bytes_max": most("wal_bytes"),
            "wal_segments_max": most("wal_segments"),
            "wal_bytes_end": rows[-1].get("wal_bytes"),
            "snapshot_bytes_max": most("snapshot_bytes"),
            "snapshot_bytes_end": rows[-1].get("snapshot_bytes"),
            "snapshot_files_max": most("snapshot_files"),
            "node_log_bytes_end": rows[-1].get("node_log_bytes"),
            "log_entries_max": most("log_entries"),
            "snapshots_taken": rows[-1].get("snapshots_taken"),
            "applied_index_end": rows[-1].get("applied_index"),
        }
    return summary


def source_tree() -> dict[str, Any]:
    """The commit measured and the source files changed on top of it (uncommitted)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.rstrip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_src": [line[3:] for line in changed.splitlines()],
    }


def machine() -> dict[str, Any]:
    cpu = ""
    mem_total = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_bytes": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------

_COLUMNS = (
    ("phase", 7),
    ("writes", 9),
    ("w/s", 7),
    ("node", 4),
    ("role", 9),
    ("RSS MiB", 8),
    ("HWM MiB", 8),
    ("WAL MiB", 8),
    ("segs", 4),
    ("snap MiB", 8),
    ("files", 5),
    ("applied", 9),
    ("snap idx", 9),
    ("in log", 7),
    ("snaps", 5),
)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MiB:.1f}"


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def print_rows(sample: dict[str, Any], out: TextIO, header: bool) -> None:
    if header:
        print("  ".join(name.rjust(width) for name, width in _COLUMNS), file=out)
    for row in sample["nodes"]:
        cells = (
            sample["phase"],
            sample["writes"],
            int(sample["rate_interval"]),
            row["node"],
            row.get("role"),
            _mib(row.get("rss_bytes")),
            _mib(row.get("hwm_bytes")),
            _mib(row.get("wal_bytes")),
            row.get("wal_segments"),
            _mib(row.get("snapshot_bytes")),
            row.get("snapshot_files"),
            row.get("applied_index"),
            row.get("snapshot_index"),
            row.get("log_entries"),
            row.get("snapshots_taken"),
        )
        line = "  ".join(_text(c).rjust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True))
        print(line, file=out, flush=True)


def print_summary(document: dict[str, Any], out: TextIO) -> None:
    print(
        f"\n{document['writes_done']} writes in {document['duration_s']:.1f} s "
        f"({document['rate']:.0f}/s), errors: {document['errors'] or 'none'}",
        file=out,
    )
    for name, node in document["summary"].items():
        print(
            f"{name}: RSS start {_mib(node['rss_start_bytes'])} MiB, "
            f"middle {_mib(node['rss_middle_bytes'])}, end {_mib(node['rss_end_bytes'])}, "
            f"peak (VmHWM) {_mib(node['hwm_bytes'])}; WAL max {_mib(node['wal_bytes_max'])} MiB "
            f"in {node['wal_segments_max']} segments, snapshots max "
            f"{_mib(node['snapshot_bytes_max'])} MiB in {node['snapshot_files_max']} files, "
            f"{node['snapshots_taken']} snapshots taken",
            file=out,
        )


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Resident memory and disk of a 3-node replog cluster under many small writes."
    )
    parser.add_argument("--writes", type=int, default=1_000_000, help="puts to make")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value")
    parser.add_argument("--keys", type=int, default=10_000, help="distinct keys written")
    parser.add_argument(
        "--idempotency-keys",
        action="store_true",
        help="give every put its own idempotency key (fills the KV store's idempotency table)",
    )
    parser.add_argument("--clients", type=int, default=64, help="concurrent writers")
    parser.add_argument("--connections", type=int, default=3, help="RpcClient connections")
    parser.add_argument("--sample-every", type=int, default=50_000, help="writes per sample")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds of rest before the last sample"
    )
    parser.add_argument("--snapshot-entries", type=int, help="passed to every replog serve")
    parser.add_argument("--snapshot-keep-entries", type=int, help="passed to every replog serve")
    parser.add_argument("--data-dir", help="an empty or new directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--output", choices=("table", "json"), default="table")
    parser.add_argument("--save", help="write the JSON document to this file")
    args = parser.parse_args(argv)
    for name in ("writes", "value_size", "keys", "clients", "connections", "sample_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.value_size < 8:
        parser.error("--value-size must be at least 8 (each value starts with its write number)")
    if args.data_dir and Path(args.data_dir).exists() and any(Path(args.data_dir).iterdir()):
        parser.error(f"--data-dir {args.data_dir} is not empty")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when installed (less of the client's CPU on a small machine)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    node_args: list[str] = []
    if args.snapshot_entries is not None:
        node_args += ["--snapshot-entries", str(args.snapshot_entries)]
    if args.snapshot_keep_entries is not None:
        node_args += ["--snapshot-keep-entries", str(args.snapshot_keep_entries)]
    settings = Settings(
        writes=args.writes,
        value_size=args.value_size,
        keys=args.keys,
        idempotency_keys=args.idempotency_keys,
        clients=args.clients,
        connections=args.connections,
        sample_every=args.sample_every,
        settle_s=args.settle,
        node_args=tuple(node_args),
    )
    made_root = args.data_dir is None or not Path(args.data_dir).exists()
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="replog-memory-"))
    cluster = ProcessCluster(root, size=NODES, extra_args=tuple(node_args), rpc=True)
    out = sys.stderr if args.output == "json" else sys.stdout
    run = Run(settings, cluster, out, source=source_tree())
    signal.signal(signal.SIGTERM, _raise_interrupt)
    interrupted = False
    try:
        cluster.start(wait=False)
        leader = cluster.wait_for_leader(START_TIMEOUT_S)
        print(f"cluster in {root}, leader {leader}", file=out, flush=True)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run.run())
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping the nodes", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        cluster.stop_all()  # by PID: SIGTERM, SIGKILL after 15 s
        codes = exit_codes(cluster)
        if args.keep:
            print(f"data and node logs kept in {root}", file=out)
        elif made_root:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for node in cluster.nodes.values():
                shutil.rmtree(node.data_dir, ignore_errors=True)
                node.log_path.unlink(missing_ok=True)
    document = run.document(interrupted)
    document["exit_codes"] = codes
    if args.output == "table":
        print_summary(document, out)
    else:
        print(json.dumps(document, indent=2))
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(json.dumps(document, indent=2) + "\n")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
