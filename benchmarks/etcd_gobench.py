"""Drive etcd through its own Go gRPC client: build and run ``etcd_gobench/main.go``.

The load generator is compiled once (per version of its source) into a cache directory
with Debian's Go and etcd 3.4 sources in GOPATH layout::

    apt-get install -y golang-go golang-etcd-server-dev

``build(cache_dir)`` returns the binary, ``run(endpoints, op=..., clients=..., ...)`` runs it
and returns its JSON result (ops, errors, elapsed_s, throughput_ops_s, latency_ms with
p50/p90/p99/max/mean, clients, conns, op, ...). From the command line::

    .venv/bin/python benchmarks/etcd_gobench.py --endpoints 127.0.0.1:2379 --op put \\
        --clients 64 --duration 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "etcd_gobench" / "main.go"
DEFAULT_CACHE_DIR = HERE / ".build"
GOPATH = Path("/usr/share/gocode")
ETCD_CLIENT_PACKAGE = "go.etcd.io/etcd/clientv3"
INSTALL_HINT = "apt-get install -y golang-go golang-etcd-server-dev"
BUILD_TIMEOUT_S = 600.0
# Beyond the run itself: connecting, an optional preload, and the process start and exit.
RUN_MARGIN_S = 120.0


class GoBenchUnavailable(RuntimeError):
    """The Go toolchain or etcd's Go sources are missing, so the tool cannot be built."""


class GoBenchError(RuntimeError):
    """The tool ran but failed (for example: the endpoints did not answer)."""


def unavailable_reason() -> str | None:
    """Why the tool cannot be built here, or None when it can."""
    if shutil.which("go") is None:
        return f"the Go toolchain (`go`) is not installed: {INSTALL_HINT}"
    if not (GOPATH / "src" / ETCD_CLIENT_PACKAGE).is_dir():
        return f"etcd's Go sources are not under {GOPATH}/src: {INSTALL_HINT}"
    return None


def _go_env(cache_dir: Path) -> dict[str, str]:
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "CGO_ENABLED": "0"}
    if not env.get("GOCACHE") and not env.get("HOME") and not env.get("XDG_CACHE_HOME"):
        env["GOCACHE"] = str(cache_dir / "go-cache")
    return env


def build(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Compile the tool into ``cache_dir`` unless this version of the source already is there."""
    reason = unavailable_reason()
    if reason is not None:
        raise GoBenchUnavailable(reason)
    go = shutil.which("go")
    assert go is not None
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    binary = cache_dir / f"etcd_gobench-{digest}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so that concurrent builds never see half a binary.
    fd, partial = tempfile.mkstemp(prefix=".etcd_gobench-", dir=cache_dir)
    os.close(fd)
    try:
        done = subprocess.run(
            [go, "build", "-o", partial, SOURCE.name],
            cwd=SOURCE.parent,
            env=_go_env(cache_dir),
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise GoBenchUnavailable(
                f"`go build` of {SOURCE} failed (exit {done.returncode}); is "
                f"golang-etcd-server-dev complete? ({INSTALL_HINT})\n{done.stderr.strip()}"
            )
        os.replace(partial, binary)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return binary


def _endpoint_list(endpoints: str | Sequence[str]) -> list[str]:
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out = []
    for item in items:
        item = item.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
        if item:
            out.append(item)
    if not out:
        raise ValueError("no endpoint given")
    return out


def command(
    binary: Path,
    endpoints: str | Sequence[str],
    *,
    op: str,
    clients: int,
    duration_s: float,
    value_size: int = 256,
    key_space: int = 1000,
    serializable: bool = False,
    conns: int | None = None,
    preload: bool | None = None,
    target_leader: bool = False,
    timeout_s: float = 10.0,
) -> list[str]:
    """The tool's command line for one run (``preload`` defaults to on for get runs)."""
    if op not in ("put", "get"):
        raise ValueError(f"op must be put or get, not {op!r}")
    args = [
        str(binary),
        f"-endpoints={','.join(_endpoint_list(endpoints))}",
        f"-op={op}",
        f"-clients={clients}",
        f"-duration={duration_s}s",
        f"-value-size={value_size}",
        f"-key-space={key_space}",
        f"-timeout={timeout_s}s",
    ]
    if conns is not None:
        args.append(f"-conns={conns}")
    if serializable:
        args.append("-serializable")
    if preload if preload is not None else op == "get":
        args.append("-preload")
    if target_leader:
        args.append("-target-leader")
    return args


def run(
    endpoints: str | Sequence[str],
    *,
    op: str,
    clients: int,
    duration_s: float,
    value_size: int = 256,
    key_space: int = 1000,
    serializable: bool = False,
    conns: int | None = None,
    preload: bool | None = None,
    target_leader: bool = False,
    timeout_s: float = 10.0,
    cache_dir: Path = DEFAULT_CACHE_DIR,
) -> dict[str, Any]:
    """Build the tool if needed, run one workload and return its parsed JSON result."""
    binary = build(cache_dir)
    args = command(
        binary,
        endpoints,
        op=op,
        clients=clients,
        duration_s=duration_s,
        value_size=value_size,
        key_space=key_space,
        serializable=serializable,
        conns=conns,
        preload=preload,
        target_leader=target_leader,
        timeout_s=timeout_s,
    )
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=duration_s + timeout_s + RUN_MARGIN_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise GoBenchError(f"etcd_gobench did not finish in {e.timeout:.0f} s") from e
    if done.returncode != 0:
        lines = [line.removeprefix("etcd_gobench: ") for line in done.stderr.splitlines()]
        message = "\n".join(lines).strip() or f"no message, exit {done.returncode}"
        raise GoBenchError(f"etcd_gobench failed: {message}")
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as e:
        raise GoBenchError(f"etcd_gobench printed no JSON: {done.stdout[:200]!r}") from e
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="etcd load through etcd's Go gRPC client")
    parser.add_argument("--endpoints", required=True, help="host:port,... (client URLs)")
    parser.add_argument("--op", choices=["put", "get"], default="put")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--conns", type=int, default=None, help="default: 1 per 100 clients")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--value-size", type=int, default=256, help="bytes per value")
    parser.add_argument("--key-space", type=int, default=1000)
    parser.add_argument("--serializable", action="store_true", help="get: stale reads")
    parser.add_argument("--target-leader", action="store_true", help="only to the leader")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    try:
        result = run(
            args.endpoints,
            op=args.op,
            clients=args.clients,
            duration_s=args.duration,
            value_size=args.value_size,
            key_space=args.key_space,
            serializable=args.serializable,
            conns=args.conns,
            target_leader=args.target_leader,
            cache_dir=args.cache_dir,
        )
    except (GoBenchUnavailable, GoBenchError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
