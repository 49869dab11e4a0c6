"""The server's configuration: one node's settings, where each came from, and their checks.

Theory of operation. ``load_config`` merges four layers, highest first:

    flags (``replog serve --tick-ms 10``)         only the flags the user gave
    environment (``REPLOG_TICK_MS=10``)           ``REPLOG_`` + the upper-case field name
    the TOML file (``tick_ms = 10``)              field names, with ``_`` or ``-``
    defaults                                     some derived from other settings (the name)

Every value remembers its source, so that a problem names the setting and where it came from
("flag --tick-ms", "env var REPLOG_TICK_MS", "file replog.toml:tick-ms", "default"). Checking
never stops at the first problem: each value is converted on its own, then every cross-check
whose inputs converted runs, and ``ConfigError`` lists every problem found, one per line.

Invariants of a ``ServerConfig`` that ``load_config`` returns:

- ``node_id == node_id_of(name)``; ids in ``initial_cluster`` are distinct and so are names and
  peer addresses; this node is a member, with ``advertise_peer`` as its peer address.
- ``tick_ms`` divides ``heartbeat_ms`` and ``election_timeout_ms``;
  ``1 <= heartbeat_ticks`` and ``2 * heartbeat_ms <= election_timeout_ms`` (Raft section 5.2:
  followers must hear from a live leader well within the election timeout); with lease reads
  the clock drift bound stays below the election timeout (Raft thesis section 6.4.1).
- Advertised addresses are never wildcards (0.0.0.0, ::): peers and clients must reach them.
- ``data_dir`` is not a file and holds no other node's or cluster's data.

Node names are what people see; node ids (``node_id_of``) are what the Raft core uses.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from replog.storage.disk import OsDisk
from replog.storage.errors import StorageError
from replog.storage.layout import META_NAME, read_meta

ENV_PREFIX = "REPLOG_"
NAME_CHARS_MAX = 63
CLUSTER_MEMBERS_MAX = 64
CONFIG_FILE_BYTES_MAX = 1 << 20
DEFAULT_DATA_ROOT = "./replog-data"
DEFAULT_CLIENT_PORT = 14300
DEFAULT_PEER_PORT = 14400
LOG_LEVELS = ("debug", "info", "warning", "error")
CLUSTER_STATES = ("new", "existing")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")
_SCHEMES = {"client": "http", "peer": "tcp", "rpc": "tcp"}


class ConfigError(ValueError):
    """The configuration has problems; ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        assert problems, "a ConfigError needs at least one problem"
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class Address(msgspec.Struct, frozen=True):
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return self.host in WILDCARD_HOSTS


class Member(msgspec.Struct, frozen=True):
    name: str
    node_id: int
    peer: Address


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    node_id: int
    cluster_id: str = "replog"
    data_dir: str
    listen_client: Address
    advertise_client: str
    listen_peer: Address
    advertise_peer: Address
    listen_rpc: Address | None = None
    initial_cluster: tuple[Member, ...]
    initial_cluster_state: str = "new"
    auto_promote: bool = True
    tick_ms: int = 10
    heartbeat_ms: int = 50
    election_timeout_ms: int = 500
    lease_reads: bool = False
    clock_drift_ms: int = 50
    snapshot_entries: int = 10_000
    snapshot_keep_entries: int = 1_000
    request_timeout_ms: int = 5_000
    key_bytes_max: int = 4096
    value_bytes_max: int = 1 << 20
    request_bytes_max: int = 2 << 20
    client_connections_max: int = 10_000
    log_level: str = "info"
    event_loop: str = "auto"

    @property
    def heartbeat_ticks(self) -> int:
        return self.heartbeat_ms // self.tick_ms

    @property
    def election_timeout_ticks(self) -> int:
        return self.election_timeout_ms // self.tick_ms

    @property
    def clock_drift_ticks(self) -> int:
        """Rounded up: a drift bound must never shrink by conversion."""
        return -(-self.clock_drift_ms // self.tick_ms)

    @property
    def peers(self) -> tuple[Member, ...]:
        """The other members of the initial cluster."""
        return tuple(m for m in self.initial_cluster if m.name != self.name)


def node_id_of(name: str) -> int:
    """A stable positive 63-bit id for a node name (blake2b, 8 bytes, top bit cleared)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1) or 1


# --------------------------------------------------------------------------------------------
# Parsing single values (each raises ValueError with a precise message).
# --------------------------------------------------------------------------------------------


def parse_address(text: str, what: str) -> Address:
    """``host:port``, ``[v6]:port``, or a URL: ``http://`` for ``what="client"`` addresses,
    ``tcp://`` for ``what="peer"`` addresses."""
    assert what in _SCHEMES, f"what must be one of {sorted(_SCHEMES)}"
    rest = text.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme.lower() != _SCHEMES[what]:
            raise ValueError(
                f"scheme {scheme!r} not allowed in {what} address {text!r} "
                f"(use {_SCHEMES[what]}://host:port or host:port)"
            )
        if rest.endswith("/"):
            rest = rest[:-1]
        if any(c in rest for c in "/?#@"):
            raise ValueError(f"{what} address {text!r} may hold only host and port, no path")
    host, port_text = _split_host_port(rest, text, what)
    return Address(_check_host(host, text), _check_port(port_text, text))


def _split_host_port(rest: str, text: str, what: str) -> tuple[str, str]:
    example = "127.0.0.1:14300" if what == "client" else "127.0.0.1:14400"
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ValueError(f"missing ']' after the IPv6 address in {text!r}")
        host, after = rest[1:close], rest[close + 1 :]
        if not after.startswith(":") or after == ":":
            raise ValueError(f"missing port in {text!r} (expected [ipv6]:port)")
        if not _is_ipv6(host):
            raise ValueError(f"bad IPv6 address {host!r} in {text!r}")
        return host, after[1:]
    if rest.count(":") > 1:
        raise ValueError(f"IPv6 addresses go in brackets, like [::1]:14300 (got {text!r})")
    if ":" not in rest or rest.endswith(":"):
        raise ValueError(f"missing port in {text!r} (expected host:port, like {example})")
    host, port_text = rest.split(":")
    return host, port_text


def _check_host(host: str, text: str) -> str:
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if ":" in host:
        return str(ipaddress.IPv6Address(host))
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"bad host {host!r} in {text!r}: not an IPv4 address") from None
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(len(x) <= 63 and _LABEL_RE.fullmatch(x) for x in labels):
        raise ValueError(f"bad host {host!r} in {text!r}: not an IP address or host name")
    return host.lower()  # DNS names are case-insensitive: one spelling compares equal


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _check_port(port_text: str, text: str) -> int:
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"port {port_text!r} in {text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} in {text!r} out of range (1-65535)")
    return port


def check_name(name: str, what: str = "node name") -> str:
    if not 1 <= len(name) <= NAME_CHARS_MAX or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"bad {what} {name!r}: 1-{NAME_CHARS_MAX} characters, lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return name


def parse_initial_cluster(value: object) -> tuple[Member, ...]:
    """``"n1=host:port,n2=host:port"``, a TOML table ``{n1 = "host:port"}``, or an array of
    ``"n1=host:port"`` strings or ``{name = "n1", peer = "host:port"}`` tables."""
    if isinstance(value, str):
        items: list[tuple[object, object]] = [_split_member(p) for p in value.split(",")]
    elif isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Sequence) and all(isinstance(v, Member) for v in value):
        items = [(m.name, m.peer) for m in value]
    elif isinstance(value, list):
        items = [_member_item(v) for v in value]
    else:
        raise ValueError(f"expected text like 'n1=host:port,n2=host:port', got {_kind(value)}")
    if not items:
        raise ValueError("empty: list at least this node")
    if len(items) > CLUSTER_MEMBERS_MAX:
        raise ValueError(f"{len(items)} members, more than {CLUSTER_MEMBERS_MAX}")
    members: list[Member] = []
    for name, peer in items:
        if not isinstance(name, str) or not isinstance(peer, str | Address):
            raise ValueError(f"member {name!r}: expected a name and a 'host:port' text")
        address = peer if isinstance(peer, Address) else parse_address(peer, "peer")
        check_name(name)
        if any(m.name == name for m in members):
            raise ValueError(f"duplicate node name {name!r}")
        members.append(Member(name, node_id_of(name), address))
    return tuple(members)


def _split_member(part: str) -> tuple[object, object]:
    name, sep, peer = part.strip().partition("=")
    if not sep or not name.strip() or not peer.strip():
        raise ValueError(f"member {part.strip()!r}: expected name=host:port")
    return name.strip(), peer.strip()


def _member_item(item: object) -> tuple[object, object]:
    if isinstance(item, str):
        return _split_member(item)
    if isinstance(item, Mapping) and set(item) == {"name", "peer"}:
        return item["name"], item["peer"]
    raise ValueError(f"member {item!r}: expected 'name=host:port' or {{name=..., peer=...}}")


def _kind(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", str: "a string", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# The settings table: how each field converts, and its range.
# --------------------------------------------------------------------------------------------

_INT_RANGES: dict[str, tuple[int, int]] = {
    "tick_ms": (1, 1_000),
    "heartbeat_ms": (1, 60_000),
    "election_timeout_ms": (1, 600_000),
    "clock_drift_ms": (0, 60_000),
    "snapshot_entries": (1, 100_000_000),
    "snapshot_keep_entries": (0, 100_000_000),
    "request_timeout_ms": (1, 3_600_000),
    "key_bytes_max": (1, 1 << 20),
    "value_bytes_max": (1, 16 << 20),
    "request_bytes_max": (1, 16 << 20),
    "client_connections_max": (1, 1_000_000),
}
_TEXT_FIELDS = (
    "name",
    "cluster_id",
    "data_dir",
    "advertise_client",
    "log_level",
    "initial_cluster_state",
    "event_loop",
)
_BOOL_FIELDS = ("lease_reads", "auto_promote")
_ADDRESS_FIELDS = {
    "listen_client": "client",
    "listen_peer": "peer",
    "advertise_peer": "peer",
    "listen_rpc": "rpc",
}
SETTINGS: tuple[str, ...] = tuple(
    f for f in ServerConfig.__struct_fields__ if f != "node_id"
)  # every setting a user may give, in the order of ServerConfig


@dataclass(frozen=True, slots=True)
class _Raw:
    value: object
    source: str
    typed: bool = False  # from TOML: numbers and booleans must not be given as strings


@dataclass(frozen=True, slots=True)
class Resolved:
    """A valid configuration and where each setting came from (``sources[field]``)."""

    config: ServerConfig
    sources: Mapping[str, str]


def _convert(field: str, raw: _Raw) -> object:
    value = raw.value
    if raw.typed and isinstance(value, str) and (field in _INT_RANGES or field in _BOOL_FIELDS):
        raise ValueError(
            f"expected {'a boolean' if field in _BOOL_FIELDS else 'an integer'}, "
            f"got a string {value!r} (write it without quotes)"
        )
    if field in _INT_RANGES:
        return _convert_int(field, value)
    if field in _BOOL_FIELDS:
        return _convert_bool(value)
    if field in _ADDRESS_FIELDS:
        if isinstance(value, Address):
            return value
        return parse_address(_text(value), _ADDRESS_FIELDS[field])
    if field == "initial_cluster":
        return parse_initial_cluster(value)
    assert field in _TEXT_FIELDS, field
    text = _text(value).strip()
    if field == "name":
        return check_name(text)
    if field == "cluster_id":
        return check_name(text, "cluster id")
    if field == "advertise_client":
        return f"http://{parse_address(text, 'client')}"
    if field == "log_level":
        if text.lower() not in LOG_LEVELS:
            raise ValueError(f"unknown log level {text!r} (one of {', '.join(LOG_LEVELS)})")
        return text.lower()
    if field == "initial_cluster_state":
        if text.lower() not in CLUSTER_STATES:
            raise ValueError(
                f"unknown cluster state {text!r}: 'new' (bootstrap with the initial cluster) or "
                "'existing' (join a running cluster)"
            )
        return text.lower()
    if field == "event_loop":
        if text.lower() not in EVENT_LOOPS:
            raise ValueError(f"unknown event loop {text!r} (one of {', '.join(EVENT_LOOPS)})")
        return text.lower()
    if not text:
        raise ValueError("empty path")
    return text


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return value


def _convert_int(field: str, value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+(_[0-9]+)*\s*", value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ValueError(f"expected an integer, got {_kind(value)} {value!r}")
    low, high = _INT_RANGES[field]
    if number < low:
        raise ValueError(f"{number} is too small (at least {low})")
    if number > high:
        raise ValueError(f"{number} is too large (at most {high})")
    return number


def _convert_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    raise ValueError(f"expected true or false, got {_kind(value)} {value!r}")


# --------------------------------------------------------------------------------------------
# The layers.
# --------------------------------------------------------------------------------------------


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _flag_layer(flags: Mapping[str, object], problems: list[str]) -> dict[str, _Raw]:
    layer: dict[str, _Raw] = {}
    for key, value in flags.items():
        field = key.replace("-", "_")
        if field not in SETTINGS:
            problems.append(f"{key}: unknown setting (known: {', '.join(SETTINGS)})")
        elif value is not None:
            layer[field] = _Raw(value, f"flag {flag_name(field)}")
    return layer


def _env_layer(environ: Mapping[str, str]) -> dict[str, _Raw]:
    """Unknown ``REPLOG_*`` variables are not errors: client commands read some of them."""
    layer: dict[str, _Raw] = {}
    for field in SETTINGS:
        value = environ.get(env_name(field))
        if value:  # empty counts as unset, as container tools often pass empty variables
            layer[field] = _Raw(value, f"env var {env_name(field)}")
    return layer


def _file_layer(path: str, problems: list[str]) -> dict[str, _Raw]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(CONFIG_FILE_BYTES_MAX + 1)
    except OSError as error:
        problems.append(f"config file {path}: cannot read it: {error.strerror or error}")
        return {}
    if len(data) > CONFIG_FILE_BYTES_MAX:
        problems.append(f"config file {path}: larger than {CONFIG_FILE_BYTES_MAX} bytes")
        return {}
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        problems.append(f"config file {path}: not valid TOML: {error}")
        return {}
    layer: dict[str, _Raw] = {}
    for key, value in table.items():
        field = key.replace("-", "_")
        source = f"file {path}:{key}"
        if field not in SETTINGS:
            problems.append(f"{source}: unknown setting{_suggest(field)}")
        elif field in layer:
            problems.append(f"{source}: set twice (also as {layer[field].source})")
        else:
            layer[field] = _Raw(value, source, typed=True)
    return layer


def _suggest(field: str) -> str:
    close = difflib.get_close_matches(field, SETTINGS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------------------------
# load_config.
# --------------------------------------------------------------------------------------------


def load_config(
    flags: Mapping[str, object], environ: Mapping[str, str], file: str | None
) -> ServerConfig:
    """Merge flags over ``REPLOG_*`` environment over the TOML file over defaults and check the
    result; raises ``ConfigError`` listing every problem found."""
    return resolve_config(flags, environ, file).config


def resolve_config(
    flags: Mapping[str, object], environ: Mapping[str, str], file: str | None
) -> Resolved:
    """``load_config``, also telling where each setting came from."""
    problems: list[str] = []
    raw: dict[str, _Raw] = {}
    if file is not None:
        raw.update(_file_layer(file, problems))
    raw.update(_env_layer(environ))
    raw.update(_flag_layer(flags, problems))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in (f for f in SETTINGS if f in raw):
        item = raw[field]
        try:
            values[field] = _convert(field, item)
            sources[field] = item.source
        except ValueError as error:
            problems.append(f"{field} ({item.source}): {error}")
    if "name" not in raw:
        problems.append("name: required (set --name, REPLOG_NAME or name in the config file)")
    failed = set(raw) - set(values)
    _fill_defaults(values, sources, failed, problems)
    _cross_check(values, sources, problems)
    if problems:
        raise ConfigError(problems)
    config = ServerConfig(node_id=node_id_of(values["name"]), **values)
    return Resolved(config, sources)


def _fill_defaults(
    values: dict[str, Any], sources: dict[str, str], failed: set[str], problems: list[str]
) -> None:
    """Static defaults, then the derived ones whose inputs are known."""
    for field in SETTINGS:
        default = _STATIC_DEFAULTS.get(field, msgspec.NODEFAULT)
        if field not in values and field not in failed and default is not msgspec.NODEFAULT:
            values[field], sources[field] = default, "default"

    def derive(field: str, needs: str, make: Any) -> None:
        if field not in values and field not in failed and needs in values:
            values[field], sources[field] = make(values[needs]), f"default (from {needs})"

    derive("data_dir", "name", lambda name: os.path.join(DEFAULT_DATA_ROOT, name))
    for field, port in (("listen_client", DEFAULT_CLIENT_PORT), ("listen_peer", DEFAULT_PEER_PORT)):
        if field not in values and field not in failed:
            values[field], sources[field] = Address("127.0.0.1", port), "default"
    _derive_advertised(values, sources, failed, problems)
    if "initial_cluster" not in values and "initial_cluster" not in failed and _has_peer(values):
        name = values["name"]
        values["initial_cluster"] = (Member(name, node_id_of(name), values["advertise_peer"]),)
        sources["initial_cluster"] = "default (this node alone)"


def _has_peer(values: dict[str, Any]) -> bool:
    return "name" in values and "advertise_peer" in values


def _derive_advertised(
    values: dict[str, Any], sources: dict[str, str], failed: set[str], problems: list[str]
) -> None:
    pairs = (("advertise_client", "listen_client"), ("advertise_peer", "listen_peer"))
    for field, listen in pairs:
        if field in values or field in failed or listen not in values:
            continue
        address: Address = values[listen]
        if address.is_wildcard:
            problems.append(
                f"{field}: required when {listen} ({sources[listen]}) is the wildcard "
                f"{address.host}: set {flag_name(field)} / {env_name(field)} to the address "
                "others reach this node at"
            )
            continue
        values[field] = f"http://{address}" if field == "advertise_client" else address
        sources[field] = f"default (from {listen})"


def _static_defaults() -> dict[str, object]:
    fields = msgspec.structs.fields(ServerConfig)
    return {f.name: f.default for f in fields if f.default is not msgspec.NODEFAULT}


_STATIC_DEFAULTS = _static_defaults()


# --------------------------------------------------------------------------------------------
# Cross-checks: each runs only when all its inputs converted.
# --------------------------------------------------------------------------------------------


def _cross_check(values: dict[str, Any], sources: dict[str, str], problems: list[str]) -> None:
    def has(*fields: str) -> bool:
        return all(f in values for f in fields)

    def at(field: str) -> str:
        value = values[field]
        shown = str(value).lower() if isinstance(value, bool) else value
        return f"{field} ({sources[field]}) = {shown}"

    for field in ("heartbeat_ms", "election_timeout_ms"):
        if has("tick_ms", field):
            _check_tick(values, field, at, problems)
    if has("heartbeat_ms", "election_timeout_ms"):
        _check_timing(values, at, problems)
    if has("tick_ms", "election_timeout_ms", "lease_reads", "clock_drift_ms"):
        _check_lease(values, at, problems)
    for size in ("key_bytes_max", "value_bytes_max"):
        if has(size, "request_bytes_max") and values[size] > values["request_bytes_max"]:
            problems.append(f"{at(size)} is larger than {at('request_bytes_max')}")
    listeners = [f for f in ("listen_client", "listen_peer", "listen_rpc") if values.get(f)]
    for i, first in enumerate(listeners):
        for second in listeners[i + 1 :]:
            _check_listeners(values, first, second, at, problems)
    if values.get("event_loop") == "uvloop" and importlib.util.find_spec("uvloop") is None:
        problems.append(f"{at('event_loop')}: uvloop is not installed (pip install 'replog[fast]')")
    if has("advertise_peer"):
        peer: Address = values["advertise_peer"]
        if peer.is_wildcard:
            problems.append(f"{at('advertise_peer')}: advertise an address peers can reach")
    if has("advertise_client"):
        _check_advertised_client(values["advertise_client"], at, problems)
    if has("name", "initial_cluster", "advertise_peer"):
        _check_cluster(values, sources, at, problems)
    if has("name", "cluster_id", "data_dir"):
        _check_data_dir(values, sources, problems)


def _check_tick(values: dict[str, Any], field: str, at: Any, problems: list[str]) -> None:
    if values[field] < values["tick_ms"]:
        problems.append(f"{at(field)} is shorter than one tick ({at('tick_ms')})")
    elif values[field] % values["tick_ms"]:
        problems.append(f"{at(field)} is not a multiple of {at('tick_ms')}")


def _check_timing(values: dict[str, Any], at: Any, problems: list[str]) -> None:
    heartbeat, election = values["heartbeat_ms"], values["election_timeout_ms"]
    if heartbeat >= election:
        problems.append(f"{at('heartbeat_ms')} must be smaller than {at('election_timeout_ms')}")
    elif election < 2 * heartbeat:
        problems.append(
            f"{at('election_timeout_ms')} must be at least 2 heartbeats ({at('heartbeat_ms')}): "
            "followers would start elections while the leader is alive"
        )


def _check_lease(values: dict[str, Any], at: Any, problems: list[str]) -> None:
    if not values["lease_reads"]:
        return
    tick = values["tick_ms"]
    drift_ticks = math.ceil(values["clock_drift_ms"] / tick)
    if drift_ticks >= values["election_timeout_ms"] // tick:
        problems.append(
            f"{at('lease_reads')} needs the clock drift bound below the election timeout: "
            f"{at('clock_drift_ms')} is not below {at('election_timeout_ms')} "
            f"(in ticks of {tick} ms, rounded up)"
        )


def _check_listeners(
    values: dict[str, Any], first: str, second: str, at: Any, problems: list[str]
) -> None:
    one, other = values[first], values[second]
    overlap = one.host == other.host or one.is_wildcard or other.is_wildcard
    if one.port == other.port and overlap:
        problems.append(f"{at(first)} and {at(second)} use the same address")


def _check_advertised_client(url: str, at: Any, problems: list[str]) -> None:
    address = parse_address(url, "client")
    if address.is_wildcard:
        problems.append(f"{at('advertise_client')}: advertise an address clients can reach")


def _check_cluster(
    values: dict[str, Any], sources: dict[str, str], at: Any, problems: list[str]
) -> None:
    members: tuple[Member, ...] = values["initial_cluster"]
    where = f"initial_cluster ({sources['initial_cluster']})"
    seen_peers: dict[Address, str] = {}
    seen_ids: dict[int, str] = {}
    for member in members:
        if member.peer in seen_peers:
            problems.append(
                f"{where}: {member.name} and {seen_peers[member.peer]} have the same peer "
                f"address {member.peer}"
            )
        if member.node_id in seen_ids:
            problems.append(
                f"{where}: names {seen_ids[member.node_id]!r} and {member.name!r} hash to the "
                "same node id; rename one of them"
            )
        if member.peer.is_wildcard:
            problems.append(f"{where}: {member.name}'s peer address {member.peer} is a wildcard")
        seen_peers.setdefault(member.peer, member.name)
        seen_ids.setdefault(member.node_id, member.name)
    me = next((m for m in members if m.name == values["name"]), None)
    if me is None:
        names = ", ".join(m.name for m in members)
        problems.append(
            f"{where}: this node ({values['name']}, from {sources['name']}) is not a member "
            f"(members: {names})"
        )
    elif me.peer != values["advertise_peer"]:
        problems.append(
            f"{where}: lists {me.name} at {me.peer}, but {at('advertise_peer')}; they must agree"
        )
    if values.get("initial_cluster_state") == "existing" and len(members) < 2:
        problems.append(
            f"{where}: to join an existing cluster (initial_cluster_state "
            f"({sources['initial_cluster_state']}) = existing), list its members besides this "
            "node, so it can reach them"
        )


def _check_data_dir(values: dict[str, Any], sources: dict[str, str], problems: list[str]) -> None:
    """Reads the directory's metadata file like recovery does, without taking its lock."""
    directory: str = values["data_dir"]
    where = f"data_dir ({sources['data_dir']})"
    if os.path.exists(directory) and not os.path.isdir(directory):
        problems.append(f"{where}: {directory} exists and is not a directory")
        return
    if not os.path.lexists(os.path.join(directory, META_NAME)):
        return
    try:
        meta = read_meta(OsDisk(), directory)
    except (StorageError, OSError) as error:
        problems.append(f"{where}: cannot read {META_NAME} in {directory}: {error}")
        return
    name, cluster_id = values["name"], values["cluster_id"]
    if meta.cluster_id != cluster_id:
        problems.append(
            f"{where}: {directory} holds data of cluster {meta.cluster_id!r}, but cluster_id "
            f"({sources['cluster_id']}) is {cluster_id!r}; point this node at its own data "
            "directory"
        )
    elif meta.node_id != node_id_of(name):
        owner = next(
            (m.name for m in values.get("initial_cluster", ()) if m.node_id == meta.node_id),
            None,
        )
        whose = f"node {owner}" if owner else f"another node (id {meta.node_id})"
        problems.append(
            f"{where}: {directory} holds data of {whose}, not of this node {name} "
            f"(id {node_id_of(name)}); point each node at its own data directory"
        )


# --------------------------------------------------------------------------------------------
# Rendering a resolved configuration (``replog serve --check-config``).
# --------------------------------------------------------------------------------------------


def config_to_dict(config: ServerConfig) -> dict[str, Any]:
    """Plain JSON-able values: addresses as ``host:port`` text, plus the derived ticks."""
    out: dict[str, Any] = {}
    for field in ("name", "node_id", *SETTINGS[1:]):
        value = getattr(config, field)
        if isinstance(value, Address):
            value = str(value)
        elif field == "initial_cluster":
            value = [{"name": m.name, "node_id": m.node_id, "peer": str(m.peer)} for m in value]
        out[field] = value
    out["heartbeat_ticks"] = config.heartbeat_ticks
    out["election_timeout_ticks"] = config.election_timeout_ticks
    out["clock_drift_ticks"] = config.clock_drift_ticks
    return out


def render_json(resolved: Resolved) -> str:
    body = {"config": config_to_dict(resolved.config), "sources": dict(resolved.sources)}
    return json.dumps(body, indent=2)


def render_toml(resolved: Resolved) -> str:
    """A TOML file that loads back to the same configuration, each line noting its source."""
    config, sources = resolved.config, resolved.sources
    lines = [f"# node_id = {config.node_id}  (derived from the name)"]
    for field in SETTINGS:
        if field == "initial_cluster":
            continue
        value = getattr(config, field)
        if value is None:
            lines.append(f"# {field} is not set  # {sources.get(field, 'default')}")
            continue
        text = _toml_value(str(value) if isinstance(value, Address) else value)
        lines.append(f"{field} = {text}  # {sources.get(field, 'default')}")
    lines.append("")
    lines.append(f"[initial_cluster]  # {sources.get('initial_cluster', 'default')}")
    lines.extend(f"{m.name} = {_toml_value(str(m.peer))}" for m in config.initial_cluster)
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string
