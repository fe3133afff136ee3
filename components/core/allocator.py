"""What the process does with host memory a tensor frees: glibc's default, or keep it for reuse.

glibc's malloc serves every block above its mmap threshold (128 KiB, rising to at most 32 MiB)
with a fresh ``mmap`` and returns it with ``munmap`` when it is freed. A CPU forward or backward
frees and re-allocates activations of tens to hundreds of MB every layer, so the kernel maps and
zero-fills the same amount of memory again, page by page, on every call: on the 2-core AMD EPYC
of round 24 a third of a SmolLM2 training step's CPU time was spent in the kernel
(benchmarks/bench_allocator.py). ``keep`` sets ``M_MMAP_MAX = 0`` (every block comes from the
heap) and a 2 GiB ``M_TRIM_THRESHOLD`` (the heap's top stays mapped), so a freed block is reused
as it is. Only where memory comes from changes, not what is computed: outputs are bit-identical.
The cost is resident memory: the process keeps its peak heap (4.1 → 4.9 GB peak RSS for a
SmolLM2 training step in the benchmark).

Nothing happens at import; ``apply`` is called where a model is loaded (``components.lm.runtime``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

MODES = ("keep", "system")
"""``keep``: freed blocks stay in the heap for reuse; ``system``: the C library's defaults."""
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameter numbers, glibc <malloc.h>
TRIM_THRESHOLD = 2**31 - 1  # an int: the heap top is returned only above 2 GiB free
_applied: set[str] = set()


def glibc():
    """The process's glibc (a ``ctypes.CDLL``), or None where the C library is another one."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def apply(mode: str, libc=None) -> bool:
    """Set the allocator for ``mode`` (``MODES``); True when it changed something.

    ``system`` and C libraries other than glibc leave the allocator alone. Calling it again with
    the same mode does nothing. ``libc`` stands in for glibc in tests."""
    if mode not in MODES:
        raise ValueError(f"allocator mode {mode!r}: use one of {MODES}.")
    if mode == "system" or mode in _applied:
        return False
    libc = libc if libc is not None else glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:  # mallopt returns 1 on success
        log.warning("runtime.allocator=keep: glibc refused mallopt; freed memory is returned to the system")
        return False
    _applied.add(mode)
    return True
