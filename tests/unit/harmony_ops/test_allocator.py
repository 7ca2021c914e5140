"""harmony_ops.allocator: glibc's malloc told to keep freed memory, once, and nothing elsewhere."""

from __future__ import annotations

import ctypes

import pytest

from harmony_ops import allocator


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
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.delenv("HARMONY_KEEP_FREED_MEMORY", raising=False)

    def install(fake):
        monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
        return fake

    return install


def test_sets_the_mmap_threshold_before_the_trim_threshold_once(libc):
    fake = libc(FakeLibc())
    got = allocator.keep_freed_memory()
    assert got == {"mmap_threshold": allocator.MMAP_THRESHOLD, "trim_threshold": allocator.TRIM_THRESHOLD}
    # the order matters: a trim threshold alone switches glibc's adaptive mmap threshold off
    assert fake.calls == [(allocator.M_MMAP_THRESHOLD, allocator.MMAP_THRESHOLD), (allocator.M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD)]
    assert allocator.keep_freed_memory() == got and len(fake.calls) == 2  # once per process


def test_falls_back_to_glibcs_largest_mmap_threshold(libc):
    fake = libc(FakeLibc(accept=lambda p, v: not (p == allocator.M_MMAP_THRESHOLD and v > allocator.MMAP_THRESHOLD_FALLBACK)))
    assert allocator.keep_freed_memory()["mmap_threshold"] == allocator.MMAP_THRESHOLD_FALLBACK
    assert fake.calls[1] == (allocator.M_MMAP_THRESHOLD, allocator.MMAP_THRESHOLD_FALLBACK)


def test_no_mallopt_or_switched_off_changes_nothing(libc, monkeypatch):
    class NoMallopt:
        pass

    libc(NoMallopt())
    assert allocator.keep_freed_memory() is None
    fake = libc(FakeLibc())
    monkeypatch.setenv("HARMONY_KEEP_FREED_MEMORY", "0")
    assert allocator.keep_freed_memory() is None and fake.calls == []
    refused = libc(FakeLibc(accept=lambda p, v: p != allocator.M_TRIM_THRESHOLD))
    monkeypatch.delenv("HARMONY_KEEP_FREED_MEMORY")
    assert allocator.keep_freed_memory() is None and len(refused.calls) == 2


def test_real_libc_accepts_it():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert allocator.keep_freed_memory() is not None
