"""What the process does with host memory a tensor frees: glibc's default, or keep it for reuse.

glibc's malloc serves every block above its mmap threshold (128 KiB, rising to at most 32 MiB)
with a fresh ``mmap`` and returns it with ``munmap`` when it is freed. A CPU forward or backward
frees and re-allocates activations of tens to hundreds of MB every layer, so the kernel maps and
zero-fills the same amount of memory again, page by page, on every call. In a profile of the
pipeline on a 2-core AMD EPYC (round 24) a fifth to a third of train_sft's CPU time went to the
kernel; in benchmarks/bench_allocator.py's LoRA SFT step, a fifth. ``keep`` sets ``M_MMAP_MAX =
0`` (blocks come from the heap) and a 2 GiB ``M_TRIM_THRESHOLD`` (the heap's top stays mapped),
so a freed block is reused as it is. Only where memory comes from changes, not what is computed:
outputs are bit-identical. The cost is resident memory: the process keeps its peak heap (peak RSS
4.2 → 5.5 GiB for the benchmark's SFT step). Blocks that threads other than the main one
allocate come from arenas of their own; the gain was measured for what the main thread allocates,
where PyTorch's CPU forward and backward allocate.

Nothing happens at import; ``apply`` is called where a model is loaded (``components.lm.runtime``).
"""
from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

MODES = ("keep", "system")
"""``keep``: freed blocks stay in the heap for reuse; ``system``: the C library's defaults."""
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameter numbers, glibc <malloc.h>
TRIM_THRESHOLD = 2**31 - 1  # a C int: the heap's top is returned only above 2 GiB free
_applied: set[str] = set()


def on_glibc() -> bool:
    """Whether this process runs on Linux with glibc (checked without loading anything)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def glibc() -> ctypes.CDLL | None:
    """The process's glibc with ``mallopt(int, int) -> int`` declared, or None where the C
    library is another one or cannot be opened."""
    if not on_glibc():
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


def apply(mode: str, libc=None) -> bool:
    """Set the allocator for ``mode`` (``MODES``); True when it changed something.

    ``system`` and C libraries other than glibc leave the allocator alone; ``system`` asked for
    after ``keep`` was applied is logged, and the process keeps ``keep``. Calling it again with
    the same mode does nothing. ``libc`` stands in for glibc in tests."""
    if mode not in MODES:
        raise ValueError(f"runtime.allocator={mode!r}: use one of {MODES}.")
    if mode == "system":
        if "keep" in _applied:
            log.warning("runtime.allocator=system asked for after keep in this process: freed memory stays kept")
        return False
    if mode in _applied:
        return False
    libc = libc if libc is not None else glibc()
    if libc is None:
        return False
    for name, param, value in (("M_MMAP_MAX", M_MMAP_MAX, 0), ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if libc.mallopt(param, value) != 1:  # mallopt returns 1 on success
            log.warning("runtime.allocator=keep: glibc refused mallopt(%s, %d); the allocator is only partly "
                        "set (the settings before it hold)", name, value)
            return False
    _applied.add(mode)
    return True
