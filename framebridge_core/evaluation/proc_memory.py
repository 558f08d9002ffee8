"""Resident-memory probes shared by the benchmarks (Linux ``/proc``; -1 / no-op elsewhere)."""

from __future__ import annotations


def rss_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``: now, ``VmHWM``: the high-water mark)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident size, so a later peak measures only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
