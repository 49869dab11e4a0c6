"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process).

Names follow etcd's where one exists, with the ``replog_`` prefix, so dashboards built for etcd
translate directly.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_FSYNC_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1)
_RTT_BUCKETS = (0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.1, 1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.has_leader = Gauge(
            "replog_server_has_leader", "1 when this node knows a leader, else 0", registry=r
        )
        self.is_leader = Gauge("replog_server_is_leader", "1 when this node leads", registry=r)
        self.leader_changes = Counter(
            "replog_server_leader_changes_seen", "Leader changes this node has seen", registry=r
        )
        self.term = Gauge("replog_server_term", "The current Raft term", registry=r)
        self.proposals_committed = Gauge(
            "replog_server_proposals_committed_total", "The commit index", registry=r
        )
        self.proposals_applied = Gauge(
            "replog_server_proposals_applied_total", "The applied index", registry=r
        )
        self.proposals_pending = Gauge(
            "replog_server_proposals_pending", "Proposals waiting for their outcome", registry=r
        )
        self.proposals_failed = Counter(
            "replog_server_proposals_failed", "Proposals that failed or timed out", registry=r
        )
        self.apply_lag = Gauge(
            "replog_server_apply_lag", "Commit index minus applied index", registry=r
        )
        self.snapshots = Counter(
            "replog_server_snapshots", "Snapshots taken of the state machine", registry=r
        )
        self.snapshot_install_seconds = Histogram(
            "replog_server_snapshot_install_duration_seconds",
            "Time to install a snapshot sent by the leader, loading the state included",
            buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.fsync_seconds = Histogram(
            "replog_disk_wal_fsync_duration_seconds",
            "Time to make one Ready batch durable (write + fsync)",
            buckets=_FSYNC_BUCKETS,
            registry=r,
        )
        self.batch_entries = Histogram(
            "replog_disk_wal_batch_entries",
            "Entries made durable per fsync",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.peer_rtt_seconds = Histogram(
            "replog_network_peer_round_trip_time_seconds",
            "Round-trip time to each peer",
            ["to"],
            buckets=_RTT_BUCKETS,
            registry=r,
        )
        self.peer_send_failures = Gauge(
            "replog_network_peer_sent_failures_total",
            "Messages to a peer that were dropped (queue full) or lost on a broken connection",
            ["to"],
            registry=r,
        )
        self.peer_connected = Gauge(
            "replog_network_peer_connected",
            "1 while the connection to a peer is up",
            ["to"],
            registry=r,
        )
        self.idempotency_keys = Gauge(
            "replog_kv_idempotency_keys",
            "Idempotency keys the store remembers (a retry with one is applied at most once)",
            registry=r,
        )
        self.idempotency_retention_seconds = Gauge(
            "replog_kv_idempotency_retention_seconds",
            "Age of the oldest remembered idempotency key (by the leader's clock in the log): "
            "clients must not retry a write for longer",
            registry=r,
        )
        self.inbox_drops = Counter(
            "replog_network_inbox_dropped",
            "Inbound messages dropped: the inbox was full",
            registry=r,
        )
        self.client_connections = Gauge(
            "replog_server_client_connections",
            "Client connections open (HTTP and binary protocol)",
            registry=r,
        )
        self.client_connections_refused = Counter(
            "replog_server_client_connections_refused",
            "Client connections refused: client_connections_max were open",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
