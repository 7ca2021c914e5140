"""harmony_ops.worker: glibc's malloc told to keep freed memory, once, and nothing elsewhere."""

from __future__ import annotations

import ctypes

import pytest

from harmony_ops import worker


class FakeLibc:
    def __init__(self, accept=lambda param, value: True):
        self.calls = []
        self.accept = accept
        self.mallopt = lambda param, value: self._mallopt(param, value)  # a function: ctypes sets argtypes on it

    def _mallopt(self, param, value):
        self.calls.append((param, value))
        return int(self.accept(param, value))


@pytest.fixture
def libc(monkeypatch):
    monkeypatch.setattr(worker, "_applied", None)
    monkeypatch.delenv("HARMONY_KEEP_FREED_MEMORY", raising=False)

    def install(fake):
        monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
        return fake

    return install


def test_sets_the_mmap_threshold_before_the_trim_threshold_once(libc):
    fake = libc(FakeLibc())
    got = worker.keep_freed_memory()
    assert got == {"mmap_threshold": worker.MMAP_THRESHOLD, "trim_threshold": worker.TRIM_THRESHOLD}
    # the order matters: a trim threshold alone switches glibc's adaptive mmap threshold off
    assert fake.calls == [(worker.M_MMAP_THRESHOLD, worker.MMAP_THRESHOLD), (worker.M_TRIM_THRESHOLD, worker.TRIM_THRESHOLD)]
    assert worker.keep_freed_memory() == got and len(fake.calls) == 2  # once per process


def test_falls_back_to_glibcs_largest_mmap_threshold(libc):
    fake = libc(FakeLibc(accept=lambda p, v: not (p == worker.M_MMAP_THRESHOLD and v > worker.MMAP_THRESHOLD_FALLBACK)))
    assert worker.keep_freed_memory()["mmap_threshold"] == worker.MMAP_THRESHOLD_FALLBACK
    assert fake.calls[1] == (worker.M_MMAP_THRESHOLD, worker.MMAP_THRESHOLD_FALLBACK)


def test_no_mallopt_or_switched_off_changes_nothing(libc, monkeypatch):
    class NoMallopt:
        pass

    libc(NoMallopt())
    assert worker.keep_freed_memory() is None
    fake = libc(FakeLibc())
    monkeypatch.setenv("HARMONY_KEEP_FREED_MEMORY", "0")
    assert worker.keep_freed_memory() is None and fake.calls == []
    refused = libc(FakeLibc(accept=lambda p, v: p != worker.M_TRIM_THRESHOLD))
    monkeypatch.delenv("HARMONY_KEEP_FREED_MEMORY")
    assert worker.keep_freed_memory() is None and len(refused.calls) == 2


def test_real_libc_accepts_it():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert worker.keep_freed_memory() is not None


@pytest.mark.parametrize(("num_cpus", "threads"), [(0.25, 1), (1, 1), (1.5, 2), (4, 4)])
def test_opencv_threads_follow_the_cpu_share(num_cpus, threads):
    import cv2

    before = cv2.getNumThreads()
    try:
        assert worker.limit_threads(num_cpus) == threads
        assert cv2.getNumThreads() == threads
    finally:
        cv2.setNumThreads(before)


def test_cpu_stages_set_their_worker_up(monkeypatch):
    """decode, finish and evaluate call setup_cpu_worker with their pool's CPU share."""
    from pipelines.jobs.evaluate.config import EvaluateJobConfig
    from pipelines.jobs.harmonize.config import HarmonizeJobConfig
    from pipelines.core.stage import PoolConfig
    from pipelines.jobs.evaluate import stage as evaluate_stage
    from pipelines.jobs.harmonize import decode, finish

    calls = []
    for module in (decode, finish, evaluate_stage):
        monkeypatch.setattr(module, "setup_cpu_worker", calls.append)
    hcfg = HarmonizeJobConfig(manifest="m.csv", output="out")
    decode.DecodeStage.for_job(hcfg, True, pool=PoolConfig(num_cpus=0.25)).setup()
    finish.FinishStage.for_job(hcfg, finish.job_columns(hcfg, "model", "key"), pool=PoolConfig(num_cpus=2)).setup()
    evaluate_stage.EvaluateStage.for_job(EvaluateJobConfig(manifest="m.csv", predictions="p", output="out"), pool=PoolConfig(num_cpus=0.5)).setup()
    assert calls == [0.25, 2, 0.5]
