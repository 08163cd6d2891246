"""Combinations of several processes and a strategy that cannot work, refused before any process loads anything,
each with the reason and the fix (the launcher checks them before starting the ranks; preflight again in each rank).

- LISA: DDP synchronises only the parameters that required gradients when it wrapped the model; LISA switches them
  every `lisa_interval` steps, so the switched-in layers would train on each rank's own data and drift apart.
- GaLore builds its optimizer over whole 2-D weight matrices (it projects their gradients); FSDP and DeepSpeed hand
  the optimizer flat shards, which transformers refuses, and its layer-wise form refuses DDP.
- FSDP on the CPU is applied by tuneforge itself (distributed/fsdp.py; the Trainer / accelerate would run plain
  DDP there without saying so). Refused there: stages other than sft/pt (their trainers build a reference or value
  model that is not sharded), quantized bases (bitsandbytes' 4/8-bit parameters cannot be split into DTensors), and
  PiSSA (its save converts the adapter against the whole initial weights on rank 0 alone).
- DeepSpeed: the JSON must exist and parse, and the package must be installed.
"""

import importlib.util
import json
import os

from tuneforge.config.errors import ConfigError


def strategy(cfg) -> str:
    """ddp, fsdp or deepspeed: how several processes split the work (from the `fsdp` / `deepspeed` train keys)."""
    if cfg.train.args.get("deepspeed"):
        return "deepspeed"
    fsdp = cfg.train.args.get("fsdp")
    if fsdp and fsdp not in ("", [], False):
        return "fsdp"
    return "ddp"


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def problems(cfg, world: int) -> list[tuple[str, str]]:
    """(key, message) for every combination of this config and `world` processes that cannot work."""
    out: list[tuple[str, str]] = []
    kind, method = strategy(cfg), cfg.method.finetuning_type
    if world > 1 and method == "lisa":
        out.append(("finetuning_type", f"finetuning_type lisa does not run on several processes ({world}) yet: it switches "
                                       "which layers train every lisa_interval steps, and DDP only synchronises the "
                                       "parameters that trained when it wrapped the model, so the ranks would drift apart; "
                                       "use nproc_per_node: 1, or lora / freeze / full"))
    if method == "galore" and kind in ("fsdp", "deepspeed"):
        out.append((kind, f"finetuning_type galore builds its own optimizer over whole weight matrices; {kind} hands the "
                          f"optimizer flat shards, which transformers refuses; remove `{kind}` (GaLore runs under plain "
                          "DDP) or use lora"))
    galore = cfg.method_section("galore") if method == "galore" else None
    if world > 1 and galore is not None and getattr(galore, "galore_layerwise", False):
        out.append(("galore_layerwise", "galore_layerwise updates each layer inside backward, which transformers refuses "
                                        f"under DDP ({world} processes); set galore_layerwise: false"))
    if kind == "fsdp" and not cuda_available():
        out += _cpu_fsdp(cfg, world)
    if kind == "deepspeed":
        out += _deepspeed(cfg.train.args.get("deepspeed"), fsdp_too=strategy_has_fsdp(cfg))
    return out


def _cpu_fsdp(cfg, world: int) -> list[tuple[str, str]]:
    from tuneforge.distributed import fsdp

    from tuneforge.distributed.launch import planned_world_size

    out = fsdp.problems(cfg.train.args)
    if max(world, planned_world_size(cfg)) <= 1:  # the Board and `estimate` check a config before it launches
        out.append(("fsdp", "fsdp shards the model over several processes, and this run has one; set nproc_per_node: 2 "
                            "or more, or remove `fsdp`"))
    if cfg.method.stage not in ("sft", "pt"):
        out.append(("fsdp", f"fsdp on the CPU is wired for stages sft and pt only (stage {cfg.method.stage}'s trainer "
                            "builds a reference or value model that would not be sharded); remove `fsdp` to train with "
                            "DDP, or use DeepSpeed ZeRO-3 (deepspeed: examples/deepspeed/ds_z3_offload.json)"))
    if cfg.model.quantization_bit:
        out.append(("quantization_bit", "fsdp cannot shard a quantized base (bitsandbytes' 4/8-bit parameters do not "
                                        "split into DTensors); remove `quantization_bit` or `fsdp`"))
    lora = cfg.method_section("lora") if cfg.method.finetuning_type == "lora" else None
    if lora is not None and getattr(lora, "pissa_init", False):
        out.append(("pissa_init", "pissa_init with fsdp: the PiSSA save converts the adapter against the whole initial "
                                  "weights on rank 0 alone, which sharded weights do not allow; remove `pissa_init` or `fsdp`"))
    return out


def strategy_has_fsdp(cfg) -> bool:
    fsdp = cfg.train.args.get("fsdp")
    return bool(fsdp and fsdp not in ("", []))


def _deepspeed(value, fsdp_too: bool) -> list[tuple[str, str]]:
    out = []
    if fsdp_too:
        out.append(("fsdp", "set either fsdp or deepspeed, not both (each one shards the model its own way)"))
    if importlib.util.find_spec("deepspeed") is None:
        out.append(("deepspeed", "deepspeed is not installed: pip install deepspeed (or remove the `deepspeed` key)"))
    if isinstance(value, str):
        if not os.path.isfile(value):
            out.append(("deepspeed", f"deepspeed config {value} not found; give a DeepSpeed JSON file such as "
                                     "examples/deepspeed/ds_z2_offload.json"))
        else:
            try:
                with open(value, encoding="utf-8") as fh:
                    json.load(fh)
            except ValueError as e:
                out.append(("deepspeed", f"deepspeed config {value} is not valid JSON: {e}"))
    return out


def refuse(cfg, world: int) -> None:
    """Raise ConfigError listing every combination that cannot work."""
    found = problems(cfg, world)
    if found:
        raise ConfigError(found)
