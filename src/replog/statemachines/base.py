"""The interface between the replicated log and the application's state.

A ``StateMachine`` receives the committed commands of the log, in log order, each exactly once,
on every node. It must be deterministic: its state and results may depend only on the commands
it applied (no clocks, no randomness, no I/O), so that every node reaches the same state.
``snapshot`` captures the state as bytes; ``restore`` replaces the state with such bytes (a node
that installs a snapshot from the leader, or restarts from its own). Results of ``apply`` stay
on the node that applied them: they reach the local client that proposed the command and are
never sent over the network, so they may be any Python value.

Optionally, a machine with a large state may also offer ``snapshot_encoder() -> Callable[[],
bytes]``: capture the state cheaply now and return a function that encodes that capture (the
same bytes ``snapshot`` would give) without reading the live state. A ``Node`` then encodes and
writes snapshots on another thread while it goes on applying; with ``snapshot`` alone, the
encoding runs on the event loop. Likewise ``snapshot_restorer(data) -> Callable[[], None]``:
decode and check an image without touching the live state, and return a function that installs
it at once; a ``Node`` runs the decoding on that other thread (while its event loop goes on)
and only the install on the loop. ``KVStore`` offers both.
"""

from __future__ import annotations

from typing import Protocol


class StateMachine(Protocol):
    def apply(self, command: bytes) -> object:
        """Apply one committed command and return its result. A command the machine cannot
        understand must be answered (for example with an error value), never raised on: the
        log is the same everywhere, so an exception would stop every node alike."""
        ...

    def snapshot(self) -> bytes:
        """The whole state as bytes, covering every command applied so far."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a ``snapshot`` image."""
        ...
