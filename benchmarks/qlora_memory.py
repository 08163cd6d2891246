"""QLoRA's memory on the CPU: peak RSS of `tuneforge train`, tokens/s and the pre-run estimate, for LoRA in fp32,
QLoRA 4-bit (NF4 + double quantization), QLoRA 4-bit + gradient checkpointing and 8-bit, on three models:

- smollm2: SmolLM2-135M-Instruct, the alpaca demo data (data/pydoc_alpaca.json), batch 4, cutoff 256, 8 steps;
- llama350m: a random Llama of ~320M parameters (SmolLM2's tokenizer), batch 2, cutoff 128, 4 steps;
- llama3b: a Llama-3.2-3B-shaped model (3.2B parameters) with random weights, batch 1, cutoff 256, 3 steps.

The random models are written to disk shard by shard in bf16 (building the 3B one never holds more than one shard,
~1 GiB), under --workdir (default: a temporary folder under /tmp, deleted at the end). Each run is a fresh
`tuneforge train` process (under the malloc it picks); peak RSS is that process's own (VmHWM, all_results.json).
While a model loads, transformers keeps every safetensors shard memory-mapped, and the pages it has read count in
RSS (file-backed: the kernel can drop them, the checkpoint's size at most), so the anonymous RSS (RssAnon, sampled
every 0.25 s) is printed beside it: the memory the run really needs, and what the estimate models. tokens/s counts
the steps after `warmup`; the estimate is the `memory estimate:` line the run prints before loading, for the largest
batch of the data; `group_by_length` makes that batch the first one (its longest examples first), so a short run sees it.
The fp32 LoRA run of the 3B model needs ~14 GiB: it is skipped when less than 16 GiB is available.

usage: python benchmarks/qlora_memory.py [--models smollm2,llama350m,llama3b] [--rows lora,qlora4,qlora4_gc,qlora8]
                                        [--set llama3b.steps=2 ...] [--workdir DIR]
Prints a table, the largest models the estimator fits in 24 GiB, and ends with one key=value line.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile

from worker import run_sampled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
ROWS = {
    "lora": ("LoRA fp32", []),
    "qlora4": ("QLoRA 4-bit", ["quantization_bit=4"]),
    "qlora4_gc": ("QLoRA 4-bit + checkpointing", ["quantization_bit=4", "gradient_checkpointing=true"]),
    "qlora8": ("8-bit", ["quantization_bit=8"]),
}
LLAMA_350M = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=4,
                  tie_word_embeddings=True)
LLAMA_3B = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                head_dim=128, tie_word_embeddings=True, vocab_size=128256, rope_theta=500000.0)
MODELS = {
    "smollm2": {"label": "SmolLM2-135M", "batch": 4, "cutoff": 256, "steps": 8, "warmup": 2},
    "llama350m": {"label": "Llama ~320M (random)", "shape": LLAMA_350M, "batch": 2, "cutoff": 128, "steps": 4, "warmup": 1},
    "llama3b": {"label": "Llama-3.2-3B-shaped (random)", "shape": LLAMA_3B, "batch": 1, "cutoff": 256, "steps": 3, "warmup": 1,
                "rows": ("qlora4", "qlora4_gc", "lora")},
}
FP32_3B_NEEDS = 16 * GIB
SHARD_BYTES = 2**30


def write_random_llama(folder: str, shape: dict, tokenizer_folder: str) -> None:
    """A random Llama folder: config, tokenizer and bf16 safetensors shards written one at a time."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_folder)
    cfg = LlamaConfig(**{"vocab_size": len(tok), **shape}, max_position_embeddings=4096, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, dtype="bfloat16")
    os.makedirs(folder, exist_ok=True)
    cfg.save_pretrained(folder)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    h, inter, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd

    def tensors():
        yield "model.embed_tokens.weight", (cfg.vocab_size, h)
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            yield from ((p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                        (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
                        (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                        (p + "mlp.down_proj.weight", (h, inter)), (p + "input_layernorm.weight", (h,)),
                        (p + "post_attention_layernorm.weight", (h,)))
        yield "model.norm.weight", (h,)

    shard, size, index, files = {}, 0, {}, []

    def flush():
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, os.path.join(folder, name), metadata={"format": "pt"})
        files.append(name)
        index.update({k: name for k in shard})

    for name, dims in tensors():
        t = torch.ones(dims, dtype=torch.bfloat16) if len(dims) == 1 else torch.randn(dims, dtype=torch.bfloat16).mul_(0.02)
        shard[name] = t
        size += t.numel() * 2
        if size >= SHARD_BYTES:
            flush()
            shard, size = {}, 0
    if shard:
        flush()
    total = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": index}, fh)


def available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable"))


def run_one(model: str, row: str, source: str, spec: dict, out: str) -> dict | None:
    """One `tuneforge train` in a fresh process: peak RSS, tokens/s after warm-up, the printed estimate."""
    args = [f"model_name_or_path={source}", "finetuning_type=lora", "dataset=data/pydoc_alpaca.json",
            f"cutoff_len={spec['cutoff']}", f"per_device_train_batch_size={spec['batch']}", f"max_steps={spec['steps']}",
            "learning_rate=1e-4", "logging_steps=1", "save_strategy=no", "disable_tqdm=true", "plot_loss=false",
            "torch_dtype=float32", "group_by_length=true", f"output_dir={out}", *ROWS[row][1]]
    cmd = [os.path.join(os.path.dirname(sys.executable), "tuneforge"), "train", *args]
    returncode, stderr, peaks = run_sampled(cmd, ROOT, ("RssAnon",), 0.25)  # same pid after re-executing under a malloc
    anon = peaks["RssAnon"]
    if returncode != 0:
        print(f"{model}:{row} failed\n{stderr[-2000:]}", file=sys.stderr)
        return None
    found = re.search(r"memory estimate: ([0-9.]+) GiB(?:, peak while (\w+))?", stderr)
    with open(os.path.join(out, "all_results.json")) as fh:
        results = json.load(fh)
    with open(os.path.join(out, "trainer_log.jsonl")) as fh:
        steps = [json.loads(line) for line in fh if '"loss"' in line]
    w = spec["warmup"]
    (t0, n0), (t1, n1) = [(s["elapsed_s"], s["num_input_tokens_seen"]) for s in (steps[w - 1], steps[-1])]
    shutil.rmtree(out, ignore_errors=True)
    return {"model": model, "row": row, "peak_rss_gib": results["peak_rss_gib"], "peak_anon_gib": anon / 2**20,
            "tokens_per_s": (n1 - n0) / (t1 - t0),
            "estimate_gib": float(found.group(1)) if found else None,
            "estimate_phase": (found.group(2) or "-") if found else "-", "loss": steps[-1]["loss"], "malloc": results.get("malloc")}


def largest_fitting(folder3b: str | None, budget: float = 24 * GIB) -> list[tuple[str, str, float]]:
    """(model, setting, estimated GiB) for QLoRA 4-bit + checkpointing (batch 1, cutoff 256) and fp32 LoRA."""
    from tuneforge.memory.estimate import EstimateInput, estimate_shape
    from tuneforge.memory.shapes import ModelShape, load_shape

    shapes = [("llama3-8b", load_shape("llama3-8b")), ("llama2-13b", load_shape("llama2-13b")),
              ("llama2-70b", load_shape("llama2-70b")), ("llama3-70b", load_shape("llama3-70b"))]
    if folder3b:
        shapes.insert(0, ("llama3.2-3b", load_shape(folder3b)))
    else:
        shapes.insert(0, ("llama3.2-3b", ModelShape.from_config({**LLAMA_3B, "model_type": "llama"}, "llama3.2-3b")))
    shapes.insert(3, ("llama 34B-class (8192 wide, 48 layers)", ModelShape.from_config(
        dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=8,
             vocab_size=32000, model_type="llama"))))
    out = []
    for name, shape in shapes:
        for setting, kw in (("LoRA fp32", {}), ("QLoRA 4-bit + checkpointing", {"quantization_bit": 4, "gradient_checkpointing": True})):
            x = EstimateInput(finetuning_type="lora", batch=1, seq=256, checkpoint_dtype="bfloat16", **kw)  # hub checkpoints: bf16
            out.append((f"{name} ({shape.total_params / 1e9:.1f}B)", setting, estimate_shape(shape, x).total))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rows", default=",".join(ROWS), help="rows for smollm2 and llama350m (llama3b: qlora4, qlora4_gc, lora; change with --set llama3b.rows=...)")
    ap.add_argument("--workdir", default=None, help="where the random models go (default: a temporary folder under /tmp)")
    ap.add_argument("--set", action="append", default=[], metavar="MODEL.KEY=VALUE",
                    help="change a model's setting: llama3b.steps=2, llama3b.cutoff=128, llama3b.rows=qlora4,lora")
    args = ap.parse_args()
    for item in args.set:
        key, value = item.split("=", 1)
        model, field = key.split(".", 1)
        MODELS[model][field] = tuple(value.split(",")) if field == "rows" else int(value)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from tuneforge.config.schema import ModelSection
    from tuneforge.data.cache import cache_root
    from tuneforge.models import local_folder

    smol = local_folder(ModelSection(), cache_root(None))
    work = args.workdir or tempfile.mkdtemp(prefix="qlora-memory-", dir="/tmp")
    results, folder3b = [], None
    try:
        for model in args.models.split(","):
            spec = MODELS[model]
            source = "smollm2-135m-instruct"
            if "shape" in spec:
                source = os.path.join(work, model)
                if not os.path.isfile(os.path.join(source, "model.safetensors.index.json")):
                    write_random_llama(source, spec["shape"], smol)
                folder3b = source if model == "llama3b" else folder3b
            for row in spec.get("rows", args.rows.split(",")):
                if model == "llama3b" and row == "lora" and available_bytes() < FP32_3B_NEEDS:
                    print(f"llama3b:lora skipped: {available_bytes() / GIB:.1f} GiB available, it needs ~16", file=sys.stderr)
                    continue
                r = run_one(model, row, source, spec, os.path.join(work, f"out-{model}-{row}"))
                if r:
                    results.append(r)
                    print(f"  {model}:{row} peak {r['peak_rss_gib']:.2f} GiB, {r['tokens_per_s']:.0f} tok/s, estimate "
                          f"{r['estimate_gib']} GiB", file=sys.stderr, flush=True)
        fits = largest_fitting(folder3b)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report(results, fits)


def report(results: list[dict], fits: list[tuple[str, str, float]]) -> None:
    malloc = results[0]["malloc"] if results else "?"
    print(f"QLoRA memory on the CPU ({os.cpu_count()} CPUs, malloc {malloc}); peak RSS of the whole `tuneforge train` process")
    print(f"{'model':<30}{'run':<30}{'peak RSS GiB':>13}{'anon GiB':>10}{'estimate GiB':>13}{'est. error':>11}{'peak at':>9}{'tokens/s':>10}"
          f"{'last loss':>10}")
    for r in results:
        err = f"{100 * (r['estimate_gib'] - r['peak_rss_gib']) / r['peak_rss_gib']:+.0f}%" if r["estimate_gib"] else "-"
        print(f"{MODELS[r['model']]['label']:<30}{ROWS[r['row']][0]:<30}{r['peak_rss_gib']:>13.2f}{r['peak_anon_gib']:>10.2f}"
              f"{r['estimate_gib'] or 0:>13.2f}"
              f"{err:>11}{r.get('estimate_phase', '-'):>9}{r['tokens_per_s']:>10.1f}{r['loss']:>10.3f}")
    print("\nestimated peak RSS, batch 1, cutoff 256 (24 GiB machine):")
    for name, setting, total in fits:
        print(f"  {name:<50}{setting:<30}{total / GIB:>8.1f} GiB{'' if total <= 24 * GIB else '  does not fit'}")
    largest = [n for n, s, t in fits if s.startswith("QLoRA") and t <= 24 * GIB]
    by = {(r["model"], r["row"]): r for r in results}
    summary = {"runs": len(results), "largest_qlora4_fits_24gib": (largest[-1].split(" (")[0].replace(" ", "_") if largest else "none")}
    for r in results:
        key = f"{r['model']}_{r['row']}"
        summary[f"{key}_peak_rss_gib"] = f"{r['peak_rss_gib']:.2f}"
        summary[f"{key}_peak_anon_gib"] = f"{r['peak_anon_gib']:.2f}"
        summary[f"{key}_tokens_per_s"] = f"{r['tokens_per_s']:.1f}"
    for model in MODELS:
        lora, q4 = by.get((model, "lora")), by.get((model, "qlora4"))
        if lora and q4:
            summary[f"{model}_qlora4_speed_ratio"] = f"{q4['tokens_per_s'] / lora['tokens_per_s']:.2f}"
            summary[f"{model}_qlora4_rss_ratio"] = f"{q4['peak_rss_gib'] / lora['peak_rss_gib']:.2f}"
    errors = [abs(r["estimate_gib"] - r["peak_rss_gib"]) / r["peak_rss_gib"] * 100 for r in results if r["estimate_gib"]]
    if errors:
        summary["max_estimate_error_pct"] = f"{max(errors):.1f}"
    print(" ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
