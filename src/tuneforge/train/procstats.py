"""Process figures for run metrics: peak RSS and seconds since the process started."""

import os
import resource
import sys
import time


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far, in GiB.

    On Linux this is VmHWM, the peak of this program's own memory: ru_maxrss also keeps the peak of the process
    image that exec'd it (a large parent that started this one as a subprocess, or the `tuneforge` command before it
    re-executes itself under another malloc)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration, ValueError, IndexError):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / (2**30 if sys.platform == "darwin" else 2**20)


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux /proc), or None where unknown."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return time.time() - (btime + start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, StopIteration, IndexError):
        return None
