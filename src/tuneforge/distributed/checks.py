"""Combinations of several processes and a strategy that cannot work, refused before any process loads anything,
each with the reason and the fix (the launcher checks them before starting the ranks; preflight again in each rank).

- LISA: DDP synchronises only the parameters that required gradients when it wrapped the model; LISA switches them
  every `lisa_interval` steps, so the switched-in layers would train on each rank's own data and drift apart.
- GaLore builds its optimizer over whole 2-D weight matrices (it projects their gradients); FSDP and DeepSpeed hand
  the optimizer flat shards, which transformers refuses, and its layer-wise form refuses DDP.
- FSDP on the CPU: the Trainer / accelerate run plain DDP there without saying so (nothing is sharded).
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
        out.append(("fsdp", "fsdp on the CPU would silently run plain DDP through the Trainer (every rank keeps the whole "
                            "model; nothing is sharded); remove `fsdp` to train with DDP on the CPU, or use DeepSpeed "
                            "ZeRO-3 (deepspeed: examples/deepspeed/ds_z3_offload.json) to shard on the CPU"))
    if kind == "deepspeed":
        out += _deepspeed(cfg.train.args.get("deepspeed"), fsdp_too=strategy_has_fsdp(cfg))
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
