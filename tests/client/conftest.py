"""Fixtures: a fake three-node cluster (tests/client/fake_server.py) per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_server import FakeCluster


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster() as fake:
        yield fake
