"""The Board's run launcher: a run is a detached `tuneforge train` process with its own folder, so closing the tab,
reloading the page or restarting the Board never stops it; any Board on the same runs folder reattaches to it.

API (board/app.py codes against exactly this):

    runs = Runs("saves/board", policy="queue")  # policy "refuse": a second run while one is active raises TuneforgeError
    job = runs.start({"model_name_or_path": ..., "dataset": ..., ...})  # flat config keys, as a YAML recipe holds them;
                                      # validated first: ConfigError lists every problem as (key, message)
    runs.list()                       # every job under the folder, newest first, its status re-read from the run
    runs.get(job.id)
    runs.poll()                       # starts the next queued job when none is running (call it on a timer)
    runs.stop(job.id, grace_s=60)     # SIGTERM to the run's process group: checkpoint, `stopped`; SIGKILL after grace_s
    runs.log_tail(job.id, lines=60)   # the end of the run's console output

    Job: id, output_dir, config_path, status (queued | running | finished | failed | stopped), created, started (unix
    seconds), pid, config (the flat dict the run got), error (a failed run's message), step, total, eta_s, phase (the
    run's phase: starting, tokenizing, training, ..., stopping), checkpoint (a stopped run's, to resume from),
    exit_code (when known); `to_dict()` for JSON.

On disk, one folder per job under the runs folder: job.json (rewritten atomically), config.yaml (the run's config:
`tuneforge train config.yaml` runs it by hand too) and console.log (the process's stdout and stderr). A started run's
own event log, output_dir/events.jsonl (run/events.py), is the truth about it; the job's pid, with the process's start
time and the boot id, tells whether that process is still alive (a pid reused after a reboot is not mistaken for it).
A process that ended without a final event is `failed` with the last error line of its console.log (`stopped` when
a stop was asked for). At most one job runs at a time. Launching uses an argument list, never a shell.
"""

from __future__ import annotations  # `Runs.list` shadows the builtin inside the class body

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from tuneforge import TuneforgeError
from tuneforge.board import process
from tuneforge.run.events import EVENTS_FILE, FINAL, state

log = logging.getLogger(__name__)

JOB_FILE, CONFIG_FILE, CONSOLE_FILE = "job.json", "config.yaml", "console.log"
POLICIES = ("queue", "refuse")
_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")


@dataclass
class Job:
    """One run the Board knows about; see the module docstring for the fields."""

    id: str
    output_dir: str
    config_path: str
    status: str
    created: float
    started: float | None
    pid: int | None
    config: dict
    error: str | None = None
    step: int | None = None
    total: int | None = None
    eta_s: float | None = None
    phase: str | None = None
    checkpoint: str | None = None
    exit_code: int | None = None
    ended: float | None = None
    stop_requested: float | None = None
    stop_grace_s: float | None = None
    proc_start: str | None = None  # /proc/<pid>/stat start time: the process's identity with the pid
    boot_id: str | None = None
    cwd: str = field(default_factory=os.getcwd)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def folder(self) -> str:
        return os.path.dirname(self.config_path)


class Runs:
    """Every job under `root` (one subfolder each); see the module docstring.

    Args:
        root: the folder holding one subfolder per job (created if missing).
        policy: `queue` (a run started while another is active waits for it) or `refuse` (it raises TuneforgeError).
        command: the argument list that runs training, before the config path; default
            [sys.executable, "-m", "tuneforge.cli", "train"] (tests pass a stand-in script).
    """

    def __init__(self, root: str, policy: str = "queue", command: list[str] | None = None):
        if policy not in POLICIES:
            raise TuneforgeError(f"--policy must be queue or refuse (got {policy})")
        self.root, self.policy = os.path.abspath(root), policy
        self.command = list(command) if command else [sys.executable, "-m", "tuneforge.cli", "train"]
        self._lock = threading.RLock()
        self._events: dict[str, tuple[int, int, list]] = {}  # events.jsonl -> (inode, bytes read, events)
        os.makedirs(self.root, exist_ok=True)

    # ------------------------------------------------------------------ the API

    def start(self, config: dict) -> Job:
        """Validate `config` (flat keys), write the job's folder, and start it now or queue it.

        Raises:
            ConfigError: every problem with the config, as (key, message) pairs (output_dir too when another active
                job writes there, or it holds a finished run).
            TuneforgeError: with policy `refuse`, when a run is active (naming it).
        """
        with self._locked():
            jobs = self._all()
            active = [j for j in jobs if j.status in ("running", "queued")]
            if self.policy == "refuse" and active:
                j = active[0]
                raise TuneforgeError(f"run {j.id} is {j.status} (output_dir {j.output_dir}); this Board runs one at a time "
                                     f"(--policy refuse): stop it or wait for it to end")
            job = self._create(dict(config), active)
            self._start_next(jobs + [job])
            return self._load(job.id)

    def stop(self, job_id: str, grace_s: float = 60, wait: bool = True) -> Job:
        """Stop a job: a queued one is dropped from the queue; a running one gets SIGTERM on its process group (it saves
        a checkpoint at the end of its step and ends `stopped`), and SIGKILL when its processes are still there after
        `grace_s` seconds. With `wait`, waits for the processes to end and returns the job as it then is; without, it
        returns at once (phase `stopping`) and `poll()` kills the run once `grace_s` has passed (the Board's button)."""
        with self._locked():
            job = self._refresh(self._load(job_id))
            if job.status == "queued":
                job.status, job.ended, job.stop_requested = "stopped", time.time(), time.time()
                self._save(job)
                return job
            if job.status != "running":
                return job
            job.stop_requested, job.stop_grace_s, job.phase = time.time(), grace_s, "stopping"
            self._save(job)
            if process.group_alive(job):
                process.signal_group(job.pid, signal.SIGTERM)
            if not wait:
                return job
        deadline = time.time() + grace_s
        while time.time() < deadline and process.group_alive(job):
            time.sleep(0.1)
        if process.group_alive(job):
            log.warning("run %s did not stop within %.0f s of SIGTERM; killing its processes", job.id, grace_s)
            process.signal_group(job.pid, signal.SIGKILL)
            deadline = time.time() + 10
            while time.time() < deadline and process.group_alive(job):
                time.sleep(0.05)
        with self._locked():
            job = self._refresh(self._load(job_id))
            self._start_next(self._all())
            return job

    def list(self) -> list[Job]:
        """Every job, newest first, each status re-read (from the run's event log and whether its process lives)."""
        with self._locked():
            return sorted(self._all(), key=lambda j: (j.created, j.id), reverse=True)

    def get(self, job_id: str) -> Job:
        """One job, its status re-read. Raises TuneforgeError when there is no such job."""
        with self._locked():
            return self._refresh(self._load(job_id))

    def poll(self) -> None:
        """Re-read every job, finish overdue stops, and start the next queued job when none is running."""
        with self._locked():
            jobs = self._all()
            for job in jobs:
                if job.status == "running" and job.stop_requested and job.stop_grace_s is not None and \
                        time.time() > job.stop_requested + job.stop_grace_s and process.group_alive(job):
                    process.signal_group(job.pid, signal.SIGKILL)  # the Board that asked for the stop is gone
            self._start_next(jobs)

    def log_tail(self, job_id: str, lines: int = 60) -> str:
        """The last `lines` lines of the job's console output (a progress bar's redrawn line counts once)."""
        return "\n".join(_tail(os.path.join(self._load(job_id).folder, CONSOLE_FILE), lines))

    # ------------------------------------------------------------------ jobs on disk

    def _create(self, config: dict, active: list[Job]) -> Job:
        """The job's folder, written whole or not at all: config.yaml (validated), job.json."""
        import yaml

        from tuneforge import config as tf_config, preflight
        from tuneforge.config.errors import ConfigError
        from tuneforge.fsutil import atomic_folder

        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        folder = os.path.join(self.root, job_id)
        out = config.get("output_dir") or os.path.join(folder, "output")
        config["output_dir"] = out = os.path.abspath(str(out))
        for other in active:
            if os.path.abspath(other.output_dir) == out:
                raise ConfigError([("output_dir", f"output_dir `{out}` is the folder of run {other.id} ({other.status}); "
                                                  f"choose another output_dir")])
        try:
            text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        except yaml.YAMLError as e:
            raise TuneforgeError(f"the run config holds a value a YAML file cannot (plain text, numbers, lists and "
                                 f"mappings only): {e}") from None
        with atomic_folder(folder, public=True) as tmp:
            with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as fh:
                fh.write(f"# run {job_id} of tuneforge board; by hand: tuneforge train {os.path.join(folder, CONFIG_FILE)}\n{text}")
            cfg = tf_config.load(os.path.join(tmp, CONFIG_FILE), purpose="train")  # what `tuneforge train` will read
            preflight.check_output(cfg)
            job = Job(id=job_id, output_dir=out, config_path=os.path.join(folder, CONFIG_FILE), status="queued",
                      created=time.time(), started=None, pid=None, config=config)
            _write_json(os.path.join(tmp, JOB_FILE), job.to_dict())
        return job

    def _load(self, job_id: str) -> Job:
        path = os.path.join(self.root, str(job_id), JOB_FILE)
        if not _ID.fullmatch(str(job_id)) or not os.path.isfile(path):
            raise TuneforgeError(f"no run `{job_id}` in {self.root}")
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        known = {f.name for f in dataclasses.fields(Job)}
        return Job(**{k: v for k, v in data.items() if k in known})

    def _save(self, job: Job) -> None:
        _write_json(os.path.join(job.folder, JOB_FILE), job.to_dict())

    def _all(self) -> list[Job]:
        jobs = []
        for name in sorted(os.listdir(self.root)):
            if not _ID.fullmatch(name) or not os.path.isfile(os.path.join(self.root, name, JOB_FILE)):
                continue
            try:
                jobs.append(self._refresh(self._load(name)))
            except (OSError, ValueError, TypeError) as e:  # a hand-edited or foreign job.json: skip it, say so
                log.warning("skipping %s: unreadable %s (%s)", name, JOB_FILE, e)
        return jobs

    # ------------------------------------------------------------------ status

    def _refresh(self, job: Job) -> Job:
        """Re-read a running job's status from its event log and process; saved when it changed."""
        if job.status != "running":
            if job.pid and job.exit_code is None:  # ended by its event log before its process exited: collect it
                process.reap(job)
                if job.exit_code is not None:
                    self._save(job)
            return job
        before = job.to_dict()
        alive = process.alive(job)  # first: a process that has ended has written all its events by now
        run = self._run_state(job)
        if run.get("step"):
            job.step, job.total, job.eta_s = run["step"].get("step"), run["step"].get("total"), run["step"].get("eta_s")
        job.phase = "stopping" if job.stop_requested else run.get("phase", "starting")
        if run["state"] in FINAL:
            job.status, job.phase = run["state"], None
            job.error = run.get("error") if run["state"] == "failed" else None
            job.checkpoint = run.get("checkpoint")
        elif not alive:
            job.status, job.phase = ("stopped" if job.stop_requested else "failed"), None
            if job.status == "failed":
                job.error = _last_error(os.path.join(job.folder, CONSOLE_FILE), job.exit_code)
            self._close_event_log(job, run)
        if job.status != "running":
            job.ended = job.ended or time.time()
        if job.to_dict() != before:
            self._save(job)
        return job

    def _close_event_log(self, job: Job, run: dict) -> None:
        """End the attempt's events.jsonl for a process that ended without writing its end (killed, or stopped before
        training began), so that anything following the run's log sees it end too (as distributed/launch.py does)."""
        if "run" not in run:
            return  # the process never wrote `started`: there is no attempt to close
        from tuneforge.run.events import EventLog
        from tuneforge.train.output import checkpoints

        events = EventLog(job.output_dir, enabled=True)
        events.run_id = run["run"]
        if job.status == "stopped":
            found = checkpoints(job.output_dir)
            job.checkpoint = found[-1] if found else None
            events.emit("stopped", step=job.step, checkpoint=job.checkpoint,
                        message=f"the process ended ({_how(job.exit_code)}) after a stop was asked for; "
                                + (f"newest checkpoint: {job.checkpoint}" if job.checkpoint else "no checkpoint"))
        else:
            events.emit("failed", error=job.error, key=None, problems=[], type="ProcessEnded")

    def _run_state(self, job: Job) -> dict:
        """state() of this job's attempt: the events from the last `started` written after the job was launched (an
        output_dir resumed by several jobs keeps every attempt's events)."""
        events = self._read_events(job.output_dir)
        mine = [i for i, e in enumerate(events) if e.get("event") == "started" and e.get("time", 0) >= (job.started or 0) - 1]
        return state(events[mine[-1]:]) if mine else {"state": "none"}

    def _read_events(self, output_dir: str) -> list:
        """Complete lines of output_dir/events.jsonl, read incrementally (a running job's log is re-read every poll)."""
        path = os.path.join(output_dir, EVENTS_FILE)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return []
        inode, offset, events = self._events.get(path, (st.st_ino, 0, []))
        if inode != st.st_ino or st.st_size < offset:
            offset, events = 0, []
        if st.st_size > offset:
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            complete = chunk[:chunk.rfind(b"\n") + 1]
            for line in complete.splitlines():
                if line.strip():
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        log.warning("%s: skipping a line that is not JSON", path)
            offset += len(complete)
        self._events[path] = (st.st_ino, offset, events)
        return events

    # ------------------------------------------------------------------ launching

    def _start_next(self, jobs: list[Job]) -> None:
        if any(j.status == "running" for j in jobs):
            return
        queued = sorted((j for j in jobs if j.status == "queued"), key=lambda j: (j.created, j.id))
        if queued:
            self._launch(queued[0])

    def _launch(self, job: Job) -> None:
        """Start the job detached: its own session (so its process group is its own and a closed Board does not end
        it), no stdin, stdout and stderr into console.log, an argument list (no shell)."""
        argv = [*self.command, job.config_path]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        job.started = time.time()
        try:
            with open(os.path.join(job.folder, CONSOLE_FILE), "ab") as console:
                proc = subprocess.Popen(argv, cwd=job.cwd if os.path.isdir(job.cwd) else None, env=env, stdin=subprocess.DEVNULL,
                                        stdout=console, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as e:
            job.status, job.error, job.ended = "failed", f"could not start `{argv[0]}`: {e}", time.time()
            self._save(job)
            return
        job.status, job.pid, job.phase = "running", proc.pid, "starting"
        job.proc_start, job.boot_id = process.process_start(proc.pid), process.boot_id()
        process.CHILDREN[(proc.pid, job.proc_start)] = proc
        self._save(job)
        log.info("run %s started (pid %d): %s", job.id, proc.pid, " ".join(argv))

    @contextlib.contextmanager
    def _locked(self):
        """This object's lock and a file lock on the runs folder, so that two Boards on one folder never start two runs."""
        with self._lock, open(os.path.join(self.root, ".lock"), "a") as fh:
            try:
                import fcntl
            except ImportError:  # not a POSIX system: the thread lock alone
                yield
                return
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------------- files


def _write_json(path: str, data: dict) -> None:
    """Replace `path` in one rename: a reader (another Board) sees the old file or the new one, never half of one."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, default=str)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _tail(path: str, lines: int, max_bytes: int = 256 * 1024) -> list[str]:
    """The last `lines` lines of a text file, reading at most its last `max_bytes`; for a line redrawn with carriage
    returns (a progress bar) only its last drawing."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    out = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    if size > max_bytes:
        out = out[1:]  # the first line read is probably cut
    while out and not out[-1].strip():
        out.pop()
    return out[-lines:] if lines > 0 else []


_ERROR_LINE = re.compile(r"^(error: |[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b)")


def _last_error(console: str, exit_code: int | None) -> str:
    """Why a process ended without a final event: its console's last error line (the CLI's `error: ...` or a
    traceback's last line), else its last line; with how it exited when that is known."""
    lines = [line.strip() for line in _tail(console, 400) if line.strip()]
    found = next((line for line in reversed(lines) if _ERROR_LINE.match(line)), lines[-1] if lines else None)
    if found:
        return f"{found} ({_how(exit_code)})" if exit_code is not None else found
    return f"the process ended without writing an error ({_how(exit_code)}); see {console}"


def _how(exit_code: int | None) -> str:
    """How a process ended, in words: `exit code 1`, `killed by SIGKILL (out of memory?)`."""
    if exit_code is None:
        return "exit status unknown"
    if exit_code >= 0:
        return f"exit code {exit_code}"
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        name = f"signal {-exit_code}"
    return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
