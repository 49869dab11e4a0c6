"""The node process's own settings (``replog serve``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from replog.server.app import GC_THRESHOLDS, tune_garbage_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_a_node_process_collects_cycles_less_often_and_skips_its_start_up_objects() -> None:
    tune_garbage_collector()

    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # Python's default
    assert gc.get_freeze_count() > 0
