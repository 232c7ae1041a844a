"""Memory back to the system after a burst of transactions (glibc ``malloc_trim``).

A registration burst leaves tens of thousands of completed server transactions that go
32 s later. Python gives the memory of its small objects back only when a whole arena
is empty, but the larger ones (datagrams, answers, the tables of big dictionaries) come
from the C library's heap, which keeps what was freed below its top unless asked:
``malloc_trim(0)`` returns every free page of it (about 12 MB of a 50,000-phone burst,
measured with ``bench/footprint.py``). Called only once the transactions fell to a
quarter of a peak a few thousand above: nothing is paid while traffic is steady.
Elsewhere than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

MIN_DROP = 2000  # transactions fewer than at the peak before trimming is worth it


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class BurstTrim:
    """Watches a count of live objects (transactions); trims once it fell from a peak."""

    def __init__(self, min_drop: int = MIN_DROP, trim: Callable[[int], int] | None = None) -> None:
        self.min_drop = min_drop
        self._trim = trim
        self._loaded = trim is not None
        self._peak = 0
        self.trims = 0

    def observe(self, live: int) -> bool:
        """Note the count now; True when this call trimmed."""
        if live >= self._peak:
            self._peak = live
            return False
        if self._peak - live < self.min_drop or live > self._peak // 4:
            return False
        self._peak = live
        if not self._loaded:
            self._trim = _malloc_trim()
            self._loaded = True
        if self._trim is None:
            return False
        self._trim(0)
        self.trims += 1
        return True
