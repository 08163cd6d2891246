"""Which process is a run's, and whether it (or anything in its process group) still runs: a pid is named together
with its start time (/proc/<pid>/stat) and the boot id, so a pid reused after the run ended, or after a reboot, is not
taken for the run. Functions take a board.jobs.Job (pid, proc_start, boot_id, exit_code)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneforge.board.jobs import Job

# processes this Board started, by (pid, start time), so that any Runs object can reap them and read their exit code
CHILDREN: dict[tuple[int, str | None], subprocess.Popen] = {}


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rfind(")") + 2:].split()


def process_start(pid: int) -> str | None:
    """The process's start time since boot (clock ticks), which with the pid and boot id names one process."""
    fields = stat_fields(pid) if os.path.isdir("/proc") else None
    return fields[19] if fields and len(fields) > 19 else None


def boot_id() -> str | None:
    """This boot's id: a pid and start time recorded before a reboot name no process after it."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return None


def reap(job: Job) -> bool | None:
    """For a process this Board started: collect its exit status into the job (so it leaves no zombie) and return
    whether it still runs; None for any other process."""
    proc = CHILDREN.get((job.pid, job.proc_start)) if job.pid else None
    if proc is None:
        return None
    if proc.poll() is None:
        return True  # also while its threads are still exiting (the leader already shows as a zombie then)
    job.exit_code = proc.returncode  # the entry stays: another copy of this job may ask again
    return False


def alive(job: Job) -> bool:
    """The job's own process still runs: same pid, same start time, same boot; a zombie counts as ended."""
    if not job.pid:
        return False
    ours = reap(job)
    if ours is not None:
        return ours
    if job.exit_code is not None:
        return False
    if job.boot_id and boot_id() and job.boot_id != boot_id():
        return False
    if not os.path.isdir("/proc"):
        return _answers_signal_0(os.kill, job.pid)
    fields = stat_fields(job.pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return job.proc_start is None or fields[19] == job.proc_start


def group_alive(job: Job) -> bool:
    """Any live process is left in the job's process group (its own session: the group id is its pid)."""
    if not job.pid:
        return False
    if alive(job):
        return True
    if job.boot_id and boot_id() and job.boot_id != boot_id():
        return False
    if not os.path.isdir("/proc"):
        return _answers_signal_0(os.killpg, job.pid)
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = stat_fields(int(name))
            if fields and len(fields) > 2 and fields[2] == str(job.pid) and fields[0] not in ("Z", "X"):
                return True
    return False


def signal_group(pgid: int, signum: int) -> None:
    """Send `signum` to every process of the group (the run's own session); a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _answers_signal_0(send, ident: int) -> bool:
    """Whether a process (os.kill) or process group (os.killpg) `ident` exists, where there is no /proc to read:
    signal 0 checks without sending; a permission error means it exists but is not ours."""
    try:
        send(ident, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
