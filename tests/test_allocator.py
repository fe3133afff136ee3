"""runtime.allocator: glibc keeps freed blocks for reuse under ``keep``; nothing changes under ``system``."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from components.core import allocator
from components.core.config import ConfigError
from components.lm import source


class FakeLibc:
    def __init__(self, result: int = 1):
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", set())


def test_keep_turns_off_mmap_and_trimming_once():
    libc = FakeLibc()
    assert allocator.apply("keep", libc=libc)
    assert libc.calls == [(allocator.M_MMAP_MAX, 0), (allocator.M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD)]
    assert not allocator.apply("keep", libc=libc)  # already applied: no second call
    assert len(libc.calls) == 2


def test_system_leaves_the_allocator_alone():
    libc = FakeLibc()
    assert not allocator.apply("system", libc=libc)
    assert libc.calls == []


def test_a_refused_mallopt_is_reported_not_raised(caplog):
    assert not allocator.apply("keep", libc=FakeLibc(result=0))
    assert "refused" in caplog.text


def test_unknown_modes_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="keep"):
        allocator.apply("jemalloc", libc=FakeLibc())
    with pytest.raises(ConfigError, match="runtime.allocator"):
        source.ModelConfig(allocator="jemalloc")


def test_allocator_is_a_runtime_setting():
    assert source.model_config({"runtime": {"allocator": "system"}}).allocator == "system"
    with pytest.raises(ConfigError, match="runtime"):
        source.model_config({"model": {"allocator": "system"}})


PROBE = textwrap.dedent("""
    import ctypes, resource, sys
    from components.core import allocator
    allocator.apply(sys.argv[1])
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    n = 64 * 2**20
    faults = []
    for _ in range(2):  # allocate, touch every page, free; twice
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(n)
        ctypes.memset(block, 1, n)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(faults[1])
""")


@pytest.mark.skipif(allocator.glibc() is None, reason="the mallopt settings are glibc's")
def test_keep_reuses_a_freed_block_without_faulting_its_pages_again():
    def second_round_faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    pages = 64 * 2**20 // 4096
    assert second_round_faults("system") > pages // 2  # glibc unmapped the block; every page faults again
    assert second_round_faults("keep") < pages // 20
