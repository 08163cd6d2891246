"""tuneforge's side of benchmarks/vs_llamafactory.sh: the same run in both checkpointing settings, then the table.
A third run checkpoints every 2nd layer only (transformers' every_n_layers), compared with LLaMA-Factory's
checkpointing: the memory-for-speed middle ground `tuneforge estimate --fit` suggests when full activations do not fit.

Each tuneforge run is a fresh `tuneforge train` process under GNU time (peak RSS of the whole process, as for the
peer). A one-step run first fills the tokenization cache, as any second run of a config finds it.
"""

import argparse
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from matmul_peak import lora_flops_per_token, measure_peak  # noqa: E402
from worker import run_train  # noqa: E402

SETTINGS = ["finetuning_type=lora", "lora_rank=8", "lora_alpha=16", "lora_dropout=0", "lora_target=all",
            "dataset=identity,pydoc_alpaca", "template=auto", "cutoff_len=256", "per_device_train_batch_size=4",
            "gradient_accumulation_steps=1", "learning_rate=1e-4", "max_steps=30", "lr_scheduler_type=cosine",
            "warmup_ratio=0.1", "seed=42", "logging_steps=1", "save_strategy=no", "plot_loss=false",
            "overwrite_output_dir=true", "bf16=false"]


def run_tf(model, data, out, extra):
    wall, res, steps = run_train([f"model_name_or_path={model}", f"dataset_dir={data}", *SETTINGS, *extra], out, ROOT,
                                 " ".join(extra), time_file=out + ".time")
    losses = [s["loss"] for s in steps]
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(out + ".time").read()).group(1))
    return {"tokens_per_s": res["train_tokens_per_second"], "peak_rss_gib": rss_kb / 2**20, "wall_s": wall,
            "train_runtime_s": res["train_runtime"], "first_loss": losses[0], "last_loss": losses[-1],
            "tokens": res["train_tokens"], "first_step_s": res["first_step_since_process_start_s"], "losses": losses,
            "malloc": res.get("malloc", "?")}


def read_peer(path):
    line = open(path).read().strip()
    vals = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    return {k: float(vals[k]) for k in ("tokens_per_s", "peak_rss_gib", "wall_s", "train_runtime_s", "first_loss",
                                         "last_loss", "tokens")}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--peer-gc", required=True)
    ap.add_argument("--peer-nogc", required=True)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    peer = {"gc": read_peer(a.peer_gc), "nogc": read_peer(a.peer_nogc)}
    with tempfile.TemporaryDirectory() as work:
        run_tf(a.model, a.data, os.path.join(work, "warm"), ["max_steps=1"])
        ours = {"gc": run_tf(a.model, a.data, os.path.join(work, "gc"), ["gradient_checkpointing=true"]),
                "nogc": run_tf(a.model, a.data, os.path.join(work, "nogc"), ["gradient_checkpointing=false"]),
                "gc2": run_tf(a.model, a.data, os.path.join(work, "gc2"), ["gradient_checkpointing=true",
                                                                          'gradient_checkpointing_kwargs={"every_n_layers": 2}'])}
    peak = measure_peak()
    flops = lora_flops_per_token(a.model)
    print(f"SmolLM2-135M LoRA r8 all-linear, batch 4, cutoff 256, 30 steps (120 samples, 1 epoch), fp32, "
          f"{os.cpu_count()} CPUs; fp32 matmul peak {peak:.0f} GFLOP/s")
    head = f"{'run':<48}{'real tok/s':>11}{'train s':>9}{'wall s':>8}{'peak RSS GiB':>14}{'loss first':>12}{'loss last':>11}{'tokens':>8}{'MFU':>6}"
    print(head)
    rows = [("LLaMA-Factory 0.9.5, gradient checkpointing on", peer["gc"]), ("tuneforge, gradient checkpointing on", ours["gc"]),
            ("tuneforge, checkpointing every 2nd layer", ours["gc2"]),
            ("LLaMA-Factory 0.9.5, gradient checkpointing off", peer["nogc"]), ("tuneforge, gradient checkpointing off", ours["nogc"])]
    for who, r in rows:
        mfu = r["tokens_per_s"] * flops / (peak * 1e9)
        print(f"{who:<48}{r['tokens_per_s']:>11.1f}{r['train_runtime_s']:>9.1f}{r['wall_s']:>8.1f}"
              f"{r['peak_rss_gib']:>14.2f}{r['first_loss']:>12.4f}{r['last_loss']:>11.4f}{int(r['tokens']):>8}{mfu:>6.0%}")
    diffs = [abs(x - y) for run in ("gc", "gc2") for x, y in zip(ours[run]["losses"], ours["nogc"]["losses"])]
    summary = {
        "speedup_gc": ours["gc"]["tokens_per_s"] / peer["gc"]["tokens_per_s"],
        "speedup_nogc": ours["nogc"]["tokens_per_s"] / peer["nogc"]["tokens_per_s"],
        "wall_speedup_gc": peer["gc"]["wall_s"] / ours["gc"]["wall_s"],
        "wall_speedup_nogc": peer["nogc"]["wall_s"] / ours["nogc"]["wall_s"],
        "rss_ratio_gc": ours["gc"]["peak_rss_gib"] / peer["gc"]["peak_rss_gib"],
        "rss_ratio_nogc": ours["nogc"]["peak_rss_gib"] / peer["nogc"]["peak_rss_gib"],
        # each tool's default setting: LLaMA-Factory checkpoints, tuneforge does not
        "speedup_default": ours["nogc"]["tokens_per_s"] / peer["gc"]["tokens_per_s"],
        "rss_ratio_default": ours["nogc"]["peak_rss_gib"] / peer["gc"]["peak_rss_gib"],
        # checkpointing every 2nd layer against LLaMA-Factory's (every layer)
        "speedup_gc_every2": ours["gc2"]["tokens_per_s"] / peer["gc"]["tokens_per_s"],
        "rss_ratio_gc_every2": ours["gc2"]["peak_rss_gib"] / peer["gc"]["peak_rss_gib"],
        "tf_tokens_per_s_gc": ours["gc"]["tokens_per_s"], "tf_tokens_per_s_gc_every2": ours["gc2"]["tokens_per_s"],
        "tf_tokens_per_s_nogc": ours["nogc"]["tokens_per_s"],
        "mfu_nogc": ours["nogc"]["tokens_per_s"] * flops / (peak * 1e9), "matmul_peak_gflops": peak,
        "malloc": ours["nogc"]["malloc"],
        "first_step_s": ours["nogc"]["first_step_s"], "loss_last_delta": ours["nogc"]["last_loss"] - peer["nogc"]["last_loss"],
        "gc_vs_nogc_max_loss_diff": max(diffs),
    }
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
