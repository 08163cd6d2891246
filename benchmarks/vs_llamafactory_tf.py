"""tuneforge's side of benchmarks/vs_llamafactory.sh: its default run and the matched runs, then the table.

Each tuneforge run is a fresh `tuneforge train` process under GNU time (peak RSS of the whole process, as for the
peer). A one-step run first fills the tokenization cache, as any second run of a config finds it. With --fresh 1 the
runs see only the allocators a `pip install` brings (system-wide tcmalloc/jemalloc hidden), as on a fresh machine.
"""

import argparse
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "src"))
from matmul_peak import lora_flops_per_token, measure_peak  # noqa: E402
from worker import run_train  # noqa: E402

WORK = ["finetuning_type=lora", "lora_rank=8", "lora_alpha=16", "lora_dropout=0", "lora_target=all",
        "dataset=identity,pydoc_alpaca", "template=auto", "cutoff_len=256", "per_device_train_batch_size=4",
        "gradient_accumulation_steps=1", "learning_rate=1e-4", "max_steps=30", "lr_scheduler_type=cosine",
        "warmup_ratio=0.1", "seed=42", "logging_steps=1", "save_strategy=no", "plot_loss=false",
        "overwrite_output_dir=true"]
FP32 = ["torch_dtype=float32", "bf16=false"]
BF16 = ["torch_dtype=bfloat16"]
GC, NOGC = ["gradient_checkpointing=true"], ["gradient_checkpointing=false"]
# name: (our overrides, the peer line it is compared with, label)
RUNS = {
    "default": ([], "gc", "default settings (each tool's own)"),
    "fp32_gc": (FP32 + GC, "gc", "fp32, gradient checkpointing on"),
    "fp32_nogc": (FP32 + NOGC, "nogc", "fp32, gradient checkpointing off"),
    "bf16_gc": (BF16 + GC, "bf16_gc", "bf16, gradient checkpointing on"),
    "bf16_nogc": (BF16 + NOGC, "bf16_nogc", "bf16, gradient checkpointing off"),
}


def fresh_env() -> dict:
    """This environment with only the allocators a pip install brings visible to `allocator: auto`."""
    return {**os.environ, "TUNEFORGE_ALLOCATOR_SYSTEM": "0"}


def run_tf(model, data, out, extra, env):
    wall, res, steps = run_train([f"model_name_or_path={model}", f"dataset_dir={data}", *WORK, *extra], out, ROOT,
                                 " ".join(extra), time_file=out + ".time", env=env)
    losses = [s["loss"] for s in steps]
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(out + ".time").read()).group(1))
    resolved = open(os.path.join(out, "tuneforge_config.yaml")).read() if os.path.exists(os.path.join(out, "tuneforge_config.yaml")) else ""
    dtype = re.search(r"torch_dtype: (\w+)", resolved)
    gc = re.search(r"gradient_checkpointing: (\w+)", resolved)
    return {"tokens_per_s": res["train_tokens_per_second"], "peak_rss_gib": rss_kb / 2**20, "wall_s": wall,
            "train_runtime_s": res["train_runtime"], "first_loss": losses[0], "last_loss": losses[-1],
            "tokens": res["train_tokens"], "first_step_s": res["first_step_since_process_start_s"], "losses": losses,
            "malloc": res.get("malloc", "?"), "dtype": dtype.group(1) if dtype else "?", "gc": gc.group(1) if gc else "false"}


def read_peer(path):
    if not os.path.exists(path):
        return None
    line = open(path).read().strip()
    vals = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    return {k: float(vals[k]) for k in ("tokens_per_s", "peak_rss_gib", "wall_s", "train_runtime_s", "first_loss",
                                         "last_loss", "tokens")}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--peer-dir", required=True)
    ap.add_argument("--bf16", type=int, default=0, help="1: the CPU has fast bf16; add the bf16 rows")
    ap.add_argument("--fresh", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated run names (default: all)")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tuneforge import hardware

    env = fresh_env() if a.fresh else dict(os.environ)
    names = [n for n in RUNS if (a.bf16 or not n.startswith("bf16")) and (not a.only or n in a.only.split(","))]
    peer = {k: read_peer(os.path.join(a.peer_dir, f"vs_peer_{k}.txt")) for k in ("gc", "nogc", "bf16_gc", "bf16_nogc")}
    with tempfile.TemporaryDirectory() as work:
        run_tf(a.model, a.data, os.path.join(work, "warm"), ["max_steps=1"], env)
        ours = {n: run_tf(a.model, a.data, os.path.join(work, n), RUNS[n][0], env) for n in names}
    peak = measure_peak()
    flops = lora_flops_per_token(a.model)
    flags = ",".join(hardware.cpu_bf16_flags()) or "none"
    print(f"SmolLM2-135M LoRA r8 all-linear, batch 4, cutoff 256, 30 steps (120 samples, 1 epoch), {os.cpu_count()} CPUs, "
          f"bf16 flags: {flags}; fp32 matmul peak {peak:.0f} GFLOP/s; tuneforge malloc: {ours[names[0]]['malloc']}"
          f"{' (fresh install: system allocators hidden)' if a.fresh else ''}; LLaMA-Factory: glibc")
    head = f"{'run':<58}{'real tok/s':>11}{'train s':>9}{'wall s':>8}{'peak RSS GiB':>14}{'loss first':>12}{'loss last':>11}{'tokens':>8}"
    print(head)
    summary = {}
    for n in names:
        peer_key, label = RUNS[n][1], RUNS[n][2]
        r, p = ours[n], peer[peer_key]
        if p:
            print(f"{'LLaMA-Factory 0.9.5, ' + (label if n != 'default' else 'default (fp32, checkpointing on)'):<58}"
                  f"{p['tokens_per_s']:>11.1f}{p['train_runtime_s']:>9.1f}{p['wall_s']:>8.1f}{p['peak_rss_gib']:>14.2f}"
                  f"{p['first_loss']:>12.4f}{p['last_loss']:>11.4f}{int(p['tokens']):>8}")
        ours_label = f"tuneforge, {label}" + (f" ({r['dtype']}, checkpointing {r['gc']})" if n == "default" else "")
        print(f"{ours_label:<58}{r['tokens_per_s']:>11.1f}{r['train_runtime_s']:>9.1f}{r['wall_s']:>8.1f}"
              f"{r['peak_rss_gib']:>14.2f}{r['first_loss']:>12.4f}{r['last_loss']:>11.4f}{int(r['tokens']):>8}")
        if p:
            summary[f"speedup_{n}"] = r["tokens_per_s"] / p["tokens_per_s"]
            summary[f"wall_speedup_{n}"] = p["wall_s"] / r["wall_s"]
            summary[f"rss_ratio_{n}"] = r["peak_rss_gib"] / p["peak_rss_gib"]
    if "fp32_nogc" in ours and "bf16_nogc" in ours:
        summary["bf16_vs_fp32_tokens"] = ours["bf16_nogc"]["tokens_per_s"] / ours["fp32_nogc"]["tokens_per_s"]
        summary["bf16_vs_fp32_max_loss_diff"] = max(abs(x - y) for x, y in zip(ours["bf16_nogc"]["losses"], ours["fp32_nogc"]["losses"]))
    summary.update({"cpu_bf16_flags": flags, "malloc": ours[names[0]]["malloc"], "fresh": a.fresh,
                    "default_dtype": ours.get("default", {}).get("dtype", "?"), "default_gc": ours.get("default", {}).get("gc", "?"),
                    "matmul_peak_gflops": peak, "mfu_fp32_nogc": ours["fp32_nogc"]["tokens_per_s"] * flops / (peak * 1e9) if "fp32_nogc" in ours else 0.0,
                    "first_step_s": ours[names[0]]["first_step_s"]})
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
