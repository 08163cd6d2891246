"""Run one benchmark worker in a fresh process and read the JSON line it prints last (shared by the benchmarks)."""

import json
import subprocess
import sys


def run_worker(cmd: list[str], cwd: str, label: str, env: dict | None = None) -> dict | None:
    """The worker's last `{...}` stdout line as a dict, or None (with its stderr tail printed) when it failed."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"{label} failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def run_train(args: list[str], out: str, cwd: str, label: str, time_file: str | None = None,
              env: dict | None = None) -> tuple[float, dict, list[dict]]:
    """`tuneforge train *args output_dir=out` in a fresh process (under GNU time writing `time_file`, if given):
    (wall seconds, all_results.json, the logged steps that carry a loss). Exits with its stderr tail on failure."""
    import os
    import time

    cmd = [os.path.join(os.path.dirname(sys.executable), "tuneforge"), "train", *args, f"output_dir={out}"]
    if time_file:
        cmd = ["/usr/bin/time", "-v", "-o", time_file, *cmd]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"{label}: tuneforge train failed ({proc.returncode})")
    with open(os.path.join(out, "all_results.json")) as fh:
        results = json.load(fh)
    with open(os.path.join(out, "trainer_log.jsonl")) as fh:
        steps = [json.loads(line) for line in fh if '"loss"' in line]
    return wall, results, steps


def status_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` figure in KiB (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))
    except (OSError, StopIteration, ValueError):
        return 0


def run_sampled(cmd: list[str], cwd: str, fields: tuple[str, ...], interval: float, env: dict | None = None,
                under_time: bool = False) -> tuple[int, str, dict[str, int]]:
    """Run `cmd` (stdout discarded), sampling the largest `/proc/<pid>/status` figures of `fields` (KiB) every
    `interval` s: (return code, stderr, {field: peak KiB}). `under_time`: `cmd` is GNU time, so the figures are its
    child's (`tuneforge` keeps its pid when it re-executes itself under another malloc)."""
    import tempfile
    import time

    peaks = dict.fromkeys(fields, 0)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, env=env, text=True)
        pid = None if under_time else proc.pid
        while proc.poll() is None:
            if pid is None:
                try:
                    pid = int(open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()[0])
                except (OSError, IndexError, ValueError):
                    pass
            if pid:
                for field in fields:
                    peaks[field] = max(peaks[field], status_kib(pid, field))
            time.sleep(interval)
        err.seek(0)
        return proc.returncode, err.read(), peaks
