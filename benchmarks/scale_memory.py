"""Per-process memory of a 2-process run on the CPU beside `tuneforge estimate --world_size 2 --sharding ...`.

Each row is one `tuneforge train nproc_per_node=2` on SmolLM2-135M-Instruct (the embedded GGUF, converted once),
the alpaca demo data (data/pydoc_alpaca.json), cutoff 256, batch 2 per process, a few steps, malloc `system`
(glibc). Every rank logs its own peak RSS (VmHWM: the most resident memory the process ever had, loading included);
the estimate is what `tuneforge estimate` prints for the same keys with --world_size 2 and the row's --sharding
(the larger of its training and loading peaks). Rows:

- ddp:        LoRA, plain DDP
- fsdp:       LoRA, fsdp: full_shard (FSDP2 applied by tuneforge on the CPU)
- fsdp_full:  full fine-tuning, fsdp: full_shard
- zero2/zero3: LoRA, DeepSpeed ZeRO-2 / ZeRO-3 with CPU offload (examples/deepspeed/); the first DeepSpeed run on a
               machine compiles its CPU ops (~150 s, cached in ~/.cache/tuneforge/torch_extensions)

usage: python benchmarks/scale_memory.py [--rows ddp,fsdp,fsdp_full,zero2,zero3] [--steps 4] [--workdir DIR]
Prints a table and ends with one key=value line (max_error_pct: the largest |estimate - measured| / measured over
every rank of every row).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = {
    "ddp": ("LoRA, DDP", "ddp", []),
    "fsdp": ("LoRA, FSDP2 full_shard", "fsdp", ["fsdp=full_shard"]),
    "fsdp_full": ("full, FSDP2 full_shard", "fsdp", ["finetuning_type=full", "fsdp=full_shard"]),
    "zero2": ("LoRA, ZeRO-2 offload", "zero2", ["deepspeed=examples/deepspeed/ds_z2_offload.json"]),
    "zero3": ("LoRA, ZeRO-3 offload", "zero3", ["deepspeed=examples/deepspeed/ds_z3_offload.json"]),
}


def keys(extra: list[str], steps: int) -> list[str]:
    base = ["model_name_or_path=smollm2", "finetuning_type=lora", "dataset=data/pydoc_alpaca.json", "template=chatml",
            "cutoff_len=256", "per_device_train_batch_size=2", "torch_dtype=float32", "allocator=system", "logging_steps=1",
            "save_strategy=no",
            f"max_steps={steps}", "disable_tqdm=true", "report_to=none"]
    return base + extra


def tuneforge() -> list[str]:
    return [sys.executable, "-m", "tuneforge.cli"]


def estimate(args: list[str], sharding: str, out: str) -> float:
    cmd = [*tuneforge(), "estimate", *args, f"output_dir={out}", "--world_size", "2", "--sharding", sharding, "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"estimate failed: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    return max(report["total_gib"], report.get("load_peak_gib") or 0.0)


def measure(args: list[str], out: str) -> tuple[dict[int, float], float, str]:
    """Per-rank peak RSS (GiB) from each rank's `peak RSS of this rank` line, the wall time and the log tail."""
    cmd = [*tuneforge(), "train", *args, f"output_dir={out}", "nproc_per_node=2", "overwrite_output_dir=true"]
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}, "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    if proc.returncode:
        raise SystemExit(f"train failed ({proc.returncode}): {log[-3000:]}")
    peaks = {int(r): float(g) for r, g in re.findall(r"\|rank(\d)\|[^\n]*peak RSS of this rank: ([0-9.]+) GiB", log)}
    return peaks, wall, log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="ddp,fsdp,fsdp_full")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--workdir", default=None)
    opts = ap.parse_args()
    workdir = opts.workdir or tempfile.mkdtemp(prefix="tuneforge-scale-memory-")
    rows = [r for r in opts.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    print(f"{'row':<26}{'rank 0 GiB':>11}{'rank 1 GiB':>11}{'estimate':>10}{'error %':>9}{'wall s':>8}")
    errors, summary = [], {}
    try:
        for name in rows:
            label, sharding, extra = ROWS[name]
            args = keys(extra, opts.steps)
            out = os.path.join(workdir, name)
            est = estimate(args, sharding, out + "-estimate")
            peaks, wall, _ = measure(args, out)
            if sorted(peaks) != [0, 1]:
                raise SystemExit(f"{name}: expected a peak RSS line from ranks 0 and 1, got {peaks}")
            worst = max(peaks.values(), key=lambda m: abs(est - m) / m)
            err = 100 * (est - worst) / worst
            errors.append(abs(err))
            summary[name] = (peaks, est, err)
            print(f"{label:<26}{peaks[0]:>11.3f}{peaks[1]:>11.3f}{est:>10.3f}{err:>+9.1f}{wall:>8.0f}", flush=True)
    finally:
        if not opts.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    load = os.getloadavg()[0]
    line = " ".join(f"{n}_rank0_gib={p[0]:.3f} {n}_rank1_gib={p[1]:.3f} {n}_estimate_gib={e:.3f}"
                    for n, (p, e, _) in summary.items())
    print(f"{line} max_error_pct={max(errors):.1f} load_avg_1m={load:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
