"""Each training stage's estimate against the measured peak RSS of its shipped recipe on SmolLM2-135M.

For every stage recipe in examples/ (sft, pt, dpo, orpo, kto, rm, ppo, grpo): `tuneforge estimate RECIPE --json` (the
stage's memory hook applied: a pair's two rows, a reference copy, generation caches, the reward model) and then
`tuneforge train RECIPE max_steps=N` in a fresh process under GNU time, whose "Maximum resident set size" is the
whole process's peak. The estimate is the whole process's too (it budgets the interpreter and libraries, the malloc
the run uses and the checkpoint's file pages; see estimator_accuracy.py); the baseline (a process that only imports
what a run imports) is printed for reference.
ppo reads the reward model the rm recipe saves, so rm runs first.

usage: python benchmarks/stage_memory.py [--steps 3] [--only dpo,grpo]
Prints a table and ends with one key=value line (max_abs_error_pct=...).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from worker import run_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
# stage -> (recipe, extra settings); ppo's reward_model is filled in from the rm run
RECIPES = {
    "sft": ("quickstart_lora_sft.yaml", []),
    "pt": ("pt_lora.yaml", []),
    "dpo": ("dpo_lora.yaml", []),
    "orpo": ("orpo_lora.yaml", []),
    "kto": ("kto_lora.yaml", []),
    "rm": ("rm_lora.yaml", ["save_strategy=no"]),
    "ppo": ("ppo_lora.yaml", []),
    "grpo": ("grpo_lora.yaml", []),
}
SHORT = ["save_strategy=no", "logging_steps=1", "disable_tqdm=true", "plot_loss=false", "allocator=system"]


def estimate(recipe: str, extra: list[str]) -> dict:
    tool = os.path.join(os.path.dirname(sys.executable), "tuneforge")
    proc = subprocess.run([tool, "estimate", f"examples/{recipe}", *extra, "--json"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"estimate {recipe} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_gib(time_file: str) -> float:
    with open(time_file) as fh:
        kib = next(int(line.split(":")[1]) for line in fh if "Maximum resident set size" in line)
    return kib * 1024 / GIB


def baseline_gib(work: str) -> float:
    """Peak RSS of a process that imports what a training run imports and nothing more."""
    time_file = os.path.join(work, "baseline.time")
    code = "import torch, transformers, peft, trl, datasets\nfrom transformers import Trainer\nimport tuneforge.cli, tuneforge.run, tuneforge.stages"
    subprocess.run(["/usr/bin/time", "-v", "-o", time_file, sys.executable, "-c", code], cwd=ROOT, check=True)
    return peak_rss_gib(time_file)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated stages (ppo needs rm: it is run too)")
    a = ap.parse_args()
    wanted = [s for s in RECIPES if not a.only or s in a.only.split(",") or (s == "rm" and "ppo" in a.only.split(","))]
    rows, work = [], tempfile.mkdtemp(prefix="stage-memory-")
    base = baseline_gib(work)
    print(f"baseline (imports only): {base:.2f} GiB", flush=True)
    for stage in wanted:
        recipe, extra = RECIPES[stage]
        if stage == "ppo":
            extra = [*extra, f"reward_model={os.path.join(work, 'rm')}"]
        est = estimate(recipe, extra)
        time_file = os.path.join(work, f"{stage}.time")
        wall, results, _ = run_train([f"examples/{recipe}", *extra, *SHORT, f"max_steps={a.steps}"], os.path.join(work, stage), ROOT,
                                     stage, time_file)
        whole = peak_rss_gib(time_file)
        measured = whole - base
        error = 100 * (est["total_gib"] - whole) / whole
        rows.append((stage, recipe, est["total_gib"], whole, measured, error, est["batch"]))
        print(f"{stage}: estimate {est['total_gib']:.2f} GiB, measured {whole:.2f} GiB whole process ({measured:.2f} above baseline), "
              f"{error:+.1f}%, {wall:.0f}s", flush=True)
    print("\n| stage | recipe | estimate GiB | peak RSS GiB (whole process) | above baseline | error | batch the estimate counts |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for stage, recipe, est, whole, measured, error, batch in rows:
        print(f"| {stage} | {recipe} | {est:.2f} | {whole:.2f} | {measured:.2f} | {error:+.1f}% | {batch} |")
    worst = max(rows, key=lambda r: abs(r[5]))
    print(f"max_abs_error_pct={abs(worst[5]):.1f} worst_stage={worst[0]} stages={len(rows)} steps={a.steps}")


if __name__ == "__main__":
    main()
