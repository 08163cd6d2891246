"""SFT throughput of the quickstart recipe (SmolLM2-135M, batch 4, cutoff 256) in fp32 and bf16, LoRA and full FT.

usage: python benchmarks/sft_throughput.py [--steps 30] [--warmup 5] [--only lora-fp32,...] [--noise] [--repeat 1] [key=value ...]
Rows (each a fresh `tuneforge train` process; the GGUF conversion and tokenization are cached first):
  lora-fp32 / lora-bf16-weights / lora-bf16-autocast: LoRA r8 all-linear with fp32 weights, with a bf16 base and fp32
  adapters (`torch_dtype: bfloat16`, the fast path on a CPU with AMX/AVX512-BF16), and fp32 weights under bf16 autocast;
  full-fp32 / full-bf16-autocast: full fine-tuning, fp32 master weights, without and with `bf16: true`.
Real tokens/s counts non-padding tokens between the end of the warm-up steps and the last step. `loss max|d|` is the
largest per-step loss difference from the fp32 row of the same method over all steps; `--noise` adds a fp32 row with
another seed (other adapter init and data order) as the run-to-run scale. `--repeat N` runs the rows N times interleaved
(A B A B ...; for a shared machine) and reports each row's median tokens/s. Prints a table, then one key=value line.
"""

import argparse
import os
import statistics
import sys
import tempfile

from worker import run_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
CONFIG = os.path.join(ROOT, "examples", "quickstart_lora_sft.yaml")
FULL = ["finetuning_type=full", "learning_rate=1e-5"]
VARIANTS = [
    ("lora-fp32", ["torch_dtype=float32"]),
    ("lora-bf16-weights", ["torch_dtype=bfloat16"]),
    ("lora-bf16-autocast", ["torch_dtype=float32", "bf16=true"]),
    ("full-fp32", [*FULL, "torch_dtype=float32"]),
    ("full-bf16-autocast", [*FULL, "torch_dtype=float32", "bf16=true"]),
]
NOISE = ("lora-fp32-seed43", ["torch_dtype=float32", "seed=43"])


def run(name, extra, steps, warmup, overrides, workdir):
    out = os.path.join(workdir, name)
    wall, res, steps_log = run_train([CONFIG, f"max_steps={steps}", "logging_steps=1", "save_strategy=no", "plot_loss=false",
                                      *extra, *overrides], out, ROOT, name)
    a, b = steps_log[warmup - 1], steps_log[-1]
    tps = (b["num_input_tokens_seen"] - a["num_input_tokens_seen"]) / (b["elapsed_s"] - a["elapsed_s"])
    return {"variant": name, "tokens_per_s": tps, "first_step_s": res["first_step_since_process_start_s"],
            "peak_rss_gib": res["peak_rss_gib"], "wall_s": wall, "losses": [s["loss"] for s in steps_log]}


def main():
    from tuneforge import hardware

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", default=None, help="comma-separated variants to run")
    ap.add_argument("--noise", action="store_true", help="add a fp32 LoRA row with seed 43 (run-to-run loss noise)")
    ap.add_argument("--repeat", type=int, default=1, help="run every row this many times, interleaved; median tokens/s")
    args, overrides = ap.parse_known_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    variants = [v for v in VARIANTS if not args.only or v[0] in args.only.split(",")] + ([NOISE] if args.noise else [])
    with tempfile.TemporaryDirectory() as workdir:
        run("warm-cache", [], 2, 1, overrides, workdir)  # GGUF conversion, tokenized data: measure training, not setup
        runs = [run(n, e, args.steps, args.warmup, overrides, workdir) for _ in range(args.repeat) for n, e in variants]
    rows = []
    for name, _ in variants:
        mine = [r for r in runs if r["variant"] == name]
        rows.append({**mine[0], "tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
                     "all_tokens_per_s": [r["tokens_per_s"] for r in mine], "peak_rss_gib": max(r["peak_rss_gib"] for r in mine)})
    flags = ",".join(hardware.cpu_bf16_flags()) or "none"
    by = {r["variant"]: r for r in rows}
    print(f"SmolLM2-135M, batch 4, cutoff 256, {args.steps} steps ({args.warmup} warm-up), {os.cpu_count()} CPUs, "
          f"CPU bf16 flags: {flags}")
    print(f"{'variant':<20}{'real tok/s':>11}{'x fp32':>8}{'peak RSS GiB':>14}{'first step s':>14}{'wall s':>8}"
          f"{'loss first->last':>20}{'loss max|d|':>13}  runs tok/s")
    summary = [f"cpu_bf16_flags={flags}", f"steps={args.steps}", f"repeat={args.repeat}",
               f"threads={os.environ.get('OMP_NUM_THREADS', os.cpu_count())}", f"load_avg={os.getloadavg()[0]:.1f}"]
    for r in rows:
        ref = by.get(r["variant"].split("-")[0] + "-fp32")
        speed = r["tokens_per_s"] / ref["tokens_per_s"] if ref else float("nan")
        diff = max(abs(x - y) for x, y in zip(r["losses"], ref["losses"])) if ref else float("nan")
        print(f"{r['variant']:<20}{r['tokens_per_s']:>11.1f}{speed:>8.2f}{r['peak_rss_gib']:>14.2f}{r['first_step_s']:>14.1f}"
              f"{r['wall_s']:>8.0f}{r['losses'][0]:>11.3f} -> {r['losses'][-1]:.3f}{diff:>13.3f}  "
              + " ".join(f"{t:.1f}" for t in r["all_tokens_per_s"]))
        key = r["variant"].replace("-", "_")
        summary += [f"{key}_tokens_per_s={r['tokens_per_s']:.1f}", f"{key}_peak_rss_gib={r['peak_rss_gib']:.2f}"]
        if ref and ref is not r:
            summary += [f"{key}_over_fp32={speed:.2f}", f"{key}_loss_max_abs_diff={diff:.3f}"]
    print(" ".join(summary))


if __name__ == "__main__":
    main()
