"""First-run experience: how long `tuneforge estimate`, `tuneforge train --help` and a config check take, and the
time to the first training step of the quickstart's second run (GGUF conversion and tokenization cached).

Every command is a fresh process; the commands are interleaved (A B C A B C ...) so machine load hits them alike, and
the first round is a warm-up (page cache, the field tables, the estimate's batch memo). Wall seconds and CPU seconds
(user + system, steadier on a loaded machine) are medians.

    python benchmarks/startup_time.py --reps 5 [--config examples/quickstart_lora_sft.yaml] [--no-train]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s of the child, result)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="examples/quickstart_lora_sft.yaml")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--train-reps", type=int, default=2, help="runs of the quickstart for the first-step time")
    ap.add_argument("--no-train", action="store_true")
    a = ap.parse_args()
    cli = [sys.executable, "-m", "tuneforge.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    commands = {
        "estimate": [*cli, "estimate", a.config],
        "train_help": [*cli, "train", "--help"],
        "config_check": [*cli, "train", a.config, "learning_rate=-1"],  # refused by validation: the whole check, no run
    }
    times: dict[str, list] = {k: [] for k in commands}
    for rep in range(a.reps + 1):
        for name, cmd in commands.items():
            wall, cpu, res = timed(cmd, env)
            if name != "config_check" and res.returncode != 0:
                raise SystemExit(f"{name} failed: {res.stderr[-2000:]}")
            if rep:  # round 0 warms caches
                times[name].append((wall, cpu))
    first_steps = []
    if not a.no_train:
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(a.train_reps + 1):  # run 0 converts the GGUF and tokenizes, when nothing did yet
                out = os.path.join(tmp, "run")
                _, _, res = timed([*cli, "train", a.config, f"output_dir={out}", "max_steps=2", "overwrite_output_dir=true",
                                   "plot_loss=false"], env)
                if res.returncode != 0:
                    raise SystemExit(f"train failed: {res.stderr[-2000:]}")
                if rep:
                    with open(os.path.join(out, "all_results.json")) as fh:
                        first_steps.append(json.load(fh)["first_step_since_process_start_s"])
    load = os.getloadavg()
    print(f"{'command':14s} {'wall s (median)':>16s} {'cpu s (median)':>15s}  runs   ({a.config}; load {load[0]:.1f} {load[1]:.1f})")
    summary = {}
    for name, rows in times.items():
        wall, cpu = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        print(f"{name:14s} {wall:16.2f} {cpu:15.2f}  {len(rows)}")
        summary[f"{name}_wall_s"], summary[f"{name}_cpu_s"] = round(wall, 2), round(cpu, 2)
    if first_steps:
        step = statistics.median(first_steps)
        print(f"{'first step':14s} {step:16.2f} {'':15s}  {len(first_steps)}   (second run of the config: process start to step 1 done)")
        summary["first_step_s"] = round(step, 2)
    summary["load1"] = round(load[0], 1)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
