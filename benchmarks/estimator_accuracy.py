"""Predicted vs measured memory for short real trainings on the CPU.

Models: SmolLM2-135M-Instruct, a tiny random GQA Llama (6 layers, 256 wide, 8 heads / 2 KV heads) and a tiny
random model with a large vocabulary (128,256 entries, untied head). Methods: full, freeze, lora, qlora 4-bit and 8-bit,
lora + 8-bit AdamW, lora + gradient checkpointing (every layer, every 2nd layer), galore, lisa. Every batch is exactly batch x cutoff tokens (the
rows are long and truncated), so the estimate's b and s are the real ones.

Measured: tensor bytes by category, exactly (weights, gradients, optimizer states; at their peak after an
optimizer step), and the process's peak RSS above its baseline (after imports, before loading anything) for the
total. Each run is a fresh process.

usage: python benchmarks/estimator_accuracy.py [--steps 4] [--only smollm2:lora,gqa:full]
Prints a table and ends with one key=value line (max_error_pct=...).
"""

import argparse
import json
import os
import sys
import tempfile

from worker import run_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "smollm2": {"batch": 4, "seq": 256},
    "gqa": {"batch": 4, "seq": 256, "shape": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                                                  num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)},
    "bigvocab": {"batch": 4, "seq": 128, "shape": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                                                       num_key_value_heads=4, tie_word_embeddings=False, vocab_size=128256)},
}
METHODS = {
    "full": ["finetuning_type=full"],
    "freeze": ["finetuning_type=freeze", "freeze_trainable_layers=2"],
    "lora": ["finetuning_type=lora"],
    "qlora4": ["finetuning_type=lora", "quantization_bit=4"],
    "qlora8": ["finetuning_type=lora", "quantization_bit=8"],
    "lora+adam8bit": ["finetuning_type=lora", "optim=adamw_bnb_8bit"],
    "lora+gc": ["finetuning_type=lora", "gradient_checkpointing=true"],
    "lora+gc2": ["finetuning_type=lora", "gradient_checkpointing=true", 'gradient_checkpointing_kwargs={"every_n_layers": 2}'],
    "galore": ["finetuning_type=galore", "galore_rank=16"],
    "lisa": ["finetuning_type=lisa", "lisa_layers=2", "lisa_interval=2"],
}
GIB = 2**30
# A fixed mmap threshold: glibc otherwise raises it as blocks are freed, after which freed tensors stay in the
# heap and the peak RSS varies by ~0.5 GiB between identical runs. With it, RSS follows the live tensors.
ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
WORDS = ("the model learns from long rows of text so that every batch is exactly full and the memory estimate "
         "can be checked against what the process really holds while it trains on the processor").split()


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS"))


def prepare(workdir: str) -> dict:
    """The dataset folder (long rows) and the two random model folders; returns {model: folder or alias}."""
    import random

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tuneforge.config.schema import ModelSection
    from tuneforge.data.cache import cache_root
    from tuneforge.models import local_folder

    rng = random.Random(0)
    rows = [{"instruction": " ".join(rng.choice(WORDS) for _ in range(60)), "output": " ".join(rng.choice(WORDS) for _ in range(400))}
            for _ in range(64)]
    data = os.path.join(workdir, "data")
    os.makedirs(data)
    with open(os.path.join(data, "long.json"), "w") as fh:
        json.dump(rows, fh)
    with open(os.path.join(data, "dataset_info.json"), "w") as fh:
        json.dump({"long": {"file_name": "long.json"}}, fh)
    smol = local_folder(ModelSection(), cache_root(None))
    tok = AutoTokenizer.from_pretrained(smol)
    folders = {"smollm2": "smollm2-135m-instruct"}
    for name, spec in MODELS.items():
        if "shape" not in spec:
            continue
        torch.manual_seed(0)
        kw = {"vocab_size": len(tok), **spec["shape"]}
        cfg = LlamaConfig(**kw, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_position_embeddings=2048)
        folder = os.path.join(workdir, name)
        LlamaForCausalLM(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)
        folders[name] = folder
    return folders


def worker(model: str, folder: str, method: str, data: str, steps: int, out: str) -> None:
    """One measured run in this (fresh) process; prints one JSON line."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from tuneforge import config
    from tuneforge.memory import TensorBytesProbe, estimate
    from tuneforge import run

    spec = MODELS[model]
    cfg = config.load(None, [f"model_name_or_path={folder}", "dataset=long", f"dataset_dir={data}", f"output_dir={out}",
                             f"cutoff_len={spec['seq']}", f"per_device_train_batch_size={spec['batch']}", f"max_steps={steps}",
                             "learning_rate=1e-4", "save_strategy=no", "logging_steps=1", "disable_tqdm=true", "template=chatml",
                             *METHODS[method]])
    predicted = estimate(cfg)
    import gc

    gc.collect()
    baseline = _rss_bytes()
    trainer, _, _ = run.build(cfg)
    probe = TensorBytesProbe()
    trainer.add_callback(probe)
    trainer.train()
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"model": model, "method": method, "predicted": predicted.to_dict(),
                      "measured": {"weights": probe.peak["weights"], "gradients": probe.peak["gradients"],
                                   "optimizer": probe.peak["optimizer"], "total": peak - baseline}}))


def err(pred: float, meas: float) -> float:
    return 100.0 * (pred - meas) / meas if meas else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--only", default=None, help="comma-separated model:method pairs")
    ap.add_argument("--worker", nargs=5, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        model, folder, method, data, out = args.worker
        return worker(model, folder, method, data, args.steps, out)
    pairs = [p.split(":") for p in args.only.split(",")] if args.only else [(m, k) for m in MODELS for k in METHODS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = prepare(tmp)
        for model, method in pairs:
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--worker", model, folders[model], method,
                   os.path.join(tmp, "data"), os.path.join(tmp, f"out-{model}-{method}")]
            row = run_worker(cmd, ROOT, f"{model}:{method}", ENV)
            if row is None:
                continue
            rows.append(row)
            r = rows[-1]
            print(f"  {model}:{method} predicted {r['predicted']['total_gib']:.3f} measured {r['measured']['total'] / GIB:.3f} GiB",
                  file=sys.stderr, flush=True)
    print(f"estimator vs measurement, CPU, fp32, {args.steps} steps; categories: exact tensor bytes; total: peak RSS above baseline")
    print(f"{'model':<10}{'method':<15}{'weights':>17}{'gradients':>17}{'optimizer':>17}{'total GiB pred/meas':>22}{'error %':>9}")
    errors = []
    for r in rows:
        p, m = r["predicted"], r["measured"]
        cells = [f"{p[k + '_gib']:.3f}/{m[k] / GIB:.3f}" for k in ("weights", "gradients", "optimizer")]
        e = err(p["total_gib"] * GIB, m["total"])
        errors.append(abs(e))
        print(f"{r['model']:<10}{r['method']:<15}{cells[0]:>17}{cells[1]:>17}{cells[2]:>17}"
              f"{p['total_gib']:>11.3f}/{m['total'] / GIB:<10.3f}{e:>+8.1f}")
    within10 = sum(e <= 10 for e in errors)
    within15 = sum(e <= 15 for e in errors)
    print(f"runs={len(errors)} max_error_pct={max(errors):.1f} mean_abs_error_pct={sum(errors) / len(errors):.1f} "
          f"within_10pct={within10} within_15pct={within15}")


if __name__ == "__main__":
    main()
