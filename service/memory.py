"""glibc's allocator, tuned for a server whose responses are megabytes of new memory each.

A 1M-step JSON response allocates ~35 MB (the lr array, orjson's chunks of text, the body
pieces) and frees it when sent. With glibc's defaults most of it went back to the kernel at
each free (blocks above the mmap threshold are unmapped; a heap's free top above the trim
threshold is trimmed) and came back as fresh pages at the next response: ~3,400 page faults
per request, each zeroing a page, ~12 ms of system CPU of its ~90 ms (measured, 1M-step JSON,
AMD EPYC 2 cores). :func:`tune_malloc` raises both thresholds once, at start: blocks up to
32 MB come from the heaps, and each heap keeps up to ``LRS_MALLOC_RETAIN_MB`` of free memory
for the next request (faults 3,400 -> ~200 a request, system CPU 23 -> 11 ms, end to end 92
-> 80 ms; RSS after that load 505 MB against 470).

The price: each of glibc's heaps (one per thread that allocates, at most 8 per core the host
shows, a container's too; ``MALLOC_ARENA_MAX`` caps them) may hold that much free memory instead
of returning it, and free holes below a heap's top are not trimmed. An operator's own
``MALLOC_*`` variables or any ``GLIBC_TUNABLES`` win (nothing is changed then), and 0 leaves
glibc's defaults. On a C library without ``mallopt`` (musl, macOS) nothing is done.
"""

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("service.memory")

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
"""mallopt's parameter numbers (glibc's malloc.h)."""

MMAP_THRESHOLD_MAX = 32 << 20
"""The largest mmap threshold glibc accepts on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``)."""

OPERATOR_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
)
"""Environment variables with which an operator tunes glibc's allocator himself."""


def tune_malloc(retain_mb: int) -> bool:
    """Raise glibc's mmap threshold to ``min(retain_mb / 2, 32)`` MB and its trim threshold
    to ``retain_mb`` MB; return True when done (False: 0, the operator's own variables, or
    no glibc)."""
    if retain_mb <= 0 or any(name in os.environ for name in OPERATOR_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    retain = retain_mb << 20
    mmap_threshold = min(retain // 2, MMAP_THRESHOLD_MAX)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    done = mallopt(M_TRIM_THRESHOLD, min(retain, 2**31 - 1)) == 1 and done
    if not done:
        log.warning("glibc's mallopt refused the allocator's thresholds; its defaults stay")
    return done
