"""A minimal ``StateMachine`` for tests of the runtime (nodes, transport, snapshots).

``Register`` appends every command it applies and answers with the count; its snapshot is every
command, newline-separated. Deterministic, so nodes that apply the same log hold the same
items: a test compares ``items`` across nodes to see what each applied.
"""

from __future__ import annotations


class Register:
    """Appends commands (which must not contain a newline); returns the count."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def apply(self, command: bytes) -> object:
        self.items.append(command)
        return len(self.items)

    def snapshot(self) -> bytes:
        return b"\n".join(self.items)

    def restore(self, data: bytes) -> None:
        self.items = data.split(b"\n") if data else []
