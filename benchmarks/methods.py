"""Every fine-tuning method on SmolLM2-135M-Instruct with one fixed config (30 steps, batch 4, cutoff 256,
the quickstart data), each in a fresh process: trainable parameters, real tokens/s (after warm-up steps),
peak RSS, tensor bytes by category, final loss.

usage: python benchmarks/methods.py [--steps 30] [--warmup 5] [--only lora,qlora4] [key=value ...]
Prints a table and ends with one key=value line.
"""

import argparse
import json
import os
import sys
import tempfile

from worker import run_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {
    "full": ["finetuning_type=full", "learning_rate=2e-5"],
    "full+adam8bit": ["finetuning_type=full", "learning_rate=2e-5", "optim=adamw_bnb_8bit"],
    "freeze": ["finetuning_type=freeze", "freeze_trainable_layers=2", "learning_rate=1e-4"],
    "lora": [],
    "lora+gc": ["gradient_checkpointing=true"],
    "lora+adam8bit": ["optim=adamw_bnb_8bit"],
    "qlora4": ["quantization_bit=4"],
    "qlora8": ["quantization_bit=8"],
    "dora": ["use_dora=true"],
    "pissa": ["pissa_init=true"],
    "loraplus": ["loraplus_lr_ratio=16", "learning_rate=2e-4"],
    "galore": ["finetuning_type=galore", "galore_rank=16", "galore_update_interval=10", "learning_rate=1e-4"],
    "lisa": ["finetuning_type=lisa", "lisa_layers=2", "lisa_interval=5", "learning_rate=1e-4"],
    "prefix": ["finetuning_type=prefix", "num_virtual_tokens=20", "learning_rate=1e-2"],
    "prompt": ["finetuning_type=prompt", "num_virtual_tokens=20", "learning_rate=1e-2"],
}
GIB = 2**30


def worker(name: str, steps: int, warmup: int, out: str, overrides: list[str]) -> None:
    """Run one method in this process and print one JSON line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.basicConfig(level=logging.WARNING)
    from tuneforge import config
    from tuneforge.memory import TensorBytesProbe
    from tuneforge.models.arch import count_parameters
    from tuneforge import run
    from tuneforge.train.procstats import peak_rss_gib

    cfg = config.load(os.path.join(ROOT, "examples", "quickstart_lora_sft.yaml"),
                      [f"output_dir={out}", f"max_steps={steps}", "logging_steps=1", "save_strategy=no", "plot_loss=false",
                       "disable_tqdm=true", *METHODS[name], *overrides])
    trainer, _, _ = run.build(cfg)
    probe = TensorBytesProbe()
    trainer.add_callback(probe)
    log = []
    import time

    class Timer(__import__("transformers").TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            log.append((time.time(), state.num_input_tokens_seen))

    trainer.add_callback(Timer())
    trainer.train()
    (t0, n0), (t1, n1) = log[warmup - 1], log[-1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainable, total = count_parameters(trainer.model)
    print(json.dumps({"method": name, "trainable": trainable, "total": total, "tokens_per_s": (n1 - n0) / (t1 - t0),
                      "peak_rss_gib": peak_rss_gib(), "first_loss": losses[0], "final_loss": sum(losses[-3:]) / 3,
                      **{f"{k}_bytes": v for k, v in probe.peak.items()}}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args()
    if args.worker:
        return worker(args.worker, args.steps, args.warmup, args.out, overrides)
    names = args.only.split(",") if args.only else list(METHODS)
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from tuneforge.config import parse_overrides
    from tuneforge.train import allocator

    # workers run under the malloc `tuneforge train` would pick (allocator=system in the overrides: glibc)
    env = allocator.plan(allocator.requested(parse_overrides(overrides)), dict(os.environ))
    malloc = env[allocator.MARK] if env else allocator.active()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            cmd = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--out", os.path.join(tmp, name), *overrides]
            row = run_worker(cmd, ROOT, f"{name}:", env)
            if row is None:
                continue
            rows.append(row)
            print(f"  {name}: {rows[-1]['tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)
    print(f"SmolLM2-135M-Instruct, quickstart data, batch 4, cutoff 256, {args.steps} steps ({args.warmup} warm-up), "
          f"fp32, {os.cpu_count()} CPUs, malloc {malloc}")
    head = f"{'method':<15}{'trainable':>12}{'tok/s':>8}{'peak RSS GiB':>14}{'weights GiB':>13}{'grads GiB':>11}{'optim GiB':>11}{'loss first->last':>20}"
    print(head)
    for r in rows:
        print(f"{r['method']:<15}{r['trainable']:>12,}{r['tokens_per_s']:>8.0f}{r['peak_rss_gib']:>14.2f}{r['weights_bytes'] / GIB:>13.3f}"
              f"{r['gradients_bytes'] / GIB:>11.3f}{r['optimizer_bytes'] / GIB:>11.3f}{r['first_loss']:>11.3f} -> {r['final_loss']:.3f}")
    summary = " ".join(f"{r['method'].replace('+', '_')}_tokens_per_s={r['tokens_per_s']:.0f} "
                       f"{r['method'].replace('+', '_')}_peak_rss_gib={r['peak_rss_gib']:.2f}" for r in rows)
    print(f"methods={len(rows)} " + summary)


if __name__ == "__main__":
    main()
