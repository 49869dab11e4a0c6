"""Server configuration: addresses, node ids, the layers' precedence, and every check."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replog.server.config import (
    Address,
    ConfigError,
    Member,
    ServerConfig,
    config_to_dict,
    load_config,
    node_id_of,
    parse_address,
    parse_initial_cluster,
    render_toml,
    resolve_config,
)
from replog.storage import NodeStorage, OsDisk

THREE = "n1=10.0.0.1:14400,n2=10.0.0.2:14400,n3=10.0.0.3:14400"


def problems(
    flags: dict[str, object], env: dict[str, str] | None = None, file: str | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(flags, env or {}, file)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return list(caught.value.problems)


def only_problem(flags: dict[str, object], env: dict[str, str] | None = None) -> str:
    found = problems(flags, env)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def toml(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(text: str) -> str:
        path = tmp_path / "replog.toml"
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default data_dir is relative


# ---- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "what", "host", "port"),
    [
        ("127.0.0.1:14300", "client", "127.0.0.1", 14300),
        ("http://10.0.0.1:80", "client", "10.0.0.1", 80),
        ("http://10.0.0.1:80/", "client", "10.0.0.1", 80),
        ("tcp://db-1.example.com:14400", "peer", "db-1.example.com", 14400),
        ("[::1]:14400", "peer", "::1", 14400),
        ("[0:0::1]:1", "peer", "::1", 1),
        ("compose_node_1:65535", "peer", "compose_node_1", 65535),
        (" localhost:1 ", "client", "localhost", 1),
        ("DB-1.Example.COM:5", "peer", "db-1.example.com", 5),
    ],
)
def test_parse_address_accepts(text: str, what: str, host: str, port: int) -> None:
    assert parse_address(text, what) == Address(host, port)


@pytest.mark.parametrize(
    ("text", "what", "message"),
    [
        ("127.0.0.1", "client", "missing port"),
        ("127.0.0.1:", "client", "missing port"),
        ("[::1]", "peer", "missing port"),
        (":14300", "client", "missing host"),
        ("h:0", "peer", "out of range"),
        ("h:65536", "peer", "out of range"),
        ("h:http", "peer", "not a number"),
        ("10.0.0.300:1", "peer", "not an IPv4 address"),
        ("bad host:1", "peer", "bad host"),
        ("-x:1", "peer", "bad host"),
        ("::1:14400", "peer", "in brackets"),
        ("[::g]:1", "peer", "bad IPv6"),
        ("[::1:1", "peer", "missing ']'"),
        ("http://h:1", "peer", "scheme 'http' not allowed"),
        ("tcp://h:1", "client", "scheme 'tcp' not allowed"),
        ("https://h:1", "client", "scheme 'https' not allowed"),
        ("http://h:1/v1", "client", "no path"),
    ],
)
def test_parse_address_rejects_precisely(text: str, what: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_address(text, what)


def test_address_text_form() -> None:
    assert str(Address("10.0.0.1", 14300)) == "10.0.0.1:14300"
    assert str(Address("::1", 14300)) == "[::1]:14300"
    assert parse_address(str(Address("fe80::1", 9)), "peer") == Address("fe80::1", 9)


# ---- node ids ---------------------------------------------------------------------------------


def test_node_id_is_stable_and_positive_63_bit() -> None:
    assert node_id_of("n1") == node_id_of("n1") != node_id_of("n2")
    assert node_id_of("n1") == 4713389289416364797  # stable across releases: data depends on it


@given(st.text(min_size=1, max_size=63))
def test_node_id_range(name: str) -> None:
    assert 0 < node_id_of(name) < 1 << 63


# ---- defaults and layers ----------------------------------------------------------------------


def test_defaults_make_a_one_node_cluster() -> None:
    config = load_config({"name": "n1"}, {}, None)
    assert config.node_id == node_id_of("n1")
    assert config.data_dir == os.path.join("./replog-data", "n1")
    assert config.listen_client == Address("127.0.0.1", 14300)
    assert config.advertise_client == "http://127.0.0.1:14300"
    assert config.advertise_peer == config.listen_peer == Address("127.0.0.1", 14400)
    assert config.initial_cluster == (Member("n1", node_id_of("n1"), config.advertise_peer),)
    assert config.peers == ()
    assert (config.heartbeat_ticks, config.election_timeout_ticks) == (5, 50)
    assert config.clock_drift_ticks == 5


def test_flags_over_env_over_file_over_defaults(toml) -> None:  # type: ignore[no-untyped-def]
    path = toml('name = "n1"\ntick-ms = 5\nheartbeat_ms = 40\nelection_timeout_ms = 400\n')
    env = {"REPLOG_HEARTBEAT_MS": "20", "REPLOG_ELECTION_TIMEOUT_MS": "200"}
    resolved = resolve_config({"election_timeout_ms": "100", "snapshot_entries": None}, env, path)
    config = resolved.config
    assert (config.tick_ms, config.heartbeat_ms, config.election_timeout_ms) == (5, 20, 100)
    assert config.snapshot_entries == 10_000  # a flag given as None was not given
    assert resolved.sources["tick_ms"] == f"file {path}:tick-ms"
    assert resolved.sources["heartbeat_ms"] == "env var REPLOG_HEARTBEAT_MS"
    assert resolved.sources["election_timeout_ms"] == "flag --election-timeout-ms"
    assert resolved.sources["snapshot_entries"] == "default"


def test_env_variables_and_empty_ones() -> None:
    env = {
        "REPLOG_NAME": "n2",
        "REPLOG_INITIAL_CLUSTER": THREE,
        "REPLOG_LISTEN_PEER": "0.0.0.0:14400",
        "REPLOG_ADVERTISE_PEER": "10.0.0.2:14400",
        "REPLOG_LEASE_READS": "yes",
        "REPLOG_LOG_LEVEL": "DEBUG",
        "REPLOG_TICK_MS": "",  # empty counts as unset
        "REPLOG_ENDPOINTS": "http://x:1",  # the client's variable: not an error
    }
    config = load_config({}, env, None)
    assert config.name == "n2" and config.lease_reads and config.log_level == "debug"
    assert [p.name for p in config.peers] == ["n1", "n3"]
    assert config.tick_ms == 10


def test_toml_initial_cluster_forms(toml) -> None:  # type: ignore[no-untyped-def]
    table = toml(
        'name = "n1"\nadvertise-peer = "10.0.0.1:14400"\n[initial_cluster]\n'
        'n1 = "10.0.0.1:14400"\nn2 = "tcp://10.0.0.2:14400"\n'
    )
    array = toml(
        'name = "n1"\nadvertise_peer = "10.0.0.1:14400"\ninitial-cluster = '
        '["n1=10.0.0.1:14400", {name = "n2", peer = "10.0.0.2:14400"}]\n'
    )
    first = load_config({}, {}, table).initial_cluster
    assert first == load_config({}, {}, array).initial_cluster
    assert [str(m.peer) for m in first] == ["10.0.0.1:14400", "10.0.0.2:14400"]


def test_programmatic_values_are_accepted() -> None:
    members = parse_initial_cluster("a=127.0.0.1:1,b=127.0.0.1:2")
    config = load_config(
        {
            "name": "a",
            "listen_peer": Address("127.0.0.1", 1),
            "initial_cluster": members,
            "tick_ms": 1,
            "clock_drift_ms": 1,
            "heartbeat_ms": 2,
            "election_timeout_ms": 10,
            "lease_reads": True,
        },
        {},
        None,
    )
    assert config.initial_cluster == members and config.lease_reads


def test_check_config_toml_loads_back_to_the_same_config(toml) -> None:  # type: ignore[no-untyped-def]
    env = {
        "REPLOG_NAME": "n3",
        "REPLOG_INITIAL_CLUSTER": THREE,
        "REPLOG_LISTEN_CLIENT": "[::]:9",
        "REPLOG_ADVERTISE_CLIENT": "10.0.0.3:9",
        "REPLOG_LISTEN_PEER": "0.0.0.0:14400",
        "REPLOG_ADVERTISE_PEER": "10.0.0.3:14400",
    }
    resolved = resolve_config({}, env, None)
    text = render_toml(resolved)
    tomllib.loads(text)
    assert load_config({}, {}, toml(text)) == resolved.config
    assert "# env var REPLOG_LISTEN_CLIENT" in text
    assert config_to_dict(resolved.config)["advertise_client"] == "http://10.0.0.3:9"


def test_server_config_is_frozen() -> None:
    config = load_config({"name": "n1"}, {}, None)
    assert isinstance(config, ServerConfig)
    with pytest.raises(AttributeError):
        config.name = "n2"  # type: ignore[misc]


# ---- problems ---------------------------------------------------------------------------------


def test_every_problem_is_listed_with_its_source(toml) -> None:  # type: ignore[no-untyped-def]
    path = toml('heartbeat-ms = "50"\nelection_timout_ms = 500\n')
    found = problems(
        {"listen_client": "127.0.0.1", "log_level": "loud"},
        {"REPLOG_TICK_MS": "0", "REPLOG_LEASE_READS": "maybe"},
        path,
    )
    expected = [
        f"file {path}:election_timout_ms: unknown setting (did you mean 'election_timeout_ms'?)",
        "listen_client (flag --listen-client): missing port",
        "tick_ms (env var REPLOG_TICK_MS): 0 is too small (at least 1)",
        f"heartbeat_ms (file {path}:heartbeat-ms): expected an integer, got a string",
        "lease_reads (env var REPLOG_LEASE_READS): expected true or false",
        "log_level (flag --log-level): unknown log level 'loud'",
        "name: required",
    ]
    assert len(found) == len(expected), found
    for want in expected:
        assert any(line.startswith(want) for line in found), (want, found)


def test_missing_or_broken_file(tmp_path: Path, toml) -> None:  # type: ignore[no-untyped-def]
    assert "cannot read it" in problems({"name": "n1"}, {}, str(tmp_path / "nope.toml"))[0]
    assert "not valid TOML" in problems({"name": "n1"}, {}, toml("name = \n"))[0]
    twice = problems({}, {}, toml('name = "n1"\ntick_ms = 10\ntick-ms = 10\n'))
    assert twice == [
        f"file {tmp_path / 'replog.toml'}:tick-ms: set twice (also as file "
        f"{tmp_path / 'replog.toml'}:tick_ms)"
    ]


def test_unknown_flag_key_is_a_problem() -> None:
    assert only_problem({"name": "n1", "tick": "1"}).startswith("tick: unknown setting")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n1=127.0.0.1:14400,n1=127.0.0.1:14401", "duplicate node name 'n1'"),
        ("n1=127.0.0.1:14400,n2=127.0.0.1:14400", "n2 and n1 have the same peer address"),
        ("n2=127.0.0.1:14401", "this node (n1, from flag --name) is not a member"),
        ("n1=127.0.0.1:14401", "lists n1 at 127.0.0.1:14401, but advertise_peer (default"),
        ("n1=127.0.0.1:14400,n2", "member 'n2': expected name=host:port"),
        ("n1=127.0.0.1:14400,N2=h:1", "bad node name 'N2'"),
        ("n1=127.0.0.1:14400,n2=0.0.0.0:1", "n2's peer address 0.0.0.0:1 is a wildcard"),
        ("", "member '': expected name=host:port"),
    ],
)
def test_initial_cluster_problems(text: str, message: str) -> None:
    line = only_problem({"name": "n1", "initial_cluster": text})
    assert line.startswith("initial_cluster (flag --initial-cluster): ")
    assert message in line


def test_names_hashing_to_the_same_id(monkeypatch: pytest.MonkeyPatch) -> None:
    import replog.server.config as module

    monkeypatch.setattr(module, "node_id_of", lambda name: 7)
    line = only_problem({"name": "n1", "initial_cluster": "n1=127.0.0.1:14400,n2=h:1"})
    assert "names 'n1' and 'n2' hash to the same node id" in line


def test_initial_cluster_size_is_bounded() -> None:
    text = ",".join(f"n{i}=h:{i}" for i in range(1, 66))
    assert "65 members, more than 64" in only_problem({"name": "n1", "initial_cluster": text})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"heartbeat_ms": "500"}, "heartbeat_ms (flag --heartbeat-ms) = 500 must be smaller"),
        ({"heartbeat_ms": "300"}, "must be at least 2 heartbeats"),
        ({"tick_ms": "20"}, "heartbeat_ms (default) = 50 is not a multiple of tick_ms"),
        (
            {"tick_ms": "100", "election_timeout_ms": "1000"},
            "heartbeat_ms (default) = 50 is shorter than one tick",
        ),
        ({"lease_reads": True, "clock_drift_ms": "500"}, "needs the clock drift bound below"),
        ({"lease_reads": True, "clock_drift_ms": "491"}, "needs the clock drift bound below"),
        (
            {"value_bytes_max": "3000000"},
            "value_bytes_max (flag --value-bytes-max) = 3000000 is larger",
        ),
        ({"key_bytes_max": "-1"}, "key_bytes_max (flag --key-bytes-max): -1 is too small"),
        ({"snapshot_entries": "0"}, "0 is too small (at least 1)"),
        ({"snapshot_entries": "1__0"}, "expected an integer, got a string '1__0'"),
        ({"request_bytes_max": str(1 << 30)}, "is too large"),
        ({"listen_peer": "127.0.0.1:14300"}, "use the same address"),
        (
            {"listen_client": "0.0.0.0:5", "advertise_client": "h:6", "listen_peer": "10.1.1.1:5"},
            "use the same address",
        ),
        ({"listen_client": "0.0.0.0:14300"}, "advertise_client: required when listen_client"),
        ({"listen_client": "[::]:14300"}, "advertise_client: required"),
        ({"advertise_client": "http://0.0.0.0:1"}, "advertise an address clients can reach"),
        ({"cluster_id": "My Cluster"}, "bad cluster id 'My Cluster'"),
        ({"data_dir": " "}, "empty path"),
    ],
)
def test_setting_problems(flags: dict[str, object], message: str) -> None:
    assert message in only_problem({"name": "n1", **flags})


def test_wildcard_peer_needs_an_advertised_address() -> None:
    found = problems({"name": "n1", "listen_peer": "0.0.0.0:14400"})
    assert found == [
        "advertise_peer: required when listen_peer (flag --listen-peer) is the wildcard "
        "0.0.0.0: set --advertise-peer / REPLOG_ADVERTISE_PEER to the address others reach "
        "this node at"
    ]


def test_numbers_may_group_digits() -> None:
    assert (
        load_config({"name": "n1", "snapshot_entries": "1_000"}, {}, None).snapshot_entries == 1000
    )


def test_lease_with_small_drift_is_fine() -> None:
    config = load_config({"name": "n1", "lease_reads": "on", "clock_drift_ms": "489"}, {}, None)
    assert config.clock_drift_ticks == 49 < config.election_timeout_ticks


# ---- the data directory -----------------------------------------------------------------------


def make_node_dir(path: Path, cluster_id: str, name: str) -> None:
    storage, _ = NodeStorage.open(OsDisk(), str(path), cluster_id, node_id_of(name))
    storage.close()


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    line = only_problem({"name": "n1", "data_dir": str(tmp_path / "f")})
    assert line == f"data_dir (flag --data-dir): {tmp_path / 'f'} exists and is not a directory"


def test_data_dir_of_the_same_node_is_fine(tmp_path: Path) -> None:
    make_node_dir(tmp_path / "d", "replog", "n1")
    assert load_config({"name": "n1", "data_dir": str(tmp_path / "d")}, {}, None).name == "n1"


def test_data_dir_of_another_node(tmp_path: Path) -> None:
    make_node_dir(tmp_path / "d", "replog", "n2")
    flags = {
        "name": "n1",
        "data_dir": str(tmp_path / "d"),
        "initial_cluster": "n1=127.0.0.1:14400,n2=127.0.0.1:14401",
    }
    line = only_problem(flags)
    assert f"{tmp_path / 'd'} holds data of node n2, not of this node n1" in line
    make_node_dir(tmp_path / "e", "replog", "zz")
    line = only_problem({"name": "n1", "data_dir": str(tmp_path / "e")})
    assert f"holds data of another node (id {node_id_of('zz')})" in line


def test_data_dir_of_another_cluster(tmp_path: Path) -> None:
    make_node_dir(tmp_path / "d", "other", "n1")
    line = only_problem(
        {"name": "n1", "data_dir": str(tmp_path / "d")}, {"REPLOG_CLUSTER_ID": "prod"}
    )
    assert "holds data of cluster 'other', but cluster_id (env var REPLOG_CLUSTER_ID)" in line


def test_data_dir_with_damaged_metadata(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "replog.meta").write_bytes(b"garbage")
    line = only_problem({"name": "n1", "data_dir": str(tmp_path / "d")})
    assert "cannot read replog.meta" in line


def test_checking_the_data_dir_does_not_take_its_lock(tmp_path: Path) -> None:
    storage, _ = NodeStorage.open(OsDisk(), str(tmp_path / "d"), "replog", node_id_of("n1"))
    try:
        assert load_config({"name": "n1", "data_dir": str(tmp_path / "d")}, {}, None)
    finally:
        storage.close()


def test_the_binary_protocol_listener_and_the_event_loop() -> None:
    config = load_config({"name": "n1"}, {}, None)
    assert config.listen_rpc is None and config.event_loop == "auto"
    flags = {"name": "n1", "listen_rpc": "tcp://127.0.0.1:14500"}
    config = load_config(flags, {"REPLOG_EVENT_LOOP": "asyncio"}, None)
    assert config.listen_rpc == Address("127.0.0.1", 14500) and config.event_loop == "asyncio"
    clash = only_problem({"name": "n1", "listen_rpc": "0.0.0.0:14400"})
    assert "listen_peer" in clash and "listen_rpc" in clash and "same address" in clash
    assert "unknown event loop 'trio'" in only_problem({"name": "n1", "event_loop": "trio"})
    assert "scheme 'http'" in only_problem({"name": "n1", "listen_rpc": "http://127.0.0.1:1"})
