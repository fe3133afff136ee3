"""runtime.allocator: glibc keeps freed blocks for reuse under ``keep``; nothing changes under ``system``."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
    assert "refused mallopt(M_MMAP_MAX" in caplog.text


def test_system_after_keep_is_reported(caplog):
    allocator.apply("keep", libc=FakeLibc())
    assert not allocator.apply("system", libc=FakeLibc())
    assert "stays kept" in caplog.text


def test_runtime_load_sets_the_configured_allocator(tiny_model_dir, monkeypatch):
    from components.lm import runtime

    seen = []
    monkeypatch.setattr(allocator, "apply", lambda mode, libc=None: seen.append(mode) or False)
    cfg = source.ModelConfig(source=str(tiny_model_dir), dtype="float32", device="cpu", threads=1, allocator="system")
    runtime.load(source.resolve(cfg), cfg)
    assert seen == ["system"]


def test_unknown_modes_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="runtime.allocator"):
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


def _transparent_huge_pages() -> str:
    try:  # "always [madvise] never": the bracketed one is in force
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "never"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "never"


@pytest.mark.skipif(not allocator.on_glibc(), reason="the mallopt settings are glibc's")
@pytest.mark.skipif(_transparent_huge_pages() == "always", reason="huge pages: a 64 MiB block faults ~32 times either way")
def test_keep_reuses_a_freed_block_without_faulting_its_pages_again():
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}

    def second_round_faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                             cwd=root, env=env)
        return int(out.stdout.strip())

    pages = 64 * 2**20 // 4096
    assert second_round_faults("system") > pages // 2  # glibc unmapped the block; every page faults again
    assert second_round_faults("keep") < pages // 20
