"""Process memory on the CPU: the resident set now and its peak so far, in bytes.

Peak training memory on the CPU is measured as the peak resident set size of a fresh
process minus its resident size before the first step (``compare`` and the throughput
benchmark both do this).
"""

from __future__ import annotations

import os
import sys


def rss_bytes() -> int:
    """The process's resident set size now (Linux); elsewhere the peak so far, the best
    baseline there is."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``getrusage``'s ``ru_maxrss``)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
