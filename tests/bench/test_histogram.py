"""The log-linear histogram: bucket layout, percentiles within 1%, merging, JSON round trip."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replog.bench.histogram import (
    SUB_BUCKETS,
    VALUE_MAX_US,
    Histogram,
    bucket_high,
    bucket_low,
    bucket_of,
)

values = st.integers(min_value=0, max_value=VALUE_MAX_US)


@given(values)
def test_a_value_falls_between_its_bucket_edges(value: int) -> None:
    index = bucket_of(value)
    assert bucket_low(index) <= value <= bucket_high(index)


@given(values)
def test_buckets_are_narrow(value: int) -> None:
    index = bucket_of(value)
    width = bucket_high(index) - bucket_low(index) + 1
    assert width == 1 if value < SUB_BUCKETS else width <= bucket_low(index) / 64


def test_buckets_are_contiguous_and_ordered() -> None:
    for index in range(bucket_of(VALUE_MAX_US)):
        assert bucket_high(index) + 1 == bucket_low(index + 1)


def exact_percentile(samples: list[int], percent: float) -> int:
    ordered = sorted(samples)
    rank = max(1, math.ceil(len(ordered) * percent / 100))
    return ordered[rank - 1]


@given(st.lists(values, min_size=1, max_size=300), st.sampled_from([0, 1, 50, 90, 99, 99.9, 100]))
def test_percentiles_are_within_one_percent(samples: list[int], percent: float) -> None:
    histogram = Histogram()
    for value in samples:
        histogram.record(value)
    exact = exact_percentile(samples, percent)
    got = histogram.percentile_us(percent)
    assert exact <= got <= exact + max(exact / 64, 0)
    assert histogram.percentile_us(100) == max(samples)
    assert histogram.min_us == min(samples)


@given(st.lists(values, max_size=100), st.lists(values, max_size=100))
def test_merge_equals_recording_everything_in_one(a: list[int], b: list[int]) -> None:
    left, right, both = Histogram(), Histogram(), Histogram()
    for value in a:
        left.record(value)
        both.record(value)
    for value in b:
        right.record(value)
        both.record(value)
    left.merge(right)
    assert left == both


def test_json_round_trip_and_checks() -> None:
    histogram = Histogram()
    for value in (5, 500, 50_000, 5_000_000):
        histogram.record(value)
    again = Histogram.from_json(histogram.to_json())
    assert again == histogram
    broken = histogram.to_json()
    broken["count"] = 3
    with pytest.raises(ValueError, match="add up"):
        Histogram.from_json(broken)
    with pytest.raises(ValueError, match="not a histogram"):
        Histogram.from_json({"counts": []})


def test_empty_histogram_and_bad_input() -> None:
    histogram = Histogram()
    assert histogram.percentile_us(99) == 0
    assert histogram.mean_us == 0.0
    with pytest.raises(ValueError):
        histogram.record(-1)
    with pytest.raises(ValueError):
        histogram.percentile_us(101)


def test_values_over_the_limit_are_clamped_and_counted() -> None:
    histogram = Histogram()
    histogram.record(VALUE_MAX_US * 10)
    assert histogram.max_us == VALUE_MAX_US
    assert histogram.clamped == 1


def test_record_seconds() -> None:
    histogram = Histogram()
    histogram.record_s(0.0015)
    assert histogram.max_us == 1500
