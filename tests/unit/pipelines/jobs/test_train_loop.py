"""The train loop's first-batch prefetch, without Ray."""

from __future__ import annotations

import threading

import pytest

from pipelines.jobs.train.loop import FirstBatchAhead


def test_the_first_batch_is_fetched_before_iteration_and_order_is_kept():
    fetched = threading.Event()

    def batches():
        fetched.set()
        yield from range(4)

    ahead = FirstBatchAhead(batches())
    assert fetched.wait(5)  # asked for at construction, not when the loop starts
    assert list(ahead) == [0, 1, 2, 3]


def test_an_empty_shard_and_a_failing_one():
    assert list(FirstBatchAhead(iter(()))) == []

    def broken():
        raise OSError("storage went away")
        yield

    with pytest.raises(OSError, match="storage went away"):
        list(FirstBatchAhead(broken()))
