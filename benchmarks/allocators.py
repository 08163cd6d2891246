"""Each malloc a run can get, side by side: glibc, glibc with tunables, mimalloc (the cmeel-mimalloc wheel), tcmalloc.

The vs-LLaMA-Factory settings (LoRA r8 all linear, batch 4, cutoff 256, fp32, 30 steps by default), with and without activation
checkpointing; every run is a fresh `tuneforge train` under GNU time (whole-process peak RSS). Runs are interleaved
(allocator innermost) so machine load hits every allocator alike; a one-step run fills the tokenization cache first.

    python benchmarks/allocators.py --model /tmp/tf-peer/smollm2-hf --data /tmp/tf-peer/vs-data --reps 2
"""

import argparse
import os
import re
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "src"))
from worker import run_train  # noqa: E402

from tuneforge.train import allocator  # noqa: E402

WORK = ["finetuning_type=lora", "lora_rank=8", "lora_alpha=16", "lora_dropout=0", "lora_target=all",
        "dataset=identity,pydoc_alpaca", "template=auto", "cutoff_len=256", "per_device_train_batch_size=4",
        "learning_rate=1e-4", "lr_scheduler_type=cosine", "warmup_ratio=0.1", "seed=42", "logging_steps=1",
        "save_strategy=no", "plot_loss=false", "overwrite_output_dir=true", "torch_dtype=float32", "bf16=false"]
TUNABLES = {"MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_TOP_PAD_": str(64 << 20)}


def variants() -> dict[str, tuple[list[str], dict]]:
    """name -> (config overrides, environment changes)."""
    mimalloc = allocator.find_library("mimalloc")
    out = {"glibc": (["allocator=system"], {}),
           "glibc-tuned": (["allocator=system"], dict(TUNABLES))}
    if mimalloc:
        out["mimalloc"] = (["allocator=system"], {"LD_PRELOAD": mimalloc})
    if allocator.find_library("tcmalloc"):
        out["tcmalloc"] = (["allocator=tcmalloc"], {})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/tf-peer/smollm2-hf")
    ap.add_argument("--data", default="/tmp/tf-peer/vs-data")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--checkpointing", default="false,true", help="gradient_checkpointing values to run")
    ap.add_argument("--no-warmup", action="store_true", help="the tokenization cache is already warm")
    a = ap.parse_args()
    base = [f"model_name_or_path={a.model}", f"dataset_dir={a.data}", *WORK]
    env0 = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.MARK) and not k.startswith("MALLOC_")}
    chosen = {k: v for k, v in variants().items() if not a.only or k in a.only.split(",")}
    rows: dict[tuple, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not a.no_warmup:
            run_train([*base, "max_steps=1", "allocator=system"], os.path.join(tmp, "warm"), ROOT, "warm-up", env=env0)
        for rep in range(a.reps):
            for gc in a.checkpointing.split(","):
                for name, (extra, env) in chosen.items():
                    out = os.path.join(tmp, f"{name}-{gc}-{rep}")
                    _, res, _ = run_train([*base, f"max_steps={a.steps}", f"gradient_checkpointing={gc}", *extra], out, ROOT,
                                          name, time_file=out + ".time", env={**env0, **env})
                    timing = open(out + ".time").read()
                    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing).group(1))
                    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", timing).group(1)) for k in ("User", "System"))
                    # CPU seconds per 1k tokens: the whole process (startup included), steadier than tokens/s under load
                    row = (res["train_tokens_per_second"], rss / 2**20, res.get("malloc", "?"), 1000 * cpu / res["train_tokens"])
                    rows.setdefault((name, gc), []).append(row)
                    print(f"rep {rep} gc={gc:5s} {name:13s} malloc={row[2]:9s} tokens/s={row[0]:7.1f} cpu_s/1k_tokens={row[3]:6.2f} "
                          f"peak_rss={row[1]:.3f} GiB load={os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n{'allocator':13s} {'ckpt':5s} {'malloc':9s} {'tokens/s':>9s} {'cpu s/1k tok':>13s} {'peak RSS GiB':>13s}  runs (medians)")
    summary = []
    for (name, gc), rs in rows.items():
        tps, rss, cpu = (statistics.median(r[i] for r in rs) for i in (0, 1, 3))
        print(f"{name:13s} {gc:5s} {rs[0][2]:9s} {tps:9.1f} {cpu:13.2f} {rss:13.3f}  {len(rs)}")
        tag = f"{name}_{'gc' if gc == 'true' else 'nogc'}"
        summary.append(f"{tag}_tps={tps:.1f} {tag}_cpu_s_per_1k={cpu:.2f} {tag}_rss_gib={rss:.3f}")
    print(f"load={os.getloadavg()[0]:.1f} steps={a.steps} reps={a.reps} " + " ".join(summary))


if __name__ == "__main__":
    main()
