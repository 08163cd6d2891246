"""The memory estimate against the measured peak RSS of the whole `tuneforge train` process, under each malloc.

Each row is a fresh `tuneforge train` under GNU time (its maximum resident set size: what `/usr/bin/time -v` shows the
user, file pages of the memory-mapped checkpoint included) and one of four mallocs: glibc (`allocator=system`), glibc
tuned (`allocator=system` with TUNED_GLIBC below), tcmalloc (`allocator=tcmalloc`) and mimalloc (the cmeel-mimalloc
wheel's library in LD_PRELOAD). The estimate is the estimator's for the same config and malloc (`memory.estimate`),
computed here, so `--load` re-renders saved measurements against the current estimator.

Models (pinned to torch_dtype=float32, except the bf16 LoRA rows `auto` gives a CPU with AMX/AVX512-BF16): SmolLM2-135M-Instruct (fp32 safetensors converted from its GGUF); a tiny
random GQA Llama (fp32 file); a random ~320M Llama written in bf16 (loading converts it to fp32). Methods include
issue 18's user configurations on SmolLM2: LoRA on q_proj,v_proj with checkpointing, full fine-tuning and QLoRA 4-bit.
Every batch is exactly batch x cutoff tokens (long rows, truncated). Rows are marked `fit` when their configuration
was used to choose the constants in memory/process.py, `held-out` otherwise (see FIT).

usage: python benchmarks/estimator_accuracy.py [--steps 2] [--only smollm2:lora:glibc,...] [--save F.json] [--load F.json]
(--save F.json also resumes: rows already in F.json are not measured again)
Prints a table and ends with one key=value line (max_error_pct=... max_heldout_error_pct=... rows=...).
"""

import argparse
import glob
import json
import os
import random
import sys
import tempfile

from worker import run_sampled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
MODELS = {
    "smollm2": {"batch": 4, "seq": 256},
    "gqa": {"batch": 4, "seq": 256, "shape": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                                                  num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)},
    "llama350m": {"batch": 2, "seq": 128, "bf16_file": True},
}
METHODS = {
    "lora": ["finetuning_type=lora"],
    "lora_qv_gc": ["finetuning_type=lora", "lora_target=q_proj,v_proj", "gradient_checkpointing=true"],
    "full": ["finetuning_type=full"],
    "qlora4": ["finetuning_type=lora", "quantization_bit=4"],
    "qlora8": ["finetuning_type=lora", "quantization_bit=8"],
    "lora_bf16": ["finetuning_type=lora", "torch_dtype=bfloat16"],  # what `auto` picks on a CPU with AMX/AVX512-BF16
    "lora_bf16_gc": ["finetuning_type=lora", "torch_dtype=bfloat16", "gradient_checkpointing=true"],
}
# glibc with its tunables set (fixed thresholds: freed tensors go back to the system instead of staying in the heap)
TUNED_GLIBC = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "134217728"}
ALLOCATORS = ("glibc", "glibc-tuned", "tcmalloc", "mimalloc")
# in the order they are measured: issue 18's configurations under glibc first, then each malloc's fit rows, then the
# rest (on a loaded machine a SmolLM2 row takes minutes: interrupt and resume with --save)
ROWS = ([f"smollm2:{m}:glibc" for m in ("lora", "lora_qv_gc", "full", "qlora4")]
        + ["smollm2:lora:glibc-tuned", "smollm2:lora_qv_gc:glibc-tuned", "smollm2:lora:tcmalloc", "smollm2:lora:mimalloc",
           "smollm2:full:tcmalloc", "smollm2:full:mimalloc", "smollm2:qlora4:tcmalloc", "smollm2:lora_qv_gc:mimalloc",
           "smollm2:full:glibc-tuned", "smollm2:qlora4:mimalloc", "smollm2:lora_qv_gc:tcmalloc", "smollm2:qlora4:glibc-tuned"]
        + [f"llama350m:{m}:{a}" for m in ("lora", "qlora4") for a in ("glibc", "tcmalloc")]
        + [f"gqa:{m}:{a}" for m in ("lora", "full") for a in ALLOCATORS]
        + ["smollm2:lora_bf16:mimalloc", "smollm2:lora_bf16_gc:mimalloc", "smollm2:lora_bf16:glibc", "smollm2:lora_bf16_gc:tcmalloc"])
FIT = {"smollm2:lora", "smollm2:full", "gqa:lora", "gqa:full", "smollm2:lora_bf16"}  # configurations the constants were chosen on
WORDS = ("the model learns from long rows of text so that every batch is exactly full and the memory estimate "
         "can be checked against what the process really holds while it trains on the processor").split()


def mimalloc_library() -> str | None:
    hits = sorted(glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "cmeel.prefix", "lib", "libmimalloc.so*")), key=len)
    return hits[0] if hits else None


def allocator_env(name: str) -> tuple[dict, list[str]]:
    """(environment, config keys) that make `tuneforge train` run on malloc `name`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    if name == "glibc":
        return env, ["allocator=system"]
    if name == "glibc-tuned":
        return {**env, **TUNED_GLIBC}, ["allocator=system"]
    if name == "tcmalloc":
        return env, ["allocator=tcmalloc"]
    lib = mimalloc_library()
    if lib is None:
        raise SystemExit("mimalloc: the cmeel-mimalloc wheel's libmimalloc.so is not installed (pip install cmeel-mimalloc)")
    return {**env, "LD_PRELOAD": lib}, ["allocator=auto"]


def prepare(workdir: str) -> dict:
    """The dataset folder (long rows) and the random model folders; returns {model: folder or alias}."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from qlora_memory import LLAMA_350M, write_random_llama
    from tuneforge.config.schema import ModelSection
    from tuneforge.data.cache import cache_root
    from tuneforge.models import local_folder

    rng = random.Random(0)
    rows = [{"instruction": " ".join(rng.choice(WORDS) for _ in range(60)), "output": " ".join(rng.choice(WORDS) for _ in range(400))}
            for _ in range(64)]
    data = os.path.join(workdir, "data")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "long.json"), "w") as fh:
        json.dump(rows, fh)
    with open(os.path.join(data, "dataset_info.json"), "w") as fh:
        json.dump({"long": {"file_name": "long.json"}}, fh)
    smol = local_folder(ModelSection(), cache_root(None))
    folders = {"smollm2": "smollm2-135m-instruct", "gqa": os.path.join(workdir, "gqa"), "llama350m": os.path.join(workdir, "llama350m")}
    if not os.path.isfile(os.path.join(folders["gqa"], "config.json")):
        tok = AutoTokenizer.from_pretrained(smol)
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), **MODELS["gqa"]["shape"], eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, max_position_embeddings=2048)
        LlamaForCausalLM(cfg).save_pretrained(folders["gqa"])
        tok.save_pretrained(folders["gqa"])
    if not os.path.isfile(os.path.join(folders["llama350m"], "model.safetensors.index.json")):
        write_random_llama(folders["llama350m"], LLAMA_350M, smol)
    return folders


def train_args(model: str, method: str, folder: str, data: str, steps: int) -> list[str]:
    spec = MODELS[model]
    return [f"model_name_or_path={folder}", "dataset=long", f"dataset_dir={data}", f"cutoff_len={spec['seq']}",
            f"per_device_train_batch_size={spec['batch']}", f"max_steps={steps}", "learning_rate=1e-4", "save_strategy=no",
            "logging_steps=1", "disable_tqdm=true", "plot_loss=false", "template=chatml", "torch_dtype=float32",
            *METHODS[method]]


def measure(row: str, folders: dict, data: str, steps: int, workdir: str) -> dict | None:
    """One `tuneforge train` under GNU time: whole-process peak RSS, and the largest anonymous and file-backed RSS
    seen by sampling every 0.2 s."""
    model, method, malloc = row.split(":")
    env, keys = allocator_env(malloc)
    out = os.path.join(workdir, f"out-{model}-{method}-{malloc}")
    time_file = out + ".time"
    cmd = ["/usr/bin/time", "-v", "-o", time_file, os.path.join(os.path.dirname(sys.executable), "tuneforge"), "train",
           *train_args(model, method, folders[model], data, steps), *keys, f"output_dir={out}"]
    returncode, stderr, peaks = run_sampled(cmd, ROOT, ("RssAnon", "RssFile"), 0.2, env=env, under_time=True)
    anon, file = peaks["RssAnon"], peaks["RssFile"]
    if returncode != 0:
        print(f"{row} failed\n{stderr[-2000:]}", file=sys.stderr)
        return None
    with open(time_file) as fh:
        peak_kib = next(int(line.split(":")[1]) for line in fh if "Maximum resident set size" in line)
    with open(os.path.join(out, "all_results.json")) as fh:
        results = json.load(fh)
    return {"row": row, "peak_rss": peak_kib * 1024, "max_anon": anon * 1024, "max_file": file * 1024,
            "malloc_seen": results.get("malloc"), "peak_rss_before_save": results.get("peak_rss_gib")}


def estimate_row(row: str, folders: dict, data: str, steps: int) -> dict:
    """The estimator's report for the row's config and malloc."""
    from tuneforge import config
    from tuneforge.memory import estimate

    model, method, malloc = row.split(":")
    cfg = config.load(None, [*train_args(model, method, folders[model], data, steps), "output_dir=/tmp/unused"])
    return estimate(cfg, malloc=malloc).to_dict()


def err(pred: float, meas: float) -> float:
    return 100.0 * (pred - meas) / meas if meas else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated model:method:malloc rows")
    ap.add_argument("--workdir", default=None, help="where the data and random models go (default: a temporary folder)")
    ap.add_argument("--save", default=None, help="write the measurements to this JSON file")
    ap.add_argument("--load", default=None, help="skip measuring: read measurements saved with --save")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, os.path.join(ROOT, "src"))
    rows = args.only.split(",") if args.only else ROWS
    work = args.workdir or tempfile.mkdtemp(prefix="estimator-accuracy-", dir="/tmp")
    folders = prepare(work)
    data = os.path.join(work, "data")
    saved = {}
    if args.load or (args.save and os.path.isfile(args.save)):  # --save resumes: rows already saved are not rerun
        with open(args.load or args.save) as fh:
            saved = {m["row"]: m for m in json.load(fh)}
    measured = {row: saved[row] for row in rows if row in saved}
    for row in [] if args.load else [r for r in rows if r not in saved]:
        m = measure(row, folders, data, args.steps, work)
        if m:
            measured[row] = saved[row] = {**m, "steps": args.steps}
            print(f"  {row} peak {m['peak_rss'] / GIB:.3f} GiB (anon {m['max_anon'] / GIB:.3f}, file {m['max_file'] / GIB:.3f})",
                  file=sys.stderr, flush=True)
            if args.save:
                with open(args.save, "w") as fh:
                    json.dump(list(saved.values()), fh, indent=1)
    report(measured, folders, data)


def report(measured: dict, folders: dict, data: str) -> None:
    load = os.getloadavg()
    print(f"estimate vs whole-process peak RSS (GNU time), CPU ({os.cpu_count()} CPUs, load {load[0]:.2f}), torch_dtype=float32 (bf16 rows: bfloat16), "
          f"{'/'.join(sorted({str(m.get('steps', '?')) for m in measured.values()}))} steps; tuned glibc = {' '.join(f'{k}={v}' for k, v in TUNED_GLIBC.items())}")
    print(f"{'model':<11}{'method':<12}{'malloc':<13}{'estimate':>9}{'phase':>7}{'measured':>10}{'anon':>7}{'file':>7}"
          f"{'error %':>9}  set")
    errors, held = [], []
    for row, m in measured.items():
        model, method, malloc = row.split(":")
        est = estimate_row(row, folders, data, m.get("steps", 3))
        e = err(est["total_gib"] * GIB, m["peak_rss"])
        fit = f"{model}:{method}" in FIT
        errors.append(abs(e))
        if not fit:
            held.append(abs(e))
        print(f"{model:<11}{method:<12}{malloc:<13}{est['total_gib']:>9.2f}{est.get('peak_phase', '-'):>7}{m['peak_rss'] / GIB:>10.2f}"
              f"{m['max_anon'] / GIB:>7.2f}{m['max_file'] / GIB:>7.2f}{e:>+9.1f}  {'fit' if fit else 'held-out'}")
    if not errors:
        raise SystemExit("no row was measured")
    print(f"max_error_pct={max(errors):.1f} max_heldout_error_pct={max(held) if held else 0:.1f} "
          f"mean_abs_error_pct={sum(errors) / len(errors):.1f} within_15pct={sum(e <= 15 for e in errors)} rows={len(errors)}")


if __name__ == "__main__":
    main()
