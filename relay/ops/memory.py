"""Large buffers outside the heap, so that their memory goes back to the OS (glibc).

glibc serves allocations above its mmap threshold (128 KiB at start) with ``mmap`` and
returns them to the OS when freed; smaller ones come from the heap, which seldom shrinks.
The threshold is dynamic: freeing one mmapped block raises it to that block's size (up to
32 MiB). After the relay's first large message, the buffers of the next ones (the DATA
bytes, parsed bodies, request bodies, all a few MiB) land on the heap and stay counted in
RSS after they are freed. The benchmark measured +85 MiB of peak RSS for one 20 MiB
message with the dynamic threshold and +73 MiB with it pinned (bench/README.md).

``pin_mmap_threshold`` pins it at 128 KiB with ``mallopt`` once at start-up, unless the
operator set ``MALLOC_MMAP_THRESHOLD_`` (glibc's own variable, which then applies). On a
C library without ``mallopt`` it does nothing. The container image (``ENV``) and the
systemd unit (``Environment=``) set ``MALLOC_MMAP_THRESHOLD_=131072`` instead, which
glibc applies the same way (it also disables the dynamic threshold): four 16 MiB
messages in a row measured the same either way, 116 MiB peak RSS and 52 MiB after, in
three runs each. This call covers every other way of starting the relay.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MMAP_THRESHOLD", "pin_mmap_threshold"]

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 128 * 1024


def _libc() -> Any:
    return ctypes.CDLL(None)


def pin_mmap_threshold(
    environ: Mapping[str, str] = os.environ, libc: Callable[[], Any] = _libc
) -> bool:
    """Pin glibc's mmap threshold; True when done (``environ``/``libc``: seams for tests)."""
    if "MALLOC_MMAP_THRESHOLD_" in environ:
        return False
    try:
        mallopt = libc().mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
