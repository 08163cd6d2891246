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
