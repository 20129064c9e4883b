"""Threads and data-loader workers chosen together within the cores a process may use."""
from __future__ import annotations

import pytest
import torch

from reclip import runtime
from reclip.method.config import ConfigError, ReclipConfig


@pytest.fixture
def cores(monkeypatch):
    def set_cores(count: int, local_world: int | None = None) -> None:
        monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(count)))
        if local_world is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    return set_cores


@pytest.mark.parametrize("count, local_world, expected", [
    (1, None, (1, 0)), (2, None, (2, 0)), (3, None, (3, 0)), (4, None, (3, 1)), (8, None, (6, 2)),
    (64, None, (60, 4)), (16, 2, (6, 2)), (2, 2, (1, 0)), (2, 4, (1, 0)),
])
def test_default_threads_and_workers_never_exceed_the_cores(cores, count, local_world, expected):
    cores(count, local_world)
    threads, workers = runtime.budget()
    assert (threads, workers) == expected
    assert threads + workers <= max(1, count // (local_world or 1))


def test_one_given_setting_leaves_the_rest_of_the_cores_to_the_other(cores):
    cores(8)
    assert runtime.budget(threads=7) == (7, 1)
    assert runtime.budget(threads=8) == (8, 0)
    assert runtime.budget(workers=3) == (5, 3)
    assert runtime.budget(workers=8) == (1, 8)  # at least one thread
    assert runtime.budget(threads=3, workers=9) == (3, 9)  # both given: as given


def test_apply_sets_torch_threads_and_returns_the_workers(cores):
    cores(4)
    before = torch.get_num_threads()
    try:
        assert runtime.apply() == 1 and torch.get_num_threads() == 3
        assert runtime.apply(threads=1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_is_a_validated_runtime_setting():
    with pytest.raises(ConfigError, match="threads"):
        ReclipConfig(threads=0)
    a, b = ReclipConfig(threads=1), ReclipConfig(threads=2)
    assert a.threads == 1 and b.threads == 2
