"""Keep freed memory from piling up in glibc's heap during long CPU inference loops.

glibc serves a large allocation by ``mmap`` (returned to the system when freed) only above its mmap threshold, and
it raises that threshold, up to 32 MB, each time such a block is freed. After the first few forwards the logits and
caches of every forward (a few MB to tens of MB, of shapes that vary with the prompts) therefore come from the heap,
where the freed blocks fragment and stay resident. Measured on the phases before the first edit of ``edit bench
--n 1000`` on SmolLM2-135M (2,000 locality prompts and 1,000 targets, one thread; ``bench/edit_memory.py
--before-stream``): the resident set peaked at 2.55 GB, and ``malloc_trim`` afterwards brought it to 1.35 GB (so it
was free heap, not live objects); with the threshold pinned at 1 MB the same phases peaked at 1.44 GB, 2 % slower
(docs/scaling.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h); setting it also turns the dynamic adjustment off


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


def pin_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Serve every allocation of at least ``nbytes`` by ``mmap`` from now on, for the whole process, so that a
    freed forward's buffers go back to the system. True when set; False where the C library is not glibc (macOS,
    musl), where the call means nothing and nothing is changed."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)) == 1)
