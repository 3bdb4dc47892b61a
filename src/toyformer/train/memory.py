"""Large CPU buffers reused from step to step instead of being faulted in afresh.

glibc's malloc serves every block above 32 MB with its own ``mmap`` and returns it to the system when it is freed.
A training step at the full batch allocates and frees dozens of such buffers (activations and their gradients, B·T
rows each), so every step pays the kernel to map and zero them again, page by page: a third of the standard model's
grid-base step on 2 CPU cores (benchmarks/RESULTS.md). ``reuse_freed_memory`` has malloc serve them from its heap and
keep what is freed there (``mallopt``), so the next step finds its buffers mapped already.

The cost is memory: the heap keeps its peak, and reuse leaves holes, so the process holds more than the default
allocator's peak (about 1.65× on that step). ``release_freed_memory`` hands the heap's free pages back
(``malloc_trim``); the loops call it at probe steps and at the end of training, so holes do not pile up over a run.
``TOYFORMER_MALLOC=system`` in the environment keeps the default allocator (``reuse``, or unset, reuses). Off Linux or
glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from toyformer.config import ConfigError

M_TRIM_THRESHOLD = -1  # free memory at the heap's top kept rather than returned to the system
M_MMAP_MAX = -4  # most blocks served by their own mmap at once; 0: none, every block comes from the heap
KEEP = 1 << 30
ENV = "TOYFORMER_MALLOC"

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (present only in glibc)
    except (OSError, AttributeError):
        return None
    return libc


def reuse_freed_memory() -> bool:
    """Set malloc, once per process, to keep freed blocks for reuse (unless ``TOYFORMER_MALLOC=system``); whether
    it is in effect."""
    global _libc
    mode = os.environ.get(ENV, "reuse") or "reuse"
    if mode not in ("reuse", "system"):
        raise ConfigError(f"{ENV}={mode!r}: use system (the default allocator) or reuse (keep freed memory)")
    if _libc is None and mode == "reuse" and (libc := _glibc()) is not None:
        if libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, KEEP):
            _libc = libc
    return _libc is not None


def release_freed_memory() -> None:
    """Return the heap's free pages to the system, where freed memory is being kept."""
    if _libc is not None:
        _libc.malloc_trim(0)
