"""Per-process CPU and memory, read from /proc (Linux only).

CPU is ``utime + stime`` of ``/proc/<pid>/stat`` (all threads of the process); memory is
``VmRSS`` (now) and ``VmHWM`` (peak) of ``/proc/<pid>/status``. ``reset_peak`` writes 5
to ``/proc/<pid>/clear_refs``, which sets VmHWM back to the current RSS, so that a peak
can be measured for one phase.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
KIB = 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_bytes(pid: int) -> int:
    """Resident set size now."""
    return _status_kib(pid, "VmRSS") * KIB


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size since start (or since ``reset_peak``)."""
    return _status_kib(pid, "VmHWM") * KIB


def reset_peak(pid: int) -> bool:
    """Reset the peak RSS to the current RSS; False when the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
