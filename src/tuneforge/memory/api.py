"""The estimator's entry points: from a RunConfig to a MemoryReport, the memory available here, and the
one-line pre-run check `tuneforge train` prints."""

import dataclasses
import json
import os

from tuneforge import TuneforgeError
from tuneforge.memory import process
from tuneforge.memory.estimate import GIB, EstimateInput, MemoryReport, estimate_shape
from tuneforge.memory.shapes import ModelShape, load_shape
from tuneforge.train import allocator, checkpointing


def shape_of(model_name_or_path: str, cache_dir: str | None = None) -> ModelShape:
    """The shape of a model by name, folder, config.json, or GGUF (via its cached conversion or the alias table)."""
    try:
        return load_shape(model_name_or_path)
    except TuneforgeError as original:
        from tuneforge.data.cache import cache_root
        from tuneforge.models import aliases, gguf

        try:
            source = aliases.resolve(model_name_or_path)
        except TuneforgeError:
            raise original from None
        if source.gguf_file:
            folder = gguf.cached_folder(source, cache_root(cache_dir))
            if os.path.isfile(os.path.join(folder, "config.json")):
                return load_shape(folder)
        raise


def folder_of(model_name_or_path: str, cache_dir: str | None = None) -> str | None:
    """The local folder holding the model's weights (a GGUF's cached conversion), or None when there is none yet."""
    if os.path.isdir(model_name_or_path):
        return model_name_or_path
    from tuneforge.data.cache import cache_root
    from tuneforge.models import aliases, gguf

    try:
        source = aliases.resolve(model_name_or_path)
    except TuneforgeError:
        return None
    if source.gguf_file:
        folder = gguf.cached_folder(source, cache_root(cache_dir))
        return folder if os.path.isdir(folder) else None
    return source.path if source.path and os.path.isdir(source.path) else None


def sharding_of(cfg) -> tuple[str, int]:
    """(sharding, world size) from `deepspeed`/`fsdp` training arguments and WORLD_SIZE."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ds = cfg.train.args.get("deepspeed")
    if ds:
        try:
            conf = ds if isinstance(ds, dict) else json.load(open(ds))
            stage = int(conf.get("zero_optimization", {}).get("stage", 0))
        except (OSError, ValueError) as e:
            raise TuneforgeError(f"deepspeed: cannot read `{ds}` ({e})") from None
        return (f"zero{stage}" if stage else "ddp"), world
    if cfg.train.args.get("fsdp"):
        return "fsdp", world
    return ("ddp" if world > 1 else "none"), world


def input_from_config(cfg, **overrides) -> EstimateInput:
    """The estimator's inputs for a RunConfig (batch = per-device batch, seq = cutoff_len; `options` = the method's
    section values). `overrides` set fields (None: keep)."""
    from tuneforge.hardware import gpu_present
    from tuneforge.precision import auto_dtype_of  # torch-free; the same answer `config.resolve` fills in

    args = cfg.train.args
    dtype = auto_dtype_of(cfg)[0]
    cuda = gpu_present()
    autocast = ("bfloat16" if args.get("bf16") else "float16" if args.get("fp16") else None) if dtype == "float32" else None
    sec = cfg.method_section()
    sharding, world = sharding_of(cfg)
    optim = str(args.get("optim", "adamw_torch"))
    every_n = checkpointing.every_n_layers(args)
    checkpoint = process.checkpoint_of(folder_of(cfg.model.model_name_or_path, cfg.model.cache_dir) or "")
    x = EstimateInput(
        malloc=process.malloc_key(allocator.planned(cfg.method.allocator), dict(os.environ)),
        checkpoint_bytes=checkpoint.nbytes if checkpoint else None, checkpoint_dtype=checkpoint.dtype if checkpoint else None,
        finetuning_type=cfg.method.finetuning_type, batch=int(args.get("per_device_train_batch_size", 8)),
        seq=cfg.data.cutoff_len, dtype=dtype, autocast=autocast, device="cuda" if cuda else "cpu",
        quantization_bit=cfg.model.quantization_bit, double_quantization=cfg.model.double_quantization, optim=optim,
        gradient_checkpointing=every_n > 0, checkpoint_every=max(1, every_n), attn_implementation=cfg.model.attn_implementation,
        world_size=world, sharding=sharding, grad_accum=int(args.get("gradient_accumulation_steps", 1)),
        supervised_logits_only=cfg.method.supervised_logits_only,
        options=dataclasses.asdict(sec) if sec is not None else {},
    )
    for k, v in overrides.items():
        if v is None:
            continue
        if hasattr(x, k):
            setattr(x, k, v)
        else:  # a method option
            x.options[k] = v
    return x


def estimate(cfg, convention: str = "realistic", **overrides) -> MemoryReport:
    """A MemoryReport for a RunConfig (the Board shows it live). Needs only the model's config.json."""
    return estimate_shape(shape_of(cfg.model.model_name_or_path, cfg.model.cache_dir), input_from_config(cfg, **overrides), convention)


def device_memory(available_only: bool = False) -> tuple[float, str]:
    """(bytes, what): the GPU's memory via torch, else the machine's RAM (MemAvailable when `available_only`)."""
    from tuneforge.hardware import gpu_present

    if gpu_present():
        import torch

        free, total = torch.cuda.mem_get_info()
        return float(free if available_only else total), f"GPU {torch.cuda.get_device_name()}"
    info = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            k, v = line.split(":", 1)
            info[k] = int(v.split()[0]) * 1024
    return float(info["MemAvailable"] if available_only else info["MemTotal"]), "RAM"


def parse_size(text: str) -> float:
    """`24GiB`, `24GB`, `24G`, `24` (GiB) -> bytes."""
    t = str(text).strip().lower().replace(" ", "")
    for suffix, mult in (("gib", GIB), ("gb", 1e9), ("g", GIB), ("mib", 2**20), ("mb", 1e6), ("tib", 2**40)):
        if t.endswith(suffix):
            return float(t[: -len(suffix)]) * mult
    return float(t) * GIB
