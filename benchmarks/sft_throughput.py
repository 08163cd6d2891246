"""SFT throughput of the quickstart recipe (LoRA r8 all-linear, SmolLM2-135M, batch 4, cutoff 256) in fp32 and bf16.

usage: python benchmarks/sft_throughput.py [--steps 30] [--warmup 5] [key=value ...]
Each row is a fresh `tuneforge train` process (the GGUF conversion and tokenization are cached first, so
"first step" is a warm start). Real tokens/s counts non-padding tokens between the end of the warm-up steps
and the last step (the first steps are slow while memory warms). Prints a table, then one key=value line.
"""

import argparse
import os
import tempfile

from worker import run_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "examples", "quickstart_lora_sft.yaml")
VARIANTS = [
    ("fp32", []),
    ("bf16-autocast", ["bf16=true"]),
    ("bf16-weights", ["torch_dtype=bfloat16"]),
]


def run(name, extra, steps, warmup, overrides, workdir):
    out = os.path.join(workdir, name)
    wall, res, steps_log = run_train([CONFIG, f"max_steps={steps}", "logging_steps=1", "save_strategy=no", "plot_loss=false",
                                      *extra, *overrides], out, ROOT, name)
    a, b = steps_log[warmup - 1], steps_log[-1]
    tps = (b["num_input_tokens_seen"] - a["num_input_tokens_seen"]) / (b["elapsed_s"] - a["elapsed_s"])
    return {"variant": name, "tokens_per_s": tps, "tokens_per_s_all": res["train_tokens_per_second"],
            "first_step_s": res["first_step_since_process_start_s"], "peak_rss_gib": res["peak_rss_gib"],
            "wall_s": wall, "first_loss": steps_log[0]["loss"], "last_loss": steps_log[-1]["loss"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", default=None, help="comma-separated variants to run")
    args, overrides = ap.parse_known_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as workdir:
        # warm the caches (GGUF conversion, tokenized data) so rows measure training, not one-time setup
        run("warm-cache", [], 2, 1, overrides, workdir)
        rows = [run(n, e, args.steps, args.warmup, overrides, workdir) for n, e in VARIANTS
                if not args.only or n in args.only.split(",")]
    print(f"SmolLM2-135M LoRA r8 all-linear, batch 4, cutoff 256, {args.steps} steps ({args.warmup} warm-up), {os.cpu_count()} CPUs")
    print(f"{'variant':<15}{'real tok/s':>11}{'tok/s incl warm-up':>20}{'first step s':>14}{'peak RSS GiB':>14}{'wall s':>8}{'loss first->last':>20}")
    for r in rows:
        print(f"{r['variant']:<15}{r['tokens_per_s']:>11.1f}{r['tokens_per_s_all']:>20.1f}{r['first_step_s']:>14.1f}"
              f"{r['peak_rss_gib']:>14.2f}{r['wall_s']:>8.0f}{r['first_loss']:>11.3f} -> {r['last_loss']:.3f}")
    by = {r["variant"]: r for r in rows}
    summary = " ".join(f"{k}_tokens_per_s={v['tokens_per_s']:.1f} {k}_first_step_s={v['first_step_s']:.1f} "
                       f"{k}_peak_rss_gib={v['peak_rss_gib']:.2f}" for k, v in by.items()).replace("-", "_")
    if "fp32" in by and "bf16-autocast" in by:
        summary += f" bf16_autocast_over_fp32={by['bf16-autocast']['tokens_per_s'] / by['fp32']['tokens_per_s']:.2f}"
    print(summary)


if __name__ == "__main__":
    main()
